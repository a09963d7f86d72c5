//! The serve loop on in-memory input and output: one answer per key, a flush
//! per answer, and every class of malformed input answered "no".

use std::io::{self, BufRead, BufReader, Cursor, ErrorKind, Read, Write};

use rewritemap::{BadKey, MAX_LINE, serve};

/// A writer that records what was written at each flush.
#[derive(Default)]
struct FlushRecorder {
    written: Vec<u8>,
    at_flush: Vec<Vec<u8>>,
}

impl Write for FlushRecorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.at_flush.push(self.written.clone());
        Ok(())
    }
}

/// Answers `yes-<key>`; records which keys reached it.
fn run(input: &[u8]) -> (Vec<String>, FlushRecorder) {
    run_with(Cursor::new(input.to_vec()))
}

fn run_with(input: impl BufRead) -> (Vec<String>, FlushRecorder) {
    let mut seen = Vec::new();
    let mut out = FlushRecorder::default();
    serve(input, &mut out, "no", |key| {
        seen.push(key.to_owned());
        Ok::<_, BadKey>(format!("yes-{key}"))
    })
    .expect("serve ends cleanly");
    (seen, out)
}

fn answers(out: &FlushRecorder) -> Vec<String> {
    String::from_utf8(out.written.clone())
        .expect("answers are UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn one_answer_per_key_in_order() {
    let (seen, out) = run(b"3001\n3002\napp3001\n");
    assert_eq!(seen, ["3001", "3002", "app3001"]);
    assert_eq!(answers(&out), ["yes-3001", "yes-3002", "yes-app3001"]);
}

#[test]
fn every_answer_is_flushed_before_the_next_key_is_read() {
    let (_, out) = run(b"a\nb\nc\n");
    assert_eq!(
        out.at_flush,
        [
            b"yes-a\n".to_vec(),
            b"yes-a\nyes-b\n".to_vec(),
            b"yes-a\nyes-b\nyes-c\n".to_vec()
        ]
    );
}

#[test]
fn end_of_input_at_once_writes_nothing() {
    let (seen, out) = run(b"");
    assert!(seen.is_empty());
    assert!(out.written.is_empty());
}

#[test]
fn a_last_line_without_newline_is_answered() {
    let (seen, out) = run(b"3001\n3002");
    assert_eq!(seen, ["3001", "3002"]);
    assert_eq!(answers(&out), ["yes-3001", "yes-3002"]);
}

#[test]
fn spaces_tabs_and_a_trailing_cr_are_trimmed() {
    let (seen, _) = run(b"  3001\t\r\n\t3002 \n3003\r\n");
    assert_eq!(seen, ["3001", "3002", "3003"]);
}

#[test]
fn empty_and_blank_lines_are_answered_no() {
    let (seen, out) = run(b"\n   \n\t\r\nk\n");
    assert_eq!(seen, ["k"]);
    assert_eq!(answers(&out), ["no", "no", "no", "yes-k"]);
}

#[test]
fn a_nul_byte_is_answered_no() {
    let (seen, out) = run(b"30\x0001\nk\n");
    assert_eq!(seen, ["k"]);
    assert_eq!(answers(&out), ["no", "yes-k"]);
}

#[test]
fn invalid_utf8_is_answered_no() {
    let (seen, out) = run(b"\xff\xfe3001\n\xc3\nk\n");
    assert_eq!(seen, ["k"]);
    assert_eq!(answers(&out), ["no", "no", "yes-k"]);
}

#[test]
fn control_characters_are_answered_no() {
    let (seen, out) = run(b"30\x1b[0m01\n\x7f\nmid\rdle\nk\n");
    assert_eq!(seen, ["k"]);
    assert_eq!(answers(&out), ["no", "no", "no", "yes-k"]);
}

#[test]
fn a_line_of_exactly_the_cap_is_a_key_one_byte_more_is_not() {
    let exact = "a".repeat(MAX_LINE);
    let over = "b".repeat(MAX_LINE + 1);
    let input = format!("{exact}\n{over}\nk\n");
    let (seen, out) = run(input.as_bytes());
    assert_eq!(seen, [exact.clone(), "k".to_owned()]);
    assert_eq!(
        answers(&out),
        [format!("yes-{exact}"), "no".into(), "yes-k".into()]
    );
}

#[test]
fn a_one_mebibyte_line_is_read_through_and_the_map_stays_in_sync() {
    let mut input = vec![b'x'; 1 << 20];
    input.extend_from_slice(b"\n3001\n");
    let (seen, out) = run(&input);
    assert_eq!(seen, ["3001"]);
    assert_eq!(answers(&out), ["no", "yes-3001"]);
}

#[test]
fn input_arriving_one_byte_at_a_time_gives_the_same_answers() {
    let mut input = b" 3001\r\n".to_vec();
    input.extend(vec![b'y'; MAX_LINE + 10]);
    input.extend_from_slice(b"\n\xff\n3002\n");
    let (seen, out) = run_with(BufReader::with_capacity(1, Cursor::new(input)));
    assert_eq!(seen, ["3001", "3002"]);
    assert_eq!(answers(&out), ["yes-3001", "no", "no", "yes-3002"]);
}

#[test]
fn an_answer_apache_could_not_read_back_becomes_no() {
    let mut out = FlushRecorder::default();
    serve(
        Cursor::new(b"empty\nbreak\ncr\nok\n".to_vec()),
        &mut out,
        "NULL",
        |key| {
            Ok::<_, BadKey>(match key {
                "empty" => String::new(),
                "break" => "30\n01".to_owned(),
                "cr" => "3001\r".to_owned(),
                _ => "3001".to_owned(),
            })
        },
    )
    .expect("serve");
    assert_eq!(answers(&out), ["NULL", "NULL", "NULL", "3001"]);
}

#[test]
fn a_bad_key_is_answered_no_and_the_loop_goes_on() {
    let mut out = FlushRecorder::default();
    serve(
        Cursor::new(b"3001|3002\n3001\n".to_vec()),
        &mut out,
        "NULL",
        |key| {
            if key.contains('|') {
                Err(BadKey::new("not one port"))
            } else {
                Ok(key.to_owned())
            }
        },
    )
    .expect("serve");
    assert_eq!(answers(&out), ["NULL", "3001"]);
}

/// A reader that fails with `Interrupted` before every chunk, as a blocking
/// read does when a signal other than SIGTERM arrives.
struct Interrupting {
    data: Cursor<Vec<u8>>,
    interrupt_next: bool,
}

impl Read for Interrupting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt_next = !self.interrupt_next;
        if self.interrupt_next {
            return Err(ErrorKind::Interrupted.into());
        }
        let len = buf.len().min(3);
        self.data.read(&mut buf[..len])
    }
}

#[test]
fn an_interrupted_read_resumes_the_same_line() {
    let reader = BufReader::with_capacity(
        3,
        Interrupting {
            data: Cursor::new(b"30011\n42\n".to_vec()),
            interrupt_next: false,
        },
    );
    let (seen, out) = run_with(reader);
    assert_eq!(seen, ["30011", "42"]);
    assert_eq!(answers(&out), ["yes-30011", "yes-42"]);
}

/// A writer whose reader has gone away.
struct BrokenPipe;

impl Write for BrokenPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(ErrorKind::BrokenPipe.into())
    }
}

#[test]
fn a_broken_output_ends_the_loop_quietly() {
    let result = serve(
        Cursor::new(b"3001\n3002\n".to_vec()),
        BrokenPipe,
        "no",
        |key| Ok::<_, BadKey>(key.to_owned()),
    );
    assert!(result.is_ok(), "{result:?}");
}

//! Hostile input for the property test of every map program: whatever bytes
//! arrive on stdin, exactly one answer line per input line, and the "no"
//! answer for every line that cannot be a key.
//!
//! [`Hostile`] draws lines, from a seed (so that a failure can be replayed),
//! among the keys a program knows and every kind of line the protocol must
//! survive: empty, blank, CR-ended, NUL, invalid UTF-8, control characters,
//! lines around and far over [`MAX_LINE`], random bytes. [`lines_in`] is
//! the protocol's idea of a line; [`answers_per_line`] pairs each line with
//! its answer and checks what holds for every program.

use crate::key::{MAX_LINE, check_key};

/// A seeded source of hostile lines (splitmix64: small, fast, and the same
/// sequence everywhere for a seed).
#[derive(Debug, Clone)]
pub struct Hostile {
    state: u64,
}

impl Hostile {
    /// The lines drawn from `seed`.
    pub fn new(seed: u64) -> Hostile {
        Hostile { state: seed }
    }

    /// A seed that differs from run to run (print it with any failure).
    pub fn random_seed() -> u64 {
        super::random_u64()
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| match self.next() as u8 {
                b'\n' => b'N',
                b => b,
            })
            .collect()
    }

    /// One line, without its newline (it never holds one): one of `keys`
    /// as is or dressed up, or a line that is no key at all.
    pub fn line(&mut self, keys: &[&str]) -> Vec<u8> {
        let key = if keys.is_empty() {
            b"key".to_vec()
        } else {
            self.pick(keys).as_bytes().to_vec()
        };
        let at = self.below(key.len() + 1);
        let insert = |what: &[u8]| [&key[..at], what, &key[at..]].concat();
        match self.below(12) {
            0 | 1 => key,
            2 => {
                let before = *self.pick(&["", " ", "\t", " \t "]);
                let after = *self.pick(&["", " ", "\t", "\r", " \r", "\t\r"]);
                [before.as_bytes(), &key, after.as_bytes()].concat()
            }
            3 => Vec::new(),
            4 => (0..self.below(4) + 1)
                .map(|_| *self.pick(b" \t\r"))
                .collect(),
            5 => insert(b"\0"),
            6 => {
                let byte = 0x80 + self.below(0x80) as u8;
                insert(&[byte])
            }
            7 => {
                let len = self.below(64);
                self.bytes(len)
            }
            8 => {
                let far = 16 * MAX_LINE + self.below(MAX_LINE);
                let len = *self.pick(&[
                    MAX_LINE - 1,
                    MAX_LINE,
                    MAX_LINE + 1,
                    MAX_LINE + 2,
                    2 * MAX_LINE,
                    far,
                ]);
                if self.below(2) == 0 {
                    key.iter().chain(b" ").copied().cycle().take(len).collect()
                } else {
                    self.bytes(len)
                }
            }
            9 => insert(&[*self.pick(&[0x01, 0x1b, 0x7f, 0x0b, 0x0c, b'\r'])]),
            10 => insert(
                self.pick(&["é", "\u{2028}", "\u{85}", "\u{feff}", "日本"])
                    .as_bytes(),
            ),
            _ => {
                let other = self.line(keys);
                let between = *self.pick(&["|", ":", " ", ","]);
                [&key[..], between.as_bytes(), &other].concat()
            }
        }
    }

    /// `lines` lines, each ended by a newline, except perhaps the last (a
    /// person may type `printf 3001 | verify-port`).
    pub fn stream(&mut self, keys: &[&str], lines: usize) -> Vec<u8> {
        let mut stream = Vec::new();
        for i in 0..lines {
            stream.extend(self.line(keys));
            if i + 1 < lines || self.below(2) == 0 {
                stream.push(b'\n');
            }
        }
        stream
    }

    /// Write sizes for [`super::MapProcess::answer_all`]: single bytes, a
    /// pipe buffer's worth, and sizes in between, so that keys arrive split
    /// at any byte and many at once.
    pub fn pieces(&mut self) -> Vec<usize> {
        (0..8)
            .map(|_| match self.below(4) {
                0 => 1 + self.below(16),
                1 => 100 + self.below(5000),
                2 => MAX_LINE,
                _ => 65536,
            })
            .collect()
    }
}

/// The lines of a stream as the protocol reads them: each ends at `\n`
/// (not included); a last line may lack it; nothing after the last `\n`
/// is no line.
pub fn lines_in(input: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|last| last.is_empty()) {
        lines.pop();
    }
    lines
}

/// Pairs each line of `input` with its answer in `output` (what a map
/// program wrote for it), after checking what holds for every program:
/// exactly one answer line per input line, each ended by a newline, none
/// empty or holding a CR, and `no` for every line that cannot be a key
/// (too long, not UTF-8, NUL, control characters, blank). The error says
/// which line broke which rule.
pub fn answers_per_line<'a>(
    input: &'a [u8],
    output: &[u8],
    no: &str,
) -> Result<Vec<(&'a [u8], String)>, String> {
    let lines = lines_in(input);
    let text = std::str::from_utf8(output).map_err(|e| format!("output is not UTF-8: {e}"))?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(format!("the last answer has no newline: {text:?}"));
    }
    let answers: Vec<&str> = text.lines().collect();
    if answers.len() != lines.len() {
        return Err(format!(
            "{} answers for {} lines",
            answers.len(),
            lines.len()
        ));
    }
    let mut pairs = Vec::with_capacity(lines.len());
    for (i, (line, answer)) in lines.into_iter().zip(answers).enumerate() {
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]);
        if answer.is_empty() || answer.contains('\r') {
            return Err(format!("line {i} {shown:?}: answer {answer:?}"));
        }
        let malformed = line.len() > MAX_LINE || check_key(line).is_err();
        if malformed && answer != no {
            return Err(format!(
                "line {i} {shown:?} is no key but got {answer:?}, not {no:?}"
            ));
        }
        pairs.push((line, answer.to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_lines_and_they_hold_no_newline() {
        let keys = ["3001", "ALL"];
        let stream = Hostile::new(7).stream(&keys, 500);
        assert_eq!(stream, Hostile::new(7).stream(&keys, 500));
        assert_ne!(stream, Hostile::new(8).stream(&keys, 500));
        assert_eq!(lines_in(&stream).len(), 500);
        let lines = lines_in(&stream);
        assert!(lines.iter().any(|l| l.is_empty()));
        assert!(lines.iter().any(|l| l.len() > MAX_LINE));
        assert!(lines.iter().any(|l| l.contains(&0)));
        assert!(lines.iter().any(|l| *l == b"3001"));
    }

    #[test]
    fn lines_are_counted_as_the_protocol_reads_them() {
        assert_eq!(lines_in(b""), Vec::<&[u8]>::new());
        assert_eq!(lines_in(b"\n"), [b""]);
        assert_eq!(lines_in(b"a\nb"), [b"a", b"b"]);
        assert_eq!(lines_in(b"a\n\n"), [&b"a"[..], b""]);
    }

    #[test]
    fn a_missing_extra_or_wrong_answer_is_reported() {
        let input = b"3001\n\0\nx";
        let good = answers_per_line(input, b"yes\nno\nyes\n", "no").expect("good");
        assert_eq!(good[0], (&b"3001"[..], "yes".to_owned()));
        for bad in [
            &b"yes\nno\n"[..],
            b"yes\nno\nyes\nyes\n",
            b"yes\nno\nyes",
            b"yes\nyes\nyes\n",
            b"yes\n\nyes\n",
        ] {
            assert!(answers_per_line(input, bad, "no").is_err(), "{bad:?}");
        }
    }
}

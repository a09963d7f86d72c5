//! One fixture file per parser edge case: what the parser reads from it,
//! what it reports, and what the real map answers from it over a pipe.

mod common;

use common::{ask, fixture, fixture_bytes, start};
use server_map::{MapFile, Rejected, Severity, Value};

fn parse(name: &str) -> MapFile {
    MapFile::parse(&fixture_bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn rejected(name: &str) -> Rejected {
    match MapFile::parse(&fixture_bytes(name)) {
        Ok(map) => panic!("{name} parsed: {map:?}"),
        Err(rejected) => rejected,
    }
}

/// (line, severity, message) of every diagnostic.
fn found(map: &MapFile) -> Vec<(Option<usize>, Severity, &str)> {
    map.diagnostics()
        .iter()
        .map(|d| (d.line, d.severity, d.message.as_str()))
        .collect()
}

fn value<'a>(map: &'a MapFile, key: &str) -> Option<&'a str> {
    map.get(key).map(Value::text)
}

/// Answers of the real binary for `keys`, in one session.
fn answers(name: &str, keys: &[&str]) -> Vec<String> {
    let mut map = start(&fixture(name));
    keys.iter().map(|key| ask(&mut map, key)).collect()
}

#[test]
fn the_a_and_b_sets_differ_only_in_all() {
    let a = parse("balance.confA");
    let b = parse("balance.confB");
    assert!(a.diagnostics().is_empty(), "{:?}", a.diagnostics());
    assert!(b.diagnostics().is_empty(), "{:?}", b.diagnostics());
    assert_eq!(a.len(), 11);
    assert_eq!(a.servers().count(), 10);
    assert_eq!(a.active_ports(), [3001, 3002, 3003, 3004, 3005]);
    assert_eq!(b.active_ports(), [3006, 3007, 3008, 3009, 3010]);
    assert_eq!(
        a.servers().collect::<Vec<_>>(),
        b.servers().collect::<Vec<_>>()
    );
    assert_eq!(
        value(&a, "ALL").map(str::len),
        value(&b, "ALL").map(str::len)
    );
}

#[test]
fn comments_are_whole_lines_starting_with_hash() {
    let map = parse("comments.conf");
    assert_eq!(map.len(), 2);
    assert_eq!(value(&map, "#app3002"), None);
    assert_eq!(value(&map, "ALL"), Some("3001"));
    assert!(map.diagnostics().is_empty());
    assert_eq!(
        answers("comments.conf", &["ALL", "#app3002"]),
        ["3001", "NULL"]
    );
}

#[test]
fn blank_and_whitespace_only_lines_are_skipped_silently() {
    let map = parse("blank-lines.conf");
    assert_eq!(map.len(), 2);
    assert!(map.diagnostics().is_empty(), "{:?}", map.diagnostics());
    assert_eq!(map.get("ALL").map(Value::line), Some(7));
}

#[test]
fn an_indented_entry_is_ignored_like_apache_and_warned_about() {
    let map = parse("leading-whitespace.conf");
    assert_eq!(value(&map, "app3002"), None);
    // The indented `ALL 3002` on line 3 is ignored: line 5 is the one.
    assert_eq!(map.get("ALL").map(Value::line), Some(5));
    let found = found(&map);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(2), Severity::Warning));
    assert!(found[0].2.contains("app3002") && found[0].2.contains("ignores"));
    assert_eq!((found[1].0, found[1].1), (Some(3), Severity::Warning));
    assert_eq!(
        answers("leading-whitespace.conf", &["app3002", "ALL"]),
        ["NULL", "3001"]
    );
}

#[test]
fn text_after_the_value_is_ignored_and_only_a_non_comment_is_warned_about() {
    let map = parse("extra-tokens.conf");
    assert_eq!(value(&map, "app3001"), Some("3001"));
    assert_eq!(value(&map, "app3002"), Some("3002"));
    assert_eq!(value(&map, "app3003"), Some("3003"));
    assert_eq!(value(&map, "ALL"), Some("3001|3002|3003"));
    let lines: Vec<_> = found(&map).iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(
        lines,
        [(Some(2), Severity::Warning), (Some(4), Severity::Warning)]
    );
    assert_eq!(
        answers("extra-tokens.conf", &["app3001", "app3002"]),
        ["3001", "3002"]
    );
}

#[test]
fn duplicate_keys_the_first_wins_and_both_lines_are_named() {
    let map = parse("duplicate-keys.conf");
    assert_eq!(value(&map, "app3001"), Some("3001"));
    assert_eq!(value(&map, "ALL"), Some("3001"));
    let found = found(&map);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(4), Severity::Error));
    assert!(found[0].2.contains("lines 1 and 4"), "{}", found[0].2);
    assert!(found[1].2.contains("lines 3 and 5"), "{}", found[1].2);
    assert_eq!(
        answers("duplicate-keys.conf", &["app3001", "ALL"]),
        ["3001", "3001"]
    );
}

#[test]
fn a_key_without_a_value_is_ignored() {
    let map = parse("key-without-value.conf");
    assert_eq!(map.get("app3002"), None);
    assert_eq!(map.get("app3003"), None);
    let lines: Vec<_> = found(&map).iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(
        lines,
        [(Some(2), Severity::Warning), (Some(3), Severity::Warning)]
    );
    assert_eq!(answers("key-without-value.conf", &["app3002"]), ["NULL"]);
}

#[test]
fn an_empty_alternative_is_an_error_and_answers_null_never_an_empty_line() {
    let map = parse("empty-alternative.conf");
    let all = map.get("ALL").expect("ALL");
    assert_eq!(all.alternatives(), ["3001", "", "3002", ""]);
    let found = found(&map);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(3), Severity::Error));

    let mut process = start(&fixture("empty-alternative.conf"));
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..400 {
        *seen.entry(ask(&mut process, "ALL")).or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["3001", "3002", "NULL"],
        "{seen:?}"
    );
    // Logged once, when loaded, by its line (never with the file's content);
    // not once per lookup.
    let (_, stderr) = process.finish(common::ANSWER_WITHIN).expect("finish");
    assert_eq!(
        stderr
            .matches("empty-alternative.conf:3: error: an empty alternative")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("not a single non-empty line"), "{stderr}");
    assert!(!stderr.contains("\"3001||3002|\""), "{stderr}");
}

#[test]
fn crlf_line_endings_read_like_lf_because_cr_is_whitespace_to_apache() {
    let map = parse("crlf.conf");
    assert_eq!(value(&map, "app3001"), Some("3001"));
    assert_eq!(value(&map, "ALL"), Some("3001|3002"));
    assert!(map.diagnostics().is_empty(), "{:?}", map.diagnostics());
    assert_eq!(
        answers("crlf.conf", &["app3001", "app3002"]),
        ["3001", "3002"]
    );
}

#[test]
fn a_2000_byte_line_is_read_whole_and_is_an_error_for_apache_s_sake() {
    let map = parse("long-line.conf");
    let long = map.get("long").expect("read whole");
    assert_eq!(long.text().len(), 1995);
    let found = found(&map);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(4), Severity::Error));
    assert!(found[0].2.contains("2000 bytes"), "{}", found[0].2);
    let answer = &answers("long-line.conf", &["long"])[0];
    assert_eq!(answer.len(), 1995);
}

#[test]
fn a_nul_byte_refuses_the_whole_file_naming_the_line() {
    let rejected = rejected("nul-byte.conf");
    assert_eq!(rejected.0.len(), 1);
    assert_eq!(rejected.0[0].line, Some(2));
    assert!(rejected.0[0].message.contains("NUL"));
}

#[test]
fn invalid_utf8_refuses_the_whole_file_naming_the_line() {
    let rejected = rejected("invalid-utf8.conf");
    assert_eq!(rejected.0.len(), 1);
    assert_eq!(rejected.0[0].line, Some(2));
    assert!(rejected.0[0].message.contains("UTF-8"));
}

#[test]
fn an_empty_file_and_a_file_without_entries_are_refused() {
    assert!(rejected("empty.conf").0[0].message.contains("empty"));
    let rejected = rejected("only-comments.conf");
    assert!(rejected.0[0].message.contains("no entries"));
    // The indented line is why, and is named.
    assert!(rejected.0.iter().any(|d| d.line == Some(3)), "{rejected:?}");
}

#[test]
fn a_refused_file_at_start_answers_null_for_everything_and_says_why_once() {
    for name in [
        "nul-byte.conf",
        "invalid-utf8.conf",
        "empty.conf",
        "only-comments.conf",
    ] {
        let mut map = start(&fixture(name));
        for _ in 0..5 {
            assert_eq!(ask(&mut map, "app3001"), "NULL", "{name}");
        }
        let (status, stderr) = map.finish(common::ANSWER_WITHIN).expect("finish");
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{name}: {stderr}");
        assert_eq!(stderr.matches("refused").count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains("every key answers NULL"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn all_naming_a_port_without_a_name_is_an_error() {
    let map = parse("all-unnamed-port.conf");
    let found = found(&map);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(3), Severity::Error));
    assert!(found[0].2.contains("3011"), "{}", found[0].2);
}

#[test]
fn ports_0_70000_and_leading_zeros_are_errors() {
    let map = parse("port-out-of-range.conf");
    let found = found(&map);
    let errors: Vec<_> = found
        .iter()
        .filter(|d| d.1 == Severity::Error)
        .map(|d| (d.0, d.2))
        .collect();
    for (line, needle) in [
        (2, "\"0\""),
        (3, "\"70000\""),
        (4, "\"03002\""),
        (5, "\"0\""),
        (5, "\"70000\""),
        (5, "\"x\""),
    ] {
        assert!(
            errors
                .iter()
                .any(|(l, m)| *l == Some(line) && m.contains(needle)),
            "line {line} {needle}: {errors:?}"
        );
    }
    assert_eq!(map.servers().collect::<Vec<_>>(), [("app3001", 3001)]);
    assert_eq!(map.active_ports(), [3001]);
}

#[test]
fn a_last_line_without_newline_is_used_with_a_warning() {
    let map = parse("no-final-newline.conf");
    assert_eq!(value(&map, "ALL"), Some("3001"));
    let found = found(&map);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(2), Severity::Warning));
    assert_eq!(answers("no-final-newline.conf", &["ALL"]), ["3001"]);
}

#[test]
fn a_name_that_is_not_its_port_is_a_warning_and_keys_are_case_sensitive() {
    let map = parse("name-port-mismatch.conf");
    let found = found(&map);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(4), Severity::Warning));
    assert_eq!(
        answers("name-port-mismatch.conf", &["App3001", "app3001", "all"]),
        ["9", "3001", "NULL"]
    );
}

//! `server-map`'s balance-file parser: on any bytes, a map or a refusal
//! with a reason, never a panic; a map says exactly what the file says, the
//! way Apache's `rnd:` reader would read it; and written back as plain
//! `key value` lines, it reads the same.

use std::collections::HashSet;

use server_map::mapfile::MAX_FILE;
use server_map::{ALL, MapFile, Severity};

/// Checks the parser on `data` (see the module doc).
pub fn check(data: &[u8]) {
    match MapFile::parse(data) {
        Ok(map) => accepted(data, &map),
        Err(rejected) => {
            assert!(
                rejected.0.iter().any(|d| d.severity == Severity::Error),
                "a refusal says why: {rejected:?}"
            );
            let lines = data.split(|&b| b == b'\n').count();
            for diag in &rejected.0 {
                assert!(diag.line.is_none_or(|n| (1..=lines).contains(&n)));
            }
            // A readable file is refused only when Apache would find no
            // entry in it either.
            if let Ok(text) = std::str::from_utf8(data)
                && !data.is_empty()
                && data.len() <= MAX_FILE
                && !data.contains(&0)
            {
                let lines: Vec<&str> = text.split('\n').collect();
                assert!(entry_lines(&lines).next().is_none(), "{rejected:?}");
            }
        }
    }
}

/// Apache's `apr_isspace`.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn tokens(line: &str) -> impl Iterator<Item = &str> {
    line.split(is_space).filter(|t| !t.is_empty())
}

fn accepted(data: &[u8], map: &MapFile) {
    assert!(data.len() <= MAX_FILE && !data.contains(&0));
    let text = std::str::from_utf8(data).expect("an accepted file is UTF-8");
    assert!(!map.is_empty(), "an accepted file has an entry");
    let lines: Vec<&str> = text.split('\n').collect();
    let mut keys = HashSet::new();
    for (key, value) in map.entries() {
        assert!(keys.insert(key), "{key:?} twice");
        assert_eq!(map.get(key), Some(value));
        // The entry is the first two tokens of its line, which Apache reads
        // (it skips lines starting with `#` or whitespace).
        let line = lines[value.line() - 1];
        assert!(!line.starts_with('#') && !line.starts_with(is_space));
        let mut words = tokens(line);
        assert_eq!(words.next(), Some(key), "line {}", value.line());
        assert_eq!(words.next(), Some(value.text()), "line {}", value.line());
        assert_eq!(value.alternatives().join("|"), value.text());
        let single_port = match value.alternatives() {
            [one] => vmpool::parse_port(one),
            _ => None,
        };
        assert_eq!(value.port(), single_port);
        let mut rng = fastrand::Rng::with_seed(value.line() as u64);
        for _ in 0..4 {
            if let Some(answer) = map.lookup(key, &mut rng) {
                assert!(!answer.is_empty(), "never an empty answer");
                assert!(value.alternatives().iter().any(|a| a == answer));
            }
        }
    }
    first_line_wins(&lines, map);
    let servers: Vec<(&str, u16)> = map.servers().collect();
    assert!(
        servers.iter().all(|&(key, port)| {
            key != ALL && map.get(key).and_then(|v| v.port()) == Some(port)
        })
    );
    let active: Vec<u16> = map.get(ALL).map_or_else(Vec::new, |all| {
        all.alternatives()
            .iter()
            .filter_map(|a| vmpool::parse_port(a))
            .collect()
    });
    assert_eq!(map.active_ports(), active);
    let numbers: Vec<usize> = map.diagnostics().iter().filter_map(|d| d.line).collect();
    assert!(numbers.iter().all(|n| (1..=lines.len()).contains(n)));
    assert!(numbers.is_sorted(), "diagnostics by line: {numbers:?}");
    reads_back_the_same(map);
}

/// The lines Apache reads as entries: `(line number, key)`. It skips lines
/// that start with `#` or whitespace, and keys without a value.
fn entry_lines<'a>(lines: &'a [&'a str]) -> impl Iterator<Item = (usize, &'a str)> {
    lines.iter().enumerate().filter_map(|(i, line)| {
        if line.starts_with('#') || line.starts_with(is_space) {
            return None;
        }
        let mut words = tokens(line);
        let key = words.next()?;
        words.next().map(|_| (i + 1, key))
    })
}

/// Every line Apache reads as an entry has its key in the map, from that
/// line or an earlier one.
fn first_line_wins(lines: &[&str], map: &MapFile) {
    for (number, key) in entry_lines(lines) {
        let value = map
            .get(key)
            .unwrap_or_else(|| panic!("line {number}: {key:?} is missing"));
        assert!(value.line() <= number);
    }
}

/// The map written as plain `key value` lines is the same map.
fn reads_back_the_same(map: &MapFile) {
    let entries = |map: &MapFile| -> Vec<(String, String)> {
        map.entries()
            .map(|(key, value)| (key.to_owned(), value.text().to_owned()))
            .collect()
    };
    let written: String = map
        .entries()
        .map(|(key, value)| format!("{key} {}\n", value.text()))
        .collect();
    let again = MapFile::parse(written.as_bytes())
        .unwrap_or_else(|e| panic!("{written:?} is refused: {e}"));
    assert_eq!(entries(&again), entries(map), "{written:?}");
    assert_eq!(again.active_ports(), map.active_ports());
}

//! Parsing a map file the way Apache's `txt:`/`rnd:` reader does, keeping
//! line numbers for the people who fix it.
//!
//! Apache's reader is `lookup_map_txtfile` in httpd 2.4
//! `modules/mappers/mod_rewrite.c`, and `rnd:` adds
//! `select_random_value_part`. What it does, and what this parser mirrors:
//!
//! - A line whose first byte is `#` or whitespace (`apr_isspace`: space, tab,
//!   `\n`, `\v`, `\f`, `\r`) is skipped whole: an indented entry is silently
//!   ignored ([`Severity::Warning`]).
//! - The key is the first token, up to whitespace, compared exactly (case
//!   matters). The value is the next token; the rest of the line is ignored,
//!   so `app3001 3001 # note` works (other trailing text is a warning). A key
//!   without a value is ignored (a warning).
//! - `\r` is whitespace, so CRLF files read exactly like LF files.
//! - The first line with a key wins; later duplicates are never seen (an
//!   [`Severity::Error`], naming both lines).
//! - `rnd:` splits the value on `|` and picks one part uniformly. An empty
//!   part (`3001||3002`, a trailing `|`) makes Apache answer "not found";
//!   [`MapFile::lookup`] does the same (the map then answers `NULL`, never an
//!   empty line), and it is an error.
//!
//! Where Apache's reader would silently misread a file, this one reads what
//! the file says and reports an error:
//!
//! - Apache reads lines into a 1024-byte buffer (`REWRITE_MAX_TXT_MAP_LINE`,
//!   the newline included) and reads the rest of a longer line as further
//!   lines, cutting a long `ALL` value into a wrong port. Here a line is read
//!   whole, and one longer than [`APACHE_MAX_LINE`] bytes is an error.
//! - A value made only of digits is a port and must be one Apache can proxy
//!   to and the other maps accept (1 to 65535, no leading zero).
//! - `ALL` lists ports; each must be a port, and a port that no key maps to
//!   is an error: a session started there sets `server=appNNNN`, which would
//!   route nowhere.
//!
//! A file is refused as a whole ([`Rejected`]) when it is empty, larger
//! than [`MAX_FILE`], holds a NUL byte or invalid UTF-8, or has no entry at
//! all: those are a file caught mid-copy or not a map, and must never
//! replace a good one.

use std::collections::HashMap;
use std::fmt;

/// The key of the active set: `ALL 3001|3002|3003`.
pub const ALL: &str = "ALL";

/// The longest line, without its newline, that Apache's own `txt:`/`rnd:`
/// reader reads as one line (`REWRITE_MAX_TXT_MAP_LINE` is 1024 with the
/// newline).
pub const APACHE_MAX_LINE: usize = 1023;

/// The largest file accepted. A balance map is a few hundred bytes.
pub const MAX_FILE: usize = 1 << 20;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The map answers what the file says, but something looks unintended.
    Warning,
    /// Some lookup will not get the answer the file seems to mean, or the
    /// file would mean something else to Apache's own reader. `check`
    /// fails and `switch` refuses the file.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding about a map file, for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The line (from 1), or `None` for the file as a whole.
    pub line: Option<usize>,
    /// How serious it is.
    pub severity: Severity,
    /// What is wrong, in a few words that quote nothing from the file: what
    /// a log that more people read than the file may say.
    pub brief: &'static str,
    /// What is wrong and what it does, quoting the file where that helps.
    pub message: String,
}

impl Diagnostic {
    /// A finding; `brief` must quote nothing from the file.
    pub fn new(
        line: Option<usize>,
        severity: Severity,
        brief: &'static str,
        message: String,
    ) -> Self {
        Diagnostic {
            line,
            severity,
            brief,
            message,
        }
    }

    /// `FILE:LINE: severity: message`, the shape editors and people know.
    pub fn display_in<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        DiagnosticIn {
            file,
            diag: self,
            brief: false,
        }
    }

    /// `FILE:LINE: severity: brief`: the same without a word of the file's
    /// content, for the ErrorLog.
    pub fn brief_in<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        DiagnosticIn {
            file,
            diag: self,
            brief: true,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.severity, self.message)
    }
}

struct DiagnosticIn<'a> {
    file: &'a str,
    diag: &'a Diagnostic,
    brief: bool,
}

impl fmt::Display for DiagnosticIn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Diagnostic {
            line,
            severity,
            brief,
            message,
        } = self.diag;
        let message: &str = if self.brief { brief } else { message };
        match line {
            Some(line) => write!(f, "{}:{line}: {severity}: {message}", self.file),
            None => write!(f, "{}: {severity}: {message}", self.file),
        }
    }
}

/// Why a whole file was refused; it holds at least one error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub Vec<Diagnostic>);

/// The refusal of a file that is text but has no entry.
const NO_ENTRIES: &str = "holds no entries (only comments, blank or indented lines)";

impl Rejected {
    /// True if the file was refused only for having no entry: it is text,
    /// without NUL bytes, and means "nothing" (image-launcher's live map
    /// while no VM is up).
    pub fn has_no_entries(&self) -> bool {
        self.0
            .first()
            .is_some_and(|d| d.line.is_none() && d.message == NO_ENTRIES)
    }
}

impl Rejected {
    /// The reasons in their brief form, quoting nothing from the file.
    pub fn briefly(&self) -> impl fmt::Display + '_ {
        RejectedShown {
            rejected: self,
            brief: true,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        RejectedShown {
            rejected: self,
            brief: false,
        }
        .fmt(f)
    }
}

struct RejectedShown<'a> {
    rejected: &'a Rejected,
    brief: bool,
}

impl fmt::Display for RejectedShown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diag) in self.rejected.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if let Some(line) = diag.line {
                write!(f, "line {line}: ")?;
            }
            if diag.severity == Severity::Warning {
                f.write_str("warning: ")?;
            }
            f.write_str(if self.brief {
                diag.brief
            } else {
                &diag.message
            })?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {}

/// The value of one key: one token, split on `|` into its alternatives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    text: String,
    alternatives: Vec<String>,
    line: usize,
}

impl Value {
    fn new(text: &str, line: usize) -> Value {
        Value {
            text: text.to_owned(),
            alternatives: text.split('|').map(str::to_owned).collect(),
            line,
        }
    }

    /// The value as written: `3001|3002|3003`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parts between `|` (one for a plain value); a part may be empty.
    pub fn alternatives(&self) -> &[String] {
        &self.alternatives
    }

    /// The line the value was read from (from 1).
    pub fn line(&self) -> usize {
        self.line
    }

    /// One alternative, uniformly at random, as Apache's `rnd:` picks it.
    /// It is empty when the value has an empty alternative and that one was
    /// picked; [`MapFile::lookup`] turns that into "not found".
    pub fn pick(&self, rng: &mut fastrand::Rng) -> &str {
        match self.alternatives.as_slice() {
            [one] => one,
            many => &many[rng.usize(..many.len())],
        }
    }

    /// The port, if the value is exactly one port (`3001`).
    pub fn port(&self) -> Option<u16> {
        match self.alternatives.as_slice() {
            [one] => vmpool::parse_port(one),
            _ => None,
        }
    }
}

/// A parsed map file: its entries in file order, a key index, and what a
/// person should know about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapFile {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    diagnostics: Vec<Diagnostic>,
}

impl MapFile {
    /// A map with no entries: every lookup is "not found".
    pub fn empty() -> MapFile {
        MapFile::default()
    }

    /// Parses a whole file. Refuses it (with every reason) when it is empty,
    /// too large, holds NUL or invalid UTF-8, or has no entry; otherwise the
    /// map is what Apache would read, with [`MapFile::diagnostics`].
    pub fn parse(bytes: &[u8]) -> Result<MapFile, Rejected> {
        let text = whole_file(bytes)?;
        let mut map = MapFile::default();
        let mut lines = text.split('\n').enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let last = lines.peek().is_none();
            if last && line.is_empty() {
                break;
            }
            map.read_line(i + 1, line);
            if last {
                let brief = "no newline at end of file";
                map.warn(i + 1, brief, brief.to_owned());
            }
        }
        if map.entries.is_empty() {
            let mut why = vec![Diagnostic::new(
                None,
                Severity::Error,
                NO_ENTRIES,
                NO_ENTRIES.to_owned(),
            )];
            why.append(&mut map.diagnostics);
            return Err(Rejected(why));
        }
        map.check_values();
        map.check_all();
        map.diagnostics.sort_by_key(|d| d.line);
        Ok(map)
    }

    /// What a lookup of `key` answers, as Apache's `rnd:` would: `None` for
    /// an unknown key and for an empty alternative that was picked.
    pub fn lookup(&self, key: &str, rng: &mut fastrand::Rng) -> Option<&str> {
        self.get(key)
            .map(|value| value.pick(rng))
            .filter(|picked| !picked.is_empty())
    }

    /// The value of `key`; the first line with that key wins.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The entries in file order, each key once.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value))
    }

    /// How many keys the map has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a map with no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The servers: every key but `ALL` whose value is one port, in file
    /// order (`app3001 -> 3001`).
    pub fn servers(&self) -> impl Iterator<Item = (&str, u16)> {
        self.entries()
            .filter(|(key, _)| *key != ALL)
            .filter_map(|(key, value)| Some((key, value.port()?)))
    }

    /// The active set: the ports `ALL` lists (ignoring parts that are not
    /// ports), in file order; empty without `ALL`.
    pub fn active_ports(&self) -> Vec<u16> {
        self.get(ALL)
            .map(|all| {
                all.alternatives()
                    .iter()
                    .filter_map(|part| vmpool::parse_port(part))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Warnings and errors, by line.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// How many diagnostics have `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// `11 keys, ALL = 3001|3002|3003`, for log lines.
    pub fn summary(&self) -> String {
        // The ports of ALL, never its text as written (a summary goes to the
        // ErrorLog).
        let all = match (self.get(ALL), self.active_ports()) {
            (None, _) => "(none)".to_owned(),
            (Some(_), ports) if ports.is_empty() => "(no port)".to_owned(),
            (Some(_), ports) => ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join("|"),
        };
        format!("{} keys, ALL = {all}", self.len())
    }

    fn read_line(&mut self, number: usize, line: &str) {
        if line.len() > APACHE_MAX_LINE {
            self.error(
                number,
                "a line longer than Apache's reader takes",
                format!(
                    "line is {} bytes long; Apache's own txt/rnd reader stops at \
                     {APACHE_MAX_LINE} and reads the rest as further lines \
                     (server-map reads it whole)",
                    line.len()
                ),
            );
        }
        let bytes = line.as_bytes();
        match bytes.first() {
            None | Some(b'#') => return,
            Some(&b) if is_space(b) => {
                let mut rest = tokens(line);
                if let Some(first) = rest.next().filter(|t| !t.starts_with('#')) {
                    self.warn(
                        number,
                        "an indented entry, which Apache ignores",
                        format!(
                            "line starts with whitespace, so Apache ignores it \
                             (entry {first:?} is not used)"
                        ),
                    );
                }
                return;
            }
            Some(_) => {}
        }
        let mut parts = tokens(line);
        let Some(key) = parts.next() else { return };
        let Some(value) = parts.next() else {
            self.warn(
                number,
                "a key without a value (line ignored)",
                format!("key {key:?} has no value; line ignored"),
            );
            return;
        };
        if let Some(extra) = parts.next().filter(|t| !t.starts_with('#')) {
            self.warn(
                number,
                "text after the value (ignored)",
                format!("text after the value of {key:?} is ignored, from {extra:?}"),
            );
        }
        if let Some(&first) = self.index.get(key) {
            let first_line = self.entries[first].1.line;
            self.error(
                number,
                "a duplicate key (the first line wins)",
                format!(
                    "duplicate key {key:?} (lines {first_line} and {number}): \
                     line {first_line} wins, as in Apache"
                ),
            );
            return;
        }
        self.index.insert(key.to_owned(), self.entries.len());
        self.entries
            .push((key.to_owned(), Value::new(value, number)));
    }

    /// Empty alternatives, digits that are no port, `appNNNN` naming
    /// another port.
    fn check_values(&mut self) {
        let mut found = Vec::new();
        for (key, value) in self.entries() {
            let line = Some(value.line());
            if value.alternatives().iter().any(String::is_empty) {
                found.push(Diagnostic::new(
                    line,
                    Severity::Error,
                    "an empty alternative (answers NULL when picked)",
                    format!(
                        "{key} = {:?} has an empty alternative: when it is picked \
                         the map answers NULL",
                        value.text()
                    ),
                ));
            }
            for part in value.alternatives() {
                let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
                if digits && vmpool::parse_port(part).is_none() {
                    found.push(Diagnostic::new(
                        line,
                        Severity::Error,
                        "a number that is not a port",
                        format!("{key}: {part:?} is not a port (1 to 65535, no leading zero)"),
                    ));
                }
            }
            let named = key.strip_prefix("app").and_then(vmpool::parse_port);
            if let (Some(named), Some(port)) = (named, value.port())
                && named != port
            {
                found.push(Diagnostic::new(
                    line,
                    Severity::Warning,
                    "an appNNNN key mapping to another port",
                    format!(
                        "{key} maps to port {port}; the VM there sets its cookie to \
                         server=app{port}"
                    ),
                ));
            }
        }
        self.diagnostics.extend(found);
    }

    /// `ALL` lists ports, each of which some key maps to.
    fn check_all(&mut self) {
        let Some(all) = self.get(ALL) else {
            self.diagnostics.push(Diagnostic::new(
                None,
                Severity::Warning,
                "no ALL entry",
                "no ALL entry: ${SERVERS:ALL} answers NULL".to_owned(),
            ));
            return;
        };
        let line = Some(all.line());
        let mut found = Vec::new();
        for part in all.alternatives().iter().filter(|p| !p.is_empty()) {
            match vmpool::parse_port(part) {
                None if !part.bytes().all(|b| b.is_ascii_digit()) => {
                    found.push(Diagnostic::new(
                        line,
                        Severity::Error,
                        "ALL lists something that is not a port",
                        format!("ALL lists {part:?}, which is not a port"),
                    ));
                }
                None => {} // digits out of range: reported by check_values
                Some(port) if !self.servers().any(|(_, p)| p == port) => {
                    found.push(Diagnostic::new(
                        line,
                        Severity::Error,
                        "ALL lists a port no key maps to",
                        format!(
                            "ALL lists port {port}, which no key maps to: a session \
                             started there (cookie server=app{port}) cannot find its \
                             VM again"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        self.diagnostics.extend(found);
    }

    fn warn(&mut self, line: usize, brief: &'static str, message: String) {
        self.diagnostics.push(Diagnostic::new(
            Some(line),
            Severity::Warning,
            brief,
            message,
        ));
    }

    fn error(&mut self, line: usize, brief: &'static str, message: String) {
        self.diagnostics
            .push(Diagnostic::new(Some(line), Severity::Error, brief, message));
    }
}

/// The checks on the file as a whole: not empty, not too large, no NUL,
/// valid UTF-8 (each bad line is named).
fn whole_file(bytes: &[u8]) -> Result<&str, Rejected> {
    let refuse = |brief: &'static str, message: String| {
        Rejected(vec![Diagnostic::new(None, Severity::Error, brief, message)])
    };
    if bytes.is_empty() {
        return Err(refuse("is empty", "is empty".to_owned()));
    }
    if bytes.len() > MAX_FILE {
        return Err(refuse(
            "is larger than a map file may be",
            format!(
                "is {} bytes; a map file may have at most {MAX_FILE}",
                bytes.len()
            ),
        ));
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && !text.contains('\0')
    {
        return Ok(text);
    }
    let mut found = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = Some(i + 1);
        if line.contains(&0) {
            found.push(Diagnostic::new(
                line_no,
                Severity::Error,
                "holds a NUL byte",
                "holds a NUL byte".to_owned(),
            ));
        } else if std::str::from_utf8(line).is_err() {
            found.push(Diagnostic::new(
                line_no,
                Severity::Error,
                "is not valid UTF-8",
                "is not valid UTF-8".to_owned(),
            ));
        }
    }
    Err(Rejected(found))
}

/// Apache's `apr_isspace`: C's `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// The whitespace-separated tokens of a line.
fn tokens(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_ascii() && is_space(c as u8))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> MapFile {
        MapFile::parse(text.as_bytes()).expect("parses")
    }

    #[test]
    fn keys_values_and_alternatives() {
        let map = parse("app3001 3001\napp3002 3002\nALL 3001|3002\n");
        assert_eq!(map.len(), 3);
        assert_eq!(map.get("app3001").map(Value::text), Some("3001"));
        assert_eq!(
            map.get("ALL").map(Value::alternatives),
            Some(&["3001".to_owned(), "3002".to_owned()][..])
        );
        assert_eq!(map.get("all"), None, "keys are case-sensitive");
        assert_eq!(
            map.servers().collect::<Vec<_>>(),
            [("app3001", 3001), ("app3002", 3002)]
        );
        assert_eq!(map.active_ports(), [3001, 3002]);
        assert!(map.diagnostics().is_empty(), "{:?}", map.diagnostics());
        assert_eq!(map.summary(), "3 keys, ALL = 3001|3002");
    }

    #[test]
    fn pick_covers_every_alternative() {
        let map = parse("app1 1\napp2 2\napp3 3\nALL 1|2|3\n");
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = [0u32; 3];
        for _ in 0..300 {
            let picked = map.lookup("ALL", &mut rng).expect("found");
            seen[picked.parse::<usize>().expect("digit") - 1] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn an_empty_alternative_is_not_found_never_empty() {
        let map = MapFile::parse(b"app1 1\nALL 1|\n").expect("parses");
        let mut rng = fastrand::Rng::with_seed(1);
        let answers: Vec<_> = (0..100).map(|_| map.lookup("ALL", &mut rng)).collect();
        assert!(answers.contains(&None) && answers.contains(&Some("1")));
        assert_eq!(map.count(Severity::Error), 1, "{:?}", map.diagnostics());
    }

    #[test]
    fn vertical_tab_and_form_feed_are_whitespace_like_in_c() {
        let map = parse("app1\x0b1\x0cignored\nALL\t1\r\n");
        assert_eq!(map.get("app1").map(Value::text), Some("1"));
        assert_eq!(map.get("ALL").map(Value::text), Some("1"));
    }

    #[test]
    fn non_breaking_space_is_part_of_a_token() {
        let map = parse("app1\u{a0}x 1\nALL 1\n");
        assert!(map.get("app1\u{a0}x").is_some());
    }
}

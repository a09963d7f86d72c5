//! `vmpool`'s pid records: any text parses to a record or to nothing, never
//! a panic; a parsed record names a real pid (not 0, which `kill` would take
//! as "my whole process group") taken from the first line, and written back
//! it parses to the same record; and a record built from any pid, start
//! time and boot id (as `/proc` gives them: one trimmed line) survives the
//! trip through its file.
//!
//! Input: the file's text (lossily UTF-8, as a file read whole), and the
//! same bytes read as a record's fields.

use vmpool::PidRecord;

use crate::input::Input;

/// Checks pid records on `data` (see the module doc).
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(record) = PidRecord::parse(&text) {
        assert!(record.pid > 0);
        let first = text.lines().next().map(str::trim);
        assert_eq!(first.and_then(|l| l.parse().ok()), Some(record.pid));
        round_trips(&record);
    }
    let mut input = Input::new(data);
    let pid = input.u32();
    let start_ticks = u64::from(input.u32()) << 32 | u64::from(input.u32());
    let boot_id = String::from_utf8_lossy(input.rest()).into_owned();
    if pid > 0 && boot_id.trim() == boot_id && !boot_id.contains('\n') {
        round_trips(&PidRecord {
            pid,
            start_ticks,
            boot_id,
        });
    }
}

fn round_trips(record: &PidRecord) {
    let text = record.file_text();
    assert_eq!(
        text.lines().next(),
        Some(record.pid.to_string().as_str()),
        "the first line is the pid, as every pid-file tool expects"
    );
    assert_eq!(PidRecord::parse(&text).as_ref(), Some(record), "{text:?}");
}

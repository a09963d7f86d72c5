//! Preconditions of a test: a test whose precondition is missing says so
//! and stops, reported as skipped with the reason, never as a silent pass;
//! where CI runs (`CI` set), the preconditions it provides (root, Apache,
//! sock_diag) must hold, so a missing one fails the test there.

/// True if the test may go on. Otherwise prints `SKIPPED: <test>: <reason>`
/// on stderr (where `cargo test` shows it) and returns false, or panics when
/// `CI` is set.
pub fn require(holds: bool, reason: &str) -> bool {
    if holds {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {reason}, and CI is set: CI must provide it"
    );
    eprintln!("SKIPPED: {test}: {reason}");
    false
}

/// True when the test runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

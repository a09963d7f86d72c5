//! End-to-end tests through a real Apache 2.4 live in `tests/`.

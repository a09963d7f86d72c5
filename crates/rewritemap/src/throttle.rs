//! Log lines that could repeat on every request, held to one per period per
//! subject: a map program sits on the path of every dynamic request, and a
//! condition that lasts (a port backing off, a command that cannot start, a
//! stranger on a pool port) must not write a line per request into Apache's
//! ErrorLog. The first line of a subject is always written; the next at most
//! once per period, saying how many were held back.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The per-subject memory of a throttled log.
#[derive(Debug)]
pub struct Throttle<K> {
    period: Duration,
    subjects: HashMap<K, Subject>,
}

#[derive(Debug, Clone, Copy)]
struct Subject {
    last: Instant,
    held_back: u64,
}

impl<K: Eq + Hash> Throttle<K> {
    /// At most one line per `period` for each subject.
    pub fn new(period: Duration) -> Throttle<K> {
        Throttle {
            period,
            subjects: HashMap::new(),
        }
    }

    /// `Some(n)` when a line about `subject` may be written now (`n` lines
    /// were held back since the last one); `None` when it must be held back.
    pub fn admit(&mut self, subject: K) -> Option<u64> {
        self.admit_at(subject, Instant::now())
    }

    fn admit_at(&mut self, subject: K, now: Instant) -> Option<u64> {
        match self.subjects.get_mut(&subject) {
            None => {
                self.subjects.insert(
                    subject,
                    Subject {
                        last: now,
                        held_back: 0,
                    },
                );
                Some(0)
            }
            Some(s) if now.duration_since(s.last) >= self.period => {
                let held_back = s.held_back;
                *s = Subject {
                    last: now,
                    held_back: 0,
                };
                Some(held_back)
            }
            Some(s) => {
                s.held_back += 1;
                None
            }
        }
    }

    /// Forgets `subject`: its next line is written at once (the condition
    /// ended, and a new one deserves its first line).
    pub fn reset(&mut self, subject: &K) {
        self.subjects.remove(subject);
    }
}

/// " (N more like it held back)" for a count above zero, else "".
pub fn held_back_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it held back)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_per_subject_with_the_count_held_back() {
        let mut throttle = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(1, t0), Some(0));
        assert_eq!(throttle.admit_at(2, t0), Some(0), "subjects are apart");
        for s in 1..=30 {
            assert_eq!(throttle.admit_at(1, t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(throttle.admit_at(1, t0 + Duration::from_secs(60)), Some(30));
        assert_eq!(throttle.admit_at(1, t0 + Duration::from_secs(61)), None);
        throttle.reset(&1);
        assert_eq!(throttle.admit_at(1, t0 + Duration::from_secs(62)), Some(0));
        assert_eq!(held_back_note(0), "");
        assert_eq!(held_back_note(3), " (3 more like it held back)");
    }
}

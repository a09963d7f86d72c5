//! The sessions a VM holds in memory, their expiry, and the idle clock behind
//! `--idle-exit-s`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Every live session of this VM, keyed by its id.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    state: Mutex<State>,
}

/// Sessions past their time are dropped in sweeps this far apart; until
/// then a lookup ignores them. Sweeping on every tick would hold the lock
/// over the whole map ten times a second in a long benchmark.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    live: HashMap<u64, Session>,
    /// The last request of any session: once it is older than the TTL, every
    /// session is. `None` when no session is held.
    latest: Option<Instant>,
    /// Since when no session has been live (meaningful when `latest` is `None`).
    idle_since: Instant,
    last_sweep: Instant,
}

#[derive(Debug)]
struct Session {
    hits: u64,
    last_seen: Instant,
}

/// What one request did to the sessions.
#[derive(Debug, Clone, Copy)]
pub struct Visit {
    pub id: u64,
    pub hits: u64,
    /// The request named no live session, so this one was created for it.
    pub new: bool,
}

impl Sessions {
    /// No session yet; the idle clock starts now.
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            state: Mutex::new(State {
                live: HashMap::new(),
                latest: None,
                idle_since: Instant::now(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Counts a request for the first of `claimed` that is a live session,
    /// or for a new session when none is.
    pub fn visit(&self, claimed: impl IntoIterator<Item = u64>) -> Visit {
        let now = Instant::now();
        let mut state = self.lock();
        state.latest = Some(state.latest.map_or(now, |latest| latest.max(now)));
        for id in claimed {
            if let Some(session) = state.live.get_mut(&id)
                && now.saturating_duration_since(session.last_seen) < self.ttl
            {
                session.hits = session.hits.saturating_add(1);
                session.last_seen = now;
                let hits = session.hits;
                return Visit {
                    id,
                    hits,
                    new: false,
                };
            }
        }
        let id = loop {
            let id = fastrand::u64(..);
            if !state.live.contains_key(&id) {
                break id;
            }
        };
        state.live.insert(
            id,
            Session {
                hits: 1,
                last_seen: now,
            },
        );
        Visit {
            id,
            hits: 1,
            new: true,
        }
    }

    /// Drops expired sessions (all at once when the last one has expired,
    /// else in a sweep every [`SWEEP_EVERY`]). Returns how long no session
    /// has been live, or `None` while one is.
    pub fn expire(&self, now: Instant) -> Option<Duration> {
        let ttl = self.ttl;
        let mut state = self.lock();
        match state.latest {
            None => Some(now.saturating_duration_since(state.idle_since)),
            Some(latest) if now.saturating_duration_since(latest) >= ttl => {
                // A new map, not clear(): give the memory back.
                state.live = HashMap::new();
                state.latest = None;
                state.idle_since = now;
                Some(Duration::ZERO)
            }
            Some(_) => {
                if now.saturating_duration_since(state.last_sweep) >= SWEEP_EVERY {
                    state
                        .live
                        .retain(|_, s| now.saturating_duration_since(s.last_seen) < ttl);
                    state.last_sweep = now;
                }
                None
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and the map stays usable
        // even if something did: never turn a poisoned lock into a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `session` cookie value: exactly 16 hex digits (written as `{id:016x}`).
pub fn parse_id(value: &[u8]) -> Option<u64> {
    if value.len() != 16 || !value.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let hex = std::str::from_utf8(value).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_garbage_is_refused() {
        let id = 0x00ab_cdef_0123_4567;
        let text = format!("{id:016x}");
        assert_eq!(text, "00abcdef01234567");
        assert_eq!(parse_id(text.as_bytes()), Some(id));
        for bad in [
            &b""[..],
            b"+0abcdef01234567",
            b"00abcdef0123456",
            b"zzzzzzzzzzzzzzzz",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_visit_counts_hits_and_expired_sessions_are_replaced() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let first = sessions.visit(None);
        assert!(first.new);
        let again = sessions.visit([1, first.id]);
        assert_eq!((again.id, again.hits, again.new), (first.id, 2, false));
        assert_eq!(sessions.expire(Instant::now()), None);
        std::thread::sleep(Duration::from_millis(60));
        let later = sessions.visit([first.id]);
        assert!(later.new && later.id != first.id);
        let later_on = Instant::now() + Duration::from_millis(60);
        assert_eq!(sessions.expire(later_on), Some(Duration::ZERO));
        let idle = sessions.expire(later_on + Duration::from_millis(30));
        assert_eq!(idle, Some(Duration::from_millis(30)));
        assert!(sessions.visit([later.id]).new, "dropped with the rest");
    }
}

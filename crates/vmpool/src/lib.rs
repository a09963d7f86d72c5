//! The pool's ports and the processes behind them, each written once:
//! which ports belong to the pool, whether a VM listens on one, which process
//! was launched there, how to launch one detached and how to stop one that is
//! ours and no one else's.
//!
//! # Files
//! Per port, in the launcher's pid directory: `<port>.pid` (the pid record)
//! and `<port>.lock` (held while a launcher decides about that port). In the
//! log directory: `<port>.log`, the VM's stdout and stderr. Next to the live
//! map: `LIVE_MAP.json` ([`state`]) and the host's drain flag,
//! `LIVE_MAP.drain` ([`host`]). Under systemd, each VM's unit is
//! `seaside-vm-<port>.scope` ([`systemd`]).
//!
//! # Failure modes
//! Nothing here trusts a pid on its own: a pid record names a process by pid
//! and start time, and a process is signalled only while both still match
//! and it is not a zombie.

#![deny(missing_docs)]

pub mod files;
pub mod host;
pub mod kill;
pub mod listen_table;
pub mod lock;
pub mod pidfd;
pub mod pidrecord;
pub mod ports;
pub mod probe;
pub mod safedir;
pub mod spawn;
pub mod state;
pub mod stopmark;
pub mod systemd;

pub use host::HostHealth;
pub use kill::{Stopped, kill_if_ours};
pub use lock::PortLock;
pub use pidrecord::{Liveness, PidRecord};
pub use ports::{PortSpec, SpecError, parse_port};
pub use probe::{Found, ProbeMethod, Prober, connect_probe};
pub use spawn::{Identity, Launch, spawn_detached};

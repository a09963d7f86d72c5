//! What every map program does around the loop: the shared flags, logging to
//! stderr, SIGTERM, and the by-hand mode an operator uses when debugging.
//!
//! Apache starts a `prg:` map with an empty environment (no `RUST_LOG`), so
//! the log level comes from `--log-level`. The program's stderr is Apache's
//! ErrorLog, where the three maps' lines mix, so every line names the program
//! and its pid.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, ErrorKind, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use tracing::{Event, Subscriber, level_filters::LevelFilter};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::registry::LookupSpan;

use crate::serve::{self, BadKey, Ended};
use crate::{key, signals, successor};

/// The flags every map program shares; `#[command(flatten)]` it.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// How much to log on stderr (Apache's ErrorLog). `debug` logs every
    /// lookup with its answer and time.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: LogLevel,
}

/// A `--log-level` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Nothing at all.
    Off,
    /// Failures that lose an answer or a VM.
    Error,
    /// Rejected input, refused launches, unreadable files.
    Warn,
    /// Start, stop, reloads, launches, kills.
    Info,
    /// Every lookup.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Off => LevelFilter::OFF,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// A map program's fixed traits.
#[derive(Debug, Clone, Copy)]
pub struct MapProgram {
    /// The binary's name, as it appears in log lines.
    pub name: &'static str,
    /// The "no" answer (`closed`, `NULL`).
    pub no: &'static str,
    /// A key to show in the hint for a person at a terminal.
    pub example_key: &'static str,
}

impl MapProgram {
    /// Installs logging (stderr only) and the SIGTERM handler, and makes
    /// the process non-dumpable: its `/proc/PID` files then belong to root,
    /// so a process of the same user (a compromised VM, or Apache's worker)
    /// can neither read its environment nor attach to it with ptrace and
    /// change what it answers. Call first. In a successor (see
    /// [`crate::successor`]), also bounds its life.
    pub fn start(&self, common: &CommonArgs) -> io::Result<()> {
        nix::sys::prctl::set_dumpable(false)?;
        let _ = tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(false)
            .with_max_level(LevelFilter::from(common.log_level))
            .event_format(LinePrefix {
                name: self.name,
                pid: std::process::id(),
            })
            .try_init();
        successor::keep_stdin();
        signals::install()?;
        if successor::is_successor() {
            tracing::info!(
                "successor: answering the previous Apache generation until it closes the pipe (at most {:?})",
                successor::DRAIN_MAX
            );
            successor::limit_drain(self.name);
        }
        Ok(())
    }

    /// Runs the map: with `keys` given, answers each and exits 0 only if
    /// every answer is a "yes" (not `no`); without, serves stdin until EOF.
    pub fn run<A: AsRef<str>>(
        &self,
        keys: &[OsString],
        answer: impl FnMut(&str) -> Result<A, BadKey>,
    ) -> ExitCode {
        let result = if keys.is_empty() {
            self.serve_stdin(answer)
        } else {
            self.answer_args(keys, answer)
        };
        match result {
            Ok(code) => code,
            Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("stopping: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn serve_stdin<A: AsRef<str>>(
        &self,
        answer: impl FnMut(&str) -> Result<A, BadKey>,
    ) -> io::Result<ExitCode> {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            // A hint for a person, not a log line: plain, on stderr.
            eprintln!(
                "{}: type one key per line (for example {}), Ctrl-D to end; --help explains",
                self.name, self.example_key
            );
        }
        tracing::debug!("serving keys from stdin");
        let ended = serve::serve(stdin.lock(), io::stdout().lock(), self.no, answer)?;
        if let Ended::Signalled { at_rest } = ended {
            after_sigterm(at_rest);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn answer_args<A: AsRef<str>>(
        &self,
        keys: &[OsString],
        mut answer: impl FnMut(&str) -> Result<A, BadKey>,
    ) -> io::Result<ExitCode> {
        let mut out = io::stdout().lock();
        let mut all_yes = true;
        for raw in keys {
            let reply = match key::check_key(raw.as_bytes()) {
                Ok(key) => match answer(key) {
                    Ok(reply) => serve::checked_answer(key, reply.as_ref(), self.no).to_owned(),
                    Err(bad) => {
                        tracing::warn!("rejected key {key:?}: {bad}");
                        self.no.to_owned()
                    }
                },
                Err(rejection) => {
                    tracing::warn!("rejected argument {raw:?}: {rejection}");
                    self.no.to_owned()
                }
            };
            all_yes &= reply != self.no;
            writeln!(out, "{reply}")?;
        }
        out.flush()?;
        Ok(if all_yes {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// On SIGTERM: hand the pipes to a successor unless this is one already or
/// a key was cut; then the caller exits.
fn after_sigterm(at_rest: bool) {
    if successor::is_successor() {
        tracing::info!("successor: SIGTERM, stopping");
        return;
    }
    if !at_rest {
        tracing::warn!("SIGTERM in the middle of a key: stopping without a successor");
        return;
    }
    match successor::hand_over() {
        Ok(Some(pid)) => tracing::info!(
            "SIGTERM: stopping; successor pid {pid} answers the previous Apache generation until it closes the pipe"
        ),
        Ok(None) => tracing::info!("SIGTERM: stopping"),
        Err(e) => tracing::warn!("SIGTERM: stopping; cannot start a successor: {e}"),
    }
}

/// `2026-11-22T16:20:00.123456Z verify-port[4242] WARN message key="3001"`
struct LinePrefix {
    name: &'static str,
    pid: u32,
}

impl<S, N> FormatEvent<S, N> for LinePrefix
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut writer)?;
        let level = event.metadata().level();
        write!(writer, " {}[{}] {level} ", self.name, self.pid)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

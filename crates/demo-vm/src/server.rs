//! The VM's life: wait (`--start-delay-ms`), listen, serve each connection on
//! its own thread (or, with `--serial`, one connection at a time, as a
//! single-threaded VM does), expire sessions, and exit when idle or when told
//! to crash.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::Control;
use crate::http::{self, Body, ReadError, Status};
use crate::sessions::{self, Sessions};

/// The target of every log line, so that lines read `demo-vm: ...`.
pub const LOG: &str = "demo-vm";

/// How often sessions are expired and the idle rule is checked.
const TICK: Duration = Duration::from_millis(100);
/// A keep-alive connection idle this long is closed, so threads don't pile up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// After an error answer, how long to read what the client still sends.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 64 * 1024;
/// Connection threads only hold small buffers (the head is on the heap).
const THREAD_STACK: usize = 256 * 1024;

/// Everything `run` needs, validated.
#[derive(Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub start_delay: Duration,
    pub idle_exit: Option<Duration>,
    pub exit_after: Option<Duration>,
    pub session_ttl: Duration,
    /// Listen, but never accept: a VM that has hung with its socket open.
    pub never_accept: bool,
    /// Serve one connection at a time, on the accepting thread.
    pub serial: bool,
    /// Never set the `server` cookie (an application that sets none).
    pub no_route_cookie: bool,
}

/// What every connection thread shares.
#[derive(Debug)]
struct Vm {
    port: u16,
    /// `app<port>`: the value of the `server` cookie.
    name: String,
    sessions: Sessions,
    control: &'static Control,
    /// Sets the `server` cookie.
    route_cookie: bool,
}

/// Runs the VM until it exits on its own (idle, simulated crash) or is killed.
pub fn run(config: &Config, control: &'static Control) -> anyhow::Result<Infallible> {
    if let Some(after) = config.exit_after {
        if after.is_zero() {
            crash(after);
        }
        spawn(move || {
            thread::sleep(after);
            crash(after)
        })
        .context("starting the --exit-after-s timer")?;
    }
    if !config.start_delay.is_zero() {
        tracing::info!(target: LOG, "waiting {:?} before listening", config.start_delay);
        thread::sleep(config.start_delay);
    }
    let listener = TcpListener::bind(config.addr)
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let vm = Arc::new(Vm {
        port: local.port(),
        name: format!("app{}", local.port()),
        sessions: Sessions::new(config.session_ttl),
        control,
        route_cookie: !config.no_route_cookie,
    });
    let idle_exit = config.idle_exit;
    let reaper = Arc::clone(&vm);
    spawn(move || expire_sessions(&reaper.sessions, idle_exit))
        .context("starting the session reaper")?;
    tracing::info!(target: LOG, "listening on {local} (pid {})", process::id());
    if config.never_accept {
        tracing::info!(target: LOG, "never accepting a connection (--never-accept)");
        loop {
            thread::park();
        }
    }
    loop {
        control.stop_if_hung();
        match listener.accept() {
            Ok((stream, _)) if config.serial => serve(&stream, &vm),
            Ok((stream, _)) => {
                let vm = Arc::clone(&vm);
                if let Err(e) = spawn(move || serve(&stream, &vm)) {
                    // The stream went down with the closure: the client sees a close.
                    tracing::warn!(target: LOG, "cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors, mostly: don't spin on it.
                tracing::warn!(target: LOG, "accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .stack_size(THREAD_STACK)
        .spawn(f)
        .map(drop)
}

fn crash(after: Duration) -> ! {
    tracing::warn!(target: LOG, "exiting (status 1): simulated crash after {after:?} (--exit-after-s)");
    process::exit(1)
}

/// The reaper: drops expired sessions, and ends the process once no session
/// has been live for `idle_exit`.
fn expire_sessions(sessions: &Sessions, idle_exit: Option<Duration>) {
    loop {
        thread::sleep(TICK);
        if let Some(idle) = sessions.expire(Instant::now())
            && let Some(limit) = idle_exit
            && idle >= limit
        {
            tracing::info!(target: LOG, "exiting (status 0): no live session for {limit:?} (--idle-exit-s)");
            process::exit(0);
        }
    }
}

/// Serves one connection until the client closes it, asks to, goes quiet
/// for [`IDLE_TIMEOUT`] or sends something malformed.
fn serve(stream: &TcpStream, vm: &Vm) {
    // Best effort: a socket that refuses these options still gets served.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut writer = BufWriter::with_capacity(4 * 1024, stream);
    let mut head = Vec::with_capacity(1024);
    let mut body = String::with_capacity(128);
    loop {
        match exchange(vm, &mut reader, &mut writer, &mut head, &mut body) {
            Ok(true) => {}
            Ok(false) | Err(ReadError::Closed) => return,
            Err(ReadError::Reject(status)) => {
                if let Err(e) = reject(stream, &mut reader, &mut writer, status) {
                    tracing::debug!(target: LOG, "answering {}: {e}", status.code);
                }
                return;
            }
            Err(ReadError::Io(e)) => {
                tracing::debug!(target: LOG, "connection closed: {e}");
                return;
            }
        }
    }
}

/// One request and its answer; `Ok(false)` when the connection must close.
fn exchange(
    vm: &Vm,
    reader: &mut BufReader<&TcpStream>,
    writer: &mut BufWriter<&TcpStream>,
    head: &mut Vec<u8>,
    body: &mut String,
) -> Result<bool, ReadError> {
    vm.control.stop_if_hung();
    http::read_head(reader, head)?;
    let req = http::parse(head).map_err(ReadError::Reject)?;
    if req.expect_continue && req.body != Body::Empty {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    http::skip_body(reader, req.body)?;
    if req.path.ends_with("/hang") {
        vm.control.hang();
    }
    if req.path.ends_with("/health") {
        return health(vm, writer, req.keep_alive);
    }
    vm.control.count_request();

    let visit = vm.sessions.visit(
        req.cookies()
            .filter(|(name, _)| *name == b"session")
            .filter_map(|(_, value)| sessions::parse_id(value)),
    );
    // Set the server cookie unless every one the client sent names this VM:
    // Apache routes on it, so it must follow the session here.
    let (mut ours, mut foreign) = (false, false);
    for (_, value) in req.cookies().filter(|(name, _)| *name == b"server") {
        if value == vm.name.as_bytes() {
            ours = true;
        } else {
            foreign = true;
        }
    }
    if let Some(ms) = req.sleep_ms() {
        thread::sleep(Duration::from_millis(ms));
    }

    body.clear();
    // Writing into a String cannot fail.
    let _ = writeln!(
        body,
        "port={} session={:016x} hits={} new={} path={}",
        vm.port, visit.id, visit.hits, visit.new, req.path
    );
    match req.status() {
        Some(code) => write!(writer, "HTTP/1.1 {code} Status {code}\r\n")?,
        None => writer.write_all(b"HTTP/1.1 200 OK\r\n")?,
    }
    writer.write_all(b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n")?;
    write!(writer, "Content-Length: {}\r\n", body.len())?;
    if visit.new {
        write!(
            writer,
            "Set-Cookie: session={:016x}; Path=/; HttpOnly\r\n",
            visit.id
        )?;
    }
    if vm.route_cookie && (!ours || foreign) {
        write!(writer, "Set-Cookie: server={}; Path=/\r\n", vm.name)?;
    }
    if !req.keep_alive {
        writer.write_all(b"Connection: close\r\n")?;
    } else if !req.http11 {
        writer.write_all(b"Connection: keep-alive\r\n")?;
    }
    writer.write_all(b"\r\n")?;
    if !req.is_head() {
        writer.write_all(body.as_bytes())?;
    }
    writer.flush()?;
    Ok(req.keep_alive)
}

/// `OK` (200) or `DYING` (503), for the launcher's `--health-path`; no
/// session, no cookie.
fn health(
    vm: &Vm,
    writer: &mut BufWriter<&TcpStream>,
    keep_alive: bool,
) -> Result<bool, ReadError> {
    let (status, body) = if vm.control.dying() {
        ("503 Service Unavailable", "DYING\n")
    } else {
        ("200 OK", "OK\n")
    };
    write!(
        writer,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    )?;
    writer.flush()?;
    Ok(keep_alive)
}

/// Answers `status` and closes. The close lingers: closing a socket with
/// unread input sends a reset, which can destroy the answer before the client
/// reads it (RFC 9112 9.6), so stop writing first and read what still comes.
fn reject(
    stream: &TcpStream,
    reader: &mut BufReader<&TcpStream>,
    writer: &mut BufWriter<&TcpStream>,
    status: Status,
) -> io::Result<()> {
    tracing::debug!(target: LOG, "rejecting a request: {} {}", status.code, status.reason);
    write!(
        writer,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{}\n",
        status.code,
        status.reason,
        status.reason.len() + 1,
        status.reason
    )?;
    writer.flush()?;
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(LINGER))?;
    io::copy(&mut reader.take(LINGER_BYTES), &mut io::sink())?;
    Ok(())
}

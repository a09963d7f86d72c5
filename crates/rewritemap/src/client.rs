//! Apache's side of the protocol, for tests and benchmarks: start a map
//! program the way mod_rewrite does and ask it one key at a time.
//!
//! Like Apache, [`MapProcess::spawn`] starts the program with an empty
//! environment and pipes on stdin and stdout; its stderr is collected so that
//! a test can show it or assert on it. [`MapProcess::ask`] writes `key\n` and
//! reads one line back, with a deadline, so a program that hangs fails the
//! test instead of hanging it.
//!
//! A program sent SIGTERM leaves a successor on the same pipes (see
//! [`crate::successor`]). The calling process becomes a child subreaper, so
//! that successor is re-parented to it, and [`MapProcess::finish`] (or drop)
//! closes the pipe and reaps it: nothing is left behind.

pub mod hostile;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// `n` distinct loopback ports that nothing listens on, and that no earlier
/// call in this process has returned: tests running in parallel threads
/// must not share a port. They are taken below the kernel's ephemeral range
/// (`ip_local_port_range`), so that no outgoing connection of any test (a
/// client, a probe) can be given one of them as its source port and keep a
/// VM from binding it later.
pub fn free_loopback_ports(n: usize) -> Vec<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let (low, high) = below_ephemeral_range();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        assert!(tries < 100_000, "no free loopback port in {low}..{high}");
        let port = low + (random_u64() % u64::from(high - low)) as u16;
        if given.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        ports.push(port);
    }
    ports
}

/// A random number, from the standard library's per-process hash keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The ports tests pick from: from 10000 up to the start of the ephemeral
/// range (32768 on Linux by default).
fn below_ephemeral_range() -> (u16, u16) {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if start > 12_000 {
        (10_000, start)
    } else {
        (start.saturating_sub(2_000).max(1024), start)
    }
}

/// A running map program.
#[derive(Debug)]
pub struct MapProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    pending: Vec<u8>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl MapProcess {
    /// Starts `program` with `args`, an empty environment, and pipes for
    /// stdin, stdout and stderr.
    pub fn spawn<I, S>(program: impl AsRef<OsStr>, args: I) -> io::Result<MapProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(command)
    }

    /// Starts a prepared command, replacing its environment and stdio the
    /// way Apache does.
    pub fn spawn_command(mut command: Command) -> io::Result<MapProcess> {
        nix::sys::prctl::set_child_subreaper(true)?;
        command
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io::Error::other("child has no pipes"));
        };
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut chunk) {
                if let Ok(mut all) = sink.lock() {
                    all.extend_from_slice(&chunk[..n]);
                }
            }
        });
        Ok(MapProcess {
            child,
            stdin: Some(stdin),
            stdout: Some(stdout),
            pending: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        })
    }

    /// The program's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `key` and a newline, as Apache does (in one write).
    pub fn send(&mut self, key: &[u8]) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("stdin already closed"))?;
        let mut line = Vec::with_capacity(key.len() + 1);
        line.extend_from_slice(key);
        line.push(b'\n');
        stdin.write_all(&line)?;
        stdin.flush()
    }

    /// Reads one answer line (without its newline), waiting at most
    /// `timeout`. End of output before a newline is an error.
    pub fn read_line(&mut self, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return String::from_utf8(line[..at].to_vec())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer line within {timeout:?}"),
                ));
            }
            let stdout = self
                .stdout
                .as_mut()
                .ok_or_else(|| io::Error::other("stdout already closed"))?;
            let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut chunk = [0u8; 4096];
            let n = stdout.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "map program closed its stdout",
                ));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `key` and returns the answer and the time it took.
    pub fn ask(&mut self, key: &str, timeout: Duration) -> io::Result<(String, Duration)> {
        self.ask_bytes(key.as_bytes(), timeout)
    }

    /// Like [`MapProcess::ask`], for keys that are not UTF-8.
    pub fn ask_bytes(&mut self, key: &[u8], timeout: Duration) -> io::Result<(String, Duration)> {
        let started = Instant::now();
        self.send(key)?;
        let answer = self.read_line(timeout)?;
        Ok((answer, started.elapsed()))
    }

    /// Writes all of `input` on the program's stdin, from a thread of its
    /// own, in writes of the sizes in `pieces` (cycled; one write when
    /// empty), then closes stdin (end of input); and returns everything the
    /// program writes on stdout until it closes it, waiting at most
    /// `timeout` in all. Unlike Apache this does not wait for each answer
    /// before the next key, so a program that reads ahead or splits keys
    /// at write boundaries shows it. A program that stops reading cannot
    /// hang the caller: past the deadline this is an error, and dropping
    /// the `MapProcess` kills the program, which ends the writer.
    pub fn answer_all(
        &mut self,
        input: Vec<u8>,
        pieces: &[usize],
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut stdin = self
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("stdin already closed"))?;
        let pieces: Vec<usize> = pieces.iter().copied().filter(|&n| n > 0).collect();
        let writer = thread::spawn(move || -> io::Result<()> {
            let mut rest = &input[..];
            let mut sizes = pieces.into_iter().cycle();
            while !rest.is_empty() {
                let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
                stdin.write_all(&rest[..n])?;
                rest = &rest[n..];
            }
            Ok(())
        });
        let output = self.read_to_end(deadline)?;
        // The program closed its stdout: it has read all of its input, or
        // died and the writer meets EPIPE. Either way the writer ends.
        while !writer.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        if !writer.is_finished() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the program closed its stdout but does not read its stdin",
            ));
        }
        match writer.join() {
            Ok(Ok(())) => Ok(output),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!("the program stopped reading its input: {e}"),
            )),
            Err(_) => Err(io::Error::other("the writer thread panicked")),
        }
    }

    /// Everything left on stdout until the program closes it, by `deadline`.
    fn read_to_end(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        let mut all = std::mem::take(&mut self.pending);
        let stdout = self
            .stdout
            .as_mut()
            .ok_or_else(|| io::Error::other("stdout already closed"))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "stdout still open at the deadline, {} bytes read",
                        all.len()
                    ),
                ));
            }
            let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut chunk = [0u8; 16384];
            match stdout.read(&mut chunk)? {
                0 => return Ok(all),
                n => all.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Closes the program's stdin (Apache's EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Closes our end of the program's stdout, as a dead reader would: its
    /// next answer meets a broken pipe.
    pub fn close_stdout(&mut self) {
        self.stdout = None;
    }

    /// Waits at most `timeout` for the program to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Everything the program wrote on stderr so far.
    pub fn stderr(&self) -> String {
        let bytes = self.stderr.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits (bounded) until stderr holds `needle`; true if it does.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes stdin, waits up to `timeout` for a clean exit, then kills; and
    /// returns the exit status and the complete stderr. A successor left by
    /// SIGTERM gets end of input too, and is reaped.
    pub fn finish(mut self, timeout: Duration) -> io::Result<(Option<ExitStatus>, String)> {
        let successors = self.successors();
        self.close_stdin();
        let status = self.wait_exit(timeout)?;
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        reap(&successors, timeout);
        // The reader ends when every holder of the pipe has closed it; a
        // leftover grandchild could hold it forever, so the wait is bounded.
        if let Some(reader) = self.stderr_reader.take() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
        }
        Ok((status, self.stderr()))
    }
}

impl MapProcess {
    /// Other processes reading the program's stdin pipe: its successors.
    pub fn successors(&self) -> Vec<u32> {
        let Some(stdin) = &self.stdin else {
            return Vec::new();
        };
        let Ok(pipe) = fs::read_link(format!("/proc/self/fd/{}", stdin.as_raw_fd())) else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != self.child.id() && pid != std::process::id())
            .filter(|pid| fs::read_link(format!("/proc/{pid}/fd/0")).is_ok_and(|p| p == pipe))
            .collect()
    }
}

/// Waits (bounded) for adopted successors to exit, and reaps them.
fn reap(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for &pid in pids {
        let pid = Pid::from_raw(pid as i32);
        while Instant::now() < deadline {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => thread::sleep(Duration::from_millis(2)),
                _ => break,
            }
        }
    }
}

impl Drop for MapProcess {
    fn drop(&mut self) {
        let successors = self.successors();
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        reap(&successors, Duration::from_secs(5));
    }
}

//! The harness of demo-vm's tests: a real demo-vm process on a free loopback
//! port, killed and reaped on drop, and a minimal HTTP/1.1 client. Every wait
//! has a deadline; a failure shows the VM's log.

#![allow(dead_code, reason = "each test binary uses a part of the harness")]

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_demo-vm");
/// The longest any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// A port on which nothing listens (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A running demo-vm; its stdout and stderr go to a log file, as with the
/// launcher.
pub struct Vm {
    child: Child,
    pub port: u16,
    pub started: Instant,
    log: PathBuf,
    _dir: TempDir,
}

impl Vm {
    /// Starts demo-vm on a free port and waits until it listens.
    pub fn start(args: &[&str]) -> Vm {
        let mut vm = Vm::spawn(args);
        vm.wait_listening();
        vm
    }

    /// Starts demo-vm on a free port without waiting for anything.
    pub fn spawn(args: &[&str]) -> Vm {
        Vm::spawn_on(free_port(), args)
    }

    pub fn spawn_on(port: u16, args: &[&str]) -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{port}.log"));
        let out = File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let started = Instant::now();
        let child = Command::new(BIN)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn demo-vm");
        Vm {
            child,
            port,
            started,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until it holds `needle` (lines are written right after
    /// the event, so a connect may succeed before the line is there).
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the log after {DEADLINE:?}\n{}",
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    pub fn is_listening(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    }

    /// Polls until the port accepts connections; returns when that was seen.
    pub fn wait_listening(&mut self) -> Instant {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.is_listening() {
                return Instant::now();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("demo-vm exited ({status}) before listening\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "demo-vm not listening on {} after {DEADLINE:?}\n{}",
                self.port,
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    /// Polls until the process exits; returns its status and when the exit
    /// was seen (never before it happened).
    pub fn wait_exit(&mut self, within: Duration) -> (ExitStatus, Instant) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "demo-vm still running after {within:?}\n{}",
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn connect(&self) -> Conn {
        Conn::open(self.port)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client connection; reads time out after [`DEADLINE`].
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(DEADLINE))
            .expect("write timeout");
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().expect("local addr")
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// `GET path` over HTTP/1.1 with `cookies` (none when empty).
    pub fn get(&mut self, path: &str, cookies: &str) -> Response {
        self.request("GET", path, cookies)
    }

    pub fn request(&mut self, method: &str, path: &str, cookies: &str) -> Response {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if !cookies.is_empty() {
            head.push_str(&format!("Cookie: {cookies}\r\n"));
        }
        head.push_str("\r\n");
        self.send(head.as_bytes()).expect("send request");
        self.read_response(method == "HEAD").expect("read response")
    }

    /// Reads one response; the body by its Content-Length (none for HEAD).
    pub fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| io::Error::other(format!("bad header {line:?}")))?;
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut response = Response {
            status,
            headers,
            body: String::new(),
        };
        let length: u64 = match response.header("Content-Length") {
            Some(n) if !head_only => n.parse().map_err(io::Error::other)?,
            _ => 0,
        };
        (&mut self.reader)
            .take(length)
            .read_to_string(&mut response.body)?;
        Ok(response)
    }

    /// True when the server has closed the connection (EOF or reset) and
    /// sent nothing more.
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every `Set-Cookie` header, whole.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value the response sets for cookie `name`, if it sets it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies().into_iter().find_map(|c| {
            let pair = c.split(';').next()?;
            pair.strip_prefix(name)?.strip_prefix('=')
        })
    }

    /// The body's `key=value` pairs, in order.
    pub fn fields(&self) -> Vec<(&str, &str)> {
        self.body
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .collect()
    }

    pub fn field(&self, key: &str) -> &str {
        self.fields()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.body))
    }
}

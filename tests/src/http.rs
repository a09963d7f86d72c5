//! A small HTTP/1.1 client for the tests: one request per connection, or a
//! kept-alive connection as a browser keeps one ([`Connection`]); raw
//! control over every header (two `Cookie` headers, a 10 KB cookie), a
//! deadline on everything, and a cookie jar for sessions.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long any request may take before the test fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body (decoded if chunked).
    pub body: String,
    /// From connect to the end of the body.
    pub elapsed: Duration,
}

impl Response {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name=value` pairs of every `Set-Cookie`.
    pub fn set_cookies(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .filter_map(|(_, v)| {
                let pair = v.split(';').next()?;
                let (name, value) = pair.split_once('=')?;
                Some((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect()
    }

    /// What a demo-vm said about itself in the body.
    pub fn vm(&self) -> Option<VmReply> {
        VmReply::parse(&self.body)
    }
}

/// The body of a demo-vm answer: `port=.. session=.. hits=.. new=.. path=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmReply {
    /// The VM's port.
    pub port: u16,
    /// The session that served the request.
    pub session: String,
    /// Requests of that session so far.
    pub hits: u64,
    /// The session was created by this request.
    pub new: bool,
}

impl VmReply {
    fn parse(body: &str) -> Option<VmReply> {
        let field = |name: &str| {
            body.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        Some(VmReply {
            port: field("port")?.parse().ok()?,
            session: field("session")?.to_owned(),
            hits: field("hits")?.parse().ok()?,
            new: field("new")? == "true",
        })
    }
}

/// Sends one request (`Connection: close`) with `extra` header lines.
pub fn request(addr: SocketAddr, path: &str, extra: &[String]) -> io::Result<Response> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw)?;
    let body = if chunked { dechunk(&raw) } else { raw };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: started.elapsed(),
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..at])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        raw = &raw[at + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

/// A browser-like client: keeps the cookies the server sets.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    /// The cookie jar.
    pub cookies: BTreeMap<String, String>,
    /// Its kept-alive connection, if it keeps one.
    conn: Option<Connection>,
}

impl Client {
    /// A client without cookies, one connection per request.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            cookies: BTreeMap::new(),
            conn: None,
        }
    }

    /// A client without cookies that keeps its connection open between
    /// requests, as a browser does.
    pub fn keep_alive(addr: SocketAddr) -> Client {
        Client {
            conn: Some(Connection::new(addr)),
            ..Client::new(addr)
        }
    }

    /// GETs `path` with the jar's cookies and keeps the ones set.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let mut extra = Vec::new();
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            extra.push(format!("Cookie: {}", jar.join("; ")));
        }
        let response = match &mut self.conn {
            Some(conn) => conn.get(path, &extra)?,
            None => request(self.addr, path, &extra)?,
        };
        self.cookies.extend(response.set_cookies());
        Ok(response)
    }

    /// The `server` cookie, if any.
    pub fn server(&self) -> Option<&str> {
        self.cookies.get("server").map(String::as_str)
    }
}

/// A kept-alive connection, as a browser keeps one: requests go one after
/// the other on the same TCP connection. A connection the server closed
/// while it was idle is replaced before the next request (as a browser
/// does); once a request is sent, nothing is retried: any failure is the
/// caller's. A clone is a new connection to the same address.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
}

impl Clone for Connection {
    fn clone(&self) -> Connection {
        Connection::new(self.addr)
    }
}

impl Connection {
    /// Not connected yet: the first request connects.
    pub fn new(addr: SocketAddr) -> Connection {
        Connection { addr, reader: None }
    }

    /// GETs `path` with `extra` header lines on the kept connection.
    pub fn get(&mut self, path: &str, extra: &[String]) -> io::Result<Response> {
        let started = Instant::now();
        if self.reader.as_ref().is_some_and(|r| !open(r.get_ref())) {
            self.reader = None;
        }
        let reader = match &mut self.reader {
            Some(reader) => reader,
            None => {
                let stream = TcpStream::connect_timeout(&self.addr, REQUEST_TIMEOUT)?;
                stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
                stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
                self.reader.insert(BufReader::new(stream))
            }
        };
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for line in extra {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        reader.get_mut().write_all(head.as_bytes())?;
        let (mut response, keep) = read_framed(reader);
        if !keep {
            self.reader = None;
        }
        if let Ok(response) = &mut response {
            response.elapsed = started.elapsed();
        }
        response
    }
}

/// True if the server has not closed an idle connection (nothing to read,
/// no end of file).
fn open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let idle = matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && idle
}

/// Reads one response framed by Content-Length or chunked encoding (or,
/// without either, up to the end of the connection); and whether the
/// connection can carry another request.
fn read_framed(reader: &mut BufReader<TcpStream>) -> (io::Result<Response>, bool) {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => {
            return (
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed before a response",
                )),
                false,
            );
        }
        Err(e) => return (Err(e), false),
        Ok(_) => {}
    }
    let Some(status) = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    else {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        );
        return (Err(e), false);
    };
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Err(e) => return (Err(e), false),
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut keep = header("connection").is_none_or(|v| !v.contains("close"));
    let mut body = Vec::new();
    let read = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunks(reader, &mut body)
    } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body)
    } else {
        keep = false;
        reader.read_to_end(&mut body).map(drop)
    };
    if let Err(e) = read {
        return (Err(e), false);
    }
    let response = Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: Duration::ZERO,
    };
    (Ok(response), keep)
}

fn read_chunks(reader: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

//! Just enough HTTP/1.1 for a demo backend: read a request head under a size
//! cap, validate it, skip its body, and pick the cookies and `sleep_ms` out of
//! it. Anything malformed becomes a [`Status`] to answer before closing.

use std::io::{self, BufRead, Read};

/// Largest request head (request line and headers): 431 beyond.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read and thrown away: 413 beyond.
const MAX_BODY: u64 = 16 * 1024 * 1024;
/// Longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// `sleep_ms` is capped so that a typo cannot stall a connection for ages.
const MAX_SLEEP_MS: u64 = 10_000;

/// An error answer; it is sent with `Connection: close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub reason: &'static str,
}

impl Status {
    const BAD_REQUEST: Status = Status::new(400, "Bad Request");
    const CONTENT_TOO_LARGE: Status = Status::new(413, "Content Too Large");
    const HEADER_TOO_LARGE: Status = Status::new(431, "Request Header Fields Too Large");
    const NOT_IMPLEMENTED: Status = Status::new(501, "Not Implemented");
    const VERSION_NOT_SUPPORTED: Status = Status::new(505, "HTTP Version Not Supported");

    const fn new(code: u16, reason: &'static str) -> Self {
        Status { code, reason }
    }
}

/// Why no (complete) request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection: close without answering.
    Closed,
    /// The request is malformed: answer this, then close.
    Reject(Status),
    /// The read (or a write) failed, a timeout included: close.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head, borrowing the buffer it was read into.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub http11: bool,
    pub keep_alive: bool,
    /// `Expect: 100-continue` from an HTTP/1.1 client.
    pub expect_continue: bool,
    pub body: Body,
    /// The header lines, already validated.
    headers: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Every `name=value` of every `Cookie` header, in order. Pieces without
    /// `=` are skipped; values may be any bytes.
    pub fn cookies(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        header_lines(self.headers)
            .filter_map(split_header)
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"cookie"))
            .flat_map(|(_, value)| value.split(|&b| b == b';'))
            .filter_map(cookie_pair)
    }

    /// The first `status=NNN` of the query (200 to 599): the status the
    /// answer carries, as an application's own error page would.
    pub fn status(&self) -> Option<u16> {
        self.query
            .split('&')
            .find_map(|pair| pair.strip_prefix("status="))?
            .parse()
            .ok()
            .filter(|code| (200..=599).contains(code))
    }

    /// The first `sleep_ms=N` of the query, capped at 10 s.
    pub fn sleep_ms(&self) -> Option<u64> {
        let value = self
            .query
            .split('&')
            .find_map(|pair| pair.strip_prefix("sleep_ms="))?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(value.parse().unwrap_or(u64::MAX).min(MAX_SLEEP_MS))
    }
}

/// Reads one request head (through its empty line) into `buf`. A request
/// line that is garbage is refused at once, without reading on.
pub fn read_head(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    buf.clear();
    let mut skipped = 0;
    loop {
        let start = buf.len();
        if !read_line(r, buf, MAX_HEAD, Status::HEADER_TOO_LARGE)? {
            return Err(ReadError::Closed);
        }
        let line = strip_crlf(&buf[start..]);
        if start == 0 && !line.is_empty() {
            request_line(line).map_err(ReadError::Reject)?;
        }
        if line.is_empty() {
            if start > 0 {
                return Ok(());
            }
            // RFC 9112 2.2: empty lines before a request line are ignored.
            skipped += buf.len();
            buf.clear();
            if skipped > MAX_HEAD {
                return Err(ReadError::Reject(Status::BAD_REQUEST));
            }
        }
    }
}

/// Appends one line (through its `\n`) to `buf`; `false` at end of input.
/// `too_long` is the answer when `buf` would grow beyond `cap`.
fn read_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
    too_long: Status,
) -> Result<bool, ReadError> {
    loop {
        let available = match r.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if available.is_empty() {
            return Ok(false);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > cap {
            return Err(ReadError::Reject(too_long));
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// `METHOD TARGET HTTP/1.x` split into method, target and "is 1.1".
fn request_line(line: &[u8]) -> Result<(&str, &str, bool), Status> {
    const BAD: Status = Status::BAD_REQUEST;
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    if method.is_empty() || !method.iter().copied().all(is_tchar) {
        return Err(BAD);
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(BAD);
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        v if v.starts_with(b"HTTP/") => return Err(Status::VERSION_NOT_SUPPORTED),
        _ => return Err(BAD),
    };
    // Both are ASCII by now; the checks cannot fail.
    let method = std::str::from_utf8(method).map_err(|_| BAD)?;
    let target = std::str::from_utf8(target).map_err(|_| BAD)?;
    Ok((method, target, http11))
}

/// Parses and validates a head read by [`read_head`].
pub fn parse(head: &[u8]) -> Result<Request<'_>, Status> {
    const BAD: Status = Status::BAD_REQUEST;
    let (line, headers) = match head.iter().position(|&b| b == b'\n') {
        Some(i) => (strip_crlf(&head[..=i]), &head[i + 1..]),
        None => return Err(BAD),
    };
    let (method, target, http11) = request_line(line)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    let (mut length, mut coding) = (None, None);
    for line in header_lines(headers) {
        let (name, value) = split_header(line).ok_or(BAD)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or(BAD)?;
            if length.is_some_and(|known| known != n) {
                return Err(BAD);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coding = Some(coding.unwrap_or(true) && value.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = http11 && value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body = match (coding, length) {
        // Both framings at once is how requests get smuggled: refuse.
        (Some(_), Some(_)) => return Err(BAD),
        (Some(true), None) => Body::Chunked,
        (Some(false), None) => return Err(Status::NOT_IMPLEMENTED),
        (None, None | Some(0)) => Body::Empty,
        (None, Some(n)) if n > MAX_BODY => return Err(Status::CONTENT_TOO_LARGE),
        (None, Some(n)) => Body::Length(n),
    };
    Ok(Request {
        method,
        path,
        query,
        http11,
        keep_alive: !close && (http11 || keep_alive),
        expect_continue,
        body,
        headers,
    })
}

/// Reads the body of a request and throws it away.
pub fn skip_body(r: &mut impl BufRead, body: Body) -> Result<(), ReadError> {
    match body {
        Body::Empty => Ok(()),
        Body::Length(n) => skip_exact(r, n),
        Body::Chunked => skip_chunked(r),
    }
}

fn skip_exact(r: &mut impl BufRead, n: u64) -> Result<(), ReadError> {
    let skipped = io::copy(&mut r.take(n), &mut io::sink())?;
    if skipped < n {
        return Err(ReadError::Closed);
    }
    Ok(())
}

/// RFC 9112 7.1: chunks (size line, data, CRLF), a zero chunk, trailers.
fn skip_chunked(r: &mut impl BufRead) -> Result<(), ReadError> {
    const BAD: ReadError = ReadError::Reject(Status::BAD_REQUEST);
    let mut line = Vec::new();
    let mut total: u64 = 0;
    loop {
        next_line(r, &mut line)?;
        let size = parse_chunk_size(&line).ok_or(BAD)?;
        if size == 0 {
            break;
        }
        total = total.saturating_add(size);
        if total > MAX_BODY {
            return Err(ReadError::Reject(Status::CONTENT_TOO_LARGE));
        }
        skip_exact(r, size)?;
        next_line(r, &mut line)?;
        if !strip_crlf(&line).is_empty() {
            return Err(BAD);
        }
    }
    let mut trailers = 0;
    loop {
        next_line(r, &mut line)?;
        if strip_crlf(&line).is_empty() {
            return Ok(());
        }
        trailers += line.len();
        if trailers > MAX_HEAD {
            return Err(ReadError::Reject(Status::HEADER_TOO_LARGE));
        }
    }
}

/// One line of a chunked body into `line` (cleared first).
fn next_line(r: &mut impl BufRead, line: &mut Vec<u8>) -> Result<(), ReadError> {
    line.clear();
    if read_line(r, line, MAX_CHUNK_LINE, Status::BAD_REQUEST)? {
        Ok(())
    } else {
        Err(ReadError::Closed)
    }
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = strip_crlf(line);
    let hex = trim(line.split(|&b| b == b';').next()?);
    if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The header lines of a head, without line ends, up to the empty line.
fn header_lines(headers: &[u8]) -> impl Iterator<Item = &[u8]> {
    headers
        .split(|&b| b == b'\n')
        .map(strip_crlf)
        .take_while(|line| !line.is_empty())
}

/// `name: value` with the value trimmed; `None` for a line that is not a
/// valid field (no colon, a bad name, a continuation line, control bytes).
fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
    let control = |b: &u8| (*b < 0x20 && *b != b'\t') || *b == 0x7f;
    if name.is_empty() || !name.iter().copied().all(is_tchar) || value.iter().any(control) {
        return None;
    }
    Some((name, value))
}

fn cookie_pair(piece: &[u8]) -> Option<(&[u8], &[u8])> {
    let piece = trim(piece);
    let eq = piece.iter().position(|&b| b == b'=')?;
    let name = trim(&piece[..eq]);
    let value = trim(&piece[eq + 1..]);
    let value = match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    };
    (!name.is_empty()).then_some((name, value))
}

/// RFC 9110 5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn strip_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(mut text: &[u8]) -> Result<Vec<u8>, ReadError> {
        let mut buf = Vec::new();
        read_head(&mut text, &mut buf).map(|()| buf)
    }

    fn request(text: &[u8]) -> Result<(), Status> {
        match head(text) {
            Ok(buf) => parse(&buf).map(drop),
            Err(ReadError::Reject(status)) => Err(status),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_proxied_request_is_understood() {
        let buf = head(b"\r\nGET /app/x?a=1&sleep_ms=25 HTTP/1.1\r\nHost: h\r\n\
                        Cookie: a=b; server=app3001\r\nCookie: session=\"0123456789abcdef\"\r\n\r\nrest")
        .expect("head");
        let req = parse(&buf).expect("valid");
        assert_eq!(
            (req.method, req.path, req.query),
            ("GET", "/app/x", "a=1&sleep_ms=25")
        );
        assert!(req.http11 && req.keep_alive && !req.is_head());
        assert_eq!(req.sleep_ms(), Some(25));
        let cookies: Vec<_> = req.cookies().collect();
        assert_eq!(
            cookies,
            [
                (&b"a"[..], &b"b"[..]),
                (b"server", b"app3001"),
                (b"session", b"0123456789abcdef")
            ]
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let keep = |text: &[u8]| parse(&head(text).expect("head")).expect("valid").keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn malformed_heads_get_an_error_status() {
        let cases: [(&[u8], u16); 12] = [
            (b"garbage\r\n\r\n", 400),
            (b"GET /\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                413,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(
                request(text).map_err(|s| s.code),
                Err(code),
                "{:?}",
                text.escape_ascii().to_string()
            );
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(head(long.as_bytes()), Err(ReadError::Reject(s)) if s.code == 431));
        assert!(matches!(head(b"GET / HT"), Err(ReadError::Closed)));
        // Garbage is refused on its first line, without waiting for more.
        assert!(matches!(
            head(b"\x16\x03\x01 junk\r\n"),
            Err(ReadError::Reject(_))
        ));
    }

    #[test]
    fn bodies_are_skipped_exactly() {
        let mut input = &b"hello5\r\nworld\r\n0\r\nT: x\r\n\r\nnext"[..];
        skip_body(&mut input, Body::Length(5)).expect("length");
        skip_body(&mut input, Body::Chunked).expect("chunked");
        assert_eq!(input, b"next");
        let mut short = &b"abc"[..];
        assert!(matches!(
            skip_body(&mut short, Body::Length(5)),
            Err(ReadError::Closed)
        ));
        let mut bad = &b"zz\r\n"[..];
        assert!(matches!(
            skip_body(&mut bad, Body::Chunked),
            Err(ReadError::Reject(_))
        ));
    }

    #[test]
    fn odd_cookies_and_queries_never_panic() {
        let buf = head(
            b"GET /?sleep_ms=999999999999999999999&sleep_ms=1 HTTP/1.1\r\n\
                        Cookie: ;;=;  =x; server; \"; session=\xff\xfe; a==b\r\n\r\n",
        )
        .expect("head");
        let req = parse(&buf).expect("valid");
        assert_eq!(req.sleep_ms(), Some(MAX_SLEEP_MS));
        let cookies: Vec<_> = req.cookies().collect();
        assert_eq!(
            cookies,
            [(&b"session"[..], &b"\xff\xfe"[..]), (b"a", b"=b")]
        );
    }
}

//! demo-vm over real sockets: cookies, sessions, keep-alive, concurrency, and
//! what it does with malformed requests.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Conn, Response, Vm};

fn cookies_of(response: &Response) -> String {
    format!(
        "session={}; server={}",
        response.cookie("session").expect("session cookie"),
        response.cookie("server").expect("server cookie")
    )
}

#[test]
fn a_session_follows_its_cookies_on_a_keep_alive_connection() {
    let vm = Vm::start(&[]);
    let mut conn = vm.connect();
    let first = conn.get("/app/first", "");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    let keys: Vec<_> = first.fields().iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, ["port", "session", "hits", "new", "path"]);
    let session = first.field("session");
    assert!(session.len() == 16 && session.bytes().all(|b| b.is_ascii_hexdigit()));
    let expected = format!(
        "port={} session={session} hits=1 new=true path=/app/first\n",
        vm.port
    );
    assert_eq!(first.body, expected);
    assert_eq!(
        first.header("Content-Length"),
        Some(expected.len().to_string().as_str())
    );
    let server = format!("app{}", vm.port);
    let mut set = first.set_cookies();
    set.sort();
    assert_eq!(
        set,
        [
            format!("server={server}; Path=/"),
            format!("session={session}; Path=/; HttpOnly")
        ]
    );

    let second = conn.get("/app/second", &cookies_of(&first));
    assert_eq!(second.field("session"), session);
    assert_eq!(second.field("hits"), "2");
    assert_eq!(second.field("new"), "false");
    assert_eq!(second.field("path"), "/app/second");
    assert!(second.set_cookies().is_empty(), "{second:?}");
}

#[test]
fn a_server_cookie_naming_another_vm_is_set_again() {
    let vm = Vm::start(&[]);
    let mut conn = vm.connect();
    let first = conn.get("/app", "");
    let session = first.field("session").to_owned();
    let ours = format!("app{}", vm.port);

    let moved = conn.get("/app", &format!("server=app99999; session={session}"));
    assert_eq!(moved.cookie("server"), Some(ours.as_str()));
    assert_eq!(moved.cookie("session"), None, "the session is still live");
    assert_eq!(moved.field("hits"), "2");

    let both = format!("server={ours}; server=app99999; session={session}");
    assert_eq!(
        conn.get("/app", &both).cookie("server"),
        Some(ours.as_str())
    );

    let none = conn.get("/app", &format!("session={session}"));
    assert_eq!(none.cookie("server"), Some(ours.as_str()));
}

#[test]
fn with_no_route_cookie_it_never_sets_the_server_cookie() {
    let vm = Vm::start(&["--no-route-cookie"]);
    let mut conn = vm.connect();
    let first = conn.get("/app", "");
    let session = first.field("session").to_owned();
    assert_eq!(first.cookie("server"), None, "{first:?}");
    let moved = conn.get("/app", &format!("server=app99999; session={session}"));
    assert_eq!(moved.cookie("server"), None, "{moved:?}");
    assert_eq!(moved.field("hits"), "2", "the session goes on");
}

#[test]
fn an_unknown_or_garbled_session_gets_a_new_one() {
    let vm = Vm::start(&[]);
    let mut conn = vm.connect();
    for cookies in [
        "session=0123456789abcdef",
        "session=nothex; ;;=; server; =x; \"",
        "session=; session=+123456789abcdef",
    ] {
        let response = conn.get("/app", cookies);
        assert_eq!(response.status, 200, "{cookies:?}");
        assert_eq!(response.field("new"), "true", "{cookies:?}");
        assert_eq!(
            response.cookie("session"),
            Some(response.field("session")),
            "{cookies:?}"
        );
    }
}

#[test]
fn a_sleeping_request_does_not_delay_other_connections() {
    let vm = Vm::start(&[]);
    let mut slow = vm.connect();
    let started = Instant::now();
    slow.send(b"GET /app/slow?sleep_ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut fast: Vec<Conn> = (0..3).map(|_| vm.connect()).collect();
    for (i, conn) in fast.iter_mut().enumerate() {
        for hit in 1..=2 {
            let response = conn.get(&format!("/app/fast{i}"), "");
            assert_eq!(response.status, 200);
            assert_eq!(response.field("path"), format!("/app/fast{i}"), "hit {hit}");
        }
    }
    let fast_done = started.elapsed();
    assert!(
        fast_done < Duration::from_millis(1500),
        "fast requests took {fast_done:?} behind a sleeping one"
    );
    let response = slow.read_response(false).expect("slow response");
    assert_eq!(response.field("path"), "/app/slow");
    assert!(started.elapsed() >= Duration::from_millis(2000));
}

#[test]
fn sleeping_connections_are_served_in_parallel() {
    let vm = Vm::start(&[]);
    let port = vm.port;
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut conn = Conn::open(port);
                let first = conn.get("/app?sleep_ms=1000", "");
                conn.get("/app", &cookies_of(&first))
                    .field("hits")
                    .to_owned()
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().expect("client thread"), "2");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(3000),
        "4 x 1 s took {elapsed:?}: not served in parallel"
    );
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let vm = Vm::start(&[]);
    let mut conn = vm.connect();
    conn.send(b"GET /app HTTP/1.0\r\n\r\n").expect("send");
    let response = conn.read_response(false).expect("response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(conn.is_closed_by_server());

    let mut conn = vm.connect();
    for _ in 0..2 {
        conn.send(b"GET /app HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("send");
        let response = conn.read_response(false).expect("response");
        assert_eq!(response.header("Connection"), Some("keep-alive"));
    }

    let mut conn = vm.connect();
    conn.send(b"GET /app HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    assert_eq!(conn.read_response(false).expect("response").status, 200);
    assert!(conn.is_closed_by_server());
}

#[test]
fn head_gets_headers_only() {
    let vm = Vm::start(&[]);
    let mut conn = vm.connect();
    let head = conn.request("HEAD", "/app/h", "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let length: usize = head
        .header("Content-Length")
        .and_then(|n| n.parse().ok())
        .expect("length");
    assert!(length > 0);
    // Had a body been sent, it would be read as the next status line.
    let next = conn.get("/app/h", &cookies_of(&head));
    assert_eq!(next.field("hits"), "2");
}

#[test]
fn request_bodies_are_skipped_and_the_connection_goes_on() {
    let vm = Vm::start(&[]);
    let mut conn = vm.connect();
    conn.send(b"POST /app/a HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world")
        .expect("send");
    assert_eq!(
        conn.read_response(false).expect("post").field("path"),
        "/app/a"
    );
    conn.send(b"POST /app/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .expect("send");
    assert_eq!(
        conn.read_response(false).expect("chunked").field("path"),
        "/app/b"
    );
    conn.send(b"POST /app/c HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        .expect("send");
    assert_eq!(conn.read_response(false).expect("interim").status, 100);
    conn.send(b"abc").expect("send");
    assert_eq!(
        conn.read_response(false).expect("final").field("path"),
        "/app/c"
    );
    assert_eq!(conn.get("/app/d", "").field("path"), "/app/d");
}

/// Sends `bytes`; the server must answer a 4xx and close, or just close.
fn assert_refused(vm: &Vm, what: &str, bytes: &[u8]) {
    let mut conn = vm.connect();
    // The server may close while we still send: a failed send is a close.
    if conn.send(bytes).is_ok()
        && let Ok(response) = conn.read_response(false)
    {
        assert!(
            (400..500).contains(&response.status),
            "{what}: {response:?}"
        );
        assert_eq!(response.header("Connection"), Some("close"), "{what}");
        assert!(conn.is_closed_by_server(), "{what}: still open");
    }
    let mut other = vm.connect();
    assert_eq!(other.get("/app/after", "").status, 200, "after {what}");
}

#[test]
fn malformed_requests_are_refused_and_others_still_served() {
    let vm = Vm::start(&[]);
    let mut noise = vec![0u8; 4096];
    let mut x: u32 = 12345;
    for byte in &mut noise {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (x >> 16) as u8;
    }
    noise.extend_from_slice(b"\r\n\r\n");
    let oversized = format!(
        "GET /app HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let cases: [(&str, &[u8]); 7] = [
        ("control bytes", b"\x00\x01\x02garbage\r\n\r\n"),
        ("random bytes", &noise),
        ("no version", b"GET /app\r\n\r\n"),
        (
            "header without colon",
            b"GET /app HTTP/1.1\r\nnonsense\r\n\r\n",
        ),
        ("oversized header", oversized.as_bytes()),
        (
            "bad length",
            b"POST /app HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ),
        (
            "two framings",
            b"POST /app HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        assert_refused(&vm, what, bytes);
    }

    let mut big = vm.connect();
    big.send(oversized.as_bytes()).expect("send");
    let response = big.read_response(false).expect("an answer to the big head");
    assert_eq!(response.status, 431);

    // A client that gives up halfway through a head.
    let mut partial = vm.connect();
    partial.send(b"GET /app HT").expect("send");
    drop(partial);
    assert_eq!(vm.connect().get("/app", "").status, 200);
}

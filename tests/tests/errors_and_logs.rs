//! What a visitor and an operator see when things go wrong: the errors
//! mod_proxy makes itself get the site's page and Retry-After, the
//! application's own error pages pass through untouched, and the access log
//! says which VM served each request.

use std::thread;
use std::time::Duration;

use e2e::{Client, Options, Stack, request, wait_until};
use nix::sys::signal::Signal;

const BOUND: Duration = Duration::from_secs(20);

#[test]
fn a_vm_killed_mid_request_gives_the_sites_page_not_apaches() {
    let stack = Stack::start(Options::default());
    let mut client = Client::new(stack.addr);
    let first = client.get("/app/start").expect("request");
    let port = first.vm().expect("VM").port;
    let record = stack.record(port).expect("record");
    // What the VM has read so far, per connection (Apache keeps some open).
    let read = || -> std::collections::HashMap<u64, u64> {
        vmpool::listen_table::ListenTable::open()
            .and_then(|mut t| t.connections_on(&[port]))
            .map(|conns| {
                conns
                    .iter()
                    .map(|c| (c.cookie, c.consumed().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = read();
    let mut slow = client.clone();
    let held = thread::spawn(move || slow.get("/app/slow?sleep_ms=5000").expect("request"));
    // Once the VM has read the slow request (it is in its 5 s sleep), it dies.
    assert!(wait_until(BOUND, || {
        read()
            .iter()
            .any(|(cookie, &now)| now > before.get(cookie).copied().unwrap_or(0))
    }));
    e2e::stack::kill_and_reap(record.pid, Signal::SIGKILL);
    let response = held.join().expect("request thread");
    assert_eq!(response.status, 502, "{response:?}");
    assert!(
        response.body.contains("One moment, please"),
        "{}",
        response.body
    );
    assert!(!response.body.contains("Proxy Error"), "{}", response.body);
    assert_eq!(response.header("retry-after"), Some("5"));
}

#[test]
fn the_applications_own_error_pages_pass_through_untouched() {
    let stack = Stack::start(Options::default());
    let mut client = Client::new(stack.addr);
    let _ = client.get("/app/start").expect("request");
    for code in [500u16, 502, 503, 504] {
        let response = client
            .get(&format!("/app/oops?status={code}"))
            .expect("request");
        assert_eq!(response.status, code, "{response:?}");
        assert!(
            response.vm().is_some(),
            "not the application's body: {response:?}"
        );
        assert!(!response.body.contains("One moment"), "{response:?}");
    }
}

#[test]
fn the_access_log_names_the_vm_of_each_request_and_its_time() {
    let stack = Stack::start(Options::default());
    let mut client = Client::new(stack.addr);
    let port = client
        .get("/app/logged")
        .expect("request")
        .vm()
        .expect("VM")
        .port;
    let _ = request(stack.addr, "/style.css", &[]).expect("request");
    let log_path = stack.state().join("logs/seaside-access.log");
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        wait_until(BOUND, || read().contains("/style.css")),
        "{}",
        read()
    );
    let log = read();
    let app = log
        .lines()
        .find(|l| l.contains("GET /app/logged"))
        .unwrap_or_else(|| panic!("no line for /app/logged:\n{log}"));
    assert!(app.contains(&format!(" vm={port} ")), "{app}");
    let micros: u64 = app
        .rsplit("us=")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no us= in {app}"));
    assert!(micros > 0);
    let css = log
        .lines()
        .find(|l| l.contains("GET /style.css"))
        .expect("static line");
    assert!(css.contains(" vm=- "), "{css}");
}

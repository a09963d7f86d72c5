//! One host as a front sees it, through a real Apache 2.4 configured from the
//! shipped site: the health URL (`SEASIDE_HEALTH_PATH`) answers 200 "up",
//! 404 "drain" and 503 "down" from the live map's `HOST` line, and no cookie
//! can send it to a VM; and an application that sets no route cookie stays
//! sticky when Apache sets it (`SEASIDE_SET_ROUTE_COOKIE`), and does not
//! when it is off. The hosts behind a real HAProxy: `hosts.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use e2e::{Client, Options, Response, Stack, request, wait_until};
use nix::sys::signal::Signal;

const BOUND: Duration = Duration::from_secs(20);
const HEALTH: &str = "/seaside-pool/health";

fn health(stack: &Stack, extra: &[String]) -> Response {
    request(stack.addr, HEALTH, extra).expect("health request")
}

/// Waits until the health URL answers `status` with `body`.
fn wait_health(stack: &Stack, status: u16, body: &str) {
    let mut last = None;
    let reached = wait_until(BOUND, || {
        let response = health(stack, &[]);
        let done = response.status == status && response.body == body;
        last = Some(response);
        done
    });
    assert!(
        reached,
        "the health URL never answered {status} {body:?}: last {last:?}\nlive map:\n{}\n{}",
        stack.live_map(),
        stack.error_log()
    );
}

fn drain_host(stack: &Stack, action: &str) -> String {
    let out = Command::new(stack.state().join("bin/server-map"))
        .args(["drain-host", action, "--live-map"])
        .arg(stack.state().join("lib/live.map"))
        .output()
        .expect("run server-map drain-host");
    assert!(
        out.status.success(),
        "drain-host {action}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_health_url_says_up_drain_and_down_from_the_live_map_and_never_reaches_a_vm() {
    let stack = Stack::start(Options::default());
    wait_health(&stack, 200, "up");
    // No cookie makes it a VM's request, and no VM answers it.
    let port = stack.set_a()[0];
    for cookie in [
        format!("Cookie: server=app{port}"),
        "Cookie: server=HOST".to_owned(),
    ] {
        let response = health(&stack, &[cookie]);
        assert_eq!((response.status, response.body.as_str()), (200, "up"));
        assert!(response.vm().is_none() && response.set_cookies().is_empty());
    }

    // The operator's drain: 404, while sessions go on.
    let mut client = Client::new(stack.addr);
    let first = client.get("/app/x").expect("request");
    let vm = first.vm().expect("a VM answered");
    let said = drain_host(&stack, "on");
    assert!(said.contains("the live map says HOST drain"), "{said}");
    wait_health(&stack, 404, "drain");
    let next = client.get("/app/x").expect("request");
    let next_vm = next.vm().expect("a VM answered");
    assert_eq!(
        (next_vm.port, next_vm.session, next_vm.hits),
        (vm.port, vm.session, 2),
        "a drained host keeps its sessions"
    );
    drain_host(&stack, "off");
    wait_health(&stack, 200, "up");

    // Every VM dead and the command unable to run: 503, and a new session
    // gets the 503 page too. Then fixed: up again, by itself.
    let command = stack.state().join("bin/demo-vm");
    fs::set_permissions(&command, fs::Permissions::from_mode(0o644)).expect("chmod -x");
    for (_, pid) in stack.vms() {
        e2e::stack::kill_and_reap(pid, Signal::SIGKILL);
    }
    wait_health(&stack, 503, "down");
    let down = health(&stack, &[]);
    assert_eq!(down.header("retry-after"), Some("5"));
    assert_eq!(
        request(stack.addr, "/app/x", &[]).expect("request").status,
        503
    );
    fs::set_permissions(&command, fs::Permissions::from_mode(0o755)).expect("chmod +x");
    wait_health(&stack, 200, "up");
    let back = request(stack.addr, "/app/x", &[]).expect("request");
    assert_eq!(back.status, 200, "{back:?}");
}

/// `count` requests with `client`: the (port, session, hits) of each.
fn visits(client: &mut Client, count: usize) -> Vec<(u16, String, u64)> {
    (0..count)
        .map(|n| {
            let response = client.get("/app/x").expect("request");
            assert_eq!(response.status, 200, "request {n}: {response:?}");
            let vm = response.vm().expect("a VM answered");
            (vm.port, vm.session, vm.hits)
        })
        .collect()
}

#[test]
fn an_app_that_sets_no_cookie_is_sticky_when_apache_sets_it_and_only_then() {
    let no_cookie_app = vec!["--no-route-cookie".to_owned()];
    let stack = Stack::start(Options {
        vm_args: no_cookie_app.clone(),
        route_cookie: true,
        ..Options::default()
    });
    let mut client = Client::new(stack.addr);
    let first = client.get("/app/x").expect("request");
    let vm = first.vm().expect("a VM answered");
    let set: Vec<&str> = first
        .headers
        .iter()
        .filter(|(n, v)| n == "set-cookie" && v.starts_with("server="))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        set,
        [format!(
            "server=app{}; path=/app; domain=127.0.0.1",
            vm.port
        )],
        "{first:?}"
    );
    let seen = visits(&mut client, 30);
    for (n, (port, session, hits)) in seen.into_iter().enumerate() {
        assert_eq!(
            (port, session.as_str(), hits),
            (vm.port, vm.session.as_str(), n as u64 + 2),
            "request {n} left its session's VM"
        );
    }
    drop(stack);

    // The same application without the Define: nothing routes a session.
    let stack = Stack::start(Options {
        vm_args: no_cookie_app,
        ..Options::default()
    });
    let mut client = Client::new(stack.addr);
    let seen = visits(&mut client, 30);
    assert_eq!(client.server(), None, "nobody set a route cookie");
    let ports: BTreeSet<u16> = seen.iter().map(|&(port, _, _)| port).collect();
    assert!(
        ports.len() > 1,
        "30 requests without a route cookie all reached one VM of {:?}",
        stack.set_a()
    );
}

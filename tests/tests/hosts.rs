//! Several hosts behind a real HAProxy, each host the real shipped site
//! (`scripts/private-apache`: Apache 2.4, the maps, demo-vm VMs) in a Linux
//! network namespace of its own, the front a real `haproxy` run from the
//! shipped `haproxy-conf/haproxy.cfg` in another; veth pairs with addresses
//! from 198.18.0.0/15 between the front and each host, no default route:
//! no packet leaves the namespaces. Every host is configured alike (the same
//! VM ports, 3001-3004; set A 3001-3002, set B 3003-3004). Each session
//! makes its requests on a kept-alive connection to the front, as a browser
//! does.
//!
//! Needs root (namespaces), `ip` (iproute2) and `haproxy` (scripts/deps
//! tests installs both); without them the test says SKIPPED (and fails
//! where CI is set). Every namespace and every process is removed at the
//! end, even on failure (the guards' Drop), and namespaces that a killed
//! earlier run left are removed at the start.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use e2e::front::{self, Front};
use e2e::netns::{self, Netns};
use e2e::{Client, HostNet, Options, Response, Stack, request, skip, wait_until};
use nix::sys::signal::Signal;

const HOSTS: usize = 3;
/// HAProxy's cookie (haproxy-conf/haproxy.cfg).
const HOST_COOKIE: &str = "seaside_host";
/// How long the front may take to see a host change state: fall (or rise)
/// 2 checks, 0.5 to 1 s apart, plus slack for a loaded machine.
const CHECKS: Duration = Duration::from_secs(10);
const BOUND: Duration = Duration::from_secs(30);
const SET_A: [u16; 2] = [3001, 3002];
const SET_B: [u16; 2] = [3003, 3004];

/// The namespaces, the hosts and the front. Dropped in this order: the
/// front, the hosts (Apache, maps, VMs), then the namespaces (whatever is
/// still in them is killed, then they are deleted).
struct World {
    front: Front,
    hosts: Vec<Stack>,
    front_ns: Netns,
    host_ns: Vec<Netns>,
}

fn host_name(i: usize) -> String {
    format!("host{}", i + 1)
}

/// The host side of the link to the front: 198.18.<i+1>.2.
fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i as u8 + 1, 2)
}

impl World {
    fn build() -> World {
        let left = netns::clean_leftovers();
        if !left.is_empty() {
            eprintln!("removed namespaces left by an earlier run: {left:?}");
        }
        let front_ns = Netns::add("front").expect("front namespace");
        let mut host_ns = Vec::new();
        for i in 0..HOSTS {
            let ns = Netns::add(&host_name(i)).expect("host namespace");
            let n = i + 1;
            netns::veth(
                &front_ns,
                &format!("to-host{n}"),
                &format!("198.18.{n}.1/24"),
                &ns,
                "front",
                &format!("{}/24", host_addr(i)),
            )
            .expect("veth pair");
            host_ns.push(ns);
        }
        let hosts: Vec<Stack> = host_ns
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                Stack::start(Options {
                    ports: 4,
                    host: Some(HostNet {
                        netns: ns.name().to_owned(),
                        addr: host_addr(i),
                    }),
                    ..Options::default()
                })
            })
            .collect();
        for stack in &hosts {
            let warm = wait_until(BOUND, || stack.live_map().contains("\nALL "));
            assert!(warm, "set A never came up:\n{}", stack.error_log());
        }
        let servers: Vec<(String, SocketAddr)> = (0..HOSTS)
            .map(|i| (host_name(i), SocketAddr::from((host_addr(i), 80))))
            .collect();
        let front = Front::start(&front_ns, &servers);
        let world = World {
            front,
            hosts,
            front_ns,
            host_ns,
        };
        let checked = wait_until(CHECKS, || {
            world
                .front
                .servers()
                .values()
                .all(|(status, check)| status == "UP" && check == "L7OK")
        });
        assert!(checked, "the front's checks: {:?}", world.front.servers());
        world
    }

    /// Runs `f` in the front's namespace, where HAProxy listens on :80.
    fn client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.front_ns.run(f)
    }

    fn host(&self, name: &str) -> &Stack {
        &self.hosts[name_index(name)]
    }

    /// `server-map ARGS` of a host, as its operator runs it there.
    fn server_map(&self, host: &str, args: &[&str]) -> String {
        let stack = self.host(host);
        let out = self.host_ns[name_index(host)]
            .command(stack.state().join("bin/server-map"))
            .args(args)
            .output()
            .expect("run server-map");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "server-map {args:?}: {text}");
        text
    }

    fn live_map_arg(&self, host: &str) -> String {
        self.host(host)
            .state()
            .join("lib/live.map")
            .display()
            .to_string()
    }
}

/// `host2` -> 1.
fn name_index(host: &str) -> usize {
    host["host".len()..].parse::<usize>().expect("host name") - 1
}

/// HAProxy's front, seen from its own namespace.
fn front_addr() -> SocketAddr {
    ([127, 0, 0, 1], 80).into()
}

/// A session through the front: its cookies, its host and its VM.
#[derive(Debug, Clone)]
struct Session {
    client: Client,
    host: String,
    port: u16,
    id: String,
    hits: u64,
}

/// The host a response's `seaside_host` cookie names, if it sets one.
fn host_cookie(response: &Response) -> Option<String> {
    response
        .set_cookies()
        .into_iter()
        .find(|(name, _)| name == HOST_COOKIE)
        .map(|(_, value)| value)
}

/// A new session through the front (call inside the front's namespace),
/// on a kept-alive connection, as a browser makes its requests.
fn new_session() -> Session {
    let mut client = Client::keep_alive(front_addr());
    let response = client.get("/app/new").expect("new session");
    assert_eq!(response.status, 200, "a new session: {response:?}");
    let vm = response.vm().expect("a VM answered");
    assert!(vm.new, "{response:?}");
    let host = host_cookie(&response).expect("the front set its cookie");
    Session {
        client,
        host,
        port: vm.port,
        id: vm.session,
        hits: vm.hits,
    }
}

impl Session {
    /// One more request, which must reach the same host, VM and session.
    fn stays(&mut self, what: &str) {
        let t = Instant::now();
        let response = self
            .client
            .get("/app/sticky")
            .unwrap_or_else(|e| panic!("{what}: no answer after {:?}: {e}: {self:?}", t.elapsed()));
        assert_eq!(response.status, 200, "{what}: {self:?}: {response:?}");
        let vm = response.vm().expect("a VM answered");
        assert_eq!(
            (vm.port, vm.session.as_str(), vm.hits),
            (self.port, self.id.as_str(), self.hits + 1),
            "{what}: the session left its VM"
        );
        assert_eq!(host_cookie(&response), None, "{what}: the host changed");
        self.hits = vm.hits;
    }

    /// One more request after its host went: a new session on another host,
    /// no error; how long it took.
    fn moves(&mut self, what: &str) -> Duration {
        let t = Instant::now();
        let response = self
            .client
            .get("/app/sticky")
            .unwrap_or_else(|e| panic!("{what}: no answer after {:?}: {e}: {self:?}", t.elapsed()));
        assert_eq!(response.status, 200, "{what}: {self:?}: {response:?}");
        let vm = response.vm().expect("a VM answered");
        let host = host_cookie(&response).expect("a new host cookie");
        assert_ne!(host, self.host, "{what}: still on its host");
        assert!(vm.new, "{what}: a new session on the new host: {vm:?}");
        (self.host, self.port, self.id, self.hits) = (host, vm.port, vm.session, vm.hits);
        response.elapsed
    }
}

/// `n` new sessions; how many each host got.
fn new_sessions(n: usize) -> (Vec<Session>, BTreeMap<String, usize>) {
    let sessions: Vec<Session> = (0..n).map(|_| new_session()).collect();
    let mut per_host = BTreeMap::new();
    for s in &sessions {
        *per_host.entry(s.host.clone()).or_insert(0) += 1;
    }
    (sessions, per_host)
}

/// The sessions on `host`.
fn on(sessions: &[Session], host: &str) -> Vec<usize> {
    (0..sessions.len())
        .filter(|&i| sessions[i].host == host)
        .collect()
}

/// Replaces `path` with a file of `text`, mode 755, atomically.
fn install(path: &Path, text: &[u8]) {
    let temp = path.with_extension("new");
    fs::write(&temp, text).expect("write");
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::rename(&temp, path).expect("rename");
}

#[test]
fn three_hosts_behind_haproxy_sticky_drained_cut_over_cut_off_sick_and_back() {
    if !skip::require(skip::is_root(), "network namespaces need root")
        || !skip::require(netns::have_ip(), "the ip command (iproute2) is missing")
        || !skip::require(
            front::have_haproxy(),
            "haproxy is missing (scripts/deps tests)",
        )
    {
        return;
    }
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let started = Instant::now();
    let world = World::build();
    eprintln!(
        "hosts: three hosts and the front up in {:?}",
        started.elapsed()
    );

    // New sessions spread over the three hosts.
    let (mut sessions, per_host) = world.client(|| new_sessions(30));
    assert_eq!(per_host.len(), HOSTS, "new sessions per host: {per_host:?}");
    assert!(
        per_host.values().all(|&n| n >= 5),
        "new sessions per host: {per_host:?}"
    );
    eprintln!("hosts: 30 new sessions per host: {per_host:?}");

    // 30 sessions x 50 requests stay on their host and VM: each VM's
    // session counter counts every one of them.
    let t = Instant::now();
    world.client(|| {
        thread::scope(|scope| {
            for chunk in sessions.chunks_mut(5) {
                scope.spawn(move || {
                    for _ in 1..50 {
                        for session in chunk.iter_mut() {
                            session.stays("sticky");
                        }
                    }
                });
            }
        })
    });
    assert!(sessions.iter().all(|s| s.hits == 50));
    eprintln!(
        "hosts: 30 sessions x 50 sticky requests in {:?}",
        t.elapsed()
    );

    drain_by_command_and_by_the_runtime_api(&world, &mut sessions);
    cut_over_on_one_host(&world, &mut sessions);
    forged_host_cookies(&world);
    cut_off_and_back(&world, &mut sessions);
    sick_and_back(&world, &mut sessions);
    eprintln!("hosts: the whole test took {:?}", started.elapsed());
}

/// One host drained, by the command on the host and by the front's
/// runtime API: no new session goes there, its sessions go on.
fn drain_by_command_and_by_the_runtime_api(world: &World, sessions: &mut [Session]) {
    let host = "host3";
    let drained: Vec<usize> = on(sessions, host);
    let live = world.live_map_arg(host);
    let t = Instant::now();
    let said = world.server_map(host, &["drain-host", "on", "--live-map", &live]);
    assert!(said.contains("HOST drain"), "{said}");
    world.front.wait_status(host, "NOLB", CHECKS);
    eprintln!(
        "hosts: drain-host on: the front drains {host} {:?} after the command",
        t.elapsed()
    );
    for how in ["drain-host on", "set server hosts/host3 state drain"] {
        if how.starts_with("set server") {
            let answer = world.front.api(how);
            assert_eq!(answer.trim(), "", "runtime API: {answer}");
            world.front.wait_status(host, "DRAIN", CHECKS);
        }
        let (_, per_host) = world.client(|| new_sessions(15));
        assert!(
            !per_host.contains_key(host),
            "{how}: new sessions went to {host}: {per_host:?}"
        );
        world.client(|| {
            for &i in &drained {
                sessions[i].stays(&format!("{how}: a session of the drained host"));
            }
        });
        if how.starts_with("drain-host") {
            world.server_map(host, &["drain-host", "off", "--live-map", &live]);
        } else {
            world.front.api("set server hosts/host3 state ready");
        }
        world.front.wait_status(host, "UP", CHECKS);
    }
}

/// A cut-over on one host moves that host's new sessions only; its old
/// sessions stay on their VMs.
fn cut_over_on_one_host(world: &World, sessions: &mut [Session]) {
    let host = "host2";
    let etc = world.host(host).state().join("etc");
    let said = world.server_map(
        host,
        &[
            "switch",
            &etc.join("balance.conf").display().to_string(),
            &etc.join("balance.confB").display().to_string(),
        ],
    );
    assert!(said.contains("switched"), "{said}");
    let b_up = wait_until(BOUND, || {
        world.host(host).live_map().contains("\nALL 3003|3004\n")
    });
    assert!(
        b_up,
        "set B never came up on {host}:\n{}",
        world.host(host).live_map()
    );
    let (new, per_host) = world.client(|| new_sessions(15));
    assert!(
        per_host.contains_key(host),
        "no new session on {host}: {per_host:?}"
    );
    for s in &new {
        let set: &[u16] = if s.host == host { &SET_B } else { &SET_A };
        assert!(
            set.contains(&s.port),
            "a new session on {} reached port {}",
            s.host,
            s.port
        );
    }
    world.client(|| {
        for &i in &on(sessions, host) {
            assert!(SET_A.contains(&sessions[i].port));
            sessions[i].stays("an old session of the host that cut over");
        }
    });
}

/// Forged host cookies (unknown, 10 KB, two of them) land on a live host.
fn forged_host_cookies(world: &World) {
    let forged: Vec<Vec<String>> = vec![
        vec![format!("Cookie: {HOST_COOKIE}=host9")],
        vec![format!("Cookie: {HOST_COOKIE}=../../etc")],
        vec![format!("Cookie: {HOST_COOKIE}={}", "x".repeat(10_000))],
        vec![format!("Cookie: {HOST_COOKIE}=host9; {HOST_COOKIE}=host1")],
        vec![
            format!("Cookie: {HOST_COOKIE}=host2"),
            format!("Cookie: {HOST_COOKIE}=nosuch"),
        ],
        vec![format!("Cookie: {HOST_COOKIE}=host1; server=app99999")],
    ];
    world.client(|| {
        for headers in forged {
            let shown: String = headers
                .iter()
                .map(|h| h.chars().take(50).collect::<String>())
                .collect();
            let response = request(front_addr(), "/app/forged", &headers).expect("request");
            assert_eq!(response.status, 200, "{shown}: {response:?}");
            let vm = response.vm().expect("a VM answered");
            assert!(
                SET_A.contains(&vm.port) || SET_B.contains(&vm.port),
                "{shown}: {vm:?}"
            );
        }
    });
}

/// One host cut off (its link down): each of its sessions gets a new
/// session on a live host at its next request, with no error; the other
/// sessions see no error; the host comes back and takes new sessions.
fn cut_off_and_back(world: &World, sessions: &mut [Session]) {
    let host = "host1";
    let ns = world.host_ns[name_index(host)].name().to_owned();
    let cut: BTreeSet<usize> = on(sessions, host).into_iter().collect();
    assert!(!cut.is_empty());
    netns::ip(&["-n", &ns, "link", "set", "front", "down"]).expect("cut the link");
    let t = Instant::now();
    let delays: Vec<Duration> = world.client(|| {
        thread::scope(|scope| {
            let moved: Vec<_> = sessions
                .iter_mut()
                .enumerate()
                .map(|(i, session)| {
                    let is_cut = cut.contains(&i);
                    scope.spawn(move || {
                        if is_cut {
                            Some(session.moves("a session of the host cut off"))
                        } else {
                            session.stays("a session of another host, during the cut");
                            session.stays("a session of another host, during the cut");
                            None
                        }
                    })
                })
                .collect();
            moved
                .into_iter()
                .filter_map(|h| h.join().expect("request thread"))
                .collect()
        })
    });
    let worst = delays.iter().max().copied().unwrap_or_default();
    let mut sorted = delays.clone();
    sorted.sort();
    eprintln!(
        "hosts: {host} cut off: {} sessions redispatched, delays {:?}; worst {worst:?}",
        delays.len(),
        sorted
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
    );
    assert!(
        worst < Duration::from_millis(1500),
        "a redispatch took {worst:?}"
    );
    world.front.wait_status(host, "DOWN", CHECKS);
    eprintln!(
        "hosts: the front marked {host} DOWN {:?} after the cut",
        t.elapsed()
    );
    world.client(|| {
        for &i in &cut {
            sessions[i].stays("a redispatched session, on its new host");
        }
        // A cookie for the host that is gone lands on a live one at once.
        let response = request(
            front_addr(),
            "/app/x",
            &[format!("Cookie: {HOST_COOKIE}={host}")],
        )
        .expect("request");
        assert_eq!(response.status, 200);
        assert!(
            response.elapsed < Duration::from_millis(500),
            "{:?}",
            response.elapsed
        );
        let (_, per_host) = new_sessions(9);
        assert!(!per_host.contains_key(host), "{per_host:?}");
    });

    netns::ip(&["-n", &ns, "link", "set", "front", "up"]).expect("restore the link");
    let t = Instant::now();
    world.front.wait_status(host, "UP", CHECKS);
    eprintln!(
        "hosts: {host} back UP {:?} after its link came back",
        t.elapsed()
    );
    let rejoined = world.client(|| (0..12).any(|_| new_session().host == host));
    assert!(rejoined, "no new session reached {host} after it came back");
}

/// A sick host: Apache up, every VM of its active set dead and the VM
/// command failing. No new session gets an error, and once the front has
/// seen it down none goes there; then it is fixed and comes back.
fn sick_and_back(world: &World, sessions: &mut [Session]) {
    let host = "host3";
    let stack = world.host(host);
    let command = stack.state().join("bin/demo-vm");
    let good = fs::read(&command).expect("read demo-vm");
    install(&command, b"#!/bin/sh\nexit 1\n");
    for (_, pid) in stack.vms() {
        e2e::stack::kill_and_reap(pid, Signal::SIGKILL);
    }
    let t = Instant::now();
    // Dead as the host sees them: out of its live map (within a
    // millisecond or so). A request sent in that millisecond can still be
    // proxied to the dying VM and get a 502, once, as on a single host
    // (through_apache.rs, after_kill_9_...); the front rightly does not
    // replay a request a VM may have begun.
    let gone = wait_until(BOUND, || !stack.live_map().contains("\napp"));
    assert!(
        gone,
        "the dead VMs stay in the live map:\n{}",
        stack.live_map()
    );
    let retried = world.front.counter(host, "wretr") + world.front.counter(host, "wredis");
    // Its sessions' next requests: the host answers 503 (no VM), the front
    // tries again, then elsewhere: a new session, no error.
    let worst = world.client(|| {
        on(sessions, host)
            .into_iter()
            .map(|i| sessions[i].moves("a session of the sick host"))
            .max()
            .unwrap_or_default()
    });
    eprintln!("hosts: the sick {host}'s sessions moved to live hosts, the slowest in {worst:?}");
    assert!(worst < Duration::from_millis(1500), "a move took {worst:?}");
    // New sessions meanwhile: no error, and none made on the sick host.
    let (attempts, down_after) = world.client(|| {
        let mut attempts = 0;
        while world.front.status(host) != "DOWN" {
            assert!(
                t.elapsed() < CHECKS,
                "the front never saw {host} down: {:?}",
                world.front.servers()
            );
            let s = new_session();
            assert_ne!(s.host, host, "a new session on the sick host");
            attempts += 1;
        }
        (attempts, t.elapsed())
    });
    let retried =
        world.front.counter(host, "wretr") + world.front.counter(host, "wredis") - retried;
    eprintln!(
        "hosts: sick {host} DOWN at the front {down_after:?} after its VMs died; {attempts} new \
         sessions meanwhile, none failed; {retried} requests retried or redispatched away from it"
    );
    assert!(
        retried > 0,
        "no request reached the sick host: the test proved nothing"
    );
    world.client(|| {
        let (_, per_host) = new_sessions(15);
        assert!(!per_host.contains_key(host), "{per_host:?}");
    });

    install(&command, &good);
    let t = Instant::now();
    world.front.wait_status(host, "UP", BOUND);
    eprintln!(
        "hosts: {host} fixed: UP at the front {:?} later, with no visitor's help",
        t.elapsed()
    );
    let rejoined = world.client(|| (0..12).any(|_| new_session().host == host));
    assert!(rejoined, "no new session reached {host} after it was fixed");
}

#[test]
fn the_shipped_front_configuration_passes_haproxy_c() {
    if !skip::require(
        front::have_haproxy(),
        "haproxy is missing (scripts/deps tests)",
    ) {
        return;
    }
    let shipped = e2e::stack::repo().join("haproxy-conf/haproxy.cfg");
    let (ok, out) = front::check(&shipped);
    assert!(ok, "haproxy -c on {}: {out}", shipped.display());
    // And as the tests run it: other servers, another socket.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("haproxy.cfg");
    let hosts = vec![("host1".to_owned(), SocketAddr::from(([198, 18, 1, 2], 80)))];
    fs::write(
        &file,
        front::configure(&front::shipped(), &hosts, &dir.path().join("admin.sock")),
    )
    .expect("write");
    let (ok, out) = front::check(&file);
    assert!(ok, "haproxy -c on the test's configuration: {out}");
}

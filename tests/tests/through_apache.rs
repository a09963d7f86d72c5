//! End to end, through a real Apache 2.4 configured from the shipped
//! `apache-conf/seaside-pool.conf`: static files, sticky sessions, a VM
//! killed, a cut-over under load, forged cookies, no stall while a VM
//! starts, a graceful restart under load, the error log, and the 503 page.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use e2e::{Client, Options, Stack, request, wait_until};
use nix::sys::signal::Signal;

const BOUND: Duration = Duration::from_secs(20);

/// A new session: its client and the VM port that took it.
fn new_session(stack: &Stack) -> (Client, u16) {
    let mut client = Client::new(stack.addr);
    let response = client.get("/app/start").expect("request");
    assert_eq!(response.status, 200, "{response:?}\n{}", stack.error_log());
    let vm = response.vm().expect("a VM answered");
    assert_eq!(client.server(), Some(format!("app{}", vm.port).as_str()));
    (client, vm.port)
}

#[test]
fn static_files_are_served_by_apache_without_any_vm() {
    let stack = Stack::start(Options::default());
    let css = request(stack.addr, "/style.css", &[]).expect("request");
    assert_eq!(css.status, 200);
    assert!(css.body.contains("font-family"));
    // Expiry for browsers, as the original configuration had.
    assert!(
        css.header("cache-control")
            .is_some_and(|v| v.contains("max-age=864000")),
        "{css:?}"
    );
    let page =
        request(stack.addr, "/index.html", &["Accept-Encoding: gzip".into()]).expect("request");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-encoding"), Some("gzip"), "compressed");
    // A path that only starts like the application's is not the application.
    let other = request(stack.addr, "/apple", &[]).expect("request");
    assert_eq!(other.status, 404, "{other:?}");
    assert!(stack.vms().is_empty(), "a VM was launched for static files");
    assert!(stack.ports.iter().all(|&p| stack.record(p).is_none()));
}

#[test]
fn a_session_gets_a_server_cookie_and_stays_on_its_vm() {
    let stack = Stack::start(Options::default());
    let (mut client, port) = new_session(&stack);
    assert!(
        stack.set_a().contains(&port),
        "{port} is not in set A {:?}",
        stack.set_a()
    );
    let session = client
        .cookies
        .get("session")
        .cloned()
        .expect("session cookie");
    for hit in 2..=21 {
        let response = client.get(&format!("/app/page/{hit}")).expect("request");
        assert_eq!(response.status, 200);
        let vm = response.vm().expect("VM reply");
        assert_eq!(
            (vm.port, vm.session.as_str(), vm.hits),
            (port, session.as_str(), hit)
        );
        assert!(
            !response.set_cookies().iter().any(|(n, _)| n == "server"),
            "cookie reset on hit {hit}"
        );
    }
}

#[test]
fn after_kill_9_of_its_vm_a_session_gets_a_live_vm_and_a_new_cookie() {
    let stack = Stack::start(Options::default());
    let (mut client, port) = new_session(&stack);
    let old_session = client.cookies.get("session").cloned();
    let record = stack
        .record(port)
        .unwrap_or_else(|| panic!("no pid record for {port}\n{}", stack.error_log()));
    e2e::stack::kill_and_reap(record.pid, Signal::SIGKILL);
    assert!(wait_until(BOUND, || {
        !vmpool::connect_probe(([127, 0, 0, 1], port).into(), Duration::from_millis(100))
    }));
    let response = client.get("/app/after-crash").expect("request");
    assert_eq!(response.status, 200, "{response:?}\n{}", stack.error_log());

    let vm = response.vm().expect("VM reply");
    assert!(vm.new, "a new session");
    assert_ne!(Some(vm.session.clone()), old_session);
    assert!(
        response.set_cookies().iter().any(|(n, _)| n == "session"),
        "a new cookie: {response:?}"
    );
    assert!(stack.ports.contains(&vm.port));
}

/// Load of several threads until `stop`: sticky requests for each client.
/// A failure is anything but a 200 from the client's own VM and session (a
/// session that moved is a session lost).
fn sticky_load(
    clients: Vec<Client>,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
) -> Vec<thread::JoinHandle<Vec<(u16, u16)>>> {
    clients
        .into_iter()
        .map(|mut client| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            thread::spawn(move || {
                let mut seen = Vec::new();
                let home = client.server().map(str::to_owned);
                let session = client.cookies.get("session").cloned();
                while !stop.load(Ordering::SeqCst) {
                    match client.get("/app/sticky") {
                        Ok(r) if r.status == 200 => {
                            let vm = r.vm().expect("VM reply");
                            if Some(format!("app{}", vm.port)) != home
                                || Some(&vm.session) != session.as_ref()
                            {
                                eprintln!("session moved: {home:?} {session:?} -> {vm:?}");
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                            seen.push((vm.port, r.status));
                        }
                        Ok(r) => {
                            eprintln!("sticky request failed: {} {}", r.status, r.body);
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            eprintln!("sticky request failed: {e}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                seen
            })
        })
        .collect()
}

#[test]
fn a_cut_over_under_load_sends_new_sessions_to_set_b_and_keeps_old_ones() {
    let stack = Stack::start(Options::default());
    let sessions: Vec<(Client, u16)> = (0..6).map(|_| new_session(&stack)).collect();
    let on_a: BTreeMap<String, u16> = sessions
        .iter()
        .map(|(c, p)| (c.cookies["session"].clone(), *p))
        .collect();
    assert!(on_a.values().all(|p| stack.set_a().contains(p)));

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let load = sticky_load(
        sessions.iter().map(|(c, _)| c.clone()).collect(),
        stop.clone(),
        failures.clone(),
        done.clone(),
    );
    thread::sleep(Duration::from_millis(300));
    // As the operations guide says: start the B set, then switch.
    stack.prestart(stack.set_b());
    stack.copy_balance('B');
    // New sessions, from now on: only set B.
    let mut new_ports = BTreeSet::new();
    for _ in 0..20 {
        let (_, port) = new_session(&stack);
        new_ports.insert(port);
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let mut sticky_ports = BTreeSet::new();
    for handle in load {
        sticky_ports.extend(
            handle
                .join()
                .expect("load thread")
                .into_iter()
                .map(|(p, _)| p),
        );
    }
    assert!(
        new_ports.iter().all(|p| stack.set_b().contains(p)),
        "new sessions on {new_ports:?}, set B is {:?}",
        stack.set_b()
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed requests during the cut-over"
    );
    assert!(
        done.load(Ordering::SeqCst) > 50,
        "too little load to mean anything"
    );
    let a_ports: BTreeSet<u16> = on_a.values().copied().collect();
    assert_eq!(sticky_ports, a_ports, "old sessions left their A VMs");
}

#[test]
fn forged_cookies_never_leave_the_pool_and_never_cause_a_5xx() {
    let stack = Stack::start(Options::default());
    let (client, port) = new_session(&stack);
    let real = client.cookies["server"].clone();
    let b = stack.set_b()[0];
    let forged: Vec<Vec<String>> = vec![
        vec!["Cookie: server=app99999".into()],
        vec!["Cookie: server=../../etc".into()],
        vec!["Cookie: server=app22".into()],
        vec![format!("Cookie: server={real}x")],
        vec![format!("Cookie: server=app{b}; server={real}")],
        vec![
            format!("Cookie: server={real}"),
            format!("Cookie: server=app{b}"),
        ],
        vec![format!("Cookie: server=app{}", "9".repeat(10_000))],
        vec![format!(
            "Cookie: junk={}; server={real}",
            "x".repeat(10_000)
        )],
        vec!["Cookie: server=app3001%0d%0aX-Injected: 1".into()],
    ];
    for headers in forged {
        let response = request(stack.addr, "/app/forged", &headers).expect("request");
        let shown: String = headers
            .iter()
            .map(|h| h.chars().take(60).collect::<String>())
            .collect();
        assert!(response.status < 500, "{} for {shown}", response.status);
        if response.status == 200 {
            let vm = response.vm().expect("VM reply");
            assert!(
                stack.ports.contains(&vm.port),
                "{shown} reached port {}",
                vm.port
            );
        }
    }
    // The pool is still up and the real session still works.
    let mut client = client;
    let response = client.get("/app/still").expect("request");
    assert_eq!(response.vm().map(|v| v.port), Some(port));
}

#[test]
fn no_stall_while_a_slow_vm_starts_for_a_new_session() {
    let stack = Stack::start(Options {
        ports: 4,
        vm_args: vec!["--start-delay-ms".into(), "3000".into()],
        ..Options::default()
    });
    // The first session waits for the first VM (a cold pool).
    let (client, port) = new_session(&stack);
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let sticky = {
        let (stop, worst, count) = (stop.clone(), worst.clone(), count.clone());
        let mut client = client.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let r = client.get("/app/sticky").expect("request");
                assert_eq!(r.status, 200);
                assert_eq!(r.vm().map(|v| v.port), Some(port));
                worst.fetch_max(r.elapsed.as_micros() as u64, Ordering::SeqCst);
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // New sessions until one makes the launcher start another VM (3 s).
    let other = stack
        .set_a()
        .iter()
        .copied()
        .find(|&p| p != port)
        .expect("a second port");
    let started = Instant::now();
    while stack.record(other).is_none() {
        assert!(started.elapsed() < BOUND, "no launch for {other}");
        let mut fresh = Client::new(stack.addr);
        let r = fresh.get("/app/new").expect("request");
        assert_eq!(r.status, 200);
        assert!(
            r.elapsed < Duration::from_millis(500),
            "a new session waited {:?}",
            r.elapsed
        );
    }
    // Keep the sticky load on while the slow VM comes up.
    assert!(wait_until(BOUND, || {
        vmpool::connect_probe(([127, 0, 0, 1], other).into(), Duration::from_millis(100))
    }));
    stop.store(true, Ordering::SeqCst);
    sticky.join().expect("sticky thread");
    let worst = Duration::from_micros(worst.load(Ordering::SeqCst));
    assert!(count.load(Ordering::SeqCst) > 20, "too few sticky requests");
    assert!(
        worst < Duration::from_millis(500),
        "a sticky request took {worst:?}"
    );
}

#[test]
fn a_graceful_restart_under_load_keeps_vms_fails_nothing_and_leaves_no_map_behind() {
    let stack = Stack::start(Options::default());
    let sessions: Vec<Client> = (0..4).map(|_| new_session(&stack).0).collect();
    let maps_before = stack.map_programs();
    assert_eq!(maps_before.len(), 3);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let load = sticky_load(sessions, stop.clone(), failures.clone(), done.clone());
    // VMs launched in the background for the first sessions are up by now.
    thread::sleep(Duration::from_millis(300));
    let vms_before = stack.vms();
    stack.graceful();
    // The new generation's maps replace the old ones.
    let replaced = wait_until(BOUND, || {
        let now = stack.map_programs();
        now.len() == 3 && now.iter().all(|m| !maps_before.contains(m))
    });
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for handle in load {
        handle.join().expect("load thread");
    }
    assert!(
        replaced,
        "map programs after graceful: {:?} (before {maps_before:?})",
        stack.map_programs()
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed requests across the graceful restart"
    );
    assert!(done.load(Ordering::SeqCst) > 50);
    assert_eq!(
        stack.vms(),
        vms_before,
        "VMs changed across the graceful restart:\n{}",
        stack.error_log()
    );
    let maps = stack.map_programs();
    assert_eq!(maps.len(), 3, "{maps:?}");
    assert!(
        maps.iter().all(|(_, ppid, _)| *ppid == stack.apache_pid()),
        "{maps:?}"
    );
}

#[test]
fn the_map_programs_log_to_apaches_error_log() {
    let stack = Stack::start(Options::default());
    let _ = new_session(&stack);
    let _ = request(stack.addr, "/app/x", &["Cookie: server=app1".into()]);
    for program in ["verify-port[", "server-map[", "image-launcher["] {
        assert!(
            wait_until(BOUND, || stack.error_log().contains(program)),
            "no {program} line in the error log:\n{}",
            stack.error_log()
        );
    }
    assert!(
        stack.error_log().contains("launched pid"),
        "{}",
        stack.error_log()
    );
}

#[test]
fn when_no_vm_can_be_had_the_answer_is_a_503_with_retry_after() {
    let stack = Stack::start(Options {
        vm_args: vec!["--exit-after-s".into(), "0".into()],
        ..Options::default()
    });
    let response = request(stack.addr, "/app/x", &[]).expect("request");
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("retry-after"), Some("5"));
    assert!(response.body.contains("try again"), "{}", response.body);
    // Static files are unaffected.
    assert_eq!(
        request(stack.addr, "/style.css", &[])
            .expect("request")
            .status,
        200
    );
}

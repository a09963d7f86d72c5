//! A hung VM through the shipped site: the sessions of the other VMs never
//! notice, the requests held by the hung VM are let go within the hang
//! timeout (not Apache's five minutes), and its sessions' next requests get
//! a live VM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use e2e::{Client, Options, Stack, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BOUND: Duration = Duration::from_secs(20);
const HANG_TIMEOUT: Duration = Duration::from_secs(2);

/// New sessions until one lands on a VM other than `not`.
fn session_not_on(stack: &Stack, not: Option<u16>) -> (Client, u16) {
    let deadline = Instant::now() + BOUND;
    loop {
        let mut client = Client::new(stack.addr);
        let r = client.get("/app/start").expect("request");
        assert_eq!(r.status, 200, "{r:?}\n{}", stack.error_log());
        let port = r.vm().expect("VM").port;
        if Some(port) != not {
            return (client, port);
        }
        assert!(Instant::now() < deadline, "every new session on {port}");
    }
}

#[test]
fn a_hung_vm_stalls_no_other_session_and_its_own_get_a_live_vm() {
    let stack = Stack::start(Options {
        launcher_options: format!("--hang-timeout-s {}", HANG_TIMEOUT.as_secs()),
        ..Options::default()
    });
    let (mut hung_client, hung_port) = session_not_on(&stack, None);
    let (other_client, other_port) = session_not_on(&stack, Some(hung_port));
    let vm = stack.record(hung_port).expect("record");

    // The other session's sticky requests, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let worst_us = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, worst_us, count) = (stop.clone(), worst_us.clone(), count.clone());
        let mut client = other_client.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let r = client.get("/app/sticky").expect("request");
                assert_eq!(r.status, 200, "{r:?}");
                assert_eq!(r.vm().map(|v| v.port), Some(other_port));
                worst_us.fetch_max(r.elapsed.as_micros() as u64, Ordering::SeqCst);
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    kill(Pid::from_raw(vm.pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
    // A stop is delivered asynchronously: wait until the VM is stopped.
    assert!(wait_until(BOUND, || {
        vmpool::pidrecord::proc_stat(vm.pid)
            .ok()
            .flatten()
            .is_some_and(|stat| stat.state == 'T')
    }));
    // A request of the hung VM's session: held until the VM is let go.
    let held = hung_client.get("/app/held").expect("request");
    assert!(
        held.elapsed < HANG_TIMEOUT + Duration::from_secs(5),
        "held {:?} by a VM hung for good (the hang timeout is {HANG_TIMEOUT:?})",
        held.elapsed
    );
    assert!(held.status >= 500, "{held:?}");
    // Its next request: a live VM, a new session.
    let next = hung_client.get("/app/next").expect("request");
    assert_eq!(next.status, 200, "{next:?}\n{}", stack.error_log());
    let moved = next.vm().expect("VM");
    assert!(moved.new && moved.port != hung_port, "{moved:?}");
    assert!(wait_until(BOUND, || !matches!(
        vm.liveness(),
        Ok(vmpool::Liveness::Running { .. })
    )));

    stop.store(true, Ordering::SeqCst);
    load.join().expect("load");
    let worst = Duration::from_micros(worst_us.load(Ordering::SeqCst));
    assert!(count.load(Ordering::SeqCst) > 20, "too few sticky requests");
    // Usual latency: far below the hang; 1 s is the margin of a loaded
    // 2-core machine.
    assert!(
        worst < Duration::from_secs(1),
        "a sticky request of another VM took {worst:?}"
    );
    assert!(
        stack.error_log().contains("hung: "),
        "{}",
        stack.error_log()
    );
    eprintln!(
        "held request: {:?} ({}); other VM's worst sticky request {worst:?}",
        held.elapsed, held.status
    );
}

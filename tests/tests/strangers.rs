//! A local user who binds a pool port gains nothing: a listener that is not
//! the VM's (here, one of `nobody`, while the site's VMs run as www-data) is
//! never routed to, by a sticky cookie or for a new session, before or after
//! a cut-over, with the live map or the classic rules; it is never launched
//! over, and `server-map status` names it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::skip::{is_root, require};
use e2e::{Client, Options, Stack, request, wait_until};

const BOUND: Duration = Duration::from_secs(20);

/// A demo-vm of `nobody` on `port`: it answers `port=PORT`, so any request
/// it gets shows.
struct Stranger(Child);

impl Stranger {
    fn start(stack: &Stack, port: u16) -> Stranger {
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("nobody");
        let child = Command::new(stack.state().join("bin/demo-vm"))
            .args(["--port", &port.to_string()])
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the stranger");
        assert!(wait_until(BOUND, || vmpool::connect_probe(
            ([127, 0, 0, 1], port).into(),
            Duration::from_millis(100)
        )));
        Stranger(child)
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port that answered, if a VM did.
fn answered(response: &e2e::Response) -> Option<u16> {
    response.vm().map(|vm| vm.port)
}

#[test]
fn a_listener_of_another_user_on_a_pool_port_never_gets_a_request() {
    if !require(is_root(), "needs root to run a listener as nobody") {
        return;
    }
    for classic in [false, true] {
        let stack = Stack::start(Options {
            classic,
            ..Options::default()
        });
        let taken = stack.set_b()[0];
        let stranger = Stranger::start(&stack, taken);
        let cookie = format!("Cookie: server=app{taken}");
        let mut answers = Vec::new();
        for _ in 0..10 {
            answers.push(
                request(stack.addr, "/app/sticky", std::slice::from_ref(&cookie)).expect("request"),
            );
            answers.push(request(stack.addr, "/app/new", &[]).expect("request"));
        }
        // A cut-over to the set that holds the taken port.
        stack.copy_balance('B');
        for _ in 0..30 {
            let mut client = Client::new(stack.addr);
            answers.push(client.get("/app/after").expect("request"));
            answers.push(
                request(stack.addr, "/app/sticky", std::slice::from_ref(&cookie)).expect("request"),
            );
        }
        for r in &answers {
            assert!(
                r.status < 500 || r.status == 503,
                "classic={classic}: {r:?}"
            );
            assert_ne!(
                answered(r),
                Some(taken),
                "classic={classic}: the stranger got a request"
            );
        }
        assert!(
            answers.iter().filter(|r| r.status == 200).count() > 40,
            "classic={classic}: too few answers to mean anything"
        );
        // Never launched over: no pid record for the taken port.
        assert!(
            stack.record(taken).is_none(),
            "classic={classic}: launched over it"
        );
        if !classic {
            let out = Command::new(stack.state().join("bin/server-map"))
                .arg("status")
                .arg(stack.state().join("etc/balance.conf"))
                .arg("--live-map")
                .arg(stack.state().join("lib/live.map"))
                .output()
                .expect("status");
            let table = String::from_utf8_lossy(&out.stdout);
            assert!(table.contains("taken by uid 65534"), "{table}");
            assert!(
                stack
                    .error_log()
                    .contains(&format!("port {taken}: a socket of uid 65534")),
                "{}",
                stack.error_log()
            );
        }
        drop(stranger);
    }
}

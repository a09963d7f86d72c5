//! The front of several hosts: a real HAProxy run from the shipped
//! `haproxy-conf/haproxy.cfg`, with only its `server` lines (the test's
//! hosts) and the path of its runtime API socket (a temporary directory
//! instead of /run/haproxy) replaced; and a client of that runtime API.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::netns::Netns;
use crate::stack::{repo, wait_until};

/// The HAProxy binary (Debian's).
pub fn haproxy_bin() -> &'static str {
    "/usr/sbin/haproxy"
}

/// True when HAProxy is installed.
pub fn have_haproxy() -> bool {
    Path::new(haproxy_bin()).exists()
}

/// The shipped configuration's text.
pub fn shipped() -> String {
    fs::read_to_string(repo().join("haproxy-conf/haproxy.cfg"))
        .expect("read haproxy-conf/haproxy.cfg")
}

/// The shipped configuration with `hosts` (cookie value, address) as its
/// servers and `socket` as its runtime API socket; panics if the shipped
/// file lacks a line it means to replace.
pub fn configure(shipped: &str, hosts: &[(String, SocketAddr)], socket: &Path) -> String {
    let mut out = String::new();
    let (mut servers, mut sockets) = (0, 0);
    for line in shipped.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["server", ..] => {
                if servers == 0 {
                    for (name, addr) in hosts {
                        out.push_str(&format!("    server {name} {addr} cookie {name}\n"));
                    }
                }
                servers += 1;
            }
            ["stats", "socket", _, rest @ ..] => {
                sockets += 1;
                out.push_str(&format!(
                    "    stats socket {} {}\n",
                    socket.display(),
                    rest.join(" ")
                ));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(servers > 0, "the shipped haproxy.cfg has no server line");
    assert_eq!(sockets, 1, "the shipped haproxy.cfg has no stats socket");
    out
}

/// A running HAProxy in a namespace, stopped on drop.
#[derive(Debug)]
pub struct Front {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
}

impl Front {
    /// Writes the configuration for `hosts` and starts HAProxy in
    /// `netns`, in the foreground (`-db`); returns once its runtime API
    /// answers.
    pub fn start(netns: &Netns, hosts: &[(String, SocketAddr)]) -> Front {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("admin.sock");
        let config = dir.path().join("haproxy.cfg");
        fs::write(&config, configure(&shipped(), hosts, &socket)).expect("write haproxy.cfg");
        let log = fs::File::create(dir.path().join("haproxy.log")).expect("log file");
        let child = netns
            .command(haproxy_bin())
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let front = Front { dir, child, socket };
        let up = wait_until(Duration::from_secs(10), || {
            front.try_api("show info").is_ok()
        });
        assert!(up, "haproxy did not start:\n{}", front.log());
        front
    }

    /// HAProxy's own output.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    fn try_api(&self, command: &str) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// One command on the runtime API (as `socat stdio unix-connect:SOCKET`
    /// does it); its answer.
    pub fn api(&self, command: &str) -> String {
        self.try_api(command)
            .unwrap_or_else(|e| panic!("runtime API {command:?}: {e}\n{}", self.log()))
    }

    /// The backend `hosts`' servers: name -> (status, last check).
    pub fn servers(&self) -> BTreeMap<String, (String, String)> {
        self.stat(&["status", "check_status"])
            .into_iter()
            .map(|(name, mut fields)| {
                let check = fields.pop().unwrap_or_default();
                let status = fields.pop().unwrap_or_default();
                (name, (status, check))
            })
            .collect()
    }

    /// A counter of `show stat` for one host: `wretr` (retries), `wredis`
    /// (redispatches), `hrsp_5xx`...
    pub fn counter(&self, host: &str, column: &str) -> u64 {
        self.stat(&[column])
            .remove(host)
            .and_then(|f| f.first()?.parse().ok())
            .unwrap_or_else(|| panic!("no {column} for {host}"))
    }

    /// The backend `hosts`' servers: name -> these columns of `show stat`.
    fn stat(&self, columns: &[&str]) -> BTreeMap<String, Vec<String>> {
        let csv = self.api("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("no {name} column in show stat"))
        };
        let (px, sv) = (column("pxname"), column("svname"));
        let wanted: Vec<usize> = columns.iter().map(|c| column(c)).collect();
        let last = wanted.iter().copied().fold(sv.max(px), usize::max);
        lines
            .map(|l| l.split(',').collect::<Vec<&str>>())
            .filter(|f| f.len() > last && f[px] == "hosts" && f[sv] != "BACKEND")
            .map(|f| {
                let values = wanted.iter().map(|&i| f[i].to_owned()).collect();
                (f[sv].to_owned(), values)
            })
            .collect()
    }

    /// The status of one host (`UP`, `DOWN`, `NOLB`, `DRAIN`, `MAINT`, or a
    /// transition such as `UP 1/2`).
    pub fn status(&self, host: &str) -> String {
        self.servers()
            .remove(host)
            .map(|(status, _)| status)
            .unwrap_or_else(|| panic!("no server {host}"))
    }

    /// Waits until `host`'s status is `want`; how long it took.
    pub fn wait_status(&self, host: &str, want: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let reached = wait_until(timeout, || self.status(host) == want);
        assert!(
            reached,
            "{host} is {:?}, not {want}, after {timeout:?}: {:?}",
            self.status(host),
            self.servers()
        );
        started.elapsed()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        crate::stack::kill_and_reap(self.child.id(), Signal::SIGTERM);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `haproxy -c -f FILE`: its exit status and output.
pub fn check(file: &Path) -> (bool, String) {
    let out = Command::new(haproxy_bin())
        .args(["-c", "-f"])
        .arg(file)
        .output()
        .expect("run haproxy -c");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

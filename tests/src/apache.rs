//! A minimal private Apache 2.4 for the tests of what Apache itself does with
//! our files (how it caches the live map), without the whole site: the
//! caller gives the directives, this adds a loopback `Listen`, the modules
//! and the logs, runs it in the foreground as a child, and stops it on drop.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::stack::{apache_bin, wait_until};

/// A running minimal Apache.
#[derive(Debug)]
pub struct MiniApache {
    dir: tempfile::TempDir,
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Where Apache's modules are (Debian, or a Red Hat layout).
pub fn modules_dir() -> PathBuf {
    [
        "/usr/lib/apache2/modules",
        "/usr/lib64/httpd/modules",
        "/usr/lib/httpd/modules",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("mod_rewrite.so").exists())
    .expect("Apache's modules (mod_rewrite.so)")
}

impl MiniApache {
    /// Starts Apache with `directives` (mod_rewrite is loaded); returns once
    /// it answers.
    pub fn start(directives: &str) -> MiniApache {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let state = dir.path();
        let mods = modules_dir();
        let conf = format!(
            "ServerRoot \"{root}\"\nPidFile \"{root}/httpd.pid\"\nMutex file:{root} default\n\
             Listen 127.0.0.1:{port}\nServerName 127.0.0.1\nErrorLog \"{root}/error.log\"\n\
             LogLevel warn\nLoadModule mpm_event_module {mods}/mod_mpm_event.so\n\
             LoadModule authz_core_module {mods}/mod_authz_core.so\n\
             LoadModule rewrite_module {mods}/mod_rewrite.so\n{directives}\n",
            root = state.display(),
            mods = mods.display(),
        );
        fs::write(state.join("httpd.conf"), conf).expect("write httpd.conf");
        let child = Command::new(apache_bin())
            .arg("-f")
            .arg(state.join("httpd.conf"))
            .arg("-DFOREGROUND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apache2");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let apache = MiniApache { dir, child, addr };
        let up = wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        });
        assert!(up, "Apache did not start:\n{}", apache.error_log());
        apache
    }

    /// A directory of its own, for the files the directives name.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its error log.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for MiniApache {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

//! A directory root writes in (pid records, locks, VM logs), checked
//! component by component and held open: every file in it is then opened,
//! created, renamed and removed relative to the held descriptor (the
//! `openat` family), so that a user who owns a directory above it cannot
//! redirect root's writes by renaming things after the check.
//!
//! The rule, for the directory and each one above it (on its real path,
//! symlinks resolved once, at open):
//! - owned by root or by the user we run as;
//! - the directory itself writable by no one else: not by others (a
//!   world-writable directory, sticky or not, lets any user plant a lock or a
//!   symlinked log), and by a group only if it is root's or ours;
//! - a directory above it writable by others only if sticky (like /tmp:
//!   then no one else can rename or remove what we own in it).
//!
//! Files in it are opened without following a symlink and without blocking
//! on a FIFO, and are used only if they are regular files with no other hard
//! link, owned by root or us.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, getegid, geteuid, unlinkat};

/// How [`SafeDir::open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read an existing file.
    Read,
    /// Append, creating the file (mode 0640) if missing: a VM's log.
    Append,
    /// Read and write, creating it (0640) if missing, never truncating: a
    /// lock file.
    Lock,
}

/// A checked directory, held open.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SafeDir {
    /// Opens `path`, which must exist, checking every directory on its
    /// real path (see the module doc).
    pub fn open(path: &Path) -> io::Result<SafeDir> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut fd = nix::fcntl::open(
            "/",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut here = PathBuf::from("/");
        let names: Vec<OsString> = real
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_owned()),
                _ => None,
            })
            .collect();
        check(&fd, &here, names.is_empty())?;
        for (i, name) in names.iter().enumerate() {
            here.push(name);
            fd = openat(
                &fd,
                name.as_os_str(),
                OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => refused(
                    &here,
                    "changed into a symlink or a file while it was checked",
                ),
                e => io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: {e}", here.display()),
                ),
            })?;
            check(&fd, &here, i + 1 == names.len())?;
        }
        Ok(SafeDir { fd, path: real })
    }

    /// [`SafeDir::open`], creating the directory (and missing ones above
    /// it) first, mode 0755, as after a reboot emptied `/run`.
    pub fn open_or_create(path: &Path) -> io::Result<SafeDir> {
        if !path.exists() {
            let missing: Vec<&Path> = path.ancestors().take_while(|p| !p.exists()).collect();
            let Some(base) = missing.last().and_then(|p| p.parent()) else {
                return Err(io::Error::other(format!(
                    "{}: no existing parent",
                    path.display()
                )));
            };
            let mut dir = SafeDir::open(base)?;
            for create in missing.iter().rev() {
                let name = create.file_name().ok_or_else(|| {
                    io::Error::other(format!("{}: not a directory name", create.display()))
                })?;
                match mkdirat(&dir.fd, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            io::Error::from(e).kind(),
                            format!("creating {}: {e}", create.display()),
                        ));
                    }
                }
                dir = SafeDir::open(create)?;
            }
            tracing::info!("created {}", path.display());
            return Ok(dir);
        }
        SafeDir::open(path)
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> io::Result<SafeDir> {
        Ok(SafeDir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Its real path, for messages (never to open things by).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` in it (see [`Access`]): never through a symlink, never
    /// blocking on a FIFO, only a regular file with one link, owned by root
    /// or us. The file is returned in blocking mode.
    pub fn open_file(&self, name: &str, access: Access) -> io::Result<File> {
        let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let flags = match access {
            Access::Read => flags | OFlag::O_RDONLY,
            Access::Append => flags | OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
            Access::Lock => flags | OFlag::O_RDWR | OFlag::O_CREAT,
        };
        let path = self.path.join(name);
        let fd = openat(&self.fd, name, flags, Mode::from_bits_truncate(0o640)).map_err(|e| {
            if e == nix::errno::Errno::ELOOP {
                refused(&path, "is a symlink")
            } else {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: {e}", path.display()),
                )
            }
        })?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(refused(&path, "is not a regular file"));
        }
        // A hard link planted beside our files would make us write to the
        // file it names (protected_hardlinks may be off).
        if meta.nlink() > 1 {
            return Err(refused(&path, "has other hard links"));
        }
        if !trusted_owner(meta.uid()) {
            return Err(refused(
                &path,
                &format!("is owned by uid {}, neither root nor us", meta.uid()),
            ));
        }
        // O_NONBLOCK was only for the open; whoever gets the file (a VM's
        // stdout) must see ordinary blocking writes.
        let now = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
        fcntl(&file, FcntlArg::F_SETFL(now - OFlag::O_NONBLOCK))?;
        Ok(file)
    }

    /// Replaces `name` with `bytes` atomically (a temp file in it, created
    /// new with `mode`, then a rename): a reader sees the old file or the
    /// new one.
    pub fn replace(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let temp = format!(".{name}.{}.tmp", std::process::id());
        // A leftover of a writer that died mid-write (same pid, other boot).
        let _ = unlinkat(&self.fd, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        let written = self.create_new(&temp, bytes, mode).and_then(|()| {
            renameat(&self.fd, temp.as_str(), &self.fd, name).map_err(io::Error::from)
        });
        if written.is_err() {
            let _ = unlinkat(&self.fd, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// Creates `name`, which must not exist, with `bytes` and `mode`
    /// (whatever the umask).
    pub fn create_new(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        fchmod(&fd, Mode::from_bits_truncate(mode))?;
        File::from(fd).write_all(bytes)
    }

    /// Removes `name` (never a directory); a missing one is no error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of its entries.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }
}

impl AsFd for SafeDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One directory of the path, by its open descriptor.
fn check(fd: &OwnedFd, path: &Path, last: bool) -> io::Result<()> {
    let stat = fstat(fd)?;
    let mode = stat.st_mode;
    if !trusted_owner(stat.st_uid) {
        return Err(refused(
            path,
            &format!("is owned by uid {}, neither root nor us", stat.st_uid),
        ));
    }
    let sticky = mode & 0o1000 != 0;
    let others_write = mode & 0o002 != 0;
    let group_write = mode & 0o020 != 0 && !trusted_group(stat.st_gid);
    if last && others_write {
        return Err(refused(
            path,
            "is writable by others (a world-writable directory, sticky or not, lets any user plant a lock or a symlinked log)",
        ));
    }
    if last && group_write {
        return Err(refused(
            path,
            &format!(
                "is writable by group {}, neither root's nor ours",
                stat.st_gid
            ),
        ));
    }
    if !last && (others_write || group_write) && !sticky {
        return Err(refused(
            path,
            "is writable by others without the sticky bit: they could rename what is below it",
        ));
    }
    Ok(())
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing {}: it {why}", path.display()),
    )
}

/// True for root's group and for the group we run as.
fn trusted_group(gid: u32) -> bool {
    gid == 0 || gid == getegid().as_raw()
}

/// True for root and for the user we run as.
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_private_dir_is_held_and_a_world_writable_one_refused_sticky_or_not() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = top.path().join("pids");
        let held = SafeDir::open_or_create(&dir).expect("created");
        assert_eq!(
            fs::metadata(&dir).expect("stat").permissions().mode() & 0o777,
            0o755
        );
        held.replace("3001.pid", b"1\n2\n", 0o644).expect("write");
        assert_eq!(fs::read(dir.join("3001.pid")).expect("read"), b"1\n2\n");
        assert_eq!(held.names().expect("ls"), [OsString::from("3001.pid")]);
        chmod(&dir, 0o1777);
        let err = SafeDir::open(&dir).expect_err("world-writable and sticky");
        assert!(err.to_string().contains("writable by others"), "{err}");
        chmod(&dir, 0o755);
        // Above it, a sticky world-writable directory (like /tmp) is fine.
        chmod(top.path(), 0o1777);
        assert!(SafeDir::open(&dir).is_ok());
        chmod(top.path(), 0o777);
        let err = SafeDir::open(&dir).expect_err("world-writable parent without sticky");
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
        chmod(top.path(), 0o700);
    }

    #[test]
    fn writes_stay_in_the_held_directory_when_a_parent_is_renamed() {
        let top = tempfile::tempdir().expect("tempdir");
        let parent = top.path().join("parent");
        let dir = parent.join("pids");
        fs::create_dir_all(&dir).expect("mkdir");
        let held = SafeDir::open(&dir).expect("open");
        // Someone who owns `parent`'s parent swaps it for a directory of
        // theirs: the held descriptor still names the directory checked.
        fs::rename(&parent, top.path().join("moved")).expect("rename");
        fs::create_dir_all(&dir).expect("planted");
        held.replace("3001.pid", b"x", 0o644).expect("write");
        assert!(top.path().join("moved/pids/3001.pid").exists());
        assert!(!dir.join("3001.pid").exists(), "the write was redirected");
    }

    #[test]
    fn files_that_are_symlinks_fifos_or_hard_links_are_not_opened() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = SafeDir::open(top.path()).expect("open");
        let target = top.path().join("target");
        fs::write(&target, "x").expect("write");
        symlink(&target, top.path().join("3001.log")).expect("symlink");
        let err = dir
            .open_file("3001.log", Access::Append)
            .expect_err("symlink");
        assert!(err.to_string().contains("symlink"), "{err}");
        nix::unistd::mkfifo(&top.path().join("fifo"), Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let err = dir.open_file("fifo", Access::Read).expect_err("fifo");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        fs::hard_link(&target, top.path().join("3002.log")).expect("link");
        let err = dir
            .open_file("3002.log", Access::Append)
            .expect_err("hard link");
        assert!(err.to_string().contains("hard links"), "{err}");
        let mut log = dir
            .open_file("3003.log", Access::Append)
            .expect("a new log");
        log.write_all(b"line\n").expect("write");
    }

    #[test]
    fn a_dir_of_another_owner_or_group_is_refused() {
        if !geteuid().is_root() {
            return;
        }
        let top = tempfile::tempdir().expect("tempdir");
        let dir = top.path().join("pids");
        fs::create_dir(&dir).expect("mkdir");
        nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let err = SafeDir::open(&dir).expect_err("owned by nobody");
        assert!(err.to_string().contains("uid 65534"), "{err}");
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .expect("chown");
        chmod(&dir, 0o775);
        let err = SafeDir::open(&dir).expect_err("group-writable");
        assert!(err.to_string().contains("writable by group 65534"), "{err}");
        // A parent owned by nobody: it could rename our directory away.
        let parent = top.path().join("theirs");
        fs::create_dir_all(parent.join("pids")).expect("mkdir");
        nix::unistd::chown(&parent, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let err = SafeDir::open(&parent.join("pids")).expect_err("parent of nobody");
        assert!(err.to_string().contains("theirs"), "{err}");
    }
}

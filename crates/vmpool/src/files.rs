//! Directories and files the launcher writes as root: checked before use,
//! never opened through a symlink, never a FIFO or device in disguise.
//!
//! A pid directory that someone else can write is a way to make root signal
//! the wrong process; a log file swapped for a symlink is a way to make root
//! append to `/etc/shadow`. So: a directory must be owned by root or by us
//! and must not be world-writable without the sticky bit; files in it are
//! opened with `O_NOFOLLOW` (and `O_NONBLOCK`, so a planted FIFO cannot make
//! the open hang), must be regular files with no other hard link, and are
//! trusted only when owned by root or by us. A directory writable by a
//! group other than root's or ours is refused too.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::geteuid;

/// Checks that `dir` is a directory fit for pid, lock or log files and
/// returns its canonical path (so `/var/run` -> `/run` is resolved once, at
/// start, and never again).
pub fn checked_dir(dir: &Path) -> io::Result<PathBuf> {
    let canonical = fs::canonicalize(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let meta = fs::metadata(&canonical)?;
    if !meta.is_dir() {
        return Err(refused(&canonical, "is not a directory"));
    }
    if !trusted_owner(meta.uid()) {
        return Err(refused(
            &canonical,
            &format!("is owned by uid {}, neither root nor us", meta.uid()),
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(refused(
            &canonical,
            "is world-writable without the sticky bit",
        ));
    }
    // The members of a group that can write here could unlink a held lock
    // file or swap a record: only root's group, or ours.
    if mode & 0o020 != 0 && mode & 0o1000 == 0 && !trusted_group(meta.gid()) {
        return Err(refused(
            &canonical,
            &format!(
                "is writable by group {}, neither root's nor ours",
                meta.gid()
            ),
        ));
    }
    Ok(canonical)
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing {}: it {why}", path.display()),
    )
}

/// True for root's group and for the group we run as.
fn trusted_group(gid: u32) -> bool {
    gid == 0 || gid == nix::unistd::getegid().as_raw()
}

/// True for root and for the user we run as.
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == geteuid().as_raw()
}

/// Creates `path` (which must not exist; never through a symlink) with
/// `mode` whatever the umask, and writes `bytes` to it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)
}

/// Opens `path` without following a symlink in its last component, without
/// blocking on a FIFO, and only if it is a regular file owned by root or us.
/// `options` says how (read, append, create...).
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                refused(path, "is a symlink")
            } else {
                io::Error::new(e.kind(), format!("{}: {e}", path.display()))
            }
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    // A hard link planted in a shared directory would make us write to the
    // file it names (protected_hardlinks may be off).
    if meta.nlink() > 1 {
        return Err(refused(path, "has other hard links"));
    }
    if !trusted_owner(meta.uid()) {
        return Err(refused(
            path,
            &format!("is owned by uid {}, neither root nor us", meta.uid()),
        ));
    }
    // O_NONBLOCK was only for the open; whoever gets the file (a VM's stdout)
    // must see ordinary blocking writes.
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_private_dir_is_accepted_and_a_world_writable_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(checked_dir(dir.path()).is_ok());
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = checked_dir(dir.path()).expect_err("world-writable");
        assert!(err.to_string().contains("sticky"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(checked_dir(dir.path()).is_ok(), "sticky like /tmp is fine");
    }

    #[test]
    fn a_dir_writable_by_a_foreign_group_is_refused() {
        if !geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o775)).expect("chmod");
        nix::unistd::chown(dir.path(), None, Some(nix::unistd::Gid::from_raw(65534)))
            .expect("chown");
        let err = checked_dir(dir.path()).expect_err("group-writable");
        assert!(err.to_string().contains("writable by group 65534"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(
            checked_dir(dir.path()).is_ok(),
            "a group that cannot write is fine"
        );
    }

    #[test]
    fn a_file_with_another_hard_link_is_not_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("shadow");
        fs::write(&target, "x").expect("write");
        let link = dir.path().join("3001.log");
        fs::hard_link(&target, &link).expect("link");
        let err = open_regular(&link, OpenOptions::new().append(true)).expect_err("hard link");
        assert!(err.to_string().contains("hard links"), "{err}");
    }

    #[test]
    fn a_dir_owned_by_another_user_is_refused() {
        if !geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        nix::unistd::chown(dir.path(), Some(nix::unistd::Uid::from_raw(65534)), None)
            .expect("chown");
        let err = checked_dir(dir.path()).expect_err("owned by nobody");
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }

    #[test]
    fn symlinks_fifos_and_foreign_files_are_not_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        fs::write(&target, "x").expect("write");
        let link = dir.path().join("link");
        symlink(&target, &link).expect("symlink");
        let err = open_regular(&link, OpenOptions::new().append(true)).expect_err("symlink");
        assert!(err.to_string().contains("symlink"), "{err}");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        // Without O_NONBLOCK this open would hang for want of a reader.
        let err = open_regular(&fifo, OpenOptions::new().read(true)).expect_err("fifo");
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let file = open_regular(&target, OpenOptions::new().append(true)).expect("regular");
        let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL).expect("flags"));
        assert!(!flags.contains(OFlag::O_NONBLOCK));
        assert!(flags.contains(OFlag::O_APPEND));
    }
}

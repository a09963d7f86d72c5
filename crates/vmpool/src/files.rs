//! Files root writes or reads by path, outside a held directory: never
//! opened through a symlink, never a FIFO or device in disguise, never
//! created over an existing file. Files in the pid and log directories go
//! through [`SafeDir`] instead, which holds the directory open.
//!
//! A log file swapped for a symlink is a way to make root append to
//! `/etc/shadow`. So: files are opened with `O_NOFOLLOW` (and `O_NONBLOCK`,
//! so a planted FIFO cannot make the open hang), must be regular files with
//! no other hard link, and are trusted only when owned by root or by us.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::safedir::SafeDir;
pub use crate::safedir::trusted_owner;

/// Checks that `dir` is a directory fit for files root writes (the rule of
/// [`SafeDir`]) and returns its real path.
pub fn checked_dir(dir: &Path) -> io::Result<PathBuf> {
    Ok(SafeDir::open(dir)?.path().to_path_buf())
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing {}: it {why}", path.display()),
    )
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

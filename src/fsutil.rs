//! Small file-system helpers shared by the layers that persist state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Sets the modification time of the open file `fd` to `at`, leaving its access time.
pub fn set_mtime(fd: impl std::os::fd::AsFd, at: rustix::fs::Timespec) -> io::Result<()> {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: at,
    };
    rustix::fs::futimens(fd, &ts).map_err(Into::into)
}

/// The directory holding `path`: `.` for a bare file name (whose `parent()` is the empty path,
/// which no call can open: `kmsfs keystore export DIR backup.kmsks` wrote the backup and then
/// failed on the directory's fsync until 2026-12-06).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `data` to `path` atomically: temp file in the same directory, fsync, rename, fsync of
/// the directory. If `backup` is given and `path` exists, the old file becomes `backup` first
/// (through a hard link, so `path` exists at every instant: a failure at any step leaves `path`
/// complete, old or new, and `backup` complete, one generation older or as old as `path`).
pub fn atomic_write(path: &Path, data: &[u8], mode: u32, backup: Option<&Path>) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    // A unique name opened with O_EXCL | O_NOFOLLOW: a planted file or symlink is never written
    // through.
    let rand: [u8; 8] = crate::crypto::random_array();
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        crate::crypto::hex::encode(&rand)
    ));
    let cleanup = |e: io::Error| {
        let _ = fs::remove_file(&tmp);
        e
    };
    crate::fault::check("create")?;
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        let written = crate::fault::check("write")
            .map_err(io::Error::from)
            .and_then(|()| f.write_all(data))
            .and_then(|()| crate::fault::check("fsync").map_err(io::Error::from))
            .and_then(|()| f.sync_all());
        written.map_err(cleanup)?;
    }
    if let Some(b) = backup {
        keep_as_backup(path, b, dir).map_err(cleanup)?;
    }
    crate::fault::check("rename")
        .map_err(io::Error::from)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(cleanup)?;
    crate::fault::check("fsync")?;
    File::open(dir)?.sync_all()
}

/// Makes the current `path` (if any) the file `backup`, leaving `path` in place: a hard link under
/// a temporary name renamed over `backup`. On a file system without hard links, `path` is renamed
/// (then, until the new file is renamed in, only `backup` exists).
fn keep_as_backup(path: &Path, backup: &Path, dir: &Path) -> io::Result<()> {
    let rand: [u8; 8] = crate::crypto::random_array();
    let link = dir.join(format!(".backup.{}.tmp", crate::crypto::hex::encode(&rand)));
    match crate::fault::check("link")
        .map_err(io::Error::from)
        .and_then(|()| fs::hard_link(path, &link))
    {
        Ok(()) => {
            let r = crate::fault::check("rename")
                .map_err(io::Error::from)
                .and_then(|()| fs::rename(&link, backup));
            if r.is_err() {
                let _ = fs::remove_file(&link);
            }
            r
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)
            ) =>
        {
            match fs::rename(path, backup) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// The extended attribute of a cipher directory holding a copy of its id (`kmsfs.dirid`, which
/// stays authoritative; docs/FORMAT.md §6). Small enough to live in the directory's inode, so
/// reading a cold directory's id costs no disk read of its own.
pub const DIRID_XATTR: &str = "user.kmsfs-dirid";

/// The copy of the directory id of the directory at `path` (which may be `/proc/self/fd/N` of
/// an `O_PATH` descriptor), as stored: `None` when there is none or it cannot be read. Callers
/// use it only when it is 16 bytes long.
pub fn read_dirid_copy(path: &Path) -> Option<Vec<u8>> {
    let mut b = [0u8; 32];
    let n = rustix::fs::getxattr(path, DIRID_XATTR, &mut b).ok()?;
    Some(b[..n.min(b.len())].to_vec())
}

/// [`read_dirid_copy`] through a descriptor of the directory opened for reading.
pub fn read_dirid_copy_fd(dir: impl std::os::fd::AsFd) -> Option<Vec<u8>> {
    let mut b = [0u8; 32];
    let n = rustix::fs::fgetxattr(dir, DIRID_XATTR, &mut b).ok()?;
    Some(b[..n.min(b.len())].to_vec())
}

/// Stores the copy of a directory's id on the open directory `dir`. Callers treat failure as
/// harmless (a backing file system without user xattrs keeps only `kmsfs.dirid`).
pub fn write_dirid_copy(dir: impl std::os::fd::AsFd, id: &[u8; 16]) -> io::Result<()> {
    rustix::fs::fsetxattr(dir, DIRID_XATTR, id, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_keeps_backup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let b = d.path().join("f.bak");
        atomic_write(&p, b"one", 0o600, Some(&b)).unwrap();
        assert!(!b.exists());
        atomic_write(&p, b"two", 0o600, Some(&b)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read(&b).unwrap(), b"one");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }
}

/// A backing file system's own handle of a file (`name_to_handle_at(2)`): which inode, and which
/// of the inodes that ever had its number.
#[derive(Clone, PartialEq, Eq)]
pub struct BackingHandle {
    pub kind: i32,
    pub bytes: Box<[u8]>,
}

impl std::fmt::Debug for BackingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BackingHandle({:#x}, {} bytes)",
            self.kind,
            self.bytes.len()
        )
    }
}

/// `MAX_HANDLE_SZ` of the kernel.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The handle of the file `fd` refers to (an `O_PATH` descriptor will do).
pub fn handle_of(fd: impl std::os::fd::AsFd) -> io::Result<BackingHandle> {
    use std::os::fd::AsRawFd;
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a `struct file_handle` with `handle_bytes` bytes of room after its
    // header, the path is a valid empty C string, and both out-pointers live across the call.
    let r = unsafe {
        libc::name_to_handle_at(
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            (&raw mut raw).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(BackingHandle {
        kind: raw.handle_type,
        bytes: raw.f_handle[..n].into(),
    })
}

/// Opens the file handle `h` names on the file system `mount_fd` is on (`open_by_handle_at(2)`:
/// needs CAP_DAC_READ_SEARCH). ESTALE when the file is gone.
pub fn open_by_handle(
    mount_fd: impl std::os::fd::AsFd,
    h: &BackingHandle,
    flags: libc::c_int,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if h.bytes.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as libc::c_uint,
        handle_type: h.kind,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `raw` is a well-formed `struct file_handle` of `handle_bytes` bytes; the kernel
    // only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_fd().as_raw_fd(),
            (&raw mut raw).cast(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the call just opened, owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Undoes the octal escapes of /proc/mounts and mountinfo (`\040` for a space, `\011`, `\012`,
/// `\134`). Bytes: a mount point need not be UTF-8.
pub fn unescape_mount_field(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(d) = b.get(i + 1..i + 4)
            && d.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Held while a backing file's mode is changed: by [`with_owner_bits`] and [`lend_dirs`] for
/// the time owner bits are lent, and by every chmod of a backing file (so neither undoes the
/// other). Reentrant on one thread: an operation run with a directory's bits lent may lend a
/// file's in turn.
pub fn mode_lock() -> ModeLock {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if MODE_LOCK_DEPTH.with(|d| d.get()) > 0 {
        MODE_LOCK_DEPTH.with(|d| d.set(d.get() + 1));
        return ModeLock(None);
    }
    let g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    MODE_LOCK_DEPTH.with(|d| d.set(1));
    ModeLock(Some(g))
}

thread_local! {
    static MODE_LOCK_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// See [`mode_lock`].
pub struct ModeLock(#[allow(dead_code)] Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for ModeLock {
    fn drop(&mut self) {
        MODE_LOCK_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// [`with_owner_bits`] for an operation on entries of directories (create, remove, rename, look
/// up): when `op` fails with an EACCES that `is_eacces` recognizes, the owner's read, write
/// and search bits are lent to every one of `dirs` (`/proc/self/fd` paths, worked out only
/// then) the daemon owns and lacks them on, `op` runs once more, and the modes are put back.
/// For a daemon that is not root, where the kernel let the caller in through the group or other
/// bits, an ACL entry or root's override, while the directory's owner (the daemon) has no such
/// right itself (`chmod u=rx dir` with `setfacl -m u:bob:rwx dir` on an `--allow-other` mount).
pub fn lend_dirs<T, E>(
    dirs: impl FnOnce() -> Vec<String>,
    is_eacces: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let first = op();
    match &first {
        Err(e) if is_eacces(e) => {}
        _ => return first,
    }
    let dirs = dirs();
    let paths: Vec<&str> = dirs.iter().map(String::as_str).collect();
    retry_lent(&paths, libc::S_IRWXU, first, op)
}

/// The second try of [`with_owner_bits`] and [`lend_dirs`], after `first` failed with EACCES:
/// lends owner bits `need` to each of `paths` the daemon owns and lacks them on (a path named
/// twice, as one directory for both ends of a rename, has them the second time), runs `op`
/// again and puts the modes back; `first` when nothing could be lent.
fn retry_lent<P: rustix::path::Arg + Copy, T, E>(
    paths: &[P],
    need: u32,
    first: Result<T, E>,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let _g = mode_lock();
    let euid = rustix::process::geteuid();
    let mut lent = Vec::new();
    for &p in paths {
        let Ok(st) = rustix::fs::stat(p) else {
            continue;
        };
        let mode = st.st_mode & 0o7777;
        let sgid_kept = mode & libc::S_ISGID == 0 || euid.is_root() || in_group(st.st_gid);
        if mode & need == need || st.st_uid != euid.as_raw() || !sgid_kept {
            continue;
        }
        if rustix::fs::chmod(p, rustix::fs::Mode::from(mode | need)).is_ok() {
            lent.push((p, mode));
        }
    }
    if lent.is_empty() {
        return first;
    }
    let r = op();
    for (p, mode) in lent.into_iter().rev() {
        if let Err(e) = rustix::fs::chmod(p, rustix::fs::Mode::from(mode)) {
            tracing::error!("cannot put back mode {mode:o} after lending owner bits: {e}");
        }
    }
    r
}

/// [`with_owner_bits`] for an operation that gives an `io::Error` (fsck's file and directory
/// reads, by the owner of a `chmod 200` file or `chmod 300` directory).
pub fn with_owner_bits_io<T>(
    path: impl rustix::path::Arg + Copy,
    need: u32,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    match op() {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => retry_lent(&[path], need, Err(e), op),
        r => r,
    }
}

/// [`with_owner_bits`] for an open file `fd` (its `/proc/self/fd` path is made only when the
/// bits must be lent: the calls this guards are on write paths).
pub fn with_owner_bits_fd<T>(
    fd: impl std::os::fd::AsFd,
    need: u32,
    mut op: impl FnMut() -> rustix::io::Result<T>,
) -> rustix::io::Result<T> {
    match op() {
        first @ Err(rustix::io::Errno::ACCESS) => {
            let path = proc_fd_path(fd);
            retry_lent(&[path.as_str()], need, first, op)
        }
        r => r,
    }
}

/// Whether the daemon's effective or supplementary groups hold `gid` (chmod keeps a
/// set-group-id bit only then, for a process that is not root).
fn in_group(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups().is_ok_and(|g| g.iter().any(|x| x.as_raw() == gid))
}

/// `/proc/self/fd/N` of `fd`: a path that reaches the file itself (also for an `O_PATH`
/// descriptor) for the calls that take no descriptor.
fn proc_fd_path(fd: impl std::os::fd::AsFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

/// Runs `op` on the backing file or directory at `path` (a `/proc/self/fd` path); when it fails
/// with EACCES because the file's mode lacks owner bits `need` (`S_IRUSR`, `S_IWUSR`) and the
/// daemon owns the file, lends it those bits for the time of a second try and puts the mode back.
///
/// A daemon that is not root (a user's own mount, or one without CAP_DAC_OVERRIDE) is bound by
/// the backing files' modes, which are the files' own: the owner's `chmod 200` file must still
/// open for writing (kmsfs reads its header), `chmod 400` right after a write must not leave the
/// interrupted-write marker on it, an ACL must be settable on a read-only file as on ext4. The
/// kernel has already decided the caller may do what it asked (`default_permissions`, or root),
/// so this only lets kmsfs do its own part. The bits are the owner's, whom they already belong to
/// (a `chmod` away), and nothing else's; while lent, a `stat` may see them. Not for a file the
/// daemon does not own (its chmod would fail) or a set-group-id file of a group the daemon is not
/// in (chmod would clear the bit): those keep the EACCES.
pub fn with_owner_bits<T>(
    path: impl rustix::path::Arg + Copy,
    need: u32,
    mut op: impl FnMut() -> rustix::io::Result<T>,
) -> rustix::io::Result<T> {
    match op() {
        first @ Err(rustix::io::Errno::ACCESS) => retry_lent(&[path], need, first, op),
        r => r,
    }
}

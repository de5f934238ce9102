//! Inode flags (`lsattr`, `chattr`, `FS_IOC_GETFLAGS` / `FS_IOC_SETFLAGS`): those of the backing
//! file, which the backing file system enforces on the daemon's own access to it.
//!
//! Settable: immutable (`i`: the cipher file can then be neither written, renamed, linked nor
//! removed, so neither can the file, EPERM as on ext4; refused with EPERM while the file is open
//! for writing, where ext4 allows it, because what was written may still be in the kernel's
//! page cache (the writeback cache, a shared mapping) and would be refused once it comes;
//! EPERM rather than EBUSY because that is what programs expect of SETFLAGS, stress-ng among
//! them), no-dump (`d`), no-atime (`A`),
//! synchronous writes (`S`) and directory updates (`D`), and append-only (`a`). On a
//! directory that is the cipher directory's own flag: its entries can then be added but not
//! removed or renamed away, nor can its mode or times be set, EPERM as on ext4 (what kmsfs
//! itself cannot then remove there — the undo of a half-failed create, a side file a crash
//! left torn — is listed in README). On a regular file kmsfs keeps it itself (the cipher
//! file's `user.kmsfs-append`, looked for only once the volume has such a file:
//! `.kmsfs/append-only-files`), because kmsfs rewrites a file's last block and header in
//! place, which an append-only cipher file would refuse; it refuses with EPERM, as ext4 does,
//! an open for writing without O_APPEND or with O_TRUNC, a truncate, chmod, chown, given
//! times ("now" may be set), link, unlink, a rename of it or over it, xattr and ACL changes,
//! and fallocate other than allocating. Refused with EOPNOTSUPP, leaving the flags as they
//! were: compression (`c`, of ciphertext), and every flag that changes how the backing file system
//! lays out or names files (casefold, DAX, no-COW, project inheritance...). Flags that describe
//! how the backing file system stores the cipher file (extents `e`, inline data, an htree
//! index, fscrypt, verity, compression state) say nothing about the plaintext file: they are
//! not shown, and a SETFLAGS leaves them as they are whatever it asks (as ext4 does with the
//! flags it does not let users change): `chattr` keeps what `lsattr` showed, but a program that
//! sets bare values (stress-ng's `chattr`) would otherwise ask to clear `e`. The kernel checks
//! ownership, and CAP_LINUX_IMMUTABLE for `i` and `a`, before it asks. A backing file system
//! without inode flags (tmpfs before Linux 6.0, some network file systems) answers ENOTTY, as
//! does kmsfs for symlinks and special files.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::fs::{IFlags, OFlags};
use rustix::io::Errno;

use super::inode::Node;
use super::{Kind, Result, Vfs};

/// How long making a file immutable waits for the RELEASE of a writer that has closed it.
const RELEASE_WAIT: Duration = Duration::from_millis(200);

/// The flags a caller may change (on directories and regular files, the only nodes with
/// flags here).
pub fn settable() -> IFlags {
    IFlags::IMMUTABLE
        | IFlags::NODUMP
        | IFlags::NOATIME
        | IFlags::SYNC
        | IFlags::DIRSYNC
        | IFlags::APPEND
}

/// The flags kept on the backing node itself: all but a regular file's append-only flag,
/// which kmsfs keeps as [`APPEND_XATTR`].
fn on_backing(kind: Kind) -> IFlags {
    if kind == Kind::File {
        settable() - IFlags::APPEND
    } else {
        settable()
    }
}

/// A regular file's append-only flag, on its cipher file (empty value). Not the backing file's
/// own flag: kmsfs rewrites a file's last block and header in place, which an append-only
/// cipher file refuses.
const APPEND_XATTR: &str = "user.kmsfs-append";

/// How the backing file system stores the cipher file (see the module documentation):
/// compression state (0x100, 0x200, 0x400), encrypt, index, huge file, extents, verity,
/// EA inode, EOF blocks, inline data.
const LAYOUT: u32 = 0x0000_0100
    | 0x0000_0200
    | 0x0000_0400
    | 0x0000_0800
    | 0x0000_1000
    | 0x0004_0000
    | 0x0008_0000
    | 0x0010_0000
    | 0x0020_0000
    | 0x0040_0000
    | 0x1000_0000;

/// The flags reported: what `lsattr` shows of a local file system (ext4's user-visible set),
/// less the cipher file's layout.
const VISIBLE: u32 = 0x725B_DFFF & !LAYOUT;

/// xfs-style flags (`FS_IOC_FSGETXATTR`, `struct fsxattr.fsx_xflags`) and the inode flags they
/// stand for, for the ones kmsfs supports (`D`, DIRSYNC, has none: it is left as it is).
const XFLAGS: [(u32, IFlags); 4] = [
    (0x0000_0008, IFlags::IMMUTABLE),
    (0x0000_0020, IFlags::SYNC),
    (0x0000_0040, IFlags::NOATIME),
    (0x0000_0080, IFlags::NODUMP),
];
const XFLAG_APPEND: u32 = 0x0000_0010;

/// `struct fsxattr` as `FS_IOC_FSGETXATTR` fills it: flags, extent size hint, next extents,
/// project id, CoW extent size hint, then 8 bytes of padding.
pub const FSXATTR_LEN: usize = 28;

impl Vfs {
    /// A descriptor of the node's backing file that ioctls work on (its own is `O_PATH`).
    fn flags_fd(&self, node: &Node) -> Result<OwnedFd> {
        let fd = match node.kind {
            Kind::Dir => node.open_dir(OFlags::empty())?,
            Kind::File => self.open_backing(node, false)?.file.into(),
            _ => return Err(Errno::NOTTY.into()),
        };
        Ok(fd)
    }

    /// Whether no handle of `ino` is open for writing (`overwrites`: without O_APPEND). The
    /// kernel sends a close's RELEASE in the background, after `close(2)` has returned, so
    /// `echo x > f; chattr +i f` can ask before it comes: a writer's handle is waited for up
    /// to [`RELEASE_WAIT`].
    fn writers_gone(&self, ino: u64, overwrites: bool) -> bool {
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            if !self.has_writer(ino, overwrites) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether handle `fh` writes to an append-only file: the mount keeps such handles out of
    /// the kernel's page cache (direct I/O), so that every write comes here at once, at the
    /// offset the kernel resolved, and is checked against what is stored (see
    /// `Vfs::keep_stored`): through the cache, appended bytes not yet written back could be
    /// rewritten (a shared mapping, `fcntl` taking O_APPEND off) before anything could refuse
    /// it. A shared mapping of such a handle then fails (ENODEV), as ext4 refuses a writable
    /// one (EACCES).
    pub fn appends_only(&self, fh: u64) -> bool {
        if !self.append_files.load(Ordering::Relaxed) {
            return false;
        }
        let Some((ino, writes)) = self.handles.get(&fh).map(|h| (h.ino, h.writes)) else {
            return false;
        };
        writes && self.node(ino).is_ok_and(|n| self.append_only(&n))
    }

    /// The node's inode flags (`FS_IOC_GETFLAGS`).
    pub fn inode_flags(&self, ino: u64) -> Result<u32> {
        if super::is_control(ino) {
            return Err(Errno::NOTTY.into());
        }
        let node = self.node(ino)?;
        let fd = self.flags_fd(&node)?;
        let mut flags = rustix::fs::ioctl_getflags(&fd)?.bits() & VISIBLE;
        if self.append_only(&node) {
            flags |= IFlags::APPEND.bits();
        }
        Ok(flags)
    }

    /// Whether regular file `node` is append-only (see [`APPEND_XATTR`]). Asked only once a
    /// file of the volume has been made so (`Vfs::append_files`).
    pub(super) fn append_only(&self, node: &Node) -> bool {
        self.append_files.load(Ordering::Relaxed)
            && node.kind == Kind::File
            && append_attr(OsStr::new(node.proc_path().as_str()))
    }

    /// Whether entry `entry` of directory `dir` is an append-only regular file.
    pub(super) fn append_only_entry(&self, dir: &Node, entry: &OsStr) -> bool {
        if !self.append_files.load(Ordering::Relaxed) {
            return false;
        }
        let mut path = std::ffi::OsString::from(dir.proc_path().as_str());
        path.push("/");
        path.push(entry);
        append_attr(path.as_os_str())
    }

    /// EPERM if regular file `node` is append-only: what ext4 refuses on such a file (an open
    /// for writing without O_APPEND or truncating, a truncate, chmod, chown, setting times,
    /// link, xattr changes, fallocate but for allocating).
    pub(super) fn refuse_append_only(&self, node: &Node) -> Result<()> {
        if self.append_only(node) {
            return Err(Errno::PERM.into());
        }
        Ok(())
    }

    /// [`Vfs::refuse_append_only`] of inode `ino`.
    pub(super) fn refuse_append_only_ino(&self, ino: u64) -> Result<()> {
        if self.append_files.load(Ordering::Relaxed) {
            self.refuse_append_only(&*self.node(ino)?)?;
        }
        Ok(())
    }

    /// EPERM if entry `entry` of `dir` is an append-only file (its removal, or a rename of it
    /// or over it, is refused).
    pub(super) fn refuse_append_only_entry(&self, dir: &Node, entry: &OsStr) -> Result<()> {
        if self.append_only_entry(dir, entry) {
            return Err(Errno::PERM.into());
        }
        Ok(())
    }

    /// Sets or clears a regular file's append-only flag (the volume marked first, so that a
    /// mount after a crash still looks for it). Refused while a handle could still write
    /// anywhere (see below).
    fn set_append_attr(&self, node: &Node, on: bool) -> Result<()> {
        let path = node.proc_path();
        if on {
            // Not while a handle could still write anywhere (opened for writing without
            // O_APPEND, a shared mapping among them): what it wrote may still be in the
            // kernel's page cache, to come once the flag refuses it; and its writes from there
            // could not be told from another's. EPERM, as for making a file immutable.
            if !self.writers_gone(node.ino, true) {
                return Err(Errno::PERM.into());
            }
            let first = !self.append_files.load(Ordering::Relaxed);
            let paths = crate::keymgr::VolumePaths::new(&self.root);
            if first {
                paths.record_append_only()?;
                self.append_files.store(true, Ordering::Relaxed);
            }
            // The cipher file's owner may lack the write bit (a daemon that is not root).
            let set = crate::fsutil::with_owner_bits(path.as_str(), libc::S_IWUSR, || {
                rustix::fs::setxattr(
                    path.as_str(),
                    APPEND_XATTR,
                    b"",
                    rustix::fs::XattrFlags::empty(),
                )
            });
            if let Err(e) = set {
                // No file has the flag (a backing file system without user xattrs, say): the
                // volume is not marked either, so that nothing is looked for in vain.
                if first {
                    self.append_files.store(false, Ordering::Relaxed);
                    let _ = std::fs::remove_file(paths.append_marker());
                }
                return Err(e.into());
            }
        } else {
            match crate::fsutil::with_owner_bits(path.as_str(), libc::S_IWUSR, || {
                rustix::fs::removexattr(path.as_str(), APPEND_XATTR)
            }) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sets the node's inode flags (`FS_IOC_SETFLAGS`): only [`settable`] ones may change.
    pub fn set_inode_flags(&self, ino: u64, flags: u32) -> Result<()> {
        if super::is_control(ino) {
            return Err(Errno::NOTTY.into());
        }
        let node = self.node(ino)?;
        let fd = self.flags_fd(&node)?;
        let old = rustix::fs::ioctl_getflags(&fd)?;
        let was_append = self.append_only(&node);
        let mut visible = IFlags::from_bits_retain(old.bits() & VISIBLE);
        if was_append {
            visible |= IFlags::APPEND;
        }
        let asked = IFlags::from_bits_retain(flags & VISIBLE);
        let changed = visible ^ asked;
        if changed.is_empty() {
            return Ok(());
        }
        let settable = settable();
        if !settable.contains(changed) {
            return Err(Errno::OPNOTSUPP.into());
        }
        self.check_writable()?;
        crate::fault::check("setflags")?;
        let backing = on_backing(node.kind);
        let new = (old - backing) | (asked & backing);
        // A regular file's append-only flag is kmsfs's own: set before the cipher file is made
        // immutable (which would refuse it), cleared after it is made mutable; an immutable
        // file keeps it as it is (EPERM, as on ext4).
        let append = (node.kind == Kind::File && changed.contains(IFlags::APPEND))
            .then(|| asked.contains(IFlags::APPEND));
        if let Some(on) = append {
            if old.contains(IFlags::IMMUTABLE) && new.contains(IFlags::IMMUTABLE) {
                return Err(Errno::PERM.into());
            }
            if new.contains(IFlags::IMMUTABLE) {
                self.set_append_attr(&node, on)?;
                // Put back if the cipher file's flags cannot be set after all.
                let r = self.set_backing_flags(&node, &fd, old, new);
                if r.is_err() {
                    let _ = self.set_append_attr(&node, !on);
                }
                return r;
            }
        }
        if new != old {
            self.set_backing_flags(&node, &fd, old, new)?;
        }
        if let Some(on) = append {
            self.set_append_attr(&node, on)?;
        }
        Ok(())
    }

    /// [`Vfs::set_inode_flags`] on the cipher file: `new` where it has `old`.
    fn set_backing_flags(&self, node: &Node, fd: &OwnedFd, old: IFlags, new: IFlags) -> Result<()> {
        let ino = node.ino;
        let set = || rustix::fs::ioctl_setflags(fd, new);
        let making_immutable = new.contains(IFlags::IMMUTABLE) && !old.contains(IFlags::IMMUTABLE);
        if making_immutable && !self.writers_gone(ino, false) {
            // What was written may still be in the kernel's page cache, to come as writes the
            // immutable cipher file would refuse: it would be lost.
            return Err(Errno::PERM.into());
        }
        let open = (node.kind == Kind::File && making_immutable)
            .then(|| self.open_files.get(&ino).map(|e| e.0.clone()))
            .flatten();
        match open {
            // Made immutable while open (by the kernel's own open for the ioctl at least): with
            // the file's writes held off and its interrupted-write marker (left by a writer that
            // closed while others kept the file open) removed first; and its read-write
            // descriptor, kept while it stays open, given up.
            Some(f) => {
                let read_only = self.reopen_backing(node, &f, false)?;
                f.quiesced(read_only, set)??
            }
            // Closed with its marker waiting for its data (see `marker_queue`): an immutable
            // file could never lose it.
            None => {
                if making_immutable {
                    self.markers.settle_one(ino);
                }
                set()?
            }
        }
        Ok(())
    }

    /// `FS_IOC_FSGETXATTR`: the flags kmsfs supports, as xfs-style flags; no extent size hints
    /// or project id (the backing file's say nothing about the plaintext file).
    pub fn fsxattr(&self, ino: u64) -> Result<[u8; FSXATTR_LEN]> {
        let flags = IFlags::from_bits_retain(self.inode_flags(ino)?);
        let mut x = 0u32;
        for (xf, f) in XFLAGS {
            if flags.contains(f) {
                x |= xf;
            }
        }
        if flags.contains(IFlags::APPEND) {
            x |= XFLAG_APPEND;
        }
        let mut out = [0u8; FSXATTR_LEN];
        out[..4].copy_from_slice(&x.to_ne_bytes());
        Ok(out)
    }

    /// `FS_IOC_FSSETXATTR`: the xfs-style flags kmsfs supports; extent size hints and project
    /// ids cannot be set (EOPNOTSUPP unless zero).
    pub fn set_fsxattr(&self, ino: u64, x: &[u8]) -> Result<()> {
        if x.len() < 16 {
            return Err(Errno::INVAL.into());
        }
        let word = |i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
        let (xflags, extsize, projid) = (word(0), word(4), word(12));
        if extsize != 0 || projid != 0 {
            return Err(Errno::OPNOTSUPP.into());
        }
        let mut known = XFLAG_APPEND;
        let mut flags = IFlags::from_bits_retain(self.inode_flags(ino)?);
        for (xf, f) in XFLAGS {
            known |= xf;
            flags.set(f, xflags & xf != 0);
        }
        flags.set(IFlags::APPEND, xflags & XFLAG_APPEND != 0);
        if xflags & !known != 0 {
            return Err(Errno::OPNOTSUPP.into());
        }
        self.set_inode_flags(ino, flags.bits())
    }
}

/// Whether the cipher file at `path` (a `/proc/self/fd` path, maybe with an entry name after
/// it) carries [`APPEND_XATTR`]: an entry that is a symlink is not followed. A read refused
/// for the file's mode (a daemon that is not root, a file without the owner's read bit) is
/// tried again with it lent.
fn append_attr(path: &OsStr) -> bool {
    // A bare `/proc/self/fd/N` is itself a link, to the file: followed.
    let bare = !path.as_bytes()[b"/proc/self/fd/".len().min(path.len())..].contains(&b'/');
    let get = || {
        if bare {
            rustix::fs::getxattr(path, APPEND_XATTR, &mut [0u8; 0][..])
        } else {
            rustix::fs::lgetxattr(path, APPEND_XATTR, &mut [0u8; 0][..])
        }
    };
    match get() {
        Ok(_) => true,
        Err(Errno::ACCESS) => crate::fsutil::with_owner_bits(path, libc::S_IRUSR, get).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::vfs::SetAttr;
    use std::ffi::OsStr;

    /// The flags of `ino`; `None` where the backing file system has no inode flags.
    fn flags_of(v: &Vfs, ino: u64) -> Option<u32> {
        match v.inode_flags(ino) {
            Ok(fl) => Some(fl),
            Err(e) if e.errno() == libc::ENOTTY => None,
            Err(e) => panic!("getflags: {e}"),
        }
    }

    /// Sets `flags` and the immutable flag on `ino`; false where this process may not
    /// (CAP_LINUX_IMMUTABLE).
    fn made_immutable(v: &Vfs, ino: u64, flags: u32) -> bool {
        match v.set_inode_flags(ino, flags | IFlags::IMMUTABLE.bits()) {
            Ok(()) => true,
            Err(e) if e.errno() == libc::EPERM => false,
            Err(e) => panic!("immutable: {e}"),
        }
    }

    #[test]
    fn immutable_is_enforced_compression_refused_and_both_undone() {
        let (_t, dir) = new_volume();
        let v = open(&dir);
        let f = write_file(&v, "f", b"data");
        let Some(start) = flags_of(&v, f) else {
            return; // backing without inode flags
        };
        assert_eq!(start & IFlags::IMMUTABLE.bits(), 0);
        assert_eq!(start & LAYOUT, 0, "the cipher file's layout is not shown");
        // A bare value (no `e`) leaves the cipher file's layout as it was.
        let backing = |v: &Vfs| {
            let node = v.node(f).expect("node");
            rustix::fs::ioctl_getflags(v.flags_fd(&node).expect("fd")).expect("flags")
        };
        let layout = backing(&v).bits() & LAYOUT;
        // A change (no-dump) asked with the layout left out, then one asking for extents.
        v.set_inode_flags(f, start | IFlags::NODUMP.bits())
            .expect("bare value");
        assert_eq!(backing(&v).bits() & LAYOUT, layout, "layout kept");
        assert_ne!(
            backing(&v).bits() & IFlags::NODUMP.bits(),
            0,
            "the change made"
        );
        v.set_inode_flags(f, start | 0x0008_0000)
            .expect("asking for a layout flag");
        assert_eq!(backing(&v).bits() & LAYOUT, layout, "layout kept");
        assert_eq!(
            backing(&v).bits() & IFlags::NODUMP.bits(),
            0,
            "and the change undone"
        );
        if layout == 0 {
            eprintln!("backing file system without layout flags: only the changes were checked");
        }
        // Compression (of ciphertext): refused, nothing changed.
        let e = v
            .set_inode_flags(f, start | IFlags::COMPRESSED.bits())
            .expect_err("compression");
        assert_eq!(e.errno(), libc::EOPNOTSUPP);
        assert_eq!(v.inode_flags(f).expect("flags"), start);
        let no_dump = start | IFlags::NODUMP.bits();
        v.set_inode_flags(f, no_dump).expect("nodump");
        assert_eq!(v.inode_flags(f).expect("flags"), no_dump);
        if !made_immutable(&v, f, no_dump) {
            return; // not root (CAP_LINUX_IMMUTABLE): the rest was checked
        }
        let refused = [
            v.open(f, libc::O_WRONLY).map(|_| ()),
            v.unlink(1, OsStr::new("f")),
        ];
        // Made mutable again before any assertion, so that the temporary directory goes.
        v.set_inode_flags(f, start).expect("clear");
        for r in refused {
            assert_eq!(r.expect_err("immutable").errno(), libc::EPERM);
        }
        assert_eq!(v.inode_flags(f).expect("flags"), start);
        let x = v.fsxattr(f).expect("fsxattr");
        assert_eq!(&x[..4], &[0; 4], "no flag set");
        v.open(f, libc::O_WRONLY).expect("writable again");
    }

    /// An immutable directory is not removed, empty or not, nor one in an immutable directory:
    /// EPERM, as ext4 says (a non-empty one said ENOTEMPTY, the contents looked at first:
    /// xfstests-style probe).
    #[test]
    fn an_immutable_directory_refuses_rmdir_with_eperm_whatever_it_holds() {
        let (_t, dir) = new_volume();
        let v = open(&dir);
        let c = caller();
        let full = v
            .mkdir(1, OsStr::new("full"), 0o755, &c)
            .expect("mkdir")
            .ino;
        let empty = v
            .mkdir(1, OsStr::new("empty"), 0o755, &c)
            .expect("mkdir")
            .ino;
        // A non-empty directory in an immutable one (its parent refuses the removal first).
        let outer = v
            .mkdir(1, OsStr::new("outer"), 0o755, &c)
            .expect("mkdir")
            .ino;
        let inner = v
            .mkdir(outer, OsStr::new("inner"), 0o755, &c)
            .expect("mkdir")
            .ino;
        for d in [full, inner] {
            let (_, fh) = v
                .create(d, OsStr::new("f"), 0o644, libc::O_RDWR, &c)
                .expect("create");
            v.release(fh).expect("release");
        }
        let Some(start) = flags_of(&v, full) else {
            return; // backing without inode flags
        };
        if !made_immutable(&v, full, start)
            || !made_immutable(&v, empty, start)
            || !made_immutable(&v, outer, start)
        {
            return; // not root (CAP_LINUX_IMMUTABLE)
        }
        let refused = [
            v.rmdir(1, OsStr::new("full")),
            v.rmdir(1, OsStr::new("empty")),
            v.rmdir(outer, OsStr::new("inner")),
        ];
        for d in [full, empty, outer] {
            v.set_inode_flags(d, start).expect("clear");
        }
        for r in refused {
            assert_eq!(r.expect_err("immutable").errno(), libc::EPERM);
        }
        assert_eq!(
            v.rmdir(1, OsStr::new("full"))
                .expect_err("not empty")
                .errno(),
            libc::ENOTEMPTY
        );
        v.rmdir(1, OsStr::new("empty")).expect("mutable again");
        v.lookup(inner, OsStr::new("f")).expect("left whole");
    }

    /// An append-only directory takes new entries (files, directories, links, symlinks, long
    /// names) but gives none up (unlink, rename away or over, rmdir) and keeps its mode: EPERM,
    /// as on ext4. On files the flag stays refused.
    #[test]
    fn an_append_only_directory_adds_entries_and_removes_none() {
        let (_t, dir) = new_volume();
        let v = open(&dir);
        let c = caller();
        let d = v.mkdir(1, OsStr::new("d"), 0o755, &c).expect("mkdir").ino;
        let old = write_file_in(&v, d, "old", b"old");
        let Some(start) = flags_of(&v, d) else {
            return; // backing without inode flags
        };
        let append = start | IFlags::APPEND.bits();
        match v.set_inode_flags(d, append) {
            Ok(()) => {}
            Err(e) if e.errno() == libc::EPERM => return, // not root (CAP_LINUX_IMMUTABLE)
            Err(e) => panic!("append-only: {e}"),
        }
        assert_eq!(flags_of(&v, d), Some(append));
        let long = "l".repeat(200);
        let long2 = "m".repeat(200);
        let f = write_file_in(&v, d, &long, b"long");
        write_file(&v, "outside", b"outside");
        v.mkdir(d, OsStr::new("sub"), 0o755, &c)
            .expect("mkdir in it");
        v.symlink(d, OsStr::new("sl"), OsStr::new("old"), &c)
            .expect("symlink in it");
        v.link(old, d, OsStr::new("hl")).expect("link in it");
        let refused = [
            v.unlink(d, OsStr::new("old")),
            v.unlink(d, OsStr::new(&long)),
            v.rename(d, OsStr::new("old"), d, OsStr::new("new"), 0),
            v.rename(d, OsStr::new("old"), 1, OsStr::new("away"), 0),
            v.rename(d, OsStr::new("sl"), d, OsStr::new("old"), 0),
            v.rmdir(d, OsStr::new("sub")),
            // To a long name: refused before its side file is made (it could not be removed).
            v.rename(d, OsStr::new("old"), d, OsStr::new(&long2), 0),
            v.rename(d, OsStr::new("sub"), d, OsStr::new(&long2), 0),
        ];
        // An exchange with a long name not there, from a directory that is not append-only.
        let exchange = v.rename(
            1,
            OsStr::new("outside"),
            d,
            OsStr::new(&long2),
            libc::RENAME_EXCHANGE,
        );
        let chmod = v.setattr(
            d,
            None,
            &SetAttr {
                mode: Some(0o700),
                ..Default::default()
            },
            None,
        );
        let rmdir_it = v.rmdir(1, OsStr::new("d"));
        v.set_inode_flags(d, start).expect("cleared");
        for (i, r) in refused.into_iter().enumerate() {
            assert_eq!(r.map_err(|e| e.errno()), Err(libc::EPERM), "{i}");
        }
        assert_eq!(chmod.expect_err("mode").errno(), libc::EPERM);
        assert_eq!(rmdir_it.expect_err("not empty").errno(), libc::EPERM);
        assert_eq!(exchange.map_err(|e| e.errno()), Err(libc::ENOENT));
        // One side file in the backing directory: `long`'s, none for `long2`.
        let sides = std::fs::read_dir(cipher_path(&v, d))
            .expect("backing directory")
            .filter(|e| {
                let e = e.as_ref().expect("entry");
                e.file_name()
                    .to_string_lossy()
                    .ends_with(crate::names::LONG_NAME_SUFFIX)
            })
            .count();
        assert_eq!(sides, 1, "orphan side files left");
        assert_eq!(read_at(&v, f, 0, 100), b"long");
        for name in ["old", "hl", "sl", long.as_str()] {
            v.unlink(d, OsStr::new(name)).expect("removable again");
        }
        v.rmdir(d, OsStr::new("sub")).expect("removable again");
        v.rmdir(1, OsStr::new("d")).expect("removable again");
    }

    /// An append-only file (kept by kmsfs, not on the cipher file) is appended to through
    /// O_APPEND and refuses everything else that changes it, EPERM as on ext4 (xfstests
    /// generic/079's list); "now" may be set as its times, and the kernel's write-back of the
    /// modification time (writeback cache, with the writing handle) goes through. A new
    /// session over the volume keeps the flag; cleared, everything works again.
    #[test]
    fn an_append_only_file_is_appended_to_and_nothing_else() {
        use super::super::attr_ops::SetTime;
        let (_t, dir) = new_volume();
        let v = open(&dir);
        let c = caller();
        let f = write_file(&v, "log", b"one\n");
        v.setxattr(f, OsStr::new("user.a"), b"1", 0).expect("xattr");
        let Some(start) = flags_of(&v, f) else {
            return; // backing without inode flags
        };
        match v.set_inode_flags(f, start | IFlags::APPEND.bits()) {
            Ok(()) => {}
            Err(e) if e.errno() == libc::EOPNOTSUPP => return, // backing without user xattrs
            Err(e) => panic!("append-only: {e}"),
        }
        assert_eq!(flags_of(&v, f), Some(start | IFlags::APPEND.bits()));
        assert_eq!(
            v.fsxattr(f).expect("fsxattr")[0] & 0x10,
            0x10,
            "FS_XFLAG_APPEND"
        );
        assert!(
            !rustix::fs::ioctl_getflags(v.flags_fd(&v.node(f).unwrap()).unwrap())
                .unwrap()
                .contains(IFlags::APPEND),
            "not on the cipher file"
        );
        // Appending works.
        let fh = v
            .open(f, libc::O_WRONLY | libc::O_APPEND)
            .expect("open for appending");
        v.write(fh, 4, b"two\n").expect("append");
        let set = |s: SetAttr, fh| v.setattr(f, fh, &s, Some(&c));
        let at = Some(SetTime::At(
            std::time::UNIX_EPOCH + Duration::from_secs(1_000_000),
        ));
        let kernel_flush = set(
            SetAttr {
                mtime: at,
                kernel_times: true,
                ..Default::default()
            },
            Some(fh),
        );
        let punch = v.fallocate(fh, 0, 4, 0x03);
        let allocate = v.fallocate(fh, 0, 16, 0x01);
        v.release(fh).expect("release");
        kernel_flush.expect("the kernel's modification time");
        assert_eq!(punch.expect_err("punch").errno(), libc::EPERM);
        allocate.expect("allocating");
        assert_eq!(read_at(&v, f, 0, 100), b"one\ntwo\n");
        set(
            SetAttr {
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::Now),
                ..Default::default()
            },
            None,
        )
        .expect("times set to now");
        let refused: Vec<(&str, Result<()>)> = vec![
            ("O_WRONLY", v.open(f, libc::O_WRONLY).map(drop)),
            ("O_RDWR", v.open(f, libc::O_RDWR).map(drop)),
            (
                "O_APPEND|O_TRUNC",
                v.open(f, libc::O_WRONLY | libc::O_APPEND | libc::O_TRUNC)
                    .map(drop),
            ),
            (
                "create over it",
                v.create(1, OsStr::new("log"), 0o644, libc::O_WRONLY, &c)
                    .map(drop),
            ),
            (
                "truncate",
                set(
                    SetAttr {
                        size: Some(0),
                        ..Default::default()
                    },
                    None,
                )
                .map(drop),
            ),
            (
                "chmod",
                set(
                    SetAttr {
                        mode: Some(0o600),
                        ..Default::default()
                    },
                    None,
                )
                .map(drop),
            ),
            (
                "chown",
                set(
                    SetAttr {
                        uid: Some(0),
                        ..Default::default()
                    },
                    None,
                )
                .map(drop),
            ),
            (
                "given times",
                set(
                    SetAttr {
                        atime: at,
                        mtime: at,
                        ..Default::default()
                    },
                    None,
                )
                .map(drop),
            ),
            (
                "given mtime without a handle",
                set(
                    SetAttr {
                        mtime: at,
                        kernel_times: true,
                        ..Default::default()
                    },
                    None,
                )
                .map(drop),
            ),
            ("unlink", v.unlink(1, OsStr::new("log"))),
            (
                "rename",
                v.rename(1, OsStr::new("log"), 1, OsStr::new("moved"), 0),
            ),
            ("link", v.link(f, 1, OsStr::new("hard")).map(drop)),
            ("setxattr", v.setxattr(f, OsStr::new("user.b"), b"2", 0)),
            ("removexattr", v.removexattr(f, OsStr::new("user.a"))),
        ];
        // Renamed over, exchanged with.
        let other = write_file(&v, "other", b"x");
        let over = v.rename(1, OsStr::new("other"), 1, OsStr::new("log"), 0);
        let exchange = v.rename(
            1,
            OsStr::new("other"),
            1,
            OsStr::new("log"),
            libc::RENAME_EXCHANGE,
        );
        for (what, r) in refused
            .into_iter()
            .chain([("over", over), ("exchange", exchange)])
        {
            assert_eq!(r.map_err(|e| e.errno()), Err(libc::EPERM), "{what}");
        }
        assert_eq!(read_at(&v, f, 0, 100), b"one\ntwo\n");
        assert_eq!(read_at(&v, other, 0, 10), b"x");
        // Kept by a new session over the volume.
        drop(v);
        let v = open(&dir);
        let f = v.lookup(1, OsStr::new("log")).expect("lookup").ino;
        assert_eq!(flags_of(&v, f), Some(start | IFlags::APPEND.bits()));
        assert_eq!(
            v.unlink(1, OsStr::new("log")).map_err(|e| e.errno()),
            Err(libc::EPERM)
        );
        // Cleared: an ordinary file again.
        v.set_inode_flags(f, start).expect("cleared");
        assert_eq!(flags_of(&v, f), Some(start));
        // Append-only and immutable at once, refused (open for writing: see
        // `set_backing_flags`): neither is left set.
        let w = v.open(f, libc::O_WRONLY).expect("writer");
        let both = v.set_inode_flags(f, start | (IFlags::APPEND | IFlags::IMMUTABLE).bits());
        v.release(w).expect("release");
        match both {
            Err(e) if e.errno() == libc::EPERM => {}
            r => panic!("+a +i with a writer: {r:?}"),
        }
        assert_eq!(flags_of(&v, f), Some(start), "nothing left set");
        let fh = v
            .open(f, libc::O_RDWR | libc::O_TRUNC)
            .expect("truncating open");
        v.release(fh).expect("release");
        v.link(f, 1, OsStr::new("hard")).expect("link");
        v.unlink(1, OsStr::new("hard")).expect("unlink");
        v.unlink(1, OsStr::new("log")).expect("unlink");
    }

    /// On a mount the kernel resolves O_APPEND and does not know kmsfs's flag: a write that
    /// would change what an append-only file holds is refused, but what it brings past the end
    /// is stored. The flag cannot be set while a handle could write anywhere (what it wrote
    /// may still be in the kernel's cache); writers of the file bypass the cache
    /// (`appends_only`).
    #[test]
    fn writes_to_an_append_only_file_keep_its_bytes_and_store_the_rest() {
        use super::super::file_ops::WriteFrom;
        let (_t, dir) = new_volume();
        let v = open_with(
            &dir,
            crate::vfs::VfsOptions {
                kernel_appends: true,
                ..Default::default()
            },
        );
        let f = write_file(&v, "log", b"0123456789");
        let Some(start) = flags_of(&v, f) else {
            return; // backing without inode flags
        };
        let earlier = v.open(f, libc::O_RDWR).expect("writer from before");
        let appender = v
            .open(f, libc::O_WRONLY | libc::O_APPEND)
            .expect("appender");
        let busy = v.set_inode_flags(f, start | IFlags::APPEND.bits());
        v.write(earlier, 0, b"E").expect("write");
        v.release(earlier).expect("release");
        match busy {
            Err(e) if e.errno() == libc::EPERM => {}
            r => panic!("+a with a handle writing anywhere: {r:?}"),
        }
        assert_eq!(flags_of(&v, f), Some(start));
        assert!(!v.appends_only(appender), "not append-only");
        match v.set_inode_flags(f, start | IFlags::APPEND.bits()) {
            Ok(()) => {}
            Err(e) if e.errno() == libc::EOPNOTSUPP => return, // backing without user xattrs
            Err(e) => panic!("append-only: {e}"),
        }
        assert!(
            v.appends_only(appender),
            "an appender of an append-only file"
        );
        v.release(appender).expect("release");
        let page = WriteFrom::PageCache { kernel_times: true };
        let h = v
            .open(f, libc::O_WRONLY | libc::O_APPEND)
            .expect("open for appending");
        let reader = v.open(f, libc::O_RDONLY).expect("reader");
        assert!(v.appends_only(h) && !v.appends_only(reader));
        v.release(reader).expect("release");
        let refused = v.write_from(h, 0, b"XX23456789ab", page);
        let appended = v.write_from(h, 12, b"cd", page);
        let same = v.write_from(h, 2, b"23456789abcdef", page);
        v.release(h).expect("release");
        assert_eq!(refused.map_err(|e| e.errno()), Err(libc::EPERM));
        appended.expect("append");
        same.expect("unchanged bytes and an append");
        assert_eq!(read_at(&v, f, 0, 100), b"E123456789abcdef");
        v.set_inode_flags(f, start).expect("cleared");
    }

    /// A file kept open by a reader holds on to the read-write descriptor of a writer that has
    /// since closed it; made immutable, a later open for writing must not share that descriptor
    /// (before 2026-12-05: it did, so the open succeeded, depending on when the kernel sent the
    /// writer's RELEASE).
    #[test]
    fn a_writer_after_immutable_is_refused_while_a_reader_keeps_the_file_open() {
        let (_t, dir) = new_volume();
        let v = open(&dir);
        let f = write_file(&v, "f", b"data");
        let Some(start) = flags_of(&v, f) else {
            return; // backing without inode flags
        };
        let reader = v.open(f, libc::O_RDONLY).expect("reader");
        let writer = v.open(f, libc::O_WRONLY).expect("writer");
        v.write(writer, 4, b"!").expect("write");
        v.release(writer).expect("release");
        if !made_immutable(&v, f, start) {
            return; // not root (CAP_LINUX_IMMUTABLE)
        }
        let refused = v.open(f, libc::O_WRONLY);
        let read = v.read(reader, 0, 16);
        v.set_inode_flags(f, start).expect("clear");
        assert_eq!(
            refused.expect_err("writer of an immutable file").errno(),
            libc::EPERM
        );
        assert_eq!(read.expect("read"), b"data!");
        // Mutable again: the file takes writers while the reader still has it open.
        let writer = v.open(f, libc::O_WRONLY).expect("writable again");
        v.write(writer, 5, b"?").expect("write again");
        v.release(writer).expect("release");
        v.release(reader).expect("release reader");
    }
}

//! getattr and setattr (chmod, chown, truncate, utimens).

use std::time::SystemTime;

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};
use rustix::io::Errno;

use super::{Attr, Caller, Kind, Result, Vfs};

/// A time to set: a given instant or "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    At(SystemTime),
    Now,
}

/// What setattr changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// Clear set-user-id, and set-group-id as [`Vfs::kill_suidgid`] decides, of a regular file:
    /// a truncate by a process without CAP_FSETID (the kernel leaves this to the file system
    /// when it handles privilege killing itself). A chown needs no flag: the backing chown
    /// clears them as it does on every Linux file system.
    pub kill_suidgid: bool,
    /// The kernel keeps the file's times itself (the writeback cache: every SETATTR of a
    /// regular file then carries the kernel's ctime). It sends its modification time after
    /// every link, rename and unlink, and when it writes back a time it changed; a
    /// modification time alone (no access time) equal to the stored one is then not written
    /// again. That also takes a process's `touch -m -d T` of a file whose time is exactly `T`
    /// already: the cipher file's ctime then stays, while the kernel shows its own new one for
    /// as long as it holds the inode (ctime is the kernel's under the writeback cache anyway,
    /// see README).
    pub kernel_times: bool,
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos().into(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(i64::from(d.subsec_nanos())));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                Timespec {
                    tv_sec: s,
                    tv_nsec: n as _,
                }
            }
        },
    }
}

/// The modification time the kernel sends alone as it holds it (see
/// [`SetAttr::kernel_times`]: after a link or unlink, git's two per object), if `set` is that.
fn kernel_mtime(set: &SetAttr) -> Option<SystemTime> {
    let alone = set.kernel_times
        && set.atime.is_none()
        && set.mode.is_none()
        && set.uid.is_none()
        && set.gid.is_none()
        && set.size.is_none();
    match set.mtime {
        Some(SetTime::At(t)) if alone => Some(t),
        _ => None,
    }
}

impl Vfs {
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        self.touch();
        if super::is_control(ino) {
            return self.ctl_getattr(ino);
        }
        let node = self.node(ino)?;
        self.stat_node(&node)
    }

    /// Changes attributes. `caller` (the requesting process) makes a truncate by path subject
    /// to the key policy; in-process callers pass `None`.
    pub fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        set: &SetAttr,
        caller: Option<&Caller>,
    ) -> Result<Attr> {
        self.touch();
        if super::is_control(ino) {
            return self.ctl_setattr(ino, set);
        }
        let node = self.node(ino)?;
        // An append-only file takes no truncate, chmod, chown or given time (EPERM, as on
        // ext4); "now" may be set, and the kernel's write-back of the modification time it
        // keeps under the writeback cache, which comes with the writing handle, goes through.
        // Under the writeback cache the kernel sends "now" as its own clock's time: a time
        // within seconds of now counts as now (setting it is no different).
        let given = |t: Option<SetTime>| match t {
            Some(SetTime::At(t)) => {
                let now = SystemTime::now();
                let off = now.duration_since(t).or_else(|_| t.duration_since(now));
                off.is_ok_and(|d| d > std::time::Duration::from_secs(5))
            }
            _ => false,
        };
        let kernel_flush = set.kernel_times && set.atime.is_none() && fh.is_some();
        if node.kind == Kind::File
            && (set.size.is_some()
                || set.mode.is_some()
                || set.uid.is_some()
                || set.gid.is_some()
                || given(set.atime)
                || (given(set.mtime) && !kernel_flush))
        {
            self.refuse_append_only(&node)?;
        }
        let changes = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.size.is_some()
            || set.atime.is_some()
            || set.mtime.is_some();
        if changes {
            self.check_writable()?;
        } else if !self.read_only() {
            self.chown_without_ids(&node, caller)?;
        }
        if let Some(size) = set.size {
            self.truncate_ino(&node, fh, size, caller)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            crate::fault::check("chown")?;
            rustix::fs::chownat(
                &node.fd,
                "",
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = set.mode {
            // Linux has no mode on symlinks.
            // A stored access ACL follows (it is read with the mode's classes: `acl_ops`).
            if node.kind != Kind::Symlink {
                chmod_node(&node, mode)?;
            }
        }
        if set.kill_suidgid && set.mode.is_none() {
            let _ = self.kill_suidgid_node(&node, caller)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            if node.kind == Kind::File && !self.open_files.contains_key(&ino) {
                // A regular file unlinked and open nowhere can never be seen again: its times
                // are not worth a write. With the writeback cache the kernel sends one such
                // SETATTR (its cached mtime, ctime now) inside every unlink of a regular file.
                let attr = self.stat_node(&node)?;
                if attr.nlink == 0 || kernel_mtime(set) == Some(attr.mtime) {
                    return Ok(attr);
                }
            }
            let ts = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            crate::fault::check("utimens")?;
            // On the node's own `O_PATH` descriptor (no walk through /proc/self/fd).
            let apply = || {
                rustix::fs::utimensat(
                    &node.fd,
                    "",
                    &ts,
                    AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
                )
            };
            let open = (node.kind == Kind::File)
                .then(|| self.open_files.get(&ino).map(|e| e.0.clone()))
                .flatten();
            match (open, set.mtime) {
                // The time already kept: on the backing file, or put back there at release.
                (Some(f), _)
                    if kernel_mtime(set).is_some()
                        && f.kept_mtime.get() == Some(ts.last_modification) => {}
                // The kernel's writeback cache sends the time it holds this way: the one kept
                // while it writes the file (`kept_mtime`).
                (Some(f), Some(m)) => f.kept_mtime.set_by(apply, |()| match m {
                    SetTime::At(_) => Some(ts.last_modification),
                    SetTime::Now => rustix::fs::statat(
                        &node.fd,
                        "",
                        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .ok()
                    .map(|st| super::kept_mtime::mtime_of(&st)),
                })?,
                _ => apply()?,
            }
        }
        self.stat_node(&node)
    }

    /// access(2) for `caller`: `mask` is R_OK/W_OK/X_OK bits (F_OK is 0). The kernel asks this
    /// only when it does not check permission bits itself (a mount only root may use, see
    /// `fuse::session`); the answer is what a local file system gives. Root may read and write
    /// anything and search any directory, but execute a file only if some `x` bit is set.
    /// Others get the owner, group (primary or supplementary) or other bits, in that order.
    pub fn access(&self, ino: u64, mask: u32, caller: &Caller) -> Result<()> {
        let a = self.getattr(ino)?;
        let mask = mask & 0o7;
        let perm = u32::from(a.perm);
        let granted = if caller.uid == 0 {
            if a.kind == Kind::Dir || perm & 0o111 != 0 {
                0o7
            } else {
                0o6
            }
        } else if caller.uid == a.uid {
            (perm >> 6) & 0o7
        } else {
            let id = self.identity(caller);
            if id.gid == a.gid || id.groups.contains(&a.gid) {
                (perm >> 3) & 0o7
            } else {
                perm & 0o7
            }
        };
        if mask & !granted != 0 {
            return Err(Errno::ACCESS.into());
        }
        Ok(())
    }

    /// A SETATTR that sets nothing: `chown(f, -1, -1)` (the kernel passes neither id on, with
    /// the writeback cache only its change time), or the kernel's own request to drop a file's
    /// privileges before a write by a process without CAP_FSETID (the WRITE after it carries
    /// the flag as well). As on a local file system the change time moves, and when the caller
    /// owns it a file other than a directory loses set-user-id, and set-group-id where it is
    /// group-executable (or the caller is not in its group): the C pjdfstest checks this on
    /// Linux (chown/00.t). Another user's request clears nothing: on ext4 that chown fails
    /// with EPERM (clearing the bits is a mode change, the owner's), but the two requests look
    /// alike here and a write must not fail, so it succeeds and leaves the bits; a write by
    /// that user clears them through its WRITE (found by a review: any user could strip
    /// set-user-id from anyone's program).
    fn chown_without_ids(&self, node: &super::inode::Node, caller: Option<&Caller>) -> Result<()> {
        let other = match caller.filter(|c| c.uid != 0) {
            Some(c) if node.kind == Kind::File => {
                let st = rustix::fs::statat(&node.fd, "", AtFlags::EMPTY_PATH)?;
                let privileged = st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0;
                (st.st_uid != c.uid && privileged).then_some(st.st_mode & 0o7777)
            }
            _ => None,
        };
        if let Some(mode) = other {
            // The change time only: a chmod to the mode it has (the backing chown would drop
            // the bits, as a chown does on Linux whoever asks).
            return chmod_node(node, mode);
        }
        // The backing file system's chown(-1, -1) as root: the change time, and the bits by the
        // same rule for a caller with CAP_FSETID.
        crate::fault::check("chown")?;
        rustix::fs::chownat(
            &node.fd,
            "",
            None,
            None,
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if caller.is_some_and(|c| c.uid != 0) {
            self.kill_suidgid_node(node, caller)?;
        }
        Ok(())
    }

    /// A write by a process without CAP_FSETID: clears set-user-id, and set-group-id when the
    /// file is group-executable or the writer is not in its group, as Linux does for local
    /// file systems. Returns whether the mode changed.
    pub fn kill_suidgid(&self, ino: u64, caller: Option<&Caller>) -> Result<bool> {
        if super::is_control(ino) {
            return Ok(false);
        }
        let node = self.node(ino)?;
        self.kill_suidgid_node(&node, caller)
    }

    /// Whether `caller` has `gid` as its group or one of its supplementary groups (an
    /// in-process caller, `None`, counts as a member).
    pub(super) fn in_group(&self, caller: Option<&Caller>, gid: u32) -> bool {
        caller.is_none_or(|c| {
            let id = self.identity(c);
            id.gid == gid || id.groups.contains(&gid)
        })
    }

    fn kill_suidgid_node(
        &self,
        node: &super::inode::Node,
        caller: Option<&Caller>,
    ) -> Result<bool> {
        if node.kind != Kind::File {
            return Ok(false);
        }
        let st = rustix::fs::statat(&node.fd, "", AtFlags::EMPTY_PATH)?;
        let mut mode = st.st_mode & 0o7777;
        mode &= !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 || !self.in_group(caller, st.st_gid) {
            mode &= !libc::S_ISGID;
        }
        if mode == st.st_mode & 0o7777 {
            return Ok(false);
        }
        chmod_node(node, mode)?;
        Ok(true)
    }
}

/// chmod of a node's backing file (through `/proc/self/fd`: its descriptor is `O_PATH`).
pub(super) fn chmod_node(node: &super::inode::Node, mode: u32) -> Result<()> {
    crate::fault::check("chmod")?;
    let _g = crate::fsutil::mode_lock();
    rustix::fs::chmodat(
        rustix::fs::CWD,
        node.proc_path().as_str(),
        Mode::from(mode & 0o7777),
        AtFlags::empty(),
    )?;
    Ok(())
}

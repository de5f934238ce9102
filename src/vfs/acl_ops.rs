//! POSIX ACLs (with `--acl`): stored encrypted like the other extended attributes (under a NUL
//! byte and their full name, `\0system.posix_acl_access`), enforced by the kernel (which asks
//! for a node's access ACL before its first permission check for a caller other than the owner,
//! and caches it). What a local file system does beside storing them is done here:
//! - setting an access ACL sets the mode bits it implies (and stores none if those say it all);
//! - after a chmod the access ACL reads with the new owner, mask and other entries (below);
//! - a node made in a directory with a default ACL gets its access ACL from it instead of the
//!   creator's umask, and a directory also inherits the default ACL itself;
//! - the volume records that it holds ACLs (`VolumePaths::acl_marker`), so that later mounts
//!   enforce them unless told `-o noacl`;
//! - every change is audited (`SetAcl`, `RemoveAcl`).
//!
//! The mode is what counts for the owner, mask (or, without one, owning-group) and other
//! entries: a stored access ACL is read with those entries taken from the mode, as the kernel's
//! chmod would have rewritten them. So a chmod is the one write of the mode, and an ACL and mode
//! that disagree (a chmod on a mount without `--acl`, a stop between the two writes of an ACL
//! change) read as one consistent state. Of those two writes, the one that cannot widen access
//! comes first: a new access ACL goes before the mode it implies (the kernel consults an ACL
//! only while the mode has group bits, and then for everyone but the owner); an ACL that the
//! new mode makes unnecessary is removed after the mode is set (removed first, the old mode's
//! group bits, which were the mask, would go to the owning group). If the second write fails,
//! the first is undone.
//!
//! A change of a node's ACL or mode, and a create in a directory (which reads its default
//! ACL), hold the kernel's lock on that inode: they do not race with each other.

use std::os::fd::AsFd;

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::attr_ops::chmod_node;
use super::inode::{Node, fd_path};
use super::xattr_ops::Target;
use super::{Caller, Kind, Result, Vfs, VfsError};
use crate::format::acl::{ACCESS_STORED, Acl, DEFAULT_STORED};

/// Which of a node's two ACLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AclKind {
    Access,
    Default,
}

impl AclKind {
    fn label(self) -> &'static str {
        match self {
            AclKind::Access => "access",
            AclKind::Default => "default",
        }
    }

    fn stored(self) -> &'static [u8] {
        match self {
            AclKind::Access => ACCESS_STORED,
            AclKind::Default => DEFAULT_STORED,
        }
    }

    /// The ACL an attribute's stored name is, if it is one.
    pub(super) fn of(stored: &[u8]) -> Option<AclKind> {
        match stored {
            ACCESS_STORED => Some(AclKind::Access),
            DEFAULT_STORED => Some(AclKind::Default),
            _ => None,
        }
    }
}

/// What a new node gets from its directory: its mode, and the ACLs to store on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Inherited {
    pub mode: u32,
    access: Option<Vec<u8>>,
    default: Option<Vec<u8>>,
}

fn damaged(ino: u64) -> VfsError {
    VfsError::Integrity(format!("inode {ino}: stored ACL is not a valid ACL"))
}

impl Vfs {
    /// Whether POSIX ACLs are on (`--acl`).
    pub fn acl_enabled(&self) -> bool {
        self.opts.acl
    }

    /// The mode and ACLs of a node to be made in `dir` with `mode` (file type included) by a
    /// process with `umask`: without a default ACL on `dir` the umask applies, with one the
    /// default ACL does (`posix_acl_create`; not for symlinks, which take no ACL).
    pub(super) fn inherit(&self, dir: &Node, mode: u32, umask: u32) -> Result<Inherited> {
        let kind = Kind::from_mode(mode);
        let plain = Inherited {
            mode: mode & !(umask & 0o777),
            access: None,
            default: None,
        };
        if !self.opts.acl || kind == Kind::Symlink {
            return Ok(plain);
        }
        let t = Target::at(dir.proc_path(), Kind::Dir);
        let Some(v) = self.get_stored(dir.ino, &t, DEFAULT_STORED)? else {
            return Ok(plain);
        };
        let mut a = Acl::decode(&v).ok_or_else(|| damaged(dir.ino))?;
        let (mode, equiv) = a.create_masq(mode);
        Ok(Inherited {
            mode,
            access: (!equiv).then(|| a.encode()),
            default: (kind == Kind::Dir).then_some(v),
        })
    }

    /// Records in the volume that it holds ACLs (`VolumePaths::acl_marker`), once per mount.
    /// Before the ACL is stored: should the marker not be writable, the ACL is refused rather
    /// than stored where a later mount might not enforce it.
    fn mark_acls_used(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.acls_marked.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Err(e) = crate::keymgr::VolumePaths::new(&self.root).record_acls() {
            tracing::error!("cannot record that the volume holds ACLs: {e}");
            return Err(e.into());
        }
        self.acls_marked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stores the inherited ACLs on a node just made (open as `fd`), before anyone else can
    /// reach it.
    pub(super) fn write_inherited(&self, fd: impl AsFd, kind: Kind, inh: &Inherited) -> Result<()> {
        if inh.default.is_none() && inh.access.is_none() {
            return Ok(());
        }
        // Normally there already (the default ACL recorded it); not for a default ACL stored by
        // a kmsfs of 2026-12-05 before the marker existed.
        self.mark_acls_used()?;
        let ino = self.inodes.map_ino(rustix::fs::fstat(&fd)?.st_ino);
        let t = Target::at(fd_path(&fd), kind);
        if let Some(d) = &inh.default {
            self.set_stored(ino, &t, DEFAULT_STORED, d, 0)?;
        }
        if let Some(a) = &inh.access {
            self.set_stored(ino, &t, ACCESS_STORED, a, 0)?;
        }
        Ok(())
    }

    /// A stored access ACL of `node` as read: its owner, mask (or owning-group) and other
    /// entries from the mode (see above).
    pub(super) fn access_acl_read(&self, node: &Node, stored: &[u8]) -> Result<Vec<u8>> {
        let mut a = Acl::decode(stored).ok_or_else(|| damaged(node.ino))?;
        let st = rustix::fs::statat(&node.fd, "", AtFlags::EMPTY_PATH)?;
        a.chmod(st.st_mode);
        Ok(a.encode())
    }

    /// setxattr of an ACL. The kernel has checked the caller (owner or CAP_FOWNER), that the
    /// value is a valid ACL and that a default ACL goes on a directory; the last two are
    /// checked again here for callers inside the process. An access ACL that the mode bits can
    /// say is not stored (one stored before is removed); the mode takes the bits the ACL
    /// implies, and loses set-group-id if `caller` is neither root nor in the file's group.
    pub(super) fn set_acl(
        &self,
        ino: u64,
        which: AclKind,
        value: &[u8],
        caller: Option<&Caller>,
    ) -> Result<()> {
        let node = self.node(ino)?;
        if node.kind == Kind::Symlink {
            return Err(VfsError::NotSupported("ACLs on a symlink"));
        }
        let a = Acl::decode(value).ok_or(VfsError::Invalid("not a valid POSIX ACL"))?;
        let r = self.set_acl_of(&node, which, &a, caller);
        let detail = format!("{} ACL: {}", which.label(), a.to_text());
        self.audit_acl(caller, &node, "SetAcl", detail, &r);
        r
    }

    /// Removes a node's ACL (absent: nothing to do, as on ext4), audited.
    pub(super) fn remove_acl(
        &self,
        ino: u64,
        which: AclKind,
        caller: Option<&Caller>,
    ) -> Result<()> {
        let node = self.node(ino)?;
        if node.kind == Kind::Symlink {
            return Err(VfsError::NotSupported("ACLs on a symlink"));
        }
        let t = self.xattr_target(ino)?;
        let stored = which.stored();
        // Removing an ACL that is not there succeeds, as on ext4 (`tar --acls` removes the
        // default ACL of every directory it restores without one); nothing to record then.
        let r = match self.remove_stored(ino, &t, stored) {
            Err(e) if e.errno() == libc::ENODATA => return Ok(()),
            r => r,
        };
        let detail = format!("{} ACL", which.label());
        self.audit_acl(caller, &node, "RemoveAcl", detail, &r);
        r
    }

    fn set_acl_of(
        &self,
        node: &Node,
        which: AclKind,
        a: &Acl,
        caller: Option<&Caller>,
    ) -> Result<()> {
        let ino = node.ino;
        let t = self.xattr_target(ino)?;
        if which == AclKind::Default {
            if node.kind != Kind::Dir {
                return Err(Errno::ACCESS.into());
            }
            self.mark_acls_used()?;
            return self.set_stored(ino, &t, DEFAULT_STORED, &a.encode(), 0);
        }
        let st = rustix::fs::statat(&node.fd, "", AtFlags::EMPTY_PATH)?;
        let old_mode = st.st_mode & 0o7777;
        let (mut mode, equiv) = a.equiv_mode(old_mode);
        // CAP_FSETID, for which root stands, keeps set-group-id (`posix_acl_update_mode`).
        let keeps_sgid = caller.is_some_and(|c| c.uid == 0) || self.in_group(caller, st.st_gid);
        if !keeps_sgid {
            mode &= !libc::S_ISGID;
        }
        let before = self.get_stored(ino, &t, ACCESS_STORED)?;
        if equiv {
            // The mode first (always: the change time moves, as for any ACL change), then the
            // ACL it makes unnecessary.
            chmod_node(node, mode)?;
            if before.is_some()
                && let Err(e) = self.remove_stored(ino, &t, ACCESS_STORED)
            {
                self.undo_chmod(node, old_mode);
                return Err(e);
            }
            return Ok(());
        }
        self.mark_acls_used()?;
        self.set_stored(ino, &t, ACCESS_STORED, &a.encode(), 0)?;
        if let Err(e) = chmod_node(node, mode) {
            self.put_back(ino, &t, before.as_deref());
            return Err(e);
        }
        Ok(())
    }

    /// Restores the access ACL `before` (none: removes the one written) after the mode that
    /// went with a new one could not be set.
    fn put_back(&self, ino: u64, t: &Target, before: Option<&[u8]>) {
        let r = match before {
            Some(v) => self.set_stored(ino, t, ACCESS_STORED, v, 0),
            None => self.remove_stored(ino, t, ACCESS_STORED),
        };
        if let Err(e) = r {
            // Read with its class entries from the mode (see above): what the kernel enforces
            // is the new ACL's named entries under the old mode.
            tracing::error!("inode {ino}: putting back its access ACL failed: {e}");
        }
    }

    /// Restores the mode after the ACL change that went with it failed.
    fn undo_chmod(&self, node: &Node, old_mode: u32) {
        if let Err(e) = chmod_node(node, old_mode) {
            tracing::error!("inode {}: putting back its mode failed: {e}", node.ino);
        }
    }
}

//! POSIX ACLs (with `--acl`): stored encrypted like the other extended attributes (under a NUL
//! byte and their full name, `\0system.posix_acl_access`), enforced by the kernel (which asks
//! for a node's access ACL before its first permission check for a caller other than the owner,
//! and caches it). What a local file system does beside storing them is done here:
//! - setting an access ACL sets the mode bits it implies (and stores none if those say it all);
//! - chmod rewrites a stored access ACL's owner, mask (or owning-group) and other entries;
//! - a node made in a directory with a default ACL gets its access ACL from it instead of the
//!   creator's umask, and a directory also inherits the default ACL itself.
//!
//! An access ACL is written before the mode that goes with it: for everyone but the owner the
//! kernel goes by the ACL, so should the second write never happen the ACL still holds; if it
//! fails, the ACL written is put back.

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::acl::Acl;
use super::attr_ops::chmod_node;
use super::inode::Node;
use super::xattr_ops::Target;
use super::{Caller, Kind, Result, Vfs, VfsError};

/// The stored names (see `xattr_ops::stored_name`).
const ACCESS_STORED: &[u8] = b"\0system.posix_acl_access";
const DEFAULT_STORED: &[u8] = b"\0system.posix_acl_default";

/// Which of a node's two ACLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AclKind {
    Access,
    Default,
}

impl AclKind {
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
    /// default ACL does (`posix_acl_create`). Symlinks take neither.
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

    /// Stores the inherited ACLs on a node just made (open as `path`), before anyone else
    /// can reach it.
    pub(super) fn write_inherited(&self, path: String, kind: Kind, inh: &Inherited) -> Result<()> {
        let t = Target::at(path, kind);
        if let Some(d) = &inh.default {
            self.set_stored(0, &t, DEFAULT_STORED, d, 0)?;
        }
        if let Some(a) = &inh.access {
            self.set_stored(0, &t, ACCESS_STORED, a, 0)?;
        }
        Ok(())
    }

    /// setxattr of an ACL. The kernel has checked the caller (owner or CAP_FOWNER), that the
    /// value is a valid ACL and that a default ACL goes on a directory; checked again here for
    /// callers inside the process. An access ACL that the mode bits can say is not stored
    /// (one stored before is removed); the mode takes the bits the ACL implies, and loses
    /// set-group-id if `caller` is neither root nor in the file's group.
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
        let t = self.xattr_target(ino)?;
        if which == AclKind::Default {
            if node.kind != Kind::Dir {
                return Err(Errno::ACCESS.into());
            }
            return self.set_stored(ino, &t, DEFAULT_STORED, &a.encode(), 0);
        }
        let st = rustix::fs::statat(&node.fd, "", AtFlags::EMPTY_PATH)?;
        let (mut mode, equiv) = a.equiv_mode(st.st_mode & 0o7777);
        let in_group = caller.is_none_or(|c| {
            let id = self.identity(c);
            c.uid == 0 || id.gid == st.st_gid || id.groups.contains(&st.st_gid)
        });
        if !in_group {
            mode &= !libc::S_ISGID;
        }
        let before = self.get_stored(ino, &t, ACCESS_STORED)?;
        match (equiv, &before) {
            (true, None) => {}
            (true, Some(_)) => self.remove_stored(ino, &t, ACCESS_STORED)?,
            (false, _) => self.set_stored(ino, &t, ACCESS_STORED, &a.encode(), 0)?,
        }
        // Always (the change time moves, as for any ACL change).
        if let Err(e) = chmod_node(&node, mode) {
            self.put_back(ino, &t, before.as_deref(), equiv);
            return Err(e);
        }
        Ok(())
    }

    /// Restores the access ACL `before` after the change that replaced it failed half-way.
    fn put_back(&self, ino: u64, t: &Target, before: Option<&[u8]>, removed: bool) {
        let r = match before {
            Some(v) => self.set_stored(ino, t, ACCESS_STORED, v, 0),
            None if !removed => self.remove_stored(ino, t, ACCESS_STORED),
            None => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!("inode {ino}: putting back its access ACL failed: {e}");
        }
    }

    /// chmod of `node`, its access ACL (if it has one, and ACLs are on) following.
    pub(super) fn chmod_with_acl(&self, node: &Node, mode: u32) -> Result<()> {
        if !self.opts.acl || node.kind == Kind::Symlink {
            return chmod_node(node, mode);
        }
        let t = Target::at(node.proc_path(), node.kind);
        let Some(before) = self.get_stored(node.ino, &t, ACCESS_STORED)? else {
            return chmod_node(node, mode);
        };
        let mut a = Acl::decode(&before).ok_or_else(|| damaged(node.ino))?;
        a.chmod(mode);
        self.set_stored(node.ino, &t, ACCESS_STORED, &a.encode(), 0)?;
        if let Err(e) = chmod_node(node, mode) {
            self.put_back(node.ino, &t, Some(&before), false);
            return Err(e);
        }
        Ok(())
    }
}

//! Routing of the control directory: `.kmsfs` in the mount root and every inode and handle
//! below it go to [`crate::control::ControlDir`]; nothing there touches the cipher directory.
//! The name is not listed by readdir of the root (like ZFS's hidden `.zfs`), so backups and
//! `find` of the mount do not walk into it, but it can always be opened by name.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::inode::ROOT_INO;
use super::{Attr, Caller, DirEntry, Kind, Result, Vfs, VfsError};
use crate::control::{ControlDir, CtlAttr, CtlError, CtlKind, is_control_ino};

pub(super) fn ctl_err(e: CtlError) -> VfsError {
    VfsError::Control(e.errno, e.message)
}

fn kind(k: CtlKind) -> Kind {
    match k {
        CtlKind::Dir => Kind::Dir,
        CtlKind::File => Kind::File,
        CtlKind::Symlink => Kind::Symlink,
    }
}

fn attr(a: CtlAttr) -> Attr {
    Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: if a.kind == CtlKind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        generation: 0,
    }
}

/// Whether an inode or handle number belongs to the control directory (the FUSE adapter gives
/// these no attribute cache and direct I/O).
pub use crate::control::{is_control_fh as is_control_handle, is_control_ino as is_control};

impl Vfs {
    pub fn control(&self) -> &std::sync::Arc<ControlDir> {
        &self.control
    }

    /// `name` in `parent` is (or is inside) the control directory.
    pub(super) fn names_control(&self, parent: u64, name: &OsStr) -> bool {
        is_control_ino(parent) || (parent == ROOT_INO && ControlDir::is_root_name(name.as_bytes()))
    }

    /// Refuses to create, remove or rename anything in (or as) the control directory.
    pub(super) fn refuse_control(&self, parent: u64, name: &OsStr) -> Result<()> {
        if self.names_control(parent, name) {
            return Err(VfsError::Control(
                libc::EPERM,
                "the control directory .kmsfs cannot be changed this way".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn ctl_lookup(&self, parent: u64, name: &OsStr) -> Option<Result<Attr>> {
        if parent == ROOT_INO && ControlDir::is_root_name(name.as_bytes()) {
            return Some(Ok(attr(self.control.root_attr())));
        }
        if !is_control_ino(parent) {
            return None;
        }
        let name = name.to_str().unwrap_or("\u{0}");
        Some(self.control.lookup(parent, name).map(attr).map_err(ctl_err))
    }

    pub(super) fn ctl_getattr(&self, ino: u64) -> Result<Attr> {
        self.control.getattr(ino).map(attr).map_err(ctl_err)
    }

    /// `O_TRUNC` (size 0, with times) and `touch` are accepted and change nothing; owner and
    /// mode are fixed.
    pub(super) fn ctl_setattr(&self, ino: u64, set: &super::SetAttr) -> Result<Attr> {
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            return Err(VfsError::Control(
                libc::EPERM,
                "control files have a fixed owner and mode".into(),
            ));
        }
        match set.size {
            Some(s) => self.control.truncate(ino, s).map(attr).map_err(ctl_err),
            None => self.ctl_getattr(ino),
        }
    }

    pub(super) fn ctl_open(&self, ino: u64, flags: i32, caller: Option<&Caller>) -> Result<u64> {
        let who = match caller {
            Some(c) => self.identity(c),
            None => super::identity::current(),
        };
        self.control.open(ino, flags, who).map_err(ctl_err)
    }

    pub(super) fn ctl_list(&self, ino: u64) -> Result<Vec<DirEntry>> {
        Ok(self
            .control
            .list(ino, ROOT_INO)
            .map_err(ctl_err)?
            .into_iter()
            .map(|e| DirEntry {
                ino: e.ino,
                kind: kind(e.kind),
                name: e.name.into(),
                cipher_name: Default::default(),
                size_may_lag: false,
            })
            .collect())
    }

    pub(super) fn ctl_entry_attr(&self, e: &DirEntry) -> Option<Attr> {
        if e.ino == ROOT_INO {
            return self.getattr(ROOT_INO).ok();
        }
        self.control.getattr(e.ino).ok().map(attr)
    }
}

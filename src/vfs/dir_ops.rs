//! Operations on names: lookup, mkdir, rmdir, unlink, rename, link, symlink, readlink, mknod.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::inode::Node;
use super::{Attr, Caller, Kind, Result, Vfs, VfsError, is_control};
use crate::format::DirId;
use crate::names::{CipherName, DIRID_FILE, LONG_NAME_SUFFIX};

/// Rename flags the model understands (values of renameat2(2)).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
/// Leaves a whiteout (a character device 0/0, what overlayfs reads as "deleted") at the old name;
/// overlayfs needs it of an upper file system on FUSE.
pub const RENAME_WHITEOUT: u32 = 4;

impl Vfs {
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        self.touch();
        if let Some(r) = self.ctl_lookup(parent, name) {
            return r;
        }
        // Asked only by the kernel's export operations (a path walk resolves these itself).
        if name == "." {
            return self.lookup_self(parent);
        }
        if name == ".." {
            return self.lookup_parent(parent);
        }
        let dir = self.dir_node(parent)?;
        let cn = self.cipher_name(&dir, name).map_err(|e| match e {
            // Looking up a reserved name finds nothing.
            VfsError::Name(crate::names::NameError::Reserved) => VfsError::Sys(Errno::NOENT),
            e => e,
        })?;
        match self.intern_found(&dir, &cn.entry, name) {
            Err(VfsError::Sys(Errno::NOENT)) => match self.lookup_by_file_id(&dir, name)? {
                Some(attr) => Ok(attr),
                None => Err(Errno::NOENT.into()),
            },
            r => {
                let attr = r?.1;
                // Found under the id in use, read from the copy or the file: the names are
                // under it, so a name looked for in vain here later need not read
                // `kmsfs.dirid` (a cold `git status` looks up every directory's `.gitignore`,
                // mostly absent, after finding the tracked files there).
                if dir.dir_id_switched.get().is_none()
                    && !dir
                        .copy_confirmed
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    dir.copy_confirmed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(attr)
            }
        }
    }

    /// A name not found under the id read from the directory's xattr copy, looked for under
    /// `kmsfs.dirid` when that holds another id: the copy is stale or damaged (a tool that
    /// copies files but not extended attributes, `rsync -a` without `-X` or `cp -r`, updated
    /// a directory made again under the same name since the copy was made). Found there, the
    /// directory turns to the file's id, as a listing does (`Vfs::dir_id_by_file`); before,
    /// lookups found nothing until the directory was first listed. Costs one read of the file
    /// per directory, at its first name not found (shared with the first new name's check,
    /// `Vfs::id_for_new_name`); nothing where the id was read from the file or the copy is
    /// known to be right.
    fn lookup_by_file_id(&self, dir: &Arc<Node>, name: &OsStr) -> Result<Option<Attr>> {
        if self.names.plaintext()
            || dir.dir_id_switched.get().is_some()
            || dir
                .copy_confirmed
                .load(std::sync::atomic::Ordering::Relaxed)
            || matches!(dir.dir_id_file.get(), Some(None))
        {
            return Ok(None);
        }
        // Out of descriptors (the file cannot be read now): not found, as before, and nothing
        // recorded, so that it is looked at again next time.
        if dir.dir_id_file.get().is_none()
            && let Err(Errno::MFILE | Errno::NFILE) = rustix::fs::openat(
                &dir.fd,
                DIRID_FILE,
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        {
            return Ok(None);
        }
        let current = self.dir_id(dir)?;
        // The node's `O_PATH` descriptor serves for the `*at` calls: no descriptor more.
        let fd = &dir.fd;
        let at_root = dir.ino == super::ROOT_INO;
        let holds = |id: &DirId| {
            let Ok(cn) = self.names.encrypt(id, name.as_bytes(), at_root) else {
                return false;
            };
            if rustix::fs::statat(fd, &cn.entry, AtFlags::SYMLINK_NOFOLLOW).is_err() {
                return false;
            }
            // A long entry is its name only if its side file says so.
            match (cn.side_file(), &cn.long) {
                (Some(side), Some(long)) => {
                    read_side_fd(fd, &side).is_some_and(|b| b.trim_ascii_end() == long.as_bytes())
                }
                _ => true,
            }
        };
        let Some(id) = self.dir_id_by_file(dir, fd, &current, holds) else {
            return Ok(None);
        };
        let cn = self.names.encrypt(&id, name.as_bytes(), at_root)?;
        Ok(Some(self.intern_found(dir, &cn.entry, name)?.1))
    }

    /// Writes the side file of a long name if it is not there yet; returns whether it wrote it.
    /// Its content is on disk when this returns (`fdatasync`): the entry named after it is
    /// journaled metadata that a power loss may keep while the side file's delayed-allocation
    /// data is lost, and an entry whose side file is empty has lost its name for good. Only
    /// long names (176 bytes and more) have a side file; short names cost nothing here. The
    /// side file's own directory entry needs no directory sync of its own: it is made in the
    /// same directory before the entry, so a `fsyncdir` that keeps the entry keeps it too.
    fn write_side_file(&self, dir: &Node, cn: &CipherName) -> Result<bool> {
        let (Some(side), Some(long)) = (cn.side_file(), &cn.long) else {
            return Ok(false);
        };
        crate::fault::check("create")?;
        match rustix::fs::openat(
            &dir.fd,
            &side,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from(0o400),
        ) {
            Ok(fd) => {
                let f = std::fs::File::from(fd);
                let written = std::io::Write::write_all(&mut &f, long.as_bytes())
                    .map_err(VfsError::from)
                    .and_then(|()| Ok(rustix::fs::fdatasync(&f)?));
                if let Err(e) = written {
                    let _ = rustix::fs::unlinkat(&dir.fd, &side, AtFlags::empty());
                    return Err(e);
                }
                Ok(true)
            }
            Err(Errno::EXIST) => {
                self.check_side_file(dir, &side, long)?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A side file `side` that is already there (the entry's, or an orphan left by a crash
    /// between its create and its write) must hold `long`; if it does not (empty, torn,
    /// changed), it is replaced atomically: written under a temporary name, on disk, then
    /// renamed over it. Not taken back if the entry is not made after all: `long` is the only
    /// right content for an entry of this name (its hash), and an orphan is removed later.
    fn check_side_file(&self, dir: &Node, side: &OsStr, long: &str) -> Result<()> {
        if read_side(dir, side).is_some_and(|b| b == long.as_bytes()) {
            return Ok(());
        }
        // `kmsfs.long.<hash>.tmp.name`: internal (hidden), and an orphan (no entry of that
        // name) that the next rmdir or fsck removes should a crash leave it.
        let base = side
            .as_bytes()
            .strip_suffix(LONG_NAME_SUFFIX.as_bytes())
            .unwrap_or(side.as_bytes());
        let mut tmp = OsStr::from_bytes(base).to_os_string();
        tmp.push(".tmp");
        tmp.push(LONG_NAME_SUFFIX);
        let _ = rustix::fs::unlinkat(&dir.fd, &tmp, AtFlags::empty());
        let fd = rustix::fs::openat(
            &dir.fd,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from(0o400),
        )?;
        let f = std::fs::File::from(fd);
        let r = std::io::Write::write_all(&mut &f, long.as_bytes())
            .map_err(VfsError::from)
            .and_then(|()| Ok(rustix::fs::fdatasync(&f)?))
            .and_then(|()| Ok(rustix::fs::renameat(&dir.fd, &tmp, &dir.fd, side)?));
        if r.is_err() {
            let _ = rustix::fs::unlinkat(&dir.fd, &tmp, AtFlags::empty());
        } else {
            tracing::warn!(
                dir = %self.label(dir),
                side = %side.to_string_lossy(),
                "a long name's side file did not hold its name (left by a crash?): written again"
            );
        }
        r
    }

    fn remove_side_file(&self, dir: &Node, cn: &CipherName) {
        if let Some(side) = cn.side_file() {
            let _ = rustix::fs::unlinkat(&dir.fd, &side, AtFlags::empty());
        }
    }

    /// Runs `make` to create the entry `cn` in `dir`, with the long-name side file written first
    /// and removed again if `make` fails.
    pub(super) fn create_entry<T>(
        &self,
        dir: &Node,
        cn: &CipherName,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let wrote = self.write_side_file(dir, cn)?;
        let r = make();
        if r.is_err() && wrote {
            self.remove_side_file(dir, cn);
        }
        dir.entries_changed();
        r
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: &Caller) -> Result<Attr> {
        self.touch();
        self.refuse_control(parent, name)?;
        self.check_writable()?;
        let dir = self.dir_node(parent)?;
        let cn = self.new_cipher_name(&dir, name)?;
        let inh = self.inherit(&dir, libc::S_IFDIR | (mode & 0o7777), caller.umask)?;
        let mode = inh.mode;
        self.create_entry(&dir, &cn, || {
            // Owner write/search while we write the directory id; the final mode follows.
            crate::fault::check("mkdir")?;
            // Held (shared) until the id is on the new directory: a reader that finds it
            // without one then (see `heal_dir_id`) waits for it instead of making one.
            let gap = self.dirid_gap.read().unwrap_or_else(|p| p.into_inner());
            rustix::fs::mkdirat(&dir.fd, &cn.entry, Mode::from((mode & 0o7777) | 0o700))?;
            let newd = match rustix::fs::openat(
                &dir.fd,
                &cn.entry,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(d) => d,
                Err(e) => {
                    drop(gap);
                    // Still empty and ours, removable without a descriptor (EMFILE is the
                    // likely cause), unless the name changed under us (the backing store
                    // touched directly): then leave what is there.
                    if !matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP) {
                        let r = self.remove_fresh_dir(&dir, &cn.entry, None);
                        tracing::debug!("mkdir undone after {e} (opening it): {r:?}");
                    }
                    return Err(e.into());
                }
            };
            let fin =
                |gap: std::sync::RwLockReadGuard<'_, ()>| -> Result<(std::sync::Arc<Node>, Attr)> {
                    let mut made_id = None;
                    if !self.names.plaintext() {
                        let id = DirId::generate();
                        made_id = Some(id);
                        write_dir_id(&newd, &id)?;
                    }
                    drop(gap);
                    // A directory made in a set-group-id directory inherits the bit (as the backing
                    // mkdir did); the fchmod must not clear it.
                    let mut perm = mode & 0o7777;
                    if rustix::fs::fstat(&dir.fd)?.st_mode & libc::S_ISGID != 0 {
                        perm |= libc::S_ISGID;
                    }
                    crate::fault::check("chmod")?;
                    rustix::fs::fchmod(&newd, Mode::from(perm))?;
                    self.set_owner(&dir, &newd, caller)?;
                    self.write_inherited(&newd, Kind::Dir, &inh)?;
                    let (node, attr) = self.intern_child(&dir, &cn.entry, name)?;
                    // Its id and the file's are the same, known without reading either.
                    if let Some(id) = made_id {
                        let _ = node.dir_id.set(id);
                        let _ = node.dir_id_file.set(None);
                    }
                    Ok((node, attr))
                };
            match fin(gap) {
                Ok((_, attr)) => Ok(attr),
                Err(e) => {
                    let r = self.remove_fresh_dir(&dir, &cn.entry, Some(&newd));
                    tracing::debug!("mkdir undone after {e}: {r:?}");
                    Err(e)
                }
            }
        })
    }

    /// Undoes a mkdir that could not be finished: removes the id file (if it was written) and
    /// the directory, through descriptors already open, since the failure may be EMFILE (a
    /// removal that opened the directory again failed too, and left a directory without its
    /// id: unreadable, until 2026-12-05). Should the removal fail, the xattr copy of the id
    /// (when written) keeps the directory readable.
    fn remove_fresh_dir(&self, dir: &Node, entry: &OsStr, newd: Option<&OwnedFd>) -> Result<()> {
        let _gap = self.dirid_gap.write().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = newd {
            let _ = rustix::fs::unlinkat(d, DIRID_FILE, AtFlags::empty());
        }
        crate::fault::check("rmdir")?;
        rustix::fs::unlinkat(&dir.fd, entry, AtFlags::REMOVEDIR)?;
        Ok(())
    }

    /// Opens directory `entry` of `dir` and empties it of kmsfs-internal files
    /// ([`strip_internal`]); returns its descriptor, the saved id and, if its mode had to be
    /// changed, the mode to put back should its removal fail. That takes read, write and search
    /// permission on the directory itself, which POSIX does not ask of rmdir (only write and
    /// search on the parent): a daemon not running as root, refused, gives the owner (itself:
    /// it owns every file it made) those permissions first when `lend` (then the caller holds
    /// [`crate::fsutil::mode_lock`], taken before `dirid_gap` as everywhere, so that no chmod
    /// of the directory comes between the lending and the mode put back; see [`lending`]).
    /// Call with `dirid_gap` held.
    fn open_and_strip(
        &self,
        dir: &Node,
        entry: &OsStr,
        lend: bool,
    ) -> Result<(OwnedFd, Option<std::fs::File>, Option<u32>)> {
        let strip = || -> Result<(OwnedFd, Option<std::fs::File>)> {
            let d = rustix::fs::openat(
                &dir.fd,
                entry,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let saved = strip_internal(&d)?;
            Ok((d, saved))
        };
        match strip() {
            Err(VfsError::Sys(Errno::ACCESS)) if lend => {
                let st = rustix::fs::statat(&dir.fd, entry, AtFlags::SYMLINK_NOFOLLOW)?;
                let mode = st.st_mode & 0o7777;
                if Kind::from_mode(st.st_mode) != Kind::Dir || mode & 0o700 == 0o700 {
                    return Err(Errno::ACCESS.into());
                }
                // Not the owner (EPERM): refused as before.
                rustix::fs::chmodat(&dir.fd, entry, Mode::from(mode | 0o700), AtFlags::empty())
                    .map_err(|_| Errno::ACCESS)?;
                match strip() {
                    Ok((d, saved)) => Ok((d, saved, Some(mode))),
                    Err(e) => {
                        restore_mode(dir, entry, mode);
                        Err(e)
                    }
                }
            }
            r => r.map(|(d, saved)| (d, saved, None)),
        }
    }

    /// Removes a directory that holds nothing but kmsfs-internal files, lending it its owner
    /// bits when `lend` (see [`lending`]).
    fn remove_dir_contents_and_dir(&self, dir: &Node, entry: &OsStr, lend: bool) -> Result<()> {
        let _gap = self.dirid_gap.write().unwrap_or_else(|p| p.into_inner());
        let (d, saved, mode) = self.open_and_strip(dir, entry, lend)?;
        if let Err(e) = crate::fault::check("rmdir")
            .and_then(|()| rustix::fs::unlinkat(&dir.fd, entry, AtFlags::REMOVEDIR))
        {
            // Put the directory id back so the directory stays usable.
            restore_dirid(&d, saved);
            if let Some(m) = mode {
                restore_mode(dir, entry, m);
            }
            return Err(e.into());
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.touch();
        self.refuse_control(parent, name)?;
        self.check_writable()?;
        let dir = self.dir_node(parent)?;
        let cn = self.cipher_name(&dir, name)?;
        let st = rustix::fs::statat(&dir.fd, &cn.entry, AtFlags::SYMLINK_NOFOLLOW)?;
        if Kind::from_mode(st.st_mode) != Kind::Dir {
            return Err(Errno::NOTDIR.into());
        }
        let mut r = lending(
            |e: &VfsError| matches!(e, VfsError::Sys(Errno::ACCESS)),
            |lend| self.remove_dir_contents_and_dir(&dir, &cn.entry, lend),
        );
        if r.is_ok() {
            self.remove_side_file(&dir, &cn);
        } else if matches!(r, Err(VfsError::Sys(Errno::NOTEMPTY))) && undeletable(&dir, &cn.entry) {
            // As ext4 says, which looks at the flags before the contents (an empty one gets
            // EPERM from the backing rmdir itself).
            r = Err(Errno::PERM.into());
        }
        dir.entries_changed();
        r
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.touch();
        self.refuse_control(parent, name)?;
        self.check_writable()?;
        let dir = self.dir_node(parent)?;
        let cn = self.cipher_name(&dir, name)?;
        self.refuse_append_only_entry(&dir, &cn.entry)?;
        crate::fault::check("unlink")?;
        let leaving = self.long_link_at(&dir, &cn.entry);
        let r = rustix::fs::unlinkat(&dir.fd, &cn.entry, AtFlags::empty());
        if r.is_ok() {
            self.remove_side_file(&dir, &cn);
            self.left(leaving);
            self.removed();
        }
        dir.entries_changed();
        Ok(r?)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.rename_by(parent, name, newparent, newname, flags, None)
    }

    /// rename(2) and renameat2(2). `caller` owns the whiteout RENAME_WHITEOUT leaves (as on
    /// ext4, where it belongs to whoever renamed); without one, the daemon does.
    pub fn rename_by(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        caller: Option<&Caller>,
    ) -> Result<()> {
        self.touch();
        self.refuse_control(parent, name)?;
        self.refuse_control(newparent, newname)?;
        self.check_writable()?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) != 0
            || flags & RENAME_EXCHANGE != 0 && flags != RENAME_EXCHANGE
        {
            return Err(VfsError::Invalid("unsupported rename flags"));
        }
        let from_dir = self.dir_node(parent)?;
        let to_dir = self.dir_node(newparent)?;
        let from = self.cipher_name(&from_dir, name)?;
        let to = self.new_cipher_name(&to_dir, newname)?;
        let mut rf = RenameFlags::empty();
        if flags & RENAME_NOREPLACE != 0 {
            rf |= RenameFlags::NOREPLACE;
        }
        if flags & RENAME_EXCHANGE != 0 {
            rf |= RenameFlags::EXCHANGE;
        }
        if flags & RENAME_WHITEOUT != 0 {
            rf |= RenameFlags::WHITEOUT;
        }
        // Two names of one file (hard links, or the same name): rename(2) does nothing (POSIX),
        // and the source's long-name side file must stay. The kernel's VFS returns before it
        // asks a FUSE server; this is for callers of the model. One `statat` of the target,
        // mostly of a name not there (a rename to a new name).
        if flags & RENAME_NOREPLACE == 0
            && let Ok(t) = rustix::fs::statat(&to_dir.fd, &to.entry, AtFlags::SYMLINK_NOFOLLOW)
            && let Ok(f) = rustix::fs::statat(&from_dir.fd, &from.entry, AtFlags::SYMLINK_NOFOLLOW)
            && (t.st_dev, t.st_ino) == (f.st_dev, f.st_ino)
        {
            return Ok(());
        }
        // An append-only file is neither renamed nor renamed over (nor exchanged).
        self.refuse_append_only_entry(&from_dir, &from.entry)?;
        if flags & RENAME_NOREPLACE == 0 {
            self.refuse_append_only_entry(&to_dir, &to.entry)?;
        }
        if to.side_file().is_some() {
            refused_into_append_only(&from_dir, &from.entry, &to_dir, &to.entry, flags)?;
        }
        let wrote = self.write_side_file(&to_dir, &to)?;
        // A long link renamed over may lose its last name.
        let leaving = if flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == 0 {
            self.long_link_at(&to_dir, &to.entry)
        } else {
            None
        };
        let mut r = crate::fault::check("rename").and_then(|()| {
            rustix::fs::renameat_with(&from_dir.fd, &from.entry, &to_dir.fd, &to.entry, rf)
        });
        if let Err(Errno::NOTEMPTY | Errno::EXIST) = r
            && flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == 0
        {
            // The target directory may hold only its directory id: empty it and retry.
            r = lending(
                |e: &Errno| *e == Errno::ACCESS,
                |lend| self.rename_over_dir(&from_dir, &from.entry, &to_dir, &to.entry, rf, lend),
            );
        }
        // Whatever moved (a directory may have, with everything under it): paths are read again.
        self.renamed();
        if let Err(e) = r {
            if wrote {
                self.remove_side_file(&to_dir, &to);
            }
            from_dir.entries_changed();
            to_dir.entries_changed();
            return Err(e.into());
        }
        // A file renamed over loses its name (not in an exchange).
        if flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == 0 {
            self.left(leaving);
            self.removed();
        }
        // After an exchange both names still exist, and the whiteout keeps the old one;
        // otherwise the old name is gone.
        if flags & (RENAME_EXCHANGE | RENAME_WHITEOUT) == 0
            && !(from_dir.ino == to_dir.ino && from.entry == to.entry)
        {
            self.remove_side_file(&from_dir, &from);
        }
        if flags & RENAME_WHITEOUT != 0
            && let Some(c) = caller
            && let Err(e) = rustix::fs::openat(
                &from_dir.fd,
                &from.entry,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(VfsError::from)
            .and_then(|fd| {
                // Only the whiteout (a rename between two links of one inode changes nothing
                // and leaves the file itself there).
                let st = rustix::fs::fstat(&fd)?;
                if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != 0 {
                    return Ok(());
                }
                self.set_owner(&from_dir, &fd, c)
            })
        {
            // The rename is done and cannot be taken back atomically; the whiteout keeps the
            // daemon as its owner, which nothing that reads whiteouts looks at.
            tracing::warn!("a whiteout is left owned by the daemon: {e}");
        }
        from_dir.entries_changed();
        to_dir.entries_changed();
        Ok(())
    }

    /// Renames a directory over a directory that is empty but for kmsfs-internal files (which the
    /// backing `rename` would refuse as ENOTEMPTY), lending the target its owner bits when
    /// `lend` (see [`lending`]).
    fn rename_over_dir(
        &self,
        from_dir: &Node,
        from: &OsStr,
        to_dir: &Node,
        to: &OsStr,
        flags: RenameFlags,
        lend: bool,
    ) -> std::result::Result<(), Errno> {
        let _gap = self.dirid_gap.write().unwrap_or_else(|p| p.into_inner());
        let (d, saved, mode) = self.open_and_strip(to_dir, to, lend).map_err(|e| match e {
            VfsError::Sys(e) => e,
            _ => Errno::IO,
        })?;
        let r = crate::fault::check("rename")
            .and_then(|()| rustix::fs::renameat_with(&from_dir.fd, from, &to_dir.fd, to, flags));
        if r.is_err() {
            restore_dirid(&d, saved);
            if let Some(m) = mode {
                restore_mode(to_dir, to, m);
            }
        }
        r
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        self.touch();
        self.refuse_control(newparent, newname)?;
        if is_control(ino) {
            return Err(VfsError::Control(
                libc::EPERM,
                "control files cannot be linked".into(),
            ));
        }
        self.check_writable()?;
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(Errno::PERM.into());
        }
        self.refuse_append_only(&node)?;
        let dir = self.dir_node(newparent)?;
        let cn = self.new_cipher_name(&dir, newname)?;
        self.create_entry(&dir, &cn, || {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, go through /proc.
            crate::fault::check("link")?;
            let r = rustix::fs::linkat(&node.fd, "", &dir.fd, &cn.entry, AtFlags::EMPTY_PATH);
            if let Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) = r {
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    node.proc_path().as_str(),
                    &dir.fd,
                    &cn.entry,
                    AtFlags::SYMLINK_FOLLOW,
                )?;
            } else {
                r?;
            }
            // Not registered (EMFILE, say): the new name goes again, so that a failed link
            // leaves nothing behind.
            self.intern_child(&dir, &cn.entry, newname)
                .map(|(_, a)| a)
                .inspect_err(|_| {
                    let _ = rustix::fs::unlinkat(&dir.fd, &cn.entry, AtFlags::empty());
                })
        })
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: &Caller,
    ) -> Result<Attr> {
        self.touch();
        self.refuse_control(parent, name)?;
        self.check_writable()?;
        let dir = self.dir_node(parent)?;
        let cn = self.new_cipher_name(&dir, name)?;
        let (stored, side) = self.stored_target(target.as_bytes())?;
        let made = self.create_entry(&dir, &cn, || {
            crate::fault::check("symlink")?;
            rustix::fs::symlinkat(stored.as_str(), &dir.fd, &cn.entry)?;
            // A failure after the symlink exists removes it (and gives the lookup back).
            let undo = |node: Option<&Node>| {
                let _ = rustix::fs::unlinkat(&dir.fd, &cn.entry, AtFlags::empty());
                if let Some(n) = node {
                    self.forget(n.ino, 1);
                }
            };
            let (node, attr) = self
                .intern_child(&dir, &cn.entry, name)
                .inspect_err(|_| undo(None))?;
            if self.chown_new {
                return self
                    .set_owner(&dir, &node.fd, caller)
                    .and_then(|()| self.stat_node(&node))
                    .inspect_err(|_| undo(Some(&node)));
            }
            Ok(attr)
        });
        if made.is_err()
            && let Some(id) = side
        {
            self.forget_side_target(&id);
        }
        made
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        self.touch();
        if is_control(ino) {
            return self
                .control
                .readlink(ino)
                .map_err(super::control_ops::ctl_err);
        }
        let node = self.node(ino)?;
        if node.kind != Kind::Symlink {
            return Err(Errno::INVAL.into());
        }
        self.read_target(&node)
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: &Caller,
    ) -> Result<Attr> {
        self.touch();
        self.refuse_control(parent, name)?;
        self.check_writable()?;
        if Kind::from_mode(mode) == Kind::File {
            let (attr, fh) =
                self.create(parent, name, mode, libc::O_WRONLY | libc::O_EXCL, caller)?;
            self.release(fh)?;
            return Ok(attr);
        }
        let dir = self.dir_node(parent)?;
        let cn = self.new_cipher_name(&dir, name)?;
        let ft = rustix::fs::FileType::from_raw_mode(mode);
        let inh = self.inherit(&dir, mode, caller.umask)?;
        self.create_entry(&dir, &cn, || {
            rustix::fs::mknodat(
                &dir.fd,
                &cn.entry,
                ft,
                Mode::from(inh.mode & 0o7777),
                rdev.into(),
            )?;
            let made = || -> Result<()> {
                let fd = rustix::fs::openat(
                    &dir.fd,
                    &cn.entry,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if self.chown_new {
                    self.set_owner(&dir, &fd, caller)?;
                }
                self.write_inherited(&fd, Kind::from_mode(mode), &inh)
            };
            let made = made().and_then(|()| self.intern_child(&dir, &cn.entry, name));
            if made.is_err() {
                let _ = rustix::fs::unlinkat(&dir.fd, &cn.entry, AtFlags::empty());
            }
            Ok(made?.1)
        })
    }
}

/// Writes `id` as the id of the new (or emptied) directory `d`: the copy in its xattr first (a
/// crash before the file is written leaves a directory the mount reads by its copy, and fsck
/// completes), then `kmsfs.dirid`. Without the copy (no user xattrs on the backing file system,
/// or refused) the file is the only id, so it is on disk before anything is named with it (a
/// power loss would otherwise leave it empty under entries fsync'd later); the copy, where there
/// is one, is in the directory's inode: journaled metadata.
pub(super) fn write_dir_id(d: &OwnedFd, id: &DirId) -> Result<()> {
    let copied = crate::fsutil::write_dirid_copy(d, id.as_bytes())
        .inspect_err(|e| tracing::debug!("no copy of the directory id in an xattr: {e}"))
        .is_ok();
    crate::fault::check("create")?;
    let f = std::fs::File::from(rustix::fs::openat(
        d,
        DIRID_FILE,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from(0o400),
    )?);
    std::io::Write::write_all(&mut &f, id.as_bytes())?;
    if !copied {
        rustix::fs::fdatasync(&f)?;
    }
    Ok(())
}

/// Empties a directory that holds nothing but kmsfs-internal files (its directory id and
/// long-name side files whose entry is gone), so that the backing `rmdir` or `rename` over it
/// succeeds; ENOTEMPTY if it holds anything else. Returns the unlinked directory id file, still
/// open, for [`restore_dirid`].
fn strip_internal(d: &OwnedFd) -> Result<Option<std::fs::File>> {
    let mut dirid = false;
    let mut orphans = Vec::new();
    for e in rustix::fs::Dir::read_from(d)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        if n == DIRID_FILE.as_bytes() {
            dirid = true;
            continue;
        }
        // A long-name side file whose entry is gone (left by a crash) does not count.
        if let Some(base) = n.strip_suffix(LONG_NAME_SUFFIX.as_bytes())
            && n.starts_with(crate::names::LONG_NAME_PREFIX.as_bytes())
            && rustix::fs::statat(d, OsStr::from_bytes(base), AtFlags::SYMLINK_NOFOLLOW).is_err()
        {
            orphans.push(OsString::from(OsStr::from_bytes(n)));
            continue;
        }
        return Err(Errno::NOTEMPTY.into());
    }
    // The id file is kept open, not read: its content is a disk read of its own in a cold tree
    // (RMDIR median 196 µs in an rm -rf after a remount, most of it waiting for that read), and
    // it is needed only if the removal fails. The unlink loads its inode anyway. Should it not
    // open, a failed removal leaves the directory with its xattr copy, which readers use first.
    let saved = if dirid {
        rustix::fs::openat(
            d,
            DIRID_FILE,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(std::fs::File::from)
    } else {
        None
    };
    for o in &orphans {
        let _ = rustix::fs::unlinkat(d, o, AtFlags::empty());
    }
    if dirid {
        crate::fault::check("unlink")?;
        rustix::fs::unlinkat(d, DIRID_FILE, AtFlags::empty())?;
    }
    Ok(saved)
}

/// Runs `op(false)`; if it fails with an error `is_eacces` accepts, runs `op(true)` (which may
/// lend a directory its owner bits, [`Vfs::open_and_strip`]) with the mode lock held, taken
/// before `op` takes `dirid_gap`: the order every lending takes them in (the FUSE adapter's
/// `Vfs::in_dirs` holds the mode lock around a whole operation's second try), so none waits
/// on the other.
fn lending<T, E>(
    is_eacces: impl Fn(&E) -> bool,
    op: impl Fn(bool) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    match op(false) {
        Err(e) if is_eacces(&e) => {
            let _mode = crate::fsutil::mode_lock();
            op(true)
        }
        r => r,
    }
}

/// Whether directory `entry` of `dir`, or `dir`, is immutable or append-only: its removal is
/// then refused (EPERM) whatever it holds. Only asked once a removal failed.
fn undeletable(dir: &Node, entry: &OsStr) -> bool {
    let sealed = |at: &OsStr| attributes(dir, at).is_ok_and(|a| a.intersects(SEALED));
    sealed(entry) || sealed(OsStr::new(""))
}

/// Immutable or append-only (`chattr +i`, `+a`): nothing may be removed from it, nor it.
const SEALED: rustix::fs::StatxAttributes =
    rustix::fs::StatxAttributes::IMMUTABLE.union(rustix::fs::StatxAttributes::APPEND);

/// The `statx` attributes of entry `at` of `dir` (not followed), or of `dir` itself for an
/// empty name: no descriptor to open, also for an `O_PATH` one.
fn attributes(dir: &Node, at: &OsStr) -> rustix::io::Result<rustix::fs::StatxAttributes> {
    let how = if at.is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    rustix::fs::statx(&dir.fd, at, how, rustix::fs::StatxFlags::empty()).map(|s| s.stx_attributes)
}

/// A rename to a long name writes the name's side file first, and takes it back if the rename
/// then fails; in an append-only directory (`chattr +a`) it cannot, and the side file would be
/// left orphaned. So into such a directory what would fail the rename is looked at first:
/// EPERM for a source in an append-only or immutable directory or itself such a node (the
/// backing rename would remove its entry), ENOENT for a source not there or an exchange with a
/// target not there. One `statx` of the target directory for other renames to a long name.
fn refused_into_append_only(
    from_dir: &Node,
    from: &OsStr,
    to_dir: &Node,
    to: &OsStr,
    flags: u32,
) -> Result<()> {
    // Not known (statx refused): the undo is tried as before.
    let append = rustix::fs::StatxAttributes::APPEND;
    if !attributes(to_dir, OsStr::new("")).is_ok_and(|a| a.contains(append)) {
        return Ok(());
    }
    if attributes(from_dir, OsStr::new(""))?.intersects(SEALED)
        || attributes(from_dir, from)?.intersects(SEALED)
    {
        return Err(Errno::PERM.into());
    }
    if flags & RENAME_EXCHANGE != 0 {
        rustix::fs::statat(&to_dir.fd, to, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

/// Puts back the mode of directory `entry` of `dir` that [`Vfs::open_and_strip`] changed.
fn restore_mode(dir: &Node, entry: &OsStr, mode: u32) {
    if let Err(e) = rustix::fs::chmodat(&dir.fd, entry, Mode::from(mode), AtFlags::empty()) {
        tracing::warn!("a directory not removed keeps owner rwx (its mode was {mode:o}): {e}");
    }
}

/// The content of side file `side` in `dir` (`None`: it cannot be read).
fn read_side(dir: &Node, side: &OsStr) -> Option<Vec<u8>> {
    read_side_fd(&dir.fd, side)
}

/// [`read_side`] in the directory open as `dir`.
fn read_side_fd(dir: &OwnedFd, side: &OsStr) -> Option<Vec<u8>> {
    let fd = rustix::fs::openat(dir, side, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut b = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), 4096),
        &mut b,
    )
    .ok()?;
    Some(b)
}

/// Puts back the directory id [`strip_internal`] removed (the directory stays in use).
fn restore_dirid(d: &OwnedFd, saved: Option<std::fs::File>) {
    let bytes = saved.and_then(|f| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&f, 4096), &mut b)
            .ok()
            .map(|_| b)
    });
    if let Some(b) = bytes
        && let Ok(f) = rustix::fs::openat(
            d,
            DIRID_FILE,
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from(0o400),
        )
    {
        let _ = std::io::Write::write_all(&mut &std::fs::File::from(f), &b);
    }
}

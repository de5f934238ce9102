//! Extended attributes: the `user.`, `security.` and `trusted.` namespaces, names and values
//! encrypted. `security.` holds file capabilities (`security.capability`, what `setcap` sets and
//! `rsync -X`, `cp -a` and `tar --xattrs` copy: without it a backup of `/usr` stopped with
//! errors) and whatever else a security module without labels of its own stores there; the
//! kernel asks CAP_SYS_ADMIN for `trusted.` before it asks us, and only root sees them listed.
//! POSIX ACLs (`system.posix_acl_*`) are stored the same way on a mount with `--acl`, where the
//! kernel enforces them (see `acl_ops`). Not supported (EOPNOTSUPP for reading, writing and
//! removing, as a local file system without them answers): ACLs without `--acl` (kmsfs would
//! store them without the kernel enforcing them), the rest of `system.`, and
//! `security.selinux` (on a host running SELinux the kernel labels FUSE mounts itself
//! and never asks; `ls -l` asks for it and, told "not supported", stops asking on this file
//! system after the first file, where ENODATA cost a round trip per file). `cp -a`, `rsync -AX`
//! and `tar --acls` take that as "no ACLs/labels here".
//!
//! Names other than `user.` ones are stored, inside the encryption, as a NUL byte and the full
//! name (`\0security.capability`): no `user.` name holds a NUL byte, so the two cannot meet.
//!
//! Values up to [`PACK_VALUE_MAX`] bytes are kept together in one backing xattr per file, the
//! pack (`format::xattr_pack`): each backing xattr costs its encrypted name and 28 bytes of nonce
//! and tag, so one apiece fitted a third of what ext4 holds in an inode's xattr block (49 small
//! attributes against 148; Python's `test_os` sets 100). Larger values, and any that the backing
//! file system cannot fit into the pack, are stored on their own as before (docs/FORMAT.md §7).
//! An attribute is in one place; if a crash leaves it in both (between the two writes of a
//! move), the pack's copy is the one read, and the other is removed at its next change.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use super::acl_ops::AclKind;
use super::{Caller, Kind, Result, Vfs, VfsError};
use crate::content::pending::xattr_lock;
use crate::format::acl;
use crate::format::xattr_pack::{BackingNamespace, XattrPack};
use crate::names::XATTR_PACK;

const USER: &[u8] = b"user.";
const TRUSTED: &[u8] = b"trusted.";
const SYSTEM: &[u8] = b"system.";
/// Namespaces stored under their full name (see above).
const OTHER_NAMESPACES: [&[u8]; 2] = [b"security.", TRUSTED];
/// Not stored although in `security.` (see above).
const SELINUX: &[u8] = b"security.selinux";
/// Values up to this size go into the file's pack.
pub const PACK_VALUE_MAX: usize = 1024;
/// The largest xattr value Linux takes (XATTR_SIZE_MAX), plus room for nonce and tag.
const STORED_MAX: usize = 65536 + 64;

/// Answer to getxattr/listxattr: the size asked for with size 0, or the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

fn reply(data: Vec<u8>, size: u32) -> Result<XattrReply> {
    if size == 0 {
        Ok(XattrReply::Size(data.len() as u32))
    } else if data.len() > size as usize {
        Err(Errno::RANGE.into())
    } else {
        Ok(XattrReply::Data(data))
    }
}

/// A node's backing inode as its attributes are stored there: in the backing namespace
/// `format::xattr_pack::BackingNamespace` gives its kind (which for symlinks and special files
/// needs the daemon to run as root; else EPERM). `user.` attributes of those are refused, as
/// on any file system.
pub(super) struct Target {
    path: String,
    kind: Kind,
}

impl Target {
    /// The inode open as `path` (a `/proc/self/fd` path), of kind `kind`.
    pub(super) fn at(path: String, kind: Kind) -> Target {
        Target { path, kind }
    }

    fn ns(&self) -> BackingNamespace {
        BackingNamespace::of(matches!(self.kind, Kind::File | Kind::Dir))
    }

    fn in_trusted(&self) -> bool {
        self.ns() == BackingNamespace::Trusted
    }

    /// Runs a backing xattr call that needs owner bits `need` of a file or directory's mode
    /// (reading `user.` attributes needs read permission, changing them write permission), the
    /// bits lent where a daemon that is not root lacks them (`fsutil::with_owner_bits`): the
    /// pack holding a file's attributes and ACLs is read for any change, and an ACL is
    /// changed, and any attribute listed, without those permissions on ext4.
    fn owner<T>(
        &self,
        need: u32,
        mut op: impl FnMut() -> rustix::io::Result<T>,
    ) -> rustix::io::Result<T> {
        if self.in_trusted() {
            return op();
        }
        crate::fsutil::with_owner_bits(&self.path, need, op)
    }

    /// The backing name for `name` (in its `user.` form).
    fn backing<'a>(&self, name: &'a str) -> Cow<'a, str> {
        match self.ns().backing(name.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(name),
            // Only the ASCII prefix was replaced.
            Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
        }
    }

    /// The `user.` form of a backing name listed on the inode (`None`: not one of ours).
    fn logical<'a>(&self, raw: &'a str) -> Option<Cow<'a, str>> {
        if !self.in_trusted() {
            return Some(Cow::Borrowed(raw));
        }
        match self.ns().logical(raw.as_bytes())? {
            Cow::Borrowed(_) => Some(Cow::Borrowed(raw)),
            Cow::Owned(b) => Some(Cow::Owned(String::from_utf8_lossy(&b).into_owned())),
        }
    }
}

impl Vfs {
    pub(super) fn xattr_target(&self, ino: u64) -> Result<Target> {
        let n = self.node(ino)?;
        Ok(Target::at(n.proc_path(), n.kind))
    }

    /// The name `name` is stored under: the part after `user.`, or a NUL byte and the whole
    /// name for the other namespaces kept (the two POSIX ACL names with `--acl`; EOPNOTSUPP
    /// for the rest).
    fn stored_name<'a>(&self, name: &'a OsStr) -> Result<Cow<'a, [u8]>> {
        let name = name.as_bytes();
        let stored = if let Some(suffix) = name.strip_prefix(USER) {
            Cow::Borrowed(suffix)
        } else if (OTHER_NAMESPACES
            .iter()
            .any(|ns| name.len() > ns.len() && name.starts_with(ns))
            && name != SELINUX)
            || (self.opts.acl && (name == acl::ACCESS || name == acl::DEFAULT))
        {
            Cow::Owned([&[0u8][..], name].concat())
        } else {
            return Err(VfsError::NotSupported(
                "only user.*, security.* and trusted.* extended attributes",
            ));
        };
        // A pack entry's name length is one byte: a `trusted.`/`security.` name (stored with
        // its zero byte) may have 254 bytes, one less than the kernel allows.
        if stored.is_empty() {
            return Err(VfsError::Invalid("empty xattr name"));
        }
        if stored.len() > 255 {
            return Err(Errno::RANGE.into());
        }
        Ok(stored)
    }

    /// Appends the name stored as `stored` as listxattr gives it (NUL-terminated); `trusted.`
    /// names only if `trusted`, ACLs only if `acl` (without `--acl` a stored ACL is not
    /// listed: it could be neither read nor copied).
    fn push_listed(out: &mut Vec<u8>, stored: &[u8], trusted: bool, acl: bool) {
        let full = crate::format::xattr_pack::full_name(stored);
        if (!trusted && full.starts_with(TRUSTED)) || (!acl && full.starts_with(SYSTEM)) {
            return;
        }
        out.extend_from_slice(&full);
        out.push(0);
    }

    /// A backing xattr's stored bytes, `None` if the file has none of that name.
    fn read_backing_xattr(t: &Target, bname: &str) -> Result<Option<Vec<u8>>> {
        let (path, bname) = (t.path.as_str(), &*t.backing(bname));
        let mut buf = vec![0u8; 4096];
        let r = match t.owner(libc::S_IRUSR, || {
            rustix::fs::getxattr(path, bname, &mut buf[..])
        }) {
            Err(Errno::RANGE) => {
                buf = vec![0u8; STORED_MAX];
                t.owner(libc::S_IRUSR, || {
                    rustix::fs::getxattr(path, bname, &mut buf[..])
                })
            }
            r => r,
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            // ERANGE again: a name longer than the backing file system takes is not there.
            Err(Errno::NODATA | Errno::RANGE) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn read_pack(&self, ino: u64, t: &Target) -> Result<XattrPack> {
        let Some(stored) = Self::read_backing_xattr(t, XATTR_PACK)? else {
            return Ok(XattrPack::default());
        };
        let failed = || {
            VfsError::Integrity(format!(
                "inode {ino}: extended attributes (pack) failed authentication"
            ))
        };
        let plain = self
            .names
            .decrypt_xattr_pack(&stored)
            .map_err(|_| failed())?;
        XattrPack::decode(&plain).map_err(|_| failed())
    }

    /// Removes a backing xattr; whether it was there (ERANGE: a name longer than the backing
    /// file system takes is not).
    fn remove_backing_xattr(t: &Target, bname: &str) -> std::result::Result<bool, Errno> {
        let bname = t.backing(bname);
        match t.owner(libc::S_IWUSR, || {
            rustix::fs::removexattr(t.path.as_str(), &*bname)
        }) {
            Ok(()) => Ok(true),
            Err(Errno::NODATA | Errno::RANGE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes the pack (removes it when empty).
    fn write_pack(&self, t: &Target, pack: &XattrPack) -> std::result::Result<(), Errno> {
        if pack.is_empty() {
            return Self::remove_backing_xattr(t, XATTR_PACK).map(|_| ());
        }
        let stored = self.names.encrypt_xattr_pack(&pack.encode());
        Self::write_backing_xattr(t, XATTR_PACK, &stored)
    }

    /// E2BIG from the backing store means the value encrypted passed the kernel's 64 KiB
    /// limit while the caller's own value was within it: no room, ENOSPC, as ext4 answers for a
    /// value that does not fit.
    fn write_backing_xattr(t: &Target, bname: &str, v: &[u8]) -> std::result::Result<(), Errno> {
        let bname = t.backing(bname);
        t.owner(libc::S_IWUSR, || {
            rustix::fs::setxattr(t.path.as_str(), &*bname, v, XattrFlags::empty())
        })
        .map_err(|e| if e == Errno::TOOBIG { Errno::NOSPC } else { e })
    }

    /// A `user.` attribute (stored name without the leading zero byte) on a symlink or
    /// special file: Linux allows none (EPERM to change, ENODATA to read).
    fn user_on_special(t: &Target, stored: &[u8]) -> bool {
        t.in_trusted() && stored.first() != Some(&0)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.setxattr_as(ino, name, value, flags, None)
    }

    /// setxattr for `caller` (who matters for an access ACL: see `acl_ops`).
    pub fn setxattr_as(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Option<&Caller>,
    ) -> Result<()> {
        if super::is_control(ino) {
            return Err(VfsError::Control(
                libc::EPERM,
                "control files have no extended attributes".into(),
            ));
        }
        self.check_writable()?;
        self.refuse_append_only_ino(ino)?;
        let stored = self.stored_name(name)?;
        if let Some(which) = AclKind::of(&stored) {
            return self.set_acl(ino, which, value, caller);
        }
        let t = self.xattr_target(ino)?;
        if Self::user_on_special(&t, &stored) {
            return Err(Errno::PERM.into());
        }
        self.set_stored(ino, &t, &stored, value, flags)
    }

    /// Stores attribute `suffix` (its stored name) of inode `ino` (at `t`), in the pack or on
    /// its own.
    pub(super) fn set_stored(
        &self,
        ino: u64,
        t: &Target,
        suffix: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let bname = self.names.encrypt_xattr_name(suffix);
        let _g = xattr_lock(ino);
        let pack = self.read_pack(ino, t)?;
        let in_pack = pack.get(suffix).is_some();
        // The copy stored on its own, if any (kept to put back should the change be undone).
        let before = Self::read_backing_xattr(t, &bname)?;
        let single = before.is_some();
        let flags = XattrFlags::from_bits_retain(flags as _);
        if flags.contains(XattrFlags::CREATE) && (in_pack || single) {
            return Err(Errno::EXIST.into());
        }
        if flags.contains(XattrFlags::REPLACE) && !(in_pack || single) {
            return Err(Errno::NODATA.into());
        }
        // The value it has already: nothing is written, as ext4 writes nothing then (the
        // encrypted copy written again would move the backing file's ctime: `git status` and
        // backup tools would see the file changed).
        let same = match pack.get(suffix) {
            Some(v) => v == value,
            None => before.as_ref().is_some_and(|b| {
                self.names
                    .decrypt_xattr_value(&bname, b)
                    .is_ok_and(|v| v == value)
            }),
        };
        if same {
            // But as on ext4 an immutable or append-only node refuses any setxattr (the
            // backing file system would have refused the write).
            let fixed = self.inode_flags(ino).is_ok_and(|f| {
                let f = rustix::fs::IFlags::from_bits_retain(f);
                f.intersects(rustix::fs::IFlags::IMMUTABLE | rustix::fs::IFlags::APPEND)
            });
            return if fixed {
                Err(Errno::PERM.into())
            } else {
                Ok(())
            };
        }
        crate::fault::check("setxattr")?;
        // A regular file keeps room for the interrupted-write marker (`content::pending`): a
        // change after which the marker no longer fits, where it did before, is undone (ENOSPC),
        // as if the attributes had filled up. A file without that room already (filled by an
        // older kmsfs) takes changes as the backing file system does.
        let probe = t.kind == Kind::File && crate::content::pending::marker_fits(&t.path);
        let room = |t: &Target| !probe || crate::content::pending::marker_fits(&t.path);
        let restore_single = |t: &Target| match &before {
            Some(b) => Self::write_backing_xattr(t, &bname, b),
            None => Self::remove_backing_xattr(t, &bname).map(|_| ()),
        };
        if value.len() <= PACK_VALUE_MAX {
            let mut grown = pack.clone();
            grown.set(suffix, value);
            match self.write_pack(t, &grown) {
                Ok(()) => {
                    // A copy the pack now shadows: left behind, it goes at the next change.
                    if single && let Err(e) = Self::remove_backing_xattr(t, &bname) {
                        tracing::debug!("removing a shadowed xattr copy: {e}");
                    }
                    if room(t) {
                        return Ok(());
                    }
                    // Undone: the old copy on its own first (the pack's shadows it), then the
                    // old pack. Should that fail, the new value stands, and is what is read.
                    if single && restore_single(t).is_err() {
                        return Ok(());
                    }
                    return match self.write_pack(t, &pack) {
                        Ok(()) => Err(Errno::NOSPC.into()),
                        Err(_) => Ok(()),
                    };
                }
                // The pack is full on this file system: the value goes on its own.
                Err(Errno::NOSPC | Errno::TOOBIG | Errno::RANGE) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let v = self.names.encrypt_xattr_value(&bname, value);
        Self::write_backing_xattr(t, &bname, &v)?;
        // Until the pack lets go of its copy, that copy is the one read (the old value).
        if in_pack {
            let mut without = pack.clone();
            without.remove(suffix);
            self.write_pack(t, &without)?;
        }
        if room(t) {
            return Ok(());
        }
        // Undone: the pack's copy first (it wins), then the one on its own.
        if in_pack {
            if self.write_pack(t, &pack).is_err() {
                return Ok(());
            }
            let _ = restore_single(t);
            return Err(Errno::NOSPC.into());
        }
        match restore_single(t) {
            Ok(()) => Err(Errno::NOSPC.into()),
            Err(_) => Ok(()),
        }
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> Result<XattrReply> {
        let stored = self.stored_name(name)?;
        if super::is_control(ino) {
            return Err(Errno::NODATA.into());
        }
        let t = self.xattr_target(ino)?;
        if Self::user_on_special(&t, &stored) {
            return Err(Errno::NODATA.into());
        }
        let mut v = self.get_stored(ino, &t, &stored)?.ok_or(Errno::NODATA)?;
        if AclKind::of(&stored) == Some(AclKind::Access) {
            v = self.access_acl_read(&*self.node(ino)?, &v)?;
        }
        reply(v, size)
    }

    /// Whether the backing inode certainly holds none of kmsfs's encrypted attributes (its
    /// listing has no name under `user.kmsfs.`, in the node's backing namespace). A listing
    /// that does not fit the buffer says nothing (false).
    fn holds_no_attributes(t: &Target) -> bool {
        let mut buf = [0u8; 1024];
        let Ok(n) = rustix::fs::listxattr(t.path.as_str(), &mut buf[..]) else {
            return false;
        };
        !buf[..n]
            .split(|b| *b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .filter_map(|s| t.logical(s))
            .any(|s| s.starts_with(crate::names::XATTR_PREFIX))
    }

    /// The value of attribute `suffix` (its stored name), `None` if there is none.
    pub(super) fn get_stored(
        &self,
        ino: u64,
        t: &Target,
        suffix: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let _g = xattr_lock(ino);
        // Most nodes have no attributes of their own (the kernel asks every new file for
        // `security.capability`, and with ACLs every node for its ACL): one listing answers
        // them, where the pack and the single copy were two reads (and the name an encryption).
        if Self::holds_no_attributes(t) {
            return Ok(None);
        }
        if let Some(v) = self.read_pack(ino, t)?.get(suffix) {
            return Ok(Some(v.to_vec()));
        }
        let bname = self.names.encrypt_xattr_name(suffix);
        let Some(stored) = Self::read_backing_xattr(t, &bname)? else {
            return Ok(None);
        };
        let v = self
            .names
            .decrypt_xattr_value(&bname, &stored)
            .map_err(|_| {
                VfsError::Integrity(format!(
                    "inode {ino}: extended attribute value failed authentication"
                ))
            })?;
        Ok(Some(v))
    }

    /// Every attribute's name, `trusted.` ones included.
    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply> {
        self.listxattr_for(ino, size, true)
    }

    /// The attributes' names; `trusted.` ones only when `trusted` (a caller with
    /// CAP_SYS_ADMIN, as a local file system lists them).
    pub fn listxattr_for(&self, ino: u64, size: u32, trusted: bool) -> Result<XattrReply> {
        if super::is_control(ino) {
            return Ok(if size == 0 {
                XattrReply::Size(0)
            } else {
                XattrReply::Data(Vec::new())
            });
        }
        let t = self.xattr_target(ino)?;
        let mut out = Vec::new();
        let _g = xattr_lock(ino);
        let mut buf = vec![0u8; 65536];
        let n = rustix::fs::listxattr(t.path.as_str(), &mut buf[..])?;
        // Ours, in their `user.` form.
        let raw: Vec<Cow<'_, str>> = buf[..n]
            .split(|b| *b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .filter(|s| !s.is_empty())
            .filter_map(|s| t.logical(s))
            .collect();
        let pack = if raw.iter().any(|s| s == XATTR_PACK) {
            self.read_pack(ino, &t)?
        } else {
            XattrPack::default()
        };
        let acl = self.opts.acl;
        let mut push = |name: &[u8]| Self::push_listed(&mut out, name, trusted, acl);
        pack.names().for_each(&mut push);
        for s in &raw {
            if let Some(name) = self.names.decrypt_xattr_name(s)
                && pack.get(&name).is_none()
            {
                push(&name);
            }
        }
        reply(out, size)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.removexattr_as(ino, name, None)
    }

    /// removexattr for `caller` (named in the audit record of an ACL's removal).
    pub fn removexattr_as(&self, ino: u64, name: &OsStr, caller: Option<&Caller>) -> Result<()> {
        if super::is_control(ino) {
            return Err(VfsError::Control(
                libc::EPERM,
                "control files have no extended attributes".into(),
            ));
        }
        self.check_writable()?;
        self.refuse_append_only_ino(ino)?;
        let stored = self.stored_name(name)?;
        let t = self.xattr_target(ino)?;
        if Self::user_on_special(&t, &stored) {
            return Err(Errno::PERM.into());
        }
        if let Some(which) = AclKind::of(&stored) {
            return self.remove_acl(ino, which, caller);
        }
        self.remove_stored(ino, &t, &stored)
    }

    /// Removes attribute `suffix` (its stored name); ENODATA if there is none.
    pub(super) fn remove_stored(&self, ino: u64, t: &Target, suffix: &[u8]) -> Result<()> {
        let bname = self.names.encrypt_xattr_name(suffix);
        let _g = xattr_lock(ino);
        let mut pack = self.read_pack(ino, t)?;
        crate::fault::check("removexattr")?;
        // The copy on its own first: while the pack holds one, that one is what is read, so a
        // stop in between never brings back an older value.
        let single = Self::remove_backing_xattr(t, &bname)?;
        if pack.remove(suffix) {
            self.write_pack(t, &pack)?;
        } else if !single {
            return Err(Errno::NODATA.into());
        }
        Ok(())
    }
}

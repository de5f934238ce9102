//! Directory listing: opendir takes a snapshot of the decrypted entries; readdir serves it by
//! index (the offset the kernel passes back is the index of the next entry). Entries whose names
//! fail to decrypt are skipped and logged, never shown as garbage.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::inode::ROOT_INO;
use super::{Attr, Kind, Result, Vfs, VfsError};
use crate::names::{EntryKind, LONG_NAME_SUFFIX};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: OsString,
    /// The entry's name in the cipher directory (empty for `.` and `..`).
    pub cipher_name: OsString,
}

/// A readdirplus entry: the offset of the entry after it, the entry, its attributes.
pub type PlusEntry = (u64, DirEntry, Attr);

#[derive(Debug)]
pub struct DirHandle {
    ino: u64,
    /// The snapshot, and whether it was taken by opendir and not served yet (so the first
    /// readdir at offset 0 need not list the directory again).
    entries: Mutex<(Vec<DirEntry>, bool)>,
}

impl Vfs {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        self.touch();
        let entries = self.list_dir(ino)?;
        if !super::is_control(ino)
            && let Ok(dir) = self.node(ino)
        {
            self.prefetch.listed(&dir, &entries);
        }
        let fh = self.new_fh();
        self.dirs.insert(
            fh,
            DirHandle {
                ino,
                entries: Mutex::new((entries, true)),
            },
        );
        Ok(fh)
    }

    /// Entries from index `offset` on. Offset 0 (a rewind) takes a fresh snapshot.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        self.readdir_batch(fh, offset, usize::MAX).map(|(e, _)| e)
    }

    /// At most `limit` entries from index `offset` on, and the offset to go on from (`None`:
    /// the end). A reply holds what fits in the kernel's buffer: asking for all that remains
    /// every time would make listing a large directory quadratic.
    pub fn readdir_batch(
        &self,
        fh: u64,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<DirEntry>, Option<u64>)> {
        self.touch();
        let h = self.dirs.get(&fh).ok_or(super::VfsError::BadHandle(fh))?;
        let mut e = h.entries.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 && !e.1 {
            e.0 = self.list_dir(h.ino)?;
        }
        e.1 = false;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(e.0.len());
        let end = start.saturating_add(limit).min(e.0.len());
        Ok((
            e.0[start..end].to_vec(),
            (end < e.0.len()).then_some(end as u64),
        ))
    }

    /// Like [`Vfs::readdir`], with each entry's attributes and the offset of the entry after
    /// it (entries gone since the snapshot are left out, so offsets are not consecutive). Every
    /// entry but `.` and `..` counts one lookup (the kernel takes them as looked up); the caller
    /// must [`Vfs::forget`] entries it could not pass on.
    pub fn readdirplus(&self, fh: u64, offset: u64) -> Result<Vec<PlusEntry>> {
        self.readdirplus_batch(fh, offset, usize::MAX)
            .map(|(e, _)| e)
    }

    /// Like [`Vfs::readdirplus`] for the snapshot entries `offset..offset + limit`, and the
    /// offset to go on from (see [`Vfs::readdir_batch`]). An entry that cannot be opened for a
    /// reason other than being gone (EMFILE: every inode the kernel holds costs a descriptor)
    /// ends the batch there, or fails it if it is the first: a listing never leaves out an
    /// entry that exists.
    pub fn readdirplus_batch(
        &self,
        fh: u64,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<PlusEntry>, Option<u64>)> {
        let (entries, mut more) = self.readdir_batch(fh, offset, limit)?;
        let entries = entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| (offset + i as u64 + 1, e));
        let ino = self
            .dirs
            .get(&fh)
            .map(|h| h.ino)
            .ok_or(super::VfsError::BadHandle(fh))?;
        if super::is_control(ino) {
            return Ok((
                entries
                    .filter_map(|(next, e)| self.ctl_entry_attr(&e).map(|a| (next, e, a)))
                    .collect(),
                more,
            ));
        }
        let dir = self.dir_node(ino)?;
        let mut out = Vec::new();
        for (next, e) in entries {
            if e.cipher_name.is_empty() {
                let st = rustix::fs::statat(
                    &dir.fd,
                    if e.name == "." { "." } else { ".." },
                    AtFlags::empty(),
                )?;
                let mut a = Attr::from_stat(&st, e.ino, &self.layout);
                a.ino = e.ino;
                out.push((next, e, a));
                continue;
            }
            match self.intern_child(&dir, &e.cipher_name) {
                Ok((_, attr)) => out.push((next, DirEntry { ino: attr.ino, ..e }, attr)),
                // Gone since the snapshot: leave it out.
                Err(VfsError::Sys(Errno::NOENT)) => {}
                Err(err) if out.is_empty() => return Err(err),
                Err(_) => {
                    more = Some(next - 1);
                    break;
                }
            }
        }
        Ok((out, more))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }

    /// The decrypted listing of a directory, with `.` and `..` first.
    pub fn list_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        if super::is_control(ino) {
            return self.ctl_list(ino);
        }
        let dir = self.dir_node(ino)?;
        let dir_id = self.dir_id(&dir)?;
        let fd = rustix::fs::openat(
            &dir.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let parent_ino = if ino == ROOT_INO {
            ROOT_INO
        } else {
            self.inodes
                .map_ino(rustix::fs::statat(&fd, "..", AtFlags::empty())?.st_ino)
        };
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
                cipher_name: OsString::new(),
            },
            DirEntry {
                ino: parent_ino,
                kind: Kind::Dir,
                name: "..".into(),
                cipher_name: OsString::new(),
            },
        ];
        let at_root = ino == ROOT_INO;
        for e in rustix::fs::Dir::read_from(&fd)? {
            let e = e?;
            let raw = e.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let plain = match self.names.classify(raw, at_root) {
                EntryKind::Internal => continue,
                EntryKind::Long => {
                    let mut side = raw.to_vec();
                    side.extend_from_slice(LONG_NAME_SUFFIX.as_bytes());
                    match super::read_small_at(&fd, OsStr::from_bytes(&side)) {
                        Some(enc) => self.names.decrypt(&dir_id, &enc),
                        None => Err(crate::names::NameError::Undecryptable),
                    }
                }
                EntryKind::Name(n) => self.names.decrypt(&dir_id, n),
            };
            let Ok(plain) = plain else {
                tracing::warn!(dir = %self.label(&dir), entry = %String::from_utf8_lossy(raw), "skipping entry whose name does not decrypt (modified or moved here)");
                continue;
            };
            let kind = match e.file_type() {
                rustix::fs::FileType::Unknown => {
                    match rustix::fs::statat(&fd, e.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => Kind::from_mode(st.st_mode),
                        Err(_) => continue,
                    }
                }
                ft => Kind::from_mode(ft.as_raw_mode()),
            };
            out.push(DirEntry {
                ino: self.inodes.map_ino(e.ino()),
                kind,
                name: OsString::from(OsStr::from_bytes(&plain)),
                cipher_name: OsStr::from_bytes(raw).to_os_string(),
            });
        }
        Ok(out)
    }
}

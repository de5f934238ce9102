//! A directory left without any id by a mkdir cut short (the daemon killed between the backing
//! `mkdir` and writing the id's xattr copy) is given a new id when it is first used, instead of
//! failing every listing and lookup in it with EIO until `kmsfs fsck --repair`.
//!
//! Safe because such a directory holds nothing: no name was ever bound to the lost id, so a new
//! one loses nothing (the rule `kmsfs fsck --repair` applies too). A directory that holds
//! anything besides an empty `kmsfs.dirid` is left alone and stays an integrity error: its
//! names cannot be read without the id they were made under.

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::inode::Node;
use super::{Result, Vfs};
use crate::format::DirId;
use crate::names::DIRID_FILE;

/// What a directory without a readable id holds.
enum Contents {
    /// Nothing, or only an id file of 0 bytes (`id_file`): an id can be made.
    Empty { id_file: bool },
    /// An id file of 16 bytes, written after the caller looked (a mkdir finishing).
    Id(DirId),
    /// Anything else: not ours to decide.
    Other,
}

impl Vfs {
    /// The id of `dir` when it has none on disk (no 16-byte copy, no 16-byte `kmsfs.dirid`) and
    /// holds nothing: a new one, written (copy first, then the file, as `mkdir` does) and used
    /// from now on; on a read-only mount one made up for this call only, never kept, since the
    /// mount may be made writable and names must only ever be bound to an id on disk. `None`
    /// when the directory holds anything (damage, for the caller to report). Takes `dirid_gap`
    /// for writing: call without it.
    pub(super) fn heal_dir_id(&self, dir: &Node) -> Result<Option<DirId>> {
        let gap = self.dirid_gap.write().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = dir.dir_id_switched.get().or_else(|| dir.dir_id.get()) {
            return Ok(Some(*id));
        }
        let d = rustix::fs::openat(
            &dir.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Looked at again under the lock: a mkdir holds it (shared) until its id is written.
        if let Some(b) = crate::fsutil::read_dirid_copy_fd(&d)
            && let Ok(id) = <[u8; 16]>::try_from(b.as_slice())
        {
            return Ok(Some(*dir.dir_id.get_or_init(|| DirId(id))));
        }
        let id_file = match contents(&d)? {
            Contents::Other => return Ok(None),
            Contents::Id(id) => return Ok(Some(*dir.dir_id.get_or_init(|| id))),
            Contents::Empty { id_file } => id_file,
        };
        if rustix::fs::fstat(&d)?.st_nlink == 0 {
            return Err(Errno::NOENT.into());
        }
        let id = DirId::generate();
        if self.read_only_now() {
            tracing::warn!(
                path = %self.label(dir),
                "directory without an id and empty (a mkdir cut short): read with a made-up id \
                 on this read-only mount; a writable mount gives it one"
            );
            return Ok(Some(id));
        }
        if id_file {
            rustix::fs::unlinkat(&d, DIRID_FILE, AtFlags::empty())?;
        }
        super::dir_ops::write_dir_id(&d, &id)?;
        tracing::warn!(
            path = %self.label(dir),
            "directory without an id and empty (a mkdir cut short by a killed daemon): given a new id"
        );
        let id = *dir.dir_id.get_or_init(|| id);
        // After the lock: `dir_id_file`'s initializers take it (shared), and a `set` waits
        // for one running.
        drop(gap);
        let _ = dir.dir_id_file.set(None);
        Ok(Some(id))
    }
}

/// What the open directory `d` holds besides `.` and `..` (see [`Contents`]).
fn contents(d: &impl AsFd) -> Result<Contents> {
    let mut id_file = false;
    for e in rustix::fs::Dir::read_from(d)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        if n != DIRID_FILE.as_bytes() {
            return Ok(Contents::Other);
        }
        let st = rustix::fs::statat(d, DIRID_FILE, AtFlags::SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(Contents::Other);
        }
        match st.st_size {
            0 => id_file = true,
            16 => {
                let f = rustix::fs::openat(
                    d,
                    DIRID_FILE,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let mut b = [0u8; 16];
                return Ok(match rustix::io::read(&f, &mut b)? {
                    16 => Contents::Id(DirId(b)),
                    _ => Contents::Other,
                });
            }
            _ => return Ok(Contents::Other),
        }
    }
    Ok(Contents::Empty { id_file })
}

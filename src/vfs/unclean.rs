//! The mount after a read-write session that did not end cleanly (a killed daemon, a power
//! loss: `.kmsfs/mounted-rw` was left, see `marker_queue`). A file closed shortly before keeps
//! its interrupted-write marker, and its times need not show it (a close puts the kernel's
//! modification time back; a `chmod` after it), so the lookup's check (`Vfs::recovered_attr`)
//! would miss it: the kernel would be given the torn size, which it keeps with the writeback
//! cache after the open recovers the file. So before anything is served every file of the
//! cipher directory is looked at (one `getxattr` each: 3,000 files in 42 ms with a cold
//! cache), and those with a marker are recovered as an open would. A file that cannot be (its
//! key not usable, immutable) is left to its open, and said so.
//!
//! The walk also runs at a remount from read-only to read-write (a read-only mount recovers
//! nothing), while the mount is served: a file open then is left to its next open (its open
//! state holds the size it was opened with), and the kernel is asked to drop the names of the
//! files it recovers that the kernel knows, which were given the torn size while read-only
//! (the reclaim thread does, as for a failed write: `Vfs::take_stale_caches`).

use std::os::unix::fs::{DirEntryExt, OpenOptionsExt};
use std::path::Path;

use super::Vfs;
use super::open_file::read_header;
use crate::content::FileCipher;

impl Vfs {
    pub(super) fn recover_marked_files(&self) {
        let start = std::time::Instant::now();
        let (mut files, mut marked, mut recovered) = (0u64, 0u64, 0u64);
        let mut dirs = vec![self.root.clone()];
        while let Some(d) = dirs.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(t) = e.file_type() else {
                    continue;
                };
                if d == self.root && e.file_name() == crate::names::CONTROL_DIR {
                    continue;
                }
                if t.is_dir() {
                    dirs.push(e.path());
                } else if t.is_file() {
                    files += 1;
                    let p = e.path();
                    if crate::content::pending::is_marked_at(&p) {
                        marked += 1;
                        let ino = self.inodes.map_ino(e.ino());
                        if self.open_files.contains_key(&ino) {
                            tracing::info!(
                                file = %p.display(),
                                "marked, open: left to its next open"
                            );
                            continue;
                        }
                        match self.recover_file(&p) {
                            Ok(true) => {
                                recovered += 1;
                                if self.inodes.get(ino).is_ok() {
                                    let mut v =
                                        self.stale_caches.lock().unwrap_or_else(|p| p.into_inner());
                                    v.push(ino);
                                    self.stale_pending
                                        .store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(
                                file = %p.display(),
                                "not recovered at the mount (its open will try): {e}"
                            ),
                        }
                    }
                }
            }
        }
        tracing::info!(
            "the last read-write mount did not end cleanly: {files} files checked for \
             interrupted writes in {:?}, {marked} marked, {recovered} changed",
            start.elapsed()
        );
    }

    /// Recovers the cipher file at `path` (see `content::pending::recover`); whether it changed.
    fn recover_file(&self, path: &Path) -> super::Result<bool> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let header = read_header(&f)?;
        let dek = self.km.unwrap_dek(&header)?;
        let cipher = FileCipher::for_header(&dek, &header, self.block_size);
        Ok(crate::content::pending::recover(&f, &cipher, self.layout, false)?.is_some())
    }
}

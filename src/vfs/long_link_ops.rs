//! Symlinks whose targets live in a side file (`names::long_links`, FORMAT.md §7): the size
//! `stat` reports, and the side file's removal with the symlink's last name.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use rustix::fs::{Mode, OFlags};

use super::inode::Node;
use super::{Result, Vfs, VfsError};
use crate::names::long_links::{LINK_TARGET_LEN, LinkId, StoreError};

/// A long link that is losing a name: its inode (an `O_PATH` descriptor) and id.
pub(super) struct Leaving(OwnedFd, LinkId);

impl Vfs {
    /// What the backing symlink for `target` holds; a long target is sealed into a new side
    /// file first, whose id comes back too (removed with [`Vfs::forget_side_target`] if the
    /// symlink is not made).
    pub(super) fn stored_target(&self, target: &[u8]) -> Result<(String, Option<LinkId>)> {
        let r = self
            .links
            .store_target(&self.names, target)
            .map_err(|e| match e {
                StoreError::Name(e) => VfsError::Name(e),
                StoreError::Io(e) => VfsError::Io(e),
            })?;
        if r.1.is_some() {
            self.long_links.store(true, Ordering::Release);
        }
        Ok(r)
    }

    pub(super) fn forget_side_target(&self, id: &LinkId) {
        if let Err(e) = self.links.remove(id) {
            tracing::warn!("a long symlink target's side file is left behind: {e}");
        }
    }

    /// The plaintext target of symlink `node`.
    pub(super) fn read_target(&self, node: &Node) -> Result<Vec<u8>> {
        let stored = rustix::fs::readlinkat(&node.fd, "", Vec::new())?;
        self.links
            .read_target(&self.names, stored.as_bytes())
            .map_err(|_| self.damaged(node, "symlink target failed authentication".into()))
    }

    /// The size `stat` reports for symlink `node` whose backing size is `backing_size`: the
    /// length of the target (from the side file's size for a long link; 0 if that is missing,
    /// and `readlink` then fails).
    pub(super) fn symlink_size(&self, node: &Node, backing_size: u64, inline: u64) -> u64 {
        if backing_size != LINK_TARGET_LEN {
            return inline;
        }
        rustix::fs::readlinkat(&node.fd, "", Vec::new())
            .ok()
            .and_then(|t| LinkId::from_target(t.as_bytes()))
            .map_or(inline, |id| self.links.target_len(&id))
    }

    /// The long link named `entry` in `dir`, if that is one, before the name is removed or
    /// renamed over. Looked for only once the volume has long links (its store exists): else
    /// unlink and rename pay nothing.
    pub(super) fn long_link_at(&self, dir: &Node, entry: &OsStr) -> Option<Leaving> {
        if !self.long_links.load(Ordering::Acquire) {
            return None;
        }
        let fd = rustix::fs::openat(
            &dir.fd,
            entry,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK || st.st_size as u64 != LINK_TARGET_LEN {
            return None;
        }
        let t = rustix::fs::readlinkat(&fd, "", Vec::new()).ok()?;
        let id = LinkId::from_target(t.as_bytes())?;
        Some(Leaving(fd, id))
    }

    /// After a name of a long link went: its side file goes too if that was its last name (a
    /// hard link elsewhere keeps it). Two last unlinks at once both see no name left; the second
    /// removal finds nothing.
    pub(super) fn left(&self, leaving: Option<Leaving>) {
        let Some(Leaving(fd, id)) = leaving else {
            return;
        };
        if rustix::fs::fstat(&fd).is_ok_and(|st| st.st_nlink == 0)
            && let Err(e) = self.links.remove(&id)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("a removed symlink's target side file is left behind: {e}");
        }
    }
}

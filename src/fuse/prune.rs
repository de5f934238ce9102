//! FUSE_NOTIFY_PRUNE (Linux 6.18, protocol 7.45): asks the kernel to drop the unused dentries
//! of a list of inodes, and so the inodes, whose FORGETs then close our descriptors. Unlike an
//! entry invalidation (FUSE_NOTIFY_INVAL_ENTRY) it never touches a dentry in use, so a
//! directory that is a working directory, holds an open file or still has cached children is
//! simply skipped, as is an open file; it takes no directory lock; and it drops every alias of
//! an inode (hard links, the nameless dentries of `open_by_handle_at`). fuser 0.18 has no call
//! for it, so the message is written to the session's `/dev/fuse` descriptor directly.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// `enum fuse_notify_code`: FUSE_NOTIFY_PRUNE.
const NOTIFY_PRUNE: i32 = 9;
/// The kernel protocol minor version that brought it.
pub const SINCE_MINOR: u32 = 45;
/// Node ids per message (the kernel reads any count, in batches of 512).
const PER_MESSAGE: usize = 4096;

pub struct Pruner {
    dev: OwnedFd,
}

impl Pruner {
    /// A pruner writing to (a duplicate of) the session's `/dev/fuse` descriptor.
    pub fn new(dev: BorrowedFd<'_>) -> io::Result<Self> {
        let dev = rustix::io::fcntl_dupfd_cloexec(dev, 3)?;
        Ok(Pruner { dev })
    }

    /// Asks the kernel to drop `nodes` where unused. Returns once it has tried every one (the
    /// FORGETs of those it dropped follow as requests). EINVAL: the kernel does not know the
    /// notification.
    pub fn prune(&self, nodes: &[u64]) -> io::Result<()> {
        for chunk in nodes.chunks(PER_MESSAGE) {
            let msg = message(chunk);
            let n = rustix::io::write(self.dev.as_fd(), &msg)?;
            if n != msg.len() {
                return Err(io::Error::other("short write of a prune notification"));
            }
        }
        Ok(())
    }
}

/// `struct fuse_out_header { u32 len; i32 error (the notification code); u64 unique (0) }`,
/// then `struct fuse_notify_prune_out { u32 count; u32 padding; u64 spare }`, then the ids.
fn message(nodes: &[u64]) -> Vec<u8> {
    let len = 32 + 8 * nodes.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&NOTIFY_PRUNE.to_ne_bytes());
    m.extend_from_slice(&0u64.to_ne_bytes());
    m.extend_from_slice(&u32::try_from(nodes.len()).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u64.to_ne_bytes());
    for id in nodes {
        m.extend_from_slice(&id.to_ne_bytes());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_a_header_a_count_and_the_ids() {
        let m = message(&[7, 1 << 40]);
        assert_eq!(m.len(), 48);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 48);
        assert_eq!(i32::from_ne_bytes(m[4..8].try_into().unwrap()), 9);
        assert_eq!(u64::from_ne_bytes(m[8..16].try_into().unwrap()), 0);
        assert_eq!(u32::from_ne_bytes(m[16..20].try_into().unwrap()), 2);
        assert_eq!(&m[20..32], &[0; 12]);
        assert_eq!(u64::from_ne_bytes(m[32..40].try_into().unwrap()), 7);
        assert_eq!(u64::from_ne_bytes(m[40..48].try_into().unwrap()), 1 << 40);
    }
}

//! FUSE_LSEEK (`SEEK_DATA`, `SEEK_HOLE`) and the kernel's page cache. The kernel asks without
//! sending the pages it holds written but not yet sent (the writeback cache, a shared
//! writable mapping): a block written into a hole would still be a hole in the cipher file, a
//! write past the end not there at all, and `cp --sparse` would copy zeros for them. So while
//! a handle of the file is open for writing (no page can be dirty without one), the pages
//! under the range an answer takes for a hole are written back first, by having the kernel
//! drop them (FUSE_NOTIFY_INVAL_INODE: it writes a dirty page back before it lets it go, and
//! waits for that), and the answer is taken again, until it rests on ranges written back. An
//! answer of data at the offset itself needs nothing; holes are seldom cached, so the pages
//! dropped are few. The WRITEs are served by the request threads, so the notifications are
//! sent, and the answer given, from a thread of its own: none of the request threads waits.
//!
//! Before Linux 6.16 the kernel wrote a page back through a copy and marked the page clean at
//! once, so dropping it did not wait for a write-back already started, which could reach
//! kmsfs after the answer. There the first such lseek is answered ENOSYS, which turns
//! FUSE_LSEEK off for the rest of the mount: the kernel then reports every file as data
//! (what it did before kmsfs answered lseek).

use std::ops::Range;
use std::sync::Arc;

use fuser::{Errno, FileHandle, INodeNo, Notifier, ReplyLseek};

use crate::vfs::Vfs;

/// Write-backs and new answers before everything from the offset on is written back at once
/// (a writer filling the holes as they are found).
const ROUNDS: usize = 8;

/// One lseek to answer.
pub(super) struct Seek {
    pub ino: INodeNo,
    pub fh: FileHandle,
    pub offset: i64,
    pub hole: bool,
}

impl Seek {
    fn ask(&self, vfs: &Vfs) -> Result<i64, crate::vfs::VfsError> {
        vfs.seek(self.ino.0, self.fh.0, self.offset, self.hole)
    }

    /// Answers, writing pages back first where needed (see the module documentation).
    /// `notifier`: `None` where the kernel's write-back cannot be waited for.
    pub(super) fn answer(self, vfs: &Arc<Vfs>, notifier: Option<&Notifier>, reply: ReplyLseek) {
        let first = self.ask(vfs);
        let taken = vfs
            .open_for_writing(self.ino.0)
            .then(|| vfs.hole_taken(self.ino.0, self.fh.0, self.offset, self.hole, &first));
        let Some(range) = taken.flatten() else {
            return send(reply, first);
        };
        let Some(n) = notifier.cloned() else {
            return reply.error(Errno::ENOSYS);
        };
        let vfs = vfs.clone();
        let flush = move || {
            let r = self.written_back(&vfs, &n, range);
            send(reply, r);
        };
        // Should no thread start, the reply is dropped unsent, which fuser answers with EIO.
        if let Err(e) = std::thread::Builder::new()
            .name("kmsfs-lseek".into())
            .spawn(flush)
        {
            tracing::warn!("no thread to answer an lseek: {e}");
        }
    }

    /// The answer once the range it takes for a hole has been written back.
    fn written_back(
        &self,
        vfs: &Vfs,
        n: &Notifier,
        mut range: Range<u64>,
    ) -> Result<i64, crate::vfs::VfsError> {
        let mut done: Vec<Range<u64>> = Vec::new();
        for _ in 0..ROUNDS {
            drop_pages(n, self.ino, &range);
            done.push(range);
            let r = self.ask(vfs);
            match vfs.hole_taken(self.ino.0, self.fh.0, self.offset, self.hole, &r) {
                Some(next)
                    if !done
                        .iter()
                        .any(|d| d.start <= next.start && next.end <= d.end) =>
                {
                    range = next
                }
                _ => return r,
            }
        }
        let from = u64::try_from(self.offset).unwrap_or(0);
        drop_pages(n, self.ino, &(from..u64::MAX));
        self.ask(vfs)
    }
}

/// Has the kernel write back and drop its pages of `ino` in `range` (to the end of the file
/// for an end of `u64::MAX`).
fn drop_pages(n: &Notifier, ino: INodeNo, range: &Range<u64>) {
    let start = i64::try_from(range.start).unwrap_or(i64::MAX);
    // 0: to the end.
    let len = match range.end {
        u64::MAX => 0,
        end => i64::try_from(end - range.start).unwrap_or(0),
    };
    if let Err(e) = n.inval_inode(ino, start, len) {
        tracing::debug!("writing back inode {} before an lseek: {e}", ino.0);
    }
}

fn send(reply: ReplyLseek, r: Result<i64, crate::vfs::VfsError>) {
    match r {
        Ok(at) => reply.offset(at),
        Err(e) => reply.error(super::errno("lseek", &e)),
    }
}

/// Whether this kernel waits for a page's write-back when it drops the page (Linux 6.16 and
/// later: see the module documentation). Unknown (an unreadable release) counts as no.
pub(super) fn drop_waits_for_write_back() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    release_at_least(&release, (6, 16))
}

/// Whether kernel release `release` ("6.18.44-...") is at least `want` (major, minor).
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let mut num = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (num(), num()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.18.44-fc-v1272\n", (6, 16)));
        assert!(release_at_least("6.16", (6, 16)));
        assert!(release_at_least("7.0.1", (6, 16)));
        assert!(!release_at_least("6.15.9", (6, 16)));
        assert!(!release_at_least("6.1.0-27-amd64", (6, 16)));
        assert!(!release_at_least("5.19.17", (6, 16)));
        assert!(!release_at_least("garbage", (6, 16)));
        assert!(!release_at_least("", (6, 16)));
    }
}

//! The modification time of a file the kernel writes from its page cache (the writeback cache).
//!
//! With the writeback cache the kernel owns a file's modification time: `write(2)` sets it in
//! the kernel's inode, and the kernel sends it (SETATTR) when it writes the inode back, which it
//! does only when the time changed. The data comes later, as WRITE requests, and each `pwrite`
//! of the backing file sets the backing file's modification time to the moment the daemon
//! wrote. The kernel's inode shows its own time; once the inode is evicted (memory pressure, a
//! remount) the file showed the daemon's later time instead, 0.1–3 ms apart: a file nobody
//! touched appeared modified (to `make`, `rsync`, a backup comparing times).
//!
//! So while writes come from the page cache, the open file keeps the time the kernel holds:
//! taken from the backing file before the first such write, replaced by every time SETATTR
//! sets, reported in attributes, and put back on the backing file when the last handle is
//! released (after which the kernel sends no more writes for those opens). Other changes made
//! while a time is kept (an `O_DIRECT` write, a truncate, an allocation) move the backing
//! file's time too and are put back as well: the kernel updates its own time for them and sends
//! it if it changed it. Without the writeback cache no time is kept, and the backing file's time
//! is the file's: pages written through a shared `mmap` still come from the page cache then, but
//! the kernel keeps no time of its own for them and sends none (before 2026-12-06 a time was
//! kept for them too, and such a write never moved the file's modification time).

use std::sync::{Mutex, MutexGuard};

use rustix::fs::Timespec;

#[derive(Debug, Clone, Copy)]
struct Kept {
    at: Timespec,
    /// The backing file was written since `at` was last on it.
    moved: bool,
}

/// The modification time in `st`.
pub fn mtime_of(st: &rustix::fs::Stat) -> Timespec {
    Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KeptMtime(Mutex<Option<Kept>>);

impl KeptMtime {
    fn lock(&self) -> MutexGuard<'_, Option<Kept>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a write from the page cache: keeps the backing file's current time (`current`)
    /// unless a time is already kept. Serialized with [`KeptMtime::set_by`] and
    /// [`KeptMtime::restore`].
    pub fn before_cached_write(&self, current: impl FnOnce() -> Option<Timespec>) {
        let mut k = self.lock();
        if k.is_none() {
            *k = current().map(|at| Kept { at, moved: false });
        }
    }

    /// After a change of the backing file: a write from the page cache, or, while a time is
    /// kept, any other write, truncate or allocation (the kernel keeps its own time for those
    /// too, and sends it if it changed it).
    pub fn moved(&self) {
        if let Some(k) = self.lock().as_mut() {
            k.moved = true;
        }
    }

    /// The time to report for the file, if one is kept.
    pub fn get(&self) -> Option<Timespec> {
        self.lock().map(|k| k.at)
    }

    /// Sets the backing file's time by `apply` (a utimensat), then keeps what `after` says it
    /// is, if a time is kept: the backing file has it now, nothing to put back until the next
    /// write. Under the lock, so that a restore cannot put an older time back in between.
    pub fn set_by<T, E>(
        &self,
        apply: impl FnOnce() -> Result<T, E>,
        after: impl FnOnce(&T) -> Option<Timespec>,
    ) -> Result<T, E> {
        let mut k = self.lock();
        let r = apply()?;
        if let Some(kept) = k.as_mut()
            && let Some(at) = after(&r)
        {
            *kept = Kept { at, moved: false };
        }
        Ok(r)
    }

    /// Puts the kept time back on the backing file by `apply` when a write moved it.
    pub fn restore(&self, apply: impl FnOnce(Timespec) -> std::io::Result<()>) {
        let mut k = self.lock();
        if let Some(kept) = k.as_mut()
            && kept.moved
        {
            match apply(kept.at) {
                Ok(()) => kept.moved = false,
                Err(e) => tracing::warn!("could not put back a file's modification time: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timespec {
        Timespec {
            tv_sec: s,
            tv_nsec: 0,
        }
    }

    fn restored(k: &KeptMtime) -> Option<i64> {
        let mut got = None;
        k.restore(|t| {
            got = Some(t.tv_sec);
            Ok(())
        });
        got
    }

    #[test]
    fn the_time_before_the_first_cached_write_is_put_back_once() {
        let k = KeptMtime::default();
        assert_eq!(k.get(), None);
        k.before_cached_write(|| Some(ts(10)));
        k.moved();
        k.before_cached_write(|| Some(ts(99)));
        k.moved();
        assert_eq!(k.get().map(|t| t.tv_sec), Some(10));
        assert_eq!(restored(&k), Some(10));
        assert_eq!(restored(&k), None, "nothing written since");
    }

    #[test]
    fn a_set_time_replaces_the_kept_one_only_while_one_is_kept() {
        let k = KeptMtime::default();
        let r: Result<(), ()> = k.set_by(|| Ok(()), |_| Some(ts(5)));
        assert!(r.is_ok());
        assert_eq!(k.get(), None);
        k.before_cached_write(|| Some(ts(10)));
        k.moved();
        let _: Result<(), ()> = k.set_by(|| Ok(()), |_| Some(ts(20)));
        assert_eq!(k.get().map(|t| t.tv_sec), Some(20));
        assert_eq!(restored(&k), None, "already on the backing file");
        k.moved();
        assert_eq!(restored(&k), Some(20));
    }

    #[test]
    fn a_failed_set_keeps_the_old_time_and_a_failed_restore_is_retried() {
        let k = KeptMtime::default();
        k.before_cached_write(|| Some(ts(10)));
        k.moved();
        let r: Result<(), i32> = k.set_by(|| Err(1), |_| Some(ts(20)));
        assert_eq!(r, Err(1));
        k.restore(|_| Err(std::io::Error::other("full")));
        assert_eq!(restored(&k), Some(10));
    }

    #[test]
    fn changes_while_nothing_is_kept_keep_nothing() {
        let k = KeptMtime::default();
        k.moved();
        assert_eq!(k.get(), None);
        assert_eq!(restored(&k), None);
    }
}

//! Fault injection for the model's tests. Every call that changes the backing store (the cipher
//! tree, the key store) passes [`check`] first. In test builds a test arms its own thread so that
//! the Nth such call fails with a chosen errno — a write after storing the first half of its
//! bytes, as a disk that fills up mid-write does — and then proves that the caller got an error
//! and that nothing stored before was damaged (`vfs/fault_tests.rs`). In other builds [`check`]
//! is an empty inline function.

use std::fs::File;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;

/// Passes unless the current thread's fault plan says this call fails.
#[inline(always)]
pub fn check(site: &'static str) -> Result<(), Errno> {
    #[cfg(test)]
    {
        plan::hit(site)
    }
    #[cfg(not(test))]
    {
        let _ = site;
        Ok(())
    }
}

/// `pwrite` of all of `buf` at `off`, through the fault plan: an injected failure stores the
/// first half of `buf` before it reports the error.
pub fn write_all_at(f: &File, buf: &[u8], off: u64) -> std::io::Result<()> {
    if let Err(e) = check("pwrite") {
        let _ = f.write_all_at(&buf[..buf.len() / 2], off);
        return Err(e.into());
    }
    f.write_all_at(buf, off)
}

/// `ftruncate` through the fault plan.
pub fn set_len(f: &File, len: u64) -> std::io::Result<()> {
    check("ftruncate")?;
    f.set_len(len)
}

#[cfg(test)]
pub use plan::{arm, disarm};

#[cfg(test)]
mod plan {
    use std::cell::Cell;

    use rustix::io::Errno;

    thread_local! {
        static CALLS: Cell<u32> = const { Cell::new(0) };
        static FAIL_AT: Cell<Option<(u32, Errno)>> = const { Cell::new(None) };
        static FIRED: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    /// From now on, the `n`th (1-based) checked call on this thread fails with `errno`.
    pub fn arm(n: u32, errno: Errno) {
        CALLS.set(0);
        FIRED.set(None);
        FAIL_AT.set(Some((n, errno)));
    }

    /// Stops injecting; returns the site of the call that failed, if one did.
    pub fn disarm() -> Option<&'static str> {
        FAIL_AT.set(None);
        FIRED.take()
    }

    pub fn hit(site: &'static str) -> Result<(), Errno> {
        let Some((n, errno)) = FAIL_AT.get() else {
            return Ok(());
        };
        let c = CALLS.get() + 1;
        CALLS.set(c);
        if c == n {
            FIRED.set(Some(site));
            return Err(errno);
        }
        Ok(())
    }
}

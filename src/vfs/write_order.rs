//! The order of concurrent writes to one file. The kernel sends the writeback cache's pages in
//! several WRITE requests at once; they reach the file's lock in whatever order the daemon's
//! threads get there. A write that lands past the end of the file first would store encrypted
//! zeros over the gap, which the earlier writes then overwrite: a 1 GiB `dd` did that 171 times,
//! for 2 MiB each (a third more encryption and disk writes). So a write past the end waits while
//! another write of the same file is under way and not itself waiting; when every write in
//! flight waits, the lowest goes first. A write that nothing else can fill the gap before (a
//! seek past the end, a lone writer) never waits.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A waiting write re-checks at least this often (a safety net: every change that can let it
/// go wakes it).
const RECHECK: Duration = Duration::from_millis(20);
/// The longest a write waits. The writes it waits for in the writeback case take a few
/// milliseconds; another process writing the same file lower down all the time (two writers of
/// one file, each in its own region) would otherwise hold back the higher one's first write for
/// as long as it keeps a write in flight.
const MAX_WAIT: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Writes {
    /// Writes of this file between `enter` and the end of their ticket.
    in_flight: usize,
    /// The offsets of those that wait for the gap before them to be filled.
    waiting: Vec<u64>,
}

#[derive(Default)]
pub struct WriteOrder {
    writes: Mutex<Writes>,
    changed: Condvar,
}

/// One write in flight; dropping it (after the write released the file's lock) lets waiting
/// writes look again.
pub struct Ticket<'a>(&'a WriteOrder);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.changed.notify_all();
    }
}

impl WriteOrder {
    fn lock(&self) -> MutexGuard<'_, Writes> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a write in flight until the ticket is dropped.
    pub fn enter(&self) -> Ticket<'_> {
        self.lock().in_flight += 1;
        Ticket(self)
    }

    /// Returns when the write at `off` may go: `past_end()` (asked with this object's lock held,
    /// so it must not wait for a write) says it would start past the end of the file, and the
    /// write waits while that holds and another write in flight is not waiting, or while a
    /// waiting write starts lower; never longer than `MAX_WAIT`.
    pub fn wait_turn(&self, _ticket: &Ticket<'_>, off: u64, past_end: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        let mut w = self.lock();
        loop {
            if !past_end() || start.elapsed() >= MAX_WAIT {
                return;
            }
            let others_active = w.in_flight - w.waiting.len() - 1;
            if others_active == 0 && w.waiting.iter().all(|&o| off <= o) {
                return;
            }
            w.waiting.push(off);
            if w.waiting.len() == w.in_flight {
                // Everyone waits now: the lowest must go.
                self.changed.notify_all();
            }
            w = match self.changed.wait_timeout(w, RECHECK) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            if let Some(i) = w.waiting.iter().position(|&o| o == off) {
                w.waiting.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Writes of 1 unit each, started in reverse order, to a file whose size is tracked in
    /// `size`: every one lands at the end (none has to fill a gap), although the highest came
    /// first.
    #[test]
    fn writes_past_the_end_wait_for_those_before_them() {
        let order = Arc::new(WriteOrder::default());
        let size = Arc::new(AtomicU64::new(0));
        let gaps = Arc::new(AtomicU64::new(0));
        let file = Arc::new(Mutex::new(()));
        let n = 6u64;
        // All enter before any looks, as requests read by several threads at once.
        let tickets_in = Arc::new(std::sync::Barrier::new(n as usize));
        let handles: Vec<_> = (0..n)
            .rev()
            .map(|off| {
                let (order, size, gaps, file, barrier) = (
                    order.clone(),
                    size.clone(),
                    gaps.clone(),
                    file.clone(),
                    tickets_in.clone(),
                );
                std::thread::spawn(move || {
                    let t = order.enter();
                    barrier.wait();
                    order.wait_turn(&t, off, || off > size.load(Ordering::SeqCst));
                    let _f = file.lock().unwrap();
                    if off > size.load(Ordering::SeqCst) {
                        gaps.fetch_add(1, Ordering::SeqCst);
                    }
                    size.fetch_max(off + 1, Ordering::SeqCst);
                    drop(_f);
                    drop(t);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(size.load(Ordering::SeqCst), n);
        assert_eq!(
            gaps.load(Ordering::SeqCst),
            0,
            "a write filled a gap with zeros"
        );
    }

    /// A lone write past the end (a seek past the end) goes at once; when every write in flight
    /// is past the end, all of them go in turn and none waits for good.
    #[test]
    fn a_write_nothing_can_fill_the_gap_before_goes_at_once() {
        let order = WriteOrder::default();
        let t = order.enter();
        let start = std::time::Instant::now();
        order.wait_turn(&t, 100, || true);
        assert!(start.elapsed() < RECHECK, "waited {:?}", start.elapsed());
        drop(t);

        let order = Arc::new(WriteOrder::default());
        let size = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let handles: Vec<_> = [50u64, 10, 30]
            .into_iter()
            .map(|off| {
                let (order, size, barrier) = (order.clone(), size.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let t = order.enter();
                    barrier.wait();
                    order.wait_turn(&t, off, || off > size.load(Ordering::SeqCst));
                    size.fetch_max(off + 1, Ordering::SeqCst);
                    off
                })
            })
            .collect();
        let mut done: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.sort();
        assert_eq!(done, [10, 30, 50]);
        assert_eq!(size.load(Ordering::SeqCst), 51);
    }

    /// A write that stays in flight (another process writing the same file lower down all the
    /// time) holds a write past the end back for `MAX_WAIT` at most.
    #[test]
    fn the_wait_has_a_limit() {
        let order = WriteOrder::default();
        let busy = order.enter();
        let t = order.enter();
        let start = std::time::Instant::now();
        order.wait_turn(&t, 100, || true);
        let waited = start.elapsed();
        assert!(
            waited >= MAX_WAIT && waited < MAX_WAIT + 5 * RECHECK,
            "waited {waited:?}"
        );
        drop((t, busy));
    }
}

//! Polling `/dev/fuse` for a moment after each request, so that the next request of a process
//! that works through files one call after another (git, tar, rm, a compiler) is taken at once
//! instead of by a thread that must first be woken.
//!
//! A FUSE round trip costs two wake-ups: the daemon's thread when the kernel queues a request and
//! the caller when it is answered. On a VM each wake-up of an idle vCPU is an IPI and a VM exit,
//! and together they are most of a small request's ~20 µs (see README, Performance). After it has
//! answered, a request thread becomes the *poller* for a short window: it asks the kernel whether
//! a request is waiting (`poll(2)` with no timeout) until one is, and then goes back to fuser's
//! `read(2)`, which returns that request without sleeping.
//!
//! The window follows how soon requests have come after replies (the latest [`GAPS`], counted
//! when nothing else was served in between): the shortest of a quarter, a half or the whole of
//! `--poll-us` (200 µs by default) that 90% of them came within (the whole: 75%), a quarter
//! while half of them are that quick, and none when they mostly come later, where polling would
//! only burn CPU (a process that computes between its calls). git add's requests came within
//! 50 µs of the reply 85% of the time, within 100 µs 93%, within 200 µs 96% (tracefs, the
//! Python tree): it gets 100 µs there (a fixed 100 µs made git init + add + commit 3.5–7%
//! faster than a fixed 50 µs, four alternating pairs; the adaptive window ~2%, and steadier).
//! Until 2026-12-05 19:30 the window was a fixed 50 µs.
//!
//! This only pays if no other thread sleeps in `read(2)` meanwhile: the kernel wakes a sleeping
//! reader for every request it queues, whoever then takes it (measured in an earlier session:
//! four threads taking turns at polling gained nothing). So a thread that finishes a request
//! while another one reads or polls *parks* here instead of going back to `read(2)`, so that
//! once every thread has served a request, usually one thread waits for requests (polling, then
//! sleeping in `read(2)` once its window has passed; at the start all of them are in `read(2)`,
//! and for a moment after a parked thread is sent back two may be). Parked threads come back to
//! serve requests at the same time as that one (several processes, the kernel's read-ahead and
//! write-back) when
//! - a thread that starts a request finds another one queued and nobody else to take it;
//! - or one parked thread, the sentinel, finds requests queued while every other thread is busy
//!   with a request. It looks every [`WATCH_SLOW`] while requests that take long (disk reads,
//!   fsync) have been seen lately, every [`WATCH`] otherwise while requests come, and every
//!   [`IDLE_WATCH`] once they have stopped (a poller's window passed empty, or no request
//!   started between two looks while a thread waits in `read(2)`): an idle daemon wakes that
//!   often, which is also how parked threads learn that the session has ended (fuser's threads
//!   end on ENODEV from `read(2)` without telling us). Requests queued at two looks in a row
//!   with none started in between are taken whatever the counts say. Looking often costs: a timer wake-up every 200 µs
//!   took a git commit from 3.6 back to 3.9 s (the time without polling); so a request that
//!   queues behind a long one can wait up to [`WATCH`] when no long request came in the last
//!   [`SLOW_MEMORY`].
//!
//! None of this while requests are served at the same time (two or more in callbacks at once
//! within the last [`TOGETHER_MEMORY`]: several processes, git's preload threads, read-ahead;
//! RELEASE and RELEASEDIR do not count, the kernel sends them in the background and they would
//! overlap the closing process's next request every time):
//! then every thread goes back to `read(2)` after its reply, parked ones are sent back too, and
//! the kernel's own wake-ups spread the requests, as without polling. Parking there cost a cold
//! `git status` (eight threads `lstat` the index) 8%: 0.191-0.215 s without polling against
//! 0.206-0.221 s (five interleaved runs each).
//!
//! The same from the [`READ_STREAM`]th READ in a row with no other request between them: a
//! process reading a file request after request (fio's random reads, a database) runs sooner
//! when woken on the CPU its daemon thread leaves than on the other one while that thread polls
//! (random 4 KiB reads with `--poll-us 0`: 35.4-38.3k IOPS against 33.9-36.5k with polling,
//! four alternating runs). A READ now and then between other requests (git add, cat) still
//! polls, where polling pays (git commit ~5% slower without).
//!
//! With one CPU the poller would only take time from the process it waits for: off there.
//!
//! FORGET and BATCH_FORGET take no turn (see `forget` in `mod.rs`), nor do requests fuser
//! answers itself: their threads count as reading while they serve them (briefly).

use std::os::fd::RawFd;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the sentinel looks for requests queued while every other thread is busy.
const WATCH: Duration = Duration::from_millis(5);
/// The same after a long request.
const WATCH_SLOW: Duration = Duration::from_micros(200);
/// A request is long from here.
const SLOW: Duration = Duration::from_micros(500);
/// How long after a long request the sentinel looks at [`WATCH_SLOW`].
const SLOW_MEMORY: Duration = Duration::from_millis(20);
/// How long polling and parking stay off after two requests were served at once.
const TOGETHER_MEMORY: Duration = Duration::from_millis(10);
/// How often it looks when requests have stopped (a thread left alone with a request wakes it).
const IDLE_WATCH: Duration = Duration::from_millis(500);
/// READs one after another, with no other request between them, from which polling and parking
/// stop as when requests come together (see the module documentation).
const READ_STREAM: u32 = 8;
/// How many of the latest gaps between a reply and the next request choose the window.
const GAPS: usize = 64;
/// Below this many gaps seen, the window is a quarter of the longest.
const GAPS_KNOWN: usize = 8;

#[derive(Default)]
struct State {
    /// Threads in fuser's read loop (or serving a request without a turn), not polling, not
    /// parked.
    reading: usize,
    /// Requests started (turns taken): tells the sentinel whether requests still come.
    started: u64,
    /// Requests being served (turns held).
    serving: usize,
    /// When two requests were last served at once.
    together_at: Option<Instant>,
    /// A thread is polling.
    polling: bool,
    /// Threads parked here.
    parked: usize,
    /// READs started one after another since the last other request.
    reads_in_a_row: u32,
    /// A parked thread is the sentinel.
    sentinel: bool,
    /// The sentinel waits [`IDLE_WATCH`]: a thread left alone with a request wakes it.
    sentinel_idle: bool,
    /// Parked threads told to go and read.
    release: usize,
    /// When the last long request ended.
    slow_at: Option<Instant>,
    /// The connection is gone: every parked thread goes back to fuser, which ends.
    closed: bool,
    /// Requests have stopped: the last poller's window passed without one, or the sentinel saw
    /// none start between two looks while a thread waited in `read(2)`. Nothing can be queued
    /// then without waking that thread, which wakes the sentinel if it is left alone with it.
    quiet: bool,
    /// When the last request a process waited for was answered.
    replied_at: Option<Instant>,
    /// The latest gaps from such a reply to the next request, when nothing else was served in
    /// between (see [`Gaps`]).
    gaps: Gaps,
}

/// The latest gaps between a reply and the next request, in µs (a ring of [`GAPS`]).
#[derive(Debug, Clone)]
struct Gaps {
    us: [u32; GAPS],
    len: usize,
    next: usize,
}

impl Default for Gaps {
    fn default() -> Self {
        Gaps {
            us: [0; GAPS],
            len: 0,
            next: 0,
        }
    }
}

impl Gaps {
    fn push(&mut self, gap: Duration) {
        self.us[self.next] = u32::try_from(gap.as_micros()).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % GAPS;
        self.len = (self.len + 1).min(GAPS);
    }

    /// How long to poll after a reply, `longest` at most: the shortest of a quarter, a half or
    /// the whole of it that the next request came within after 90% of the latest replies (the
    /// whole: 75%); a quarter if none of them is that likely but half the gaps are that short;
    /// none when the requests mostly come later (polling would only spend CPU). A quarter
    /// until enough gaps are known. One pass over the gaps (it runs after every reply).
    fn window(&self, longest: Duration) -> Duration {
        let (quarter, half) = (longest / 4, longest / 2);
        if self.len < GAPS_KNOWN {
            return quarter;
        }
        let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        let (q, h, l) = (us(quarter), us(half), us(longest));
        let (mut in_q, mut in_h, mut in_l) = (0, 0, 0);
        for &g in &self.us[..self.len] {
            in_q += usize::from(g <= q);
            in_h += usize::from(g <= h);
            in_l += usize::from(g <= l);
        }
        // At least `tenths` tenths of the gaps.
        let share = |n: usize, tenths: usize| n * 10 >= self.len * tenths;
        if share(in_q, 9) {
            quarter
        } else if share(in_h, 9) {
            half
        } else if in_l * 4 >= self.len * 3 {
            longest
        } else if share(in_q, 5) {
            quarter
        } else {
            Duration::ZERO
        }
    }
}

pub struct Poller {
    fd: RawFd,
    window: Duration,
    state: Mutex<State>,
    /// Parked threads other than the sentinel.
    parked_cv: Condvar,
    sentinel_cv: Condvar,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Held while a request is served (since when; whether it counts as served at once with
/// others); dropping it (after the reply) polls or parks.
pub struct Turn<'a>(Option<(&'a Poller, Instant, bool)>);

impl Turn<'_> {
    /// No polling (before the session exists, or turned off).
    pub const NONE: Turn<'static> = Turn(None);
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some((p, since, counted)) = self.0 {
            if std::thread::panicking() {
                p.abandon(counted);
            } else {
                p.leave(since, counted);
            }
        }
    }
}

/// Whether two requests were served at once within [`TOGETHER_MEMORY`] of `now`.
fn together(s: &State, now: Instant) -> bool {
    s.together_at
        .is_some_and(|t| now.saturating_duration_since(t) < TOGETHER_MEMORY)
}

impl Poller {
    /// Polls `fd` (the session's `/dev/fuse`, read by `threads` threads) for `window` after
    /// each request; a zero window, or a single CPU, turns it off.
    pub fn new(fd: RawFd, threads: usize, window: Duration) -> Poller {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Poller {
            fd,
            window: if cpus < 2 { Duration::ZERO } else { window },
            state: Mutex::new(State {
                reading: threads,
                ..State::default()
            }),
            parked_cv: Condvar::new(),
            sentinel_cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The descriptor's poll events now (POLLIN: a request is queued; POLLERR: the connection
    /// is gone). Never blocks. A failed poll(2) reads as POLLIN: fuser's `read` then reports
    /// whatever is wrong.
    fn events(&self) -> i16 {
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, no timeout.
            match unsafe { libc::poll(&mut p, 1, 0) } {
                0 => return 0,
                n if n > 0 => return p.revents,
                _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                _ => return libc::POLLIN,
            }
        }
    }

    /// Whether a request is queued (or the connection is gone: fuser's `read` ends the thread).
    fn queued(&self) -> bool {
        self.events() != 0
    }

    /// At the start of a request. The returned turn polls or parks when dropped.
    pub fn request(&self) -> Turn<'_> {
        self.start(true, false)
    }

    /// The same for a READ.
    pub fn read_request(&self) -> Turn<'_> {
        self.start(true, true)
    }

    /// The same for a request the kernel sends in the background, without a process waiting
    /// for it (RELEASE, RELEASEDIR: the closing process has gone on to its next call): it does
    /// not count as served at the same time as that process's next request.
    pub fn background(&self) -> Turn<'_> {
        self.start(false, false)
    }

    fn start(&self, counted: bool, read: bool) -> Turn<'_> {
        if self.window.is_zero() {
            return Turn::NONE;
        }
        let now = Instant::now();
        let (alone, wake_sentinel) = {
            let mut s = self.lock();
            s.reading = s.reading.saturating_sub(1);
            s.started += 1;
            s.quiet = false;
            s.serving += usize::from(counted);
            if counted {
                s.reads_in_a_row = if read { s.reads_in_a_row + 1 } else { 0 };
                // A request after a reply with nothing else served since: how soon it came.
                if let Some(t) = s.replied_at.take()
                    && s.serving == 1
                    && !together(&s, now)
                {
                    s.gaps.push(now.saturating_duration_since(t));
                }
            }
            // A stream of READs is served as requests that come together are (module docs).
            if counted && (s.serving >= 2 || s.reads_in_a_row >= READ_STREAM) {
                let already = together(&s, now);
                s.together_at = Some(now);
                if !already && s.parked > s.release {
                    // Requests come together: every parked thread goes back to serve them.
                    s.release = s.parked;
                    drop(s);
                    self.parked_cv.notify_all();
                    self.sentinel_cv.notify_all();
                    return Turn(Some((self, now, counted)));
                }
            }
            let alone = s.reading == 0 && !s.polling && s.parked > 0;
            let wake = alone && s.sentinel_idle;
            if wake {
                s.sentinel_idle = false;
            }
            (alone, wake)
        };
        if wake_sentinel {
            self.sentinel_cv.notify_one();
        }
        if alone && self.queued() {
            // Another request is queued and nobody but this thread would take it.
            let mut s = self.lock();
            if s.parked > s.release {
                s.release += 1;
                drop(s);
                self.parked_cv.notify_one();
                self.sentinel_cv.notify_one();
            }
        }
        Turn(Some((self, now, counted)))
    }

    /// A thread unwinding from a panic in a callback leaves fuser's loop (fuser does not catch
    /// it): it neither polls nor parks nor counts as reading again, and if it was the only one
    /// free, a parked thread takes its place.
    fn abandon(&self, counted: bool) {
        let mut s = self.lock();
        s.serving = s.serving.saturating_sub(usize::from(counted));
        if s.reading == 0 && !s.polling && s.parked > s.release {
            s.release += 1;
            drop(s);
            self.parked_cv.notify_one();
            self.sentinel_cv.notify_one();
        }
    }

    /// After the reply: poll for the next request if nobody else waits for one, else park.
    fn leave(&self, since: Instant, counted: bool) {
        let now = Instant::now();
        let s = {
            let mut s = self.lock();
            if now - since >= SLOW {
                s.slow_at = Some(now);
            }
            s.serving = s.serving.saturating_sub(usize::from(counted));
            if counted {
                s.replied_at = Some(now);
            }
            if together(&s, now) {
                s.reading += 1;
                return;
            }
            if s.reading > 0 || s.polling {
                self.park(s);
                return;
            }
            s.polling = true;
            s
        };
        // With no window (requests mostly come later than the longest), one look.
        let end = now + s.gaps.window(self.window);
        drop(s);
        let found = loop {
            if self.queued() {
                break true;
            }
            if Instant::now() >= end {
                break false;
            }
            std::hint::spin_loop();
        };
        let mut s = self.lock();
        s.polling = false;
        s.reading += 1;
        s.quiet = !found;
    }

    fn park(&self, mut s: MutexGuard<'_, State>) {
        s.parked += 1;
        let mut sentinel = false;
        // What the sentinel saw at its last look: requests started, a request queued.
        let mut seen = s.started;
        let mut was_queued = false;
        loop {
            if s.closed {
                break;
            }
            if s.release > 0 {
                s.release -= 1;
                break;
            }
            if !s.sentinel {
                s.sentinel = true;
                sentinel = true;
            }
            if !sentinel {
                s = self.parked_cv.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // While requests come (no poller has gone to sleep since), look often; a thread
            // left alone with a request wakes a sentinel that looks seldom.
            let watching = !s.quiet;
            s.sentinel_idle = !watching;
            let wait = match s.slow_at {
                _ if !watching => IDLE_WATCH,
                Some(t) if t.elapsed() < SLOW_MEMORY => WATCH_SLOW,
                _ => WATCH,
            };
            s = self
                .sentinel_cv
                .wait_timeout(s, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.sentinel_idle = false;
            if s.release > 0 || s.closed {
                continue;
            }
            let ev = self.events();
            if ev & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                s.closed = true;
                self.parked_cv.notify_all();
                break;
            }
            let queued = ev & libc::POLLIN != 0;
            if queued && ((s.reading == 0 && !s.polling) || (was_queued && s.started == seen)) {
                // Queued, and every other thread is busy; or queued at the last look too with
                // no request started since, whatever the counts say.
                break;
            }
            if !queued && s.reading > 0 && s.started == seen {
                s.quiet = true; // no request started since the last look
            }
            seen = s.started;
            was_queued = queued;
        }
        s.parked -= 1;
        s.reading += 1;
        if sentinel {
            // Another parked thread takes its place.
            s.sentinel = false;
            if s.parked > 0 && !s.closed {
                drop(s);
                self.parked_cv.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The poller over a pipe: readable when a byte is in it ("a request is queued"), hung up
    //! when its writing end is closed ("the connection is gone").
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::Arc;
    use std::sync::mpsc;

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe().expect("pipe")
    }

    /// Runs `f` on a thread; the receiver gets a message when it returns.
    fn spawn(f: impl FnOnce() + Send + 'static) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx
    }

    fn serve(p: &Arc<Poller>) -> mpsc::Receiver<()> {
        let p = p.clone();
        spawn(move || drop(p.request()))
    }

    fn parked(p: &Poller) -> usize {
        p.lock().parked
    }

    fn wait_parked(p: &Poller, n: usize) {
        let end = Instant::now() + Duration::from_secs(5);
        while parked(p) != n {
            assert!(Instant::now() < end, "{} parked, expected {n}", parked(p));
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    const LONG: Duration = Duration::from_secs(5);

    /// A poller over a pipe for `threads` threads (polling for [`LONG`]) and one thread that has
    /// served a request and parked (the others are taken to be reading); `None` on one CPU,
    /// where nothing parks.
    fn one_parked(threads: usize) -> Option<(OwnedFd, OwnedFd, Arc<Poller>, mpsc::Receiver<()>)> {
        if !multi_cpu() {
            return None;
        }
        let (r, w) = pipe();
        let p = Arc::new(Poller::new(r.as_raw_fd(), threads, LONG));
        let first = serve(&p);
        wait_parked(&p, 1);
        Some((r, w, p, first))
    }

    fn multi_cpu() -> bool {
        std::thread::available_parallelism().map_or(1, |n| n.get()) > 1
    }

    #[test]
    fn a_lone_thread_polls_for_its_window_then_sleeps_in_read() {
        if !multi_cpu() {
            return;
        }
        let (r, w) = pipe();
        // A quarter of the longest window until gaps are known.
        let p = Arc::new(Poller::new(r.as_raw_fd(), 1, Duration::from_millis(120)));
        let t = Instant::now();
        drop(p.request());
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_millis(100), "{took:?}");
        assert!(p.lock().quiet);
        assert_eq!(p.lock().reading, 1);
        // A queued request ends the window at once.
        rustix::io::write(&w, b"x").expect("write");
        let t = Instant::now();
        drop(p.request());
        assert!(t.elapsed() < Duration::from_millis(25), "{:?}", t.elapsed());
        assert!(!p.lock().quiet);
    }

    #[test]
    fn a_stream_of_reads_is_not_polled_for() {
        if !multi_cpu() {
            return;
        }
        let (r, _w) = pipe();
        let p = Arc::new(Poller::new(r.as_raw_fd(), 1, Duration::from_millis(120)));
        // A READ between other requests: polled for, as they are.
        let t = Instant::now();
        drop(p.read_request());
        assert!(
            t.elapsed() >= Duration::from_millis(30),
            "{:?}",
            t.elapsed()
        );
        drop(p.request());
        for _ in 1..READ_STREAM {
            drop(p.read_request());
        }
        // The READ that makes a stream: the thread goes back to read(2) at once.
        let t = Instant::now();
        drop(p.read_request());
        assert!(t.elapsed() < Duration::from_millis(25), "{:?}", t.elapsed());
        assert!(together(&p.lock(), Instant::now()));
    }

    #[test]
    fn a_thread_parks_while_another_waits_and_is_sent_back_for_a_queued_request() {
        // Two threads: this test plays the one that reads.
        let Some((_r, w, p, first)) = one_parked(2) else {
            return;
        };
        assert!(
            first.try_recv().is_err(),
            "returned while another thread reads"
        );
        // The reader takes a request while another one is queued: the parked thread serves it.
        rustix::io::write(&w, b"x").expect("write");
        let turn = p.request();
        first.recv_timeout(LONG).expect("parked thread released");
        assert_eq!(parked(&p), 0);
        // The released thread now waits for requests, so this one parks after its reply, until
        // the connection ends.
        drop(w);
        drop(turn);
        assert!(p.lock().closed);
    }

    #[test]
    fn the_sentinel_takes_a_request_queued_while_every_other_thread_is_busy() {
        let Some((_r, w, p, first)) = one_parked(2) else {
            return;
        };
        // The other thread starts a (long) request with nothing queued, then one is queued.
        let turn = p.request();
        assert!(first.try_recv().is_err());
        let t = Instant::now();
        rustix::io::write(&w, b"x").expect("write");
        first.recv_timeout(LONG).expect("sentinel took the request");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        drop(w);
        drop(turn);
    }

    #[test]
    fn parked_threads_leave_when_the_connection_is_gone() {
        if !multi_cpu() {
            return;
        }
        let (r, w) = pipe();
        let p = Arc::new(Poller::new(r.as_raw_fd(), 4, LONG));
        let parked_threads: Vec<_> = (0..3).map(|_| serve(&p)).collect();
        wait_parked(&p, 3);
        drop(w);
        for t in parked_threads {
            t.recv_timeout(LONG).expect("left at hang-up");
        }
        assert!(p.lock().closed);
    }

    #[test]
    fn a_panicking_request_sends_a_parked_thread_in_its_place() {
        let Some((_r, w, p, first)) = one_parked(2) else {
            return;
        };
        // The other thread panics in a request: fuser's loop ends with it.
        let q = p.clone();
        let r2 = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _turn = q.request();
            panic!("callback panics");
        }));
        assert!(r2.is_err());
        first.recv_timeout(LONG).expect("parked thread sent back");
        assert_eq!(p.lock().reading, 1, "the panicked thread is not counted");
        drop(w);
    }

    #[test]
    fn the_sentinel_goes_quiet_when_requests_stop_and_takes_a_request_left_queued() {
        // Three threads: this one parks; the two others are taken to be reading.
        let Some((_r, w, p, first)) = one_parked(3) else {
            return;
        };
        let end = Instant::now() + LONG;
        while !p.lock().quiet {
            assert!(Instant::now() < end, "never quiet");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A request nobody takes (the two "readers" do not exist): taken after two looks.
        rustix::io::write(&w, b"x").expect("write");
        first
            .recv_timeout(IDLE_WATCH * 3 + Duration::from_secs(1))
            .expect("left-over request taken");
        drop(w);
    }

    #[test]
    fn requests_served_together_send_every_thread_back_to_read() {
        let Some((_r, _w, p, first)) = one_parked(4) else {
            return;
        };
        // Two requests at once (two threads of the test, here one after the other).
        let a = p.request();
        let b = p.request();
        first.recv_timeout(LONG).expect("parked thread sent back");
        // Neither polls nor parks after its reply while requests come together.
        let t = Instant::now();
        drop(a);
        drop(b);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(parked(&p), 0);
        assert_eq!(p.lock().serving, 0);
    }

    fn gaps(us: &[u64]) -> Gaps {
        let mut g = Gaps::default();
        for &u in us {
            g.push(Duration::from_micros(u));
        }
        g
    }

    #[test]
    fn the_window_follows_how_soon_requests_come() {
        let w = Duration::from_micros(200);
        let us = Duration::from_micros;
        assert_eq!(
            gaps(&[10; 5]).window(w),
            us(50),
            "a quarter until gaps are known"
        );
        assert_eq!(gaps(&[10; 20]).window(w), us(50));
        // git add: 84% within 50 µs, 94% within 100 µs.
        let git: Vec<u64> = (0..64)
            .map(|i| match i {
                0..54 => 20,
                54..60 => 80,
                60..62 => 150,
                _ => 900,
            })
            .collect();
        assert_eq!(gaps(&git).window(w), us(100));
        let mut g = gaps(&[5000; 10]);
        for &u in &git {
            g.push(us(u));
        }
        assert_eq!(g.window(w), us(100), "the latest 64 count");
        assert_eq!(gaps(&[150; 64]).window(w), us(200));
        // Half quick, half slow: a quarter; mostly slow (a process computing between calls):
        // none, where a fixed window spent itself in full after every request.
        let half: Vec<u64> = (0..64)
            .map(|i| if i % 2 == 0 { 20 } else { 5000 })
            .collect();
        assert_eq!(gaps(&half).window(w), us(50));
        assert_eq!(gaps(&[300; 64]).window(w), Duration::ZERO);
        // The ring keeps the latest: quick again after slow.
        let mut g = gaps(&[300; 64]);
        for _ in 0..64 {
            g.push(us(20));
        }
        assert_eq!(g.window(w), us(50));
    }

    #[test]
    fn a_lone_thread_stops_polling_when_requests_come_later_than_its_window() {
        if !multi_cpu() {
            return;
        }
        let (r, _w) = pipe();
        let p = Arc::new(Poller::new(r.as_raw_fd(), 1, Duration::from_millis(8)));
        // Requests that come 20 ms after each reply, longer than the longest window.
        for _ in 0..GAPS_KNOWN + 1 {
            drop(p.request());
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = Instant::now();
        drop(p.request());
        assert!(t.elapsed() < Duration::from_millis(2), "{:?}", t.elapsed());
        assert!(p.lock().quiet, "looked once, found nothing");
    }

    #[test]
    fn no_window_no_polling() {
        let (r, _w) = pipe();
        let p = Poller::new(r.as_raw_fd(), 2, Duration::ZERO);
        let t = Instant::now();
        drop(p.request());
        drop(p.request());
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(parked(&p), 0);
    }
}

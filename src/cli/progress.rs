//! Progress reporting for long operations: a live line on a terminal, periodic plain lines
//! otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    unit: &'static str,
    start: Instant,
    last: Instant,
    tty: bool,
    shown: bool,
}

impl Progress {
    pub fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Progress {
            what,
            unit: "files",
            start: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// What is counted ("files" unless set).
    pub fn unit(mut self, unit: &'static str) -> Self {
        self.unit = unit;
        self
    }

    pub fn update(&mut self, done: u64, total: u64) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < every && done != total {
            return;
        }
        // An operation done within a second shows nothing.
        if done == total && !self.shown && self.start.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        let line = format!(
            "{}: {done}/{total} {}, {rate:.0}/s, ETA {eta:.0}s",
            self.what, self.unit
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        self.shown = true;
    }

    pub fn finish(&mut self) {
        if self.tty && self.shown {
            eprintln!();
        }
    }
}

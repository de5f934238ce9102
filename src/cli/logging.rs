//! Logging: to stderr in the foreground, to syslog (the journal) when daemonized. Filtered by
//! `KMSFS_LOG` (any `tracing` filter, e.g. `KMSFS_LOG=debug`), else by `-v`/`-vv`; warnings by
//! default. No secret is ever logged (secret types have redacted `Debug`).

use std::ffi::CString;
use std::io::Write;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// One syslog message per log event, sent when the event's writer is dropped.
pub struct SyslogLine {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end().replace('\0', " ");
        if text.is_empty() {
            return;
        }
        if let Ok(msg) = CString::new(text) {
            // SAFETY: a constant "%s" format and a NUL-terminated message.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), msg.as_ptr()) };
        }
    }
}

pub struct Syslog;

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::new(),
        }
    }
}

/// Installs the process's logger (once). `syslog`: the daemon, whose stderr is gone.
pub(crate) fn init(verbose: u8, syslog: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // fuser 0.18.0 tries to unmount again when its session ends after an external unmount
    // (`fusermount3 -u`, `kmsfs unmount`: its check for a live mount is inverted, fixed upstream
    // in fuser PR #703, not released yet; see `fuse::teardown`) and logs the EINVAL as a
    // warning: one spurious line in the journal per unmount. That warning is the only one
    // fuser's `session` module logs.
    // Only at the default level: with -v/-vv the line shows, with fuser's other messages.
    let default = if verbose == 0 {
        format!("{default},fuser::session=error")
    } else {
        default.to_string()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KMSFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if syslog {
        // SAFETY: a static identifier; LOG_PID adds the daemon's pid to each message.
        unsafe { libc::openlog(c"kmsfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(Syslog)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    }
}

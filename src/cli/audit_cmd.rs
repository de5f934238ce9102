//! `kmsfs audit show|tail|verify|export`: on a cipher directory (with the passphrase; safe
//! while the volume is mounted) or, given a mount point or a mounted cipher directory, through
//! the mount's `.kmsfs/audit` and `VerifyAuditLog` request.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::UnlockArgs;
use super::error::CliError;
use super::exit_code as code;
use crate::keymgr::audit::{self, AuditKeys, AuditRecord};
use crate::keymgr::policy::glob;

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The volume's cipher directory (read with the passphrase), or the mount point of the
    /// mounted volume (read through .kmsfs/audit, as the key policy allows).
    cipherdir: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
    #[command(subcommand)]
    op: AuditOp,
}

#[derive(Args, Debug, Clone, Default)]
struct Filter {
    /// Only records at or after this time (RFC 3339, or a duration ago like 1h).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time.
    #[arg(long)]
    until: Option<String>,
    /// Only this user (name or uid).
    #[arg(long)]
    user: Option<String>,
    /// Only paths matching this glob.
    #[arg(long)]
    path: Option<String>,
    /// Only this key id.
    #[arg(long)]
    key: Option<String>,
    /// Only this event name (Open, Create, Close, RotateKey, …).
    #[arg(long)]
    event: Option<String>,
    /// Only denials.
    #[arg(long)]
    denied: bool,
    /// JSON Lines output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum AuditOp {
    /// Print records (filters combine).
    Show {
        #[command(flatten)]
        f: Filter,
    },
    /// Print the last records; with -f keep printing new ones.
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        lines: usize,
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        f: Filter,
    },
    /// Check the chain, sequence numbers, checkpoint signatures and segments; non-zero exit and
    /// the spot of every problem if the log was modified, cut or reordered.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Write every record as JSON Lines to FILE (or - for stdout).
    Export { file: PathBuf },
    /// Show or set how long the log is kept: segments whose newest entry is older than the
    /// retention period, and the oldest segments while the log is larger than its size limit,
    /// are removed (at once, at mount, every minute while mounted, and for the size limit at
    /// every 16 MiB segment), after a signed record of the new beginning so that `verify` still
    /// passes. The flags given are the whole setting: `--days 30` alone drops a size limit.
    Retention {
        /// Keep this many days (at least 1).
        #[arg(long, value_name = "N", conflicts_with = "off")]
        days: Option<u32>,
        /// Keep at most this much: bytes, or with a suffix K, M, G, T (powers of 1024; at least
        /// 32M). The segment being written is always kept.
        #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "off")]
        max_size: Option<u64>,
        /// Keep the log for ever, whatever its size (the default).
        #[arg(long)]
        off: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `SIZE` of `--max-size`: bytes, or a number with a suffix K, M, G or T (powers of 1024,
/// optionally followed by `iB` or `B`).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.contains(['.', ',']) {
        return Err(format!("{s:?}: whole numbers only (e.g. 1536M for 1.5G)"));
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if *e.kind() == std::num::IntErrorKind::PosOverflow {
            format!("{s:?} is too large")
        } else {
            format!("{s:?} is not a size (e.g. 500M, 10G)")
        }
    })?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn when(s: &str) -> Result<String, CliError> {
    let t = if let Ok(d) = humantime::parse_duration(s) {
        std::time::SystemTime::now() - d
    } else {
        parse_rfc3339(s).ok_or_else(|| {
            CliError::new(
                code::USAGE,
                format!("time {s:?} is neither RFC 3339 nor a duration"),
            )
        })?
    };
    Ok(humantime::format_rfc3339_nanos(t).to_string())
}

/// An RFC 3339 time: UTC (`Z`), without a zone (taken as UTC), or with an offset such as
/// `+01:00`, which humantime does not take (refused until 2026-12-06).
fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(t);
    }
    // `…±HH:MM` after a time of day.
    let (base, off) = s.split_at_checked(s.len().checked_sub(6)?)?;
    let sign = match off.as_bytes()[0] {
        b'+' => 1i64,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = off[1..].split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 || !base.contains('T') {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    let shift = std::time::Duration::from_secs(h * 3600 + m * 60);
    // Local time = UTC + offset, so UTC = local - offset.
    if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

impl Filter {
    fn matches(&self, r: &AuditRecord, since: &Option<String>, until: &Option<String>) -> bool {
        since.as_ref().is_none_or(|s| r.time.as_str() >= s.as_str())
            && until.as_ref().is_none_or(|u| r.time.as_str() < u.as_str())
            && self.user.as_ref().is_none_or(|u| {
                r.actor.user.as_deref() == Some(u.as_str()) || r.actor.uid.to_string() == *u
            })
            && self
                .path
                .as_ref()
                .is_none_or(|g| r.resources.path.as_ref().is_some_and(|p| glob(g, p)))
            && self
                .key
                .as_ref()
                .is_none_or(|k| r.resources.key_id.as_deref() == Some(k.as_str()))
            && self
                .event
                .as_ref()
                .is_none_or(|e| r.event.eq_ignore_ascii_case(e))
            && (!self.denied || r.denied())
    }
}

fn print(r: &AuditRecord, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let who = r
        .actor
        .user
        .clone()
        .unwrap_or_else(|| r.actor.uid.to_string());
    let dec = r
        .decision
        .as_ref()
        .map(|d| {
            format!(
                " {} by {}",
                if d.allowed { "allowed" } else { "DENIED" },
                d.by
            )
        })
        .unwrap_or_default();
    let bytes = match (r.bytes_read, r.bytes_written) {
        (None, None) => String::new(),
        (a, b) => format!(" read={} written={}", a.unwrap_or(0), b.unwrap_or(0)),
    };
    println!(
        "{:>7} {} {:<16} {} pid={} exe={} path={} key={}{}{}{}{}{}",
        r.seq,
        r.time,
        r.event,
        who,
        r.actor.pid,
        r.actor.exe.as_deref().unwrap_or("-"),
        r.resources.path.as_deref().unwrap_or("-"),
        r.resources.key_id.as_deref().unwrap_or("-"),
        r.resources
            .key_version
            .map(|v| format!(" v{v}"))
            .unwrap_or_default(),
        dec,
        r.outcome
            .as_deref()
            .map(|o| format!(" {o}"))
            .unwrap_or_default(),
        if r.errno != 0 {
            format!(" errno={}", r.errno)
        } else {
            String::new()
        },
        bytes,
    );
    if let Some(d) = &r.detail {
        println!("        {d}");
    }
}

/// Where the records come from: the control directory of the mount (what the key policy lets
/// the caller read), or the cipher directory unlocked with the passphrase.
enum Source {
    Mounted(PathBuf),
    Offline {
        control: PathBuf,
        keys: Box<AuditKeys>,
        /// The key store's record of the last clean unmount.
        anchor: Option<crate::keymgr::store::AuditAnchor>,
    },
}

impl Source {
    fn io(&self, e: std::io::Error) -> CliError {
        let at = match self {
            Source::Mounted(c) => c.join("audit"),
            Source::Offline { control, .. } => control.clone(),
        };
        // Through a mount, EACCES is the key policy's denial: exit 22 as for `verify` (which
        // goes through `request`), naming the action (was: exit 1, a bare "Permission denied").
        if let (Source::Mounted(_), std::io::ErrorKind::PermissionDenied) = (self, e.kind()) {
            return CliError::new(
                code::ACCESS_DENIED,
                format!(
                    "{}: denied by key policy: reading the audit log needs kms:ReadAuditLog on \
                     the volume's default key",
                    at.display()
                ),
            )
            .hint("ask a key administrator to allow it (kmsfs policy put)");
        }
        CliError::new(code::ERROR, format!("audit log in {}: {e}", at.display()))
    }

    fn records(&self) -> Result<Vec<AuditRecord>, CliError> {
        match self {
            Source::Offline { control, keys, .. } => {
                audit::read_all(control, keys).map_err(|e| self.io(e))
            }
            Source::Mounted(_) => Feed::open(self)?.next(),
        }
    }

    fn verify(&self) -> Result<audit::VerifyReport, CliError> {
        match self {
            Source::Offline {
                control,
                keys,
                anchor,
            } => {
                let mut p = super::progress::Progress::new("audit verify").unit("segments");
                let r = audit::verify_with_progress(control, keys, anchor.as_ref(), &mut |d, n| {
                    p.update(d, n)
                })
                .map_err(|e| self.io(e));
                p.finish();
                r
            }
            Source::Mounted(c) => {
                let t = super::target::Target::Mounted(c.clone());
                let v = t.call(&crate::control::Request::VerifyAuditLog)?;
                serde_json::from_value(v)
                    .map_err(|e| CliError::new(code::ERROR, format!("bad verify report: {e}")))
            }
        }
    }
}

/// New records as they come. Through a mount, one open `.kmsfs/audit` read on from where the
/// last read ended: every open of it is an audited read (`ReadAuditLog`), so `tail -f` that
/// reopened and re-read the whole log twice a second added two records a second to an idle
/// volume's log and printed them (until 2026-12-06). Offline, the log is read again.
enum Feed<'a> {
    Mounted {
        src: &'a Source,
        file: std::fs::File,
        /// The start of a line whose end has not been read yet.
        partial: Vec<u8>,
    },
    Offline(&'a Source),
}

impl<'a> Feed<'a> {
    fn open(src: &'a Source) -> Result<Feed<'a>, CliError> {
        Ok(match src {
            Source::Mounted(c) => Feed::Mounted {
                src,
                file: std::fs::File::open(c.join("audit")).map_err(|e| src.io(e))?,
                partial: Vec::new(),
            },
            Source::Offline { .. } => Feed::Offline(src),
        })
    }

    /// The records written since the last call (the first call: all of them; offline: all of
    /// them every time).
    fn next(&mut self) -> Result<Vec<AuditRecord>, CliError> {
        let (src, file, partial) = match self {
            Feed::Offline(src) => return src.records(),
            Feed::Mounted { src, file, partial } => (src, file, partial),
        };
        use std::io::Read;
        file.read_to_end(partial).map_err(|e| src.io(e))?;
        let Some(end) = partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let rest = partial.split_off(end + 1);
        let lines = std::mem::replace(partial, rest);
        lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).map_err(|e| {
                    CliError::new(code::INTEGRITY, format!("unreadable audit line: {e}"))
                })
            })
            .collect()
    }
}

pub fn audit(a: &AuditArgs) -> Result<(), CliError> {
    if let AuditOp::Retention {
        days,
        max_size,
        off,
        json,
    } = &a.op
    {
        return retention(a, *days, *max_size, *off, *json);
    }
    let src = match super::target::mount_of(&a.cipherdir)? {
        Some(mp) => Source::Mounted(mp.join(crate::control::CONTROL_NAME)),
        None => {
            let root = std::fs::canonicalize(&a.cipherdir)
                .map_err(|_| crate::keymgr::VolumeError::NotAVolume(a.cipherdir.clone()))?;
            crate::keymgr::probe(&root)?;
            let u = crate::keymgr::unlock(&root, &a.unlock.source().get()?)?;
            super::warn_if_backup(&u);
            Source::Offline {
                keys: Box::new(AuditKeys::new(&u.store.volume_secret)),
                control: u.paths.control_dir(),
                anchor: u.store.audit_anchor.clone(),
            }
        }
    };
    match &a.op {
        AuditOp::Show { f } => {
            let (s, u) = (
                f.since.as_deref().map(when).transpose()?,
                f.until.as_deref().map(when).transpose()?,
            );
            for r in src.records()?.iter().filter(|r| f.matches(r, &s, &u)) {
                print(r, f.json);
            }
        }
        AuditOp::Tail { lines, follow, f } => {
            let (s, u) = (
                f.since.as_deref().map(when).transpose()?,
                f.until.as_deref().map(when).transpose()?,
            );
            let mut feed = Feed::open(&src)?;
            let all = feed.next()?;
            let sel: Vec<&AuditRecord> = all.iter().filter(|r| f.matches(r, &s, &u)).collect();
            let mut last = all.last().map_or(0, |r| r.seq);
            for r in &sel[sel.len().saturating_sub(*lines)..] {
                print(r, f.json);
            }
            if !*follow {
                return Ok(());
            }
            loop {
                // Runs until interrupted (tail -f).
                std::thread::sleep(std::time::Duration::from_millis(500));
                let new: Vec<AuditRecord> =
                    feed.next()?.into_iter().filter(|r| r.seq > last).collect();
                for r in &new {
                    last = r.seq;
                    if f.matches(r, &s, &u) {
                        print(r, f.json);
                    }
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        }
        AuditOp::Verify { json } => {
            let r = src.verify()?;
            if *json {
                super::key_cmd::print_json(&r);
            } else {
                println!(
                    "{} segment(s), {} entries ({} records, {} checkpoints, {} chain starts); checkpoint key {}",
                    r.segments, r.entries, r.records, r.checkpoints, r.chain_starts, r.signing_key
                );
                for f in &r.findings {
                    println!(
                        "PROBLEM: {}{}{}",
                        f.segment
                            .map(|s| format!("segment {s}: "))
                            .unwrap_or_default(),
                        f.seq.map(|s| format!("entry {s}: ")).unwrap_or_default(),
                        f.problem
                    );
                }
                if r.ok() {
                    println!("audit log intact");
                }
            }
            if !r.ok() {
                return Err(CliError::new(
                    code::INTEGRITY,
                    format!(
                        "audit log verification failed: {} problem(s)",
                        r.findings.len()
                    ),
                ));
            }
        }
        // Handled before the log was opened.
        AuditOp::Retention { .. } => {}
        AuditOp::Export { file } => {
            let all = src.records()?;
            let mut out = String::new();
            for r in &all {
                out.push_str(&serde_json::to_string(r).unwrap_or_default());
                out.push('\n');
            }
            if file.as_os_str() == "-" {
                print!("{out}");
            } else {
                write_private(file, out.as_bytes())
                    .map_err(|e| CliError::new(code::ERROR, format!("{}: {e}", file.display())))?;
            }
        }
    }
    Ok(())
}

/// Writes the decrypted log (paths, users, programs) to a file only its owner can read, as
/// `keystore export` and `--recovery-key-file` do (was: the umask's mode, 0644 for most). An
/// existing file keeps its mode.
fn write_private(file: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(data)
}

/// `audit retention`: a key-manager request (the mount's, or the cipher directory's with the
/// passphrase).
fn retention(
    a: &AuditArgs,
    days: Option<u32>,
    max_bytes: Option<u64>,
    off: bool,
    json: bool,
) -> Result<(), CliError> {
    use crate::control::Request;
    let t = super::target::target(&a.cipherdir, &a.unlock)?;
    let req = if days.is_some() || max_bytes.is_some() || off {
        Request::PutAuditSettings {
            retention_days: days,
            max_bytes,
        }
    } else {
        Request::GetAuditSettings
    };
    let v = t.call(&req)?;
    if json {
        super::key_cmd::print_json(&v);
        return Ok(());
    }
    let days = v.get("retention_days").and_then(|d| d.as_u64());
    let max = v.get("max_bytes").and_then(|d| d.as_u64());
    match (days, max) {
        (None, None) => println!("audit log retention: off (kept for ever)"),
        (Some(d), None) => println!("audit log retention: {d} day(s)"),
        (None, Some(m)) => println!("audit log retention: at most {}", size_text(m)),
        (Some(d), Some(m)) => println!("audit log retention: {d} day(s), at most {}", size_text(m)),
    }
    if let Some(r) = v.get("removed_segments").and_then(|r| r.as_array())
        && let [a, b] = r.as_slice()
    {
        println!("removed segments {a}..={b}");
    }
    Ok(())
}

/// `bytes` for people: exact in the largest unit that divides it (`10 GiB`), else in bytes.
fn size_text(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::{parse_rfc3339, parse_size};

    #[test]
    fn rfc3339_times_with_an_offset_parse() {
        let utc = parse_rfc3339("2026-12-06T07:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-12-06T08:00:00+01:00"), Some(utc));
        assert_eq!(parse_rfc3339("2026-12-06T05:30:00-01:30"), Some(utc));
        assert_eq!(parse_rfc3339("2026-12-06T07:00:00"), Some(utc));
        for bad in [
            "2026-12-06T08:00:00+25:00",
            "yesterday",
            "2026-12-06+01:00",
            "+01:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("32mib"), Ok(32 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for (bad, why) in [
            ("", "not a size"),
            ("G", "not a size"),
            ("1.5G", "whole numbers"),
            ("10X", "unknown unit"),
            ("99999999999999999999", "too large"),
            ("20000000T", "too large"),
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}

//! Counters of a mount and their Prometheus text rendering (`.kmsfs/metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::ControlDir;
use crate::format::KeyId;

/// Per-key counters.
#[derive(Debug, Default)]
pub struct KeyCounters {
    /// Opens of existing files allowed (kms:Decrypt).
    pub decrypts: AtomicU64,
    /// New files (kms:GenerateDataKey).
    pub data_keys: AtomicU64,
    pub denials: AtomicU64,
}

/// Counters of the file system and the control directory, updated by `vfs`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub opens: AtomicU64,
    pub creates: AtomicU64,
    pub denials: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub control_requests: AtomicU64,
    pub control_errors: AtomicU64,
    pub identity_cache_hits: AtomicU64,
    pub identity_cache_misses: AtomicU64,
    /// Files whose beginning was read ahead (see `vfs::prefetch`).
    pub prefetched_files: AtomicU64,
    /// Subdirectories whose listing was read ahead in a tree walk (see `vfs::dir_ahead`).
    pub dirs_read_ahead: AtomicU64,
    /// Ciphertext bytes of streaming writes sent to the disk early (see `vfs::write_behind`).
    pub written_behind_bytes: AtomicU64,
    /// Plaintext bytes copied by copy_file_range within the daemon (see `vfs::copy_ops`).
    pub copied_bytes: AtomicU64,
    pub per_key: DashMap<KeyId, KeyCounters>,
    /// Progress of the running (or last) rewrap through the mount.
    pub rewrap_done: std::sync::Arc<AtomicU64>,
    pub rewrap_total: std::sync::Arc<AtomicU64>,
}

impl Metrics {
    /// Counts a policy decision on a file's key: `create` (GenerateDataKey) or open (Decrypt).
    pub fn file_decision(&self, key: KeyId, create: bool, allowed: bool) {
        let k = self.per_key.entry(key).or_default();
        if !allowed {
            self.denials.fetch_add(1, Ordering::Relaxed);
            k.denials.fetch_add(1, Ordering::Relaxed);
        } else if create {
            self.creates.fetch_add(1, Ordering::Relaxed);
            k.data_keys.fetch_add(1, Ordering::Relaxed);
        } else {
            self.opens.fetch_add(1, Ordering::Relaxed);
            k.decrypts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Label values escaped as the exposition format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

impl ControlDir {
    pub(super) fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut o = Out(String::new());
        o.one(
            "kmsfs_uptime_seconds",
            "gauge",
            "Seconds since the volume was mounted.",
            self.uptime(),
        );
        o.one(
            "kmsfs_opens_total",
            "counter",
            "Opens of existing files allowed by key policy.",
            g(&m.opens),
        );
        o.one(
            "kmsfs_creates_total",
            "counter",
            "Files created (a data key generated).",
            g(&m.creates),
        );
        o.one(
            "kmsfs_denials_total",
            "counter",
            "File opens and creates denied by key policy.",
            g(&m.denials),
        );
        o.one(
            "kmsfs_integrity_failures_total",
            "counter",
            "Authenticated data that failed its check.",
            g(&m.integrity_failures),
        );
        o.one(
            "kmsfs_read_bytes_total",
            "counter",
            "Plaintext bytes read through closed handles.",
            g(&m.bytes_read),
        );
        o.one(
            "kmsfs_written_bytes_total",
            "counter",
            "Plaintext bytes written through closed handles.",
            g(&m.bytes_written),
        );
        o.one(
            "kmsfs_prefetched_files_total",
            "counter",
            "Files whose beginning was read ahead because files before them in their directory were opened.",
            g(&m.prefetched_files),
        );
        o.one(
            "kmsfs_dirs_read_ahead_total",
            "counter",
            "Subdirectories whose listing was read from the disk ahead of a tree walk (du, ls -R, find).",
            g(&m.dirs_read_ahead),
        );
        o.one(
            "kmsfs_written_behind_bytes_total",
            "counter",
            "Ciphertext bytes of streaming writes sent to the disk before an fsync asked (write-behind), counted when the file is closed.",
            g(&m.written_behind_bytes),
        );
        o.one(
            "kmsfs_copied_bytes_total",
            "counter",
            "Plaintext bytes copied from file to file by copy_file_range(2) in the daemon (cp), without passing through the kernel.",
            g(&m.copied_bytes),
        );
        o.one(
            "kmsfs_rewrap_files_done",
            "gauge",
            "Files processed by the running or last rewrap through this mount.",
            m.rewrap_done.load(Ordering::Relaxed),
        );
        o.one(
            "kmsfs_rewrap_files_total",
            "gauge",
            "Files of the running or last rewrap through this mount.",
            m.rewrap_total.load(Ordering::Relaxed),
        );
        o.one(
            "kmsfs_control_requests_total",
            "counter",
            "Key-manager requests through the control directory.",
            g(&m.control_requests),
        );
        o.one(
            "kmsfs_control_errors_total",
            "counter",
            "Key-manager requests refused (invalid, denied or failed).",
            g(&m.control_errors),
        );
        if let Some(log) = self.audit.get() {
            // A log that cannot be listed reads as empty here; writing to it fails loudly.
            let (bytes, segments) = log.disk_usage().unwrap_or_default();
            o.one(
                "kmsfs_audit_log_bytes",
                "gauge",
                "Size of the audit log's segment files.",
                bytes,
            );
            o.one(
                "kmsfs_audit_log_segments",
                "gauge",
                "Segment files of the audit log.",
                segments,
            );
            o.one(
                "kmsfs_audit_log_max_bytes",
                "gauge",
                "The audit log's size limit (0: none; kmsfs audit retention --max-size).",
                log.max_bytes().unwrap_or(0),
            );
        }
        let keys: Vec<KeyId> = m.per_key.iter().map(|e| *e.key()).collect();
        for (name, help, pick) in [
            (
                "kmsfs_key_decrypts_total",
                "Opens allowed per key (kms:Decrypt).",
                (|k: &KeyCounters| &k.decrypts) as fn(&KeyCounters) -> &AtomicU64,
            ),
            (
                "kmsfs_key_data_keys_total",
                "Data keys generated per key (new files).",
                |k: &KeyCounters| &k.data_keys,
            ),
            (
                "kmsfs_key_denials_total",
                "Denials per key.",
                |k: &KeyCounters| &k.denials,
            ),
        ] {
            o.family(name, "counter", help);
            for k in &keys {
                if let Some(c) = m.per_key.get(k) {
                    o.sample(name, &[("key_id", &k.to_string())], g(pick(&c)));
                }
            }
        }
        o.family("kmsfs_keys", "gauge", "KMS keys by state.");
        let states = self.km.query(|s| {
            let mut by = std::collections::BTreeMap::<String, u64>::new();
            for k in &s.keys {
                *by.entry(format!("{:?}", k.state)).or_default() += 1;
            }
            by
        });
        for (state, n) in &states {
            o.sample("kmsfs_keys", &[("state", state)], *n);
        }
        o.family(
            "kmsfs_key_current_version",
            "gauge",
            "Newest version of each key.",
        );
        for (id, v) in self.km.query(|s| {
            s.keys
                .iter()
                .map(|k| (k.id, k.newest().map_or(0, |v| v.version)))
                .collect::<Vec<_>>()
        }) {
            o.sample(
                "kmsfs_key_current_version",
                &[("key_id", &id.to_string())],
                u64::from(v),
            );
        }
        let (hits, misses) = self.km.policy_cache_stats();
        o.family(
            "kmsfs_cache_hits_total",
            "counter",
            "Cache hits by cache (parsed key policies, caller identities).",
        );
        o.sample("kmsfs_cache_hits_total", &[("cache", "policy")], hits);
        o.sample(
            "kmsfs_cache_hits_total",
            &[("cache", "identity")],
            g(&m.identity_cache_hits),
        );
        o.family(
            "kmsfs_cache_misses_total",
            "counter",
            "Cache misses by cache.",
        );
        o.sample("kmsfs_cache_misses_total", &[("cache", "policy")], misses);
        o.sample(
            "kmsfs_cache_misses_total",
            &[("cache", "identity")],
            g(&m.identity_cache_misses),
        );
        o.0
    }
}

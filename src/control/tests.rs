//! The control directory's model without FUSE: requests, authorization, transactional writes
//! and the audit views.

use std::sync::Arc;

use super::*;
use crate::crypto::{KdfParams, Passphrase};
use crate::keymgr::audit::AuditKeys;
use crate::keymgr::{InitOptions, Unlock};

pub(super) struct Fixture {
    _t: tempfile::TempDir,
    pub(super) ctl: Arc<ControlDir>,
}

pub(super) fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("vol");
    let pw = || Passphrase::new(b"pw".to_vec());
    let opts = InitOptions {
        kdf: KdfParams::FAST_INSECURE,
        ..Default::default()
    };
    crate::keymgr::init(&d, &pw(), &opts).unwrap();
    let u = crate::keymgr::unlock(&d, &Unlock::Passphrase(pw())).unwrap();
    let log = AuditLog::open(
        &u.paths.control_dir(),
        AuditKeys::new(&u.store.volume_secret),
    )
    .unwrap();
    let names = crate::names::Names::new(&u.store.volume_secret, false);
    let km = Arc::new(KeyManager::new(u));
    let ctl = ControlDir::new(km, VolumeFacts::default(), d.clone(), names);
    ctl.set_audit(Arc::new(log));
    Fixture { _t: t, ctl }
}

pub(super) fn owner(c: &ControlDir) -> Identity {
    Identity {
        uid: c.km.query(|s| s.owner_uid),
        ..Default::default()
    }
}

pub(super) fn stranger() -> Identity {
    Identity {
        uid: 4242,
        gid: 4242,
        ..Default::default()
    }
}

/// The inode of a path below `.kmsfs`.
fn ino(c: &ControlDir, path: &str) -> u64 {
    let mut i = c.root_ino();
    for part in path.split('/') {
        i = c.lookup(i, part).unwrap().ino;
    }
    i
}

fn key_dir(c: &ControlDir) -> String {
    format!("keys/{}", c.km.query(|s| s.default_key))
}

fn read_all(c: &ControlDir, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let d = c.read(fh, out.len() as u64, 4096).unwrap();
        if d.is_empty() {
            return out;
        }
        out.extend_from_slice(&d);
    }
}

fn cat(c: &ControlDir, path: &str, who: &Identity) -> CtlResult<String> {
    let fh = c.open(ino(c, path), libc::O_RDONLY, who.clone())?;
    let s = String::from_utf8(read_all(c, fh)).unwrap();
    c.release(fh);
    Ok(s)
}

fn records(c: &ControlDir) -> Vec<crate::keymgr::audit::AuditRecord> {
    c.records().unwrap()
}

/// The whole audit view (of one key's records when `only`), rendered from the records.
fn rendering(c: &ControlDir, only: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records(c) {
        if only.is_none_or(|k| r.resources.key_id.as_deref() == Some(k)) {
            out.extend_from_slice(&serde_json::to_vec(&r).unwrap());
            out.push(b'\n');
        }
    }
    out
}

#[test]
fn a_stranger_is_denied_and_nothing_changes() {
    let f = fixture();
    let c = &f.ctl;
    let before = c.km.query(|s| (s.keys.len(), s.keys[0].policy.clone()));
    let r = c.execute(
        &stranger(),
        &Request::CreateKey {
            description: String::new(),
            tags: Default::default(),
            alias: None,
        },
    );
    assert_eq!(r.unwrap_err().kind, ErrorKind::Denied);
    let kd = key_dir(c);
    assert_eq!(
        cat(c, &format!("{kd}/policy"), &stranger())
            .unwrap_err()
            .errno,
        libc::EACCES
    );
    assert_eq!(
        c.open(ino(c, &format!("{kd}/state")), libc::O_WRONLY, stranger())
            .unwrap_err()
            .errno,
        libc::EACCES
    );
    assert_eq!(
        c.km.query(|s| (s.keys.len(), s.keys[0].policy.clone())),
        before
    );
    // Each refusal is in the log with the stranger as actor.
    let denied: Vec<_> = records(c)
        .into_iter()
        .filter(|r| r.actor.uid == 4242 && r.decision.as_ref().is_some_and(|d| !d.allowed))
        .map(|r| r.event)
        .collect();
    assert_eq!(denied, ["CreateKey", "GetKeyPolicy", "OpenForWrite"]);
    // The owner may.
    assert!(cat(c, &format!("{kd}/policy"), &owner(c)).is_ok());
}

#[test]
fn partial_writes_are_assembled_and_incomplete_documents_refused() {
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let rot = ino(c, &format!("{}/rotation", key_dir(c)));
    let fh = c.open(rot, libc::O_WRONLY, me.clone()).unwrap();
    c.write(fh, 0, br#"{"enabled": tr"#).unwrap();
    assert!(!c.km.query(|s| s.keys[0].rotation.enabled));
    c.write(fh, 14, br#"ue, "period_days": 120}"#).unwrap();
    assert!(c.km.query(|s| s.keys[0].rotation.enabled));
    assert_eq!(c.km.query(|s| s.keys[0].rotation.period_days), 120);
    c.flush(fh).unwrap();
    c.release(fh);

    // Cut off at close: EINVAL, nothing changed, the reason readable.
    let fh = c.open(rot, libc::O_WRONLY, me.clone()).unwrap();
    c.write(fh, 0, br#"{"enabled": false"#).unwrap();
    assert_eq!(c.flush(fh).unwrap_err().errno, libc::EINVAL);
    c.release(fh);
    assert!(c.km.query(|s| s.keys[0].rotation.enabled));
    assert!(
        cat(c, "last-error", &me)
            .unwrap()
            .contains("incomplete JSON")
    );

    // Unknown fields and bad values are refused at once.
    let fh = c.open(rot, libc::O_WRONLY, me.clone()).unwrap();
    assert_eq!(
        c.write(fh, 0, br#"{"enabled": false, "colour": 1}"#)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    c.release(fh);
    assert!(c.km.query(|s| s.keys[0].rotation.enabled));
}

#[test]
fn state_commands_and_the_request_file() {
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let state = format!("{}/state", key_dir(c));
    let fh = c.open(ino(c, &state), libc::O_WRONLY, me.clone()).unwrap();
    // A line is applied when it is complete.
    c.write(fh, 0, b"disa").unwrap();
    assert_eq!(cat(c, &state, &me).unwrap(), "Enabled\n");
    c.write(fh, 4, b"ble\n").unwrap();
    assert_eq!(cat(c, &state, &me).unwrap(), "Disabled\n");
    assert_eq!(c.write(fh, 8, b"melt\n").unwrap_err().errno, libc::EINVAL);
    c.release(fh);
    assert_eq!(cat(c, &state, &me).unwrap(), "Disabled\n");

    let req = ino(c, "request");
    let fh = c.open(req, libc::O_RDWR, me.clone()).unwrap();
    let body = br#"{"op": "EnableKey", "key": "alias/none"}"#;
    assert_eq!(c.write(fh, 0, body).unwrap_err().errno, libc::ENOENT);
    let resp: serde_json::Value = serde_json::from_slice(&read_all(c, fh)).unwrap();
    assert_eq!(resp["error"]["kind"], "not-found");
    c.release(fh);
    let fh = c.open(req, libc::O_RDWR, me.clone()).unwrap();
    let body = format!(
        r#"{{"op": "EnableKey", "key": "{}"}}"#,
        c.km.query(|s| s.default_key)
    );
    c.write(fh, 0, body.as_bytes()).unwrap();
    // The response starts where the request ended (one file position for both).
    let resp = c.read(fh, body.len() as u64, 4096).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&resp).unwrap()["ok"],
        true
    );
    // A second request on the same handle, written where reading the first response left the
    // position (`exec 3<>request; echo … >&3; cat <&3; echo … >&3; cat <&3`): its response
    // starts where it ended.
    let at = body.len() as u64 + resp.len() as u64;
    let second = br#"{"op": "ListKeyRules"}"#;
    c.write(fh, at, second).unwrap();
    let resp = c.read(fh, at + second.len() as u64, 4096).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&resp).unwrap()["ok"],
        true
    );
    c.release(fh);
    assert_eq!(cat(c, &state, &me).unwrap(), "Enabled\n");
}

#[test]
fn audit_view_size_follows_the_log() {
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let audit = ino(c, "audit");
    let len0 = c.getattr(audit).unwrap().size;
    let fh = c.open(audit, libc::O_RDONLY, me.clone()).unwrap();
    let first = read_all(c, fh);
    // Opening it was itself recorded (and counted).
    assert!(c.getattr(audit).unwrap().size > len0);
    for _ in 0..3 {
        c.execute(&me, &Request::ListKeys).unwrap();
    }
    let more = c.read(fh, first.len() as u64, 1 << 20).unwrap();
    assert_eq!(String::from_utf8(more.clone()).unwrap().lines().count(), 3);
    assert_eq!(
        (first.len() + more.len()) as u64,
        c.getattr(audit).unwrap().size,
        "the size the kernel is told equals what reads return"
    );
    c.release(fh);
}

#[test]
fn reserved_and_fixed_tree() {
    let f = fixture();
    let c = &f.ctl;
    assert!(ControlDir::is_root_name(b".kmsfs"));
    assert_eq!(
        c.lookup(c.root_ino(), "nope").unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        c.lookup(ino(c, "keys"), "not-a-key-id").unwrap_err().errno,
        libc::ENOENT
    );
    let status = ino(c, "status");
    assert_eq!(
        c.open(status, libc::O_WRONLY, owner(c)).unwrap_err().errno,
        libc::EACCES
    );
    assert_eq!(c.truncate(status, 0).unwrap_err().errno, libc::EPERM);
    assert!(c.truncate(ino(c, "rules"), 0).is_ok());
    assert_eq!(
        c.truncate(ino(c, "rules"), 5).unwrap_err().errno,
        libc::EPERM
    );
}

/// An open audit view is read by parts (rendered from the nearest remembered place): any read
/// at any offset returns exactly the bytes of the whole view as it was at open, for the whole
/// log and for one key's view; reads at the end then bring what was added.
#[test]
fn audit_views_read_by_parts_equal_the_whole_rendering() {
    use crate::keymgr::audit::{AuditRecord, Source};
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let key = c.km.query(|s| s.default_key).to_string();
    let log = c.audit.get().unwrap().clone();
    for i in 0..6000u64 {
        let mut r = AuditRecord::new("Open", Source::Fs);
        r.resources.path = Some(format!("/some/file-{i}-{}", "p".repeat((i % 197) as usize)));
        if i % 3 == 0 {
            r.resources.key_id = Some(key.clone());
        }
        log.append(r).unwrap();
    }
    for (path, only) in [
        ("audit".to_string(), None),
        (format!("{}/audit", key_dir(c)), Some(key.as_str())),
    ] {
        let fh = c.open(ino(c, &path), libc::O_RDONLY, me.clone()).unwrap();
        // The view as it was at open (opening it was recorded before it was taken).
        let whole = rendering(c, only);
        assert!(
            whole.len() > 2 * 256 * 1024,
            "{path}: {} bytes",
            whole.len()
        );
        // Random parts, backwards and forwards.
        let mut x: u64 = 12345;
        for _ in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 20) % whole.len() as u64;
            let size = ((x >> 7) % 300_000) as u32 + 1;
            let got = c.read(fh, off, size).unwrap();
            let end = whole.len().min(off as usize + size as usize);
            let want = &whole[off as usize..end];
            let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
            assert!(
                got.len() == want.len() && first_diff.is_none(),
                "{path}: {size} bytes at {off}: got {} bytes, want {}, first difference at {first_diff:?}",
                got.len(),
                want.len()
            );
        }
        // Sequentially, as cat reads it.
        let mut seq = Vec::new();
        while seq.len() < whole.len() {
            let d = c.read(fh, seq.len() as u64, 131_072).unwrap();
            assert!(!d.is_empty());
            seq.extend_from_slice(&d);
        }
        assert!(seq == whole, "{path}: read in order");
        assert!(c.read(fh, whole.len() as u64, 10).unwrap().is_empty());
        // At the end: what was added since.
        let mut r = AuditRecord::new("Open", Source::Fs);
        r.resources.key_id = Some(key.clone());
        log.append(r).unwrap();
        let more = c.read(fh, whole.len() as u64, 1 << 20).unwrap();
        assert_eq!(whole.len() + more.len(), rendering(c, only).len(), "{path}");
        assert!(
            more == rendering(c, only)[whole.len()..],
            "{path}: the added records"
        );
        c.release(fh);
    }
}

/// Retention removing the beginning of the log under an open view: reading a part that is gone
/// fails (EIO: open it again) instead of returning other records at those offsets.
#[test]
fn an_open_view_whose_beginning_retention_removed_fails_instead_of_shifting() {
    use crate::keymgr::audit::{AuditRecord, Source};
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let log = c.audit.get().unwrap().clone();
    for i in 0..3000u64 {
        let mut r = AuditRecord::new("Open", Source::Fs);
        r.resources.path = Some(format!("/f-{i}-{}", "q".repeat((i % 150) as usize)));
        log.append(r).unwrap();
        if i % 1000 == 999 {
            log.start_new_segment().unwrap();
        }
    }
    let fh = c.open(ino(c, "audit"), libc::O_RDONLY, me).unwrap();
    let head = c.read(fh, 0, 200).unwrap();
    assert!(String::from_utf8_lossy(&head).starts_with("{\"seq\":0,"));
    // Elsewhere, so that the beginning is no longer the part kept rendered.
    c.read(fh, 600_000, 100).unwrap();
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    assert!(
        log.expire(crate::keymgr::audit::Expiry::by_age(future, 1))
            .unwrap()
            .is_some()
    );
    assert_eq!(c.read(fh, 0, 200).unwrap_err().errno, libc::EIO);
    c.release(fh);
}

/// A view opened again reads only the records added since it was last opened (its index is
/// kept) and still gives exactly the whole rendering; a `stat` of a view never opened uses the
/// same index; after retention the index is built afresh.
#[test]
fn a_view_opened_again_reads_only_the_new_records() {
    use crate::keymgr::audit::{AuditRecord, Source};
    use std::sync::atomic::Ordering;
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let key = c.km.query(|s| s.default_key).to_string();
    let log = c.audit.get().unwrap().clone();
    let add = |n: u64| {
        for i in 0..n {
            let mut r = AuditRecord::new("Open", Source::Fs);
            r.resources.path = Some(format!("/g-{i}-{}", "r".repeat((i % 120) as usize)));
            if i % 2 == 0 {
                r.resources.key_id = Some(key.clone());
            }
            log.append(r).unwrap();
            if i % 1500 == 1499 {
                log.start_new_segment().unwrap();
            }
        }
    };
    let scanned = || c.views.scanned.load(Ordering::Relaxed);
    let whole_view = |path: &str, only: Option<&str>| {
        let fh = c.open(ino(c, path), libc::O_RDONLY, me.clone()).unwrap();
        let want = rendering(c, only);
        let got = read_all(c, fh);
        c.release(fh);
        assert!(
            got == want,
            "{path}: {} bytes, want {}",
            got.len(),
            want.len()
        );
    };
    let key_audit = format!("{}/audit", key_dir(c));
    add(4000);
    let s0 = scanned();
    whole_view("audit", None);
    assert!(scanned() - s0 >= 4000, "the first open scans the log");
    for round in 0..3 {
        add(7);
        let s = scanned();
        whole_view("audit", None);
        // The 7 records, and those of the opens and reads in between.
        assert!(
            scanned() - s < 20,
            "round {round}: {} records scanned",
            scanned() - s
        );
    }
    // A key's view has an index of its own; its first stat builds it, its open reuses it.
    let s = scanned();
    let attr = c.getattr(ino(c, &key_audit)).unwrap(); // the lookup takes the size first
    assert!(scanned() - s >= 4000);
    assert_eq!(attr.size, rendering(c, Some(&key)).len() as u64);
    let s = scanned();
    whole_view(&key_audit, Some(&key));
    assert!(scanned() - s < 20, "{} records scanned", scanned() - s);
    // Retention removes the first segments: the views are indexed again, and right.
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    assert!(
        log.expire(crate::keymgr::audit::Expiry::by_age(future, 1))
            .unwrap()
            .is_some()
    );
    c.audit_shortened();
    for (path, only) in [("audit", None), (key_audit.as_str(), Some(key.as_str()))] {
        let s = scanned();
        whole_view(path, only);
        assert!(scanned() - s > 0, "{path}");
        let s = scanned();
        whole_view(path, only);
        assert!(
            scanned() - s < 20,
            "{path}: {} records scanned",
            scanned() - s
        );
    }
}

/// The size of a view first taken while records are being appended counts each of them once.
#[test]
fn a_view_size_taken_while_records_are_appended_counts_each_once() {
    use crate::keymgr::audit::{AuditRecord, Source};
    let f = fixture();
    let c = &f.ctl;
    let key = c.km.query(|s| s.default_key).to_string();
    let log = c.audit.get().unwrap().clone();
    let add = |n: u64| {
        for i in 0..n {
            let mut r = AuditRecord::new("Open", Source::Fs);
            r.resources.path = Some(format!("/h-{i}"));
            r.resources.key_id = Some(key.clone());
            log.append(r).unwrap();
        }
    };
    add(1000);
    let key_audit = format!("{}/audit", key_dir(c));
    for round in 0..10 {
        // The size taken afresh while a burst of records comes.
        std::thread::scope(|s| {
            s.spawn(|| add(150));
            c.audit_shortened();
            let _ = c.getattr(ino(c, "audit")).unwrap();
            let _ = c.getattr(ino(c, &key_audit)).unwrap();
        });
        let all = c.getattr(ino(c, "audit")).unwrap().size;
        assert_eq!(all, rendering(c, None).len() as u64, "round {round}");
        let one = c.getattr(ino(c, &key_audit)).unwrap().size;
        assert_eq!(one, rendering(c, Some(&key)).len() as u64, "round {round}");
    }
}

/// Appends records of ~1 KB until about `bytes` are written; returns the largest size of the
/// log's directory seen (every 256 records and at the end).
fn fill_log(log: &crate::keymgr::audit::AuditLog, bytes: u64) -> u64 {
    use crate::keymgr::audit::{AuditRecord, Source};
    let size = || -> u64 {
        std::fs::read_dir(log.dir())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let pad = "p".repeat(900);
    let mut peak = 0;
    for i in 0..(bytes / 1000) {
        let mut r = AuditRecord::new("Open", Source::Fs);
        r.resources.path = Some(format!("/f-{i}-{pad}"));
        log.append(r).unwrap();
        if i % 256 == 0 {
            peak = peak.max(size());
        }
    }
    peak.max(size())
}

/// An audit size limit set through the request file: refused below two segments, and once set,
/// the log stays within it (plus the segment being written) while records are appended, with
/// the oldest segments removed and the log still verifying.
#[test]
fn an_audit_size_limit_set_by_request_holds_while_records_are_written() {
    use crate::keymgr::audit::{AUDIT_DIR, AuditKeys, SEGMENT_BYTES};
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let request = |body: String| -> (Result<u32, i32>, serde_json::Value) {
        let fh = c.open(ino(c, "request"), libc::O_RDWR, me.clone()).unwrap();
        let w = c.write(fh, 0, body.as_bytes()).map_err(|e| e.errno);
        // The response follows the request (one file position for both); a refused request
        // leaves only the response.
        let at = if w.is_ok() { body.len() as u64 } else { 0 };
        let resp = serde_json::from_slice(&c.read(fh, at, 1 << 16).unwrap()).unwrap();
        c.release(fh);
        (w, resp)
    };
    let min = super::request::AUDIT_MAX_BYTES_MIN;
    let (w, resp) = request(format!(
        r#"{{"op": "PutAuditSettings", "max_bytes": {}}}"#,
        min - 1
    ));
    assert_eq!(w, Err(libc::EINVAL), "{resp}");
    assert_eq!(c.km.query(|s| s.audit_max_bytes), None);
    let (w, resp) = request(format!(
        r#"{{"op": "PutAuditSettings", "max_bytes": {min}}}"#
    ));
    assert!(w.is_ok(), "{resp}");
    assert_eq!(resp["ok"], true);
    assert_eq!(c.km.query(|s| s.audit_max_bytes), Some(min));

    let log = c.audit.get().unwrap().clone();
    assert_eq!(log.max_bytes(), Some(min));
    assert!(
        c.metrics_text()
            .contains(&format!("\nkmsfs_audit_log_max_bytes {min}\n"))
    );
    let dir = log.dir().to_path_buf();
    // About three times the limit.
    let peak = fill_log(&log, 3 * min);
    // At a roll the log is brought under the limit; the segment being written then grows
    // back to it: here (a limit of two segments) never much past it.
    assert!(
        peak <= min + (1 << 20),
        "the log reached {peak} bytes with a limit of {min}"
    );
    assert!(!dir.join(crate::keymgr::audit::segment_name(1)).exists());
    let (bytes, segments) = log.disk_usage().unwrap();
    assert!(bytes <= min + SEGMENT_BYTES && (2..=3).contains(&segments));
    assert!(
        c.metrics_text()
            .contains(&format!("\nkmsfs_audit_log_bytes {bytes}\n"))
    );
    log.close().unwrap();
    let control = dir.parent().unwrap();
    assert_eq!(control.join(AUDIT_DIR), dir);
    let keys = AuditKeys::new(&c.km.volume_secret());
    let r = crate::keymgr::audit::verify(control, &keys, None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
}

/// A larger limit (four segments or more) is brought down to three quarters of it when passed,
/// so that removals come every few segments, not at every roll; it still holds.
#[test]
fn a_large_audit_size_limit_removes_every_few_segments() {
    use crate::keymgr::audit::SEGMENT_BYTES;
    let f = fixture();
    let c = &f.ctl;
    let log = c.audit.get().unwrap().clone();
    let max = 4 * SEGMENT_BYTES;
    log.set_max_bytes(Some(max));
    let peak = fill_log(&log, 3 * max);
    assert!(peak <= max + (1 << 20), "{peak} bytes, limit {max}");
    // Each removal (those still in the log say what they removed) takes two segments or more:
    // from over the limit to under three quarters of it.
    let spans: Vec<(u64, u64)> = records(c)
        .iter()
        .filter(|r| r.event == "AuditRetention")
        .filter_map(|r| {
            let d = r.detail.as_deref()?;
            let (a, b) = d
                .strip_prefix("removing segments ")?
                .split_once(" ")?
                .0
                .split_once("..=")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    assert!(!spans.is_empty());
    assert!(spans.iter().all(|(a, b)| b > a), "{spans:?}");
}

#[test]
fn a_policy_file_with_a_duplicate_key_is_refused() {
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let path = format!("{}/policy", key_dir(c));
    let before = cat(c, &path, &me).unwrap();
    // Through a `Value` the first "StringLike" (the path condition) would vanish.
    let doc = format!(
        r#"{{"Version":"2012-10-17","Statement":[
          {{"Sid":"Owner","Effect":"Allow","Principal":{{"Uid":"{}"}},"Action":"kms:*"}},
          {{"Sid":"ReadPubOnly","Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
            "Condition":{{"StringLike":{{"kmsfs:Path":"/pub/*"}},
                         "StringLike":{{"kmsfs:AccessMode":"read"}}}}}}]}}"#,
        me.uid
    );
    let fh = c.open(ino(c, &path), libc::O_WRONLY, me.clone()).unwrap();
    assert_eq!(
        c.write(fh, 0, doc.as_bytes()).unwrap_err().errno,
        libc::EINVAL
    );
    c.release(fh);
    assert_eq!(cat(c, &path, &me).unwrap(), before);
    let why = cat(c, "last-error", &me).unwrap();
    assert!(why.contains("duplicate key \"StringLike\""), "{why}");
    // And as a request: the policy text is validated the same way.
    let r = c.execute(
        &me,
        &Request::PutKeyPolicy {
            key: c.km.query(|s| s.default_key).to_string(),
            policy: doc,
            bypass_lockout_check: false,
        },
    );
    let e = r.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("duplicate key"), "{}", e.message);
}

#[test]
fn a_control_document_has_a_size_limit() {
    let f = fixture();
    let c = &f.ctl;
    // `request` is open to anyone (each request is decided by itself): a stranger with no
    // rights at all could make the daemon keep any amount of memory.
    let fh = c.open(ino(c, "request"), libc::O_RDWR, stranger()).unwrap();
    let chunk = vec![b'a'; 128 * 1024];
    c.write(fh, 0, b"\"").unwrap();
    let mut off = 1u64;
    let e = loop {
        match c.write(fh, off, &chunk) {
            Ok(n) => off += u64::from(n),
            Err(e) => break e,
        }
        assert!(off <= 2 * files::MAX_DOCUMENT_BYTES as u64, "no limit");
    };
    assert_eq!(e.errno, libc::EFBIG);
    assert!(off <= files::MAX_DOCUMENT_BYTES as u64);
    assert!(
        cat(c, "last-error", &stranger())
            .unwrap()
            .contains("at most 1048576 bytes")
    );
    // The refused document was dropped: the handle takes a new one.
    let r = c.write(fh, off, br#"{"op": "ListKeys"}"#).unwrap_err();
    assert_eq!(r.errno, libc::EACCES, "{r:?}");
    c.release(fh);

    // A document just under the limit is taken.
    let me = owner(c);
    let key = c.km.query(|s| s.default_key).to_string();
    let fh = c.open(ino(c, "request"), libc::O_RDWR, me.clone()).unwrap();
    let big = format!(
        r#"{{"op":"UpdateKeyDescription","key":"{key}",{}"description":"big"}}"#,
        " ".repeat(files::MAX_DOCUMENT_BYTES - 200)
    );
    assert!(big.len() <= files::MAX_DOCUMENT_BYTES);
    let mut off = 0;
    for part in big.as_bytes().chunks(4096) {
        off += u64::from(c.write(fh, off, part).unwrap());
    }
    c.release(fh);
    assert_eq!(c.km.query(|s| s.keys[0].description.clone()), "big");
}

#[test]
fn a_document_written_byte_by_byte_is_applied_when_it_ends() {
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let key = c.km.query(|s| s.default_key).to_string();
    // Braces, brackets and escaped quotes inside strings do not end the document.
    let desc = r#"a}\"]{\"[x\\"#;
    let doc =
        format!(r#"  {{"op": "UpdateKeyDescription", "key": "{key}", "description": "{desc}"}}"#);
    let fh = c.open(ino(c, "request"), libc::O_RDWR, me.clone()).unwrap();
    let (last, head) = doc.as_bytes().split_last().unwrap();
    for (i, b) in head.iter().enumerate() {
        c.write(fh, i as u64, &[*b]).unwrap();
    }
    let before = c.km.query(|s| s.keys[0].description.clone());
    assert_eq!(before, "default key of the volume");
    c.write(fh, head.len() as u64, &[*last]).unwrap();
    assert_eq!(
        c.km.query(|s| s.keys[0].description.clone()),
        r#"a}"]{"[x\"#
    );
    c.release(fh);

    // A grants file takes lines and JSON documents one after the other.
    let grants = ino(c, &format!("{}/grants", key_dir(c)));
    let fh = c.open(grants, libc::O_WRONLY, me.clone()).unwrap();
    let doc = br#"{"grantee": {"any": false, "uids": [7], "users": [], "gids": [], "groups": []},
                   "operations": ["kms:Decrypt"], "name": "x}"}"#;
    let mut off = 0;
    for b in doc.iter() {
        off += u64::from(c.write(fh, off, &[*b]).unwrap());
    }
    let id = c.km.query(|s| s.grants[0].id.clone());
    for b in format!("retire {id}\n").bytes() {
        off += u64::from(c.write(fh, off, &[b]).unwrap());
    }
    assert!(c.km.query(|s| s.grants.is_empty()));
    for b in doc.iter() {
        off += u64::from(c.write(fh, off, &[*b]).unwrap());
    }
    assert_eq!(c.km.query(|s| s.grants.len()), 1);
    c.release(fh);
}

#[test]
fn a_request_naming_nothing_that_exists_is_recorded_as_refused() {
    let f = fixture();
    let c = &f.ctl;
    let r = c.execute(
        &stranger(),
        &Request::DisableKey {
            key: "alias/nope".into(),
        },
    );
    assert_eq!(r.unwrap_err().kind, ErrorKind::NotFound);
    let r = c.execute(
        &stranger(),
        &Request::RevokeGrant {
            grant_id: "0123".into(),
        },
    );
    assert_eq!(r.unwrap_err().kind, ErrorKind::NotFound);
    let r = c.execute(
        &stranger(),
        &Request::UpdateAlias {
            alias: "alias/nope".into(),
            key: c.km.query(|s| s.default_key).to_string(),
        },
    );
    assert_eq!(r.unwrap_err().kind, ErrorKind::NotFound);
    let mine: Vec<_> = records(c)
        .into_iter()
        .filter(|r| r.actor.uid == 4242)
        .collect();
    assert_eq!(mine.len(), 3);
    for r in &mine {
        let d = r.decision.as_ref().unwrap();
        assert!(!d.allowed, "{r:?}");
        assert_ne!(d.by, "passphrase", "{r:?}");
        assert_eq!(r.errno, libc::ENOENT, "{r:?}");
    }
}

/// Review #13: a request resolved its alias once to be decided and again to be carried out, so
/// an alias pointed elsewhere in between made it act on a key nobody decided on. Each step is
/// run here with the alias moved between the decision and the change.
#[test]
fn a_request_runs_on_the_keys_it_was_decided_on() {
    let f = fixture();
    let c = &f.ctl;
    let o = owner(c);
    let auth = Authority::Policy(o.clone());
    let new_key = |alias: Option<&str>| -> crate::format::KeyId {
        let r = c
            .execute(
                &o,
                &Request::CreateKey {
                    description: String::new(),
                    tags: Default::default(),
                    alias: alias.map(str::to_string),
                },
            )
            .unwrap();
        r["key_id"].as_str().unwrap().parse().unwrap()
    };
    let (a, b, third) = (new_key(Some("alias/x")), new_key(None), new_key(None));
    let point = |to: crate::format::KeyId| {
        c.km.admin(|s, _| crate::keymgr::lifecycle::update_alias(s, "alias/x", &to))
            .unwrap();
    };
    let state = |k: crate::format::KeyId| c.km.query(|s| s.key(&k).unwrap().state);
    let ex = c.executor();
    let decided_then_moved = |req: &Request, to: crate::format::KeyId| {
        let (key, _, also) = ex.authorize(&auth, req).map_err(|e| e.2).unwrap();
        point(to);
        ex.run(&auth, req, key, &also)
    };

    // Decided on a (what alias/x named), carried out on a, though alias/x now names b.
    let disable = Request::DisableKey {
        key: "alias/x".into(),
    };
    decided_then_moved(&disable, b).unwrap();
    use crate::keymgr::store::KeyState;
    assert_eq!(state(a), KeyState::Disabled);
    assert_eq!(state(b), KeyState::Enabled);

    // Deleting or moving an alias that moved after the decision is refused.
    let delete = Request::DeleteAlias {
        alias: "alias/x".into(),
    };
    let e = decided_then_moved(&delete, third).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert_eq!(
        c.km.query(|s| s.aliases.get("alias/x").copied()),
        Some(third)
    );
    let update = Request::UpdateAlias {
        alias: "alias/x".into(),
        key: b.to_string(),
    };
    let e = decided_then_moved(&update, a).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert_eq!(c.km.query(|s| s.aliases.get("alias/x").copied()), Some(a));
    // Without a move in between, both work.
    let (key, _, also) = ex.authorize(&auth, &update).map_err(|e| e.2).unwrap();
    ex.run(&auth, &update, key, &also).unwrap();
    assert_eq!(c.km.query(|s| s.aliases.get("alias/x").copied()), Some(b));

    // SetDefaultKey decided while the default key was another one: refused.
    let set = Request::SetDefaultKey { key: b.to_string() };
    let (key, _, also) = ex.authorize(&auth, &set).map_err(|e| e.2).unwrap();
    c.km.admin(|s, _| crate::keymgr::lifecycle::set_default(s, &third))
        .unwrap();
    let e = ex.run(&auth, &set, key, &also).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert_eq!(c.km.query(|s| s.default_key), third);
}

#[test]
fn a_malformed_control_document_is_recorded_without_what_it_quoted() {
    let f = fixture();
    let c = &f.ctl;
    let key = c.km.query(|s| s.default_key).to_string();
    let fh = c.open(ino(c, "request"), libc::O_RDWR, stranger()).unwrap();
    let e = c
        .write(fh, 0, br#"{"op":"SECRET-0123456789abcdef"}"#)
        .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    c.release(fh);
    let pol = ino(c, &format!("keys/{key}/policy"));
    let me = owner(c);
    let fh = c.open(pol, libc::O_WRONLY, me.clone()).unwrap();
    let e = c.write(fh, 0, br#"{"Version": "2012-10-17", "Version": 1}"#);
    c.release(fh);
    assert_eq!(e.unwrap_err().errno, libc::EINVAL);
    // The writer learns the whole reason.
    assert!(
        cat(c, "last-error", &stranger())
            .unwrap()
            .contains("SECRET-0123456789abcdef")
    );
    let refused: Vec<_> = records(c)
        .into_iter()
        .filter(|r| r.event == files::REFUSED_DOCUMENT_EVENT)
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert_eq!(refused[0].actor.uid, stranger().uid);
    assert_eq!(refused[1].actor.uid, me.uid);
    for r in &refused {
        assert_eq!(r.errno, libc::EINVAL);
        let d = r.detail.as_deref().unwrap();
        assert!(!d.contains("SECRET"), "{d}");
        assert!(!d.contains("Version"), "{d}");
    }
    let d0 = refused[0].detail.as_deref().unwrap();
    assert!(d0.starts_with(".kmsfs/request: "), "{d0}");
    assert!(d0.contains("unknown variant `…`"), "{d0}");
    let d1 = refused[1].detail.as_deref().unwrap();
    assert_eq!(
        d1.split(':').next(),
        Some(format!(".kmsfs/keys/{key}/policy").as_str())
    );
    assert_eq!(refused[1].resources.key_id.as_deref(), Some(key.as_str()));
}

#[test]
fn quoted_values_are_cut_from_refusal_records() {
    assert_eq!(
        files::without_quoted_values(r#"invalid type: string "abc", expected `u32` at line 1"#),
        r#"invalid type: string "…", expected `…` at line 1"#
    );
    assert_eq!(files::without_quoted_values("cut \"ab"), "cut \"…");
    assert_eq!(files::without_quoted_values("none"), "none");
}

/// Review (audit F11): the one record of a change, written before it was carried out, could not
/// be told from its success, and what it made (a new key's id, a version) was nowhere.
#[test]
fn a_change_has_a_started_and_an_outcome_record_naming_what_it_made() {
    let f = fixture();
    let c = &f.ctl;
    let me = owner(c);
    let made = c
        .execute(
            &me,
            &Request::CreateKey {
                description: "d".into(),
                tags: Default::default(),
                alias: Some("alias/made".into()),
            },
        )
        .unwrap();
    let id = made["key_id"].as_str().unwrap().to_string();
    let rotated = c
        .execute(
            &me,
            &Request::RotateKeyOnDemand {
                key: "alias/made".into(),
            },
        )
        .unwrap();
    assert_eq!(rotated["version"], 2);
    let e = c.execute(
        &me,
        &Request::ScheduleKeyDeletion {
            key: id.clone(),
            days: 3,
        },
    );
    assert_eq!(e.unwrap_err().kind, ErrorKind::Invalid);
    c.execute(&me, &Request::ListKeys).unwrap();
    let kms: Vec<_> = records(c)
        .into_iter()
        .filter(|r| r.source == crate::keymgr::audit::Source::Kms)
        .map(|r| {
            (
                r.event.clone(),
                r.outcome.clone().unwrap_or_default(),
                r.resources.key_id.clone().unwrap_or_default(),
                r.resources.key_version,
                r.errno,
            )
        })
        .collect();
    let row = |e: &str, o: &str, k: &str, v: Option<u32>, errno: i32| {
        (e.to_string(), o.to_string(), k.to_string(), v, errno)
    };
    assert_eq!(
        kms,
        [
            row("CreateKey", "started", "", None, 0),
            row("CreateKey", "succeeded", &id, None, 0),
            row("RotateKeyOnDemand", "started", &id, None, 0),
            row("RotateKeyOnDemand", "succeeded", &id, Some(2), 0),
            row("ScheduleKeyDeletion", "started", &id, None, 0),
            row("ScheduleKeyDeletion", "failed", &id, None, libc::EINVAL),
            row("ListKeys", "", "", None, 0),
        ]
    );
}

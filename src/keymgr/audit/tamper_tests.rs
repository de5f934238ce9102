//! Attacks on a closed log by someone without keys, and failure paths, found by a review
//! (2026-12-06): each test failed before the fix it names.

use super::*;
use crate::crypto::Key256;
use crate::keymgr::store::AuditAnchor;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

fn keys() -> AuditKeys {
    AuditKeys::new(&Key256::from_bytes([4; 32]))
}

fn rec(tag: &str, i: u64) -> AuditRecord {
    let mut r = AuditRecord::new("Open", Source::Fs);
    r.resources.path = Some(format!("/{tag}/file-{i}.txt"));
    r
}

fn seg(c: &std::path::Path, n: u64) -> std::path::PathBuf {
    c.join(AUDIT_DIR).join(segment_name(n))
}

fn problems(r: &VerifyReport) -> Vec<String> {
    r.findings.iter().map(|f| f.problem.clone()).collect()
}

/// Fails unless `verify` reported a problem containing `needle`.
fn assert_finding(r: &VerifyReport, needle: &str) {
    assert!(
        problems(r).iter().any(|p| p.contains(needle)),
        "no finding with {needle:?}: {:?}",
        problems(r)
    );
}

fn mkfifo(p: &std::path::Path) {
    let _ = std::fs::remove_file(p);
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
}

fn events(c: &std::path::Path) -> Vec<String> {
    read_all(c, &keys())
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

fn truncate(p: &std::path::Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// A session: open (checked against `anchor`), `n` records, clean close; its anchor.
fn session(c: &std::path::Path, anchor: Option<&AuditAnchor>, tag: &str, n: u64) -> AuditAnchor {
    let l = AuditLog::open_anchored(c, keys(), anchor).unwrap();
    for i in 0..n {
        l.append(rec(tag, i)).unwrap();
    }
    l.close().unwrap();
    l.anchor().unwrap()
}

/// A log opened in `c` with `n` records tagged `tag`, a new segment after every tenth.
fn rolled(c: &std::path::Path, tag: &str, n: u64) -> AuditLog {
    let l = AuditLog::open(c, keys()).unwrap();
    for i in 0..n {
        l.append(rec(tag, i)).unwrap();
        if i % 10 == 9 {
            l.start_new_segment().unwrap();
        }
    }
    l
}

/// Retention by age with every closed segment old enough.
fn expire_all(l: &AuditLog) -> Option<(u64, u64)> {
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    l.expire(Expiry::by_age(future, 1)).unwrap()
}

/// A line anyone can write: a frame with the given sequence number and kind, no valid tag.
fn forged_line(seq: u64, kind: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&seq.to_be_bytes());
    f.push(kind);
    f.extend_from_slice(&[0u8; 12 + 16 + 32 + 5]);
    let mut l = B64.encode(&f).into_bytes();
    l.push(b'\n');
    l
}

/// The log cut back (or deleted) while closed is still reported after the next session has
/// replaced the anchor and `head`: the open finds the checkpoint missing, records it, and goes
/// on numbering after it.
#[test]
fn a_cut_or_deleted_log_stays_reported_after_the_next_session() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let a = session(&c, None, "a", 5);
    let len_a = std::fs::metadata(seg(&c, 1)).unwrap().len();
    let b = session(&c, Some(&a), "secret-b", 10);
    assert!(verify(&c, &keys(), Some(&b)).unwrap().ok());

    // Cut back to the end of session a (head and anchor name b's checkpoint).
    truncate(&seg(&c, 1), len_a);
    assert!(!verify(&c, &keys(), Some(&b)).unwrap().ok());
    let c2 = session(&c, Some(&b), "c", 1);
    let r = verify(&c, &keys(), Some(&c2)).unwrap();
    assert_finding(&r, "are missing");
    assert!(events(&c).iter().any(|e| e == "AuditLogModified"));

    // The same through `head` alone (no anchor given: an older kmsfs's key store).
    let t2 = tempfile::tempdir().unwrap();
    let d = t2.path().to_path_buf();
    session(&d, None, "a", 5);
    let len = std::fs::metadata(seg(&d, 1)).unwrap().len();
    session(&d, None, "secret", 5);
    truncate(&seg(&d, 1), len);
    let e = session(&d, None, "next", 1);
    assert!(!verify(&d, &keys(), Some(&e)).unwrap().ok());

    // The whole directory deleted.
    std::fs::remove_dir_all(c.join(AUDIT_DIR)).unwrap();
    let d2 = session(&c, Some(&c2), "d", 1);
    let r = verify(&c, &keys(), Some(&d2)).unwrap();
    assert!(!r.ok(), "a deleted log passes after one more session");
    assert!(events(&c).iter().any(|e| e == "AuditLogModified"));
}

/// An untouched log opened with its anchor records nothing unusual.
#[test]
fn an_untouched_log_opens_against_its_anchor_quietly() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let mut a = session(&c, None, "a", 3);
    for i in 0..3 {
        a = session(&c, Some(&a), "more", i);
        let l = AuditLog::open_anchored(&c, keys(), Some(&a)).unwrap();
        l.start_new_segment().unwrap();
        l.close().unwrap();
        a = l.anchor().unwrap();
    }
    let r = verify(&c, &keys(), Some(&a)).unwrap();
    assert!(r.ok(), "{:?}", problems(&r));
    assert!(!events(&c).iter().any(|e| e == "AuditLogModified"));
    assert_eq!(r.chain_starts, 1);
}

/// `head` is plaintext, and so are each line's sequence number and kind: a `head` made up from
/// them (the previous checkpoint's signature is `head.prev_signature`) no longer passes.
#[test]
fn a_head_made_up_from_plaintext_does_not_pass() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let anchor = session(&c, None, "mount", 5);
    let cut = std::fs::metadata(seg(&c, 1)).unwrap().len();
    session(&c, Some(&anchor), "admin", 2);
    let head_path = c.join(AUDIT_DIR).join(HEAD_FILE);
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&head_path).unwrap()).unwrap();
    let data = std::fs::read(seg(&c, 1)).unwrap();
    let line = data[..cut as usize - 1]
        .rsplit(|b| *b == b'\n')
        .next()
        .unwrap();
    let f = B64.decode(line).unwrap();
    let seq = u64::from_be_bytes(f[..8].try_into().unwrap());
    truncate(&seg(&c, 1), cut);
    let forged = serde_json::json!({
        "seq": seq, "time": "", "segment": 1, "chain": "", "prev_signature": "",
        "signature": head["prev_signature"], "reason": "unmount"
    });
    std::fs::write(&head_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let r = verify(&c, &keys(), Some(&anchor)).unwrap();
    assert_finding(&r, "head differs");
}

/// With a retention base, a `head` below it no longer passes (retention writes a checkpoint
/// before the base, which the kept log must hold).
#[test]
fn a_head_below_the_base_does_not_pass() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = rolled(&c, "old", 30);
    assert_eq!(expire_all(&l), Some((1, 3)));
    for i in 0..10 {
        l.append(rec("new-secret", i)).unwrap();
    }
    l.start_new_segment().unwrap();
    l.append(rec("new-secret", 99)).unwrap();
    l.sync().unwrap();
    drop(l);
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", problems(&r));
    // Everything after the base cut, head set below it.
    truncate(&seg(&c, 4), 0);
    std::fs::remove_file(seg(&c, 5)).unwrap();
    let head_path = c.join(AUDIT_DIR).join(HEAD_FILE);
    std::fs::write(
        &head_path,
        br#"{"seq":0,"time":"","segment":0,"chain":"","prev_signature":"","signature":"","reason":""}"#,
    )
    .unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(!r.ok(), "cut after the base passes with head below it");
    // Also with the head of the last removed checkpoint (its signature is plaintext in base).
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.join(AUDIT_DIR).join(BASE_FILE)).unwrap()).unwrap();
    let h = serde_json::json!({
        "seq": base["seq"].as_u64().unwrap() - 1, "time": "", "segment": 3, "chain": "",
        "prev_signature": "", "signature": base["prev_signature"], "reason": "segment-end"
    });
    std::fs::write(&head_path, serde_json::to_vec(&h).unwrap()).unwrap();
    assert!(!verify(&c, &keys(), None).unwrap().ok());
}

/// A checkpoint whose `head` write fails is still the one the next checkpoint follows.
#[test]
fn a_failed_head_write_does_not_break_the_checkpoint_chain() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..5 {
        l.append(rec("a", i)).unwrap();
    }
    crate::fault::arm(1, rustix::io::Errno::NOSPC);
    let e = l.start_new_segment();
    crate::fault::disarm();
    assert!(e.is_err());
    for i in 5..10 {
        l.append(rec("a", i)).unwrap();
    }
    l.close().unwrap();
    let r = verify(&c, &keys(), l.anchor().as_ref()).unwrap();
    assert!(r.ok(), "{:?}", problems(&r));
}

/// Retention stops at a segment deleted by someone else instead of signing a base past it.
#[test]
fn retention_stops_at_a_deleted_segment() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = rolled(&c, "x", 30);
    l.close().unwrap();
    drop(l);
    std::fs::remove_file(seg(&c, 2)).unwrap();
    let l = AuditLog::open(&c, keys()).unwrap();
    // Segment 1 follows on from the beginning and may go; segment 3 does not follow it.
    assert_eq!(expire_all(&l), Some((1, 1)));
    assert_eq!(expire_all(&l), None);
    l.close().unwrap();
    let r = verify(&c, &keys(), l.anchor().as_ref()).unwrap();
    assert_finding(&r, "segments 2..2 are missing");
}

/// A line that fails authentication neither picks the next sequence number nor hides an
/// unclean end; a forged u64::MAX does not panic.
#[test]
fn the_writer_resumes_from_authentic_entries_only() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    session(&c, None, "a", 1);
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec("crashed", 0)).unwrap();
    drop(l);
    let mut data = std::fs::read(seg(&c, 1)).unwrap();
    data.extend_from_slice(&forged_line(1000, KIND_CHECKPOINT));
    std::fs::write(seg(&c, 1), &data).unwrap();
    session(&c, None, "next", 1);
    let all = read_all(&c, &keys()).unwrap();
    assert_eq!(all.iter().filter(|r| r.event == "ChainStart").count(), 2);
    let next = all
        .iter()
        .find(|r| r.resources.path.as_deref() == Some("/next/file-0.txt"))
        .unwrap();
    assert!(next.seq < 1000, "{}", next.seq);
    assert!(events(&c).iter().any(|e| e == "AuditLogModified"));

    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    session(&c, None, "a", 0);
    let mut data = std::fs::read(seg(&c, 1)).unwrap();
    data.extend_from_slice(&forged_line(u64::MAX, KIND_RECORD));
    std::fs::write(seg(&c, 1), &data).unwrap();
    session(&c, None, "b", 1);
}

/// A newest segment holding only lines that are no entry is left as found.
#[test]
fn a_newest_segment_of_garbage_is_left_as_found() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec("a", 0)).unwrap();
    l.start_new_segment().unwrap();
    l.append(rec("b", 0)).unwrap();
    l.close().unwrap();
    drop(l);
    std::fs::write(seg(&c, 2), b"garbage\n\n").unwrap();
    session(&c, None, "c", 1);
    assert_eq!(std::fs::read(seg(&c, 2)).unwrap(), b"garbage\n\n");
    assert!(events(&c).iter().any(|e| e == "AuditLogModified"));
    assert!(seg(&c, 3).exists());
}

/// Segment files named otherwise than the writer names them, or that are no regular file, are
/// findings, not an I/O error that stops `verify` (nor a hang).
#[test]
fn odd_segment_files_are_findings() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec("a", 0)).unwrap();
    l.start_new_segment().unwrap();
    l.append(rec("b", 0)).unwrap();
    l.close().unwrap();
    drop(l);
    std::fs::rename(seg(&c, 1), c.join(AUDIT_DIR).join("seg-1.log")).unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert_finding(&r, "seg-1.log");
    // A FIFO as the newest segment: the open does not wait on it.
    mkfifo(&seg(&c, 3));
    session(&c, None, "c", 1);
    assert!(events(&c).iter().any(|e| e == "AuditLogModified"));
    let r = verify(&c, &keys(), None).unwrap();
    assert_finding(&r, "FIFO");
}

/// A second review (2026-12-06) found these after the fixes above.
/// A session killed before its unmount, cut back to the last unmount checkpoint, with `head`
/// deleted: the next open records it, and `verify` reports that record.
#[test]
fn a_killed_session_cut_with_head_deleted_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let a = session(&c, None, "a", 3);
    let len = std::fs::metadata(seg(&c, 1)).unwrap().len();
    let l = AuditLog::open_anchored(&c, keys(), Some(&a)).unwrap();
    for i in 0..5 {
        l.append(rec("killed", i)).unwrap();
    }
    l.sync().unwrap();
    drop(l);
    truncate(&seg(&c, 1), len);
    std::fs::remove_file(c.join(AUDIT_DIR).join(HEAD_FILE)).unwrap();
    let b = session(&c, Some(&a), "b", 1);
    let r = verify(&c, &keys(), Some(&b)).unwrap();
    assert_finding(&r, "head is missing");
    // Recorded once, not again at every open while the anchor stays behind.
    let lost = |c: &std::path::Path| {
        events(c)
            .iter()
            .filter(|e| *e == "AuditLogModified")
            .count()
    };
    let t2 = tempfile::tempdir().unwrap();
    let d = t2.path().to_path_buf();
    let a = session(&d, None, "a", 2);
    let b = session(&d, Some(&a), "b", 2);
    std::fs::remove_dir_all(d.join(AUDIT_DIR)).unwrap();
    session(&d, Some(&b), "c", 1);
    session(&d, Some(&b), "d", 1);
    assert_eq!(lost(&d), 1);
}

/// A record with a huge detail is cut to a bounded line, and retention still reads the first
/// line of a segment that starts with a long one.
#[test]
fn long_records_are_bounded_and_do_not_block_retention() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    l.start_new_segment().unwrap();
    let mut r = AuditRecord::new("SimulatePolicy", Source::Kms);
    r.detail = Some("é".repeat(1 << 20));
    l.append(r).unwrap();
    l.start_new_segment().unwrap();
    assert_eq!(expire_all(&l), Some((1, 2)));
    l.close().unwrap();
    let all = read_all(&c, &keys()).unwrap();
    let d = all
        .iter()
        .filter_map(|r| r.detail.as_deref())
        .map(str::len)
        .max()
        .unwrap();
    assert!(d < 10_000, "{d}");
    assert!(verify(&c, &keys(), l.anchor().as_ref()).unwrap().ok());
}

/// Every segment deleted, `base` kept: the log goes on from the base, not from segment 1.
#[test]
fn a_log_emptied_under_its_base_goes_on_from_the_base() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = rolled(&c, "x", 20);
    assert_eq!(expire_all(&l), Some((1, 2)));
    l.close().unwrap();
    let a = l.anchor().unwrap();
    drop(l);
    for n in 3..=3 {
        std::fs::remove_file(seg(&c, n)).unwrap();
    }
    session(&c, Some(&a), "after", 2);
    assert!(!seg(&c, 1).exists());
    let paths: Vec<_> = read_all(&c, &keys())
        .unwrap()
        .into_iter()
        .filter_map(|r| r.resources.path)
        .collect();
    assert!(paths.iter().any(|p| p.starts_with("/after/")), "{paths:?}");
}

/// A FIFO in place of a closed segment, of `head` or of `base` hangs nothing.
#[test]
fn fifos_in_the_log_hang_nothing() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec("a", 0)).unwrap();
    l.start_new_segment().unwrap();
    l.append(rec("b", 0)).unwrap();
    mkfifo(&seg(&c, 1));
    assert_eq!(expire_all(&l), None);
    l.close().unwrap();
    drop(l);
    mkfifo(&c.join(AUDIT_DIR).join(HEAD_FILE));
    mkfifo(&c.join(AUDIT_DIR).join(BASE_FILE));
    assert!(!verify(&c, &keys(), None).unwrap().ok());
    session(&c, None, "c", 1);
}

/// A base written before 2026-12-06 (no checkpoint named) is upgraded at the next open, so a
/// cut after it with a `head` made up from its plaintext no longer passes (second review, F10).
#[test]
fn a_legacy_base_is_upgraded_at_the_next_open() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = rolled(&c, "old", 30);
    assert_eq!(expire_all(&l), Some((1, 3)));
    l.close().unwrap();
    drop(l);
    // As kmsfs of 2026-12-05 wrote it.
    let base_path = c.join(AUDIT_DIR).join(BASE_FILE);
    let now = retention::read_base(&c.join(AUDIT_DIR), &keys())
        .unwrap()
        .unwrap();
    let legacy = now.naming_checkpoint(&keys(), None);
    std::fs::write(&base_path, serde_json::to_vec(&legacy).unwrap()).unwrap();
    assert!(verify(&c, &keys(), None).unwrap().ok());

    // A session that is killed (no clean close, no anchor past the base).
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..5 {
        l.append(rec("new-secret", i)).unwrap();
    }
    l.sync().unwrap();
    drop(l);
    let up = retention::read_base(&c.join(AUDIT_DIR), &keys())
        .unwrap()
        .unwrap();
    assert!(up.checkpoint.is_some_and(|cs| cs >= legacy.seq), "{up:?}");
    assert_eq!(
        (
            up.segment,
            up.seq,
            &up.prev_chain,
            &up.prev_signature,
            &up.time
        ),
        (
            legacy.segment,
            legacy.seq,
            &legacy.prev_chain,
            &legacy.prev_signature,
            &legacy.time
        )
    );
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", problems(&r));

    // Everything after the base cut, `head` made up from the base's plaintext.
    for s in legacy.segment.. {
        let p = seg(&c, s);
        if !p.exists() {
            break;
        }
        if s == legacy.segment {
            truncate(&p, 0);
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let h = serde_json::json!({
        "seq": legacy.seq - 1, "time": "", "segment": legacy.segment - 1, "chain": "",
        "prev_signature": "", "signature": legacy.prev_signature, "reason": "segment-end"
    });
    std::fs::write(
        c.join(AUDIT_DIR).join(HEAD_FILE),
        serde_json::to_vec(&h).unwrap(),
    )
    .unwrap();
    assert_finding(
        &verify(&c, &keys(), None).unwrap(),
        "does not reach checkpoint",
    );
}

/// Retention checks the whole chain of a segment before removing it (second review, F4): lines
/// overwritten in place with as many bytes passed its length and end checks, and the removal
/// took the evidence with it.
#[test]
fn retention_keeps_a_segment_changed_in_place() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..20 {
        l.append(rec("secret", i)).unwrap();
    }
    l.start_new_segment().unwrap();
    for i in 0..5 {
        l.append(rec("b", i)).unwrap();
    }
    l.close().unwrap();
    let anchor = l.anchor();
    drop(l);
    let mut data = std::fs::read(seg(&c, 1)).unwrap();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            data.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    for b in &mut data[starts[5]..starts[11] - 1] {
        if *b != b'\n' {
            *b = b'A';
        }
    }
    std::fs::write(seg(&c, 1), &data).unwrap();
    assert!(!verify(&c, &keys(), anchor.as_ref()).unwrap().ok());
    let l = AuditLog::open_anchored(&c, keys(), anchor.as_ref()).unwrap();
    assert_eq!(expire_all(&l), None, "a changed segment removed");
    l.close().unwrap();
    assert!(seg(&c, 1).exists());
    assert!(!verify(&c, &keys(), l.anchor().as_ref()).unwrap().ok());
}

/// Same, with entries cut from the middle of the segment being written while the volume was
/// closed: the writer goes on in it, so its length and end agree; the chain does not.
#[test]
fn retention_keeps_a_segment_cut_in_the_middle() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..10 {
        l.append(rec("a", i)).unwrap();
    }
    l.close().unwrap();
    let anchor = l.anchor();
    drop(l);
    let data = std::fs::read(seg(&c, 1)).unwrap();
    let kept: Vec<u8> = data
        .split_inclusive(|b| *b == b'\n')
        .enumerate()
        .filter(|(i, _)| !(3..=6).contains(i))
        .flat_map(|(_, l)| l.iter().copied())
        .collect();
    std::fs::write(seg(&c, 1), &kept).unwrap();
    let l = AuditLog::open_anchored(&c, keys(), anchor.as_ref()).unwrap();
    for i in 0..5 {
        l.append(rec("b", i)).unwrap();
    }
    l.start_new_segment().unwrap();
    assert_eq!(expire_all(&l), None, "a cut segment removed");
    l.close().unwrap();
    assert!(!verify(&c, &keys(), l.anchor().as_ref()).unwrap().ok());
}

/// A session killed after writing many segments: the next open finds the checkpoint of the
/// last clean end by first lines, reading no segment whole but the one that holds it.
#[test]
fn the_open_after_a_crash_reads_only_the_segment_of_the_anchor() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let a = session(&c, None, "a", 5);
    let l = AuditLog::open_anchored(&c, keys(), Some(&a)).unwrap();
    for s in 0..8 {
        for i in 0..20 {
            l.append(rec("crashed", s * 100 + i)).unwrap();
        }
        l.start_new_segment().unwrap();
    }
    drop(l); // killed: no closing checkpoint, the anchor stays where it was
    let dir = c.join(AUDIT_DIR);
    let mut segs: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| parse_segment_name(e.unwrap().file_name().to_str()?))
        .collect();
    segs.sort_unstable();
    assert!(segs.len() >= 9, "{segs:?}");
    let k = keys();
    let found = writer::Found::new(&k, &dir);
    assert!(found.holds_checkpoint(&segs, a.seq, &a.signature));
    // The newest segment (empty here; the open reads it whole anyway, to go on from it) and
    // the anchor's: none of the seven between.
    let newest = *segs.last().unwrap();
    assert_eq!(found.segments_read(), vec![segs[0], newest]);
    // A wrong signature for that number is still told apart, and so is a number no segment
    // holds (the anchor's segment removed).
    assert!(!found.holds_checkpoint(&segs, a.seq, "00"));
    let without_first: Vec<u64> = segs[1..].to_vec();
    assert!(!writer::Found::new(&k, &dir).holds_checkpoint(&without_first, a.seq, &a.signature));
    // A segment whose first line is damaged is read whole instead, and the answer is the same.
    let p = seg(&c, segs[3]);
    let mut b = std::fs::read(&p).unwrap();
    b[5] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let found = writer::Found::new(&k, &dir);
    assert!(found.holds_checkpoint(&segs, a.seq, &a.signature));
    assert_eq!(found.segments_read(), vec![segs[0], segs[3], newest]);
    // The open itself: the crash is marked, nothing is reported missing.
    let l = AuditLog::open_anchored(&c, keys(), Some(&a)).unwrap();
    l.close().unwrap();
    let ev = events(&c);
    assert!(ev.iter().any(|e| e == "ChainStart"));
    assert!(!ev.iter().any(|e| e == "AuditLogModified"), "{ev:?}");
}

/// An open log with `n` closed segments of ten records each.
fn log_with_closed_segments(n: u64) -> (tempfile::TempDir, AuditLog) {
    let t = tempfile::tempdir().unwrap();
    let l = AuditLog::open(t.path(), keys()).unwrap();
    for s in 0..n {
        for i in 0..10 {
            l.append(rec("s", s * 100 + i)).unwrap();
        }
        l.start_new_segment().unwrap();
    }
    (t, l)
}

/// Retention checks the chains of the segments it is about to remove ahead, without the log's
/// lock, each once (a budget per run); the removal then reads none of them again. A segment
/// changed after its check is read again at the removal, and kept.
#[test]
fn retention_checks_chains_ahead_once_and_again_after_a_change() {
    use std::sync::atomic::Ordering::Relaxed;
    let (t, l) = log_with_closed_segments(6);
    let c = t.path().to_path_buf();
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let rule = Expiry::by_age(future, 1);
    l.prove_for_retention(rule, 2);
    assert_eq!(l.chains_read.load(Relaxed), 2, "at most the budget");
    l.prove_for_retention(rule, 100);
    assert_eq!(l.chains_read.load(Relaxed), 6, "the six closed segments");
    l.prove_for_retention(rule, 100);
    assert_eq!(
        l.chains_read.load(Relaxed),
        6,
        "a proven segment is not read again"
    );
    // Only age: nothing to remove, nothing read.
    let l2_rule = Expiry::by_age(std::time::UNIX_EPOCH, 1);
    l.prove_for_retention(l2_rule, 100);
    assert_eq!(l.chains_read.load(Relaxed), 6);

    // Segment 3 changed in place after its check (as many bytes: only its chain tells).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut data = std::fs::read(seg(&c, 3)).unwrap();
    let second = data.iter().position(|b| *b == b'\n').unwrap() + 1;
    data[second + 12] = if data[second + 12] == b'A' {
        b'B'
    } else {
        b'A'
    };
    std::fs::write(seg(&c, 3), &data).unwrap();
    assert_eq!(
        l.expire(rule).unwrap(),
        Some((1, 2)),
        "up to the changed segment"
    );
    assert_eq!(
        l.chains_read.load(Relaxed),
        7,
        "only the changed segment is read again"
    );
    assert!(seg(&c, 3).exists());
    l.close().unwrap();
}

/// With a size limit, the check ahead covers the segments a removal takes the log down to three
/// quarters of the limit with, and no more.
#[test]
fn retention_checks_ahead_only_what_the_size_limit_removes() {
    use std::sync::atomic::Ordering::Relaxed;
    let (_t, l) = log_with_closed_segments(8);
    let (total, _) = l.disk_usage().unwrap();
    // Under the limit: nothing.
    l.prove_for_retention(Expiry::by_size(total + 1), 100);
    assert_eq!(l.chains_read.load(Relaxed), 0);
    // A limit of about half: what takes the log down to it (small limits: no three quarters).
    l.prove_for_retention(Expiry::by_size(total / 2), 100);
    let read = l.chains_read.load(Relaxed);
    assert!(
        (3..=5).contains(&read),
        "{read} of 8 segments checked ahead"
    );
    let removed = l.expire(Expiry::by_size(total / 2)).unwrap().unwrap();
    assert_eq!(
        l.chains_read.load(Relaxed),
        read,
        "the removal ({removed:?}) read nothing more"
    );
    l.close().unwrap();
}

use super::*;
use crate::crypto::Key256;
use crate::keymgr::store::AuditAnchor;

fn keys() -> AuditKeys {
    AuditKeys::new(&Key256::from_bytes([4; 32]))
}

fn rec(i: u64) -> AuditRecord {
    let mut r = AuditRecord::new("Open", Source::Fs);
    r.resources.path = Some(format!("/secret/plans-{i}.txt"));
    r.actor.user = Some("alice".into());
    r.actor.exe = Some("/usr/bin/very-secret-tool".into());
    r
}

fn log_with(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..n {
        l.append(rec(i)).unwrap();
    }
    l.close().unwrap();
    (t, c)
}

fn seg(c: &std::path::Path, n: u64) -> std::path::PathBuf {
    c.join(AUDIT_DIR).join(segment_name(n))
}

fn problems(c: &std::path::Path) -> Vec<String> {
    verify(c, &keys(), None)
        .unwrap()
        .findings
        .into_iter()
        .map(|f| f.problem)
        .collect()
}

#[test]
fn untouched_log_verifies_and_reads_back() {
    let (_t, c) = log_with(2500);
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.records, 2500);
    assert_eq!(r.checkpoints, 4, "start + two periodic + unmount");
    let all = read_all(&c, &keys()).unwrap();
    assert_eq!(all.iter().filter(|r| r.event == "Open").count(), 2500);
    assert_eq!(
        all[1].resources.path.as_deref(),
        Some("/secret/plans-0.txt")
    );
    // Reopen after a clean close: no chain-start marker.
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec(9)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.chain_starts, 1, "only the initial one");
}

#[test]
fn confidential_at_rest() {
    let (_t, c) = log_with(10);
    use base64::Engine as _;
    let bytes = std::fs::read(seg(&c, 1)).unwrap();
    // The lines are base64: search what they decode to (a short word like "Open" turns up in
    // random base64 text now and then, in decoded random bytes practically never).
    let mut raw = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        raw.extend(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(line)
                .expect("every line is base64"),
        );
    }
    for s in [
        "secret",
        "plans",
        "alice",
        "very-secret-tool",
        "Open",
        "event",
    ] {
        let found = raw.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(!found, "{s} in the log at rest");
    }
    let text = String::from_utf8_lossy(&bytes);
    for s in ["secret", "very-secret-tool", "/secret/plans"] {
        assert!(!text.contains(s), "{s} in the log's text");
    }
}

#[test]
fn one_changed_byte_is_named() {
    let (_t, c) = log_with(20);
    let mut b = std::fs::read(seg(&c, 1)).unwrap();
    let lines: Vec<usize> = b
        .iter()
        .enumerate()
        .filter(|(_, x)| **x == b'\n')
        .map(|(i, _)| i)
        .collect();
    let pos = lines[5] + 20; // inside the 7th entry (seq 6)
    b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
    std::fs::write(seg(&c, 1), &b).unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(!r.ok());
    assert!(
        r.findings
            .iter()
            .any(|f| f.seq == Some(6) || f.problem.contains("line 7")),
        "{:?}",
        r.findings
    );
}

#[test]
fn deleted_record_is_named() {
    let (_t, c) = log_with(20);
    let text = std::fs::read_to_string(seg(&c, 1)).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 10)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(seg(&c, 1), kept.join("\n") + "\n").unwrap();
    let p = problems(&c);
    assert!(
        p.iter().any(|m| m.contains("entries 10..10 are missing")),
        "{p:?}"
    );
}

#[test]
fn deleted_and_swapped_segments_and_truncated_tail() {
    let (_t, c) = segmented_log();
    assert!(verify(&c, &keys(), None).unwrap().ok());
    let backup: Vec<Vec<u8>> = (1..=4)
        .map(|n| std::fs::read(seg(&c, n)).unwrap_or_default())
        .collect();
    let restore = || {
        for (i, b) in backup.iter().enumerate() {
            std::fs::write(seg(&c, i as u64 + 1), b).unwrap();
        }
    };
    // Delete a whole segment.
    std::fs::remove_file(seg(&c, 2)).unwrap();
    let p = problems(&c);
    assert!(
        p.iter().any(|m| m.contains("segment 2 is missing")),
        "{p:?}"
    );
    restore();
    // Swap two segments.
    std::fs::write(seg(&c, 1), &backup[1]).unwrap();
    std::fs::write(seg(&c, 2), &backup[0]).unwrap();
    let p = problems(&c);
    assert!(
        p.iter()
            .any(|m| m.contains("reordered") || m.contains("missing")),
        "{p:?}"
    );
    restore();
    assert!(verify(&c, &keys(), None).unwrap().ok());
    // Truncate the tail before the last checkpoint.
    let last = seg(&c, 4);
    let text = std::fs::read_to_string(&last).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&last, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let p = problems(&c);
    assert!(
        p.iter().any(|m| m.contains("ends before checkpoint")),
        "{p:?}"
    );
}

#[test]
fn crash_leaves_a_marked_new_chain() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        for i in 0..5 {
            l.append(rec(i)).unwrap();
        }
        // no close: a killed daemon; plus a torn half line
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(seg(&c, 1))
        .unwrap();
    std::io::Write::write_all(&mut f, b"AAAAtorn").unwrap();
    drop(f);
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec(99)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.chain_starts, 2);
    let all = read_all(&c, &keys()).unwrap();
    assert!(
        all.iter()
            .any(|r| r.event == "ChainStart"
                && r.detail.as_deref().unwrap_or("").contains("unclean"))
    );
}

#[test]
fn wrong_key_cannot_read_or_verify() {
    let (_t, c) = log_with(3);
    let other = AuditKeys::new(&Key256::from_bytes([5; 32]));
    assert!(read_all(&c, &other).unwrap().is_empty());
    assert!(!verify(&c, &other, None).unwrap().ok());
}

#[test]
fn head_lagging_the_log_after_a_kill_still_verifies() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let head = c.join(AUDIT_DIR).join(HEAD_FILE);
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        l.append(rec(1)).unwrap();
        l.checkpoint("periodic").unwrap();
        // Periodic checkpoints reach `head` at the group commit.
        l.sync().unwrap();
        let old_head = std::fs::read(&head).unwrap();
        l.append(rec(2)).unwrap();
        l.checkpoint("periodic").unwrap();
        l.sync().unwrap();
        // Killed after the checkpoint reached the log but before head was updated.
        std::fs::write(&head, old_head).unwrap();
    }
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec(3)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.chain_starts, 2, "the unclean end is marked");
}

/// Retention by age only, with the cutoff `t` (a one-day period, for the record).
fn age(t: std::time::SystemTime) -> Expiry {
    Expiry::by_age(t, 1)
}

/// Retention by size only.
fn size(max: u64) -> Expiry {
    Expiry::by_size(max)
}

/// The sizes of the log's segment files, by number.
fn segment_sizes(c: &std::path::Path) -> std::collections::BTreeMap<u64, u64> {
    std::fs::read_dir(c.join(AUDIT_DIR))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_str().and_then(parse_segment_name)?;
            Some((n, e.metadata().unwrap().len()))
        })
        .collect()
}

#[test]
fn a_size_limit_removes_the_oldest_segments_and_the_log_still_verifies() {
    let (_t, c) = segmented_log();
    let l = AuditLog::open(&c, keys()).unwrap();
    let sizes = segment_sizes(&c);
    assert_eq!(sizes.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    let total: u64 = sizes.values().sum();
    // A limit the log is within removes nothing; nor does an age nobody reaches with it.
    assert_eq!(l.expire(size(total)).unwrap(), None);
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let both = Expiry {
        older_than: Some((past, 1)),
        max_bytes: Some(total),
    };
    assert_eq!(l.expire(both).unwrap(), None);
    // One byte over once the first segment is gone: only the first goes.
    assert_eq!(l.expire(size(total - sizes[&1])).unwrap(), Some((1, 1)));
    // A limit below the segment being written removes every closed one, never that one.
    assert_eq!(l.expire(size(1)).unwrap(), Some((2, 3)));
    assert_eq!(l.expire(size(1)).unwrap(), None);
    assert_eq!(segment_sizes(&c).keys().copied().collect::<Vec<_>>(), [4]);
    l.append(rec(99)).unwrap();
    let anchor = l.anchor();
    l.close().unwrap();
    let r = verify(&c, &keys(), anchor.as_ref()).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    let all = read_all(&c, &keys()).unwrap();
    let why: Vec<_> = all
        .iter()
        .filter(|r| r.event == "AuditRetention")
        .filter_map(|r| r.detail.clone())
        .collect();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[0].contains("removing segments 1..=1"), "{why:?}");
    assert!(why.iter().all(|w| w.contains("over its limit")), "{why:?}");
    // Deleting a kept segment is still found.
    std::fs::remove_file(seg(&c, 4)).unwrap();
    assert!(!problems(&c).is_empty());
}

#[test]
fn a_size_limit_holds_at_every_segment_roll() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..10 {
        l.append(rec(i)).unwrap();
    }
    l.start_new_segment().unwrap();
    let one = segment_sizes(&c)[&1];
    // Room for about two and a half segments of ten records.
    let max = one * 5 / 2;
    l.set_max_bytes(Some(max));
    for i in 10..200 {
        l.append(rec(i)).unwrap();
        if i % 10 == 9 {
            l.start_new_segment().unwrap();
            let sizes = segment_sizes(&c);
            let total: u64 = sizes.values().sum();
            assert!(
                total <= max,
                "after segment {}: {total} bytes in {} segments, limit {max}",
                i / 10,
                sizes.len()
            );
            assert!(sizes.len() >= 2, "the newest closed segment is kept");
        }
    }
    // No limit: nothing more is removed at a roll.
    l.set_max_bytes(None);
    let before = segment_sizes(&c).len();
    for i in 200..230 {
        l.append(rec(i)).unwrap();
        if i % 10 == 9 {
            l.start_new_segment().unwrap();
        }
    }
    assert_eq!(segment_sizes(&c).len(), before + 3);
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    let all = read_all(&c, &keys()).unwrap();
    assert!(
        !all.iter()
            .any(|r| r.resources.path.as_deref() == Some("/secret/plans-0.txt")),
        "the oldest records are gone"
    );
}

/// A log of four segments (10 records each in the first three).
fn segmented_log() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..30 {
        l.append(rec(i)).unwrap();
        if i % 10 == 9 {
            l.start_new_segment().unwrap();
        }
    }
    l.close().unwrap();
    (t, c)
}

#[test]
fn retention_removes_old_segments_and_the_log_still_verifies() {
    let (_t, c) = segmented_log();
    let l = AuditLog::open(&c, keys()).unwrap();
    // A cutoff in the past removes nothing.
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    assert_eq!(l.expire(age(past)).unwrap(), None);
    // Everything closed is older than a cutoff in the future: segments 1..=3 go, the one being
    // written stays.
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    assert_eq!(l.expire(age(future)).unwrap(), Some((1, 3)));
    l.append(rec(99)).unwrap();
    let anchor = l.anchor();
    l.close().unwrap();
    for n in 1..=3 {
        assert!(!seg(&c, n).exists());
    }
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.segments, 1);
    let all = read_all(&c, &keys()).unwrap();
    assert!(all.iter().any(|r| r.event == "AuditRetention"));
    assert!(
        !all.iter()
            .any(|r| r.resources.path.as_deref() == Some("/secret/plans-0.txt"))
    );
    // An anchor from before the removal is covered by the signed beginning.
    let old = AuditAnchor {
        seq: 0,
        signature: "00".into(),
    };
    assert!(verify(&c, &keys(), Some(&old)).unwrap().ok());
    assert!(verify(&c, &keys(), anchor.as_ref()).unwrap().ok());

    let base = c.join(AUDIT_DIR).join(BASE_FILE);
    let saved = std::fs::read(&base).unwrap();
    // Removing the base makes the removed segments missing.
    std::fs::remove_file(&base).unwrap();
    let p = problems(&c);
    assert!(
        p.iter().any(|m| m.contains("segments 1..3 are missing")),
        "{p:?}"
    );
    // A modified base (claiming a later beginning, to hide a deletion) fails its signature.
    let mut b: Base = serde_json::from_slice(&saved).unwrap();
    b.segment += 1;
    std::fs::write(&base, serde_json::to_vec(&b).unwrap()).unwrap();
    let p = problems(&c);
    assert!(
        p.iter().any(|m| m.contains("base file signature invalid")),
        "{p:?}"
    );
    // Flip one byte anywhere in the base: an error, never a silent pass.
    for i in 0..saved.len() {
        let mut m = saved.clone();
        m[i] ^= 1;
        std::fs::write(&base, &m).unwrap();
        let r = verify(&c, &keys(), None).unwrap();
        let same: Option<Base> = serde_json::from_slice(&m).ok();
        let unchanged = same.is_some_and(|s| s == serde_json::from_slice::<Base>(&saved).unwrap());
        assert!(
            unchanged || !r.ok(),
            "flipping byte {i} of base went unnoticed"
        );
    }
    std::fs::write(&base, &saved).unwrap();
    // Deleting the segment after the beginning is still found.
    std::fs::remove_file(seg(&c, 4)).unwrap();
    let p = problems(&c);
    assert!(
        p.iter()
            .any(|m| m.contains("missing") || m.contains("deleted")),
        "{p:?}"
    );
}

#[test]
fn the_key_store_anchor_catches_a_deleted_or_replaced_log() {
    let (_t, c) = segmented_log();
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec(7)).unwrap();
    l.close().unwrap();
    let anchor = l.anchor().expect("a checkpoint was written");
    assert!(verify(&c, &keys(), Some(&anchor)).unwrap().ok());
    // The whole directory deleted: without the anchor nothing is wrong, with it the loss shows.
    std::fs::remove_dir_all(c.join(AUDIT_DIR)).unwrap();
    assert!(verify(&c, &keys(), None).unwrap().ok());
    let r = verify(&c, &keys(), Some(&anchor)).unwrap();
    assert!(
        r.findings
            .iter()
            .any(|f| f.problem.contains("does not reach checkpoint")),
        "{:?}",
        r.findings
    );
    // Replaced by a fresh log: still caught.
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec(1)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), Some(&anchor)).unwrap();
    assert!(!r.ok());
}

#[test]
fn killed_right_after_a_segment_roll_goes_on_from_the_last_entry() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        for i in 0..5 {
            l.append(rec(i)).unwrap();
        }
        l.start_new_segment().unwrap();
        // Killed: the new segment is empty, no unmount checkpoint.
    }
    assert_eq!(std::fs::metadata(seg(&c, 2)).unwrap().len(), 0);
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec(9)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.chain_starts, 2, "the new log and the unclean shutdown");
}

#[test]
fn killed_between_making_the_next_segment_and_closing_the_last_leaves_no_false_finding() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        for i in 0..5 {
            l.append(rec(i)).unwrap();
        }
        l.sync().unwrap();
        // Killed in a roll: the next segment made, the segment-end checkpoint not written.
        std::fs::File::create(seg(&c, 2)).unwrap();
    }
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    let l = AuditLog::open(&c, keys()).unwrap();
    assert!(!seg(&c, 2).exists(), "the empty segment is removed");
    l.append(rec(9)).unwrap();
    l.start_new_segment().unwrap();
    l.append(rec(10)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.records, 7);
    assert_eq!(r.chain_starts, 2, "the new log and the unclean shutdown");
    // Segment 1 closed by its own segment-end checkpoint after the session's entries.
    let last = verify::decode_lines(&keys(), &std::fs::read(seg(&c, 1)).unwrap())
        .pop()
        .unwrap();
    assert!(writer::ends_segment(&last, 1));

    // Emptying the newest segment hides no more than deleting it: segment 2 cut back on a line
    // boundary (its closing checkpoint gone) before an empty segment 3 is found through `head`,
    // before the next open and after it.
    let data = std::fs::read(seg(&c, 2)).unwrap();
    let keep = data[..data.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    std::fs::write(seg(&c, 2), &data[..keep]).unwrap();
    std::fs::File::create(seg(&c, 3)).unwrap();
    let head_missing = |c: &std::path::Path| {
        problems(c)
            .iter()
            .any(|p| p.contains("recorded in head") || p.contains("does not reach checkpoint"))
    };
    assert!(head_missing(&c), "{:?}", problems(&c));
    AuditLog::open(&c, keys()).unwrap().close().unwrap();
    assert!(!seg(&c, 3).exists());
    assert!(head_missing(&c), "{:?}", problems(&c));
}

#[test]
fn an_empty_newest_segment_is_kept_where_no_kill_in_a_roll_explains_it() {
    // After a closed segment: a roll that was killed after its checkpoint (kept, written to).
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        l.append(rec(1)).unwrap();
        l.start_new_segment().unwrap();
    }
    let l = AuditLog::open(&c, keys()).unwrap();
    assert!(seg(&c, 2).exists());
    l.append(rec(2)).unwrap();
    l.close().unwrap();
    assert!(std::fs::metadata(seg(&c, 2)).unwrap().len() > 0);
    assert!(verify(&c, &keys(), None).unwrap().ok());

    // Not right after the segment before it (one deleted between): the gap stays reported,
    // before and after the next open.
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        l.append(rec(1)).unwrap();
        l.start_new_segment().unwrap();
        l.append(rec(2)).unwrap();
        l.sync().unwrap();
    }
    std::fs::remove_file(seg(&c, 2)).unwrap();
    std::fs::File::create(seg(&c, 3)).unwrap();
    let gap = |c: &std::path::Path| {
        problems(c)
            .iter()
            .any(|p| p.contains("segment 2 is missing"))
    };
    assert!(gap(&c), "{:?}", problems(&c));
    AuditLog::open(&c, keys()).unwrap().close().unwrap();
    assert!(seg(&c, 3).exists());
    assert!(gap(&c), "{:?}", problems(&c));

    // Two empty segments after an unclosed one (a roll right after a roll, killed): the
    // newest goes, the log goes on in the empty one before it, and verify agrees throughout.
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        l.append(rec(1)).unwrap();
        l.start_new_segment().unwrap();
        l.sync().unwrap();
        std::fs::File::create(seg(&c, 3)).unwrap();
    }
    assert!(verify(&c, &keys(), None).unwrap().ok());
    let l = AuditLog::open(&c, keys()).unwrap();
    assert!(!seg(&c, 3).exists());
    l.append(rec(2)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);

    // A torn segment-end line (killed while writing it, the next file made): cut, the empty
    // file removed, the log goes on in the segment.
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    {
        let l = AuditLog::open(&c, keys()).unwrap();
        l.append(rec(1)).unwrap();
        l.sync().unwrap();
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(seg(&c, 1))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"half a checkpoint"))
        .unwrap();
    std::fs::File::create(seg(&c, 2)).unwrap();
    let l = AuditLog::open(&c, keys()).unwrap();
    assert!(!seg(&c, 2).exists());
    l.append(rec(2)).unwrap();
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
}

#[test]
fn reading_from_a_place_gives_exactly_what_came_after_it() {
    let (_t, c) = segmented_log();
    let seqs = |v: &[AuditRecord]| v.iter().map(|r| r.seq).collect::<Vec<_>>();
    let (all, end) = read_from(&c, &keys(), None).unwrap();
    assert_eq!(seqs(&all), seqs(&read_all(&c, &keys()).unwrap()));
    // Nothing new: nothing read, the place stays.
    let (none, same) = read_from(&c, &keys(), Some(end)).unwrap();
    assert!(none.is_empty());
    assert_eq!(same, end);
    // New records, across a new segment: exactly those.
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 100..105 {
        l.append(rec(i)).unwrap();
    }
    l.start_new_segment().unwrap();
    for i in 105..108 {
        l.append(rec(i)).unwrap();
    }
    let (new, end2) = read_from(&c, &keys(), Some(end)).unwrap();
    let paths: Vec<_> = new
        .iter()
        .filter_map(|r| r.resources.path.clone())
        .collect();
    let want: Vec<_> = (100..108)
        .map(|i| format!("/secret/plans-{i}.txt"))
        .collect();
    assert_eq!(paths, want);
    let (all2, _) = read_from(&c, &keys(), None).unwrap();
    assert_eq!(seqs(&all2)[all.len()..], seqs(&new)[..]);
    // A line still being written is left for later.
    let last = end2.segment;
    std::fs::OpenOptions::new()
        .append(true)
        .open(seg(&c, last))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"partial"))
        .unwrap();
    let (none, end3) = read_from(&c, &keys(), Some(end2)).unwrap();
    assert!(none.is_empty());
    assert_eq!(end3, end2);
    // A place in a segment that is gone reads from the beginning.
    let gone = LogPos {
        segment: 999,
        offset: 5,
    };
    assert_eq!(
        seqs(&read_from(&c, &keys(), Some(gone)).unwrap().0),
        seqs(&all2)
    );
    drop(l);
}

#[test]
fn every_entry_has_its_own_nonce_and_no_plaintext() {
    // More entries than one batch of nonces from the OS (256).
    let (_t, c) = log_with(700);
    let data = std::fs::read(seg(&c, 1)).unwrap();
    let entries = verify::decode_lines(&keys(), &data);
    assert_eq!(
        entries.len(),
        703,
        "chain start, 700 records, periodic and closing checkpoints"
    );
    let nonces: std::collections::HashSet<&[u8]> = entries
        .iter()
        .map(|e| &e.body[9..9 + crate::crypto::NONCE_LEN])
        .collect();
    assert_eq!(nonces.len(), entries.len());
    assert!(entries.iter().all(|e| e.json.is_some()));
    let text = String::from_utf8_lossy(&data);
    assert!(!text.contains("plans") && !text.contains("alice") && !text.contains("secret-tool"));
}

fn events(c: &std::path::Path) -> Vec<(u64, String, String)> {
    read_all(c, &keys())
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.event, r.time))
        .collect()
}

#[test]
fn a_record_appended_later_goes_with_the_next_entry_in_order() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = std::sync::Arc::new(AuditLog::open(&c, keys()).unwrap());
    l.append(rec(0)).unwrap();
    let mut close = AuditRecord::new("Close", Source::Fs);
    close.bytes_read = Some(12);
    l.append_later(close);
    l.append(rec(1)).unwrap();
    let ev = events(&c);
    let names: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(names, ["ChainStart", "Open", "Close", "Open"]);
    assert!(ev.windows(2).all(|w| w[1].0 > w[0].0), "{ev:?}");
    assert!(ev[2].2 <= ev[3].2, "the close's time is when it was given");
    l.close().unwrap();
    assert!(verify(&c, &keys(), None).unwrap().ok());
}

#[test]
fn a_record_appended_later_is_written_alone_soon_and_at_close() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = std::sync::Arc::new(AuditLog::open(&c, keys()).unwrap());
    l.append_later(AuditRecord::new("Close", Source::Fs));
    let t0 = std::time::Instant::now();
    while !events(&c).iter().any(|e| e.1 == "Close") {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "not written by the flusher"
        );
        std::thread::sleep(LATER_MAX / 5);
    }
    // Given just before the log closes: the closing checkpoint covers it.
    l.append_later(AuditRecord::new("Close", Source::Fs));
    l.close().unwrap();
    assert_eq!(events(&c).iter().filter(|e| e.1 == "Close").count(), 2);
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
}

#[test]
fn records_appended_later_across_checkpoints_and_segments_verify() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = std::sync::Arc::new(AuditLog::open(&c, keys()).unwrap());
    for i in 0..2500 {
        l.append(rec(i)).unwrap();
        l.append_later(AuditRecord::new("Close", Source::Fs));
        if i == 1200 {
            l.start_new_segment().unwrap();
        }
        if i == 1700 {
            l.sync().unwrap();
        }
    }
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.records, 5000);
    let ev = events(&c);
    assert!(ev.windows(2).all(|w| w[1].0 > w[0].0));
    assert_eq!(ev.iter().filter(|e| e.1 == "Close").count(), 2500);
}

#[test]
fn a_disk_is_low_under_five_percent_or_a_gib_and_a_fifth() {
    use super::writer::disk_low;
    const G: u64 = 1 << 30;
    // 100 GiB: low under 5 GiB.
    assert!(disk_low(4 * G, 100 * G));
    assert!(!disk_low(6 * G, 100 * G));
    // 4 GiB: low under 0.8 GiB (a fifth), not at 1 GiB.
    assert!(disk_low(G / 2, 4 * G));
    assert!(!disk_low(G, 4 * G));
    // 64 MiB: not low while more than a fifth is free.
    assert!(!disk_low(40 << 20, 64 << 20));
    assert!(disk_low(10 << 20, 64 << 20));
    assert!(
        !disk_low(0, 0),
        "a file system that reports no size is not called low"
    );
}

/// A closed segment made to look larger than any segment is written (a hole before its last
/// line, so that its end no longer reads as an entry) counts for nothing: the limit removes
/// only what is really over it, and nothing from that segment on.
#[test]
fn a_segment_made_to_look_larger_does_not_make_the_size_limit_remove_more() {
    use std::os::unix::fs::FileExt;
    let (_t, c) = segmented_log();
    let sizes = segment_sizes(&c);
    let total: u64 = sizes.values().sum();
    // Segment 2 grows by a hole of three segments before its last line.
    let p = seg(&c, 2);
    let b = std::fs::read(&p).unwrap();
    let cut = b[..b.len() - 1].iter().rposition(|&x| x == b'\n').unwrap() + 1;
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let at = cut as u64 + 3 * SEGMENT_BYTES;
    f.write_all_at(&b[cut..], at).unwrap();
    f.set_len(at + (b.len() - cut) as u64).unwrap();
    drop(f);
    let l = AuditLog::open(&c, keys()).unwrap();
    // Within the real size: nothing goes.
    assert_eq!(l.expire(size(total)).unwrap(), None);
    assert!(seg(&c, 1).exists());
    // Over it: segment 1 (intact) goes, the tampered one and what follows stay.
    assert_eq!(l.expire(size(1)).unwrap(), Some((1, 1)));
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let both = Expiry {
        older_than: Some((future, 1)),
        max_bytes: Some(1),
    };
    assert_eq!(l.expire(both).unwrap(), None);
    assert!(p.exists());
    l.close().unwrap();
    // And verify still reports the tampering.
    assert!(!problems(&c).is_empty());
}

/// Records written only by the flusher (closes of many files at once, no open after them)
/// still close the segment when it is full, so no segment grows far past its size.
#[test]
fn later_records_alone_close_a_full_segment() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = std::sync::Arc::new(AuditLog::open(&c, keys()).unwrap());
    let pad = "q".repeat(2000);
    let mut written = 0u64;
    while written < SEGMENT_BYTES + (SEGMENT_BYTES / 2) {
        for i in 0..500 {
            let mut r = AuditRecord::new("Close", Source::Fs);
            r.resources.path = Some(format!("/f-{i}-{pad}"));
            l.append_later(r);
        }
        l.flush_later().unwrap();
        written += 500 * 2000;
    }
    let sizes = segment_sizes(&c);
    assert!(sizes.len() >= 2, "{sizes:?}");
    let (_, &first) = sizes.iter().next().unwrap();
    assert!(
        (SEGMENT_BYTES..SEGMENT_BYTES + (4 << 20)).contains(&first),
        "{sizes:?}"
    );
    l.close().unwrap();
    let r = verify(&c, &keys(), None).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
}

/// Every checkpoint records where its line starts, so a closed segment grown on disk by less
/// than [`SEGMENT_BYTES`] (here blank lines before its last entry, which reading skips) cannot
/// make retention remove it, or anything for it: the limit and the age stop there, and
/// `verify` names the moved checkpoint.
#[test]
fn a_closed_segment_grown_on_disk_stops_retention_and_verify_names_it() {
    use std::os::unix::fs::FileExt;
    let (_t, c) = segmented_log();
    let p = seg(&c, 2);
    let b = std::fs::read(&p).unwrap();
    let cut = b[..b.len() - 1].iter().rposition(|&x| x == b'\n').unwrap() + 1;
    let grow = 1 << 20;
    let mut new = b[..cut].to_vec();
    new.extend(std::iter::repeat_n(b'\n', grow));
    new.extend_from_slice(&b[cut..]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&new, 0)
        .unwrap();
    let l = AuditLog::open(&c, keys()).unwrap();
    // The log is within `total` really; as measured on disk it is a MiB over.
    let total = segment_sizes(&c).values().sum::<u64>() - grow as u64;
    assert_eq!(l.expire(size(total)).unwrap(), None);
    assert!(seg(&c, 1).exists() && p.exists());
    // Age and size together: segment 1 goes (it is old and intact), segment 2 stays.
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let both = Expiry {
        older_than: Some((future, 1)),
        max_bytes: Some(1),
    };
    assert_eq!(l.expire(both).unwrap(), Some((1, 1)));
    assert_eq!(l.expire(both).unwrap(), None);
    assert!(p.exists());
    l.close().unwrap();
    let found = problems(&c);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("are empty (bytes inserted)"), "{found:?}");
    assert!(
        found[1].contains(&format!("found at byte {}", cut + grow)),
        "{found:?}"
    );
}

/// A closed segment whose file was replaced by another segment's (which ends with that
/// segment's checkpoint) is not removed in its place.
#[test]
fn a_segment_replaced_by_another_is_not_removed_by_retention() {
    let (_t, c) = segmented_log();
    std::fs::copy(seg(&c, 1), seg(&c, 2)).unwrap();
    let l = AuditLog::open(&c, keys()).unwrap();
    assert_eq!(l.expire(size(1)).unwrap(), Some((1, 1)));
    assert_eq!(l.expire(size(1)).unwrap(), None);
    assert!(seg(&c, 2).exists());
    l.close().unwrap();
    assert!(!problems(&c).is_empty());
}

/// Appends `n` newlines to a segment file.
fn pad(p: &std::path::Path, n: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(&vec![b'\n'; n]).unwrap();
}

/// Blank lines after the closing checkpoints of closed segments (which reading skips) count
/// for nothing: the limit does not push out intact history for them, and `verify` names them.
#[test]
fn blank_lines_after_closed_segments_do_not_count_for_the_limit() {
    let (_t, c) = segmented_log();
    let l = AuditLog::open(&c, keys()).unwrap();
    let total: u64 = segment_sizes(&c).values().sum();
    pad(&seg(&c, 2), 4 << 20);
    pad(&seg(&c, 3), 4 << 20);
    assert_eq!(l.expire(size(total + 100)).unwrap(), None);
    assert!(seg(&c, 1).exists());
    // Over the real size: the intact segment before them goes, not they.
    assert_eq!(l.expire(size(1)).unwrap(), Some((1, 1)));
    assert_eq!(l.expire(size(1)).unwrap(), None);
    l.close().unwrap();
    let found = problems(&c);
    assert!(
        found.iter().filter(|p| p.contains("are empty")).count() == 2,
        "{found:?}"
    );
}

/// Blank lines put into the segment being written while the log is closed are not taken into
/// the next checkpoint's length: the log goes on in a new segment, says so, and retention
/// stops at the padded one.
#[test]
fn a_padded_newest_segment_is_left_as_found_and_the_log_goes_on_in_a_new_one() {
    let (_t, c) = log_with(5);
    pad(&seg(&c, 1), 1 << 20);
    let l = AuditLog::open(&c, keys()).unwrap();
    l.append(rec(5)).unwrap();
    l.start_new_segment().unwrap();
    assert!(seg(&c, 2).exists(), "went on in segment 2");
    assert_eq!(l.expire(size(1)).unwrap(), None, "segment 1 does not count");
    assert!(seg(&c, 1).exists());
    l.close().unwrap();
    let all = read_all(&c, &keys()).unwrap();
    assert!(
        all.iter().any(|r| r.event == "AuditLogModified"
            && r.detail.as_deref().is_some_and(|d| d.contains("segment 1"))),
        "the new segment starts with the finding"
    );
    assert_eq!(all.iter().filter(|r| r.event == "Open").count(), 6);
    let found = problems(&c);
    assert!(found.iter().any(|p| p.contains("are empty")), "{found:?}");
}

/// A closed segment cut back to one of its periodic checkpoints (its length then matches that
/// checkpoint's record) is not removed: only a segment-end checkpoint closes a segment.
#[test]
fn a_segment_cut_back_to_a_periodic_checkpoint_is_not_removed() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path().to_path_buf();
    let l = AuditLog::open(&c, keys()).unwrap();
    for i in 0..CHECKPOINT_EVERY + 50 {
        l.append(rec(i)).unwrap();
    }
    l.start_new_segment().unwrap();
    l.append(rec(0)).unwrap();
    l.close().unwrap();
    // Cut segment 1 right after its periodic checkpoint.
    let p = seg(&c, 1);
    let data = std::fs::read(&p).unwrap();
    let mut at = 0;
    let mut cut = None;
    for line in data.split_inclusive(|b| *b == b'\n') {
        at += line.len();
        let e = verify::decode_lines(&keys(), line).pop().unwrap();
        if e.kind == KIND_CHECKPOINT {
            let cp: Checkpoint = serde_json::from_slice(e.json.as_ref().unwrap()).unwrap();
            if cp.reason == "periodic" {
                cut = Some(at);
                break;
            }
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(cut.expect("a periodic checkpoint") as u64)
        .unwrap();
    let l = AuditLog::open(&c, keys()).unwrap();
    assert_eq!(l.expire(size(1)).unwrap(), None);
    assert!(p.exists());
    l.close().unwrap();
    let found = problems(&c);
    assert!(
        found.iter().any(|p| p.contains("segment-end checkpoint")),
        "{found:?}"
    );
}

/// Segments below the signed beginning (left by an interrupted removal, or copied back) are
/// not counted and are removed.
#[test]
fn segments_below_the_base_are_not_counted_and_go() {
    let (_t, c) = segmented_log();
    let copy = std::fs::read(seg(&c, 1)).unwrap();
    let l = AuditLog::open(&c, keys()).unwrap();
    assert_eq!(l.expire(size(1)).unwrap(), Some((1, 3)));
    std::fs::write(seg(&c, 1), &copy).unwrap();
    let now: u64 = segment_sizes(&c).values().sum::<u64>() - copy.len() as u64;
    assert_eq!(l.expire(size(now)).unwrap(), None);
    assert!(!seg(&c, 1).exists());
    l.close().unwrap();
    assert!(problems(&c).is_empty(), "{:?}", problems(&c));
}

//! Reading and verifying the audit log.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;

use super::record::{AuditRecord, Checkpoint};
use super::retention::read_base;
use super::writer::initial_chain;
use super::{
    AuditKeys, HEAD_FILE, KIND_CHAIN_START, KIND_CHECKPOINT, KIND_RECORD, parse_segment_name,
    segment_name,
};
use crate::crypto::{ct_eq, hex, hmac_sha256, verify_signature};
use crate::keymgr::store::AuditAnchor;

/// One decoded entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub kind: u8,
    /// The stored chain value.
    pub chain: [u8; 32],
    /// The frame bytes the chain covers (seq ‖ kind ‖ nonce ‖ ciphertext ‖ tag).
    pub body: Vec<u8>,
    /// Decrypted JSON, `None` if it fails authentication.
    pub json: Option<Vec<u8>>,
}

impl Entry {
    /// Whether this entry's chain value follows `prev` (the chain value of the entry before it).
    pub(super) fn follows(&self, keys: &AuditKeys, prev: &[u8; 32]) -> bool {
        ct_eq(&hmac_sha256(&keys.chain, &[prev, &self.body]), &self.chain)
    }
}

pub(super) fn decode_line(keys: &AuditKeys, line: &[u8]) -> Option<Entry> {
    let mut e = decode_frame(line)?;
    e.json = keys.enc.open(&e.body[..9], &e.body[9..]).ok();
    Some(e)
}

/// One line's frame, not decrypted (`json` is `None`): enough to check the chain, which the
/// chain key alone can make.
pub(super) fn decode_frame(line: &[u8]) -> Option<Entry> {
    let f = B64.decode(line).ok()?;
    if f.len() < 9 + 12 + 16 + 32 {
        return None;
    }
    let (body, chain) = f.split_at(f.len() - 32);
    Some(Entry {
        seq: u64::from_be_bytes(body[..8].try_into().ok()?),
        kind: body[8],
        chain: chain.try_into().ok()?,
        body: body.to_vec(),
        json: None,
    })
}

/// Decodes the complete lines of one segment (undecodable lines are skipped).
pub(super) fn decode_lines(keys: &AuditKeys, data: &[u8]) -> Vec<Entry> {
    data.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .filter_map(|(_, l)| decode_line(keys, l))
        .collect()
}

/// The authenticated entries of one segment's complete lines (what only the keys can write).
pub(super) fn decode_authentic(keys: &AuditKeys, data: &[u8]) -> Vec<Entry> {
    let mut v = decode_lines(keys, data);
    v.retain(|e| e.json.is_some());
    v
}

/// The finding for a run of empty lines (first, last; numbered from 1).
fn empty_lines(run: Option<(usize, usize)>) -> Option<String> {
    let (a, b) = run?;
    Some(if a == b {
        format!("line {a} is empty (bytes inserted)")
    } else {
        format!("lines {a}..={b} are empty (bytes inserted)")
    })
}

/// A problem `verify` found, naming the spot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Finding {
    pub segment: Option<u64>,
    pub seq: Option<u64>,
    pub problem: String,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub segments: u64,
    pub entries: u64,
    pub records: u64,
    pub checkpoints: u64,
    pub chain_starts: u64,
    /// Hex public key of the checkpoint signatures.
    pub signing_key: String,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()
                    .and_then(|e| e.file_name().to_str().and_then(parse_segment_name))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Every record of the log, in order.
pub fn read_all(control_dir: &Path, keys: &AuditKeys) -> std::io::Result<Vec<AuditRecord>> {
    read_from(control_dir, keys, None).map(|(r, _)| r)
}

/// A place in the log: a segment and a byte offset in it, at the start of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPos {
    pub segment: u64,
    pub offset: u64,
}

/// The records after `pos` (all when `None`), and the place after the last whole line read (a
/// line still being written is left for the next call). Reads only from `pos` on, so following
/// a growing log costs what was added, not the whole log. A `pos` whose segment is gone (removed
/// by retention) reads from the beginning: callers that must not see a record twice also
/// compare sequence numbers.
pub fn read_from(
    control_dir: &Path,
    keys: &AuditKeys,
    pos: Option<LogPos>,
) -> std::io::Result<(Vec<AuditRecord>, LogPos)> {
    let mut out = Vec::new();
    let scan = scan_from(control_dir, keys, pos, |r, _| {
        out.push(r);
        true
    })?;
    Ok((out, scan.end))
}

/// How a [`scan_from`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The place after the last record handed over (or after the last whole line read).
    pub end: LogPos,
    /// `pos` was in a segment that is gone: the scan started at the beginning of the log.
    pub restarted: bool,
}

/// Hands the records after `pos` (all when `None`) to `f`, each with the place right after it,
/// until `f` returns false. Segments are read one at a time.
pub fn scan_from(
    control_dir: &Path,
    keys: &AuditKeys,
    pos: Option<LogPos>,
    mut f: impl FnMut(AuditRecord, LogPos) -> bool,
) -> std::io::Result<Scan> {
    use std::io::{BufRead, Seek, SeekFrom};
    let dir = control_dir.join(super::AUDIT_DIR);
    // Segments older than a valid base are leftovers of an interrupted removal.
    let from = read_base(&dir, keys)
        .ok()
        .flatten()
        .map_or(1, |b| b.segment);
    let segs: Vec<u64> = segments(&dir).into_iter().filter(|s| *s >= from).collect();
    let restarted = pos.is_some_and(|p| !segs.contains(&p.segment));
    let first = pos.filter(|p| segs.contains(&p.segment)).unwrap_or(LogPos {
        segment: segs.first().copied().unwrap_or(from),
        offset: 0,
    });
    let mut end = first;
    for s in segs.into_iter().filter(|s| *s >= first.segment) {
        let start = if s == first.segment { first.offset } else { 0 };
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(dir.join(segment_name(s)))
        };
        let mut file = match opened {
            Ok(f) => f,
            // Removed by retention since the listing: the records after it are still read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // A symlink or no regular file (made by someone else; `verify` names it): skipped.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
            Err(e) => return Err(e),
        };
        if !file.metadata()?.file_type().is_file() {
            continue;
        }
        file.seek(SeekFrom::Start(start))?;
        // Line by line: a caller that stops early reads little of a 16 MiB segment.
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
        let mut line = Vec::new();
        let mut at = start;
        if start == 0 {
            end = LogPos {
                segment: s,
                offset: 0,
            };
        }
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                // The end, or a line still being written: left for the next call.
                break;
            }
            at += n as u64;
            let after = LogPos {
                segment: s,
                offset: at,
            };
            end = after;
            let Some(e) = decode_line(keys, &line[..n - 1]) else {
                continue;
            };
            if e.kind == KIND_CHECKPOINT {
                continue;
            }
            if let Some(r) = e
                .json
                .as_ref()
                .and_then(|j| serde_json::from_slice::<AuditRecord>(j).ok())
                && !f(r, after)
            {
                return Ok(Scan { end, restarted });
            }
        }
    }
    Ok(Scan { end, restarted })
}

/// Verifies the whole log: chain, sequence, decryption, checkpoint signatures, segments, head,
/// the signed beginning left by retention, and — given the key store's anchor — that the log
/// still reaches the checkpoint of the last clean unmount.
pub fn verify(
    control_dir: &Path,
    keys: &AuditKeys,
    anchor: Option<&AuditAnchor>,
) -> std::io::Result<VerifyReport> {
    verify_with_progress(control_dir, keys, anchor, &mut |_, _| {})
}

/// [`verify`], calling `progress(segments done, segments)` after each segment.
pub fn verify_with_progress(
    control_dir: &Path,
    keys: &AuditKeys,
    anchor: Option<&AuditAnchor>,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<VerifyReport> {
    let dir = control_dir.join(super::AUDIT_DIR);
    let mut r = VerifyReport {
        signing_key: hex::encode(&keys.public_key()),
        ..Default::default()
    };
    let pubkey = keys.public_key();
    let mut findings = Vec::new();
    let base = read_base(&dir, keys).unwrap_or_else(|problem| {
        findings.push(Finding {
            segment: None,
            seq: None,
            problem,
        });
        None
    });
    let (start_seg, mut prev_chain, mut expect_seq, mut last_sig) = match &base {
        Some(b) => (
            b.segment,
            b.chain().unwrap_or_default(),
            b.seq,
            b.prev_signature.clone(),
        ),
        None => (1, initial_chain(keys), 0u64, String::new()),
    };
    let start_seq = expect_seq;
    // Older segments than the signed beginning are leftovers of an interrupted removal.
    let segs: Vec<u64> = segments(&dir)
        .into_iter()
        .filter(|s| *s >= start_seg)
        .collect();
    r.segments = segs.len() as u64;
    // Files named like segments in a way the writer never names them (`seg-1.log`): renamed
    // or added by someone else, and not read as part of the log.
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut odd: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| {
                n.starts_with("seg-") && n.ends_with(".log") && parse_segment_name(n).is_none()
            })
            .collect();
        odd.sort();
        for n in odd {
            findings.push(Finding {
                segment: None,
                seq: None,
                problem: format!("{n} is no segment name the log uses (renamed or added)"),
            });
        }
    }
    r.findings = findings;
    let mut find = |segment: Option<u64>, seq: Option<u64>, problem: String| {
        r.findings.push(Finding {
            segment,
            seq,
            problem,
        })
    };
    // `head`, read first: the checkpoints it, the anchor and the base name are kept whole as
    // they are met (`head` must equal one of them field for field); not every checkpoint (a
    // large log holds millions).
    let head_bytes = super::read_small(&dir.join(HEAD_FILE));
    let head_seq = head_bytes
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<Checkpoint>(b).ok())
        .map(|h| h.seq);
    let wanted = [
        head_seq,
        anchor.map(|a| a.seq),
        base.as_ref().and_then(|b| b.checkpoint),
    ];
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let (mut entries, mut records, mut cps, mut starts) = (0u64, 0u64, 0u64, 0u64);
    match segs.first() {
        Some(first) if *first != start_seg => find(
            Some(start_seg),
            None,
            format!(
                "segments {start_seg}..{} are missing (deleted)",
                first.saturating_sub(1)
            ),
        ),
        None if base.is_some() || anchor.is_some() => find(
            Some(start_seg),
            None,
            "no segment is left (the log was deleted)".into(),
        ),
        _ => {}
    }
    for w in segs.windows(2) {
        if w[1] != w[0].saturating_add(1) {
            find(
                Some(w[0].saturating_add(1)),
                None,
                format!("segment {} is missing (deleted)", w[0].saturating_add(1)),
            );
        }
    }
    // The segment the log goes on in (every one before it is closed): the newest, or the one
    // before an empty newest one, which a daemon killed in a segment roll leaves (made before
    // the checkpoint closing the one before it; the next open removes it). Emptying the newest
    // segment hides no more than deleting it would.
    let open_seg = match segs.len() {
        n if n >= 2
            && segs[n - 2].checked_add(1) == Some(segs[n - 1])
            && std::fs::symlink_metadata(dir.join(segment_name(segs[n - 1])))
                .is_ok_and(|m| m.is_file() && m.len() == 0) =>
        {
            n - 2
        }
        n => n.saturating_sub(1),
    };
    for (i, s) in segs.iter().enumerate() {
        progress(i as u64 + 1, segs.len() as u64);
        let data = match super::read_segment(&dir, *s) {
            Ok(d) => d,
            // Reported, not a reason to stop: the rest of the log is still checked.
            Err(e) => {
                find(Some(*s), None, format!("segment {s} cannot be read: {e}"));
                continue;
            }
        };
        if !data.is_empty() && data.last() != Some(&b'\n') {
            find(
                Some(*s),
                None,
                "segment ends in a torn (incomplete) entry".into(),
            );
        }
        let mut next_at = 0u64;
        let newlines = data.iter().filter(|b| **b == b'\n').count();
        let closed = i < open_seg;
        // The reason of the segment's last entry if that is a checkpoint.
        let mut last_reason: Option<String> = None;
        // The writer never writes an empty line (the piece after the last newline is no line):
        // a run of them is reported once.
        let mut empty: Option<(usize, usize)> = None;
        for (i, line) in data.split(|b| *b == b'\n').enumerate() {
            let at = next_at;
            next_at += line.len() as u64 + 1;
            if line.is_empty() {
                if i < newlines {
                    empty = Some(empty.map_or((i + 1, i + 1), |(a, _)| (a, i + 1)));
                }
                continue;
            }
            if let Some(p) = empty_lines(empty.take()) {
                find(Some(*s), None, p);
            }
            let Some(e) = decode_line(keys, line) else {
                find(
                    Some(*s),
                    None,
                    format!("line {} is not a valid entry (modified)", i + 1),
                );
                continue;
            };
            entries += 1;
            last_reason = None;
            if e.seq > expect_seq {
                find(
                    Some(*s),
                    Some(e.seq),
                    format!(
                        "entries {expect_seq}..{} are missing (removed or truncated)",
                        e.seq.saturating_sub(1)
                    ),
                );
            } else if e.seq < expect_seq {
                find(
                    Some(*s),
                    Some(e.seq),
                    format!(
                        "entry {} appears after {} (reordered, swapped or duplicated)",
                        e.seq,
                        expect_seq - 1
                    ),
                );
            }
            if e.seq == expect_seq && !e.follows(keys, &prev_chain) {
                find(Some(*s), Some(e.seq), "chain broken: this entry or the one before it was modified, inserted or reordered".into());
            }
            match &e.json {
                None => find(
                    Some(*s),
                    Some(e.seq),
                    "entry fails authentication (modified)".into(),
                ),
                Some(j) if e.kind == KIND_CHECKPOINT => {
                    cps += 1;
                    match serde_json::from_slice::<Checkpoint>(j) {
                        Ok(c) => {
                            let msg = Checkpoint::signed_bytes(
                                c.seq,
                                c.segment,
                                &c.chain,
                                &c.prev_signature,
                            );
                            let mut sig = [0u8; 64];
                            let sig_ok = hex::decode_into(&c.signature, &mut sig).is_some()
                                && verify_signature(&pubkey, &msg, &sig);
                            if !sig_ok {
                                find(Some(*s), Some(e.seq), "checkpoint signature invalid".into());
                            }
                            if c.chain != hex::encode(&prev_chain) || c.seq != e.seq {
                                find(
                                    Some(*s),
                                    Some(e.seq),
                                    "checkpoint does not match the entries before it".into(),
                                );
                            }
                            if let Some(off) = c.offset
                                && (off != at || c.segment != *s)
                            {
                                find(
                                    Some(*s),
                                    Some(e.seq),
                                    format!(
                                        "checkpoint was written at byte {off} of segment {}, \
                                         found at byte {at} of segment {s} (bytes inserted or \
                                         removed before it)",
                                        c.segment
                                    ),
                                );
                            }
                            if c.prev_signature != last_sig {
                                find(Some(*s), Some(e.seq), "checkpoint does not follow the previous checkpoint (one was removed)".into());
                            }
                            last_sig = c.signature.clone();
                            last_reason = Some(c.reason.clone());
                            if wanted.contains(&Some(c.seq)) {
                                checkpoints.push(c);
                            }
                        }
                        Err(_) => find(Some(*s), Some(e.seq), "checkpoint does not parse".into()),
                    }
                }
                Some(j) => {
                    if e.kind == KIND_CHAIN_START {
                        starts += 1;
                    } else if e.kind == KIND_RECORD {
                        records += 1;
                    }
                    match serde_json::from_slice::<AuditRecord>(j) {
                        // The writer's own finding when it opened the log: reported for as long
                        // as the log keeps it (what was cut may leave no other trace).
                        Ok(rec) if rec.seq == e.seq && rec.event == super::MODIFIED_EVENT => find(
                            Some(*s),
                            Some(e.seq),
                            format!(
                                "the log was found changed when it was opened: {}",
                                rec.detail.unwrap_or_default()
                            ),
                        ),
                        Ok(rec) if rec.seq == e.seq => {}
                        _ => find(
                            Some(*s),
                            Some(e.seq),
                            "record content does not match its sequence number".into(),
                        ),
                    }
                }
            }
            prev_chain = e.chain;
            expect_seq = e.seq.saturating_add(1);
        }
        if let Some(p) = empty_lines(empty.take()) {
            find(Some(*s), None, p);
        }
        // A segment is closed by the checkpoint that ends it: anything after it, or a segment
        // ending otherwise, was added or cut.
        if closed && last_reason.as_deref() != Some("segment-end") {
            find(
                Some(*s),
                None,
                "segment does not end with its segment-end checkpoint (cut, or added to)".into(),
            );
        }
    }
    let holds = |seq: u64, sig: &str| {
        checkpoints
            .iter()
            .any(|c| c.seq == seq && c.signature == sig)
    };
    // Retention since 2026-12-06 writes a checkpoint (and `head`) before the base: the log kept
    // holds it whatever is cut after the base.
    if let Some(cs) = base.as_ref().and_then(|b| b.checkpoint)
        && !checkpoints.iter().any(|c| c.seq == cs)
    {
        find(
            None,
            Some(cs),
            format!(
                "the log does not reach checkpoint {cs}, written when the oldest segments were \
                 removed (tail truncated or removed)"
            ),
        );
    }
    match head_bytes {
        Ok(b) => match serde_json::from_slice::<Checkpoint>(&b) {
            // `head` is in plaintext: only a checkpoint the log holds, field for field, counts
            // (a review found one made up from the plaintext that passed when only the
            // sequence number and signature were compared).
            Ok(h) if h.seq >= start_seq => {
                if !checkpoints.contains(&h) {
                    let problem = if holds(h.seq, &h.signature) {
                        format!(
                            "head differs from checkpoint {} in the log (modified)",
                            h.seq
                        )
                    } else {
                        format!(
                            "the log ends before checkpoint {} recorded in head (tail truncated \
                             or removed)",
                            h.seq
                        )
                    };
                    find(None, Some(h.seq), problem);
                }
            }
            // Before the signed beginning: only the last removed checkpoint, where retention
            // removed the segment that `head` named before another checkpoint reached `head`
            // (a base from before 2026-12-06, which wrote none at the removal).
            Ok(h) => {
                let last_removed = base.as_ref().is_some_and(|b| {
                    b.checkpoint.is_none()
                        && h.seq.checked_add(1) == Some(b.seq)
                        && h.signature == b.prev_signature
                });
                if !last_removed {
                    find(
                        None,
                        Some(h.seq),
                        format!(
                            "head names checkpoint {}, before the log's signed beginning (entry \
                             {start_seq}): head replaced, or the log cut after its beginning",
                            h.seq
                        ),
                    );
                }
            }
            Err(_) => find(None, None, "head file does not parse (modified)".into()),
        },
        Err(_) if cps == 0 && base.is_none() && anchor.is_none() => {}
        Err(_) => find(None, None, "head file is missing".into()),
    }
    if let Some(a) = anchor
        && a.seq >= start_seq
        && !holds(a.seq, &a.signature)
    {
        find(
            None,
            Some(a.seq),
            format!(
                "the log does not reach checkpoint {} that the key store recorded at the last clean unmount (log deleted, truncated or replaced)",
                a.seq
            ),
        );
    }
    r.entries = entries;
    r.records = records;
    r.checkpoints = cps;
    r.chain_starts = starts;
    Ok(r)
}

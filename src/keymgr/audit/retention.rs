//! Retention: closed segments whose newest entry is older than the volume's retention period,
//! or while the log is larger than its size limit, are removed, oldest first (never the segment
//! being written; never one whose file is not as its closing checkpoint recorded it, nor any
//! after it: see [`AuditLog::expire`]). So that `verify` tells a removal by
//! retention from a deletion, the log's new beginning is recorded first in `base`, signed with
//! the checkpoint key: the first kept segment, the sequence number of its first entry, the chain
//! value and the checkpoint signature before it. An `AuditRetention` system record says what was
//! removed. Deleting `base` makes the removed segments show up as missing; an older `base`
//! expects segments that are gone: neither hides a deletion.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::record::{AuditRecord, Checkpoint, Source};
use super::writer::{AuditLog, Inner, due};
use super::{AuditKeys, KIND_CHECKPOINT, KIND_RECORD, SEGMENT_BYTES, segment_name};
use crate::crypto::{hex, verify_signature};

pub const BASE_FILE: &str = "base";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// The first segment kept.
    pub segment: u64,
    /// Sequence number of its first entry.
    pub seq: u64,
    /// Hex chain value of the last removed entry.
    pub prev_chain: String,
    /// Hex signature of the last removed checkpoint ("" if none).
    pub prev_signature: String,
    /// When the segments were removed (RFC 3339).
    pub time: String,
    /// Sequence number of the checkpoint written (durable, and in `head`) right after the
    /// removal's `AuditRetention` record, before this base: the log kept always holds it, so
    /// cutting everything after the base does not pass with a `head` below it. Absent in bases
    /// written before 2026-12-06 (which kmsfs of that time cannot read once it is there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// Hex Ed25519 signature over the fields above.
    pub signature: String,
}

impl Base {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"kmsfs audit base v1\n");
        b.extend_from_slice(&self.segment.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        for s in [&self.prev_chain, &self.prev_signature, &self.time] {
            b.extend_from_slice(s.as_bytes());
            b.push(b'\n');
        }
        if let Some(c) = self.checkpoint {
            b.extend_from_slice(b"checkpoint ");
            b.extend_from_slice(&c.to_be_bytes());
        }
        b
    }

    pub(super) fn new(
        keys: &AuditKeys,
        segment: u64,
        seq: u64,
        prev_chain: &[u8; 32],
        prev_signature: String,
        checkpoint: Option<u64>,
    ) -> Base {
        let mut b = Base {
            segment,
            seq,
            prev_chain: hex::encode(prev_chain),
            prev_signature,
            time: super::writer::now_rfc3339(),
            checkpoint,
            signature: String::new(),
        };
        b.signature = hex::encode(&keys.sign.sign(&b.signed_bytes()));
        b
    }

    /// This base naming `checkpoint`, signed again (see `AuditLog::upgrade_legacy_base`).
    pub(super) fn naming_checkpoint(&self, keys: &AuditKeys, checkpoint: Option<u64>) -> Base {
        let mut b = Base {
            checkpoint,
            signature: String::new(),
            ..self.clone()
        };
        b.signature = hex::encode(&keys.sign.sign(&b.signed_bytes()));
        b
    }

    fn signature_ok(&self, keys: &AuditKeys) -> bool {
        let mut sig = [0u8; 64];
        hex::decode_into(&self.signature, &mut sig).is_some()
            && verify_signature(&keys.public_key(), &self.signed_bytes(), &sig)
    }

    /// The chain value before the first kept entry.
    pub(super) fn chain(&self) -> Option<[u8; 32]> {
        let mut c = [0u8; 32];
        hex::decode_into(&self.prev_chain, &mut c)?;
        Some(c)
    }
}

/// The log's signed beginning, if segments were removed. `Err` names what is wrong with a `base`
/// file that is there but does not parse or whose signature fails.
pub(super) fn read_base(dir: &Path, keys: &AuditKeys) -> Result<Option<Base>, String> {
    let bytes = match super::read_small(&dir.join(BASE_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("base file unreadable: {e}")),
    };
    let b: Base = serde_json::from_slice(&bytes)
        .map_err(|_| "base file does not parse (modified)".to_string())?;
    if !b.signature_ok(keys) || b.chain().is_none() {
        return Err("base file signature invalid (modified or forged)".into());
    }
    Ok(Some(b))
}

/// What [`AuditLog::expire`] removes: closed segments, oldest first, while the oldest one left
/// is older than `older_than` (its cutoff and the period in days, for the record) or the log is
/// larger than `max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiry {
    pub older_than: Option<(std::time::SystemTime, u32)>,
    pub max_bytes: Option<u64>,
}

impl Expiry {
    /// Segments older than `cutoff` (a period of `days`, for the record).
    pub fn by_age(cutoff: std::time::SystemTime, days: u32) -> Expiry {
        Expiry {
            older_than: Some((cutoff, days)),
            max_bytes: None,
        }
    }

    /// The oldest segments while the log is larger than `max` bytes.
    pub fn by_size(max: u64) -> Expiry {
        Expiry {
            older_than: None,
            max_bytes: Some(max),
        }
    }

    /// What a removal by size takes the log down to: once over a limit of four segments or
    /// more, three quarters of it, so that removals (each syncs its record and `base` under the
    /// log's lock) come every few segments instead of at every roll.
    fn size_target(&self) -> Option<u64> {
        self.max_bytes
            .map(|m| if m >= 4 * SEGMENT_BYTES { m - m / 4 } else { m })
    }

    /// Whether the segment that `end` closes is older than the rule's period.
    fn is_old(&self, end: &SegmentEnd) -> bool {
        self.older_than.is_some_and(|(cutoff, _)| {
            humantime::parse_rfc3339_weak(&end.cp.time).is_ok_and(|t| t < cutoff)
        })
    }
}

/// The most a closed segment is ever written to: it is closed once past [`SEGMENT_BYTES`], after
/// the write that took it there (a batch of records) and its segment-end checkpoint; on a full
/// disk once past the room a mount held for it (see `room`), and never past
/// [`super::SEGMENT_WRITE_MAX`], where the writer refuses records.
const CLOSED_MAX: u64 = super::SEGMENT_WRITE_MAX;

/// What tells a segment file unchanged without reading it: any write moves its change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// A closed segment whose entries were found to chain from the entry before it (sequence number
/// `seq`, chain value `chain`) to its closing checkpoint, while its file was `id`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Proof {
    id: FileId,
    seq: u64,
    chain: [u8; 32],
}

/// A closed segment's last entry, a checkpoint.
struct SegmentEnd {
    entry: super::verify::Entry,
    cp: Checkpoint,
    /// The file's length.
    len: u64,
    /// Its last line's length (newline included).
    line_len: u64,
}

impl SegmentEnd {
    /// Whether this is `segment`'s own segment-end checkpoint (segments are closed only by a
    /// roll; one ending in another checkpoint was cut short).
    fn closes(&self, segment: u64) -> bool {
        self.cp.segment == segment && self.cp.reason == "segment-end"
    }

    /// The segment's length as its closing checkpoint recorded it (`None`: older kmsfs).
    fn recorded_len(&self) -> Option<u64> {
        Some(self.cp.offset?.saturating_add(self.line_len))
    }

    /// Why the file is not as its closing checkpoint recorded it (segment number, length), if
    /// it is not. Checkpoints without an offset (older kmsfs) cannot tell its length.
    fn altered(&self, segment: u64) -> Option<String> {
        if !self.closes(segment) {
            return Some(format!(
                "segment {segment} ends with a {} checkpoint of segment {}, not its own \
                 segment-end one (cut or replaced)",
                self.cp.reason, self.cp.segment
            ));
        }
        let want = self.recorded_len()?;
        (want != self.len).then(|| {
            format!(
                "segment {segment} is {} bytes where its closing checkpoint says {want} (bytes \
                 inserted or removed)",
                self.len
            )
        })
    }
}

/// The last entry of a segment file if it is a checkpoint, read from the file's tail.
fn last_checkpoint_of(keys: &AuditKeys, path: &Path) -> Option<SegmentEnd> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 << 10;
    let mut f = super::open_regular(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let line = tail.strip_suffix(b"\n")?.rsplit(|b| *b == b'\n').next()?;
    let entry = super::verify::decode_lines(keys, line).pop()?;
    if entry.kind != KIND_CHECKPOINT {
        return None;
    }
    let cp = serde_json::from_slice(entry.json.as_ref()?).ok()?;
    Some(SegmentEnd {
        entry,
        cp,
        len,
        line_len: line.len() as u64 + 1,
    })
}

/// The first line of a segment file, decoded (`None` if it is no entry), read whole (a record
/// may be long: a line cut at a fixed size blocked retention for ever; found by a second review).
pub(super) fn first_entry_of(keys: &AuditKeys, path: &Path) -> Option<super::verify::Entry> {
    use std::io::{BufRead, Read};
    let f = super::open_regular(path).ok()?;
    let mut line = Vec::new();
    std::io::BufReader::new(f.take(super::SEGMENT_READ_MAX))
        .read_until(b'\n', &mut line)
        .ok()?;
    let line = line.strip_suffix(b"\n")?;
    super::verify::decode_lines(keys, line).pop()
}

/// Why the entries of closed segment `n` do not form one chain from the entry before it
/// (sequence number `seq`, chain value `chain`) to its closing checkpoint `end`, if they do not:
/// a line that is no entry (padding, an empty line), an entry whose chain value does not follow
/// (changed, inserted, removed), or a sequence number out of turn — other than the writer's own
/// record of entries found missing at open (see [`continues`]).
fn chain_broken(
    keys: &AuditKeys,
    dir: &Path,
    n: u64,
    seq: u64,
    chain: &[u8; 32],
    end: &SegmentEnd,
) -> Option<String> {
    let data = match super::read_segment(dir, n) {
        Ok(d) => d,
        Err(e) => return Some(format!("segment {n} cannot be read: {e}")),
    };
    let Some(body) = data.strip_suffix(b"\n") else {
        return Some(format!("segment {n} does not end with a complete line"));
    };
    let (mut want_seq, mut prev) = (seq, *chain);
    let mut last = None;
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let bad = |what: &str| Some(format!("segment {n}, line {}: {what}", i + 1));
        let Some(e) = super::verify::decode_frame(line) else {
            return bad("not an entry");
        };
        // Out of turn only for the writer's record of a gap, which is decrypted to tell.
        let in_turn = if e.seq == want_seq {
            e.follows(keys, &prev)
        } else {
            super::verify::decode_line(keys, line)
                .is_some_and(|full| continues(keys, &full, want_seq, &prev))
        };
        if !in_turn {
            return bad("does not follow the entry before it (changed, added or removed)");
        }
        want_seq = e.seq.saturating_add(1);
        prev = e.chain;
        last = Some(e.seq);
    }
    (last != Some(end.entry.seq) || prev != end.entry.chain)
        .then(|| format!("segment {n}: its entries do not lead to its closing checkpoint"))
}

/// Whether `e`, the first entry of a segment, follows the entry before it (sequence number
/// `seq` is expected, after chain value `chain`): its chain is right, and its number too, or it
/// is the writer's own record of entries found missing at open (`AuditLogModified`, after which
/// the numbers go on past the gap).
fn continues(keys: &AuditKeys, e: &super::verify::Entry, seq: u64, chain: &[u8; 32]) -> bool {
    let linked = e.follows(keys, chain);
    let noted_gap = || {
        e.seq > seq
            && e.kind == KIND_RECORD
            && e.json
                .as_ref()
                .and_then(|j| serde_json::from_slice::<AuditRecord>(j).ok())
                .is_some_and(|r| r.event == super::MODIFIED_EVENT)
    };
    linked && e.json.is_some() && (e.seq == seq || noted_gap())
}

impl AuditLog {
    /// Logs why retention cannot remove more (at most every ten minutes).
    fn blocked(&self, why: String) {
        if due(&self.blocked_at) {
            tracing::error!("audit retention: {why}");
        }
    }

    /// Replaces each closed segment's length on disk by what counts for the size limit: the
    /// length its closing checkpoint recorded (at most the file's), or nothing for a segment
    /// that does not end with its own segment-end checkpoint (retention stops there, so its
    /// bytes are not to be made room for). Segments of older kmsfs, whose checkpoints record no
    /// length, count as they are on disk.
    fn count_recorded(&self, g: &mut Inner, segs: &mut [(u64, u64)]) {
        for (s, len) in segs.iter_mut() {
            if g.intact.get(s) == Some(len) {
                continue;
            }
            let Some(end) = last_checkpoint_of(&self.keys, &self.dir.join(segment_name(*s))) else {
                *len = 0;
                continue;
            };
            if !end.closes(*s) {
                *len = 0;
                continue;
            }
            // Older kmsfs (no recorded length): counts as it is on disk.
            let recorded = end.recorded_len().unwrap_or(*len);
            if recorded == *len {
                g.intact.insert(*s, *len);
            }
            *len = recorded.min(*len);
        }
        g.intact.retain(|s, _| segs.iter().any(|(n, _)| n == s));
    }

    /// Where the log begins: the first segment, the sequence number of its first entry and the
    /// chain value before it (from the signed base, or the first entry ever).
    fn beginning(&self) -> (u64, u64, [u8; 32]) {
        match read_base(&self.dir, &self.keys) {
            Ok(Some(b)) => (
                b.segment,
                b.seq,
                b.chain()
                    .unwrap_or_else(|| super::writer::initial_chain(&self.keys)),
            ),
            _ => (1, 0, super::writer::initial_chain(&self.keys)),
        }
    }

    /// Whether closed segment `n` was proven to chain from (`seq`, `chain`) while its file was
    /// as it is now.
    fn is_proven(&self, n: u64, seq: u64, chain: &[u8; 32]) -> bool {
        let id = file_id(&self.dir.join(segment_name(n)));
        let proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        proven
            .get(&n)
            .is_some_and(|p| Some(p.id) == id && p.seq == seq && p.chain == *chain)
    }

    /// Whether segment `s` follows on from where the log, or the segment before it, ends
    /// (`want`: the segment number, sequence number and chain value expected next).
    fn follows_on(&self, s: u64, want: (u64, u64, &[u8; 32])) -> bool {
        let (seg, seq, chain) = want;
        s == seg
            && first_entry_of(&self.keys, &self.dir.join(segment_name(s)))
                .is_some_and(|e| continues(&self.keys, &e, seq, chain))
    }

    /// [`chain_broken`], remembered as a proof when the chain holds and the file did not
    /// change while it was read: with [`AuditLog::is_proven`], each segment is read whole once
    /// per mount.
    fn prove_chain(&self, n: u64, seq: u64, chain: &[u8; 32], end: &SegmentEnd) -> Option<String> {
        let path = self.dir.join(segment_name(n));
        let before = file_id(&path);
        #[cfg(test)]
        self.chains_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let why = chain_broken(&self.keys, &self.dir, n, seq, chain, end);
        if let (None, Some(id)) = (&why, before)
            && file_id(&path) == Some(id)
        {
            let mut proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
            proven.insert(
                n,
                Proof {
                    id,
                    seq,
                    chain: *chain,
                },
            );
        }
        why
    }

    /// Checks, without the log's lock, the chains of the closed segments that `rule` has
    /// retention remove (oldest first, as long as each follows on from the one before and is
    /// as its closing checkpoint recorded; for a size limit, from three quarters of it, where a
    /// removal takes the log down to), reading at most `budget` of them whole: so that the
    /// removal under the lock (at a segment roll with a size limit, or the minute's
    /// maintenance) finds them proven instead of reading each whole then, ~60 ms per 16 MiB
    /// segment while every open and create waits (a limit of 20 GiB removes 5 GiB at once:
    /// ~20 s). A segment changed after its check is found by its change time and read again.
    pub fn prove_for_retention(&self, rule: Expiry, budget: usize) {
        let (current, current_bytes) = {
            let g = self.lock();
            (g.segment, g.bytes)
        };
        let Ok(mut segs) = self.segment_files() else {
            return;
        };
        segs.retain(|(n, _)| *n < current);
        let mut total: u64 = segs.iter().map(|(_, len)| len).sum::<u64>() + current_bytes;
        let target = rule.size_target();
        let (mut want_seg, mut want_seq, mut want_chain) = self.beginning();
        let mut read = 0;
        for (s, len) in segs {
            if s < want_seg {
                continue;
            }
            let Some(end) = last_checkpoint_of(&self.keys, &self.dir.join(segment_name(s))) else {
                break;
            };
            let over = target.is_some_and(|t| total > t);
            if !(rule.is_old(&end) || over)
                || !self.follows_on(s, (want_seg, want_seq, &want_chain))
                || end.altered(s).is_some()
            {
                break;
            }
            if !self.is_proven(s, want_seq, &want_chain) {
                if read == budget {
                    break;
                }
                read += 1;
                if self.prove_chain(s, want_seq, &want_chain, &end).is_some() {
                    break;
                }
            }
            total = total.saturating_sub(len);
            want_seg = s.saturating_add(1);
            want_seq = end.entry.seq.saturating_add(1);
            want_chain = end.entry.chain;
        }
    }

    /// Removes closed segments, oldest first, as `rule` says (see `retention.rs`; never the
    /// segment being written): first an `AuditRetention` record, then the signed `base`, then
    /// the files. Returns the removed segment range.
    pub fn expire(&self, rule: Expiry) -> io::Result<Option<(u64, u64)>> {
        let mut g = self.lock();
        self.expire_locked(&mut g, rule)
    }

    pub(super) fn expire_locked(
        &self,
        g: &mut Inner,
        rule: Expiry,
    ) -> io::Result<Option<(u64, u64)>> {
        let mut segs = self.segment_files()?;
        segs.retain(|(n, _)| *n < g.segment);
        // Segments below the signed beginning are leftovers of an interrupted removal (or
        // copies put back): not part of the log (`verify` skips them), so not counted; gone now.
        if let Ok(Some(b)) = read_base(&self.dir, &self.keys) {
            segs.retain(|(n, _)| {
                if *n >= b.segment {
                    return true;
                }
                let _ = fs::remove_file(self.dir.join(segment_name(*n)));
                false
            });
        }
        let mut rule = rule;
        if rule.max_bytes.is_some() {
            // Segment files can be grown by whoever can write the directory (no keys needed),
            // who must not make the limit remove more under a genuinely signed beginning: each
            // closed segment counts as long as its closing checkpoint recorded (checked below
            // before one is removed), and the segment being written as long as written.
            self.count_recorded(g, &mut segs);
            // Checkpoints of older kmsfs do not record it. A closed segment is never written
            // past [`CLOSED_MAX`]; one that is larger turns the size rule off.
            if let Some((n, len)) = segs.iter().find(|(_, len)| *len > CLOSED_MAX) {
                self.blocked(format!(
                    "segment {n} is {len} bytes, more than a segment is ever written: the \
                     size limit removes nothing until it is looked at (`kmsfs audit verify`)"
                ));
                rule.max_bytes = None;
            }
        }
        let Some(&(first, _)) = segs.first() else {
            return Ok(None);
        };
        // Where the log begins: the signed base, or the first entry ever. Each segment removed
        // must follow on from there, one after another: a segment deleted by someone else is
        // not to be covered by a base signed past it (found by a review: the removal's record
        // then said kmsfs had removed it).
        let (mut want_seg, mut want_seq, mut want_chain) = self.beginning();
        let mut total: u64 = segs.iter().map(|(_, len)| len).sum::<u64>() + g.bytes;
        // A closed segment ends with its segment-end checkpoint: its time says how old the
        // segment is, its signature is the one before the next segment. Only that last entry is
        // read (the scan runs with the log locked, every minute while mounted).
        let mut removed: Option<(u64, super::verify::Entry, Checkpoint)> = None;
        let (mut by_age, mut by_size) = (false, false);
        let trigger = rule.max_bytes.is_some_and(|m| total > m);
        let target = rule.size_target();
        for (s, len) in segs {
            let over = trigger && target.is_some_and(|t| total > t);
            let Some(end) = last_checkpoint_of(&self.keys, &self.dir.join(segment_name(s))) else {
                if over {
                    self.blocked(format!(
                        "segment {s} does not end with a signed checkpoint: the size limit \
                         removes nothing from there on (check it with `kmsfs audit verify`)"
                    ));
                }
                break;
            };
            let old = rule.is_old(&end);
            if !old && !over {
                break;
            }
            if !self.follows_on(s, (want_seg, want_seq, &want_chain)) {
                self.blocked(format!(
                    "segment {s} does not follow on from the one before it (segment {want_seg}, \
                     entry {want_seq} expected: deleted or changed): retention removes nothing \
                     from there on until it is looked at (`kmsfs audit verify`)"
                ));
                break;
            }
            // Whoever can write the directory (no keys needed) must not make retention remove
            // a segment they changed: that would take the evidence with it. Its length, its
            // closing checkpoint, and every entry's chain from the first to that checkpoint
            // (found by a second review: a line changed in place, or lines cut from the
            // middle and the length padded back, passed the first two). The chain is checked
            // without decrypting (~60 ms per 16 MiB segment), once per segment and mount, and
            // usually before, without the log's lock (see [`AuditLog::prove_for_retention`]).
            if let Some(why) = end.altered(s).or_else(|| {
                (!self.is_proven(s, want_seq, &want_chain))
                    .then(|| self.prove_chain(s, want_seq, &want_chain, &end))
                    .flatten()
            }) {
                self.blocked(format!(
                    "{why}: retention removes nothing from there on until it is looked at \
                     (`kmsfs audit verify`)"
                ));
                break;
            }
            by_age |= old;
            by_size |= over && !old;
            total -= len;
            want_seg = s.saturating_add(1);
            want_seq = end.entry.seq.saturating_add(1);
            want_chain = end.entry.chain;
            removed = Some((s, end.entry, end.cp));
        }
        let Some((through, last, cp)) = removed else {
            return Ok(None);
        };
        let mut why = Vec::new();
        if let (true, Some((_, days))) = (by_age, rule.older_than) {
            why.push(format!("older than {days} day(s)"));
        }
        if let (true, Some(max)) = (by_size, rule.max_bytes) {
            why.push(format!("the log over its limit of {max} bytes"));
        }
        let mut r = AuditRecord::new("AuditRetention", Source::System);
        r.detail = Some(format!(
            "removing segments {first}..={through} (entries up to {}): {}",
            last.seq,
            why.join("; ")
        ));
        self.write_locked(g, KIND_RECORD, &mut r)?;
        // Durable, and in `head`, before the base: see [`Base::checkpoint`].
        self.checkpoint_locked(g, "retention")?;
        let base = Base::new(
            &self.keys,
            through + 1,
            last.seq + 1,
            &last.chain,
            cp.signature,
            g.last_checkpoint,
        );
        let json = serde_json::to_vec_pretty(&base).map_err(io::Error::other)?;
        crate::fsutil::atomic_write(&self.dir.join(BASE_FILE), &json, 0o600, None)?;
        for s in first..=through {
            match fs::remove_file(self.dir.join(segment_name(s))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.proven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n, _| *n > through);
        File::open(&self.dir)?.sync_all()?;
        // Told once more now that the files are gone: a view that measured the log between the
        // record and the removal measures it again (the record itself told them first).
        if let Some(f) = self.subscriber.get() {
            f(&r);
        }
        Ok(Some((first, through)))
    }
}

//! Appending to the audit log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::record::{AuditRecord, Checkpoint, Source};
use super::retention::Expiry;
use super::verify::Entry;
use super::{
    AuditKeys, CHECKPOINT_EVERY, HEAD_FILE, KIND_CHAIN_START, KIND_CHECKPOINT, KIND_RECORD,
    SEGMENT_BYTES, parse_segment_name, segment_name,
};
use crate::crypto::{NONCE_LEN, TAG_LEN, hex, hmac_sha256};
use zeroize::Zeroize;

/// The chain value before the first entry of a log.
pub(crate) fn initial_chain(keys: &AuditKeys) -> [u8; 32] {
    hmac_sha256(&keys.chain, &[b"kmsfs audit chain start v1"])
}

/// Encodes one entry into reused buffers, with the given nonce; returns its chain value. `line`
/// gets the line (without newline); `f` is scratch (left holding the entry's bytes, no
/// plaintext).
#[allow(clippy::too_many_arguments)]
fn encode_into(
    keys: &AuditKeys,
    seq: u64,
    kind: u8,
    json: &[u8],
    prev: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    f: &mut Vec<u8>,
    line: &mut Vec<u8>,
) -> io::Result<[u8; 32]> {
    const AAD: usize = 9;
    f.clear();
    f.reserve(AAD + NONCE_LEN + json.len() + TAG_LEN + 32);
    f.extend_from_slice(&seq.to_be_bytes());
    f.push(kind);
    f.extend_from_slice(nonce);
    f.extend_from_slice(json);
    let (aad, rest) = f.split_at_mut(AAD);
    let tag = keys.enc.seal_in_place(nonce, aad, &mut rest[NONCE_LEN..]);
    f.extend_from_slice(&tag);
    let chain = hmac_sha256(&keys.chain, &[prev, f]);
    f.extend_from_slice(&chain);
    // Into a buffer of the exact size (`encode_string` goes through a slower chunked encoder).
    let len =
        base64::encoded_len(f.len(), false).ok_or_else(|| io::Error::other("entry too long"))?;
    line.clear();
    line.resize(len, 0);
    let n = B64.encode_slice(&*f, line).map_err(io::Error::other)?;
    line.truncate(n);
    Ok(chain)
}

/// The most of a record's `detail` kept (a request's summary can quote a whole document; a line
/// longer than the rest of the log's lines only costs, and whoever may write `.kmsfs/request`
/// chooses its length).
const DETAIL_MAX: usize = 8 << 10;

fn cap_detail(rec: &mut AuditRecord) {
    if let Some(d) = &mut rec.detail
        && d.len() > DETAIL_MAX
    {
        let total = d.len();
        let mut cut = DETAIL_MAX;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
        d.push_str(&format!("… ({total} bytes in all)"));
    }
}

/// Random nonces for entries, taken from the OS in batches (one `getrandom` per 256 entries).
#[derive(Default)]
struct Nonces {
    pool: Vec<u8>,
}

impl Nonces {
    fn next(&mut self) -> [u8; NONCE_LEN] {
        if self.pool.len() < NONCE_LEN {
            self.pool.resize(NONCE_LEN * 256, 0);
            crate::crypto::random_bytes(&mut self.pool);
        }
        let at = self.pool.len() - NONCE_LEN;
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&self.pool[at..]);
        self.pool.truncate(at);
        n
    }
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

pub(super) struct Inner {
    pub(super) segment: u64,
    pub(super) file: File,
    pub(super) bytes: u64,
    next_seq: u64,
    chain: [u8; 32],
    since_checkpoint: u64,
    last_signature: String,
    /// Sequence number of the last checkpoint (with `last_signature`).
    pub(super) last_checkpoint: Option<u64>,
    /// A periodic checkpoint not yet in `head` (written at the next group commit).
    head_pending: Option<Vec<u8>>,
    /// Closed segments (number → length) whose file was found as long as their closing
    /// checkpoint recorded: the size limit reads each one's end once, not at every roll.
    pub(super) intact: std::collections::HashMap<u64, u64>,
    /// Reused by every write.
    bufs: Buffers,
    nonces: Nonces,
    /// The room held on the disk for the segment being written (see [`super::room`]).
    room: super::room::Room,
}

/// The buffers of one write: a record's JSON (wiped after each write), an entry's bytes and
/// line, and the lines of the write.
#[derive(Default)]
struct Buffers {
    json: Vec<u8>,
    entry: Vec<u8>,
    line: Vec<u8>,
    out: Vec<u8>,
}

/// An open audit log (one writer per volume: the mount, or the CLI when unmounted).
pub struct AuditLog {
    pub(super) dir: PathBuf,
    pub(super) keys: AuditKeys,
    inner: Mutex<Inner>,
    /// Told of every record once it is written (under the log's lock, so in sequence order).
    pub(super) subscriber: std::sync::OnceLock<Subscriber>,
    /// Records to write with the next entry, or by the flusher within [`LATER_MAX`] (see
    /// [`AuditLog::append_later`]).
    later: Mutex<Vec<AuditRecord>>,
    later_added: std::sync::Condvar,
    flusher: std::sync::OnceLock<()>,
    /// The size limit of the whole log in bytes (0: none), applied at every segment roll (see
    /// [`AuditLog::set_max_bytes`]).
    max_bytes: std::sync::atomic::AtomicU64,
    /// When the last low-disk warning was logged (see [`AuditLog::warn_if_disk_low`]).
    warned_at: Mutex<Option<std::time::Instant>>,
    /// When the size limit last reported that it could not remove (see [`AuditLog::blocked`]).
    pub(super) blocked_at: Mutex<Option<std::time::Instant>>,
    /// Closed segments whose chains retention has checked (see
    /// [`AuditLog::prove_for_retention`]).
    pub(super) proven: Mutex<std::collections::HashMap<u64, super::retention::Proof>>,
    /// How many segments retention has read whole to check their chains (tests).
    #[cfg(test)]
    pub(super) chains_read: std::sync::atomic::AtomicUsize,
}

/// Whether a file system with `free` of `size` bytes left is running low under the log: under
/// 5% free (at most 10 GiB, so that a very large file system is not "low" for ever), or under
/// 1 GiB and a fifth of it (so that a small file system is not always "low").
pub(super) fn disk_low(free: u64, size: u64) -> bool {
    free < (size / 20).min(10 << 30) || free < (1 << 30).min(size / 5)
}

/// The least time between two low-disk warnings (and two reports of a blocked size limit).
const LOW_DISK_REPEAT: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether a message rate-limited by `at` (when it was last logged) is due; if so, now is noted.
pub(super) fn due(at: &Mutex<Option<std::time::Instant>>) -> bool {
    let mut at = at.lock().unwrap_or_else(|p| p.into_inner());
    if at.is_some_and(|t| t.elapsed() < LOW_DISK_REPEAT) {
        return false;
    }
    *at = Some(std::time::Instant::now());
    true
}

/// Where the next entry goes: its sequence number and the chain value before it.
struct Position {
    seq: u64,
    chain: [u8; 32],
}

/// The entry a batch ends with.
enum Main<'a> {
    /// A record: its sequence number is set and it is serialized in the batch.
    Record(u8, &'a mut AuditRecord),
    /// Made already (a checkpoint).
    Raw(u8, &'a [u8]),
}

/// The longest a record given to [`AuditLog::append_later`] waits for another entry to be written
/// with before the flusher writes it alone.
pub const LATER_MAX: std::time::Duration = std::time::Duration::from_millis(50);

type Subscriber = Box<dyn Fn(&AuditRecord) + Send + Sync>;

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

fn open_segment(dir: &Path, n: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(segment_name(n)))
}

/// The authenticated entries of the segments read while a log is opened: each segment is read
/// and decrypted once (the open asks several questions of the newest one).
pub(super) struct Found<'a> {
    keys: &'a AuditKeys,
    dir: &'a Path,
    read: std::cell::RefCell<std::collections::HashMap<u64, std::rc::Rc<Vec<Entry>>>>,
}

impl<'a> Found<'a> {
    pub(super) fn new(keys: &'a AuditKeys, dir: &'a Path) -> Self {
        Found {
            keys,
            dir,
            read: Default::default(),
        }
    }

    /// Segment `n`'s authenticated entries (none if it cannot be read).
    fn entries(&self, n: u64) -> std::rc::Rc<Vec<Entry>> {
        if let Some(e) = self.read.borrow().get(&n) {
            return e.clone();
        }
        let e = std::rc::Rc::new(
            super::read_segment(self.dir, n)
                .map(|d| super::verify::decode_authentic(self.keys, &d))
                .unwrap_or_default(),
        );
        self.read.borrow_mut().insert(n, e.clone());
        e
    }

    fn seed(&self, n: u64, entries: Vec<Entry>) -> std::rc::Rc<Vec<Entry>> {
        let e = std::rc::Rc::new(entries);
        self.read.borrow_mut().insert(n, e.clone());
        e
    }

    /// The newest authentic entry in the segments `segs` (searched from the last).
    fn newest_entry(&self, segs: &[u64]) -> Option<Entry> {
        segs.iter()
            .rev()
            .find_map(|s| self.entries(*s).last().cloned())
    }

    /// The last checkpoint in the segments `segs` (searched from the last).
    fn last_checkpoint(&self, segs: &[u64]) -> Option<Checkpoint> {
        segs.iter().rev().find_map(|s| {
            self.entries(*s)
                .iter()
                .rev()
                .filter(|e| e.kind == KIND_CHECKPOINT)
                .find_map(|e| {
                    e.json
                        .as_ref()
                        .and_then(|j| serde_json::from_slice::<Checkpoint>(j).ok())
                })
        })
    }

    /// The sequence number segment `n` starts at: its first line's, when that is an authentic
    /// entry (read alone), else its first authentic entry's (the segment read whole).
    fn first_seq(&self, n: u64) -> Option<u64> {
        if let Some(e) = self.read.borrow().get(&n) {
            return e.first().map(|e| e.seq);
        }
        let first = super::retention::first_entry_of(self.keys, &self.dir.join(segment_name(n)));
        if let Some(e) = first
            && e.json.is_some()
        {
            return Some(e.seq);
        }
        self.entries(n).first().map(|e| e.seq)
    }

    /// The segments read whole, in order (tests: an open reads only what it must).
    #[cfg(test)]
    pub(super) fn segments_read(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.read.borrow().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether the segments `segs` hold checkpoint `seq` with signature `sig`, read from the
    /// newest down to the one whose first entry is not after `seq` (in the newest segment that
    /// has an entry numbered `seq`). Segments that start after `seq` are passed over after
    /// reading their first line: after a crash the checkpoint of the last clean end may lie
    /// many segments back (everything the crashed session wrote), and reading them whole made
    /// the mount after a crash slow (a 131 MiB session in 9 segments: 1.2 s, now 0.3 s, in a
    /// test build; the two segments still read whole are the newest and the anchor's).
    pub(super) fn holds_checkpoint(&self, segs: &[u64], seq: u64, sig: &str) -> bool {
        for s in segs.iter().rev() {
            if self.first_seq(*s).is_some_and(|f| f > seq) {
                continue;
            }
            let entries = self.entries(*s);
            if let Some(e) = entries.iter().find(|e| e.seq == seq) {
                return e.kind == KIND_CHECKPOINT
                    && e.json
                        .as_ref()
                        .and_then(|j| serde_json::from_slice::<Checkpoint>(j).ok())
                        .is_some_and(|c| c.signature == sig);
            }
            if entries.first().is_some_and(|e| e.seq < seq) {
                return false;
            }
        }
        false
    }
}

/// `head`, if it is there and its signature is the log's: a checkpoint the log once held.
fn genuine_head(keys: &AuditKeys, dir: &Path) -> Option<Checkpoint> {
    let b = super::read_small(&dir.join(HEAD_FILE)).ok()?;
    let c: Checkpoint = serde_json::from_slice(&b).ok()?;
    let mut sig = [0u8; 64];
    let msg = Checkpoint::signed_bytes(c.seq, c.segment, &c.chain, &c.prev_signature);
    (hex::decode_into(&c.signature, &mut sig).is_some()
        && crate::crypto::verify_signature(&keys.public_key(), &msg, &sig))
    .then_some(c)
}

/// Where a log found at open goes on.
struct Resume {
    segment: u64,
    next_seq: u64,
    chain: [u8; 32],
    /// Kind of the newest entry, if any.
    last_kind: Option<u8>,
    /// (signature, sequence number) of the last checkpoint.
    last_cp: (String, Option<u64>),
    /// No torn line was cut off.
    clean: bool,
    /// The newest segment, if it is left as found: (number, what is wrong with it).
    modified: Option<(u64, String)>,
}

/// Whether `e` is the segment-end checkpoint of segment `n` (which closes it).
pub(super) fn ends_segment(e: &Entry, n: u64) -> bool {
    e.kind == KIND_CHECKPOINT
        && e.json
            .as_ref()
            .and_then(|j| serde_json::from_slice::<Checkpoint>(j).ok())
            .is_some_and(|c| c.reason == "segment-end" && c.segment == n)
}

/// Reads where the log in `dir` (segments `segs`) goes on. Only authenticated entries count:
/// a line anyone can write (no keys needed) must not choose the next sequence number or chain
/// value, nor whether the last session ended cleanly.
fn resume(found: &Found<'_>, segs: &[u64]) -> io::Result<Resume> {
    let (keys, dir) = (found.keys, found.dir);
    let Some(&n) = segs.last() else {
        // Every segment gone: from the signed beginning if there is one (found by a second
        // review: the log restarted at segment 1, below it, where `show` and retention skipped
        // it), else a new log.
        let b = super::retention::read_base(dir, keys).ok().flatten();
        return Ok(Resume {
            segment: b.as_ref().map_or(1, |b| b.segment),
            next_seq: b.as_ref().map_or(0, |b| b.seq),
            chain: b
                .as_ref()
                .and_then(|b| b.chain())
                .unwrap_or_else(|| initial_chain(keys)),
            last_kind: None,
            last_cp: (b.map_or(String::new(), |b| b.prev_signature), None),
            clean: true,
            modified: None,
        });
    };
    let older = &segs[..segs.len() - 1];
    let (entries, clean, modified) = match super::read_segment(dir, n) {
        Ok(data) => {
            // Cut a torn tail: keep up to the last newline.
            let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if keep != data.len() {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(dir.join(segment_name(n)))?
                    .set_len(keep as u64)?;
            }
            let entries = found.seed(n, super::verify::decode_authentic(keys, &data[..keep]));
            let lines = data[..keep].iter().filter(|b| **b == b'\n').count();
            // Lines that are no authentic entry (blank, undecodable, failing authentication:
            // never written so; the writer would take them into the next checkpoint's offset):
            // the segment is kept as found, for `verify`, and the log goes on in a new one.
            let bad = lines - entries.len();
            let modified = (bad > 0).then(|| {
                (
                    n,
                    format!("holds {bad} line(s) that are no authentic entry"),
                )
            });
            (entries, keep == data.len(), modified)
        }
        // Not a regular file of a segment's size (a symlink, a FIFO, a sparse terabyte: made
        // by someone else): left as found, the log goes on in a new segment.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            (found.seed(n, Vec::new()), true, Some((n, e.to_string())))
        }
        Err(e) => return Err(e),
    };
    let last_cp = found
        .last_checkpoint(segs)
        .map_or((String::new(), None), |c| (c.signature, Some(c.seq)));
    let next_segment = |after: u64| {
        after
            .checked_add(1)
            .ok_or_else(|| io::Error::other("audit segment numbers exhausted"))
    };
    if let Some(e) = entries.last() {
        // Killed between a roll's segment-end checkpoint and the new file: the segment is
        // closed, the log goes on in the next one.
        let closed = ends_segment(e, n);
        return Ok(Resume {
            segment: if modified.is_some() || closed {
                next_segment(n)?
            } else {
                n
            },
            next_seq: e
                .seq
                .checked_add(1)
                .ok_or_else(|| io::Error::other("audit sequence numbers exhausted"))?,
            chain: e.chain,
            last_kind: Some(e.kind),
            last_cp,
            clean,
            modified,
        });
    }
    // Killed in a roll between making the next segment and writing the segment-end checkpoint
    // of the one before (found by a review): the newest segment is empty and the one before
    // it does not end closed. Left so, `verify` would read that one as cut short for good;
    // the empty file goes and the log goes on in the one before. (Emptying the newest segment
    // gives no one more than deleting it: the checks of the log's end are the same.)
    if let Some(&p) = older.last()
        && p.checked_add(1) == Some(n)
        && modified.is_none()
        && entries.is_empty()
        && clean
        && !found.entries(p).last().is_some_and(|e| ends_segment(e, p))
    {
        fs::remove_file(dir.join(segment_name(n)))?;
        File::open(dir)?.sync_all()?;
        tracing::warn!(
            "audit log: segment {n} was empty after segment {p}, which was never closed (a \
             daemon killed in a segment roll): removed, the log goes on in segment {p}"
        );
        return resume(found, older);
    }
    // No entry in the newest segment (killed right after a segment roll, or left as found):
    // go on from the newest entry before it, or from the retention base (found by fuzzing:
    // the log restarted at entry 0).
    let segment = if modified.is_some() {
        next_segment(n)?
    } else {
        n
    };
    let (next_seq, chain, last_kind, last_cp) = match (
        found.newest_entry(older),
        super::retention::read_base(dir, keys),
    ) {
        (Some(e), _) => (
            e.seq
                .checked_add(1)
                .ok_or_else(|| io::Error::other("audit sequence numbers exhausted"))?,
            e.chain,
            Some(e.kind),
            last_cp,
        ),
        // The last checkpoint before the base: its signature (for the next one's
        // `prev_signature`), not its sequence number.
        (None, Ok(Some(b))) => (
            b.seq,
            b.chain().unwrap_or_else(|| initial_chain(keys)),
            None,
            (b.prev_signature.clone(), None),
        ),
        (None, _) => (0, initial_chain(keys), None, (String::new(), None)),
    };
    Ok(Resume {
        segment,
        next_seq,
        chain,
        last_kind,
        last_cp,
        clean,
        modified,
    })
}

impl AuditLog {
    /// Opens (or creates) the log in `control_dir/audit` (see [`AuditLog::open_anchored`]),
    /// with no key store anchor to check it against.
    pub fn open(control_dir: &Path, keys: AuditKeys) -> io::Result<AuditLog> {
        Self::open_anchored(control_dir, keys, None)
    }

    /// Opens (or creates) the log in `control_dir/audit`. A torn last line (crash mid-write) is
    /// cut off; if the previous session did not end with an unmount checkpoint, a chain-start
    /// entry marks the unclean shutdown. The log must still reach `anchor` (the key store's
    /// record of the last clean end of a session) and the checkpoint `head` names (when its
    /// signature is the log's): one that does not was deleted or cut while closed. That is
    /// recorded (`AuditLogModified`), and the sequence numbers go on after the missing
    /// checkpoint, so that `verify` reports the gap for as long as the log keeps the entries
    /// around it — also once the next clean end has replaced the anchor and `head`.
    pub fn open_anchored(
        control_dir: &Path,
        keys: AuditKeys,
        anchor: Option<&crate::keymgr::store::AuditAnchor>,
    ) -> io::Result<AuditLog> {
        let dir = control_dir.join(super::AUDIT_DIR);
        fs::create_dir_all(&dir)?;
        let mut segs: Vec<u64> = fs::read_dir(&dir)?
            .filter_map(|e| {
                e.ok()
                    .and_then(|e| e.file_name().to_str().and_then(parse_segment_name))
            })
            .collect();
        segs.sort_unstable();
        let found = Found::new(&keys, &dir);
        let mut at = resume(&found, &segs)?;
        // The checkpoints the log must reach: the anchor and a genuine head, where retention
        // has not removed them (below the signed beginning).
        let floor = super::retention::read_base(&dir, &keys)
            .ok()
            .flatten()
            .map_or(0, |b| b.seq);
        let mut lost: Option<(u64, &str)> = None;
        let head = genuine_head(&keys, &dir);
        let targets = [
            anchor.map(|a| {
                (
                    a.seq,
                    a.signature.as_str(),
                    "that the key store recorded at the last clean end of a session",
                )
            }),
            head.as_ref()
                .map(|h| (h.seq, h.signature.as_str(), "that head names")),
        ];
        for (seq, sig, whose) in targets.into_iter().flatten() {
            if seq >= floor
                && lost.is_none_or(|(l, _)| seq > l)
                && !found.holds_checkpoint(&segs, seq, sig)
            {
                lost = Some((seq, whose));
            }
        }
        // A checkpoint already passed over: the gap was recorded by an earlier open, which went
        // on numbering after it (not recorded again at every open until the anchor moves).
        let lost = lost.filter(|(seq, _)| at.next_seq <= *seq);
        // A log with checkpoints always has a genuine `head` (written with its first one): one
        // missing or not the log's was deleted or replaced, which hides a cut after the last
        // checkpoint left (found by a second review: a killed session cut back to the last
        // unmount checkpoint, `head` deleted, verified after the next session).
        let head_gone = (head.is_none() && at.last_cp.1.is_some()).then(|| {
            let what = match super::read_small(&dir.join(HEAD_FILE)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => "is missing",
                _ => "is not a checkpoint of this log",
            };
            format!(
                "head {what} while the log holds checkpoints: entries after the last checkpoint \
                 left may have been cut while the volume was closed"
            )
        });
        let lost = lost.map(|(seq, whose)| {
            let found = at.next_seq;
            at.next_seq = at.next_seq.max(seq.saturating_add(1));
            format!(
                "the log does not reach checkpoint {seq} {whose} (its newest entry left is \
                 {}): entries were deleted or cut while the volume was closed; the log goes on \
                 from entry {}",
                found
                    .checked_sub(1)
                    .map_or("none".into(), |s| s.to_string()),
                at.next_seq
            )
        });
        let resumed = at.modified.as_ref().map_or(at.segment, |(n, _)| *n);
        let was_unmount = found
            .last_checkpoint(&[resumed])
            .is_some_and(|c| c.reason == "unmount");
        drop(found);
        let file = open_segment(&dir, at.segment)?;
        let bytes = file.metadata()?.len();
        let log = AuditLog {
            dir,
            keys,
            inner: Mutex::new(Inner {
                segment: at.segment,
                file,
                bytes,
                next_seq: at.next_seq,
                chain: at.chain,
                since_checkpoint: 0,
                last_signature: at.last_cp.0,
                last_checkpoint: at.last_cp.1,
                head_pending: None,
                intact: Default::default(),
                bufs: Buffers::default(),
                nonces: Nonces::default(),
                room: Default::default(),
            }),
            subscriber: std::sync::OnceLock::new(),
            later: Mutex::new(Vec::new()),
            later_added: std::sync::Condvar::new(),
            flusher: std::sync::OnceLock::new(),
            max_bytes: std::sync::atomic::AtomicU64::new(0),
            warned_at: Mutex::new(None),
            blocked_at: Mutex::new(None),
            proven: Mutex::new(Default::default()),
            #[cfg(test)]
            chains_read: Default::default(),
        };
        if let Some((n, what)) = &at.modified {
            let mut r = AuditRecord::new(super::MODIFIED_EVENT, Source::System);
            r.detail = Some(format!(
                "segment {n} {what} (changed while the log was closed): kept as found, the log \
                 goes on in segment {}",
                at.segment
            ));
            tracing::error!("audit log: {}", r.detail.as_deref().unwrap_or_default());
            log.write_entry(KIND_RECORD, r)?;
        }
        for why in lost.into_iter().chain(head_gone) {
            let mut r = AuditRecord::new(super::MODIFIED_EVENT, Source::System);
            r.detail = Some(why);
            tracing::error!("audit log: {}", r.detail.as_deref().unwrap_or_default());
            log.write_entry(KIND_RECORD, r)?;
        }
        let unclean_reason = match (at.last_kind, at.clean) {
            (None, true) if at.next_seq == 0 => Some("new audit log"),
            (_, false) => Some("unclean shutdown: the last entry was torn and removed"),
            (Some(KIND_CHECKPOINT), true) if was_unmount => None,
            _ => Some(
                "unclean shutdown: the previous session did not end with an unmount checkpoint",
            ),
        };
        if let Some(why) = unclean_reason {
            let mut r = AuditRecord::new("ChainStart", Source::System);
            r.detail = Some(why.into());
            log.write_entry(KIND_CHAIN_START, r)?;
        }
        // A new log gets its `head` at once (periodic checkpoints reach it only at the group
        // commit, and a log killed before the first one must still verify).
        if segs.is_empty() {
            log.checkpoint("start")?;
        }
        log.upgrade_legacy_base()?;
        Ok(log)
    }

    /// A `base` written before 2026-12-06 names no checkpoint the kept log must reach, so
    /// everything after it could be cut with a `head` made up from its plaintext, as long as
    /// no clean end had anchored past it (found by a review). At the first open that finds one,
    /// a checkpoint is written (durable, and in `head`) and the base is signed again naming it,
    /// as retention does now; its other fields stay as they were.
    fn upgrade_legacy_base(&self) -> io::Result<()> {
        let Ok(Some(old)) = super::retention::read_base(&self.dir, &self.keys) else {
            return Ok(());
        };
        if old.checkpoint.is_some() {
            return Ok(());
        }
        let mut g = self.lock();
        self.checkpoint_locked(&mut g, "retention")?;
        let base = old.naming_checkpoint(&self.keys, g.last_checkpoint);
        let json = serde_json::to_vec_pretty(&base).map_err(io::Error::other)?;
        crate::fsutil::atomic_write(&self.dir.join(super::BASE_FILE), &json, 0o600, None)?;
        tracing::info!(
            "audit log: base of segment {} now names checkpoint",
            base.segment
        );
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_entry(&self, kind: u8, mut rec: AuditRecord) -> io::Result<u64> {
        let mut g = self.lock();
        self.write_locked(&mut g, kind, &mut rec)
    }

    pub(super) fn write_locked(
        &self,
        g: &mut Inner,
        kind: u8,
        rec: &mut AuditRecord,
    ) -> io::Result<u64> {
        rec.time = now_rfc3339();
        let seq = self.write_batch(g, Some(Main::Record(kind, rec)))?;
        if let Some(f) = self.subscriber.get() {
            f(rec);
        }
        Ok(seq.unwrap_or_default())
    }

    /// Calls `f` with every record written from now on (one subscriber per log). `f` runs with
    /// the log locked: it must not write to the log.
    pub fn subscribe(&self, f: Subscriber) {
        let _ = self.subscriber.set(f);
    }

    /// Writes an entry whose JSON is made already (a checkpoint: it names the sequence number
    /// and chain value it is written at, so the records waiting in `later` go first, alone).
    fn write_raw(&self, g: &mut Inner, kind: u8, json: &[u8]) -> io::Result<u64> {
        let seq = self.write_batch(g, Some(Main::Raw(kind, json)))?;
        Ok(seq.unwrap_or_default())
    }

    /// Writes the records waiting in `later`, then the entry `main` if given, in one write(2);
    /// returns the main entry's sequence number. On failure nothing is in the log (a partial
    /// line is cut off) and the waiting records wait on.
    fn write_batch(&self, g: &mut Inner, main: Option<Main<'_>>) -> io::Result<Option<u64>> {
        let mut later = match main {
            // Made for the current sequence number and chain: nothing may go before it.
            Some(Main::Raw(..)) => Vec::new(),
            _ => std::mem::take(&mut *self.later.lock().unwrap_or_else(|p| p.into_inner())),
        };
        if later.is_empty() && main.is_none() {
            return Ok(None);
        }
        let mut b = std::mem::take(&mut g.bufs);
        b.out.clear();
        let mut at = Position {
            seq: g.next_seq,
            chain: g.chain,
        };
        let encoded = self.encode_batch(&mut g.nonces, &mut b, &mut at, &mut later, main);
        // The records in plaintext (paths, names) do not stay in the buffer.
        b.json.zeroize();
        // A segment that cannot be closed (its rolls failing) must stay readable as a whole.
        let encoded = encoded.and_then(|s| {
            if g.bytes + b.out.len() as u64 > super::SEGMENT_WRITE_MAX {
                Err(io::Error::other(
                    "the audit segment cannot be closed (its segment-end checkpoint or the next \
                     segment file could not be written)",
                ))
            } else {
                Ok(s)
            }
        });
        // One write(2) in O_APPEND mode: a crash leaves at most one torn last line.
        let r = encoded.and_then(|s| g.file.write_all(&b.out).map(|()| s));
        let len = b.out.len() as u64;
        g.bufs = b;
        let main_seq = match r {
            Ok(s) => s,
            Err(e) => {
                // Cut a partial entry off, so the next one does not share its line (which lets
                // the room held beyond the size go too).
                let _ = g.file.set_len(g.bytes);
                g.room.held = false;
                let mut q = self.later.lock().unwrap_or_else(|p| p.into_inner());
                later.append(&mut q);
                *q = later;
                return Err(e);
            }
        };
        g.bytes += len;
        g.chain = at.chain;
        g.since_checkpoint += at.seq - g.next_seq;
        g.next_seq = at.seq;
        if let Some(f) = self.subscriber.get() {
            for rec in &later {
                f(rec);
            }
        }
        Ok(main_seq)
    }

    /// Encodes the records `later` and then `main` into `b.out`, from position `at`; returns
    /// `main`'s sequence number.
    fn encode_batch(
        &self,
        nonces: &mut Nonces,
        b: &mut Buffers,
        at: &mut Position,
        later: &mut [AuditRecord],
        main: Option<Main<'_>>,
    ) -> io::Result<Option<u64>> {
        for rec in later.iter_mut() {
            cap_detail(rec);
            rec.seq = at.seq;
            b.json.clear();
            serde_json::to_writer(&mut b.json, &*rec).map_err(io::Error::other)?;
            self.push_entry(nonces, b, at, KIND_RECORD)?;
        }
        let Some(m) = main else { return Ok(None) };
        b.json.clear();
        let kind = match m {
            Main::Record(kind, rec) => {
                cap_detail(rec);
                rec.seq = at.seq;
                serde_json::to_writer(&mut b.json, &*rec).map_err(io::Error::other)?;
                kind
            }
            Main::Raw(kind, raw) => {
                b.json.extend_from_slice(raw);
                kind
            }
        };
        self.push_entry(nonces, b, at, kind).map(Some)
    }

    /// Encodes `b.json` as the entry at `at` onto `b.out` and moves `at` past it; returns its
    /// sequence number.
    fn push_entry(
        &self,
        nonces: &mut Nonces,
        b: &mut Buffers,
        at: &mut Position,
        kind: u8,
    ) -> io::Result<u64> {
        let nonce = nonces.next();
        at.chain = encode_into(
            &self.keys,
            at.seq,
            kind,
            &b.json,
            &at.chain,
            &nonce,
            &mut b.entry,
            &mut b.line,
        )?;
        b.out.extend_from_slice(&b.line);
        b.out.push(b'\n');
        let seq = at.seq;
        at.seq = seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("audit sequence numbers exhausted"))?;
        Ok(seq)
    }

    /// Appends a record that no operation waits for (a close): it is written with the next entry
    /// (one write for both), or alone within [`LATER_MAX`]; its time is now. It is lost if the
    /// process is killed before then. A write error is logged, and the record waits on.
    pub fn append_later(self: &Arc<Self>, mut rec: AuditRecord) {
        rec.time = now_rfc3339();
        self.later
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec);
        self.later_added.notify_one();
        self.flusher.get_or_init(|| {
            let log = Arc::downgrade(self);
            let started = std::thread::Builder::new()
                .name("kmsfs-audit-later".into())
                .spawn(move || flush_later_loop(&log));
            if let Err(e) = started {
                tracing::error!(
                    "audit: no flusher thread ({e}); waiting records go with the next entry"
                );
            }
        });
    }

    /// Writes the records waiting in `later` now (and checkpoints or closes the segment when
    /// they take it there, as [`AuditLog::append`] does: a program that opened many files
    /// and exits closes them all at once).
    pub fn flush_later(&self) -> io::Result<()> {
        let mut g = self.lock();
        self.write_batch(&mut g, None)?;
        self.after_write(&mut g)
    }

    /// A periodic checkpoint when one is due, and a new segment when this one is full.
    fn after_write(&self, g: &mut Inner) -> io::Result<()> {
        if g.since_checkpoint >= CHECKPOINT_EVERY {
            self.checkpoint_locked(g, "periodic")?;
        }
        if g.bytes >= SEGMENT_BYTES && g.bytes >= g.room.retry_at {
            self.roll_locked(g, true)?;
        }
        Ok(())
    }

    /// Appends a record. An error means the record is not in the log: refuse the operation.
    /// Once it is written, a checkpoint or segment roll that fails is logged and tried again
    /// after the next record, and the record counts as written (found by a second review: the
    /// operation was refused although its record was in the log, reading as done).
    pub fn append(&self, mut rec: AuditRecord) -> io::Result<u64> {
        let mut g = self.lock();
        let seq = self.write_locked(&mut g, KIND_RECORD, &mut rec)?;
        if let Err(e) = self.after_write(&mut g) {
            tracing::error!(
                "audit log: a checkpoint or segment roll failed (tried again after the next \
                 record): {e}"
            );
        }
        Ok(seq)
    }

    /// Closes the current segment with a checkpoint and continues in a new one.
    pub fn start_new_segment(&self) -> io::Result<()> {
        let mut g = self.lock();
        self.roll_locked(&mut g, false)
    }

    /// Holds room on the disk for the log from now on (a mount: see [`super::room`]). Best
    /// effort: without room (a full disk, a file system that cannot allocate ahead) the log
    /// goes on as before, and the next segment tries again.
    pub fn hold_room(&self) {
        let mut g = self.lock();
        g.room.wanted = true;
        g.room.held = self.hold_current(&mut g);
    }

    /// Holds room for the segment being written if the disk has it to spare; whether it does.
    fn hold_current(&self, g: &mut Inner) -> bool {
        match super::room::free_for_room(&self.dir).and_then(|()| super::room::hold(&g.file)) {
            Ok(h) => h == super::room::Held::Yes,
            Err(e) => {
                tracing::warn!(
                    "audit log: no room held ahead of segment {} ({e}): on a full disk opens \
                     and creates fail with EIO",
                    g.segment
                );
                false
            }
        }
    }

    /// Closes the segment being written and goes on in the next one. With `may_stay` (a roll
    /// because the segment is full), a next segment that cannot be given its room while this
    /// one still holds some leaves the log in this one (see [`super::room`]).
    fn roll_locked(&self, g: &mut Inner, may_stay: bool) -> io::Result<()> {
        // The new file first: if it cannot be made (no inode left), the log goes on in the
        // current one (with its number, no segment-end checkpoint written) and the next append
        // tries again.
        let next = g
            .segment
            .checked_add(1)
            .ok_or_else(|| io::Error::other("audit segment numbers exhausted"))?;
        // On a disk without room for the next segment's, the log stays in this one while it
        // holds room (see `room`): asked of the file system, nothing is made or taken for it.
        if may_stay && g.room.held && g.bytes < super::room::ROOM {
            let free = super::room::free_for_room(&self.dir);
            if let Err(e) = free {
                g.room.retry_at = g.bytes + super::room::RETRY_EVERY;
                tracing::error!(
                    "audit log: no room for segment {next} ({e}): the log goes on in the room \
                     held in segment {} ({} KiB left); once that is used up, opens and creates \
                     fail with EIO until space is freed",
                    g.segment,
                    super::room::ROOM.saturating_sub(g.bytes) >> 10
                );
                return Ok(());
            }
        }
        let file = open_segment(&self.dir, next)?;
        let before = g.last_checkpoint;
        let closed = self.checkpoint_locked(g, "segment-end");
        if closed.is_err() && g.last_checkpoint == before {
            // Not written: the log goes on in this segment, and an empty next one would read
            // as this one cut short.
            let _ = fs::remove_file(self.dir.join(segment_name(next)));
            return closed;
        }
        // The segment-end line is written (made durable or not): the log goes on in the next.
        g.segment = next;
        let old = std::mem::replace(&mut g.file, file);
        // Whatever the closed segment holds past its records goes back (also room a killed
        // mount left when an offline command rolls).
        let _ = super::room::let_go(&old);
        // The next segment's room once it is the log's (made before, a kill in between would
        // leave an empty segment after one never closed: read as cut short).
        g.room.held = g.room.wanted && self.hold_current(g);
        g.room.retry_at = 0;
        g.bytes = 0;
        closed?;
        File::open(&self.dir)?.sync_all()?;
        // The size limit holds at every roll, not only at the minute's maintenance: a busy
        // mount writes hundreds of MB of records a minute. Failing to remove is not a reason
        // to refuse the operation whose record started the roll (that record is written).
        let max = self.max_bytes.load(std::sync::atomic::Ordering::Relaxed);
        if max > 0 {
            match self.expire_locked(g, Expiry::by_size(max)) {
                Ok(Some((a, b))) => {
                    tracing::info!("audit retention (size limit): removed segments {a}..={b}")
                }
                Ok(None) => {}
                Err(e) => tracing::error!("audit retention (size limit) failed: {e}"),
            }
        }
        self.warn_if_disk_low();
        Ok(())
    }

    /// Logs a warning (at most every ten minutes) when the disk under the log runs low
    /// (at segment rolls, and from the key manager's retention every minute): once it is full,
    /// every open and create fails (the log is fail-closed), so the person who can set or lower
    /// a limit should hear of it before.
    pub fn warn_if_disk_low(&self) {
        let Ok(st) = rustix::fs::statvfs(&self.dir) else {
            return;
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let size = st.f_blocks.saturating_mul(st.f_frsize);
        if !disk_low(free, size) || !due(&self.warned_at) {
            return;
        }
        let (log, _) = self.disk_usage().unwrap_or_default();
        let limit = match self.max_bytes() {
            Some(m) => format!("size limit {} MiB", m >> 20),
            None => "no size limit".into(),
        };
        tracing::warn!(
            "the audit log ({} MiB, {limit}) is on a file system with {} MiB free of {} MiB; \
             when it is full, opens and creates fail with EIO: set or lower the limit with \
             `kmsfs audit VOLUME retention --max-size SIZE`",
            log >> 20,
            free >> 20,
            size >> 20
        );
    }

    /// The segment files (number, bytes), in order; entries that cannot be read are left out.
    pub(super) fn segment_files(&self) -> io::Result<Vec<(u64, u64)>> {
        let mut segs: Vec<(u64, u64)> = fs::read_dir(&self.dir)?
            .filter_map(|e| {
                let e = e.ok()?;
                let n = e.file_name().to_str().and_then(parse_segment_name)?;
                Some((n, e.metadata().ok()?.len()))
            })
            .collect();
        segs.sort_unstable();
        Ok(segs)
    }

    /// The log's size on disk: the bytes of its segment files (the one being written included)
    /// and how many there are.
    pub fn disk_usage(&self) -> io::Result<(u64, u64)> {
        let segs = self.segment_files()?;
        Ok((segs.iter().map(|(_, len)| len).sum(), segs.len() as u64))
    }

    /// The size limit applied at segment rolls (`None`: none).
    pub fn max_bytes(&self) -> Option<u64> {
        Some(self.max_bytes.load(std::sync::atomic::Ordering::Relaxed)).filter(|m| *m > 0)
    }

    /// Sets the size limit that every segment roll applies (`None`: no limit). The key manager
    /// sets it from the volume's audit settings whenever it applies them.
    pub fn set_max_bytes(&self, max: Option<u64>) {
        self.max_bytes
            .store(max.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes a signed checkpoint, makes the log durable, then updates `head`.
    pub fn checkpoint(&self, reason: &str) -> io::Result<()> {
        let mut g = self.lock();
        self.checkpoint_locked(&mut g, reason)
    }

    pub(super) fn checkpoint_locked(&self, g: &mut Inner, reason: &str) -> io::Result<()> {
        // The records waiting go before it (it covers them).
        self.write_batch(g, None)?;
        let seq = g.next_seq;
        let chain = hex::encode(&g.chain);
        let sig = hex::encode(&self.keys.sign.sign(&Checkpoint::signed_bytes(
            seq,
            g.segment,
            &chain,
            &g.last_signature,
        )));
        let c = Checkpoint {
            seq,
            time: now_rfc3339(),
            segment: g.segment,
            chain,
            prev_signature: g.last_signature.clone(),
            signature: sig.clone(),
            reason: reason.into(),
            // The waiting records are written (above): the file is `bytes` long.
            offset: Some(g.bytes),
        };
        let json = serde_json::to_vec(&c).map_err(io::Error::other)?;
        self.write_raw(g, KIND_CHECKPOINT, &json)?;
        // In the log now: the next checkpoint follows this one, whatever happens below (found
        // by a review: a failed fsync or `head` write left the writer on the previous one, and
        // `verify` reported a removed checkpoint in an untouched log).
        g.last_signature = sig;
        g.last_checkpoint = Some(seq);
        g.since_checkpoint = 0;
        g.head_pending = Some(json);
        if reason != "periodic" {
            self.make_durable(g)?;
        }
        // Every 1,000 records, on the request path: signed now; made durable, and recorded in
        // `head`, by the next group commit (every minute) or the closing checkpoint. Two fsyncs
        // and a rename here cost ~15 ms each time (`cargo bench --bench audit`).
        Ok(())
    }

    /// Syncs the segment, then writes the checkpoint waiting for `head` (kept for the next try
    /// when either fails).
    fn make_durable(&self, g: &mut Inner) -> io::Result<()> {
        g.file.sync_data()?;
        if let Some(json) = &g.head_pending {
            crate::fsutil::atomic_write(&self.dir.join(HEAD_FILE), json, 0o600, None)?;
            g.head_pending = None;
        }
        Ok(())
    }

    /// The last checkpoint written, to record in the key store at a clean unmount.
    pub fn anchor(&self) -> Option<crate::keymgr::store::AuditAnchor> {
        let g = self.lock();
        g.last_checkpoint
            .map(|seq| crate::keymgr::store::AuditAnchor {
                seq,
                signature: g.last_signature.clone(),
            })
    }

    /// Makes everything written so far durable (group commit).
    pub fn sync(&self) -> io::Result<()> {
        let mut g = self.lock();
        self.write_batch(&mut g, None)?;
        self.make_durable(&mut g)
    }

    /// The clean end of a session.
    pub fn close(&self) -> io::Result<()> {
        let r = self.checkpoint("unmount");
        let mut g = self.lock();
        if g.room.held {
            let _ = super::room::let_go(&g.file);
        }
        g.room = Default::default();
        r
    }
}

/// The flusher of [`AuditLog::append_later`]: waits for a record, gives it [`LATER_MAX`] to go
/// with another entry, then writes what still waits. Ends when the log is gone.
fn flush_later_loop(log: &std::sync::Weak<AuditLog>) {
    loop {
        let Some(l) = log.upgrade() else { return };
        let waiting = {
            let q = l.later.lock().unwrap_or_else(|p| p.into_inner());
            let (q, _) = l
                .later_added
                .wait_timeout_while(q, std::time::Duration::from_secs(1), |q| q.is_empty())
                .unwrap_or_else(|p| p.into_inner());
            !q.is_empty()
        };
        drop(l);
        if waiting {
            std::thread::sleep(LATER_MAX);
            let Some(l) = log.upgrade() else { return };
            if let Err(e) = l.flush_later() {
                tracing::error!("audit log write failed (close records wait): {e}");
            }
        }
    }
}

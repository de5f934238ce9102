//! The audit log: one record per key-manager operation and per file open/create/close, denial,
//! integrity failure, mount and unmount. Confidential (every record encrypted), tamper-evident
//! (each entry chained to the previous one by HMAC-SHA256; signed Ed25519 checkpoints every
//! [`CHECKPOINT_EVERY`] records and at unmount; sequence numbers make gaps visible), segmented by
//! size. Fail-closed: [`AuditLog::append`] returns an error when the entry cannot be written, and
//! callers refuse the operation.
//!
//! On disk, `.kmsfs/audit/seg-NNNNNNNN.log` holds one entry per line, each the base64url (no
//! padding) of a frame:
//! ```text
//!  0   8  sequence number, u64 BE (global, +1 per entry)
//!  8   1  kind: 1 record, 2 checkpoint, 3 chain start
//!  9  12  nonce
//! 21   n  AES-256-GCM-SIV ciphertext of the entry's JSON (AAD = bytes 0..9)
//!  …  16  tag
//!  …  32  chain = HMAC-SHA256(chain key, previous chain ‖ bytes 0..21+n+16)
//! ```
//! `.kmsfs/audit/head` holds the last checkpoint (sequence, chain, signature), written after the
//! checkpoint is durable, so cutting the log's tail before it is detected; the key store records
//! the last checkpoint of each clean unmount ([`crate::keymgr::store::AuditAnchor`]), so deleting
//! the whole directory is detected too. `.kmsfs/audit/base` is the signed beginning of a log
//! whose oldest segments were removed by retention (see `retention.rs`).

mod record;
mod retention;
mod room;
mod verify;
mod writer;

pub use record::{Actor, AuditRecord, Checkpoint, Decision as AuditDecision, Resources, Source};
pub use retention::{BASE_FILE, Base, Expiry};
pub use verify::{
    Finding, LogPos, Scan, VerifyReport, read_all, read_from, scan_from, verify,
    verify_with_progress,
};
pub use writer::{AuditLog, LATER_MAX};

use crate::crypto::{Aead, Key256, SignKey, hkdf_subkey};

/// Records between signed checkpoints.
pub const CHECKPOINT_EVERY: u64 = 1000;
/// A segment is closed (with a checkpoint) when it grows past this.
pub const SEGMENT_BYTES: u64 = 16 << 20;
pub const AUDIT_DIR: &str = "audit";
pub const HEAD_FILE: &str = "head";

/// The event of the writer's own record of a log found changed while closed (`verify` reports
/// each one).
pub const MODIFIED_EVENT: &str = "AuditLogModified";

pub const KIND_RECORD: u8 = 1;
pub const KIND_CHECKPOINT: u8 = 2;
pub const KIND_CHAIN_START: u8 = 3;

const PURPOSE_ENC: &str = "kmsfs/v1/audit-encryption";
const PURPOSE_CHAIN: &str = "kmsfs/v1/audit-chain";
const PURPOSE_SIGN: &str = "kmsfs/v1/audit-checkpoint-signing";

/// The audit log's keys, derived from the volume secret (one per purpose).
pub struct AuditKeys {
    enc: Aead,
    chain: Key256,
    sign: SignKey,
}

impl AuditKeys {
    pub fn new(volume_secret: &Key256) -> Self {
        AuditKeys {
            enc: Aead::new(&hkdf_subkey(volume_secret, b"", PURPOSE_ENC)),
            chain: hkdf_subkey(volume_secret, b"", PURPOSE_CHAIN),
            sign: SignKey::from_seed(&hkdf_subkey(volume_secret, b"", PURPOSE_SIGN)),
        }
    }

    /// The checkpoint signing key's public half (for `audit verify` reports).
    pub fn public_key(&self) -> [u8; 32] {
        self.sign.public()
    }
}

pub fn segment_name(n: u64) -> String {
    format!("seg-{n:08}.log")
}

/// The segment number of a file name the writer makes (`seg-` and at least eight digits, without
/// extra leading zeros): other spellings of a number (`seg-1.log`, `seg-+1.log`) are no segment.
pub fn parse_segment_name(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("seg-")?.strip_suffix(".log")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.parse().ok()?;
    (segment_name(n) == s).then_some(n)
}

/// The most any segment file is read: more than the writer ever makes one (it closes a segment
/// past [`SEGMENT_BYTES`], after the batch that took it there), so a file grown on disk (a
/// sparse terabyte) cannot make the mount or `verify` read without end.
pub const SEGMENT_READ_MAX: u64 = 4 * SEGMENT_BYTES;

/// The most the writer ever writes to a segment: one whose rolls keep failing (no room for its
/// segment-end checkpoint, no inode for the next one) goes on to here and then refuses
/// records, so that it stays readable as a whole (and within what retention takes for
/// untouched).
pub const SEGMENT_WRITE_MAX: u64 = SEGMENT_BYTES + (SEGMENT_READ_MAX - SEGMENT_BYTES) / 2;

/// Opens `path` for reading if it is a regular file (not followed if a symlink, not waited on
/// if a FIFO: whoever can write the directory may have put either there); `InvalidData` says
/// what else it is.
pub(crate) fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "is a symbolic link")
            } else {
                e
            }
        })?;
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        let kind = match t {
            t if t.is_dir() => "a directory",
            t if t.is_fifo() => "a FIFO",
            t if t.is_socket() => "a socket",
            _ => "not a regular file",
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is {kind}"),
        ));
    }
    Ok(f)
}

/// Reads a small file of the log (`head`, `base`) that must be a regular file, up to 1 MiB.
pub(crate) fn read_small(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut b = Vec::new();
    open_regular(path)?.take(1 << 20).read_to_end(&mut b)?;
    Ok(b)
}

/// Reads segment `n` of `dir`: a regular file (not followed if a symlink, not waited on if a
/// FIFO) of at most [`SEGMENT_READ_MAX`] bytes; `InvalidData` names what else it is.
pub(crate) fn read_segment(dir: &std::path::Path, n: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(&dir.join(segment_name(n)))?;
    let m = f.metadata()?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    if m.len() > SEGMENT_READ_MAX {
        return Err(bad(format!(
            "is {} bytes, more than a segment is ever written ({SEGMENT_READ_MAX})",
            m.len()
        )));
    }
    let mut data = Vec::with_capacity(m.len() as usize);
    f.by_ref()
        .take(SEGMENT_READ_MAX + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > SEGMENT_READ_MAX {
        return Err(bad("grew past the most a segment is ever written".into()));
    }
    Ok(data)
}

#[cfg(test)]
mod tamper_tests;
#[cfg(test)]
mod tests;

//! Retention: closed segments whose newest entry is older than the volume's retention period are
//! removed, oldest first (never the segment being written). So that `verify` tells a removal by
//! retention from a deletion, the log's new beginning is recorded first in `base`, signed with
//! the checkpoint key: the first kept segment, the sequence number of its first entry, the chain
//! value and the checkpoint signature before it. An `AuditRetention` system record says what was
//! removed. Deleting `base` makes the removed segments show up as missing; an older `base`
//! expects segments that are gone: neither hides a deletion.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::AuditKeys;
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
        b
    }

    pub(super) fn new(
        keys: &AuditKeys,
        segment: u64,
        seq: u64,
        prev_chain: &[u8; 32],
        prev_signature: String,
    ) -> Base {
        let mut b = Base {
            segment,
            seq,
            prev_chain: hex::encode(prev_chain),
            prev_signature,
            time: super::writer::now_rfc3339(),
            signature: String::new(),
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
    let bytes = match std::fs::read(dir.join(BASE_FILE)) {
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

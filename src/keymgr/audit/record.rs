//! Audit record fields, in the spirit of CloudTrail.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// File access through the mount.
    Fs,
    /// Key-manager operations.
    Kms,
    /// Automatic events (scheduled rotation, end of a deletion window), mount and unmount.
    System,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

impl From<crate::keymgr::policy::Identity> for Actor {
    fn from(id: crate::keymgr::policy::Identity) -> Self {
        Actor {
            uid: id.uid,
            gid: id.gid,
            user: id.user,
            pid: id.pid,
            exe: id.exe,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// The statement (Sid) or grant that decided, or "implicit-deny".
    pub by: String,
}

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Filled in by the log.
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339 UTC with nanoseconds; filled in by the log.
    #[serde(default)]
    pub time: String,
    /// Event name: Open, Create, Close, SetAcl, RemoveAcl, Decrypt, GenerateDataKey, RotateKey,
    /// DisableKey, …
    pub event: String,
    pub source: Source,
    #[serde(default)]
    pub actor: Actor,
    #[serde(default)]
    pub resources: Resources,
    /// Access mode and open flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// 0 on success.
    #[serde(default)]
    pub errno: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// Free-form detail (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a key-manager change, which of its two records this is: `started` (written before
    /// the change is carried out), then `succeeded` or `failed`. None for everything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl AuditRecord {
    pub fn new(event: &str, source: Source) -> Self {
        AuditRecord {
            seq: 0,
            time: String::new(),
            event: event.into(),
            source,
            actor: Actor::default(),
            resources: Resources::default(),
            access_mode: None,
            flags: None,
            decision: None,
            errno: 0,
            bytes_read: None,
            bytes_written: None,
            detail: None,
            outcome: None,
        }
    }

    pub fn denied(&self) -> bool {
        self.decision.as_ref().is_some_and(|d| !d.allowed)
    }
}

/// A signed checkpoint (also the content of the `head` file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the checkpoint entry itself.
    pub seq: u64,
    pub time: String,
    /// Segment the checkpoint closes or sits in.
    pub segment: u64,
    /// Hex chain value of the entry before the checkpoint.
    pub chain: String,
    /// Hex signature of the previous checkpoint ("" for the first).
    pub prev_signature: String,
    /// Hex Ed25519 signature over `seq ‖ segment ‖ chain ‖ prev_signature`.
    pub signature: String,
    /// Why: "periodic", "segment-end", "unmount".
    pub reason: String,
    /// Byte offset of this entry's line in its segment file (absent in checkpoints written
    /// before kmsfs recorded it). Not in the signed bytes (older readers verify the same
    /// signature); authenticated like every entry's content, by its encryption and the chain.
    /// With it, retention tells a closed segment's true length from one grown on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Checkpoint {
    pub fn signed_bytes(seq: u64, segment: u64, chain: &str, prev: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"kmsfs audit checkpoint v1\n");
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&segment.to_be_bytes());
        b.extend_from_slice(chain.as_bytes());
        b.push(b'\n');
        b.extend_from_slice(prev.as_bytes());
        b
    }
}

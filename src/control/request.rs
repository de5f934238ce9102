//! Key-manager requests: one typed, serializable value per operation. The CLI builds them for an
//! unmounted volume and executes them directly; for a mounted volume it writes them as JSON to
//! `.kmsfs/request`, and the control files translate their reads and writes into them, so every
//! operation has exactly one implementation ([`super::exec`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keymgr::lifecycle::DELETION_DAYS_DEFAULT;
use crate::keymgr::policy::Principal;

/// Imported key material as hex: zeroized on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct MaterialHex(pub zeroize::Zeroizing<String>);

impl Serialize for MaterialHex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MaterialHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| MaterialHex(zeroize::Zeroizing::new(s)))
    }
}

impl std::fmt::Debug for MaterialHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaterialHex(<redacted>)")
    }
}

/// The smallest audit log size limit: two segments' worth (the log then keeps the segment being
/// written and at most the one before it).
pub const AUDIT_MAX_BYTES_MIN: u64 = 2 * crate::keymgr::audit::SEGMENT_BYTES;

/// What a new grant allows (its id and creation time are assigned by the key manager).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    #[serde(default)]
    pub name: String,
    pub grantee: Principal,
    pub operations: Vec<String>,
    #[serde(default)]
    pub path_like: Option<String>,
    #[serde(default)]
    pub encryption_context_subset: BTreeMap<String, String>,
    /// Unix seconds.
    #[serde(default)]
    pub expires: Option<u64>,
    #[serde(default)]
    pub retiring_principal: Option<Principal>,
}

/// A key rule as written to `.kmsfs/rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    pub prefix: String,
    /// Key id or `alias/NAME`.
    pub key: String,
}

/// A simulated caller and request for `SimulatePolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Simulated {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: Option<String>,
    pub group_names: Vec<String>,
    pub exe: Option<String>,
    pub path: Option<String>,
    pub access_mode: Option<String>,
    pub encryption_context: BTreeMap<String, String>,
}

fn default_days() -> u32 {
    DELETION_DAYS_DEFAULT
}

/// One key-manager operation. `key` accepts a key id or `alias/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Request {
    CreateKey {
        #[serde(default)]
        description: String,
        #[serde(default)]
        tags: BTreeMap<String, String>,
        #[serde(default)]
        alias: Option<String>,
    },
    ListKeys,
    DescribeKey {
        key: String,
    },
    UpdateKeyDescription {
        key: String,
        description: String,
    },
    TagResource {
        key: String,
        tags: BTreeMap<String, String>,
    },
    UntagResource {
        key: String,
        tag_keys: Vec<String>,
    },
    CreateAlias {
        alias: String,
        key: String,
    },
    UpdateAlias {
        alias: String,
        key: String,
    },
    DeleteAlias {
        alias: String,
    },
    EnableKey {
        key: String,
    },
    DisableKey {
        key: String,
    },
    ScheduleKeyDeletion {
        key: String,
        #[serde(default = "default_days")]
        days: u32,
    },
    CancelKeyDeletion {
        key: String,
    },
    RotateKeyOnDemand {
        key: String,
    },
    GetKeyRotationStatus {
        key: String,
    },
    /// Changes automatic rotation; absent fields keep their value.
    SetKeyRotation {
        key: String,
        #[serde(default)]
        enabled: Option<bool>,
        #[serde(default)]
        period_days: Option<u32>,
    },
    ImportKeyMaterial {
        key: String,
        material: MaterialHex,
    },
    SetDefaultKey {
        key: String,
    },
    SetMinDecryptionVersion {
        key: String,
        version: u32,
    },
    TrimKeyVersions {
        key: String,
        below: u32,
        #[serde(default)]
        force: bool,
    },
    /// Files per key version.
    GetKeyUsage,
    GetKeyPolicy {
        key: String,
    },
    PutKeyPolicy {
        key: String,
        /// The policy document (JSON text).
        policy: String,
        #[serde(default)]
        bypass_lockout_check: bool,
    },
    SimulatePolicy {
        key: String,
        action: String,
        #[serde(default)]
        request: Simulated,
    },
    CreateGrant {
        key: String,
        grant: GrantSpec,
    },
    ListGrants {
        #[serde(default)]
        key: Option<String>,
    },
    RetireGrant {
        grant_id: String,
    },
    RevokeGrant {
        grant_id: String,
    },
    ListKeyRules,
    SetKeyRule {
        prefix: String,
        key: String,
    },
    DeleteKeyRule {
        prefix: String,
    },
    /// Replaces every rule at once.
    PutKeyRules {
        rules: Vec<RuleDoc>,
    },
    /// Re-wraps files' data keys under the newest version of their key (or of the key their
    /// path's rule names), header only.
    Rewrap {
        #[serde(default)]
        key: Option<String>,
        #[serde(default)]
        rules: bool,
    },
    /// Checks the audit log's chain, sequence and signatures.
    VerifyAuditLog,
    GetAlertSettings,
    /// Replaces the anomaly alert thresholds (absent: no alert of that kind).
    PutAlertSettings {
        #[serde(default)]
        denials_per_minute: Option<u32>,
        #[serde(default)]
        decrypts_per_minute: Option<u32>,
    },
    GetAuditSettings,
    /// Sets the audit log's retention (the complete settings: an absent field is no limit):
    /// segments whose newest entry is older than `retention_days` are removed, and the oldest
    /// segments while the log is larger than `max_bytes` (at least [`AUDIT_MAX_BYTES_MIN`]).
    /// Applied at once, then every minute while mounted; the size limit also at every segment
    /// roll. The segment being written is never removed.
    PutAuditSettings {
        #[serde(default)]
        retention_days: Option<u32>,
        /// Left out when unset, so that a daemon from before this field takes the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
    },
}

impl Request {
    /// The operation's name (the audit event and the `op` tag).
    pub fn name(&self) -> &'static str {
        macro_rules! names {
            ($($v:ident),* $(,)?) => {
                match self { $(Request::$v { .. } => stringify!($v),)* }
            };
        }
        names!(
            CreateKey,
            ListKeys,
            DescribeKey,
            UpdateKeyDescription,
            TagResource,
            UntagResource,
            CreateAlias,
            UpdateAlias,
            DeleteAlias,
            EnableKey,
            DisableKey,
            ScheduleKeyDeletion,
            CancelKeyDeletion,
            RotateKeyOnDemand,
            GetKeyRotationStatus,
            SetKeyRotation,
            ImportKeyMaterial,
            SetDefaultKey,
            SetMinDecryptionVersion,
            TrimKeyVersions,
            GetKeyUsage,
            GetKeyPolicy,
            PutKeyPolicy,
            SimulatePolicy,
            CreateGrant,
            ListGrants,
            RetireGrant,
            RevokeGrant,
            ListKeyRules,
            SetKeyRule,
            DeleteKeyRule,
            PutKeyRules,
            Rewrap,
            VerifyAuditLog,
            GetAlertSettings,
            PutAlertSettings,
            GetAuditSettings,
            PutAuditSettings,
        )
    }

    /// Whether the request changes the key store or the files (its audit record is then written
    /// before it is carried out: a change must not happen unrecorded).
    pub fn changes(&self) -> bool {
        use Request::*;
        !matches!(
            self,
            ListKeys
                | DescribeKey { .. }
                | GetKeyRotationStatus { .. }
                | GetKeyUsage
                | GetKeyPolicy { .. }
                | SimulatePolicy { .. }
                | ListGrants { .. }
                | ListKeyRules
                | VerifyAuditLog
                | GetAlertSettings
                | GetAuditSettings
        )
    }

    /// The policy action that authorizes the request.
    pub fn action(&self) -> &'static str {
        use Request::*;
        match self {
            CreateKey { .. } => "kms:CreateKey",
            ListKeys | GetKeyUsage => "kms:ListKeys",
            DescribeKey { .. } => "kms:DescribeKey",
            UpdateKeyDescription { .. } => "kms:UpdateKeyDescription",
            TagResource { .. } => "kms:TagResource",
            UntagResource { .. } => "kms:UntagResource",
            CreateAlias { .. } => "kms:CreateAlias",
            UpdateAlias { .. } => "kms:UpdateAlias",
            DeleteAlias { .. } => "kms:DeleteAlias",
            EnableKey { .. } => "kms:EnableKey",
            DisableKey { .. } => "kms:DisableKey",
            ScheduleKeyDeletion { .. } => "kms:ScheduleKeyDeletion",
            CancelKeyDeletion { .. } => "kms:CancelKeyDeletion",
            RotateKeyOnDemand { .. } => "kms:RotateKeyOnDemand",
            GetKeyRotationStatus { .. } => "kms:GetKeyRotationStatus",
            SetKeyRotation {
                enabled: Some(false),
                ..
            } => "kms:DisableKeyRotation",
            SetKeyRotation { .. } => "kms:EnableKeyRotation",
            ImportKeyMaterial { .. } => "kms:ImportKeyMaterial",
            SetDefaultKey { .. } | ListKeyRules | SetKeyRule { .. } | DeleteKeyRule { .. } => {
                "kms:SetKeyRules"
            }
            PutKeyRules { .. } => "kms:SetKeyRules",
            SetMinDecryptionVersion { .. } | TrimKeyVersions { .. } => "kms:RetireKeyVersions",
            GetKeyPolicy { .. } | SimulatePolicy { .. } => "kms:GetKeyPolicy",
            PutKeyPolicy { .. } => "kms:PutKeyPolicy",
            CreateGrant { .. } => "kms:CreateGrant",
            ListGrants { .. } => "kms:ListGrants",
            RetireGrant { .. } => "kms:RetireGrant",
            RevokeGrant { .. } => "kms:RevokeGrant",
            VerifyAuditLog => "kms:ReadAuditLog",
            Rewrap { .. } => "kms:ReEncryptFrom",
            GetAlertSettings | GetAuditSettings => "kms:DescribeVolume",
            PutAuditSettings { .. } => "kms:PutAuditSettings",
            PutAlertSettings { .. } => "kms:PutAlertSettings",
        }
    }

    /// The key (id or alias) whose policy decides; `None` for volume-wide operations, which
    /// the default key's policy decides.
    pub fn key_ref(&self) -> Option<&str> {
        use Request::*;
        match self {
            DescribeKey { key }
            | UpdateKeyDescription { key, .. }
            | TagResource { key, .. }
            | UntagResource { key, .. }
            | CreateAlias { key, .. }
            | UpdateAlias { key, .. }
            | EnableKey { key }
            | DisableKey { key }
            | ScheduleKeyDeletion { key, .. }
            | CancelKeyDeletion { key }
            | RotateKeyOnDemand { key }
            | GetKeyRotationStatus { key }
            | SetKeyRotation { key, .. }
            | ImportKeyMaterial { key, .. }
            | SetMinDecryptionVersion { key, .. }
            | TrimKeyVersions { key, .. }
            | GetKeyPolicy { key }
            | PutKeyPolicy { key, .. }
            | SimulatePolicy { key, .. }
            | CreateGrant { key, .. } => Some(key),
            ListGrants { key } | Rewrap { key, .. } => key.as_deref(),
            DeleteAlias { alias } => Some(alias),
            _ => None,
        }
    }

    /// What the audit record says about the request: its arguments without secrets or documents.
    pub fn summary(&self) -> String {
        match self {
            Request::ImportKeyMaterial { key, .. } => format!("key {key} (material not logged)"),
            Request::PutKeyPolicy {
                key,
                policy,
                bypass_lockout_check,
            } => format!(
                "key {key}, {} byte policy, bypass lockout check: {bypass_lockout_check}",
                policy.len()
            ),
            other => {
                let v = serde_json::to_value(other).unwrap_or_default();
                let mut parts = Vec::new();
                if let Some(m) = v.as_object() {
                    for (k, val) in m.iter().filter(|(k, _)| *k != "op") {
                        parts.push(format!("{k}={val}"));
                    }
                }
                parts.join(" ")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r: Request =
            serde_json::from_str(r#"{"op":"ScheduleKeyDeletion","key":"alias/x"}"#).unwrap();
        assert_eq!(
            r,
            Request::ScheduleKeyDeletion {
                key: "alias/x".into(),
                days: 30
            }
        );
        let back: Request = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let unit: Request = serde_json::from_str(r#"{"op":"ListKeys"}"#).unwrap();
        assert_eq!(unit.name(), "ListKeys");
    }

    #[test]
    fn unknown_ops_and_fields_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"Nope"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"EnableKey","key":"k","extra":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"EnableKey"}"#).is_err());
    }

    #[test]
    fn material_never_shows_in_debug_or_summary() {
        let r = Request::ImportKeyMaterial {
            key: "k".into(),
            material: MaterialHex(zeroize::Zeroizing::new("ab".repeat(32))),
        };
        assert!(!format!("{r:?}").contains("abab"));
        assert!(!r.summary().contains("abab"));
    }

    #[test]
    fn rotation_action_follows_the_change() {
        let off = Request::SetKeyRotation {
            key: "k".into(),
            enabled: Some(false),
            period_days: None,
        };
        assert_eq!(off.action(), "kms:DisableKeyRotation");
        let on = Request::SetKeyRotation {
            key: "k".into(),
            enabled: Some(true),
            period_days: Some(90),
        };
        assert_eq!(on.action(), "kms:EnableKeyRotation");
    }
}

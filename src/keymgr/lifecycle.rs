//! Key-manager operations on the key store, in the vocabulary of AWS KMS: create, describe, list,
//! aliases, tags, enable/disable, scheduled deletion (7–30 days) and its cancellation, rotation
//! (on demand and automatic), import of external material, minimum decryption version, trim, and
//! key rules. Pure: every function takes the current time and changes only the store it is given;
//! [`super::KeyManager`] persists (and rolls back on failure).

use std::collections::BTreeMap;

use serde::Serialize;

use super::store::{
    KeyRule, KeyState, KeyStore, KeyVersion, KmsKey, RotationSettings, VersionOrigin,
};
use crate::crypto::Key256;
use crate::format::KeyId;

pub const DAY: u64 = 86_400;
/// AWS KMS: a deletion waiting period of 7 to 30 days, 30 by default.
pub const DELETION_DAYS_MIN: u32 = 7;
pub const DELETION_DAYS_MAX: u32 = 30;
pub const DELETION_DAYS_DEFAULT: u32 = 30;
/// AWS KMS: automatic rotation every 90 to 2560 days, 365 by default.
pub const ROTATION_DAYS_MIN: u32 = 90;
pub const ROTATION_DAYS_MAX: u32 = 2560;
pub const ALIAS_PREFIX: &str = "alias/";
pub const MAX_TAGS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no key {0:?} in this volume (give a key id or alias/NAME)")]
    NotFound(String),
    #[error("no key rule for {0:?} (kmsfs rules VOLUME list shows them)")]
    NoRule(String),
    #[error("no grant {0:?} (kmsfs grant list shows them)")]
    NoGrant(String),
    /// The change was valid but could not be written (disk full, I/O error): nothing changed.
    #[error("could not save the key store: {0}")]
    Persist(String),
    #[error("alias {0:?} already exists")]
    AliasExists(String),
    #[error("invalid alias {0:?}: must be alias/ followed by 1-250 of A-Z a-z 0-9 / _ -")]
    InvalidAlias(String),
    #[error("invalid alias {0:?}: the prefixes alias/aws/ and alias/kmsfs/ are reserved")]
    ReservedAlias(String),
    #[error("key {key} is {state:?}; {op} needs it {need}")]
    InvalidState {
        key: KeyId,
        state: KeyState,
        op: &'static str,
        need: &'static str,
    },
    #[error("deletion waiting period {0} days is outside {DELETION_DAYS_MIN}-{DELETION_DAYS_MAX}")]
    DeletionWindow(u32),
    #[error("rotation period {0} days is outside {ROTATION_DAYS_MIN}-{ROTATION_DAYS_MAX}")]
    RotationPeriod(u32),
    #[error("key material must be exactly 32 bytes (256 bits), got {0}")]
    BadMaterial(usize),
    #[error("key {key} has no version {version}")]
    NoSuchVersion { key: KeyId, version: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "version {version} of key {key} still wraps {files} file(s); rewrap them first or force"
    )]
    VersionInUse {
        key: KeyId,
        version: u32,
        files: u64,
    },
    #[error("the volume's default key cannot be {0}")]
    DefaultKey(&'static str),
}

type R<T> = Result<T, AdminError>;

/// What `describe` shows (never key material).
#[derive(Debug, Clone, Serialize)]
pub struct KeyMetadata {
    pub key_id: KeyId,
    pub aliases: Vec<String>,
    pub description: String,
    pub creation_date: u64,
    pub state: KeyState,
    pub deletion_date: Option<u64>,
    pub is_default: bool,
    pub current_version: u32,
    pub min_decryption_version: u32,
    pub rotation: RotationInfo,
    pub versions: Vec<VersionInfo>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationInfo {
    pub enabled: bool,
    pub period_days: u32,
    pub last_rotation: u64,
    pub next_rotation: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: u32,
    pub created: u64,
    pub origin: VersionOrigin,
    pub available: bool,
    pub destroyed: Option<u64>,
}

/// Finds a key by id (UUID) or alias (`alias/NAME`).
pub fn resolve(st: &KeyStore, r: &str) -> R<KeyId> {
    if r.starts_with(ALIAS_PREFIX) {
        return st
            .aliases
            .get(r)
            .copied()
            .ok_or_else(|| AdminError::NotFound(r.into()));
    }
    let id: KeyId = r.parse().map_err(|_| AdminError::NotFound(r.into()))?;
    st.key(&id)
        .map(|k| k.id)
        .ok_or_else(|| AdminError::NotFound(r.into()))
}

fn key_mut<'a>(st: &'a mut KeyStore, id: &KeyId) -> R<&'a mut KmsKey> {
    st.key_mut(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))
}

pub fn describe(st: &KeyStore, id: &KeyId) -> R<KeyMetadata> {
    let k = st
        .key(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    Ok(KeyMetadata {
        key_id: k.id,
        aliases: st.aliases_of(id),
        description: k.description.clone(),
        creation_date: k.created,
        state: k.state,
        deletion_date: k.deletion_date,
        is_default: st.default_key == k.id,
        current_version: k.newest().map_or(0, |v| v.version),
        min_decryption_version: k.min_decryption_version,
        rotation: RotationInfo {
            enabled: k.rotation.enabled,
            period_days: k.rotation.period_days,
            last_rotation: k.last_rotation,
            next_rotation: (k.rotation.enabled && !k.has_imported_material())
                .then(|| k.next_automatic_rotation()),
        },
        versions: k
            .versions
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                created: v.created,
                origin: v.origin,
                available: v.material.is_some() && v.version >= k.min_decryption_version,
                destroyed: v.destroyed,
            })
            .collect(),
        tags: k.tags.clone(),
    })
}

pub fn list(st: &KeyStore) -> Vec<KeyMetadata> {
    st.keys
        .iter()
        .filter_map(|k| describe(st, &k.id).ok())
        .collect()
}

fn validate_tags(tags: &BTreeMap<String, String>) -> R<()> {
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(AdminError::Invalid(format!(
                "tag {k:?}: key must be 1-128 bytes and value at most 256"
            )));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(AdminError::Invalid(format!(
            "at most {MAX_TAGS} tags per key"
        )));
    }
    Ok(())
}

pub fn create(
    st: &mut KeyStore,
    description: &str,
    tags: BTreeMap<String, String>,
    now: u64,
) -> R<KeyId> {
    if description.len() > 8192 {
        return Err(AdminError::Invalid(
            "description longer than 8192 bytes".into(),
        ));
    }
    validate_tags(&tags)?;
    let mut k = KmsKey::new(description, now);
    k.tags = tags;
    let id = k.id;
    st.keys.push(k);
    Ok(id)
}

pub fn update_description(st: &mut KeyStore, id: &KeyId, description: &str) -> R<()> {
    if description.len() > 8192 {
        return Err(AdminError::Invalid(
            "description longer than 8192 bytes".into(),
        ));
    }
    key_mut(st, id)?.description = description.into();
    Ok(())
}

pub fn tag(st: &mut KeyStore, id: &KeyId, tags: BTreeMap<String, String>) -> R<()> {
    let k = key_mut(st, id)?;
    let mut merged = k.tags.clone();
    merged.extend(tags);
    validate_tags(&merged)?;
    k.tags = merged;
    Ok(())
}

pub fn untag(st: &mut KeyStore, id: &KeyId, keys: &[String]) -> R<()> {
    let k = key_mut(st, id)?;
    for t in keys {
        k.tags.remove(t);
    }
    Ok(())
}

fn check_alias(name: &str) -> R<()> {
    let rest = name
        .strip_prefix(ALIAS_PREFIX)
        .ok_or_else(|| AdminError::InvalidAlias(name.into()))?;
    let ok = !rest.is_empty()
        && rest.len() <= 250
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b));
    if !ok {
        Err(AdminError::InvalidAlias(name.into()))
    } else if rest.starts_with("aws/") || rest.starts_with("kmsfs/") {
        Err(AdminError::ReservedAlias(name.into()))
    } else {
        Ok(())
    }
}

pub fn create_alias(st: &mut KeyStore, name: &str, id: &KeyId) -> R<()> {
    check_alias(name)?;
    if st.aliases.contains_key(name) {
        return Err(AdminError::AliasExists(name.into()));
    }
    let k = st
        .key(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    if k.state == KeyState::Destroyed {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "create-alias",
            need: "not destroyed",
        });
    }
    st.aliases.insert(name.into(), *id);
    Ok(())
}

/// Points an existing alias at another key.
pub fn update_alias(st: &mut KeyStore, name: &str, id: &KeyId) -> R<()> {
    if !st.aliases.contains_key(name) {
        return Err(AdminError::NotFound(name.into()));
    }
    let k = st
        .key(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    // As create-alias: a destroyed key can do nothing, so no name should lead to it.
    if k.state == KeyState::Destroyed {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "update-alias",
            need: "not destroyed",
        });
    }
    st.aliases.insert(name.into(), *id);
    Ok(())
}

pub fn delete_alias(st: &mut KeyStore, name: &str) -> R<()> {
    st.aliases
        .remove(name)
        .map(|_| ())
        .ok_or_else(|| AdminError::NotFound(name.into()))
}

pub fn enable(st: &mut KeyStore, id: &KeyId) -> R<()> {
    let k = key_mut(st, id)?;
    match k.state {
        KeyState::Enabled | KeyState::Disabled => {
            k.state = KeyState::Enabled;
            Ok(())
        }
        s => Err(AdminError::InvalidState {
            key: *id,
            state: s,
            op: "enable",
            need: "Enabled or Disabled (cancel a pending deletion first)",
        }),
    }
}

pub fn disable(st: &mut KeyStore, id: &KeyId) -> R<()> {
    let k = key_mut(st, id)?;
    match k.state {
        KeyState::Enabled | KeyState::Disabled => {
            k.state = KeyState::Disabled;
            Ok(())
        }
        s => Err(AdminError::InvalidState {
            key: *id,
            state: s,
            op: "disable",
            need: "Enabled or Disabled",
        }),
    }
}

/// Schedules destruction of the key's material after `days` (7–30). Returns the deletion date.
pub fn schedule_deletion(st: &mut KeyStore, id: &KeyId, days: u32, now: u64) -> R<u64> {
    if !(DELETION_DAYS_MIN..=DELETION_DAYS_MAX).contains(&days) {
        return Err(AdminError::DeletionWindow(days));
    }
    if st.default_key == *id {
        return Err(AdminError::DefaultKey(
            "scheduled for deletion; make another key the default first",
        ));
    }
    let k = key_mut(st, id)?;
    match k.state {
        KeyState::Enabled | KeyState::Disabled => {
            let when = now + u64::from(days) * DAY;
            k.state = KeyState::PendingDeletion;
            k.deletion_date = Some(when);
            Ok(when)
        }
        s => Err(AdminError::InvalidState {
            key: *id,
            state: s,
            op: "schedule-deletion",
            need: "Enabled or Disabled",
        }),
    }
}

/// Cancels a scheduled deletion; the key becomes Disabled (as in AWS KMS). Refused once the
/// deletion date has passed (`now`): the key is then due for destruction, which runs at the next
/// mount or maintenance tick, and in AWS KMS it is gone (a volume left unmounted over the date
/// must not let a scheduled destruction be undone).
pub fn cancel_deletion(st: &mut KeyStore, id: &KeyId, now: u64) -> R<()> {
    let k = key_mut(st, id)?;
    if k.state != KeyState::PendingDeletion {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "cancel-deletion",
            need: "PendingDeletion",
        });
    }
    if let Some(d) = k.deletion_date.filter(|d| *d <= now) {
        return Err(AdminError::Invalid(format!(
            "the deletion waiting period of key {id} ended on {}: it can no longer be cancelled, \
             and the key will be destroyed at the next mount or maintenance",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(d)
            )
        )));
    }
    k.state = KeyState::Disabled;
    k.deletion_date = None;
    Ok(())
}

/// Destroys the material of every key whose deletion date has passed (crypto-shredding). The
/// key stays as a tombstone. Returns the destroyed keys.
pub fn execute_due_deletions(st: &mut KeyStore, now: u64) -> Vec<KeyId> {
    execute_due_deletions_among(st, now, |_| true)
}

/// [`execute_due_deletions`] for the keys `pick` chooses only.
pub fn execute_due_deletions_among(
    st: &mut KeyStore,
    now: u64,
    pick: impl Fn(&KeyId) -> bool,
) -> Vec<KeyId> {
    let mut done = Vec::new();
    for k in &mut st.keys {
        if pick(&k.id)
            && k.state == KeyState::PendingDeletion
            && k.deletion_date.is_some_and(|d| d <= now)
        {
            for v in &mut k.versions {
                v.material = None;
                v.destroyed = Some(now);
            }
            k.state = KeyState::Destroyed;
            done.push(k.id);
        }
    }
    st.aliases.retain(|_, id| !done.contains(id));
    // Rules stay: new files under a destroyed key's rule are refused (as while it was pending
    // deletion) instead of going to the default key, whose policy may be another (they did
    // until 2026-12-07; found by a review). `rules remove` lets files be made there again.
    st.grants.retain(|g| !done.contains(&g.key));
    done
}

fn add_version(k: &mut KmsKey, material: Key256, origin: VersionOrigin, now: u64) -> u32 {
    let v = k.newest().map_or(0, |v| v.version) + 1;
    k.versions.push(KeyVersion {
        version: v,
        created: now,
        material: Some(material),
        origin,
        destroyed: None,
    });
    k.last_rotation = now;
    // Only an automatic rotation moves the automatic schedule (see `KmsKey::rotation_due`).
    if origin == VersionOrigin::AutomaticRotation {
        k.last_automatic_rotation = Some(now);
    }
    v
}

/// Refuses `op` on a key whose current material was imported (see
/// `KmsKey::has_imported_material`).
fn refuse_imported(k: &KmsKey, op: &str) -> R<()> {
    if k.has_imported_material() {
        return Err(AdminError::Invalid(format!(
            "key {} uses imported key material (BYOK), which kmsfs does not rotate: {op} is \
             refused; import new material to change it",
            k.id
        )));
    }
    Ok(())
}

/// Adds a new version; new files use it, old versions stay for decrypt. Returns the new version.
pub fn rotate(st: &mut KeyStore, id: &KeyId, now: u64) -> R<u32> {
    let k = key_mut(st, id)?;
    if k.state != KeyState::Enabled {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "rotate",
            need: "Enabled",
        });
    }
    refuse_imported(k, "on-demand rotation")?;
    Ok(add_version(
        k,
        Key256::generate(),
        VersionOrigin::OnDemandRotation,
        now,
    ))
}

pub fn set_rotation(
    st: &mut KeyStore,
    id: &KeyId,
    enabled: bool,
    period_days: Option<u32>,
) -> R<()> {
    let k = key_mut(st, id)?;
    if k.state == KeyState::Destroyed {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "set rotation",
            need: "not destroyed",
        });
    }
    // As AWS (DisabledException, KMSInvalidStateException): rotation is turned on only for a
    // key in use; turning it off is allowed in any state but destroyed.
    if enabled && k.state != KeyState::Enabled {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "enabling automatic rotation",
            need: "Enabled",
        });
    }
    let period = period_days.unwrap_or(k.rotation.period_days);
    if !(ROTATION_DAYS_MIN..=ROTATION_DAYS_MAX).contains(&period) {
        return Err(AdminError::RotationPeriod(period));
    }
    if enabled {
        refuse_imported(k, "automatic rotation")?;
    }
    k.rotation = RotationSettings {
        enabled,
        period_days: period,
    };
    Ok(())
}

/// Rotates every enabled key whose automatic period has elapsed. Keys pending deletion, disabled
/// or destroyed do not rotate. Returns (key, new version) pairs.
pub fn rotate_due(st: &mut KeyStore, now: u64) -> Vec<(KeyId, u32)> {
    rotate_due_among(st, now, |_| true)
}

/// [`rotate_due`] for the keys `pick` chooses only.
pub fn rotate_due_among(
    st: &mut KeyStore,
    now: u64,
    pick: impl Fn(&KeyId) -> bool,
) -> Vec<(KeyId, u32)> {
    let mut out = Vec::new();
    for k in &mut st.keys {
        if pick(&k.id) && k.rotation_due(now) {
            let v = add_version(k, Key256::generate(), VersionOrigin::AutomaticRotation, now);
            out.push((k.id, v));
        }
    }
    out
}

/// Imports external 256-bit material as the key's new version (BYOK).
pub fn import(st: &mut KeyStore, id: &KeyId, material: &[u8], now: u64) -> R<u32> {
    let m = Key256::from_slice(material).ok_or(AdminError::BadMaterial(material.len()))?;
    if m.expose().iter().all(|b| *b == 0) {
        return Err(AdminError::Invalid(
            "imported key material is all zeros".into(),
        ));
    }
    let k = key_mut(st, id)?;
    if k.state != KeyState::Enabled {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "import",
            need: "Enabled",
        });
    }
    if k.rotation.enabled {
        return Err(AdminError::Invalid(format!(
            "key {id} has automatic rotation enabled, which kmsfs does not do for imported key \
             material: turn it off first (kmsfs key VOL rotation KEY --disable)"
        )));
    }
    Ok(add_version(k, m, VersionOrigin::Imported, now))
}

/// Files wrapped under versions below `min` fail to open until it is lowered again.
pub fn set_min_decryption_version(st: &mut KeyStore, id: &KeyId, min: u32) -> R<()> {
    let k = key_mut(st, id)?;
    let newest = k.newest().map_or(0, |v| v.version);
    if min > newest {
        return Err(AdminError::NoSuchVersion {
            key: *id,
            version: min,
        });
    }
    k.min_decryption_version = min;
    Ok(())
}

/// Destroys the material of versions below `below`. `still_wrapped(version)` says how many files
/// still use a version; unless `force`, trimming a version in use is refused. Returns the
/// destroyed versions.
pub fn trim(
    st: &mut KeyStore,
    id: &KeyId,
    below: u32,
    force: bool,
    still_wrapped: impl Fn(u32) -> u64,
    now: u64,
) -> R<Vec<u32>> {
    let k = key_mut(st, id)?;
    let newest = k.newest().map_or(0, |v| v.version);
    if below > newest {
        return Err(AdminError::NoSuchVersion {
            key: *id,
            version: below,
        });
    }
    if below > k.min_decryption_version.max(1) {
        return Err(AdminError::Invalid(format!(
            "raise the minimum decryption version to {below} first (trim only destroys versions that are already retired)"
        )));
    }
    let victims: Vec<u32> = k
        .versions
        .iter()
        .filter(|v| v.version < below && v.material.is_some())
        .map(|v| v.version)
        .collect();
    if !force {
        for v in &victims {
            let n = still_wrapped(*v);
            if n > 0 {
                return Err(AdminError::VersionInUse {
                    key: *id,
                    version: *v,
                    files: n,
                });
            }
        }
    }
    for v in &mut k.versions {
        if victims.contains(&v.version) {
            v.material = None;
            v.destroyed = Some(now);
        }
    }
    Ok(victims)
}

pub fn normalize_prefix(p: &str) -> R<String> {
    if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "." || c == "..") {
        return Err(AdminError::Invalid(format!(
            "rule prefix {p:?} must be an absolute path without . or .."
        )));
    }
    // Paths are matched as the mount names them, with single slashes: `//fin/` is `/fin` (kept
    // as given, it was accepted and never matched a file).
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    Ok(format!("/{}", parts.join("/")))
}

/// Sets (or replaces) the rule for `prefix`.
pub fn set_rule(st: &mut KeyStore, prefix: &str, id: &KeyId) -> R<()> {
    let prefix = normalize_prefix(prefix)?;
    let k = st
        .key(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    if matches!(k.state, KeyState::PendingDeletion | KeyState::Destroyed) {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "a key rule",
            need: "Enabled or Disabled",
        });
    }
    st.rules.retain(|r| r.prefix != prefix);
    st.rules.push(KeyRule { prefix, key: *id });
    st.rules.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    Ok(())
}

pub fn remove_rule(st: &mut KeyStore, prefix: &str) -> R<()> {
    let prefix = normalize_prefix(prefix)?;
    let before = st.rules.len();
    // Also a rule stored before prefixes were normalized (`//fin`, which never matched).
    st.rules
        .retain(|r| r.prefix != prefix && normalize_prefix(&r.prefix).ok() != Some(prefix.clone()));
    if st.rules.len() == before {
        return Err(AdminError::NoRule(prefix));
    }
    Ok(())
}

/// The key for a new file at `path` (absolute, inside the mount): the longest matching rule
/// prefix at a component boundary, else the default key.
pub fn key_for_path(st: &KeyStore, path: &str) -> KeyId {
    governing_key(
        st.rules.iter().map(|r| (r.prefix.as_str(), r.key)),
        st.default_key,
        path,
    )
}

/// [`key_for_path`] under the rules `rules` (prefix, key) and default key `default`.
pub fn governing_key<'a>(
    rules: impl Iterator<Item = (&'a str, KeyId)>,
    default: KeyId,
    path: &str,
) -> KeyId {
    rules
        .filter(|(prefix, _)| {
            *prefix == "/"
                || path == *prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(default, |(_, k)| k)
}

pub fn set_default(st: &mut KeyStore, id: &KeyId) -> R<()> {
    let k = st
        .key(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    if k.state != KeyState::Enabled {
        return Err(AdminError::InvalidState {
            key: *id,
            state: k.state,
            op: "default key",
            need: "Enabled",
        });
    }
    st.default_key = *id;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::VolumeId;

    fn store() -> KeyStore {
        let k = KmsKey::new("default", 1000);
        KeyStore {
            format: 1,
            volume_id: VolumeId([1; 16]),
            config_digest: String::new(),
            volume_secret: Key256::generate(),
            default_key: k.id,
            keys: vec![k],
            aliases: BTreeMap::new(),
            rules: Vec::new(),
            owner_uid: 1000,
            grants: Vec::new(),
            alerts: Default::default(),
            audit_retention_days: None,
            audit_max_bytes: None,
            audit_anchor: None,
        }
    }

    fn snapshot(s: &KeyStore) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn create_alias_resolve_describe() {
        let mut s = store();
        let id = create(
            &mut s,
            "finance",
            BTreeMap::from([("dept".into(), "fin".into())]),
            5,
        )
        .unwrap();
        create_alias(&mut s, "alias/finance", &id).unwrap();
        create_alias(&mut s, "alias/fin2", &id).unwrap();
        assert_eq!(resolve(&s, "alias/finance").unwrap(), id);
        assert_eq!(resolve(&s, &id.to_string()).unwrap(), id);
        let d = describe(&s, &id).unwrap();
        assert_eq!(d.aliases, vec!["alias/fin2", "alias/finance"]);
        assert_eq!(d.current_version, 1);
        assert_eq!(d.tags["dept"], "fin");
        assert!(!d.is_default);
        assert_eq!(list(&s).len(), 2);
        // Key material never appears in what describe shows.
        let json = serde_json::to_string(&d).unwrap();
        let mat = crate::crypto::hex::encode(
            s.key(&id).unwrap().versions[0]
                .material
                .as_ref()
                .unwrap()
                .expose(),
        );
        assert!(!json.contains(&mat));
    }

    #[test]
    fn bad_input_changes_nothing() {
        let mut s = store();
        let id = create(&mut s, "k", BTreeMap::new(), 5).unwrap();
        create_alias(&mut s, "alias/a", &id).unwrap();
        let before = snapshot(&s);
        let unknown = KeyId([9; 16]);
        let default = s.default_key;
        let cases: Vec<(&str, R<()>)> = vec![
            ("unknown key", enable(&mut s, &unknown)),
            ("unknown ref", resolve(&s, "alias/nope").map(|_| ())),
            ("garbage ref", resolve(&s, "not-a-key").map(|_| ())),
            ("duplicate alias", create_alias(&mut s, "alias/a", &id)),
            ("alias without prefix", create_alias(&mut s, "finance", &id)),
            ("reserved alias", create_alias(&mut s, "alias/aws/x", &id)),
            ("bad alias chars", create_alias(&mut s, "alias/a b", &id)),
            ("window 6", schedule_deletion(&mut s, &id, 6, 0).map(|_| ())),
            (
                "window 31",
                schedule_deletion(&mut s, &id, 31, 0).map(|_| ()),
            ),
            (
                "delete default",
                schedule_deletion(&mut s, &default, 30, 0).map(|_| ()),
            ),
            ("cancel not pending", cancel_deletion(&mut s, &id, 0)),
            (
                "short material",
                import(&mut s, &id, &[1; 16], 0).map(|_| ()),
            ),
            (
                "long material",
                import(&mut s, &id, &[1; 33], 0).map(|_| ()),
            ),
            (
                "zero material",
                import(&mut s, &id, &[0; 32], 0).map(|_| ()),
            ),
            ("rotation period", set_rotation(&mut s, &id, true, Some(30))),
            (
                "min version too high",
                set_min_decryption_version(&mut s, &id, 5),
            ),
            ("relative rule", set_rule(&mut s, "finance", &id)),
            ("dotdot rule", set_rule(&mut s, "/a/../b", &id)),
            ("remove missing rule", remove_rule(&mut s, "/nothing")),
        ];
        for (what, r) in cases {
            assert!(r.is_err(), "{what} was accepted");
        }
        assert_eq!(snapshot(&s), before);
        // Rotating a disabled key is refused.
        disable(&mut s, &id).unwrap();
        let before = snapshot(&s);
        assert!(matches!(
            rotate(&mut s, &id, 0),
            Err(AdminError::InvalidState { .. })
        ));
        assert_eq!(snapshot(&s), before);
    }

    #[test]
    fn state_machine() {
        let mut s = store();
        let id = create(&mut s, "k", BTreeMap::new(), 5).unwrap();
        disable(&mut s, &id).unwrap();
        enable(&mut s, &id).unwrap();
        let when = schedule_deletion(&mut s, &id, 7, 100).unwrap();
        assert_eq!(when, 100 + 7 * DAY);
        assert!(enable(&mut s, &id).is_err());
        assert!(rotate(&mut s, &id, 200).is_err());
        // Once the waiting period has ended the key is due for destruction: too late.
        let late = cancel_deletion(&mut s, &id, when);
        assert!(
            matches!(&late, Err(AdminError::Invalid(m)) if m.contains("ended on")),
            "{late:?}"
        );
        assert_eq!(s.key(&id).unwrap().state, KeyState::PendingDeletion);
        cancel_deletion(&mut s, &id, when - 1).unwrap();
        assert_eq!(s.key(&id).unwrap().state, KeyState::Disabled);
        enable(&mut s, &id).unwrap();
    }

    #[test]
    fn deletion_window_then_crypto_shredding() {
        let mut s = store();
        let id = create(&mut s, "k", BTreeMap::new(), 5).unwrap();
        create_alias(&mut s, "alias/gone", &id).unwrap();
        set_rule(&mut s, "/gone", &id).unwrap();
        schedule_deletion(&mut s, &id, 30, 0).unwrap();
        assert!(execute_due_deletions(&mut s, 30 * DAY - 1).is_empty());
        assert_eq!(execute_due_deletions(&mut s, 30 * DAY), vec![id]);
        let k = s.key(&id).unwrap();
        assert_eq!(k.state, KeyState::Destroyed);
        assert!(
            k.versions
                .iter()
                .all(|v| v.material.is_none() && v.destroyed.is_some())
        );
        assert!(s.aliases.is_empty());
        // The rule stays: new files there are refused, not sent to the default key.
        assert_eq!(key_for_path(&s, "/gone/f"), id);
        assert!(cancel_deletion(&mut s, &id, 0).is_err());
        assert!(enable(&mut s, &id).is_err());
    }

    #[test]
    fn rotation_on_demand_and_automatic() {
        let mut s = store();
        let id = s.default_key;
        assert_eq!(rotate(&mut s, &id, 2000).unwrap(), 2);
        assert!(
            rotate_due(&mut s, 2000 + 400 * DAY).is_empty(),
            "off unless enabled"
        );
        set_rotation(&mut s, &id, true, Some(90)).unwrap();
        assert!(rotate_due(&mut s, 2000 + 89 * DAY).is_empty());
        assert_eq!(rotate_due(&mut s, 2000 + 90 * DAY), vec![(id, 3)]);
        let d = describe(&s, &id).unwrap();
        assert_eq!(d.current_version, 3);
        assert_eq!(d.versions[2].origin, VersionOrigin::AutomaticRotation);
        assert_eq!(d.rotation.next_rotation, Some(2000 + 180 * DAY));
        // Pending deletion keys do not rotate.
        let k2 = create(&mut s, "k2", BTreeMap::new(), 0).unwrap();
        set_rotation(&mut s, &k2, true, Some(90)).unwrap();
        schedule_deletion(&mut s, &k2, 30, 0).unwrap();
        assert!(rotate_due(&mut s, 1000 * DAY).iter().all(|(k, _)| *k != k2));
        // Import adds a version with the given material (not while automatic rotation would
        // replace it).
        assert!(import(&mut s, &id, &[7; 32], 5).is_err());
        set_rotation(&mut s, &id, false, None).unwrap();
        assert_eq!(import(&mut s, &id, &[7; 32], 5).unwrap(), 5);
        assert_eq!(
            s.key(&id)
                .unwrap()
                .newest()
                .unwrap()
                .material
                .as_ref()
                .unwrap()
                .expose(),
            &[7; 32]
        );
    }

    /// An on-demand rotation (or an import) does not move the automatic schedule (AWS KMS:
    /// "On-demand rotation doesn't change existing automatic rotation schedules").
    #[test]
    fn on_demand_rotation_keeps_the_automatic_schedule() {
        let mut s = store();
        let id = create(&mut s, "k", BTreeMap::new(), 0).unwrap();
        set_rotation(&mut s, &id, true, Some(90)).unwrap();
        assert_eq!(rotate(&mut s, &id, 80 * DAY).unwrap(), 2);
        let d = describe(&s, &id).unwrap();
        assert_eq!(d.rotation.last_rotation, 80 * DAY);
        assert_eq!(d.rotation.next_rotation, Some(90 * DAY));
        assert!(rotate_due(&mut s, 90 * DAY - 1).is_empty());
        assert_eq!(rotate_due(&mut s, 90 * DAY), vec![(id, 3)]);
        assert_eq!(
            describe(&s, &id).unwrap().rotation.next_rotation,
            Some(180 * DAY)
        );
    }

    /// A key store from before `last_automatic_rotation` existed counts from `last_rotation`.
    #[test]
    fn old_key_store_counts_from_last_rotation() {
        let mut s = store();
        let id = create(&mut s, "k", BTreeMap::new(), 0).unwrap();
        let mut v = serde_json::to_value(&s).unwrap();
        for k in v["keys"].as_array_mut().unwrap() {
            assert!(
                k.as_object_mut()
                    .unwrap()
                    .remove("last_automatic_rotation")
                    .is_some()
            );
            k["last_rotation"] = serde_json::json!(10 * DAY);
        }
        let mut s: KeyStore = serde_json::from_value(v).unwrap();
        set_rotation(&mut s, &id, true, Some(90)).unwrap();
        assert!(rotate_due(&mut s, 100 * DAY - 1).is_empty());
        assert_eq!(rotate_due(&mut s, 100 * DAY), vec![(id, 2)]);
    }

    /// Imported (BYOK) material is not rotated to material kmsfs generates: on-demand rotation
    /// and turning automatic rotation on are refused, as in AWS KMS.
    #[test]
    fn imported_material_is_not_rotated() {
        let mut s = store();
        let id = create(&mut s, "byok", BTreeMap::new(), 0).unwrap();
        assert_eq!(import(&mut s, &id, &[7; 32], 0).unwrap(), 2);
        let before = snapshot(&s);
        assert!(matches!(
            rotate(&mut s, &id, DAY),
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            set_rotation(&mut s, &id, true, Some(90)),
            Err(AdminError::Invalid(_))
        ));
        assert_eq!(snapshot(&s), before);
        // Turning it off, or changing the period while off, stays possible.
        set_rotation(&mut s, &id, false, Some(180)).unwrap();
        // Rotation enabled in a store from before the check: the maintenance skips the key.
        s.keys
            .iter_mut()
            .filter(|k| k.id == id)
            .for_each(|k| k.rotation.enabled = true);
        assert!(rotate_due(&mut s, 1000 * DAY).is_empty());
        assert_eq!(describe(&s, &id).unwrap().rotation.next_rotation, None);
    }

    #[test]
    fn min_version_and_guarded_trim() {
        let mut s = store();
        let id = s.default_key;
        rotate(&mut s, &id, 1).unwrap();
        rotate(&mut s, &id, 2).unwrap();
        // trim needs the versions retired first
        assert!(trim(&mut s, &id, 3, false, |_| 0, 9).is_err());
        set_min_decryption_version(&mut s, &id, 3).unwrap();
        let in_use = |v: u32| if v == 1 { 4 } else { 0 };
        assert_eq!(
            trim(&mut s, &id, 3, false, in_use, 9),
            Err(AdminError::VersionInUse {
                key: id,
                version: 1,
                files: 4
            })
        );
        assert!(
            s.key(&id)
                .unwrap()
                .versions
                .iter()
                .all(|v| v.material.is_some())
        );
        assert_eq!(trim(&mut s, &id, 3, false, |_| 0, 9).unwrap(), vec![1, 2]);
        assert!(s.key(&id).unwrap().version(3).unwrap().material.is_some());
        // reversible until trimmed: lowering min works, but trimmed versions stay gone
        set_min_decryption_version(&mut s, &id, 1).unwrap();
        assert!(!describe(&s, &id).unwrap().versions[0].available);
    }

    #[test]
    fn rules_longest_prefix_at_component_boundary() {
        let mut s = store();
        let fin = create(&mut s, "fin", BTreeMap::new(), 0).unwrap();
        let pay = create(&mut s, "pay", BTreeMap::new(), 0).unwrap();
        set_rule(&mut s, "/finance/", &fin).unwrap();
        set_rule(&mut s, "/finance/payroll", &pay).unwrap();
        assert_eq!(key_for_path(&s, "/finance/q1.xlsx"), fin);
        assert_eq!(key_for_path(&s, "/finance/payroll/jan"), pay);
        assert_eq!(key_for_path(&s, "/finance/payrollx"), fin);
        assert_eq!(key_for_path(&s, "/financex/a"), s.default_key);
        assert_eq!(key_for_path(&s, "/other"), s.default_key);
        set_rule(&mut s, "/finance", &pay).unwrap();
        assert_eq!(
            s.rules.len(),
            2,
            "a rule for the same prefix replaces the old one"
        );
        remove_rule(&mut s, "/finance").unwrap();
        assert_eq!(key_for_path(&s, "/finance/q1"), s.default_key);
    }
}

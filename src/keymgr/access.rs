//! Key policies and grants on the key store: get/put (validated, lockout-checked), grants
//! (create/list/retire/revoke), and the authorization decision for a request.

use super::lifecycle::AdminError;
use super::policy::{self, Decision, Grant, Identity, Policy, Request};
use super::store::KeyStore;
use crate::format::KeyId;

/// The policy text of a key (its own, or the default).
pub fn get_policy(st: &KeyStore, id: &KeyId) -> Result<String, AdminError> {
    let k = st
        .key(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    Ok(k.policy
        .clone()
        .unwrap_or_else(|| Policy::default_text(st.owner_uid)))
}

/// The parsed policy of a key. A stored policy that no longer parses denies everything (it was
/// validated when stored, so this means damage).
pub fn policy_of(st: &KeyStore, id: &KeyId) -> Policy {
    let text = get_policy(st, id).unwrap_or_default();
    Policy::parse(&text).unwrap_or(Policy {
        statements: Vec::new(),
    })
}

/// Replaces a key's policy after validation and (unless bypassed) the lockout check for `author`.
pub fn put_policy(
    st: &mut KeyStore,
    id: &KeyId,
    text: &str,
    author: &Identity,
    bypass_lockout: bool,
    now: u64,
) -> Result<(), AdminError> {
    let p = Policy::parse(text).map_err(|e| AdminError::Invalid(e.to_string()))?;
    if !bypass_lockout {
        policy::lockout_check(&p, author, *id, now)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
    }
    let k = st
        .key_mut(id)
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    k.policy = Some(text.to_string());
    Ok(())
}

/// The decision for `req` on key `req.key`.
pub fn authorize(st: &KeyStore, req: &Request) -> Decision {
    let Some(id) = req.key else {
        return Decision::ImplicitDeny;
    };
    let grants: Vec<Grant> = st.grants.iter().filter(|g| g.key == id).cloned().collect();
    policy::evaluate(&policy_of(st, &id), &grants, req)
}

pub fn create_grant(st: &mut KeyStore, mut g: Grant, now: u64) -> Result<String, AdminError> {
    st.key(&g.key)
        .ok_or_else(|| AdminError::NotFound(g.key.to_string()))?;
    g.validate()
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    if g.expires.is_some_and(|e| e <= now) {
        return Err(AdminError::Invalid(
            "the grant's expiry is in the past".into(),
        ));
    }
    g.id = crate::crypto::hex::encode(&crate::crypto::random_array::<16>());
    g.created = now;
    let id = g.id.clone();
    st.grants.push(g);
    Ok(id)
}

pub fn list_grants(st: &KeyStore, key: Option<&KeyId>) -> Vec<Grant> {
    st.grants
        .iter()
        .filter(|g| key.is_none_or(|k| &g.key == k))
        .cloned()
        .collect()
}

/// Removes a grant (revoke by an administrator, or retire by its retiring principal).
pub fn remove_grant(st: &mut KeyStore, grant_id: &str) -> Result<Grant, AdminError> {
    let i = st
        .grants
        .iter()
        .position(|g| g.id == grant_id)
        .ok_or_else(|| AdminError::NoGrant(grant_id.into()))?;
    Ok(st.grants.remove(i))
}

//! Who may point key rules at a key, what a key listing shows, and the smaller key-manager
//! rules a review of 2026-12-07 found missing: retiring a grant by kms:RevokeGrant, grantee
//! documents with fields left out, automatic rotation of a key not in use.

use super::tests::{fixture, owner, stranger};
use super::*;
use crate::format::KeyId;

/// The owner keeps `kms:*`; `who` gets `actions` on `key`.
fn allow(c: &ControlDir, key: KeyId, who: &Identity, actions: &[&str]) {
    let text = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"Owner","Effect":"Allow","Principal":{{"Uid":"{}"}},"Action":"kms:*","Resource":"*"}},
            {{"Sid":"Them","Effect":"Allow","Principal":{{"Uid":"{}"}},"Action":{},"Resource":"*"}}]}}"#,
        owner(c).uid,
        who.uid,
        serde_json::to_string(actions).unwrap()
    );
    let o = owner(c);
    c.km.admin(|s, now| crate::keymgr::access::put_policy(s, &key, &text, &o, true, now))
        .unwrap();
}

fn new_key(c: &ControlDir) -> KeyId {
    let r = c
        .execute(
            &owner(c),
            &Request::CreateKey {
                description: "secret project".into(),
                tags: [("class".to_string(), "top".to_string())].into(),
                alias: None,
            },
        )
        .unwrap();
    r["key_id"].as_str().unwrap().parse().unwrap()
}

fn rules(c: &ControlDir) -> Vec<(String, KeyId)> {
    c.km.query(|s| s.rules.iter().map(|r| (r.prefix.clone(), r.key)).collect())
}

/// Someone allowed to edit rules (on the default key) and to make keys could point a rule at a
/// key only they control, so that the owner's next files there are theirs; or remove or
/// replace the rule of a key they do not control, so that those files go to the default key.
/// Each key a rule names, before or after, must allow kms:SetKeyRules.
#[test]
fn a_key_rule_needs_set_key_rules_on_every_key_it_names_or_unnames() {
    let f = fixture();
    let c = &f.ctl;
    let (o, them) = (owner(c), stranger());
    let default = c.km.query(|s| s.default_key);
    allow(c, default, &them, &["kms:SetKeyRules", "kms:CreateKey"]);
    let theirs = new_key(c);
    allow(c, theirs, &them, &["kms:*"]);
    let owners = new_key(c);

    // A rule to a key of theirs: their key allows it, and so may the default key.
    c.execute(
        &them,
        &Request::SetKeyRule {
            prefix: "/mine".into(),
            key: theirs.to_string(),
        },
    )
    .unwrap();
    // The owner's key does not: no rule to it, nor to theirs over the owner's rule, nor its
    // removal, nor a replacement of every rule that drops it.
    c.execute(
        &o,
        &Request::SetKeyRule {
            prefix: "/fin".into(),
            key: owners.to_string(),
        },
    )
    .unwrap();
    let before = rules(c);
    let refused = [
        Request::SetKeyRule {
            prefix: "/other".into(),
            key: owners.to_string(),
        },
        Request::SetKeyRule {
            prefix: "/fin".into(),
            key: theirs.to_string(),
        },
        Request::SetKeyRule {
            prefix: "//fin/".into(),
            key: theirs.to_string(),
        },
        Request::DeleteKeyRule {
            prefix: "/fin".into(),
        },
        Request::PutKeyRules {
            rules: vec![super::request::RuleDoc {
                prefix: "/fin".into(),
                key: theirs.to_string(),
            }],
        },
        Request::PutKeyRules { rules: vec![] },
    ];
    for r in &refused {
        let e = c.execute(&them, r).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Denied, "{r:?}: {e}");
        assert!(e.message.contains(&owners.to_string()), "{r:?}: {e}");
        assert_eq!(rules(c), before, "{r:?}");
    }
    // What does not touch the owner's key still works.
    c.execute(
        &them,
        &Request::PutKeyRules {
            rules: vec![
                super::request::RuleDoc {
                    prefix: "/fin".into(),
                    key: owners.to_string(),
                },
                super::request::RuleDoc {
                    prefix: "/mine/sub".into(),
                    key: theirs.to_string(),
                },
            ],
        },
    )
    .unwrap();
    c.execute(
        &them,
        &Request::DeleteKeyRule {
            prefix: "/mine/sub".into(),
        },
    )
    .unwrap();
    assert_eq!(rules(c), vec![("/fin".to_string(), owners)]);
    // A rule nested under the owner's takes paths from the owner's key: refused too, also one
    // naming a single file; nested under their own key's rule, or where the default key
    // governs, it is theirs to make.
    for prefix in ["/fin/q3", "/fin/report.xlsx"] {
        let r = Request::SetKeyRule {
            prefix: prefix.into(),
            key: theirs.to_string(),
        };
        let e = c.execute(&them, &r).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Denied, "{prefix}: {e}");
        assert!(e.message.contains(&owners.to_string()), "{prefix}: {e}");
    }
    assert_eq!(rules(c), vec![("/fin".to_string(), owners)]);
    for prefix in ["/mine", "/mine/deeper", "/elsewhere"] {
        c.execute(
            &them,
            &Request::SetKeyRule {
                prefix: prefix.into(),
                key: theirs.to_string(),
            },
        )
        .unwrap();
    }
    // The owner may do all of it.
    for r in &refused[..4] {
        c.execute(&o, r).unwrap();
    }
}

/// A rule's prefix is kept as the mount names paths: `//x//y/` is `/x/y` (it was stored as
/// given and never matched a file), and removing a rule that is not there names the rule.
#[test]
fn rule_prefixes_are_normalized_and_a_missing_rule_is_named() {
    let f = fixture();
    let c = &f.ctl;
    let o = owner(c);
    let k = new_key(c);
    c.execute(
        &o,
        &Request::SetKeyRule {
            prefix: "//dbl//in/".into(),
            key: k.to_string(),
        },
    )
    .unwrap();
    assert_eq!(rules(c), vec![("/dbl/in".to_string(), k)]);
    assert_eq!(
        c.km.query(|s| crate::keymgr::lifecycle::key_for_path(s, "/dbl/in/f")),
        k
    );
    let e = c
        .execute(
            &o,
            &Request::DeleteKeyRule {
                prefix: "/nope".into(),
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(
        e.message,
        "no key rule for \"/nope\" (kmsfs rules VOLUME list shows them)"
    );
}

/// ListKeys shows every key's id, and the rest of its metadata (description, tags, aliases)
/// only where DescribeKey allows it; GetKeyUsage counts only those keys.
#[test]
fn a_key_listing_shows_only_the_ids_of_keys_the_caller_may_not_describe() {
    let f = fixture();
    let c = &f.ctl;
    let them = stranger();
    let default = c.km.query(|s| s.default_key);
    allow(c, default, &them, &["kms:ListKeys", "kms:DescribeKey"]);
    let hidden = new_key(c);
    let list = c.execute(&them, &Request::ListKeys).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let shown: Vec<&serde_json::Value> = list
        .iter()
        .filter(|k| k["key_id"] == hidden.to_string())
        .collect();
    assert_eq!(
        shown,
        vec![&serde_json::json!({ "key_id": hidden.to_string() })]
    );
    let own = list
        .iter()
        .find(|k| k["key_id"] == default.to_string())
        .unwrap();
    assert!(own.get("state").is_some(), "{own}");
    // The owner sees everything.
    let all = c.execute(&owner(c), &Request::ListKeys).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("description").is_some()),
        "{all}"
    );
}

/// README: anyone but a grant's retiring principal and grantee retires it with
/// kms:RetireGrant or kms:RevokeGrant in the key policy (revoking does the same to it); an
/// explicit Deny of RetireGrant still wins.
#[test]
fn revoke_grant_permission_also_retires() {
    let f = fixture();
    let c = &f.ctl;
    let them = stranger();
    let k = new_key(c);
    let grant = |c: &ControlDir| -> String {
        let r = c
            .execute(
                &owner(c),
                &Request::CreateGrant {
                    key: k.to_string(),
                    grant: serde_json::from_str(
                        r#"{"grantee":{"uids":[7]},"operations":["kms:Decrypt"]}"#,
                    )
                    .unwrap(),
                },
            )
            .unwrap();
        r["grant_id"].as_str().unwrap().to_string()
    };
    allow(c, k, &them, &["kms:RevokeGrant"]);
    let g = grant(c);
    c.execute(&them, &Request::RetireGrant { grant_id: g })
        .unwrap();
    assert_eq!(c.km.query(|s| s.grants.len()), 0);

    let text = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"Owner","Effect":"Allow","Principal":{{"Uid":"{}"}},"Action":"kms:*","Resource":"*"}},
            {{"Sid":"Revoke","Effect":"Allow","Principal":{{"Uid":"{}"}},"Action":"kms:RevokeGrant","Resource":"*"}},
            {{"Sid":"NoRetire","Effect":"Deny","Principal":{{"Uid":"{}"}},"Action":"kms:RetireGrant","Resource":"*"}}]}}"#,
        owner(c).uid,
        them.uid,
        them.uid
    );
    let o = owner(c);
    c.km.admin(|s, now| crate::keymgr::access::put_policy(s, &k, &text, &o, true, now))
        .unwrap();
    let g = grant(c);
    let e = c
        .execute(
            &them,
            &Request::RetireGrant {
                grant_id: g.clone(),
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Denied, "{e}");
    // Revoking it stays allowed; a second removal names the grant.
    c.execute(
        &them,
        &Request::RevokeGrant {
            grant_id: g.clone(),
        },
    )
    .unwrap();
    let e = c
        .execute(
            &owner(c),
            &Request::RevokeGrant {
                grant_id: g.clone(),
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("no grant"), "{e}");
}

/// Automatic rotation is turned on only for a key in use (AWS: DisabledException,
/// KMSInvalidStateException); turning it off works in any state but destroyed.
#[test]
fn automatic_rotation_is_enabled_only_on_an_enabled_key() {
    let f = fixture();
    let c = &f.ctl;
    let o = owner(c);
    let k = new_key(c);
    let rotation = |enabled| Request::SetKeyRotation {
        key: k.to_string(),
        enabled: Some(enabled),
        period_days: None,
    };
    c.execute(&o, &Request::DisableKey { key: k.to_string() })
        .unwrap();
    let e = c.execute(&o, &rotation(true)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert!(e.message.contains("Enabled"), "{e}");
    assert!(!c.km.query(|s| s.key(&k).unwrap().rotation.enabled));
    c.execute(&o, &rotation(false)).unwrap();
    c.execute(&o, &Request::EnableKey { key: k.to_string() })
        .unwrap();
    c.execute(&o, &rotation(true)).unwrap();
    assert!(c.km.query(|s| s.key(&k).unwrap().rotation.enabled));
}

/// `policy simulate` answers for what the mount asks: one known action and one of its access
/// modes; a pattern, a misspelled action or an unknown mode is refused (it was answered
/// "denied", which says nothing).
#[test]
fn a_simulation_needs_a_known_action_and_mode() {
    let f = fixture();
    let c = &f.ctl;
    let o = owner(c);
    let key = c.km.query(|s| s.default_key).to_string();
    let sim = |action: &str, mode: Option<&str>| Request::SimulatePolicy {
        key: key.clone(),
        action: action.into(),
        request: super::request::Simulated {
            uid: o.uid,
            access_mode: mode.map(str::to_string),
            ..Default::default()
        },
    };
    let r = c.execute(&o, &sim("kms:Decrypt", Some("read"))).unwrap();
    assert_eq!(r["allowed"], true, "{r}");
    for (action, mode) in [
        ("kms:Bogus", None),
        ("kms:*", None),
        ("kms:Decrypt", Some("bogus")),
    ] {
        let e = c.execute(&o, &sim(action, mode)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{action} {mode:?}: {e}");
    }
}

//! Key policies (`Policy::parse`, src/keymgr/policy): AWS-style JSON documents, stored in the key
//! store and written through `.kmsfs/keys/<key>/policy`.
//!
//! - `Policy::parse` never panics on any text;
//! - an accepted document round-trips through its serializer: the `PolicyDoc` it was read as,
//!   serialized (compact) and parsed again, gives an equal `Policy`; so does the pretty-printed
//!   `serde_json::Value` the control file stores (src/control/files.rs), when within the size
//!   limit;
//! - evaluating an accepted policy (`evaluate`, `lockout_check`) for a few requests never panics;
//! - the same bytes as a `Grant` (key-store body, `kmsfs grant`): parse, `validate` and
//!   round trip.
#![no_main]

use kmsfs::format::KeyId;
use kmsfs::keymgr::policy::{
    Grant, Identity, MAX_POLICY_BYTES, Policy, PolicyDoc, Request, evaluate, lockout_check,
};
use libfuzzer_sys::fuzz_target;

fn requests() -> Vec<Request> {
    let key = KeyId([0xc3; 16]);
    let mut ec = std::collections::BTreeMap::new();
    ec.insert(
        "kmsfs:file-id".to_string(),
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf".to_string(),
    );
    ec.insert("kmsfs:key-version".to_string(), "3".to_string());
    let carol = Identity {
        uid: 1001,
        gid: 100,
        groups: vec![27, 1002],
        user: Some("carol".into()),
        group_names: vec!["finance".into(), "users".into()],
        pid: 42,
        exe: Some("/usr/bin/restic".into()),
    };
    vec![
        Request {
            who: carol.clone(),
            action: "kms:Decrypt".into(),
            key: Some(key),
            path: Some("/finance/q4/report.txt".into()),
            path_unknown: false,
            access_mode: Some("read".into()),
            now: 1_795_000_000,
            encryption_context: ec.clone(),
        },
        // A file opened by a handle whose path could not be worked out.
        Request {
            who: Identity::default(),
            action: "kms:Decrypt".into(),
            key: Some(key),
            path_unknown: true,
            access_mode: Some("read".into()),
            now: 1_795_000_000,
            encryption_context: ec,
            ..Default::default()
        },
        Request {
            who: Identity::default(),
            action: "kms:PutKeyPolicy".into(),
            key: Some(key),
            ..Default::default()
        },
        Request {
            who: carol,
            action: "kms:ListKeys".into(),
            ..Default::default()
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        if let Ok(g) = serde_json::from_slice::<Grant>(data) {
            let _ = g.validate();
        }
        return;
    };
    if let Ok(p) = Policy::parse(text) {
        assert!(!p.statements.is_empty());
        let doc: PolicyDoc = serde_json::from_str(text).expect("parse accepted it");
        let compact = serde_json::to_string(&doc).unwrap();
        if compact.len() <= MAX_POLICY_BYTES {
            assert_eq!(
                Policy::parse(&compact).as_ref(),
                Ok(&p),
                "compact round trip: {compact}"
            );
        }
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        if pretty.len() <= MAX_POLICY_BYTES {
            assert_eq!(
                Policy::parse(&pretty).as_ref(),
                Ok(&p),
                "pretty round trip: {pretty}"
            );
        }
        for req in requests() {
            let d = evaluate(&p, &[], &req);
            let _ = d.allowed();
            let _ = lockout_check(&p, &req.who, KeyId([0xc3; 16]), req.now);
        }
    }

    if let Ok(g) = serde_json::from_slice::<Grant>(data) {
        let _ = g.validate();
        let again: Grant = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(again, g);
        let p = Policy::parse(&Policy::default_text(0)).unwrap();
        for req in requests() {
            let _ = g.matches(&req);
            let _ = evaluate(&p, std::slice::from_ref(&g), &req);
        }
    }
});

use super::*;

const KEY: KeyId = KeyId([7; 16]);

fn alice() -> Identity {
    Identity {
        uid: 1000,
        gid: 1000,
        groups: vec![27, 100],
        user: Some("alice".into()),
        group_names: vec!["sudo".into(), "users".into()],
        pid: 42,
        exe: Some("/usr/bin/cat".into()),
    }
}
fn bob() -> Identity {
    Identity {
        uid: 1001,
        gid: 1001,
        groups: vec![],
        user: Some("bob".into()),
        group_names: vec![],
        pid: 43,
        exe: Some("/usr/bin/restic".into()),
    }
}

fn req(who: Identity, action: &str, path: &str, mode: &str) -> Request {
    Request {
        who,
        action: action.into(),
        key: Some(KEY),
        path: Some(path.into()),
        path_unknown: false,
        access_mode: Some(mode.into()),
        now: 1_800_000_000,
        encryption_context: BTreeMap::new(),
    }
}

fn pol(statements: &str) -> Policy {
    Policy::parse(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#
    ))
    .unwrap_or_else(|e| panic!("{e}: {statements}"))
}

fn allowed(p: &Policy, r: &Request) -> bool {
    evaluate(p, &[], r).allowed()
}

#[test]
fn operators_table() {
    // (condition block, request tweak, expected)
    let base = |c: &str| {
        pol(&format!(
            r#"{{"Sid":"S","Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{c}}}"#
        ))
    };
    let r = req(alice(), "kms:Decrypt", "/finance/q1.xlsx", "read");
    let cases: &[(&str, bool)] = &[
        (r#"{"StringEquals":{"kmsfs:AccessMode":"read"}}"#, true),
        (
            r#"{"StringEquals":{"kmsfs:AccessMode":["write","read"]}}"#,
            true,
        ),
        (r#"{"StringEquals":{"kmsfs:AccessMode":"write"}}"#, false),
        (r#"{"StringNotEquals":{"kmsfs:AccessMode":"write"}}"#, true),
        (r#"{"StringNotEquals":{"kmsfs:AccessMode":"read"}}"#, false),
        (r#"{"StringLike":{"kmsfs:Path":"/finance/*"}}"#, true),
        (r#"{"StringLike":{"kmsfs:Path":"/fin?nce/*.xlsx"}}"#, true),
        (r#"{"StringLike":{"kmsfs:Path":"/hr/*"}}"#, false),
        (r#"{"StringNotLike":{"kmsfs:Path":"/hr/*"}}"#, true),
        (
            r#"{"StringEquals":{"kmsfs:Executable":"/usr/bin/cat"}}"#,
            true,
        ),
        (r#"{"StringEquals":{"kmsfs:User":"alice"}}"#, true),
        (r#"{"NumericEquals":{"kmsfs:Uid":"1000"}}"#, true),
        (r#"{"NumericNotEquals":{"kmsfs:Uid":1000}}"#, false),
        (r#"{"NumericLessThan":{"kmsfs:Uid":1000}}"#, false),
        (r#"{"NumericLessThanEquals":{"kmsfs:Uid":1000}}"#, true),
        (r#"{"NumericGreaterThan":{"kmsfs:Uid":999}}"#, true),
        (r#"{"NumericGreaterThanEquals":{"kmsfs:Uid":1001}}"#, false),
        (r#"{"NumericEquals":{"kmsfs:Gid":"27"}}"#, true),
        (
            r#"{"DateLessThan":{"aws:CurrentTime":"2030-01-01T00:00:00Z"}}"#,
            true,
        ),
        (
            r#"{"DateGreaterThan":{"aws:CurrentTime":"2030-01-01T00:00:00Z"}}"#,
            false,
        ),
        (
            r#"{"DateGreaterThanEquals":{"kmsfs:CurrentTime":"1800000000"}}"#,
            true,
        ),
        (
            r#"{"DateLessThanEquals":{"kmsfs:CurrentTime":"1799999999"}}"#,
            false,
        ),
        // every operator must hold (AND)
        (
            r#"{"StringEquals":{"kmsfs:AccessMode":"read"},"StringLike":{"kmsfs:Path":"/hr/*"}}"#,
            false,
        ),
        // missing key: positive operators fail, negated ones hold
        (
            r#"{"StringEquals":{"kms:EncryptionContext:project":"x"}}"#,
            false,
        ),
        (
            r#"{"StringNotEquals":{"kms:EncryptionContext:project":"x"}}"#,
            true,
        ),
    ];
    for (c, want) in cases {
        assert_eq!(allowed(&base(c), &r), *want, "{c}");
    }
}

#[test]
fn principals_actions_resources() {
    let p = pol(r#"{"Effect":"Allow","Principal":{"Group":"users"},"Action":"kms:Decrypt"}"#);
    assert!(
        allowed(&p, &req(alice(), "kms:Decrypt", "/a", "read")),
        "supplementary group counts"
    );
    assert!(!allowed(&p, &req(bob(), "kms:Decrypt", "/a", "read")));
    let p = pol(
        r#"{"Effect":"Allow","Principal":{"Uid":[1001,"1002"],"User":"carol"},"Action":["kms:ReEncrypt*","kms:Describe*"]}"#,
    );
    assert!(allowed(&p, &req(bob(), "kms:ReEncryptFrom", "/a", "read")));
    assert!(allowed(&p, &req(bob(), "kms:DescribeKey", "/a", "read")));
    assert!(!allowed(&p, &req(bob(), "kms:Decrypt", "/a", "read")));
    let p = pol(&format!(
        r#"{{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"{}"}}"#,
        KeyId([8; 16])
    ));
    assert!(
        !allowed(&p, &req(alice(), "kms:Decrypt", "/a", "read")),
        "resource names another key"
    );
    let p = pol(r#"{"Effect":"Allow","Principal":{"Gid":1001},"Action":"kms:Decrypt"}"#);
    assert!(allowed(&p, &req(bob(), "kms:Decrypt", "/a", "read")));
}

#[test]
fn explicit_deny_beats_allow_and_grant() {
    let p = pol(
        r#"{"Sid":"All","Effect":"Allow","Principal":"*","Action":"kms:*"},
                   {"Sid":"NoBob","Effect":"Deny","Principal":{"User":"bob"},"Action":"kms:Decrypt"}"#,
    );
    let g = Grant {
        id: "g1".into(),
        key: KEY,
        name: String::new(),
        grantee: Principal::parse(&serde_json::json!({"User":"bob"})).unwrap(),
        operations: vec!["kms:Decrypt".into()],
        path_like: None,
        encryption_context_subset: BTreeMap::new(),
        expires: None,
        created: 0,
        retiring_principal: None,
    };
    let r = req(bob(), "kms:Decrypt", "/a", "read");
    assert_eq!(
        evaluate(&p, std::slice::from_ref(&g), &r),
        Decision::ExplicitDeny {
            sid: "NoBob".into()
        }
    );
    assert_eq!(
        evaluate(&p, &[g], &req(alice(), "kms:Decrypt", "/a", "read")),
        Decision::AllowedByPolicy { sid: "All".into() }
    );
}

#[test]
fn grants_allow_only_within_their_limits() {
    let p = pol(r#"{"Sid":"Owner","Effect":"Allow","Principal":{"Uid":1000},"Action":"kms:*"}"#);
    let mut g = Grant {
        id: "g1".into(),
        key: KEY,
        name: "backup".into(),
        grantee: Principal::parse(&serde_json::json!({"User":"bob"})).unwrap(),
        operations: vec!["kms:Decrypt".into()],
        path_like: Some("/backup/*".into()),
        encryption_context_subset: BTreeMap::new(),
        expires: Some(1_900_000_000),
        created: 0,
        retiring_principal: None,
    };
    g.validate().unwrap();
    let r = req(bob(), "kms:Decrypt", "/backup/x", "read");
    assert_eq!(
        evaluate(&p, std::slice::from_ref(&g), &r),
        Decision::AllowedByGrant {
            grant_id: "g1".into()
        }
    );
    assert_eq!(
        evaluate(
            &p,
            std::slice::from_ref(&g),
            &req(bob(), "kms:Decrypt", "/other", "read")
        ),
        Decision::ImplicitDeny
    );
    assert_eq!(
        evaluate(
            &p,
            std::slice::from_ref(&g),
            &req(bob(), "kms:GenerateDataKey", "/backup/x", "write")
        ),
        Decision::ImplicitDeny
    );
    let mut late = r.clone();
    late.now = 1_900_000_000;
    assert_eq!(
        evaluate(&p, std::slice::from_ref(&g), &late),
        Decision::ImplicitDeny,
        "expired grant"
    );
    // A grant with an encryption-context constraint does not match an empty context.
    g.encryption_context_subset
        .insert("project".into(), "x".into());
    assert_eq!(
        evaluate(&p, std::slice::from_ref(&g), &r),
        Decision::ImplicitDeny
    );
    let mut with = r.clone();
    with.encryption_context.insert("project".into(), "x".into());
    assert!(evaluate(&p, std::slice::from_ref(&g), &with).allowed());
    g.operations = vec!["kms:PutKeyPolicy".into()];
    assert!(g.validate().is_err());
    g.operations = vec!["kms:Decrypt*".into()];
    assert!(g.validate().is_err(), "grants name exact operations");
}

#[test]
fn implicit_deny_when_nothing_matches() {
    let p = pol(r#"{"Effect":"Allow","Principal":{"Uid":1000},"Action":"kms:Decrypt"}"#);
    assert_eq!(
        evaluate(&p, &[], &req(bob(), "kms:Decrypt", "/a", "read")),
        Decision::ImplicitDeny
    );
}

#[test]
fn malformed_policies_rejected_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        ("not json", "expected"),
        (r#"{"Version":"2012-10-17","Statement":[]}"#, "empty"),
        (
            r#"{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}]}"#,
            "Version",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Principal":"*","Action":"kms:Decrypt"}]}"#,
            "Effect",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt"}]}"#,
            "Principal",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*"}]}"#,
            "Action",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:Decrypt"}]}"#,
            "Effect",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Frobnicate"}]}"#,
            "unknown action",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*"}]}"#,
            "unknown action",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"x"},"Action":"kms:Decrypt"}]}"#,
            "principal type",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Uid":"bob"},"Action":"kms:Decrypt"}]}"#,
            "not a number",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{"StringMaybe":{"kmsfs:Path":"/"}}}]}"#,
            "operator",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{"StringEquals":{"kmsfs:Color":"red"}}}]}"#,
            "condition key",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{"NumericLessThan":{"kmsfs:Path":"3"}}}]}"#,
            "does not apply",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{"DateLessThan":{"aws:CurrentTime":"someday"}}}]}"#,
            "does not apply",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Extra":1}]}"#,
            "unknown field",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":[{"Sid":"a","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"},{"Sid":"a","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}]}"#,
            "duplicate",
        ),
    ];
    for (text, why) in cases {
        let e = Policy::parse(text).expect_err(text);
        assert!(
            e.0.contains(why),
            "{text}: message {:?} should mention {why:?}",
            e.0
        );
    }
    let big = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"{}","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}}]}}"#,
        "x".repeat(MAX_POLICY_BYTES)
    );
    assert!(Policy::parse(&big).unwrap_err().0.contains("limit"));
}

#[test]
fn lockout_check_refuses_self_lockout() {
    let admin_only = pol(r#"{"Effect":"Allow","Principal":{"Uid":1000},"Action":"kms:*"}"#);
    assert!(lockout_check(&admin_only, &alice(), KEY, 0).is_ok());
    assert!(lockout_check(&admin_only, &bob(), KEY, 0).is_err());
    let deny_self = pol(
        r#"{"Effect":"Allow","Principal":"*","Action":"kms:*"},{"Effect":"Deny","Principal":{"Uid":1000},"Action":"kms:Put*"}"#,
    );
    assert!(lockout_check(&deny_self, &alice(), KEY, 0).is_err());
    assert!(
        lockout_check(
            &Policy::parse(&Policy::default_text(1000)).unwrap(),
            &alice(),
            KEY,
            0
        )
        .is_ok()
    );
}

#[test]
fn separation_of_duties_example() {
    // Key administrators manage the key but cannot decrypt; users decrypt but cannot change policy.
    let p = pol(
        r#"{"Sid":"Admins","Effect":"Allow","Principal":{"Group":"sudo"},"Action":["kms:Describe*","kms:Put*","kms:Enable*","kms:Disable*","kms:Rotate*","kms:ScheduleKeyDeletion","kms:CancelKeyDeletion","kms:*Grant*"]},
                   {"Sid":"Users","Effect":"Allow","Principal":{"User":"bob"},"Action":["kms:Decrypt","kms:GenerateDataKey"]},
                   {"Sid":"BackupReadOnly","Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{"StringEquals":{"kmsfs:Executable":["/usr/bin/restic","/usr/bin/rsync"],"kmsfs:AccessMode":"read"}}}"#,
    );
    assert!(allowed(&p, &req(alice(), "kms:PutKeyPolicy", "/", "read")));
    assert!(!allowed(&p, &req(alice(), "kms:Decrypt", "/a", "read")));
    assert!(allowed(&p, &req(bob(), "kms:Decrypt", "/a", "read")));
    assert!(!allowed(&p, &req(bob(), "kms:PutKeyPolicy", "/", "read")));
    let mut restic = alice();
    restic.exe = Some("/usr/bin/restic".into());
    assert!(allowed(
        &p,
        &req(restic.clone(), "kms:Decrypt", "/a", "read")
    ));
    assert!(!allowed(&p, &req(restic, "kms:Decrypt", "/a", "write")));
}

#[test]
fn glob_matching() {
    for (p, s, want) in [
        ("*", "", true),
        ("a*c", "abbc", true),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("/x/*", "/x/y/z", true),
        ("*.txt", "a.txt.bak", false),
        ("**", "x", true),
    ] {
        assert_eq!(glob(p, s), want, "{p} vs {s}");
    }
}

#[test]
fn deny_on_a_missing_condition_key_applies() {
    // bob's executable could not be read: an Allow on the executable does not apply, a Deny does.
    let mut who = bob();
    who.exe = None;
    let p = pol(
        r#"{"Sid":"All","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"},
                   {"Sid":"NoShells","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Condition":{"StringEquals":{"kmsfs:Executable":"/bin/sh"}}}"#,
    );
    assert_eq!(
        evaluate(&p, &[], &req(who.clone(), "kms:Decrypt", "/a", "read")),
        Decision::ExplicitDeny {
            sid: "NoShells".into()
        }
    );
    let p = pol(
        r#"{"Sid":"OnlyRestic","Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{"StringEquals":{"kmsfs:Executable":"/usr/bin/restic"}}}"#,
    );
    assert_eq!(
        evaluate(&p, &[], &req(who, "kms:Decrypt", "/a", "read")),
        Decision::ImplicitDeny
    );
}

#[test]
fn path_conditions_fail_closed_for_a_file_whose_path_is_unknown() {
    // A file opened by a file handle whose path could not be worked out: "everything but
    // /secret" must not let it through (a negated operator on a missing key would hold), and a
    // Deny on a path applies. A request without a path that is no file access (an
    // administrative one) keeps the rule for missing keys.
    let p = pol(
        r#"{"Sid":"AllButSecret","Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringNotLike":{"kmsfs:Path":"/secret/*"}}}"#,
    );
    let mut r = req(bob(), "kms:Decrypt", "/a", "read");
    r.path = None;
    r.path_unknown = true;
    assert_eq!(evaluate(&p, &[], &r), Decision::ImplicitDeny);
    r.path_unknown = false;
    assert!(allowed(&p, &r), "no file access: the rule for missing keys");
    let p = pol(
        r#"{"Sid":"All","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"},
           {"Sid":"NotThere","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Condition":{"StringLike":{"kmsfs:Path":"/secret/*"}}}"#,
    );
    r.path_unknown = true;
    assert_eq!(
        evaluate(&p, &[], &r),
        Decision::ExplicitDeny {
            sid: "NotThere".into()
        }
    );
}

#[test]
fn resources_and_grant_operations_are_strict() {
    let text = |r: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"{r}"}}]}}"#
        )
    };
    assert!(
        Policy::parse(&text("alias/finance")).is_err(),
        "aliases are not resources"
    );
    assert!(Policy::parse(&text("arn:aws:kms:x")).is_err());
    assert!(Policy::parse(&text("*")).is_ok());
    assert!(Policy::parse(&text(&KEY.to_string())).is_ok());
    let mut g = Grant {
        id: "g".into(),
        key: KEY,
        name: String::new(),
        grantee: Principal {
            any: true,
            ..Default::default()
        },
        operations: vec!["kms:DisableKey".into()],
        path_like: None,
        encryption_context_subset: BTreeMap::new(),
        expires: None,
        created: 0,
        retiring_principal: None,
    };
    assert!(g.validate().is_err(), "grants do not carry administration");
    g.operations = vec!["kms:Decrypt".into(), "kms:GenerateDataKey".into()];
    assert!(g.validate().is_ok());
}

#[test]
fn encryption_context_conditions() {
    let p = pol(
        r#"{"Sid":"ThisVolume","Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Condition":{"StringEquals":{"kms:EncryptionContext:kmsfs:key-version":"2"}}}"#,
    );
    let mut r = req(alice(), "kms:Decrypt", "/a", "read");
    assert_eq!(
        evaluate(&p, &[], &r),
        Decision::ImplicitDeny,
        "empty context never satisfies StringEquals"
    );
    r.encryption_context
        .insert("kmsfs:key-version".into(), "2".into());
    assert!(evaluate(&p, &[], &r).allowed());
}

#[test]
fn duplicate_keys_are_rejected_wherever_they_are() {
    // serde keeps the last of two equal keys: each of these would enforce less than it says.
    let docs = [
        // Two operators of the same name: the path condition would be dropped.
        r#"{"Sid":"S","Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
            "Condition":{"StringLike":{"kmsfs:Path":"/pub/*"},"StringLike":{"kmsfs:AccessMode":"read"}}}"#,
        // A condition key twice within one operator.
        r#"{"Sid":"S","Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
            "Condition":{"StringLike":{"kmsfs:Path":"/pub/*","kmsfs:Path":"*"}}}"#,
        // A principal type twice: the Deny would miss uid 1000.
        r#"{"Sid":"S","Effect":"Deny","Principal":{"Uid":"1000","Uid":"1001"},"Action":"kms:*"}"#,
        // A statement field twice.
        r#"{"Sid":"S","Effect":"Deny","Effect":"Allow","Principal":"*","Action":"kms:*"}"#,
    ];
    for st in docs {
        let text = format!(r#"{{"Version":"2012-10-17","Statement":[{st}]}}"#);
        let e = Policy::parse(&text).unwrap_err().to_string();
        assert!(e.contains("duplicate"), "{e}: {st}");
    }
    let e = Policy::parse(
        r#"{"Version":"2012-10-17","Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("duplicate key \"Version\""), "{e}");
    // The same key in different objects is fine.
    pol(
        r#"{"Sid":"A","Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
            "Condition":{"StringLike":{"kmsfs:Path":"/a/*"},"StringEquals":{"kmsfs:Path":"/b"}}},
           {"Sid":"B","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}"#,
    );
    assert!(reject_duplicate_keys(br#"[{"a":1},{"a":1}]"#).is_ok());
    assert!(reject_duplicate_keys(br#"{"a":{"b":[{"c":1,"c":2}]}}"#).is_err());
}

/// Review #12: a Resource naming this key in upper case or without dashes applies to it (it
/// was accepted and then never matched, so such a Deny was void); a pattern that can match no
/// key id is refused.
#[test]
fn resource_key_ids_are_normalized_or_refused() {
    let id = KEY.to_string();
    let deny = |r: &str| {
        Policy::parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":[
              {{"Sid":"All","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}},
              {{"Sid":"DenyThisKey","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"{r}"}}]}}"#
        ))
    };
    let r = req(bob(), "kms:Decrypt", "/x", "read");
    for form in [
        id.clone(),
        id.to_uppercase(),
        id.replace('-', ""),
        id.replace('-', "").to_uppercase(),
        format!("{}*", &id[..10].to_uppercase()),
        "????????-????-????-????-????????????".into(),
        "*-*".into(),
    ] {
        let p = deny(&form).unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(
            evaluate(&p, &[], &r),
            Decision::ExplicitDeny {
                sid: "DenyThisKey".into()
            },
            "{form}"
        );
    }
    // Another key's id, in any form, still does not reach this key.
    let other = KeyId([8; 16]).to_string().replace('-', "").to_uppercase();
    assert!(evaluate(&deny(&other).unwrap(), &[], &r).allowed());
    for never in [
        "0707070707070707*",          // no dash after 8 digits
        "07070707-0707-0707-0707-07", // too short, no wildcard: not an id
        "0707-*",
        "*--*",
        "????????????????????????????????", // 32: undashed, and `?` stands for one character
    ] {
        let e = deny(never).expect_err(never);
        assert!(e.0.contains("Resource"), "{never}: {e}");
    }
}

/// Review #12: `"*"` as a User or Group (or Uid, Gid) means anyone, as `"Principal": "*"`; it
/// was taken as a name no one has, so `Deny {"User": "*"}` denied nobody. Other wildcards in
/// names are refused.
#[test]
fn principal_star_means_anyone() {
    for p in [
        r#"{"User":"*"}"#,
        r#"{"Group":"*"}"#,
        r#"{"Group":["admins","*"]}"#,
        r#"{"Uid":"*"}"#,
    ] {
        let pol = pol(&format!(
            r#"{{"Sid":"All","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}},
               {{"Sid":"DenyAll","Effect":"Deny","Principal":{p},"Action":"kms:Decrypt"}}"#
        ));
        let mut nameless = bob();
        nameless.user = None;
        for who in [alice(), bob(), nameless] {
            assert_eq!(
                evaluate(&pol, &[], &req(who, "kms:Decrypt", "/x", "read")),
                Decision::ExplicitDeny {
                    sid: "DenyAll".into()
                },
                "{p}"
            );
        }
    }
    for p in [r#"{"User":"ali*"}"#, r#"{"Group":"fin?nce"}"#] {
        let e = Policy::parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":{p},"Action":"kms:*"}}]}}"#
        ))
        .expect_err(p);
        assert!(e.0.contains("wildcards"), "{e}");
    }
}

/// Review #12: `Bool` was accepted on every key, none of which is boolean, so it never held.
#[test]
fn bool_on_a_non_boolean_key_is_refused() {
    for k in ["kmsfs:Path", "kmsfs:Uid", "kms:EncryptionContext:x"] {
        let e = Policy::parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":"*","Action":"kms:*","Condition":{{"Bool":{{"{k}":"true"}}}}}}]}}"#
        ))
        .expect_err(k);
        assert!(e.0.contains("Bool") && e.0.contains("not one"), "{e}");
    }
}

/// Review #12: `?` is one character, as in AWS (it was one byte, so a Deny on `/secret/?.txt`
/// missed `/secret/é.txt`).
#[test]
fn question_mark_matches_one_character() {
    for (p, s, want) in [
        ("/secret/?.txt", "/secret/a.txt", true),
        ("/secret/?.txt", "/secret/é.txt", true),
        ("/secret/??.txt", "/secret/é.txt", false),
        ("/secret/?.txt", "/secret/日.txt", true),
        ("/secret/?.txt", "/secret/😀.txt", true),
        ("*?", "é", true),
        ("*é?", "aéé", true),
        ("*?é", "é", false),
        ("é*", "éa", true),
        ("?*b", "ééb", true),
    ] {
        assert_eq!(glob(p, s), want, "{p} vs {s}");
    }
    // Against a reference over characters, with multi-byte characters.
    fn reference(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some('*'), _) => reference(&p[1..], s) || (!s.is_empty() && reference(p, &s[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &s[1..]),
            (Some(c), Some(d)) if c == d => reference(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let alpha = ['a', 'é', '/', '日', '*', '?'];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..50_000 {
        let p: Vec<char> = (0..next() % 7)
            .map(|_| alpha[(next() % 6) as usize])
            .collect();
        let s: Vec<char> = (0..next() % 8)
            .map(|_| alpha[(next() % 4) as usize])
            .collect();
        let (ps, ss): (String, String) = (p.iter().collect(), s.iter().collect());
        assert_eq!(glob(&ps, &ss), reference(&p, &s), "{ps:?} {ss:?}");
    }
}

/// Review #12: unknown fields in a grant's principal were ignored; a grantee naming nobody, or
/// `"*"` (or a wildcard) as a name, never matched.
#[test]
fn grant_principals_are_strict() {
    let g: Result<Grant, _> = serde_json::from_value(serde_json::json!({
        "id": "g", "key": KEY, "created": 0, "operations": ["kms:Decrypt"],
        "grantee": {"any": false, "uids": [], "users": ["bob"], "gids": [], "groups": [], "role": "x"},
    }));
    assert!(g.unwrap_err().to_string().contains("role"));
    let spec = |grantee: serde_json::Value, retiring: serde_json::Value| -> Grant {
        serde_json::from_value(serde_json::json!({
            "id": "g", "key": KEY, "created": 0, "operations": ["kms:Decrypt"],
            "grantee": grantee, "retiring_principal": retiring,
        }))
        .unwrap()
    };
    let p = |users: &[&str], any: bool| serde_json::json!({"any": any, "uids": [], "users": users, "gids": [], "groups": []});
    assert!(
        spec(p(&["bob"], false), serde_json::Value::Null)
            .validate()
            .is_ok()
    );
    assert!(spec(p(&[], true), p(&["bob"], false)).validate().is_ok());
    for (grantee, retiring, why) in [
        (p(&[], false), serde_json::Value::Null, "names nobody"),
        (p(&["*"], false), serde_json::Value::Null, "\"any\": true"),
        (p(&["bo?"], false), serde_json::Value::Null, "wildcards"),
        (p(&["bob"], false), p(&["*"], false), "retiring_principal"),
    ] {
        let e = spec(grantee, retiring).validate().unwrap_err();
        assert!(e.0.contains(why), "{e}");
    }
}

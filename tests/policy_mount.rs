//! Key policies and grants enforced through a real mount, for processes of other uids (run with
//! setpriv), and what the audit log records about them.
mod common;
use common::*;

use std::path::Path;
use std::process::Output;

const ALICE: u32 = 4242;
const BOB: u32 = 4243;
const CAROL: u32 = 4244;

fn can_read(uid: u32, p: &Path) -> bool {
    as_uid(uid, &format!("cat '{}' >/dev/null", p.display()))
        .status
        .success()
}

fn can_write(uid: u32, p: &Path) -> bool {
    as_uid(uid, &format!("echo more >> '{}'", p.display()))
        .status
        .success()
}

/// Runs `c`, which must succeed; its stdout, trimmed.
fn succeeds(mut c: std::process::Command, what: &str) -> String {
    let o = c.output().expect("kmsfs");
    assert!(
        o.status.success(),
        "kmsfs {what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `kmsfs SUB --volume CIPHERDIR --passfile F ARGS…`.
fn run(v: &Volume, sub: &str, args: &[&str]) -> String {
    let mut c = kmsfs();
    c.arg(sub).arg("--volume").arg(&v.cipher);
    c.arg("--passfile").arg(&v.passfile).args(args);
    succeeds(c, &format!("{sub} {args:?}"))
}

/// `kmsfs SUB CIPHERDIR --passfile F ARGS…` (the commands that take the volume first).
fn admin(v: &Volume, sub: &str, args: &[&str]) -> String {
    let mut c = kmsfs();
    c.arg(sub).arg(&v.cipher);
    c.arg("--passfile").arg(&v.passfile).args(args);
    succeeds(c, &format!("{sub} {args:?}"))
}

fn audit(v: &Volume, args: &[&str]) -> Output {
    kmsfs()
        .arg("audit")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(args)
        .output()
        .expect("kmsfs audit")
}

fn put_policy(v: &Volume, statements: &str) {
    let p = v.tmp.path().join("policy.json");
    std::fs::write(&p, format!(r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"Owner","Effect":"Allow","Principal":{{"Uid":0}},"Action":"kms:*"}},{statements}]}}"#)).unwrap();
    let default = serde_json::from_str::<serde_json::Value>(&{
        let o = kmsfs()
            .args(["key"])
            .arg(&v.cipher)
            .arg("--passfile")
            .arg(&v.passfile)
            .args(["list", "--json"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    })
    .unwrap()[0]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = kmsfs()
        .args(["policy", "put", "--volume"])
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args([default.as_str(), p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "policy put: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn setup(v: &Volume) -> Mount {
    // Files readable and writable by everyone as far as POSIX goes: only the policy decides.
    let m = v.mount_with(&["--allow-other"]);
    std::fs::write(m.path("shared.txt"), b"shared data\n").unwrap();
    std::fs::set_permissions(
        m.path("shared.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    std::fs::create_dir(m.path("drop")).unwrap();
    std::fs::set_permissions(
        m.path("drop"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    m.unmount();
    v.mount_with(&["--allow-other"])
}

#[test]
fn policies_decide_per_uid_and_access_mode() {
    let v = Volume::new(&[]);
    drop(setup(&v));
    put_policy(
        &v,
        &format!(
            r#"{{"Sid":"AliceReads","Effect":"Allow","Principal":{{"Uid":{ALICE}}},"Action":"kms:Decrypt","Condition":{{"StringEquals":{{"kmsfs:AccessMode":"read"}}}}}},
               {{"Sid":"EveryoneDecrypts","Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}},
               {{"Sid":"NoBob","Effect":"Deny","Principal":{{"Uid":{BOB}}},"Action":"kms:*"}}"#
        ),
    );
    let grant = run(
        &v,
        "grant",
        &[
            "create",
            &key_of(&v),
            "--grantee-uid",
            &BOB.to_string(),
            "--operation",
            "kms:Decrypt",
        ],
    );
    assert!(!grant.is_empty());
    let m = v.mount_with(&["--allow-other"]);
    let f = m.path("shared.txt");
    let (f2, d) = (f.clone(), m.path("drop"));
    with_timeout(60, move || {
        assert!(can_read(ALICE, &f2), "alice may read");
        assert!(can_read(CAROL, &f2), "everyone decrypts");
        assert!(
            !can_read(BOB, &f2),
            "explicit deny beats the allow and the grant"
        );
        // Writing needs kms:Decrypt with mode write: EveryoneDecrypts allows it for carol...
        assert!(can_write(CAROL, &f2));
        // A truncate by path is a write too: bob may not, and the content stays.
        // truncate(2) on the path (perl's truncate with a name), not open + ftruncate.
        let o = as_uid(
            BOB,
            &format!("perl -e 'truncate(\"{}\", 0) or exit 1'", f2.display()),
        );
        assert!(!o.status.success(), "bob truncated a file he may not use");
        assert!(std::fs::read(&f2).unwrap().starts_with(b"shared data"));
        // ...but nobody may create: no statement allows kms:GenerateDataKey for them.
        let o = as_uid(ALICE, &format!("echo x > '{}/new.txt'", d.display()));
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("ermission denied"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!d.join("new.txt").exists());
    });
    m.unmount();
    let recs = v.audit_records();
    let denied: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["decision"]["allowed"] == false)
        .collect();
    assert!(
        denied.iter().any(|r| r["actor"]["uid"] == BOB
            && r["event"] == "Open"
            && r["decision"]["by"] == "statement:NoBob"),
        "{denied:#?}"
    );
    assert!(denied.iter().any(|r| r["actor"]["uid"] == BOB
        && r["event"] == "Truncate"
        && r["decision"]["by"] == "statement:NoBob"));
    assert!(denied.iter().any(|r| r["actor"]["uid"] == ALICE
        && r["event"] == "Create"
        && r["decision"]["by"] == "implicit-deny"));
    assert!(recs.iter().any(|r| r["actor"]["uid"] == ALICE
        && r["event"] == "Open"
        && r["decision"]["by"] == "statement:AliceReads"
        && r["actor"]["exe"] == "/usr/bin/cat"));
    assert!(
        recs.iter()
            .any(|r| r["event"] == "Close" && r["actor"]["uid"] == ALICE && r["bytes_read"] == 12)
    );
    let o = audit(&v, &["verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // Nothing the log holds is readable in the cipher directory.
    let all = sh(&format!(
        "grep -rl -e shared.txt -e /usr/bin/cat -e NoBob '{}'",
        v.cipher.display()
    ));
    assert!(
        all.stdout.is_empty(),
        "found in the cipher dir: {}",
        String::from_utf8_lossy(&all.stdout)
    );
}

fn key_of(v: &Volume) -> String {
    let o = kmsfs()
        .args(["key"])
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["list", "--json"])
        .output()
        .unwrap();
    serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(&o.stdout)).unwrap()[0]["key_id"].as_str().unwrap().to_string()
}

#[test]
fn grants_allow_until_revoked_or_expired() {
    let v = Volume::new(&[]);
    drop(setup(&v));
    let key = key_of(&v);
    let g = run(
        &v,
        "grant",
        &[
            "create",
            &key,
            "--grantee-uid",
            &CAROL.to_string(),
            "--operation",
            "kms:Decrypt",
            "--path-like",
            "/shared*",
        ],
    );
    let short = run(
        &v,
        "grant",
        &[
            "create",
            &key,
            "--grantee-uid",
            &ALICE.to_string(),
            "--operation",
            "kms:Decrypt",
            "--expires",
            "3s",
        ],
    );
    assert_ne!(g, short);
    let m = v.mount_with(&["--allow-other"]);
    let f = m.path("shared.txt");
    let f2 = f.clone();
    with_timeout(60, move || {
        assert!(can_read(CAROL, &f2), "granted");
        assert!(can_read(ALICE, &f2), "granted until it expires");
        assert!(!can_read(BOB, &f2), "no grant, default policy: owner only");
        std::thread::sleep(std::time::Duration::from_secs(4));
        assert!(
            !can_read(ALICE, &f2),
            "an expired grant stops working without a remount"
        );
        assert!(can_read(CAROL, &f2));
    });
    m.unmount();
    run(&v, "grant", &["revoke", &g]);
    let m = v.mount_with(&["--allow-other"]);
    let f = m.path("shared.txt");
    with_timeout(30, move || assert!(!can_read(CAROL, &f), "revoked"));
    drop(m);
    let recs = v.audit_records();
    assert!(recs.iter().any(|r| {
        r["actor"]["uid"] == CAROL
            && r["decision"]["by"]
                .as_str()
                .unwrap_or("")
                .starts_with("grant:")
    }));
}

#[test]
fn audit_is_fail_closed() {
    let v = Volume::new(&[]);
    let m = v.mount();
    std::fs::write(m.path("f"), b"data").unwrap();
    m.unmount();
    let seg = v.cipher.join(".kmsfs/audit/seg-00000001.log");
    assert!(
        sh(&format!("chattr +i '{}'", seg.display()))
            .status
            .success(),
        "chattr needed for this test"
    );
    // No writable log: no mount at all.
    let o = kmsfs()
        .arg("mount")
        .arg("-f")
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&v.cipher)
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!is_mounted(&v.mnt));
    sh(&format!("chattr -i '{}'", seg.display()));
    // Log becomes unwritable while mounted: opening fails, nothing is read.
    let m = v.mount();
    let p = m.path("f");
    sh(&format!(
        "chattr +a '{}'",
        v.cipher.join(".kmsfs/audit").display()
    ));
    sh(&format!("chattr +i '{}'", seg.display()));
    let r = std::fs::read(&p);
    sh(&format!("chattr -i '{}'", seg.display()));
    sh(&format!(
        "chattr -a '{}'",
        v.cipher.join(".kmsfs/audit").display()
    ));
    assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    drop(m);
}

#[test]
fn an_exec_is_judged_as_the_new_program() {
    let v = Volume::new(&[]);
    drop(setup(&v));
    // Only perl may read; a perl that opened the file and then became another program (same
    // pid, within the identity cache's lifetime) must be judged as that program.
    let perl = std::fs::canonicalize("/usr/bin/perl").unwrap();
    put_policy(
        &v,
        &format!(
            r#"{{"Sid":"PerlOnly","Effect":"Allow","Principal":{{"Uid":{ALICE}}},"Action":"kms:Decrypt","Condition":{{"StringEquals":{{"kmsfs:Executable":"{}"}}}}}}"#,
            perl.display()
        ),
    );
    let m = v.mount_with(&["--allow-other"]);
    let f = m.path("shared.txt");
    with_timeout(60, move || {
        let o = as_uid(
            ALICE,
            &format!(
                "exec perl -e 'open(F, \"<\", \"{0}\") or die \"perl: $!\"; exec(\"/usr/bin/head\", \"-c1\", \"{0}\")'",
                f.display()
            ),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("perl:"), "perl itself was refused: {err}");
        assert!(!o.status.success(), "head ran with perl's identity");
        assert!(err.contains("ermission denied"), "{err}");
    });
    m.unmount();
}

#[test]
fn a_rewrap_a_key_policy_denies_file_by_file_exits_22_and_says_how_many() {
    let v = Volume::new(&[]);
    drop(setup(&v));
    admin(
        &v,
        "key",
        &[
            "create",
            "--alias",
            "alias/finance",
            "--description",
            "payroll",
        ],
    );
    let fin = serde_json::from_str::<serde_json::Value>(&admin(&v, "key", &["list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["description"] == "payroll")
        .expect("the finance key")["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    admin(&v, "rules", &["set", "/finance", "alias/finance"]);
    let m = v.mount_with(&["--allow-other"]);
    std::fs::create_dir(m.path("finance")).unwrap();
    std::fs::write(m.path("finance/payroll"), b"salaries\n").unwrap();
    std::fs::write(m.path("notes"), b"groceries\n").unwrap();
    m.unmount();
    // Both keys get a new version, so every file (shared.txt from setup too) would be rewrapped; alice may run rewraps on
    // the default key, and finance denies her everything.
    admin(&v, "key", &["rotate", "alias/finance"]);
    admin(&v, "key", &["rotate", &key_of(&v)]);
    let p = v.tmp.path().join("finance-policy.json");
    std::fs::write(
        &p,
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"Owner","Effect":"Allow","Principal":{{"Uid":0}},"Action":"kms:*"}},{{"Sid":"NotAlice","Effect":"Deny","Principal":{{"Uid":{ALICE}}},"Action":"kms:*"}}]}}"#
        ),
    )
    .unwrap();
    let o = kmsfs()
        .args(["policy", "put", "--volume"])
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&fin)
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    put_policy(
        &v,
        &format!(
            r#"{{"Sid":"Alice","Effect":"Allow","Principal":{{"Uid":{ALICE}}},"Action":["kms:Decrypt","kms:ReEncryptFrom"]}}"#
        ),
    );
    let m = v.mount_with(&["--allow-other"]);
    let mnt = v.mnt.clone();
    let o = with_timeout(60, move || {
        as_uid(ALICE, &format!("'{}' rewrap '{}'", bin(), mnt.display()))
    });
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(22), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("3 files: 2 rewrapped, 0 already current, 0 skipped (key not usable), 1 skipped (denied by key policy), 0 damaged"),
        "{out}"
    );
    assert!(err.contains("denied by key policy"), "{err}");
    drop(m);
}

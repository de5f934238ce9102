//! Key lifecycle through a real mount: rules choose keys, disabled keys block opens, rotation and
//! rewrap, version retirement, guarded trim, deletion and crypto-shredding.
mod common;
use common::*;

use std::io::ErrorKind;
use std::path::Path;

/// `kmsfs SUB CIPHERDIR --passfile … ARGS`.
fn on_volume(v: &Volume, sub: &str, args: &[&str]) -> std::process::Output {
    kmsfs()
        .arg(sub)
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(args)
        .output()
        .expect("kmsfs")
}

fn key(v: &Volume, args: &[&str]) -> std::process::Output {
    on_volume(v, "key", args)
}

fn audit(v: &Volume, args: &[&str]) -> std::process::Output {
    on_volume(v, "audit", args)
}

fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).expect("json")
}

/// (key id, version) of every file under the cipher dir, from `kmsfs key usage --json`.
fn usage(v: &Volume) -> serde_json::Value {
    json(key(v, &["usage", "--json"]))
}

fn errno_of(p: &Path) -> Option<i32> {
    std::fs::read(p).err().and_then(|e| e.raw_os_error())
}

#[test]
fn lifecycle_through_the_mount() {
    let v = Volume::new(&[]);
    let created = json(key(
        &v,
        &[
            "create",
            "--description",
            "finance",
            "--alias",
            "alias/finance",
            "--json",
        ],
    ));
    let fin = created["key_id"].as_str().unwrap().to_string();
    ok(kmsfs()
        .args(["rules"])
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["set", "/finance", "alias/finance"])
        .output()
        .unwrap());

    // Files under /finance use the finance key, others the default key.
    let m = v.mount();
    std::fs::create_dir(m.path("finance")).unwrap();
    std::fs::write(m.path("finance/q1.txt"), b"quarter one").unwrap();
    std::fs::write(m.path("other.txt"), b"other").unwrap();
    m.unmount();
    let u = usage(&v);
    assert_eq!(u["files"][&fin]["1"], 1, "{u}");

    // Disabled key: EACCES on open, other files fine; enabled again: readable.
    ok(key(&v, &["disable", "alias/finance"]));
    let m = v.mount();
    assert_eq!(errno_of(&m.path("finance/q1.txt")), Some(libc::EACCES));
    assert_eq!(std::fs::read(m.path("other.txt")).unwrap(), b"other");
    let e = std::fs::write(m.path("finance/new.txt"), b"x").unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::PermissionDenied,
        "no new file under a disabled key"
    );
    assert!(!m.path("finance/new.txt").exists());
    m.unmount();
    // Both refusals are audited as denials by key state, with the path and the key.
    let denied = ok(audit(&v, &["show", "--denied", "--json"]));
    for (event, path) in [("Open", "/finance/q1.txt"), ("Create", "/finance/new.txt")] {
        let r = denied
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["event"] == event && r["resources"]["path"] == path)
            .unwrap_or_else(|| panic!("no denied {event} of {path} in {denied}"));
        assert_eq!(r["decision"]["by"], "key-state: Disabled", "{r}");
        assert_eq!(r["resources"]["key_id"], fin.as_str(), "{r}");
        assert_eq!(r["errno"], libc::EACCES, "{r}");
    }
    ok(key(&v, &["enable", "alias/finance"]));

    // Rotate: new files use v2, old ones still read.
    assert_eq!(
        json(key(&v, &["rotate", "alias/finance", "--json"]))["version"],
        2
    );
    let m = v.mount();
    assert_eq!(
        std::fs::read(m.path("finance/q1.txt")).unwrap(),
        b"quarter one"
    );
    std::fs::write(m.path("finance/q2.txt"), b"quarter two").unwrap();
    m.unmount();
    let u = usage(&v);
    assert_eq!(
        (
            u["files"][&fin]["1"].as_u64(),
            u["files"][&fin]["2"].as_u64()
        ),
        (Some(1), Some(1)),
        "{u}"
    );

    // Trim refuses while v1 files remain (after retiring v1), and v1 files fail to open.
    ok(key(&v, &["min-decryption-version", "alias/finance", "2"]));
    let o = key(&v, &["trim", "alias/finance", "--below", "2"]);
    assert_eq!(
        o.status.code(),
        Some(20),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m = v.mount();
    // EACCES, as for a disabled key: retiring a version is reversible, not damage.
    assert_eq!(
        errno_of(&m.path("finance/q1.txt")),
        Some(libc::EACCES),
        "retired version must not open"
    );
    assert_eq!(
        std::fs::read(m.path("finance/q2.txt")).unwrap(),
        b"quarter two"
    );
    m.unmount();
    ok(key(&v, &["min-decryption-version", "alias/finance", "1"]));

    // Rewrap: every header at v2, content blocks untouched byte for byte.
    let cipher_files: Vec<_> = walk(&v.cipher);
    let before: Vec<Vec<u8>> = cipher_files
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let o = kmsfs()
        .arg("rewrap")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .arg("--json")
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&ok(o)).unwrap();
    assert_eq!(s["rewrapped"], 1, "{s}");
    for (p, b) in cipher_files.iter().zip(&before) {
        let a = std::fs::read(p).unwrap();
        assert_eq!(a.len(), b.len());
        assert_eq!(a[104..], b[104..], "content of {} changed", p.display());
    }
    // Idempotent.
    let o = kmsfs()
        .arg("rewrap")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .arg("--json")
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&ok(o)).unwrap();
    assert_eq!(s["rewrapped"], 0);
    let u = usage(&v);
    assert_eq!(u["files"][&fin]["2"], 2, "{u}");
    ok(key(&v, &["min-decryption-version", "alias/finance", "2"]));
    ok(key(&v, &["trim", "alias/finance", "--below", "2"]));
    let m = v.mount();
    assert_eq!(
        std::fs::read(m.path("finance/q1.txt")).unwrap(),
        b"quarter one"
    );
    m.unmount();

    // Schedule deletion, cancel: key disabled, re-enable, readable.
    ok(key(
        &v,
        &["schedule-deletion", "alias/finance", "--days", "7"],
    ));
    let m = v.mount();
    assert_eq!(errno_of(&m.path("finance/q2.txt")), Some(libc::EACCES));
    m.unmount();
    ok(key(&v, &["cancel-deletion", "alias/finance"]));
    ok(key(&v, &["enable", "alias/finance"]));

    // Deletion with the window elapsed (test clock): destroyed at mount, files unrecoverable.
    ok(key(&v, &["schedule-deletion", &fin, "--days", "7"]));

    let m = Mount::start_env(
        &v.cipher,
        &v.mnt,
        &v.passfile,
        &[],
        &[("KMSFS_TEST_TIME_OFFSET_SECS", "700000")],
    );
    assert_eq!(errno_of(&m.path("finance/q1.txt")), Some(libc::EIO));
    assert_eq!(std::fs::read(m.path("other.txt")).unwrap(), b"other");
    m.unmount();
    let d = json(key(&v, &["describe", &fin, "--json"]));
    assert_eq!(d["state"], "Destroyed");

    // Every administration command and the automatic destruction are in the audit log, which
    // verifies.
    let events: Vec<String> = v
        .audit_records()
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("").to_string())
        .collect();
    for e in [
        "CreateKey",
        "SetKeyRule",
        "DisableKey",
        "EnableKey",
        "RotateKeyOnDemand",
        "TrimKeyVersions",
        "Rewrap",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
        "DeleteKey",
        "Open",
        "Create",
        "Close",
    ] {
        assert!(events.iter().any(|x| x == e), "no {e} record in {events:?}");
    }
    let o = kmsfs()
        .arg("audit")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .arg("verify")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn bad_key_requests_change_nothing() {
    let v = Volume::new(&[]);
    ok(key(&v, &["create", "--alias", "alias/a"]));
    let before = std::fs::read(v.cipher.join(".kmsfs/keystore")).unwrap();
    for (args, code) in [
        (vec!["describe", "alias/nope"], 21),
        (vec!["describe", "0000"], 21),
        (vec!["create", "--alias", "alias/a"], 20),
        (vec!["schedule-deletion", "alias/a", "--days", "6"], 20),
        (vec!["schedule-deletion", "alias/a", "--days", "31"], 20),
        (
            vec!["rotation", "alias/a", "--enable", "--period-days", "10"],
            20,
        ),
    ] {
        let o = key(&v, &args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    ok(key(&v, &["disable", "alias/a"]));
    let before_rot = std::fs::read(v.cipher.join(".kmsfs/keystore")).unwrap();
    assert_eq!(key(&v, &["rotate", "alias/a"]).status.code(), Some(20));
    assert_eq!(
        std::fs::read(v.cipher.join(".kmsfs/keystore")).unwrap(),
        before_rot
    );
    let bad = v.tmp.path().join("bad-material");
    std::fs::write(&bad, b"too short").unwrap();
    ok(key(&v, &["enable", "alias/a"]));
    let before_imp = std::fs::read(v.cipher.join(".kmsfs/keystore")).unwrap();
    let o = key(
        &v,
        &[
            "import",
            "alias/a",
            "--material-file",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(20));
    assert_eq!(
        std::fs::read(v.cipher.join(".kmsfs/keystore")).unwrap(),
        before_imp
    );
    assert_ne!(before, before_imp);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if n == ".kmsfs" || n.starts_with("kmsfs.") {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else if e.file_type().unwrap().is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

#[test]
fn rekey_gives_fresh_data_keys_and_keeps_content_and_metadata() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let p = m.path("leaked.bin");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&p, &data).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    assert!(
        sh(&format!("setfattr -n user.note -v kept {}", p.display()))
            .status
            .success()
    );
    // A file capability (cap_net_raw, permitted and effective): a chown drops it, so the copy
    // must be given it after its owner.
    const CAP: &str = "0x0100000200200000000000000000000000000000";
    let o = sh(&format!(
        "setfattr -n security.capability -v {CAP} {}",
        p.display()
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before: Vec<Vec<u8>> = walk(&v.cipher)
        .iter()
        .map(|f| std::fs::read(f).unwrap()[8..24].to_vec())
        .collect();
    let o = kmsfs().arg("rekey").arg(&p).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&p).unwrap(), data);
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777,
        0o640
    );
    let x = sh(&format!(
        "getfattr --only-values -n user.note {}",
        p.display()
    ));
    assert_eq!(String::from_utf8_lossy(&x.stdout), "kept");
    let x = sh(&format!(
        "getfattr -e hex --only-values -n security.capability {} | od -An -tx1 | tr -d ' \n'",
        p.display()
    ));
    assert_eq!(
        format!("0x{}", String::from_utf8_lossy(&x.stdout)),
        CAP,
        "capability lost: {}",
        String::from_utf8_lossy(&x.stderr)
    );
    let after: Vec<Vec<u8>> = walk(&v.cipher)
        .iter()
        .map(|f| std::fs::read(f).unwrap()[8..24].to_vec())
        .collect();
    assert_eq!(before.len(), 1);
    assert_eq!(after.len(), 1, "no temporary file left behind");
    assert_ne!(before[0], after[0], "file id (and so the DEK) must change");
    // Not a kmsfs path: refused.
    let o = kmsfs().arg("rekey").arg(v.tmp.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(18));
    drop(m);
}

/// In an append-only directory the re-keyed copy could be made but not renamed over the
/// original nor removed again: refused before any copy (each run left one behind).
#[test]
fn rekey_in_an_append_only_directory_is_refused_and_leaves_nothing() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let d = m.path("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("f"), b"content").unwrap();
    if !sh(&format!("chattr +a {}", d.display())).status.success() {
        drop(m);
        return; // no CAP_LINUX_IMMUTABLE
    }
    let o = kmsfs().arg("rekey").arg(d.join("f")).output().unwrap();
    let listed: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(sh(&format!("chattr -a {}", d.display())).status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("append-only"), "{err}");
    assert_eq!(listed, ["f"], "a copy was left behind");
    let o = kmsfs().arg("rekey").arg(d.join("f")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"content");
    // An append-only file itself: refused the same way.
    assert!(
        sh(&format!("chattr +a {}", d.join("f").display()))
            .status
            .success()
    );
    let o = kmsfs().arg("rekey").arg(d.join("f")).output().unwrap();
    let listed: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        sh(&format!("chattr -a {}", d.join("f").display()))
            .status
            .success()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("append-only"), "{err}");
    assert_eq!(listed, ["f"], "a copy was left behind");
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"content");
    drop(m);
}

/// The key store records the log's closing checkpoint: a log deleted (or replaced) after a clean
/// unmount fails `audit verify`. Retention is set and shown through the same CLI, mounted or not.
#[test]
fn deleted_audit_log_is_detected_and_retention_is_a_setting() {
    let v = Volume::new(&[]);
    let m = v.mount();
    std::fs::write(m.path("f"), b"x").unwrap();
    m.unmount();
    ok(audit(&v, &["verify"]));
    let log = v.cipher.join(".kmsfs/audit");
    let saved = v.tmp.path().join("audit-saved");
    std::fs::rename(&log, &saved).unwrap();
    let o = audit(&v, &["verify"]);
    assert_eq!(
        o.status.code(),
        Some(23),
        "verify must fail on a deleted log"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("does not reach checkpoint"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::fs::rename(&saved, &log).unwrap();
    ok(audit(&v, &["verify"]));

    // Retention: off by default, at least one day, and changeable while mounted.
    assert!(ok(audit(&v, &["retention"])).contains("off"));
    assert_eq!(
        audit(&v, &["retention", "--days", "0"]).status.code(),
        Some(20)
    );
    assert!(ok(audit(&v, &["retention", "--days", "30"])).contains("30 day"));
    // A size limit: at least two segments (32 MiB), given with a unit.
    assert_eq!(
        audit(&v, &["retention", "--max-size", "16M"]).status.code(),
        Some(20)
    );
    assert_eq!(
        audit(&v, &["retention", "--max-size", "10X"]).status.code(),
        Some(2),
        "an unknown unit is a usage error"
    );
    let o = ok(audit(&v, &["retention", "--days", "7", "--max-size", "1G"]));
    assert!(o.contains("7 day(s), at most 1 GiB"), "{o}");
    let m = v.mount();
    let mp = m.path("");
    let o = kmsfs()
        .args(["audit", mp.to_str().unwrap(), "retention", "--json"])
        .output()
        .unwrap();
    let j = json(o);
    assert_eq!(j["retention_days"], 7);
    assert_eq!(j["max_bytes"], 1u64 << 30);
    // The flags given are the whole setting: days alone drop the size limit.
    let o = kmsfs()
        .args([
            "audit",
            mp.to_str().unwrap(),
            "retention",
            "--days",
            "30",
            "--json",
        ])
        .output()
        .unwrap();
    let j = json(o);
    assert_eq!(j["retention_days"], 30);
    assert!(j["max_bytes"].is_null(), "{j}");
    let o = kmsfs()
        .args(["audit", mp.to_str().unwrap(), "retention", "--off"])
        .output()
        .unwrap();
    assert!(ok(o).contains("off"));
    m.unmount();
    let events = ok(audit(
        &v,
        &["show", "--event", "PutAuditSettings", "--json"],
    ));
    // The refused ones too: a change is recorded before it is made (outcome "started"), and a
    // second record says how it ended: "failed" for an invalid setting (--days 0, --max-size
    // 16M), with its errno, else "succeeded".
    let outcomes: Vec<(String, i64)> = events
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                r["outcome"].as_str().unwrap_or("-").to_string(),
                r["errno"].as_i64().unwrap(),
            )
        })
        .collect();
    let expect = |o: &str, e: i64| (o.to_string(), e);
    assert_eq!(
        outcomes,
        [
            expect("started", 0),
            expect("failed", libc::EINVAL.into()),
            expect("started", 0),
            expect("succeeded", 0),
            expect("started", 0),
            expect("failed", libc::EINVAL.into()),
            expect("started", 0),
            expect("succeeded", 0),
            expect("started", 0),
            expect("succeeded", 0),
            expect("started", 0),
            expect("succeeded", 0),
        ],
        "{events}"
    );
    ok(audit(&v, &["verify"]));
}

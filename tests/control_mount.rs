//! The control directory `.kmsfs/` through a real mount: every file reads as documented, writes
//! take effect (or are refused and change nothing), access is decided by key policy for other
//! uids, `tail -f audit` follows the log, `metrics` parses as Prometheus text, and the CLI works
//! through a mount point.
mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

const OTHER: u32 = 4251;

fn ctl(m: &Mount) -> PathBuf {
    m.path(".kmsfs")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()))
}

fn default_key(m: &Mount) -> String {
    json(&ctl(m).join("status"))["default_key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `echo TEXT > FILE` in a shell: (success, stderr).
fn echo_to(p: &Path, text: &str) -> (bool, String) {
    // bash names the errno of a failed write (dash says "I/O error" for any).
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("printf '%s\\n' '{text}' > '{}'", p.display()))
        .output()
        .expect("bash");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn cli(args: &[&str]) -> Output {
    kmsfs().args(args).output().expect("kmsfs")
}

#[test]
fn every_control_file_reads_as_documented() {
    let v = Volume::new(&[]);
    let m = v.mount();
    with_timeout(60, {
        let c = ctl(&m);
        let root = m.path("");
        move || {
            // Hidden from listings of the root, but there by name.
            let names: Vec<String> = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(!names.contains(&".kmsfs".to_string()), "{names:?}");
            let mut top: Vec<String> = std::fs::read_dir(&c)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            top.sort();
            assert_eq!(
                top,
                [
                    "README",
                    "alerts",
                    "aliases",
                    "audit",
                    "keys",
                    "last-error",
                    "metrics",
                    "request",
                    "rules",
                    "status"
                ]
            );
            assert!(read(&c.join("README")).contains("keys/<id>/policy"));
            let st = json(&c.join("status"));
            for k in [
                "volume_id",
                "format_version",
                "uptime_seconds",
                "default_key",
                "counters",
            ] {
                assert!(!st[k].is_null(), "status lacks {k}: {st}");
            }
            let key = st["default_key"].as_str().unwrap().to_string();
            let kd = c.join("keys").join(&key);
            let mut files: Vec<String> = std::fs::read_dir(&kd)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            assert_eq!(
                files,
                [
                    "audit", "grants", "metadata", "policy", "rotate", "rotation", "state"
                ]
            );
            assert_eq!(json(&kd.join("metadata"))["key_id"], key.as_str());
            assert!(json(&kd.join("policy"))["Statement"].is_array());
            assert_eq!(json(&kd.join("rotation"))["enabled"], false);
            assert_eq!(read(&kd.join("state")), "Enabled\n");
            assert_eq!(json(&kd.join("grants")), serde_json::json!([]));
            assert_eq!(json(&c.join("rules")), serde_json::json!([]));
            assert_eq!(read(&c.join("last-error")), "");
            // Stat sizes match what is read (tools that trust st_size see whole documents).
            let md = std::fs::metadata(kd.join("metadata")).unwrap();
            assert_eq!(md.len() as usize, read(&kd.join("metadata")).len());
            // Read-only files refuse writes; nothing can be created inside.
            assert!(!echo_to(&kd.join("metadata"), "x").0);
            assert!(std::fs::write(c.join("new-file"), b"x").is_err());
            assert!(std::fs::create_dir(c.join("keys/new")).is_err());
        }
    });
    m.unmount();
}

#[test]
fn writes_take_effect_and_bad_documents_change_nothing() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let c = ctl(&m);
    let key = default_key(&m);
    let kd = c.join("keys").join(&key);
    std::fs::write(m.path("f.txt"), b"secret\n").unwrap();

    // rotate adds a version; new files use it.
    let before = json(&kd.join("metadata"))["current_version"]
        .as_u64()
        .unwrap();
    assert!(echo_to(&kd.join("rotate"), "now").0);
    let after = json(&kd.join("metadata"))["current_version"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1);

    // rotation settings.
    std::fs::write(
        kd.join("rotation"),
        br#"{"enabled": true, "period_days": 90}"#,
    )
    .unwrap();
    let r = json(&kd.join("rotation"));
    assert_eq!(
        (r["enabled"].clone(), r["period_days"].clone()),
        (true.into(), 90.into())
    );
    let (ok, err) = echo_to(&kd.join("rotation"), r#"{"period_days": 5}"#);
    assert!(!ok, "a 5-day period must be refused");
    assert!(err.contains("Invalid argument"), "{err}");
    assert!(read(&c.join("last-error")).contains("rotation period 5"));
    assert_eq!(json(&kd.join("rotation"))["period_days"], 90);

    // A malformed or invalid policy is refused and the old one stays.
    let old = read(&kd.join("policy"));
    for bad in [
        r#"{"Version": "2012-10-17", "Statement": ["#,
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Nope"}]}"#,
        r#"{"Version": "2012-10-17", "Statement": []}"#,
    ] {
        let src = v.tmp.path().join("bad.json");
        std::fs::write(&src, bad).unwrap();
        let o = sh(&format!(
            "cp '{}' '{}'",
            src.display(),
            kd.join("policy").display()
        ));
        assert!(!o.status.success(), "policy {bad} accepted");
        assert_eq!(read(&kd.join("policy")), old);
    }
    assert!(!read(&c.join("last-error")).is_empty());

    // state: disable makes the file unreadable at once; enable restores it.
    assert!(echo_to(&kd.join("state"), "disable").0);
    assert_eq!(read(&kd.join("state")), "Disabled\n");
    let e = std::fs::read(m.path("f.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    let (ok, _) = echo_to(&kd.join("state"), "frobnicate");
    assert!(!ok);
    assert!(echo_to(&kd.join("state"), "enable").0);
    assert_eq!(std::fs::read(m.path("f.txt")).unwrap(), b"secret\n");

    // rules: a complete list replaces the rules; a bad one changes nothing.
    let created = kmsfs_json(&[
        "key",
        m.path("").to_str().unwrap(),
        "create",
        "--alias",
        "alias/fin",
        "--json",
    ]);
    let fin = created["key_id"].as_str().unwrap().to_string();
    std::fs::write(
        c.join("rules"),
        br#"[{"prefix": "/finance", "key": "alias/fin"}]"#,
    )
    .unwrap();
    assert_eq!(json(&c.join("rules"))[0]["key"], fin.as_str());
    assert!(
        !echo_to(
            &c.join("rules"),
            r#"[{"prefix": "relative", "key": "alias/fin"}]"#
        )
        .0
    );
    assert_eq!(json(&c.join("rules"))[0]["prefix"], "/finance");
    std::fs::create_dir(m.path("finance")).unwrap();
    std::fs::write(m.path("finance/q.txt"), b"q").unwrap();
    let fin_meta = json(&c.join("aliases/fin/metadata"));
    assert_eq!(fin_meta["key_id"], fin.as_str());

    // grants: create from JSON, list, revoke by id.
    std::fs::write(
        c.join("keys").join(&fin).join("grants"),
        format!(r#"{{"grantee": {{"any": false, "uids": [{OTHER}], "users": [], "gids": [], "groups": []}}, "operations": ["kms:Decrypt"]}}"#),
    )
    .unwrap();
    let gs = json(&c.join("keys").join(&fin).join("grants"));
    let gid = gs[0]["id"].as_str().unwrap().to_string();
    assert!(
        echo_to(
            &c.join("keys").join(&fin).join("grants"),
            &format!("revoke {gid}")
        )
        .0
    );
    assert_eq!(
        json(&c.join("keys").join(&fin).join("grants")),
        serde_json::json!([])
    );

    // The request file: a request and its response on one open file.
    let o = sh(&format!(
        "exec 3<>'{}'; printf '%s' '{{\"op\":\"DescribeKey\",\"key\":\"alias/fin\"}}' >&3; cat <&3",
        c.join("request").display()
    ));
    let resp: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(resp["ok"], true);
    assert_eq!(resp["result"]["key_id"], fin.as_str());
    let o = sh(&format!(
        "exec 3<>'{}'; printf '%s' '{{\"op\":\"EnableKey\",\"key\":\"alias/none\"}}' >&3; cat <&3",
        c.join("request").display()
    ));
    let resp: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(resp["error"]["kind"], "not-found");

    // The reserved name: nothing replaces, removes or renames it.
    assert!(std::fs::create_dir(m.path(".kmsfs")).is_err());
    assert!(std::fs::rename(m.path("f.txt"), m.path(".kmsfs")).is_err());
    assert!(std::fs::remove_dir_all(m.path(".kmsfs")).is_err());
    assert!(std::fs::rename(c.join("status"), m.path("status")).is_err());
    assert!(c.join("status").exists());
    m.unmount();

    // Every change above persisted: the key store has them after a remount.
    let m = v.mount();
    let c = ctl(&m);
    assert_eq!(
        json(&c.join("keys").join(&key).join("rotation"))["period_days"],
        90
    );
    assert_eq!(json(&c.join("rules"))[0]["prefix"], "/finance");
    // The control directory left no plaintext name in the cipher directory.
    for e in walk(&v.cipher) {
        let s = e.to_string_lossy();
        for leak in ["f.txt", "finance", "status", "rotation"] {
            assert!(!s.contains(leak), "plaintext name in cipher dir: {s}");
        }
    }
    m.unmount();
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn kmsfs_json(args: &[&str]) -> Value {
    let o = cli(args);
    assert!(
        o.status.success(),
        "kmsfs {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn policy_decides_who_may_use_control_files() {
    let v = Volume::new(&[]);
    std::fs::set_permissions(v.tmp.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let m = v.mount_with(&["--allow-other"]);
    let c = ctl(&m);
    let key = default_key(&m);
    let kd = c.join("keys").join(&key);
    std::fs::write(m.path("f.txt"), b"data\n").unwrap();
    std::fs::set_permissions(m.path("f.txt"), PermissionsExt::from_mode(0o666)).unwrap();

    // The default policy gives the owner (root here) everything and the other uid nothing.
    for f in ["policy", "metadata", "state"] {
        let o = as_uid(OTHER, &format!("cat '{}'", kd.join(f).display()));
        assert!(!o.status.success(), "uid {OTHER} read {f}");
    }
    for (f, text) in [("state", "disable"), ("rotate", "1"), ("policy", "{}")] {
        let o = as_uid(
            OTHER,
            &format!("echo '{text}' > '{}'", kd.join(f).display()),
        );
        assert!(!o.status.success(), "uid {OTHER} wrote {f}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = as_uid(OTHER, &format!("cat '{}'", c.join("audit").display()));
    assert!(!o.status.success(), "uid {OTHER} read the audit log");
    assert_eq!(read(&kd.join("state")), "Enabled\n");
    // Key ids and alias names are not listed to other users (the kernel's cached listing is
    // one for all, so it cannot follow each caller's policy); by name they are reached.
    for d in ["keys", "aliases"] {
        let o = as_uid(OTHER, &format!("ls '{}'", c.join(d).display()));
        assert!(!o.status.success(), "uid {OTHER} listed {d}");
        assert!(std::fs::read_dir(c.join(d)).is_ok(), "the owner lists {d}");
    }
    assert!(
        as_uid(OTHER, &format!("test -d '{}'", kd.display()))
            .status
            .success()
    );

    // A policy written with cp takes effect on the next open: the other uid may read files
    // and the key's metadata, but still not change its state.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Owner", "Effect": "Allow", "Principal": {"Uid": "0"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "Reader", "Effect": "Allow", "Principal": {"Uid": OTHER.to_string()},
             "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:ReadAuditLog"], "Resource": "*"}
        ]
    });
    let src = v.tmp.path().join("p.json");
    std::fs::write(&src, serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
    assert!(
        sh(&format!(
            "cp '{}' '{}'",
            src.display(),
            kd.join("policy").display()
        ))
        .status
        .success()
    );
    assert!(
        as_uid(OTHER, &format!("cat '{}'", m.path("f.txt").display()))
            .status
            .success()
    );
    assert!(
        as_uid(OTHER, &format!("cat '{}'", kd.join("metadata").display()))
            .status
            .success()
    );
    assert!(
        !as_uid(
            OTHER,
            &format!("echo disable > '{}'", kd.join("state").display())
        )
        .status
        .success()
    );
    // The audit log names the denials of the other uid.
    let o = as_uid(OTHER, &format!("cat '{}'", c.join("audit").display()));
    assert!(o.status.success());
    let recs: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(recs.iter().any(|r| r["actor"]["uid"] == OTHER
        && r["decision"]["allowed"] == false
        && r["event"] == "OpenForWrite"));
    assert!(recs.iter().any(|r| r["actor"]["uid"] == OTHER
        && r["event"] == "GetKeyPolicy"
        && r["errno"] == libc::EACCES));
    m.unmount();
}

#[test]
fn tail_follows_the_audit_log() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let audit = ctl(&m).join("audit");
    let out = v.tmp.path().join("tail.out");
    let mut tail = std::process::Command::new("tail")
        .arg("-n")
        .arg("0")
        .arg("-f")
        .arg("-s")
        .arg("0.2")
        .arg(&audit)
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    std::fs::write(m.path("watched.txt"), b"x").unwrap();
    let mut seen = false;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if read(&out).contains("/watched.txt") {
            seen = true;
            break;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(seen, "tail -f showed no record: {:?}", read(&out));
    // Each line is one complete JSON record.
    for l in read(&out).lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    m.unmount();
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let v = Volume::new(&[]);
    let m = v.mount();
    std::fs::write(m.path("a"), b"x").unwrap();
    let _ = std::fs::read(m.path("a")).unwrap();
    let metrics = ctl(&m).join("metrics");
    let script = format!(
        "from prometheus_client.parser import text_string_to_metric_families as p\n\
         fams = {{f.name: f for f in p(open('{}').read())}}\n\
         assert 'kmsfs_opens' in fams, sorted(fams)\n\
         assert 'kmsfs_key_data_keys' in fams, sorted(fams)\n\
         s = [x for x in fams['kmsfs_creates'].samples if x.name == 'kmsfs_creates_total']\n\
         assert s and s[0].value >= 1, s\n\
         assert fams['kmsfs_audit_log_bytes'].samples[0].value > 0, fams['kmsfs_audit_log_bytes']\n\
         assert fams['kmsfs_audit_log_segments'].samples[0].value >= 1\n\
         assert fams['kmsfs_audit_log_max_bytes'].samples[0].value == 0\n\
         print(len(fams))\n",
        metrics.display()
    );
    let o = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "metrics do not parse (python3-prometheus-client installed?): {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        read(&metrics)
    );
    m.unmount();
}

#[test]
fn cli_administers_a_mounted_volume_through_the_control_directory() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let mp = m.path("");
    let mp = mp.to_str().unwrap();
    let cipher = v.cipher.to_str().unwrap();
    // By mount point, and by the cipher directory of the mounted volume (no passphrase needed:
    // the mount decides by key policy).
    let k = kmsfs_json(&["key", mp, "create", "--description", "via mount", "--json"]);
    let id = k["key_id"].as_str().unwrap().to_string();
    let list = kmsfs_json(&["key", cipher, "list", "--json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == id.as_str())
    );
    let r = kmsfs_json(&["key", mp, "rotate", &id, "--json"]);
    assert_eq!(r["version"], 2);
    // Errors keep their exit codes.
    assert_eq!(
        cli(&["key", mp, "describe", "alias/none"]).status.code(),
        Some(21)
    );
    assert_eq!(
        cli(&["key", mp, "schedule-deletion", &id, "--days", "3"])
            .status
            .code(),
        Some(20)
    );
    let pol = cli(&["policy", "get", "--volume", mp, &id]);
    assert!(pol.status.success());
    assert!(String::from_utf8_lossy(&pol.stdout).contains("Statement"));
    let o = cli(&["audit", mp, "verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = cli(&[
        "audit",
        mp,
        "show",
        "--json",
        "--event",
        "RotateKeyOnDemand",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));
    m.unmount();
}

#[test]
fn anomaly_alert_when_a_user_is_denied_too_often() {
    let v = Volume::new(&[]);
    std::fs::set_permissions(v.tmp.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let m = v.mount_with(&["--allow-other"]);
    let c = ctl(&m);
    std::fs::write(m.path("f.txt"), b"data\n").unwrap();
    std::fs::set_permissions(m.path("f.txt"), PermissionsExt::from_mode(0o666)).unwrap();
    // A zero threshold is refused; a good one is stored.
    assert!(!echo_to(&c.join("alerts"), r#"{"denials_per_minute": 0}"#).0);
    assert!(echo_to(&c.join("alerts"), r#"{"denials_per_minute": 3}"#).0);
    assert_eq!(json(&c.join("alerts"))["denials_per_minute"], 3);
    // The default policy lets only the owner in: each of six reads is denied. (Six, so that at
    // least one minute window holds three even if a minute boundary falls in between.)
    for _ in 0..6 {
        let o = as_uid(OTHER, &format!("cat '{}'", m.path("f.txt").display()));
        assert!(!o.status.success());
    }
    let recs: Vec<Value> = read(&c.join("audit"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let alerts: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "AnomalyAlert")
        .collect();
    assert!(
        (1..=2).contains(&alerts.len()),
        "one alert per user and minute: {alerts:?}"
    );
    assert_eq!(alerts[0]["actor"]["uid"], OTHER);
    assert!(alerts[0]["detail"].as_str().unwrap().contains("denials"));
    // The owner's own reads raise nothing (no decrypt threshold set).
    for _ in 0..5 {
        std::fs::read(m.path("f.txt")).unwrap();
    }
    let n = read(&c.join("audit"))
        .lines()
        .filter(|l| l.contains("AnomalyAlert"))
        .count();
    assert_eq!(n, alerts.len());
    m.unmount();
}

#[test]
fn rewrap_through_the_mount_while_a_file_is_open() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let mp = m.path("");
    let mp = mp.to_str().unwrap().to_string();
    for i in 0..5 {
        std::fs::write(m.path(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    // Times from the past: a rewrap changes no content, so it must not make files look modified
    // (backups, make).
    let past = std::time::UNIX_EPOCH + std::time::Duration::new(1_577_836_800, 123_456_789);
    for i in 0..5 {
        let f = std::fs::File::options()
            .write(true)
            .open(m.path(&format!("f{i}")))
            .unwrap();
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(past)
                .set_modified(past),
        )
        .unwrap();
    }
    let held = std::fs::File::open(m.path("f0")).unwrap();
    let key = default_key(&m);
    assert!(echo_to(&ctl(&m).join("keys").join(&key).join("rotate"), "1").0);
    let s = kmsfs_json(&["rewrap", &mp, "--json"]);
    assert_eq!(s["rewrapped"], 5, "{s}");
    let usage = kmsfs_json(&["key", &mp, "usage", "--json"]);
    assert_eq!(usage["files"][&key]["2"], 5, "{usage}");
    assert!(usage["files"][&key].get("1").is_none(), "{usage}");
    // Contents unchanged, also through the handle opened before.
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
    assert_eq!(s, "file 0");
    for i in 0..5 {
        assert_eq!(read(&m.path(&format!("f{i}"))), format!("file {i}"));
    }
    let metrics = read(&ctl(&m).join("metrics"));
    assert!(metrics.contains("kmsfs_rewrap_files_done 5"), "{metrics}");
    // A second run finds nothing to do.
    let s = kmsfs_json(&["rewrap", &mp, "--json"]);
    assert_eq!(
        (s["rewrapped"].clone(), s["already_current"].clone()),
        (0.into(), 5.into())
    );
    drop(held);
    m.unmount();
    // Through a new mount (no cached attributes): the modification times are the old ones.
    let m = v.mount();
    for i in 0..5 {
        let md = std::fs::metadata(m.path(&format!("f{i}"))).unwrap();
        assert_eq!(md.modified().unwrap(), past, "f{i}");
    }
    m.unmount();
}

#[test]
fn key_and_alias_listings_follow_the_key_store_at_once() {
    // Directories are listed without OPENDIR, so the kernel keeps listings in its cache until
    // the directory changes through the mount; `keys/` and `aliases/` change with the key
    // store instead, and must not show a stale listing.
    let v = Volume::new(&[]);
    let m = v.mount();
    let (c, mnt) = (ctl(&m), m.path("").to_str().unwrap().to_string());
    with_timeout(60, move || {
        let (keys, aliases) = (c.join("keys"), c.join("aliases"));
        // Listed twice: the second listing is the kernel's cached one.
        let keys0 = sorted_names(&keys);
        assert_eq!(sorted_names(&keys), keys0);
        let aliases0 = sorted_names(&aliases);
        assert_eq!(sorted_names(&aliases), aliases0);

        let created = kmsfs_json(&["key", &mnt, "create", "--alias", "alias/listed", "--json"]);
        let id = created["key_id"].as_str().unwrap().to_string();
        let keys1 = sorted_names(&keys);
        assert_eq!(keys1.len(), keys0.len() + 1, "{keys1:?}");
        assert!(keys1.contains(&id), "{keys1:?} lacks {id}");
        assert!(sorted_names(&aliases).contains(&"listed".to_string()));

        let o = cli(&["key", &mnt, "alias", "delete", "alias/listed"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(sorted_names(&aliases), aliases0);
        let o = cli(&["key", &mnt, "alias", "create", "alias/direct", &id]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(sorted_names(&aliases).contains(&"direct".to_string()));
    });
    drop(m);
}

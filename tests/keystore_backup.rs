//! Encrypted key-store backups: export, and restore into a volume whose key store is destroyed;
//! no silent rollback; a backup of another volume is refused.
mod common;
use common::*;

fn ks(v: &Volume, args: &[&str]) -> std::process::Output {
    let mut c = kmsfs();
    c.arg("keystore").arg(args[0]).arg(&v.cipher);
    c.args(&args[1..]).arg("--passfile").arg(&v.passfile);
    c.output().unwrap()
}

#[test]
fn export_and_restore_a_destroyed_key_store() {
    let v = Volume::new(&[]);
    let m = v.mount();
    std::fs::write(m.path("kept.txt"), b"still here\n").unwrap();
    m.unmount();
    let backup = v.tmp.path().join("ks.backup");
    let o = ks(&v, &["export", backup.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::metadata(&backup).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(
        !text.contains("volume_secret") && !text.contains("material"),
        "sealed"
    );
    // A second export to the same file is refused.
    assert_eq!(
        ks(&v, &["export", backup.to_str().unwrap()]).status.code(),
        Some(1)
    );

    // Both generations of the key store destroyed: the volume cannot be opened (13).
    for f in ["keystore", "keystore.bak"] {
        let _ = std::fs::write(v.cipher.join(".kmsfs").join(f), b"garbage");
    }
    let o = kmsfs()
        .arg("key")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(13));
    let o = ks(&v, &["restore", backup.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = v.mount();
    assert_eq!(std::fs::read(m.path("kept.txt")).unwrap(), b"still here\n");
    m.unmount();

    // A newer key store is not rolled back without --allow-rollback.
    let o = kmsfs()
        .arg("key")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["create", "--alias", "alias/newer"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = ks(&v, &["restore", backup.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(20),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--allow-rollback"));
    let list = kmsfs()
        .arg("key")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("alias/newer"));
    let o = ks(
        &v,
        &["restore", backup.to_str().unwrap(), "--allow-rollback"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A backup of another volume is refused.
    let other = Volume::new(&[]);
    let o = ks(&other, &["restore", backup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(20), "{}", err(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("belongs to volume"));
}

fn key(v: &Volume, pass: &std::path::Path, args: &[&str]) -> std::process::Output {
    kmsfs()
        .arg("key")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(pass)
        .args(args)
        .output()
        .unwrap()
}

fn passwd(v: &Volume, old: &[&str], new: &std::path::Path, extra: &[&str]) -> std::process::Output {
    kmsfs()
        .arg("passwd")
        .args(old)
        .arg("--new-passfile")
        .arg(new)
        .args(extra)
        .arg(&v.cipher)
        .output()
        .unwrap()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// After a passphrase change, an older backup (which opens with the old passphrase) is still a
/// rollback: refused without --allow-rollback; with it, the replaced key store is kept beside,
/// and the output says which passphrase opens the volume now.
#[test]
fn restore_after_passwd_is_a_rollback() {
    let v = Volume::new(&[]);
    let backup = v.tmp.path().join("ks.backup");
    assert!(
        ks(&v, &["export", backup.to_str().unwrap()])
            .status
            .success()
    );
    let newpass = v.tmp.path().join("new");
    std::fs::write(&newpass, "a new passphrase\n").unwrap();
    let old = ["--passfile", v.passfile.to_str().unwrap()];
    let o = passwd(&v, &old, &newpass, &[]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        key(&v, &newpass, &["create", "--alias", "alias/later"])
            .status
            .success()
    );
    let o = ks(&v, &["restore", backup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(20), "{}", err(&o));
    assert!(err(&o).contains("--allow-rollback"), "{}", err(&o));
    let list = key(&v, &newpass, &["list", "--json"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("alias/later"));
    let o = ks(
        &v,
        &["restore", backup.to_str().unwrap(), "--allow-rollback"],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("when the backup was made"), "{}", err(&o));
    assert!(err(&o).contains("keystore.before-restore"), "{}", err(&o));
    assert!(v.cipher.join(".kmsfs/keystore.before-restore").exists());
}

/// A damaged backup file is reported as the backup, named, exit 13; the volume is untouched.
#[test]
fn damaged_backup_file_is_reported_as_the_backup() {
    use base64::Engine as _;
    let v = Volume::new(&[]);
    let backup = v.tmp.path().join("ks.backup");
    assert!(
        ks(&v, &["export", backup.to_str().unwrap()])
            .status
            .success()
    );
    let mut j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&backup).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut sealed = b64.decode(j["keystore"].as_str().unwrap()).unwrap();
    let n = sealed.len();
    sealed[n - 3] ^= 1;
    j["keystore"] = b64.encode(&sealed).into();
    std::fs::write(&backup, serde_json::to_vec(&j).unwrap()).unwrap();
    let o = ks(&v, &["restore", backup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(13), "{}", err(&o));
    assert!(err(&o).contains(backup.to_str().unwrap()), "{}", err(&o));
    assert!(err(&o).contains("backup"), "{}", err(&o));
    assert!(
        !err(&o).contains("no backup generation opens"),
        "{}",
        err(&o)
    );
    assert!(key(&v, &v.passfile, &["list"]).status.success());
}

/// A backup whose volume config was changed (its key store opens, but was made with another
/// config) is a modified backup, exit 13; one of a newer backup format version, exit 11. The
/// volume is untouched either way.
#[test]
fn modified_or_newer_backup_files_have_their_own_exit_codes() {
    use base64::Engine as _;
    let v = Volume::new(&[]);
    let backup = v.tmp.path().join("ks.backup");
    assert!(
        ks(&v, &["export", backup.to_str().unwrap()])
            .status
            .success()
    );
    let orig: serde_json::Value = serde_json::from_slice(&std::fs::read(&backup).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let config = b64.decode(orig["volume_config"].as_str().unwrap()).unwrap();
    let changed = String::from_utf8(config)
        .unwrap()
        .replace("\"block_size\": 4096", "\"block_size\": 8192");
    let mut j = orig.clone();
    j["volume_config"] = b64.encode(changed.as_bytes()).into();
    std::fs::write(&backup, serde_json::to_vec(&j).unwrap()).unwrap();
    let o = ks(&v, &["restore", backup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(13), "{}", err(&o));
    assert!(
        err(&o).contains("does not match its key store"),
        "{}",
        err(&o)
    );

    let mut j = orig.clone();
    j["version"] = 99.into();
    std::fs::write(&backup, serde_json::to_vec(&j).unwrap()).unwrap();
    let o = ks(&v, &["restore", backup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(11), "{}", err(&o));
    assert!(err(&o).contains("version 99"), "{}", err(&o));
    assert!(key(&v, &v.passfile, &["list"]).status.success());
}

/// Offline commands say so when the key store was opened from keystore.bak.
#[test]
fn offline_commands_warn_when_the_backup_generation_opened() {
    let v = Volume::new(&[]);
    assert!(
        key(&v, &v.passfile, &["create", "--alias", "alias/a"])
            .status
            .success()
    );
    let p = v.cipher.join(".kmsfs/keystore");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 2] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let o = key(&v, &v.passfile, &["list"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("opened the backup generation"),
        "{}",
        err(&o)
    );
    let backup = v.tmp.path().join("ks.backup");
    let o = ks(&v, &["export", backup.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("opened the backup generation"),
        "{}",
        err(&o)
    );
}

/// passwd on a volume with a recovery key, unlocked by passphrase: the store key is kept and a
/// note says what that means; with --new-recovery-key-file a new recovery key (mode 0600)
/// replaces the old one, and no note.
#[test]
fn passwd_with_a_recovery_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cipher = tmp.path().join("c");
    let pass = tmp.path().join("p");
    std::fs::write(&pass, "first passphrase\n").unwrap();
    let rk1 = tmp.path().join("rk1");
    let o = kmsfs()
        .arg("init")
        .arg("--passfile")
        .arg(&pass)
        .arg("--recovery-key-file")
        .arg(&rk1)
        .arg(&cipher)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let v = Volume {
        tmp,
        cipher,
        mnt: std::path::PathBuf::new(),
        passfile: pass.clone(),
    };
    let second = v.tmp.path().join("second");
    std::fs::write(&second, "second passphrase\n").unwrap();
    let o = passwd(&v, &["--passfile", pass.to_str().unwrap()], &second, &[]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("still open with the old"), "{}", err(&o));
    let third = v.tmp.path().join("third");
    std::fs::write(&third, "third passphrase\n").unwrap();
    let rk2 = v.tmp.path().join("rk2");
    let o = passwd(
        &v,
        &["--passfile", second.to_str().unwrap()],
        &third,
        &["--new-recovery-key-file", rk2.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(!err(&o).contains("still open with the old"), "{}", err(&o));
    let md = std::fs::metadata(&rk2).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o600
    );
    let with_rk = |f: &std::path::Path| {
        kmsfs()
            .arg("key")
            .arg(&v.cipher)
            .arg("--recovery-key-file")
            .arg(f)
            .arg("list")
            .output()
            .unwrap()
    };
    assert_eq!(with_rk(&rk1).status.code(), Some(12));
    assert!(with_rk(&rk2).status.success());
    // A wrong old passphrase: nothing written, and no key file left behind.
    let rk3 = v.tmp.path().join("rk3");
    let o = passwd(
        &v,
        &["--passfile", second.to_str().unwrap()],
        &third,
        &["--new-recovery-key-file", rk3.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(12), "{}", err(&o));
    assert!(!rk3.exists());
}

/// A scheduled deletion whose waiting period ended cannot be cancelled (exit 20).
#[test]
fn cancel_deletion_after_the_window_is_refused() {
    let v = Volume::new(&[]);
    assert!(
        key(&v, &v.passfile, &["create", "--alias", "alias/doomed"])
            .status
            .success()
    );
    let o = key(
        &v,
        &v.passfile,
        &["schedule-deletion", "alias/doomed", "--days", "7"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let o = kmsfs()
        .env("KMSFS_TEST_TIME_OFFSET_SECS", (8 * 86_400).to_string())
        .arg("key")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["cancel-deletion", "alias/doomed"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(20), "{}", err(&o));
    assert!(err(&o).contains("ended on"), "{}", err(&o));
}

//! The command line in everyday use: relative file names, closed pipes, read-only and dead
//! mounts, `-o` options, signals a caller ignored, a missing fusermount3, and the messages and
//! exit codes of the mistakes users make (found by a review of 2026-12-06; each test but one
//! guard failed before its fix). Every command runs under `timeout`; every mount is undone by
//! a guard.
mod common;
use common::*;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kmsfs::cli::exit_code as code;

/// `kmsfs ARGS` under `timeout SECS` (a hung command fails the test instead of hanging it).
fn k(secs: u64) -> Command {
    let mut c = Command::new("/usr/bin/timeout");
    c.arg(secs.to_string())
        .arg(bin())
        .env("KMSFS_INSECURE_FAST_KDF", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    c
}

fn out(mut c: Command) -> Output {
    c.output().expect("run kmsfs")
}

fn code_of(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A stdout whose reader is gone (as `| head -1` once it has its line).
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: a two-element array for pipe(2).
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: closing the read end we own.
    unsafe { libc::close(fds[0]) };
    // SAFETY: the write end becomes the child's stdout (Stdio takes ownership).
    unsafe { <Stdio as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) }
}

#[test]
fn keystore_export_to_a_relative_file_succeeds() {
    let v = Volume::new(&[]);
    let o = out({
        let mut c = k(60);
        c.current_dir(v.tmp.path())
            .args(["keystore", "export"])
            .arg(&v.cipher)
            .arg("backup.kmsks")
            .arg("--passfile")
            .arg(&v.passfile);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    let md = std::fs::metadata(v.tmp.path().join("backup.kmsks")).expect("the backup exists");
    assert!(md.len() > 0);
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
}

#[test]
fn unlock_flags_are_taken_after_the_subcommand_too() {
    // `kmsfs key VOL list --passfile F`, as users write it (clap took the unlock flags only
    // before the subcommand; after it they were a usage error, exit 2).
    let v = Volume::new(&[]);
    let run = |args: &[&str]| {
        out({
            let mut c = k(60);
            c.arg("key").arg(&v.cipher).args(args);
            c.arg("--passfile").arg(&v.passfile);
            c
        })
    };
    let o = run(&["list", "--json"]);
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let id = list[0]["key_id"].as_str().expect("a key id").to_owned();
    let o = run(&["alias", "create", "alias/aws/x", &id]);
    assert_eq!(code_of(&o), code::INVALID_REQUEST, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("reserved"), "{}", text(&o.stderr));
    // Still one source of the passphrase: a second one after the subcommand is refused.
    let o = run(&["list", "--recovery-key"]);
    assert_eq!(code_of(&o), code::USAGE, "{}", text(&o.stderr));
    // ... and so is one on the other side of it (clap checks conflicts on one side only: the
    // second source was ignored, exit 0, or asked for at the terminal).
    for (before, after) in [
        (vec!["--passfile", "P"], vec!["--extpass", "false"]),
        (vec!["--passfile", "P"], vec!["--recovery-key"]),
        (vec!["--recovery-key-file", "P"], vec!["--passfile", "P"]),
    ] {
        let p = v.passfile.to_str().unwrap();
        let fill = |a: Vec<&'static str>| a.into_iter().map(|x| if x == "P" { p } else { x });
        let o = out({
            let mut c = k(60);
            c.arg("key").arg(&v.cipher).args(fill(before.clone()));
            c.arg("list").args(fill(after.clone()));
            c
        });
        assert_eq!(
            code_of(&o),
            code::USAGE,
            "{before:?} {after:?}: {}",
            text(&o.stderr)
        );
        assert!(
            text(&o.stderr).contains("cannot be used together"),
            "{}",
            text(&o.stderr)
        );
    }
    // `kmsfs grant` takes --volume after its subcommand as `kmsfs policy` does, and says so
    // when it is missing.
    let grant = |vol: bool| {
        out({
            let mut c = k(60);
            c.args(["grant", "list", "--json", &id]);
            if vol {
                c.arg("--volume").arg(&v.cipher);
            }
            c.arg("--passfile")
                .arg(&v.passfile)
                .env_remove("KMSFS_VOLUME");
            c
        })
    };
    let o = grant(true);
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    let o = grant(false);
    assert_eq!(code_of(&o), code::USAGE, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--volume"), "{}", text(&o.stderr));
}

#[test]
fn rekey_of_a_bare_file_name_reports_success() {
    let v = Volume::new(&[]);
    let m = v.mount();
    std::fs::write(m.path("doc.txt"), b"secret").unwrap();
    let o = out({
        let mut c = k(60);
        c.current_dir(&v.mnt).args(["rekey", "doc.txt"]);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("re-keyed 1 file(s)"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(std::fs::read(m.path("doc.txt")).unwrap(), b"secret");
    let audit = std::fs::read_to_string(m.path(".kmsfs/audit")).unwrap();
    assert!(
        audit.contains("/.kmsfs-rekey."),
        "the copy was made and renamed over it"
    );
    drop(m);
}

/// The copy a killed rekey left beside its file (`.kmsfs-rekey.PID.tmp`, PID gone) is removed
/// by the next rekey in that directory; one of a live process is left alone.
#[test]
fn rekey_removes_copies_left_by_killed_runs() {
    let v = Volume::new(&[]);
    let m = v.mount();
    std::fs::write(m.path("doc.txt"), b"secret").unwrap();
    // A pid above the kernel's limit (4194304 at most) belongs to no process.
    let stale = m.path(".kmsfs-rekey.99999999.tmp");
    let live = m.path(format!(".kmsfs-rekey.{}.tmp", std::process::id()).as_str());
    std::fs::write(&stale, b"half a copy").unwrap();
    std::fs::write(&live, b"another run's copy").unwrap();
    let o = out({
        let mut c = k(60);
        c.current_dir(&v.mnt).args(["rekey", "doc.txt"]);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(!stale.exists());
    assert!(live.exists());
    assert_eq!(std::fs::read(m.path("doc.txt")).unwrap(), b"secret");
    drop(m);
}

#[test]
fn writing_to_a_closed_pipe_ends_quietly_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let v = Volume::new(&[]);
    for args in [
        vec!["completions".to_string(), "bash".into()],
        // An offline administration session: it still ends cleanly (closing checkpoint).
        vec![
            "key".into(),
            v.cipher.display().to_string(),
            "--passfile".into(),
            v.passfile.display().to_string(),
            "list".into(),
        ],
    ] {
        let o = {
            let mut c = Command::new(bin());
            c.args(&args)
                .env("KMSFS_INSECURE_FAST_KDF", "1")
                .stdin(Stdio::null())
                .stdout(closed_pipe())
                .stderr(Stdio::piped());
            c.output().unwrap()
        };
        assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            o.status
        );
    }
}

#[test]
fn init_to_a_closed_stdout_shows_the_recovery_key_on_stderr_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let o = {
        let mut c = Command::new(bin());
        c.args(["init", "--passfile"])
            .arg(&pass)
            .arg(tmp.path().join("c"))
            .env("KMSFS_INSECURE_FAST_KDF", "1")
            .stdin(Stdio::null())
            .stdout(closed_pipe())
            .stderr(Stdio::piped());
        c.output().unwrap()
    };
    let err = text(&o.stderr);
    assert_eq!(code_of(&o), code::ERROR, "{err}");
    assert!(err.contains("Your recovery key"), "{err}");
    assert!(err.contains("it was shown on stderr"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Shown only once, a recovery key must not go to /dev/null (`passwd --new-recovery-key
/// >/dev/null` revoked the old key and lost the new one: found by a second review).
#[test]
fn a_recovery_key_is_not_shown_into_dev_null() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let newpass = tmp.path().join("new");
    std::fs::write(&newpass, "pw2\n").unwrap();
    let c = tmp.path().join("c");
    let run = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("KMSFS_INSECURE_FAST_KDF", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.output().unwrap()
    };
    let o = run(&[
        "init".as_ref(),
        "--passfile".as_ref(),
        pass.as_os_str(),
        c.as_os_str(),
    ]);
    let err = text(&o.stderr);
    assert_eq!(code_of(&o), code::ERROR, "{err}");
    assert!(err.contains("Your recovery key"), "{err}");
    let o = run(&[
        "passwd".as_ref(),
        "--passfile".as_ref(),
        pass.as_os_str(),
        "--new-passfile".as_ref(),
        newpass.as_os_str(),
        "--new-recovery-key".as_ref(),
        c.as_os_str(),
    ]);
    let err = text(&o.stderr);
    assert_eq!(code_of(&o), code::ERROR, "{err}");
    assert!(err.contains("New recovery key"), "{err}");
    assert!(err.contains("the passphrase was changed"), "{err}");
}

#[test]
fn a_failed_init_leaves_no_recovery_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let rk = tmp.path().join("recovery.key");
    let init = |extra: &[&str]| {
        out({
            let mut c = k(60);
            c.args(["init", "--passfile"])
                .arg(&pass)
                .args(extra)
                .arg("--recovery-key-file")
                .arg(&rk)
                .arg(tmp.path().join("c"));
            c
        })
    };
    let o = init(&["--block-size", "1000"]);
    assert_ne!(code_of(&o), code::OK);
    assert!(!rk.exists(), "no empty recovery key file is left");
    let o = init(&[]);
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(std::fs::metadata(&rk).unwrap().len() > 0);
}

#[test]
fn a_read_only_mount_answers_read_only_requests_and_refuses_changes_clearly() {
    let v = Volume::new(&[]);
    // Keys made within one second: listed in the key store's order, as ListKeys gives them
    // (the read-only listing sorted them by id within a second: found by a review).
    for n in 0..4 {
        let o = out({
            let mut c = k(30);
            c.arg("key")
                .arg(&v.cipher)
                .arg("--passfile")
                .arg(&v.passfile)
                .args(["create", "--description", &format!("k{n}")]);
            c
        });
        assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    }
    let rw_list = {
        let m = v.mount();
        let o = out({
            let mut c = k(30);
            c.arg("key").arg(&v.mnt).args(["--json", "list"]);
            c
        });
        drop(m);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let m = v.mount_with(&["--ro"]);
    let run = |args: &[&str]| {
        out({
            let mut c = k(30);
            for a in args {
                if *a == "MNT" {
                    c.arg(&v.mnt);
                } else {
                    c.arg(a);
                }
            }
            c
        })
    };
    let o = run(&["key", "MNT", "--json", "list"]);
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    let keys: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = keys[0]["key_id"].as_str().unwrap().to_string();
    assert_eq!(keys[0]["is_default"], true);
    let ids = |l: &serde_json::Value| -> Vec<String> {
        l.as_array()
            .unwrap()
            .iter()
            .map(|k| k["key_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&keys), ids(&rw_list));
    // The cipher directory goes through the mount too.
    let o = out({
        let mut c = k(30);
        c.arg("key").arg(&v.cipher).arg("list");
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&id));
    for args in [
        vec!["key", "MNT", "describe", &id],
        vec!["rules", "MNT", "list"],
    ] {
        let o = run(&args);
        assert_eq!(code_of(&o), code::OK, "{args:?}: {}", text(&o.stderr));
    }
    let o = out({
        let mut c = k(30);
        c.args(["policy", "get", "--volume"]).arg(&v.mnt).arg(&id);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("Statement"), "{}", text(&o.stdout));
    let o = run(&["key", "MNT", "describe", "alias/none"]);
    assert_eq!(code_of(&o), code::NOT_FOUND, "{}", text(&o.stderr));
    for args in [
        vec!["key", "MNT", "create"],
        vec!["audit", "MNT", "verify"],
        vec!["audit", "MNT", "retention"],
    ] {
        let o = run(&args);
        let err = text(&o.stderr);
        assert_eq!(code_of(&o), code::INVALID_REQUEST, "{args:?}: {err}");
        assert!(err.contains("is read-only"), "{args:?}: {err}");
        assert!(err.contains("remount read-write"), "{args:?}: {err}");
    }
    drop(m);
}

#[test]
fn after_a_crash_key_commands_name_the_dead_mount_and_how_to_clear_it() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let m = v.mount();
    let mnt = m.kill9_leaving_the_mount();
    for (vol, args) in [
        (&v.cipher, vec!["key", "list"]),
        (&v.cipher, vec!["audit", "verify"]),
        (&v.mnt, vec!["key", "list"]),
    ] {
        let o = out({
            let mut c = k(30);
            c.arg(args[0])
                .arg(vol)
                .arg("--passfile")
                .arg(&v.passfile)
                .args(&args[1..]);
            c
        });
        let err = text(&o.stderr);
        assert_eq!(code_of(&o), code::NOT_MOUNTED, "{args:?}: {err}");
        assert!(err.contains("is gone"), "{err}");
        assert!(err.contains("kmsfs unmount"), "{err}");
    }
    let o = out({
        let mut c = k(30);
        c.arg("unmount").arg(&mnt);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    let o = out({
        let mut c = k(30);
        c.arg("key")
            .arg(&v.cipher)
            .arg("--passfile")
            .arg(&v.passfile)
            .arg("list");
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
}

/// Mounting again right after a kill clears the dead mount, also while the kernel still answers
/// `stat` of the mount point from the attributes it cached before the kill (it did for up to
/// 30 s, and the mount was refused as "already a mount point": found by a review).
#[test]
fn mounting_again_right_after_a_kill_clears_the_dead_mount() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let m = v.mount();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(v.mnt.join("f")).unwrap();
        f.write_all(b"kept").unwrap();
        f.sync_all().unwrap();
    }
    std::fs::metadata(&v.mnt).unwrap();
    let mnt = m.kill9_leaving_the_mount();
    let o = out({
        let mut c = k(30);
        c.arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg(&v.cipher)
            .arg(&mnt);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("daemon that is gone"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"kept");
    let o = out({
        let mut c = k(30);
        c.arg("unmount").arg(&mnt);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
}

#[test]
fn a_non_utf8_cipher_dir_is_refused_at_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, format!("{PASS}\n")).unwrap();
    let mut name = tmp.path().as_os_str().to_owned().into_vec();
    name.extend_from_slice(b"/caf\xe9");
    let cipher = std::path::PathBuf::from(OsString::from_vec(name));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _g = Unmounter(mnt.clone());
    let o = out({
        let mut c = k(60);
        c.args(["init", "--no-recovery-key", "--passfile"])
            .arg(&pass)
            .arg(&cipher);
        c
    });
    assert!(o.status.success());
    let o = out({
        let mut c = k(60);
        c.arg("mount")
            .arg("--passfile")
            .arg(&pass)
            .arg(&cipher)
            .arg(&mnt);
        c
    });
    let err = text(&o.stderr);
    assert_eq!(code_of(&o), code::ERROR, "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(!is_mounted(&mnt));
    // Offline, the volume works as before.
    let o = out({
        let mut c = k(30);
        c.arg("key")
            .arg(&cipher)
            .arg("--passfile")
            .arg(&pass)
            .arg("list");
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
}

#[test]
fn mount_option_allow_other_lets_other_users_in() {
    let v = Volume::new(&[]);
    std::fs::set_permissions(v.tmp.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let m = v.mount_with(&["-o", "allow_other"]);
    std::fs::write(m.path("f"), b"x").unwrap();
    assert!(mount_options(&v.mnt).contains(&"allow_other".to_string()));
    let o = as_uid(65534, &format!("ls '{}'", m.mnt.display()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "f");
    drop(m);
}

#[test]
fn auto_unmount_without_allow_other_is_explained() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let o = out({
        let mut c = k(30);
        c.arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .args(["-o", "auto_unmount"])
            .arg(&v.cipher)
            .arg(&v.mnt);
        c
    });
    let err = text(&o.stderr);
    assert_eq!(code_of(&o), code::MOUNT_FAILED, "{err}");
    assert!(err.contains("auto_unmount needs --allow-other"), "{err}");
    assert!(!err.contains("acl != Owner"), "{err}");
}

#[test]
fn a_foreground_mount_started_with_sighup_ignored_stays_mounted_on_sighup() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    // What `nohup kmsfs mount -f …` does: SIGHUP ignored before exec.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "trap '' HUP; exec {} mount -f --passfile '{}' '{}' '{}'",
            bin(),
            v.passfile.display(),
            v.cipher.display(),
            v.mnt.display()
        ))
        .env("KMSFS_INSECURE_FAST_KDF", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&v.mnt) {
        assert!(Instant::now() < deadline, "not mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(1000));
    let still = is_mounted(&v.mnt);
    // SIGTERM still unmounts.
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&v.mnt) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = !is_mounted(&v.mnt);
    let _ = child.kill();
    let _ = child.wait();
    assert!(still, "SIGHUP was ignored by the caller: the mount stays");
    assert!(gone, "SIGTERM unmounts");
}

#[test]
fn unmount_without_fusermount3_falls_back_to_umount2_for_root() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let empty = v.tmp.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    let o = out({
        let mut c = k(60);
        c.env("PATH", &empty)
            .arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg(&v.cipher)
            .arg(&v.mnt);
        c
    });
    assert!(o.status.success(), "root mounts without fusermount3");
    let o = out({
        let mut c = k(30);
        c.env("PATH", &empty).arg("unmount").arg(&v.mnt);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(!is_mounted(&v.mnt));
    // `unmount` waited for the daemon: the volume can be locked at once.
    assert!(server_pid(&v.cipher).is_none());
}

/// A request on the unmounted volume, so that its audit log has records.
fn some_records(v: &Volume) {
    let o = out({
        let mut c = k(30);
        c.arg("key")
            .arg(&v.cipher)
            .arg("--passfile")
            .arg(&v.passfile)
            .arg("list");
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
}

#[test]
fn audit_since_takes_rfc3339_with_an_offset() {
    let v = Volume::new(&[]);
    some_records(&v);
    let o = out({
        let mut c = k(30);
        c.arg("audit")
            .arg(&v.cipher)
            .arg("--passfile")
            .arg(&v.passfile)
            .args(["show", "--since", "2000-01-01T08:00:00+01:00"]);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(!o.stdout.is_empty(), "every record is after 2000");
}

#[test]
fn idle_zero_means_no_idle_unmount() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let o = out({
        let mut c = k(60);
        c.arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .args(["--idle", "0s"])
            .arg(&v.cipher)
            .arg(&v.mnt);
        c
    });
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(is_mounted(&v.mnt), "--idle 0 is off");
    let o = out({
        let mut c = k(30);
        c.arg("unmount").arg(&v.mnt);
        c
    });
    assert!(o.status.success());
}

#[test]
fn fsck_and_info_of_a_mount_point_name_the_cipher_directory() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let cipher = v.cipher.canonicalize().unwrap();
    for (args, want) in [
        (vec!["info"], code::NOT_A_VOLUME),
        (vec!["fsck", "--passfile"], code::ALREADY_MOUNTED),
    ] {
        let o = out({
            let mut c = k(30);
            c.args(&args);
            if args.len() > 1 {
                c.arg(&v.passfile);
            }
            c.arg(&v.mnt);
            c
        });
        let err = text(&o.stderr);
        assert_eq!(code_of(&o), want, "{args:?}: {err}");
        assert!(
            err.contains("is the mount point of the kmsfs volume"),
            "{err}"
        );
        assert!(err.contains(&*cipher.to_string_lossy()), "{err}");
        assert!(!err.contains("kmsfs init"), "{err}");
    }
    drop(m);
}

#[test]
fn a_command_at_its_passphrase_prompt_does_not_hold_the_volume() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    // An offline `kmsfs key` waiting for its passphrase.
    let mut admin = {
        let mut c = k(30);
        c.arg("key")
            .arg(&v.cipher)
            .arg("--extpass")
            .arg(format!("sleep 4; echo '{PASS}'"))
            .arg("list")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    let o = out({
        let mut c = k(30);
        c.arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg(&v.cipher)
            .arg(&v.mnt);
        c
    });
    let _ = admin.wait();
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    assert!(is_mounted(&v.mnt));
    let o = out({
        let mut c = k(30);
        c.arg("unmount").arg(&v.mnt);
        c
    });
    assert!(o.status.success());
    // The lock held by a command (here: this test), the volume mounted nowhere: said so.
    let lock = std::fs::File::open(v.cipher.join(".kmsfs/mount.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let o = out({
        let mut c = k(30);
        c.arg("mount")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg(&v.cipher)
            .arg(&v.mnt);
        c
    });
    drop(lock);
    let err = text(&o.stderr);
    assert_eq!(code_of(&o), code::ALREADY_MOUNTED, "{err}");
    assert!(err.contains("in use by another kmsfs command"), "{err}");
    assert!(!is_mounted(&v.mnt));
}

#[test]
fn audit_show_denied_by_policy_exits_22_naming_the_action() {
    let v = Volume::new(&[]);
    std::fs::set_permissions(v.tmp.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let m = v.mount_with(&["--allow-other"]);
    let run = |sub: &str| {
        as_uid(
            65534,
            &format!(
                "KMSFS_INSECURE_FAST_KDF=1 /usr/bin/timeout 30 {} audit '{}' {sub}",
                bin(),
                v.mnt.display()
            ),
        )
    };
    assert_eq!(code_of(&run("verify")), code::ACCESS_DENIED);
    for sub in ["show", "tail", "export -"] {
        let o = run(sub);
        let err = text(&o.stderr);
        assert_eq!(code_of(&o), code::ACCESS_DENIED, "{sub}: {err}");
        assert!(err.contains("kms:ReadAuditLog"), "{sub}: {err}");
    }
    drop(m);
}

#[test]
fn audit_export_writes_a_private_file() {
    let v = Volume::new(&[]);
    some_records(&v);
    let file = v.tmp.path().join("log.jsonl");
    let o = out({
        let mut c = k(30);
        c.arg("audit")
            .arg(&v.cipher)
            .arg("--passfile")
            .arg(&v.passfile)
            .arg("export")
            .arg(&file);
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
    let md = std::fs::metadata(&file).unwrap();
    assert!(md.len() > 0);
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
}

#[test]
fn audit_tail_follow_through_a_mount_adds_one_read_record() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let o = out({
        let mut c = k(4);
        c.arg("audit").arg(&v.mnt).args(["tail", "-n", "0", "-f"]);
        c
    });
    let shown = text(&o.stdout);
    // Nothing happened on the mount: its own single open is not even shown (it was read
    // before it was followed), and no poll adds another.
    assert!(!shown.contains("ReadAuditLog"), "{shown}");
    let audit = std::fs::read_to_string(m.path(".kmsfs/audit")).unwrap();
    let reads = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "ReadAuditLog")
        .count();
    assert!(
        reads <= 2,
        "one open for tail -f, one for this read: {reads}"
    );
    drop(m);
}

/// A guard for the one-handle `tail -f` (it passed before as well): new records still come.
#[test]
fn audit_tail_follow_through_a_mount_shows_new_records() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let tail = {
        let mut c = k(6);
        c.arg("audit")
            .arg(&v.mnt)
            .args(["tail", "-n", "0", "-f"])
            .stdout(Stdio::piped());
        c.spawn().unwrap()
    };
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(m.path("new-file"), b"x").unwrap();
    let o = tail.wait_with_output().unwrap();
    let shown = text(&o.stdout);
    assert!(shown.contains("/new-file"), "{shown}");
    drop(m);
}

#[test]
fn a_second_request_on_the_same_open_request_file_gets_its_response() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let script = format!(
        "exec 3<>'{}'; echo '{{\"op\":\"ListKeys\"}}' >&3; cat <&3 >/dev/null; \
         echo '{{\"op\":\"GetAuditSettings\"}}' >&3; cat <&3",
        m.path(".kmsfs/request").display()
    );
    let o = sh(&script);
    assert!(o.status.success());
    let resp: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a response");
    assert_eq!(resp["ok"], true, "{resp}");
    drop(m);
}

/// The other commands that unlock an unmounted volume (`passwd`, `upgrade`, `keystore`) read
/// their passphrase before taking the volume lock too: a mount meanwhile goes ahead, and the
/// command is then refused (exit 19) with the volume unchanged.
#[test]
fn passwd_upgrade_and_keystore_at_their_prompt_do_not_hold_the_volume() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let newpass = v.tmp.path().join("new-pass");
    std::fs::write(&newpass, "another passphrase\n").unwrap();
    let backup = v.tmp.path().join("ks.backup");
    let slow = format!("sleep 3; echo '{PASS}'");
    let commands: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "passwd".into(),
            "--extpass".into(),
            slow.clone().into(),
            "--new-passfile".into(),
            newpass.clone().into(),
            v.cipher.clone().into(),
        ],
        vec![
            "upgrade".into(),
            "--extpass".into(),
            slow.clone().into(),
            v.cipher.clone().into(),
        ],
        vec![
            "keystore".into(),
            "export".into(),
            v.cipher.clone().into(),
            backup.clone().into(),
            "--extpass".into(),
            slow.clone().into(),
        ],
    ];
    for args in commands {
        let mut c = k(30);
        c.args(&args).stdout(Stdio::null()).stderr(Stdio::piped());
        let admin = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let o = out({
            let mut c = k(30);
            c.arg("mount")
                .arg("--passfile")
                .arg(&v.passfile)
                .arg(&v.cipher)
                .arg(&v.mnt);
            c
        });
        let a = admin.wait_with_output().unwrap();
        assert_eq!(code_of(&o), code::OK, "{args:?}: {}", text(&o.stderr));
        assert_eq!(
            code_of(&a),
            code::ALREADY_MOUNTED,
            "{args:?}: {}",
            text(&a.stderr)
        );
        let o = out({
            let mut c = k(30);
            c.arg("unmount").arg(&v.mnt);
            c
        });
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    assert!(!backup.exists());
    // The passphrase did not change.
    let o = out({
        let mut c = k(30);
        c.arg("key")
            .arg(&v.cipher)
            .arg("--passfile")
            .arg(&v.passfile)
            .arg("list");
        c
    });
    assert_eq!(code_of(&o), code::OK, "{}", text(&o.stderr));
}

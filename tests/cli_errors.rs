//! Exit codes of the command line (src/cli/exit_code.rs, a promised interface) for the errors a
//! user meets, and the daemonized mount. Every command runs under a time limit; any mount made
//! here is undone by a guard, also when a test fails.
mod common;
mod support;
use common::*;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kmsfs::cli::exit_code as code;

/// Runs `cmd` with a time limit (killing it on expiry); stdout and stderr are captured.
fn run(mut cmd: Command, secs: u64) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("spawn");
    // Drain the pipes on threads: a daemonized child may keep them open for a while.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes close when the process (and any daemon it left, after detaching) let go.
    let join = |t: std::thread::JoinHandle<Vec<u8>>| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "{what}: output pipes stay open");
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().unwrap_or_default()
    };
    Output {
        status,
        stdout: join(t_out),
        stderr: join(t_err),
    }
}

fn code_of(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code and that the command said something on stderr.
fn expect(o: &Output, want: i32, what: &str) {
    assert_eq!(
        code_of(o),
        want,
        "{what}: exit code; stderr:\n{}",
        stderr(o)
    );
    assert!(stderr(o).contains("kmsfs:"), "{what}: no message on stderr");
}

fn mount_cmd(v: &Volume, passfile: &Path, mnt: &Path, foreground: bool) -> Command {
    let mut c = kmsfs();
    c.arg("mount");
    if foreground {
        c.arg("-f");
    }
    c.arg("--passfile").arg(passfile).arg(&v.cipher).arg(mnt);
    c
}

#[test]
fn wrong_passphrase_is_12() {
    let v = Volume::new(&[]);
    let wrong = v.tmp.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let _g = Unmounter(v.mnt.clone());
    for fg in [false, true] {
        let o = run(mount_cmd(&v, &wrong, &v.mnt, fg), 60);
        expect(
            &o,
            code::WRONG_PASSPHRASE,
            if fg { "mount -f" } else { "mount" },
        );
        assert!(!is_mounted(&v.mnt));
    }
    // The volume is not locked by the failed attempt: the right passphrase mounts.
    let m = v.mount();
    drop(m);
}

#[test]
fn not_a_volume_is_10() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "x\n").unwrap();
    let _g = Unmounter(mnt.clone());
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("file"), "x").unwrap();
    for dir in [empty, plain, tmp.path().join("missing")] {
        let mut c = kmsfs();
        c.arg("mount")
            .arg("--passfile")
            .arg(&pass)
            .arg(&dir)
            .arg(&mnt);
        expect(
            &run(c, 30),
            code::NOT_A_VOLUME,
            &format!("mount {}", dir.display()),
        );
        let mut c = kmsfs();
        c.arg("info").arg(&dir);
        expect(
            &run(c, 30),
            code::NOT_A_VOLUME,
            &format!("info {}", dir.display()),
        );
    }
    assert!(!is_mounted(&mnt));
}

#[test]
fn bad_mount_point_is_14() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let missing = v.tmp.path().join("no-such-dir");
    expect(
        &run(mount_cmd(&v, &v.passfile, &missing, false), 30),
        code::MOUNTPOINT,
        "missing mount point",
    );
    let file = v.tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    expect(
        &run(mount_cmd(&v, &v.passfile, &file, false), 30),
        code::MOUNTPOINT,
        "mount point is a file",
    );
    assert!(!is_mounted(&missing) && !is_mounted(&file));
}

#[test]
fn mount_point_already_mounted_is_14() {
    let a = Volume::new(&[]);
    let b = Volume::new(&[]);
    let m = a.mount();
    let _g = Unmounter(a.mnt.clone());
    for fg in [false, true] {
        let o = run(mount_cmd(&b, &b.passfile, &a.mnt, fg), 30);
        expect(&o, code::MOUNTPOINT, "mount on a mount point");
        assert!(
            stderr(&o).contains("already a mount point"),
            "{}",
            stderr(&o)
        );
    }
    // The first mount is untouched.
    let p = m.path("still-there");
    with_timeout(10, move || std::fs::write(&p, b"ok").unwrap());
    let err = support::unmount(m);
    assert!(!err.contains("ERROR"), "{err}");
    assert!(!is_mounted(&a.mnt));
}

#[test]
fn second_mount_of_the_same_volume_is_19() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let other = v.tmp.path().join("mnt2");
    std::fs::create_dir(&other).unwrap();
    let _g = Unmounter(other.clone());
    for fg in [false, true] {
        expect(
            &run(mount_cmd(&v, &v.passfile, &other, fg), 30),
            code::ALREADY_MOUNTED,
            "second mount",
        );
        assert!(!is_mounted(&other));
    }
    // Once the first is gone, the volume mounts again.
    support::unmount(m);
    let m = Mount::start(&v.cipher, &other, &v.passfile, &[]);
    drop(m);
    assert!(!is_mounted(&other));
}

#[test]
fn init_on_a_non_empty_directory_is_15() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "x\n").unwrap();
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("precious"), "do not touch").unwrap();
    let mut c = kmsfs();
    c.arg("init")
        .arg("--passfile")
        .arg(&pass)
        .arg("--no-recovery-key")
        .arg(&d);
    expect(&run(c, 60), code::NOT_EMPTY, "init on a non-empty dir");
    assert_eq!(
        std::fs::read_to_string(d.join("precious")).unwrap(),
        "do not touch"
    );
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        1,
        "nothing was added"
    );
    // An existing volume is not empty either.
    let v = Volume::new(&[]);
    let mut c = kmsfs();
    c.arg("init")
        .arg("--passfile")
        .arg(&v.passfile)
        .arg("--no-recovery-key")
        .arg(&v.cipher);
    expect(&run(c, 60), code::NOT_EMPTY, "init on a volume");
    // ... and it still mounts.
    drop(v.mount());
}

/// Edits `.kmsfs/volume.json` with `f`.
fn edit_config(v: &Volume, f: impl FnOnce(&mut serde_json::Value)) {
    let p = v.cipher.join(".kmsfs/volume.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut j);
    std::fs::write(&p, serde_json::to_vec_pretty(&j).unwrap()).unwrap();
}

#[test]
#[allow(clippy::type_complexity)]
fn unknown_feature_flag_or_version_is_11() {
    let edits: [(&str, fn(&mut serde_json::Value)); 2] = [
        ("unknown feature", |j| {
            j["features"]
                .as_array_mut()
                .unwrap()
                .push("frobnicated-blocks".into());
        }),
        ("newer format version", |j| j["format_version"] = 99.into()),
    ];
    for (what, e) in edits {
        let v = Volume::new(&[]);
        let _g = Unmounter(v.mnt.clone());
        edit_config(&v, e);
        for fg in [false, true] {
            let o = run(mount_cmd(&v, &v.passfile, &v.mnt, fg), 30);
            expect(&o, code::UNSUPPORTED_VOLUME, &format!("mount, {what}"));
            assert!(!is_mounted(&v.mnt));
        }
        if what == "unknown feature" {
            assert!(
                stderr(&run(mount_cmd(&v, &v.passfile, &v.mnt, false), 30))
                    .contains("frobnicated-blocks"),
                "the message names the flag"
            );
        }
        let mut c = kmsfs();
        c.arg("info").arg(&v.cipher);
        expect(
            &run(c, 30),
            code::UNSUPPORTED_VOLUME,
            &format!("info, {what}"),
        );
        let mut c = kmsfs();
        c.arg("passwd")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg("--new-passfile")
            .arg(&v.passfile)
            .arg(&v.cipher);
        expect(
            &run(c, 30),
            code::UNSUPPORTED_VOLUME,
            &format!("passwd, {what}"),
        );
    }
}

#[test]
fn damaged_volume_config_is_13() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    std::fs::write(v.cipher.join(".kmsfs/volume.json"), b"{ not json").unwrap();
    expect(
        &run(mount_cmd(&v, &v.passfile, &v.mnt, false), 30),
        code::CORRUPT,
        "garbage config",
    );
    // A well-formed config with a changed (authenticated) field is refused after unlock.
    let v = Volume::new(&[]);
    let _g2 = Unmounter(v.mnt.clone());
    edit_config(&v, |j| j["created"] = "2000-01-01T00:00:00Z".into());
    expect(
        &run(mount_cmd(&v, &v.passfile, &v.mnt, false), 60),
        code::CORRUPT,
        "modified config",
    );
    assert!(!is_mounted(&v.mnt));
}

#[test]
fn unmount_of_a_non_mount_is_18() {
    let tmp = tempfile::tempdir().unwrap();
    for p in [tmp.path().to_path_buf(), tmp.path().join("missing")] {
        let mut c = kmsfs();
        c.arg("unmount").arg(&p);
        expect(
            &run(c, 30),
            code::NOT_MOUNTED,
            &format!("unmount {}", p.display()),
        );
    }
    // A kmsfs volume that is not mounted.
    let v = Volume::new(&[]);
    let mut c = kmsfs();
    c.arg("unmount").arg(&v.mnt);
    expect(
        &run(c, 30),
        code::NOT_MOUNTED,
        "unmount of an unmounted volume's mount point",
    );
}

#[test]
fn usage_error_is_2() {
    let mut c = kmsfs();
    c.arg("mount").arg("--no-such-flag");
    assert_eq!(code_of(&run(c, 30)), code::USAGE);
    let mut c = kmsfs();
    c.arg("frobnicate");
    assert_eq!(code_of(&run(c, 30)), code::USAGE);
}

/// Whether the volume's mount lock is free (no kmsfs process serves it any more).
fn lock_free(v: &Volume) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(v.cipher.join(".kmsfs/mount.lock"))
    else {
        return true;
    };
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r == 0
}

#[test]
fn daemonized_mount_returns_when_ready_and_unmount_works() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let o = run(mount_cmd(&v, &v.passfile, &v.mnt, false), 60);
    assert_eq!(code_of(&o), code::OK, "mount: {}", stderr(&o));
    // Ready when it returns: mounted, and serving requests, with no waiting.
    assert!(
        is_mounted(&v.mnt),
        "mount returned before the mount existed"
    );
    let mnt = v.mnt.clone();
    with_timeout(20, move || {
        std::fs::write(mnt.join("f"), b"served by the daemon").unwrap();
        assert_eq!(
            std::fs::read(mnt.join("f")).unwrap(),
            b"served by the daemon"
        );
    });
    assert!(!lock_free(&v), "the daemon holds the volume lock");
    let mut c = kmsfs();
    c.arg("unmount").arg(&v.mnt);
    let o = run(c, 30);
    assert_eq!(code_of(&o), code::OK, "unmount: {}", stderr(&o));
    assert!(!is_mounted(&v.mnt));
    // The daemon has exited and released the volume when unmount returns (before 2026-12-05 it
    // still wrote its closing audit checkpoint for a moment: an `rm -rf` of the cipher
    // directory right after could fail with "Directory not empty").
    assert!(
        lock_free(&v),
        "the daemon still runs after unmount returned"
    );
    // Unmounting again: not mounted.
    let mut c = kmsfs();
    c.arg("unmount").arg(&v.mnt);
    expect(&run(c, 30), code::NOT_MOUNTED, "second unmount");
    // The data is there on the next mount.
    let m = v.mount();
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"served by the daemon");
    drop(m);
    assert!(!is_mounted(&v.mnt));
}

#[test]
fn foreground_mount_unmounts_on_sigint_and_sigterm() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let v = Volume::new(&[]);
        let m = v.mount();
        let p = m.path("f");
        with_timeout(10, move || std::fs::write(p, b"x").unwrap());
        // SAFETY: sending a signal to the mount process this test started.
        assert_eq!(
            unsafe {
                libc::kill(
                    server_pid(&v.cipher).expect("kmsfs process serving the volume"),
                    sig,
                )
            },
            0
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&v.mnt) {
            assert!(Instant::now() < deadline, "signal {sig} did not unmount");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Unmounted by the daemon itself: the guard only reaps it.
        drop(m);
        let m = v.mount();
        assert_eq!(std::fs::read(m.path("f")).unwrap(), b"x");
        drop(m);
        assert!(!is_mounted(&v.mnt));
    }
}

#[test]
fn daemonized_mount_exits_on_sigterm() {
    let v = Volume::new(&[]);
    let _g = Unmounter(v.mnt.clone());
    let o = run(mount_cmd(&v, &v.passfile, &v.mnt, false), 60);
    assert_eq!(code_of(&o), code::OK, "mount: {}", stderr(&o));
    assert!(is_mounted(&v.mnt));
    let pid = server_pid(&v.cipher).expect("kmsfs process serving the volume");
    // SAFETY: sending a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&v.mnt) || !lock_free(&v) {
        assert!(Instant::now() < deadline, "SIGTERM did not unmount");
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Every inode the kernel holds costs the daemon one descriptor. When they run out, a listing
//! must say so (EMFILE), never return fewer names as if they were all, and nothing stored may
//! be harmed: a remount with descriptors to spare lists everything again.
mod common;
use common::*;

use std::fs;
use std::path::Path;

const FILES: usize = 1500;

fn names(dir: &Path) -> std::io::Result<Vec<String>> {
    fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// Lowers the daemon's descriptor limit (soft and hard) to `n`.
fn limit_descriptors(m: &Mount, n: u64) {
    let pid = rustix::process::Pid::from_raw(m.pid().expect("daemon pid") as i32).unwrap();
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(n),
            maximum: Some(n),
        },
    )
    .expect("lower the daemon's descriptor limit");
}

/// A mount whose directory `open` holds `files` small files, with the daemon's descriptor
/// limit then lowered to `limit` (and read again by the daemon).
fn files_under_a_low_limit(files: usize, limit: u64, env: &[(&str, &str)]) -> (Volume, Mount) {
    let v = Volume::new(&[]);
    let m = Mount::start_env(&v.cipher, &v.mnt, &v.passfile, &[], env);
    let dir = m.path("open");
    fs::create_dir(&dir).unwrap();
    for i in 0..files {
        fs::write(dir.join(format!("f{i}")), b"y").unwrap();
    }
    limit_descriptors(&m, limit);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The daemon reads the limit again within a second and has the kernel drop names until
    // its inodes are back under it; on a busy machine that takes longer than the pause: wait
    // (20 s at most) until a fifth of the descriptor numbers under the limit are free, as
    // they are once it has caught up (open(2) takes the lowest free number under the limit).
    let fds = format!("/proc/{}/fd", m.pid().expect("daemon pid"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let below = fs::read_dir(&fds)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                    .filter(|n| *n < limit)
                    .count() as u64
            })
            .unwrap_or(0);
        if below < limit * 4 / 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (v, m)
}

/// Opens `dir`'s files `f0…` one after another and keeps them open until an open fails: the
/// files held and that failure (none if all `files` opened).
fn hold_open(dir: &Path, files: usize) -> (Vec<fs::File>, Option<std::io::Error>) {
    let mut held = Vec::new();
    for i in 0..files {
        match fs::File::open(dir.join(format!("f{i}"))) {
            Ok(f) => held.push(f),
            Err(e) => return (held, Some(e)),
        }
    }
    (held, None)
}

#[test]
fn running_out_of_descriptors_fails_a_listing_instead_of_shortening_it() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let big = m.path("big");
    with_timeout(120, move || {
        fs::create_dir(&big).unwrap();
        for i in 0..FILES {
            fs::write(big.join(format!("f{i}")), b"x").unwrap();
        }
    });
    m.unmount();

    // Cold again, with room for only part of the directory's inodes.
    let m = v.mount();
    limit_descriptors(&m, 1000);
    // The daemon reads its limit again within a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let big = m.path("big");
    let listed = with_timeout(60, move || names(&big));
    match listed {
        Ok(n) => assert_eq!(n.len(), FILES, "a listing that succeeds holds every name"),
        // With prune notifications the names listed first are let go while the listing goes
        // on, so it never runs out (src/fuse/reclaim.rs).
        Err(e) if kernel_prunes() => panic!("a listing ran out with prunes: {e}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}"),
    }
    m.unmount();

    let m = v.mount();
    let big = m.path("big");
    let mut n = with_timeout(60, move || names(&big).unwrap());
    n.sort();
    let mut want: Vec<String> = (0..FILES).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(n, want);
    for name in ["f0", "f777", "f1499"] {
        assert_eq!(fs::read(m.path("big").join(name)).unwrap(), b"x");
    }
    m.unmount();
    assert!(!is_mounted(&v.mnt));
}

/// A tree of three times as many files as the daemon has descriptors can be made, walked and
/// read: the kernel is asked to let older names go (src/fuse/reclaim.rs) before they run out.
#[test]
fn a_tree_larger_than_the_descriptor_limit_can_be_made_and_walked() {
    let v = Volume::new(&[]);
    let m = v.mount();
    limit_descriptors(&m, 1000);
    // The daemon reads its limit again within a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let root = m.path("");
    // A process working in a directory of the mount all along: dropping names must not take
    // its working directory away (getcwd would fail, /proc shows "(deleted)").
    let here = root.join("here");
    fs::create_dir(&here).unwrap();
    let worker = std::thread::spawn(move || {
        std::process::Command::new("sh")
            .args(["-c", "sleep 3; readlink /proc/self/cwd"])
            .current_dir(&here)
            .output()
    });
    with_timeout(300, move || {
        for d in 0..30 {
            let dir = root.join(format!("d{d}"));
            fs::create_dir(&dir).unwrap();
            for f in 0..100 {
                fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
            }
        }
        for d in 0..30 {
            let dir = root.join(format!("d{d}"));
            let mut n = names(&dir).unwrap();
            n.sort();
            assert_eq!(n.len(), 100, "d{d}");
            for f in 0..100 {
                let p = dir.join(format!("f{f}"));
                assert_eq!(fs::read_to_string(&p).unwrap(), format!("{d}/{f}"));
                assert_eq!(
                    fs::metadata(&p).unwrap().len(),
                    format!("{d}/{f}").len() as u64
                );
            }
        }
    });
    let out = worker.join().unwrap().expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        m.path("here").to_string_lossy()
    );
    let open = fs::read_dir(format!("/proc/{}/fd", m.pid().unwrap()))
        .unwrap()
        .count();
    assert!(open < 1000, "{open} descriptors open");
    m.unmount();
    let m = v.mount();
    for d in [0, 17, 29] {
        assert_eq!(names(&m.path(&format!("d{d}"))).unwrap().len(), 100);
    }
    m.unmount();
    assert!(!is_mounted(&v.mnt));
}

/// Whether the kernel takes FUSE_NOTIFY_PRUNE (Linux 6.18), with which directories are let go
/// too (src/fuse/prune.rs), and the daemon uses it (not with `KMSFS_NO_PRUNE`, which it
/// inherits from the tests).
fn kernel_prunes() -> bool {
    if std::env::var_os("KMSFS_NO_PRUNE").is_some() {
        return false;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 18)
}

/// More directories than the daemon has descriptors: made, walked and listed, none failing
/// with EMFILE, while a process working in one of the first ones keeps its working directory
/// (the kernel lets go only directories no process uses, and none with cached entries).
/// Until 2026-12-05 directories were never let go: EMFILE once they held the descriptors.
#[test]
fn more_directories_than_descriptors_can_be_made_and_walked() {
    if !kernel_prunes() {
        eprintln!("skipped: the kernel has no FUSE_NOTIFY_PRUNE (Linux 6.18)");
        return;
    }
    let v = Volume::new(&[]);
    let m = v.mount();
    limit_descriptors(&m, 400);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let root = m.path("");
    let here = root.join("a0").join("d0");
    fs::create_dir_all(&here).unwrap();
    let worker = std::thread::spawn(move || {
        std::process::Command::new("sh")
            .args(["-c", "sleep 4; readlink /proc/self/cwd; ls"])
            .current_dir(&here)
            .output()
    });
    with_timeout(300, move || {
        for a in 0..40 {
            for d in 0..30 {
                let dir = root.join(format!("a{a}")).join(format!("d{d}"));
                fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir a{a}/d{d}: {e}"));
                if d % 10 == 0 {
                    fs::write(dir.join("f"), format!("{a}/{d}")).unwrap();
                }
            }
        }
        for pass in 0..2 {
            let mut n = names(&root).unwrap_or_else(|e| panic!("pass {pass}: list /: {e}"));
            n.sort();
            assert_eq!(n.len(), 40);
            for a in 0..40 {
                let dir = root.join(format!("a{a}"));
                let n = names(&dir).unwrap_or_else(|e| panic!("pass {pass}: list a{a}: {e}"));
                assert_eq!(n.len(), 30, "a{a}");
                for d in 0..30 {
                    let sub = dir.join(format!("d{d}"));
                    let inside =
                        names(&sub).unwrap_or_else(|e| panic!("pass {pass}: a{a}/d{d}: {e}"));
                    assert_eq!(inside.len(), usize::from(d % 10 == 0), "a{a}/d{d}");
                    if d % 10 == 0 {
                        assert_eq!(
                            fs::read_to_string(sub.join("f")).unwrap(),
                            format!("{a}/{d}")
                        );
                    }
                }
            }
        }
    });
    let out = worker.join().unwrap().expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().unwrap_or(""),
        m.path("a0/d0").to_string_lossy(),
        "the working directory was taken away"
    );
    assert_eq!(lines.next(), Some("f"), "{stdout}");
    let open = fs::read_dir(format!("/proc/{}/fd", m.pid().unwrap()))
        .unwrap()
        .count();
    assert!(open < 400, "{open} descriptors open");
    m.unmount();
    v.assert_fsck_clean("after a walk of more directories than descriptors");
}

/// Files held open cannot be let go: once they hold every descriptor, an open fails with
/// EMFILE (after a short wait for room, src/fuse/reclaim.rs), never hangs, and works again
/// once they are closed.
#[test]
fn files_held_open_up_to_the_limit_get_emfile_and_recover() {
    let (_v, m) = files_under_a_low_limit(400, 300, &[]);
    let dir = m.path("open");
    let (held, err) = with_timeout(120, move || {
        let (held, err) = hold_open(&dir, 400);
        (held.len(), err)
    });
    let err = err.expect("400 files held open with 300 descriptors");
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    assert!(held > 50, "only {held} files could be held open");
    // Closed again (the `File`s were dropped with the closure): opening works once the
    // kernel's RELEASEs, sent in the background, have reached the daemon.
    let dir = m.path("open");
    with_timeout(60, move || {
        for i in [0, 199, 399] {
            let p = dir.join(format!("f{i}"));
            let t = std::time::Instant::now();
            let got = loop {
                match fs::read(&p) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::EMFILE)
                            && t.elapsed() < std::time::Duration::from_secs(10) =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50))
                    }
                    r => break r,
                }
            };
            assert_eq!(got.unwrap(), b"y");
        }
    });
    m.unmount();
}

/// Closed files whose interrupted-write markers wait for their data to reach the disk
/// (src/vfs/marker_queue.rs) hold a descriptor each: a limit lowered from outside is kept by
/// them too, not only by the inodes the kernel holds. Until 2026-12-07 their bound was read
/// only at a close: after these 400 writes the daemon held ~535 descriptors under a limit of
/// 300, and opens worked only through the free numbers below it.
#[test]
fn a_lowered_limit_brings_every_descriptor_of_the_daemon_under_it() {
    let (_v, m) = files_under_a_low_limit(400, 300, &[]);
    let fds = format!("/proc/{}/fd", m.pid().expect("daemon pid"));
    let count = || fs::read_dir(&fds).map(|d| d.count()).unwrap_or(usize::MAX);
    let t = std::time::Instant::now();
    while count() >= 300 && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let held = count();
    assert!(
        held < 300,
        "the daemon holds {held} descriptors under a limit of 300"
    );
    // What was written is all there.
    let dir = m.path("open");
    with_timeout(60, move || {
        for i in [0, 199, 399] {
            assert_eq!(fs::read(dir.join(format!("f{i}"))).unwrap(), b"y");
        }
    });
    m.unmount();
}

/// A mkdir that runs out of descriptors part-way (the daemon's descriptors held by open files,
/// a few given back) fails and leaves nothing behind, or succeeds with a usable directory;
/// until 2026-12-05 its undo opened the directory again, failed with EMFILE too, and left a
/// directory without its id (EIO to every listing and lookup in it, fsck: dir-id).
#[test]
fn a_mkdir_short_of_descriptors_leaves_nothing_half_made() {
    // The daemon says when it undid a mkdir it could not finish: that path must be taken (the
    // kernel's LOOKUP of the new name can fail with EMFILE first, which proves nothing).
    let (v, m) = files_under_a_low_limit(300, 120, &[("KMSFS_LOG", "kmsfs::vfs::dir_ops=debug")]);
    let root = m.path("");
    let outcomes = with_timeout(240, move || {
        let mut outcomes = Vec::new();
        for k in 0..6 {
            let (mut held, err) = hold_open(&root.join("open"), 300);
            let err = err.expect("the limit was never reached");
            assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
            held.truncate(held.len().saturating_sub(k));
            for name in [format!("d{k}"), format!("{}{k}", "l".repeat(230))] {
                let p = root.join(&name);
                let r = fs::create_dir(&p);
                outcomes.push((
                    k,
                    name.len(),
                    r.as_ref().err().and_then(|e| e.raw_os_error()),
                ));
                match r {
                    Ok(()) => {}
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "mkdir: {e}");
                        drop(held.pop());
                        let gone = fs::symlink_metadata(&p);
                        assert_eq!(
                            gone.as_ref().err().and_then(|e| e.raw_os_error()),
                            Some(libc::ENOENT),
                            "a failed mkdir left {name:.20}…: {gone:?}"
                        );
                    }
                }
            }
            drop(held);
            // Whatever was made works.
            for name in [format!("d{k}"), format!("{}{k}", "l".repeat(230))] {
                let p = root.join(&name);
                if p.exists() {
                    fs::write(p.join("inside"), b"ok").unwrap();
                    assert_eq!(fs::read_dir(&p).unwrap().count(), 1);
                }
            }
        }
        outcomes
    });
    assert!(
        outcomes.iter().any(|o| o.2.is_some()),
        "no mkdir ran out of descriptors: {outcomes:?}"
    );
    let log = m.unmount();
    assert!(
        log.contains("mkdir undone"),
        "no mkdir reached the daemon's undo: {outcomes:?}"
    );
    v.assert_fsck_clean("after mkdirs short of descriptors");
}

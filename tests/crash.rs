//! Crash safety: the daemon is killed with SIGKILL in the middle of heavy writes, renames,
//! truncates and key-manager changes. After a remount every fsync'd file has exactly its synced
//! content, every file opens and reads (no EIO), the key store opens and the audit log verifies
//! (with the unclean shutdown marked by a chain start).
mod common;
use common::*;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            walk(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

#[test]
fn killed_daemon_loses_nothing_synced_and_damages_nothing() {
    let v = Volume::new(&[]);
    for round in 0..3u8 {
        let m = v.mount();
        let root = m.path("");
        // Synced content that must survive exactly.
        let synced = root.join(format!("synced-{round}.bin"));
        let content: Vec<u8> = (0..50_000u32)
            .map(|i| (i * 31 + u32::from(round)) as u8)
            .collect();
        {
            let mut f = std::fs::File::create(&synced).unwrap();
            f.write_all(&content).unwrap();
            f.sync_all().unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..3 {
            let (root, stop) = (root.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                let d = root.join(format!("w{w}"));
                let _ = std::fs::create_dir_all(&d);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let p = d.join(format!("f{}", i % 20));
                    // Errors are expected once the daemon is gone.
                    let _ = (|| -> std::io::Result<()> {
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&p)?;
                        f.write_all(&vec![w as u8; 3000 + (i as usize % 9000)])?;
                        if i.is_multiple_of(7) {
                            f.set_len(i % 5000)?;
                        }
                        drop(f);
                        if i.is_multiple_of(5) {
                            std::fs::rename(&p, d.join(format!("r{}", i % 10)))?;
                        }
                        Ok(())
                    })();
                    i += 1;
                }
            }));
        }
        // Key-manager changes while it runs.
        let kd = root.join(".kmsfs/keys");
        let key = std::fs::read_dir(&kd)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::write(key.join("rotate"), b"1\n");
        std::thread::sleep(Duration::from_millis(200 + 150 * u64::from(round)));
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        // `kmsfs info` says so (no passphrase needed), until a mount has recovered the files
        // and ended cleanly.
        assert!(
            info_json(&v)["unclean_session"].as_bool().unwrap(),
            "round {round}"
        );

        // Remount: the key store opens, every file reads, synced data is exact.
        let m = v.mount();
        let mut files = Vec::new();
        walk(&m.path(""), &mut files);
        assert!(files.len() > 3);
        let bad: Vec<String> = files
            .iter()
            .filter_map(|f| {
                std::fs::read(f)
                    .err()
                    .map(|e| format!("{}: {e}", f.display()))
            })
            .collect();
        if !bad.is_empty() {
            m.unmount();
            let o = v.fsck();
            panic!(
                "round {round}: unreadable after the crash: {bad:?}\nfsck: {}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        assert_eq!(std::fs::read(&synced).unwrap(), content, "round {round}");
        assert!(
            !info_json(&v)["unclean_session"].as_bool().unwrap(),
            "the flag of the mount running now is no news"
        );
        m.unmount();
        assert!(!info_json(&v)["unclean_session"].as_bool().unwrap());
    }
    let o = kmsfs()
        .arg("audit")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["verify", "--json"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "audit log after crashes: {r}");
    assert!(r["chain_starts"].as_u64().unwrap() >= 3, "{r}");
    // And fsck finds nothing wrong.
    let o = v.fsck();
    assert!(
        o.status.success(),
        "fsck after crashes: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// `kmsfs info --json` of the volume.
fn info_json(v: &Volume) -> serde_json::Value {
    let o = kmsfs()
        .args(["info", "--json"])
        .arg(&v.cipher)
        .output()
        .unwrap();
    assert!(o.status.success());
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A daemon killed outright leaves a dead mount (every call there fails with ENOTCONN). Mounting
/// the same volume there again clears it and works; another volume is refused with a message
/// naming the dead mount; `kmsfs unmount` removes one.
#[test]
fn a_dead_mount_is_cleared_by_mounting_again_or_by_kmsfs_unmount() {
    let v = Volume::new(&[]);
    let _guard = Unmounter(v.mnt.clone());
    let m = v.mount();
    std::fs::write(m.path("kept"), b"before the crash").unwrap();
    let o = sh("sync");
    assert!(o.status.success());
    let mnt = m.kill9_leaving_the_mount();
    let e = std::fs::metadata(&mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    // Another volume: refused, naming the problem.
    let other = Volume::new(&[]);
    let o = kmsfs()
        .args(["mount", "--passfile"])
        .arg(&other.passfile)
        .arg(&other.cipher)
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "mounted over a dead mount: {err}");
    assert!(err.contains("daemon is gone"), "{err}");
    // The same volume: the dead mount is cleared and the volume mounted again (in the
    // background: `kmsfs mount` returns once the new mount is ready; the guard unmounts it).
    let o = with_timeout(60, {
        let (c, mnt, p) = (v.cipher.clone(), mnt.clone(), v.passfile.clone());
        move || {
            kmsfs()
                .args(["mount", "--passfile"])
                .arg(&p)
                .arg(&c)
                .arg(&mnt)
                .output()
                .unwrap()
        }
    });
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("unmounting it"), "{err}");
    assert_eq!(
        std::fs::read(mnt.join("kept")).unwrap(),
        b"before the crash"
    );
    // kmsfs unmount of a dead mount: the background daemon killed.
    let daemon = server_pid(&v.cipher).expect("the background daemon");
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0, "kill");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let e = std::fs::metadata(&mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let o = kmsfs().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!is_mounted(&mnt), "still mounted");
}

/// A size-changing write torn by the killed daemon (a SIGKILL inside its `pwrite`) is
/// recovered at the file's first open: the file is cut back to its last whole block. The
/// kernel was given the size the torn cipher length implies at the lookup before that open,
/// and with the writeback cache it kept it: right after the remount the recovered file read
/// with zeros past its end (or as empty, where the length was one no file has), and an
/// O_APPEND write went after a gap of zeros (or to offset 0, over the data that had been
/// fsync'd). The tear is made here by cutting the cipher file while it carries the daemon's
/// own marker: inside block 6's tag (a length a file can have), and 4 bytes into block 7 (one
/// no file has).
#[test]
fn a_torn_write_is_recovered_before_the_kernel_is_given_a_size() {
    use std::os::unix::fs::OpenOptionsExt;
    // Header 104, blocks of 4,124 bytes (4 KiB of plaintext); the write covers blocks 4 to 7.
    for (cut, recovered) in [
        (104 + 6 * 4124 + 4100, 6 * 4096),
        (104 + 7 * 4124 + 4, 7 * 4096),
    ] {
        let v = Volume::new(&[]);
        let m = v.mount_with(&["--no-writeback-cache"]);
        let p = m.path("torn");
        let synced: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
            .unwrap();
        f.write_all(&synced).unwrap();
        f.sync_all().unwrap();
        // Past the end, not synced: the marker stays on the cipher file.
        f.write_all(&[b'y'; 10_000]).unwrap();
        m.kill9();
        drop(f);
        let mut files = Vec::new();
        walk(&v.cipher, &mut files);
        files.retain(|c| {
            !c.components().any(|x| x.as_os_str() == ".kmsfs")
                && c.file_name().is_some_and(|n| n != "kmsfs.dirid")
        });
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&files[0])
            .unwrap()
            .set_len(cut)
            .unwrap();
        let m = v.mount();
        let p = m.path("torn");
        let shown = std::fs::metadata(&p).unwrap().len();
        let read = std::fs::read(&p).unwrap();
        {
            let mut a = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            a.write_all(b"APPENDED").unwrap();
        }
        m.unmount();
        let m = v.mount();
        let got = std::fs::read(m.path("torn")).unwrap();
        m.unmount();
        assert_eq!(shown, recovered, "size shown after the remount (cut {cut})");
        assert_eq!(read.len() as u64, recovered, "bytes read (cut {cut})");
        assert_eq!(&got[..20_000], &synced[..], "the fsync'd data (cut {cut})");
        assert_eq!(got.len() as u64, recovered + 8, "cut {cut}");
        assert!(got.ends_with(b"APPENDED"), "cut {cut}");
        assert!(
            got[20_000..got.len() - 8].iter().all(|&b| b == b'y'),
            "zeros before the append (cut {cut})"
        );
    }
}

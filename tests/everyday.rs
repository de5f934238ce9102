//! Everyday use: mounting through mount(8) (`-t fuse.kmsfs` and an fstab line), idle unmount,
//! completions and man pages for every subcommand.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::CommandFactory;

/// `/sbin/mount.fuse.kmsfs` pointing at the binary under test while it lives; an installed
/// helper is moved aside and put back afterwards.
struct Helper {
    path: PathBuf,
    aside: Option<PathBuf>,
}

impl Helper {
    fn install() -> Helper {
        let path = PathBuf::from("/sbin/mount.fuse.kmsfs");
        let aside = std::fs::symlink_metadata(&path).is_ok().then(|| {
            let a = PathBuf::from("/sbin/.mount.fuse.kmsfs.kmsfs-test");
            std::fs::rename(&path, &a).expect("move the installed helper aside");
            a
        });
        std::os::unix::fs::symlink(std::fs::canonicalize(bin()).unwrap(), &path)
            .expect("install /sbin/mount.fuse.kmsfs (tests run as root)");
        Helper { path, aside }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(a) = &self.aside {
            let _ = std::fs::rename(a, &self.path);
        }
    }
}

fn wait_mounted(p: &Path, want: bool, secs: u64) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if is_mounted(p) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Whether `f` holds within 3 s (tried every 50 ms).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `read_only` in the mount's `.kmsfs/status`.
fn status_read_only(mnt: &Path) -> Option<bool> {
    let s = std::fs::read_to_string(mnt.join(".kmsfs/status")).ok()?;
    serde_json::from_str::<serde_json::Value>(&s).ok()?["read_only"].as_bool()
}

#[test]
fn mount_through_mount8_and_an_fstab_line() {
    let v = Volume::new(&[]);
    let _helper = Helper::install();
    let _guard = Unmounter(v.mnt.clone());
    let (cipher, mnt, pass) = (v.cipher.clone(), v.mnt.clone(), v.passfile.clone());
    with_timeout(60, move || {
        let o = std::process::Command::new("mount")
            .args(["-t", "fuse.kmsfs", "-o"])
            .arg(format!("passfile={},noatime,nodev", pass.display()))
            .arg(&cipher)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mount -t fuse.kmsfs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(is_mounted(&mnt));
        std::fs::write(mnt.join("via-mount8"), b"hello").unwrap();
        let line = mount_table()
            .lines()
            .find(|l| l.contains(mnt.to_str().unwrap()))
            .unwrap()
            .to_string();
        assert!(
            line.contains("fuse.kmsfs") && line.contains("noatime"),
            "{line}"
        );
        // `mount -o remount,ro` changes the mount's flags (it tried a second mount until
        // 2026-12-05: "already a mount point"), keeping nosuid,nodev; and back to rw.
        for (o, ro) in [("remount,ro", true), ("remount,rw", false)] {
            let r = std::process::Command::new("mount")
                .args(["-o", o])
                .arg(&mnt)
                .output()
                .unwrap();
            assert!(
                r.status.success(),
                "mount -o {o}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let now = mount_options(&mnt);
            assert!(
                now.contains(&if ro { "ro" } else { "rw" }.to_string())
                    && now.contains(&"nosuid".to_string())
                    && now.contains(&"nodev".to_string()),
                "{o}: {now:?}"
            );
            let w = std::fs::write(mnt.join("after-remount"), b"x");
            assert_eq!(
                w.as_ref().err().and_then(|e| e.raw_os_error()),
                ro.then_some(libc::EROFS),
                "{o}: {w:?}"
            );
            // The daemon follows (it completes no interrupted write on a read-only mount).
            assert!(
                eventually(|| status_read_only(&mnt) == Some(ro)),
                "{o}: status says {:?}",
                status_read_only(&mnt)
            );
        }
        // `remount,noatime` reaches the daemon too: reading leaves the backing file's access
        // time alone; `remount,relatime` sets it again (it is older than the file's change).
        std::fs::create_dir(mnt.join("atime")).unwrap();
        std::fs::write(mnt.join("atime/f"), b"read me").unwrap();
        let backing = std::fs::read_dir(
            cipher.join(
                std::fs::read_dir(&cipher)
                    .unwrap()
                    .map(|e| e.unwrap())
                    .find(|e| {
                        e.file_type().unwrap().is_dir()
                            && std::fs::read_dir(e.path()).unwrap().count() == 2
                            && e.file_name() != ".kmsfs"
                    })
                    .expect("the backing directory")
                    .file_name(),
            ),
        )
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.ends_with("kmsfs.dirid"))
        .unwrap();
        for (o, changes) in [("remount,noatime", false), ("remount,relatime", true)] {
            let r = std::process::Command::new("mount")
                .args(["-o", o])
                .arg(&mnt)
                .output()
                .unwrap();
            assert!(r.status.success(), "mount -o {o}");
            let noatime = mount_options(&mnt).contains(&"noatime".to_string());
            assert_eq!(noatime, !changes, "{o}");
            sh(&format!("touch -a -d 2001-01-01 '{}'", backing.display()));
            let before = std::fs::metadata(&backing).unwrap().accessed().unwrap();
            // The daemon learns of the remount from the mount table, a moment later.
            assert!(
                eventually(|| {
                    let _ = std::fs::read(mnt.join("atime/f")).unwrap();
                    let after = std::fs::metadata(&backing).unwrap().accessed().unwrap();
                    (after != before) == changes
                }),
                "{o}: the backing access time {}",
                if changes { "stayed" } else { "changed" }
            );
        }
        assert!(
            std::process::Command::new("umount")
                .arg(&mnt)
                .status()
                .unwrap()
                .success()
        );
        assert!(wait_mounted(&mnt, false, 10));

        // An fstab line, in a temporary fstab (mount -T), mounted by mount point alone.
        let fstab = mnt.parent().unwrap().join("fstab");
        std::fs::write(
            &fstab,
            format!(
                "# kmsfs test\n{} {} fuse.kmsfs noauto,x-systemd.automount,passfile={},idle=1h 0 0\n",
                cipher.display(),
                mnt.display(),
                pass.display()
            ),
        )
        .unwrap();
        let o = std::process::Command::new("mount")
            .arg("-T")
            .arg(&fstab)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mount -T fstab: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(std::fs::read(mnt.join("via-mount8")).unwrap(), b"hello");
        assert!(
            std::process::Command::new("umount")
                .arg(&mnt)
                .status()
                .unwrap()
                .success()
        );
        assert!(wait_mounted(&mnt, false, 10));

        // A wrong passfile: mount(8) reports failure and nothing is mounted.
        let bad = mnt.parent().unwrap().join("bad-pass");
        std::fs::write(&bad, "wrong\n").unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "fuse.kmsfs", "-o"])
            .arg(format!("passfile={}", bad.display()))
            .arg(&cipher)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!is_mounted(&mnt));
    });
}

#[test]
fn idle_mount_unmounts_itself() {
    let v = Volume::new(&[]);
    let _guard = Unmounter(v.mnt.clone());
    let o = kmsfs()
        .arg("mount")
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["--idle", "1s"])
        .arg(&v.cipher)
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mnt = v.mnt.clone();
    with_timeout(40, move || {
        // An open directory keeps it mounted (kmsfs does not see it: directories are listed
        // without OPENDIR; the kernel refuses the unmount, and kmsfs stays).
        std::fs::create_dir(mnt.join("dir")).unwrap();
        let mut d = std::fs::read_dir(mnt.join("dir")).unwrap();
        std::thread::sleep(Duration::from_millis(3500));
        assert!(is_mounted(&mnt), "unmounted while a directory was open");
        assert!(d.next().is_none());
        drop(d);
        // An open file keeps it mounted.
        let f = std::fs::File::create(mnt.join("held")).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        assert!(is_mounted(&mnt), "unmounted while a file was open");
        drop(f);
        assert!(
            wait_mounted(&mnt, false, 10),
            "still mounted long after the idle period"
        );
    });
}

fn subcommand_paths(c: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix}-{}", s.get_name());
        out.push(name.clone());
        subcommand_paths(s, &name, out);
    }
}

#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let mut paths = Vec::new();
    subcommand_paths(&kmsfs::cli::Cli::command(), "kmsfs", &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    for shell in ["bash", "zsh", "fish"] {
        let o = kmsfs().args(["completions", shell]).output().unwrap();
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        for p in &paths {
            let leaf = p.rsplit('-').next().unwrap();
            assert!(text.contains(leaf), "{shell} completion lacks {p}");
        }
    }
    let t = tempfile::tempdir().unwrap();
    let o = kmsfs().arg("man").arg(t.path()).output().unwrap();
    assert!(o.status.success());
    for p in std::iter::once("kmsfs".to_string()).chain(paths) {
        let page = std::fs::read_to_string(t.path().join(format!("{p}.1")))
            .unwrap_or_else(|_| panic!("no man page {p}.1"));
        assert!(page.contains(".TH"), "{p}.1 is not a man page");
    }
}

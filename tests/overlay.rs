//! A kmsfs mount as the upper layer of an overlayfs (container storage on an encrypted
//! directory): the kernel refuses a FUSE upper layer without RENAME_WHITEOUT, d_type and
//! `trusted.` attributes. Changes over a lower tree (copy-up, deletions as whiteouts, a deleted
//! and re-made directory made opaque, renames) show through the overlay, and the same after
//! the overlay and kmsfs are both mounted again; fsck is clean.
mod common;
use common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An overlay mount, lazily unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lower: &Path, upper: &Path, work: &Path, at: &Path) -> Result<Overlay, String> {
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        Ok(Overlay(at.to_path_buf()))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Unmounts (lazily) whatever overlay is still mounted at the path when dropped: the test body
/// holds one beside each kmsfs mount, declared after it so that it goes first, for a body that
/// timed out with its `Overlay` still alive in its thread.
struct OverlayAt(PathBuf);

impl Drop for OverlayAt {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn overlay_available() -> bool {
    let known = || fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\toverlay\n"));
    known()
        || Command::new("modprobe")
            .arg("overlay")
            .status()
            .is_ok_and(|s| s.success())
            && known()
}

/// Every path under `root` with its kind and content, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                let c = fs::read(&p).unwrap();
                out.push(format!("{rel} {} {:x}", c.len(), crc(&c)));
            }
        }
    }
    out.sort();
    out
}

fn crc(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Whether this test can mount an overlayfs (root, and a kernel with it); says why not.
fn can_mount_overlays() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting an overlayfs needs root");
        return false;
    }
    if !overlay_available() {
        eprintln!("skipped: the kernel has no overlayfs");
        return false;
    }
    true
}

#[test]
fn kmsfs_works_as_an_overlayfs_upper_layer() {
    if !can_mount_overlays() {
        return;
    }
    let v = Volume::new(&[]);
    let lower = v.tmp.path().join("lower");
    let merged = v.tmp.path().join("merged");
    fs::create_dir_all(lower.join("dir")).unwrap();
    fs::create_dir_all(lower.join("gone/deep")).unwrap();
    fs::create_dir(&merged).unwrap();
    fs::write(lower.join("dir/file"), "lower\n").unwrap();
    fs::write(lower.join("keep"), "kept\n").unwrap();
    fs::write(lower.join("deleted"), "deleted\n").unwrap();
    fs::write(lower.join("gone/deep/x"), "x\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(lower.join("big"), &big).unwrap();

    let m = v.mount();

    let _ov = OverlayAt(merged.clone());
    let (upper, work) = (v.mnt.join("upper"), v.mnt.join("work"));
    let (l2, u2, w2, mg2) = (lower.clone(), upper.clone(), work.clone(), merged.clone());
    let want = with_timeout(60, move || {
        fs::create_dir(&u2).unwrap();
        fs::create_dir(&w2).unwrap();
        let ov = Overlay::mount(&l2, &u2, &w2, &mg2).expect("overlay with kmsfs as upper");
        let p = |s: &str| mg2.join(s);
        // Copy-up of a file changed in place, and of a large one changed in the middle.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(p("dir/file"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"changed\n").unwrap();
        drop(f);
        let f = fs::OpenOptions::new().write(true).open(p("big")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"MIDDLE", 150_000).unwrap();
        drop(f);
        // Deletions of lower entries are whiteouts; a re-made directory is opaque.
        fs::remove_file(p("deleted")).unwrap();
        fs::remove_dir_all(p("gone")).unwrap();
        fs::create_dir(p("gone")).unwrap();
        fs::write(p("gone/new"), "new\n").unwrap();
        // A rename of a lower file leaves a whiteout at its old name (RENAME_WHITEOUT).
        fs::rename(p("dir/file"), p("dir/renamed")).unwrap();
        fs::create_dir(p("fresh")).unwrap();
        fs::write(p("fresh/y"), "y\n").unwrap();
        fs::rename(p("fresh/y"), p("fresh/z")).unwrap();
        let want = tree(&mg2);
        assert!(!p("deleted").exists() && !p("dir/file").exists() && !p("gone/deep").exists());
        assert_eq!(fs::read(p("dir/renamed")).unwrap(), b"lower\nchanged\n");
        assert_eq!(fs::read(p("keep")).unwrap(), b"kept\n");
        let mut b = fs::read(p("big")).unwrap();
        assert_eq!(&b[150_000..150_006], b"MIDDLE");
        b[150_000..150_006].copy_from_slice(&big[150_000..150_006]);
        assert!(b == big, "big changed elsewhere");
        // The lower tree is untouched.
        assert_eq!(fs::read(l2.join("dir/file")).unwrap(), b"lower\n");
        assert!(l2.join("gone/deep/x").exists() && l2.join("deleted").exists());
        drop(ov);
        want
    });
    m.unmount();
    v.assert_fsck_clean("after the overlay");
    // Both mounted again: the same merged tree (whiteouts and the opaque mark were stored).
    let m = v.mount();
    let _ov = OverlayAt(merged.clone());
    let got = with_timeout(60, move || {
        let _ov = Overlay::mount(&lower, &upper, &work, &merged).expect("overlay again");
        tree(&merged)
    });
    assert_eq!(got, want);
    m.unmount();
}

/// A lower file with a POSIX ACL: the first open for writing through the overlay copies it up
/// with its ACL, which a kmsfs upper takes only with `--acl` (without: EOPNOTSUPP, and the open
/// fails, as README says); with it the ACL is on the merged file, also after both are
/// remounted.
#[test]
fn copy_up_keeps_posix_acls_with_acl_on() {
    if !can_mount_overlays() {
        return;
    }
    if !sh("command -v setfacl getfacl").status.success() {
        eprintln!("skipped: needs the acl tools");
        return;
    }
    let v = Volume::new(&[]);
    let lower = v.tmp.path().join("lower");
    let merged = v.tmp.path().join("merged");
    fs::create_dir_all(&lower).unwrap();
    fs::create_dir(&merged).unwrap();
    fs::write(lower.join("f"), "a\n").unwrap();
    let o = sh(&format!(
        "setfacl -m u:65534:r {}", // by number: `nobody` is not 65534 everywhere
        lower.join("f").display()
    ));
    if !o.status.success() {
        eprintln!("skipped: the backing file system takes no ACLs");
        return;
    }
    let (upper, work) = (v.mnt.join("upper"), v.mnt.join("work"));
    let acl_of = |p: &Path| {
        let o = sh(&format!("getfacl -cn {}", p.display()));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Without --acl the copy-up cannot keep the ACL, so the write is refused.
    let m = v.mount();
    let _ov = OverlayAt(merged.clone());
    let (l, u, w, mg) = (lower.clone(), upper.clone(), work.clone(), merged.clone());
    let refused = with_timeout(60, move || {
        fs::create_dir(&u).unwrap();
        fs::create_dir(&w).unwrap();
        let _ov = Overlay::mount(&l, &u, &w, &mg).expect("overlay");
        fs::OpenOptions::new()
            .append(true)
            .open(mg.join("f"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"b\n"))
    });
    let e = refused.expect_err("a copy-up without ACL support kept the ACL?");
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
    m.unmount();
    // With --acl (a fresh upper and work directory).
    let m = v.mount_with(&["--acl"]);
    let _ov = OverlayAt(merged.clone());
    let (l, u, w, mg) = (lower.clone(), upper.clone(), work.clone(), merged.clone());
    let want = with_timeout(60, move || {
        fs::remove_dir_all(&u).unwrap();
        fs::remove_dir_all(&w).unwrap();
        fs::create_dir(&u).unwrap();
        fs::create_dir(&w).unwrap();
        let _ov = Overlay::mount(&l, &u, &w, &mg).expect("overlay");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mg.join("f"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"b\n").unwrap();
        drop(f);
        assert_eq!(fs::read(mg.join("f")).unwrap(), b"a\nb\n");
        let acl = acl_of(&mg.join("f"));
        assert!(acl.contains("user:65534:r--"), "{acl}");
        acl
    });
    m.unmount();
    let m = v.mount_with(&["--acl"]);
    let _ov = OverlayAt(merged.clone());
    let got = with_timeout(60, move || {
        let _ov = Overlay::mount(&lower, &upper, &work, &merged).expect("overlay again");
        assert_eq!(fs::read(merged.join("f")).unwrap(), b"a\nb\n");
        acl_of(&merged.join("f"))
    });
    assert_eq!(got, want);
    m.unmount();
    v.assert_fsck_clean("after the ACL copy-up");
}

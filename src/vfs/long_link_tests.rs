//! Symlink targets of up to 4,095 bytes (PATH_MAX − 1): those too long to store inline live in
//! a side file `.kmsfs/links/<id>`, which follows the symlink's inode through hard links and
//! renames and goes with its last name.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::test_support::{caller, fsck_with, new_volume, open};
use super::{RENAME_EXCHANGE, Vfs, VfsError};
use crate::keymgr::fsck::Repair;
use crate::names::NameError;

/// A target of `len` bytes that looks like a path.
fn target(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i % 50 == 49 {
                b'/'
            } else {
                b'a' + (i as u8 ^ seed) % 26
            }
        })
        .collect()
}

fn store(dir: &Path) -> PathBuf {
    dir.join(".kmsfs/links")
}

fn side_files(dir: &Path) -> usize {
    std::fs::read_dir(store(dir)).map_or(0, |rd| rd.count())
}

fn symlink(v: &Vfs, parent: u64, name: &str, t: &[u8]) -> Result<u64, VfsError> {
    v.symlink(parent, name.as_ref(), OsStr::from_bytes(t), &caller())
        .map(|a| a.ino)
}

#[test]
fn targets_up_to_path_max_are_kept_and_stat_reports_their_length() {
    let (_t, d) = new_volume();
    let v = open(&d);
    for (i, len) in [1, 3043, 3044, 3500, 4095].into_iter().enumerate() {
        let t = target(len, i as u8);
        let name = format!("l{len}");
        let ino = symlink(&v, 1, &name, &t).expect("symlink");
        assert_eq!(v.readlink(ino).expect("readlink"), t, "{len}");
        assert_eq!(v.getattr(ino).expect("getattr").size, len as u64, "{len}");
        let found = v.lookup(1, name.as_ref()).expect("lookup");
        assert_eq!(found.size, len as u64, "{len}");
    }
    // Inline up to 3,043 bytes; a side file each for the three longer ones.
    assert_eq!(side_files(&d), 3);
    assert!(matches!(
        symlink(&v, 1, "too-long", &target(4096, 0)),
        Err(VfsError::Name(NameError::TargetTooLong))
    ));
    assert_eq!(side_files(&d), 3, "nothing left of the refused one");
    // Listed with their sizes too, and the same after a fresh start of the model.
    drop(v);
    let v = open(&d);
    let ino = v.lookup(1, "l4095".as_ref()).expect("lookup").ino;
    assert_eq!(v.readlink(ino).expect("readlink"), target(4095, 4));
    assert!(fsck_with(&d, Repair::No).is_empty());
}

#[test]
fn the_side_file_goes_with_the_last_name_only() {
    let (_t, d) = new_volume();
    let v = open(&d);
    let t = target(4000, 1);
    let ino = symlink(&v, 1, "a", &t).expect("symlink");
    let sub = v
        .mkdir(1, "sub".as_ref(), 0o755, &caller())
        .expect("mkdir")
        .ino;
    v.link(ino, sub, "b".as_ref()).expect("link");
    v.rename(sub, "b".as_ref(), sub, "c".as_ref(), 0)
        .expect("rename");
    v.unlink(1, "a".as_ref()).expect("unlink a");
    assert_eq!(side_files(&d), 1, "a hard link is left");
    let c = v.lookup(sub, "c".as_ref()).expect("lookup").ino;
    assert_eq!(v.readlink(c).expect("readlink"), t);
    v.unlink(sub, "c".as_ref()).expect("unlink c");
    assert_eq!(side_files(&d), 0);

    // Renamed over: by a file, by a short symlink; exchanged: kept.
    symlink(&v, 1, "x", &target(4000, 2)).expect("x");
    symlink(&v, 1, "y", &target(4000, 3)).expect("y");
    symlink(&v, 1, "short", b"s").expect("short");
    assert_eq!(side_files(&d), 2);
    v.rename(1, "x".as_ref(), 1, "y".as_ref(), RENAME_EXCHANGE)
        .expect("exchange");
    assert_eq!(side_files(&d), 2);
    let y = v.lookup(1, "y".as_ref()).expect("y").ino;
    assert_eq!(v.readlink(y).expect("readlink"), target(4000, 2));
    v.rename(1, "short".as_ref(), 1, "x".as_ref(), 0)
        .expect("over x");
    assert_eq!(side_files(&d), 1);
    super::test_support::touch(&v, 1, "file");
    v.rename(1, "file".as_ref(), 1, "y".as_ref(), 0)
        .expect("over y");
    assert_eq!(side_files(&d), 0);
    drop(v);
    assert!(fsck_with(&d, Repair::No).is_empty());

    // A fresh model of a volume that has had long links looks for them at an unlink.
    let v = open(&d);
    symlink(&v, 1, "z", &target(3100, 4)).expect("z");
    drop(v);
    let v = open(&d);
    v.lookup(1, "z".as_ref()).expect("lookup");
    v.unlink(1, "z".as_ref()).expect("unlink z");
    assert_eq!(side_files(&d), 0);
}

#[test]
fn a_damaged_or_missing_side_file_fails_closed_and_fsck_says_which() {
    let (_t, d) = new_volume();
    let v = open(&d);
    let t = target(4095, 5);
    let ino = symlink(&v, 1, "a", &t).expect("symlink");
    let side = std::fs::read_dir(store(&d))
        .expect("store")
        .next()
        .expect("a side file")
        .expect("entry")
        .path();
    let good = std::fs::read(&side).expect("read");
    for at in [0, 12, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&side, &bad).expect("write");
        let e = v.readlink(ino).expect_err("tampered");
        assert_eq!(e.errno(), libc::EIO, "byte {at}");
    }
    // Cut short, and grown beyond any sealed target.
    std::fs::write(&side, &good[..good.len() - 1]).expect("write");
    assert!(v.readlink(ino).is_err());
    let mut long = good.clone();
    long.resize(good.len() + 1, 0);
    std::fs::write(&side, &long).expect("write");
    assert!(v.readlink(ino).is_err());
    std::fs::write(&side, &good).expect("write");
    assert_eq!(v.readlink(ino).expect("readlink"), t);
    drop(v);

    std::fs::remove_file(&side).expect("remove");
    let p = fsck_with(&d, Repair::Safe);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("symlink false:") && p[0].contains(".kmsfs/links/"),
        "{p:?}"
    );
    let v = open(&d);
    let a = v.lookup(1, "a".as_ref()).expect("lookup");
    assert_eq!(a.size, 0);
    assert_eq!(v.readlink(a.ino).expect_err("missing").errno(), libc::EIO);
    // Its name can still go.
    v.unlink(1, "a".as_ref()).expect("unlink");
}

#[test]
fn fsck_repair_removes_orphan_side_files_only() {
    let (_t, d) = new_volume();
    let v = open(&d);
    symlink(&v, 1, "kept", &target(3600, 6)).expect("kept");
    let gone = symlink(&v, 1, "gone", &target(3600, 7)).expect("gone");
    // The symlink is removed behind kmsfs's back (a crash between its unlink and the side
    // file's), and something else is dropped into the store.
    let gone = super::test_support::cipher_path(&v, gone);
    drop(v);
    std::fs::remove_file(&gone).expect("remove");
    std::fs::write(store(&d).join("stray"), b"x").expect("stray");
    let p = fsck_with(&d, Repair::No);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|p| p.starts_with("side-file false:")), "{p:?}");
    let p = fsck_with(&d, Repair::Safe);
    assert!(p.iter().all(|p| p.starts_with("side-file true:")), "{p:?}");
    assert_eq!(side_files(&d), 1);
    assert!(fsck_with(&d, Repair::No).is_empty());
    let v = open(&d);
    let kept = v.lookup(1, "kept".as_ref()).expect("kept").ino;
    assert_eq!(v.readlink(kept).expect("readlink"), target(3600, 6));
}

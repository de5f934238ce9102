//! Finding nodes by number after the kernel let them go (`export.rs`): `.` and `..` lookups,
//! generations, and what is refused. Opening backing handles needs CAP_DAC_READ_SEARCH: without
//! it the model offers no export support, which the first test checks instead.

use super::test_support::*;
use super::{Vfs, VfsError};

/// Whether the model can open handles here (root); says so when not.
fn exporting(v: &Vfs) -> bool {
    if !v.export_support() {
        assert!(
            !rustix::process::geteuid().is_root(),
            "root must be able to open the backing file system's handles"
        );
        eprintln!("skipped: opening file handles needs CAP_DAC_READ_SEARCH");
        return false;
    }
    true
}

fn forget_all(v: &Vfs, ino: u64, lookups: u64) {
    v.forget(ino, lookups);
    assert!(v.getattr(ino).is_err(), "node {ino} still known");
}

#[test]
fn a_node_let_go_is_found_again_by_number_with_the_same_generation() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    if !exporting(&v) {
        assert!(matches!(
            v.lookup(5000, ".".as_ref()),
            Err(VfsError::Stale(_))
        ));
        return;
    }
    let d = v.mkdir(1, "d".as_ref(), 0o755, &caller()).expect("mkdir");
    let f = write_file(&v, "f", b"content");
    let sub = touch(&v, d.ino, "inner");
    let fa = v.lookup(1, "f".as_ref()).expect("lookup f");
    assert_ne!(fa.generation, 0, "the backing generation is handed out");
    // create + lookup: two references each.
    forget_all(&v, f, 2);
    forget_all(&v, sub, 1);

    let again = v.lookup(f, ".".as_ref()).expect("found by number");
    assert_eq!((again.ino, again.generation), (fa.ino, fa.generation));
    assert_eq!(read_at(&v, f, 0, 100), b"content");
    let inner = v.lookup(sub, ".".as_ref()).expect("file in a subdirectory");
    assert_eq!(inner.ino, sub);

    // A directory's parent; the root's parent is the root.
    let up = v.lookup(d.ino, "..".as_ref()).expect("..");
    assert_eq!(up.ino, 1);
    assert_eq!(v.lookup(1, "..".as_ref()).expect("root ..").ino, 1);
    let dd = v.lookup(d.ino, ".".as_ref()).expect("a known node");
    assert_eq!(dd.ino, d.ino);
}

#[test]
fn a_deleted_file_is_stale_even_when_a_new_file_takes_its_number() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    if !exporting(&v) {
        return;
    }
    let f = write_file(&v, "old", b"old");
    let gen_old = v.lookup(1, "old".as_ref()).expect("lookup").generation;
    v.unlink(1, "old".as_ref()).expect("unlink");
    forget_all(&v, f, 2);
    assert!(matches!(v.lookup(f, ".".as_ref()), Err(VfsError::Stale(_))));

    // New files until one gets the old number (ext4 hands it out again soon).
    let mut reused = None;
    for i in 0..200 {
        let a = touch(&v, 1, &format!("new{i}"));
        if a == f {
            reused = Some(a);
            break;
        }
    }
    if reused.is_some() {
        let now = v.lookup(f, ".".as_ref()).expect("the new file");
        assert_ne!(
            now.generation, gen_old,
            "a new file under an old number must not look like the old one to the kernel"
        );
    }
}

#[test]
fn only_files_of_the_volume_are_handed_out() {
    let (t, dir) = new_volume();
    let v = open(&dir);
    if !exporting(&v) {
        return;
    }
    // Beside the cipher directory, on the same file system; and its control directory.
    let outside = t.path().join("outside");
    std::fs::write(&outside, b"not ours").expect("write");
    let outside_dir = t.path().join("outside-dir");
    std::fs::create_dir(&outside_dir).expect("mkdir");
    let ino = |p: &std::path::Path| rustix::fs::stat(p).expect("stat").st_ino;
    for p in [
        outside.clone(),
        outside_dir.clone(),
        dir.join(".kmsfs"),
        dir.join(".kmsfs/keystore"),
        dir.join("kmsfs.dirid"),
        t.path().to_path_buf(),
    ] {
        assert!(
            matches!(v.lookup(ino(&p), ".".as_ref()), Err(VfsError::Stale(_))),
            "{} was handed out",
            p.display()
        );
    }
}

#[test]
fn remembered_handles_serve_where_numbers_alone_do_not() {
    let (_t, dir) = new_volume();
    let mut v = open(&dir);
    if !exporting(&v) {
        return;
    }
    // As on a backing file system whose handles are more than the inode number (XFS, btrfs).
    v.export.remember_only();
    let f = write_file(&v, "f", b"remembered");
    let d = v.mkdir(1, "d".as_ref(), 0o755, &caller()).expect("mkdir");
    let never = touch(&v, d.ino, "never-forgotten-here");
    forget_all(&v, f, 1);
    let a = v
        .lookup(f, ".".as_ref())
        .expect("from the remembered handle");
    assert_eq!(a.ino, f);
    assert_eq!(read_at(&v, f, 0, 100), b"remembered");
    // Remembered once: a node found again and let go again is remembered again.
    forget_all(&v, f, 1);
    assert_eq!(v.lookup(f, ".".as_ref()).expect("again").ino, f);
    // A node the kernel still holds needs nothing remembered.
    assert_eq!(v.lookup(never, ".".as_ref()).expect("held").ino, never);
    // Not remembered, not makeable: stale.
    let gone = touch(&v, 1, "g");
    forget_all(&v, gone, 1);
    v.export.forget_remembered();
    assert!(matches!(
        v.lookup(gone, ".".as_ref()),
        Err(VfsError::Stale(_))
    ));
}

//! Finding nodes by number after the kernel let them go (`export.rs`): `.` and `..` lookups,
//! generations, and what is refused. Opening backing handles needs CAP_DAC_READ_SEARCH: without
//! it the model offers no export support, which the first test checks instead.

use super::test_support::*;
use super::{Vfs, VfsError};

/// Whether this process has CAP_DAC_READ_SEARCH (capability 2) in its effective set.
fn may_open_handles() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 2) != 0)
}

/// Whether the model can open handles here; says so when not (and then it must not offer it).
fn exporting(v: &Vfs) -> bool {
    if !may_open_handles() {
        assert!(
            !v.export_support(),
            "export support offered without the capability"
        );
        eprintln!("skipped: opening file handles needs CAP_DAC_READ_SEARCH");
        return false;
    }
    assert!(
        v.export_support(),
        "with CAP_DAC_READ_SEARCH the backing file system's handles must open"
    );
    true
}

/// Makes the backing file system forget the directory entries nobody holds (twice: the first
/// round lets inodes go whose entries the second then drops), so that a file found by number
/// is not placed in its directory.
fn drop_backing_names() {
    for _ in 0..2 {
        rustix::fs::sync();
        std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
    }
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

/// A file removed whose FORGET has not come yet (a busy daemon) is stale all the same; one that
/// is still open is not (found again by number while the kernel still holds it: before
/// 2026-12-05 the first case opened the deleted file).
#[test]
fn a_deleted_file_is_stale_before_its_forget_comes() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    if !exporting(&v) {
        return;
    }
    let gone = write_file(&v, "gone", b"deleted");
    let kept = write_file(&v, "kept", b"open");
    let fh = v.open(kept, libc::O_RDONLY).expect("open");
    v.unlink(1, "gone".as_ref()).expect("unlink");
    v.unlink(1, "kept".as_ref()).expect("unlink");
    assert!(matches!(
        v.lookup(gone, ".".as_ref()),
        Err(VfsError::Stale(_))
    ));
    let a = v.lookup(kept, ".".as_ref()).expect("open, so not stale");
    assert_eq!((a.ino, a.nlink), (kept, 0));
    assert_eq!(v.read(fh, 0, 100).expect("read"), b"open");
    v.release(fh).expect("release");
    // The refused lookup counted nothing: the create's count lets the node go.
    forget_all(&v, gone, 1);
    forget_all(&v, kept, 2);
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
    // Stale, or (the number taken at once, by this or another test's file) another
    // generation, which the kernel refuses.
    match v.lookup(f, ".".as_ref()) {
        Err(VfsError::Stale(_)) => {}
        Ok(a) => {
            assert_ne!(a.generation, gen_old, "another file under the old number");
            v.forget(f, 1);
        }
        Err(e) => panic!("{e}"),
    }

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
    // A lookup refused for a while (the backing file moved out of the volume) keeps the
    // handle: once it is back, it is found again.
    forget_all(&v, f, 1);
    let backing = std::fs::read_dir(&dir)
        .expect("cipher dir")
        .map(|e| e.expect("entry").path())
        .find(|p| rustix::fs::lstat(p).is_ok_and(|st| st.st_ino == f))
        .expect("the backing file");
    let away = dir.parent().expect("parent").join("away");
    std::fs::rename(&backing, &away).expect("move out");
    assert!(matches!(v.lookup(f, ".".as_ref()), Err(VfsError::Stale(_))));
    std::fs::rename(&away, &backing).expect("move back");
    assert_eq!(v.lookup(f, ".".as_ref()).expect("back").ino, f);
    forget_all(&v, f, 1);
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

#[test]
fn a_lookup_of_dot_counts_once_like_any_lookup() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    if !exporting(&v) {
        return;
    }
    let f = touch(&v, 1, "f");
    // Held once by the create; "." while held counts one more.
    assert_eq!(v.lookup(f, ".".as_ref()).expect(".").ino, f);
    v.forget(f, 1);
    assert!(
        v.getattr(f).is_ok(),
        "the count of the lookup of . still holds it"
    );
    v.forget(f, 1);
    assert!(v.getattr(f).is_err(), "both counts given back");
    // A failed lookup of "." counts nothing.
    let d = v
        .mkdir(1, "d".as_ref(), 0o755, &caller())
        .expect("mkdir")
        .ino;
    assert!(v.lookup(d, "..".as_ref()).is_ok());
    v.forget(1, 1);
    v.forget(d, 1);
    assert!(v.getattr(d).is_err());
}

#[test]
fn unplaced_files_must_prove_they_belong_to_a_volume() {
    let (t, dir) = new_volume();
    let v = open(&dir);
    if !exporting(&v) {
        return;
    }
    // Inside the volume: a file (with its header) and a symbolic link (its target decrypts).
    let f = write_file(&v, "f", b"inside");
    let l = v
        .symlink(1, "l".as_ref(), "target".as_ref(), &caller())
        .expect("symlink")
        .ino;
    forget_all(&v, f, 1);
    forget_all(&v, l, 1);
    // Beside the volume, on the same backing file system: nothing that proves anything.
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let empty = outside.join("empty");
    std::fs::write(&empty, b"").expect("empty");
    let plain = outside.join("plain");
    std::fs::write(
        &plain,
        b"not a kmsfs file, long enough for a header and more than that, \
        really quite a bit more than a hundred and four bytes of it, so that it is read",
    )
    .expect("plain");
    let link = outside.join("link");
    std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
    let fifo = outside.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o644),
        0,
    )
    .expect("mkfifo");
    let ino = |p: &std::path::Path| rustix::fs::lstat(p).expect("lstat").st_ino;
    let foreign = [&empty, &plain, &link, &fifo].map(|p| (p.clone(), ino(p)));
    drop_backing_names();
    for (p, i) in foreign {
        assert!(
            matches!(v.lookup(i, ".".as_ref()), Err(VfsError::Stale(_))),
            "{} was handed out",
            p.display()
        );
    }
    assert_eq!(v.lookup(f, ".".as_ref()).expect("the file").ino, f);
    assert_eq!(read_at(&v, f, 0, 100), b"inside");
    assert_eq!(v.lookup(l, ".".as_ref()).expect("the link").ino, l);
}

#[test]
fn a_file_found_by_number_is_placed_in_the_entry_it_was_let_go_from() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    if !exporting(&v) {
        return;
    }
    let d = v
        .mkdir(1, "d".as_ref(), 0o755, &caller())
        .expect("mkdir")
        .ino;
    let g = touch(&v, d, "g");
    let moved = touch(&v, d, "moved");
    forget_all(&v, g, 1);
    forget_all(&v, moved, 1);
    // Renamed after it was let go: the remembered entry no longer holds it.
    v.rename(d, "moved".as_ref(), 1, "elsewhere".as_ref(), 0)
        .expect("rename");
    v.forget(d, 1);
    drop_backing_names();
    // Its path is known again (audit records, path conditions), also with its directory let go.
    assert_eq!(v.lookup(g, ".".as_ref()).expect("g").ino, g);
    let node = v.inodes.get(g).expect("node");
    assert_eq!(v.plain_node_path(&node).expect("path"), "/d/g");
    // Where the entry changed, it is still found (by its header), its path unknown until it is
    // looked up by name.
    assert_eq!(v.lookup(moved, ".".as_ref()).expect("moved").ino, moved);
    let node = v.inodes.get(moved).expect("node");
    assert!(v.plain_node_path(&node).is_err());
}

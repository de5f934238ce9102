//! Plaintext paths of nodes (audit records, policy path conditions, key rules) stay right
//! through renames of the node and of its ancestors, long names and hard links.

use super::test_support::{caller, new_volume, open, touch};

const LONG: &str = "a-name-long-enough-that-its-encrypted-form-needs-a-side-file-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

#[test]
fn paths_follow_renames_long_names_and_links() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let c = caller();
    let path = |ino: u64| v.plain_path(&v.node(ino).expect("node")).expect("path");
    let a = v.mkdir(1, "a".as_ref(), 0o755, &c).expect("a").ino;
    let b = v.mkdir(a, "b".as_ref(), 0o755, &c).expect("b").ino;
    let f = touch(&v, b, "f");
    assert_eq!(path(f), "/a/b/f");
    assert_eq!(path(b), "/a/b");
    assert_eq!(path(1), "/");
    // An ancestor renamed: the file's path follows.
    v.rename(1, "a".as_ref(), 1, "c".as_ref(), 0)
        .expect("rename a");
    assert_eq!(path(f), "/c/b/f");
    // The file moved to another directory (its last known parent is no longer its parent).
    v.rename(b, "f".as_ref(), a, LONG.as_ref(), 0)
        .expect("rename f");
    assert_eq!(path(f), format!("/c/{LONG}"));
    // The directory made again under an old name has a new id: no stale name.
    v.rmdir(a, "b".as_ref()).expect("rmdir");
    let b2 = v.mkdir(a, "b".as_ref(), 0o755, &c).expect("b2").ino;
    let g = touch(&v, b2, "g");
    assert_eq!(path(g), "/c/b/g");
    // A hard link looked up in another directory: one of its names, never a wrong one.
    v.link(g, 1, "h".as_ref()).expect("link");
    v.lookup(1, "h".as_ref()).expect("lookup");
    let p = path(g);
    assert!(p == "/c/b/g" || p == "/h", "{p}");
}

#[test]
fn remembered_names_are_checked_against_the_directory() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let c = caller();
    let path = |ino: u64| v.plain_path(&v.node(ino).expect("node")).expect("path");
    let d = v.mkdir(1, "d".as_ref(), 0o755, &c).expect("d").ino;
    let x = touch(&v, d, "x");
    let y = touch(&v, d, "y");
    assert_eq!((path(x), path(y)), ("/d/x".into(), "/d/y".into()));
    // Exchanged: each name now holds the other file.
    v.rename(d, "x".as_ref(), d, "y".as_ref(), libc::RENAME_EXCHANGE)
        .expect("exchange");
    assert_eq!((path(x), path(y)), ("/d/y".into(), "/d/x".into()));
    // Replaced: the file renamed over is no longer under its name (it is only open, or gone).
    let z = touch(&v, d, "z");
    v.rename(d, "z".as_ref(), d, "x".as_ref(), 0)
        .expect("rename over");
    assert_eq!(path(z), "/d/x");
    // The name it was made under unlinked, another link kept: the path is the other link's.
    let w = touch(&v, d, "w");
    v.link(w, 1, "w2".as_ref()).expect("link");
    assert_eq!(path(w), "/w2");
    v.unlink(1, "w2".as_ref()).expect("unlink");
    assert_eq!(path(w), "/d/w");
    // A directory two levels up renamed after the path of the one below was remembered.
    let e = v.mkdir(d, "e".as_ref(), 0o755, &c).expect("e").ino;
    let f = touch(&v, e, "f");
    assert_eq!(path(f), "/d/e/f");
    assert_eq!(path(e), "/d/e");
    v.rename(1, "d".as_ref(), 1, "D".as_ref(), 0)
        .expect("rename d");
    assert_eq!(
        (path(f), path(e), path(d)),
        ("/D/e/f".into(), "/D/e".into(), "/D".into())
    );
}

//! Plaintext paths of nodes (audit records, policy path conditions, key rules) stay right
//! through renames of the node and of its ancestors, long names and hard links.

use super::test_support::{caller, new_volume, open};

const LONG: &str = "a-name-long-enough-that-its-encrypted-form-needs-a-side-file-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

#[test]
fn paths_follow_renames_long_names_and_links() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let c = caller();
    let path = |ino: u64| v.plain_path(&v.node(ino).expect("node")).expect("path");
    let a = v.mkdir(1, "a".as_ref(), 0o755, &c).expect("a").ino;
    let b = v.mkdir(a, "b".as_ref(), 0o755, &c).expect("b").ino;
    let touch = |dir: u64, name: &str| {
        let (a, fh) = v
            .create(dir, name.as_ref(), 0o644, libc::O_RDWR, &c)
            .expect("create");
        v.release(fh).expect("release");
        a.ino
    };
    let f = touch(b, "f");
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
    let g = touch(b2, "g");
    assert_eq!(path(g), "/c/b/g");
    // A hard link looked up in another directory: one of its names, never a wrong one.
    v.link(g, 1, "h".as_ref()).expect("link");
    v.lookup(1, "h".as_ref()).expect("lookup");
    let p = path(g);
    assert!(p == "/c/b/g" || p == "/h", "{p}");
}

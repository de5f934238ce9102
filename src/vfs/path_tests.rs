//! Plaintext paths of nodes (audit records, policy path conditions, key rules) and the names the
//! kernel finds them under stay right through renames of the node and of its ancestors, long
//! names and hard links; whiteouts.

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

/// The name the kernel can find a node under now: after renames (which the kernel makes without
/// a lookup), into another directory, to a long name; none once unlinked; never a name that
/// now holds another node.
#[test]
fn current_names_follow_renames_and_never_name_another_node() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let c = caller();
    let name = |ino: u64| {
        v.current_name(ino)
            .map(|(p, n)| (p, n.into_string().unwrap()))
    };
    let d = v.mkdir(1, "d".as_ref(), 0o755, &c).expect("d").ino;
    let e = v.mkdir(1, "e".as_ref(), 0o755, &c).expect("e").ino;
    let x = touch(&v, d, "x");
    assert_eq!(name(x), Some((d, "x".into())));
    v.rename(d, "x".as_ref(), e, LONG.as_ref(), 0)
        .expect("rename");
    assert_eq!(name(x), Some((e, LONG.into())));
    v.rename(e, LONG.as_ref(), 1, "top".as_ref(), 0)
        .expect("rename");
    assert_eq!(name(x), Some((1, "top".into())));
    // Another file made under x's first name: not x's name.
    let y = touch(&v, d, "x");
    assert_eq!(name(y), Some((d, "x".into())));
    assert_eq!(name(x), Some((1, "top".into())));
    v.unlink(1, "top".as_ref()).expect("unlink");
    assert_eq!(name(x), None);
}

/// RENAME_WHITEOUT leaves a character device 0/0 at the old name, owned by the caller (when
/// the daemon runs as root, as for every node it makes), with long names too; the moved node
/// is under its new name.
#[test]
fn a_whiteout_takes_the_old_name_and_belongs_to_the_caller() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let root = rustix::process::geteuid().is_root();
    let other = super::Caller {
        uid: 4321,
        gid: 4322,
        ..caller()
    };
    for from in ["short", LONG] {
        let f = touch(&v, 1, from);
        let to = format!("{}-moved", &from[..5]);
        v.rename_by(
            1,
            from.as_ref(),
            1,
            to.as_ref(),
            super::RENAME_WHITEOUT,
            Some(&other),
        )
        .expect("rename with whiteout");
        assert_eq!(v.lookup(1, to.as_ref()).expect("moved").ino, f);
        let w = v.lookup(1, from.as_ref()).expect("whiteout");
        assert_eq!(
            (w.kind, w.rdev, w.perm),
            (super::Kind::CharDev, 0, 0),
            "{from}"
        );
        if root {
            assert_eq!((w.uid, w.gid), (4321, 4322), "{from}");
        }
        let listed: Vec<_> = v
            .list_dir(1)
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(listed.iter().any(|n| n == from), "{from} listed");
        v.unlink(1, from.as_ref()).expect("unlink whiteout");
        assert!(v.lookup(1, from.as_ref()).is_err());
    }
    // Not with RENAME_EXCHANGE (the kernel refuses it before; the model too).
    touch(&v, 1, "p");
    touch(&v, 1, "q");
    assert!(
        v.rename(
            1,
            "p".as_ref(),
            1,
            "q".as_ref(),
            super::RENAME_WHITEOUT | super::RENAME_EXCHANGE
        )
        .is_err()
    );
}

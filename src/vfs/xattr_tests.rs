//! Extended attributes in the model: the pack of small values, values on their own, moves
//! between the two, leftovers of an interrupted move, tampering, concurrent changes.

use std::ffi::OsStr;

use rustix::fs::XattrFlags;

use super::test_support::{new_volume, open, touch};
use super::xattr_ops::{PACK_VALUE_MAX, XattrReply};
use super::{ROOT_INO, Vfs, VfsError};
use crate::names::XATTR_PACK;

fn set(v: &Vfs, ino: u64, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    v.setxattr(ino, OsStr::new(name), value, flags)
        .map_err(|e| e.errno())
}

fn get(v: &Vfs, ino: u64, name: &str) -> Result<Vec<u8>, i32> {
    match v.getxattr(ino, OsStr::new(name), 1 << 16) {
        Ok(XattrReply::Data(d)) => Ok(d),
        Ok(XattrReply::Size(_)) => unreachable!("asked for data"),
        Err(e) => Err(e.errno()),
    }
}

fn list(v: &Vfs, ino: u64) -> Vec<String> {
    let XattrReply::Data(d) = v.listxattr(ino, 1 << 16).unwrap() else {
        unreachable!()
    };
    d.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect()
}

/// The backing xattr names of a node.
fn backing_names(v: &Vfs, ino: u64) -> Vec<String> {
    let p = v.node(ino).unwrap().proc_path();
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::listxattr(p.as_str(), &mut buf[..]).unwrap();
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .filter(|s| {
            (s.starts_with("user.kmsfs.") || s.starts_with("trusted.kmsfs."))
                && s != crate::fsutil::DIRID_XATTR
        })
        .collect()
}

#[test]
fn as_many_small_attributes_fit_as_on_the_backing_file_system() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    // ext4 with 4 KiB blocks holds 148 of these on a plain file (one apiece, 49 fitted).
    for i in 0..148 {
        set(&v, f, &format!("user.test{i}"), b"x", 0).unwrap_or_else(|e| panic!("{i}: {e}"));
    }
    let names = list(&v, f);
    assert_eq!(names.len(), 148);
    assert_eq!(names[0], "user.test0");
    for i in 0..148 {
        assert_eq!(get(&v, f, &format!("user.test{i}")).unwrap(), b"x");
    }
    assert_eq!(backing_names(&v, f), [XATTR_PACK]);
    // Names up to the kernel's limit (255 with `user.`), which on their own would not fit.
    let long = format!("user.{}", "n".repeat(250));
    set(&v, f, &long, b"v", 0).unwrap();
    assert_eq!(get(&v, f, &long).unwrap(), b"v");
    assert_eq!(
        set(&v, f, &long, &vec![1; PACK_VALUE_MAX + 1], 0),
        Err(libc::ERANGE)
    );
    assert_eq!(get(&v, f, &long).unwrap(), b"v", "unchanged");
    // The same on a directory.
    let d = v
        .mkdir(
            ROOT_INO,
            OsStr::new("d"),
            0o755,
            &super::test_support::caller(),
        )
        .unwrap()
        .ino;
    for i in 0..100 {
        set(&v, d, &format!("user.test{i}"), b"x", 0).unwrap();
    }
    assert_eq!(list(&v, d).len(), 100);
}

#[test]
fn a_value_moves_between_the_pack_and_its_own_xattr_as_it_grows_and_shrinks() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    set(&v, f, "user.small", b"s", 0).unwrap();
    set(&v, f, "user.a", b"1", 0).unwrap();
    assert_eq!(backing_names(&v, f), [XATTR_PACK]);
    let big = vec![7u8; PACK_VALUE_MAX + 1];
    set(&v, f, "user.a", &big, 0).unwrap();
    assert_eq!(get(&v, f, "user.a").unwrap(), big);
    assert_eq!(backing_names(&v, f).len(), 2, "pack and user.a on its own");
    assert_eq!(list(&v, f), ["user.small", "user.a"]);
    set(&v, f, "user.a", b"2", 0).unwrap();
    assert_eq!(get(&v, f, "user.a").unwrap(), b"2");
    assert_eq!(backing_names(&v, f), [XATTR_PACK]);
    // The last attribute removed takes the pack with it.
    v.removexattr(f, OsStr::new("user.a")).unwrap();
    v.removexattr(f, OsStr::new("user.small")).unwrap();
    assert!(backing_names(&v, f).is_empty());
    assert_eq!(
        v.removexattr(f, OsStr::new("user.small"))
            .unwrap_err()
            .errno(),
        libc::ENODATA
    );
    // A large value alone, and removed.
    set(&v, f, "user.big", &big, 0).unwrap();
    assert_eq!(backing_names(&v, f).len(), 1);
    assert_ne!(backing_names(&v, f), [XATTR_PACK]);
    v.removexattr(f, OsStr::new("user.big")).unwrap();
    assert!(backing_names(&v, f).is_empty());
}

#[test]
fn create_and_replace_see_an_attribute_wherever_it_is() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    let big = vec![1u8; 3000];
    let (create, replace) = (
        XattrFlags::CREATE.bits() as i32,
        XattrFlags::REPLACE.bits() as i32,
    );
    set(&v, f, "user.p", b"v", 0).unwrap();
    set(&v, f, "user.s", &big, 0).unwrap();
    for name in ["user.p", "user.s"] {
        assert_eq!(set(&v, f, name, b"w", create), Err(libc::EEXIST));
    }
    assert_eq!(set(&v, f, "user.none", b"w", replace), Err(libc::ENODATA));
    set(&v, f, "user.s", b"now small", replace).unwrap();
    set(&v, f, "user.p", &big, replace).unwrap();
    assert_eq!(get(&v, f, "user.s").unwrap(), b"now small");
    assert_eq!(get(&v, f, "user.p").unwrap(), big);
    assert_eq!(get(&v, f, "user.none"), Err(libc::ENODATA));
    assert_eq!(set(&v, f, "system.x", b"v", 0), Err(libc::EOPNOTSUPP));
}

/// A crash between the two writes of a move leaves an attribute in the pack and on its own:
/// the pack's copy is read, listed once, and both go at the next change.
#[test]
fn a_copy_left_in_both_places_reads_from_the_pack() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    set(&v, f, "user.k", b"new", 0).unwrap();
    let p = v.node(f).unwrap().proc_path();
    let bname = v.names.encrypt_xattr_name(b"k");
    let old = v.names.encrypt_xattr_value(&bname, b"old");
    rustix::fs::setxattr(p.as_str(), bname.as_str(), &old, XattrFlags::empty()).unwrap();
    assert_eq!(get(&v, f, "user.k").unwrap(), b"new");
    assert_eq!(list(&v, f), ["user.k"]);
    set(&v, f, "user.k", b"newer", 0).unwrap();
    assert_eq!(backing_names(&v, f), [XATTR_PACK]);
    rustix::fs::setxattr(p.as_str(), bname.as_str(), &old, XattrFlags::empty()).unwrap();
    v.removexattr(f, OsStr::new("user.k")).unwrap();
    assert_eq!(get(&v, f, "user.k"), Err(libc::ENODATA));
    assert!(backing_names(&v, f).is_empty());
}

/// Every byte of the stored pack is authenticated: one flipped, every operation on the file's
/// attributes fails with EIO (never another file's or a wrong value), and nothing is rewritten.
#[test]
fn a_flipped_byte_in_the_pack_is_an_integrity_error() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    set(&v, f, "user.a", b"value a", 0).unwrap();
    set(&v, f, "user.b", b"value b", 0).unwrap();
    let p = v.node(f).unwrap().proc_path();
    let mut good = vec![0u8; 4096];
    let n = rustix::fs::getxattr(p.as_str(), XATTR_PACK, &mut good[..]).unwrap();
    good.truncate(n);
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x20;
        rustix::fs::setxattr(p.as_str(), XATTR_PACK, &bad, XattrFlags::empty()).unwrap();
        assert!(
            matches!(
                v.getxattr(f, OsStr::new("user.a"), 100),
                Err(VfsError::Integrity(_))
            ),
            "byte {i}"
        );
        assert_eq!(v.listxattr(f, 100).unwrap_err().errno(), libc::EIO);
        assert_eq!(set(&v, f, "user.c", b"c", 0), Err(libc::EIO));
        assert_eq!(
            v.removexattr(f, OsStr::new("user.b")).unwrap_err().errno(),
            libc::EIO
        );
        let mut now = vec![0u8; 4096];
        let m = rustix::fs::getxattr(p.as_str(), XATTR_PACK, &mut now[..]).unwrap();
        assert_eq!(&now[..m], &bad[..], "left as it was");
    }
    // Another file's pack is not this one's either way (not bound to the file: see
    // FORMAT.md §10), but a value stored on its own is no pack.
    let bname = v.names.encrypt_xattr_name(b"a");
    let single = v.names.encrypt_xattr_value(&bname, b"value a");
    rustix::fs::setxattr(p.as_str(), XATTR_PACK, &single, XattrFlags::empty()).unwrap();
    assert_eq!(get(&v, f, "user.a"), Err(libc::EIO));
}

/// Two values stored on their own (an ext4 inode's xattr block holds about 4 KiB in all).
fn value_len(t: usize, i: usize) -> usize {
    if t < 2 && i == 1 { 1100 } else { 3 }
}

#[test]
fn concurrent_changes_to_one_file_all_land() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    std::thread::scope(|s| {
        for t in 0..6 {
            let v = &v;
            s.spawn(move || {
                for i in 0..15 {
                    let big = vec![t as u8; value_len(t, i)];
                    set(v, f, &format!("user.t{t}-{i}"), &big, 0).unwrap();
                }
                for i in (0..15).step_by(3) {
                    v.removexattr(f, OsStr::new(&format!("user.t{t}-{i}")))
                        .unwrap();
                }
            });
        }
    });
    let names = list(&v, f);
    assert_eq!(names.len(), 6 * 10, "{names:?}");
    for t in 0..6 {
        for i in 0..15 {
            let got = get(&v, f, &format!("user.t{t}-{i}"));
            if i % 3 == 0 {
                assert_eq!(got, Err(libc::ENODATA));
            } else {
                let want = vec![t as u8; value_len(t, i)];
                assert_eq!(got.unwrap(), want);
            }
        }
    }
}

/// Attributes filling a regular file's xattr room stop short of the interrupted-write marker's
/// room (else a size-changing write there would go unmarked, and a crash in it could leave the
/// whole file unreadable): small values and large ones, and the file still writes.
#[test]
fn attributes_leave_room_for_the_interrupted_write_marker() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    for (name, len) in [("small", 1usize), ("large", 1500)] {
        let f = touch(&v, ROOT_INO, name);
        let mut n = 0;
        let err = loop {
            match set(&v, f, &format!("user.a{n}"), &vec![b'v'; len], 0) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 2000, "never full");
        };
        assert_eq!(err, libc::ENOSPC, "{name}");
        assert!(n > 0, "{name}");
        assert_eq!(list(&v, f).len(), n, "{name}: the refused one is not there");
        let p = v.node(f).unwrap().proc_path();
        rustix::fs::setxattr(
            p.as_str(),
            "user.kmsfs-pending",
            &[0u8; 16],
            XattrFlags::CREATE,
        )
        .unwrap_or_else(|e| panic!("{name}: no room for the marker after {n}: {e}"));
        rustix::fs::removexattr(p.as_str(), "user.kmsfs-pending").unwrap();
        // Changing a value to one of the same size still works when full.
        set(&v, f, "user.a0", &vec![b'w'; len], 0).unwrap();
        assert_eq!(get(&v, f, "user.a0").unwrap(), vec![b'w'; len]);
    }
}

/// A file whose xattr room is already full without room for the marker (attributes stored one
/// apiece by an older kmsfs) still takes changes the backing file system takes: replacing a
/// value by one of the same size, or removing one.
#[test]
fn a_file_filled_by_an_older_kmsfs_still_takes_changes() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    let p = v.node(f).unwrap().proc_path();
    let mut n = 0;
    loop {
        let bname = v.names.encrypt_xattr_name(format!("old{n}").as_bytes());
        let stored = v.names.encrypt_xattr_value(&bname, &[b'o'; 40]);
        if rustix::fs::setxattr(p.as_str(), bname.as_str(), &stored, XattrFlags::CREATE).is_err() {
            break;
        }
        n += 1;
    }
    // The last bytes of room, with small attributes kmsfs does not list.
    let mut k = 0;
    while rustix::fs::setxattr(
        p.as_str(),
        format!("user.x{k}").as_str(),
        b"x",
        XattrFlags::CREATE,
    )
    .is_ok()
    {
        k += 1;
    }
    assert!(!crate::content::pending::marker_fits(&p), "no room left");
    assert_eq!(list(&v, f).len(), n);
    set(&v, f, "user.old0", &[b'n'; 40], 0).unwrap();
    assert_eq!(get(&v, f, "user.old0").unwrap(), [b'n'; 40]);
    v.removexattr(f, OsStr::new("user.old1")).unwrap();
    assert_eq!(list(&v, f).len(), n - 1);
}

/// `trusted.` and `security.` attributes are stored apart from `user.` ones of the same
/// suffix (and from a `user.` one named like them), small and large, packed and alone, across
/// a fresh model; `trusted.` names are listed only for a caller allowed to see them;
/// `security.selinux` and `system.` stay unsupported.
#[test]
fn other_namespaces_are_kept_apart_from_user_names() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    let big = vec![7u8; PACK_VALUE_MAX + 1];
    let values: [(&str, &[u8]); 6] = [
        ("user.a", b"user"),
        ("trusted.a", b"trusted"),
        ("security.a", b"security"),
        ("user.trusted.a", b"user named like trusted"),
        (
            "security.capability",
            &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0],
        ),
        ("trusted.big", &big),
    ];
    for (n, val) in values {
        assert_eq!(set(&v, f, n, val, 0), Ok(()), "{n}");
    }
    assert_eq!(set(&v, f, "trusted.a", b"x", 1), Err(libc::EEXIST));
    for name in ["security.selinux", "system.posix_acl_access", "other.x"] {
        assert_eq!(set(&v, f, name, b"x", 0), Err(libc::EOPNOTSUPP), "{name}");
        assert_eq!(get(&v, f, name), Err(libc::EOPNOTSUPP), "{name}");
    }
    drop(v);
    let v = open(&dir);
    let f = v.lookup(ROOT_INO, "f".as_ref()).unwrap().ino;
    for (n, val) in values {
        assert_eq!(get(&v, f, n).as_deref(), Ok(val), "{n}");
    }
    let mut all = list(&v, f);
    all.sort();
    let mut want: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
    want.sort();
    assert_eq!(all, want);
    let XattrReply::Data(d) = v.listxattr_for(f, 1 << 16, false).unwrap() else {
        unreachable!()
    };
    let shown: Vec<&[u8]> = d.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
    assert_eq!(shown.len(), 4, "{:?}", String::from_utf8_lossy(&d));
    assert!(shown.iter().all(|n| !n.starts_with(b"trusted.")));
    // A pack entry's name has at most 255 bytes, the zero byte included.
    let long = |n: usize| format!("trusted.{}", "n".repeat(n - "trusted.".len()));
    assert_eq!(set(&v, f, &long(254), b"v", 0), Ok(()));
    assert_eq!(get(&v, f, &long(254)).as_deref(), Ok(&b"v"[..]));
    assert_eq!(set(&v, f, &long(255), b"v", 0), Err(libc::ERANGE));
    assert_eq!(set(&v, f, "user.", b"v", 0), Err(libc::EINVAL));
    v.removexattr(f, OsStr::new(&long(254))).unwrap();
    // Removing one leaves its namesakes in the other namespaces.
    v.removexattr(f, OsStr::new("trusted.a")).unwrap();
    assert_eq!(get(&v, f, "trusted.a"), Err(libc::ENODATA));
    assert_eq!(get(&v, f, "user.a").as_deref(), Ok(&b"user"[..]));
    assert_eq!(get(&v, f, "security.a").as_deref(), Ok(&b"security"[..]));
}

/// Symlinks and special files take `trusted.`/`security.` attributes (in the backing
/// `trusted.` namespace), small and large, across a fresh model; `user.` ones are refused as
/// Linux refuses them there.
#[test]
fn symlinks_and_fifos_take_trusted_and_security_attributes() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let c = super::test_support::caller();
    let l = v
        .symlink(ROOT_INO, "l".as_ref(), "target".as_ref(), &c)
        .unwrap()
        .ino;
    let p = v
        .mknod(ROOT_INO, "p".as_ref(), libc::S_IFIFO | 0o644, 0, &c)
        .unwrap()
        .ino;
    let big = vec![3u8; PACK_VALUE_MAX + 10];
    for ino in [l, p] {
        assert_eq!(set(&v, ino, "user.x", b"v", 0), Err(libc::EPERM));
        assert_eq!(get(&v, ino, "user.x"), Err(libc::ENODATA));
        assert_eq!(set(&v, ino, "trusted.a", b"one", 0), Ok(()));
        assert_eq!(set(&v, ino, "security.b", &big, 0), Ok(()));
        let names = backing_names(&v, ino);
        assert!(
            !names.is_empty() && names.iter().all(|n| n.starts_with("trusted.kmsfs.")),
            "{names:?}"
        );
    }
    drop(v);
    let v = open(&dir);
    for name in ["l", "p"] {
        let ino = v.lookup(ROOT_INO, name.as_ref()).unwrap().ino;
        assert_eq!(
            get(&v, ino, "trusted.a").as_deref(),
            Ok(&b"one"[..]),
            "{name}"
        );
        assert_eq!(get(&v, ino, "security.b"), Ok(big.clone()), "{name}");
        let mut l = list(&v, ino);
        l.sort();
        assert_eq!(l, ["security.b", "trusted.a"], "{name}");
        v.removexattr(ino, OsStr::new("trusted.a")).unwrap();
        v.removexattr(ino, OsStr::new("security.b")).unwrap();
        assert!(list(&v, ino).is_empty(), "{name}");
        assert!(backing_names(&v, ino).is_empty(), "{name}");
    }
}

#[test]
fn a_node_without_attributes_is_answered_from_its_listing() {
    // A node without kmsfs attributes is answered from one backing listing
    // (`holds_no_attributes`); any pack or value on its own takes the reads as before.
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let empty = touch(&v, ROOT_INO, "empty");
    assert_eq!(get(&v, empty, "user.none"), Err(libc::ENODATA));
    assert_eq!(get(&v, empty, "security.capability"), Err(libc::ENODATA));
    // Values stored on their own only (no pack).
    let f = touch(&v, ROOT_INO, "f");
    let big = vec![9u8; PACK_VALUE_MAX + 100];
    set(&v, f, "user.big1", &big, 0).expect("big1");
    set(&v, f, "user.big2", &big, 0).expect("big2");
    assert_eq!(backing_names(&v, f).len(), 2);
    assert_eq!(get(&v, f, "user.big2"), Ok(big));
    assert_eq!(get(&v, f, "user.none"), Err(libc::ENODATA));
    // The pack only.
    let g = touch(&v, ROOT_INO, "g");
    set(&v, g, "user.small", b"s", 0).expect("small");
    assert_eq!(get(&v, g, "user.small"), Ok(b"s".to_vec()));
    assert_eq!(get(&v, g, "user.other"), Err(libc::ENODATA));
    // A directory (its id copy is an internal attribute, not one of these).
    let d = v
        .mkdir(
            ROOT_INO,
            "d".as_ref(),
            0o755,
            &super::test_support::caller(),
        )
        .expect("mkdir")
        .ino;
    assert_eq!(get(&v, d, "user.none"), Err(libc::ENODATA));
    set(&v, d, "user.tag", b"t", 0).expect("tag");
    assert_eq!(get(&v, d, "user.tag"), Ok(b"t".to_vec()));
}

/// A value the kernel accepts (64 KiB) that no longer fits once encrypted is ENOSPC, as ext4
/// answers for a value without room, not the E2BIG the backing store gives for the encrypted
/// one (found comparing with ext4); the attributes there are left as they were.
#[test]
fn a_value_too_big_once_encrypted_is_enospc() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    set(&v, f, "user.kept", b"k", 0).unwrap();
    let r = set(&v, f, "user.huge", &vec![1u8; 65536], 0);
    assert_eq!(r, Err(libc::ENOSPC));
    assert_eq!(list(&v, f), ["user.kept"]);
    assert_eq!(get(&v, f, "user.kept").unwrap(), b"k");
}

/// Setting an attribute to the value it has writes nothing: the file's ctime stays, as on ext4
/// (the encrypted copy was written again, which moved it). In the pack and on its own.
#[test]
fn setting_the_value_an_attribute_has_changes_nothing() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, ROOT_INO, "f");
    let big = vec![7u8; PACK_VALUE_MAX + 1];
    let ctime = || v.getattr(f).unwrap().ctime;
    for (name, value) in [("user.small", &b"1"[..]), ("user.big", &big[..])] {
        set(&v, f, name, value, 0).unwrap();
        let before = ctime();
        std::thread::sleep(std::time::Duration::from_millis(20));
        set(&v, f, name, value, 0).unwrap();
        set(&v, f, name, value, libc::XATTR_REPLACE).unwrap();
        assert_eq!(ctime(), before, "{name}: the same value moved the ctime");
        assert_eq!(
            set(&v, f, name, value, libc::XATTR_CREATE),
            Err(libc::EEXIST)
        );
        let mut other = value.to_vec();
        other[0] ^= 1;
        set(&v, f, name, &other, 0).unwrap();
        assert_ne!(ctime(), before, "{name}: a new value");
        assert_eq!(get(&v, f, name).unwrap(), other);
    }
    // Immutable: refused with EPERM, the same value too (as on ext4).
    let start = v.inode_flags(f).unwrap();
    let immutable = start | rustix::fs::IFlags::IMMUTABLE.bits();
    if v.set_inode_flags(f, immutable).is_ok() {
        let same = get(&v, f, "user.small").unwrap();
        let r = set(&v, f, "user.small", &same, 0);
        v.set_inode_flags(f, start).unwrap();
        assert_eq!(r, Err(libc::EPERM));
    }
}

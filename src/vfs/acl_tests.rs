//! POSIX ACLs in the model (`--acl`): the mode an access ACL implies, chmod, inheritance from a
//! directory's default ACL, the umask, what is refused, and what a mount without `--acl` sees.

use std::ffi::OsStr;

use super::attr_ops::SetAttr;
use super::test_support::{caller, new_volume, open, open_with, touch};
use super::xattr_ops::XattrReply;
use super::{Caller, ROOT_INO, Vfs, VfsOptions};
use crate::format::acl::{GROUP, GROUP_OBJ, MASK, OTHER, UNDEFINED_ID as U, USER, USER_OBJ, acl};

const ACCESS: &str = "system.posix_acl_access";
const DEFAULT: &str = "system.posix_acl_default";

fn with_acls(dir: &std::path::Path) -> Vfs {
    open_with(
        dir,
        VfsOptions {
            acl: true,
            ..Default::default()
        },
    )
}

fn get(v: &Vfs, ino: u64, name: &str) -> Result<Vec<u8>, i32> {
    match v.getxattr(ino, OsStr::new(name), 1 << 16) {
        Ok(XattrReply::Data(d)) => Ok(d),
        Ok(XattrReply::Size(_)) => unreachable!("asked for data"),
        Err(e) => Err(e.errno()),
    }
}

fn set(v: &Vfs, ino: u64, name: &str, value: &[u8]) -> Result<(), i32> {
    v.setxattr(ino, OsStr::new(name), value, 0)
        .map_err(|e| e.errno())
}

/// The attribute names listed, sorted.
fn names(v: &Vfs, ino: u64) -> Vec<String> {
    let XattrReply::Data(d) = v.listxattr(ino, 1 << 16).expect("listxattr") else {
        unreachable!()
    };
    let mut n: Vec<String> = d
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    n.sort();
    n
}

fn mode(v: &Vfs, ino: u64) -> u16 {
    v.getattr(ino).expect("getattr").perm
}

fn chmod(v: &Vfs, ino: u64, m: u32) {
    let set = SetAttr {
        mode: Some(m),
        ..Default::default()
    };
    v.setattr(ino, None, &set, None).expect("chmod");
}

/// user::rw- user:1000:r-x group::r-- mask::r-x other::---
fn named() -> Vec<u8> {
    acl(&[
        (USER_OBJ, 6, U),
        (USER, 5, 1000),
        (GROUP_OBJ, 4, U),
        (MASK, 5, U),
        (OTHER, 0, U),
    ])
}

#[test]
fn an_access_acl_sets_the_mode_and_follows_chmod() {
    let (_t, dir) = new_volume();
    let v = with_acls(&dir);
    let f = touch(&v, ROOT_INO, "f");
    chmod(&v, f, 0o4644);
    set(&v, f, ACCESS, &named()).expect("set");
    // The group class is the mask's; set-user-id stays.
    assert_eq!(mode(&v, f), 0o4650);
    assert_eq!(get(&v, f, ACCESS), Ok(named()));
    assert_eq!(names(&v, f), [ACCESS]);
    chmod(&v, f, 0o640);
    assert_eq!(
        get(&v, f, ACCESS),
        Ok(acl(&[
            (USER_OBJ, 6, U),
            (USER, 5, 1000),
            (GROUP_OBJ, 4, U),
            (MASK, 4, U),
            (OTHER, 0, U),
        ]))
    );
    // Still there after a fresh start.
    drop(v);
    let v = with_acls(&dir);
    let f = v.lookup(ROOT_INO, "f".as_ref()).expect("lookup").ino;
    assert_eq!(mode(&v, f), 0o640);
    // An ACL the mode says all of is not stored, and replaces one that was.
    let minimal = acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 1, U)]);
    set(&v, f, ACCESS, &minimal).expect("set minimal");
    assert_eq!(mode(&v, f), 0o751);
    assert_eq!(get(&v, f, ACCESS), Err(libc::ENODATA));
    assert!(names(&v, f).is_empty());
    // Removing an ACL leaves the mode.
    set(&v, f, ACCESS, &named()).expect("set");
    v.removexattr(f, ACCESS.as_ref()).expect("remove");
    assert_eq!(mode(&v, f), 0o650);
    assert_eq!(get(&v, f, ACCESS), Err(libc::ENODATA));
    // Removing it again succeeds, as on ext4 (where removing an ACL is setting none).
    assert_eq!(
        v.removexattr(f, ACCESS.as_ref()).map_err(|e| e.errno()),
        Ok(())
    );
    let d = v
        .mkdir(ROOT_INO, "d".as_ref(), 0o755, &caller())
        .expect("mkdir")
        .ino;
    assert_eq!(
        v.removexattr(d, DEFAULT.as_ref()).map_err(|e| e.errno()),
        Ok(())
    );
}

#[test]
fn set_group_id_goes_for_a_caller_outside_the_group() {
    let (_t, dir) = new_volume();
    let v = with_acls(&dir);
    let f = touch(&v, ROOT_INO, "f");
    chmod(&v, f, 0o2755);
    let outsider = Caller {
        uid: 65534,
        gid: 65534,
        ..caller()
    };
    v.setxattr_as(f, ACCESS.as_ref(), &named(), 0, Some(&caller()))
        .expect("as root");
    assert_eq!(mode(&v, f), 0o2650);
    v.setxattr_as(f, ACCESS.as_ref(), &named(), 0, Some(&outsider))
        .expect("as an outsider");
    assert_eq!(mode(&v, f), 0o650);
}

#[test]
fn new_nodes_inherit_the_default_acl_or_take_the_umask() {
    let (_t, dir) = new_volume();
    let v = with_acls(&dir);
    let c = Caller {
        umask: 0o027,
        ..caller()
    };
    // No default ACL: the umask applies.
    let plain = v
        .mkdir(ROOT_INO, "plain".as_ref(), 0o777, &c)
        .expect("mkdir");
    assert_eq!(plain.perm, 0o750);
    let (a, fh) = v
        .create(plain.ino, "f".as_ref(), 0o666, libc::O_RDWR, &c)
        .expect("create");
    v.release(fh).expect("release");
    assert_eq!(a.perm, 0o640);
    assert!(names(&v, a.ino).is_empty());
    // default: user::rwx user:1000:rwx group::r-x mask::rwx other::r-x
    let d = v
        .mkdir(ROOT_INO, "d".as_ref(), 0o755, &c)
        .expect("mkdir")
        .ino;
    let default = acl(&[
        (USER_OBJ, 7, U),
        (USER, 7, 1000),
        (GROUP_OBJ, 5, U),
        (MASK, 7, U),
        (OTHER, 5, U),
    ]);
    set(&v, d, DEFAULT, &default).expect("default");
    assert_eq!(mode(&v, d), 0o750, "a default ACL leaves the mode");
    let (f, fh) = v
        .create(d, "f".as_ref(), 0o666, libc::O_RDWR, &c)
        .expect("create");
    v.release(fh).expect("release");
    // The umask plays no part; the mode cuts the entries down.
    assert_eq!(f.perm, 0o664);
    assert_eq!(
        get(&v, f.ino, ACCESS),
        Ok(acl(&[
            (USER_OBJ, 6, U),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, U),
            (MASK, 6, U),
            (OTHER, 4, U),
        ]))
    );
    assert_eq!(get(&v, f.ino, DEFAULT), Err(libc::ENODATA));
    // A directory takes the default ACL as its own default too.
    let sub = v.mkdir(d, "sub".as_ref(), 0o777, &c).expect("mkdir");
    assert_eq!(sub.perm, 0o775);
    assert_eq!(get(&v, sub.ino, DEFAULT), Ok(default.clone()));
    assert_eq!(names(&v, sub.ino), [ACCESS, DEFAULT]);
    // A FIFO too; a regular file by mknod as by create; a symlink takes nothing.
    let p = v
        .mknod(d, "p".as_ref(), libc::S_IFIFO | 0o644, 0, &c)
        .expect("mkfifo");
    assert_eq!(p.perm, 0o644);
    assert_eq!(get(&v, p.ino, ACCESS).map(|a| a.len()), Ok(4 + 5 * 8));
    let m = v
        .mknod(d, "m".as_ref(), libc::S_IFREG | 0o600, 0, &c)
        .expect("mknod");
    assert_eq!(m.perm, 0o600);
    let s = v
        .symlink(d, "s".as_ref(), "f".as_ref(), &c)
        .expect("symlink");
    assert_eq!(get(&v, s.ino, ACCESS), Err(libc::ENODATA));
    // A minimal default ACL is a umask of its own, and stores no access ACL.
    let e = v
        .mkdir(ROOT_INO, "e".as_ref(), 0o755, &c)
        .expect("mkdir")
        .ino;
    let minimal = acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)]);
    set(&v, e, DEFAULT, &minimal).expect("default");
    let x = touch(&v, e, "x");
    assert_eq!(mode(&v, x), 0o640);
    assert!(names(&v, x).is_empty());
    // Removing the default ACL: the umask again.
    v.removexattr(d, DEFAULT.as_ref()).expect("remove default");
    let g = v.mkdir(d, "after".as_ref(), 0o777, &c).expect("mkdir");
    assert_eq!(g.perm, 0o750);
    assert!(names(&v, g.ino).is_empty());
}

#[test]
fn what_is_refused() {
    let (_t, dir) = new_volume();
    let v = with_acls(&dir);
    let f = touch(&v, ROOT_INO, "f");
    let s = v
        .symlink(ROOT_INO, "s".as_ref(), "f".as_ref(), &caller())
        .expect("symlink")
        .ino;
    // A default ACL goes on directories only.
    assert_eq!(set(&v, f, DEFAULT, &named()), Err(libc::EACCES));
    assert_eq!(set(&v, s, ACCESS, &named()), Err(libc::EOPNOTSUPP));
    // Not valid: a named entry without a mask, a named group with the undefined id, empty,
    // version 1.
    let mut v1 = named();
    v1[0] = 1;
    for bad in [
        acl(&[
            (USER_OBJ, 6, U),
            (USER, 5, 7),
            (GROUP_OBJ, 4, U),
            (OTHER, 0, U),
        ]),
        acl(&[
            (USER_OBJ, 6, U),
            (GROUP_OBJ, 4, U),
            (GROUP, 4, U),
            (MASK, 5, U),
            (OTHER, 0, U),
        ]),
        Vec::new(),
        v1,
    ] {
        assert_eq!(set(&v, f, ACCESS, &bad), Err(libc::EINVAL), "{bad:?}");
    }
    assert!(names(&v, f).is_empty());
    // Other system. names stay unsupported.
    assert_eq!(set(&v, f, "system.other", b"x"), Err(libc::EOPNOTSUPP));
}

#[test]
fn without_acl_the_names_are_unsupported_and_stored_acls_unlisted() {
    let (_t, dir) = new_volume();
    let v = with_acls(&dir);
    let f = touch(&v, ROOT_INO, "f");
    set(&v, f, ACCESS, &named()).expect("set");
    v.setxattr(f, "user.x".as_ref(), b"1", 0).expect("user.x");
    drop(v);
    let v = open(&dir);
    let f = v.lookup(ROOT_INO, "f".as_ref()).expect("lookup").ino;
    assert_eq!(get(&v, f, ACCESS), Err(libc::EOPNOTSUPP));
    assert_eq!(set(&v, f, ACCESS, &named()), Err(libc::EOPNOTSUPP));
    assert_eq!(names(&v, f), ["user.x"]);
    // A chmod there: the ACL reads with the new owner, mask and other entries when ACLs are
    // on again (the mode counts for those).
    chmod(&v, f, 0o604);
    drop(v);
    let v = with_acls(&dir);
    let f = v.lookup(ROOT_INO, "f".as_ref()).expect("lookup").ino;
    assert_eq!(
        get(&v, f, ACCESS),
        Ok(acl(&[
            (USER_OBJ, 6, U),
            (USER, 5, 1000),
            (GROUP_OBJ, 4, U),
            (MASK, 0, U),
            (OTHER, 4, U),
        ]))
    );
}

#[test]
fn a_stored_acl_that_is_not_one_is_an_integrity_error_and_fsck_reports_it() {
    let (_t, dir) = new_volume();
    let v = with_acls(&dir);
    let f = touch(&v, ROOT_INO, "f");
    // Only a bug (or the volume key in other hands) can store one: the value authenticates.
    let t = v.xattr_target(f).expect("target");
    v.set_stored(f, &t, b"\0system.posix_acl_access", b"not an ACL", 0)
        .expect("stored");
    crate::keymgr::VolumePaths::new(&dir)
        .record_acls()
        .expect("marker");
    assert_eq!(get(&v, f, ACCESS), Err(libc::EIO));
    drop(v);
    let u = super::test_support::unlock(&dir);
    let names = crate::names::Names::new(&u.store.volume_secret, false);
    let bs = u.config.block_size;
    let km = crate::keymgr::KeyManager::new(u);
    let r = crate::keymgr::fsck::fsck(
        &km,
        &dir,
        &names,
        bs,
        None,
        crate::keymgr::fsck::Repair::No,
        &mut |_, _| {},
    )
    .expect("fsck");
    let found: Vec<(&str, &str)> = r
        .problems
        .iter()
        .map(|p| (p.kind, p.detail.as_str()))
        .collect();
    assert_eq!(
        found,
        [("xattr", "system.posix_acl_access is not a valid ACL")]
    );
}

#[test]
fn the_volume_remembers_that_it_holds_acls() {
    let (_t, dir) = new_volume();
    let marker = crate::keymgr::VolumePaths::new(&dir).acl_marker();
    let v = with_acls(&dir);
    let f = touch(&v, ROOT_INO, "f");
    // An ACL the mode says all of is not stored: nothing to remember.
    let minimal = acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]);
    set(&v, f, ACCESS, &minimal).expect("minimal");
    assert!(!marker.exists());
    set(&v, f, ACCESS, &named()).expect("set");
    assert!(marker.exists());
    // A default ACL counts too, and so does an ACL a new node inherits (from a default ACL
    // stored before the marker existed).
    drop(v);
    std::fs::remove_file(&marker).expect("rm marker");
    let v = with_acls(&dir);
    let d = v
        .mkdir(ROOT_INO, "d".as_ref(), 0o755, &caller())
        .expect("mkdir")
        .ino;
    set(&v, d, DEFAULT, &named()).expect("default");
    assert!(marker.exists());
    drop(v);
    std::fs::remove_file(&marker).expect("rm marker");
    let v = with_acls(&dir);
    let d = v.lookup(ROOT_INO, "d".as_ref()).expect("lookup").ino;
    touch(&v, d, "inherits");
    assert!(marker.exists());
}

//! Fault injection at every step (see `crate::fault`): each operation below runs once without
//! faults to learn its result, then once per backing-store call it makes, with that call failing
//! (ENOSPC, EIO and EROFS in turn; a failing write stores half its bytes first). Each time:
//! the caller gets an error, the tree read back through a fresh model is the old one (or, for a
//! write, each file byte is old or new: a failed write may apply part of itself, as POSIX
//! allows, but never leaves a block that fails authentication), the volume checks clean with
//! fsck, the key store opens from its primary generation, and the operation then succeeds when
//! retried.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::attr_ops::SetAttr;
use super::test_support::{caller, new_volume_with, open_with, unlock};
use super::xattr_ops::XattrReply;
use super::{Kind, Result, Vfs, VfsOptions};
use crate::format::acl::{GROUP_OBJ, MASK, OTHER, UNDEFINED_ID as U, USER, USER_OBJ, acl};
use crate::keymgr::KeyManager;

const ROOT: u64 = 1;
const LONG: &str = "a-file-name-long-enough-to-need-a-side-file-because-its-encrypted-form-does-not-fit-in-255-bytes-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

thread_local! {
    /// Whether the runs on this thread have ACLs on (`--acl`; see [`run`]).
    static ACL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The model, with ACLs on if the current run has them.
fn open(dir: &Path) -> Vfs {
    open_with(
        dir,
        VfsOptions {
            acl: ACL.get(),
            ..Default::default()
        },
    )
}

/// user::rw- user:1000:rwx group::r-- mask::rwx other::r--
fn named_acl() -> Vec<u8> {
    acl(&[
        (USER_OBJ, 6, U),
        (USER, 7, 1000),
        (GROUP_OBJ, 4, U),
        (MASK, 7, U),
        (OTHER, 4, U),
    ])
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A new volume holding a little of everything.
fn volume() -> (tempfile::TempDir, PathBuf) {
    volume_with(true)
}

/// [`volume`], with files that hold holes (`sparse`) or encrypted zeros.
fn volume_with(sparse: bool) -> (tempfile::TempDir, PathBuf) {
    let (t, dir) = new_volume_with(sparse);
    let v = open(&dir);
    let c = caller();
    write_file(&v, ROOT, "a", &data(10_000, 1)).expect("a");
    write_file(&v, ROOT, "b", &data(3 * 4096, 2)).expect("b");
    // Where files hold holes: blocks 2 to 48 are holes, 49 the final block.
    write_file(&v, ROOT, "h", &data(5000, 4)).expect("h");
    let h = v.lookup(ROOT, "h".as_ref()).expect("h").ino;
    let set = SetAttr {
        size: Some(49 * 4096 + 100),
        ..Default::default()
    };
    v.setattr(h, None, &set, None).expect("h with holes");
    let d = v.mkdir(ROOT, "d".as_ref(), 0o755, &c).expect("d").ino;
    write_file(&v, d, "c", b"small").expect("c");
    write_file(&v, d, LONG, &data(5000, 3)).expect("long");
    v.mkdir(ROOT, "empty".as_ref(), 0o700, &c).expect("empty");
    let s = v
        .symlink(ROOT, "s".as_ref(), "a".as_ref(), &c)
        .expect("symlink")
        .ino;
    v.setxattr(s, "trusted.t".as_ref(), b"one", 0)
        .expect("xattr on the symlink");
    let a = v.lookup(ROOT, "a".as_ref()).expect("lookup").ino;
    v.setxattr(a, "user.tag".as_ref(), b"one", 0)
        .expect("xattr");
    if ACL.get() {
        // ACLs: a default one on d (what is made there inherits it), an access one on b.
        v.setxattr(d, "system.posix_acl_default".as_ref(), &named_acl(), 0)
            .expect("default ACL");
        let b = v.lookup(ROOT, "b".as_ref()).expect("lookup").ino;
        v.setxattr(b, "system.posix_acl_access".as_ref(), &named_acl(), 0)
            .expect("access ACL");
    }
    (t, dir)
}

fn write_file(v: &Vfs, parent: u64, name: &str, bytes: &[u8]) -> Result<()> {
    let (_, fh) = v.create(parent, name.as_ref(), 0o644, libc::O_RDWR, &caller())?;
    let r = v.write(fh, 0, bytes).and_then(|_| v.fsync(fh, false));
    v.release(fh)?;
    r
}

fn ino(v: &Vfs, path: &str) -> Result<u64> {
    let mut at = ROOT;
    for part in path.split('/') {
        at = v.lookup(at, part.as_ref())?.ino;
    }
    Ok(at)
}

/// Opens `path`, runs `f` on the handle, and releases it whatever happens.
fn with_handle(v: &Vfs, path: &str, f: impl FnOnce(u64) -> Result<()>) -> Result<()> {
    let fh = v.open(ino(v, path)?, libc::O_RDWR)?;
    let r = f(fh);
    v.release(fh)?;
    r
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File {
        data: Vec<u8>,
        perm: u16,
        xattrs: Vec<u8>,
    },
    /// Mode, then names and values of its extended attributes.
    Dir(u16, Vec<u8>),
    /// Target, then names and values of its extended attributes.
    Symlink(Vec<u8>, Vec<u8>),
    /// A FIFO, socket or device: mode, extended attributes.
    Special(u16, Vec<u8>),
}

/// The names of `ino`'s extended attributes as listed, then their values.
fn xattrs_of(v: &Vfs, ino: u64) -> Vec<u8> {
    let xattrs = match v.listxattr(ino, 4096).expect("listxattr") {
        XattrReply::Data(d) => d,
        XattrReply::Size(_) => Vec::new(),
    };
    let mut x = xattrs.clone();
    for n in xattrs.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let n = OsStr::new(std::str::from_utf8(n).expect("utf8"));
        if let Ok(XattrReply::Data(d)) = v.getxattr(ino, n, 4096) {
            x.extend_from_slice(&d);
        }
    }
    x
}

/// Everything a user can see of the tree, read through `v`; a read error is a test failure.
fn snapshot(v: &Vfs) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(v, ROOT, String::new(), &mut out);
    out
}

fn walk(v: &Vfs, dir: u64, prefix: String, out: &mut BTreeMap<String, Entry>) {
    for e in v.list_dir(dir).expect("list") {
        if e.name == "." || e.name == ".." {
            continue;
        }
        let path = format!("{prefix}{}", e.name.to_string_lossy());
        let attr = v.lookup(dir, &e.name).expect("lookup");
        let entry = match attr.kind {
            Kind::Dir => {
                walk(v, attr.ino, format!("{path}/"), out);
                Entry::Dir(attr.perm, xattrs_of(v, attr.ino))
            }
            Kind::Symlink => Entry::Symlink(
                v.readlink(attr.ino).expect("readlink"),
                xattrs_of(v, attr.ino),
            ),
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                Entry::Special(attr.perm, xattrs_of(v, attr.ino))
            }
            Kind::File => {
                let fh = v.open(attr.ino, libc::O_RDONLY).expect("open");
                let mut data = Vec::new();
                loop {
                    let d = v
                        .read(fh, data.len() as u64, 1 << 20)
                        .unwrap_or_else(|e| panic!("{path} does not read: {e}"));
                    if d.is_empty() {
                        break;
                    }
                    data.extend_from_slice(&d);
                }
                v.release(fh).expect("release");
                Entry::File {
                    data,
                    perm: attr.perm,
                    xattrs: xattrs_of(v, attr.ino),
                }
            }
        };
        out.insert(path, entry);
    }
}

/// Whether `now` holds for every entry the old or the new state — for a file's bytes, each byte
/// (and the length) from one of the two.
fn old_or_new(
    now: &BTreeMap<String, Entry>,
    old: &BTreeMap<String, Entry>,
    new: &BTreeMap<String, Entry>,
    mixed_writes: bool,
) -> std::result::Result<(), String> {
    let paths: std::collections::BTreeSet<&String> =
        now.keys().chain(old.keys()).chain(new.keys()).collect();
    for p in paths {
        let (n, o, w) = (now.get(p), old.get(p), new.get(p));
        if n == o || n == w {
            continue;
        }
        if let (
            true,
            Some(Entry::File { data: nd, .. }),
            Some(Entry::File { data: od, .. }),
            Some(Entry::File { data: wd, .. }),
        ) = (mixed_writes, n, o, w)
            && (nd.len() == od.len() || nd.len() == wd.len())
            && nd
                .iter()
                .enumerate()
                .all(|(i, b)| od.get(i) == Some(b) || wd.get(i) == Some(b))
        {
            continue;
        }
        return Err(format!(
            "{p}: neither old nor new (now {}, old {}, new {})",
            brief(n),
            brief(o),
            brief(w)
        ));
    }
    Ok(())
}

fn brief(e: Option<&Entry>) -> String {
    match e {
        None => "absent".into(),
        Some(Entry::File { data, perm, .. }) => {
            format!("file of {} bytes, mode {perm:o}", data.len())
        }
        Some(e) => format!("{e:?}"),
    }
}

/// fsck finds nothing wrong and the key store opens from its primary generation.
fn check_volume(dir: &Path) -> std::result::Result<(), String> {
    let u = unlock(dir);
    if let Some(why) = &u.used_backup {
        return Err(format!("the primary key store does not open: {why}"));
    }
    let names = crate::names::Names::new(&u.store.volume_secret, false);
    let bs = u.config.block_size;
    let km = KeyManager::new(u);
    let r = crate::keymgr::fsck::fsck(
        &km,
        dir,
        &names,
        bs,
        None,
        crate::keymgr::fsck::Repair::No,
        &mut |_, _| {},
    )
    .map_err(|e| format!("fsck: {e}"))?;
    if !r.problems.is_empty() {
        return Err(format!("fsck: {:?}", r.problems));
    }
    Ok(())
}

type Op = fn(&Vfs) -> Result<()>;

/// The key store as the key manager reports it: descriptions, states, version counts.
fn keys(dir: &Path) -> String {
    let u = unlock(dir);
    let km = KeyManager::new(u);
    // Key ids are random per volume: compare what does not depend on them.
    km.query(|s| {
        let mut out = String::new();
        for k in &s.keys {
            out.push_str(&format!(
                "{} {:?} {} versions\n",
                k.description,
                k.state,
                k.versions.len()
            ));
        }
        out
    })
}

/// Runs `op` as the module says, on a model without ACLs and again with ACLs on (where
/// creates read the directory's default ACL and write the inherited ones).
fn run(name: &str, op: Op, mixed_writes: bool) {
    run_with(name, op, mixed_writes, false);
    run_with(name, op, mixed_writes, true);
}

fn run_with(name: &str, op: Op, mixed_writes: bool, acl: bool) {
    ACL.set(acl);
    let name = &format!("{name}{}", if acl { " (--acl)" } else { "" });
    // The result without faults.
    let (_t, dir) = volume();
    let old = snapshot(&open(&dir));
    let old_keys = keys(&dir);
    op(&open(&dir)).unwrap_or_else(|e| panic!("{name} fails without faults: {e}"));
    let new = snapshot(&open(&dir));
    let new_keys = keys(&dir);
    for (i, errno) in [Errno::NOSPC, Errno::IO, Errno::ROFS]
        .into_iter()
        .enumerate()
    {
        for n in 1.. {
            let (_t, dir) = volume();
            let v = open(&dir);
            crate::fault::arm(n, errno);
            let r = op(&v);
            let fired = crate::fault::disarm();
            drop(v);
            let Some(site) = fired else {
                assert!(r.is_ok(), "{name}: fails with no fault injected: {r:?}");
                assert!(n > 1 || i > 0, "{name}: makes no checked call at all");
                break;
            };
            let at = format!("{name}, call {n} ({site}) failing with {errno}");
            assert!(r.is_err(), "{at}: reported success");
            let now = snapshot(&open(&dir));
            old_or_new(&now, &old, &new, mixed_writes).unwrap_or_else(|e| panic!("{at}: {e}"));
            let k = keys(&dir);
            assert!(
                k == old_keys || k == new_keys,
                "{at}: key store is neither old nor new"
            );
            check_volume(&dir).unwrap_or_else(|e| panic!("{at}: {e}"));
            // Nothing left behind stands in the way of doing it again.
            if now == old && k == old_keys {
                op(&open(&dir)).unwrap_or_else(|e| panic!("{at}: retry fails: {e}"));
                assert!(
                    snapshot(&open(&dir)) == new,
                    "{at}: retry gives another result"
                );
            }
            assert!(n < 200, "{name}: no end to the calls");
        }
    }
}

#[test]
fn overwrite_inside_a_file() {
    run(
        "overwrite",
        |v| with_handle(v, "a", |fh| v.write(fh, 3000, &data(5000, 9)).map(|_| ())),
        true,
    );
    // Three blocks up to the final one: a failure half-way stops inside the middle block.
    run(
        "overwrite to the end",
        |v| with_handle(v, "a", |fh| v.write(fh, 1000, &data(9000, 9)).map(|_| ())),
        true,
    );
}

#[test]
fn append_and_extend_past_the_end() {
    run(
        "append",
        |v| {
            with_handle(v, "a", |fh| {
                v.write(fh, 10_000, &data(20_000, 9)).map(|_| ())
            })
        },
        true,
    );
    run(
        "write past end",
        |v| with_handle(v, "b", |fh| v.write(fh, 50_000, &data(100, 9)).map(|_| ())),
        true,
    );
}

#[test]
fn writes_into_holes() {
    fn write(v: &Vfs, at: u64, len: usize) -> Result<()> {
        with_handle(v, "h", |fh| v.write(fh, at, &data(len, 9)).map(|_| ()))
    }
    // Inside the run, across block boundaries; its first hole; its last hole (the final block's
    // count shrinks after it); across its end into the final block.
    run(
        "write inside holes",
        |v| write(v, 20 * 4096 + 100, 9000),
        true,
    );
    run(
        "write at the first hole",
        |v| write(v, 2 * 4096, 4096),
        true,
    );
    run(
        "write at the last hole",
        |v| write(v, 48 * 4096 + 10, 4000),
        true,
    );
    run(
        "write over the end of holes",
        |v| write(v, 47 * 4096, 3 * 4096),
        true,
    );
    // A cut inside the holes (the new final block counts those before it) and an extension
    // from there.
    fn size(v: &Vfs, size: u64) -> Result<()> {
        let set = SetAttr {
            size: Some(size),
            ..Default::default()
        };
        v.setattr(ino(v, "h")?, None, &set, None).map(|_| ())
    }
    run("truncate into holes", |v| size(v, 30 * 4096 + 7), false);
    fn punch(v: &Vfs, at: u64, len: u64) -> Result<()> {
        with_handle(v, "a", |fh| {
            v.fallocate(
                fh,
                at,
                len,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            )
        })
    }
    // Blocks 0 and 1 of `a` whole, 2 in part (where files hold holes; EOPNOTSUPP otherwise).
    run("punch a hole", |v| punch(v, 0, 9000), true);
    run("truncate up past holes", |v| size(v, 400 * 4096), true);
}

#[test]
fn truncate_down_and_up() {
    fn size(v: &Vfs, path: &str, size: u64) -> Result<()> {
        let set = SetAttr {
            size: Some(size),
            ..Default::default()
        };
        v.setattr(ino(v, path)?, None, &set, None).map(|_| ())
    }
    run("truncate down", |v| size(v, "a", 5000), false);
    run(
        "truncate to a block boundary",
        |v| size(v, "a", 8192),
        false,
    );
    run("truncate up", |v| size(v, "b", 30_000), true);
    // Past several chunks of zeros: a failure after some of them leaves the old size.
    run(
        "truncate up by megabytes",
        |v| size(v, "b", 2_500_000),
        false,
    );
}

#[test]
fn create_files() {
    // The writes into a new file are the append cases above.
    fn create(v: &Vfs, name: &str) -> Result<()> {
        let (_, fh) = v.create(ROOT, name.as_ref(), 0o640, libc::O_RDWR, &caller())?;
        v.release(fh)
    }
    run("create", |v| create(v, "n"), false);
    run("create long name", |v| create(v, LONG), false);
}

#[test]
fn directories() {
    run(
        "mkdir",
        |v| v.mkdir(ROOT, "e".as_ref(), 0o750, &caller()).map(|_| ()),
        false,
    );
    run("rmdir", |v| v.rmdir(ROOT, "empty".as_ref()), false);
}

#[test]
fn names() {
    run("unlink", |v| v.unlink(ROOT, "b".as_ref()), false);
    run(
        "rename into a directory",
        |v| v.rename(ROOT, "a".as_ref(), ino(v, "d")?, "a2".as_ref(), 0),
        false,
    );
    run(
        "rename over a file",
        |v| v.rename(ROOT, "a".as_ref(), ROOT, "b".as_ref(), 0),
        false,
    );
    run(
        "rename a long name",
        |v| v.rename(ino(v, "d")?, LONG.as_ref(), ROOT, OsStr::new("short"), 0),
        false,
    );
    run(
        "rename to a long name",
        |v| {
            v.rename(
                ROOT,
                "b".as_ref(),
                ROOT,
                OsString::from(LONG).as_os_str(),
                0,
            )
        },
        false,
    );
    run(
        "rename a directory over an empty one",
        |v| v.rename(ROOT, "d".as_ref(), ROOT, "empty".as_ref(), 0),
        false,
    );
    // RENAME_WHITEOUT (overlayfs): the whiteout appears with the move or not at all.
    const WO: u32 = super::RENAME_WHITEOUT;
    run(
        "rename with a whiteout",
        |v| v.rename(ROOT, "a".as_ref(), ino(v, "d")?, "a2".as_ref(), WO),
        false,
    );
    run(
        "rename a long name with a whiteout",
        |v| v.rename(ino(v, "d")?, LONG.as_ref(), ROOT, OsStr::new("short"), WO),
        false,
    );
    run(
        "rename a directory over an empty one with a whiteout",
        |v| v.rename(ROOT, "d".as_ref(), ROOT, "empty".as_ref(), WO),
        false,
    );
    run(
        "link",
        |v| {
            v.link(ino(v, "a")?, ino(v, "d")?, "hl".as_ref())
                .map(|_| ())
        },
        false,
    );
    run(
        "symlink",
        |v| {
            v.symlink(ROOT, "t".as_ref(), "target".as_ref(), &caller())
                .map(|_| ())
        },
        false,
    );
}

#[test]
fn attributes() {
    run(
        "chmod",
        |v| {
            let set = SetAttr {
                mode: Some(0o600),
                ..Default::default()
            };
            v.setattr(ino(v, "a")?, None, &set, None).map(|_| ())
        },
        false,
    );
    run(
        "setxattr",
        |v| v.setxattr(ino(v, "a")?, "user.tag".as_ref(), b"two", 0),
        false,
    );
    run(
        "removexattr",
        |v| v.removexattr(ino(v, "a")?, "user.tag".as_ref()),
        false,
    );
    // Other namespaces, and on a symlink (stored in the backing trusted. namespace).
    run(
        "setxattr security",
        |v| v.setxattr(ino(v, "a")?, "security.s".as_ref(), b"sec", 0),
        false,
    );
    run(
        "setxattr on a symlink",
        |v| v.setxattr(ino(v, "s")?, "trusted.t".as_ref(), &[5u8; 2000], 0),
        false,
    );
    run(
        "removexattr on a symlink",
        |v| v.removexattr(ino(v, "s")?, "trusted.t".as_ref()),
        false,
    );
}

#[test]
fn acls() {
    run_with(
        "set an access ACL",
        |v| {
            v.setxattr(
                ino(v, "a")?,
                "system.posix_acl_access".as_ref(),
                &named_acl(),
                0,
            )
        },
        false,
        true,
    );
    run_with(
        "chmod with an access ACL",
        |v| {
            let set = SetAttr {
                mode: Some(0o600),
                ..Default::default()
            };
            v.setattr(ino(v, "b")?, None, &set, None).map(|_| ())
        },
        false,
        true,
    );
    run_with(
        "an equivalent ACL replaces one",
        |v| {
            let minimal = acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 0, U), (OTHER, 0, U)]);
            v.setxattr(
                ino(v, "b")?,
                "system.posix_acl_access".as_ref(),
                &minimal,
                0,
            )
        },
        false,
        true,
    );
    run_with(
        "create under a default ACL",
        |v| {
            let (_, fh) = v.create(ino(v, "d")?, "new".as_ref(), 0o640, libc::O_RDWR, &caller())?;
            v.release(fh)
        },
        false,
        true,
    );
    run_with(
        "mkdir under a default ACL",
        |v| {
            v.mkdir(ino(v, "d")?, "sub".as_ref(), 0o777, &caller())
                .map(|_| ())
        },
        false,
        true,
    );
    run_with(
        "mkfifo under a default ACL",
        |v| {
            v.mknod(
                ino(v, "d")?,
                "p".as_ref(),
                libc::S_IFIFO | 0o666,
                0,
                &caller(),
            )
            .map(|_| ())
        },
        false,
        true,
    );
}

#[test]
fn key_store_updates() {
    fn admin(
        v: &Vfs,
        f: fn(
            &mut crate::keymgr::KeyStore,
            u64,
        ) -> std::result::Result<(), crate::keymgr::AdminError>,
    ) -> Result<()> {
        v.key_manager()
            .admin(f)
            .map_err(|e| super::VfsError::Invalid(Box::leak(e.to_string().into_boxed_str())))
    }
    run(
        "create key",
        |v| {
            admin(v, |s, now| {
                crate::keymgr::lifecycle::create(s, "second", Default::default(), now).map(|_| ())
            })
        },
        false,
    );
    run(
        "rotate key",
        |v| {
            admin(v, |s, now| {
                let id = s.default_key;
                crate::keymgr::lifecycle::rotate(s, &id, now).map(|_| ())
            })
        },
        false,
    );
}

#[test]
fn rewrap_rewrites_headers() {
    run(
        "rotate and rewrap",
        |v| {
            let km = v.key_manager();
            km.admin(|s, now| {
                let id = s.default_key;
                crate::keymgr::lifecycle::rotate(s, &id, now).map(|_| ())
            })
            .map_err(|_| super::VfsError::Invalid("rotate"))?;
            let names = crate::names::Names::new(&km.volume_secret(), false);
            let s = crate::keymgr::rewrap::rewrap(
                km,
                v.root(),
                &names,
                &crate::keymgr::rewrap::RewrapOptions::default(),
                &mut |_, _| {},
            )?;
            if s.errors.is_empty() {
                Ok(())
            } else {
                Err(super::VfsError::Invalid("rewrap reported errors"))
            }
        },
        false,
    );
}

/// A removal that fails after the directory id was taken out puts the same id back: the file's
/// own bytes, whether the directory's xattr copy is there, gone, or says something else.
#[test]
fn failed_rmdir_puts_the_same_directory_id_back() {
    use crate::names::DIRID_FILE;
    for copy in ["same", "none", "different"] {
        let (_t, dir) = volume();
        // The backing directory of "empty": the only one holding nothing but its id.
        let empty = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .find(|p| {
                p.is_dir()
                    && p.join(DIRID_FILE).exists()
                    && std::fs::read_dir(p).expect("list").count() == 1
            })
            .expect("the backing directory of `empty`");
        match copy {
            "none" => {
                rustix::fs::removexattr(&empty, crate::fsutil::DIRID_XATTR).expect("removexattr")
            }
            "different" => rustix::fs::setxattr(
                &empty,
                crate::fsutil::DIRID_XATTR,
                &[0xAA; 16],
                rustix::fs::XattrFlags::empty(),
            )
            .expect("setxattr"),
            _ => {}
        }
        let id = std::fs::read(empty.join(DIRID_FILE)).expect("id");
        let v = open(&dir);
        crate::fault::arm(2, Errno::IO);
        let r = v.rmdir(ROOT, "empty".as_ref());
        assert_eq!(crate::fault::disarm(), Some("rmdir"), "copy {copy}");
        assert!(r.is_err(), "copy {copy}: {r:?}");
        assert_eq!(
            std::fs::read(empty.join(DIRID_FILE)).expect("id back"),
            id,
            "copy {copy}"
        );
        // Still a directory that works: a file made in it lists under its name.
        let e = v.lookup(ROOT, "empty".as_ref()).expect("lookup").ino;
        write_file(&v, e, "n", b"new").expect("create in it");
        drop(v);
        let v = open(&dir);
        let e = v.lookup(ROOT, "empty".as_ref()).expect("lookup again").ino;
        let names: Vec<_> = v
            .list_dir(e)
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(
            names.contains(&OsString::from("n")),
            "copy {copy}: {names:?}"
        );
    }
}

#[test]
fn an_extension_larger_than_the_free_space_fails_before_writing_anything() {
    // 2^62 bytes of encrypted zeros fit on no disk (more than the file system holds). Any
    // backing write would hit the armed fault (EIO): the error must come before the first one.
    // Where holes are stored, the count of holes before the new final block does not fit its
    // four bytes either (EFBIG, what ext4 answers past its largest file).
    for (sparse, errno) in [(false, libc::ENOSPC), (true, libc::EFBIG)] {
        let (_t, dir) = volume_with(sparse);
        let before = snapshot(&open(&dir));
        let v = open(&dir);
        let set = SetAttr {
            size: Some(1 << 62),
            ..Default::default()
        };
        let b = ino(&v, "b").expect("b");
        for (what, r) in [
            (
                "write",
                with_handle(&v, "b", |fh| {
                    crate::fault::arm(1, Errno::IO);
                    v.write(fh, 1 << 62, b"x").map(|_| ())
                }),
            ),
            ("truncate", {
                crate::fault::arm(1, Errno::IO);
                v.setattr(b, None, &set, None).map(|_| ())
            }),
        ] {
            let fired = crate::fault::disarm();
            assert_eq!(
                fired, None,
                "sparse {sparse}, {what}: wrote before refusing"
            );
            assert!(
                matches!(r, Err(ref e) if e.errno() == errno),
                "sparse {sparse}, {what}: {r:?}"
            );
        }
        drop(v);
        assert!(
            snapshot(&open(&dir)) == before,
            "sparse {sparse}: the tree changed"
        );
    }
}

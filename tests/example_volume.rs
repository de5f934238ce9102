//! The checked-in example volume `tests/data/example-v1/` (made by the real `kmsfs init` and
//! filled through a real mount; see tests/data/README.md) must keep opening with every later
//! build: through the library without FUSE, through a real mount of a copy, and in `kmsfs info`.
//! If one of these tests fails, a change broke compatibility with format version 1 volumes.
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kmsfs::crypto::Passphrase;
use kmsfs::format::config::FEATURE_PLAINTEXT_NAMES;
use kmsfs::format::header::FileHeader;
use kmsfs::keymgr::{KeyManager, Unlock, VolumeError};
use kmsfs::vfs::{Kind, ROOT_INO, Vfs, VfsOptions};

/// The passphrase of the example volume (also in tests/data/README.md).
const PASSPHRASE: &str = "kmsfs example volume";

const LONG_NAME: &str = "This file name is longer than two hundred bytes so that its encrypted form does not \
fit into one directory entry and kmsfs must store it as a hashed name with a side file holding the \
full encrypted name.txt";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/example-v1")
}

fn blocks_bin() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// What the volume holds: path → file content, or symlink target, or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Dir,
}

fn expected() -> BTreeMap<String, Entry> {
    let mut m = BTreeMap::new();
    m.insert("It works.txt".into(), Entry::File(b"It works!\n".to_vec()));
    m.insert("empty".into(), Entry::File(Vec::new()));
    m.insert("blocks.bin".into(), Entry::File(blocks_bin()));
    m.insert(LONG_NAME.into(), Entry::File(b"long name\n".to_vec()));
    m.insert(
        "link to it".into(),
        Entry::Symlink(b"It works.txt".to_vec()),
    );
    m.insert("nested".into(), Entry::Dir);
    m.insert("nested/deeper".into(), Entry::Dir);
    m.insert(
        "nested/deeper/nested file.txt".into(),
        Entry::File(b"A file in a nested directory.\n".to_vec()),
    );
    m.insert(
        "nested/up link".into(),
        Entry::Symlink(b"../It works.txt".to_vec()),
    );
    m
}

/// Every byte of a directory tree (regular files, symlink targets, directories), for "unchanged"
/// checks of the checked-in copy.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, Entry::Symlink(t.as_os_str().as_bytes().to_vec()));
            } else if md.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &p, out);
            } else {
                out.insert(rel, Entry::File(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Copies a cipher directory (files, directories, symlinks as symlinks).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let md = std::fs::symlink_metadata(&src).unwrap();
        if md.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if md.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn unlock_example(dir: &Path) -> kmsfs::keymgr::Unlocked {
    kmsfs::keymgr::unlock(dir, &Unlock::Passphrase(Passphrase::new(PASSPHRASE.into())))
        .expect("the example volume unlocks with its documented passphrase")
}

/// Reads the whole tree through the model (no FUSE): readdir, lookup, open/read, readlink.
fn read_through_vfs(vfs: &Vfs) -> BTreeMap<String, Entry> {
    fn walk(vfs: &Vfs, ino: u64, prefix: &str, out: &mut BTreeMap<String, Entry>) {
        let entries: Vec<_> = vfs
            .readdir(ino, 0)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(entries[0].name, ".");
        assert_eq!(entries[1].name, "..");
        for e in &entries[2..] {
            let name = e.name.to_str().unwrap().to_string();
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let attr = vfs.lookup(ino, &e.name).unwrap();
            assert_eq!(attr.ino, e.ino, "{path}: readdir and lookup agree");
            assert_eq!(attr.kind, e.kind, "{path}");
            match attr.kind {
                Kind::Dir => {
                    out.insert(path.clone(), Entry::Dir);
                    walk(vfs, attr.ino, &path, out);
                }
                Kind::Symlink => {
                    let t = vfs.readlink(attr.ino).unwrap();
                    assert_eq!(attr.size, t.len() as u64, "{path}: symlink size");
                    out.insert(path, Entry::Symlink(t));
                }
                Kind::File => {
                    let fh = vfs.open(attr.ino, libc::O_RDONLY).unwrap();
                    let data = vfs.read(fh, 0, 1 << 20).unwrap();
                    assert_eq!(attr.size, data.len() as u64, "{path}: size");
                    // Reads that start and end inside blocks and cross block boundaries.
                    for (off, len) in [(1u64, 3u32), (4000, 200), (4095, 2), (8191, 1809)] {
                        let got = vfs.read(fh, off, len).unwrap();
                        let s = (off as usize).min(data.len());
                        let e = (off as usize + len as usize).min(data.len());
                        assert_eq!(got, &data[s..e], "{path}: read {off}+{len}");
                    }
                    vfs.release(fh).unwrap();
                    out.insert(path, Entry::File(data));
                }
                k => panic!("{path}: unexpected kind {k:?}"),
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(vfs, ROOT_INO, "", &mut out);
    out
}

#[test]
fn library_opens_example_volume_without_fuse() {
    let before = snapshot(&example());
    // Work on a copy, so that nothing a later build writes on open (a lock, an audit log) can
    // touch the checked-in files.
    let tmp = tempfile::Builder::new()
        .prefix("kmsfs-example-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("cipher");
    copy_tree(&example(), &dir);
    let u = unlock_example(&dir);
    assert_eq!(u.config.format_version, 1);
    assert_eq!(u.config.block_size, 4096);
    assert!(u.used_backup.is_none());
    let block_size = u.config.block_size;
    let plaintext_names = u.config.has_feature(FEATURE_PLAINTEXT_NAMES);
    assert!(!plaintext_names);
    let default_key = u.store.default_key;
    let volume_id = u.store.volume_id;
    let km = Arc::new(KeyManager::new(u));
    let vfs = Vfs::new(
        &dir,
        km.clone(),
        block_size,
        plaintext_names,
        VfsOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(read_through_vfs(&vfs), expected());
    // A name that does not exist is not found; `.kmsfs` is the virtual control directory, never
    // the cipher directory's `.kmsfs` (which holds the key store).
    assert!(vfs.lookup(ROOT_INO, OsStr::new("missing")).is_err());
    let ctl = vfs.lookup(ROOT_INO, OsStr::new(".kmsfs")).unwrap();
    assert!(kmsfs::vfs::is_control(ctl.ino));
    let names: Vec<_> = vfs
        .list_dir(ctl.ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.iter().any(|n| n == "keys") && !names.iter().any(|n| n == "keystore"));
    // Read-only: writing is refused.
    let ino = vfs
        .lookup(ROOT_INO, OsStr::new("It works.txt"))
        .unwrap()
        .ino;
    assert!(vfs.open(ino, libc::O_WRONLY).is_err());
    drop(vfs);

    // At the cipher level: every regular file is header ‖ blocks under the default key, with
    // the documented sizes; every directory has a 16-byte kmsfs.dirid.
    let mut sizes = Vec::new();
    for (rel, e) in &before {
        let name = rel.file_name().unwrap().to_str().unwrap();
        let in_control = rel.starts_with(".kmsfs");
        match e {
            Entry::File(b) if name == "kmsfs.dirid" => assert_eq!(b.len(), 16),
            Entry::File(b) if name.ends_with(".name") => {
                assert!(name.starts_with("kmsfs.long."));
                assert_eq!(b.len(), 296, "side file of the 206-byte name");
            }
            Entry::File(b) if !in_control => {
                let h = FileHeader::decode(b).unwrap();
                assert_eq!(h.key_id, default_key);
                assert_eq!(h.key_version, 1);
                km.unwrap_dek(&h).unwrap();
                sizes.push(b.len());
            }
            Entry::Dir if !in_control => {
                assert!(before.contains_key(&rel.join("kmsfs.dirid")), "{rel:?}");
            }
            _ => {}
        }
    }
    sizes.sort();
    assert_eq!(sizes, [132, 142, 142, 162, 10_188]);
    assert!(before.contains_key(Path::new("kmsfs.dirid")));
    let cfg = std::fs::read_to_string(dir.join(".kmsfs/volume.json")).unwrap();
    assert!(cfg.contains(&volume_id.to_string()));
    assert!(!example().join(".kmsfs/mount.lock").exists());

    assert_eq!(
        snapshot(&example()),
        before,
        "the checked-in volume was modified"
    );
}

#[test]
fn example_volume_refuses_a_wrong_passphrase() {
    let r = kmsfs::keymgr::unlock(
        &example(),
        &Unlock::Passphrase(Passphrase::new(b"not the passphrase".to_vec())),
    );
    assert!(matches!(r, Err(VolumeError::WrongPassphrase)), "{r:?}");
}

#[test]
fn mounted_copy_of_example_volume() {
    let before = snapshot(&example());
    let tmp = tempfile::Builder::new()
        .prefix("kmsfs-example-")
        .tempdir()
        .unwrap();
    let cipher = tmp.path().join("cipher");
    let mnt = tmp.path().join("mnt");
    let passfile = tmp.path().join("pass");
    copy_tree(&example(), &cipher);
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(&passfile, format!("{PASSPHRASE}\n")).unwrap();

    let m = common::Mount::start(&cipher, &mnt, &passfile, &[]);
    let root = m.mnt.clone();
    common::with_timeout(60, move || {
        let mut got = BTreeMap::new();
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                let md = std::fs::symlink_metadata(&p).unwrap();
                if md.is_symlink() {
                    let t = std::fs::read_link(&p).unwrap();
                    assert_eq!(md.len(), t.as_os_str().len() as u64, "{rel}");
                    out.insert(rel, Entry::Symlink(t.as_os_str().as_bytes().to_vec()));
                } else if md.is_dir() {
                    out.insert(rel, Entry::Dir);
                    walk(root, &p, out);
                } else {
                    let b = std::fs::read(&p).unwrap();
                    assert_eq!(md.len(), b.len() as u64, "{rel}");
                    out.insert(rel, Entry::File(b));
                }
            }
        }
        walk(&root, &root, &mut got);
        assert_eq!(got, expected());
        // Symlinks resolve inside the mount.
        assert_eq!(
            std::fs::read(root.join("nested/up link")).unwrap(),
            b"It works!\n"
        );
        // The copy is a live volume: it takes a new file and reads it back.
        std::fs::write(root.join("new.txt"), b"written by this build\n").unwrap();
        assert_eq!(
            std::fs::read(root.join("new.txt")).unwrap(),
            b"written by this build\n"
        );
    });
    m.unmount();
    assert!(!common::is_mounted(&mnt));
    assert_eq!(
        snapshot(&example()),
        before,
        "the checked-in volume was modified"
    );
}

#[test]
fn example_volume_info_reports_format_version_1() {
    let out = common::kmsfs()
        .arg("info")
        .arg("--json")
        .arg(example())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["format_version"], 1);
    assert_eq!(j["block_size"], 4096);
    assert_eq!(j["kdf_algorithm"], "argon2id");
    assert_eq!(j["key_count"], 1);
    assert_eq!(j["unlock_slots"], serde_json::json!(["passphrase"]));
    assert_eq!(
        j["features"],
        serde_json::json!(["long-name-side-files", "encrypted-names"])
    );
    let text = common::kmsfs().arg("info").arg(example()).output().unwrap();
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("format version:") && l.split_whitespace().last() == Some("1")),
        "{text}"
    );
}

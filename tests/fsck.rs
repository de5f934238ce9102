//! `kmsfs fsck` on a corpus of broken volumes: each made from one clean volume by one specific
//! kind of damage, each reported with its kind and path and a documented exit code, and what is
//! safely repairable repaired.
mod common;
use common::*;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A clean volume with a multi-block file, a sparse file (holes from block 1 to its last
/// block), a long name, a symlink and a subdirectory, and
/// extended attributes: small ones (in the pack), a large one (on its own), one on the symlink,
/// an access ACL and a default ACL.
fn corpus_source() -> Volume {
    let v = Volume::new(&[]);
    let m = v.mount_with(&["--acl"]);
    std::fs::write(m.path("ten-thousand.bin"), vec![7u8; 10_000]).unwrap();
    std::fs::write(m.path("sparse.bin"), b"start").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("sparse.bin"))
        .unwrap()
        .set_len(SPARSE)
        .unwrap();
    std::fs::write(m.path(&"L".repeat(200)), b"long").unwrap();
    std::os::unix::fs::symlink("/target/of/link", m.path("link")).unwrap();
    let fifo = sh(&format!("mkfifo {}", m.path("fifo").display()));
    assert!(fifo.status.success());
    std::fs::create_dir(m.path("sub")).unwrap();
    std::fs::write(m.path("sub/inner.txt"), vec![1u8; 3000]).unwrap();
    let big = "x".repeat(2000);
    let inner = m.path("sub/inner.txt").display().to_string();
    for cmd in [
        format!("setfattr -n user.small -v s {inner}"),
        format!("setfattr -n user.big -v {big} {inner}"),
        format!("setfattr -h -n trusted.t -v t {}", m.path("link").display()),
        format!(
            "setfacl -m u:nobody:r {}",
            m.path("ten-thousand.bin").display()
        ),
        format!("setfacl -d -m u:nobody:rx {}", m.path("sub").display()),
    ] {
        let o = sh(&cmd);
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    m.unmount();
    v
}

/// The size of the corpus's sparse file: blocks 1 to 255 are holes, 256 its final block.
const SPARSE: u64 = (1 << 20) + 5;

/// The backing names of `f`'s encrypted attributes stored on their own (not the pack).
fn single_xattrs(f: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::listxattr(f, &mut buf[..]).unwrap();
    buf[..n]
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| s.starts_with("user.kmsfs.") && s != PACK)
        .collect()
}

const PACK: &str = "user.kmsfs.p";

/// Flips a bit of backing xattr `name` of `f`.
fn flip_xattr(f: &Path, name: &str) {
    let mut b = vec![0u8; 65536];
    let n = rustix::fs::getxattr(f, name, &mut b[..]).unwrap();
    b[n / 2] ^= 1;
    rustix::fs::setxattr(f, name, &b[..n], rustix::fs::XattrFlags::REPLACE).unwrap();
}

/// A copy of the cipher directory to damage.
fn copy(v: &Volume, name: &str) -> PathBuf {
    let dst = v.tmp.path().join(name);
    let o = sh(&format!(
        "cp -a '{}' '{}'",
        v.cipher.display(),
        dst.display()
    ));
    assert!(o.status.success());
    dst
}

/// The regular file of the cipher root (not internal) with this cipher size.
fn by_size(dir: &Path, size: u64) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file() && std::fs::metadata(p).unwrap().len() == size)
        .unwrap_or_else(|| panic!("no file of {size} bytes in {}", dir.display()))
}

/// Cipher size of a plaintext size with 4 KiB blocks.
fn cipher_size(s: u64) -> u64 {
    104 + (s / 4096) * (4096 + 28) + (s % 4096) + 28
}

fn fsck(v: &Volume, dir: &Path, extra: &[&str]) -> (i32, Value) {
    fsck_json(&v.passfile, dir, extra)
}

fn kinds(r: &Value) -> Vec<String> {
    r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

fn subdir(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && p.file_name().unwrap() != ".kmsfs")
        .unwrap()
}

const DIRID_XATTR: &str = "user.kmsfs-dirid";

/// Flips a bit of the copy of directory `dir`'s id in its xattr.
fn flip_dirid_copy(dir: &Path) {
    let mut b = [0u8; 16];
    rustix::fs::getxattr(dir, DIRID_XATTR, &mut b).unwrap();
    b[0] ^= 1;
    rustix::fs::setxattr(dir, DIRID_XATTR, &b, rustix::fs::XattrFlags::REPLACE).unwrap();
}

#[test]
fn a_clean_volume_is_clean() {
    let v = corpus_source();
    let (code, r) = fsck(&v, &v.cipher, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["files"], 4);
    assert_eq!(r["symlinks"], 1);
    assert_eq!(r["special"], 1);
    assert_eq!(r["acl_marker_unused"], false, "the corpus holds ACLs");
    assert_eq!(r["dirs"], 2);
    // user.small, user.big, trusted.t, the access and the default ACL.
    assert_eq!(r["xattrs"], 5);
    assert_eq!(r["hole_counts_too_large"], 0, "{r}");
    assert!(kinds(&r).is_empty());
}

/// In a file without holes (a `--no-sparse` volume, every volume before 2026-12-05) the nonces
/// are random: no count of holes to check there.
#[test]
fn counts_of_holes_are_looked_for_in_sparse_files_only() {
    let v = Volume::new(&["--no-sparse"]);
    let m = v.mount();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(m.path("f"), &data).unwrap();
    m.unmount();
    let (code, r) = fsck(&v, &v.cipher, &["--repair"]);
    assert_eq!((code, kinds(&r)), (0, vec![]), "{r}");
    assert_eq!(r["hole_counts_too_large"], 0, "{r}");
    let m = v.mount();
    assert!(std::fs::read(m.path("f")).unwrap() == data);
    m.unmount();
}

/// A copy of the corpus with the cipher file of `size` bytes changed by `damage`: fsck reports
/// one problem, of kind `block`, whose detail names `detail`.
fn block_damage(
    v: &Volume,
    name: &str,
    size: u64,
    damage: impl FnOnce(&mut Vec<u8>),
    detail: &str,
) {
    let d = copy(v, name);
    let f = by_size(&d, size);
    let mut b = std::fs::read(&f).unwrap();
    damage(&mut b);
    std::fs::write(&f, b).unwrap();
    let (code, r) = fsck(v, &d, &[]);
    assert_eq!(
        (code, kinds(&r)),
        (23, vec!["block".to_string()]),
        "{name}: {r}"
    );
    let got = r["problems"][0]["detail"].as_str().unwrap();
    assert!(got.contains(detail), "{name}: {r}");
    if size == cipher_size(SPARSE) {
        assert_eq!(r["problems"][0]["plain_path"], "/sparse.bin");
    }
}

#[test]
fn each_kind_of_damage_is_reported_with_its_path() {
    let v = corpus_source();
    let big = cipher_size(10_000);

    // Truncated header.
    let d = copy(&v, "truncated-header");
    let f = by_size(&d, big);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(50)
        .unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (23, vec!["header".to_string()]), "{r}");
    assert_eq!(r["problems"][0]["plain_path"], "/ten-thousand.bin");

    // One flipped byte in the header's key id or key version: a key or version the volume
    // does not have (was counted as "not decrypted", exit 0).
    for (name, at) in [("flipped-key-id", 30), ("flipped-key-version", 43)] {
        let d = copy(&v, name);
        let f = by_size(&d, big);
        let mut b = std::fs::read(&f).unwrap();
        b[at] ^= 1;
        std::fs::write(&f, &b).unwrap();
        let (code, r) = fsck(&v, &d, &[]);
        assert_eq!(
            (code, kinds(&r)),
            (23, vec!["header".to_string()]),
            "{name}: {r}"
        );
        assert!(
            r["problems"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("which this volume does not have"),
            "{name}: {r}"
        );
    }

    // One flipped byte in the second block.
    block_damage(
        &v,
        "flipped-block",
        big,
        |b| b[104 + 4124 + 40] ^= 1,
        "block 1",
    );

    // A sparse file: a written block zeroed (no count of holes reaches it), and a changed
    // count in the block after the holes.
    let sparse = cipher_size(SPARSE);
    block_damage(
        &v,
        "zeroed-written-block",
        sparse,
        |b| b[104..104 + 4124].fill(0),
        "block 0 is zeroed",
    );
    block_damage(
        &v,
        "changed-count-of-holes",
        sparse,
        |b| b[104 + 256 * 4124 + 3] ^= 1,
        "block 256",
    );

    // A file moved into another directory: its name no longer authenticates.
    let d = copy(&v, "moved-name");
    let f = by_size(&d, big);
    std::fs::rename(&f, subdir(&d).join(f.file_name().unwrap())).unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (23, vec!["name".to_string()]), "{r}");

    // A long name's side file removed.
    let d = copy(&v, "missing-side-file");
    let side = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".name"))
        .unwrap();
    std::fs::remove_file(&side).unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!(
        (code, kinds(&r)),
        (23, vec!["side-file".to_string()]),
        "{r}"
    );

    // A missing directory id file: reported; its copy in an xattr still names the entries.
    let d = copy(&v, "missing-dirid");
    std::fs::remove_file(subdir(&d).join("kmsfs.dirid")).unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (23, vec!["dir-id".to_string()]), "{r}");
    // Without the copy either: nothing in that directory can be named.
    rustix::fs::removexattr(subdir(&d), DIRID_XATTR).unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    let mut k = kinds(&r);
    k.dedup();
    assert_eq!((code, k), (23, vec!["dir-id".to_string()]), "{r}");
    // A copy that differs from the file (what the mount reads first).
    let d = copy(&v, "dirid-copy");
    flip_dirid_copy(&subdir(&d));
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!(
        (code, kinds(&r)),
        (23, vec!["dir-id-copy".to_string()]),
        "{r}"
    );

    // Extended attributes: a flipped byte in the pack, in a value stored on its own, and a name
    // that does not decrypt (each reported with the file's path).
    let inner = |d: &Path| by_size(&subdir(d), cipher_size(3000));
    let d = copy(&v, "flipped-pack");
    flip_xattr(&inner(&d), PACK);
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (23, vec!["xattr".to_string()]), "{r}");
    assert_eq!(r["problems"][0]["plain_path"], "/sub/inner.txt");
    let d = copy(&v, "flipped-xattr-value");
    let f = inner(&d);
    let singles = single_xattrs(&f);
    assert_eq!(singles.len(), 1, "{singles:?}");
    flip_xattr(&f, &singles[0]);
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (23, vec!["xattr".to_string()]), "{r}");
    assert!(
        r["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("user.big"),
        "{r}"
    );
    let d = copy(&v, "bad-xattr-name");
    let f = inner(&d);
    let mut b = vec![0u8; 65536];
    let n = rustix::fs::getxattr(&f, singles[0].as_str(), &mut b[..]).unwrap();
    rustix::fs::removexattr(&f, singles[0].as_str()).unwrap();
    rustix::fs::setxattr(
        &f,
        format!("{}A", singles[0]).as_str(),
        &b[..n],
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (23, vec!["xattr".to_string()]), "{r}");

    // An unknown feature flag: the volume is refused before anything is read (exit 11).
    let d = copy(&v, "unknown-feature");
    let cfg = d.join(".kmsfs/volume.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\"encrypted-names\"",
        "\"encrypted-names\", \"time-travel\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, _) = fsck(&v, &d, &[]);
    assert_eq!(code, 11);
}

#[test]
fn safe_repairs_are_made_and_the_rest_left_alone() {
    let v = corpus_source();
    // One administration command, so that the key store has a backup generation.
    let o = kmsfs()
        .arg("key")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["create", "--description", "second generation"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(v.cipher.join(".kmsfs/keystore.bak").exists());
    // A damaged primary key store with an intact backup: reported, and rewritten by --repair.
    let d = copy(&v, "damaged-keystore");
    let ks = d.join(".kmsfs/keystore");
    let mut b = std::fs::read(&ks).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&ks, &b).unwrap();
    // An orphan side file (a crash between writing it and the entry).
    std::fs::write(
        d.join("kmsfs.long.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.name"),
        b"x",
    )
    .unwrap();
    // A directory id file lost (its copy in an xattr intact), and the root's copy flipped.
    std::fs::remove_file(subdir(&d).join("kmsfs.dirid")).unwrap();
    flip_dirid_copy(&d);
    // ACLs stored, the marker that makes a plain mount enforce them gone.
    std::fs::remove_file(d.join(".kmsfs/acls")).unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!(code, 23, "{r}");
    let mut k = kinds(&r);
    k.sort();
    assert_eq!(
        k,
        [
            "acl-marker",
            "dir-id",
            "dir-id-copy",
            "key-store",
            "side-file"
        ]
    );
    let (code, r) = fsck(&v, &d, &["--repair"]);
    assert_eq!(code, 0, "{r}");
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["repaired"] == true)
    );
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!(
        (code, kinds(&r)),
        (0, vec![]),
        "a second fsck finds nothing: {r}"
    );
    assert!(d.join(".kmsfs/acls").exists());
    // Unrepairable damage stays reported after --repair, and the file is not touched.
    let f = by_size(&d, cipher_size(10_000));
    let mut b = std::fs::read(&f).unwrap();
    b[200] ^= 1;
    std::fs::write(&f, &b).unwrap();
    let (code, r) = fsck(&v, &d, &["--repair"]);
    assert_eq!(code, 23, "{r}");
    assert_eq!(std::fs::read(&f).unwrap(), b);
}

/// An orphan side file in a directory made append-only (`chattr +a` through the mount sets
/// it on the backing directory) cannot be removed: fsck --repair says the flag is in the way,
/// not that files need restoring from a backup.
#[test]
fn an_orphan_side_file_in_an_append_only_directory_is_reported_as_such() {
    let v = corpus_source();
    let d = copy(&v, "append-only");
    let sub = subdir(&d);
    let orphan = sub.join("kmsfs.long.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.name");
    std::fs::write(&orphan, b"x").unwrap();
    let dirfd = std::fs::File::open(&sub).unwrap();
    let start = match rustix::fs::ioctl_getflags(&dirfd) {
        Ok(f) => f,
        Err(e) => return eprintln!("backing file system without inode flags ({e}): skipped"),
    };
    if let Err(e) = rustix::fs::ioctl_setflags(&dirfd, start | rustix::fs::IFlags::APPEND) {
        return eprintln!("cannot make a directory append-only ({e}; not root?): skipped");
    }
    let o = kmsfs()
        .args(["fsck", "--repair", "--passfile"])
        .arg(&v.passfile)
        .arg(&d)
        .output()
        .expect("run kmsfs fsck");
    let (code, r) = fsck(&v, &d, &["--repair"]);
    // Cleared before any assertion, so that the temporary directory goes.
    rustix::fs::ioctl_setflags(&dirfd, start).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(23), "{text}");
    assert!(text.contains("append-only"), "{text}");
    assert!(!text.contains("backup"), "no restore advised: {text}");
    assert_eq!(
        (code, kinds(&r)),
        (23, vec!["side-file".to_string()]),
        "{r}"
    );
    assert_eq!(r["problems"][0]["repaired"], false);
    assert!(orphan.exists());
    // With the flag cleared, --repair removes it.
    let (code, r) = fsck(&v, &d, &["--repair"]);
    assert_eq!(code, 0, "{r}");
    assert!(!orphan.exists());
}

#[test]
fn directories_of_an_older_volume_get_their_id_copy_from_repair() {
    let v = corpus_source();
    // A volume made before the copy existed: no directory has the xattr.
    let d = copy(&v, "older");
    let sub = subdir(&d);
    for dir in [&d, &sub] {
        rustix::fs::removexattr(dir.as_path(), DIRID_XATTR).unwrap();
    }
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (0, vec![]), "not a problem: {r}");
    assert_eq!(r["dir_id_copies_missing"], 2, "{r}");
    assert_eq!(r["dir_id_copies_added"], 0, "{r}");
    assert!(rustix::fs::getxattr(sub.as_path(), DIRID_XATTR, &mut [0u8; 0]).is_err());
    // The plain output says how to add them.
    let o = kmsfs()
        .arg("fsck")
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&d)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("2 directories made by an older kmsfs"),
        "{out}"
    );
    let (code, r) = fsck(&v, &d, &["--repair"]);
    assert_eq!((code, kinds(&r)), (0, vec![]), "{r}");
    assert_eq!(r["dir_id_copies_added"], 2, "{r}");
    for dir in [&d, &sub] {
        let mut b = [0u8; 32];
        let n = rustix::fs::getxattr(dir.as_path(), DIRID_XATTR, &mut b).unwrap();
        assert_eq!(&b[..n], std::fs::read(dir.join("kmsfs.dirid")).unwrap());
    }
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        r["dir_id_copies_missing"], 0,
        "a second fsck finds none missing: {r}"
    );
    // The repaired copy mounts and its names read.
    let m = Mount::start(&d, &v.mnt, &v.passfile, &[]);
    assert_eq!(
        std::fs::read(m.path("sub/inner.txt")).unwrap(),
        vec![1u8; 3000]
    );
    m.unmount();
}

/// A crash between a mkdir and the writing of the new directory's id leaves an empty directory
/// whose id file is missing or empty and has no copy: reported, and with --repair given a new
/// id (nothing was ever named with the lost one), after which the directory works. A directory
/// with entries whose id is gone stays unrepaired: its names are bound to the lost id.
#[test]
fn an_empty_directory_without_its_id_gets_a_new_one_from_repair() {
    let v = Volume::new(&[]);
    let m = v.mount();
    for d in ["cut-before", "cut-after", &"L".repeat(220), "full"] {
        std::fs::create_dir(m.path(d)).unwrap();
    }
    std::fs::write(m.path("full/kept"), b"k").unwrap();
    m.unmount();
    let dirs: Vec<PathBuf> = std::fs::read_dir(&v.cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap() != ".kmsfs")
        .collect();
    assert_eq!(dirs.len(), 4);
    let mut full = None;
    for (i, d) in dirs.iter().enumerate() {
        rustix::fs::removexattr(d.as_path(), DIRID_XATTR).unwrap();
        let id = d.join("kmsfs.dirid");
        if std::fs::read_dir(d).unwrap().count() > 1 {
            full = Some(d.clone());
            std::fs::remove_file(&id).unwrap();
        } else if i % 2 == 0 {
            std::fs::remove_file(&id).unwrap();
        } else {
            std::fs::write(&id, b"").unwrap();
        }
    }
    let full = full.expect("the directory with a file");
    let (code, r) = fsck(&v, &v.cipher, &[]);
    assert_eq!(code, 23, "{r}");
    let empties = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["detail"].as_str().unwrap().contains("empty"))
        .count();
    assert_eq!(empties, 3, "{r}");
    let (code, r) = fsck(&v, &v.cipher, &["--repair"]);
    assert_eq!(code, 23, "the full directory stays: {r}");
    let unrepaired: Vec<&Value> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["repaired"] != true)
        .collect();
    assert!(
        !unrepaired.is_empty()
            && unrepaired.iter().all(|p| p["cipher_path"]
                .as_str()
                .unwrap()
                .starts_with(full.file_name().unwrap().to_str().unwrap())),
        "{r}"
    );
    // The repaired directories work: names in them are made, listed and read.
    std::fs::remove_dir_all(&full).unwrap();
    let m = v.mount();
    for d in ["cut-before", "cut-after", &"L".repeat(220)] {
        std::fs::write(m.path(d).join("new"), d.as_bytes()).unwrap();
        assert_eq!(std::fs::read_dir(m.path(d)).unwrap().count(), 1);
    }
    m.unmount();
    let m = v.mount();
    for d in ["cut-before", "cut-after", &"L".repeat(220)] {
        assert_eq!(std::fs::read(m.path(d).join("new")).unwrap(), d.as_bytes());
    }
    m.unmount();
    v.assert_fsck_clean("after the repair");
}

const PENDING_XATTR: &str = "user.kmsfs-pending";

/// A copy of the corpus whose 10,000-byte file lost its final block (a torn extension) and
/// carries `marker` as its interrupted-write marker; returns the copy and the cipher file.
fn torn_with_marker(v: &Volume, name: &str, marker: &[u8]) -> (PathBuf, PathBuf) {
    let d = copy(v, name);
    let f = by_size(&d, cipher_size(10_000));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(104 + 2 * (4096 + 28))
        .unwrap();
    rustix::fs::setxattr(&f, PENDING_XATTR, marker, rustix::fs::XattrFlags::empty()).unwrap();
    (d, f)
}

#[test]
fn interrupted_write_markers_are_acted_on_only_when_they_authenticate() {
    let v = corpus_source();
    // A marker as kmsfs before 2026-12-06 wrote it (no tag): "blocks from 1 on were being
    // rewritten". Reported; only --repair --trust-untagged-markers acts on it, and ends the
    // file after block 1.
    let mut legacy = [0u8; 24];
    legacy[..8].copy_from_slice(&1u64.to_le_bytes());
    let (d, f) = torn_with_marker(&v, "legacy-marker", &legacy);
    // Left by the session that did not end cleanly: the next mount would walk the volume for
    // marked files. fsck says so; a repair removes it once no file carries a marker.
    let flag = d.join(".kmsfs/mounted-rw");
    std::fs::write(&flag, b"").unwrap();
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!(
        (code, kinds(&r)),
        (23, vec!["interrupted-write".to_string()]),
        "{r}"
    );
    assert_eq!(
        (&r["unclean_session"], &r["unclean_session_ended"]),
        (&Value::Bool(true), &Value::Bool(false)),
        "{r}"
    );
    assert!(
        r["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("without a tag"),
        "{r}"
    );
    // A plain --repair leaves it (the user must say the marker is theirs).
    let (code, r) = fsck(&v, &d, &["--repair"]);
    assert_eq!(code, 23, "{r}");
    assert_eq!(r["problems"][0]["repaired"], false, "{r}");
    assert_eq!(r["unclean_session_ended"], false, "a marker is left: {r}");
    assert!(flag.exists());
    let (code, r) = fsck(&v, &d, &["--repair", "--trust-untagged-markers"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["problems"][0]["repaired"], true, "{r}");
    assert_eq!(r["unclean_session_ended"], true, "{r}");
    assert!(!flag.exists());
    assert_eq!(std::fs::metadata(&f).unwrap().len(), cipher_size(8192));
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (0, vec![]), "{r}");
    assert_eq!(r["unclean_session"], false, "{r}");

    // The same fields with a tag that is not the file key's: tampered. Reported, and the file
    // is checked as it is (its length ends on a block boundary); --repair removes the marker only.
    let mut forged = [0u8; 40];
    forged[..24].copy_from_slice(&legacy);
    let (d, f) = torn_with_marker(&v, "forged-marker", &forged);
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!(
        (code, kinds(&r)),
        (
            23,
            vec!["interrupted-write".to_string(), "size".to_string()]
        ),
        "{r}"
    );
    assert!(
        r["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("does not authenticate"),
        "{r}"
    );
    let (code, r) = fsck(&v, &d, &["--repair"]);
    assert_eq!(code, 23, "{r}");
    assert_eq!(r["problems"][0]["repaired"], true, "{r}");
    assert_eq!(r["problems"][1]["repaired"], false, "{r}");
    assert_eq!(
        std::fs::metadata(&f).unwrap().len(),
        104 + 2 * (4096 + 28),
        "not cut"
    );
    let (code, r) = fsck(&v, &d, &[]);
    assert_eq!((code, kinds(&r)), (23, vec!["size".to_string()]), "{r}");
}

/// A daemon killed after a write into a run of holes, before the file was synced or closed,
/// leaves the count of the block after the run reaching back over the written block (it shrinks
/// only after a sync): fsck says so without calling it a problem, `--repair` shrinks it (the
/// file's content and modification time unchanged), and a second fsck finds nothing.
#[test]
fn counts_of_holes_left_large_by_a_killed_daemon_are_shrunk_by_repair() {
    use std::os::unix::fs::FileExt;
    let v = Volume::new(&[]);
    let m = v.mount_with(&["--no-writeback-cache"]);
    let p = m.path("s");
    std::fs::write(&p, b"x").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(64 * 4096 + 1).unwrap();
    drop(f);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    // The truncate is durable and its interrupted-write marker gone (the release of the
    // handle before may not have reached the daemon yet), so that only the count is left.
    f.sync_all().unwrap();
    f.write_all_at(&[7u8; 4096], 30 * 4096).unwrap();
    // Killed with the file still open: no fsync, no close.
    m.kill9();
    drop(f);
    let c = by_size(&v.cipher, cipher_size(64 * 4096 + 1));
    let mtime = std::fs::metadata(&c).unwrap().modified().unwrap();
    let (code, r) = fsck(&v, &v.cipher, &[]);
    assert_eq!((code, kinds(&r)), (0, vec![]), "{r}");
    assert_eq!(r["hole_counts_too_large"], 1, "{r}");
    let (code, r) = fsck(&v, &v.cipher, &["--repair"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["hole_counts_shrunk"], 1, "{r}");
    let (code, r) = fsck(&v, &v.cipher, &[]);
    assert_eq!(
        (code, r["hole_counts_too_large"].as_u64()),
        (0, Some(0)),
        "{r}"
    );
    assert_eq!(std::fs::metadata(&c).unwrap().modified().unwrap(), mtime);
    let m = v.mount();
    let b = std::fs::read(m.path("s")).unwrap();
    let mut want = vec![0u8; 64 * 4096 + 1];
    want[0] = b'x';
    want[30 * 4096..31 * 4096].fill(7);
    assert!(b == want);
    m.unmount();
}

/// A sparse file of terabytes is checked in the time its written blocks take: the backing
/// file's unallocated ranges are holes, skipped with `SEEK_DATA` (every block was read before:
/// an 8 TiB file took hours; under the timeout here it fails). Damage in a written block far
/// into it is still found, and so is a written block whose backing bytes were punched out
/// (zeroed: no count of holes reaches it).
#[test]
fn a_terabyte_sparse_file_is_checked_quickly_and_still_thoroughly() {
    use std::os::unix::fs::FileExt;
    let v = Volume::new(&[]);
    let m = v.mount();
    let far: u64 = 2 << 40;
    {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(m.path("huge"))
            .unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[9u8; 8192], far).unwrap();
        f.set_len(4 << 40).unwrap();
    }
    m.unmount();
    let run = || {
        let o = std::process::Command::new("/usr/bin/timeout")
            .arg("120")
            .arg(bin())
            .env("KMSFS_INSECURE_FAST_KDF", "1")
            .arg("fsck")
            .arg("--passfile")
            .arg(&v.passfile)
            .arg("--json")
            .arg(&v.cipher)
            .output()
            .expect("run kmsfs fsck");
        let r: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (o.status.code().unwrap_or(-1), r)
    };
    let (code, r) = run();
    assert_eq!(code, 0, "{r}");
    let cipher = by_size(&v.cipher, cipher_size(4 << 40));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cipher)
        .unwrap();
    // The first of the two written blocks at `far`, 100 bytes into its ciphertext.
    let at = 104 + (far / 4096) * (4096 + 28) + 100;
    let flip = || {
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 1;
        f.write_all_at(&b, at).unwrap();
    };
    flip();
    let (code, r) = run();
    assert_eq!(code, 23, "{r}");
    assert_eq!(kinds(&r), ["block"], "{r}");
    flip();
    assert_eq!(run().0, 0);
    // The block's stored bytes punched out: zeros, as a hole's, but counted by no block.
    let start = 104 + (far / 4096) * (4096 + 28);
    rustix::fs::fallocate(
        &f,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        start,
        4096 + 28,
    )
    .unwrap();
    let (code, r) = run();
    assert_eq!(code, 23, "{r}");
    assert_eq!(kinds(&r), ["block"], "{r}");
    assert!(
        r["problems"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("zeroed")),
        "{r}"
    );
}

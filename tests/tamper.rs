//! An offline adversary modifies the cipher directory while the volume is unmounted; the mount
//! must detect every modification: EIO (or ENOENT for a name that no longer authenticates),
//! never wrong bytes or garbled names, and a log line naming the damaged file and block.
mod common;
mod support;
use common::*;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kmsfs::format::block::BLOCK_OVERHEAD;
use kmsfs::format::header::HEADER_LEN;

const BS: u64 = 4096;
const CBS: u64 = BS + BLOCK_OVERHEAD as u64;

/// Offset of cipher block `i` in a cipher file.
fn block_at(i: u64) -> u64 {
    HEADER_LEN as u64 + i * CBS
}

fn pat(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8 ^ seed)
        .collect()
}

fn errno<T>(r: io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Reads a whole file through the mount.
fn read_all(p: &Path) -> Result<Vec<u8>, i32> {
    errno(fs::read(p))
}

/// Reads every 4 KiB block with O_DIRECT (no page cache, no readahead: exactly that block is
/// asked for). Each block must be either its correct content or EIO; returns the failing blocks.
fn failing_blocks(p: &Path, want: &[u8]) -> BTreeSet<u64> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .expect("open O_DIRECT");
    let mut bad = BTreeSet::new();
    for (i, chunk) in want.chunks(BS as usize).enumerate() {
        let mut buf = vec![0u8; BS as usize];
        match f.read_at(&mut buf, i as u64 * BS) {
            Ok(n) => assert_eq!(&buf[..n], chunk, "block {i} returned wrong bytes"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "block {i}: {e}");
                bad.insert(i as u64);
            }
        }
    }
    bad
}

/// Every regular file, directory and symlink of the cipher directory (outside `.kmsfs/`) by its
/// inode number: the mount shows backing inode numbers, so a plaintext file's `st_ino` finds its
/// cipher file.
fn by_inode(cipher: &Path, ino: u64) -> PathBuf {
    let mut stack = vec![cipher.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if d == cipher && e.file_name() == ".kmsfs" {
                continue;
            }
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.ino() == ino {
                return e.path();
            }
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    panic!("no cipher file with inode {ino}");
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

fn modify(p: &Path, off: u64, f: impl FnOnce(&mut [u8])) {
    let file = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut b = vec![0u8; 1];
    file.read_exact_at(&mut b, off).unwrap();
    f(&mut b);
    file.write_all_at(&b, off).unwrap();
}

fn flip(p: &Path, off: u64) {
    modify(p, off, |b| b[0] ^= 0x01);
}

fn read_range(p: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    File::open(p).unwrap().read_exact_at(&mut b, off).unwrap();
    b
}

fn write_range(p: &Path, off: u64, data: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(data, off)
        .unwrap();
}

/// A volume with files written through a mount; the mount is gone when this returns. Returns
/// the volume, plaintext contents by name, and the backing inode of each name.
fn volume_with(files: &[(&str, Vec<u8>)], dirs: &[&str]) -> (Volume, Vec<u64>) {
    let v = Volume::new(&[]);
    let m = v.mount();
    let mnt = m.mnt.clone();
    let files: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, c)| (n.to_string(), c.clone()))
        .collect();
    let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
    let inos = with_timeout(60, move || {
        for d in &dirs {
            fs::create_dir_all(mnt.join(d)).unwrap();
        }
        files
            .iter()
            .map(|(n, c)| {
                fs::write(mnt.join(n), c).unwrap();
                ino(&mnt.join(n))
            })
            .collect()
    });
    let err = support::unmount(m);
    assert!(!err.contains("ERROR"), "clean run logged errors: {err}");
    (v, inos)
}

/// Mounts, runs `f` on the mount point, unmounts and returns the daemon's stderr.
fn mounted(v: &Volume, f: impl FnOnce(&Path) + Send + 'static) -> String {
    let m = v.mount();
    let mnt = m.mnt.clone();
    with_timeout(60, move || f(&mnt));
    let err = support::unmount(m);
    assert!(!is_mounted(&v.mnt));
    err
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn flipped_byte_in_a_content_block_is_eio_and_logged() {
    let content = pat(1, 3 * 4096 + 500);
    let (v, inos) = volume_with(
        &[("victim", content.clone()), ("bystander", pat(2, 9000))],
        &[],
    );
    let c = by_inode(&v.cipher, inos[0]);
    // A byte of block 1's ciphertext.
    flip(&c, block_at(1) + 12 + 100);
    let cname = name_of(&c);
    let want = content.clone();
    let err = mounted(&v, move |mnt| {
        let p = mnt.join("victim");
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            want.len() as u64,
            "size is unaffected"
        );
        assert_eq!(read_all(&p), Err(libc::EIO));
        assert_eq!(failing_blocks(&p, &want), BTreeSet::from([1]));
        // Other files are unaffected.
        assert_eq!(read_all(&mnt.join("bystander")), Ok(pat(2, 9000)));
    });
    assert!(
        err.contains("integrity failure"),
        "no integrity log line:\n{err}"
    );
    assert!(
        err.contains("block 1"),
        "log does not name the block:\n{err}"
    );
    assert!(
        !err.contains("victim") && !err.contains("bystander"),
        "the log names plaintext file names:\n{err}"
    );
    assert!(
        err.contains(&cname),
        "log does not name the cipher file {cname}:\n{err}"
    );
    // Nonce, tag and the final (partial) block too.
    for off in [block_at(2), block_at(2) + CBS - 1, block_at(3) + 12 + 499] {
        let (v, inos) = volume_with(&[("victim", content.clone())], &[]);
        flip(&by_inode(&v.cipher, inos[0]), off);
        let want = content.clone();
        let err = mounted(&v, move |mnt| {
            let p = mnt.join("victim");
            assert_eq!(read_all(&p), Err(libc::EIO), "flip at cipher offset {off}");
            assert_eq!(
                failing_blocks(&p, &want).len(),
                1,
                "flip at cipher offset {off}"
            );
        });
        assert!(err.contains("integrity failure"), "{err}");
    }
}

#[test]
fn flipped_byte_in_the_header_is_eio() {
    let content = pat(3, 5000);
    // magic, version, file id, key id, key version, wrap nonce, wrapped DEK, wrap tag
    for off in [0u64, 5, 8, 30, 41, 50, 70, 103] {
        let (v, inos) = volume_with(&[("f", content.clone())], &[]);
        flip(&by_inode(&v.cipher, inos[0]), off);
        let err = mounted(&v, move |mnt| {
            let p = mnt.join("f");
            assert!(fs::metadata(&p).is_ok(), "the name still resolves");
            assert_eq!(read_all(&p), Err(libc::EIO), "header byte {off}");
            assert_eq!(
                errno(OpenOptions::new().write(true).open(&p).map(drop)),
                Err(libc::EIO),
                "open for writing, header byte {off}"
            );
        });
        assert!(
            err.contains("ERROR") || err.contains("WARN"),
            "header byte {off}: nothing logged:\n{err}"
        );
    }
}

#[test]
fn swapped_blocks_are_eio() {
    let content = pat(4, 4 * 4096 + 10);
    let (v, inos) = volume_with(&[("f", content.clone())], &[]);
    let c = by_inode(&v.cipher, inos[0]);
    let (b0, b2) = (
        read_range(&c, block_at(0), CBS),
        read_range(&c, block_at(2), CBS),
    );
    write_range(&c, block_at(0), &b2);
    write_range(&c, block_at(2), &b0);
    let err = mounted(&v, move |mnt| {
        let p = mnt.join("f");
        assert_eq!(read_all(&p), Err(libc::EIO));
        assert_eq!(failing_blocks(&p, &content), BTreeSet::from([0, 2]));
    });
    assert!(err.contains("block 0") || err.contains("block 2"), "{err}");
}

#[test]
fn block_transplanted_from_another_file_is_eio() {
    let (a, b) = (pat(5, 3 * 4096), pat(6, 3 * 4096));
    let (v, inos) = volume_with(&[("a", a), ("b", b.clone())], &[]);
    let (ca, cb) = (by_inode(&v.cipher, inos[0]), by_inode(&v.cipher, inos[1]));
    // Same position, same volume, other file (other DEK and file id).
    write_range(&cb, block_at(1), &read_range(&ca, block_at(1), CBS));
    mounted(&v, move |mnt| {
        assert_eq!(failing_blocks(&mnt.join("b"), &b), BTreeSet::from([1]));
    });
}

/// A volume with one file `f` of `size` bytes whose cipher file was cut to `cut` bytes; returns
/// the volume and the cipher file.
fn cut_file(size: usize, cut: u64) -> (Volume, PathBuf) {
    let (v, inos) = volume_with(&[("f", pat(7, size))], &[]);
    let c = by_inode(&v.cipher, inos[0]);
    OpenOptions::new()
        .write(true)
        .open(&c)
        .unwrap()
        .set_len(cut)
        .unwrap();
    (v, c)
}

#[test]
fn truncation_at_a_block_boundary_is_eio() {
    // (size, cut cipher file to): after a full block with more to follow; dropping the empty
    // final block of a block-aligned file; dropping a whole block so the size looks valid.
    let cases: &[(usize, u64)] = &[
        (3 * 4096 + 500, block_at(2)),
        (3 * 4096 + 500, block_at(3)),
        (2 * 4096, block_at(2)),
        (2 * 4096, block_at(1)),
        (3 * 4096 + 500, block_at(3) + 528 - CBS),
    ];
    for &(size, cut) in cases {
        let (v, _) = cut_file(size, cut);
        let err = mounted(&v, move |mnt| {
            let p = mnt.join("f");
            // Either open refuses, or the read does; never a shorter file read without error.
            let r = File::open(&p).and_then(|mut f| {
                let mut b = Vec::new();
                f.read_to_end(&mut b).map(|_| b)
            });
            assert_eq!(errno(r), Err(libc::EIO), "size {size} cut at {cut}");
        });
        assert!(
            err.contains("integrity failure"),
            "size {size} cut at {cut}: not logged\n{err}"
        );
    }
}

/// An adversary who cuts a file back and adds an interrupted-write marker (so that the mount
/// would take the cut for a crash and end the file there): the marker must be the file key's.
/// One of an older kmsfs (no tag) or with a made-up tag is not acted on: the cut is EIO.
#[test]
fn truncation_with_a_forged_interrupted_write_marker_is_eio() {
    let mut legacy = [0u8; 24];
    legacy[..8].copy_from_slice(&1u64.to_le_bytes());
    let mut tagged = [0x5au8; 40];
    tagged[..24].copy_from_slice(&legacy);
    // The 16-byte form is older than sparse files: on this (sparse) volume it is forged.
    for (marker, logged) in [
        (legacy[..].to_vec(), "without a tag"),
        (legacy[..16].to_vec(), "does not authenticate"),
        (tagged.to_vec(), "does not authenticate"),
    ] {
        let n = marker.len();
        let (v, c) = cut_file(3 * 4096 + 500, block_at(2));
        rustix::fs::setxattr(
            &c,
            "user.kmsfs-pending",
            &marker,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let err = mounted(&v, move |mnt| {
            let r = File::open(mnt.join("f")).and_then(|mut f| {
                let mut b = Vec::new();
                f.read_to_end(&mut b).map(|_| b)
            });
            assert_eq!(errno(r), Err(libc::EIO), "{n} bytes");
        });
        assert!(
            err.contains(logged) && err.contains("integrity failure"),
            "{n} bytes: not logged\n{err}"
        );
        assert_eq!(fs::metadata(&c).unwrap().len(), block_at(2), "cut further");
    }
}

#[test]
fn header_copied_onto_another_file_is_eio() {
    let (a, b) = (pat(8, 10_000), pat(9, 10_000));
    let (v, inos) = volume_with(&[("a", a.clone()), ("b", b)], &[]);
    let (ca, cb) = (by_inode(&v.cipher, inos[0]), by_inode(&v.cipher, inos[1]));
    write_range(&cb, 0, &read_range(&ca, 0, HEADER_LEN as u64));
    let err = mounted(&v, move |mnt| {
        assert_eq!(read_all(&mnt.join("b")), Err(libc::EIO));
        assert_eq!(
            failing_blocks(&mnt.join("b"), &a).len(),
            3,
            "every block of b fails"
        );
        assert_eq!(read_all(&mnt.join("a")), Ok(a), "a is unaffected");
    });
    assert!(err.contains("integrity failure"), "{err}");
}

#[test]
fn zeroed_block_is_eio() {
    let content = pat(10, 3 * 4096 + 1);
    for blk in [0u64, 1, 3] {
        let (v, inos) = volume_with(&[("f", content.clone())], &[]);
        let c = by_inode(&v.cipher, inos[0]);
        let len = if blk == 3 {
            1 + BLOCK_OVERHEAD as u64
        } else {
            CBS
        };
        write_range(&c, block_at(blk), &vec![0u8; len as usize]);
        let want = content.clone();
        mounted(&v, move |mnt| {
            assert_eq!(
                failing_blocks(&mnt.join("f"), &want),
                BTreeSet::from([blk]),
                "zeroed block {blk}"
            );
        });
    }
    // A hole (written past EOF, so stored as encrypted zeros) zeroed on disk is detected too.
    let mut holey = vec![0u8; 3 * 4096];
    holey.extend_from_slice(b"end");
    let (v, inos) = volume_with(&[("h", holey.clone())], &[]);
    write_range(
        &by_inode(&v.cipher, inos[0]),
        block_at(1),
        &vec![0u8; CBS as usize],
    );
    mounted(&v, move |mnt| {
        assert_eq!(failing_blocks(&mnt.join("h"), &holey), BTreeSet::from([1]));
    });
}

/// Names listed in a directory of the mount (or the errno).
fn listing(p: &Path) -> Result<BTreeSet<String>, i32> {
    errno(fs::read_dir(p).and_then(|d| {
        d.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }))
}

#[test]
fn cipher_file_moved_to_another_directory_is_not_found() {
    let (v, inos) = volume_with(
        &[
            ("src/moved", pat(11, 5000)),
            ("src/stays", pat(12, 10)),
            ("dst/other", pat(13, 10)),
            ("src/dmoved/inner", pat(14, 10)),
        ],
        &["src", "dst", "src/dmoved"],
    );
    let cdst = by_inode(&v.cipher, inos[2]).parent().unwrap().to_path_buf();
    // A file and a whole directory move into dst (same cipher names, other directory id).
    for i in [0usize, 3] {
        let c = by_inode(&v.cipher, inos[i]);
        let c = if i == 3 {
            c.parent().unwrap().to_path_buf()
        } else {
            c
        };
        fs::rename(&c, cdst.join(c.file_name().unwrap())).unwrap();
    }
    let err = mounted(&v, move |mnt| {
        assert_eq!(
            listing(&mnt.join("dst")),
            Ok(BTreeSet::from(["other".to_string()]))
        );
        assert_eq!(
            listing(&mnt.join("src")),
            Ok(BTreeSet::from(["stays".to_string()]))
        );
        for n in [
            "dst/moved",
            "src/moved",
            "dst/dmoved",
            "src/dmoved",
            "dst/dmoved/inner",
        ] {
            assert_eq!(
                errno(fs::metadata(mnt.join(n)).map(drop)),
                Err(libc::ENOENT),
                "{n}"
            );
        }
        assert_eq!(read_all(&mnt.join("dst/other")), Ok(pat(13, 10)));
    });
    assert!(
        err.contains("does not decrypt"),
        "skipped entries are logged:\n{err}"
    );
}

#[test]
fn flipped_cipher_name_is_not_listed() {
    let (v, inos) = volume_with(
        &[
            ("d/victim", pat(15, 100)),
            ("d/ok", pat(16, 100)),
            (&format!("d/{}", "l".repeat(255)), pat(17, 10)),
        ],
        &["d"],
    );
    let c = by_inode(&v.cipher, inos[0]);
    let mut name = c.file_name().unwrap().as_bytes().to_vec();
    name[3] = if name[3] == b'A' { b'B' } else { b'A' };
    fs::rename(&c, c.with_file_name(std::ffi::OsStr::from_bytes(&name))).unwrap();
    // The long name: change its side file.
    let long = by_inode(&v.cipher, inos[2]);
    let mut side = long.as_os_str().to_owned();
    side.push(".name");
    modify(Path::new(&side), 5, |b| {
        b[0] = if b[0] == b'A' { b'B' } else { b'A' }
    });
    mounted(&v, move |mnt| {
        assert_eq!(
            listing(&mnt.join("d")),
            Ok(BTreeSet::from(["ok".to_string()]))
        );
        assert_eq!(
            errno(fs::metadata(mnt.join("d/victim")).map(drop)),
            Err(libc::ENOENT)
        );
        // (A lookup of the long name by its true name still finds the file: the entry name is a
        // hash of the encrypted name, and the content is authenticated on its own.)
    });
}

/// A way to damage a file of the cipher directory.
type Damage = fn(&Path);

#[test]
fn corrupted_directory_id_gives_errors_not_garbage() {
    let names = ["one", "two", "three"];
    // (what, how the dirid file is damaged)
    let cases: [(&str, Damage); 4] = [
        ("flipped", |p| flip(p, 7)),
        ("truncated", |p| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(10)
                .unwrap()
        }),
        ("extended", |p| {
            OpenOptions::new()
                .append(true)
                .open(p)
                .and_then(|mut f| io::Write::write_all(&mut f, b"x"))
                .unwrap()
        }),
        ("removed", |p| fs::remove_file(p).unwrap()),
    ];
    for (what, damage) in cases {
        let files: Vec<(String, Vec<u8>)> = names
            .iter()
            .map(|n| (format!("d/{n}"), pat(18, 50)))
            .collect();
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
        let (v, inos) = volume_with(&files, &["d"]);
        let cdir = by_inode(&v.cipher, inos[0]).parent().unwrap().to_path_buf();
        let dirid = cdir.join("kmsfs.dirid");
        fs::set_permissions(&dirid, std::os::unix::fs::PermissionsExt::from_mode(0o600)).ok();
        // Without the copy of the id in an xattr (a volume made before it, or a backing file
        // system without user xattrs), the file is what the mount reads.
        rustix::fs::removexattr(&cdir, DIRID_XATTR).expect("the copy was there");
        damage(&dirid);
        mounted(&v, move |mnt| {
            let d = mnt.join("d");
            match listing(&d) {
                Ok(l) => assert!(l.is_empty(), "{what}: garbage listed: {l:?}"),
                Err(e) => assert_eq!(e, libc::EIO, "{what}"),
            }
            for n in names {
                let r = errno(fs::read(d.join(n)));
                assert!(
                    matches!(r, Err(libc::EIO) | Err(libc::ENOENT)),
                    "{what}: {n}: {r:?}"
                );
            }
            // Creating in a damaged directory must not succeed silently either way of reading it
            // back: if it succeeds, the new name is listed correctly.
            if fs::write(d.join("new"), b"x").is_ok() {
                assert_eq!(
                    listing(&d).unwrap_or_default(),
                    BTreeSet::from(["new".to_string()]),
                    "{what}"
                );
            }
        });
    }
}

const DIRID_XATTR: &str = "user.kmsfs-dirid";

/// The copy of a directory's id in an xattr is what the mount reads first: a flipped copy makes
/// the mount turn to the file once a listing meets a name that decrypts only under the file's
/// id (since 2026-12; before, the names were lost to the mount until fsck --repair); both
/// flipped give errors, not garbage; a copy of the wrong length or none makes the mount read
/// the file; a damaged file behind a good copy goes unnoticed by the mount (fsck reports it).
#[test]
fn the_copy_of_a_directory_id_is_read_first_and_checked_by_use() {
    let names = ["one", "two", "three"];
    let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    // (what, damage to the copy, damage to the file, whether the names still read)
    type Damage2 = fn(&Path, &Path);
    fn flip_copy(dir: &Path) {
        let mut b = [0u8; 16];
        rustix::fs::getxattr(dir, DIRID_XATTR, &mut b).unwrap();
        b[3] ^= 0x20;
        rustix::fs::setxattr(dir, DIRID_XATTR, &b, rustix::fs::XattrFlags::REPLACE).unwrap();
    }
    let cases: [(&str, Damage2, bool); 5] = [
        ("flipped copy", |dir, _| flip_copy(dir), true),
        (
            "flipped copy and file",
            |dir, file| {
                flip_copy(dir);
                let mut b = fs::read(file).unwrap();
                b[7] ^= 1;
                fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .unwrap();
                fs::write(file, &b).unwrap();
            },
            false,
        ),
        (
            "copy of 15 bytes",
            |dir, _| {
                let mut b = [0u8; 16];
                rustix::fs::getxattr(dir, DIRID_XATTR, &mut b).unwrap();
                rustix::fs::setxattr(dir, DIRID_XATTR, &b[..15], rustix::fs::XattrFlags::REPLACE)
                    .unwrap();
            },
            true,
        ),
        (
            "copy removed",
            |dir, _| rustix::fs::removexattr(dir, DIRID_XATTR).unwrap(),
            true,
        ),
        (
            "file removed, copy intact",
            |_, file| fs::remove_file(file).unwrap(),
            true,
        ),
    ];
    for (what, damage, readable) in cases {
        let files: Vec<(String, Vec<u8>)> = names
            .iter()
            .map(|n| (format!("d/{n}"), pat(19, 40)))
            .collect();
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
        let (v, inos) = volume_with(&files, &["d"]);
        let cdir = by_inode(&v.cipher, inos[0]).parent().unwrap().to_path_buf();
        damage(&cdir, &cdir.join("kmsfs.dirid"));
        let content = pat(19, 40);
        let want = want.clone();
        mounted(&v, move |mnt| {
            let d = mnt.join("d");
            if readable {
                assert_eq!(listing(&d), Ok(want.clone()), "{what}");
                for n in names {
                    assert_eq!(read_all(&d.join(n)), Ok(content.clone()), "{what}: {n}");
                }
            } else {
                match listing(&d) {
                    Ok(l) => assert!(l.is_empty(), "{what}: garbage listed: {l:?}"),
                    Err(e) => assert_eq!(e, libc::EIO, "{what}"),
                }
                for n in names {
                    let r = errno(fs::read(d.join(n)));
                    assert!(
                        matches!(r, Err(libc::EIO) | Err(libc::ENOENT)),
                        "{what}: {n}: {r:?}"
                    );
                }
            }
        });
    }
}

#[test]
fn flipped_symlink_target_is_eio() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let mnt = m.mnt.clone();
    let inos = with_timeout(30, move || {
        std::os::unix::fs::symlink("secret/target/path", mnt.join("link")).unwrap();
        std::os::unix::fs::symlink("other", mnt.join("ok")).unwrap();
        ino(&mnt.join("link"))
    });
    support::unmount(m);
    let c = by_inode(&v.cipher, inos);
    let mut t = fs::read_link(&c).unwrap().into_os_string().into_vec();
    t[10] = if t[10] == b'A' { b'B' } else { b'A' };
    fs::remove_file(&c).unwrap();
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), &c).unwrap();
    let err = mounted(&v, |mnt| {
        assert_eq!(errno(fs::read_link(mnt.join("link"))), Err(libc::EIO));
        assert_eq!(
            errno(fs::read(mnt.join("link"))),
            Err(libc::EIO),
            "following it fails too"
        );
        assert_eq!(fs::read_link(mnt.join("ok")).unwrap(), Path::new("other"));
    });
    assert!(
        err.contains("symlink target failed authentication"),
        "{err}"
    );
}

#[test]
fn flipped_xattr_value_is_eio() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let mnt = m.mnt.clone();
    let i = with_timeout(30, move || {
        fs::write(mnt.join("f"), b"x").unwrap();
        let out = sh(&format!(
            "setfattr -n user.note -v some-value '{}'",
            mnt.join("f").display()
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ino(&mnt.join("f"))
    });
    support::unmount(m);
    let c = by_inode(&v.cipher, i);
    let out = sh(&format!(
        "getfattr -d -m - -e hex --absolute-names '{}'",
        c.display()
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("user.kmsfs."))
        .expect("backing xattr");
    let (name, hexval) = line.split_once('=').unwrap();
    let mut val = hexval.trim_start_matches("0x").to_string();
    // Flip the lowest bit of the last byte.
    let last = u8::from_str_radix(&val[val.len() - 2..], 16).unwrap() ^ 1;
    val.replace_range(val.len() - 2.., &format!("{last:02x}"));
    let out = sh(&format!("setfattr -n {name} -v 0x{val} '{}'", c.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mounted(&v, |mnt| {
        let out = sh(&format!(
            "getfattr -n user.note '{}' 2>&1",
            mnt.join("f").display()
        ));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains("Input/output error"),
            "{text}"
        );
        assert!(!text.contains("some-value"));
    });
}

//! Nothing written through the mount appears in plain in the cipher directory: not file names,
//! directory names, contents (also repeated across blocks), symlink targets, xattr names or
//! values. With `--plaintext-names` the names are visible by design, but nothing else is.
mod common;
mod support;
use common::*;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const FILE_NAME: &str = "Zorblax-secret-file-name.txt";
const DIR_NAME: &str = "Quixotic-hidden-directory";
const LONG_NAME_STEM: &str = "Longwinded-Mnemosyne-";
const CONTENT: &[u8] = b"PLAINTEXT-CONTENT-Frobnicate-42-must-not-leak";
const SMALL_CONTENT: &[u8] = b"tiny-Xylophone";
const LINK_NAME: &str = "Hyperlink-Ozymandias";
const LINK_TARGET: &str = "../Target-Peregrine/secret-path";
/// A target too long to store in the backing symlink (kept in a side file in `.kmsfs/links/`).
const LONG_LINK_STEM: &str = "../Long-Target-Albatross/";
const XATTR_NAME: &str = "user.Attribute-Kalamazoo";
const XATTR_VALUE: &[u8] = b"XattrValue-Wolfram-Tungsten";

/// Every byte of a directory tree: names (as paths), contents, symlink targets, xattr names and
/// values.
fn everything_in(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.extend_from_slice(p.as_os_str().as_bytes());
            out.push(b'\n');
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            } else if md.is_file() {
                out.extend(fs::read(&p).unwrap());
            } else if md.file_type().is_symlink() {
                out.extend(fs::read_link(&p).unwrap().as_os_str().as_bytes());
            }
            out.push(b'\n');
            let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
            let mut names = vec![0u8; 65536];
            // SAFETY: buffers are valid for their lengths; the path is NUL-terminated.
            let n =
                unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
            if n > 0 {
                for name in names[..n as usize]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                {
                    out.extend_from_slice(name);
                    out.push(b'=');
                    let cn = CString::new(name).unwrap();
                    let mut v = vec![0u8; 65536];
                    // SAFETY: as above.
                    let r = unsafe {
                        libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len())
                    };
                    if r > 0 {
                        out.extend_from_slice(&v[..r as usize]);
                    }
                    out.push(b'\n');
                }
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: valid C strings and a value buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

/// Writes the distinctive names and contents through the mount; returns the long name used.
fn populate(mnt: &Path) -> String {
    let d = mnt.join(DIR_NAME);
    fs::create_dir(&d).unwrap();
    // The content repeated over many blocks, and at a block-crossing offset.
    let mut big = Vec::new();
    while big.len() < 64 * 1024 {
        big.extend_from_slice(CONTENT);
    }
    fs::write(d.join(FILE_NAME), &big).unwrap();
    fs::write(mnt.join(FILE_NAME), SMALL_CONTENT).unwrap();
    let long = format!("{LONG_NAME_STEM}{}", "n".repeat(255 - LONG_NAME_STEM.len()));
    fs::write(d.join(&long), CONTENT).unwrap();
    std::os::unix::fs::symlink(LINK_TARGET, d.join(LINK_NAME)).unwrap();
    let long_target = LONG_LINK_STEM.repeat(4000 / LONG_LINK_STEM.len());
    std::os::unix::fs::symlink(long_target, d.join("long-link")).unwrap();
    set_xattr(&d.join(FILE_NAME), XATTR_NAME, XATTR_VALUE);
    set_xattr(&d, XATTR_NAME, XATTR_VALUE);
    long
}

fn needles(names_too: bool) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        CONTENT.to_vec(),
        b"Frobnicate".to_vec(),
        SMALL_CONTENT.to_vec(),
        b"Xylophone".to_vec(),
        LINK_TARGET.as_bytes().to_vec(),
        b"Peregrine".to_vec(),
        b"Albatross".to_vec(),
        XATTR_VALUE.to_vec(),
        b"Wolfram".to_vec(),
        // xattr names are encrypted in both modes.
        b"Kalamazoo".to_vec(),
    ];
    if names_too {
        v.extend([
            FILE_NAME.as_bytes().to_vec(),
            b"Zorblax".to_vec(),
            DIR_NAME.as_bytes().to_vec(),
            b"Quixotic".to_vec(),
            LINK_NAME.as_bytes().to_vec(),
            b"Ozymandias".to_vec(),
            b"Mnemosyne".to_vec(),
        ]);
    }
    v
}

fn check(init: &[&str], names_encrypted: bool) {
    let v = Volume::new(init);
    let m = v.mount();
    let mnt = m.mnt.clone();
    let long = with_timeout(60, move || {
        let long = populate(&mnt);
        // Sanity: everything reads back through the mount.
        let hay = everything_in(&mnt);
        for n in needles(true) {
            assert!(
                contains(&hay, &n),
                "{:?} not visible through the mount",
                String::from_utf8_lossy(&n)
            );
        }
        long
    });
    let err = support::unmount(m);
    assert!(!err.contains("ERROR"), "{err}");
    let cipher = v.cipher.clone();
    with_timeout(60, move || {
        let hay = everything_in(&cipher);
        for n in needles(names_encrypted) {
            assert!(
                !contains(&hay, &n),
                "{:?} appears in plain in the cipher directory {}",
                String::from_utf8_lossy(&n),
                cipher.display()
            );
        }
        if !names_encrypted {
            // By design: plaintext names are stored as they are.
            assert!(contains(&hay, FILE_NAME.as_bytes()) && contains(&hay, long.as_bytes()));
        }
    });
}

#[test]
fn nothing_in_plain_with_encrypted_names() {
    check(&[], true);
}

#[test]
fn contents_targets_and_xattrs_hidden_with_plaintext_names() {
    check(&["--plaintext-names"], false);
}

#[test]
fn identical_contents_do_not_look_identical() {
    // Two files with the same content, and two blocks with the same content in one file, have
    // different ciphertext (random DEK per file, random nonce per block).
    let v = Volume::new(&[]);
    let m = v.mount();
    let mnt = m.mnt.clone();
    let inos = with_timeout(30, move || {
        let block = [0x5au8; 4096];
        let two = [block, block].concat();
        fs::write(mnt.join("a"), &two).unwrap();
        fs::write(mnt.join("b"), &two).unwrap();
        use std::os::unix::fs::MetadataExt;
        (
            fs::metadata(mnt.join("a")).unwrap().ino(),
            fs::metadata(mnt.join("b")).unwrap().ino(),
        )
    });
    support::unmount(m);
    let find = |ino: u64| {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir(&v.cipher)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| fs::metadata(p).unwrap().ino() == ino)
            .unwrap()
    };
    let (a, b) = (
        fs::read(find(inos.0)).unwrap(),
        fs::read(find(inos.1)).unwrap(),
    );
    let h = kmsfs::format::header::HEADER_LEN;
    let cbs = 4096 + kmsfs::format::block::BLOCK_OVERHEAD;
    assert_ne!(a[h..h + cbs], b[h..h + cbs], "same block in two files");
    assert_ne!(
        a[h..h + cbs],
        a[h + cbs..h + 2 * cbs],
        "same block twice in one file"
    );
    assert!(!contains(&a, &[0x5a; 64]), "plaintext run visible");
}

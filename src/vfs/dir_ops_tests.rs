//! Names and directory operations: directory ids that disagree with their copy, long-name side
//! files, renames between hard links, forged entry names.

use std::path::{Path, PathBuf};

use super::Vfs;
use super::test_support::{caller, fsck_with, new_volume, open, touch, unlock};
use crate::keymgr::fsck::Repair;

fn names(v: &Vfs, ino: u64) -> Vec<String> {
    let mut n: Vec<String> = v
        .list_dir(ino)
        .expect("list")
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    n.sort();
    n
}

fn backing_entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The only subdirectory of the cipher root (not the control directory).
fn cipher_subdir(d: &Path) -> PathBuf {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.ends_with(".kmsfs"))
        .unwrap()
}

fn write_dirid_file(dir: &Path, id: &[u8]) {
    let f = dir.join("kmsfs.dirid");
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(&f, id).unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
}

fn dirid_copy(dir: &Path) -> Vec<u8> {
    crate::fsutil::read_dirid_copy(dir).unwrap()
}

/// A volume with directory `sub` holding three files (one with a long name).
fn volume_with_sub() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let (t, d) = new_volume();
    let v = open(&d);
    let sub = v.mkdir(1, "sub".as_ref(), 0o755, &caller()).unwrap().ino;
    let mut want = vec!["one".to_string(), "two".to_string(), "L".repeat(200)];
    for n in &want {
        touch(&v, sub, n);
    }
    want.sort();
    (t, d, want)
}

fn list_sub(d: &Path) -> Vec<String> {
    let v = open(d);
    let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
    names(&v, sub)
}

/// `kmsfs.dirid` damaged (one flipped bit, still 16 bytes), its copy intact: the names decrypt
/// with the copy, so fsck says the file is damaged and --repair writes the file from the copy
/// (until 2026-12: it overwrote the good copy with the file's id, and every name was lost).
#[test]
fn fsck_keeps_the_dirid_copy_names_decrypt_with() {
    let (_t, d, want) = volume_with_sub();
    let c = cipher_subdir(&d);
    let good = dirid_copy(&c);
    let mut bad = good.clone();
    bad[3] ^= 0x10;
    write_dirid_file(&c, &bad);
    assert_eq!(list_sub(&d), want);
    let p = fsck_with(&d, Repair::No);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("dir-id false:"), "{p:?}");
    let p = fsck_with(&d, Repair::Safe);
    assert!(p.len() == 1 && p[0].starts_with("dir-id true:"), "{p:?}");
    assert_eq!(dirid_copy(&c), good);
    assert_eq!(std::fs::read(c.join("kmsfs.dirid")).unwrap(), good);
    assert_eq!(list_sub(&d), want);
    assert_eq!(fsck_with(&d, Repair::No), Vec::<String>::new());
}

/// The copy damaged, the file intact: fsck mends the copy from the file, and the mount (which
/// reads the copy first) turns to the file once a name does not decrypt under the copy.
#[test]
fn damaged_dirid_copy_mount_and_fsck_use_the_file() {
    let (_t, d, want) = volume_with_sub();
    let c = cipher_subdir(&d);
    let good = std::fs::read(c.join("kmsfs.dirid")).unwrap();
    let mut bad = good.clone();
    bad[0] ^= 1;
    crate::fsutil::write_dirid_copy(std::fs::File::open(&c).unwrap(), &bad.try_into().unwrap())
        .unwrap();
    {
        let v = open(&d);
        let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
        assert_eq!(names(&v, sub), want);
        // Lookups and creates use the file's id from then on.
        assert!(v.lookup(sub, "one".as_ref()).is_ok());
        touch(&v, sub, "four");
    }
    let p = fsck_with(&d, Repair::Safe);
    assert!(
        p.len() == 1 && p[0].starts_with("dir-id-copy true:"),
        "{p:?}"
    );
    assert_eq!(dirid_copy(&c), good);
    assert_eq!(list_sub(&d).len(), want.len() + 1);
    assert_eq!(fsck_with(&d, Repair::No), Vec::<String>::new());
}

/// The copy stale, the file and the names another directory's: what a tool that copies files
/// but not extended attributes (`rsync -a` without `-X`, `cp -r`) leaves when it updates a
/// copy of the cipher directory made earlier with them (a backup, or a restore of part of the
/// tree) after the directory was removed and made again under the same name. A lookup before
/// any listing found nothing (ENOENT for a file that is there; the kernel then kept that
/// answer for 30 s): it now turns the directory to the file's id as a listing does.
#[test]
fn stale_dirid_copy_a_lookup_before_any_listing_finds_the_names() {
    let long = "L".repeat(200);
    for first in ["one", long.as_str()] {
        let (_t, d, want) = volume_with_sub();
        let c = cipher_subdir(&d);
        // The copy of another directory's id (a valid id, just not this one's).
        let stale = {
            let v = open(&d);
            v.mkdir(1, "other".as_ref(), 0o755, &caller()).unwrap();
            let o = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.is_dir() && !p.ends_with(".kmsfs") && *p != c)
                .unwrap();
            dirid_copy(&o)
        };
        crate::fsutil::write_dirid_copy(
            std::fs::File::open(&c).unwrap(),
            &stale.try_into().unwrap(),
        )
        .unwrap();
        let v = open(&d);
        let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
        let a = v.lookup(sub, first.as_ref());
        assert!(a.is_ok(), "{}: {a:?}", &first[..3]);
        assert!(v.lookup(sub, "two".as_ref()).is_ok());
        // A name that is not there is still not there.
        assert!(matches!(
            v.lookup(sub, "absent".as_ref()),
            Err(super::VfsError::Sys(rustix::io::Errno::NOENT))
        ));
        assert_eq!(names(&v, sub), want);
    }
}

/// A name found under the copy confirms it: a name then looked for in vain (a cold `git status`
/// asks every directory for an absent `.gitignore` after finding its tracked files) reads no
/// `kmsfs.dirid`.
#[test]
fn a_name_found_under_the_copy_spares_the_id_file_read_of_a_name_not_found() {
    let (_t, d, _) = volume_with_sub();
    let v = open(&d);
    let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
    v.lookup(sub, "one".as_ref()).unwrap();
    assert!(v.lookup(sub, "absent".as_ref()).is_err());
    let node = v.inodes.get(sub).unwrap();
    assert!(node.dir_id_file.get().is_none(), "kmsfs.dirid was read");
    // Without a name found first, the first name not found reads it (once).
    let v = open(&d);
    let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
    assert!(v.lookup(sub, "absent".as_ref()).is_err());
    assert!(v.inodes.get(sub).unwrap().dir_id_file.get().is_some());
}

/// The same stale copy (see above) one level up: the plaintext path of a directory below it
/// (key rules, path conditions of key policies, audit records) was decrypted with the copy's
/// id, so with key rules no file could be created there (EIO: "no path, no file"), and
/// without them the audit records had no path.
#[test]
fn stale_dirid_copy_paths_below_it_decrypt() {
    use crate::control::Request;
    use crate::keymgr::policy::Identity;
    let (_t, d, _) = volume_with_sub();
    let key: crate::format::KeyId;
    {
        let v = open(&d);
        let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
        v.mkdir(sub, "inner".as_ref(), 0o755, &caller()).unwrap();
        v.mkdir(1, "other".as_ref(), 0o755, &caller()).unwrap();
        let r = v
            .control()
            .execute(
                &Identity::default(),
                &Request::CreateKey {
                    description: String::new(),
                    tags: Default::default(),
                    alias: Some("alias/inner".into()),
                },
            )
            .expect("create key");
        key = r["key_id"].as_str().unwrap().parse().unwrap();
        v.control()
            .execute(
                &Identity::default(),
                &Request::SetKeyRule {
                    prefix: "/sub/inner".into(),
                    key: "alias/inner".into(),
                },
            )
            .expect("rule");
    }
    let c = cipher_subdir_named(&d, &open(&d), "sub");
    let o = cipher_subdir_named(&d, &open(&d), "other");
    crate::fsutil::write_dirid_copy(
        std::fs::File::open(&c).unwrap(),
        &dirid_copy(&o).try_into().unwrap(),
    )
    .unwrap();
    let v = open(&d);
    let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
    let inner = v.lookup(sub, "inner".as_ref()).unwrap().ino;
    let (_, fh) = v
        .create(inner, "new".as_ref(), 0o644, libc::O_RDWR, &caller())
        .expect("create under the key rule");
    v.release(fh).unwrap();
    // Under the rule's key.
    assert_eq!(super::test_support::key_of(&v, &d, "/sub/inner/new"), key);
}

/// The cipher path of directory `name` at the root.
fn cipher_subdir_named(d: &Path, v: &Vfs, name: &str) -> PathBuf {
    let ino = v.lookup(1, name.as_ref()).unwrap().ino;
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap()) == ino)
        .unwrap()
}

/// The copy damaged, and a name made before any listing (found by a review: it was encrypted
/// under the damaged copy, and lost once a listing turned the directory to the file's id). Each
/// way of making a name; the names already there decide which id new ones get.
#[test]
fn a_name_made_before_any_listing_uses_the_id_the_names_are_under() {
    type Make = fn(&Vfs, u64, &str);
    let makers: [(&str, Make); 5] = [
        ("create", |v, dir, n| {
            touch(v, dir, n);
        }),
        ("mkdir", |v, dir, n| {
            v.mkdir(dir, n.as_ref(), 0o755, &caller()).unwrap();
        }),
        ("symlink", |v, dir, n| {
            v.symlink(dir, n.as_ref(), "target".as_ref(), &caller())
                .unwrap();
        }),
        ("mknod", |v, dir, n| {
            v.mknod(dir, n.as_ref(), libc::S_IFIFO | 0o644, 0, &caller())
                .unwrap();
        }),
        ("rename", |v, dir, n| {
            touch(v, 1, "outside");
            v.rename(1, "outside".as_ref(), dir, n.as_ref(), 0).unwrap();
        }),
    ];
    for (what, make) in makers {
        let (_t, d, mut want) = volume_with_sub();
        let c = cipher_subdir(&d);
        let good = std::fs::read(c.join("kmsfs.dirid")).unwrap();
        let mut bad = good.clone();
        bad[0] ^= 1;
        crate::fsutil::write_dirid_copy(std::fs::File::open(&c).unwrap(), &bad.try_into().unwrap())
            .unwrap();
        {
            let v = open(&d);
            let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
            make(&v, sub, "new");
            // The directory turned to the file's id: the old names are found too.
            assert!(v.lookup(sub, "one".as_ref()).is_ok(), "{what}");
        }
        want.push("new".into());
        want.sort();
        assert_eq!(list_sub(&d), want, "{what}");
        let p = fsck_with(&d, Repair::Safe);
        assert!(
            p.len() == 1 && p[0].starts_with("dir-id-copy true:"),
            "{what}: {p:?}"
        );
        assert_eq!(list_sub(&d), want, "{what}");
    }
    // The file damaged, the copy intact: new names stay under the copy.
    let (_t, d, mut want) = volume_with_sub();
    let c = cipher_subdir(&d);
    let good = dirid_copy(&c);
    let mut bad = good.clone();
    bad[3] ^= 0x10;
    write_dirid_file(&c, &bad);
    {
        let v = open(&d);
        let sub = v.lookup(1, "sub".as_ref()).unwrap().ino;
        touch(&v, sub, "new");
    }
    want.push("new".into());
    want.sort();
    assert_eq!(list_sub(&d), want);
    let p = fsck_with(&d, Repair::Safe);
    assert!(p.len() == 1 && p[0].starts_with("dir-id true:"), "{p:?}");
    assert_eq!(list_sub(&d), want);
}

/// An empty directory whose file and copy differ: no name tells which is right, so fsck
/// reports it and --repair changes nothing.
#[test]
fn dirid_conflict_without_evidence_changes_nothing() {
    let (_t, d) = new_volume();
    let v = open(&d);
    v.mkdir(1, "sub".as_ref(), 0o755, &caller()).unwrap();
    drop(v);
    let c = cipher_subdir(&d);
    let copy = dirid_copy(&c);
    let mut bad = copy.clone();
    bad[5] ^= 4;
    write_dirid_file(&c, &bad);
    let p = fsck_with(&d, Repair::Safe);
    assert!(
        p.len() == 1 && p[0].starts_with("dir-id-copy false:"),
        "{p:?}"
    );
    assert_eq!(dirid_copy(&c), copy);
    assert_eq!(std::fs::read(c.join("kmsfs.dirid")).unwrap(), bad);
}

/// Whether `filefrag -v` shows data of `path` not yet written to disk (ext4's delayed
/// allocation); `None` where it cannot tell (no filefrag, no FIEMAP).
fn delalloc(path: &Path) -> Option<bool> {
    let o = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .ok()?;
    let out = String::from_utf8_lossy(&o.stdout);
    (o.status.success() && out.contains("extent")).then(|| out.contains("delalloc"))
}

/// A long name's side file is on disk before its entry is made (a power loss would otherwise
/// keep the entry, journaled metadata, with an empty side file: the name lost for good).
#[test]
fn side_file_is_on_disk_before_the_entry() {
    let (_t, d) = new_volume();
    let v = open(&d);
    let c = caller();
    touch(&v, 1, &"D".repeat(200));
    v.mkdir(1, "E".repeat(200).as_ref(), 0o755, &c).unwrap();
    touch(&v, 1, "short");
    v.rename(1, "short".as_ref(), 1, "F".repeat(200).as_ref(), 0)
        .unwrap();
    let sides: Vec<String> = backing_entries(&d)
        .into_iter()
        .filter(|n| n.ends_with(".name"))
        .collect();
    assert_eq!(sides.len(), 3, "{sides:?}");
    for s in sides {
        match delalloc(&d.join(&s)) {
            None => {
                eprintln!("cannot tell where the data of {s} is: not checked");
                return;
            }
            Some(pending) => assert!(!pending, "{s} is not on disk yet"),
        }
    }
}

/// What a power loss can leave of a new file whose header was not written back yet: a cipher
/// file of 0 bytes. It cannot be told from a file cut to 0 bytes by someone, which must be
/// detected: EIO at open, and fsck reports it (the file is then removed by hand).
#[test]
fn zero_byte_cipher_file_is_an_integrity_failure() {
    let (_t, d) = new_volume();
    let v = open(&d);
    touch(&v, 1, "new");
    drop(v);
    let cipher = backing_entries(&d)
        .into_iter()
        .find(|n| !n.starts_with('.') && !n.starts_with("kmsfs."))
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(d.join(&cipher))
        .unwrap()
        .set_len(0)
        .unwrap();
    let v = open(&d);
    let ino2 = v.lookup(1, "new".as_ref()).unwrap().ino;
    let e = v.open_as(ino2, libc::O_RDWR, &caller()).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    drop(v);
    assert!(!fsck_with(&d, Repair::No).is_empty());
}

/// A side file left behind empty or torn (a crash between its create and its write) is checked
/// at the next create or rename to that name, and written again: the new entry is listed.
#[test]
fn damaged_orphan_side_file_is_written_again() {
    let (_t, d) = new_volume();
    let v = open(&d);
    let long = "M".repeat(200);
    touch(&v, 1, &long);
    let side = backing_entries(&d)
        .into_iter()
        .find(|n| n.ends_with(".name"))
        .expect("side file");
    let good = std::fs::read(d.join(&side)).unwrap();
    v.unlink(1, long.as_ref()).expect("unlink");
    // What a crash right after the O_EXCL create leaves.
    std::fs::write(d.join(&side), b"").unwrap();
    touch(&v, 1, &long);
    assert_eq!(names(&v, 1), vec![long.clone()]);
    assert_eq!(std::fs::read(d.join(&side)).unwrap(), good);
    // Torn, then a rename to the name.
    v.unlink(1, long.as_ref()).expect("unlink");
    std::fs::write(d.join(&side), &good[..100]).unwrap();
    touch(&v, 1, "short");
    v.rename(1, "short".as_ref(), 1, long.as_ref(), 0).unwrap();
    assert_eq!(names(&v, 1), vec![long.clone()]);
    assert_eq!(std::fs::read(d.join(&side)).unwrap(), good);
    drop(v);
    assert_eq!(fsck_with(&d, Repair::No), Vec::<String>::new());
    assert!(!backing_entries(&d).iter().any(|n| n.contains(".tmp")));
}

/// rename(2) between two hard links of one file does nothing (POSIX): both names stay, the long
/// one with its side file.
#[test]
fn rename_between_hard_links_does_nothing() {
    let (_t, d) = new_volume();
    let v = open(&d);
    let long = "L".repeat(200);
    let ino = touch(&v, 1, &long);
    v.link(ino, 1, "b".as_ref()).expect("link");
    let before = backing_entries(&d);
    let mut want = vec!["b".to_string(), long.clone()];
    want.sort();
    // Checked after each: a bug that removed the long name's side file in the first went
    // unseen after the second, which writes it again.
    v.rename(1, long.as_ref(), 1, "b".as_ref(), 0)
        .expect("rename");
    assert_eq!(backing_entries(&d), before);
    assert_eq!(names(&v, 1), want);
    v.rename(1, "b".as_ref(), 1, long.as_ref(), 0)
        .expect("rename");
    assert_eq!(backing_entries(&d), before);
    assert_eq!(names(&v, 1), want);
    // RENAME_NOREPLACE still says the target exists.
    assert_eq!(
        v.rename(
            1,
            "b".as_ref(),
            1,
            want[1].as_ref(),
            super::RENAME_NOREPLACE
        )
        .map_err(|e| e.errno()),
        Err(libc::EEXIST)
    );
    drop(v);
    assert_eq!(fsck_with(&d, Repair::No), Vec::<String>::new());
}

/// A copy of an entry under its name plus trailing white space does not decrypt (only side
/// files may end in white space): it is not listed, and fsck reports it.
#[test]
fn trailing_white_space_in_an_entry_name_does_not_decrypt() {
    let (_t, d) = new_volume();
    let v = open(&d);
    touch(&v, 1, "x");
    let enc = backing_entries(&d)
        .into_iter()
        .find(|n| !n.starts_with('.') && !n.starts_with("kmsfs."))
        .unwrap();
    std::fs::copy(d.join(&enc), d.join(format!("{enc}\n"))).unwrap();
    std::fs::copy(d.join(&enc), d.join(format!("{enc} "))).unwrap();
    assert_eq!(names(&v, 1), vec!["x".to_string()]);
    drop(v);
    let p = fsck_with(&d, Repair::No);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|p| p.starts_with("name false:")), "{p:?}");
}

/// A copy of a long entry and its side file under another hash: not listed (it would list as a
/// second entry of the same name, and readdirplus would give the kernel its inode for the
/// name), and fsck reports it.
#[test]
fn long_entry_must_be_named_after_its_side_file() {
    let (_t, d) = new_volume();
    let v = open(&d);
    let long = "H".repeat(200);
    touch(&v, 1, &long);
    let side = backing_entries(&d)
        .into_iter()
        .find(|n| n.ends_with(".name"))
        .unwrap();
    let main = side.strip_suffix(".name").unwrap().to_string();
    std::fs::copy(d.join(&main), d.join("kmsfs.long.forged")).unwrap();
    std::fs::copy(d.join(&side), d.join("kmsfs.long.forged.name")).unwrap();
    assert_eq!(names(&v, 1), vec![long.clone()]);
    // A side file may end in white space.
    let mut padded = std::fs::read(d.join(&side)).unwrap();
    padded.extend_from_slice(b"\n");
    std::fs::remove_file(d.join(&side)).unwrap();
    std::fs::write(d.join(&side), &padded).unwrap();
    assert_eq!(names(&v, 1), vec![long]);
    drop(v);
    let p = fsck_with(&d, Repair::No);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("name false: long entry whose hash"),
        "{p:?}"
    );
}

/// rmdir of an empty directory the daemon cannot read or write (0555, 0), and a rename over
/// one, with the daemon not running as root: POSIX (and ext4) allow both, since only the
/// parent's permissions count. A failed removal (not empty) keeps the mode.
#[test]
fn rmdir_and_rename_over_read_only_empty_dir_as_non_root_daemon() {
    let (t, d) = new_volume();
    let st = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = std::thread::spawn(move || {
        // This thread only: the daemon as user nobody (no DAC override).
        unsafe {
            libc::syscall(libc::SYS_setfsgid, 65534);
            libc::syscall(libc::SYS_setfsuid, 65534);
        }
        let v = open(&d);
        let c = super::Caller {
            uid: 65534,
            gid: 65534,
            ..caller()
        };
        let mut out = Vec::new();
        for mode in [0o555u32, 0o500, 0o300, 0o000] {
            let n = format!("ro{mode:o}");
            v.mkdir(1, n.as_ref(), mode, &c).expect("mkdir");
            out.push((
                format!("rmdir {mode:o}"),
                v.rmdir(1, n.as_ref()).map_err(|e| e.errno()),
            ));
        }
        v.mkdir(1, "src".as_ref(), 0o755, &c).unwrap();
        v.mkdir(1, "dst".as_ref(), 0o555, &c).unwrap();
        out.push((
            "rename over 0555".into(),
            v.rename(1, "src".as_ref(), 1, "dst".as_ref(), 0)
                .map_err(|e| e.errno()),
        ));
        // Not empty: ENOTEMPTY, with its mode and entries as they were.
        let full = v.mkdir(1, "full".as_ref(), 0o755, &c).unwrap().ino;
        v.mkdir(full, "f".as_ref(), 0o755, &c).unwrap();
        let set = super::SetAttr {
            mode: Some(0o555),
            ..Default::default()
        };
        v.setattr(full, None, &set, None).expect("chmod");
        let r = v.rmdir(1, "full".as_ref()).map_err(|e| e.errno());
        out.push(("rmdir non-empty 0555".into(), r));
        let mode = v.getattr(full).unwrap().perm;
        out.push((format!("mode after: {mode:o}"), Ok(())));
        assert_eq!(names(&v, full), vec!["f".to_string()]);
        out
    })
    .join()
    .unwrap();
    let want: Vec<(String, Result<(), i32>)> = vec![
        ("rmdir 555".into(), Ok(())),
        ("rmdir 500".into(), Ok(())),
        ("rmdir 300".into(), Ok(())),
        ("rmdir 0".into(), Ok(())),
        ("rename over 0555".into(), Ok(())),
        ("rmdir non-empty 0555".into(), Err(libc::ENOTEMPTY)),
        ("mode after: 555".into(), Ok(())),
    ];
    assert_eq!(out, want);
}

/// A mkdir cut short by a killed daemon (the backing directory made, its id not yet written):
/// the empty directory gets a new id when first used (listing, creating in it), as
/// `kmsfs fsck --repair` would give it, instead of EIO until then; read-only, it lists as empty
/// and is given nothing. A directory holding anything besides an empty id file stays an error.
#[test]
fn an_empty_directory_left_without_its_id_gets_a_new_one() {
    for left in ["no file", "empty file"] {
        let (_t, d) = new_volume();
        let v = open(&d);
        v.mkdir(1, "cut".as_ref(), 0o755, &caller()).unwrap();
        drop(v);
        let sub = cipher_subdir(&d);
        rustix::fs::removexattr(&sub, crate::fsutil::DIRID_XATTR).unwrap();
        let f = sub.join("kmsfs.dirid");
        std::fs::remove_file(&f).unwrap();
        if left == "empty file" {
            std::fs::write(&f, b"").unwrap();
        }

        let ro = super::test_support::open_with(
            &d,
            super::VfsOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let cut = ro.lookup(1, "cut".as_ref()).unwrap().ino;
        assert_eq!(names(&ro, cut), Vec::<String>::new(), "{left}: read-only");
        assert!(crate::fsutil::read_dirid_copy(&sub).is_none(), "{left}");
        drop(ro);

        let v = open(&d);
        let cut = v.lookup(1, "cut".as_ref()).unwrap().ino;
        assert_eq!(names(&v, cut), Vec::<String>::new(), "{left}");
        touch(&v, cut, "new");
        assert_eq!(names(&v, cut), vec!["new"], "{left}");
        drop(v);
        let id = std::fs::read(&f).unwrap();
        assert_eq!(id.len(), 16, "{left}");
        assert_eq!(dirid_copy(&sub), id, "{left}");
        assert_eq!(list_sub_named(&d, "cut"), vec!["new"], "{left}");
        assert_eq!(fsck_with(&d, Repair::No), Vec::<String>::new(), "{left}");
    }
}

/// The same loss of the id in a directory holding a name: nothing is made up (the name was made
/// under the lost id), every use is an integrity error, and fsck reports it.
#[test]
fn a_directory_holding_names_without_its_id_is_not_given_a_new_one() {
    let (_t, d, _) = volume_with_sub();
    let sub = cipher_subdir(&d);
    rustix::fs::removexattr(&sub, crate::fsutil::DIRID_XATTR).unwrap();
    std::fs::remove_file(sub.join("kmsfs.dirid")).unwrap();
    let v = open(&d);
    let s = v.lookup(1, "sub".as_ref()).unwrap().ino;
    assert!(matches!(v.list_dir(s), Err(super::VfsError::Integrity(_))));
    assert!(matches!(
        v.lookup(s, "one".as_ref()),
        Err(super::VfsError::Integrity(_))
    ));
    drop(v);
    assert!(!sub.join("kmsfs.dirid").exists());
    assert!(crate::fsutil::read_dirid_copy(&sub).is_none());
    let problems = fsck_with(&d, Repair::No);
    assert!(
        problems.iter().any(|p| p.starts_with("dir-id false")),
        "{problems:?}"
    );
}

fn list_sub_named(d: &Path, name: &str) -> Vec<String> {
    let v = open(d);
    let ino = v.lookup(1, name.as_ref()).unwrap().ino;
    names(&v, ino)
}

/// `key usage` counts a file with two hard links once (it counted each name).
#[test]
fn key_usage_counts_a_hard_linked_file_once() {
    let (_t, d) = new_volume();
    let v = open(&d);
    let f = super::test_support::write_file(&v, "a", b"linked");
    v.link(f, 1, "b".as_ref()).unwrap();
    super::test_support::write_file(&v, "c", b"alone");
    drop(v);
    let u = unlock(&d);
    let names = crate::names::Names::new(&u.store.volume_secret, false);
    let c = crate::keymgr::rewrap::count_versions(&d, &names).unwrap();
    let key = u.store.default_key;
    assert_eq!(c.get(&key, 1), 2, "{:?}", c.files);
}

/// FIFOs, sockets and device nodes made for another user keep the set-user-id and set-group-id
/// bits they were made with, as on ext4: the chown that gives them to their maker (a root
/// daemon) clears them, and they were not put back (LTP mknod01: 07777 → 01755).
#[test]
fn special_files_made_for_another_user_keep_their_set_id_bits() {
    if !rustix::process::geteuid().is_root() {
        return; // the daemon gives nodes to their maker only as root
    }
    let (_t, d) = new_volume();
    let v = open(&d);
    let c = super::Caller {
        uid: 65534,
        gid: 65534,
        ..caller()
    };
    let null = libc::makedev(1, 3) as u32;
    for (name, kind, rdev) in [
        ("fifo", libc::S_IFIFO, 0),
        ("sock", libc::S_IFSOCK, 0),
        ("chr", libc::S_IFCHR, null),
    ] {
        for bits in [0o7777u32, 0o6755, 0o4700, 0o2750] {
            let n = format!("{name}{bits:o}");
            let a = v
                .mknod(1, n.as_ref(), kind | bits, rdev, &c)
                .expect("mknod");
            assert_eq!((a.uid, a.gid), (65534, 65534));
            assert_eq!(u32::from(a.perm), bits, "{n}: as made");
            v.forget(a.ino, 1);
            let again = v.lookup(1, n.as_ref()).expect("lookup");
            assert_eq!(u32::from(again.perm), bits, "{n}: stored");
        }
    }
}

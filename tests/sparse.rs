//! Sparse files on a real mount: a truncate up or a write far past the end takes (almost) no
//! room on the backing disk, reads as zeros, survives a remount and `cp --sparse`, and fsck is
//! clean; `fallocate --punch-hole` and `--dig-holes` give space back; a volume made with
//! `--no-sparse` writes the zeros.
mod common;
use common::*;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const MB: u64 = 1 << 20;

/// Blocks the file takes on disk, in bytes.
fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// The one regular file in the cipher directory's root whose cipher size is at least `min`.
fn cipher_file(cipher: &Path, min: u64) -> std::path::PathBuf {
    std::fs::read_dir(cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file() && std::fs::metadata(p).unwrap().len() >= min)
        .expect("the cipher file")
}

fn check(mnt: &Path) {
    let f = std::fs::File::open(mnt.join("big")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 256 * MB + 3);
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b[..5], 0).unwrap();
    assert_eq!(&b[..5], b"start");
    f.read_exact_at(&mut b[..3], 256 * MB).unwrap();
    assert_eq!(&b[..3], b"end");
    f.read_exact_at(&mut b[..6], 100 * MB + 10).unwrap();
    assert_eq!(&b[..6], b"middle");
    // Every byte: the written ones where they were written, zeros everywhere else.
    let all = std::fs::read(mnt.join("big")).unwrap();
    let mut want = vec![0u8; all.len()];
    want[..5].copy_from_slice(b"start");
    want[(100 * MB + 10) as usize..][..6].copy_from_slice(b"middle");
    want[(256 * MB) as usize..].copy_from_slice(b"end");
    assert!(all == want, "content");
}

#[test]
fn sparse_files_take_no_room_read_as_zeros_and_survive_a_remount_and_cp() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let big = m.path("big");
    std::fs::write(&big, b"start").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.set_len(128 * MB).unwrap();
    f.write_all_at(b"end", 256 * MB).unwrap();
    f.write_all_at(b"middle", 100 * MB + 10).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Through the mount `du` counts what the cipher file takes.
    assert!(allocated(&big) < MB, "{} bytes allocated", allocated(&big));
    check(&m.mnt);
    // cp finds the zeros and leaves holes in the copy too.
    let o = sh(&format!(
        "cp --sparse=always '{}' '{}'",
        big.display(),
        m.path("copy").display()
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(allocated(&m.path("copy")) < 2 * MB);
    assert!(std::fs::read(m.path("copy")).unwrap() == std::fs::read(&big).unwrap());
    m.unmount();
    let c = cipher_file(&v.cipher, 256 * MB);
    assert!(allocated(&c) < MB, "cipher file: {} bytes", allocated(&c));
    let m = v.mount();
    check(&m.mnt);
    m.unmount();
    v.assert_fsck_clean("after sparse files");
}

#[test]
fn punched_and_dug_holes_give_space_back() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let p = m.path("f");
    let mut data: Vec<u8> = (0..32 * MB).map(|i| (i % 251) as u8 | 1).collect();
    // 8 MiB of zeros in the middle, written as data.
    data[(20 * MB) as usize..(28 * MB) as usize].fill(0);
    std::fs::write(&p, &data).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let full = allocated(&p);
    assert!(full >= 32 * MB, "{full}");
    // fallocate --punch-hole: 4 MiB from 2 MiB + 5.
    let o = sh(&format!(
        "fallocate -p -o {} -l {} '{}'",
        2 * MB + 5,
        4 * MB,
        p.display()
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    data[(2 * MB + 5) as usize..(6 * MB + 5) as usize].fill(0);
    // fallocate --dig-holes: the zeros written as data become holes.
    let o = sh(&format!("fallocate -d '{}'", p.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let now = allocated(&p);
    assert!(now < full - 11 * MB, "{full} -> {now}");
    assert!(std::fs::read(&p).unwrap() == data, "content after punching");
    m.unmount();
    let m = v.mount();
    assert!(
        std::fs::read(m.path("f")).unwrap() == data,
        "content after a remount"
    );
    m.unmount();
    v.assert_fsck_clean("after punched holes");
}

#[test]
fn a_volume_made_with_no_sparse_writes_the_zeros() {
    let v = Volume::new(&["--no-sparse"]);
    let m = v.mount();
    let f = std::fs::File::create(m.path("big")).unwrap();
    f.set_len(16 * MB).unwrap();
    drop(f);
    m.unmount();
    let c = cipher_file(&v.cipher, 16 * MB);
    assert!(allocated(&c) >= 16 * MB, "{} bytes", allocated(&c));
    let features = |v: &Volume| {
        let info = kmsfs()
            .args(["info", "--json"])
            .arg(&v.cipher)
            .output()
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        j["features"].to_string()
    };
    assert!(!features(&v).contains("sparse-files"));
    assert!(features(&Volume::new(&[])).contains("sparse-files"));
}

/// `kmsfs upgrade` gives a volume made with `--no-sparse` (as every volume before 2026-12-05)
/// sparse files: refused while mounted (exit 19), then files created afterwards keep holes, and
/// a file made before goes on storing zeros and reads the same; fsck is clean.
#[test]
fn upgrade_gives_an_older_volume_sparse_files_for_new_files() {
    let v = Volume::new(&["--no-sparse"]);
    let m = v.mount();
    std::fs::write(m.path("old"), b"before").unwrap();
    let upgrade = |v: &Volume| {
        kmsfs()
            .arg("upgrade")
            .arg(&v.cipher)
            .arg("--passfile")
            .arg(&v.passfile)
            .output()
            .unwrap()
    };
    let o = upgrade(&v);
    assert_eq!(o.status.code(), Some(19), "while mounted: {o:?}");
    m.unmount();
    let o = upgrade(&v);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("added feature sparse-files"));
    let o = upgrade(&v);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to do"));
    let m = v.mount();
    let f = std::fs::File::create(m.path("new")).unwrap();
    f.set_len(64 * MB).unwrap();
    drop(f);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("old"))
        .unwrap();
    f.set_len(16 * MB).unwrap();
    drop(f);
    m.unmount();
    let new = cipher_file(&v.cipher, 64 * MB);
    assert!(allocated(&new) < MB, "new file: {} bytes", allocated(&new));
    let old = std::fs::read_dir(&v.cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file() && (16 * MB..64 * MB).contains(&std::fs::metadata(p).unwrap().len()))
        .expect("the old file");
    assert!(
        allocated(&old) >= 16 * MB,
        "old file: {} bytes",
        allocated(&old)
    );
    let m = v.mount();
    let b = std::fs::read(m.path("old")).unwrap();
    assert_eq!(b.len() as u64, 16 * MB);
    assert_eq!(&b[..6], b"before");
    assert!(b[6..].iter().all(|&x| x == 0));
    assert_eq!(std::fs::metadata(m.path("new")).unwrap().len(), 64 * MB);
    m.unmount();
    v.assert_fsck_clean("after an upgrade");
}

/// lseek(2) `SEEK_DATA` (`hole` false) or `SEEK_HOLE`: the offset, or the errno.
fn seek(f: &std::fs::File, off: u64, hole: bool) -> Result<u64, i32> {
    let how = match hole {
        true => rustix::fs::SeekFrom::Hole(off),
        false => rustix::fs::SeekFrom::Data(off),
    };
    rustix::fs::seek(f, how).map_err(|e| e.raw_os_error())
}

#[test]
fn seek_data_and_seek_hole_find_the_holes_also_before_a_write_back() {
    const B: u64 = 4096;
    for extra in [&[][..], &["--no-writeback-cache"][..]] {
        let v = Volume::new(&[]);
        let m = v.mount_with(extra);
        let p = m.path("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        // Holes, then a block written into them that the writeback cache still holds: the
        // mount has it written back before it answers.
        f.set_len(64 * B).unwrap();
        f.write_all_at(&[b'a'; B as usize], 10 * B).unwrap();
        assert_eq!(seek(&f, 0, true), Ok(0), "{extra:?}");
        assert_eq!(seek(&f, 0, false), Ok(10 * B), "{extra:?}");
        assert_eq!(seek(&f, 10 * B + 1, true), Ok(11 * B), "{extra:?}");
        assert_eq!(seek(&f, 11 * B, false), Err(libc::ENXIO), "{extra:?}");
        // A write past the end, as cached.
        f.write_all_at(b"end", 100 * B + 5).unwrap();
        assert_eq!(seek(&f, 11 * B, false), Ok(100 * B), "{extra:?}");
        assert_eq!(seek(&f, 100 * B, true), Ok(100 * B + 8), "{extra:?}");
        assert_eq!(seek(&f, 100 * B + 8, false), Err(libc::ENXIO));
        assert_eq!(seek(&f, 100 * B + 8, true), Err(libc::ENXIO));
        // A shared mapping writes into a hole, not synced, and stays (its unmapping would
        // write the page back).
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (64 * B) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: the mapping is 64 blocks long and writable.
        unsafe { map.cast::<u8>().add((30 * B + 7) as usize).write(b'm') };
        assert_eq!(seek(&f, 11 * B, false), Ok(30 * B), "{extra:?}");
        assert_eq!(seek(&f, 30 * B, true), Ok(31 * B), "{extra:?}");
        // SAFETY: mapped above, not used after.
        unsafe { libc::munmap(map, (64 * B) as usize) };
        drop(f);
        // cp follows them: every byte copied, the holes kept.
        let o = sh(&format!(
            "cp --sparse=auto '{}' '{}'",
            p.display(),
            m.path("copy").display()
        ));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = std::fs::read(&p).unwrap();
        assert_eq!(want.len() as u64, 100 * B + 8);
        assert_eq!(&want[(30 * B + 7) as usize..][..1], b"m");
        assert!(std::fs::read(m.path("copy")).unwrap() == want);
        let copy = std::fs::File::open(m.path("copy")).unwrap();
        assert_eq!(seek(&copy, 0, false), Ok(10 * B), "{extra:?}");
        assert!(allocated(&m.path("copy")) < 100 * B);
        drop(copy);
        m.unmount();
        v.assert_fsck_clean("after seeking");
    }
}

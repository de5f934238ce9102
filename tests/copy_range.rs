//! copy_file_range(2) on a real mount, done by the daemon (`kmsfs_copied_bytes_total`): what
//! the kernel held written but not yet sent in the source is copied, what it held of the
//! destination is not read back stale, sizes are right at once and after a remount, and a
//! control file (whose copy the daemon leaves to the kernel) copies too; in both cache modes.
mod common;
use common::*;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// copy_file_range until `len` bytes are copied or the source ends; the bytes copied.
fn copy(src: &std::fs::File, off_in: i64, dst: &std::fs::File, off_out: i64, len: usize) -> usize {
    let (mut oi, mut oo, mut done) = (off_in, off_out, 0usize);
    while done < len {
        // SAFETY: both descriptors are open; the offsets are locals the call updates.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut oi,
                dst.as_raw_fd(),
                &mut oo,
                len - done,
                0,
            )
        };
        assert!(
            n >= 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    done
}

fn copied_bytes(mnt: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(mnt.join(".kmsfs/metrics")).expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("kmsfs_copied_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kmsfs_copied_bytes_total in:\n{text}"))
}

fn copies_in(mount_args: &[&str]) {
    let v = Volume::new(&[]);
    let m = v.mount_with(mount_args);
    let mnt = m.mnt.clone();
    let (want, src_data) = with_timeout(120, move || {
        let p = |n: &str| mnt.join(n);
        let open_rw = |n: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p(n))
                .unwrap()
        };
        let mut src_data = pattern((3 << 20) + 123, 1);
        std::fs::write(p("src"), &src_data).unwrap();
        // Written, maybe only into the kernel's cache: the copy must see it.
        let src = open_rw("src");
        src.write_all_at(b"NOT YET SENT", (1 << 20) + 7).unwrap();
        src_data[(1 << 20) + 7..][..12].copy_from_slice(b"NOT YET SENT");
        // The destination's first bytes read once, so that the kernel caches them.
        let mut want = pattern(5000, 9);
        std::fs::write(p("dst"), &want).unwrap();
        let dst = open_rw("dst");
        let mut head = vec![0u8; 5000];
        dst.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, want);
        // An old modification time, which the copy must move as a write does.
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
        dst.set_modified(old).unwrap();
        let before = copied_bytes(&mnt);
        let n = copy(&src, 0, &dst, 100, src_data.len() + 999);
        assert_eq!(n, src_data.len(), "short at the source's end");
        want.truncate(100);
        want.extend_from_slice(&src_data);
        let md = dst.metadata().unwrap();
        assert_eq!(md.len(), want.len() as u64);
        assert!(md.modified().unwrap() > old, "mtime moved by the copy");
        let mut got = vec![0u8; want.len()];
        dst.read_exact_at(&mut got, 0).unwrap();
        assert!(got == want, "destination read right after the copy");
        // Within one file, to a range that does not overlap.
        assert_eq!(copy(&src, 0, &src, 5 << 20, 4096), 4096);
        // Both were the daemon's (the control file's below is not).
        assert_eq!(copied_bytes(&mnt) - before, (n + 4096) as u64);
        src_data.resize(5 << 20, 0);
        src_data.extend_from_within(..4096);
        assert!(
            std::fs::read(p("src")).unwrap() == src_data,
            "copy within a file"
        );
        // A control file: the daemon declines and the kernel copies through read and write.
        let ctl = std::fs::File::open(p(".kmsfs/README")).unwrap();
        let readme = std::fs::read(p(".kmsfs/README")).unwrap();
        let out = std::fs::File::create(p("readme copy")).unwrap();
        assert_eq!(copy(&ctl, 0, &out, 0, 1 << 20), readme.len());
        drop(out);
        assert_eq!(std::fs::read(p("readme copy")).unwrap(), readme);
        assert_eq!(copied_bytes(&mnt) - before, (n + 4096) as u64);
        (want, src_data)
    });
    m.unmount();
    // The close records count the copied bytes as read from the source and written to the
    // destination (through those descriptors).
    let closes: Vec<serde_json::Value> = v
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "Close")
        .collect();
    let moved = |path: &str, field: &str| {
        closes
            .iter()
            .filter(|r| r["resources"]["path"] == path)
            .filter_map(|r| r[field].as_u64())
            .max()
            .unwrap_or(0)
    };
    let copied = (want.len() - 100) as u64;
    assert!(moved("/src", "bytes_read") >= copied, "{closes:#?}");
    assert!(moved("/dst", "bytes_written") >= copied, "{closes:#?}");
    let m = v.mount_with(mount_args);
    assert!(
        std::fs::read(m.path("dst")).unwrap() == want,
        "after a remount"
    );
    assert!(std::fs::read(m.path("src")).unwrap() == src_data);
    m.unmount();
    v.assert_fsck_clean("after copy_file_range");
}

#[test]
fn copy_file_range_is_done_by_the_daemon_and_sees_the_kernels_cache() {
    copies_in(&[]);
}

#[test]
fn copy_file_range_without_writeback_cache() {
    copies_in(&["--no-writeback-cache"]);
}

/// `cp` of a large file uses copy_file_range (coreutils 9): the copy is the daemon's and
/// byte for byte the source.
#[test]
fn cp_copies_through_the_daemon() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let mnt = m.mnt.clone();
    let data = pattern((16 << 20) + 5, 4);
    std::fs::write(m.path("big"), &data).unwrap();
    let before = copied_bytes(&m.mnt);
    with_timeout(120, move || {
        let o = sh(&format!(
            "cp '{}' '{}'",
            mnt.join("big").display(),
            mnt.join("big copy").display()
        ));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    });
    assert!(std::fs::read(m.path("big copy")).unwrap() == data);
    let copied = copied_bytes(&m.mnt) - before;
    if copied == 0 {
        // A cp before coreutils 9 reads and writes; nothing to check then.
        eprintln!("cp did not use copy_file_range");
    } else {
        assert_eq!(copied, data.len() as u64);
    }
    m.unmount();
    v.assert_fsck_clean("after cp");
}

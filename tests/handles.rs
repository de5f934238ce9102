//! File handles on a real mount (`name_to_handle_at`/`open_by_handle_at`, what an NFS server
//! uses): a handle opens its file or directory after the kernel dropped the inode and after the
//! volume was mounted again; a deleted file's handle is stale, also once a new file has its
//! inode number. Opening handles needs CAP_DAC_READ_SEARCH (root).
mod common;
use common::*;

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAX_HANDLE_SZ: usize = 128;

/// Whether this process has CAP_DAC_READ_SEARCH (capability 2) in its effective set, as
/// open_by_handle_at needs (root in a container may not).
fn may_open_handles() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 2) != 0)
}

#[repr(C)]
#[derive(Clone)]
struct Handle {
    bytes: libc::c_uint,
    kind: libc::c_int,
    data: [u8; MAX_HANDLE_SZ],
}

fn handle(p: &Path) -> Handle {
    let mut h = Handle {
        bytes: MAX_HANDLE_SZ as libc::c_uint,
        kind: 0,
        data: [0; MAX_HANDLE_SZ],
    };
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut mount_id = 0;
    // SAFETY: `h` is a `struct file_handle` with MAX_HANDLE_SZ bytes of room.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&raw mut h).cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "name_to_handle_at {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    h
}

/// Opens `h` on the mount at `mnt` (read-only); the errno on failure.
fn open_by(mnt: &Path, h: &Handle) -> Result<fs::File, i32> {
    let m = fs::File::open(mnt).unwrap();
    let mut h = h.clone();
    // SAFETY: a well-formed `struct file_handle`; the kernel only reads it.
    let fd = unsafe { libc::open_by_handle_at(m.as_raw_fd(), (&raw mut h).cast(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn content(f: &mut fs::File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

fn names(f: &fs::File) -> Vec<String> {
    let mut v = sorted_names(&PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())));
    v.sort();
    v
}

/// Makes the kernel let go of the mount's unused inodes, and of the backing file system's
/// names the daemon let go in turn (so a file found by number is not placed in its directory).
fn drop_inodes() {
    sync_all();
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

fn sync_all() {
    // SAFETY: no arguments.
    unsafe { libc::sync() };
}

struct Handles {
    dir: Handle,
    sub: Handle,
    file: Handle,
    deleted: Handle,
    deleted_ino: u64,
}

fn check(mnt: &Path, h: &Handles, when: &str) {
    let mut f = open_by(mnt, &h.file).unwrap_or_else(|e| panic!("{when}: file: errno {e}"));
    assert_eq!(content(&mut f), "by handle\n", "{when}");
    let d = open_by(mnt, &h.dir).unwrap_or_else(|e| panic!("{when}: dir: errno {e}"));
    assert_eq!(names(&d), ["sub"], "{when}");
    // A directory opened by handle is placed in the tree: its path is the real one.
    let sub = open_by(mnt, &h.sub).unwrap_or_else(|e| panic!("{when}: sub: errno {e}"));
    assert_eq!(
        fs::read_link(format!("/proc/self/fd/{}", sub.as_raw_fd())).unwrap(),
        mnt.join("d/sub"),
        "{when}"
    );
    let mut inner = fs::File::open(format!("/proc/self/fd/{}/f", sub.as_raw_fd())).unwrap();
    assert_eq!(content(&mut inner), "by handle\n", "{when}");
    // The kernel keeps a removed file's inode while the RELEASE of its last close is still
    // under way (sent in the background; the inode is let go when the reply comes), and opens a
    // handle of it from there meanwhile: stale at the latest once that reply came (found on a
    // loaded machine, where it came after the removal).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut got = open_by(mnt, &h.deleted).err();
    while got != Some(libc::ESTALE) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        got = open_by(mnt, &h.deleted).err();
    }
    assert_eq!(
        got,
        Some(libc::ESTALE),
        "{when}: a deleted file's handle must be stale"
    );
}

#[test]
fn handles_open_their_files_after_the_inode_is_dropped_and_after_a_remount() {
    if !may_open_handles() {
        eprintln!("skipped: open_by_handle_at needs CAP_DAC_READ_SEARCH");
        return;
    }
    let v = Volume::new(&[]);
    let m = v.mount();
    let mnt = v.mnt.clone();
    let h = with_timeout(60, move || {
        fs::create_dir_all(mnt.join("d/sub")).unwrap();
        fs::write(mnt.join("d/sub/f"), "by handle\n").unwrap();
        fs::write(mnt.join("d/gone"), "deleted\n").unwrap();
        let h = Handles {
            dir: handle(&mnt.join("d")),
            sub: handle(&mnt.join("d/sub")),
            file: handle(&mnt.join("d/sub/f")),
            deleted: handle(&mnt.join("d/gone")),
            deleted_ino: fs::metadata(mnt.join("d/gone")).unwrap().ino(),
        };
        fs::remove_file(mnt.join("d/gone")).unwrap();
        check(&mnt, &h, "while cached");
        drop_inodes();
        check(&mnt, &h, "after the kernel dropped its inodes");
        h
    });
    m.unmount();
    // Handles outlive a remount where the backing file system's handles are made from the
    // inode number alone (ext4); elsewhere (XFS, btrfs) they are remembered by the daemon.
    let b = handle(&v.cipher);
    if b.kind != 1 || b.bytes != 8 {
        eprintln!("the remount half skipped: the backing file system's handles are not ext4's");
        v.assert_fsck_clean("after opening by handle");
        return;
    }

    let m = v.mount();
    let mnt = v.mnt.clone();
    with_timeout(60, move || {
        check(&mnt, &h, "after a remount");
        // New files until one takes the deleted file's inode number: the old handle must stay
        // stale rather than open the new file.
        let mut reused = false;
        for i in 0..500 {
            let p = mnt.join(format!("new{i}"));
            fs::write(&p, "new\n").unwrap();
            if fs::metadata(&p).unwrap().ino() == h.deleted_ino {
                reused = true;
                break;
            }
        }
        drop_inodes();
        assert_eq!(open_by(&mnt, &h.deleted).err(), Some(libc::ESTALE));
        eprintln!("inode number taken again by a new file: {reused}");
        check(&mnt, &h, "after new files");
    });
    m.unmount();
    v.assert_fsck_clean("after opening by handle");
}

#[test]
fn handles_given_out_by_another_volume_are_stale_even_from_a_copy() {
    if !may_open_handles() {
        eprintln!("skipped: open_by_handle_at needs CAP_DAC_READ_SEARCH");
        return;
    }
    let b = Volume::new(&[]);
    let other = Volume::new(&[]);
    let mb = b.mount();
    fs::create_dir(b.mnt.join("d")).unwrap();
    fs::write(b.mnt.join("d/f"), "volume b\n").unwrap();
    let (hf, hd) = (handle(&b.mnt.join("d/f")), handle(&b.mnt.join("d")));
    mb.unmount();
    // A copy of volume b (same keys, same volume id) on the same backing file system: its
    // daemon finds b's backing files by number, and could open them with its keys.
    let (copy, copy_mnt) = (b.tmp.path().join("copy"), b.tmp.path().join("copy-mnt"));
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&b.cipher)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    fs::create_dir(&copy_mnt).unwrap();
    let mb = b.mount();
    let mc = Mount::start(&copy, &copy_mnt, &b.passfile, &[]);
    let mo = other.mount();
    let (bm, cm, om) = (b.mnt.clone(), copy_mnt.clone(), other.mnt.clone());
    with_timeout(60, move || {
        for when in ["cached", "dropped"] {
            if when == "dropped" {
                drop_inodes();
            }
            let mut f = open_by(&bm, &hf).expect("b's handle on b");
            assert_eq!(content(&mut f), "volume b\n");
            drop(f);
            for (name, mnt) in [("the copy", &cm), ("another volume", &om)] {
                for (what, h) in [("file", &hf), ("directory", &hd)] {
                    drop_inodes();
                    assert_eq!(
                        open_by(mnt, h).err(),
                        Some(libc::ESTALE),
                        "b's {what} handle on {name} ({when})"
                    );
                }
            }
        }
        // The copy's own files open by their own handles.
        let hc = handle(&cm.join("d/f"));
        drop_inodes();
        assert_eq!(content(&mut open_by(&cm, &hc).unwrap()), "volume b\n");
    });
    drop(mo);
    drop(mc);
    mb.unmount();
    b.assert_fsck_clean("after handles of other volumes");
}

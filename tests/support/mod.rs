//! Helpers of the real-mount tests in posix.rs, refmodel.rs, tamper.rs, no_plaintext.rs and
//! cli_errors.rs, on top of `common` (which owns the mount guard).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Mount, is_mounted};

/// Processes that hold something under `mnt` (open files, mappings, working directory).
pub fn holders(mnt: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = mnt.to_string_lossy().into_owned();
    for p in procs.flatten() {
        let pid = p.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = p.path();
        let mut held: Vec<PathBuf> = std::fs::read_dir(dir.join("fd"))
            .map(|fds| {
                fds.flatten()
                    .filter_map(|f| std::fs::read_link(f.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        held.extend(std::fs::read_link(dir.join("cwd")));
        let mapped = std::fs::read_to_string(dir.join("maps"))
            .unwrap_or_default()
            .contains(&me);
        if mapped || held.iter().any(|h| h.starts_with(mnt)) {
            let cmd = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            out.push(format!(
                "pid {} ({})",
                pid.to_string_lossy(),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

/// Unmounts and returns the daemon's stderr. A process forked by a test running concurrently in
/// this binary holds copies of our descriptors until its exec, which makes an unmount fail as
/// busy: wait (briefly) until nothing holds the mount first. If the unmount still fails, the
/// mount is detached (never left behind) and the test fails.
pub fn unmount(m: Mount) -> String {
    let mnt = m.mnt.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holders(&mnt).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = holders(&mnt);
    let err = m.unmount();
    if is_mounted(&mnt) {
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&mnt)
            .status();
        panic!(
            "unmount of {} failed; holders just before: {held:?}; daemon stderr:\n{err}",
            mnt.display()
        );
    }
    err
}

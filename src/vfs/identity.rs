//! Who a process is: uid, gid, supplementary groups, user and group names, executable. Read
//! from `/proc/PID` (a FUSE request carries only uid, gid and pid); names from the system's user
//! database. Best effort: a process that has exited yields what the request itself carried.

use std::ffi::CStr;

use crate::keymgr::policy::Identity;

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pw` and `buf` (sizes given) and sets `out` to &pw or null.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    Some(
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 8192];
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in user_name, for getgrgid_r.
    let r = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success gr_name points to a NUL-terminated string inside `buf`.
    Some(
        unsafe { CStr::from_ptr(gr.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The executable process `pid` runs now.
pub fn exe_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

/// The identity of process `pid`, which made a request as `uid`/`gid`.
pub fn identity_of(pid: u32, uid: u32, gid: u32) -> Identity {
    let mut groups = Vec::new();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(line) = status.lines().find(|l| l.starts_with("Groups:"))
    {
        groups = line["Groups:".len()..]
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
    }
    let exe = exe_of(pid);
    let mut names: Vec<String> = std::iter::once(gid)
        .chain(groups.iter().copied())
        .filter_map(group_name)
        .collect();
    names.dedup();
    Identity {
        uid,
        gid,
        groups,
        user: user_name(uid),
        group_names: names,
        pid,
        exe,
    }
}

/// The identity of this process.
pub fn current() -> Identity {
    identity_of(
        std::process::id(),
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

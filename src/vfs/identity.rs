//! Who a process is: uid, gid, supplementary groups, user and group names, executable. Read
//! from `/proc/PID` (a FUSE request carries only uid, gid and pid); names from the system's user
//! database. Best effort: a process that has exited yields what the request itself carried.

use std::ffi::CStr;

use crate::keymgr::policy::Identity;

/// Calls a `get*_r` lookup with a buffer that grows while it answers ERANGE (a group with a
/// long member list needs more than any fixed size: with 8 KiB such a group, and every group
/// listed after it in /etc/group, never resolved, and a Deny naming it applied to nobody; found
/// by a review), up to 1 MiB.
fn lookup(mut call: impl FnMut(&mut [libc::c_char]) -> libc::c_int) -> Option<Vec<libc::c_char>> {
    let mut len = 4096;
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        match call(&mut buf) {
            0 => return Some(buf),
            libc::ERANGE if len < (1 << 20) => len *= 4,
            _ => return None,
        }
    }
}

fn user_name(uid: u32) -> Option<String> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pw` and `buf` (sizes given) and sets `out` to &pw or null.
    let _buf = lookup(|buf| unsafe {
        libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out)
    })?;
    if out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `_buf`, alive here.
    Some(
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn group_name(gid: u32) -> Option<String> {
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in user_name, for getgrgid_r.
    let _buf = lookup(|buf| unsafe {
        libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out)
    })?;
    if out.is_null() {
        return None;
    }
    // SAFETY: on success gr_name points to a NUL-terminated string inside `_buf`, alive here.
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

/// The value of field `key` (with its colon, e.g. `"Groups:"`) of process `pid`'s
/// `/proc/PID/status`, untrimmed; `None` if the process is gone or has no such field.
fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::to_owned)
}

/// The identity of process `pid`, which made a request as `uid`/`gid`.
pub fn identity_of(pid: u32, uid: u32, gid: u32) -> Identity {
    let groups = status_field(pid, "Groups:").map_or_else(Vec::new, |v| {
        v.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect()
    });
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

/// Whether process `pid`, which made a request as `uid`, holds CAP_FSETID (in its effective
/// set): a write by a process without it clears set-user-id and set-group-id, on a local file
/// system. Where the kernel does not say so in the request (fallocate, copy_file_range under
/// FUSE_HANDLE_KILLPRIV_V2), kmsfs reads it from `/proc/PID/status`; a process gone meanwhile
/// counts as holding it when it was root (its last request then changes nothing it could
/// not). The capability as its own user namespace sees it, as for a file of the initial one.
pub fn holds_fsetid(pid: u32, uid: u32) -> bool {
    const CAP_FSETID: u32 = 4;
    let eff = status_field(pid, "CapEff:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match eff {
        Some(caps) => caps & (1 << CAP_FSETID) != 0,
        None => uid == 0,
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

#[cfg(test)]
mod tests {
    #[test]
    fn lookups_grow_their_buffer_while_it_is_too_small() {
        let mut sizes = Vec::new();
        let got = super::lookup(|buf| {
            sizes.push(buf.len());
            if buf.len() < 100_000 { libc::ERANGE } else { 0 }
        });
        assert_eq!(got.map(|b| b.len()), Some(262_144));
        assert_eq!(sizes, [4096, 16_384, 65_536, 262_144]);
        // Not for ever, and other errors at once.
        assert!(super::lookup(|_| libc::ERANGE).is_none());
        assert!(super::lookup(|_| libc::EIO).is_none());
        // A real lookup still works.
        assert_eq!(super::user_name(0).as_deref(), Some("root"));
    }
}

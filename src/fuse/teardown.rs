//! The end of a session after an unmount from outside. fuser 0.18.0 then unmounts the mount
//! point once more (its check for a live mount is inverted; fixed upstream in fuser PR #703, not
//! released): as root a plain `umount(2)` of the path, which would take away an idle file system
//! mounted at the same place since (a restarted daemon that mounted before this one exited).
//! When the session ends on a dead connection, the thread that ends it (the one fuser's unmount
//! runs on) first moves into a mount namespace of its own, so that the unmount can only touch
//! its private copy. Needs CAP_SYS_ADMIN; without it nothing changes (and fuser's attempt goes
//! through `fusermount3 -u -z`). As in libfuse, a connection aborted while still mounted
//! (`/sys/fs/fuse/connections/N/abort`, a forced unmount refused as busy) leaves its dead mount
//! for `fusermount3 -u` to remove.

/// Called as the session ends, on the thread that will then drop fuser's mount.
pub fn session_ended() {
    if connection_dead() != Some(true) {
        // Still mounted (the session ended for another reason): fuser's unmount is right.
        return;
    }
    match private_mount_namespace() {
        Ok(()) => tracing::debug!("unmounted from outside; fuser's second unmount stays private"),
        Err(e) => tracing::debug!("unmounted from outside; no private mount namespace: {e}"),
    }
}

/// Whether this process's FUSE connection is dead (unmounted or aborted): its `/dev/fuse`
/// descriptor polls POLLERR then, as libfuse checks before it unmounts. `None`: no descriptor
/// found. A daemon serves one mount, so every `/dev/fuse` descriptor it has is that session's.
pub fn connection_dead() -> Option<bool> {
    let mut found = None;
    for e in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A descriptor closed meanwhile by another thread is passed over.
        if std::fs::read_link(e.path()).ok().as_deref() != Some(std::path::Path::new("/dev/fuse")) {
            continue;
        }
        found = Some(polls_error(fd));
        if found == Some(true) {
            break;
        }
    }
    found
}

/// Whether `fd` polls POLLERR now (a descriptor closed meanwhile polls POLLNVAL: false).
fn polls_error(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd owned here, timeout 0; poll(2) only reads the descriptor number.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r >= 0 {
            return r == 1 && p.revents & libc::POLLERR != 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Gives the calling thread a mount namespace of its own in which no mount propagates back.
fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: unshare(2) with CLONE_NEWNS affects only the calling thread's namespaces (and its
    // fs attributes, which it gets a copy of); no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated path and null source/type/data, as mount(2) allows for a change
    // of propagation.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        // The namespace is this thread's own, but its mounts still propagate to the others.
        return Err(std::io::Error::new(
            e.kind(),
            format!("mounts still shared, making / private failed: {e}"),
        ));
    }
    Ok(())
}

//! mount(8)'s helper interface: installed as `/sbin/mount.fuse.kmsfs` (and `mount.kmsfs`), the
//! binary makes `mount -t fuse.kmsfs CIPHERDIR MOUNTPOINT -o passfile=F` and /etc/fstab lines
//! work. mount(8) calls `mount.fuse.kmsfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`; the options
//! are turned into `kmsfs mount` flags.

use std::ffi::OsString;
use std::path::Path;

use super::error::CliError;
use super::exit_code as code;

/// The names under which the binary acts as a mount helper.
pub const HELPER_NAMES: &[&str] = &["mount.fuse.kmsfs", "mount.kmsfs"];

pub fn is_helper(argv0: &OsString) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_NAMES.contains(&n))
}

/// Options mount(8) and fstab use that mean nothing to kmsfs.
fn ignored(o: &str) -> bool {
    matches!(
        o,
        "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "users"
            | "nouser"
            | "owner"
            | "group"
            | "rw"
            | "nofail"
            | "_netdev"
            | "sloppy"
    ) || o.starts_with("x-")
        || o.starts_with("comment=")
}

/// The mount's flags now, as a remount must repeat them (MS_REMOUNT replaces them all: a
/// `mount -o remount,ro SOURCE MOUNTPOINT`, or an fstab line, passes only the change, and
/// would otherwise drop the `nosuid,nodev` kmsfs mounts with).
fn current_flags(f: rustix::fs::StatVfsMountFlags) -> rustix::mount::MountFlags {
    use rustix::fs::StatVfsMountFlags as S;
    use rustix::mount::MountFlags as F;
    [
        (S::RDONLY, F::RDONLY),
        (S::NOSUID, F::NOSUID),
        (S::NODEV, F::NODEV),
        (S::NOEXEC, F::NOEXEC),
        (S::SYNCHRONOUS, F::SYNCHRONOUS),
        (S::NOATIME, F::NOATIME),
        (S::NODIRATIME, F::NODIRATIME),
        (S::RELATIME, F::RELATIME),
    ]
    .into_iter()
    .filter(|(s, _)| f.contains(*s))
    .fold(F::empty(), |acc, (_, m)| acc | m)
}

/// The flags of a remount: the mount's `now`, changed by these options (the last of each pair
/// counts, as for mount(8)): `ro`, `nosuid`, `nodev`, `noexec`, `sync`, `dirsync`, and the
/// access-time rule.
fn remount_flags(now: rustix::mount::MountFlags, opts: &[String]) -> rustix::mount::MountFlags {
    use rustix::mount::MountFlags as F;
    let mut f = now;
    for o in opts {
        let (set, clear) = match o.as_str() {
            "ro" => (F::RDONLY, F::empty()),
            "rw" => (F::empty(), F::RDONLY),
            "nosuid" => (F::NOSUID, F::empty()),
            "suid" => (F::empty(), F::NOSUID),
            "nodev" => (F::NODEV, F::empty()),
            "dev" => (F::empty(), F::NODEV),
            "noexec" => (F::NOEXEC, F::empty()),
            "exec" => (F::empty(), F::NOEXEC),
            "sync" => (F::SYNCHRONOUS, F::empty()),
            "async" => (F::empty(), F::SYNCHRONOUS),
            "dirsync" => (F::DIRSYNC, F::empty()),
            "noatime" => (F::NOATIME, F::RELATIME | F::STRICTATIME),
            "relatime" => (F::RELATIME, F::NOATIME | F::STRICTATIME),
            "strictatime" => (F::STRICTATIME, F::NOATIME | F::RELATIME),
            "nodiratime" => (F::NODIRATIME, F::empty()),
            "diratime" => (F::empty(), F::NODIRATIME),
            _ => continue,
        };
        f = (f - clear) | set;
    }
    f
}

/// What a helper invocation means: the `kmsfs` arguments to run, or nothing (`-f`: fake mount).
pub fn translate(args: &[OsString]) -> Result<Option<Vec<OsString>>, CliError> {
    let usage = |m: String| {
        CliError::new(code::USAGE, m)
            .hint("usage: mount.kmsfs CIPHERDIR MOUNTPOINT [-o passfile=FILE,idle=30m,…]")
    };
    let mut pos: Vec<OsString> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut out: Vec<OsString> = vec!["kmsfs".into(), "mount".into()];
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let v = it.next().ok_or_else(|| usage("-o needs a value".into()))?;
                let v = v
                    .to_str()
                    .ok_or_else(|| usage("mount options must be UTF-8".into()))?;
                opts.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string));
            }
            Some(s) if s.starts_with("-o") && s.len() > 2 => {
                opts.extend(s[2..].split(',').map(str::to_string));
            }
            // Fake: mount(8) only wants to know the helper exists.
            Some("-f") => return Ok(None),
            Some("-v") => out.push("-v".into()),
            Some("-n" | "-s") => {}
            Some("-t") => {
                it.next();
            }
            Some(s) if s.starts_with('-') => return Err(usage(format!("unknown option {s}"))),
            _ => pos.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(pos).map_err(|p| {
        usage(format!(
            "need CIPHERDIR and MOUNTPOINT, got {} argument(s)",
            p.len()
        ))
    })?;
    let source = strip_type_prefix(source);
    // `mount -o remount,ro MOUNTPOINT`: mount(8) passes the mount's options with the changes
    // merged in; the kernel changes the flags of the mount there is (no new daemon).
    if opts.iter().any(|o| o == "remount") {
        let mp = Path::new(&mountpoint);
        let now = rustix::fs::statvfs(mp)
            .map_err(|e| CliError::new(code::MOUNT_FAILED, format!("{}: {e}", mp.display())))?;
        let flags = remount_flags(current_flags(now.f_flag), &opts);
        rustix::mount::mount_remount(mp, flags, "").map_err(|e| {
            CliError::new(
                code::MOUNT_FAILED,
                format!("remounting {}: {e}", mp.display()),
            )
        })?;
        return Ok(None);
    }
    let mut fuse = Vec::new();
    for o in opts {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (o.clone(), None),
        };
        let flag = |f: &str| -> Result<Vec<OsString>, CliError> {
            let v = v
                .clone()
                .ok_or_else(|| usage(format!("option {k} needs a value ({k}=…)")))?;
            Ok(vec![f.into(), v.into()])
        };
        match k.as_str() {
            "passfile" => out.extend(flag("--passfile")?),
            "extpass" => out.extend(flag("--extpass")?),
            "recovery_key_file" | "recovery-key-file" => out.extend(flag("--recovery-key-file")?),
            "idle" => out.extend(flag("--idle")?),
            "threads" => out.extend(flag("--threads")?),
            "poll_us" | "poll-us" => out.extend(flag("--poll-us")?),
            "ro" => out.push("--ro".into()),
            "allow_other" | "allow-other" => out.push("--allow-other".into()),
            "no_writeback_cache" | "no-writeback-cache" => out.push("--no-writeback-cache".into()),
            "no_prefetch" | "no-prefetch" => out.push("--no-prefetch".into()),
            "fg" | "foreground" => out.push("-f".into()),
            _ if ignored(&o) => {}
            _ => fuse.push(o),
        }
    }
    if !fuse.is_empty() {
        out.push("-o".into());
        out.push(fuse.join(",").into());
    }
    out.push(source);
    out.push(mountpoint);
    Ok(Some(out))
}

/// The old `kmsfs#/path` (or `fuse.kmsfs#/path`) form of fuse sources, without its prefix. Only
/// that literal prefix: a `#` elsewhere belongs to the path (`/srv/vault#2` was cut to `2`
/// until 2026-12-06).
fn strip_type_prefix(source: OsString) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let b = source.as_bytes();
    for prefix in [&b"fuse.kmsfs#"[..], b"kmsfs#"] {
        if let Some(rest) = b.strip_prefix(prefix) {
            return OsString::from_vec(rest.to_vec());
        }
    }
    source
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_sign_inside_the_cipher_dir_is_kept() {
        for src in ["/srv/vault#2", "kmsfs/x#y", "#start"] {
            let a: Vec<OsString> = ["/sbin/mount.fuse.kmsfs", src, "/mnt/v"]
                .iter()
                .map(OsString::from)
                .collect();
            let out = translate(&a).unwrap().unwrap();
            assert_eq!(out[out.len() - 2], OsString::from(src));
        }
        let a: Vec<OsString> = ["/sbin/mount.fuse.kmsfs", "kmsfs#/srv/vault#2", "/mnt/v"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = translate(&a).unwrap().unwrap();
        assert_eq!(out[out.len() - 2], OsString::from("/srv/vault#2"));
    }

    fn t(args: &[&str]) -> Vec<String> {
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        translate(&a)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn fstab_options_become_flags() {
        assert_eq!(
            t(&[
                "/sbin/mount.fuse.kmsfs",
                "/srv/c",
                "/mnt/x",
                "-o",
                "rw,noauto,x-systemd.automount,passfile=/etc/k.pass,idle=30m,allow_other,noatime,nodev",
            ]),
            [
                "kmsfs",
                "mount",
                "--passfile",
                "/etc/k.pass",
                "--idle",
                "30m",
                "--allow-other",
                "-o",
                "noatime,nodev",
                "/srv/c",
                "/mnt/x"
            ]
        );
        assert_eq!(
            t(&["mount.kmsfs", "kmsfs#/srv/c", "/mnt/x", "-n", "-oro"]),
            ["kmsfs", "mount", "--ro", "/srv/c", "/mnt/x"]
        );
        assert_eq!(
            t(&["mount.kmsfs", "fuse.kmsfs#/srv/c", "/mnt/x"]),
            ["kmsfs", "mount", "/srv/c", "/mnt/x"]
        );
        assert_eq!(
            t(&[
                "mount.kmsfs",
                "/srv/c",
                "/mnt/x",
                "-o",
                "threads=2,poll_us=0"
            ]),
            [
                "kmsfs",
                "mount",
                "--threads",
                "2",
                "--poll-us",
                "0",
                "/srv/c",
                "/mnt/x"
            ]
        );
        // acl and noacl go through -o, where the last of them counts (`kmsfs mount`).
        assert_eq!(
            t(&["mount.kmsfs", "/srv/c", "/mnt/x", "-o", "noacl,noatime,acl"]),
            [
                "kmsfs",
                "mount",
                "-o",
                "noacl,noatime,acl",
                "/srv/c",
                "/mnt/x"
            ]
        );
    }

    #[test]
    fn a_remount_keeps_the_flags_mount_passes_with_the_change() {
        use rustix::mount::MountFlags as F;
        let o = |s: &str| -> Vec<String> { s.split(',').map(String::from).collect() };
        let default = F::NOSUID | F::NODEV | F::RELATIME;
        // What mount(8) passed for `mount -o remount,ro M` on a default kmsfs mount.
        assert_eq!(
            remount_flags(
                default,
                &o("ro,nosuid,nodev,relatime,remount,user_id=0,group_id=0")
            ),
            F::RDONLY | default
        );
        // `mount -o remount,ro SOURCE M` passes only the change: the rest is kept.
        assert_eq!(
            remount_flags(default, &o("remount,ro")),
            F::RDONLY | default
        );
        assert_eq!(
            remount_flags(F::RDONLY | default, &o("remount,rw,noatime")),
            F::NOSUID | F::NODEV | F::NOATIME
        );
        use rustix::fs::StatVfsMountFlags as S;
        assert_eq!(
            current_flags(S::RDONLY | S::NOSUID | S::NODEV | S::RELATIME),
            F::RDONLY | default
        );
    }

    #[test]
    fn fake_and_bad_invocations() {
        let a: Vec<OsString> = ["mount.kmsfs", "a", "b", "-f"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(translate(&a).unwrap().is_none());
        for bad in [
            vec!["mount.kmsfs", "only-one"],
            vec!["mount.kmsfs", "a", "b", "-o", "passfile"],
            vec!["mount.kmsfs", "a", "b", "--weird"],
        ] {
            let a: Vec<OsString> = bad.iter().map(OsString::from).collect();
            assert_eq!(translate(&a).unwrap_err().code, code::USAGE, "{bad:?}");
        }
        assert!(is_helper(&OsString::from("/sbin/mount.fuse.kmsfs")));
        assert!(!is_helper(&OsString::from("kmsfs")));
    }
}

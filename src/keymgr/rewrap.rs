//! Rewrap: re-wraps existing files' DEKs under the newest version of their key (or of the key their
//! path's rule names) by rewriting only the 104-byte header. Contents are not touched. Idempotent
//! (a file already at its target is skipped) and resumable (each file's header is rewritten in one
//! write and synced: an interruption leaves every file with its old or its new header, both valid).
//! The same walk counts files per (key, version) for `trim`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{KeyError, KeyManager, lifecycle};

use crate::format::header::{FileHeader, HEADER_LEN};
use crate::format::{DirId, KeyId};
use crate::names::{DIRID_FILE, EntryKind, LONG_NAME_SUFFIX, Names};

/// One regular file of the cipher tree.
#[derive(Debug, Clone)]
pub struct CipherFile {
    pub cipher_path: PathBuf,
    /// The plaintext path inside the mount, when every name on the way decrypts.
    pub plain_path: Option<String>,
}

/// Calls `f` for every regular file in the cipher tree under `root`.
pub fn walk(root: &Path, names: &Names, f: &mut dyn FnMut(CipherFile)) -> std::io::Result<()> {
    walk_dir(root, names, Some(String::new()), true, f)
}

fn read_dir_id(dir: &Path) -> Option<DirId> {
    let b = std::fs::read(dir.join(DIRID_FILE)).ok()?;
    Some(DirId(b.try_into().ok()?))
}

fn walk_dir(
    dir: &Path,
    names: &Names,
    plain: Option<String>,
    at_root: bool,
    f: &mut dyn FnMut(CipherFile),
) -> std::io::Result<()> {
    let dir_id = if names.plaintext() {
        Some(DirId([0; 16]))
    } else {
        read_dir_id(dir)
    };
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let raw = e.file_name();
        let plain_name = match names.classify(raw.as_bytes(), at_root) {
            EntryKind::Internal => continue,
            EntryKind::Long => {
                let mut side = raw.clone();
                side.push(LONG_NAME_SUFFIX);
                std::fs::read(dir.join(side)).ok().and_then(|enc| {
                    dir_id.and_then(|d| names.decrypt_long(&d, raw.as_bytes(), &enc).ok())
                })
            }
            EntryKind::Name(n) => dir_id.and_then(|d| names.decrypt(&d, n).ok()),
        };
        let child_plain = match (&plain, plain_name) {
            (Some(p), Some(n)) => Some(format!("{p}/{}", String::from_utf8_lossy(&n))),
            _ => None,
        };
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk_dir(&e.path(), names, child_plain, false, f)?;
        } else if ft.is_file() {
            f(CipherFile {
                cipher_path: e.path(),
                plain_path: child_plain,
            });
        }
    }
    Ok(())
}

fn read_header(f: &File) -> Option<FileHeader> {
    let mut b = [0u8; HEADER_LEN];
    f.read_exact_at(&mut b, 0).ok()?;
    FileHeader::decode(&b).ok()
}

/// Files per key and version, and files whose header does not parse.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionCounts {
    pub files: BTreeMap<KeyId, BTreeMap<u32, u64>>,
    pub damaged: u64,
}

impl VersionCounts {
    pub fn get(&self, key: &KeyId, version: u32) -> u64 {
        self.files
            .get(key)
            .and_then(|m| m.get(&version))
            .copied()
            .unwrap_or(0)
    }
}

pub fn count_versions(root: &Path, names: &Names) -> std::io::Result<VersionCounts> {
    let mut c = VersionCounts::default();
    // A file with several hard links is one file (it was counted once per name).
    let mut linked = std::collections::HashSet::new();
    walk(
        root,
        names,
        &mut |cf| match File::open(&cf.cipher_path).ok().and_then(|f| {
            let md = f.metadata().ok()?;
            if md.nlink() > 1 && !linked.insert((md.dev(), md.ino())) {
                return Some(None);
            }
            read_header(&f).map(Some)
        }) {
            Some(None) => {}
            Some(Some(h)) => {
                *c.files
                    .entry(h.key_id)
                    .or_default()
                    .entry(h.key_version)
                    .or_default() += 1
            }
            None => c.damaged += 1,
        },
    )?;
    Ok(c)
}

/// Rewritten headers are made durable with one `syncfs` per this many files (and at the end);
/// an interrupted rewrap is simply run again.
const SYNC_EVERY: usize = 1000;

/// What a rewrap did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RewrapSummary {
    pub files: u64,
    pub rewrapped: u64,
    pub already_current: u64,
    /// Files whose key cannot be used (disabled, pending deletion, destroyed, retired version).
    pub skipped_unusable_key: u64,
    /// Files left as they were because the caller's key policy denied moving them
    /// (`kms:ReEncryptFrom` on the file's key, or `kms:ReEncryptTo` on the key it would move to).
    pub skipped_denied: u64,
    /// Files whose header does not parse or whose DEK fails authentication.
    pub damaged: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RewrapOptions {
    /// Only files currently under this key.
    pub key: Option<KeyId>,
    /// Move files to the key their path's rule names (else keep each file's key).
    pub follow_rules: bool,
}

/// Decides, for one file about to be rewrapped, whether the caller may use `action`
/// (`kms:ReEncryptFrom` on the file's key, `kms:ReEncryptTo` on the key it moves to) on `key`;
/// the third argument is the file's plaintext path when every name on the way decrypts.
/// `Err(reason)` leaves the file as it is (counted in `skipped_denied`).
pub type Authorize<'a> = dyn FnMut(&'static str, KeyId, Option<&str>) -> Result<(), String> + 'a;

/// Rewraps every file of the volume that is not at its target key version, with no policy
/// asked (the passphrase holder). `progress(done, total)` is called after each file.
pub fn rewrap(
    km: &KeyManager,
    root: &Path,
    names: &Names,
    opts: &RewrapOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<RewrapSummary> {
    rewrap_authorized(km, root, names, opts, &mut |_, _, _| Ok(()), progress)
}

/// Like [`rewrap`], asking `authorize` about each file before its header is rewritten: every
/// file needs `kms:ReEncryptFrom` on its current key, and a file that moves to another key
/// (`follow_rules`) also `kms:ReEncryptTo` on that key.
pub fn rewrap_authorized(
    km: &KeyManager,
    root: &Path,
    names: &Names,
    opts: &RewrapOptions,
    authorize: &mut Authorize<'_>,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<RewrapSummary> {
    let mut files = Vec::new();
    walk(root, names, &mut |cf| files.push(cf))?;
    let total = files.len() as u64;
    let mut s = RewrapSummary {
        files: total,
        ..Default::default()
    };
    let volume = km.volume_id();
    let sync = |s: &mut RewrapSummary| {
        if let Err(e) =
            File::open(root).and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from))
        {
            s.errors.push(format!("sync of {}: {e}", root.display()));
        }
    };
    for (i, cf) in files.iter().enumerate() {
        if i > 0 && i % SYNC_EVERY == 0 {
            sync(&mut s);
        }
        // Named by its path in the mount where it decrypts, else by its cipher path inside the
        // volume (not the backing directory's location, which a caller through the mount is
        // not shown elsewhere).
        let label = || match &cf.plain_path {
            Some(p) => p.clone(),
            None => format!(
                "cipher file {}",
                cf.cipher_path
                    .strip_prefix(root)
                    .unwrap_or(&cf.cipher_path)
                    .display()
            ),
        };
        match rewrap_one(km, &volume, cf, opts, authorize) {
            Ok(Outcome::Rewrapped) => s.rewrapped += 1,
            Ok(Outcome::Current) => s.already_current += 1,
            Ok(Outcome::NotSelected) => {}
            Err(RewrapErr::Denied(m)) => {
                s.skipped_denied += 1;
                s.errors.push(format!("{}: {m}", label()));
            }
            Err(RewrapErr::Key(e)) => {
                s.skipped_unusable_key += 1;
                s.errors.push(format!("{}: {e}", label()));
            }
            Err(RewrapErr::Damaged(m)) => {
                s.damaged += 1;
                s.errors.push(format!("{}: {m}", label()));
            }
            Err(RewrapErr::Io(e)) => s.errors.push(format!("{}: {e}", label())),
        }
        progress(i as u64 + 1, total);
    }
    sync(&mut s);
    Ok(s)
}

enum Outcome {
    Rewrapped,
    Current,
    NotSelected,
}

enum RewrapErr {
    Key(KeyError),
    Denied(String),
    Damaged(String),
    Io(std::io::Error),
}

fn rewrap_one(
    km: &KeyManager,
    volume: &crate::format::VolumeId,
    cf: &CipherFile,
    opts: &RewrapOptions,
    authorize: &mut Authorize<'_>,
) -> Result<Outcome, RewrapErr> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&cf.cipher_path)
        .map_err(RewrapErr::Io)?;
    let md = f.metadata().map_err(RewrapErr::Io)?;
    if !md.is_file() {
        return Ok(Outcome::NotSelected);
    }
    let h = read_header(&f).ok_or_else(|| RewrapErr::Damaged("header does not parse".into()))?;
    if opts.key.is_some_and(|k| k != h.key_id) {
        return Ok(Outcome::NotSelected);
    }
    let target_key = match (&cf.plain_path, opts.follow_rules) {
        (Some(p), true) => km.query(|s| lifecycle::key_for_path(s, p)),
        _ => h.key_id,
    };
    let (target_version, material) = km
        .query(|s| {
            let k = s.key(&target_key).ok_or(KeyError::UnknownKey(target_key))?;
            if k.state != super::KeyState::Enabled {
                return Err(KeyError::NotUsable(target_key, k.state));
            }
            let v = k.newest().ok_or(KeyError::NotUsable(target_key, k.state))?;
            let m = v
                .material
                .clone()
                .ok_or(KeyError::VersionUnavailable(target_key, v.version))?;
            Ok((v.version, m))
        })
        .map_err(RewrapErr::Key)?;
    if h.key_id == target_key && h.key_version == target_version {
        return Ok(Outcome::Current);
    }
    // As AWS ReEncrypt: the file's own key must allow taking its data key out, and the key it
    // moves to must allow taking it in (a rewrap within one key only needs the first).
    let path = cf.plain_path.as_deref();
    authorize("kms:ReEncryptFrom", h.key_id, path).map_err(RewrapErr::Denied)?;
    if target_key != h.key_id {
        authorize("kms:ReEncryptTo", target_key, path).map_err(RewrapErr::Denied)?;
    }
    let dek = km.unwrap_dek(&h).map_err(|e| match e {
        KeyError::UnwrapFailed(_) => RewrapErr::Damaged(e.to_string()),
        e => RewrapErr::Key(e),
    })?;
    let mut n = FileHeader {
        file_id: h.file_id,
        key_id: target_key,
        key_version: target_version,
        flags: h.flags,
        wrapped_dek: [0; crate::format::header::WRAP_LEN],
    };
    super::seal_dek(&mut n, volume, &material, &dek);
    // One 104-byte write inside the first sector: after a crash the header is the old or the new
    // one, both valid. Durability is batched (see SYNC_EVERY).
    if let Err(e) = crate::fault::write_all_at(&f, &n.encode(), 0) {
        // A failed write may have stored part of the new header: put the old one back.
        let _ = f.write_all_at(&h.encode(), 0);
        return Err(RewrapErr::Io(e));
    }
    keep_times(&f, &md);
    Ok(Outcome::Rewrapped)
}

/// Puts back the access and modification times a file had before its header was rewritten:
/// its content did not change, so backup tools and `make` must not see it as modified (the
/// change time moves, as for any change of metadata). Best effort: a failure leaves the file
/// valid with a new mtime. A write through the mount in the microseconds between the stat and
/// this call would have its mtime set back; with the writeback cache (the default) the kernel
/// keeps the right one and sends it again.
fn keep_times(f: &File, md: &std::fs::Metadata) {
    let times = md.accessed().and_then(|a| {
        md.modified()
            .map(|m| std::fs::FileTimes::new().set_accessed(a).set_modified(m))
    });
    if let Err(e) = times.and_then(|t| f.set_times(t)) {
        tracing::warn!("rewrap: could not keep a file's times: {e}");
    }
}

//! fsck: checks every object of an unmounted cipher directory against what the format
//! authenticates — the key store generations, each directory's id file, every name (and long-name
//! side file), every file header (and its data key), every content block, every symlink target,
//! every extended attribute (names, values, the pack; stored ACLs must be valid ACLs) — and
//! reports each problem with its cipher path (and plaintext path where the names on the way
//! decrypt). Repairs only what is safe to repair: a primary key store rewritten from an intact
//! backup generation, long-name side files whose entry is gone, a directory id file or its
//! xattr copy rewritten from the other; and adds the id copy to directories of older volumes.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use super::KeyManager;
use crate::content::FileCipher;
use crate::format::DirId;
use crate::format::acl::Acl;
use crate::format::block::BLOCK_OVERHEAD;
use crate::format::header::{FileHeader, HEADER_LEN};
use crate::format::offsets::Layout;
use crate::format::xattr_pack::{BackingNamespace, XattrPack};
use crate::fsutil::with_owner_bits_io;
use crate::names::long_links::{LinkId, LinkStore, STORE_DIR};
use crate::names::{DIRID_FILE, EntryKind, LONG_NAME_SUFFIX, Names, XATTR_PACK, XATTR_PREFIX};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Path in the cipher directory.
    pub cipher_path: String,
    /// Path inside the mount, when every name on the way decrypts.
    pub plain_path: Option<String>,
    /// `key-store`, `dir-id`, `dir-id-copy`, `name`, `side-file`, `header`, `data-key`, `size`,
    /// `block`, `symlink`, `xattr`, `acl-marker`, `interrupted-write` (as README lists them).
    pub kind: &'static str,
    pub detail: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes (overlayfs whiteouts among them): their names are
    /// checked, and their attributes when fsck runs as root (else `xattrs_unchecked` counts
    /// them); they hold nothing else.
    pub special: u64,
    pub blocks: u64,
    /// Extended attributes checked (each in a pack counted).
    pub xattrs: u64,
    /// Symlinks and special files whose attributes were not checked: they live in the backing
    /// `trusted.` namespace, which only root sees.
    pub xattrs_unchecked: u64,
    /// Files whose key is disabled, pending deletion or destroyed: not decrypted.
    pub skipped: u64,
    /// Directories without the copy of their id in the `user.kmsfs-dirid` xattr (made by a
    /// kmsfs before the copy existed): not a problem, the mount reads `kmsfs.dirid` instead,
    /// one more disk read per directory in a cold walk. `--repair` adds the copy.
    pub dir_id_copies_missing: u64,
    /// Of those, the ones `--repair` gave a copy.
    pub dir_id_copies_added: u64,
    /// Directories whose `kmsfs.dirid` is empty while the copy of the id in their xattr is
    /// whole: what a power loss leaves of a directory made in the seconds before it (the file
    /// is written without an fsync where the copy exists, the copy is journaled with the
    /// directory's inode). Not a problem: the mount reads the copy, and the names are checked
    /// with it. `--repair` writes the file from the copy.
    pub dir_id_files_empty: u64,
    /// Of those, the ones `--repair` wrote.
    pub dir_id_files_written: u64,
    /// Blocks of sparse files whose count of holes reaches back over written blocks (a daemon
    /// killed, or the power lost, between a write into a run of holes and the next fsync or
    /// close, before the count shrank: see `vfs::open_file::FileState::recount`). Not a
    /// problem (the file reads the same), but a written block there zeroed offline would pass
    /// for a hole. `--repair` shrinks them (after an fdatasync).
    pub hole_counts_too_large: u64,
    /// Of those, the ones `--repair` shrank.
    pub hole_counts_shrunk: u64,
    /// The volume is marked as holding POSIX ACLs (`.kmsfs/acls`, which makes a plain mount
    /// turn them on) but holds none: every attribute was seen (as root) and read. Not a
    /// problem; `--repair` removes the mark.
    pub acl_marker_unused: bool,
    /// `--repair` removed that mark.
    pub acl_marker_removed: bool,
    /// `.kmsfs/mounted-rw` is there: the last read-write mount did not end cleanly (or is
    /// running elsewhere), and the next mount checks every file for interrupted writes. Not a
    /// problem.
    pub unclean_session: bool,
    /// `--repair` removed it: no file carries an interrupted-write marker any more.
    pub unclean_session_ended: bool,
    pub problems: Vec<Problem>,
}

impl Report {
    /// Problems left after repair.
    pub fn unrepaired(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }
}

struct Ctx<'a> {
    progress: &'a mut dyn FnMut(u64, u64),
    total: u64,
    km: &'a KeyManager,
    names: &'a Names,
    layout: Layout,
    root: &'a Path,
    repair: bool,
    /// Repair acts on interrupted-write markers without a tag (kmsfs before 2026-12-06).
    trust_untagged_markers: bool,
    report: Report,
    /// Whether this process sees the backing `trusted.` namespace (root).
    sees_trusted: bool,
    /// Some node holds a POSIX ACL.
    acls_seen: bool,
    /// With repair: files that still carry an interrupted-write marker after their check.
    markers_left: u64,
    /// The side files of long symlink targets (`.kmsfs/links/`), and the ids symlinks name.
    links: LinkStore,
    long_links: std::collections::HashSet<LinkId>,
    /// Reused buffers for attribute names and values.
    xattr_list: Vec<u8>,
    xattr_value: Vec<u8>,
}

impl Ctx<'_> {
    fn problem(&mut self, at: &Path, plain: &Option<String>, kind: &'static str, detail: String) {
        self.report.problems.push(Problem {
            cipher_path: at
                .strip_prefix(self.root)
                .unwrap_or(at)
                .display()
                .to_string(),
            plain_path: plain.clone(),
            kind,
            detail,
            repaired: false,
        });
    }
}

/// What fsck repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Nothing: it only reports.
    No,
    /// What is safe (`--repair`).
    Safe,
    /// That, and files whose interrupted-write marker has no tag (`--trust-untagged-markers`).
    TrustingUntaggedMarkers,
}

/// Checks the tree under `root`. `used_backup`: why the primary key store did not open, if the
/// unlock fell back to the backup generation (repaired by rewriting the primary).
pub fn fsck(
    km: &KeyManager,
    root: &Path,
    names: &Names,
    block_size: u32,
    used_backup: Option<&str>,
    repair: Repair,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<Report> {
    let trust_untagged_markers = repair == Repair::TrustingUntaggedMarkers;
    let repair = repair != Repair::No;
    let total = count_files(root);
    let mut c = Ctx {
        progress,
        total,
        km,
        names,
        layout: Layout::new(block_size),
        root,
        repair,
        trust_untagged_markers,
        report: Report::default(),
        sees_trusted: rustix::process::geteuid().is_root(),
        acls_seen: false,
        markers_left: 0,
        links: LinkStore::new(root),
        long_links: Default::default(),
        xattr_list: vec![0; 65536],
        xattr_value: vec![0; 65536 + 64],
    };
    if let Some(why) = used_backup {
        // Why a repair was not made is part of the report (it was swallowed: found by a review).
        let not_repaired = match repair.then(|| km.rewrite_key_store()) {
            Some(Err(e)) => format!("; not rewritten: {e}"),
            _ => String::new(),
        };
        c.report.problems.push(Problem {
            cipher_path: ".kmsfs/keystore".into(),
            plain_path: None,
            kind: "key-store",
            detail: format!("primary generation unusable ({why}); the backup opened{not_repaired}"),
            repaired: repair && not_repaired.is_empty(),
        });
    }
    xattrs(&mut c, root, &Some(String::new()), BackingNamespace::User);
    dir(&mut c, root, Some(String::new()), true)?;
    orphan_link_targets(&mut c)?;
    let paths = super::VolumePaths::new(root);
    if c.acls_seen && !paths.acl_marker().exists() {
        // ACLs stored before the marker existed (a kmsfs of 2026-12-05 between the two).
        let repaired = repair && paths.record_acls().is_ok();
        c.report.problems.push(Problem {
            cipher_path: ".kmsfs/acls".into(),
            plain_path: None,
            kind: "acl-marker",
            detail: "the volume holds POSIX ACLs but does not record it: a mount without --acl \
                     would not enforce them"
                .into(),
            repaired,
        });
    }
    // The mark outlives the last ACL (removing one does not look for others). It can go when
    // no ACL is stored, which fsck can tell only if it saw every attribute: as root (symlinks
    // and special files keep theirs in `trusted.`), with no attribute left unreadable.
    if !c.acls_seen
        && paths.acl_marker().exists()
        && c.report.xattrs_unchecked == 0
        && !c.report.problems.iter().any(|p| p.kind == "xattr")
    {
        c.report.acl_marker_unused = true;
        c.report.acl_marker_removed = repair && paths.forget_acls().is_ok();
    }
    // The flag makes the next mount walk the volume for marked files; after a repair that
    // left none (every file's marker recovered or removed) the walk would find nothing.
    if paths.session_flag().exists() {
        c.report.unclean_session = true;
        c.report.unclean_session_ended =
            repair && c.markers_left == 0 && paths.end_session().is_ok();
    }
    Ok(c.report)
}

/// The id of directory `d`: `kmsfs.dirid`, checked against its copy in an xattr (what the mount
/// reads first). A damaged file with a good copy is reported and, with repair, written again
/// from the copy (names are checked with the copy); a copy that is not 16 bytes long is reported
/// and, with repair, replaced by the file's id; a file and a copy of 16 bytes each that differ
/// are decided by evidence ([`dir_id_conflict`]); a missing copy (an older volume) is counted
/// and, with repair, added.
fn dir_id(c: &mut Ctx<'_>, d: &Path, plain: &Option<String>, at_root: bool) -> Option<DirId> {
    let file = d.join(DIRID_FILE);
    let copy = crate::fsutil::read_dirid_copy(d);
    let copy_id = copy.as_deref().and_then(|b| <[u8; 16]>::try_from(b).ok());
    let problem = match std::fs::read(&file) {
        Ok(b) if b.len() == 16 => {
            let id: [u8; 16] = b.try_into().ok()?;
            if copy.is_none() && dirid_copy_absent(d) {
                c.report.dir_id_copies_missing += 1;
                if c.repair
                    && let Ok(f) = File::open(d)
                    && crate::fsutil::write_dirid_copy(f, &id).is_ok()
                {
                    c.report.dir_id_copies_added += 1;
                }
            } else if let Some(copy_id) = copy_id
                && copy_id != id
            {
                return Some(dir_id_conflict(
                    c,
                    d,
                    plain,
                    at_root,
                    DirId(id),
                    DirId(copy_id),
                ));
            } else if copy.is_some() && copy_id.is_none() {
                // The mount, too, reads the file when the copy is not 16 bytes long.
                let repaired = c.repair
                    && crate::fsutil::write_dirid_copy(std::fs::File::open(d).ok()?, &id).is_ok();
                c.problem(
                    d,
                    plain,
                    "dir-id-copy",
                    format!(
                        "the copy in {} is not 16 bytes long (the mount reads {DIRID_FILE})",
                        crate::fsutil::DIRID_XATTR
                    ),
                );
                if let Some(p) = c.report.problems.last_mut() {
                    p.repaired = repaired;
                }
            }
            return Some(DirId(id));
        }
        // A power loss after the mkdir (see `dir_id_files_empty`).
        Ok(b) if b.is_empty() && copy_id.is_some() => {
            let id = copy_id?;
            c.report.dir_id_files_empty += 1;
            if c.repair && crate::fsutil::atomic_write(&file, &id, 0o400, None).is_ok() {
                c.report.dir_id_files_written += 1;
            }
            return Some(DirId(id));
        }
        Ok(b) => format!("{} bytes, not 16", b.len()),
        Err(e) => format!("unreadable ({e})"),
    };
    match copy_id {
        Some(id) => {
            let repaired = c.repair && crate::fsutil::atomic_write(&file, &id, 0o400, None).is_ok();
            c.problem(
                &file,
                plain,
                "dir-id",
                format!(
                    "{problem}; the mount reads the copy in {}",
                    crate::fsutil::DIRID_XATTR
                ),
            );
            if let Some(p) = c.report.problems.last_mut() {
                p.repaired = repaired;
            }
            Some(DirId(id))
        }
        // Nothing in it but kmsfs's own files: a mkdir cut short by a crash (the id is written
        // after the directory is made). No name was ever bound to the lost id, so a new one
        // loses nothing.
        None if holds_only_internal(c, d) => {
            let id = DirId::generate();
            // The copy may be refused where the backing store keeps no user xattrs (the file
            // alone is the id there, as designed).
            let repaired = c.repair
                && crate::fsutil::atomic_write(&file, &id.0, 0o400, None).is_ok()
                && File::open(d)
                    .and_then(|f| crate::fsutil::write_dirid_copy(f, &id.0))
                    .or_else(|e| match e.raw_os_error() {
                        Some(libc::ENOTSUP) => Ok(()),
                        _ => Err(e),
                    })
                    .is_ok();
            c.problem(
                &file,
                plain,
                "dir-id",
                format!(
                    "{problem}; the directory is empty (a mkdir cut short): --repair gives it a new id"
                ),
            );
            if let Some(p) = c.report.problems.last_mut() {
                p.repaired = repaired;
            }
            repaired.then_some(id)
        }
        None => {
            c.problem(
                &file,
                plain,
                "dir-id",
                format!("{problem}: no name in this directory can be read"),
            );
            None
        }
    }
}

/// `kmsfs.dirid` (`file`) and its copy (`copy`) are both 16 bytes long and differ: one of them
/// is damaged (or replaced). Each is tried on the directory's entry names, and the id under which
/// names decrypt (and none under the other) is kept: with repair the other is written from it.
/// When neither or both decrypt names (an empty directory, or a mix), nothing is changed and
/// the copy, which the mount uses, is returned. The mount, too, turns to the file when a name
/// does not decrypt under the copy but does under the file (`Vfs::dir_id_by_file`).
fn dir_id_conflict(
    c: &mut Ctx<'_>,
    d: &Path,
    plain: &Option<String>,
    at_root: bool,
    file: DirId,
    copy: DirId,
) -> DirId {
    let by_file = names_decrypting(c, d, at_root, &file);
    let by_copy = names_decrypting(c, d, at_root, &copy);
    let xattr = crate::fsutil::DIRID_XATTR;
    if by_file > 0 && by_copy == 0 {
        let repaired = c.repair
            && File::open(d)
                .and_then(|f| crate::fsutil::write_dirid_copy(f, &file.0))
                .is_ok();
        c.problem(
            d,
            plain,
            "dir-id-copy",
            format!(
                "the copy in {xattr} differs from {DIRID_FILE}, and the names decrypt with the \
                 file's id ({by_file}): the copy is damaged (--repair writes the file's id into it)"
            ),
        );
        if let Some(p) = c.report.problems.last_mut() {
            p.repaired = repaired;
        }
        file
    } else if by_copy > 0 && by_file == 0 {
        let repaired = c.repair
            && crate::fsutil::atomic_write(&d.join(DIRID_FILE), &copy.0, 0o400, None).is_ok();
        c.problem(
            &d.join(DIRID_FILE),
            plain,
            "dir-id",
            format!(
                "differs from its copy in {xattr}, and the names decrypt with the copy's id \
                 ({by_copy}), which the mount reads: the file is damaged or replaced (--repair \
                 writes it from the copy)"
            ),
        );
        if let Some(p) = c.report.problems.last_mut() {
            p.repaired = repaired;
        }
        copy
    } else {
        c.problem(
            d,
            plain,
            "dir-id-copy",
            format!(
                "the copy in {xattr} differs from {DIRID_FILE}; names decrypting with the file's \
                 id: {by_file}, with the copy's: {by_copy}, so which one is right cannot be told \
                 (nothing changed; the mount reads the copy)"
            ),
        );
        copy
    }
}

/// How many entries of directory `d` have a name that decrypts under `id` (long names through
/// their side files).
fn names_decrypting(c: &Ctx<'_>, d: &Path, at_root: bool, id: &DirId) -> usize {
    let Ok(rd) = std::fs::read_dir(d) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            let raw = e.file_name();
            match c.names.classify(raw.as_bytes(), at_root) {
                EntryKind::Internal => false,
                EntryKind::Long => {
                    let mut side = raw.clone();
                    side.push(LONG_NAME_SUFFIX);
                    std::fs::read(d.join(side))
                        .is_ok_and(|enc| c.names.decrypt_long(id, raw.as_bytes(), &enc).is_ok())
                }
                EntryKind::Name(n) => c.names.decrypt(id, n).is_ok(),
            }
        })
        .count()
}

/// Whether directory `d` holds no entry but kmsfs's own (its id file, long-name side files).
fn holds_only_internal(c: &Ctx<'_>, d: &Path) -> bool {
    std::fs::read_dir(d).is_ok_and(|rd| {
        rd.into_iter().all(|e| {
            e.is_ok_and(|e| {
                matches!(
                    c.names.classify(e.file_name().as_bytes(), false),
                    EntryKind::Internal
                )
            })
        })
    })
}

/// Whether directory `d` has no id copy although its file system stores user xattrs (ENODATA,
/// not ENOTSUP: a backing file system without xattrs keeps only `kmsfs.dirid`, as designed).
fn dirid_copy_absent(d: &Path) -> bool {
    matches!(
        rustix::fs::getxattr(d, crate::fsutil::DIRID_XATTR, &mut [0u8; 0]),
        Err(rustix::io::Errno::NODATA)
    )
}

fn dir(c: &mut Ctx<'_>, d: &Path, plain: Option<String>, at_root: bool) -> std::io::Result<()> {
    c.report.dirs += 1;
    let dir_id = if c.names.plaintext() {
        Some(DirId([0; 16]))
    } else {
        dir_id(c, d, &plain, at_root)
    };
    let mut entries: Vec<std::fs::DirEntry> =
        with_owner_bits_io(d, libc::S_IRUSR | libc::S_IXUSR, || {
            std::fs::read_dir(d)?.collect::<Result<_, _>>()
        })?;
    entries.sort_by_key(|e| e.file_name());
    let present: std::collections::HashSet<Vec<u8>> = entries
        .iter()
        .map(|e| e.file_name().as_bytes().to_vec())
        .collect();
    for e in entries {
        let raw = e.file_name();
        let bytes = raw.as_bytes();
        let path = e.path();
        // A side file whose entry is gone (a crash between the two) is harmless and removable.
        if let Some(main) = bytes.strip_suffix(LONG_NAME_SUFFIX.as_bytes())
            && matches!(c.names.classify(main, at_root), EntryKind::Long)
        {
            if !present.contains(main) {
                let removed = c.repair.then(|| std::fs::remove_file(&path));
                let detail = match &removed {
                    // The backing directory is append-only or immutable (`chattr +a`/`+i`
                    // through the mount): nothing to restore, the flag is in the way.
                    Some(Err(e)) if e.raw_os_error() == Some(libc::EPERM) => {
                        "orphan long-name side file; not removed: its directory is append-only \
                         or immutable (clear the flag through the mount with chattr -a or -i, \
                         then run kmsfs fsck --repair again)"
                    }
                    _ => "orphan long-name side file",
                };
                let repaired = matches!(removed, Some(Ok(())));
                c.problem(&path, &plain, "side-file", detail.into());
                if let Some(p) = c.report.problems.last_mut() {
                    p.repaired = repaired;
                }
            }
            continue;
        }
        let mut reported = false;
        let name = match c.names.classify(bytes, at_root) {
            EntryKind::Internal => continue,
            EntryKind::Long => {
                let mut side = raw.clone();
                side.push(LONG_NAME_SUFFIX);
                match std::fs::read(d.join(&side)) {
                    // A copy of a long entry (and its side file) under another hash would list
                    // as a second entry of the same name.
                    Ok(enc) if !Names::long_entry_matches(bytes, &enc) => {
                        reported = true;
                        c.problem(
                            &path,
                            &plain,
                            "name",
                            "long entry whose hash is not that of the name in its side file \
                             (copied or renamed outside kmsfs)"
                                .into(),
                        );
                        None
                    }
                    Ok(enc) => dir_id.and_then(|id| c.names.decrypt_long(&id, bytes, &enc).ok()),
                    Err(_) => {
                        reported = true;
                        c.problem(
                            &path,
                            &plain,
                            "side-file",
                            "long name without its .name side file: the name is lost".into(),
                        );
                        None
                    }
                }
            }
            EntryKind::Name(n) => dir_id.and_then(|id| c.names.decrypt(&id, n).ok()),
        };
        if name.is_none() && dir_id.is_some() && !reported {
            c.problem(
                &path,
                &plain,
                "name",
                "name does not decrypt in this directory (modified, or moved here from another)"
                    .into(),
            );
        }
        let child = match (&plain, &name) {
            (Some(p), Some(n)) => Some(format!("{p}/{}", String::from_utf8_lossy(n))),
            _ => None,
        };
        let ft = e.file_type()?;
        xattrs(
            c,
            &path,
            &child,
            BackingNamespace::of(ft.is_dir() || ft.is_file()),
        );
        if ft.is_dir() {
            dir(c, &path, child, false)?;
        } else if ft.is_file() {
            file(c, &path, &child)?;
            if c.repair && crate::content::pending::is_marked_at(&path) {
                c.markers_left += 1;
            }
        } else if ft.is_symlink() {
            c.report.symlinks += 1;
            let t = std::fs::read_link(&path)?;
            let t = t.as_os_str().as_bytes();
            let long = LinkId::from_target(t);
            if let Some(id) = long {
                c.long_links.insert(id);
            }
            if c.links.read_target(c.names, t).is_err() {
                let detail = match long {
                    Some(id) => format!(
                        "its target's side file .kmsfs/{STORE_DIR}/{} is missing or does not decrypt",
                        id.file_name()
                    ),
                    None => "target does not decrypt".into(),
                };
                c.problem(&path, &child, "symlink", detail);
            }
        } else {
            c.report.special += 1;
        }
    }
    Ok(())
}

/// Side files of long symlink targets that no symlink names (a crash between writing one and
/// making its symlink, or between removing the symlink's last name and it): removable, once the
/// whole tree was walked (it was: a walk that fails ends fsck before this).
fn orphan_link_targets(c: &mut Ctx<'_>) -> std::io::Result<()> {
    for name in c.links.file_names()? {
        let id = LinkId::from_file_name(name.as_bytes());
        if id.is_some_and(|id| c.long_links.contains(&id)) {
            continue;
        }
        let path = c.links.dir().join(&name);
        let repaired = c.repair && std::fs::remove_file(&path).is_ok();
        let detail = if id.is_some() {
            "orphan side file of a long symlink target (no symlink names it)"
        } else {
            "a file in the store of long symlink targets that is not one of its side files"
        };
        c.problem(&path, &None, "side-file", detail.into());
        if let Some(p) = c.report.problems.last_mut() {
            p.repaired = repaired;
        }
    }
    Ok(())
}

/// How an attribute's stored name (`vfs::xattr_ops`: the part after `user.`, or a zero byte
/// and the full name) is shown.
fn shown(stored: &[u8]) -> String {
    String::from_utf8_lossy(&crate::format::xattr_pack::full_name(stored)).into_owned()
}

/// Whether a stored name is one of the two ACLs.
fn is_acl(stored: &[u8]) -> bool {
    stored == crate::format::acl::ACCESS_STORED || stored == crate::format::acl::DEFAULT_STORED
}

/// Notes an attribute (stored name, plaintext value): counted, and an ACL must be a valid one.
fn attribute(c: &mut Ctx<'_>, path: &Path, plain: &Option<String>, name: &[u8], value: &[u8]) {
    c.report.xattrs += 1;
    if !is_acl(name) {
        return;
    }
    c.acls_seen = true;
    if Acl::decode(value).is_none() {
        let detail = format!("{} is not a valid ACL", shown(name));
        c.problem(path, plain, "xattr", detail);
    }
}

/// Checks a node's extended attributes: the pack authenticates and parses, every attribute
/// stored on its own has a name and value that authenticate, and each stored ACL is a valid one.
/// `ns`: the backing namespace they are kept in (`trusted.`, which only root sees, is counted
/// as unchecked otherwise). What the format cannot tell: a value is bound to its name, not to
/// its file, so an authentic pack or value copied from another file passes.
fn xattrs(c: &mut Ctx<'_>, path: &Path, plain: &Option<String>, ns: BackingNamespace) {
    if ns == BackingNamespace::Trusted && !c.sees_trusted {
        c.report.xattrs_unchecked += 1;
        return;
    }
    let mut list = std::mem::take(&mut c.xattr_list);
    let mut value = std::mem::take(&mut c.xattr_value);
    match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => {
            for raw in list[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
                xattr(c, path, plain, ns, raw, &mut value);
            }
        }
        Err(rustix::io::Errno::OPNOTSUPP) => {}
        Err(e) => c.problem(
            path,
            plain,
            "xattr",
            format!("attributes cannot be listed: {e}"),
        ),
    }
    c.xattr_list = list;
    c.xattr_value = value;
}

/// Checks backing attribute `raw` (in namespace `ns`) if it is one of kmsfs's encrypted ones.
fn xattr(
    c: &mut Ctx<'_>,
    path: &Path,
    plain: &Option<String>,
    ns: BackingNamespace,
    raw: &[u8],
    value: &mut [u8],
) {
    // The name as encryption sees it (always the `user.` form).
    let Some(logical) = ns.logical(raw) else {
        return;
    };
    if !logical.starts_with(XATTR_PREFIX.as_bytes()) {
        return; // kmsfs-internal (directory id copy, interrupted-write marker) or not ours
    }
    let Ok(logical) = String::from_utf8(logical.into_owned()) else {
        c.problem(
            path,
            plain,
            "xattr",
            "an attribute name is not ASCII (modified)".into(),
        );
        return;
    };
    let get = |value: &mut [u8]| rustix::fs::lgetxattr(path, raw, value).map_err(Into::into);
    let got = if ns == BackingNamespace::Trusted {
        get(&mut value[..])
    } else {
        with_owner_bits_io(path, libc::S_IRUSR, || get(&mut value[..]))
    };
    let v = match got {
        Ok(len) => &value[..len],
        Err(e) => {
            c.problem(
                path,
                plain,
                "xattr",
                format!("an attribute cannot be read: {e}"),
            );
            return;
        }
    };
    if logical == XATTR_PACK {
        let Ok(p) = c.names.decrypt_xattr_pack(v) else {
            let detail = "the pack of small attributes fails authentication".into();
            return c.problem(path, plain, "xattr", detail);
        };
        let Ok(pack) = XattrPack::decode(&p) else {
            let detail = "the pack of small attributes does not parse".into();
            return c.problem(path, plain, "xattr", detail);
        };
        for name in pack.names() {
            attribute(c, path, plain, name, pack.get(name).unwrap_or_default());
        }
        return;
    }
    let Some(name) = c.names.decrypt_xattr_name(&logical) else {
        let detail = "an attribute name does not decrypt (modified)".into();
        return c.problem(path, plain, "xattr", detail);
    };
    match c.names.decrypt_xattr_value(&logical, v) {
        Ok(plain_value) => attribute(c, path, plain, &name, &plain_value),
        Err(_) => {
            let detail = format!("the value of {} fails authentication", shown(&name));
            c.problem(path, plain, "xattr", detail);
        }
    }
}

/// Regular files under `dir` that fsck checks (for the progress display): not the control
/// directory, directory ids or long-name side files.
fn count_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let n = e.file_name();
                    let n = n.as_bytes();
                    if n == crate::names::CONTROL_DIR.as_bytes()
                        || n == DIRID_FILE.as_bytes()
                        || n.ends_with(LONG_NAME_SUFFIX.as_bytes())
                    {
                        return 0;
                    }
                    match e.file_type() {
                        Ok(t) if t.is_dir() => count_files(&e.path()),
                        Ok(t) if t.is_file() => 1,
                        _ => 0,
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn file(c: &mut Ctx<'_>, path: &Path, plain: &Option<String>) -> std::io::Result<()> {
    c.report.files += 1;
    (c.progress)(c.report.files, c.total.max(c.report.files));
    // Owner bits lent where the user running fsck (the volume's owner, not root) lacks them, as
    // the mount does: the owner's `chmod 200` file is checked too (fsck stopped at the first one
    // with "Permission denied"); so are its attributes and marker, and `chmod 300` directories.
    let f = with_owner_bits_io(path, libc::S_IRUSR, || File::open(path))?;
    let len = f.metadata()?.len();
    let mut hb = [0u8; HEADER_LEN];
    let header = match f.read_exact_at(&mut hb, 0) {
        Ok(()) => FileHeader::decode(&hb).map_err(|e| e.to_string()),
        Err(_) if len == 0 => Err("0 bytes, no header: what a power loss leaves of a file \
             created just before it (none of it had reached the disk), or a file emptied \
             offline; remove it"
            .to_string()),
        Err(_) => Err(format!(
            "{len} bytes: shorter than the {HEADER_LEN}-byte header"
        )),
    };
    let h = match header {
        Ok(h) => h,
        Err(e) => {
            c.problem(path, plain, "header", e);
            return Ok(());
        }
    };
    if let Err(e) = c.km.check_usable(&h) {
        // A key or version the key store never had: one flipped byte of the header's key id or
        // version (counted as "not decrypted" until 2026-12-07, found by a review), or a file
        // copied from another volume.
        if !c.km.has_version(&h) {
            c.problem(
                path,
                plain,
                "header",
                format!(
                    "names version {} of key {}, which this volume does not have (a damaged \
                     header, or a file from another volume)",
                    h.key_version, h.key_id
                ),
            );
            return Ok(());
        }
        // Not damage: the key is disabled, retired or destroyed.
        c.report.skipped += 1;
        tracing::info!("{}: not checked: {e}", path.display());
        return Ok(());
    }
    let dek = match c.km.unwrap_dek(&h) {
        Ok(k) => k,
        Err(e) => {
            c.problem(path, plain, "data-key", e.to_string());
            return Ok(());
        }
    };
    let cipher = FileCipher::for_header(&dek, &h, c.layout.block_size as u32);
    use crate::content::pending::{self, Marker};
    let marker = match pending::read_marker(&f, &cipher) {
        Ok(m) => m,
        Err(e) => {
            c.problem(
                path,
                plain,
                "interrupted-write",
                format!("cannot read the marker: {e}"),
            );
            return Ok(());
        }
    };
    if marker != Marker::Absent {
        let rw = || {
            with_owner_bits_io(path, libc::S_IRUSR | libc::S_IWUSR, || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
            })
        };
        let (detail, repaired) = match marker {
            // A size-changing write was interrupted: the next open (or --repair) ends the file
            // at the last block that was completely written.
            Marker::Authentic(_) => (
                "a size-changing write was interrupted (recovered at the next open)",
                c.repair
                    && rw()
                        .and_then(|f| pending::recover(&f, &cipher, c.layout, false))
                        .is_ok(),
            ),
            // Made by a kmsfs before markers were tagged, or by someone who cut the file:
            // only the user can tell, and says so with --trust-untagged-markers.
            Marker::Legacy(_) => (
                "an interrupted-write marker without a tag: a size-changing write of a kmsfs \
                 before 2026-12-06 interrupted, or a file cut back by someone who added the \
                 marker; --repair --trust-untagged-markers ends the file at its last whole block",
                c.repair
                    && c.trust_untagged_markers
                    && rw()
                        .and_then(|f| pending::recover(&f, &cipher, c.layout, true))
                        .is_ok(),
            ),
            // Tampered: repair removes it; the file is then checked as it is.
            _ => (
                "the interrupted-write marker does not authenticate (tampered): ignored; \
                 --repair removes it",
                c.repair && rw().map(|f| pending::clear(&f)).is_ok(),
            ),
        };
        c.problem(path, plain, "interrupted-write", detail.into());
        if let Some(p) = c.report.problems.last_mut() {
            p.repaired = repaired;
        }
        // A torn file is not checked further until recovered; beside a forged marker the file
        // is checked as it is.
        if !repaired && marker != Marker::Forged {
            return Ok(());
        }
    }
    let len = f.metadata()?.len();
    let Some(size) = c.layout.plain_size(len) else {
        c.problem(
            path,
            plain,
            "size",
            format!("cipher size {len} is not a valid block layout (truncated or extended)"),
        );
        return Ok(());
    };
    let fin = c.layout.final_block(size);
    let cbs = c.layout.cipher_block_size();
    // 256 blocks at a time.
    let mut buf = vec![0u8; (cbs * 256) as usize];
    let mut out = vec![0u8; c.layout.block_size as usize];
    // In a sparse file: the first of the blocks just passed with all-zero nonces, which are
    // holes only if the next written block counts back to them.
    let mut run: Option<u64> = None;
    // Written blocks whose count reaches over written blocks, and the holes right before each.
    let mut too_large: Vec<(u64, u64)> = Vec::new();
    let mut b = 0;
    while b <= fin {
        // Blocks the backing file holds no data for read as zeros: holes, skipped unread
        // (`SEEK_DATA`, where the backing file system has it; an 8 TiB sparse file took hours
        // when every block was read). The final block is always read.
        if cipher.is_sparse() && b < fin {
            let next =
                match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(c.layout.cipher_offset(b))) {
                    Ok(d) => c.layout.block_at_cipher(d).min(fin),
                    Err(rustix::io::Errno::NXIO) => fin,
                    Err(_) => b,
                };
            if next > b {
                run.get_or_insert(b);
                c.report.blocks += next - b;
                b = next;
                continue;
            }
        }
        let n = (fin - b + 1).min(256);
        let start = c.layout.cipher_offset(b);
        let end = (start + n * cbs).min(len);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        for (k, blk) in chunk.chunks(cbs as usize).enumerate() {
            let i = b + k as u64;
            if cipher.is_sparse() && i < fin && crate::content::is_hole(blk) {
                run.get_or_insert(i);
                continue;
            }
            let pn = blk.len().saturating_sub(BLOCK_OVERHEAD);
            if blk.len() < BLOCK_OVERHEAD
                || cipher
                    .decrypt_block(i, i == fin, blk, &mut out[..pn])
                    .is_err()
            {
                let detail = format!("block {i} fails authentication (modified, moved or swapped)");
                c.problem(path, plain, "block", detail);
                return Ok(());
            }
            // (Only a sparse file's nonces hold counts: others are random.)
            let holes = run.map_or(0, |s| i - s);
            if cipher.is_sparse() && u64::from(crate::content::block_gap(blk)) > holes {
                too_large.push((i, holes));
            }
            if let Some(s) = run.take()
                && i.checked_sub(u64::from(crate::content::block_gap(blk)))
                    .is_none_or(|start| start > s)
            {
                let detail = format!(
                    "block {s} is zeroed (no count of holes in the next written block reaches it)"
                );
                c.problem(path, plain, "block", detail);
                return Ok(());
            }
        }
        c.report.blocks += n;
        b += n;
    }
    c.report.hole_counts_too_large += too_large.len() as u64;
    if c.repair && !too_large.is_empty() {
        match shrink_counts(path, &cipher, c.layout, size, &too_large) {
            Ok(()) => c.report.hole_counts_shrunk += too_large.len() as u64,
            Err(e) => tracing::warn!("{}: counts of holes left larger: {e}", path.display()),
        }
    }
    Ok(())
}

/// Re-encrypts each written block `i` of `too_large` with its count of holes set to the holes
/// right before it, once the file is synced (the blocks the larger counts reach over must be
/// durable first). The cipher file keeps its modification time (that of the plaintext file).
fn shrink_counts(
    path: &Path,
    cipher: &FileCipher,
    l: crate::format::offsets::Layout,
    size: u64,
    too_large: &[(u64, u64)],
) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let st = rustix::fs::fstat(&f)?;
    f.sync_data()?;
    let fin = l.final_block(size);
    for &(i, holes) in too_large {
        let n = l.block_len(i, size).unwrap_or(0) as usize;
        let mut blk = vec![0u8; n + BLOCK_OVERHEAD];
        f.read_exact_at(&mut blk, l.cipher_offset(i))?;
        let mut plain = vec![0u8; n];
        cipher
            .decrypt_block(i, i == fin, &blk, &mut plain)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let gap = u32::try_from(holes).map_err(std::io::Error::other)?;
        let mut out = Vec::new();
        cipher.encrypt_blocks(i, &plain, fin, gap, &mut out);
        f.write_all_at(&out, l.cipher_offset(i))?;
    }
    let at = rustix::fs::Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    };
    crate::fsutil::set_mtime(&f, at)?;
    f.sync_data()
}

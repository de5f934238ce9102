//! `kmsfs fsck CIPHERDIR [--repair] [--json]`: checks an unmounted volume (see
//! `keymgr::fsck`). Exit 0 when nothing is wrong (or everything found was repaired), 23 when
//! problems remain, 19 when the volume is mounted; the unlock errors keep their codes (12 wrong
//! passphrase, 13 key store and backup both damaged, 11 unknown feature).

use std::path::PathBuf;

use clap::Args;

use super::UnlockArgs;
use super::error::CliError;
use super::exit_code as code;
use crate::keymgr::{KeyManager, VolumePaths, fsck};
use crate::names::Names;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// The volume's cipher directory (unmounted).
    cipherdir: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
    /// Repair what is safe to repair: rewrite a damaged primary key store from its backup,
    /// remove orphan long-name side files, recover interrupted writes, remove interrupted-write
    /// markers that do not authenticate, shrink counts of holes a killed daemon left too
    /// large, rewrite a directory id
    /// file or its xattr copy from the other, add the copy to directories of older volumes,
    /// write a missing POSIX ACL mark (.kmsfs/acls) and remove one when no ACL is left.
    #[arg(long)]
    repair: bool,
    /// With --repair: also recover files whose interrupted-write marker has no tag. kmsfs
    /// before 2026-12-06 wrote such markers; anyone with write access to the cipher directory
    /// can add one to a file they cut back. Use it only after a crash of an older kmsfs.
    #[arg(long, requires = "repair")]
    trust_untagged_markers: bool,
    /// Print the report as JSON (counts, problems, repairs).
    #[arg(long)]
    json: bool,
}

pub fn fsck(a: &FsckArgs) -> Result<(), CliError> {
    if let Some(cipherdir) = super::mount_cmd::volume_mounted_at(&a.cipherdir) {
        return Err(CliError::new(
            code::ALREADY_MOUNTED,
            format!(
                "{} is the mount point of the kmsfs volume {}: fsck checks the cipher directory \
                 of an unmounted volume",
                a.cipherdir.display(),
                cipherdir.display()
            ),
        )
        .hint(format!(
            "kmsfs unmount {}, then kmsfs fsck {}",
            a.cipherdir.display(),
            cipherdir.display()
        )));
    }
    let root = std::fs::canonicalize(&a.cipherdir)
        .map_err(|_| crate::keymgr::VolumeError::NotAVolume(a.cipherdir.clone()))?;
    crate::keymgr::probe(&root)?;
    super::mount_cmd::refuse_if_mounted(&root).map_err(|e| e.hint("unmount it first"))?;
    // The passphrase before the lock (a prompt must not hold the volume).
    let secret = a.unlock.source().get()?;
    let _lock = super::mount_cmd::lock_volume(&VolumePaths::new(&root))?;
    let u = crate::keymgr::unlock(&root, &secret)?;
    drop(secret);
    let used_backup = u.used_backup.clone();
    let block_size = u.config.block_size;
    let names = Names::new(
        &u.store.volume_secret,
        u.config
            .has_feature(crate::format::config::FEATURE_PLAINTEXT_NAMES),
    );
    let km = KeyManager::new(u);
    let mut progress = super::progress::Progress::new("fsck");
    let r = fsck::fsck(
        &km,
        &root,
        &names,
        block_size,
        used_backup.as_deref(),
        match (a.repair, a.trust_untagged_markers) {
            (false, _) => fsck::Repair::No,
            (true, false) => fsck::Repair::Safe,
            (true, true) => fsck::Repair::TrustingUntaggedMarkers,
        },
        &mut |done, total| progress.update(done, total),
    )
    .map_err(|e| CliError::new(code::ERROR, format!("fsck of {}: {e}", root.display())))?;
    progress.finish();
    if a.json {
        super::key_cmd::print_json(&r);
    } else {
        for p in &r.problems {
            println!(
                "{}{}: {}: {}{}",
                p.cipher_path,
                p.plain_path
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                p.kind,
                p.detail,
                if p.repaired { " [repaired]" } else { "" }
            );
        }
        println!(
            "{} directories, {} files ({} blocks), {} symlinks, {} special files, {} extended attributes checked; {} not decrypted (key not usable); {} problem(s), {} repaired",
            r.dirs,
            r.files,
            r.blocks,
            r.symlinks,
            r.special,
            r.xattrs,
            r.skipped,
            r.problems.len(),
            r.problems.len() - r.unrepaired()
        );
        if r.xattrs_unchecked > 0 {
            println!(
                "{} symlinks or special files: attributes not checked (they are in the backing \
                 trusted. namespace, which only root sees)",
                r.xattrs_unchecked
            );
        }
        if r.acl_marker_removed {
            println!(
                "removed the POSIX ACL mark (.kmsfs/acls): the volume holds no ACL; a mount turns \
                 ACLs on again with --acl"
            );
        } else if r.acl_marker_unused {
            println!(
                "the volume is marked as holding POSIX ACLs (.kmsfs/acls), so mounts turn them \
                 on, but it holds none; --repair removes the mark"
            );
        }
        if r.unclean_session_ended {
            println!(
                "the last read-write mount did not end cleanly (.kmsfs/mounted-rw); no file \
                 carries an interrupted-write marker now, so the flag is removed"
            );
        } else if r.unclean_session {
            println!(
                "note: the last read-write mount did not end cleanly (.kmsfs/mounted-rw): the \
                 next mount first recovers the files that carry an interrupted-write marker{}",
                if a.repair {
                    " (some are left: see above)"
                } else {
                    "; kmsfs fsck --repair does it now"
                }
            );
        }
        if r.hole_counts_shrunk > 0 {
            println!(
                "shrank {} counts of holes that reached over written blocks (left by a daemon \
                 killed or a power loss before a close)",
                r.hole_counts_shrunk
            );
        }
        let left = r.hole_counts_too_large - r.hole_counts_shrunk;
        if left > 0 {
            println!(
                "note: {left} counts of holes in sparse files reach over written blocks (left by \
                 a daemon killed or a power loss before a close; not a problem, but zeroing \
                 those blocks offline would not be detected); kmsfs fsck --repair shrinks them"
            );
        }
        if r.dir_id_files_written > 0 {
            println!(
                "wrote kmsfs.dirid from its copy ({}) in {} directories (left empty by a power \
                 loss after their mkdir)",
                crate::fsutil::DIRID_XATTR,
                r.dir_id_files_written
            );
        }
        let left = r.dir_id_files_empty - r.dir_id_files_written;
        if left > 0 {
            println!(
                "note: {left} directories have an empty kmsfs.dirid and a whole copy of their id \
                 in {} (what a power loss after a mkdir leaves; not a problem: the mount reads the \
                 copy); kmsfs fsck --repair writes the file from it",
                crate::fsutil::DIRID_XATTR
            );
        }
        if r.dir_id_copies_added > 0 {
            println!(
                "added the copy of the directory id ({}) to {} directories made by an older kmsfs",
                crate::fsutil::DIRID_XATTR,
                r.dir_id_copies_added
            );
        }
        let left = r.dir_id_copies_missing - r.dir_id_copies_added;
        if left > 0 {
            println!(
                "note: {left} directories made by an older kmsfs have no copy of their id in {} \
                 (not a problem: a cold walk reads kmsfs.dirid instead, one more disk read each); \
                 kmsfs fsck --repair adds it",
                crate::fsutil::DIRID_XATTR
            );
        }
    }
    if r.unrepaired() > 0 {
        return Err(CliError::new(
            code::INTEGRITY,
            format!("{} problem(s) in {}", r.unrepaired(), root.display()),
        )
        .hint(
            if a.repair
                && r.problems
                    .iter()
                    .all(|p| p.repaired || p.kind == "side-file")
            {
                // Only orphan side files left: removing them failed (their directory is
                // append-only or immutable, as each problem says); no file needs a backup.
                "what is left could not be removed; see each problem for why"
            } else if a.repair {
                "what is left cannot be repaired safely; restore those files from a backup"
            } else {
                "kmsfs fsck --repair fixes what is safe to fix"
            },
        ));
    }
    Ok(())
}

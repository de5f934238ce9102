//! Creating, probing, unlocking and re-keying a volume's control directory `.kmsfs/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::seal::{Unsealed, make_slot, seal, slot_opens, unseal};
use super::store::{KeyStore, KmsKey, STORE_FORMAT};
use super::{Unlock, VolumeError, now_unix};
use crate::crypto::{KdfParams, Key256, Passphrase, ct_eq, hex, sha256};
use crate::format::VolumeId;
use crate::format::block::{DEFAULT_BLOCK_SIZE, valid_block_size};
use crate::format::config::{
    CONFIG_FORMAT, CONFIG_VERSION, FEATURE_ENCRYPTED_NAMES, FEATURE_LONG_NAMES,
    FEATURE_PLAINTEXT_NAMES, FEATURE_SPARSE_FILES, KdfInfo, VolumeConfig,
};
use crate::format::keystore::{Envelope, Slot, SlotKind};
use crate::fsutil::atomic_write;
use crate::names::{CONTROL_DIR, DIRID_FILE};

/// The name of the session flag in `.kmsfs/` (see [`VolumePaths::session_flag`]).
const SESSION_FLAG: &str = "mounted-rw";

/// Where a volume keeps its files.
#[derive(Debug, Clone)]
pub struct VolumePaths {
    pub root: PathBuf,
}

impl VolumePaths {
    pub fn new(root: &Path) -> Self {
        VolumePaths {
            root: root.to_path_buf(),
        }
    }
    pub fn control_dir(&self) -> PathBuf {
        self.root.join(CONTROL_DIR)
    }
    pub fn config(&self) -> PathBuf {
        self.control_dir().join("volume.json")
    }
    pub fn keystore(&self) -> PathBuf {
        self.control_dir().join("keystore")
    }
    pub fn keystore_backup(&self) -> PathBuf {
        self.control_dir().join("keystore.bak")
    }
    pub fn root_dirid(&self) -> PathBuf {
        self.root.join(DIRID_FILE)
    }
    /// Present once a POSIX ACL has been stored on the volume: a mount without `--acl` or
    /// `-o noacl` then turns ACLs on (an ACL that stops being enforced can widen access: the
    /// mode's group bits are the mask). Empty; not authenticated (whoever can remove it can
    /// remove the ACLs themselves).
    pub fn acl_marker(&self) -> PathBuf {
        self.control_dir().join("acls")
    }

    /// Present once a file of the volume has been made append-only (`chattr +a`, kept by kmsfs
    /// as the cipher file's `user.kmsfs-append` attribute: see `vfs::flags_ops`): until then a
    /// mount looks for that attribute nowhere. Empty; not authenticated (whoever can remove it
    /// can remove the attributes themselves).
    pub fn append_marker(&self) -> PathBuf {
        self.control_dir().join("append-only-files")
    }

    /// `.kmsfs/mounted-rw`: there while a read-write mount may leave interrupted-write markers
    /// on closed files (`vfs::marker_queue`); left by a session that did not end cleanly.
    pub fn session_flag(&self) -> PathBuf {
        self.control_dir().join(SESSION_FLAG)
    }

    /// Removes the session flag (fsck --repair, once no file carries a marker), durably.
    pub fn end_session(&self) -> io::Result<()> {
        match fs::remove_file(self.session_flag()) {
            Ok(()) => fs::File::open(self.control_dir())?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the ACL marker (fsck --repair, when the volume holds no ACL), durably.
    pub fn forget_acls(&self) -> io::Result<()> {
        match fs::remove_file(self.acl_marker()) {
            Ok(()) => fs::File::open(self.control_dir())?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes the ACL marker if it is not there, durably (the file and its directory synced).
    pub fn record_acls(&self) -> io::Result<()> {
        self.record(self.acl_marker())
    }

    /// Writes the append-only marker if it is not there, durably.
    pub fn record_append_only(&self) -> io::Result<()> {
        self.record(self.append_marker())
    }

    /// Makes the empty marker file `path` if it is not there, durably.
    fn record(&self, path: PathBuf) -> io::Result<()> {
        if path.exists() {
            return Ok(());
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?
            .sync_all()?;
        fs::File::open(self.control_dir())?.sync_all()
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub plaintext_names: bool,
    pub block_size: u32,
    /// Create a recovery-key slot and return the key.
    pub recovery_key: bool,
    /// New files may hold holes (feature `sparse-files`).
    pub sparse: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::DEFAULT,
            plaintext_names: false,
            block_size: DEFAULT_BLOCK_SIZE,
            recovery_key: true,
            sparse: true,
        }
    }
}

/// Creates a volume in `dir` (created if missing, refused if not empty). Returns the recovery
/// key when one was asked for; the caller shows it once.
pub fn init(
    dir: &Path,
    pass: &Passphrase,
    opts: &InitOptions,
) -> Result<Option<Key256>, VolumeError> {
    if pass.is_empty() {
        return Err(VolumeError::Invalid("the passphrase is empty".into()));
    }
    opts.kdf.validate()?;
    if !valid_block_size(opts.block_size) {
        return Err(VolumeError::Invalid(format!(
            "block size {} is not a power of two between 512 and 1048576",
            opts.block_size
        )));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
        return Err(VolumeError::NotEmpty(dir.to_path_buf()));
    }
    let paths = VolumePaths::new(dir);
    let cdir = paths.control_dir();
    fs::create_dir(&cdir).map_err(io_err(&cdir))?;
    set_mode(&cdir, 0o700)?;

    let volume_id = VolumeId::generate();
    let mut features = vec![FEATURE_LONG_NAMES.to_string()];
    features.push(
        if opts.plaintext_names {
            FEATURE_PLAINTEXT_NAMES
        } else {
            FEATURE_ENCRYPTED_NAMES
        }
        .to_string(),
    );
    if opts.sparse {
        features.push(FEATURE_SPARSE_FILES.to_string());
    }
    let config = VolumeConfig {
        format: CONFIG_FORMAT.into(),
        format_version: CONFIG_VERSION,
        volume_id,
        block_size: opts.block_size,
        kdf: KdfInfo {
            algorithm: "argon2id".into(),
            params: opts.kdf,
        },
        features,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        creator: format!("kmsfs {}", env!("CARGO_PKG_VERSION")),
    };
    let config_bytes = config.encode();
    let now = now_unix();
    let mut default_key = KmsKey::new("default key of the volume", now);
    default_key
        .tags
        .insert("kmsfs:role".into(), "default".into());
    let store = KeyStore {
        format: STORE_FORMAT,
        volume_id,
        config_digest: hex::encode(&sha256(&config_bytes)),
        volume_secret: Key256::generate(),
        default_key: default_key.id,
        keys: vec![default_key],
        aliases: Default::default(),
        rules: Vec::new(),
        owner_uid: rustix::process::geteuid().as_raw(),
        grants: Vec::new(),
        alerts: Default::default(),
        audit_retention_days: None,
        audit_max_bytes: None,
        audit_anchor: None,
    };
    let store_key = Key256::generate();
    let mut slots = vec![make_slot(
        &volume_id,
        &Unlock::Passphrase(pass.clone()),
        &opts.kdf,
        &store_key,
    )?];
    let recovery = opts.recovery_key.then(Key256::generate);
    if let Some(r) = &recovery {
        slots.push(make_slot(
            &volume_id,
            &Unlock::RecoveryKey(r.clone()),
            &opts.kdf,
            &store_key,
        )?);
    }
    if !opts.plaintext_names {
        let p = paths.root_dirid();
        let id = crate::format::DirId::generate();
        atomic_write(&p, id.as_bytes(), 0o400, None).map_err(io_err(&p))?;
        // The copy in an xattr is best effort (the file is authoritative).
        if let Some(root) = p.parent()
            && let Ok(d) = std::fs::File::open(root)
        {
            let _ = crate::fsutil::write_dirid_copy(&d, id.as_bytes());
        }
    }
    let ks = paths.keystore();
    atomic_write(&ks, &seal(&store, &store_key, &slots, 1), 0o600, None).map_err(io_err(&ks))?;
    // The config goes last: a crash before this point leaves a directory that is "not a volume".
    let cp = paths.config();
    atomic_write(&cp, &config_bytes, 0o644, None).map_err(io_err(&cp))?;
    Ok(recovery)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io_err(p))
}

/// Reads and checks the volume config without any secret. Refuses unknown versions and flags.
pub fn probe(dir: &Path) -> Result<(VolumeConfig, Vec<u8>), VolumeError> {
    let paths = VolumePaths::new(dir);
    let cp = paths.config();
    let bytes = match fs::read(&cp) {
        Ok(b) => b,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            return Err(VolumeError::NotAVolume(dir.to_path_buf()));
        }
        Err(e) => return Err(io_err(&cp)(e)),
    };
    let config = VolumeConfig::decode(&bytes)?;
    Ok((config, bytes))
}

/// An unlocked volume: its config and key store, and what is needed to write the store again.
pub struct Unlocked {
    pub paths: VolumePaths,
    pub config: VolumeConfig,
    pub store: KeyStore,
    store_key: Key256,
    slots: Vec<Slot>,
    generation: u64,
    /// The primary key store was damaged and the backup generation was opened.
    pub used_backup: Option<String>,
    /// The backup was opened because the primary refused the passphrase: the primary may be a
    /// newer generation sealed under another passphrase (an interrupted `passwd`, a restore), not
    /// a damaged one, so it must not be overwritten unless it is older (see
    /// [`Unlocked::check_primary_not_newer`]).
    primary_refused: bool,
}

impl std::fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unlocked")
            .field("root", &self.paths.root)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Unlocked {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn set_generation(&mut self, g: u64) {
        self.generation = g;
    }

    pub(super) fn store_key(&self) -> &Key256 {
        &self.store_key
    }

    pub(super) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The store sealed as the current generation (for a backup file).
    pub(super) fn sealed(&self) -> Vec<u8> {
        seal(&self.store, &self.store_key, &self.slots, self.generation)
    }

    /// Writes the store as the next generation into both the primary and the backup, so that
    /// destroyed key material does not survive in the previous generation (crypto-shredding).
    ///
    /// The backup is written first: should the primary's write fail or the process stop in
    /// between, the primary still holds the key pending deletion and due, which the caller's
    /// memory holds too (the change is reported failed), so the next maintenance tick shreds
    /// both copies again. Written the other way, the primary would be ahead of memory, and the
    /// next write from memory would put the destroyed material back.
    pub fn persist_shredding(&mut self) -> Result<(), VolumeError> {
        self.check_primary_not_newer()?;
        let next = self.generation + 1;
        let bytes = seal(&self.store, &self.store_key, &self.slots, next);
        let written = write_both(&self.paths, &bytes);
        self.settle(written, &bytes, next)
    }

    /// After a write of generation `next` (`bytes`) as the primary: on success, or on a failure
    /// after the primary was replaced (the directory's fsync), the new generation is the one in
    /// force, and `self` says so (its generation moved: `KeyManager::admin` then keeps the new
    /// store in memory). Only a failure before that leaves the old state in force.
    fn settle(
        &mut self,
        written: Result<(), VolumeError>,
        bytes: &[u8],
        next: u64,
    ) -> Result<(), VolumeError> {
        let in_place = written.is_ok() || fs::read(self.paths.keystore()).is_ok_and(|b| b == bytes);
        if in_place {
            self.generation = next;
            self.used_backup = None;
            self.primary_refused = false;
        }
        written
    }

    /// Refuses to write when the backup was opened because the primary refused the passphrase
    /// and the primary is a well-formed envelope of a newer generation: that is most likely the
    /// key store under a newer passphrase (an interrupted `passwd`), and overwriting it would
    /// lose its changes and the passphrase that opens it. (A primary whose slots were damaged
    /// looks the same without the secret; it is moved away by hand.)
    pub(super) fn check_primary_not_newer(&self) -> Result<(), VolumeError> {
        if !self.primary_refused {
            return Ok(());
        }
        let ks = self.paths.keystore();
        let Some(primary) = fs::read(&ks).ok().and_then(|b| Envelope::decode(&b).ok()) else {
            return Ok(());
        };
        let g = primary.generation;
        if g <= self.generation {
            return Ok(());
        }
        // Damaged, not re-sealed: every unlock slot of the primary is one of the slots that
        // opened here, changed in its salt or in its wrapped key but not both (bit rot, a
        // flipped byte). Writes copy slots unchanged and only `passwd` makes new ones (a new
        // salt and a new wrapped key), so this tells a damaged primary from a newer passphrase
        // without the secret (found by a review: one flipped bit in the primary, a generation
        // ahead of its backup after any change, refused every write and `fsck --repair`).
        if damaged_copy_of(&primary.slots, &self.slots) {
            return Ok(());
        }
        Err(VolumeError::Invalid(format!(
            "{} (generation {g}) does not open with this passphrase but is newer than the backup \
             generation it opened ({}), with other unlock slots: it is sealed under a newer \
             passphrase, so it is not overwritten; unlock with that passphrase or the recovery \
             key (or, if it is damaged, move it away and try again)",
            ks.display(),
            self.generation
        )))
    }

    /// Writes the store as the next generation; the current one becomes the backup (unless the
    /// current primary is the damaged one, which must not replace a good backup).
    pub fn persist(&mut self) -> Result<(), VolumeError> {
        self.check_primary_not_newer()?;
        let next = self.generation + 1;
        let bytes = seal(&self.store, &self.store_key, &self.slots, next);
        let ks = self.paths.keystore();
        let bak = self.paths.keystore_backup();
        let backup = if self.used_backup.is_some() {
            None
        } else {
            Some(bak.as_path())
        };
        let written = atomic_write(&ks, &bytes, 0o600, backup).map_err(io_err(&ks));
        self.settle(written, &bytes, next)
    }
}

/// Writes the same sealed generation as `keystore.bak`, then as `keystore`. Stopped in between,
/// the primary is still the previous generation, complete, and opens with what opened it before;
/// the backup is the new one (see [`passwd`] and [`Unlocked::persist_shredding`]).
pub(super) fn write_both(paths: &VolumePaths, bytes: &[u8]) -> Result<(), VolumeError> {
    for p in [paths.keystore_backup(), paths.keystore()] {
        atomic_write(&p, bytes, 0o600, None).map_err(io_err(&p))?;
    }
    Ok(())
}

/// Whether `theirs` (a key store copy's unlock slots) are `ours` as written, but for damage: as
/// many, each of the same kind as one of ours and equal to it in its salt or in its wrapped key
/// (a changed KDF parameter leaves both equal).
fn damaged_copy_of(theirs: &[Slot], ours: &[Slot]) -> bool {
    theirs.len() == ours.len()
        && theirs.iter().all(|t| {
            ours.iter()
                .any(|o| o.kind == t.kind && (o.salt == t.salt || o.wrapped == t.wrapped))
        })
}

/// The generation in the envelope header of the key store copy at `p`, read without any secret;
/// `None` if it is missing or not a well-formed envelope.
pub(super) fn envelope_generation(p: &Path) -> Option<u64> {
    let bytes = fs::read(p).ok()?;
    Envelope::decode(&bytes).ok().map(|e| e.generation)
}

/// Whether `bytes` are the config whose digest a key store holds (`config_digest`).
pub(super) fn config_matches(bytes: &[u8], digest: &str) -> bool {
    ct_eq(hex::encode(&sha256(bytes)).as_bytes(), digest.as_bytes())
}

/// Unlocks the volume in `dir`. Falls back to the backup generation if the primary key store is
/// damaged; `used_backup` then says why.
pub fn unlock(dir: &Path, how: &Unlock) -> Result<Unlocked, VolumeError> {
    let (config, config_bytes) = probe(dir)?;
    let paths = VolumePaths::new(dir);
    let try_open = |p: &Path| -> Result<Unsealed, VolumeError> {
        let bytes = fs::read(p)
            .map_err(|e| VolumeError::KeyStoreCorrupt(format!("{}: {e}", p.display())))?;
        // The volume id in the envelope's header is read before any slot is tried: a key store
        // of another volume (or one whose header was damaged) is named so, not taken for a
        // wrong passphrase or a changed config (found by a review).
        if let Ok(env) = crate::format::keystore::Envelope::decode(&bytes)
            && env.volume_id != config.volume_id
        {
            return Err(VolumeError::KeyStoreCorrupt(format!(
                "{}: it belongs to volume {}, and .kmsfs/volume.json to volume {}: a key store \
                 (or config) of another volume, or a damaged key-store header",
                p.display(),
                env.volume_id,
                config.volume_id
            )));
        }
        unseal(&bytes, how)
    };
    let (u, used_backup, primary_refused) = match try_open(&paths.keystore()) {
        Ok(u) => (u, None, false),
        Err(VolumeError::WrongPassphrase) => match try_open(&paths.keystore_backup()) {
            // The backup accepts what the primary refused: the primary's slots were damaged, or
            // the primary is sealed under another passphrase (an interrupted `passwd`).
            Ok(u) => (
                u,
                Some(
                    "the primary key store refused the passphrase but its backup accepted it"
                        .into(),
                ),
                true,
            ),
            Err(_) => return Err(VolumeError::WrongPassphrase),
        },
        Err(primary) => match try_open(&paths.keystore_backup()) {
            // Why the primary failed, without the "no backup generation opens" of the error's
            // own text: the backup did open.
            Ok(u) => {
                let why = match primary {
                    VolumeError::KeyStoreCorrupt(m) => m,
                    e => e.to_string(),
                };
                (u, Some(why), false)
            }
            Err(VolumeError::WrongPassphrase) => {
                return Err(VolumeError::KeyStoreCorrupt(format!(
                    "{primary}; the backup refused the passphrase"
                )));
            }
            Err(backup) => {
                return Err(VolumeError::KeyStoreCorrupt(format!(
                    "primary: {primary}; backup: {backup}"
                )));
            }
        },
    };
    // A config change interrupted after this key store copy was written: complete it.
    let config = if config_matches(&config_bytes, &u.store.config_digest) {
        config
    } else {
        match super::upgrade::staged_config(&paths, &u.store.config_digest) {
            Some((c, _)) => c,
            None => return Err(VolumeError::ConfigTampered),
        }
    };
    if u.store.volume_id != config.volume_id {
        return Err(VolumeError::ConfigTampered);
    }
    Ok(Unlocked {
        paths,
        config,
        store: u.store,
        store_key: u.store_key,
        slots: u.envelope.slots,
        generation: u.envelope.generation,
        used_backup,
        primary_refused,
    })
}

/// What [`passwd`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswdOutcome {
    /// The key store was sealed under a new store key: copies of the key store from before no
    /// longer open with anything that opens the new one (and the old passphrase opens only them).
    /// `false` when a recovery slot could not be re-wrapped (a passphrase unlock without a new
    /// recovery key): the store key was kept, and old copies still open with the old passphrase.
    pub new_store_key: bool,
}

/// Re-seals the key store under `new` after unlocking with `old` (passphrase or recovery key).
/// Files are not touched. Both the backup and the primary are rewritten, so the old passphrase
/// stops working at once. See [`change_passphrase`].
pub fn passwd(
    dir: &Path,
    old: &Unlock,
    new: &Passphrase,
    kdf: Option<KdfParams>,
) -> Result<PasswdOutcome, VolumeError> {
    change_passphrase(dir, old, new, kdf, None)
}

/// [`passwd`], optionally replacing the recovery key by `new_recovery`.
///
/// A new store key is generated whenever every unlock slot can be wrapped again: the volume has
/// no recovery slot, the unlock was with the recovery key (its slot is re-wrapped), or a new
/// recovery key is given. Otherwise (a passphrase unlock of a volume with a recovery key) the
/// store key is kept, since the recovery slot can only be re-wrapped with the recovery key.
/// Keeping it means that the old passphrase still opens copies of the key store made before,
/// and with the store key from them every later key store.
///
/// The new generation is written to `keystore.bak` first, then to `keystore`: stopped in
/// between, the old passphrase opens the primary (the generation before, complete) and the new
/// one the backup (the new generation, the same content).
pub fn change_passphrase(
    dir: &Path,
    old: &Unlock,
    new: &Passphrase,
    kdf: Option<KdfParams>,
    new_recovery: Option<&Key256>,
) -> Result<PasswdOutcome, VolumeError> {
    prepare_passwd(dir, old, new, kdf, new_recovery)?.commit()
}

/// A passphrase change unlocked and sealed, not yet written (so that a new recovery key can be
/// handed out between the unlock and the write).
pub struct PendingPasswd {
    paths: VolumePaths,
    sealed: Vec<u8>,
    outcome: PasswdOutcome,
}

impl PendingPasswd {
    /// Writes the new generation (backup first, see [`change_passphrase`]).
    pub fn commit(self) -> Result<PasswdOutcome, VolumeError> {
        write_both(&self.paths, &self.sealed)?;
        Ok(self.outcome)
    }
}

/// The first half of [`change_passphrase`]: unlocks and seals the new generation.
pub fn prepare_passwd(
    dir: &Path,
    old: &Unlock,
    new: &Passphrase,
    kdf: Option<KdfParams>,
    new_recovery: Option<&Key256>,
) -> Result<PendingPasswd, VolumeError> {
    if new.is_empty() {
        return Err(VolumeError::Invalid("the new passphrase is empty".into()));
    }
    let u = unlock(dir, old)?;
    u.check_primary_not_newer()?;
    let params = kdf.unwrap_or(u.config.kdf.params);
    let volume = u.store.volume_id;
    let new_store_key = new_recovery.is_some() || recovery_slots_rewrappable(&u, old);
    let store_key = if new_store_key {
        Key256::generate()
    } else {
        u.store_key.clone()
    };
    let mut slots = vec![make_slot(
        &volume,
        &Unlock::Passphrase(new.clone()),
        &params,
        &store_key,
    )?];
    match (new_recovery, old) {
        (Some(rk), _) => slots.push(make_slot(
            &volume,
            &Unlock::RecoveryKey(rk.clone()),
            &params,
            &store_key,
        )?),
        // Every recovery slot opens with this key (checked above): one slot for it.
        (None, Unlock::RecoveryKey(rk)) if new_store_key => {
            if u.slots.iter().any(|s| s.kind == SlotKind::RecoveryKey) {
                slots.push(make_slot(
                    &volume,
                    &Unlock::RecoveryKey(rk.clone()),
                    &params,
                    &store_key,
                )?);
            }
        }
        _ => slots.extend(
            u.slots
                .iter()
                .filter(|s| s.kind != SlotKind::Passphrase)
                .cloned(),
        ),
    }
    Ok(PendingPasswd {
        sealed: seal(&u.store, &store_key, &slots, u.generation + 1),
        paths: u.paths,
        outcome: PasswdOutcome { new_store_key },
    })
}

/// Whether every recovery slot of `u` can be wrapped again under a new store key: there is none,
/// or `old` is a recovery key that opens each of them.
fn recovery_slots_rewrappable(u: &Unlocked, old: &Unlock) -> bool {
    u.slots
        .iter()
        .filter(|s| s.kind == SlotKind::RecoveryKey)
        .all(|s| matches!(old, Unlock::RecoveryKey(_)) && slot_opens(&u.store.volume_id, s, old))
}

/// What `kmsfs info` shows: readable without the passphrase.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub path: PathBuf,
    pub format_version: u32,
    pub volume_id: VolumeId,
    pub block_size: u32,
    pub kdf_algorithm: String,
    pub kdf_memory_kib: u32,
    pub kdf_iterations: u32,
    pub kdf_parallelism: u32,
    pub features: Vec<String>,
    pub created: String,
    pub creator: String,
    pub key_count: u32,
    pub key_store_generation: u64,
    pub unlock_slots: Vec<String>,
    /// The volume holds POSIX ACLs (its marker is there): mounts turn `--acl` on.
    pub acls: bool,
    /// `.kmsfs/mounted-rw` is there: a read-write mount is running, or the last one did not
    /// end cleanly (`kmsfs info` tells the two apart by the mount table).
    pub unclean_session: bool,
}

impl VolumeInfo {
    pub fn read(dir: &Path) -> Result<VolumeInfo, VolumeError> {
        let (c, _) = probe(dir)?;
        let paths = VolumePaths::new(dir);
        let ks = paths.keystore();
        let bytes = fs::read(&ks).map_err(io_err(&ks))?;
        let env =
            Envelope::decode(&bytes).map_err(|e| VolumeError::KeyStoreCorrupt(e.to_string()))?;
        let slot = env.slots.iter().find(|s| s.kind == SlotKind::Passphrase);
        Ok(VolumeInfo {
            path: dir.to_path_buf(),
            format_version: c.format_version,
            volume_id: c.volume_id,
            block_size: c.block_size,
            kdf_algorithm: c.kdf.algorithm.clone(),
            kdf_memory_kib: slot.map_or(c.kdf.params.memory_kib, |s| s.memory_kib),
            kdf_iterations: slot.map_or(c.kdf.params.iterations, |s| s.iterations),
            kdf_parallelism: slot.map_or(c.kdf.params.parallelism, |s| s.parallelism),
            features: c.features,
            created: c.created,
            creator: c.creator,
            key_count: env.key_count,
            key_store_generation: env.generation,
            unlock_slots: env
                .slots
                .iter()
                .map(|s| match s.kind {
                    SlotKind::Passphrase => "passphrase".to_string(),
                    SlotKind::RecoveryKey => "recovery-key".to_string(),
                })
                .collect(),
            acls: paths.acl_marker().exists(),
            unclean_session: paths.session_flag().exists(),
        })
    }
}

/// Recovery keys are shown as 8 groups of 8 hex digits.
pub fn format_recovery_key(k: &Key256) -> String {
    let h = zeroize::Zeroizing::new(hex::encode(k.expose()));
    h.as_bytes()
        .chunks(8)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// Parses a recovery key, ignoring dashes and white space.
pub fn parse_recovery_key(s: &str) -> Option<Key256> {
    let clean = zeroize::Zeroizing::new(
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>(),
    );
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_into(&clean, out.as_mut())?;
    Some(Key256::from_bytes(*out))
}

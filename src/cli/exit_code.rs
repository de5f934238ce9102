//! Exit codes: a promised interface. Never renumber; retire numbers by leaving them here as
//! comments.

/// Success.
pub const OK: i32 = 0;
/// A failure without a more specific code (I/O error, bad argument value, …).
pub const ERROR: i32 = 1;
/// Command-line usage error (unknown flag, missing argument). Set by clap.
pub const USAGE: i32 = 2;
/// The cipher directory is not a kmsfs volume (or does not exist).
pub const NOT_A_VOLUME: i32 = 10;
/// The volume needs a newer kmsfs: unknown format version or feature flag.
pub const UNSUPPORTED_VOLUME: i32 = 11;
/// Wrong passphrase or recovery key.
pub const WRONG_PASSPHRASE: i32 = 12;
/// The key store (and its backup) or the volume config is damaged or was modified.
pub const CORRUPT: i32 = 13;
/// The mount point is missing, not a directory, or already a mount point.
pub const MOUNTPOINT: i32 = 14;
/// `init` on a non-empty directory.
pub const NOT_EMPTY: i32 = 15;
/// The passphrase could not be read: mismatch, empty, no terminal, `--extpass` failed.
pub const PASSPHRASE_INPUT: i32 = 16;
/// The kernel or fusermount3 refused the mount.
pub const MOUNT_FAILED: i32 = 17;
/// `unmount` of something that is not a mounted kmsfs.
pub const NOT_MOUNTED: i32 = 18;
/// The volume is already mounted by another kmsfs process.
pub const ALREADY_MOUNTED: i32 = 19;
/// A key-manager request was refused: invalid value or key state (bad alias, deletion window
/// outside 7-30 days, rotating a disabled key, malformed key material, version still in use).
pub const INVALID_REQUEST: i32 = 20;
/// No such key, alias, rule or grant.
pub const NOT_FOUND: i32 = 21;
/// A key policy or grant denies the request (also: `policy simulate` predicts a denial).
pub const ACCESS_DENIED: i32 = 22;
/// An integrity check failed (e.g. `audit verify` found a modified, removed or reordered entry).
pub const INTEGRITY: i32 = 23;

/// Every code with its meaning, for `--help` and the README.
pub const TABLE: &[(i32, &str)] = &[
    (OK, "success"),
    (ERROR, "other error"),
    (USAGE, "usage error"),
    (NOT_A_VOLUME, "not a kmsfs volume"),
    (
        UNSUPPORTED_VOLUME,
        "volume needs a newer kmsfs (format version or feature flag)",
    ),
    (WRONG_PASSPHRASE, "wrong passphrase or recovery key"),
    (CORRUPT, "key store or volume config damaged or modified"),
    (MOUNTPOINT, "mount point missing, not a directory, or busy"),
    (NOT_EMPTY, "init: directory not empty"),
    (PASSPHRASE_INPUT, "passphrase could not be read"),
    (MOUNT_FAILED, "mount refused by the kernel or fusermount3"),
    (NOT_MOUNTED, "unmount: not mounted"),
    (ALREADY_MOUNTED, "volume already mounted"),
    (
        INVALID_REQUEST,
        "key-manager request refused (invalid value or key state)",
    ),
    (NOT_FOUND, "no such key, alias, rule or grant"),
    (ACCESS_DENIED, "denied by key policy"),
    (INTEGRITY, "integrity check failed"),
];

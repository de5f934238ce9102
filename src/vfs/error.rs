//! The filesystem model's error type. Every variant maps to exactly one errno in
//! [`VfsError::errno`]; no caller picks an errno by hand.

use crate::keymgr::{KeyError, KeyState};
use crate::names::NameError;

#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// A backing-store system call failed; its errno is passed on.
    #[error("backing store: {0}")]
    Sys(#[from] rustix::io::Errno),
    #[error("backing store: {0}")]
    Io(#[from] std::io::Error),
    /// Authenticated data failed its check. Never answered with data.
    #[error("integrity failure: {0}")]
    Integrity(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Name(#[from] NameError),
    /// A key policy denied the request.
    #[error("denied by key policy: {0}")]
    Denied(String),
    /// A write to a read-only mount.
    #[error("read-only mount")]
    ReadOnly,
    /// The inode number is not (or no longer) known.
    #[error("stale inode {0}")]
    Stale(u64),
    /// The handle number is not known.
    #[error("bad file handle {0}")]
    BadHandle(u64),
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// A control-directory operation failed with this errno.
    #[error("control directory: {1}")]
    Control(i32, String),
}

impl VfsError {
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::Sys(e) => e.raw_os_error(),
            VfsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            VfsError::Integrity(_) => libc::EIO,
            // A disabled or pending-deletion key, or a version below the key's minimum
            // decryption version (retired, reversibly), is an access decision, not damage.
            VfsError::Key(
                KeyError::NotUsable(_, KeyState::Disabled | KeyState::PendingDeletion)
                | KeyError::VersionRetired(..),
            ) => libc::EACCES,
            // Destroyed material (crypto-shredding), unknown keys and failed unwraps: the data is
            // not recoverable through this volume.
            VfsError::Key(_) => libc::EIO,
            VfsError::Name(NameError::TooLong) => libc::ENAMETOOLONG,
            VfsError::Name(NameError::TargetTooLong) => libc::ENAMETOOLONG,
            VfsError::Name(NameError::Reserved) => libc::EPERM,
            // A stored name that does not authenticate is damage; callers that look a name up
            // never see this (they encrypt, not decrypt).
            VfsError::Name(NameError::Undecryptable) => libc::EIO,
            VfsError::ReadOnly => libc::EROFS,
            VfsError::Denied(_) => libc::EACCES,
            VfsError::Stale(_) => libc::ESTALE,
            VfsError::BadHandle(_) => libc::EBADF,
            VfsError::NotSupported(_) => libc::EOPNOTSUPP,
            VfsError::Invalid(_) => libc::EINVAL,
            VfsError::Control(errno, _) => *errno,
        }
    }

    /// Whether this error means stored data failed authentication (worth an error-level log).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            VfsError::Integrity(_) | VfsError::Key(KeyError::UnwrapFailed(_))
        )
    }
}

pub type Result<T, E = VfsError> = std::result::Result<T, E>;

//! format holds the byte layouts of everything kmsfs writes: the per-file header, the content
//! block, the encryption context, the key store envelope and the volume config. Pure: no I/O, no
//! keys. Every layout is documented byte by byte in docs/FORMAT.md.

pub mod acl;
pub mod block;
pub mod config;
pub mod context;
pub mod header;
pub mod ids;
pub mod keystore;
pub mod offsets;
pub mod xattr_pack;

pub use ids::{DirId, FileId, KeyId, VolumeId};

/// A structure read from disk did not parse. Names what and why; never contains secret bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{what}: too short ({got} bytes, need {need})")]
    TooShort {
        what: &'static str,
        got: usize,
        need: usize,
    },
    #[error("{what}: bad magic bytes")]
    BadMagic { what: &'static str },
    #[error("{what}: unsupported version {version}")]
    UnsupportedVersion { what: &'static str, version: u32 },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

//! kmsfs: a FUSE filesystem that encrypts a directory tree with per-file data keys wrapped by a
//! built-in, AWS-KMS-style key manager.
//!
//! Layers, top to bottom (dependencies point down only; see DESIGN.md §9):
//! `cli` → `fuse` → `vfs` → `control` → `keymgr` → `content` / `names` → `format` → `crypto`.

pub mod cli;
pub mod content;
pub mod control;
pub mod crypto;
pub(crate) mod fault;
pub mod format;
pub mod fsutil;
pub mod fuse;
pub mod keymgr;
pub mod names;
pub mod vfs;

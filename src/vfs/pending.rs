//! Crash safety of size-changing writes. Extending or shortening a file rewrites its final block
//! (the block flagged final in its AAD) together with others; a daemon killed in the middle (a
//! large `pwrite` can stop between pages on SIGKILL) or a power loss can leave the old final
//! block re-marked, a torn block, or blocks beyond a new final one — and since the size is
//! derived from the cipher length, the whole file would then fail to read.
//!
//! So before such a write the first block it rewrites is recorded in an extended attribute of
//! the cipher file (`user.kmsfs-pending`), and removed after the write. When a file with the
//! marker is opened, the blocks from there on are scanned: the file ends at the first block that
//! authenticates as final, or — at a torn or missing block — at the last block that
//! authenticates, re-encrypted as final. The result is a prefix of what was being written (as a
//! crash in the middle of an append leaves on most file systems); blocks before the recorded one
//! are never touched, so tampering elsewhere is still detected, not "repaired".

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::content::FileCipher;
use crate::format::block::BLOCK_OVERHEAD;
use crate::format::offsets::Layout;

const PENDING_XATTR: &str = "user.kmsfs-pending";

/// Records that blocks from `first` on are being rewritten so that the cipher file will be
/// `target` bytes long. Best effort: a backing file system without user xattrs gets no marker
/// (and no recovery).
pub fn mark(file: &File, first: u64, target: u64) {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&first.to_le_bytes());
    v[8..].copy_from_slice(&target.to_le_bytes());
    if let Err(e) = rustix::fs::fsetxattr(file, PENDING_XATTR, &v, rustix::fs::XattrFlags::empty())
        && e != rustix::io::Errno::NOTSUP
    {
        tracing::warn!("cannot record an interrupted-write marker: {e}");
    }
}

pub fn clear(file: &File) {
    let _ = rustix::fs::fremovexattr(file, PENDING_XATTR);
}

/// Whether `file` carries the marker of an interrupted size-changing write.
pub fn is_marked(file: &File) -> bool {
    let mut b = [0u8; 16];
    rustix::fs::fgetxattr(file, PENDING_XATTR, &mut b).is_ok()
}

/// Brings a file whose size-changing write was interrupted back to a readable state (see the
/// module doc); `file` must be open for writing. Returns the new cipher length when it changed
/// anything. A file without the marker is left alone.
pub fn recover(file: &File, cipher: &FileCipher, l: Layout) -> std::io::Result<Option<u64>> {
    let mut b = [0u8; 16];
    let (first, target) = match rustix::fs::fgetxattr(file, PENDING_XATTR, &mut b) {
        Ok(16) => (
            u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(b[8..].try_into().unwrap_or_default()),
        ),
        Ok(_) => {
            clear(file);
            return Ok(None);
        }
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata()?.len();
    let cbs = l.cipher_block_size() as usize;
    let mut buf = vec![0u8; cbs];
    let mut plain = vec![0u8; l.block_size as usize];
    // Every block of the write landed (only the cut of a shortened file may be missing).
    if len >= target && written(file, cipher, l, first, target)? {
        if len != target {
            file.set_len(target)?;
        }
        file.sync_data()?;
        clear(file);
        return Ok((len != target).then_some(target));
    }
    let mut i = first;
    let end = loop {
        let off = l.cipher_offset(i);
        let n = len.saturating_sub(off).min(cbs as u64) as usize;
        if n >= BLOCK_OVERHEAD {
            file.read_exact_at(&mut buf[..n], off)?;
            let p = &mut plain[..n - BLOCK_OVERHEAD];
            if n == cbs && cipher.decrypt_block(i, false, &buf[..n], p).is_ok() {
                i += 1;
                continue;
            }
            if cipher.decrypt_block(i, true, &buf[..n], p).is_ok() {
                // A complete final block: the write (or truncate) got this far.
                break None;
            }
        }
        // Block `i` is torn or missing: end the file with block i-1, marked final.
        break Some(i);
    };
    let new_len = match end {
        None => {
            let off = l.cipher_offset(i);
            off + len.saturating_sub(off).min(cbs as u64)
        }
        Some(0) => {
            let mut out = Vec::new();
            cipher.encrypt_blocks(0, &[], 0, &mut out);
            file.write_all_at(&out, l.cipher_offset(0))?;
            l.cipher_offset(0) + out.len() as u64
        }
        Some(k) => {
            let prev = k - 1;
            let off = l.cipher_offset(prev);
            file.read_exact_at(&mut buf, off)?;
            if cipher.decrypt_block(prev, false, &buf, &mut plain).is_err() {
                return Err(std::io::Error::other(format!(
                    "interrupted write: block {prev} before the torn one does not authenticate"
                )));
            }
            let mut out = Vec::new();
            cipher.encrypt_blocks(prev, &plain, prev, &mut out);
            file.write_all_at(&out, off)?;
            off + out.len() as u64
        }
    };
    if new_len != len {
        file.set_len(new_len)?;
    }
    file.sync_data()?;
    clear(file);
    tracing::warn!(
        "recovered an interrupted write: cipher length {len} -> {new_len} (blocks from {first} rescanned)"
    );
    Ok((new_len != len || end.is_some()).then_some(new_len))
}

/// Whether blocks `first..=final` of a file `target` cipher bytes long all authenticate, the
/// last one as final.
fn written(
    file: &File,
    cipher: &FileCipher,
    l: Layout,
    first: u64,
    target: u64,
) -> std::io::Result<bool> {
    let Some(size) = l.plain_size(target) else {
        return Ok(false);
    };
    let fin = l.final_block(size);
    let mut buf = vec![0u8; l.cipher_block_size() as usize];
    let mut plain = vec![0u8; l.block_size as usize];
    for i in first..=fin {
        let Some(n) = l.block_len(i, size) else {
            return Ok(false);
        };
        let c = &mut buf[..n as usize + BLOCK_OVERHEAD];
        file.read_exact_at(c, l.cipher_offset(i))?;
        if cipher
            .decrypt_block(i, i == fin, c, &mut plain[..n as usize])
            .is_err()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

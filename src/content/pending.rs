//! Crash safety of size-changing writes. Extending or shortening a file rewrites its final block
//! (the block flagged final in its AAD) together with others; a daemon killed in the middle (a
//! large `pwrite` can stop between pages on SIGKILL) or a power loss can leave the old final
//! block re-marked, a torn block, or blocks beyond a new final one — and since the size is
//! derived from the cipher length, the whole file would then fail to read.
//!
//! So before such a write the first block it rewrites is recorded in an extended attribute of
//! the cipher file (`user.kmsfs-pending`), and removed once what was written is on the disk
//! (at fsync, or after the close: `vfs::marker_queue`). In a sparse file the
//! marker also holds the number of holes right before that block, which the block itself counts
//! (see `vfs::open_file::holes`): a file cut back to end there needs it in its new final block.
//! The marker carries a tag under the file's DEK, so that no one without the key can make a cut
//! file pass for a torn write. When a file with an authentic marker is opened, the blocks from
//! there on are scanned: the file ends at the first block that authenticates as final (also
//! one shorter than what is stored for it: an old final block kept under a larger size), or — at
//! a torn or missing block — at the last block that authenticates, re-encrypted as final. The
//! result is a prefix of what was being written (as a crash in the middle of an append leaves
//! on most file systems); blocks before the recorded one are never touched, so tampering
//! elsewhere is still detected, not "repaired".
//!
//! A write inside one page is marked too: a kill cannot tear it, but after a power loss the
//! larger size can be there without the overwrite of a page already on disk (ext4 journals the
//! size within seconds and writes the page back later), or the overwrite without the size.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::FileCipher;
use crate::format::block::{BLOCK_OVERHEAD, BLOCK_TAG_LEN, MARKER_FIELDS_LEN};
use crate::format::offsets::Layout;

const PENDING_XATTR: &str = "user.kmsfs-pending";
/// first block (u64 LE) ‖ target cipher length (u64 LE) ‖ holes before the first block (u64 LE)
/// ‖ tag (16 bytes, [`FileCipher::marker_tag`] of the 24 bytes before it).
const MARKER_LEN: usize = MARKER_FIELDS_LEN + BLOCK_TAG_LEN;
/// Markers of kmsfs before 2026-12-06 carry no tag: 24 bytes, or 16 before sparse files (no
/// holes).
const LEGACY_LENS: [usize; 2] = [16, 24];

/// What an interrupted-write marker records (see [`mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub first: u64,
    pub target: u64,
    pub gap: u64,
}

/// A cipher file's interrupted-write marker, as [`read_marker`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Absent,
    /// Made with this file's key.
    Authentic(Fields),
    /// Of a kmsfs before 2026-12-06 (no tag): acted on only when asked to (`fsck --repair
    /// --trust-untagged-markers`), since anyone with write access to the cipher directory can
    /// make one.
    Legacy(Fields),
    /// A tag that does not authenticate, or a length no kmsfs writes: never acted on.
    Forged,
}

/// Changes to one cipher file's extended attributes, by inode number: the marker below and the
/// user xattrs set through the mount (`vfs::xattr_ops`, which keeps room for the marker) take
/// turns, so that checking for room and using it do not race.
static XATTR_LOCKS: [std::sync::Mutex<()>; 16] = [const { std::sync::Mutex::new(()) }; 16];

pub fn xattr_lock(ino: u64) -> std::sync::MutexGuard<'static, ()> {
    XATTR_LOCKS[(ino % XATTR_LOCKS.len() as u64) as usize]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The stand-in `marker_fits` tries (same size as the marker).
const STAND_IN: &str = "user.kmsfs-reserve";

/// Records that blocks from `first` on are being rewritten so that the cipher file will be
/// `target` bytes long (0: growing, no fixed target), with `gap` holes before block `first`;
/// `ino` is the file's inode number (for [`xattr_lock`]). The record is tagged with the file's
/// key (`cipher`). Whether it is recorded: `false` only when the file system refused it (the
/// caller tries again at its next write); a backing file system without user xattrs gets no
/// marker (and no recovery), which counts as recorded.
pub fn mark(file: &File, ino: u64, cipher: &FileCipher, first: u64, target: u64, gap: u32) -> bool {
    let mut fields = [0u8; MARKER_FIELDS_LEN];
    fields[..8].copy_from_slice(&first.to_le_bytes());
    fields[8..16].copy_from_slice(&target.to_le_bytes());
    fields[16..].copy_from_slice(&u64::from(gap).to_le_bytes());
    let mut v = [0u8; MARKER_LEN];
    v[..MARKER_FIELDS_LEN].copy_from_slice(&fields);
    v[MARKER_FIELDS_LEN..].copy_from_slice(&cipher.marker_tag(&fields));
    let _g = xattr_lock(ino);
    // Owner bits lent where the file's mode lacks them (a daemon that is not root, a file made
    // read-only while open): see `fsutil::with_owner_bits`.
    let set = || {
        crate::fsutil::with_owner_bits_fd(file, libc::S_IWUSR, || {
            rustix::fs::fsetxattr(file, PENDING_XATTR, &v, rustix::fs::XattrFlags::empty())
        })
    };
    let r = match set() {
        // A stand-in left by a crash in `marker_fits` holds the room: let it go.
        Err(rustix::io::Errno::NOSPC) if rustix::fs::fremovexattr(file, STAND_IN).is_ok() => set(),
        r => r,
    };
    match r {
        Ok(()) | Err(rustix::io::Errno::NOTSUP) => true,
        Err(e) => {
            tracing::warn!("cannot record an interrupted-write marker: {e}");
            false
        }
    }
}

/// Whether the marker can still be recorded on the cipher file at `path` (a `/proc/self/fd`
/// path): extended attributes set through the mount must not take the room it needs, or a
/// size-changing write would go unmarked. Tried with a stand-in of the same size, removed again.
/// `true` when the marker is there now (its room stays its own) and on file systems without user
/// xattrs (which get no marker anyway). Call with [`xattr_lock`] held.
pub fn marker_fits(path: &str) -> bool {
    const _: () = assert!(STAND_IN.len() == PENDING_XATTR.len());
    if rustix::fs::getxattr(path, PENDING_XATTR, &mut [0u8; 0][..]).is_ok() {
        return true;
    }
    match rustix::fs::setxattr(
        path,
        STAND_IN,
        &[0u8; MARKER_LEN],
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => {
            let _ = rustix::fs::removexattr(path, STAND_IN);
            true
        }
        Err(rustix::io::Errno::NOSPC | rustix::io::Errno::TOOBIG) => false,
        Err(_) => true,
    }
}

/// Removes `file`'s marker; whether it is gone (or was not there, or the backing file system
/// has no user xattrs). A file made read-only since it was written (`chmod 400` within the ~35 s
/// before its marker goes) is no reason to keep it: the owner's write bit is lent for the
/// removal (see `fsutil::with_owner_bits`); a marker left there would have the next mount
/// recover the file and a walk look for it.
pub fn clear(file: &File) -> bool {
    match crate::fsutil::with_owner_bits_fd(file, libc::S_IWUSR, || {
        rustix::fs::fremovexattr(file, PENDING_XATTR)
    }) {
        Ok(()) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => true,
        Err(e) => {
            tracing::warn!("cannot remove an interrupted-write marker: {e}");
            false
        }
    }
}

/// Reads `file`'s marker into `b`; the owner's read bit lent where the file's mode lacks it (a
/// daemon or fsck that is not root, a `chmod 200` file: see `fsutil::with_owner_bits`), else
/// the marker of such a file would go unseen.
fn get_marker(file: &File, b: &mut [u8]) -> rustix::io::Result<usize> {
    crate::fsutil::with_owner_bits_fd(file, libc::S_IRUSR, || {
        rustix::fs::fgetxattr(file, PENDING_XATTR, &mut *b)
    })
}

/// Whether `file` carries an interrupted-write marker (of any kind: see [`read_marker`]).
pub fn is_marked(file: &File) -> bool {
    let mut b = [0u8; MARKER_LEN];
    match get_marker(file, &mut b) {
        Ok(_) | Err(rustix::io::Errno::RANGE) => true,
        Err(_) => false,
    }
}

/// [`is_marked`] for the cipher file at `path` (a `/proc/self/fd` path of an `O_PATH`
/// descriptor).
pub fn is_marked_at(path: impl rustix::path::Arg + Copy) -> bool {
    let mut b = [0u8; MARKER_LEN];
    match crate::fsutil::with_owner_bits(path, libc::S_IRUSR, || {
        rustix::fs::getxattr(path, PENDING_XATTR, &mut b)
    }) {
        Ok(_) | Err(rustix::io::Errno::RANGE) => true,
        Err(_) => false,
    }
}

/// Reads and checks `file`'s interrupted-write marker against the file's key.
pub fn read_marker(file: &File, cipher: &FileCipher) -> std::io::Result<Marker> {
    let mut b = [0u8; MARKER_LEN];
    let n = match get_marker(file, &mut b) {
        Ok(n) => n,
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(Marker::Absent),
        // Longer than any marker.
        Err(rustix::io::Errno::RANGE) => return Ok(Marker::Forged),
        Err(e) => return Err(e.into()),
    };
    let field = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap_or_default());
    let fields = Fields {
        first: field(0..8),
        target: field(8..16),
        gap: if n >= MARKER_FIELDS_LEN {
            field(16..24)
        } else {
            0
        },
    };
    Ok(match n {
        MARKER_LEN => {
            let (f, tag) = b.split_at(MARKER_FIELDS_LEN);
            let f: &[u8; MARKER_FIELDS_LEN] = f.try_into().unwrap_or(&[0; MARKER_FIELDS_LEN]);
            if cipher.marker_authentic(f, tag) {
                Marker::Authentic(fields)
            } else {
                Marker::Forged
            }
        }
        // Markers of 16 bytes are older than sparse files: none is on a sparse file.
        16 if cipher.is_sparse() => Marker::Forged,
        n if LEGACY_LENS.contains(&n) => Marker::Legacy(fields),
        _ => Marker::Forged,
    })
}

/// Brings a file whose size-changing write was interrupted back to a readable state (see the
/// module doc); `file` must be open for writing. Acts on an authentic marker, and on a marker of
/// an older kmsfs only when `trust_legacy` (`fsck --repair --trust-untagged-markers`); any
/// other marker is left in place, logged, and the file left as it is (what it holds is still
/// checked block by block as it is read). Returns the new cipher length when it changed anything. A file without
/// the marker is left alone.
pub fn recover(
    file: &File,
    cipher: &FileCipher,
    l: Layout,
    trust_legacy: bool,
) -> std::io::Result<Option<u64>> {
    let Fields { first, target, gap } = match read_marker(file, cipher)? {
        Marker::Absent => return Ok(None),
        Marker::Authentic(f) => f,
        Marker::Legacy(f) if trust_legacy => f,
        Marker::Legacy(_) => {
            tracing::warn!(
                "an interrupted-write marker without a tag (kmsfs before 2026-12-06, or added by \
                 someone who cut the file) is not acted on; after a crash of an older kmsfs, \
                 `kmsfs fsck --repair --trust-untagged-markers` recovers the file"
            );
            return Ok(None);
        }
        Marker::Forged => {
            tracing::error!(
                "integrity failure: an interrupted-write marker does not authenticate: ignored"
            );
            return Ok(None);
        }
    };
    // Only a sparse file has holes (a count that does not fit is no marker kmsfs wrote).
    let gap = if cipher.is_sparse() {
        u32::try_from(gap).unwrap_or(0)
    } else {
        0
    };
    let len = file.metadata()?.len();
    let cbs = l.cipher_block_size() as usize;
    let mut buf = vec![0u8; cbs];
    let mut plain = vec![0u8; l.block_size as usize];
    // Every block of the write landed (only the cut of a shortened file may be missing). Target
    // 0: a series of appends, complete if the file as it is authenticates.
    let target = if target == 0 { len } else { target };
    if len >= target && written(file, cipher, l, first, target)? {
        if len != target {
            file.set_len(target)?;
        }
        file.sync_data()?;
        clear(file);
        return Ok((len != target).then_some(target));
    }
    let mut i = first;
    // The first of the blocks just passed that look like holes (a sparse file's all-zero
    // nonces): they are holes only if the next written block's count reaches back to them.
    let mut run: Option<u64> = None;
    // The length of the final block found (`end` None).
    let mut final_len = 0;
    let end = loop {
        let off = l.cipher_offset(i);
        let n = len.saturating_sub(off).min(cbs as u64) as usize;
        if n >= BLOCK_OVERHEAD {
            file.read_exact_at(&mut buf[..n], off)?;
            if cipher.is_sparse() && n == cbs && super::is_hole(&buf[..n]) {
                run.get_or_insert(i);
                i = skip_unallocated(file, l, i + 1, len);
                continue;
            }
            let p = &mut plain[..n - BLOCK_OVERHEAD];
            let full = n == cbs && cipher.decrypt_block(i, false, &buf[..n], p).is_ok();
            let last = if full {
                None
            } else if cipher.decrypt_block(i, true, &buf[..n], p).is_ok() {
                Some(n)
            } else {
                shorter_final(cipher, i, &buf[..n], &mut plain)
            };
            if full || last.is_some() {
                let m = last.unwrap_or(n);
                if let Some(s) = run.take()
                    && !counts_back_to(i, &buf[..m], s)
                {
                    // Zeroed blocks, not holes: the file ends before them.
                    break Some(s);
                }
                if full {
                    i += 1;
                    continue;
                }
                // A complete final block: the write (or truncate) got this far, or had not
                // reached the disk in place of the old final block.
                final_len = m as u64;
                break None;
            }
        }
        // Block `i` is torn or missing: the file ends before it (or before the would-be holes
        // just before it), with an empty final block there (every block before it is full,
        // and a full block is never final).
        break Some(run.unwrap_or(i));
    };
    let new_len = match end {
        None => l.cipher_offset(i) + final_len,
        Some(k) => {
            // The holes before the new final block: the blocks before it are written (they
            // authenticated above), except before the first block the write touched, whose
            // count the marker holds.
            let mut gap = if k == first {
                gap.min(u32::try_from(k).unwrap_or(u32::MAX))
            } else {
                0
            };
            // The marker's count may be stale (or, in an untagged marker, anyone's): it is used
            // only where the blocks it would vouch for are holes now, else only the holes right
            // before `k` count.
            if gap > 0 && !all_zero_nonces(file, l, k.saturating_sub(u64::from(gap)), k, len)? {
                let mut n = 0u32;
                let mut nonce = [0u8; crate::format::block::BLOCK_NONCE_LEN];
                while n < gap {
                    file.read_exact_at(&mut nonce, l.cipher_offset(k - 1 - u64::from(n)))?;
                    if !super::is_hole(&nonce) {
                        break;
                    }
                    n += 1;
                }
                gap = n;
            }
            if k > 0 && k == first && gap == 0 {
                // The block before the rewritten range was not touched: it must still be whole.
                let off = l.cipher_offset(k - 1);
                file.read_exact_at(&mut buf, off)?;
                if cipher
                    .decrypt_block(k - 1, false, &buf, &mut plain)
                    .is_err()
                {
                    return Err(std::io::Error::other(format!(
                        "interrupted write: block {} before the rewritten range does not authenticate",
                        k - 1
                    )));
                }
            }
            let mut out = Vec::new();
            cipher.encrypt_blocks(k, &[], k, gap, &mut out);
            file.write_all_at(&out, l.cipher_offset(k))?;
            l.cipher_offset(k) + out.len() as u64
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

/// The length of the final block `i` that the first `m < stored.len()` bytes stored for it make,
/// if any: the old final block of a file whose growth a power loss cut (its larger size was
/// journaled, the old final block rewritten in place was not written yet: zeros past its old
/// end, or the next block's first bytes where its page was). Found by trying each length (a
/// few milliseconds, once per recovered file); a match authenticates, so it is that block.
fn shorter_final(cipher: &FileCipher, i: u64, stored: &[u8], plain: &mut [u8]) -> Option<usize> {
    (BLOCK_OVERHEAD..stored.len()).rev().find(|&m| {
        cipher
            .decrypt_block(i, true, &stored[..m], &mut plain[..m - BLOCK_OVERHEAD])
            .is_ok()
    })
}

/// Whether written block `i` (its stored bytes `block`) counts the holes back to block `s`.
fn counts_back_to(i: u64, block: &[u8], s: u64) -> bool {
    i.checked_sub(u64::from(super::block_gap(block)))
        .is_some_and(|start| start <= s)
}

/// Whether blocks `from..to` all have all-zero nonces (holes, or zeroed), passing unallocated
/// ranges with `SEEK_DATA`.
fn all_zero_nonces(file: &File, l: Layout, from: u64, to: u64, len: u64) -> std::io::Result<bool> {
    let mut i = from;
    let mut nonce = [0u8; crate::format::block::BLOCK_NONCE_LEN];
    while i < to {
        i = skip_unallocated(file, l, i, len);
        if i >= to || l.cipher_offset(i) >= len {
            break;
        }
        file.read_exact_at(&mut nonce, l.cipher_offset(i))?;
        if !super::is_hole(&nonce) {
            return Ok(false);
        }
        i += 1;
    }
    Ok(true)
}

/// The first block at or after `i` that the backing file system may hold data for (`SEEK_DATA`;
/// `i` itself where it cannot tell), so that a scan passes long runs of holes at once.
fn skip_unallocated(file: &File, l: Layout, i: u64, len: u64) -> u64 {
    let off = l.cipher_offset(i);
    if off >= len {
        return i;
    }
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(off)) {
        Ok(d) if d > off => i.max(l.block_at_cipher(d)),
        // No data after `off`: the blocks from `i` are not there.
        Err(rustix::io::Errno::NXIO) => i.max(l.block_at_cipher(len)),
        _ => i,
    }
}

/// Whether blocks `first..=final` of a file `target` cipher bytes long all authenticate, the
/// last one as final (in a sparse file, or are holes that the next written block counts).
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
    let mut run: Option<u64> = None;
    let mut i = first;
    while i <= fin {
        let Some(n) = l.block_len(i, size) else {
            return Ok(false);
        };
        let c = &mut buf[..n as usize + BLOCK_OVERHEAD];
        file.read_exact_at(c, l.cipher_offset(i))?;
        if cipher.is_sparse() && i < fin && super::is_hole(c) {
            run.get_or_insert(i);
            i = skip_unallocated(file, l, i + 1, target).min(fin);
            continue;
        }
        if cipher
            .decrypt_block(i, i == fin, c, &mut plain[..n as usize])
            .is_err()
        {
            return Ok(false);
        }
        if let Some(s) = run.take()
            && !counts_back_to(i, c, s)
        {
            return Ok(false);
        }
        i += 1;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;
    use crate::format::FileId;
    use crate::format::header::HEADER_LEN;

    const B: usize = 4096;

    fn setup() -> (tempfile::TempDir, File, FileCipher, Layout) {
        let t = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(t.path().join("f"))
            .unwrap();
        let c = FileCipher::new(&Key256::from_bytes([3; 32]), FileId([4; 16]), B as u32);
        (t, f, c, Layout::new(B as u32))
    }

    /// Writes a consistent file of `plain` (the header bytes do not matter here).
    fn write_file(f: &File, c: &FileCipher, l: Layout, plain: &[u8]) {
        let mut out = Vec::new();
        c.encrypt_blocks(0, plain, l.final_block(plain.len() as u64), 0, &mut out);
        if !plain.is_empty() && plain.len().is_multiple_of(B) {
            let mut fin = Vec::new();
            let n = (plain.len() / B) as u64;
            c.encrypt_blocks(n, &[], n, 0, &mut fin);
            out.extend_from_slice(&fin);
        }
        f.set_len(0).unwrap();
        f.write_all_at(&[0u8; HEADER_LEN], 0).unwrap();
        f.write_all_at(&out, HEADER_LEN as u64).unwrap();
    }

    /// The plaintext of a consistent file, or None if it does not authenticate.
    fn read_file(f: &File, c: &FileCipher, l: Layout) -> Option<Vec<u8>> {
        let len = f.metadata().unwrap().len();
        let size = l.plain_size(len)?;
        let mut buf = vec![0u8; (len - HEADER_LEN as u64) as usize];
        f.read_exact_at(&mut buf, HEADER_LEN as u64).unwrap();
        let mut out = Vec::new();
        c.decrypt_blocks(0, &buf, l.final_block(size), &mut out)
            .ok()?;
        Some(out)
    }

    #[test]
    fn torn_extension_recovers_to_a_prefix() {
        let (_t, f, c, l) = setup();
        write_file(&f, &c, l, &[1u8; 100]);
        // Extend to 3 blocks + 50 bytes; the write stops inside block 2.
        let new: Vec<u8> = (0..3 * B + 50).map(|i| i as u8).collect();
        let mut out = Vec::new();
        c.encrypt_blocks(0, &new, 3, 0, &mut out);
        mark(&f, 1, &c, 0, l.cipher_size(new.len() as u64), 0);
        let cut = 2 * (B + BLOCK_OVERHEAD) + 700;
        f.write_all_at(&out[..cut], HEADER_LEN as u64).unwrap();
        assert!(
            read_file(&f, &c, l).is_none(),
            "a torn file does not read as is"
        );
        recover(&f, &c, l, false).unwrap();
        assert_eq!(read_file(&f, &c, l).unwrap(), new[..2 * B]);
        assert!(!is_marked(&f));
    }

    /// A power loss after an append: the larger size was journaled, the old final block
    /// rewritten in place was not written (zeros past its old end, the next page's new bytes
    /// after those). The file is what it was before the append, not cut before that block.
    #[test]
    fn an_append_cut_by_a_power_loss_keeps_the_old_final_block() {
        let (_t, f, c, l) = setup();
        let old: Vec<u8> = (0..2 * B + 1808).map(|i| (i * 7) as u8).collect();
        write_file(&f, &c, l, &old);
        let mut grown = old.clone();
        grown.extend((0..3000).map(|i| i as u8));
        let mut out = Vec::new();
        c.encrypt_blocks(2, &grown[2 * B..], 3, 0, &mut out);
        mark(&f, 1, &c, 2, 0, 0);
        // Only the part of the new blocks past the old block's page reached the disk.
        let page_end = (l.cipher_offset(2) / 4096 + 1) * 4096;
        let new_end = l.cipher_offset(2) + out.len() as u64;
        let skip = (page_end - l.cipher_offset(2)) as usize;
        f.set_len(new_end).unwrap();
        f.write_all_at(&out[skip..], page_end).unwrap();
        assert!(read_file(&f, &c, l).is_none(), "unreadable as it is");
        recover(&f, &c, l, false).unwrap();
        assert_eq!(read_file(&f, &c, l).unwrap(), old);
        assert!(!is_marked(&f));
        // A torn block that holds no whole old block is still cut before.
        write_file(&f, &c, l, &old);
        mark(&f, 1, &c, 2, 0, 0);
        f.set_len(new_end).unwrap();
        f.write_all_at(&out[..100], l.cipher_offset(2)).unwrap();
        recover(&f, &c, l, false).unwrap();
        assert_eq!(read_file(&f, &c, l).unwrap(), old[..2 * B]);
    }

    #[test]
    fn completed_write_and_uncut_truncate() {
        let (_t, f, c, l) = setup();
        let data: Vec<u8> = (0..2 * B + 10).map(|i| (i * 7) as u8).collect();
        write_file(&f, &c, l, &data);
        // The write finished but the marker was not cleared: nothing changes (with a target,
        // and with target 0 for a series of appends).
        for target in [f.metadata().unwrap().len(), 0] {
            mark(&f, 1, &c, 0, target, 0);
            assert_eq!(recover(&f, &c, l, false).unwrap(), None);
            assert_eq!(read_file(&f, &c, l).unwrap(), data);
        }
        // Truncate to B + 5: the new final block 1 was written, the cut was not made.
        let mut fin = Vec::new();
        c.encrypt_blocks(1, &data[B..B + 5], 1, 0, &mut fin);
        mark(&f, 1, &c, 1, l.cipher_size((B + 5) as u64), 0);
        f.write_all_at(&fin, l.cipher_offset(1)).unwrap();
        assert!(read_file(&f, &c, l).is_none());
        recover(&f, &c, l, false).unwrap();
        assert_eq!(read_file(&f, &c, l).unwrap(), data[..B + 5]);
    }

    #[test]
    fn without_a_marker_nothing_changes_and_outside_damage_is_not_papered_over() {
        let (_t, f, c, l) = setup();
        let data = vec![9u8; 3 * B];
        write_file(&f, &c, l, &data);
        assert_eq!(recover(&f, &c, l, false).unwrap(), None);
        assert_eq!(read_file(&f, &c, l).unwrap(), data);
        // Block 1 tampered, then a marker for a write from block 2 that was torn.
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, l.cipher_offset(1) + 20).unwrap();
        f.write_all_at(&[b[0] ^ 1], l.cipher_offset(1) + 20)
            .unwrap();
        f.set_len(l.cipher_offset(2) + 10).unwrap();
        mark(&f, 1, &c, 2, l.cipher_size(data.len() as u64), 0);
        assert!(recover(&f, &c, l, false).is_err());
        assert!(is_marked(&f), "left for fsck and a human to look at");
    }

    /// A torn extension as in `torn_extension_recovers_to_a_prefix`, without its marker: the
    /// plaintext it recovers to when a marker is acted on.
    fn torn(f: &File, c: &FileCipher, l: Layout) -> Vec<u8> {
        write_file(f, c, l, &[1u8; 100]);
        let new: Vec<u8> = (0..3 * B + 50).map(|i| i as u8).collect();
        let mut out = Vec::new();
        c.encrypt_blocks(0, &new, 3, 0, &mut out);
        f.write_all_at(&out[..2 * (B + BLOCK_OVERHEAD) + 700], HEADER_LEN as u64)
            .unwrap();
        new[..2 * B].to_vec()
    }

    fn raw_marker(f: &File) -> Vec<u8> {
        let mut b = [0u8; 64];
        let n = rustix::fs::fgetxattr(f, PENDING_XATTR, &mut b).unwrap();
        b[..n].to_vec()
    }

    fn set_raw_marker(f: &File, v: &[u8]) {
        rustix::fs::fsetxattr(f, PENDING_XATTR, v, rustix::fs::XattrFlags::empty()).unwrap();
    }

    #[test]
    fn a_marker_with_any_byte_flipped_is_not_acted_on() {
        let (_t, f, c, l) = setup();
        torn(&f, &c, l);
        mark(&f, 1, &c, 0, 0, 0);
        let good = raw_marker(&f);
        assert_eq!(good.len(), MARKER_LEN);
        assert!(matches!(read_marker(&f, &c).unwrap(), Marker::Authentic(_)));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            set_raw_marker(&f, &bad);
            assert_eq!(read_marker(&f, &c).unwrap(), Marker::Forged, "byte {i}");
            let len = f.metadata().unwrap().len();
            assert_eq!(recover(&f, &c, l, true).unwrap(), None, "byte {i}");
            assert_eq!(
                f.metadata().unwrap().len(),
                len,
                "byte {i}: the file was cut"
            );
            assert!(read_file(&f, &c, l).is_none(), "byte {i}: still torn");
            assert!(is_marked(&f), "byte {i}: left for fsck to report");
        }
    }

    #[test]
    fn a_marker_made_for_another_file_or_of_another_length_is_forged() {
        let (_t, f, c, l) = setup();
        torn(&f, &c, l);
        // Same key, another file id; another key, same file id.
        let other_id = FileCipher::new(&Key256::from_bytes([3; 32]), FileId([5; 16]), B as u32);
        let other_key = FileCipher::new(&Key256::from_bytes([6; 32]), FileId([4; 16]), B as u32);
        for other in [&other_id, &other_key] {
            mark(&f, 1, other, 0, 0, 0);
            assert_eq!(read_marker(&f, &c).unwrap(), Marker::Forged);
            assert_eq!(recover(&f, &c, l, true).unwrap(), None);
        }
        // Lengths no kmsfs writes, up to one longer than the buffer a marker is read into.
        for n in [0, 8, 17, 23, 25, 39, 41, 64, 200] {
            set_raw_marker(&f, &vec![0u8; n]);
            assert_eq!(read_marker(&f, &c).unwrap(), Marker::Forged, "{n} bytes");
            assert_eq!(recover(&f, &c, l, true).unwrap(), None, "{n} bytes");
            assert!(is_marked(&f), "{n} bytes");
        }
        assert!(read_file(&f, &c, l).is_none(), "still torn");
    }

    #[test]
    fn a_16_byte_marker_on_a_sparse_file_is_forged() {
        let (_t, f, c, _l) = setup();
        let c = c.with_sparse(true);
        set_raw_marker(&f, &[0u8; 16]);
        assert_eq!(read_marker(&f, &c).unwrap(), Marker::Forged);
        set_raw_marker(&f, &[0u8; 24]);
        assert!(matches!(read_marker(&f, &c).unwrap(), Marker::Legacy(_)));
    }

    #[test]
    fn a_marker_of_an_older_kmsfs_is_acted_on_only_when_trusted() {
        for len in LEGACY_LENS {
            let (_t, f, c, l) = setup();
            let want = torn(&f, &c, l);
            let mut v = vec![0u8; len];
            v[..8].copy_from_slice(&0u64.to_le_bytes());
            set_raw_marker(&f, &v);
            assert!(matches!(read_marker(&f, &c).unwrap(), Marker::Legacy(_)));
            assert_eq!(recover(&f, &c, l, false).unwrap(), None, "{len} bytes");
            assert!(read_file(&f, &c, l).is_none(), "{len} bytes: not recovered");
            assert!(is_marked(&f));
            assert!(recover(&f, &c, l, true).unwrap().is_some(), "{len} bytes");
            assert_eq!(read_file(&f, &c, l).unwrap(), want, "{len} bytes");
            assert!(!is_marked(&f));
        }
    }
}

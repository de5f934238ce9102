//! Known-answer vectors for the on-disk format (docs/FORMAT.md), in the style of age's testkit:
//! one small text file per case under `tests/vectors/`, each with a self-describing header
//! (`case:`, `kind:`, `expect:`, then hex fields). The files are data: they were generated once by
//! [`regenerate_vectors`] and are checked in, so any change to the format makes these tests fail.
//!
//! Every case is checked twice where possible: through the crate's real code path (FileCipher,
//! FileHeader, Names, keymgr::unlock) and by recomputing it from the primitives exactly as
//! docs/FORMAT.md describes it.
//!
//! `expect:` is one of `ok`, `auth-failure` (an AEAD refused), `format-error` (a structure does
//! not parse, or a size is impossible), `reserved` (a name kmsfs refuses),
//! `wrong-passphrase` / `key-store-corrupt` (key store unlock outcomes).
//!
//! To regenerate after a *deliberate* format change:
//! `KMSFS_WRITE_VECTORS=1 cargo test --test known_answers -- --ignored regenerate_vectors`
//! (the sealed key store is only created when its files are missing, since sealing is random).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use kmsfs::content::FileCipher;
use kmsfs::crypto::{Aead, KdfParams, Key256, Passphrase, argon2id, hex, hkdf_subkey, sha256};
use kmsfs::format::block::{BLOCK_AAD_LEN, BLOCK_OVERHEAD, block_aad, marker_aad};
use kmsfs::format::context::EncryptionContext;
use kmsfs::format::header::{FileHeader, HEADER_LEN, WRAP_LEN};
use kmsfs::format::keystore::{Envelope, SlotKind};
use kmsfs::format::offsets::Layout;
use kmsfs::format::xattr_pack::XattrPack;
use kmsfs::format::{DirId, FileId, KeyId, VolumeId};
use kmsfs::keymgr::{Unlock, VolumeError};
use kmsfs::names::long_links::{LINK_TARGET_LEN, LinkId};
use kmsfs::names::{NameError, Names};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

// ---------------------------------------------------------------------------------------------
// The vector file format.

/// One parsed vector file. Every field must be read by its checker (typos do not pass silently).
struct Vector {
    file: String,
    fields: BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl Vector {
    fn parse(file: &str, text: &str) -> Vector {
        let mut fields = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .unwrap_or_else(|| panic!("{file}:{}: not `key: value`: {line:?}", i + 1));
            assert!(
                fields.insert(k.to_string(), v.to_string()).is_none(),
                "{file}: field {k} twice"
            );
        }
        let mut v = Vector {
            file: file.to_string(),
            fields,
            used: BTreeSet::new(),
        };
        v.used.insert("comment".into());
        v
    }

    fn has(&self, k: &str) -> bool {
        self.fields.contains_key(k)
    }

    fn str(&mut self, k: &str) -> String {
        self.used.insert(k.to_string());
        self.fields
            .get(k)
            .unwrap_or_else(|| panic!("{}: missing field {k}", self.file))
            .clone()
    }

    fn hex(&mut self, k: &str) -> Vec<u8> {
        let s = self.str(k);
        assert!(
            s.len().is_multiple_of(2),
            "{}: {k}: odd hex length",
            self.file
        );
        let mut out = vec![0u8; s.len() / 2];
        hex::decode_into(&s, &mut out).unwrap_or_else(|| panic!("{}: {k}: not hex", self.file));
        out
    }

    fn arr<const N: usize>(&mut self, k: &str) -> [u8; N] {
        let v = self.hex(k);
        v.try_into()
            .unwrap_or_else(|v: Vec<u8>| panic!("{}: {k}: {} bytes, want {N}", self.file, v.len()))
    }

    fn num<T: std::str::FromStr>(&mut self, k: &str) -> T {
        let s = self.str(k);
        s.parse()
            .unwrap_or_else(|_| panic!("{}: {k}: not a number: {s}", self.file))
    }

    fn bool(&mut self, k: &str) -> bool {
        match self.str(k).as_str() {
            "true" => true,
            "false" => false,
            s => panic!("{}: {k}: not a boolean: {s}", self.file),
        }
    }

    fn key(&mut self, k: &str) -> Key256 {
        Key256::from_bytes(self.arr(k))
    }

    fn finish(self) {
        let unused: Vec<_> = self
            .fields
            .keys()
            .filter(|k| !self.used.contains(*k))
            .collect();
        assert!(unused.is_empty(), "{}: unused fields {unused:?}", self.file);
    }
}

/// Builds a vector file in field order.
struct Writer(String);

impl Writer {
    fn new(case: &str, kind: &str, expect: &str, comment: &str) -> Writer {
        let mut w = Writer(String::new());
        w.f("case", case).f("kind", kind).f("expect", expect);
        if !comment.is_empty() {
            w.f("comment", comment);
        }
        w
    }
    fn f(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        writeln!(self.0, "{k}: {v}").unwrap_or_else(|_| unreachable!());
        self
    }
    fn h(&mut self, k: &str, v: &[u8]) -> &mut Self {
        self.f(k, hex::encode(v))
    }
    fn write(&self) {
        let case = self
            .0
            .lines()
            .next()
            .unwrap()
            .strip_prefix("case: ")
            .unwrap();
        let p = vectors_dir().join(format!("{case}.txt"));
        std::fs::write(&p, &self.0).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed inputs of the generator (recognisable patterns, so a hex dump is easy to read).

fn pattern<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

const PASSPHRASE: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------------------------
// Checkers, one per kind.

fn check_vector(v: &mut Vector) {
    let kind = v.str("kind");
    v.str("case");
    match kind.as_str() {
        "content-block" => check_content_block(v),
        "cipher-file" => check_cipher_file(v),
        "encryption-context" => check_context(v),
        "file-header" => check_header(v),
        "name" => check_name(v),
        "symlink-target" => check_symlink(v),
        "symlink-long-target" => check_long_symlink(v),
        "xattr" => check_xattr(v),
        "xattr-pack" => check_xattr_pack(v),
        "hkdf" => check_hkdf(v),
        "argon2id" => check_argon2id(v),
        "key-store" => check_key_store(v),
        "interrupted-write-marker" => check_marker(v),
        k => panic!("{}: unknown kind {k}", v.file),
    }
}

/// Content block: `nonce ‖ AES-256-GCM-SIV(DEK, nonce, aad, plaintext) ‖ tag`, aad = file id ‖
/// block number (u64 BE) ‖ final flag.
fn check_content_block(v: &mut Vector) {
    let expect = v.str("expect");
    let dek = v.key("dek");
    let file_id = FileId(v.arr("file-id"));
    let block_size: u32 = v.num("block-size");
    let block: u64 = v.num("block");
    let is_final = v.bool("final");
    let aad = v.hex("aad");
    let ciphertext = v.hex("ciphertext");
    let plaintext = v.hex("plaintext");
    let fc = FileCipher::new(&dek, file_id, block_size);

    // The AAD as the code builds it, and as the doc describes it.
    assert_eq!(aad.len(), BLOCK_AAD_LEN);
    assert_eq!(
        &block_aad(&file_id, block, is_final)[..],
        &aad[..],
        "{}",
        v.file
    );
    let mut doc_aad = file_id.0.to_vec();
    doc_aad.extend_from_slice(&block.to_be_bytes());
    doc_aad.push(u8::from(is_final));
    assert_eq!(doc_aad, aad, "{}", v.file);

    let mut out = vec![0u8; ciphertext.len().saturating_sub(BLOCK_OVERHEAD)];
    let r = fc.decrypt_block(block, is_final, &ciphertext, &mut out);
    match expect.as_str() {
        "ok" => {
            let nonce: [u8; 12] = v.arr("nonce");
            assert_eq!(
                &ciphertext[..12],
                &nonce,
                "{}: nonce is stored first",
                v.file
            );
            r.unwrap_or_else(|e| panic!("{}: {e}", v.file));
            assert_eq!(out, plaintext, "{}", v.file);
            // Re-encrypting with the recorded nonce gives the exact bytes (through FileCipher and
            // through the bare AEAD).
            let mut enc = vec![0u8; plaintext.len() + BLOCK_OVERHEAD];
            fc.encrypt_block(block, is_final, &nonce, &plaintext, &mut enc);
            assert_eq!(hex::encode(&enc), hex::encode(&ciphertext), "{}", v.file);
            let bare = Aead::new(&dek).seal_with_nonce(&nonce, &aad, &plaintext);
            assert_eq!(bare, ciphertext, "{}", v.file);
        }
        "auth-failure" => {
            assert!(r.is_err(), "{}: tampered block was accepted", v.file);
            // The untampered original must still open (the vector is not just garbage).
            let orig = v.hex("original-ciphertext");
            let mut o = vec![0u8; plaintext.len()];
            let ob: u64 = v.num("original-block");
            let of = v.bool("original-final");
            let ofid = FileId(v.arr("original-file-id"));
            FileCipher::new(&dek, ofid, block_size)
                .decrypt_block(ob, of, &orig, &mut o)
                .unwrap_or_else(|e| panic!("{}: original: {e}", v.file));
            assert_eq!(o, plaintext);
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

/// Interrupted-write marker (FORMAT §1): `first ‖ target ‖ holes` (u64 LE each) ‖ the
/// AES-256-GCM-SIV tag under the DEK, nonce `kmsfs-marker`, no plaintext, aad = `kmsfs
/// interrupted-write marker v1` ‖ file id ‖ those 24 bytes.
fn check_marker(v: &mut Vector) {
    let expect = v.str("expect");
    let dek = v.key("dek");
    let file_id = FileId(v.arr("file-id"));
    let first: u64 = v.num("first");
    let target: u64 = v.num("target");
    let holes: u64 = v.num("holes");
    let aad = v.hex("aad");
    let marker = v.hex("marker");
    let fc = FileCipher::new(&dek, file_id, 4096);
    let mut fields = [0u8; 24];
    fields[..8].copy_from_slice(&first.to_le_bytes());
    fields[8..16].copy_from_slice(&target.to_le_bytes());
    fields[16..].copy_from_slice(&holes.to_le_bytes());
    let mut doc_aad = b"kmsfs interrupted-write marker v1".to_vec();
    doc_aad.extend_from_slice(&file_id.0);
    doc_aad.extend_from_slice(&fields);
    assert_eq!(doc_aad, aad, "{}", v.file);
    assert_eq!(&marker_aad(&file_id, &fields)[..], &aad[..], "{}", v.file);
    assert_eq!(marker.len(), 40, "{}", v.file);
    let authentic = marker[..24] == fields && fc.marker_authentic(&fields, &marker[24..]);
    match expect.as_str() {
        "ok" => {
            assert!(authentic, "{}", v.file);
            assert_eq!(fc.marker_tag(&fields)[..], marker[24..], "{}", v.file);
            // The bare AEAD: a seal of nothing is `nonce ‖ tag`.
            let bare = Aead::new(&dek).seal_with_nonce(b"kmsfs-marker", &aad, b"");
            assert_eq!(bare[12..], marker[24..], "{}", v.file);
        }
        "auth-failure" => {
            let stored: [u8; 24] = marker[..24].try_into().unwrap();
            assert!(
                !fc.marker_authentic(&stored, &marker[24..]),
                "{}: tampered marker accepted",
                v.file
            );
            assert!(
                fc.marker_authentic(&fields, &fc.marker_tag(&fields)),
                "{}: the original fields authenticate",
                v.file
            );
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

/// A whole cipher file (header ‖ blocks) decrypted the way docs/FORMAT.md describes.
fn check_cipher_file(v: &mut Vector) {
    let expect = v.str("expect");
    let volume = VolumeId(v.arr("volume-id"));
    let material = v.key("key-material");
    let block_size: u32 = v.num("block-size");
    let file = v.hex("cipher-file");
    let plaintext = v.hex("plaintext");
    let l = Layout::new(block_size);

    let result = (|| -> Result<Vec<u8>, &'static str> {
        let h = FileHeader::decode(&file).map_err(|_| "format-error")?;
        let dek = Aead::new(&material)
            .open(&h.wrap_aad(&volume), &h.wrapped_dek)
            .map_err(|_| "auth-failure")?;
        let dek = Key256::from_slice(&dek).ok_or("auth-failure")?;
        let size = l.plain_size(file.len() as u64).ok_or("format-error")?;
        let fc = FileCipher::new(&dek, h.file_id, block_size);
        let mut out = Vec::new();
        fc.decrypt_blocks(0, &file[HEADER_LEN..], l.final_block(size), &mut out)
            .map_err(|_| "auth-failure")?;
        Ok(out)
    })();
    match (expect.as_str(), result) {
        ("ok", Ok(p)) => {
            assert_eq!(p, plaintext, "{}", v.file);
            assert_eq!(l.cipher_size(p.len() as u64), file.len() as u64);
        }
        (e, Err(got)) if e == got => {}
        (e, r) => panic!("{}: expected {e}, got {:?}", v.file, r.map(|p| p.len())),
    }
}

fn check_context(v: &mut Vector) {
    let volume = VolumeId(v.arr("volume-id"));
    let file_id = FileId(v.arr("file-id"));
    let key_id: KeyId = v.str("key-id").parse().unwrap();
    let version: u32 = v.num("key-version");
    let enc = v.hex("encoded");
    assert_eq!(v.str("expect"), "ok");
    let ctx = EncryptionContext::for_file(&volume, &file_id, &key_id, version);
    assert_eq!(hex::encode(&ctx.encode()), hex::encode(&enc), "{}", v.file);
    // Independently: u16 count, then (u16 klen, key, u32 vlen, value) sorted by key.
    let mut pairs: Vec<(&str, Vec<u8>)> = vec![
        ("kmsfs:volume-id", volume.0.to_vec()),
        ("kmsfs:file-id", file_id.0.to_vec()),
        ("kmsfs:key-id", key_id.0.to_vec()),
        ("kmsfs:key-version", version.to_be_bytes().to_vec()),
    ];
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut doc = (pairs.len() as u16).to_be_bytes().to_vec();
    for (k, val) in pairs {
        doc.extend_from_slice(&(k.len() as u16).to_be_bytes());
        doc.extend_from_slice(k.as_bytes());
        doc.extend_from_slice(&(val.len() as u32).to_be_bytes());
        doc.extend_from_slice(&val);
    }
    assert_eq!(doc, enc, "{}", v.file);
    assert_eq!(enc.len(), 135);
}

fn check_header(v: &mut Vector) {
    let expect = v.str("expect");
    let volume = VolumeId(v.arr("volume-id"));
    let material = v.key("key-material");
    let header = v.hex("header");
    let dek: [u8; 32] = v.arr("dek");
    match expect.as_str() {
        "ok" => {
            let file_id = FileId(v.arr("file-id"));
            let key_id: KeyId = v.str("key-id").parse().unwrap();
            let version: u32 = v.num("key-version");
            let nonce: [u8; 12] = v.arr("wrap-nonce");
            let wrap_aad = v.hex("wrap-aad");
            assert_eq!(header.len(), HEADER_LEN);
            let h = FileHeader::decode(&header).unwrap_or_else(|e| panic!("{}: {e}", v.file));
            assert_eq!(h.file_id, file_id);
            assert_eq!(h.key_id, key_id);
            assert_eq!(h.key_version, version);
            assert_eq!(&h.wrapped_dek[..12], &nonce);
            assert_eq!(hex::encode(&h.wrap_aad(&volume)), hex::encode(&wrap_aad));
            // AAD = header[0..8] ‖ encoded context.
            let mut doc_aad = header[..8].to_vec();
            doc_aad.extend_from_slice(
                &EncryptionContext::for_file(&volume, &file_id, &key_id, version).encode(),
            );
            assert_eq!(doc_aad, wrap_aad);
            let got = Aead::new(&material)
                .open(&wrap_aad, &h.wrapped_dek)
                .unwrap_or_else(|e| panic!("{}: {e}", v.file));
            assert_eq!(got, dek);
            // Rebuild the header from its inputs: exact bytes.
            let mut re = FileHeader {
                file_id,
                key_id,
                key_version: version,
                flags: 0,
                wrapped_dek: [0; WRAP_LEN],
            };
            let sealed = Aead::new(&material).seal_with_nonce(&nonce, &re.wrap_aad(&volume), &dek);
            re.wrapped_dek.copy_from_slice(&sealed);
            assert_eq!(
                hex::encode(&re.encode()),
                hex::encode(&header),
                "{}",
                v.file
            );
        }
        "auth-failure" => {
            let h = FileHeader::decode(&header).unwrap_or_else(|e| panic!("{}: {e}", v.file));
            assert!(
                Aead::new(&material)
                    .open(&h.wrap_aad(&volume), &h.wrapped_dek)
                    .is_err(),
                "{}: tampered header unwrapped",
                v.file
            );
        }
        "format-error" => {
            assert!(FileHeader::decode(&header).is_err(), "{}: parsed", v.file);
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

fn check_name(v: &mut Vector) {
    let expect = v.str("expect");
    let secret = v.key("volume-secret");
    let dir = DirId(v.arr("dir-id"));
    let at_root = v.bool("at-root");
    let names = Names::new(&secret, false);
    match expect.as_str() {
        "ok" => {
            let name = v.hex("name");
            let names_key = v.key("names-key");
            let aad = v.hex("aad");
            let entry = v.str("entry");
            let c = names
                .encrypt(&dir, &name, at_root)
                .unwrap_or_else(|e| panic!("{}: {e}", v.file));
            assert_eq!(c.entry.to_str().unwrap(), entry, "{}", v.file);
            // The encrypted name: base64url(no pad) of ciphertext ‖ tag under a zero nonce.
            let sealed = Aead::new(&names_key).seal_with_nonce(&[0; 12], &aad, &name);
            let enc = B64.encode(&sealed[12..]);
            let mut doc_aad = b"kmsfsN".to_vec();
            doc_aad.extend_from_slice(&dir.0);
            assert_eq!(doc_aad, aad);
            assert_eq!(
                hkdf_subkey(&secret, b"", "kmsfs/v1/names").expose(),
                names_key.expose()
            );
            if v.has("side-file") {
                let side = v.str("side-file");
                assert_eq!(c.long.as_deref(), Some(side.as_str()), "{}", v.file);
                assert_eq!(enc, side);
                assert!(enc.len() > 255);
                let h = B64.encode(sha256(side.as_bytes()));
                assert_eq!(entry, format!("kmsfs.long.{h}"));
                assert_eq!(
                    c.side_file().unwrap().to_str().unwrap(),
                    format!("{entry}.name")
                );
                assert_eq!(names.decrypt(&dir, side.as_bytes()).unwrap(), name);
                assert_eq!(
                    names
                        .decrypt_long(&dir, entry.as_bytes(), side.as_bytes())
                        .unwrap(),
                    name
                );
            } else {
                assert!(c.long.is_none());
                assert_eq!(enc, entry);
                assert!(enc.len() <= 255);
                assert_eq!(names.decrypt(&dir, entry.as_bytes()).unwrap(), name);
            }
        }
        "auth-failure" => {
            let stored = v.str("stored");
            assert_eq!(
                names.decrypt(&dir, stored.as_bytes()),
                Err(NameError::Undecryptable),
                "{}",
                v.file
            );
        }
        "reserved" => {
            let name = v.hex("name");
            assert_eq!(
                names.encrypt(&dir, &name, at_root),
                Err(NameError::Reserved),
                "{}",
                v.file
            );
        }
        "too-long" => {
            let name = v.hex("name");
            assert_eq!(
                names.encrypt(&dir, &name, at_root),
                Err(NameError::TooLong),
                "{}",
                v.file
            );
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

/// A target too long to store inline: the backing symlink holds `kmsfs.link.` ‖ base64url(id),
/// the side file `nonce ‖ ct ‖ tag` with associated data `kmsfs long symlink` ‖ id.
fn check_long_symlink(v: &mut Vector) {
    let expect = v.str("expect");
    let secret = v.key("volume-secret");
    let key = v.key("symlink-key");
    let id_raw: [u8; 16] = v.arr("link-id");
    let stored = v.str("stored");
    let side = v.hex("side-file");
    let names = Names::new(&secret, false);
    let id = LinkId::from_target(stored.as_bytes()).expect("a long link's target");
    assert_eq!(stored, format!("kmsfs.link.{}", B64.encode(id_raw)));
    assert_eq!(id.file_name(), B64.encode(id_raw));
    assert_eq!(stored.len() as u64, LINK_TARGET_LEN);
    assert_eq!(
        hkdf_subkey(&secret, b"", "kmsfs/v1/symlink-targets").expose(),
        key.expose()
    );
    match expect.as_str() {
        "ok" => {
            let target = v.hex("target");
            let nonce: [u8; 12] = v.arr("nonce");
            assert_eq!(names.open_long_symlink(&id, &side).unwrap(), target);
            let aad = [&b"kmsfs long symlink"[..], &id_raw].concat();
            assert_eq!(Aead::new(&key).seal_with_nonce(&nonce, &aad, &target), side);
        }
        "auth-failure" => {
            assert!(names.open_long_symlink(&id, &side).is_err(), "{}", v.file);
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

fn check_symlink(v: &mut Vector) {
    let expect = v.str("expect");
    let secret = v.key("volume-secret");
    let stored = v.str("stored");
    let names = Names::new(&secret, false);
    match expect.as_str() {
        "ok" => {
            let target = v.hex("target");
            let key = v.key("symlink-key");
            let nonce: [u8; 12] = v.arr("nonce");
            assert_eq!(names.decrypt_symlink(stored.as_bytes()).unwrap(), target);
            assert_eq!(
                hkdf_subkey(&secret, b"", "kmsfs/v1/symlink-targets").expose(),
                key.expose()
            );
            let doc =
                B64.encode(Aead::new(&key).seal_with_nonce(&nonce, b"kmsfs symlink", &target));
            assert_eq!(doc, stored);
            assert_eq!(
                Names::symlink_plain_len(stored.len() as u64),
                target.len() as u64
            );
        }
        "auth-failure" => {
            assert!(
                names.decrypt_symlink(stored.as_bytes()).is_err(),
                "{}",
                v.file
            );
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

/// The xattr pack (FORMAT.md §7): `nonce ‖ AES-256-GCM-SIV(K_xv, nonce, "user.kmsfs.p", PACK) ‖
/// tag`, PACK = per entry: name length (u8) ‖ name ‖ value length (u32 BE) ‖ value.
fn check_xattr_pack(v: &mut Vector) {
    let expect = v.str("expect");
    let secret = v.key("volume-secret");
    let names = Names::new(&secret, false);
    let stored = v.hex("stored");
    match expect.as_str() {
        "ok" => {
            let nonce: [u8; 12] = v.arr("nonce");
            let plain = v.hex("pack");
            let mut entries = Vec::new();
            for i in 0.. {
                if !v.has(&format!("name-{i}")) {
                    break;
                }
                entries.push((v.hex(&format!("name-{i}")), v.hex(&format!("value-{i}"))));
            }
            // The layout, re-implemented from the text.
            let mut want = Vec::new();
            for (n, val) in &entries {
                want.push(n.len() as u8);
                want.extend_from_slice(n);
                want.extend_from_slice(&(val.len() as u32).to_be_bytes());
                want.extend_from_slice(val);
            }
            assert_eq!(plain, want, "{}", v.file);
            let vk = hkdf_subkey(&secret, b"", "kmsfs/v1/xattr-values");
            assert_eq!(
                Aead::new(&vk).seal_with_nonce(&nonce, b"user.kmsfs.p", &plain),
                stored
            );
            // And through the crate.
            let opened = names.decrypt_xattr_pack(&stored).unwrap();
            let pack = XattrPack::decode(&opened).unwrap();
            for (n, val) in &entries {
                assert_eq!(pack.get(n), Some(&val[..]));
            }
            assert_eq!(pack.names().count(), entries.len());
            assert_eq!(pack.encode(), plain);
        }
        "auth-failure" => {
            assert!(names.decrypt_xattr_pack(&stored).is_err(), "{}", v.file);
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

fn check_xattr(v: &mut Vector) {
    let expect = v.str("expect");
    let secret = v.key("volume-secret");
    let names = Names::new(&secret, false);
    let backing_name = v.str("backing-name");
    let stored = v.hex("stored-value");
    match expect.as_str() {
        "ok" => {
            let user_name = v.hex("user-name-suffix");
            let value = v.hex("value");
            let nonce: [u8; 12] = v.arr("value-nonce");
            assert_eq!(names.encrypt_xattr_name(&user_name), backing_name);
            assert_eq!(names.decrypt_xattr_name(&backing_name).unwrap(), user_name);
            assert_eq!(
                names.decrypt_xattr_value(&backing_name, &stored).unwrap(),
                value
            );
            let nk = hkdf_subkey(&secret, b"", "kmsfs/v1/xattr-names");
            let sealed = Aead::new(&nk).seal_with_nonce(&[0; 12], b"kmsfs xattr name", &user_name);
            assert_eq!(
                format!("user.kmsfs.{}", B64.encode(&sealed[12..])),
                backing_name
            );
            let vk = hkdf_subkey(&secret, b"", "kmsfs/v1/xattr-values");
            assert_eq!(
                Aead::new(&vk).seal_with_nonce(&nonce, backing_name.as_bytes(), &value),
                stored
            );
        }
        "auth-failure" => {
            assert!(
                names.decrypt_xattr_value(&backing_name, &stored).is_err(),
                "{}",
                v.file
            );
        }
        e => panic!("{}: bad expect {e}", v.file),
    }
}

const PURPOSES: &[&str] = &[
    "kmsfs/v1/names",
    "kmsfs/v1/symlink-targets",
    "kmsfs/v1/xattr-names",
    "kmsfs/v1/xattr-values",
];

fn check_hkdf(v: &mut Vector) {
    assert_eq!(v.str("expect"), "ok");
    let ikm = v.key("ikm");
    let salt = v.hex("salt");
    let info = v.str("info");
    let okm = v.hex("okm");
    assert_eq!(
        hkdf_subkey(&ikm, &salt, &info).expose().as_slice(),
        &okm[..]
    );
}

fn check_argon2id(v: &mut Vector) {
    assert_eq!(v.str("expect"), "ok");
    let pass = Passphrase::new(v.str("passphrase").into_bytes());
    let salt: [u8; 32] = v.arr("salt");
    let p = KdfParams {
        memory_kib: v.num("memory-kib"),
        iterations: v.num("iterations"),
        parallelism: v.num("parallelism"),
    };
    let key = v.hex("key");
    assert_eq!(
        argon2id(&pass, &salt, &p).unwrap().expose().as_slice(),
        &key[..]
    );
}

/// Copies the checked-in `.kmsfs/volume.json` + `.kmsfs/keystore` into a temp volume directory,
/// optionally flipping one byte of the key store.
fn temp_volume(v: &mut Vector, flip: Option<usize>) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let ks_file = v.str("keystore-file");
    let cfg_file = v.str("volume-json-file");
    let mut ks = std::fs::read(vectors_dir().join(&ks_file)).unwrap();
    let cfg = std::fs::read(vectors_dir().join(&cfg_file)).unwrap();
    assert_eq!(
        hex::encode(&sha256(&ks)),
        v.str("keystore-sha256"),
        "{}: {ks_file} changed",
        v.file
    );
    if let Some(off) = flip {
        ks[off] ^= 0x01;
    }
    let c = dir.path().join(".kmsfs");
    std::fs::create_dir(&c).unwrap();
    std::fs::write(c.join("keystore"), &ks).unwrap();
    std::fs::write(c.join("volume.json"), &cfg).unwrap();
    (dir, ks)
}

fn check_key_store(v: &mut Vector) {
    let expect = v.str("expect");
    let unlock = if v.has("recovery-key") {
        let rk = v.str("recovery-key");
        Unlock::RecoveryKey(kmsfs::keymgr::parse_recovery_key(&rk).unwrap())
    } else {
        Unlock::Passphrase(Passphrase::new(v.str("passphrase").into_bytes()))
    };
    let flip = v.has("flip-offset").then(|| v.num::<usize>("flip-offset"));
    let (dir, ks) = temp_volume(v, flip);
    let r = kmsfs::keymgr::unlock(dir.path(), &unlock);
    match expect.as_str() {
        "ok" => {
            let u = r.unwrap_or_else(|e| panic!("{}: {e}", v.file));
            let vid: VolumeId = v.str("volume-id").parse().unwrap();
            assert_eq!(u.store.volume_id, vid);
            assert_eq!(u.config.volume_id, vid);
            assert_eq!(u.generation(), v.num::<u64>("generation"));
            assert_eq!(u.store.keys.len(), v.num::<usize>("key-count"));
            let dk: KeyId = v.str("default-key").parse().unwrap();
            assert_eq!(u.store.default_key, dk);
            assert_eq!(
                hex::encode(u.store.volume_secret.expose()),
                v.str("volume-secret")
            );
            let key = u.store.key(&dk).unwrap();
            assert_eq!(
                hex::encode(key.version(1).unwrap().material.as_ref().unwrap().expose()),
                v.str("key-material-v1")
            );
            assert_eq!(u.store.config_digest, v.str("config-digest"));
            let slots_s = v.str("slots");
            let slots: Vec<&str> = slots_s.split(',').collect();
            assert_eq!(u.config.kdf.params, KdfParams::FAST_INSECURE);
            // Independently, from the primitives: decode the envelope, open the slot, open the
            // body, parse the JSON.
            independent_unseal(v, &ks, &unlock, &slots, u.store.volume_secret.expose());
        }
        "wrong-passphrase" => match r {
            Err(VolumeError::WrongPassphrase) => {}
            other => panic!("{}: expected WrongPassphrase, got {other:?}", v.file),
        },
        "key-store-corrupt" => match r {
            Err(VolumeError::KeyStoreCorrupt(_)) => {}
            other => panic!("{}: expected KeyStoreCorrupt, got {other:?}", v.file),
        },
        e => panic!("{}: bad expect {e}", v.file),
    }
}

fn independent_unseal(
    v: &mut Vector,
    ks: &[u8],
    unlock: &Unlock,
    slots: &[&str],
    volume_secret: &[u8; 32],
) {
    assert_eq!(&ks[0..8], b"KMSFS-KS");
    assert_eq!(u16::from_be_bytes([ks[8], ks[9]]), 1);
    let n = ks[38] as usize;
    assert_eq!(n, slots.len());
    let env = Envelope::decode(ks).unwrap();
    let kinds: Vec<&str> = env
        .slots
        .iter()
        .map(|s| match s.kind {
            SlotKind::Passphrase => "passphrase",
            SlotKind::RecoveryKey => "recovery-key",
        })
        .collect();
    assert_eq!(kinds, slots);
    let mut store_key = None;
    for i in 0..n {
        let s = &ks[39 + 105 * i..][..105];
        let u32_at = |o: usize| u32::from_be_bytes(s[o..o + 4].try_into().unwrap());
        let salt: [u8; 32] = s[13..45].try_into().unwrap();
        let kek = match (s[0], unlock) {
            (1, Unlock::Passphrase(p)) => {
                let params = KdfParams {
                    memory_kib: u32_at(1),
                    iterations: u32_at(5),
                    parallelism: u32_at(9),
                };
                argon2id(p, &salt, &params).unwrap()
            }
            (2, Unlock::RecoveryKey(k)) => hkdf_subkey(k, &salt, "kmsfs/v1/recovery-slot"),
            _ => continue,
        };
        let mut aad = ks[0..26].to_vec();
        aad.extend_from_slice(&s[0..45]);
        let k = Aead::new(&kek).open(&aad, &s[45..105]).unwrap();
        store_key = Some(Key256::from_slice(&k).unwrap());
    }
    let store_key = store_key.expect("a slot opens");
    let body_at = 39 + 105 * n;
    let mut sealed = ks[body_at..].to_vec();
    let body = Aead::new(&store_key).open(&ks[..body_at], &sealed).unwrap();
    sealed.clear();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let obj = j.as_object().unwrap();
    let fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = v
        .str("body-fields")
        .split(',')
        .map(str::to_string)
        .collect::<Vec<_>>();
    want.sort();
    let mut got: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "{}: body JSON fields", v.file);
    assert_eq!(j["format"], 1);
    assert_eq!(j["volume_secret"], hex::encode(volume_secret));
    assert_eq!(j["keys"][0]["state"], "Enabled");
    assert_eq!(j["keys"][0]["versions"][0]["version"], 1);
    // The unauthenticated-looking prefix fields agree with the authenticated body.
    assert_eq!(
        u32::from_be_bytes(ks[34..38].try_into().unwrap()) as usize,
        j["keys"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(j["volume_id"], hex::encode(&ks[10..26]));
}

// ---------------------------------------------------------------------------------------------

/// Cases that must exist: deleting a vector file must not make the suite pass silently.
const REQUIRED: &[&str] = &[
    "content-block-final-short",
    "content-block-full",
    "content-block-empty-final",
    "content-block-high-number",
    "content-block-flip-ciphertext",
    "content-block-flip-tag",
    "content-block-flip-nonce",
    "content-block-swapped-position",
    "content-block-final-flag-dropped",
    "content-block-transplanted",
    "content-block-zeroed",
    "cipher-file-3-blocks",
    "cipher-file-truncated-at-block-boundary",
    "cipher-file-blocks-swapped",
    "cipher-file-header-from-other-volume",
    "encryption-context",
    "file-header",
    "file-header-flip-wrapped-dek",
    "file-header-flip-key-version",
    "file-header-flip-file-id",
    "file-header-other-volume",
    "file-header-bad-magic",
    "file-header-bad-version",
    "file-header-unknown-flags",
    "file-header-sparse-flag-set",
    "name-short",
    "name-unicode",
    "name-at-root",
    "name-long",
    "name-other-directory",
    "name-flip",
    "name-long-other-directory",
    "name-control-dir-reserved",
    "name-too-long",
    "symlink-target",
    "symlink-target-flip",
    "symlink-long-target",
    "symlink-long-target-flip",
    "xattr",
    "xattr-value-other-name",
    "xattr-pack",
    "xattr-pack-flip",
    "xattr-pack-as-value",
    "hkdf-names",
    "hkdf-symlink-targets",
    "hkdf-xattr-names",
    "hkdf-xattr-values",
    "argon2id-fast-insecure",
    "key-store",
    "key-store-recovery-key",
    "key-store-wrong-passphrase",
    "key-store-flip-slot-salt",
    "key-store-flip-slot-wrap",
    "key-store-flip-volume-id",
    "key-store-flip-generation",
    "key-store-flip-key-count",
    "key-store-flip-body",
    "key-store-flip-body-tag",
    "interrupted-write-marker",
    "interrupted-write-marker-flip",
];

#[test]
fn known_answer_vectors() {
    let mut seen = BTreeSet::new();
    let mut entries: Vec<_> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&p).unwrap();
        let mut v = Vector::parse(&name, &text);
        let case = v.fields.get("case").cloned().unwrap_or_default();
        assert_eq!(format!("{case}.txt"), name, "case name matches file name");
        check_vector(&mut v);
        v.finish();
        seen.insert(case);
    }
    for r in REQUIRED {
        assert!(seen.contains(*r), "vector {r}.txt is missing");
    }
    assert_eq!(
        seen.len(),
        REQUIRED.len(),
        "update REQUIRED when adding vectors"
    );
}

/// Worked sizes of docs/FORMAT.md.
#[test]
fn documented_sizes() {
    let l = Layout::new(4096);
    assert_eq!(l.cipher_size(0), 132);
    assert_eq!(l.cipher_size(1), 133);
    assert_eq!(l.cipher_size(4095), 4227);
    assert_eq!(l.cipher_size(4096), 4256);
    assert_eq!(l.cipher_size(4097), 4257);
    assert_eq!(l.cipher_size(1 << 20), 1_055_876);
    assert_eq!(l.cipher_offset(0), 104);
    assert_eq!(l.cipher_offset(1), 4228);
    assert_eq!(l.cipher_offset(256), 1_055_848);
    assert_eq!(l.plain_size(4228), None);
    assert_eq!(HEADER_LEN, 104);
    assert_eq!(BLOCK_OVERHEAD, 28);
    assert_eq!(BLOCK_AAD_LEN, 25);
    assert_eq!(WRAP_LEN, 60);
    assert_eq!(kmsfs::format::keystore::SLOT_LEN, 105);
    assert_eq!(kmsfs::format::keystore::KS_PREFIX_LEN, 38);
    // The name limit: a name of n bytes is stored as ceil(4(n+16)/3) base64url characters.
    let n = Names::new(&Key256::from_bytes([0; 32]), false);
    let d = DirId([0; 16]);
    let short_max = (1..=255)
        .filter(|len| {
            n.encrypt(&d, &vec![b'a'; *len], false)
                .unwrap()
                .long
                .is_none()
        })
        .max()
        .unwrap();
    assert_eq!(short_max, 175);
}

// ---------------------------------------------------------------------------------------------
// The generator. Run once; its output is checked in.

#[test]
#[ignore = "writes tests/vectors; run with KMSFS_WRITE_VECTORS=1 after a deliberate format change"]
fn regenerate_vectors() {
    if std::env::var("KMSFS_WRITE_VECTORS").as_deref() != Ok("1") {
        eprintln!("set KMSFS_WRITE_VECTORS=1 to write tests/vectors");
        return;
    }
    std::fs::create_dir_all(vectors_dir()).unwrap();
    gen_content_blocks();
    gen_cipher_files();
    gen_header();
    gen_names();
    gen_symlink_xattr();
    gen_long_symlink();
    gen_xattr_pack();
    gen_kdf();
    gen_key_store();
    gen_marker();
}

fn gen_marker() {
    let dek_b: [u8; 32] = pattern(0x00);
    let dek = Key256::from_bytes(dek_b);
    let fid = FileId(pattern(0xa0));
    let fc = FileCipher::new(&dek, fid, 4096);
    let (first, target, holes) = (3u64, 0u64, 5u64);
    let mut fields = [0u8; 24];
    fields[..8].copy_from_slice(&first.to_le_bytes());
    fields[8..16].copy_from_slice(&target.to_le_bytes());
    fields[16..].copy_from_slice(&holes.to_le_bytes());
    let mut marker = fields.to_vec();
    marker.extend_from_slice(&fc.marker_tag(&fields));
    let write = |case: &str, expect: &str, comment: &str, m: &[u8]| {
        let mut w = Writer::new(case, "interrupted-write-marker", expect, comment);
        w.h("dek", &dek_b)
            .h("file-id", &fid.0)
            .f("first", first)
            .f("target", target)
            .f("holes", holes)
            .h("aad", &marker_aad(&fid, &fields))
            .h("marker", m);
        w.write();
    };
    write(
        "interrupted-write-marker",
        "ok",
        "blocks from 3 on being rewritten, growing, 5 holes before block 3",
        &marker,
    );
    let mut flipped = marker.clone();
    flipped[0] ^= 1;
    write(
        "interrupted-write-marker-flip",
        "auth-failure",
        "the first block changed to 2 without a new tag (a cut one block earlier)",
        &flipped,
    );
}

fn gen_content_blocks() {
    let dek_b: [u8; 32] = pattern(0x00);
    let dek = Key256::from_bytes(dek_b);
    let fid = FileId(pattern(0xa0));
    let nonce: [u8; 12] = pattern(0xc0);
    let enc = |block: u64, fin: bool, fid: FileId, plain: &[u8]| -> Vec<u8> {
        let mut out = vec![0u8; plain.len() + BLOCK_OVERHEAD];
        FileCipher::new(&dek, fid, 4096).encrypt_block(block, fin, &nonce, plain, &mut out);
        out
    };
    let ok = |case: &str, comment: &str, block: u64, fin: bool, plain: &[u8]| {
        let mut w = Writer::new(case, "content-block", "ok", comment);
        w.h("dek", &dek_b)
            .h("file-id", &fid.0)
            .f("block-size", 4096)
            .f("block", block)
            .f("final", fin)
            .h("nonce", &nonce)
            .h("aad", &block_aad(&fid, block, fin))
            .h("plaintext", plain)
            .h("ciphertext", &enc(block, fin, fid, plain));
        w.write();
    };
    let short = b"It works!\n";
    ok(
        "content-block-final-short",
        "the final block 0 of the 10-byte file \"It works!\\n\"",
        0,
        true,
        short,
    );
    let full: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    ok(
        "content-block-full",
        "a full, non-final block 0 (plaintext byte i = 7i mod 256)",
        0,
        false,
        &full,
    );
    ok(
        "content-block-empty-final",
        "the empty final block 1 of a 4096-byte file",
        1,
        true,
        b"",
    );
    ok(
        "content-block-high-number",
        "final block 0x0102030405 (pins the big-endian block number)",
        0x01_0203_0405,
        true,
        short,
    );
    // Negative vectors: the tampered bytes and, for reference, the original.
    let orig = enc(0, true, fid, short);
    let bad = |case: &str, comment: &str, ct: Vec<u8>, block: u64, fin: bool, fid_seen: FileId| {
        let mut w = Writer::new(case, "content-block", "auth-failure", comment);
        w.h("dek", &dek_b)
            .h("file-id", &fid_seen.0)
            .f("block-size", 4096)
            .f("block", block)
            .f("final", fin)
            .h("aad", &block_aad(&fid_seen, block, fin))
            .h("plaintext", short)
            .h("ciphertext", &ct)
            .h("original-ciphertext", &orig)
            .h("original-file-id", &fid.0)
            .f("original-block", 0)
            .f("original-final", true);
        w.write();
    };
    let flip = |i: usize| {
        let mut c = orig.clone();
        c[i] ^= 0x01;
        c
    };
    bad(
        "content-block-flip-ciphertext",
        "one bit of the ciphertext flipped (byte 12)",
        flip(12),
        0,
        true,
        fid,
    );
    bad(
        "content-block-flip-tag",
        "one bit of the tag flipped (last byte)",
        flip(orig.len() - 1),
        0,
        true,
        fid,
    );
    bad(
        "content-block-flip-nonce",
        "one bit of the stored nonce flipped (byte 0)",
        flip(0),
        0,
        true,
        fid,
    );
    bad(
        "content-block-swapped-position",
        "block 0 presented as block 1 (blocks swapped or moved)",
        orig.clone(),
        1,
        true,
        fid,
    );
    bad(
        "content-block-final-flag-dropped",
        "the final block presented as non-final (the file was extended past it)",
        orig.clone(),
        0,
        false,
        fid,
    );
    bad(
        "content-block-transplanted",
        "the block presented as block 0 of another file with the same DEK",
        orig.clone(),
        0,
        true,
        FileId(pattern(0xb0)),
    );
    bad(
        "content-block-zeroed",
        "the block overwritten with zeros",
        vec![0u8; orig.len()],
        0,
        true,
        fid,
    );
}

/// Header inputs shared by the header and cipher-file vectors.
struct HeaderInputs {
    volume: VolumeId,
    material: [u8; 32],
    file_id: FileId,
    key_id: KeyId,
    version: u32,
    nonce: [u8; 12],
    dek: [u8; 32],
}

fn header_inputs() -> HeaderInputs {
    HeaderInputs {
        volume: VolumeId(pattern(0x80)),
        material: pattern(0x40),
        file_id: FileId(pattern(0xa0)),
        key_id: "11111111-2222-3333-4444-555555555555".parse().unwrap(),
        version: 3,
        nonce: pattern(0xd0),
        dek: pattern(0x00),
    }
}

fn make_header(i: &HeaderInputs) -> FileHeader {
    let mut h = FileHeader {
        file_id: i.file_id,
        key_id: i.key_id,
        key_version: i.version,
        flags: 0,
        wrapped_dek: [0; WRAP_LEN],
    };
    let sealed = Aead::new(&Key256::from_bytes(i.material)).seal_with_nonce(
        &i.nonce,
        &h.wrap_aad(&i.volume),
        &i.dek,
    );
    h.wrapped_dek.copy_from_slice(&sealed);
    h
}

fn gen_header() {
    let i = header_inputs();
    let h = make_header(&i);
    let mut w = Writer::new("encryption-context", "encryption-context", "ok", "");
    w.h("volume-id", &i.volume.0)
        .h("file-id", &i.file_id.0)
        .f("key-id", i.key_id)
        .f("key-version", i.version)
        .h(
            "encoded",
            &EncryptionContext::for_file(&i.volume, &i.file_id, &i.key_id, i.version).encode(),
        );
    w.write();

    let mut w = Writer::new(
        "file-header",
        "file-header",
        "ok",
        "a file header whose DEK is the content-block vectors' DEK",
    );
    w.h("volume-id", &i.volume.0)
        .h("key-material", &i.material)
        .h("file-id", &i.file_id.0)
        .f("key-id", i.key_id)
        .f("key-version", i.version)
        .h("wrap-nonce", &i.nonce)
        .h("dek", &i.dek)
        .h("wrap-aad", &h.wrap_aad(&i.volume))
        .h("header", &h.encode());
    w.write();

    let bad = |case: &str, expect: &str, comment: &str, off: usize, volume: VolumeId| {
        let mut b = h.encode();
        if off < HEADER_LEN {
            b[off] ^= 0x01;
        }
        let mut w = Writer::new(case, "file-header", expect, comment);
        w.h("volume-id", &volume.0)
            .h("key-material", &i.material)
            .h("dek", &i.dek)
            .h("header", &b);
        w.write();
    };
    bad(
        "file-header-flip-wrapped-dek",
        "auth-failure",
        "one bit of the wrapped DEK flipped (byte 56)",
        56,
        i.volume,
    );
    bad(
        "file-header-flip-key-version",
        "auth-failure",
        "key version 3 changed to 2 (byte 43): the encryption context differs",
        43,
        i.volume,
    );
    bad(
        "file-header-flip-file-id",
        "auth-failure",
        "one bit of the file id flipped (byte 8)",
        8,
        i.volume,
    );
    bad(
        "file-header-other-volume",
        "auth-failure",
        "the header unwrapped in another volume (volume id differs)",
        usize::MAX,
        VolumeId(pattern(0x81)),
    );
    bad(
        "file-header-bad-magic",
        "format-error",
        "magic KMSF changed to JMSF",
        0,
        i.volume,
    );
    bad(
        "file-header-bad-version",
        "format-error",
        "format version 1 changed to 0",
        5,
        i.volume,
    );
    bad(
        "file-header-unknown-flags",
        "format-error",
        "flags 0x0000 changed to 0x0100 (an unknown bit)",
        6,
        i.volume,
    );
    bad(
        "file-header-sparse-flag-set",
        "auth-failure",
        "flags 0x0000 changed to 0x0001 (FLAG_SPARSE) without sealing the DEK again: the flags are in the wrap's associated data",
        7,
        i.volume,
    );
}

fn gen_cipher_files() {
    let i = header_inputs();
    let h = make_header(&i);
    let bs = 512u32;
    let fc = FileCipher::new(&Key256::from_bytes(i.dek), i.file_id, bs);
    let plain: Vec<u8> = (0..1024u32).map(|x| (x % 251) as u8).collect();
    let mut file = h.encode().to_vec();
    for (b, chunk) in [&plain[..512], &plain[512..], &[][..]].iter().enumerate() {
        let mut out = vec![0u8; chunk.len() + BLOCK_OVERHEAD];
        let nonce: [u8; 12] = pattern(0x10 * (b as u8 + 1));
        fc.encrypt_block(b as u64, b == 2, &nonce, chunk, &mut out);
        file.extend_from_slice(&out);
    }
    assert_eq!(file.len(), 104 + 2 * 540 + 28);
    let w = |case: &str, expect: &str, comment: &str, f: &[u8], volume: VolumeId| {
        let mut w = Writer::new(case, "cipher-file", expect, comment);
        w.h("volume-id", &volume.0)
            .h("key-material", &i.material)
            .f("block-size", bs)
            .h("plaintext", &plain)
            .h("cipher-file", f);
        w.write();
    };
    w(
        "cipher-file-3-blocks",
        "ok",
        "a 1024-byte file with block size 512: header, two full blocks, empty final block (1212 bytes)",
        &file,
        i.volume,
    );
    w(
        "cipher-file-truncated-at-block-boundary",
        "format-error",
        "the empty final block cut off: 1184 bytes is no valid cipher size",
        &file[..file.len() - 28],
        i.volume,
    );
    let mut sw = file.clone();
    sw[104..644].copy_from_slice(&file[644..1184]);
    sw[644..1184].copy_from_slice(&file[104..644]);
    w(
        "cipher-file-blocks-swapped",
        "auth-failure",
        "blocks 0 and 1 swapped",
        &sw,
        i.volume,
    );
    w(
        "cipher-file-header-from-other-volume",
        "auth-failure",
        "the same file read in another volume",
        &file,
        VolumeId(pattern(0x81)),
    );
}

fn gen_names() {
    let secret_b: [u8; 32] = pattern(0x60);
    let secret = Key256::from_bytes(secret_b);
    let names = Names::new(&secret, false);
    let nk = hkdf_subkey(&secret, b"", "kmsfs/v1/names");
    let dir = DirId(pattern(0xe0));
    let root = DirId(pattern(0xf0));
    let aad = |d: &DirId| {
        let mut a = b"kmsfsN".to_vec();
        a.extend_from_slice(&d.0);
        a
    };
    let ok = |case: &str, comment: &str, d: DirId, at_root: bool, name: &[u8]| {
        let c = names.encrypt(&d, name, at_root).unwrap();
        let mut w = Writer::new(case, "name", "ok", comment);
        w.h("volume-secret", &secret_b)
            .h("names-key", nk.expose())
            .h("dir-id", &d.0)
            .f("at-root", at_root)
            .h("name", name)
            .h("aad", &aad(&d))
            .f("entry", c.entry.to_str().unwrap());
        if let Some(l) = &c.long {
            w.f("side-file", l);
        }
        w.write();
        c
    };
    let short = ok(
        "name-short",
        "\"It works.txt\" in a subdirectory",
        dir,
        false,
        b"It works.txt",
    );
    ok(
        "name-unicode",
        "\"\u{fc}n\u{ef}c\u{f8}d\u{e9} \u{20ac}.txt\" (UTF-8 bytes)",
        dir,
        false,
        "\u{fc}n\u{ef}c\u{f8}d\u{e9} \u{20ac}.txt".as_bytes(),
    );
    ok(
        "name-at-root",
        "\"It works.txt\" in the root directory (another dir id: another cipher name)",
        root,
        true,
        b"It works.txt",
    );
    let long_name: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
    let long = ok(
        "name-long",
        "a 200-byte name: 288 base64url characters > 255, so a hashed entry plus side file",
        dir,
        false,
        &long_name,
    );
    let bad = |case: &str, comment: &str, d: DirId, stored: &str| {
        let mut w = Writer::new(case, "name", "auth-failure", comment);
        w.h("volume-secret", &secret_b)
            .h("dir-id", &d.0)
            .f("at-root", false)
            .f("stored", stored);
        w.write();
    };
    bad(
        "name-other-directory",
        "the entry of name-short moved into another directory",
        root,
        short.entry.to_str().unwrap(),
    );
    let mut raw = B64.decode(short.entry.to_str().unwrap()).unwrap();
    raw[0] ^= 0x01;
    bad(
        "name-flip",
        "one bit of the encrypted name-short flipped",
        dir,
        &B64.encode(&raw),
    );
    bad(
        "name-long-other-directory",
        "the side file of name-long read in another directory",
        root,
        long.long.as_deref().unwrap(),
    );
    let mut w = Writer::new(
        "name-control-dir-reserved",
        "name",
        "reserved",
        "\".kmsfs\" cannot be created in the root directory",
    );
    w.h("volume-secret", &secret_b)
        .h("dir-id", &root.0)
        .f("at-root", true)
        .h("name", b".kmsfs");
    w.write();
    let mut w = Writer::new(
        "name-too-long",
        "name",
        "too-long",
        "a 256-byte name is refused (NAME_MAX = 255)",
    );
    w.h("volume-secret", &secret_b)
        .h("dir-id", &dir.0)
        .f("at-root", false)
        .h("name", &[b'x'; 256]);
    w.write();
}

fn gen_long_symlink() {
    let secret_b: [u8; 32] = pattern(0x60);
    let secret = Key256::from_bytes(secret_b);
    let sk = hkdf_subkey(&secret, b"", "kmsfs/v1/symlink-targets");
    let nonce: [u8; 12] = pattern(0x30);
    let id: [u8; 16] = pattern(0x40);
    let target = b"../long/path/segment-".repeat(200)[..3050].to_vec();
    let aad = [&b"kmsfs long symlink"[..], &id].concat();
    let side = Aead::new(&sk).seal_with_nonce(&nonce, &aad, &target);
    let stored = format!("kmsfs.link.{}", B64.encode(id));
    let header = |w: &mut Writer| {
        w.h("volume-secret", &secret_b)
            .h("symlink-key", sk.expose())
            .h("link-id", &id)
            .f("stored", &stored);
    };
    let mut w = Writer::new(
        "symlink-long-target",
        "symlink-long-target",
        "ok",
        "a 3,050-byte target (\"../long/path/segment-\" repeated, cut at 3,050 bytes): the \
         backing symlink holds \"stored\", the side file .kmsfs/links/<base64url(link-id)> holds \
         \"side-file\"",
    );
    header(&mut w);
    w.h("nonce", &nonce)
        .h("target", &target)
        .h("side-file", &side);
    w.write();
    let mut bad = side.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    let mut w = Writer::new(
        "symlink-long-target-flip",
        "symlink-long-target",
        "auth-failure",
        "symlink-long-target.txt with one bit of the side file's ciphertext flipped",
    );
    header(&mut w);
    w.h("side-file", &bad);
    w.write();
}

fn gen_symlink_xattr() {
    let secret_b: [u8; 32] = pattern(0x60);
    let secret = Key256::from_bytes(secret_b);
    let names = Names::new(&secret, false);
    let sk = hkdf_subkey(&secret, b"", "kmsfs/v1/symlink-targets");
    let nonce: [u8; 12] = pattern(0x30);
    let target = b"../It works.txt";
    let stored = B64.encode(Aead::new(&sk).seal_with_nonce(&nonce, b"kmsfs symlink", target));
    assert_eq!(names.decrypt_symlink(stored.as_bytes()).unwrap(), target);
    let mut w = Writer::new(
        "symlink-target",
        "symlink-target",
        "ok",
        "the backing symlink's target for \"../It works.txt\"",
    );
    w.h("volume-secret", &secret_b)
        .h("symlink-key", sk.expose())
        .h("nonce", &nonce)
        .h("target", target)
        .f("stored", &stored);
    w.write();
    let mut raw = B64.decode(&stored).unwrap();
    raw[20] ^= 0x01;
    let mut w = Writer::new(
        "symlink-target-flip",
        "symlink-target",
        "auth-failure",
        "one bit of the encrypted target flipped",
    );
    w.h("volume-secret", &secret_b)
        .f("stored", B64.encode(&raw));
    w.write();

    let user = b"comment";
    let bname = names.encrypt_xattr_name(user);
    let vk = hkdf_subkey(&secret, b"", "kmsfs/v1/xattr-values");
    let vnonce: [u8; 12] = pattern(0x50);
    let value = b"reviewed";
    let stored = Aead::new(&vk).seal_with_nonce(&vnonce, bname.as_bytes(), value);
    let mut w = Writer::new(
        "xattr",
        "xattr",
        "ok",
        "user.comment = \"reviewed\": the backing xattr name and value",
    );
    w.h("volume-secret", &secret_b)
        .h("user-name-suffix", user)
        .f("backing-name", &bname)
        .h("value", value)
        .h("value-nonce", &vnonce)
        .h("stored-value", &stored);
    w.write();
    let other = names.encrypt_xattr_name(b"other");
    let mut w = Writer::new(
        "xattr-value-other-name",
        "xattr",
        "auth-failure",
        "the value of user.comment copied to user.other",
    );
    w.h("volume-secret", &secret_b)
        .f("backing-name", &other)
        .h("stored-value", &stored);
    w.write();
}

fn gen_xattr_pack() {
    let secret_b: [u8; 32] = pattern(0x60);
    let secret = Key256::from_bytes(secret_b);
    let names = Names::new(&secret, false);
    let vk = hkdf_subkey(&secret, b"", "kmsfs/v1/xattr-values");
    let nonce: [u8; 12] = pattern(0x70);
    let entries: [(&[u8], &[u8]); 3] = [
        (b"comment", b"reviewed"),
        (b"empty", b""),
        (b"checksum.sha256", &[0x00, 0xff, 0x10]),
    ];
    let mut pack = XattrPack::default();
    for (n, val) in entries {
        pack.set(n, val);
    }
    let plain = pack.encode();
    let stored = Aead::new(&vk).seal_with_nonce(&nonce, b"user.kmsfs.p", &plain);
    assert_eq!(names.decrypt_xattr_pack(&stored).unwrap(), plain);
    let mut w = Writer::new(
        "xattr-pack",
        "xattr-pack",
        "ok",
        "user.comment = \"reviewed\", user.empty = \"\", user.checksum.sha256 = 00 ff 10, packed in user.kmsfs.p",
    );
    w.h("volume-secret", &secret_b);
    for (i, (n, val)) in entries.iter().enumerate() {
        w.h(&format!("name-{i}"), n).h(&format!("value-{i}"), val);
    }
    w.h("pack", &plain).h("nonce", &nonce).h("stored", &stored);
    w.write();
    let mut flipped = stored.clone();
    flipped[14] ^= 0x01;
    let mut w = Writer::new(
        "xattr-pack-flip",
        "xattr-pack",
        "auth-failure",
        "one bit of the encrypted pack flipped",
    );
    w.h("volume-secret", &secret_b).h("stored", &flipped);
    w.write();
    let bname = names.encrypt_xattr_name(b"comment");
    let single = Aead::new(&vk).seal_with_nonce(&nonce, bname.as_bytes(), &plain);
    let mut w = Writer::new(
        "xattr-pack-as-value",
        "xattr-pack",
        "auth-failure",
        "the same bytes sealed as the value of user.comment (bound to its backing name) are no pack",
    );
    w.h("volume-secret", &secret_b).h("stored", &single);
    w.write();
}

fn gen_kdf() {
    let secret_b: [u8; 32] = pattern(0x60);
    let secret = Key256::from_bytes(secret_b);
    for p in PURPOSES {
        let case = format!("hkdf-{}", p.trim_start_matches("kmsfs/v1/"));
        let mut w = Writer::new(
            &case,
            "hkdf",
            "ok",
            "HKDF-SHA256 of the volume secret, empty salt",
        );
        w.h("ikm", &secret_b)
            .h("salt", b"")
            .f("info", p)
            .h("okm", hkdf_subkey(&secret, b"", p).expose());
        w.write();
    }
    let salt: [u8; 32] = pattern(0x20);
    let p = KdfParams::FAST_INSECURE;
    let key = argon2id(&Passphrase::new(PASSPHRASE.into()), &salt, &p).unwrap();
    let mut w = Writer::new(
        "argon2id-fast-insecure",
        "argon2id",
        "ok",
        "Argon2id v1.3, 32-byte output, with the INSECURE test parameters",
    );
    w.f("passphrase", PASSPHRASE)
        .h("salt", &salt)
        .f("memory-kib", p.memory_kib)
        .f("iterations", p.iterations)
        .f("parallelism", p.parallelism)
        .h("key", key.expose());
    w.write();
}

fn gen_key_store() {
    let ks_path = vectors_dir().join("key-store.keystore");
    let cfg_path = vectors_dir().join("key-store.volume.json");
    let rk_path = vectors_dir().join("key-store.recovery-key");
    if !ks_path.exists() {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("v");
        let opts = kmsfs::keymgr::InitOptions {
            kdf: KdfParams::FAST_INSECURE,
            ..Default::default()
        };
        let rk = kmsfs::keymgr::init(&vol, &Passphrase::new(PASSPHRASE.into()), &opts)
            .unwrap()
            .unwrap();
        std::fs::copy(vol.join(".kmsfs/keystore"), &ks_path).unwrap();
        std::fs::copy(vol.join(".kmsfs/volume.json"), &cfg_path).unwrap();
        std::fs::write(&rk_path, kmsfs::keymgr::format_recovery_key(&rk)).unwrap();
    }
    let ks = std::fs::read(&ks_path).unwrap();
    let rk = std::fs::read_to_string(&rk_path).unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join(".kmsfs")).unwrap();
    std::fs::copy(&ks_path, d.path().join(".kmsfs/keystore")).unwrap();
    std::fs::copy(&cfg_path, d.path().join(".kmsfs/volume.json")).unwrap();
    let u = kmsfs::keymgr::unlock(
        d.path(),
        &Unlock::Passphrase(Passphrase::new(PASSPHRASE.into())),
    )
    .unwrap();
    let dk = u.store.default_key;
    let body_fields = serde_json::to_value(&u.store)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let base = |case: &str, expect: &str, comment: &str| {
        let mut w = Writer::new(case, "key-store", expect, comment);
        w.f("keystore-file", "key-store.keystore")
            .f("volume-json-file", "key-store.volume.json")
            .h("keystore-sha256", &sha256(&ks));
        w
    };
    let full = |w: &mut Writer| {
        w.f("volume-id", u.store.volume_id)
            .f("generation", u.generation())
            .f("key-count", u.store.keys.len())
            .f("slots", "passphrase,recovery-key")
            .f("default-key", dk)
            .f(
                "key-material-v1",
                hex::encode(
                    u.store.key(&dk).unwrap().versions[0]
                        .material
                        .as_ref()
                        .unwrap()
                        .expose(),
                ),
            )
            .f("volume-secret", hex::encode(u.store.volume_secret.expose()))
            .f("config-digest", &u.store.config_digest)
            .f("body-fields", &body_fields);
    };
    let mut w = base(
        "key-store",
        "ok",
        "a sealed key store made by kmsfs init (KdfParams::FAST_INSECURE) unlocked by passphrase",
    );
    w.f("passphrase", PASSPHRASE);
    full(&mut w);
    w.write();
    let mut w = base(
        "key-store-recovery-key",
        "ok",
        "the same key store unlocked by its recovery key",
    );
    w.f("recovery-key", rk.trim());
    full(&mut w);
    w.write();
    let mut w = base(
        "key-store-wrong-passphrase",
        "wrong-passphrase",
        "a wrong passphrase",
    );
    w.f("passphrase", "incorrect horse battery staple");
    w.write();
    let n = ks[38] as usize;
    let body = 39 + 105 * n;
    for (case, expect, comment, off) in [
        (
            "key-store-flip-slot-salt",
            "wrong-passphrase",
            "one bit of the passphrase slot's salt flipped (byte 52): another KEK",
            39 + 13,
        ),
        (
            "key-store-flip-slot-wrap",
            "wrong-passphrase",
            "one bit of the passphrase slot's wrapped store key flipped (byte 96)",
            39 + 57,
        ),
        (
            "key-store-flip-volume-id",
            "key-store-corrupt",
            "one bit of the volume id flipped (byte 10): not volume.json's (and bound by every slot)",
            10,
        ),
        (
            "key-store-flip-generation",
            "key-store-corrupt",
            "the generation changed (byte 33): the slot opens, the body does not",
            33,
        ),
        (
            "key-store-flip-key-count",
            "key-store-corrupt",
            "the key count changed (byte 37)",
            37,
        ),
        (
            "key-store-flip-body",
            "key-store-corrupt",
            "one bit of the body ciphertext flipped",
            body + 12 + 5,
        ),
        (
            "key-store-flip-body-tag",
            "key-store-corrupt",
            "one bit of the body tag flipped (last byte)",
            ks.len() - 1,
        ),
    ] {
        let mut w = base(case, expect, comment);
        w.f("passphrase", PASSPHRASE).f("flip-offset", off);
        w.write();
    }
}

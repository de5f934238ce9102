//! The plaintext of an xattr pack (`format::xattr_pack`, FORMAT.md §7: every small attribute of
//! a file, read after decryption) and POSIX ACL values (`format::acl`: what local users pass to
//! setxattr with `--acl`, and what is stored).
//!
//! - `XattrPack::decode` never panics; what it accepts is canonical (encoding it again gives the
//!   same bytes) and has unique names; set/remove keep it decodable;
//! - `Acl::decode` never panics; an accepted ACL encodes to bytes that decode to it again, its
//!   text form and mode arithmetic never panic; `chmod` leaves a valid ACL whose mode classes
//!   are the mode's; `create_masq` leaves a valid ACL and returns the mode (and equivalence)
//!   that ACL gives.
#![no_main]

use kmsfs::format::acl::Acl;
use kmsfs::format::xattr_pack::XattrPack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut p) = XattrPack::decode(data) {
        assert_eq!(p.encode(), data, "a pack decoded from non-canonical bytes");
        let names: Vec<Vec<u8>> = p.names().map(<[u8]>::to_vec).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "a repeated name was accepted");
            assert!(p.get(n).is_some());
        }
        p.set(b"fuzz", data);
        assert_eq!(XattrPack::decode(&p.encode()).as_ref(), Ok(&p));
        if let Some(first) = names.first() {
            assert!(p.remove(first));
            assert!(p.get(first).is_none());
            assert_eq!(XattrPack::decode(&p.encode()).as_ref(), Ok(&p));
        }
    }

    if let Some(acl) = Acl::decode(data) {
        let again = Acl::decode(&acl.encode()).expect("an encoded ACL decodes");
        assert_eq!(again, acl);
        let _ = acl.to_text();
        // Any of the 512 permission modes, from the last two bytes.
        let mode = match data {
            [.., a, b] => (u32::from(*a) << 8 | u32::from(*b)) & 0o777,
            _ => 0o644,
        };
        let (m, _) = acl.equiv_mode(0o100000 | mode);
        assert_eq!(m & 0o170000, 0o100000, "the file type bits changed");
        let mut c = acl.clone();
        c.chmod(mode);
        let c = Acl::decode(&c.encode()).expect("an ACL after chmod is valid");
        assert_eq!(c.equiv_mode(0).0 & 0o777, mode & 0o777, "chmod did not set the classes");
        let mut d = acl.clone();
        let masq = d.create_masq(0o100000 | mode);
        assert!(Acl::decode(&d.encode()).is_some(), "create_masq left an invalid ACL");
        assert_eq!(masq, d.equiv_mode(0o100000 | mode), "create_masq's mode is not its ACL's");
    }
});

//! POSIX ACLs as the kernel hands them to a file system: the value of
//! `system.posix_acl_access` / `system.posix_acl_default` (a little-endian u32 version, 2, then
//! per entry a u16 tag, a u16 permission set and a u32 user or group id, in tag order), which is
//! also how kmsfs stores them (encrypted like every extended attribute, docs/FORMAT.md §7).
//! The rules that tie an access ACL to the mode bits are the kernel's (fs/posix_acl.c): its
//! owner, mask (or owning-group) and other entries are the mode's three classes. Pure logic; the
//! storage is `vfs::acl_ops`, and fsck checks stored ACLs with [`Acl::decode`].

/// The xattr names (only with `--acl`).
pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";
/// The names they are stored under (a zero byte and the full name, as every attribute outside
/// `user.`: `xattr_pack::full_name`).
pub const ACCESS_STORED: &[u8] = b"\0system.posix_acl_access";
pub const DEFAULT_STORED: &[u8] = b"\0system.posix_acl_default";

const VERSION: u32 = 2;
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;
/// The id of entries that name no user or group.
pub const UNDEFINED_ID: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed, valid ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parses and checks an ACL value as `posix_acl_valid` does: version 2; the entries in tag
    /// order, exactly one owner, owning-group and other entry, at most one mask and one
    /// whenever there are named entries (whose ids must be real ids; their order and repeats
    /// are not checked, as by the kernel); permissions within rwx. `None` if it is not one.
    pub fn decode(v: &[u8]) -> Option<Acl> {
        let (head, body) = v.split_first_chunk::<4>()?;
        if u32::from_le_bytes(*head) != VERSION || body.is_empty() || body.len() % 8 != 0 {
            return None;
        }
        let entries: Vec<Entry> = body
            .chunks_exact(8)
            .map(|c| {
                let tag = u16::from_le_bytes([c[0], c[1]]);
                Entry {
                    tag,
                    perm: u16::from_le_bytes([c[2], c[3]]),
                    // Only named entries carry an id (others are read as the undefined one).
                    id: match tag {
                        USER | GROUP => u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                        _ => UNDEFINED_ID,
                    },
                }
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        let named = count(USER) + count(GROUP);
        let ordered = entries.windows(2).all(|w| w[0].tag <= w[1].tag);
        let ok = ordered
            && entries.iter().all(|e| {
                e.perm & !7 == 0
                    && match e.tag {
                        USER | GROUP => e.id != UNDEFINED_ID,
                        USER_OBJ | GROUP_OBJ | MASK | OTHER => true,
                        _ => false,
                    }
            })
            && count(USER_OBJ) == 1
            && count(GROUP_OBJ) == 1
            && count(OTHER) == 1
            && count(MASK) <= 1
            && (named == 0 || count(MASK) == 1);
        ok.then_some(Acl { entries })
    }

    /// The short text form (`user::rw-,user:1000:r-x,group::r--,mask::r-x,other::---`), with
    /// numeric ids, as `getfacl -cn` would put it on one line.
    pub fn to_text(&self) -> String {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                let (tag, id) = match e.tag {
                    USER_OBJ => ("user", String::new()),
                    USER => ("user", e.id.to_string()),
                    GROUP_OBJ => ("group", String::new()),
                    GROUP => ("group", e.id.to_string()),
                    MASK => ("mask", String::new()),
                    _ => ("other", String::new()),
                };
                let p = |bit: u16, c: char| if e.perm & bit != 0 { c } else { '-' };
                format!("{tag}:{id}:{}{}{}", p(4, 'r'), p(2, 'w'), p(1, 'x'))
            })
            .collect();
        parts.join(",")
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// The mode this ACL gives (`mode`'s other bits kept), and whether the ACL says no more
    /// than those bits (then no ACL needs storing): `posix_acl_equiv_mode`.
    pub fn equiv_mode(&self, mode: u32) -> (u32, bool) {
        let mut m = 0u32;
        let mut equiv = true;
        for e in &self.entries {
            let p = u32::from(e.perm & 7);
            match e.tag {
                USER_OBJ => m |= p << 6,
                GROUP_OBJ => m |= p << 3,
                OTHER => m |= p,
                MASK => {
                    m = (m & !0o070) | (p << 3);
                    equiv = false;
                }
                _ => equiv = false,
            }
        }
        ((mode & !0o777) | m, equiv)
    }

    /// Follows a chmod: owner and other entries take the new owner and other bits, the mask
    /// (or, without one, the owning-group entry) the group bits (`__posix_acl_chmod`).
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.entries.iter().any(|e| e.tag == MASK);
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                MASK => e.perm = ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
                _ => {}
            }
        }
    }

    /// A new node's access ACL from its directory's default ACL and the mode it was created
    /// with: the owner, other and mask (or owning-group) entries are cut down to the mode's
    /// classes and the mode to theirs (`posix_acl_create_masq`). Returns the resulting mode
    /// (special bits kept) and whether the ACL is equivalent to it (then none is stored).
    pub fn create_masq(&mut self, mode: u32) -> (u32, bool) {
        let mut m = mode & 0o777;
        let mut equiv = true;
        let has_mask = self.entries.iter().any(|e| e.tag == MASK);
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((m >> 6) & 7) as u16;
                    m &= (u32::from(e.perm) << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= (m & 7) as u16;
                    m &= u32::from(e.perm) | !0o007;
                }
                USER | GROUP => equiv = false,
                _ => {}
            }
        }
        // The group class last: the mask if there is one, else the owning group.
        let class = if has_mask { MASK } else { GROUP_OBJ };
        if has_mask {
            equiv = false;
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.tag == class) {
            e.perm &= ((m >> 3) & 7) as u16;
            m &= (u32::from(e.perm) << 3) | !0o070;
        }
        ((mode & !0o777) | m, equiv)
    }
}

/// The value of an ACL of `(tag, perm, id)` entries, as given (valid or not).
#[cfg(test)]
pub(crate) fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    Acl {
        entries: entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect(),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: u32 = UNDEFINED_ID;

    /// user::rwx user:1000:r-x group::r-- mask::rwx other::---
    fn named() -> Vec<u8> {
        acl(&[
            (USER_OBJ, 7, U),
            (USER, 5, 1000),
            (GROUP_OBJ, 4, U),
            (MASK, 7, U),
            (OTHER, 0, U),
        ])
    }

    #[test]
    fn decode_round_trips_and_checks_validity() {
        let v = named();
        assert_eq!(Acl::decode(&v).expect("valid").encode(), v);
        let minimal = acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]);
        assert!(Acl::decode(&minimal).is_some());
        let bad: [&[u8]; 4] = [&[], &v[..4], &v[..v.len() - 1], &[3, 0, 0, 0]];
        for b in bad {
            assert_eq!(Acl::decode(b), None, "{b:?}");
        }
        // Version 1 with the same entries.
        let mut old = v.clone();
        old[0] = 1;
        assert_eq!(Acl::decode(&old), None);
        // The kernel takes named entries in any id order, repeats included (setfacl sorts).
        let repeated = acl(&[
            (USER_OBJ, 7, U),
            (USER, 5, 2),
            (USER, 4, 1),
            (USER, 4, 1),
            (GROUP_OBJ, 4, U),
            (MASK, 7, U),
            (OTHER, 0, U),
        ]);
        assert!(Acl::decode(&repeated).is_some());
        // Named entry without a mask; no owner; two owners; out of tag order; the undefined id
        // on a named entry; perm 8; an unknown tag.
        let invalid = [
            acl(&[
                (USER_OBJ, 7, U),
                (USER, 5, 1),
                (GROUP_OBJ, 4, U),
                (OTHER, 0, U),
            ]),
            acl(&[(GROUP_OBJ, 4, U), (OTHER, 0, U)]),
            acl(&[
                (USER_OBJ, 7, U),
                (USER_OBJ, 7, U),
                (GROUP_OBJ, 4, U),
                (OTHER, 0, U),
            ]),
            acl(&[(GROUP_OBJ, 4, U), (USER_OBJ, 7, U), (OTHER, 0, U)]),
            acl(&[
                (USER_OBJ, 7, U),
                (USER, 5, U),
                (GROUP_OBJ, 4, U),
                (MASK, 7, U),
                (OTHER, 0, U),
            ]),
            acl(&[(USER_OBJ, 8, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)]),
            acl(&[
                (USER_OBJ, 7, U),
                (GROUP_OBJ, 4, U),
                (OTHER, 0, U),
                (0x40, 0, U),
            ]),
        ];
        for a in invalid {
            assert_eq!(Acl::decode(&a), None, "{a:?}");
        }
    }

    #[test]
    fn every_single_byte_change_is_caught_or_still_valid() {
        // Not authenticated (the storage is): a flipped byte gives an invalid ACL or another
        // valid one (the id of an owner, owning-group, mask or other entry means nothing and is
        // written back as the undefined id), never a panic.
        let v = named();
        for i in 0..v.len() {
            let mut w = v.clone();
            w[i] ^= 0x01;
            if let Some(a) = Acl::decode(&w) {
                assert_eq!(Acl::decode(&a.encode()), Some(a));
            }
            // The version and every tag: refused.
            let tag = i >= 4 && (i - 4) % 8 < 2;
            if i < 4 || tag {
                assert_eq!(Acl::decode(&w), None, "byte {i}");
            }
        }
    }

    #[test]
    fn stored_names_are_the_acl_names_behind_a_zero_byte() {
        assert_eq!(ACCESS_STORED, [b"\0", ACCESS].concat());
        assert_eq!(DEFAULT_STORED, [b"\0", DEFAULT].concat());
    }

    #[test]
    fn text_form() {
        let a = Acl::decode(&named()).expect("valid");
        assert_eq!(
            a.to_text(),
            "user::rwx,user:1000:r-x,group::r--,mask::rwx,other::---"
        );
    }

    #[test]
    fn equivalent_mode() {
        let minimal = Acl::decode(&acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)]))
            .expect("valid");
        assert_eq!(minimal.equiv_mode(0o4777), (0o4640, true));
        // With a mask the group bits are the mask's.
        let a = Acl::decode(&named()).expect("valid");
        assert_eq!(a.equiv_mode(0o100644), (0o100770, false));
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other() {
        let mut a = Acl::decode(&named()).expect("valid");
        a.chmod(0o640);
        assert_eq!(
            a.encode(),
            acl(&[
                (USER_OBJ, 6, U),
                (USER, 5, 1000),
                (GROUP_OBJ, 4, U),
                (MASK, 4, U),
                (OTHER, 0, U),
            ])
        );
        let mut m = Acl::decode(&acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 7, U), (OTHER, 7, U)]))
            .expect("valid");
        m.chmod(0o751);
        assert_eq!(m.equiv_mode(0), (0o751, true));
    }

    #[test]
    fn create_masq_follows_the_kernel() {
        // Default user::rwx user:1000:r-x group::r-x mask::rwx other::r-x, created 0666.
        let mut a = Acl::decode(&acl(&[
            (USER_OBJ, 7, U),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, U),
            (MASK, 7, U),
            (OTHER, 5, U),
        ]))
        .expect("valid");
        assert_eq!(a.create_masq(0o100666), (0o100664, false));
        assert_eq!(
            a.encode(),
            acl(&[
                (USER_OBJ, 6, U),
                (USER, 5, 1000),
                (GROUP_OBJ, 5, U),
                (MASK, 6, U),
                (OTHER, 4, U),
            ])
        );
        // A minimal default ACL acts as a umask and is equivalent.
        let mut m = Acl::decode(&acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)]))
            .expect("valid");
        assert_eq!(m.create_masq(0o2777), (0o2750, true));
    }
}

//! 128-bit random identifiers. Shown as lowercase hex (volume, file, directory) or as a UUID
//! (KMS keys, like AWS key ids).

use std::fmt;
use std::str::FromStr;

use crate::crypto::random_array;

macro_rules! id128 {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn generate() -> Self {
                $name(random_array())
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id128!(
    VolumeId,
    "The random id of a volume, bound into every wrapped DEK."
);
id128!(
    FileId,
    "The random id of a file, in its header and bound into every block."
);
id128!(
    DirId,
    "The random id of a directory, bound into the names of its entries."
);
id128!(KeyId, "The random id of a KMS key, shown as a UUID.");

fn parse_hex16(s: &str) -> Result<[u8; 16], String> {
    let clean: String = s.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    crate::crypto::hex::decode_into(&clean, &mut out)
        .ok_or_else(|| format!("not a 128-bit hex id: {s:?}"))?;
    Ok(out)
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::crypto::hex::encode(&self.0))
    }
}
impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::crypto::hex::encode(&self.0))
    }
}
impl fmt::Display for DirId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::crypto::hex::encode(&self.0))
    }
}
impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = crate::crypto::hex::encode(&self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

macro_rules! from_str_hex {
    ($($name:ident),*) => {$(
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_hex16(s).map($name)
            }
        }
    )*};
}
from_str_hex!(VolumeId, FileId, DirId, KeyId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let k = KeyId::generate();
        let s = k.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(s.parse::<KeyId>().unwrap(), k);
        let v = VolumeId::generate();
        assert_eq!(v.to_string().parse::<VolumeId>().unwrap(), v);
        assert!("xyz".parse::<KeyId>().is_err());
    }
}

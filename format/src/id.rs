//! Identifiers. Every object is named by a 32-byte BLAKE3 hash; newtypes keep a
//! pack id from being passed where an object id is expected.

use std::fmt;
use std::str::FromStr;

use crate::FormatError;

/// The kind of an object stored in a pack. Part of the pack trailer and of the
/// index, and the domain-separation context of the object's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectKind {
    /// File content: id = BLAKE3(plaintext).
    Chunk = 1,
    /// A node of a file's content tree (see [`crate::htree`]).
    FileNode = 2,
    /// A node of a directory tree (see [`crate::tree`]).
    DirNode = 3,
    /// A snapshot object (see [`crate::snapshot`]).
    Snapshot = 4,
    /// A run record, carried by a snapshot (see [`crate::run`]).
    Run = 5,
}

impl ObjectKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => ObjectKind::Chunk,
            2 => ObjectKind::FileNode,
            3 => ObjectKind::DirNode,
            4 => ObjectKind::Snapshot,
            5 => ObjectKind::Run,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunk",
            ObjectKind::FileNode => "file-node",
            ObjectKind::DirNode => "dir-node",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Run => "run",
        }
    }

    /// The id of `bytes` as an object of this kind. Chunks use plain BLAKE3 so
    /// that a chunk id is the well-known hash of its content; structured
    /// objects use derive-key mode with a context that includes the kind and
    /// the format generation, so no chunk can collide with a node.
    pub fn hash(self, bytes: &[u8]) -> ObjectId {
        let h = match self {
            ObjectKind::Chunk => blake3::hash(bytes),
            ObjectKind::FileNode => derive("ds 2026-11 file-node v1", bytes),
            ObjectKind::DirNode => derive("ds 2026-11 dir-node v1", bytes),
            ObjectKind::Snapshot => derive("ds 2026-11 snapshot v1", bytes),
            ObjectKind::Run => derive("ds 2026-12 run v1", bytes),
        };
        ObjectId(*h.as_bytes())
    }
}

fn derive(context: &str, bytes: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(bytes);
    h.finalize()
}

macro_rules! hash_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub const ZERO: $name = $name([0; 32]);

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                let mut s = String::with_capacity(64);
                for b in self.0 {
                    s.push(char::from(HEX[usize::from(b >> 4)]));
                    s.push(char::from(HEX[usize::from(b & 15)]));
                }
                s
            }

            /// First 12 hex digits, for human output.
            pub fn short(&self) -> String {
                self.to_hex()[..12].to_string()
            }

            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(b).ok().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self, FormatError> {
                let bytes = parse_hex(s).filter(|b| b.len() == 32).ok_or_else(|| {
                    FormatError::corrupt(stringify!($name), format!("{s:?} is not 64 hex digits"))
                })?;
                Ok($name::from_slice(&bytes).expect("length checked"))
            }
        }

        /// As 64 lowercase hex digits, the form every JSON output uses.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Decodes lowercase or uppercase hex of even length.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

hash_newtype!(
    /// The id of any object in a pack: a chunk, a tree node or a snapshot.
    ObjectId
);
hash_newtype!(
    /// The id of a pack: the derive-key BLAKE3 of its trailer, which lists the
    /// ids of everything inside, so equal packs have equal names.
    PackId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_strings_in_json() {
        let id = ObjectKind::Chunk.hash(b"hello");
        let j = serde_json::to_string(&id).unwrap();
        assert_eq!(j, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<ObjectId>(&j).unwrap(), id);
        assert!(serde_json::from_str::<ObjectId>("\"abc\"").is_err());
    }

    #[test]
    fn hex_round_trip() {
        let id = ObjectKind::Chunk.hash(b"hello");
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(id.to_hex().parse::<ObjectId>().unwrap(), id);
        assert!("xyz".parse::<ObjectId>().is_err());
        assert!("ab".parse::<ObjectId>().is_err());
    }

    #[test]
    fn kinds_are_domain_separated() {
        let b = b"same bytes";
        let ids: Vec<_> = [
            ObjectKind::Chunk,
            ObjectKind::FileNode,
            ObjectKind::DirNode,
            ObjectKind::Snapshot,
            ObjectKind::Run,
        ]
        .iter()
        .map(|k| k.hash(b))
        .collect();
        for i in 0..ids.len() {
            for j in i + 1..ids.len() {
                assert_ne!(ids[i], ids[j]);
            }
        }
    }
}

//! The store config file (`STORE/config`, JSON): format version, the chunker
//! parameters that decide every chunk id, compression and pack size. Written
//! once at `ds init`; a store refuses to open with a config it does not
//! understand rather than guess.

use serde::{Deserialize, Serialize};

use crate::FormatError;
use crate::chunker::ChunkerParams;

pub const STORE_FORMAT: &str = "ds-store";
pub const STORE_VERSION: u32 = 1;
/// Limits that keep a hostile config from making ds allocate absurdly.
pub const MIN_PACK_SIZE: u64 = 64 * 1024;
pub const MAX_PACK_SIZE: u64 = 1 << 30;

/// Per-chunk compression policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "algorithm")]
pub enum Compression {
    /// Store chunks as they are.
    None,
    /// zstd at `level`, skipped for chunks that look incompressible and kept
    /// only when it saves at least 1/16 of the chunk.
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub format: String,
    pub version: u32,
    /// Random id of this store, hex.
    pub store_id: String,
    pub chunker: ChunkerParams,
    pub compression: Compression,
    /// A pack is closed once it reaches this many bytes.
    pub pack_size: u64,
}

impl StoreConfig {
    pub fn new(store_id: String) -> Self {
        StoreConfig {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
            store_id,
            chunker: ChunkerParams::default(),
            compression: Compression::default(),
            pack_size: 32 * 1024 * 1024,
        }
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        if self.format != STORE_FORMAT {
            return Err(FormatError::Config(format!(
                "format is {:?}, not {STORE_FORMAT:?}",
                self.format
            )));
        }
        if self.version != STORE_VERSION {
            return Err(FormatError::Version {
                what: "store config",
                version: self.version,
                supported: STORE_VERSION,
            });
        }
        self.chunker.validate()?;
        if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&self.pack_size) {
            return Err(FormatError::Config(format!(
                "pack_size {} outside [{MIN_PACK_SIZE}, {MAX_PACK_SIZE}]",
                self.pack_size
            )));
        }
        if let Compression::Zstd { level } = self.compression
            && !(-7..=19).contains(&level)
        {
            return Err(FormatError::Config(format!(
                "zstd level {level} outside [-7, 19] (negative levels are zstd's fast modes)"
            )));
        }
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let c: StoreConfig = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::Config(format!("not a ds store config: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("config serializes");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let c = StoreConfig::new("ab".into());
        assert_eq!(StoreConfig::decode(&c.encode()).unwrap(), c);
        let mut bad = c.clone();
        bad.version = 9;
        assert!(StoreConfig::decode(&bad.encode()).is_err());
        assert!(StoreConfig::decode(b"{}").is_err());
        assert!(StoreConfig::decode(b"\xff").is_err());
    }
}

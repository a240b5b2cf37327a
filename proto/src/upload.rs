//! The hub's reading of an `UploadPack` stream as a state machine with no
//! I/O: the header first (pack id, announced size within [`MAX_PACK`]),
//! then data pieces that may not run past the announced size, and no
//! second header; at the end exactly the announced bytes. The hub feeds it
//! the stream's messages; the fuzz target `upload` feeds it arbitrary ones.

use ds_format::PackId;

use crate::MAX_PACK;
use crate::v1::{UploadPackRequest, upload_pack_request};

/// Why an upload is refused (all the client's fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadError {
    NoHeader,
    BadId,
    TooLarge { size: u64 },
    Longer { id: PackId, size: u64 },
    SecondHeader,
    Truncated { id: PackId, got: u64, size: u64 },
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::NoHeader => write!(f, "an upload must start with a pack header"),
            UploadError::BadId => write!(f, "pack id must be 32 bytes"),
            UploadError::TooLarge { size } => {
                write!(f, "pack of {size} bytes; the hub takes at most {MAX_PACK}")
            }
            UploadError::Longer { id, size } => write!(
                f,
                "pack {} is longer than the {size} bytes its header announced",
                id.short()
            ),
            UploadError::SecondHeader => write!(f, "a second header in one upload"),
            UploadError::Truncated { id, got, size } => write!(
                f,
                "pack {} truncated: {got} of {size} bytes arrived",
                id.short()
            ),
        }
    }
}

impl std::error::Error for UploadError {}

/// An upload being received.
#[derive(Debug)]
pub struct Assembler {
    id: PackId,
    size: u64,
    data: Vec<u8>,
}

impl Assembler {
    /// Starts from the stream's first message (None: the stream was empty).
    pub fn start(first: Option<UploadPackRequest>) -> Result<Assembler, UploadError> {
        let Some(upload_pack_request::Part::Header(h)) = first.and_then(|m| m.part) else {
            return Err(UploadError::NoHeader);
        };
        let id = PackId::from_slice(&h.id).ok_or(UploadError::BadId)?;
        if h.size > MAX_PACK {
            return Err(UploadError::TooLarge { size: h.size });
        }
        Ok(Assembler {
            id,
            size: h.size,
            // Grows as data arrives: a header's claim reserves nothing.
            data: Vec::with_capacity((h.size as usize).min(8 << 20)),
        })
    }

    pub fn id(&self) -> PackId {
        self.id
    }

    /// The size the header announced.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the next message.
    pub fn push(&mut self, m: UploadPackRequest) -> Result<(), UploadError> {
        match m.part {
            Some(upload_pack_request::Part::Data(d)) => {
                if (self.data.len() + d.len()) as u64 > self.size {
                    return Err(UploadError::Longer {
                        id: self.id,
                        size: self.size,
                    });
                }
                // Past the first 8 MiB the sender has shown it sends: the
                // rest of the claim is reserved at once (address space;
                // pages are only touched as data arrives), instead of
                // doubling, which copied the pack several times over.
                let need = self.data.len() + d.len();
                if need > self.data.capacity() && self.data.len() >= 8 << 20 {
                    self.data
                        .reserve_exact(self.size as usize - self.data.len());
                }
                self.data.extend_from_slice(&d);
                Ok(())
            }
            _ => Err(UploadError::SecondHeader),
        }
    }

    /// The whole pack, once the stream ended.
    pub fn finish(self) -> Result<(PackId, Vec<u8>), UploadError> {
        if self.data.len() as u64 != self.size {
            return Err(UploadError::Truncated {
                id: self.id,
                got: self.data.len() as u64,
                size: self.size,
            });
        }
        Ok((self.id, self.data))
    }
}

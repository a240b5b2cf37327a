//! Minimal canonical binary codec: LEB128 varints (minimal form enforced on
//! decode), fixed-width hashes and length-prefixed byte strings. Every decoder
//! in this crate is built from [`Reader`], which bounds-checks each read and
//! refuses lengths larger than the bytes that remain, so corrupt input costs no
//! more memory than its own size.

use crate::{FormatError, ObjectId, Result};

/// Appends canonical encodings to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }
    /// Zig-zag signed varint.
    pub fn ivarint(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    pub fn id(&mut self, id: &ObjectId) {
        self.buf.extend_from_slice(&id.0);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical encodings from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn corrupt(&self, why: impl Into<String>) -> FormatError {
        FormatError::corrupt(self.what, why)
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(self.corrupt("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(self.corrupt("non-minimal varint"));
                }
                return Ok(v);
            }
        }
        Err(self.corrupt("varint too long"))
    }
    pub fn ivarint(&mut self) -> Result<i64> {
        let u = self.varint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    /// A varint that must fit `max` (used for counts and lengths, so a corrupt
    /// count cannot make a decoder allocate).
    pub fn bounded(&mut self, max: u64, field: &str) -> Result<usize> {
        let v = self.varint()?;
        if v > max {
            return Err(self.corrupt(format!("{field} {v} exceeds limit {max}")));
        }
        Ok(v as usize)
    }
    pub fn id(&mut self) -> Result<ObjectId> {
        Ok(ObjectId::from_slice(self.take(32)?).expect("32 bytes"))
    }
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.bounded(max as u64, "byte string length")?;
        self.take(n)
    }
    /// The header every hashed encoding starts with: a tag and a version.
    pub fn header(&mut self, tag: u8, version: u8) -> Result<()> {
        self.header_in(tag, version..=version).map(|_| ())
    }

    /// Like [`Reader::header`], accepting any version in `versions` (older
    /// encodings a decoder still reads); returns the one found.
    pub fn header_in(&mut self, tag: u8, versions: std::ops::RangeInclusive<u8>) -> Result<u8> {
        let t = self.u8()?;
        if t != tag {
            return Err(self.corrupt(format!("type tag {t:#x}, expected {tag:#x}")));
        }
        let v = self.u8()?;
        if !versions.contains(&v) {
            return Err(FormatError::Version {
                what: self.what,
                version: u32::from(v),
                supported: u32::from(*versions.end()),
            });
        }
        Ok(v)
    }
    pub fn finish(self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.corrupt(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(v: u64, s: i64) {
            let mut w = Writer::new();
            w.varint(v);
            w.ivarint(s);
            let b = w.into_bytes();
            let mut r = Reader::new(&b, "test");
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.ivarint().unwrap(), s);
            r.finish().unwrap();
        }
    }

    #[test]
    fn rejects_non_minimal_and_overlong() {
        assert!(Reader::new(&[0x80, 0x00], "t").varint().is_err());
        assert!(Reader::new(&[0xff; 11], "t").varint().is_err());
        assert!(Reader::new(&[0x80], "t").varint().is_err());
    }
}

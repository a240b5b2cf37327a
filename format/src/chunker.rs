//! Content-defined chunking: FastCDC (2020 algorithm, normalization level 1)
//! with parameters fixed per store. Boundaries depend only on the bytes, so an
//! insertion moves at most the chunks around it.
//!
//! [`Chunker::cut`] finds one boundary in a slice. Callers that stream a file
//! through a buffer must treat the last cut of a non-final buffer as tentative
//! (the chunk may continue into the next buffer) — see [`Chunker::split`].

use fastcdc::v2020::{self, Normalization};
use serde::{Deserialize, Serialize};

use crate::{FormatError, ObjectId, ObjectKind};

/// Chunk size bounds in bytes. Recorded in the store config at `ds init`
/// because they decide every chunk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds FastCDC accepts (it only debug-asserts them).
    pub fn validate(&self) -> Result<(), FormatError> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && min < avg
            && avg < max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(FormatError::Config(format!(
                "chunker sizes min={min} avg={avg} max={max} must be even, min<avg<max, \
                 min in [{}, {}], avg in [{}, {}], max in [{}, {}]",
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX
            )))
        }
    }
}

/// A FastCDC cutter with its masks precomputed.
///
/// Zeros take a shortcut: a cut depends only on the `max` bytes from the
/// chunk's start, so wherever `max` zero bytes follow a chunk start the
/// chunk is the same — `zero_len` zeros, id `zero_id` — computed once. A
/// sparse file's holes (and zero-filled images) are then chunked and
/// hashed at the speed of checking that memory is zero, and the result is
/// exactly what gear-hashing them gives.
#[derive(Debug, Clone)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    zero_len: usize,
    zero_id: ObjectId,
}

/// Is every byte zero? (ORs whole blocks, which vectorizes.)
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Result<Self, FormatError> {
        params.validate()?;
        let (mask_s, mask_l) = v2020::select_masks(params.avg as usize, Normalization::Level1);
        let mut c = Chunker {
            params,
            mask_s,
            mask_l,
            zero_len: 0,
            zero_id: ObjectId::ZERO,
        };
        let zeros = vec![0u8; params.max as usize];
        c.zero_len = c.cut_slow(&zeros);
        c.zero_id = ObjectKind::Chunk.hash(&zeros[..c.zero_len]);
        Ok(c)
    }

    /// The id of `chunk` (a chunk this chunker cut): the precomputed one for
    /// the zero chunk, else its hash.
    pub fn chunk_id(&self, chunk: &[u8]) -> ObjectId {
        if chunk.len() == self.zero_len && chunk.first() == Some(&0) && is_zero(chunk) {
            self.zero_id
        } else {
            ObjectKind::Chunk.hash(chunk)
        }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the chunk that starts at `data[0]`, assuming `data` holds
    /// everything up to the end of the file or at least `max` bytes.
    pub fn cut(&self, data: &[u8]) -> usize {
        let max = self.params.max as usize;
        if data.len() >= max && data[0] == 0 && is_zero(&data[..max]) {
            return self.zero_len;
        }
        self.cut_slow(data)
    }

    fn cut_slow(&self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let (_, n) = v2020::cut(
            data,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n
    }

    /// Splits `data` into chunk lengths, appending them to `out`. When `eof`
    /// is false the bytes after the last *certain* boundary are not chunked:
    /// the return value is how many bytes were consumed, and the caller keeps
    /// the rest as the start of its next buffer.
    pub fn split(&self, data: &[u8], eof: bool, out: &mut Vec<usize>) -> usize {
        let max = self.params.max as usize;
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            if !eof && rest.len() < max {
                break;
            }
            let n = self.cut(rest);
            out.push(n);
            pos += n;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        Chunker::new(ChunkerParams {
            min: 256,
            avg: 1024,
            max: 4096,
        })
        .unwrap()
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn whole(c: &Chunker, data: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        assert_eq!(c.split(data, true, &mut v), data.len());
        v
    }

    proptest! {
        /// Streaming through any buffer size gives the same boundaries as
        /// chunking the whole input at once.
        #[test]
        fn streaming_equals_whole(len in 0usize..60_000, buf in 4096usize..20_000, seed: u64) {
            let c = small();
            let data = pseudo_random(len, seed);
            let expected = whole(&c, &data);
            let mut got = Vec::new();
            let mut start = 0;
            let mut filled = 0;
            while start < data.len() {
                filled = (filled + buf).min(data.len()).max(start);
                let eof = filled == data.len();
                let used = c.split(&data[start..filled], eof, &mut got);
                start += used;
            }
            prop_assert_eq!(got, expected);
        }

        /// An insertion in the middle leaves the chunks far before and far
        /// after it unchanged.
        #[test]
        fn boundaries_survive_insertion(seed: u64, at in 10_000usize..30_000, ins in 1usize..500) {
            let c = small();
            let data = pseudo_random(60_000, seed);
            let mut edited = data[..at].to_vec();
            edited.extend(pseudo_random(ins, seed ^ 0xdead));
            edited.extend_from_slice(&data[at..]);
            let ends = |v: &[usize]| v.iter().scan(0, |s, n| { *s += n; Some(*s) }).collect::<Vec<_>>();
            let a = ends(&whole(&c, &data));
            let b = ends(&whole(&c, &edited));
            // every boundary well before the edit is kept
            for e in a.iter().filter(|&&e| e + 4096 < at) {
                prop_assert!(b.contains(e));
            }
            // boundaries realign after the edit, and for good: from the
            // first later boundary that reappears shifted, all do, and that
            // happens within the first half of them (how soon depends on
            // the bytes: a few chunks, now and then more than 8 KiB)
            let after: Vec<_> = a.iter().filter(|&&e| e > at + 8192).collect();
            let kept: Vec<bool> = after.iter().map(|&&e| b.contains(&(e + ins))).collect();
            let first = kept.iter().position(|&k| k).unwrap_or(kept.len());
            prop_assert!(kept[first..].iter().all(|&k| k), "realigned, then lost again: {:?}", kept);
            prop_assert!(first <= after.len() / 2, "realigned only after {} of {}", first, after.len());
        }
    }

    proptest! {
        /// Zero runs (holes) take the shortcut and cut exactly where the
        /// gear hash would, and the zero chunk's id is its hash.
        #[test]
        fn zeros_cut_where_the_gear_hash_cuts(
            runs in proptest::collection::vec((0usize..20_000, 0usize..3_000), 1..6),
            seed: u64,
        ) {
            let c = small();
            let mut data = Vec::new();
            for (i, (zeros, noise)) in runs.iter().enumerate() {
                data.extend(std::iter::repeat_n(0u8, *zeros));
                data.extend(pseudo_random(*noise, seed ^ i as u64));
            }
            let mut pos = 0;
            while pos < data.len() {
                let (fast, slow) = (c.cut(&data[pos..]), c.cut_slow(&data[pos..]));
                prop_assert_eq!(fast, slow, "at {}", pos);
                let chunk = &data[pos..pos + fast];
                prop_assert_eq!(c.chunk_id(chunk), ObjectKind::Chunk.hash(chunk));
                pos += fast;
            }
        }
    }

    #[test]
    fn rejects_bad_params() {
        assert!(
            Chunker::new(ChunkerParams {
                min: 1,
                avg: 2,
                max: 3
            })
            .is_err()
        );
        assert!(Chunker::new(ChunkerParams::default()).is_ok());
    }
}

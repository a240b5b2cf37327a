//! A stream stored in pieces (a dataset mirror's big object, each piece
//! durable before the next) gives exactly the file one uninterrupted
//! stream gives: pieces stop at cuts, and chunking restarts at a cut.

use ds_store::format::config::Compression;
use ds_store::stream::{Streamed, store_stream, store_stream_from};
use ds_store::txn::{Target, Transaction};
use proptest::prelude::*;

use crate::small_store;

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn pieces_resumed_at_their_cuts_make_the_same_file(
        seed in any::<u64>(),
        len in 0usize..300_000,
        piece in 1u64..100_000,
        buf in prop::sample::select(vec![16_384usize, 65_536, 1 << 20]),
    ) {
        let d = tempfile::tempdir().unwrap();
        let st = small_store(d.path(), Compression::None);
        let data = bytes(seed, len);
        let txn = Transaction::begin(Target::Borrowed(&st)).unwrap();
        let w = txn.writer().clone();
        let ch = st.chunker();
        let whole = store_stream(&w, ch, &mut &data[..], len as u64, buf, &mut |_| {})
            .unwrap()
            .unwrap();
        let (mut from, mut prefix) = (0usize, Vec::new());
        let pieced = loop {
            let rest = &data[from..];
            let stop = (rest.len() as u64 > piece).then_some(piece);
            match store_stream_from(&w, ch, &mut &rest[..], rest.len() as u64, buf, &prefix, stop, &mut |_| {})
                .unwrap()
                .unwrap()
            {
                Streamed::Whole(f) => break f,
                Streamed::Cut { chunks, bytes } => {
                    prop_assert!(bytes >= piece && bytes as usize <= rest.len());
                    prop_assert_eq!(chunks.iter().map(|c| c.1).sum::<u64>(), bytes);
                    prefix.extend(chunks);
                    from += bytes as usize;
                }
            }
        };
        prop_assert_eq!(pieced, whole);
    }
}

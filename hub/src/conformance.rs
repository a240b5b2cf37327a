//! The contract of [`Storage`] as executable checks. The tests run it on a
//! local directory (`file://`) and on a real S3-compatible server, so both
//! backends keep the same promises; a new backend must pass it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ds_format::pack::{HEADER, PackEntry, Stored, encode_trailer};
use ds_format::{ObjectId, ObjectKind, PackId};

use crate::HubError;
use crate::storage::Storage;

/// The S3 endpoint of the test server from `DS_TEST_S3_ENDPOINT`, or a loud
/// skip (`None`). scripts/test.sh always starts one (moto) and sets
/// `DS_TEST_REQUIRE_S3`, which turns a missing endpoint into a failure.
pub fn s3_test_endpoint() -> Option<String> {
    match std::env::var("DS_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var_os("DS_TEST_REQUIRE_S3").is_none(),
                "DS_TEST_REQUIRE_S3 is set but DS_TEST_S3_ENDPOINT is not"
            );
            eprintln!(
                "\n*** SKIPPING S3 test: DS_TEST_S3_ENDPOINT is not set (scripts/test.sh starts \
                 moto and sets it; or: eval \"$(scripts/s3.sh)\") ***\n"
            );
            None
        }
    }
}

/// A valid pack of the given chunks, with its id, bytes and trailer.
pub fn pack_of(chunks: &[&[u8]]) -> (PackId, Vec<u8>, Vec<u8>, Vec<PackEntry>) {
    let mut data = HEADER.to_vec();
    let mut entries = Vec::new();
    for c in chunks {
        entries.push(PackEntry {
            id: ObjectKind::Chunk.hash(c),
            kind: ObjectKind::Chunk,
            stored: Stored::Raw,
            offset: data.len() as u64,
            stored_len: c.len() as u32,
            raw_len: c.len() as u32,
        });
        data.extend_from_slice(c);
    }
    let (id, trailer) = encode_trailer(&entries);
    data.extend_from_slice(&trailer);
    (id, data, trailer, entries)
}

/// Runs every check against `a` and `b`, two handles on the same empty
/// storage (as two hubs would open it); panics at the first broken promise.
pub async fn run(a: &Storage, b: &Storage) {
    assert!(
        a.list_packs().await.unwrap().is_empty(),
        "storage must start empty"
    );

    // Packs: visible once stored, readable by range, index checked, idempotent.
    let (id, data, trailer, entries) = pack_of(&[b"alpha chunk", b"beta chunk!"]);
    assert!(
        a.put_pack(&id, Bytes::from(data.clone()), &trailer)
            .await
            .unwrap()
    );
    assert!(
        !b.put_pack(&id, Bytes::from(data.clone()), &trailer)
            .await
            .unwrap()
    );
    assert_eq!(b.list_packs().await.unwrap(), vec![id]);
    assert_eq!(b.pack_entries(&id).await.unwrap(), entries);
    let r = b.read_ranges(&id, &[8..13, 19..23]).await.unwrap();
    assert_eq!(&r[0][..], b"alpha");
    assert_eq!(&r[1][..], b"beta");
    // A big pack goes up in parts and reads back whole.
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let (bid, bdata, btrailer, _) = pack_of(&[&big[..12 << 20], &big[12 << 20..]]);
    assert!(
        a.put_pack(&bid, Bytes::from(bdata.clone()), &btrailer)
            .await
            .unwrap()
    );
    let all = std::ops::Range {
        start: 0,
        end: bdata.len() as u64,
    };
    let whole = b
        .read_ranges(&bid, std::slice::from_ref(&all))
        .await
        .unwrap();
    assert!(
        whole[0][..] == bdata[..],
        "multipart pack reads back differently"
    );

    // Hub gc's primitives: bytes stored but not committed are listed as
    // such and invisible to list_packs; a deleted pack leaves every listing;
    // deleting twice is no error.
    let (oid, odata, _, _) = pack_of(&[b"orphan bytes"]);
    a.put_pack_data(&oid, Bytes::from(odata.clone()))
        .await
        .unwrap();
    assert!(!b.has_pack(&oid).await.unwrap());
    let files = b.list_pack_files().await.unwrap();
    let f = files.iter().find(|f| f.id == oid).expect("orphan listed");
    assert!(f.committed.is_none());
    assert_eq!(f.data.map(|d| d.0), Some(odata.len() as u64));
    let f = files.iter().find(|f| f.id == id).expect("pack listed");
    assert!(f.committed.is_some() && f.data.is_some());
    assert!(!b.list_packs().await.unwrap().contains(&oid));
    b.delete_pack(&oid).await.unwrap();
    b.delete_pack(&bid).await.unwrap();
    b.delete_pack(&bid).await.unwrap();
    assert_eq!(a.list_packs().await.unwrap(), vec![id]);
    assert!(!a.has_pack(&bid).await.unwrap());
    assert!(
        a.list_pack_files()
            .await
            .unwrap()
            .iter()
            .all(|f| f.id == id)
    );
    // A deleted pack can be stored again.
    assert!(
        a.put_pack(&bid, Bytes::from(bdata.clone()), &btrailer)
            .await
            .unwrap()
    );
    b.delete_pack(&bid).await.unwrap();

    // Refs: create, compare-and-swap, conflicts that say what is there, force.
    let s = |n: u8| ObjectId([n; 32]);
    assert_eq!(a.get_ref("w").await.unwrap(), None);
    assert_eq!(a.swap_ref("w", None, s(1), false).await.unwrap(), None);
    match b.swap_ref("w", None, s(2), false).await {
        Err(HubError::RefConflict { actual, .. }) => assert_eq!(actual, Some(s(1))),
        other => panic!("create over an existing ref: {other:?}"),
    }
    assert_eq!(
        b.swap_ref("w", Some(s(1)), s(2), false).await.unwrap(),
        Some(s(1))
    );
    assert!(matches!(
        a.swap_ref("w", Some(s(1)), s(3), false).await,
        Err(HubError::RefConflict { .. })
    ));
    assert_eq!(
        a.swap_ref("w", Some(s(9)), s(3), true).await.unwrap(),
        Some(s(2))
    );
    assert_eq!(b.get_ref("w").await.unwrap(), Some(s(3)));
    assert!(
        a.get_ref("../x").await.is_err(),
        "hostile workspace names are refused"
    );

    // Forgetting is a compare-and-delete: refused if the ref moved, then
    // the workspace is gone for both handles and can be created again.
    assert_eq!(a.swap_ref("f", None, s(4), false).await.unwrap(), None);
    match b.delete_ref("f", s(5)).await {
        Err(HubError::RefConflict { actual, .. }) => assert_eq!(actual, Some(s(4))),
        other => panic!("delete of a ref that moved: {other:?}"),
    }
    b.delete_ref("f", s(4)).await.unwrap();
    assert_eq!(a.get_ref("f").await.unwrap(), None);
    assert!(!a.list_refs().await.unwrap().iter().any(|(n, _)| n == "f"));
    assert!(matches!(
        a.delete_ref("f", s(4)).await,
        Err(HubError::RefConflict { actual: None, .. })
    ));
    assert_eq!(b.swap_ref("f", None, s(6), false).await.unwrap(), None);
    assert_eq!(a.get_ref("f").await.unwrap(), Some(s(6)));

    // Concurrent writers through both handles never lose an update: each
    // successful swap moves the ref from the value it read.
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (w, st) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0;
            while wins < 5 {
                let cur = st.get_ref("race").await.unwrap();
                let n = cur.map_or(0, |c| u64::from_le_bytes(c.0[..8].try_into().unwrap()));
                let mut next = [0u8; 32];
                next[..8].copy_from_slice(&(n + 1).to_le_bytes());
                next[8] = w as u8;
                match st.swap_ref("race", cur, ObjectId(next), false).await {
                    Ok(_) => {
                        wins += 1;
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(HubError::RefConflict { .. }) => {}
                    Err(e) => panic!("swap failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = a.get_ref("race").await.unwrap().unwrap();
    assert_eq!(
        u64::from_le_bytes(last.0[..8].try_into().unwrap()),
        counter.load(Ordering::SeqCst),
        "an acknowledged ref update was lost"
    );
    let refs = b.list_refs().await.unwrap();
    assert_eq!(
        refs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["f", "race", "w"]
    );

    // Tokens.
    assert_eq!(a.get_token("abc").await.unwrap(), None);
    a.put_token("abc", b"{}").await.unwrap();
    assert_eq!(&b.get_token("abc").await.unwrap().unwrap()[..], b"{}");
}

//! The contract of [`PackStore`](crate::packs::PackStore) as executable
//! checks. Every backend (the local directory here; object storage on the
//! hub) runs this same suite from its tests, so they cannot drift apart.

use ds_format::PackId;

use crate::StoreError;
use crate::packs::PackStore;

fn id(n: u8) -> PackId {
    PackId([n; 32])
}

/// Runs every check against an empty backend; panics with a description of
/// the first broken promise.
pub fn run(p: &dyn PackStore) {
    assert!(p.list().unwrap().is_empty(), "backend must start empty");

    // A pack being written is invisible until commit.
    let mut s = p.create().unwrap();
    s.write(b"hello ").unwrap();
    s.write(b"world").unwrap();
    assert_eq!(s.written(), 11);
    assert!(p.list().unwrap().is_empty(), "uncommitted pack is visible");
    assert!(
        p.read_at(&id(1), 0, 1).is_err(),
        "uncommitted pack is readable"
    );
    s.commit(&id(1)).unwrap();
    assert_eq!(p.list().unwrap(), vec![id(1)]);
    assert_eq!(p.size(&id(1)).unwrap(), 11);

    // Exact reads, and reads past the end fail rather than come back short.
    assert_eq!(p.read_at(&id(1), 6, 5).unwrap(), b"world");
    assert_eq!(p.read_at(&id(1), 0, 0).unwrap(), b"");
    // Into a recycled (dirty) buffer: every byte is overwritten.
    let mut buf = [0xAAu8; 5];
    p.read_into(&id(1), 2, &mut buf).unwrap();
    assert_eq!(&buf, b"llo w");
    assert!(matches!(
        p.read_into(&id(1), 8, &mut buf),
        Err(StoreError::DamagedPack { .. })
    ));
    assert!(matches!(
        p.read_at(&id(1), 6, 6),
        Err(StoreError::DamagedPack { .. })
    ));
    assert!(matches!(
        p.read_at(&id(2), 0, 1),
        Err(StoreError::DamagedPack { .. })
    ));

    // Committing the same id twice is harmless.
    let mut s = p.create().unwrap();
    s.write(b"hello world").unwrap();
    s.commit(&id(1)).unwrap();
    assert_eq!(p.list().unwrap(), vec![id(1)]);
    assert_eq!(p.read_at(&id(1), 0, 11).unwrap(), b"hello world");

    // Abandoned writes are cleaned, committed packs are not.
    let mut s = p.create().unwrap();
    s.write(b"half").unwrap();
    drop(s);
    let (n, _) = p.clean_temp().unwrap();
    assert_eq!(n, 1, "one abandoned pack to clean");
    assert_eq!(p.list().unwrap(), vec![id(1)]);

    // Listing is sorted; removal is idempotent.
    for n in [9u8, 3] {
        let mut s = p.create().unwrap();
        s.write(&[n; 10]).unwrap();
        s.commit(&id(n)).unwrap();
    }
    assert_eq!(p.list().unwrap(), vec![id(1), id(3), id(9)]);
    p.remove(&id(3)).unwrap();
    p.remove(&id(3)).unwrap();
    assert_eq!(p.list().unwrap(), vec![id(1), id(9)]);
    assert!(p.read_at(&id(3), 0, 1).is_err());
}

//! Fuzz check `upload`: an arbitrary sequence of `UploadPackRequest`
//! messages (length-delimited protobuf, as on the wire) through the hub's
//! upload state machine (`ds_proto::upload::Assembler`) and, when it
//! accepts a whole pack, through pack verification — the hub's widest door.
//!
//! Panics only on a finding: the assembler accepts more bytes than the
//! header announced or than `MAX_PACK`, returns a pack of another size, or
//! verification accepts an object that does not decode to its id (the
//! `pack_verify` target's check, `verified_pack` in `lib.rs`). Compiled
//! into the fuzz binary and into `proto/tests/upload_fuzz_corpus.rs` (which
//! replays the committed corpus), so it depends on ds-format, ds-proto and
//! prost only.

use ds_proto::upload::Assembler;
use ds_proto::v1::UploadPackRequest;
use prost::Message;

/// `verified`: the check of an accepted pack (`ds_fuzz::verified_pack`;
/// passed in, as the replay test compiles `lib.rs` as a module of its own).
pub fn upload(data: &[u8], verified: fn(&ds_format::PackId, &[u8])) {
    let mut buf = data;
    let mut msgs = Vec::new();
    while !buf.is_empty() {
        match UploadPackRequest::decode_length_delimited(&mut buf) {
            Ok(m) => msgs.push(m),
            Err(_) => break,
        }
    }
    let mut it = msgs.into_iter();
    let Ok(mut a) = Assembler::start(it.next()) else {
        return;
    };
    let (size, id) = (a.size(), a.id());
    assert!(
        size <= ds_proto::MAX_PACK,
        "upload: accepted a header over MAX_PACK"
    );
    for m in it {
        if a.push(m).is_err() {
            return;
        }
    }
    let Ok((got_id, pack)) = a.finish() else {
        return;
    };
    assert_eq!(got_id, id);
    assert_eq!(
        pack.len() as u64,
        size,
        "upload: a pack of another size than announced"
    );
    verified(&id, &pack);
}

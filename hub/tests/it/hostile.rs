//! A hub facing clients that lie: wrong or missing tokens, bytes that do
//! not match their hash, truncated and oversized uploads, tree nodes that
//! point at nothing, refs the token may not touch. Each is refused with a
//! reason, and the bucket ends as it began.

// Raw gRPC calls answer with tonic::Status, which is large by design.
#![allow(clippy::result_large_err)]

use std::path::Path;

use ds_format::manifest::{Child, FileNode};
use ds_format::pack::{HEADER, PackEntry, Stored, encode_trailer};
use ds_format::{ObjectId, ObjectKind, PackId};
use ds_hub::conformance::pack_of;
use ds_hub::server::{HubOptions, run};
use ds_hub::storage::Storage;
use ds_proto::v1::sync_client::SyncClient;
use ds_proto::v1::{
    GetObjectsRequest, HaveRequest, PackHeader, UpdateRefRequest, UploadPackRequest,
    upload_pack_request::Part,
};
use tonic::Code;
use tonic::transport::Channel;

struct Hub {
    addr: std::net::SocketAddr,
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    storage_url: String,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start_hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let storage_url = format!("file://{}", dir.path().join("bucket").display());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = HubOptions {
        listen: "127.0.0.1:0".into(),
        storage: Some(storage_url.clone()),
        data: dir.path().join("data"),
        tls: None,
        advertise: None,
        tasks_domain: None,
        conn_limits: Default::default(),
        tasks: Default::default(),
        gc_settle: ds_hub::gc::SETTLE,
    };
    tokio::spawn(async move {
        run(
            opts,
            move |a| {
                let _ = tx.send(a);
            },
            async {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
    });
    let addr = rx.await.unwrap();
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Hub {
        addr,
        admin,
        stop: Some(stop_tx),
        _dir: dir,
        storage_url,
    }
}

type Client = SyncClient<tonic::service::interceptor::InterceptedService<Channel, ds_sync::Bearer>>;

async fn client(addr: std::net::SocketAddr, token: &str) -> Client {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = ds_sync::Bearer::new(token).unwrap();
    SyncClient::with_interceptor(ch, bearer).max_encoding_message_size(64 << 20)
}

async fn upload(
    c: &mut Client,
    id: &PackId,
    size: u64,
    pieces: Vec<Vec<u8>>,
) -> Result<bool, tonic::Status> {
    let mut msgs = vec![UploadPackRequest {
        part: Some(Part::Header(PackHeader {
            id: id.0.to_vec(),
            size,
        })),
    }];
    msgs.extend(pieces.into_iter().map(|p| UploadPackRequest {
        part: Some(Part::Data(p)),
    }));
    c.upload_pack(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner().stored)
}

fn expect(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, says: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(says),
                "{:?} does not say {says:?}",
                s.message()
            );
        }
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

async fn bucket_is_empty(url: &str) {
    let st = Storage::open(url).await.unwrap();
    assert!(
        st.list_packs().await.unwrap().is_empty(),
        "a refused pack reached the bucket"
    );
    assert!(
        st.list_refs().await.unwrap().is_empty(),
        "a refused ref moved"
    );
    let _ = Path::new(url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_and_nothing_changes() {
    let hub = start_hub().await;

    // Tokens.
    let mut none = SyncClient::new(
        Channel::from_shared(format!("http://{}", hub.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    expect(
        none.have(HaveRequest { ids: vec![0; 32] }).await,
        Code::Unauthenticated,
        "no token",
    );
    let mut wrong = client(hub.addr, "ds_0000").await;
    expect(
        wrong.have(HaveRequest { ids: vec![0; 32] }).await,
        Code::Unauthenticated,
        "not known",
    );

    let mut c = client(hub.addr, &hub.admin).await;

    // A byte flipped after hashing.
    let (id, mut data, _, _) = pack_of(&[b"honest bytes", b"more honest bytes"]);
    data[HEADER.len() + 3] ^= 1;
    let len = data.len() as u64;
    expect(
        upload(&mut c, &id, len, vec![data]).await,
        Code::InvalidArgument,
        "does not match its hash",
    );

    // Truncated, and longer than announced.
    let (id, data, _, _) = pack_of(&[b"some chunk"]);
    let len = data.len() as u64;
    expect(
        upload(&mut c, &id, len + 10, vec![data.clone()]).await,
        Code::InvalidArgument,
        "truncated",
    );
    expect(
        upload(&mut c, &id, len - 1, vec![data.clone()]).await,
        Code::InvalidArgument,
        "longer than",
    );
    // A pack under another pack's name.
    let (other, _, _, _) = pack_of(&[b"other"]);
    expect(
        upload(&mut c, &other, len, vec![data.clone()]).await,
        Code::InvalidArgument,
        "hashes to",
    );
    // Oversized message: over the 8 MiB limit in one piece.
    let r = upload(&mut c, &id, 9 << 20, vec![vec![7u8; 9 << 20]]).await;
    let code = r.expect_err("oversized message accepted").code();
    assert!(
        matches!(
            code,
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{code:?}"
    );
    // More ids than a batch may hold.
    expect(
        c.have(HaveRequest { ids: vec![0; 33] }).await,
        Code::InvalidArgument,
        "multiple of 32",
    );

    // A file node whose chunk the hub does not have.
    let missing = ObjectKind::Chunk.hash(b"never uploaded");
    let node = FileNode {
        level: 0,
        children: vec![Child {
            id: missing,
            len: 14,
        }],
    }
    .encode();
    let nid = ObjectKind::FileNode.hash(&node);
    let mut pack = HEADER.to_vec();
    let e = PackEntry {
        id: nid,
        kind: ObjectKind::FileNode,
        stored: Stored::Raw,
        offset: pack.len() as u64,
        stored_len: node.len() as u32,
        raw_len: node.len() as u32,
    };
    pack.extend_from_slice(&node);
    let (pid, trailer) = encode_trailer(&[e]);
    pack.extend_from_slice(&trailer);
    let plen = pack.len() as u64;
    expect(
        upload(&mut c, &pid, plen, vec![pack]).await,
        Code::InvalidArgument,
        "does not hold",
    );

    // Refs: a snapshot the hub does not hold; a workspace the token may not use.
    expect(
        c.update_ref(UpdateRefRequest {
            workspace: "a".into(),
            expected: vec![],
            new: vec![5; 32],
            force: false,
            gc_epoch: u64::MAX,
        })
        .await,
        Code::FailedPrecondition,
        "does not hold snapshot",
    );
    expect(
        c.update_ref(UpdateRefRequest {
            workspace: "../etc".into(),
            expected: vec![],
            new: vec![5; 32],
            force: false,
            gc_epoch: u64::MAX,
        })
        .await,
        Code::InvalidArgument,
        "",
    );
    let mut admin = ds_sync::Remote::connect(&format!("http://{}", hub.addr), &hub.admin, None)
        .await
        .unwrap();
    let limited = admin
        .create_token(vec!["a".into()], "test".into(), None)
        .await
        .unwrap();
    let mut l = client(hub.addr, &limited).await;
    expect(
        l.update_ref(UpdateRefRequest {
            workspace: "b".into(),
            expected: vec![],
            new: vec![5; 32],
            force: true,
            gc_epoch: u64::MAX,
        })
        .await,
        Code::PermissionDenied,
        "limited to: a",
    );
    let mut lr = ds_sync::Remote::connect(&format!("http://{}", hub.addr), &limited, None)
        .await
        .unwrap();
    assert!(
        lr.create_token(vec!["*".into()], String::new(), None)
            .await
            .is_err(),
        "a limited token made a token"
    );

    bucket_is_empty(&hub.storage_url).await;

    // And an honest pack goes through, and comes back byte for byte.
    let (id, data, _, entries) = pack_of(&[b"honest bytes", b"more honest bytes"]);
    let len = data.len() as u64;
    assert!(
        upload(
            &mut c,
            &id,
            len,
            vec![data[..10].to_vec(), data[10..].to_vec()]
        )
        .await
        .unwrap()
    );
    assert!(
        !upload(&mut c, &id, len, vec![data.clone()]).await.unwrap(),
        "stored twice"
    );
    let ids: Vec<u8> = entries.iter().flat_map(|e| e.id.0).collect();
    let bits = c
        .have(HaveRequest {
            ids: [ids.clone(), vec![9; 32]].concat(),
        })
        .await
        .unwrap()
        .into_inner()
        .bitmap;
    assert_eq!(bits, vec![0b011]);
    let mut s = c
        .get_objects(GetObjectsRequest { ids })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.extend(m.objects);
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].data, b"honest bytes");
    assert_eq!(ObjectId::from_slice(&got[1].id), Some(entries[1].id));
    expect(
        c.get_objects(GetObjectsRequest { ids: vec![9; 32] })
            .await
            .map(|_| ()),
        Code::NotFound,
        "no object",
    );
    // One id asked for many times would be sent as many times (a 2 MiB
    // request streamed 7.4 GiB): refused.
    let one: Vec<u8> = entries[0].id.0.to_vec();
    expect(
        c.get_objects(GetObjectsRequest {
            ids: one.repeat(1000),
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "more than once",
    );
}

/// Uploads that announce a pack and then stall used to be buffered without
/// limit (2,000 of them took the hub to 4 GiB). A token gets a bounded
/// number of uploads in flight; past it the refusal names the limit, and
/// other tokens are not affected.
#[tokio::test]
async fn stalled_uploads_of_one_token_hit_its_limit_and_spare_the_others() {
    let hub = start_hub().await;
    let mut stalled = Vec::new();
    let open = |c: Client| {
        let (tx, rx) = tokio::sync::mpsc::channel::<UploadPackRequest>(4);
        let mut c = c;
        let call = tokio::spawn(async move {
            c.upload_pack(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|_| ())
        });
        (tx, call)
    };
    let header = |n: u8| UploadPackRequest {
        part: Some(Part::Header(PackHeader {
            id: vec![n; 32],
            size: 1 << 20,
        })),
    };
    for n in 0..ds_hub::limits::UPLOADS_PER_TOKEN as u8 {
        let (tx, call) = open(client(hub.addr, &hub.admin).await);
        tx.send(header(n)).await.unwrap();
        tx.send(UploadPackRequest {
            part: Some(Part::Data(vec![0; 4096])),
        })
        .await
        .unwrap();
        stalled.push((tx, call));
    }
    // Let the hub admit them all (each waits for the rest of its pack).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut c = client(hub.addr, &hub.admin).await;
    expect(
        upload(&mut c, &PackId([99; 32]), 1 << 20, vec![]).await,
        Code::ResourceExhausted,
        "uploads_per_token",
    );
    // Another token still uploads (and is refused only for its bad pack).
    let mut admin = client(hub.addr, &hub.admin).await;
    let limited = admin
        .create_token(ds_proto::v1::CreateTokenRequest {
            workspaces: vec!["w".into()],
            comment: String::new(),
            runner: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut other = client(hub.addr, &limited).await;
    expect(
        upload(&mut other, &PackId([98; 32]), 10, vec![vec![0; 10]]).await,
        Code::InvalidArgument,
        "",
    );
    // Ending the stalled uploads gives the token its share back.
    for (tx, call) in stalled {
        drop(tx);
        assert!(call.await.unwrap().is_err(), "a truncated pack is refused");
    }
    expect(
        upload(&mut c, &PackId([97; 32]), 10, vec![vec![0; 10]]).await,
        Code::InvalidArgument,
        "",
    );
}

//! A connection to a hub: one method per RPC, each counting its round trip.

use std::path::Path;

use ds_format::{ObjectId, PackId};
use ds_proto::v1::sync_client::SyncClient;
use ds_proto::v1::{
    CreateTokenRequest, GetObjectsReply, GetObjectsRequest, GetRefRequest, HaveRequest,
    HelloRequest, ListRunsRequest, PackHeader, UpdateRefRequest, UploadPackRequest,
    upload_pack_request,
};
use ds_proto::{MAX_MESSAGE, PROTOCOL, UPLOAD_PIECE, bit, join_ids};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::error::{Result, SyncError};

/// Adds the bearer token to every request.
#[derive(Debug, Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// Fails if the token holds characters an HTTP header cannot.
    pub fn new(token: &str) -> Result<Bearer> {
        format!("Bearer {token}")
            .parse()
            .map(Bearer)
            .map_err(|_| SyncError::BadToken)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A gRPC channel to the hub at `url`, for the sync calls ([`Remote`]) and
/// the task calls alike. `https://` URLs use TLS, trusting the system's CAs
/// and `ca` (PEM) when given.
pub async fn channel(url: &str, ca: Option<&Path>) -> Result<Channel> {
    crate::install_crypto_provider();
    let bad_url = |why: String| SyncError::BadUrl {
        url: url.into(),
        why,
    };
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad_url(e.to_string()))?
        .initial_stream_window_size(ds_proto::STREAM_WINDOW)
        .initial_connection_window_size(ds_proto::CONNECTION_WINDOW)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|source| SyncError::Io {
                path: ca.to_path_buf(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        ep = ep.tls_config(tls)?;
    }
    ep.connect().await.map_err(|e| SyncError::Connect {
        url: url.into(),
        why: causes(&e),
    })
}

/// A connection to a hub, counting round trips.
#[derive(Debug)]
pub struct Remote {
    client: SyncClient<InterceptedService<Channel, Bearer>>,
    max_batch: usize,
    pub round_trips: u64,
    /// The smallest hub gc epoch of the answers relied on since the last
    /// ref update (see `UpdateRefRequest.gc_epoch`).
    answered_epoch: Option<u64>,
}

/// Uploads packs beside other calls on the same connection (each upload is
/// its own HTTP/2 stream); see [`Remote::uploader`].
#[derive(Debug, Clone)]
pub struct Uploader {
    client: SyncClient<InterceptedService<Channel, Bearer>>,
}

impl Uploader {
    /// Uploads one pack, cutting it into pieces only as they are sent.
    pub async fn upload_pack(
        mut self,
        id: PackId,
        pack: std::sync::Arc<Vec<u8>>,
    ) -> Result<ds_proto::v1::UploadPackReply> {
        let header = UploadPackRequest {
            part: Some(upload_pack_request::Part::Header(PackHeader {
                id: id.0.to_vec(),
                size: pack.len() as u64,
            })),
        };
        let pieces = pack.len().div_ceil(UPLOAD_PIECE);
        let data = (0..pieces).map(move |i| {
            let end = ((i + 1) * UPLOAD_PIECE).min(pack.len());
            UploadPackRequest {
                part: Some(upload_pack_request::Part::Data(
                    pack[i * UPLOAD_PIECE..end].to_vec(),
                )),
            }
        });
        let msgs = std::iter::once(header).chain(data);
        Ok(self
            .client
            .upload_pack(tokio_stream::iter(msgs))
            .await?
            .into_inner())
    }
}

/// The whole chain of causes: tonic's own message is just "transport error".
fn causes(e: &dyn std::error::Error) -> String {
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        why = format!("{why}: {s}");
        src = s.source();
    }
    why
}

impl Remote {
    /// Connects and checks the protocol version. `https://` URLs use TLS,
    /// trusting the system's CAs and `ca` (PEM) when given.
    pub async fn connect(url: &str, token: &str, ca: Option<&Path>) -> Result<Remote> {
        let bearer = Bearer::new(token)?;
        let channel = channel(url, ca).await?;
        let client = SyncClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut r = Remote {
            client,
            max_batch: ds_proto::MAX_BATCH,
            round_trips: 0,
            answered_epoch: None,
        };
        let hello = r
            .client
            .hello(HelloRequest { protocol: PROTOCOL })
            .await?
            .into_inner();
        r.round_trips += 1;
        r.max_batch = (hello.max_batch as usize).clamp(1, ds_proto::MAX_BATCH);
        Ok(r)
    }

    pub async fn get_ref(&mut self, workspace: &str) -> Result<Option<ObjectId>> {
        let r = self
            .client
            .get_ref(GetRefRequest {
                workspace: workspace.into(),
            })
            .await?
            .into_inner();
        self.round_trips += 1;
        Ok(ObjectId::from_slice(&r.snapshot))
    }

    fn answered(&mut self, epoch: u64) {
        self.answered_epoch = Some(self.answered_epoch.map_or(epoch, |e| e.min(epoch)));
    }

    /// Forgets the answers gathered so far: a push starts over.
    pub fn forget_answers(&mut self) {
        self.answered_epoch = None;
    }

    /// Which of `ids` the hub holds (with their subtrees).
    pub async fn have(&mut self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(self.max_batch) {
            let r = self
                .client
                .have(HaveRequest {
                    ids: join_ids(batch.iter().map(|i| &i.0)),
                })
                .await?
                .into_inner();
            self.round_trips += 1;
            self.answered(r.gc_epoch);
            out.extend((0..batch.len()).map(|i| bit(&r.bitmap, i)));
        }
        Ok(out)
    }

    /// Uploads one pack; returns whether the hub stored it (false: it had it).
    pub async fn upload_pack(&mut self, id: &PackId, pack: Vec<u8>) -> Result<bool> {
        let r = self
            .uploader()
            .upload_pack(*id, std::sync::Arc::new(pack))
            .await?;
        self.note_upload(&r);
        Ok(r.stored)
    }

    /// A handle for uploads that run beside each other on this connection.
    pub fn uploader(&self) -> Uploader {
        Uploader {
            client: self.client.clone(),
        }
    }

    /// Counts an upload made through an [`Uploader`] (its round trip and
    /// the gc epoch it was answered under).
    pub fn note_upload(&mut self, r: &ds_proto::v1::UploadPackReply) {
        self.round_trips += 1;
        self.answered(r.gc_epoch);
    }

    /// The most ids one request may carry (the hub's limit, at most ours).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Asks for objects in stored form (at most [`Self::max_batch`] ids);
    /// the replies stream back in batches.
    pub async fn get_objects(&mut self, ids: &[ObjectId]) -> Result<Streaming<GetObjectsReply>> {
        debug_assert!(ids.len() <= self.max_batch);
        let s = self
            .client
            .get_objects(GetObjectsRequest {
                ids: join_ids(ids.iter().map(|i| &i.0)),
            })
            .await?
            .into_inner();
        self.round_trips += 1;
        Ok(s)
    }

    pub async fn update_ref(
        &mut self,
        workspace: &str,
        expected: Option<ObjectId>,
        new: ObjectId,
        force: bool,
    ) -> Result<Option<ObjectId>> {
        let r = self
            .client
            .update_ref(UpdateRefRequest {
                workspace: workspace.into(),
                expected: expected.map(|e| e.0.to_vec()).unwrap_or_default(),
                new: new.0.to_vec(),
                force,
                // Relied on no answer: nothing gc did can matter.
                gc_epoch: self.answered_epoch.take().unwrap_or(u64::MAX),
            })
            .await?
            .into_inner();
        self.round_trips += 1;
        Ok(ObjectId::from_slice(&r.previous))
    }

    /// Runs hub gc (admin tokens): see `GcRequest`.
    pub async fn gc(
        &mut self,
        grace_seconds: u64,
        dry_run: bool,
        max_unused: f64,
    ) -> Result<ds_proto::v1::GcReply> {
        let r = self
            .client
            .gc(ds_proto::v1::GcRequest {
                grace_seconds,
                dry_run,
                max_unused,
            })
            .await?
            .into_inner();
        self.round_trips += 1;
        Ok(r)
    }

    /// A token limited to `workspaces`, or (with `runner`) a runner token.
    /// Removes `workspace`'s ref on the hub (admin tokens), if it is still
    /// at `expected`.
    pub async fn delete_ref(&mut self, workspace: &str, expected: ObjectId) -> Result<()> {
        self.client
            .delete_ref(ds_proto::v1::DeleteRefRequest {
                workspace: workspace.into(),
                expected: expected.0.to_vec(),
            })
            .await?;
        self.round_trips += 1;
        Ok(())
    }

    pub async fn create_token(
        &mut self,
        workspaces: Vec<String>,
        comment: String,
        runner: Option<String>,
    ) -> Result<String> {
        let r = self
            .client
            .create_token(CreateTokenRequest {
                workspaces,
                comment,
                runner: runner.unwrap_or_default(),
            })
            .await?
            .into_inner();
        self.round_trips += 1;
        Ok(r.token)
    }

    /// The runs in `workspace`'s history on the hub (None: every workspace
    /// the token may read), newest first. Each record is decoded and its
    /// id recomputed here: the hub is trusted for nothing.
    pub async fn list_runs(
        &mut self,
        workspace: Option<&str>,
    ) -> Result<Vec<ds_store::runs::Listed>> {
        let mut s = self
            .client
            .list_runs(ListRunsRequest {
                workspace: workspace.unwrap_or_default().into(),
            })
            .await
            .map_err(|st| match (st.code(), workspace) {
                (tonic::Code::NotFound, Some(w)) => SyncError::NoWorkspace {
                    workspace: w.to_string(),
                    side: crate::Side::Hub,
                },
                _ => st.into(),
            })?
            .into_inner();
        self.round_trips += 1;
        let mut out = Vec::new();
        while let Some(batch) = s.message().await? {
            for e in batch.runs {
                let snapshot = ObjectId::from_slice(&e.snapshot)
                    .ok_or_else(|| SyncError::Protocol("a run entry without a snapshot".into()))?;
                let run = ds_format::run::Run::decode(&e.run)
                    .map_err(|x| SyncError::Protocol(format!("a run record: {x}")))?;
                out.push(ds_store::runs::Listed {
                    id: ds_format::ObjectKind::Run.hash(&e.run),
                    snapshot,
                    snapshot_time_ns: e.snapshot_time_ns,
                    run,
                });
            }
        }
        Ok(out)
    }
}

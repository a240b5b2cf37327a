//! A small S3 client: list, get (ranged, conditional), head, put and
//! multipart upload, signed with SigV4 or anonymous.
//!
//! Why not object_store (which the hub uses for its own bucket): its path
//! type cannot represent keys such as `a//b`, `../x` or `a/`, and a listing
//! that meets one fails as a whole. A mirror must list and fetch every key a
//! bucket holds, byte for byte, so this client builds its own requests.
//! It reads the standard `AWS_*` variables, as the hub's S3 storage does.

pub mod sign;
pub mod xml;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use sign::Credentials;

use crate::{DatasetError, Result};

/// Where the object store is and who we are to it.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `AWS_ENDPOINT_URL` (or `--endpoint`): path-style requests to it.
    /// Without one, AWS's regional endpoint, virtual-hosted style (path
    /// style for bucket names with dots).
    pub endpoint: Option<String>,
    /// `AWS_REGION`, `AWS_DEFAULT_REGION`, or us-east-1.
    pub region: String,
    /// `None`: unsigned requests (a public bucket).
    pub credentials: Option<Credentials>,
    /// `AWS_ALLOW_HTTP=true`: a plain-HTTP endpoint is allowed.
    pub allow_http: bool,
    /// `AWS_CA_BUNDLE`: PEM certificates trusted besides the system's.
    pub ca_bundle: Option<std::path::PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Config {
    /// From the standard `AWS_*` variables; `anonymous` ignores any
    /// credentials found.
    pub fn from_env(anonymous: bool) -> Result<S3Config> {
        let credentials = if anonymous {
            None
        } else {
            match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(key_id), Some(secret)) => Some(Credentials {
                    key_id,
                    secret,
                    token: env("AWS_SESSION_TOKEN"),
                }),
                _ => {
                    return Err(DatasetError::BadInput(
                        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                         (and AWS_SESSION_TOKEN for temporary ones), or pass --anonymous for a \
                         public bucket"
                            .into(),
                    ));
                }
            }
        };
        Ok(S3Config {
            endpoint: env("AWS_ENDPOINT_URL_S3")
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .or_else(|| env("AWS_ENDPOINT")),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            credentials,
            allow_http: env("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            ca_bundle: env("AWS_CA_BUNDLE").map(Into::into),
        })
    }
}

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// As the store sends it, quotes included.
    pub etag: Option<String>,
    pub last_modified_ns: i64,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

/// What a GET or HEAD said of the object.
#[derive(Debug, Clone, Default)]
pub struct ObjectHead {
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub size: Option<u64>,
    pub last_modified_ns: Option<i64>,
}

/// Why a conditional read did not happen.
#[derive(Debug)]
pub enum GetError {
    /// The object is no longer the version asked for (412, or a reply
    /// whose ETag differs).
    Changed,
    /// The object is gone (404).
    Gone,
    Other(DatasetError),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::Changed => f.write_str("the object changed"),
            GetError::Gone => f.write_str("the object is gone"),
            GetError::Other(e) => e.fmt(f),
        }
    }
}

impl crate::source::Transient for GetError {
    fn is_transient(&self) -> bool {
        matches!(self, GetError::Other(e) if e.is_transient())
    }
}

impl From<DatasetError> for GetError {
    fn from(e: DatasetError) -> Self {
        GetError::Other(e)
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A reply: status, headers, and the body still to be read.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: http::HeaderMap,
    body: hyper::body::Incoming,
    target: String,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes>> {
        loop {
            match tokio::time::timeout(READ_TIMEOUT, self.body.frame()).await {
                Err(_) => {
                    return Some(Err(http_err(
                        "read",
                        &self.target,
                        "no data for 60 s".into(),
                    )));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(http_err("read", &self.target, e.into()))),
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        return Some(Ok(d));
                    }
                }
            }
        }
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Bytes> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await {
            out.extend_from_slice(&c?);
        }
        Ok(Bytes::from(out))
    }

    pub async fn text(self) -> Result<String> {
        let b = self.bytes().await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
}

fn http_err(
    op: &'static str,
    target: &str,
    source: Box<dyn std::error::Error + Send + Sync>,
) -> DatasetError {
    DatasetError::Http {
        op,
        target: target.to_string(),
        source,
    }
}

/// An S3 client (cheap to clone: one connection pool).
#[derive(Clone)]
pub struct Client {
    http: HyperClient<Https, Full<Bytes>>,
    cfg: S3Config,
    /// scheme://host[:port], without a trailing slash.
    base: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// How long a request may wait for its reply's headers.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a body may stall.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    pub fn new(cfg: S3Config) -> Result<Client> {
        let base = match &cfg.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", cfg.region),
        };
        if base.starts_with("http://") && !cfg.allow_http {
            return Err(DatasetError::BadInput(format!(
                "{base} is plain HTTP; set AWS_ALLOW_HTTP=true to allow it"
            )));
        }
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(DatasetError::BadInput(format!(
                "endpoint {base:?} must be an http:// or https:// URL"
            )));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        if let Some(p) = &cfg.ca_bundle {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let bad = |why: String| {
                DatasetError::BadInput(format!("AWS_CA_BUNDLE {}: {why}", p.display()))
            };
            let pem = std::fs::read(p).map_err(|e| bad(e.to_string()))?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| DatasetError::Internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        tcp.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Client { http, cfg, base })
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// The URL, host and signed path of `bucket`/`key`.
    fn locate(&self, bucket: &str, key: Option<&str>) -> (String, String, String) {
        let (scheme, host) = self.base.split_once("://").expect("checked in new");
        let mut path = String::new();
        // Path style for a custom endpoint, and for a bucket with dots
        // (its virtual host would not match AWS's wildcard certificate).
        let host = if self.cfg.endpoint.is_some() || bucket.contains('.') {
            path.push('/');
            sign::uri_encode(bucket, false, &mut path);
            host.to_string()
        } else {
            format!("{bucket}.{host}")
        };
        path.push('/');
        if let Some(k) = key {
            sign::key_path(k, &mut path);
        }
        (format!("{scheme}://{host}{path}"), host, path)
    }

    /// Sends one signed request; `query` pairs are unencoded. (One
    /// argument per part of an S3 request.)
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        bucket: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Response> {
        let target = match key {
            Some(k) => format!("s3://{bucket}/{k}"),
            None => format!("s3://{bucket}"),
        };
        let (url, host, path) = self.locate(bucket, key);
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| {
                let (mut ek, mut ev) = (String::new(), String::new());
                sign::uri_encode(k, false, &mut ek);
                sign::uri_encode(v, false, &mut ev);
                (ek, ev)
            })
            .collect();
        pairs.sort();
        let qs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let qs = qs.join("&");
        let full = if qs.is_empty() {
            url
        } else {
            format!("{url}?{qs}")
        };
        let mut req = http::Request::builder().method(method.clone()).uri(&full);
        // Signed as sent (the pool would set the same).
        req = req.header("host", &host);
        if let Some(c) = &self.cfg.credentials {
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let payload = if body.is_some() {
                "UNSIGNED-PAYLOAD"
            } else {
                sign::EMPTY_SHA256
            };
            for (k, v) in sign::sign(
                c,
                &self.cfg.region,
                method.as_str(),
                &host,
                &path,
                &qs,
                payload,
                unix,
            ) {
                req = req.header(k, v);
            }
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| http_err(op, &target, e.into()))?;
        let resp = match tokio::time::timeout(HEADERS_TIMEOUT, self.http.request(req)).await {
            Err(_) => return Err(http_err(op, &target, "no reply within 120 s".into())),
            Ok(Err(e)) => return Err(http_err(op, &target, e.into())),
            Ok(Ok(r)) => r,
        };
        let (parts, body) = resp.into_parts();
        let resp = Response {
            status: parts.status,
            headers: parts.headers,
            body,
            target: target.clone(),
        };
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = if method == Method::HEAD {
            String::new()
        } else {
            resp.text().await.unwrap_or_default()
        };
        let body: xml::ErrorBody = quick_xml::de::from_str(&text).unwrap_or_default();
        let code = if body.code.is_empty() {
            match status {
                404 => "NotFound".into(),
                403 => "AccessDenied".into(),
                412 => "PreconditionFailed".into(),
                _ => "Error".into(),
            }
        } else {
            body.code
        };
        Err(DatasetError::S3 {
            op,
            target,
            status,
            code,
            message: if body.message.is_empty() {
                StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
                    .to_string()
            } else {
                body.message
            },
        })
    }

    /// One ListObjectsV2 page of keys starting with `prefix`; with
    /// `delimiter`, keys below the next `/` are folded into `prefixes`.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: bool,
        token: Option<&str>,
    ) -> Result<ListPage> {
        let mut q = vec![
            ("list-type", "2"),
            ("encoding-type", "url"),
            ("prefix", prefix),
        ];
        if delimiter {
            q.push(("delimiter", "/"));
        }
        if let Some(t) = token {
            q.push(("continuation-token", t));
        }
        let target = format!("s3://{bucket}/{prefix}");
        let resp = self
            .send("list", Method::GET, bucket, None, &q, &[], None)
            .await?;
        let text = resp.text().await?;
        let r: xml::ListBucketResult =
            quick_xml::de::from_str(&text).map_err(|e| DatasetError::Protocol {
                op: "list",
                target: target.clone(),
                why: e.to_string(),
            })?;
        let encoded = r.encoding_type.as_deref() == Some("url");
        let decode = |s: String| -> Result<String> {
            if !encoded {
                return Ok(s);
            }
            xml::url_decode(&s).ok_or_else(|| DatasetError::Protocol {
                op: "list",
                target: target.clone(),
                why: format!("badly encoded key {s:?}"),
            })
        };
        let mut page = ListPage::default();
        for c in r.contents {
            let key = decode(c.key)?;
            let last_modified_ns =
                xml::parse_iso8601(&c.last_modified).ok_or_else(|| DatasetError::Protocol {
                    op: "list",
                    target: target.clone(),
                    why: format!("bad LastModified {:?}", c.last_modified),
                })?;
            page.objects.push(Listed {
                key,
                size: c.size,
                etag: c.etag,
                last_modified_ns,
            });
        }
        for p in r.common_prefixes {
            page.prefixes.push(decode(p.prefix)?);
        }
        if r.is_truncated {
            page.next = r.next_continuation_token;
            if page.next.is_none() {
                return Err(DatasetError::Protocol {
                    op: "list",
                    target,
                    why: "a truncated page without a continuation token".into(),
                });
            }
        }
        Ok(page)
    }

    /// Starts reading `key` from byte `from` (to `to`, exclusive, or the
    /// end), only if its ETag is still `if_match`.
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
        from: u64,
        to: Option<u64>,
        if_match: Option<&str>,
    ) -> std::result::Result<(ObjectHead, Response), GetError> {
        let mut headers = Vec::new();
        if let Some(e) = if_match {
            headers.push(("if-match", e.to_string()));
        }
        match to {
            Some(to) => headers.push(("range", format!("bytes={from}-{}", to - 1))),
            None if from > 0 => headers.push(("range", format!("bytes={from}-"))),
            None => {}
        }
        let resp = match self
            .send("get", Method::GET, bucket, Some(key), &[], &headers, None)
            .await
        {
            Ok(r) => r,
            Err(DatasetError::S3 { status: 412, .. }) => return Err(GetError::Changed),
            Err(DatasetError::S3 { status: 404, .. }) => return Err(GetError::Gone),
            Err(e) => return Err(e.into()),
        };
        let head = head_of(&resp);
        if let (Some(want), Some(got)) = (if_match, &head.etag)
            && want != got
        {
            // A store that ignores If-Match.
            return Err(GetError::Changed);
        }
        Ok((head, resp))
    }

    /// What the store says of `key` now; `None` if it is gone.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectHead>> {
        match self
            .send("head", Method::HEAD, bucket, Some(key), &[], &[], None)
            .await
        {
            Ok(r) => Ok(Some(head_of(&r))),
            Err(DatasetError::S3 { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one object in a single request; returns its ETag.
    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<Option<String>> {
        let r = self
            .send("put", Method::PUT, bucket, Some(key), &[], &[], Some(body))
            .await?;
        Ok(head_of(&r).etag)
    }

    /// Starts a multipart upload; returns its id.
    pub async fn multipart_start(&self, bucket: &str, key: &str) -> Result<String> {
        let r = self
            .send(
                "multipart start",
                Method::POST,
                bucket,
                Some(key),
                &[("uploads", "")],
                &[],
                Some(Bytes::new()),
            )
            .await?;
        let text = r.text().await?;
        let x: xml::InitiateMultipartUploadResult =
            quick_xml::de::from_str(&text).map_err(|e| DatasetError::Protocol {
                op: "multipart start",
                target: key.to_string(),
                why: e.to_string(),
            })?;
        Ok(x.upload_id)
    }

    /// Uploads part `n` (from 1); returns its ETag.
    pub async fn multipart_part(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        n: u32,
        body: Bytes,
    ) -> Result<String> {
        let n = n.to_string();
        let r = self
            .send(
                "multipart part",
                Method::PUT,
                bucket,
                Some(key),
                &[("partNumber", &n), ("uploadId", upload)],
                &[],
                Some(body),
            )
            .await?;
        head_of(&r).etag.ok_or_else(|| DatasetError::Protocol {
            op: "multipart part",
            target: key.to_string(),
            why: "no ETag".into(),
        })
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub async fn multipart_finish(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        parts: &[String],
    ) -> Result<()> {
        let mut x = String::from("<CompleteMultipartUpload>");
        for (i, e) in parts.iter().enumerate() {
            let e = e.replace('&', "&amp;").replace('"', "&quot;");
            x.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{e}</ETag></Part>",
                i + 1
            ));
        }
        x.push_str("</CompleteMultipartUpload>");
        let r = self
            .send(
                "multipart finish",
                Method::POST,
                bucket,
                Some(key),
                &[("uploadId", upload)],
                &[],
                Some(Bytes::from(x)),
            )
            .await?;
        // S3 may report a failure inside a 200 reply.
        let text = r.text().await.unwrap_or_default();
        if text.contains("<Error>") {
            let b: xml::ErrorBody = quick_xml::de::from_str(&text).unwrap_or_default();
            return Err(DatasetError::S3 {
                op: "multipart finish",
                target: key.to_string(),
                status: 200,
                code: b.code,
                message: b.message,
            });
        }
        Ok(())
    }
}

fn head_of(r: &Response) -> ObjectHead {
    let h = r.headers();
    let s = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    ObjectHead {
        etag: s("etag"),
        version_id: s("x-amz-version-id").filter(|v| v != "null"),
        size: s("content-length").and_then(|v| v.parse().ok()),
        last_modified_ns: s("last-modified")
            .and_then(|v| httpdate::parse_http_date(&v).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: Option<&str>) -> Client {
        Client::new(S3Config {
            endpoint: endpoint.map(str::to_string),
            region: "eu-west-1".into(),
            credentials: None,
            allow_http: true,
            ca_bundle: None,
        })
        .unwrap()
    }

    #[test]
    fn requests_are_addressed_as_s3_expects() {
        let aws = client(None);
        let (url, host, path) = aws.locate("bkt", Some("a b/../c"));
        assert_eq!(url, "https://bkt.s3.eu-west-1.amazonaws.com/a%20b/%2E%2E/c");
        assert_eq!(
            (host.as_str(), path.as_str()),
            ("bkt.s3.eu-west-1.amazonaws.com", "/a%20b/%2E%2E/c")
        );
        let (url, _, _) = aws.locate("my.bucket", Some("k"));
        assert_eq!(url, "https://s3.eu-west-1.amazonaws.com/my.bucket/k");
        let local = client(Some("http://127.0.0.1:9000/"));
        let (url, host, _) = local.locate("bkt", None);
        assert_eq!(
            (url.as_str(), host.as_str()),
            ("http://127.0.0.1:9000/bkt/", "127.0.0.1:9000")
        );
        // The URI keeps dot segments as sent (what is signed).
        let uri: http::Uri = "http://h/b/%2E%2E/c".parse().unwrap();
        assert_eq!(uri.path(), "/b/%2E%2E/c");
    }

    #[test]
    fn plain_http_needs_allowing() {
        let e = Client::new(S3Config {
            endpoint: Some("http://x".into()),
            region: "r".into(),
            credentials: None,
            allow_http: false,
            ca_bundle: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("AWS_ALLOW_HTTP"));
    }
}

//! AWS Signature Version 4 for S3 requests (header-based), and the few
//! encodings and clocks it needs.
//!
//! Why our own: the S3 client this crate needs must list and fetch keys no
//! generic object-store path type accepts (`a//b`, `../x`, a trailing `/`),
//! so it builds its own requests; signing them is this file. The request
//! path is signed exactly as it is sent (S3 does not normalise paths).

use ring::digest::{SHA256, digest};
use ring::hmac;

/// The SHA-256 of an empty payload, hex (every request here has none,
/// or sends `UNSIGNED-PAYLOAD`).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN`.
#[derive(Clone)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes as SigV4 wants: unreserved bytes kept, `/` kept when
/// `keep_slash`, everything else `%XX` (upper case).
pub fn uri_encode(s: &str, keep_slash: bool, out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || keep_slash && b == b'/'
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// An object key as a request path: every segment encoded, and `.`/`..`
/// segments written `%2E` so no HTTP layer resolves them.
pub fn key_path(key: &str, out: &mut String) {
    for (i, seg) in key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg == "." || seg == ".." {
            out.push_str(&"%2E".repeat(seg.len()));
        } else {
            uri_encode(seg, false, out);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac(key: &[u8], msg: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg.as_bytes())
}

/// `YYYYMMDD'T'HHMMSS'Z'` for Unix seconds.
pub fn amz_date(unix: i64) -> String {
    let (y, m, d) = ds_format::time::civil_from_days(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The headers to add to a request: `x-amz-date`, `x-amz-content-sha256`,
/// `x-amz-security-token` (with a session token) and `authorization`.
/// `query` is the request's query string, already encoded and sorted by
/// key; `path` its path as sent.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    creds: &Credentials,
    region: &str,
    method: &str,
    host: &str,
    path: &str,
    query: &str,
    payload_sha256: &str,
    unix: i64,
) -> Vec<(&'static str, String)> {
    let date = amz_date(unix);
    let day = &date[..8];
    let mut headers: Vec<(&'static str, String)> = vec![
        ("host", host.to_string()),
        ("x-amz-content-sha256", payload_sha256.to_string()),
        ("x-amz-date", date.clone()),
    ];
    if let Some(t) = &creds.token {
        headers.push(("x-amz-security-token", t.clone()));
    }
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let mut canonical = format!("{method}\n{path}\n{query}\n");
    for (k, v) in &headers {
        canonical.push_str(&format!("{k}:{}\n", v.trim()));
    }
    canonical.push_str(&format!("\n{signed}\n{payload_sha256}"));
    let scope = format!("{day}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(digest(&SHA256, canonical.as_bytes()).as_ref())
    );
    let k = hmac(format!("AWS4{}", creds.secret).as_bytes(), day);
    let k = hmac(k.as_ref(), region);
    let k = hmac(k.as_ref(), "s3");
    let k = hmac(k.as_ref(), "aws4_request");
    let sig = hex(hmac(k.as_ref(), &to_sign).as_ref());
    headers.remove(0); // host: the HTTP client sets it from the URL
    headers.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
            creds.key_id
        ),
    ));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Bucket (List Objects)" example of AWS's SigV4
    /// documentation for S3, with its published signature.
    #[test]
    fn signs_the_aws_documentation_example() {
        let c = Credentials {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        };
        let t = ds_format::time::days_from_civil(2013, 5, 24) * 86_400;
        assert_eq!(amz_date(t), "20130524T000000Z");
        let h = sign(
            &c,
            "us-east-1",
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/",
            "max-keys=2&prefix=J",
            EMPTY_SHA256,
            t,
        );
        let auth = &h.iter().find(|(k, _)| *k == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn dot_segments_are_escaped_in_paths() {
        let mut p = String::new();
        key_path("../a b/./c//", &mut p);
        assert_eq!(p, "%2E%2E/a%20b/%2E/c//");
    }
}

//! A mirror's source (`s3://BUCKET/PREFIX`) and its listing.
//!
//! The listing is one ListObjectsV2 pass with a `/` delimiter at the prefix
//! (the keys directly under it, and its first-level "directories"), then a
//! flat, paginated listing of every first-level prefix, several at once:
//! a bucket whose keys spread over many top-level prefixes lists at the
//! speed of that many requests in flight, and a flat one no slower than one
//! pass. Prefixes partition the key space, so no key is listed twice.

use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::s3::{Client, Listed};
use crate::{DatasetError, Result};

/// `s3://BUCKET/PREFIX`, the prefix naming a "directory": keys under
/// `PREFIX/` are mirrored, relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
}

impl SourceUrl {
    pub fn parse(url: &str) -> Result<SourceUrl> {
        let bad = |why: &str| {
            DatasetError::BadInput(format!("{url:?}: {why} (expected s3://BUCKET[/PREFIX])"))
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || bucket.len() > 255
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(bad("not a bucket name"));
        }
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(SourceUrl {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The source as a URL (`s3://bucket/prefix/`).
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The key of a path relative to the prefix.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }
}

/// How long to wait before try `tries + 1`: 0.2 s, doubling, at most 10 s.
pub fn backoff(tries: u32) -> Duration {
    (Duration::from_millis(200) * 2u32.pow(tries.min(6))).min(Duration::from_secs(10))
}

/// A failure worth trying again (a transport failure, a throttle, a
/// server error).
pub trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Transient for DatasetError {
    fn is_transient(&self) -> bool {
        DatasetError::is_transient(self)
    }
}

/// Retries `f` on transient failures: 6 tries, [`backoff`] between them.
pub async fn retry<T, E, F, Fut>(what: &str, mut f: F) -> std::result::Result<T, E>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let mut tries = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && tries < 5 => {
                let wait = backoff(tries);
                tracing::warn!("{what}: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                tries += 1;
            }
            r => return r,
        }
    }
}

async fn list_flat(
    client: &Client,
    bucket: &str,
    prefix: &str,
    delimiter: bool,
) -> Result<(Vec<Listed>, Vec<String>)> {
    let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
    let mut token: Option<String> = None;
    loop {
        let page = retry("list", || {
            client.list_page(bucket, prefix, delimiter, token.as_deref())
        })
        .await?;
        objects.extend(page.objects);
        prefixes.extend(page.prefixes);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok((objects, prefixes)),
        }
    }
}

/// Every object under the source's prefix, sorted by key.
pub async fn list(client: &Client, src: &SourceUrl, parallel: usize) -> Result<Vec<Listed>> {
    let (mut all, prefixes) = list_flat(client, &src.bucket, &src.prefix, true).await?;
    let below: Vec<Vec<Listed>> = stream::iter(prefixes)
        .map(|p| async move {
            list_flat(client, &src.bucket, &p, false)
                .await
                .map(|(o, _)| o)
        })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    for b in below {
        all.extend(b);
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all.dedup_by(|a, b| a.key == b.key);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls() {
        let s = SourceUrl::parse("s3://b/data").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("b", "data/"));
        assert_eq!(s.key("x/y"), "data/x/y");
        assert_eq!(SourceUrl::parse("s3://b").unwrap().prefix, "");
        assert_eq!(SourceUrl::parse("s3://b/").unwrap().prefix, "");
        assert_eq!(SourceUrl::parse("s3://b/a/").unwrap().prefix, "a/");
        for bad in ["b/x", "s3://", "s3:///x", "http://b/x", "s3://b c/x"] {
            assert!(SourceUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

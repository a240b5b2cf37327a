//! One conformance suite, every backend.

use ds_hub::conformance;
use ds_hub::storage::Storage;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_local_directory() {
    let t = tempfile::tempdir().unwrap();
    let url = format!("file://{}", t.path().display());
    let a = Storage::open(&url).await.unwrap();
    let b = Storage::open(&url).await.unwrap();
    conformance::run(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_s3() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = new_bucket(&ep);
    let cfg = s3_config(&ep);
    let cfg: Vec<(&str, &str)> = cfg.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = format!("s3://{bucket}/hub");
    let a = Storage::open_with(&url, &cfg).await.unwrap();
    let b = Storage::open_with(&url, &cfg).await.unwrap();
    conformance::run(&a, &b).await;
}

#[tokio::test]
async fn bad_urls_are_refused_with_a_reason() {
    for (url, says) in [
        ("file://relative/path", "absolute"),
        ("ftp://x", "expected file:///PATH or s3://BUCKET/PREFIX"),
        ("s3:///nobucket", "no bucket"),
    ] {
        let e = Storage::open(url).await.unwrap_err().to_string();
        assert!(e.contains(says), "{url}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_conditional_writes_is_refused() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = new_bucket(&ep);
    let mut cfg = s3_config(&ep);
    // What a store like Garage amounts to: conditional requests not honoured.
    cfg.push(("aws_conditional_put", "disabled".into()));
    let cfg: Vec<(&str, &str)> = cfg.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e = Storage::open_with(&format!("s3://{bucket}/hub"), &cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not support conditional writes"), "{e}");
}

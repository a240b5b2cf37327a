//! Hub tests over real parts: the storage conformance suite on a directory
//! and on a real S3-compatible server (moto, started by scripts/test.sh),
//! and hostile clients over real gRPC on loopback.

mod hostile;
mod storage;

/// The S3 endpoint of the test server, or a loud skip.
pub fn s3_endpoint() -> Option<String> {
    ds_hub::conformance::s3_test_endpoint()
}

/// Creates a fresh bucket on the test server and returns its name.
pub fn new_bucket(endpoint: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "ds-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let st = std::process::Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{endpoint}/{name}")])
        .status()
        .expect("curl");
    assert!(st.success(), "creating bucket {name}");
    name
}

pub fn s3_config(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("aws_endpoint", endpoint.to_string()),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
        ("aws_region", "us-east-1".into()),
    ]
}

//! Datasets: `ds dataset mirror` against a real S3 server (moto, started by
//! scripts/test.sh), the bucket changed by boto3 as other systems change
//! real buckets (multipart uploads, overwrites, deletes, versioning), and
//! the mirror interrupted, raced and fed hostile keys.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{ds, json, noise, ok, s3_endpoint};

/// A bucket on the test server, and the commands that use it.
struct Bucket {
    ep: String,
    name: String,
    dir: tempfile::TempDir,
}

fn python() -> PathBuf {
    let venv = std::env::var_os("DS_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ds-moto"));
    venv.join("bin/python")
}

impl Bucket {
    /// A new bucket `name-<unique>` (the server outlives test runs).
    fn new(ep: &str, name: &str, versioned: bool) -> Bucket {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let name = format!("{name}-{}-{}", std::process::id(), t.subsec_nanos());
        let b = Bucket {
            ep: ep.to_string(),
            name: name.clone(),
            dir: tempfile::tempdir().unwrap(),
        };
        let mut a = vec!["bucket", name.as_str()];
        if versioned {
            a.push("versioned");
        }
        b.ctl(&a);
        b
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/s3ctl.py"
            ))
            .args(args)
            .env("DS_TEST_S3_ENDPOINT", &self.ep)
            .output()
            .expect("run s3ctl.py (boto3 from the moto venv)");
        assert!(
            out.status.success(),
            "s3ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Uploads `data` as `key` (multipart with parts of `part` bytes).
    fn put(&self, key: &str, data: &[u8], part: Option<usize>) {
        let f = self.dir.path().join("upload");
        fs::write(&f, data).unwrap();
        let part = part.map(|p| p.to_string());
        let mut a = vec!["put", &self.name, key, f.to_str().unwrap()];
        if let Some(p) = &part {
            a.push(p);
        }
        self.ctl(&a);
    }

    fn delete(&self, key: &str) {
        self.ctl(&["delete", &self.name, key]);
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["keys", &self.name, prefix])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }
}

/// `ds` with the test server's endpoint and credentials.
fn dss(store: &Path, ep: &str) -> Command {
    let mut c = ds(store);
    c.env("AWS_ENDPOINT_URL", ep)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ENDPOINT");
    c
}

fn mirror(
    store: &Path,
    b: &Bucket,
    prefix: &str,
    dataset: &str,
    extra: &[&str],
) -> serde_json::Value {
    json(&ok(dss(store, &b.ep)
        .args([
            "dataset",
            "mirror",
            &b.url(prefix),
            "--dataset",
            dataset,
            "--json",
        ])
        .args(extra)))
}

/// Every regular file under `root`, by relative path.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                walk(root, &rel, out);
            } else {
                out.insert(rel.clone(), fs::read(root.join(&rel)).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn restore(store: &Path, spec: &str) -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("r");
    ok(ds(store).args(["restore", spec]).arg(&dest));
    let f = files(&dest);
    (d, f)
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn a_mirror_downloads_only_what_changed_and_restores_by_key() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-incremental", false);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let big = noise(12 << 20, 1);
    b.put("data/train/part-0.bin", &big, Some(5 << 20));
    b.put("data/labels.csv", b"id,label\n1,cat\n", None);
    b.put("data/README", b"the data\n", None);
    b.put("elsewhere/x", b"not under the prefix\n", None);

    let m1 = mirror(&store, &b, "data", "raw", &[]);
    assert_eq!(n(&m1, "objects"), 3);
    assert_eq!(n(&m1, "objects_fetched"), 3);
    assert_eq!(n(&m1, "bytes_fetched"), big.len() as u64 + 15 + 9);
    assert_eq!(m1["changed"], true);
    let id1 = m1["id"].as_str().unwrap().to_string();
    let (_d, got) = restore(&store, "raw");
    let want: BTreeMap<String, Vec<u8>> = [
        ("train/part-0.bin".to_string(), big.clone()),
        ("labels.csv".to_string(), b"id,label\n1,cat\n".to_vec()),
        ("README".to_string(), b"the data\n".to_vec()),
    ]
    .into();
    assert_eq!(
        got, want,
        "the restored tree is the bucket's objects under the prefix, by key"
    );

    // Nothing changed: nothing fetched, no new snapshot.
    let m2 = mirror(&store, &b, "data", "raw", &[]);
    assert_eq!((n(&m2, "objects_fetched"), n(&m2, "bytes_fetched")), (0, 0));
    assert_eq!(m2["changed"], false);
    assert_eq!(m2["id"].as_str().unwrap(), id1);

    // The same bytes written again (same ETag): not downloaded. The big
    // object uploaded again with other part sizes: a new multipart ETag,
    // the same bytes: downloaded, but no new data stored.
    b.put("data/labels.csv", b"id,label\n1,cat\n", None);
    b.put("data/train/part-0.bin", &big, Some(6 << 20));
    let m3 = mirror(&store, &b, "data", "raw", &[]);
    assert_eq!(n(&m3, "objects_fetched"), 1, "{m3}");
    assert_eq!(n(&m3, "bytes_fetched"), big.len() as u64);
    assert!(
        n(&m3, "bytes_written") < 64 << 10,
        "unchanged content adds no chunks: {m3}"
    );

    // A deletion and an addition.
    b.delete("data/README");
    b.put("data/train/part-1.bin", &noise(300_000, 2), None);
    let m4 = mirror(&store, &b, "data", "raw", &[]);
    assert_eq!(n(&m4, "objects"), 3);
    assert_eq!(
        (
            n(&m4, "objects_fetched"),
            n(&m4, "objects_added"),
            n(&m4, "objects_removed")
        ),
        (1, 1, 1)
    );
    assert_eq!(n(&m4, "bytes_fetched"), 300_000);
    let (_d, got) = restore(&store, "raw");
    assert!(!got.contains_key("README") && got["train/part-1.bin"] == noise(300_000, 2));
    // Old versions stay whole.
    let (_d, old) = restore(&store, &id1);
    assert_eq!(old, want);

    // A dataset is a workspace: log, diff, datasets, verify.
    let log = json(&ok(ds(&store).args(["log", "raw", "--json"])));
    assert_eq!(log.as_array().unwrap().len(), 3, "{log}");
    let diff = String::from_utf8(ok(ds(&store).args(["diff", &id1, "raw"])).stdout).unwrap();
    assert!(
        diff.contains("README") && diff.contains("part-1.bin"),
        "{diff}"
    );
    let list = json(&ok(ds(&store).args(["datasets", "--json"])));
    assert_eq!(list[0]["name"], "raw");
    assert_eq!(list[0]["source"], format!("s3://{}/data/", b.name));
    assert_eq!(list[0]["objects"], 3);
    ok(ds(&store).arg("verify"));
    // The listing time and the ETags are recorded.
    let show = json(&ok(ds(&store).args(["log", "raw", "--json"])));
    assert!(
        show[0]["metadata"]["dataset.listed_at"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{show}"
    );
    let ls = json(&ok(ds(&store).args(["ls", "raw", "train", "--json"])));
    let etag = &ls.as_array().unwrap()[0]["xattrs"];
    assert!(etag.to_string().contains("user.ds.s3.etag"), "{ls}");

    // A workspace is not a dataset.
    let w = tempfile::tempdir().unwrap();
    fs::write(w.path().join("f"), b"x").unwrap();
    ok(ds(&store).arg("snapshot").arg(w.path()).args(["-w", "ws"]));
    let out = dss(&store, &ep)
        .args(["dataset", "mirror", &b.url("data"), "-d", "ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a dataset"));
}

#[test]
fn keys_that_are_not_paths_are_mapped_reversibly_and_exported_back() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-keys", false);
    // S3's longest key: 1,024 bytes (a 1,022-byte segment, over the 255
    // of a file name).
    let long = format!("p/{}", "k".repeat(1022));
    assert_eq!(long.len(), 1024);
    let keys: Vec<String> = [
        "p/a//b",
        "p/../x",
        "p/dir/",
        "p/./dot",
        "p/a",
        "p/a/b",
        "p/%25",
        "p/sp ace+plus",
        "p/ü/ñ",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long.clone()])
    .collect();
    for (i, k) in keys.iter().enumerate() {
        b.put(k, format!("object {i}: {k}\n").as_bytes(), None);
    }
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let m = mirror(&store, &b, "p", "keys", &[]);
    assert_eq!(n(&m, "objects"), keys.len() as u64);
    let mapped: Vec<&str> = m["mapped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    for k in ["p/a//b", "p/../x", "p/dir/", "p/./dot", "p/a", &long] {
        assert!(
            mapped.contains(&k),
            "{k} not reported as mapped: {mapped:?}"
        );
    }
    let (_d, got) = restore(&store, "keys");
    assert_eq!(
        got.len(),
        keys.len(),
        "every key is a file: {:?}",
        got.keys()
    );
    assert!(got.contains_key("sp ace+plus") && got.contains_key("ü/ñ") && got.contains_key("a/b"));
    for (path, data) in &got {
        assert!(
            path.split('/')
                .all(|c| !c.is_empty() && c.len() <= 255 && c != "." && c != "..")
        );
        assert!(String::from_utf8_lossy(data).starts_with("object "));
    }

    // Exported to another bucket: the exact keys and bytes come back.
    let out = Bucket::new(&ep, "ds-export-keys", false);
    let e = json(&ok(dss(&store, &ep).args([
        "dataset",
        "export",
        "keys",
        &out.url("q"),
        "--json",
    ])));
    assert_eq!(n(&e, "objects"), keys.len() as u64);
    assert_eq!(n(&e, "objects_written"), keys.len() as u64);
    let mut want: Vec<String> = keys.iter().map(|k| format!("q/{}", &k[2..])).collect();
    want.sort();
    assert_eq!(out.keys("q/"), want);
    let back = mirror(&store, &out, "q", "keys-back", &[]);
    assert_eq!(n(&back, "objects"), keys.len() as u64);
    let (_d2, again) = restore(&store, "keys-back");
    assert_eq!(again, got, "export then mirror gives the same tree");
    // Exporting again writes nothing: the destination holds those versions.
    let e2 = json(&ok(dss(&store, &ep).args([
        "dataset",
        "export",
        "keys-back",
        &out.url("q"),
        "--json",
    ])));
    assert_eq!(n(&e2, "objects_written"), 0, "{e2}");
}

#[test]
fn ten_thousand_keys_list_and_one_percent_remirrors() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-10k", false);
    b.ctl(&["bulk", &b.name, "many/a/", "5000"]);
    b.ctl(&["bulk", &b.name, "many/b/", "5000"]);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let m = mirror(&store, &b, "many", "many", &[]);
    assert_eq!(
        (n(&m, "objects"), n(&m, "objects_fetched")),
        (10_000, 10_000)
    );
    for i in (0..5000).step_by(50) {
        b.put(
            &format!("many/a/{i:05}"),
            format!("changed {i}\n").as_bytes(),
            None,
        );
    }
    let m2 = mirror(&store, &b, "many", "many", &[]);
    assert_eq!(
        (
            n(&m2, "objects"),
            n(&m2, "objects_fetched"),
            n(&m2, "objects_modified")
        ),
        (10_000, 100, 100)
    );
    let (_d, got) = restore(&store, "many");
    assert_eq!(got.len(), 10_000);
    assert_eq!(got["a/00050"], b"changed 50\n");
    eprintln!(
        "10,000 keys: first mirror {:.2}s (listing {:.2}s), 1% changed {:.2}s",
        m["seconds"].as_f64().unwrap(),
        m["list_seconds"].as_f64().unwrap(),
        m2["seconds"].as_f64().unwrap()
    );
}

#[test]
fn a_versioned_bucket_records_each_objects_version() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-versioned", true);
    b.put("v/model.bin", &noise(100_000, 3), None);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    mirror(&store, &b, "v", "ver", &[]);
    // Read back from a restored file's attributes, as a user would.
    let version = |store: &Path| {
        let (d, _) = restore(store, "ver");
        let out = ok(Command::new("python3")
            .args([
                "-c",
                "import os,sys; print(os.getxattr(sys.argv[1], 'user.ds.s3.version-id').decode())",
            ])
            .arg(d.path().join("r/model.bin")));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let v1 = version(&store);
    assert!(!v1.is_empty());
    b.put("v/model.bin", &noise(100_000, 4), None);
    let m = mirror(&store, &b, "v", "ver", &[]);
    assert_eq!(n(&m, "objects_fetched"), 1);
    let v2 = version(&store);
    assert_ne!(v1, v2);
}

fn wait_for(p: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reached(flag: &Path) -> PathBuf {
    PathBuf::from(format!("{}.reached", flag.display()))
}

#[test]
fn an_object_that_changes_while_it_is_read_is_stored_whole_at_one_version() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-race", false);
    let (old, new) = (noise(8 << 20, 5), noise(8 << 20, 6));
    b.put("r/big.bin", &old, None);
    b.put("r/small", b"small\n", None);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let flag = s.path().join("go");
    let child = dss(&store, &ep)
        .args([
            "dataset",
            "mirror",
            &b.url("r"),
            "-d",
            "race",
            "--json",
            "--part-size",
            "1048576",
        ])
        .env("DS_TEST_PAUSE_AFTER_FIRST_PART", &flag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&reached(&flag));
    // The first parts of the old version are in; the object changes.
    b.put("r/big.bin", &new, None);
    fs::write(&flag, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_d, got) = restore(&store, "race");
    assert!(
        got["big.bin"] == new,
        "stored whole at the new version, never mixed"
    );
    ok(ds(&store).arg("verify"));
}

#[test]
fn an_object_deleted_after_the_listing_is_left_out_with_a_warning() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-gone", false);
    b.put("g/stays", b"stays\n", None);
    b.put("g/goes", b"goes\n", None);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let flag = s.path().join("go");
    let child = dss(&store, &ep)
        .args(["dataset", "mirror", &b.url("g"), "-d", "gone", "--json"])
        .env("DS_TEST_PAUSE_AFTER_LIST", &flag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&reached(&flag));
    b.delete("g/goes");
    fs::write(&flag, b"").unwrap();
    let out: Output = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = json(&out);
    assert_eq!((n(&m, "objects"), n(&m, "objects_skipped")), (2, 1));
    assert!(
        m["warnings"][0]
            .as_str()
            .unwrap()
            .contains("deleted while mirroring"),
        "{m}"
    );
    let (_d, got) = restore(&store, "gone");
    assert_eq!(got.keys().collect::<Vec<_>>(), ["stays"]);
}

#[test]
fn a_mirror_killed_halfway_resumes_without_downloading_again() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-kill", false);
    for i in 0..50 {
        b.put(&format!("k/small-{i:02}"), &noise(20_000, i), None);
    }
    // Sorted last, read last, in parts: the mirror pauses inside it, with
    // five batches of ten small objects durable and journaled.
    let big = noise(8 << 20, 99);
    b.put("k/zz-big", &big, None);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let flag = s.path().join("never");
    let mut child = dss(&store, &ep)
        .args([
            "dataset",
            "mirror",
            &b.url("k"),
            "-d",
            "killed",
            "--jobs",
            "1",
        ])
        .args(["--batch-objects", "10", "--part-size", "1048576"])
        .env("DS_TEST_PAUSE_AFTER_FIRST_PART", &flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&reached(&flag));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    ok(ds(&store).arg("verify"));
    let m = mirror(&store, &b, "k", "killed", &[]);
    assert_eq!(
        (n(&m, "objects_resumed"), n(&m, "objects_fetched")),
        (50, 1),
        "{m}"
    );
    assert_eq!(n(&m, "bytes_fetched"), big.len() as u64);
    let (_d, got) = restore(&store, "killed");
    assert_eq!(got.len(), 51);
    assert!(got["zz-big"] == big);
    ok(ds(&store).arg("verify"));
    assert!(
        !store.join("datasets/killed.journal").exists(),
        "the journal goes once committed"
    );
}

#[test]
fn bad_sources_and_credentials_get_clear_errors() {
    let Some(ep) = s3_endpoint() else { return };
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let fail = |c: &mut Command| -> String {
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{c:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e =
        fail(dss(&store, &ep).args(["dataset", "mirror", "s3://no-such-bucket-here/x", "-d", "d"]));
    assert!(e.contains("NoSuchBucket"), "{e}");
    let e = fail(
        ds(&store)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_ENDPOINT_URL", &ep)
            .env("AWS_ALLOW_HTTP", "true")
            .args(["dataset", "mirror", "s3://b/x", "-d", "d"]),
    );
    assert!(
        e.contains("no S3 credentials") && e.contains("--anonymous"),
        "{e}"
    );
    let e = fail(
        dss(&store, &ep)
            .env("AWS_ALLOW_HTTP", "false")
            .args(["dataset", "mirror", "s3://b/x", "-d", "d"]),
    );
    assert!(e.contains("AWS_ALLOW_HTTP"), "{e}");
    let out = dss(&store, &ep)
        .args(["dataset", "mirror", "gs://b/x", "-d", "d"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://"));
    let out = dss(&store, &ep)
        .args(["dataset", "mirror", "s3://b/x", "-d", "../x"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!store.join("refs").exists() || fs::read_dir(store.join("refs")).unwrap().count() == 0);
}

/// A moto server of this test's own that checks every request's signature
/// against the IAM user it creates (moto checks none by default).
struct CheckedS3 {
    child: std::process::Child,
    ep: String,
}

impl Drop for CheckedS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn checked_s3() -> CheckedS3 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python().with_file_name("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server from the moto venv");
    let ep = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    CheckedS3 { child, ep }
}

#[test]
fn signatures_are_checked_and_wrong_credentials_refused() {
    if s3_endpoint().is_none() {
        return;
    }
    let s3 = checked_s3();
    let b = Bucket {
        ep: s3.ep.clone(),
        name: "ds-signed".into(),
        dir: tempfile::tempdir().unwrap(),
    };
    let keys: serde_json::Value = serde_json::from_str(&b.ctl(&["iam-user", "ds-signed"])).unwrap();
    let (id, secret) = (
        keys["id"].as_str().unwrap(),
        keys["secret"].as_str().unwrap(),
    );
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    // Right keys: every request (a listing, a GET of a key with a space and
    // a `..` segment) passes moto's signature check.
    let m = json(&ok(dss(&store, &s3.ep)
        .env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .args([
            "dataset",
            "mirror",
            "s3://ds-signed/d",
            "-d",
            "signed",
            "--json",
        ])));
    assert_eq!(n(&m, "objects_fetched"), 1, "{m}");
    let (_d, got) = restore(&store, "signed");
    assert_eq!(got.values().next().unwrap(), b"checked\n");
    for (kid, sec, code) in [
        (id, "wrong-secret", "SignatureDoesNotMatch"),
        ("AKIAWRONG", secret, "InvalidAccessKeyId"),
    ] {
        let out = dss(&store, &s3.ep)
            .env("AWS_ACCESS_KEY_ID", kid)
            .env("AWS_SECRET_ACCESS_KEY", sec)
            .args(["dataset", "mirror", "s3://ds-signed/d", "-d", "signed2"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(code) && e.contains("403"), "{e}");
    }
}

/// The whole path: a bucket mirrored, pushed to a hub, read by a task
/// through `ds run --dataset`; a later mirror is a new version, and the
/// task that asked for the old one by id still gets the old bytes.
#[test]
fn a_mirrored_dataset_is_read_by_a_task_at_the_version_it_names() {
    use crate::tasks::{client, hub, runner_token, start_runner, text};
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-task", false);
    b.put("raw/labels.csv", b"cat,1\n", None);
    b.put("raw/img/0001.png", &vec![7u8; 300_000], None);
    let t = tempfile::tempdir().unwrap();
    let me = t.path().join("me");
    let v1 = mirror(&me, &b, "raw", "raw", &[]);
    b.put("raw/labels.csv", b"cat,1\ndog,2\n", None);
    mirror(&me, &b, "raw", "raw", &[]);
    let hub = hub(t.path(), "5");
    ok(&mut client(&me, &hub, &hub.admin, &["push", "raw"]));
    let rt = runner_token(&hub, "r1");
    let _runner = start_runner(&hub, &rt, "r1", &t.path().join("cache"), &[]);
    let v1 = v1["id"].as_str().unwrap();
    let run = |at: &str| {
        let o = ok(&mut client(
            &me,
            &hub,
            &hub.admin,
            &[
                "run",
                "-w",
                "w",
                "--dataset",
                at,
                "--",
                "sh",
                "-c",
                "cat data/labels.csv; wc -c < data/img/0001.png",
            ],
        ));
        text(&o).0
    };
    assert_eq!(run("raw:data"), "cat,1\ndog,2\n300000\n");
    assert_eq!(run(&format!("raw@{}:data", &v1[..8])), "cat,1\n300000\n");
}

/// An object bigger than a batch is stored in pieces, each durable and
/// journaled: a mirror SIGKILLed after one resumes inside the object,
/// downloading only what follows it, and the object is stored whole and
/// exactly (the pieces' chunks are those of one read).
#[test]
fn a_mirror_killed_inside_a_big_object_resumes_inside_it() {
    let Some(ep) = s3_endpoint() else { return };
    let b = Bucket::new(&ep, "ds-mirror-piece", false);
    let big = noise(48 << 20, 7);
    b.put("p/model.bin", &big, Some(8 << 20)); // a multipart ETag
    b.put("p/small", b"s\n", None);
    let s = tempfile::tempdir().unwrap();
    let store = s.path().join("store");
    let flag = s.path().join("never");
    let pieces = ["--batch-bytes", "16777216", "--part-size", "4194304"];
    let mut child = dss(&store, &ep)
        .args(["dataset", "mirror", &b.url("p"), "-d", "big"])
        .args(pieces)
        .env("DS_TEST_PAUSE_AFTER_PIECE", &flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&reached(&flag));
    child.kill().unwrap(); // SIGKILL, one 16 MiB piece journaled
    child.wait().unwrap();
    ok(ds(&store).arg("verify"));
    let m = mirror(&store, &b, "p", "big", &pieces);
    let resumed = n(&m, "bytes_resumed");
    assert!((16 << 20..20 << 20).contains(&resumed), "{m}");
    assert!(
        n(&m, "bytes_fetched") < (48 << 20) - (12 << 20),
        "only what follows the piece is downloaded again: {m}"
    );
    let (_d, got) = restore(&store, "big");
    assert!(got["model.bin"] == big, "stored whole and exactly");
    ok(ds(&store).arg("verify"));
    // The same bytes mirrored in one go give the same file.
    let other = s.path().join("other");
    mirror(&other, &b, "p", "big", &[]);
    // (Same entries, so the same tree root iff the same file manifests.)
    let id = |st: &Path| json(&ok(ds(st).args(["log", "big", "--json"])))[0]["root"].clone();
    assert_eq!(id(&store), id(&other), "the same chunks as one whole read");
}

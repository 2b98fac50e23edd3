//! The S3 writer against a real S3 server on 127.0.0.1: s3s with its file-system backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client;
use ferry::error::ErrorKind;
use ferry::runner::{RunReport, RunStatus};
use ferry::state::Ledger;
use sha2::{Digest as _, Sha256};

use crate::support::s3::*;
use crate::support::{Workspace, random_file, sha256_file};

async fn run(ws: &Workspace, text: &str, ledger: Option<&Ledger>) -> RunReport {
    ws.secret("s3", SECRET_KEY);
    ws.run_first(text, ledger).await
}

/// The object's bytes' sha256 and its metadata.
async fn read_back(
    client: &Client,
    key: &str,
) -> (String, u64, std::collections::HashMap<String, String>) {
    let object = client
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("the object exists");
    let metadata = object.metadata().cloned().unwrap_or_default();
    let mut body = object.body;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = body.try_next().await.expect("read the body") {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (hex::encode(hasher.finalize()), len, metadata)
}

#[tokio::test]
async fn a_small_object_is_put_with_its_metadata() {
    let (server, _root) = server().await;
    let ws = Workspace::new();
    let text = s3_job(
        "small",
        r#"{ type = "inline", data = "hello, bucket\n" }"#,
        server.addr,
        "greetings/{job}.txt",
        r#", content_type = "text/plain", metadata = { team = "data" }"#,
    );
    let report = run(&ws, &text, None).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let delivery = &report.deliveries[0];
    assert_eq!(delivery.location, "s3://deliveries/greetings/small.txt");
    assert_eq!(
        delivery.link.as_deref(),
        Some("s3://deliveries/greetings/small.txt")
    );
    let (sha, len, metadata) = read_back(&client(server.addr), "greetings/small.txt").await;
    assert_eq!(len, 14);
    assert_eq!(sha, delivery.sha256);
    assert_eq!(
        metadata.get("sha256"),
        Some(&delivery.sha256),
        "{metadata:?}"
    );
    assert_eq!(metadata.get("job").map(String::as_str), Some("small"));
    assert_eq!(metadata.get("run-id"), Some(&report.run_id));
    assert_eq!(metadata.get("team").map(String::as_str), Some("data"));
}

#[tokio::test]
async fn a_200_mib_file_goes_up_in_parts_and_reads_back_identical() {
    let (server, _root) = server().await;
    let ws = Workspace::new();
    let input = ws.path().join("big.bin");
    random_file(&input, 200 << 20);
    let text = s3_job(
        "big",
        r#"{ type = "file", path = "big.bin" }"#,
        server.addr,
        "big/{run_id}.bin",
        r#", part_size = "8MiB", concurrency = 4, checksum_file = true"#,
    );
    let report = run(&ws, &text, None).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let want = sha256_file(&input);
    assert_eq!(report.deliveries[0].sha256, want);
    let key = format!("big/{}.bin", report.run_id);
    let (sha, len, metadata) = read_back(&client(server.addr), &key).await;
    assert_eq!(len, 200 << 20);
    assert_eq!(sha, want, "read back identical");
    // The sha256 stays verifiable without a second pass over the object (no copy onto
    // itself, which also fails above 5 GiB): it is in `KEY.sha256`, in sha256sum format.
    assert_eq!(metadata.get("sha256"), None, "no self-copy: {metadata:?}");
    let sidecar = client(server.addr)
        .get_object()
        .bucket(BUCKET)
        .key(format!("{key}.sha256"))
        .send()
        .await
        .expect("the checksum file exists");
    let text = sidecar.body.collect().await.expect("read").into_bytes();
    let name = key.rsplit('/').next().expect("name");
    assert_eq!(
        std::str::from_utf8(&text).expect("text"),
        format!("{want}  {name}\n")
    );
    assert_eq!(
        server.parts.lock().expect("lock").len(),
        25,
        "200 MiB in 8 MiB parts"
    );
}

#[tokio::test]
async fn a_source_of_unknown_length_works() {
    let (server, _root) = server().await;
    let ws = Workspace::new();
    random_file(&ws.path().join("input.bin"), 12 << 20);
    let text = s3_job(
        "piped",
        r#"{ type = "command", command = ["cat", "input.bin"] }"#,
        server.addr,
        "piped.bin",
        r#", part_size = "5MiB""#,
    );
    let report = run(&ws, &text, None).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let (sha, len, _) = read_back(&client(server.addr), "piped.bin").await;
    assert_eq!(len, 12 << 20);
    assert_eq!(sha, sha256_file(&ws.path().join("input.bin")));
}

#[tokio::test]
async fn create_only_refuses_an_existing_key() {
    let (server, _root) = server().await;
    let ws = Workspace::new();
    let first = s3_job(
        "once",
        r#"{ type = "inline", data = "first" }"#,
        server.addr,
        "once.txt",
        ", if_none_match = true",
    );
    assert_eq!(run(&ws, &first, None).await.status, RunStatus::Succeeded);
    let second = s3_job(
        "once",
        r#"{ type = "inline", data = "second" }"#,
        server.addr,
        "once.txt",
        ", if_none_match = true",
    );
    let report = run(&ws, &second, None).await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Rejected, "{failure:?}");
    assert_eq!(report.attempts, 1, "not retried");
    let (_, len, _) = read_back(&client(server.addr), "once.txt").await;
    assert_eq!(len, 5, "the first object is untouched");
}

#[tokio::test]
async fn wrong_credentials_fail_at_once() {
    let (server, _root) = server().await;
    let ws = Workspace::new();
    let text = s3_job(
        "denied",
        r#"{ type = "inline", data = "x" }"#,
        server.addr,
        "x.txt",
        "",
    )
    .replace(
        &format!("access_key_id = \"{ACCESS_KEY}\""),
        "access_key_id = \"AKIAWRONGWRONG\"",
    );
    let started = std::time::Instant::now();
    let report = run(&ws, &text, None).await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert_eq!(report.attempts, 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!failure.chain.join(" ").contains(SECRET_KEY));
}

#[tokio::test]
async fn the_presigned_link_downloads_the_object() {
    let (server, _root) = server().await;
    let ws = Workspace::new();
    let text = s3_job(
        "shared",
        r#"{ type = "inline", data = "for your eyes" }"#,
        server.addr,
        "shared.txt",
        r#", presign = "1h""#,
    );
    let report = run(&ws, &text, None).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let link = report.deliveries[0].link.clone().expect("a link");
    assert!(
        link.starts_with(&format!("http://{}/deliveries/shared.txt?", server.addr)),
        "{link}"
    );
    assert!(link.contains("X-Amz-Signature="), "{link}");
    let body = reqwest::get(&link).await.expect("GET the link");
    assert_eq!(body.status(), 200);
    assert_eq!(body.text().await.expect("body"), "for your eyes");
}

/// The server goes away mid-upload and comes back: the run's next attempt lists the
/// upload's parts and sends only what was missing.
#[tokio::test]
async fn an_interrupted_upload_resumes_from_its_finished_parts() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(root.path().join(BUCKET)).expect("bucket");
    let parts: Arc<Mutex<BTreeMap<u32, usize>>> = Arc::default();
    let server = S3Server::start(
        root.path(),
        "127.0.0.1:0".parse().expect("addr"),
        Arc::clone(&parts),
    )
    .await;
    let addr = server.addr;
    let ws = Workspace::new();
    let input = ws.path().join("input.bin");
    random_file(&input, 60 << 20);
    let text = s3_job(
        "resumable",
        r#"{ type = "file", path = "input.bin" }"#,
        addr,
        "resumable.bin",
        r#", part_size = "5MiB", concurrency = 2"#,
    )
    .replace(
        "schedule = \"@daily\"",
        "schedule = \"@daily\"\nrate_limit = \"15MiB\"",
    )
    // However long the server stays away, attempts keep coming until it is back.
    .replace(
        "retry = { max_attempts = 3, initial_interval = \"1s\" }",
        "retry = { max_attempts = 12, initial_interval = \"500ms\", max_interval = \"1s\" }",
    );
    assert!(
        text.contains("max_attempts = 12") && text.contains("rate_limit"),
        "{text}"
    );
    let ledger = ws.ledger().await;

    // Stop the server once six parts are in, and bring it back once the attempt has failed
    // (after the SDK's own retries of a request) and the run's next attempt has begun: it
    // must resume.
    let watcher_parts = Arc::clone(&parts);
    let root_path = root.path().to_path_buf();
    let watcher = ledger.clone();
    let restarter = tokio::spawn(async move {
        loop {
            if watcher_parts.lock().expect("lock").len() >= 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop();
        crate::support::wait_for_attempt(&watcher, "resumable", 2, Duration::from_secs(60)).await;
        S3Server::start(&root_path, addr, watcher_parts).await
    });
    let report = run(&ws, &text, Some(&ledger)).await;
    let _server = restarter.await.expect("restarted");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(report.attempts >= 2, "{report:#?}");
    assert!(
        report.resumed_from >= 5 << 20,
        "resumed after finished parts: {}",
        report.resumed_from
    );
    let sent = parts.lock().expect("lock").clone();
    assert_eq!(sent.len(), 12, "60 MiB in 5 MiB parts: {sent:?}");
    let sent_twice = sent.values().filter(|n| **n > 1).count();
    let finished_before = usize::try_from(report.resumed_from / (5 << 20)).expect("fits");
    eprintln!(
        "parts sent: {sent:?}; resumed after {finished_before} parts; {sent_twice} sent twice"
    );
    assert!(
        sent_twice <= 12 - finished_before,
        "parts before the resume point are not sent again"
    );
    assert!(
        sent.iter().take(finished_before).all(|(_, n)| *n == 1),
        "the finished parts were sent once: {sent:?}"
    );
    let (sha, len, _) = read_back(&client(addr), "resumable.bin").await;
    assert_eq!(len, 60 << 20);
    assert_eq!(sha, sha256_file(&input));
    assert_eq!(report.deliveries[0].sha256, sha256_file(&input));
}

/// Upload leftovers in the server's storage: s3s-fs keeps unfinished uploads as files.
fn upload_leftovers(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.contains("upload") {
                found.push(name);
            }
        }
    }
    found
}

/// A run that gives up aborts its multipart upload: nothing is left on the server, with
/// checkpoints (aborted when the run fails for good) and without (aborted at once).
#[tokio::test]
async fn a_run_that_gives_up_aborts_its_upload() {
    let (server, root) = server().await;
    let ws = Workspace::new();
    let text = s3_job(
        "doomed",
        r#"{ type = "command", command = ["sh", "-c", "head -c 12000000 /dev/zero; exit 1"] }"#,
        server.addr,
        "doomed.bin",
        r#", part_size = "5MiB""#,
    )
    .replace(
        "retry = { max_attempts = 3, initial_interval = \"1s\" }",
        "retry = { max_attempts = 2, initial_interval = \"10ms\" }",
    );
    assert!(text.contains("max_attempts = 2"), "{text}");
    let report = run(&ws, &text, None).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert!(
        server.parts.lock().expect("lock").len() >= 2,
        "parts were sent"
    );
    assert!(
        upload_leftovers(root.path()).is_empty(),
        "{:?}",
        upload_leftovers(root.path())
    );

    let ledger = ws.ledger().await;
    let report = run(&ws, &text, Some(&ledger)).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert!(
        upload_leftovers(root.path()).is_empty(),
        "{:?}",
        upload_leftovers(root.path())
    );
    let missing = client(server.addr)
        .head_object()
        .bucket(BUCKET)
        .key("doomed.bin")
        .send()
        .await;
    assert!(missing.is_err(), "no object appeared");
}

//! One source read once, written to several writers, with transforms and partial retries.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use ferry::RunContext;
use ferry::activity::DeliveryActivity;
use ferry::error::{DeliveryError, ErrorKind};
use ferry::runner::{ActivityRunner, RetryPolicy, RetryingActivity, RunStatus};
use ferry::source::FileSource;
use ferry::template::Template;
use ferry::writer::{Delivery, LocalWriter, Payload, Writer};
use futures::StreamExt as _;

use crate::support::run_job;
use crate::support::{Workspace, sha256_file, slot};

fn random_file(ws: &Workspace, name: &str, len: usize) -> std::path::PathBuf {
    let path = ws.path().join(name);
    crate::support::random_file(&path, len);
    path
}

#[tokio::test]
async fn two_writers_receive_identical_bytes() {
    let ws = Workspace::new();
    let input = random_file(&ws, "input.bin", 9 * 1024 * 1024 + 3);
    let text = r#"
[[jobs]]
name = "fan"
schedule = "@hourly"
source = { type = "file", path = "input.bin" }
writers = [
  { type = "local", path = "a/{job}/copy.bin" },
  { type = "local", path = "b/copy-{scheduled:%Y%m%d}.bin" },
]
"#;
    let report = run_job(&ws, text, "fan").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.deliveries.len(), 2);
    let (a, b) = (&report.deliveries[0], &report.deliveries[1]);
    let want = sha256_file(&input);
    assert_eq!(a.sha256, want);
    assert_eq!(b.sha256, want);
    assert_eq!(sha256_file(&ws.path().join("a/fan/copy.bin")), want);
    assert_eq!(sha256_file(&ws.path().join("b/copy-20261123.bin")), want);
    assert_eq!(a.bytes, 9 * 1024 * 1024 + 3);
    assert!(a.location.ends_with("a/fan/copy.bin"), "{}", a.location);
    assert_eq!(
        a.link.as_deref(),
        Some(format!("file://{}", a.location).as_str())
    );
}

#[tokio::test]
async fn gzip_and_zstd_transforms_round_trip() {
    let ws = Workspace::new();
    let input = random_file(&ws, "input.bin", 3 * 1024 * 1024);
    let original = std::fs::read(&input).expect("read input");
    for transform in ["gzip", "zstd"] {
        let text = format!(
            r#"
[[jobs]]
name = "z"
schedule = "@hourly"
source = {{ type = "file", path = "input.bin" }}
transform = "{transform}"
writers = [{{ type = "local", path = "out.{transform}" }}]
"#
        );
        let report = run_job(&ws, &text, "z").await;
        assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
        let compressed = std::fs::read(ws.path().join(format!("out.{transform}"))).expect("read");
        assert_eq!(report.deliveries[0].bytes, compressed.len() as u64);
        let mut restored = Vec::new();
        match transform {
            "gzip" => {
                flate2::read::GzDecoder::new(&compressed[..])
                    .read_to_end(&mut restored)
                    .expect("valid gzip");
            }
            _ => {
                restored = zstd::decode_all(&compressed[..]).expect("valid zstd");
            }
        }
        assert!(restored == original, "{transform} round trip");
    }
}

/// Fails its first write with a transient error, then delegates to a local writer.
#[derive(Debug)]
struct FlakyOnce {
    inner: LocalWriter,
    calls: AtomicUsize,
}

#[async_trait]
impl Writer for FlakyOnce {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn describe(&self) -> String {
        "flaky".into()
    }

    async fn write(
        &self,
        ctx: &RunContext,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            // Read a little, then fail as a dropped connection would.
            let _ = payload.next().await;
            return Err(DeliveryError::new(ErrorKind::Network, "connection reset"));
        }
        self.inner.write(ctx, payload).await
    }
}

/// Counts the writes it delegates.
#[derive(Debug)]
struct Counting {
    inner: LocalWriter,
    calls: AtomicUsize,
}

#[async_trait]
impl Writer for Counting {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn describe(&self) -> String {
        "counting".into()
    }

    async fn write(&self, ctx: &RunContext, payload: Payload) -> Result<Delivery, DeliveryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.write(ctx, payload).await
    }
}

#[tokio::test]
async fn a_retry_rewrites_only_the_writers_that_failed() {
    let ws = Workspace::new();
    let input = random_file(&ws, "input.bin", 2 * 1024 * 1024);
    let local = |name: &str| {
        LocalWriter::new(
            Template::parse_path(&ws.path().join(name).display().to_string()).expect("path"),
        )
    };
    let steady = Arc::new(Counting {
        inner: local("steady.bin"),
        calls: AtomicUsize::new(0),
    });
    let flaky = Arc::new(FlakyOnce {
        inner: local("flaky.bin"),
        calls: AtomicUsize::new(0),
    });
    let source = FileSource::new(Template::parse(&input.display().to_string()).expect("path"));
    let activity = DeliveryActivity::new(Arc::new(source), vec![steady.clone(), flaky.clone()]);
    let policy = RetryPolicy {
        initial_interval: std::time::Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    let report = ActivityRunner::new(RetryingActivity::new(activity, policy))
        .run(RunContext::new("fan", slot()))
        .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 2);
    assert_eq!(
        steady.calls.load(Ordering::SeqCst),
        1,
        "the writer that delivered is not rewritten"
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    let want = sha256_file(&input);
    assert_eq!(sha256_file(&ws.path().join("steady.bin")), want);
    assert_eq!(sha256_file(&ws.path().join("flaky.bin")), want);
    assert!(report.deliveries.iter().all(|d| d.sha256 == want));
}

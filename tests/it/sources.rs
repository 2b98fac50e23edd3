//! Every source kind, against real things: files, programs, and an HTTP server on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use ferry::error::ErrorKind;
use ferry::runner::{RunReport, RunStatus};

use crate::support::{Workspace, run_job, sha256_hex};

fn job(source: &str, extra: &str) -> String {
    format!(
        r#"[[jobs]]
name = "t"
schedule = "@hourly"
source = {source}
writers = [{{ type = "local", path = "out/result" }}]
retry = {{ max_attempts = 3, initial_interval = "10ms", max_interval = "20ms" }}
{extra}
"#
    )
}

fn failure_kind(report: &RunReport) -> ErrorKind {
    report.error.as_ref().expect("a failure report").kind
}

fn failure_text(report: &RunReport) -> String {
    report
        .error
        .as_ref()
        .expect("a failure report")
        .chain
        .join(": ")
}

#[tokio::test]
async fn inline_source_is_delivered_as_written() {
    let ws = Workspace::new();
    let report = run_job(
        &ws,
        &job(r#"{ type = "inline", data = "héllo\n" }"#, ""),
        "t",
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let written = std::fs::read(ws.path().join("out/result")).expect("delivered");
    assert_eq!(written, "héllo\n".as_bytes());
    assert_eq!(
        report.deliveries[0].sha256,
        sha256_hex("héllo\n".as_bytes())
    );
    assert_eq!(report.deliveries[0].bytes, 7);
}

#[tokio::test]
async fn a_missing_file_is_a_permanent_failure() {
    let ws = Workspace::new();
    let report = run_job(
        &ws,
        &job(r#"{ type = "file", path = "nope.csv" }"#, ""),
        "t",
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(failure_kind(&report), ErrorKind::NotFound);
    assert_eq!(report.attempts, 1, "not found is not retried");
    assert!(
        failure_text(&report).contains("nope.csv"),
        "{}",
        failure_text(&report)
    );
    assert!(ws.files().is_empty(), "nothing delivered: {:?}", ws.files());
}

#[tokio::test]
async fn the_file_path_is_a_template_over_the_slot() {
    let ws = Workspace::new();
    std::fs::write(ws.path().join("export-2026-11-23.csv"), "a,b\n").expect("write input");
    let report = run_job(
        &ws,
        &job(
            r#"{ type = "file", path = "export-{scheduled:%F}.csv" }"#,
            "",
        ),
        "t",
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        std::fs::read(ws.path().join("out/result")).expect("delivered"),
        b"a,b\n"
    );
}

fn big_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn url_source_streams_the_body() {
    let body = big_body(3 * 1024 * 1024 + 17);
    let served = body.clone();
    let addr = crate::support::serve(Router::new().route(
        "/export.csv",
        get(move || {
            let served = served.clone();
            async move {
                // Sent in 64 KiB pieces, as a real server streaming a large response would.
                let chunks: Vec<Result<Bytes, std::io::Error>> = served
                    .chunks(64 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Body::from_stream(futures::stream::iter(chunks))
            }
        }),
    ))
    .await;
    let ws = Workspace::new();
    let source = format!(r#"{{ type = "url", url = "http://{addr}/export.csv" }}"#);
    let report = run_job(&ws, &job(&source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let written = std::fs::read(ws.path().join("out/result")).expect("delivered");
    assert_eq!(written.len(), body.len());
    assert_eq!(report.deliveries[0].sha256, sha256_hex(&body));
}

#[tokio::test]
async fn url_404_fails_at_once() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let addr = crate::support::serve(Router::new().route(
        "/gone",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::NOT_FOUND, "no such export") }
        }),
    ))
    .await;
    let ws = Workspace::new();
    let source = format!(r#"{{ type = "url", url = "http://{addr}/gone" }}"#);
    let report = run_job(&ws, &job(&source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(failure_kind(&report), ErrorKind::NotFound);
    assert_eq!(report.attempts, 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 404 is asked once");
    let text = failure_text(&report);
    assert!(
        text.contains("404") && text.contains("no such export"),
        "{text}"
    );
    assert!(ws.files().is_empty(), "{:?}", ws.files());
}

#[tokio::test]
async fn url_500_then_200_is_retried_and_delivered() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let addr = crate::support::serve(Router::new().route(
        "/flaky",
        get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    (StatusCode::INTERNAL_SERVER_ERROR, "try later").into_response_parts()
                } else {
                    (StatusCode::OK, "fresh data").into_response_parts()
                }
            }
        }),
    ))
    .await;
    let ws = Workspace::new();
    let source = format!(r#"{{ type = "url", url = "http://{addr}/flaky" }}"#);
    let report = run_job(&ws, &job(&source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 2);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        std::fs::read(ws.path().join("out/result")).expect("delivered"),
        b"fresh data"
    );
}

trait IntoParts {
    fn into_response_parts(self) -> axum::response::Response;
}

impl IntoParts for (StatusCode, &'static str) {
    fn into_response_parts(self) -> axum::response::Response {
        axum::response::IntoResponse::into_response(self)
    }
}

#[tokio::test]
async fn url_429_is_transient_and_retried_until_attempts_run_out() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let addr = crate::support::serve(Router::new().route(
        "/busy",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::TOO_MANY_REQUESTS }
        }),
    ))
    .await;
    let ws = Workspace::new();
    let source = format!(r#"{{ type = "url", url = "http://{addr}/busy" }}"#);
    let report = run_job(&ws, &job(&source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(failure_kind(&report), ErrorKind::Throttled);
    assert_eq!(report.attempts, 3);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn url_server_down_is_a_network_failure() {
    // Take a free port and let it go: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let ws = Workspace::new();
    let source = format!(r#"{{ type = "url", url = "http://127.0.0.1:{port}/x" }}"#);
    let report = run_job(&ws, &job(&source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(failure_kind(&report), ErrorKind::Network);
    assert_eq!(report.attempts, 3, "connection failures are retried");
}

#[tokio::test]
async fn url_connection_cut_mid_body_leaves_nothing_behind() {
    let addr = crate::support::serve(Router::new().route(
        "/cut",
        get(|| async {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from(vec![b'a'; 256 * 1024])),
                Err(std::io::Error::other("the server fell over")),
            ];
            Body::from_stream(futures::stream::iter(chunks))
        }),
    ))
    .await;
    let ws = Workspace::new();
    let source = format!(r#"{{ type = "url", url = "http://{addr}/cut" }}"#);
    let report = run_job(&ws, &job(&source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    assert_eq!(failure_kind(&report), ErrorKind::Network);
    assert_eq!(report.attempts, 3);
    assert!(
        ws.files().is_empty(),
        "no final or partial file: {:?}",
        ws.files()
    );
}

#[tokio::test]
async fn url_sends_basic_auth_from_the_environment() {
    let addr = crate::support::serve(Router::new().route(
        "/private",
        get(|headers: axum::http::HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            // "reader:s3cret" in base64.
            if auth == "Basic cmVhZGVyOnMzY3JldA==" {
                (StatusCode::OK, "private data")
            } else {
                (StatusCode::UNAUTHORIZED, "who are you")
            }
        }),
    ))
    .await;
    // SAFETY: this variable is used by this test alone.
    unsafe { std::env::set_var("FERRY_TEST_URL_PASSWORD", "s3cret") };
    let ws = Workspace::new();
    let source = format!(
        r#"{{ type = "url", url = "http://{addr}/private", username = "reader", password_env = "FERRY_TEST_URL_PASSWORD" }}"#
    );
    let report = run_job(&ws, &job(&source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");

    let wrong = format!(
        r#"{{ type = "url", url = "http://{addr}/private", username = "reader", password = "wrong" }}"#
    );
    let report = run_job(&ws, &job(&wrong, ""), "t").await;
    assert_eq!(failure_kind(&report), ErrorKind::Auth);
    assert_eq!(report.attempts, 1, "bad credentials are not retried");
    assert!(
        !failure_text(&report).contains("wrong"),
        "{}",
        failure_text(&report)
    );
}

#[tokio::test]
async fn command_output_is_delivered() {
    let ws = Workspace::new();
    let source = r#"{ type = "command", command = ["sh", "-c", "printf 'slot=%s' \"$1\"", "sh", "{scheduled:%H%M}"] }"#;
    let report = run_job(&ws, &job(source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        std::fs::read(ws.path().join("out/result")).expect("delivered"),
        b"slot=1200"
    );
}

#[tokio::test]
async fn a_command_exiting_3_fails_with_its_stderr_and_commits_nothing() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("out")).expect("mkdir");
    std::fs::write(ws.path().join("out/result"), "yesterday's").expect("old file");
    let source = r#"{ type = "command", command = ["sh", "-c", "head -c 600000 /dev/zero; echo 'disk on fire' >&2; exit 3"] }"#;
    let report = run_job(&ws, &job(source, ""), "t").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(failure_kind(&report), ErrorKind::Command);
    assert_eq!(
        report.attempts, 3,
        "a failing command is retried by default"
    );
    let text = failure_text(&report);
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("disk on fire"), "{text}");
    assert_eq!(
        ws.files(),
        vec!["out/result".to_owned()],
        "no partial file left"
    );
    assert_eq!(
        std::fs::read(ws.path().join("out/result")).expect("old file"),
        b"yesterday's",
        "the previous delivery is untouched"
    );
}

#[tokio::test]
async fn a_missing_program_is_permanent() {
    let ws = Workspace::new();
    let source = r#"{ type = "command", command = ["/nonexistent/ferry-test-program"] }"#;
    let report = run_job(&ws, &job(source, ""), "t").await;
    assert_eq!(failure_kind(&report), ErrorKind::NotFound);
    assert_eq!(report.attempts, 1);
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test]
async fn a_command_over_its_timeout_is_killed_with_its_children() {
    let ws = Workspace::new();
    let pid_file = ws.path().join("sleep.pid");
    let source = format!(
        r#"{{ type = "command", command = ["sh", "-c", "sleep 30 & echo $! > {}; wait"] }}"#,
        pid_file.display()
    );
    let started = Instant::now();
    let report = run_job(
        &ws,
        &job(&source, "timeout = \"500ms\"\nretry.max_attempts = 1").replace(
            "retry = { max_attempts = 3, initial_interval = \"10ms\", max_interval = \"20ms\" }\n",
            "",
        ),
        "t",
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(failure_kind(&report), ErrorKind::Timeout);
    assert!(failure_text(&report).contains("timed out after 500ms"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the command wrote its child's pid")
        .trim()
        .parse()
        .expect("a pid");
    // The grandchild was in the command's process group: it must be gone (or a zombie
    // waiting for init to reap it), not still sleeping.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match process_state(pid) {
            None | Some('Z') | Some('X') => break,
            Some(state) if Instant::now() > deadline => {
                panic!("the command's child {pid} is still alive (state {state})")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

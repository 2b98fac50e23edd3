//! The `http` writer against a real HTTP server (axum on 127.0.0.1), over TLS through a
//! terminating front with a self-signed certificate: the body arrives whole (with
//! Content-Length when the size is known, chunked when not), secret headers and basic
//! authentication reach the server, and each kind of answer is the failure it should be.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry::error::ErrorKind;
use ferry::runner::RunStatus;

use crate::support::{Workspace, run_job, self_signed, self_signed_ca, serve, tls_front};

/// What the server got: one entry per request.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    /// The body, or why it could not be read whole.
    body: Result<Vec<u8>, String>,
    at: Instant,
}

/// How the server answers, request by request (the last answer repeats).
type Script = Vec<(StatusCode, Vec<(&'static str, &'static str)>)>;

#[derive(Clone, Default)]
struct Server {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
}

impl Server {
    /// Starts the server answering by `script` (an empty script answers 201).
    async fn start(script: Script) -> (String, Server) {
        let server = Server {
            script: Arc::new(Mutex::new(script)),
            ..Default::default()
        };
        let router = axum::Router::new()
            .route("/{*path}", axum::routing::any(receive))
            .with_state(server.clone());
        let addr = serve(router).await;
        (format!("http://{addr}"), server)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

async fn receive(
    State(server): State<Server>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .map(|bytes: Bytes| bytes.to_vec())
        .map_err(|err| format!("{err:?}"));
    server.received.lock().expect("lock").push(Received {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    });
    let (status, headers) = {
        let mut script = server.script.lock().expect("lock");
        match script.len() {
            0 => (StatusCode::CREATED, Vec::new()),
            1 => script[0].clone(),
            _ => script.remove(0),
        }
    };
    let mut response = (status, "answer from the test server").into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_static(name),
            axum::http::HeaderValue::from_static(value),
        );
    }
    response
}

/// The port of a `http://127.0.0.1:PORT` base URL.
fn port_of(base: &str) -> u16 {
    base.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

fn job(source: &str, writer: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "upload"
schedule = "0 0 0 * * *"
source = {source}
retry = {{ max_attempts = 3, initial_interval = "10ms", max_interval = "20ms" }}
writers = [{writer}]
"#
    )
}

const INLINE: &str = r#"{ type = "inline", data = "id,name\n1,ferry\n" }"#;

#[tokio::test]
async fn a_put_streams_the_body_with_its_length_and_secret_headers() {
    let (base, server) = Server::start(Vec::new()).await;
    let ws = Workspace::new();
    let token = ws.secret("token", "s3cr3t-token");
    let writer = format!(
        r#"{{ type = "http", url = "{base}/in/{{job}}-{{scheduled:%Y%m%d}}.csv?sig=abc", headers = {{ "X-Team" = "data", "Authorization" = {{ file = "{token}", prefix = "Bearer " }} }} }}"#
    );
    let report = run_job(&ws, &job(INLINE, &writer), "upload").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");

    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method, Method::PUT);
    assert_eq!(request.path, "in/upload-20261123.csv");
    assert_eq!(request.body.as_deref(), Ok(&b"id,name\n1,ferry\n"[..]));
    assert_eq!(request.headers["content-length"], "16");
    assert_eq!(request.headers["x-team"], "data");
    assert_eq!(request.headers["authorization"], "Bearer s3cr3t-token");
    // The receipt: the URL without its query (which may hold a signature).
    let delivery = &report.deliveries[0];
    assert_eq!(delivery.writer, "http");
    assert_eq!(
        delivery.location,
        format!("{base}/in/upload-20261123.csv?…")
    );
    assert!(!format!("{report:?}").contains("s3cr3t"));
    assert_eq!(delivery.bytes, 16);
}

#[tokio::test]
async fn a_body_of_unknown_size_is_sent_chunked_with_post_and_basic_auth() {
    let (base, server) = Server::start(Vec::new()).await;
    let ws = Workspace::new();
    let password = ws.secret("password", "hunter2");
    // A program's output has no size in advance.
    let source =
        r#"{ type = "command", command = ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"] }"#;
    let writer = format!(
        r#"{{ type = "http", method = "POST", url = "{base}/drop", username = "ferry", password_file = "{password}", expect_status = [201] }}"#
    );
    let report = run_job(&ws, &job(source, &writer), "upload").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let received = server.received();
    let request = &received[0];
    assert_eq!(request.method, Method::POST);
    assert!(request.headers.get("content-length").is_none());
    assert_eq!(request.headers["transfer-encoding"], "chunked");
    // "ferry:hunter2"
    assert_eq!(
        request.headers["authorization"],
        "Basic ZmVycnk6aHVudGVyMg=="
    );
    let body = request.body.as_ref().expect("the whole body");
    assert_eq!(body.len(), 3_000_000);
    assert!(body.iter().all(|&b| b == b'x'));
    assert_eq!(report.deliveries[0].bytes, 3_000_000);
}

#[tokio::test]
async fn a_503_with_retry_after_is_waited_for_then_retried() {
    let (base, server) = Server::start(vec![
        (StatusCode::SERVICE_UNAVAILABLE, vec![("retry-after", "1")]),
        (StatusCode::OK, Vec::new()),
    ])
    .await;
    let ws = Workspace::new();
    let writer = format!(r#"{{ type = "http", url = "{base}/in/data.csv" }}"#);
    let report = run_job(&ws, &job(INLINE, &writer), "upload").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 2);
    let received = server.received();
    assert_eq!(received.len(), 2);
    // The retry interval is 20 ms at most; the server asked for a second.
    let waited = received[1].at - received[0].at;
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert_eq!(received[1].body.as_deref(), Ok(&b"id,name\n1,ferry\n"[..]));
}

#[tokio::test]
async fn answers_that_are_not_a_delivery_fail_with_their_kind() {
    for (status, kind, attempts, says) in [
        (
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            1,
            "answered 404 Not Found",
        ),
        (
            StatusCode::FORBIDDEN,
            ErrorKind::Auth,
            1,
            "answered 403 Forbidden",
        ),
        (
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Throttled,
            3,
            "answered 429",
        ),
        (
            StatusCode::BAD_GATEWAY,
            ErrorKind::Server,
            3,
            "answered 502",
        ),
        (
            StatusCode::TEMPORARY_REDIRECT,
            ErrorKind::Rejected,
            1,
            "a redirect: not followed",
        ),
        // A 2xx that is not one of `expect_status`.
        (
            StatusCode::OK,
            ErrorKind::Rejected,
            1,
            "answered 200 OK, not one of 201, 204",
        ),
    ] {
        let (base, server) = Server::start(vec![(status, vec![("location", "/elsewhere")])]).await;
        let ws = Workspace::new();
        let writer = format!(
            r#"{{ type = "http", url = "{base}/in/data.csv", expect_status = [201, 204] }}"#
        );
        let report = run_job(&ws, &job(INLINE, &writer), "upload").await;
        assert_eq!(report.status, RunStatus::Failed, "{status}: {report:#?}");
        let error = report.error.as_ref().expect("an error");
        assert_eq!(error.kind, kind, "{status}: {error:#?}");
        assert_eq!(report.attempts, attempts, "{status}");
        assert_eq!(server.received().len(), attempts as usize, "{status}");
        let chain = error.chain.join(" | ");
        assert!(chain.contains(says), "{status}: {chain}");
        assert!(
            chain.contains("answer from the test server")
                || status.is_redirection()
                || status.is_success(),
            "{status}: the server's words: {chain}"
        );
    }
}

#[tokio::test]
async fn a_source_failing_mid_body_fails_the_run_with_its_own_error() {
    let (base, server) = Server::start(Vec::new()).await;
    let ws = Workspace::new();
    let source = r#"{ type = "command", command = ["sh", "-c", "head -c 600000 /dev/zero; echo 'disk on fire' >&2; exit 3"] }"#;
    let writer = format!(r#"{{ type = "http", url = "{base}/in/data.bin" }}"#);
    let text = job(source, &writer).replace("max_attempts = 3", "max_attempts = 1");
    let report = run_job(&ws, &text, "upload").await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let chain = report.error.as_ref().expect("an error").chain.join(" | ");
    assert!(chain.contains("disk on fire"), "{chain}");
    // The server never got a whole body.
    for request in server.received() {
        assert!(request.body.is_err(), "{:?}", request.body.map(|b| b.len()));
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_a_network_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let ws = Workspace::new();
    let writer = format!(r#"{{ type = "http", url = "http://127.0.0.1:{port}/in/data.csv" }}"#);
    let report = run_job(&ws, &job(INLINE, &writer), "upload").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.attempts, 3);
    let error = report.error.as_ref().expect("an error");
    assert_eq!(error.kind, ErrorKind::Network, "{error:#?}");
}

#[tokio::test]
async fn https_trusts_the_ca_file_and_nothing_else() {
    let (base, server) = Server::start(Vec::new()).await;
    let backend = port_of(&base);
    let ws = Workspace::new();
    let tls = self_signed(ws.path());
    let port = tls_front(&tls, backend).await;
    let url = format!("https://127.0.0.1:{port}/in/data.csv");

    let trusted = format!(r#"{{ type = "http", url = "{url}", ca_file = "server.pem" }}"#);
    let report = run_job(&ws, &job(INLINE, &trusted), "upload").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.deliveries[0].location, url);
    assert_eq!(server.received().len(), 1);

    // The system's roots do not know the self-signed certificate.
    let untrusted = format!(r#"{{ type = "http", url = "{url}" }}"#);
    let report = run_job(&ws, &job(INLINE, &untrusted), "upload").await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    assert_eq!(server.received().len(), 1, "nothing was sent");
}

/// A self-signed certificate marked as a CA (as `openssl req -x509` makes them) is trusted as
/// `ca_file` when the server presents exactly it, and by its fingerprint with `pin_sha256`;
/// a server showing another certificate than the pinned one gets nothing.
#[tokio::test]
async fn https_trusts_a_self_signed_ca_certificate_as_given_or_pinned() {
    let (base, server) = Server::start(Vec::new()).await;
    let backend = port_of(&base);
    let ws = Workspace::new();
    let (tls, fingerprint) = self_signed_ca(ws.path());
    let port = tls_front(&tls, backend).await;
    let url = format!("https://127.0.0.1:{port}/in/data.csv");
    for trust in [
        r#"ca_file = "ca-server.pem""#.to_owned(),
        format!(r#"pin_sha256 = "{fingerprint}""#),
    ] {
        let writer = format!(r#"{{ type = "http", url = "{url}", {trust} }}"#);
        let report = run_job(&ws, &job(INLINE, &writer), "upload").await;
        assert_eq!(report.status, RunStatus::Succeeded, "{trust}: {report:#?}");
    }
    assert_eq!(server.received().len(), 2);

    // Another server's certificate, as an impostor would show.
    let other = self_signed(ws.path());
    let impostor = tls_front(&other, backend).await;
    let writer = format!(
        r#"{{ type = "http", url = "https://127.0.0.1:{impostor}/in/data.csv", pin_sha256 = "{fingerprint}" }}"#
    );
    let report = run_job(&ws, &job(INLINE, &writer), "upload").await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let chain = report.error.as_ref().expect("an error").chain.join(" | ");
    assert!(chain.contains("not the one in pin_sha256"), "{chain}");
    assert_eq!(server.received().len(), 2, "nothing was sent");
}

/// A server that answers 201 at once, before reading a large body: the data did not all
/// reach it, so the run does not count it as delivered.
#[tokio::test]
async fn an_answer_before_the_whole_body_is_not_a_delivery() {
    let router = axum::Router::new().fallback(|| async { StatusCode::CREATED });
    let addr = serve(router).await;
    let ws = Workspace::new();
    let source = r#"{ type = "command", command = ["sh", "-c", "head -c 20000000 /dev/zero"] }"#;
    let writer = format!(r#"{{ type = "http", method = "POST", url = "http://{addr}/drop" }}"#);
    let text = job(source, &writer).replace("max_attempts = 3", "max_attempts = 1");
    let report = run_job(&ws, &text, "upload").await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let error = report.error.as_ref().expect("an error");
    assert_eq!(error.kind, ErrorKind::Integrity, "{error:#?}");
    let chain = error.chain.join(" | ");
    assert!(
        chain.contains(
            "answered 201 Created, but the server answered before the whole body was sent"
        ),
        "{chain}"
    );
}

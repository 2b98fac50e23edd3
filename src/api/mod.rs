//! The HTTP API (`[api]`): the partition registry with seed 003's endpoints, an OpenAPI
//! description, `/metrics`, `/healthz` and `/readyz`, and the status page (`/`,
//! `/status.json`).
//!
//! Off unless `listen` is set. Plain HTTP on the listen address, or TLS (rustls) with
//! `tls_cert_file` and `tls_key_file`. Every request is bounded: a query string of at most
//! [`MAX_QUERY`] bytes, a body of at most [`MAX_BODY`], [`REQUEST_TIMEOUT`] to answer and
//! [`HANDSHAKE_TIMEOUT`] for a TLS handshake. Errors are RFC 9457 problem details. Logs
//! name the method and path, never the query string (it may carry an access token).

mod monitor;
mod registry;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{KeyPath, Problems, Secret, SecretField, keys};
use crate::state::Store;

/// The longest query string accepted.
pub const MAX_QUERY: usize = 8 * 1024;
/// The largest request body accepted (no endpoint takes one).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a request may take to be answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[api]`: the HTTP API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where to listen, `"127.0.0.1:8470"`; no listener unless set.
    pub listen: Option<String>,
    /// The server's certificate chain (PEM), for HTTPS.
    pub tls_cert_file: Option<PathBuf>,
    /// The server's private key (PEM), for HTTPS.
    pub tls_key_file: Option<PathBuf>,
    /// When set, reads (readiness, the registry's lists) need it as a bearer token.
    #[serde(flatten)]
    pub read_token: SecretField<keys::ReadToken>,
    /// When set, registering a source needs it as a bearer token.
    #[serde(flatten)]
    pub admin_token: SecretField<keys::AdminToken>,
}

impl ApiConfig {
    /// Records the problems of `[api]` at `at`.
    pub fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if let Some(listen) = &self.listen
            && listen.parse::<SocketAddr>().is_err()
        {
            problems.add(
                at.key("listen"),
                "must be an address and port, e.g. \"127.0.0.1:8470\" or \"[::1]:8470\"",
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let missing = match self.tls_cert_file {
                Some(_) => "tls_key_file",
                None => "tls_cert_file",
            };
            problems.add(
                at.key(missing),
                "missing: HTTPS needs both tls_cert_file and tls_key_file",
            );
        }
        self.read_token.validate(at, problems);
        self.admin_token.validate(at, problems);
    }
}

/// What the daemon shows its monitors: its metrics, and whether every job is armed.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    /// The daemon's metrics.
    pub metrics: crate::metrics::Metrics,
    /// Set once every job is armed (`/readyz`).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The jobs the daemon runs now (the status page), replaced at each reload.
    pub jobs: Arc<parking_lot::RwLock<Arc<Vec<status::ShownJob>>>>,
}

/// What the handlers share.
#[derive(Clone)]
struct ApiState {
    store: Store,
    monitor: Monitor,
    read_token: Option<Arc<Secret>>,
    admin_token: Option<Arc<Secret>>,
}

/// A running API: cancel it to stop listening.
#[derive(Debug)]
pub struct Api {
    /// The address it listens on.
    pub address: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Api {
    /// Stops accepting, lets requests in flight finish (up to [`REQUEST_TIMEOUT`]).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.task).await;
    }
}

/// Starts the API of `config` (relative paths from `base_dir`) on `store`, showing
/// `monitor`; `None` when no `listen` is set. Errors (address in use, unreadable
/// certificate) are reported now.
pub async fn start(
    config: &ApiConfig,
    base_dir: &Path,
    store: Store,
    monitor: Monitor,
) -> Result<Option<Api>, DeliveryError> {
    let Some(listen) = &config.listen else {
        return Ok(None);
    };
    let state = ApiState {
        store,
        monitor,
        read_token: config.read_token.resolve(base_dir)?.map(Arc::new),
        admin_token: config.admin_token.resolve(base_dir)?.map(Arc::new),
    };
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(server_config(&base_dir.join(cert), &base_dir.join(key))?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| DeliveryError::io(format!("listen on {listen} ([api] listen)"), err))?;
    let address = listener
        .local_addr()
        .map_err(|err| DeliveryError::io("read the API's address", err))?;
    let app = router(state);
    let stop = CancellationToken::new();
    let stopped = stop.clone().cancelled_owned();
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "The API listens without TLS on an address other hosts can reach: access tokens cross the network readable; set tls_cert_file and tls_key_file.");
    }
    let task = match tls {
        None => tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stopped);
            if let Err(err) = served.await {
                tracing::error!(error = %err, "The API stopped.");
            }
        }),
        Some(tls) => {
            let listener = TlsListener::new(listener, tls);
            tokio::spawn(async move {
                let served = axum::serve(listener, app).with_graceful_shutdown(stopped);
                if let Err(err) = served.await {
                    tracing::error!(error = %err, "The API stopped.");
                }
            })
        }
    };
    tracing::info!(url = %format!("{scheme}://{address}"), "API listening.");
    Ok(Some(Api {
        address,
        stop,
        task,
    }))
}

fn router(state: ApiState) -> Router {
    registry::routes()
        .merge(monitor::routes())
        .merge(status::routes())
        .route("/openapi.json", axum::routing::get(openapi))
        .fallback(|| async {
            Problem::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(bounded))
        .with_state(state)
}

/// The OpenAPI description of every endpoint.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

/// Refuses an oversized query string or body, bounds the time to answer, and logs each request by
/// method and path only.
async fn bounded(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path: String = crate::error::printable(request.uri().path())
        .chars()
        .take(200)
        .collect();
    if request.uri().query().is_some_and(|q| q.len() > MAX_QUERY) {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            format!("the query string is longer than {MAX_QUERY} bytes"),
        )
        .into_response();
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
        .into_response();
    }
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not answered within {}",
                humantime::format_duration(REQUEST_TIMEOUT)
            ),
        )
        .into_response(),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "API request.");
    response
}

/// An RFC 9457 problem: `application/problem+json` with `type`, `title`, `status` and
/// `detail`, plus the seed's `status_code`.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    detail: String,
    bearer: bool,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            bearer: false,
        }
    }

    /// A 401 that asks for a bearer token.
    fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem {
            bearer: true,
            ..Problem::new(StatusCode::UNAUTHORIZED, detail)
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "status_code": self.status.as_u16(),
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.bearer {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        response
    }
}

/// The server's TLS settings from PEM files.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, DeliveryError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &Path, err: &dyn std::fmt::Display| {
        DeliveryError::new(
            ErrorKind::Config,
            format!("[api] {what} {}: {err}", path.display()),
        )
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|err| bad("tls_cert_file", cert, &err))?
        .collect::<Result<_, _>>()
        .map_err(|err| bad("tls_cert_file", cert, &err))?;
    if chain.is_empty() {
        return Err(bad("tls_cert_file", cert, &"no certificate in it"));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|err| bad("tls_key_file", key, &err))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| bad("tls_cert_file", cert, &err))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|err| bad("tls_key_file", key, &err))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Handshake = std::pin::Pin<
    Box<
        dyn Future<
                Output = Option<(
                    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
                    SocketAddr,
                )>,
            > + Send,
    >,
>;

/// A listener whose connections are TLS: handshakes run side by side (a slow client holds
/// up nobody) and each is bounded by [`HANDSHAKE_TIMEOUT`].
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: futures::stream::FuturesUnordered<Handshake>,
}

impl TlsListener {
    fn new(tcp: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshakes: futures::stream::FuturesUnordered::new(),
        }
    }
}

/// At most this many TLS handshakes in progress at once.
const MAX_HANDSHAKES: usize = 256;

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt as _;
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => match accepted {
                    Ok((stream, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.push(Box::pin(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Some((tls, peer)),
                                Ok(Err(err)) => {
                                    tracing::debug!(%peer, error = %err, "TLS handshake failed.");
                                    None
                                }
                                Err(_) => None,
                            }
                        }));
                    }
                    Err(err) => {
                        // Out of file descriptors, mostly: wait a little instead of spinning.
                        tracing::warn!(error = %err, "The API cannot accept a connection.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.next(), if !self.handshakes.is_empty() => {
                    if let Some(connection) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

//! What monitoring asks the daemon: `/metrics` for Prometheus, `/healthz` (the process
//! answers) and `/readyz` (the store answers and the jobs are armed) for load balancers and
//! service checks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiState, Problem};

/// How long `/readyz` waits for the store to answer.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Router<ApiState> {
    use axum::routing::get;
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
}

/// `GET /metrics`: OpenMetrics text. Needs the read token when one is set.
async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, Problem> {
    super::registry::require(state.read_token.as_ref(), &headers, "read")?;
    match state.store.partition_counts().await {
        Ok(counts) => state.monitor.metrics.partitions(&counts),
        Err(err) => {
            state.store.count_failure();
            tracing::warn!(error = %err, "Cannot count the partitions for /metrics.");
        }
    }
    let text = state.monitor.metrics.encode();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

/// `GET /readyz`: 200 "ready" once every job is armed and while the store answers; 503
/// with the reason otherwise.
async fn readyz(State(state): State<ApiState>) -> Response {
    if !state.monitor.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the jobs are not armed yet\n",
        )
            .into_response();
    }
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(err)) => {
            state.store.count_failure();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the state store fails: {err}\n"),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the state store did not answer within {}\n",
                humantime::format_duration(STORE_CHECK_TIMEOUT)
            ),
        )
            .into_response(),
    }
}

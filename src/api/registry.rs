//! Seed 003's endpoints over the store's registry.
//!
//! The query parameters and the JSON fields are the seed's (`source_name`, `provider_name`,
//! `start`, `end`, `access_token`; `status_code`, `registered_object`, `is_ready`,
//! `message`), so its clients work unchanged but for the token, which ferry requires on
//! every write: the `access_token` parameter or `Authorization: Bearer`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;

use super::{ApiState, Problem};
use crate::partition::parse_instant;
use crate::settings::Secret;
use crate::state::{Change, RegistryError, new_token};

/// The longest name of a source, provider or owner.
const MAX_NAME: usize = 256;

pub(super) fn routes() -> Router<ApiState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/sources/register", post(register_source))
        .route("/providers/register", post(register_provider))
        .route("/partitions/register", post(register_partition))
        .route("/partitions/lock", post(lock_partition))
        .route("/partitions/unlock", post(unlock_partition))
        .route(
            "/sources/{source_name}/check_readiness",
            get(check_readiness),
        )
        .route("/partitions", get(list_partitions))
}

impl From<RegistryError> for Problem {
    fn from(err: RegistryError) -> Problem {
        let status = match &err {
            RegistryError::UnknownSource(_)
            | RegistryError::UnknownProvider { .. }
            | RegistryError::UnknownPartition { .. } => StatusCode::NOT_FOUND,
            RegistryError::BadToken => StatusCode::FORBIDDEN,
            RegistryError::Exists(_) => StatusCode::CONFLICT,
            RegistryError::Store(err) => {
                tracing::error!(error = %err, "The registry's store failed.");
                return Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the state store failed; try again",
                );
            }
        };
        Problem::new(status, err.to_string())
    }
}

/// A query that could not be read: a missing or malformed parameter.
fn bad_query(rejection: QueryRejection) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.body_text())
}

/// A name from outside: not empty, not too long, no control characters.
fn name<'a>(what: &str, value: &'a str) -> Result<&'a str, Problem> {
    if value.is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} must be 1 to {MAX_NAME} characters without control characters"),
        ));
    }
    Ok(value)
}

/// `start` and `end` read as the seed reads them; `end` must be after `start`.
fn interval(start: &str, end: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), Problem> {
    let unprocessable = |err: crate::partition::BadInstant, which: &str| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{which}: {err}"))
    };
    let start_at = parse_instant(start).map_err(|err| unprocessable(err, "start"))?;
    let end_at = parse_instant(end).map_err(|err| unprocessable(err, "end"))?;
    if end_at <= start_at {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "end ({}) must be after start ({})",
                end_at.to_rfc3339(),
                start_at.to_rfc3339()
            ),
        ));
    }
    Ok((start_at, end_at))
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The access token of a write: the `access_token` parameter or the bearer token.
fn access_token<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Result<&'a str, Problem> {
    query.or_else(|| bearer(headers)).ok_or_else(|| {
        Problem::unauthorized(
            "an access token is required: access_token=… or Authorization: Bearer …",
        )
    })
}

/// Checks a configured token (`[api] read_token` or `admin_token`) in constant time.
pub(super) fn require(
    configured: Option<&Arc<Secret>>,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), Problem> {
    let Some(expected) = configured else {
        return Ok(());
    };
    let Some(given) = bearer(headers) else {
        return Err(Problem::unauthorized(format!(
            "{what} needs the API's {what} token as Authorization: Bearer …"
        )));
    };
    match bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
        true => Ok(()),
        false => Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!("not the API's {what} token"),
        )),
    }
}

fn created(object: serde_json::Value) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({ "status_code": 201, "registered_object": object })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SourceParams {
    source_name: String,
    owner: String,
}

async fn register_source(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<SourceParams>, QueryRejection>,
) -> Result<Response, Problem> {
    require(state.admin_token.as_ref(), &headers, "admin")?;
    let Query(params) = query.map_err(bad_query)?;
    let source = name("source_name", &params.source_name)?;
    let owner = name("owner", &params.owner)?;
    let token = new_token();
    let record = state.store.register_source(source, owner, &token).await?;
    tracing::info!(source, owner, "Source registered.");
    let mut object = serde_json::to_value(&record).unwrap_or_default();
    object["access_token"] = json!(token);
    Ok(created(object))
}

#[derive(Deserialize)]
struct ProviderParams {
    provider_name: String,
    access_token: Option<String>,
}

async fn register_provider(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ProviderParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = query.map_err(bad_query)?;
    let provider = name("provider_name", &params.provider_name)?;
    let token = access_token(params.access_token.as_deref(), &headers)?;
    let source = state.store.source_of_token(token).await?;
    let record = state.store.register_provider(&source, provider).await?;
    tracing::info!(source, provider, "Provider registered.");
    Ok(created(serde_json::to_value(&record).unwrap_or_default()))
}

#[derive(Deserialize)]
struct PartitionParams {
    start: String,
    end: String,
    source_name: String,
    provider_name: String,
    access_token: Option<String>,
}

/// The checked parameters of a partition call, the token verified.
async fn partition_call(
    state: &ApiState,
    headers: &HeaderMap,
    query: Result<Query<PartitionParams>, QueryRejection>,
) -> Result<(PartitionParams, DateTime<Utc>, DateTime<Utc>), Problem> {
    let Query(params) = query.map_err(bad_query)?;
    name("source_name", &params.source_name)?;
    name("provider_name", &params.provider_name)?;
    let (start, end) = interval(&params.start, &params.end)?;
    let token = access_token(params.access_token.as_deref(), headers)?;
    state.store.check_token(&params.source_name, token).await?;
    Ok((params, start, end))
}

async fn register_partition(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<PartitionParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let (params, start, end) = partition_call(&state, &headers, query).await?;
    let record = state
        .store
        .register_partition(&params.source_name, &params.provider_name, start, end)
        .await?;
    Ok(created(serde_json::to_value(&record).unwrap_or_default()))
}

async fn change(
    state: ApiState,
    headers: HeaderMap,
    query: Result<Query<PartitionParams>, QueryRejection>,
    change: Change<'_>,
) -> Result<Response, Problem> {
    let (params, start, end) = partition_call(&state, &headers, query).await?;
    let record = state
        .store
        .change_partition(
            &params.source_name,
            &params.provider_name,
            start,
            end,
            change,
        )
        .await?;
    tracing::info!(
        source = %params.source_name,
        provider = %params.provider_name,
        start = %start.to_rfc3339(),
        end = %end.to_rfc3339(),
        state = record.state,
        "Partition changed."
    );
    Ok(Json(json!({
        "status_code": 200,
        "registered_object": serde_json::to_value(&record).unwrap_or_default(),
    }))
    .into_response())
}

async fn lock_partition(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<PartitionParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let lock = Change::Lock {
        run_id: None,
        reason: None,
    };
    change(state, headers, query, lock).await
}

async fn unlock_partition(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<PartitionParams>, QueryRejection>,
) -> Result<Response, Problem> {
    change(state, headers, query, Change::Unlock).await
}

#[derive(Deserialize)]
struct ReadinessParams {
    start: String,
    end: String,
}

async fn check_readiness(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(source_name): Path<String>,
    query: Result<Query<ReadinessParams>, QueryRejection>,
) -> Result<Response, Problem> {
    require(state.read_token.as_ref(), &headers, "read")?;
    let Query(params) = query.map_err(bad_query)?;
    let source = name("source_name", &source_name)?;
    let (start, end) = interval(&params.start, &params.end)?;
    let readiness = state.store.readiness(source, start, end).await?;
    Ok(Json(json!({
        "status_code": 200,
        "source_name": source,
        "start": start.to_rfc3339(),
        "end": end.to_rfc3339(),
        "is_ready": readiness.is_ready(),
        "message": readiness.message(source, start, end),
        "reason": readiness,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct ListParams {
    source_name: Option<String>,
    limit: Option<u32>,
}

async fn list_partitions(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, Problem> {
    require(state.read_token.as_ref(), &headers, "read")?;
    let Query(params) = query.map_err(bad_query)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let partitions = state
        .store
        .partitions(params.source_name.as_deref(), limit)
        .await?;
    Ok(Json(json!({ "status_code": 200, "partitions": partitions })).into_response())
}

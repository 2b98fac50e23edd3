//! The `api` source against a paginated JSON API served by axum on 127.0.0.1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry::error::ErrorKind;
use ferry::runner::RunStatus;

use crate::support::{Workspace, run_job, serve};

/// What the API was asked, and what it should do.
#[derive(Default)]
struct Api {
    /// GETs per page number.
    asked: Mutex<HashMap<u64, u32>>,
    /// Page numbers that fail once with this status (and Retry-After: 1 for 429).
    fail_once: Mutex<HashMap<u64, u16>>,
    /// The `updated_since` values asked with.
    since_asked: Mutex<Vec<String>>,
}

const PAGES: u64 = 100;
const PER_PAGE: u64 = 10;

/// Page `page` (from 1): ten records, then a cursor to the next page, none after the last.
/// With `updated_since`, only records updated after it (record n was updated at n).
async fn items(
    State(api): State<Arc<Api>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let page: u64 = query
        .get("cursor")
        .and_then(|c| c.strip_prefix("c"))
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    *api.asked.lock().expect("lock").entry(page).or_default() += 1;
    if let Some(status) = api.fail_once.lock().expect("lock").remove(&page) {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "1".parse().expect("header"));
        return (
            StatusCode::from_u16(status).expect("status"),
            headers,
            "try later",
        )
            .into_response();
    }
    let since: u64 = match query.get("updated_since") {
        Some(value) => {
            api.since_asked.lock().expect("lock").push(value.clone());
            value.parse().expect("a number")
        }
        None => 0,
    };
    let last = query
        .get("last")
        .and_then(|l| l.parse().ok())
        .unwrap_or(PAGES);
    let records: Vec<serde_json::Value> = ((page - 1) * PER_PAGE + 1..=page * PER_PAGE)
        .filter(|n| *n > since && *n <= last * PER_PAGE)
        .map(|n| serde_json::json!({ "id": n, "name": format!("item, \"{n}\""), "updated": n }))
        .collect();
    let next = (page < last).then(|| format!("c{}", page + 1));
    // Pretty-printed, as many APIs answer: the records must still come out one a line.
    let body = serde_json::to_string_pretty(&serde_json::json!({
        "data": records,
        "meta": { "next_cursor": next },
    }))
    .expect("json");
    ([("content-type", "application/json")], body).into_response()
}

async fn start(api: &Arc<Api>) -> std::net::SocketAddr {
    let router = axum::Router::new()
        .route("/items", axum::routing::get(items))
        .route(
            "/linked",
            axum::routing::get(|Query(q): Query<HashMap<String, String>>| async move {
                let page: u64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let body = format!("[{{\"page\": {page}}}]");
                match page < 3 {
                    true => (
                        [("link", format!("</linked?page={}>; rel=\"next\"", page + 1))],
                        body,
                    )
                        .into_response(),
                    false => body.into_response(),
                }
            }),
        )
        .route(
            "/numbered",
            axum::routing::get(|Query(q): Query<HashMap<String, String>>| async move {
                let page: u64 = q.get("p").and_then(|p| p.parse().ok()).unwrap_or(0);
                match page <= 2 {
                    true => format!("{{\"items\": [{{\"p\": {page}}}]}}"),
                    false => "{\"items\": []}".to_owned(),
                }
            }),
        )
        .route(
            "/next",
            axum::routing::get(|Query(q): Query<HashMap<String, String>>| async move {
                match q.get("after").map(String::as_str) {
                    None => r#"{"rows": [1, 2], "next": "/next?after=2"}"#,
                    Some(_) => r#"{"rows": [3], "next": null}"#,
                }
            }),
        )
        .route(
            "/html",
            axum::routing::get(|| async { "<!DOCTYPE html><p>maintenance</p>" }),
        )
        .with_state(Arc::clone(api));
    serve(router).await
}

fn job(source: &str) -> String {
    format!(
        r#"[[jobs]]
name = "items"
schedule = "@hourly"
source = {source}
writers = [{{ type = "local", path = "out/items.jsonl" }}]
retry = {{ max_attempts = 3, initial_interval = "10ms", max_interval = "20ms" }}
"#
    )
}

fn cursor_source(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"{{ type = "api", url = "http://{addr}/items", records = "/data", pagination = {{ type = "cursor", pointer = "/meta/next_cursor", param = "cursor" }}{extra} }}"#
    )
}

/// The ids in a JSON Lines file, in order.
fn ids(ws: &Workspace) -> Vec<u64> {
    std::fs::read_to_string(ws.path().join("out/items.jsonl"))
        .expect("delivered")
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            record["id"].as_u64().expect("an id")
        })
        .collect()
}

/// Seed 002 at the page level: 100 pages, the 41st fails once. The retry continues with
/// page 41 (pages 1–40 are asked once), and every record is in the file exactly once, in
/// order, one line each, as the server wrote it.
#[tokio::test]
async fn an_interrupted_run_resumes_at_the_next_page() {
    let api = Arc::new(Api::default());
    api.fail_once.lock().expect("lock").insert(41, 503);
    let addr = start(&api).await;
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let report = ws
        .run_first(&job(&cursor_source(addr, "")), Some(&ledger))
        .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 2, "{report:#?}");
    let asked = api.asked.lock().expect("lock").clone();
    for page in 1..=40 {
        assert_eq!(
            asked.get(&page),
            Some(&1),
            "page {page} asked once: {asked:?}"
        );
    }
    assert_eq!(
        asked.get(&41),
        Some(&2),
        "page 41 failed, then was asked again"
    );
    assert_eq!(ids(&ws), (1..=PAGES * PER_PAGE).collect::<Vec<_>>());
    let text = std::fs::read_to_string(ws.path().join("out/items.jsonl")).expect("read");
    assert!(
        text.starts_with("{\"id\":1,\"name\":\"item, \\\"1\\\"\",\"updated\":1}\n"),
        "{}",
        &text[..80]
    );
    assert!(report.resumed_from > 0, "{report:#?}");
    let first_40: usize = text.lines().take(400).map(|l| l.len() + 1).sum();
    assert_eq!(
        report.resumed_from, first_40 as u64,
        "resumed at page 41's start"
    );
}

/// Without a state store there is nothing to resume from: the retry starts at page 1 and
/// the file still holds every record once.
#[tokio::test]
async fn without_a_store_a_retry_starts_over_and_loses_nothing() {
    let api = Arc::new(Api::default());
    api.fail_once.lock().expect("lock").insert(7, 500);
    let addr = start(&api).await;
    let ws = Workspace::new();
    let source = cursor_source(addr, "").replace("/items", "/items?last=10");
    let report = run_job(&ws, &job(&source), "items").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(api.asked.lock().expect("lock").get(&1), Some(&2));
    assert_eq!(ids(&ws), (1..=100).collect::<Vec<_>>());
}

/// A 429 with Retry-After fails the attempt as `throttled`; the retry waits and continues.
#[tokio::test]
async fn too_many_requests_is_waited_for() {
    let api = Arc::new(Api::default());
    api.fail_once.lock().expect("lock").insert(2, 429);
    let addr = start(&api).await;
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let source = cursor_source(addr, "").replace("/items", "/items?last=3");
    let started = std::time::Instant::now();
    let report = ws.run_first(&job(&source), Some(&ledger)).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 2);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(ids(&ws), (1..=30).collect::<Vec<_>>());
    assert_eq!(api.asked.lock().expect("lock").get(&1), Some(&1));
}

/// The other ways to find the next page: a URL in the page (relative), the Link header,
/// and page numbers until an empty page.
#[tokio::test]
async fn next_urls_link_headers_and_page_numbers() {
    let api = Arc::new(Api::default());
    let addr = start(&api).await;
    let cases = [
        (
            format!(
                r#"{{ type = "api", url = "http://{addr}/next", records = "/rows", pagination = {{ type = "next_url", pointer = "/next" }} }}"#
            ),
            "1\n2\n3\n",
        ),
        (
            format!(
                r#"{{ type = "api", url = "http://{addr}/linked", pagination = {{ type = "link_header" }} }}"#
            ),
            "{\"page\":1}\n{\"page\":2}\n{\"page\":3}\n",
        ),
        (
            format!(
                r#"{{ type = "api", url = "http://{addr}/numbered", records = "/items", pagination = {{ type = "page_number", param = "p", start = 0 }} }}"#
            ),
            "{\"p\":0}\n{\"p\":1}\n{\"p\":2}\n",
        ),
    ];
    for (source, want) in cases {
        let ws = Workspace::new();
        let report = run_job(&ws, &job(&source), "items").await;
        assert_eq!(report.status, RunStatus::Succeeded, "{source}: {report:#?}");
        let got = std::fs::read_to_string(ws.path().join("out/items.jsonl")).expect("read");
        assert_eq!(got, want, "{source}");
    }
}

/// A page that is not JSON is a `server` failure (retried) naming the page and how it
/// starts; a records pointer with no array there is `rejected`; neither leaves a file.
#[tokio::test]
async fn bad_pages_are_clear_failures() {
    let api = Arc::new(Api::default());
    let addr = start(&api).await;
    let ws = Workspace::new();
    let html = format!(r#"{{ type = "api", url = "http://{addr}/html" }}"#);
    let report = run_job(&ws, &job(&html), "items").await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.as_ref().expect("failure");
    assert_eq!(failure.kind, ErrorKind::Server, "{failure:?}");
    let text = failure.chain.join(": ");
    assert!(
        text.contains("page 1") && text.contains("is not JSON") && text.contains("<!DOCTYPE html>"),
        "{text}"
    );
    assert_eq!(report.attempts, 3);

    let wrong = cursor_source(addr, "").replace("records = \"/data\"", "records = \"/items\"");
    let report = run_job(&ws, &job(&wrong), "items").await;
    let failure = report.error.as_ref().expect("failure");
    assert_eq!(failure.kind, ErrorKind::Rejected, "{failure:?}");
    assert!(
        failure
            .chain
            .join(": ")
            .contains("no array of records at /items")
    );
    assert_eq!(report.attempts, 1);
    assert!(!ws.path().join("out/items.jsonl").exists());
}

/// `since`: a run asks only for what changed after the last successful run's largest
/// `updated`; the value is kept once the run has delivered.
#[tokio::test]
async fn since_fetches_only_newer_records() {
    let api = Arc::new(Api::default());
    let addr = start(&api).await;
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let source = cursor_source(
        addr,
        r#", since = { field = "/updated", param = "updated_since" }"#,
    )
    .replace("/items", "/items?last=2");
    let text = job(&source);
    let job = ws.job(&text, "items");
    let first = crate::support::utc("2026-11-23T12:00:00Z").with_timezone(&chrono_tz::UTC);
    let report = job
        .run_claimed(&ledger, first)
        .await
        .expect("store")
        .expect("claimed");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(ids(&ws), (1..=20).collect::<Vec<_>>());
    assert!(api.since_asked.lock().expect("lock").is_empty());

    let second = first + chrono::Duration::hours(1);
    let report = job
        .run_claimed(&ledger, second)
        .await
        .expect("store")
        .expect("claimed");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        api.since_asked.lock().expect("lock").as_slice(),
        ["20", "20"]
    );
    assert!(ids(&ws).is_empty(), "nothing newer than 20");
}

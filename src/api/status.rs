//! The status page (`GET /`) and its facts as JSON (`GET /status.json`, which `ferry status`
//! reads): every job with its next fire times and last outcome, the runs in flight with
//! their progress, recent failures, and each partitioned source's timeline.
//!
//! The page is rendered on the server (maud escapes everything it prints), needs no
//! JavaScript, loads nothing from elsewhere (its style is inline) and reloads itself every
//! few seconds. With `[api] read_token` set, a browser gives the token as the password of
//! HTTP Basic authentication (any user name); programs send it as a bearer token.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Serialize;
use subtle::ConstantTimeEq as _;

use super::{ApiState, Problem};
use crate::metrics::LiveSnapshot;
use crate::schedule::Schedule;
use crate::state::{PartitionRecord, RunRecord, RunState, Store};

/// How often the page reloads itself, in seconds.
const REFRESH_SECONDS: u32 = 5;
/// How many failed runs the page lists.
const FAILURES_SHOWN: u32 = 10;
/// How many of a source's latest partitions its timeline shows.
const PARTITIONS_SHOWN: u32 = 48;
/// How many sources get a timeline.
const SOURCES_SHOWN: usize = 20;
/// How much of an error the page shows.
const ERROR_SHOWN: usize = 400;

pub(super) fn routes() -> Router<ApiState> {
    use axum::routing::get;
    Router::new()
        .route("/", get(page))
        .route("/status.json", get(json))
}

/// What the status page shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// When these facts were gathered.
    pub at: DateTime<Utc>,
    /// Every job, by name.
    pub jobs: Vec<JobStatus>,
    /// Runs going now, oldest first.
    pub in_flight: Vec<InFlightRun>,
    /// The latest failed runs, the last to end first.
    pub failures: Vec<RunRecord>,
    /// The partitioned sources, with their latest partitions.
    pub sources: Vec<SourceTimeline>,
    /// The daemons sharing the store, from their heartbeats in the last hour.
    pub daemons: Vec<crate::state::DaemonRecord>,
}

/// One job.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    /// Its name.
    pub name: String,
    /// Its schedule, as written.
    pub schedule: String,
    /// The zone its schedule is read in.
    pub timezone: String,
    /// Whether it fires on its schedule.
    pub enabled: bool,
    /// Its next three fire times (RFC 3339, with the zone's offset).
    pub next: Vec<String>,
    /// Its latest finished run.
    pub last: Option<RunRecord>,
}

/// A run going now.
#[derive(Debug, Serialize)]
pub struct InFlightRun {
    /// The job.
    pub job: String,
    /// The run's id.
    pub run_id: String,
    /// Its slot (RFC 3339 in the job's zone).
    pub slot: String,
    /// When it started.
    pub started: DateTime<Utc>,
    /// The daemon (or command) running it.
    pub owner: String,
    /// Its writers' progress, when this daemon runs it (another daemon's runs show none).
    pub progress: Option<LiveSnapshot>,
}

/// A source's latest partitions, oldest first.
#[derive(Debug, Serialize)]
pub struct SourceTimeline {
    /// The source.
    pub source: String,
    /// Its partitions.
    pub partitions: Vec<PartitionRecord>,
}

/// A job as the status page shows it.
#[derive(Debug, Clone)]
pub struct ShownJob {
    /// Its name.
    pub name: String,
    /// When it fires.
    pub schedule: Schedule,
    /// Whether it fires on its schedule.
    pub enabled: bool,
}

/// Gathers the status of `jobs` (sorted by name here) from `store`, with `live` the runs
/// this process has in flight.
pub async fn gather(
    store: &Store,
    jobs: &[ShownJob],
    live: Vec<LiveSnapshot>,
    at: DateTime<Utc>,
) -> Result<Status, String> {
    let mut last = store
        .latest_finished()
        .await
        .map_err(|err| err.to_string())?
        .into_iter()
        .map(|run| (run.job.clone(), run))
        .collect::<std::collections::HashMap<_, _>>();
    let mut jobs: Vec<JobStatus> = jobs
        .iter()
        .map(|job| JobStatus {
            name: job.name.clone(),
            schedule: job.schedule.expression().to_owned(),
            timezone: job.schedule.timezone().name().to_owned(),
            enabled: job.enabled,
            next: match job.enabled {
                true => job
                    .schedule
                    .upcoming(at, 3)
                    .iter()
                    .map(|slot| slot.to_rfc3339_opts(SecondsFormat::Secs, false))
                    .collect(),
                false => Vec::new(),
            },
            last: last.remove(&job.name),
        })
        .collect();
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut live: std::collections::HashMap<String, LiveSnapshot> = live
        .into_iter()
        .map(|run| (run.run_id.clone(), run))
        .collect();
    let mut in_flight: Vec<InFlightRun> = store
        .unfinished()
        .await
        .map_err(|err| err.to_string())?
        .into_iter()
        .map(|run| InFlightRun {
            progress: live.remove(&run.run_id),
            job: run.job,
            run_id: run.run_id,
            slot: run.slot_local,
            started: run.started_at,
            owner: run.owner,
        })
        .collect();
    // Runs not recorded (no store write yet) still show.
    in_flight.extend(live.into_values().map(|run| InFlightRun {
        job: run.job.clone(),
        run_id: run.run_id.clone(),
        slot: run.slot.clone(),
        started: run.started,
        owner: String::new(),
        progress: Some(run),
    }));
    in_flight.sort_by(|a, b| a.started.cmp(&b.started).then(a.job.cmp(&b.job)));
    let failures = store
        .recent_failures(FAILURES_SHOWN)
        .await
        .map_err(|err| err.to_string())?;
    let mut sources = Vec::new();
    let counts = store
        .partition_counts()
        .await
        .map_err(|err| err.to_string())?;
    let mut names: Vec<String> = counts.into_iter().map(|(source, _, _)| source).collect();
    names.dedup();
    for source in names.into_iter().take(SOURCES_SHOWN) {
        let mut partitions = store
            .partitions(Some(&source), PARTITIONS_SHOWN)
            .await
            .map_err(|err| err.to_string())?;
        partitions.reverse();
        sources.push(SourceTimeline { source, partitions });
    }
    let daemons = store
        .daemons(at - chrono::Duration::hours(1))
        .await
        .map_err(|err| err.to_string())?;
    Ok(Status {
        at,
        jobs,
        in_flight,
        failures,
        sources,
        daemons,
    })
}

/// Whether the request may read: no read token is set, or it gives it, as a bearer token
/// or as Basic authentication's password.
fn allowed(state: &ApiState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.read_token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .and_then(|(scheme, rest)| {
            if scheme.eq_ignore_ascii_case("bearer") {
                Some(rest.trim().to_owned())
            } else if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                text.split_once(':')
                    .map(|(_, password)| password.to_owned())
            } else {
                None
            }
        });
    given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())))
}

/// The answer without the read token: a browser asks for it.
fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ferry\", charset=\"UTF-8\""),
        )],
        "the status page needs the API's read token (as the password)\n",
    )
        .into_response()
}

async fn current(state: &ApiState) -> Result<Status, Problem> {
    let jobs = state.monitor.jobs.read().clone();
    gather(
        &state.store,
        &jobs,
        state.monitor.metrics.live_runs(),
        Utc::now(),
    )
    .await
    .map_err(|err| {
        state.store.count_failure();
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the state store fails: {err}"),
        )
    })
}

/// `GET /status.json`.
async fn json(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !allowed(&state, &headers) {
        return denied();
    }
    match current(&state).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `GET /`.
async fn page(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !allowed(&state, &headers) {
        return denied();
    }
    match current(&state).await {
        Ok(status) => (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            axum::response::Html(render(&status)),
        )
            .into_response(),
        Err(problem) => problem.into_response(),
    }
}

const STYLE: &str = "
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:.5rem 1rem;color:#1b1b1b;background:#fff}
h1{font-size:1.3rem;margin:.4rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}
th{font-weight:600;background:#f4f4f4}code,.t{font-family:ui-monospace,monospace;font-size:.85rem}
.ok{color:#136c2e;font-weight:600}.bad{color:#b00020;font-weight:600}.run{color:#8a5a00;font-weight:600}.off{color:#777}
.err{white-space:pre-wrap;word-break:break-word;color:#6b0014;font-size:.85rem}
.wrap{overflow-x:auto}.muted{color:#666;font-size:.85rem}
.bar{position:relative;height:1.2rem;background:#eee;border-radius:3px;overflow:hidden}
.bar span{position:absolute;top:0;bottom:0;border-right:1px solid #fff}
.ready{background:#2e9e4f}.locked{background:#d08700}
progress{width:10rem}
.t{white-space:nowrap}
@media (max-width:40rem){th.opt,td.opt{display:none}body{font-size:14px;padding:.3rem}
.stack thead{display:none}.stack tr{display:block;border-bottom:1px solid #ddd;padding:.3rem 0}.stack td{display:block;border:0;padding:.1rem .3rem}}
";

/// The page for `status`.
pub fn render(status: &Status) -> String {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                title { "ferry status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "ferry" }
                p.muted {
                    "As of " (stamp(status.at)) " · " (status.jobs.len()) " jobs · "
                    (status.in_flight.len()) " running · reloads every " (REFRESH_SECONDS) " s"
                }
                h2 { "Jobs" }
                div.wrap { table.stack id="jobs" {
                    thead { tr {
                        th { "Job" } th { "Schedule" } th.opt { "Zone" } th { "Next fire times" } th { "Last run" }
                    } }
                    tbody {
                        @for job in &status.jobs {
                            tr data-job=(job.name) {
                                td { strong { (job.name) } }
                                td { code { (job.schedule) } }
                                td.opt { (job.timezone) }
                                td.t {
                                    @if !job.enabled { span.off { "disabled" } }
                                    @for next in &job.next { (readable(next)) br; }
                                }
                                td { (last_run(job.last.as_ref())) }
                            }
                        }
                    }
                } }
                h2 { "Running" }
                @if status.in_flight.is_empty() {
                    p.muted { "Nothing is running." }
                } @else {
                    div.wrap { table.stack id="running" {
                        thead { tr { th { "Job" } th { "Slot" } th.opt { "Daemon" } th { "Progress" } } }
                        tbody {
                            @for run in &status.in_flight {
                                tr data-job=(run.job) {
                                    td { strong { (run.job) } }
                                    td.t { (readable(&run.slot)) }
                                    td.t.opt { (run.owner) }
                                    td { (progress(run)) }
                                }
                            }
                        }
                    } }
                }
                @if !status.daemons.is_empty() {
                    h2 { "Daemons" }
                    div.wrap { table.stack id="daemons" {
                        thead { tr { th { "Daemon" } th.opt { "Version" } th { "Last seen" } th { "Runs" } } }
                        tbody {
                            @for daemon in &status.daemons {
                                tr {
                                    td.t { strong { (daemon.id) } }
                                    td.opt { (daemon.version) }
                                    td.t {
                                        @match daemon.stopped_at {
                                            Some(at) => { "stopped " (stamp(at)) }
                                            None => { (stamp(daemon.last_seen)) }
                                        }
                                    }
                                    td { (daemon.running) }
                                }
                            }
                        }
                    } }
                }
                h2 { "Recent failures" }
                @if status.failures.is_empty() {
                    p.muted { "No failed runs on record." }
                } @else {
                    div.wrap { table.stack id="failures" {
                        thead { tr { th { "Job" } th { "Slot" } th.opt { "Ended" } th { "Error" } } }
                        tbody {
                            @for run in &status.failures {
                                tr data-job=(run.job) {
                                    td { strong { (run.job) } }
                                    td.t { (readable(&run.slot_local)) }
                                    td.t.opt { (run.finished_at.map(stamp).unwrap_or_default()) }
                                    td { div.err { (shorten(run.error.as_deref().unwrap_or(""))) } }
                                }
                            }
                        }
                    } }
                }
                @if !status.sources.is_empty() {
                    h2 { "Partitions" }
                    p.muted { span.ready style="padding:0 .5rem" {} " ready  " span.locked style="padding:0 .5rem" {} " locked" }
                    @for source in &status.sources {
                        (timeline(source))
                    }
                }
            }
        }
    };
    markup.into_string()
}

/// An RFC 3339 time as `2026-03-29 03:00:00 +02:00`: the wall time and its UTC offset.
fn readable(rfc3339: &str) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(at) => at.format("%Y-%m-%d %H:%M:%S %:z").to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(ERROR_SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn last_run(run: Option<&RunRecord>) -> Markup {
    let Some(run) = run else {
        return html! { span.off { "never ran" } };
    };
    html! {
        @match run.state {
            RunState::Succeeded => span.ok { "succeeded" },
            RunState::Failed => span.bad { "failed" },
            RunState::Running => span.run { "running" },
        }
        " " span.t { (readable(&run.slot_local)) }
        @if let Some(location) = &run.location {
            br;
            @for (i, place) in location.split(", ").enumerate() {
                @if i > 0 { ", " }
                @if place.starts_with("https://") || place.starts_with("http://") {
                    a href=(place) { (place) }
                } @else {
                    code { (place) }
                }
            }
        }
        @if let Some(error) = &run.error {
            div.err { (shorten(error)) }
        }
    }
}

fn progress(run: &InFlightRun) -> Markup {
    let Some(live) = &run.progress else {
        return html! { span.muted { "started " (stamp(run.started)) " (another daemon, or not started yet)" } };
    };
    let done = live.done();
    let mut line = format!("{} at {}/s", bytes(done), bytes(live.rate().round() as u64));
    if let Some(total) = live.total {
        let _ = write!(line, " of {}", bytes(total));
    }
    if let Some(eta) = live.eta() {
        let _ = write!(
            line,
            ", about {} left",
            humantime::format_duration(std::time::Duration::from_secs(eta.as_secs()))
        );
    }
    html! {
        @if let Some(total) = live.total {
            progress value=(done.min(total)) max=(total.max(1)) {}
            " "
        }
        (line)
        @for (writer, taken) in &live.writers {
            br; span.muted { (writer) ": " (bytes(*taken)) }
        }
    }
}

fn timeline(source: &SourceTimeline) -> Markup {
    let first = source.partitions.iter().map(|p| p.start).min();
    let last = source.partitions.iter().map(|p| p.end).max();
    let (Some(first), Some(last)) = (first, last) else {
        return html! {};
    };
    let span = (last - first).num_milliseconds().max(1) as f64;
    let position = |at: DateTime<Utc>| (at - first).num_milliseconds() as f64 * 100.0 / span;
    html! {
        div.source data-source=(source.source) {
            p { strong { (source.source) } " " span.muted { (stamp(first)) " – " (stamp(last)) " · " (source.partitions.len()) " partitions" } }
            div.bar role="img" aria-label={ "partitions of " (source.source) } {
                @for partition in &source.partitions {
                    @let class = if partition.lock.is_some() { "locked" } else { "ready" };
                    @let left = position(partition.start);
                    @let width = (position(partition.end) - left).max(0.3);
                    span class=(class)
                        style={ "left:" (format!("{left:.3}")) "%;width:" (format!("{width:.3}")) "%" }
                        title={ (class) " [" (stamp(partition.start)) ", " (stamp(partition.end)) ") by " (partition.provider) } {}
                }
            }
        }
    }
}

/// `n` bytes for a person: `1.5 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(schedule: &str) -> Status {
        Status {
            at: Utc::now(),
            jobs: vec![JobStatus {
                name: "<script>alert(1)</script>".into(),
                schedule: schedule.into(),
                timezone: "Europe/Berlin".into(),
                enabled: true,
                next: vec!["2026-03-29T03:00:00+02:00".into()],
                last: None,
            }],
            in_flight: Vec::new(),
            failures: Vec::new(),
            sources: Vec::new(),
            daemons: vec![crate::state::DaemonRecord {
                id: "db1/42/<b>x</b>".into(),
                host: "db1".into(),
                pid: 42,
                version: "0.1.0".into(),
                started_at: Utc::now(),
                last_seen: Utc::now(),
                running: 2,
                stopped_at: None,
            }],
        }
    }

    #[test]
    fn everything_printed_is_escaped() {
        let page = render(&status("\"><img src=x onerror=alert(2)>"));
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(
            page.contains("db1/42/&lt;b&gt;x&lt;/b&gt;"),
            "the daemons are listed: {page}"
        );
    }

    #[test]
    fn sizes_read_as_a_person_would() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}

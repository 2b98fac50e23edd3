//! Checkpoints and resumption, missed runs and history: the state store at work.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Timelike as _, Utc};
use ferry::daemon::Event;
use ferry::runner::RunStatus;
use ferry::state::{Claim, Ledger, Outcome, RunState, Store};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::daemon::{Hold, WAIT, boot, boot_at, finished_slots};
use crate::support::{Workspace, ferry, random_file, sha256_file, show, utc};

async fn ledger(ws: &Workspace) -> Ledger {
    ws.ledger().await
}

/// An attempt cut off by its timeout mid-transfer leaves a checkpoint; the retry resumes
/// from it instead of starting over, and the result is byte-identical.
#[tokio::test]
async fn a_retry_resumes_from_the_checkpoint() {
    let ws = Workspace::new();
    random_file(&ws.path().join("input.bin"), 24 << 20);
    let mut jobs = ws.jobs(
        r#"
[[jobs]]
name = "slow"
schedule = "@daily"
source = { type = "file", path = "input.bin" }
rate_limit = "8MiB"
timeout = "2600ms"
retry = { max_attempts = 4, initial_interval = "10ms" }
writers = [{ type = "local", path = "out/copy.bin" }]
"#,
    );
    let job = jobs.remove(0);
    let ledger = ledger(&ws).await;
    let started = Instant::now();
    let report = job
        .run_claimed(&ledger, job.now_slot())
        .await
        .expect("store works")
        .expect("claimed");
    // Each attempt is cut off before 24 MiB at 8 MiB/s: starting over could never finish.
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(report.attempts >= 2, "{report:#?}");
    // A checkpoint is taken every 2 s (16 MiB at full speed; less on a loaded machine).
    assert!(
        report.resumed_from > 0,
        "resumed from {}",
        report.resumed_from
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        sha256_file(&ws.path().join("out/copy.bin")),
        sha256_file(&ws.path().join("input.bin"))
    );
    assert_eq!(
        report.deliveries[0].sha256,
        sha256_file(&ws.path().join("input.bin"))
    );
    let files = ws.files();
    assert_eq!(
        files,
        vec!["input.bin".to_owned(), "out/copy.bin".to_owned()],
        "no partial left"
    );
    let run = ledger
        .store
        .run_for("slow", report_slot(&report))
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.attempts, report.attempts);
    assert_eq!(run.bytes, Some(24 << 20));
}

fn report_slot(report: &ferry::runner::RunReport) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(&report.slot)
        .expect("slot")
        .with_timezone(&Utc)
}

/// A run that fails for good leaves no partial file behind, even with checkpoints on.
#[tokio::test]
async fn a_failed_run_removes_its_partial_file() {
    let ws = Workspace::new();
    let mut jobs = ws.jobs(
        r#"
[[jobs]]
name = "broken"
schedule = "@daily"
source = { type = "command", command = ["sh", "-c", "head -c 3000000 /dev/zero; exit 4"] }
retry = { max_attempts = 2, initial_interval = "10ms" }
writers = [{ type = "local", path = "out/x.bin" }]
"#,
    );
    let job = jobs.remove(0);
    let report = job
        .run_claimed(&ledger(&ws).await, job.now_slot())
        .await
        .expect("store works")
        .expect("claimed");
    assert_eq!(report.status, RunStatus::Failed);
    assert!(ws.files().is_empty(), "{:?}", ws.files());
}

async fn record_past_run(store: &Store, job: &str, slot: chrono::DateTime<Utc>) {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    store
        .claim(&Claim {
            job,
            slot,
            slot_local: &slot.to_rfc3339(),
            run_id: &run_id,
            uuid: &uuid::Uuid::new_v4().to_string(),
            owner: "an earlier daemon",
            lease: Duration::from_secs(60),
            manual: false,
        })
        .await
        .expect("claim");
    store
        .finish(
            &run_id,
            ferry::state::FIRST_EPOCH,
            &Outcome {
                state: RunState::Succeeded,
                attempts: 1,
                bytes: Some(1),
                sha256: None,
                location: None,
                error: None,
            },
        )
        .await
        .expect("finish");
}

/// Down across several slots and back within `misfire_grace`: exactly one catch-up run,
/// for the latest missed slot, then the schedule goes on. On tokio's paused clock, at 10:00:30.
#[tokio::test(start_paused = true)]
async fn missed_slots_within_grace_coalesce_into_one_catch_up_run() {
    let _still = Hold::new();
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "minutely"
schedule = "0 * * * * *"
misfire_grace = "2m"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/{scheduled:%H%M}" }]
"#,
    );
    // The previous daemon last ran at 09:56: 09:57 to 10:00 were missed.
    let store = Store::open("sqlite://ferry-state.db", ws.path())
        .await
        .expect("store");
    record_past_run(&store, "minutely", utc("2026-06-01T09:56:00Z")).await;

    let mut daemon = boot_at(&config, utc("2026-06-01T10:00:30Z"));
    let caught = |e: &Event| matches!(e, Event::Finished(_));
    let (first, mut seen) = daemon.until(WAIT, caught).await;
    seen.push(first);
    daemon.advance(Duration::from_secs(30)).await;
    let (next, before) = daemon.until(WAIT, caught).await;
    seen.extend(before);
    seen.push(next);
    seen.extend(daemon.stop().await);
    assert_eq!(
        finished_slots(&seen),
        [utc("2026-06-01T10:00:00Z"), utc("2026-06-01T10:01:00Z")],
        "one catch-up run, then the next slot: {seen:#?}"
    );
    let history = store.history(Some("minutely"), 10).await.expect("history");
    assert_eq!(
        history.len(),
        3,
        "the old run, the catch-up and 10:01: {history:#?}"
    );
    assert_eq!(ws.files(), ["out/1000", "out/1001"]);
}

/// Down across a slot and back after `misfire_grace`: nothing is made up.
#[tokio::test(start_paused = true)]
async fn a_missed_slot_outside_grace_is_not_run() {
    let _still = Hold::new();
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "yearly"
schedule = "0 0 0 1 1 *"
misfire_grace = "1h"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/x" }]
"#,
    );
    let last_due = utc("2026-01-01T00:00:00Z");
    let store = Store::open("sqlite://ferry-state.db", ws.path())
        .await
        .expect("store");
    record_past_run(&store, "yearly", utc("2025-01-01T00:00:00Z")).await;

    // Back two hours after the slot. Start-up decides about missed runs before it is
    // ready; a run it started would be waited for by the shutdown and seen among its events.
    let mut daemon = boot_at(&config, utc("2026-01-01T02:00:00Z"));
    let (_, mut seen) = daemon
        .until(WAIT, |e| matches!(e, Event::Ready { .. }))
        .await;
    daemon.advance(Duration::from_secs(24 * 3600)).await;
    seen.extend(daemon.stop().await);
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Finished(_))),
        "nothing runs: {seen:#?}"
    );
    assert!(
        store
            .run_for("yearly", last_due)
            .await
            .expect("read")
            .is_none()
    );
    assert!(ws.files().is_empty(), "{:?}", ws.files());
}

/// `ferry run` killed with SIGKILL mid-transfer and started again: the run resumes from its
/// checkpoint, the file arrives byte-identical, one run row shows two attempts, and no
/// partial file is left.
#[test]
fn a_daemon_killed_mid_transfer_resumes_after_restart() {
    let ws = Workspace::new();
    let partial = |ws: &Workspace| {
        ws.files()
            .into_iter()
            .find(|f| f.starts_with("out/big.bin.partial-"))
            .map(|f| ws.path().join(f))
    };
    let held = || {
        partial(&ws)
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    };
    let config = killed_and_restarted(
        &ws,
        r#"{ type = "local", path = "out/big.bin" }"#,
        held,
        &ws.path().join("out/big.bin"),
    );
    assert_eq!(partial(&ws), None, "no partial file left");
    let history = ferry(&[
        "history",
        "big",
        "--json",
        "--config",
        &config.display().to_string(),
    ]);
    assert_eq!(history.status.code(), Some(0), "{}", show(&history));
    let runs: serde_json::Value = serde_json::from_slice(&history.stdout).expect("JSON");
    let runs = runs.as_array().expect("an array");
    assert_eq!(runs.len(), 1, "one run row: {runs:#?}");
    assert_eq!(runs[0]["state"], "succeeded");
    assert_eq!(runs[0]["attempts"], 2, "the resume is the second attempt");
    assert_eq!(runs[0]["bytes"], 40 << 20);
}

/// Runs `ferry run` on a job that copies 40 MiB of `input.bin` at 8 MiB/s to `writer` (a
/// writer table), once, two seconds from now; kills it with SIGKILL once `held()` (what the
/// destination holds of the temporary file) passes 20 MiB, after a checkpoint; starts it
/// again and waits for `target` to appear. Checks that the second daemon resumed part-way
/// and that `target` is byte-identical. Returns the job file.
pub(crate) fn killed_and_restarted(
    ws: &Workspace,
    writer: &str,
    held: impl Fn() -> u64,
    target: &std::path::Path,
) -> std::path::PathBuf {
    let input = ws.path().join("input.bin");
    random_file(&input, 40 << 20);
    // Fire once, two seconds from now.
    let at = Utc::now() + chrono::Duration::seconds(2);
    let config = ws.job_file(&format!(
        r#"
[[jobs]]
name = "big"
schedule = "{} {} {} {} {} *"
source = {{ type = "file", path = "input.bin" }}
rate_limit = "8MiB"
writers = [{writer}]
"#,
        at.second(),
        at.minute(),
        at.hour(),
        at.format("%d"),
        at.format("%m"),
    ));
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "run",
                "--config",
                &config.display().to_string(),
                "--log-format",
                "json",
            ])
            .env("FERRY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferry run")
    };

    let mut first = start();
    // Kill it once a checkpoint was taken (every 2 s, at 8 MiB/s: 16 MiB) and more is written.
    let deadline = Instant::now() + Duration::from_secs(20);
    while held() < 20 << 20 {
        assert!(
            Instant::now() < deadline,
            "the transfer did not get going: {:?}",
            ws.files()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).expect("SIGKILL");
    let _ = first.wait();
    assert!(!target.exists(), "killed before the end");

    let mut second = start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !target.exists() {
        assert!(
            Instant::now() < deadline,
            "the run was not resumed: {:?}",
            ws.files()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = second.wait().expect("wait");
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(sha256_file(target), sha256_file(&input), "byte-identical");
    let resumed = stderr
        .lines()
        .find(|l| l.contains("Resuming from a checkpoint."))
        .unwrap_or_else(|| panic!("no resume in the log:\n{stderr}"));
    let offset: u64 = resumed
        .split("\"offset\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("an offset");
    assert!(offset > 0, "resumed from byte {offset}");
    eprintln!("resumed from byte {offset} of {}", 40u64 << 20);
    config
}

#[test]
fn history_lists_triggered_runs() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "hello"
schedule = "@daily"
source = { type = "inline", data = "hi" }
writers = [{ type = "local", path = "out/{run_id}" }]
"#,
    );
    let shown = config.display().to_string();
    let out = ferry(&["trigger", "hello", "--config", &shown]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = ferry(&["history", "--config", &shown]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one run:\n{text}");
    assert!(
        lines[0].starts_with("JOB") && lines[0].contains("OUTCOME"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("hello ") && lines[1].contains("succeeded"),
        "{text}"
    );
    assert!(lines[1].contains(" 2 "), "2 bytes: {text}");
}

/// The url source resumes with an HTTP Range request against a real server; a command
/// source cannot resume, and its retry starts over cleanly.
#[tokio::test]
async fn url_sources_resume_with_range_and_commands_start_over() {
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse as _;
    use axum::routing::get;
    use std::sync::{Arc, Mutex};

    let body: Arc<Vec<u8>> = Arc::new((0..(24u32 << 20)).map(|i| (i % 253) as u8).collect());
    let ranges: Arc<Mutex<Vec<String>>> = Arc::default();
    let (served, seen) = (Arc::clone(&body), Arc::clone(&ranges));
    let addr = crate::support::serve(Router::new().route(
        "/export.bin",
        get(move |headers: HeaderMap| {
            let (body, seen) = (Arc::clone(&served), Arc::clone(&seen));
            async move {
                let len = body.len();
                let from = headers
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes="))
                    .and_then(|v| v.strip_suffix('-'))
                    .and_then(|v| v.parse::<usize>().ok());
                match from {
                    Some(from) if from < len => {
                        seen.lock().expect("lock").push(format!("bytes={from}-"));
                        (
                            StatusCode::PARTIAL_CONTENT,
                            [(
                                header::CONTENT_RANGE,
                                format!("bytes {from}-{}/{len}", len - 1),
                            )],
                            body[from..].to_vec(),
                        )
                            .into_response()
                    }
                    _ => body.to_vec().into_response(),
                }
            }
        }),
    ))
    .await;

    let ws = Workspace::new();
    let mut jobs = ws.jobs(&format!(
        r#"
[[jobs]]
name = "web"
schedule = "@daily"
source = {{ type = "url", url = "http://{addr}/export.bin" }}
rate_limit = "8MiB"
timeout = "2600ms"
retry = {{ max_attempts = 4, initial_interval = "10ms" }}
writers = [{{ type = "local", path = "out/web.bin" }}]

[[jobs]]
name = "piped"
schedule = "@daily"
source = {{ type = "command", command = ["cat", "out/web.bin"] }}
rate_limit = "8MiB"
timeout = "1500ms"
retry = {{ max_attempts = 2, initial_interval = "10ms" }}
writers = [{{ type = "local", path = "out/piped.bin" }}]
"#
    ));
    let ledger = ledger(&ws).await;

    let web = jobs.remove(0);
    let report = web
        .run_claimed(&ledger, web.now_slot())
        .await
        .expect("store")
        .expect("claimed");
    // Every attempt is cut off before 24 MiB at 8 MiB/s: only resuming can finish.
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(report.attempts >= 2, "{report:#?}");
    assert!(report.resumed_from > 0, "{}", report.resumed_from);
    let ranges = ranges.lock().expect("lock").clone();
    // At most one ranged request per retry (an attempt cut off before its first checkpoint
    // leaves the next one nothing to resume from).
    assert!(
        !ranges.is_empty() && ranges.len() < report.attempts as usize,
        "{} attempts, ranged requests: {ranges:?}",
        report.attempts
    );
    assert_eq!(
        ranges.last(),
        Some(&format!("bytes={}-", report.resumed_from)),
        "the last resume asked from its checkpoint"
    );
    assert_eq!(
        std::fs::read(ws.path().join("out/web.bin")).expect("delivered"),
        *body
    );

    // Not seekable: the second attempt starts from byte 0 (and, at 8 MiB/s for 24 MiB with
    // 1.5 s per attempt, cannot finish either), leaving nothing behind.
    let piped = jobs.remove(0);
    let report = piped
        .run_claimed(&ledger, piped.now_slot())
        .await
        .expect("store")
        .expect("claimed");
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.resumed_from, 0, "a command cannot resume");
    assert!(!ws.path().join("out/piped.bin").exists());
    assert!(
        !ws.files().iter().any(|f| f.contains(".partial-")),
        "{:?}",
        ws.files()
    );
}

/// Unfinished runs found at start-up are resumed only within their retry policy, and only
/// for jobs that still exist; the others are recorded as failed, not left hanging.
#[tokio::test]
async fn unfinished_runs_out_of_attempts_or_jobs_are_closed_at_start() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "kept"
schedule = "@yearly"
retry = { max_attempts = 3 }
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/x" }]
"#,
    );
    let store = Store::open("sqlite://ferry-state.db", ws.path())
        .await
        .expect("store");
    let claim = |job: &'static str, run_id: &'static str| Claim {
        job,
        slot: Utc::now() - chrono::Duration::hours(1),
        slot_local: "earlier",
        run_id,
        uuid: "00000000-0000-4000-8000-000000000000",
        owner: "a dead daemon",
        lease: Duration::from_secs(60),
        manual: false,
    };
    store.claim(&claim("kept", "used-up")).await.expect("claim");
    store
        .attempt(
            "used-up",
            ferry::state::FIRST_EPOCH,
            3,
            Duration::from_secs(60),
        )
        .await
        .expect("attempt");
    store.claim(&claim("gone", "orphan")).await.expect("claim");

    // Start-up decides about missed and unfinished runs before it is ready; a run it
    // started would be waited for by the shutdown and seen among its events.
    let mut daemon = boot(&config);
    let (_, mut seen) = daemon
        .until(Duration::from_secs(30), |e| {
            matches!(e, Event::Ready { .. })
        })
        .await;
    seen.extend(daemon.stop().await);
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Finished(_))),
        "{seen:#?}"
    );
    let runs = store.history(None, 10).await.expect("history");
    let used_up = runs
        .iter()
        .find(|r| r.run_id == "used-up")
        .expect("recorded");
    assert_eq!(used_up.state, RunState::Failed);
    assert!(
        used_up
            .error
            .as_deref()
            .is_some_and(|e| e.contains("last attempt (3 of 3)")),
        "{used_up:#?}"
    );
    let orphan = runs
        .iter()
        .find(|r| r.run_id == "orphan")
        .expect("recorded");
    assert_eq!(orphan.state, RunState::Failed);
    assert!(
        orphan
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no longer in the job file"))
    );
    assert!(store.unfinished().await.expect("read").is_empty());
}

/// Two local writers checkpoint at slightly different points; the retry resumes both from
/// the lesser one (a local file can be cut back), and both copies come out identical.
#[tokio::test]
async fn two_local_writers_resume_from_the_lesser_checkpoint() {
    let ws = Workspace::new();
    random_file(&ws.path().join("input.bin"), 24 << 20);
    let mut jobs = ws.jobs(
        r#"
[[jobs]]
name = "pair"
schedule = "@daily"
source = { type = "file", path = "input.bin" }
rate_limit = "8MiB"
timeout = "2600ms"
retry = { max_attempts = 4, initial_interval = "10ms" }
writers = [
  { type = "local", path = "out/a.bin" },
  { type = "local", path = "out/b.bin" },
]
"#,
    );
    let job = jobs.remove(0);
    let report = job
        .run_claimed(&ledger(&ws).await, job.now_slot())
        .await
        .expect("store works")
        .expect("claimed");
    // Each attempt is cut off before 24 MiB at 8 MiB/s: only resuming can finish.
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(report.resumed_from > 0, "{report:#?}");
    let want = sha256_file(&ws.path().join("input.bin"));
    assert_eq!(sha256_file(&ws.path().join("out/a.bin")), want);
    assert_eq!(sha256_file(&ws.path().join("out/b.bin")), want);
    assert!(report.deliveries.iter().all(|d| d.sha256 == want));
}

/// A new job on a fresh store: its first start is not a catch-up, whatever its grace; its
/// first run is its first slot after the start.
#[tokio::test(start_paused = true)]
async fn the_first_start_of_a_job_is_not_a_catch_up() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "hourly"
schedule = "0 0 * * * *"
misfire_grace = "2h"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/{scheduled:%H%M}" }]
"#,
    );
    let mut daemon = boot_at(&config, utc("2026-06-01T10:30:00Z"));
    let (_, mut seen) = daemon
        .until(WAIT, |e| matches!(e, Event::Ready { .. }))
        .await;
    daemon.advance(Duration::from_secs(30 * 60)).await;
    let (first, before) = daemon
        .until(WAIT, |e| matches!(e, Event::Finished(_)))
        .await;
    seen.extend(before);
    seen.push(first);
    seen.extend(daemon.stop().await);
    assert_eq!(
        finished_slots(&seen),
        [utc("2026-06-01T11:00:00Z")],
        "no run at the first start, then the 11:00 slot: {seen:#?}"
    );
    assert_eq!(ws.files(), ["out/1100"]);
}

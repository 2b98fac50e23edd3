//! The daemon booted in-process. Firing, reload, overlap, falling behind and whole DST days
//! run on tokio's paused clock, moved by the test (a day of slots in milliseconds, each
//! firing at a known instant); shutdown runs real programs in real time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry::daemon::{self, Control, Event};
use ferry::report::RunReport;
use ferry::runner::RunStatus;
use tokio::sync::mpsc;

use crate::support::daemon::*;
use crate::support::{Workspace, utc};

const EVERY_SECOND: &str = r#"
[[jobs]]
name = "tick"
schedule = "* * * * * *"
source = { type = "inline", data = "tick" }
writers = [{ type = "local", path = "out/tick/{scheduled:%H%M%S}" }]
"#;

fn slot_of(report: &RunReport) -> DateTime<Utc> {
    utc(&report.slot)
}

#[tokio::test(start_paused = true)]
async fn a_job_every_second_delivers_once_per_slot_at_its_second() {
    let ws = Workspace::new();
    let mut daemon = boot_at(&ws.job_file(EVERY_SECOND), utc("2026-06-01T12:00:00.4Z"));
    daemon.ready().await;
    for second in 1..=3 {
        daemon.advance(Duration::from_secs(1)).await;
        let (report, _) = daemon.finished().await;
        assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
        assert_eq!(
            slot_of(&report),
            utc(&format!("2026-06-01T12:00:0{second}Z"))
        );
    }
    // Time stood still since: nothing else ran.
    let rest = daemon.stop().await;
    assert!(
        !rest
            .iter()
            .any(|e| matches!(e, Event::Started { .. } | Event::Finished(_))),
        "{rest:#?}"
    );
    assert_eq!(
        ws.files(),
        ["out/tick/120001", "out/tick/120002", "out/tick/120003"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_jobs_without_a_restart() {
    let ws = Workspace::new();
    let config = ws.job_file(EVERY_SECOND);
    let mut daemon = boot_at(&config, utc("2026-06-01T12:00:00.4Z"));
    daemon.ready().await;
    daemon.advance(Duration::from_secs(1)).await;
    let (tick, _) = daemon.finished().await;
    assert_eq!(tick.job, "tick");

    ws.job_file(
        r#"
[[jobs]]
name = "tock"
schedule = "* * * * * *"
source = { type = "inline", data = "tock" }
writers = [{ type = "local", path = "out/tock/{scheduled:%H%M%S}" }]
"#,
    );
    daemon
        .control
        .send(Control::Reload)
        .await
        .expect("daemon listening");
    let (reloaded, _) = daemon
        .until(WAIT, |e| matches!(e, Event::Reloaded { .. }))
        .await;
    let Event::Reloaded { added, removed, .. } = reloaded else {
        unreachable!("matched above")
    };
    assert_eq!(added, vec!["tock".to_owned()]);
    assert_eq!(removed, vec!["tick".to_owned()]);

    // The next two seconds run the new job only.
    let mut after = Vec::new();
    for _ in 0..2 {
        daemon.advance(Duration::from_secs(1)).await;
        let (report, before) = daemon.finished().await;
        after.extend(before);
        assert_eq!(report.job, "tock", "{report:#?}");
    }
    after.extend(daemon.stop().await);
    assert!(
        !after
            .iter()
            .any(|e| matches!(e, Event::Started { job, .. } if job == "tick")),
        "the removed job started after the reload: {after:#?}"
    );
    assert_eq!(
        ws.files(),
        ["out/tick/120001", "out/tock/120002", "out/tock/120003"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_bad_reload_keeps_the_old_jobs_firing_and_reports_every_error() {
    let ws = Workspace::new();
    let config = ws.job_file(EVERY_SECOND);
    let mut daemon = boot_at(&config, utc("2026-06-01T12:00:00.4Z"));
    daemon.ready().await;

    ws.job_file(
        "[[jobs]]\nname = \"tick\"\nschedule = \"every second please\"\nsource = { type = \"inline\", data = \"x\" }\nwriters = []\n",
    );
    daemon
        .control
        .send(Control::Reload)
        .await
        .expect("daemon listening");
    let (rejected, _) = daemon
        .until(WAIT, |e| matches!(e, Event::ReloadRejected { .. }))
        .await;
    let Event::ReloadRejected { errors } = rejected else {
        unreachable!("matched above")
    };
    let shown = config.display().to_string();
    assert!(
        errors.contains(&format!("{shown}:3:12: jobs[0].schedule")),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{shown}:5:11: jobs[0].writers")),
        "{errors}"
    );

    // The old job still fires, at its next slot.
    daemon.advance(Duration::from_secs(1)).await;
    let (report, _) = daemon.finished().await;
    assert_eq!(
        (report.job.as_str(), slot_of(&report)),
        ("tick", utc("2026-06-01T12:00:01Z"))
    );
    daemon.stop().await;
}

/// An hourly job in Berlin over both DST days of a year: 23 runs on the spring-forward day,
/// 25 on the fall-back day (both 02:00s, each once), each at its instant; plus a daily job at
/// 02:30, a time the spring-forward day skips (it runs once, at 03:00) and the fall-back day
/// has twice (it runs once, the first time).
#[tokio::test(start_paused = true)]
async fn whole_dst_days_in_berlin_run_every_slot_once() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "hourly"
schedule = "0 0 * * * *"
timezone = "Europe/Berlin"
source = { type = "inline", data = "h" }
writers = [{ type = "local", path = "out/hourly/{scheduled:%Y-%m-%dT%H:%M%z}" }]

[[jobs]]
name = "daily"
schedule = "0 30 2 * * *"
timezone = "Europe/Berlin"
source = { type = "inline", data = "d" }
writers = [{ type = "local", path = "out/daily/{scheduled:%Y-%m-%dT%H:%M%z}" }]
"#,
    );
    for (day_starts, hours, daily) in [
        // 2026-03-29 00:00 CET .. 2026-03-30 00:00 CEST: 23 hours; 02:30 is 03:00 CEST.
        ("2026-03-28T23:00:00Z", 23, "2026-03-29T01:00:00Z"),
        // 2026-10-25 00:00 CEST .. 2026-10-26 00:00 CET: 25 hours; 02:30 CEST comes first.
        ("2026-10-24T22:00:00Z", 25, "2026-10-25T00:30:00Z"),
    ] {
        let first = utc(day_starts);
        let mut want: Vec<(String, DateTime<Utc>)> = (0..hours)
            .map(|hour| ("hourly".to_owned(), first + chrono::Duration::hours(hour)))
            .collect();
        want.push(("daily".to_owned(), utc(daily)));
        want.sort();

        let mut clock = first - chrono::Duration::seconds(1);
        let mut daemon = boot_at(&config, clock);
        daemon.ready().await;
        let mut seen = Vec::new();
        // The day in half hours: after each step, wait for exactly the runs due by then.
        for half_hour in 0..(2 * hours) {
            let to = first + chrono::Duration::minutes(30 * half_hour);
            daemon
                .advance((to - clock).to_std().expect("forward"))
                .await;
            clock = to;
            let due = want.iter().filter(|(_, slot)| *slot <= clock).count();
            while seen.len() < due {
                let (report, _) = daemon.finished().await;
                assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
                seen.push((report.job.clone(), slot_of(&report)));
            }
        }
        let rest = daemon.stop().await;
        assert!(
            !rest
                .iter()
                .any(|e| matches!(e, Event::Started { .. } | Event::Finished(_))),
            "nothing beyond the day's slots ran: {rest:#?}"
        );
        seen.sort();
        assert_eq!(seen, want);
    }
    let files = ws.files();
    let day = |prefix: &str| files.iter().filter(|f| f.starts_with(prefix)).count();
    assert_eq!(day("out/hourly/2026-03-29"), 23, "{files:#?}");
    assert_eq!(day("out/hourly/2026-10-25"), 25, "{files:#?}");
    for twice in [
        "out/hourly/2026-10-25T02:00+0200",
        "out/hourly/2026-10-25T02:00+0100",
    ] {
        assert!(files.contains(&twice.to_owned()), "{twice} in {files:#?}");
    }
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("out/hourly/2026-03-29T02")),
        "{files:#?}"
    );
    let daily: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("out/daily/"))
        .collect();
    assert_eq!(
        daily,
        [
            "out/daily/2026-03-29T03:00+0200",
            "out/daily/2026-10-25T02:30+0200"
        ],
        "{files:#?}"
    );
}
#[tokio::test]
async fn shutdown_lets_a_running_delivery_finish() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "slow"
schedule = "* * * * * *"
source = { type = "command", command = ["sh", "-c", "sleep 2; echo done"] }
writers = [{ type = "local", path = "out/{scheduled:%H%M%S}" }]
"#,
    );
    let mut daemon = boot(&config);
    assert!(matches!(
        daemon.next(Duration::from_secs(5)).await,
        Event::Ready { .. }
    ));
    // Stop while the first run is going (it takes two seconds).
    daemon
        .until(Duration::from_secs(10), |e| {
            matches!(e, Event::Started { .. })
        })
        .await;
    let events = daemon.stop().await;
    let finished: Vec<_> = events.iter().filter_map(finished_job).collect();
    assert!(
        !finished.is_empty(),
        "the running delivery finished before exit: {events:#?}"
    );
    assert!(
        matches!(events.last(), Some(Event::Stopped { cancelled: 0 })),
        "{events:#?}"
    );
    let files = ws.files();
    assert_eq!(files.len(), finished.len(), "{files:?}");
    for file in files {
        assert_eq!(
            std::fs::read(ws.path().join(&file)).expect("read"),
            b"done\n"
        );
    }
}

#[tokio::test]
async fn shutdown_cancels_what_outlives_the_deadline() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[daemon]
shutdown_timeout = "300ms"

[[jobs]]
name = "stuck"
schedule = "* * * * * *"
source = { type = "command", command = ["sh", "-c", "head -c 1000 /dev/zero; sleep 30"] }
writers = [{ type = "local", path = "out/stuck" }]
"#,
    );
    let mut daemon = boot(&config);
    assert!(matches!(
        daemon.next(Duration::from_secs(5)).await,
        Event::Ready { .. }
    ));
    daemon
        .until(Duration::from_secs(10), |e| {
            matches!(e, Event::Started { .. })
        })
        .await;
    let started = std::time::Instant::now();
    let events = daemon.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(events.last(), Some(Event::Stopped { cancelled: 1 })),
        "{events:#?}"
    );
    let files = ws.files();
    assert!(
        !files.contains(&"out/stuck".to_owned()),
        "no final file: {files:?}"
    );
    // The cancelled run stays unfinished in the store, to be resumed at the next start.
    let store = ferry::state::Store::open("sqlite://ferry-state.db", ws.path())
        .await
        .expect("open the daemon's store");
    let unfinished = store.unfinished().await.expect("read");
    assert_eq!(unfinished.len(), 1, "{unfinished:#?}");
    assert_eq!(unfinished[0].job, "stuck");
}

/// A run that outlasts the time to the next slot: the next firing is skipped by default and
/// starts beside it with `overlap = "allow"`. The runs read from a local HTTP server that
/// answers only when the test lets it, so a run lasts exactly as long as the test wants.
#[tokio::test(start_paused = true)]
async fn overlapping_firings_are_skipped_by_default_and_allowed_on_request() {
    let _still = Hold::new();
    for overlap in ["skip", "allow"] {
        let (addr, answers) = crate::support::held_server("data").await;
        let ws = Workspace::new();
        let config = ws.job_file(&format!(
            r#"
[[jobs]]
name = "long"
schedule = "0 1,2 12 * * *"
overlap = "{overlap}"
source = {{ type = "url", url = "http://{addr}/data" }}
writers = [{{ type = "local", path = "out/{{scheduled:%H%M}}" }}]
"#
        ));
        let mut daemon = boot_at(&config, utc("2026-06-01T12:00:30Z"));
        daemon.ready().await;
        daemon.advance(Duration::from_secs(30)).await;
        daemon
            .until(WAIT, |e| matches!(e, Event::Started { .. }))
            .await;
        // 12:02, the first run still waiting for its data.
        daemon.advance(Duration::from_secs(60)).await;
        let (second, before) = daemon
            .until(WAIT, |e| {
                matches!(e, Event::Started { .. } | Event::Skipped { .. })
            })
            .await;
        assert!(
            !before.iter().any(|e| matches!(e, Event::Finished(_))),
            "{before:#?}"
        );
        let want = utc("2026-06-01T12:02:00Z");
        match (overlap, &second) {
            ("skip", Event::Skipped { job, slot }) | ("allow", Event::Started { job, slot }) => {
                assert_eq!((job.as_str(), slot.with_timezone(&Utc)), ("long", want));
            }
            _ => panic!("overlap = {overlap}: {second:#?}"),
        }
        answers.add_permits(2);
        let runs = if overlap == "skip" { 1 } else { 2 };
        for _ in 0..runs {
            let (report, _) = daemon.finished().await;
            assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
        }
        daemon.stop().await;
        let want_files: &[&str] = if overlap == "skip" {
            &["out/1201"]
        } else {
            &["out/1201", "out/1202"]
        };
        assert_eq!(ws.files(), want_files, "overlap = {overlap}");
        // The skipped slot was claimed ahead of its instant; the claim was taken back.
        let store = ferry::state::Store::open("sqlite://ferry-state.db", ws.path())
            .await
            .expect("open the daemon's store");
        let slots: Vec<String> = store
            .history(Some("long"), 10)
            .await
            .expect("history")
            .into_iter()
            .map(|run| run.slot_local)
            .collect();
        let want_slots: &[&str] = if overlap == "skip" {
            &["2026-06-01T12:01:00+00:00"]
        } else {
            &["2026-06-01T12:02:00+00:00", "2026-06-01T12:01:00+00:00"]
        };
        assert_eq!(slots, want_slots, "overlap = {overlap}");
    }
}

/// Runs are claimed a little ahead of their slot and start at it. A daemon stopped in
/// between starts nothing and takes its claims back: nothing is left to resume.
#[tokio::test(start_paused = true)]
async fn a_daemon_stopped_between_claim_and_slot_starts_nothing_and_leaves_no_claim() {
    let _still = Hold::new();
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "soon"
schedule = "0 1 12 * * *"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/soon" }]
"#,
    );
    let mut daemon = boot_at(&config, utc("2026-06-01T12:00:59Z"));
    daemon.ready().await;
    // 12:00:59.990: claimed, not started.
    daemon.advance(Duration::from_millis(990)).await;
    let store = ferry::state::Store::open("sqlite://ferry-state.db", ws.path())
        .await
        .expect("open the daemon's store");
    let deadline = std::time::Instant::now() + WAIT;
    let claimed = loop {
        let unfinished = store.unfinished().await.expect("read");
        if !unfinished.is_empty() || std::time::Instant::now() > deadline {
            break unfinished;
        }
        // Real time, while the daemon goes on (the paused clock stands still).
        let nap = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10)));
        nap.await.expect("nap");
    };
    assert_eq!(claimed.len(), 1, "claimed ahead of the slot");
    assert_eq!(claimed[0].slot_local, "2026-06-01T12:01:00+00:00");
    let events = daemon.stop().await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Started { .. } | Event::Finished(_))),
        "{events:#?}"
    );
    assert!(store.unfinished().await.expect("read").is_empty());
    assert!(store.history(None, 10).await.expect("read").is_empty());
    assert!(ws.files().is_empty());
}

/// Jobs due at one instant are claimed together: each that its slot allows starts, and one
/// whose slot already has a run (another daemon's, say) does not run again.
#[tokio::test(start_paused = true)]
async fn jobs_due_together_start_together_except_a_slot_already_run() {
    let _still = Hold::new();
    let ws = Workspace::new();
    let mut text = String::new();
    for name in ["a", "b", "c"] {
        text.push_str(&format!(
            "[[jobs]]\nname = \"{name}\"\nschedule = \"@hourly\"\nsource = {{ type = \"inline\", data = \"{name}\" }}\nwriters = [{{ type = \"local\", path = \"out/{{job}}\" }}]\n\n"
        ));
    }
    let config = ws.job_file(&text);
    let store = ferry::state::Store::open("sqlite://ferry-state.db", ws.path())
        .await
        .expect("store");
    let claim = ferry::state::Claim {
        job: "b",
        slot: utc("2026-06-01T10:00:00Z"),
        slot_local: "2026-06-01T10:00:00+00:00",
        run_id: "elsewhere",
        uuid: "00000000-0000-4000-8000-000000000000",
        owner: "another daemon",
        lease: Duration::from_secs(60),
        manual: false,
    };
    assert!(store.claim(&claim).await.expect("claim"));
    let done = ferry::state::Outcome {
        state: ferry::state::RunState::Succeeded,
        attempts: 1,
        bytes: Some(1),
        sha256: None,
        location: None,
        error: None,
    };
    store
        .finish("elsewhere", ferry::state::FIRST_EPOCH, &done)
        .await
        .expect("finish");

    let mut daemon = boot_at(&config, utc("2026-06-01T09:59:59Z"));
    daemon.ready().await;
    daemon.advance(Duration::from_secs(1)).await;
    let mut started = Vec::new();
    for _ in 0..2 {
        let (report, before) = daemon.finished().await;
        assert_eq!(slot_of(&report), utc("2026-06-01T10:00:00Z"));
        started.extend(before.into_iter().filter_map(|e| match e {
            Event::Started { job, .. } => Some(job),
            _ => None,
        }));
    }
    let rest = daemon.stop().await;
    assert!(
        !rest.iter().any(|e| matches!(e, Event::Finished(_))),
        "{rest:#?}"
    );
    started.sort();
    assert_eq!(started, ["a", "c"]);
    assert_eq!(ws.files(), ["out/a", "out/c"]);
    let b = store.history(Some("b"), 10).await.expect("history");
    assert_eq!(b.len(), 1, "only the other daemon's run: {b:#?}");
}

/// The daemon held up past several slots (a suspended machine, a stepped clock): the slots
/// that passed are skipped, the latest runs, and the schedule goes on from there.
#[tokio::test(start_paused = true)]
async fn a_daemon_held_up_past_slots_runs_only_the_latest() {
    let _still = Hold::new();
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "hourly"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/{scheduled:%H%M}" }]
"#,
    );
    let mut daemon = boot_at(&config, utc("2026-06-01T09:59:59Z"));
    daemon.ready().await;
    let mut slots = Vec::new();
    for step in [1, 3 * 3600 + 1800, 1800] {
        daemon.advance(Duration::from_secs(step)).await;
        let (report, _) = daemon.finished().await;
        slots.push(slot_of(&report));
    }
    daemon.stop().await;
    assert_eq!(
        slots,
        [
            utc("2026-06-01T10:00:00Z"),
            utc("2026-06-01T13:00:00Z"),
            utc("2026-06-01T14:00:00Z"),
        ]
    );
    let store = ferry::state::Store::open("sqlite://ferry-state.db", ws.path())
        .await
        .expect("open the daemon's store");
    let history = store.history(Some("hourly"), 10).await.expect("history");
    assert_eq!(history.len(), 3, "no row for a skipped slot: {history:#?}");
}

#[tokio::test]
async fn an_invalid_file_refuses_to_start() {
    let ws = Workspace::new();
    let config = ws.job_file("[[jobs]]\nname = 1\n");
    let (_control, rx) = mpsc::channel(1);
    let err = daemon::run(&config, rx, None).await.expect_err("refused");
    assert!(matches!(err, daemon::DaemonError::Config(_)), "{err}");
    assert!(err.to_string().contains(":2:8: jobs[0].name"), "{err}");
}

//! The daemon booted in-process: firing, reload, overlap and shutdown, in real time.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Timelike as _;
use ferry::daemon::{self, Control, Event};
use ferry::runner::RunStatus;
use tokio::sync::mpsc;

use crate::support::Workspace;
use crate::support::daemon::*;

const EVERY_SECOND: &str = r#"
[[jobs]]
name = "tick"
schedule = "* * * * * *"
source = { type = "inline", data = "tick" }
writers = [{ type = "local", path = "out/tick/{scheduled:%H%M%S}" }]
"#;

#[tokio::test]
async fn a_job_every_second_delivers_once_per_distinct_slot() {
    let ws = Workspace::new();
    let mut daemon = boot(&ws.job_file(EVERY_SECOND));
    assert!(matches!(
        daemon.next(Duration::from_secs(5)).await,
        Event::Ready { armed: 1 }
    ));
    let started = std::time::Instant::now();
    let mut slots = BTreeSet::new();
    while slots.len() < 3 {
        let event = daemon.next(Duration::from_secs(3)).await;
        if let Event::Finished(report) = event {
            assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
            let slot = chrono::DateTime::parse_from_rfc3339(&report.slot).expect("RFC 3339 slot");
            assert_eq!(
                slot.nanosecond(),
                0,
                "slots are whole seconds: {}",
                report.slot
            );
            assert!(
                slots.insert(report.slot.clone()),
                "slot {} ran twice",
                report.slot
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );
    daemon.stop().await;
    let files = ws.files();
    assert!(files.len() >= 3, "{files:?}");
    for slot in &slots {
        let parsed = chrono::DateTime::parse_from_rfc3339(slot).expect("slot");
        let name = format!("out/tick/{}", parsed.format("%H%M%S"));
        assert!(files.contains(&name), "{name} missing from {files:?}");
    }
}

#[tokio::test]
async fn a_reload_adds_and_removes_jobs_without_a_restart() {
    let ws = Workspace::new();
    let config = ws.job_file(EVERY_SECOND);
    let mut daemon = boot(&config);
    daemon
        .until(Duration::from_secs(5), |e| {
            finished_job(e).is_some_and(|(job, _)| job == "tick")
        })
        .await;

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
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::Reloaded { .. })
        })
        .await;
    let Event::Reloaded { added, removed, .. } = reloaded else {
        unreachable!("matched above")
    };
    assert_eq!(added, vec!["tock".to_owned()]);
    assert_eq!(removed, vec!["tick".to_owned()]);

    // Two runs of the new job; the old one no longer starts: every `tick` run seen after
    // the reload (runs already going when it came may still finish) is for an earlier slot.
    let reloaded_at = chrono::Utc::now();
    let mut tocks = 0;
    let mut ticks_after = Vec::new();
    while tocks < 2 {
        let event = daemon.next(Duration::from_secs(3)).await;
        match &event {
            Event::Started { job, slot } if job == "tick" => ticks_after.push(*slot),
            _ => {}
        }
        if let Some((job, _)) = finished_job(&event)
            && job == "tock"
        {
            tocks += 1;
        }
    }
    assert!(
        ticks_after.iter().all(|slot| *slot <= reloaded_at),
        "the removed job started after the reload: {ticks_after:?}"
    );
    let tock_files = ws
        .files()
        .iter()
        .filter(|f| f.starts_with("out/tock/"))
        .count();
    assert!(tock_files >= 2, "{:?}", ws.files());
    daemon.stop().await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_jobs_firing_and_reports_every_error() {
    let ws = Workspace::new();
    let config = ws.job_file(EVERY_SECOND);
    let mut daemon = boot(&config);
    daemon
        .until(Duration::from_secs(5), |e| finished_job(e).is_some())
        .await;

    ws.job_file(
        "[[jobs]]\nname = \"tick\"\nschedule = \"every second please\"\nsource = { type = \"inline\", data = \"x\" }\nwriters = []\n",
    );
    daemon
        .control
        .send(Control::Reload)
        .await
        .expect("daemon listening");
    let (rejected, _) = daemon
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::ReloadRejected { .. })
        })
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

    // The old job still fires, for slots after the rejected reload.
    let rejected_at = chrono::Utc::now();
    daemon
        .until(Duration::from_secs(4), |e| {
            finished_job(e).is_some_and(|(job, slot)| {
                job == "tick"
                    && chrono::DateTime::parse_from_rfc3339(&slot).is_ok_and(|s| s > rejected_at)
            })
        })
        .await;
    daemon.stop().await;
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

#[tokio::test]
async fn overlapping_firings_are_skipped_by_default_and_allowed_on_request() {
    let job = |overlap: &str| {
        format!(
            r#"
[[jobs]]
name = "long"
schedule = "* * * * * *"
overlap = "{overlap}"
source = {{ type = "command", command = ["sh", "-c", "sleep 2.2; echo x"] }}
writers = [{{ type = "local", path = "out/{{run_id}}" }}]
"#
        )
    };
    let ws = Workspace::new();
    let mut daemon = boot(&ws.job_file(&job("skip")));
    let (skipped, _) = daemon
        .until(Duration::from_secs(6), |e| {
            matches!(e, Event::Skipped { .. })
        })
        .await;
    assert!(matches!(skipped, Event::Skipped { ref job, .. } if job == "long"));
    daemon.stop().await;

    let ws = Workspace::new();
    let mut daemon = boot(&ws.job_file(&job("allow")));
    // Two runs started while the first (2.2 s) is still going: they overlap.
    let (_, mut events) = daemon
        .until(Duration::from_secs(10), |e| {
            matches!(e, Event::Started { .. })
        })
        .await;
    let (second, before) = daemon
        .until(Duration::from_secs(10), |e| {
            matches!(e, Event::Started { .. })
        })
        .await;
    assert!(
        !before.iter().any(|e| finished_job(e).is_some()),
        "the second run started before the first finished: {before:#?}"
    );
    events.extend(before);
    events.push(second);
    events.extend(daemon.stop().await);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Skipped { .. })),
        "{events:#?}"
    );
    let finished = events.iter().filter(|e| finished_job(e).is_some()).count();
    assert!(finished >= 2, "overlapping runs all finished: {events:#?}");
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

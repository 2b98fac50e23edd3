//! Several daemons on one store: a run whose daemon died is taken over by a live daemon and
//! resumed, and a daemon whose run was taken over gives it up without touching what the new
//! owner has. Run on SQLite always and on PostgreSQL when `FERRY_TEST_POSTGRES_URL` names
//! one; on tokio's paused clock, so the daemon's lease timing passes in milliseconds (what
//! the store records carries the system's time).

use std::time::Duration;

use chrono::Utc;
use ferry::daemon::Event;
use ferry::report::RunStatus;
use ferry::state::{Claim, FIRST_EPOCH, RunState, Store};

use crate::support::daemon::{Hold, WAIT, boot_at};
use crate::support::{Relay, Workspace, held_server, utc};

/// The stores to run on: `(name, state URL)`, a SQLite file in `ws` and PostgreSQL when
/// configured.
fn backends() -> Vec<(&'static str, String)> {
    let mut out = vec![("sqlite", "sqlite://state.db".to_owned())];
    match std::env::var("FERRY_TEST_POSTGRES_URL") {
        Ok(url) => out.push(("postgres", url)),
        Err(_) => {
            eprintln!("PostgreSQL take-over tests not run: FERRY_TEST_POSTGRES_URL is not set")
        }
    }
    out
}

/// A job file with a 3 s lease on `state` and one job, `job`, on `schedule`, reading
/// `source` into `out/JOB`.
fn one_job(state: &str, job: &str, schedule: &str, source: &str) -> String {
    format!(
        r#"
[daemon]
state = "{state}"
lease = "3s"

[[jobs]]
name = "{job}"
schedule = "{schedule}"
source = {source}
writers = [{{ type = "local", path = "out/{{job}}" }}]
"#
    )
}

/// A job name no other test (or earlier run on a shared database) uses.
fn unique_job(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A run of `job` for 11:00 claimed by a daemon now dead, its lease `lease` long: its id.
async fn claimed_by_the_dead(store: &Store, job: &str, lease: Duration) -> String {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let claim = Claim {
        job,
        slot: utc("2026-06-01T11:00:00Z"),
        slot_local: "2026-06-01T11:00:00+00:00",
        run_id: &run_id,
        uuid: "6f1c0f3e-0000-4000-8000-000000000000",
        owner: "dead-host/1",
        lease,
        manual: false,
    };
    assert!(store.claim(&claim).await.expect("claim"));
    run_id
}

#[tokio::test(start_paused = true)]
async fn a_live_daemon_takes_over_a_run_whose_daemon_died() {
    let _still = Hold::new();
    for (backend, state) in backends() {
        let ws = Workspace::new();
        let job = unique_job("orphan");
        let config = ws.job_file(&one_job(
            &state,
            &job,
            "0 0 0 1 1 *",
            r#"{ type = "inline", data = "taken over" }"#,
        ));
        let mut daemon = boot_at(&config, utc("2026-06-01T12:00:00Z"));
        let me = daemon.ready().await;

        // Another daemon claimed a run and died in its first attempt: its lease is out.
        let store = Store::open(&state, ws.path())
            .await
            .expect("open the store");
        let run_id = claimed_by_the_dead(&store, &job, Duration::ZERO).await;
        store
            .attempt(&run_id, FIRST_EPOCH, 1, Duration::ZERO)
            .await
            .expect("attempt");
        // The store's lease times are the system's: let its clock pass the lease's end.
        std::thread::sleep(Duration::from_millis(5));

        // The live daemon looks every third of its lease.
        daemon.advance(Duration::from_millis(1100)).await;
        let (report, _) = daemon.finished().await;
        assert_eq!(report.run_id, run_id, "{backend}");
        assert_eq!(
            report.status,
            RunStatus::Succeeded,
            "{backend}: {report:#?}"
        );
        assert_eq!(report.attempts, 2, "{backend}: resumed as its next attempt");
        let run = store.run(&run_id).await.expect("read").expect("run");
        assert_eq!(run.state, RunState::Succeeded, "{backend}");
        assert_eq!(run.epoch, FIRST_EPOCH + 1, "{backend}: one take-over");
        assert_eq!(run.owner, me, "{backend}");
        let delivered =
            std::fs::read_to_string(ws.path().join("out").join(&job)).expect("the delivered file");
        assert_eq!(delivered, "taken over");
        daemon.stop().await;
    }
}

/// A daemon cut off (or paused) while another took its run over: its next renewal is
/// refused, it stops the run without making the delivery visible, without recording an
/// outcome and without telling anyone; the run stays the new owner's.
#[tokio::test(start_paused = true)]
async fn a_run_taken_over_from_its_daemon_is_given_up_untouched() {
    let _still = Hold::new();
    for (backend, state) in backends() {
        let (addr, answers) = held_server("late data").await;
        let ws = Workspace::new();
        let job = unique_job("zombie");
        let config = ws.job_file(&format!(
            r#"
[daemon]
state = "{state}"
lease = "3s"

[notifiers.told]
type = "webhook"
url = "http://{addr}/told"

[[jobs]]
name = "{job}"
schedule = "0 1 12 * * *"
source = {{ type = "url", url = "http://{addr}/data" }}
writers = [{{ type = "local", path = "out/{{job}}" }}]
on_failure = ["told"]
on_success = ["told"]
"#
        ));
        let mut daemon = boot_at(&config, utc("2026-06-01T12:00:30Z"));
        daemon.ready().await;
        daemon.advance(Duration::from_secs(30)).await;
        daemon
            .until(WAIT, |e| matches!(e, Event::Started { .. }))
            .await;
        let store = Store::open(&state, ws.path())
            .await
            .expect("open the store");
        let run = store
            .unfinished()
            .await
            .expect("read")
            .into_iter()
            .find(|run| run.job == job)
            .expect("the run is going");

        // Another daemon takes the run over (as if this one had been away past its lease).
        let later = Utc::now() + chrono::Duration::hours(1);
        let epoch = store
            .take_over_expired(&run.run_id, "other-host/2", Duration::from_secs(600), later)
            .await
            .expect("take over")
            .expect("taken");
        assert_eq!(epoch, FIRST_EPOCH + 1);

        // The next renewal (a third of the lease on) is refused; then the data comes.
        daemon.advance(Duration::from_millis(1100)).await;
        let (report, _) = daemon.finished().await;
        answers.add_permits(1);
        assert_eq!(report.run_id, run.run_id, "{backend}");
        assert_eq!(report.status, RunStatus::Lost, "{backend}: {report:#?}");
        assert!(
            !ws.path().join("out").join(&job).exists(),
            "{backend}: the given-up run made nothing visible"
        );
        let now = store.run(&run.run_id).await.expect("read").expect("run");
        assert_eq!(
            now.state,
            RunState::Running,
            "{backend}: no outcome recorded"
        );
        assert_eq!(now.owner, "other-host/2");
        assert_eq!(now.epoch, epoch);
        assert_eq!(now.error, None);
        assert!(
            store
                .notifications(&run.run_id)
                .await
                .expect("read")
                .is_empty(),
            "{backend}: nobody was told"
        );
        daemon.stop().await;
    }
}

/// A daemon that recorded a run and its notification, claimed the notification and died
/// while sending it: a live daemon's sweeper sends it once its claim runs out, and only
/// once.
#[tokio::test(start_paused = true)]
async fn a_notification_left_by_a_dead_daemon_is_sent_once_by_another() {
    let _still = Hold::new();
    for (backend, state) in backends() {
        let (addr, calls) = crate::notify::webhook_server(axum::http::StatusCode::OK).await;
        let ws = Workspace::new();
        let job = unique_job("told");
        let config = ws.job_file(&format!(
            r#"
[daemon]
state = "{state}"

[notifiers.hook]
type = "webhook"
url = "http://{addr}/hook/x"

[[jobs]]
name = "{job}"
schedule = "0 0 0 1 1 *"
source = {{ type = "inline", data = "x" }}
writers = [{{ type = "local", path = "out/{{job}}" }}]
on_failure = ["hook"]
"#
        ));
        let store = Store::open(&state, ws.path())
            .await
            .expect("open the store");
        let run_id = claimed_by_the_dead(&store, &job, Duration::from_secs(60)).await;
        let report = serde_json::json!({
            "job": job, "run_id": run_id, "slot": "2026-06-01T11:00:00+00:00",
            "status": "failed", "attempts": 3, "started_at": "2026-06-01T11:00:00Z",
            "duration": 1.5, "deliveries": [], "resumed_from": 0,
            "error": { "kind": "network", "chain": ["connection refused"], "gave_up": "all 3 attempts failed" },
        });
        let notices = ferry::state::Notices {
            job: job.clone(),
            notifiers: vec![("hook".into(), report.to_string())],
        };
        store
            .finish_and_notify(
                &run_id,
                FIRST_EPOCH,
                &ferry::state::Outcome::failed(3, "connection refused"),
                Some(notices),
            )
            .await
            .expect("finish");
        // The dead daemon had claimed it, with a claim that has run out now.
        assert!(
            store
                .claim_notice(&run_id, "hook", "dead-host/1", Duration::ZERO)
                .await
                .expect("claim")
        );
        std::thread::sleep(Duration::from_millis(5));

        let mut daemon = boot_at(&config, utc("2026-06-01T12:00:00Z"));
        let me = daemon.ready().await;
        let began = std::time::Instant::now();
        while calls.lock().expect("calls").is_empty() {
            assert!(
                began.elapsed() < WAIT,
                "{backend}: not sent within {WAIT:?}"
            );
            // Lets the daemon's tasks and their I/O run, the paused clock a little on.
            daemon.advance(Duration::from_millis(10)).await;
        }
        // Later sweeps leave it alone: it is settled.
        for _ in 0..3 {
            daemon.advance(ferry::notify::outbox::SWEEP_EVERY).await;
        }
        daemon.stop().await;
        let calls = calls.lock().expect("calls").clone();
        assert_eq!(calls.len(), 1, "{backend}: sent once: {calls:#?}");
        let body: serde_json::Value = serde_json::from_str(&calls[0].body).expect("JSON");
        assert_eq!(body["run_id"], run_id.as_str());
        assert_eq!(body["status"], "failed");
        let notices = store.notices(&run_id).await.expect("outbox");
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].state, "sent", "{backend}");
        assert_eq!(notices[0].claimed_by.as_deref(), Some(me.as_str()));
    }
}

/// `ferry cluster` lists the daemons that heartbeat into the store, with the runs each has
/// going, and a daemon that stopped as stopped.
#[tokio::test(start_paused = true)]
async fn ferry_cluster_lists_the_live_daemons_and_their_runs() {
    let _still = Hold::new();
    for (backend, state) in backends() {
        let (addr, answers) = held_server("slow data").await;
        let ws = Workspace::new();
        let job = unique_job("listed");
        let text = one_job(
            &state,
            &job,
            "0 1 12 * * *",
            &format!(r#"{{ type = "url", url = "http://{addr}/data" }}"#),
        );
        let config = ws.job_file(&text);
        let mut daemon = boot_at(&config, utc("2026-06-01T12:00:30Z"));
        let me = daemon.ready().await;
        daemon.advance(Duration::from_secs(30)).await;
        daemon
            .until(WAIT, |e| matches!(e, Event::Started { .. }))
            .await;
        // A heartbeat every third of the lease.
        daemon.advance(Duration::from_millis(1100)).await;
        let parsed = ws.config(&text);
        let began = std::time::Instant::now();
        let shown = loop {
            let shown = ferry::cli::cluster(&parsed, true).await;
            assert_eq!(shown.code, 0, "{backend}: {}", shown.stderr);
            let json: serde_json::Value = serde_json::from_str(&shown.stdout).expect("JSON");
            let listed = json["daemons"].as_array().is_some_and(|daemons| {
                daemons
                    .iter()
                    .any(|d| d["id"] == me.as_str() && d["running"] == 1)
            });
            if listed {
                break json;
            }
            assert!(began.elapsed() < WAIT, "{backend}: no heartbeat: {json:#}");
            daemon.advance(Duration::from_millis(10)).await;
        };
        let mine = shown["daemons"]
            .as_array()
            .and_then(|daemons| daemons.iter().find(|d| d["id"] == me.as_str()))
            .expect("listed");
        assert_eq!(mine["alive"], true, "{backend}");
        assert_eq!(mine["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            shown["runs"].as_array().is_some_and(|runs| runs
                .iter()
                .any(|r| r["job"] == job.as_str() && r["owner"] == me.as_str())),
            "{backend}: {shown:#}"
        );
        let text_form = ferry::cli::cluster(&parsed, false).await.stdout;
        assert!(
            text_form.contains(&me) && text_form.contains("alive"),
            "{text_form}"
        );
        assert!(text_form.contains(&job), "{text_form}");

        answers.add_permits(1);
        daemon.finished().await;
        daemon.stop().await;
        let after = ferry::cli::cluster(&parsed, false).await.stdout;
        let line = after
            .lines()
            .find(|line| line.contains(&me))
            .expect("still listed");
        assert!(line.contains("stopped"), "{backend}: {after}");
    }
}

/// `max_running = 1`: of two runs due at once, one starts; the other waits for it to end
/// before claiming its slot (another daemon with room would have claimed it meanwhile;
/// alone, this one runs it late rather than never).
#[tokio::test(start_paused = true)]
async fn a_daemon_at_max_running_waits_for_room_before_claiming() {
    let _still = Hold::new();
    let (addr, answers) = held_server("data").await;
    let ws = Workspace::new();
    let job = |name: &str| {
        format!(
            r#"
[[jobs]]
name = "{name}"
schedule = "0 1 12 * * *"
source = {{ type = "url", url = "http://{addr}/data" }}
writers = [{{ type = "local", path = "out/{name}" }}]
"#
        )
    };
    let config = ws.job_file(&format!(
        "[daemon]\nmax_running = 1\n{}{}",
        job("first"),
        job("second")
    ));
    let mut daemon = boot_at(&config, utc("2026-06-01T12:00:30Z"));
    daemon.ready().await;
    daemon.advance(Duration::from_secs(30)).await;
    let (first, _) = daemon
        .until(WAIT, |e| matches!(e, Event::Started { .. }))
        .await;
    let Event::Started { job: first, .. } = first else {
        unreachable!("matched above")
    };
    // The other waits: nothing more starts while the first runs.
    daemon.advance(Duration::from_secs(5)).await;
    let meanwhile = daemon.collect(Duration::from_millis(300)).await;
    assert!(
        !meanwhile.iter().any(|e| matches!(e, Event::Started { .. })),
        "{meanwhile:#?}"
    );
    answers.add_permits(1);
    let (report, _) = daemon.finished().await;
    assert_eq!(report.job, first);
    let (second, _) = daemon
        .until(WAIT, |e| matches!(e, Event::Started { .. }))
        .await;
    let Event::Started { job: second, slot } = second else {
        unreachable!("matched above")
    };
    assert_ne!(second, first, "the other job runs once there is room");
    assert_eq!(slot.with_timezone(&Utc), utc("2026-06-01T12:01:00Z"));
    answers.add_permits(1);
    let (report, _) = daemon.finished().await;
    assert_eq!(report.job, second);
    assert_eq!(report.status, RunStatus::Succeeded);
    daemon.stop().await;
}

/// PostgreSQL out of reach while slots fall due: their claims fail (the store could not
/// record the runs, so none starts). Once it answers again, each job's missed slot runs
/// once if it is within the job's `misfire_grace`; a job whose grace has passed, or that
/// has none, waits for its next slot. Nothing runs twice.
#[tokio::test(start_paused = true)]
async fn slots_whose_claim_failed_in_a_store_outage_are_made_up_once_within_grace() {
    let _still = Hold::new();
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("store outage test not run: FERRY_TEST_POSTGRES_URL is not set");
        return;
    };
    let (relay, relayed) = Relay::postgres(&url).await;
    let ws = Workspace::new();
    let [graced, late, none] = ["graced", "late", "none"].map(unique_job);
    let job = |name: &str, grace: &str| {
        format!(
            r#"
[[jobs]]
name = "{name}"
schedule = "0 * * * * *"
{grace}
source = {{ type = "inline", data = "{name}" }}
writers = [{{ type = "local", path = "out/{name}-{{scheduled:%H%M}}" }}]
"#
        )
    };
    let config = ws.job_file(&format!(
        "[daemon]\nstate = \"{relayed}\"\nlease = \"3s\"\n{}{}{}",
        job(&graced, "misfire_grace = \"5m\""),
        job(&late, "misfire_grace = \"20s\""),
        job(&none, ""),
    ));
    let mut daemon = boot_at(&config, utc("2026-06-01T12:00:30Z"));
    daemon.ready().await;

    // Out of reach from before 12:01 to 12:01:50: each claim try waits for a connection
    // until the pool's timeout, so the claims of 12:01 fail at about 12:01:33.
    relay.down();
    let mut seen = Vec::new();
    for _ in 0..400 {
        daemon.advance(Duration::from_millis(200)).await;
        seen.extend(daemon.collect(Duration::from_millis(2)).await);
    }
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Started { .. })),
        "nothing starts while the store is out of reach: {seen:#?}"
    );
    relay.up();

    // The graced job's 12:01 runs once the store answers; then every job's 12:02 runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut finished = Vec::new();
    while finished.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "finished so far: {finished:#?}; events: {seen:#?}"
        );
        daemon.advance(Duration::from_millis(100)).await;
        for event in daemon.collect(Duration::from_millis(5)).await {
            if let Event::Finished(report) = &event {
                assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
                finished.push((report.job.clone(), utc(&report.slot)));
            }
            seen.push(event);
        }
    }
    let at = |hhmm: &str| utc(&format!("2026-06-01T{hhmm}:00Z"));
    assert_eq!(finished[0], (graced.clone(), at("12:01")), "{finished:#?}");
    let mut at_12_02: Vec<&str> = finished[1..]
        .iter()
        .map(|(job, slot)| {
            assert_eq!(*slot, at("12:02"), "{finished:#?}");
            job.as_str()
        })
        .collect();
    at_12_02.sort_unstable();
    let mut all = vec![graced.as_str(), late.as_str(), none.as_str()];
    all.sort_unstable();
    assert_eq!(at_12_02, all);
    daemon.stop().await;

    // In the store: the graced job's two runs, and one for each of the others.
    let store = Store::open(&url, ws.path()).await.expect("open the store");
    for (name, runs) in [(&graced, 2), (&late, 1), (&none, 1)] {
        let history = store.history(Some(name), 10).await.expect("history");
        assert_eq!(history.len(), runs, "{name}: {history:#?}");
    }
    assert!(ws.path().join(format!("out/{graced}-1201")).exists());
    assert!(!ws.path().join(format!("out/{late}-1201")).exists());
    assert!(!ws.path().join(format!("out/{none}-1201")).exists());
    relay.stop().await;
}

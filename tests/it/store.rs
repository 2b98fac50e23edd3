//! The state store's suite, run on SQLite always and on PostgreSQL when
//! `FERRY_TEST_POSTGRES_URL` names one (`.ci/run` sets it for the local server).

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use ferry::state::{Checkpoint, Claim, FIRST_EPOCH, Outcome, RunState, StateError, Store};
use serde_json::json;

use crate::support::Relay;

/// Every store to test: a fresh SQLite file, and PostgreSQL when configured.
async fn stores() -> Vec<(&'static str, Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::open("sqlite://state/ferry.db", dir.path())
        .await
        .expect("open SQLite");
    let mut out = vec![("sqlite", sqlite, dir)];
    match std::env::var("FERRY_TEST_POSTGRES_URL") {
        Ok(url) => {
            let dir = tempfile::tempdir().expect("temp dir");
            let pg = Store::open(&url, dir.path())
                .await
                .unwrap_or_else(|err| panic!("FERRY_TEST_POSTGRES_URL is set but unusable: {err}"));
            out.push(("postgres", pg, dir));
        }
        Err(_) => eprintln!("PostgreSQL store tests not run: FERRY_TEST_POSTGRES_URL is not set"),
    }
    out
}

/// A job name no other test (or earlier run on a shared database) uses.
fn unique_job(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A new run of a job named after `prefix` (and no other test's), claimed for slot 1 by
/// `owner`: the job and the run id.
async fn claimed(store: &Store, prefix: &str, owner: &str) -> (String, String) {
    let job = unique_job(prefix);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    assert!(
        store
            .claim(&claim(&job, slot(1), &run_id, owner))
            .await
            .expect("claim")
    );
    (job, run_id)
}

fn slot(n: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + n * 60, 0)
        .single()
        .expect("instant")
}

fn claim<'a>(job: &'a str, at: DateTime<Utc>, run_id: &'a str, owner: &'a str) -> Claim<'a> {
    Claim {
        job,
        slot: at,
        slot_local: "2027-01-15T08:00:00+00:00",
        run_id,
        uuid: "6f1c0f3e-0000-4000-8000-000000000000",
        owner,
        lease: Duration::from_secs(60),
        manual: false,
    }
}

#[tokio::test]
async fn a_slot_is_claimed_once() {
    for (backend, store, _dir) in stores().await {
        let job = unique_job("claim");
        let first = uuid::Uuid::new_v4().simple().to_string();
        let second = uuid::Uuid::new_v4().simple().to_string();
        assert!(
            store
                .claim(&claim(&job, slot(1), &first, "a"))
                .await
                .expect("claim"),
            "{backend}"
        );
        assert!(
            !store
                .claim(&claim(&job, slot(1), &second, "b"))
                .await
                .expect("claim"),
            "{backend}: the slot is taken"
        );
        assert!(
            store
                .claim(&claim(&job, slot(2), &second, "b"))
                .await
                .expect("claim"),
            "{backend}"
        );
        let run = store
            .run_for(&job, slot(1))
            .await
            .expect("read")
            .expect("a run");
        assert_eq!(run.run_id, first, "{backend}");
        assert_eq!(run.owner, "a");
        assert_eq!(run.state, RunState::Running);
        assert_eq!(run.attempts, 0);
        assert_eq!(run.slot, slot(1));
    }
}

#[tokio::test]
async fn a_run_records_attempts_and_its_outcome() {
    for (backend, store, _dir) in stores().await {
        let (job, run_id) = claimed(&store, "life", "a").await;
        store
            .attempt(&run_id, FIRST_EPOCH, 1, Duration::from_secs(60))
            .await
            .expect("attempt");
        store
            .attempt(&run_id, FIRST_EPOCH, 2, Duration::from_secs(60))
            .await
            .expect("attempt");
        let checkpoint = Checkpoint {
            document: json!({ "temp": "/x.partial" }),
            bytes_done: 10,
        };
        store
            .save_checkpoint(&run_id, FIRST_EPOCH, 0, &checkpoint)
            .await
            .expect("checkpoint");
        store
            .finish(
                &run_id,
                FIRST_EPOCH,
                &Outcome {
                    state: RunState::Succeeded,
                    attempts: 2,
                    bytes: Some(1234),
                    sha256: Some("abc"),
                    location: Some("/srv/out/x"),
                    error: None,
                },
            )
            .await
            .expect("finish");
        let run = store
            .run_for(&job, slot(1))
            .await
            .expect("read")
            .expect("a run");
        assert_eq!(run.state, RunState::Succeeded, "{backend}");
        assert_eq!(run.attempts, 2);
        assert_eq!(run.bytes, Some(1234));
        assert_eq!(run.sha256.as_deref(), Some("abc"));
        assert_eq!(run.location.as_deref(), Some("/srv/out/x"));
        assert!(run.finished_at.is_some());
        assert_eq!(
            store.checkpoint(&run_id, 0).await.expect("read"),
            None,
            "{backend}: checkpoints go with the finished run"
        );
        assert!(
            !store
                .unfinished()
                .await
                .expect("read")
                .iter()
                .any(|r| r.run_id == run_id),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn checkpoints_are_kept_per_writer_and_replaced() {
    for (backend, store, _dir) in stores().await {
        let (_, run_id) = claimed(&store, "checkpoints", "a").await;
        assert_eq!(store.checkpoint(&run_id, 0).await.expect("read"), None);
        let first = Checkpoint {
            document: json!({ "upload_id": "u1", "parts": [1, 2] }),
            bytes_done: 16 << 20,
        };
        let second = Checkpoint {
            document: json!({ "upload_id": "u1", "parts": [1, 2, 3] }),
            bytes_done: 24 << 20,
        };
        store
            .save_checkpoint(&run_id, FIRST_EPOCH, 0, &first)
            .await
            .expect("save");
        store
            .save_checkpoint(
                &run_id,
                FIRST_EPOCH,
                1,
                &Checkpoint {
                    document: json!("other"),
                    bytes_done: 5,
                },
            )
            .await
            .expect("save");
        store
            .save_checkpoint(&run_id, FIRST_EPOCH, 0, &second)
            .await
            .expect("replace");
        assert_eq!(
            store.checkpoint(&run_id, 0).await.expect("read"),
            Some(second),
            "{backend}"
        );
        assert_eq!(
            store
                .checkpoint(&run_id, 1)
                .await
                .expect("read")
                .map(|c| c.bytes_done),
            Some(5)
        );
    }
}

#[tokio::test]
async fn cursors_are_saved_per_job() {
    for (backend, store, _dir) in stores().await {
        let job = unique_job("cursor");
        assert_eq!(store.cursor(&job).await.expect("read"), None, "{backend}");
        store
            .set_cursor(&job, "2026-11-23T00:00:00Z/file-0042")
            .await
            .expect("set");
        store
            .set_cursor(&job, "2026-11-23T01:00:00Z/file-0043")
            .await
            .expect("replace");
        assert_eq!(
            store.cursor(&job).await.expect("read").as_deref(),
            Some("2026-11-23T01:00:00Z/file-0043"),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn an_unfinished_run_is_taken_over_only_after_its_lease() {
    for (backend, store, _dir) in stores().await {
        let (job, run_id) = claimed(&store, "lease", "dead-daemon").await;
        let unfinished = store.unfinished().await.expect("read");
        assert!(unfinished.iter().any(|r| r.run_id == run_id), "{backend}");
        assert!(
            !store
                .expired(Utc::now())
                .await
                .expect("read")
                .iter()
                .any(|r| r.run_id == run_id),
            "{backend}: a live lease is not expired"
        );
        // The lease (60 s) has not expired: nobody else may take it.
        let taken = store
            .take_over_expired(&run_id, "new-daemon", Duration::from_secs(60), Utc::now())
            .await
            .expect("take over");
        assert_eq!(taken, None, "{backend}: a live lease is respected");
        // As if two minutes passed.
        let later = Utc::now() + chrono::Duration::seconds(120);
        let epoch = store
            .take_over_expired(&run_id, "new-daemon", Duration::from_secs(60), later)
            .await
            .expect("take over");
        assert_eq!(epoch, Some(FIRST_EPOCH + 1), "{backend}: the epoch rises");
        let run = store
            .run_for(&job, slot(1))
            .await
            .expect("read")
            .expect("run");
        assert_eq!(run.owner, "new-daemon");
        assert_eq!(run.epoch, FIRST_EPOCH + 1);
        assert!(
            store
                .renew(&run_id, FIRST_EPOCH + 1, Duration::from_secs(60))
                .await
                .expect("renew")
        );
        assert!(
            !store
                .renew(&run_id, FIRST_EPOCH, Duration::from_secs(60))
                .await
                .expect("renew"),
            "{backend}: the old owner cannot renew"
        );
    }
}

/// Every write of a run's former owner is refused once another daemon took it over; the
/// new owner's go through, and the run's outcome is the new owner's.
#[tokio::test]
async fn a_former_owners_writes_are_fenced_off() {
    for (backend, store, _dir) in stores().await {
        let (job, run_id) = claimed(&store, "fence", "paused-daemon").await;
        let old = FIRST_EPOCH;
        store
            .attempt(&run_id, old, 1, Duration::from_secs(60))
            .await
            .expect("the owner's attempt");
        let saved = Checkpoint {
            document: json!({ "parts": 3 }),
            bytes_done: 300,
        };
        store
            .save_checkpoint(&run_id, old, 0, &saved)
            .await
            .expect("the owner's checkpoint");
        let later = Utc::now() + chrono::Duration::seconds(120);
        let new = store
            .take_over_expired(&run_id, "live-daemon", Duration::from_secs(60), later)
            .await
            .expect("take over")
            .expect("expired");

        let fenced = |result: Result<(), StateError>, what: &str| match result {
            Err(StateError::Fenced(id)) => assert_eq!(id, run_id, "{backend}: {what}"),
            other => panic!("{backend}: {what} of the former owner: {other:?}"),
        };
        fenced(
            store
                .attempt(&run_id, old, 2, Duration::from_secs(60))
                .await,
            "attempt",
        );
        let stale = Checkpoint {
            document: json!({ "parts": 1 }),
            bytes_done: 100,
        };
        fenced(
            store.save_checkpoint(&run_id, old, 0, &stale).await,
            "checkpoint",
        );
        fenced(
            store.save_checkpoint(&run_id, old, 1, &stale).await,
            "checkpoint of another writer",
        );
        let zombie = Outcome::failed(1, "the zombie's late outcome");
        fenced(store.finish(&run_id, old, &zombie).await, "outcome");
        assert_eq!(
            store.checkpoint(&run_id, 0).await.expect("read"),
            Some(saved.clone()),
            "{backend}: the checkpoint the new owner resumes from is intact"
        );
        assert_eq!(store.checkpoint(&run_id, 1).await.expect("read"), None);

        store
            .attempt(&run_id, new, 2, Duration::from_secs(60))
            .await
            .expect("the new owner's attempt");
        let done = Outcome {
            state: RunState::Succeeded,
            attempts: 2,
            bytes: Some(300),
            sha256: Some("abc"),
            location: Some("/out"),
            error: None,
        };
        store.finish(&run_id, new, &done).await.expect("finish");
        // A repeated finish (its first answer lost) is accepted: same owner, same epoch.
        store
            .finish(&run_id, new, &done)
            .await
            .expect("finish again");
        fenced(
            store.finish(&run_id, old, &zombie).await,
            "outcome after the end",
        );
        let run = store.run(&run_id).await.expect("read").expect("run");
        assert_eq!(run.state, RunState::Succeeded, "{backend}");
        assert_eq!(run.attempts, 2);
        assert_eq!(run.error, None);
        assert_eq!(run.owner, "live-daemon");
        let history = store.history(Some(&job), 10).await.expect("history");
        assert_eq!(history.len(), 1, "{backend}: one history row");
    }
}

#[tokio::test]
async fn history_is_newest_first_and_filtered() {
    for (backend, store, _dir) in stores().await {
        let job = unique_job("hist");
        let other = unique_job("other");
        for n in 0..5 {
            let run_id = uuid::Uuid::new_v4().simple().to_string();
            store
                .claim(&claim(&job, slot(n), &run_id, "a"))
                .await
                .expect("claim");
        }
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        store
            .claim(&claim(&other, slot(9), &run_id, "a"))
            .await
            .expect("claim");
        let runs = store.history(Some(&job), 3).await.expect("history");
        let slots: Vec<DateTime<Utc>> = runs.iter().map(|r| r.slot).collect();
        assert_eq!(slots, vec![slot(4), slot(3), slot(2)], "{backend}");
        assert!(runs.iter().all(|r| r.job == job));
        assert_eq!(store.last_slot(&job).await.expect("read"), Some(slot(4)));
        assert_eq!(
            store.last_slot(&unique_job("none")).await.expect("read"),
            None
        );
    }
}

/// Two stores (two daemons) on one database claim the same 1,000 slots at once: each slot
/// is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_claim_each_slot_exactly_once() {
    for (backend, store, dir) in stores().await {
        let second = match backend {
            "sqlite" => Store::open("sqlite://state/ferry.db", dir.path()).await,
            _ => {
                Store::open(
                    &std::env::var("FERRY_TEST_POSTGRES_URL").expect("set"),
                    dir.path(),
                )
                .await
            }
        }
        .expect("a second store on the same database");
        let job = unique_job("race");
        let contend = |store: Store, owner: &'static str| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut won = Vec::new();
                for n in 0..1000 {
                    let run_id = uuid::Uuid::new_v4().simple().to_string();
                    if store
                        .claim(&claim(&job, slot(n), &run_id, owner))
                        .await
                        .expect("claim")
                    {
                        won.push(n);
                    }
                }
                won
            })
        };
        let (a, b) = tokio::join!(contend(store.clone(), "a"), contend(second, "b"));
        let (a, b) = (a.expect("join"), b.expect("join"));
        assert_eq!(
            a.len() + b.len(),
            1000,
            "{backend}: every slot claimed once"
        );
        let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1000, "{backend}: no slot claimed twice");
        assert_eq!(
            store
                .history(Some(&job), 2000)
                .await
                .expect("history")
                .len(),
            1000
        );
        eprintln!(
            "{backend}: daemon a won {} slots, daemon b {}",
            a.len(),
            b.len()
        );
    }
}

#[tokio::test]
async fn notification_outcomes_are_kept_and_replaced() {
    for (backend, store, _dir) in stores().await {
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let failed = ferry::state::NotificationRecord {
            run_id: &run_id,
            notifier: "admin",
            sent: false,
            attempts: 3,
            error: Some("send mail via smtp:587: connection refused"),
        };
        store.record_notification(&failed).await.expect("record");
        store
            .record_notification(&ferry::state::NotificationRecord {
                notifier: "users",
                sent: true,
                attempts: 1,
                error: None,
                ..failed.clone()
            })
            .await
            .expect("record");
        let kept = store.notifications(&run_id).await.expect("read");
        assert_eq!(kept.len(), 2, "{backend}");
        assert_eq!(kept[0].notifier, "admin", "{backend}");
        assert!(!kept[0].sent, "{backend}");
        assert_eq!(kept[0].attempts, 3, "{backend}");
        assert!(kept[1].sent && kept[1].error.is_none(), "{backend}");
        // A later outcome for the same notifier replaces the earlier one.
        store
            .record_notification(&ferry::state::NotificationRecord {
                sent: true,
                attempts: 4,
                error: None,
                ..failed
            })
            .await
            .expect("record again");
        let kept = store.notifications(&run_id).await.expect("read");
        assert_eq!(kept.len(), 2, "{backend}");
        assert!(kept[0].sent && kept[0].attempts == 4, "{backend}: {kept:?}");
    }
}

/// Finished runs older than the cut-off go, with their notification records; a run still
/// going stays whatever its age. (On a shared PostgreSQL only a cut-off that deletes
/// nothing is used, so other tests' runs are left alone; the SQL is the same.)
#[tokio::test]
async fn old_finished_runs_are_pruned_and_running_ones_kept() {
    for (backend, store, _dir) in stores().await {
        let job = unique_job("prune");
        let (done, going) = (
            uuid::Uuid::new_v4().simple().to_string(),
            uuid::Uuid::new_v4().simple().to_string(),
        );
        assert!(
            store
                .claim(&claim(&job, slot(1), &done, "d"))
                .await
                .expect("claim")
        );
        assert!(
            store
                .claim(&claim(&job, slot(2), &going, "d"))
                .await
                .expect("claim")
        );
        store
            .finish(&done, FIRST_EPOCH, &Outcome::failed(1, "boom"))
            .await
            .expect("finish");
        store
            .record_notification(&ferry::state::NotificationRecord {
                run_id: &done,
                notifier: "admin",
                sent: true,
                attempts: 1,
                error: None,
            })
            .await
            .expect("record");
        let epoch = Utc.timestamp_opt(0, 0).single().expect("epoch");
        assert_eq!(store.prune(epoch).await.expect("prune"), 0, "{backend}");
        if backend != "sqlite" {
            continue;
        }
        // A daemon killed long ago never said it stopped: its row goes with the history.
        let gone = ferry::state::DaemonRecord {
            id: format!("{job}-daemon"),
            host: "db1".into(),
            pid: 1,
            version: "0".into(),
            started_at: Utc::now(),
            last_seen: Utc::now(),
            running: 0,
            stopped_at: None,
        };
        store.heartbeat(&gone).await.expect("heartbeat");
        let later = Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(store.prune(later).await.expect("prune"), 1, "{backend}");
        assert!(store.daemons(epoch).await.expect("read").is_empty());
        let left = store.history(Some(&job), 10).await.expect("history");
        assert_eq!(left.len(), 1, "{left:#?}");
        assert_eq!(left[0].run_id, going);
        assert_eq!(left[0].state, RunState::Running);
        assert!(store.notifications(&done).await.expect("read").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_made_together_are_written_together_with_the_same_answers() {
    for (backend, store, _dir) in stores().await {
        store.batch_writes();
        let jobs: Vec<String> = (0..300).map(|i| unique_job(&format!("batch{i}"))).collect();
        // Each job's slot is claimed twice at once (two daemons, say), plus once as a
        // manual run: one of the two scheduled claims wins, the manual one always does.
        let run_ids: Vec<[String; 3]> = (0..300)
            .map(|_| std::array::from_fn(|_| uuid::Uuid::new_v4().simple().to_string()))
            .collect();
        let claims = jobs.iter().zip(&run_ids).flat_map(|(job, ids)| {
            let store = store.clone();
            ids.iter().enumerate().map(move |(k, id)| {
                let store = store.clone();
                async move {
                    let mut c = claim(job, slot(1), id, "a");
                    c.manual = k == 2;
                    store.claim(&c).await.expect("claim")
                }
            })
        });
        let answers = futures::future::join_all(claims).await;
        for (i, triple) in answers.chunks(3).enumerate() {
            assert_eq!(
                u8::from(triple[0]) + u8::from(triple[1]),
                1,
                "{backend}: job {i}: exactly one scheduled claim wins: {triple:?}"
            );
            assert!(triple[2], "{backend}: job {i}: the manual claim");
        }
        let recorded = store.history(Some(&jobs[7]), 10).await.expect("history");
        assert_eq!(recorded.len(), 2, "{backend}: {recorded:#?}");
        assert_eq!(recorded.iter().filter(|r| r.manual).count(), 1);
    }
}

/// `claim_all` answers each claim in order, over more claims than one statement carries
/// (3,000): a slot that already has a run is `false`, whichever claim came first.
#[tokio::test]
async fn claims_written_all_at_once_are_answered_in_order() {
    for (backend, store, _dir) in stores().await {
        let job = unique_job("all");
        let taken = uuid::Uuid::new_v4().simple().to_string();
        assert!(
            store
                .claim(&claim(&job, slot(1), &taken, "a"))
                .await
                .expect("claim")
        );
        let run_ids: Vec<String> = (0..3100)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        // Slots 0..3100, slot 1 already taken; the last claim repeats slot 5.
        let mut claims: Vec<Claim<'_>> = run_ids[..3099]
            .iter()
            .enumerate()
            .map(|(i, id)| claim(&job, slot(i as i64), id, "b"))
            .collect();
        claims.push(claim(&job, slot(5), &run_ids[3099], "b"));
        let answers = store.claim_all(&claims).await.expect("claim all");
        assert_eq!(answers.len(), 3100, "{backend}");
        let refused: Vec<usize> = (0..answers.len()).filter(|&i| !answers[i]).collect();
        assert_eq!(refused, [1, 3099], "{backend}");
        let recorded = store.history(Some(&job), 5000).await.expect("history");
        assert_eq!(recorded.len(), 3099, "{backend}");
    }
}

/// `release_all` takes back claims of runs that never started, over more than one
/// statement's worth, and leaves a run that has started (an attempt counted) or finished.
#[tokio::test]
async fn claims_of_runs_that_never_started_are_taken_back() {
    for (backend, store, _dir) in stores().await {
        let job = unique_job("release");
        let run_ids: Vec<String> = (0..3002)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        let claims: Vec<Claim<'_>> = run_ids
            .iter()
            .enumerate()
            .map(|(i, id)| claim(&job, slot(i as i64), id, "a"))
            .collect();
        assert!(
            store
                .claim_all(&claims)
                .await
                .expect("claim")
                .iter()
                .all(|c| *c)
        );
        store
            .attempt(&run_ids[0], FIRST_EPOCH, 1, Duration::from_secs(60))
            .await
            .expect("attempt");
        store
            .finish(&run_ids[1], FIRST_EPOCH, &Outcome::failed(1, "broken"))
            .await
            .expect("finish");
        store.release_all(&run_ids).await.expect("release");
        let left: Vec<String> = store
            .history(Some(&job), 5000)
            .await
            .expect("history")
            .into_iter()
            .map(|run| run.run_id)
            .collect();
        assert_eq!(left.len(), 2, "{backend}: {left:?}");
        assert!(
            left.contains(&run_ids[0]) && left.contains(&run_ids[1]),
            "{backend}"
        );
        // A released slot can be claimed again.
        let again = uuid::Uuid::new_v4().simple().to_string();
        assert!(
            store
                .claim(&claim(&job, slot(7), &again, "b"))
                .await
                .expect("claim")
        );
    }
}

/// With the batching writer, attempts, checkpoints and outcomes of many runs at once are
/// written together, each exactly as it would be alone: every run's attempts and lease,
/// each writer's latest checkpoint, and the outcome (with its checkpoints gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_made_together_land_as_if_made_alone() {
    for (backend, store, _dir) in stores().await {
        store.batch_writes();
        let job = unique_job("together");
        let run_ids: Vec<String> = (0..400)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, run_id) in run_ids.iter().cloned().enumerate() {
            let (store, job) = (store.clone(), job.clone());
            tasks.spawn(async move {
                let id = run_id.as_str();
                assert!(store.claim(&claim(&job, slot(i as i64), id, "a")).await?);
                store
                    .attempt(id, FIRST_EPOCH, 2, Duration::from_secs(600))
                    .await?;
                for (writer, bytes_done) in [(0, 10), (1, 20), (0, 30)] {
                    let checkpoint = Checkpoint {
                        document: json!({ "at": bytes_done }),
                        bytes_done,
                    };
                    store
                        .save_checkpoint(id, FIRST_EPOCH, writer, &checkpoint)
                        .await?;
                }
                // Every other run ends; the rest stay running, their checkpoints kept.
                if i % 2 == 0 {
                    let error = format!("error {i}");
                    let outcome = Outcome {
                        state: RunState::Failed,
                        attempts: 2,
                        bytes: Some(i as u64),
                        sha256: Some("abc"),
                        location: Some(id),
                        error: Some(&error),
                    };
                    store.finish(id, FIRST_EPOCH, &outcome).await?;
                }
                Ok::<_, ferry::state::StateError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("writes");
        }
        let runs = store.history(Some(&job), 1000).await.expect("history");
        assert_eq!(runs.len(), 400, "{backend}");
        for run in &runs {
            let i = run_ids
                .iter()
                .position(|id| *id == run.run_id)
                .expect("ours");
            assert_eq!(run.attempts, 2, "{backend}");
            assert!(run.lease_until > Utc::now() + chrono::Duration::minutes(5));
            let checkpoint = store.checkpoint(&run.run_id, 0).await.expect("read");
            if i % 2 == 0 {
                assert_eq!(run.state, RunState::Failed, "{backend}");
                assert_eq!(run.bytes, Some(i as u64));
                assert_eq!(run.location.as_deref(), Some(run.run_id.as_str()));
                assert_eq!(run.error, Some(format!("error {i}")));
                assert!(run.finished_at.is_some());
                assert!(
                    checkpoint.is_none(),
                    "{backend}: checkpoints go with the outcome"
                );
            } else {
                assert_eq!(run.state, RunState::Running, "{backend}");
                assert_eq!(checkpoint.map(|c| c.bytes_done), Some(30), "{backend}");
                let other = store.checkpoint(&run.run_id, 1).await.expect("read");
                assert_eq!(other.map(|c| c.bytes_done), Some(20), "{backend}");
            }
        }
    }
}

#[tokio::test]
async fn a_pool_timeout_says_why_no_connection_came() {
    use ferry::state::StateError;
    let timed_out = || StateError::Database(sqlx::Error::PoolTimedOut);
    // A store that answers: its connections were only busy.
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::open("sqlite://ferry.db", dir.path())
        .await
        .expect("open");
    let busy = sqlite.diagnose(timed_out()).await.to_string();
    assert!(
        busy.contains("is busy: no connection came free within 30s"),
        "{busy}"
    );
    let other = sqlite
        .diagnose(StateError::Url("nope".into()))
        .await
        .to_string();
    assert!(other.contains("must be sqlite://"), "{other}");

    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("PostgreSQL part not run: FERRY_TEST_POSTGRES_URL is not set");
        return;
    };
    // The server behind a relay, which then goes away: the pool would only say it timed
    // out; the store names the server and the refusal.
    let (relay, relayed) = Relay::postgres(&url).await;
    let port = relay.port;
    let pg = Store::open(&relayed, dir.path())
        .await
        .expect("open through the relay");
    relay.stop().await;
    let refused = pg.diagnose(timed_out()).await.to_string();
    assert!(
        refused.contains(&format!("127.0.0.1:{port}")),
        "names the host and port: {refused}"
    );
    assert!(
        refused.to_lowercase().contains("refused"),
        "says the connection was refused: {refused}"
    );
    assert!(!refused.contains("pool timed out"), "{refused}");
    // The same through a store operation: the broken connection first, then the refusal.
    let job = unique_job("outage");
    let mut said = Vec::new();
    for _ in 0..3 {
        if let Err(err) = pg.with_retries("read", 1, || pg.last_slot(&job)).await {
            said.push(err.to_string());
            if said
                .last()
                .is_some_and(|s| s.to_lowercase().contains("refused"))
            {
                break;
            }
        }
    }
    let last = said.last().cloned().unwrap_or_default();
    assert!(last.to_lowercase().contains("refused"), "{said:#?}");
    assert!(last.contains(&format!("127.0.0.1:{port}")), "{said:#?}");
}

/// The status page's queries: each job's latest finished run, the latest failures.
#[tokio::test]
async fn the_latest_finished_run_of_each_job_and_the_latest_failures() {
    for (backend, store, _dir) in stores().await {
        let job = unique_job("latest");
        let other = unique_job("latest-other");
        let finish = |run_id: String, state: RunState| {
            let store = store.clone();
            async move {
                store
                    .finish(
                        &run_id,
                        FIRST_EPOCH,
                        &Outcome {
                            state,
                            attempts: 1,
                            bytes: None,
                            sha256: None,
                            location: None,
                            error: (state == RunState::Failed).then_some("boom"),
                        },
                    )
                    .await
                    .expect("finish");
            }
        };
        let mut ids = Vec::new();
        for (name, n, state) in [
            (&job, 1, Some(RunState::Failed)),
            (&job, 2, Some(RunState::Succeeded)),
            (&job, 3, None),
            (&other, 1, Some(RunState::Failed)),
        ] {
            let run_id = uuid::Uuid::new_v4().simple().to_string();
            store
                .claim(&claim(name, slot(n), &run_id, "a"))
                .await
                .expect("claim");
            if let Some(state) = state {
                finish(run_id.clone(), state).await;
            }
            ids.push(run_id);
        }
        let latest = store.latest_finished().await.expect("latest");
        let mine: Vec<(&str, DateTime<Utc>, RunState)> = latest
            .iter()
            .filter(|run| run.job == job || run.job == other)
            .map(|run| (run.run_id.as_str(), run.slot, run.state))
            .collect();
        let expected = if job < other {
            vec![
                (ids[1].as_str(), slot(2), RunState::Succeeded),
                (ids[3].as_str(), slot(1), RunState::Failed),
            ]
        } else {
            vec![
                (ids[3].as_str(), slot(1), RunState::Failed),
                (ids[1].as_str(), slot(2), RunState::Succeeded),
            ]
        };
        assert_eq!(
            mine, expected,
            "{backend}: the running slot 3 is not finished"
        );
        let failures = store.recent_failures(1000).await.expect("failures");
        let mine: Vec<(&str, Option<&str>)> = failures
            .iter()
            .filter(|run| run.job == job || run.job == other)
            .map(|run| (run.run_id.as_str(), run.error.as_deref()))
            .collect();
        assert_eq!(mine.len(), 2, "{backend}: {mine:?}");
        assert!(
            mine.iter().all(|(_, error)| *error == Some("boom")),
            "{backend}"
        );
    }
}

/// A run's notifications are written with its outcome, or not at all (a former owner's
/// refused outcome brings none); each is claimed by one sender only, and one whose sender
/// died is claimed again once its claim runs out.
#[tokio::test]
async fn notices_go_with_the_outcome_and_are_claimed_once() {
    for (backend, store, _dir) in stores().await {
        let (job, run_id) = claimed(&store, "notices", "a").await;
        // Notifier names of this test's own: a sweep claims any run's notices to them.
        let (mail, hook) = (format!("{job}-mail"), format!("{job}-hook"));
        let notices = |names: &[&str]| ferry::state::Notices {
            job: job.clone(),
            notifiers: names
                .iter()
                .map(|name| ((*name).to_owned(), "{}".to_owned()))
                .collect(),
        };
        // A former owner's outcome is refused, and its notices with it.
        let zombie = store
            .finish_and_notify(
                &run_id,
                FIRST_EPOCH + 1,
                &Outcome::failed(1, "late"),
                Some(notices(&[&mail])),
            )
            .await;
        assert!(matches!(zombie, Err(StateError::Fenced(_))), "{backend}");
        assert!(store.notices(&run_id).await.expect("read").is_empty());

        let outcome = Outcome::failed(1, "boom");
        store
            .finish_and_notify(
                &run_id,
                FIRST_EPOCH,
                &outcome,
                Some(notices(&[&mail, &hook])),
            )
            .await
            .expect("finish");
        // Written twice (the first answer lost): still one notice per notifier.
        store
            .finish_and_notify(
                &run_id,
                FIRST_EPOCH,
                &outcome,
                Some(notices(&[&mail, &hook])),
            )
            .await
            .expect("finish again");
        let states = store.notices(&run_id).await.expect("read");
        let shown: Vec<(&str, &str)> = states
            .iter()
            .map(|n| (n.notifier.as_str(), n.state.as_str()))
            .collect();
        assert_eq!(
            shown,
            [(hook.as_str(), "pending"), (mail.as_str(), "pending")],
            "{backend}"
        );

        let hold = Duration::from_secs(600);
        assert!(
            store
                .claim_notice(&run_id, &mail, "p1", hold)
                .await
                .expect("claim")
        );
        assert!(
            !store
                .claim_notice(&run_id, &mail, "p2", hold)
                .await
                .expect("claim"),
            "{backend}: claimed once"
        );
        assert!(
            !store
                .settle_notice(&format!("{run_id}/{mail}"), "p2", true, 1, None)
                .await
                .expect("settle"),
            "{backend}: only the claimant settles"
        );
        assert!(
            store
                .settle_notice(&format!("{run_id}/{mail}"), "p1", true, 1, None)
                .await
                .expect("settle")
        );
        // `hook`'s sender died after claiming it, with a claim that has run out.
        assert!(
            store
                .claim_notice(&run_id, &hook, "dead", Duration::ZERO)
                .await
                .expect("claim")
        );
        std::thread::sleep(Duration::from_millis(5));
        let names = vec![hook.clone(), mail.clone()];
        let left = store
            .claim_left_notices("p3", &names, Utc::now(), hold, 100)
            .await
            .expect("sweep");
        let ours: Vec<&str> = left
            .iter()
            .filter(|n| n.run_id == run_id)
            .map(|n| n.notifier.as_str())
            .collect();
        assert_eq!(ours, [hook.as_str()], "{backend}: the sent one stays sent");
        let again = store
            .claim_left_notices("p4", &names, Utc::now(), hold, 100)
            .await
            .expect("sweep");
        assert!(
            !again.iter().any(|n| n.run_id == run_id),
            "{backend}: claimed by p3 now"
        );
        assert_eq!(
            store.release_notices("p3").await.expect("release"),
            left.len() as u64
        );
        let states = store.notices(&run_id).await.expect("read");
        assert_eq!(states[0].state, "pending", "{backend}: given back");
        assert_eq!(states[1].state, "sent");
    }
}

/// Two daemons sweeping the outbox at once (PostgreSQL): every notification is claimed by
/// exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sweepers_claim_each_notice_once() {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("not run: FERRY_TEST_POSTGRES_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&url, dir.path()).await.expect("open");
    let job = unique_job("sweep");
    let notifier = format!("n-{}", uuid::Uuid::new_v4().simple());
    let mut run_ids = Vec::new();
    for i in 0..200 {
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        store
            .claim(&claim(&job, slot(i), &run_id, "a"))
            .await
            .expect("claim");
        let notices = ferry::state::Notices {
            job: job.clone(),
            notifiers: vec![(notifier.clone(), "{}".to_owned())],
        };
        store
            .finish_and_notify(
                &run_id,
                FIRST_EPOCH,
                &Outcome::failed(1, "x"),
                Some(notices),
            )
            .await
            .expect("finish");
        run_ids.push(run_id);
    }
    let later = Utc::now() + chrono::Duration::seconds(60);
    let both = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let sweep = |owner: &'static str| {
        let store = store.clone();
        let names = vec![notifier.clone()];
        let both = std::sync::Arc::clone(&both);
        tokio::spawn(async move {
            both.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = store
                    .claim_left_notices(owner, &names, later, Duration::from_secs(600), 7)
                    .await
                    .expect("sweep");
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|n| n.run_id));
                // A sender's pause between batches, so the two sweepers interleave.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let (a, b) = (sweep("daemon-a"), sweep("daemon-b"));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both swept: {} and {}",
        a.len(),
        b.len()
    );
    let mut all: Vec<String> = a.into_iter().chain(b).collect();
    all.sort();
    let total = all.len();
    all.dedup();
    assert_eq!(all.len(), total, "no notice claimed twice");
    run_ids.sort();
    assert_eq!(all, run_ids, "every notice claimed");
}

//! Retry classification, attempt counts and handler calls, on paused tokio time.
//!
//! The activity here is a scripted stand-in (pure logic: no protocol is faked); real
//! sources and writers are retried in `sources.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry::RunContext;
use ferry::activity::{Activity, Progress};
use ferry::config::ConfigDuration;
use ferry::error::{DeliveryError, ErrorKind};
use ferry::notify::Notifier;
use ferry::runner::{
    ActivityRunner, RetryConfig, RetryPolicy, RetryingActivity, RunReport, RunStatus,
};
use ferry::writer::Delivery;
use tokio::time::Instant;

use crate::support::slot;

/// Fails with the scripted kinds, in order, then succeeds (or sleeps forever if told).
struct Scripted {
    failures: Mutex<VecDeque<ErrorKind>>,
    calls: AtomicUsize,
    hang: bool,
}

impl Scripted {
    fn new(failures: &[ErrorKind]) -> Scripted {
        Scripted {
            failures: Mutex::new(failures.iter().copied().collect()),
            calls: AtomicUsize::new(0),
            hang: false,
        }
    }

    fn hanging() -> Scripted {
        Scripted {
            hang: true,
            ..Scripted::new(&[])
        }
    }
}

#[async_trait]
impl Activity for Scripted {
    async fn start(
        &self,
        ctx: &RunContext,
        _progress: &mut Progress,
    ) -> Result<Vec<Delivery>, DeliveryError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(ctx.attempt as usize, call, "the context counts attempts");
        if self.hang {
            // Stuck for good: only the attempt's timeout ends it.
            std::future::pending::<()>().await;
        }
        let next = self.failures.lock().expect("lock").pop_front();
        match next {
            Some(kind) => Err(DeliveryError::new(kind, format!("scripted {kind} failure"))),
            None => Ok(vec![]),
        }
    }
}

fn policy(max_attempts: u32, retry_on: Option<Vec<ErrorKind>>) -> RetryPolicy {
    RetryPolicy::from_config(
        &RetryConfig {
            max_attempts: Some(max_attempts),
            initial_interval: Some(ConfigDuration(Duration::from_secs(1))),
            max_interval: Some(ConfigDuration(Duration::from_secs(8))),
            multiplier: Some(2.0),
            retry_on,
            ..Default::default()
        },
        None,
    )
}

fn ctx() -> RunContext {
    RunContext::new("t", slot())
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_bounded_backoff() {
    let activity = Arc::new(Scripted::new(&[ErrorKind::Server, ErrorKind::Network]));
    let retrying = RetryingActivity::new(Arc::clone(&activity), policy(5, None));
    let started = Instant::now();
    let attempted = retrying.run(&ctx()).await;
    assert!(attempted.result.is_ok(), "{attempted:?}");
    assert_eq!(attempted.attempts, 3);
    assert_eq!(activity.calls.load(Ordering::SeqCst), 3);
    // Full jitter: each delay is at most its exponential step (1s, then 2s).
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried() {
    for kind in [
        ErrorKind::Auth,
        ErrorKind::NotFound,
        ErrorKind::Config,
        ErrorKind::Rejected,
    ] {
        let activity = Arc::new(Scripted::new(&[kind, kind]));
        let attempted = RetryingActivity::new(Arc::clone(&activity), policy(5, None))
            .run(&ctx())
            .await;
        let err = attempted.result.expect_err("fails");
        assert_eq!(err.kind(), kind);
        assert_eq!(attempted.attempts, 1, "{kind} must not be retried");
        let article = if kind == ErrorKind::Auth { "an" } else { "a" };
        assert_eq!(
            attempted.gave_up.as_deref(),
            Some(format!("{article} {kind} error is not retried").as_str())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_max_attempts() {
    let activity = Arc::new(Scripted::new(&[ErrorKind::Timeout; 10]));
    let attempted = RetryingActivity::new(Arc::clone(&activity), policy(4, None))
        .run(&ctx())
        .await;
    assert_eq!(
        attempted.result.expect_err("fails").kind(),
        ErrorKind::Timeout
    );
    assert_eq!(attempted.attempts, 4);
    assert_eq!(activity.calls.load(Ordering::SeqCst), 4);
    assert_eq!(attempted.gave_up.as_deref(), Some("all 4 attempts failed"));
}

#[tokio::test(start_paused = true)]
async fn which_kinds_are_retried_is_configurable() {
    // Only `not_found` is retried: a file that appears a little late, say.
    let only_not_found = Some(vec![ErrorKind::NotFound]);
    let activity = Arc::new(Scripted::new(&[ErrorKind::NotFound, ErrorKind::NotFound]));
    let attempted = RetryingActivity::new(Arc::clone(&activity), policy(5, only_not_found.clone()))
        .run(&ctx())
        .await;
    assert!(attempted.result.is_ok());
    assert_eq!(attempted.attempts, 3);

    let activity = Arc::new(Scripted::new(&[ErrorKind::Server]));
    let attempted = RetryingActivity::new(Arc::clone(&activity), policy(5, only_not_found))
        .run(&ctx())
        .await;
    assert_eq!(attempted.attempts, 1, "server errors are no longer retried");
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_retrying() {
    let config = RetryConfig {
        max_attempts: Some(100),
        initial_interval: Some(ConfigDuration(Duration::from_secs(10))),
        max_interval: Some(ConfigDuration(Duration::from_secs(10))),
        multiplier: Some(1.0),
        max_elapsed: Some(ConfigDuration(Duration::from_secs(30))),
        ..Default::default()
    };
    let activity = Arc::new(Scripted::new(&[ErrorKind::Server; 100]));
    let attempted = RetryingActivity::new(
        Arc::clone(&activity),
        RetryPolicy::from_config(&config, None),
    )
    .run(&ctx())
    .await;
    assert!(attempted.result.is_err());
    // Each delay is at most 10 s, so at least three retries fit in 30 s; far fewer than 100.
    assert!(
        (4..100).contains(&attempted.attempts),
        "{}",
        attempted.attempts
    );
    assert!(attempted.gave_up.expect("a reason").contains("max_elapsed"));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_attempt_is_cut_off_by_the_timeout() {
    let policy = RetryPolicy::from_config(
        &RetryConfig {
            max_attempts: Some(2),
            initial_interval: Some(ConfigDuration(Duration::from_secs(1))),
            ..Default::default()
        },
        Some(Duration::from_secs(30)),
    );
    let activity = Arc::new(Scripted::hanging());
    let started = Instant::now();
    let attempted = RetryingActivity::new(Arc::clone(&activity), policy)
        .run(&ctx())
        .await;
    let err = attempted.result.expect_err("times out");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.to_string(), "attempt timed out after 30s");
    assert_eq!(attempted.attempts, 2, "a timeout is transient");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(60) && elapsed <= Duration::from_secs(62),
        "{elapsed:?}"
    );
}

/// Records every report it is handed.
#[derive(Debug, Default)]
struct Recorder {
    name: String,
    reports: Mutex<Vec<RunReport>>,
}

impl Recorder {
    fn named(name: &str) -> Arc<Recorder> {
        Arc::new(Recorder {
            name: name.into(),
            ..Default::default()
        })
    }

    fn count(&self) -> usize {
        self.reports.lock().expect("lock").len()
    }
}

#[async_trait]
impl Notifier for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn notify(&self, report: &RunReport) -> Result<(), DeliveryError> {
        self.reports.lock().expect("lock").push(report.clone());
        Ok(())
    }
}

fn runner(
    activity: Arc<Scripted>,
    max_attempts: u32,
) -> (ActivityRunner<Arc<Scripted>>, Arc<Recorder>, Arc<Recorder>) {
    let ok = Recorder::named("ok");
    let failed = Recorder::named("failed");
    let runner = ActivityRunner::new(RetryingActivity::new(activity, policy(max_attempts, None)))
        .on_success(ok.clone())
        .on_failure(failed.clone());
    (runner, ok, failed)
}

#[tokio::test(start_paused = true)]
async fn success_handlers_are_called_once_after_retries() {
    let activity = Arc::new(Scripted::new(&[ErrorKind::Server, ErrorKind::Server]));
    let (runner, ok, failed) = runner(activity, 5);
    let report = runner.run(ctx()).await;
    assert!(runner.notifications().settle(Duration::from_secs(60)).await);
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(report.attempts, 3);
    assert_eq!(ok.count(), 1, "success handler once, not once per attempt");
    assert_eq!(
        failed.count(),
        0,
        "failed attempts that were retried are not failures"
    );
}

#[tokio::test(start_paused = true)]
async fn failure_handlers_are_called_once_after_the_last_attempt() {
    let activity = Arc::new(Scripted::new(&[ErrorKind::Server; 5]));
    let (runner, ok, failed) = runner(activity, 3);
    let report = runner.run(ctx()).await;
    assert!(runner.notifications().settle(Duration::from_secs(60)).await);
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(ok.count(), 0);
    assert_eq!(
        failed.count(),
        1,
        "failure handler once, after the last attempt"
    );
    let seen = failed.reports.lock().expect("lock")[0].clone();
    assert_eq!(seen.attempts, 3);
    let failure = seen.error.expect("carries the error");
    assert_eq!(failure.kind, ErrorKind::Server);
    assert_eq!(failure.chain, vec!["scripted server failure".to_owned()]);
    assert_eq!(failure.gave_up, "all 3 attempts failed");
}

/// A handler that fails and one that hangs do not change the outcome or stop the others.
#[derive(Debug)]
struct Broken {
    hang: bool,
}

#[async_trait]
impl Notifier for Broken {
    fn name(&self) -> &str {
        if self.hang { "hangs" } else { "fails" }
    }

    async fn notify(&self, _report: &RunReport) -> Result<(), DeliveryError> {
        if self.hang {
            // Stuck for good: only the notification's timeout ends it.
            std::future::pending::<()>().await;
        }
        Err(DeliveryError::new(ErrorKind::Network, "mail server down"))
    }
}

#[tokio::test(start_paused = true)]
async fn broken_handlers_never_change_the_outcome() {
    let activity = Arc::new(Scripted::new(&[]));
    let ok = Recorder::named("ok");
    let runner = ActivityRunner::new(RetryingActivity::new(activity, policy(1, None)))
        .on_success(Arc::new(Broken { hang: false }))
        .on_success(Arc::new(Broken { hang: true }))
        .on_success(ok.clone());
    let report = runner.run(ctx()).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    // The hanging handler is cut off by its time limit; the others were told.
    assert!(
        runner
            .notifications()
            .settle(Duration::from_secs(3600))
            .await,
        "a hanging handler is given up on"
    );
    assert_eq!(ok.count(), 1);
}

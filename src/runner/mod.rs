//! Running activities: retries ([`RetryingActivity`]) and outcomes ([`ActivityRunner`]).
//!
//! A run is attempted until it succeeds, fails with an error its policy does not retry, runs
//! out of attempts, or would start a retry past `max_elapsed`. Each attempt may be cut off
//! by a timeout. Only when the run is over does [`ActivityRunner`] tell the success or the
//! failure handlers, once, with a [`RunReport`].

mod policy;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tracing::Instrument as _;

pub use policy::{RetryConfig, RetryPolicy};

use crate::activity::{Activity, Progress};
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind, display_chain};
use crate::notify::{LogNotifier, Notifications, Notifier};
use crate::state::{Ledger, Outcome, RunState, StateError};
use crate::writer::Delivery;

pub use crate::report::{FailureReport, RunReport, RunStatus};

/// The longest wait a server's `Retry-After` gets before the next attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The end of a run's attempts.
#[derive(Debug)]
pub struct Attempted {
    /// The receipts, or the last attempt's error.
    pub result: Result<Vec<Delivery>, DeliveryError>,
    /// How many attempts were made.
    pub attempts: u32,
    /// Why no further attempt was made, when the run failed.
    pub gave_up: Option<String>,
    /// The furthest an attempt resumed into the payload from checkpoints, in bytes.
    pub resumed_from: u64,
}

/// An activity wrapped in a retry policy.
#[derive(Debug, Clone)]
pub struct RetryingActivity<A> {
    activity: A,
    policy: RetryPolicy,
}

impl<A: Activity> RetryingActivity<A> {
    /// Wraps `activity` in `policy`.
    pub fn new(activity: A, policy: RetryPolicy) -> RetryingActivity<A> {
        RetryingActivity { activity, policy }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The wrapped activity.
    pub fn activity(&self) -> &A {
        &self.activity
    }

    /// Attempts the activity for `ctx`'s run until it succeeds or the policy gives up.
    pub async fn run(&self, ctx: &RunContext) -> Attempted {
        let started = Instant::now();
        let mut ctx = ctx.clone();
        let mut progress = Progress::default();
        // A resumed run continues its count: attempts made before use up their delays.
        let mut delays = self
            .policy
            .delays()
            .skip(usize::try_from(ctx.attempt.saturating_sub(1)).unwrap_or(usize::MAX));
        loop {
            if let Some(ledger) = &ctx.ledger {
                match ledger
                    .store
                    .attempt(&ctx.run_id, ctx.tenure.epoch(), ctx.attempt, ledger.lease)
                    .await
                {
                    Ok(()) => ctx.tenure.confirm(),
                    Err(StateError::Fenced(_)) => {
                        ctx.tenure
                            .lose("its attempt was refused: another daemon took the run over");
                        return Attempted {
                            result: Err(DeliveryError::new(
                                ErrorKind::Io,
                                "the run was taken over by another daemon",
                            )),
                            attempts: ctx.attempt.saturating_sub(1),
                            gave_up: Some("the run was taken over by another daemon".into()),
                            resumed_from: progress.resumed_from,
                        };
                    }
                    Err(err) => {
                        ledger.store.count_failure();
                        tracing::warn!(error = %err, "Cannot record the attempt in the state store.");
                    }
                }
            }
            // Every line of the run from here on names this attempt (the run's span has it).
            tracing::Span::current().record("attempt", ctx.attempt);
            let result = self.attempt(&ctx, &mut progress).await;
            let metrics = ctx.ledger.as_ref().map(|ledger| &ledger.metrics);
            let err = match result {
                Ok(deliveries) => {
                    if let Some(metrics) = metrics {
                        metrics.attempt(&ctx.job, None, false);
                    }
                    return Attempted {
                        result: Ok(deliveries),
                        attempts: ctx.attempt,
                        gave_up: None,
                        resumed_from: progress.resumed_from,
                    };
                }
                Err(err) => err,
            };
            let resumed_from = progress.resumed_from;
            let stop = |err: DeliveryError, why: String| {
                if let Some(metrics) = metrics {
                    metrics.attempt(&ctx.job, Some(err.kind()), false);
                }
                Attempted {
                    result: Err(err),
                    attempts: ctx.attempt,
                    gave_up: Some(why),
                    resumed_from,
                }
            };
            if !self.policy.retries(err.kind()) {
                let kind = err.kind().as_str();
                let article = match kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    true => "an",
                    false => "a",
                };
                let why = format!("{article} {kind} error is not retried");
                return stop(err, why);
            }
            let Some(delay) = delays.next() else {
                let why = match self.policy.max_attempts {
                    1 => "max_attempts is 1: no retries".to_owned(),
                    n => format!("all {n} attempts failed"),
                };
                return stop(err, why);
            };
            // A server that says when to come back (HTTP 429 or 503 with Retry-After) is
            // waited for, up to an hour; `max_elapsed` still bounds the whole run.
            let delay = match err.retry_after() {
                Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
                None => delay,
            };
            if let Some(limit) = self.policy.max_elapsed
                && started.elapsed() + delay > limit
            {
                return stop(
                    err,
                    format!(
                        "max_elapsed ({}) would pass before the next attempt",
                        humantime::format_duration(limit)
                    ),
                );
            }
            tracing::warn!(
                attempt = ctx.attempt,
                kind = %err.kind(),
                retry_in = %humantime::format_duration(round_ms(delay)),
                error = %display_chain(&err.chain()),
                "Attempt failed; retrying."
            );
            if let Some(metrics) = metrics {
                metrics.attempt(&ctx.job, Some(err.kind()), true);
            }
            tokio::time::sleep(delay).await;
            ctx.attempt += 1;
        }
    }

    async fn attempt(
        &self,
        ctx: &RunContext,
        progress: &mut Progress,
    ) -> Result<Vec<Delivery>, DeliveryError> {
        self.activity.prepare(ctx).await?;
        let work = self.activity.start(ctx, progress);
        match self.policy.attempt_timeout {
            None => work.await,
            Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                Err(DeliveryError::new(
                    ErrorKind::Timeout,
                    format!(
                        "attempt timed out after {}",
                        humantime::format_duration(limit)
                    ),
                ))
            }),
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs an activity and tells the success or the failure handlers, once, afterwards.
#[derive(Debug, Clone)]
pub struct ActivityRunner<A> {
    activity: RetryingActivity<A>,
    on_success: Vec<Arc<dyn Notifier>>,
    on_failure: Vec<Arc<dyn Notifier>>,
    notifications: Notifications,
    /// The failure streaks of runs the store could not record, for `repeat_after`.
    unrecorded: Arc<crate::notify::repeat::Unrecorded>,
}

impl<A: Activity> ActivityRunner<A> {
    /// A runner for `activity` with no handlers but the log.
    pub fn new(activity: RetryingActivity<A>) -> ActivityRunner<A> {
        ActivityRunner {
            activity,
            on_success: Vec::new(),
            on_failure: Vec::new(),
            notifications: Notifications::default(),
            unrecorded: Arc::default(),
        }
    }

    /// Adds a handler told when a run succeeds.
    pub fn on_success(mut self, handler: Arc<dyn Notifier>) -> Self {
        self.notifications.register(&handler);
        self.on_success.push(handler);
        self
    }

    /// Adds a handler told when a run fails after its last attempt.
    pub fn on_failure(mut self, handler: Arc<dyn Notifier>) -> Self {
        self.notifications.register(&handler);
        self.on_failure.push(handler);
        self
    }

    /// The retrying activity.
    pub fn activity(&self) -> &RetryingActivity<A> {
        &self.activity
    }

    /// Sends this runner's notifications through `notifications` (shared with other jobs).
    pub fn with_notifications(mut self, notifications: Notifications) -> Self {
        for handler in self.on_success.iter().chain(&self.on_failure) {
            notifications.register(handler);
        }
        self.notifications = notifications;
        self
    }

    /// The notifications this runner sent that may still be on their way.
    pub fn notifications(&self) -> &Notifications {
        &self.notifications
    }

    /// Reports a run that could not start (`error` says why, e.g. the state store refused
    /// its claim): the failure handlers hear of it like any failed run, with no attempt
    /// made, so an operator learns of skipped work from more than a log line.
    pub async fn report_not_run(&self, ctx: &RunContext, error: &DeliveryError) -> RunReport {
        let report = RunReport {
            job: ctx.job.clone(),
            run_id: ctx.run_id.clone(),
            slot: ctx.slot.to_rfc3339(),
            status: RunStatus::Failed,
            attempts: 0,
            started_at: Utc::now(),
            duration: Duration::ZERO,
            deliveries: Vec::new(),
            resumed_from: 0,
            error: Some(FailureReport {
                kind: error.kind(),
                chain: error.chain(),
                gave_up: "the run could not be started".to_owned(),
            }),
            streak: None,
        };
        log_run(&report, &self.on_failure).await;
        let shared = Arc::new(report);
        // Not recorded: `repeat_after` holds notices back by this process's own count.
        let told = self.unrecorded.plan(&shared, &self.on_failure, Utc::now());
        self.notifications.send_each(told, None, false);
        Arc::unwrap_or_clone(shared)
    }

    /// Runs `ctx`'s run to its end, records it, and returns the report; the handlers are
    /// told in the background (see [`ActivityRunner::notifications`]), the log at once.
    pub async fn run(&self, ctx: RunContext) -> RunReport {
        let begun = Begun::now(&ctx);
        self.run_begun(ctx, begun).await
    }

    /// [`ActivityRunner::run`] for a run whose start was logged already ([`Begun::now`]):
    /// the daemon logs the start of everything due at one instant before any of it runs.
    pub async fn run_begun(&self, ctx: RunContext, begun: Begun) -> RunReport {
        let Begun {
            span,
            started_at,
            clock,
        } = begun;
        async {
            let _in_flight = ctx.ledger.as_ref().map(|l| {
                l.metrics
                    .run_started(&ctx.job, &ctx.run_id, ctx.slot.to_rfc3339())
            });
            let attempted = match &ctx.ledger {
                None => Some(self.activity.run(&ctx).await),
                Some(ledger) => tokio::select! {
                    attempted = self.activity.run(&ctx) => Some(attempted),
                    () = keep_lease(ledger, &ctx) => None,
                },
            };
            // Taken over: the checkpoints, partial files and the outcome are the new owner's.
            let attempted = match attempted {
                Some(attempted) if !ctx.tenure.is_lost() => attempted,
                _ => return lost(&ctx, started_at, clock.elapsed()),
            };
            if let Err(err) = &attempted.result {
                self.activity.activity().discard(&ctx).await;
                self.activity.activity().failed(&ctx, err).await;
            }
            let (status, deliveries, error) = match attempted.result {
                Ok(deliveries) => (RunStatus::Succeeded, deliveries, None),
                Err(err) => (
                    RunStatus::Failed,
                    Vec::new(),
                    Some(FailureReport {
                        kind: err.kind(),
                        chain: err.chain(),
                        gave_up: attempted.gave_up.unwrap_or_default(),
                    }),
                ),
            };
            let report = RunReport {
                job: ctx.job.clone(),
                run_id: ctx.run_id.clone(),
                slot: ctx.slot.to_rfc3339(),
                status,
                attempts: attempted.attempts,
                resumed_from: attempted.resumed_from,
                started_at,
                duration: clock.elapsed(),
                deliveries,
                error,
                streak: None,
            };
            let handlers = match status {
                RunStatus::Succeeded => &self.on_success,
                RunStatus::Failed | RunStatus::Lost => &self.on_failure,
            };
            let shared = Arc::new(report);
            // Who is told, and with what: failures held back by `repeat_after`, recoveries.
            let told = crate::notify::repeat::plan(
                ctx.ledger.as_ref(),
                &shared,
                &self.on_success,
                &self.on_failure,
            )
            .await;
            let report = Arc::unwrap_or_clone(shared);
            let mut outboxed = false;
            if let Some(ledger) = &ctx.ledger {
                match record(ledger, &ctx, &report, &told).await {
                    Recorded::WithNotices => outboxed = true,
                    Recorded::Alone => {}
                    Recorded::Lost => return lost(&ctx, started_at, clock.elapsed()),
                }
                self.unrecorded.end();
                ledger.metrics.run_finished(&report);
            }
            // The log line is written at once; nothing else may hold up the run's end.
            log_run(&report, handlers).await;
            self.notifications
                .send_each(told, ctx.ledger.as_ref(), outboxed);
            report
        }
        .instrument(span)
        .await
    }
}

/// Writes `report`'s line in the log, unless one of `handlers` is a `log` notifier that
/// writes it.
async fn log_run(report: &RunReport, handlers: &[Arc<dyn Notifier>]) {
    if handlers.iter().any(|handler| handler.logs_the_run()) {
        return;
    }
    if let Err(err) = LogNotifier::default().notify(report).await {
        tracing::warn!(error = %display_chain(&err.chain()), "Cannot log the run.");
    }
}

/// A run's start: its span (job, run id, slot) and the time, logged as "Run started." (or
/// "Run resumed." for a later attempt of an interrupted run).
pub struct Begun {
    span: tracing::Span,
    started_at: DateTime<Utc>,
    clock: Instant,
}

impl Begun {
    /// Logs `ctx`'s start now.
    pub fn now(ctx: &RunContext) -> Begun {
        let span = tracing::info_span!(
            "run",
            job = %ctx.job,
            run_id = %ctx.run_id,
            slot = %ctx.slot.to_rfc3339(),
            attempt = ctx.attempt,
        );
        span.in_scope(|| {
            if ctx.attempt > 1 {
                tracing::info!(attempt = ctx.attempt, "Run resumed.");
            } else {
                tracing::info!("Run started.");
            }
        });
        Begun {
            span,
            started_at: Utc::now(),
            clock: Instant::now(),
        }
    }
}

/// The report of a run this daemon gave up because another daemon took it over: not
/// recorded, not told to anyone (the new owner does both), its files left for the new owner.
fn lost(ctx: &RunContext, started_at: DateTime<Utc>, duration: Duration) -> RunReport {
    let report = RunReport {
        job: ctx.job.clone(),
        run_id: ctx.run_id.clone(),
        slot: ctx.slot.to_rfc3339(),
        status: RunStatus::Lost,
        attempts: ctx.attempt,
        started_at,
        duration,
        deliveries: Vec::new(),
        resumed_from: 0,
        error: None,
        streak: None,
    };
    if let Some(ledger) = &ctx.ledger {
        ledger.metrics.run_finished(&report);
    }
    report
}

/// Renews the run's lease at a third of its length, for as long as the run lasts (a failed
/// renewal is tried again at a twelfth). Returns when the run is lost: another daemon took
/// it over (a renewal or another write was refused), or renewals failed until five sixths
/// of the lease passed, so that this daemon stops before another may take the run over,
/// whatever the skew between their clocks up to a sixth of the lease.
async fn keep_lease(ledger: &Ledger, ctx: &RunContext) {
    let tenure = &ctx.tenure;
    let mut wait = ledger.lease / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tenure.lost() => return,
        }
        // No timeout of its own: the pool's bounds the wait, and a renewal that succeeds
        // after a long pause (the process stopped, the clock jumped) still holds the run.
        let renewed = ledger
            .store
            .renew(&ctx.run_id, tenure.epoch(), ledger.lease)
            .await;
        match renewed {
            Ok(true) => {
                tenure.confirm();
                wait = ledger.lease / 3;
            }
            Ok(false) => {
                tenure.lose("its lease renewal was refused: another daemon took the run over");
                return;
            }
            Err(err) => {
                ledger.store.count_failure();
                if tenure.since_confirmed() >= ledger.lease * 5 / 6 {
                    tenure.lose(&format!(
                        "its lease could not be renewed for {} ({err})",
                        humantime::format_duration(Duration::from_secs(
                            tenure.since_confirmed().as_secs()
                        ))
                    ));
                    return;
                }
                tracing::warn!(error = %err, "Cannot renew the run's lease; trying again.");
                wait = (ledger.lease / 12).max(Duration::from_millis(500));
            }
        }
    }
}

/// What [`record`] did.
enum Recorded {
    /// The outcome is recorded, and the notifications to `handlers` with it in the outbox.
    WithNotices,
    /// The store could not be written: the outcome stays unrecorded (the run is resumed
    /// once its lease runs out), and the handlers are told without the outbox.
    Alone,
    /// The store refused it: another daemon took the run over.
    Lost,
}

/// Writes the run's outcome to the state store, with the notifications `told` in the
/// outbox (and drops its checkpoints), in one transaction.
async fn record(
    ledger: &Ledger,
    ctx: &RunContext,
    report: &RunReport,
    told: &crate::notify::repeat::Plan,
) -> Recorded {
    let locations: Vec<&str> = report
        .deliveries
        .iter()
        .map(|d| d.location.as_str())
        .collect();
    let locations = locations.join(", ");
    let error = report.error.as_ref().map(|e| display_chain(&e.chain));
    let outcome = Outcome {
        state: match report.status {
            RunStatus::Succeeded => RunState::Succeeded,
            RunStatus::Failed | RunStatus::Lost => RunState::Failed,
        },
        attempts: report.attempts,
        bytes: (report.status == RunStatus::Succeeded).then(|| report.bytes()),
        sha256: report.deliveries.first().map(|d| d.sha256.as_str()),
        location: (!locations.is_empty()).then_some(locations.as_str()),
        error: error.as_deref(),
    };
    let epoch = ctx.tenure.epoch();
    let notifiers: Vec<(String, String)> = told
        .iter()
        .filter(|(handler, _)| handler.durable())
        .filter_map(|(handler, told)| {
            let json = serde_json::to_string(told.as_ref()).ok()?;
            Some((handler.name().to_owned(), json))
        })
        .collect();
    let notices = (!notifiers.is_empty()).then(|| crate::state::Notices {
        job: report.job.clone(),
        notifiers,
    });
    let with_notices = notices.is_some();
    let finish = || async {
        let written = ledger
            .store
            .finish_and_notify(&report.run_id, epoch, &outcome, notices.clone())
            .await;
        match written {
            Ok(()) => Ok(true),
            Err(StateError::Fenced(_)) => Ok(false),
            Err(err) => Err(err),
        }
    };
    match ledger
        .store
        .with_retries(
            "record the run's outcome",
            crate::state::STORE_TRIES,
            finish,
        )
        .await
    {
        Ok(true) if with_notices => Recorded::WithNotices,
        Ok(true) => Recorded::Alone,
        Ok(false) => {
            ctx.tenure
                .lose("its outcome was refused: another daemon took the run over");
            Recorded::Lost
        }
        Err(err) => {
            tracing::error!(
                error = %err,
                "Cannot record the run's outcome in the state store; the run stays 'running' and another daemon (or this one) resumes it once its lease runs out."
            );
            Recorded::Alone
        }
    }
}

//! Success and failure handlers ("notifiers"): who hears how a run ended.
//!
//! A [`Notifier`] is told about a finished run once, with its [`RunReport`]. Handlers never
//! change a run's outcome or hold it up: once the run is recorded,
//! the runner (`ActivityRunner`) hands the report to [`Notifications`], which calls
//! each handler in the background, bounds every try with a timeout, retries transient
//! failures with backoff, and logs (and keeps in the state store) how it went. The log
//! handler is always called; named notifiers from `[notifiers.NAME]` are called when a job
//! (or `[defaults]`) lists them in `on_success` or `on_failure`.
//!
//! Kinds: `log`, `email`, `webhook`, one file each; [`message`] holds what they say.

pub mod message;
pub mod outbox;
pub mod repeat;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable as _};
use tokio_util::task::TaskTracker;

use crate::build_env::BuildEnv;
use crate::error::{DeliveryError, ErrorKind, display_chain};
use crate::kinds::kinds;
use crate::report::RunReport;
use crate::settings::{KeyPath, Problems};
use crate::state::Ledger;

/// A handler told how a run ended.
#[async_trait]
pub trait Notifier: fmt::Debug + Send + Sync {
    /// The notifier's name, for logs.
    fn name(&self) -> &str;

    /// How many tries a notification gets in all when they fail for a reason that may pass
    /// (1: no retries).
    fn attempts(&self) -> u32 {
        1
    }

    /// The longest one try may take (its own time limits should end it sooner).
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Tells of `report`'s run, one try. An error is logged; it never fails the run.
    async fn notify(&self, report: &RunReport) -> Result<(), DeliveryError>;

    /// Whether it writes the run's line in ferry's log (a `log` notifier): the runner then
    /// leaves its own line out, so the line is not written twice.
    fn logs_the_run(&self) -> bool {
        false
    }

    /// Whether its notifications go through the store's outbox (recorded with the run's
    /// outcome, sent exactly once by whichever process claims them, never lost to a crash).
    /// A `log` notifier writes this process's log, so it is told at once instead.
    fn durable(&self) -> bool {
        true
    }

    /// How it hears of a job that keeps failing, and of its recovery.
    fn repeats(&self) -> Repeats {
        Repeats::default()
    }

    /// The longest a sender may hold a notification's claim before another may send it:
    /// every try, and the waits between them, with room to spare.
    fn claim_hold(&self) -> Duration {
        (self.timeout() + MAX_DELAY) * self.attempts().max(1) + Duration::from_secs(60)
    }
}

/// How a notifier hears of a job that keeps failing, and of its recovery (`repeat_after`,
/// `recovery`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repeats {
    /// Tell of a job's failures at most once per this long.
    pub repeat_after: Option<Duration>,
    /// Tell of the first success after failures, though the notifier hears of failures
    /// only.
    pub recovery: bool,
}

/// `repeat_after` and `recovery`, as the `email` and `webhook` kinds' settings carry them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RepeatSettings {
    /// Tell of a job's failures at most once per this long: later failures within it are
    /// counted, not told, and the first one told after it says "still failing (N times
    /// since …)". Unset: every failure is told.
    #[serde(default)]
    pub repeat_after: Option<crate::settings::ConfigDuration>,
    /// Tell of the first success after a job's failures ("recovered after N failures"),
    /// also when this notifier is listed in `on_failure` only.
    #[serde(default)]
    pub recovery: bool,
}

impl RepeatSettings {
    /// Checks the settings at `at`.
    pub fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.repeat_after.is_some_and(|d| d.get().is_zero()) {
            problems.add(at.key("repeat_after"), "must be longer than zero");
        }
    }

    /// The settings as a notifier holds them.
    pub fn get(&self) -> Repeats {
        Repeats {
            repeat_after: self.repeat_after.map(|d| d.get()),
            recovery: self.recovery,
        }
    }
}

/// The job-file settings of a notifier kind.
pub trait NotifierSettings: fmt::Debug + Send + Sync {
    /// Checks the settings without any I/O, recording problems at `at`.
    fn validate(&self, at: &KeyPath, problems: &mut Problems);

    /// Builds the notifier called `name`: reads secrets, prepares clients.
    fn build(&self, name: &str, env: &BuildEnv) -> Result<Arc<dyn Notifier>, DeliveryError>;
}

kinds! {
    /// `[notifiers.NAME]`: a named handler jobs list in `on_success` and `on_failure`.
    pub enum NotifierConfig: NotifierSettings {
        /// `type = "log"`: a line in ferry's log.
        mod log: "log" => Log(LogConfig),
        /// `type = "email"`: a mail over SMTP.
        mod email: "email" => Email(Box<EmailConfig>),
        /// `type = "webhook"`: an HTTP request.
        mod webhook: "webhook" => Webhook(Box<WebhookConfig>),
    }
}

/// Large settings structs are boxed in the kinds enum; they are still settings.
impl<T: NotifierSettings + ?Sized> NotifierSettings for Box<T> {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        (**self).validate(at, problems);
    }

    fn build(&self, name: &str, env: &BuildEnv) -> Result<Arc<dyn Notifier>, DeliveryError> {
        (**self).build(name, env)
    }
}

/// The first wait before a notification is tried again; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Notifications on their way: handler calls running in the background, so that a slow or
/// unreachable mail server never holds up a delivery. Also the handlers built for the job
/// file, by name, so that a notification left in the outbox by another process can be sent
/// ([`outbox`]).
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    tracker: TaskTracker,
    handlers: Arc<parking_lot::RwLock<std::collections::HashMap<String, Arc<dyn Notifier>>>>,
}

impl Notifications {
    /// Keeps `handler` by its name, for notifications left in the outbox (a handler built
    /// again by a reload replaces the old one).
    pub fn register(&self, handler: &Arc<dyn Notifier>) {
        self.handlers
            .write()
            .insert(handler.name().to_owned(), Arc::clone(handler));
    }

    /// The handler called `name`, if the job file has one.
    pub fn handler(&self, name: &str) -> Option<Arc<dyn Notifier>> {
        self.handlers.read().get(name).cloned()
    }

    /// The names of the handlers whose notifications go through the outbox.
    pub fn durable_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .handlers
            .read()
            .values()
            .filter(|handler| handler.durable())
            .map(|handler| handler.name().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Tells each of `handlers` about `report`'s run, in the background. With a ledger, the
    /// outcome of each is kept in the state store. `outboxed`: the run's outcome was
    /// recorded with its notifications in the outbox, so each durable handler is told only
    /// once this process has claimed its row (exactly once, whoever sends it).
    pub fn send(
        &self,
        handlers: &[Arc<dyn Notifier>],
        report: &Arc<RunReport>,
        ledger: Option<&Ledger>,
        outboxed: bool,
    ) {
        let each = handlers
            .iter()
            .map(|handler| (Arc::clone(handler), Arc::clone(report)))
            .collect();
        self.send_each(each, ledger, outboxed);
    }

    /// [`Notifications::send`], each handler told its own report (its place in the job's
    /// failures in a row: [`repeat`]).
    pub fn send_each(&self, told: repeat::Plan, ledger: Option<&Ledger>, outboxed: bool) {
        for (handler, report) in told {
            let ledger = ledger.cloned();
            let call = async move {
                let claimed = match &ledger {
                    Some(ledger) if outboxed && handler.durable() => {
                        outbox::claim(ledger, &report.run_id, handler.as_ref()).await
                    }
                    _ => None,
                };
                if claimed == Some(false) {
                    return;
                }
                let outcome = deliver(handler.as_ref(), &report).await;
                if let Some(ledger) = ledger {
                    let id =
                        claimed.map(|_| crate::state::notice_id(&report.run_id, handler.name()));
                    outbox::settle(
                        &ledger,
                        id.as_deref(),
                        &report.run_id,
                        handler.name(),
                        &outcome,
                    )
                    .await;
                }
            };
            self.spawn(call);
        }
    }

    /// Runs `call` (a notification) in the background, in the current span, counted until
    /// it ends.
    pub(crate) fn spawn(&self, call: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(tracing::Instrument::instrument(
            call,
            tracing::Span::current(),
        ));
    }

    /// Waits until every notification sent so far is done, for at most `limit`. Whether
    /// they all finished.
    pub async fn settle(&self, limit: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok();
        self.tracker.reopen();
        done
    }

    /// How many notifications are still on their way.
    pub fn pending(&self) -> usize {
        self.tracker.len()
    }
}

/// How one notification went.
#[derive(Debug)]
pub struct Delivered {
    /// Tries made.
    pub attempts: u32,
    /// Sent, or the last try's error chain on one line.
    pub result: Result<(), String>,
}

/// Tells `handler` about `report`, with its retries and time limits; logs the outcome.
pub async fn deliver(handler: &dyn Notifier, report: &RunReport) -> Delivered {
    let made = AtomicU32::new(0);
    let limit = handler.timeout();
    let once = || async {
        made.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(limit, handler.notify(report)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::new(
                ErrorKind::Timeout,
                format!("no answer within {}", humantime::format_duration(limit)),
            )),
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(FIRST_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_max_times(usize::try_from(handler.attempts().saturating_sub(1)).unwrap_or(0))
        .with_jitter();
    let result = once
        .retry(backoff)
        .when(|err: &DeliveryError| err.kind().is_transient_by_default())
        .notify(|err: &DeliveryError, wait: Duration| {
            tracing::warn!(
                notifier = handler.name(),
                error = %display_chain(&err.chain()),
                retry_in = %humantime::format_duration(Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))),
                "Notification failed; retrying."
            );
        })
        .await;
    let attempts = made.load(Ordering::Relaxed);
    match result {
        Ok(()) => {
            tracing::info!(notifier = handler.name(), attempts, "Notification sent.");
            Delivered {
                attempts,
                result: Ok(()),
            }
        }
        Err(err) => {
            let text = display_chain(&err.chain());
            tracing::warn!(
                notifier = handler.name(),
                attempts,
                kind = %err.kind(),
                error = %text,
                "Notification failed; the run's outcome stands."
            );
            Delivered {
                attempts,
                result: Err(text),
            }
        }
    }
}

//! What the daemon counts for Prometheus (`GET /metrics`, OpenMetrics text).
//!
//! One [`Metrics`] per daemon, shared through the [`Ledger`](crate::state::Ledger) every run
//! carries. Labels are bounded: job, writer and notifier names come from the job file,
//! outcomes and error kinds from fixed lists; no run id or slot is ever a label. A job's label
//! is `job_name`: Prometheus gives `job` to the scrape job and would rename ours
//! `exported_job`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::error::ErrorKind;
use crate::report::{RunReport, RunStatus};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobOutcome {
    job_name: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobKind {
    job_name: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobWriter {
    job_name: String,
    writer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierOutcome {
    notifier: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceState {
    source: String,
    state: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

struct Families {
    registry: Registry,
    live: Live,
    runs: Family<JobOutcome, Counter>,
    run_duration: Family<JobLabel, Histogram>,
    fire_lag: Histogram,
    attempts: Family<JobOutcome, Counter>,
    retries: Family<JobKind, Counter>,
    bytes: Family<JobWriter, Counter>,
    last_success: Family<JobLabel, FloatGauge>,
    interval: Family<JobLabel, FloatGauge>,
    in_flight: Gauge,
    skipped: Family<JobLabel, Counter>,
    takeovers: Family<JobLabel, Counter>,
    notifications: Family<NotifierOutcome, Counter>,
    partitions: Family<SourceState, Gauge>,
    jobs: Gauge,
}

/// The daemon's counters, gauges and histograms. Cheap to clone: clones share them.
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn duration_histogram() -> Histogram {
    // 10 ms to about 45 minutes.
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

impl Metrics {
    /// Every family registered, each empty.
    pub fn new() -> Metrics {
        Metrics::counting(Counter::default())
    }

    /// [`Metrics::new`], with `store_errors` (the state store's count of its failures,
    /// `Store::failures`) as `ferry_store_errors_total`.
    pub fn counting(store_errors: Counter) -> Metrics {
        let mut registry = Registry::with_prefix("ferry");
        let runs = Family::<JobOutcome, Counter>::default();
        registry.register(
            "runs",
            "Runs that ended, by job and outcome (succeeded, failed; lost: taken over by another daemon while this one ran it)",
            runs.clone(),
        );
        let run_duration =
            Family::<JobLabel, Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        registry.register_with_unit(
            "run_duration",
            "How long runs took from start to end, retries included",
            Unit::Seconds,
            run_duration.clone(),
        );
        // 0.5 ms to about 8 s.
        let fire_lag = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register_with_unit(
            "fire_lag",
            "How long after its scheduled time each scheduled run started",
            Unit::Seconds,
            fire_lag.clone(),
        );
        let attempts = Family::<JobOutcome, Counter>::default();
        registry.register(
            "attempts",
            "Attempts made, by job and outcome (succeeded, failed)",
            attempts.clone(),
        );
        let retries = Family::<JobKind, Counter>::default();
        registry.register(
            "retries",
            "Failed attempts that were retried, by job and the error's kind",
            retries.clone(),
        );
        let bytes = Family::<JobWriter, Counter>::default();
        registry.register_with_unit(
            "delivered",
            "Bytes delivered by successful runs, by job and writer kind",
            Unit::Bytes,
            bytes.clone(),
        );
        let last_success = Family::<JobLabel, FloatGauge>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When each job's last successful run ended (Unix time)",
            last_success.clone(),
        );
        let interval = Family::<JobLabel, FloatGauge>::default();
        registry.register_with_unit(
            "schedule_interval",
            "The gap between each enabled job's last fire time and its next (before it first fires: its next two), for alerts on overdue jobs",
            Unit::Seconds,
            interval.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("runs_in_flight", "Runs going now", in_flight.clone());
        let skipped = Family::<JobLabel, Counter>::default();
        registry.register(
            "skipped_runs",
            "Scheduled runs not started because the job's previous run was still going",
            skipped.clone(),
        );
        let takeovers = Family::<JobLabel, Counter>::default();
        registry.register(
            "takeovers",
            "Unfinished runs this daemon took over (their owner's lease ran out) and resumed",
            takeovers.clone(),
        );
        let notifications = Family::<NotifierOutcome, Counter>::default();
        registry.register(
            "notifications",
            "Notifications, by notifier and outcome (sent, failed)",
            notifications.clone(),
        );
        let partitions = Family::<SourceState, Gauge>::default();
        registry.register(
            "partitions",
            "Partitions in the registry, by source and state (ready, locked)",
            partitions.clone(),
        );
        registry.register(
            "store_errors",
            "Operations on the state store that failed",
            store_errors.clone(),
        );
        let jobs = Gauge::default();
        registry.register("jobs", "Jobs in the job file", jobs.clone());
        registry.register(
            "build",
            "The running ferry",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            families: Arc::new(Families {
                registry,
                live: Live::default(),
                runs,
                run_duration,
                fire_lag,
                attempts,
                retries,
                bytes,
                last_success,
                interval,
                in_flight,
                skipped,
                takeovers,
                notifications,
                partitions,
                jobs,
            }),
        }
    }

    /// The text Prometheus scrapes ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.families.registry);
        text
    }

    /// Run `run_id` of `job` for `slot` started; it counts as in flight, and shows in
    /// [`Metrics::live_runs`], until the guard is dropped.
    pub fn run_started(&self, job: &str, run_id: &str, slot: String) -> InFlight {
        self.families.in_flight.inc();
        let run = Arc::new(LiveRun {
            job: job.to_owned(),
            run_id: run_id.to_owned(),
            slot,
            started: Utc::now(),
            clock: std::time::Instant::now(),
            total: AtomicU64::new(UNKNOWN),
            writers: Mutex::new(Vec::new()),
        });
        self.families
            .live
            .runs
            .lock()
            .insert(run_id.to_owned(), Arc::clone(&run));
        InFlight {
            gauge: self.families.in_flight.clone(),
            live: self.families.live.clone(),
            run,
        }
    }

    /// Run `run_id`'s live progress, while it is in flight.
    pub fn live_run(&self, run_id: &str) -> Option<Arc<LiveRun>> {
        self.families.live.runs.lock().get(run_id).cloned()
    }

    /// Every run in flight, oldest first.
    pub fn live_runs(&self) -> Vec<LiveSnapshot> {
        let runs: Vec<Arc<LiveRun>> = self.families.live.runs.lock().values().cloned().collect();
        let mut out: Vec<LiveSnapshot> = runs.iter().map(|run| run.snapshot()).collect();
        out.sort_by(|a, b| a.started.cmp(&b.started).then(a.job.cmp(&b.job)));
        out
    }

    /// A scheduled run started `lag` after its slot.
    pub fn fire_lag(&self, lag: Duration) {
        self.families.fire_lag.observe(lag.as_secs_f64());
    }

    /// An attempt of `job` ended: with `failure`'s kind, and `retried` when another attempt
    /// follows.
    pub fn attempt(&self, job: &str, failure: Option<ErrorKind>, retried: bool) {
        let outcome = if failure.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.families
            .attempts
            .get_or_create(&JobOutcome {
                job_name: job.to_owned(),
                outcome,
            })
            .inc();
        if let Some(kind) = failure
            && retried
        {
            self.families
                .retries
                .get_or_create(&JobKind {
                    job_name: job.to_owned(),
                    kind: kind.as_str(),
                })
                .inc();
        }
    }

    /// A run ended as `report` says.
    pub fn run_finished(&self, report: &RunReport) {
        let f = &self.families;
        let outcome = match report.status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Lost => "lost",
        };
        let job = report.job.clone();
        f.runs
            .get_or_create(&JobOutcome {
                job_name: job.clone(),
                outcome,
            })
            .inc();
        f.run_duration
            .get_or_create(&JobLabel {
                job_name: job.clone(),
            })
            .observe(report.duration.as_secs_f64());
        for delivery in &report.deliveries {
            f.bytes
                .get_or_create(&JobWriter {
                    job_name: job.clone(),
                    writer: delivery.writer.clone(),
                })
                .inc_by(delivery.bytes);
        }
        if report.status == RunStatus::Succeeded {
            let ended =
                report.started_at + chrono::Duration::from_std(report.duration).unwrap_or_default();
            self.last_success(&job, ended);
        }
    }

    /// `job`'s last successful run ended at `at` (also read from the store at start-up).
    pub fn last_success(&self, job: &str, at: DateTime<Utc>) {
        let gauge = self.families.last_success.get_or_create(&JobLabel {
            job_name: job.to_owned(),
        });
        let seconds = at.timestamp_millis() as f64 / 1e3;
        if seconds > gauge.get() {
            gauge.set(seconds);
        }
    }

    /// `job` fires every `interval` for now; `None`: it does not fire (disabled, or no
    /// future fire time).
    pub fn schedule(&self, job: &str, interval: Option<Duration>) {
        let label = JobLabel {
            job_name: job.to_owned(),
        };
        match interval {
            Some(interval) => {
                self.families
                    .interval
                    .get_or_create(&label)
                    .set(interval.as_secs_f64());
            }
            None => {
                self.families.interval.remove(&label);
            }
        }
    }

    /// `job` left the job file: its gauges go (its counters stay, as counters do).
    pub fn forget(&self, job: &str) {
        let label = JobLabel {
            job_name: job.to_owned(),
        };
        self.families.interval.remove(&label);
        self.families.last_success.remove(&label);
    }

    /// A scheduled run of `job` was skipped: its previous run was still going.
    pub fn skipped(&self, job: &str) {
        self.families
            .skipped
            .get_or_create(&JobLabel {
                job_name: job.to_owned(),
            })
            .inc();
    }

    /// Runs going now (`ferry_runs_in_flight`).
    pub fn runs_in_flight(&self) -> u64 {
        u64::try_from(self.families.in_flight.get()).unwrap_or(0)
    }

    /// This daemon took over an unfinished run of `job` and resumes it.
    pub fn taken_over(&self, job: &str) {
        self.families
            .takeovers
            .get_or_create(&JobLabel {
                job_name: job.to_owned(),
            })
            .inc();
    }

    /// Notifier `notifier` was called, and the notification was `sent` or not.
    pub fn notification(&self, notifier: &str, sent: bool) {
        self.families
            .notifications
            .get_or_create(&NotifierOutcome {
                notifier: notifier.to_owned(),
                outcome: if sent { "sent" } else { "failed" },
            })
            .inc();
    }

    /// The registry's partitions now: `(source, locked, count)` for each pair that has any.
    pub fn partitions(&self, counts: &[(String, bool, i64)]) {
        let family = &self.families.partitions;
        family.clear();
        for (source, locked, count) in counts {
            family
                .get_or_create(&SourceState {
                    source: source.clone(),
                    state: if *locked { "locked" } else { "ready" },
                })
                .set(*count);
        }
    }

    /// The job file holds `count` jobs.
    pub fn jobs(&self, count: usize) {
        self.families
            .jobs
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// A run in flight; dropping it ends it.
pub struct InFlight {
    gauge: Gauge,
    live: Live,
    run: Arc<LiveRun>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InFlight").field(&self.run.run_id).finish()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
        self.live.runs.lock().remove(&self.run.run_id);
    }
}

/// `total` when the length is not known.
const UNKNOWN: u64 = u64::MAX;

/// The runs in flight, by run id.
#[derive(Clone, Default)]
struct Live {
    runs: Arc<Mutex<BTreeMap<String, Arc<LiveRun>>>>,
}

/// A run going now: what its writers have taken so far, for the status page and
/// `ferry trigger`'s progress bars.
pub struct LiveRun {
    job: String,
    run_id: String,
    slot: String,
    started: DateTime<Utc>,
    clock: std::time::Instant,
    total: AtomicU64,
    writers: Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl LiveRun {
    /// The payload's length, when the source says it (`None`: unknown).
    pub fn set_total(&self, total: Option<u64>) {
        self.total
            .store(total.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }

    /// The counter of the bytes writer `index` (`what`) has taken, from the start of the
    /// payload; the same one for every attempt.
    pub fn writer(&self, index: usize, what: String) -> Arc<AtomicU64> {
        let mut writers = self.writers.lock();
        while writers.len() <= index {
            writers.push((String::new(), Arc::new(AtomicU64::new(0))));
        }
        writers[index].0 = what;
        Arc::clone(&writers[index].1)
    }

    /// What it has done so far.
    pub fn snapshot(&self) -> LiveSnapshot {
        let total = self.total.load(Ordering::Relaxed);
        LiveSnapshot {
            job: self.job.clone(),
            run_id: self.run_id.clone(),
            slot: self.slot.clone(),
            started: self.started,
            elapsed_seconds: self.clock.elapsed().as_secs_f64(),
            total: (total != UNKNOWN).then_some(total),
            writers: self
                .writers
                .lock()
                .iter()
                .filter(|(what, _)| !what.is_empty())
                .map(|(what, bytes)| (what.clone(), bytes.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// A run in flight at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSnapshot {
    /// The job.
    pub job: String,
    /// The run's id.
    pub run_id: String,
    /// Its slot, in the job's zone (RFC 3339).
    pub slot: String,
    /// When it started.
    pub started: DateTime<Utc>,
    /// How long it has been going, in seconds.
    pub elapsed_seconds: f64,
    /// The payload's length, when known.
    pub total: Option<u64>,
    /// Each writer (described) and the bytes it has taken.
    pub writers: Vec<(String, u64)>,
}

impl LiveSnapshot {
    /// The slowest writer's bytes.
    pub fn done(&self) -> u64 {
        self.writers
            .iter()
            .map(|(_, bytes)| *bytes)
            .min()
            .unwrap_or(0)
    }

    /// Bytes per second so far (of the slowest writer).
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed_seconds;
        if seconds > 0.0 {
            self.done() as f64 / seconds
        } else {
            0.0
        }
    }

    /// How long the rest should take at [`LiveSnapshot::rate`], when the length is known.
    pub fn eta(&self) -> Option<Duration> {
        let left = self.total?.saturating_sub(self.done());
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_prometheus_naming() {
        let metrics = Metrics::new();
        metrics.attempt("daily", Some(ErrorKind::Network), true);
        metrics.attempt("daily", None, false);
        metrics.fire_lag(Duration::from_millis(3));
        let text = metrics.encode();
        assert!(
            text.contains("ferry_attempts_total{job_name=\"daily\",outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_retries_total{job_name=\"daily\",kind=\"network\"} 1"),
            "{text}"
        );
        assert!(text.contains("ferry_fire_lag_seconds_count 1"), "{text}");
        assert!(text.contains("ferry_build_info{version="), "{text}");
        assert!(text.contains("# TYPE ferry_attempts counter"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn in_flight_counts_down_when_the_run_ends() {
        let metrics = Metrics::new();
        let first = metrics.run_started("a", "run-1", String::new());
        let second = metrics.run_started("b", "run-2", String::new());
        assert_eq!(metrics.live_runs().len(), 2);
        assert!(metrics.encode().contains("ferry_runs_in_flight 2"));
        drop(first);
        drop(second);
        assert!(metrics.encode().contains("ferry_runs_in_flight 0"));
        assert!(metrics.live_runs().is_empty());
    }

    #[test]
    fn a_last_success_never_goes_back_in_time() {
        let metrics = Metrics::new();
        let later = DateTime::from_timestamp(2_000_000_000, 0).unwrap_or_default();
        let earlier = DateTime::from_timestamp(1_000_000_000, 0).unwrap_or_default();
        metrics.last_success("daily", later);
        metrics.last_success("daily", earlier);
        assert!(
            metrics
                .encode()
                .contains("ferry_last_success_timestamp_seconds{job_name=\"daily\"} 2000000000"),
            "{}",
            metrics.encode()
        );
    }
}

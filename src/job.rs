//! Jobs: a checked job configuration turned into something that runs.
//!
//! [`Job::build`] is where I/O is allowed: secrets are read and clients prepared. A job is
//! its schedule plus an [`ActivityRunner`] around a [`RetryingActivity`] around a
//! [`DeliveryActivity`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use chrono_tz::Tz;

use crate::activity::{Activity as _, DeliveryActivity};
pub use crate::build_env::BuildEnv;
use crate::config::{Config, ConfigDuration, JobConfig, Overlap};
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::notify::{Notifications, Notifier};
use crate::runner::{ActivityRunner, RetryPolicy, RetryingActivity, RunReport};
use crate::schedule::{Schedule, parse_timezone};
use crate::state::{Claim, Ledger, Outcome, OwnedClaim, RunRecord, StateError};

/// How many times a slot's claim is tried before the run is reported as not started.
const CLAIM_TRIES: usize = 3;

/// How long one attempt may take when neither the job nor `[defaults]` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A runnable job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's name.
    pub name: String,
    /// When it fires.
    pub schedule: Schedule,
    /// Whether it is scheduled.
    pub enabled: bool,
    /// Whether a firing may start while a run is going.
    pub overlap: Overlap,
    /// The longest random delay before a scheduled run starts.
    pub jitter: Option<Duration>,
    /// How long after a missed slot a catch-up run is still made at start-up.
    pub misfire_grace: Option<Duration>,
    /// What it does.
    pub runner: ActivityRunner<DeliveryActivity>,
}

impl Job {
    /// Builds `job` of `config`: its source, writers, retry policy and handlers, whose
    /// notifications go out through `notifications`.
    pub fn build(
        config: &Config,
        job: &JobConfig,
        env: &BuildEnv,
        notifications: &Notifications,
    ) -> Result<Job, DeliveryError> {
        let in_job = |err: DeliveryError| err.context(format_args!("job {:?}", job.name));
        let timezone_name = job.timezone.as_deref().unwrap_or(&config.daemon.timezone);
        let timezone = parse_timezone(timezone_name)
            .map_err(|msg| in_job(DeliveryError::new(ErrorKind::Config, msg)))?;
        let schedule = Schedule::parse(&job.schedule, timezone)
            .map_err(|msg| in_job(DeliveryError::new(ErrorKind::Config, msg)))?;

        let source = job.source.settings().build(env).map_err(in_job)?;
        let writers = job
            .writers
            .iter()
            .map(|writer| writer.settings().build(env))
            .collect::<Result<Vec<_>, _>>()
            .map_err(in_job)?;
        let marker = match &job.marker {
            None => None,
            Some(marker) => {
                let mut writers = Vec::with_capacity(job.writers.len());
                for writer in &job.writers {
                    let settings = writer.settings().marker(marker.name()).ok_or_else(|| {
                        in_job(DeliveryError::new(
                            ErrorKind::Config,
                            format!(
                                "a {} writer cannot write a completion marker",
                                writer.kind()
                            ),
                        ))
                    })?;
                    writers.push(settings.build(env).map_err(in_job)?);
                }
                Some(crate::gate::Marker {
                    format: marker.format(),
                    writers,
                })
            }
        };
        let gate = crate::gate::Gate::build(
            &job.name,
            &schedule,
            job.partition.as_ref(),
            &job.requires,
            marker,
            env,
        )
        .map_err(in_job)?;
        let checksum_files = job
            .writers
            .iter()
            .map(|writer| match writer.settings().checksum_file() {
                false => Ok(None),
                true => match writer.settings().checksum_sidecar() {
                    Some(sidecar) => sidecar.build(env).map(Some),
                    None => Err(DeliveryError::new(
                        ErrorKind::Config,
                        format!("a {} writer cannot write a checksum file", writer.kind()),
                    )),
                },
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(in_job)?;
        let encryption = match &job.pgp {
            Some(pgp) => Some(Arc::new(pgp.build(&env.base_dir).map_err(in_job)?)),
            None => None,
        };
        let activity = DeliveryActivity::new(source, writers)
            .with_checksum_files(checksum_files)
            .with_transform(job.transform)
            .with_encryption(encryption)
            .with_rate_limit(job.rate_limit.map(|rate| rate.0))
            .with_gate(gate);

        let retry = job
            .retry
            .clone()
            .unwrap_or_default()
            .or(&config.defaults.retry);
        // An attempt never runs unbounded: a stuck server or program ends it eventually.
        let timeout = Some(
            job.timeout
                .or(config.defaults.timeout)
                .map_or(DEFAULT_TIMEOUT, ConfigDuration::get),
        );
        let policy = RetryPolicy::from_config(&retry, timeout);

        let mut built: BTreeMap<&str, Arc<dyn Notifier>> = BTreeMap::new();
        let mut notifier = |name: &str| -> Result<Arc<dyn Notifier>, DeliveryError> {
            if let Some(existing) = built.get(name) {
                return Ok(Arc::clone(existing));
            }
            let (key, settings) = config.notifiers.get_key_value(name).ok_or_else(|| {
                DeliveryError::new(ErrorKind::Config, format!("no notifier named {name:?}"))
            })?;
            let notifier = settings.settings().build(key, env)?;
            built.insert(key, Arc::clone(&notifier));
            Ok(notifier)
        };
        let mut runner = ActivityRunner::new(RetryingActivity::new(activity, policy))
            .with_notifications(notifications.clone());
        for name in config.on_success(job) {
            runner = runner.on_success(notifier(name).map_err(in_job)?);
        }
        for name in config.on_failure(job) {
            runner = runner.on_failure(notifier(name).map_err(in_job)?);
        }
        Ok(Job {
            name: job.name.clone(),
            schedule,
            enabled: job.enabled,
            overlap: job.overlap,
            jitter: job.jitter.map(ConfigDuration::get),
            misfire_grace: job.misfire_grace.map(ConfigDuration::get),
            runner,
        })
    }

    /// The current second in the job's time zone: the slot of a run triggered by hand.
    pub fn now_slot(&self) -> DateTime<Tz> {
        Utc::now()
            .trunc_subsecs(0)
            .with_timezone(&self.schedule.timezone())
    }

    /// Builds every job of `config`, their notifications sent through `notifications`; the
    /// first failure stops (a daemon runs all or nothing).
    pub fn build_all(
        config: &Config,
        notifications: &Notifications,
    ) -> Result<Vec<Job>, DeliveryError> {
        let env = BuildEnv::new(config.base_dir.clone())?;
        config
            .jobs
            .iter()
            .map(|job| Job::build(config, job, &env, notifications))
            .collect()
    }

    /// Runs the job for `slot` to its end (all attempts, then the handlers), with no record.
    pub async fn run(&self, slot: DateTime<Tz>) -> RunReport {
        self.runner.run(RunContext::new(&self.name, slot)).await
    }

    /// Claims `slot` in the store and runs it, recorded; `None` when the slot already has a
    /// run (here or in another daemon).
    pub async fn run_claimed(
        &self,
        ledger: &Ledger,
        slot: DateTime<Tz>,
    ) -> Result<Option<RunReport>, StateError> {
        match self.claim(ledger, slot, false).await? {
            Some(ctx) => Ok(Some(self.runner.run(ctx).await)),
            None => Ok(None),
        }
    }

    /// Claims `slot` in the store for a new run; its context, or `None` when the slot
    /// already has a scheduled run (here or in another daemon). A `manual` run (`ferry
    /// trigger`, `ferry backfill`) has an identity of its own and is always claimed. Run it
    /// with `runner.run`.
    pub async fn claim(
        &self,
        ledger: &Ledger,
        slot: DateTime<Tz>,
        manual: bool,
    ) -> Result<Option<RunContext>, StateError> {
        let run = self.new_run(ledger, slot, manual);
        let claim = run.claim.borrowed();
        // A few quick tries: a run waits seconds for a busy store, not minutes. (A claim
        // whose answer was lost reads as "taken" on the next try: the row is ours, still
        // `running`, and is resumed like any interrupted run.)
        let claimed = ledger
            .store
            .with_retries("claim the slot", CLAIM_TRIES, || ledger.store.claim(&claim))
            .await;
        match claimed {
            Ok(claimed) => Ok(claimed.then_some(run.ctx)),
            Err(err) => {
                self.not_claimed(&run, &err).await;
                Err(err)
            }
        }
    }

    /// Claims every one of `runs` in one go (one statement for up to 3,000), with the same
    /// retries as [`Job::claim`]: for each, whether it was claimed. When the store fails,
    /// each run's job reports its run as not started and the error is returned.
    pub async fn claim_all(
        ledger: &Ledger,
        runs: &[(std::sync::Arc<Job>, NewRun)],
    ) -> Result<Vec<bool>, StateError> {
        let claims: Vec<Claim<'_>> = runs.iter().map(|(_, run)| run.claim.borrowed()).collect();
        let claimed = ledger
            .store
            .with_retries("claim the slots", CLAIM_TRIES, || {
                ledger.store.claim_all(&claims)
            })
            .await;
        if let Err(err) = &claimed {
            for (job, run) in runs {
                job.not_claimed(run, err).await;
            }
        }
        claimed
    }

    /// A new run of this job for `slot`, not claimed yet.
    pub fn new_run(&self, ledger: &Ledger, slot: DateTime<Tz>, manual: bool) -> NewRun {
        let ctx = RunContext::new(&self.name, slot).with_ledger(ledger.clone());
        let claim = OwnedClaim::of(&Claim {
            job: &self.name,
            slot: slot.with_timezone(&Utc),
            slot_local: &slot.to_rfc3339(),
            run_id: &ctx.run_id,
            uuid: &ctx.uuid.to_string(),
            owner: &ledger.owner,
            lease: ledger.lease,
            manual,
        });
        NewRun { ctx, claim }
    }

    /// Logs and reports (to the failure handlers) that `run` was not started because the
    /// store could not record it.
    async fn not_claimed(&self, run: &NewRun, err: &StateError) {
        // The daemon makes a scheduled slot up once the store answers, within the grace.
        let later = match self.misfire_grace {
            Some(grace) if !run.claim.borrowed().manual => format!(
                " (it runs once the store answers, if that is within misfire_grace, {})",
                humantime::format_duration(grace)
            ),
            _ => String::new(),
        };
        let failure = DeliveryError::new(
            ErrorKind::Io,
            format!(
                "the state store could not record the run, so it was not started{later}: {err}"
            ),
        );
        tracing::error!(job = %self.name, slot = %run.ctx.slot.to_rfc3339(), error = %err, "Cannot claim the slot; not running it now.");
        self.runner.report_not_run(&run.ctx, &failure).await;
    }

    /// Closes `ctx`'s run after it was stopped before its end (its future dropped: the
    /// attempt cancelled, its program killed): removes what its attempts left for a resume
    /// and records it as failed, saying `why`, so that nothing resumes it later.
    pub async fn abandon(&self, ctx: &RunContext, why: &str) -> Result<(), StateError> {
        self.runner.activity().activity().discard(ctx).await;
        if let Some(ledger) = &ctx.ledger {
            let attempts = ledger
                .store
                .run(&ctx.run_id)
                .await?
                .map_or(0, |run| run.attempts);
            ledger
                .store
                .finish(
                    &ctx.run_id,
                    ctx.tenure.epoch(),
                    &Outcome::failed(attempts, why),
                )
                .await?;
        }
        Ok(())
    }

    /// Resumes `record`, a run of this job left unfinished and taken over (its `epoch` the
    /// take-over's), from its checkpoints: same run id, slot and `{uuid}`, its attempts
    /// counted on. A run whose attempts are used up is recorded as failed instead.
    pub async fn resume(
        &self,
        ledger: &Ledger,
        record: &RunRecord,
    ) -> Result<Option<RunReport>, StateError> {
        let policy = self.runner.activity().policy();
        if record.attempts >= policy.max_attempts {
            let error = format!(
                "interrupted during its last attempt ({} of {})",
                record.attempts, policy.max_attempts
            );
            tracing::warn!(job = %self.name, run_id = %record.run_id, %error, "Not resuming the run.");
            ledger
                .store
                .finish(
                    &record.run_id,
                    record.epoch,
                    &Outcome::failed(record.attempts, &error),
                )
                .await?;
            return Ok(None);
        }
        let slot = record.slot.with_timezone(&self.schedule.timezone());
        let ctx = RunContext {
            job: self.name.clone(),
            run_id: record.run_id.clone(),
            uuid: record.uuid.parse().unwrap_or_else(|_| uuid::Uuid::new_v4()),
            slot,
            attempt: record.attempts + 1,
            ledger: Some(ledger.clone()),
            tenure: crate::state::Tenure::new(record.epoch),
            file: None,
        };
        Ok(Some(self.runner.run(ctx).await))
    }
}

/// A run about to be claimed: its context and what the store is to record for it.
#[derive(Debug)]
pub struct NewRun {
    /// The run's context, handed to the runner once claimed.
    pub ctx: RunContext,
    /// Its claim.
    pub claim: OwnedClaim,
}

//! The daemon: jobs armed on their schedules, reloads, and a graceful shutdown.
//!
//! [`run`] loads the job file, builds every job, arms each enabled one, tells systemd it is
//! ready, then serves three kinds of event from one loop that owns all state:
//!
//! * a firing: the job's next slot is armed at once, then a run is started for this slot
//!   (or skipped, with a warning, while the previous one is still going); the runs of every
//!   job due at that instant are claimed in one statement and logged as started before any
//!   of them runs;
//! * [`Control::Reload`] (SIGHUP): the file is read and checked again; a bad file, or a job
//!   that cannot be built, changes nothing and is logged. Otherwise jobs are added, removed
//!   and replaced; a job whose schedule, time zone and `enabled` did not change keeps its
//!   armed firing (and gets freshly read secrets for its next run);
//! * [`Control::Shutdown`] (SIGTERM, SIGINT): nothing new fires; running deliveries get
//!   `shutdown_timeout` to finish and are cancelled after it (their temporary files removed,
//!   their programs killed).
//!
//! The daemon owns the lifecycle only: when slots are, how they are timed and what a firing
//! does when a run is still going or slots were missed are [`crate::schedule`]'s (its
//! [`Schedule`](crate::schedule::Schedule), [`Timer`] and policies); who may take over an
//! unfinished run is [`crate::state`]'s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigErrors};
use crate::error::{DeliveryError, display_chain};
use crate::job::{Job, NewRun};
use crate::notify::Notifications;
use crate::report::RunReport;
use crate::runner::Begun;
use crate::schedule::policy::UnclaimedSlots;
use crate::schedule::timer::sleep_until;
use crate::schedule::{Clock, Misfire, Overlap, Running, Timer, Unclaimed};
use crate::state::{Backend, Ledger, Outcome, StateError, Store, owner_id};

/// What the daemon is asked to do from outside (signals, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the job file and apply it if it is valid (SIGHUP).
    Reload,
    /// Stop firing, let running deliveries finish within `shutdown_timeout`, exit (SIGTERM,
    /// SIGINT).
    Shutdown,
    /// Stop now: cancel running deliveries at once (a second SIGTERM or SIGINT).
    ShutdownNow,
}

/// What the daemon did, for tests and tools that watch it.
#[derive(Debug, Clone)]
pub enum Event {
    /// The HTTP API listens (`[api] listen`), on this address.
    Listening {
        /// The address (the port chosen, when `listen` asked for port 0).
        address: std::net::SocketAddr,
    },
    /// Every enabled job is armed; the daemon is ready.
    Ready {
        /// Jobs armed.
        armed: usize,
        /// This daemon's id in the store: the owner of its runs, its row in the daemon
        /// registry.
        owner: String,
    },
    /// A reload was applied.
    Reloaded {
        /// Jobs that are new.
        added: Vec<String>,
        /// Jobs that are gone.
        removed: Vec<String>,
        /// Jobs whose schedule, time zone or `enabled` changed: armed again.
        rearmed: Vec<String>,
        /// Jobs that kept their armed firing.
        kept: Vec<String>,
    },
    /// A reload was refused; the old jobs keep running.
    ReloadRejected {
        /// Every problem, one per line.
        errors: String,
    },
    /// A firing was skipped because the job's previous run was still going.
    Skipped {
        /// The job.
        job: String,
        /// The slot that was skipped.
        slot: DateTime<Tz>,
    },
    /// A scheduled run is starting: its slot (and jitter) came and `overlap` let it run.
    Started {
        /// The job.
        job: String,
        /// The run's slot.
        slot: DateTime<Tz>,
    },
    /// A run finished (successfully or not).
    Finished(Box<RunReport>),
    /// Shutdown is complete.
    Stopped {
        /// Runs cancelled because the shutdown deadline passed.
        cancelled: usize,
    },
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The job file is invalid (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A job could not be built, e.g. a secret is missing (exit code 1).
    #[error("{}", display_chain(&.0.chain()))]
    Build(DeliveryError),
    /// The state store could not be opened (exit code 1).
    #[error("{0}")]
    State(#[from] StateError),
}

/// Maps SIGHUP to [`Control::Reload`] and SIGTERM/SIGINT to [`Control::Shutdown`] (a second
/// one to [`Control::ShutdownNow`]).
pub fn signals() -> std::io::Result<mpsc::Receiver<Control>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let control = tokio::select! {
                Some(()) = hup.recv() => Control::Reload,
                Some(()) = term.recv() => if stopping { Control::ShutdownNow } else { Control::Shutdown },
                Some(()) = int.recv() => if stopping { Control::ShutdownNow } else { Control::Shutdown },
                else => break,
            };
            stopping |= control != Control::Reload;
            if tx.send(control).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Runs the daemon on the job file at `path` until it is told to shut down.
///
/// `events`, when given, hears what the daemon does (tests use it). systemd is told
/// READY=1, RELOADING=1, STOPPING=1 and watchdog pings when it started the daemon.
pub async fn run(
    path: &Path,
    control: mpsc::Receiver<Control>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<(), DaemonError> {
    run_on(Clock::System, path, control, events).await
}

/// [`run`] with the schedule read off `clock`: tests run the daemon on tokio's paused clock
/// ([`Clock::tokio_from`]) and pass whole days of slots in milliseconds.
///
/// The clock decides when slots are due, what was missed and what catch-up runs; what the
/// store records (claims, leases, history times) carries the system's time, which other
/// daemons sharing the store read too.
pub async fn run_on(
    clock: Clock,
    path: &Path,
    mut control: mpsc::Receiver<Control>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<(), DaemonError> {
    let config = config::load(path)?;
    let notifications = Notifications::default();
    let jobs = Job::build_all(&config, &notifications).map_err(DaemonError::Build)?;
    let url = config
        .daemon
        .state_url(&config.base_dir)
        .map_err(DaemonError::Build)?;
    let Some(store) = open_store(url.expose(), &config.base_dir, &mut control).await? else {
        tracing::info!("Stopped while waiting for the state store.");
        return Ok(());
    };
    // Many jobs due at one instant: their claims go to the store together.
    store.batch_writes();
    let ledger = Ledger {
        metrics: crate::metrics::Metrics::counting(store.failures()),
        store,
        // Host and process, and a tag of this start: two daemons never share an id, even
        // in one process (tests) or with a process id reused after a reboot.
        owner: format!("{}/{:04x}", owner_id(), rand::rng().random::<u16>()),
        lease: config.daemon.lease.get(),
    };
    let monitor = crate::api::Monitor {
        metrics: ledger.metrics.clone(),
        ..Default::default()
    };
    let api = crate::api::start(
        &config.api,
        &config.base_dir,
        ledger.store.clone(),
        monitor.clone(),
    )
    .await
    .map_err(DaemonError::Build)?;
    let mut daemon = Daemon {
        path: path.to_path_buf(),
        clock,
        shutdown_timeout: config.daemon.shutdown_timeout.get(),
        timer: Timer::with_clock(clock).with_lead(CLAIM_AHEAD),
        armed: HashMap::new(),
        generation: 0,
        tracker: TaskTracker::new(),
        not_started: CancellationToken::new(),
        abort: CancellationToken::new(),
        events,
        ledger,
        notifications,
        keep_history: config.daemon.keep_history.get(),
        api_config: config.api.clone(),
        api,
        monitor: monitor.clone(),
        scanning: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        started: Utc::now(),
        room: config
            .daemon
            .max_running
            .map(|max| Arc::new(tokio::sync::Semaphore::new(max))),
        unclaimed: Unclaimed::default(),
        recovering: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    if let Some(api) = &daemon.api {
        daemon.emit(Event::Listening {
            address: api.address,
        });
    }
    for job in jobs {
        daemon.insert(job).await;
    }
    daemon.prune().await;
    daemon.ledger.metrics.jobs(daemon.armed.len());
    match daemon.ledger.store.last_successes().await {
        Ok(last) => {
            for (job, at) in last {
                if daemon.armed.contains_key(&job) {
                    daemon.ledger.metrics.last_success(&job, at);
                }
            }
        }
        Err(err) => {
            daemon.ledger.store.count_failure();
            tracing::warn!(error = %err, "Cannot read the last successes from the store.");
        }
    }
    daemon.resume_unfinished().await?;
    daemon.catch_up().await?;
    // Notifications left in the outbox by a process that died are sent from here.
    tokio::spawn(crate::notify::outbox::sweeper(
        daemon.ledger.clone(),
        daemon.notifications.clone(),
        daemon.not_started.clone(),
    ));
    let armed = daemon.armed.values().filter(|a| a.next.is_some()).count();
    tracing::info!(config = %path.display(), jobs = daemon.armed.len(), armed, "Ready: jobs armed.");
    systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("{armed} jobs armed")),
    ]);
    daemon.show_jobs();
    daemon
        .monitor
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    daemon.emit(Event::Ready {
        armed,
        owner: daemon.ledger.owner.clone(),
    });
    // The parsed file is not needed while serving (a reload reads the file again).
    drop(config);
    daemon.serve(control).await;
    Ok(())
}

/// Opens the store, waiting (with backoff, up to a minute between tries) while it cannot be
/// reached: a PostgreSQL that is restarting or not up yet at boot is waited for, not turned
/// into a crash loop. A store that answers but is unusable (not a database, refused
/// credentials) is an error at once. `None` when asked to stop while waiting.
async fn open_store(
    url: &str,
    base_dir: &Path,
    control: &mut mpsc::Receiver<Control>,
) -> Result<Option<Store>, DaemonError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match Store::open(url, base_dir).await {
            Ok(store) => return Ok(Some(store)),
            Err(err) if err.is_unreachable() => {
                tracing::warn!(error = %err, retry_in = ?wait, "The state store cannot be reached; waiting for it.");
                systemd(&[sd_notify::NotifyState::Status(
                    "waiting for the state store",
                )]);
            }
            Err(err) => return Err(err.into()),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            command = control.recv() => match command {
                Some(Control::Reload) => {}
                Some(Control::Shutdown | Control::ShutdownNow) | None => return Ok(None),
            },
        }
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

/// A job due at a slot, waiting for its timer.
#[derive(Debug, Clone)]
struct Fire {
    job: String,
    generation: u64,
    slot: DateTime<Tz>,
}

/// What decides when a job fires: when these change, the job is armed again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ArmKey {
    schedule: String,
    timezone: Tz,
    enabled: bool,
}

impl ArmKey {
    fn of(job: &Job) -> ArmKey {
        ArmKey {
            schedule: job.schedule.expression().to_owned(),
            timezone: job.schedule.timezone(),
            enabled: job.enabled,
        }
    }
}

/// How long before their slot runs due at the same instant are claimed, so that at the slot
/// only the starts are left to do. The store writes a thousand claims in 10–20 ms, but they
/// share the writer with the outcomes of the runs still finishing from the last second
/// (a commit of both took up to 75 ms on a busy disk).
const CLAIM_AHEAD: Duration = Duration::from_millis(250);

/// A permit for one run under `max_running`.
type Room = tokio::sync::OwnedSemaphorePermit;

/// Each job's latest slot with a run ([`Store::last_slots`]).
type LastSlots = HashMap<String, DateTime<Utc>>;

/// A run the timer released: its job, its slot, the job's running count and its waiting
/// token.
struct Due {
    job: Arc<Job>,
    slot: DateTime<Tz>,
    running: Arc<AtomicUsize>,
    waiting: CancellationToken,
}

/// A job as the daemon holds it.
struct Armed {
    job: Arc<Job>,
    key: ArmKey,
    /// Firings armed for another generation are stale and ignored.
    generation: u64,
    /// The slot armed next, if any.
    next: Option<DateTime<Tz>>,
    /// Cancelled when the job is disarmed: runs released early and still waiting for
    /// their slot do not start.
    waiting: CancellationToken,
    /// Runs of this job in progress.
    running: Arc<AtomicUsize>,
}

impl Armed {
    /// A run of this job for `slot`, with the job's running count and waiting token.
    fn due(&self, slot: DateTime<Tz>) -> Due {
        Due {
            job: Arc::clone(&self.job),
            slot,
            running: Arc::clone(&self.running),
            waiting: self.waiting.clone(),
        }
    }
}

struct Daemon {
    path: PathBuf,
    /// When slots are due (the system's wall clock, except in tests).
    clock: Clock,
    shutdown_timeout: Duration,
    /// Firings armed at their slots.
    timer: Timer<Fire>,
    armed: HashMap<String, Armed>,
    generation: u64,
    tracker: TaskTracker,
    /// Cancelled at shutdown: runs still waiting for their slot (or jitter) never start.
    not_started: CancellationToken,
    /// Cancelled when the shutdown deadline passes: running deliveries stop.
    abort: CancellationToken,
    events: Option<mpsc::UnboundedSender<Event>>,
    /// Where runs are claimed and recorded.
    ledger: Ledger,
    /// Notifications on their way, waited for at shutdown.
    notifications: Notifications,
    /// How long finished runs stay in the store.
    keep_history: Duration,
    /// `[api]` as the API was started with (a reload does not restart it).
    api_config: crate::api::ApiConfig,
    /// The HTTP API, when `[api] listen` is set.
    api: Option<crate::api::Api>,
    /// What `/readyz` and the status page read: whether every job is armed and nothing is
    /// stopping, and the jobs.
    monitor: crate::api::Monitor,
    /// Whether a look for runs whose lease ran out is under way (one at a time).
    scanning: Arc<std::sync::atomic::AtomicBool>,
    /// When this daemon started, for the daemon registry.
    started: DateTime<Utc>,
    /// A permit per run this daemon may have going (`max_running`), when limited.
    room: Option<Arc<tokio::sync::Semaphore>>,
    /// Slots whose claim failed (the store could not be reached), made up once it answers.
    unclaimed: Unclaimed,
    /// Whether a look at the store for [`Daemon::unclaimed`] is under way (one at a time).
    recovering: Arc<std::sync::atomic::AtomicBool>,
}

/// How often finished runs older than `keep_history` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How often, after claims failed, the store is asked whether it answers again.
const RECOVER_EVERY: Duration = Duration::from_secs(1);

impl Daemon {
    /// Resumes the runs a previous daemon left unfinished, from their checkpoints, when the
    /// store lets this daemon take them over ([`Store::take_over`]): with SQLite (one
    /// daemon) every unfinished run, with PostgreSQL those whose lease ran out. A run of a
    /// job this daemon does not have is closed as failed once taken over, when no other
    /// daemon may have the job ([`Daemon::orphaned`]).
    async fn resume_unfinished(&mut self) -> Result<(), StateError> {
        let store = self.ledger.store.clone();
        let left = match store.backend() {
            Backend::Sqlite => store.unfinished().await?,
            Backend::Postgres => store.expired(Utc::now()).await?,
        };
        for mut record in left {
            let known = self.armed.contains_key(&record.job);
            if !known && !self.orphaned(&record) {
                continue;
            }
            let Some(epoch) = store
                .take_over(&record.run_id, &self.ledger.owner, self.ledger.lease)
                .await?
            else {
                continue;
            };
            record.epoch = epoch;
            match known {
                true => self.resume(record),
                false => close_orphan(&store, &record).await?,
            }
        }
        Ok(())
    }

    /// Whether `record`, a run of a job this daemon does not have, has nobody else to
    /// finish it: with SQLite (one daemon) always; with PostgreSQL once its lease ran out a
    /// day ago (the daemons that shared the store with a job file that had the job are
    /// gone).
    fn orphaned(&self, record: &crate::state::RunRecord) -> bool {
        match self.ledger.store.backend() {
            Backend::Sqlite => true,
            Backend::Postgres => record.lease_until < Utc::now() - chrono::Duration::days(1),
        }
    }

    /// Resumes `record`, taken over by this daemon (its epoch the take-over's), as a tracked
    /// task.
    fn resume(&self, record: crate::state::RunRecord) {
        let Some(armed) = self.armed.get(&record.job) else {
            return;
        };
        tracing::info!(job = %record.job, run_id = %record.run_id, slot = %record.slot_local, attempts = record.attempts, previous_owner = %record.owner, "Resuming a run left unfinished.");
        self.ledger.metrics.taken_over(&record.job);
        let job = Arc::clone(&armed.job);
        let running = Arc::clone(&armed.running);
        let ledger = self.ledger.clone();
        let room = self.room.clone();
        self.track(record.job.clone(), async move {
            let _room = match room {
                Some(room) => room.acquire_owned().await.ok(),
                None => None,
            };
            // A resumed run counts as running: a firing meanwhile follows `overlap`.
            let _running = Running::enter(running, Overlap::Allow);
            match job.resume(&ledger, &record).await {
                Ok(report) => report,
                Err(err) => {
                    tracing::error!(job = %job.name, error = %err, "Cannot resume the run.");
                    None
                }
            }
        });
    }

    /// Tells the daemon registry, in the background, that this daemon is alive and how many
    /// runs it has going (`ferry cluster` lists it).
    fn heartbeat(&self) {
        let store = self.ledger.store.clone();
        let record = crate::state::DaemonRecord {
            id: self.ledger.owner.clone(),
            host: crate::host_name(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started,
            last_seen: Utc::now(),
            running: self.ledger.metrics.runs_in_flight(),
            stopped_at: None,
        };
        tokio::spawn(async move {
            if let Err(err) = store.heartbeat(&record).await {
                store.count_failure();
                tracing::debug!(error = %err, "Cannot record this daemon's heartbeat.");
            }
        });
    }

    /// Looks, in the background, for runs whose lease ran out (their daemon died, hung or
    /// lost the store) and sends them to `found`; one look at a time, so a slow store never
    /// piles them up.
    fn look_for_expired(&self, found: mpsc::Sender<Vec<crate::state::RunRecord>>) {
        use std::sync::atomic::Ordering;
        if self.scanning.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.ledger.store.clone();
        let scanning = Arc::clone(&self.scanning);
        tokio::spawn(async move {
            match store.expired(Utc::now()).await {
                Ok(runs) if !runs.is_empty() => {
                    let _ = found.send(runs).await;
                }
                Ok(_) => {}
                Err(err) => {
                    store.count_failure();
                    tracing::debug!(error = %err, "Cannot look for runs whose lease ran out.");
                }
            }
            scanning.store(false, Ordering::Release);
        });
    }

    /// Takes over each of `runs` (their leases ran out) whose job this daemon has, and
    /// resumes it from its checkpoints: another daemon may take one first, and then this
    /// one leaves it. A run of a job this daemon does not have is left to a daemon that has
    /// it.
    fn take_over_expired(
        &self,
        runs: Vec<crate::state::RunRecord>,
        taken: &mpsc::Sender<crate::state::RunRecord>,
    ) {
        // At its limit, this daemon leaves them to daemons with room.
        let room = self
            .room
            .as_ref()
            .map_or(usize::MAX, |room| room.available_permits());
        for mut record in runs.into_iter().take(room) {
            let known = self.armed.contains_key(&record.job);
            if !known && !self.orphaned(&record) {
                tracing::debug!(job = %record.job, run_id = %record.run_id, "A run's lease ran out, but its job is not in this daemon's job file; left to another daemon.");
                continue;
            }
            let store = self.ledger.store.clone();
            let owner = self.ledger.owner.clone();
            let lease = self.ledger.lease;
            let found = taken.clone();
            tokio::spawn(async move {
                match store
                    .take_over_expired(&record.run_id, &owner, lease, Utc::now())
                    .await
                {
                    Ok(Some(epoch)) if known => {
                        record.epoch = epoch;
                        let _ = found.send(record).await;
                    }
                    Ok(Some(epoch)) => {
                        record.epoch = epoch;
                        if let Err(err) = close_orphan(&store, &record).await {
                            store.count_failure();
                            tracing::warn!(error = %err, run_id = %record.run_id, "Cannot close a run whose job is gone.");
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        store.count_failure();
                        tracing::warn!(error = %err, run_id = %record.run_id, "Cannot take over a run whose lease ran out.");
                    }
                }
            });
        }
    }

    /// Gives each job whose last slot was missed within its `misfire_grace` one catch-up
    /// run, and logs what was missed outside it ([`Misfire`]).
    async fn catch_up(&mut self) -> Result<(), StateError> {
        let now = self.clock.now();
        let last_slots = self.ledger.store.last_slots().await?;
        let mut due = Vec::new();
        for (name, armed) in &self.armed {
            let job = &armed.job;
            if !job.enabled {
                continue;
            }
            let Some(last_due) = job.schedule.latest_at_or_before(now) else {
                continue;
            };
            let recorded = last_slots.get(name.as_str()).copied();
            if recorded.is_some_and(|last| last >= last_due.with_timezone(&Utc)) {
                continue;
            }
            match Misfire::decide(&job.schedule, now, job.misfire_grace, recorded) {
                Misfire::CatchUp { slot, missed } => {
                    tracing::info!(job = %name, slot = %slot.to_rfc3339(), missed, "Catching up: the missed slots coalesce into one run.");
                    due.push((name.clone(), slot));
                }
                Misfire::TooOld {
                    slot,
                    missed,
                    grace,
                } => tracing::info!(
                    job = %name,
                    slot = %slot.to_rfc3339(),
                    missed,
                    misfire_grace = %humantime::format_duration(grace),
                    "Missed slots are older than misfire_grace; not run."
                ),
                Misfire::NotMadeUp { missed } => tracing::info!(
                    job = %name,
                    missed,
                    "Slots were missed while ferry was down; no misfire_grace, so none is made up."
                ),
                Misfire::Nothing => {}
            }
        }
        for (name, slot) in due {
            if let Some(armed) = self.armed.get(&name) {
                self.start(armed.due(slot));
            }
        }
        Ok(())
    }

    /// Asks the store, in the background, for each job's latest slot with a run, and sends
    /// the answer with the failed claims it is for to `answers`; when the store still does
    /// not answer, the failed claims stay for the next try. One ask at a time.
    fn ask_again(&self, answers: mpsc::Sender<(UnclaimedSlots, LastSlots)>) {
        use std::sync::atomic::Ordering;
        if self.recovering.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.ledger.store.clone();
        let unclaimed = self.unclaimed.clone();
        let recovering = Arc::clone(&self.recovering);
        tokio::spawn(async move {
            let missed = unclaimed.take();
            match store.last_slots().await {
                Ok(last) => {
                    let _ = answers.send((missed, last)).await;
                }
                Err(err) => {
                    store.count_failure();
                    tracing::debug!(error = %err, "The state store still does not answer; slots whose claim failed wait.");
                    unclaimed.restore(missed);
                }
            }
            recovering.store(false, Ordering::Release);
        });
    }

    /// Once the store answers again: for each job whose claims failed, its latest failed
    /// slot runs once when it is within the job's `misfire_grace` and no run for it or a
    /// later slot was recorded meanwhile ([`Misfire::after_outage`]).
    fn make_up(&self, missed: UnclaimedSlots, last: &LastSlots) {
        let now = self.clock.now();
        for (name, (slot, count)) in missed {
            let Some(armed) = self.armed.get(&name) else {
                continue;
            };
            let job = &armed.job;
            if !job.enabled {
                continue;
            }
            let recorded = last.get(&name).copied();
            match Misfire::after_outage(now, job.misfire_grace, slot, count, recorded) {
                Misfire::CatchUp { slot, missed } => {
                    tracing::info!(job = %name, slot = %slot.to_rfc3339(), missed, "The state store answers again: catching up the slots it could not record, in one run.");
                    self.start(armed.due(slot));
                }
                Misfire::TooOld {
                    slot,
                    missed,
                    grace,
                } => tracing::warn!(
                    job = %name,
                    slot = %slot.to_rfc3339(),
                    missed,
                    misfire_grace = %humantime::format_duration(grace),
                    "The state store answers again, but the slots it could not record are older than misfire_grace; not run."
                ),
                Misfire::NotMadeUp { missed } => tracing::warn!(
                    job = %name,
                    missed,
                    "The state store answers again; the slots it could not record are not made up (the job has no misfire_grace)."
                ),
                Misfire::Nothing => tracing::debug!(
                    job = %name,
                    "The state store answers again; a run for the slot whose claim failed, or a later one, is recorded, so nothing is made up."
                ),
            }
        }
    }

    /// Deletes finished runs older than `keep_history` (a failure is logged: the store
    /// only grows until the next try).
    async fn prune(&self) {
        let keep = chrono::Duration::from_std(self.keep_history).unwrap_or(chrono::Duration::MAX);
        // History times are the system's, whatever the schedule's clock.
        let Some(before) = Utc::now().checked_sub_signed(keep) else {
            return;
        };
        match self.ledger.store.prune(before).await {
            Ok(0) => {}
            Ok(runs) => {
                tracing::info!(runs, keep_history = %humantime::format_duration(self.keep_history), "Old runs deleted from the store.")
            }
            Err(err) => {
                self.ledger.store.count_failure();
                tracing::warn!(error = %err, "Cannot delete old runs from the store.");
            }
        }
    }

    async fn serve(&mut self, mut control: mpsc::Receiver<Control>) {
        // Ping the watchdog at half its interval, from this loop: a stuck loop gets restarted.
        let watchdog = sd_notify::watchdog_enabled().map(|interval| interval / 2);
        let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.tick().await;
        // Runs whose lease ran out are looked for every third of the lease.
        let mut scan = tokio::time::interval(self.ledger.lease / 3);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        scan.tick().await;
        let (expired_tx, mut expired) = mpsc::channel(4);
        let (taken_tx, mut taken) = mpsc::channel(64);
        let mut recover = tokio::time::interval(RECOVER_EVERY);
        recover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (answers_tx, mut answers) = mpsc::channel(1);
        let now = loop {
            tokio::select! {
                due = self.timer.next_due() => self.fire_all(due).await,
                _ = scan.tick() => {
                    self.heartbeat();
                    self.look_for_expired(expired_tx.clone());
                }
                Some(runs) = expired.recv() => self.take_over_expired(runs, &taken_tx),
                Some(run) = taken.recv() => self.resume(run),
                _ = recover.tick(), if !self.unclaimed.is_empty() => self.ask_again(answers_tx.clone()),
                Some((missed, last)) = answers.recv() => self.make_up(missed, &last),
                command = control.recv() => match command {
                    Some(Control::Reload) => self.reload().await,
                    Some(Control::Shutdown) | None => break false,
                    Some(Control::ShutdownNow) => break true,
                },
                _ = ping.tick(), if watchdog.is_some() => systemd(&[sd_notify::NotifyState::Watchdog]),
                _ = prune.tick() => self.prune().await,
            }
        };
        self.shutdown(control, now).await;
    }

    fn emit(&self, event: Event) {
        tell(self.events.as_ref(), event);
    }

    /// Adds a job that is not armed yet, and arms it.
    async fn insert(&mut self, job: Job) {
        let name = job.name.clone();
        self.generation += 1;
        let armed = Armed {
            key: ArmKey::of(&job),
            job: Arc::new(job),
            generation: self.generation,
            next: None,
            waiting: self.not_started.child_token(),
            running: Arc::new(AtomicUsize::new(0)),
        };
        self.armed.insert(name.clone(), armed);
        self.arm(&name, self.clock.now()).await;
    }

    /// Shows the jobs armed now on the status page.
    fn show_jobs(&self) {
        let mut jobs: Vec<crate::api::status::ShownJob> = self
            .armed
            .values()
            .map(|armed| crate::api::status::ShownJob {
                name: armed.job.name.clone(),
                schedule: armed.job.schedule.clone(),
                enabled: armed.job.enabled,
            })
            .collect();
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        *self.monitor.jobs.write() = Arc::new(jobs);
    }

    /// Arms job `name` for its first slot after `after`.
    async fn arm(&mut self, name: &str, after: DateTime<Utc>) {
        let Some(armed) = self.armed.get(name) else {
            return;
        };
        let schedule = &armed.job.schedule;
        let next = schedule.next_after(after);
        // Until it first fires, the job's interval is the gap between its next two fire
        // times (after a firing, the gap from that slot to the next: see `due`).
        let interval = next.filter(|_| armed.job.enabled).and_then(|next| {
            let following = schedule.next_after(next.with_timezone(&Utc))?;
            following.signed_duration_since(next).to_std().ok()
        });
        self.ledger.metrics.schedule(name, interval);
        self.arm_slot(name, next).await;
    }

    /// Arms job `name` for `slot` (none: the schedule has no future fire time).
    async fn arm_slot(&mut self, name: &str, slot: Option<DateTime<Tz>>) {
        let Some(armed) = self.armed.get_mut(name) else {
            return;
        };
        armed.next = None;
        if !armed.job.enabled {
            return;
        }
        let Some(slot) = slot else {
            tracing::warn!(job = name, schedule = %armed.job.schedule, "The schedule has no future fire time; the job will not run.");
            return;
        };
        armed.next = Some(slot);
        let fire = Fire {
            job: name.to_owned(),
            generation: armed.generation,
            slot,
        };
        tracing::debug!(job = name, slot = %slot.to_rfc3339(), "Armed.");
        self.timer.arm(slot.with_timezone(&Utc), fire);
    }

    /// Forgets job `name`'s armed slot: the waiting firing becomes stale, and runs
    /// released early that wait for their slot never start.
    fn disarm(&mut self, name: &str) {
        if let Some(armed) = self.armed.get_mut(name) {
            armed.next = None;
            armed.waiting.cancel();
            armed.waiting = self.not_started.child_token();
        }
    }

    /// Fires everything the timer released: due now, or within [`CLAIM_AHEAD`]. Runs without
    /// jitter are claimed together, one statement per instant, before their slot; at the slot
    /// their starts are logged, and then they run: a thousand jobs due at once all start
    /// within milliseconds of their slot. Runs with jitter wait for it and claim alone.
    async fn fire_all(&mut self, due: Vec<Fire>) {
        let now = self.clock.now();
        let mut together: BTreeMap<DateTime<Utc>, Vec<(Due, Option<Room>)>> = BTreeMap::new();
        for fire in due {
            let Some(due) = self.fire(fire, now).await else {
                continue;
            };
            if due.job.jitter.is_some() {
                self.start(due);
                continue;
            }
            // At `max_running`, the run waits for room before it claims (`start`).
            let room = match &self.room {
                None => None,
                Some(room) => match Arc::clone(room).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        self.start(due);
                        continue;
                    }
                },
            };
            together
                .entry(due.slot.with_timezone(&Utc))
                .or_default()
                .push((due, room));
        }
        for (at, runs) in together {
            self.start_claimed_together(at, runs);
        }
    }

    /// Arms the slot after `fire`'s and says which run it asks for (the latest passed slot
    /// when the daemon fell behind). `None` for a stale firing (the job changed or went).
    async fn fire(&mut self, fire: Fire, now: DateTime<Utc>) -> Option<Due> {
        let armed = self.armed.get(&fire.job)?;
        if armed.generation != fire.generation || armed.next != Some(fire.slot) {
            return None;
        }
        let mut due = armed.due(fire.slot);
        let job = Arc::clone(&due.job);

        // Arm the next slot first, after this one and after now: a loop held up past later
        // slots skips them (and says so) rather than firing a burst or arming the past.
        let (next, missed) = job
            .schedule
            .after_firing(fire.slot.with_timezone(&Utc), now);
        // Held up past later slots (a suspended machine): every slot that passed is
        // skipped, this one too, and the latest, whose successor has not come, runs.
        let slot = match missed {
            0 => fire.slot,
            _ => {
                let latest = job.schedule.latest_at_or_before(now).unwrap_or(fire.slot);
                tracing::warn!(job = %fire.job, skipped_from = %fire.slot.to_rfc3339(), skipped = missed, running = %latest.to_rfc3339(), "The daemon fell behind; the slots that passed are skipped and the latest runs.");
                latest
            }
        };
        self.arm_slot(&fire.job, next).await;
        // The gap to compare a job's last success with: over a weekend for a weekday job.
        let interval = next.and_then(|next| next.signed_duration_since(slot).to_std().ok());
        self.ledger.metrics.schedule(&fire.job, interval);
        due.slot = slot;
        Some(due)
    }

    /// Claims `runs`, all due at `at`, in one go, waits for `at`, logs their starts, then
    /// runs them, each as a tracked task; all of it in a tracked task, so the daemon's loop
    /// never waits for the store. Whether a run starts is decided at `at`: not when the
    /// daemon is stopping or its job changed, not with `overlap = "skip"` while the
    /// previous run is going; the claims of runs that do not start are taken back.
    fn start_claimed_together(&self, at: DateTime<Utc>, runs: Vec<(Due, Option<Room>)>) {
        let ledger = self.ledger.clone();
        let spawner = self.spawner();
        let abort = self.abort.clone();
        let stopping = self.not_started.clone();
        let clock = self.clock;
        let unclaimed = self.unclaimed.clone();
        self.tracker.spawn(async move {
            let new: Vec<(Arc<Job>, NewRun)> = runs
                .iter()
                .map(|(due, _)| (Arc::clone(&due.job), due.job.new_run(&ledger, due.slot, false)))
                .collect();
            let claimed = tokio::select! {
                claimed = Job::claim_all(&ledger, &new) => claimed,
                () = abort.cancelled() => return,
            };
            // Logged and reported to the jobs' failure handlers by the claim; made up once
            // the store answers again.
            let Ok(claimed) = claimed else {
                for (due, _) in &runs {
                    unclaimed.add(&due.job.name, due.slot);
                }
                return;
            };
            tokio::select! {
                () = sleep_until(clock, at) => {}
                () = stopping.cancelled() => {}
            }
            let mut begun = Vec::with_capacity(new.len());
            let mut not_started = Vec::new();
            for (((job, run), (due, room)), claimed) in new.into_iter().zip(runs).zip(claimed) {
                let slot = due.slot;
                if !claimed {
                    // With several daemons, every slot but the ones this daemon wins: not news.
                    tracing::debug!(job = %job.name, slot = %slot.to_rfc3339(), "The slot already has a run; not running it again.");
                    continue;
                }
                if due.waiting.is_cancelled() {
                    tracing::info!(job = %job.name, slot = %slot.to_rfc3339(), "Not started: the daemon is stopping (or the job changed) before the slot.");
                    not_started.push(run.ctx.run_id);
                    continue;
                }
                let Some(running) = Running::enter(due.running, job.overlap) else {
                    skipped(spawner.events.as_ref(), &ledger, &job, slot);
                    not_started.push(run.ctx.run_id);
                    continue;
                };
                started(spawner.events.as_ref(), &ledger, clock, &job, slot);
                begun.push((Begun::now(&run.ctx), job, run.ctx, running, room));
            }
            for (begun, job, ctx, running, room) in begun {
                spawner.track(job.name.clone(), async move {
                    let _running = running;
                    let _room = room;
                    Some(job.runner.run_begun(ctx, begun).await)
                });
            }
            if !not_started.is_empty()
                && let Err(err) = ledger.store.release_all(&not_started).await
            {
                ledger.store.count_failure();
                tracing::warn!(error = %err, runs = not_started.len(), "Cannot take back the claims of runs that did not start; the next start resumes them.");
            }
        });
    }

    /// Starts a run of `job` for `slot` as a tracked task: it waits for the slot (the timer
    /// may release it early) and its jitter, then runs unless `overlap = "skip"` and the
    /// previous run is still going.
    fn start(&self, due: Due) {
        let Due {
            job,
            slot,
            running,
            waiting,
        } = due;
        let jitter = job
            .jitter
            .map(|max| max.mul_f64(rand::rng().random_range(0.0..=1.0)))
            .unwrap_or_default();
        let ledger = self.ledger.clone();
        let events = self.events.clone();
        let name = job.name.clone();
        let clock = self.clock;
        let room = self.room.clone();
        let unclaimed = self.unclaimed.clone();
        self.track(name, async move {
            let start_at = chrono::Duration::from_std(jitter)
                .ok()
                .and_then(|jitter| slot.with_timezone(&Utc).checked_add_signed(jitter))
                .unwrap_or_else(|| slot.with_timezone(&Utc));
            if let Ok(wait) = (start_at - clock.now()).to_std() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = waiting.cancelled() => {
                        tracing::info!(job = %job.name, slot = %slot.to_rfc3339(), "Not started: the daemon is stopping (or the job changed) while the run waited for its slot or jitter.");
                        return None;
                    }
                }
            }
            // At `max_running`: claim once one of this daemon's runs ends (a daemon with
            // room has likely claimed the slot by then).
            let _room = match room {
                None => None,
                Some(room) => tokio::select! {
                    permit = room.acquire_owned() => permit.ok(),
                    () = waiting.cancelled() => return None,
                },
            };
            let Some(_running) = Running::enter(running, job.overlap) else {
                skipped(events.as_ref(), &ledger, &job, slot);
                return None;
            };
            started(events.as_ref(), &ledger, clock, &job, slot);
            match job.run_claimed(&ledger, slot).await {
                Ok(report) => {
                    if report.is_none() {
                        tracing::debug!(job = %job.name, slot = %slot.to_rfc3339(), "The slot already has a run; not running it again.");
                    }
                    report
                }
                // Logged and reported to the job's failure handlers by the claim; made up
                // once the store answers again.
                Err(_) => {
                    unclaimed.add(&job.name, slot);
                    None
                }
            }
        });
    }

    /// Runs `work` as a tracked task that the shutdown deadline cancels, and tells the
    /// events channel about the report it returns.
    fn track(&self, job: String, work: impl Future<Output = Option<RunReport>> + Send + 'static) {
        self.spawner().track(job, work);
    }

    fn spawner(&self) -> Spawner {
        Spawner {
            tracker: self.tracker.clone(),
            abort: self.abort.clone(),
            events: self.events.clone(),
        }
    }

    async fn reload(&mut self) {
        systemd(&[sd_notify::NotifyState::Reloading]);
        tracing::info!(config = %self.path.display(), "Reloading.");
        match config::load(&self.path) {
            Err(errors) => self.reject(errors.to_string(), errors.0.len()),
            Ok(config) => match Job::build_all(&config, &self.notifications) {
                Err(err) => self.reject(display_chain(&err.chain()), 1),
                Ok(jobs) => self.apply(&config, jobs).await,
            },
        }
        let armed = self.armed.values().filter(|a| a.next.is_some()).count();
        self.ledger.metrics.jobs(self.armed.len());
        self.show_jobs();
        systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("{armed} jobs armed")),
        ]);
    }

    fn reject(&self, errors: String, count: usize) {
        for line in errors.lines() {
            tracing::error!(problem = %line, "Reload rejected.");
        }
        tracing::error!(
            problems = count,
            "Reload rejected: the old jobs keep running."
        );
        self.emit(Event::ReloadRejected { errors });
    }

    async fn apply(&mut self, config: &Config, jobs: Vec<Job>) {
        self.shutdown_timeout = config.daemon.shutdown_timeout.get();
        self.keep_history = config.daemon.keep_history.get();
        if format!("{:?}", config.api) != format!("{:?}", self.api_config) {
            tracing::warn!(
                "[api] changed: restart the daemon to apply it; the API keeps its settings until then."
            );
        }
        let mut removed: Vec<String> = self
            .armed
            .keys()
            .filter(|name| !jobs.iter().any(|job| &job.name == *name))
            .cloned()
            .collect();
        removed.sort();
        for name in &removed {
            self.disarm(name);
            self.armed.remove(name);
            self.ledger.metrics.forget(name);
        }
        let (mut added, mut rearmed, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for job in jobs {
            let name = job.name.clone();
            match self.armed.get_mut(&name) {
                Some(armed) if armed.key == ArmKey::of(&job) => {
                    // Same firing times: keep the armed firing, run the new definition.
                    armed.job = Arc::new(job);
                    kept.push(name);
                }
                Some(_) => {
                    self.disarm(&name);
                    self.generation += 1;
                    let generation = self.generation;
                    if let Some(armed) = self.armed.get_mut(&name) {
                        armed.key = ArmKey::of(&job);
                        armed.job = Arc::new(job);
                        armed.generation = generation;
                    }
                    self.arm(&name, self.clock.now()).await;
                    rearmed.push(name);
                }
                None => {
                    self.insert(job).await;
                    added.push(name);
                }
            }
        }
        tracing::info!(
            added = %added.join(","),
            removed = %removed.join(","),
            rearmed = %rearmed.join(","),
            kept = kept.len(),
            "Reloaded."
        );
        self.emit(Event::Reloaded {
            added,
            removed,
            rearmed,
            kept,
        });
    }

    async fn shutdown(&mut self, mut control: mpsc::Receiver<Control>, now: bool) {
        let began = tokio::time::Instant::now();
        systemd(&[sd_notify::NotifyState::Stopping]);
        self.monitor
            .ready
            .store(false, std::sync::atomic::Ordering::Release);
        tracing::info!(
            running = self.tracker.len(),
            deadline = %humantime::format_duration(self.shutdown_timeout),
            "Shutting down: nothing new fires; running deliveries may finish."
        );
        self.timer.shutdown();
        self.not_started.cancel();
        self.tracker.close();
        let mut cancelled = 0;
        let mut why = "shutdown was asked twice";
        if !now {
            let deadline = tokio::time::sleep(self.shutdown_timeout);
            tokio::select! {
                () = self.tracker.wait() => {}
                () = deadline => why = "the shutdown deadline passed",
                // A second signal: stop waiting.
                Some(Control::ShutdownNow | Control::Shutdown) = control.recv() => {}
            }
        }
        if !self.tracker.is_empty() {
            cancelled = self.tracker.len();
            tracing::warn!(
                cancelled,
                "Cancelling the deliveries still running ({why}); they keep their checkpoints and resume at the next start."
            );
            self.abort.cancel();
            self.tracker.wait().await;
        }
        // Programs of cancelled runs got SIGTERM: let them end (SIGKILL after the grace).
        let gone = tokio::task::spawn_blocking(|| {
            crate::source::wait_for_terminations(crate::source::TERM_GRACE * 2)
        })
        .await
        .unwrap_or(false);
        if !gone {
            tracing::warn!("A cancelled program's process group did not end.");
        }
        // Notifications of finished runs get what is left of the deadline; those still
        // unsent then stay in the outbox for the next daemon.
        if self.notifications.pending() > 0 {
            let left = self.shutdown_timeout.saturating_sub(began.elapsed());
            let settled = !now && self.notifications.settle(left).await;
            if !settled {
                tracing::warn!(
                    pending = self.notifications.pending(),
                    "Notifications still unsent at the shutdown deadline are stopped."
                );
                crate::notify::outbox::release(&self.ledger).await;
            }
        }
        if let Err(err) = self.ledger.store.daemon_stopped(&self.ledger.owner).await {
            tracing::debug!(error = %err, "Cannot record in the daemon registry that this daemon stopped.");
        }
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        tracing::info!(cancelled, "Stopped.");
        self.emit(Event::Stopped { cancelled });
    }
}

/// Closes `record`, taken over by this daemon, as failed: its job is in no job file any more.
async fn close_orphan(store: &Store, record: &crate::state::RunRecord) -> Result<(), StateError> {
    let error = "the job is no longer in the job file";
    tracing::warn!(job = %record.job, run_id = %record.run_id, "Not resuming the run: {error}.");
    store
        .finish(
            &record.run_id,
            record.epoch,
            &Outcome::failed(record.attempts, error),
        )
        .await
}

/// Starts the daemon's tracked tasks, from its loop or from a task of its own.
struct Spawner {
    tracker: TaskTracker,
    abort: CancellationToken,
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl Spawner {
    /// Runs `work` as a tracked task that the shutdown deadline cancels, and tells the
    /// events channel about the report it returns.
    fn track(&self, job: String, work: impl Future<Output = Option<RunReport>> + Send + 'static) {
        let abort = self.abort.clone();
        let events = self.events.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                report = work => {
                    if let Some(report) = report {
                        tell(events.as_ref(), Event::Finished(Box::new(report)));
                    }
                }
                () = abort.cancelled() => {
                    tracing::warn!(%job, "Run cancelled by the shutdown.");
                }
            }
        });
    }
}

/// Tells `events`, when someone listens, what the daemon did.
fn tell(events: Option<&mpsc::UnboundedSender<Event>>, event: Event) {
    if let Some(events) = events {
        let _ = events.send(event);
    }
}

/// Tells `events` and the fire-lag histogram that `job`'s run for `slot` starts now.
fn started(
    events: Option<&mpsc::UnboundedSender<Event>>,
    ledger: &Ledger,
    clock: Clock,
    job: &Job,
    slot: DateTime<Tz>,
) {
    let lag = clock.now().signed_duration_since(slot).to_std();
    ledger.metrics.fire_lag(lag.unwrap_or_default());
    tell(
        events,
        Event::Started {
            job: job.name.clone(),
            slot,
        },
    );
}

/// Logs (and tells `events`) that `job`'s firing for `slot` was skipped because its
/// previous run is still going.
fn skipped(
    events: Option<&mpsc::UnboundedSender<Event>>,
    ledger: &Ledger,
    job: &Job,
    slot: DateTime<Tz>,
) {
    ledger.metrics.skipped(&job.name);
    tracing::warn!(
        job = %job.name,
        slot = %slot.to_rfc3339(),
        "Skipped: the previous run is still going (overlap = \"skip\")."
    );
    tell(
        events,
        Event::Skipped {
            job: job.name.clone(),
            slot,
        },
    );
}

/// Tells systemd about the daemon's state when systemd started it (a no-op otherwise).
fn systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::debug!(error = %err, "Cannot notify systemd.");
    }
}

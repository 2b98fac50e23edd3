//! The state store: run history, slot claims, checkpoints and cursors.
//!
//! One interface over two backends, chosen by `[daemon] state`: SQLite (`sqlite://PATH`,
//! the embedded default, in WAL mode) for one daemon, PostgreSQL (`postgres://…`) for
//! several. Both speak the same SQL through sqlx's `Any` driver, and the schema is created
//! and upgraded by sqlx migrations embedded in the binary.
//!
//! * A **run** is one row per (job, slot), inserted by [`Store::claim`]: the insert fails
//!   when the slot already has a row, which is what makes a slot run once however many
//!   daemons see it fire.
//! * A **checkpoint** is a writer's progress in a run (an opaque JSON document plus the
//!   bytes it has made durable), read back when the run is retried or resumed after a crash.
//! * A **cursor** is a job's saved position, for incremental sources.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor as _, Row as _, SqlSafeStr as _};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The `state` setting is not a URL the store understands.
    #[error("state {0:?} must be sqlite://PATH or postgres://…")]
    Url(String),
    /// The database could not be reached or answered an error.
    #[error("state store: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be created or upgraded.
    #[error("state store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Claimed and not finished: in progress, or left behind by a daemon that died.
    Running,
    /// Every writer delivered.
    Succeeded,
    /// Failed after its last attempt.
    Failed,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> RunState {
        match text {
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            _ => RunState::Running,
        }
    }
}

/// One run as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// The job.
    pub job: String,
    /// The slot, as a UTC instant.
    pub slot: DateTime<Utc>,
    /// The slot as the job's time zone shows it (RFC 3339).
    pub slot_local: String,
    /// The run's id.
    pub run_id: String,
    /// The run's `{uuid}`.
    pub uuid: String,
    /// How it stands.
    pub state: RunState,
    /// Attempts started.
    pub attempts: u32,
    /// The daemon that owns it (host and process).
    pub owner: String,
    /// Until when the owner's claim holds unless renewed.
    pub lease_until: DateTime<Utc>,
    /// When it was claimed.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Bytes delivered.
    pub bytes: Option<u64>,
    /// sha256 of the delivered bytes.
    pub sha256: Option<String>,
    /// Where the data went (every writer's location, comma-separated).
    pub location: Option<String>,
    /// The error chain, when it failed.
    pub error: Option<String>,
}

/// What [`Store::claim`] records for a new run.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// The job.
    pub job: &'a str,
    /// The slot, as a UTC instant.
    pub slot: DateTime<Utc>,
    /// The slot in the job's time zone (RFC 3339).
    pub slot_local: &'a str,
    /// The new run's id.
    pub run_id: &'a str,
    /// The new run's `{uuid}`.
    pub uuid: &'a str,
    /// The claiming daemon.
    pub owner: &'a str,
    /// How long the claim holds without renewal.
    pub lease: Duration,
}

/// How a run ended, as [`Store::finish`] records it.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// Succeeded or failed.
    pub state: RunState,
    /// Attempts made.
    pub attempts: u32,
    /// Bytes delivered.
    pub bytes: Option<u64>,
    /// sha256 of the delivered bytes.
    pub sha256: Option<&'a str>,
    /// Where the data went.
    pub location: Option<&'a str>,
    /// The error chain.
    pub error: Option<&'a str>,
}

impl<'a> Outcome<'a> {
    /// A run closed as failed without a delivery (it cannot be resumed), saying why.
    pub fn failed(attempts: u32, error: &'a str) -> Outcome<'a> {
        Outcome {
            state: RunState::Failed,
            attempts,
            bytes: None,
            sha256: None,
            location: None,
            error: Some(error),
        }
    }
}

/// How a notification about a run went, as [`Store::record_notification`] keeps it.
#[derive(Debug, Clone)]
pub struct NotificationRecord<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The notifier's name.
    pub notifier: &'a str,
    /// Whether it was sent.
    pub sent: bool,
    /// Tries made.
    pub attempts: u32,
    /// The last try's error chain, when it was not sent.
    pub error: Option<&'a str>,
}

/// A notification's outcome, read back from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotificationOutcome {
    /// The notifier's name.
    pub notifier: String,
    /// Whether it was sent.
    pub sent: bool,
    /// Tries made.
    pub attempts: u32,
    /// The last try's error chain, when it was not sent.
    pub error: Option<String>,
}

/// A writer's saved progress in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The writer's own description of where it got to.
    pub document: serde_json::Value,
    /// Bytes of the payload the writer has made durable.
    pub bytes_done: u64,
}

/// A run's link to the store: where its attempts, checkpoints and outcome go.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The store.
    pub store: Store,
    /// The daemon (or command) that owns the run.
    pub owner: String,
    /// How long the owner's claim holds without renewal.
    pub lease: Duration,
}

impl Ledger {
    /// Writer `writer`'s saved progress in run `run_id` (errors are logged, not returned:
    /// without a checkpoint the writer simply starts over).
    pub async fn checkpoint(&self, run_id: &str, writer: usize) -> Option<Checkpoint> {
        match self.store.checkpoint(run_id, writer).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "Cannot read a checkpoint; starting over.");
                None
            }
        }
    }
}

/// This process as an owner of runs: host name and process id.
pub fn owner_id() -> String {
    format!("{}/{}", crate::host_name(), std::process::id())
}

/// The state store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Which database is behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one daemon.
    Sqlite,
    /// PostgreSQL: several daemons.
    Postgres,
}

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "runs, checkpoints, cursors",
        "CREATE TABLE ferry_runs (
        job TEXT NOT NULL,
        slot BIGINT NOT NULL,
        slot_local TEXT NOT NULL,
        run_id TEXT NOT NULL UNIQUE,
        uuid TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        owner TEXT NOT NULL,
        lease_until BIGINT NOT NULL,
        started_at BIGINT NOT NULL,
        finished_at BIGINT,
        bytes BIGINT,
        sha256 TEXT,
        location TEXT,
        error TEXT,
        PRIMARY KEY (job, slot)
    );
    CREATE INDEX ferry_runs_state ON ferry_runs (state);
    CREATE TABLE ferry_checkpoints (
        run_id TEXT NOT NULL,
        writer BIGINT NOT NULL,
        document TEXT NOT NULL,
        bytes_done BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (run_id, writer)
    );
    CREATE TABLE ferry_cursors (
        job TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );",
    ),
    (
        2,
        "notifications",
        "CREATE TABLE ferry_notifications (
            run_id TEXT NOT NULL,
            notifier TEXT NOT NULL,
            sent BIGINT NOT NULL,
            attempts BIGINT NOT NULL,
            error TEXT,
            at BIGINT NOT NULL,
            PRIMARY KEY (run_id, notifier)
        );",
    ),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn instant(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// `SELECT` of every run column, as a literal (queries must be static strings).
macro_rules! select_runs {
    ($rest:literal) => {
        concat!(
            "SELECT job, slot, slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at, finished_at, bytes, sha256, location, error FROM ferry_runs ",
            $rest
        )
    };
}

fn run_from_row(row: &AnyRow) -> Result<RunRecord, sqlx::Error> {
    let unsigned = |v: i64| u64::try_from(v).unwrap_or_default();
    Ok(RunRecord {
        job: row.try_get("job")?,
        slot: instant(row.try_get("slot")?),
        slot_local: row.try_get("slot_local")?,
        run_id: row.try_get("run_id")?,
        uuid: row.try_get("uuid")?,
        state: RunState::parse(&row.try_get::<String, _>("state")?),
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        owner: row.try_get("owner")?,
        lease_until: instant(row.try_get("lease_until")?),
        started_at: instant(row.try_get("started_at")?),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(instant),
        bytes: row.try_get::<Option<i64>, _>("bytes")?.map(unsigned),
        sha256: row.try_get("sha256")?,
        location: row.try_get("location")?,
        error: row.try_get("error")?,
    })
}

impl Store {
    /// Opens (creating if need be) the store at `url` and brings its schema up to date.
    /// A relative SQLite path is taken from `base_dir`.
    pub async fn open(url: &str, base_dir: &std::path::Path) -> Result<Store, StateError> {
        sqlx::any::install_default_drivers();
        let (backend, connect) = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StateError::Url(url.to_owned()));
            }
            let path = base_dir.join(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|err| StateError::Database(sqlx::Error::Io(err)))?;
            }
            (
                Backend::Sqlite,
                format!("sqlite://{}?mode=rwc", path.display()),
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StateError::Url(url.to_owned()));
        };
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer at a time: more connections only queue on its lock.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect)
            .await?;
        migrator().run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Records a new run for `claim.job` and `claim.slot`. `false` when the slot already has
    /// a run (this daemon's, another daemon's, or a finished one): the caller must not run it.
    pub async fn claim(&self, claim: &Claim<'_>) -> Result<bool, StateError> {
        let now = Utc::now();
        let lease = chrono::Duration::from_std(claim.lease).unwrap_or_default();
        let done = sqlx::query(
            "INSERT INTO ferry_runs (job, slot, slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at)
             VALUES ($1, $2, $3, $4, $5, 'running', 0, $6, $7, $8)
             ON CONFLICT DO NOTHING",
        )
        .bind(claim.job)
        .bind(millis(claim.slot))
        .bind(claim.slot_local)
        .bind(claim.run_id)
        .bind(claim.uuid)
        .bind(claim.owner)
        .bind(millis(now + lease))
        .bind(millis(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that attempt `attempt` of run `run_id` starts, renewing its lease.
    pub async fn attempt(
        &self,
        run_id: &str,
        attempt: u32,
        lease: Duration,
    ) -> Result<(), StateError> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        sqlx::query("UPDATE ferry_runs SET attempts = $1, lease_until = $2 WHERE run_id = $3")
            .bind(i64::from(attempt))
            .bind(millis(until))
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Extends run `run_id`'s lease while `owner` still holds it; `false` if it does not.
    pub async fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        let done = sqlx::query(
            "UPDATE ferry_runs SET lease_until = $1 WHERE run_id = $2 AND owner = $3 AND state = 'running'",
        )
        .bind(millis(until))
        .bind(run_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes over unfinished run `run_id` for `owner`: only if it is still running and its
    /// lease expired before `expired_before`. `false` if someone else holds it.
    pub async fn take_over(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
        expired_before: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        let done = sqlx::query(
            "UPDATE ferry_runs SET owner = $1, lease_until = $2
             WHERE run_id = $3 AND state = 'running' AND lease_until < $4",
        )
        .bind(owner)
        .bind(millis(until))
        .bind(run_id)
        .bind(millis(expired_before))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how run `run_id` ended, and drops its checkpoints, in one transaction.
    pub async fn finish(&self, run_id: &str, outcome: &Outcome<'_>) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE ferry_runs SET state = $1, attempts = $2, finished_at = $3, bytes = $4, sha256 = $5, location = $6, error = $7
             WHERE run_id = $8",
        )
        .bind(outcome.state.as_str())
        .bind(i64::from(outcome.attempts))
        .bind(millis(Utc::now()))
        .bind(outcome.bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
        .bind(outcome.sha256)
        .bind(outcome.location)
        .bind(outcome.error)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM ferry_checkpoints WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The run of `job` for `slot`, if there is one.
    pub async fn run_for(
        &self,
        job: &str,
        slot: DateTime<Utc>,
    ) -> Result<Option<RunRecord>, StateError> {
        let row = sqlx::query(select_runs!("WHERE job = $1 AND slot = $2"))
            .bind(job)
            .bind(millis(slot))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(run_from_row).transpose()?)
    }

    /// Runs not finished (state `running`), oldest slot first.
    pub async fn unfinished(&self) -> Result<Vec<RunRecord>, StateError> {
        let rows = sqlx::query(select_runs!("WHERE state = 'running' ORDER BY slot"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }

    /// The latest slot of `job` that has a run.
    pub async fn last_slot(&self, job: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let row = sqlx::query("SELECT MAX(slot) AS slot FROM ferry_runs WHERE job = $1")
            .bind(job)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("slot")?.map(instant))
    }

    /// Recent runs, newest slot first, of one job or all.
    pub async fn history(
        &self,
        job: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StateError> {
        let rows = match job {
            Some(job) => {
                sqlx::query(select_runs!(
                    "WHERE job = $1 ORDER BY slot DESC, started_at DESC LIMIT $2"
                ))
                .bind(job)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(select_runs!("ORDER BY slot DESC, started_at DESC LIMIT $1"))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }

    /// Saves writer `writer`'s progress in run `run_id`, replacing what it saved before.
    pub async fn save_checkpoint(
        &self,
        run_id: &str,
        writer: usize,
        checkpoint: &Checkpoint,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO ferry_checkpoints (run_id, writer, document, bytes_done, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (run_id, writer) DO UPDATE
             SET document = excluded.document, bytes_done = excluded.bytes_done, updated_at = excluded.updated_at",
        )
        .bind(run_id)
        .bind(i64::try_from(writer).unwrap_or(i64::MAX))
        .bind(checkpoint.document.to_string())
        .bind(i64::try_from(checkpoint.bytes_done).unwrap_or(i64::MAX))
        .bind(millis(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writer `writer`'s saved progress in run `run_id`.
    pub async fn checkpoint(
        &self,
        run_id: &str,
        writer: usize,
    ) -> Result<Option<Checkpoint>, StateError> {
        let row = sqlx::query(
            "SELECT document, bytes_done FROM ferry_checkpoints WHERE run_id = $1 AND writer = $2",
        )
        .bind(run_id)
        .bind(i64::try_from(writer).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let document: String = row.try_get("document")?;
        Ok(Some(Checkpoint {
            document: serde_json::from_str(&document).unwrap_or(serde_json::Value::Null),
            bytes_done: u64::try_from(row.try_get::<i64, _>("bytes_done")?).unwrap_or_default(),
        }))
    }

    /// Keeps how a notification about a run went (replacing an earlier record of it).
    pub async fn record_notification(
        &self,
        record: &NotificationRecord<'_>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO ferry_notifications (run_id, notifier, sent, attempts, error, at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (run_id, notifier) DO UPDATE SET sent = excluded.sent,
               attempts = excluded.attempts, error = excluded.error, at = excluded.at",
        )
        .bind(record.run_id)
        .bind(record.notifier)
        .bind(i64::from(record.sent))
        .bind(i64::from(record.attempts))
        .bind(record.error)
        .bind(millis(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How the notifications about run `run_id` went, by notifier name.
    pub async fn notifications(
        &self,
        run_id: &str,
    ) -> Result<Vec<NotificationOutcome>, StateError> {
        let rows = sqlx::query(
            "SELECT notifier, sent, attempts, error FROM ferry_notifications
             WHERE run_id = $1 ORDER BY notifier",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(NotificationOutcome {
                    notifier: row.try_get("notifier")?,
                    sent: row.try_get::<i64, _>("sent")? != 0,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    error: row.try_get("error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }

    /// Job `job`'s saved position.
    pub async fn cursor(&self, job: &str) -> Result<Option<String>, StateError> {
        let row = sqlx::query("SELECT value FROM ferry_cursors WHERE job = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Saves job `job`'s position.
    pub async fn set_cursor(&self, job: &str, value: &str) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO ferry_cursors (job, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (job) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(job)
        .bind(value)
        .bind(millis(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

//! The daemon registry: each daemon sharing the store heartbeats its row (host, process,
//! version, when it started, when it was last seen, how many runs it has going), so that
//! `ferry cluster` can tell which daemons are alive and what each runs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row as _;

use super::queries::{instant, millis};
use super::{StateError, Store};

/// A daemon as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonRecord {
    /// Its id: host and process id (the owner its runs carry).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// ferry's version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its latest heartbeat.
    pub last_seen: DateTime<Utc>,
    /// Runs it had going at that heartbeat.
    pub running: u64,
    /// When it stopped cleanly, if it did.
    pub stopped_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Records that daemon `record.id` is alive now, with `record.running` runs going.
    pub async fn heartbeat(&self, record: &DaemonRecord) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO ferry_daemons (id, host, pid, version, started_at, last_seen, running)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,
               running = excluded.running, stopped_at = NULL",
        )
        .bind(record.id.as_str())
        .bind(record.host.as_str())
        .bind(i64::from(record.pid))
        .bind(record.version.as_str())
        .bind(millis(record.started_at))
        .bind(millis(Utc::now()))
        .bind(i64::try_from(record.running).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that daemon `id` stopped cleanly.
    pub async fn daemon_stopped(&self, id: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE ferry_daemons SET stopped_at = $1, running = 0 WHERE id = $2")
            .bind(millis(Utc::now()))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The daemons seen since `since`, and those that stopped since then, newest start
    /// first. (Rows age out with the history: [`Store::prune`].)
    pub async fn daemons(&self, since: DateTime<Utc>) -> Result<Vec<DaemonRecord>, StateError> {
        let rows = sqlx::query(
            "SELECT id, host, pid, version, started_at, last_seen, running, stopped_at
             FROM ferry_daemons WHERE last_seen >= $1 OR stopped_at >= $1
             ORDER BY started_at DESC, id",
        )
        .bind(millis(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DaemonRecord {
                    id: row.try_get("id")?,
                    host: row.try_get("host")?,
                    pid: u32::try_from(row.try_get::<i64, _>("pid")?).unwrap_or(0),
                    version: row.try_get("version")?,
                    started_at: instant(row.try_get("started_at")?),
                    last_seen: instant(row.try_get("last_seen")?),
                    running: u64::try_from(row.try_get::<i64, _>("running")?).unwrap_or(0),
                    stopped_at: row.try_get::<Option<i64>, _>("stopped_at")?.map(instant),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }
}

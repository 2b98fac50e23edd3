//! Failure streaks: per job and notifier, the failures in a row, so that a notifier with
//! `repeat_after` is told of a job that keeps failing once per that long ("still failing,
//! N times since …") and one with `recovery` of the first success after them.

use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::queries::{instant, millis};
use super::{StateError, Store};

/// A job's failures in a row, as one notifier has heard of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streak {
    /// Failed runs in a row.
    pub failures: u32,
    /// Of those, how many the notifier was not told of since it was last told.
    pub suppressed: u32,
    /// When the first of them ended.
    pub since: DateTime<Utc>,
    /// When the notifier was last told of one.
    pub last_told: Option<DateTime<Utc>>,
}

impl Store {
    /// `job`'s failure streak as `notifier` has heard of it, if the job's last run failed.
    pub async fn streak(&self, job: &str, notifier: &str) -> Result<Option<Streak>, StateError> {
        let row = sqlx::query(
            "SELECT failures, suppressed, since, last_told FROM ferry_streaks WHERE job = $1 AND notifier = $2",
        )
        .bind(job)
        .bind(notifier)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let count = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Some(Streak {
            failures: count(row.try_get("failures")?),
            suppressed: count(row.try_get("suppressed")?),
            since: instant(row.try_get("since")?),
            last_told: row.try_get::<Option<i64>, _>("last_told")?.map(instant),
        }))
    }

    /// Keeps `job`'s failure streak as `notifier` has heard of it.
    pub async fn set_streak(
        &self,
        job: &str,
        notifier: &str,
        streak: &Streak,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO ferry_streaks (job, notifier, failures, suppressed, since, last_told)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (job, notifier) DO UPDATE SET failures = excluded.failures,
               suppressed = excluded.suppressed, since = excluded.since, last_told = excluded.last_told",
        )
        .bind(job)
        .bind(notifier)
        .bind(i64::from(streak.failures))
        .bind(i64::from(streak.suppressed))
        .bind(millis(streak.since))
        .bind(streak.last_told.map(millis))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends `job`'s failure streaks (it succeeded).
    pub async fn end_streaks(&self, job: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM ferry_streaks WHERE job = $1")
            .bind(job)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

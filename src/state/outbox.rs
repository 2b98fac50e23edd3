//! The notification outbox: a run's notifications, written in the transaction that records
//! its outcome ([`Store::finish_and_notify`]), then each claimed by one sender before it is
//! sent, and marked sent or failed after. A notification is never lost to a crash: the
//! process that ran the run claims its rows at once, and any daemon claims a row left
//! `pending` (its process died before claiming it) or left `sending` past its claim (its
//! sender died while sending).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::queries::millis;
use super::{Backend, StateError, Store};

/// A run's notifications to write with its outcome: the job, and each notifier to tell
/// with the report it is told, as JSON ([`crate::report::RunReport`]).
#[derive(Debug, Clone)]
pub struct Notices {
    /// The run's job.
    pub job: String,
    /// `(notifier, report)` for each notifier to tell.
    pub notifiers: Vec<(String, String)>,
}

/// A notification claimed from the outbox, to send.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The row's id.
    pub id: String,
    /// The run it tells of.
    pub run_id: String,
    /// The run's job.
    pub job: String,
    /// The notifier to tell.
    pub notifier: String,
    /// The run's report, as JSON.
    pub report: String,
}

/// A notification's row, as `ferry history` and tests read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeState {
    /// The notifier.
    pub notifier: String,
    /// `pending`, `sending`, `sent` or `failed`.
    pub state: String,
    /// Tries made by the sender that settled it.
    pub attempts: u32,
    /// Who claimed it last.
    pub claimed_by: Option<String>,
}

/// A notification's row id: one per run and notifier.
pub fn notice_id(run_id: &str, notifier: &str) -> String {
    format!("{run_id}/{notifier}")
}

impl Store {
    /// Claims run `run_id`'s notification to `notifier` for `owner` until `hold` from now,
    /// if it is still `pending`: whether `owner` may send it now.
    pub async fn claim_notice(
        &self,
        run_id: &str,
        notifier: &str,
        owner: &str,
        hold: Duration,
    ) -> Result<bool, StateError> {
        let until = Utc::now() + chrono::Duration::from_std(hold).unwrap_or_default();
        let done = sqlx::query(
            "UPDATE ferry_outbox SET state = 'sending', claimed_by = $1, claimed_until = $2
             WHERE id = $3 AND state = 'pending'",
        )
        .bind(owner)
        .bind(millis(until))
        .bind(notice_id(run_id, notifier))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims, for `owner` until `hold` from now, up to `limit` notifications to any of
    /// `notifiers` that were left behind: `pending` since before `pending_before` (the
    /// process that recorded the run did not claim them), or `sending` with a claim that
    /// ran out (their sender died). On PostgreSQL, rows another daemon is claiming are
    /// skipped, not waited for.
    pub async fn claim_left_notices(
        &self,
        owner: &str,
        notifiers: &[String],
        pending_before: DateTime<Utc>,
        hold: Duration,
        limit: u32,
    ) -> Result<Vec<Notice>, StateError> {
        if notifiers.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(hold).unwrap_or_default();
        let mut sql = String::from(
            "UPDATE ferry_outbox SET state = 'sending', claimed_by = $1, claimed_until = $2
             WHERE id IN (SELECT id FROM ferry_outbox
               WHERE ((state = 'pending' AND created_at < $3) OR (state = 'sending' AND claimed_until < $4))
               AND notifier IN (",
        );
        for n in 0..notifiers.len() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", n + 6));
        }
        sql.push_str(") ORDER BY created_at LIMIT $5");
        if self.backend == Backend::Postgres {
            sql.push_str(" FOR UPDATE SKIP LOCKED");
        }
        sql.push_str(") RETURNING id, run_id, job, notifier, report");
        // Only placeholders are formatted into the statement; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(millis(until))
            .bind(millis(pending_before))
            .bind(millis(now))
            .bind(i64::from(limit));
        for notifier in notifiers {
            query = query.bind(notifier.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(Notice {
                    id: row.try_get("id")?,
                    run_id: row.try_get("run_id")?,
                    job: row.try_get("job")?,
                    notifier: row.try_get("notifier")?,
                    report: row.try_get("report")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }

    /// Records how the notification `id`, claimed by `owner`, went: `sent`, or failed after
    /// `attempts` tries with `error`. `false` when `owner`'s claim had run out and another
    /// sender claimed it meanwhile.
    pub async fn settle_notice(
        &self,
        id: &str,
        owner: &str,
        sent: bool,
        attempts: u32,
        error: Option<&str>,
    ) -> Result<bool, StateError> {
        let done = sqlx::query(
            "UPDATE ferry_outbox SET state = $1, attempts = $2, error = $3, sent_at = $4
             WHERE id = $5 AND claimed_by = $6 AND state = 'sending'",
        )
        .bind(if sent { "sent" } else { "failed" })
        .bind(i64::from(attempts))
        .bind(error)
        .bind(millis(Utc::now()))
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives back the notifications `owner` claimed and has not settled (a daemon shutting
    /// down): another daemon, or the next start, sends them.
    pub async fn release_notices(&self, owner: &str) -> Result<u64, StateError> {
        let done = sqlx::query(
            "UPDATE ferry_outbox SET state = 'pending', claimed_by = NULL, claimed_until = NULL
             WHERE claimed_by = $1 AND state = 'sending'",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Run `run_id`'s notifications as the outbox holds them, by notifier.
    pub async fn notices(&self, run_id: &str) -> Result<Vec<NoticeState>, StateError> {
        let rows = sqlx::query(
            "SELECT notifier, state, attempts, claimed_by FROM ferry_outbox WHERE run_id = $1 ORDER BY notifier",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(NoticeState {
                    notifier: row.try_get("notifier")?,
                    state: row.try_get("state")?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    claimed_by: row.try_get("claimed_by")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StateError::from)
    }
}

/// Writes the notices of runs whose outcome was just recorded, in the caller's transaction;
/// a notice already there (the outcome written twice) is kept.
pub(super) async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    rows: &[(&str, &Notices)],
    at: i64,
) -> Result<(), StateError> {
    let notices: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .flat_map(|(run_id, notices)| {
            notices.notifiers.iter().map(move |(notifier, report)| {
                (
                    *run_id,
                    notices.job.as_str(),
                    notifier.as_str(),
                    report.as_str(),
                )
            })
        })
        .collect();
    for chunk in notices.chunks(1000) {
        let mut sql = String::from(
            "INSERT INTO ferry_outbox (id, run_id, job, notifier, report, state, created_at) VALUES ",
        );
        for (i, _) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for column in 0..6 {
                if column > 0 {
                    sql.push_str(", ");
                }
                if column == 5 {
                    sql.push_str("'pending', ");
                }
                super::batch::placeholder(&mut sql, backend, i * 6 + column + 1);
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (run_id, job, notifier, report) in chunk {
            query = query
                .bind(notice_id(run_id, notifier))
                .bind(run_id.to_string())
                .bind(job.to_string())
                .bind(notifier.to_string())
                .bind(report.to_string())
                .bind(at);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

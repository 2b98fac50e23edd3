//! The store's queries: claims, leases, outcomes, history, checkpoints, notifications and
//! cursors. Every statement is one round trip in one transaction, written once for both
//! backends (sqlx's `Any` driver, `$n` placeholders). In the daemon, a run's writes go
//! through the batching writer ([`super::batch`]) and share a transaction with others'.

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::batch::{Finished, Write};
use super::{
    Backend, Checkpoint, Claim, Notices, NotificationOutcome, NotificationRecord, Outcome,
    RunRecord, RunState, StateError, Store,
};

/// The `writer` column of the source's checkpoint: writers are numbered from 0.
const SOURCE_SLOT: i64 = -1;

pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn instant(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// `SELECT` of every run column, as a literal (queries must be static strings).
macro_rules! select_runs {
    ($rest:literal) => {
        concat!(
            "SELECT job, slot, slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at, finished_at, bytes, sha256, location, error, claim_key, epoch FROM ferry_runs ",
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
        manual: !row.try_get::<String, _>("claim_key")?.is_empty(),
        epoch: row.try_get("epoch")?,
    })
}

/// A run write's answer: refused ([`StateError::Fenced`]) when it changed nothing, because
/// the epoch it named no longer holds the run.
fn fenced(run_id: &str, written: bool) -> Result<(), StateError> {
    match written {
        true => Ok(()),
        false => Err(StateError::Fenced(run_id.to_owned())),
    }
}

impl Store {
    /// Takes over a run a previous daemon left unfinished, for `owner`. With SQLite (one
    /// daemon) every unfinished run is this daemon's to take; with PostgreSQL only one whose
    /// lease has expired (its daemon is gone). The run's new epoch, or `None` if another
    /// daemon holds it.
    pub async fn take_over(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<i64>, StateError> {
        let expired_before = match self.backend {
            Backend::Sqlite => Utc::now() + chrono::Duration::days(36_500),
            Backend::Postgres => Utc::now(),
        };
        self.take_over_expired(run_id, owner, lease, expired_before)
            .await
    }

    /// Records a new run for `claim.job` and `claim.slot`, alone in its transaction.
    pub(super) async fn claim_one(&self, claim: &Claim<'_>) -> Result<bool, StateError> {
        let now = Utc::now();
        let lease = chrono::Duration::from_std(claim.lease).unwrap_or_default();
        let done = sqlx::query(
            "INSERT INTO ferry_runs (job, slot, slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at, claim_key)
             VALUES ($1, $2, $3, $4, $5, 'running', 0, $6, $7, $8, $9)
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
        .bind(if claim.manual { claim.run_id } else { "" })
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that attempt `attempt` of run `run_id` starts, renewing its lease, while
    /// `epoch` holds it ([`StateError::Fenced`] when another daemon took it over).
    pub async fn attempt(
        &self,
        run_id: &str,
        epoch: i64,
        attempt: u32,
        lease: Duration,
    ) -> Result<(), StateError> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        let written = self
            .write(Write::Attempt {
                run_id: run_id.to_owned(),
                epoch,
                attempt: i64::from(attempt),
                lease_until: millis(until),
            })
            .await?;
        fenced(run_id, written)
    }

    /// [`Store::attempt`] alone, its lease's end given in milliseconds: whether `epoch`
    /// still held the run.
    pub(super) async fn attempt_one(
        &self,
        run_id: &str,
        epoch: i64,
        attempt: i64,
        lease_until: i64,
    ) -> Result<bool, StateError> {
        let done = sqlx::query(
            "UPDATE ferry_runs SET attempts = $1, lease_until = $2 WHERE run_id = $3 AND epoch = $4",
        )
        .bind(attempt)
        .bind(lease_until)
        .bind(run_id)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends run `run_id`'s lease while `epoch` still holds it and it is running;
    /// `false` if it does not (another daemon took it over).
    pub async fn renew(
        &self,
        run_id: &str,
        epoch: i64,
        lease: Duration,
    ) -> Result<bool, StateError> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        let done = sqlx::query(
            "UPDATE ferry_runs SET lease_until = $1 WHERE run_id = $2 AND epoch = $3 AND state = 'running'",
        )
        .bind(millis(until))
        .bind(run_id)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes over unfinished run `run_id` for `owner`: only if it is still running and its
    /// lease expired before `expired_before`. The run's new epoch (one more than its last
    /// owner's, whose writes are refused from now on), or `None` if someone else holds it.
    pub async fn take_over_expired(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
        expired_before: DateTime<Utc>,
    ) -> Result<Option<i64>, StateError> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        let row = sqlx::query(
            "UPDATE ferry_runs SET owner = $1, lease_until = $2, epoch = epoch + 1
             WHERE run_id = $3 AND state = 'running' AND lease_until < $4
             RETURNING epoch",
        )
        .bind(owner)
        .bind(millis(until))
        .bind(run_id)
        .bind(millis(expired_before))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.try_get("epoch")).transpose()?)
    }

    /// Records how run `run_id` ended, and drops its checkpoints, in one transaction,
    /// while `epoch` holds it ([`StateError::Fenced`] when another daemon took it over).
    pub async fn finish(
        &self,
        run_id: &str,
        epoch: i64,
        outcome: &Outcome<'_>,
    ) -> Result<(), StateError> {
        self.finish_and_notify(run_id, epoch, outcome, None).await
    }

    /// [`Store::finish`], writing `notices` (who to tell) to the outbox in the same
    /// transaction: recorded together or not at all.
    pub async fn finish_and_notify(
        &self,
        run_id: &str,
        epoch: i64,
        outcome: &Outcome<'_>,
        notices: Option<Notices>,
    ) -> Result<(), StateError> {
        let finished = Finished {
            notices,
            epoch,
            run_id: run_id.to_owned(),
            state: outcome.state.as_str(),
            attempts: i64::from(outcome.attempts),
            at: millis(Utc::now()),
            bytes: outcome.bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            sha256: outcome.sha256.map(str::to_owned),
            location: outcome.location.map(str::to_owned),
            error: outcome.error.map(str::to_owned),
        };
        let written = self.write(Write::Finish(finished)).await?;
        fenced(run_id, written)
    }

    /// The run `run_id`, if there is one.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError> {
        let row = sqlx::query(select_runs!("WHERE run_id = $1"))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(run_from_row).transpose()?)
    }

    /// Whether `job` has a run for `slot` that succeeded (scheduled or manual).
    pub async fn succeeded(&self, job: &str, slot: DateTime<Utc>) -> Result<bool, StateError> {
        let row = sqlx::query(
            "SELECT count(*) AS n FROM ferry_runs WHERE job = $1 AND slot = $2 AND state = 'succeeded'",
        )
        .bind(job)
        .bind(millis(slot))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The schedule's run of `job` for `slot` (not a manual one), if there is one.
    pub async fn run_for(
        &self,
        job: &str,
        slot: DateTime<Utc>,
    ) -> Result<Option<RunRecord>, StateError> {
        let row = sqlx::query(select_runs!(
            "WHERE job = $1 AND slot = $2 AND claim_key = ''"
        ))
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

    /// Runs not finished whose lease ran out before `before` (their owner died, hung or
    /// lost the store), at most a thousand, those whose lease ran out last first: runs of
    /// jobs no daemon has, left long ago, never crowd out a run that just lost its owner.
    pub async fn expired(&self, before: DateTime<Utc>) -> Result<Vec<RunRecord>, StateError> {
        let rows = sqlx::query(select_runs!(
            "WHERE state = 'running' AND lease_until < $1 ORDER BY lease_until DESC LIMIT 1000"
        ))
        .bind(millis(before))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }

    /// The latest slot of `job` that has a run.
    pub async fn last_slot(&self, job: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let row = sqlx::query(
            "SELECT MAX(slot) AS slot FROM ferry_runs WHERE job = $1 AND claim_key = ''",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("slot")?.map(instant))
    }

    /// Every job's latest slot with a run, in one query (the catch-up check at start-up).
    pub async fn last_slots(
        &self,
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>, StateError> {
        let rows = sqlx::query(
            "SELECT job, MAX(slot) AS slot FROM ferry_runs WHERE claim_key = '' GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            out.insert(row.try_get("job")?, instant(row.try_get("slot")?));
        }
        Ok(out)
    }

    /// Each job's latest finished run (by slot; of runs of one slot, the last started
    /// comes last), in one query on the primary key's index (the status page).
    pub async fn latest_finished(&self) -> Result<Vec<RunRecord>, StateError> {
        let rows = sqlx::query(select_runs!(
            "WHERE state <> 'running' AND (job, slot) IN (SELECT job, MAX(slot) FROM ferry_runs WHERE state <> 'running' GROUP BY job) ORDER BY job, started_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }

    /// The `limit` latest failed runs, the last to end first.
    pub async fn recent_failures(&self, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        let rows = sqlx::query(select_runs!(
            "WHERE state = 'failed' ORDER BY finished_at DESC, job LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }

    /// When each job's last successful run ended (`ferry_last_success_timestamp_seconds`
    /// carries on across restarts).
    pub async fn last_successes(&self) -> Result<Vec<(String, DateTime<Utc>)>, StateError> {
        let rows = sqlx::query(
            "SELECT job, MAX(finished_at) AS finished FROM ferry_runs WHERE state = 'succeeded' GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(finished) = row.try_get::<Option<i64>, _>("finished")? {
                out.push((row.try_get("job")?, instant(finished)));
            }
        }
        Ok(out)
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

    /// Saves writer `writer`'s progress in run `run_id`, replacing what it saved before,
    /// while `epoch` holds the run ([`StateError::Fenced`] when another daemon took it
    /// over).
    pub async fn save_checkpoint(
        &self,
        run_id: &str,
        epoch: i64,
        writer: usize,
        checkpoint: &Checkpoint,
    ) -> Result<(), StateError> {
        let slot = i64::try_from(writer).unwrap_or(i64::MAX);
        self.save_checkpoint_in(run_id, epoch, slot, checkpoint)
            .await
    }

    /// Saves the source's progress in run `run_id` (the pages it has given), as
    /// [`Store::save_checkpoint`] does a writer's.
    pub async fn save_source_checkpoint(
        &self,
        run_id: &str,
        epoch: i64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StateError> {
        self.save_checkpoint_in(run_id, epoch, SOURCE_SLOT, checkpoint)
            .await
    }

    async fn save_checkpoint_in(
        &self,
        run_id: &str,
        epoch: i64,
        slot: i64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StateError> {
        let written = self
            .write(Write::Checkpoint {
                epoch,
                run_id: run_id.to_owned(),
                writer: slot,
                document: checkpoint.document.to_string(),
                bytes_done: i64::try_from(checkpoint.bytes_done).unwrap_or(i64::MAX),
                at: millis(Utc::now()),
            })
            .await?;
        fenced(run_id, written)
    }

    /// Writer `writer`'s saved progress in run `run_id`.
    pub async fn checkpoint(
        &self,
        run_id: &str,
        writer: usize,
    ) -> Result<Option<Checkpoint>, StateError> {
        self.checkpoint_in(run_id, i64::try_from(writer).unwrap_or(i64::MAX))
            .await
    }

    /// The source's saved progress in run `run_id`.
    pub async fn source_checkpoint(&self, run_id: &str) -> Result<Option<Checkpoint>, StateError> {
        self.checkpoint_in(run_id, SOURCE_SLOT).await
    }

    async fn checkpoint_in(
        &self,
        run_id: &str,
        slot: i64,
    ) -> Result<Option<Checkpoint>, StateError> {
        let row = sqlx::query(
            "SELECT document, bytes_done FROM ferry_checkpoints WHERE run_id = $1 AND writer = $2",
        )
        .bind(run_id)
        .bind(slot)
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

    /// Deletes finished runs that ended before `before`, with their notification records
    /// and outbox rows, and daemons last seen before then, in one transaction; runs still
    /// going and unsent notifications are kept whatever their age. How many runs went.
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM ferry_notifications WHERE run_id IN
               (SELECT run_id FROM ferry_runs WHERE state <> 'running' AND finished_at < $1)",
        )
        .bind(millis(before))
        .execute(&mut *tx)
        .await?;
        let done =
            sqlx::query("DELETE FROM ferry_runs WHERE state <> 'running' AND finished_at < $1")
                .bind(millis(before))
                .execute(&mut *tx)
                .await?;
        // Daemons not heard from since then (a killed one never says it stopped), and the
        // notifications settled before then.
        sqlx::query("DELETE FROM ferry_daemons WHERE last_seen < $1")
            .bind(millis(before))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM ferry_outbox WHERE state IN ('sent', 'failed') AND created_at < $1",
        )
        .bind(millis(before))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
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

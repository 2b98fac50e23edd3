//! Writes grouped into one transaction: when many runs go at once (a thousand every
//! second), their claims, attempts, checkpoints and outcomes queue up while one batch is
//! being written, and the next transaction takes all that queued, one statement per kind
//! (group commit). Enabled by the daemon ([`Store::batch_writes`]); a command that runs
//! one job writes alone.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot};

use super::queries::millis;
use super::{Claim, StateError, Store};

/// The most claims one statement carries: 9 parameters each, under SQLite's 32,766 and
/// PostgreSQL's 65,535 parameters per statement.
const MAX_BATCH: usize = 3000;

/// A [`Claim`] that owns its fields: to cross to the writer task, or to be kept with its run
/// until the daemon claims everything due at an instant.
#[derive(Debug, Clone)]
pub struct OwnedClaim {
    job: String,
    slot: DateTime<Utc>,
    slot_local: String,
    run_id: String,
    uuid: String,
    owner: String,
    lease: Duration,
    manual: bool,
}

impl OwnedClaim {
    /// `claim`, owned.
    pub fn of(claim: &Claim<'_>) -> OwnedClaim {
        OwnedClaim {
            job: claim.job.to_owned(),
            slot: claim.slot,
            slot_local: claim.slot_local.to_owned(),
            run_id: claim.run_id.to_owned(),
            uuid: claim.uuid.to_owned(),
            owner: claim.owner.to_owned(),
            lease: claim.lease,
            manual: claim.manual,
        }
    }

    /// The claim, borrowed from this.
    pub fn borrowed(&self) -> Claim<'_> {
        Claim {
            job: &self.job,
            slot: self.slot,
            slot_local: &self.slot_local,
            run_id: &self.run_id,
            uuid: &self.uuid,
            owner: &self.owner,
            lease: self.lease,
            manual: self.manual,
        }
    }
}

/// A write waiting for the writer.
#[derive(Debug)]
pub(super) enum Write {
    /// A new run ([`Store::claim`]).
    Claim(OwnedClaim),
    /// An attempt starts ([`Store::attempt`]).
    Attempt {
        run_id: String,
        epoch: i64,
        attempt: i64,
        lease_until: i64,
    },
    /// A writer's progress ([`Store::save_checkpoint`]).
    Checkpoint {
        run_id: String,
        epoch: i64,
        writer: i64,
        document: String,
        bytes_done: i64,
        at: i64,
    },
    /// How a run ended ([`Store::finish`]).
    Finish(Finished),
}

/// A checkpoint as a row: run id, writer, document, bytes done, when, and the epoch that
/// must still hold the run.
type CheckpointRow<'a> = (&'a str, i64, &'a str, i64, i64, i64);

impl Write {
    /// A [`Write::Checkpoint`]'s row.
    fn checkpoint_row(&self) -> Option<CheckpointRow<'_>> {
        match self {
            Write::Checkpoint {
                run_id,
                epoch,
                writer,
                document,
                bytes_done,
                at,
            } => Some((run_id, *writer, document, *bytes_done, *at, *epoch)),
            _ => None,
        }
    }
}

/// A run's outcome, owned, as [`Write::Finish`] carries it.
#[derive(Debug)]
pub(super) struct Finished {
    pub(super) run_id: String,
    /// The epoch that must still hold the run.
    pub(super) epoch: i64,
    pub(super) state: &'static str,
    pub(super) attempts: i64,
    pub(super) at: i64,
    pub(super) bytes: Option<i64>,
    pub(super) sha256: Option<String>,
    pub(super) location: Option<String>,
    pub(super) error: Option<String>,
    /// Who to tell, written to the outbox with the outcome.
    pub(super) notices: Option<super::Notices>,
}

/// A write waiting for the writer, and where its answer goes: for a claim, whether it was
/// recorded; for a run's write, whether the epoch it names still held the run (`false`:
/// refused, see [`super::Tenure`]).
pub(super) type Request = (Write, oneshot::Sender<Result<bool, StateError>>);

/// The writer: takes the first queued write and every one queued behind it and writes
/// them in one transaction, a statement per kind (claims, attempts, checkpoints, outcomes),
/// then answers each (group commit). A failed batch is written one by one, so each caller
/// gets its own answer.
pub(super) async fn writer(store: Store, mut queue: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // One write alone is one statement, without a transaction around it.
        let written = match batch.as_slice() {
            [(write, _)] => store.write_one(write).await.map(|answer| vec![answer]),
            _ => store.write_together(&batch).await,
        };
        match written {
            Ok(answers) => {
                for ((_, answer), written) in batch.into_iter().zip(answers) {
                    let _ = answer.send(Ok(written));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, writes = batch.len(), "A batch of writes failed; writing them one by one.");
                for (write, answer) in batch {
                    let _ = answer.send(store.write_one(&write).await);
                }
            }
        }
    }
}

impl Store {
    /// Writes `write` through the batching writer when [`Store::batch_writes`] started
    /// it, else alone: for a claim, whether it was recorded; for a run's write, whether its
    /// epoch still held the run.
    pub(super) async fn write(&self, write: Write) -> Result<bool, StateError> {
        let Some(queue) = self.writes.get() else {
            return self.write_one(&write).await;
        };
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError((write, _))) = queue.send((write, answer)) {
            return self.write_one(&write).await;
        }
        answered
            .await
            .unwrap_or(Err(StateError::Database(sqlx::Error::WorkerCrashed)))
    }

    /// `write`, alone.
    async fn write_one(&self, write: &Write) -> Result<bool, StateError> {
        match write {
            Write::Claim(claim) => self.claim_one(&claim.borrowed()).await,
            Write::Attempt {
                run_id,
                epoch,
                attempt,
                lease_until,
            } => {
                self.attempt_one(run_id, *epoch, *attempt, *lease_until)
                    .await
            }
            Write::Checkpoint { .. } => {
                let rows: Vec<CheckpointRow<'_>> = write.checkpoint_row().into_iter().collect();
                let mut conn = self.pool.acquire().await?;
                let saved = save_checkpoints(&mut conn, self.backend(), &rows).await?;
                Ok(!saved.is_empty())
            }
            Write::Finish(finished) => {
                let mut tx = self.pool.begin().await?;
                let done = finish_runs(&mut tx, self.backend(), &[finished]).await?;
                tx.commit().await?;
                Ok(!done.is_empty())
            }
        }
    }

    /// `batch` in one transaction: for each write, its answer.
    async fn write_together(&self, batch: &[Request]) -> Result<Vec<bool>, StateError> {
        let backend = self.backend();
        let mut claims = Vec::new();
        let mut attempts = Vec::new();
        let mut checkpoints = std::collections::HashMap::new();
        let mut finished = Vec::new();
        for (write, _) in batch {
            match write {
                Write::Claim(claim) => claims.push(claim.borrowed()),
                Write::Attempt {
                    run_id,
                    epoch,
                    attempt,
                    lease_until,
                } => attempts.push((run_id.as_str(), *attempt, *lease_until, *epoch)),
                // A later save of the same writer's progress replaces an earlier one.
                Write::Checkpoint { .. } => {
                    if let Some(row) = write.checkpoint_row() {
                        checkpoints.insert((row.0, row.1), row);
                    }
                }
                Write::Finish(run) => finished.push(run),
            }
        }
        let mut tx = self.pool.begin().await?;
        let inserted = match claims.is_empty() {
            true => Vec::new(),
            false => self.claim_rows(&mut tx, &claims).await?,
        };
        let mut attempted = HashSet::new();
        if !attempts.is_empty() {
            let mut sql = String::from(
                "UPDATE ferry_runs SET attempts = v.column2, lease_until = v.column3 FROM (VALUES ",
            );
            rows(&mut sql, backend, attempts.len(), 4);
            sql.push_str(
                ") AS v WHERE ferry_runs.run_id = v.column1 AND ferry_runs.epoch = v.column4 RETURNING run_id",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (run_id, attempt, lease_until, epoch) in attempts {
                query = query
                    .bind(run_id)
                    .bind(attempt)
                    .bind(lease_until)
                    .bind(epoch);
            }
            for row in query.fetch_all(&mut *tx).await? {
                attempted.insert(row.try_get::<String, _>("run_id")?);
            }
        }
        let saved = match checkpoints.is_empty() {
            true => HashSet::new(),
            false => {
                let rows: Vec<_> = checkpoints.into_values().collect();
                save_checkpoints(&mut tx, backend, &rows).await?
            }
        };
        let done = match finished.is_empty() {
            true => HashSet::new(),
            false => finish_runs(&mut tx, backend, &finished).await?,
        };
        tx.commit().await?;
        let mut inserted = inserted.into_iter();
        Ok(batch
            .iter()
            .map(|(write, _)| match write {
                Write::Claim(_) => inserted.next().unwrap_or(false),
                Write::Attempt { run_id, .. } => attempted.contains(run_id),
                Write::Checkpoint { run_id, writer, .. } => {
                    saved.contains(&(run_id.clone(), *writer))
                }
                Write::Finish(run) => done.contains(&run.run_id),
            })
            .collect())
    }
}

/// Appends `count` rows of `width` placeholders each to `sql`: `(?, ?), (?, ?)` on SQLite,
/// `($1, $2), ($3, $4)` on PostgreSQL.
fn rows(sql: &mut String, backend: super::Backend, count: usize, width: usize) {
    for row in 0..count {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        placeholders(sql, backend, row * width + 1, width);
        sql.push(')');
    }
}

/// Appends `count` placeholders separated by commas, numbered from `first`: `?, ?` on
/// SQLite, `$3, $4` on PostgreSQL.
fn placeholders(sql: &mut String, backend: super::Backend, first: usize, count: usize) {
    for n in first..first + count {
        if n > first {
            sql.push_str(", ");
        }
        placeholder(sql, backend, n);
    }
}

/// Appends the `n`th (from 1) bound parameter's placeholder to `sql`: SQLite looks `$N`
/// names up one by one in a list (quadratic in the parameters: 10 ms for a 500-claim
/// statement) and binds anonymous `?` by position; PostgreSQL takes only `$N`.
pub(super) fn placeholder(sql: &mut String, backend: super::Backend, n: usize) {
    match backend {
        super::Backend::Sqlite => sql.push('?'),
        super::Backend::Postgres => {
            let _ = std::fmt::Write::write_fmt(sql, format_args!("${n}"));
        }
    }
}

/// Saves writers' progress, each replacing what that writer of that run saved before; no
/// two rows for the same writer. A row is saved only while its epoch holds its run, still
/// running: the `(run_id, writer)` of those saved.
async fn save_checkpoints(
    conn: &mut sqlx::AnyConnection,
    backend: super::Backend,
    checkpoints: &[CheckpointRow<'_>],
) -> Result<HashSet<(String, i64)>, StateError> {
    let mut sql = String::from(
        "INSERT INTO ferry_checkpoints (run_id, writer, document, bytes_done, updated_at) SELECT v.column1, v.column2, v.column3, v.column4, v.column5 FROM (VALUES ",
    );
    rows(&mut sql, backend, checkpoints.len(), 6);
    // The WHERE also tells SQLite's parser that ON CONFLICT is the upsert's, not a join's.
    sql.push_str(
        ") AS v WHERE EXISTS (SELECT 1 FROM ferry_runs r WHERE r.run_id = v.column1 AND r.epoch = v.column6 AND r.state = 'running') \
         ON CONFLICT (run_id, writer) DO UPDATE SET document = excluded.document, bytes_done = excluded.bytes_done, updated_at = excluded.updated_at \
         RETURNING run_id, writer",
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (run_id, writer, document, bytes_done, at, epoch) in checkpoints {
        query = query
            .bind(*run_id)
            .bind(*writer)
            .bind(*document)
            .bind(*bytes_done)
            .bind(*at)
            .bind(*epoch);
    }
    query
        .fetch_all(conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("run_id")?, row.try_get("writer")?)))
        .collect()
}

/// Records how `runs` ended and drops their checkpoints (the caller's transaction makes
/// it one change), each only while its epoch holds it: the run ids recorded.
async fn finish_runs(
    conn: &mut sqlx::AnyConnection,
    backend: super::Backend,
    runs: &[&Finished],
) -> Result<HashSet<String>, StateError> {
    let mut sql = String::from(
        "UPDATE ferry_runs SET state = v.column2, attempts = v.column3, finished_at = v.column4, bytes = v.column5, sha256 = v.column6, location = v.column7, error = v.column8 FROM (VALUES ",
    );
    rows(&mut sql, backend, runs.len(), 9);
    sql.push_str(
        ") AS v WHERE ferry_runs.run_id = v.column1 AND ferry_runs.epoch = v.column9 RETURNING run_id",
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for run in runs {
        query = query
            .bind(run.run_id.as_str())
            .bind(run.state)
            .bind(run.attempts)
            .bind(run.at)
            .bind(run.bytes)
            .bind(run.sha256.as_deref())
            .bind(run.location.as_deref())
            .bind(run.error.as_deref())
            .bind(run.epoch);
    }
    let done: HashSet<String> = query
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get("run_id"))
        .collect::<Result<_, _>>()?;
    if done.is_empty() {
        return Ok(done);
    }
    let notices: Vec<(&str, &super::Notices)> = runs
        .iter()
        .filter(|run| done.contains(&run.run_id))
        .filter_map(|run| Some((run.run_id.as_str(), run.notices.as_ref()?)))
        .collect();
    if !notices.is_empty() {
        let at = runs.first().map_or(0, |run| run.at);
        super::outbox::enqueue(&mut *conn, backend, &notices, at).await?;
    }
    let mut sql = String::from("DELETE FROM ferry_checkpoints WHERE run_id IN (");
    placeholders(&mut sql, backend, 1, done.len());
    sql.push(')');
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for run_id in &done {
        query = query.bind(run_id.as_str());
    }
    query.execute(conn).await?;
    Ok(done)
}

impl Store {
    /// Records a new run for each of `claims` in as few statements as it takes (one up to
    /// 3,000 claims): for each, in order, whether it was recorded (`false`: its slot already
    /// had a run, see [`Store::claim`]). The daemon claims everything due at one instant
    /// this way before any of it starts.
    pub async fn claim_all(&self, claims: &[Claim<'_>]) -> Result<Vec<bool>, StateError> {
        let mut claimed = Vec::with_capacity(claims.len());
        for chunk in claims.chunks(MAX_BATCH) {
            let mut conn = self.pool.acquire().await?;
            claimed.extend(self.claim_rows(&mut conn, chunk).await?);
        }
        Ok(claimed)
    }

    /// Takes back the claims of runs that never started (`run_ids`, claimed ahead of their
    /// slot and then not run): their rows go, as if never claimed. A run that has started
    /// (an attempt counted) or finished keeps its row.
    pub async fn release_all(&self, run_ids: &[String]) -> Result<(), StateError> {
        for chunk in run_ids.chunks(MAX_BATCH) {
            let mut sql = String::from(
                "DELETE FROM ferry_runs WHERE state = 'running' AND attempts = 0 AND run_id IN (",
            );
            placeholders(&mut sql, self.backend(), 1, chunk.len());
            sql.push(')');
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for run_id in chunk {
                query = query.bind(run_id.to_owned());
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Inserts `claims` (at most [`MAX_BATCH`]) in one statement; for each, whether it was
    /// inserted.
    async fn claim_rows(
        &self,
        conn: &mut sqlx::AnyConnection,
        claims: &[Claim<'_>],
    ) -> Result<Vec<bool>, StateError> {
        let mut sql = String::from(
            "INSERT INTO ferry_runs (job, slot, slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at, claim_key) VALUES ",
        );
        let mut param = 0;
        for i in 0..claims.len() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for column in 0..9 {
                if column == 5 {
                    sql.push_str("'running', 0, ");
                }
                param += 1;
                placeholder(&mut sql, self.backend(), param);
                if column < 8 {
                    sql.push_str(", ");
                }
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING run_id");
        let now = Utc::now();
        // Only placeholders are formatted into the statement; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for claim in claims {
            let lease = chrono::Duration::from_std(claim.lease).unwrap_or_default();
            query = query
                .bind(claim.job.to_owned())
                .bind(millis(claim.slot))
                .bind(claim.slot_local.to_owned())
                .bind(claim.run_id.to_owned())
                .bind(claim.uuid.to_owned())
                .bind(claim.owner.to_owned())
                .bind(millis(now + lease))
                // Claimed ahead of its slot, a run starts at the slot.
                .bind(millis(now.max(claim.slot)))
                .bind(if claim.manual {
                    claim.run_id.to_owned()
                } else {
                    String::new()
                });
        }
        let rows = query.fetch_all(conn).await?;
        let inserted: HashSet<String> = rows
            .iter()
            .map(|row| row.try_get::<String, _>("run_id"))
            .collect::<Result<_, _>>()?;
        Ok(claims
            .iter()
            .map(|claim| inserted.contains(claim.run_id))
            .collect())
    }
}

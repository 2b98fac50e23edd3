//! Claims grouped into one statement: when many jobs are due at one instant (a thousand
//! every second), their claims queue up while one is being written, and the next write
//! takes all that queued (group commit). Enabled by the daemon ([`Store::batch_claims`]);
//! a command that claims one run writes it alone.

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

/// A claim waiting for the writer, and where its answer goes.
pub(super) type Request = (OwnedClaim, oneshot::Sender<Result<bool, StateError>>);

/// The writer: takes the first queued claim and every one queued behind it, writes them in
/// one statement and answers each. A failed batch is written claim by claim, so each
/// caller gets its own answer.
pub(super) async fn writer(store: Store, mut queue: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let claims: Vec<Claim<'_>> = batch.iter().map(|(claim, _)| claim.borrowed()).collect();
        match store.claim_many(&claims).await {
            Ok(inserted) => {
                drop(claims);
                for ((_, answer), inserted) in batch.into_iter().zip(inserted) {
                    let _ = answer.send(Ok(inserted));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, claims = batch.len(), "A batch of claims failed; writing them one by one.");
                for (claim, answer) in batch {
                    let _ = answer.send(store.claim_one(&claim.borrowed()).await);
                }
            }
        }
    }
}

impl Store {
    /// Records a new run for each of `claims` in as few statements as it takes (one up to
    /// 3,000 claims): for each, in order, whether it was recorded (`false`: its slot already
    /// had a run, see [`Store::claim`]). The daemon claims everything due at one instant
    /// this way before any of it starts.
    pub async fn claim_all(&self, claims: &[Claim<'_>]) -> Result<Vec<bool>, StateError> {
        let mut claimed = Vec::with_capacity(claims.len());
        for chunk in claims.chunks(MAX_BATCH) {
            claimed.extend(self.claim_many(chunk).await?);
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
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                self.placeholder(&mut sql, i + 1);
            }
            sql.push(')');
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for run_id in chunk {
                query = query.bind(run_id.to_owned());
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Appends the `n`th (from 1) bound parameter's placeholder to `sql`: SQLite looks `$N`
    /// names up one by one in a list (quadratic in the parameters: 10 ms for a 500-claim
    /// statement) and binds anonymous `?` by position; PostgreSQL takes only `$N`.
    fn placeholder(&self, sql: &mut String, n: usize) {
        match self.backend() {
            super::Backend::Sqlite => sql.push('?'),
            super::Backend::Postgres => {
                let _ = std::fmt::Write::write_fmt(sql, format_args!("${n}"));
            }
        }
    }

    /// Inserts `claims` (at most [`MAX_BATCH`]) in one statement; for each, whether it was
    /// inserted.
    async fn claim_many(&self, claims: &[Claim<'_>]) -> Result<Vec<bool>, StateError> {
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
                self.placeholder(&mut sql, param);
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
        let rows = query.fetch_all(&self.pool).await?;
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

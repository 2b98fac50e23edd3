//! Claims grouped into one statement: when many jobs are due at one instant (a thousand
//! every second), their claims queue up while one is being written, and the next write
//! takes all that queued (group commit). Enabled by the daemon ([`Store::batch_claims`]);
//! a command that claims one run writes it alone.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot};

use super::queries::millis;
use super::{Claim, StateError, Store};

/// The most claims one statement carries (11 parameters each, well under SQLite's limit).
const MAX_BATCH: usize = 500;

/// A [`Claim`] that owns its fields, to cross to the writer task.
#[derive(Debug, Clone)]
pub(super) struct OwnedClaim {
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
    pub(super) fn of(claim: &Claim<'_>) -> OwnedClaim {
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

    fn borrowed(&self) -> Claim<'_> {
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
        let claims: Vec<OwnedClaim> = batch.iter().map(|(claim, _)| claim.clone()).collect();
        match store.claim_many(&claims).await {
            Ok(inserted) => {
                for ((claim, answer), _) in batch.into_iter().zip(&claims) {
                    let _ = answer.send(Ok(inserted.contains(&claim.run_id)));
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
    /// Inserts `claims` in one statement; the run ids that were inserted (the others'
    /// slots already had a run).
    async fn claim_many(
        &self,
        claims: &[OwnedClaim],
    ) -> Result<std::collections::HashSet<String>, StateError> {
        let mut sql = String::from(
            "INSERT INTO ferry_runs (job, slot, slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at, claim_key) VALUES ",
        );
        for i in 0..claims.len() {
            let p = i * 9;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, 'running', 0, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7,
                p + 8,
                p + 9
            ));
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING run_id");
        let now = Utc::now();
        // Only placeholders are formatted into the statement; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for claim in claims {
            let lease = chrono::Duration::from_std(claim.lease).unwrap_or_default();
            query = query
                .bind(claim.job.clone())
                .bind(millis(claim.slot))
                .bind(claim.slot_local.clone())
                .bind(claim.run_id.clone())
                .bind(claim.uuid.clone())
                .bind(claim.owner.clone())
                .bind(millis(now + lease))
                .bind(millis(now))
                .bind(if claim.manual {
                    claim.run_id.clone()
                } else {
                    String::new()
                });
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>("run_id"))
            .collect::<Result<_, _>>()
            .map_err(StateError::from)
    }
}

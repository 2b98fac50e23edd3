//! The partition registry's statements (seed 003): sources with their access tokens,
//! providers, partitions with their latest lock state, and each partition's event log.
//!
//! Every change is one transaction: a partition's row and its event are written together or
//! not at all. Access tokens are stored only as their SHA-256 and compared in constant time.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq as _;

use super::queries::{instant, millis};
use super::{StateError, Store};
use crate::partition::{Lock, Readiness};

/// A registered source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRecord {
    /// Its name (`shop.orders`).
    pub name: String,
    /// Who answers for it.
    pub owner: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// A registered provider of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderRecord {
    /// Its name.
    pub name: String,
    /// The source it writes.
    pub source: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// A registered partition and its latest state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionRecord {
    /// The source.
    pub source: String,
    /// The provider that registered it.
    pub provider: String,
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
    /// `locked` or `unlocked` (a registered partition is unlocked until locked).
    pub state: &'static str,
    /// The lock, when locked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
}

/// A change to a partition's lock.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Locked by `actor`, for ferry run `run_id` when a job locks it, with `reason` when it
    /// stays locked because its run failed.
    Lock {
        /// The ferry run writing it.
        run_id: Option<&'a str>,
        /// Why it stays locked.
        reason: Option<&'a str>,
    },
    /// Unlocked: the data is complete.
    Unlock,
}

/// What a registry call could not do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such source.
    #[error("no source named {0:?} is registered")]
    UnknownSource(String),
    /// No such provider of the source.
    #[error("no provider named {provider:?} is registered for source {source_name:?}")]
    UnknownProvider {
        /// The source.
        source_name: String,
        /// The provider.
        provider: String,
    },
    /// No such partition.
    #[error(
        "no partition [{start}, {end}) of source {source_name:?} by provider {provider:?} is registered"
    )]
    UnknownPartition {
        /// The source.
        source_name: String,
        /// The provider.
        provider: String,
        /// Its start.
        start: String,
        /// Its end.
        end: String,
    },
    /// The token is not the source's (or no source has it).
    #[error("the access token is not valid for this source")]
    BadToken,
    /// Already registered.
    #[error("{0} is already registered")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StateError),
}

impl From<sqlx::Error> for RegistryError {
    fn from(err: sqlx::Error) -> RegistryError {
        RegistryError::Store(StateError::Database(err))
    }
}

/// A fresh access token: 256 random bits, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// What the store keeps of a token.
fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A partition row's lock, when its latest event is a lock.
fn lock_from_row(row: &AnyRow) -> Result<Option<Lock>, sqlx::Error> {
    if row.try_get::<i64, _>("locked")? == 0 {
        return Ok(None);
    }
    Ok(Some(Lock {
        by: row
            .try_get::<Option<String>, _>("locked_by")?
            .unwrap_or_default(),
        since: instant(
            row.try_get::<Option<i64>, _>("locked_since")?
                .unwrap_or_default(),
        ),
        run_id: row.try_get("run_id")?,
        reason: row.try_get("reason")?,
    }))
}

fn partition_from_row(row: &AnyRow) -> Result<PartitionRecord, sqlx::Error> {
    let lock = lock_from_row(row)?;
    let locked = lock.is_some();
    Ok(PartitionRecord {
        source: row.try_get("source")?,
        provider: row.try_get("provider")?,
        start: instant(row.try_get("start_ms")?),
        end: instant(row.try_get("end_ms")?),
        state: if locked { "locked" } else { "unlocked" },
        lock,
        updated_at: instant(row.try_get("updated_at")?),
    })
}

/// `SELECT` of every partition column, as a literal (queries must be static strings).
macro_rules! select_partitions {
    ($rest:literal) => {
        concat!(
            "SELECT source, provider, start_ms, end_ms, locked, locked_by, locked_since, run_id, reason, updated_at FROM ferry_partitions ",
            $rest
        )
    };
}

impl Store {
    /// Registers source `name`, whose access token is `token`. `Exists` when the name is
    /// taken: a second registration gets no token.
    pub async fn register_source(
        &self,
        name: &str,
        owner: &str,
        token: &str,
    ) -> Result<SourceRecord, RegistryError> {
        let now = Utc::now();
        let done = sqlx::query(
            "INSERT INTO ferry_sources (name, owner, token_hash, longest_ms, created_at)
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(owner)
        .bind(token_hash(token))
        .bind(millis(now))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Exists(format!("source {name:?}")));
        }
        Ok(SourceRecord {
            name: name.to_owned(),
            owner: owner.to_owned(),
            created_at: instant(millis(now)),
        })
    }

    /// Gives source `name` a new access token (the old one stops working).
    pub async fn rotate_token(&self, name: &str, token: &str) -> Result<(), RegistryError> {
        let done = sqlx::query("UPDATE ferry_sources SET token_hash = $1 WHERE name = $2")
            .bind(token_hash(token))
            .bind(name)
            .execute(&self.pool)
            .await?;
        match done.rows_affected() {
            0 => Err(RegistryError::UnknownSource(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Source `name`, if registered.
    pub async fn source(&self, name: &str) -> Result<Option<SourceRecord>, RegistryError> {
        let row = sqlx::query("SELECT name, owner, created_at FROM ferry_sources WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| -> Result<SourceRecord, sqlx::Error> {
            Ok(SourceRecord {
                name: row.try_get("name")?,
                owner: row.try_get("owner")?,
                created_at: instant(row.try_get("created_at")?),
            })
        })
        .transpose()
        .map_err(RegistryError::from)
    }

    /// The source whose access token is `token`.
    pub async fn source_of_token(&self, token: &str) -> Result<String, RegistryError> {
        let row = sqlx::query("SELECT name FROM ferry_sources WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(row.try_get("name")?),
            None => Err(RegistryError::BadToken),
        }
    }

    /// Checks that `token` is source `name`'s (in constant time): `UnknownSource` or
    /// `BadToken` otherwise.
    pub async fn check_token(&self, name: &str, token: &str) -> Result<(), RegistryError> {
        let row = sqlx::query("SELECT token_hash FROM ferry_sources WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Err(RegistryError::UnknownSource(name.to_owned()));
        };
        let stored: String = row.try_get("token_hash")?;
        match bool::from(stored.as_bytes().ct_eq(token_hash(token).as_bytes())) {
            true => Ok(()),
            false => Err(RegistryError::BadToken),
        }
    }

    /// Registers provider `name` of `source`. `Exists` when it already is.
    pub async fn register_provider(
        &self,
        source: &str,
        name: &str,
    ) -> Result<ProviderRecord, RegistryError> {
        let now = instant(millis(Utc::now()));
        let done = sqlx::query(
            "INSERT INTO ferry_providers (source, name, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (source, name) DO NOTHING",
        )
        .bind(source)
        .bind(name)
        .bind(millis(now))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Exists(format!(
                "provider {name:?} of source {source:?}"
            )));
        }
        Ok(ProviderRecord {
            name: name.to_owned(),
            source: source.to_owned(),
            created_at: now,
        })
    }

    /// Registers the partition `[start, end)` of `source` by `provider` (both registered).
    /// `Exists` when it already is.
    pub async fn register_partition(
        &self,
        source: &str,
        provider: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<PartitionRecord, RegistryError> {
        // Providers are never removed: checked before the transaction, which on SQLite
        // holds the one connection.
        self.check_provider(source, provider).await?;
        let mut tx = self.pool.begin().await?;
        let now = Utc::now();
        let id = uuid::Uuid::now_v7().to_string();
        let done = sqlx::query(
            "INSERT INTO ferry_partitions (id, source, provider, start_ms, end_ms, locked, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 0, $6, $6)
             ON CONFLICT (source, provider, start_ms, end_ms) DO NOTHING",
        )
        .bind(&id)
        .bind(source)
        .bind(provider)
        .bind(millis(start))
        .bind(millis(end))
        .bind(millis(now))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Exists(format!(
                "partition [{}, {}) of source {source:?} by provider {provider:?}",
                start.to_rfc3339(),
                end.to_rfc3339()
            )));
        }
        sqlx::query("UPDATE ferry_sources SET longest_ms = $1 WHERE name = $2 AND longest_ms < $1")
            .bind(millis(end) - millis(start))
            .bind(source)
            .execute(&mut *tx)
            .await?;
        extend_coverage(&mut tx, source, millis(start), millis(end)).await?;
        insert_event(&mut tx, &id, "registered", provider, None, None, now).await?;
        tx.commit().await?;
        Ok(PartitionRecord {
            source: source.to_owned(),
            provider: provider.to_owned(),
            start,
            end,
            state: "unlocked",
            lock: None,
            updated_at: instant(millis(now)),
        })
    }

    /// Locks or unlocks a registered partition, recording the event.
    pub async fn change_partition(
        &self,
        source: &str,
        provider: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        change: Change<'_>,
    ) -> Result<PartitionRecord, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT id FROM ferry_partitions WHERE source = $1 AND provider = $2 AND start_ms = $3 AND end_ms = $4",
        )
        .bind(source)
        .bind(provider)
        .bind(millis(start))
        .bind(millis(end))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            self.check_provider(source, provider).await?;
            return Err(RegistryError::UnknownPartition {
                source_name: source.to_owned(),
                provider: provider.to_owned(),
                start: start.to_rfc3339(),
                end: end.to_rfc3339(),
            });
        };
        let id: String = row.try_get("id")?;
        let now = Utc::now();
        let (event, run_id, reason) = match change {
            Change::Lock { run_id, reason } => ("locked", run_id, reason),
            Change::Unlock => ("unlocked", None, None),
        };
        let locked = matches!(change, Change::Lock { .. });
        sqlx::query(
            "UPDATE ferry_partitions SET locked = $1, locked_by = $2, locked_since = $3, run_id = $4, reason = $5, updated_at = $6
             WHERE id = $7",
        )
        .bind(i64::from(locked))
        .bind(locked.then_some(provider))
        .bind(locked.then_some(millis(now)))
        .bind(run_id)
        .bind(reason)
        .bind(millis(now))
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, &id, event, provider, run_id, reason, now).await?;
        tx.commit().await?;
        self.changes.notify_waiters();
        let since = instant(millis(now));
        Ok(PartitionRecord {
            source: source.to_owned(),
            provider: provider.to_owned(),
            start,
            end,
            state: if locked { "locked" } else { "unlocked" },
            lock: locked.then(|| Lock {
                by: provider.to_owned(),
                since,
                run_id: run_id.map(str::to_owned),
                reason: reason.map(str::to_owned),
            }),
            updated_at: since,
        })
    }

    /// A ferry job's partition for a run: source, provider and partition are registered if
    /// need be (a source created here gets a token nobody holds, until `ferry sources
    /// register --rotate`), then locked for `run_id`.
    pub async fn lock_for_run(
        &self,
        source: &str,
        job: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        run_id: &str,
    ) -> Result<PartitionRecord, RegistryError> {
        let owner = format!("ferry job {job}");
        match self.register_source(source, &owner, &new_token()).await {
            Ok(_) | Err(RegistryError::Exists(_)) => {}
            Err(err) => return Err(err),
        }
        match self.register_provider(source, job).await {
            Ok(_) | Err(RegistryError::Exists(_)) => {}
            Err(err) => return Err(err),
        }
        match self.register_partition(source, job, start, end).await {
            Ok(_) | Err(RegistryError::Exists(_)) => {}
            Err(err) => return Err(err),
        }
        let lock = Change::Lock {
            run_id: Some(run_id),
            reason: None,
        };
        self.change_partition(source, job, start, end, lock).await
    }

    /// Readiness of `source` over `[start, end)`, from two short index ranges whatever the
    /// interval's length: the covered stretch that reaches `start` (and the one after it),
    /// and the first locked partition overlapping the interval. Answers as
    /// [`crate::partition::readiness`] does over the same partitions (property-tested).
    pub async fn readiness(
        &self,
        source: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Readiness, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query("SELECT longest_ms FROM ferry_sources WHERE name = $1")
            .bind(source)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else {
            return Err(RegistryError::UnknownSource(source.to_owned()));
        };
        if end <= start {
            return Ok(Readiness::Ready);
        }
        let longest: i64 = row.try_get("longest_ms")?;
        let (from, until) = (millis(start), millis(end));
        // The first two covered stretches ending after `start` (disjoint, so in order).
        let stretches = sqlx::query(
            "SELECT start_ms, end_ms FROM ferry_coverage WHERE source = $1 AND end_ms > $2
             ORDER BY end_ms LIMIT 2",
        )
        .bind(source)
        .bind(from)
        .fetch_all(&mut *conn)
        .await?;
        let mut stretches = stretches
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("start_ms")?,
                    row.try_get::<i64, _>("end_ms")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
            .into_iter();
        // The first uncovered instant in [start, end), and where that gap ends.
        let gap = match stretches.next() {
            None => Some((from, until)),
            Some((s, _)) if s > from => Some((from, s.min(until))),
            Some((_, e)) if e >= until => None,
            Some((_, e)) => Some((e, stretches.next().map_or(until, |(s, _)| s.min(until)))),
        };
        // A locked partition overlapping the interval, and starting no later than the gap
        // (a later one is behind the gap, which is the earlier problem).
        let locked = sqlx::query(
            "SELECT start_ms, end_ms, locked, locked_by, locked_since, run_id, reason FROM ferry_partitions
             WHERE source = $1 AND locked = 1 AND start_ms >= $2 AND start_ms <= $3 AND start_ms < $4 AND end_ms > $5
             ORDER BY start_ms, end_ms LIMIT 1",
        )
        .bind(source)
        .bind(from.saturating_sub(longest))
        .bind(gap.map_or(until, |(g, _)| g))
        .bind(until)
        .bind(from)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = locked
            && let Some(lock) = lock_from_row(&row)?
        {
            return Ok(Readiness::Locked {
                start: instant(row.try_get("start_ms")?),
                end: instant(row.try_get("end_ms")?),
                lock,
            });
        }
        Ok(match gap {
            Some((g, e)) => Readiness::Uncovered {
                start: instant(g),
                end: instant(e),
            },
            None => Readiness::Ready,
        })
    }

    /// Builds the coverage of partitions registered before migration 4 added it: a no-op
    /// (two counts) once it exists.
    pub(super) async fn backfill_coverage(&self) -> Result<(), StateError> {
        let count = |sql: &'static str| async move {
            let row = sqlx::query(sql).fetch_one(&self.pool).await?;
            row.try_get::<i64, _>(0)
        };
        if count("SELECT count(*) FROM ferry_coverage").await? > 0
            || count("SELECT count(*) FROM ferry_partitions").await? == 0
        {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT source, start_ms, end_ms FROM ferry_partitions ORDER BY source, start_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut stretches: Vec<(String, i64, i64)> = Vec::new();
        for row in &rows {
            let (source, start, end): (String, i64, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            match stretches.last_mut() {
                Some((s, _, reach)) if *s == source && start <= *reach => {
                    *reach = (*reach).max(end)
                }
                _ => stretches.push((source, start, end)),
            }
        }
        let mut tx = self.pool.begin().await?;
        for (source, start, end) in &stretches {
            sqlx::query(
                "INSERT INTO ferry_coverage (source, start_ms, end_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (source, end_ms) DO NOTHING",
            )
            .bind(source)
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(stretches = stretches.len(), "Partition coverage built.");
        Ok(())
    }

    /// How many partitions each source has, locked and not: `(source, locked, count)`.
    pub async fn partition_counts(&self) -> Result<Vec<(String, bool, i64)>, RegistryError> {
        let rows = sqlx::query(
            "SELECT source, locked, COUNT(*) AS n FROM ferry_partitions GROUP BY source, locked ORDER BY source, locked",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let locked: i64 = row.try_get("locked")?;
            out.push((row.try_get("source")?, locked != 0, row.try_get("n")?));
        }
        Ok(out)
    }

    /// The latest `limit` partitions (by start), of `source` or of every source.
    pub async fn partitions(
        &self,
        source: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PartitionRecord>, RegistryError> {
        let rows = match source {
            Some(source) => {
                sqlx::query(select_partitions!(
                    "WHERE source = $1 ORDER BY start_ms DESC, provider LIMIT $2"
                ))
                .bind(source)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(select_partitions!(
                    "ORDER BY start_ms DESC, source, provider LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(partition_from_row)
            .collect::<Result<_, _>>()
            .map_err(RegistryError::from)
    }

    async fn check_provider(&self, source: &str, provider: &str) -> Result<(), RegistryError> {
        let known = sqlx::query("SELECT 1 FROM ferry_providers WHERE source = $1 AND name = $2")
            .bind(source)
            .bind(provider)
            .fetch_optional(&self.pool)
            .await?;
        match known {
            Some(_) => Ok(()),
            None => Err(self.unknown_provider(source, provider).await),
        }
    }

    /// Which of `source` and `provider` is unknown.
    async fn unknown_provider(&self, source: &str, provider: &str) -> RegistryError {
        match self.source(source).await {
            Ok(None) => RegistryError::UnknownSource(source.to_owned()),
            Err(err) => err,
            Ok(Some(_)) => RegistryError::UnknownProvider {
                source_name: source.to_owned(),
                provider: provider.to_owned(),
            },
        }
    }
}

/// Adds `[start, end)` to `source`'s coverage: merged with every stretch it overlaps or
/// touches, so the stretches stay disjoint and apart.
async fn extend_coverage(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    source: &str,
    start: i64,
    end: i64,
) -> Result<(), sqlx::Error> {
    let touching = sqlx::query(
        "SELECT start_ms, end_ms FROM ferry_coverage WHERE source = $1 AND end_ms >= $2 AND start_ms <= $3",
    )
    .bind(source)
    .bind(start)
    .bind(end)
    .fetch_all(&mut **tx)
    .await?;
    let (mut merged_start, mut merged_end) = (start, end);
    for row in &touching {
        merged_start = merged_start.min(row.try_get("start_ms")?);
        merged_end = merged_end.max(row.try_get("end_ms")?);
    }
    if !touching.is_empty() {
        sqlx::query(
            "DELETE FROM ferry_coverage WHERE source = $1 AND end_ms >= $2 AND start_ms <= $3",
        )
        .bind(source)
        .bind(start)
        .bind(end)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("INSERT INTO ferry_coverage (source, start_ms, end_ms) VALUES ($1, $2, $3)")
        .bind(source)
        .bind(merged_start)
        .bind(merged_end)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    partition_id: &str,
    event: &str,
    actor: &str,
    run_id: Option<&str>,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ferry_partition_events (id, partition_id, event, actor, run_id, reason, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(partition_id)
    .bind(event)
    .bind(actor)
    .bind(run_id)
    .bind(reason)
    .bind(millis(at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

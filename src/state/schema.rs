//! The store's schema: numbered migrations embedded in the binary, run by sqlx at open.
//! A released migration is never edited; a change is a new one.

use std::borrow::Cow;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

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
    (
        3,
        "partition registry",
        // `longest_ms` is the longest partition a source has had: a partition overlapping
        // [a, b) starts in [a - longest, b). `locked` and the lock's columns are the
        // partition's latest event, so readiness needs no join; the events are the history.
        "CREATE TABLE ferry_sources (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            longest_ms BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL
        );
        CREATE TABLE ferry_providers (
            source TEXT NOT NULL REFERENCES ferry_sources (name),
            name TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (source, name)
        );
        CREATE TABLE ferry_partitions (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            provider TEXT NOT NULL,
            start_ms BIGINT NOT NULL,
            end_ms BIGINT NOT NULL,
            locked BIGINT NOT NULL DEFAULT 0,
            locked_by TEXT,
            locked_since BIGINT,
            run_id TEXT,
            reason TEXT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            UNIQUE (source, provider, start_ms, end_ms),
            FOREIGN KEY (source, provider) REFERENCES ferry_providers (source, name)
        );
        CREATE INDEX ferry_partitions_range ON ferry_partitions (source, start_ms);
        CREATE TABLE ferry_partition_events (
            id TEXT PRIMARY KEY,
            partition_id TEXT NOT NULL REFERENCES ferry_partitions (id),
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            run_id TEXT,
            reason TEXT,
            at BIGINT NOT NULL
        );
        CREATE INDEX ferry_partition_events_partition ON ferry_partition_events (partition_id, at);",
    ),
    (
        4,
        "partition coverage",
        // Readiness from two short index ranges whatever the interval's length:
        // `ferry_coverage` is the union of a source's partitions as disjoint, non-touching
        // stretches (partitions are never removed, so it only grows and merges), and a
        // partial index holds the locked partitions. Stores that registered partitions
        // before this migration get their coverage rebuilt at open (`Store::open`).
        "CREATE TABLE ferry_coverage (
            source TEXT NOT NULL,
            start_ms BIGINT NOT NULL,
            end_ms BIGINT NOT NULL,
            PRIMARY KEY (source, end_ms)
        );
        CREATE INDEX ferry_partitions_locked ON ferry_partitions (source, start_ms) WHERE locked = 1;",
    ),
    (
        5,
        "manual runs",
        // A run is keyed on (job, slot, claim_key): '' for the schedule's one run of a slot,
        // the run id for a manual run (`ferry trigger`, `ferry backfill`), which never
        // collides with another. SQLite cannot change a primary key in place: the table is
        // rebuilt, the same way on both backends.
        "CREATE TABLE ferry_runs_v5 (
            job TEXT NOT NULL,
            slot BIGINT NOT NULL,
            claim_key TEXT NOT NULL DEFAULT '',
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
            PRIMARY KEY (job, slot, claim_key)
        );
        INSERT INTO ferry_runs_v5 (job, slot, claim_key, slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at, finished_at, bytes, sha256, location, error)
            SELECT job, slot, '', slot_local, run_id, uuid, state, attempts, owner, lease_until, started_at, finished_at, bytes, sha256, location, error FROM ferry_runs;
        DROP TABLE ferry_runs;
        ALTER TABLE ferry_runs_v5 RENAME TO ferry_runs;
        CREATE INDEX ferry_runs_state ON ferry_runs (state);",
    ),
    (
        6,
        "fencing epochs and the daemon registry",
        // A run's `epoch` grows by one at each take-over; every write of the run's owner
        // names the epoch it holds, so a daemon that lost the run (paused past its lease,
        // cut off from the store) has its late writes refused. Each daemon heartbeats its
        // row in `ferry_daemons`.
        "ALTER TABLE ferry_runs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 1;
        CREATE TABLE ferry_daemons (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid BIGINT NOT NULL,
            version TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            last_seen BIGINT NOT NULL,
            running BIGINT NOT NULL DEFAULT 0,
            stopped_at BIGINT
        );",
    ),
    (
        7,
        "notification outbox",
        // A run's notifications, written in the transaction that records its outcome, so
        // none is lost to a crash. A sender claims a row (`sending`, `claimed_by`, until
        // `claimed_until`) before it calls the notifier; a row whose sender died is
        // claimed again once its claim runs out.
        "CREATE TABLE ferry_outbox (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            job TEXT NOT NULL,
            notifier TEXT NOT NULL,
            report TEXT NOT NULL,
            state TEXT NOT NULL,
            claimed_by TEXT,
            claimed_until BIGINT,
            attempts BIGINT NOT NULL DEFAULT 0,
            error TEXT,
            created_at BIGINT NOT NULL,
            sent_at BIGINT,
            UNIQUE (run_id, notifier)
        );
        CREATE INDEX ferry_outbox_state ON ferry_outbox (state, created_at);",
    ),
    (
        8,
        "failure streaks",
        // Per job and notifier: the failures in a row since `since`, how many of them were
        // not told (`repeat_after`), and when one was last told. Gone at the next success.
        "CREATE TABLE ferry_streaks (
            job TEXT NOT NULL,
            notifier TEXT NOT NULL,
            failures BIGINT NOT NULL,
            suppressed BIGINT NOT NULL,
            since BIGINT NOT NULL,
            last_told BIGINT,
            PRIMARY KEY (job, notifier)
        );",
    ),
];

pub(super) fn migrator() -> Migrator {
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

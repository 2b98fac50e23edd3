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

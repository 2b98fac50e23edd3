//! What the store keeps, as Rust sees it: runs, claims, outcomes, notifications and
//! checkpoints.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Claimed and not finished: in progress, or left behind by a daemon that died.
    Running,
    /// Every writer delivered.
    Succeeded,
    /// Failed after its last attempt.
    Failed,
}

impl RunState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    pub(super) fn parse(text: &str) -> RunState {
        match text {
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            _ => RunState::Running,
        }
    }
}

/// One run as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// The job.
    pub job: String,
    /// The slot, as a UTC instant.
    pub slot: DateTime<Utc>,
    /// The slot as the job's time zone shows it (RFC 3339).
    pub slot_local: String,
    /// The run's id.
    pub run_id: String,
    /// The run's `{uuid}`.
    pub uuid: String,
    /// How it stands.
    pub state: RunState,
    /// Attempts started.
    pub attempts: u32,
    /// The daemon that owns it (host and process).
    pub owner: String,
    /// Until when the owner's claim holds unless renewed.
    pub lease_until: DateTime<Utc>,
    /// When it was claimed.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Bytes delivered.
    pub bytes: Option<u64>,
    /// sha256 of the delivered bytes.
    pub sha256: Option<String>,
    /// Where the data went (every writer's location, comma-separated).
    pub location: Option<String>,
    /// The error chain, when it failed.
    pub error: Option<String>,
    /// Started by hand (`ferry trigger`, `ferry backfill`), not by the schedule.
    pub manual: bool,
    /// The owner's epoch: one at the claim, one more at each take-over.
    pub epoch: i64,
}

/// What [`Store::claim`] records for a new run.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// The job.
    pub job: &'a str,
    /// The slot, as a UTC instant.
    pub slot: DateTime<Utc>,
    /// The slot in the job's time zone (RFC 3339).
    pub slot_local: &'a str,
    /// The new run's id.
    pub run_id: &'a str,
    /// The new run's `{uuid}`.
    pub uuid: &'a str,
    /// The claiming daemon.
    pub owner: &'a str,
    /// How long the claim holds without renewal.
    pub lease: Duration,
    /// A manual run: it never collides with the schedule's run of the slot or with another
    /// manual run.
    pub manual: bool,
}

/// How a run ended, as [`Store::finish`] records it.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// Succeeded or failed.
    pub state: RunState,
    /// Attempts made.
    pub attempts: u32,
    /// Bytes delivered.
    pub bytes: Option<u64>,
    /// sha256 of the delivered bytes.
    pub sha256: Option<&'a str>,
    /// Where the data went.
    pub location: Option<&'a str>,
    /// The error chain.
    pub error: Option<&'a str>,
}

impl<'a> Outcome<'a> {
    /// A run closed as failed without a delivery (it cannot be resumed), saying why.
    pub fn failed(attempts: u32, error: &'a str) -> Outcome<'a> {
        Outcome {
            state: RunState::Failed,
            attempts,
            bytes: None,
            sha256: None,
            location: None,
            error: Some(error),
        }
    }
}

/// How a notification about a run went, as [`Store::record_notification`] keeps it.
#[derive(Debug, Clone)]
pub struct NotificationRecord<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The notifier's name.
    pub notifier: &'a str,
    /// Whether it was sent.
    pub sent: bool,
    /// Tries made.
    pub attempts: u32,
    /// The last try's error chain, when it was not sent.
    pub error: Option<&'a str>,
}

/// A notification's outcome, read back from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotificationOutcome {
    /// The notifier's name.
    pub notifier: String,
    /// Whether it was sent.
    pub sent: bool,
    /// Tries made.
    pub attempts: u32,
    /// The last try's error chain, when it was not sent.
    pub error: Option<String>,
}

/// A writer's saved progress in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The writer's own description of where it got to.
    pub document: serde_json::Value,
    /// Bytes of the payload the writer has made durable.
    pub bytes_done: u64,
}

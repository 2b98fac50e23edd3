//! What a finished run reports: its status, its receipts ([`Delivery`], one per writer)
//! and, when it failed, why.
//!
//! A leaf: writers produce receipts, the runner assembles a [`RunReport`], and notifiers,
//! the state store and the CLI read it, without any of them importing the others.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// A receipt for one writer's delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The writer's kind (`local`, …).
    pub writer: String,
    /// Where the data went: a path, a URL, a bucket and key.
    pub location: String,
    /// A link a person can open, when there is one.
    pub link: Option<String>,
    /// How many bytes were delivered.
    pub bytes: u64,
    /// The sha256 of the delivered bytes, in lower-case hex.
    pub sha256: String,
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({} bytes, sha256 {})",
            self.writer, self.location, self.bytes, self.sha256
        )?;
        if let Some(link) = &self.link {
            write!(f, " {link}")?;
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every writer delivered.
    Succeeded,
    /// The run failed after its last attempt.
    Failed,
    /// Another daemon took the run over while this one ran it (this daemon was cut off
    /// from the store, or paused, past the run's lease): this daemon stopped, and the run's
    /// outcome is the other's to record and tell.
    Lost,
}

impl RunStatus {
    /// `succeeded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Lost => "lost",
        }
    }
}

/// A run's failure, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    /// The kind of the last error.
    pub kind: ErrorKind,
    /// The last error and its causes, outermost first.
    pub chain: Vec<String>,
    /// Why no further attempt was made.
    pub gave_up: String,
}

/// The facts of a finished run, handed to success and failure handlers (kept as JSON in the
/// store's notification outbox until every handler was told).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The job's name.
    pub job: String,
    /// The run's id.
    pub run_id: String,
    /// The scheduled time the run was for, in the job's time zone (RFC 3339).
    pub slot: String,
    /// How it ended.
    pub status: RunStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the run began.
    pub started_at: DateTime<Utc>,
    /// How long the run took, retries and waits included.
    #[serde(
        serialize_with = "serialize_secs",
        deserialize_with = "deserialize_secs"
    )]
    pub duration: Duration,
    /// One receipt per writer that delivered.
    pub deliveries: Vec<Delivery>,
    /// How far into the payload the run resumed from checkpoints (0: it never resumed).
    pub resumed_from: u64,
    /// The failure, when the run failed.
    pub error: Option<FailureReport>,
    /// Where the run stands in its job's failures in a row, as the notifier being told
    /// hears of them (`repeat_after`, `recovery`); set per notifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streak: Option<StreakReport>,
}

/// A run's place in its job's failures in a row, as one notifier hears of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreakReport {
    /// This failure is one of several in a row: `failures` since `since`, of which
    /// `suppressed` were not told (`repeat_after`).
    StillFailing {
        /// Failed runs in a row, this one included.
        failures: u32,
        /// Of those, how many this notifier was not told of.
        suppressed: u32,
        /// When the first of them ended.
        since: DateTime<Utc>,
    },
    /// This success ends `failures` failed runs in a row since `since`.
    Recovered {
        /// Failed runs in a row before this one.
        failures: u32,
        /// When the first of them ended.
        since: DateTime<Utc>,
    },
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn deserialize_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}

impl RunReport {
    /// Bytes delivered (the largest receipt: every writer gets the same bytes).
    pub fn bytes(&self) -> u64 {
        self.deliveries.iter().map(|d| d.bytes).max().unwrap_or(0)
    }
}

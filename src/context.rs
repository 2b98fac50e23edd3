//! The facts of one run that every part of a delivery sees: [`RunContext`].

use chrono::DateTime;
use chrono_tz::Tz;
use uuid::Uuid;

use crate::state;

/// The facts of one run that sources, writers, templates and handlers see.
///
/// A run is one firing of a job for one slot; it may take several attempts. Everything here
/// but `attempt` stays the same across attempts, so templates render identically each time.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The job's name.
    pub job: String,
    /// A unique, time-ordered id for this run.
    pub run_id: String,
    /// A random uuid for `{uuid}` in templates, fixed for the run.
    pub uuid: Uuid,
    /// The scheduled time of the run (its slot) in the job's time zone.
    pub slot: DateTime<Tz>,
    /// The attempt in progress, from 1.
    pub attempt: u32,
    /// Where the run's attempts, checkpoints and outcome are recorded, when anywhere.
    pub ledger: Option<state::Ledger>,
    /// The run's hold on its row in the store: the epoch its writes name, and whether
    /// another daemon has taken it over.
    pub tenure: state::Tenure,
    /// The file being delivered, when the source delivers files one by one (`files`):
    /// `{file_name}` and `{file_stem}` in templates.
    pub file: Option<SourceFile>,
}

/// A file a `files` source delivers in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Where it is.
    pub path: std::path::PathBuf,
    /// Its name, `data.csv`.
    pub name: String,
    /// Its name without the last extension, `data`.
    pub stem: String,
    /// Its size when listed.
    pub len: u64,
    /// Its modification time when listed, in nanoseconds since the epoch.
    pub modified_ns: i64,
}

impl RunContext {
    /// A new run of `job` for `slot`, with fresh ids.
    pub fn new(job: impl Into<String>, slot: DateTime<Tz>) -> RunContext {
        RunContext {
            job: job.into(),
            run_id: Uuid::now_v7().simple().to_string(),
            uuid: Uuid::new_v4(),
            slot,
            attempt: 1,
            ledger: None,
            tenure: state::Tenure::default(),
            file: None,
        }
    }

    /// The same run, recorded in `ledger`.
    pub fn with_ledger(mut self, ledger: state::Ledger) -> RunContext {
        self.ledger = Some(ledger);
        self
    }
}

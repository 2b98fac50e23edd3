//! Success and failure handlers ("notifiers"): who hears how a run ended.
//!
//! A [`Notifier`] is told about a finished run once, with its [`RunReport`]. Handlers never
//! change a run's outcome: [`crate::runner::ActivityRunner`] bounds each call with a
//! timeout and logs a handler's failure. The log handler is always called; named
//! notifiers from `[notifiers.NAME]` are called when a job lists them in `on_success` or
//! `on_failure`.
//!
//! Kinds: `log`, one file each.

mod log;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub use log::{LogConfig, LogNotifier};

use crate::config::{KeyPath, Problems};
use crate::error::DeliveryError;
use crate::job::BuildEnv;
use crate::kinds::kinds;
use crate::runner::RunReport;

/// A handler told how a run ended.
#[async_trait]
pub trait Notifier: fmt::Debug + Send + Sync {
    /// The notifier's name, for logs.
    fn name(&self) -> &str;

    /// Tells of `report`'s run. An error is logged; it never fails the run.
    async fn notify(&self, report: &RunReport) -> Result<(), DeliveryError>;
}

/// The job-file settings of a notifier kind.
pub trait NotifierSettings: fmt::Debug + Send + Sync {
    /// Checks the settings without any I/O, recording problems at `at`.
    fn validate(&self, at: &KeyPath, problems: &mut Problems);

    /// Builds the notifier called `name`: reads secrets, prepares clients.
    fn build(&self, name: &str, env: &BuildEnv) -> Result<Arc<dyn Notifier>, DeliveryError>;
}

kinds! {
    /// `[notifiers.NAME]`: a named handler jobs list in `on_success` and `on_failure`.
    pub enum NotifierConfig: NotifierSettings {
        /// `type = "log"`: a line in ferry's log.
        "log" => Log(LogConfig),
    }
}

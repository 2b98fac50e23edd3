//! `type = "log"`: a line in ferry's own log for each finished run.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Notifier, NotifierSettings};
use crate::build_env::BuildEnv;
use crate::error::{DeliveryError, display_chain};
use crate::report::{RunReport, RunStatus};
use crate::settings::{KeyPath, Problems};

/// Settings of a `log` notifier (it has none but its `type`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {}

impl NotifierSettings for LogConfig {
    fn validate(&self, _at: &KeyPath, _problems: &mut Problems) {}

    fn build(&self, name: &str, _env: &BuildEnv) -> Result<Arc<dyn Notifier>, DeliveryError> {
        Ok(Arc::new(LogNotifier {
            name: name.to_owned(),
        }))
    }
}

/// Logs each finished run: success at INFO, failure at ERROR (an operator must act).
#[derive(Debug, Clone)]
pub struct LogNotifier {
    name: String,
}

impl Default for LogNotifier {
    fn default() -> Self {
        LogNotifier { name: "log".into() }
    }
}

#[async_trait]
impl Notifier for LogNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn logs_the_run(&self) -> bool {
        true
    }

    fn durable(&self) -> bool {
        false
    }

    async fn notify(&self, report: &RunReport) -> Result<(), DeliveryError> {
        let duration = humantime::format_duration(std::time::Duration::from_millis(
            u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        ));
        match (&report.status, &report.error) {
            (RunStatus::Failed, Some(failure)) => tracing::error!(
                notifier = %self.name,
                attempts = report.attempts,
                %duration,
                kind = %failure.kind,
                gave_up = %failure.gave_up,
                error = %display_chain(&failure.chain),
                "Run failed."
            ),
            _ => {
                let locations: Vec<&str> = report
                    .deliveries
                    .iter()
                    .map(|d| d.location.as_str())
                    .collect();
                tracing::info!(
                    notifier = %self.name,
                    attempts = report.attempts,
                    %duration,
                    bytes = report.bytes(),
                    sha256 = report.deliveries.first().map_or("", |d| d.sha256.as_str()),
                    locations = %locations.join(", "),
                    "Run succeeded."
                );
            }
        }
        Ok(())
    }
}

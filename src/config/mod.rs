//! The job file: its settings, how it is loaded, and how it is checked.
//!
//! Loading is two steps. [`parse`] turns text into a checked [`Config`] with no I/O at all
//! (no files, network or processes), so `ferry validate` can be trusted in `ExecStartPre`
//! and in tests; every problem found is reported at once, each as `file:line:col: message`.
//! Building runnable jobs from a `Config` (resolving secrets, opening clients) is
//! [`crate::job::Job::build`]'s business.
//!
//! Each source, writer and notifier kind keeps its own settings struct in its own file; this
//! module holds the file's frame: `[daemon]`, `[api]`, `[defaults]`, `[notifiers.NAME]`, `[[jobs]]`.

mod load;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use load::{ConfigError, ConfigErrors, load, parse};

pub use crate::settings::{
    ByteRate, ByteSize, ConfigDuration, KeyPath, Problems, Secret, SecretRef,
};

pub use crate::api::ApiConfig;
use crate::error::DeliveryError;
pub use crate::gate::{MarkerConfig, PartitionConfig, RequireConfig};
use crate::notify::NotifierConfig;
use crate::runner::RetryConfig;
pub use crate::schedule::Overlap;
use crate::settings::{SecretField, keys};
use crate::source::SourceConfig;
use crate::transform::Transform;
use crate::writer::WriterConfig;

/// A loaded and checked job file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (its path, or a name given to [`parse`]).
    pub origin: String,
    /// The directory relative paths in the file are taken from: the file's own directory.
    pub base_dir: PathBuf,
    /// `[daemon]`: settings of the daemon as a whole.
    pub daemon: DaemonConfig,
    /// `[api]`: the HTTP API (partition registry), off unless `listen` is set.
    pub api: ApiConfig,
    /// `[defaults]`: settings every job inherits unless it sets its own.
    pub defaults: Defaults,
    /// `[notifiers.NAME]`: named success and failure handlers jobs refer to.
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// `[[jobs]]`: the deliveries.
    pub jobs: Vec<JobConfig>,
}

impl Config {
    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|job| job.name == name)
    }

    /// The notifiers told when a run of `job` succeeds: its own list, else the default.
    pub fn on_success<'a>(&'a self, job: &'a JobConfig) -> &'a [String] {
        job.on_success
            .as_deref()
            .unwrap_or(&self.defaults.on_success)
    }

    /// The notifiers told when a run of `job` fails: its own list, else the default.
    pub fn on_failure<'a>(&'a self, job: &'a JobConfig) -> &'a [String] {
        job.on_failure
            .as_deref()
            .unwrap_or(&self.defaults.on_failure)
    }
}

/// `[daemon]`: settings of the daemon as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The IANA time zone of jobs that do not name their own (e.g. `"Europe/Berlin"`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// How long running deliveries may take to finish once shutdown is asked; they are
    /// cancelled (programs killed, progress kept for a resume) after it.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
    /// How long finished runs (and how their notifications went) stay in the store:
    /// older ones are deleted at start-up and daily. Runs still going are always kept.
    #[serde(default = "default_keep_history")]
    pub keep_history: ConfigDuration,
    /// How long a run's claim holds without renewal. The owner renews it every third of
    /// it; once it runs out (its daemon died, hung or lost the store), any daemon sharing
    /// the store takes the run over and resumes it from its checkpoints. Every daemon looks
    /// for such runs every third of the lease, so an interrupted run resumes within about
    /// 1⅓ leases. Between 3 s and 1 h.
    #[serde(default = "default_lease")]
    pub lease: ConfigDuration,
    /// The most runs this daemon has going at once. A run due while it is at its limit
    /// waits for one of its runs to end before claiming its slot, so that daemons with room
    /// claim it first (with one daemon, due runs queue); it takes over no runs meanwhile.
    /// Unset: no limit.
    #[serde(default)]
    pub max_running: Option<usize>,
    /// Where run history, checkpoints and cursors are kept: `state = "sqlite://PATH"` (one
    /// daemon; a relative path is taken from the job file's directory) or
    /// `"postgres://…"` (several daemons), or `state_env` / `state_file` for a URL that
    /// holds a password. By default `sqlite://$STATE_DIRECTORY/state.db` under systemd,
    /// else `sqlite://ferry-state.db` beside the job file.
    #[serde(flatten)]
    pub state: SecretField<keys::State>,
}

impl DaemonConfig {
    /// The state store's URL, defaults applied; a URL from `state_env` / `state_file` is
    /// read now (relative files from `base_dir`). Never show it: it may hold a password.
    pub fn state_url(&self, base_dir: &std::path::Path) -> Result<Secret, DeliveryError> {
        if let Some(url) = self.state.resolve(base_dir)? {
            return Ok(url);
        }
        let state_directory = std::env::var_os("STATE_DIRECTORY");
        Ok(Secret::new(default_state_url(
            state_directory
                .as_deref()
                .map(|dir| dir.to_string_lossy())
                .as_deref(),
            base_dir,
        )))
    }
}

/// Where the store is when `state` is not set: in systemd's `STATE_DIRECTORY` (the daemon
/// under the unit); for the installed job file in `/etc/ferry`, in `/var/lib/ferry` (the
/// unit's `StateDirectory=`), so that `ferry history` or `ferry trigger` run by hand use the
/// daemon's store; else beside the job file.
pub fn default_state_url(state_directory: Option<&str>, base_dir: &std::path::Path) -> String {
    if let Some(dir) = state_directory {
        // systemd may list several directories, separated by colons.
        let first = dir.split(':').next().unwrap_or_default();
        return format!("sqlite://{first}/state.db");
    }
    if base_dir == std::path::Path::new(INSTALLED_CONFIG_DIR) {
        return format!("sqlite://{INSTALLED_STATE_DIR}/state.db");
    }
    "sqlite://ferry-state.db".to_owned()
}

/// The unit's `ConfigurationDirectory=` and `StateDirectory=`.
const INSTALLED_CONFIG_DIR: &str = "/etc/ferry";
const INSTALLED_STATE_DIR: &str = "/var/lib/ferry";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_store_is_the_daemons_for_the_installed_job_file() {
        let etc = std::path::Path::new("/etc/ferry");
        let repo = std::path::Path::new("/home/me/ferry/config");
        assert_eq!(
            default_state_url(Some("/var/lib/ferry"), repo),
            "sqlite:///var/lib/ferry/state.db"
        );
        assert_eq!(
            default_state_url(None, etc),
            "sqlite:///var/lib/ferry/state.db"
        );
        assert_eq!(default_state_url(None, repo), "sqlite://ferry-state.db");
    }
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

fn default_keep_history() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(90 * 24 * 3600))
}

fn default_lease() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(20))
}

fn default_shutdown_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(30))
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            timezone: default_timezone(),
            shutdown_timeout: default_shutdown_timeout(),
            keep_history: default_keep_history(),
            lease: default_lease(),
            max_running: None,
            state: SecretField::default(),
        }
    }
}

/// `[defaults]`: settings every job inherits unless it sets its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// `[defaults.retry]`: the retry policy of every job; a job's `retry` table overrides
    /// it key by key.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The time one attempt of a job may take before it is cancelled (e.g. `"10m"`).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Notifiers told when a run of a job that names none of its own succeeds.
    #[serde(default)]
    pub on_success: Vec<String>,
    /// Notifiers told when a run of a job that names none of its own fails.
    #[serde(default)]
    pub on_failure: Vec<String>,
}

/// `[[jobs]]`: one delivery: where data comes from, where it goes, when, and who hears of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// The job's unique name: letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// When the job fires: cron with a leading seconds field (`"0 0 * * * *"`), a 5-field
    /// crontab line (at second 0), or `@hourly`, `@daily`, `@weekly`, `@monthly`,
    /// `@yearly`.
    pub schedule: String,
    /// The IANA time zone the schedule and `{scheduled:…}` templates are read in; the
    /// daemon's `timezone` by default.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Where the data comes from: a table with `type` = `inline`, `file`, `url` or
    /// `command`.
    pub source: SourceConfig,
    /// How the data is transformed on its way: `"gzip"` or `"zstd"` (none by default).
    #[serde(default)]
    pub transform: Option<Transform>,
    /// OpenPGP encryption of the data on its way (after `transform`): `{ recipients = […] }`.
    #[serde(default)]
    pub pgp: Option<crate::encryption::PgpConfig>,
    /// Where the data goes: one or more tables with `type` = `local`. The source is read
    /// once and written to each.
    pub writers: Vec<WriterConfig>,
    /// This job's retry policy, overriding `[defaults.retry]` key by key.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// The time one attempt may take before it is cancelled (e.g. `"10m"`).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Notifiers told when a run succeeds; `[defaults] on_success` when not given (`[]`
    /// for none).
    #[serde(default)]
    pub on_success: Option<Vec<String>>,
    /// Notifiers told when a run fails after its last attempt; `[defaults] on_failure`
    /// when not given.
    #[serde(default)]
    pub on_failure: Option<Vec<String>>,
    /// What happens when the job fires while its previous run is still going: `"skip"`
    /// (the default: the firing is skipped and logged) or `"allow"` (runs overlap).
    #[serde(default)]
    pub overlap: Overlap,
    /// A random delay of up to this much before each scheduled run starts (e.g. `"30s"`),
    /// to spread jobs that share a schedule. The run's slot stays the scheduled time.
    #[serde(default)]
    pub jitter: Option<ConfigDuration>,
    /// After downtime, the last slot missed within this long before start-up gets one
    /// catch-up run (several missed slots coalesce into one). No catch-up by default.
    #[serde(default)]
    pub misfire_grace: Option<ConfigDuration>,
    /// The most bytes per second the source is read at (e.g. `"20MiB"`); unlimited by
    /// default.
    #[serde(default)]
    pub rate_limit: Option<ByteRate>,
    /// Whether the job is scheduled; a disabled job can still be triggered by hand.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The partition each run produces: `{ source = "shop.orders" }` (locked while the run
    /// writes, unlocked when every writer has delivered).
    #[serde(default)]
    pub partition: Option<PartitionConfig>,
    /// Sources that must be ready over the run's interval before it writes:
    /// `[{ source = "erp.customers", wait = "2h" }]`.
    #[serde(default)]
    pub requires: Vec<RequireConfig>,
    /// A completion marker written beside each delivery once all writers delivered:
    /// `"_SUCCESS"` (empty) or `{ name = "_manifest.json", format = "manifest" }`.
    #[serde(default)]
    pub marker: Option<MarkerConfig>,
}

fn default_enabled() -> bool {
    true
}

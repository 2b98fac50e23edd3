//! Retry policies: how often, how long apart, and for which kinds of error.
//!
//! Delays grow exponentially from `initial_interval` by `multiplier` up to `max_interval`
//! (backon's exponential backoff), and each is then drawn uniformly from zero up to that
//! value ("full jitter"), so daemons that failed together do not retry together.

use std::collections::BTreeSet;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use rand::Rng as _;
use serde::Deserialize;

use crate::error::ErrorKind;
use crate::settings::{ConfigDuration, KeyPath, Problems};

/// `retry = { … }` in a job, or `[defaults.retry]`: a retry policy. Keys left out come
/// from `[defaults.retry]`, then from ferry's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// How many attempts a run gets in all, the first included (default 3; 1 = no retries).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The delay before the first retry (default `"1s"`).
    #[serde(default)]
    pub initial_interval: Option<ConfigDuration>,
    /// The longest delay between attempts (default `"1m"`).
    #[serde(default)]
    pub max_interval: Option<ConfigDuration>,
    /// How much each delay grows over the one before (default 2.0).
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// No retry starts once this much time has passed since the run began (no limit by
    /// default).
    #[serde(default)]
    pub max_elapsed: Option<ConfigDuration>,
    /// The error kinds that are retried. By default the transient ones: `network`,
    /// `timeout`, `server`, `throttled`, `io`, `storage_full`, `command`, `integrity`.
    /// The others are `auth`, `not_found`, `rejected`, `config` and `not_ready` (a run
    /// already waited `wait` for what it requires).
    #[serde(default)]
    pub retry_on: Option<Vec<ErrorKind>>,
}

impl RetryConfig {
    /// This table's keys, falling back to `defaults`' for keys it leaves out.
    pub fn or(&self, defaults: &RetryConfig) -> RetryConfig {
        RetryConfig {
            max_attempts: self.max_attempts.or(defaults.max_attempts),
            initial_interval: self.initial_interval.or(defaults.initial_interval),
            max_interval: self.max_interval.or(defaults.max_interval),
            multiplier: self.multiplier.or(defaults.multiplier),
            max_elapsed: self.max_elapsed.or(defaults.max_elapsed),
            retry_on: self.retry_on.clone().or_else(|| defaults.retry_on.clone()),
        }
    }

    /// Checks each value that is set, recording problems at `at`.
    pub fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.max_attempts == Some(0) {
            problems.add(
                at.key("max_attempts"),
                "must be at least 1 (1 means no retries)",
            );
        }
        if let Some(m) = self.multiplier
            && !(m.is_finite() && m >= 1.0)
        {
            problems.add(
                at.key("multiplier"),
                format!("must be a number of at least 1.0, not {m}"),
            );
        }
        if self.initial_interval.is_some_and(|d| d.get().is_zero()) {
            problems.add(at.key("initial_interval"), "must be longer than zero");
        }
    }

    /// Checks what only shows once job keys and `[defaults.retry]` are merged.
    pub fn validate_merged(&self, at: &KeyPath, problems: &mut Problems) {
        if let (Some(initial), Some(max)) = (self.initial_interval, self.max_interval)
            && initial > max
        {
            problems.add(
                at.key("max_interval"),
                format!("({max}) is shorter than initial_interval ({initial})"),
            );
        }
    }
}

/// A resolved retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The delay before the first retry (before jitter).
    pub initial_interval: Duration,
    /// The longest delay (before jitter).
    pub max_interval: Duration,
    /// The growth of each delay over the last.
    pub multiplier: f64,
    /// No retry starts after this much time since the run began.
    pub max_elapsed: Option<Duration>,
    /// How long one attempt may take before it is cancelled.
    pub attempt_timeout: Option<Duration>,
    /// The error kinds that are retried.
    pub retry_on: BTreeSet<ErrorKind>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::from_config(&RetryConfig::default(), None)
    }
}

impl RetryPolicy {
    /// A policy from merged settings, with ferry's defaults for whatever is unset.
    pub fn from_config(config: &RetryConfig, attempt_timeout: Option<Duration>) -> RetryPolicy {
        let initial_interval = config
            .initial_interval
            .map_or(Duration::from_secs(1), ConfigDuration::get);
        RetryPolicy {
            max_attempts: config.max_attempts.unwrap_or(3).max(1),
            initial_interval,
            max_interval: config
                .max_interval
                .map_or(Duration::from_secs(60), ConfigDuration::get)
                .max(initial_interval),
            multiplier: config.multiplier.unwrap_or(2.0).max(1.0),
            max_elapsed: config.max_elapsed.map(ConfigDuration::get),
            attempt_timeout,
            retry_on: match &config.retry_on {
                Some(kinds) => kinds.iter().copied().collect(),
                None => ErrorKind::ALL
                    .into_iter()
                    .filter(|kind| kind.is_transient_by_default())
                    .collect(),
            },
        }
    }

    /// A policy of one attempt: no retries.
    pub fn no_retries() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Whether an error of `kind` is worth another attempt.
    pub fn retries(&self, kind: ErrorKind) -> bool {
        self.retry_on.contains(&kind)
    }

    /// The delays between attempts: at most `max_attempts - 1` of them, each drawn from
    /// zero up to the exponential delay of its step.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let retries = usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        ExponentialBuilder::default()
            .with_min_delay(self.initial_interval)
            .with_max_delay(self.max_interval)
            .with_factor(self.multiplier as f32)
            .with_max_times(retries)
            .build()
            .map(full_jitter)
    }
}

fn full_jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_bounded_by_the_exponential_steps() {
        let policy = RetryPolicy::from_config(
            &RetryConfig {
                max_attempts: Some(6),
                initial_interval: Some(Duration::from_secs(1).into()),
                max_interval: Some(Duration::from_secs(5).into()),
                multiplier: Some(2.0),
                ..Default::default()
            },
            None,
        );
        let caps = [1, 2, 4, 5, 5];
        for _ in 0..50 {
            let delays: Vec<Duration> = policy.delays().collect();
            assert_eq!(delays.len(), 5, "max_attempts 6 means 5 retries");
            for (delay, cap) in delays.iter().zip(caps) {
                assert!(*delay <= Duration::from_secs(cap), "{delay:?} > {cap}s");
            }
        }
    }

    #[test]
    fn job_keys_override_defaults_one_by_one() {
        let defaults = RetryConfig {
            max_attempts: Some(5),
            multiplier: Some(3.0),
            ..Default::default()
        };
        let job = RetryConfig {
            max_attempts: Some(2),
            ..Default::default()
        };
        let merged = job.or(&defaults);
        assert_eq!(merged.max_attempts, Some(2));
        assert_eq!(merged.multiplier, Some(3.0));
    }

    #[test]
    fn transient_kinds_are_retried_by_default() {
        let policy = RetryPolicy::default();
        assert!(policy.retries(ErrorKind::Server));
        assert!(policy.retries(ErrorKind::Timeout));
        assert!(!policy.retries(ErrorKind::Auth));
        assert!(!policy.retries(ErrorKind::NotFound));
    }
}

//! Checks of a job file that serde's types cannot express: unique names, schedules, time
//! zones, templates, references to notifiers, retry bounds. Pure: no I/O.

use std::collections::HashMap;

use super::Config;
use crate::schedule::{Schedule, parse_timezone};
use crate::settings::{KeyPath, Problems, SecretRef};

/// The longest `jitter`: a delay beyond a day is a mistake, and would overflow the clock
/// arithmetic when absurd.
const MAX_JITTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Every problem in `config`. `job_indexes[i]` is the position in the file's `jobs` array
/// of `config.jobs[i]` (jobs that could not be read at all are missing from `config`).
pub(super) fn validate(config: &Config, job_indexes: &[usize]) -> Problems {
    let mut problems = Problems::default();
    let root = KeyPath::root();

    let daemon_tz = parse_timezone(&config.daemon.timezone);
    if let Err(msg) = &daemon_tz {
        problems.add(root.key("daemon").key("timezone"), msg.clone());
    }
    let defaults_retry = root.key("defaults").key("retry");
    config
        .defaults
        .retry
        .validate(&defaults_retry, &mut problems);
    config
        .defaults
        .retry
        .validate_merged(&defaults_retry, &mut problems);
    if config.daemon.shutdown_timeout.get().is_zero() {
        problems.add(
            root.key("daemon").key("shutdown_timeout"),
            "must be longer than zero",
        );
    }
    let daemon = root.key("daemon");
    let lease = config.daemon.lease.get();
    if lease < std::time::Duration::from_secs(3) || lease > std::time::Duration::from_secs(3600) {
        problems.add(daemon.key("lease"), "must be between 3s and 1h");
    }
    if config.daemon.max_running == Some(0) {
        problems.add(daemon.key("max_running"), "must be at least 1");
    }
    config.daemon.state.validate(&daemon, &mut problems);
    config.api.validate(&root.key("api"), &mut problems);
    if let Some(SecretRef::Inline(state)) = config.daemon.state.source() {
        let known = ["sqlite://", "postgres://", "postgresql://"];
        if !known.iter().any(|prefix| state.starts_with(prefix)) || state == "sqlite://" {
            problems.add(
                daemon.key("state"),
                "must be sqlite://PATH or postgres://USER@HOST/DATABASE",
            );
        }
    }
    if config.defaults.timeout.is_some_and(|t| t.get().is_zero()) {
        problems.add(
            root.key("defaults").key("timeout"),
            "must be longer than zero",
        );
    }

    for (key, list) in [
        ("on_success", &config.defaults.on_success),
        ("on_failure", &config.defaults.on_failure),
    ] {
        check_notifiers(config, &root.key("defaults").key(key), list, &mut problems);
    }
    for (name, notifier) in &config.notifiers {
        let at = root.key("notifiers").key(name);
        if let Err(msg) = check_name(name) {
            problems.add(at.clone(), format!("notifier name {msg}"));
        }
        notifier.settings().validate(&at, &mut problems);
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    for (job, &index) in config.jobs.iter().zip(job_indexes) {
        let at = root.key("jobs").index(index);
        match check_name(&job.name) {
            Err(msg) => problems.add(at.key("name"), format!("job name {msg}")),
            Ok(()) => {
                let first = *names.entry(&job.name).or_insert(index);
                if first != index {
                    problems.add(
                        at.key("name"),
                        format!("job name {:?} is already used by jobs[{first}]", job.name),
                    );
                }
            }
        }

        crate::gate::validate(
            job.partition.as_ref(),
            &job.requires,
            job.marker.as_ref(),
            &at,
            &mut problems,
        );
        if job.marker.is_some() {
            for (i, writer) in job.writers.iter().enumerate() {
                if writer.settings().marker("_").is_none() {
                    problems.add(
                        at.key("writers").index(i),
                        format!(
                            "a {} writer cannot write a completion marker",
                            writer.kind()
                        ),
                    );
                }
            }
        }

        let timezone = match &job.timezone {
            Some(name) => parse_timezone(name).map_err(|msg| {
                problems.add(at.key("timezone"), msg);
            }),
            None => daemon_tz.clone().map_err(|_| ()),
        };
        // Check the expression even when the zone is wrong, to report both at once.
        match Schedule::parse(&job.schedule, timezone.unwrap_or(chrono_tz::UTC)) {
            Err(msg) => problems.add(at.key("schedule"), msg),
            Ok(schedule) if schedule.next_after(chrono::Utc::now()).is_none() => problems.add(
                at.key("schedule"),
                format!(
                    "{:?} never fires: no date matches it (e.g. February 30)",
                    job.schedule
                ),
            ),
            Ok(_) => {}
        }
        if job.jitter.is_some_and(|j| j.get() > MAX_JITTER) {
            problems.add(at.key("jitter"), "must be at most 24h");
        }

        job.source
            .settings()
            .validate(&at.key("source"), &mut problems);
        if let Some(pgp) = &job.pgp {
            pgp.validate(&at.key("pgp"), &mut problems);
        }
        if job.writers.is_empty() {
            problems.add(at.key("writers"), "needs at least one writer");
        }
        for (i, writer) in job.writers.iter().enumerate() {
            writer
                .settings()
                .validate(&at.key("writers").index(i), &mut problems);
        }
        if let Some(retry) = &job.retry {
            retry.validate(&at.key("retry"), &mut problems);
            retry
                .or(&config.defaults.retry)
                .validate_merged(&at.key("retry"), &mut problems);
        }
        if job.timeout.is_some_and(|t| t.get().is_zero()) {
            problems.add(at.key("timeout"), "must be longer than zero");
        }
        for (key, list) in [
            ("on_success", &job.on_success),
            ("on_failure", &job.on_failure),
        ] {
            if let Some(list) = list {
                check_notifiers(config, &at.key(key), list, &mut problems);
            }
        }
    }
    problems
}

/// Checks that every name in `list` (at `at`) is a defined notifier.
fn check_notifiers(config: &Config, at: &KeyPath, list: &[String], problems: &mut Problems) {
    for (i, name) in list.iter().enumerate() {
        if !config.notifiers.contains_key(name) {
            let known: Vec<&str> = config.notifiers.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none is defined; add a [notifiers.NAME] table".to_owned()
            } else {
                format!("defined: {}", known.join(", "))
            };
            problems.add(at.index(i), format!("no notifier named {name:?} ({known})"));
        }
    }
}

/// Names of jobs and notifiers appear in paths, logs and URLs: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain || name.starts_with('.') {
        return Err(format!(
            "{name:?} may only use letters, digits, '-', '_' and '.' (not first)"
        ));
    }
    Ok(())
}

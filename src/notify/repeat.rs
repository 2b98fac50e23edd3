//! Who is told of a run, and with what, given its job's failures in a row: a notifier with
//! `repeat_after` hears of a job that keeps failing once per that long ("still failing,
//! N times since …"), one with `recovery` of the first success after failures. The
//! streaks are kept in the state store per job and notifier, so they hold across restarts
//! and daemons.

use std::sync::Arc;

use chrono::Utc;

use super::Notifier;
use crate::report::{RunReport, RunStatus, StreakReport};
use crate::state::{Ledger, Streak};

/// Each handler to tell about `report`'s run, with the report it is told (its streak set).
pub type Plan = Vec<(Arc<dyn Notifier>, Arc<RunReport>)>;

/// Whom to tell about `report` and with what: the success or failure handlers, less the
/// failures `repeat_after` holds back, plus the `recovery` handlers after failures. Without
/// a ledger (no store) every handler is told as is.
pub async fn plan(
    ledger: Option<&Ledger>,
    report: &Arc<RunReport>,
    on_success: &[Arc<dyn Notifier>],
    on_failure: &[Arc<dyn Notifier>],
) -> Plan {
    let as_is = |handlers: &[Arc<dyn Notifier>]| -> Plan {
        handlers
            .iter()
            .map(|handler| (Arc::clone(handler), Arc::clone(report)))
            .collect()
    };
    let handlers = match report.status {
        RunStatus::Succeeded => on_success,
        RunStatus::Failed | RunStatus::Lost => on_failure,
    };
    let tracked = on_failure
        .iter()
        .any(|handler| handler.repeats() != super::Repeats::default());
    let Some(ledger) = ledger.filter(|_| tracked) else {
        return as_is(handlers);
    };
    match report.status {
        RunStatus::Succeeded => recovered(ledger, report, on_success, on_failure).await,
        RunStatus::Failed | RunStatus::Lost => failed(ledger, report, on_failure).await,
    }
}

/// A failure: each failure handler told, unless `repeat_after` holds it back; the streaks
/// of those with settings counted on.
async fn failed(
    ledger: &Ledger,
    report: &Arc<RunReport>,
    on_failure: &[Arc<dyn Notifier>],
) -> Plan {
    let store = &ledger.store;
    let now = Utc::now();
    let mut plan = Plan::new();
    for handler in on_failure {
        let repeats = handler.repeats();
        if repeats == super::Repeats::default() {
            plan.push((Arc::clone(handler), Arc::clone(report)));
            continue;
        }
        let before = match store.streak(&report.job, handler.name()).await {
            Ok(before) => before,
            Err(err) => {
                store.count_failure();
                tracing::warn!(notifier = handler.name(), error = %err, "Cannot read the job's failures in a row; telling of this one.");
                plan.push((Arc::clone(handler), Arc::clone(report)));
                continue;
            }
        };
        let failures = before.as_ref().map_or(0, |s| s.failures).saturating_add(1);
        let since = before.as_ref().map_or(now, |s| s.since);
        let suppressed = before.as_ref().map_or(0, |s| s.suppressed);
        let last_told = before.as_ref().and_then(|s| s.last_told);
        let held_back = match (repeats.repeat_after, last_told) {
            (Some(every), Some(told)) => {
                now.signed_duration_since(told).to_std().unwrap_or_default() < every
            }
            _ => false,
        };
        let streak = match held_back {
            true => {
                tracing::info!(
                    notifier = handler.name(),
                    failures,
                    "Not telling of this failure: the job's last failure was told within repeat_after."
                );
                Streak {
                    failures,
                    suppressed: suppressed.saturating_add(1),
                    since,
                    last_told,
                }
            }
            false => {
                let mut told = RunReport::clone(report);
                told.streak = (failures > 1).then_some(StreakReport::StillFailing {
                    failures,
                    suppressed,
                    since,
                });
                plan.push((Arc::clone(handler), Arc::new(told)));
                Streak {
                    failures,
                    suppressed: 0,
                    since,
                    last_told: Some(now),
                }
            }
        };
        if let Err(err) = store.set_streak(&report.job, handler.name(), &streak).await {
            store.count_failure();
            tracing::warn!(notifier = handler.name(), error = %err, "Cannot keep the job's failures in a row.");
        }
    }
    plan
}

/// A success: the success handlers told, and each `recovery` failure handler of a job that
/// was failing told it recovered (once, with the success handlers' report if it is one of
/// them); the job's streaks end.
async fn recovered(
    ledger: &Ledger,
    report: &Arc<RunReport>,
    on_success: &[Arc<dyn Notifier>],
    on_failure: &[Arc<dyn Notifier>],
) -> Plan {
    let store = &ledger.store;
    let mut plan: Plan = on_success
        .iter()
        .map(|handler| (Arc::clone(handler), Arc::clone(report)))
        .collect();
    for handler in on_failure.iter().filter(|h| h.repeats().recovery) {
        let streak = match store.streak(&report.job, handler.name()).await {
            Ok(Some(streak)) => streak,
            Ok(None) => continue,
            Err(err) => {
                store.count_failure();
                tracing::warn!(notifier = handler.name(), error = %err, "Cannot read the job's failures in a row; not telling of a recovery.");
                continue;
            }
        };
        let mut told = RunReport::clone(report);
        told.streak = Some(StreakReport::Recovered {
            failures: streak.failures,
            since: streak.since,
        });
        let told = Arc::new(told);
        match plan.iter_mut().find(|(h, _)| h.name() == handler.name()) {
            Some(entry) => entry.1 = told,
            None => plan.push((Arc::clone(handler), told)),
        }
    }
    if let Err(err) = store.end_streaks(&report.job).await {
        store.count_failure();
        tracing::warn!(error = %err, "Cannot end the job's failures in a row.");
    }
    plan
}

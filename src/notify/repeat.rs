//! Who is told of a run, and with what, given its job's failures in a row: a notifier with
//! `repeat_after` hears of a job that keeps failing once per that long ("still failing,
//! N times since …"), one with `recovery` of the first success after failures. The
//! streaks are kept in the state store per job and notifier, so they hold across restarts
//! and daemons.

use std::sync::Arc;

use chrono::{DateTime, Utc};

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
        let (told, streak) = next(handler.as_ref(), before, report, now);
        if let Some(told) = told {
            plan.push((Arc::clone(handler), told));
        }
        if let Err(err) = store.set_streak(&report.job, handler.name(), &streak).await {
            store.count_failure();
            tracing::warn!(notifier = handler.name(), error = %err, "Cannot keep the job's failures in a row.");
        }
    }
    plan
}

/// One more failure of `report`'s job for `handler`, whose streak was `before`: the report
/// to tell it (`None`: `repeat_after` holds it back) and the streak after.
fn next(
    handler: &dyn Notifier,
    before: Option<Streak>,
    report: &Arc<RunReport>,
    now: DateTime<Utc>,
) -> (Option<Arc<RunReport>>, Streak) {
    let failures = before.as_ref().map_or(0, |s| s.failures).saturating_add(1);
    let since = before.as_ref().map_or(now, |s| s.since);
    let suppressed = before.as_ref().map_or(0, |s| s.suppressed);
    let last_told = before.as_ref().and_then(|s| s.last_told);
    let held_back = match (handler.repeats().repeat_after, last_told) {
        (Some(every), Some(told)) => {
            now.signed_duration_since(told).to_std().unwrap_or_default() < every
        }
        _ => false,
    };
    if held_back {
        tracing::info!(
            notifier = handler.name(),
            failures,
            "Not telling of this failure: the job's last failure was told within repeat_after."
        );
        let streak = Streak {
            failures,
            suppressed: suppressed.saturating_add(1),
            since,
            last_told,
        };
        return (None, streak);
    }
    let mut told = RunReport::clone(report);
    told.streak = (failures > 1).then_some(StreakReport::StillFailing {
        failures,
        suppressed,
        since,
    });
    let streak = Streak {
        failures,
        suppressed: 0,
        since,
        last_told: Some(now),
    };
    (Some(Arc::new(told)), streak)
}

/// The streaks of runs the store could not record (a slot not claimed during an outage),
/// kept in this process per notifier: `repeat_after` holds back their notices too, where
/// one notice per slot would reach a job firing every second once a second. They are apart
/// from the store's streaks, and end when the job next has a run recorded.
#[derive(Debug, Default)]
pub struct Unrecorded {
    streaks: std::sync::Mutex<std::collections::HashMap<String, Streak>>,
}

impl Unrecorded {
    /// Whom to tell that `report`'s run was not started (at `now`), and with what.
    pub fn plan(
        &self,
        report: &Arc<RunReport>,
        on_failure: &[Arc<dyn Notifier>],
        now: DateTime<Utc>,
    ) -> Plan {
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        let mut plan = Plan::new();
        for handler in on_failure {
            if handler.repeats() == super::Repeats::default() {
                plan.push((Arc::clone(handler), Arc::clone(report)));
                continue;
            }
            let before = streaks.remove(handler.name());
            let (told, streak) = next(handler.as_ref(), before, report, now);
            streaks.insert(handler.name().to_owned(), streak);
            if let Some(told) = told {
                plan.push((Arc::clone(handler), told));
            }
        }
        plan
    }

    /// The job had a run recorded: the store's streaks take over.
    pub fn end(&self) {
        self.streaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DeliveryError;
    use crate::notify::Repeats;
    use crate::report::RunStatus;
    use async_trait::async_trait;
    use std::time::Duration;

    #[derive(Debug)]
    struct Named(&'static str, Repeats);

    #[async_trait]
    impl Notifier for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn repeats(&self) -> Repeats {
            self.1
        }
        async fn notify(&self, _report: &RunReport) -> Result<(), DeliveryError> {
            Ok(())
        }
    }

    fn not_started() -> Arc<RunReport> {
        Arc::new(RunReport {
            job: "every-second".into(),
            run_id: "r".into(),
            slot: "2026-12-07T12:00:00+00:00".into(),
            status: RunStatus::Failed,
            attempts: 0,
            started_at: Utc::now(),
            duration: Duration::ZERO,
            deliveries: Vec::new(),
            resumed_from: 0,
            error: None,
            streak: None,
        })
    }

    /// A store outage of 40 slots of a job firing every second: a notifier with
    /// `repeat_after = "1m"` hears of the first and of the first a minute later (with the
    /// count), one without hears of every one; a recorded run starts the count over.
    #[test]
    fn runs_the_store_did_not_record_are_told_once_per_repeat_after() {
        let every_minute = Repeats {
            repeat_after: Some(Duration::from_secs(60)),
            recovery: false,
        };
        let handlers: Vec<Arc<dyn Notifier>> = vec![
            Arc::new(Named("pager", every_minute)),
            Arc::new(Named("log-all", Repeats::default())),
        ];
        let book = Unrecorded::default();
        let start = Utc::now();
        let told_to =
            |plan: &Plan, name: &str| plan.iter().filter(|(h, _)| h.name() == name).count();
        let (mut pager, mut all) = (Vec::new(), 0);
        for second in 0..70 {
            let plan = book.plan(
                &not_started(),
                &handlers,
                start + chrono::TimeDelta::seconds(second),
            );
            all += told_to(&plan, "log-all");
            pager.extend(
                plan.iter()
                    .filter(|(h, _)| h.name() == "pager")
                    .map(|(_, r)| (second, r.streak.clone())),
            );
        }
        assert_eq!(all, 70, "a notifier without repeat_after hears of each");
        assert_eq!(pager.len(), 2, "{pager:?}");
        assert_eq!(pager[0], (0, None));
        assert_eq!(
            pager[1],
            (
                60,
                Some(StreakReport::StillFailing {
                    failures: 61,
                    suppressed: 59,
                    since: start
                })
            )
        );
        book.end();
        let plan = book.plan(
            &not_started(),
            &handlers,
            start + chrono::TimeDelta::seconds(71),
        );
        assert_eq!(
            told_to(&plan, "pager"),
            1,
            "a recorded run ended the streak"
        );
        assert!(plan.iter().all(|(_, r)| r.streak.is_none()));
    }
}

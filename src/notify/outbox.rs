//! Notifications through the store's outbox ([`crate::state::Notices`]): exactly one
//! process sends each, and none is lost to a crash.
//!
//! The process that ran a run records its outcome and its notifications in one
//! transaction, then claims each notification's row and sends it at once ([`claim`]). A
//! row nobody claimed (that process died first) or whose sender died while sending is
//! claimed by a daemon's sweeper ([`sweep`]), on any daemon that knows the notifier.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Delivered, Notifications, Notifier, deliver};
use crate::report::RunReport;
use crate::state::{Ledger, NotificationRecord};

/// How long a notification may stay unclaimed before a sweeper takes it: the process that
/// recorded the run claims it within milliseconds unless it died.
const LEFT_AFTER: Duration = Duration::from_secs(10);

/// How often a daemon's sweeper looks for notifications left behind.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How many notifications one look claims.
const SWEEP_BATCH: u32 = 32;

/// Claims run `run_id`'s notification to `handler`: whether this process may send it
/// (`false`: another process has it, or the store could not be asked and a daemon's sweeper
/// will send it later).
pub(super) async fn claim(ledger: &Ledger, run_id: &str, handler: &dyn Notifier) -> Option<bool> {
    let store = &ledger.store;
    let claimed = store
        .with_retries("claim a notification", 3, || {
            store.claim_notice(run_id, handler.name(), &ledger.owner, handler.claim_hold())
        })
        .await;
    match claimed {
        Ok(true) => Some(true),
        Ok(false) => {
            tracing::debug!(
                notifier = handler.name(),
                "Another process sends this notification."
            );
            Some(false)
        }
        Err(err) => {
            tracing::warn!(notifier = handler.name(), error = %err, "Cannot claim the notification in the state store; a daemon sends it once the store answers.");
            Some(false)
        }
    }
}

/// Records how the notification to `notifier` about `run_id` went: in `/metrics`, in the
/// notifications' history, and (`id`, claimed from the outbox) in its outbox row.
pub(super) async fn settle(
    ledger: &Ledger,
    id: Option<&str>,
    run_id: &str,
    notifier: &str,
    outcome: &Delivered,
) {
    let sent = outcome.result.is_ok();
    let error = outcome.result.as_ref().err().map(String::as_str);
    ledger.metrics.notification(notifier, sent);
    let record = NotificationRecord {
        run_id,
        notifier,
        sent,
        attempts: outcome.attempts,
        error,
    };
    if let Err(err) = ledger.store.record_notification(&record).await {
        ledger.store.count_failure();
        tracing::warn!(error = %err, "Cannot record a notification in the state store.");
    }
    let Some(id) = id else {
        return;
    };
    let store = &ledger.store;
    let settled = store
        .with_retries("settle a notification", crate::state::STORE_TRIES, || {
            store.settle_notice(id, &ledger.owner, sent, outcome.attempts, error)
        })
        .await;
    match settled {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            notifier,
            run_id,
            "The notification's claim ran out while it was being sent; another sender may send it again."
        ),
        Err(err) => {
            tracing::warn!(notifier, run_id, error = %err, "Cannot record in the outbox that the notification went; it is sent again once its claim runs out.")
        }
    }
}

/// Claims the notifications left behind that this process's handlers can send, and sends
/// them through `notifications` (in the background, like any notification): how many.
pub async fn sweep(ledger: &Ledger, notifications: &Notifications) -> usize {
    let names = notifications.durable_names();
    if names.is_empty() {
        return 0;
    }
    let hold = names
        .iter()
        .filter_map(|name| notifications.handler(name))
        .map(|handler| handler.claim_hold())
        .max()
        .unwrap_or(Duration::from_secs(600));
    let before = Utc::now() - chrono::Duration::from_std(LEFT_AFTER).unwrap_or_default();
    let claimed = match ledger
        .store
        .claim_left_notices(&ledger.owner, &names, before, hold, SWEEP_BATCH)
        .await
    {
        Ok(claimed) => claimed,
        Err(err) => {
            ledger.store.count_failure();
            tracing::debug!(error = %err, "Cannot look for notifications left behind.");
            return 0;
        }
    };
    let count = claimed.len();
    for notice in claimed {
        let ledger = ledger.clone();
        let handler = notifications.handler(&notice.notifier);
        let call = async move {
            let outcome = match (handler, serde_json::from_str::<RunReport>(&notice.report)) {
                (Some(handler), Ok(report)) => {
                    tracing::info!(job = %notice.job, run_id = %notice.run_id, notifier = %notice.notifier, "Sending a notification left behind.");
                    deliver(handler.as_ref(), &report).await
                }
                (None, _) => Delivered {
                    attempts: 0,
                    result: Err(format!("no notifier named {:?} any more", notice.notifier)),
                },
                (_, Err(err)) => Delivered {
                    attempts: 0,
                    result: Err(format!(
                        "the run's report in the outbox is unreadable: {err}"
                    )),
                },
            };
            settle(
                &ledger,
                Some(&notice.id),
                &notice.run_id,
                &notice.notifier,
                &outcome,
            )
            .await;
        };
        notifications.spawn(call);
    }
    count
}

/// Sweeps every [`SWEEP_EVERY`] until `stop` is cancelled.
pub async fn sweeper(ledger: Ledger, notifications: Notifications, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        sweep(&ledger, &notifications).await;
    }
}

/// Gives back the notifications this process claimed and did not settle (it is stopping):
/// another daemon, or the next start, sends them.
pub async fn release(ledger: &Ledger) {
    match ledger.store.release_notices(&ledger.owner).await {
        Ok(0) => {}
        Ok(released) => tracing::warn!(
            released,
            "Notifications not sent by the shutdown are left in the outbox for the next daemon."
        ),
        Err(err) => {
            tracing::warn!(error = %err, "Cannot give back unsent notifications; they are sent once their claims run out.")
        }
    }
}

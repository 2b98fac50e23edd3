//! The timer: fire payloads armed at instants, released when their instant comes.
//!
//! Timing is tokio-cron-scheduler's, used as a timer only. ferry computes every slot itself
//! from the cron expression in the job's time zone ([`super::Schedule`]), and arms one
//! one-shot per distinct instant, shared by every payload due then: 1,000 jobs firing each
//! second are one timer a second, not a thousand (tokio-cron-scheduler scans all its jobs
//! every 500 ms and falls behind at that rate when each job is its own timer). Its cron
//! evaluation (time-zone bugs #105 and #107, the schedule bugs behind #95) and its repeated
//! jobs (which can stop firing, #113) are never used. It keeps instants at whole seconds and
//! polls every 500 ms, so a one-shot is often released up to a second early; a run released
//! early waits for its slot (the daemon does), so runs start at their slot or a little
//! after. A sweep every second releases anything overdue by more than two seconds, should
//! a one-shot be lost.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_cron_scheduler::{Job as OneShot, JobScheduler};

/// Payloads of type `F` armed at instants.
pub struct Timer<F> {
    scheduler: JobScheduler,
    /// Each one-shot sends the instant it was armed for.
    went_off: mpsc::UnboundedSender<DateTime<Utc>>,
    heard: mpsc::UnboundedReceiver<DateTime<Utc>>,
    /// What is due at each armed instant; one one-shot per instant.
    due: BTreeMap<DateTime<Utc>, Vec<F>>,
    sweep: Interval,
}

impl<F> Timer<F> {
    /// A started timer with nothing armed.
    pub async fn start() -> Result<Timer<F>, String> {
        let scheduler = JobScheduler::new().await.map_err(|err| err.to_string())?;
        scheduler.start().await.map_err(|err| err.to_string())?;
        let (went_off, heard) = mpsc::unbounded_channel();
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Timer {
            scheduler,
            went_off,
            heard,
            due: BTreeMap::new(),
            sweep,
        })
    }

    /// Arms `fire` for `at`; a new instant gets its one-shot.
    pub async fn arm(&mut self, at: DateTime<Utc>, fire: F) {
        match self.due.entry(at) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push(fire),
            Entry::Vacant(vacant) => {
                vacant.insert(vec![fire]);
                self.add_one_shot(at).await;
            }
        }
    }

    /// Waits until something is due and returns all that is due by then, earliest first.
    /// Cancel-safe: what is not returned stays armed.
    pub async fn next_due(&mut self) -> Vec<F> {
        loop {
            tokio::select! {
                Some(at) = self.heard.recv() => return self.take_until(at),
                _ = self.sweep.tick() => {
                    let overdue = Utc::now() - chrono::Duration::seconds(2);
                    if let Some((&at, _)) = self.due.first_key_value()
                        && at < overdue
                    {
                        tracing::warn!(at = %at.to_rfc3339(), "The timer missed a slot; releasing it late.");
                        return self.take_until(at);
                    }
                }
            }
        }
    }

    /// Stops the one-shots; nothing is released after this.
    pub async fn shutdown(&mut self) {
        if let Err(err) = self.scheduler.shutdown().await {
            tracing::warn!(error = %err, "The timer did not stop cleanly.");
        }
        self.due.clear();
    }

    /// Everything due at or before `at`.
    fn take_until(&mut self, at: DateTime<Utc>) -> Vec<F> {
        let later = self.due.split_off(&(at + chrono::Duration::nanoseconds(1)));
        let due = std::mem::replace(&mut self.due, later);
        due.into_values().flatten().collect()
    }

    /// Arms a one-shot that reports `at` when it is due.
    async fn add_one_shot(&mut self, at: DateTime<Utc>) {
        let delay = (at - Utc::now()).to_std().unwrap_or_default();
        let tx = self.went_off.clone();
        let one_shot = OneShot::new_one_shot_at_instant_async(
            std::time::Instant::now() + delay,
            move |_, _| {
                let _ = tx.send(at);
                Box::pin(async {})
            },
        );
        let added = match one_shot {
            Ok(one_shot) => self.scheduler.add(one_shot).await.map(|_| ()),
            Err(err) => Err(err),
        };
        if let Err(err) = added {
            tracing::error!(at = %at.to_rfc3339(), error = %err, "Cannot arm a timer; the jobs due then will not run.");
            self.due.remove(&at);
        }
    }
}

//! What a firing does when things are not simple: a run still going when the next slot
//! comes ([`Overlap`], enforced by [`Running`]), and slots that passed while no daemon ran
//! or while the store could not record their runs ([`Misfire`], [`Unclaimed`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use parking_lot::Mutex;
use serde::Deserialize;

use super::Schedule;

/// `overlap`: what a firing does while the job's previous run is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip the firing, with a warning saying why.
    #[default]
    Skip,
    /// Start another run alongside.
    Allow,
}

/// Counts a job's run while it lives.
#[derive(Debug)]
pub struct Running(Arc<AtomicUsize>);

impl Running {
    /// Counts a run of the job whose runs `count` counts, starting now; with
    /// [`Overlap::Skip`], only if none is going (`None`: skip it).
    pub fn enter(count: Arc<AtomicUsize>, overlap: Overlap) -> Option<Running> {
        match overlap {
            Overlap::Skip => count
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .ok()?,
            Overlap::Allow => count.fetch_add(1, Ordering::SeqCst),
        };
        Some(Running(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What start-up does about a job's latest slot, which passed with no run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfire {
    /// Within `misfire_grace`: one catch-up run for `slot` (the missed slots coalesce).
    CatchUp {
        /// The latest missed slot.
        slot: DateTime<Tz>,
        /// Slots missed since the last recorded run (1 when none is recorded).
        missed: usize,
    },
    /// Older than `misfire_grace`: not run.
    TooOld {
        /// The latest missed slot.
        slot: DateTime<Tz>,
        /// Slots missed.
        missed: usize,
        /// The job's `misfire_grace`.
        grace: Duration,
    },
    /// No `misfire_grace`: slots missed since the last recorded run are not made up.
    NotMadeUp {
        /// Slots missed.
        missed: usize,
    },
    /// Nothing was missed that anyone should hear of.
    Nothing,
}

impl Misfire {
    /// Decides for a job on `schedule` whose latest slot at or before `now` has no run.
    /// `last_recorded` is the job's latest slot with a run, if any.
    pub fn decide(
        schedule: &Schedule,
        now: DateTime<Utc>,
        grace: Option<Duration>,
        last_recorded: Option<DateTime<Utc>>,
    ) -> Misfire {
        // A job that never ran (new, or a new store) has missed nothing: its first start
        // is not a catch-up.
        let (Some(slot), Some(last)) = (schedule.latest_at_or_before(now), last_recorded) else {
            return Misfire::Nothing;
        };
        let missed = schedule.count_between(last, now);
        Misfire::by_grace(now, grace, slot, missed)
    }

    /// Decides, once the store answers again, for a job whose claim of `slot` (the latest of
    /// `missed` slots it could not claim) failed. `last_recorded` is the job's latest slot
    /// with a run: at or after `slot` (another daemon claimed it, or a later slot has run
    /// since), the missed slots coalesce into that run and nothing is made up.
    pub fn after_outage(
        now: DateTime<Utc>,
        grace: Option<Duration>,
        slot: DateTime<Tz>,
        missed: usize,
        last_recorded: Option<DateTime<Utc>>,
    ) -> Misfire {
        if last_recorded.is_some_and(|last| last >= slot.with_timezone(&Utc)) {
            return Misfire::Nothing;
        }
        Misfire::by_grace(now, grace, slot, missed)
    }

    /// Whether `slot`, the latest of `missed` slots, is still within `grace` at `now`.
    fn by_grace(
        now: DateTime<Utc>,
        grace: Option<Duration>,
        slot: DateTime<Tz>,
        missed: usize,
    ) -> Misfire {
        let age = now - slot.with_timezone(&Utc);
        match grace {
            Some(grace) if age <= chrono::Duration::from_std(grace).unwrap_or_default() => {
                Misfire::CatchUp { slot, missed }
            }
            Some(grace) => Misfire::TooOld {
                slot,
                missed,
                grace,
            },
            None if missed > 0 => Misfire::NotMadeUp { missed },
            None => Misfire::Nothing,
        }
    }
}

/// Slots whose claim the store could not record (it could not be reached), by job: the
/// latest and how many. Once the store answers again, each job's latest is made up, once,
/// within its `misfire_grace` ([`Misfire::after_outage`]).
#[derive(Debug, Clone, Default)]
pub struct Unclaimed(Arc<Mutex<UnclaimedSlots>>);

/// Failed claims, by job: the latest slot and how many.
pub type UnclaimedSlots = HashMap<String, (DateTime<Tz>, usize)>;

impl Unclaimed {
    /// Notes that `job`'s claim of `slot` failed.
    pub fn add(&self, job: &str, slot: DateTime<Tz>) {
        self.merge(job.to_owned(), slot, 1);
    }

    /// Whether no failed claim waits to be made up.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// Every job's failed claims so far: each job's latest slot and how many, leaving none.
    pub fn take(&self) -> UnclaimedSlots {
        std::mem::take(&mut *self.0.lock())
    }

    /// Puts back what [`Unclaimed::take`] took (the store still did not answer), with what
    /// failed since.
    pub fn restore(&self, taken: UnclaimedSlots) {
        for (job, (slot, count)) in taken {
            self.merge(job, slot, count);
        }
    }

    fn merge(&self, job: String, slot: DateTime<Tz>, count: usize) {
        let mut jobs = self.0.lock();
        let entry = jobs.entry(job).or_insert((slot, 0));
        entry.0 = entry.0.max(slot);
        entry.1 += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0)
            .single()
            .expect("valid instant")
    }

    #[test]
    fn a_slot_within_grace_is_caught_up_once_counting_what_was_missed() {
        let hourly = Schedule::parse("@hourly", Tz::UTC).expect("valid");
        let decision = Misfire::decide(
            &hourly,
            utc(10, 20),
            Some(Duration::from_secs(30 * 60)),
            Some(utc(7, 0)),
        );
        assert_eq!(
            decision,
            Misfire::CatchUp {
                slot: utc(10, 0).with_timezone(&Tz::UTC),
                missed: 3
            }
        );
    }

    #[test]
    fn a_slot_older_than_grace_or_without_grace_is_not_run() {
        let hourly = Schedule::parse("@hourly", Tz::UTC).expect("valid");
        let grace = Duration::from_secs(10 * 60);
        assert!(matches!(
            Misfire::decide(&hourly, utc(10, 20), Some(grace), Some(utc(9, 0))),
            Misfire::TooOld { missed: 1, .. }
        ));
        // The first start of a job (nothing recorded) never counts as a missed run.
        assert_eq!(
            Misfire::decide(&hourly, utc(10, 5), Some(grace), None),
            Misfire::Nothing
        );
        assert_eq!(
            Misfire::decide(&hourly, utc(10, 20), None, Some(utc(8, 0))),
            Misfire::NotMadeUp { missed: 2 }
        );
        assert_eq!(
            Misfire::decide(&hourly, utc(10, 20), None, None),
            Misfire::Nothing
        );
    }

    #[test]
    fn after_an_outage_the_latest_unclaimed_slot_is_made_up_within_grace() {
        let slot = utc(10, 0).with_timezone(&Tz::UTC);
        let grace = Some(Duration::from_secs(10 * 60));
        assert_eq!(
            Misfire::after_outage(utc(10, 5), grace, slot, 4, Some(utc(9, 0))),
            Misfire::CatchUp { slot, missed: 4 }
        );
        // A job that never ran before the outage is made up too: its slot was due.
        assert_eq!(
            Misfire::after_outage(utc(10, 5), grace, slot, 1, None),
            Misfire::CatchUp { slot, missed: 1 }
        );
        assert!(matches!(
            Misfire::after_outage(utc(10, 11), grace, slot, 2, None),
            Misfire::TooOld { missed: 2, .. }
        ));
        assert_eq!(
            Misfire::after_outage(utc(10, 5), None, slot, 3, None),
            Misfire::NotMadeUp { missed: 3 }
        );
        // The slot, or a later one, has a run (another daemon's, or the next firing's).
        for recorded in [utc(10, 0), utc(10, 1)] {
            assert_eq!(
                Misfire::after_outage(utc(10, 5), grace, slot, 4, Some(recorded)),
                Misfire::Nothing
            );
        }
    }

    #[test]
    fn unclaimed_slots_keep_each_jobs_latest_and_their_count() {
        let unclaimed = Unclaimed::default();
        assert!(unclaimed.is_empty());
        let at = |m| utc(10, m).with_timezone(&Tz::UTC);
        unclaimed.add("a", at(2));
        unclaimed.add("a", at(1));
        unclaimed.add("b", at(1));
        let taken = unclaimed.take();
        assert!(unclaimed.is_empty());
        assert_eq!(taken["a"], (at(2), 2));
        assert_eq!(taken["b"], (at(1), 1));
        // The store still down: what was taken goes back beside what failed meanwhile.
        unclaimed.add("a", at(3));
        unclaimed.restore(taken);
        let again = unclaimed.take();
        assert_eq!(again["a"], (at(3), 3));
        assert_eq!(again["b"], (at(1), 1));
    }

    #[test]
    fn skip_admits_one_run_at_a_time_and_allow_any_number() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = Running::enter(Arc::clone(&count), Overlap::Skip);
        assert!(first.is_some());
        assert!(Running::enter(Arc::clone(&count), Overlap::Skip).is_none());
        let second = Running::enter(Arc::clone(&count), Overlap::Allow);
        assert_eq!(count.load(Ordering::SeqCst), 2);
        drop((first, second));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert!(Running::enter(count, Overlap::Skip).is_some());
    }
}

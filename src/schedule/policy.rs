//! What a firing does when things are not simple: a run still going when the next slot
//! comes ([`Overlap`], enforced by [`Running`]), and slots that passed while no daemon ran
//! ([`Misfire`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
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

//! The timer: payloads armed at instants, released when their instant comes.
//!
//! A due queue on tokio's timer: the armed instants in order, and one sleep until the
//! earliest. Payloads due at the same instant are released together (1,000 jobs firing each
//! second are one wake-up a second). The sleep is computed from the wall clock and never
//! longer than [`RECHECK`], so a wall clock that is stepped (NTP, a suspended machine) is
//! noticed within that; a wake-up a little early sleeps again for the rest. tokio's timer
//! counts whole milliseconds and wakes up to 3 ms late, so on the system clock it sleeps
//! to `FINE` (4 ms) before the instant and a blocking thread sleeps the rest: payloads are
//! released within a tenth of a millisecond of their instant.
//!
//! It replaced tokio-cron-scheduler, which ferry first used only as a one-shot timer: that
//! scheduler polls its jobs every 500 ms and keeps instants at whole seconds, so a one-shot
//! went off up to a second early or half a second late (the figures are in the README).
//!
//! A timer can release payloads a little ahead of their instant ([`Timer::with_lead`]): the
//! daemon claims the runs due at an instant in the store before it, so that at the instant
//! only their starts are left to do; [`sleep_until`] then waits for the instant itself.
//!
//! The clock is a [`Clock`]: the system's in production; in tests, one that runs with
//! tokio's (paused) clock, so whole days of schedule pass in milliseconds.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest a timer sleeps before it looks at the wall clock again.
pub const RECHECK: Duration = Duration::from_secs(60);

/// The last stretch before an instant, slept by a thread rather than on tokio's timer.
const FINE: Duration = Duration::from_millis(4);

/// Where the timer reads the time.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// `at` when tokio's clock read `since`, advancing with tokio's clock: a paused test
    /// clock moves it.
    Tokio {
        /// The wall-clock time at `since`.
        at: DateTime<Utc>,
        /// tokio's clock then.
        since: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that reads `at` now and then follows tokio's clock.
    pub fn tokio_from(at: DateTime<Utc>) -> Clock {
        Clock::Tokio {
            at,
            since: tokio::time::Instant::now(),
        }
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { at, since } => {
                *at + chrono::Duration::from_std(since.elapsed()).unwrap_or_default()
            }
        }
    }
}

/// Payloads of type `F` armed at instants.
pub struct Timer<F> {
    clock: Clock,
    /// How long before their instant payloads are released.
    lead: Duration,
    /// What is due at each armed instant.
    due: BTreeMap<DateTime<Utc>, Vec<F>>,
}

impl<F> Timer<F> {
    /// A timer on the system clock with nothing armed.
    pub fn new() -> Timer<F> {
        Timer::with_clock(Clock::System)
    }

    /// A timer reading `clock`.
    pub fn with_clock(clock: Clock) -> Timer<F> {
        Timer {
            clock,
            lead: Duration::ZERO,
            due: BTreeMap::new(),
        }
    }

    /// This timer, releasing payloads `lead` before their instant.
    pub fn with_lead(self, lead: Duration) -> Timer<F> {
        Timer { lead, ..self }
    }

    /// The timer's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Arms `fire` for `at`.
    pub fn arm(&mut self, at: DateTime<Utc>, fire: F) {
        match self.due.entry(at) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push(fire),
            Entry::Vacant(vacant) => {
                vacant.insert(vec![fire]);
            }
        }
    }

    /// Waits until something is due (its instant is at most the lead away) and returns all
    /// that is due by then, earliest first; never returns while nothing is armed.
    /// Cancel-safe: what is not returned stays armed.
    pub async fn next_due(&mut self) -> Vec<F> {
        let lead = chrono::Duration::from_std(self.lead).unwrap_or_default();
        loop {
            let Some(&first) = self.due.keys().next() else {
                return std::future::pending().await;
            };
            let release = first - lead;
            let now = self.clock.now();
            if release <= now {
                return self.take_until(now + lead);
            }
            let recheck = chrono::Duration::from_std(RECHECK).unwrap_or_default();
            sleep_until(self.clock, release.min(now + recheck)).await;
        }
    }

    /// How many instants are armed.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// Forgets everything armed: nothing is released after this.
    pub fn shutdown(&mut self) {
        self.due.clear();
    }

    /// Everything due at or before `at`.
    fn take_until(&mut self, at: DateTime<Utc>) -> Vec<F> {
        let later = self.due.split_off(&(at + chrono::Duration::nanoseconds(1)));
        let due = std::mem::replace(&mut self.due, later);
        due.into_values().flatten().collect()
    }
}

/// Sleeps until `clock` reads `at` (at once if it has passed). On the system clock, tokio's
/// timer (millisecond ticks, waking 1–3 ms late) sleeps to `FINE` (4 ms) before `at`, and a
/// blocking thread sleeps the rest, to the tenth of a millisecond.
pub async fn sleep_until(clock: Clock, at: DateTime<Utc>) {
    loop {
        let Ok(wait) = (at - clock.now()).to_std() else {
            return;
        };
        if wait.is_zero() {
            return;
        }
        match clock {
            Clock::System if wait <= FINE => {
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(wait)).await;
            }
            Clock::System => tokio::time::sleep(wait - FINE).await,
            Clock::Tokio { .. } => tokio::time::sleep(wait).await,
        }
    }
}

impl<F> Default for Timer<F> {
    fn default() -> Self {
        Timer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, s)
            .single()
            .expect("instant")
    }

    #[tokio::test(start_paused = true)]
    async fn payloads_are_released_at_their_instant_together_and_in_order() {
        let mut timer = Timer::with_clock(Clock::tokio_from(at(0, 0, 0)));
        timer.arm(at(0, 0, 2), "b");
        timer.arm(at(0, 0, 1), "a");
        timer.arm(at(0, 0, 2), "c");
        timer.arm(at(6, 0, 0), "later");
        let started = tokio::time::Instant::now();
        assert_eq!(timer.next_due().await, vec!["a"]);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(timer.next_due().await, vec!["b", "c"]);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Six hours pass in virtual time, looking at the clock at least every minute.
        assert_eq!(timer.next_due().await, vec!["later"]);
        assert_eq!(timer.clock().now(), at(6, 0, 0));
        assert!(timer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_with_a_lead_releases_that_much_before_the_instant() {
        let mut timer =
            Timer::with_clock(Clock::tokio_from(at(0, 0, 0))).with_lead(Duration::from_millis(50));
        timer.arm(at(0, 0, 1), "a");
        timer.arm(at(0, 0, 1) + chrono::Duration::milliseconds(30), "b");
        timer.arm(at(0, 0, 2), "c");
        let started = tokio::time::Instant::now();
        assert_eq!(timer.next_due().await, vec!["a"]);
        assert_eq!(started.elapsed(), Duration::from_millis(950));
        assert_eq!(timer.next_due().await, vec!["b"]);
        assert_eq!(started.elapsed(), Duration::from_millis(980));
        sleep_until(timer.clock(), at(0, 0, 1)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // An instant that has passed: no sleep.
        sleep_until(timer.clock(), at(0, 0, 0)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(timer.next_due().await, vec!["c"]);
        assert_eq!(started.elapsed(), Duration::from_millis(1950));
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_overdue_is_released_at_once_and_a_cancelled_wait_keeps_it_armed() {
        let mut timer = Timer::with_clock(Clock::tokio_from(at(1, 0, 0)));
        timer.arm(at(0, 59, 0), 1);
        timer.arm(at(1, 0, 30), 2);
        assert_eq!(timer.next_due().await, vec![1]);
        // Cancelled while waiting: still armed.
        let cut = tokio::time::timeout(Duration::from_secs(10), timer.next_due()).await;
        assert!(cut.is_err());
        assert_eq!(timer.len(), 1);
        assert_eq!(timer.next_due().await, vec![2]);
        timer.arm(at(2, 0, 0), 3);
        timer.shutdown();
        assert!(timer.is_empty());
    }
}

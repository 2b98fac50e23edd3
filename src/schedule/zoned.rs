//! Slots of a cron expression in a time zone, with ISC cron's rule at DST transitions.
//!
//! The expression is matched against wall-clock times (croner, evaluated on naive times
//! carried as UTC), and wall times are turned into instants one stretch of constant UTC
//! offset at a time:
//!
//! * a wall time that exists once fires once, and nothing fires that the expression does
//!   not match;
//! * **spring forward**: wall times inside the gap do not exist. An expression with a fixed
//!   hour (neither `*` nor a step) that matches inside the gap fires once, at the first
//!   instant after it, keeping the seconds of its first skipped match (`0 30 2 * * *` →
//!   03:00:00, `15 */20 2 * * *` → 03:00:15 in Berlin); one whose hour is `*` or a step
//!   simply has no such wall times;
//! * **fall back**: a fixed-hour expression fires on the first pass of the repeated wall
//!   times only; a `*` or stepped hour fires on both passes (real time keeps going).

use chrono::{DateTime, Duration, LocalResult, Offset as _, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// How far apart offsets are sampled when looking for a transition: two transitions closer
/// than this would be taken for none.
const STEP: Duration = Duration::hours(6);

/// How many offset stretches a search may cross before it gives up.
const MAX_STRETCHES: usize = 2_000;

/// The zone's offset from UTC at `t`, in seconds.
fn offset(tz: Tz, t: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

/// The wall time at `t`, carried as a UTC value.
fn wall(tz: Tz, t: DateTime<Utc>) -> DateTime<Utc> {
    t + Duration::seconds(offset(tz, t))
}

/// The instants `x` in `(start of year, start of next year]` (UTC) where `tz`'s offset
/// changes (`offset(x - 1s) != offset(x)`), in order. Found once per zone and year (offsets
/// sampled every [`STEP`], each change narrowed to the second) and kept: a yearly job's
/// next slot costs a lookup, not a year of samples.
fn transitions_in(tz: Tz, year: i32) -> std::sync::Arc<Vec<DateTime<Utc>>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Found = HashMap<(Tz, i32), Arc<Vec<DateTime<Utc>>>>;
    static FOUND: OnceLock<Mutex<Found>> = OnceLock::new();
    let found = FOUND.get_or_init(Default::default);
    if let Some(known) = found.lock().ok().and_then(|f| f.get(&(tz, year)).cloned()) {
        return known;
    }
    let year_start = |y: i32| {
        Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    let (from, to) = (year_start(year), year_start(year.saturating_add(1)));
    let mut changes = Vec::new();
    let mut low = from;
    while low < to {
        let high = (low + STEP).min(to);
        let before = offset(tz, low);
        if offset(tz, high) != before {
            // offset(low) == before != offset(high): narrow to the second.
            let (mut a, mut b) = (low, high);
            while b - a > Duration::seconds(1) {
                let mid = a + Duration::seconds((b - a).num_seconds() / 2);
                if offset(tz, mid) == before {
                    a = mid;
                } else {
                    b = mid;
                }
            }
            changes.push(b);
        }
        low = high;
    }
    let changes = Arc::new(changes);
    if let Ok(mut found) = found.lock()
        && found.len() < 100_000
    {
        found.insert((tz, year), Arc::clone(&changes));
    }
    changes
}

/// The first instant in `(after, until]` where the offset changes.
fn next_transition(tz: Tz, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::Datelike as _;
    if until <= after {
        return None;
    }
    // A change at the very start of a year is listed with the year before.
    for year in (after.year() - 1)..=until.year() {
        let changes = transitions_in(tz, year);
        if let Some(&x) = changes.iter().find(|&&x| x > after) {
            return (x <= until).then_some(x);
        }
    }
    None
}

/// The last instant `x` in `(after, at]` where the offset changes.
fn last_transition(tz: Tz, after: DateTime<Utc>, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::Datelike as _;
    if at <= after {
        return None;
    }
    for year in ((after.year() - 1)..=at.year()).rev() {
        let changes = transitions_in(tz, year);
        if let Some(&x) = changes.iter().rev().find(|&&x| x <= at) {
            return (x > after).then_some(x);
        }
    }
    None
}

/// Whether the instant `at` of wall time `wall` is the second pass of a repeated wall time.
fn second_pass(tz: Tz, wall: DateTime<Utc>, at: DateTime<Utc>) -> bool {
    match tz.from_local_datetime(&wall.naive_utc()) {
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc) != at,
        _ => false,
    }
}

/// A cron expression read in a time zone.
pub(super) struct Zoned<'a> {
    pub cron: &'a Cron,
    pub tz: Tz,
    /// The hour field is neither `*` nor a step: ISC cron's "fixed time" job.
    pub fixed_hour: bool,
}

impl Zoned<'_> {
    fn next_wall(&self, after: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, inclusive).ok()
    }

    fn previous_wall(&self, at: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&at, inclusive).ok()
    }

    /// For a fixed hour, the instant a spring-forward gap of wall times `[start, end)`
    /// (beginning at instant `at`) collapses to, when the expression matches inside it.
    fn collapsed(
        &self,
        at: DateTime<Utc>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if !self.fixed_hour {
            return None;
        }
        use chrono::Timelike as _;
        let first = self.next_wall(start, true)?;
        (first < end).then(|| at + Duration::seconds(i64::from(first.second())))
    }

    /// The first slot strictly after `after` (a whole second).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = self.tz;
        let mut t = after;
        let mut off = offset(tz, t);
        let mut from = wall(tz, t);
        for _ in 0..MAX_STRETCHES {
            let candidate = self.next_wall(from, false)?;
            let at = candidate - Duration::seconds(off);
            match next_transition(tz, t, at) {
                None if self.fixed_hour && second_pass(tz, candidate, at) => from = candidate,
                None => return Some(at),
                Some(x) => {
                    let next = offset(tz, x);
                    if next > off
                        && let Some(slot) = self.collapsed(
                            x,
                            x + Duration::seconds(off),
                            x + Duration::seconds(next),
                        )
                    {
                        return Some(slot);
                    }
                    // The next stretch's wall times start at x + next.
                    from = x + Duration::seconds(next) - Duration::seconds(1);
                    t = x;
                    off = next;
                }
            }
        }
        None
    }

    /// The latest slot at or before `at` (a whole second).
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = self.tz;
        let mut t = at;
        let mut off = offset(tz, t);
        let mut from = wall(tz, t);
        let mut inclusive = true;
        for _ in 0..MAX_STRETCHES {
            let candidate = self.previous_wall(from, inclusive)?;
            let slot = candidate - Duration::seconds(off);
            match last_transition(tz, slot, t) {
                None if self.fixed_hour && second_pass(tz, candidate, slot) => {
                    from = candidate;
                    inclusive = false;
                }
                None => return Some(slot),
                Some(x) => {
                    let before = offset(tz, x - Duration::seconds(1));
                    if off > before
                        && let Some(slot) = self.collapsed(
                            x,
                            x + Duration::seconds(before),
                            x + Duration::seconds(off),
                        )
                        && slot <= at
                    {
                        return Some(slot);
                    }
                    // The earlier stretch's wall times end just before x + before.
                    from = x + Duration::seconds(before) - Duration::seconds(1);
                    inclusive = true;
                    t = x - Duration::seconds(1);
                    off = before;
                }
            }
        }
        None
    }
}

/// Whether `expression`'s hour field is fixed (neither `*` nor a step), ISC cron's test
/// for the DST rule. Aliases: `@hourly` is not, the others are (hour 0).
pub(super) fn fixed_hour(expression: &str) -> bool {
    let expression = expression.trim();
    if let Some(alias) = expression.strip_prefix('@') {
        return !alias.eq_ignore_ascii_case("hourly");
    }
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let hour = match fields.len() {
        5 => fields[1],
        _ => fields.get(2).copied().unwrap_or("*"),
    };
    !(hour.contains('*') || hour.contains('/'))
}

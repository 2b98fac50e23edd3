//! Scheduling: when jobs fire and what a firing does.
//!
//! * [`Schedule`] (this file) computes slots: a cron expression read in a time zone.
//! * [`timer`] releases armed firings when their instant comes.
//! * [`policy`] decides what a firing does while the previous run is still going
//!   ([`Overlap`]) and what start-up does about slots missed while no daemon ran
//!   ([`Misfire`]).
//!
//! Expressions have a leading seconds field (`sec min hour dom month dow`); a 5-field
//! crontab line means second 0, and `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`
//! are accepted. Day-of-week 0 and 7 are Sunday; `Mon`…`Sun` and `Jan`…`Dec` may be used.
//! Parsing is croner's (the parser tokio-cron-scheduler uses), set to refuse a year
//! field so that six fields always mean "seconds first".

pub mod policy;
pub mod timer;
mod zoned;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

pub use policy::{Misfire, Overlap, Running, Unclaimed};
pub use timer::{Clock, Timer};

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    /// Shared by every schedule with the same expression: a parsed expression is about
    /// 5 KB, and 10,000 jobs on `@hourly` need it once.
    cron: Arc<Cron>,
    timezone: Tz,
    fixed_hour: bool,
}

impl Schedule {
    /// Parses `expression`, to be read in `timezone`.
    pub fn parse(expression: &str, timezone: Tz) -> Result<Schedule, String> {
        let cron = parsed(expression)?;
        Ok(Schedule {
            expression: expression.to_owned(),
            cron,
            timezone,
            fixed_hour: zoned::fixed_hour(expression),
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone the expression is read in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    fn zoned(&self) -> zoned::Zoned<'_> {
        zoned::Zoned {
            cron: &self.cron,
            tz: self.timezone,
            fixed_hour: self.fixed_hour,
        }
    }

    /// The first fire time strictly after `after`, always on a whole second (DST rule:
    /// [`zoned`]).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        // Fire times are whole seconds; croner keeps the fraction of its starting point.
        self.zoned()
            .next_after(after.trunc_subsecs(0))
            .map(|at| at.with_timezone(&self.timezone))
    }

    /// The latest fire time at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Tz>> {
        self.zoned()
            .latest_at_or_before(at.trunc_subsecs(0))
            .map(|at| at.with_timezone(&self.timezone))
    }

    /// The next `count` fire times strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(count);
        let mut from = after;
        while out.len() < count {
            match self.next_after(from) {
                Some(next) => {
                    from = next.with_timezone(&Utc);
                    out.push(next);
                }
                None => break,
            }
        }
        out
    }
}

impl Schedule {
    /// After firing `slot` at `now`: the next slot to arm (the first after both, so a
    /// daemon held up past later slots never arms one in the past) and how many slots
    /// passed unfired in between.
    pub fn after_firing(
        &self,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (Option<DateTime<Tz>>, usize) {
        (
            self.next_after(slot.max(now)),
            self.count_between(slot, now),
        )
    }

    /// How many fire times fall in `(after, until]` (counting stops at 10,000).
    pub fn count_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> usize {
        let mut count = 0;
        let mut from = after;
        while count < 10_000 {
            match self.next_after(from) {
                Some(next) if next.with_timezone(&Utc) <= until => {
                    count += 1;
                    from = next.with_timezone(&Utc);
                }
                _ => break,
            }
        }
        count
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.timezone)
    }
}

/// Parsed expressions, by text: a file of 10,000 jobs has few distinct schedules, and
/// croner's parse dominated loading it (a file is parsed to validate, then to build).
static PARSED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Cron>>>> =
    std::sync::OnceLock::new();

/// How many distinct expressions [`PARSED`] keeps.
const PARSED_MAX: usize = 4096;

/// `expression` parsed (six fields with seconds first, five without, or an alias), from
/// [`PARSED`] when it was parsed before.
fn parsed(expression: &str) -> Result<Arc<Cron>, String> {
    let cache = PARSED.get_or_init(Default::default);
    if let Some(cron) = cache.lock().ok().and_then(|c| c.get(expression).cloned()) {
        return Ok(cron);
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let cron =
        Arc::new(
            parser
                .parse(expression)
                .map_err(|err| match bad_field(&parser, expression) {
                    Some(field) => format!("invalid schedule {expression:?}: {field}"),
                    None => format!("invalid schedule {expression:?}: {err}"),
                })?,
        );
    if let Ok(mut cache) = cache.lock()
        && cache.len() < PARSED_MAX
    {
        cache.insert(expression.to_owned(), Arc::clone(&cron));
    }
    Ok(cron)
}

/// Which field of a six- or five-field `expression` croner refuses, in words: each field
/// is tried alone with every other field `*`.
fn bad_field(parser: &CronParser, expression: &str) -> Option<String> {
    const SIX: [(&str, &str); 6] = [
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31"),
        ("month", "1-12 or Jan-Dec"),
        ("day-of-week", "0-7 or Sun-Sat"),
    ];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let names: &[(&str, &str)] = match fields.len() {
        6 => &SIX,
        5 => &SIX[1..],
        _ => {
            return Some(format!(
                "{} fields; give six (second minute hour day-of-month month day-of-week), five (without seconds) or an @alias",
                fields.len()
            ));
        }
    };
    for (i, (field, (name, range))) in fields.iter().zip(names).enumerate() {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if parser.parse(&alone.join(" ")).is_err() {
            return Some(format!(
                "{name} field `{field}` is invalid: it takes {range}, a list (1,5), a range (1-5) or a step (*/15)"
            ));
        }
    }
    None
}

/// Parses an IANA time zone name such as `"Europe/Berlin"` or `"UTC"`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!(
            "unknown time zone {name:?} (use an IANA name such as \"Europe/Berlin\" or \"UTC\")"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid instant")
    }

    #[test]
    fn six_fields_put_seconds_first() {
        let s = Schedule::parse("30 0 * * * *", Tz::UTC).expect("valid");
        let next = s.next_after(utc(2026, 1, 1, 10, 0, 0)).expect("has a next");
        assert_eq!(next.with_timezone(&Utc), utc(2026, 1, 1, 10, 0, 30));
    }

    #[test]
    fn five_fields_mean_second_zero_and_aliases_work() {
        let s = Schedule::parse("15 3 * * *", Tz::UTC).expect("valid");
        let next = s.next_after(utc(2026, 1, 1, 0, 0, 0)).expect("has a next");
        assert_eq!(next.with_timezone(&Utc), utc(2026, 1, 1, 3, 15, 0));
        let hourly = Schedule::parse("@hourly", Tz::UTC).expect("valid");
        let next = hourly.next_after(utc(2026, 1, 1, 0, 0, 1)).expect("next");
        assert_eq!(next.with_timezone(&Utc), utc(2026, 1, 1, 1, 0, 0));
    }

    #[test]
    fn names_and_sunday_as_seven() {
        // 2026-01-04 is a Sunday.
        let s = Schedule::parse("0 0 12 * Jan 7", Tz::UTC).expect("valid");
        let next = s.next_after(utc(2026, 1, 1, 0, 0, 0)).expect("next");
        assert_eq!(next.with_timezone(&Utc), utc(2026, 1, 4, 12, 0, 0));
        let weekdays = Schedule::parse("0 0 0 * * Mon-Fri", Tz::UTC).expect("valid");
        // Saturday 2026-01-03 → Monday 2026-01-05.
        let next = weekdays
            .next_after(utc(2026, 1, 2, 12, 0, 0))
            .expect("next");
        assert_eq!(next.with_timezone(&Utc), utc(2026, 1, 5, 0, 0, 0));
    }

    #[test]
    fn read_in_its_time_zone() {
        let s = Schedule::parse("0 0 0 * * *", chrono_tz::Europe::Berlin).expect("valid");
        let next = s.next_after(utc(2026, 1, 1, 12, 0, 0)).expect("next");
        assert_eq!(next.with_timezone(&Utc), utc(2026, 1, 1, 23, 0, 0));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "* * *",
            "61 * * * * *",
            "0 0 * * * * 2030",
            "@fortnightly",
            "0 0 * * Funday",
        ] {
            assert!(
                Schedule::parse(bad, Tz::UTC).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert_eq!(
            parse_timezone("Europe/Berlin"),
            Ok(chrono_tz::Europe::Berlin)
        );
    }
}

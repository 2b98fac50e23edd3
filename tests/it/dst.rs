//! ferry's slots around every DST transition of 2000–2040, against a brute-force reference
//! that walks real time minute by minute and applies the rule the README states:
//!
//! * a wall time that exists once fires once; nothing fires that the expression does not
//!   match;
//! * spring forward: a fixed-hour expression (hour neither `*` nor a step) matching inside
//!   the gap fires once at the first instant after it, with the seconds of its first
//!   skipped match; a `*` or stepped hour has no such wall times;
//! * fall back: a fixed hour fires on the first pass only, a `*` or stepped hour on both.
//!
//! `FERRY_DST_ALL_ZONES=1` runs every zone chrono-tz knows and prints how many transitions
//! and slots it checked (a few minutes in a debug build).

use chrono::{DateTime, Duration, LocalResult, Offset as _, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use ferry::schedule::Schedule;

/// Zones covering the rule's cases: northern and southern hemispheres, a 30-minute shift,
/// transitions at midnight, a 2-hour shift, a half-hour offset.
const ZONES: &[Tz] = &[
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Australia::Sydney,
    chrono_tz::America::Santiago,
    chrono_tz::America::Havana,
    chrono_tz::Africa::Cairo,
    chrono_tz::Antarctica::Troll,
    chrono_tz::America::St_Johns,
];

/// Fixed times before, in and after the usual gaps and overlaps; steps; lists; day-of-week
/// and day-of-month rules; midnight. Each has one value in its seconds field.
const EXPRESSIONS: &[&str] = &[
    "0 30 1 * * *",
    "0 30 2 * * *",
    "0 30 3 * * *",
    "15 */20 2 * * *",
    "0 */30 * * * *",
    "0 0 */2 * * *",
    "0 45 0,1,2,3 * * *",
    "0 0 0 * * *",
    "0 30 0 * * *",
    "0 30 23 * * *",
    "0 0 2 * * 0",
    "30 15 1-3 * * *",
    "0 10 2 1-7 * *",
    "0 * 2 * * *",
];

fn offset(tz: Tz, t: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

fn at(year: i32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0)
        .single()
        .expect("instant")
}

/// Every instant in `[from, to)` where `tz`'s offset changes: hourly samples, then a
/// linear walk to the minute and the second.
fn transitions(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let next = t + Duration::hours(1);
        if offset(tz, t) != offset(tz, next) {
            let mut x = t;
            while offset(tz, x + Duration::minutes(1)) == offset(tz, t) {
                x += Duration::minutes(1);
            }
            while offset(tz, x) == offset(tz, t) {
                x += Duration::seconds(1);
            }
            out.push(x);
        }
        t = next;
    }
    out
}

fn is_fixed(expression: &str) -> bool {
    let hour = expression.split_whitespace().nth(2).expect("six fields");
    !(hour.contains('*') || hour.contains('/'))
}

/// The reference: slots in `[lo, hi]` by walking every minute (at the expression's one
/// second), plus the collapsed run of each spring-forward gap in the window.
fn reference(
    cron: &Cron,
    fixed: bool,
    second: i64,
    tz: Tz,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut fires = Vec::new();
    let mut i = lo.with_second(0).expect("minute") + Duration::seconds(second);
    while i <= hi {
        if i >= lo {
            let wall = i + Duration::seconds(offset(tz, i));
            if cron.is_time_matching(&wall).expect("match") {
                let second_pass = match tz.from_local_datetime(&wall.naive_utc()) {
                    LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc) != i,
                    _ => false,
                };
                if !(fixed && second_pass) {
                    fires.push(i);
                }
            }
        }
        i += Duration::minutes(1);
    }
    if fixed {
        for x in transitions(tz, lo - Duration::hours(1), hi + Duration::seconds(1)) {
            let (before, after) = (offset(tz, x - Duration::seconds(1)), offset(tz, x));
            if after <= before {
                continue;
            }
            // Wall times [x + before, x + after) do not exist; the first match collapses.
            let mut wall = x + Duration::seconds(before + second);
            while wall < x + Duration::seconds(after) {
                if cron.is_time_matching(&wall).expect("match") {
                    let slot = x + Duration::seconds(second);
                    if lo <= slot && slot <= hi {
                        fires.push(slot);
                    }
                    break;
                }
                wall += Duration::minutes(1);
            }
        }
    }
    fires.sort();
    fires.dedup();
    fires
}

/// Checks every transition of `zones` in 2000–2040 with every expression; returns the
/// number of transitions and of slots compared.
fn check(zones: &[Tz]) -> (usize, usize) {
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let (mut checked, mut slots) = (0, 0);
    for &tz in zones {
        let changes = transitions(tz, at(2000), at(2041));
        for expression in EXPRESSIONS {
            let cron = parser.parse(expression).expect("cron");
            let schedule = Schedule::parse(expression, tz).expect("schedule");
            let fixed = is_fixed(expression);
            let second: i64 = expression
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .expect("one second");
            for &x in &changes {
                let (lo, hi) = (x - Duration::hours(3), x + Duration::hours(3));
                let expected = reference(&cron, fixed, second, tz, lo, hi);
                let mut got = Vec::new();
                let mut t = lo - Duration::seconds(1);
                while let Some(next) = schedule.next_after(t) {
                    let next = next.with_timezone(&Utc);
                    if next > hi {
                        break;
                    }
                    got.push(next);
                    t = next;
                }
                let local = |v: &[DateTime<Utc>]| {
                    v.iter()
                        .map(|t| t.with_timezone(&tz).to_rfc3339())
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    local(&got),
                    local(&expected),
                    "{expression:?} in {tz} around the transition at {x}"
                );
                // Backwards: each slot is the latest at or before itself, and one second
                // earlier the one before it.
                for (i, &slot) in expected.iter().enumerate() {
                    let latest = schedule
                        .latest_at_or_before(slot)
                        .map(|t| t.with_timezone(&Utc));
                    assert_eq!(
                        latest,
                        Some(slot),
                        "{expression:?} in {tz}: latest at {slot}"
                    );
                    if i > 0 {
                        let before = schedule
                            .latest_at_or_before(slot - Duration::seconds(1))
                            .map(|t| t.with_timezone(&Utc));
                        assert_eq!(
                            before,
                            Some(expected[i - 1]),
                            "{expression:?} in {tz}: latest before {slot}"
                        );
                    }
                }
                slots += expected.len();
            }
            checked += changes.len();
        }
    }
    (checked, slots)
}

#[test]
fn every_transition_2000_to_2040_follows_the_rule() {
    let (transitions, slots) = check(ZONES);
    eprintln!("checked {transitions} (transition, expression) pairs and {slots} slots");
    assert!(
        transitions > 5_000,
        "the zones' transitions were found: {transitions}"
    );
}

#[test]
fn every_zone_when_asked() {
    if std::env::var_os("FERRY_DST_ALL_ZONES").is_none() {
        eprintln!("all zones not checked: set FERRY_DST_ALL_ZONES=1 (a few minutes)");
        return;
    }
    let (transitions, slots) = check(chrono_tz::TZ_VARIANTS.as_slice());
    eprintln!(
        "all {} zones: checked {transitions} (transition, expression) pairs and {slots} slots",
        chrono_tz::TZ_VARIANTS.len()
    );
}

#[test]
fn the_issues_examples() {
    let slots = |expr: &str, tz: Tz, from: &str, n: usize| -> Vec<String> {
        let from = DateTime::parse_from_rfc3339(from)
            .expect("instant")
            .with_timezone(&Utc);
        Schedule::parse(expr, tz)
            .expect("schedule")
            .upcoming(from, n)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    };
    // 01:30 exists on the spring-forward day: it runs once, with no extra run at 03:00.
    assert_eq!(
        slots(
            "0 30 1 * * *",
            chrono_tz::Europe::Berlin,
            "2025-03-29T12:00:00Z",
            2
        ),
        ["2025-03-30T01:30:00+01:00", "2025-03-31T01:30:00+02:00"]
    );
    assert_eq!(
        slots(
            "0 30 1 * * *",
            chrono_tz::America::New_York,
            "2025-03-08T12:00:00Z",
            2
        ),
        ["2025-03-09T01:30:00-05:00", "2025-03-10T01:30:00-04:00"]
    );
    // Matches only inside the gap: one run, at 03:00 with the first match's seconds.
    assert_eq!(
        slots(
            "15 */20 2 * * *",
            chrono_tz::Europe::Berlin,
            "2024-03-30T12:00:00Z",
            2
        ),
        ["2024-03-31T03:00:15+02:00", "2024-04-01T02:00:15+02:00"]
    );
    // Lord Howe's 30-minute shift: 02:00–02:30 does not exist on 2025-10-05.
    assert_eq!(
        slots(
            "0 15 2 * * *",
            chrono_tz::Australia::Lord_Howe,
            "2025-10-04T00:00:00Z",
            2
        ),
        ["2025-10-05T02:30:00+11:00", "2025-10-06T02:15:00+11:00"]
    );
    // Fall back, stepped hour: both passes of 02:00 run (real time keeps going).
    assert_eq!(
        slots(
            "0 0 */2 * * *",
            chrono_tz::Europe::Berlin,
            "2025-10-25T23:30:00Z",
            3
        ),
        [
            "2025-10-26T02:00:00+02:00",
            "2025-10-26T02:00:00+01:00",
            "2025-10-26T04:00:00+01:00"
        ]
    );
}

#[test]
fn the_next_slot_is_always_after_the_start_even_inside_a_repeated_hour() {
    // Every second of Berlin's fall-back night 2025-10-26, 00:00–02:00 UTC (the repeated
    // 02:00–03:00 local hour is 00:00–02:00 UTC), for fixed, stepped and `*` hours.
    let from = DateTime::parse_from_rfc3339("2025-10-26T00:00:00Z")
        .expect("instant")
        .with_timezone(&Utc);
    for expression in [
        "0 30 2 * * *",
        "0 */20 * * * *",
        "*/7 * 2 * * *",
        "0 0 3 * * *",
    ] {
        let schedule = Schedule::parse(expression, chrono_tz::Europe::Berlin).expect("schedule");
        for second in 0..2 * 3600 {
            let t = from + Duration::seconds(second);
            let next = schedule
                .next_after(t)
                .expect("a next slot")
                .with_timezone(&Utc);
            assert!(next > t, "{expression:?}: next after {t} is {next}");
            let latest = schedule
                .latest_at_or_before(t)
                .map(|l| l.with_timezone(&Utc));
            assert!(
                latest.is_none_or(|l| l <= t),
                "{expression:?}: latest at {t} is {latest:?}"
            );
        }
    }
}

//! Schedules at fixed instants (never the wall clock): time zones, DST both ways, crontab
//! forms, and the tokio-cron-scheduler issues ferry must not inherit.

use chrono::{TimeZone as _, Utc};
use chrono_tz::Tz;
use ferry::schedule::Schedule;

use crate::support::utc;

fn next_n(expr: &str, tz: Tz, after: &str, n: usize) -> Vec<String> {
    Schedule::parse(expr, tz)
        .expect("valid schedule")
        .upcoming(utc(after), n)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect()
}

#[test]
fn a_job_in_a_time_zone_fires_at_its_local_time() {
    assert_eq!(
        next_n(
            "0 0 0 * * Mon-Fri",
            chrono_tz::Europe::Berlin,
            "2026-01-02T12:00:00Z",
            2
        ),
        vec!["2026-01-05T00:00:00+01:00", "2026-01-06T00:00:00+01:00"]
    );
    assert_eq!(
        next_n(
            "0 0 9 * * *",
            chrono_tz::America::New_York,
            "2026-07-01T00:00:00Z",
            1
        ),
        vec!["2026-07-01T09:00:00-04:00"]
    );
}

#[test]
fn spring_forward_a_time_in_the_skipped_hour_runs_once() {
    // Europe/Berlin skips 02:00–03:00 on 2026-03-29.
    let runs = next_n(
        "0 30 2 * * *",
        chrono_tz::Europe::Berlin,
        "2026-03-28T12:00:00Z",
        3,
    );
    assert_eq!(
        runs,
        vec![
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00",
            "2026-03-31T02:30:00+02:00",
        ],
        "exactly one run on the day whose 02:30 does not exist"
    );
    // Half-hourly across the gap: 02:00 and 02:30 do not exist and run once, at 03:00.
    let runs = next_n(
        "0 */30 * * * *",
        chrono_tz::Europe::Berlin,
        "2026-03-29T00:15:00Z",
        3,
    );
    assert_eq!(
        runs,
        vec![
            "2026-03-29T01:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-29T03:30:00+02:00",
        ]
    );
}

#[test]
fn fall_back_a_time_in_the_repeated_hour_runs_once() {
    // Europe/Berlin repeats 02:00–03:00 on 2026-10-25.
    let runs = next_n(
        "0 30 2 * * *",
        chrono_tz::Europe::Berlin,
        "2026-10-24T12:00:00Z",
        3,
    );
    assert_eq!(
        runs,
        vec![
            "2026-10-25T02:30:00+02:00",
            "2026-10-26T02:30:00+01:00",
            "2026-10-27T02:30:00+01:00",
        ],
        "02:30 happens twice on 2026-10-25 and runs once"
    );
    let day = Schedule::parse("0 30 2 * * *", chrono_tz::Europe::Berlin).expect("valid");
    let on_the_day = day.count_between(utc("2026-10-24T22:00:00Z"), utc("2026-10-25T23:00:00Z"));
    assert_eq!(on_the_day, 1);
}

#[test]
fn five_fields_mean_second_zero_and_aliases_are_accepted() {
    assert_eq!(
        next_n("*/15 * * * *", Tz::UTC, "2026-05-01T10:07:30Z", 2),
        vec!["2026-05-01T10:15:00+00:00", "2026-05-01T10:30:00+00:00"]
    );
    for (alias, want) in [
        ("@hourly", "2026-05-01T11:00:00+00:00"),
        ("@daily", "2026-05-02T00:00:00+00:00"),
        ("@weekly", "2026-05-03T00:00:00+00:00"),
        ("@monthly", "2026-06-01T00:00:00+00:00"),
        ("@yearly", "2027-01-01T00:00:00+00:00"),
    ] {
        assert_eq!(
            next_n(alias, Tz::UTC, "2026-05-01T10:07:30Z", 1),
            vec![want],
            "{alias}"
        );
    }
    // Sunday is 0 and 7; names work in either case.
    assert_eq!(
        next_n("0 0 12 * * 7", Tz::UTC, "2026-05-01T00:00:00Z", 1),
        next_n("0 0 12 * * sun", Tz::UTC, "2026-05-01T00:00:00Z", 1),
    );
    assert_eq!(
        next_n("0 0 12 * * 0", Tz::UTC, "2026-05-01T00:00:00Z", 1),
        vec!["2026-05-03T12:00:00+00:00"]
    );
}

/// tokio-cron-scheduler #105: a job given a time zone fired both at its local time and at
/// the same clock time in UTC. ferry computes slots itself: Asia/Shanghai 08:00 is 00:00
/// UTC and nothing else.
#[test]
fn tcs_105_a_zoned_job_fires_once_a_day() {
    let schedule = Schedule::parse("0 0 8 * * *", chrono_tz::Asia::Shanghai).expect("valid");
    let start = utc("2025-10-27T00:00:01Z");
    let runs = schedule.upcoming(start, 3);
    let utc_runs: Vec<String> = runs
        .iter()
        .map(|t| t.with_timezone(&Utc).to_rfc3339())
        .collect();
    assert_eq!(
        utc_runs,
        vec![
            "2025-10-28T00:00:00+00:00",
            "2025-10-29T00:00:00+00:00",
            "2025-10-30T00:00:00+00:00",
        ]
    );
    assert_eq!(
        schedule.count_between(start, utc("2025-10-28T12:00:00Z")),
        1
    );
}

/// tokio-cron-scheduler #113: repeated jobs stopped for good once their next tick fell
/// into the past under load. ferry never uses repeated jobs: after each firing it arms the
/// first slot after both the fired slot and now, so however late a firing is handled, the
/// next one is in the future (and the slots that passed are counted and logged).
#[test]
fn tcs_113_a_late_firing_still_arms_a_future_slot() {
    let schedule = Schedule::parse("*/30 * * * * *", Tz::UTC).expect("valid");
    let slot = utc("2026-01-01T00:00:00Z");
    // Handled 95 s late: the slots at :30, 1:00 and 1:30 passed meanwhile.
    let now = utc("2026-01-01T00:01:35Z");
    let (next, missed) = schedule.after_firing(slot, now);
    assert_eq!(missed, 3);
    assert_eq!(
        next.expect("a next slot").with_timezone(&Utc),
        utc("2026-01-01T00:02:00Z")
    );
    // Handled on time: the next slot is simply the following one.
    let (next, missed) = schedule.after_firing(slot, utc("2026-01-01T00:00:00.2Z"));
    assert_eq!(missed, 0);
    assert_eq!(
        next.expect("a next slot").with_timezone(&Utc),
        utc("2026-01-01T00:00:30Z")
    );
}

/// tokio-cron-scheduler #95 (and #101): schedule-evaluation bugs of the cron parser it
/// used, e.g. a valid 5-field line refused, or day-of-week lists misread. ferry parses with
/// croner 3 itself and checks the cases here.
#[test]
fn tcs_95_schedule_evaluation_is_right() {
    assert_eq!(
        next_n("* * * * *", Tz::UTC, "2026-02-01T00:00:30Z", 2),
        vec!["2026-02-01T00:01:00+00:00", "2026-02-01T00:02:00+00:00"]
    );
    // 2026-02-01 is a Sunday: Mon, Wed, Fri at 06:00.
    assert_eq!(
        next_n("0 0 6 * * 1,3,5", Tz::UTC, "2026-02-01T00:00:00Z", 3),
        vec![
            "2026-02-02T06:00:00+00:00",
            "2026-02-04T06:00:00+00:00",
            "2026-02-06T06:00:00+00:00",
        ]
    );
    // Last day of February, a leap year and not.
    assert_eq!(
        next_n("0 0 0 29 2 *", Tz::UTC, "2026-01-01T00:00:00Z", 1),
        vec!["2028-02-29T00:00:00+00:00"]
    );
    // Both day fields restricted: either matches (Vixie cron semantics).
    assert_eq!(
        next_n("0 0 0 15 * Mon", Tz::UTC, "2026-02-10T00:00:00Z", 2),
        vec!["2026-02-15T00:00:00+00:00", "2026-02-16T00:00:00+00:00"]
    );
}

#[test]
fn slots_are_whole_seconds_even_from_a_fractional_start() {
    let schedule = Schedule::parse("* * * * * *", Tz::UTC).expect("valid");
    let after = Utc
        .timestamp_opt(1_800_000_000, 734_000_000)
        .single()
        .expect("instant");
    let next = schedule
        .next_after(after)
        .expect("next")
        .with_timezone(&Utc);
    assert_eq!(
        next,
        Utc.timestamp_opt(1_800_000_001, 0)
            .single()
            .expect("instant")
    );
}

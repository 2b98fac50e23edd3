//! Readiness of a source's data over an interval (seed 003, the partition registry).
//!
//! A source's data is registered as partitions, each a half-open interval `[start, end)`
//! in UTC, locked while its provider writes it. A source is **ready** over `[start, end)`
//! when the union of its partitions covers the interval without a gap and none of the
//! partitions that overlap it is locked. When it is not, [`readiness`] says why, naming
//! the earliest problem in time: the first uncovered sub-interval, or the first locked
//! partition (by whom, since when, for which run).
//!
//! Pure: the store fetches the partitions that overlap the interval (an indexed range
//! query) and this makes one pass over them, sorted by start.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A registered partition as readiness sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
    /// The lock on it, when its latest event is a lock.
    pub lock: Option<Lock>,
}

/// Who holds a partition's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lock {
    /// The provider (or ferry job) that locked it.
    pub by: String,
    /// When it was locked.
    pub since: DateTime<Utc>,
    /// The ferry run writing it, when a ferry job locked it.
    pub run_id: Option<String>,
    /// Why it stays locked, when its writer failed for good.
    pub reason: Option<String>,
}

/// Whether a source is ready over an interval, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Readiness {
    /// Covered without a gap, nothing locked.
    Ready,
    /// `[start, end)` is covered by no partition: the first such gap.
    Uncovered {
        /// Where the gap starts.
        start: DateTime<Utc>,
        /// Where it ends (the next partition's start, or the interval's end).
        end: DateTime<Utc>,
    },
    /// A partition overlapping the interval is locked: the first such one.
    Locked {
        /// The locked partition's start.
        start: DateTime<Utc>,
        /// The locked partition's end.
        end: DateTime<Utc>,
        /// Its lock.
        lock: Lock,
    },
}

impl Readiness {
    /// Whether the data is ready.
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }

    /// The answer in words, for `source` over `[start, end)`: what the readiness API calls
    /// `message`.
    pub fn message(&self, source: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> String {
        let interval = |start: &DateTime<Utc>, end: &DateTime<Utc>| {
            format!("[{}, {})", start.to_rfc3339(), end.to_rfc3339())
        };
        match self {
            Readiness::Ready => format!("{source} is ready over {}", interval(&start, &end)),
            Readiness::Uncovered { start, end } => format!(
                "{source} is not ready: no partition covers {}",
                interval(start, end)
            ),
            Readiness::Locked { start, end, lock } => {
                let mut text = format!(
                    "{source} is not ready: partition {} is locked by {} since {}",
                    interval(start, end),
                    lock.by,
                    lock.since.to_rfc3339()
                );
                if let Some(run_id) = &lock.run_id {
                    text.push_str(&format!(" (run {run_id})"));
                }
                if let Some(reason) = &lock.reason {
                    text.push_str(&format!(": {reason}"));
                }
                text
            }
        }
    }
}

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a timestamp (expected e.g. 2000-01-01T00:00:00Z, \"2000-01-01 00:00:00+00:00\" or 2000-01-01; without a zone it is UTC)"
)]
pub struct BadInstant(pub String);

/// A timestamp as the registry accepts it, like the seed's service: RFC 3339 with `T` or a
/// space between date and time (Python's `str(datetime)`), fractional seconds optional, a
/// zone `Z`/`±HH:MM`/`±HHMM`/`±HH` or none (then UTC), or a bare date (midnight UTC). A
/// space where the zone's `+` was is taken as `+`: an unencoded `+` in a query string
/// arrives as a space.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, BadInstant> {
    use chrono::{NaiveDate, NaiveDateTime};
    let bad = || BadInstant(text.chars().take(64).collect());
    let trimmed = text.trim();
    if trimmed.len() > 64 {
        return Err(bad());
    }
    if let Ok(date) = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    // Split off the zone: `Z`, or a sign (or a space standing for `+`) after the time.
    let (local, zone) = match trimmed.strip_suffix(['Z', 'z']) {
        Some(rest) => (rest, Some("+00:00".to_owned())),
        None => match trimmed
            .get(10..)
            .and_then(|time| time.rfind(['+', '-', ' ']))
        {
            Some(at) if at > 3 => {
                let at = at + 10;
                let zone = &trimmed[at + 1..];
                let sign = if trimmed[at..].starts_with('-') {
                    '-'
                } else {
                    '+'
                };
                (&trimmed[..at], Some(format!("{sign}{zone}")))
            }
            _ => (trimmed, None),
        },
    };
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(local, format).ok())
    .ok_or_else(bad)?;
    let Some(zone) = zone else {
        return Ok(naive.and_utc());
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    let (hours, minutes) = match digits.len() {
        2 => (&digits[..2], "00"),
        4 => (&digits[..2], &digits[2..]),
        _ => return Err(bad()),
    };
    let (Ok(hours), Ok(minutes)) = (hours.parse::<i32>(), minutes.parse::<i32>()) else {
        return Err(bad());
    };
    let seconds = (hours * 3600 + minutes * 60) * if zone.starts_with('-') { -1 } else { 1 };
    let offset = chrono::FixedOffset::east_opt(seconds).ok_or_else(bad)?;
    naive
        .and_local_timezone(offset)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(bad)
}

/// Readiness over `[start, end)` given the source's partitions (any order; those not
/// overlapping the interval are ignored). An empty interval is ready.
pub fn readiness(partitions: &[Partition], start: DateTime<Utc>, end: DateTime<Utc>) -> Readiness {
    if end <= start {
        return Readiness::Ready;
    }
    let mut overlapping: Vec<&Partition> = partitions
        .iter()
        .filter(|p| p.start < end && p.end > start && p.start < p.end)
        .collect();
    overlapping.sort_by_key(|p| (p.start, p.end));
    // `covered` is how far from `start` the partitions seen so far reach without a gap.
    // Every overlapping partition is looked at, even once the interval is covered: a
    // locked one further on still makes the data not ready.
    let mut covered = start;
    for partition in overlapping {
        if partition.start > covered && covered < end {
            return Readiness::Uncovered {
                start: covered,
                end: partition.start,
            };
        }
        if let Some(lock) = &partition.lock {
            return Readiness::Locked {
                start: partition.start,
                end: partition.end,
                lock: lock.clone(),
            };
        }
        covered = covered.max(partition.end);
    }
    if covered < end {
        return Readiness::Uncovered {
            start: covered,
            end,
        };
    }
    Readiness::Ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use proptest::prelude::*;

    fn at(minute: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + minute * 60, 0)
            .single()
            .expect("instant")
    }

    fn part(start: i64, end: i64, locked: bool) -> Partition {
        Partition {
            start: at(start),
            end: at(end),
            lock: locked.then(|| Lock {
                by: "provider".into(),
                since: at(0),
                run_id: None,
                reason: None,
            }),
        }
    }

    #[test]
    fn the_seeds_examples() {
        let hours = [part(0, 60, false), part(60, 120, false)];
        assert!(readiness(&hours, at(0), at(120)).is_ready());
        assert!(readiness(&hours, at(30), at(90)).is_ready());
        assert_eq!(
            readiness(&hours, at(0), at(180)),
            Readiness::Uncovered {
                start: at(120),
                end: at(180)
            }
        );
        let locked = [part(0, 60, false), part(60, 120, true)];
        assert!(matches!(
            readiness(&locked, at(0), at(120)),
            Readiness::Locked { start, .. } if start == at(60)
        ));
        // The locked partition does not overlap [0, 60): ready there.
        assert!(readiness(&locked, at(0), at(60)).is_ready());
        assert!(readiness(&[], at(5), at(5)).is_ready());
    }

    #[test]
    fn timestamps_are_read_as_the_seed_reads_them() {
        let midnight = Utc
            .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
            .single()
            .expect("date");
        for text in [
            "2000-01-01 00:00:00+00:00",
            "2000-01-01T00:00:00Z",
            "2000-01-01T00:00:00",
            "2000-01-01 00:00:00",
            "2000-01-01T00:00:00.000+00:00",
            "2000-01-01T00:00:00 00:00",
            "2000-01-01T01:00:00+0100",
            "2000-01-01T01:00:00+01",
            "1999-12-31T19:00:00-05:00",
            "2000-01-01",
            "2000-01-01T00:00",
        ] {
            assert_eq!(parse_instant(text), Ok(midnight), "{text}");
        }
        for text in [
            "",
            "yesterday",
            "2000-13-01",
            "2000-01-01T00:00:00+25:00",
            "2000-01-01T00:00:00+1",
        ] {
            assert!(parse_instant(text).is_err(), "{text}");
        }
        let long = "9".repeat(10_000);
        let err = parse_instant(&long).expect_err("too long");
        assert!(
            err.to_string().len() < 300,
            "the error quotes a bounded prefix"
        );
    }

    /// Brute force on a minute grid: every minute covered by some partition, and no
    /// partition overlapping the interval locked.
    fn brute_force(partitions: &[(i64, i64, bool)], start: i64, end: i64) -> bool {
        if end <= start {
            return true;
        }
        let covered = (start..end).all(|m| partitions.iter().any(|&(s, e, _)| s <= m && m < e));
        let locked = partitions
            .iter()
            .any(|&(s, e, locked)| locked && s < e && s < end && e > start);
        covered && !locked
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn readiness_agrees_with_brute_force(
            raw in proptest::collection::vec((0i64..200, 1i64..60, proptest::bool::weighted(0.15)), 0..25),
            start in 0i64..220,
            len in 0i64..120,
        ) {
            let spans: Vec<(i64, i64, bool)> = raw.iter().map(|&(s, l, k)| (s, s + l, k)).collect();
            let partitions: Vec<Partition> = spans.iter().map(|&(s, e, k)| part(s, e, k)).collect();
            let answer = readiness(&partitions, at(start), at(start + len));
            prop_assert_eq!(answer.is_ready(), brute_force(&spans, start, start + len));
            match answer {
                Readiness::Ready => {}
                // A reported gap is really uncovered, inside the interval, and not empty.
                Readiness::Uncovered { start: gap_start, end: gap_end } => {
                    prop_assert!(at(start) <= gap_start && gap_start < gap_end && gap_end <= at(start + len));
                    let first = (gap_start - at(0)).num_minutes();
                    prop_assert!(!spans.iter().any(|&(s, e, _)| s <= first && first < e));
                }
                // A reported lock is on a partition that overlaps the interval.
                Readiness::Locked { start: p_start, end: p_end, .. } => {
                    prop_assert!(p_start < at(start + len) && p_end > at(start));
                    prop_assert!(partitions.iter().any(|p| p.start == p_start && p.end == p_end && p.lock.is_some()));
                }
            }
        }
    }
}

//! Partition readiness over 10,000 partitions of one source, in the store.
//!
//!   cargo bench --bench registry
//!   FERRY_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench registry
//!
//! One source with 10,000 hourly partitions (one locked), then `Store::readiness` (one
//! indexed range query plus one pass) over: the latest day, a day in the middle, a week,
//! and the whole range (every partition read). Each is asked 2,000 times; the median, p99
//! and max are printed. SQLite always, PostgreSQL when `FERRY_BENCH_POSTGRES_URL` is set.
//! Nothing is asserted: the goal (≤ 1 ms for a day) is read off the figures.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use ferry::state::{Change, Store};

const PARTITIONS: i64 = 10_000;
const ASKS: usize = 2_000;

fn hour(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .expect("instant")
        + chrono::Duration::hours(n)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

async fn bench(name: &str, store: &Store) {
    let source = format!("bench.{}", uuid::Uuid::new_v4().simple());
    store
        .register_source(&source, "bench", &uuid::Uuid::new_v4().to_string())
        .await
        .expect("source");
    store
        .register_provider(&source, "loader")
        .await
        .expect("provider");
    let filled = Instant::now();
    for h in 0..PARTITIONS {
        store
            .register_partition(&source, "loader", hour(h), hour(h + 1))
            .await
            .expect("partition");
    }
    let locked = Change::Lock {
        run_id: Some("bench"),
        reason: None,
    };
    store
        .change_partition(&source, "loader", hour(5000), hour(5001), locked)
        .await
        .expect("lock");
    println!(
        "{name}: {PARTITIONS} partitions registered in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}  answer",
        "interval", "median", "p99", "max"
    );
    let cases = [
        (
            "latest day (24 partitions)",
            hour(PARTITIONS - 24),
            hour(PARTITIONS),
        ),
        ("a day in the middle", hour(4000), hour(4024)),
        ("a week around the locked hour", hour(4900), hour(5068)),
        ("everything (10,000 partitions)", hour(0), hour(PARTITIONS)),
    ];
    for (label, start, end) in cases {
        let mut times = Vec::with_capacity(ASKS);
        let mut answer = String::new();
        for _ in 0..ASKS {
            let began = Instant::now();
            let readiness = store
                .readiness(&source, start, end)
                .await
                .expect("readiness");
            times.push(began.elapsed());
            answer = if readiness.is_ready() {
                "ready".into()
            } else {
                "not ready".into()
            };
        }
        times.sort();
        println!(
            "{label:<34} {:>8.3}ms {:>8.3}ms {:>8.3}ms  {answer}",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
    }
    println!();
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::open("sqlite://bench.db", dir.path())
        .await
        .expect("SQLite");
    bench("SQLite (WAL, one file)", &sqlite).await;
    match std::env::var("FERRY_BENCH_POSTGRES_URL") {
        Ok(url) => {
            let pg = Store::open(&url, dir.path()).await.expect("PostgreSQL");
            bench("PostgreSQL (127.0.0.1)", &pg).await;
        }
        Err(_) => println!("PostgreSQL not measured: FERRY_BENCH_POSTGRES_URL is not set"),
    }
}

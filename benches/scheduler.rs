//! Scheduling benchmarks: many jobs in one file, and how late firings start.
//!
//!   cargo bench --bench scheduler                  (all of it, about 3 minutes)
//!   cargo bench --bench scheduler -- --quick       (shorter idle and lag windows)
//!   FERRY_BENCH_LAG_JOBS=1000 cargo bench --bench scheduler   (only that lag figure)
//!   FERRY_BENCH_LAG_PATH='out/{job}/{scheduled:%H%M%S}' ...   (a new file per run instead
//!                                                 of one file per job replaced by each run)
//!
//! 1. 10,000 jobs in one file: time to load and check the file, to build and arm every
//!    job (until the daemon is ready), resident memory, and CPU used while idle (the jobs
//!    fire yearly) over 60 s.
//! 2. 1,000 and then 100 jobs firing every second for 60 s, run by the release binary: the
//!    lag between each run's slot and its "Run started." log line (p50, p99, max), and how
//!    many slots were skipped because their previous run was still going.
//!
//! Figures are printed; nothing is asserted (timing belongs in benchmarks, not tests).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry::daemon::{self, Control, Event};
use tokio::sync::mpsc;

/// The local writer's path template of every job: `FERRY_BENCH_LAG_PATH`, or one file per
/// job replaced by each run.
fn writer_path() -> String {
    std::env::var("FERRY_BENCH_LAG_PATH").unwrap_or_else(|_| "out/{job}".into())
}

fn job_file(dir: &Path, jobs: usize, schedule: &str) -> std::path::PathBuf {
    let mut text = String::new();
    let writer_path = writer_path();
    for i in 0..jobs {
        let _ = write!(
            text,
            "[[jobs]]\nname = \"job-{i}\"\nschedule = \"{schedule}\"\nsource = {{ type = \"inline\", data = \"{i}\" }}\nwriters = [{{ type = \"local\", path = \"{writer_path}\" }}]\n\n"
        );
    }
    let path = dir.join("jobs.toml");
    std::fs::write(&path, text).expect("write the job file");
    path
}

/// (resident, peak resident) memory of this process in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

async fn many_jobs(jobs: usize, idle: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = job_file(dir.path(), jobs, "@yearly");

    let started = Instant::now();
    let config = ferry::config::load(&path).expect("valid file");
    let load = started.elapsed();
    let (rss_loaded, _) = rss_mib();
    drop(config);

    let (control, control_rx) = mpsc::channel(1);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    let task = tokio::spawn(async move { daemon::run(&path, control_rx, Some(events_tx)).await });
    loop {
        if let Some(Event::Ready { armed, .. }) = events.recv().await {
            assert_eq!(armed, jobs);
            break;
        }
    }
    let ready = started.elapsed();
    let (rss, _) = rss_mib();

    let cpu_before = cpu_time();
    tokio::time::sleep(idle).await;
    let cpu = cpu_time() - cpu_before;
    let (rss_after, peak) = rss_mib();

    let _ = control.send(Control::Shutdown).await;
    let _ = task.await;
    println!("{jobs} jobs in one file:");
    println!(
        "  load and check the file  {:>8.1} ms",
        load.as_secs_f64() * 1e3
    );
    println!(
        "  load, build and arm all  {:>8.1} ms (until ready)",
        ready.as_secs_f64() * 1e3
    );
    println!("  resident memory          {rss_loaded:>8.1} MiB with the file loaded");
    println!(
        "  resident memory          {rss:>8.1} MiB when ready, {rss_after:.1} MiB after idling, peak {peak:.1} MiB"
    );
    println!(
        "  CPU while idle           {:>8.2} % of one core over {} s",
        cpu.as_secs_f64() / idle.as_secs_f64() * 100.0,
        idle.as_secs()
    );
}

/// Runs the release binary (`ferry run`, JSON logs to a file) on `jobs` jobs that fire every
/// second, for `window`, and reads each run's lag off its own "Run started." log line: the
/// line's timestamp minus the run's slot, so the claim, the logging and everything else
/// before the start counts. The job file, its SQLite store and the delivered files are on
/// the disk (not tmpfs) unless `TMPDIR` says otherwise, so fsyncs cost what they cost.
fn fire_lag(jobs: usize, window: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = job_file(dir.path(), jobs, "* * * * * *");
    let log_path = dir.path().join("ferry.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log-format", "json", "run", "-c"])
        .arg(&path)
        .env("FERRY_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ferry");
    std::thread::sleep(window + Duration::from_secs(2));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();

    let text = std::fs::read_to_string(&log_path).expect("read the log");
    let mut lags = Vec::new();
    let (mut skipped, mut failed, mut ready) = (0usize, 0usize, None);
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = event["fields"]["message"].as_str().unwrap_or_default();
        let time = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        match message {
            "Run started." => {
                let slot = event["spans"]
                    .as_array()
                    .and_then(|spans| spans.iter().find(|s| s["name"] == "run"))
                    .and_then(|span| time(&span["slot"]));
                if let (Some(at), Some(slot)) = (time(&event["timestamp"]), slot) {
                    // Only slots of the whole seconds after the daemon was ready.
                    if ready.is_some_and(|ready| slot > ready) {
                        let lag = at.signed_duration_since(slot);
                        lags.push(lag.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3);
                    }
                }
            }
            "Run failed." => failed += 1,
            m if m.starts_with("Skipped:") => skipped += 1,
            m if m.starts_with("Ready") => ready = time(&event["timestamp"]),
            _ => {}
        }
    }
    println!(
        "{jobs} jobs firing every second for {} s (release binary, JSON log, SQLite store and files under {}, path \"{}\"):",
        window.as_secs(),
        std::env::temp_dir().display(),
        writer_path()
    );
    if lags.is_empty() {
        println!("  no run started");
        return;
    }
    lags.sort_by(f64::total_cmp);
    let pick = |q: f64| lags[((lags.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "  runs started {}, failed {failed}, skipped (still running) {skipped}",
        lags.len()
    );
    println!(
        "  start lag after the slot  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms",
        pick(0.5),
        pick(0.99),
        pick(1.0),
        pick(0.0)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if std::env::var_os("FERRY_BENCH_LAG_JOBS").is_none() {
            many_jobs(10_000, Duration::from_secs(if quick { 10 } else { 60 })).await;
        }
    });
    let lag_jobs: Vec<usize> = std::env::var("FERRY_BENCH_LAG_JOBS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100]);
    for jobs in lag_jobs {
        fire_lag(jobs, Duration::from_secs(if quick { 10 } else { 60 }));
    }
}

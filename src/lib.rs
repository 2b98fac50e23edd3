//! ferry: a scheduled data-delivery daemon.
//!
//! A job reads bytes from a [`DataSource`](source::DataSource), optionally compresses them,
//! and writes them to one or more [`Writer`](writer::Writer)s. The data flows one way and is
//! never held whole in memory:
//!
//! ```text
//! jobs.toml ─► config::load ─► config::Config ─► Job::build ─► ActivityRunner
//!                                                                  │
//!     ActivityRunner ─► RetryingActivity ─► DeliveryActivity ──────┘
//!          │                  (backoff,           │
//!          │                   timeouts)          ├─ DataSource::open ─► byte stream
//!          │                                      ├─ Transform (gzip / zstd)
//!          │                                      └─ fan-out ─► Writer::write ─► Delivery
//!          └─► success / failure handlers (notify::Notifier), once per run
//! ```
//!
//! # One delivery, module by module
//!
//! 1. **Start-up.** `main` parses the command line ([`cli`]) and calls [`daemon::run`].
//!    [`config`] reads the job file into checked settings with no I/O at all (every problem
//!    at once, as `file:line:col: message`); each kind's settings come from its own file and
//!    use the shared vocabulary of [`settings`] (key paths, durations, secrets) and [`tls`].
//! 2. **Building.** [`job`] turns each job's settings into a runnable [`job::Job`]: every
//!    kind's `build` gets a [`build_env::BuildEnv`] (the job file's directory and the shared
//!    HTTP client) and reads its secrets now; notifiers become handlers.
//! 3. **Arming.** The daemon opens the [`state`] store (SQLite or PostgreSQL), resumes what
//!    a previous daemon left unfinished when the store lets it take it over, catches up
//!    missed slots within their grace, and arms each job: [`schedule`] computes the next slot
//!    from the cron expression in the job's zone, its timer releases it at that instant, and
//!    its policies decide about overlapping runs and missed slots. The instant is read off a
//!    [`schedule::Clock`]: the system's, or in tests tokio's paused clock
//!    ([`daemon::run_on`]).
//! 4. **Firing.** A released slot is claimed in the store (one run per job and slot, however
//!    many daemons see it) and handed, with its [`context::RunContext`], to the
//!    [`runner`]: [`runner::RetryingActivity`] makes attempts by policy, each one
//!    [`activity::DeliveryActivity`]: the [`source`] opens a byte stream, [`transform`]
//!    compresses it, and every [`writer`] consumes its own [`writer::Payload`], counting and
//!    hashing what it reads, checkpointing progress into the store, and returning a receipt.
//!    Failures are [`error::DeliveryError`]s whose kind decides retries; HTTP-speaking kinds
//!    classify through [`http`]. Paths and keys are [`template`]s over the slot.
//! 5. **Reporting.** The runner records the outcome in the store and assembles a
//!    [`report::RunReport`]; [`notify`] tells the job's handlers (log, email, webhook) in the
//!    background, once, and keeps how each went.
//! 6. **Reload and shutdown.** SIGHUP re-reads and re-arms what changed; SIGTERM stops
//!    firing and gives running deliveries `shutdown_timeout` ([`daemon`]).
//!
//! # Layers
//!
//! Imports point down only: the daemon and CLI use jobs; jobs use the runner, the activity
//! and the kinds; the kinds (`source/*`, `writer/*`, `notify/*`) use only the leaves
//! ([`settings`], [`build_env`], [`context`], [`report`], [`tls`], [`http`], [`error`],
//! [`template`], [`state`]), never `job`, `runner`, `daemon` or `config`. A test
//! (`tests/it/architecture.rs`) keeps the graph free of cycles.
//!
//! Library users can build a [`DeliveryActivity`](activity::DeliveryActivity) from their own
//! sources and writers; see `examples/custom_writer.rs`.

pub mod activity;
pub mod api;
pub mod build_env;
pub mod cli;
pub mod config;
pub mod context;
pub mod daemon;
pub mod encryption;
pub mod error;
pub mod gate;
pub mod http;
pub mod job;
mod kinds;
pub mod metrics;
pub mod notify;
pub mod partition;
pub mod progress;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod settings;
pub mod source;
pub mod state;
pub mod template;
pub mod tls;
pub mod transform;
pub mod writer;

pub use context::RunContext;

/// The size of the chunks data moves in between sources, transforms and writers.
///
/// Large enough that per-chunk overhead vanishes on fast disks and loopback, small enough
/// that a few chunks in flight per writer keep memory flat.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// This machine's host name, as the kernel tells it (`localhost` if it cannot be told).
/// Asked with gethostname(2): under systemd's `ProcSubset=pid` /proc/sys is hidden.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let done = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if done == 0 && !name.is_empty() => name.to_owned(),
        _ => "localhost".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_name_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        assert_eq!(super::host_name(), kernel.trim());
    }
}

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
//! * [`config`] parses the job file into checked settings without doing any I/O; every
//!   problem is reported at once as `file:line:col: message`.
//! * [`source`] and [`writer`] hold one file per kind; a kind is added by writing that file
//!   and one registration line.
//! * [`activity`] is one attempt of a delivery: source → transform → every writer, with
//!   backpressure, each writer hashing what it wrote.
//! * [`runner`] retries attempts by policy ([`runner::RetryingActivity`]) and calls the
//!   handlers exactly once per run ([`runner::ActivityRunner`]).
//! * [`job`] turns a checked job configuration into the runnable pieces.
//!
//! Library users can build a [`DeliveryActivity`](activity::DeliveryActivity) from their own
//! sources and writers; see `examples/custom_writer.rs`.

pub mod activity;
pub mod build_env;
pub mod cli;
pub mod config;
pub mod context;
pub mod daemon;
pub mod error;
pub mod http;
pub mod job;
mod kinds;
pub mod notify;
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

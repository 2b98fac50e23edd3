//! The `ferry` binary: parse the command line, set up logging, run, map to an exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use ferry::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() -> ExitCode {
    bound_large_allocations();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ferry: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(ferry::cli::execute(&cli));
    // Programs of cancelled runs got SIGTERM; see them gone (or SIGKILLed) before exiting.
    if !ferry::source::wait_for_terminations(ferry::source::TERM_GRACE * 2) {
        eprintln!("ferry: a cancelled program's process group did not end");
    }
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    outcome.exit_code()
}

/// Makes glibc serve every allocation of 1 MiB or more (S3 part buffers, mostly) from its
/// own mapping, returned to the system when freed. By default glibc raises that threshold as
/// large blocks are freed and then keeps them in per-thread arenas, which let a 16 MiB × 4
/// multipart upload hold over 130 MiB.
fn bound_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
    // exists, and a refusal (return value 0) leaves the defaults, which are also safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Crates whose debug and trace output carries credentials: lettre logs the SMTP exchange
/// (`AUTH PLAIN <base64 of user and password>`), suppaftp the FTP one (`PASS <password>`).
/// Whatever `FERRY_LOG` says, nothing below INFO from them is logged.
const CREDENTIAL_LOGGERS: [&str; 2] = ["lettre", "suppaftp"];

/// Whether an event may be logged at all: not a credential logger's debug or trace line.
fn loggable(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let from_credential_logger = CREDENTIAL_LOGGERS.iter().any(|name| {
        target
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !(from_credential_logger && *meta.level() > tracing::Level::INFO)
}

/// Logs go to standard error (or the journal); `FERRY_LOG` (or `RUST_LOG`) filters them,
/// `info` by default. No credential logger's detail is ever logged ([`loggable`]).
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("FERRY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Human,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(loggable));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journald) => registry.with(journald).init(),
            Err(err) => {
                registry
                    .with(fmt.json().with_span_list(true).with_current_span(false))
                    .init();
                tracing::warn!(error = %err, "Cannot reach journald; logging JSON to standard error.");
            }
        },
        LogFormat::Json => registry
            .with(fmt.json().with_span_list(true).with_current_span(false))
            .init(),
        // Colours only on a terminal: `--log-format human 2> file` stays plain text.
        LogFormat::Human | LogFormat::Auto => registry
            .with(
                fmt.with_target(false)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
    }
}

/// Whether systemd connected standard error to the journal: `JOURNAL_STREAM` names the
/// device and inode of that stream.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

//! The command line: `ferry run | validate | list | trigger JOB | history | notify-test NAME |
//! sources register NAME | partitions [SOURCE] | partitions lock|unlock … | ready SOURCE START END`,
//! each with `--config PATH`.
//!
//! Each command is a function returning what to print and the exit code, so tests can call
//! them without a process: 0 success, 1 a delivery or runtime failure, 2 bad usage or a bad
//! job file.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::build_env::BuildEnv;
use crate::config::{self, Config};
use crate::daemon::{self, DaemonError};
use crate::job::Job;
use crate::notify::Notifications;
use crate::report::RunStatus;
use crate::schedule::{Schedule, parse_timezone};
use crate::state::{Ledger, Store, owner_id};

/// ferry: scheduled data delivery.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// The job file.
    #[arg(
        long,
        short,
        global = true,
        env = "FERRY_CONFIG",
        default_value = "/etc/ferry/jobs.toml"
    )]
    pub config: PathBuf,

    /// How logs are written: `auto` is journald's native protocol when systemd connected
    /// standard error to the journal, human on a terminal, JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The format of logs (written to standard error, or to the journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Journald under systemd, human on a terminal, JSON otherwise.
    Auto,
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
    /// journald's native protocol, with fields as journal fields.
    Journald,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: fire every enabled job on its schedule until SIGTERM or SIGINT;
    /// SIGHUP reloads the job file.
    Run,
    /// Check the job file: exit 0 when it is valid, 2 with every problem otherwise.
    Validate,
    /// List the jobs with their schedules and next fire times.
    List,
    /// Run one job now in the foreground, print its receipts, exit 0 or 1.
    Trigger {
        /// The job's name.
        job: String,
        /// Re-run this past slot of the job's schedule (templates render for it; the earlier
        /// run stays in the history) instead of running for now.
        #[arg(long)]
        slot: Option<String>,
        /// Print the run's report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run every slot of JOB's schedule in [FROM, TO), skipping slots that already
    /// succeeded; exit 0 when every slot has succeeded, 1 otherwise.
    Backfill {
        /// The job's name.
        job: String,
        /// The first instant (RFC 3339, `YYYY-MM-DD HH:MM:SS`, or a date; UTC without a
        /// zone).
        #[arg(long)]
        from: String,
        /// The end, excluded.
        #[arg(long)]
        to: String,
        /// How many slots run at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Run slots that already succeeded too.
        #[arg(long)]
        force: bool,
    },
    /// Send a test message through a notifier, about a made-up run; exit 0 once it went
    /// out, 1 with the reason it did not.
    NotifyTest {
        /// The notifier's name (`[notifiers.NAME]`).
        notifier: String,
        /// Tell of a failed run instead of a successful one.
        #[arg(long)]
        failure: bool,
    },
    /// The partition registry's sources: `ferry sources register NAME --owner WHO`.
    Sources {
        /// What to do with sources.
        #[command(subcommand)]
        command: SourcesCommand,
    },
    /// List the latest partitions (of SOURCE, or of every source), or lock and unlock one.
    #[command(args_conflicts_with_subcommands = true)]
    Partitions {
        /// Lock or unlock a partition.
        #[command(subcommand)]
        command: Option<PartitionsCommand>,
        /// Only this source's partitions.
        source: Option<String>,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Whether SOURCE is ready over [START, END): exit 0 when it is, 1 when not, with the
    /// reason on standard error.
    Ready {
        /// The source.
        source: String,
        /// Inclusive start (RFC 3339, `YYYY-MM-DD HH:MM:SS`, or a date; UTC without a zone).
        start: String,
        /// Exclusive end.
        end: String,
    },
    /// What the daemon is doing: every job's next fire times and last run, the runs in
    /// flight with their progress, recent failures, partitions. Asks the daemon's API when
    /// `[api] listen` is set and it answers, else reads the state store.
    Status {
        /// Print JSON (the API's `/status.json`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The daemons sharing the state store (alive: a heartbeat within the last lease) and
    /// the runs each has going; runs whose lease ran out wait for a daemon to take them over.
    Cluster {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL on standard output, e.g.
    /// `ferry completions bash > /usr/share/bash-completion/completions/ferry`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print ferry's man page (roff) on standard output (`ferry man | man -l -`), or write
    /// it and a page per command (`ferry-run.1`, …) into a directory.
    Man {
        /// Write `ferry.1` and `ferry-COMMAND.1` here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show recent runs from the state store, newest first.
    History {
        /// Only this job's runs.
        job: Option<String>,
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `ferry sources …`.
#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Register a source and print its access token, once (it is stored only as a hash).
    Register {
        /// The source's name, e.g. `shop.orders`.
        name: String,
        /// Who answers for it.
        #[arg(long)]
        owner: String,
        /// Give an existing source a new token (the old one stops working).
        #[arg(long)]
        rotate: bool,
    },
}

/// `ferry partitions lock|unlock …`, for operators (no token: the store is the authority).
#[derive(Debug, Subcommand)]
pub enum PartitionsCommand {
    /// Lock a registered partition: the source is not ready over it.
    Lock(PartitionArgs),
    /// Unlock a registered partition: its data is complete.
    Unlock(PartitionArgs),
}

/// Which partition.
#[derive(Debug, clap::Args)]
pub struct PartitionArgs {
    /// The source.
    pub source: String,
    /// The partition's start.
    pub start: String,
    /// The partition's end.
    pub end: String,
    /// The provider that registered it (a ferry job's partitions: the job's name).
    #[arg(long)]
    pub provider: String,
    /// Why it is locked, shown by readiness checks.
    #[arg(long)]
    pub reason: Option<String>,
}

/// What a command printed and how it ends.
#[derive(Debug)]
pub struct Outcome {
    /// Text for standard output.
    pub stdout: String,
    /// Text for standard error.
    pub stderr: String,
    /// The exit code: 0, 1 or 2.
    pub code: u8,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome {
            stdout,
            stderr: String::new(),
            code: 0,
        }
    }

    fn fail(code: u8, stderr: String) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr,
            code,
        }
    }

    /// The exit code as a process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

/// Runs a parsed command line.
pub async fn execute(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Run => run_daemon(cli).await,
        Command::Validate => match load(cli) {
            Ok(config) => Outcome::ok(validate_summary(&config)),
            Err(outcome) => outcome,
        },
        Command::List => match load(cli) {
            Ok(config) => Outcome::ok(list(&config, Utc::now())),
            Err(outcome) => outcome,
        },
        Command::Trigger { job, slot, json } => match load(cli) {
            Ok(config) => trigger(&config, job, slot.as_deref(), *json).await,
            Err(outcome) => outcome,
        },
        Command::Backfill {
            job,
            from,
            to,
            concurrency,
            force,
        } => match load(cli) {
            Ok(config) => backfill(&config, job, from, to, *concurrency, *force).await,
            Err(outcome) => outcome,
        },
        Command::NotifyTest { notifier, failure } => match load(cli) {
            Ok(config) => notify_test(&config, notifier, *failure).await,
            Err(outcome) => outcome,
        },
        Command::Sources { command } => match load(cli) {
            Ok(config) => sources(&config, command).await,
            Err(outcome) => outcome,
        },
        Command::Partitions {
            command,
            source,
            limit,
            json,
        } => match load(cli) {
            Ok(config) => match command {
                Some(command) => change_partition(&config, command).await,
                None => partitions(&config, source.as_deref(), *limit, *json).await,
            },
            Err(outcome) => outcome,
        },
        Command::Ready { source, start, end } => match load(cli) {
            Ok(config) => ready(&config, source, start, end).await,
            Err(outcome) => outcome,
        },
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "ferry", &mut script);
            Outcome::ok(String::from_utf8_lossy(&script).into_owned())
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Status { json } => match load(cli) {
            Ok(config) => status(&config, *json).await,
            Err(outcome) => outcome,
        },
        Command::Cluster { json } => match load(cli) {
            Ok(config) => cluster(&config, *json).await,
            Err(outcome) => outcome,
        },
        Command::History { job, limit, json } => match load(cli) {
            Ok(config) => history(&config, job.as_deref(), *limit, *json).await,
            Err(outcome) => outcome,
        },
    }
}

/// Opens the job file's state store.
async fn open_store(config: &Config) -> Result<Store, Outcome> {
    let fail = |err: String| Outcome::fail(1, format!("ferry: {err}\n"));
    let url = config
        .daemon
        .state_url(&config.base_dir)
        .map_err(|err| fail(crate::error::display_chain(&err.chain())))?;
    Store::open(url.expose(), &config.base_dir)
        .await
        .map_err(|err| fail(err.to_string()))
}

/// `ferry sources register`: the new source's token on standard output, once.
pub async fn sources(config: &Config, command: &SourcesCommand) -> Outcome {
    let SourcesCommand::Register {
        name,
        owner,
        rotate,
    } = command;
    let store = match open_store(config).await {
        Ok(store) => store,
        Err(outcome) => return outcome,
    };
    let token = crate::state::new_token();
    let done = match rotate {
        false => store.register_source(name, owner, &token).await.map(|_| ()),
        true => store.rotate_token(name, &token).await,
    };
    match done {
        Ok(()) => Outcome {
            stdout: format!("{token}\n"),
            stderr: format!(
                "ferry: source {name:?} {}; its access token is on standard output and is not shown again\n",
                if *rotate {
                    "has a new token"
                } else {
                    "registered"
                }
            ),
            code: 0,
        },
        Err(crate::state::RegistryError::Exists(_)) => Outcome::fail(
            1,
            format!(
                "ferry: source {name:?} is already registered; no token is given (--rotate issues a new one)\n"
            ),
        ),
        Err(err) => Outcome::fail(1, format!("ferry: {err}\n")),
    }
}

/// The store for a command that only reads the registry; `Err` with the outcome to give
/// when there is none.
async fn existing_store(
    config: &Config,
    empty: impl FnOnce(String) -> Outcome,
) -> Result<Store, Outcome> {
    let url = config.daemon.state_url(&config.base_dir).map_err(|err| {
        Outcome::fail(
            1,
            format!("ferry: {}\n", crate::error::display_chain(&err.chain())),
        )
    })?;
    match Store::open_existing(url.expose(), &config.base_dir).await {
        Ok(Some(store)) => Ok(store),
        Ok(None) => Err(empty(crate::state::shown_url(url.expose()))),
        Err(err) => Err(Outcome::fail(1, format!("ferry: {err}\n"))),
    }
}

/// `ferry partitions [SOURCE]`: the latest partitions, newest start first.
pub async fn partitions(config: &Config, source: Option<&str>, limit: u32, json: bool) -> Outcome {
    let store = match existing_store(config, |shown| match json {
        true => Outcome::ok("[]\n".to_owned()),
        false => Outcome::ok(format!(
            "no partitions: the state store ({shown}) does not exist yet\n"
        )),
    })
    .await
    {
        Ok(store) => store,
        Err(outcome) => return outcome,
    };
    let listed = match store.partitions(source, limit).await {
        Ok(listed) => listed,
        Err(err) => return Outcome::fail(1, format!("ferry: {err}\n")),
    };
    if json {
        return match serde_json::to_string_pretty(&listed) {
            Ok(text) => Outcome::ok(text + "\n"),
            Err(err) => Outcome::fail(1, format!("ferry: cannot render the partitions: {err}\n")),
        };
    }
    let mut rows = vec![
        [
            "SOURCE", "START", "END", "PROVIDER", "STATE", "SINCE", "DETAIL",
        ]
        .map(str::to_owned),
    ];
    for p in &listed {
        let detail = p.lock.as_ref().map_or_else(String::new, |lock| {
            let run = lock
                .run_id
                .as_deref()
                .map_or_else(String::new, |id| format!("run {id}"));
            match &lock.reason {
                Some(reason) => format!("{run}: {reason}"),
                None => run,
            }
        });
        rows.push([
            p.source.clone(),
            p.start.to_rfc3339(),
            p.end.to_rfc3339(),
            p.provider.clone(),
            p.state.to_owned(),
            p.updated_at.to_rfc3339(),
            detail,
        ]);
    }
    Outcome::ok(table(&rows))
}

/// `ferry partitions lock|unlock SOURCE START END --provider P`.
pub async fn change_partition(config: &Config, command: &PartitionsCommand) -> Outcome {
    let (args, change) = match command {
        PartitionsCommand::Lock(args) => (
            args,
            crate::state::Change::Lock {
                run_id: None,
                reason: args.reason.as_deref(),
            },
        ),
        PartitionsCommand::Unlock(args) => (args, crate::state::Change::Unlock),
    };
    let (start, end) = match interval(&args.start, &args.end) {
        Ok(interval) => interval,
        Err(outcome) => return outcome,
    };
    let store = match open_store(config).await {
        Ok(store) => store,
        Err(outcome) => return outcome,
    };
    match store
        .change_partition(&args.source, &args.provider, start, end, change)
        .await
    {
        Ok(record) => Outcome::ok(format!(
            "{} [{}, {}) by {}: {}\n",
            record.source,
            record.start.to_rfc3339(),
            record.end.to_rfc3339(),
            record.provider,
            record.state
        )),
        Err(err) => Outcome::fail(1, format!("ferry: {err}\n")),
    }
}

/// START and END of a command line, or the outcome of bad ones (exit 2).
fn interval(start: &str, end: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), Outcome> {
    let parse = |text: &str, which: &str| {
        crate::partition::parse_instant(text)
            .map_err(|err| Outcome::fail(2, format!("ferry: {which}: {err}\n")))
    };
    let (start, end) = (parse(start, "START")?, parse(end, "END")?);
    if end <= start {
        return Err(Outcome::fail(
            2,
            "ferry: END must be after START\n".to_owned(),
        ));
    }
    Ok((start, end))
}

/// `ferry ready SOURCE START END`: exit 0 when ready, 1 when not; the answer on standard
/// error.
pub async fn ready(config: &Config, source: &str, start: &str, end: &str) -> Outcome {
    let (start, end) = match interval(start, end) {
        Ok(interval) => interval,
        Err(outcome) => return outcome,
    };
    let store = match existing_store(config, |shown| {
        Outcome::fail(
            1,
            format!("ferry: {source} is not ready: the state store ({shown}) does not exist yet\n"),
        )
    })
    .await
    {
        Ok(store) => store,
        Err(outcome) => return outcome,
    };
    match store.readiness(source, start, end).await {
        Ok(readiness) => Outcome {
            stdout: String::new(),
            stderr: format!("{}\n", readiness.message(source, start, end)),
            code: if readiness.is_ready() { 0 } else { 1 },
        },
        Err(err) => Outcome::fail(1, format!("ferry: {err}\n")),
    }
}

/// Recent runs, as `ferry history` prints them.
pub async fn history(config: &Config, job: Option<&str>, limit: u32, json: bool) -> Outcome {
    // Only reads: a store that does not exist yet is not created.
    let store = match existing_store(config, |shown| match json {
        true => Outcome::ok("[]\n".to_owned()),
        false => Outcome::ok(format!(
            "no runs recorded: the state store ({shown}) does not exist yet\n"
        )),
    })
    .await
    {
        Ok(store) => store,
        Err(outcome) => return outcome,
    };
    let runs = match store.history(job, limit).await {
        Ok(runs) => runs,
        Err(err) => return Outcome::fail(1, format!("ferry: {err}\n")),
    };
    // How each run's notifications went (a store that cannot tell leaves them out).
    let mut notified = Vec::with_capacity(runs.len());
    for run in &runs {
        notified.push(store.notifications(&run.run_id).await.unwrap_or_default());
    }
    if json {
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            #[serde(flatten)]
            run: &'a crate::state::RunRecord,
            notifications: &'a [crate::state::NotificationOutcome],
        }
        let entries: Vec<Entry<'_>> = runs
            .iter()
            .zip(&notified)
            .map(|(run, notifications)| Entry { run, notifications })
            .collect();
        return match serde_json::to_string_pretty(&entries) {
            Ok(text) => Outcome::ok(text + "\n"),
            Err(err) => Outcome::fail(1, format!("ferry: cannot render the history: {err}\n")),
        };
    }
    let mut rows = vec![
        [
            "JOB", "SLOT", "BY", "OUTCOME", "ATTEMPTS", "DURATION", "BYTES", "NOTIFIED", "LOCATION",
        ]
        .map(str::to_owned),
    ];
    for (run, notifications) in runs.iter().zip(&notified) {
        let duration = run.finished_at.map_or_else(String::new, |end| {
            let ms = (end - run.started_at).num_milliseconds().max(0);
            format!("{:.1}s", ms as f64 / 1000.0)
        });
        let outcome = match (&run.error, run.state) {
            (Some(error), _) => format!("failed: {error}"),
            (None, state) => serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        };
        let notified: Vec<String> = notifications
            .iter()
            .map(|n| match n.sent {
                true => n.notifier.clone(),
                false => format!("{} (not sent)", n.notifier),
            })
            .collect();
        rows.push([
            run.job.clone(),
            run.slot_local.clone(),
            if run.manual { "manual" } else { "schedule" }.to_owned(),
            outcome,
            run.attempts.to_string(),
            duration,
            run.bytes.map_or_else(String::new, |b| b.to_string()),
            notified.join(", "),
            run.location.clone().unwrap_or_default(),
        ]);
    }
    Outcome::ok(table(&rows))
}

/// How many runs in flight `ferry cluster` shows as text.
const SHOWN_RUNS: usize = 50;

/// `ferry cluster`: the daemons the store has heard of lately and the runs in flight.
pub async fn cluster(config: &Config, json: bool) -> Outcome {
    let store = match existing_store(config, |shown| {
        Outcome::ok(format!(
            "no daemons: the state store ({shown}) does not exist yet\n"
        ))
    })
    .await
    {
        Ok(store) => store,
        Err(outcome) => return outcome,
    };
    let now = Utc::now();
    let lease = chrono::Duration::from_std(config.daemon.lease.get()).unwrap_or_default();
    let (daemons, runs) = match (
        store.daemons(now - lease * 30).await,
        store.unfinished().await,
    ) {
        (Ok(daemons), Ok(runs)) => (daemons, runs),
        (Err(err), _) | (_, Err(err)) => return Outcome::fail(1, format!("ferry: {err}\n")),
    };
    // Heartbeats come every third of the lease: a daemon silent for a whole lease (10 s at
    // least) is gone.
    let silence = lease.max(chrono::Duration::seconds(10));
    let alive =
        |d: &crate::state::DaemonRecord| d.stopped_at.is_none() && d.last_seen >= now - silence;
    if json {
        #[derive(serde::Serialize)]
        struct Shown<'a> {
            #[serde(flatten)]
            daemon: &'a crate::state::DaemonRecord,
            alive: bool,
        }
        #[derive(serde::Serialize)]
        struct Cluster<'a> {
            daemons: Vec<Shown<'a>>,
            runs: &'a [crate::state::RunRecord],
        }
        let shown = Cluster {
            daemons: daemons
                .iter()
                .map(|daemon| Shown {
                    daemon,
                    alive: alive(daemon),
                })
                .collect(),
            runs: &runs,
        };
        return match serde_json::to_string_pretty(&shown) {
            Ok(text) => Outcome::ok(text + "\n"),
            Err(err) => Outcome::fail(1, format!("ferry: {err}\n")),
        };
    }
    let ago = |at: chrono::DateTime<Utc>| {
        let secs = (now - at).num_seconds().max(0).unsigned_abs();
        format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(secs))
        )
    };
    let mut rows =
        vec![["DAEMON", "VERSION", "STARTED", "LAST SEEN", "RUNS", "STATE"].map(str::to_owned)];
    for daemon in &daemons {
        let state = match (daemon.stopped_at, alive(daemon)) {
            (Some(at), _) => format!("stopped {}", ago(at)),
            (None, true) => "alive".to_owned(),
            (None, false) => "gone (no heartbeat)".to_owned(),
        };
        let owned = runs.iter().filter(|run| run.owner == daemon.id).count();
        rows.push([
            daemon.id.clone(),
            daemon.version.clone(),
            daemon
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ago(daemon.last_seen),
            owned.to_string(),
            state,
        ]);
    }
    let mut text = format!("Daemons ({}):\n", store_shown(config));
    text += &table(&rows);
    let mut rows = vec![["JOB", "SLOT", "RUN", "ATTEMPT", "OWNER", "LEASE"].map(str::to_owned)];
    // The text shows the oldest few; `--json` has them all.
    for run in runs.iter().take(SHOWN_RUNS) {
        let lease = match run.lease_until > now {
            true => format!(
                "until {}",
                run.lease_until
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            false => format!("ran out {}: to be taken over", ago(run.lease_until)),
        };
        rows.push([
            run.job.clone(),
            run.slot_local.clone(),
            run.run_id.clone(),
            run.attempts.to_string(),
            run.owner.clone(),
            lease,
        ]);
    }
    text += &format!("\nRuns in flight ({}):\n", runs.len());
    text += &table(&rows);
    if runs.len() > SHOWN_RUNS {
        text += &format!(
            "… and {} more (--json lists them all)\n",
            runs.len() - SHOWN_RUNS
        );
    }
    Outcome::ok(text)
}

/// The job file's state store as messages show it (no password).
fn store_shown(config: &Config) -> String {
    config
        .daemon
        .state_url(&config.base_dir)
        .map(|url| crate::state::shown_url(url.expose()))
        .unwrap_or_else(|_| "the state store".to_owned())
}

/// The job file, or the outcome of a bad one (exit 2 with every problem).
fn load(cli: &Cli) -> Result<Config, Outcome> {
    config::load(&cli.config).map_err(|errors| Outcome::fail(2, format!("{errors}\n")))
}

async fn run_daemon(cli: &Cli) -> Outcome {
    let signals = match daemon::signals() {
        Ok(signals) => signals,
        Err(err) => return Outcome::fail(1, format!("ferry: cannot handle signals: {err}\n")),
    };
    match daemon::run(&cli.config, signals, None).await {
        Ok(()) => Outcome::ok(String::new()),
        Err(DaemonError::Config(errors)) => Outcome::fail(2, format!("{errors}\n")),
        Err(err) => Outcome::fail(1, format!("ferry: {err}\n")),
    }
}

fn validate_summary(config: &Config) -> String {
    let notifiers = config.notifiers.len();
    format!(
        "{}: OK, {} job{}, {} notifier{}\n",
        config.origin,
        config.jobs.len(),
        plural(config.jobs.len()),
        notifiers,
        plural(notifiers),
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The job table `ferry list` prints, with fire times after `now`.
pub fn list(config: &Config, now: DateTime<Utc>) -> String {
    let mut rows = vec![[
        "JOB".to_owned(),
        "SCHEDULE".to_owned(),
        "TIME ZONE".to_owned(),
        "NEXT RUNS".to_owned(),
        "SOURCE → WRITERS".to_owned(),
    ]];
    for job in &config.jobs {
        let tz_name = job.timezone.as_deref().unwrap_or(&config.daemon.timezone);
        let next = schedule_of(config, job)
            .map(|schedule| {
                schedule
                    .upcoming(now, 3)
                    .iter()
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S%:z").to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let next = if job.enabled {
            next
        } else {
            "disabled (trigger only)".to_owned()
        };
        let writers: Vec<&str> = job.writers.iter().map(|w| w.kind()).collect();
        rows.push([
            job.name.clone(),
            job.schedule.clone(),
            tz_name.to_owned(),
            next,
            format!("{} → {}", job.source.kind(), writers.join(", ")),
        ]);
    }
    table(&rows)
}

/// `ferry man`: the main page on standard output, or every page written into `dir`.
fn man(dir: Option<&std::path::Path>) -> Outcome {
    let render = |command: clap::Command| {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .map(|()| page)
    };
    let main = Cli::command();
    let Some(dir) = dir else {
        return match render(main) {
            Ok(page) => Outcome::ok(String::from_utf8_lossy(&page).into_owned()),
            Err(err) => Outcome::fail(1, format!("ferry: cannot render the man page: {err}\n")),
        };
    };
    let mut pages = vec![("ferry.1".to_owned(), main.clone())];
    for command in main.get_subcommands() {
        let name = format!("ferry-{}", command.get_name());
        // The page is ferry-status(1); its synopsis reads `ferry status`.
        let shown = format!("ferry {}", command.get_name());
        pages.push((
            format!("{name}.1"),
            command.clone().name(name).bin_name(shown),
        ));
    }
    let mut written = String::new();
    for (file, command) in pages {
        let path = dir.join(&file);
        let saved = render(command).and_then(|page| std::fs::write(&path, page));
        if let Err(err) = saved {
            return Outcome::fail(
                1,
                format!("ferry: cannot write {}: {err}\n", path.display()),
            );
        }
        let _ = writeln!(written, "{}", path.display());
    }
    Outcome::ok(written)
}

/// How long `ferry status` waits for the daemon's API.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `ferry status`: the daemon's `/status.json` when its API answers, else the same facts
/// from the state store (without live progress).
pub async fn status(config: &Config, json: bool) -> Outcome {
    let (facts, from) = match status_from_api(config).await {
        Ok(Some((facts, url))) => (facts, format!("the daemon at {url}")),
        asked => {
            let why = match asked {
                Err(err) => format!(" (the daemon's API did not answer: {err})"),
                _ => String::new(),
            };
            // Only reads: a store that does not exist yet is not created.
            let store = match existing_store(config, |shown| {
                Outcome::fail(
                    1,
                    format!("ferry: nothing to show{why}: the state store ({shown}) does not exist yet\n"),
                )
            })
            .await
            {
                Ok(store) => store,
                Err(outcome) => return outcome,
            };
            let jobs: Vec<crate::api::status::ShownJob> = config
                .jobs
                .iter()
                .filter_map(|job| {
                    let schedule = schedule_of(config, job).ok()?;
                    Some(crate::api::status::ShownJob {
                        name: job.name.clone(),
                        schedule,
                        enabled: job.enabled,
                    })
                })
                .collect();
            let gathered = crate::api::status::gather(&store, &jobs, Vec::new(), Utc::now()).await;
            match gathered.map(serde_json::to_value) {
                Ok(Ok(facts)) => (facts, format!("the state store{why}")),
                Ok(Err(err)) => return Outcome::fail(1, format!("ferry: {err}\n")),
                Err(err) => return Outcome::fail(1, format!("ferry: the state store: {err}\n")),
            }
        }
    };
    if json {
        return Outcome::ok(format!("{facts:#}\n"));
    }
    Outcome::ok(status_text(&facts, &from))
}

/// Asks the daemon's API for `/status.json`: `None` when `[api] listen` is not set.
async fn status_from_api(config: &Config) -> Result<Option<(serde_json::Value, String)>, String> {
    let Some(listen) = &config.api.listen else {
        return Ok(None);
    };
    let Ok(mut address) = listen.parse::<std::net::SocketAddr>() else {
        return Ok(None);
    };
    // A daemon listening on every address answers on loopback.
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut client = reqwest::Client::builder().timeout(STATUS_TIMEOUT);
    let scheme = match &config.api.tls_cert_file {
        Some(cert) => {
            // Exactly the daemon's own certificate is trusted (as `ca_file` is elsewhere);
            // it must name the listen address.
            let trust = crate::tls::TlsSettings {
                ca_file: Some(cert.clone()),
                ..Default::default()
            }
            .trust(&config.base_dir, "the daemon's API")
            .and_then(|trust| trust.client_config())
            .map_err(|err| err.to_string())?;
            client = client.use_preconfigured_tls(Arc::unwrap_or_clone(trust));
            "https"
        }
        None => "http",
    };
    let client = client.build().map_err(|err| err.to_string())?;
    let url = format!("{scheme}://{address}");
    let mut request = client.get(format!("{url}/status.json"));
    let token = config
        .api
        .read_token
        .resolve(&config.base_dir)
        .map_err(|err| err.to_string())?;
    if let Some(token) = &token {
        request = request.bearer_auth(token.expose());
    }
    let mut response = request
        .send()
        .await
        .map_err(|err| crate::http::request_error("ask the daemon", err).to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url}/status.json answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| err.to_string())? {
        if body.len() + chunk.len() > STATUS_MAX_BYTES {
            return Err(format!(
                "{url}/status.json is larger than {STATUS_MAX_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let facts = serde_json::from_slice(&body).map_err(|err| format!("{url}/status.json: {err}"))?;
    Ok(Some((facts, url)))
}

/// The largest `/status.json` `ferry status` reads.
const STATUS_MAX_BYTES: usize = 64 * 1024 * 1024;

/// `ferry status`'s text: from `facts` (`/status.json`'s shape), gathered `from`.
fn status_text(facts: &serde_json::Value, from: &str) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let empty = Vec::new();
    let list = |v: &serde_json::Value| v.as_array().unwrap_or(&empty).clone();
    let mut out = format!("From {from}, at {}.\n\n", text(&facts["at"]));
    let mut rows = vec![[
        "JOB".to_owned(),
        "NEXT RUNS".to_owned(),
        "LAST RUN".to_owned(),
    ]];
    for job in list(&facts["jobs"]) {
        let next: Vec<String> = list(&job["next"]).iter().map(text).collect();
        let next = match job["enabled"].as_bool() {
            Some(false) => "disabled".to_owned(),
            _ => next.join(", "),
        };
        let last = &job["last"];
        let last = if last.is_null() {
            "never ran".to_owned()
        } else {
            let mut line = format!("{} {}", text(&last["state"]), text(&last["slot_local"]));
            if let Some(error) = last["error"].as_str() {
                let _ = write!(line, ": {}", first_line(error));
            }
            line
        };
        rows.push([text(&job["name"]), next, last]);
    }
    out.push_str(&table(&rows));
    let running = list(&facts["in_flight"]);
    out.push_str(&format!("\nRunning: {}\n", running.len()));
    for run in &running {
        let progress = &run["progress"];
        let bytes: Vec<String> = list(&progress["writers"])
            .iter()
            .map(|w| format!("{} {} B", text(&w[0]), w[1].as_u64().unwrap_or(0)))
            .collect();
        let total = progress["total"]
            .as_u64()
            .map(|t| format!(" of {t} B"))
            .unwrap_or_default();
        out.push_str(&crate::error::printable(&format!(
            "  {} slot {}{}{}\n",
            text(&run["job"]),
            text(&run["slot"]),
            if bytes.is_empty() {
                String::new()
            } else {
                format!(": {}", bytes.join(", "))
            },
            total
        )));
    }
    let failures = list(&facts["failures"]);
    out.push_str(&format!("\nRecent failures: {}\n", failures.len()));
    for run in &failures {
        out.push_str(&crate::error::printable(&format!(
            "  {} slot {}: {}\n",
            text(&run["job"]),
            text(&run["slot_local"]),
            first_line(run["error"].as_str().unwrap_or_default())
        )));
    }
    let sources = list(&facts["sources"]);
    if !sources.is_empty() {
        out.push_str("\nPartitions (latest):\n");
        for source in &sources {
            let partitions = list(&source["partitions"]);
            let locked = partitions.iter().filter(|p| p["state"] == "locked").count();
            let last = partitions.last();
            out.push_str(&crate::error::printable(&format!(
                "  {}: {} shown, {} locked; latest [{}, {})\n",
                text(&source["source"]),
                partitions.len(),
                locked,
                last.map(|p| text(&p["start"])).unwrap_or_default(),
                last.map(|p| text(&p["end"])).unwrap_or_default(),
            )));
        }
    }
    let daemons = list(&facts["daemons"]);
    if !daemons.is_empty() {
        out.push_str(&format!("\nDaemons (last hour): {}\n", daemons.len()));
        for daemon in &daemons {
            let seen = match daemon["stopped_at"].as_str() {
                Some(at) => format!("stopped {at}"),
                None => format!("last seen {}", text(&daemon["last_seen"])),
            };
            out.push_str(&crate::error::printable(&format!(
                "  {} {}, {} runs\n",
                text(&daemon["id"]),
                seen,
                daemon["running"].as_u64().unwrap_or(0)
            )));
        }
    }
    out
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// `job`'s schedule in its zone (the file was validated: both parse).
fn schedule_of(config: &Config, job: &config::JobConfig) -> Result<Schedule, String> {
    let zone = job.timezone.as_deref().unwrap_or(&config.daemon.timezone);
    parse_timezone(zone).and_then(|tz| Schedule::parse(&job.schedule, tz))
}

/// Rows as left-aligned columns, the last one unpadded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    // Cells can hold text from outside (a server's error body): never let it drive the
    // terminal.
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.clone().map(|cell| crate::error::printable(&cell)))
        .collect();
    let rows = rows.as_slice();
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The outcome of naming a `what` (job, notifier) the job file does not define.
fn unknown<'a>(
    config: &Config,
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> Outcome {
    let known: Vec<&str> = known.map(String::as_str).collect();
    Outcome::fail(
        2,
        format!(
            "ferry: no {what} named {name:?} in {} ({what}s: {})\n",
            config.origin,
            known.join(", ")
        ),
    )
}

/// Sends a test message through notifier `name` of `config`, as `ferry notify-test` does.
pub async fn notify_test(config: &Config, name: &str, failure: bool) -> Outcome {
    let Some((key, settings)) = config.notifiers.get_key_value(name) else {
        return unknown(config, "notifier", name, config.notifiers.keys());
    };
    let built =
        BuildEnv::new(config.base_dir.clone()).and_then(|env| settings.settings().build(key, &env));
    let notifier = match built {
        Ok(notifier) => notifier,
        Err(err) => {
            return Outcome::fail(
                1,
                format!("ferry: {}\n", crate::error::display_chain(&err.chain())),
            );
        }
    };
    let status = if failure {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    // The slot reads as the daemon's runs do: in the job file's zone (validated already).
    let zone = parse_timezone(&config.daemon.timezone).unwrap_or(chrono_tz::UTC);
    let report = crate::notify::message::sample_report(status, zone);
    let delivered = crate::notify::deliver(notifier.as_ref(), &report).await;
    let tries = format!(
        "{} attempt{}",
        delivered.attempts,
        plural(delivered.attempts as usize)
    );
    match delivered.result {
        Ok(()) => Outcome::ok(format!(
            "{name}: test message ({}) sent after {tries}\n",
            status.as_str()
        )),
        Err(err) => Outcome::fail(1, format!("ferry: {name}: not sent after {tries}: {err}\n")),
    }
}

/// The most slots one `backfill` may run.
const MAX_BACKFILL: usize = 10_000;

/// Runs every slot of job `name`'s schedule in `[from, to)`, `concurrency` at a time,
/// skipping slots that already succeeded unless `force`.
pub async fn backfill(
    config: &Config,
    name: &str,
    from: &str,
    to: &str,
    concurrency: usize,
    force: bool,
) -> Outcome {
    use futures::StreamExt as _;
    let (from, to) = match interval(from, to) {
        Ok(range) => range,
        Err(outcome) => return outcome,
    };
    if concurrency == 0 {
        return Outcome::fail(2, "ferry: --concurrency must be at least 1\n".to_owned());
    }
    let (job, ledger) = match manual_job(config, name).await {
        Ok(built) => built,
        Err(outcome) => return outcome,
    };
    let mut slots = Vec::new();
    let mut after = from - chrono::Duration::seconds(1);
    while let Some(slot) = job.schedule.next_after(after) {
        if slot.with_timezone(&Utc) >= to {
            break;
        }
        if slots.len() == MAX_BACKFILL {
            return Outcome::fail(
                2,
                format!(
                    "ferry: more than {MAX_BACKFILL} slots in that range; backfill it in parts\n"
                ),
            );
        }
        after = slot.with_timezone(&Utc);
        slots.push(slot);
    }
    let mut stdout = String::new();
    let mut todo = Vec::with_capacity(slots.len());
    for slot in slots {
        match ledger
            .store
            .succeeded(&job.name, slot.with_timezone(&Utc))
            .await
        {
            Ok(true) if !force => {
                let _ = writeln!(stdout, "{} skipped: already succeeded", slot.to_rfc3339());
            }
            Ok(_) => todo.push(slot),
            Err(err) => return Outcome::fail(1, format!("ferry: {err}\n")),
        }
    }
    let (job_ref, ledger_ref) = (&job, &ledger);
    let mut runs = futures::stream::iter(todo)
        .map(|slot| async move {
            let report = match job_ref.claim(ledger_ref, slot, true).await {
                Ok(Some(ctx)) => Ok(job_ref.runner.run(ctx).await),
                Ok(None) => Err("the store refused the claim".to_owned()),
                Err(err) => Err(err.to_string()),
            };
            (slot, report)
        })
        .buffered(concurrency);
    let mut failed = 0;
    while let Some((slot, report)) = runs.next().await {
        match report {
            Ok(report) if report.status == RunStatus::Succeeded => {
                let _ = writeln!(
                    stdout,
                    "{} succeeded: run {}, {} bytes",
                    slot.to_rfc3339(),
                    report.run_id,
                    report.bytes()
                );
            }
            Ok(report) => {
                failed += 1;
                let why = report
                    .error
                    .as_ref()
                    .map(|e| crate::error::display_chain(&e.chain))
                    .unwrap_or_default();
                let _ = writeln!(
                    stdout,
                    "{} failed: run {}: {why}",
                    slot.to_rfc3339(),
                    report.run_id
                );
            }
            Err(err) => {
                failed += 1;
                let _ = writeln!(stdout, "{} not run: {err}", slot.to_rfc3339());
            }
        }
    }
    drop(runs);
    let mut stderr = String::new();
    if !job.runner.notifications().settle(NOTIFY_WAIT).await {
        let _ = writeln!(stderr, "ferry: gave up waiting for notifications");
    }
    if failed > 0 {
        let _ = writeln!(
            stderr,
            "ferry: {failed} slot{} of {name} failed",
            plural(failed)
        );
    }
    Outcome {
        stdout,
        stderr,
        code: u8::from(failed > 0),
    }
}

/// The first SIGTERM or SIGINT, by name (never, if the handlers cannot be installed).
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// How long `trigger` waits for a run's notifications before exiting.
const NOTIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Job `name` of `config`, built, with a ledger on the job file's store: what `trigger`
/// and `backfill` run; the outcome to give when it cannot be had.
async fn manual_job(config: &Config, name: &str) -> Result<(Job, Ledger), Outcome> {
    let Some(job_config) = config.job(name) else {
        return Err(unknown(
            config,
            "job",
            name,
            config.jobs.iter().map(|j| &j.name),
        ));
    };
    let notifications = Notifications::default();
    let built = BuildEnv::new(config.base_dir.clone())
        .and_then(|env| Job::build(config, job_config, &env, &notifications));
    let job = built.map_err(|err| {
        Outcome::fail(
            1,
            format!("ferry: {}\n", crate::error::display_chain(&err.chain())),
        )
    })?;
    let store = open_store(config).await?;
    let ledger = Ledger {
        metrics: crate::metrics::Metrics::counting(store.failures()),
        store,
        owner: owner_id(),
        lease: std::time::Duration::from_secs(60),
    };
    Ok((job, ledger))
}

/// `--slot TIME` for `job`: a slot of its schedule, in its time zone (exit 2 otherwise).
fn past_slot(job: &Job, text: &str) -> Result<DateTime<chrono_tz::Tz>, Outcome> {
    let at = crate::partition::parse_instant(text)
        .map_err(|err| Outcome::fail(2, format!("ferry: --slot: {err}\n")))?;
    match job.schedule.latest_at_or_before(at) {
        Some(slot) if slot.with_timezone(&Utc) == at => Ok(slot),
        latest => {
            let next = job.schedule.next_after(at);
            let around: Vec<String> = [latest, next]
                .into_iter()
                .flatten()
                .map(|t| t.to_rfc3339())
                .collect();
            Err(Outcome::fail(
                2,
                format!(
                    "ferry: --slot {}: not a slot of {}'s schedule ({}); the nearest: {}\n",
                    at.to_rfc3339(),
                    job.name,
                    job.schedule,
                    around.join(", ")
                ),
            ))
        }
    }
}

/// Runs job `name` of `config` now (or for a past `slot` of its schedule) and reports its
/// receipts. A manual run has an identity of its own: it never collides with the
/// schedule's run of the slot or with another manual run.
pub async fn trigger(config: &Config, name: &str, slot: Option<&str>, json: bool) -> Outcome {
    let (job, ledger) = match manual_job(config, name).await {
        Ok(built) => built,
        Err(outcome) => return outcome,
    };
    let slot = match slot {
        None => job.now_slot(),
        Some(text) => match past_slot(&job, text) {
            Ok(slot) => slot,
            Err(outcome) => return outcome,
        },
    };
    let ctx = match job.claim(&ledger, slot, true).await {
        Ok(Some(ctx)) => ctx,
        Ok(None) => {
            return Outcome::fail(
                1,
                format!("ferry: {name}: the store refused the manual run's claim\n"),
            );
        }
        Err(err) => return Outcome::fail(1, format!("ferry: {err}\n")),
    };
    // SIGTERM or SIGINT stops the run (its program is killed), removes what it left and
    // records it as failed: nothing is orphaned, and no daemon resumes it later.
    // Bars on a terminal, while the run goes.
    let bars = crate::progress::show(ledger.metrics.clone(), ctx.run_id.clone());
    let report = tokio::select! {
        report = job.runner.run(ctx.clone()) => report,
        signal = stop_signal() => {
            let why = format!("cancelled: ferry trigger got {signal}");
            if let Err(err) = job.abandon(&ctx, &why).await {
                return Outcome::fail(1, format!("ferry: {name}: {why}; cannot record it: {err}\n"));
            }
            return Outcome::fail(
                1,
                format!("ferry: {name}: {why}; run {} recorded as failed\n", ctx.run_id),
            );
        }
    };
    if let Some(bars) = bars {
        bars.finish().await;
    }
    let code = match report.status {
        RunStatus::Succeeded => 0,
        RunStatus::Failed | RunStatus::Lost => 1,
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    // The run's outcome is settled; its notifications get a while to go out before exit.
    if !job.runner.notifications().settle(NOTIFY_WAIT).await {
        let _ = writeln!(
            stderr,
            "ferry: gave up waiting for notifications after {}",
            humantime::format_duration(NOTIFY_WAIT)
        );
    }
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                stdout = text;
                stdout.push('\n');
            }
            Err(err) => stderr = format!("ferry: cannot render the report: {err}\n"),
        }
    } else {
        for delivery in &report.deliveries {
            let _ = writeln!(stdout, "{delivery}");
        }
        let _ = writeln!(
            stdout,
            "{} {} run {} after {} attempt{} in {:.2}s",
            report.job,
            report.status.as_str(),
            report.run_id,
            report.attempts,
            plural(report.attempts as usize),
            report.duration.as_secs_f64()
        );
        if let Some(failure) = &report.error {
            let _ = writeln!(
                stderr,
                "ferry: {} failed ({}; {}): {}",
                report.job,
                failure.kind,
                failure.gave_up,
                crate::error::display_chain(&failure.chain)
            );
        }
    }
    Outcome {
        stdout,
        stderr,
        code,
    }
}

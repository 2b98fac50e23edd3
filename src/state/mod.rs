//! The state store: run history, slot claims, checkpoints and cursors.
//!
//! One interface over two backends, chosen by `[daemon] state`: SQLite (`sqlite://PATH`,
//! the embedded default, in WAL mode) for one daemon, PostgreSQL (`postgres://…`) for
//! several. Both speak the same SQL through sqlx's `Any` driver, and the schema is created
//! and upgraded by sqlx migrations embedded in the binary.
//!
//! * A **run** is one row per (job, slot), inserted by [`Store::claim`]: the insert fails
//!   when the slot already has a row, which is what makes a slot run once however many
//!   daemons see it fire.
//! * A **checkpoint** is a writer's progress in a run (an opaque JSON document plus the
//!   bytes it has made durable), read back when the run is retried or resumed after a crash.
//! * A **cursor** is a job's saved position, for incremental sources.
//!
//! * The **partition registry** (seed 003): sources, providers, partitions and their
//!   events ([`registry`]).
//!
//! [`records`] holds the types, [`schema`] the migrations, [`queries`] the statements; this
//! file opens the store and holds the rules that depend on the backend (who may take over an
//! unfinished run).

mod batch;
mod daemons;
mod outbox;
mod queries;
mod records;
mod registry;
mod schema;
mod streaks;
mod tenure;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor as _};

pub use batch::OwnedClaim;
pub use daemons::DaemonRecord;
pub use outbox::{Notice, NoticeState, Notices, notice_id};
pub use records::{
    Checkpoint, Claim, NotificationOutcome, NotificationRecord, Outcome, RunRecord, RunState,
};
pub use registry::{
    Change, PartitionRecord, ProviderRecord, RegistryError, SourceRecord, new_token,
};
pub use streaks::Streak;
pub use tenure::{FIRST_EPOCH, Tenure};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The `state` setting is not a URL the store understands.
    #[error("state {} must be sqlite://PATH or postgres://…", shown_url(.0))]
    Url(String),
    /// The store could not be opened: unreachable, refused, or not a database.
    #[error("cannot open the state store {0}: {1}")]
    Open(String, #[source] sqlx::Error),
    /// Every connection stayed busy for the pool's whole wait, though the store answers.
    #[error("the state store {store} is busy: no connection came free within {wait}", store = .0, wait = humantime::format_duration(*.1))]
    Busy(String, Duration),
    /// The database could not be reached or answered an error.
    #[error("state store: {0}")]
    Database(#[from] sqlx::Error),
    /// A read-only command found no store: its directory does not exist.
    #[error("no state store: directory {} does not exist", .0.display())]
    Missing(std::path::PathBuf),
    /// Another daemon took the run over (its epoch rose): this write of the old owner was
    /// refused.
    #[error("run {0} was taken over by another daemon; this write of its former owner was refused")]
    Fenced(String),
    /// The schema could not be created or upgraded.
    #[error("state store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A run's link to the store: where its attempts, checkpoints and outcome go.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The store.
    pub store: Store,
    /// The daemon (or command) that owns the run.
    pub owner: String,
    /// How long the owner's claim holds without renewal.
    pub lease: Duration,
    /// What the runs count for `/metrics`.
    pub metrics: crate::metrics::Metrics,
}

impl Ledger {
    /// The source's saved progress in run `run_id` (errors are logged: the source then
    /// starts over).
    pub async fn source_checkpoint(&self, run_id: &str) -> Option<Checkpoint> {
        match self.store.source_checkpoint(run_id).await {
            Ok(found) => found,
            Err(err) => {
                self.store.count_failure();
                tracing::warn!(error = %err, "Cannot read the source's checkpoint; starting over.");
                None
            }
        }
    }

    /// Saves the source's progress in run `run_id` while `tenure` holds the run. Failing to
    /// save is logged (a resume starts further back); a save refused because another
    /// daemon took the run over gives the run up.
    pub async fn save_source_checkpoint(
        &self,
        run_id: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) {
        match self
            .store
            .save_source_checkpoint(run_id, tenure.epoch(), checkpoint)
            .await
        {
            Ok(()) => {}
            Err(StateError::Fenced(_)) => {
                tenure.lose("the source's checkpoint was refused: another daemon took the run over")
            }
            Err(err) => {
                self.store.count_failure();
                tracing::warn!(error = %err, "Cannot save the source's checkpoint.");
            }
        }
    }

    /// Writer `writer`'s saved progress in run `run_id` (errors are logged, not returned:
    /// without a checkpoint the writer simply starts over).
    pub async fn checkpoint(&self, run_id: &str, writer: usize) -> Option<Checkpoint> {
        match self.store.checkpoint(run_id, writer).await {
            Ok(found) => found,
            Err(err) => {
                self.store.count_failure();
                tracing::warn!(error = %err, "Cannot read a checkpoint; starting over.");
                None
            }
        }
    }
}

impl StateError {
    /// Whether the store could not be reached at all (refused, reset, timed out, a name
    /// that does not resolve): worth waiting for, unlike a store that answered with an
    /// error.
    pub fn is_unreachable(&self) -> bool {
        let cause = match self {
            StateError::Open(_, err) | StateError::Database(err) => err,
            _ => return false,
        };
        matches!(cause, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
    }
}

/// A store URL as logs and messages may show it: a PostgreSQL URL without its user,
/// password and parameters (`postgres://db.example.com:5432/ferry`); a SQLite one whole.
pub fn shown_url(url: &str) -> String {
    if url.starts_with("sqlite://") {
        return url.to_owned();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL; not shown)".to_owned();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}/{path}")
}

/// Warns when a PostgreSQL URL lets the connection fall back to plaintext
/// ([`plaintext_sslmode`]).
fn warn_if_plaintext(url: &str) {
    if let Some(mode) = plaintext_sslmode(url) {
        tracing::warn!(
            store = %shown_url(url),
            sslmode = mode,
            "The PostgreSQL connection may run without TLS (password and data readable on the way); add sslmode=verify-full to state."
        );
    }
}

/// The `sslmode` of a PostgreSQL URL when it lets the connection run without TLS to a host
/// that is not this machine: sqlx's default `prefer` (and `allow`, `disable`) send the
/// password unencrypted to a server without TLS, or to anyone in the middle.
fn plaintext_sslmode(url: &str) -> Option<&str> {
    let shown = shown_url(url);
    let rest = shown.split_once("://").map_or("", |(_, rest)| rest);
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => rest.split(['/', ':']).next().unwrap_or_default(),
    };
    let loopback = host.is_empty()
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return None;
    }
    let mode = url
        .split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("sslmode="))
        })
        .unwrap_or("prefer");
    matches!(mode, "prefer" | "allow" | "disable").then_some(mode)
}

/// Every SQLite connection's settings: WAL (readers never wait for the writer), fsync at
/// checkpoints only, and up to 10 s of waiting for a lock before an error.
const SQLITE_SETUP: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;";

/// How long a store operation waits for a free connection from the pool: SQLite's one
/// connection is queued for under load; PostgreSQL has eight, so a longer wait means its
/// server is gone (then [`Store::diagnose`] says why) or swamped.
fn acquire_timeout(backend: Backend) -> Duration {
    match backend {
        Backend::Sqlite => Duration::from_secs(30),
        Backend::Postgres => Duration::from_secs(10),
    }
}

/// How long [`Store::diagnose`] waits for a fresh connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a store write that matters (a run's outcome) is tried.
pub const STORE_TRIES: usize = 5;

/// Runs `op` (a store write, `what` for logs) until it succeeds, up to `tries` times with
/// backoff (1 s, 2 s, 4 s, … with jitter): a locked SQLite file or a PostgreSQL fail-over
/// passes, and a run's outcome is not lost to one failed write.
pub async fn with_retries<T, F, Fut>(what: &str, tries: usize, op: F) -> Result<T, StateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StateError>>,
{
    use backon::Retryable as _;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(tries.saturating_sub(1))
        .with_jitter();
    op.retry(backoff)
        .notify(|err: &StateError, wait: Duration| {
            tracing::warn!(error = %err, retry_in = ?wait, "Cannot {what} in the state store; retrying.");
        })
        .await
}

/// This process as an owner of runs: host name and process id.
pub fn owner_id() -> String {
    format!("{}/{}", crate::host_name(), std::process::id())
}

/// The state store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// What the pool connects with (it may hold a password), to find out why the pool
    /// timed out ([`Store::diagnose`]).
    connect: Arc<crate::settings::Secret>,
    /// The store's URL as logs may show it (no password).
    shown: Arc<str>,
    /// Woken when a partition is locked or unlocked through this store (this process):
    /// runs waiting for readiness look again at once instead of at their next poll.
    changes: std::sync::Arc<tokio::sync::Notify>,
    /// Where writes queue for the batching writer, once [`Store::batch_writes`] started it.
    writes: std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<batch::Request>>>,
    /// Operations that failed (`ferry_store_errors_total`), shared by clones.
    errors: prometheus_client::metrics::counter::Counter,
}

/// Which database is behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one daemon.
    Sqlite,
    /// PostgreSQL: several daemons.
    Postgres,
}

impl Store {
    /// Opens (creating if need be) the store at `url` and brings its schema up to date.
    /// A relative SQLite path is taken from `base_dir`.
    pub async fn open(url: &str, base_dir: &std::path::Path) -> Result<Store, StateError> {
        let store = Store::connect(url, base_dir, true).await?;
        store.ok_or_else(|| StateError::Url(url.to_owned()))
    }

    /// Opens the store at `url` for a command that only reads: nothing is created,
    /// upgraded or written. `None` when a SQLite store's file does not exist yet (nothing
    /// has run); an error when its directory does not exist either.
    pub async fn open_existing(
        url: &str,
        base_dir: &std::path::Path,
    ) -> Result<Option<Store>, StateError> {
        Store::connect(url, base_dir, false).await
    }

    async fn connect(
        url: &str,
        base_dir: &std::path::Path,
        create: bool,
    ) -> Result<Option<Store>, StateError> {
        sqlx::any::install_default_drivers();
        let (backend, connect) = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StateError::Url(url.to_owned()));
            }
            let path = base_dir.join(path);
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            if create {
                std::fs::create_dir_all(dir)
                    .map_err(|err| StateError::Database(sqlx::Error::Io(err)))?;
            } else if !dir.is_dir() {
                return Err(StateError::Missing(dir.to_path_buf()));
            } else if !path.exists() {
                return Ok(None);
            }
            let mode = if create { "rwc" } else { "rw" };
            (
                Backend::Sqlite,
                format!("sqlite://{}?mode={mode}", path.display()),
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            warn_if_plaintext(url);
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StateError::Url(url.to_owned()));
        };
        // One connection first, outside the pool: a corrupt file or a refused connection is
        // reported at once with its own words, where the pool would retry it until its
        // acquire timeout and say only "pool timed out".
        let unusable = |err| StateError::Open(shown_url(url), err);
        let mut probe = AnyConnection::connect(&connect).await.map_err(unusable)?;
        if backend == Backend::Sqlite {
            probe.execute(SQLITE_SETUP).await.map_err(unusable)?;
            probe
                .execute("SELECT count(*) FROM sqlite_master")
                .await
                .map_err(unusable)?;
        }
        probe.close().await.map_err(unusable)?;
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer at a time: more connections only queue on its lock.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .acquire_timeout(acquire_timeout(backend))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_SETUP).await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect)
            .await?;
        let store = Store {
            pool,
            backend,
            connect: Arc::new(crate::settings::Secret::new(connect)),
            shown: shown_url(url).into(),
            changes: Default::default(),
            writes: Default::default(),
            errors: Default::default(),
        };
        if create {
            schema::migrator().run(&store.pool).await?;
            store.backfill_coverage().await?;
        }
        Ok(Some(store))
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// From now on, claims, attempts, checkpoints and outcomes written through this store
    /// (and its clones) that arrive together are written together, in one transaction, by a
    /// task on the current runtime ([`batch`]): the daemon's many runs due at one instant
    /// cost a few statements, not several each.
    pub fn batch_writes(&self) {
        let _ = self.writes.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(batch::writer(self.clone(), rx));
            tx
        });
    }

    /// Records a new run for `claim.job` and `claim.slot`. `false` when the slot already has
    /// a run (this daemon's, another daemon's, or a finished one): the caller must not run
    /// it. A manual claim always has a slot of its own.
    pub async fn claim(&self, claim: &Claim<'_>) -> Result<bool, StateError> {
        self.write(batch::Write::Claim(batch::OwnedClaim::of(claim)))
            .await
    }

    /// Whether the store answers a query.
    pub async fn ping(&self) -> Result<(), StateError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Counts a failed operation on this store (a failed write is counted by
    /// [`Store::with_retries`] itself).
    pub fn count_failure(&self) {
        self.errors.inc();
    }

    /// The count of failed operations, for [`Metrics`](crate::metrics::Metrics).
    pub fn failures(&self) -> prometheus_client::metrics::counter::Counter {
        self.errors.clone()
    }

    /// [`with_retries`] on this store: every failed try is counted.
    pub async fn with_retries<T, F, Fut>(
        &self,
        what: &str,
        tries: usize,
        mut op: F,
    ) -> Result<T, StateError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StateError>>,
    {
        with_retries(what, tries, || {
            let attempt = op();
            async move {
                match attempt.await {
                    Ok(done) => Ok(done),
                    Err(err) => {
                        self.count_failure();
                        Err(self.diagnose(err).await)
                    }
                }
            }
        })
        .await
    }

    /// `err`, or, when it is the pool's timeout (which hides why no connection could be
    /// made), the reason a fresh connection gives: "connection refused", naming the store's
    /// host and port.
    pub async fn diagnose(&self, err: StateError) -> StateError {
        if !matches!(err, StateError::Database(sqlx::Error::PoolTimedOut)) {
            return err;
        }
        let probe =
            tokio::time::timeout(PROBE_TIMEOUT, AnyConnection::connect(self.connect.expose()))
                .await;
        match probe {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                StateError::Busy(self.shown.to_string(), acquire_timeout(self.backend))
            }
            Ok(Err(cause)) => StateError::Open(self.shown.to_string(), cause),
            Err(_) => StateError::Open(
                self.shown.to_string(),
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer within {}",
                        humantime::format_duration(PROBE_TIMEOUT)
                    ),
                )),
            ),
        }
    }

    /// Woken whenever a partition is locked or unlocked through this store (or a clone).
    pub fn partition_changes(&self) -> &tokio::sync::Notify {
        &self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_tried_again_until_it_succeeds() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result = with_retries("test", STORE_TRIES, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err(StateError::Url("locked".into())),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(result.expect("third try"), 7);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "it waited between tries"
        );
        let always = with_retries("test", STORE_TRIES, || async {
            Err::<(), _>(StateError::Url("x".into()))
        });
        assert!(always.await.is_err(), "gives up after STORE_TRIES");
    }

    #[test]
    fn a_remote_postgres_without_required_tls_is_flagged() {
        let remote = "postgres://ferry:pw@db.example.com:5432/ferry";
        assert_eq!(plaintext_sslmode(remote), Some("prefer"));
        assert_eq!(
            plaintext_sslmode(&format!("{remote}?sslmode=disable")),
            Some("disable")
        );
        assert_eq!(
            plaintext_sslmode(&format!("{remote}?sslmode=verify-full")),
            None
        );
        assert_eq!(
            plaintext_sslmode(&format!("{remote}?sslmode=require")),
            None
        );
        for local in [
            "postgres://u@localhost/x",
            "postgres://u@127.0.0.1:5432/x",
            "postgres://u@127.0.1.1/x",
            "postgres://u@[::1]:5432/x",
        ] {
            assert_eq!(plaintext_sslmode(local), None, "{local}");
        }
    }

    #[test]
    fn a_shown_url_has_no_credentials() {
        assert_eq!(
            shown_url(
                "postgres://ferry:hunter2@db.example.com:5432/ferry?sslmode=require&password=x"
            ),
            "postgres://db.example.com:5432/ferry"
        );
        assert_eq!(shown_url("sqlite://state.db"), "sqlite://state.db");
        assert!(!shown_url("mysql//u:hunter2@h").contains("hunter2"));
        let err = StateError::Url("mysql://u:hunter2@h/db".into()).to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}

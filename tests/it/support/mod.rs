//! Shared helpers: temporary job files, the built binary, a real HTTP server, hashing; and
//! every test server and harness, one file each.

pub mod daemon;
pub mod ftp;
pub mod s3;
pub mod smtp;
pub mod sshd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::time::Duration;

use ferry::job::Job;
use ferry::notify::Notifications;
use ferry::runner::RunReport;
use ferry::state::{Ledger, Store};
use sha2::{Digest as _, Sha256};

/// A temporary directory holding a job file.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `jobs.toml` and returns its path.
    pub fn job_file(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("jobs.toml");
        std::fs::write(&path, text).expect("write the job file");
        path
    }

    /// Parses `text` as a job file rooted in this workspace.
    pub fn config(&self, text: &str) -> ferry::config::Config {
        match ferry::config::parse(text, "jobs.toml", self.path().to_path_buf()) {
            Ok(config) => config,
            Err(errors) => panic!("the job file should be valid:\n{errors}\n---\n{text}"),
        }
    }

    /// Every file under the workspace, relative, sorted (the job file, the default state
    /// store and `secrets/` left out).
    pub fn files(&self) -> Vec<String> {
        let mut out = files_under(self.path());
        out.retain(|f| {
            f != "jobs.toml" && !f.starts_with("ferry-state.db") && !f.starts_with("secrets/")
        });
        out
    }

    /// Writes `value` to `secrets/NAME` for a `*_file` setting, and returns that path.
    pub fn secret(&self, name: &str, value: &str) -> String {
        let dir = self.path().join("secrets");
        std::fs::create_dir_all(&dir).expect("create secrets/");
        std::fs::write(dir.join(name), value).expect("write a secret");
        format!("secrets/{name}")
    }

    /// A ledger on a SQLite store in this workspace, for runs that keep checkpoints.
    pub async fn ledger(&self) -> Ledger {
        Ledger {
            store: Store::open("sqlite://ferry-state.db", self.path())
                .await
                .expect("open the store"),
            owner: "test".into(),
            lease: Duration::from_secs(60),
            metrics: ferry::metrics::Metrics::new(),
        }
    }

    /// Builds every job of `text` (its notifications sent through one shared queue).
    pub fn jobs(&self, text: &str) -> Vec<Job> {
        let config = self.config(text);
        Job::build_all(&config, &Notifications::default()).expect("jobs build")
    }

    /// Builds job `name` of `text`.
    pub fn job(&self, text: &str, name: &str) -> Job {
        let mut jobs = self.jobs(text);
        let index = jobs.iter().position(|job| job.name == name);
        jobs.swap_remove(index.expect("the job exists"))
    }

    /// Runs the first job of `text` once, now, recorded in this workspace's store, and waits
    /// (a minute at most) for its notifications to finish.
    pub async fn run_and_settle(&self, text: &str) -> (RunReport, Ledger) {
        let ledger = self.ledger().await;
        let job = self.jobs(text).swap_remove(0);
        let report = job
            .run_claimed(&ledger, job.now_slot())
            .await
            .expect("store")
            .expect("claimed");
        assert!(
            job.runner
                .notifications()
                .settle(Duration::from_secs(60))
                .await,
            "notifications finish"
        );
        (report, ledger)
    }

    /// Runs the first job of `text` once, now, claiming the run in `ledger` when given.
    pub async fn run_first(&self, text: &str, ledger: Option<&Ledger>) -> RunReport {
        let job = self.jobs(text).swap_remove(0);
        match ledger {
            None => job.run(job.now_slot()).await,
            Some(ledger) => job
                .run_claimed(ledger, job.now_slot())
                .await
                .expect("store works")
                .expect("claimed"),
        }
    }
}

/// Every file under `root`, relative, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

/// Runs the built `ferry` binary with `args`.
pub fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_LOG", "warn")
        .output()
        .expect("run the ferry binary")
}

/// Describes a process's output for assertion messages.
pub fn show(output: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).expect("open file to hash");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Serves `router` on 127.0.0.1 on a free port until the test's runtime ends.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// A server whose `GET /data` answers `body` only when the test lets it (one permit of the
/// returned semaphore per answer): a run reading from it lasts as long as the test wants.
pub async fn held_server(
    body: &'static str,
) -> (SocketAddr, std::sync::Arc<tokio::sync::Semaphore>) {
    let answers = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = std::sync::Arc::clone(&answers);
    let addr = serve(axum::Router::new().route(
        "/data",
        axum::routing::get(move || {
            let held = std::sync::Arc::clone(&held);
            async move {
                held.acquire().await.expect("open").forget();
                body
            }
        }),
    ))
    .await;
    (addr, answers)
}

/// An RFC 3339 instant written in a test, in UTC.
pub fn utc(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339 in the test")
        .with_timezone(&chrono::Utc)
}

/// A run slot for tests: a fixed instant in UTC.
pub fn slot() -> chrono::DateTime<chrono_tz::Tz> {
    use chrono::TimeZone as _;
    chrono_tz::UTC
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("valid instant")
}

/// Writes `len` bytes of pseudo-random data (xorshift, so nothing compresses) to `path`.
pub fn random_file(path: &Path, len: usize) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).expect("write input");
}

/// A certificate and its key in PEM files, for a TLS server in a test.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to `dir`.
pub fn self_signed(dir: &Path) -> Tls {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate");
    let tls = Tls {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&tls.cert, generated.cert.pem()).expect("write certificate");
    std::fs::write(&tls.key, generated.signing_key.serialize_pem()).expect("write key");
    tls
}

/// A self-signed certificate for 127.0.0.1 and localhost marked as a CA, as
/// `openssl req -x509` makes them, written to `dir`; and its SHA-256 fingerprint as
/// `openssl x509 -fingerprint -sha256` prints it (`AB:CD:…`).
pub fn self_signed_ca(dir: &Path) -> (Tls, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("names");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let tls = Tls {
        cert: dir.join("ca-server.pem"),
        key: dir.join("ca-server.key"),
    };
    std::fs::write(&tls.cert, cert.pem()).expect("write certificate");
    std::fs::write(&tls.key, key.serialize_pem()).expect("write key");
    let fingerprint = Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    (tls, fingerprint)
}

/// Builds job `name` from `text` in `ws` and runs it for the test slot.
pub async fn run_job(ws: &Workspace, text: &str, name: &str) -> RunReport {
    ws.job(text, name).run(slot()).await
}

/// Polls `check` every 20 ms until it holds, failing the test with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `child` to exit, killing it and failing the test after `within`.
pub fn wait_with_deadline(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the latest run of `job` in `ledger`'s store has started attempt `attempt`
/// (an earlier one failed), failing the test after `limit`.
pub async fn wait_for_attempt(ledger: &Ledger, job: &str, attempt: u32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let runs = ledger
            .store
            .history(Some(job), 1)
            .await
            .expect("read the store");
        if runs.first().is_some_and(|run| run.attempts >= attempt) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{job} did not reach attempt {attempt} within {limit:?}: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the files in `dir` hold `bytes` in all (an upload's temporary file has grown
/// so far on the server).
pub async fn wait_until_held(dir: &Path, bytes: u64) {
    let held = || -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .map(|meta| meta.len())
            .sum()
    };
    let what = format!("{bytes} bytes held in {}", dir.display());
    eventually(&what, Duration::from_secs(60), || held() >= bytes).await;
}

/// A TCP relay on 127.0.0.1 to another server, which a test can cut: while down it cuts
/// every link and closes each new connection at once (a server out of reach, as its client
/// sees it); stopped, it refuses connections.
pub struct Relay {
    pub port: u16,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (up, watch) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*watch.borrow() {
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Relay { port, up, task }
    }

    /// A relay to the PostgreSQL server `url` names, and the URL through it.
    pub async fn postgres(url: &str) -> (Relay, String) {
        let authority = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|auth| auth.rsplit('@').next())
            .expect("host:port in the PostgreSQL URL");
        let target: SocketAddr = tokio::net::lookup_host(authority)
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let relay = Relay::start(target).await;
        let relayed = url.replacen(authority, &format!("127.0.0.1:{}", relay.port), 1);
        (relay, relayed)
    }

    /// Cuts every link and closes new connections until [`Relay::up`].
    pub fn down(&self) {
        self.up.send_replace(false);
    }

    pub fn up(&self) {
        self.up.send_replace(true);
    }

    /// Stops listening: connections are refused from now on.
    pub async fn stop(self) {
        self.down();
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Terminates TLS on a free port and passes the plain bytes on to `backend`, as stunnel
/// would: a plain server reached over TLS.
pub async fn tls_front(tls: &Tls, backend: u16) -> u16 {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(&tls.key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut secured) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut secured, &mut plain).await;
            });
        }
    });
    port
}

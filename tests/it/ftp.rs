//! The FTP writer against a real FTP server on 127.0.0.1: libunftp with its file-system
//! backend, and a password check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry::error::ErrorKind;
use ferry::runner::{RunReport, RunStatus};
use ferry::state::Ledger;

use crate::support::ftp::*;
use crate::support::{
    Tls, Workspace, files_under, random_file, self_signed, sha256_file, wait_for_attempt,
    wait_until_held,
};

fn ftp_job(source: &str, port: u16, path: &str, extra: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "ftp-job"
schedule = "0 0 0 * * Mon-Fri"
source = {source}
retry = {{ max_attempts = 3, initial_interval = "100ms" }}
writers = [{{ type = "ftp", host = "127.0.0.1", port = {port}, username = "{USER}", password_file = "secrets/ftp", allow_plaintext_password = true, path = "{path}"{extra} }}]
"#
    )
}

async fn run(ws: &Workspace, text: &str) -> RunReport {
    run_with(ws, text, None).await
}

/// Runs the job once, keeping checkpoints in `ledger` when given.
async fn run_with(ws: &Workspace, text: &str, ledger: Option<&Ledger>) -> RunReport {
    ws.secret("ftp", PASSWORD);
    ws.run_first(text, ledger).await
}

#[tokio::test]
async fn a_small_file_lands_under_its_final_name() {
    let root = tempfile::tempdir().expect("temp dir");
    let (port, _server) = serve(root.path()).await;
    let ws = Workspace::new();
    let report = run(
        &ws,
        &ftp_job(
            r#"{ type = "inline", data = "a,b\n1,2\n" }"#,
            port,
            "/in/export.csv",
            "",
        ),
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        std::fs::read(root.path().join("in/export.csv")).expect("delivered"),
        b"a,b\n1,2\n"
    );
    assert_eq!(
        files_under(root.path()),
        vec!["in/export.csv".to_owned()],
        "no temporary file left"
    );
    let delivery = &report.deliveries[0];
    assert_eq!(
        delivery.location,
        format!("ftp://127.0.0.1:{port}/in/export.csv")
    );
    assert!(!delivery.link.as_deref().unwrap_or("").contains(PASSWORD));
}

/// `checksum_file = true`: `NAME.sha256` lands beside the file, after it.
#[tokio::test]
async fn a_checksum_file_lands_beside_the_file() {
    let root = tempfile::tempdir().expect("temp dir");
    let (port, _server) = serve(root.path()).await;
    let ws = Workspace::new();
    let text = ftp_job(
        r#"{ type = "inline", data = "a,b\n1,2\n" }"#,
        port,
        "/in/export.csv",
        ", checksum_file = true",
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        files_under(root.path()),
        vec![
            "in/export.csv".to_owned(),
            "in/export.csv.sha256".to_owned()
        ]
    );
    let line = std::fs::read_to_string(root.path().join("in/export.csv.sha256")).expect("read");
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"a,b\n1,2\n"));
    assert_eq!(line, format!("{want}  export.csv\n"));
}

#[tokio::test]
async fn nested_directories_are_created_and_big_files_arrive_whole() {
    let root = tempfile::tempdir().expect("temp dir");
    let (port, _server) = serve(root.path()).await;
    let ws = Workspace::new();
    random_file(&ws.path().join("big.bin"), 200 << 20);
    let text = ftp_job(
        r#"{ type = "file", path = "big.bin" }"#,
        port,
        "/a/b/c/{job}-{scheduled:%F}.bin",
        "",
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let delivered = files_under(root.path());
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].starts_with("a/b/c/ftp-job-"), "{delivered:?}");
    let want = sha256_file(&ws.path().join("big.bin"));
    assert_eq!(sha256_file(&root.path().join(&delivered[0])), want);
    assert_eq!(report.deliveries[0].sha256, want);
}

#[tokio::test]
async fn a_wrong_password_fails_at_once() {
    let root = tempfile::tempdir().expect("temp dir");
    let (port, _server) = serve(root.path()).await;
    let ws = Workspace::new();
    let text = ftp_job(r#"{ type = "inline", data = "x" }"#, port, "/x.txt", "").replace(
        "password_file = \"secrets/ftp\"",
        "password = \"not-the-password\"",
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert_eq!(report.attempts, 1, "a refused login is not retried");
    assert!(!failure.chain.join(" ").contains("not-the-password"));
    assert!(files_under(root.path()).is_empty());
}

#[tokio::test]
async fn a_failing_source_leaves_nothing_on_the_server() {
    let root = tempfile::tempdir().expect("temp dir");
    let (port, _server) = serve(root.path()).await;
    let ws = Workspace::new();
    let text = ftp_job(
        r#"{ type = "command", command = ["sh", "-c", "head -c 3000000 /dev/zero; exit 2"] }"#,
        port,
        "/out/data.bin",
        "",
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.error.expect("failure").kind, ErrorKind::Command);
    assert!(
        files_under(root.path()).is_empty(),
        "{:?}",
        files_under(root.path())
    );
}

#[tokio::test]
async fn the_server_down_is_a_network_failure() {
    let port = free_port();
    let ws = Workspace::new();
    let report = run(
        &ws,
        &ftp_job(r#"{ type = "inline", data = "x" }"#, port, "/x", ""),
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.error.expect("failure").kind, ErrorKind::Network);
    assert_eq!(report.attempts, 3, "connection failures are retried");
}

/// `accept_invalid_certs` waives the issuer, not the name: a certificate made out to
/// another host is still refused (as lettre does for email).
#[tokio::test]
async fn accept_invalid_certs_still_checks_the_host_name() {
    let root = tempfile::tempdir().expect("temp dir");
    let ws = Workspace::new();
    let generated =
        rcgen::generate_simple_self_signed(vec!["other.example".to_owned()]).expect("certificate");
    let tls = Tls {
        cert: ws.path().join("other.pem"),
        key: ws.path().join("other.key"),
    };
    std::fs::write(&tls.cert, generated.cert.pem()).expect("certificate");
    std::fs::write(&tls.key, generated.signing_key.serialize_pem()).expect("key");
    let port = free_port();
    let _server = FtpServer::start(root.path(), port, Some(&tls)).await;
    let text = ftp_job(
        r#"{ type = "inline", data = "x" }"#,
        port,
        "/a.txt",
        r#", security = "explicit_tls", accept_invalid_certs = true"#,
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert!(files_under(root.path()).is_empty());
}

/// Paths without a leading slash are under the login directory (here the served root): a
/// bare file name, and one in directories to create.
#[tokio::test]
async fn relative_paths_are_under_the_login_directory() {
    let root = tempfile::tempdir().expect("temp dir");
    let (port, _server) = serve(root.path()).await;
    let ws = Workspace::new();
    let source = r#"{ type = "inline", data = "relative\n" }"#;
    for path in ["drop.csv", "in/{scheduled:%Y}/drop.csv"] {
        let report = run(&ws, &ftp_job(source, port, path, "")).await;
        assert_eq!(report.status, RunStatus::Succeeded, "{path}: {report:#?}");
    }
    assert_eq!(
        files_under(root.path()),
        vec!["drop.csv".to_owned(), "in/2026/drop.csv".to_owned()]
    );
    assert_eq!(
        std::fs::read(root.path().join("drop.csv")).expect("delivered"),
        b"relative\n"
    );
}

/// A self-signed certificate made as `openssl req -x509` makes it is marked as a CA, which
/// webpki refuses as a server's own ("CaUsedAsEndEntity") where curl takes it: given as
/// `ca_file`, the server presenting exactly it is trusted; `pin_sha256` trusts the
/// certificate with that fingerprint; another fingerprint is refused.
#[tokio::test]
async fn a_self_signed_ca_certificate_is_trusted_as_given_or_by_fingerprint() {
    let root = tempfile::tempdir().expect("temp dir");
    let ws = Workspace::new();
    let (tls, fingerprint) = crate::support::self_signed_ca(ws.path());
    let port = free_port();
    let _server = FtpServer::start(root.path(), port, Some(&tls)).await;
    let source = r#"{ type = "inline", data = "pinned\n" }"#;
    for (path, trust) in [
        ("/a.txt", r#"ca_file = "ca-server.pem""#.to_owned()),
        ("/b.txt", format!(r#"pin_sha256 = "{fingerprint}""#)),
        // Lower case, without colons, as `sha256sum` prints it.
        (
            "/c.txt",
            format!(
                r#"pin_sha256 = "{}""#,
                fingerprint.replace(':', "").to_lowercase()
            ),
        ),
    ] {
        let text = ftp_job(
            source,
            port,
            path,
            &format!(r#", security = "explicit_tls", {trust}"#),
        );
        let report = run(&ws, &text).await;
        assert_eq!(report.status, RunStatus::Succeeded, "{trust}: {report:#?}");
    }
    let other = "AB:".repeat(31) + "AB";
    let text = ftp_job(
        source,
        port,
        "/d.txt",
        &format!(r#", security = "explicit_tls", pin_sha256 = "{other}""#),
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert_eq!(report.attempts, 1);
    assert_eq!(
        files_under(root.path()),
        vec!["a.txt".to_owned(), "b.txt".to_owned(), "c.txt".to_owned()]
    );
}

#[tokio::test]
async fn explicit_tls_trusts_the_ca_file_and_nothing_else() {
    let root = tempfile::tempdir().expect("temp dir");
    let ws = Workspace::new();
    let tls = self_signed(ws.path());
    let port = free_port();
    // The server refuses anything but TLS on both channels.
    let _server = FtpServer::start(root.path(), port, Some(&tls)).await;
    let source = r#"{ type = "inline", data = "over TLS\n" }"#;

    let trusted = ftp_job(
        source,
        port,
        "/secure/a.txt",
        r#", security = "explicit_tls", ca_file = "server.pem""#,
    );
    let report = run(&ws, &trusted).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        std::fs::read(root.path().join("secure/a.txt")).expect("delivered"),
        b"over TLS\n"
    );

    // The system's roots do not include the test's certificate: refused, not retried.
    let untrusted = ftp_job(
        source,
        port,
        "/secure/b.txt",
        r#", security = "explicit_tls""#,
    );
    let report = run(&ws, &untrusted).await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert!(
        failure.chain.join(" ").contains("certificate"),
        "{failure:?}"
    );
    assert_eq!(
        report.attempts, 1,
        "an untrusted certificate is not retried"
    );

    // Asked explicitly, any certificate is accepted.
    let anything = ftp_job(
        source,
        port,
        "/secure/c.txt",
        r#", security = "explicit_tls", accept_invalid_certs = true"#,
    );
    let report = run(&ws, &anything).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");

    // Plain FTP is refused by this server.
    let plain = ftp_job(source, port, "/secure/d.txt", "");
    let report = run(&ws, &plain).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    assert_eq!(
        files_under(root.path()),
        vec!["secure/a.txt".to_owned(), "secure/c.txt".to_owned()]
    );
}

/// A job uploading `input.bin` to `/in/resumable.bin` slowly (12 MiB/s), retrying for as
/// long as a server may stay away.
fn resumable_job(port: u16) -> String {
    let text = ftp_job(
        r#"{ type = "file", path = "input.bin" }"#,
        port,
        "/in/resumable.bin",
        "",
    )
    .replace(
        "schedule = \"0 0 0 * * Mon-Fri\"",
        "schedule = \"0 0 0 * * Mon-Fri\"\nrate_limit = \"12MiB\"",
    )
    .replace(
        "retry = { max_attempts = 3, initial_interval = \"100ms\" }",
        "retry = { max_attempts = 12, initial_interval = \"500ms\", max_interval = \"1s\" }",
    );
    assert!(
        text.contains("max_attempts = 12") && text.contains("rate_limit"),
        "{text}"
    );
    text
}

#[tokio::test]
async fn a_cut_connection_resumes_where_the_server_left_off() {
    let root = tempfile::tempdir().expect("temp dir");
    let ws = Workspace::new();
    let input = ws.path().join("input.bin");
    random_file(&input, 64 << 20);
    let port = free_port();
    let mut server = FtpServer::start(root.path(), port, None).await;
    let text = resumable_job(port);
    let ledger = ws.ledger().await;

    // Cut every connection once the server holds 40 MiB of the temporary file (after the
    // first checkpoint, two seconds in: what was in flight then has landed), and come back
    // on the same port once ferry has gone on to its next attempt (refused while down).
    let watched = root.path().join("in");
    let root_path = root.path().to_path_buf();
    let watcher = ledger.clone();
    let restarter = tokio::spawn(async move {
        wait_until_held(&watched, 40 << 20).await;
        server.stop();
        wait_for_attempt(&watcher, "ftp-job", 2, Duration::from_secs(60)).await;
        FtpServer::start(&root_path, port, None).await
    });
    let report = run_with(&ws, &text, Some(&ledger)).await;
    let _server = restarter.await.expect("restarted");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(report.attempts >= 2, "{report:#?}");
    eprintln!(
        "resumed from byte {} of {}; attempts {}",
        report.resumed_from,
        64u64 << 20,
        report.attempts
    );
    assert!(
        report.resumed_from >= 8 << 20 && report.resumed_from < 64 << 20,
        "resumed part-way: {}",
        report.resumed_from
    );
    assert_eq!(
        sha256_file(&root.path().join("in/resumable.bin")),
        sha256_file(&input)
    );
    assert_eq!(report.deliveries[0].sha256, sha256_file(&input));
    assert_eq!(
        files_under(root.path()),
        vec!["in/resumable.bin".to_owned()]
    );
}

#[tokio::test]
async fn overwrite_false_keeps_an_existing_file() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(root.path().join("in")).expect("directory");
    std::fs::write(root.path().join("in/export.csv"), "yesterday\n").expect("existing file");
    let (port, _server) = serve(root.path()).await;
    let ws = Workspace::new();
    let source = r#"{ type = "inline", data = "today\n" }"#;
    let report = run(
        &ws,
        &ftp_job(source, port, "/in/export.csv", ", overwrite = false"),
    )
    .await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.error.expect("failure").kind, ErrorKind::Rejected);
    assert_eq!(report.attempts, 1, "an existing file is not retried");
    assert_eq!(
        std::fs::read_to_string(root.path().join("in/export.csv")).expect("kept"),
        "yesterday\n"
    );

    // By default the new file replaces it.
    let report = run(&ws, &ftp_job(source, port, "/in/export.csv", "")).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("in/export.csv")).expect("replaced"),
        "today\n"
    );
    assert_eq!(files_under(root.path()), vec!["in/export.csv".to_owned()]);
}

/// ProFTPD (Debian's `proftpd-core`) with mod_digest: a server that offers HASH and
/// XSHA256. Chrooted to a temporary directory, so it runs as root only.
struct ProFtpd {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
    binary: std::ffi::OsString,
}

/// `ftp-test-password`, MD5-crypted (`openssl passwd -1 -salt ferrysal`).
const PROFTPD_HASH: &str = "$1$ferrysal$nMOJHy2.dqRywGT6WpfkU0";

impl ProFtpd {
    async fn start(binary: &std::ffi::OsStr) -> ProFtpd {
        ProFtpd::start_with(binary, "").await
    }

    /// [`ProFtpd::start`] with `extra` lines of configuration.
    async fn start_with(binary: &std::ffi::OsStr, extra: &str) -> ProFtpd {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::create_dir(dir.path().join("root")).expect("root");
        let port = free_port();
        let passive = free_port();
        let config = format!(
            r#"ServerName "ferry test"
ServerType standalone
Port {port}
DefaultAddress 127.0.0.1
SocketBindTight on
UseIPv6 off
PidFile {pid}
ScoreboardFile {scoreboard}
DelayTable none
WtmpLog off
UseReverseDNS off
User root
Group root
RootLogin on
AuthOrder mod_auth_file.c
AuthUserFile {passwd}
AuthGroupFile {group}
RequireValidShell off
DefaultRoot ~
PassivePorts {passive} {passive_end}
AllowOverwrite on
AllowStoreRestart on
SystemLog {system}
TransferLog none
LogFormat commands "%m %J"
ExtendedLog {commands} ALL commands
ModulePath /usr/lib/proftpd
LoadModule mod_digest.c
DigestEngine on
{extra}
"#,
            pid = path("proftpd.pid"),
            scoreboard = path("proftpd.scoreboard"),
            passwd = path("passwd"),
            group = path("group"),
            passive_end = passive.saturating_add(20),
            system = path("system.log"),
            commands = path("commands.log"),
        );
        std::fs::write(dir.path().join("proftpd.conf"), config).expect("config");
        for (name, line) in [
            (
                "passwd",
                format!("{USER}:{PROFTPD_HASH}:0:0::{}:/bin/false\n", path("root")),
            ),
            ("group", "root:x:0:\n".to_owned()),
        ] {
            let file = dir.path().join(name);
            std::fs::write(&file, line).expect("auth file");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .expect("private auth file");
        }
        let child = ProFtpd::spawn(binary, dir.path());
        let mut server = ProFtpd {
            child,
            dir,
            port,
            binary: binary.to_owned(),
        };
        server.wait_until_up().await;
        server
    }

    fn spawn(binary: &std::ffi::OsStr, dir: &Path) -> std::process::Child {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new(binary)
            // Its own process group: killing it kills the session processes it forks.
            .process_group(0)
            .args(["-n", "-c"])
            .arg(dir.join("proftpd.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start proftpd")
    }

    async fn wait_until_up(&mut self) {
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("system.log")).unwrap_or_default();
        panic!("proftpd did not start on port {}:\n{log}", self.port);
    }

    /// Kills the server and its sessions (every connection dies mid-transfer).
    fn kill(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: killpg has no memory-safety preconditions; the group is the server's.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same files.
    async fn restart(&mut self) {
        self.kill();
        self.child = ProFtpd::spawn(&self.binary, self.dir.path());
        self.wait_until_up().await;
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The commands the server received, one a line.
    fn commands(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("commands.log")).unwrap_or_default()
    }
}

impl Drop for ProFtpd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ProFTPD binary to test against, from `FERRY_TEST_PROFTPD` (set by `.ci/run`, which
/// installs proftpd-core); `None` (the test is not run, and says so) when unset.
fn proftpd() -> Option<std::ffi::OsString> {
    let Some(binary) = std::env::var_os("FERRY_TEST_PROFTPD") else {
        eprintln!("ProFTPD test not run: FERRY_TEST_PROFTPD is not set");
        return None;
    };
    assert_eq!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "FERRY_TEST_PROFTPD is set: the ProFTPD tests chroot, so they run as root"
    );
    Some(binary)
}

#[tokio::test]
async fn a_server_that_offers_hash_confirms_the_sha256() {
    let Some(binary) = proftpd() else {
        return;
    };
    let server = ProFtpd::start(&binary).await;
    let ws = Workspace::new();
    random_file(&ws.path().join("big.bin"), 5 << 20);
    let report = run(
        &ws,
        &ftp_job(
            r#"{ type = "file", path = "big.bin" }"#,
            server.port,
            "/in/hashed.bin",
            "",
        ),
    )
    .await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let want = sha256_file(&ws.path().join("big.bin"));
    assert_eq!(sha256_file(&server.root().join("in/hashed.bin")), want);
    assert_eq!(
        files_under(&server.root()),
        vec!["in/hashed.bin".to_owned()]
    );
    // ferry asked for SHA-256 (the server's default is SHA-1) and a hash of the upload.
    let commands = server.commands();
    assert!(commands.contains("OPTS HASH SHA-256"), "{commands}");
    assert!(
        commands
            .lines()
            .any(|line| line.starts_with("HASH /in/hashed.bin.partial-")),
        "{commands}"
    );
}

/// A 48 MiB resumable upload to a fresh ProFTPD (`None` when ProFTPD is not configured).
struct Resumable {
    server: ProFtpd,
    ws: Workspace,
    input: PathBuf,
    text: String,
    ledger: Ledger,
    /// The server's upload directory.
    watched: PathBuf,
}

impl Resumable {
    async fn start() -> Option<Resumable> {
        let binary = proftpd()?;
        let server = ProFtpd::start(&binary).await;
        let ws = Workspace::new();
        let input = ws.path().join("input.bin");
        random_file(&input, 48 << 20);
        let text = resumable_job(server.port);
        let ledger = ws.ledger().await;
        let watched = server.root().join("in");
        Some(Resumable {
            server,
            ws,
            input,
            text,
            ledger,
            watched,
        })
    }
}

/// The other half of the sha256 check: a server whose file differs from the data (here a
/// byte of the partial file flipped while the server was down, so a resumed upload hashes
/// right on ferry's side and wrong on the server's) fails the attempt, the corrupt file
/// never reaches the final name, and the next attempt starts over and delivers.
#[tokio::test]
async fn a_server_sha256_that_disagrees_fails_the_attempt() {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let Some(Resumable {
        mut server,
        ws,
        input,
        text,
        ledger,
        watched,
    }) = Resumable::start().await
    else {
        return;
    };
    let corrupter = tokio::spawn(async move {
        // Past the first checkpoint (one every two seconds at 12 MiB/s).
        wait_until_held(&watched, 36 << 20).await;
        server.kill();
        let partial = files_under(&watched)
            .into_iter()
            .find(|name| name.starts_with("resumable.bin.partial-"))
            .expect("a partial file");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(watched.join(partial))
            .expect("open the partial file");
        let mut byte = [0u8; 1];
        file.seek(SeekFrom::Start(1000)).expect("seek");
        file.read_exact(&mut byte).expect("read");
        file.seek(SeekFrom::Start(1000)).expect("seek");
        file.write_all(&[byte[0] ^ 0xff]).expect("flip a byte");
        drop(file);
        server.restart().await;
        server
    });
    let report = run_with(&ws, &text, Some(&ledger)).await;
    let server = corrupter.await.expect("restarted");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        sha256_file(&server.root().join("in/resumable.bin")),
        sha256_file(&input),
        "the corrupt upload never reached the final name"
    );
    let commands = server.commands();
    let hashes = commands
        .lines()
        .filter(|line| line.starts_with("HASH /in/resumable.bin.partial-"))
        .count();
    assert_eq!(hashes, 2, "a mismatch, then a match: {commands}");
    assert!(
        commands.lines().any(|line| line.starts_with("REST ")),
        "the corrupted attempt resumed: {commands}"
    );
    assert!(report.attempts >= 3, "{report:#?}");
}

#[tokio::test]
async fn a_killed_proftpd_is_resumed_with_rest() {
    let Some(Resumable {
        mut server,
        ws,
        input,
        text,
        ledger,
        watched,
    }) = Resumable::start().await
    else {
        return;
    };
    let watcher = ledger.clone();
    let killer = tokio::spawn(async move {
        wait_until_held(&watched, 36 << 20).await;
        server.kill();
        wait_for_attempt(&watcher, "ftp-job", 2, Duration::from_secs(60)).await;
        server.restart().await;
        server
    });
    let report = run_with(&ws, &text, Some(&ledger)).await;
    let server = killer.await.expect("restarted");
    eprintln!(
        "ProFTPD: resumed from byte {} of {}; attempts {}",
        report.resumed_from,
        48u64 << 20,
        report.attempts
    );
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(report.attempts >= 2, "{report:#?}");
    assert!(
        report.resumed_from >= 8 << 20 && report.resumed_from < 48 << 20,
        "resumed part-way: {}",
        report.resumed_from
    );
    assert_eq!(
        sha256_file(&server.root().join("in/resumable.bin")),
        sha256_file(&input)
    );
    assert_eq!(
        files_under(&server.root()),
        vec!["in/resumable.bin".to_owned()]
    );
    let commands = server.commands();
    assert!(
        commands.lines().any(|line| line.starts_with("REST ")),
        "{commands}"
    );
}

/// Servers cap sessions per client: ProFTPD with `MaxClientsPerHost 1` refuses a second
/// session while one is open. With a session held open by hand, a job is refused; with
/// `max_connections = 1`, two jobs delivering to it at once both deliver: the second waits
/// until the first's session has ended, on the server too.
#[tokio::test]
async fn max_connections_keeps_within_a_servers_session_cap() {
    let Some(binary) = proftpd() else {
        return;
    };
    let server = ProFtpd::start_with(&binary, "MaxClientsPerHost 1").await;
    let ws = Workspace::new();
    ws.secret("ftp", PASSWORD);
    random_file(&ws.path().join("input.bin"), 4 << 20);
    let job = |name: &str, limit: &str| {
        ftp_job(
            r#"{ type = "file", path = "input.bin" }"#,
            server.port,
            &format!("/in/{name}.bin"),
            limit,
        )
        .replace("name = \"ftp-job\"", &format!("name = \"{name}\""))
        // Half a second each, so two sessions would overlap.
        .replace(
            "schedule = \"0 0 0 * * Mon-Fri\"",
            "schedule = \"0 0 0 * * Mon-Fri\"\nrate_limit = \"8MiB\"",
        )
        .replace("max_attempts = 3", "max_attempts = 1")
    };

    // A session of our own: logged in once the server has let go of the probe that saw it
    // start, and held open.
    let held = held_session(server.port).await;
    let text = job("refused", "");
    let refused = ws.job(&text, "refused");
    let report = refused.run(refused.now_slot()).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    let error = report.error.as_ref().expect("an error");
    assert!(
        error.chain.join(" ").contains("maximum number of clients"),
        "{error:#?}"
    );
    end_session(held).await;

    let text = [
        job("first", ", max_connections = 1"),
        job("second", ", max_connections = 1"),
    ]
    .join("\n");
    let (first, second) = (ws.job(&text, "first"), ws.job(&text, "second"));
    let (a, b) = tokio::join!(first.run(first.now_slot()), second.run(second.now_slot()));
    assert_eq!(a.status, RunStatus::Succeeded, "{a:#?}");
    assert_eq!(b.status, RunStatus::Succeeded, "{b:#?}");
    let want = sha256_file(&ws.path().join("input.bin"));
    for name in ["first", "second"] {
        assert_eq!(
            sha256_file(&server.root().join(format!("in/{name}.bin"))),
            want
        );
    }
}

/// A session to the local server on `port`, logged in as the test user: tried until the
/// server admits it (a connection that only probed whether it was up may still count
/// against its cap for a moment).
async fn held_session(port: u16) -> suppaftp::tokio::AsyncFtpStream {
    for _ in 0..100 {
        let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        if ftp.login(USER, PASSWORD).await.is_ok() {
            return ftp;
        }
        end_session(ftp).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never admitted a session");
}

/// Ends `ftp`'s session and waits until the server has closed its side.
async fn end_session(mut ftp: suppaftp::tokio::AsyncFtpStream) {
    let _ = ftp.quit().await;
    let socket = ftp.get_ref().await;
    let mut buf = [0u8; 64];
    loop {
        let _ = socket.readable().await;
        match socket.try_read(&mut buf) {
            Ok(0) => return,
            Err(err) if err.kind() != std::io::ErrorKind::WouldBlock => return,
            _ => {}
        }
    }
}

/// vsftpd (Debian's), from `FERRY_TEST_VSFTPD` (set by `.ci/run`, which installs it);
/// `None` (the test is not run, and says so) when unset.
fn vsftpd() -> Option<std::ffi::OsString> {
    let Some(binary) = std::env::var_os("FERRY_TEST_VSFTPD") else {
        eprintln!("vsftpd test not run: FERRY_TEST_VSFTPD is not set");
        return None;
    };
    Some(binary)
}

/// vsftpd on a free port with anonymous uploads into `up/` of a temporary directory, over
/// explicit TLS only (logins and data), with its usual `require_ssl_reuse=YES`: a data
/// connection must resume the control connection's TLS session.
struct Vsftpd {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Vsftpd {
    async fn start_tls(binary: &std::ffi::OsStr, tls: &crate::support::Tls) -> Vsftpd {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(root.join("up")).expect("upload dir");
        std::fs::create_dir_all(&empty).expect("empty dir");
        let (port, passive) = (free_port(), free_port());
        let conf = dir.path().join("vsftpd.conf");
        std::fs::write(
            &conf,
            format!(
                "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
                 run_as_launching_user=YES\nanonymous_enable=YES\nno_anon_password=YES\n\
                 anon_root={root}\nwrite_enable=YES\nanon_upload_enable=YES\n\
                 anon_mkdir_write_enable=YES\nanon_other_write_enable=YES\nanon_umask=022\n\
                 local_enable=NO\npasv_enable=YES\npasv_address=127.0.0.1\n\
                 pasv_min_port={passive}\npasv_max_port={}\nsecure_chroot_dir={empty}\n\
                 seccomp_sandbox=NO\nisolate=NO\nisolate_network=NO\nxferlog_enable=NO\n\
                 ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\n\
                 force_anon_data_ssl=YES\nrequire_ssl_reuse=YES\n\
                 rsa_cert_file={cert}\nrsa_private_key_file={key}\n\
                 vsftpd_log_file={log}\ndual_log_enable=YES\n",
                passive.saturating_add(20),
                root = root.display(),
                empty = empty.display(),
                cert = tls.cert.display(),
                key = tls.key.display(),
                log = dir.path().join("vsftpd.log").display(),
            ),
        )
        .expect("vsftpd.conf");
        let child = std::process::Command::new(binary)
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start vsftpd");
        // Killed when dropped, if it never comes up too.
        let server = Vsftpd { child, dir, port };
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("vsftpd did not start on port {port}:\n{}", server.log());
    }

    fn uploads(&self) -> PathBuf {
        self.dir.path().join("root/up")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vsftpd.log")).unwrap_or_default()
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// FTPS against vsftpd as it is usually run: TLS on both channels and the data connection
/// resuming the control connection's TLS session (`require_ssl_reuse=YES`, where rclone
/// users meet "425 TLS session of data connection not resumed"). Directories are created
/// and a 3 MiB file arrives whole, under its final name only; a relative path lands under
/// the login directory.
#[tokio::test]
async fn explicit_tls_to_vsftpd_resumes_the_tls_session_for_data() {
    let Some(binary) = vsftpd() else {
        return;
    };
    let ws = Workspace::new();
    let tls = self_signed(ws.path());
    let server = Vsftpd::start_tls(&binary, &tls).await;
    random_file(&ws.path().join("input.bin"), 3 << 20);
    let text = ftp_job(
        r#"{ type = "file", path = "input.bin" }"#,
        server.port,
        // As the launching user vsftpd cannot chroot: the path is the machine's.
        &format!("{}/nightly/{{job}}.bin", server.uploads().display()),
        r#", security = "explicit_tls", ca_file = "server.pem""#,
    )
    .replace(
        r#"username = "ferry", password_file = "secrets/ftp", allow_plaintext_password = true, "#,
        r#"username = "anonymous", "#,
    );
    // Runs `text`, which must deliver the input to `landed` under the upload directory.
    let delivers = |text: String, landed: &'static str| {
        let (ws, server) = (&ws, &server);
        async move {
            let report = ws.run_first(&text, None).await;
            assert_eq!(
                report.status,
                RunStatus::Succeeded,
                "{report:#?}\n{}",
                server.log()
            );
            assert_eq!(
                sha256_file(&server.uploads().join(landed)),
                sha256_file(&ws.path().join("input.bin"))
            );
            report
        }
    };
    delivers(text.clone(), "nightly/ftp-job.bin").await;
    assert_eq!(
        files_under(&server.uploads()),
        vec!["nightly/ftp-job.bin".to_owned()]
    );

    // A relative path is under the login directory (vsftpd's anon_root, not chrooted: an
    // absolute path would be the machine's), as curl reads ftp://host/up/relative/file.
    let relative = text.replace(
        &format!("{}/nightly/{{job}}.bin", server.uploads().display()),
        "up/relative/{job}.bin",
    );
    let report = delivers(relative, "relative/ftp-job.bin").await;
    assert_eq!(
        report.deliveries[0].location,
        format!("ftp://127.0.0.1:{}/up/relative/ftp-job.bin", server.port)
    );
    let delivered = vec![
        "nightly/ftp-job.bin".to_owned(),
        "relative/ftp-job.bin".to_owned(),
    ];
    assert_eq!(files_under(&server.uploads()), delivered);

    // Plain FTP is refused by this server: nothing more arrives.
    let plain = text.replace(r#", security = "explicit_tls", ca_file = "server.pem""#, "");
    let report = ws.run_first(&plain, None).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    assert_eq!(files_under(&server.uploads()), delivered);
}

//! The FTP writer against a real FTP server on 127.0.0.1: libunftp with its file-system
//! backend, and a password check.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use ferry::error::ErrorKind;
use ferry::job::{BuildEnv, Job};
use ferry::runner::{RunReport, RunStatus};
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};

use crate::support::{Workspace, random_file, sha256_file};

const USER: &str = "ferry";
const PASSWORD: &str = "ftp-test-password";

/// Accepts one user with one password.
#[derive(Debug)]
struct OneUser;

#[async_trait::async_trait]
impl Authenticator for OneUser {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if username != USER {
            return Err(AuthenticationError::BadUser);
        }
        if creds.password.as_deref() != Some(PASSWORD) {
            return Err(AuthenticationError::BadPassword);
        }
        Ok(Principal {
            username: username.to_owned(),
        })
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Serves `root` over FTP on a free port; returns the port.
async fn serve(root: &Path) -> u16 {
    let port = free_port();
    let passive = free_port();
    let root = root.to_path_buf();
    let server = libunftp::ServerBuilder::with_authenticator(
        Box::new(move || unftp_sbe_fs::Filesystem::new(root.clone()).expect("file system backend")),
        Arc::new(OneUser),
    )
    .passive_ports(passive..=passive.saturating_add(20))
    .build()
    .expect("FTP server");
    tokio::spawn(server.listen(format!("127.0.0.1:{port}")));
    // Wait until it accepts connections.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return port;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the FTP server did not start");
}

fn ftp_job(source: &str, port: u16, path: &str, extra: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "ftp-job"
schedule = "0 0 0 * * Mon-Fri"
source = {source}
retry = {{ max_attempts = 3, initial_interval = "100ms" }}
writers = [{{ type = "ftp", host = "127.0.0.1", port = {port}, username = "{USER}", password_env = "FERRY_TEST_FTP_PASSWORD", path = "{path}"{extra} }}]
"#
    )
}

async fn run(ws: &Workspace, text: &str) -> RunReport {
    // SAFETY: every test sets the same value.
    unsafe { std::env::set_var("FERRY_TEST_FTP_PASSWORD", PASSWORD) };
    let config = ws.config(text);
    let env = BuildEnv::new(config.base_dir.clone()).expect("env");
    let job = Job::build(&config, &config.jobs[0], &env).expect("job builds");
    job.run(job.now_slot()).await
}

/// Files under `root`, relative, sorted.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_small_file_lands_under_its_final_name() {
    let root = tempfile::tempdir().expect("temp dir");
    let port = serve(root.path()).await;
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
        files(root.path()),
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

#[tokio::test]
async fn nested_directories_are_created_and_big_files_arrive_whole() {
    let root = tempfile::tempdir().expect("temp dir");
    let port = serve(root.path()).await;
    let ws = Workspace::new();
    random_file(&ws.path().join("big.bin"), 40 << 20);
    let text = ftp_job(
        r#"{ type = "file", path = "big.bin" }"#,
        port,
        "/a/b/c/{job}-{scheduled:%F}.bin",
        "",
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let delivered = files(root.path());
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].starts_with("a/b/c/ftp-job-"), "{delivered:?}");
    let want = sha256_file(&ws.path().join("big.bin"));
    assert_eq!(sha256_file(&root.path().join(&delivered[0])), want);
    assert_eq!(report.deliveries[0].sha256, want);
}

#[tokio::test]
async fn a_wrong_password_fails_at_once() {
    let root = tempfile::tempdir().expect("temp dir");
    let port = serve(root.path()).await;
    let ws = Workspace::new();
    let text = ftp_job(r#"{ type = "inline", data = "x" }"#, port, "/x.txt", "").replace(
        "password_env = \"FERRY_TEST_FTP_PASSWORD\"",
        "password = \"not-the-password\"",
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert_eq!(report.attempts, 1, "a refused login is not retried");
    assert!(!failure.chain.join(" ").contains("not-the-password"));
    assert!(files(root.path()).is_empty());
}

#[tokio::test]
async fn a_failing_source_leaves_nothing_on_the_server() {
    let root = tempfile::tempdir().expect("temp dir");
    let port = serve(root.path()).await;
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
    assert!(files(root.path()).is_empty(), "{:?}", files(root.path()));
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

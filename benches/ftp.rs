//! ferry against curl, uploading the same file to the same local FTP server.
//!
//!   cargo bench --bench ftp                     (1 GiB)
//!   FERRY_BENCH_MIB=256 cargo bench --bench ftp
//!   FERRY_BENCH_FTP_SERVERS=vsftpd cargo bench --bench ftp   (only vsftpd)
//!
//! Starts an FTP server (libunftp with its file-system backend, the one the tests use) on
//! 127.0.0.1 in this process, then uploads a random file with `ferry trigger` (file source →
//! ftp writer: temporary name, SIZE check, rename) and with `curl -T`, three times each under
//! GNU time, and prints wall time, MiB/s, CPU seconds and peak RSS. Then the same against
//! vsftpd (`FERRY_BENCH_VSFTPD`, `/usr/sbin/vsftpd` by default), which is not the bottleneck:
//! libunftp writes 4 KiB at a time and caps both clients near 145 MiB/s.

mod common;
#[path = "common/vsftpd.rs"]
mod vsftpd;

use std::path::Path;
use std::process::Command;

use common::{measure, write_random};
use vsftpd::{free, start_vsftpd};

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

fn main() {
    let mib: u64 = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let work = tempfile::tempdir().expect("temp dir");
    let served = work.path().join("served");
    std::fs::create_dir_all(&served).expect("server root");
    let input = work.path().join("input.bin");
    write_random(&input, mib << 20);

    let servers =
        std::env::var("FERRY_BENCH_FTP_SERVERS").unwrap_or_else(|_| "libunftp,vsftpd".into());
    // Kept alive until the end: the libunftp server runs on it.
    let _runtime;
    if servers.contains("libunftp") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let port = runtime.block_on(serve(&served));
        println!("FTP server libunftp on 127.0.0.1:{port}; {mib} MiB of random data");
        let login = format!(
            "username = \"{USER}\", password = \"{PASSWORD}\", allow_plaintext_password = true"
        );
        compare(
            work.path(),
            mib,
            port,
            &login,
            "/",
            &format!("{USER}:{PASSWORD}"),
        );
        for name in ["ferry.bin", "curl.bin"] {
            let stored = std::fs::metadata(served.join(name)).map(|m| m.len());
            println!("  stored {name}: {stored:?} bytes");
        }

        _runtime = runtime;
    }

    // vsftpd, a server that is not the bottleneck (libunftp writes 4 KiB at a time).
    let vsftpd = std::env::var("FERRY_BENCH_VSFTPD").unwrap_or_else(|_| "/usr/sbin/vsftpd".into());
    if !servers.contains("vsftpd") {
        return;
    }
    if !Path::new(&vsftpd).exists() {
        println!("vsftpd not run: {vsftpd} is missing (apt-get install vsftpd)");
        return;
    }
    // The server's files in memory where it can: its disk's writeback (the previous run's
    // gigabyte) made either client's wall time vary 3× from run to run.
    let server_dir = match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("server dir");
    let (port, mut server, uploads) = start_vsftpd(&vsftpd, server_dir.path());
    println!(
        "FTP server vsftpd on 127.0.0.1:{port}, storing under {}",
        server_dir.path().display()
    );
    // vsftpd runs as the launching user here, without a chroot: paths are the file system's.
    let login = "username = \"anonymous\", password = \"bench\", allow_plaintext_password = true";
    let dir = format!("{}/", uploads.display());
    compare(work.path(), mib, port, login, &dir, "anonymous:bench");
    for name in ["ferry.bin", "curl.bin"] {
        let stored = std::fs::metadata(uploads.join(name)).map(|m| m.len());
        println!("  stored {name}: {stored:?} bytes");
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Uploads the input with `ferry trigger` and with `curl -T` to the FTP server on `port`,
/// into `dir` (absolute, ending in `/`), three times each, alternating.
fn compare(work: &Path, mib: u64, port: u16, login: &str, dir: &str, curl_user: &str) {
    let config = work.join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
state = "sqlite://state.db"

[[jobs]]
name = "upload"
schedule = "@yearly"
source = {{ type = "file", path = "input.bin" }}
writers = [{{ type = "ftp", host = "127.0.0.1", port = {port}, {login}, path = "{dir}ferry.bin" }}]
"#
        ),
    )
    .expect("job file");
    let config_arg = config.display().to_string();
    let input_arg = work.join("input.bin").display().to_string();
    for _ in 0..3 {
        measure(
            "ferry",
            mib,
            work,
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["trigger", "upload", "--config", &config_arg])
                .env("FERRY_LOG", "warn"),
        );
        measure(
            "curl -T",
            mib,
            work,
            Command::new("curl").args([
                "-sS",
                "-T",
                &input_arg,
                "--user",
                curl_user,
                // `//` makes the path absolute rather than relative to the login directory.
                &format!("ftp://127.0.0.1:{port}/{dir}curl.bin"),
            ]),
        );
    }
}

#[derive(Debug)]
struct OneUser;

#[async_trait::async_trait]
impl unftp_core::auth::Authenticator for OneUser {
    async fn authenticate(
        &self,
        username: &str,
        creds: &unftp_core::auth::Credentials,
    ) -> Result<unftp_core::auth::Principal, unftp_core::auth::AuthenticationError> {
        if username == USER && creds.password.as_deref() == Some(PASSWORD) {
            Ok(unftp_core::auth::Principal {
                username: username.to_owned(),
            })
        } else {
            Err(unftp_core::auth::AuthenticationError::BadPassword)
        }
    }
}

async fn serve(root: &Path) -> u16 {
    let (port, passive) = (free(), free());
    let root = root.to_path_buf();
    let server = libunftp::ServerBuilder::with_authenticator(
        Box::new(move || unftp_sbe_fs::Filesystem::new(root.clone()).expect("backend")),
        std::sync::Arc::new(OneUser),
    )
    .passive_ports(passive..=passive.saturating_add(20))
    .build()
    .expect("FTP server");
    tokio::spawn(server.listen(format!("127.0.0.1:{port}")));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    port
}

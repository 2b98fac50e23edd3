//! ferry against curl, uploading the same file to the same local FTP server.
//!
//!   cargo bench --bench ftp                     (1 GiB)
//!   FERRY_BENCH_MIB=256 cargo bench --bench ftp
//!
//! Starts an FTP server (libunftp with its file-system backend, the one the tests use) on
//! 127.0.0.1 in this process, then uploads a random file with `ferry trigger` (file source →
//! ftp writer: temporary name, SIZE check, rename) and with `curl -T`, each under GNU time,
//! and prints wall time, MiB/s and peak RSS.

mod common;

use std::path::Path;
use std::process::Command;

use common::{measure, write_random};

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

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = runtime.block_on(serve(&served));
    println!("FTP server (libunftp) on 127.0.0.1:{port}; {mib} MiB of random data");

    let config = work.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
state = "sqlite://state.db"

[[jobs]]
name = "upload"
schedule = "@yearly"
source = {{ type = "file", path = "input.bin" }}
writers = [{{ type = "ftp", host = "127.0.0.1", port = {port}, username = "{USER}", password = "{PASSWORD}", path = "/ferry.bin" }}]
"#
        ),
    )
    .expect("job file");
    let config_arg = config.display().to_string();
    measure(
        "ferry",
        mib,
        work.path(),
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["trigger", "upload", "--config", &config_arg])
            .env("FERRY_LOG", "warn"),
    );
    let input_arg = input.display().to_string();
    measure(
        "curl -T",
        mib,
        work.path(),
        Command::new("curl").args([
            "-sS",
            "-T",
            &input_arg,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            &format!("ftp://127.0.0.1:{port}/curl.bin"),
        ]),
    );
    for name in ["ferry.bin", "curl.bin"] {
        let stored = std::fs::metadata(served.join(name)).map(|m| m.len());
        println!("  stored {name}: {stored:?} bytes");
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
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
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

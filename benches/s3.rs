//! ferry against rclone, uploading the same file to the same local S3 server.
//!
//!   cargo bench --bench s3                      (1 GiB)
//!   FERRY_BENCH_MIB=256 cargo bench --bench s3
//!
//! Starts an S3 server (s3s + s3s-fs, the one the tests use) on 127.0.0.1 in this process,
//! then uploads a random file with `ferry trigger` (file source → s3 writer, 16 MiB parts,
//! 4 at a time) and with `rclone copyto` (same part size and concurrency), each under GNU
//! time, and prints wall time, MiB/s and peak RSS. Needs rclone (`apt-get install rclone`)
//! and GNU time; a missing tool is reported and its row skipped.

mod common;

use std::path::Path;
use std::process::Command;

use common::{measure, write_random};

use hyper_util::rt::{TokioExecutor, TokioIo};

const ACCESS_KEY: &str = "AKIAFERRYBENCHKEY";
const SECRET_KEY: &str = "ferry-bench-secret-key-0123456789";
const BUCKET: &str = "bench";

fn main() {
    let mib: u64 = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let work = tempfile::tempdir().expect("temp dir");
    let store = work.path().join("store");
    std::fs::create_dir_all(store.join(BUCKET)).expect("bucket directory");
    let input = work.path().join("input.bin");
    write_random(&input, mib << 20);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(serve(&store));
    let endpoint = format!("http://{addr}");
    println!(
        "S3 server (s3s-fs) at {endpoint}; {mib} MiB of random data; {} cores",
        num_cpus()
    );

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
writers = [{{ type = "s3", bucket = "{BUCKET}", key = "ferry.bin", endpoint = "{endpoint}", path_style = true, region = "us-east-1", access_key_id = "{ACCESS_KEY}", secret_access_key = "{SECRET_KEY}", part_size = "16MiB", concurrency = 4 }}]
"#
        ),
    )
    .expect("job file");

    let ferry = env!("CARGO_BIN_EXE_ferry");
    let config_arg = config.display().to_string();
    measure(
        "ferry",
        mib,
        work.path(),
        Command::new(ferry)
            .args(["trigger", "upload", "--config", &config_arg])
            .env("FERRY_LOG", "warn"),
    );

    let input_arg = input.display().to_string();
    let target = format!("bench:{BUCKET}/rclone.bin");
    let rclone_bin = std::env::var("FERRY_BENCH_RCLONE").unwrap_or_else(|_| "rclone".into());
    if let Ok(out) = Command::new(&rclone_bin).arg("version").output() {
        let version = String::from_utf8_lossy(&out.stdout);
        println!(
            "{}",
            version.lines().next().unwrap_or("rclone: unknown version")
        );
    }
    let mut rclone = Command::new(&rclone_bin);
    rclone
        .args([
            "copyto",
            &input_arg,
            &target,
            "--s3-chunk-size",
            "16M",
            "--s3-upload-concurrency",
            "4",
            "--s3-upload-cutoff",
            "16M",
        ])
        .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
        .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
        .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_BENCH_ENDPOINT", &endpoint)
        .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
        .env("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true");
    measure("rclone copyto", mib, work.path(), &mut rclone);

    for name in ["ferry.bin", "rclone.bin"] {
        let stored = std::fs::metadata(store.join(BUCKET).join(name)).map(|m| m.len());
        println!("  stored {name}: {stored:?} bytes");
    }
}

async fn serve(root: &Path) -> std::net::SocketAddr {
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    addr
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

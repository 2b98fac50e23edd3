//! ferry against the AWS CLI and rclone, uploading the same file to the same local S3 server.
//!
//!   cargo bench --bench s3                      (1 GiB)
//!   FERRY_BENCH_MIB=256 cargo bench --bench s3
//!   FERRY_BENCH_S3_SETTINGS='part_size = "8MiB", concurrency = 8' cargo bench --bench s3
//!   FERRY_BENCH_S3_SERVER=~/.cargo/bin/s3s-fs cargo bench --bench s3
//!        (the s3s-fs binary as the server: `cargo install s3s-fs --version 0.14.1
//!         --features binary --locked`)
//!
//! Starts an S3 server (s3s + s3s-fs, the one the tests use, storing under /dev/shm where
//! there is one, so its disk's writeback does not decide the clients' times) on 127.0.0.1,
//! in this process or as the `s3s-fs` binary `FERRY_BENCH_S3_SERVER` names, then uploads a random file three times each, alternating, with
//! `ferry trigger` (file source → s3 writer, its defaults: 16 MiB parts, 4 at a time),
//! `aws s3 cp` (its defaults: 8 MiB parts, 10 at a time; `pip install awscli`) and
//! `rclone copyto` (16 MiB parts, 4 at a time), each under GNU time, and prints wall time,
//! MiB/s, CPU seconds and peak RSS. A missing tool is reported and its rows skipped.

mod common;
#[path = "common/s3s.rs"]
mod s3s_binary;

use std::path::Path;
use std::process::Command;

use common::{measure, write_random};
use s3s_binary::{ACCESS_KEY, SECRET_KEY, process_cpu, start_binary};

use hyper_util::rt::{TokioExecutor, TokioIo};

const BUCKET: &str = "bench";

fn main() {
    let mib: u64 = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let work = tempfile::tempdir().expect("temp dir");
    let served = match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("server dir");
    let store = served.path().join("store");
    std::fs::create_dir_all(store.join(BUCKET)).expect("bucket directory");
    let input = work.path().join("input.bin");
    write_random(&input, mib << 20);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let binary = std::env::var_os("FERRY_BENCH_S3_SERVER");
    let (addr, mut server) = match &binary {
        Some(binary) => {
            let (addr, child) = start_binary(Path::new(binary), &store);
            (addr, Some(child))
        }
        None => (runtime.block_on(serve(&store)), None),
    };
    let endpoint = format!("http://{addr}");
    println!(
        "S3 server (s3s-fs, {}) at {endpoint}; {mib} MiB of random data; {} cores",
        match &binary {
            Some(binary) => format!("the binary {}", binary.to_string_lossy()),
            None => "in this process".to_owned(),
        },
        num_cpus()
    );
    let server_pid = server.as_ref().map(std::process::Child::id);

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
writers = [{{ type = "s3", bucket = "{BUCKET}", key = "ferry.bin", endpoint = "{endpoint}", path_style = true, region = "us-east-1", access_key_id = "{ACCESS_KEY}", secret_access_key = "{SECRET_KEY}"{extra} }}]
"#,
            extra = std::env::var("FERRY_BENCH_S3_SETTINGS")
                .map(|extra| format!(", {extra}"))
                .unwrap_or_default(),
        ),
    )
    .expect("job file");

    let ferry = env!("CARGO_BIN_EXE_ferry");
    let config_arg = config.display().to_string();
    let input_arg = input.display().to_string();
    let rclone_bin = std::env::var("FERRY_BENCH_RCLONE").unwrap_or_else(|_| "rclone".into());
    let has = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                text.lines().next().unwrap_or_default().to_owned()
            })
    };
    let aws = has("aws", "--version");
    let rclone = has(&rclone_bin, "version");
    println!(
        "{}",
        aws.as_deref()
            .unwrap_or("aws: not found (pip install awscli)")
    );
    println!("{}", rclone.as_deref().unwrap_or("rclone: not found"));
    // The server runs in this process: its CPU time per upload says whether it is the
    // bottleneck (the same for every client, near one core for the whole upload).
    let server_cpu = || match server_pid {
        Some(pid) => process_cpu(pid),
        None => {
            let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
                .expect("getrusage");
            let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            seconds(usage.user_time()) + seconds(usage.system_time())
        }
    };
    let measure = |name: &str, command: &mut Command| {
        let before = server_cpu();
        measure(name, mib, work.path(), command);
        println!("  the server used {:.2} s CPU", server_cpu() - before);
    };
    for _ in 0..3 {
        measure(
            "ferry",
            Command::new(ferry)
                .args(["trigger", "upload", "--config", &config_arg])
                .env("FERRY_LOG", "warn"),
        );
        if aws.is_some() {
            measure(
                "aws s3 cp",
                Command::new("aws")
                    .args([
                        "s3",
                        "cp",
                        "--only-show-errors",
                        "--endpoint-url",
                        &endpoint,
                    ])
                    .arg(&input_arg)
                    .arg(format!("s3://{BUCKET}/aws.bin"))
                    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_CONFIG_FILE", "/dev/null")
                    .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            );
        }
        if rclone.is_some() {
            let target = format!("bench:{BUCKET}/rclone.bin");
            let mut copy = Command::new(&rclone_bin);
            copy.args([
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
            measure("rclone copyto", &mut copy);
        }
    }

    for name in ["ferry.bin", "aws.bin", "rclone.bin"] {
        let stored = std::fs::metadata(store.join(BUCKET).join(name)).map(|m| m.len());
        println!("  stored {name}: {stored:?} bytes");
    }
    if let Some(server) = &mut server {
        let _ = server.kill();
        let _ = server.wait();
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

//! One read fanned out to FTP + S3 + local, against each of the three alone.
//!
//!   FERRY_BENCH_S3_SERVER=~/.cargo/bin/s3s-fs FERRY_BENCH_VSFTPD=/usr/sbin/vsftpd \
//!     cargo bench --bench fanout               (1 GiB; FERRY_BENCH_MIB for another size)
//!
//! Starts vsftpd and the s3s-fs binary on 127.0.0.1, both storing under /dev/shm (so their
//! disk writeback does not decide the times), then runs `ferry trigger` three rounds of:
//! the file to FTP alone, to S3 alone, to a local file alone, and to all three at once. It
//! prints each run's wall time, CPU and peak RSS (and the S3 server's CPU), and the
//! fan-out's median over the slowest single writer's median (issue 16's goal: at most 1.3).

mod common;
#[path = "common/s3s.rs"]
mod s3s_binary;
#[path = "common/vsftpd.rs"]
mod vsftpd;

use std::path::Path;
use std::process::Command;

use common::{measure, write_random};
use s3s_binary::{ACCESS_KEY, SECRET_KEY, process_cpu, start_binary};
use vsftpd::start_vsftpd;

fn main() {
    let mib: u64 = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let (Some(s3s), Some(vsftpd_bin)) = (
        std::env::var_os("FERRY_BENCH_S3_SERVER"),
        std::env::var_os("FERRY_BENCH_VSFTPD").or_else(|| {
            Path::new("/usr/sbin/vsftpd")
                .exists()
                .then(|| "/usr/sbin/vsftpd".into())
        }),
    ) else {
        println!(
            "fan-out bench not run: set FERRY_BENCH_S3_SERVER (s3s-fs) and FERRY_BENCH_VSFTPD"
        );
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let shm = |what| match Path::new("/dev/shm").is_dir() {
        true => tempfile::Builder::new().prefix(what).tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    };
    let s3_dir = shm("s3").expect("s3 dir");
    let ftp_dir = shm("ftp").expect("ftp dir");
    let store = s3_dir.path().join("store");
    std::fs::create_dir_all(store.join("bench")).expect("bucket");
    write_random(&work.path().join("input.bin"), mib << 20);

    let (addr, mut s3_server) = start_binary(Path::new(&s3s), &store);
    let (port, mut ftp_server, uploads) =
        start_vsftpd(&vsftpd_bin.to_string_lossy(), ftp_dir.path());
    println!(
        "s3s-fs at {addr}, vsftpd at 127.0.0.1:{port}; {mib} MiB of random data; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let ftp = format!(
        "{{ type = \"ftp\", host = \"127.0.0.1\", port = {port}, username = \"anonymous\", password = \"bench\", allow_plaintext_password = true, path = \"{}/ferry.bin\" }}",
        uploads.display()
    );
    let s3 = format!(
        "{{ type = \"s3\", bucket = \"bench\", key = \"ferry.bin\", endpoint = \"http://{addr}\", path_style = true, region = \"us-east-1\", access_key_id = \"{ACCESS_KEY}\", secret_access_key = \"{SECRET_KEY}\" }}"
    );
    let local = "{ type = \"local\", path = \"out/ferry.bin\" }".to_owned();
    let jobs = [
        ("ftp", vec![ftp.clone()]),
        ("s3", vec![s3.clone()]),
        ("local", vec![local.clone()]),
        ("fan-out", vec![ftp, s3, local]),
    ];
    let mut text = "[daemon]\nstate = \"sqlite://state.db\"\n".to_owned();
    for (name, writers) in &jobs {
        text += &format!(
            "\n[[jobs]]\nname = \"{name}\"\nschedule = \"@yearly\"\nsource = {{ type = \"file\", path = \"input.bin\" }}\nwriters = [{}]\n",
            writers.join(", ")
        );
    }
    let config = work.path().join("jobs.toml");
    std::fs::write(&config, text).expect("job file");
    let config_arg = config.display().to_string();

    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
    for _ in 0..3 {
        for (i, (name, _)) in jobs.iter().enumerate() {
            let server_before = process_cpu(s3_server.id());
            let wall = measure(
                &format!("ferry → {name}"),
                mib,
                work.path(),
                Command::new(env!("CARGO_BIN_EXE_ferry"))
                    .args(["trigger", name, "--config", &config_arg])
                    .env("FERRY_LOG", "warn"),
            );
            walls[i].extend(wall);
            if *name == "s3" || *name == "fan-out" {
                let used = process_cpu(s3_server.id()) - server_before;
                println!("  s3s-fs used {used:.2} s CPU");
            }
        }
    }
    let median = |times: &[f64]| {
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let singles: Vec<f64> = walls[..3].iter().map(|w| median(w)).collect();
    let slowest = singles.iter().copied().fold(0.0, f64::max);
    let fanned = median(&walls[3]);
    println!(
        "medians: ftp {:.2} s, s3 {:.2} s, local {:.2} s, fan-out {fanned:.2} s = {:.2}× the slowest alone",
        singles[0],
        singles[1],
        singles[2],
        fanned / slowest
    );
    for server in [&mut s3_server, &mut ftp_server] {
        let _ = server.kill();
        let _ = server.wait();
    }
}

//! ferry against OpenSSH's `scp` and `sftp`, uploading the same file to the same sshd.
//!
//!   sudo cargo bench --bench sftp                  (1 GiB)
//!   sudo FERRY_BENCH_MIB=256 cargo bench --bench sftp
//!
//! Starts OpenSSH's sshd (`FERRY_BENCH_SSHD`, `/usr/sbin/sshd` by default; it runs as root,
//! and every client logs in as root with a generated ed25519 key) on 127.0.0.1, storing in
//! /dev/shm so the disk is not what is measured, then uploads a random file with
//! `ferry trigger` (file source → sftp writer: temporary name, fsync, size check,
//! posix-rename), `scp` and `sftp -b`, three times each, alternating, under GNU time: wall
//! time, MiB/s, CPU seconds and peak RSS. Every tool runs with its default cipher and
//! settings (ferry's is AES-256-GCM, OpenSSH's ChaCha20-Poly1305), plus `scp` with
//! AES-256-GCM, and checks the host key against the same known_hosts file.

mod common;

use std::path::Path;
use std::process::Command;

use common::{measure, write_random};

fn main() {
    let mib: u64 = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let sshd = std::env::var("FERRY_BENCH_SSHD").unwrap_or_else(|_| "/usr/sbin/sshd".into());
    if !Path::new(&sshd).exists() {
        println!("not run: {sshd} is missing (apt-get install openssh-server)");
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("not run: sshd must run as root here");
        return;
    }
    let work = tempfile::tempdir().expect("temp dir");
    let input = work.path().join("input.bin");
    write_random(&input, mib << 20);
    let served = match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("server dir");

    keygen(&work.path().join("host_ed25519"));
    keygen(&work.path().join("id_ed25519"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let path = |name: &str| work.path().join(name).display().to_string();
    std::fs::copy(
        work.path().join("id_ed25519.pub"),
        work.path().join("authorized_keys"),
    )
    .expect("authorized_keys");
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    std::fs::write(
        work.path().join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nSubsystem sftp internal-sftp\n",
            path("host_ed25519"),
            path("sshd.pid"),
            path("authorized_keys"),
        ),
    )
    .expect("sshd_config");
    let mut server = Command::new(&sshd)
        .args(["-D", "-e", "-f", &path("sshd_config")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sshd");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let host_key = std::fs::read_to_string(work.path().join("host_ed25519.pub")).expect("key");
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    std::fs::write(
        work.path().join("known_hosts"),
        format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
    )
    .expect("known_hosts");
    let dir = served.path().display().to_string();
    std::fs::write(
        work.path().join("jobs.toml"),
        format!(
            r#"[daemon]
state = "sqlite://state.db"

[[jobs]]
name = "upload"
schedule = "@yearly"
source = {{ type = "file", path = "input.bin" }}
writers = [{{ type = "sftp", host = "127.0.0.1", port = {port}, username = "root", private_key_file = "id_ed25519", known_hosts = "known_hosts", path = "{dir}/ferry.bin" }}]
"#
        ),
    )
    .expect("job file");
    std::fs::write(
        work.path().join("batch"),
        format!("put input.bin {dir}/sftp.bin\n"),
    )
    .expect("batch");
    println!("sshd on 127.0.0.1:{port}, storing under {dir}; {mib} MiB of random data");

    let ssh_options = [
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", path("known_hosts")),
        "-o".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "-o".to_owned(),
        "BatchMode=yes".to_owned(),
        "-i".to_owned(),
        path("id_ed25519"),
        "-P".to_owned(),
        port.to_string(),
    ];
    for _ in 0..3 {
        measure(
            "ferry",
            mib,
            work.path(),
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["trigger", "upload", "--config", &path("jobs.toml")])
                .env("FERRY_LOG", "warn"),
        );
        measure(
            "scp",
            mib,
            work.path(),
            Command::new("scp")
                .args(["-q"])
                .args(&ssh_options)
                .arg("input.bin")
                .arg(format!("root@127.0.0.1:{dir}/scp.bin")),
        );
        // ferry prefers AES-GCM, OpenSSH ChaCha20-Poly1305: scp with ferry's cipher too.
        measure(
            "scp aes-gcm",
            mib,
            work.path(),
            Command::new("scp")
                .args(["-q", "-c", "aes256-gcm@openssh.com"])
                .args(&ssh_options)
                .arg("input.bin")
                .arg(format!("root@127.0.0.1:{dir}/scp-gcm.bin")),
        );
        measure(
            "sftp -b",
            mib,
            work.path(),
            Command::new("sftp")
                .args(["-q", "-b", "batch"])
                .args(&ssh_options)
                .arg("root@127.0.0.1"),
        );
    }
    for name in ["ferry.bin", "scp.bin", "scp-gcm.bin", "sftp.bin"] {
        let stored = std::fs::metadata(served.path().join(name)).map(|m| m.len());
        println!("  stored {name}: {stored:?} bytes");
    }
    let _ = server.kill();
    let _ = server.wait();
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success(), "ssh-keygen");
}

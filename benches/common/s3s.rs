//! The s3s-fs binary as the benches' S3 server (`cargo install s3s-fs --version 0.14.1
//! --features binary --locked`), and a process's CPU time.

use std::path::Path;
use std::process::Command;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "AKIAFERRYBENCHKEY";
/// Its secret key.
pub const SECRET_KEY: &str = "ferry-bench-secret-key-0123456789";

/// Starts the `s3s-fs` binary on a free port of 127.0.0.1, serving `root`; returns once it
/// accepts connections.
pub fn start_binary(binary: &Path, root: &Path) -> (std::net::SocketAddr, std::process::Child) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the s3s-fs binary");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return (addr, child);
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the s3s-fs binary did not listen on {addr}");
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
pub fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line; what follows the name starts at
    // field 3, so they are its 11th and 12th (from 0).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second.max(1.0)
}

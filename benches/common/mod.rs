//! What the protocol benchmarks share: a random input file and a timed command row.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

/// Runs `command` in `dir` under GNU time and prints wall time, MiB/s for `mib` MiB, CPU
/// seconds (user + system) and peak RSS, or why it did not run; the wall time, if it ran.
pub fn measure(name: &str, mib: u64, dir: &Path, command: &mut Command) -> Option<f64> {
    let timing = dir.join("time.out");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%e %M %U %S")
        .arg("-o")
        .arg(&timing)
        .arg(command.get_program())
        .args(command.get_args())
        .current_dir(dir);
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        }
    }
    match timed.output() {
        Ok(output) if output.status.success() => {
            let text = std::fs::read_to_string(&timing).unwrap_or_default();
            let fields: Vec<f64> = text
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
            let (secs, rss) = (field(0), field(1));
            println!(
                "{name:<14} {secs:>7.2} s {:>9.1} MiB/s {:>6.2} s CPU {:>8.1} MiB peak RSS",
                mib as f64 / secs.max(0.001),
                field(2) + field(3),
                rss / 1024.0
            );
            Some(secs)
        }
        Ok(output) => {
            println!(
                "{name:<14} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            None
        }
        Err(err) => {
            println!("{name:<14} not run: {err}");
            None
        }
    }
}

/// Writes `len` bytes of pseudo-random data (nothing compresses) to `path`, 1 MiB at a time.
pub fn write_random(path: &Path, len: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create input"));
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).expect("write input");
        left -= n as u64;
    }
    file.flush().expect("flush input");
}

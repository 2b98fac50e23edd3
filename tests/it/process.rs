//! `ferry run` as a process: signals, exit codes, and what it tells systemd.

use std::io::Read as _;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::Workspace;

/// Reads notifications sent to a NOTIFY_SOCKET of ours, the way systemd would.
struct NotifySocket {
    socket: UnixDatagram,
    messages: Vec<String>,
}

impl NotifySocket {
    fn bind(ws: &Workspace) -> (NotifySocket, String) {
        let path = ws.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind a datagram socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let shown = path.display().to_string();
        (
            NotifySocket {
                socket,
                messages: Vec::new(),
            },
            shown,
        )
    }

    /// Waits until a message containing `needle` arrives (failing after `within`).
    fn wait_for(&mut self, needle: &str, within: Duration) {
        self.wait_for_nth(needle, 1, within);
    }

    /// Waits until `n` messages containing `needle` arrived (failing after `within`).
    fn wait_for_nth(&mut self, needle: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            if self.messages.iter().filter(|m| m.contains(needle)).count() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from ferry; got {:?}",
                self.messages
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.messages
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

/// `ferry run` on `config`, logging JSON at INFO to a pipe.
fn ferry_run(config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(["run", "--config", &config.display().to_string()])
        .args(["--log-format", "json"])
        .env("FERRY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Everything an exited child wrote to its piped standard error.
fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    stderr
}

fn signal(child: &Child, signal: Signal) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    kill(Pid::from_raw(pid), signal).expect("send a signal");
}

#[test]
fn sighup_reloads_sigterm_exits_0_and_systemd_hears_each_step() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "tick"
schedule = "* * * * * *"
source = { type = "inline", data = "tick" }
writers = [{ type = "local", path = "out/{scheduled:%H%M%S}" }]
"#,
    );
    let (mut notify, socket) = NotifySocket::bind(&ws);
    let mut child = ferry_run(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "400000")
        .spawn()
        .expect("start ferry run");

    notify.wait_for("READY=1", Duration::from_secs(10));
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    // A delivery happens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ws.files().iter().filter(|f| f.starts_with("out/")).count() == 0 {
        assert!(
            Instant::now() < deadline,
            "no delivery; files {:?}",
            ws.files()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    signal(&child, Signal::SIGHUP);
    notify.wait_for("RELOADING=1", Duration::from_secs(5));
    // READY=1 again once the reload is applied.
    notify.wait_for_nth("READY=1", 2, Duration::from_secs(5));

    signal(&child, Signal::SIGTERM);
    let status = crate::support::wait_with_deadline(&mut child, Duration::from_secs(15));
    notify.wait_for("STOPPING=1", Duration::from_secs(2));
    let stderr = stderr_of(&mut child);
    assert_eq!(
        status.code(),
        Some(0),
        "ferry run exit status; stderr:\n{stderr}"
    );
    assert!(stderr.contains("\"message\":\"Reloaded.\""), "{stderr}");
    assert!(stderr.contains("\"message\":\"Stopped.\""), "{stderr}");
    // Every line of a run carries its job and run id (and there was at least one run).
    let run_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Run succeeded."))
        .collect();
    assert!(!run_lines.is_empty(), "no run logged:\n{stderr}");
    for line in run_lines {
        assert!(
            line.contains("\"job\":\"tick\"") && line.contains("\"run_id\":"),
            "{line}"
        );
    }
}

#[test]
fn ferry_run_on_a_bad_file_exits_2_with_positions() {
    let ws = Workspace::new();
    let config = ws.job_file("[[jobs]]\nname = \"x\"\nschedule = \"@sometimes\"\n");
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config", &config.display().to_string()])
        .output()
        .expect("run ferry");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:1:1: jobs[0]: missing field", config.display())),
        "{stderr}"
    );
}

/// Suspended (SIGSTOP) across several slots of a job due every second: on SIGCONT the
/// passed slots are all skipped, the latest one runs, and a WARN line counts the rest. (A
/// real pause of a real process: the one test here that needs seconds of wall time.)
#[test]
fn a_suspended_daemon_skips_the_passed_slots_and_runs_the_latest() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "tick"
schedule = "* * * * * *"
# A run frozen mid-way by SIGSTOP must not make the latest slot a skipped overlap.
overlap = "allow"
source = { type = "inline", data = "tick" }
writers = [{ type = "local", path = "out/{scheduled:%H%M%S}" }]
"#,
    );
    let mut child = ferry_run(&config).spawn().expect("start ferry run");
    let ran = |ws: &Workspace| -> Vec<String> {
        ws.files()
            .into_iter()
            .filter(|f| f.starts_with("out/"))
            .collect()
    };
    let name = |t: chrono::DateTime<chrono::Utc>| format!("out/{}", t.format("%H%M%S"));
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("a first delivery", &|| !ran(&ws).is_empty());
    signal(&child, Signal::SIGSTOP);
    let stopped = chrono::Utc::now();
    // Frozen across four slots or more.
    let resume_at = stopped + chrono::Duration::milliseconds(4_500);
    wait_for("the pause", &|| chrono::Utc::now() >= resume_at);
    let resumed = chrono::Utc::now();
    signal(&child, Signal::SIGCONT);
    let schedule = ferry::schedule::Schedule::parse("* * * * * *", chrono_tz::UTC).expect("cron");
    let latest = schedule
        .latest_at_or_before(resumed)
        .expect("slot")
        .with_timezone(&chrono::Utc);
    wait_for("the latest slot's run", &|| {
        ran(&ws).contains(&name(latest))
    });
    signal(&child, Signal::SIGTERM);
    crate::support::wait_with_deadline(&mut child, Duration::from_secs(15));
    let stderr = stderr_of(&mut child);
    // Every slot strictly inside the pause (a second of margin after SIGSTOP) never ran;
    // the latest one before SIGCONT did.
    let files = ran(&ws);
    let mut skipped = 0;
    let mut slot = schedule
        .next_after(stopped + chrono::Duration::seconds(1))
        .map(|t| t.with_timezone(&chrono::Utc));
    while let Some(at) = slot.filter(|at| *at < latest) {
        assert!(
            !files.contains(&name(at)),
            "passed slot {at} ran: {files:?}\n{stderr}"
        );
        skipped += 1;
        slot = schedule
            .next_after(at)
            .map(|t| t.with_timezone(&chrono::Utc));
    }
    assert!(skipped >= 2, "the pause spanned slots: {skipped}");
    assert!(
        stderr.contains("the slots that passed are skipped and the latest runs"),
        "{stderr}"
    );
}

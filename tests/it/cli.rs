//! The `ferry` binary as an operator runs it: exit codes, messages, no secrets.

use crate::support::{Workspace, ferry, sha256_hex, show};

const JOBS: &str = r#"
[notifiers.ops]
type = "log"

[[jobs]]
name = "greet"
schedule = "0 30 9 * * Mon-Fri"
timezone = "Europe/Berlin"
source = { type = "inline", data = "hi\n" }
writers = [{ type = "local", path = "out/{job}.txt" }]
on_success = ["ops"]

[[jobs]]
name = "broken"
schedule = "@daily"
source = { type = "command", command = ["false"] }
writers = [{ type = "local", path = "out/broken.txt" }]
retry = { max_attempts = 2, initial_interval = "10ms" }
on_failure = ["ops"]
"#;

#[test]
fn validate_accepts_a_good_file() {
    let ws = Workspace::new();
    let config = ws.job_file(JOBS);
    let out = ferry(&["validate", "--config", &config.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK, 2 jobs, 1 notifier"), "{}", show(&out));
}

#[test]
fn validate_reports_every_problem_with_its_position_and_exits_2() {
    let ws = Workspace::new();
    let config = ws.job_file(
        "[[jobs]]\nname = \"a\"\nschedule = \"nope\"\nsource = { type = \"inline\", data = \"x\" }\nwriters = []\n",
    );
    let shown = config.display().to_string();
    let out = ferry(&["validate", "--config", &shown]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", show(&out));
    assert!(
        lines[0].starts_with(&format!("{shown}:3:12: jobs[0].schedule: ")),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("{shown}:5:11: jobs[0].writers: ")),
        "{}",
        lines[1]
    );
}

#[test]
fn a_missing_job_file_exits_2() {
    let out = ferry(&["validate", "--config", "/nonexistent/ferry/jobs.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the job file"));
}

#[test]
fn bad_usage_exits_2() {
    let out = ferry(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

#[test]
fn list_shows_schedules_and_next_runs_in_the_jobs_time_zone() {
    let ws = Workspace::new();
    let config = ws.job_file(JOBS);
    let out = ferry(&["list", "--config", &config.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let greet = stdout
        .lines()
        .find(|l| l.starts_with("greet "))
        .unwrap_or_else(|| panic!("no greet row:\n{stdout}"));
    assert!(greet.contains("0 30 9 * * Mon-Fri"), "{greet}");
    assert!(greet.contains("Europe/Berlin"), "{greet}");
    assert_eq!(
        greet.matches(" 09:30:00").count(),
        3,
        "three next runs at 09:30 Berlin: {greet}"
    );
    assert!(greet.contains("inline → local"), "{greet}");
}

#[test]
fn trigger_runs_a_job_and_prints_its_receipt() {
    let ws = Workspace::new();
    let config = ws.job_file(JOBS);
    let out = ferry(&[
        "trigger",
        "greet",
        "--config",
        &config.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let target = ws.path().join("out/greet.txt");
    assert_eq!(std::fs::read(&target).expect("delivered"), b"hi\n");
    assert!(stdout.contains(&target.display().to_string()), "{stdout}");
    assert!(stdout.contains(&sha256_hex(b"hi\n")), "{stdout}");
    assert!(stdout.contains("greet succeeded"), "{stdout}");
}

#[test]
fn trigger_json_prints_the_report() {
    let ws = Workspace::new();
    let config = ws.job_file(JOBS);
    let out = ferry(&[
        "trigger",
        "greet",
        "--json",
        "--config",
        &config.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["attempts"], 1);
    assert_eq!(report["deliveries"][0]["bytes"], 3);
}

#[test]
fn trigger_of_a_failing_job_exits_1_after_its_retries() {
    let ws = Workspace::new();
    let config = ws.job_file(JOBS);
    let out = ferry(&[
        "trigger",
        "broken",
        "--config",
        &config.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ferry: broken failed (command; all 2 attempts failed)"),
        "{stderr}"
    );
    assert!(!ws.path().join("out/broken.txt").exists());
}

#[test]
fn trigger_of_an_unknown_job_exits_2() {
    let ws = Workspace::new();
    let config = ws.job_file(JOBS);
    let out = ferry(&["trigger", "nope", "--config", &config.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job named \"nope\""));
}

#[tokio::test]
async fn secrets_never_reach_logs_or_errors() {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    let addr = crate::support::serve(
        Router::new().route("/x", get(|| async { (StatusCode::FORBIDDEN, "denied") })),
    )
    .await;
    let ws = Workspace::new();
    std::fs::write(ws.path().join("token"), "tok-FILE-SECRET-123\n").expect("token file");
    let config = ws.job_file(&format!(
        r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = {{ type = "url", url = "http://{addr}/x", bearer_token_file = "token" }}
writers = [{{ type = "local", path = "out/a" }}]

[[jobs]]
name = "b"
schedule = "@hourly"
source = {{ type = "url", url = "http://{addr}/x", username = "u", password_env = "FERRY_TEST_CLI_PASSWORD" }}
writers = [{{ type = "local", path = "out/b" }}]
"#
    ));
    for job in ["a", "b"] {
        let out = tokio::task::spawn_blocking({
            let config = config.display().to_string();
            move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                    .args(["trigger", job, "--config", &config])
                    .env("FERRY_LOG", "trace")
                    .env("FERRY_TEST_CLI_PASSWORD", "env-SECRET-456")
                    .output()
                    .expect("run ferry")
            }
        })
        .await
        .expect("join");
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let all = show(&out);
        assert!(all.contains("403"), "the failure is reported: {all}");
        for secret in ["FILE-SECRET", "env-SECRET", "dTplbnYtU0VDUkVULTQ1Ng"] {
            assert!(!all.contains(secret), "{secret} leaked:\n{all}");
        }
    }
}

/// Every job file under `examples/` is valid, and so is the shipped one.
#[test]
fn the_shipped_and_example_job_files_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("config/jobs.toml")];
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let out = ferry(&["validate", "--config", &file.display().to_string()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            show(&out)
        );
    }
}

#[test]
fn list_shows_offsets_so_a_repeated_hour_is_told_apart() {
    let ws = Workspace::new();
    let config = ws.config(
        r#"
[[jobs]]
name = "half-past"
schedule = "0 30 * * * *"
timezone = "Europe/Berlin"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/x" }]
"#,
    );
    let now = chrono::DateTime::parse_from_rfc3339("2025-10-26T00:00:00Z")
        .expect("instant")
        .with_timezone(&chrono::Utc);
    let table = ferry::cli::list(&config, now);
    assert!(
        table.contains(
            "2025-10-26 02:30:00+02:00, 2025-10-26 02:30:00+01:00, 2025-10-26 03:30:00+01:00"
        ),
        "{table}"
    );
}

const HOURLY: &str = r#"
[[jobs]]
name = "hourly"
schedule = "0 0 * * * *"
source = { type = "inline", data = "rows\n" }
writers = [{ type = "local", path = "out/{scheduled:%Y%m%d%H}-{run_id}.csv" }]
"#;

#[test]
fn manual_runs_never_collide_and_history_says_they_were_manual() {
    let ws = Workspace::new();
    let config = ws.job_file(HOURLY).display().to_string();
    for _ in 0..2 {
        let out = ferry(&["trigger", "hourly", "--config", &config]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    }
    let history = ferry(&["history", "--json", "--config", &config]);
    let runs: serde_json::Value = serde_json::from_slice(&history.stdout).expect("JSON");
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(
        runs.iter()
            .all(|r| r["manual"] == true && r["state"] == "succeeded")
    );
    let table =
        String::from_utf8_lossy(&ferry(&["history", "--config", &config]).stdout).into_owned();
    assert!(
        table.lines().next().is_some_and(|h| h.contains(" BY ")),
        "{table}"
    );
    assert_eq!(table.matches(" manual ").count(), 2, "{table}");
    assert_eq!(
        ws.files().iter().filter(|f| f.starts_with("out/")).count(),
        2
    );
}

#[test]
fn trigger_slot_reruns_a_past_slot_and_refuses_a_time_that_is_not_one() {
    let ws = Workspace::new();
    let config = ws.job_file(HOURLY).display().to_string();
    for _ in 0..2 {
        let out = ferry(&[
            "trigger",
            "hourly",
            "--slot",
            "2026-11-20T05:00:00Z",
            "--config",
            &config,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    }
    let files: Vec<String> = ws
        .files()
        .into_iter()
        .filter(|f| f.starts_with("out/2026112005-"))
        .collect();
    assert_eq!(
        files.len(),
        2,
        "both re-runs rendered for the slot: {:?}",
        ws.files()
    );
    let odd = ferry(&[
        "trigger",
        "hourly",
        "--slot",
        "2026-11-20 05:30:00",
        "--config",
        &config,
    ]);
    assert_eq!(odd.status.code(), Some(2), "{}", show(&odd));
    let stderr = String::from_utf8_lossy(&odd.stderr);
    assert!(
        stderr.contains("not a slot")
            && stderr.contains("2026-11-20T05:00:00+00:00")
            && stderr.contains("2026-11-20T06:00:00+00:00"),
        "{stderr}"
    );
}

#[test]
fn backfill_runs_each_slot_once_and_skips_what_succeeded() {
    let ws = Workspace::new();
    let config = ws.job_file(HOURLY).display().to_string();
    let args = [
        "backfill",
        "hourly",
        "--from",
        "2026-11-20T00:00:00Z",
        "--to",
        "2026-11-21",
        "--concurrency",
        "4",
        "--config",
        &config,
    ];
    let out = ferry(&args);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(" succeeded: run ").count(), 24, "{stdout}");
    let mut hours: Vec<String> = ws
        .files()
        .into_iter()
        .filter_map(|f| f.strip_prefix("out/").map(|f| f[..10].to_owned()))
        .collect();
    hours.sort();
    let expected: Vec<String> = (0..24).map(|h| format!("20261120{h:02}")).collect();
    assert_eq!(hours, expected, "24 files named by their slots");
    // Again: every slot already succeeded.
    let again = ferry(&args);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout)
            .matches("skipped: already succeeded")
            .count(),
        24
    );
    assert_eq!(
        ws.files().iter().filter(|f| f.starts_with("out/")).count(),
        24
    );
    // --force runs them again.
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = ferry(&forced);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        ws.files().iter().filter(|f| f.starts_with("out/")).count(),
        48
    );
    // A range with no slot, and a backwards one.
    let empty = ferry(&[
        "backfill",
        "hourly",
        "--from",
        "2026-11-20T00:10:00Z",
        "--to",
        "2026-11-20T00:50:00Z",
        "--config",
        &config,
    ]);
    assert_eq!(empty.status.code(), Some(0), "{}", show(&empty));
    let backwards = ferry(&[
        "backfill",
        "hourly",
        "--from",
        "2026-11-21",
        "--to",
        "2026-11-20",
        "--config",
        &config,
    ]);
    assert_eq!(backwards.status.code(), Some(2), "{}", show(&backwards));
}

#[test]
fn bash_completes_commands_from_the_generated_script() {
    let script = ferry(&["completions", "bash"]);
    assert!(script.status.success(), "{}", show(&script));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ferry.bash");
    std::fs::write(&path, &script.stdout).expect("script");
    // bash itself loads the script and completes `ferry sta` and `ferry trigger --j`.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let output = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({line}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; _ferry ferry {} {}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                path.display(),
                words.len() - 1,
                line.len(),
                words[words.len() - 1],
                words[words.len() - 2],
            ))
            .output()
            .expect("bash");
        assert!(output.status.success(), "{}", show(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(complete("ferry sta").trim(), "status");
    assert!(complete("ferry trigger --j").contains("--json"));
    let unknown = ferry(&["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", show(&unknown));
}

#[test]
fn the_man_pages_render_and_name_every_command() {
    let page = ferry(&["man"]);
    assert!(page.status.success(), "{}", show(&page));
    let text = String::from_utf8_lossy(&page.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH ferry 1"),
        "{text}"
    );
    for command in ["run", "validate", "trigger", "status", "completions"] {
        assert!(
            text.contains(&format!("ferry\\-{command}(1)")),
            "{command} in {text}"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_str().expect("UTF-8");
    let written = ferry(&["man", "--dir", dir_arg]);
    assert!(written.status.success(), "{}", show(&written));
    for file in ["ferry.1", "ferry-run.1", "ferry-status.1", "ferry-man.1"] {
        let page = std::fs::read_to_string(dir.path().join(file)).expect(file);
        assert!(page.contains(".SH NAME"), "{file}: {page}");
    }
    // man(1) formats it, when installed.
    if let Ok(output) = std::process::Command::new("man")
        .args(["-l", &format!("{dir_arg}/ferry-status.1")])
        .env("MANWIDTH", "80")
        .output()
    {
        let shown = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", show(&output));
        assert!(shown.contains("--json"), "{shown}");
        assert!(shown.contains("ferry status [--json]"), "{shown}");
    }
    let unwritable = ferry(&["man", "--dir", "/nonexistent/dir"]);
    assert_eq!(unwritable.status.code(), Some(1), "{}", show(&unwritable));
    assert!(
        String::from_utf8_lossy(&unwritable.stderr)
            .contains("cannot write /nonexistent/dir/ferry.1")
    );
}

/// `ferry trigger JOB` on the shared job file, logging at info in `format`.
fn trigger_logging(ws: &Workspace, job: &str, format: &str) -> std::process::Output {
    let config = ws.job_file(JOBS).display().to_string();
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["trigger", job, "--config", &config, "--log-format", format])
        .env("FERRY_LOG", "info")
        .output()
        .expect("ferry")
}

#[test]
fn human_logs_written_to_a_file_carry_no_colour_codes() {
    let ws = Workspace::new();
    let out = trigger_logging(&ws, "broken", "human");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Run failed."), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}

#[test]
fn a_named_log_notifier_does_not_log_the_run_twice() {
    let ws = Workspace::new();
    let out = trigger_logging(&ws, "greet", "json");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("Run succeeded."))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("\"notifier\":\"ops\""), "{stderr}");
}

#[test]
fn every_line_of_a_run_names_its_attempt() {
    let ws = Workspace::new();
    let out = trigger_logging(&ws, "broken", "json");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run_lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line.to_string().contains("\"run_id\""))
        .collect();
    assert!(run_lines.len() >= 3, "{stderr}");
    for line in &run_lines {
        let attempt = line["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find_map(|span| span["attempt"].as_u64()));
        assert!(attempt.is_some(), "no attempt in {line}");
    }
    let failed = run_lines
        .iter()
        .find(|line| line["fields"]["message"] == "Run failed.")
        .expect("the run's last line");
    assert!(failed.to_string().contains("\"attempt\":2"), "{failed}");
}

#[test]
fn trigger_draws_progress_bars_on_a_terminal_only() {
    let ws = Workspace::new();
    crate::support::random_file(&ws.path().join("big.bin"), 8 * 1024 * 1024);
    let config = ws
        .job_file(
            r#"
[[jobs]]
name = "big"
schedule = "@daily"
rate_limit = "8MiB"
source = { type = "file", path = "big.bin" }
writers = [{ type = "local", path = "out/copy.bin" }]
"#,
        )
        .display()
        .to_string();
    // On a pipe: the receipt and nothing drawn.
    let piped = ferry(&["trigger", "big", "--config", &config]);
    assert_eq!(piped.status.code(), Some(0), "{}", show(&piped));
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("MiB/s"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    // On a terminal (util-linux's script gives the run a pseudo-terminal): a bar per writer.
    let Ok(on_tty) = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "FERRY_LOG=warn {} trigger big --config {config}",
            env!("CARGO_BIN_EXE_ferry")
        ))
        .arg("/dev/null")
        .output()
    else {
        eprintln!("progress on a terminal not checked: no `script`");
        return;
    };
    assert!(on_tty.status.success(), "{}", show(&on_tty));
    let screen = String::from_utf8_lossy(&on_tty.stdout);
    assert!(screen.contains("local out/copy.bin"), "{screen}");
    assert!(screen.contains("MiB/8.00 MiB"), "{screen}");
    assert!(screen.contains("MiB/s"), "{screen}");
}

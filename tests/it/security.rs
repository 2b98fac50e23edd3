//! Secrets stay where they belong, files are never written through links, and input from
//! outside is bounded (issue 13). Each test failed before its fix.

use std::process::Command;

use crate::support::{Workspace, show};

/// `ferry` with `args` and extra environment variables.
fn ferry_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .envs(env.iter().copied())
        .env("FERRY_LOG", "warn")
        .output()
        .expect("run the ferry binary")
}

/// A command source's program gets PATH, HOME, LANG, TZ and the job's own `env`, nothing
/// else: the daemon's environment holds every job's secrets.
#[test]
fn a_command_gets_a_clean_environment() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"[[jobs]]
name = "env"
schedule = "@daily"
source = { type = "command", command = ["env"], env = { JOB_SETTING = "mine" } }
writers = [{ type = "local", path = "out/env.txt" }]
"#,
    );
    let out = ferry_with_env(
        &["trigger", "env", "--config", &config.display().to_string()],
        &[
            ("AWS_SECRET_ACCESS_KEY", "leaked-aws-secret-1234"),
            ("FERRY_SMTP_PASSWORD", "leaked-smtp-password"),
            ("LANG", "C.UTF-8"),
            ("TZ", "Europe/Berlin"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let seen = std::fs::read_to_string(ws.path().join("out/env.txt")).expect("delivered");
    let names: Vec<&str> = seen
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    assert!(!seen.contains("leaked"), "{seen}");
    for name in ["PATH", "HOME", "LANG", "TZ", "JOB_SETTING"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let allowed = ["PATH", "HOME", "LANG", "TZ", "JOB_SETTING", "PWD", "SHLVL", "_"];
    for name in &names {
        assert!(allowed.contains(name), "{name} reached the program: {names:?}");
    }
    assert!(seen.contains("JOB_SETTING=mine"), "{seen}");
    assert!(seen.contains("TZ=Europe/Berlin"), "{seen}");
}

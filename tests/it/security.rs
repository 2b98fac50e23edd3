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
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "JOB_SETTING",
        "PWD",
        "SHLVL",
        "_",
    ];
    for name in &names {
        assert!(
            allowed.contains(name),
            "{name} reached the program: {names:?}"
        );
    }
    assert!(seen.contains("JOB_SETTING=mine"), "{seen}");
    assert!(seen.contains("TZ=Europe/Berlin"), "{seen}");
}

/// The local writer's context for run `run_id`, attempt 1.
fn local_writer(ws: &Workspace, path: &str) -> std::sync::Arc<dyn ferry::writer::Writer> {
    let config = ws.config(&format!(
        "[[jobs]]\nname = \"w\"\nschedule = \"@daily\"\nsource = {{ type = \"inline\", data = \"x\" }}\nwriters = [{{ type = \"local\", path = \"{path}\" }}]\n"
    ));
    let env = ferry::build_env::BuildEnv::new(config.base_dir.clone()).expect("env");
    config.jobs[0].writers[0]
        .settings()
        .build(&env)
        .expect("writer")
}

fn run_context(run_id: &str) -> ferry::RunContext {
    let mut ctx = ferry::RunContext::new("w", crate::support::slot());
    ctx.run_id = run_id.to_owned();
    ctx
}

/// A link planted under a temporary name (this run's, any attempt's) is replaced, never
/// written through, and the final name ends up a regular file.
#[tokio::test]
async fn a_link_planted_under_the_temporary_name_is_never_written_through() {
    use ferry::writer::Payload;
    let ws = Workspace::new();
    let victim = ws.path().join("victim.txt");
    std::fs::write(&victim, "precious").expect("victim");
    let out = ws.path().join("out");
    std::fs::create_dir_all(&out).expect("out/");
    for name in [
        "x.txt.partial-r1",
        "x.txt.partial-r1-1",
        "x.txt.partial-r1-2",
    ] {
        std::os::unix::fs::symlink(&victim, out.join(name)).expect("plant a link");
    }
    let writer = local_writer(&ws, "out/x.txt");
    let delivery = writer
        .write(
            &run_context("r1"),
            Payload::from_chunks(vec!["new data".into()]),
        )
        .await
        .expect("delivered");
    assert_eq!(delivery.bytes, 8);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );
    let meta = std::fs::symlink_metadata(out.join("x.txt")).expect("final name");
    assert!(meta.is_file(), "the final name is a regular file: {meta:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("x.txt")).expect("read"),
        "new data"
    );
}

/// A directory below the path's base that is a link (here to a directory outside it) is
/// refused: confinement holds for real paths, not only for the text of the path.
#[tokio::test]
async fn a_linked_directory_does_not_lead_a_delivery_out_of_its_base() {
    use ferry::writer::Payload;
    let ws = Workspace::new();
    let outside = tempfile::tempdir().expect("outside");
    std::fs::create_dir_all(ws.path().join("out")).expect("out/");
    std::os::unix::fs::symlink(outside.path(), ws.path().join("out/w")).expect("link");
    let writer = local_writer(&ws, "out/{job}/x.txt");
    let err = writer
        .write(
            &run_context("r2"),
            Payload::from_chunks(vec!["data".into()]),
        )
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_dir(outside.path()).expect("read").count(),
        0,
        "nothing was written outside"
    );
}

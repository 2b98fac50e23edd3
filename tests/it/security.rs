//! Secrets stay where they belong, files are never written through links, and input from
//! outside is bounded (issue 13). Each test failed before its fix.

use std::process::Command;

use futures::StreamExt as _;

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

/// `ferry validate` of the job file at `config`.
fn validate(config: &std::path::Path) -> std::process::Output {
    ferry_with_env(
        &["validate", "--config", &config.display().to_string()],
        &[],
    )
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

/// Standard base64 of `bytes` (how SMTP AUTH PLAIN and LOGIN carry credentials).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// With `FERRY_LOG=trace`, the FTP and SMTP clients' own logs (suppaftp's `PASS …`,
/// lettre's `AUTH PLAIN <base64>`) never show a password.
#[tokio::test]
async fn trace_logs_show_no_ftp_or_smtp_password() {
    use crate::support::ftp::{PASSWORD, USER};
    use crate::support::smtp::{SMTP_PASSWORD, SMTP_USER, SmtpServer, email_notifier};
    let ws = Workspace::new();
    let tls = crate::support::self_signed(ws.path());
    let smtp = SmtpServer::start(Some(&tls), true);
    let root = tempfile::tempdir().expect("ftp root");
    let (port, _ftp) = crate::support::ftp::serve(root.path()).await;
    ws.secret("ftp", PASSWORD);
    ws.secret("smtp", SMTP_PASSWORD);
    let text = email_notifier(
        "ops",
        smtp.port,
        &["ops@example.com"],
        &format!(
            "ca_file = \"server.pem\"\nusername = \"{SMTP_USER}\"\npassword_file = \"secrets/smtp\""
        ),
    ) + &format!(
        r#"
[[jobs]]
name = "up"
schedule = "@daily"
on_success = ["ops"]
source = {{ type = "inline", data = "payload" }}
writers = [{{ type = "ftp", host = "127.0.0.1", port = {port}, username = "{USER}", password_file = "secrets/ftp", allow_plaintext_password = true, path = "/up.txt" }}]
"#
    );
    let config = ws.job_file(&text).display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["trigger", "up", "--config", &config, "--log-format", "json"])
            .env("FERRY_LOG", "trace")
            .output()
            .expect("run ferry")
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(smtp.mails().len(), 1, "the mail went out");
    let all = show(&out);
    assert!(
        all.contains("TRACE") || all.contains("\"level\":\"TRACE\""),
        "tracing at trace: {all}"
    );
    let plain = format!("\0{SMTP_USER}\0{SMTP_PASSWORD}");
    for secret in [
        PASSWORD.to_owned(),
        SMTP_PASSWORD.to_owned(),
        base64(plain.as_bytes()),
        base64(SMTP_PASSWORD.as_bytes()),
    ] {
        assert!(!all.contains(&secret), "{secret} leaked:\n{all}");
    }
}

/// What a server saw: each request's path and headers.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap)>>>;

/// A server that records every request and answers `/go` with a redirect to `to`.
async fn redirecting(to: Option<String>) -> (std::net::SocketAddr, Seen) {
    use axum::extract::{OriginalUri, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    let seen: Seen = Default::default();
    let app = axum::Router::new()
        .fallback(
            |State((seen, to)): State<(Seen, Option<String>)>,
             OriginalUri(uri): OriginalUri,
             headers: HeaderMap| async move {
                seen.lock().expect("seen").push((uri.to_string(), headers));
                match (&to, uri.path()) {
                    (Some(to), "/go") => {
                        (StatusCode::FOUND, [(header::LOCATION, to.clone())], "").into_response()
                    }
                    _ => (StatusCode::OK, "landed").into_response(),
                }
            },
        )
        .with_state((std::sync::Arc::clone(&seen), to));
    (crate::support::serve(app).await, seen)
}

/// A redirect to another origin never carries credentials: a request with any (a bearer
/// token, custom headers) is not followed there and fails; one without is followed. No
/// request sends a Referer (it would carry the first URL's query token).
#[tokio::test]
async fn redirects_never_carry_credentials_to_another_origin() {
    let (elsewhere, elsewhere_seen) = redirecting(None).await;
    let (origin, origin_seen) = redirecting(Some(format!("http://{elsewhere}/land"))).await;
    let ws = Workspace::new();
    ws.secret("token", "bearer-SECRET-1");
    let text = format!(
        r#"[[jobs]]
name = "secret"
schedule = "@daily"
retry = {{ max_attempts = 1 }}
source = {{ type = "url", url = "http://{origin}/go?sig=query-SECRET-2", bearer_token_file = "secrets/token", headers = {{ X-Api-Key = "header-SECRET-3" }} }}
writers = [{{ type = "local", path = "out/secret" }}]

[[jobs]]
name = "open"
schedule = "@daily"
source = {{ type = "url", url = "http://{origin}/go?page=1" }}
writers = [{{ type = "local", path = "out/open" }}]
"#
    );
    let report = ws.job(&text, "secret").run(crate::support::slot()).await;
    assert_eq!(
        report.status,
        ferry::report::RunStatus::Failed,
        "{report:#?}"
    );
    let error = report.error.as_ref().expect("an error");
    assert!(
        error.chain.join(": ").contains("another origin"),
        "{error:#?}"
    );
    assert!(
        elsewhere_seen.lock().expect("seen").is_empty(),
        "nothing reached the other origin"
    );

    let report = ws.job(&text, "open").run(crate::support::slot()).await;
    assert_eq!(
        report.status,
        ferry::report::RunStatus::Succeeded,
        "{report:#?}"
    );
    let landed = elsewhere_seen.lock().expect("seen").clone();
    assert_eq!(landed.len(), 1, "the open request was followed");
    for (_, headers) in landed
        .iter()
        .chain(origin_seen.lock().expect("seen").iter())
    {
        assert!(headers.get("referer").is_none(), "{headers:?}");
    }
}

/// A secret typed into the wrong key (`url_env = "https://…/TOKEN"`) or with the wrong type
/// (`password = 987654321`) is reported at its key without being echoed.
#[test]
fn validate_never_echoes_a_misplaced_secret() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"[notifiers.hook]
type = "webhook"
url_env = "https://hooks.example.com/services/T0KEN-SECRET"

[notifiers.mail]
type = "email"
host = "smtp.example.com"
from = "ferry@example.com"
to = ["ops@example.com"]
username = "ferry"
password = 987654321
"#,
    );
    let out = validate(&config);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let all = show(&out);
    assert!(all.contains("notifiers.hook.url_env"), "{all}");
    assert!(
        all.contains("notifiers.mail") && all.contains("expected a string"),
        "{all}"
    );
    for secret in ["T0KEN-SECRET", "987654321"] {
        assert!(!all.contains(secret), "{secret} echoed:\n{all}");
    }
}

/// Absurd values are refused at their keys instead of panicking the daemon every second
/// (`jitter` overflowed the clock) or passing validation (a schedule that never fires);
/// a repeated name points at the first use.
#[test]
fn absurd_schedules_and_jitter_are_refused_at_their_keys() {
    let ws = Workspace::new();
    let job = |name: &str, schedule: &str, extra: &str| {
        format!(
            "[[jobs]]\nname = \"{name}\"\nschedule = \"{schedule}\"\nsource = {{ type = \"inline\", data = \"x\" }}\nwriters = [{{ type = \"local\", path = \"out/{name}\" }}]\n{extra}\n"
        )
    };
    let text = job("feb", "0 0 0 30 2 *", "")
        + &job("late", "@hourly", "jitter = \"1000000000y\"")
        + &job("twice", "@hourly", "")
        + &job("twice", "@hourly", "")
        + &job("twice", "@hourly", "");
    let config = ws.job_file(&text);
    let out = validate(&config);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":3:12: jobs[0].schedule: \"0 0 0 30 2 *\" never fires"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":12:10: jobs[1].jitter: must be at most 24h"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("is already used by jobs[2]").count(),
        2,
        "both repeats name the first use: {stderr}"
    );
}

/// Read-only commands never create a store: `history` of a job file that never ran says
/// so and leaves nothing behind; a store whose directory does not exist is an error
/// (exit 1), and the directory is not created.
#[test]
fn history_never_creates_a_store() {
    let ws = Workspace::new();
    let job = "[[jobs]]\nname = \"a\"\nschedule = \"@daily\"\nsource = { type = \"inline\", data = \"x\" }\nwriters = [{ type = \"local\", path = \"out/a\" }]\n";
    let config = ws.job_file(job);
    let out = ferry_with_env(&["history", "--config", &config.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no runs recorded"),
        "{}",
        show(&out)
    );
    let left: Vec<String> = crate::support::files_under(ws.path());
    assert_eq!(left, vec!["jobs.toml".to_owned()], "nothing created");

    let missing = ws.path().join("nonexistent/dir");
    let config = ws.job_file(&format!(
        "[daemon]\nstate = \"sqlite://{}/state.db\"\n\n{job}",
        missing.display()
    ));
    let out = ferry_with_env(&["history", "--config", &config.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(!missing.exists(), "the directory was not created");
}

/// A password sent without TLS needs `allow_plaintext_password = true`, for FTP as for
/// email, and is then accepted.
#[test]
fn a_plaintext_password_needs_an_explicit_opt_in() {
    let ws = Workspace::new();
    let text = |allow: &str| {
        format!(
            r#"[notifiers.relay]
type = "email"
host = "127.0.0.1"
security = "none"
username = "u"
password = "p"
from = "ferry@example.com"
to = ["ops@example.com"]
{allow}

[[jobs]]
name = "a"
schedule = "@daily"
on_failure = ["relay"]
source = {{ type = "inline", data = "x" }}
writers = [{{ type = "ftp", host = "ftp.example.com", username = "u", password = "p", path = "/a"{} }}]
"#,
            if allow.is_empty() {
                ""
            } else {
                ", allow_plaintext_password = true"
            }
        )
    };
    let config = ws.job_file(&text(""));
    let out = validate(&config);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jobs[0].writers[0].password"), "{stderr}");
    assert!(stderr.contains("notifiers.relay.password"), "{stderr}");
    assert!(
        stderr.matches("allow_plaintext_password = true").count() >= 2,
        "{stderr}"
    );

    let config = ws.job_file(&text("allow_plaintext_password = true"));
    let out = validate(&config);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

/// A body that never ends, counting what was produced: `(addr, bytes produced)`.
async fn endless(
    status: axum::http::StatusCode,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let produced = std::sync::Arc::new(AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&produced);
    let app = axum::Router::new().fallback(move || {
        let counter = std::sync::Arc::clone(&counter);
        async move {
            let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            let body = futures::stream::repeat(chunk).map(move |chunk| {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok::<_, std::io::Error>(chunk)
            });
            (status, axum::body::Body::from_stream(body))
        }
    });
    (crate::support::serve(app).await, produced)
}

/// Sources from outside have a size limit: a url or command source giving more than
/// `max_bytes` fails at once (`rejected`, not retried) and nothing is delivered.
#[tokio::test]
async fn sources_stop_at_max_bytes() {
    let (addr, _) = endless(axum::http::StatusCode::OK).await;
    let ws = Workspace::new();
    let text = format!(
        r#"[[jobs]]
name = "web"
schedule = "@daily"
retry = {{ max_attempts = 3, initial_interval = "10ms" }}
source = {{ type = "url", url = "http://{addr}/big", max_bytes = "1MiB" }}
writers = [{{ type = "local", path = "out/web" }}]

[[jobs]]
name = "cmd"
schedule = "@daily"
retry = {{ max_attempts = 3, initial_interval = "10ms" }}
source = {{ type = "command", command = ["sh", "-c", "yes"], max_bytes = "1MiB" }}
writers = [{{ type = "local", path = "out/cmd" }}]
"#
    );
    for name in ["web", "cmd"] {
        let report = ws.job(&text, name).run(crate::support::slot()).await;
        assert_eq!(
            report.status,
            ferry::report::RunStatus::Failed,
            "{report:#?}"
        );
        let error = report.error.as_ref().expect("error");
        assert_eq!(error.kind, ferry::error::ErrorKind::Rejected, "{error:#?}");
        assert!(
            error.chain.join(": ").contains("max_bytes (1048576 bytes)"),
            "{error:#?}"
        );
        assert_eq!(report.attempts, 1, "not retried");
    }
    assert!(ws.files().is_empty(), "{:?}", ws.files());
}

/// A webhook answering with an error and an endless body: the notification fails with
/// the status and the start of the body, having read only that start.
#[tokio::test]
async fn an_endless_error_body_is_not_read_whole() {
    let (addr, produced) = endless(axum::http::StatusCode::BAD_REQUEST).await;
    let ws = Workspace::new();
    let text = format!(
        r#"[notifiers.hook]
type = "webhook"
url = "http://{addr}/hook"
attempts = 1

[[jobs]]
name = "a"
schedule = "@daily"
on_success = ["hook"]
source = {{ type = "inline", data = "x" }}
writers = [{{ type = "local", path = "out/a" }}]
"#
    );
    let (report, ledger) = ws.run_and_settle(&text).await;
    let outcomes = ledger
        .store
        .notifications(&report.run_id)
        .await
        .expect("read");
    let error = outcomes[0].error.clone().unwrap_or_default();
    assert!(error.contains("400") && error.contains("xxxx"), "{error}");
    let read = produced.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        read < 16 << 20,
        "only the start of the body was read: {read} bytes produced"
    );
}

/// The store URL can come from a file (`state_file`), so a PostgreSQL password need not sit
/// in the job file; it never shows in output, even at debug level.
#[test]
fn the_store_url_comes_from_a_file_and_never_shows() {
    let Ok(base) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("not run: FERRY_TEST_POSTGRES_URL is not set");
        return;
    };
    let ws = Workspace::new();
    // Trust authentication ignores the password: it only has to stay out of sight.
    let url = base.replacen("://postgres@", "://postgres:pg-SECRET-77@", 1);
    assert!(url.contains("pg-SECRET-77"), "a URL with a user: {base}");
    ws.secret("state", &url);
    let name = format!("stateful-{}", std::process::id());
    let config = ws.job_file(&format!(
        "[daemon]\nstate_file = \"secrets/state\"\n\n[[jobs]]\nname = \"{name}\"\nschedule = \"@daily\"\nsource = {{ type = \"inline\", data = \"x\" }}\nwriters = [{{ type = \"local\", path = \"out/x\" }}]\n"
    ));
    let config = config.display().to_string();
    let run = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["trigger", &name, "--config", &config])
        .env("FERRY_LOG", "debug")
        .output()
        .expect("run ferry");
    assert_eq!(run.status.code(), Some(0), "{}", show(&run));
    let history = ferry_with_env(&["history", &name, "--config", &config], &[]);
    assert_eq!(history.status.code(), Some(0), "{}", show(&history));
    assert!(
        String::from_utf8_lossy(&history.stdout).contains(&name),
        "{}",
        show(&history)
    );
    for out in [&run, &history] {
        assert!(!show(out).contains("pg-SECRET-77"), "{}", show(out));
    }
}

/// Secrets handed over by systemd's `LoadCredential=`: a `*_file` under
/// `$CREDENTIALS_DIRECTORY` is read from the directory systemd names.
#[tokio::test]
async fn a_secret_file_can_be_a_systemd_credential() {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer cred-SECRET-5") => (StatusCode::OK, "granted"),
            _ => (StatusCode::FORBIDDEN, "denied"),
        }
    });
    let addr = crate::support::serve(app).await;
    let ws = Workspace::new();
    let credentials = tempfile::tempdir().expect("credentials");
    std::fs::write(credentials.path().join("ferry_token"), "cred-SECRET-5\n").expect("credential");
    let config = ws.job_file(&format!(
        r#"[[jobs]]
name = "a"
schedule = "@daily"
source = {{ type = "url", url = "http://{addr}/x", bearer_token_file = "$CREDENTIALS_DIRECTORY/ferry_token" }}
writers = [{{ type = "local", path = "out/a" }}]
"#
    ));
    let config = config.display().to_string();
    let dir = credentials.path().display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        ferry_with_env(
            &["trigger", "a", "--config", &config],
            &[("CREDENTIALS_DIRECTORY", &dir)],
        )
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        std::fs::read(ws.path().join("out/a")).expect("delivered"),
        b"granted"
    );
}

/// SIGTERM to `ferry trigger` stops the run: its program (and what that started) is
/// killed, its temporary file removed, and the run recorded as failed, so that no daemon
/// resumes it later.
#[tokio::test]
async fn a_stopped_trigger_leaves_no_program_no_partial_and_no_running_run() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"[[jobs]]
name = "slow"
schedule = "@daily"
enabled = false
source = { type = "command", command = ["sh", "-c", "echo $$ > shell.pid; head -c 100000 /dev/zero; sleep 30"] }
writers = [{ type = "local", path = "out/slow.bin" }]
"#,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["trigger", "slow", "--config", &config.display().to_string()])
        .env("FERRY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ferry trigger");
    let partial = || {
        ws.files()
            .iter()
            .any(|f| f.starts_with("out/slow.bin.partial-"))
    };
    crate::support::eventually(
        "the program started writing",
        std::time::Duration::from_secs(20),
        || ws.path().join("shell.pid").exists() && partial(),
    )
    .await;
    let shell: i32 = std::fs::read_to_string(ws.path().join("shell.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("signal");
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("wait");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("read");
        (status, stderr)
    })
    .await
    .expect("join");
    assert_eq!(out.0.code(), Some(1), "{}", out.1);
    assert!(
        out.1.contains("cancelled: ferry trigger got SIGTERM"),
        "{}",
        out.1
    );
    crate::support::eventually(
        "the program is gone",
        std::time::Duration::from_secs(5),
        || kill(Pid::from_raw(shell), None).is_err(),
    )
    .await;
    assert!(!partial(), "{:?}", ws.files());
    let history = ferry_with_env(
        &[
            "history",
            "--json",
            "--config",
            &config.display().to_string(),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(
        text.contains("\"state\": \"failed\"") && text.contains("cancelled"),
        "{text}"
    );
}

/// A program that leaves something running with its output open (`cmd &`) does not hang
/// the run: once the program has exited, what it left gets a short grace and is killed.
#[tokio::test]
async fn what_a_program_leaves_running_does_not_hold_the_run() {
    let ws = Workspace::new();
    let text = r#"[[jobs]]
name = "bg"
schedule = "@daily"
timeout = "20s"
retry = { max_attempts = 1 }
source = { type = "command", command = ["sh", "-c", "sleep 30 & echo done"] }
writers = [{ type = "local", path = "out/bg" }]
"#;
    let started = std::time::Instant::now();
    let report = ws.job(text, "bg").run(crate::support::slot()).await;
    assert_eq!(
        report.status,
        ferry::report::RunStatus::Succeeded,
        "{report:#?}"
    );
    assert_eq!(
        std::fs::read(ws.path().join("out/bg")).expect("delivered"),
        b"done\n"
    );
    // Not a timing assertion on ferry's speed: the only alternative is the 20 s timeout.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// Every kind that holds a secret, in one `ferry trigger` at `FERRY_LOG=trace`: a url
/// source with a bearer token, S3 and FTP writers, a mail and a webhook (token in its URL
/// and a header). None of the secrets, nor their base64 forms, appears in the output, the
/// state store's files, `ferry history --json` or what the notifiers delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_any_kind_leaves_its_place() {
    use crate::support::ftp::{PASSWORD, USER};
    use crate::support::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};
    use crate::support::smtp::{SMTP_PASSWORD, SMTP_USER, SmtpServer, email_notifier};
    use axum::http::{HeaderMap, StatusCode};
    const BEARER: &str = "bearer-SECRET-41";
    const HOOK_TOKEN: &str = "hook-url-SECRET-42";
    const HOOK_HEADER: &str = "hook-header-SECRET-43";
    const UPLOAD_TOKEN: &str = "upload-url-SECRET-44";
    const UPLOAD_KEY: &str = "upload-key-SECRET-45";
    const UPLOAD_PASSWORD: &str = "upload-password-SECRET-46";
    let data = axum::Router::new().fallback(|headers: HeaderMap| async move {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(value) if value == format!("Bearer {BEARER}") => (StatusCode::OK, "payload\n"),
            _ => (StatusCode::FORBIDDEN, "denied"),
        }
    });
    let data = crate::support::serve(data).await;
    // The http writer's server takes the upload only with its token, key and password.
    let uploaded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let upload = axum::Router::new().fallback({
        let uploaded = std::sync::Arc::clone(&uploaded);
        move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| async move {
            let basic = format!(
                "Basic {}",
                base64(format!("up:{UPLOAD_PASSWORD}").as_bytes())
            );
            let key = headers.get("x-upload-key").and_then(|v| v.to_str().ok());
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            if uri.path().contains(UPLOAD_TOKEN)
                && key == Some(UPLOAD_KEY)
                && auth == Some(basic.as_str())
            {
                uploaded.lock().expect("lock").push(body.to_vec());
                StatusCode::CREATED
            } else {
                StatusCode::FORBIDDEN
            }
        }
    });
    let upload = crate::support::serve(upload).await;
    let (hook, hook_seen) = redirecting(None).await;
    let ws = Workspace::new();
    let tls = crate::support::self_signed(ws.path());
    let smtp = SmtpServer::start(Some(&tls), true);
    let ftp_root = tempfile::tempdir().expect("ftp root");
    let (ftp_port, _ftp) = crate::support::ftp::serve(ftp_root.path()).await;
    let (s3, _s3_root) = crate::support::s3::server().await;
    let secrets = [
        ("bearer", BEARER),
        ("ftp", PASSWORD),
        ("s3", SECRET_KEY),
        ("smtp", SMTP_PASSWORD),
        ("hook-url", &format!("http://{hook}/hook/{HOOK_TOKEN}")),
        ("hook-header", HOOK_HEADER),
        (
            "upload-url",
            &format!("http://{upload}/in/{UPLOAD_TOKEN}/all.txt"),
        ),
        ("upload-key", UPLOAD_KEY),
        ("upload-password", UPLOAD_PASSWORD),
    ];
    for (name, value) in secrets {
        ws.secret(name, value);
    }
    let text = email_notifier(
        "mail",
        smtp.port,
        &["ops@example.com"],
        &format!(
            "ca_file = \"server.pem\"\nusername = \"{SMTP_USER}\"\npassword_file = \"secrets/smtp\""
        ),
    ) + &format!(
        r#"
[notifiers.hook]
type = "webhook"
url_file = "secrets/hook-url"
headers = {{ X-Token = {{ file = "secrets/hook-header" }} }}

[[jobs]]
name = "all"
schedule = "@daily"
on_success = ["mail", "hook"]
source = {{ type = "url", url = "http://{data}/export", bearer_token_file = "secrets/bearer" }}
writers = [
  {{ type = "ftp", host = "127.0.0.1", port = {ftp_port}, username = "{USER}", password_file = "secrets/ftp", allow_plaintext_password = true, path = "/all.txt" }},
  {{ type = "s3", bucket = "{BUCKET}", key = "all.txt", endpoint = "http://{addr}", path_style = true, region = "us-east-1", access_key_id = "{ACCESS_KEY}", secret_access_key_file = "secrets/s3" }},
  {{ type = "http", url_file = "secrets/upload-url", headers = {{ X-Upload-Key = {{ file = "secrets/upload-key" }} }}, username = "up", password_file = "secrets/upload-password" }},
]

[[jobs]]
name = "cmd"
schedule = "@daily"
source = {{ type = "command", command = ["env"] }}
writers = [{{ type = "local", path = "out/env.txt" }}]
"#,
        addr = s3.addr
    );
    let config = ws.job_file(&text).display().to_string();
    let mut outputs = Vec::new();
    for job in ["all", "cmd"] {
        let config = config.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["trigger", job, "--config", &config, "--log-format", "json"])
                .env("FERRY_LOG", "trace")
                .env("FERRY_TEST_HOOK_ENV_SECRET", HOOK_HEADER)
                .output()
                .expect("run ferry")
        })
        .await
        .expect("join");
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        outputs.push(show(&out));
    }
    assert_eq!(
        std::fs::read(ftp_root.path().join("all.txt")).expect("ftp"),
        b"payload\n"
    );
    assert_eq!(*uploaded.lock().expect("lock"), vec![b"payload\n".to_vec()]);
    let history = ferry_with_env(&["history", "--json", "--config", &config], &[]);
    assert_eq!(history.status.code(), Some(0), "{}", show(&history));
    outputs.push(show(&history));
    let mails = smtp.wait_for(1, std::time::Duration::from_secs(10)).await;
    outputs.extend(mails.iter().map(|mail| mail.text()));
    let hooks = hook_seen.lock().expect("seen").clone();
    // The webhook's own server gets its URL and header, as it should; nothing else does.
    assert_eq!(hooks.len(), 1, "the webhook was called");
    assert!(hooks[0].0.contains(HOOK_TOKEN));
    outputs.push(std::fs::read_to_string(ws.path().join("out/env.txt")).expect("env"));
    for file in crate::support::files_under(ws.path()) {
        if file.starts_with("ferry-state.db") {
            let bytes = std::fs::read(ws.path().join(&file)).expect("store file");
            outputs.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let smtp_plain = format!("\0{SMTP_USER}\0{SMTP_PASSWORD}");
    let mut forbidden: Vec<String> = [
        BEARER,
        PASSWORD,
        SECRET_KEY,
        SMTP_PASSWORD,
        HOOK_TOKEN,
        HOOK_HEADER,
        UPLOAD_TOKEN,
        UPLOAD_KEY,
        UPLOAD_PASSWORD,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    forbidden.extend(
        [BEARER, PASSWORD, SECRET_KEY, SMTP_PASSWORD, HOOK_TOKEN]
            .iter()
            .map(|s| base64(s.as_bytes())),
    );
    forbidden.push(base64(format!("up:{UPLOAD_PASSWORD}").as_bytes()));
    forbidden.push(base64(smtp_plain.as_bytes()));
    for (i, output) in outputs.iter().enumerate() {
        for secret in &forbidden {
            assert!(
                !output.contains(secret.as_str()),
                "{secret} leaked in output {i}:\n{output}"
            );
        }
    }
}

/// A PASV reply naming another host is not followed: data connections go to the control
/// connection's address (127.0.0.2 here, which the server does not listen on, stands for
/// "elsewhere"), as curl does.
#[tokio::test]
async fn a_pasv_reply_cannot_send_the_data_elsewhere() {
    use crate::support::ftp::{FtpServer, PASSWORD, USER, free_port};
    let root = tempfile::tempdir().expect("ftp root");
    let port = free_port();
    let _server = FtpServer::start_advertising(
        root.path(),
        port,
        None,
        Some(std::net::Ipv4Addr::new(127, 0, 0, 2)),
    )
    .await;
    let ws = Workspace::new();
    ws.secret("ftp", PASSWORD);
    let text = format!(
        r#"[[jobs]]
name = "up"
schedule = "@daily"
retry = {{ max_attempts = 1 }}
source = {{ type = "inline", data = "payload" }}
writers = [{{ type = "ftp", host = "127.0.0.1", port = {port}, username = "{USER}", password_file = "secrets/ftp", allow_plaintext_password = true, path = "/up.txt" }}]
"#
    );
    let report = ws.job(&text, "up").run(crate::support::slot()).await;
    assert_eq!(
        report.status,
        ferry::report::RunStatus::Succeeded,
        "{report:#?}"
    );
    assert_eq!(
        std::fs::read(root.path().join("up.txt")).expect("delivered"),
        b"payload"
    );
}

/// An error body with terminal escape sequences is shown escaped by `ferry history`.
#[tokio::test]
async fn history_does_not_replay_a_servers_escape_sequences() {
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::BAD_REQUEST,
            "\u{1b}[2J\u{1b}[31mgotcha\u{1b}[0m",
        )
    });
    let addr = crate::support::serve(app).await;
    let ws = Workspace::new();
    let config = ws.job_file(&format!(
        "[[jobs]]\nname = \"esc\"\nschedule = \"@daily\"\nsource = {{ type = \"url\", url = \"http://{addr}/x\" }}\nwriters = [{{ type = \"local\", path = \"out/x\" }}]\n"
    ));
    let config = config.display().to_string();
    let run = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            ferry_with_env(&["trigger", "esc", "--config", &config], &[])
        })
        .await
        .expect("join")
    };
    assert_eq!(run.status.code(), Some(1), "{}", show(&run));
    let history =
        tokio::task::spawn_blocking(move || ferry_with_env(&["history", "--config", &config], &[]))
            .await
            .expect("join");
    let shown = String::from_utf8_lossy(&history.stdout);
    assert!(shown.contains("gotcha"), "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
}

/// Credentials over plain http:// are allowed (a service on localhost) but said loudly.
#[test]
fn credentials_over_plain_http_are_warned_about() {
    let ws = Workspace::new();
    ws.secret("token", "t0ken-SECRET-9");
    let config = ws.job_file(
        r#"[notifiers.hook]
type = "webhook"
url = "http://127.0.0.1:9/hook"
attempts = 1
headers = { Authorization = { file = "secrets/token", prefix = "Bearer " } }

[[jobs]]
name = "a"
schedule = "@daily"
on_failure = ["hook"]
retry = { max_attempts = 1 }
source = { type = "url", url = "http://127.0.0.1:9/x", bearer_token_file = "secrets/token" }
writers = [{ type = "local", path = "out/a" }]
"#,
    );
    let out = ferry_with_env(
        &["trigger", "a", "--config", &config.display().to_string()],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unencrypted over http://"),
        "{}",
        show(&out)
    );
    assert!(
        stderr.matches("unencrypted over http://").count() >= 2,
        "{}",
        show(&out)
    );
    assert!(!stderr.contains("t0ken-SECRET-9"), "{}", show(&out));
}

/// A cancelled program gets SIGTERM first (and time to clean up), SIGKILL only after a grace.
#[tokio::test]
async fn a_cancelled_program_is_asked_to_stop_before_it_is_killed() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"[[jobs]]
name = "polite"
schedule = "@daily"
source = { type = "command", command = ["sh", "-c", "trap 'echo got-term > term.txt; exit 0' TERM; echo started > started.txt; while :; do sleep 0.1; done"] }
writers = [{ type = "local", path = "out/polite" }]
"#,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "trigger",
            "polite",
            "--config",
            &config.display().to_string(),
        ])
        .env("FERRY_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ferry trigger");
    crate::support::eventually(
        "the program started",
        std::time::Duration::from_secs(20),
        || ws.path().join("started.txt").exists(),
    )
    .await;
    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("signal");
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("term.txt")).expect("the program saw SIGTERM"),
        "got-term\n"
    );
}

/// Credentials never ride in a url source's URL text: a templated URL with a user and
/// password is refused (literal ones always were), and a URL with a token in its path
/// comes from `url_file`, after which messages, logs and history show its host only.
#[tokio::test]
async fn tokens_in_url_paths_stay_out_of_messages() {
    const TOKEN: &str = "path-SECRET-T0KEN-8";
    let app = axum::Router::new().fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no") });
    let addr = crate::support::serve(app).await;
    let ws = Workspace::new();
    let templated = ws.job_file(
        "[[jobs]]\nname = \"t\"\nschedule = \"@daily\"\nsource = { type = \"url\", url = \"https://user:pa55-SECRET@example.com/{job}.csv\" }\nwriters = [{ type = \"local\", path = \"out/t\" }]\n",
    );
    let out = validate(&templated);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("jobs[0].source.url"), "{}", show(&out));
    assert!(!show(&out).contains("pa55-SECRET"), "{}", show(&out));

    ws.secret("url", &format!("http://{addr}/export/{TOKEN}/{{job}}.csv"));
    let config = ws.job_file(
        "[[jobs]]\nname = \"p\"\nschedule = \"@daily\"\nretry = { max_attempts = 1 }\nsource = { type = \"url\", url_file = \"secrets/url\" }\nwriters = [{ type = \"local\", path = \"out/p\" }]\n",
    );
    let config = config.display().to_string();
    let run = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["trigger", "p", "--config", &config])
                .env("FERRY_LOG", "debug")
                .output()
                .expect("run ferry")
        })
        .await
        .expect("join")
    };
    assert_eq!(run.status.code(), Some(1), "{}", show(&run));
    assert!(show(&run).contains("404"), "{}", show(&run));
    let history = ferry_with_env(&["history", "--json", "--config", &config], &[]);
    for out in [&run, &history] {
        assert!(!show(out).contains(TOKEN), "{}", show(out));
    }
}

/// An unusable store stops start-up at once with its own words (a corrupt SQLite file:
/// "not a database"), not after a 30 s wait ending in "pool timed out"; an unreachable
/// PostgreSQL is waited for, saying so with its host, port and "refused", and SIGTERM still
/// stops ferry: no crash loop either way.
#[test]
fn an_unusable_store_says_why_and_an_unreachable_one_is_waited_for() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let ws = Workspace::new();
    let job = "[[jobs]]\nname = \"a\"\nschedule = \"@daily\"\nsource = { type = \"inline\", data = \"x\" }\nwriters = [{ type = \"local\", path = \"out/a\" }]\n";
    crate::support::random_file(&ws.path().join("ferry-state.db"), 100_000);
    let corrupt = ws.job_file(job);
    let closed = crate::support::ftp::free_port();
    let unreachable = ws.path().join("pg.toml");
    std::fs::write(
        &unreachable,
        format!(
            "[daemon]\nstate = \"postgres://ferry:pw-SECRET@127.0.0.1:{closed}/ferry\"\n\n{job}"
        ),
    )
    .expect("job file");
    let start = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "run",
                "--config",
                &config.display().to_string(),
                "--log-format",
                "json",
            ])
            .env("FERRY_LOG", "warn")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start ferry run")
    };
    let stderr_of = |child: &mut std::process::Child| {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("read");
        stderr
    };

    let mut child = start(&corrupt);
    // 20 s: the old behaviour took 30 s; the point is the message, not the speed.
    let status = crate::support::wait_with_deadline(&mut child, std::time::Duration::from_secs(20));
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("file is not a database"), "{stderr}");
    assert!(!stderr.contains("pool timed out"), "{stderr}");

    let mut child = start(&unreachable);
    // Read its log as it comes; stop it once it has said twice that it is waiting.
    let pipe = child.stderr.take().expect("stderr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut seen = seen.lock().expect("seen");
                seen.push_str(&line);
                seen.push('\n');
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.lock().expect("seen").matches("waiting for it").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            seen.lock().expect("seen")
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "it keeps waiting for the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("signal");
    let status = crate::support::wait_with_deadline(&mut child, std::time::Duration::from_secs(10));
    reader.join().expect("reader");
    let stderr = seen.lock().expect("seen").clone();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("waiting for it"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{closed}")), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains("pw-SECRET"), "{stderr}");
}

/// A slot whose claim the store refuses (here a PostgreSQL role that may not INSERT runs)
/// is not run, and the job's failure handlers hear of it, not only the log.
#[tokio::test]
async fn a_run_the_store_cannot_record_is_reported_to_the_failure_handlers() {
    use sqlx::{Connection as _, Executor as _};
    let Ok(admin) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("not run: FERRY_TEST_POSTGRES_URL is not set");
        return;
    };
    // The schema exists (as the admin), then a role that can read and update it, not insert.
    ferry::state::Store::open(&admin, std::path::Path::new("/"))
        .await
        .expect("the admin's store");
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .expect("connect as admin");
    conn.execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferry_noinsert') THEN
             CREATE ROLE ferry_noinsert LOGIN;
           END IF;
         END $$;
         GRANT USAGE, CREATE ON SCHEMA public TO ferry_noinsert;
         GRANT SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ferry_noinsert;
         REVOKE INSERT ON ferry_runs FROM ferry_noinsert;",
    )
    .await
    .expect("set up the role");
    conn.close().await.expect("close");
    let limited = admin.replacen("://postgres@", "://ferry_noinsert@", 1);
    assert_ne!(limited, admin, "an admin URL with user postgres: {admin}");

    let (hook, seen) = redirecting(None).await;
    let ws = Workspace::new();
    let config = ws.job_file(&format!(
        r#"[daemon]
state = "{limited}"

[notifiers.ops]
type = "webhook"
url = "http://{hook}/ops"
format = "text"
body = "{{{{ job }}}} {{{{ status }}}}: {{{{ error.message }}}}"

[[jobs]]
name = "unrecorded-{pid}"
schedule = "* * * * * *"
on_failure = ["ops"]
source = {{ type = "inline", data = "x" }}
writers = [{{ type = "local", path = "out/x" }}]
"#,
        pid = std::process::id()
    ));
    let daemon = crate::support::daemon::boot(&config);
    crate::support::eventually(
        "the failure handler was told",
        std::time::Duration::from_secs(30),
        || !seen.lock().expect("seen").is_empty(),
    )
    .await;
    daemon.stop().await;
    assert!(ws.files().is_empty(), "nothing ran: {:?}", ws.files());
}

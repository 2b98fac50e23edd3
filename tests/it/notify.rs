//! Notifications against real servers on 127.0.0.1: mailin-embedded for SMTP (STARTTLS
//! with a generated certificate, PLAIN login), axum for webhooks.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use ferry::runner::{RunReport, RunStatus};
use ferry::state::{Ledger, NotificationOutcome};
use mailin_embedded::AuthMechanism;

use crate::support::smtp::*;
use crate::support::{Workspace, ferry, self_signed, show, tls_front};

/// A job writing `source` to a local file, telling `users` of success, `admin` of failure.
fn job(source: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "nightly"
schedule = "@daily"
source = {source}
retry = {{ max_attempts = 3, initial_interval = "50ms" }}
writers = [{{ type = "local", path = "out/report.csv" }}]
on_success = ["users"]
on_failure = ["admin"]
"#
    )
}

const PLAIN: &str = r#"security = "none""#;

/// Users and admin on one plain server (no TLS, no login), and the job.
fn plain_setup(port: u16, source: &str) -> String {
    email_notifier(
        "users",
        port,
        &["alice@example.com", "bob@example.com"],
        PLAIN,
    ) + &email_notifier("admin", port, &["admin@example.com"], PLAIN)
        + &job(source)
}

/// Runs the first job with a ledger (the SMTP password in `secrets/smtp`) and waits for its
/// notifications.
async fn run_and_settle(ws: &Workspace, text: &str) -> (RunReport, Ledger) {
    ws.secret("smtp", SMTP_PASSWORD);
    ws.run_and_settle(text).await
}

async fn notification_outcomes(ledger: &Ledger, report: &RunReport) -> Vec<NotificationOutcome> {
    ledger
        .store
        .notifications(&report.run_id)
        .await
        .expect("notifications recorded")
}

#[tokio::test]
async fn a_success_mail_reaches_the_users_with_the_link() {
    let smtp = SmtpServer::start(None, false);
    let ws = Workspace::new();
    let text = plain_setup(smtp.port, r#"{ type = "inline", data = "a,b\n1,2\n" }"#);
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");

    let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        mails.len(),
        1,
        "only the users hear of a success: {mails:#?}"
    );
    let mail = &mails[0];
    assert_eq!(mail.from, "ferry@example.com");
    assert_eq!(mail.to, vec!["alice@example.com", "bob@example.com"]);
    // Spam filters drop mails without Message-ID or Date; a job's mails share one thread.
    let header = |name: &str| {
        mail.data
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    assert_eq!(
        header("Message-ID").as_deref(),
        Some(format!("<{}.users@example.com>", report.run_id).as_str()),
        "{}",
        mail.data
    );
    assert!(header("Date").is_some_and(|date| chrono::DateTime::parse_from_rfc2822(&date).is_ok()));
    let thread = header("In-Reply-To").expect("In-Reply-To");
    assert!(
        thread.starts_with("<ferry.nightly.") && thread.ends_with("@example.com>"),
        "{thread}"
    );
    assert_eq!(header("References"), Some(thread));
    let link = report.deliveries[0]
        .link
        .clone()
        .expect("a local file has a link");
    assert!(link.starts_with("file://"), "{link}");
    let text = mail.text();
    assert!(text.contains(&link), "the link is in the mail:\n{text}");
    assert!(
        mail.subject().contains("nightly succeeded"),
        "{}",
        mail.subject()
    );
    assert!(
        text.contains("The delivery \"nightly\" succeeded."),
        "{text}"
    );
    assert!(text.contains(&report.deliveries[0].sha256), "{text}");
    assert_eq!(
        notification_outcomes(&ledger, &report).await,
        vec![NotificationOutcome {
            notifier: "users".into(),
            sent: true,
            attempts: 1,
            error: None,
        }]
    );
}

#[tokio::test]
async fn a_failure_mail_reaches_the_admin_once_after_the_last_retry() {
    let smtp = SmtpServer::start(None, false);
    let ws = Workspace::new();
    let text = plain_setup(
        smtp.port,
        r#"{ type = "command", command = ["sh", "-c", "echo 'export tool crashed' >&2; exit 3"] }"#,
    );
    let (report, _ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.attempts, 3, "{report:#?}");

    let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
    // Give a stray second mail the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails_after = smtp.mails();
    assert_eq!(
        mails_after.len(),
        1,
        "one mail for the whole run: {mails_after:#?}"
    );
    let mail = &mails[0];
    assert_eq!(mail.to, vec!["admin@example.com"]);
    let text = mail.text();
    assert!(
        mail.subject().contains("nightly failed: command"),
        "{}",
        mail.subject()
    );
    assert!(text.contains("The delivery \"nightly\" FAILED."), "{text}");
    assert!(text.contains("Attempts:   3"), "{text}");
    assert!(text.contains("Gave up:    all 3 attempts failed"), "{text}");
    assert!(
        text.contains("export tool crashed"),
        "the error is in the mail:\n{text}"
    );
}

/// Users (alice) and admin on the server at `port`, both with `extra` settings, and the job
/// delivering one byte.
fn alice_and_admin(port: u16, extra: &str) -> String {
    email_notifier("users", port, &["alice@example.com"], extra)
        + &email_notifier("admin", port, &["admin@example.com"], extra)
        + &job(r#"{ type = "inline", data = "x" }"#)
}

/// A STARTTLS server with a generated certificate and a required login, and a job file
/// whose users and admin log in with `password` (a key and its value, e.g.
/// `password = "…"`).
fn secure_setup(ws: &Workspace, password: &str) -> (SmtpServer, String) {
    let tls = self_signed(ws.path());
    let smtp = SmtpServer::start(Some(&tls), true);
    let secure = format!(
        "security = \"starttls\"\nca_file = \"server.pem\"\nusername = \"{SMTP_USER}\"\n{password}"
    );
    let text = alice_and_admin(smtp.port, &secure);
    (smtp, text)
}

#[tokio::test]
async fn starttls_with_a_self_signed_certificate_and_a_login() {
    let ws = Workspace::new();
    let (smtp, text) = secure_setup(&ws, "password_file = \"secrets/smtp\"");
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mails[0].to, vec!["alice@example.com"]);
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(outcomes[0].sent, "{outcomes:?}");

    // Without the CA file the self-signed certificate is refused, and nothing is sent.
    let untrusted = text
        .replace("ca_file = \"server.pem\"\n", "")
        .replace("name = \"nightly\"", "name = \"nightly-untrusted\"");
    let (report, ledger) = run_and_settle(&ws, &untrusted).await;
    assert_eq!(report.status, RunStatus::Succeeded, "the delivery stands");
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(!outcomes[0].sent, "{outcomes:?}");
    assert!(
        outcomes[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("certificate"),
        "{outcomes:?}"
    );
    assert_eq!(smtp.mails().len(), 1);
}

/// A mail server whose self-signed certificate is marked as a CA, as `openssl req -x509`
/// makes them (webpki alone refuses it as a server's own): trusted as `ca_file` and by its
/// fingerprint, over STARTTLS and implicit TLS. Another fingerprint is refused before the
/// login: the server sees no credentials and no mail.
#[tokio::test]
async fn a_self_signed_ca_certificate_is_trusted_as_given_or_by_fingerprint() {
    let ws = Workspace::new();
    let (tls, fingerprint) = crate::support::self_signed_ca(ws.path());
    let smtp = SmtpServer::start(Some(&tls), true);
    let login = format!("username = \"{SMTP_USER}\"\npassword_file = \"secrets/smtp\"");
    let setup = |name: &str, port: u16, trust: &str| {
        alice_and_admin(port, &format!("{trust}\n{login}"))
            .replace("name = \"nightly\"", &format!("name = \"{name}\""))
    };
    let lower = fingerprint.replace(':', "").to_lowercase();
    for (name, trust) in [
        (
            "by-file",
            "security = \"starttls\"\nca_file = \"ca-server.pem\"".to_owned(),
        ),
        (
            "by-pin",
            format!("security = \"starttls\"\npin_sha256 = \"{fingerprint}\""),
        ),
        ("by-sha256sum", format!("pin_sha256 = \"{lower}\"")),
    ] {
        let (report, ledger) = run_and_settle(&ws, &setup(name, smtp.port, &trust)).await;
        let outcomes = notification_outcomes(&ledger, &report).await;
        assert!(outcomes[0].sent, "{trust}: {outcomes:?}");
    }
    assert_eq!(smtp.mails().len(), 3);
    assert_eq!(smtp.logins().len(), 3);

    let behind = SmtpServer::start(None, false);
    let smtps = tls_front(&tls, behind.port).await;
    let pinned = format!("security = \"tls\"\npin_sha256 = \"{fingerprint}\"");
    let text = alice_and_admin(smtps, &pinned).replace("name = \"nightly\"", "name = \"smtps\"");
    let (report, ledger) = run_and_settle(&ws, &text).await;
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(outcomes[0].sent, "{outcomes:?}");
    assert_eq!(behind.mails().len(), 1);

    let other = "AB:".repeat(31) + "AB";
    let refused = format!("pin_sha256 = \"{other}\"");
    let (report, ledger) = run_and_settle(&ws, &setup("impostor", smtp.port, &refused)).await;
    assert_eq!(report.status, RunStatus::Succeeded, "the delivery stands");
    let outcomes = notification_outcomes(&ledger, &report).await;
    let outcome = &outcomes[0];
    assert!(!outcome.sent, "{outcomes:?}");
    assert_eq!(outcome.attempts, 1, "a certificate refused is not retried");
    let error = outcome.error.clone().unwrap_or_default();
    assert!(error.contains("not the one in pin_sha256"), "{error}");
    assert!(
        error.contains(&fingerprint),
        "shows what the server has: {error}"
    );
    assert_eq!(smtp.logins().len(), 3, "no login was tried");
    assert_eq!(smtp.mails().len(), 3, "no mail was sent");
}

#[tokio::test]
async fn an_authentication_failure_is_recorded_while_the_delivery_succeeds() {
    let ws = Workspace::new();
    let (smtp, text) = secure_setup(&ws, "password = \"not-the-password\"");
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(ws.path().join("out/report.csv").exists());
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let outcome = &outcomes[0];
    assert!(!outcome.sent);
    assert_eq!(outcome.attempts, 1, "refused credentials are not retried");
    let error = outcome.error.clone().unwrap_or_default();
    assert!(error.contains("535"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
    assert!(smtp.mails().is_empty());
}

#[tokio::test]
async fn an_unreachable_mail_server_does_not_hold_up_the_delivery() {
    // Nothing listens on this port: every try is refused.
    let port = crate::support::ftp::free_port();
    let ws = Workspace::new();
    let text = plain_setup(port, r#"{ type = "inline", data = "x" }"#);
    let ledger = ws.ledger().await;
    let job = ws.jobs(&text).swap_remove(0);
    let report = job
        .run_claimed(&ledger, job.now_slot())
        .await
        .expect("store")
        .expect("claimed");
    // The run is over and recorded while its notification is still being retried.
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(job.runner.notifications().pending(), 1);
    let recorded = ledger
        .store
        .history(Some("nightly"), 1)
        .await
        .expect("history");
    assert_eq!(recorded[0].bytes, Some(1), "{recorded:?}");

    assert!(
        job.runner
            .notifications()
            .settle(Duration::from_secs(30))
            .await
    );
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(!outcomes[0].sent);
    assert_eq!(outcomes[0].attempts, 3, "a refused connection is retried");
}

#[tokio::test]
async fn a_server_that_never_answers_is_given_up_on_in_time() {
    // Accepts connections and says nothing (the STARTTLS hang of lettre#1027 looks alike).
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    let ws = Workspace::new();
    let text = email_notifier(
        "users",
        port,
        &["alice@example.com"],
        "security = \"none\"\ntimeout = \"1s\"\nattempts = 2",
    ) + &email_notifier("admin", port, &["admin@example.com"], PLAIN)
        + &job(r#"{ type = "inline", data = "x" }"#);
    let started = tokio::time::Instant::now();
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(!outcomes[0].sent);
    assert_eq!(outcomes[0].attempts, 2);
    // Two tries of at most a second each, a backoff between: well under the 60 s wait.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

/// What a webhook server received.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    method: Method,
    headers: HeaderMap,
    pub(crate) body: String,
}

pub(crate) type Calls = Arc<Mutex<Vec<Call>>>;

/// A webhook endpoint answering `status` to every call and keeping what it received.
pub(crate) async fn webhook_server(status: StatusCode) -> (SocketAddr, Calls) {
    let calls = Calls::default();
    let router = axum::Router::new()
        .route(
            "/hook/{token}",
            axum::routing::any(
                |State((calls, status)): State<(Calls, StatusCode)>,
                 method: Method,
                 headers: HeaderMap,
                 body: String| async move {
                    calls.lock().expect("calls").push(Call {
                        method,
                        headers,
                        body,
                    });
                    status
                },
            ),
        )
        .with_state((Arc::clone(&calls), status));
    (crate::support::serve(router).await, calls)
}

fn webhook_job(table: &str) -> String {
    format!(
        r#"
[notifiers.users]
{table}

[notifiers.admin]
type = "log"

[[jobs]]
name = "nightly"
schedule = "@daily"
source = {{ type = "inline", data = "a,b\n" }}
writers = [{{ type = "local", path = "out/report.csv" }}]
on_success = ["users"]
on_failure = ["admin"]
"#
    )
}

#[tokio::test]
async fn a_json_webhook_carries_the_run_and_a_secret_header() {
    let (addr, calls) = webhook_server(StatusCode::OK).await;
    let ws = Workspace::new();
    ws.secret("hook", "hook-secret-token");
    let text = webhook_job(&format!(
        r#"type = "webhook"
url = "http://{addr}/hook/abc"
headers = {{ "X-Team" = "data", Authorization = {{ file = "secrets/hook", prefix = "Bearer " }} }}"#
    ));
    let (report, ledger) = run_and_settle(&ws, &text).await;
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    // Recorded with the outcome, claimed and sent by this process; the log notifier is told
    // at once, without the outbox.
    let notices = ledger.store.notices(&report.run_id).await.expect("outbox");
    assert_eq!(notices.len(), 1, "{notices:#?}");
    assert_eq!(
        (notices[0].notifier.as_str(), notices[0].state.as_str()),
        ("users", "sent")
    );
    assert_eq!(
        notices[0].claimed_by.as_deref(),
        Some(ledger.owner.as_str())
    );
    let call = &calls[0];
    assert_eq!(call.method, Method::POST);
    assert_eq!(call.headers["content-type"], "application/json");
    assert_eq!(call.headers["authorization"], "Bearer hook-secret-token");
    assert_eq!(call.headers["x-team"], "data");
    let body: serde_json::Value = serde_json::from_str(&call.body).expect("JSON body");
    assert_eq!(body["job"], "nightly");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["bytes"], 4);
    assert_eq!(body["run_id"], report.run_id.as_str());
    assert_eq!(
        body["link"],
        report.deliveries[0].link.clone().expect("link").as_str()
    );
    assert_eq!(
        body["deliveries"][0]["sha256"],
        report.deliveries[0].sha256.as_str()
    );
}

#[tokio::test]
async fn chat_text_and_templated_webhooks() {
    let (addr, calls) = webhook_server(StatusCode::NO_CONTENT).await;
    let ws = Workspace::new();
    let chat = webhook_job(&format!(
        r#"type = "webhook"
url = "http://{addr}/hook/chat"
format = "chat""#
    ));
    run_and_settle(&ws, &chat).await;
    let ws = Workspace::new();
    let text = webhook_job(&format!(
        r#"type = "webhook"
url = "http://{addr}/hook/text"
method = "PUT"
format = "text"
body = "{{{{ job }}}} is {{{{ status }}}} ({{{{ size }}}})""#
    ));
    run_and_settle(&ws, &text).await;
    let ws = Workspace::new();
    let json = webhook_job(&format!(
        r#"type = "webhook"
url = "http://{addr}/hook/json"
body = '{{"event": "delivery", "name": {{{{ job }}}}, "ok": {{{{ succeeded }}}}, "where": {{{{ link }}}}}}'"#
    ));
    run_and_settle(&ws, &json).await;

    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    let chat: serde_json::Value = serde_json::from_str(&calls[0].body).expect("JSON");
    let line = chat["text"].as_str().expect("a text field");
    assert!(
        line.starts_with("ferry: nightly delivered 4 bytes to file://"),
        "{line}"
    );
    assert_eq!(calls[1].method, Method::PUT);
    assert_eq!(
        calls[1].headers["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(calls[1].body, "nightly is succeeded (4 bytes)");
    let json: serde_json::Value = serde_json::from_str(&calls[2].body).expect("JSON");
    assert_eq!(json["event"], "delivery");
    assert_eq!(json["name"], "nightly");
    assert_eq!(json["ok"], true);
    assert!(
        json["where"]
            .as_str()
            .unwrap_or_default()
            .starts_with("file://")
    );
}

#[tokio::test]
async fn webhook_failures_retry_only_what_may_pass_and_never_show_the_url() {
    let (addr, calls) = webhook_server(StatusCode::SERVICE_UNAVAILABLE).await;
    let ws = Workspace::new();
    ws.secret("hook-url", &format!("http://{addr}/hook/secret-url-token"));
    let text = webhook_job(
        r#"type = "webhook"
url_file = "secrets/hook-url"
attempts = 2"#,
    );
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(calls.lock().expect("calls").len(), 2, "a 503 is retried");
    let outcomes = notification_outcomes(&ledger, &report).await;
    let error = outcomes[0].error.clone().unwrap_or_default();
    assert!(error.contains("503"), "{error}");
    assert!(!error.contains("secret-url-token"), "{error}");

    let (addr, calls) = webhook_server(StatusCode::BAD_REQUEST).await;
    let ws = Workspace::new();
    let text = webhook_job(&format!(
        "type = \"webhook\"\nurl = \"http://{addr}/hook/x\"\nattempts = 3"
    ));
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(
        calls.lock().expect("calls").len(),
        1,
        "a 400 is not retried"
    );
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert_eq!(outcomes[0].attempts, 1);
}

#[tokio::test]
async fn notify_test_sends_a_sample_and_fails_loudly_without_leaking() {
    let ws = Workspace::new();
    let tls = self_signed(ws.path());
    let smtp = SmtpServer::start(Some(&tls), true);
    let good = format!(
        "ca_file = \"server.pem\"\nusername = \"{SMTP_USER}\"\npassword = \"{SMTP_PASSWORD}\""
    );
    let bad = format!(
        "ca_file = \"server.pem\"\nusername = \"{SMTP_USER}\"\npassword = \"wrong-secret-9\""
    );
    let text = email_notifier("users", smtp.port, &["alice@example.com"], &good)
        + &email_notifier("admin", smtp.port, &["admin@example.com"], &bad)
        + &job(r#"{ type = "inline", data = "x" }"#);
    let path = ws.job_file(&text);
    let config = path.to_str().expect("UTF-8 path");

    let output = ferry(&["notify-test", "users", "--config", config]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("users: test message (succeeded) sent after 1 attempt")
    );
    let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert!(mails[0].text().contains("notify-test"), "{mails:#?}");

    let output = ferry(&["notify-test", "admin", "--failure", "--config", config]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("admin: not sent after 1 attempt"),
        "{}",
        show(&output)
    );
    assert!(stderr.contains("535"), "{}", show(&output));
    assert!(!stderr.contains("wrong-secret-9"), "{}", show(&output));

    let output = ferry(&["notify-test", "nobody", "--config", config]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
}

#[tokio::test]
async fn trigger_waits_for_notifications_and_history_shows_them() {
    let smtp = SmtpServer::start(None, false);
    let dead = crate::support::ftp::free_port();
    let ws = Workspace::new();
    let text = email_notifier("users", smtp.port, &["alice@example.com"], PLAIN)
        + &format!(
            "\n[notifiers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{dead}/hook\"\nattempts = 1\n"
        )
        + &job(r#"{ type = "inline", data = "x" }"#)
            .replace(
                "on_success = [\"users\"]",
                "on_success = [\"users\", \"hook\"]",
            )
            .replace("on_failure = [\"admin\"]", "on_failure = []");
    let path = ws.job_file(&text);
    let config = path.to_str().expect("UTF-8 path");
    let output = ferry(&["trigger", "nightly", "--config", config]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    // The mail went out before the command exited.
    assert_eq!(smtp.mails().len(), 1, "{}", show(&output));

    let output = ferry(&["history", "--config", config]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.lines().next().unwrap_or_default().contains("NOTIFIED"),
        "{text}"
    );
    assert!(text.contains("hook (not sent), users"), "{text}");
    let output = ferry(&["history", "--json", "--config", config]);
    let runs: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(runs[0]["notifications"][1]["notifier"], "users");
    assert_eq!(runs[0]["notifications"][1]["sent"], true);
    assert_eq!(runs[0]["notifications"][0]["sent"], false);
}

#[tokio::test]
async fn implicit_tls_smtps() {
    let ws = Workspace::new();
    let tls = self_signed(ws.path());
    let smtp = SmtpServer::start(None, false);
    let port = tls_front(&tls, smtp.port).await;
    let smtps = "security = \"tls\"\nca_file = \"server.pem\"";
    let text = alice_and_admin(port, smtps);
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(outcomes[0].sent, "{outcomes:?}");
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(smtp.mails()[0].to, vec!["alice@example.com"]);

    // Speaking plain SMTP to the TLS port gets nowhere, and says so.
    let plain = text
        .replace("security = \"tls\"\nca_file = \"server.pem\"", PLAIN)
        .replace("name = \"nightly\"", "name = \"nightly-plain\"");
    let plain = plain.replace(
        "[notifiers.users]",
        "[notifiers.users]\ntimeout = \"2s\"\nattempts = 1",
    );
    let (report, ledger) = run_and_settle(&ws, &plain).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(!outcomes[0].sent, "{outcomes:?}");
    assert_eq!(smtp.mails().len(), 1);
}

#[tokio::test]
async fn a_server_offering_only_login_gets_login() {
    let ws = Workspace::new();
    let tls = self_signed(ws.path());
    let smtp = SmtpServer::start_with(Some(&tls), vec![AuthMechanism::Login]);
    let secure = format!(
        "ca_file = \"server.pem\"\nusername = \"{SMTP_USER}\"\npassword = \"{SMTP_PASSWORD}\""
    );
    let text = alice_and_admin(smtp.port, &secure);
    let (report, ledger) = run_and_settle(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let outcomes = notification_outcomes(&ledger, &report).await;
    assert!(outcomes[0].sent, "{outcomes:?}");
    assert_eq!(smtp.mails().len(), 1);
}

/// A notifier with `repeat_after` hears of a job that keeps failing once per that long (the
/// next one told says how many failed since when, and how many were held back), and with
/// `recovery` of the first success after them, though it is a failure handler only.
#[tokio::test]
async fn a_job_that_keeps_failing_is_told_once_per_repeat_after_then_its_recovery() {
    let (addr, calls) = webhook_server(StatusCode::OK).await;
    let ws = Workspace::new();
    let text = format!(
        r#"
[notifiers.ops]
type = "webhook"
url = "http://{addr}/hook/ops"
repeat_after = "1h"
recovery = true

[[jobs]]
name = "flaky"
schedule = "@daily"
source = {{ type = "file", path = "in/data.csv" }}
writers = [{{ type = "local", path = "out/data.csv" }}]
retry = {{ max_attempts = 1 }}
on_failure = ["ops"]
"#
    );
    let ledger = ws.ledger().await;
    let job = ws.job(&text, "flaky");
    let run = || async {
        let ctx = job
            .claim(&ledger, job.now_slot(), true)
            .await
            .expect("store")
            .expect("claimed");
        let report = job.runner.run(ctx).await;
        assert!(
            job.runner
                .notifications()
                .settle(Duration::from_secs(30))
                .await
        );
        report
    };
    let bodies = || -> Vec<serde_json::Value> {
        calls
            .lock()
            .expect("calls")
            .iter()
            .map(|call| serde_json::from_str(&call.body).expect("JSON"))
            .collect()
    };
    for _ in 0..2 {
        assert_eq!(run().await.status, RunStatus::Failed);
    }
    let told = bodies();
    assert_eq!(told.len(), 1, "the second failure is held back: {told:#?}");
    assert_eq!(told[0]["status"], "failed");
    assert!(told[0]["still_failing"].is_null(), "{:#}", told[0]);

    // As if the hour had passed since the first was told.
    let mut streak = ledger
        .store
        .streak("flaky", "ops")
        .await
        .expect("read")
        .expect("failing");
    assert_eq!((streak.failures, streak.suppressed), (2, 1));
    streak.last_told = Some(chrono::Utc::now() - chrono::Duration::hours(2));
    ledger
        .store
        .set_streak("flaky", "ops", &streak)
        .await
        .expect("write");
    assert_eq!(run().await.status, RunStatus::Failed);
    let told = bodies();
    assert_eq!(told.len(), 2, "{told:#?}");
    assert_eq!(told[1]["still_failing"]["failures"], 3, "{:#}", told[1]);
    assert_eq!(told[1]["still_failing"]["suppressed"], 1);

    std::fs::create_dir_all(ws.path().join("in")).expect("dir");
    std::fs::write(ws.path().join("in/data.csv"), "a,b\n").expect("input");
    assert_eq!(run().await.status, RunStatus::Succeeded);
    let told = bodies();
    assert_eq!(told.len(), 3, "the recovery is told: {told:#?}");
    assert_eq!(told[2]["status"], "succeeded");
    assert_eq!(told[2]["recovered"]["failures"], 3, "{:#}", told[2]);
    assert_eq!(
        ledger.store.streak("flaky", "ops").await.expect("read"),
        None,
        "the streak ended"
    );
    // The next success is an ordinary one: nobody hears of it.
    assert_eq!(run().await.status, RunStatus::Succeeded);
    assert_eq!(bodies().len(), 3);
}

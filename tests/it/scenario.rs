//! The seed scenario as shipped in `examples/seed-deliveries.toml`, run by the daemon with
//! its schedules compressed to seconds against local S3, FTPS, HTTP and SMTP servers.

use std::time::Duration;

use ferry::daemon::Event;
use ferry::runner::{RunReport, RunStatus};
use toml::{Table, Value};

use crate::support::daemon::boot;
use crate::support::ftp::{FtpServer, free_port};
use crate::support::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::support::smtp::{SMTP_PASSWORD, SMTP_USER, SmtpServer};
use crate::support::{Workspace, files_under, self_signed, serve};

const EXPORT: &str = "id,total\n1,9.99\n2,20.00\n";

fn table<'a>(doc: &'a mut Table, path: &[&str]) -> &'a mut Table {
    let mut at = doc;
    for key in path {
        at = at
            .get_mut(*key)
            .and_then(Value::as_table_mut)
            .unwrap_or_else(|| panic!("the example has [{}]", path.join(".")));
    }
    at
}

fn job(doc: &mut Table, index: usize) -> &mut Table {
    doc.get_mut("jobs")
        .and_then(Value::as_array_mut)
        .and_then(|jobs| jobs.get_mut(index))
        .and_then(Value::as_table_mut)
        .expect("the example's jobs")
}

fn writer(job: &mut Table) -> &mut Table {
    job.get_mut("writers")
        .and_then(Value::as_array_mut)
        .and_then(|writers| writers.first_mut())
        .and_then(Value::as_table_mut)
        .expect("a writer")
}

fn set(table: &mut Table, key: &str, value: impl Into<Value>) {
    table.insert(key.to_owned(), value.into());
}

/// Finished runs among `events`.
fn finished(events: &[Event]) -> Vec<&RunReport> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Finished(report) => Some(report.as_ref()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_runs_end_to_end() {
    let ws = Workspace::new();
    let tls = self_signed(ws.path());
    let smtp = SmtpServer::start(Some(&tls), true);
    let (s3, s3_root) = crate::support::s3::server().await;
    let ftp_root = tempfile::tempdir().expect("temp dir");
    let ftp_port = free_port();
    let mut ftp = FtpServer::start(ftp_root.path(), ftp_port, Some(&tls)).await;
    let erp =
        serve(axum::Router::new().route("/export.csv", axum::routing::get(|| async { EXPORT })))
            .await;

    // The example as shipped, pointed at the local servers, its schedules compressed.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/seed-deliveries.toml"
    ))
    .expect("the example");
    let mut doc: Table = shipped.parse().expect("the example is TOML");
    set(table(&mut doc, &["daemon"]), "shutdown_timeout", "20s");
    let retry = table(&mut doc, &["defaults", "retry"]);
    set(retry, "max_attempts", 2);
    set(retry, "initial_interval", "200ms");
    for name in ["users", "admin"] {
        let notifier = table(&mut doc, &["notifiers", name]);
        set(notifier, "host", "127.0.0.1");
        set(notifier, "port", i64::from(smtp.port));
        set(notifier, "ca_file", "server.pem");
        set(notifier, "username", SMTP_USER);
        notifier.remove("password_env");
        set(notifier, "password_file", "secrets/smtp");
    }
    let dump = job(&mut doc, 0);
    set(dump, "schedule", "*/2 * * * * *");
    let fake_dump: Vec<Value> = ["sh", "-c", "head -c 3000000 /dev/urandom"]
        .into_iter()
        .map(Value::from)
        .collect();
    let source = dump
        .get_mut("source")
        .and_then(Value::as_table_mut)
        .expect("a source");
    set(source, "command", fake_dump);
    let s3_writer = writer(dump);
    set(s3_writer, "bucket", BUCKET);
    set(s3_writer, "endpoint", format!("http://{}", s3.addr));
    set(s3_writer, "path_style", true);
    set(s3_writer, "region", "us-east-1");
    s3_writer.remove("access_key_id_env");
    set(s3_writer, "access_key_id", ACCESS_KEY);
    s3_writer.remove("secret_access_key_env");
    set(s3_writer, "secret_access_key_file", "secrets/s3");
    let export = job(&mut doc, 1);
    set(export, "schedule", "*/3 * * * * *");
    let source = export
        .get_mut("source")
        .and_then(Value::as_table_mut)
        .expect("a source");
    set(source, "url", format!("http://{erp}/export.csv"));
    let ftp_writer = writer(export);
    set(ftp_writer, "host", "127.0.0.1");
    set(ftp_writer, "port", i64::from(ftp_port));
    set(ftp_writer, "username", crate::support::ftp::USER);
    set(ftp_writer, "password_file", "secrets/ftp");
    set(ftp_writer, "ca_file", "server.pem");
    let text = toml::to_string(&doc).expect("TOML");
    ws.secret("smtp", SMTP_PASSWORD);
    ws.secret("s3", SECRET_KEY);
    ws.secret("ftp", crate::support::ftp::PASSWORD);
    let mut daemon = boot(&ws.job_file(&text));

    // Both deliveries succeed at least once…
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !["hourly-dump", "weekday-export"].iter().all(|name| {
        finished(&events)
            .iter()
            .any(|r| r.job == *name && r.status == RunStatus::Succeeded)
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no success of both jobs: {events:#?}"
        );
        events.extend(daemon.collect(Duration::from_millis(500)).await);
    }
    // …then the partner's server goes away, and the export fails after its retries.
    ftp.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !finished(&events)
        .iter()
        .any(|r| r.job == "weekday-export" && r.status == RunStatus::Failed)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failure of the export: {events:#?}"
        );
        events.extend(daemon.collect(Duration::from_millis(500)).await);
    }
    // Shutting down lets the last notifications go out.
    events.extend(daemon.stop().await);
    let runs = finished(&events);
    let mails = smtp.mails();
    eprintln!(
        "runs: {:?}; mails: {}",
        runs.iter()
            .map(|r| format!("{} {}", r.job, r.status.as_str()))
            .collect::<Vec<_>>(),
        mails.len()
    );

    for run in &runs {
        let to_users: Vec<_> = mails
            .iter()
            .filter(|m| m.to == ["analysts@example.com"] && m.subject().starts_with(&run.job))
            .collect();
        let to_admin: Vec<_> = mails
            .iter()
            .filter(|m| m.to == ["sysadmin@example.com"] && m.text().contains(&run.run_id))
            .collect();
        match run.status {
            RunStatus::Succeeded => {
                let link = run.deliveries[0].link.clone().expect("a link");
                assert!(
                    to_users.iter().any(|m| m.text().contains(&link)),
                    "the users got {link} for {}: {mails:#?}",
                    run.run_id
                );
                assert!(to_admin.is_empty(), "{to_admin:#?}");
            }
            RunStatus::Failed => {
                assert_eq!(to_admin.len(), 1, "one mail per failed run: {to_admin:#?}");
                let text = to_admin[0].text();
                assert!(text.contains("FAILED"), "{text}");
                assert!(text.contains("Attempts:   2"), "{text}");
                assert!(text.contains("Error (network)"), "{text}");
            }
            RunStatus::Lost => panic!("one daemon: no run is taken over: {run:?}"),
        }
    }
    let dump_link = runs
        .iter()
        .find(|r| r.job == "hourly-dump" && r.status == RunStatus::Succeeded)
        .and_then(|r| r.deliveries[0].link.clone())
        .expect("a dump link");
    assert!(
        dump_link.contains("X-Amz-Signature="),
        "a presigned link: {dump_link}"
    );
    let export_link = runs
        .iter()
        .find(|r| r.job == "weekday-export" && r.status == RunStatus::Succeeded)
        .and_then(|r| r.deliveries[0].link.clone())
        .expect("an export link");
    assert!(
        export_link.starts_with(&format!("ftp://127.0.0.1:{ftp_port}/in/export-")),
        "{export_link}"
    );

    // What was delivered is there, and nothing half-written.
    let exported = files_under(ftp_root.path());
    assert_eq!(exported.len(), 1, "{exported:?}");
    assert_eq!(
        std::fs::read_to_string(ftp_root.path().join(&exported[0])).expect("export"),
        EXPORT
    );
    let dumps = files_under(&s3_root.path().join(BUCKET));
    assert!(
        dumps
            .iter()
            .any(|f| f.starts_with("shop/") && f.ends_with(".dump")),
        "{dumps:?}"
    );
}

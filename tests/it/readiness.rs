//! Jobs that produce partitions and jobs that require them: the two-job scenario of seed
//! 003's use case 2, run in one daemon's store.

use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use ferry::error::ErrorKind;
use ferry::runner::{RunReport, RunStatus};
use ferry::state::Ledger;

use crate::support::Workspace;
use crate::support::smtp::{SmtpServer, email_notifier};

/// `ingest` fills source `erp.orders` by running `ingest` (a shell command); `export`
/// requires it, waiting at most `wait`, and records when its source started (ms since the
/// epoch). The administrator hears of failures.
fn jobs(smtp_port: u16, ingest: &str, wait: &str) -> String {
    email_notifier(
        "admin",
        smtp_port,
        &["admin@example.com"],
        r#"security = "none""#,
    ) + &format!(
        r#"
[[jobs]]
name = "ingest"
schedule = "0 * * * *"
partition = {{ source = "erp.orders" }}
source = {{ type = "command", command = ["sh", "-c", "{ingest}"] }}
writers = [{{ type = "local", path = "ingested/{{scheduled:%H}}.csv" }}]
retry = {{ max_attempts = 1 }}

[[jobs]]
name = "export"
schedule = "0 * * * *"
requires = [{{ source = "erp.orders", wait = "{wait}" }}]
source = {{ type = "command", command = ["sh", "-c", "date +%s%3N"] }}
writers = [{{ type = "local", path = "exported/{{scheduled:%H}}.txt" }}]
on_failure = ["admin"]
"#
    )
}

/// Runs both jobs of `text` for the same slot at once, recorded in `ledger`.
async fn run_both(ws: &Workspace, text: &str, ledger: &Ledger) -> (RunReport, RunReport) {
    let jobs = ws.jobs(text);
    let slot = chrono_tz::UTC
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("slot");
    let (ingest, export) = (&jobs[0], &jobs[1]);
    let (a, b) = tokio::join!(
        async {
            // export starts waiting first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            ingest.run_claimed(ledger, slot).await
        },
        export.run_claimed(ledger, slot)
    );
    let settled = export
        .runner
        .notifications()
        .settle(Duration::from_secs(30))
        .await;
    assert!(settled, "notifications finish");
    (
        a.expect("store").expect("claimed"),
        b.expect("store").expect("claimed"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_starts_as_soon_as_ingest_unlocks() {
    let smtp = SmtpServer::start(None, false);
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let (ingest, export) = run_both(
        &ws,
        &jobs(smtp.port, "sleep 1.5; echo id,total", "1m"),
        &ledger,
    )
    .await;
    assert_eq!(ingest.status, RunStatus::Succeeded, "{ingest:#?}");
    assert_eq!(export.status, RunStatus::Succeeded, "{export:#?}");
    // ingest's partition [11:00, 12:00) was unlocked when it delivered; export's source
    // started within a second of that (woken by the unlock, not by its next poll).
    let partitions = ledger
        .store
        .partitions(Some("erp.orders"), 10)
        .await
        .expect("partitions");
    assert_eq!(partitions.len(), 1, "{partitions:#?}");
    let partition = &partitions[0];
    assert_eq!(partition.state, "unlocked");
    assert_eq!(
        partition.start,
        Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0)
            .single()
            .expect("start")
    );
    let unlocked_ms = partition.updated_at.timestamp_millis();
    let started: i64 = std::fs::read_to_string(ws.path().join("exported/12.txt"))
        .expect("export's output")
        .trim()
        .parse()
        .expect("a time in ms");
    let lag = started - unlocked_ms;
    assert!(
        (0..1000).contains(&lag),
        "export started {lag} ms after the unlock"
    );
    assert!(
        smtp.mails().is_empty(),
        "nobody is mailed: {:#?}",
        smtp.mails()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_fails_not_ready_when_ingest_fails_and_the_admin_is_mailed_once() {
    let smtp = SmtpServer::start(None, false);
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let (ingest, export) = run_both(
        &ws,
        &jobs(smtp.port, "echo broken >&2; exit 3", "3s"),
        &ledger,
    )
    .await;
    assert_eq!(ingest.status, RunStatus::Failed);
    assert_eq!(export.status, RunStatus::Failed);
    let failure = export.error.as_ref().expect("a failure");
    assert_eq!(failure.kind, ErrorKind::NotReady, "{failure:#?}");
    let text = ferry::error::display_chain(&failure.chain);
    assert!(
        text.contains("required source erp.orders not ready"),
        "{text}"
    );
    // The reason names ingest's failed run and why it failed.
    assert!(
        text.contains("locked by ingest") && text.contains(&ingest.run_id),
        "{text}"
    );
    assert!(text.contains("exit"), "{text}");
    assert_eq!(export.attempts, 1, "not_ready is not retried by default");
    assert!(!ws.path().join("exported").exists(), "export wrote nothing");
    // The partition stays locked (not ready) with the failure as the reason.
    let readiness = ledger
        .store
        .readiness(
            "erp.orders",
            Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0)
                .single()
                .expect("start"),
            Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
                .single()
                .expect("end"),
        )
        .await
        .expect("readiness");
    assert!(!readiness.is_ready());
    // One mail to the administrator, about export (ingest has no failure handler).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(
        mails[0]
            .to
            .iter()
            .any(|to| to.contains("admin@example.com"))
    );
    assert!(mails[0].text().contains("export"), "{}", mails[0].text());
    assert!(mails[0].text().contains("not_ready"), "{}", mails[0].text());
}

#[tokio::test]
async fn a_marker_is_written_beside_every_delivery_once_all_delivered() {
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let text = r#"
[[jobs]]
name = "daily"
schedule = "0 0 * * *"
partition = { source = "shop.daily" }
marker = { name = "_manifest.json", format = "manifest" }
source = { type = "inline", data = "id,total\n1,9.99\n" }
writers = [
  { type = "local", path = "a/{scheduled:%F}/orders.csv" },
  { type = "local", path = "b/orders-{scheduled:%F}.csv" },
]
"#;
    let report = ws.run_first(text, Some(&ledger)).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let day = report.slot[..10].to_owned();
    for manifest in [
        format!("a/{day}/_manifest.json"),
        "b/_manifest.json".to_owned(),
    ] {
        let text = std::fs::read_to_string(ws.path().join(&manifest)).expect("the manifest");
        let manifest: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(manifest["job"], "daily");
        assert_eq!(manifest["source"], "shop.daily");
        assert_eq!(manifest["run_id"], report.run_id.as_str());
        let deliveries = manifest["deliveries"].as_array().expect("deliveries");
        assert_eq!(deliveries.len(), 2, "{manifest}");
        for (delivery, receipt) in deliveries.iter().zip(&report.deliveries) {
            assert_eq!(delivery["sha256"], receipt.sha256.as_str());
            assert_eq!(delivery["bytes"], receipt.bytes);
            assert_eq!(delivery["location"], receipt.location.as_str());
        }
    }
    // Not counted as deliveries of the run.
    assert_eq!(report.deliveries.len(), 2);

    // `marker = "_SUCCESS"`: an empty file; and none at all when a writer fails.
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("blocked"),
        "a file where a directory should be",
    )
    .expect("file");
    let text = r#"
[[jobs]]
name = "daily"
schedule = "0 0 * * *"
partition = { source = "shop.daily" }
marker = "_SUCCESS"
retry = { max_attempts = 1 }
source = { type = "inline", data = "x" }
writers = [
  { type = "local", path = "ok/data.csv" },
  { type = "local", path = "blocked/data.csv" },
]
"#;
    let ledger = ws.ledger().await;
    let job = ws.job(text, "daily");
    let at = |day: u32| {
        chrono_tz::UTC
            .with_ymd_and_hms(2026, 11, day, 0, 0, 0)
            .single()
            .expect("slot")
    };
    let run = |day| job.run_claimed(&ledger, at(day));
    let failed = run(23).await.expect("store").expect("claimed");
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(
        ws.path().join("ok/data.csv").exists(),
        "the first writer delivered"
    );
    assert!(
        !ws.path().join("ok/_SUCCESS").exists(),
        "no marker before every writer delivered"
    );
    std::fs::remove_file(ws.path().join("blocked")).expect("unblock");
    let fixed = run(24).await.expect("store").expect("claimed");
    assert_eq!(fixed.status, RunStatus::Succeeded, "{fixed:#?}");
    assert_eq!(
        std::fs::read(ws.path().join("ok/_SUCCESS")).expect("marker"),
        b""
    );
    assert!(ws.path().join("blocked/_SUCCESS").exists());
}

//! The `files` source: new files in a temporary drop directory, each delivered on its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry::runner::{RunReport, RunStatus};
use ferry::state::Ledger;

use crate::support::Workspace;

fn job(extra: &str) -> String {
    format!(
        r#"[[jobs]]
name = "drop"
schedule = "@hourly"
source = {{ type = "files", glob = "drop/*.csv"{extra} }}
writers = [{{ type = "local", path = "out/{{file_stem}}-{{scheduled:%H}}.csv" }}]
"#
    )
}

/// Runs `text`'s job for the slot `hour` o'clock, recorded in `ledger`.
async fn run_at(ws: &Workspace, ledger: &Ledger, text: &str, hour: u32) -> RunReport {
    let job = ws.job(text, "drop");
    let slot =
        crate::support::utc(&format!("2026-11-23T{hour:02}:00:00Z")).with_timezone(&chrono_tz::UTC);
    job.run_claimed(ledger, slot)
        .await
        .expect("store")
        .expect("claimed")
}

fn drop_file(ws: &Workspace, name: &str, text: &str) {
    std::fs::create_dir_all(ws.path().join("drop")).expect("drop dir");
    std::fs::write(ws.path().join("drop").join(name), text).expect("write");
}

/// Makes a dropped file look `age` old.
fn age(ws: &Workspace, name: &str, age: Duration) {
    let file = std::fs::File::options()
        .write(true)
        .open(ws.path().join("drop").join(name))
        .expect("open");
    file.set_modified(SystemTime::now() - age)
        .expect("set mtime");
}

fn delivered(report: &RunReport) -> Vec<String> {
    let mut names: Vec<String> = report
        .deliveries
        .iter()
        .map(|d| d.location.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

/// Three runs with files added between them deliver each file once, each with its own
/// receipt under its own name; a file whose content changed goes again.
#[tokio::test]
async fn each_new_or_changed_file_is_delivered_once() {
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let text = job("");
    drop_file(&ws, "a.csv", "a\n");
    drop_file(&ws, "b.csv", "bb\n");
    drop_file(&ws, "notes.txt", "not matched\n");

    let first = run_at(&ws, &ledger, &text, 10).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:#?}");
    assert_eq!(delivered(&first), ["a-10.csv", "b-10.csv"]);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out/b-10.csv")).expect("read"),
        "bb\n"
    );
    let sha = |text: &str| crate::support::sha256_hex(text.as_bytes());
    assert!(
        first
            .deliveries
            .iter()
            .any(|d| d.sha256 == sha("a\n") && d.bytes == 2)
    );

    drop_file(&ws, "c.csv", "ccc\n");
    let second = run_at(&ws, &ledger, &text, 11).await;
    assert_eq!(second.status, RunStatus::Succeeded, "{second:#?}");
    assert_eq!(delivered(&second), ["c-11.csv"]);

    drop_file(&ws, "a.csv", "a, changed\n");
    let third = run_at(&ws, &ledger, &text, 12).await;
    assert_eq!(delivered(&third), ["a-12.csv"]);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out/a-12.csv")).expect("read"),
        "a, changed\n"
    );

    let fourth = run_at(&ws, &ledger, &text, 13).await;
    assert_eq!(fourth.status, RunStatus::Succeeded, "{fourth:#?}");
    assert!(fourth.deliveries.is_empty(), "nothing new: {fourth:#?}");
}

/// A file younger than `min_age` waits for a later run; a pattern that matches nothing is a
/// successful run with nothing delivered.
#[tokio::test]
async fn young_files_wait_and_nothing_to_deliver_succeeds() {
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let text = job(r#", min_age = "1m""#);
    let empty = run_at(&ws, &ledger, &text, 9).await;
    assert_eq!(empty.status, RunStatus::Succeeded, "{empty:#?}");
    assert!(empty.deliveries.is_empty());

    drop_file(&ws, "old.csv", "old\n");
    age(&ws, "old.csv", Duration::from_secs(600));
    drop_file(&ws, "young.csv", "still being written\n");
    let first = run_at(&ws, &ledger, &text, 10).await;
    assert_eq!(delivered(&first), ["old-10.csv"]);

    age(&ws, "young.csv", Duration::from_secs(120));
    let second = run_at(&ws, &ledger, &text, 11).await;
    assert_eq!(delivered(&second), ["young-11.csv"]);
}

/// `after = "delete"` removes a file once every writer has it; `after = "move:DIR"` moves it.
#[tokio::test]
async fn delivered_files_are_deleted_or_moved() {
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    drop_file(&ws, "x.csv", "x\n");
    let report = run_at(&ws, &ledger, &job(r#", after = "delete""#), 10).await;
    assert_eq!(delivered(&report), ["x-10.csv"]);
    assert!(!ws.path().join("drop/x.csv").exists());

    drop_file(&ws, "y.csv", "y\n");
    let report = run_at(&ws, &ledger, &job(r#", after = "move:done""#), 11).await;
    assert_eq!(delivered(&report), ["y-11.csv"]);
    assert!(!ws.path().join("drop/y.csv").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("done/y.csv")).expect("moved"),
        "y\n"
    );

    // The next run drops the files that are gone from the job's cursor.
    let report = run_at(&ws, &ledger, &job(""), 12).await;
    assert!(report.deliveries.is_empty(), "{report:#?}");
    let cursor = ledger.store.cursor("drop").await.expect("store");
    let cursor: serde_json::Value = serde_json::from_str(&cursor.expect("a cursor")).expect("json");
    assert_eq!(cursor["files"], serde_json::json!({}), "{cursor}");
}

/// An HTTP server on 127.0.0.1 that takes every PUT except the first of `/in/2.csv`, which
/// it answers 503; with the paths it was sent, in order. The body is read before the answer:
/// a server that answers first makes the writer report an upload it did not take whole.
async fn refusing_2_csv_once() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let puts: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&puts);
    let server =
        axum::Router::new().fallback(move |uri: axum::http::Uri, _body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let mut puts = seen.lock().expect("lock");
                puts.push(uri.path().to_owned());
                let tries = puts.iter().filter(|p| *p == uri.path()).count();
                match (uri.path(), tries) {
                    ("/in/2.csv", 1) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    _ => axum::http::StatusCode::CREATED,
                }
            }
        });
    (crate::support::serve(server).await, puts)
}

/// [`retrying_job`] run at 10:00 over the files 1.csv, 2.csv and 3.csv (each holding its name).
async fn run_three_files(writers: &str) -> (Workspace, RunReport) {
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    for name in ["1.csv", "2.csv", "3.csv"] {
        drop_file(&ws, name, name);
    }
    let report = run_at(&ws, &ledger, &retrying_job(writers), 10).await;
    (ws, report)
}

/// The job of these tests with `writers` instead of its local writer and up to 3 attempts.
fn retrying_job(writers: &str) -> String {
    job("")
        .replace(
            r#"{ type = "local", path = "out/{file_stem}-{scheduled:%H}.csv" }"#,
            writers,
        )
        .replace(
            "writers = [",
            "retry = { max_attempts = 3, initial_interval = \"10ms\" }\nwriters = [",
        )
}

/// A local writer that refuses to overwrite and an HTTP writer to `addr`.
fn local_and_http(addr: std::net::SocketAddr) -> String {
    format!(
        r#"{{ type = "local", path = "out/{{file_name}}", overwrite = false }},
  {{ type = "http", url = "http://{addr}/in/{{file_name}}" }}"#
    )
}

/// A file whose delivery fails (the server answers 503 once) fails the attempt; the retry
/// does not deliver the files before it again, and the run's receipts cover every file.
#[tokio::test]
async fn a_retry_does_not_deliver_a_file_twice() {
    let (addr, puts) = refusing_2_csv_once().await;
    let (_ws, report) = run_three_files(&format!(
        r#"{{ type = "http", url = "http://{addr}/in/{{file_name}}" }}"#
    ))
    .await;
    let puts = puts.lock().expect("lock").clone();
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?} {puts:?}");
    assert_eq!(report.attempts, 2, "{report:#?}");
    assert_eq!(delivered(&report), ["1.csv", "2.csv", "3.csv"]);
    assert_eq!(puts, ["/in/1.csv", "/in/2.csv", "/in/2.csv", "/in/3.csv"]);
}

/// Two writers, one of which refuses a file once (503): the retry sends that file only to
/// the writer that missed it. The other one keeps what it has (`overwrite = false` would
/// refuse a second copy) and the run's receipts hold each file once per writer.
#[tokio::test]
async fn a_retry_sends_a_file_only_to_the_writers_that_missed_it() {
    let (addr, puts) = refusing_2_csv_once().await;
    let (ws, report) = run_three_files(&local_and_http(addr)).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 2, "{report:#?}");
    assert_eq!(
        delivered(&report),
        ["1.csv", "1.csv", "2.csv", "2.csv", "3.csv", "3.csv"]
    );
    assert_eq!(
        *puts.lock().expect("lock"),
        ["/in/1.csv", "/in/2.csv", "/in/2.csv", "/in/3.csv"]
    );
    for name in ["1.csv", "2.csv", "3.csv"] {
        let got = std::fs::read_to_string(ws.path().join("out").join(name)).expect("delivered");
        assert_eq!(got, name);
    }
}

/// Every writer has a file but the store refuses to note it as delivered (a trigger makes
/// the cursor's write fail, on every attempt): each retry tries only the note again, and no
/// writer is sent the file twice.
#[tokio::test]
async fn a_retry_after_the_note_failed_sends_the_file_to_no_writer_again() {
    use sqlx::{Connection as _, Executor as _};
    let (addr, puts) = refusing_2_csv_once().await;
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let url = format!("sqlite://{}", ws.path().join("ferry-state.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the store's database");
    conn.execute(
        "CREATE TRIGGER refuse_cursors BEFORE INSERT ON ferry_cursors
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .await
    .expect("trigger");
    drop_file(&ws, "1.csv", "1.csv");
    let text = retrying_job(&local_and_http(addr));
    let report = run_at(&ws, &ledger, &text, 10).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:#?}");
    assert_eq!(report.attempts, 3, "{report:#?}");
    let error = format!("{:?}", report.error);
    assert!(error.contains("note the file as delivered"), "{error}");
    assert!(!error.contains("overwrite"), "{error}");
    assert_eq!(*puts.lock().expect("lock"), ["/in/1.csv"]);
    let got = std::fs::read_to_string(ws.path().join("out/1.csv")).expect("delivered");
    assert_eq!(got, "1.csv");
}

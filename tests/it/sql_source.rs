//! The `sql` source against SQLite (a file the test makes) and the local PostgreSQL
//! (`FERRY_TEST_POSTGRES_URL`).

use ferry::error::ErrorKind;
use ferry::runner::{RunReport, RunStatus};
use sqlx::Connection as _;

use crate::support::{Workspace, run_job};

/// A job writing `source` to `out/result`, fired at 2026-03-01 10:00 UTC by `run_job`.
fn job(source: &str) -> String {
    format!(
        r#"[[jobs]]
name = "export"
schedule = "@hourly"
source = {source}
writers = [{{ type = "local", path = "out/result" }}]
retry = {{ max_attempts = 2, initial_interval = "10ms" }}
"#
    )
}

fn delivered(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.path().join("out/result")).expect("delivered")
}

fn failure(report: &RunReport) -> (ErrorKind, String) {
    let error = report.error.as_ref().expect("a failure");
    (error.kind, error.chain.join(": "))
}

/// A SQLite database in the workspace with rows of every storage class, and awkward text.
async fn sqlite_orders(ws: &Workspace) {
    let url = format!("sqlite://{}?mode=rwc", ws.path().join("shop.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("create the database");
    for statement in [
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, job TEXT, note TEXT, amount REAL, raw BLOB)",
        "INSERT INTO orders VALUES (1, 'export', 'plain', 9.5, NULL)",
        "INSERT INTO orders VALUES (2, 'export', 'a, \"quoted\" note\nover two lines', NULL, x'00ff')",
        "INSERT INTO orders VALUES (3, 'export', '', 0.25, NULL)",
        "INSERT INTO orders VALUES (4, 'other', 'not this job', 1.0, NULL)",
    ] {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect(statement);
    }
}

/// CSV from SQLite: a header from the statement, each storage class as text, quoting where
/// needed (an empty text quoted, NULL empty), the job's name bound as a parameter.
#[tokio::test]
async fn sqlite_rows_become_csv_with_bound_parameters() {
    let ws = Workspace::new();
    sqlite_orders(&ws).await;
    let source = r#"{ type = "sql", url = "sqlite://shop.db", query = "SELECT id, note, amount, raw FROM orders WHERE job = ?1 ORDER BY id", params = ["job"] }"#;
    let report = run_job(&ws, &job(source), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        delivered(&ws),
        "id,note,amount,raw\n1,plain,9.5,\n2,\"a, \"\"quoted\"\" note\nover two lines\",,\\x00ff\n3,\"\",0.25,\n"
    );
}

/// JSON Lines from SQLite: one object a row, columns in order, numbers as numbers, NULL as
/// null; a query without rows delivers an empty file (CSV: the header alone).
#[tokio::test]
async fn sqlite_rows_become_json_lines_and_no_rows_is_no_error() {
    let ws = Workspace::new();
    sqlite_orders(&ws).await;
    let source = r#"{ type = "sql", url = "sqlite://shop.db", query = "SELECT id, amount, note FROM orders WHERE id < 3 ORDER BY id", format = "jsonl" }"#;
    let report = run_job(&ws, &job(source), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        delivered(&ws),
        "{\"id\":1,\"amount\":9.5,\"note\":\"plain\"}\n{\"id\":2,\"amount\":null,\"note\":\"a, \\\"quoted\\\" note\\nover two lines\"}\n"
    );

    let none = r#"{ type = "sql", url = "sqlite://shop.db", query = "SELECT id, note FROM orders WHERE id > 100" }"#;
    let report = run_job(&ws, &job(none), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(delivered(&ws), "id,note\n");
}

/// A query the database refuses fails at once as `rejected`, with the database's words; a
/// database file that is not there is not created.
#[tokio::test]
async fn a_failing_query_and_a_missing_database() {
    let ws = Workspace::new();
    sqlite_orders(&ws).await;
    let source =
        r#"{ type = "sql", url = "sqlite://shop.db", query = "SELECT * FROM no_such_table" }"#;
    let report = run_job(&ws, &job(source), "export").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.attempts, 1, "a refused query is not retried");
    let (kind, text) = failure(&report);
    assert_eq!(kind, ErrorKind::Rejected, "{text}");
    assert!(text.contains("no such table: no_such_table"), "{text}");
    assert!(!ws.path().join("out/result").exists());

    let missing = r#"{ type = "sql", url = "sqlite://missing.db", query = "SELECT 1" }"#;
    let report = run_job(&ws, &job(missing), "export").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert!(!ws.path().join("missing.db").exists(), "not created");
}

/// The PostgreSQL URL from `FERRY_TEST_POSTGRES_URL`; `None` (the test is not run, and says
/// so) when unset.
fn postgres() -> Option<String> {
    let url = std::env::var("FERRY_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        eprintln!("sql source PostgreSQL test not run: FERRY_TEST_POSTGRES_URL is not set");
    }
    url
}

/// A table of this test's own on PostgreSQL, filled with awkward rows; dropped at the end.
async fn pg_orders(url: &str, table: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    for statement in [
        format!("DROP TABLE IF EXISTS {table}"),
        format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, placed timestamptz, note text, amount numeric, paid boolean)"
        ),
        format!(
            "INSERT INTO {table} VALUES (1, '2026-11-23 11:00:00+00', 'plain', 9.50, true), (2, '2026-11-23 11:30:00+00', 'a, \"quoted\" note', NULL, false), (3, '2026-11-23 11:45:00+00', '', 0.25, NULL), (4, '2026-11-23 13:00:00+00', 'after the slot', 1, true)"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
            .execute(&mut conn)
            .await
            .expect("set up");
    }
    conn
}

/// On PostgreSQL, CSV without parameters comes from COPY and with parameters from casting
/// each column to text: the two are byte for byte the same. The slot is bound as a
/// timestamp (rows placed before 12:00 are the run's).
#[tokio::test]
async fn postgres_csv_by_copy_and_by_rows_agree() {
    let Some(url) = postgres() else {
        return;
    };
    let table = "ferry_sql_source_csv";
    let mut conn = pg_orders(&url, table).await;
    let ws = Workspace::new();
    let copy = format!(
        r#"{{ type = "sql", url = "{url}", query = "SELECT id, placed, note, amount, paid FROM {table} WHERE placed < '2026-11-23 12:00:00+00' ORDER BY id" }}"#
    );
    let report = run_job(&ws, &job(&copy), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let by_copy = delivered(&ws);
    assert_eq!(
        by_copy,
        "id,placed,note,amount,paid\n1,2026-11-23 11:00:00+00,plain,9.50,t\n2,2026-11-23 11:30:00+00,\"a, \"\"quoted\"\" note\",,f\n3,2026-11-23 11:45:00+00,\"\",0.25,\n"
    );
    let bound = format!(
        r#"{{ type = "sql", url = "{url}", query = "SELECT id, placed, note, amount, paid FROM {table} WHERE placed < $1 ORDER BY id", params = ["scheduled"] }}"#
    );
    let report = run_job(&ws, &job(&bound), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(delivered(&ws), by_copy);

    let json = format!(
        r#"{{ type = "sql", url = "{url}", query = "SELECT id, amount, paid, note FROM {table} WHERE placed < $1 AND note <> $2 ORDER BY id", params = ["scheduled", "job"], format = "jsonl" }}"#
    );
    let report = run_job(&ws, &job(&json), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        delivered(&ws),
        "{\"id\":1,\"amount\":9.50,\"paid\":true,\"note\":\"plain\"}\n{\"id\":2,\"amount\":null,\"paid\":false,\"note\":\"a, \\\"quoted\\\" note\"}\n{\"id\":3,\"amount\":0.25,\"paid\":null,\"note\":\"\"}\n"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut conn)
        .await
        .expect("drop");
}

/// PostgreSQL's refusals: a syntax error is `rejected` (not retried), two columns of one
/// name cannot make a CSV header, and a server that is not there is a `network` failure
/// (retried).
#[tokio::test]
async fn postgres_failures_are_told_apart() {
    let Some(url) = postgres() else {
        return;
    };
    let ws = Workspace::new();
    let report = run_job(
        &ws,
        &job(&format!(
            r#"{{ type = "sql", url = "{url}", query = "SELEC 1" }}"#
        )),
        "export",
    )
    .await;
    assert_eq!(report.attempts, 1);
    let (kind, text) = failure(&report);
    assert_eq!(kind, ErrorKind::Rejected, "{text}");
    assert!(text.contains("syntax error"), "{text}");

    let report = run_job(
        &ws,
        &job(&format!(
            r#"{{ type = "sql", url = "{url}", query = "SELECT 1 AS a, 2 AS a WHERE $1 <> ''", params = ["job"] }}"#
        )),
        "export",
    )
    .await;
    let (kind, text) = failure(&report);
    assert_eq!(kind, ErrorKind::Rejected, "{text}");
    assert!(text.contains("two columns named a"), "{text}");

    let port = crate::support::ftp::free_port();
    let report = run_job(
        &ws,
        &job(&format!(
            r#"{{ type = "sql", url = "postgres://postgres@127.0.0.1:{port}/test", query = "SELECT 1" }}"#
        )),
        "export",
    )
    .await;
    assert_eq!(report.attempts, 2, "{report:#?}");
    let (kind, text) = failure(&report);
    assert_eq!(kind, ErrorKind::Network, "{text}");
    assert!(!ws.path().join("out/result").exists());
}

/// `resume_key` on SQLite: rows read in pages ordered by the key give the same file as one
/// query (the CSV header once), and JSON Lines too.
#[tokio::test]
async fn sqlite_pages_by_a_key_give_the_same_rows() {
    let ws = Workspace::new();
    sqlite_orders(&ws).await;
    let whole = r#"{ type = "sql", url = "sqlite://shop.db", query = "SELECT id, note, amount FROM orders ORDER BY id" }"#;
    let report = run_job(&ws, &job(whole), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let expected = delivered(&ws);
    let paged = r#"{ type = "sql", url = "sqlite://shop.db", query = "SELECT id, note, amount FROM orders", resume_key = "id", page_rows = 2 }"#;
    let report = run_job(&ws, &job(paged), "export").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(delivered(&ws), expected);

    let wrong = paged.replace("resume_key = \"id\"", "resume_key = \"nope\"");
    let report = run_job(&ws, &job(&wrong), "export").await;
    let (kind, text) = failure(&report);
    assert_eq!(kind, ErrorKind::Rejected, "{text}");
    assert!(
        text.contains("resume_key nope is not a column of the query (it returns id, note, amount)"),
        "{text}"
    );
}

/// `resume_key` on PostgreSQL: a run whose connection is cut half-way (through a relay)
/// continues after the last key the writer holds. Every row is in the file once, in order,
/// the header once; the second attempt starts part-way.
#[tokio::test]
async fn postgres_cut_half_way_resumes_after_the_last_key() {
    let Some(url) = postgres() else {
        return;
    };
    let table = "ferry_sql_source_resume";
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    for statement in [
        format!("DROP TABLE IF EXISTS {table}"),
        format!("CREATE TABLE {table} (id int PRIMARY KEY, label text)"),
        format!(
            "INSERT INTO {table} SELECT n, repeat('x', 200) || n FROM generate_series(1, 40000) n"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
            .execute(&mut conn)
            .await
            .expect("set up");
    }
    let (relay, relayed) = crate::support::Relay::postgres(&url).await;
    let ws = Workspace::new();
    let ledger = ws.ledger().await;
    let text = job(&format!(
        r#"{{ type = "sql", url = "{relayed}", query = "SELECT id, label FROM {table}", resume_key = "id", page_rows = 1000 }}"#
    ))
    .replace(
        "retry = { max_attempts = 2, initial_interval = \"10ms\" }",
        "retry = { max_attempts = 6, initial_interval = \"200ms\" }\nrate_limit = \"2MiB\"",
    );
    let out = ws.path().join("out");
    let cutter = tokio::spawn(async move {
        crate::support::wait_until_held(&out, 3 << 20).await;
        relay.down();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        relay.up();
        relay
    });
    let report = ws.run_first(&text, Some(&ledger)).await;
    let _relay = cutter.await.expect("cut");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(report.attempts >= 2, "{report:#?}");
    assert!(
        report.resumed_from >= 3 << 20,
        "resumed part-way: {report:#?}"
    );
    eprintln!(
        "resumed from byte {} of {}; attempts {}",
        report.resumed_from, report.deliveries[0].bytes, report.attempts
    );
    let file = delivered(&ws);
    let mut lines = file.lines();
    assert_eq!(lines.next(), Some("id,label"));
    let ids: Vec<u32> = lines
        .map(|line| {
            line.split(',')
                .next()
                .expect("id")
                .parse()
                .expect("a number")
        })
        .collect();
    assert_eq!(
        ids,
        (1..=40000).collect::<Vec<_>>(),
        "every row once, in order"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut conn)
        .await
        .expect("drop");
}

/// The database URL's password never shows: not when the server is out of reach, not when
/// the URL itself is wrong.
#[tokio::test]
async fn the_urls_password_never_shows() {
    let ws = Workspace::new();
    let port = crate::support::ftp::free_port();
    for url in [
        format!("postgres://shop:SECRET-PW-7@127.0.0.1:{port}/shop"),
        "postgres://shop:SECRET-PW-7@127.0.0.1:notaport/shop".to_owned(),
        format!("postgres://shop:SECRET-PW-7@127.0.0.1:{port}/shop?sslmode=sometimes"),
    ] {
        ws.secret("db-url", &url);
        let text = job(r#"{ type = "sql", url_file = "secrets/db-url", query = "SELECT 1" }"#);
        let shown = match ferry::job::Job::build_all(&ws.config(&text), &Default::default()) {
            Err(err) => format!("{err:?} {err}"),
            Ok(mut jobs) => {
                let report = jobs.swap_remove(0).run(crate::support::slot()).await;
                assert_eq!(report.status, RunStatus::Failed, "{url}");
                format!("{report:?}")
            }
        };
        assert!(!shown.contains("SECRET-PW-7"), "{shown}");
    }
}

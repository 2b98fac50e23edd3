//! What monitoring sees: `/metrics` read by a real Prometheus, its counts after runs that
//! failed, were retried and succeeded, and `/readyz` through start-up and shutdown. The
//! daemon runs in-process on the system clock, with jobs due at the next whole seconds.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{Timelike, Utc};
use ferry::daemon::{Control, Event};
use ferry::runner::RunStatus;

use crate::support::Workspace;
use crate::support::daemon::{Booted, boot};

/// A cron schedule for the seconds `after` from now (in a minute's seconds, so it fires once).
fn in_seconds(after: &[u32]) -> String {
    let now = Utc::now().second();
    let seconds: Vec<String> = after.iter().map(|s| ((now + s) % 60).to_string()).collect();
    format!("{} * * * * *", seconds.join(","))
}

/// Boots the daemon on `jobs` with the API on a free port; returns it and the API's base URL.
async fn daemon_with_api(ws: &Workspace, api: &str, jobs: &str) -> (Booted, String) {
    let config = ws.job_file(&format!("[api]\nlisten = \"127.0.0.1:0\"\n{api}\n\n{jobs}"));
    let mut daemon = boot(&config);
    let (event, _) = daemon
        .until(Duration::from_secs(30), |e| {
            matches!(e, Event::Listening { .. })
        })
        .await;
    let Event::Listening { address } = event else {
        unreachable!()
    };
    (daemon, format!("http://{address}"))
}

/// Waits for `count` finished runs and returns their statuses by job.
async fn finished(daemon: &mut Booted, count: usize) -> Vec<(String, RunStatus)> {
    let mut reports = Vec::new();
    while reports.len() < count {
        if let (Event::Finished(report), _) = daemon
            .until(Duration::from_secs(30), |e| matches!(e, Event::Finished(_)))
            .await
        {
            reports.push((report.job.clone(), report.status));
        }
    }
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    reports
}

async fn get(url: &str, token: Option<&str>) -> (u16, String, String) {
    let request = reqwest::Client::new().get(url);
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, kind, response.text().await.expect("body"))
}

/// The one sample of `name` (with its labels as written) in OpenMetrics `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

#[tokio::test]
async fn metrics_count_runs_retries_and_bytes_for_the_read_token_only() {
    let ws = Workspace::new();
    let token = ws.secret("read", "r3ad-metrics");
    // "flaky" fails once (a transient `command` failure), then delivers "hello";
    // "broken" reads a file that is not there (`not_found`, never retried).
    let jobs = format!(
        r#"
[[jobs]]
name = "flaky"
schedule = "{schedule}"
source = {{ type = "command", command = ["sh", "-c", "if [ -e tried ]; then printf hello; else : > tried; exit 3; fi"] }}
retry = {{ max_attempts = 3, initial_interval = "10ms" }}
writers = [{{ type = "local", path = "out/flaky" }}]

[[jobs]]
name = "broken"
schedule = "{schedule}"
source = {{ type = "file", path = "missing.csv" }}
writers = [{{ type = "local", path = "out/broken" }}]
"#,
        schedule = in_seconds(&[2])
    );
    let (mut daemon, url) =
        daemon_with_api(&ws, &format!("read_token_file = {token:?}"), &jobs).await;
    let metrics = format!("{url}/metrics");

    let (status, _, body) = get(&metrics, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("ferry_"), "{body}");
    let (status, _, body) = get(&metrics, Some("not-it")).await;
    assert_eq!(status, 403, "{body}");

    assert_eq!(
        finished(&mut daemon, 2).await,
        [
            ("broken".to_owned(), RunStatus::Failed),
            ("flaky".to_owned(), RunStatus::Succeeded)
        ]
    );
    let (status, kind, text) = get(&metrics, Some("r3ad-metrics")).await;
    assert_eq!(status, 200, "{text}");
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let expect = [
        (
            "ferry_runs_total{job_name=\"flaky\",outcome=\"succeeded\"}",
            1.0,
        ),
        (
            "ferry_runs_total{job_name=\"broken\",outcome=\"failed\"}",
            1.0,
        ),
        (
            "ferry_attempts_total{job_name=\"flaky\",outcome=\"failed\"}",
            1.0,
        ),
        (
            "ferry_attempts_total{job_name=\"flaky\",outcome=\"succeeded\"}",
            1.0,
        ),
        (
            "ferry_attempts_total{job_name=\"broken\",outcome=\"failed\"}",
            1.0,
        ),
        (
            "ferry_retries_total{job_name=\"flaky\",kind=\"command\"}",
            1.0,
        ),
        (
            "ferry_delivered_bytes_total{job_name=\"flaky\",writer=\"local\"}",
            5.0,
        ),
        ("ferry_fire_lag_seconds_count", 2.0),
        ("ferry_run_duration_seconds_count{job_name=\"flaky\"}", 1.0),
        ("ferry_runs_in_flight", 0.0),
        ("ferry_jobs", 2.0),
        ("ferry_schedule_interval_seconds{job_name=\"flaky\"}", 60.0),
        ("ferry_store_errors_total", 0.0),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    // The not-found failure was not retried; the failed job has no last success.
    assert!(!text.contains("job_name=\"broken\",kind="), "{text}");
    assert!(
        !text.contains("ferry_last_success_timestamp_seconds{job_name=\"broken\"}"),
        "{text}"
    );
    let last = sample(
        &text,
        "ferry_last_success_timestamp_seconds{job_name=\"flaky\"}",
    )
    .expect("flaky's last success");
    let now = Utc::now().timestamp_millis() as f64 / 1e3;
    assert!(now - 30.0 < last && last <= now, "{last} vs now {now}");
    assert!(text.contains("ferry_build_info{version=\""), "{text}");

    // A restarted daemon reads the last success back from the store.
    daemon.stop().await;
    let (mut daemon, url) =
        daemon_with_api(&ws, &format!("read_token_file = {token:?}"), &jobs).await;
    daemon.ready().await;
    let (_, _, text) = get(&format!("{url}/metrics"), Some("r3ad-metrics")).await;
    let again = sample(
        &text,
        "ferry_last_success_timestamp_seconds{job_name=\"flaky\"}",
    );
    let again = again.expect("flaky's last success after a restart");
    assert!((again - last).abs() < 1.0, "{again} vs {last}");
    assert_eq!(
        sample(
            &text,
            "ferry_runs_total{job_name=\"flaky\",outcome=\"succeeded\"}"
        ),
        None,
        "counters start from zero in a new process"
    );
}

#[tokio::test]
async fn readyz_says_ready_while_armed_and_not_once_shutdown_begins() {
    let ws = Workspace::new();
    // The run waits for the test to create `go`.
    let jobs = format!(
        r#"
[[jobs]]
name = "slow"
schedule = "{}"
source = {{ type = "command", command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done; printf done"] }}
writers = [{{ type = "local", path = "out/slow" }}]
"#,
        in_seconds(&[2])
    );
    let (mut daemon, url) = daemon_with_api(&ws, "", &jobs).await;
    daemon.ready().await;
    let (status, _, body) = get(&format!("{url}/readyz"), None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, body) = get(&format!("{url}/healthz"), None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // /metrics is open when no read token is set.
    let (status, _, _) = get(&format!("{url}/metrics"), None).await;
    assert_eq!(status, 200);

    daemon
        .until(Duration::from_secs(30), |e| {
            matches!(e, Event::Started { .. })
        })
        .await;
    let (_, _, text) = get(&format!("{url}/metrics"), None).await;
    assert_eq!(sample(&text, "ferry_runs_in_flight"), Some(1.0), "{text}");

    daemon.control.send(Control::Shutdown).await.expect("send");
    let readyz = format!("{url}/readyz");
    let mut answer = (0, String::new());
    for _ in 0..100 {
        let (status, _, body) = get(&readyz, None).await;
        answer = (status, body);
        if answer.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answer.0, 503, "{answer:?}");
    assert!(answer.1.starts_with("not ready"), "{answer:?}");
    // Still alive while the run drains.
    assert_eq!(get(&format!("{url}/healthz"), None).await.0, 200);

    std::fs::write(ws.path().join("go"), "").expect("go");
    let (report, _) = daemon.finished().await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    daemon
        .until(Duration::from_secs(30), |e| {
            matches!(e, Event::Stopped { cancelled: 0 })
        })
        .await;
}

/// The Prometheus binary to test against, from `FERRY_TEST_PROMETHEUS` (set by `.ci/run`,
/// which installs Debian's `prometheus`).
fn prometheus() -> Option<std::ffi::OsString> {
    let binary = std::env::var_os("FERRY_TEST_PROMETHEUS");
    if binary.is_none() {
        eprintln!("Prometheus test not run: FERRY_TEST_PROMETHEUS is not set");
    }
    binary
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The alert rules README.md's Monitoring section gives (its YAML block that starts with
/// `groups:`).
fn readme_alert_rules() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("```yaml\ngroups:")
        .expect("README's alert rules")
        + "```yaml\n".len();
    let end = start + readme[start..].find("```").expect("the block's end");
    readme[start..end].to_owned()
}

/// Prometheus scraping `target` every second with README's alert rules, its data in `dir`;
/// killed when dropped.
fn start_prometheus(
    binary: &std::ffi::OsStr,
    dir: &Path,
    target: &str,
) -> (tokio::process::Child, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: ferry\n    authorization:\n      credentials: r3ad-metrics\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("prometheus.yml");
    std::fs::write(dir.join("rules.yml"), readme_alert_rules()).expect("rules.yml");
    let port = free_port();
    let child = tokio::process::Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("prometheus.log")).expect("log"),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    (child, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn prometheus_scrapes_the_runs_and_sees_the_target_up() {
    let Some(binary) = prometheus() else {
        return;
    };
    let ws = Workspace::new();
    let token = ws.secret("read", "r3ad-metrics");
    let jobs = format!(
        r#"
[[jobs]]
name = "tick"
schedule = "{}"
source = {{ type = "inline", data = "tick" }}
writers = [{{ type = "local", path = "out/tick/{{scheduled:%H%M%S}}" }}]
"#,
        in_seconds(&[2, 3])
    );
    let (mut daemon, url) =
        daemon_with_api(&ws, &format!("read_token_file = {token:?}"), &jobs).await;
    let target = url.trim_start_matches("http://").to_owned();
    let prometheus_dir = ws.path().join("prometheus");
    std::fs::create_dir(&prometheus_dir).expect("dir");
    let (_prometheus, api) = start_prometheus(&binary, &prometheus_dir, &target);
    finished(&mut daemon, 2).await;

    let query = |q: &'static str| {
        let api = api.clone();
        async move {
            let response = reqwest::Client::new()
                .get(format!("{api}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?;
            let body: serde_json::Value =
                serde_json::from_str(&response.text().await.ok()?).ok()?;
            body["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        }
    };
    let mut seen = (None, None);
    for _ in 0..300 {
        seen = (
            query("sum(ferry_runs_total{outcome=\"succeeded\"})").await,
            query("up{job=\"ferry\"}").await,
        );
        if seen.0.as_deref() == Some("2") && seen.1.as_deref() == Some("1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(prometheus_dir.join("prometheus.log")).unwrap_or_default();
    assert_eq!(
        (seen.0.as_deref(), seen.1.as_deref()),
        (Some("2"), Some("1")),
        "Prometheus' log:\n{log}"
    );
    let lag = query("ferry_fire_lag_seconds_count").await;
    assert_eq!(lag.as_deref(), Some("2"));
    let labels = query("count(ferry_runs_total{job_name=\"tick\",job=\"ferry\"})").await;
    assert_eq!(
        labels.as_deref(),
        Some("1"),
        "the job's label arrives as job_name"
    );

    // README's rules loaded and evaluate without error.
    let mut rules = serde_json::Value::Null;
    for _ in 0..100 {
        let body = reqwest::get(format!("{api}/api/v1/rules"))
            .await
            .expect("rules")
            .text()
            .await
            .expect("body");
        rules = serde_json::from_str(&body).expect("JSON");
        let all = rules["data"]["groups"][0]["rules"].as_array().cloned();
        if all.is_some_and(|all| all.len() == 3 && all.iter().all(|r| r["health"] == "ok")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|rule| rule["health"] == "ok")
        .filter_map(|rule| rule["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["FerryJobOverdue", "FerryRunsFailing", "FerryDown"],
        "{rules}"
    );
    let sides = query("ferry_last_success_timestamp_seconds and ferry_schedule_interval_seconds");
    assert!(
        sides.await.is_some(),
        "the overdue rule's two sides have the same labels"
    );
}

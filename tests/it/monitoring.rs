//! What monitoring sees: `/metrics` read by a real Prometheus, its counts after runs that
//! failed, were retried and succeeded, and `/readyz` through start-up and shutdown. The
//! daemon runs in-process on the system clock, with jobs due at the next whole seconds.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{Timelike, Utc};
use ferry::daemon::{Control, Event};
use ferry::runner::RunStatus;

use crate::support::daemon::{Booted, boot, boot_with_api};
use crate::support::{Workspace, show};

/// A cron schedule for the seconds `after` from now (in a minute's seconds, so it fires once).
fn in_seconds(after: &[u32]) -> String {
    let now = Utc::now().second();
    let seconds: Vec<String> = after.iter().map(|s| ((now + s) % 60).to_string()).collect();
    format!("{} * * * * *", seconds.join(","))
}

/// Boots the daemon on `jobs` with the API on a free port; returns it and the API's base URL.
async fn daemon_with_api(ws: &Workspace, api: &str, jobs: &str) -> (Booted, String) {
    let config = ws.job_file(&format!("[api]\nlisten = \"127.0.0.1:0\"\n{api}\n\n{jobs}"));
    boot_with_api(&config).await
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

/// The status page's facts as JSON.
async fn status_json(url: &str, token: Option<&str>) -> serde_json::Value {
    let (status, kind, body) = get(&format!("{url}/status.json"), token).await;
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("application/json"), "{kind}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test]
async fn the_status_page_shows_a_running_runs_bytes_and_needs_the_read_token() {
    let ws = Workspace::new();
    let token = ws.secret("read", "r3ad-status");
    // 100,000 bytes, then the run waits for the test to create `go`.
    let jobs = format!(
        r#"
[[jobs]]
name = "slow"
schedule = "{}"
source = {{ type = "command", command = ["sh", "-c", "head -c 100000 /dev/zero; while [ ! -e go ]; do sleep 0.05; done"] }}
writers = [{{ type = "local", path = "out/slow" }}, {{ type = "local", path = "out/copy" }}]
"#,
        in_seconds(&[2])
    );
    let (mut daemon, url) =
        daemon_with_api(&ws, &format!("read_token_file = {token:?}"), &jobs).await;
    daemon.ready().await;

    // A browser is asked for the token; Basic's password and a bearer token both work.
    let response = reqwest::get(format!("{url}/")).await.expect("GET /");
    assert_eq!(response.status(), 401);
    let challenge = response.headers().get("www-authenticate").cloned();
    assert_eq!(
        challenge.and_then(|v| v.to_str().ok().map(str::to_owned)),
        Some("Basic realm=\"ferry\", charset=\"UTF-8\"".to_owned())
    );
    let basic = reqwest::Client::new()
        .get(format!("{url}/"))
        .basic_auth("anyone", Some("r3ad-status"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(basic.status(), 200);
    let wrong = reqwest::Client::new()
        .get(format!("{url}/status.json"))
        .basic_auth("anyone", Some("wrong"))
        .send()
        .await
        .expect("GET");
    assert_eq!(wrong.status(), 401);

    daemon
        .until(Duration::from_secs(30), |e| {
            matches!(e, Event::Started { .. })
        })
        .await;
    let mut status = serde_json::Value::Null;
    for _ in 0..200 {
        status = status_json(&url, Some("r3ad-status")).await;
        let writers = &status["in_flight"][0]["progress"]["writers"];
        if writers[0][1] == 100_000 && writers[1][1] == 100_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let run = &status["in_flight"][0];
    assert_eq!(run["job"], "slow", "{status:#}");
    let writers = &run["progress"]["writers"];
    assert_eq!(writers[0][1], 100_000, "{status:#}");
    assert_eq!(writers[1][1], 100_000, "{status:#}");
    assert!(
        writers[0][0]
            .as_str()
            .is_some_and(|w| w.contains("out/slow")),
        "{status:#}"
    );
    let (_, _, page) = get(&format!("{url}/"), Some("r3ad-status")).await;
    assert!(page.contains("97.7 KiB at "), "{page}");

    std::fs::write(ws.path().join("go"), "").expect("go");
    let (report, _) = daemon.finished().await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let status = status_json(&url, Some("r3ad-status")).await;
    assert_eq!(status["in_flight"], serde_json::json!([]), "{status:#}");
    assert_eq!(
        status["jobs"][0]["last"]["state"], "succeeded",
        "{status:#}"
    );
    assert_eq!(status["jobs"][0]["last"]["bytes"], 100_000, "{status:#}");
}

/// The Chromium binary to load the status page in, from `FERRY_TEST_CHROMIUM` (set by
/// `.ci/run`, which installs Debian's `chromium`).
fn chromium() -> Option<std::ffi::OsString> {
    let binary = std::env::var_os("FERRY_TEST_CHROMIUM");
    if binary.is_none() {
        eprintln!("Chromium test not run: FERRY_TEST_CHROMIUM is not set");
    }
    binary
}

/// Runs headless Chromium on `url` with `args`; returns its standard output. (Not blocking:
/// the daemon answering it runs on this test's thread.)
async fn headless(binary: &std::ffi::OsStr, profile: &Path, url: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test]
async fn chromium_renders_every_job_with_its_next_fire_time_and_last_outcome() {
    let Some(binary) = chromium() else {
        return;
    };
    let ws = Workspace::new();
    let jobs = format!(
        r#"
[[jobs]]
name = "orders-export"
schedule = "{schedule}"
timezone = "Europe/Berlin"
source = {{ type = "inline", data = "id,total\n1,9.99\n" }}
writers = [{{ type = "local", path = "out/orders.csv" }}]

[[jobs]]
name = "broken-feed"
schedule = "{schedule}"
source = {{ type = "file", path = "missing.csv" }}
writers = [{{ type = "local", path = "out/feed" }}]

[[jobs]]
name = "paused-job"
schedule = "0 0 6 * * *"
enabled = false
source = {{ type = "inline", data = "x" }}
writers = [{{ type = "local", path = "out/paused" }}]
"#,
        schedule = in_seconds(&[2])
    );
    let (mut daemon, url) = daemon_with_api(&ws, "", &jobs).await;
    finished(&mut daemon, 2).await;
    // A partitioned source, for the timeline.
    let http = reqwest::Client::new();
    let created: serde_json::Value = serde_json::from_str(
        &http
            .post(format!("{url}/sources/register"))
            .query(&[("source_name", "shop.orders"), ("owner", "data")])
            .send()
            .await
            .expect("register")
            .text()
            .await
            .expect("body"),
    )
    .expect("JSON");
    let token = created["registered_object"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let post = |path: &str, query: Vec<(&str, &str)>| {
        http.post(format!("{url}{path}"))
            .bearer_auth(&token)
            .query(&query)
            .send()
    };
    let status = post("/providers/register", vec![("provider_name", "loader")])
        .await
        .expect("provider")
        .status();
    assert_eq!(status, 201);
    for (start, end) in [("2026-11-23", "2026-11-24"), ("2026-11-24", "2026-11-25")] {
        let partition = vec![
            ("source_name", "shop.orders"),
            ("provider_name", "loader"),
            ("start", start),
            ("end", end),
        ];
        let status = post("/partitions/register", partition.clone())
            .await
            .expect("partition")
            .status();
        assert_eq!(status, 201);
        if start == "2026-11-24" {
            let status = post("/partitions/lock", partition)
                .await
                .expect("lock")
                .status();
            assert_eq!(status, 200);
        }
    }

    let (_, kind, served) = get(&format!("{url}/"), None).await;
    assert_eq!(kind, "text/html; charset=utf-8");
    let profile = ws.path().join("chromium");
    let dom = headless(&binary, &profile, &format!("{url}/"), &["--dump-dom"]).await;
    let row = |job: &str| {
        let start = dom
            .find(&format!("<tr data-job=\"{job}\">"))
            .unwrap_or_else(|| panic!("{job} missing from the DOM:\n{dom}"));
        let end = start + dom[start..].find("</tr>").expect("row end");
        dom[start..end].to_owned()
    };
    let orders = row("orders-export");
    assert!(orders.contains("succeeded"), "{orders}");
    assert!(orders.contains("Europe/Berlin"), "{orders}");
    // Next fire times carry their UTC offset (+01:00 or +02:00 in Berlin).
    assert!(
        orders.contains("+01:00") || orders.contains("+02:00"),
        "{orders}"
    );
    let broken = row("broken-feed");
    assert!(broken.contains("failed"), "{broken}");
    assert!(broken.contains("missing.csv"), "{broken}");
    assert!(broken.contains("+00:00"), "{broken}");
    let paused = row("paused-job");
    assert!(paused.contains("disabled"), "{paused}");
    assert!(paused.contains("never ran"), "{paused}");
    assert!(dom.contains("data-source=\"shop.orders\""), "{dom}");
    assert!(dom.contains("class=\"locked\""), "{dom}");
    assert!(dom.contains("class=\"ready\""), "{dom}");

    // Nothing is loaded from elsewhere: no external URL in the page at all.
    for external in ["http://", "https://", "src=", "url("] {
        assert!(!served.contains(external), "{external} in\n{served}");
    }
    // Well-formed HTML: html5lib's strict parser finds no parse error.
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let page_file = ws.path().join("status.html");
    std::fs::write(&page_file, &served).expect("page");
    let checked = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, html5lib; html5lib.HTMLParser(strict=True).parse(open(sys.argv[1], 'rb'))",
        ])
        .arg(&page_file)
        .output()
        .expect("python3");
    assert!(
        checked.status.success(),
        "html5lib: {}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // A screenshot for a person to look at, on a desktop and on a phone.
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    for (name, size) in [
        ("status-page.png", "1280,800"),
        ("status-page-phone.png", "390,844"),
    ] {
        let shot = shots.join(name);
        let _ = std::fs::remove_file(&shot);
        headless(
            &binary,
            &profile,
            &format!("{url}/"),
            &[
                &format!("--screenshot={}", shot.display()),
                &format!("--window-size={size}"),
            ],
        )
        .await;
        let png = std::fs::read(&shot).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    }
}

/// Runs the built `ferry` binary without blocking this test's thread (an in-process daemon
/// may have to answer it).
async fn ferry_async(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the ferry binary")
}

#[tokio::test]
async fn ferry_status_asks_the_daemon_and_falls_back_to_the_store() {
    let ws = Workspace::new();
    let token = ws.secret("read", "r3ad-cli");
    let port = free_port();
    let jobs = format!(
        r#"
[[jobs]]
name = "nightly"
schedule = "{}"
source = {{ type = "file", path = "missing.csv" }}
writers = [{{ type = "local", path = "out/nightly" }}]

[[jobs]]
name = "weekly"
schedule = "0 0 6 * * Mon"
timezone = "Europe/Berlin"
source = {{ type = "inline", data = "x" }}
writers = [{{ type = "local", path = "out/weekly" }}]
"#,
        in_seconds(&[2])
    );
    let config = ws.job_file(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\nread_token_file = {token:?}\n\n{jobs}"
    ));
    let config_arg = config.to_str().expect("UTF-8 path");

    // No daemon and no store yet: said so, exit 1.
    let output = ferry_async(&["status", "--config", config_arg]).await;
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist yet"), "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");

    let mut daemon = boot(&config);
    finished(&mut daemon, 1).await;
    let output = ferry_async(&["status", "--config", config_arg]).await;
    assert!(output.status.success(), "{}", show(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with(&format!("From the daemon at http://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("nightly"), "{text}");
    assert!(text.contains("failed"), "{text}");
    assert!(text.contains("missing.csv"), "{text}");
    assert!(text.contains("+01:00") || text.contains("+02:00"), "{text}");
    assert!(text.contains("Recent failures: 1"), "{text}");
    let output = ferry_async(&["status", "--json", "--config", config_arg]).await;
    let facts: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(facts["jobs"][0]["name"], "nightly", "{facts:#}");
    assert_eq!(facts["jobs"][0]["last"]["state"], "failed", "{facts:#}");
    assert_eq!(
        facts["jobs"][1]["last"],
        serde_json::Value::Null,
        "{facts:#}"
    );
    daemon.stop().await;

    // The daemon gone: the same facts from the store, and why.
    let output = ferry_async(&["status", "--config", config_arg]).await;
    assert!(output.status.success(), "{}", show(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("From the state store (the daemon's API did not answer"),
        "{text}"
    );
    assert!(text.contains("missing.csv"), "{text}");
    let output = ferry_async(&["status", "--json", "--config", config_arg]).await;
    let facts: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(facts["jobs"][0]["last"]["state"], "failed", "{facts:#}");
    assert_eq!(
        facts["failures"].as_array().map(Vec::len),
        Some(1),
        "{facts:#}"
    );
}

#[tokio::test]
async fn ferry_status_asks_an_https_daemon_trusting_only_its_certificate() {
    let ws = Workspace::new();
    let tls = crate::support::self_signed(ws.path());
    let port = free_port();
    let config = ws.job_file(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n\n[[jobs]]\nname = \"hourly\"\nschedule = \"@hourly\"\nsource = {{ type = \"inline\", data = \"x\" }}\nwriters = [{{ type = \"local\", path = \"out/x\" }}]\n",
        tls.cert, tls.key
    ));
    let config_arg = config.to_str().expect("UTF-8 path");
    let (mut daemon, _) = boot_with_api(&config).await;
    daemon.ready().await;
    let output = ferry_async(&["status", "--config", config_arg]).await;
    assert!(output.status.success(), "{}", show(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with(&format!("From the daemon at https://127.0.0.1:{port}")),
        "{text}"
    );
    // Another certificate in the file: the daemon is not trusted, and the store answers.
    let other = tempfile::tempdir().expect("temp dir");
    let stranger = crate::support::self_signed(other.path());
    std::fs::copy(&stranger.cert, &tls.cert).expect("swap the certificate file");
    let output = ferry_async(&["status", "--config", config_arg]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("From the state store (the daemon's API did not answer"),
        "{}",
        show(&output)
    );
    daemon.stop().await;
}

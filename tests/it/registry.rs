//! The partition registry (seed 003): the store's registry on SQLite and PostgreSQL, and
//! the HTTP API of `[api]` against real clients (reqwest, and the seed's own Python
//! examples with `requests`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use ferry::daemon::Control;
use ferry::partition::Readiness;
use ferry::state::{Change, RegistryError, Store};
use serde_json::Value;

use crate::support::Workspace;

/// Every store to test: a fresh SQLite file, and PostgreSQL when configured.
async fn stores() -> Vec<(&'static str, Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Store::open("sqlite://ferry.db", dir.path())
        .await
        .expect("open SQLite");
    let mut out = vec![("sqlite", sqlite, dir)];
    match postgres_url() {
        Some(url) => {
            let dir = tempfile::tempdir().expect("temp dir");
            let pg = Store::open(&url, dir.path())
                .await
                .unwrap_or_else(|err| panic!("FERRY_TEST_POSTGRES_URL is set but unusable: {err}"));
            out.push(("postgres", pg, dir));
        }
        None => eprintln!("PostgreSQL registry tests not run: FERRY_TEST_POSTGRES_URL is not set"),
    }
    out
}

fn postgres_url() -> Option<String> {
    std::env::var("FERRY_TEST_POSTGRES_URL").ok()
}

/// A source name no other test (or earlier run on a shared database) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

fn hour(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .expect("instant")
        + chrono::Duration::hours(n)
}

#[tokio::test]
async fn the_registry_answers_alike_on_every_store() {
    for (backend, store, _dir) in stores().await {
        let source = unique("shop.orders");
        // Tokens are unique in the store (random 256 bits in use); the shared PostgreSQL
        // keeps earlier runs' rows, so the test's tokens are fresh too.
        let (token, other) = (unique("t0ken"), unique("other"));
        store
            .register_source(&source, "data@example.com", &token)
            .await
            .expect("register");
        let again = store.register_source(&source, "someone else", &other).await;
        assert!(
            matches!(again, Err(RegistryError::Exists(_))),
            "{backend}: {again:?}"
        );
        // The first token still works, the second never did.
        store.check_token(&source, &token).await.expect("token");
        assert!(matches!(
            store.check_token(&source, &other).await,
            Err(RegistryError::BadToken)
        ));
        assert_eq!(store.source_of_token(&token).await.expect("source"), source);

        // Nothing is written for an unknown provider.
        let orphan = store
            .register_partition(&source, "nobody", hour(0), hour(1))
            .await;
        assert!(
            matches!(orphan, Err(RegistryError::UnknownProvider { .. })),
            "{backend}: {orphan:?}"
        );
        assert!(
            store
                .partitions(Some(&source), 10)
                .await
                .expect("list")
                .is_empty()
        );

        store
            .register_provider(&source, "loader")
            .await
            .expect("provider");
        for h in 0..24 {
            store
                .register_partition(&source, "loader", hour(h), hour(h + 1))
                .await
                .expect("partition");
        }
        assert!(
            store
                .readiness(&source, hour(0), hour(24))
                .await
                .expect("ready")
                .is_ready(),
            "{backend}"
        );
        assert_eq!(
            store
                .readiness(&source, hour(20), hour(30))
                .await
                .expect("gap"),
            Readiness::Uncovered {
                start: hour(24),
                end: hour(30)
            },
            "{backend}"
        );
        let lock = Change::Lock {
            run_id: Some("run-7"),
            reason: None,
        };
        store
            .change_partition(&source, "loader", hour(5), hour(6), lock)
            .await
            .expect("lock");
        let answer = store
            .readiness(&source, hour(0), hour(24))
            .await
            .expect("locked");
        let message = answer.message(&source, hour(0), hour(24));
        assert!(!answer.is_ready(), "{backend}");
        assert!(
            message.contains("locked by loader") && message.contains("run-7"),
            "{backend}: {message}"
        );
        // Outside the locked hour the data is ready.
        assert!(
            store
                .readiness(&source, hour(6), hour(24))
                .await
                .expect("ready")
                .is_ready()
        );
        store
            .change_partition(&source, "loader", hour(5), hour(6), Change::Unlock)
            .await
            .expect("unlock");
        assert!(
            store
                .readiness(&source, hour(0), hour(24))
                .await
                .expect("ready")
                .is_ready()
        );
        // A partition that was never registered cannot be locked.
        let missing = store
            .change_partition(&source, "loader", hour(30), hour(31), Change::Unlock)
            .await;
        assert!(
            matches!(missing, Err(RegistryError::UnknownPartition { .. })),
            "{backend}: {missing:?}"
        );
        let unknown = store.readiness(&unique("nope"), hour(0), hour(1)).await;
        assert!(
            matches!(unknown, Err(RegistryError::UnknownSource(_))),
            "{backend}: {unknown:?}"
        );

        let listed = store.partitions(Some(&source), 3).await.expect("list");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].start, hour(23), "newest first");
    }
}

#[tokio::test]
async fn a_long_partition_far_back_still_counts() {
    // Readiness reads the partitions starting within the source's longest partition before
    // the interval: a year-long one registered first must still cover a day inside it.
    for (backend, store, _dir) in stores().await {
        let source = unique("yearly");
        store
            .register_source(&source, "o", &unique("t"))
            .await
            .expect("source");
        store
            .register_provider(&source, "p")
            .await
            .expect("provider");
        store
            .register_partition(&source, "p", hour(0), hour(24 * 365))
            .await
            .expect("year");
        store
            .register_partition(&source, "p", hour(100), hour(101))
            .await
            .expect("hour");
        let day = store
            .readiness(&source, hour(24 * 200), hour(24 * 201))
            .await
            .expect("answer");
        assert!(day.is_ready(), "{backend}: {day:?}");
    }
}

/// A daemon in this process with `[api]` on a free port, and its API's base URL.
async fn api_daemon(
    ws: &Workspace,
    api: &str,
    state: Option<&str>,
) -> (crate::support::daemon::Booted, String) {
    let state = state.map_or_else(String::new, |url| format!("[daemon]\nstate = {url:?}\n"));
    let config = ws.job_file(&format!("{state}[api]\nlisten = \"127.0.0.1:0\"\n{api}\n"));
    crate::support::daemon::boot_with_api(&config).await
}

async fn json(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("body");
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, kind, value)
}

#[tokio::test]
async fn bad_requests_get_problem_details_and_change_nothing() {
    let ws = Workspace::new();
    let (daemon, url) = api_daemon(&ws, "", None).await;
    let http = reqwest::Client::new();
    let post =
        |path: &str, query: &[(&str, &str)]| http.post(format!("{url}{path}")).query(query).send();

    let (status, _, created) = json(
        post("/sources/register", &[("source_name", "s"), ("owner", "o")])
            .await
            .expect("register"),
    )
    .await;
    assert_eq!(status, 201);
    let token = created["registered_object"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (status, _, _) = json(
        post(
            "/providers/register",
            &[("provider_name", "p"), ("access_token", &token)],
        )
        .await
        .expect("provider"),
    )
    .await;
    assert_eq!(status, 201);

    let partition = |start: &'static str, end: &'static str, token: Option<&str>| {
        let mut query = vec![
            ("start", start.to_owned()),
            ("end", end.to_owned()),
            ("source_name", "s".to_owned()),
            ("provider_name", "p".to_owned()),
        ];
        if let Some(token) = token {
            query.push(("access_token", token.to_owned()));
        }
        http.post(format!("{url}/partitions/register"))
            .query(&query)
            .send()
    };
    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        (
            "end before start",
            partition("2000-01-02", "2000-01-01", Some(&token))
                .await
                .expect("send"),
            422,
            "must be after start",
        ),
        (
            "end equal to start",
            partition("2000-01-01", "2000-01-01", Some(&token))
                .await
                .expect("send"),
            422,
            "must be after start",
        ),
        (
            "not a time",
            partition("yesterday", "2000-01-01", Some(&token))
                .await
                .expect("send"),
            422,
            "start: \"yesterday\" is not a timestamp",
        ),
        (
            "no token",
            partition("2000-01-01", "2000-01-02", None)
                .await
                .expect("send"),
            401,
            "access token is required",
        ),
        (
            "wrong token",
            partition("2000-01-01", "2000-01-02", Some("f00"))
                .await
                .expect("send"),
            403,
            "not valid",
        ),
        (
            "missing parameter",
            post("/partitions/lock", &[("start", "2000-01-01")])
                .await
                .expect("send"),
            422,
            "missing field",
        ),
        (
            "unknown source",
            http.get(format!(
                "{url}/sources/nope/check_readiness?start=2000-01-01&end=2000-01-02"
            ))
            .send()
            .await
            .expect("send"),
            404,
            "no source named \"nope\"",
        ),
        (
            "unregistered partition",
            http.post(format!("{url}/partitions/lock"))
                .query(&[
                    ("start", "2000-01-01"),
                    ("end", "2000-01-02"),
                    ("source_name", "s"),
                    ("provider_name", "p"),
                ])
                .bearer_auth(&token)
                .send()
                .await
                .expect("send"),
            404,
            "no partition",
        ),
        (
            "unknown endpoint",
            http.get(format!("{url}/nothing"))
                .send()
                .await
                .expect("send"),
            404,
            "no such endpoint",
        ),
        (
            "huge query",
            http.get(format!(
                "{url}/sources/s/check_readiness?start={}",
                "9".repeat(10_000)
            ))
            .send()
            .await
            .expect("send"),
            414,
            "longer than",
        ),
    ];
    for (what, response, want, detail) in cases {
        let unauthorized = response.headers().get("www-authenticate").is_some();
        let (status, kind, problem) = json(response).await;
        assert_eq!(status, want, "{what}: {problem}");
        assert_eq!(kind, "application/problem+json", "{what}");
        assert_eq!(problem["status"], want, "{what}");
        assert_eq!(problem["status_code"], want, "{what}");
        assert!(
            problem["title"].is_string() && problem["type"] == "about:blank",
            "{what}: {problem}"
        );
        let text = problem["detail"].as_str().expect("detail");
        assert!(text.contains(detail), "{what}: {text}");
        assert_eq!(
            unauthorized,
            want == 401,
            "{what}: WWW-Authenticate only on 401"
        );
    }
    // Nothing was registered by the refused calls.
    let (_, _, listed) = json(
        http.get(format!("{url}/partitions?source_name=s"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(listed["partitions"], serde_json::json!([]), "{listed}");
    // Zone-less times are UTC; a bearer token works as well as access_token.
    let (status, _, registered) = json(
        http.post(format!("{url}/partitions/register"))
            .query(&[
                ("start", "2000-01-01 00:00:00"),
                ("end", "2000-01-01T02:00:00+01:00"),
                ("source_name", "s"),
                ("provider_name", "p"),
            ])
            .bearer_auth(&token)
            .send()
            .await
            .expect("register"),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(
        registered["registered_object"]["end"], "2000-01-01T01:00:00Z",
        "{registered}"
    );
    let _ = daemon.control.send(Control::Shutdown).await;
    let _ = (status, daemon);
}

#[tokio::test]
async fn the_openapi_description_lists_every_endpoint() {
    let ws = Workspace::new();
    let (_daemon, url) = api_daemon(&ws, "", None).await;
    let http = reqwest::Client::new();
    let (status, kind, doc) = json(
        http.get(format!("{url}/openapi.json"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for method in item.as_object().expect("operations").keys() {
            let concrete = path.replace("{source_name}", "s");
            let request = match method.as_str() {
                "get" => http.get(format!("{url}{concrete}")),
                "post" => http.post(format!("{url}{concrete}")),
                other => panic!("unexpected method {other}"),
            };
            let response = request.send().await.expect("send");
            let status = response.status();
            let body = response.text().await.expect("body");
            // Served (maybe refused for a missing parameter), never "no such endpoint".
            assert!(
                !body.contains("no such endpoint") && status != 405,
                "{method} {path}: {status} {body}"
            );
        }
    }
    for expected in [
        "/sources/register",
        "/providers/register",
        "/partitions/register",
        "/partitions/lock",
        "/partitions/unlock",
        "/sources/{source_name}/check_readiness",
    ] {
        assert!(paths.contains_key(expected), "{expected} missing");
    }
}

#[tokio::test]
async fn read_and_admin_tokens_guard_their_calls() {
    let ws = Workspace::new();
    let read = ws.secret("read", "r3ad");
    let admin = ws.secret("admin", "adm1n");
    let (_daemon, url) = api_daemon(
        &ws,
        &format!("read_token_file = {read:?}\nadmin_token_file = {admin:?}"),
        None,
    )
    .await;
    let http = reqwest::Client::new();
    let register = |token: Option<&str>| {
        let request = http
            .post(format!("{url}/sources/register"))
            .query(&[("source_name", "s"), ("owner", "o")]);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    assert_eq!(register(None).await.expect("send").status(), 401);
    assert_eq!(register(Some("r3ad")).await.expect("send").status(), 403);
    assert_eq!(register(Some("adm1n")).await.expect("send").status(), 201);
    let readiness = format!("{url}/sources/s/check_readiness?start=2000-01-01&end=2000-01-02");
    assert_eq!(
        http.get(&readiness).send().await.expect("send").status(),
        401
    );
    assert_eq!(
        http.get(&readiness)
            .bearer_auth("adm1n")
            .send()
            .await
            .expect("send")
            .status(),
        403
    );
    let (status, _, answer) = json(
        http.get(&readiness)
            .bearer_auth("r3ad")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["is_ready"], false, "{answer}");
    assert_eq!(
        http.get(format!("{url}/partitions"))
            .send()
            .await
            .expect("send")
            .status(),
        401
    );
}

#[tokio::test]
async fn the_api_serves_https_with_the_configured_certificate() {
    let ws = Workspace::new();
    let tls = crate::support::self_signed(ws.path());
    let settings = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}",
        tls.cert, tls.key
    );
    let (_daemon, url) = api_daemon(&ws, &settings, None).await;
    let https = url.replace("http://", "https://");
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(&tls.cert).expect("cert")).expect("pem");
    let client = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .expect("client");
    let response = client
        .get(format!("{https}/healthz"))
        .send()
        .await
        .expect("https");
    assert_eq!(response.status(), 200);
    // Plain HTTP on the TLS port gets no answer, and a client that does not trust the
    // certificate is refused.
    assert!(
        reqwest::get(format!("{url}/healthz")).await.is_err(),
        "plaintext refused"
    );
    assert!(
        reqwest::get(format!("{https}/healthz")).await.is_err(),
        "untrusted certificate refused"
    );
    // A stalled handshake holds up nobody.
    let _stalled = tokio::net::TcpStream::connect(https.trim_start_matches("https://"))
        .await
        .expect("connect");
    let again = client
        .get(format!("{https}/healthz"))
        .send()
        .await
        .expect("https while another stalls");
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn two_daemons_on_postgres_share_one_registry() {
    let Some(pg) = postgres_url() else {
        eprintln!("not run: FERRY_TEST_POSTGRES_URL is not set");
        return;
    };
    let (ws_a, ws_b) = (Workspace::new(), Workspace::new());
    let (_a, url_a) = api_daemon(&ws_a, "", Some(&pg)).await;
    let (_b, url_b) = api_daemon(&ws_b, "", Some(&pg)).await;
    let http = reqwest::Client::new();
    let source = unique("shared");
    let (_, _, created) = json(
        http.post(format!("{url_a}/sources/register"))
            .query(&[("source_name", source.as_str()), ("owner", "o")])
            .send()
            .await
            .expect("register"),
    )
    .await;
    let token = created["registered_object"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    // The source is known through B: a second registration there gets no token.
    let again = http
        .post(format!("{url_b}/sources/register"))
        .query(&[("source_name", source.as_str()), ("owner", "o")])
        .send()
        .await
        .expect("again");
    assert_eq!(again.status(), 409);
    let write = |url: &str, path: &str| {
        http.post(format!("{url}{path}"))
            .query(&[
                ("start", "2000-01-01"),
                ("end", "2000-01-02"),
                ("source_name", source.as_str()),
                ("provider_name", "p"),
            ])
            .bearer_auth(&token)
            .send()
    };
    let provider = http
        .post(format!("{url_b}/providers/register"))
        .query(&[("provider_name", "p")])
        .bearer_auth(&token)
        .send()
        .await
        .expect("provider");
    assert_eq!(provider.status(), 201);
    assert_eq!(
        write(&url_a, "/partitions/register")
            .await
            .expect("register")
            .status(),
        201
    );
    assert_eq!(
        write(&url_a, "/partitions/lock")
            .await
            .expect("lock")
            .status(),
        200
    );
    let readiness = |url: &str| {
        http.get(format!(
            "{url}/sources/{source}/check_readiness?start=2000-01-01&end=2000-01-02"
        ))
        .send()
    };
    let (_, _, through_b) = json(readiness(&url_b).await.expect("B")).await;
    assert_eq!(
        through_b["is_ready"], false,
        "locked through A, not ready through B: {through_b}"
    );
    assert!(
        through_b["message"]
            .as_str()
            .expect("message")
            .contains("locked by p")
    );
    assert_eq!(
        write(&url_b, "/partitions/unlock")
            .await
            .expect("unlock")
            .status(),
        200
    );
    let (_, _, through_a) = json(readiness(&url_a).await.expect("A")).await;
    assert_eq!(
        through_a["is_ready"], true,
        "unlocked through B, ready through A: {through_a}"
    );
}

/// A free port on 127.0.0.1 (bound, then released for the program under test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_seeds_python_examples_pass_against_ferry_run() {
    let Some(python) = std::env::var_os("FERRY_TEST_PYTHON") else {
        eprintln!("not run: FERRY_TEST_PYTHON (a python3 with requests and dateutil) is not set");
        return;
    };
    let ws = Workspace::new();
    let port = free_port();
    let config = ws.job_file(&format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"));
    // Logs at every level, to a file: the token must reach none of them.
    let log = std::fs::File::create(ws.path().join("ferry.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config", &config.display().to_string()])
        .env("FERRY_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ferry run");
    let running = Running(child);
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}healthz")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ferry run's API did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/seed003_examples.py"
    );
    let output = Command::new(python)
        .arg(script)
        .env("WEB_SERVICE_URL", &url)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all seed examples passed"), "{stdout}");
    assert_eq!(stdout.matches("ok: ").count(), 10, "{stdout}");
    let token = stdout
        .lines()
        .find_map(|line| line.strip_prefix("token: "))
        .expect("the script prints the token");
    drop(running);
    let logs = std::fs::read_to_string(ws.path().join("ferry.log")).expect("logs");
    assert!(
        logs.contains("Source registered"),
        "the logs were written: {logs}"
    );
    assert!(!logs.contains(token), "the access token reached the logs");
    assert!(
        !logs.contains("access_token="),
        "a query string reached the logs"
    );
}

#[test]
fn operators_register_list_check_and_lock_from_the_command_line() {
    let ws = Workspace::new();
    let config = ws.job_file(
        r#"
[[jobs]]
name = "ingest"
schedule = "0 * * * *"
partition = { source = "shop.orders", period = "1h" }
source = { type = "inline", data = "id,total\n" }
writers = [{ type = "local", path = "out/orders.csv" }]
"#,
    );
    let config = config.display().to_string();
    let ferry = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        crate::support::ferry(&all)
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // Before anything ran: no store, nothing ready, nothing listed.
    let early = ferry(&["ready", "shop.orders", "2000-01-01", "2000-01-02"]);
    assert_eq!(
        early.status.code(),
        Some(1),
        "{}",
        crate::support::show(&early)
    );
    assert_eq!(text(&ferry(&["partitions", "--json"]).stdout), "[]\n");

    let registered = ferry(&[
        "sources",
        "register",
        "erp.customers",
        "--owner",
        "erp@example.com",
    ]);
    assert_eq!(
        registered.status.code(),
        Some(0),
        "{}",
        crate::support::show(&registered)
    );
    let token = text(&registered.stdout);
    assert_eq!(token.trim().len(), 64, "one token on stdout: {token}");
    assert!(
        !text(&registered.stderr).contains(token.trim()),
        "the token is printed once"
    );
    let again = ferry(&["sources", "register", "erp.customers", "--owner", "x"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stdout.is_empty(), "no token the second time");
    assert!(
        text(&again.stderr).contains("already registered"),
        "{}",
        crate::support::show(&again)
    );
    let rotated = ferry(&[
        "sources",
        "register",
        "erp.customers",
        "--owner",
        "x",
        "--rotate",
    ]);
    assert_eq!(rotated.status.code(), Some(0));
    assert_ne!(text(&rotated.stdout), token, "a new token");

    let run = ferry(&["trigger", "ingest"]);
    assert_eq!(run.status.code(), Some(0), "{}", crate::support::show(&run));
    let listed: Value =
        serde_json::from_slice(&ferry(&["partitions", "shop.orders", "--json"]).stdout)
            .expect("JSON");
    let partition = &listed[0];
    assert_eq!(partition["state"], "unlocked", "{listed}");
    assert_eq!(partition["provider"], "ingest");
    let (start, end) = (
        partition["start"].as_str().expect("start").to_owned(),
        partition["end"].as_str().expect("end").to_owned(),
    );
    let table = text(&ferry(&["partitions"]).stdout);
    assert!(
        table.starts_with("SOURCE") && table.contains("shop.orders") && table.contains("unlocked"),
        "{table}"
    );

    let ready = ferry(&["ready", "shop.orders", &start, &end]);
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}",
        crate::support::show(&ready)
    );
    assert!(text(&ready.stderr).contains("is ready"));
    let lock = ferry(&[
        "partitions",
        "lock",
        "shop.orders",
        &start,
        &end,
        "--provider",
        "ingest",
        "--reason",
        "re-loading after a bad export",
    ]);
    assert_eq!(
        lock.status.code(),
        Some(0),
        "{}",
        crate::support::show(&lock)
    );
    let not_ready = ferry(&["ready", "shop.orders", &start, &end]);
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(
        text(&not_ready.stderr).contains("re-loading after a bad export"),
        "{}",
        crate::support::show(&not_ready)
    );
    let unlock = ferry(&[
        "partitions",
        "unlock",
        "shop.orders",
        &start,
        &end,
        "--provider",
        "ingest",
    ]);
    assert_eq!(unlock.status.code(), Some(0));
    assert_eq!(
        ferry(&["ready", "shop.orders", &start, &end]).status.code(),
        Some(0)
    );

    // Bad input: exit 2 naming the argument; an unknown partition: exit 1.
    let backwards = ferry(&["ready", "shop.orders", &end, &start]);
    assert_eq!(backwards.status.code(), Some(2));
    assert!(text(&backwards.stderr).contains("END must be after START"));
    let garbage = ferry(&["ready", "shop.orders", "soon", &end]);
    assert_eq!(garbage.status.code(), Some(2));
    assert!(text(&garbage.stderr).contains("START: \"soon\" is not a timestamp"));
    let unknown = ferry(&[
        "partitions",
        "lock",
        "shop.orders",
        "2000-01-01",
        "2000-01-02",
        "--provider",
        "ingest",
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("no partition"),
        "{}",
        crate::support::show(&unknown)
    );
}

#[tokio::test]
async fn a_job_waits_for_a_source_in_another_registry() {
    // Registry A (another ferry's API) holds `erp.customers`; a job here requires it by URL.
    let remote = Workspace::new();
    let read = remote.secret("read", "r3ad-t0ken");
    let (_daemon, url) = api_daemon(&remote, &format!("read_token_file = {read:?}"), None).await;
    let http = reqwest::Client::new();
    let (_, _, created) = json(
        http.post(format!("{url}/sources/register"))
            .query(&[("source_name", "erp.customers"), ("owner", "erp")])
            .send()
            .await
            .expect("register"),
    )
    .await;
    let token = created["registered_object"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let call = |path: &str| {
        http.post(format!("{url}{path}"))
            .query(&[
                ("source_name", "erp.customers"),
                ("provider_name", "erp"),
                ("start", "2026-11-23T11:00:00Z"),
                ("end", "2026-11-23T12:00:00Z"),
            ])
            .bearer_auth(&token)
            .send()
    };
    http.post(format!("{url}/providers/register"))
        .query(&[("provider_name", "erp")])
        .bearer_auth(&token)
        .send()
        .await
        .expect("provider");
    assert_eq!(
        call("/partitions/register")
            .await
            .expect("register")
            .status(),
        201
    );
    assert_eq!(call("/partitions/lock").await.expect("lock").status(), 200);

    let ws = Workspace::new();
    let secret = ws.secret("remote-read", "r3ad-t0ken");
    let text = format!(
        r#"
[[jobs]]
name = "export"
schedule = "0 * * * *"
requires = [{{ source = "erp.customers", wait = "20s", url = "{url}", token_file = {secret:?} }}]
source = {{ type = "inline", data = "x" }}
writers = [{{ type = "local", path = "out/x" }}]
"#
    );
    let job = ws.job(&text, "export");
    let ledger = ws.ledger().await;
    let slot = |hour: u32| {
        chrono_tz::UTC
            .with_ymd_and_hms(2026, 11, 23, hour, 0, 0)
            .single()
            .expect("slot")
    };
    // Unlocked remotely after the job's first look: the job, polling, proceeds.
    let unlock = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        call("/partitions/unlock").await.expect("unlock").status()
    };
    let (report, unlocked) = tokio::join!(job.run_claimed(&ledger, slot(12)), unlock);
    assert_eq!(unlocked, 200);
    let report = report.expect("store").expect("claimed");
    assert_eq!(
        report.status,
        ferry::runner::RunStatus::Succeeded,
        "{report:#?}"
    );

    // An interval the remote registry does not cover: not_ready after `wait`, with its words.
    let short = text.replace("wait = \"20s\"", "wait = \"2s\"");
    let job = ws.job(&short, "export");
    let report = job
        .run_claimed(&ledger, slot(14))
        .await
        .expect("store")
        .expect("claimed");
    let failure = report.error.as_ref().expect("failed");
    assert_eq!(failure.kind, ferry::error::ErrorKind::NotReady);
    let text = ferry::error::display_chain(&failure.chain);
    assert!(text.contains("no partition covers"), "{text}");
    assert!(!text.contains("r3ad-t0ken"), "{text}");
}

mod property {
    //! The store's readiness (two index lookups) against the pure one-pass readiness over
    //! the same partitions, itself checked against brute force in `ferry::partition`.

    use std::collections::BTreeMap;

    use chrono::{DateTime, TimeZone as _, Utc};
    use ferry::partition::{Lock, Partition, readiness};
    use ferry::state::{Change, Store};
    use proptest::prelude::*;

    fn at(minute: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + minute * 60, 0)
            .single()
            .expect("instant")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        #[test]
        fn the_store_answers_as_the_one_pass_readiness(
            raw in proptest::collection::vec((0i64..200, 1i64..60, proptest::bool::weighted(0.2)), 0..20),
            queries in proptest::collection::vec((0i64..220, 0i64..120), 1..6),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = Store::open("sqlite://p.db", dir.path()).await.expect("store");
                store.register_source("s", "o", "t").await.expect("source");
                store.register_provider("s", "p").await.expect("provider");
                // What the store holds: one partition per interval, its last lock state.
                let mut held: BTreeMap<(i64, i64), bool> = BTreeMap::new();
                for &(start, len, locked) in &raw {
                    let (s, e) = (start, start + len);
                    if !held.contains_key(&(s, e)) {
                        store.register_partition("s", "p", at(s), at(e)).await.expect("register");
                    }
                    let change = match locked {
                        true => Change::Lock { run_id: Some("r"), reason: None },
                        false => Change::Unlock,
                    };
                    let record = store.change_partition("s", "p", at(s), at(e), change).await.expect("change");
                    held.insert((s, e), locked);
                    prop_assert_eq!(record.state, if locked { "locked" } else { "unlocked" });
                }
                for &(start, len) in &queries {
                    let partitions: Vec<Partition> = held
                        .iter()
                        .map(|(&(s, e), &locked)| Partition {
                            start: at(s),
                            end: at(e),
                            lock: locked.then(|| Lock { by: "p".into(), since: at(0), run_id: Some("r".into()), reason: None }),
                        })
                        .collect();
                    let expected = readiness(&partitions, at(start), at(start + len));
                    let answer = store.readiness("s", at(start), at(start + len)).await.expect("readiness");
                    // Compare the answer's shape and interval; a lock's `since` is the store's clock.
                    let strip = |r: ferry::partition::Readiness| match r {
                        ferry::partition::Readiness::Locked { start, end, .. } => format!("locked {start} {end}"),
                        other => format!("{other:?}"),
                    };
                    prop_assert_eq!(strip(answer), strip(expected), "query [{}, {})", start, start + len);
                }
                Ok(())
            })?;
        }
    }
}

#[tokio::test]
async fn a_store_from_before_the_coverage_table_gets_it_rebuilt_at_open() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open("sqlite://old.db", dir.path())
        .await
        .expect("open");
    store.register_source("s", "o", "t").await.expect("source");
    store.register_provider("s", "p").await.expect("provider");
    for (start, end) in [(0, 1), (1, 2), (3, 4)] {
        store
            .register_partition("s", "p", hour(start), hour(end))
            .await
            .expect("partition");
    }
    drop(store);
    // As a store migrated to 3 but not 4 holds it: partitions without coverage.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let mut raw = sqlx::AnyConnection::connect(&url).await.expect("connect");
    sqlx::query("DELETE FROM ferry_coverage")
        .execute(&mut raw)
        .await
        .expect("delete");
    raw.close().await.expect("close");

    let store = Store::open("sqlite://old.db", dir.path())
        .await
        .expect("reopen");
    assert!(
        store
            .readiness("s", hour(0), hour(2))
            .await
            .expect("answer")
            .is_ready()
    );
    assert_eq!(
        store
            .readiness("s", hour(0), hour(4))
            .await
            .expect("answer"),
        Readiness::Uncovered {
            start: hour(2),
            end: hour(3)
        }
    );
}

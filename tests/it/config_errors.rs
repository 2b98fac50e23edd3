//! Malformed job files: each problem is reported as `file:line:col: message`, all at once.

use std::path::PathBuf;

use ferry::config::{ConfigError, parse};

const GOOD_JOB: &str = r#"
[[jobs]]
name = "ok"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/x" }]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, "jobs.toml", PathBuf::from("/srv")) {
        Ok(_) => panic!("this job file should be refused:\n{text}"),
        Err(errors) => errors.0,
    }
}

/// Asserts that `text` yields exactly the errors `expected`, in any order: each the start of
/// one reported line (`jobs.toml:LINE:COL: key.path: message…`).
fn assert_reported(text: &str, expected: &[&str]) {
    let found: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for want in expected {
        assert!(
            found.iter().any(|line| line.starts_with(want)),
            "{want}\n{found:#?}"
        );
    }
}

/// Asserts that `text` yields exactly one error, at `line`:`column`, mentioning `needle`.
fn assert_one(text: &str, line: usize, column: usize, needle: &str) {
    let found = errors(text);
    assert_eq!(
        found.len(),
        1,
        "expected one error, got:\n{found:#?}\n---\n{text}"
    );
    let err = &found[0];
    assert!(
        err.message.contains(needle),
        "message {:?} should mention {needle:?}",
        err.message
    );
    assert_eq!(
        (err.line, err.column),
        (line, column),
        "wrong position for {err}\n---\n{text}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("jobs.toml:{line}:{column}: "))
    );
}

#[test]
fn a_syntax_error() {
    assert_one(
        "[[jobs]]\nname = \"x\nschedule = 1\n",
        2,
        10,
        "basic string",
    );
}

#[test]
fn an_unknown_top_level_key() {
    assert_one(
        &format!("jbos = 1\n{GOOD_JOB}"),
        1,
        1,
        "unknown top-level key `jbos`",
    );
}

#[test]
fn an_unknown_job_key() {
    let text = format!("{GOOD_JOB}colour = \"red\"\n");
    assert_one(&text, 7, 1, "unknown field `colour`");
}

#[test]
fn an_unknown_source_key() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "file", pth = "x" }
writers = [{ type = "local", path = "out/x" }]
"#;
    assert_one(text, 4, 27, "jobs[0].source: unknown field `pth`");
}

#[test]
fn an_unknown_source_type() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "carrier-pigeon" }
writers = [{ type = "local", path = "out/x" }]
"#;
    assert_one(text, 4, 19, "unknown variant `carrier-pigeon`");
}

#[test]
fn a_bad_cron_expression() {
    let text = r#"[[jobs]]
name = "a"
schedule = "61 * * * * *"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/x" }]
"#;
    assert_one(
        text,
        3,
        12,
        "jobs[0].schedule: invalid schedule \"61 * * * * *\"",
    );
}

#[test]
fn an_unknown_time_zone() {
    let text = format!("[daemon]\ntimezone = \"Mars/Olympus\"\n{GOOD_JOB}");
    assert_one(&text, 2, 12, "unknown time zone \"Mars/Olympus\"");
}

#[test]
fn a_duration_without_unit() {
    let text = format!("{GOOD_JOB}timeout = \"30\"\n");
    assert_one(&text, 7, 11, "invalid duration \"30\"");
}

#[test]
fn a_bad_template_placeholder() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/{jbo}.csv" }]
"#;
    assert_one(text, 5, 37, "unknown placeholder {jbo}");
}

#[test]
fn a_path_that_climbs_out() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/../../etc/passwd" }]
"#;
    assert_one(text, 5, 37, "'..'");
}

#[test]
fn a_duplicate_job_name() {
    let text = format!("{GOOD_JOB}{GOOD_JOB}");
    assert_one(&text, 9, 8, "job name \"ok\" is already used by jobs[0]");
}

#[test]
fn an_unknown_notifier() {
    let text = format!("{GOOD_JOB}on_failure = [\"ops\"]\n");
    assert_one(&text, 7, 15, "no notifier named \"ops\"");
}

#[test]
fn a_wrong_value_type() {
    let text = r#"[[jobs]]
name = "a"
schedule = 5
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/x" }]
"#;
    assert_one(text, 3, 12, "expected a string");
}

#[test]
fn a_missing_required_key() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
writers = [{ type = "local", path = "out/x" }]
"#;
    assert_one(text, 1, 1, "missing field `source`");
}

#[test]
fn an_empty_command() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "command", command = [] }
writers = [{ type = "local", path = "out/x" }]
"#;
    assert_one(text, 4, 40, "needs a program");
}

#[test]
fn two_forms_of_one_secret() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "url", url = "https://example.com/x", username = "u", password = "p", password_env = "P" }
writers = [{ type = "local", path = "out/x" }]
"#;
    assert_one(
        text,
        4,
        84,
        "give only one of `password`, `password_env` and `password_file`",
    );
}

#[test]
fn bad_retry_settings() {
    let text = format!(
        "[defaults.retry]\nmax_attempts = 0\nmultiplier = 0.5\ninitial_interval = \"1m\"\nmax_interval = \"1s\"\n{GOOD_JOB}"
    );
    let found = errors(&text);
    let positions: Vec<(usize, usize)> = found.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(positions, vec![(2, 16), (3, 14), (5, 16)], "{found:#?}");
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = r#"[daemon]
timezone = "Nowhere/Special"

[[jobs]]
name = "a"
schedule = "every tuesday"
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out/{nope}" }]
on_success = ["ghost"]

[[jobs]]
name = "b"
schedule = "@hourly"
source = { type = "file", path = "x", extra = 1 }
writers = [{ type = "local", path = "out/x" }]

[[jobs]]
name = "has space"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = []
"#;
    let found = errors(text);
    let lines: Vec<usize> = found.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 6, 8, 9, 14, 18, 21], "{found:#?}");
}

#[test]
fn a_bad_state_url_and_rate() {
    let text = format!("[daemon]\nstate = \"mysql://db/ferry\"\n{GOOD_JOB}rate_limit = \"fast\"\n");
    let found = errors(&text);
    let positions: Vec<(usize, usize)> = found.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(positions, vec![(2, 9), (9, 14)], "{found:#?}");
    assert!(
        found[0].message.contains("sqlite://PATH or postgres://"),
        "{}",
        found[0]
    );
    assert!(
        found[1].message.contains("invalid rate \"fast\""),
        "{}",
        found[1]
    );
}

#[test]
fn ftp_tls_settings_without_tls() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "ftp", host = "ftp.example.com", path = "/in/a", ca_file = "ca.pem" }]
"#;
    assert_one(text, 5, 80, "only applies with security = \"explicit_tls\"");
}

#[test]
fn ftp_trusting_a_ca_file_and_anything() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "ftp", host = "h", path = "/a", security = "explicit_tls", ca_file = "ca.pem", accept_invalid_certs = true }]
"#;
    assert_one(text, 5, 123, "cannot be combined with `ca_file`");
}

#[test]
fn a_broken_mail_template_is_placed_at_its_key() {
    let text = r#"[notifiers.users]
type = "email"
host = "smtp.example.com"
from = "ferry@example.com"
to = ["a@example.com"]
body = "Line one\n{% if succeeded %}no end"
"#;
    assert_one(text, 6, 8, "template line 2");
}

#[test]
fn a_bad_recipient_is_placed_at_its_index() {
    let text = r#"[notifiers.users]
type = "email"
host = "smtp.example.com"
from = "ferry@example.com"
to = ["a@example.com", "not an address"]
"#;
    assert_one(text, 5, 24, "not an address");
}

#[test]
fn an_unknown_default_notifier() {
    let text = format!("[defaults]\non_failure = [\"ops\"]\n{GOOD_JOB}");
    assert_one(&text, 2, 15, "no notifier named \"ops\"");
}

#[test]
fn a_webhook_without_a_url() {
    let text = r#"[notifiers.chat]
type = "webhook"
format = "chat"
"#;
    assert_one(text, 1, 1, "give `url`, `url_env` or `url_file`");
}

#[test]
fn partition_requires_and_marker_keys_are_checked_where_they_are() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
marker = "../_SUCCESS"
requires = [{ source = "", url = "ftp://x" }]
partition = { source = "s", period = "0s" }
source = { type = "inline", data = "x" }
writers = [{ type = "local", path = "out" }]
"#;
    let errors = ferry::config::parse(text, "jobs.toml", std::path::PathBuf::from("."))
        .expect_err("invalid")
        .to_string();
    for expected in [
        "jobs.toml:4:10: jobs[0].marker: must be a plain file name",
        "jobs.toml:5:24: jobs[0].requires[0].source: must be 1 to 256 characters",
        "jobs.toml:5:34: jobs[0].requires[0].url: must be an http:// or https:// URL",
        "jobs.toml:6:38: jobs[0].partition.period: must be longer than zero",
    ] {
        assert!(errors.contains(expected), "{expected}\n---\n{errors}");
    }
    let orphan = "[[jobs]]\nname = \"a\"\nschedule = \"@hourly\"\nmarker = \"_SUCCESS\"\nsource = { type = \"inline\", data = \"x\" }\nwriters = [{ type = \"local\", path = \"out\" }]\n";
    let errors = ferry::config::parse(orphan, "jobs.toml", std::path::PathBuf::from("."))
        .expect_err("a marker needs a partition")
        .to_string();
    assert!(
        errors.contains("jobs.toml:4:10: jobs[0].marker: a marker needs `partition`"),
        "{errors}"
    );
}

#[test]
fn one_validate_reports_all_eight_problems_of_a_job_each_at_its_key() {
    let text = r#"[notifiers.ops]
type = "log"

[[jobs]]
name = "bad name!"
schedule = "61 * * * * *"
overlap = "sometimes"
rate_limit = "fast"
transform = "rar"
source = { type = "inline", data = "x", colour = "red" }
writers = []
on_success = ["nobody"]
"#;
    let errors = ferry::config::parse(text, "jobs.toml", std::path::PathBuf::from("."))
        .expect_err("invalid")
        .to_string();
    let expected = [
        "jobs.toml:5:8: jobs[0].name: job name \"bad name!\"",
        "jobs.toml:6:12: jobs[0].schedule: invalid schedule \"61 * * * * *\": second field `61` is invalid: it takes 0-59",
        "jobs.toml:7:11: jobs[0].overlap: unknown variant `sometimes`",
        "jobs.toml:8:14: jobs[0].rate_limit: invalid rate \"fast\"",
        "jobs.toml:9:13: jobs[0].transform: unknown variant `rar`",
        "jobs.toml:10:41: jobs[0].source: unknown field `colour`",
        "jobs.toml:11:11: jobs[0].writers: needs at least one writer",
        "jobs.toml:12:15: jobs[0].on_success[0]: no notifier named \"nobody\"",
    ];
    assert_eq!(errors.lines().count(), expected.len(), "{errors}");
    for (line, want) in errors.lines().zip(expected) {
        assert!(line.starts_with(want), "{want}\n---\n{errors}");
    }
}

#[test]
fn each_cron_field_is_named_when_it_is_wrong() {
    for (schedule, field) in [
        ("0 61 * * * *", "minute field `61`"),
        ("0 0 24 * * *", "hour field `24`"),
        ("0 0 0 32 * *", "day-of-month field `32`"),
        ("0 0 0 * 13 *", "month field `13`"),
        ("0 0 0 * * 9", "day-of-week field `9`"),
        ("99 * * * *", "minute field `99`"),
        ("* * *", "3 fields"),
    ] {
        let err = ferry::schedule::Schedule::parse(schedule, chrono_tz::UTC).expect_err(schedule);
        assert!(err.contains(field), "{schedule}: {err}");
    }
}

#[test]
fn invalid_utf8_is_placed_at_its_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jobs.toml");
    let mut text = b"[[jobs]]\nname = \"a\"\nschedule = \"@hourly\" # caf".to_vec();
    text.push(0xe9);
    text.extend_from_slice(b"\n");
    std::fs::write(&path, text).expect("write");
    let err = ferry::config::load(&path).expect_err("not UTF-8");
    let first = &err.0[0];
    assert_eq!((first.line, first.column), (3, 27), "{err}");
    assert!(
        first.message.contains("not UTF-8: invalid byte 0xe9"),
        "{err}"
    );
}

#[test]
fn a_bad_value_inside_a_notifier_or_an_inline_writer_is_placed_at_its_key() {
    let text = r#"[notifiers.ops]
type = "email"
host = "smtp.example.com"
port = "twenty-five"
from = "a@example.com"
to = ["b@example.com"]

[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [
  { type = "local",
    path = "out/x",
    overwrite = "yes" },
  { type = "s3", bucket = "bkt", key = "k", storage_class = 7 },
]
"#;
    let errors = ferry::config::parse(text, "jobs.toml", std::path::PathBuf::from("."))
        .expect_err("invalid")
        .to_string();
    for expected in [
        "jobs.toml:4:1: notifiers.ops.port: invalid type: string \"twenty-five\"",
        "jobs.toml:15:5: jobs[0].writers[0].overwrite: invalid type: string \"yes\"",
        "jobs.toml:16:45: jobs[0].writers[1].storage_class: invalid type: integer `7`",
    ] {
        assert!(errors.contains(expected), "{expected}\n---\n{errors}");
    }
}

#[test]
fn http_writer_settings_are_checked_at_their_keys() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "http", url = "http://u:p@example.com/in", method = "DELETE", expect_status = [201, 999], ca_file = "ca.pem", headers = { "Bad Name" = "x", "X-Key" = { env = "1NOPE" } }, password = "p" }]
"#;
    let found: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    let expected = [
        "jobs.toml:5:35: jobs[0].writers[0].url: put credentials in `username`",
        "jobs.toml:5:64: jobs[0].writers[0].method: unknown variant `DELETE`, expected `PUT` or `POST`",
        "jobs.toml:5:99: jobs[0].writers[0].expect_status: 999 is not an HTTP status (100–599)",
        "jobs.toml:5:121: jobs[0].writers[0].ca_file: only applies with an https:// url",
        "jobs.toml:5:156: jobs[0].writers[0].headers.Bad Name: not a valid header name",
        "jobs.toml:5:179: jobs[0].writers[0].headers.X-Key.env: not an environment variable name",
        "jobs.toml:5:203: jobs[0].writers[0].password: a password needs a `username`",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (line, want) in found.iter().zip(expected) {
        assert!(line.starts_with(want), "{want}\n{found:#?}");
    }
}

#[test]
fn one_way_to_trust_a_server_and_a_fingerprint_that_is_one() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "ftp", host = "h", path = "/a", security = "explicit_tls", ca_file = "ca.pem", pin_sha256 = "AB:CD" }]
"#;
    let found: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with(
            "jobs.toml:5:113: jobs[0].writers[0].pin_sha256: cannot be combined with `ca_file`"
        ),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with(
            "jobs.toml:5:113: jobs[0].writers[0].pin_sha256: must be a SHA-256 fingerprint"
        ),
        "{found:#?}"
    );
}

#[test]
fn sftp_writer_settings_are_checked_at_their_keys() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "sftp", host = "u@h", username = "", path = "/in/", passphrase_env = "KEY_PASS", host_key = "SHA256:nope", mode = "0999" }]
[[jobs]]
name = "b"
schedule = "@hourly"
source = { type = "inline", data = "x" }
writers = [{ type = "sftp", host = "h", username = "u", password_env = "P", path = "a", known_hosts = "k", host_key = "SHA256:x" }]
"#;
    assert_reported(
        text,
        &[
            "jobs.toml:5:36: jobs[0].writers[0].host: must be a host name or address",
            "jobs.toml:5:54: jobs[0].writers[0].username: must not be empty",
            "jobs.toml:5:65: jobs[0].writers[0].path: must be a path to a file",
            "jobs.toml:5:12: jobs[0].writers[0].private_key_file: is needed to log in",
            "jobs.toml:5:90: jobs[0].writers[0].passphrase_env: is the passphrase of private_key_file",
            "jobs.toml:5:113: jobs[0].writers[0].host_key: is not a SHA-256 fingerprint",
            "jobs.toml:5:135: jobs[0].writers[0].mode: must be octal permission bits",
            "jobs.toml:10:119: jobs[1].writers[0].host_key: and known_hosts are two ways",
        ],
    );
}

#[test]
fn sql_source_settings_are_checked_at_their_keys() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "sql", url = "mysql://db/shop", query = " ", format = "xml", connect_timeout = "0s", page_rows = 5 }
writers = [{ type = "local", path = "out" }]
"#;
    assert_reported(
        text,
        &[
            "jobs.toml:4:32: jobs[0].source.url: must be a postgres://… or sqlite://PATH URL",
            "jobs.toml:4:59: jobs[0].source.query: must not be empty",
            "jobs.toml:4:64: jobs[0].source.format: unknown variant `xml`, expected `csv` or `jsonl`",
            "jobs.toml:4:98: jobs[0].source.connect_timeout: must be longer than zero",
            "jobs.toml:4:116: jobs[0].source.page_rows: only applies with resume_key",
        ],
    );
}

#[test]
fn api_source_settings_are_checked_at_their_keys() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "api", url = "ftp://x/y", records = "data", pagination = { type = "cursor", pointer = "", param = "" }, since = { field = "", param = "s" }, max_pages = 0 }
writers = [{ type = "local", path = "out" }]
"#;
    assert_reported(
        text,
        &[
            "jobs.toml:4:32: jobs[0].source.url: the URL must start with http:// or https://",
            "jobs.toml:4:55: jobs[0].source.records: must be a JSON pointer",
            "jobs.toml:4:105: jobs[0].source.pagination.pointer: must not be empty",
            "jobs.toml:4:117: jobs[0].source.pagination.param: must not be empty",
            "jobs.toml:4:141: jobs[0].source.since.field: must not be empty",
            "jobs.toml:4:172: jobs[0].source.max_pages: must be at least 1",
        ],
    );
    let unknown = text.replace("type = \"cursor\"", "type = \"offset\"");
    let found: Vec<String> = errors(&unknown).iter().map(ToString::to_string).collect();
    assert!(
        found
            .iter()
            .any(|line| line.contains("unknown variant `offset`")),
        "{found:#?}"
    );
}

#[test]
fn files_source_settings_are_checked_at_their_keys() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "files", glob = "drop/[*.csv", after = "archive" }
writers = [{ type = "local", path = "out/{file_nam}" }]
"#;
    assert_reported(
        text,
        &[
            "jobs.toml:4:35: jobs[0].source.glob: is not a pattern",
            "jobs.toml:4:58: jobs[0].source.after: must be \"keep\", \"delete\" or \"move:DIR\"",
            "jobs.toml:5:37: jobs[0].writers[0].path: unknown placeholder {file_nam}",
        ],
    );
}

#[test]
fn pgp_settings_are_checked_at_their_keys() {
    let text = r#"[[jobs]]
name = "a"
schedule = "@hourly"
source = { type = "inline", data = "x" }
pgp = { recipients = [], passphrase_env = "PASS", armour = true }
writers = [{ type = "local", path = "out" }]
"#;
    let found: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    assert!(
        found
            .iter()
            .any(|line| line.contains("jobs[0].pgp") && line.contains("armour")),
        "{found:#?}"
    );
    let text = text.replace(", armour = true", "");
    assert_reported(
        &text,
        &[
            "jobs.toml:5:22: jobs[0].pgp.recipients: needs at least one public key file",
            "jobs.toml:5:43: jobs[0].pgp.passphrase_env: is the passphrase of sign_key_file",
        ],
    );
}

//! The SFTP writer against OpenSSH's sshd on 127.0.0.1 (Debian's `openssh-server`, started
//! by each test with generated keys; `FERRY_TEST_SSHD` names it).

use std::time::Duration;

use ferry::error::ErrorKind;
use ferry::runner::{RunReport, RunStatus};
use ferry::state::Ledger;

use crate::support::ftp::free_port;
use crate::support::sshd::{self, Sshd, fingerprint, keygen, password_user, sshd};
use crate::support::{
    Relay, Workspace, files_under, random_file, sha256_file, wait_for_attempt, wait_until_held,
};

/// A job writing `source` to `path` on port `port` as root with the key `id_ed25519`, the
/// server's key checked against `known_hosts`; `extra` is added to the writer's table.
fn sftp_job(source: &str, port: u16, path: &str, extra: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "sftp-job"
schedule = "0 0 0 * * Mon-Fri"
source = {source}
retry = {{ max_attempts = 3, initial_interval = "100ms" }}
writers = [{{ type = "sftp", host = "127.0.0.1", port = {port}, username = "{user}", private_key_file = "id_ed25519", known_hosts = "known_hosts", path = "{path}"{extra} }}]
"#,
        user = sshd::USER
    )
}

/// A workspace with a client key, and a server that takes it and is in `known_hosts`.
async fn start() -> Option<(Workspace, Sshd)> {
    let binary = sshd()?;
    let ws = Workspace::new();
    keygen(&ws.path().join("id_ed25519"), "ed25519", "");
    let server = Sshd::start(&binary, &[&ws.path().join("id_ed25519")], false).await;
    std::fs::write(ws.path().join("known_hosts"), server.known_hosts_line()).expect("known_hosts");
    Some((ws, server))
}

async fn run(ws: &Workspace, text: &str) -> RunReport {
    ws.run_first(text, None).await
}

#[tokio::test]
async fn a_file_lands_under_its_final_name_in_new_directories() {
    let Some((ws, server)) = start().await else {
        return;
    };
    random_file(&ws.path().join("big.bin"), 24 << 20);
    let target = server.root().join("a/b/{job}-{scheduled:%F}.bin");
    let text = sftp_job(
        r#"{ type = "file", path = "big.bin" }"#,
        server.port,
        &target.display().to_string(),
        "",
    );
    let report = run(&ws, &text).await;
    assert_eq!(
        report.status,
        RunStatus::Succeeded,
        "{report:#?}\n{}",
        server.log()
    );
    let delivered = files_under(&server.root());
    assert_eq!(delivered.len(), 1, "no temporary file left: {delivered:?}");
    assert!(delivered[0].starts_with("a/b/sftp-job-"), "{delivered:?}");
    let want = sha256_file(&ws.path().join("big.bin"));
    assert_eq!(sha256_file(&server.root().join(&delivered[0])), want);
    let receipt = &report.deliveries[0];
    assert_eq!(receipt.sha256, want);
    assert_eq!(receipt.bytes, 24 << 20);
    assert_eq!(
        receipt.location,
        format!(
            "sftp://127.0.0.1:{}{}",
            server.port,
            server.root().join(&delivered[0]).display()
        )
    );
}

/// A path without a leading slash is under the login directory (here sftp's start
/// directory); `mode` is set; a checksum file lands beside.
#[tokio::test]
async fn relative_paths_a_mode_and_a_checksum_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some((ws, server)) = start().await else {
        return;
    };
    let text = sftp_job(
        r#"{ type = "inline", data = "a,b\n1,2\n" }"#,
        server.port,
        "in/export.csv",
        r#", mode = "0640", checksum_file = true"#,
    );
    let report = run(&ws, &text).await;
    assert_eq!(
        report.status,
        RunStatus::Succeeded,
        "{report:#?}\n{}",
        server.log()
    );
    assert_eq!(
        files_under(&server.root()),
        vec![
            "in/export.csv".to_owned(),
            "in/export.csv.sha256".to_owned()
        ]
    );
    let delivered = server.root().join("in/export.csv");
    assert_eq!(std::fs::read(&delivered).expect("read"), b"a,b\n1,2\n");
    let mode = std::fs::metadata(&delivered)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640, "{mode:o}");
    let line = std::fs::read_to_string(server.root().join("in/export.csv.sha256")).expect("read");
    assert_eq!(
        line,
        format!("{}  export.csv\n", report.deliveries[0].sha256)
    );
    assert_eq!(
        report.deliveries[0].location,
        format!("sftp://127.0.0.1:{}/~/in/export.csv", server.port)
    );
}

/// An existing file is replaced in one step (posix-rename), or kept with `overwrite = false`.
#[tokio::test]
async fn an_existing_file_is_replaced_or_kept() {
    let Some((ws, server)) = start().await else {
        return;
    };
    std::fs::write(server.root().join("data.txt"), "old").expect("old file");
    let replace = sftp_job(
        r#"{ type = "inline", data = "new" }"#,
        server.port,
        "data.txt",
        "",
    );
    let report = run(&ws, &replace).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        std::fs::read_to_string(server.root().join("data.txt")).expect("read"),
        "new"
    );

    let keep = sftp_job(
        r#"{ type = "inline", data = "newer" }"#,
        server.port,
        "data.txt",
        ", overwrite = false",
    );
    let report = run(&ws, &keep).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.error.expect("failure").kind, ErrorKind::Rejected);
    assert_eq!(
        std::fs::read_to_string(server.root().join("data.txt")).expect("read"),
        "new"
    );
    assert_eq!(files_under(&server.root()), vec!["data.txt".to_owned()]);
}

/// The host key is checked strictly: pinned by fingerprint or key it passes; another
/// fingerprint, a host missing from known_hosts and a changed key each fail at once as
/// `auth`, with nothing written and the fingerprint shown.
#[tokio::test]
async fn the_host_key_is_checked_strictly() {
    let Some((ws, server)) = start().await else {
        return;
    };
    let source = r#"{ type = "inline", data = "x" }"#;
    let shown = fingerprint(&server.host_key());
    let pinned = |pin: &str| {
        sftp_job(source, server.port, "x.txt", "").replace(
            "known_hosts = \"known_hosts\"",
            &format!("host_key = \"{pin}\""),
        )
    };
    for pin in [shown.clone(), sshd::public_key(&server.host_key())] {
        let report = run(&ws, &pinned(&pin)).await;
        assert_eq!(report.status, RunStatus::Succeeded, "{pin}: {report:#?}");
    }
    std::fs::remove_file(server.root().join("x.txt")).expect("remove");

    let other = ws.path().join("other_host");
    keygen(&other, "ed25519", "");
    let changed = format!("[127.0.0.1]:{} {}\n", server.port, sshd::public_key(&other));
    let cases = [
        (pinned(&fingerprint(&other)), "not the one host_key pins"),
        (
            sftp_job(source, server.port, "x.txt", "").replace(
                "known_hosts = \"known_hosts\"",
                "known_hosts = \"empty_known_hosts\"",
            ),
            "ssh-keyscan -p",
        ),
        (
            sftp_job(source, server.port, "x.txt", "").replace(
                "known_hosts = \"known_hosts\"",
                "known_hosts = \"changed_known_hosts\"",
            ),
            "differs from line 2",
        ),
    ];
    std::fs::write(ws.path().join("empty_known_hosts"), "").expect("write");
    std::fs::write(
        ws.path().join("changed_known_hosts"),
        format!("other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0hOLCNTf8Wdm4iEDAG3vbBgQsG8hUbCPgGw2u8ktz\n{changed}"),
    )
    .expect("write");
    for (text, says) in cases {
        let report = run(&ws, &text).await;
        assert_eq!(report.status, RunStatus::Failed, "{text}");
        assert_eq!(report.attempts, 1, "a host key failure is not retried");
        let failure = report.error.expect("failure");
        assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
        let message = failure.chain.join(": ");
        assert!(message.contains(says), "{message}");
        assert!(
            message.contains(&shown),
            "the presented key's fingerprint: {message}"
        );
    }
    assert!(files_under(&server.root()).is_empty());
}

/// A key the server does not take fails at once as `auth`; an encrypted key works with its
/// passphrase, and a wrong passphrase is a configuration error naming the file.
#[tokio::test]
async fn keys_and_passphrases() {
    let Some(binary) = sshd() else {
        return;
    };
    let ws = Workspace::new();
    keygen(&ws.path().join("id_ed25519"), "ed25519", "");
    keygen(&ws.path().join("id_rsa"), "rsa", "correct horse");
    let server = Sshd::start(&binary, &[&ws.path().join("id_rsa")], false).await;
    std::fs::write(ws.path().join("known_hosts"), server.known_hosts_line()).expect("write");
    ws.secret("passphrase", "correct horse");
    let source = r#"{ type = "inline", data = "x" }"#;

    let refused = run(&ws, &sftp_job(source, server.port, "x.txt", "")).await;
    assert_eq!(refused.status, RunStatus::Failed);
    assert_eq!(refused.attempts, 1);
    let failure = refused.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert!(
        failure.chain.join(" ").contains("refused root's login"),
        "{failure:?}"
    );

    let rsa = sftp_job(
        source,
        server.port,
        "x.txt",
        r#", passphrase_file = "secrets/passphrase""#,
    )
    .replace("id_ed25519", "id_rsa");
    let report = run(&ws, &rsa).await;
    assert_eq!(
        report.status,
        RunStatus::Succeeded,
        "{report:#?}\n{}",
        server.log()
    );
    assert_eq!(files_under(&server.root()), vec!["x.txt".to_owned()]);

    // Keys are read when the job is built (at start-up and on reload), so a bad one is
    // reported before any run.
    ws.secret("passphrase", "wrong horse");
    let failure = ferry::job::Job::build_all(&ws.config(&rsa), &Default::default())
        .expect_err("a wrong passphrase");
    assert_eq!(failure.kind(), ErrorKind::Config, "{failure:?}");
    let message = failure.to_string();
    assert!(
        message.contains("id_rsa cannot be decrypted with the passphrase given"),
        "{message}"
    );
    assert!(!message.contains("wrong horse"));
}

/// Password logins, for a user `.ci/run` makes (`FERRY_TEST_SSH_PASSWORD_USER`); a wrong
/// password fails at once as `auth` and is never shown.
#[tokio::test]
async fn a_password_logs_in() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(binary) = sshd() else {
        return;
    };
    let Some((user, password)) = password_user() else {
        eprintln!("SFTP password test not run: FERRY_TEST_SSH_PASSWORD_USER is not set");
        return;
    };
    let server = Sshd::start(&binary, &[], true).await;
    let account = nix::unistd::User::from_name(&user)
        .expect("look up the user")
        .expect("the password user exists");
    let root = server.root();
    for dir in [root.parent().expect("parent"), root.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    nix::unistd::chown(&root, Some(account.uid), Some(account.gid)).expect("chown");
    let ws = Workspace::new();
    std::fs::write(ws.path().join("known_hosts"), server.known_hosts_line()).expect("write");
    ws.secret("ssh", &password);
    let text = sftp_job(
        r#"{ type = "inline", data = "by password" }"#,
        server.port,
        "p.txt",
        "",
    )
    .replace("username = \"root\"", &format!("username = \"{user}\""))
    .replace(
        "private_key_file = \"id_ed25519\"",
        "password_file = \"secrets/ssh\"",
    );
    let report = run(&ws, &text).await;
    assert_eq!(
        report.status,
        RunStatus::Succeeded,
        "{report:#?}\n{}",
        server.log()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("p.txt")).expect("read"),
        "by password"
    );

    ws.secret("ssh", "not-the-password");
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.attempts, 1);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure:?}");
    assert!(!format!("{failure:?}").contains("not-the-password"));
}

#[tokio::test]
async fn the_server_down_is_a_network_failure() {
    let ws = Workspace::new();
    let port = free_port();
    std::fs::write(ws.path().join("known_hosts"), "").expect("write");
    let text = sftp_job(r#"{ type = "inline", data = "x" }"#, port, "/x", "")
        .replace("private_key_file = \"id_ed25519\"", "password = \"unused\"");
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.error.expect("failure").kind, ErrorKind::Network);
    assert_eq!(report.attempts, 3, "connection failures are retried");
}

#[tokio::test]
async fn a_failing_source_leaves_nothing_on_the_server() {
    let Some((ws, server)) = start().await else {
        return;
    };
    let text = sftp_job(
        r#"{ type = "command", command = ["sh", "-c", "head -c 3000000 /dev/zero; exit 2"] }"#,
        server.port,
        "out/data.bin",
        "",
    );
    let report = run(&ws, &text).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.error.expect("failure").kind, ErrorKind::Command);
    let left: Vec<String> = files_under(&server.root());
    assert!(left.is_empty(), "{left:?}");
}

/// An upload cut off mid-way (every connection through a relay cut, as a network failure
/// would) continues from the partial file on the server at the next attempt: the
/// delivered file is byte-identical, only the final name is left, and the receipt's sha256
/// covers every byte.
#[tokio::test]
async fn a_cut_upload_resumes_from_the_partial_file() {
    let Some((ws, server)) = start().await else {
        return;
    };
    let input = ws.path().join("input.bin");
    random_file(&input, 48 << 20);
    let relay = Relay::start(([127, 0, 0, 1], server.port).into()).await;
    std::fs::write(
        ws.path().join("known_hosts"),
        format!(
            "[127.0.0.1]:{} {}\n",
            relay.port,
            sshd::public_key(&server.host_key())
        ),
    )
    .expect("write");
    let text = sftp_job(
        r#"{ type = "file", path = "input.bin" }"#,
        relay.port,
        "in/resumable.bin",
        "",
    )
    .replace(
        "schedule = \"0 0 0 * * Mon-Fri\"",
        "schedule = \"0 0 0 * * Mon-Fri\"\nrate_limit = \"12MiB\"",
    )
    .replace(
        "retry = { max_attempts = 3, initial_interval = \"100ms\" }",
        "retry = { max_attempts = 12, initial_interval = \"500ms\", max_interval = \"1s\" }",
    );
    let ledger: Ledger = ws.ledger().await;
    let watched = server.root().join("in");
    let watcher = ledger.clone();
    let cutter = tokio::spawn(async move {
        wait_until_held(&watched, 30 << 20).await;
        relay.down();
        wait_for_attempt(&watcher, "sftp-job", 2, Duration::from_secs(60)).await;
        relay.up();
        relay
    });
    let report = ws.run_first(&text, Some(&ledger)).await;
    let _relay = cutter.await.expect("cut");
    assert_eq!(
        report.status,
        RunStatus::Succeeded,
        "{report:#?}\n{}",
        server.log()
    );
    assert!(report.attempts >= 2, "{report:#?}");
    eprintln!(
        "resumed from byte {} of {}; attempts {}",
        report.resumed_from,
        48u64 << 20,
        report.attempts
    );
    assert!(
        report.resumed_from >= 8 << 20 && report.resumed_from < 48 << 20,
        "resumed part-way: {}",
        report.resumed_from
    );
    assert_eq!(
        sha256_file(&server.root().join("in/resumable.bin")),
        sha256_file(&input)
    );
    assert_eq!(report.deliveries[0].sha256, sha256_file(&input));
    assert_eq!(
        files_under(&server.root()),
        vec!["in/resumable.bin".to_owned()]
    );
}

/// `ferry run` killed with SIGKILL mid-upload and started again: the second daemon asks the
/// server how much the temporary file holds and continues there; the delivered file is
/// byte-identical and no temporary file is left on the server.
#[tokio::test]
async fn a_daemon_killed_mid_upload_resumes_from_the_partial_file() {
    let Some((ws, server)) = start().await else {
        return;
    };
    let root = server.root();
    let writer = format!(
        r#"{{ type = "sftp", host = "127.0.0.1", port = {}, username = "{}", private_key_file = "id_ed25519", known_hosts = "known_hosts", path = "in/big.bin" }}"#,
        server.port,
        sshd::USER
    );
    let watched = root.join("in");
    let target = root.join("in/big.bin");
    tokio::task::spawn_blocking(move || {
        let held = || {
            std::fs::read_dir(&watched)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().contains(".partial-"))
                .filter_map(|entry| entry.metadata().ok())
                .map(|meta| meta.len())
                .sum()
        };
        crate::resume::killed_and_restarted(&ws, &writer, held, &target);
    })
    .await
    .expect("the daemon test");
    assert_eq!(
        files_under(&root),
        vec!["in/big.bin".to_owned()],
        "{}",
        server.log()
    );
}

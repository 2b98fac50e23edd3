//! The local writer: atomic appearance, no leftovers, overwrite policy, confinement, full disk.

use ferry::error::ErrorKind;
use ferry::runner::RunStatus;

use crate::support::run_job;
use crate::support::{Workspace, random_file, show};

fn job(source: &str, writer: &str) -> String {
    format!(
        r#"[[jobs]]
name = "w"
schedule = "@hourly"
source = {source}
writers = [{writer}]
retry = {{ max_attempts = 2, initial_interval = "10ms" }}
"#
    )
}

#[tokio::test]
async fn parent_directories_are_created_and_no_temporary_file_remains() {
    let ws = Workspace::new();
    let text = job(
        r#"{ type = "inline", data = "x" }"#,
        r#"{ type = "local", path = "deep/er/{job}/{scheduled:%Y/%m/%d}/{run_id}.txt" }"#,
    );
    let report = run_job(&ws, &text, "w").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let files = ws.files();
    assert_eq!(
        files,
        vec![format!("deep/er/w/2026/11/23/{}.txt", report.run_id)]
    );
}

#[tokio::test]
async fn a_source_failing_mid_stream_leaves_no_file_under_the_final_name() {
    let ws = Workspace::new();
    // Two MiB of output, then failure: the writer has written much of it by then.
    let text = job(
        r#"{ type = "command", command = ["sh", "-c", "head -c 2097152 /dev/urandom; exit 1"] }"#,
        r#"{ type = "local", path = "out/data.bin" }"#,
    );
    let report = run_job(&ws, &text, "w").await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(
        report.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::Command)
    );
    assert!(!ws.path().join("out/data.bin").exists(), "no final file");
    assert_eq!(ws.files(), Vec::<String>::new(), "no partial file either");
}

#[tokio::test]
async fn overwrite_false_refuses_an_existing_file_and_keeps_it() {
    let ws = Workspace::new();
    let text = job(
        r#"{ type = "inline", data = "new" }"#,
        r#"{ type = "local", path = "out/once.txt", overwrite = false }"#,
    );
    std::fs::create_dir_all(ws.path().join("out")).expect("mkdir");
    std::fs::write(ws.path().join("out/once.txt"), "old").expect("old file");
    let report = run_job(&ws, &text, "w").await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Rejected);
    assert_eq!(report.attempts, 1, "refusing to overwrite is permanent");
    assert!(
        failure.chain.join(": ").contains("overwrite"),
        "{:?}",
        failure.chain
    );
    assert_eq!(
        std::fs::read(ws.path().join("out/once.txt")).expect("kept"),
        b"old"
    );
    assert_eq!(ws.files(), vec!["out/once.txt".to_owned()]);

    // Without the existing file, the same job delivers.
    std::fs::remove_file(ws.path().join("out/once.txt")).expect("remove");
    let report = run_job(&ws, &text, "w").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(
        std::fs::read(ws.path().join("out/once.txt")).expect("written"),
        b"new"
    );
}

/// Readers of the final name see the old file or the whole new one, never a mix: the new
/// file is written elsewhere and renamed over the old one (a reader holding the old file
/// open keeps reading the old bytes), not truncated and rewritten in place.
#[tokio::test]
async fn overwrite_replaces_atomically() {
    use std::io::Read as _;
    let ws = Workspace::new();
    let new_len = 4 << 20;
    random_file(&ws.path().join("new.bin"), new_len);
    let new = std::fs::read(ws.path().join("new.bin")).expect("read input");
    let text = r#"[[jobs]]
name = "w"
schedule = "@hourly"
rate_limit = "16MiB"
source = { type = "file", path = "new.bin" }
writers = [{ type = "local", path = "out/latest.bin" }]
"#;
    let target = ws.path().join("out/latest.bin");
    std::fs::create_dir_all(ws.path().join("out")).expect("mkdir");
    std::fs::write(&target, b"first").expect("old file");
    let mut held_open = std::fs::File::open(&target).expect("open the old file");

    // A reader reads the final name over and over while the delivery runs.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (done, target, new) = (std::sync::Arc::clone(&done), target.clone(), new.clone());
        std::thread::spawn(move || {
            let (mut old_seen, mut new_seen) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let seen = std::fs::read(&target).expect("the final name always exists");
                if seen == b"first" {
                    old_seen += 1;
                } else {
                    assert!(
                        seen == new,
                        "a reader saw {} bytes of neither file",
                        seen.len()
                    );
                    new_seen += 1;
                }
            }
            (old_seen, new_seen)
        })
    };
    let report = run_job(&ws, text, "w").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert!(std::fs::read(&target).expect("read") == new);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (old_seen, _) = reader.join().expect("the reader saw only whole files");
    assert!(
        old_seen > 0,
        "the reader ran while the old file was in place"
    );

    let mut before = Vec::new();
    held_open
        .read_to_end(&mut before)
        .expect("read the old file");
    assert_eq!(before, b"first", "the old file was replaced, not rewritten");
}

#[tokio::test]
async fn a_rendered_path_leaving_its_base_is_refused() {
    let ws = Workspace::new();
    // The literal prefix is `out/`; a format producing ".." would climb out of it.
    let text = job(
        r#"{ type = "inline", data = "x" }"#,
        r#"{ type = "local", path = "out/{scheduled:..}/x" }"#,
    );
    let report = run_job(&ws, &text, "w").await;
    assert_eq!(report.status, RunStatus::Failed);
    let failure = report.error.expect("failure");
    assert_eq!(failure.kind, ErrorKind::Config);
    assert_eq!(report.attempts, 1);
    assert!(
        failure
            .chain
            .join(": ")
            .contains("leaves its base directory")
    );
    assert!(ws.files().is_empty());
}

/// A full disk: the job runs inside a private mount namespace with a 1 MiB tmpfs as its
/// output directory (util-linux `unshare`, no privileges needed where user namespaces are
/// allowed, as on Debian). ferry must fail with `storage_full`, exit 1, and leave no file.
#[test]
fn a_full_disk_fails_cleanly() {
    let ws = Workspace::new();
    let out = ws.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let config = ws.job_file(
        r#"[[jobs]]
name = "big"
schedule = "@hourly"
source = { type = "command", command = ["head", "-c", "4194304", "/dev/zero"] }
writers = [{ type = "local", path = "out/big.bin" }]
retry = { max_attempts = 1 }
"#,
    );
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{out}' || exit 97\n\
         '{ferry}' trigger big --config '{config}'\n\
         code=$?\n\
         echo \"left: $(ls -A '{out}')\"\n\
         exit $code",
        out = out.display(),
        ferry = env!("CARGO_BIN_EXE_ferry"),
        config = config.display(),
    );
    let output = std::process::Command::new("unshare")
        .args(["--map-root-user", "--mount", "sh", "-c", &script])
        .env("FERRY_LOG", "error")
        .output()
        .expect("run unshare (util-linux)");
    assert_ne!(
        output.status.code(),
        Some(97),
        "could not mount a tmpfs in a private namespace: {}",
        show(&output)
    );
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storage_full"), "{}", show(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("left: \n") || stdout.trim_end().ends_with("left:"),
        "{}",
        show(&output)
    );
}

/// `mode` and `group` give deliveries the permissions their readers need, whatever the
/// umask (the shipped unit's is 0077); a bad mode is refused at its key.
#[tokio::test]
async fn mode_and_group_are_set_on_the_delivered_file() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let ws = Workspace::new();
    let gid = nix::unistd::getegid().as_raw();
    let text = job(
        r#"{ type = "inline", data = "shared" }"#,
        &format!(
            r#"{{ type = "local", path = "out/shared.txt", mode = "0604", group = "{gid}" }}"#
        ),
    );
    let report = run_job(&ws, &text, "w").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let meta = std::fs::metadata(ws.path().join("out/shared.txt")).expect("delivered");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o604);
    assert_eq!(meta.gid(), gid);

    let bad = job(
        r#"{ type = "inline", data = "x" }"#,
        r#"{ type = "local", path = "out/x", mode = "4755" }"#,
    );
    let errors = ferry::config::parse(&bad, "jobs.toml", ws.path().to_path_buf())
        .expect_err("refused")
        .to_string();
    assert!(errors.contains("writers[0].mode"), "{errors}");
}

/// `checksum_file = true` writes `NAME.sha256` beside the delivery, which `sha256sum -c`
/// accepts in that directory; a changed byte makes it fail.
#[tokio::test]
async fn a_checksum_file_beside_the_delivery_passes_sha256sum() {
    let ws = Workspace::new();
    random_file(&ws.path().join("in.bin"), 3 << 20);
    let text = job(
        r#"{ type = "file", path = "in.bin" }"#,
        r#"{ type = "local", path = "out/{job}.bin", checksum_file = true }"#,
    );
    let report = run_job(&ws, &text, "w").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let line = std::fs::read_to_string(ws.path().join("out/w.bin.sha256")).expect("sidecar");
    assert_eq!(line, format!("{}  w.bin\n", report.deliveries[0].sha256));
    let check = |dir: &std::path::Path| {
        std::process::Command::new("sha256sum")
            .args(["-c", "--strict", "w.bin.sha256"])
            .current_dir(dir)
            .output()
            .expect("run sha256sum (coreutils)")
    };
    let out = ws.path().join("out");
    let checked = check(&out);
    assert!(checked.status.success(), "{}", show(&checked));
    // The check can fail: one byte changed.
    let mut bytes = std::fs::read(out.join("w.bin")).expect("read");
    bytes[1000] ^= 1;
    std::fs::write(out.join("w.bin"), bytes).expect("write");
    assert!(!check(&out).status.success());
}

/// Reading a file and writing files hold a thread each for a whole delivery; they are not
/// tokio's blocking-pool threads, which the steps feeding them need. With a pool of two
/// threads, a file fanned out to four files still arrives (holding pool threads, the reader
/// and the first writer would wait forever for writers that get no thread).
#[test]
fn long_transfers_do_not_use_up_the_blocking_pool() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ws = Workspace::new();
    random_file(&ws.path().join("in.bin"), 8 << 20);
    let writers = (0..4)
        .map(|i| format!(r#"{{ type = "local", path = "out/{i}.bin" }}"#))
        .collect::<Vec<_>>()
        .join(", ");
    let text = job(r#"{ type = "file", path = "in.bin" }"#, &writers);
    let report = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(60), run_job(&ws, &text, "w"))
            .await
            .expect("the delivery finishes")
    });
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    assert_eq!(report.deliveries.len(), 4);
    for i in 0..4 {
        let len = std::fs::metadata(ws.path().join(format!("out/{i}.bin"))).map(|m| m.len());
        assert_eq!(len.ok(), Some(8 << 20));
    }
}

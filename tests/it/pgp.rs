//! `pgp = { … }` checked with GnuPG (Debian's `gnupg`, `FERRY_TEST_GPG` names it): keys made
//! by gpg, payloads encrypted by ferry, decrypted (and their signatures checked) by gpg.

use std::path::Path;
use std::process::Command;

use ferry::error::ErrorKind;
use ferry::runner::RunStatus;

use crate::support::{Workspace, random_file, run_job, sha256_file};

/// The gpg binary from `FERRY_TEST_GPG`; `None` (the test is not run, and says so) when
/// unset.
fn gpg() -> Option<String> {
    let found = std::env::var("FERRY_TEST_GPG").ok();
    if found.is_none() {
        eprintln!("PGP test not run: FERRY_TEST_GPG is not set");
    }
    found
}

/// Runs gpg with its own home in `home`, failing the test if it fails; its stdout, and its
/// stderr (where it reports signatures).
fn run_gpg(binary: &str, home: &Path, args: &[&str]) -> (Vec<u8>, String) {
    let output = Command::new(binary)
        .arg("--homedir")
        .arg(home)
        .args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args)
        .output()
        .expect("run gpg");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "gpg {args:?}: {stderr}");
    (output.stdout, stderr)
}

/// A gpg home with a key for `email` (ed25519 to sign, cv25519 to encrypt, as gpg makes
/// them by default), or a signing-only one; its public key exported to `out`.
fn make_key(binary: &str, home: &Path, email: &str, usage: &str, out: &Path) {
    run_gpg(
        binary,
        home,
        &[
            "--quick-gen-key",
            &format!("Ferry Test <{email}>"),
            "future-default",
            usage,
            "never",
        ],
    );
    let (public, _) = run_gpg(binary, home, &["--armor", "--export", email]);
    std::fs::write(out, public).expect("public key");
}

fn job(ws: &Workspace, pgp: &str) -> String {
    let _ = ws;
    format!(
        r#"[[jobs]]
name = "secret"
schedule = "@hourly"
source = {{ type = "file", path = "input.bin" }}
transform = "gzip"
pgp = {pgp}
writers = [{{ type = "local", path = "out/data.bin.gz.gpg" }}]
"#
    )
}

/// A 5 MiB payload, compressed and encrypted to two recipients and signed: each
/// recipient's gpg decrypts it to the compressed original and reports a good signature
/// from the signer; the file is neither the plain nor the compressed data.
#[tokio::test]
async fn gpg_decrypts_what_ferry_encrypted_and_signed() {
    let Some(binary) = gpg() else {
        return;
    };
    let ws = Workspace::new();
    let (alice, bob, signer) = (
        ws.path().join("alice"),
        ws.path().join("bob"),
        ws.path().join("signer"),
    );
    for home in [&alice, &bob, &signer] {
        std::fs::create_dir(home).expect("gpg home");
    }
    make_key(
        &binary,
        &alice,
        "alice@example.com",
        "default",
        &ws.path().join("alice.asc"),
    );
    make_key(
        &binary,
        &bob,
        "bob@example.com",
        "default",
        &ws.path().join("bob.asc"),
    );
    make_key(
        &binary,
        &signer,
        "ferry@example.com",
        "sign",
        &ws.path().join("signer.asc"),
    );
    let (secret, _) = run_gpg(
        &binary,
        &signer,
        &["--armor", "--export-secret-keys", "ferry@example.com"],
    );
    std::fs::write(ws.path().join("signer-secret.asc"), secret).expect("secret key");
    // Both recipients know the signer's public key, to check the signature.
    for home in [&alice, &bob] {
        run_gpg(
            &binary,
            home,
            &[
                "--import",
                &ws.path().join("signer.asc").display().to_string(),
            ],
        );
    }
    random_file(&ws.path().join("input.bin"), 5 << 20);

    let text = job(
        &ws,
        r#"{ recipients = ["alice.asc", "bob.asc"], sign_key_file = "signer-secret.asc" }"#,
    );
    let report = run_job(&ws, &text, "secret").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let encrypted = ws.path().join("out/data.bin.gz.gpg");
    assert_ne!(
        sha256_file(&encrypted),
        sha256_file(&ws.path().join("input.bin"))
    );
    assert_eq!(report.deliveries[0].sha256, sha256_file(&encrypted));

    for home in [&alice, &bob] {
        let (compressed, report) = run_gpg(
            &binary,
            home,
            &["--decrypt", &encrypted.display().to_string()],
        );
        assert!(
            report.contains("Good signature from \"Ferry Test <ferry@example.com>\""),
            "{report}"
        );
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&compressed[..]),
            &mut plain,
        )
        .expect("gzip");
        assert_eq!(
            crate::support::sha256_hex(&plain),
            sha256_file(&ws.path().join("input.bin")),
            "decrypted and decompressed, the payload is the source's"
        );
    }
}

/// `armor = true` writes an ASCII-armored message gpg decrypts; a recipient whose key may
/// only sign, and a file that is not a key, are configuration errors when the job is built.
#[tokio::test]
async fn armor_and_keys_that_cannot_be_used() {
    let Some(binary) = gpg() else {
        return;
    };
    let ws = Workspace::new();
    let home = ws.path().join("home");
    std::fs::create_dir(&home).expect("gpg home");
    make_key(
        &binary,
        &home,
        "carol@example.com",
        "default",
        &ws.path().join("carol.asc"),
    );
    std::fs::write(ws.path().join("input.bin"), "line one\nline two\n").expect("input");
    let text = job(&ws, r#"{ recipients = ["carol.asc"], armor = true }"#)
        .replace("transform = \"gzip\"\n", "");
    let report = run_job(&ws, &text, "secret").await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
    let encrypted =
        std::fs::read_to_string(ws.path().join("out/data.bin.gz.gpg")).expect("armored");
    assert!(
        encrypted.starts_with("-----BEGIN PGP MESSAGE-----"),
        "{encrypted}"
    );
    let (plain, _) = run_gpg(
        &binary,
        &home,
        &[
            "--decrypt",
            &ws.path().join("out/data.bin.gz.gpg").display().to_string(),
        ],
    );
    assert_eq!(plain, b"line one\nline two\n");

    let signing_only = ws.path().join("signing");
    std::fs::create_dir(&signing_only).expect("gpg home");
    make_key(
        &binary,
        &signing_only,
        "dave@example.com",
        "sign",
        &ws.path().join("dave.asc"),
    );
    std::fs::write(ws.path().join("not-a-key.asc"), "hello").expect("write");
    for (file, says) in [
        ("dave.asc", "has no key that may encrypt"),
        ("not-a-key.asc", "is not an armored public key"),
    ] {
        let text = job(&ws, &format!(r#"{{ recipients = ["{file}"] }}"#));
        let failure = ferry::job::Job::build_all(&ws.config(&text), &Default::default())
            .expect_err("an unusable key");
        assert_eq!(failure.kind(), ErrorKind::Config, "{failure:?}");
        assert!(failure.to_string().contains(says), "{failure}");
    }
}

//! OpenSSH's sshd (Debian's `openssh-server`) on a free port of 127.0.0.1, with generated
//! host and client keys and sftp served in-process (`internal-sftp`), starting in a
//! temporary directory, so relative paths land there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ftp::free_port;

/// A running sshd; killed (with its session processes) when dropped.
pub struct Sshd {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

/// The user key auth logs in as (sshd runs as root; so does the test).
pub const USER: &str = "root";

/// Generates an unencrypted ed25519 key pair (or RSA with `-t rsa`) at `path`, encrypted
/// with `passphrase` when it is not empty.
pub fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", "ferry-test", "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen (Debian's openssh-client)");
    assert!(status.success(), "ssh-keygen -t {kind} failed");
}

/// A public key file's key: `TYPE BASE64` without the comment.
pub fn public_key(path: &Path) -> String {
    let text = std::fs::read_to_string(path.with_extension("pub")).expect("a .pub file");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The SHA-256 fingerprint of a public key file, as `ssh-keygen -lf` prints it.
pub fn fingerprint(path: &Path) -> String {
    let output = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub"))
        .output()
        .expect("run ssh-keygen -lf");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned()
}

impl Sshd {
    /// Starts sshd, taking the public keys in `authorized` for [`USER`] (and passwords of
    /// other users when `passwords` is true).
    pub async fn start(binary: &std::ffi::OsStr, authorized: &[&Path], passwords: bool) -> Sshd {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::create_dir(dir.path().join("root")).expect("root");
        keygen(&dir.path().join("host_ed25519"), "ed25519", "");
        let keys: Vec<String> = authorized
            .iter()
            .map(|key| std::fs::read_to_string(key.with_extension("pub")).expect(".pub"))
            .collect();
        std::fs::write(dir.path().join("authorized_keys"), keys.concat()).expect("keys");
        // sshd's privilege separation directory, which Debian's package makes at boot.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let port = free_port();
        let config = format!(
            "Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid}
AuthorizedKeysFile {authorized}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication {passwords}
KbdInteractiveAuthentication no
MaxStartups 50
Subsystem sftp internal-sftp -d {root}
LogLevel VERBOSE
",
            host_key = path("host_ed25519"),
            pid = path("sshd.pid"),
            authorized = path("authorized_keys"),
            passwords = if passwords { "yes" } else { "no" },
            root = path("root"),
        );
        std::fs::write(dir.path().join("sshd_config"), config).expect("config");
        let child = Sshd::spawn(binary, dir.path());
        let mut server = Sshd { child, dir, port };
        server.wait_until_up().await;
        server
    }

    fn spawn(binary: &std::ffi::OsStr, dir: &Path) -> std::process::Child {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sshd.log"))
            .expect("log file");
        Command::new(binary)
            // Its own process group: killing it kills the session processes it forks.
            .process_group(0)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd")
    }

    async fn wait_until_up(&mut self) {
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sshd exited ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sshd did not start on port {}:\n{}", self.port, self.log());
    }

    /// Kills the server and its sessions.
    pub fn kill(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: killpg has no memory-safety preconditions; the group is the server's.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }

    /// The directory sftp sessions start in (where relative paths land).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The server's host key (private key file; `.pub` beside it).
    pub fn host_key(&self) -> PathBuf {
        self.dir.path().join("host_ed25519")
    }

    /// A `known_hosts` line for this server.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[127.0.0.1]:{} {}\n",
            self.port,
            public_key(&self.host_key())
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sshd binary to test against, from `FERRY_TEST_SSHD` (set by `.ci/run`, which installs
/// openssh-server); `None` (the test is not run, and says so) when unset.
pub fn sshd() -> Option<std::ffi::OsString> {
    let Some(binary) = std::env::var_os("FERRY_TEST_SSHD") else {
        eprintln!("SFTP test not run: FERRY_TEST_SSHD is not set");
        return None;
    };
    assert_eq!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "FERRY_TEST_SSHD is set: sshd runs as root, and the tests log in as root"
    );
    Some(binary)
}

/// A user that logs in with a password, from `FERRY_TEST_SSH_PASSWORD_USER` (`NAME:PASSWORD`,
/// made by `.ci/run`); `None` when unset.
pub fn password_user() -> Option<(String, String)> {
    let value = std::env::var("FERRY_TEST_SSH_PASSWORD_USER").ok()?;
    let (name, password) = value.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

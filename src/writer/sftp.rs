//! `type = "sftp"`: a file on an SSH server, uploaded over SFTP under a temporary name and
//! renamed.
//!
//! The server's host key is checked before anything is sent, strictly: against the lines of
//! an OpenSSH `known_hosts` file, or one pinned key (`host_key`, the key itself or its
//! `SHA256:` fingerprint as `ssh-keygen -lf` prints it). An unknown or changed key is an
//! authentication failure, never a prompt. Logins use a private key (OpenSSH or PEM format,
//! optionally with a passphrase) and/or a password, over the encrypted connection.
//!
//! The data goes to `<name>.partial-<run_id>` beside the final name (missing directories
//! are created) as pipelined writes of the largest size the server allows, is synced with
//! `fsync@openssh.com` when offered, its size is checked, and it is moved onto the final name
//! with `posix-rename@openssh.com` (atomic, replacing the old file) or, on servers without
//! it, a plain rename. `mode` is set on the complete file before the rename; a
//! server that refuses is a warning, not a failed delivery (a retry would deliver twice).
//!
//! With a state store, every couple of seconds the writer waits until the server has
//! acknowledged everything sent and records the temporary name and the hash state; a retry or
//! a restarted daemon asks the temporary file's size and continues writing at the latest
//! recorded point it holds (see [`super::upload`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::upload::{CHECKPOINT_EVERY, UploadCheckpoint, partial_name};
use super::{Delivery, Payload, Writer, WriterSettings};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{
    ConfigDuration, KeyPath, Problems, Secret, SecretField, keys, read_secret_file,
};
use crate::state::Checkpoint;
use crate::template::Template;

/// Settings of an `sftp` writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// The server's host name or address.
    pub host: String,
    /// The SSH port (22 by default).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The user to log in as.
    pub username: String,
    /// A private key to log in with (OpenSSH or PEM format), relative to the job file.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The private key's passphrase: `passphrase`, `passphrase_env` or `passphrase_file`.
    #[serde(flatten)]
    pub passphrase: SecretField<keys::Passphrase>,
    /// A password to log in with (tried after the key): `password`, `password_env` or
    /// `password_file`.
    #[serde(flatten)]
    pub password: SecretField<keys::Password>,
    /// An OpenSSH `known_hosts` file that must list the server's key (as `ssh-keyscan`
    /// prints it); relative to the job file.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// The server's key, pinned: `ssh-ed25519 AAAA…` (a `.pub` line) or its fingerprint
    /// `SHA256:…` (as `ssh-keygen -lf` prints it).
    #[serde(default)]
    pub host_key: Option<String>,
    /// The file to write on the server, a template: an absolute path, or one relative to the
    /// login directory.
    pub path: String,
    /// Whether an existing file under the final name is replaced (`true`, the default).
    #[serde(default = "default_overwrite")]
    pub overwrite: bool,
    /// The delivered file's permission bits, in octal (`"0640"`). Unset: the server's default.
    #[serde(default)]
    pub mode: Option<String>,
    /// Whether a checksum file `NAME.sha256` (`sha256sum -c` format) is written beside each
    /// delivery, after it.
    #[serde(default)]
    pub checksum_file: bool,
    /// How long connecting, logging in and each request may take (default `"30s"`).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// The most sessions this daemon opens to the server (host and port) at once, across
    /// every job (sshd's `MaxStartups` and `MaxSessions` refuse more). Unset: no limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

fn default_port() -> u16 {
    22
}

fn default_overwrite() -> bool {
    true
}

/// The most a private key file may hold.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The bytes of data in flight to the server at once (acknowledgements not yet received), as
/// OpenSSH's sftp client keeps (64 requests of 32 KiB).
const IN_FLIGHT: usize = 2 << 20;

/// The write size used when the server does not say what it takes (`limits@openssh.com`):
/// 32 KiB, which every server must accept.
const SAFE_WRITE: usize = 32 * 1024;

/// The largest write sent even to a server that allows more: its answer must still fit
/// russh-sftp's 256 KiB packet limit.
const MAX_WRITE: usize = 255 * 1024;

/// The ciphers offered, best first: AES-GCM before russh's (and OpenSSH's) first choice,
/// ChaCha20-Poly1305, as aws-lc-rs runs it on the CPU's AES instructions (measured by
/// `benches/sftp.rs`).
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// How often a quiet connection is probed; four unanswered probes end it.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long a session's end is waited for.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How the server's host key is checked.
#[derive(Debug, Clone)]
enum HostKeyCheck {
    /// Against the lines of an OpenSSH `known_hosts` file.
    KnownHosts(PathBuf),
    /// Exactly this key.
    Key(Box<PublicKey>),
    /// The key with this SHA-256 fingerprint.
    Fingerprint(russh::keys::ssh_key::Fingerprint),
}

/// A pinned `host_key`: a public key line or a `SHA256:` fingerprint.
fn parse_host_key(text: &str) -> Result<HostKeyCheck, String> {
    let text = text.trim();
    if text.starts_with("SHA256:") {
        return text
            .parse::<russh::keys::ssh_key::Fingerprint>()
            .map(HostKeyCheck::Fingerprint)
            .map_err(|_| {
                "is not a SHA-256 fingerprint: expected SHA256: and 43 base64 characters, as `ssh-keygen -lf KEY.pub` prints".to_owned()
            });
    }
    PublicKey::from_openssh(text)
        .map(|key| HostKeyCheck::Key(Box::new(key)))
        .map_err(|_| {
            "must be the server's public key (\"ssh-ed25519 AAAA…\", a line of its .pub file or of `ssh-keyscan`) or its fingerprint (\"SHA256:…\")".to_owned()
        })
}

impl HostKeyCheck {
    /// Whether `key`, presented by `host`:`port`, is the one expected; the error says why
    /// not, and what to do.
    fn verify(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), DeliveryError> {
        let shown = key.fingerprint(HashAlg::Sha256);
        let refuse = |why: String| Err(DeliveryError::new(ErrorKind::Auth, why));
        match self {
            HostKeyCheck::Key(expected) if expected.key_data() == key.key_data() => Ok(()),
            HostKeyCheck::Fingerprint(expected) if *expected == shown => Ok(()),
            HostKeyCheck::Key(_) | HostKeyCheck::Fingerprint(_) => refuse(format!(
                "the host key of {host}:{port} is {} {shown}, not the one host_key pins: the server's key changed, or something is in the way",
                key.algorithm()
            )),
            HostKeyCheck::KnownHosts(path) => {
                if let Err(err) = std::fs::File::open(path) {
                    return Err(DeliveryError::new(
                        ErrorKind::Config,
                        format!("known_hosts {}: cannot read it", path.display()),
                    )
                    .with_source(err));
                }
                match russh::keys::check_known_hosts_path(host, port, key, path) {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        let port_flag = if port == 22 { String::new() } else { format!("-p {port} ") };
                        refuse(format!(
                            "{host}:{port} (key {} {shown}) is not in known_hosts {}: check the fingerprint with the server's operator, then add it with `ssh-keyscan {port_flag}{host} >> {}`",
                            key.algorithm(),
                            path.display(),
                            path.display()
                        ))
                    }
                    Err(russh::keys::Error::KeyChanged { line }) => refuse(format!(
                        "the host key of {host}:{port} ({} {shown}) differs from line {line} of {}: the server's key changed, or something is in the way",
                        key.algorithm(),
                        path.display()
                    )),
                    Err(err) => Err(DeliveryError::new(
                        ErrorKind::Config,
                        format!("known_hosts {}: {err}", path.display()),
                    )),
                }
            }
        }
    }

    /// The host key algorithms to ask the server for: those the check can accept, so that a
    /// server with several keys presents the one on record (as OpenSSH's client does).
    fn algorithms(&self, host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
        let known: Vec<russh::keys::Algorithm> = match self {
            HostKeyCheck::Key(key) => vec![key.algorithm()],
            HostKeyCheck::Fingerprint(_) => Vec::new(),
            HostKeyCheck::KnownHosts(path) => {
                russh::keys::known_hosts::known_host_keys_path(host, port, path)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, key)| key.algorithm())
                    .collect()
            }
        };
        russh::Preferred::DEFAULT
            .key
            .iter()
            .filter(|offered| {
                known.is_empty()
                    || known
                        .iter()
                        .any(|k| k == *offered || (is_rsa(k) && is_rsa(offered)))
            })
            .cloned()
            .collect()
    }
}

fn is_rsa(algorithm: &russh::keys::Algorithm) -> bool {
    matches!(algorithm, russh::keys::Algorithm::Rsa { .. })
}

impl WriterSettings for SftpConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.max_connections == Some(0) {
            problems.add(at.key("max_connections"), "must be at least 1");
        }
        if self.host.is_empty() || self.host.contains(['/', ' ', '@']) {
            problems.add(at.key("host"), "must be a host name or address");
        }
        if self.username.is_empty() {
            problems.add(at.key("username"), "must not be empty");
        }
        match Template::parse_path(&self.path) {
            Err(err) => problems.add(at.key("path"), err.to_string()),
            Ok(_) if self.path.ends_with('/') => problems.add(
                at.key("path"),
                "must be a path to a file, e.g. \"/in/export.csv\" (absolute) or \"in/export.csv\" (under the login directory)",
            ),
            Ok(_) => {}
        }
        self.password.validate(at, problems);
        self.passphrase.validate(at, problems);
        if self.private_key_file.is_none() && !self.password.is_given() {
            problems.add(
                at.key("private_key_file"),
                "is needed to log in (or password / password_env / password_file)",
            );
        }
        if self.private_key_file.is_none() && self.passphrase.is_given() {
            problems.add(
                at.key(&self.passphrase.given_key()),
                "is the passphrase of private_key_file, which is not set",
            );
        }
        match (&self.known_hosts, &self.host_key) {
            (None, None) => problems.add(
                at.key("known_hosts"),
                "is needed to check the server's identity: a known_hosts file (`ssh-keyscan HOST > FILE`, fingerprint checked), or host_key = \"SHA256:…\"",
            ),
            (Some(_), Some(_)) => problems.add(
                at.key("host_key"),
                "and known_hosts are two ways to check the server's key: give one",
            ),
            (None, Some(key)) => {
                if let Err(err) = parse_host_key(key) {
                    problems.add(at.key("host_key"), err);
                }
            }
            (Some(_), None) => {}
        }
        if let Some(mode) = &self.mode
            && parse_permissions(mode).is_none()
        {
            problems.add(
                at.key("mode"),
                "must be octal permission bits, e.g. \"0640\"",
            );
        }
        if self.timeout.is_some_and(|t| t.get().is_zero()) {
            problems.add(at.key("timeout"), "must be longer than zero");
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        let path = Template::parse_path(&self.path)
            .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string()))?;
        let password = self.password.resolve(&env.base_dir)?;
        let passphrase = self.passphrase.resolve(&env.base_dir)?;
        let key = match &self.private_key_file {
            Some(file) => Some(Arc::new(read_private_key(
                file,
                &env.base_dir,
                passphrase.as_ref(),
            )?)),
            None => None,
        };
        let host_key = match (&self.known_hosts, &self.host_key) {
            (Some(file), _) => HostKeyCheck::KnownHosts(env.base_dir.join(file)),
            (None, Some(key)) => parse_host_key(key).map_err(|err| {
                DeliveryError::new(ErrorKind::Config, format!("host_key {err}"))
            })?,
            (None, None) => {
                return Err(DeliveryError::new(
                    ErrorKind::Config,
                    "sftp needs known_hosts or host_key",
                ));
            }
        };
        Ok(Arc::new(SftpWriter {
            settings: self.clone(),
            path,
            password,
            key,
            host_key: Arc::new(host_key),
            permissions: self.mode.as_deref().and_then(parse_permissions),
            timeout: self
                .timeout
                .map_or(Duration::from_secs(30), ConfigDuration::get),
        }))
    }

    fn marker(&self, name: &str) -> Option<Box<dyn WriterSettings>> {
        Some(Box::new(SftpConfig {
            path: super::beside(&self.path, name),
            overwrite: true,
            checksum_file: false,
            ..self.clone()
        }))
    }

    fn checksum_file(&self) -> bool {
        self.checksum_file
    }

    fn checksum_sidecar(&self) -> Option<Box<dyn WriterSettings>> {
        Some(Box::new(SftpConfig {
            path: format!("{}.sha256", self.path),
            overwrite: true,
            checksum_file: false,
            ..self.clone()
        }))
    }
}

/// `"0640"` → 0o640; `None` unless octal and at most 0o7777.
fn parse_permissions(text: &str) -> Option<u32> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|bits| !text.is_empty() && *bits <= 0o7777)
}

/// Reads and decrypts a private key file (relative to `base_dir`, or under systemd's
/// credentials directory as secret files are), refusing a file too large to be one.
fn read_private_key(
    path: &std::path::Path,
    base_dir: &std::path::Path,
    passphrase: Option<&Secret>,
) -> Result<PrivateKey, DeliveryError> {
    let shown = path.display();
    let text = read_secret_file(path, base_dir, MAX_KEY_FILE)?;
    russh::keys::decode_secret_key(&text, passphrase.map(Secret::expose)).map_err(|err| {
        // A wrong passphrase shows as whatever the decrypted bytes fail first; a key that
        // reads as encrypted without one tells the two apart.
        let encrypted = matches!(
            russh::keys::decode_secret_key(&text, None),
            Err(russh::keys::Error::KeyIsEncrypted)
        );
        let why = match (encrypted, passphrase.is_some()) {
            (true, false) => {
                "is encrypted: give its passphrase (passphrase_env or passphrase_file)".to_owned()
            }
            (true, true) => "cannot be decrypted with the passphrase given".to_owned(),
            (false, _) => format!("is not a private key ferry can read: {err}"),
        };
        DeliveryError::new(ErrorKind::Config, format!("private_key_file {shown} {why}"))
    })
}

/// What can end a connection attempt: SSH itself, or the host key check.
#[derive(Debug)]
enum Refusal {
    Ssh(russh::Error),
    HostKey(DeliveryError),
}

impl From<russh::Error> for Refusal {
    fn from(err: russh::Error) -> Refusal {
        Refusal::Ssh(err)
    }
}

/// The client side of a connection: checks the server's key.
struct ServerCheck {
    check: Arc<HostKeyCheck>,
    host: String,
    port: u16,
}

impl russh::client::Handler for ServerCheck {
    type Error = Refusal;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Refusal> {
        match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => self
                .check
                .verify(&self.host, self.port, key)
                .map(|()| true)
                .map_err(Refusal::HostKey),
            // Never asked for (no certificate algorithms are offered).
            PublicKeyOrCertificate::Certificate(_) => Err(Refusal::HostKey(DeliveryError::new(
                ErrorKind::Auth,
                format!("{}:{} presented a host certificate; ferry checks host keys", self.host, self.port),
            ))),
        }
    }
}

/// A logged-in SFTP session.
struct Session {
    ssh: russh::client::Handle<ServerCheck>,
    sftp: Arc<RawSftpSession>,
    /// `posix-rename@openssh.com`: an atomic rename that replaces the target.
    posix_rename: bool,
    /// `fsync@openssh.com`.
    fsync: bool,
    /// The size of each write.
    write_len: usize,
}

/// A failed SFTP request, classified by the server's status.
fn sftp_error(action: &str, err: SftpError) -> DeliveryError {
    let kind = match &err {
        SftpError::Status(status) => match status.status_code {
            StatusCode::NoSuchFile => ErrorKind::NotFound,
            StatusCode::PermissionDenied => ErrorKind::Auth,
            StatusCode::NoConnection | StatusCode::ConnectionLost => ErrorKind::Network,
            StatusCode::OpUnsupported | StatusCode::BadMessage => ErrorKind::Rejected,
            // OpenSSH answers FAILURE for most errno values, a full disk among them.
            _ => ErrorKind::Server,
        },
        SftpError::Timeout => ErrorKind::Timeout,
        SftpError::Limited(_) | SftpError::UnexpectedPacket => ErrorKind::Rejected,
        SftpError::IO(_) | SftpError::UnexpectedBehavior(_) => ErrorKind::Network,
    };
    DeliveryError::new(kind, format!("{action}: {err}"))
}

/// A failed SSH step.
fn ssh_error(action: &str, err: Refusal) -> DeliveryError {
    match err {
        Refusal::HostKey(err) => err,
        Refusal::Ssh(russh::Error::IO(io)) => {
            DeliveryError::new(ErrorKind::of_io(&io), format!("{action}: {io}"))
        }
        Refusal::Ssh(err) => DeliveryError::new(ErrorKind::Network, format!("{action}: {err}")),
    }
}

/// The body of `posix-rename@openssh.com`: two SFTP strings.
fn rename_request(from: &str, to: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + from.len() + to.len());
    for text in [from, to] {
        body.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
        body.extend_from_slice(text.as_bytes());
    }
    body
}

/// A writer to a file on an SFTP server.
#[derive(Debug)]
pub struct SftpWriter {
    settings: SftpConfig,
    path: Template,
    password: Option<Secret>,
    key: Option<Arc<PrivateKey>>,
    host_key: Arc<HostKeyCheck>,
    permissions: Option<u32>,
    timeout: Duration,
}

impl SftpWriter {
    fn location(&self, path: &str) -> String {
        let home = if path.starts_with('/') { "" } else { "/~/" };
        format!(
            "sftp://{}:{}{home}{path}",
            self.settings.host, self.settings.port
        )
    }

    /// The target path and its temporary name for `ctx`'s run.
    fn names(&self, ctx: &RunContext) -> Result<(String, String), DeliveryError> {
        let target = self.path.render(ctx);
        match partial_name(&target, &ctx.run_id) {
            Some(temp) => Ok((target, temp)),
            None => Err(DeliveryError::new(
                ErrorKind::Config,
                format!("{} does not name a file", self.location(&target)),
            )),
        }
    }

    /// Runs one step within the time limit.
    async fn within<T, E>(
        &self,
        action: &str,
        step: impl Future<Output = Result<T, E>>,
        classify: impl FnOnce(&str, E) -> DeliveryError,
    ) -> Result<T, DeliveryError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(result) => result.map_err(|err| classify(action, err)),
            Err(_) => Err(DeliveryError::new(
                ErrorKind::Timeout,
                format!(
                    "{action}: no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    /// One SFTP request within the time limit.
    async fn request<T>(
        &self,
        action: &str,
        step: impl Future<Output = Result<T, SftpError>>,
    ) -> Result<T, DeliveryError> {
        self.within(action, step, sftp_error).await
    }

    /// Connects, checks the server's key, logs in and starts SFTP.
    async fn connect(&self) -> Result<Session, DeliveryError> {
        let (host, port) = (self.settings.host.as_str(), self.settings.port);
        let address = format!("{host}:{port}");
        let config = russh::client::Config {
            preferred: russh::Preferred {
                key: self.host_key.algorithms(host, port).into(),
                cipher: CIPHERS.into(),
                ..russh::Preferred::DEFAULT
            },
            // No idle limit (a slow source may send nothing for minutes); keepalives find a
            // server that has gone, and every request has its own time limit.
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        };
        let check = ServerCheck {
            check: Arc::clone(&self.host_key),
            host: host.to_owned(),
            port,
        };
        let mut ssh = self
            .within(
                &format!("connect to {address}"),
                russh::client::connect(Arc::new(config), (host, port), check),
                ssh_error,
            )
            .await?;
        let user = self.settings.username.as_str();
        let mut tried = Vec::new();
        let mut accepted = false;
        if let Some(key) = &self.key {
            tried.push("the private key");
            let hash = match is_rsa(&key.algorithm()) {
                true => self
                    .within("ask for RSA signatures", ssh.best_supported_rsa_hash(), |a, e| {
                        ssh_error(a, Refusal::Ssh(e))
                    })
                    .await?
                    .flatten(),
                false => None,
            };
            accepted = self
                .within(
                    &format!("log in to {address} as {user}"),
                    ssh.authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::clone(key), hash)),
                    |a, e| ssh_error(a, Refusal::Ssh(e)),
                )
                .await?
                .success();
        }
        if !accepted && let Some(password) = &self.password {
            tried.push("the password");
            accepted = self
                .within(
                    &format!("log in to {address} as {user}"),
                    ssh.authenticate_password(user, password.expose()),
                    |a, e| ssh_error(a, Refusal::Ssh(e)),
                )
                .await?
                .success();
        }
        if !accepted {
            return Err(DeliveryError::new(
                ErrorKind::Auth,
                format!(
                    "{address} refused {user}'s login with {}",
                    tried.join(" and ")
                ),
            ));
        }
        let opened = async {
            let channel = ssh.channel_open_session().await?;
            channel.request_subsystem(true, "sftp").await?;
            Ok::<_, russh::Error>(channel)
        };
        let channel = self
            .within(&format!("start SFTP on {address}"), opened, |a, e| {
                ssh_error(a, Refusal::Ssh(e))
            })
            .await?;
        let mut sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(self.timeout.as_secs().max(1));
        let version = self
            .request(&format!("start SFTP on {address}"), sftp.init())
            .await?;
        let offers = |name: &str, version_wanted: &str| {
            version
                .extensions
                .get(name)
                .is_some_and(|v| v == version_wanted)
        };
        let mut write_len = SAFE_WRITE;
        if offers(russh_sftp::extensions::LIMITS, "1") {
            let limits = self
                .request("ask for the server's limits", sftp.limits())
                .await?;
            if limits.max_write_len > 0 {
                write_len = usize::try_from(limits.max_write_len)
                    .unwrap_or(MAX_WRITE)
                    .min(MAX_WRITE);
            }
            sftp.set_limits(limits.into());
        }
        Ok(Session {
            posix_rename: offers("posix-rename@openssh.com", "1"),
            fsync: offers(russh_sftp::extensions::FSYNC, "1"),
            write_len,
            sftp: Arc::new(sftp),
            ssh,
        })
    }

    /// Ends a session, best effort.
    async fn close(&self, session: Session) {
        let _ = session.sftp.close_session();
        let _ = tokio::time::timeout(
            self.timeout.min(CLOSE_WAIT),
            session
                .ssh
                .disconnect(russh::Disconnect::ByApplication, "", "en"),
        )
        .await;
    }

    /// The size of `path` on the server; `None` when it does not exist.
    async fn size(&self, session: &Session, path: &str) -> Result<Option<u64>, DeliveryError> {
        match self
            .request(&format!("stat {path}"), session.sftp.stat(path))
            .await
        {
            Ok(attrs) => Ok(Some(attrs.attrs.size.unwrap_or(0))),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Removes `path`, best effort.
    async fn remove(&self, session: &Session, path: &str) {
        let _ = tokio::time::timeout(self.timeout, session.sftp.remove(path)).await;
    }

    /// Creates each missing directory of `target`'s, from the top down.
    async fn make_dirs(&self, session: &Session, target: &str) -> Result<(), DeliveryError> {
        let Some((dir, _)) = target.rsplit_once('/') else {
            return Ok(());
        };
        let mut current = String::new();
        for part in dir.split('/') {
            if !current.is_empty() || dir.starts_with('/') {
                current.push('/');
            }
            current.push_str(part);
            if part.is_empty() || self.size(session, &current).await?.is_some() {
                continue;
            }
            let made = self
                .request(
                    &format!("create directory {current}"),
                    session.sftp.mkdir(current.as_str(), FileAttributes::empty()),
                )
                .await;
            // Another run may have made it in the meantime.
            if let Err(err) = made
                && self.size(session, &current).await?.is_none()
            {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Sends the payload to the open file `handle` (`temp`), from the payload's offset on,
    /// keeping up to [`IN_FLIGHT`] bytes unacknowledged and recording checkpoints when
    /// everything sent so far is acknowledged. Returns where the writes ended.
    async fn send(
        &self,
        session: &Session,
        handle: &str,
        temp: &str,
        payload: &mut Payload,
        mut record: UploadCheckpoint,
    ) -> Result<u64, DeliveryError> {
        let most = (IN_FLIGHT / session.write_len).max(1);
        let action = format!("write {temp}");
        // Dropped on an error: the writes still in flight are abandoned.
        let mut in_flight = JoinSet::new();
        let mut position = payload.offset();
        let mut last_checkpoint = tokio::time::Instant::now();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|err| DeliveryError::io("read the data", err))?;
            for piece in chunk.chunks(session.write_len) {
                if in_flight.len() >= most {
                    self.acknowledged(&action, in_flight.join_next().await)?;
                }
                let sftp = Arc::clone(&session.sftp);
                let (handle, data, at) = (handle.to_owned(), piece.to_vec(), position);
                in_flight.spawn(async move { sftp.write(handle, at, data).await.map(|_| ()) });
                position += piece.len() as u64;
            }
            if payload.checkpointing() && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                while let Some(done) = in_flight.join_next().await {
                    self.acknowledged(&action, Some(done))?;
                }
                record.save(payload).await;
                last_checkpoint = tokio::time::Instant::now();
            }
        }
        while let Some(done) = in_flight.join_next().await {
            self.acknowledged(&action, Some(done))?;
        }
        Ok(position)
    }

    /// The outcome of one write.
    fn acknowledged(
        &self,
        action: &str,
        done: Option<Result<Result<(), SftpError>, tokio::task::JoinError>>,
    ) -> Result<(), DeliveryError> {
        match done {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(err))) => Err(sftp_error(action, err)),
            Some(Err(err)) => Err(DeliveryError::new(
                ErrorKind::Network,
                format!("{action}: {err}"),
            )),
        }
    }

    /// Opens `temp`, sends the payload to it, syncs it, and returns where the writes ended
    /// and the size the server reports, the file closed again.
    async fn upload(
        &self,
        session: &Session,
        temp: &str,
        payload: &mut Payload,
        record: UploadCheckpoint,
    ) -> Result<(u64, u64), DeliveryError> {
        let mut flags = OpenFlags::WRITE | OpenFlags::CREATE;
        if payload.offset() == 0 {
            flags |= OpenFlags::TRUNCATE;
        }
        let handle = self
            .request(
                &format!("open {temp}"),
                session.sftp.open(temp, flags, FileAttributes::empty()),
            )
            .await?
            .handle;
        let sent = async {
            let end = self.send(session, &handle, temp, payload, record).await?;
            if session.fsync {
                self.request(&format!("fsync {temp}"), session.sftp.fsync(handle.as_str()))
                    .await?;
            }
            let size = self
                .request(&format!("stat {temp}"), session.sftp.fstat(handle.as_str()))
                .await?
                .attrs
                .size
                .unwrap_or(0);
            Ok((end, size))
        }
        .await;
        let closed = self
            .request(&format!("close {temp}"), session.sftp.close(handle.as_str()))
            .await;
        let sent = sent?;
        closed?;
        Ok(sent)
    }

    /// Moves `temp` onto `target`: atomically with `posix-rename@openssh.com`, else with a
    /// plain rename (which OpenSSH refuses onto an existing file: that is removed first when
    /// `overwrite` allows).
    async fn rename(&self, session: &Session, temp: &str, target: &str) -> Result<(), DeliveryError> {
        let action = format!("rename {temp} onto {target}");
        if session.posix_rename {
            let request = session
                .sftp
                .extended("posix-rename@openssh.com", rename_request(temp, target));
            return match self.request(&action, request).await? {
                Packet::Status(status) if status.status_code == StatusCode::Ok => Ok(()),
                Packet::Status(status) => Err(sftp_error(&action, status.into())),
                _ => Err(sftp_error(&action, SftpError::UnexpectedPacket)),
            };
        }
        let renamed = self.request(&action, session.sftp.rename(temp, target)).await;
        if renamed.is_err() && self.settings.overwrite {
            self.remove(session, target).await;
            return self
                .request(&action, session.sftp.rename(temp, target))
                .await
                .map(|_| ());
        }
        renamed.map(|_| ())
    }

    /// One delivery over an open session: the file goes up under `temp`, is checked, then
    /// renamed onto `target`.
    async fn deliver(
        &self,
        session: &Session,
        target: &str,
        temp: &str,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let location = self.location(target);
        self.make_dirs(session, target).await?;
        if !self.settings.overwrite && self.size(session, target).await?.is_some() {
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!("{location} exists and `overwrite` is false"),
            ));
        }
        let record = UploadCheckpoint::continue_for(&mut payload, temp).await?;
        let (end, stored) = match self.upload(session, temp, &mut payload, record).await {
            Ok(sent) => sent,
            Err(err) => {
                // With checkpoints the temporary file stays for the next attempt to resume
                // (`discard` removes it if the run fails); without, nothing is left behind.
                if !payload.checkpointing() {
                    self.remove(session, temp).await;
                }
                return Err(err);
            }
        };
        let hold = payload.hold();
        let digest = payload.finish()?;
        if stored != digest.bytes || end != digest.bytes {
            self.remove(session, temp).await;
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!("{temp} holds {stored} bytes after sending {}", digest.bytes),
            ));
        }
        if let Some(bits) = self.permissions {
            let attrs = FileAttributes {
                permissions: Some(bits),
                ..FileAttributes::empty()
            };
            if let Err(err) = self
                .request(&format!("set permissions of {temp}"), session.sftp.setstat(temp, attrs))
                .await
            {
                tracing::warn!(file = %location, error = %err, "The server would not set the file's permissions; the file is delivered with its default ones.");
            }
        }
        hold.confirm().await?;
        if let Err(err) = self.rename(session, temp, target).await {
            self.remove(session, temp).await;
            return Err(err);
        }
        Ok(digest.receipt(location.clone(), Some(location)))
    }
}

#[async_trait]
impl Writer for SftpWriter {
    fn kind(&self) -> &'static str {
        "sftp"
    }

    fn describe(&self) -> String {
        format!(
            "sftp sftp://{}:{}{}{}",
            self.settings.host,
            self.settings.port,
            if self.settings.path.starts_with('/') { "" } else { "/~/" },
            self.path
        )
    }

    fn connection_limit(&self) -> Option<super::limits::ConnectionLimit> {
        Some(super::limits::ConnectionLimit {
            destination: format!("sftp://{}:{}", self.settings.host, self.settings.port),
            max: self.settings.max_connections?,
        })
    }

    async fn write(&self, ctx: &RunContext, payload: Payload) -> Result<Delivery, DeliveryError> {
        let (target, temp) = self.names(ctx)?;
        let session = self.connect().await?;
        let delivered = self.deliver(&session, &target, &temp, payload).await;
        self.close(session).await;
        delivered
    }

    async fn resume_point(
        &self,
        ctx: &RunContext,
        checkpoint: &Checkpoint,
    ) -> Result<u64, DeliveryError> {
        let Ok((_, temp)) = self.names(ctx) else {
            return Ok(0);
        };
        let Some(saved) = UploadCheckpoint::of(checkpoint, &temp) else {
            return Ok(0);
        };
        if saved.is_empty() {
            return Ok(0);
        }
        // The server may be down now: that is an error (the attempt is retried), not a
        // reason to throw away what it holds.
        let session = self.connect().await?;
        let held = self.size(&session, &temp).await;
        self.close(session).await;
        Ok(saved.resume_point(held?.unwrap_or(0)))
    }

    async fn discard(&self, ctx: &RunContext, _checkpoint: Option<&Checkpoint>) {
        // Without a state store a failed attempt has already removed its temporary file.
        if ctx.ledger.is_none() {
            return;
        }
        let Ok((_, temp)) = self.names(ctx) else {
            return;
        };
        if let Ok(session) = self.connect().await {
            self.remove(&session, &temp).await;
            self.close(session).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_pin_a_key_or_a_fingerprint() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0hOLCNTf8Wdm4iEDAG3vbBgQsG8hUbCPgGw2u8ktz test";
        let HostKeyCheck::Key(key) = parse_host_key(line).expect("a key line") else {
            panic!("a key");
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
        let pinned = parse_host_key(&fingerprint).expect("a fingerprint");
        assert!(pinned.verify("h", 22, &key).is_ok());
        assert!(HostKeyCheck::Key(key.clone()).verify("h", 22, &key).is_ok());

        let other = parse_host_key(
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        )
        .expect("a fingerprint");
        let refused = other.verify("h", 2222, &key).expect_err("another key");
        assert_eq!(refused.kind(), ErrorKind::Auth);
        assert!(refused.to_string().contains(&fingerprint), "{refused}");

        assert!(parse_host_key("SHA256:short").is_err());
        assert!(parse_host_key("ssh-ed25519 not-base64").is_err());
        assert!(parse_host_key("").is_err());
    }

    #[test]
    fn permissions_are_octal_bits() {
        assert_eq!(parse_permissions("0640"), Some(0o640));
        assert_eq!(parse_permissions("755"), Some(0o755));
        assert_eq!(parse_permissions("0888"), None);
        assert_eq!(parse_permissions("17777"), None);
        assert_eq!(parse_permissions(""), None);
    }

    #[test]
    fn a_rename_request_is_two_sftp_strings() {
        assert_eq!(
            rename_request("a", "bc"),
            [0, 0, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c']
        );
    }
}

//! `type = "ftp"`: a file on an FTP server, uploaded under a temporary name and renamed.
//!
//! The data goes to `<name>.partial-<run_id>` in the final directory (created if missing) in
//! binary mode over a passive (or extended passive) data connection, its size is checked
//! with SIZE, and RNFR/RNTO moves it onto the final name, so the final name never holds a
//! half-written file. Every exchange on the control connection has a time limit, as has every
//! write to the data connection.
//!
//! With `security = "explicit_tls"` the control connection is upgraded with AUTH TLS and
//! data connections are protected too (PBSZ 0, PROT P); the server's certificate is checked
//! against the system's roots, or exactly the certificates of `ca_file`.
//!
//! With a state store, every couple of seconds the writer records the temporary name and
//! the hash state of what it has sent; a retry or a restarted daemon asks SIZE and continues
//! with REST+STOR from the last recorded point the server holds. Without a store, a failed
//! attempt removes its temporary file. When the server offers a hash command (HASH with
//! SHA-256, or XSHA256), the uploaded file's sha256 is compared too.
//!
//! Replies 4xx and broken connections are transient; 5xx replies are permanent, a refused
//! login or an untrusted certificate is an authentication failure.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use rustls::ClientConfig;
use serde::Deserialize;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode, Status};
use tokio::io::AsyncWriteExt as _;

use super::upload::{CHECKPOINT_EVERY, UploadCheckpoint, partial_name};
use super::{Delivery, Payload, Writer, WriterSettings};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{ConfigDuration, KeyPath, Problems, Secret, SecretField, keys};
use crate::state::Checkpoint;
use crate::template::Template;
use crate::tls::TlsSettings;

/// A control connection, plain or (after AUTH TLS) protected.
type Ftp = AsyncRustlsFtpStream;

/// Settings of an `ftp` writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtpConfig {
    /// The server's host name or address.
    pub host: String,
    /// The control port (21 by default).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The user to log in as (`anonymous` by default).
    #[serde(default = "default_username")]
    pub username: String,
    /// The password: `password`, `password_env` (a variable) or `password_file`.
    #[serde(flatten)]
    pub password: SecretField<keys::Password>,
    /// The file to write on the server, a template: an absolute path, or one relative to
    /// the login directory (as curl and lftp read `ftp://host/dir/file`).
    pub path: String,
    /// `"none"` (plain FTP, the default) or `"explicit_tls"` (AUTH TLS, data protected).
    #[serde(default)]
    pub security: FtpSecurity,
    /// With TLS: `ca_file` and `accept_invalid_certs` (see [`crate::tls`]).
    #[serde(flatten)]
    pub tls: TlsSettings,
    /// Send the password over plain FTP (`security = "none"`), readable by anyone on the
    /// path. Refused unless this is `true`; logged at WARN at every start when it is.
    #[serde(default)]
    pub allow_plaintext_password: bool,
    /// The data connection: `"passive"` (PASV, the default), `"extended_passive"` (EPSV,
    /// needed over IPv6) .
    #[serde(default)]
    pub mode: FtpMode,
    /// Kept for older job files: data connections always go to the control connection's
    /// address now, whatever PASV answers (see `trust_pasv_address`).
    #[serde(default)]
    pub nat_workaround: bool,
    /// Open data connections to the address the server's PASV reply names. Off by default,
    /// as in curl: a server (or whoever tampers with the plain control connection) could
    /// otherwise point ferry's data connection at another host.
    #[serde(default)]
    pub trust_pasv_address: bool,
    /// Whether an existing file under the final name is replaced (`true`, the default).
    #[serde(default = "default_overwrite")]
    pub overwrite: bool,
    /// Whether a checksum file `NAME.sha256` (`sha256sum -c` format) is written beside each
    /// delivery, after it, for consumers that verify what they download.
    #[serde(default)]
    pub checksum_file: bool,
    /// How long connecting and each control exchange or data write may take (default `"30s"`).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// The most sessions this daemon opens to the server (host and port) at once, across
    /// every job: servers cap sessions per client ("421 Too many connections"). Unset: no
    /// limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

fn default_port() -> u16 {
    21
}

fn default_username() -> String {
    "anonymous".to_owned()
}

fn default_overwrite() -> bool {
    true
}

/// Why a password over plain FTP is refused.
const PLAINTEXT_PASSWORD: &str = "would be sent unencrypted with security = \"none\": use \"explicit_tls\", or set allow_plaintext_password = true";

/// `security`: how the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FtpSecurity {
    /// Plain FTP.
    #[default]
    None,
    /// AUTH TLS on the control connection, then protected data connections.
    ExplicitTls,
}

/// `mode`: how data connections are opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FtpMode {
    /// PASV.
    #[default]
    Passive,
    /// EPSV.
    ExtendedPassive,
}

impl WriterSettings for FtpConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.max_connections == Some(0) {
            problems.add(at.key("max_connections"), "must be at least 1");
        }
        if self.host.is_empty() || self.host.contains(['/', ' ']) {
            problems.add(at.key("host"), "must be a host name or address");
        }
        match Template::parse_path(&self.path) {
            Err(err) => problems.add(at.key("path"), err.to_string()),
            Ok(_) if self.path.ends_with('/') => {
                problems.add(
                    at.key("path"),
                    "must be a path to a file, e.g. \"/in/export.csv\" (absolute) or \"in/export.csv\" (under the login directory)",
                );
            }
            Ok(_) => {}
        }
        self.password.validate(at, problems);
        if self.security == FtpSecurity::None
            && self.password.is_given()
            && !self.allow_plaintext_password
        {
            problems.add(at.key(&self.password.given_key()), PLAINTEXT_PASSWORD);
        }
        if self.timeout.is_some_and(|t| t.get().is_zero()) {
            problems.add(at.key("timeout"), "must be longer than zero");
        }
        self.tls.validate(
            self.security != FtpSecurity::None,
            "security = \"explicit_tls\"",
            at,
            problems,
        );
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        let path = Template::parse_path(&self.path)
            .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string()))?;
        let password = self.password.resolve(&env.base_dir)?;
        if password.is_some() && self.security == FtpSecurity::None {
            tracing::warn!(
                host = %self.host,
                "allow_plaintext_password = true: the FTP password is sent unencrypted."
            );
        }
        let tls = match self.security {
            FtpSecurity::None => None,
            FtpSecurity::ExplicitTls => Some(self.tls.trust(&env.base_dir, &self.host)?.client_config()?),
        };
        Ok(Arc::new(FtpWriter {
            settings: self.clone(),
            path,
            password,
            tls,
            timeout: self
                .timeout
                .map_or(Duration::from_secs(30), ConfigDuration::get),
        }))
    }

    fn marker(&self, name: &str) -> Option<Box<dyn WriterSettings>> {
        Some(Box::new(FtpConfig {
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
        Some(Box::new(FtpConfig {
            path: format!("{}.sha256", self.path),
            overwrite: true,
            checksum_file: false,
            ..self.clone()
        }))
    }
}

/// A writer to a file on an FTP server.
#[derive(Debug, Clone)]
pub struct FtpWriter {
    settings: FtpConfig,
    path: Template,
    password: Option<Secret>,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

/// A failed FTP step, classified by the server's reply.
fn ftp_error(action: &str, err: FtpError) -> DeliveryError {
    let kind = match &err {
        FtpError::ConnectionError(io) => ErrorKind::of_io(io),
        FtpError::UnexpectedResponse(response) => {
            let code = response.status.code();
            match code {
                530 | 331 | 332 => ErrorKind::Auth,
                400..=499 => ErrorKind::Network,
                550 => ErrorKind::NotFound,
                _ => ErrorKind::Rejected,
            }
        }
        // An untrusted certificate will not become trusted by retrying.
        FtpError::SecureError(message) if message.contains("certificate") => ErrorKind::Auth,
        _ => ErrorKind::Network,
    };
    // suppaftp's messages carry the server's reply text, never the password.
    DeliveryError::new(kind, format!("{action}: {err}"))
}

/// How long a session's end is waited for after QUIT (see `FtpWriter::close`).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The sha256 in a reply to HASH (`213 SHA-256 0-49 <hex> name`) or XSHA256 (`250 <hex>`).
fn sha256_in_reply(reply: &str) -> Option<String> {
    reply
        .split_whitespace()
        .find(|word| word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

impl FtpWriter {
    fn location(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!(
            "ftp://{}:{}{slash}{path}",
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

    /// Runs one control exchange within the time limit.
    async fn within<T>(
        &self,
        action: &str,
        step: impl Future<Output = Result<T, FtpError>>,
    ) -> Result<T, DeliveryError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(result) => result.map_err(|err| ftp_error(action, err)),
            Err(_) => Err(DeliveryError::new(
                ErrorKind::Timeout,
                format!(
                    "{action}: no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    /// Connects, secures the connection when asked, logs in and switches to binary mode.
    async fn connect(&self) -> Result<Ftp, DeliveryError> {
        let address = format!("{}:{}", self.settings.host, self.settings.port);
        let mut ftp = self
            .within(
                &format!("connect to {address}"),
                Ftp::connect(address.as_str()),
            )
            .await?;
        if let Some(tls) = &self.tls {
            let connector =
                AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::clone(tls)));
            ftp = self
                .within(
                    &format!("start TLS with {address}"),
                    ftp.into_secure(connector, &self.settings.host),
                )
                .await?;
        }
        ftp.set_mode(match self.settings.mode {
            FtpMode::Passive => Mode::Passive,
            FtpMode::ExtendedPassive => Mode::ExtendedPassive,
        });
        ftp.set_passive_nat_workaround(!self.settings.trust_pasv_address);
        let password = self.password.as_ref().map_or("", Secret::expose);
        let user = self.settings.username.as_str();
        self.within(&format!("log in as {user}"), ftp.login(user, password))
            .await?;
        self.within("switch to binary mode", ftp.transfer_type(FileType::Binary))
            .await?;
        Ok(ftp)
    }

    /// Creates each missing directory of `target`'s, from the root (or, for a relative path,
    /// the login directory) down, and goes back to where the session started.
    async fn make_dirs(&self, ftp: &mut Ftp, target: &str) -> Result<(), DeliveryError> {
        let dir = target.rsplit_once('/').map_or("", |(dir, _)| dir);
        // A relative path is under the login directory, where the session starts and must
        // stay: every later command names the file relative to it.
        let home = match target.starts_with('/') {
            true => "/".to_owned(),
            false => {
                self.within("ask for the login directory (PWD)", ftp.pwd())
                    .await?
            }
        };
        let mut current = match target.starts_with('/') {
            true => String::new(),
            false => home.trim_end_matches('/').to_owned(),
        };
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            current.push('/');
            current.push_str(part);
            if self
                .within("change directory", ftp.cwd(&current))
                .await
                .is_err()
            {
                self.within(&format!("create directory {current}"), ftp.mkdir(&current))
                    .await?;
            }
        }
        self.within("change directory", ftp.cwd(&home)).await
    }

    /// Ends a session, best effort: QUIT, then wait until the server has closed the control
    /// connection. A server that caps sessions per client counts a session until its end
    /// (ProFTPD's `MaxClientsPerHost`, vsftpd's `max_per_ip`), so the next run's session
    /// under `max_connections` would otherwise be refused in the moment between our QUIT
    /// and the server's end of it.
    async fn close(&self, mut ftp: Ftp) {
        let ended = async {
            if ftp.quit().await.is_err() {
                return;
            }
            let socket = ftp.get_ref().await;
            let mut buf = [0u8; 256];
            loop {
                if socket.readable().await.is_err() {
                    return;
                }
                match socket.try_read(&mut buf) {
                    Ok(0) => return,
                    Err(err) if err.kind() != std::io::ErrorKind::WouldBlock => return,
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(self.timeout.min(CLOSE_WAIT), ended).await;
    }

    /// Removes `path`, best effort.
    async fn remove(&self, ftp: &mut Ftp, path: &str) {
        let _ = tokio::time::timeout(self.timeout, ftp.rm(path)).await;
    }

    /// Asks the server for the sha256 of `path`, when it offers a way: HASH (selecting
    /// SHA-256) or XSHA256. `None` when it offers neither or refuses; an error only when the
    /// control connection is lost or stuck.
    async fn server_sha256(
        &self,
        ftp: &mut Ftp,
        path: &str,
    ) -> Result<Option<String>, DeliveryError> {
        let features = match self.within("FEAT", ftp.feat()).await {
            Ok(features) => features,
            Err(err) if err.kind() == ErrorKind::Timeout => return Err(err),
            Err(_) => return Ok(None),
        };
        let hash = features
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("HASH"))
            .and_then(|(_, algorithms)| algorithms.clone());
        let command = match hash {
            Some(algorithms) if algorithms.to_ascii_uppercase().contains("SHA-256") => {
                if !algorithms.to_ascii_uppercase().contains("SHA-256*")
                    && self
                        .within("OPTS HASH", ftp.opts("HASH", Some("SHA-256")))
                        .await
                        .is_err()
                {
                    return Ok(None);
                }
                "HASH"
            }
            _ if features
                .keys()
                .any(|name| name.eq_ignore_ascii_case("XSHA256")) =>
            {
                "XSHA256"
            }
            _ => return Ok(None),
        };
        let reply = self
            .within(
                &format!("{command} {path}"),
                ftp.custom_command(
                    format!("{command} {path}"),
                    &[Status::File, Status::RequestedFileActionOk],
                ),
            )
            .await;
        match reply {
            Ok(reply) => Ok(reply.as_string().ok().as_deref().and_then(sha256_in_reply)),
            Err(err) if err.kind() == ErrorKind::Timeout => Err(err),
            Err(err) => {
                tracing::debug!(error = %err, "The server would not hash the upload.");
                Ok(None)
            }
        }
    }

    /// Sends the payload to `temp` (from the payload's offset on), recording checkpoints.
    /// Returns the bytes sent in this attempt.
    async fn upload(
        &self,
        ftp: &mut Ftp,
        temp: &str,
        payload: &mut Payload,
        mut record: UploadCheckpoint,
    ) -> Result<u64, DeliveryError> {
        let offset = payload.offset();
        if offset > 0 {
            ftp.resume_transfer(usize::try_from(offset).unwrap_or(usize::MAX))
                .await
                .map_err(|err| ftp_error("REST", err))?;
        }
        let stor = format!("STOR {temp}");
        let mut upload = match self.within(&stor, ftp.put_with_stream(temp)).await {
            Ok(upload) => upload,
            Err(err) if offset > 0 && !err.kind().is_transient_by_default() => {
                // The server will not continue the file (REST refused): a checkpoint with no
                // resume point makes the next attempt start over.
                payload.save_checkpoint(serde_json::Value::Null, 0).await;
                return Err(DeliveryError::new(
                    ErrorKind::Server,
                    format!("{stor} from byte {offset} refused; the next attempt starts over"),
                )
                .with_source(err));
            }
            Err(err) => return Err(err),
        };
        let mut sent = 0u64;
        let mut last_checkpoint = tokio::time::Instant::now();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|err| DeliveryError::io("read the data", err))?;
            let checkpoint_due =
                payload.checkpointing() && last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
            let write = async {
                upload.write_all(&chunk).await?;
                if checkpoint_due {
                    upload.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            match tokio::time::timeout(self.timeout, write).await {
                Ok(Ok(())) => sent += chunk.len() as u64,
                Ok(Err(err)) => return Err(DeliveryError::io(format_args!("send {temp}"), err)),
                Err(_) => {
                    return Err(DeliveryError::new(
                        ErrorKind::Timeout,
                        format!(
                            "send {temp}: stalled for {}",
                            humantime::format_duration(self.timeout)
                        ),
                    ));
                }
            }
            if checkpoint_due {
                record.save(payload).await;
                last_checkpoint = tokio::time::Instant::now();
            }
        }
        self.within(&format!("finish {temp}"), upload.finish())
            .await?;
        Ok(sent)
    }
    /// One delivery over an open session: the file goes up under `temp`, is checked, then
    /// renamed onto `target`.
    async fn deliver(
        &self,
        ftp: &mut Ftp,
        target: &str,
        temp: String,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let location = self.location(target);
        self.make_dirs(ftp, target).await?;
        if !self.settings.overwrite && ftp.size(target).await.is_ok() {
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!("{location} exists and `overwrite` is false"),
            ));
        }

        // Resuming: continue the hash from the state recorded at the resume point.
        let offset = payload.offset();
        let record = UploadCheckpoint::continue_for(&mut payload, &temp).await?;

        let sent = match self.upload(ftp, &temp, &mut payload, record).await {
            Ok(sent) => sent,
            Err(err) => {
                // With checkpoints the temporary file stays for the next attempt to resume
                // (`discard` removes it if the run fails); without, nothing is left behind.
                if !payload.checkpointing() {
                    self.remove(ftp, &temp).await;
                }
                return Err(err);
            }
        };
        let hold = payload.hold();
        let digest = payload.finish()?;
        let stored = self
            .within(&format!("SIZE {temp}"), ftp.size(&temp))
            .await?;
        if stored as u64 != digest.bytes || offset + sent != digest.bytes {
            self.remove(ftp, &temp).await;
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!("{temp} holds {stored} bytes after sending {}", digest.bytes),
            ));
        }
        if let Some(hashed) = self.server_sha256(ftp, &temp).await? {
            if hashed != digest.sha256 {
                self.remove(ftp, &temp).await;
                return Err(DeliveryError::new(
                    ErrorKind::Integrity,
                    format!(
                        "the server's sha256 of {temp} is {hashed}, the data's {}",
                        digest.sha256
                    ),
                ));
            }
            tracing::debug!(file = %temp, "The server's sha256 matches.");
        }
        hold.confirm().await?;
        let rename = format!("rename {temp} onto {target}");
        let mut renamed = self.within(&rename, ftp.rename(temp.as_str(), target)).await;
        if renamed.is_err() && self.settings.overwrite {
            // Some servers refuse RNTO onto an existing name: remove it, then rename.
            self.remove(ftp, target).await;
            renamed = self.within(&rename, ftp.rename(temp.as_str(), target)).await;
        }
        if let Err(err) = renamed {
            self.remove(ftp, &temp).await;
            return Err(err);
        }
        Ok(digest.receipt(location.clone(), Some(location)))
    }

}

#[async_trait]
impl Writer for FtpWriter {
    fn kind(&self) -> &'static str {
        "ftp"
    }

    fn describe(&self) -> String {
        format!(
            "ftp ftp://{}:{}{}",
            self.settings.host, self.settings.port, self.path
        )
    }

    fn connection_limit(&self) -> Option<super::limits::ConnectionLimit> {
        Some(super::limits::ConnectionLimit {
            destination: format!("ftp://{}:{}", self.settings.host, self.settings.port),
            max: self.settings.max_connections?,
        })
    }

    async fn write(
        &self,
        ctx: &RunContext,
        payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let (target, temp) = self.names(ctx)?;
        let mut ftp = self.connect().await?;
        let delivered = self.deliver(&mut ftp, &target, temp, payload).await;
        self.close(ftp).await;
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
        let mut ftp = self.connect().await?;
        let held = self.within(&format!("SIZE {temp}"), ftp.size(&temp)).await;
        self.close(ftp).await;
        let held = match held {
            Ok(size) => size as u64,
            Err(err) if err.kind().is_transient_by_default() => return Err(err),
            Err(_) => 0,
        };
        Ok(saved.resume_point(held))
    }

    async fn discard(&self, ctx: &RunContext, _checkpoint: Option<&Checkpoint>) {
        // Without a state store a failed attempt has already removed its temporary file.
        if ctx.ledger.is_none() {
            return;
        }
        let Ok((_, temp)) = self.names(ctx) else {
            return;
        };
        if let Ok(mut ftp) = self.connect().await {
            self.remove(&mut ftp, &temp).await;
            self.close(ftp).await;
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_sha256_in_hash_replies() {
        let hex = "a".repeat(64);
        assert_eq!(
            sha256_in_reply(&format!("SHA-256 0-49 {hex} /in/file.csv")),
            Some(hex.clone())
        );
        assert_eq!(sha256_in_reply(&hex.to_ascii_uppercase()), Some(hex));
        assert_eq!(
            sha256_in_reply("SHA-1 0-49 da39a3ee5e6b4b0d3255bfef95601890afd80709 f"),
            None
        );
        assert_eq!(sha256_in_reply(""), None);
    }

}

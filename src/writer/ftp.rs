//! `type = "ftp"`: a file on an FTP server, uploaded under a temporary name and renamed.
//!
//! The data goes to `<name>.partial-<run_id>` in the final directory (created if missing) in
//! binary mode over a passive (or extended passive) data connection, its size is checked
//! with SIZE, and RNFR/RNTO moves it onto the final name, so the final name never holds a
//! half-written file. Every exchange on the control connection has a time limit, as has every
//! write to the data connection.
//!
//! Replies 4xx and broken connections are transient; 5xx replies are permanent, a refused
//! login is an authentication failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::Deserialize;
use suppaftp::tokio::AsyncFtpStream;
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::AsyncWriteExt as _;

use super::{Delivery, Payload, Writer, WriterSettings};
use crate::RunContext;
use crate::config::{ConfigDuration, KeyPath, Problems, Secret, SecretRef};
use crate::error::{DeliveryError, ErrorKind};
use crate::job::BuildEnv;
use crate::template::Template;

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
    /// The password (prefer the `_env`/`_file` forms).
    #[serde(default)]
    pub password: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The file to write on the server, an absolute path; a template.
    pub path: String,
    /// `"none"`: plain FTP. (Explicit TLS is not available yet.)
    #[serde(default)]
    pub security: FtpSecurity,
    /// The data connection: `"passive"` (PASV, the default), `"extended_passive"` (EPSV,
    /// needed over IPv6) .
    #[serde(default)]
    pub mode: FtpMode,
    /// Use the control connection's address for data connections when the server answers
    /// PASV with a private one (servers behind NAT).
    #[serde(default)]
    pub nat_workaround: bool,
    /// Whether an existing file under the final name is replaced (`true`, the default).
    #[serde(default = "default_overwrite")]
    pub overwrite: bool,
    /// How long connecting and each control exchange or data write may take (default `"30s"`).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
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

/// `security`: how the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FtpSecurity {
    /// Plain FTP.
    #[default]
    None,
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

impl FtpConfig {
    fn password(&self, at: &KeyPath, problems: &mut Problems) -> Option<SecretRef> {
        SecretRef::pick(
            "password",
            self.password.as_ref(),
            self.password_env.as_ref(),
            self.password_file.as_ref(),
            at,
            problems,
        )
    }
}

impl WriterSettings for FtpConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.host.is_empty() || self.host.contains(['/', ' ']) {
            problems.add(at.key("host"), "must be a host name or address");
        }
        match Template::parse_path(&self.path) {
            Err(err) => problems.add(at.key("path"), err.to_string()),
            Ok(_) if !self.path.starts_with('/') || self.path.ends_with('/') => {
                problems.add(
                    at.key("path"),
                    "must be an absolute path to a file, e.g. \"/in/export.csv\"",
                );
            }
            Ok(_) => {}
        }
        self.password(at, problems);
        if self.timeout.is_some_and(|t| t.get().is_zero()) {
            problems.add(at.key("timeout"), "must be longer than zero");
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        let path = Template::parse_path(&self.path)
            .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string()))?;
        let mut problems = Problems::default();
        let password = match self.password(&KeyPath::root(), &mut problems) {
            Some(secret) => Some(secret.resolve(&env.base_dir)?),
            None => None,
        };
        Ok(Arc::new(FtpWriter {
            settings: self.clone(),
            path,
            password,
            timeout: self
                .timeout
                .map_or(Duration::from_secs(30), ConfigDuration::get),
        }))
    }
}

/// A writer to a file on an FTP server.
#[derive(Debug, Clone)]
pub struct FtpWriter {
    settings: FtpConfig,
    path: Template,
    password: Option<Secret>,
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
        _ => ErrorKind::Network,
    };
    // suppaftp's messages carry the server's reply text, never the password.
    DeliveryError::new(kind, format!("{action}: {err}"))
}

impl FtpWriter {
    fn location(&self, path: &str) -> String {
        format!("ftp://{}:{}{path}", self.settings.host, self.settings.port)
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

    async fn connect(&self) -> Result<AsyncFtpStream, DeliveryError> {
        let address = format!("{}:{}", self.settings.host, self.settings.port);
        let mut ftp = self
            .within(
                &format!("connect to {address}"),
                AsyncFtpStream::connect(address.as_str()),
            )
            .await?;
        ftp.set_mode(match self.settings.mode {
            FtpMode::Passive => Mode::Passive,
            FtpMode::ExtendedPassive => Mode::ExtendedPassive,
        });
        ftp.set_passive_nat_workaround(self.settings.nat_workaround);
        let password = self.password.as_ref().map_or("", Secret::expose);
        let user = self.settings.username.as_str();
        self.within(&format!("log in as {user}"), ftp.login(user, password))
            .await?;
        self.within("switch to binary mode", ftp.transfer_type(FileType::Binary))
            .await?;
        Ok(ftp)
    }

    /// Creates each missing directory of `dir`, from the root down.
    async fn make_dirs(&self, ftp: &mut AsyncFtpStream, dir: &str) -> Result<(), DeliveryError> {
        let mut current = String::new();
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
        self.within("change directory", ftp.cwd("/")).await
    }
}

#[async_trait]
impl Writer for FtpWriter {
    fn describe(&self) -> String {
        format!(
            "ftp ftp://{}:{}{}",
            self.settings.host, self.settings.port, self.path
        )
    }

    async fn write(
        &self,
        ctx: &RunContext,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let target = self.path.render(ctx);
        let location = self.location(&target);
        let (dir, name) = target.rsplit_once('/').unwrap_or(("", target.as_str()));
        if name.is_empty() || name == "." || name == ".." {
            return Err(DeliveryError::new(
                ErrorKind::Config,
                format!("{location} does not name a file"),
            ));
        }
        let temp = format!("{dir}/{name}.partial-{}", ctx.run_id);
        let mut ftp = self.connect().await?;
        self.make_dirs(&mut ftp, dir).await?;
        if !self.settings.overwrite && ftp.size(&target).await.is_ok() {
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!("{location} exists and `overwrite` is false"),
            ));
        }

        let mut upload = self
            .within(&format!("STOR {temp}"), ftp.put_with_stream(&temp))
            .await?;
        let mut sent = 0u64;
        let failure = loop {
            let Some(chunk) = payload.next().await else {
                break None;
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => break Some(DeliveryError::io("read the data", err)),
            };
            match tokio::time::timeout(self.timeout, upload.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len() as u64,
                Ok(Err(err)) => break Some(DeliveryError::io(format_args!("send {temp}"), err)),
                Err(_) => {
                    break Some(DeliveryError::new(
                        ErrorKind::Timeout,
                        format!(
                            "send {temp}: stalled for {}",
                            humantime::format_duration(self.timeout)
                        ),
                    ));
                }
            }
        };
        if let Some(err) = failure {
            // Leave nothing half-written behind: end the transfer, then remove the temp file.
            drop(upload);
            let _ = tokio::time::timeout(self.timeout, ftp.rm(&temp)).await;
            return Err(err);
        }
        self.within(&format!("finish {temp}"), upload.finish())
            .await?;
        let digest = payload.finish()?;
        let stored = self
            .within(&format!("SIZE {temp}"), ftp.size(&temp))
            .await?;
        if stored as u64 != digest.bytes || sent != digest.bytes {
            let _ = ftp.rm(&temp).await;
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!("{temp} holds {stored} bytes after sending {}", digest.bytes),
            ));
        }
        let rename = format!("rename {temp} onto {target}");
        let mut renamed = self.within(&rename, ftp.rename(&temp, &target)).await;
        if renamed.is_err() && self.settings.overwrite {
            // Some servers refuse RNTO onto an existing name: remove it, then rename.
            let _ = tokio::time::timeout(self.timeout, ftp.rm(&target)).await;
            renamed = self.within(&rename, ftp.rename(&temp, &target)).await;
        }
        if let Err(err) = renamed {
            let _ = tokio::time::timeout(self.timeout, ftp.rm(&temp)).await;
            return Err(err);
        }
        let _ = tokio::time::timeout(self.timeout, ftp.quit()).await;
        Ok(Delivery {
            writer: "ftp".into(),
            link: Some(location.clone()),
            location,
            bytes: digest.bytes,
            sha256: digest.sha256,
        })
    }
}

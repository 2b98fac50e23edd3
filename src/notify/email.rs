//! `type = "email"`: a mail over SMTP, from templates over the run's facts.
//!
//! Built on lettre's SMTP connection, one step at a time: connect (implicit TLS or
//! STARTTLS), check the server's certificate with ferry's own verifier where lettre cannot
//! (`ca_file`, `pin_sha256`: see [`crate::tls`]), then log in and send. lettre's timeout
//! covers connecting only (lettre#1027: a STARTTLS exchange can hang), so every send is also
//! bounded by the notifier's timeout. Replies 4xx and broken connections are transient; 5xx
//! replies are permanent, 530/534/535 (refused credentials) an authentication failure.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::message::{DEFAULT_BODY, DEFAULT_SUBJECT, Escape, Facts, MessageTemplate};
use super::{Notifier, NotifierSettings};
use crate::build_env::BuildEnv;
use crate::error::{DeliveryError, ErrorKind};
use crate::report::RunReport;
use crate::settings::{ConfigDuration, KeyPath, Problems, SecretField, keys};
use crate::tls::TlsSettings;

/// Settings of an `email` notifier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server.
    pub host: String,
    /// Its port: 587 for `starttls`, 465 for `tls`, 25 for `none` by default.
    #[serde(default)]
    pub port: Option<u16>,
    /// `"starttls"` (the default), `"tls"` (implicit TLS, "SMTPS") or `"none"`.
    #[serde(default)]
    pub security: EmailSecurity,
    /// The user to log in as; no login without one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password: `password`, `password_env` (a variable) or `password_file`.
    #[serde(flatten)]
    pub password: SecretField<keys::Password>,
    /// The sender, e.g. `"ferry <ferry@example.com>"`.
    pub from: String,
    /// Recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Blind copy recipients.
    #[serde(default)]
    pub bcc: Vec<String>,
    /// The subject, a template (a sensible one by default).
    #[serde(default)]
    pub subject: Option<String>,
    /// The plain-text body, a template (a sensible one by default).
    #[serde(default)]
    pub body: Option<String>,
    /// An HTML body, a template, sent beside the plain one (none by default).
    #[serde(default)]
    pub html: Option<String>,
    /// With TLS: `ca_file`, `pin_sha256` and `accept_invalid_certs` (see [`crate::tls`]).
    #[serde(flatten)]
    pub tls: TlsSettings,
    /// Log in over an unencrypted connection (`security = "none"`), the password readable by
    /// anyone on the path. Refused unless this is `true`; logged at WARN at every start.
    #[serde(default)]
    pub allow_plaintext_password: bool,
    /// How long one try may take, from connecting to the server's last reply (`"30s"`).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Tries in all when sending fails for a reason that may pass (3 by default).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// `repeat_after` and `recovery`.
    #[serde(flatten)]
    pub repeats: super::RepeatSettings,
}

fn default_attempts() -> u32 {
    3
}

/// `security`: how the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailSecurity {
    /// Plain connection upgraded with STARTTLS; refused if the server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte.
    Tls,
    /// No encryption (a relay on localhost).
    None,
}

impl EmailConfig {
    fn templates(&self) -> [(&'static str, Option<&String>, Escape); 3] {
        [
            ("subject", self.subject.as_ref(), Escape::Text),
            ("body", self.body.as_ref(), Escape::Text),
            ("html", self.html.as_ref(), Escape::Html),
        ]
    }
}

impl NotifierSettings for EmailConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.host.is_empty() || self.host.contains(['/', ' ', ':']) {
            problems.add(at.key("host"), "must be a host name or address");
        }
        if self.port == Some(0) {
            problems.add(at.key("port"), "must be a port number");
        }
        if let Err(err) = self.from.parse::<Mailbox>() {
            problems.add(at.key("from"), format!("not an address: {err}"));
        }
        if self.to.is_empty() && self.cc.is_empty() && self.bcc.is_empty() {
            problems.add(
                at.key("to"),
                "no recipients: give at least one address in `to`, `cc` or `bcc`",
            );
        }
        for (key, list) in [("to", &self.to), ("cc", &self.cc), ("bcc", &self.bcc)] {
            for (index, address) in list.iter().enumerate() {
                if let Err(err) = address.parse::<Mailbox>() {
                    problems.add(at.key(key).index(index), format!("not an address: {err}"));
                }
            }
        }
        self.password.validate(at, problems);
        if self.password.is_given() && self.username.is_none() {
            problems.add(at.key("username"), "a password is given but no username");
        }
        if self.security == EmailSecurity::None
            && (self.username.is_some() || self.password.is_given())
            && !self.allow_plaintext_password
        {
            let key = if self.password.is_given() { "password" } else { "username" };
            problems.add(
                at.key(key),
                "would be sent unencrypted with security = \"none\": use \"starttls\" or \"tls\", or set allow_plaintext_password = true",
            );
        }
        self.tls.validate(
            self.security != EmailSecurity::None,
            "security = \"starttls\" or \"tls\"",
            at,
            problems,
        );
        for (key, source, escape) in self.templates() {
            if let Some(source) = source
                && let Err(err) = MessageTemplate::parse(source, escape)
            {
                problems.add(at.key(key), format!("template: {err}"));
            }
        }
        if self.timeout.is_some_and(|t| t.get().is_zero()) {
            problems.add(at.key("timeout"), "must be longer than zero");
        }
        self.repeats.validate(at, problems);
        if self.attempts == 0 {
            problems.add(at.key("attempts"), "must be at least 1");
        }
    }

    fn build(&self, name: &str, env: &BuildEnv) -> Result<Arc<dyn Notifier>, DeliveryError> {
        let config = |message: String| DeliveryError::new(ErrorKind::Config, message);
        let password = self.password.resolve(&env.base_dir)?;
        let timeout = self
            .timeout
            .map_or(Duration::from_secs(30), ConfigDuration::get);
        let port = self.port.unwrap_or(match self.security {
            EmailSecurity::Starttls => 587,
            EmailSecurity::Tls => 465,
            EmailSecurity::None => 25,
        });
        let mut tls = None;
        let mut verifier = None;
        if self.security != EmailSecurity::None {
            // lettre builds its own rustls configuration and takes no verifier: for anything
            // but the system's roots it is told to accept any certificate (it still checks
            // the handshake's signatures and the host name), and ferry's verifier checks the
            // chain the server presented before the login and the mail go out.
            let trust = self.tls.trust(&env.base_dir, &self.host)?;
            verifier = trust.verifier()?;
            let parameters = TlsParameters::builder(self.host.clone())
                .dangerous_accept_invalid_certs(verifier.is_some())
                .build_rustls()
                .map_err(|err| config(format!("TLS settings: {err}")))?;
            tls = Some(parameters);
        }
        if self.username.is_some() && self.security == EmailSecurity::None {
            tracing::warn!(
                notifier = name,
                "allow_plaintext_password = true: the SMTP login is sent unencrypted."
            );
        }
        let credentials = self.username.as_ref().map(|user| {
            let password = password.as_ref().map_or("", |p| p.expose()).to_owned();
            Credentials::new(user.clone(), password)
        });
        let template = |source: Option<&String>, default: &str, escape| {
            MessageTemplate::parse(source.map_or(default, String::as_str), escape)
                .map_err(|err| config(format!("notifier {name}: template: {err}")))
        };
        let mailbox = |address: &String| {
            address
                .parse::<Mailbox>()
                .map_err(|err| config(err.to_string()))
        };
        Ok(Arc::new(EmailNotifier {
            name: name.to_owned(),
            server: format!("{}:{port}", self.host),
            host: self.host.clone(),
            port,
            security: self.security,
            tls,
            verifier,
            credentials,
            from: mailbox(&self.from)?,
            to: self.to.iter().map(mailbox).collect::<Result<_, _>>()?,
            cc: self.cc.iter().map(mailbox).collect::<Result<_, _>>()?,
            bcc: self.bcc.iter().map(mailbox).collect::<Result<_, _>>()?,
            subject: template(self.subject.as_ref(), DEFAULT_SUBJECT, Escape::Text)?,
            body: template(self.body.as_ref(), DEFAULT_BODY, Escape::Text)?,
            html: match &self.html {
                Some(source) => Some(template(Some(source), "", Escape::Html)?),
                None => None,
            },
            timeout,
            attempts: self.attempts.max(1),
            repeats: self.repeats.get(),
        }))
    }
}

/// Mails each run's outcome.
#[derive(Clone)]
pub struct EmailNotifier {
    name: String,
    server: String,
    host: String,
    port: u16,
    security: EmailSecurity,
    /// With `security` other than `none`.
    tls: Option<TlsParameters>,
    /// Checks the server's certificate after the handshake (see `build`); `None` when
    /// lettre checks it against the system's roots.
    verifier: Option<Arc<dyn ServerCertVerifier>>,
    credentials: Option<Credentials>,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
    subject: MessageTemplate,
    body: MessageTemplate,
    html: Option<MessageTemplate>,
    timeout: Duration,
    attempts: u32,
    repeats: super::Repeats,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Leaves the credentials out.
        f.debug_struct("EmailNotifier")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl EmailNotifier {
    fn message(&self, facts: &Facts) -> Result<Message, DeliveryError> {
        // A subject is one line, whatever the template made of it.
        let subject = self
            .subject
            .render(facts)?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let body = self.body.render(facts)?;
        // A Message-ID of the run's and this notifier's own: a mail sent twice (its sender
        // died before recording it went) reads as one to receivers that drop duplicates.
        // Every mail about a job refers to one thread root, so its failures and recovery
        // read as one conversation. (lettre adds the Date header.)
        let domain = self.from.email.domain();
        let thread = thread_id(&facts.job, domain);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!(
                "<{}.{}@{domain}>",
                facts.run_id,
                msg_id_part(&self.name)
            )))
            .in_reply_to(thread.clone())
            .references(thread);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        for cc in &self.cc {
            builder = builder.cc(cc.clone());
        }
        for bcc in &self.bcc {
            builder = builder.bcc(bcc.clone());
        }
        let built = match &self.html {
            Some(html) => {
                builder.multipart(MultiPart::alternative_plain_html(body, html.render(facts)?))
            }
            None => builder.header(ContentType::TEXT_PLAIN).body(body),
        };
        built.map_err(|err| {
            DeliveryError::new(ErrorKind::Config, format!("cannot build the mail: {err}"))
        })
    }
}

/// The Message-ID every mail about job `job` refers to (`In-Reply-To`, `References`), so
/// mail programs thread them: the same for every run, notifier and daemon.
fn thread_id(job: &str, domain: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(job.as_bytes());
    format!(
        "<ferry.{}.{}@{domain}>",
        msg_id_part(job),
        hex::encode(&digest[..6])
    )
}

/// `text` as the left part of a Message-ID may hold it (RFC 5322 dot-atom text): other
/// characters become `-` (the thread id's hash keeps names that differ only there apart).
fn msg_id_part(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '+' | '=' => c,
            _ => '-',
        })
        .collect()
}

/// A failed send, classified by the server's reply.
fn smtp_error(server: &str, err: lettre::transport::smtp::Error) -> DeliveryError {
    let code = err.status().map(|code| code.to_string());
    let kind = match code.as_deref() {
        Some("530" | "534" | "535") => ErrorKind::Auth,
        _ if err.is_permanent() => ErrorKind::Rejected,
        _ if err.is_timeout() => ErrorKind::Timeout,
        _ => ErrorKind::Network,
    };
    // lettre's messages carry the server's replies, never the credentials.
    DeliveryError::new(kind, format!("send mail via {server}")).with_source(err)
}

#[async_trait]
impl Notifier for EmailNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn repeats(&self) -> super::Repeats {
        self.repeats
    }

    fn timeout(&self) -> Duration {
        // One try: connecting, TLS, login and the mail itself, each bounded by lettre's
        // timeout only when it reads; this bounds the whole.
        self.timeout
    }

    async fn notify(&self, report: &RunReport) -> Result<(), DeliveryError> {
        let message = self.message(&Facts::of(report))?;
        let failed = |err| smtp_error(&self.server, err);
        let hello = ClientId::default();
        let implicit = match self.security {
            EmailSecurity::Tls => self.tls.clone(),
            EmailSecurity::Starttls | EmailSecurity::None => None,
        };
        let mut connection = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &hello,
            implicit,
            None,
        )
        .await
        .map_err(failed)?;
        if self.security == EmailSecurity::Starttls
            && let Some(tls) = &self.tls
        {
            // Refused when the server does not offer STARTTLS: nothing goes out in plain.
            connection
                .starttls(tls.clone(), &hello)
                .await
                .map_err(failed)?;
        }
        let sent = self.send(&mut connection, &message).await;
        // QUIT, unless the connection broke.
        connection.abort().await;
        sent
    }
}

impl EmailNotifier {
    /// On a connection that is as secure as `security` asks: checks the server's
    /// certificate, logs in and sends `message`.
    async fn send(
        &self,
        connection: &mut AsyncSmtpConnection,
        message: &Message,
    ) -> Result<(), DeliveryError> {
        let failed = |err| smtp_error(&self.server, err);
        if let Some(verifier) = &self.verifier {
            let chain: Vec<CertificateDer<'static>> = connection
                .certificate_chain()
                .map_err(failed)?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            crate::tls::check_presented(verifier.as_ref(), &chain, &self.host).map_err(|err| {
                DeliveryError::new(
                    ErrorKind::Auth,
                    format!(
                        "send mail via {}: the server's certificate is not trusted: {err}",
                        self.server
                    ),
                )
            })?;
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(DEFAULT_MECHANISMS, credentials)
                .await
                .map_err(failed)?;
        }
        connection
            .send(message.envelope(), &message.formatted())
            .await
            .map(drop)
            .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_mails_share_one_thread_id_of_valid_characters() {
        let nightly = thread_id("nightly", "example.com");
        assert_eq!(nightly, thread_id("nightly", "example.com"), "stable");
        assert!(nightly.starts_with("<ferry.nightly.") && nightly.ends_with("@example.com>"));
        assert_ne!(nightly, thread_id("hourly", "example.com"));
        // Names that differ only in characters a Message-ID cannot hold stay apart.
        let (a, b) = (thread_id("a b", "x.org"), thread_id("a/b", "x.org"));
        assert_ne!(a, b);
        assert!(a.starts_with("<ferry.a-b."), "{a}");
        assert!(!a.contains(' ') && !b.contains('/'));
    }
}

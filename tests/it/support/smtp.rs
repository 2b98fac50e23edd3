//! An SMTP server on 127.0.0.1: mailin-embedded on its own thread (STARTTLS with a
//! generated certificate, PLAIN login), keeping the mails it accepts.

use super::Tls;
use mailin_embedded::response::{AUTH_OK, INVALID_CREDENTIALS, OK};
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig};
use std::net::{IpAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SMTP_USER: &str = "ferry-mailer";
pub const SMTP_PASSWORD: &str = "smtp-test-password";

/// A mail as the server received it.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The raw message: headers and body.
    pub data: String,
}

impl Mail {
    /// The message with quoted-printable soft breaks and escapes undone, for searching.
    pub fn text(&self) -> String {
        let joined = self.data.replace("=\r\n", "").replace("=\n", "");
        let mut out = String::with_capacity(joined.len());
        let mut rest = joined.as_str();
        while let Some(at) = rest.find('=') {
            out.push_str(&rest[..at]);
            let code = rest
                .get(at + 1..at + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match code {
                Some(byte) if byte.is_ascii() => {
                    out.push(char::from(byte));
                    rest = &rest[at + 3..];
                }
                _ => {
                    out.push('=');
                    rest = &rest[at + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The `Subject:` header.
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|line| line.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_owned()
    }
}

/// One SMTP session's state; finished mails go to the shared inbox.
#[derive(Clone)]
struct Session {
    inbox: Arc<Mutex<Vec<Mail>>>,
    /// The user names of every login tried.
    logins: Arc<Mutex<Vec<String>>>,
    login: Option<(String, String)>,
    current: Mail,
}

impl Handler for Session {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Mail {
            from: from.to_owned(),
            to: to.to_vec(),
            data: String::new(),
        };
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.push_str(&String::from_utf8_lossy(buf));
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.inbox
            .lock()
            .expect("inbox")
            .push(std::mem::take(&mut self.current));
        OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.auth_login(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.logins.lock().expect("logins").push(user.to_owned());
        match &self.login {
            Some((u, p)) if u == user && p == password => AUTH_OK,
            _ => INVALID_CREDENTIALS,
        }
    }

    fn helo(&mut self, _ip: IpAddr, _domain: &str) -> Response {
        OK
    }
}

/// An SMTP server on a free port of 127.0.0.1, on its own threads for the rest of the
/// test process; optionally with STARTTLS and a required PLAIN login.
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Mail>>>,
    logins: Arc<Mutex<Vec<String>>>,
}

impl SmtpServer {
    pub fn start(tls: Option<&Tls>, login: bool) -> SmtpServer {
        let mechanisms = if login {
            vec![AuthMechanism::Plain]
        } else {
            Vec::new()
        };
        SmtpServer::start_with(tls, mechanisms)
    }

    /// A server requiring a login with one of `mechanisms` (none: no login).
    pub fn start_with(tls: Option<&Tls>, mechanisms: Vec<AuthMechanism>) -> SmtpServer {
        let login = !mechanisms.is_empty();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind SMTP port");
        let port = listener.local_addr().expect("address").port();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let logins = Arc::new(Mutex::new(Vec::new()));
        let session = Session {
            inbox: Arc::clone(&inbox),
            logins: Arc::clone(&logins),
            login: login.then(|| (SMTP_USER.to_owned(), SMTP_PASSWORD.to_owned())),
            current: Mail::default(),
        };
        let mut server = Server::new(session);
        server.with_name("mail.test").with_tcp_listener(listener);
        if let Some(tls) = tls {
            server
                .with_ssl(SslConfig::SelfSigned {
                    cert_path: tls.cert.display().to_string(),
                    key_path: tls.key.display().to_string(),
                })
                .expect("TLS settings");
        }
        for mechanism in mechanisms {
            server.with_auth(mechanism);
        }
        std::thread::spawn(move || {
            if let Err(err) = server.serve() {
                eprintln!("the SMTP server stopped: {err}");
            }
        });
        SmtpServer {
            port,
            inbox,
            logins,
        }
    }

    /// The mails received so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.inbox.lock().expect("inbox").clone()
    }

    /// The user names of the logins tried so far.
    pub fn logins(&self) -> Vec<String> {
        self.logins.lock().expect("logins").clone()
    }

    /// Waits until `count` mails have arrived (failing after `within`); returns them all.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mails = self.mails();
            if mails.len() >= count {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} mails expected within {within:?}, got {mails:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An `email` notifier table.
pub fn email_notifier(name: &str, port: u16, to: &[&str], extra: &str) -> String {
    let to: Vec<String> = to.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[notifiers.{name}]
type = "email"
host = "127.0.0.1"
port = {port}
from = "ferry <ferry@example.com>"
to = [{}]
{extra}
"#,
        to.join(", ")
    )
}

//! What building a source, writer or notifier may use: the job file's directory and the
//! shared HTTP client.
//!
//! A leaf: every kind's `build` takes a [`BuildEnv`], and nothing here knows of jobs,
//! runners or the daemon.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::{DeliveryError, ErrorKind};

/// What building a source, writer or notifier may use.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// The directory relative paths are taken from (the job file's).
    pub base_dir: PathBuf,
    /// The HTTP clients, made when a kind first asks for one: loading the system's roots
    /// costs time and memory that a job file without HTTP (FTP, SFTP, local) need not pay.
    clients: Arc<Clients>,
}

#[derive(Debug, Default)]
struct Clients {
    /// For requests without credentials: follows up to 10 redirects.
    open: OnceLock<reqwest::Client>,
    /// For requests that carry credentials (authentication, secret headers, a token in the
    /// URL): follows redirects within the first URL's origin only, so nothing secret is
    /// sent to another host; a redirect elsewhere comes back as the 3xx response itself.
    same_origin: OnceLock<reqwest::Client>,
}

impl BuildEnv {
    /// An environment for a job file in `base_dir`.
    pub fn new(base_dir: PathBuf) -> Result<BuildEnv, DeliveryError> {
        // Every TLS client here uses aws-lc-rs; making it the process default keeps a
        // library that asks for "the default" from failing when another crate's features
        // also compile in ring. (An error means one is installed already.)
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Ok(BuildEnv {
            base_dir,
            clients: Arc::default(),
        })
    }

    /// The HTTP client for a request: one that keeps redirects within the first URL's
    /// origin when it carries credentials, else one that follows up to 10 anywhere. Shared
    /// by every kind built with this environment.
    pub fn http_for(&self, credentials: bool) -> Result<reqwest::Client, DeliveryError> {
        let cell = match credentials {
            true => &self.clients.same_origin,
            false => &self.clients.open,
        };
        if let Some(client) = cell.get() {
            return Ok(client.clone());
        }
        let redirects = match credentials {
            true => reqwest::redirect::Policy::custom(|attempt| {
                let first = attempt.previous().first().map(reqwest::Url::origin);
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if first.is_some_and(|first| first == attempt.url().origin()) {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }),
            false => reqwest::redirect::Policy::limited(MAX_REDIRECTS),
        };
        let client = http_client(redirects, None)?;
        Ok(cell.get_or_init(|| client).clone())
    }
}

/// How many redirects a request follows.
const MAX_REDIRECTS: usize = 10;

/// A client with ferry's user agent and time limits, sending no `Referer` (it would carry
/// the first URL, query token and all, to the next host); trusting what `tls` trusts when
/// given (a kind's `ca_file` or `accept_invalid_certs`), else the system's roots.
pub(crate) fn http_client(
    redirects: reqwest::redirect::Policy,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<reqwest::Client, DeliveryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(300))
        .redirect(redirects)
        .referer(false);
    if let Some(tls) = tls {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build().map_err(|err| {
        DeliveryError::new(ErrorKind::Config, "cannot set up the HTTP client").with_source(err)
    })
}

//! `type = "http"`: the payload as the body of an HTTP PUT or POST.
//!
//! The body streams as the source produces it: with `Content-Length` when the size is known
//! in advance (no transform, a source that knows it), chunked otherwise. The response's
//! status decides: one of `expect_status` (any 2xx by default) is a delivery; 5xx, 408 and
//! 429 are transient (a `Retry-After` is waited for), other statuses permanent. Redirects are
//! not followed (the body cannot be sent twice): a 3xx is an error naming the status. The
//! receipt's location and link are the URL without credentials or query.
//!
//! An upload is one request, made visible by the server when the request completes: there
//! is nothing to rename and nothing to resume, so a failed attempt starts over. The run's
//! hold on its row ([`Hold::confirm`]) is checked before the request starts.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use parking_lot::Mutex;
use reqwest::header::{CONTENT_LENGTH, HeaderMap};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{Delivery, Payload, Writer, WriterSettings};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::http::{self, HeaderSetting};
use crate::settings::{KeyPath, Problems, Secret, SecretField, SecretRef, keys};
use crate::template::Template;
use crate::tls::TlsSettings;

/// Settings of an `http` writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The `http://` or `https://` URL to send the data to, a template: `url`, or
    /// `url_env` / `url_file` when it holds a token (messages then show its host only).
    #[serde(flatten)]
    pub url: SecretField<keys::Url>,
    /// `"PUT"` (the default) or `"POST"`.
    #[serde(default)]
    pub method: UploadMethod,
    /// Request headers: a value, or `{ env = "VAR" }` / `{ file = "path" }` (with an
    /// optional `prefix`, e.g. `"Bearer "`) for a secret one.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSetting>,
    /// The user name for HTTP basic authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// The basic-authentication password: `password`, `password_env` or `password_file`.
    #[serde(flatten)]
    pub password: SecretField<keys::Password>,
    /// The statuses that mean "delivered" (any 2xx when not given).
    #[serde(default)]
    pub expect_status: Option<Vec<u16>>,
    /// `ca_file` and `accept_invalid_certs`, for an `https://` URL.
    #[serde(flatten)]
    pub tls: TlsSettings,
}

/// `method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UploadMethod {
    #[default]
    Put,
    Post,
}

impl WriterSettings for HttpConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        self.url.validate_required(at, problems);
        let inline = match self.url.source() {
            Some(SecretRef::Inline(url)) => Some(url),
            _ => None,
        };
        if let Some(url) = &inline
            && let Err(err) = http::check_url_template(url)
        {
            problems.add(at.key("url"), err);
        }
        http::validate_headers(&self.headers, &at.key("headers"), problems);
        self.password.validate(at, problems);
        if self.password.is_given() && self.username.is_none() {
            problems.add(at.key("password"), "a password needs a `username`");
        }
        if let Some(statuses) = &self.expect_status {
            if statuses.is_empty() {
                problems.add(at.key("expect_status"), "give at least one status");
            }
            for status in statuses {
                if !(100..=599).contains(status) {
                    problems.add(
                        at.key("expect_status"),
                        format!("{status} is not an HTTP status (100–599)"),
                    );
                }
            }
        }
        // A URL from a variable or file may be https: its TLS settings are taken as given.
        let https = inline.as_ref().is_none_or(|url| url.starts_with("https://"));
        self.tls.validate(https, "an https:// url", at, problems);
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        let config = |msg: String| DeliveryError::new(ErrorKind::Config, msg);
        let secret_url = !matches!(self.url.source(), Some(SecretRef::Inline(_)));
        let text = self.url.resolve_required(&env.base_dir)?;
        http::check_url_template(text.expose()).map_err(|err| match secret_url {
            // A URL from a variable or file is never quoted.
            true => config("the url from url_env / url_file is not a valid http(s) URL template".into()),
            false => config(format!("url: {err}")),
        })?;
        let url = Template::parse(text.expose()).map_err(|err| config(err.to_string()))?;
        let headers = http::header_map(&self.headers, &env.base_dir)?;
        let password = self.password.resolve(&env.base_dir)?;
        let https = text.expose().starts_with("https://");
        let shown = http::shown_url(text.expose(), secret_url);
        let credentials = self.username.is_some()
            || secret_url
            || self.headers.values().any(HeaderSetting::is_secret);
        if credentials && !https {
            tracing::warn!(
                url = %shown,
                "This http writer sends credentials (authentication, secret headers or a secret URL) unencrypted over http://."
            );
        }
        let tls = match https && self.tls != TlsSettings::default() {
            true => Some(self.tls.trust(&env.base_dir, &shown)?.client_config()?),
            false => None,
        };
        Ok(Arc::new(HttpWriter {
            // The body is sent once: a redirect comes back as the 3xx itself.
            client: crate::build_env::http_client(reqwest::redirect::Policy::none(), tls)?,
            url,
            method: match self.method {
                UploadMethod::Put => reqwest::Method::PUT,
                UploadMethod::Post => reqwest::Method::POST,
            },
            headers,
            basic: self
                .username
                .clone()
                .map(|username| (username, password)),
            expect: self.expect_status.clone(),
            secret_url,
        }))
    }
}

/// A writer that sends the payload as the body of one HTTP request.
#[derive(Debug)]
pub struct HttpWriter {
    client: reqwest::Client,
    url: Template,
    method: reqwest::Method,
    headers: HeaderMap,
    basic: Option<(String, Option<Secret>)>,
    expect: Option<Vec<u16>>,
    /// The URL came from a variable or file: messages show its host only.
    secret_url: bool,
}

impl HttpWriter {
    /// Whether `status` means the data was delivered.
    fn delivered(&self, status: reqwest::StatusCode) -> bool {
        match &self.expect {
            Some(expected) => expected.contains(&status.as_u16()),
            None => status.is_success(),
        }
    }
}

#[async_trait]
impl Writer for HttpWriter {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn describe(&self) -> String {
        format!(
            "http {} {}",
            self.method,
            http::shown_url(self.url.as_str(), self.secret_url)
        )
    }

    async fn write(&self, ctx: &RunContext, payload: Payload) -> Result<Delivery, DeliveryError> {
        let url = self.url.render(ctx);
        let shown = http::shown_url(&url, self.secret_url);
        let action = format!("{} {shown}", self.method);
        payload.hold().confirm().await?;
        let len = payload.len_hint();
        let (body, returned, failure) = Body::of(payload);
        let handed = Arc::clone(&body.sent);
        let mut request = self
            .client
            .request(self.method.clone(), &url)
            .headers(self.headers.clone());
        if let Some(len) = len {
            request = request.header(CONTENT_LENGTH, len);
        }
        if let Some((username, password)) = &self.basic {
            request = request.basic_auth(username, password.as_ref().map(Secret::expose));
        }
        let sent = request
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        // The source's failure, when that is why the request broke off.
        if let Some(failure) = failure.lock().take() {
            return Err(failure);
        }
        let response = sent.map_err(|err| http::request_error(&action, err))?;
        let status = response.status();
        if !self.delivered(status) {
            if status.is_client_error() || status.is_server_error() {
                return Err(http::status_error(&action, response).await);
            }
            let expected = match &self.expect {
                Some(expected) => format!(
                    "one of {}",
                    expected
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "a 2xx".to_owned(),
            };
            let redirect = match status.is_redirection() {
                true => " (a redirect: not followed, the data cannot be sent twice)",
                false => "",
            };
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!("{action} answered {status}{redirect}, not {expected}"),
            ));
        }
        // A server that answered without reading the whole body has not got the data.
        let payload = returned.await.map_err(|_| {
            DeliveryError::new(
                ErrorKind::Integrity,
                format!("{action} answered {status} before the whole body was sent"),
            )
        })?;
        // With a Content-Length the request stops reading at that many bytes: the end of
        // the data is still to be read. Anything more was not sent.
        let mut payload = payload;
        while let Some(rest) = payload.next().await {
            let rest = rest.map_err(|err| DeliveryError::io("read the data to send", err))?;
            if !rest.is_empty() {
                let why = match len {
                    Some(len) if handed.load(Ordering::Relaxed) == len => {
                        "the data went on past its announced length"
                    }
                    _ => "the server answered before the whole body was sent",
                };
                return Err(DeliveryError::new(
                    ErrorKind::Integrity,
                    format!("{action} answered {status}, but {why}"),
                ));
            }
        }
        let digest = payload.finish().map_err(|err| err.context(&action))?;
        Ok(digest.receipt(shown.clone(), Some(shown)))
    }
}

/// The request body: the payload's chunks. When the payload ends (or the request drops the
/// body) the payload goes back to the writer, which asks it for the size and sha256 of what
/// was sent; a failure of the source is kept for the writer to report as it is.
struct Body {
    payload: Option<Payload>,
    back: Option<oneshot::Sender<Payload>>,
    failure: Arc<Mutex<Option<DeliveryError>>>,
    /// Bytes handed to the request so far.
    sent: Arc<AtomicU64>,
}

/// Where a source's failure seen by the body is left for the writer.
type Failure = Arc<Mutex<Option<DeliveryError>>>;

impl Body {
    fn of(payload: Payload) -> (Body, oneshot::Receiver<Payload>, Failure) {
        let (back, returned) = oneshot::channel();
        let failure = Failure::default();
        let body = Body {
            payload: Some(payload),
            back: Some(back),
            failure: Arc::clone(&failure),
            sent: Arc::default(),
        };
        (body, returned, failure)
    }

    fn give_back(&mut self) {
        if let (Some(payload), Some(back)) = (self.payload.take(), self.back.take()) {
            let _ = back.send(payload);
        }
    }
}

impl Stream for Body {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(payload) = self.payload.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(payload).poll_next(cx)) {
            Some(Ok(chunk)) => {
                self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(err)) => {
                let failure = DeliveryError::io("read the data to send", err);
                let shown = failure.summary();
                *self.failure.lock() = Some(failure);
                self.give_back();
                Poll::Ready(Some(Err(shown.into_io())))
            }
            None => {
                self.give_back();
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.give_back();
    }
}

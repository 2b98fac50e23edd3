//! `type = "url"`: the body of an HTTP(S) GET, streamed as it arrives.
//!
//! A status of 400 or more is an error: 5xx, 408 and 429 are transient, other 4xx
//! permanent. Connection failures and timeouts are transient.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::{DataSource, SourceSettings, SourceStream};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::http;
use crate::settings::{ByteSize, KeyPath, Problems, Secret, SecretField, SecretRef, keys};
use crate::template::Template;

/// Settings of a `url` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlConfig {
    /// The `http://` or `https://` URL to GET, a template: `url`, or `url_env` / `url_file`
    /// when it holds a token (messages then show its host only).
    #[serde(flatten)]
    pub url: SecretField<keys::Url>,
    /// Extra request headers. Put secrets in `bearer_token_env`/`_file` or `password_env`/`_file`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A bearer token sent as `Authorization: Bearer …`: `bearer_token`, `bearer_token_env` or `bearer_token_file`.
    #[serde(flatten)]
    pub bearer_token: SecretField<keys::BearerToken>,
    /// The user name for HTTP basic authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// The basic-authentication password: `password`, `password_env` or `password_file`.
    #[serde(flatten)]
    pub password: SecretField<keys::Password>,
    /// The most bytes the body may have (e.g. `"10GiB"`): a larger body fails the run
    /// (`rejected`, not retried) instead of filling the disk. Unlimited by default.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// How a source's GETs are made: headers and authentication, the keys the `url` and `api`
/// sources share (each declares them itself: serde cannot flatten a struct that flattens).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestSettings<'a> {
    pub(crate) headers: &'a BTreeMap<String, String>,
    pub(crate) bearer_token: &'a SecretField<keys::BearerToken>,
    pub(crate) username: &'a Option<String>,
    pub(crate) password: &'a SecretField<keys::Password>,
}

impl RequestSettings<'_> {
    /// Checks the URL (`url` holds it) and the request keys, recording problems at `at`.
    pub(crate) fn validate(
        &self,
        url: &SecretField<keys::Url>,
        at: &KeyPath,
        problems: &mut Problems,
    ) {
        url.validate_required(at, problems);
        if let Some(SecretRef::Inline(url)) = url.source()
            && let Err(err) = http::check_url_template(&url)
        {
            problems.add(at.key("url"), err);
        }
        for (name, value) in self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.add(at.key("headers"), format!("invalid header name {name:?}"));
            } else if HeaderValue::from_str(value).is_err() {
                problems.add(at.key("headers").key(name), "invalid header value");
            }
        }
        self.bearer_token.validate(at, problems);
        self.password.validate(at, problems);
        if self.password.is_given() && self.username.is_none() {
            problems.add(at.key("password"), "a password needs a `username`");
        }
        if self.bearer_token.is_given() && self.username.is_some() {
            problems.add(
                at.key("bearer_token"),
                "give a bearer token or a username, not both",
            );
        }
    }

    /// Reads the URL and the secrets: the URL template and what sends GETs with them.
    /// `kind` names the source in a warning about credentials over plain http.
    pub(crate) fn build(
        &self,
        url: &SecretField<keys::Url>,
        env: &BuildEnv,
        kind: &str,
    ) -> Result<(Template, Getter), DeliveryError> {
        let config_error = |msg: String| DeliveryError::new(ErrorKind::Config, msg);
        let secret_url = !matches!(url.source(), Some(SecretRef::Inline(_)));
        let text = url.resolve_required(&env.base_dir)?;
        // A URL from a variable or file is checked now, without quoting it.
        http::check_url_template(text.expose()).map_err(|_| {
            config_error("the url from url_env / url_file is not a valid http(s) URL template".into())
        })?;
        let template =
            Template::parse(text.expose()).map_err(|err| config_error(err.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| config_error(format!("invalid header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| config_error(format!("invalid value for header {name}")))?;
            headers.insert(name, value);
        }
        let token = self.bearer_token.resolve(&env.base_dir)?;
        let auth = match (token, self.username) {
            (Some(token), _) => Some(Auth::Bearer(token)),
            (None, Some(user)) => Some(Auth::Basic {
                username: user.clone(),
                password: self.password.resolve(&env.base_dir)?,
            }),
            (None, None) => None,
        };
        let credentials = auth.is_some() || !headers.is_empty() || secret_url;
        if credentials && text.expose().starts_with("http://") {
            tracing::warn!(
                url = %http::shown_url(text.expose(), secret_url),
                "This {kind} source sends credentials (authentication or headers) unencrypted over http://."
            );
        }
        Ok((
            template,
            Getter {
                client: env.http_for(credentials)?,
                headers,
                auth,
                secret_url,
                credentials,
            },
        ))
    }
}

impl UrlConfig {
    fn request(&self) -> RequestSettings<'_> {
        RequestSettings {
            headers: &self.headers,
            bearer_token: &self.bearer_token,
            username: &self.username,
            password: &self.password,
        }
    }
}

impl SourceSettings for UrlConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        self.request().validate(&self.url, at, problems);
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError> {
        let (url, getter) = self.request().build(&self.url, env, "url")?;
        Ok(Arc::new(UrlSource {
            getter,
            url,
            max_bytes: self.max_bytes.map(|size| size.0),
        }))
    }
}

#[derive(Debug, Clone)]
enum Auth {
    Bearer(Secret),
    Basic {
        username: String,
        password: Option<Secret>,
    },
}

/// Sends a source's GETs, with its headers and authentication.
#[derive(Debug, Clone)]
pub(crate) struct Getter {
    client: reqwest::Client,
    headers: HeaderMap,
    auth: Option<Auth>,
    /// The URL came from a variable or file: messages show its host only.
    secret_url: bool,
    /// Whether requests carry credentials (authentication, headers or a secret URL).
    credentials: bool,
}

impl Getter {
    /// A getter without headers or authentication.
    pub(crate) fn plain(client: reqwest::Client) -> Getter {
        Getter {
            client,
            headers: HeaderMap::new(),
            auth: None,
            secret_url: false,
            credentials: false,
        }
    }

    /// `url` as messages show it.
    pub(crate) fn shown(&self, url: &str) -> String {
        http::shown_url(url, self.secret_url)
    }

    /// Whether requests carry credentials, which must not go to another origin.
    pub(crate) fn has_credentials(&self) -> bool {
        self.credentials
    }

    /// Sends a GET of `url` (from byte `from`, when given) and checks its status: a status
    /// of 400 or more, or a redirect the client did not follow, is an error. The response,
    /// and the URL as messages show it.
    pub(crate) async fn get(
        &self,
        url: &str,
        from: Option<u64>,
    ) -> Result<(reqwest::Response, String), DeliveryError> {
        let shown = self.shown(url);
        let mut request = self.client.get(url).headers(self.headers.clone());
        if let Some(from) = from {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        request = match &self.auth {
            Some(Auth::Bearer(token)) => request.bearer_auth(token.expose()),
            Some(Auth::Basic { username, password }) => {
                request.basic_auth(username, password.as_ref().map(Secret::expose))
            }
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|err| http::request_error(&format!("GET {shown}"), err))?;
        let status = response.status();
        if status.is_redirection() {
            // Only a redirect the client would not follow comes back (see BuildEnv).
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!(
                    "GET {shown} answered {status}: a redirect to another origin, not followed \
                     because the request carries credentials"
                ),
            ));
        }
        if status.is_client_error() || status.is_server_error() {
            return Err(http::status_error(&format!("GET {shown}"), response).await);
        }
        Ok((response, shown))
    }
}

/// A source that streams the body of an HTTP GET.
#[derive(Debug, Clone)]
pub struct UrlSource {
    getter: Getter,
    url: Template,
    max_bytes: Option<u64>,
}

impl UrlSource {
    /// A source GETting `url` (a template) with `client`.
    pub fn new(client: reqwest::Client, url: Template) -> UrlSource {
        UrlSource {
            getter: Getter::plain(client),
            url,
            max_bytes: None,
        }
    }
}

#[async_trait]
impl DataSource for UrlSource {
    fn describe(&self) -> String {
        format!("url {}", self.getter.shown(self.url.as_str()))
    }

    async fn open(&self, ctx: &RunContext) -> Result<SourceStream, DeliveryError> {
        let (response, shown) = self.getter.get(&self.url.render(ctx), None).await?;
        body_stream(response, &shown).limited(self.max_bytes, &format!("GET {shown}"))
    }

    async fn open_at(
        &self,
        ctx: &RunContext,
        offset: u64,
    ) -> Result<Option<SourceStream>, DeliveryError> {
        let (response, shown) = self.getter.get(&self.url.render(ctx), Some(offset)).await?;
        // A server that ignores the range sends the whole body (200): start over instead.
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Ok(None);
        }
        let left = self.max_bytes.map(|max| max.saturating_sub(offset));
        body_stream(response, &shown)
            .limited(left, &format!("GET {shown}"))
            .map(Some)
    }
}

fn body_stream(response: reqwest::Response, shown: &str) -> SourceStream {
    let len = response.content_length();
    let action = format!("read the body of {shown}");
    let stream = response
        .bytes_stream()
        .map_err(move |err| http::request_error(&action, err).into_io());
    SourceStream {
        stream: Box::pin(stream),
        len,
    }
}


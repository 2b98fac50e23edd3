//! `type = "webhook"`: an HTTP request telling of each run.
//!
//! Three formats: `json` (the run's facts as a JSON object, or a JSON template), `chat`
//! (`{"text": "…"}`, which Slack, Mattermost, Rocket.Chat and Google Chat accept) and
//! `text` (a plain-text body, for ntfy and the like). The URL may hold a token (chat
//! webhooks do), so it comes from the environment or a file if wanted and is never shown:
//! logs and errors name the host only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::Deserialize;

use super::message::{DEFAULT_BODY, DEFAULT_CHAT, Escape, Facts, MessageTemplate};
use super::{Notifier, NotifierSettings};
use crate::build_env::BuildEnv;
use crate::error::{DeliveryError, ErrorKind};
use crate::http::{self, HeaderSetting};
use crate::report::RunReport;
use crate::settings::{
    ConfigDuration, KeyPath, Problems, Secret, SecretField, SecretRef, keys,
};

/// Settings of a `webhook` notifier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL to call: `url`, or `url_env` / `url_file` when it holds a token.
    #[serde(flatten)]
    pub url: SecretField<keys::Url>,
    /// `"POST"` (the default), `"PUT"` or `"PATCH"`.
    #[serde(default)]
    pub method: WebhookMethod,
    /// Extra headers: a value, or `{ env = "VAR" }` / `{ file = "path" }` for a secret one,
    /// with an optional `prefix` (`"Bearer "`).
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSetting>,
    /// `"json"` (the default), `"chat"` or `"text"`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// The body, a template. For `json`, values come out as JSON (`{{ job }}` gives
    /// `"nightly"`) and the result must be JSON; for `chat` and `text`, it is the message.
    #[serde(default)]
    pub body: Option<String>,
    /// How long one try may take (`"10s"` by default).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Tries in all when the call fails for a reason that may pass (3 by default).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// `repeat_after` and `recovery`.
    #[serde(flatten)]
    pub repeats: super::RepeatSettings,
}

fn default_attempts() -> u32 {
    3
}

/// `method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    /// POST.
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

/// `format`: what the body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// A JSON object: the run's facts, or the `body` template's output.
    #[default]
    Json,
    /// `{"text": "<message>"}`, which chat services accept.
    Chat,
    /// A plain-text body.
    Text,
}


impl WebhookConfig {
    fn escape(&self) -> Escape {
        match self.format {
            WebhookFormat::Json => Escape::Json,
            WebhookFormat::Chat | WebhookFormat::Text => Escape::Text,
        }
    }
}

impl NotifierSettings for WebhookConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        self.url.validate_required(at, problems);
        if let Some(SecretRef::Inline(url)) = self.url.source()
            && let Err(err) = check_url(&url)
        {
            problems.add(at.key("url"), err);
        }
        http::validate_headers(&self.headers, &at.key("headers"), problems);
        if let Some(body) = &self.body
            && let Err(err) = MessageTemplate::parse(body, self.escape())
        {
            problems.add(at.key("body"), format!("template: {err}"));
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
        let url = self.url.resolve_required(&env.base_dir)?;
        let host =
            check_url(url.expose()).map_err(|err| config(format!("notifier {name}: url {err}")))?;
        let secret_headers = self.headers.values().any(HeaderSetting::is_secret);
        if url.expose().starts_with("http://")
            && (secret_headers || !matches!(self.url.source(), Some(SecretRef::Inline(_))))
        {
            tracing::warn!(
                notifier = name,
                %host,
                "This webhook sends its secret URL or headers unencrypted over http://."
            );
        }
        let headers = http::header_map(&self.headers, &env.base_dir)
            .map_err(|err| err.context(format!("notifier {name}")))?;
        let body = match (&self.body, self.format) {
            (Some(source), _) => Some(source.as_str()),
            (None, WebhookFormat::Json) => None,
            (None, WebhookFormat::Chat) => Some(DEFAULT_CHAT),
            (None, WebhookFormat::Text) => Some(DEFAULT_BODY),
        };
        let body = body
            .map(|source| MessageTemplate::parse(source, self.escape()))
            .transpose()
            .map_err(|err| config(format!("notifier {name}: template: {err}")))?;
        Ok(Arc::new(WebhookNotifier {
            name: name.to_owned(),
            // The URL or a header may be a secret: never sent to another origin.
            http: env.http_for(true)?,
            url,
            host,
            method: match self.method {
                WebhookMethod::Post => reqwest::Method::POST,
                WebhookMethod::Put => reqwest::Method::PUT,
                WebhookMethod::Patch => reqwest::Method::PATCH,
            },
            headers,
            format: self.format,
            body,
            timeout: self
                .timeout
                .map_or(Duration::from_secs(10), ConfigDuration::get),
            attempts: self.attempts.max(1),
            repeats: self.repeats.get(),
        }))
    }
}

/// Checks that `url` is an http(s) URL; returns its host (what logs may show).
fn check_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("is not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".to_owned());
    }
    let host = parsed.host_str().unwrap_or_default();
    Ok(match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Calls a URL for each run's outcome.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    name: String,
    http: reqwest::Client,
    url: Secret,
    host: String,
    method: reqwest::Method,
    headers: HeaderMap,
    format: WebhookFormat,
    body: Option<MessageTemplate>,
    timeout: Duration,
    attempts: u32,
    repeats: super::Repeats,
}

impl WebhookNotifier {
    /// The body and its content type.
    fn body(&self, facts: &Facts) -> Result<(String, &'static str), DeliveryError> {
        let json = "application/json";
        // `build` gives chat and text a template always (a default if none was written).
        let rendered = self.body.as_ref().map(|t| t.render(facts)).transpose()?;
        match (self.format, rendered) {
            (WebhookFormat::Json, None) => serde_json::to_string(facts)
                .map(|body| (body, json))
                .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string())),
            (WebhookFormat::Json, Some(body)) => {
                serde_json::from_str::<serde::de::IgnoredAny>(&body).map_err(|err| {
                    DeliveryError::new(
                        ErrorKind::Config,
                        format!("the body template did not give JSON: {err}"),
                    )
                })?;
                Ok((body, json))
            }
            (WebhookFormat::Chat, text) => {
                let text = text.unwrap_or_default();
                Ok((
                    serde_json::json!({ "text": text.trim_end() }).to_string(),
                    json,
                ))
            }
            (WebhookFormat::Text, text) => {
                Ok((text.unwrap_or_default(), "text/plain; charset=utf-8"))
            }
        }
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
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
        self.timeout
    }

    async fn notify(&self, report: &RunReport) -> Result<(), DeliveryError> {
        let (body, content_type) = self.body(&Facts::of(report))?;
        let target = format!("{} {}", self.method, self.host);
        let response = self
            .http
            .request(self.method.clone(), self.url.expose())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, content_type)
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|err| http::request_error(&target, err))?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(http::status_error(&target, response).await)
    }
}

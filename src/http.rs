//! What every kind that speaks HTTP shares (the `url` source, the `http` writer, the
//! `webhook` notifier): how failures are classified, how URLs are checked and shown, and
//! headers whose values may be secrets.
//!
//! A status of 400 or more is an error of the kind [`ErrorKind::of_http_status`] gives
//! (5xx, 408 and 429 transient, other 4xx permanent), carrying the server's `Retry-After`
//! when it sent one; a request that could not be sent is a network failure or a timeout.
//! Messages never carry the URL reqwest would add (it may hold a token), and at most
//! [`SNIPPET_CHARS`] characters of an error response's body are read, however large the
//! body.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::error::{DeliveryError, ErrorKind, printable};
use crate::settings::{KeyPath, NOT_A_VARIABLE, Problems, SecretRef, is_variable_name};
use crate::template::Template;

/// How much of an error response's body goes into the error message.
pub const SNIPPET_CHARS: usize = 200;

/// Classifies a reqwest failure while doing `action` (e.g. `GET example.com/x`).
pub fn request_error(action: &str, err: reqwest::Error) -> DeliveryError {
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else if let Some(status) = err.status() {
        ErrorKind::of_http_status(status.as_u16())
    } else if err.is_builder() {
        ErrorKind::Config
    } else {
        ErrorKind::Network
    };
    // reqwest's messages include the URL, which may carry a token: strip it.
    DeliveryError::new(kind, action.to_owned()).with_source(err.without_url())
}

/// The error for `response`, whose status is not a success: `{action} answered {status}`
/// and the start of its body, with the wait its `Retry-After` asks for.
pub async fn status_error(action: &str, response: reqwest::Response) -> DeliveryError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| retry_after(value, std::time::SystemTime::now()));
    let snippet = body_snippet(response).await;
    let error = DeliveryError::new(
        ErrorKind::of_http_status(status.as_u16()),
        format!("{action} answered {status}{snippet}"),
    );
    match retry_after {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// A `Retry-After` value as a wait from `now`: seconds, or an HTTP date (a date in the past
/// is no wait). `None` when it is neither.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = std::time::SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or_default())
}

/// The start of an error response's body, whitespace folded: `": text"`, or nothing. An
/// HTML page (a proxy's or a framework's error page) is reduced to its `<title>`.
async fn body_snippet(response: reqwest::Response) -> String {
    let html = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/html"));
    // Enough bytes for SNIPPET_CHARS characters of any UTF-8 (and the head of a page); the
    // rest is never read.
    let limit = SNIPPET_CHARS * 4;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while body.len() < limit {
        match stream.next().await {
            Some(Ok(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    snippet(&body, html)
}

/// [`body_snippet`]'s text for the first bytes of a body.
fn snippet(body: &[u8], html: bool) -> String {
    let text = String::from_utf8_lossy(body);
    let head: String = text.trim_start().chars().take(14).collect();
    let head = head.to_ascii_lowercase();
    let looks_html = html || head.starts_with("<!doctype html") || head.starts_with("<html");
    let text = if looks_html {
        match title(&text) {
            Some(title) => title,
            None => return String::new(),
        }
    } else {
        text.into_owned()
    };
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // A server's text may hold terminal escape sequences: shown escaped, never replayed.
    let text = printable(&text.chars().take(SNIPPET_CHARS).collect::<String>());
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// The text of an HTML page's `<title>`, with the common entities decoded.
fn title(page: &str) -> Option<String> {
    let lower = page.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let text = page[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    Some(text)
}

/// A header's value: written out, or a secret from the environment or a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HeaderSetting {
    /// The value itself.
    Plain(String),
    /// A secret value.
    Secret {
        /// The environment variable holding it.
        #[serde(default)]
        env: Option<String>,
        /// The file holding it.
        #[serde(default)]
        file: Option<PathBuf>,
        /// Text put before the secret, e.g. `"Bearer "`.
        #[serde(default)]
        prefix: Option<String>,
    },
}

impl HeaderSetting {
    /// Whether the value is a secret.
    pub fn is_secret(&self) -> bool {
        matches!(self, HeaderSetting::Secret { .. })
    }
}

/// Checks `headers` (a kind's `headers` table, at `at`): names and written-out values must
/// be valid in HTTP, a secret needs exactly one of `env` and `file`.
pub fn validate_headers(
    headers: &BTreeMap<String, HeaderSetting>,
    at: &KeyPath,
    problems: &mut Problems,
) {
    for (name, setting) in headers {
        let at = at.key(name);
        if HeaderName::try_from(name.as_str()).is_err() {
            problems.add(at.clone(), "not a valid header name");
        }
        match setting {
            HeaderSetting::Plain(value) => {
                if HeaderValue::try_from(value.as_str()).is_err() {
                    problems.add(at, "not a valid header value");
                }
            }
            HeaderSetting::Secret { env, file, .. } => {
                if env.is_some() == file.is_some() {
                    problems.add(at.clone(), "give exactly one of `env` and `file`");
                }
                if env.as_deref().is_some_and(|name| !is_variable_name(name)) {
                    problems.add(at.key("env"), NOT_A_VARIABLE);
                }
            }
        }
    }
}

/// The request headers `headers` give, secrets read (a file relative to `base_dir`) and
/// marked sensitive, so that no debug output shows them.
pub fn header_map(
    headers: &BTreeMap<String, HeaderSetting>,
    base_dir: &Path,
) -> Result<HeaderMap, DeliveryError> {
    let config = |message: String| DeliveryError::new(ErrorKind::Config, message);
    let mut map = HeaderMap::new();
    for (key, setting) in headers {
        let value = match setting {
            HeaderSetting::Plain(value) => value.clone(),
            HeaderSetting::Secret { env, file, prefix } => {
                let secret = match (env, file) {
                    (Some(var), _) => SecretRef::Env(var.clone()),
                    (None, Some(file)) => SecretRef::File(file.clone()),
                    (None, None) => return Err(config(format!("header {key} has no value"))),
                };
                let secret = secret.resolve(base_dir)?;
                format!("{}{}", prefix.as_deref().unwrap_or(""), secret.expose())
            }
        };
        let name = HeaderName::try_from(key.as_str())
            .map_err(|_| config(format!("bad header name {key}")))?;
        let mut value = HeaderValue::try_from(value)
            .map_err(|_| config(format!("bad value for header {key}")))?;
        value.set_sensitive(setting.is_secret());
        map.insert(name, value);
    }
    Ok(map)
}

/// Checks a URL template: it parses as a template, is http(s), and carries no user or
/// password in its authority (a literal one is fully checked as a URL). Never quotes it.
pub fn check_url_template(url: &str) -> Result<(), String> {
    let template = Template::parse(url).map_err(|err| err.to_string())?;
    let Some(("http" | "https", rest)) = url.split_once("://") else {
        return Err("the URL must start with http:// or https://".into());
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err(
            "put credentials in `username` and `password_env` (or the whole URL in `url_env` / \
             `url_file`), not in `url`"
                .into(),
        );
    }
    if template.is_literal() {
        reqwest::Url::parse(url).map_err(|err| format!("not a valid URL: {err}"))?;
    }
    Ok(())
}

/// `url` as messages, logs and the store may show it: without user, password and query
/// (which often carry tokens), and when the URL itself is a secret, without its path.
pub fn shown_url(url: &str, secret: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL; not shown)".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..end]
        .rsplit_once('@')
        .map_or(&rest[..end], |(_, host)| host);
    let path = &rest[end..];
    if secret {
        return format!("{scheme}://{host}/…");
    }
    match path.split_once(['?', '#']) {
        Some((path, _)) => format!("{scheme}://{host}{path}?…"),
        None => format!("{scheme}://{host}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        // 1_800_000_000 is Fri, 15 Jan 2027 08:00:00 GMT.
        assert_eq!(
            retry_after("Fri, 15 Jan 2027 08:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Fri, 15 Jan 2027 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn an_html_error_page_is_reduced_to_its_title() {
        let page = b"<!DOCTYPE html>\n<html><head><meta charset=utf-8>\n<TITLE>502 Bad Gateway &amp; more</TITLE><style>body{}</style></head><body><h1>502</h1>...";
        assert_eq!(snippet(page, true), ": 502 Bad Gateway & more");
        // Without a title nothing of the markup is shown; XML is not HTML.
        assert_eq!(snippet(b"<html><body><p>oops</p>", false), "");
        assert_eq!(snippet(b"<html>", false), "");
        assert_eq!(
            snippet(b"<?xml version=\"1.0\"?><Error>NoSuchKey</Error>", false),
            ": <?xml version=\"1.0\"?><Error>NoSuchKey</Error>"
        );
        // Text stays text, folded.
        assert_eq!(snippet(b"quota   exceeded\n", false), ": quota exceeded");
    }
}

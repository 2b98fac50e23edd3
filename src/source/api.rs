//! `type = "api"`: the records of a paginated JSON API, page after page, as JSON Lines.
//!
//! Each page is one GET (with the `url` source's headers and authentication); the records
//! are the array at the `records` JSON pointer, each written as one line, exactly as the
//! server wrote it (whitespace outside strings dropped). The next page comes from a URL in
//! the page (`next_url`), the `Link: <…>; rel="next"` header (`link_header`), a cursor in
//! the page sent back as a query parameter (`cursor`) or a page number (`page_number`,
//! until a page has no records).
//!
//! This is seed 002's resumable full refresh at the page level: with a state store, before
//! a page's records go to the writers the source records where the next page starts (the
//! request to send and the bytes given so far). A retry or a restarted daemon whose
//! writers hold the data up to a page's end continues with the next page instead of page 1,
//! so every record is delivered exactly once. Each page is handed on as one chunk, so a
//! writer's checkpoints fall on page ends.
//!
//! With `since`, a run asks only for records newer than the largest `field` value of the
//! last successful run, sent as a query parameter; the value is kept in the store once
//! every writer has delivered.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::pages::{PageEnd, PageLog};
use super::url::{Getter, RequestSettings};
use super::{DataSource, SourceSettings, SourceStream};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{ByteSize, KeyPath, Problems, SecretField, keys};
use crate::template::Template;

/// Settings of an `api` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The first page's `http://` or `https://` URL, a template: `url`, or `url_env` /
    /// `url_file` when it holds a token.
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
    /// The JSON pointer to the array of records in a page (`"/data"`); `""`, the default:
    /// the page is the array.
    #[serde(default)]
    pub records: String,
    /// How the next page is found; unset: there is one page.
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// Incremental runs: only records newer than the last successful run's.
    #[serde(default)]
    pub since: Option<Since>,
    /// The most bytes one page may have (default `"64MiB"`): a page is parsed whole.
    #[serde(default)]
    pub max_page_bytes: Option<ByteSize>,
    /// The most pages a run may read (default 100,000): an API that never stops fails the
    /// run instead of running forever.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

/// `pagination = { type = "…", … }`: where the next page is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// The next page's URL is in the page, at `pointer` (absolute, or relative to the
    /// page's); the last page has none (missing, null or empty).
    NextUrl {
        /// A JSON pointer, e.g. `"/links/next"`.
        pointer: String,
    },
    /// The next page's URL is in the `Link` header, `rel="next"`.
    LinkHeader,
    /// A cursor in the page, at `pointer`, is sent back as the query parameter `param`; the
    /// last page has none.
    Cursor {
        /// A JSON pointer, e.g. `"/meta/next_cursor"`.
        pointer: String,
        /// The query parameter, e.g. `"cursor"`.
        param: String,
    },
    /// Pages numbered from `start` (1 by default) in the query parameter `param`, until a
    /// page has no records.
    PageNumber {
        /// The query parameter, e.g. `"page"`.
        param: String,
        /// The first page's number.
        #[serde(default = "first_page")]
        start: u64,
    },
}

fn first_page() -> u64 {
    1
}

/// `since = { field = "/updated_at", param = "updated_since" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// The JSON pointer to the value in each record that grows (a timestamp or a number).
    pub field: String,
    /// The query parameter the last run's largest value is sent in.
    pub param: String,
}

/// Where the next page starts, and what the pages so far have shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Position {
    /// Pages read.
    pages: u64,
    /// The next page's URL; `None` after the last page.
    url: Option<String>,
    /// The largest `since` value seen so far.
    since: Option<serde_json::Value>,
}

fn check_pointer(pointer: &str, key: KeyPath, problems: &mut Problems) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        problems.add(
            key,
            "must be a JSON pointer: empty, or starting with / (e.g. \"/data\")",
        );
    }
}

impl ApiConfig {
    fn request(&self) -> RequestSettings<'_> {
        RequestSettings {
            headers: &self.headers,
            bearer_token: &self.bearer_token,
            username: &self.username,
            password: &self.password,
        }
    }
}

impl SourceSettings for ApiConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        self.request().validate(&self.url, at, problems);
        check_pointer(&self.records, at.key("records"), problems);
        if let Some(Pagination::NextUrl { pointer } | Pagination::Cursor { pointer, .. }) =
            &self.pagination
        {
            check_pointer(pointer, at.key("pagination").key("pointer"), problems);
            if pointer.is_empty() {
                problems.add(at.key("pagination").key("pointer"), "must not be empty");
            }
        }
        if let Some(Pagination::Cursor { param, .. } | Pagination::PageNumber { param, .. }) =
            &self.pagination
            && param.is_empty()
        {
            problems.add(at.key("pagination").key("param"), "must not be empty");
        }
        if let Some(since) = &self.since {
            check_pointer(&since.field, at.key("since").key("field"), problems);
            if since.field.is_empty() {
                problems.add(at.key("since").key("field"), "must not be empty");
            }
            if since.param.is_empty() {
                problems.add(at.key("since").key("param"), "must not be empty");
            }
        }
        if self.max_pages == Some(0) {
            problems.add(at.key("max_pages"), "must be at least 1");
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError> {
        let (url, getter) = self.request().build(&self.url, env, "api")?;
        Ok(Arc::new(ApiSource {
            settings: Arc::new(self.clone()),
            url,
            getter,
            max_page_bytes: self.max_page_bytes.map_or(64 << 20, |size| size.0),
            max_pages: self.max_pages.unwrap_or(100_000),
        }))
    }
}

/// A source that reads a paginated JSON API.
#[derive(Debug, Clone)]
pub struct ApiSource {
    settings: Arc<ApiConfig>,
    url: Template,
    getter: Getter,
    max_page_bytes: u64,
    max_pages: u64,
}

/// The value at JSON `pointer` in `raw`, borrowed from it; `None` when there is none.
fn at_pointer<'a>(raw: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    let mut current = raw;
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        let text = current.get().trim_start();
        current = if text.starts_with('{') {
            let object: std::collections::HashMap<String, &RawValue> =
                serde_json::from_str(current.get()).ok()?;
            object.get(&segment).copied()?
        } else if text.starts_with('[') {
            let array: Vec<&RawValue> = serde_json::from_str(current.get()).ok()?;
            array.get(segment.parse::<usize>().ok()?).copied()?
        } else {
            return None;
        };
    }
    Some(current)
}

/// Appends `raw` (valid JSON) to `out` without the whitespace outside strings: one line.
fn compact(raw: &str, out: &mut Vec<u8>) {
    let (mut in_string, mut escaped) = (false, false);
    for byte in raw.bytes() {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
            out.push(byte);
        } else if !matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
            out.push(byte);
        }
    }
}

/// A scalar at `pointer` as query text: a string as is, a number as written; `None` for
/// null, an empty string, anything else or nothing.
fn scalar_text(raw: &RawValue, pointer: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(at_pointer(raw, pointer)?.get()).ok()? {
        serde_json::Value::String(text) if !text.is_empty() => Some(text),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The larger of two `since` values: numbers by value, strings by text (ISO 8601
/// timestamps sort so); otherwise the one kept.
fn larger(kept: Option<serde_json::Value>, seen: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match (&kept, &seen) {
        (None, Value::Number(_) | Value::String(_)) => Some(seen),
        (Some(Value::Number(a)), Value::Number(b))
            if b.as_f64().unwrap_or(f64::MIN) > a.as_f64().unwrap_or(f64::MIN) =>
        {
            Some(seen)
        }
        (Some(Value::String(a)), Value::String(b)) if b > a => Some(seen),
        _ => kept,
    }
}

/// A `since` value as a query parameter.
fn since_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `url` with query parameter `param` set to `value` (replacing it when present).
fn with_param(url: &str, param: &str, value: &str) -> Result<String, DeliveryError> {
    let mut parsed = reqwest::Url::parse(url).map_err(|err| {
        DeliveryError::new(ErrorKind::Config, format!("not a URL ({err})"))
    })?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(name, _)| name != param)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(param, value);
    Ok(parsed.to_string())
}

/// The `rel="next"` URL of a `Link` header.
fn link_next(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .filter_map(|param| param.split_once('='))
            .any(|(name, value)| {
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
            .then(|| target.to_owned())
    })
}

/// One page read: its records as JSON Lines, and what follows it.
struct Page {
    lines: Vec<u8>,
    records: usize,
    next: Option<String>,
    since: Option<serde_json::Value>,
}

impl ApiSource {
    /// Reads the page at `url`, the `pages`th (from 0).
    async fn page(
        &self,
        url: &str,
        pages: u64,
        since: Option<serde_json::Value>,
    ) -> Result<Page, DeliveryError> {
        let number = pages + 1;
        let (response, shown) = self.getter.get(url, None).await?;
        let link = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = self.body(response, &shown, number).await?;
        let raw: Box<RawValue> = serde_json::from_slice(&body).map_err(|err| {
            let start = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
            DeliveryError::new(
                ErrorKind::Server,
                format!("page {number} (GET {shown}) is not JSON ({err}); it starts: {start:?}"),
            )
        })?;
        let pointer = &self.settings.records;
        let records: Vec<&RawValue> = at_pointer(&raw, pointer)
            .and_then(|array| serde_json::from_str(array.get()).ok())
            .ok_or_else(|| {
                DeliveryError::new(
                    ErrorKind::Rejected,
                    format!(
                        "page {number} (GET {shown}) has no array of records at {}",
                        if pointer.is_empty() { "its top (records = \"\")" } else { pointer }
                    ),
                )
            })?;
        let mut lines = Vec::with_capacity(body.len());
        let mut since = since;
        for record in &records {
            compact(record.get(), &mut lines);
            lines.push(b'\n');
            if let Some(rule) = &self.settings.since
                && let Some(value) = at_pointer(record, &rule.field)
                && let Ok(value) = serde_json::from_str(value.get())
            {
                since = larger(since, value);
            }
        }
        let next = match &self.settings.pagination {
            None => None,
            Some(Pagination::NextUrl { pointer }) => scalar_text(&raw, pointer),
            Some(Pagination::LinkHeader) => link.as_deref().and_then(link_next),
            Some(Pagination::Cursor { pointer, param }) => scalar_text(&raw, pointer)
                .map(|cursor| with_param(url, param, &cursor))
                .transpose()?,
            Some(Pagination::PageNumber { param, start }) => match records.is_empty() {
                true => None,
                false => Some(with_param(url, param, &(start + number).to_string())?),
            },
        };
        let next = match next {
            Some(next) => Some(self.follow(url, &next, number)?),
            None => None,
        };
        Ok(Page {
            lines,
            records: records.len(),
            next,
            since,
        })
    }

    /// Reads a page's body, refusing one larger than `max_page_bytes`.
    async fn body(
        &self,
        response: reqwest::Response,
        shown: &str,
        number: u64,
    ) -> Result<Vec<u8>, DeliveryError> {
        let max = self.max_page_bytes;
        let too_large = || {
            DeliveryError::new(
                ErrorKind::Rejected,
                format!("page {number} (GET {shown}) is larger than max_page_bytes ({max} bytes)"),
            )
        };
        if response.content_length().is_some_and(|len| len > max) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|err| {
                crate::http::request_error(&format!("read page {number} (GET {shown})"), err)
            })?;
            if (body.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The next page's URL, `next` resolved against the page's `url`; refused when it
    /// leaves the API's origin while requests carry credentials, or repeats the page.
    fn follow(&self, url: &str, next: &str, number: u64) -> Result<String, DeliveryError> {
        let base = reqwest::Url::parse(url)
            .map_err(|err| DeliveryError::new(ErrorKind::Config, format!("not a URL ({err})")))?;
        let resolved = base.join(next).map_err(|err| {
            DeliveryError::new(
                ErrorKind::Rejected,
                format!("page {number}'s next page is not a URL ({err})"),
            )
        })?;
        if self.getter.has_credentials() && resolved.origin() != base.origin() {
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!(
                    "page {number}'s next page is on another origin ({}): not followed, as requests carry credentials",
                    resolved.origin().ascii_serialization()
                ),
            ));
        }
        let resolved = resolved.to_string();
        if resolved == url {
            return Err(DeliveryError::new(
                ErrorKind::Server,
                format!("page {number}'s next page is itself ({}): the API would never end", self.getter.shown(url)),
            ));
        }
        Ok(resolved)
    }

    /// The first page's URL: the template, and the last successful run's `since` value.
    async fn first_url(&self, ctx: &RunContext) -> Result<String, DeliveryError> {
        let url = self.url.render(ctx);
        let (Some(since), Some(ledger)) = (&self.settings.since, &ctx.ledger) else {
            return Ok(url);
        };
        let kept = ledger.store.cursor(&ctx.job).await.map_err(|err| {
            DeliveryError::new(ErrorKind::Io, format!("read the job's since value: {err}"))
        })?;
        match kept {
            Some(value) => with_param(&url, &since.param, &value),
            None => Ok(url),
        }
    }

    /// The pages from `start` on (`bytes` given before it), each as one chunk, each page
    /// end recorded in `log` before the page goes on.
    fn walk(
        &self,
        ctx: &RunContext,
        start: PageEnd<Position>,
        log: PageLog<Position>,
    ) -> SourceStream {
        let source = self.clone();
        let ctx = ctx.clone();
        let stream = futures::stream::try_unfold((start, log), move |(mut at, mut log)| {
            let source = source.clone();
            let ctx = ctx.clone();
            async move {
                loop {
                    let Some(url) = at.next.url.clone() else {
                        return Ok(None);
                    };
                    if at.next.pages >= source.max_pages {
                        return Err(DeliveryError::new(
                            ErrorKind::Rejected,
                            format!("more than max_pages ({}) pages", source.max_pages),
                        )
                        .into_io());
                    }
                    let page = source
                        .page(&url, at.next.pages, at.next.since.clone())
                        .await
                        .map_err(DeliveryError::into_io)?;
                    at = PageEnd {
                        bytes: at.bytes + page.lines.len() as u64,
                        next: Position {
                            pages: at.next.pages + 1,
                            url: page.next,
                            since: page.since,
                        },
                    };
                    tracing::debug!(page = at.next.pages, records = page.records, "API page read.");
                    log.record(&ctx, at.clone()).await;
                    if !page.lines.is_empty() {
                        return Ok(Some((Bytes::from(page.lines), (at, log))));
                    }
                }
            }
        });
        SourceStream {
            stream: Box::pin(stream),
            len: None,
        }
    }
}

#[async_trait]
impl DataSource for ApiSource {
    fn describe(&self) -> String {
        format!("api {}", self.getter.shown(self.url.as_str()))
    }

    async fn open(&self, ctx: &RunContext) -> Result<SourceStream, DeliveryError> {
        let start = PageEnd {
            bytes: 0,
            next: Position {
                pages: 0,
                url: Some(self.first_url(ctx).await?),
                since: None,
            },
        };
        Ok(self.walk(ctx, start, PageLog::default()))
    }

    async fn open_at(
        &self,
        ctx: &RunContext,
        offset: u64,
    ) -> Result<Option<SourceStream>, DeliveryError> {
        let log = PageLog::<Position>::load(ctx).await;
        let Some(at) = log.at(offset).cloned() else {
            return Ok(None);
        };
        tracing::info!(pages = at.next.pages, "Continuing the API after the pages delivered.");
        Ok(Some(self.walk(ctx, at, log)))
    }

    async fn delivered(&self, ctx: &RunContext) -> Result<(), DeliveryError> {
        let (Some(_), Some(ledger)) = (&self.settings.since, &ctx.ledger) else {
            return Ok(());
        };
        let log = PageLog::<Position>::load(ctx).await;
        let Some(value) = log.last().and_then(|end| end.next.since.as_ref()) else {
            return Ok(());
        };
        ledger
            .store
            .set_cursor(&ctx.job, &since_text(value))
            .await
            .map_err(|err| {
                DeliveryError::new(ErrorKind::Io, format!("keep the job's since value: {err}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn pointers_walk_objects_and_arrays() {
        let page = raw(r#"{"data": [{"id": 1}, {"id": 2}], "a/b": {"~c": "x"}}"#);
        assert_eq!(at_pointer(&page, "/data/1/id").map(|v| v.get()), Some("2"));
        assert_eq!(at_pointer(&page, "/a~1b/~0c").map(|v| v.get()), Some("\"x\""));
        assert_eq!(at_pointer(&page, "").map(|v| v.get().len()), Some(page.get().len()));
        assert!(at_pointer(&page, "/missing").is_none());
        assert!(at_pointer(&page, "/data/9").is_none());
    }

    #[test]
    fn records_are_compacted_to_one_line() {
        let mut out = Vec::new();
        compact("{ \"a\" : [1, 2],\n \"b\": \"x y\\\" z\" }", &mut out);
        assert_eq!(String::from_utf8(out).expect("utf-8"), r#"{"a":[1,2],"b":"x y\" z"}"#);
    }

    #[test]
    fn link_headers_name_the_next_page() {
        let header = r#"<https://api.example/i?page=1>; rel="prev", <https://api.example/i?page=3>; rel="next""#;
        assert_eq!(link_next(header).as_deref(), Some("https://api.example/i?page=3"));
        assert_eq!(link_next(r#"<https://a/x>; rel="last""#), None);
    }

    #[test]
    fn query_parameters_are_set_once() {
        assert_eq!(
            with_param("https://a.example/x?cursor=1&n=2", "cursor", "abc").expect("url"),
            "https://a.example/x?n=2&cursor=abc"
        );
    }

    #[test]
    fn since_keeps_the_largest_value() {
        use serde_json::json;
        let kept = larger(None, json!("2026-01-02T00:00:00Z"));
        let kept = larger(kept, json!("2026-01-01T00:00:00Z"));
        assert_eq!(kept, Some(json!("2026-01-02T00:00:00Z")));
        assert_eq!(larger(Some(json!(5)), json!(7)), Some(json!(7)));
        assert_eq!(larger(Some(json!(5)), json!(null)), Some(json!(5)));
    }
}

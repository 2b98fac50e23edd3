//! HTTP failures, classified once for every kind that speaks HTTP (the `url` source, the
//! `webhook` notifier, and whatever comes next).
//!
//! A status of 400 or more is an error of the kind [`ErrorKind::of_http_status`] gives
//! (5xx, 408 and 429 transient, other 4xx permanent); a request that could not be sent is a
//! network failure or a timeout. Messages never carry the URL reqwest would add (it may
//! hold a token), and at most [`SNIPPET_CHARS`] characters of an error response's body are
//! read, however large the body.

use futures::StreamExt as _;

use crate::error::{DeliveryError, ErrorKind, printable};

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
/// and the start of its body.
pub async fn status_error(action: &str, response: reqwest::Response) -> DeliveryError {
    let status = response.status();
    let snippet = body_snippet(response).await;
    DeliveryError::new(
        ErrorKind::of_http_status(status.as_u16()),
        format!("{action} answered {status}{snippet}"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

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

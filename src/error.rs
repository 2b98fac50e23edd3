//! Delivery errors and their classification.
//!
//! Every failure of a source, transform or writer becomes a [`DeliveryError`]: a message
//! saying what was being done and where, an [`ErrorKind`] saying what sort of failure it was,
//! and the underlying cause. The kind is what the retry policy decides on: transient kinds
//! (network, timeout, server, throttled, …) are retried, permanent ones (auth, not found,
//! config, …) are not, and a job may choose its own set.

use std::fmt;

use serde::Deserialize;

/// What sort of failure a [`DeliveryError`] is; the unit of retry decisions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Connecting failed, or a connection broke mid-transfer.
    Network,
    /// An attempt, a connection or a read took longer than allowed.
    Timeout,
    /// The remote side failed (HTTP 5xx and the like).
    Server,
    /// The remote side asked us to slow down or come back later (HTTP 429, 408).
    Throttled,
    /// A local read or write failed for a reason that may pass.
    Io,
    /// A disk or quota is full.
    StorageFull,
    /// A source command ran and exited unsuccessfully.
    Command,
    /// Credentials were refused or permission was denied.
    Auth,
    /// What was asked for does not exist.
    NotFound,
    /// The remote side rejected the request itself (HTTP 4xx other than the above).
    Rejected,
    /// The job's configuration cannot work (a missing secret, a template escaping its base).
    Config,
    /// The data failed a check: a short read, a size or checksum mismatch.
    Integrity,
    /// A source the run requires was not ready over its interval within `wait`.
    NotReady,
}

impl ErrorKind {
    /// Every kind, in a stable order (for documentation and error messages).
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Network,
        ErrorKind::Timeout,
        ErrorKind::Server,
        ErrorKind::Throttled,
        ErrorKind::Io,
        ErrorKind::StorageFull,
        ErrorKind::Command,
        ErrorKind::Auth,
        ErrorKind::NotFound,
        ErrorKind::Rejected,
        ErrorKind::Config,
        ErrorKind::Integrity,
        ErrorKind::NotReady,
    ];

    /// Whether this kind is retried when a job does not choose its own set.
    pub fn is_transient_by_default(self) -> bool {
        matches!(
            self,
            ErrorKind::Network
                | ErrorKind::Timeout
                | ErrorKind::Server
                | ErrorKind::Throttled
                | ErrorKind::Io
                | ErrorKind::StorageFull
                | ErrorKind::Command
                | ErrorKind::Integrity
        )
    }

    /// The name used in job files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Server => "server",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Io => "io",
            ErrorKind::StorageFull => "storage_full",
            ErrorKind::Command => "command",
            ErrorKind::Auth => "auth",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Config => "config",
            ErrorKind::Integrity => "integrity",
            ErrorKind::NotReady => "not_ready",
        }
    }

    /// The kind of a local I/O error.
    pub fn of_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match err.kind() {
            Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::Auth,
            Io::NotFound => ErrorKind::NotFound,
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => ErrorKind::StorageFull,
            Io::TimedOut => ErrorKind::Timeout,
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::BrokenPipe
            | Io::UnexpectedEof => ErrorKind::Network,
            Io::InvalidInput | Io::InvalidFilename | Io::IsADirectory | Io::NotADirectory => {
                ErrorKind::Config
            }
            _ => ErrorKind::Io,
        }
    }

    /// The kind of an HTTP error status.
    pub fn of_http_status(status: u16) -> ErrorKind {
        match status {
            401 | 403 => ErrorKind::Auth,
            404 | 410 => ErrorKind::NotFound,
            408 | 429 => ErrorKind::Throttled,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::Rejected,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed delivery step: what was being done, what kind of failure, and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
    /// How long the other side asked us to wait before trying again (HTTP `Retry-After`).
    retry_after: Option<std::time::Duration>,
}

impl DeliveryError {
    /// A new error of `kind` whose message says what failed.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DeliveryError {
            kind,
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// Notes that the other side asked for `wait` before the next try (HTTP `Retry-After`):
    /// a retry waits at least that long.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The wait the other side asked for before the next try, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Attaches the underlying cause (shown in the error chain).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// An I/O failure while doing `action` (e.g. "write /srv/out/a.csv"), classified by its
    /// [`std::io::ErrorKind`].
    pub fn io(action: impl fmt::Display, err: std::io::Error) -> Self {
        // A stream that carries a DeliveryError inside an io::Error (a failing source seen by
        // a writer) keeps the original kind and message.
        if err
            .get_ref()
            .is_some_and(|inner| inner.is::<DeliveryError>())
        {
            if let Some(Ok(inner)) = err.into_inner().map(|e| e.downcast::<DeliveryError>()) {
                return *inner;
            }
            return DeliveryError::new(ErrorKind::Io, format!("cannot {action}"));
        }
        DeliveryError::new(ErrorKind::of_io(&err), format!("cannot {action}")).with_source(err)
    }

    /// What sort of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Prefixes the message with more context, keeping kind and cause.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The message and every cause, outermost first.
    pub fn chain(&self) -> Vec<String> {
        chain_of(self)
    }

    /// A copy with the same kind whose message is the whole chain on one line (errors
    /// cannot be cloned, and one source failure must reach every writer).
    pub fn summary(&self) -> DeliveryError {
        DeliveryError {
            retry_after: self.retry_after,
            ..DeliveryError::new(self.kind, display_chain(&self.chain()))
        }
    }

    /// Wraps this error in an [`std::io::Error`] so it can travel through byte streams and
    /// come out intact on the other side (see [`DeliveryError::io`]).
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

/// The messages of `err` and of its causes, outermost first. A cause whose message an
/// outer one already says (libraries often print their source in their own message) is
/// left out, so nothing reads twice.
pub fn chain_of(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.iter().any(|said| said.contains(&text)) {
            out.push(text);
        }
        next = cause.source();
    }
    out
}

/// `text` with control characters (terminal escape sequences, carriage returns, …) shown
/// as `\u{1b}`-style escapes: text from outside (a server's error body) never drives a
/// terminal it is printed on.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A chain of error messages rendered on one line: `outer: inner: root`.
pub fn display_chain(chain: &[String]) -> String {
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its source in its own message, as hyper's and rustls' do.
    #[derive(Debug)]
    struct Wraps(&'static str, Option<Box<Wraps>>);

    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let dns = "failed to lookup address information: Name or service not known";
        let err = Wraps(
            "error sending request",
            Some(Box::new(Wraps(
                "dns error: failed to lookup address information: Name or service not known",
                Some(Box::new(Wraps(dns, Some(Box::new(Wraps(dns, None)))))),
            ))),
        );
        assert_eq!(
            display_chain(&chain_of(&err)),
            "error sending request: dns error: failed to lookup address information: Name or service not known"
        );
    }

    #[test]
    fn http_statuses_are_classified() {
        assert_eq!(ErrorKind::of_http_status(404), ErrorKind::NotFound);
        assert_eq!(ErrorKind::of_http_status(401), ErrorKind::Auth);
        assert_eq!(ErrorKind::of_http_status(429), ErrorKind::Throttled);
        assert_eq!(ErrorKind::of_http_status(408), ErrorKind::Throttled);
        assert_eq!(ErrorKind::of_http_status(503), ErrorKind::Server);
        assert_eq!(ErrorKind::of_http_status(400), ErrorKind::Rejected);
        assert!(ErrorKind::of_http_status(500).is_transient_by_default());
        assert!(!ErrorKind::of_http_status(404).is_transient_by_default());
    }

    #[test]
    fn a_delivery_error_survives_a_trip_through_io_error() {
        let original = DeliveryError::new(ErrorKind::Command, "command exited with status 3");
        let back = DeliveryError::io("read source", original.into_io());
        assert_eq!(back.kind(), ErrorKind::Command);
        assert_eq!(back.to_string(), "command exited with status 3");
    }

    #[test]
    fn io_errors_are_classified() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(
            DeliveryError::io("write x", full).kind(),
            ErrorKind::StorageFull
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = DeliveryError::io("write /x", denied);
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert_eq!(err.chain()[0], "cannot write /x");
    }
}

//! Data sources: where a delivery's bytes come from.
//!
//! A [`DataSource`] opens a stream of byte chunks for a run. The stream is read once and as
//! it arrives; no source holds a whole payload in memory. A failure part-way through
//! arrives as an error item in the stream (carrying a [`DeliveryError`] inside the
//! `io::Error`), so writers never mistake a broken source for a finished one.
//!
//! Kinds: `inline`, `file`, `url`, `command`, `sql`, `api`, `files`, one file each.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::kinds::kinds;
use crate::settings::{KeyPath, Problems};

mod pages;

/// A stream of byte chunks. Errors are `io::Error`s, usually wrapping a [`DeliveryError`].
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An opened source: its bytes, and how many there will be when that is known.
pub struct SourceStream {
    /// The bytes.
    pub stream: ByteStream,
    /// How many bytes the stream will yield, when the source knows it in advance.
    pub len: Option<u64>,
}

impl SourceStream {
    /// The same stream, failing (with a permanent `rejected` error naming `max_bytes`) as
    /// soon as it gives more than `max` bytes, or at once when its announced length is
    /// larger. `what` names the source in the error. No limit when `max` is `None`.
    pub fn limited(self, max: Option<u64>, what: &str) -> Result<SourceStream, DeliveryError> {
        let Some(max) = max else {
            return Ok(self);
        };
        let what = what.to_owned();
        let too_much = move || {
            DeliveryError::new(
                ErrorKind::Rejected,
                format!("{what} gives more than max_bytes ({max} bytes)"),
            )
        };
        if self.len.is_some_and(|len| len > max) {
            return Err(too_much());
        }
        let stream = self.stream.scan((0u64, false), move |(seen, over), item| {
            if *over {
                return futures::future::ready(None);
            }
            let item = item.and_then(|chunk| {
                *seen += chunk.len() as u64;
                if *seen > max {
                    *over = true;
                    Err(too_much().into_io())
                } else {
                    Ok(chunk)
                }
            });
            futures::future::ready(Some(item))
        });
        Ok(SourceStream {
            stream: Box::pin(stream),
            len: self.len,
        })
    }
}

impl fmt::Debug for SourceStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceStream")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Where a delivery's bytes come from.
#[async_trait]
pub trait DataSource: fmt::Debug + Send + Sync {
    /// A short description for logs and receipts, e.g. `file /srv/export.csv`. Never
    /// includes a secret.
    fn describe(&self) -> String;

    /// Opens the source for `ctx`'s run. Called once per attempt.
    async fn open(&self, ctx: &RunContext) -> Result<SourceStream, DeliveryError>;

    /// Opens the source from byte `offset` on, to resume a run whose writers hold the bytes
    /// before it. `None` when this source cannot (the default): the run starts over. The
    /// stream's `len` is then what remains.
    async fn open_at(
        &self,
        _ctx: &RunContext,
        _offset: u64,
    ) -> Result<Option<SourceStream>, DeliveryError> {
        Ok(None)
    }

    /// The files this run delivers one by one, each through every writer with its own
    /// receipt (`ctx.file` names the one being delivered when [`DataSource::open`] and
    /// [`DataSource::delivered`] are called); `None` (the default) for a source that gives
    /// one payload a run.
    async fn files(
        &self,
        _ctx: &RunContext,
    ) -> Result<Option<Vec<crate::context::SourceFile>>, DeliveryError> {
        Ok(None)
    }

    /// Every writer of `ctx`'s run has delivered: the source keeps what the next run starts
    /// from (an `api` source's `since` value). An error fails the attempt; the retry calls
    /// this again without writing anything.
    async fn delivered(&self, _ctx: &RunContext) -> Result<(), DeliveryError> {
        Ok(())
    }
}

/// The job-file settings of a source kind.
pub trait SourceSettings: fmt::Debug + Send + Sync {
    /// Checks the settings without any I/O, recording problems at `at`.
    fn validate(&self, at: &KeyPath, problems: &mut Problems);

    /// Builds the source: reads secrets, prepares clients.
    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError>;
}

kinds! {
    /// `source = { type = "…", … }`: a job's data source.
    pub enum SourceConfig: SourceSettings {
        /// `type = "inline"`: text written in the job file.
        mod inline: "inline" => Inline(InlineConfig),
        /// `type = "file"`: a local file.
        mod file: "file" => File(FileConfig),
        /// `type = "url"`: the body of an HTTP(S) GET.
        mod url: "url" => Url(UrlConfig),
        /// `type = "command"`: the standard output of a program.
        mod command: "command" => Command(CommandConfig),
        /// `type = "sql"`: the result of a query on PostgreSQL or SQLite.
        mod sql: "sql" => Sql(SqlConfig),
        /// `type = "api"`: the records of a paginated JSON API.
        mod api: "api" => Api(ApiConfig),
        /// `type = "files"`: new files in a directory, each delivered on its own.
        mod files: "files" => Files(FilesConfig),
    }
}

//! `type = "file"`: a local file, streamed in chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::AsyncSeekExt as _;

use super::{DataSource, SourceSettings, SourceStream};
use crate::build_env::BuildEnv;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{KeyPath, Problems};
use crate::template::Template;
use crate::{CHUNK_SIZE, RunContext};

/// Settings of a `file` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to read; a template (`{scheduled:%F}` and the like). Relative paths are
    /// taken from the job file's directory.
    pub path: String,
}

impl SourceSettings for FileConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if let Err(err) = Template::parse(&self.path) {
            problems.add(at.key("path"), err.to_string());
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError> {
        let path = Template::parse(&self.path)
            .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string()))?;
        Ok(Arc::new(FileSource {
            path,
            base_dir: env.base_dir.clone(),
        }))
    }
}

/// A source that streams a local file.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: Template,
    base_dir: PathBuf,
}

impl FileSource {
    /// A source reading `path` (a template; relative to the current directory).
    pub fn new(path: Template) -> FileSource {
        FileSource {
            path,
            base_dir: PathBuf::new(),
        }
    }
}

#[async_trait]
impl DataSource for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path)
    }

    async fn open(&self, ctx: &RunContext) -> Result<SourceStream, DeliveryError> {
        self.open_from(ctx, 0).await
    }

    async fn open_at(
        &self,
        ctx: &RunContext,
        offset: u64,
    ) -> Result<Option<SourceStream>, DeliveryError> {
        self.open_from(ctx, offset).await.map(Some)
    }
}

impl FileSource {
    async fn open_from(
        &self,
        ctx: &RunContext,
        offset: u64,
    ) -> Result<SourceStream, DeliveryError> {
        open_path(&self.base_dir.join(self.path.render(ctx)), offset).await
    }
}

/// Streams the file at `path` from byte `offset` on.
pub(crate) async fn open_path(path: &Path, offset: u64) -> Result<SourceStream, DeliveryError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|err| DeliveryError::io(format_args!("open {}", path.display()), err))?;
    let meta = file
        .metadata()
        .await
        .map_err(|err| DeliveryError::io(format_args!("stat {}", path.display()), err))?;
    if meta.is_dir() {
        return Err(DeliveryError::new(
            ErrorKind::Config,
            format!("{} is a directory, not a file", path.display()),
        ));
    }
    let mut file = file;
    if offset > 0 {
        if meta.len() < offset {
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!(
                    "{} is shorter ({} bytes) than the {offset} bytes already delivered",
                    path.display(),
                    meta.len()
                ),
            ));
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|err| {
                DeliveryError::io(format_args!("seek in {}", path.display()), err)
            })?;
    }
    let shown = path.display().to_string();
    let file = file.into_std().await;
    Ok(SourceStream {
        stream: read_on_a_thread(file, shown),
        len: meta.is_file().then_some(meta.len() - offset),
    })
}

/// Chunks read ahead of the consumer: one being read, two waiting.
const READ_AHEAD: usize = 2;

/// Reads `file` on a thread of its own for the whole stream, each read going straight into
/// the chunk handed on: no hand-off to the blocking pool per read and no copy between
/// buffers (tokio's `File` does both for every chunk). Not a thread of tokio's blocking
/// pool: it waits for the consumer for as long as the delivery lasts, and many such waits
/// must not use up the pool the consumers' own steps need. Reading stops when the stream is
/// dropped.
fn read_on_a_thread(file: std::fs::File, shown: String) -> super::ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    let spawned = std::thread::Builder::new().name("ferry-read".into()).spawn(move || {
        use std::io::Read as _;
        let mut file = file;
        loop {
            // Read into the vector's spare capacity, which is never zeroed first (zeroing
            // each chunk cost this thread about a fifth of its time: 60 ms per GiB).
            let mut chunk = Vec::with_capacity(CHUNK_SIZE);
            match (&mut file).take(CHUNK_SIZE as u64).read_to_end(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) => {
                    let err = DeliveryError::io(format_args!("read {shown}"), err).into_io();
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
            if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                return;
            }
        }
    });
    if let Err(err) = spawned {
        let err = DeliveryError::io("start a thread to read the file", err).into_io();
        return Box::pin(futures::stream::once(async move { Err(err) }));
    }
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

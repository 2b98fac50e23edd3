//! Transforms applied to the bytes between source and writers: gzip and zstd compression.

use async_compression::tokio::bufread::{GzipEncoder, ZstdEncoder};
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::CHUNK_SIZE;
use crate::source::ByteStream;

/// `transform = "gzip" | "zstd"`: how a job's data is compressed on its way to the writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// gzip (RFC 1952) at the default level.
    Gzip,
    /// Zstandard at the default level.
    Zstd,
}

impl Transform {
    /// The transform's name as written in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            Transform::Gzip => "gzip",
            Transform::Zstd => "zstd",
        }
    }

    /// Wraps `stream` so that its bytes come out compressed. Errors of the inner stream
    /// come through unchanged.
    pub fn apply(self, stream: ByteStream) -> ByteStream {
        let reader = StreamReader::new(stream);
        match self {
            Transform::Gzip => Box::pin(ReaderStream::with_capacity(
                GzipEncoder::new(reader),
                CHUNK_SIZE,
            )),
            Transform::Zstd => Box::pin(ReaderStream::with_capacity(
                ZstdEncoder::new(reader),
                CHUNK_SIZE,
            )),
        }
    }
}

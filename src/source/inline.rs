//! `type = "inline"`: text written in the job file itself.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::{DataSource, SourceSettings, SourceStream};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::DeliveryError;
use crate::settings::{KeyPath, Problems};

/// Settings of an `inline` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineConfig {
    /// The text to deliver, as is.
    pub data: String,
}

impl SourceSettings for InlineConfig {
    fn validate(&self, _at: &KeyPath, _problems: &mut Problems) {}

    fn build(&self, _env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError> {
        Ok(Arc::new(InlineSource::new(self.data.clone())))
    }
}

/// A source of fixed bytes.
#[derive(Debug, Clone)]
pub struct InlineSource {
    data: Bytes,
}

impl InlineSource {
    /// A source that delivers `data`.
    pub fn new(data: impl Into<Bytes>) -> InlineSource {
        InlineSource { data: data.into() }
    }
}

#[async_trait]
impl DataSource for InlineSource {
    fn describe(&self) -> String {
        format!("inline ({} bytes)", self.data.len())
    }

    async fn open(&self, _ctx: &RunContext) -> Result<SourceStream, DeliveryError> {
        Ok(self.stream_from(0))
    }

    async fn open_at(
        &self,
        _ctx: &RunContext,
        offset: u64,
    ) -> Result<Option<SourceStream>, DeliveryError> {
        Ok(Some(self.stream_from(offset)))
    }
}

impl InlineSource {
    fn stream_from(&self, offset: u64) -> SourceStream {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let data = self.data.slice(start..);
        let len = data.len() as u64;
        let chunks = if data.is_empty() {
            vec![]
        } else {
            vec![Ok(data)]
        };
        SourceStream {
            stream: Box::pin(futures::stream::iter(chunks)),
            len: Some(len),
        }
    }
}

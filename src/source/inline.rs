//! `type = "inline"`: text written in the job file itself.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::{DataSource, SourceSettings, SourceStream};
use crate::RunContext;
use crate::config::{KeyPath, Problems};
use crate::error::DeliveryError;
use crate::job::BuildEnv;

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
        let data = self.data.clone();
        let len = data.len() as u64;
        let chunks = if data.is_empty() {
            vec![]
        } else {
            vec![Ok(data)]
        };
        Ok(SourceStream {
            stream: Box::pin(futures::stream::iter(chunks)),
            len: Some(len),
        })
    }
}

//! Page ends a paged source records, to resume after the last page its writers hold (seed
//! 002's resumable full refresh, by page).
//!
//! A paged source (`api`, `sql` with `resume_key`) hands each page on as one chunk, so the
//! writers' checkpoints fall on page ends. Before a page goes to the writers the source
//! records where it ends: the bytes given up to then and where the next page starts (a
//! URL, a last key). When an attempt resumes from the bytes the writers hold, the source
//! looks up the page end at exactly that offset and continues from there; at any other
//! offset it starts over. Kept in the run's source checkpoint (with a state store only).

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::RunContext;
use crate::state::Checkpoint;

/// How many page ends are kept: a writer's own checkpoint may lie a few pages behind the
/// source's.
const KEPT: usize = 64;

/// A page end: the bytes given up to it, and where the next page starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PageEnd<T> {
    pub(crate) bytes: u64,
    pub(crate) next: T,
}

/// The run's recent page ends, oldest first.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
pub(crate) struct PageLog<T> {
    ends: VecDeque<PageEnd<T>>,
}

impl<T> Default for PageLog<T> {
    fn default() -> Self {
        PageLog {
            ends: VecDeque::new(),
        }
    }
}

impl<T: Clone + Serialize + DeserializeOwned> PageLog<T> {
    /// The run's page ends so far; none without a state store or a checkpoint.
    pub(crate) async fn load(ctx: &RunContext) -> PageLog<T> {
        let Some(ledger) = &ctx.ledger else {
            return PageLog::default();
        };
        ledger
            .source_checkpoint(&ctx.run_id)
            .await
            .and_then(|checkpoint| serde_json::from_value(checkpoint.document).ok())
            .unwrap_or_default()
    }

    /// The page end at exactly `bytes`.
    pub(crate) fn at(&self, bytes: u64) -> Option<&PageEnd<T>> {
        self.ends.iter().find(|end| end.bytes == bytes)
    }

    /// The latest page end.
    pub(crate) fn last(&self) -> Option<&PageEnd<T>> {
        self.ends.back()
    }

    /// Records `end` (with a state store; without one there is nothing to resume from).
    pub(crate) async fn record(&mut self, ctx: &RunContext, end: PageEnd<T>) {
        let Some(ledger) = &ctx.ledger else {
            return;
        };
        if self.ends.len() >= KEPT {
            self.ends.pop_front();
        }
        let bytes = end.bytes;
        self.ends.push_back(end);
        if let Ok(document) = serde_json::to_value(&*self) {
            let checkpoint = Checkpoint {
                document,
                bytes_done: bytes,
            };
            ledger
                .save_source_checkpoint(&ctx.run_id, &ctx.tenure, &checkpoint)
                .await;
        }
    }
}

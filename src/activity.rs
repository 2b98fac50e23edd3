//! [`DeliveryActivity`]: one attempt at moving a source's bytes to every writer.
//!
//! The source is opened once per attempt and read in chunks; each chunk (a cheap,
//! reference-counted `Bytes`) is handed to every writer through a small bounded channel, so
//! the slowest writer sets the pace and memory stays at a few chunks per writer whatever
//! the payload's size. Writers run as their own tasks (they hash and write in parallel) and
//! are aborted if the attempt is cancelled. A writer that delivered in an earlier attempt
//! of the same run is not written again ([`Progress`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::source::{ByteStream, DataSource};
use crate::transform::Transform;
use crate::writer::{Delivery, Frame, Payload, Writer};

/// How many chunks may wait for each writer: bounds memory at this × chunk size × writers.
const FRAMES_IN_FLIGHT: usize = 4;

/// What earlier attempts of a run achieved, carried from attempt to attempt.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Receipts of writers that already delivered, by writer index.
    pub delivered: BTreeMap<usize, Delivery>,
}

/// A unit of work that can be attempted more than once for one run.
#[async_trait]
pub trait Activity: Send + Sync {
    /// One attempt. `progress` keeps what earlier attempts achieved.
    async fn start(
        &self,
        ctx: &RunContext,
        progress: &mut Progress,
    ) -> Result<Vec<Delivery>, DeliveryError>;
}

#[async_trait]
impl<A: Activity + ?Sized> Activity for Arc<A> {
    async fn start(
        &self,
        ctx: &RunContext,
        progress: &mut Progress,
    ) -> Result<Vec<Delivery>, DeliveryError> {
        (**self).start(ctx, progress).await
    }
}

/// One source, an optional transform, and one or more writers.
#[derive(Debug, Clone)]
pub struct DeliveryActivity {
    source: Arc<dyn DataSource>,
    transform: Option<Transform>,
    writers: Vec<Arc<dyn Writer>>,
}

impl DeliveryActivity {
    /// An activity copying `source` to each of `writers`.
    pub fn new(source: Arc<dyn DataSource>, writers: Vec<Arc<dyn Writer>>) -> DeliveryActivity {
        DeliveryActivity {
            source,
            transform: None,
            writers,
        }
    }

    /// Compresses the data on its way to the writers.
    pub fn with_transform(mut self, transform: Option<Transform>) -> DeliveryActivity {
        self.transform = transform;
        self
    }

    /// The source.
    pub fn source(&self) -> &Arc<dyn DataSource> {
        &self.source
    }

    /// The writers.
    pub fn writers(&self) -> &[Arc<dyn Writer>] {
        &self.writers
    }
}

#[async_trait]
impl Activity for DeliveryActivity {
    async fn start(
        &self,
        ctx: &RunContext,
        progress: &mut Progress,
    ) -> Result<Vec<Delivery>, DeliveryError> {
        let pending: Vec<usize> = (0..self.writers.len())
            .filter(|i| !progress.delivered.contains_key(i))
            .collect();
        if !pending.is_empty() {
            self.deliver(ctx, &pending, progress).await?;
        }
        Ok(progress.delivered.values().cloned().collect())
    }
}

impl DeliveryActivity {
    async fn deliver(
        &self,
        ctx: &RunContext,
        pending: &[usize],
        progress: &mut Progress,
    ) -> Result<(), DeliveryError> {
        let source = self.source.describe();
        let opened = self
            .source
            .open(ctx)
            .await
            .map_err(|err| err.context(format_args!("source {source}")))?;
        let (stream, len) = match self.transform {
            Some(transform) => (transform.apply(opened.stream), None),
            None => (opened.stream, opened.len),
        };

        let mut senders = Vec::with_capacity(pending.len());
        let mut tasks = Vec::with_capacity(pending.len());
        for &index in pending {
            let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
            senders.push(tx);
            let writer = Arc::clone(&self.writers[index]);
            let ctx = ctx.clone();
            let task = tokio::spawn(async move { writer.write(&ctx, Payload::new(rx, len)).await });
            tasks.push((index, AbortOnDropHandle::new(task)));
        }

        let pumped = pump(stream, senders, len).await;
        let mut failures = Vec::new();
        for (index, task) in tasks {
            let writer = self.writers[index].describe();
            let result = match task.await {
                Ok(result) => result,
                Err(join) => Err(DeliveryError::new(
                    ErrorKind::Io,
                    format!("the writer task failed: {join}"),
                )),
            };
            match (result, &pumped) {
                (Ok(delivery), Ok(total)) if delivery.bytes != *total => {
                    failures.push(DeliveryError::new(
                        ErrorKind::Integrity,
                        format!(
                            "writer {writer} reported {} bytes of {total}",
                            delivery.bytes
                        ),
                    ));
                }
                (Ok(delivery), _) => {
                    progress.delivered.insert(index, delivery);
                }
                (Err(err), _) => failures.push(err.context(format_args!("writer {writer}"))),
            }
        }
        // A source failure is the cause of every writer's failure: report it.
        pumped.map_err(|err| err.context(format_args!("source {source}")))?;
        let mut failures = failures.into_iter();
        match failures.next() {
            None => Ok(()),
            Some(first) => {
                for other in failures {
                    tracing::warn!(job = %ctx.job, run_id = %ctx.run_id, error = %crate::error::display_chain(&other.chain()), "Another writer failed too.");
                }
                Err(first)
            }
        }
    }
}

/// Reads `stream` and hands each chunk to every writer still listening. Returns the number
/// of bytes read, or the source's error (which every writer is also told).
async fn pump(
    mut stream: ByteStream,
    mut senders: Vec<mpsc::Sender<Frame>>,
    len: Option<u64>,
) -> Result<u64, DeliveryError> {
    let mut total = 0u64;
    let failure = loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                total += chunk.len() as u64;
                let mut live = Vec::with_capacity(senders.len());
                for tx in senders {
                    // A closed channel means the writer gave up; its task reports why.
                    if tx.send(Frame::Data(chunk.clone())).await.is_ok() {
                        live.push(tx);
                    }
                }
                senders = live;
                if senders.is_empty() {
                    return Ok(total);
                }
            }
            Some(Err(err)) => break DeliveryError::io("read", err),
            None => match len {
                Some(expected) if expected != total => {
                    break DeliveryError::new(
                        ErrorKind::Integrity,
                        format!("ended after {total} of its announced {expected} bytes"),
                    );
                }
                _ => {
                    for tx in &senders {
                        let _ = tx.send(Frame::End).await;
                    }
                    return Ok(total);
                }
            },
        }
    };
    for tx in &senders {
        let _ = tx.send(Frame::Failed(failure.summary())).await;
    }
    Err(failure)
}

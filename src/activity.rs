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
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::context::RunContext;
use crate::encryption::Encryption;
use crate::error::{DeliveryError, ErrorKind};
use crate::gate::Gate;
use crate::source::{ByteStream, DataSource};
use crate::state::Checkpoint;
use crate::transform::Transform;
use crate::writer::{Checkpoints, Delivery, Frame, Payload, Writer};

/// How many chunks may wait for each writer: bounds memory at this × chunk size × writers.
const FRAMES_IN_FLIGHT: usize = 4;

/// What earlier attempts of a run achieved, carried from attempt to attempt.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Receipts of writers that already delivered, by writer index.
    pub delivered: BTreeMap<usize, Delivery>,
    /// The furthest an attempt resumed into the payload from checkpoints, in bytes.
    pub resumed_from: u64,
    /// Receipts of the files a `files` source's earlier attempts delivered whole (a retry
    /// lists only the files still to deliver).
    pub files_delivered: Vec<Delivery>,
    /// Receipts of the writers that have a file an earlier attempt did not deliver to
    /// every writer, by file: a retry sends it only to the others.
    pub files_partly: BTreeMap<std::path::PathBuf, BTreeMap<usize, Delivery>>,
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

    /// Before each attempt, outside its timeout: wait for what the run needs (a required
    /// source's readiness) and claim what it produces (its partition).
    async fn prepare(&self, _ctx: &RunContext) -> Result<(), DeliveryError> {
        Ok(())
    }

    /// The run failed for good: remove what its attempts kept for a resume.
    async fn discard(&self, _ctx: &RunContext) {}

    /// The run failed for good with `error` (after [`Activity::discard`]).
    async fn failed(&self, _ctx: &RunContext, _error: &DeliveryError) {}
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

    async fn prepare(&self, ctx: &RunContext) -> Result<(), DeliveryError> {
        (**self).prepare(ctx).await
    }

    async fn discard(&self, ctx: &RunContext) {
        (**self).discard(ctx).await;
    }

    async fn failed(&self, ctx: &RunContext, error: &DeliveryError) {
        (**self).failed(ctx, error).await;
    }
}

/// One source, an optional transform, and one or more writers.
#[derive(Debug, Clone)]
pub struct DeliveryActivity {
    source: Arc<dyn DataSource>,
    transform: Option<Transform>,
    encryption: Option<Arc<Encryption>>,
    rate_limit: Option<u64>,
    writers: Vec<Arc<dyn Writer>>,
    /// For each writer, where its checksum file goes (`checksum_file = true`).
    checksum_files: Vec<Option<Arc<dyn Writer>>>,
    gate: Option<Arc<Gate>>,
}

impl DeliveryActivity {
    /// An activity copying `source` to each of `writers`.
    pub fn new(source: Arc<dyn DataSource>, writers: Vec<Arc<dyn Writer>>) -> DeliveryActivity {
        DeliveryActivity {
            source,
            transform: None,
            encryption: None,
            rate_limit: None,
            writers,
            checksum_files: Vec::new(),
            gate: None,
        }
    }

    /// Writes a checksum file (`NAME.sha256`) after each delivery of the writers that have
    /// one here, by the writer's index.
    pub fn with_checksum_files(mut self, files: Vec<Option<Arc<dyn Writer>>>) -> DeliveryActivity {
        self.checksum_files = files;
        self
    }

    /// Locks the run's partition and waits for what it requires ([`Gate`]).
    pub fn with_gate(mut self, gate: Option<Gate>) -> DeliveryActivity {
        self.gate = gate.map(Arc::new);
        self
    }

    /// Limits how fast the source is read, in bytes per second.
    pub fn with_rate_limit(mut self, bytes_per_second: Option<u64>) -> DeliveryActivity {
        self.rate_limit = bytes_per_second.filter(|rate| *rate > 0);
        self
    }

    /// Encrypts the data on its way to the writers (after the transform).
    pub fn with_encryption(mut self, encryption: Option<Arc<Encryption>>) -> DeliveryActivity {
        self.encryption = encryption;
        self
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
        let source = self.source.describe();
        let deliveries = match self
            .source
            .files(ctx)
            .await
            .map_err(|err| err.context(format_args!("source {source}")))?
        {
            None => {
                let pending: Vec<usize> = (0..self.writers.len())
                    .filter(|i| !progress.delivered.contains_key(i))
                    .collect();
                if !pending.is_empty() {
                    self.deliver(ctx, &pending, progress).await?;
                }
                self.source
                    .delivered(ctx)
                    .await
                    .map_err(|err| err.context(format_args!("source {source}")))?;
                progress.delivered.values().cloned().collect()
            }
            Some(files) => self.deliver_files(ctx, files, progress).await?,
        };
        if let Some(gate) = &self.gate {
            if let Some(marker) = gate.marker() {
                // Only now, every writer having delivered: the marker says "complete".
                let content = gate.marker_content(ctx, &deliveries)?;
                let source = Arc::new(crate::source::InlineSource::new(content));
                let writing = DeliveryActivity::new(source, marker.writers.clone());
                // Its own small delivery, kept apart from the run's checkpoints.
                let alone = RunContext {
                    ledger: None,
                    ..ctx.clone()
                };
                writing.start(&alone, &mut Progress::default()).await?;
            }
            gate.delivered(ctx).await?;
        }
        Ok(deliveries)
    }

    async fn prepare(&self, ctx: &RunContext) -> Result<(), DeliveryError> {
        match &self.gate {
            Some(gate) => gate.before(ctx).await,
            None => Ok(()),
        }
    }

    async fn failed(&self, ctx: &RunContext, error: &DeliveryError) {
        if let Some(gate) = &self.gate {
            gate.failed(ctx, error).await;
        }
    }

    async fn discard(&self, ctx: &RunContext) {
        for (index, writer) in self.writers.iter().enumerate() {
            let checkpoint = match &ctx.ledger {
                Some(ledger) => ledger.checkpoint(&ctx.run_id, index).await,
                None => None,
            };
            writer.discard(ctx, checkpoint.as_ref()).await;
        }
    }
}

impl DeliveryActivity {
    /// Delivers each of `files` through every writer, one file after another, each with its
    /// receipts; a file is done (the source told, so a retry does not list it again) once
    /// every writer has it.
    async fn deliver_files(
        &self,
        ctx: &RunContext,
        files: Vec<crate::context::SourceFile>,
        progress: &mut Progress,
    ) -> Result<Vec<Delivery>, DeliveryError> {
        if files.is_empty() {
            tracing::info!(source = %self.source.describe(), "No new files: nothing to deliver.");
        }
        for file in files {
            let shown = file.path.display().to_string();
            let path = file.path.clone();
            let one = RunContext {
                file: Some(file),
                ..ctx.clone()
            };
            let mut done = Progress {
                delivered: progress.files_partly.remove(&path).unwrap_or_default(),
                ..Progress::default()
            };
            let pending: Vec<usize> = (0..self.writers.len())
                .filter(|index| !done.delivered.contains_key(index))
                .collect();
            // Writers that have the file keep it across attempts, also when only the
            // source's note of it failed.
            let mut result = Ok(());
            if !pending.is_empty() {
                result = self.deliver(&one, &pending, &mut done).await;
            }
            if result.is_ok() {
                result = self.source.delivered(&one).await;
            }
            if let Err(err) = result {
                if !done.delivered.is_empty() {
                    progress.files_partly.insert(path, done.delivered);
                }
                return Err(err.context(format_args!("file {shown}")));
            }
            progress.resumed_from = progress.resumed_from.max(done.resumed_from);
            progress
                .files_delivered
                .extend(done.delivered.into_values());
        }
        Ok(progress.files_delivered.clone())
    }

    async fn deliver(
        &self,
        ctx: &RunContext,
        pending: &[usize],
        progress: &mut Progress,
    ) -> Result<(), DeliveryError> {
        // Sessions to destinations with a limit, all of them before the source is opened
        // (a program started, a download begun) and any writer starts.
        let limited: Vec<_> = pending
            .iter()
            .filter_map(|&index| self.writers[index].connection_limit())
            .collect();
        let _sessions = crate::writer::limits::take(&limited).await?;
        let source = self.source.describe();
        let in_source = |err: DeliveryError| err.context(format_args!("source {source}"));
        let (resume_at, mut saved) = self.resume_point(ctx, pending).await?;
        let resumed = match resume_at {
            0 => None,
            offset => self.source.open_at(ctx, offset).await.map_err(in_source)?,
        };
        let (opened, offset) = match resumed {
            Some(opened) => {
                tracing::info!(offset = resume_at, "Resuming from a checkpoint.");
                progress.resumed_from = progress.resumed_from.max(resume_at);
                (opened, resume_at)
            }
            None => (self.source.open(ctx).await.map_err(in_source)?, 0),
        };
        let (stream, len) = match self.transform {
            Some(transform) => (transform.apply(opened.stream), None),
            None => (opened.stream, opened.len),
        };
        let (stream, len) = match &self.encryption {
            Some(encryption) => (encryption.apply(stream), None),
            None => (stream, len),
        };
        let stream = match self.rate_limit {
            Some(rate) => throttle(stream, rate),
            None => stream,
        };

        let live = ctx
            .ledger
            .as_ref()
            .and_then(|ledger| ledger.metrics.live_run(&ctx.run_id));
        if let Some(live) = &live {
            live.set_total(len.map(|len| len + offset));
        }
        let mut senders = Vec::with_capacity(pending.len());
        let mut tasks = Vec::with_capacity(pending.len());
        for &index in pending {
            let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
            senders.push(tx);
            let writer = Arc::clone(&self.writers[index]);
            let ctx = ctx.clone();
            let checkpoints = ctx.ledger.clone().map(|ledger| Checkpoints {
                ledger,
                run_id: ctx.run_id.clone(),
                writer: index,
                tenure: ctx.tenure.clone(),
            });
            let total = len.map(|len| len + offset);
            let shown = live
                .as_ref()
                .map(|live| live.writer(index, writer.describe()));
            let payload = Payload::new(rx, total, offset, checkpoints)
                .with_checkpoint(saved.remove(&index))
                .showing(shown);
            let task = tokio::spawn(async move { writer.write(&ctx, payload).await });
            tasks.push((index, AbortOnDropHandle::new(task)));
        }

        // A stream from byte 0 is hashed here, once for every writer; a resumed one by
        // each writer, which holds the prefix (or its hash state).
        let pumped = pump(stream, senders, len, offset == 0).await;
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
                (Ok(delivery), Ok(streamed)) if delivery.bytes != offset + streamed => {
                    failures.push(DeliveryError::new(
                        ErrorKind::Integrity,
                        format!(
                            "writer {writer} reported {} bytes of {}",
                            delivery.bytes,
                            offset + streamed
                        ),
                    ));
                }
                (Ok(delivery), _) => match self.write_checksum_file(ctx, index, &delivery).await {
                    Ok(()) => {
                        let writer = self.writers[index].kind().to_owned();
                        progress
                            .delivered
                            .insert(index, Delivery { writer, ..delivery });
                    }
                    Err(err) => failures.push(err.context(format_args!("writer {writer}"))),
                },
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

impl DeliveryActivity {
    /// Writes writer `index`'s checksum file for `delivery`, if it has one: after the
    /// delivery, so that a consumer finding the checksum finds the file it describes.
    async fn write_checksum_file(
        &self,
        ctx: &RunContext,
        index: usize,
        delivery: &Delivery,
    ) -> Result<(), DeliveryError> {
        let Some(Some(sidecar)) = self.checksum_files.get(index) else {
            return Ok(());
        };
        let line = crate::writer::checksum_line(delivery);
        let payload = Payload::from_chunks(vec![bytes::Bytes::from(line)]);
        sidecar
            .write(ctx, payload)
            .await
            .map(drop)
            .map_err(|err| err.context(format_args!("checksum file {}", sidecar.describe())))
    }

    /// Where this attempt can start: the fewest bytes a pending writer still holds from an
    /// earlier attempt (per its checkpoint), if every writer holding more can go back to it
    /// (a local file can; an upload keeping its hash state at its last part cannot), else 0;
    /// with the checkpoints read. Compressed or encrypted payloads always start over (neither can
    /// start mid-stream).
    async fn resume_point(
        &self,
        ctx: &RunContext,
        pending: &[usize],
    ) -> Result<(u64, BTreeMap<usize, Checkpoint>), DeliveryError> {
        let mut saved = BTreeMap::new();
        let Some(ledger) = &ctx.ledger else {
            return Ok((0, saved));
        };
        let mut held = Vec::with_capacity(pending.len());
        for &index in pending {
            let Some(checkpoint) = ledger.checkpoint(&ctx.run_id, index).await else {
                held.push(0);
                continue;
            };
            let writer = &self.writers[index];
            let point = writer
                .resume_point(ctx, &checkpoint)
                .await
                .map_err(|err| err.context(format_args!("writer {}", writer.describe())))?;
            held.push(point);
            saved.insert(index, checkpoint);
        }
        let least = held.iter().copied().min().unwrap_or(0);
        let all_can_start_there = pending
            .iter()
            .zip(&held)
            .all(|(&index, &point)| point == least || self.writers[index].can_rewind());
        let point = if all_can_start_there {
            least
        } else {
            tracing::info!(
                ?held,
                "Writers hold different amounts and cannot all go back; starting over."
            );
            0
        };
        // Writers still get their checkpoints, to clean up what starting over leaves.
        let reshaped = self.transform.is_some() || self.encryption.is_some();
        let point = if reshaped { 0 } else { point };
        Ok((point, saved))
    }
}

/// Paces `stream` to at most `bytes_per_second`.
fn throttle(stream: ByteStream, bytes_per_second: u64) -> ByteStream {
    let started = tokio::time::Instant::now();
    let paced = futures::stream::unfold((stream, 0u64), move |(mut stream, sent)| async move {
        let item = stream.next().await?;
        let sent = sent + item.as_ref().map_or(0, |chunk| chunk.len() as u64);
        let due = started + Duration::from_secs_f64(sent as f64 / bytes_per_second as f64);
        tokio::time::sleep_until(due).await;
        Some((item, (stream, sent)))
    });
    Box::pin(paced)
}

/// Reads `stream` and hands each chunk to every writer still listening, with the sha256
/// state after it when `hash` is set (each byte hashed once, here, for all writers, while
/// they write the chunk before). Returns the number of bytes read, or the source's error
/// (which every writer is also told).
async fn pump(
    mut stream: ByteStream,
    mut senders: Vec<mpsc::Sender<Frame>>,
    len: Option<u64>,
    hash: bool,
) -> Result<u64, DeliveryError> {
    let mut hasher = hash.then(<sha2::Sha256 as sha2::Digest>::new);
    let mut total = 0u64;
    let failure = loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                total += chunk.len() as u64;
                let after = hasher.as_mut().map(|hasher| {
                    sha2::Digest::update(hasher, &chunk);
                    Arc::new(hasher.clone())
                });
                let mut live = Vec::with_capacity(senders.len());
                for tx in senders {
                    // A closed channel means the writer gave up; its task reports why.
                    if tx
                        .send(Frame::Data(chunk.clone(), after.clone()))
                        .await
                        .is_ok()
                    {
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

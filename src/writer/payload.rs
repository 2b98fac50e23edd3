//! The bytes a writer consumes ([`Payload`]) and the accounting of what it consumed: the
//! count and sha256 of every byte read ([`Digest`]), the hash state a resumable writer keeps
//! in its checkpoints ([`HashState`]), and the checkpoints themselves.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use sha2::digest::common::hazmat::SerializableState as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::error::{DeliveryError, ErrorKind};
use crate::report::Delivery;
use crate::state::{Checkpoint, Ledger};

/// One message from the activity to a writer.
#[derive(Debug)]
pub(crate) enum Frame {
    /// The next chunk.
    Data(Bytes),
    /// The source failed; the writer must give up.
    Failed(DeliveryError),
    /// The source ended; every chunk has been sent.
    End,
}

/// The bytes a writer consumes: a stream of chunks that counts and hashes what is read.
///
/// The stream ends cleanly only when the source did; if the source failed or the sending
/// side went away early, the last item is an error, so a writer that stops at the first
/// error can never commit a truncated payload.
pub struct Payload {
    frames: mpsc::Receiver<Frame>,
    /// The rest of a chunk split by [`Payload::next_up_to`].
    pending: Option<Bytes>,
    len: Option<u64>,
    bytes: u64,
    hasher: Sha256,
    finished: bool,
    offset: u64,
    absorbed: u64,
    checkpoints: Option<Checkpoints>,
    resumed: Option<Checkpoint>,
}

/// Where a writer's checkpoints go: its run and its place among the job's writers.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoints {
    pub(crate) ledger: Ledger,
    pub(crate) run_id: String,
    pub(crate) writer: usize,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.len)
            .field("bytes", &self.bytes)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// What a writer consumed: its size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Bytes consumed.
    pub bytes: u64,
    /// sha256 in lower-case hex.
    pub sha256: String,
}

impl Digest {
    /// The receipt for these bytes delivered to `location` (the activity fills in the
    /// writer's kind).
    pub fn receipt(self, location: String, link: Option<String>) -> Delivery {
        Delivery {
            writer: String::new(),
            location,
            link,
            bytes: self.bytes,
            sha256: self.sha256,
        }
    }
}

impl Payload {
    pub(crate) fn new(
        frames: mpsc::Receiver<Frame>,
        len: Option<u64>,
        offset: u64,
        checkpoints: Option<Checkpoints>,
    ) -> Payload {
        Payload {
            frames,
            pending: None,
            len,
            bytes: 0,
            hasher: Sha256::new(),
            finished: false,
            offset,
            absorbed: 0,
            checkpoints,
            resumed: None,
        }
    }

    /// The checkpoint the writer saved in an earlier attempt of this run, if any: what it
    /// resumes from when [`Payload::offset`] is above zero, and what it must clean up (an
    /// old upload, say) when the run starts over.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.resumed.as_ref()
    }

    pub(crate) fn with_checkpoint(mut self, checkpoint: Option<Checkpoint>) -> Payload {
        self.resumed = checkpoint;
        self
    }

    /// Where in the payload this stream starts: above zero when the run resumes and the
    /// writer already holds the first `offset` bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds bytes the writer already holds (the first [`Payload::offset`] bytes, in order)
    /// into the payload's count and sha256.
    pub fn absorb_prefix(&mut self, prefix: &[u8]) {
        self.absorbed += prefix.len() as u64;
        self.bytes += prefix.len() as u64;
        self.hasher.update(prefix);
    }

    /// The hash of everything consumed so far (prefix included), to keep in a checkpoint and
    /// hand back to [`Payload::resume_hash`] when the run resumes at this point.
    pub fn hash_state(&self) -> HashState {
        HashState {
            bytes: self.bytes,
            state: hex::encode(self.hasher.serialize()),
        }
    }

    /// Resumes the hash at [`Payload::offset`] from a state saved by an earlier attempt,
    /// instead of feeding the prefix to [`Payload::absorb_prefix`].
    pub fn resume_hash(&mut self, saved: &HashState) -> Result<(), DeliveryError> {
        let broken = || {
            DeliveryError::new(
                ErrorKind::Integrity,
                "the checkpoint's hash state is unusable",
            )
        };
        if saved.bytes != self.offset || self.bytes != 0 {
            return Err(broken());
        }
        let raw = hex::decode(&saved.state).map_err(|_| broken())?;
        let state =
            sha2::digest::common::hazmat::SerializedState::<Sha256>::try_from(raw.as_slice())
                .map_err(|_| broken())?;
        self.hasher = Sha256::deserialize(&state).map_err(|_| broken())?;
        self.bytes = saved.bytes;
        self.absorbed = saved.bytes;
        Ok(())
    }

    /// The next chunk, at most `max` bytes long (a longer one is split and its rest comes
    /// next): lets a writer cut the payload at exact boundaries, with the hash in step.
    pub async fn next_up_to(&mut self, max: usize) -> Option<io::Result<Bytes>> {
        let chunk = match self.pending.take() {
            Some(chunk) => chunk,
            None => match std::future::poll_fn(|cx| self.poll_frame(cx)).await? {
                Ok(chunk) => chunk,
                Err(err) => return Some(Err(err)),
            },
        };
        let mut chunk = chunk;
        if chunk.len() > max.max(1) {
            self.pending = Some(chunk.split_off(max.max(1)));
        }
        self.bytes += chunk.len() as u64;
        self.hasher.update(&chunk);
        Some(Ok(chunk))
    }

    /// Whether checkpoints are kept for this run (a state store is configured).
    pub fn checkpointing(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// Saves the writer's progress: `document` says where it got to, `bytes_done` how much
    /// of the payload it made durable. Failing to save is logged, not fatal (a later resume
    /// just starts further back).
    pub async fn save_checkpoint(&self, document: serde_json::Value, bytes_done: u64) {
        let Some(target) = &self.checkpoints else {
            return;
        };
        let checkpoint = Checkpoint {
            document,
            bytes_done,
        };
        if let Err(err) = target
            .ledger
            .store
            .save_checkpoint(&target.run_id, target.writer, &checkpoint)
            .await
        {
            tracing::warn!(error = %err, "Cannot save a checkpoint.");
        }
    }

    /// A payload of the given chunks, for tests and for library users driving a writer
    /// directly.
    pub fn from_chunks(chunks: Vec<Bytes>) -> Payload {
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        for chunk in chunks {
            // The channel has room for every frame.
            let _ = tx.try_send(Frame::Data(chunk));
        }
        let _ = tx.try_send(Frame::End);
        Payload::new(rx, Some(len), 0, None)
    }

    /// The payload's total length (a resumed prefix included), when known in advance (no
    /// transform, a source that knows).
    pub fn len_hint(&self) -> Option<u64> {
        self.len
    }

    /// The size and sha256 of everything consumed. An error if the stream was not read to
    /// its clean end.
    pub fn finish(self) -> Result<Digest, DeliveryError> {
        if !self.finished {
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!(
                    "the writer stopped after {} bytes, before the end of the data",
                    self.bytes
                ),
            ));
        }
        if self.absorbed != self.offset {
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!(
                    "the writer resumed at byte {} but accounted for {} bytes before it",
                    self.offset, self.absorbed
                ),
            ));
        }
        Ok(Digest {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

impl Payload {
    /// The next chunk from the activity, not yet counted or hashed.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Frame::Data(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Frame::End)) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Frame::Failed(err))) => Poll::Ready(Some(Err(err.into_io()))),
            Poll::Ready(None) => Poll::Ready(Some(Err(DeliveryError::new(
                ErrorKind::Integrity,
                "the data stopped before its end",
            )
            .into_io()))),
        }
    }
}

impl Stream for Payload {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let chunk = match self.pending.take() {
            Some(chunk) => chunk,
            None => match self.poll_frame(cx) {
                Poll::Ready(Some(Ok(chunk))) => chunk,
                other => return other,
            },
        };
        self.bytes += chunk.len() as u64;
        self.hasher.update(&chunk);
        Poll::Ready(Some(Ok(chunk)))
    }
}

/// A payload's hash part-way, as kept in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HashState {
    /// Bytes hashed.
    pub bytes: u64,
    /// The sha256 state, serialized, in hex.
    pub state: String,
}

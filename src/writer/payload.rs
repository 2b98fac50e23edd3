//! The bytes a writer consumes ([`Payload`]) and the accounting of what it consumed: the
//! count and sha256 of every byte read ([`Digest`]), the hash state a resumable writer keeps
//! in its checkpoints ([`HashState`]), and the checkpoints themselves.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use sha2::digest::common::hazmat::SerializableState as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::error::{DeliveryError, ErrorKind};
use crate::report::Delivery;
use crate::state::{Checkpoint, Ledger, StateError, Tenure};

/// One message from the activity to a writer.
#[derive(Debug)]
pub(crate) enum Frame {
    /// The next chunk, with the payload's sha256 state after it when the activity hashes
    /// once for every writer (see [`Payload`]).
    Data(Bytes, Option<Arc<Sha256>>),
    /// The source failed; the writer must give up.
    Failed(DeliveryError),
    /// The source ended; every chunk has been sent.
    End,
}

/// The bytes a writer consumes: a stream of chunks that counts and hashes what is read.
///
/// Each byte is hashed once per run: the activity hashes every chunk as it hands it to the
/// writers and sends its sha256 state along, and a payload takes that state when its writer
/// has read the whole chunk (a writer cutting a chunk in parts, asking for the hash in the
/// middle, gets the state before the chunk plus the part it read). A resumed stream (one
/// not starting at byte 0) hashes what its writer reads itself, from the prefix or saved
/// state the writer supplies.
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
    /// The sha256 of every byte counted, except those of `part`.
    hasher: Sha256,
    /// A chunk hashed by the activity that the writer has read part of.
    part: Option<Part>,
    finished: bool,
    offset: u64,
    absorbed: u64,
    checkpoints: Option<Checkpoints>,
    resumed: Option<Checkpoint>,
    /// Where the bytes taken so far are shown while the run goes (status page, progress).
    shown: Option<Arc<AtomicU64>>,
}

/// A chunk the writer is reading in parts: the chunk, how much of it was read, and the
/// activity's hash state after all of it.
struct Part {
    whole: Bytes,
    taken: usize,
    after: Arc<Sha256>,
}

/// Where a writer's checkpoints go: its run and its place among the job's writers.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoints {
    pub(crate) ledger: Ledger,
    pub(crate) run_id: String,
    pub(crate) writer: usize,
    /// The run's hold: every save names its epoch, and a refused save gives the run up.
    pub(crate) tenure: Tenure,
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
            part: None,
            finished: false,
            offset,
            absorbed: 0,
            checkpoints,
            resumed: None,
            shown: None,
        }
    }

    /// The same payload, keeping `shown` at the count of bytes taken.
    pub(crate) fn showing(mut self, shown: Option<Arc<AtomicU64>>) -> Payload {
        self.shown = shown;
        self
    }

    fn show(&self) {
        if let Some(shown) = &self.shown {
            shown.store(self.bytes, Ordering::Relaxed);
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
        self.show();
    }

    /// The hash of everything consumed so far (prefix included), to keep in a checkpoint and
    /// hand back to [`Payload::resume_hash`] when the run resumes at this point.
    pub fn hash_state(&self) -> HashState {
        HashState {
            bytes: self.bytes,
            state: hex::encode(self.hasher_now().serialize()),
        }
    }

    /// The sha256 state after every byte read.
    fn hasher_now(&self) -> Sha256 {
        let mut hasher = self.hasher.clone();
        if let Some(part) = &self.part {
            hasher.update(&part.whole[..part.taken]);
        }
        hasher
    }

    /// Counts `piece`, the next bytes the writer reads, into the size and hash; `chunk` is
    /// set when `piece` begins a chunk from the activity: the chunk and, if the activity
    /// hashed it, its hash state after it.
    fn account(&mut self, piece: &[u8], chunk: Option<(&Bytes, Option<Arc<Sha256>>)>) {
        self.bytes += piece.len() as u64;
        self.show();
        if let Some((whole, Some(after))) = chunk {
            self.part = Some(Part {
                whole: whole.clone(),
                taken: 0,
                after,
            });
        }
        match &mut self.part {
            Some(part) => {
                part.taken += piece.len();
                if part.taken >= part.whole.len() {
                    self.hasher = Sha256::clone(&part.after);
                    self.part = None;
                }
            }
            None => self.hasher.update(piece),
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
        let (mut piece, fresh) = match self.pending.take() {
            Some(rest) => (rest, None),
            None => match std::future::poll_fn(|cx| self.poll_frame(cx)).await? {
                Ok((chunk, after)) => (chunk.clone(), Some((chunk, after))),
                Err(err) => return Some(Err(err)),
            },
        };
        if piece.len() > max.max(1) {
            self.pending = Some(piece.split_off(max.max(1)));
        }
        self.account(
            &piece,
            fresh.as_ref().map(|(chunk, after)| (chunk, after.clone())),
        );
        Some(Ok(piece))
    }

    /// Whether checkpoints are kept for this run (a state store is configured).
    pub fn checkpointing(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// Saves the writer's progress: `document` says where it got to, `bytes_done` how much
    /// of the payload it made durable. Failing to save is logged, not fatal (a later resume
    /// just starts further back); a save refused because another daemon took the run over
    /// gives the run up ([`Tenure::lose`]).
    pub async fn save_checkpoint(&self, document: serde_json::Value, bytes_done: u64) {
        let Some(target) = &self.checkpoints else {
            return;
        };
        let checkpoint = Checkpoint {
            document,
            bytes_done,
        };
        match target
            .ledger
            .store
            .save_checkpoint(
                &target.run_id,
                target.tenure.epoch(),
                target.writer,
                &checkpoint,
            )
            .await
        {
            Ok(()) => {}
            Err(StateError::Fenced(_)) => target
                .tenure
                .lose("a checkpoint was refused: another daemon took the run over"),
            Err(err) => tracing::warn!(error = %err, "Cannot save a checkpoint."),
        }
    }

    /// The run's hold on its row, to check with [`Hold::confirm`] before the writer makes
    /// its delivery visible (it outlives [`Payload::finish`]).
    pub fn hold(&self) -> Hold {
        Hold {
            target: self.checkpoints.clone(),
        }
    }
}

/// A run's hold on its row, as a writer checks it before it makes a delivery visible.
#[derive(Debug, Clone)]
pub struct Hold {
    target: Option<Checkpoints>,
}

impl Hold {
    /// Checks, before a writer makes its delivery visible (a rename, a multipart upload's
    /// completion), that the run is still this daemon's: a run that another daemon took
    /// over while this one was paused or cut off must not overwrite that daemon's work.
    /// Asks the store only when the hold was not confirmed lately.
    pub async fn confirm(&self) -> Result<(), DeliveryError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let tenure = &target.tenure;
        if !tenure.is_lost() && tenure.fresh(target.ledger.lease) {
            return Ok(());
        }
        let renewed = match tenure.is_lost() {
            true => Ok(false),
            false => {
                target
                    .ledger
                    .store
                    .renew(&target.run_id, tenure.epoch(), target.ledger.lease)
                    .await
            }
        };
        match renewed {
            Ok(true) => {
                tenure.confirm();
                Ok(())
            }
            Ok(false) => {
                tenure
                    .lose("another daemon took the run over before its delivery was made visible");
                Err(DeliveryError::new(
                    ErrorKind::Io,
                    "the run was taken over by another daemon; not making this delivery visible",
                ))
            }
            Err(err) => Err(DeliveryError::new(
                ErrorKind::Io,
                format!("cannot confirm the run's lease before making the delivery visible: {err}"),
            )),
        }
    }
}

impl Payload {
    /// A payload of the given chunks, for tests and for library users driving a writer
    /// directly.
    pub fn from_chunks(chunks: Vec<Bytes>) -> Payload {
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        for chunk in chunks {
            // The channel has room for every frame.
            let _ = tx.try_send(Frame::Data(chunk, None));
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
            sha256: hex::encode(self.hasher_now().finalize()),
        })
    }
}

impl Payload {
    /// The next chunk from the activity, not yet counted or hashed.
    #[allow(clippy::type_complexity)]
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<(Bytes, Option<Arc<Sha256>>)>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Frame::Data(chunk, after))) => Poll::Ready(Some(Ok((chunk, after)))),
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
        if let Some(rest) = self.pending.take() {
            self.account(&rest, None);
            return Poll::Ready(Some(Ok(rest)));
        }
        match self.poll_frame(cx) {
            Poll::Ready(Some(Ok((chunk, after)))) => {
                self.account(&chunk, Some((&chunk, after)));
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// A payload fed as the activity feeds it when it hashes once: each chunk with the hash
    /// state after it.
    fn hashed_once(chunks: &[&'static [u8]]) -> Payload {
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        let mut hasher = Sha256::new();
        for chunk in chunks {
            hasher.update(chunk);
            let after = Arc::new(hasher.clone());
            let _ = tx.try_send(Frame::Data(Bytes::from_static(chunk), Some(after)));
        }
        let _ = tx.try_send(Frame::End);
        Payload::new(rx, None, 0, None)
    }

    #[tokio::test]
    async fn a_writer_cutting_chunks_gets_the_hash_of_exactly_what_it_read() {
        let chunks: [&'static [u8]; 3] = [b"hello ", b"wide world", b"!"];
        let all = b"hello wide world!";
        let mut payload = hashed_once(&chunks);
        let mut read = Vec::new();
        // Parts of 4 bytes cut every chunk; the hash state after each is the prefix's.
        while let Some(piece) = payload.next_up_to(4).await {
            read.extend_from_slice(&piece.expect("data"));
            let state = payload.hash_state();
            assert_eq!(state.bytes, read.len() as u64);
            let mut resumed = Payload::from_chunks(vec![]);
            resumed.offset = read.len() as u64;
            resumed.resume_hash(&state).expect("state");
            assert_eq!(
                hex::encode(resumed.hasher.finalize()),
                sha256_hex(&read),
                "after {} bytes",
                read.len()
            );
        }
        assert_eq!(read, all);
        let digest = payload.finish().expect("read to the end");
        assert_eq!(digest.sha256, sha256_hex(all));
        assert_eq!(digest.bytes, all.len() as u64);
    }

    #[tokio::test]
    async fn a_payload_takes_the_activitys_hash_instead_of_hashing_again() {
        // The state sent with the chunk is not the chunk's: a payload that hashed the bytes
        // itself would report the true sha256.
        let (tx, rx) = mpsc::channel(4);
        let mut other = Sha256::new();
        other.update(b"something else");
        let claimed = hex::encode(other.clone().finalize());
        let _ = tx.try_send(Frame::Data(
            Bytes::from_static(b"data"),
            Some(Arc::new(other)),
        ));
        let _ = tx.try_send(Frame::End);
        let mut payload = Payload::new(rx, None, 0, None);
        while let Some(chunk) = futures::StreamExt::next(&mut payload).await {
            chunk.expect("data");
        }
        assert_eq!(payload.finish().expect("end").sha256, claimed);
    }

    #[tokio::test]
    async fn chunks_without_a_hash_are_hashed_by_the_payload() {
        let mut payload =
            Payload::from_chunks(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]);
        while let Some(piece) = payload.next_up_to(3).await {
            piece.expect("data");
        }
        assert_eq!(payload.finish().expect("end").sha256, sha256_hex(b"abcd"));
    }
}

//! What a writer that uploads to a temporary file on a server (FTP, SFTP) keeps to resume it.
//!
//! The upload goes to `<name>.partial-<run_id>` beside the final name. Every couple of
//! seconds the writer records the temporary name and the hash state of what the server has
//! taken ([`UploadCheckpoint`]); a retry or a restarted daemon asks the server how much the
//! temporary file holds and continues after the latest recorded state within it, with the
//! hash continued from that state, so the receipt's sha256 still covers every byte.

use serde::{Deserialize, Serialize};

use super::{HashState, Payload};
use crate::error::{DeliveryError, ErrorKind};
use crate::state::Checkpoint;

/// How often an uploading writer records how far it got.
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How many recent hash states a checkpoint keeps. The server may hold less than was sent
/// (data in flight when the connection broke is lost), so a resume continues from the
/// latest state the server's file covers.
const STATES_KEPT: usize = 4;

/// The temporary name an upload to `target` uses in `run_id`'s run: beside it, in the same
/// directory. `None` when `target` does not name a file.
pub(crate) fn partial_name(target: &str, run_id: &str) -> Option<String> {
    let (dir, name) = match target.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, target),
    };
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some(match dir {
        Some(dir) => format!("{dir}/{name}.partial-{run_id}"),
        None => format!("{name}.partial-{run_id}"),
    })
}

/// What an uploading attempt records: its temporary file and recent points it can resume
/// from, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct UploadCheckpoint {
    temp: String,
    states: Vec<HashState>,
}

impl UploadCheckpoint {
    /// A fresh record for an upload to `temp`.
    pub(crate) fn new(temp: &str) -> UploadCheckpoint {
        UploadCheckpoint {
            temp: temp.to_owned(),
            states: Vec::new(),
        }
    }

    /// The checkpoint's record, when it is about `temp`.
    pub(crate) fn of(checkpoint: &Checkpoint, temp: &str) -> Option<UploadCheckpoint> {
        let saved: UploadCheckpoint = serde_json::from_value(checkpoint.document.clone()).ok()?;
        (saved.temp == temp).then_some(saved)
    }

    /// Whether the record holds any point to resume from.
    pub(crate) fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The latest recorded point within the `held` bytes the server's file holds; 0 when
    /// there is none.
    pub(crate) fn resume_point(&self, held: u64) -> u64 {
        self.states
            .iter()
            .rev()
            .map(|state| state.bytes)
            .find(|&bytes| bytes <= held)
            .unwrap_or(0)
    }

    /// The record an attempt continues for `temp`: fresh when the payload starts at byte
    /// 0, else the recorded states up to the payload's offset, with the payload's hash
    /// resumed from the state there. Without a state at that offset the file cannot be
    /// continued: the checkpoint is cleared, so the next attempt starts over, and this one
    /// fails.
    pub(crate) async fn continue_for(
        payload: &mut Payload,
        temp: &str,
    ) -> Result<UploadCheckpoint, DeliveryError> {
        let offset = payload.offset();
        let mut record = UploadCheckpoint::new(temp);
        if offset == 0 {
            return Ok(record);
        }
        let saved = payload
            .checkpoint()
            .and_then(|checkpoint| UploadCheckpoint::of(checkpoint, temp))
            .unwrap_or_default();
        let Some(at) = saved.states.iter().position(|state| state.bytes == offset) else {
            payload.save_checkpoint(serde_json::Value::Null, 0).await;
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!("no hash state recorded at byte {offset} of {temp}"),
            ));
        };
        payload.resume_hash(&saved.states[at])?;
        record.states = saved.states[..=at].to_vec();
        Ok(record)
    }

    fn push(&mut self, state: HashState) {
        if self.states.len() == STATES_KEPT {
            self.states.remove(0);
        }
        self.states.push(state);
    }

    /// Records the payload's hash state now (everything read so far has reached the
    /// server) and saves the record as the writer's checkpoint.
    pub(crate) async fn save(&mut self, payload: &mut Payload) {
        self.push(payload.hash_state());
        let bytes_done = self.states.last().map_or(0, |state| state.bytes);
        if let Ok(document) = serde_json::to_value(&*self) {
            payload.save_checkpoint(document, bytes_done).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(points: &[u64]) -> UploadCheckpoint {
        UploadCheckpoint {
            temp: "t".to_owned(),
            states: points
                .iter()
                .map(|&bytes| HashState {
                    bytes,
                    state: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn resumes_from_the_latest_point_the_server_holds() {
        let saved = record(&[10, 20, 30]);
        assert_eq!(saved.resume_point(35), 30);
        assert_eq!(saved.resume_point(29), 20);
        assert_eq!(saved.resume_point(9), 0);
        assert_eq!(record(&[]).resume_point(100), 0);
    }

    #[test]
    fn a_checkpoint_keeps_its_latest_states() {
        let mut saved = record(&[]);
        for bytes in 1..=6 {
            saved.push(HashState {
                bytes,
                state: String::new(),
            });
        }
        assert_eq!(saved.states.len(), STATES_KEPT);
        assert_eq!(saved.states[0].bytes, 3);
        assert_eq!(saved.resume_point(u64::MAX), 6);
    }

    #[test]
    fn partial_names_sit_beside_the_target() {
        assert_eq!(
            partial_name("/in/a.csv", "r1").as_deref(),
            Some("/in/a.csv.partial-r1")
        );
        assert_eq!(
            partial_name("a.csv", "r1").as_deref(),
            Some("a.csv.partial-r1")
        );
        assert_eq!(partial_name("/in/", "r1"), None);
        assert_eq!(partial_name("in/..", "r1"), None);
    }
}

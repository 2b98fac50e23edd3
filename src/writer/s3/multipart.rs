//! Multipart uploads: parts read from the payload one at a time and sent with bounded
//! concurrency, each finished prefix checkpointed (upload id, part list, hash state), a
//! checkpointed upload resumed after the parts the store still holds, and aborted when the
//! run gives up.

use std::collections::BTreeMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::{MAX_PARTS, S3Writer, s3_error, too_many_parts, with_attributes};
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::writer::{HashState, Payload};

/// Reads a payload in parts of exactly `size` bytes (the last may be shorter), keeping the
/// payload's hash in step with part boundaries.
pub(super) struct Parts {
    pub(super) size: usize,
    pub(super) ended: bool,
}

impl Parts {
    pub(super) async fn next(
        &mut self,
        payload: &mut Payload,
    ) -> Result<Option<Bytes>, DeliveryError> {
        if self.ended {
            return Ok(None);
        }
        let mut part = BytesMut::with_capacity(self.size);
        while part.len() < self.size {
            match payload.next_up_to(self.size - part.len()).await {
                Some(Ok(chunk)) => part.extend_from_slice(&chunk),
                Some(Err(err)) => return Err(DeliveryError::io("read the data", err)),
                None => {
                    self.ended = true;
                    break;
                }
            }
        }
        Ok((!part.is_empty()).then(|| part.freeze()))
    }
}

/// What a multipart upload checkpoint holds.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub(super) struct UploadCheckpoint {
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) part_size: u64,
    /// Finished parts, in order from part 1, with no gap.
    pub(super) parts: Vec<(i32, String)>,
    /// The payload's hash at the end of those parts.
    pub(super) hash: Option<HashState>,
}

impl S3Writer {
    /// Aborts the multipart upload `upload_id` of `key`; logged, never fatal.
    pub(super) async fn abort(&self, key: &str, upload_id: &str) {
        let aborted = self
            .client()
            .await
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match aborted {
            Ok(_) => {
                tracing::info!(location = %self.location(key), "Aborted the multipart upload.")
            }
            Err(err) => {
                tracing::warn!(location = %self.location(key), error = %s3_error("abort", err), "Cannot abort the multipart upload.")
            }
        }
    }

    /// Starts a multipart upload, or picks up the one a checkpoint names.
    pub(super) async fn multipart(
        &self,
        ctx: &RunContext,
        key: &str,
        mut first: Option<Bytes>,
        parts: &mut Parts,
        payload: &mut Payload,
    ) -> Result<(), DeliveryError> {
        let client = self.client().await.clone();
        let location = self.location(key);
        let resumed = saved_upload(payload)
            .filter(|c| payload.offset() > 0 && c.key == key && c.part_size == self.part_size);
        let mut upload = match resumed {
            Some(upload) => {
                let hash = upload.hash.as_ref().ok_or_else(|| {
                    DeliveryError::new(ErrorKind::Integrity, "the checkpoint has no hash state")
                })?;
                payload.resume_hash(hash)?;
                let done = upload.parts.len();
                tracing::info!(%location, parts = done, "Resuming the multipart upload after its finished parts.");
                upload
            }
            None => {
                let create = client
                    .create_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(key);
                let created = with_attributes!(create, self, self.metadata(ctx, None))
                    .send()
                    .await
                    .map_err(|err| s3_error(&format!("start the upload of {location}"), err))?;
                let upload_id = created.upload_id().unwrap_or_default().to_owned();
                let upload = UploadCheckpoint {
                    key: key.to_owned(),
                    upload_id,
                    part_size: self.part_size,
                    parts: Vec::new(),
                    hash: None,
                };
                // Recorded at once, so that a run failing before its first part still
                // aborts this upload (`discard`).
                if let Ok(document) = serde_json::to_value(&upload) {
                    payload.save_checkpoint(document, 0).await;
                }
                upload
            }
        };
        let mut in_flight = JoinSet::new();
        let result = self
            .upload_parts(
                &client,
                &mut upload,
                &mut first,
                parts,
                payload,
                &mut in_flight,
            )
            .await;
        if let Err(err) = result {
            // Let the parts already on their way land, so that an abort leaves nothing behind.
            while in_flight.join_next().await.is_some() {}
            // Without checkpoints nobody resumes this upload: abort it now.
            if !payload.checkpointing() {
                self.abort(key, &upload.upload_id).await;
            }
            return Err(err);
        }
        Ok(())
    }

    async fn upload_parts(
        &self,
        client: &Client,
        upload: &mut UploadCheckpoint,
        first: &mut Option<Bytes>,
        parts: &mut Parts,
        payload: &mut Payload,
        in_flight: &mut JoinSet<Result<(i32, String), DeliveryError>>,
    ) -> Result<(), DeliveryError> {
        let location = self.location(&upload.key);
        let mut next_number = i32::try_from(upload.parts.len()).unwrap_or(i32::MAX) + 1;
        let mut finished: BTreeMap<i32, String> = upload.parts.iter().cloned().collect();
        let mut boundaries: BTreeMap<i32, HashState> = BTreeMap::new();
        // At most `concurrency` part buffers live at once, the one being filled included.
        let filling_limit = self.concurrency.saturating_sub(1).max(1);
        loop {
            while first.is_none() && in_flight.len() >= filling_limit {
                self.part_done(in_flight, &mut finished, &mut boundaries, upload, payload)
                    .await?;
            }
            let part = match first.take() {
                Some(part) => Some(part),
                None => parts.next(payload).await?,
            };
            let Some(part) = part else {
                break;
            };
            if i64::from(next_number) > MAX_PARTS as i64 {
                return Err(too_many_parts(&location, self.part_size));
            }
            boundaries.insert(next_number, payload.hash_state());
            let number = next_number;
            next_number += 1;
            let request = client
                .upload_part()
                .bucket(&self.settings.bucket)
                .key(&upload.key)
                .upload_id(&upload.upload_id)
                .part_number(number)
                .content_length(i64::try_from(part.len()).unwrap_or(i64::MAX))
                .body(ByteStream::from(part));
            let action = format!("upload part {number} of {location}");
            in_flight.spawn(async move {
                let sent = request.send().await.map_err(|err| s3_error(&action, err))?;
                Ok((number, sent.e_tag().unwrap_or_default().to_owned()))
            });
        }
        while !in_flight.is_empty() {
            self.part_done(in_flight, &mut finished, &mut boundaries, upload, payload)
                .await?;
        }
        payload.hold().confirm().await?;
        let completed: Vec<CompletedPart> = finished
            .iter()
            .map(|(number, etag)| {
                CompletedPart::builder()
                    .part_number(*number)
                    .e_tag(etag)
                    .build()
            })
            .collect();
        let mut complete = client
            .complete_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        if self.settings.if_none_match {
            complete = complete.if_none_match("*");
        }
        complete
            .send()
            .await
            .map_err(|err| s3_error(&format!("complete the upload of {location}"), err))?;
        Ok(())
    }

    /// Waits for one part upload, records it, and checkpoints the finished prefix.
    async fn part_done(
        &self,
        in_flight: &mut JoinSet<Result<(i32, String), DeliveryError>>,
        finished: &mut BTreeMap<i32, String>,
        boundaries: &mut BTreeMap<i32, HashState>,
        upload: &mut UploadCheckpoint,
        payload: &Payload,
    ) -> Result<(), DeliveryError> {
        let Some(joined) = in_flight.join_next().await else {
            return Ok(());
        };
        let (number, etag) = joined.map_err(|err| {
            DeliveryError::new(ErrorKind::Io, format!("a part upload task failed: {err}"))
        })??;
        finished.insert(number, etag);
        let contiguous = finished
            .iter()
            .enumerate()
            .take_while(|(i, (n, _))| i64::from(**n) == *i as i64 + 1)
            .count();
        let last = i32::try_from(contiguous).unwrap_or(i32::MAX);
        if contiguous > upload.parts.len()
            && let Some(hash) = boundaries.get(&last)
        {
            upload.hash = Some(hash.clone());
            boundaries.retain(|n, _| *n > last);
            upload.parts = finished
                .iter()
                .take(contiguous)
                .map(|(n, e)| (*n, e.clone()))
                .collect();
            if let Ok(document) = serde_json::to_value(&*upload) {
                payload
                    .save_checkpoint(document, contiguous as u64 * self.part_size)
                    .await;
            }
        }
        Ok(())
    }

    /// How many bytes of `upload` the store still holds: its checkpointed parts up to the
    /// first one the store no longer lists as it was.
    pub(super) async fn bytes_held(&self, upload: &UploadCheckpoint) -> Result<u64, DeliveryError> {
        // The store must still have the upload and its parts.
        let listed = self
            .client()
            .await
            .list_parts()
            .bucket(&self.settings.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .send()
            .await;
        let listed = match listed {
            Ok(listed) => listed,
            Err(err) => {
                let err = s3_error(
                    &format!("list the parts of {}", self.location(&upload.key)),
                    err,
                );
                // A gone upload (aborted, expired) means starting over; anything else means
                // the store cannot tell now.
                return match err.kind() {
                    ErrorKind::NotFound => Ok(0),
                    _ => Err(err),
                };
            }
        };
        let on_server: BTreeMap<i32, (Option<String>, Option<i64>)> = listed
            .parts()
            .iter()
            .filter_map(|p| Some((p.part_number()?, (p.e_tag().map(str::to_owned), p.size()))))
            .collect();
        // A part counts when the store still has it with the same ETag (stores that list no
        // ETag: the same size).
        let part_size = i64::try_from(self.part_size).unwrap_or(i64::MAX);
        let held = upload
            .parts
            .iter()
            .take_while(|(n, etag)| match on_server.get(n) {
                Some((Some(listed), _)) => listed == etag,
                Some((None, size)) => size.is_none_or(|s| s == part_size),
                None => false,
            })
            .count();
        Ok(held as u64 * self.part_size)
    }
}

/// The multipart upload an earlier attempt checkpointed, if any.
pub(super) fn saved_upload(payload: &Payload) -> Option<UploadCheckpoint> {
    payload
        .checkpoint()
        .and_then(|c| serde_json::from_value(c.document.clone()).ok())
}

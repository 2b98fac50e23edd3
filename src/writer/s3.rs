//! `type = "s3"`: an object in Amazon S3 or any S3-compatible store.
//!
//! A payload smaller than one part goes up in a single PUT; a larger one (or one of unknown
//! length) as a multipart upload whose parts are read from the stream one at a time and sent
//! with bounded concurrency: at most `concurrency` part buffers exist at once (the one being
//! filled included), so memory stays within part size × concurrency. The object
//! exists only once CompleteMultipartUpload succeeds; a HEAD then checks its size. The
//! sha256 ferry computed while streaming is stored as user metadata (`x-amz-meta-sha256`):
//! with the PUT itself, or, for a multipart upload whose hash is known only at the end, by
//! copying the object onto itself with the metadata replaced. `if_none_match = true` makes
//! the write create-only.
//!
//! With a state store, every finished part is checkpointed (upload id and part list); a retry
//! or a restarted daemon lists the upload's parts and continues after the finished ones when
//! the source can start mid-way, and a run that fails for good aborts the upload.
//!
//! Checksums default to "when required" (aws-sdk-rust#1240: since 1.69 the SDK sends a CRC
//! with every PUT, which several S3-compatible stores reject).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, MetadataDirective, ServerSideEncryption, StorageClass,
};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use super::{Delivery, HashState, Payload, Writer, WriterSettings};
use crate::RunContext;
use crate::config::{ByteSize, ConfigDuration, KeyPath, Problems, Secret, SecretRef};
use crate::error::{DeliveryError, ErrorKind};
use crate::job::BuildEnv;
use crate::state::Checkpoint;
use crate::template::Template;

/// S3's smallest part (but the last) and largest part.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;

/// Settings of an `s3` writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The object key; a template (`dumps/{scheduled:%Y/%m/%d/%H}.dump`).
    pub key: String,
    /// The region (`us-east-1` when neither this nor the environment says).
    #[serde(default)]
    pub region: Option<String>,
    /// The endpoint of an S3-compatible store, e.g. `http://127.0.0.1:9000`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint` (most
    /// S3-compatible stores want this).
    #[serde(default)]
    pub path_style: bool,
    /// The access key id; without one, the default AWS credential chain is used.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The environment variable holding the access key id.
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    /// The file holding the access key id.
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// The secret access key (prefer the `_env`/`_file` forms).
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// The environment variable holding the secret access key.
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// The file holding the secret access key.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// The storage class, e.g. `"STANDARD_IA"`.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// The object's Content-Type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// User metadata; ferry adds `job`, `run-id`, `slot` and `sha256`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Server-side encryption: `"AES256"`, `"aws:kms"` or `"aws:kms:dsse"`.
    #[serde(default)]
    pub server_side_encryption: Option<String>,
    /// The KMS key for `aws:kms` encryption.
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// The size of multipart parts, at least 5 MiB (default 16 MiB).
    #[serde(default)]
    pub part_size: Option<ByteSize>,
    /// How many parts are sent at once (default 4).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// When the SDK adds request checksums and validates response ones: `"when_required"`
    /// (the default) or `"when_supported"`.
    #[serde(default)]
    pub checksums: Checksums,
    /// Create-only: the write fails if the key exists, so a re-run never overwrites.
    #[serde(default)]
    pub if_none_match: bool,
    /// Put a presigned GET URL valid this long in the receipt's link (e.g. `"7d"`, at most
    /// 7 days); `s3://bucket/key` otherwise.
    #[serde(default)]
    pub presign: Option<ConfigDuration>,
}

/// `checksums`: when the SDK computes and checks checksums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksums {
    /// Only when an operation requires one (works with every S3-compatible store).
    #[default]
    WhenRequired,
    /// Whenever the operation supports one (the SDK's default; AWS S3 accepts it).
    WhenSupported,
}

const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "OUTPOSTS",
    "SNOW",
    "EXPRESS_ONEZONE",
];

impl S3Config {
    fn secrets(
        &self,
        at: &KeyPath,
        problems: &mut Problems,
    ) -> (Option<SecretRef>, Option<SecretRef>) {
        let id = SecretRef::pick(
            "access_key_id",
            self.access_key_id.as_ref(),
            self.access_key_id_env.as_ref(),
            self.access_key_id_file.as_ref(),
            at,
            problems,
        );
        let secret = SecretRef::pick(
            "secret_access_key",
            self.secret_access_key.as_ref(),
            self.secret_access_key_env.as_ref(),
            self.secret_access_key_file.as_ref(),
            at,
            problems,
        );
        (id, secret)
    }
}

impl WriterSettings for S3Config {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.bucket.len() < 3 || self.bucket.contains('/') {
            problems.add(
                at.key("bucket"),
                "a bucket name has at least 3 characters and no '/'",
            );
        }
        match Template::parse(&self.key) {
            Err(err) => problems.add(at.key("key"), err.to_string()),
            Ok(_) if self.key.is_empty() || self.key.ends_with('/') => {
                problems.add(at.key("key"), "must name an object, not a prefix");
            }
            Ok(_) => {}
        }
        if let Some(endpoint) = &self.endpoint
            && reqwest::Url::parse(endpoint).is_err()
        {
            problems.add(at.key("endpoint"), format!("invalid URL {endpoint:?}"));
        }
        let (id, secret) = self.secrets(at, problems);
        if id.is_some() != secret.is_some() {
            problems.add(
                at.key("access_key_id"),
                "give both an access key id and a secret access key, or neither (for the default AWS chain)",
            );
        }
        if let Some(class) = &self.storage_class
            && !STORAGE_CLASSES.contains(&class.as_str())
        {
            problems.add(
                at.key("storage_class"),
                format!(
                    "unknown storage class {class:?}; known: {}",
                    STORAGE_CLASSES.join(", ")
                ),
            );
        }
        if let Some(sse) = &self.server_side_encryption
            && !matches!(sse.as_str(), "AES256" | "aws:kms" | "aws:kms:dsse")
        {
            problems.add(
                at.key("server_side_encryption"),
                "must be \"AES256\", \"aws:kms\" or \"aws:kms:dsse\"",
            );
        }
        if self.sse_kms_key_id.is_some()
            && !self
                .server_side_encryption
                .as_deref()
                .is_some_and(|s| s.starts_with("aws:kms"))
        {
            problems.add(
                at.key("sse_kms_key_id"),
                "needs server_side_encryption = \"aws:kms\"",
            );
        }
        if let Some(ByteSize(size)) = self.part_size
            && !(MIN_PART..=MAX_PART).contains(&size)
        {
            problems.add(at.key("part_size"), "must be between 5 MiB and 5 GiB");
        }
        if let Some(n) = self.concurrency
            && !(1..=64).contains(&n)
        {
            problems.add(at.key("concurrency"), "must be between 1 and 64");
        }
        if self
            .presign
            .is_some_and(|d| d.get().is_zero() || d.get() > Duration::from_secs(7 * 24 * 3600))
        {
            problems.add(
                at.key("presign"),
                "must be longer than zero and at most 7 days",
            );
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        let config_error = |msg: String| DeliveryError::new(ErrorKind::Config, msg);
        let key = Template::parse(&self.key).map_err(|err| config_error(err.to_string()))?;
        let mut problems = Problems::default();
        let (id, secret) = self.secrets(&KeyPath::root(), &mut problems);
        let credentials = match (id, secret) {
            (Some(id), Some(secret)) => {
                Some((id.resolve(&env.base_dir)?, secret.resolve(&env.base_dir)?))
            }
            _ => None,
        };
        Ok(Arc::new(S3Writer {
            settings: self.clone(),
            key,
            credentials,
            part_size: self.part_size.map_or(16 << 20, |s| s.0),
            concurrency: self.concurrency.unwrap_or(4),
            client: Arc::new(OnceCell::new()),
        }))
    }
}

/// A writer to an S3 object.
#[derive(Debug, Clone)]
pub struct S3Writer {
    settings: S3Config,
    key: Template,
    credentials: Option<(Secret, Secret)>,
    part_size: u64,
    concurrency: usize,
    /// Built on first use (loading the AWS configuration is asynchronous).
    client: Arc<OnceCell<Client>>,
}

/// A failed S3 call, classified: 5xx, 429, SlowDown, timeouts and connection trouble are
/// transient; refused credentials, a missing bucket and other 4xx are not.
fn s3_error<E>(
    action: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> DeliveryError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match &err {
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ErrorKind::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_user() => ErrorKind::Config,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => ErrorKind::Network,
        SdkError::ConstructionFailure(_) => ErrorKind::Config,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match service.err().code() {
                Some("SlowDown" | "RequestTimeout" | "Throttling" | "ThrottlingException") => {
                    ErrorKind::Throttled
                }
                Some(
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "ExpiredToken"
                    | "InvalidToken",
                ) => ErrorKind::Auth,
                Some("NoSuchBucket" | "NoSuchKey" | "NoSuchUpload") => ErrorKind::NotFound,
                Some("PreconditionFailed") => ErrorKind::Rejected,
                _ => ErrorKind::of_http_status(status),
            }
        }
        _ => ErrorKind::Network,
    };
    let detail = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            format!(
                "{} ({})",
                e.message().unwrap_or("no message"),
                e.code().unwrap_or("no code")
            )
        }
        other => display_error_chain(other),
    };
    DeliveryError::new(kind, format!("{action}: {detail}"))
}

fn display_error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// Reads a payload in parts of exactly `size` bytes (the last may be shorter), keeping the
/// payload's hash in step with part boundaries.
struct Parts {
    size: usize,
    ended: bool,
}

impl Parts {
    async fn next(&mut self, payload: &mut Payload) -> Result<Option<Bytes>, DeliveryError> {
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
struct UploadCheckpoint {
    key: String,
    upload_id: String,
    part_size: u64,
    /// Finished parts, in order from part 1, with no gap.
    parts: Vec<(i32, String)>,
    /// The payload's hash at the end of those parts.
    hash: Option<HashState>,
}

impl S3Writer {
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let s = &self.settings;
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(region) = &s.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                if let Some((id, secret)) = &self.credentials {
                    loader = loader.credentials_provider(Credentials::new(
                        id.expose(),
                        secret.expose(),
                        None,
                        None,
                        "ferry job file",
                    ));
                }
                if let Some(endpoint) = &s.endpoint {
                    loader = loader.endpoint_url(endpoint);
                }
                let shared = loader.load().await;
                let (request, response) = match s.checksums {
                    Checksums::WhenRequired => (
                        RequestChecksumCalculation::WhenRequired,
                        ResponseChecksumValidation::WhenRequired,
                    ),
                    Checksums::WhenSupported => (
                        RequestChecksumCalculation::WhenSupported,
                        ResponseChecksumValidation::WhenSupported,
                    ),
                };
                let mut config = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(s.path_style)
                    .request_checksum_calculation(request)
                    .response_checksum_validation(response);
                if shared.region().is_none() {
                    config = config.region(Region::new("us-east-1"));
                }
                Client::from_conf(config.build())
            })
            .await
    }

    fn metadata(
        &self,
        ctx: &RunContext,
        sha256: Option<&str>,
    ) -> std::collections::HashMap<String, String> {
        let mut meta: std::collections::HashMap<String, String> =
            self.settings.metadata.clone().into_iter().collect();
        meta.insert("job".into(), ctx.job.clone());
        meta.insert("run-id".into(), ctx.run_id.clone());
        meta.insert("slot".into(), ctx.slot.to_rfc3339());
        if let Some(sha256) = sha256 {
            meta.insert("sha256".into(), sha256.to_owned());
        }
        meta
    }

    fn storage_class(&self) -> Option<StorageClass> {
        self.settings
            .storage_class
            .as_deref()
            .map(StorageClass::from)
    }

    fn encryption(&self) -> Option<ServerSideEncryption> {
        self.settings
            .server_side_encryption
            .as_deref()
            .map(ServerSideEncryption::from)
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    /// A single PUT of a payload that fits in one part.
    async fn put(
        &self,
        ctx: &RunContext,
        key: &str,
        body: Bytes,
        sha256: &str,
    ) -> Result<(), DeliveryError> {
        let mut put = self
            .client()
            .await
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_length(i64::try_from(body.len()).unwrap_or(i64::MAX))
            .body(ByteStream::from(body))
            .set_metadata(Some(self.metadata(ctx, Some(sha256))))
            .set_content_type(self.settings.content_type.clone())
            .set_storage_class(self.storage_class())
            .set_server_side_encryption(self.encryption())
            .set_ssekms_key_id(self.settings.sse_kms_key_id.clone());
        if self.settings.if_none_match {
            put = put.if_none_match("*");
        }
        put.send()
            .await
            .map_err(|err| s3_error(&format!("PUT {}", self.location(key)), err))?;
        Ok(())
    }

    async fn abort(&self, key: &str, upload_id: &str) {
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
    async fn multipart(
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
                let created = client
                    .create_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(key)
                    .set_metadata(Some(self.metadata(ctx, None)))
                    .set_content_type(self.settings.content_type.clone())
                    .set_storage_class(self.storage_class())
                    .set_server_side_encryption(self.encryption())
                    .set_ssekms_key_id(self.settings.sse_kms_key_id.clone())
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
}

#[async_trait]
impl Writer for S3Writer {
    fn describe(&self) -> String {
        format!("s3 s3://{}/{}", self.settings.bucket, self.key)
    }

    async fn write(
        &self,
        ctx: &RunContext,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let key = self.key.render(ctx);
        let location = self.location(&key);
        if payload.offset() == 0
            && let Some(old) = saved_upload(&payload)
        {
            // Starting over: the earlier attempt's upload is of no use.
            self.abort(&old.key, &old.upload_id).await;
        }
        let mut parts = Parts {
            size: usize::try_from(self.part_size).unwrap_or(usize::MAX),
            ended: false,
        };
        // A resumed upload continues its parts; the hash state comes from the checkpoint.
        let first = if payload.offset() > 0 {
            None
        } else {
            parts.next(&mut payload).await?
        };
        let single = payload.offset() == 0 && parts.ended;
        if single {
            let body = first.unwrap_or_default();
            // The whole payload is read: its digest is known before the PUT.
            let digest = payload.finish()?;
            self.put(ctx, &key, body, &digest.sha256).await?;
            self.verify(&key, digest.bytes).await?;
            return self.receipt(key, digest).await;
        }
        self.multipart(ctx, &key, first, &mut parts, &mut payload)
            .await?;
        let digest = payload.finish()?;
        self.verify(&key, digest.bytes).await?;
        self.store_sha256(ctx, &key, &digest.sha256).await;
        tracing::debug!(%location, "Multipart upload complete.");
        self.receipt(key, digest).await
    }

    async fn resume_point(
        &self,
        ctx: &RunContext,
        checkpoint: &Checkpoint,
    ) -> Result<u64, DeliveryError> {
        let Ok(upload) = serde_json::from_value::<UploadCheckpoint>(checkpoint.document.clone())
        else {
            return Ok(0);
        };
        if upload.key != self.key.render(ctx) || upload.part_size != self.part_size {
            return Ok(0);
        }
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

    async fn discard(&self, _ctx: &RunContext, checkpoint: Option<&Checkpoint>) {
        let upload = checkpoint
            .and_then(|c| serde_json::from_value::<UploadCheckpoint>(c.document.clone()).ok());
        if let Some(upload) = upload {
            self.abort(&upload.key, &upload.upload_id).await;
        }
    }
}

impl S3Writer {
    /// HEAD the object: it must exist with the size that was sent.
    async fn verify(&self, key: &str, bytes: u64) -> Result<(), DeliveryError> {
        let location = self.location(key);
        let head = self
            .client()
            .await
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| s3_error(&format!("HEAD {location}"), err))?;
        let stored = head.content_length().and_then(|n| u64::try_from(n).ok());
        if stored != Some(bytes) {
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!("{location} holds {stored:?} bytes after sending {bytes}"),
            ));
        }
        Ok(())
    }

    /// Records the sha256 of a multipart object (known only now) by copying the object onto
    /// itself with the metadata replaced. Logged, not fatal, when the store refuses.
    async fn store_sha256(&self, ctx: &RunContext, key: &str, sha256: &str) {
        let source = format!("{}/{}", self.settings.bucket, urlencode_key(key));
        let copied = self
            .client()
            .await
            .copy_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .copy_source(source)
            .metadata_directive(MetadataDirective::Replace)
            .set_metadata(Some(self.metadata(ctx, Some(sha256))))
            .set_content_type(self.settings.content_type.clone())
            .set_storage_class(self.storage_class())
            .set_server_side_encryption(self.encryption())
            .set_ssekms_key_id(self.settings.sse_kms_key_id.clone())
            .send()
            .await;
        if let Err(err) = copied {
            tracing::warn!(location = %self.location(key), error = %s3_error("copy", err), "Cannot store the sha256 as object metadata.");
        }
    }

    async fn receipt(&self, key: String, digest: super::Digest) -> Result<Delivery, DeliveryError> {
        let location = self.location(&key);
        let link = match self.settings.presign {
            None => location.clone(),
            Some(lifetime) => {
                let config = PresigningConfig::expires_in(lifetime.get()).map_err(|err| {
                    DeliveryError::new(ErrorKind::Config, format!("presign: {err}"))
                })?;
                let presigned = self
                    .client()
                    .await
                    .get_object()
                    .bucket(&self.settings.bucket)
                    .key(&key)
                    .presigned(config)
                    .await
                    .map_err(|err| s3_error(&format!("presign {location}"), err))?;
                presigned.uri().to_owned()
            }
        };
        Ok(Delivery {
            writer: "s3".into(),
            location,
            link: Some(link),
            bytes: digest.bytes,
            sha256: digest.sha256,
        })
    }
}

/// The multipart upload an earlier attempt checkpointed, if any.
fn saved_upload(payload: &Payload) -> Option<UploadCheckpoint> {
    payload
        .checkpoint()
        .and_then(|c| serde_json::from_value(c.document.clone()).ok())
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/`.
fn urlencode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

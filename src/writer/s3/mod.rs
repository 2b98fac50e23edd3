//! `type = "s3"`: an object in Amazon S3 or any S3-compatible store.
//!
//! A payload smaller than one part goes up in a single PUT; a larger one (or one of unknown
//! length) as a multipart upload whose parts are read from the stream one at a time and sent
//! with bounded concurrency: at most `concurrency` part buffers exist at once (the one being
//! filled included), so memory stays within part size × concurrency. The object
//! exists only once CompleteMultipartUpload succeeds; a HEAD then checks its size. The
//! sha256 ferry computed while streaming is in the receipt and the state store; a single
//! PUT also stores it as user metadata (`x-amz-meta-sha256`). A multipart object's hash is
//! known only after its last part, when its metadata can no longer change: copying the
//! object onto itself to add it would cost the store a second pass over every byte and fails
//! above 5 GiB, so `checksum_file = true` writes `KEY.sha256` beside it instead.
//! `if_none_match = true` makes the write create-only.
//!
//! With a state store, every finished part is checkpointed (upload id and part list); a retry
//! or a restarted daemon lists the upload's parts and continues after the finished ones when
//! the source can start mid-way, and a run that fails for good aborts the upload.
//!
//! Checksums default to "when required" (aws-sdk-rust#1240: since 1.69 the SDK sends a CRC
//! with every PUT, which several S3-compatible stores reject).

use std::collections::BTreeMap;
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
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::OnceCell;

mod multipart;

use multipart::{Parts, UploadCheckpoint, saved_upload};

use super::{Delivery, Payload, Writer, WriterSettings};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind, chain_of, display_chain};
use crate::settings::{ByteSize, ConfigDuration, KeyPath, Problems, Secret, SecretField, keys};
use crate::state::Checkpoint;
use crate::template::Template;

/// Sets what every object-creating request carries: user metadata, content type, storage
/// class and server-side encryption.
macro_rules! with_attributes {
    ($request:expr, $writer:expr, $metadata:expr) => {
        $request
            .set_metadata(Some($metadata))
            .set_content_type($writer.settings.content_type.clone())
            .set_storage_class($writer.storage_class())
            .set_server_side_encryption($writer.encryption())
            .set_ssekms_key_id($writer.settings.sse_kms_key_id.clone())
    };
}
pub(super) use with_attributes;

/// The part size and the parts in flight when the job file does not say. Against s3s-fs
/// (`cargo bench --bench s3`) 8 and 16 MiB parts, 4 or 8 at a time, gave the same wall time
/// (the server was the limit); 8 × 4 keeps the part buffers at 32 MiB. A payload of known
/// length too big for 10,000 parts gets larger parts ([`plan_parts`]).
const DEFAULT_PART: u64 = 8 << 20;
const DEFAULT_CONCURRENCY: usize = 4;

/// The most memory the part buffers of one upload may take (`part_size × concurrency`).
const MAX_BUFFERED: u64 = 2 << 30;

/// The most parts a multipart upload may have.
pub(super) const MAX_PARTS: u64 = 10_000;

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
    /// The access key id (`access_key_id`, `_env` or `_file`); without one, the default AWS credential chain is used.
    #[serde(flatten)]
    pub access_key_id: SecretField<keys::AccessKeyId>,
    /// The secret access key: `secret_access_key`, `secret_access_key_env` or `secret_access_key_file`.
    #[serde(flatten)]
    pub secret_access_key: SecretField<keys::SecretAccessKey>,
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
    /// The size of multipart parts, at least 5 MiB (default 8 MiB); raised for a payload of
    /// known length that would need more than 10,000 parts.
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
    /// Whether a checksum file `NAME.sha256` (`sha256sum -c` format) is written beside each
    /// delivery, after it, for consumers that verify what they download: a multipart
    /// object's only server-side sha256 (see the module's doc).
    #[serde(default)]
    pub checksum_file: bool,
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
        self.access_key_id.validate(at, problems);
        self.secret_access_key.validate(at, problems);
        if self.access_key_id.is_given() != self.secret_access_key.is_given() {
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
        let part_size = self.part_size.map_or(DEFAULT_PART, |size| size.0);
        let buffers = part_size.saturating_mul(self.concurrency.unwrap_or(DEFAULT_CONCURRENCY) as u64);
        if buffers > MAX_BUFFERED {
            problems.add(
                at.key("concurrency"),
                format!(
                    "part_size × concurrency is {} MiB of part buffers; keep it within {} MiB",
                    buffers >> 20,
                    MAX_BUFFERED >> 20
                ),
            );
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
        let credentials = match (
            self.access_key_id.resolve(&env.base_dir)?,
            self.secret_access_key.resolve(&env.base_dir)?,
        ) {
            (Some(id), Some(secret)) => Some((id, secret)),
            _ => None,
        };
        Ok(Arc::new(S3Writer {
            settings: self.clone(),
            key,
            credentials,
            part_size: self.part_size.map_or(DEFAULT_PART, |s| s.0),
            concurrency: self.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            client: Arc::new(OnceCell::new()),
        }))
    }

    fn marker(&self, name: &str) -> Option<Box<dyn WriterSettings>> {
        Some(Box::new(S3Config {
            key: crate::writer::beside(&self.key, name),
            content_type: None,
            checksum_file: false,
            ..self.clone()
        }))
    }

    fn checksum_file(&self) -> bool {
        self.checksum_file
    }

    fn checksum_sidecar(&self) -> Option<Box<dyn WriterSettings>> {
        Some(Box::new(S3Config {
            key: format!("{}.sha256", self.key),
            content_type: Some("text/plain".to_owned()),
            if_none_match: false,
            checksum_file: false,
            ..self.clone()
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
        other => display_chain(&chain_of(other)),
    };
    DeliveryError::new(kind, format!("{action}: {detail}"))
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
        let put = self
            .client()
            .await
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_length(i64::try_from(body.len()).unwrap_or(i64::MAX))
            .body(ByteStream::from(body));
        let mut put = with_attributes!(put, self, self.metadata(ctx, Some(sha256)));
        if self.settings.if_none_match {
            put = put.if_none_match("*");
        }
        put.send()
            .await
            .map_err(|err| s3_error(&format!("PUT {}", self.location(key)), err))?;
        Ok(())
    }
}

#[async_trait]
impl Writer for S3Writer {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn describe(&self) -> String {
        format!("s3 s3://{}/{}", self.settings.bucket, self.key)
    }

    async fn write(
        &self,
        ctx: &RunContext,
        payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let key = self.key.render(ctx);
        let location = self.location(&key);
        if payload.offset() == 0
            && let Some(old) = saved_upload(&payload)
        {
            // Starting over: the earlier attempt's upload is of no use.
            self.abort(&old.key, &old.upload_id).await;
        }
        // A resumed upload keeps its part size; a new one of known length gets the part
        // size its length needs.
        let part_size = match (saved_upload(&payload), payload.len_hint()) {
            (Some(saved), _) if payload.offset() > 0 => saved.part_size,
            (_, Some(len)) => {
                let (size, _) = plan_parts(len, self.part_size).map_err(|()| {
                    DeliveryError::new(
                        ErrorKind::Rejected,
                        format!("{location}: {len} bytes is more than S3's largest object (10,000 parts of 5 GiB)"),
                    )
                })?;
                size
            }
            (_, None) => self.part_size,
        };
        if part_size != self.part_size {
            tracing::info!(%location, part_size_mib = part_size >> 20, "Parts larger than part_size: the payload needs them to stay within 10,000 parts.");
            let this = S3Writer {
                part_size,
                ..self.clone()
            };
            return this.write_parts(ctx, key, payload).await;
        }
        self.write_parts(ctx, key, payload).await
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
        // The upload's own part size: the configured one, or a larger one planned for it.
        if upload.key != self.key.render(ctx)
            || upload.part_size < self.part_size
            || upload.part_size > MAX_PART
        {
            return Ok(0);
        }
        let this = S3Writer {
            part_size: upload.part_size,
            ..self.clone()
        };
        this.bytes_held(&upload).await
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
    /// [`Writer::write`] with this writer's part size.
    async fn write_parts(
        &self,
        ctx: &RunContext,
        key: String,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
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
            let hold = payload.hold();
            let digest = payload.finish()?;
            hold.confirm().await?;
            self.put(ctx, &key, body, &digest.sha256).await?;
            self.verify(&key, digest.bytes).await?;
            return self.receipt(key, digest).await;
        }
        self.multipart(ctx, &key, first, &mut parts, &mut payload)
            .await?;
        let digest = payload.finish()?;
        self.verify(&key, digest.bytes).await?;
        tracing::debug!(location = %self.location(&key), "Multipart upload complete.");
        self.receipt(key, digest).await
    }

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
        Ok(digest.receipt(location, Some(link)))
    }
}

/// The part size and part count for a payload of `len` bytes: `part_size`, or when that
/// would take more than S3's [`MAX_PARTS`] parts, the smallest whole number of MiB that
/// does not; `Err` when not even 5 GiB parts (S3's largest) are enough.
fn plan_parts(len: u64, part_size: u64) -> Result<(u64, u64), ()> {
    let size = match len.div_ceil(part_size.max(1)) <= MAX_PARTS {
        true => part_size,
        false => len.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20,
    };
    let parts = len.div_ceil(size.max(1)).max(1);
    match size <= MAX_PART && parts <= MAX_PARTS {
        true => Ok((size, parts)),
        false => Err(()),
    }
}

/// The error for a payload that needs more than [`MAX_PARTS`] parts of `part_size`.
fn too_many_parts(location: &str, part_size: u64) -> DeliveryError {
    DeliveryError::new(
        ErrorKind::Rejected,
        format!(
            "{location}: more than {MAX_PARTS} parts of {} MiB (S3's limit, {} GiB); raise part_size",
            part_size >> 20,
            part_size.saturating_mul(MAX_PARTS) >> 30
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(extra: &str) -> Arc<dyn Writer> {
        let config: S3Config = toml::from_str(&format!(
            "bucket = \"bucket\"\nkey = \"k\"\nendpoint = \"http://127.0.0.1:9\"\n{extra}"
        ))
        .expect("settings");
        let env = BuildEnv::new(std::env::temp_dir()).expect("env");
        config.build(&env).expect("writer")
    }

    #[tokio::test]
    async fn a_payload_above_s3s_largest_object_is_refused_before_any_upload() {
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        // More than 10,000 parts of 5 GiB, announced; no byte is ever sent (nor any request
        // made: the endpoint is a closed port).
        let payload = Payload::new(rx, Some(MAX_PART * MAX_PARTS + 1), 0, None);
        use chrono::TimeZone as _;
        let slot = chrono_tz::UTC.timestamp_opt(0, 0).single().expect("instant");
        let ctx = RunContext::new("j", slot);
        let err = writer("part_size = \"5MiB\"")
            .write(&ctx, payload)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(err.to_string().contains("more than S3's largest object"), "{err}");
    }

    #[test]
    fn a_6_gib_payload_is_planned_within_s3s_part_limits() {
        const GIB: u64 = 1 << 30;
        const MIB: u64 = 1 << 20;
        // The default part size: 768 parts of 8 MiB, each within 5 MiB..5 GiB.
        assert_eq!(plan_parts(6 * GIB, DEFAULT_PART), Ok((8 * MIB, 768)));
        assert!((MIN_PART..=MAX_PART).contains(&DEFAULT_PART));
        // The smallest part size S3 takes: 1,229 parts, the last one 4 MiB.
        assert_eq!(plan_parts(6 * GIB, MIN_PART), Ok((MIN_PART, 1229)));
        assert_eq!(6 * GIB - 1228 * MIN_PART, 4 * MIB);
        // Exactly 10,000 parts of 5 MiB fit; one byte more raises the part to 6 MiB.
        assert_eq!(plan_parts(MIN_PART * MAX_PARTS, MIN_PART), Ok((MIN_PART, MAX_PARTS)));
        assert_eq!(
            plan_parts(MIN_PART * MAX_PARTS + 1, MIN_PART),
            Ok((6 * MIB, 8334))
        );
        // 100 GiB with the default: 11 MiB parts, within 10,000.
        assert_eq!(plan_parts(100 * GIB, DEFAULT_PART), Ok((11 * MIB, 9310)));
        // Beyond 10,000 parts of 5 GiB, nothing fits.
        assert_eq!(plan_parts(MAX_PART * MAX_PARTS, DEFAULT_PART), Ok((MAX_PART, MAX_PARTS)));
        assert_eq!(plan_parts(MAX_PART * MAX_PARTS + 1, DEFAULT_PART), Err(()));
        assert_eq!(plan_parts(0, DEFAULT_PART), Ok((DEFAULT_PART, 1)));
    }

    #[test]
    fn part_buffers_are_bounded() {
        let config: S3Config = toml::from_str(
            "bucket = \"bucket\"\nkey = \"k\"\npart_size = \"1GiB\"\nconcurrency = 4\n",
        )
        .expect("settings");
        let mut problems = Problems::default();
        config.validate(&KeyPath::root(), &mut problems);
        assert_eq!(problems.len(), 1);
    }
}

//! Writers: where a delivery's bytes go.
//!
//! A [`Writer`] consumes a [`Payload`] (the stream of chunks the source produced, after
//! transforms) and returns a [`Delivery`] receipt saying where the data went. The payload
//! counts and hashes what the writer reads from it, so every receipt carries the size and
//! sha256 of exactly what that writer consumed. A writer must make its output appear
//! atomically: a failed delivery never leaves a half-written file under the final name.
//!
//! Kinds: `local`, `s3`, `ftp`, `http`, `sftp`, one file (or folder) each; [`payload`] holds the stream a
//! writer reads and the accounting of what it read; [`limits`] the sessions a destination
//! allows at once.

pub mod limits;
mod payload;
mod upload;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub(crate) use payload::{Checkpoints, Frame};
pub use payload::{Digest, HashState, Hold, Payload};

pub use crate::report::Delivery;

use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::DeliveryError;
use crate::kinds::kinds;
use crate::settings::{KeyPath, Problems};
use crate::state::Checkpoint;

/// Where a delivery's bytes go.
#[async_trait]
pub trait Writer: fmt::Debug + Send + Sync {
    /// The kind's name, as written in `type` (`local`, `s3`, …); the activity puts it in
    /// the receipt.
    fn kind(&self) -> &'static str;

    /// A short description for logs, e.g. `local /srv/out/{job}.csv`. Never includes a secret.
    fn describe(&self) -> String;

    /// Writes the whole payload for `ctx`'s run and returns the receipt. Called once per
    /// attempt. On error, nothing may remain under the final name that was not there before.
    ///
    /// When [`Payload::offset`] is above zero the run is resuming: the first `offset` bytes
    /// were written by an earlier attempt (see [`Writer::resume_point`]) and the stream
    /// starts after them; the writer feeds them to [`Payload::absorb_prefix`] so the
    /// receipt's sha256 covers the whole. A writer that can resume saves its progress now
    /// and then with [`Payload::save_checkpoint`].
    async fn write(&self, ctx: &RunContext, payload: Payload) -> Result<Delivery, DeliveryError>;

    /// How many bytes of the payload this writer still holds from an earlier attempt of
    /// `ctx`'s run, given the checkpoint it saved then; 0 to start over (the default). An
    /// error when that cannot be told now (the destination is unreachable): the attempt
    /// fails and is retried, rather than throwing away what the destination holds.
    async fn resume_point(
        &self,
        _ctx: &RunContext,
        _checkpoint: &Checkpoint,
    ) -> Result<u64, DeliveryError> {
        Ok(0)
    }

    /// Whether the writer can resume from fewer bytes than its [`Writer::resume_point`]
    /// (when another writer of the job holds less): a local file can be cut back, an
    /// upload whose hash state is kept at its last part cannot. No by default.
    fn can_rewind(&self) -> bool {
        false
    }

    /// The destination's session limit (`max_connections`), when it has one: the activity
    /// takes a session for this writer before it starts ([`limits`]).
    fn connection_limit(&self) -> Option<limits::ConnectionLimit> {
        None
    }

    /// The run failed for good: remove what its attempts left for a resume (temporary files,
    /// unfinished uploads), given the writer's last checkpoint. Best effort; the default has
    /// nothing to remove.
    async fn discard(&self, _ctx: &RunContext, _checkpoint: Option<&Checkpoint>) {}
}

/// The job-file settings of a writer kind.
pub trait WriterSettings: fmt::Debug + Send + Sync {
    /// Checks the settings without any I/O, recording problems at `at`.
    fn validate(&self, at: &KeyPath, problems: &mut Problems);

    /// Builds the writer: reads secrets, prepares clients.
    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError>;

    /// The same destination for a completion marker: the file `name` beside the delivered
    /// one (the path's last segment replaced), always overwritten. `None` when the kind
    /// cannot write one.
    fn marker(&self, _name: &str) -> Option<Box<dyn WriterSettings>> {
        None
    }

    /// Whether the job file asks for a checksum file beside each delivery
    /// (`checksum_file = true`).
    fn checksum_file(&self) -> bool {
        false
    }

    /// The same destination for the checksum file: the delivered path with `.sha256`
    /// appended, always overwritten, with no checksum file of its own. `None` when the kind
    /// cannot write one.
    fn checksum_sidecar(&self) -> Option<Box<dyn WriterSettings>> {
        None
    }
}

/// A checksum file's text for `delivery`, in `sha256sum -c` format: the sha256, two spaces
/// and the delivered file's name (the last segment of its location).
pub fn checksum_line(delivery: &crate::report::Delivery) -> String {
    let name = delivery
        .location
        .rsplit('/')
        .next()
        .unwrap_or(&delivery.location);
    format!("{}  {name}\n", delivery.sha256)
}

/// `path` with its last segment replaced by `name`: `out/{scheduled:%F}/data.csv` →
/// `out/{scheduled:%F}/_SUCCESS`.
pub fn beside(path: &str, name: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name.to_owned(),
    }
}

/// Large settings structs are boxed in the kinds enum; they are still settings.
impl<T: WriterSettings + ?Sized> WriterSettings for Box<T> {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        (**self).validate(at, problems);
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        (**self).build(env)
    }

    fn marker(&self, name: &str) -> Option<Box<dyn WriterSettings>> {
        (**self).marker(name)
    }

    fn checksum_file(&self) -> bool {
        (**self).checksum_file()
    }

    fn checksum_sidecar(&self) -> Option<Box<dyn WriterSettings>> {
        (**self).checksum_sidecar()
    }
}

kinds! {
    /// `writers = [{ type = "…", … }]`: one of a job's destinations.
    pub enum WriterConfig: WriterSettings {
        /// `type = "local"`: a file on this machine.
        mod local: "local" => Local(LocalConfig),
        /// `type = "s3"`: an object in S3 or an S3-compatible store.
        mod s3: "s3" => S3(Box<S3Config>),
        /// `type = "ftp"`: a file on an FTP server.
        mod ftp: "ftp" => Ftp(Box<FtpConfig>),
        /// `type = "http"`: the body of an HTTP PUT or POST.
        mod http: "http" => Http(Box<HttpConfig>),
        /// `type = "sftp"`: a file on an SSH server, over SFTP.
        mod sftp: "sftp" => Sftp(Box<SftpConfig>),
    }
}

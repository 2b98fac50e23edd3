//! What building a source, writer or notifier may use: the job file's directory and the
//! shared HTTP client.
//!
//! A leaf: every kind's `build` takes a [`BuildEnv`], and nothing here knows of jobs,
//! runners or the daemon.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{DeliveryError, ErrorKind};

/// What building a source, writer or notifier may use.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// The directory relative paths are taken from (the job file's).
    pub base_dir: PathBuf,
    /// The HTTP client shared by every HTTP-speaking part.
    pub http: reqwest::Client,
}

impl BuildEnv {
    /// An environment for a job file in `base_dir`.
    pub fn new(base_dir: PathBuf) -> Result<BuildEnv, DeliveryError> {
        // Every TLS client here uses aws-lc-rs; making it the process default keeps a
        // library that asks for "the default" from failing when another crate's features
        // also compile in ring. (An error means one is installed already.)
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            .build()
            .map_err(|err| {
                DeliveryError::new(ErrorKind::Config, "cannot set up the HTTP client")
                    .with_source(err)
            })?;
        Ok(BuildEnv { base_dir, http })
    }
}

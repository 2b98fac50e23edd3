//! `type = "local"`: a file on this machine, written under a temporary name and renamed.
//!
//! The data goes to `<final>.partial-<run_id>` in the final directory, is fsynced, and is
//! renamed onto the final name (then the directory is fsynced), so readers see either the
//! old file, no file, or the whole new one. Parent directories are created. A failed or
//! cancelled delivery removes its temporary file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use super::{Delivery, Payload, Writer, WriterSettings};
use crate::RunContext;
use crate::config::{KeyPath, Problems};
use crate::error::{DeliveryError, ErrorKind};
use crate::job::BuildEnv;
use crate::template::Template;

/// Settings of a `local` writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The file to write; a template (`out/{job}/{scheduled:%Y/%m/%d}.csv`). Relative paths
    /// are taken from the job file's directory. A rendered path may not leave the
    /// directory its literal prefix names.
    pub path: String,
    /// Whether an existing file under the final name is replaced (`true`, the default) or
    /// the delivery fails instead (`false`).
    #[serde(default = "default_overwrite")]
    pub overwrite: bool,
}

fn default_overwrite() -> bool {
    true
}

impl WriterSettings for LocalConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.path.is_empty() || self.path.ends_with('/') {
            problems.add(at.key("path"), "must name a file, not a directory");
            return;
        }
        if let Err(err) = Template::parse_path(&self.path) {
            problems.add(at.key("path"), err.to_string());
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        let path = Template::parse_path(&self.path)
            .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string()))?;
        Ok(Arc::new(LocalWriter {
            path,
            root: env.base_dir.clone(),
            overwrite: self.overwrite,
        }))
    }
}

/// A writer to a local file.
#[derive(Debug, Clone)]
pub struct LocalWriter {
    path: Template,
    root: PathBuf,
    overwrite: bool,
}

impl LocalWriter {
    /// A writer to `path` (a path template; relative paths are taken from the current
    /// directory), replacing an existing file.
    pub fn new(path: Template) -> LocalWriter {
        LocalWriter {
            path,
            root: PathBuf::new(),
            overwrite: true,
        }
    }
}

/// Removes a temporary file when dropped, unless it was committed.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the file may not have been created.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn temp_path(target: &Path, run_id: &str) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{run_id}"));
    target.with_file_name(name)
}

#[async_trait]
impl Writer for LocalWriter {
    fn describe(&self) -> String {
        format!("local {}", self.path)
    }

    async fn write(
        &self,
        ctx: &RunContext,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let target = self.path.render_path(ctx, &self.root)?;
        let dir = target.parent().unwrap_or(Path::new(".")).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(|err| {
            DeliveryError::io(format_args!("create directory {}", dir.display()), err)
        })?;
        if !self.overwrite && tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Err(exists(&target));
        }

        let mut temp = TempFile {
            path: temp_path(&target, &ctx.run_id),
            committed: false,
        };
        let shown = temp.path.display().to_string();
        let mut file = tokio::fs::File::create(&temp.path)
            .await
            .map_err(|err| DeliveryError::io(format_args!("create {shown}"), err))?;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|err| DeliveryError::io("read the data", err))?;
            file.write_all(&chunk)
                .await
                .map_err(|err| DeliveryError::io(format_args!("write {shown}"), err))?;
        }
        let digest = payload.finish()?;
        file.flush()
            .await
            .map_err(|err| DeliveryError::io(format_args!("write {shown}"), err))?;
        file.sync_all()
            .await
            .map_err(|err| DeliveryError::io(format_args!("fsync {shown}"), err))?;
        drop(file);

        commit(&temp.path, &target, self.overwrite).await?;
        temp.committed = true;
        sync_dir(&dir).await?;

        let location = std::path::absolute(&target).unwrap_or(target);
        Ok(Delivery {
            writer: "local".into(),
            link: Some(format!("file://{}", location.display())),
            location: location.display().to_string(),
            bytes: digest.bytes,
            sha256: digest.sha256,
        })
    }
}

fn exists(target: &Path) -> DeliveryError {
    DeliveryError::new(
        ErrorKind::Rejected,
        format!("{} exists and `overwrite` is false", target.display()),
    )
}

/// Moves the finished temporary file onto the final name. Without `overwrite`, a hard link
/// makes the final name only if it does not exist yet (atomically), then the temporary
/// name is removed.
async fn commit(temp: &Path, target: &Path, overwrite: bool) -> Result<(), DeliveryError> {
    let rename = |err| DeliveryError::io(format_args!("rename onto {}", target.display()), err);
    if overwrite {
        return tokio::fs::rename(temp, target).await.map_err(rename);
    }
    match tokio::fs::hard_link(temp, target).await {
        Ok(()) => {
            let _ = tokio::fs::remove_file(temp).await;
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = tokio::fs::remove_file(temp).await;
            Err(exists(target))
        }
        Err(err) => Err(rename(err)),
    }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), DeliveryError> {
    let sync = |err| DeliveryError::io(format_args!("fsync directory {}", dir.display()), err);
    let handle = tokio::fs::File::open(dir).await.map_err(sync)?;
    handle.sync_all().await.map_err(sync)
}

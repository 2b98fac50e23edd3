//! `type = "files"`: the files matching a pattern that appeared (or changed) since the last
//! successful delivery, each delivered on its own.
//!
//! A run lists the files `glob` matches, leaves out those younger than `min_age` (maybe
//! still being written: they wait for a later run) and those already delivered as they are
//! now, and delivers the rest one after another, in name order, each through every writer
//! with its own receipts; `{file_name}` and `{file_stem}` in the writers' templates name it.
//! Once every writer has a file, it is noted in the job's cursor in the state store (its
//! path, size and modification time: a file whose content changes is delivered again) and
//! `after` is applied: kept, deleted or moved to a directory. A retry lists again, so files
//! an earlier attempt delivered whole are not delivered twice. A pattern matching nothing
//! is a successful run with nothing to deliver.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{DataSource, SourceSettings, SourceStream};
use crate::build_env::BuildEnv;
use crate::context::{RunContext, SourceFile};
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{ConfigDuration, KeyPath, Problems};

/// Settings of a `files` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// The files to deliver: a shell pattern (`*`, `?`, `[…]`, `**`), relative to the job
    /// file's directory, e.g. `"/srv/drop/*.csv"`.
    pub glob: String,
    /// How old (since its last change) a file must be to be delivered (default: any age).
    #[serde(default)]
    pub min_age: Option<ConfigDuration>,
    /// What becomes of a file once every writer has it: `"keep"` (the default), `"delete"`
    /// or `"move:DIR"` (relative to the job file's directory).
    #[serde(default)]
    pub after: Option<String>,
}

/// `after`: what becomes of a delivered file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum After {
    Keep,
    Delete,
    Move(PathBuf),
}

fn parse_after(text: Option<&str>) -> Result<After, String> {
    match text {
        None | Some("keep") => Ok(After::Keep),
        Some("delete") => Ok(After::Delete),
        Some(other) => match other.strip_prefix("move:") {
            Some(dir) if !dir.is_empty() => Ok(After::Move(PathBuf::from(dir))),
            _ => Err("must be \"keep\", \"delete\" or \"move:DIR\"".to_owned()),
        },
    }
}

impl SourceSettings for FilesConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self.glob.is_empty() {
            problems.add(at.key("glob"), "must not be empty");
        } else if let Err(err) = glob::Pattern::new(&self.glob) {
            problems.add(at.key("glob"), format!("is not a pattern: {}", err.msg));
        }
        if let Err(err) = parse_after(self.after.as_deref()) {
            problems.add(at.key("after"), err);
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError> {
        let config = |msg: String| DeliveryError::new(ErrorKind::Config, msg);
        let after = match parse_after(self.after.as_deref()).map_err(|err| config(format!("after {err}")))? {
            After::Move(dir) => After::Move(env.base_dir.join(dir)),
            other => other,
        };
        let pattern = env.base_dir.join(&self.glob).display().to_string();
        glob::Pattern::new(&pattern).map_err(|err| config(format!("glob {}", err.msg)))?;
        Ok(Arc::new(FilesSource {
            pattern,
            min_age: self.min_age.map_or(Duration::ZERO, ConfigDuration::get),
            after,
        }))
    }
}

/// A source that delivers new files one by one.
#[derive(Debug, Clone)]
pub struct FilesSource {
    pattern: String,
    min_age: Duration,
    after: After,
}

/// A file as it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Delivered {
    len: u64,
    modified_ns: i64,
}

/// The job's cursor: every file delivered that is still there, as it was.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    files: BTreeMap<PathBuf, Delivered>,
}

impl FilesSource {
    async fn seen(&self, ctx: &RunContext) -> Result<Seen, DeliveryError> {
        let Some(ledger) = &ctx.ledger else {
            return Ok(Seen::default());
        };
        let kept = ledger.store.cursor(&ctx.job).await.map_err(|err| {
            DeliveryError::new(ErrorKind::Io, format!("read the files delivered before: {err}"))
        })?;
        Ok(kept
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default())
    }

    /// The matching files, oldest-enough and not delivered as they are now, in name order.
    fn list(&self, seen: &Seen, now: SystemTime) -> Result<Vec<SourceFile>, DeliveryError> {
        let paths = glob::glob(&self.pattern).map_err(|err| {
            DeliveryError::new(ErrorKind::Config, format!("glob {}", err.msg))
        })?;
        let mut files = Vec::new();
        for entry in paths {
            let path = match entry {
                Ok(path) => path,
                Err(err) => {
                    tracing::warn!(error = %err, "A path the pattern matched cannot be read; skipped.");
                    continue;
                }
            };
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if now.duration_since(modified).unwrap_or_default() < self.min_age {
                tracing::info!(file = %path.display(), "Younger than min_age: it waits for a later run.");
                continue;
            }
            let modified_ns = modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| i64::try_from(since.as_nanos()).unwrap_or(i64::MAX));
            let now_is = Delivered {
                len: meta.len(),
                modified_ns,
            };
            if seen.files.get(&path) == Some(&now_is) {
                continue;
            }
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(SourceFile {
                path,
                name,
                stem,
                len: now_is.len,
                modified_ns,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Notes `file` as delivered in the job's cursor.
    async fn note(&self, ctx: &RunContext, file: &SourceFile) -> Result<(), DeliveryError> {
        let Some(ledger) = &ctx.ledger else {
            return Ok(());
        };
        let mut seen = self.seen(ctx).await?;
        seen.files.insert(
            file.path.clone(),
            Delivered {
                len: file.len,
                modified_ns: file.modified_ns,
            },
        );
        let text = serde_json::to_string(&seen).unwrap_or_default();
        ledger.store.set_cursor(&ctx.job, &text).await.map_err(|err| {
            DeliveryError::new(ErrorKind::Io, format!("note the file as delivered: {err}"))
        })
    }

    /// Applies `after` to a delivered file; a failure is a warning (the file is delivered).
    fn settle(&self, path: &Path) {
        let done = match &self.after {
            After::Keep => return,
            After::Delete => std::fs::remove_file(path),
            After::Move(dir) => std::fs::create_dir_all(dir).and_then(|()| {
                let name = path.file_name().unwrap_or_default();
                std::fs::rename(path, dir.join(name))
            }),
        };
        if let Err(err) = done {
            tracing::warn!(file = %path.display(), error = %err, after = ?self.after, "The delivered file could not be deleted or moved; it stays.");
        }
    }

    fn file<'a>(&self, ctx: &'a RunContext) -> Result<&'a SourceFile, DeliveryError> {
        ctx.file.as_ref().ok_or_else(|| {
            DeliveryError::new(ErrorKind::Config, "a files source delivers one file at a time")
        })
    }
}

#[async_trait]
impl DataSource for FilesSource {
    fn describe(&self) -> String {
        format!("files {}", self.pattern)
    }

    async fn files(&self, ctx: &RunContext) -> Result<Option<Vec<SourceFile>>, DeliveryError> {
        if ctx.ledger.is_none() && self.after == After::Keep {
            tracing::warn!(pattern = %self.pattern, "No state store: every matching file is delivered at every run.");
        }
        let mut seen = self.seen(ctx).await?;
        let source = self.clone();
        let (files, seen, pruned) = tokio::task::spawn_blocking(move || {
            // Files delivered before that are gone (deleted, moved) leave the cursor, once a
            // run, so that it holds no more than the directory does.
            let before = seen.files.len();
            seen.files.retain(|path, _| path.exists());
            let pruned = seen.files.len() < before;
            source
                .list(&seen, SystemTime::now())
                .map(|files| (files, seen, pruned))
        })
        .await
        .map_err(|err| DeliveryError::new(ErrorKind::Io, format!("list the files: {err}")))??;
        if pruned && let Some(ledger) = &ctx.ledger {
            let text = serde_json::to_string(&seen).unwrap_or_default();
            ledger.store.set_cursor(&ctx.job, &text).await.map_err(|err| {
                DeliveryError::new(ErrorKind::Io, format!("keep the files delivered: {err}"))
            })?;
        }
        Ok(Some(files))
    }

    async fn open(&self, ctx: &RunContext) -> Result<SourceStream, DeliveryError> {
        super::file::open_path(&self.file(ctx)?.path, 0).await
    }

    async fn open_at(
        &self,
        ctx: &RunContext,
        offset: u64,
    ) -> Result<Option<SourceStream>, DeliveryError> {
        super::file::open_path(&self.file(ctx)?.path, offset)
            .await
            .map(Some)
    }

    async fn delivered(&self, ctx: &RunContext) -> Result<(), DeliveryError> {
        let Some(file) = &ctx.file else {
            return Ok(());
        };
        self.note(ctx, file).await?;
        let (source, path) = (self.clone(), file.path.clone());
        let _ = tokio::task::spawn_blocking(move || source.settle(&path)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_is_keep_delete_or_a_move() {
        assert_eq!(parse_after(None), Ok(After::Keep));
        assert_eq!(parse_after(Some("delete")), Ok(After::Delete));
        assert_eq!(
            parse_after(Some("move:done")),
            Ok(After::Move(PathBuf::from("done")))
        );
        assert!(parse_after(Some("move:")).is_err());
        assert!(parse_after(Some("archive")).is_err());
    }
}

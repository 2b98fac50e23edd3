//! `type = "local"`: a file on this machine, written under a temporary name and renamed.
//!
//! Each attempt writes a fresh `<final>.partial-<run_id>-<attempt>` in the final directory,
//! created exclusively and never through a symbolic link (`O_CREAT|O_EXCL|O_NOFOLLOW`); it is
//! fsynced and renamed onto the final name (then the directory is fsynced), so readers see
//! either the old file, no file, or the whole new one, and a link planted under either name
//! is replaced, never written through. Missing directories below the path's base directory
//! are created one by one, and a symbolic link among them is refused: a path cannot be led
//! out of its base.
//!
//! With a state store, every couple of seconds the temporary file is fsynced and its length
//! saved as a checkpoint; a retry or a restarted daemon cuts the file back to that length and
//! appends from there (when the source can start mid-way), and the run's final failure
//! removes it. Without a store, a failed or cancelled attempt removes its temporary file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{Delivery, Payload, Writer, WriterSettings};
use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{KeyPath, Problems};
use crate::state::Checkpoint;
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
    /// The delivered file's permissions, in octal (`"0640"`); by default what the umask
    /// leaves (`0600` under the shipped unit, whose `UMask=` is `0077`).
    #[serde(default)]
    pub mode: Option<String>,
    /// The delivered file's group, by name or number (`"consumers"`): with `mode = "0640"`
    /// its members can read deliveries. ferry must be a member (or root).
    #[serde(default)]
    pub group: Option<String>,
    /// Whether a checksum file `NAME.sha256` (`sha256sum -c` format) is written beside each
    /// delivery, after it, for consumers that verify what they download.
    #[serde(default)]
    pub checksum_file: bool,
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
        if let Some(mode) = &self.mode
            && let Err(err) = parse_mode(mode)
        {
            problems.add(at.key("mode"), err);
        }
        if self.group.as_deref() == Some("") {
            problems.add(at.key("group"), "must name a group");
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn Writer>, DeliveryError> {
        let path = Template::parse_path(&self.path)
            .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string()))?;
        let config_error = |msg: String| DeliveryError::new(ErrorKind::Config, msg);
        let mode = self.mode.as_deref().map(parse_mode).transpose().map_err(config_error)?;
        let group = self.group.as_deref().map(find_group).transpose()?;
        Ok(Arc::new(LocalWriter {
            path,
            root: env.base_dir.clone(),
            overwrite: self.overwrite,
            mode,
            group,
        }))
    }

    fn marker(&self, name: &str) -> Option<Box<dyn WriterSettings>> {
        Some(Box::new(LocalConfig {
            path: super::beside(&self.path, name),
            overwrite: true,
            checksum_file: false,
            ..self.clone()
        }))
    }

    fn checksum_file(&self) -> bool {
        self.checksum_file
    }

    fn checksum_sidecar(&self) -> Option<Box<dyn WriterSettings>> {
        Some(Box::new(LocalConfig {
            path: format!("{}.sha256", self.path),
            overwrite: true,
            checksum_file: false,
            ..self.clone()
        }))
    }
}

/// A writer to a local file.
#[derive(Debug, Clone)]
pub struct LocalWriter {
    path: Template,
    root: PathBuf,
    overwrite: bool,
    mode: Option<u32>,
    group: Option<nix::unistd::Gid>,
}

impl LocalWriter {
    /// A writer to `path` (a path template; relative paths are taken from the current
    /// directory), replacing an existing file.
    pub fn new(path: Template) -> LocalWriter {
        LocalWriter {
            path,
            root: PathBuf::new(),
            overwrite: true,
            mode: None,
            group: None,
        }
    }
}

/// Removes a temporary file when dropped, unless it was committed or is kept for a resume.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// The file has its final name: nothing is left to remove.
    fn committed(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: the file may not have been created.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How often a writing attempt makes its progress durable and records a checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The temporary file, written by one thread of its own for the whole attempt: each chunk
/// goes from the payload to `write(2)` as it is, with no copy into another buffer and no
/// hand-off to the blocking pool per write (tokio's `File` does both for every chunk). The
/// thread is not one of tokio's blocking pool: it waits for data for as long as the
/// delivery lasts, and a thousand such waits must not use up the pool that the steps
/// feeding them need.
struct FileSink {
    orders: tokio::sync::mpsc::Sender<Order>,
    done: tokio::sync::oneshot::Receiver<std::io::Result<std::fs::File>>,
}

enum Order {
    Write(bytes::Bytes),
    /// fsync what was written before, and answer.
    Sync(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

/// Starts the disk writing what was written, every [`WriteBehind::EVERY`] bytes, without
/// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the final fsync then has
/// little left to wait for, instead of the whole payload at once (the kernel would
/// otherwise hold it all in the page cache until then).
#[derive(Default)]
struct WriteBehind {
    /// Bytes written since writeback was last started.
    pending: usize,
    /// Where in the file the last started writeback ended.
    started_to: u64,
}

impl WriteBehind {
    const EVERY: usize = 8 << 20;

    fn wrote(&mut self, file: &std::fs::File, bytes: usize) {
        use std::os::fd::AsRawFd as _;
        self.pending += bytes;
        if self.pending < WriteBehind::EVERY {
            return;
        }
        self.pending = 0;
        let Ok(end) = file.metadata().map(|m| m.len()) else {
            return;
        };
        let (Ok(from), Ok(len)) = (
            libc::off64_t::try_from(self.started_to),
            libc::off64_t::try_from(end.saturating_sub(self.started_to)),
        ) else {
            return;
        };
        // SAFETY: the descriptor is open for as long as `file` is borrowed; the call only
        // asks the kernel to start writing pages back. Its failure changes nothing: the
        // final fsync writes whatever is left, and reports errors.
        let _ = unsafe {
            libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        self.started_to = end;
    }
}

impl FileSink {
    /// Chunks queued for the thread: one being written, two waiting.
    const QUEUED: usize = 2;

    fn start(file: std::fs::File) -> std::io::Result<FileSink> {
        let (orders, mut queue) = tokio::sync::mpsc::channel(FileSink::QUEUED);
        let (finished, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("ferry-write".into())
            .spawn(move || {
                use std::io::Write as _;
                let mut file = file;
                let mut written = Ok(());
                let mut behind = WriteBehind::default();
                while let Some(order) = queue.blocking_recv() {
                    match order {
                        Order::Write(chunk) => {
                            written = file.write_all(&chunk);
                            if written.is_err() {
                                break;
                            }
                            behind.wrote(&file, chunk.len());
                        }
                        Order::Sync(answer) => {
                            let _ = answer.send(file.sync_data());
                        }
                    }
                }
                let _ = finished.send(written.map(|()| file));
            })?;
        Ok(FileSink { orders, done })
    }

    async fn write(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        match self.orders.send(Order::Write(chunk)).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.failure().await),
        }
    }

    /// Makes everything written so far durable.
    async fn sync(&mut self) -> std::io::Result<()> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.orders.send(Order::Sync(answer)).await.is_err() {
            return Err(self.failure().await);
        }
        match answered.await {
            Ok(synced) => synced,
            Err(_) => Err(self.failure().await),
        }
    }

    /// Waits until everything is written; the file.
    async fn finish(self) -> std::io::Result<std::fs::File> {
        drop(self.orders);
        self.done
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the writing thread stopped")))
    }

    /// Why the thread stopped taking orders (it stops only at an error).
    async fn failure(&mut self) -> std::io::Error {
        match (&mut self.done).await {
            Ok(Err(err)) => err,
            _ => std::io::Error::other("the writing thread stopped"),
        }
    }
}

/// The finished temporary file's `group` and `mode` (set through the open file: never a
/// path that could have been swapped for a link) and its fsync, in one blocking call.
struct Seal {
    group: Option<nix::unistd::Gid>,
    mode: Option<u32>,
}

impl Seal {
    fn run(&self, file: std::fs::File, shown: &str) -> Result<(), DeliveryError> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(gid) = self.group {
            nix::unistd::fchown(&file, None, Some(gid)).map_err(|err| {
                DeliveryError::io(format_args!("set the group of {shown}"), err.into())
            })?;
        }
        if let Some(mode) = self.mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|err| DeliveryError::io(format_args!("set the mode of {shown}"), err))?;
        }
        file.sync_all()
            .map_err(|err| DeliveryError::io(format_args!("fsync {shown}"), err))
    }
}

/// `mode`: octal permission bits, at most `0777` (no set-id or sticky bits).
fn parse_mode(mode: &str) -> Result<u32, String> {
    match u32::from_str_radix(mode.trim_start_matches("0o"), 8) {
        Ok(bits) if bits <= 0o777 => Ok(bits),
        _ => Err(format!(
            "{mode:?} is not a permission mode: octal digits up to 0777, e.g. \"0640\""
        )),
    }
}

/// `group`: a group name, or a number.
fn find_group(group: &str) -> Result<nix::unistd::Gid, DeliveryError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(gid));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid),
        Ok(None) => Err(DeliveryError::new(
            ErrorKind::Config,
            format!("no group named {group:?} on this machine"),
        )),
        Err(err) => Err(DeliveryError::io(
            format_args!("look up group {group:?}"),
            err.into(),
        )),
    }
}

/// The temporary file of attempt `attempt` of run `run_id`, beside `target`.
fn temp_path(target: &Path, run_id: &str, attempt: u32) -> PathBuf {
    let mut name = temp_prefix(target, run_id);
    name.push(attempt.to_string());
    target.with_file_name(name)
}

/// `<final name>.partial-<run_id>-`: what every temporary file of the run is called.
fn temp_prefix(target: &Path, run_id: &str) -> std::ffi::OsString {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{run_id}-"));
    name
}

/// The temporary file `checkpoint` names, if it is one of this run's beside `target` (a
/// checkpoint is data from the store: it may not point anywhere else).
fn recorded_temp(checkpoint: &Checkpoint, target: &Path, run_id: &str) -> Option<PathBuf> {
    let recorded = PathBuf::from(checkpoint.document.get("temp")?.as_str()?);
    let prefix = temp_prefix(target, run_id);
    let name = recorded.file_name()?.to_str()?;
    let attempt = name.strip_prefix(prefix.to_str()?)?;
    let plain = !attempt.is_empty() && attempt.bytes().all(|b| b.is_ascii_digit());
    (plain && recorded.parent() == target.parent()).then_some(recorded)
}

/// Creates `path` for writing, failing if anything (a file, a symbolic link) is there.
fn create_exclusive(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// One lock per directory (by a hash of its path, 64 stripes) for the calls that change
/// it. The kernel serializes them per directory anyway; threads that queue here sleep,
/// while threads that queue in the kernel spin on its lock while the holder works (a
/// thousand deliveries a second into one ext4 directory spent a fifth of the CPU spinning).
fn dir_lock(dir: &Path) -> std::sync::MutexGuard<'static, ()> {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    static STRIPES: [std::sync::Mutex<()>; 64] = [const { std::sync::Mutex::new(()) }; 64];
    let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(dir) as usize % 64;
    STRIPES[stripe]
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates attempt's temporary file `temp` afresh: what an earlier attempt left (`old`) is
/// removed, and whatever sits under `temp`'s own name (a link planted to make ferry write
/// through it) is unlinked, never followed. In the usual case (nothing there) this is one
/// `open`: no directory is changed for nothing.
fn create_fresh(temp: &Path, old: Option<&Path>) -> Result<std::fs::File, DeliveryError> {
    let create = |err| DeliveryError::io(format_args!("create {}", temp.display()), err);
    let _changing = dir_lock(temp.parent().unwrap_or(Path::new(".")));
    if let Some(old) = old {
        let _ = std::fs::remove_file(old);
    }
    match create_exclusive(temp) {
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(temp);
            create_exclusive(temp).map_err(create)
        }
        done => done.map_err(create),
    }
}

/// Creates the directories of `dir` below `base` one at a time, refusing a symbolic link
/// among them (`base` itself, the path template's literal prefix, is the operator's).
/// Directories that exist are only looked at (a `mkdir` that fails locks the directory
/// above all the same).
fn create_dirs_within(base: &Path, dir: &Path) -> Result<(), DeliveryError> {
    let create = |path: &Path, err| {
        DeliveryError::io(format_args!("create directory {}", path.display()), err)
    };
    if !std::fs::metadata(base).is_ok_and(|meta| meta.is_dir()) {
        std::fs::create_dir_all(base).map_err(|err| create(base, err))?;
    }
    let Ok(tail) = dir.strip_prefix(base) else {
        return Err(DeliveryError::new(
            ErrorKind::Config,
            format!("{} is not below {}", dir.display(), base.display()),
        ));
    };
    let mut at = base.to_path_buf();
    for part in tail.components() {
        at.push(part);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&at) {
                    Ok(()) => continue,
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::symlink_metadata(&at).map_err(|err| create(&at, err))?
                    }
                    Err(err) => return Err(create(&at, err)),
                }
            }
            Err(err) => return Err(create(&at, err)),
        };
        if meta.file_type().is_symlink() {
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!(
                    "{} is a symbolic link: a delivery never leaves {} through one",
                    at.display(),
                    base.display()
                ),
            ));
        }
        if !meta.is_dir() {
            return Err(DeliveryError::new(
                ErrorKind::Config,
                format!("{} is not a directory", at.display()),
            ));
        }
    }
    Ok(())
}

/// Runs file-system work `f` on tokio's blocking pool: several system calls in one hop.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeliveryError> + Send + 'static,
) -> Result<T, DeliveryError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|err| Err(DeliveryError::new(ErrorKind::Io, format!("file-system task failed: {err}"))))
}

#[async_trait]
impl Writer for LocalWriter {
    fn kind(&self) -> &'static str {
        "local"
    }

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

        // With checkpoints, a failed or cancelled attempt keeps its temporary file for the
        // next attempt (or the next daemon) to resume; `discard` removes it if the run fails.
        let resumed = (payload.offset() > 0)
            .then(|| payload.checkpoint().and_then(|c| recorded_temp(c, &target, &ctx.run_id)))
            .flatten();
        if payload.offset() > 0 && resumed.is_none() {
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                "resuming, but the checkpoint names no temporary file of this run",
            ));
        }
        let mut temp = TempFile {
            path: resumed
                .clone()
                .unwrap_or_else(|| temp_path(&target, &ctx.run_id, ctx.attempt)),
            keep: payload.checkpointing(),
        };
        let shown = temp.path.display().to_string();
        let document = serde_json::json!({ "temp": shown });
        // Starting over: what an earlier attempt left is of no use.
        let old = match resumed {
            Some(_) => None,
            None => payload
                .checkpoint()
                .and_then(|c| recorded_temp(c, &target, &ctx.run_id)),
        };
        let fresh = {
            let (base, dir, target, temp) = (
                self.root.join(self.path.base_dir()),
                dir.clone(),
                target.clone(),
                temp.path.clone(),
            );
            let (overwrite, resuming) = (self.overwrite, resumed.is_some());
            blocking(move || {
                create_dirs_within(&base, &dir)?;
                if !overwrite && target.try_exists().unwrap_or(false) {
                    return Err(exists(&target));
                }
                match resuming {
                    true => Ok(None),
                    false => create_fresh(&temp, old.as_deref()).map(Some),
                }
            })
            .await?
        };
        let file = match fresh {
            Some(file) => {
                // Recorded at once, so that a run failing before its first checkpoint
                // still removes this file (`discard`).
                payload.save_checkpoint(document.clone(), 0).await;
                file
            }
            None => reopen(&temp.path, &mut payload).await?.into_std().await,
        };
        let write_error = |err| DeliveryError::io(format_args!("write {shown}"), err);
        let mut sink = FileSink::start(file).map_err(write_error)?;
        let mut written = payload.offset();
        let mut last_checkpoint = tokio::time::Instant::now();
        let mut saved = payload.offset();
        while let Some(chunk) = payload.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    // The source failed: what it gave before is a true prefix of the
                    // payload, so the next attempt can continue after it rather than from
                    // the last timed checkpoint (a paged source resumes at the next page).
                    if payload.checkpointing() && written > saved && sink.sync().await.is_ok() {
                        payload.save_checkpoint(document.clone(), written).await;
                    }
                    return Err(DeliveryError::io("read the data", err));
                }
            };
            written += chunk.len() as u64;
            sink.write(chunk).await.map_err(write_error)?;
            if payload.checkpointing() && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                sink.sync()
                    .await
                    .map_err(|err| DeliveryError::io(format_args!("fsync {shown}"), err))?;
                payload.save_checkpoint(document.clone(), written).await;
                saved = written;
                last_checkpoint = tokio::time::Instant::now();
            }
        }
        let hold = payload.hold();
        let digest = payload.finish()?;
        let file = sink.finish().await.map_err(write_error)?;
        let seal = Seal {
            group: self.group,
            mode: self.mode,
        };
        blocking(move || seal.run(file, &shown)).await?;
        hold.confirm().await?;

        // From here on the temporary file is renamed or removed, never resumed. (Dropped
        // before this, as when the run is cancelled during the fsync, `temp` is removed
        // or kept for a resume here; from here on the move completes either way.)
        let overwrite = self.overwrite;
        let target = blocking(move || {
            temp.keep = false;
            let changing = dir_lock(&dir);
            commit(&temp.path, &target, overwrite)?;
            temp.committed();
            drop(changing);
            sync_dir(&dir)?;
            Ok(target)
        })
        .await?;

        let location = std::path::absolute(&target).unwrap_or(target);
        let link = format!("file://{}", location.display());
        Ok(digest.receipt(location.display().to_string(), Some(link)))
    }

    async fn resume_point(
        &self,
        ctx: &RunContext,
        checkpoint: &Checkpoint,
    ) -> Result<u64, DeliveryError> {
        let Ok(target) = self.path.render_path(ctx, &self.root) else {
            return Ok(0);
        };
        let Some(temp) = recorded_temp(checkpoint, &target, &ctx.run_id) else {
            return Ok(0);
        };
        // Only a regular file (not a link planted under the name) is continued.
        Ok(match tokio::fs::symlink_metadata(&temp).await {
            Ok(meta) if meta.is_file() && meta.len() >= checkpoint.bytes_done => {
                checkpoint.bytes_done
            }
            _ => 0,
        })
    }

    fn can_rewind(&self) -> bool {
        // `reopen` cuts the file back to whatever offset the attempt starts at.
        true
    }

    async fn discard(&self, ctx: &RunContext, checkpoint: Option<&Checkpoint>) {
        let Ok(target) = self.path.render_path(ctx, &self.root) else {
            return;
        };
        if let Some(temp) = checkpoint.and_then(|c| recorded_temp(c, &target, &ctx.run_id)) {
            let _ = tokio::fs::remove_file(temp).await;
        }
    }
}

/// Opens the temporary file an earlier attempt left, cut to the payload's offset (what the
/// checkpoint says is durable), and feeds that prefix to the payload's hash.
async fn reopen(path: &Path, payload: &mut Payload) -> Result<tokio::fs::File, DeliveryError> {
    let shown = path.display();
    let offset = payload.offset();
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .await
        .map_err(|err| DeliveryError::io(format_args!("reopen {shown}"), err))?;
    file.set_len(offset)
        .await
        .map_err(|err| DeliveryError::io(format_args!("truncate {shown}"), err))?;
    let mut buf = vec![0u8; crate::CHUNK_SIZE];
    let mut left = offset;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(|err| DeliveryError::io(format_args!("read {shown}"), err))?;
        if n == 0 {
            return Err(DeliveryError::new(
                ErrorKind::Integrity,
                format!("{shown} ended before the checkpoint's {offset} bytes"),
            ));
        }
        payload.absorb_prefix(&buf[..n]);
        left -= n as u64;
    }
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|err| DeliveryError::io(format_args!("seek in {shown}"), err))?;
    Ok(file)
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
fn commit(temp: &Path, target: &Path, overwrite: bool) -> Result<(), DeliveryError> {
    let rename = |err| DeliveryError::io(format_args!("rename onto {}", target.display()), err);
    if overwrite {
        return std::fs::rename(temp, target).map_err(rename);
    }
    match std::fs::hard_link(temp, target) {
        Ok(()) => {
            let _ = std::fs::remove_file(temp);
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(temp);
            Err(exists(target))
        }
        Err(err) => Err(rename(err)),
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), DeliveryError> {
    let sync = |err| DeliveryError::io(format_args!("fsync directory {}", dir.display()), err);
    std::fs::File::open(dir).map_err(sync)?.sync_all().map_err(sync)
}

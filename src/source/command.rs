//! `type = "command"`: the standard output of a program, run without a shell.
//!
//! The program's stdout is streamed as it is produced; its stderr is kept (the last few
//! KiB) for the error message. A non-zero exit is a failure that arrives as the stream's
//! last item, after every byte of output, so a writer never commits the output of a
//! failed command. The program runs in its own process group; when the run is cancelled
//! (a timeout, a failing writer, shutdown) the whole group gets SIGTERM, then SIGKILL after
//! a grace of five seconds.
//!
//! The program gets a clean environment: `PATH`, `HOME`, `LANG` and `TZ` as ferry has
//! them, and the job's own `env`, nothing else. The daemon's environment holds every job's
//! secrets (a unit's `EnvironmentFile=`, say); a program has no business seeing them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt as _, TryStreamExt as _};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;
use tokio_util::io::ReaderStream;

use super::{DataSource, SourceSettings, SourceStream};
use crate::build_env::BuildEnv;
use crate::error::{DeliveryError, ErrorKind};
use crate::settings::{ByteSize, KeyPath, Problems};
use crate::template::Template;
use crate::{CHUNK_SIZE, RunContext};

/// The variables a program inherits from ferry's environment, when ferry has them.
const INHERITED: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// Where programs are looked for when ferry itself has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `INHERITED` as ferry has them (`PATH` always).
fn inherited_env() -> Vec<(&'static str, std::ffi::OsString)> {
    let mut vars: Vec<_> = INHERITED
        .iter()
        .filter_map(|&name| std::env::var_os(name).map(|value| (name, value)))
        .collect();
    if !vars.iter().any(|(name, _)| *name == "PATH") {
        vars.push(("PATH", DEFAULT_PATH.into()));
    }
    vars
}

/// How long what a program left running may keep its output open after it exited.
const LEFTOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How much of a command's stderr is kept for its error message.
const STDERR_TAIL: usize = 4096;

/// Settings of a `command` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program and its arguments, e.g. `["pg_dump", "--format=custom", "shop"]`. No
    /// shell is involved; each element is a template.
    pub command: Vec<String>,
    /// Environment variables for the program, besides `PATH`, `HOME`, `LANG` and `TZ`
    /// (the only ones it inherits from ferry).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The most bytes the program may write (e.g. `"10GiB"`): more fails the run
    /// (`rejected`, not retried; the program is killed) instead of filling the disk.
    /// Unlimited by default.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// The directory the program runs in; relative paths are taken from the job file's
    /// directory. The job file's directory by default.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
}

impl SourceSettings for CommandConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) {
        if self
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            problems.add(
                at.key("command"),
                "needs a program and its arguments, e.g. [\"pg_dump\", \"shop\"]",
            );
        }
        for (i, arg) in self.command.iter().enumerate() {
            if let Err(err) = Template::parse(arg) {
                problems.add(at.key("command").index(i), err.to_string());
            }
        }
    }

    fn build(&self, env: &BuildEnv) -> Result<Arc<dyn DataSource>, DeliveryError> {
        let argv = self
            .command
            .iter()
            .map(|arg| Template::parse(arg))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| DeliveryError::new(ErrorKind::Config, err.to_string()))?;
        let working_dir = match &self.working_dir {
            Some(dir) => env.base_dir.join(dir),
            None => env.base_dir.clone(),
        };
        Ok(Arc::new(CommandSource {
            argv,
            env: self.env.clone(),
            working_dir: Some(working_dir),
            max_bytes: self.max_bytes.map(|size| size.0),
        }))
    }
}

/// A source that runs a program and streams its standard output.
#[derive(Debug, Clone)]
pub struct CommandSource {
    argv: Vec<Template>,
    env: BTreeMap<String, String>,
    working_dir: Option<PathBuf>,
    max_bytes: Option<u64>,
}

impl CommandSource {
    /// A source running `argv` (each element a template) in the current directory.
    pub fn new(argv: Vec<Template>) -> CommandSource {
        CommandSource {
            argv,
            env: BTreeMap::new(),
            working_dir: None,
            max_bytes: None,
        }
    }
}

#[async_trait]
impl DataSource for CommandSource {
    fn describe(&self) -> String {
        let program = self.argv.first().map_or("", |p| p.as_str());
        format!("command {program}")
    }

    async fn open(&self, ctx: &RunContext) -> Result<SourceStream, DeliveryError> {
        let argv: Vec<String> = self.argv.iter().map(|arg| arg.render(ctx)).collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(DeliveryError::new(ErrorKind::Config, "empty command"));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(inherited_env())
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Cancellation ends the whole group, politely first (ProcessGroup), so the
            // child itself is not killed on drop.
            .process_group(0);
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|err| DeliveryError::io(format_args!("start `{program}`"), err))?;
        let group = ProcessGroup(child.id());
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(DeliveryError::new(
                ErrorKind::Io,
                "the command's pipes are missing",
            ));
        };
        let stderr_tail = tokio::spawn(async move {
            let mut tail = Vec::new();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
            let start = tail.len().saturating_sub(STDERR_TAIL);
            String::from_utf8_lossy(&tail[start..]).trim().to_owned()
        });

        let name = program.clone();
        let output = ReaderStream::with_capacity(stdout, CHUNK_SIZE).map_err(move |err| {
            DeliveryError::io(format_args!("read the output of `{name}`"), err).into_io()
        });
        // The program is waited for on the side: once it has exited, what it left running
        // in its group (a `cmd &` holding stdout open) gets LEFTOVER_GRACE, then is killed,
        // so the output ends instead of hanging until a timeout.
        let (exited, exit_status) = tokio::sync::oneshot::channel();
        let leader = group.0;
        let waiter = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let _ = exited.send(child.wait().await);
            tokio::time::sleep(LEFTOVER_GRACE).await;
            if let Some(pid) = leader.and_then(|pid| i32::try_from(pid).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }));
        let name = program.clone();
        let exit = futures::stream::once(async move {
            // Keep the group guard and the waiter alive until the program has exited:
            // dropping this future early (cancellation) kills the whole group.
            let _group = group;
            let _waiter = waiter;
            let waited = exit_status.await.unwrap_or_else(|_| {
                Err(std::io::Error::other("the program's waiter went away"))
            });
            let status = match waited {
                Ok(status) => status,
                Err(err) => {
                    return Some(Err(DeliveryError::io(
                        format_args!("wait for `{name}`"),
                        err,
                    )
                    .into_io()));
                }
            };
            if status.success() {
                return None;
            }
            let stderr = stderr_tail.await.unwrap_or_default();
            let stderr = if stderr.is_empty() {
                String::new()
            } else {
                format!("; stderr: {stderr}")
            };
            let failure = DeliveryError::new(
                ErrorKind::Command,
                format!("`{name}` failed with {status}{stderr}"),
            );
            Some(Err(failure.into_io()))
        })
        .filter_map(futures::future::ready);
        SourceStream {
            stream: Box::pin(output.chain(exit)),
            len: None,
        }
        .limited(self.max_bytes, &format!("command `{program}`"))
    }
}

/// Ends a child's process group when dropped (the attempt was cancelled): SIGTERM at once,
/// SIGKILL after [`TERM_GRACE`] for whatever is still there. The wait happens on a thread
/// of its own; [`wait_for_terminations`] lets a process that is about to exit see it
/// through.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Some(group) = self.0.and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw) else {
            return;
        };
        // The group may be gone already: then there is nothing to end.
        if killpg(group, Signal::SIGTERM).is_err() {
            return;
        }
        let pending = Arc::clone(&TERMINATIONS);
        pending.started();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + TERM_GRACE;
            while std::time::Instant::now() < deadline {
                if killpg(group, None).is_err() {
                    pending.finished();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = killpg(group, Signal::SIGKILL);
            pending.finished();
        });
    }
}

/// How long a cancelled program's group has to exit after SIGTERM before SIGKILL.
pub const TERM_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Process groups sent SIGTERM and not yet gone.
static TERMINATIONS: std::sync::LazyLock<Arc<Terminations>> =
    std::sync::LazyLock::new(|| Arc::new(Terminations::default()));

#[derive(Default)]
struct Terminations {
    pending: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Terminations {
    fn started(&self) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn finished(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending = pending.saturating_sub(1);
        self.changed.notify_all();
    }
}

/// Waits (blocking, at most `limit`) until every cancelled program has exited or been
/// killed; for a process about to exit, whose threads would die with it. Whether none is
/// left.
pub fn wait_for_terminations(limit: std::time::Duration) -> bool {
    let pending = TERMINATIONS
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (pending, _) = TERMINATIONS
        .changed
        .wait_timeout_while(pending, limit, |pending| *pending > 0)
        .unwrap_or_else(|e| e.into_inner());
    *pending == 0
}

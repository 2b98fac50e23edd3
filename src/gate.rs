//! A run's place in the partition registry (seed 003): the partition it produces and the
//! sources it requires.
//!
//! * `partition = { source = "shop.orders" }`: before anything is written the run's
//!   partition is registered and locked (for its run id); once every writer has delivered
//!   it is unlocked, and the source is ready over it. A run that fails for good leaves it
//!   locked, the failure as the reason readiness gives.
//! * `requires = [{ source = "erp.customers", wait = "2h" }]`: before writing, the run waits
//!   until each required source is ready over the run's interval, polling with backoff
//!   (1 s doubling to 30 s) and woken at once when this daemon unlocks a partition; after
//!   `wait` the attempt fails `not_ready`. A `url` asks another registry (another ferry,
//!   or the seed's service) over HTTP instead of this daemon's store.
//!
//! A run's **interval** is `[previous slot, slot)` of the job's schedule, or with `period`
//! the `period` ending at the slot (`align = "end"`, the default) or starting at it
//! (`align = "start"`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::build_env::BuildEnv;
use crate::context::RunContext;
use crate::error::{DeliveryError, ErrorKind, display_chain};
use crate::schedule::Schedule;
use crate::settings::{ConfigDuration, KeyPath, Problems, Secret, SecretField, keys};
use crate::state::{Change, RegistryError, Store};

/// How long a run waits for a required source when its entry does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(3600);

/// The longest pause between two readiness checks.
const MAX_POLL: Duration = Duration::from_secs(30);

/// The largest readiness answer read from another registry.
const MAX_ANSWER: usize = 64 * 1024;

/// Where a run's interval sits against its slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Align {
    /// `[slot - period, slot)`: the run delivers what came before it.
    #[default]
    End,
    /// `[slot, slot + period)`.
    Start,
}

/// `partition = { … }` on a job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// The source the run's partition belongs to.
    pub source: String,
    /// The interval's length; `[previous slot, slot)` when unset.
    #[serde(default)]
    pub period: Option<ConfigDuration>,
    /// Whether the interval ends (default) or starts at the slot.
    #[serde(default)]
    pub align: Align,
}

/// One entry of `requires = [ … ]` on a job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireConfig {
    /// The source that must be ready over the run's interval.
    pub source: String,
    /// How long to wait for it (default one hour).
    #[serde(default)]
    pub wait: Option<ConfigDuration>,
    /// Another registry's base URL (`http://host:8470`); this daemon's store when unset.
    #[serde(default)]
    pub url: Option<String>,
    /// That registry's read token, when it wants one.
    #[serde(flatten)]
    pub token: SecretField<keys::Token>,
}

/// `marker = "_SUCCESS"` or `marker = { name = "_manifest.json", format = "manifest" }` on a
/// partitioned job: a file written beside each writer's delivery once every writer has
/// delivered, before the partition is unlocked.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MarkerConfig {
    /// An empty file of this name.
    Name(String),
    /// A file of this name, empty or a manifest.
    Table(MarkerTable),
}

/// `marker = { name, format }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkerTable {
    /// The marker's file name.
    pub name: String,
    /// What it holds.
    #[serde(default)]
    pub format: MarkerFormat,
}

/// What a completion marker holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerFormat {
    /// Nothing (Hadoop's `_SUCCESS`).
    #[default]
    Empty,
    /// JSON: the job, run, interval, and each delivery's location, size and sha256.
    Manifest,
}

impl MarkerConfig {
    /// The marker's file name.
    pub fn name(&self) -> &str {
        match self {
            MarkerConfig::Name(name) => name,
            MarkerConfig::Table(table) => &table.name,
        }
    }

    /// What it holds.
    pub fn format(&self) -> MarkerFormat {
        match self {
            MarkerConfig::Name(_) => MarkerFormat::Empty,
            MarkerConfig::Table(table) => table.format,
        }
    }
}

/// A job's completion marker, built: its content's format and a writer per destination.
#[derive(Debug, Clone)]
pub struct Marker {
    /// What it holds.
    pub format: MarkerFormat,
    /// Where it goes: beside each writer's delivery.
    pub writers: Vec<std::sync::Arc<dyn crate::writer::Writer>>,
}

/// Records the problems of a job's `partition`, `requires`, `marker`.
pub fn validate(
    partition: Option<&PartitionConfig>,
    requires: &[RequireConfig],
    marker: Option<&MarkerConfig>,
    at: &KeyPath,
    problems: &mut Problems,
) {
    if let Some(marker) = marker {
        let name = marker.name();
        let at = match marker {
            MarkerConfig::Name(_) => at.key("marker"),
            MarkerConfig::Table(_) => at.key("marker").key("name"),
        };
        if partition.is_none() {
            problems.add(
                at.clone(),
                "a marker needs `partition` on the job (it marks a partition complete)",
            );
        }
        if name.is_empty()
            || name.contains(['/', '\\', '{', '}'])
            || name == "."
            || name == ".."
            || name.chars().any(char::is_control)
        {
            problems.add(
                at,
                "must be a plain file name such as \"_SUCCESS\" (no '/', no template)",
            );
        }
    }
    if let Some(partition) = partition {
        let at = at.key("partition");
        check_name(&partition.source, &at.key("source"), problems);
        if partition.period.is_some_and(|p| p.get().is_zero()) {
            problems.add(at.key("period"), "must be longer than zero");
        }
    }
    for (i, require) in requires.iter().enumerate() {
        let at = at.key("requires").index(i);
        check_name(&require.source, &at.key("source"), problems);
        if let Some(url) = &require.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.add(at.key("url"), "must be an http:// or https:// URL");
        }
        require.token.validate(&at, problems);
    }
}

fn check_name(name: &str, at: &KeyPath, problems: &mut Problems) {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        problems.add(
            at.clone(),
            "must be 1 to 256 characters without control characters",
        );
    }
}

/// What a job's runs do in the registry.
#[derive(Debug, Clone)]
pub struct Gate {
    job: String,
    schedule: Schedule,
    period: Option<(Duration, Align)>,
    partition: Option<String>,
    requires: Vec<Requirement>,
    marker: Option<Marker>,
}

#[derive(Debug, Clone)]
struct Requirement {
    source: String,
    wait: Duration,
    /// The registry's URL, its token and the client that asks it.
    remote: Option<(String, Option<Secret>, reqwest::Client)>,
}

impl Gate {
    /// The gate of job `job`, or `None` when it has neither `partition` nor `requires`.
    pub fn build(
        job: &str,
        schedule: &Schedule,
        partition: Option<&PartitionConfig>,
        requires: &[RequireConfig],
        marker: Option<Marker>,
        env: &BuildEnv,
    ) -> Result<Option<Gate>, DeliveryError> {
        if partition.is_none() && requires.is_empty() {
            return Ok(None);
        }
        let credentials = requires.iter().any(|r| r.token.is_given());
        let requires = requires
            .iter()
            .map(|r| {
                let remote = match &r.url {
                    Some(url) => Some((
                        url.trim_end_matches('/').to_owned(),
                        r.token.resolve(&env.base_dir)?,
                        env.http_for(credentials)?,
                    )),
                    None => None,
                };
                Ok(Requirement {
                    source: r.source.clone(),
                    wait: r.wait.map_or(DEFAULT_WAIT, ConfigDuration::get),
                    remote,
                })
            })
            .collect::<Result<_, DeliveryError>>()?;
        Ok(Some(Gate {
            job: job.to_owned(),
            schedule: schedule.clone(),
            period: partition.and_then(|p| p.period.map(|period| (period.get(), p.align))),
            partition: partition.map(|p| p.source.clone()),
            requires,
            marker,
        }))
    }

    /// The run's interval for `slot`.
    pub fn interval(
        &self,
        slot: DateTime<Utc>,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), DeliveryError> {
        interval(&self.schedule, self.period, slot)
    }

    /// Before an attempt writes: lock the run's partition, then wait for what it requires.
    pub async fn before(&self, ctx: &RunContext) -> Result<(), DeliveryError> {
        let (start, end) = self.interval(ctx.slot.with_timezone(&Utc))?;
        if let Some(source) = &self.partition {
            let store = self.store(ctx)?;
            store
                .lock_for_run(source, &self.job, start, end, &ctx.run_id)
                .await
                .map_err(|err| registry_error(&format!("lock partition of {source}"), err))?;
            tracing::info!(source, start = %start.to_rfc3339(), end = %end.to_rfc3339(), "Partition locked.");
        }
        for require in &self.requires {
            self.wait_for(ctx, require, start, end).await?;
        }
        Ok(())
    }

    /// The completion marker, when the job has one.
    pub fn marker(&self) -> Option<&Marker> {
        self.marker.as_ref()
    }

    /// The marker's content for `ctx`'s run, given every writer's receipt.
    pub fn marker_content(
        &self,
        ctx: &RunContext,
        deliveries: &[crate::report::Delivery],
    ) -> Result<bytes::Bytes, DeliveryError> {
        let Some(marker) = &self.marker else {
            return Ok(bytes::Bytes::new());
        };
        if marker.format == MarkerFormat::Empty {
            return Ok(bytes::Bytes::new());
        }
        let (start, end) = self.interval(ctx.slot.with_timezone(&Utc))?;
        let manifest = serde_json::json!({
            "job": self.job,
            "run_id": ctx.run_id,
            "slot": ctx.slot.to_rfc3339(),
            "source": self.partition,
            "start": start.to_rfc3339(),
            "end": end.to_rfc3339(),
            "deliveries": deliveries.iter().map(|d| serde_json::json!({
                "writer": d.writer,
                "location": d.location,
                "bytes": d.bytes,
                "sha256": d.sha256,
            })).collect::<Vec<_>>(),
        });
        let mut text = serde_json::to_vec_pretty(&manifest).map_err(|err| {
            DeliveryError::new(
                ErrorKind::Config,
                format!("cannot render the manifest: {err}"),
            )
        })?;
        text.push(b'\n');
        Ok(bytes::Bytes::from(text))
    }

    /// Every writer delivered: unlock the run's partition.
    pub async fn delivered(&self, ctx: &RunContext) -> Result<(), DeliveryError> {
        let Some(source) = &self.partition else {
            return Ok(());
        };
        let (start, end) = self.interval(ctx.slot.with_timezone(&Utc))?;
        self.store(ctx)?
            .change_partition(source, &self.job, start, end, Change::Unlock)
            .await
            .map_err(|err| registry_error(&format!("unlock partition of {source}"), err))?;
        tracing::info!(source, start = %start.to_rfc3339(), end = %end.to_rfc3339(), "Partition unlocked: ready.");
        Ok(())
    }

    /// The run failed for good: its partition stays locked, saying why.
    pub async fn failed(&self, ctx: &RunContext, error: &DeliveryError) {
        let (Some(source), Some(ledger)) = (&self.partition, &ctx.ledger) else {
            return;
        };
        let Ok((start, end)) = self.interval(ctx.slot.with_timezone(&Utc)) else {
            return;
        };
        let reason = format!("run failed: {}", display_chain(&error.chain()));
        let reason: String = reason.chars().take(1000).collect();
        let lock = Change::Lock {
            run_id: Some(&ctx.run_id),
            reason: Some(&reason),
        };
        match ledger
            .store
            .change_partition(source, &self.job, start, end, lock)
            .await
        {
            Ok(_)
            | Err(
                RegistryError::UnknownPartition { .. }
                | RegistryError::UnknownProvider { .. }
                | RegistryError::UnknownSource(_),
            ) => {}
            Err(err) => {
                tracing::warn!(error = %err, source, "Cannot record the failure on the run's partition.")
            }
        }
    }

    fn store<'a>(&self, ctx: &'a RunContext) -> Result<&'a Store, DeliveryError> {
        ctx.ledger
            .as_ref()
            .map(|ledger| &ledger.store)
            .ok_or_else(|| {
                DeliveryError::new(
                    ErrorKind::Config,
                    "partition and requires need the state store; this run has none",
                )
            })
    }

    async fn wait_for(
        &self,
        ctx: &RunContext,
        require: &Requirement,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(), DeliveryError> {
        let source = &require.source;
        let deadline = tokio::time::Instant::now() + require.wait;
        let mut pause = Duration::from_secs(1);
        let mut logged = false;
        loop {
            // Registered before looking: an unlock between the look and the wait still wakes
            // it. Only a local requirement is woken; a remote one is polled.
            let mut woken = match require.remote {
                None => ctx
                    .ledger
                    .as_ref()
                    .map(|ledger| Box::pin(ledger.store.partition_changes().notified())),
                Some(_) => None,
            };
            if let Some(notified) = woken.as_mut() {
                notified.as_mut().enable();
            }
            let message = match self.check(ctx, require, start, end).await {
                Ok(None) => {
                    if logged {
                        tracing::info!(source, "Required source ready; proceeding.");
                    }
                    return Ok(());
                }
                Ok(Some(message)) => message,
                Err(err) => format!("cannot ask: {}", display_chain(&err.chain())),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(DeliveryError::new(
                    ErrorKind::NotReady,
                    format!(
                        "required source {source} not ready over [{}, {}) after waiting {}: {message}",
                        start.to_rfc3339(),
                        end.to_rfc3339(),
                        humantime::format_duration(require.wait)
                    ),
                ));
            }
            if !logged {
                tracing::info!(source, reason = %message, wait = %humantime::format_duration(require.wait), "Waiting for a required source.");
                logged = true;
            }
            let wake = async {
                match woken.as_mut() {
                    Some(notified) => notified.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wake => {}
                () = tokio::time::sleep(pause.min(deadline - now)) => {}
            }
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// `None` when `require` is ready over the interval, else why not.
    async fn check(
        &self,
        ctx: &RunContext,
        require: &Requirement,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        let source = &require.source;
        let Some((url, token, http)) = &require.remote else {
            let store = self.store(ctx)?;
            return match store.readiness(source, start, end).await {
                Ok(readiness) if readiness.is_ready() => Ok(None),
                Ok(readiness) => Ok(Some(readiness.message(source, start, end))),
                Err(RegistryError::UnknownSource(_)) => {
                    Ok(Some(format!("{source} is not registered")))
                }
                Err(err) => Err(registry_error("check readiness", err)),
            };
        };
        remote_readiness(http, url, token.as_ref(), source, start, end).await
    }
}

/// Asks the registry at `url` whether `source` is ready over `[start, end)`.
async fn remote_readiness(
    http: &reqwest::Client,
    url: &str,
    token: Option<&Secret>,
    source: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Option<String>, DeliveryError> {
    let mut endpoint = reqwest::Url::parse(url)
        .map_err(|err| DeliveryError::new(ErrorKind::Config, format!("requires url: {err}")))?;
    endpoint
        .path_segments_mut()
        .map_err(|()| DeliveryError::new(ErrorKind::Config, "requires url cannot take a path"))?
        .pop_if_empty()
        .extend(["sources", source, "check_readiness"]);
    endpoint
        .query_pairs_mut()
        .append_pair("start", &start.to_rfc3339())
        .append_pair("end", &end.to_rfc3339());
    let mut request = http.get(endpoint);
    if let Some(token) = token {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(
                |_| {
                    DeliveryError::new(
                        ErrorKind::Config,
                        "the requires token is not a valid header value",
                    )
                },
            )?;
        value.set_sensitive(true);
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let action = format!("ask {} whether {source} is ready", shown_host(url));
    let mut response = request
        .send()
        .await
        .map_err(|err| crate::http::request_error(&action, err))?;
    if !response.status().is_success() {
        return Err(crate::http::status_error(&action, response).await);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| crate::http::request_error(&action, err))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(DeliveryError::new(
                ErrorKind::Rejected,
                format!("cannot {action}: the answer is larger than {MAX_ANSWER} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    #[derive(Deserialize)]
    struct Answer {
        is_ready: bool,
        message: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|err| {
        DeliveryError::new(
            ErrorKind::Rejected,
            format!("cannot {action}: not a readiness answer: {err}"),
        )
    })?;
    Ok((!answer.is_ready).then(|| {
        crate::error::printable(
            &answer
                .message
                .unwrap_or_else(|| format!("{source} is not ready")),
        )
        .chars()
        .take(500)
        .collect()
    }))
}

/// A URL as logs show it: scheme and host only.
fn shown_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()))
        .unwrap_or_else(|_| "(a registry)".to_owned())
}

fn registry_error(action: &str, err: RegistryError) -> DeliveryError {
    let kind = match &err {
        RegistryError::Store(_) => ErrorKind::Io,
        _ => ErrorKind::Config,
    };
    DeliveryError::new(kind, format!("cannot {action}: {err}"))
}

/// The interval of a run at `slot`: `period` ending (or starting) at it, or
/// `[previous slot, slot)` of `schedule`.
pub fn interval(
    schedule: &Schedule,
    period: Option<(Duration, Align)>,
    slot: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), DeliveryError> {
    let out_of_range =
        || DeliveryError::new(ErrorKind::Config, "the run's interval is out of range");
    match period {
        Some((period, align)) => {
            let period = chrono::Duration::from_std(period).map_err(|_| out_of_range())?;
            match align {
                Align::End => Ok((
                    slot.checked_sub_signed(period).ok_or_else(out_of_range)?,
                    slot,
                )),
                Align::Start => Ok((
                    slot,
                    slot.checked_add_signed(period).ok_or_else(out_of_range)?,
                )),
            }
        }
        None => {
            let previous = schedule
                .latest_at_or_before(slot - chrono::Duration::seconds(1))
                .ok_or_else(|| {
                    DeliveryError::new(
                        ErrorKind::Config,
                        format!(
                            "schedule {schedule} has no slot before {}: set partition.period",
                            slot.to_rfc3339()
                        ),
                    )
                })?;
            Ok((previous.with_timezone(&Utc), slot))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0)
            .single()
            .expect("instant")
    }

    #[test]
    fn the_seeds_hourly_and_weekday_midnight_jobs() {
        let hourly = Schedule::parse("0 * * * *", chrono_tz::UTC).expect("cron");
        assert_eq!(
            interval(&hourly, None, utc(2026, 11, 23, 14)).expect("interval"),
            (utc(2026, 11, 23, 13), utc(2026, 11, 23, 14))
        );
        // Weekdays at midnight: Monday's run covers the weekend by default, one day with
        // period = "1d".
        let weekdays = Schedule::parse("0 0 * * 1-5", chrono_tz::UTC).expect("cron");
        let monday = utc(2026, 11, 23, 0);
        assert_eq!(
            interval(&weekdays, None, monday).expect("interval"),
            (utc(2026, 11, 20, 0), monday)
        );
        let day = Some((Duration::from_secs(86_400), Align::End));
        assert_eq!(
            interval(&weekdays, day, monday).expect("interval"),
            (utc(2026, 11, 22, 0), monday)
        );
        let ahead = Some((Duration::from_secs(86_400), Align::Start));
        assert_eq!(
            interval(&weekdays, ahead, monday).expect("interval"),
            (monday, utc(2026, 11, 24, 0))
        );
    }

    #[test]
    fn a_zoned_schedule_keeps_its_local_midnights_across_dst() {
        // Berlin leaves summer time on 2026-10-25: that day is 25 hours long.
        let daily = Schedule::parse("0 0 * * *", chrono_tz::Europe::Berlin).expect("cron");
        let (start, end) = interval(&daily, None, utc(2026, 10, 25, 23)).expect("interval");
        assert_eq!((start, end), (utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)));
    }
}

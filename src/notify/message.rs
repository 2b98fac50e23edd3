//! What notifications say: a run's facts, and minijinja templates rendered over them.
//!
//! Every notifier renders its texts from the same [`Facts`], so a template written for an
//! email works in a webhook. The defaults read well without any template written.

use std::time::Duration;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::error::{DeliveryError, ErrorKind};
use crate::report::{Delivery, FailureReport, RunReport, RunStatus, StreakReport};

/// A finished run's facts, as templates see them.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// The job's name.
    pub job: String,
    /// The run's id.
    pub run_id: String,
    /// `succeeded` or `failed`.
    pub status: &'static str,
    /// Whether the run succeeded.
    pub succeeded: bool,
    /// The scheduled time the run was for, in the job's time zone (RFC 3339).
    pub slot: String,
    /// When the run began (RFC 3339, UTC).
    pub started_at: String,
    /// Attempts made.
    pub attempts: u32,
    /// How long the run took, for people (`1m 3s`).
    pub duration: String,
    /// How long the run took, in seconds.
    pub duration_secs: f64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Bytes delivered, for people (`12.3 MiB`).
    pub size: String,
    /// The sha256 of the delivered bytes (empty when the run failed).
    pub sha256: String,
    /// Where the data went, every destination joined with `, `.
    pub location: String,
    /// A link to the delivered data (the first destination that has one): a presigned S3
    /// URL, an `ftp://` URL, a `file://` path.
    pub link: String,
    /// One receipt per destination.
    pub deliveries: Vec<Delivery>,
    /// How far into the payload the run resumed from checkpoints.
    pub resumed_from: u64,
    /// The failure, when the run failed.
    pub error: Option<ErrorFacts>,
    /// The host the daemon runs on.
    pub host: String,
    /// When this failure is one of several in a row: how many, since when, and how many
    /// this notifier was not told of (`repeat_after`).
    pub still_failing: Option<StreakFacts>,
    /// When this success ends failures in a row (told with `recovery = true`).
    pub recovered: Option<StreakFacts>,
}

/// Failures in a row, as templates see them.
#[derive(Debug, Clone, Serialize)]
pub struct StreakFacts {
    /// Failed runs in a row.
    pub failures: u32,
    /// Of those, how many this notifier was not told of.
    pub suppressed: u32,
    /// When the first of them ended (RFC 3339, UTC).
    pub since: String,
}

/// A failure, as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorFacts {
    /// The error's kind (`network`, `auth`, …).
    pub kind: String,
    /// The outermost message.
    pub message: String,
    /// The message and its causes, outermost first.
    pub chain: Vec<String>,
    /// The whole chain on one line.
    pub text: String,
    /// Why no further attempt was made.
    pub gave_up: String,
}

impl Facts {
    /// The facts of `report`'s run.
    pub fn of(report: &RunReport) -> Facts {
        let locations: Vec<&str> = report
            .deliveries
            .iter()
            .map(|d| d.location.as_str())
            .collect();
        let bytes = report.bytes();
        Facts {
            job: report.job.clone(),
            run_id: report.run_id.clone(),
            status: report.status.as_str(),
            succeeded: report.status == RunStatus::Succeeded,
            slot: report.slot.clone(),
            started_at: report.started_at.to_rfc3339(),
            attempts: report.attempts,
            duration: human_duration(report.duration),
            duration_secs: report.duration.as_secs_f64(),
            bytes,
            size: human_size(bytes),
            sha256: report
                .deliveries
                .first()
                .map(|d| d.sha256.clone())
                .unwrap_or_default(),
            location: locations.join(", "),
            link: report
                .deliveries
                .iter()
                .find_map(|d| d.link.clone())
                .unwrap_or_default(),
            deliveries: report.deliveries.clone(),
            resumed_from: report.resumed_from,
            error: report.error.as_ref().map(ErrorFacts::of),
            host: crate::host_name(),
            still_failing: match &report.streak {
                Some(StreakReport::StillFailing {
                    failures,
                    suppressed,
                    since,
                }) => Some(StreakFacts {
                    failures: *failures,
                    suppressed: *suppressed,
                    since: since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                }),
                _ => None,
            },
            recovered: match &report.streak {
                Some(StreakReport::Recovered { failures, since }) => Some(StreakFacts {
                    failures: *failures,
                    suppressed: 0,
                    since: since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                }),
                _ => None,
            },
        }
    }
}

impl ErrorFacts {
    fn of(failure: &FailureReport) -> ErrorFacts {
        ErrorFacts {
            kind: failure.kind.to_string(),
            message: failure.chain.first().cloned().unwrap_or_default(),
            chain: failure.chain.clone(),
            text: crate::error::display_chain(&failure.chain),
            gave_up: failure.gave_up.clone(),
        }
    }
}

fn human_duration(d: Duration) -> String {
    // Whole seconds read better in a message; under a second, milliseconds.
    let shown = if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    humantime::format_duration(shown).to_string()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// How a template's output is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Plain text: values as they are.
    Text,
    /// HTML: values HTML-escaped.
    Html,
    /// JSON: values written as JSON (`{{ job }}` gives `"nightly"`, with the quotes).
    Json,
}

/// A parsed template, rendered over [`Facts`].
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    env: Environment<'static>,
}

const NAME: &str = "message";

impl MessageTemplate {
    /// Parses `source`. The error names the line within the template.
    pub fn parse(source: &str, escape: Escape) -> Result<MessageTemplate, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_keep_trailing_newline(true);
        env.set_auto_escape_callback(move |_| match escape {
            Escape::Text => AutoEscape::None,
            Escape::Html => AutoEscape::Html,
            Escape::Json => AutoEscape::Json,
        });
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|err| describe(&err))?;
        let template = MessageTemplate { env };
        // Rendering over sample facts finds unknown filters and misused values now, not at
        // the first run.
        for sample in samples() {
            template.render(&sample).map_err(|err| err.to_string())?;
        }
        Ok(template)
    }

    /// Renders the template over `facts`.
    pub fn render(&self, facts: &Facts) -> Result<String, DeliveryError> {
        self.env
            .get_template(NAME)
            .and_then(|template| template.render(facts))
            .map_err(|err| DeliveryError::new(ErrorKind::Config, describe(&err)))
    }
}

fn describe(err: &minijinja::Error) -> String {
    let mut text = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    if let Some(line) = err.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}

/// Made-up facts of every kind a template may be rendered over: a success, a failure, a
/// failure in a row of several, a recovery.
fn samples() -> [Facts; 4] {
    let since = chrono::Utc::now() - chrono::Duration::hours(3);
    let mut still = sample_report(RunStatus::Failed, chrono_tz::UTC);
    still.streak = Some(StreakReport::StillFailing {
        failures: 4,
        suppressed: 2,
        since,
    });
    let mut recovered = sample_report(RunStatus::Succeeded, chrono_tz::UTC);
    recovered.streak = Some(StreakReport::Recovered { failures: 4, since });
    [
        sample(RunStatus::Succeeded),
        sample(RunStatus::Failed),
        Facts::of(&still),
        Facts::of(&recovered),
    ]
}

/// Facts of a made-up run, for checking templates and for `ferry notify-test`.
pub fn sample(status: RunStatus) -> Facts {
    let report = sample_report(status, chrono_tz::UTC);
    Facts::of(&report)
}

/// A made-up run's report, its slot now in `zone` (the job file's): what `ferry notify-test`
/// sends.
pub fn sample_report(status: RunStatus, zone: chrono_tz::Tz) -> RunReport {
    let deliveries = match status {
        RunStatus::Succeeded => vec![Delivery {
            writer: "local".into(),
            location: "/srv/out/notify-test.csv".into(),
            link: Some("file:///srv/out/notify-test.csv".into()),
            bytes: 1234,
            sha256: "0".repeat(64),
        }],
        RunStatus::Failed | RunStatus::Lost => Vec::new(),
    };
    let error = (status == RunStatus::Failed).then(|| FailureReport {
        kind: ErrorKind::Network,
        chain: vec![
            "writer local /srv/out/notify-test.csv: this is a test failure".into(),
            "no data was harmed".into(),
        ],
        gave_up: "all 3 attempts failed".into(),
    });
    RunReport {
        job: "notify-test".into(),
        run_id: "notify-test-0".into(),
        slot: chrono::Utc::now()
            .with_timezone(&zone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        status,
        attempts: if status == RunStatus::Failed { 3 } else { 1 },
        started_at: chrono::Utc::now(),
        duration: Duration::from_millis(1500),
        deliveries,
        resumed_from: 0,
        error,
        streak: None,
    }
}

/// The default subject of a mail.
pub const DEFAULT_SUBJECT: &str = "[ferry] {{ job }} \
{% if recovered %}recovered after {{ recovered.failures }} failure{{ 's' if recovered.failures != 1 }}\
{% elif still_failing %}still failing ({{ still_failing.failures }} times since {{ still_failing.since }})\
{% else %}{{ status }}{% endif %}\
{% if error %}: {{ error.kind }}{% endif %} ({{ slot }})";

/// The default body of a mail (and of a plain-text webhook).
pub const DEFAULT_BODY: &str = r#"{% if succeeded -%}
The delivery "{{ job }}" succeeded.
{%- if recovered %} It had failed {{ recovered.failures }} time{{ 's' if recovered.failures != 1 }} in a row since {{ recovered.since }}.{% endif %}
{%- else -%}
The delivery "{{ job }}" FAILED.
{%- if still_failing %} It has failed {{ still_failing.failures }} times in a row since {{ still_failing.since }}
{%- if still_failing.suppressed %} ({{ still_failing.suppressed }} not mailed: repeat_after){% endif %}.{% endif %}
{%- endif %}

Scheduled:  {{ slot }}
Attempts:   {{ attempts }}
Duration:   {{ duration }}
Host:       {{ host }}
{% if succeeded -%}
Size:       {{ size }} ({{ bytes }} bytes)
SHA-256:    {{ sha256 }}
{% for d in deliveries %}
Delivered to {{ d.location }}
{%- if d.link and d.link != d.location %}
  {{ d.link }}
{%- endif %}
{% endfor -%}
{% else %}
Error ({{ error.kind }}): {{ error.message }}
{%- for cause in error.chain[1:] %}
  caused by: {{ cause }}
{%- endfor %}
Gave up:    {{ error.gave_up }}
{% endif %}
Run id: {{ run_id }}
"#;

/// The default one-line message of a chat webhook.
pub const DEFAULT_CHAT: &str = "{% if succeeded %}ferry: {{ job }} delivered {{ size }} to \
{{ link or location }} in {{ duration }}{% if recovered %} (recovered after {{ recovered.failures }} \
failure{{ 's' if recovered.failures != 1 }}){% endif %}{% else %}ferry: {{ job }} FAILED after {{ attempts }} \
attempt{{ 's' if attempts != 1 }}{% if still_failing %} (still failing: {{ still_failing.failures }} \
times since {{ still_failing.since }}){% endif %}: {{ error.text }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_texts_say_still_failing_and_recovered() {
        let [_, _, still, recovered] = samples();
        let subject = MessageTemplate::parse(DEFAULT_SUBJECT, Escape::Text).expect("parses");
        let body = MessageTemplate::parse(DEFAULT_BODY, Escape::Text).expect("parses");
        let chat = MessageTemplate::parse(DEFAULT_CHAT, Escape::Text).expect("parses");
        let text = subject.render(&still).expect("renders");
        assert!(
            text.starts_with("[ferry] notify-test still failing (4 times since "),
            "{text}"
        );
        let text = body.render(&still).expect("renders");
        assert!(
            text.contains("It has failed 4 times in a row since") && text.contains("(2 not mailed"),
            "{text}"
        );
        let text = subject.render(&recovered).expect("renders");
        assert!(
            text.starts_with("[ferry] notify-test recovered after 4 failures"),
            "{text}"
        );
        let text = body.render(&recovered).expect("renders");
        assert!(
            text.contains("It had failed 4 times in a row since"),
            "{text}"
        );
        let text = chat.render(&recovered).expect("renders");
        assert!(text.contains("(recovered after 4 failures)"), "{text}");
    }

    #[test]
    fn the_sample_slot_is_in_the_job_files_zone() {
        let report = sample_report(RunStatus::Succeeded, chrono_tz::Asia::Tokyo);
        assert!(report.slot.ends_with("+09:00"), "{}", report.slot);
    }

    #[test]
    fn the_default_body_reads_well_for_both_outcomes() {
        let body = MessageTemplate::parse(DEFAULT_BODY, Escape::Text).expect("parses");
        let success = body.render(&sample(RunStatus::Succeeded)).expect("renders");
        assert!(success.starts_with("The delivery \"notify-test\" succeeded.\n\n"));
        assert!(
            success.contains("Size:       1.2 KiB (1234 bytes)"),
            "{success}"
        );
        assert!(
            success.contains(
                "Delivered to /srv/out/notify-test.csv\n  file:///srv/out/notify-test.csv\n"
            ),
            "{success}"
        );
        let failure = body.render(&sample(RunStatus::Failed)).expect("renders");
        assert!(
            failure.contains("Error (network): writer local /srv/out/notify-test.csv: this is a test failure\n  caused by: no data was harmed\nGave up:    all 3 attempts failed"),
            "{failure}"
        );
        assert!(!failure.contains("SHA-256"), "{failure}");
    }

    #[test]
    fn json_templates_escape_values_as_json() {
        let template =
            MessageTemplate::parse(r#"{"job": {{ job }}, "ok": {{ succeeded }}}"#, Escape::Json)
                .expect("parses");
        let mut facts = sample(RunStatus::Succeeded);
        facts.job = "quote\" and \\ backslash".into();
        let text = template.render(&facts).expect("renders");
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["job"], "quote\" and \\ backslash");
        assert_eq!(value["ok"], true);
    }

    #[test]
    fn a_broken_template_names_its_line() {
        let err = MessageTemplate::parse("fine\n{% if %}", Escape::Text).expect_err("broken");
        assert!(err.contains("line 2"), "{err}");
        let err = MessageTemplate::parse("{{ job | no_such_filter }}", Escape::Text)
            .expect_err("unknown filter");
        assert!(
            err.contains("no_such_filter") || err.contains("filter"),
            "{err}"
        );
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(200 << 20), "200.0 MiB");
    }
}

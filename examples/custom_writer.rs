//! A writer of your own, written in Rust against the ferry library.
//!
//! `LineCounter` is a destination that counts lines (think: a metrics sink, a queue, a
//! database table). It implements [`Writer`], so it plugs into a [`DeliveryActivity`] next
//! to ferry's own writers, gets the same retries and handlers, and reads the payload as a
//! stream: memory stays flat however large the source.
//!
//! Run it with `cargo run --example custom_writer -- PATH` (any file; `Cargo.toml` by default).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use ferry::RunContext;
use ferry::activity::DeliveryActivity;
use ferry::error::DeliveryError;
use ferry::runner::{ActivityRunner, RetryPolicy, RetryingActivity, RunStatus};
use ferry::source::FileSource;
use ferry::template::Template;
use ferry::writer::{Delivery, LocalWriter, Payload, Writer};
use futures::StreamExt as _;

/// Counts the lines of whatever it is given.
#[derive(Debug)]
struct LineCounter;

#[async_trait]
impl Writer for LineCounter {
    fn kind(&self) -> &'static str {
        "line-counter"
    }

    fn describe(&self) -> String {
        "line counter".into()
    }

    async fn write(
        &self,
        ctx: &RunContext,
        mut payload: Payload,
    ) -> Result<Delivery, DeliveryError> {
        let mut lines = 0u64;
        while let Some(chunk) = payload.next().await {
            // A source failure arrives here as an error: give up, deliver nothing.
            let chunk = chunk.map_err(|err| DeliveryError::io("read the data", err))?;
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        // `finish` refuses a payload that was not read to its clean end.
        let digest = payload.finish()?;
        Ok(digest.receipt(format!("{} lines for run {}", lines, ctx.run_id), None))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let input = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Cargo.toml".into());
    let out_dir = std::env::temp_dir().join("ferry-example");
    let copy = Template::parse_path(&format!("{}/{{job}}-{{run_id}}.copy", out_dir.display()))?;

    // One source read once, fanned out to ferry's local writer and to ours.
    let source = FileSource::new(Template::parse(&input)?);
    let activity = DeliveryActivity::new(
        Arc::new(source),
        vec![Arc::new(LocalWriter::new(copy)), Arc::new(LineCounter)],
    );
    let runner = ActivityRunner::new(RetryingActivity::new(activity, RetryPolicy::default()));

    let slot = Utc::now().with_timezone(&chrono_tz::UTC);
    let report = runner.run(RunContext::new("example", slot)).await;
    for delivery in &report.deliveries {
        println!("{delivery}");
    }
    match (report.status, report.error) {
        (RunStatus::Failed, Some(failure)) => {
            anyhow::bail!("the delivery failed: {}", failure.chain.join(": "))
        }
        _ => Ok(()),
    }
}

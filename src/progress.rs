//! Progress bars on standard error while `ferry trigger` runs a job, when standard error is
//! a terminal: one bar per writer with its bytes, rate and time left (a spinner when the
//! length is not known). Nothing is drawn otherwise.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::Metrics;

/// How often the bars are redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Bars following run `run_id` in `metrics`, until [`Bars::finish`] (or drop).
pub struct Bars {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bars {
    /// Stops drawing and clears the bars, before the receipts are printed.
    pub async fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts drawing run `run_id`'s progress, if standard error is a terminal.
pub fn show(metrics: Metrics, run_id: String) -> Option<Bars> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let task = tokio::spawn(async move {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        let mut bars: Vec<ProgressBar> = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        let _clear = Clear(multi.clone());
        loop {
            tick.tick().await;
            let Some(run) = metrics.live_run(&run_id) else {
                continue;
            };
            let snapshot = run.snapshot();
            for (index, (writer, taken)) in snapshot.writers.iter().enumerate() {
                if bars.len() <= index {
                    let bar = multi.add(new_bar(snapshot.total));
                    bar.set_message(writer.clone());
                    bars.push(bar);
                }
                bars[index].set_position(*taken);
            }
        }
    });
    Some(Bars { task: Some(task) })
}

/// Clears the bars when the drawing task ends (aborted with the run's end).
struct Clear(MultiProgress);

impl Drop for Clear {
    fn drop(&mut self) {
        let _ = self.0.clear();
    }
}

fn new_bar(total: Option<u64>) -> ProgressBar {
    match total {
        Some(total) => {
            let style = ProgressStyle::with_template(
                "{msg:.bold} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            ProgressBar::new(total).with_style(style)
        }
        None => {
            let style = ProgressStyle::with_template(
                "{spinner} {msg:.bold} {binary_bytes} {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
            ProgressBar::new_spinner().with_style(style)
        }
    }
}

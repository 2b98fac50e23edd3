//! The daemon booted in-process on a job file, with its events collected.

use ferry::daemon::{self, Control, Event};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A daemon running in this test's runtime.
pub struct Booted {
    pub control: mpsc::Sender<Control>,
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<Result<(), daemon::DaemonError>>,
}

pub fn boot(config: &Path) -> Booted {
    let (control, control_rx) = mpsc::channel(4);
    let (events_tx, events) = mpsc::unbounded_channel();
    let path = config.to_path_buf();
    let task = tokio::spawn(async move { daemon::run(&path, control_rx, Some(events_tx)).await });
    Booted {
        control,
        events,
        task,
    }
}

impl Booted {
    /// Every event within `within`.
    pub async fn collect(&mut self, within: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            seen.push(event);
        }
        seen
    }

    /// The next event, failing the test after `within`.
    pub async fn next(&mut self, within: Duration) -> Event {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the daemon stopped sending events"),
            Err(_) => panic!("no event within {within:?}"),
        }
    }

    /// Events until one matches `want` (returned), failing after `within` in all.
    pub async fn until(
        &mut self,
        within: Duration,
        want: impl Fn(&Event) -> bool,
    ) -> (Event, Vec<Event>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(event)) => event,
                _ => panic!("no matching event within {within:?}; saw {seen:#?}"),
            };
            if want(&event) {
                return (event, seen);
            }
            seen.push(event);
        }
    }

    pub async fn stop(mut self) -> Vec<Event> {
        self.control
            .send(Control::Shutdown)
            .await
            .expect("daemon listening");
        let mut seen = Vec::new();
        loop {
            let event = self.next(Duration::from_secs(20)).await;
            let stopped = matches!(event, Event::Stopped { .. });
            seen.push(event);
            if stopped {
                break;
            }
        }
        self.task
            .await
            .expect("daemon task")
            .expect("daemon ends cleanly");
        seen
    }
}

pub fn finished_job(event: &Event) -> Option<(&str, String)> {
    match event {
        Event::Finished(report) => Some((report.job.as_str(), report.slot.clone())),
        _ => None,
    }
}

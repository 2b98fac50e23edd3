//! The daemon booted in-process on a job file, with its events collected.
//!
//! [`boot`] runs it on the system clock. [`boot_at`] runs it on tokio's paused clock, set to a
//! chosen instant, in a `#[tokio::test(start_paused = true)]`: time then moves only when the
//! test calls [`Booted::advance`], so a day of slots passes in milliseconds and every firing
//! happens at a known time. Waits for events have deadlines in real time either way (a paused
//! clock would never end a tokio timeout).

use chrono::{DateTime, Utc};
use ferry::daemon::{self, Control, Event};
use ferry::report::RunReport;
use ferry::schedule::Clock;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A daemon running in this test's runtime.
pub struct Booted {
    pub control: mpsc::Sender<Control>,
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<Result<(), daemon::DaemonError>>,
    /// Keeps a paused clock from moving by itself (see [`Hold`]).
    _hold: Option<Hold>,
}

/// Runs the daemon on `config`, on the system clock.
pub fn boot(config: &Path) -> Booted {
    spawn(config, Clock::System, None)
}

/// Runs the daemon on `config` (whose `[api]` listens) on the system clock, once its API
/// listens; returns it and the API's base URL (`http://127.0.0.1:PORT`).
pub async fn boot_with_api(config: &Path) -> (Booted, String) {
    let mut daemon = boot(config);
    let (event, _) = daemon
        .until(Duration::from_secs(30), |e| {
            matches!(e, Event::Listening { .. })
        })
        .await;
    let Event::Listening { address } = event else {
        unreachable!("matched above")
    };
    (daemon, format!("http://{address}"))
}

/// Runs the daemon on `config` on tokio's paused clock, which reads `at` now. The test must
/// run on a paused current-thread runtime (`#[tokio::test(start_paused = true)]`).
pub fn boot_at(config: &Path, at: DateTime<Utc>) -> Booted {
    let hold = Hold::new();
    spawn(config, Clock::tokio_from(at), Some(hold))
}

fn spawn(config: &Path, clock: Clock, hold: Option<Hold>) -> Booted {
    let (control, control_rx) = mpsc::channel(4);
    let (events_tx, events) = mpsc::unbounded_channel();
    let path = config.to_path_buf();
    let task =
        tokio::spawn(
            async move { daemon::run_on(clock, &path, control_rx, Some(events_tx)).await },
        );
    Booted {
        control,
        events,
        task,
        _hold: hold,
    }
}

/// Stops tokio's paused clock from jumping ahead by itself while held. A paused runtime with
/// nothing to do advances its clock to the next timer; a task waiting for SQLite (whose
/// worker is a thread tokio does not see) looks idle, so slots would fire while a run is
/// being recorded, and the store's own timeouts would expire at once. tokio does not
/// auto-advance while a blocking task runs: this one runs until dropped. A test on the
/// paused clock that opens a store itself holds one.
pub struct Hold(#[allow(dead_code)] std_mpsc::Sender<()>);

impl Hold {
    pub fn new() -> Hold {
        let (tx, rx) = std_mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || while rx.recv().is_ok() {});
        Hold(tx)
    }
}

/// Resolves after `within` of real time; the timing thread ends when this is dropped.
struct RealDeadline {
    fired: oneshot::Receiver<()>,
    _cancel: std_mpsc::Sender<()>,
}

impl RealDeadline {
    fn after(within: Duration) -> RealDeadline {
        let (fire, fired) = oneshot::channel();
        let (cancel, cancelled) = std_mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(within) {
                let _ = fire.send(());
            }
        });
        RealDeadline {
            fired,
            _cancel: cancel,
        }
    }

    /// `next` unless the deadline passes first (`None`).
    async fn race<T>(&mut self, next: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            value = next => Some(value),
            _ = &mut self.fired => None,
        }
    }
}

/// How long, in real time, the daemon gets to act on a step of a paused-clock test.
pub const WAIT: Duration = Duration::from_secs(10);

impl Booted {
    /// Waits for [`Event::Ready`]: the daemon's id (the owner of its runs).
    pub async fn ready(&mut self) -> String {
        match self.until(WAIT, |e| matches!(e, Event::Ready { .. })).await {
            (Event::Ready { owner, .. }, _) => owner,
            _ => unreachable!("matched above"),
        }
    }

    /// The next finished run, with the events before it.
    pub async fn finished(&mut self) -> (Box<RunReport>, Vec<Event>) {
        match self.until(WAIT, |e| matches!(e, Event::Finished(_))).await {
            (Event::Finished(report), before) => (report, before),
            _ => unreachable!("matched above"),
        }
    }

    /// Moves the paused clock on by `by`: what falls due meanwhile fires.
    pub async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
    }

    /// Every event within `within`.
    pub async fn collect(&mut self, within: Duration) -> Vec<Event> {
        let mut deadline = RealDeadline::after(within);
        let mut seen = Vec::new();
        while let Some(Some(event)) = deadline.race(self.events.recv()).await {
            seen.push(event);
        }
        seen
    }

    /// The next event, failing the test after `within`.
    pub async fn next(&mut self, within: Duration) -> Event {
        match RealDeadline::after(within).race(self.events.recv()).await {
            Some(Some(event)) => event,
            Some(None) => panic!("the daemon ended: {:?}", self.ended().await),
            None => panic!("no event within {within:?}"),
        }
    }

    /// Events until one matches `want` (returned), failing after `within` in all.
    pub async fn until(
        &mut self,
        within: Duration,
        want: impl Fn(&Event) -> bool,
    ) -> (Event, Vec<Event>) {
        let mut deadline = RealDeadline::after(within);
        let mut seen = Vec::new();
        loop {
            let event = match deadline.race(self.events.recv()).await {
                Some(Some(event)) => event,
                Some(None) => panic!(
                    "the daemon ended ({:?}) before a matching event; saw {seen:#?}",
                    self.ended().await
                ),
                None => panic!("no matching event within {within:?}; saw {seen:#?}"),
            };
            if want(&event) {
                return (event, seen);
            }
            seen.push(event);
        }
    }

    /// How the daemon task ended (its events channel closed).
    async fn ended(&mut self) -> String {
        match (&mut self.task).await {
            Ok(Ok(())) => "cleanly".to_owned(),
            Ok(Err(err)) => format!("error: {err}"),
            Err(err) => format!("task failed: {err}"),
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

/// The slots of the finished runs among `events`, in order.
pub fn finished_slots(events: &[Event]) -> Vec<DateTime<Utc>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Finished(report) => Some(super::utc(&report.slot)),
            _ => None,
        })
        .collect()
}

pub fn finished_job(event: &Event) -> Option<(&str, String)> {
    match event {
        Event::Finished(report) => Some((report.job.as_str(), report.slot.clone())),
        _ => None,
    }
}

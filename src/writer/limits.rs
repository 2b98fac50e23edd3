//! Per-destination connection limits (`max_connections`): servers cap sessions per client
//! ("421 Too many connections"), so this process opens at most that many to a destination
//! at once, across every job. A run takes the sessions all its writers to a destination
//! need in one go, before any of them starts (its writers are fed from one stream: one
//! waiting while another writes would stall both), and destinations in one order, so two
//! runs never hold part of what each other waits for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{DeliveryError, ErrorKind};

/// A destination whose sessions are limited: a key naming it (`ftp://host:port`) and the
/// most sessions to it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// The destination, as a key (no credentials).
    pub destination: String,
    /// The most sessions to it at once.
    pub max: u32,
}

/// A destination's limit as first configured, and its sessions.
type Destination = (u32, Arc<Semaphore>);

/// Each destination's sessions, by key.
static LIMITS: LazyLock<Mutex<HashMap<String, Destination>>> = LazyLock::new(Default::default);

/// Sessions a run holds; given back when dropped.
#[derive(Debug, Default)]
pub struct Sessions(Vec<OwnedSemaphorePermit>);

/// Takes the sessions `limits` (one per writer that has a limit) need: for each
/// destination, one per writer, waiting while other runs hold them.
pub async fn take(limits: &[ConnectionLimit]) -> Result<Sessions, DeliveryError> {
    let mut wanted: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for limit in limits {
        let entry = wanted
            .entry(limit.destination.as_str())
            .or_insert((limit.max, 0));
        entry.0 = entry.0.min(limit.max);
        entry.1 += 1;
    }
    let mut held = Sessions::default();
    for (destination, (max, count)) in wanted {
        let semaphore = {
            let mut limits = LIMITS.lock();
            let (first, semaphore) = limits
                .entry(destination.to_owned())
                .or_insert_with(|| (max, Arc::new(Semaphore::new(max as usize))));
            if *first != max {
                tracing::warn!(
                    destination,
                    max_connections = max,
                    applied = *first,
                    "Jobs give this destination different max_connections; the first one read applies."
                );
            }
            if count > *first {
                return Err(DeliveryError::new(
                    ErrorKind::Config,
                    format!(
                        "{count} writers of the job go to {destination} at once, but max_connections allows {first}"
                    ),
                ));
            }
            Arc::clone(semaphore)
        };
        if semaphore.available_permits() < count as usize {
            tracing::info!(
                destination,
                "Waiting for a session to the destination (max_connections)."
            );
        }
        let permits = semaphore
            .acquire_many_owned(count)
            .await
            .map_err(|_| DeliveryError::new(ErrorKind::Io, "the connection limits are closed"))?;
        held.0.push(permits);
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(destination: &str, max: u32) -> ConnectionLimit {
        ConnectionLimit {
            destination: destination.into(),
            max,
        }
    }

    #[tokio::test]
    async fn a_destination_gets_at_most_its_limit_and_a_run_all_it_needs_at_once() {
        let host = "ftp://limits-test-a:21";
        let first = take(&[limit(host, 2), limit(host, 2)]).await.expect("two");
        // A third session waits until the first run gives its two back.
        let waiting = tokio::spawn(async move { take(&[limit(host, 2)]).await.map(drop) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.expect("task").expect("then it gets one");
        let err = take(&[limit(host, 2), limit(host, 2), limit(host, 2)])
            .await
            .expect_err("more writers than the limit");
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}

//! A run's hold on its row in the store: the epoch its claim or take-over got, and whether
//! the hold still stands.
//!
//! Every write a run's owner makes (attempt, checkpoint, lease renewal, outcome) names the
//! epoch; the store refuses it once another daemon has taken the run over (which raised the
//! epoch). A refused write, or a lease that could not be renewed before it would run out,
//! *loses* the tenure: the run stops at once, without recording, notifying or cleaning up,
//! since its checkpoints and partial files are the new owner's now.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The epoch of a run claimed afresh (take-overs count up from it).
pub const FIRST_EPOCH: i64 = 1;

/// A run's hold on its row: shared by every clone of the run's context.
#[derive(Debug, Clone)]
pub struct Tenure {
    epoch: i64,
    lost: CancellationToken,
    /// When the store last confirmed the hold (the claim, a take-over or a renewal).
    confirmed: Arc<Mutex<Instant>>,
}

impl Default for Tenure {
    fn default() -> Tenure {
        Tenure::new(FIRST_EPOCH)
    }
}

impl Tenure {
    /// A hold at `epoch`, confirmed now.
    pub fn new(epoch: i64) -> Tenure {
        Tenure {
            epoch,
            lost: CancellationToken::new(),
            confirmed: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// The epoch every write of the run names.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The store confirmed the hold just now.
    pub fn confirm(&self) {
        *self.confirmed.lock() = Instant::now();
    }

    /// How long ago the store last confirmed the hold.
    pub fn since_confirmed(&self) -> Duration {
        self.confirmed.lock().elapsed()
    }

    /// Whether the hold is certainly still this process's: confirmed within two thirds of
    /// `lease` (no other daemon may take the run over before the lease runs out).
    pub fn fresh(&self, lease: Duration) -> bool {
        self.since_confirmed() < lease * 2 / 3
    }

    /// Gives the run up, saying why (logged once): everything waiting on [`Tenure::lost`]
    /// stops.
    pub fn lose(&self, why: &str) {
        if !self.lost.is_cancelled() {
            tracing::warn!(
                reason = why,
                "The run is no longer this daemon's; stopping it without recording or cleaning up (another daemon finishes it from its checkpoints)."
            );
            self.lost.cancel();
        }
    }

    /// Whether the run was given up.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Completes when the run is given up.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }
}

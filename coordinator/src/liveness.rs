//! Drops members that stopped sending heartbeats, failing the step they
//! were part of so that the others redo it.

use std::sync::Arc;
use std::time::Duration;

use crate::roster::Roster;
use crate::round_slot::RoundSlot;

/// Checks every half second, until aborted.
pub async fn reap_silent_members(roster: Arc<Roster>, rounds: Arc<RoundSlot>, timeout: Duration) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for m in roster.reap(timeout) {
            tracing::warn!(worker = m.id, name = %m.name, "worker silent for {:.0} s: dropped", timeout.as_secs_f64());
            rounds.fail_member(m.id, format!("worker {} stopped answering", m.id)).await;
        }
    }
}

//! Drops members that are gone, failing the step they were part of so that
//! the others redo it: at once when a member's Attach call ends (its
//! process died or its connection broke), and after the heartbeat timeout
//! for members that fell silent on an open connection (a hung process).

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

/// Member `id`'s Attach call ended (`why`): drops it, failing its step.
/// Nothing happens for a worker that is no member any more (dropped
/// already, or registered again under a new id).
pub async fn attach_ended(roster: &Roster, rounds: &RoundSlot, id: u64, why: &str) {
    if let Some(m) = roster.remove(id) {
        tracing::warn!(worker = id, name = %m.name, "worker lost ({why}): dropped at once");
        rounds.fail_member(id, format!("worker {id} was lost ({why})")).await;
    }
}

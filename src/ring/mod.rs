//! The worker-to-worker data plane of `[dist] backend = "ring"`: a
//! bandwidth-optimal ring all-reduce (reduce-scatter, then all-gather) over
//! direct TCP connections between the step's members, in chunks that are
//! passed on as soon as they are summed. Between members of one host the
//! bytes go through shared memory instead, the connection carrying only
//! headers and flow control (`shm.rs`, `links.rs`, `allreduce_links.rs`).
//!
//! The coordinator stays the control plane: it tells each attempt's
//! members their ring (ranks, endpoints, an epoch and a one-time key) in
//! the assignment, receives the scalars each step commits on (and, with
//! its shadow on, each member's reduced segment after the commit, for its
//! copy of parameters, Adam and EMA), decides the outcome and ends a
//! broken attempt. `plan.rs` is the shape both sides
//! compute, `frame.rs` the bytes on a link, `allreduce.rs` the algorithm,
//! `peers.rs` the listener and the dialling, `member.rs` one member's
//! part in an attempt, `measure.rs` the scalars a step commits on, taken
//! as the ring passes over the gradient, `state_link.rs` a replica's state
//! sent over the same listeners to a joining peer, `fault.rs` what a member reports when it breaks,
//! `topology.rs` the ring order that keeps each host's members together.

mod allreduce;
mod allreduce_links;
pub mod fault;
pub mod feed;
pub mod frame;
mod links;
pub mod measure;
mod member;
mod peers;
pub mod plan;
pub mod shm;
pub mod state_link;
pub mod topology;

pub use allreduce::{all_reduce, RingSpec};
pub use allreduce_links::{all_reduce_links, slots_needed, Next, Prev};
pub use fault::{LinkFault, RingError, RingFault, RingFaultKind};
pub use measure::Measured;
pub use member::{PlanError, Reduced, RingMembership};
pub use peers::{advertised_endpoint, connect, PeerListener};

//! What the coordinator and the worker share for being watched: the
//! Prometheus exposition helpers ([`prom`]) and the HTTP port of
//! `--metrics-listen` ([`http`]) and the gRPC health service ([`health`]).
//! Log formats are in [`crate::runtime`].

pub mod health;
pub mod http;
pub mod prom;

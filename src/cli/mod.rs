//! The `ddpm` subcommands, one file each.

pub mod bench;
pub mod bench_allreduce;
pub mod bench_checkpoint;
pub mod bench_dist;
pub mod bench_idle;
pub mod bench_sample;
pub mod bench_train;
pub mod bench_util;
pub mod checkpoints;
pub mod coord_conn;
pub mod data;
pub mod data_opts;
pub mod fid_stats;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod sample;
pub mod status;

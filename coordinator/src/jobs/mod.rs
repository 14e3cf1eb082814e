//! Sampling, evaluation and analysis jobs.
//!
//! Policy. A job pins its weights when it starts (a copy of the live EMA or
//! raw parameters, or those of a checkpoint), so training can go on while
//! it runs and nothing a job does touches the training state. Its tasks go
//! to workers registered with `--role eval` at any time, and to training
//! workers once training is over (they never leave a training step for a
//! job). A job submitted during training with no eval worker waits for the
//! end of training; `ddpm-coord --serve` keeps the coordinator up for jobs
//! after the last step, and without it the coordinator finishes the jobs
//! already submitted before it exits. The end-of-training grid and the
//! periodic evaluations are jobs too, submitted by the training loop.
//!
//! Image `i` of a job is drawn from noise keyed by `(seed, i)` and every
//! task is a whole forward batch starting at a multiple of `batch`, so a
//! job gives the same images whatever the number of workers.
//!
//! Files: `spec*.rs` (requests validated into typed specs), `queue.rs`
//! (job records and states), `scheduler.rs` (one job at a time),
//! `task_loop.rs` (a job's tasks to eligible workers), `tasks.rs` (who
//! holds which range), `runners/`
//! (one per kind), `results.rs` (results routed to their job),
//! `pinned.rs`, `references.rs`, `sink.rs` (images on disk as they arrive),
//! `outputs.rs`, `context.rs`, `service.rs`
//! (the `Jobs` gRPC service).

pub mod context;
pub mod failure;
pub mod outputs;
pub mod pinned;
pub mod queue;
pub mod references;
pub mod results;
pub mod roots;
mod runners;
pub mod scheduler;
pub mod service;
pub mod sink;
pub mod spec;
pub mod spec_analysis;
pub mod spec_error;
pub mod spec_eval;
pub mod spec_sample;
pub mod task_loop;
pub mod tasks;

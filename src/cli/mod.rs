//! The `ddpm` subcommands, one file each.

pub mod model;

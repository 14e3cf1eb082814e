//! FID reference statistics computed by earlier evaluation jobs, kept for
//! the coordinator's life so that later jobs on the same reference reuse
//! them.

use std::collections::HashMap;
use std::sync::Mutex;

use ddpm::eval::FidStats;

#[derive(Default)]
pub struct ReferenceCache {
    by_key: Mutex<HashMap<String, FidStats>>,
}

impl ReferenceCache {
    /// The key of a reference: the dataset, its image count, the Inception file.
    pub fn key(data: &str, images: u64, inception: &str) -> String {
        format!("{data}|{images}|{inception}")
    }

    pub fn get(&self, key: &str) -> Option<FidStats> {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    pub fn insert(&self, key: String, stats: FidStats) {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner()).insert(key, stats);
    }
}

//! The run's id: a random 64-bit number written once, at the run's first
//! start, as `run_id` (16 hex digits) in the run's store, and sent to the
//! workers in the run config. A worker keeps the state its device holds
//! across a lost coordinator only for a run config with the same id, so a
//! new run at the same address, or at the same path after the old one was
//! deleted, never goes on from another run's replicas.

use super::error::StoreError;
use super::run_store::RunStore;

/// The run's id's key in its store.
pub const KEY: &str = "run_id";

#[derive(Debug, thiserror::Error)]
pub enum RunIdError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{place} holds {found:?}, not a run id (16 hex digits, not all zero): restore it, or delete it \
         (workers that outlived the last coordinator then fetch the state instead of keeping theirs)"
    )]
    Corrupt { place: String, found: String },
}

/// The run's id, written first if the run has none.
pub async fn ensure(store: &RunStore) -> Result<u64, RunIdError> {
    if let Some(id) = read(store).await? {
        return Ok(id);
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source");
    let id = u64::from_le_bytes(bytes).max(1);
    store.put_new(KEY, format!("{id:016x}\n").into()).await?;
    // Two starts racing on a server that ignores If-None-Match: whichever
    // id is there now is the run's.
    read(store).await?.ok_or_else(|| RunIdError::Corrupt { place: store.location(KEY), found: String::new() })
}

/// The run's id, if it has one.
pub async fn read(store: &RunStore) -> Result<Option<u64>, RunIdError> {
    let bytes = match store.get(KEY).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    match u64::from_str_radix(&text, 16) {
        Ok(id) if id != 0 && text.len() == 16 => Ok(Some(id)),
        _ => Err(RunIdError::Corrupt { place: store.location(KEY), found: text.chars().take(40).collect() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_id_is_made_once_and_a_corrupt_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().display().to_string(), &Default::default()).unwrap();
        let id = ensure(&store).await.unwrap();
        assert_ne!(id, 0);
        assert_eq!(ensure(&store).await.unwrap(), id, "the second start reads the first's id");
        std::fs::write(dir.path().join(KEY), "not hex").unwrap();
        let e = ensure(&store).await.unwrap_err().to_string();
        assert!(e.contains("\"not hex\"") && e.contains("run_id"), "{e}");
    }
}

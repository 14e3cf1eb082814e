//! The sharded layout against a local store: written by "replicas" shard
//! by shard, committed, read back bit-exact through the same readers as
//! the whole layout; torn shard sets never count.

use super::*;
use crate::checkpoint::{self, step_dir};
use crate::store::StoreOptions;

fn checkpoint_of(step: u64) -> CheckpointData {
    let layout = Layout::from_named(vec![
        ("conv_in.weight".into(), vec![4, 3, 3, 3]),
        ("conv_in.bias".into(), vec![4]),
        ("time_embedding.linear_1.weight".into(), vec![5, 3]),
    ]);
    let n = layout.total;
    let v = |k: u64| (0..n).map(|i| (i as u64 * 7 + k * 13 + step) as f32 / 100.0 - 1.0).collect::<Vec<f32>>();
    let config = TrainConfig::tiny();
    CheckpointData {
        step,
        adam_step: step - 1,
        skipped_steps: 1,
        order: OrderState { seed: config.train.seed, dataset_len: 100, batch_size: config.train.batch_size, step },
        config,
        layout,
        params: v(1),
        adam_m: v(2),
        adam_v: v(3),
        ema: v(4),
    }
}

/// Replica `index`'s shard of `data` among `count`.
fn shard_of(data: &CheckpointData, index: u32, count: u32) -> ShardData {
    let (a, b) = shard_range(data.layout.total as u64, index, count);
    let r = a as usize..b as usize;
    ShardData {
        step: data.step,
        adam_step: data.adam_step,
        index,
        count,
        start: a,
        params: data.params[r.clone()].to_vec(),
        ema: data.ema[r.clone()].to_vec(),
        adam_m: data.adam_m[r.clone()].to_vec(),
        adam_v: data.adam_v[r].to_vec(),
    }
}

fn commit_of(data: &CheckpointData, shards: Vec<WrittenShard>) -> ShardedCommit {
    ShardedCommit {
        step: data.step,
        adam_step: data.adam_step,
        skipped_steps: data.skipped_steps,
        order: data.order.clone(),
        config: data.config.clone(),
        layout: data.layout.clone(),
        shards,
    }
}

async fn write_all(store: &RunStore, data: &CheckpointData, count: u32) -> Vec<WrittenShard> {
    let mut out = Vec::new();
    for i in 0..count {
        out.push(write_shard(store, shard_of(data, i, count)).await.unwrap());
    }
    out
}

fn store(dir: &tempfile::TempDir) -> RunStore {
    RunStore::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap()
}

#[test]
fn ranges_cover_every_value_once() {
    for total in [0u64, 1, 7, 115, 1 << 40] {
        for count in 1..=9u32 {
            let ranges: Vec<(u64, u64)> = (0..count).map(|i| shard_range(total, i, count)).collect();
            check_cover(&ranges, total).unwrap();
        }
    }
    assert!(check_cover(&[(0, 3), (4, 7)], 7).unwrap_err().contains("expected it to start at 3"));
    assert!(check_cover(&[(0, 3)], 7).unwrap_err().contains("hold 3 values, the model has 7"));
}

#[tokio::test]
async fn four_shards_read_back_bit_exact_by_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let data = checkpoint_of(6);
    let shards = write_all(&store, &data, 4).await;
    // Before the commit the step is torn: no reader takes it.
    assert!(checkpoint::load_latest(&store).await.unwrap().is_none());
    commit(&store, &commit_of(&data, shards)).await.unwrap();
    assert_eq!(checkpoint::read(&store, 6).await.unwrap(), data);
    let listed = checkpoint::list(&store).await.unwrap();
    assert!(listed[0].complete, "{listed:?}");
    let m = checkpoint::verify(&store, 6).await.unwrap();
    assert_eq!((m.format_version, m.shards.len()), (format::SHARDED_VERSION, 4));
    assert_eq!(checkpoint::load_latest(&store).await.unwrap().unwrap().data, data);
}

#[tokio::test]
async fn a_missing_or_short_shard_fails_the_commit_and_leaves_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let older = checkpoint_of(3);
    checkpoint::write(&store, &older).await.unwrap();
    let data = checkpoint_of(6);
    let mut shards = write_all(&store, &data, 3).await;
    store.delete(&format!("{}/{}", step_dir(6), shards[1].name)).await.unwrap();
    let e = commit(&store, &commit_of(&data, shards.clone())).await.unwrap_err().to_string();
    assert!(e.contains("shard_001_of_003.safetensors is not in"), "{e}");
    shards[1] = write_shard(&store, shard_of(&data, 1, 3)).await.unwrap();
    shards[2].bytes += 4;
    let e = commit(&store, &commit_of(&data, shards)).await.unwrap_err().to_string();
    assert!(e.contains("its replica wrote"), "{e}");
    // The older whole checkpoint stays the latest.
    assert_eq!(checkpoint::load_latest(&store).await.unwrap().unwrap().data, older);
}

#[tokio::test]
async fn shards_that_do_not_cover_the_model_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let data = checkpoint_of(6);
    let mut shards = write_all(&store, &data, 2).await;
    shards.pop();
    let e = commit(&store, &commit_of(&data, shards)).await.unwrap_err().to_string();
    assert!(e.contains("the model has"), "{e}");
    assert!(store.list(&format!("{}/{}", step_dir(6), format::MANIFEST_FILE)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_damaged_shard_makes_the_checkpoint_torn_and_an_older_one_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let older = checkpoint_of(3);
    let shards = write_all(&store, &older, 2).await;
    commit(&store, &commit_of(&older, shards)).await.unwrap();
    let data = checkpoint_of(6);
    let shards = write_all(&store, &data, 2).await;
    commit(&store, &commit_of(&data, shards.clone())).await.unwrap();
    // Same size, other bytes: the checksum finds it.
    let key = format!("{}/{}", step_dir(6), shards[0].name);
    let mut bytes = store.get(&key).await.unwrap().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    store.put(&key, bytes.into()).await.unwrap();
    let e = checkpoint::read(&store, 6).await.unwrap_err().to_string();
    assert!(e.contains("shard_000_of_002.safetensors fails its checksum"), "{e}");
    let loaded = checkpoint::load_latest(&store).await.unwrap().unwrap();
    assert_eq!((loaded.data, loaded.skipped.len()), (older, 1));
}

#[test]
fn a_shard_with_other_metadata_is_a_format_error() {
    let data = checkpoint_of(6);
    let shard = shard_of(&data, 1, 2);
    let entry = ShardEntry { name: shard_file(1, 2), start: shard.start, end: shard.end() };
    let (bytes, _) = encode_shard(&shard).unwrap();
    let p = data.layout.total;
    let mut bufs = [vec![0f32; p], vec![0f32; p], vec![0f32; p], vec![0f32; p]];
    let [a, b, c, d] = &mut bufs;
    decode_shard(6, data.adam_step, &entry, &bytes, [a, b, c, d]).unwrap();
    assert_eq!(&bufs[0][entry.start as usize..], &data.params[entry.start as usize..]);
    let [a, b, c, d] = &mut bufs;
    let e = decode_shard(7, data.adam_step, &entry, &bytes, [a, b, c, d]).unwrap_err().to_string();
    assert!(e.contains("its step metadata is Some(\"6\"), the manifest and state.json say 7"), "{e}");
}

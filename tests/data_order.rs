//! The sampling order: every epoch is a permutation, a global batch is a
//! function of (seed, step), and splitting it over 1, 2 or 3 workers gives
//! every sample the same pixels, flip, timestep and noise.

use std::collections::BTreeMap;

use ddpm::data::{self, global_batch, shard_ranges, BatchItem, OpenOptions, OrderState, ResumeError, SampleOrder};

#[test]
fn each_epoch_covers_every_index_once() {
    // 97 samples in batches of 10: batches straddle epoch boundaries.
    let (len, batch) = (97usize, 10usize);
    let mut order = SampleOrder::new(7, len);
    let stream: Vec<BatchItem> = (0..40).flat_map(|step| order.batch(batch, step)).collect();
    for (p, item) in stream.iter().enumerate() {
        assert_eq!(item.position, p as u64);
    }
    for epoch in stream.chunks_exact(len) {
        let mut idx: Vec<usize> = epoch.iter().map(|i| i.index).collect();
        idx.sort_unstable();
        assert_eq!(idx, (0..len).collect::<Vec<_>>());
    }
    // Consecutive epochs are shuffled differently.
    assert_ne!(stream[..len].iter().map(|i| i.index).collect::<Vec<_>>(), stream[len..2 * len].iter().map(|i| i.index).collect::<Vec<_>>());
}

#[test]
fn a_batch_is_a_function_of_seed_and_step() {
    let (len, batch) = (1000usize, 128usize);
    let mut order = SampleOrder::new(42, len);
    // The cached order agrees with the free function, in any order of steps
    // (resume at step 17 needs nothing but 17).
    for step in [0u64, 1, 7, 8, 3, 7, 100, 2, 1_000_000] {
        assert_eq!(order.batch(batch, step), global_batch(42, len, batch, step), "step {step}");
    }
    assert_eq!(global_batch(42, len, batch, 5), global_batch(42, len, batch, 5));
    assert_ne!(global_batch(42, len, batch, 5), global_batch(43, len, batch, 5), "the seed must change the order");
    assert_ne!(global_batch(42, len, batch, 5), global_batch(42, len, batch, 6));

    let state = OrderState { seed: 42, dataset_len: len, batch_size: batch, step: 9 };
    assert_eq!(state.position(), 9 * 128);
    assert!(state.check_resume(len, batch).is_ok());
    assert_eq!(state.check_resume(len + 1, batch), Err(ResumeError::DatasetLength { trained: len, now: len + 1 }));
    assert!(state.check_resume(len + 1, batch).unwrap_err().to_string().contains("1000 samples"));
    assert!(state.check_resume(len, 64).unwrap_err().to_string().contains("global batch of 128"));
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<OrderState>(&json).unwrap(), state);
}

/// Everything one sample contributes to a training step, as a worker
/// computes it from what the coordinator sent: model input (decoded and
/// flipped), timestep and noise.
#[derive(Debug, PartialEq)]
struct Prepared {
    position: u64,
    t: i64,
    x0: Vec<f32>,
    eps: Vec<f32>,
}

fn run_workers(workers: usize, seed: u64, step: u64, batch: usize) -> BTreeMap<u64, Prepared> {
    let ds = data::open(&"synthetic:shapes".parse().unwrap(), &OpenOptions::default()).unwrap();
    let items = global_batch(seed, ds.len(), batch, step);
    let decoder = ds.decoder();
    let mut out = BTreeMap::new();
    for (w, range) in shard_ranges(batch, workers).into_iter().enumerate() {
        // Coordinator side: the worker's share as bytes.
        let shipped: Vec<(BatchItem, bytes::Bytes)> = items[range].iter().map(|it| (*it, ds.encoded(it.index).unwrap())).collect();
        // Worker side.
        for (item, bytes) in shipped {
            let draw = item.draw(seed, step, 1000, true);
            let mut x0 = vec![0f32; decoder.sample_len()];
            decoder.decode_to_model_input(&bytes, draw.flip, &mut x0).unwrap();
            let mut eps = vec![0f32; decoder.sample_len()];
            item.noise(seed, step, &mut eps);
            let prev = out.insert(item.position, Prepared { position: item.position, t: draw.t, x0, eps });
            assert!(prev.is_none(), "worker {w} got position {} twice", item.position);
        }
    }
    out
}

#[test]
fn splitting_over_workers_changes_nothing() {
    let (seed, batch) = (2020u64, 20usize);
    for step in [0u64, 3, 2501] {
        let one = run_workers(1, seed, step, batch);
        assert_eq!(one.len(), batch);
        assert_eq!(one, run_workers(2, seed, step, batch), "step {step}: 2 workers");
        assert_eq!(one, run_workers(3, seed, step, batch), "step {step}: 3 workers");
        // Flips happen (about half), and a flipped sample's input is the
        // mirror image of its plain decode.
        let flipped: Vec<&Prepared> = one.values().filter(|p| ddpm::rng::sample_draw(seed, step, p.position, 1000, true).flip).collect();
        assert!(!flipped.is_empty() && flipped.len() < batch, "{} of {batch} flipped", flipped.len());
        let p = flipped[0];
        let index = global_batch(seed, 50_000, batch, step).iter().find(|i| i.position == p.position).unwrap().index;
        let ds = data::open(&"synthetic:shapes".parse().unwrap(), &OpenOptions::default()).unwrap();
        let mut plain = vec![0f32; 3 * 32 * 32];
        data::to_model_input(&data::decode_sample(ds.as_ref(), index).unwrap(), 3, 32, false, &mut plain);
        for (row_f, row_p) in p.x0.chunks(32).zip(plain.chunks(32)) {
            assert!(row_f.iter().eq(row_p.iter().rev()));
        }
    }
    assert_ne!(run_workers(1, seed, 0, batch), run_workers(1, seed + 1, 0, batch));
}

//! The readers return the pixels that independent tools wrote: CIFAR-10
//! batches from numpy/pickle, LSUN-style LMDBs from Python's lmdb and
//! Pillow's libwebp, image folders from Pillow (tests/golden/gen_data.py).
//! Lossless formats must match exactly; lossy ones are compared with
//! Pillow's decode, center crop and LANCZOS resize within a tolerance.

mod common;

use std::path::{Path, PathBuf};

use ddpm::data::{self, Dataset, DatasetSpec, OpenOptions, SampleFormat};

fn dir() -> PathBuf {
    common::golden_dir("data")
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join("manifest.json")).unwrap()).unwrap()
}

fn open(spec: &str) -> Box<dyn Dataset> {
    let spec: DatasetSpec = spec.parse().unwrap_or_else(|e| panic!("{e}"));
    data::open(&spec, &OpenOptions::default()).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn spec_at(kind: &str, path: &Path, suffix: &str) -> String {
    format!("{kind}:{}{suffix}", path.display())
}

fn read_u8(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

/// Every sample decoded, concatenated.
fn all_pixels(ds: &dyn Dataset) -> Vec<u8> {
    (0..ds.len()).flat_map(|i| data::decode_sample(ds, i).unwrap()).collect()
}

/// (mean, max) absolute difference.
fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let sum: u64 = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y) as u64).sum();
    let max = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y)).max().unwrap_or(0);
    (sum as f64 / a.len() as f64, max)
}

#[test]
fn cifar10_every_distribution_returns_the_generated_pixels() {
    let d = dir();
    let train = read_u8("cifar_train.u8");
    let test = read_u8("cifar_test.u8");
    let m = manifest();
    assert_eq!(train.len(), m["cifar"]["train_count"].as_u64().unwrap() as usize * 3072);
    let sources = [
        (d.join("cifar-10-batches-bin"), "cifar10-binary"),
        (d.clone(), "cifar10-binary"), // the parent folder of both versions
        (d.join("cifar-10-batches-py"), "cifar10-python"),
        (d.join("cifar-py3-protocol2"), "cifar10-python"),
        (d.join("cifar-py3-protocol5/cifar-10-batches-py"), "cifar10-python"),
        (d.join("cifar-10-binary.tar.gz"), "cifar10-binary"),
        (d.join("cifar-10-python.tar.gz"), "cifar10-python"),
    ];
    for (path, format) in sources {
        for (split, want) in [("", &train), (":train", &train), (":test", &test)] {
            let spec = spec_at("cifar10", &path, split);
            let ds = open(&spec);
            let info = ds.info();
            assert_eq!(info.format, format, "{spec}");
            assert_eq!((info.count, info.resolution, info.channels), (want.len() / 3072, 32, 3), "{spec}");
            assert_eq!(info.split.as_deref(), Some(if split == ":test" { "test" } else { "train" }));
            assert_eq!(ds.decoder().format(), SampleFormat::RawChw);
            // What travels is the raw CHW record itself.
            assert_eq!(&ds.encoded(3).unwrap()[..], &want[3 * 3072..4 * 3072], "{spec}");
            assert!(all_pixels(ds.as_ref()) == *want, "{spec}: pixels differ from the generator's");
        }
    }
    // Image 8 is record 1 of data_batch_2 (the first batch has 7).
    let ds = open(&spec_at("cifar10", &d.join("cifar-10-batches-bin"), ""));
    assert!(ds.describe(8).contains("record 1 of") && ds.describe(8).contains("data_batch_2.bin"), "{}", ds.describe(8));
}

#[test]
fn lsun_lossless_webp_is_exact_after_the_crop() {
    let ds = open(&spec_at("lsun", &dir().join("lsun/lossless_lmdb"), "@64"));
    assert_eq!(ds.len(), 6);
    assert_eq!(all_pixels(ds.as_ref()), read_u8("lsun_lossless_64.u8"));
}

#[test]
fn lsun_webp_and_jpeg_match_pillow() {
    let m = manifest();
    let church = &m["lsun"]["church"];
    let path = dir().join("lsun/church_outdoor_train_lmdb");
    let ds = open(&spec_at("lsun", &path, ""));
    let info = ds.info();
    assert_eq!((info.count, info.resolution, info.format.as_str()), (10, 256, "lsun-lmdb"));
    assert_eq!(info.split.as_deref(), Some("train"));
    let keys: Vec<&str> = church["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    let jpeg: Vec<&str> = church["jpeg_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    for (k, key) in keys.iter().enumerate() {
        assert!(ds.describe(k).contains(key), "sample {k} should be key {key}: {}", ds.describe(k));
        // The full decode: libwebp here and in Pillow, so identical; JPEG
        // decoders differ by rounding.
        let (_, _, rgb) = data::decode_rgb(&ds.encoded(k).unwrap()).unwrap();
        let (mean, max) = diff(&rgb, &read_u8(&format!("lsun_decoded_{k}.u8")));
        eprintln!("lsun decode {key}: mean {mean:.3} max {max}");
        if jpeg.contains(key) {
            assert!(mean < 0.5 && max <= 24, "jpeg {key}: mean {mean} max {max}");
        } else {
            assert_eq!(max, 0, "webp {key} decodes differently from Pillow");
        }
    }
    for r in [256usize, 64] {
        let ds = open(&spec_at("lsun", &path, &format!("@{r}")));
        assert_eq!(ds.decoder().resolution(), r);
        let ours = all_pixels(ds.as_ref());
        let want = read_u8(&format!("lsun_expected_{r}.u8"));
        let per = 3 * r * r;
        for k in 0..ds.len() {
            let (mean, max) = diff(&ours[k * per..(k + 1) * per], &want[k * per..(k + 1) * per]);
            eprintln!("lsun @{r} image {k}: mean {mean:.3} max {max}");
            assert!(mean < 0.6 && max <= 16, "@{r} image {k}: mean {mean} max {max} vs Pillow crop + LANCZOS");
        }
    }
}

#[test]
fn folder_reads_nested_images_in_path_order() {
    let m = manifest();
    let files: Vec<&str> = m["folder"]["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let exact: Vec<&str> = m["folder"]["exact_at_48"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let root = dir().join("folder");
    // Default resolution: the smaller side of the first image (48).
    let ds = open(&spec_at("folder", &root, ""));
    let info = ds.info();
    assert_eq!((info.count, info.resolution, info.format.as_str(), info.split.clone()), (files.len(), 48, "image-folder", None));
    for r in [48usize, 32] {
        let ds = open(&spec_at("folder", &root, &format!("@{r}")));
        let want = read_u8(&format!("folder_expected_{r}.u8"));
        let per = 3 * r * r;
        for (k, rel) in files.iter().enumerate() {
            assert!(ds.describe(k).ends_with(rel), "sample {k} should be {rel}: {}", ds.describe(k));
            let ours = data::decode_sample(ds.as_ref(), k).unwrap();
            let (mean, max) = diff(&ours, &want[k * per..(k + 1) * per]);
            eprintln!("{rel} @{r}: mean {mean:.3} max {max}");
            if r == 48 && exact.contains(rel) {
                assert_eq!(max, 0, "{rel} @48 must be exact (PNG, crop only)");
            } else {
                assert!(mean < 0.6 && max <= 16, "{rel} @{r}: mean {mean} max {max}");
            }
        }
    }
}

#[test]
fn synthetic_shapes_is_deterministic_and_honours_resolution() {
    let ds = open("synthetic:shapes");
    let info = ds.info();
    assert_eq!((info.count, info.resolution, info.split.as_deref()), (50_000, 32, Some("train")));
    assert_eq!(open("synthetic:shapes:test").len(), 10_000);
    assert_eq!(ds.encoded(123).unwrap(), open("synthetic:shapes").encoded(123).unwrap());
    assert_ne!(ds.encoded(123).unwrap(), ds.encoded(124).unwrap());
    let big = data::open(&"synthetic:shapes".parse().unwrap(), &OpenOptions { resolution: Some(64) }).unwrap();
    assert_eq!(data::decode_sample(big.as_ref(), 5).unwrap().len(), 3 * 64 * 64);
    // The decoder travels to workers as JSON and back unchanged.
    let json = serde_json::to_string(&big.decoder()).unwrap();
    assert_eq!(serde_json::from_str::<data::Decoder>(&json).unwrap(), big.decoder());
}

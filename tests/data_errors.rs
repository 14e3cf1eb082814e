//! Bad input gets an error that names the file (or spec, or sample) and
//! says what is wrong, never a panic.

mod common;

use std::path::{Path, PathBuf};

use ddpm::data::{self, DataError, Dataset, DatasetSpec, OpenOptions};

fn dir() -> PathBuf {
    common::golden_dir("data")
}

fn open_err(spec: &str) -> String {
    let spec: DatasetSpec = match spec.parse() {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    match data::open(&spec, &OpenOptions::default()) {
        Ok(_) => panic!("{spec} opened"),
        Err(e) => e.to_string(),
    }
}

fn open_ok(spec: String) -> Box<dyn Dataset> {
    data::open(&spec.parse().unwrap(), &OpenOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error {e:?} should contain {p:?}");
    }
}

fn spec(kind: &str, p: &Path) -> String {
    format!("{kind}:{}", p.display())
}

#[test]
fn truncated_cifar_bin_names_the_file() {
    let d = dir().join("bad/truncated");
    let e = open_err(&spec("cifar10", &d));
    assert_has(&e, &["data_batch_3.bin", "not a whole number of 3073-byte records", "truncated"]);
    // The test split there is intact.
    assert_eq!(open_ok(format!("{}:test", spec("cifar10", &d))).len(), 9);
}

#[test]
fn truncated_download_names_the_archive() {
    let e = open_err(&spec("cifar10", &dir().join("bad/cifar-10-binary-truncated.tar.gz")));
    assert_has(&e, &["cifar-10-binary-truncated.tar.gz", "not a readable .tar.gz"]);
}

#[test]
fn wrong_pickles_name_the_file() {
    let e = open_err(&spec("cifar10", &dir().join("bad/wrong-pickle")));
    assert_has(
        &e,
        &["wrong-pickle/cifar-10-batches-py/data_batch_1", "not a CIFAR-10 python batch", "no 'data' entry", "keys: images, classes"],
    );
    let e = open_err(&spec("cifar10", &dir().join("bad/not-a-pickle")));
    assert_has(&e, &["not-a-pickle/cifar-10-batches-py/data_batch_1", "not a pickle of protocol 2 or later", "starts with 74 68 69 73"]);
}

#[test]
fn missing_cifar_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open_err(&spec("cifar10", tmp.path()));
    assert_has(&e, &[&tmp.path().display().to_string(), "no CIFAR-10 train batches", "data_batch_1.bin"]);
    std::fs::copy(dir().join("cifar-10-batches-bin/data_batch_1.bin"), tmp.path().join("data_batch_1.bin")).unwrap();
    let e = open_err(&spec("cifar10", tmp.path()));
    assert_has(&e, &["data_batch_2.bin", "missing"]);
    let e = open_err(&format!("{}@64", spec("cifar10", &dir().join("cifar-10-batches-bin"))));
    assert_has(&e, &["CIFAR-10 images are 32x32", "resolution 64"]);
}

#[test]
fn missing_or_foreign_lmdb() {
    let e = open_err("lsun:/nonexistent/church_outdoor_train_lmdb");
    assert_has(&e, &["/nonexistent/church_outdoor_train_lmdb", "No such file"]);
    let tmp = tempfile::tempdir().unwrap();
    let e = open_err(&spec("lsun", tmp.path()));
    assert_has(&e, &["no data.mdb", "LMDB directory"]);
    let e = open_err(&spec("lsun", &dir().join("cifar-10-batches-bin/data_batch_1.bin")));
    assert_has(&e, &["data_batch_1.bin", "not an LMDB database"]);
}

#[test]
fn undecodable_images_name_the_sample() {
    let ds = open_ok(format!("{}@32", spec("folder", &dir().join("bad/undecodable_folder"))));
    // Sorted: broken.png, good.png, text.jpg.
    let e = data::decode_sample(ds.as_ref(), 0).unwrap_err().to_string();
    assert_has(&e, &["cannot decode", "broken.png", "corrupt or truncated"]);
    assert!(data::decode_sample(ds.as_ref(), 1).is_ok());
    let e = data::decode_sample(ds.as_ref(), 2).unwrap_err().to_string();
    assert_has(&e, &["text.jpg", "not a WebP, PNG or JPEG image"]);

    let ds = open_ok(spec("lsun", &dir().join("bad/undecodable_lmdb")));
    let last = ds.len() - 1;
    let e = data::decode_sample(ds.as_ref(), last).unwrap_err().to_string();
    assert_has(&e, &[&"f".repeat(40), "undecodable_lmdb", "WebP"]);
    // Workers see only bytes: the error still says what is wrong.
    let e = ds.decoder().decode(&ds.encoded(last).unwrap()).unwrap_err().to_string();
    assert_has(&e, &["corrupt, truncated or animated WebP"]);
    assert!(matches!(ds.encoded(99), Err(DataError::IndexOutOfRange { index: 99, len: 4 })));
}

#[test]
fn empty_or_missing_folder() {
    let e = open_err(&spec("folder", &dir().join("bad/empty_folder")));
    assert_has(&e, &["empty_folder", "no images"]);
    let e = open_err("folder:/nonexistent/pics");
    assert_has(&e, &["/nonexistent/pics", "No such file"]);
}

#[test]
fn bad_specs() {
    assert_has(
        &open_err("imagenet:/data/train"),
        &["imagenet:/data/train", "unknown dataset kind 'imagenet'", "cifar10, lsun, folder, synthetic"],
    );
    assert_has(&open_err("/data/cifar"), &["expected KIND:LOCATION"]);
    assert_has(&open_err("synthetic:mnist"), &["unknown synthetic dataset 'mnist'", "shapes"]);
    let spec: DatasetSpec = "synthetic:shapes@32".parse().unwrap();
    let e = data::open(&spec, &OpenOptions { resolution: Some(64) }).err().unwrap().to_string();
    assert_has(&e, &["resolution 32", "configuration for 64"]);
}

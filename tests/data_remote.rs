//! Datasets in object storage, against the S3 test server: a CIFAR-10
//! archive (one object) and a folder of images (many objects) are fetched to
//! a local cache, read exactly like the originals, and reused on the next
//! fetch unless they changed.

mod common;

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use ddpm::data::{self, DatasetSpec, OpenOptions};
use ddpm::store::{RunStore, StoreOptions};

fn s3() -> (String, StoreOptions) {
    common::s3_test_store("data")
}

/// `cifar-10-binary.tar.gz` with five train batches of 3 images and a test batch of 2.
fn cifar_archive(path: &Path) {
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let batches = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"];
    for (b, name) in batches.iter().enumerate() {
        let records = if *name == "test_batch" { 2 } else { 3 };
        let mut bytes = Vec::new();
        for r in 0..records {
            bytes.push((b + r) as u8 % 10);
            bytes.extend((0..3072).map(|i| ((i * 7 + r * 13 + b * 101) % 256) as u8));
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("cifar-10-batches-bin/{name}.bin"), &bytes[..]).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

fn all_encoded(spec: &DatasetSpec) -> Vec<Bytes> {
    let ds = data::open(spec, &OpenOptions::default()).unwrap_or_else(|e| panic!("{spec}: {e}"));
    (0..ds.len()).map(|i| ds.encoded(i).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_fetched_from_s3_cached_and_refreshed() {
    let (prefix, opts) = s3();
    let local = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = RunStore::open(&prefix, &opts).unwrap();

    // One object: a CIFAR-10 archive.
    let archive = local.path().join("cifar-10-binary.tar.gz");
    cifar_archive(&archive);
    store.put("cifar-10-binary.tar.gz", Bytes::from(std::fs::read(&archive).unwrap())).await.unwrap();
    let remote: DatasetSpec = format!("cifar10:{prefix}/cifar-10-binary.tar.gz:test").parse().unwrap();
    assert!(data::is_remote(&remote));
    let fetched = data::fetch_remote_to(&remote, &opts, cache.path()).await.unwrap();
    assert_eq!((fetched.downloaded, fetched.reused), (1, 0));
    assert!(fetched.spec.location.starts_with(&cache.path().display().to_string()), "{}", fetched.spec);
    assert_eq!(fetched.spec.split, remote.split);
    let want: DatasetSpec = format!("cifar10:{}:test", archive.display()).parse().unwrap();
    assert_eq!(all_encoded(&fetched.spec), all_encoded(&want));
    let again = data::fetch_remote_to(&remote, &opts, cache.path()).await.unwrap();
    assert_eq!((again.downloaded, again.reused, again.spec), (0, 1, fetched.spec));

    // A folder of images; then one image changes and one is deleted.
    let imgs = local.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    for (i, name) in ["a.png", "b.png", "sub/c.png"].iter().enumerate() {
        let pixels: Vec<u8> = (0..3 * 8 * 8).map(|p| ((p * (i + 3)) % 256) as u8).collect();
        let png = ddpm::imageio::encode_png(&pixels, 3, 8, 8).unwrap();
        std::fs::write(imgs.join(name), &png).unwrap();
        store.put(&format!("imgs/{name}"), Bytes::from(png)).await.unwrap();
    }
    let remote: DatasetSpec = format!("folder:{prefix}/imgs@8").parse().unwrap();
    let fetched = data::fetch_remote_to(&remote, &opts, cache.path()).await.unwrap();
    assert_eq!((fetched.downloaded, fetched.reused), (3, 0));
    let want: DatasetSpec = format!("folder:{}@8", imgs.display()).parse().unwrap();
    assert_eq!(all_encoded(&fetched.spec), all_encoded(&want));

    let changed = ddpm::imageio::encode_png(&[200u8; 3 * 8 * 8], 3, 8, 8).unwrap();
    store.put("imgs/a.png", Bytes::from(changed.clone())).await.unwrap();
    store.delete("imgs/sub/c.png").await.unwrap();
    std::fs::write(imgs.join("a.png"), &changed).unwrap();
    std::fs::remove_file(imgs.join("sub/c.png")).unwrap();
    let refreshed = data::fetch_remote_to(&remote, &opts, cache.path()).await.unwrap();
    assert_eq!((refreshed.downloaded, refreshed.reused), (1, 1));
    assert_eq!(all_encoded(&refreshed.spec), all_encoded(&want));

    // A key with nothing behind it says so.
    let missing: DatasetSpec = format!("folder:{prefix}/nothing-here").parse().unwrap();
    let e = data::fetch_remote_to(&missing, &opts, cache.path()).await.unwrap_err().to_string();
    assert!(e.contains("no such object"), "{e}");

    for o in store.list("").await.unwrap() {
        store.delete(&o.key).await.unwrap();
    }
}

#[tokio::test]
async fn local_specs_pass_through() {
    let spec: DatasetSpec = "synthetic:shapes".parse().unwrap();
    assert_eq!(data::fetch_remote(&spec, &StoreOptions::default()).await.unwrap(), spec);
}

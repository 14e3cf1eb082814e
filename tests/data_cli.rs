//! `ddpm data inspect` and `ddpm data export`, run as a user would.

mod common;

use std::process::Command;

fn ddpm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().expect("running ddpm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn png_pixels(path: &std::path::Path) -> (usize, usize, Vec<u8>) {
    ddpm::data::decode_rgb(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn inspect_reports_and_draws_a_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.png");
    let (ok, out, err) =
        ddpm(&["data", "inspect", "--data", "synthetic:shapes", "--json", "--grid", grid.to_str().unwrap(), "--grid-count", "16"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["count"], 50_000);
    assert_eq!(v["resolution"], 32);
    assert_eq!(v["channels"], 3);
    assert_eq!(v["split"], "train");
    assert_eq!(v["format"], "synthetic-shapes");
    assert_eq!(v["grid"]["images"], 16);
    // 16 images of 32x32, 8 per row, enlarged twice (64 px cells), 4 px borders:
    // 8 * 68 + 4 wide, 2 * 68 + 4 high.
    let (w, h, _) = png_pixels(&grid);
    assert_eq!((w, h), (548, 140));

    let cifar = common::golden_dir("data").join("cifar-10-python.tar.gz");
    let (ok, out, err) = ddpm(&["data", "inspect", "--data", &format!("cifar10:{}:test", cifar.display())]);
    assert!(ok, "{err}");
    assert!(out.contains("count       9") && out.contains("split       test") && out.contains("resolution  32x32"), "{out}");
}

#[test]
fn export_writes_the_decoded_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("s.png");
    let d = common::golden_dir("data");
    let (ok, _, err) = ddpm(&[
        "data",
        "export",
        "--data",
        &format!("cifar10:{}", d.join("cifar-10-batches-bin").display()),
        "--index",
        "11",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (w, h, rgb) = png_pixels(&png);
    assert_eq!((w, h), (32, 32));
    let want = &std::fs::read(d.join("cifar_train.u8")).unwrap()[11 * 3072..12 * 3072];
    assert_eq!(ddpm::data::hwc_to_chw(&rgb, 32, 32), want);
}

#[test]
fn errors_are_reported_not_panicked() {
    let (ok, _, err) = ddpm(&["data", "inspect", "--data", "imagenet:/x"]);
    assert!(!ok);
    assert!(err.contains("unknown dataset kind 'imagenet'"), "{err}");
    let (ok, _, err) = ddpm(&["data", "export", "--data", "synthetic:shapes", "--index", "50000", "--out", "/tmp/never.png"]);
    assert!(!ok);
    assert!(err.contains("out of range") && !err.contains("panicked"), "{err}");
}

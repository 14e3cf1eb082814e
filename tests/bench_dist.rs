//! `ddpm bench dist` on a paper preset: it brings its own data (the cifar10
//! preset names no dataset) and reports a row per worker count.

mod common;

use std::process::Command;

#[test]
fn bench_dist_runs_the_cifar10_preset_on_its_own_data() {
    let out = Command::new(common::binary("ddpm"))
        .args(["bench", "dist", "--preset", "cifar10", "--workers", "1", "--steps", "4", "--batch-size", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("preset cifar10 on synthetic:shapes@32"), "{stdout}");
    let row = stdout.lines().find(|l| l.split_whitespace().next() == Some("1")).unwrap_or_else(|| panic!("{stdout}"));
    let images_per_s: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(images_per_s > 0.0 && images_per_s.is_finite(), "{row}");
}

//! `ddpm bench dist` on a paper preset: it brings its own data (the cifar10
//! preset names no dataset) and reports a row per worker count and
//! reduction backend, with the share of the CPU left idle.

mod common;

use std::process::Command;

#[test]
fn bench_dist_runs_the_cifar10_preset_on_its_own_data_with_both_backends() {
    let out = Command::new(common::binary("ddpm"))
        .args(["bench", "dist", "--preset", "cifar10", "--workers", "2", "--steps", "4", "--batch-per-worker", "1", "--no-baseline"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("preset cifar10 on synthetic:shapes@32"), "{stdout}");
    for backend in ["coordinator", "ring"] {
        let row = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&"2") && w.get(1) == Some(&backend))
            .unwrap_or_else(|| panic!("no row for {backend}:\n{stdout}"));
        assert_eq!(row[2], "2", "global batch: 1 per worker, 2 workers: {row:?}");
        let images_per_s: f64 = row[3].parse().unwrap();
        assert!(images_per_s > 0.0 && images_per_s.is_finite(), "{row:?}");
        // The idle CPU over the counted steps, read from /proc/stat: it
        // needs the run's metrics rows as each step ends.
        let idle = row.last().and_then(|c| c.strip_suffix('%')).and_then(|c| c.parse::<f64>().ok());
        assert!(idle.is_some_and(|p| (0.0..=100.0).contains(&p)), "CPU idle column: {row:?}");
    }
}

//! `ddpm bench dist` on a paper preset: it brings its own data (the cifar10
//! preset names no dataset) and reports a row per worker count, reduction
//! backend and shadow mode, with the share of the CPU left idle and the
//! bytes the coordinator received per step.

mod common;

use std::process::Command;

#[test]
fn bench_dist_runs_the_cifar10_preset_on_its_own_data_with_both_backends_and_shadow_modes() {
    let args = ["--workers", "2", "--steps", "5", "--batch-per-worker", "1", "--no-baseline", "--shadow", "on,off"];
    let out = Command::new(common::binary("ddpm")).args(["bench", "dist", "--preset", "cifar10"]).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("preset cifar10 on synthetic:shapes@32"), "{stdout}");
    // The cifar10 gradient is 143 MB: the star receives it from each
    // member, the ring's copy fed twice over (arriving a step or two
    // late, so counted loosely); with the shadow off only
    // scalars arrive, whatever the model's size.
    let gradient_mb = ddpm::unet::UNetConfig::cifar10().param_count() as f64 * 4.0 / 1e6;
    for (backend, mb_per_step) in [("coordinator", 1.99..2.01), ("ring/on", 0.9..3.1), ("ring/off", 0.0..0.001)] {
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
        let idle = row[row.len() - 2].strip_suffix('%').and_then(|c| c.parse::<f64>().ok());
        assert!(idle.is_some_and(|p| (0.0..=100.0).contains(&p)), "CPU idle column: {row:?}");
        let received: f64 = row.last().unwrap().parse().unwrap();
        assert!(
            mb_per_step.contains(&(received / gradient_mb)),
            "{backend}: {received} MB per step received, gradient {gradient_mb} MB: {row:?}"
        );
    }
}

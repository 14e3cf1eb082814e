//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Where `tests/run.sh` put the golden fixtures made by `tests/golden/gen_*.py`.
pub fn golden_dir(topic: &str) -> PathBuf {
    let base = std::env::var_os("DDPM_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/golden"));
    let dir = base.join(topic);
    assert!(
        dir.is_dir(),
        "golden fixtures {} are missing: run tests/run.sh, or `python tests/golden/gen_{topic}.py --out {}`",
        dir.display(),
        dir.display()
    );
    dir
}

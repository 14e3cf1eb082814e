//! `ddpm checkpoints export --format diffusers-pipeline`: a directory that
//! diffusers' `DDPMPipeline.from_pretrained(DIR)` loads, its scheduler
//! configured as the run was trained:
//!
//! ```text
//! DIR/model_index.json                              DDPMPipeline: unet + scheduler
//! DIR/unet/config.json                              the UNet2DModel export (--format diffusers)
//! DIR/unet/diffusion_pytorch_model.safetensors
//! DIR/scheduler/scheduler_config.json               DDPMScheduler, from the run's [diffusion]
//! ```
//!
//! How our reverse process maps onto `DDPMScheduler` (diffusers 0.42.1,
//! `DIFFUSERS_VERSION`):
//!
//! - `beta_schedule`: linear is `"linear"` with our start and end (diffusers
//!   computes `torch.linspace` in float32, we compute in float64; the values
//!   agree to float32 rounding). Cosine with `s = 0.008` is
//!   `"squaredcos_cap_v2"` (the same formula and 0.999 cap); any other `s`
//!   goes as `trained_betas`, our float64 betas, which diffusers casts to float32.
//! - `variance_type`: our `fixedlarge` (`sigma_t^2 = beta_t`, the paper's
//!   CIFAR-10 setting) is `"fixed_large"`; `fixedsmall` (`sigma_t^2 =
//!   beta_tilde_t`, the posterior variance, LSUN) is `"fixed_small"`. Both add
//!   no noise at t = 0, so our first-step log-variance clip, which only the
//!   bound uses, does not matter for sampling.
//! - `clip_sample: true`, range 1: our sampler clips `x0_hat` to [-1, 1] at
//!   every step (`train::sample::reverse` passes `clip_denoised = true`).
//! - `prediction_type`: eps is `"epsilon"`, x0 is `"sample"`; a mu-model
//!   has no diffusers counterpart and is refused.
//! - Spacing `"leading"` with `steps_offset 0` is our DDIM subsequence
//!   (`GaussianDiffusion::ddim_timesteps`), so `DDIMScheduler.from_config` of
//!   this config (with its default `set_alpha_to_one`) is our DDIM sampler.
//!
//! Every key of `DDPMScheduler.__init__` is written, so a later diffusers
//! that changes a default does not change what the export means.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ddpm::diffusion::{make_betas, BetaSchedule, DiffusionConfig, ModelMeanType, VarianceType};
use ddpm::unet::diffusers::{CONFIG_FILE, DIFFUSERS_VERSION, WEIGHTS_FILE};
use serde_json::{json, Value};

/// The pipeline's index, read first by `DiffusionPipeline.from_pretrained`.
pub const MODEL_INDEX_FILE: &str = "model_index.json";
/// The scheduler's config inside `scheduler/`.
pub const SCHEDULER_CONFIG_FILE: &str = "scheduler_config.json";
/// `s` of the cosine schedule that diffusers names `squaredcos_cap_v2`.
const DIFFUSERS_COSINE_S: f64 = 0.008;

/// `model_index.json`: a `DDPMPipeline` of a `UNet2DModel` and a `DDPMScheduler`.
pub fn model_index() -> Value {
    json!({
        "_class_name": "DDPMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    })
}

/// `scheduler/scheduler_config.json` for a run trained with `diffusion`, or
/// why diffusers' `DDPMScheduler` cannot sample as our sampler does.
pub fn scheduler_config(diffusion: &DiffusionConfig) -> anyhow::Result<Value> {
    let betas = make_betas(diffusion).context("the run's [diffusion] config")?;
    let prediction_type = match diffusion.model_mean_type {
        ModelMeanType::Eps => "epsilon",
        ModelMeanType::X0 => "sample",
        ModelMeanType::Mu => anyhow::bail!(
            "diffusion.model_mean_type = \"mu\": diffusers' DDPMScheduler has no prediction_type for a \
             network that outputs the reverse-process mean (it knows \"epsilon\", \"sample\" and \
             \"v_prediction\"), so this run cannot be a DDPMPipeline; --format diffusers exports the \
             UNet alone"
        ),
    };
    let variance_type = match diffusion.model_var_type {
        VarianceType::FixedLarge => "fixed_large",
        VarianceType::FixedSmall => "fixed_small",
    };
    // beta_start/beta_end are the class defaults where diffusers ignores them.
    let (beta_schedule, beta_start, beta_end, trained_betas) = match diffusion.beta_schedule {
        BetaSchedule::Linear { start, end } => ("linear", start, end, Value::Null),
        BetaSchedule::Cosine { s } if s == DIFFUSERS_COSINE_S => ("squaredcos_cap_v2", 1e-4, 0.02, Value::Null),
        BetaSchedule::Cosine { .. } => ("linear", 1e-4, 0.02, json!(betas)),
    };
    Ok(json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": diffusion.num_timesteps,
        "beta_start": beta_start,
        "beta_end": beta_end,
        "beta_schedule": beta_schedule,
        "trained_betas": trained_betas,
        "variance_type": variance_type,
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "prediction_type": prediction_type,
        "thresholding": false,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": false,
    }))
}

/// Writes the pipeline directory `out` (atomically, [`write_dir_atomically`])
/// from the UNet export's `config.json` value and safetensors bytes and the
/// scheduler config of [`scheduler_config`].
pub fn write(out: &Path, unet_config: &Value, unet_weights: &[u8], scheduler: &Value) -> anyhow::Result<()> {
    let text = |v: &Value| -> anyhow::Result<Vec<u8>> { Ok((serde_json::to_string_pretty(v)? + "\n").into_bytes()) };
    let (index, unet, scheduler) = (text(&model_index())?, text(unet_config)?, text(scheduler)?);
    write_dir_atomically(
        out,
        &[
            (PathBuf::from(MODEL_INDEX_FILE), index.as_slice()),
            (Path::new("unet").join(CONFIG_FILE), unet.as_slice()),
            (Path::new("unet").join(WEIGHTS_FILE), unet_weights),
            (Path::new("scheduler").join(SCHEDULER_CONFIG_FILE), scheduler.as_slice()),
        ],
    )
}

/// Writes `files` as the new directory `out`, all or nothing: into a
/// temporary directory beside it, each file synced, then renamed into place,
/// so `from_pretrained` never sees half a pipeline. `out` may exist only as
/// an empty directory; a non-empty one is refused, not replaced.
pub fn write_dir_atomically(out: &Path, files: &[(PathBuf, &[u8])]) -> anyhow::Result<()> {
    let name = out.file_name().with_context(|| format!("--out {}: name a new directory for the pipeline", out.display()))?;
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("--out {}: exists and is not a readable directory", out.display()))?
            .next()
            .is_none();
        anyhow::ensure!(
            empty,
            "--out {}: the directory exists and is not empty; the pipeline export writes a new directory \
             (remove it or choose another --out)",
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.partial-", name.to_string_lossy()))
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    for (rel, bytes) in files {
        let path = tmp.path().join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    }
    if out.exists() {
        // Empty, checked above; rename(2) would replace an empty directory
        // on Linux but not elsewhere.
        std::fs::remove_dir(out).with_context(|| format!("replacing the empty directory {}", out.display()))?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        anyhow::anyhow!("moving the finished export into {}: {e}", out.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut DiffusionConfig)) -> DiffusionConfig {
        let mut d = DiffusionConfig::default();
        f(&mut d);
        d
    }

    #[test]
    fn the_paper_setting_is_a_linear_fixed_large_epsilon_scheduler() {
        let c = scheduler_config(&DiffusionConfig::default()).unwrap();
        assert_eq!(c["num_train_timesteps"], 1000);
        assert_eq!(
            (c["beta_schedule"].as_str(), c["beta_start"].as_f64(), c["beta_end"].as_f64()),
            (Some("linear"), Some(1e-4), Some(0.02))
        );
        assert_eq!(c["trained_betas"], Value::Null);
        assert_eq!(c["variance_type"], "fixed_large");
        assert_eq!(c["clip_sample"], true);
        assert_eq!(c["prediction_type"], "epsilon");
        assert_eq!((c["timestep_spacing"].as_str(), c["steps_offset"].as_i64()), (Some("leading"), Some(0)));
        assert_eq!(c["_diffusers_version"], "0.42.1");
    }

    #[test]
    fn variance_schedule_and_parameterisation_follow_the_run() {
        let c = scheduler_config(&config(|d| d.model_var_type = VarianceType::FixedSmall)).unwrap();
        assert_eq!(c["variance_type"], "fixed_small");
        let c = scheduler_config(&config(|d| d.model_mean_type = ModelMeanType::X0)).unwrap();
        assert_eq!(c["prediction_type"], "sample");
        let c = scheduler_config(&config(|d| d.beta_schedule = BetaSchedule::Cosine { s: 0.008 })).unwrap();
        assert_eq!((c["beta_schedule"].as_str(), &c["trained_betas"]), (Some("squaredcos_cap_v2"), &Value::Null));
        let cosine = config(|d| {
            d.num_timesteps = 50;
            d.beta_schedule = BetaSchedule::Cosine { s: 0.02 };
        });
        let c = scheduler_config(&cosine).unwrap();
        let trained: Vec<f64> = serde_json::from_value(c["trained_betas"].clone()).unwrap();
        assert_eq!(trained, make_betas(&cosine).unwrap());
        assert_eq!(c["num_train_timesteps"], 50);
    }

    #[test]
    fn what_diffusers_cannot_sample_is_refused() {
        let e = scheduler_config(&config(|d| d.model_mean_type = ModelMeanType::Mu)).unwrap_err();
        assert!(e.to_string().contains("model_mean_type = \"mu\""), "{e}");
        let e = scheduler_config(&config(|d| d.num_timesteps = 1)).unwrap_err();
        assert!(format!("{e:#}").contains("num_timesteps = 1"), "{e:#}");
    }

    #[test]
    fn the_directory_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let export = |out: &Path| write(out, &json!({"a": 1}), b"weights", &json!({"b": 2}));
        let out = dir.path().join("pipe");
        export(&out).unwrap();
        assert_eq!(std::fs::read(out.join("unet").join(WEIGHTS_FILE)).unwrap(), b"weights");
        let index: Value = serde_json::from_slice(&std::fs::read(out.join(MODEL_INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index["unet"], json!(["diffusers", "UNet2DModel"]));
        // A non-empty directory is refused and left as it was.
        let e = export(&out).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        // An empty one is filled.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        export(&empty).unwrap();
        assert!(empty.join("scheduler").join(SCHEDULER_CONFIG_FILE).is_file());
        // No temporary directory is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.contains(".partial-")), "{names:?}");
    }
}

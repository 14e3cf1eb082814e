//! Weights as a diffusers `diffusion_pytorch_model.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::unet::error::UNetError;

/// The attention parameter names of diffusers before 0.14 (still in the
/// converted google/ddpm-* checkpoints) and their current names; diffusers
/// renames them the same way when it loads such a file.
const LEGACY_ATTENTION: [(&str, &str); 4] = [("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")];

/// The current diffusers name of a tensor name that may use the legacy
/// attention names (`...attentions.0.query.weight` -> `...attentions.0.to_q.weight`).
fn current_name(name: &str) -> String {
    if name.contains(".attentions.") {
        for (old, new) in LEGACY_ATTENTION {
            for suffix in ["weight", "bias"] {
                if let Some(stem) = name.strip_suffix(&format!(".{old}.{suffix}")) {
                    return format!("{stem}.{new}.{suffix}");
                }
            }
        }
    }
    name.to_string()
}

fn describe(err: SafeTensorError, file_len: usize) -> String {
    match err {
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            format!("not a safetensors file, or truncated: the 8-byte header length is missing or exceeds the file size ({file_len} bytes)")
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            format!("truncated or corrupt: the tensors' data offsets do not match the file size ({file_len} bytes)")
        }
        SafeTensorError::InvalidHeader(_) | SafeTensorError::InvalidHeaderDeserialization(_) | SafeTensorError::JsonError(_) => {
            format!("not a safetensors file: the header is not valid JSON ({err})")
        }
        other => format!("invalid safetensors file: {other}"),
    }
}

/// Loads a diffusers `UNet2DModel` safetensors file into the var store of a
/// [`crate::unet::UNet`] built at its root, strictly: every variable must
/// have a float32 tensor of its exact shape in the file and the file no
/// other tensor. The legacy attention names (`query`, `key`, `value`,
/// `proj_attn`) are read as `to_q`, `to_k`, `to_v`, `to_out.0`. Nothing is
/// copied unless the whole file checks out.
pub fn load_safetensors(vs: &mut VarStore, path: &Path) -> Result<(), UNetError> {
    let err = |reason: String| UNetError::Safetensors { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| err(describe(e, bytes.len())))?;

    let mut tensors: BTreeMap<String, (String, TensorView<'_>)> = BTreeMap::new();
    for (name, view) in file.iter() {
        if let Some((other, _)) = tensors.insert(current_name(name), (name.to_string(), view)) {
            return Err(err(format!("tensors `{other}` and `{name}` are the same parameter (legacy and current attention names)")));
        }
    }
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    if let Some(name) = vars.keys().find(|name| !tensors.contains_key(*name)) {
        return Err(UNetError::MissingTensor { path: path.to_path_buf(), name: name.clone(), expected: vars.len(), found: tensors.len() });
    }
    if let Some((_, (name, _))) = tensors.iter().find(|(current, _)| !vars.contains_key(*current)) {
        return Err(UNetError::UnexpectedTensor { path: path.to_path_buf(), name: name.clone() });
    }
    for (current, var) in &vars {
        let (name, view) = &tensors[current];
        if view.dtype() != Dtype::F32 {
            return Err(UNetError::WrongDtype { path: path.to_path_buf(), name: name.clone(), found: format!("{:?}", view.dtype()) });
        }
        let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if found != var.size() {
            return Err(UNetError::ShapeMismatch { path: path.to_path_buf(), name: name.clone(), expected: var.size(), found });
        }
    }
    tch::no_grad(|| -> Result<(), UNetError> {
        for (current, var) in &vars {
            let view = &tensors[current].1;
            let src = Tensor::f_from_data_size(view.data(), &var.size(), Kind::Float)?;
            var.shallow_clone().f_copy_(&src)?;
        }
        Ok(())
    })
}

/// Saves every variable of the var store as float32 in a safetensors file
/// that diffusers' `UNet2DModel` loads (`diffusion_pytorch_model.safetensors`,
/// header metadata `format: pt`). Written to a temporary file then renamed,
/// so an existing file is never left half-written.
pub fn save_safetensors(vs: &VarStore, path: &Path) -> Result<(), UNetError> {
    let err = |reason: String| UNetError::Safetensors { path: path.to_path_buf(), reason };
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut host = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let t = var.detach().f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * 4];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        host.push((name, shape, bytes));
    }
    let mut views = Vec::with_capacity(host.len());
    for (name, shape, bytes) in &host {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        views.push((name.as_str(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| err(format!("cannot write: {e}")))
}

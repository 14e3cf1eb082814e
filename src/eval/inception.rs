//! The Inception-v3 "2015-12-05" feature network as a TorchScript file
//! (docs/ddpm.md section 9), loaded with libtorch through `tch::CModule`.
//!
//! # The file's convention
//!
//! `inception-2015-12-05.pt`, the file clean-fid and the StyleGAN2-ADA /
//! StyleGAN3 metrics use, is a scripted module whose method is
//!
//! ```text
//! forward(img: Tensor, return_features: bool = False, use_fp16: bool = False,
//!         no_output_bias: bool = False) -> Tensor
//! ```
//!
//! `img` is `[N, 3, H, W]` with values 0..255 (uint8 or float); the module
//! casts to float32, resizes to 299x299 itself (bilinear `grid_sample`), and
//! maps to (x - 128) / 128. With `return_features=True` it returns the
//! 2048-d pool features `[N, 2048]` (FID: StyleGAN3's
//! `detector_kwargs = dict(return_features=True)`); otherwise the softmax
//! probabilities `[N, 1008]`, and with `no_output_bias=True` the softmax of the
//! logits without the output layer's bias (IS: StyleGAN3's
//! `dict(no_output_bias=True)`, matching the original TF Inception Score).
//!
//! Feeding images at their own size and letting the module resize is the
//! StyleGAN metrics' mode; clean-fid's "clean" mode resizes to 299 with PIL
//! bicubic first. The numbers differ by a few tenths of FID: say which.
//!
//! # Keyword arguments through tch
//!
//! libtorch's C++ `Module::forward(std::vector<IValue>)`, which
//! [`CModule::forward_is`] wraps, takes positional arguments only, and tch
//! exposes no keyword form. TorchScript checks the call against the method's
//! schema and fills in the defaults of trailing arguments left out, so the
//! keywords become positions in the signature above:
//!
//! - features: `forward(img, True)`;
//! - probabilities: `forward(img)`, or `forward(img, False, False, True)` for
//!   `no_output_bias`.
//!
//! A stand-in module must therefore keep the argument order as well as the
//! names (tests/golden/gen_eval.py's does).

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

use super::error::EvalError;

/// A loaded feature network following the convention above.
#[derive(Debug)]
pub struct InceptionModel {
    module: CModule,
    path: PathBuf,
    device: Device,
    feature_dim: usize,
    num_classes: usize,
}

impl InceptionModel {
    /// Loads a TorchScript file onto `device` and checks it with one small
    /// probe image: features must be `[1, D]` and probabilities `[1, C]`.
    pub fn load(path: &Path, device: Device) -> Result<Self, EvalError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(EvalError::NotTorchScript { path: path.into(), reason: "it is a directory".into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(EvalError::ModelMissing { path: path.into() }),
            Err(e) => return Err(EvalError::io("read", path, e)),
        }
        let mut module = CModule::load_on_device(path, device)
            .map_err(|e| EvalError::NotTorchScript { path: path.into(), reason: first_line(&e.to_string()) })?;
        module.f_set_eval().map_err(|e| EvalError::NotTorchScript { path: path.into(), reason: first_line(&e.to_string()) })?;
        let mut model = Self { module, path: path.into(), device, feature_dim: 0, num_classes: 0 };
        let probe = Tensor::full([1, 3, 32, 32], 128.0, (Kind::Float, device));
        model.feature_dim = model.call(&probe, Call::Features, "features")?.size()[1] as usize;
        model.num_classes = model.call(&probe, Call::Probabilities { no_output_bias: false }, "probabilities")?.size()[1] as usize;
        Ok(model)
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Feature dimension `D` (2048 for Inception-v3).
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// Number of classes `C` of the probabilities (1008 for Inception-v3).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Pool features `[N, D]` float32 (on the model's device) of images
    /// `[N, 3, H, W]` valued 0..255 (uint8 or any float kind, any device).
    pub fn features(&self, images: &Tensor) -> Result<Tensor, EvalError> {
        self.call(images, Call::Features, "features")
    }

    /// Class probabilities `[N, C]` (softmax, rows sum to 1) of images as for
    /// [`features`](Self::features); `no_output_bias` as the Inception Score uses.
    pub fn probabilities(&self, images: &Tensor, no_output_bias: bool) -> Result<Tensor, EvalError> {
        self.call(images, Call::Probabilities { no_output_bias }, "probabilities")
    }

    fn call(&self, images: &Tensor, call: Call, what: &str) -> Result<Tensor, EvalError> {
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[0] == 0 {
            return Err(EvalError::shape("images for the Inception model", "[N >= 1, 3, H, W] valued 0..255", format!("{size:?}")));
        }
        let n = size[0];
        let x = images
            .f_to_device(self.device)
            .and_then(|x| x.f_to_kind(Kind::Float))
            .map_err(EvalError::torch("moving images to the Inception model's device"))?;
        let mut args = vec![IValue::Tensor(x)];
        match call {
            Call::Features => args.push(IValue::Bool(true)),
            Call::Probabilities { no_output_bias: false } => {}
            Call::Probabilities { no_output_bias: true } => args.extend([IValue::Bool(false), IValue::Bool(false), IValue::Bool(true)]),
        }
        let out = tch::no_grad(|| self.module.forward_is(&args)).map_err(|e| {
            self.problem(format!(
                "calling forward for {what} failed; the module must take \
             forward(img, return_features=False, use_fp16=False, no_output_bias=False): {}",
                first_line(&e.to_string())
            ))
        })?;
        let t = match out {
            IValue::Tensor(t) => t,
            other => return Err(self.problem(format!("forward returned {} for {what}, not a tensor", ivalue_kind(&other)))),
        };
        let got = t.size();
        if got.len() != 2 || got[0] != n || got[1] < 1 {
            return Err(EvalError::shape(format!("{} {what}", self.path.display()), format!("[{n}, D]"), format!("{got:?}")));
        }
        let expect = match call {
            Call::Features => self.feature_dim,
            Call::Probabilities { .. } => self.num_classes,
        };
        if expect != 0 && got[1] as usize != expect {
            return Err(EvalError::shape(format!("{} {what}", self.path.display()), format!("[{n}, {expect}]"), format!("{got:?}")));
        }
        t.f_to_kind(Kind::Float).map_err(EvalError::torch("model output to float32"))
    }

    fn problem(&self, problem: String) -> EvalError {
        EvalError::Model { path: self.path.clone(), problem }
    }
}

#[derive(Clone, Copy)]
enum Call {
    Features,
    Probabilities { no_output_bias: bool },
}

/// uint8 images `[n, 3, h, w]` (as `sample_images` and the data decoder give
/// them) as a float32 tensor `[n, 3, h, w]` valued 0..255 on `device`.
pub fn images_tensor(pixels_nchw: &[u8], height: usize, width: usize, device: Device) -> Result<Tensor, EvalError> {
    let per = 3 * height * width;
    if per == 0 || pixels_nchw.is_empty() || !pixels_nchw.len().is_multiple_of(per) {
        return Err(EvalError::shape(
            "images",
            format!("whole images of 3 x {height} x {width} bytes"),
            format!("{} bytes", pixels_nchw.len()),
        ));
    }
    let n = (pixels_nchw.len() / per) as i64;
    Tensor::from_slice(pixels_nchw)
        .view([n, 3, height as i64, width as i64])
        .f_to_device(device)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .map_err(EvalError::torch("images to a tensor"))
}

fn first_line(s: &str) -> String {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tuple(_) => "a tuple",
        IValue::GenericList(_) | IValue::TensorList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        _ => "a non-tensor value",
    }
}

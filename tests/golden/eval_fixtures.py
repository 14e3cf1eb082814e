"""The sections of the eval fixture (see gen_eval.py). Each function adds
named arrays to `tensors`, plain data to `meta`, and files under `out`; every
random draw comes from a generator seeded here."""

import os

import numpy as np
import torch
from PIL import Image

import ddpm_numpy as ref
import ddpm_rng
import eval_standin as standin

F32, F64 = np.float32, np.float64


def frechet_reference(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's own function, the reference the Rust FID must match."""
    import warnings

    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's sqrtm `disp` deprecation
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def inception_score_reference(probs, splits):
    """StyleGAN3 metrics/inception_score.py (and openai improved-gan)."""
    n = len(probs)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits : (i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def moments(feats):
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def test_images(rng, n, h, w, brightness):
    """Smooth random colour fields plus noise, uint8 [n, 3, h, w]."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy + rng.uniform()))
                     for _ in range(3 * n)]).reshape(n, 3, h, w)  # fmt: skip
    img = brightness + 80 * base + rng.normal(0, 25, (n, 3, h, w))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def models(out, tensors, meta):
    """The stand-in and two broken modules as TorchScript, and its outputs."""
    model = standin.InceptionStandIn().eval()
    standin.save_scripted(model, os.path.join(out, "standin.pt"))
    standin.save_scripted(standin.WrongShape(), os.path.join(out, "wrong_shape.pt"))
    standin.save_scripted(standin.WrongSignature(), os.path.join(out, "wrong_signature.pt"))
    torch.save(model.state_dict(), os.path.join(out, "state_dict.pt"))  # not TorchScript
    rng = np.random.default_rng(10)
    sets = {"a": test_images(rng, 40, 32, 32, 110), "b": test_images(rng, 40, 32, 32, 150),
            "odd": test_images(rng, 5, 20, 24, 128)}  # fmt: skip
    with torch.no_grad():
        for name, imgs in sets.items():
            x = torch.from_numpy(imgs).float()
            tensors[f"images/{name}"] = imgs
            tensors[f"features/{name}"] = model(x, return_features=True).numpy()
            tensors[f"probs/{name}"] = model(x).numpy()
            tensors[f"probs_nobias/{name}"] = model(x, no_output_bias=True).numpy()
    fa, fb = (tensors[f"features/{k}"].astype(F64) for k in "ab")
    meta["standin"] = {"feature_dim": standin.FEATURE_DIM, "num_classes": standin.NUM_CLASSES,
                       "fid_a_b": frechet_reference(*moments(fa), *moments(fb)),
                       "is_a_nobias_4": inception_score_reference(tensors["probs_nobias/a"].astype(F64), 4)}  # fmt: skip


def fid_sets(out, tensors, meta):
    """Feature sets, their numpy moments and pytorch-fid's distance."""
    rng = np.random.default_rng(11)
    cases = {"wellcond": (600, 700, 32), "singular": (40, 50, 64)}
    meta["fid"] = {}
    for case, (n1, n2, d) in cases.items():
        mix1, mix2 = rng.normal(size=(d, d)) / d**0.5, rng.normal(size=(d, d)) / d**0.5
        f1 = rng.normal(size=(n1, d)) @ mix1 + rng.normal(size=d)
        f2 = 1.1 * rng.normal(size=(n2, d)) @ mix2 + rng.normal(size=d) + 0.3
        (m1, s1), (m2, s2) = moments(f1), moments(f2)
        tensors.update({f"fid/{case}/f1": f1, f"fid/{case}/f2": f2, f"fid/{case}/mu1": m1, f"fid/{case}/sigma1": s1,
                        f"fid/{case}/mu2": m2, f"fid/{case}/sigma2": s2})  # fmt: skip
        meta["fid"][case] = {"fid": frechet_reference(m1, s1, m2, s2), "self": frechet_reference(m1, s1, m1, s1)}


def npz_files(out, tensors, meta):
    """Files written by numpy itself, good and bad."""
    d = os.path.join(out, "npz")
    os.makedirs(d, exist_ok=True)
    mu, sigma = tensors["fid/wellcond/mu1"], tensors["fid/wellcond/sigma1"]
    p = lambda name: os.path.join(d, name)
    np.savez(p("stats_f64.npz"), mu=mu, sigma=sigma)
    np.savez_compressed(p("stats_f32_compressed.npz"), mu=mu.astype(F32), sigma=sigma.astype(F32))
    np.savez(p("stats_bigendian_fortran.npz"), mu=mu.astype(">f8"), sigma=np.asfortranarray(sigma.astype(">f8")))
    rng = np.random.default_rng(12)
    m35 = rng.normal(size=(3, 5))
    u8 = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    np.savez(p("arrays.npz"), c64=m35, f32_fortran=np.asfortranarray(m35.astype(F32)), be64=m35.astype(">f8"),
             u8_fortran=np.asfortranarray(u8), scalar=np.float64(2.5))  # fmt: skip
    tensors.update({"npz/m35": m35, "npz/u8": u8})
    samples = rng.integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)  # NHWC
    np.savez(p("samples.npz"), samples)
    np.savez_compressed(p("samples_compressed.npz"), samples)
    tensors["npz/samples_nhwc"] = samples
    # Bad files.
    np.savez(p("missing_sigma.npz"), mu=mu)
    np.savez(p("wrong_shape.npz"), mu=mu, sigma=np.zeros((len(mu), len(mu) + 1)))
    np.savez(p("complex.npz"), mu=mu, sigma=sigma.astype(np.complex128))
    np.savez(p("nan.npz"), mu=np.where(np.arange(len(mu)) == 3, np.nan, mu), sigma=sigma)
    np.savez(p("samples_wrong.npz"), samples.astype(F32))
    with open(p("stats_f64.npz"), "rb") as f:
        whole = f.read()
    with open(p("truncated.npz"), "wb") as f:
        f.write(whole[: len(whole) // 2])
    with open(p("not_a_zip.npz"), "w") as f:
        f.write("mu,sigma\n1,2\n")


def score_sets(out, tensors, meta):
    """Probabilities and their Inception Score as StyleGAN3 computes it."""
    rng = np.random.default_rng(13)
    meta["is"] = {}
    for case, (n, c, splits) in {"n250": (250, 1008, 10), "n253": (253, 1008, 10), "n37s3": (37, 20, 3)}.items():
        logits = rng.normal(size=(n, c)) * 3.0 + rng.normal(size=c) * 2.0
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        tensors[f"is/{case}"] = probs
        meta["is"][case] = {"splits": splits, "score": inception_score_reference(probs, splits)}


def folder_dataset(out, tensors, meta):
    """PNG images (a folder: dataset) and the stand-in's statistics of them."""
    d = os.path.join(out, "folder")
    os.makedirs(d, exist_ok=True)
    imgs = test_images(np.random.default_rng(14), 70, 32, 32, 128)
    for i, img in enumerate(imgs):
        Image.fromarray(img.transpose(1, 2, 0)).save(os.path.join(d, f"img_{i:03d}.png"))
    model = standin.InceptionStandIn().eval()
    with torch.no_grad():
        feats = model(torch.from_numpy(imgs).float(), return_features=True).numpy().astype(F64)
    tensors["folder/mu"], tensors["folder/sigma"] = moments(feats)
    meta["folder"] = {"count": len(imgs)}


def diffusers_config(size, boc, attn_levels, layers, groups):
    n = len(boc)
    return dict(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=tuple(boc),
        down_block_types=tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n)),
        up_block_types=tuple("AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n))),
        layers_per_block=layers, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        norm_num_groups=groups, norm_eps=1e-6, attention_head_dim=None, dropout=0.0, act_fn="silu",
    )  # fmt: skip


BPD = {"t": 12, "start": 1e-3, "end": 0.2, "seed": 2020, "indices": [7, 0, 123456789], "clip": True}


def bpd(out, tensors, meta):
    """The whole bound of a small random U-Net on fixed images, with the
    noise Rust draws (ddpm_rng), evaluated by ddpm_numpy in float64 around
    diffusers' UNet2DModel in float32."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(15)
    unet = UNet2DModel(**diffusers_config(8, [32, 64], {1}, 1, 32)).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * (0.5 / p[0].numel()) ** 0.5)
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    idx = BPD["indices"]
    imgs = test_images(np.random.default_rng(16), len(idx), 8, 8, 128)
    x0 = imgs.astype(F64) / 127.5 - 1.0
    per = x0[0].size
    noise = np.stack([np.stack([ddpm_rng.normals(BPD["seed"], ddpm_rng.PURPOSE_BPD, i, t, per).reshape(x0.shape[1:])
                                for i in idx]) for t in range(BPD["t"])]).astype(F64)  # fmt: skip

    def model(xt, t):
        with torch.no_grad():
            return unet(torch.from_numpy(xt.astype(F32)), torch.from_numpy(t)).sample.numpy().astype(F64)

    d = ref.Diffusion(ref.linear_betas(BPD["start"], BPD["end"], BPD["t"]), "eps", "fixedlarge")
    res = d.calc_bpd_loop(model, x0, noise, BPD["clip"])
    tensors["bpd/images"] = imgs
    tensors["bpd/noise_t0"] = noise[0].astype(F32)
    tensors.update({f"bpd/{k}": v for k, v in res.items()})
    meta["bpd"] = BPD

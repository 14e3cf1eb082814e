"""The dataset and the yardstick of the quality comparison (bench.py).

The dataset is scikit-learn's `load_digits`: 1,797 handwritten digits, 8x8
pixels at 17 grey levels (0..16), shipped inside the scikit-learn wheel, so
nothing is downloaded at run time. Images are written as 8x8 RGB PNGs (grey
in all three channels, value round(v * 255 / 16)) for our trainer's `folder:`
reader; the PyTorch trainer reads the same files.

The yardstick is a Frechet distance (the FID formula, Heusel et al. 2017) in
the feature space of a digit classifier, because Inception features mean
little on 8x8 grey digits: an MLP (64 -> 128 -> 64 ReLU units -> 10
classes) trained by scikit-learn with a fixed seed on 1,500 of the digits.
Its last hidden layer (64 features) is the space; its accuracy on the 297
digits it did not see is reported so a reader can tell the features know
what a digit is. A sample enters as its mean over the three channels on the
0..16 scale, as the classifier saw the digits.
"""
import os
import warnings

import numpy as np
from PIL import Image
from scipy import linalg
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

CLASSIFIER_TRAIN = 1500


def digits_uint8():
    """All 1,797 digits as uint8 [N, 8, 8] on the 0..255 scale, and labels."""
    d = load_digits()
    return np.rint(d.images * (255.0 / 16.0)).astype(np.uint8), d.target


def write_folder(path):
    """The digits as RGB PNGs path/NNNN.png (sorted order = dataset order)."""
    images, _ = digits_uint8()
    os.makedirs(path, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(np.repeat(im[:, :, None], 3, axis=2)).save(os.path.join(path, f"{i:04d}.png"))
    return len(images)


class Features:
    """The classifier's last hidden layer as a function of images."""

    def __init__(self):
        images, labels = digits_uint8()
        x = self._inputs(images)
        self.mlp = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=2000, random_state=0)
        self.mlp.fit(x[:CLASSIFIER_TRAIN], labels[:CLASSIFIER_TRAIN])
        self.held_out_accuracy = float(self.mlp.score(x[CLASSIFIER_TRAIN:], labels[CLASSIFIER_TRAIN:]))
        self.data = self(images)

    @staticmethod
    def _inputs(images):
        """uint8 [N, 8, 8] (grey) or [N, 3, 8, 8] / [N, 8, 8, 3] (RGB) -> [N, 64] on 0..16."""
        a = np.asarray(images, dtype=np.float64)
        if a.ndim == 4:
            a = a.mean(axis=1 if a.shape[1] == 3 else 3)
        assert a.shape[1:] == (8, 8), f"expected 8x8 images, got {a.shape}"
        return a.reshape(len(a), 64) * (16.0 / 255.0)

    def __call__(self, images):
        h = self._inputs(images)
        for w, b in zip(self.mlp.coefs_[:-1], self.mlp.intercepts_[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return h

    def distance(self, images):
        """Frechet distance between the images' features and the dataset's."""
        return frechet(self(images), self.data)


def frechet(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets [N, D]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # A few ReLU units never fire on digits, so the covariances are
        # singular; sqrtm says so but its root of the PSD product is accurate
        # (pytorch-fid computes the same way). A non-finite one is retried.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(s_a))
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))

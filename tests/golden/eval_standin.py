"""TorchScript stand-ins for inception-2015-12-05.pt (see gen_eval.py).

`InceptionStandIn` keeps the real file's call convention exactly: the same
argument names *and order* (tch passes keyword arguments by position), uint8
or float input valued 0..255 at any size, an internal resize, pool features
with `return_features=True`, softmax probabilities otherwise, and the output
layer's bias dropped with `no_output_bias=True`. It is small (64-d features)
and deterministic (weights from a fixed seed).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_DIM = 64
NUM_CLASSES = 1008


class InceptionStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, FEATURE_DIM)
        self.output = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        gen = torch.Generator().manual_seed(20151205)
        with torch.no_grad():
            for name, p in self.named_parameters():
                fan_in = p[0].numel() if p.dim() > 1 else 1
                scale = 0.3 if name.endswith("bias") else 1.5 / fan_in**0.5
                if name.startswith("output"):
                    scale *= 10.0  # peaked class probabilities, so that IS is well above 1
                p.copy_(torch.randn(p.shape, generator=gen) * scale)

    def forward(
        self, img: Tensor, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False
    ) -> Tensor:
        batch_size, channels, height, width = img.shape
        assert channels == 3
        x = img.to(torch.float32)
        # The real module resizes to 299x299 (grid_sample); this one to 32x32.
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        x = (x - 128.0) / 128.0
        x = F.relu(self.conv(x))  # [N, 16, 16, 16]
        x = F.adaptive_avg_pool2d(x, 4)  # [N, 16, 4, 4]
        features = self.fc(x.flatten(1))  # [N, 64]
        if return_features:
            return features
        if no_output_bias:
            logits = F.linear(features, self.output.weight)
        else:
            logits = self.output(features)
        return torch.softmax(logits, dim=1)  # [N, 1008]


class WrongShape(nn.Module):
    """The right signature, but it returns its input (4-d) for everything."""

    def forward(
        self, img: Tensor, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False
    ) -> Tensor:
        return img.to(torch.float32)


class WrongSignature(nn.Module):
    """forward(img) only: a classifier that knows nothing of return_features."""

    def forward(self, img: Tensor) -> Tensor:
        return img.to(torch.float32).mean(dim=(2, 3))


def save_scripted(module, path):
    torch.jit.script(module.eval()).save(path)

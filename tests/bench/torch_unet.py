"""The paper's U-Net in plain PyTorch (docs/ddpm.md section 6), built from a
diffusers UNet2DModel config.json: the PyTorch-eager baseline for machines
where diffusers is not installed. Same architecture and parameter count as
diffusers' UNet2DModel for the DDPM configs (checked by torch_train_step.py);
attention is single-head with one fused qkv projection and
scaled_dot_product_attention, as diffusers does.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb, groups, eps, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class Attention(nn.Module):
    def __init__(self, c, groups, eps):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=eps)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = self.qkv(hn).unsqueeze(1).chunk(3, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return x + self.proj(o).transpose(1, 2).view(b, c, h, w)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        chans = list(cfg["block_out_channels"])
        ch = chans[0]
        nres = cfg["layers_per_block"]
        groups, eps = cfg.get("norm_num_groups", 32), cfg.get("norm_eps", 1e-6)
        dropout = cfg.get("dropout", 0.0)
        attn_down = [t.startswith("Attn") for t in cfg["down_block_types"]]
        temb = 4 * ch
        self.ch = ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cfg.get("in_channels", 3), ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        c = ch
        for i, cout in enumerate(chans):
            for _ in range(nres):
                self.down.append(ResBlock(c, cout, temb, groups, eps, dropout))
                c = cout
                if attn_down[i]:
                    self.down.append(Attention(c, groups, eps))
                skips.append(c)
            if i < len(chans) - 1:
                self.down.append(Down(c))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, temb, groups, eps, dropout), Attention(c, groups, eps),
                                  ResBlock(c, c, temb, groups, eps, dropout)])
        self.up = nn.ModuleList()
        for i, cout in reversed(list(enumerate(chans))):
            for _ in range(nres + 1):
                self.up.append(ResBlock(c + skips.pop(), cout, temb, groups, eps, dropout))
                c = cout
                if attn_down[i]:
                    self.up.append(Attention(c, groups, eps))
            if i > 0:
                self.up.append(Up(c))
        self.out = nn.Sequential(nn.GroupNorm(groups, c, eps=eps), nn.SiLU(),
                                 nn.Conv2d(c, cfg.get("out_channels", 3), 3, padding=1))

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.ch))
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            if isinstance(m, ResBlock):
                h = m(h, temb)
                hs.append(h)
            elif isinstance(m, Attention):
                h = m(h)
                hs[-1] = h
            else:
                h = m(h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
        for m in self.up:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = m(h)
        return self.out(h)

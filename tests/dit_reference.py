"""DiT's original model, rebuilt from its description under its parameter names, as a reference for conversions."""

import math

import numpy as np
import torch
from torch import nn

from helpers import perturbed

HIDDEN, DEPTH, HEADS, PATCH, CHANNELS, INPUT, CLASSES = 32, 2, 2, 2, 4, 8, 10


def dit_pos_embed(dim, grid):
    """DiT's get_2d_sincos_pos_embed (numpy, float64): first half of the channels from the column."""
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_d(dim // 2, grid_w), one_d(dim // 2, grid_h)], axis=1)


class OriginalDiT(nn.Module):
    """DiT's modules under DiT's parameter names (models.py of facebookresearch/DiT), built from its description."""

    def __init__(self, hidden=HIDDEN, depth=DEPTH, heads=HEADS, patch=PATCH, channels=CHANNELS, size=INPUT,
                 classes=CLASSES, learn_sigma=True):
        super().__init__()
        self.heads, self.patch, self.out_channels = heads, patch, 2 * channels if learn_sigma else channels
        self.grid = size // patch
        self.x_embedder = nn.ModuleDict({"proj": nn.Conv2d(channels, hidden, patch, patch)})
        self.t_embedder = nn.ModuleDict({"mlp": nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))})
        self.y_embedder = nn.ModuleDict({"embedding_table": nn.Embedding(classes + 1, hidden)})
        pos = torch.from_numpy(dit_pos_embed(hidden, self.grid)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({
                "attn": nn.ModuleDict({"qkv": nn.Linear(hidden, 3 * hidden), "proj": nn.Linear(hidden, hidden)}),
                "mlp": nn.ModuleDict({"fc1": nn.Linear(hidden, 4 * hidden), "fc2": nn.Linear(4 * hidden, hidden)}),
                "adaLN_modulation": nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden)),
            })
            for _ in range(depth)
        )
        self.final_layer = nn.ModuleDict({
            "linear": nn.Linear(hidden, patch * patch * self.out_channels),
            "adaLN_modulation": nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden)),
        })

    def forward(self, x, t, y):
        def norm(h):
            return nn.functional.layer_norm(h, h.shape[-1:], eps=1e-6)

        def modulate(h, shift, scale):
            return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        c = self.t_embedder["mlp"](t_freq) + self.y_embedder["embedding_table"](y)
        h = self.x_embedder["proj"](x).flatten(2).transpose(1, 2) + self.pos_embed
        B, N, D = h.shape
        for block in self.blocks:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block["adaLN_modulation"](c).chunk(6, dim=1)
            a = modulate(norm(h), shift_msa, scale_msa)
            qkv = block["attn"]["qkv"](a).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = (q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5).softmax(dim=-1)
            a = block["attn"]["proj"]((attn @ v).transpose(1, 2).reshape(B, N, D))
            h = h + gate_msa.unsqueeze(1) * a
            m = modulate(norm(h), shift_mlp, scale_mlp)
            m = block["mlp"]["fc2"](nn.functional.gelu(block["mlp"]["fc1"](m), approximate="tanh"))
            h = h + gate_mlp.unsqueeze(1) * m
        shift, scale = self.final_layer["adaLN_modulation"](c).chunk(2, dim=1)
        h = self.final_layer["linear"](modulate(norm(h), shift, scale))
        p, g, oc = self.patch, self.grid, self.out_channels
        h = h.reshape(B, g, g, p, p, oc)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(B, oc, g * p, g * p)


def original_dit(seed=0, scale=0.1, **kwargs):
    """A random ``OriginalDiT``: every parameter offset by noise of std ``scale`` (keep attention logits moderate)."""
    torch.manual_seed(seed)
    dit = OriginalDiT(**kwargs).eval()
    perturbed(dit, scale=scale, seed=seed)
    with torch.no_grad():
        dit.pos_embed.copy_(torch.from_numpy(dit_pos_embed(dit.pos_embed.shape[-1], dit.grid)).float())
    return dit

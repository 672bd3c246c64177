"""How far diffusers' DiT function is from the original DiT function, on the same weights.

    python experiments/dit_timestep_convention.py DiT-XL-2-256x256.pt     # one of DiT's checkpoints
    python experiments/dit_timestep_convention.py                         # random DiT-S/2 weights

diffusers' ``DiTTransformer2DModel`` embeds timesteps with a frequency shift of 1 and normalises
the MLP branch with eps 1e-5; DiT's checkpoints were trained with a shift of 0 and eps 1e-6.
``SDTTransformer2DModel.from_dit(..., timestep_convention=...)`` reproduces either. This prints, per
timestep, the RMS of the difference between the two outputs over the RMS of the original's.
"""

import argparse

import torch

from sdt_gen import SDTTransformer2DModel
from sdt_gen.models.dit_conversion import TIMESTEP_CONVENTIONS

TIMESTEPS = (0, 10, 100, 250, 500, 750, 999)


def random_dit_s2() -> SDTTransformer2DModel:
    """DiT-S/2 at 256 px (32x32x4 latents) with random weights and no zero-initialised branch."""
    torch.manual_seed(0)
    model = SDTTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6, decay_mode="none",
        **TIMESTEP_CONVENTIONS["original"],
    )
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="one of DiT's original checkpoints (default: random DiT-S/2)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    if args.checkpoint:
        original = SDTTransformer2DModel.from_dit(args.checkpoint, decay_mode="none")
        source = args.checkpoint
    else:
        original, source = random_dit_s2(), "random DiT-S/2 weights"
    diffusers_config = {**original.config, **TIMESTEP_CONVENTIONS["diffusers"]}
    as_diffusers = SDTTransformer2DModel.from_config(diffusers_config)
    as_diffusers.load_state_dict(original.state_dict())
    original.eval(), as_diffusers.eval()

    cfg = original.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, cfg.in_channels, *original.sample_hw, generator=g)
    y = torch.randint(0, cfg.num_classes, (args.batch_size,), generator=g)
    print(f"{source}: relative RMS difference, diffusers' function vs the original (noise channels)")
    with torch.no_grad():
        for t in TIMESTEPS:
            reference = original(x, t, y).sample[:, : cfg.in_channels]
            other = as_diffusers(x, t, y).sample[:, : cfg.in_channels]
            relative = (other - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
            print(f"  t = {t:4d}: {100 * relative.item():.2f}%")


if __name__ == "__main__":
    main()

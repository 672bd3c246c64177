"""The default settings of ``train_dit.py`` per kind of data, shared with the studies that record them.

A study records the recipe its runs trained under in its protocol (``sdt_gen.studies.protocol``), so a study
folder refuses to continue under another recipe.
"""

# What the bundled digits run needs instead of DiT's ImageNet recipe: a CPU-sized model, a larger
# learning rate and an EMA that ramps up, so a few thousand steps give clean digits.
DIGITS_DEFAULTS = dict(
    model="SDT-Ti/2", image_size=16, global_batch_size=64, lr=2e-3, max_grad_norm=1.0, max_steps=1400,
    ema_decay=0.999, ema_warmup=True, ckpt_every=700, sample_every=700, log_every=50, num_workers=0,
)
# MNIST's 28x28 digits padded to 32x32: patch 4 keeps the token grid at 8x8, as on the 16x16 digits.
MNIST_DEFAULTS = dict(DIGITS_DEFAULTS, model="SDT-Ti/4", image_size=32)
IMAGENET_DEFAULTS = dict(
    model="SDT-XL/2", image_size=256, global_batch_size=256, lr=1e-4, max_grad_norm=0.0, max_steps=400_000,
    ema_decay=0.9999, ema_warmup=False, ckpt_every=50_000, sample_every=10_000, log_every=100, num_workers=4,
)

__all__ = ["DIGITS_DEFAULTS", "IMAGENET_DEFAULTS", "MNIST_DEFAULTS"]

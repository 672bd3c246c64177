"""SDTTransformer2DModel: DiT's class-conditional denoiser with spatial-decay attention.

DiT (Peebles & Xie 2023) unchanged except for the attention, which carries SDT's learned,
data-dependent spatial decay (docs/method.md, section 5). A diffusers model: ``save_pretrained`` /
``from_pretrained``, ``enable_gradient_checkpointing()``, ``return_dict``, ``enable_layerwise_casting()``,
``torch.compile(model, fullgraph=True)`` and ``compile_repeated_blocks()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..diffusion.objectives import objective_rules
from ..layers import (
    ATTENTION_BACKENDS,
    DecayConfig,
    LabelEmbedding,
    PatchEmbed,
    SpatialDecayAttention,
    attention_backends_in_use,
    check_choice,
    decay_map,
    position_tables,
    resolve_backend,
    set_attention_backend,
)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                                 Core SDT Model                                #
#################################################################################

class SDTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning and spatial-decay attention.

    Args:
        hidden_size: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over token width.
        norm_eps: epsilon of the attention-branch LayerNorm.
        mlp_norm_eps: epsilon of the MLP-branch LayerNorm (diffusers' DiT uses 1e-5 there).
        decay: the attention's spatial decay (``DecayConfig``).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        mlp_norm_eps: float = 1e-6,
        decay: DecayConfig = DecayConfig(),
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.attn = SpatialDecayAttention(hidden_size, num_heads, decay, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, grid_size: tuple[int, int], rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        attn = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid_size, rope)  # (B, N, D)
        x = x + gate_msa.unsqueeze(1) * attn  # (B, N, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)


@dataclass
class SDTTransformer2DModelOutput(BaseOutput):
    """Output of ``SDTTransformer2DModel``.

    Args:
        sample: ``(B, out_channels, H, W)``: predicted noise, followed by the variance
            interpolation channels when ``learn_sigma``.
    """

    sample: torch.Tensor


class SDTTransformer2DModel(ModelMixin, ConfigMixin):
    """A class-conditional DiT whose attention carries SDT's spatial decay.

    Config keys:
        sample_size: input height and width in pixels or latent cells, an int or ``(h, w)``.
        patch_size: patch side ``p``; ``sample_size`` must be divisible by it.
        in_channels: input channels ``C`` (4 for SD-VAE latents, 3 for pixels).
        hidden_size, depth, num_heads, mlp_ratio: transformer shape (see ``SDT_PRESETS``).
        num_classes: number of real classes; index ``num_classes`` is the null class used by
            classifier-free guidance.
        class_dropout_prob: probability of replacing a label with the null class in training.
        learn_sigma: predict the variance too (``out_channels = 2 * in_channels``).
        decay_mode: ``"none"`` (DiT), ``"fixed"`` (RMT) or ``"cag"`` (SDT).
        decay_layout: ``"full"`` or ``"decomposed"``.
        decay_init: ``"rmt"`` (start as RMT's decay) or ``"zero"`` (start as plain attention).
        initial_value, heads_range: RMT's ``a`` and ``b`` of the per-head gammas.
        timestep_freq_shift: frequency shift of the sinusoidal timestep features (DiT: 0;
            diffusers' DiT conversion: 1).
        mlp_norm_eps: epsilon of the MLP-branch LayerNorm (DiT: 1e-6; diffusers' DiT: 1e-5).
        objective: what the model was trained to predict, so pipelines pick a matching sampler:
            ``"ddpm"`` (DiT: the noise, with diffusers' DDPM-family schedulers) or ``"flow"`` (SiT: the
            velocity of the linear path, with diffusers' flow-matching schedulers; ``learn_sigma=False``).
        position_embedding: ``"sincos"`` (DiT's fixed absolute table added at the input), ``"rope"`` (no
            absolute table; queries and keys of every attention layer rotated by the token's row and column,
            ``sdt_gen.layers.rope_rotation``) or ``"sincos+rope"`` (both).
        rope_base: frequency base of the rotary positions (``theta_i = rope_base^(-2i / (D/2))``).

    Not a config key: ``attention_backend`` (``"auto"``, ``"sdpa"``, ``"flex"`` or ``"eager"``), a property of the
    machine that runs the model rather than of its weights. Give it to the constructor or to ``from_pretrained``, or
    change it with ``set_attention_backend``; it is never saved, and a value that older folders saved is ignored.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SDTBlock"]
    _repeated_blocks = ["SDTBlock"]
    # Layerwise casting (``enable_layerwise_casting``) leaves at full precision the patch embedding, the timestep
    # and label embedders and the adaLN modulations: what diffusers' DiT leaves there (its "norm" pattern covers
    # the AdaLayerNormZero that holds them), and where diffusers places most of the casting's quality loss. The
    # gates too: their rates are multiplied by grid distances of up to h + w before the exponential.
    _skip_layerwise_casting_patterns = ["x_embedder", "t_embedder", "y_embedder", "adaLN_modulation", "gate"]
    ignore_for_config = ["attention_backend"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | list[int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = True,
        decay_mode: str = "cag",
        decay_layout: str = "full",
        decay_init: str = "rmt",
        attention_backend: str = "auto",
        initial_value: float = 2.0,
        heads_range: float = 6.0,
        timestep_freq_shift: float = 0.0,
        mlp_norm_eps: float = 1e-6,
        objective: str = "ddpm",
        position_embedding: str = "sincos",
        rope_base: float = 10000.0,
    ):
        super().__init__()
        # One draw from the global generator seeds the whole initialisation, so the weights the decay
        # modes share start equal, and the draws after building are the same in every mode.
        init_seed = int(torch.randint(2**62, (), device="cpu"))
        if isinstance(sample_size, int):
            height, width = sample_size, sample_size
        else:
            height, width = sample_size
            self.register_to_config(sample_size=[height, width])  # JSON keeps lists, so save/load round-trips
        objective_rules(objective).check_learn_sigma(learn_sigma)
        if height % patch_size or width % patch_size:
            raise ValueError(f"sample_size {height}x{width} is not divisible by patch_size {patch_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive class count, got {num_classes}")
        self.sample_hw = (height, width)
        self.grid_size = (height // patch_size, width // patch_size)
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.gradient_checkpointing = False

        with torch.random.fork_rng(devices=[]):  # the layers' default init is redrawn below
            self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
            self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=timestep_freq_shift)
            self.t_embedder = TimestepEmbedding(256, hidden_size)
            self.y_embedder = LabelEmbedding(num_classes, hidden_size, class_dropout_prob)
            # Non-persistent: rebuilt from the config, never saved.
            pos_embed, rope = position_tables(hidden_size, num_heads, self.grid_size, position_embedding, rope_base)
            self.register_buffer("pos_embed", pos_embed, persistent=False)  # (1, N, D) or None
            self.register_buffer("rope", rope, persistent=False)  # (2, N, D_head / 2) or None

            decay = DecayConfig(
                mode=decay_mode, layout=decay_layout, init=decay_init, initial_value=initial_value,
                heads_range=heads_range,
            )
            self.blocks = nn.ModuleList(
                SDTBlock(hidden_size, num_heads, mlp_ratio, mlp_norm_eps=mlp_norm_eps, decay=decay)
                for _ in range(depth)
            )
            self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights(torch.Generator(device="cpu").manual_seed(init_seed))
        self.set_attention_backend(attention_backend)

    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """DiT's initialisation: xavier linears, zero adaLN-Zero modulations and output layer.

        The random draws skip the gates (their start is deterministic), so with the same
        ``generator`` every parameter shared by the decay modes starts equal in all of them.

        Args:
            generator: a CPU generator of the random draws; ``None`` uses the global one.
        """
        if self.x_embedder.proj.weight.device.type == "meta":  # built to receive loaded weights: nothing to draw
            return
        gates = [block.attn.gate for block in self.blocks if block.attn.gate is not None]
        gate_linears = {id(gate.proj) for gate in gates}

        def draw(tensor: torch.Tensor, init, **kwargs) -> None:
            # Drawn on the CPU, where ``generator`` lives, whatever the model's device. In place, not through
            # the return value: diffusers' from_pretrained swaps the nn.init functions for no-ops returning None.
            drawn = torch.zeros(tensor.shape, device="cpu")
            init(drawn, generator=generator, **kwargs)
            with torch.no_grad():
                tensor.copy_(drawn)

        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module) not in gate_linears:
                draw(module.weight, nn.init.xavier_uniform_)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        # Patch embedding like a linear layer, not a conv.
        w = self.x_embedder.proj.weight
        draw(w.data.view(w.shape[0], -1), nn.init.xavier_uniform_)
        nn.init.zeros_(self.x_embedder.proj.bias)

        draw(self.y_embedder.embedding_table.weight, nn.init.normal_, std=0.02)
        draw(self.t_embedder.linear_1.weight, nn.init.normal_, std=0.02)
        draw(self.t_embedder.linear_2.weight, nn.init.normal_, std=0.02)

        # adaLN-Zero: every block starts as the identity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for gate in gates:
            gate.reset_parameters()
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ------------------------------------------------------------------ attention backend

    def set_attention_backend(self, backend: str) -> None:
        """Run every attention layer with ``backend`` from the next call on: ``"auto"`` (FlexAttention on CUDA, SDPA
        elsewhere, decided at the first call on each device), ``"sdpa"``, ``"flex"`` or ``"eager"``. diffusers' method,
        with this model's backends; the config is not touched."""
        set_attention_backend(self, backend)

    def reset_attention_backend(self) -> None:
        """Back to ``"auto"`` (diffusers' method)."""
        set_attention_backend(self, "auto")

    @property
    def attention_backend(self) -> str:
        """The backend asked for (``set_attention_backend``); ``attention_backends_in_use`` says what ran."""
        return self.blocks[0].attn.backend

    def attention_backends_in_use(self) -> dict[str, str]:
        """``{device type: backend}`` of the calls made so far, e.g. ``{"cpu": "sdpa"}`` (``auto``'s choice)."""
        return attention_backends_in_use(self)

    def attention_backend_summary(self) -> str:
        """What ran, for people: ``"sdpa on cpu (auto)"``; before any call (or under ``torch.compile``, which
        records nothing), what runs on the model's device."""
        used = self.attention_backends_in_use() or {
            self.device.type: resolve_backend(self.attention_backend, self.device)
        }
        ran = ", ".join(f"{backend} on {device}" for device, backend in used.items())
        return f"{ran} (auto)" if self.attention_backend == "auto" else ran

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' ``extract_init_dict``, dropping the ``attention_backend`` that folders saved before it left
        the config (the machine decides it now)."""
        config_dict = {key: value for key, value in config_dict.items() if key != "attention_backend"}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, attention_backend: str = "auto", **kwargs):
        """diffusers' ``from_pretrained``; ``attention_backend`` as for ``set_attention_backend``."""
        check_choice("attention_backend", attention_backend, ATTENTION_BACKENDS)
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).set_attention_backend(attention_backend)
        return loaded

    # ------------------------------------------------------------------ inputs

    def _check_inputs(self, sample: torch.Tensor, class_labels: torch.Tensor) -> None:
        cfg = self.config
        if sample.dim() != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must be (B, {cfg.in_channels}, H, W), got shape {tuple(sample.shape)}")
        if tuple(sample.shape[-2:]) != self.sample_hw:
            raise ValueError(
                f"sample spatial size {tuple(sample.shape[-2:])} does not match the model's sample_size "
                f"{self.sample_hw} (patch_size {cfg.patch_size})"
            )
        if class_labels.shape != (sample.shape[0],):
            raise ValueError(f"class_labels must have shape ({sample.shape[0]},), got {tuple(class_labels.shape)}")
        if class_labels.dtype.is_floating_point:
            raise ValueError(f"class_labels must be integers, got dtype {class_labels.dtype}")
        expected = f"expected 0..{cfg.num_classes - 1} or {cfg.num_classes} for the null (unconditional) class"
        in_range = (class_labels >= 0) & (class_labels <= cfg.num_classes)
        if class_labels.device.type != "cpu" or torch.compiler.is_compiling():
            # Reading the result back would stall the GPU every step, and would break a torch.compile graph on
            # the data-dependent branch: an assert op stays inside the graph and still fails on a bad label.
            torch._assert_async(in_range.all(), f"class label out of range: {expected}")
        elif not in_range.all():
            raise ValueError(f"class label {class_labels[~in_range][0].item()} is out of range: {expected}")

    def conditioning(
        self, timestep: torch.Tensor, class_labels: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The adaLN conditioning vector ``t_emb + y_emb``: ``(B, D)``.

        Args:
            timestep: ``(B,)`` diffusion steps.
            class_labels: ``(B,)`` labels in ``[0, num_classes]``.
            dtype: the dtype the model computes in (``forward`` passes its hidden states' dtype); default
                ``self.dtype``, which under layerwise casting is the compute dtype, not the weights' storage dtype.
        """
        # The sinusoidal features are float32; the MLP takes them in the compute dtype, as diffusers' DiT and
        # PixArt pass ``hidden_dtype``. Under layerwise casting the weights are stored in e.g. float8 and upcast
        # only while their layer runs, so their dtype at rest is never the one to cast to.
        t_freq = self.time_proj(timestep).to(dtype or self.dtype)  # (B, 256)
        return self.t_embedder(t_freq) + self.y_embedder(class_labels)  # (B, D)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, p*p*C) -> (B, C, H, W)``."""
        p, c = self.config.patch_size, self.out_channels
        h, w = self.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor,
        return_dict: bool = True,
    ) -> SDTTransformer2DModelOutput | tuple[torch.Tensor]:
        """Predict noise (and variance) for noisy ``sample`` at ``timestep`` of class ``class_labels``.

        Args:
            sample: ``(B, C, H, W)`` noisy latents or pixels.
            timestep: ``(B,)`` or a scalar diffusion step.
            class_labels: ``(B,)`` int labels in ``[0, num_classes]``; ``num_classes`` is the null class.
            return_dict: return an ``SDTTransformer2DModelOutput`` instead of a tuple.
        """
        # 1. Input
        self._check_inputs(sample, class_labels)
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        x = self.x_embedder(sample)  # (B, N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        c = self.conditioning(timestep, class_labels, dtype=x.dtype)  # (B, D)

        # 2. Blocks
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c, self.grid_size, self.rope)
            else:
                x = block(x, c, self.grid_size, self.rope)  # (B, N, D)

        # 3. Output
        out = self.unpatchify(self.final_layer(x, c))  # (B, out_channels, H, W)
        if not return_dict:
            return (out,)
        return SDTTransformer2DModelOutput(sample=out)

    # ------------------------------------------------------------------ decay maps

    @torch.no_grad()
    def decay_rates(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, class_labels: torch.Tensor
    ) -> torch.Tensor:
        """Each layer's per-token decay rates ``a <= 0`` for an input (the bias is ``(a_n + a_m) d(n, m)``).

        The gates' output in decay mode ``cag``, RMT's ``0.5 * log(gamma_k)`` in ``fixed``, zeros in
        ``none``. ``exp(2 * a)`` is the decay per unit of grid distance between two tokens of rate ``a``.

        Args:
            sample, timestep, class_labels: as for ``forward``.

        Returns:
            ``(depth, B, H, N)``.
        """
        inputs = []  # what each block's attention reads: its rates are computed from it, as the forward does
        hooks = [block.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for block in self.blocks]
        try:
            self(sample, timestep, class_labels)
        finally:
            for hook in hooks:
                hook.remove()
        shape = (sample.shape[0], self.config.num_heads, self.grid_size[0] * self.grid_size[1])
        rates = []
        for block, x in zip(self.blocks, inputs):
            layer_rates = block.attn.decay_rates(x)  # (B | 1, H, N | 1), or None without decay
            rates.append(torch.zeros(shape, device=sample.device) if layer_rates is None else layer_rates.expand(shape))
        return torch.stack(rates)

    @torch.no_grad()
    def decay_maps(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor,
        query: int | tuple[int, int],
    ) -> torch.Tensor:
        """Each layer's and head's decay ``exp(B(query, .))`` over the token grid for an input.

        Args:
            sample, timestep, class_labels: as for ``forward``.
            query: the query token, a raster index or a ``(row, col)`` grid position.

        Returns:
            ``(depth, B, H, h, w)``; all ones in decay mode ``none``.
        """
        h, w = self.grid_size
        if isinstance(query, tuple):
            row, col = query
            if not (0 <= row < h and 0 <= col < w):
                raise ValueError(f"query {query} is outside the {h}x{w} token grid")
            query = row * w + col
        rates = self.decay_rates(sample, timestep, class_labels)  # (depth, B, H, N)
        return torch.stack([decay_map(layer_rates, self.grid_size, query) for layer_rates in rates])

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SDTTransformer2DModel":
        """Build a model from ``SDT_PRESETS[name]`` (e.g. ``"SDT-XL/2"``), overriding any config key."""
        if name not in SDT_PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(SDT_PRESETS)}")
        return cls(**{**SDT_PRESETS[name], **overrides})

    @classmethod
    def from_dit(
        cls,
        dit: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
        weights: str = "ema",
        timestep_convention: str | None = None,
        **overrides,
    ) -> "SDTTransformer2DModel":
        """Convert DiT weights into an SDT model that computes the same function.

        ``dit`` is DiT's own format (a checkpoint file such as ``DiT-XL-2-256x256.pt``, a DiT
        ``train.py`` checkpoint, or such a state dict) or a diffusers ``DiTTransformer2DModel``.
        With ``decay_mode="none"`` or ``decay_init="zero"`` (the default for ``cag`` here) the
        result computes the DiT's output.

        Args:
            dit: the DiT weights.
            weights: ``"ema"`` or ``"model"``: which weights of a ``train.py`` checkpoint.
            timestep_convention: ``"original"`` reproduces DiT's own function (timestep features
                without frequency shift, MLP LayerNorm eps 1e-6); ``"diffusers"`` reproduces diffusers'
                ``DiTTransformer2DModel`` (shift 1, eps 1e-5). Default: ``"original"`` for DiT's files,
                ``"diffusers"`` for diffusers models (so ``from_dit_pipeline`` samples ``DiTPipeline``'s images).
            **overrides: any config key, e.g. ``decay_mode="cag"``; keys the DiT's tensors determine
                (depth, width, patch, input size, classes, learned sigma) must agree with them.

        Example:
            >>> sdt = SDTTransformer2DModel.from_dit("DiT-XL-2-256x256.pt")
            >>> sdt = SDTTransformer2DModel.from_dit("0400000.pt", weights="model", decay_mode="cag")
        """
        from . import dit_conversion as conversion

        if isinstance(dit, nn.Module):
            config = conversion.sdt_config_from_dit(dit.config, timestep_convention or "diffusers")
            config = {**config, **overrides}
            state = conversion.convert_dit_state_dict(dit.state_dict(), depth=config["depth"])
            dtype = next(dit.parameters()).dtype
        else:
            if isinstance(dit, (str, os.PathLike)):
                original = conversion.load_dit_checkpoint(dit, weights)
            else:
                original = conversion.select_dit_weights(dit, weights)
            convention = conversion.timestep_settings(timestep_convention or "original")
            config = conversion.sdt_config_from_original_dit(original, **{**convention, **overrides})
            state = conversion.convert_original_dit_state_dict(original, config)
            dtype = next(iter(state.values())).dtype
        if config.get("position_embedding", "sincos") != "sincos":
            raise ValueError(
                f"from_dit keeps DiT's position_embedding='sincos'; got {config['position_embedding']!r}, which "
                "rotates queries and keys DiT never saw, so the converted model would not compute the DiT's "
                "function. Convert with 'sincos', or train a rope model from scratch"
            )
        if config.get("decay_mode", "cag") == "cag":
            config.setdefault("decay_init", "zero")
        model = cls(**config)
        expected = model.state_dict()
        for key, value in state.items():
            if key in expected and value.shape != expected[key].shape:
                raise ValueError(
                    f"DiT tensor for {key!r} has shape {tuple(value.shape)}; the converted config "
                    f"expects {tuple(expected[key].shape)}"
                )
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if ".attn.gate." not in k]
        if missing or unexpected:
            raise ValueError(f"DiT conversion mismatch: missing {missing}, unexpected {unexpected}")
        return model if dtype == torch.float32 else model.to(dtype=dtype)


#################################################################################
#                                  SDT Configs                                  #
#################################################################################

_SIZES = {
    "Ti": dict(depth=4, hidden_size=128, num_heads=4),  # not in DiT: a CPU-sized model for demos and tests
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}

SDT_PRESETS: dict[str, dict] = {
    f"SDT-{size}/{patch}": dict(shape, patch_size=patch) for size, shape in _SIZES.items() for patch in (2, 4, 8)
}

"""A web demo for any SDT pipeline: sample, compare two pipelines, and look at the learned decay.

    pip install -e ".[demo]"
    python -m sdt_gen.demo --model results/000-SDT-Ti-2-digits/pipeline             # http://127.0.0.1:7860
    python -m sdt_gen.demo --model studies/mnist-decay/runs/none-s0/000-SDT-Ti-4-mnist32-flow/pipeline \\
        --compare studies/mnist-decay/runs/cag-s0/000-SDT-Ti-4-mnist32-flow/pipeline
    python -m sdt_gen.demo --model org/sdt-xl-2-256 --share                          # any folder or Hub id

Tabs: **Sample** (classes by name, images per class, guidance, steps, scheduler, seed; image ``i``
is drawn from ``image_seed(seed, i)``, so a seed gives the images ``sample.py`` gives),
**Compare** (with ``--compare``: the same classes and seeds through both pipelines), and **Decay**
(click a point on a sample: every layer's and head's decay ``exp(B(query, .))`` at a chosen
timestep). Each request is capped at ``--max-work`` image-steps (images x steps). The pipelines
are loaded once. Gradio is an optional dependency, imported only here.
"""

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sdt_gen.cli import positive_int, run_main
from sdt_gen.data.vae import encode_images
from sdt_gen.diffusion import make_objective, objective_of
from sdt_gen.extras import require
from sdt_gen.hub import local_folder
from sdt_gen.layers import ATTENTION_BACKENDS
from sdt_gen.pipelines import SCHEDULERS, SDTPipeline, chosen_scheduler, image_seed, scheduler_names
from sdt_gen.pipelines.schedulers import samples_velocity
from sdt_gen.visualize import make_grid_png, save_decay_maps

PICK_SIZE = 256  # the sample to click on is shown at about this many pixels, however small the model's images
MAX_WORK = 2000
"""Default cap of one request: images x sampling steps."""
DECAY_NOISE_SEED = 0  # the noise of the decay tab's x_t: the same picture for the same sample and timestep


#################################################################################
#                          Requests (no Gradio needed)                          #
#################################################################################

@dataclass
class Samples:
    """What a Sample request made: the images (one per label, in order), their labels, and the grid."""

    images: list[Image.Image]
    labels: list[int]
    grid: Image.Image


class DemoModel:
    """One pipeline, loaded once, and the requests the demo makes of it.

    Args:
        pipe: the pipeline (on its device).
        name: how the UI names it (its folder or Hub id).
        max_work: the largest images x steps one request may ask for.
    """

    def __init__(self, pipe: SDTPipeline, name: str, max_work: int = MAX_WORK):
        self.pipe, self.name, self.max_work = pipe, name, max_work
        pipe.set_progress_bar_config(leave=False)
        config = pipe.transformer.config
        self.schedulers = scheduler_names(config)
        rules = objective_of(config)
        self.default_scheduler = next(
            (n for n in self.schedulers if isinstance(pipe.scheduler, SCHEDULERS[n])), rules.default_sampler
        )
        self.decay_mode = config.decay_mode
        self.is_flow = samples_velocity(rules)
        self.position_embedding = config.position_embedding
        self.class_names = [pipe.label_name(i) for i in range(config.num_classes)]

    @classmethod
    def load(
        cls, model: str, device: torch.device, max_work: int = MAX_WORK, attention_backend: str = "auto"
    ) -> "DemoModel":
        """A pipeline folder or Hub repo id (the Hugging Face cache when offline), run with ``attention_backend``."""
        pipe = SDTPipeline.from_pretrained(local_folder(model)).to(device)
        pipe.transformer.set_attention_backend(attention_backend)
        return cls(pipe, model, max_work)


    def check_request(self, classes: list[str | int] | str | int, per_class: int, steps: int, scheduler: str) -> list[int]:
        """The class ids of a request; ``ValueError`` for an unknown class, scheduler or an oversized request."""
        classes = [classes] if isinstance(classes, (str, int)) else list(classes)
        if not classes:
            raise ValueError("pick at least one class")
        ids = self.pipe.get_label_ids(classes)  # names (any synonym) or ids; unknown names suggest close ones
        if scheduler not in self.schedulers:
            raise ValueError(f"scheduler {scheduler!r} cannot sample this model; expected one of {', '.join(self.schedulers)}")
        if per_class < 1 or steps < 1:
            raise ValueError(f"images per class and steps must be at least 1, got {per_class} and {steps}")
        work = len(ids) * per_class * steps
        if work > self.max_work:
            raise ValueError(
                f"{len(ids)} classes x {per_class} images x {steps} steps = {work} image-steps is more than this "
                f"demo's {self.max_work} per request: ask for fewer images or steps"
            )
        return ids

    def sample(
        self,
        classes: list[str | int] | str | int,
        per_class: int = 4,
        guidance_scale: float = 4.0,
        steps: int = 25,
        scheduler: str | None = None,
        seed: int = 0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        flow_shift: float | None = None,
    ) -> Samples:
        """Images of ``classes`` (names or ids), ``per_class`` each; image ``i`` from ``image_seed(seed, i)``, as sample.py.
        ``guidance_interval`` and ``flow_shift`` as sample.py's ``--guidance-interval`` and ``--flow-shift``."""
        scheduler = scheduler or self.default_scheduler
        ids = self.check_request(classes, per_class, steps, scheduler)
        labels = [c for c in ids for _ in range(per_class)]
        pipe = SDTPipeline(  # shares the modules; only the sampler differs between requests
            transformer=self.pipe.transformer, vae=self.pipe.vae, id2label=self.pipe.id2label,
            scheduler=chosen_scheduler(self.pipe.scheduler, scheduler, flow_shift),
        )
        pipe.set_progress_bar_config(leave=False)
        images = pipe(
            labels,
            guidance_scale=guidance_scale,
            guidance_interval=guidance_interval,
            generator=[torch.Generator().manual_seed(image_seed(seed, i)) for i in range(len(labels))],
            num_inference_steps=steps,
        ).images
        grid = make_grid_png(images, per_class, row_labels=[self.pipe.label_name(c) for c in ids])
        return Samples(images, labels, grid)

    def decay_picture(self, image: Image.Image, label: int, timestep: int, point: tuple[float, float]) -> Image.Image:
        """Every layer's and head's decay from the token under ``point`` of ``image`` at ``timestep``.

        Args:
            image: a sample, as ``sample`` returned it.
            label: its class id.
            timestep: the diffusion timestep (0: clean, 999: noise) at which the gates read the input.
            point: ``(x, y)`` in ``[0, 1)``, the clicked position relative to the image's width and height.

        Returns:
            the maps (one row per layer, one column per head); all ones in decay mode ``none``.
        """
        model = self.pipe.transformer
        if not 0 <= timestep < 1000:
            raise ValueError(f"timestep must be in 0..999, got {timestep}")
        h, w = model.grid_size
        query = (min(int(point[1] * h), h - 1), min(int(point[0] * w), w - 1))  # (row, col) of the token
        device, dtype = model.device, model.dtype
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
        with torch.no_grad():
            if self.pipe.vae is not None:
                x0 = encode_images(self.pipe.vae, pixels[None].to(device), torch.Generator(device).manual_seed(0))
            else:
                x0 = pixels[None, : model.config.in_channels].to(device)  # 1-channel models: one grey channel
            x0 = x0.to(dtype)
            t = torch.full((1,), timestep, dtype=torch.long, device=device)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(DECAY_NOISE_SEED)).to(device, dtype)
            xt = make_objective(model.config.objective, learn_sigma=False).noised(x0, t, noise)[0]
            maps = model.decay_maps(xt, t, torch.tensor([label], device=device), query=query)  # (depth, 1, H, h, w)
        return save_decay_maps(maps)


#################################################################################
#                                  The Gradio app                               #
#################################################################################

def user_error(error: Exception):
    """A ``gradio.Error`` showing ``error``'s message to the user, without a traceback in the log."""
    import gradio as gr

    return gr.Error(str(error), print_exception=False)


def sample_request(
    model: DemoModel, classes, per_class, guidance, steps, scheduler, seed, guide_from, guide_to, shift
) -> dict:
    """The keyword arguments of ``DemoModel.sample`` from the values of ``request_controls``."""
    return dict(classes=classes, per_class=int(per_class), guidance_scale=float(guidance), steps=int(steps),
                scheduler=scheduler, seed=int(seed), guidance_interval=(float(guide_from), float(guide_to)),
                flow_shift=float(shift) if model.is_flow else None)


def chosen(made: Samples | None, index) -> int:
    """The index of a sample of the last grid; a user error when there is none such."""
    if made is None:
        raise user_error(ValueError("generate samples first (Sample tab)"))
    if not 0 <= int(index) < len(made.images):
        raise user_error(ValueError(f"there is no sample {int(index)}: the last grid has 0..{len(made.images) - 1}"))
    return int(index)


def enlarged(image: Image.Image) -> Image.Image:
    """``image`` scaled up by a whole factor to about ``PICK_SIZE``, so its tokens are big enough to click."""
    scale = max(1, PICK_SIZE // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def pick(made: Samples | None, index):
    """The chosen sample, enlarged to click on; nothing before the first grid."""
    return None if made is None else enlarged(made.images[chosen(made, index)])


def request_controls(model: DemoModel, prefix: str) -> list:
    """The inputs of a sampling request, in ``sample_request``'s order; ``prefix`` keeps their element ids apart."""
    import gradio as gr

    with gr.Row():
        classes = gr.Dropdown(
            model.class_names, value=[model.class_names[0]], multiselect=True, allow_custom_value=True,
            filterable=True, label="classes (type to search)", elem_id=f"{prefix}-classes",
        )
        per_class = gr.Slider(1, 16, value=4, step=1, label="images per class", elem_id=f"{prefix}-per-class")
    with gr.Row():
        guidance = gr.Slider(0.0, 10.0, value=4.0, step=0.5, label="guidance scale", elem_id=f"{prefix}-guidance")
        steps = gr.Slider(1, 250, value=25, step=1, label="steps", elem_id=f"{prefix}-steps")
        scheduler = gr.Dropdown(model.schedulers, value=model.default_scheduler, label="scheduler",
                                elem_id=f"{prefix}-scheduler")
        seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id=f"{prefix}-seed")
    with gr.Row():
        guide_from = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="guide from noise level (0: clean)",
                               elem_id=f"{prefix}-guide-from")
        guide_to = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="guide up to noise level (1: pure noise)",
                             elem_id=f"{prefix}-guide-to")
        shift = gr.Number(1.0, minimum=0.1, label="flow shift (1: none)", visible=model.is_flow,
                          elem_id=f"{prefix}-flow-shift")
    return [classes, per_class, guidance, steps, scheduler, seed, guide_from, guide_to, shift]


def compare_tab(model: DemoModel, compare: DemoModel) -> None:
    """The Compare tab: the same request through both pipelines, side by side."""
    import gradio as gr

    def side_by_side(*inputs, progress=gr.Progress(track_tqdm=True)):
        try:
            return tuple(m.sample(**sample_request(model, *inputs)).grid for m in (model, compare))
        except ValueError as error:
            raise user_error(error) from None

    with gr.Tab("Compare", id="compare"):
        gr.Markdown(f"The same classes and seeds through `{model.name}` (left) and `{compare.name}` (right).")
        compare_inputs = request_controls(model, "compare")
        compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
        with gr.Row():
            left = gr.Image(label=model.name, type="pil", interactive=False, elem_id="left", format="png")
            right = gr.Image(label=compare.name, type="pil", interactive=False, elem_id="right", format="png")
        compare_button.click(side_by_side, compare_inputs, [left, right])


def decay_picker(model: DemoModel, made) -> list:
    """The Decay tab's sample picker and maps; returns the sample number and picture a new grid resets."""
    import gradio as gr

    def decay(made: Samples | None, index, timestep, point):
        index = chosen(made, index)
        return model.decay_picture(made.images[index], made.labels[index], int(timestep), point)

    def clicked(made: Samples | None, index, timestep, event: gr.SelectData):
        shown = enlarged(made.images[chosen(made, index)])
        point = (event.index[0] / shown.width, event.index[1] / shown.height)
        return point, decay(made, index, timestep, point)

    gr.Markdown("Pick a sample and click a point on it: the decay from that token, per layer (rows) "
                "and head (columns), with the gates reading the sample noised to the timestep.")
    with gr.Row():
        index = gr.Number(0, precision=0, minimum=0, label="sample (0: the first of the grid, row by row)",
                          elem_id="decay-sample")
        timestep = gr.Slider(0, 999, value=500, step=1, label="timestep", elem_id="decay-timestep")
    point = gr.State((0.5, 0.5))
    with gr.Row():
        picked = gr.Image(label="click a point", type="pil", interactive=False, elem_id="decay-picked", format="png")
        maps = gr.Image(label="decay maps", type="pil", interactive=False, elem_id="decay-maps", format="png")
    show = gr.Button("Show the centre", elem_id="decay-show")
    index.change(pick, [made, index], picked)
    picked.select(clicked, [made, index, timestep], [point, maps])
    show.click(lambda m, i, t: decay(m, i, t, (0.5, 0.5)), [made, index, timestep], maps)
    return [index, picked]


def build_demo(model: DemoModel, compare: DemoModel | None = None):
    """The Gradio ``Blocks`` app: Sample, Compare (with ``compare``) and Decay tabs."""
    import gradio as gr

    has_decay = model.decay_mode != "none"

    def sample(*inputs, progress=gr.Progress(track_tqdm=True)):
        try:
            made = model.sample(**sample_request(model, *inputs))
        except ValueError as error:
            raise user_error(error) from None
        if not has_decay:
            return made.grid, made
        return made.grid, made, 0, enlarged(made.images[0])

    with gr.Blocks(title=f"SDT demo: {model.name}") as demo:
        gr.Markdown(
            f"# SDT demo\n`{model.name}`: {len(model.class_names)} classes, decay `{model.decay_mode}`, "
            f"positions `{model.position_embedding}`, attention `{model.pipe.transformer.attention_backend_summary()}`. "
            f"At most **{model.max_work} image-steps** (images x steps) per request."
        )
        made = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                inputs = request_controls(model, "sample")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                grid = gr.Image(label="samples", type="pil", interactive=False, elem_id="samples", format="png")
            if compare is not None:
                compare_tab(model, compare)
            with gr.Tab("Decay", id="decay"):
                if not has_decay:
                    gr.Markdown("This model's decay mode is `none`: its attention has no spatial decay to show.",
                                elem_id="no-decay")
                    picker = []
                else:
                    picker = decay_picker(model, made)
        generate.click(sample, inputs, [grid, made] + picker)
    return demo


def main(args):
    require("gradio", "the demo", extra="demo")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = DemoModel.load(args.model, device, args.max_work, args.attention_backend)
    compare = DemoModel.load(args.compare, device, args.max_work, args.attention_backend) if args.compare else None
    if compare is not None and compare.class_names != model.class_names:
        raise ValueError(f"--compare {args.compare} has other classes than --model {args.model}: compare like with like")
    demo = build_demo(model, compare)
    demo.queue(default_concurrency_limit=1)  # one request at a time on the one model
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a pipeline folder or Hugging Face Hub repo id")
    p.add_argument("--compare", help="a second pipeline (same classes): adds the Compare tab")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=positive_int, default=7860, help="port (Gradio's default 7860)")
    p.add_argument("--share", action="store_true", help="a public gradio.live link (Gradio's --share)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    p.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                   help="auto = flex on CUDA, sdpa elsewhere")
    p.add_argument("--max-work", type=positive_int, default=MAX_WORK,
                   help=f"the most image-steps (images x steps) one request may ask for (default {MAX_WORK})")
    return p


if __name__ == "__main__":
    run_main(main, build_parser())

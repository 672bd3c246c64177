import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiTPipeline

from sdt_gen import SDTPipeline, SDTTransformer2DModel

from helpers import library_warnings, tiny_dit

DIT_ID2LABEL = {"0": "tench, Tinca tinca", "207": "golden retriever", "360": "otter", "999": "toilet tissue"}


@pytest.fixture
def dit_folder(tmp_path, make_vae):
    """A DiT pipeline folder laid out like facebook/DiT-XL-2-256: id2label lives in model_index.json."""
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    pipe = DiTPipeline(transformer=tiny_dit(), vae=make_vae(), scheduler=scheduler)
    folder = tmp_path / "DiT-tiny"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "id2label": DIT_ID2LABEL}))
    return folder


def dit_images(folder, labels, guidance_scale, steps=3):
    dit = DiTPipeline.from_pretrained(folder)
    dit.set_progress_bar_config(disable=True)
    return dit(labels, guidance_scale=guidance_scale, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.mark.parametrize("overrides", [dict(decay_mode="none"), dict(decay_mode="cag", decay_init="zero")])
@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_from_dit_pipeline_gives_the_dit_pipelines_images(dit_folder, overrides, guidance_scale):
    pipe = SDTPipeline.from_dit_pipeline(dit_folder, **overrides)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.transformer, SDTTransformer2DModel)
    assert pipe.transformer.config.decay_mode == overrides["decay_mode"]
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.vae is not None
    labels = [207, 360]
    got = pipe(labels, guidance_scale=guidance_scale, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    want = dit_images(dit_folder, labels, guidance_scale)
    assert got.shape == want.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_from_dit_pipeline_keeps_id2label_and_saves_it(dit_folder, tmp_path):
    with library_warnings() as caught:  # the Hub's id2label has string keys, which DiTPipeline's loader warns about
        pipe = SDTPipeline.from_dit_pipeline(dit_folder, decay_mode="cag", decay_init="zero")
    assert caught == []
    assert pipe.id2label == {int(k): v for k, v in DIT_ID2LABEL.items()}
    assert pipe.transformer.config.num_classes == 1000
    assert pipe.get_label_ids(["Otter", "tinca tinca"]) == [360, 0]
    pipe.save_pretrained(tmp_path / "sdt")
    index = json.loads((tmp_path / "sdt" / "model_index.json").read_text())
    assert index["id2label"] == DIT_ID2LABEL
    loaded = SDTPipeline.from_pretrained(tmp_path / "sdt")
    assert loaded.labels["golden retriever"] == 207 and loaded.transformer.config.decay_mode == "cag"


def test_from_dit_pipeline_without_id2label_in_the_folder(dit_folder):
    index = json.loads((dit_folder / "model_index.json").read_text())
    del index["id2label"]
    (dit_folder / "model_index.json").write_text(json.dumps(index))
    assert SDTPipeline.from_dit_pipeline(dit_folder, decay_mode="none").id2label == {}


def test_from_dit_pipeline_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SDTPipeline.from_dit_pipeline(tmp_path / "DiT-XL-2-256")


@pytest.mark.parametrize("component", ["vae", "transformer"])
def test_from_dit_pipeline_incomplete_folder(dit_folder, component):
    shutil.rmtree(dit_folder / component)
    with pytest.raises(FileNotFoundError, match=f"lacks the '{component}' component"):
        SDTPipeline.from_dit_pipeline(dit_folder)

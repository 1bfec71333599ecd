"""The pipelines shipped in models/ load offline, carry the current pipeline file and their parser, and generate."""

import filecmp
import json
import os

import pytest
import torch
from safetensors import safe_open

from conftest import PIPELINE_FILE, ROOT, assert_lambda_zero_twins

SHIPPED = ["interpretable-ddpm-faces64", "ddpm-faces64-baseline"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folder_is_complete_and_current(name):
    folder = os.path.join(ROOT, "models", name)
    # the copy that Hub loading (trust_remote_code) executes must be the repository's current file
    assert filecmp.cmp(os.path.join(folder, "pipeline_interpretable_ddpm.py"), PIPELINE_FILE, shallow=False)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["_class_name"] == ["pipeline_interpretable_ddpm", "InterpretableDDPMPipeline"]
    assert index["parser"] == ["transformers", "SegformerForSemanticSegmentation"]
    with safe_open(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert not [n for _, _, files in os.walk(folder) for n in files if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]


def test_default_model_generates_and_parses_offline(monkeypatch):
    from diffusers import DiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = DiffusionPipeline.from_pretrained(
        os.path.join(ROOT, "models", SHIPPED[0]), custom_pipeline=PIPELINE_FILE, trust_remote_code=True
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.parser is not None
    out = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and out.latents.shape == (1, 3, 64, 64)
    mask = pipe.concept_mask(out.images * 2 - 1, "eyes")
    assert mask.shape == (1, 1, 64, 64) and 10 < mask.sum() < 64 * 64 / 4


def test_shipped_baseline_is_the_lambda_zero_twin_of_the_interpretable_model():
    """The release comparison is only fair between twins: the same start, data, steps, seed and settings, with the
    dummy-player loss as the only difference (its lambda schedule and game flags)."""
    records = {}
    for name in SHIPPED:
        training = os.path.join(ROOT, "models", name, "training")
        records[name] = (
            json.load(open(os.path.join(training, "training_config.json"))),
            json.load(open(os.path.join(training, "train_summary.json"))),
        )
    (interp_cfg, interp_summary), (base_cfg, base_summary) = records[SHIPPED[0]], records[SHIPPED[1]]
    assert_lambda_zero_twins(interp_cfg, base_cfg)
    assert interp_summary["train_steps"] == base_summary["train_steps"] > 0

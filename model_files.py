# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Saved models on disk: the one pipeline loader (app, evaluation, parser training, scripts) and the one lister of
training checkpoints (`checkpoint-STEP/` folders of train_interpretable.py and train_parser.py)."""

from __future__ import annotations

import json
import os
from typing import List, Optional

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
PIPELINE_FILE = os.path.join(ROOT, "pipeline_interpretable_ddpm.py")
# what the app and the evaluation call on a pipeline; a folder without them is not an InterpretableDDPMPipeline
INTERPRETABLE_METHODS = ("swap_regions", "resample_region", "invert", "attribute", "concept_mask")


def resolve_model_path(name_or_path: str) -> str:
    """A local folder (absolute, relative to the working directory or to the repository root), else the name as
    given (a Hub id)."""
    for candidate in (name_or_path, os.path.join(ROOT, name_or_path)):
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return name_or_path


def looks_like_local_path(name: str) -> bool:
    """True unless `name` has the `owner/name` shape of a Hub id."""
    return name.startswith((".", "/", "~")) or name.startswith("models/") or name.count("/") != 1


def check_pipeline_path(path: str) -> None:
    """Raises FileNotFoundError unless `path` is a folder written by `save_pretrained`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Pipeline path '{path}' does not exist (give a folder written by save_pretrained).")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Pipeline path '{path}' is a file; give the folder written by save_pretrained.")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"'{path}' has no model_index.json; it is not a saved diffusers pipeline (see save_pretrained)."
        )


def load_pipeline(name_or_path: str, device: str = "cpu", dtype: Optional[torch.dtype] = torch.float32):
    """Loads an `InterpretableDDPMPipeline` from a folder or Hub id with the repository's pipeline file, on `device`
    in `dtype` (None: as loaded), progress bars off.

    A plain diffusers DDPM/DDIM pipeline folder (e.g. a baseline saved as `DDPMPipeline`) is wrapped into the
    interpretable pipeline with a DDIM scheduler made from its scheduler config, so it can be edited the same way.
    Raises FileNotFoundError for a missing local folder, OSError for a Hub id that cannot be fetched and ValueError
    for a pipeline of another class."""
    from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel

    path = resolve_model_path(name_or_path)
    if os.path.exists(path) or looks_like_local_path(path):
        check_pipeline_path(path)
        with open(os.path.join(path, "model_index.json")) as f:
            class_name = json.load(f).get("_class_name")
    else:
        class_name = None
    if class_name in ("DDPMPipeline", "DDIMPipeline"):
        import pipeline_interpretable_ddpm

        unet = UNet2DModel.from_pretrained(path, subfolder="unet")
        # DDIM with eta = 0 (generation deterministic in x_T) and the saved schedule's own x_0 clipping (on by default
        # for DDPM schedulers), as the interpretable pipelines clip: the baseline is sampled the same way. Inversion
        # (real images) regenerates unclipped in every pipeline (see pipe.invert).
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler", thresholding=False)
        pipe = pipeline_interpretable_ddpm.InterpretableDDPMPipeline(unet=unet, scheduler=scheduler)
    else:
        try:
            pipe = DiffusionPipeline.from_pretrained(path, custom_pipeline=PIPELINE_FILE, trust_remote_code=True)
        except OSError as err:
            raise OSError(
                f"Could not load the pipeline '{name_or_path}': {err}. Without internet only local folders work."
            ) from err
    missing = [m for m in INTERPRETABLE_METHODS if not hasattr(pipe, m)]
    if missing:
        raise ValueError(
            f"'{name_or_path}' loaded as {type(pipe).__name__}, which has no `{missing[0]}`; an "
            "InterpretableDDPMPipeline is needed (see pipeline_interpretable_ddpm.py)."
        )
    if dtype is None:
        pipe.to(device)
    else:
        pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def list_checkpoints(output_dir: str) -> List[str]:
    """Names of the `checkpoint-STEP` folders in `output_dir`, oldest step first ([] when there is none)."""
    if not os.path.isdir(output_dir):
        return []
    ckpts = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[1].isdigit()]
    return sorted(ckpts, key=lambda d: int(d.split("-")[1]))


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """Path of the `checkpoint-STEP` folder with the highest step in `output_dir`, or None."""
    ckpts = list_checkpoints(output_dir)
    return os.path.join(output_dir, ckpts[-1]) if ckpts else None

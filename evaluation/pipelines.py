# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Loading the pipelines to evaluate and giving every pipeline the same concept masks."""

from __future__ import annotations

import os
from typing import Dict

import torch

from model_files import load_pipeline


def load_checkpoint_or_pipeline(path: str, shell: str, device: str = "cpu"):
    """A saved pipeline folder, or a training checkpoint (`checkpoint-N/` with `unet_ema/` or `unet/`) whose weights
    go into the pipeline `shell` (same UNet architecture; its scheduler, parser and templates are used). A pipeline
    saved without a parser (a training run's output folder) gets the shell's parser, so both are scored with the
    same masks. Returned in fp32 on `device`, progress bars off."""
    from diffusers import UNet2DModel

    if not os.path.isdir(path):
        raise FileNotFoundError(f"'{path}' is not a folder (expected a pipeline folder or a training checkpoint).")
    if os.path.isfile(os.path.join(path, "model_index.json")):
        pipe = load_pipeline(path, device)
        if getattr(pipe, "parser", None) is None:
            pipe.parser = load_pipeline(shell, device).parser
    else:
        weights = next(
            (os.path.join(path, d) for d in ("unet_ema", "unet") if os.path.isdir(os.path.join(path, d))), None
        )
        if weights is None:
            raise FileNotFoundError(f"'{path}' holds neither model_index.json nor unet_ema/ or unet/ weights.")
        pipe = load_pipeline(shell, device)
        pipe.unet.load_state_dict(UNet2DModel.from_pretrained(weights).state_dict())
    pipe.unet.float()
    return pipe


def has_concept_masks(pipe) -> bool:
    return getattr(pipe, "parser", None) is not None or bool(pipe.config.concept_templates)


def lend_concept_masks(pipes: Dict[str, object]) -> Dict[str, str]:
    """Pipelines without a parser or concept templates (e.g. a plain DDPM baseline) borrow the templates of the
    first pipeline that has them, so every pipeline is scored on the same regions. Returns `{borrower: lender}`."""
    lenders = [n for n, p in pipes.items() if has_concept_masks(p)]
    if not lenders:
        raise ValueError(
            "No pipeline has a parser or concept templates, so there are no concept masks to edit and score; "
            "save the pipeline with concept_templates (see compute_concept_templates)."
        )
    lender = pipes[lenders[0]]
    borrowed = {}
    for name, pipe in pipes.items():
        if has_concept_masks(pipe):
            continue
        if pipe.resolution != lender.resolution:
            raise ValueError(f"'{name}' has no concept masks and a different resolution from '{lenders[0]}'.")
        pipe.register_to_config(
            concepts=lender.config.concepts, concept_templates=dict(lender.config.concept_templates)
        )
        borrowed[name] = lenders[0]
    return borrowed


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` in [0, 1] -> uint8, as saving to PNG would quantise it."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()

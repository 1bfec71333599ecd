# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Locality of region edits on generated faces: swaps and resamples of seeded pairs, scored outside vs inside."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import pipeline_interpretable_ddpm as pid  # the metric math
from evaluation.pipelines import to_uint8
from evaluation.stats import mean_ci, seeded_latents

COLOR_SPACES = ("rgb", "lab")


NORMALIZATIONS = ("paper", "area")


EDITS = ("swap", "resample")


# the peer: the same edits with blend=True (RePaint / blended-diffusion style masked DDIM, `denoise_blended`)
BLEND_SUFFIX = "_blend"


BLEND_MODES = {"both": (False, True), "on": (True,), "off": (False,)}


ALL_EDITS = EDITS + tuple(e + BLEND_SUFFIX for e in EDITS)


SEAM_WIDTH = 2


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


class _EditRecords:
    """Per-pair values, pair ids, skipped counts, figure examples and edited images of every (edit, concept)."""

    def __init__(self, edits: Sequence[str], concepts: Sequence[str]):
        self.per_pair = {
            e: {c: {f"{cs}/{n}": [] for cs in COLOR_SPACES for n in NORMALIZATIONS} for c in concepts} for e in edits
        }
        for e in edits:
            for c in concepts:
                self.per_pair[e][c]["seam"] = []
                if e.startswith("swap"):
                    self.per_pair[e][c]["mse_ref"] = []
        self.edited_uint8 = {e: [] for e in edits}
        self.pair_ids = {e: {c: [] for c in concepts} for e in edits}  # the pair index of each value (paired ratios)
        self.skipped = {e: {c: 0 for c in concepts} for e in edits}
        self.examples = {e: {c: [] for c in concepts} for e in edits}

    def nonempty(self, edit: str, concept: str, masks: torch.Tensor) -> List[int]:
        """The batch positions whose mask is not empty; the others are counted as skipped (nothing to edit)."""
        keep = (masks.flatten(1).sum(1) > 0).cpu()
        self.skipped[edit][concept] += int((~keep).sum())
        return keep.nonzero()[:, 0].tolist()

    def add(
        self,
        edit: str,
        concept: str,
        pair_ids: List[int],
        values: Dict[str, np.ndarray],
        edited_uint8: List[torch.Tensor],
        make_example: Callable[[int], dict],
        num_examples: int,
    ) -> None:
        """Records one batch of an edit: a value per pair under each key, the edited images (for the realism of the
        edits) and, while fewer than `num_examples` are kept, figure examples `make_example(j)` of its j-th pair."""
        for key, v in values.items():
            self.per_pair[edit][concept][key].extend(v.tolist())
        self.edited_uint8[edit].extend(edited_uint8)
        self.pair_ids[edit][concept].extend(pair_ids)
        examples = self.examples[edit][concept]
        for j in range(min(len(pair_ids), num_examples - len(examples))):
            examples.append(make_example(j))


@dataclasses.dataclass
class _PairBatch:
    """One batch of seeded pairs: their indices, x_T of A and B (harmonised when asked) and the generated images."""

    idx: List[int]
    lat_a: torch.Tensor
    lat_b: torch.Tensor
    img_a: torch.Tensor
    img_b: torch.Tensor


@dataclasses.dataclass
class _EditSettings:
    """What every edit of one locality run shares."""

    num_inference_steps: int
    num_examples: int
    seed: int
    harmonize_noise: bool


def _swap_batch(
    pipe, rec: _EditRecords, opts: _EditSettings, edit: str, concept: str, pairs: _PairBatch, swap_mask, blended
) -> None:
    """Swaps `concept` between A and B for the pairs whose mask is not empty and records the scores of both edits."""
    k = rec.nonempty(edit, concept, swap_mask)
    if not k:
        return
    out = pipe.swap_regions(
        pairs.lat_a[k],
        pairs.lat_b[k],
        swap_mask[k],
        num_inference_steps=opts.num_inference_steps,
        output_type="pt",
        blend=blended,
        harmonize_noise=opts.harmonize_noise,
    )
    img_a, img_b = pairs.img_a[k], pairs.img_b[k]
    # both edited images are scored with the swapped mask (each against its donor for MSE_ref); a pair's value is
    # the mean of its two
    score_a = _score_edit(img_a, out.images_a, out.mask)
    score_b = _score_edit(img_b, out.images_b, out.mask)
    values = {key: (score_a[key] + score_b[key]) / 2 for key in score_a}
    ref_a = donor_distance_ratio(img_a, out.images_a, img_b, out.mask)
    ref_b = donor_distance_ratio(img_b, out.images_b, img_a, out.mask)
    values["mse_ref"] = (ref_a + ref_b) / 2
    values["seam"] = (seam_score(img_a, out.images_a, out.mask) + seam_score(img_b, out.images_b, out.mask)) / 2
    rec.add(
        edit,
        concept,
        [pairs.idx[j] for j in k],
        values,
        [to_uint8(out.images_a), to_uint8(out.images_b)],
        lambda j: dict(
            a=img_a[j].cpu(),
            b=img_b[j].cpu(),
            edited_a=out.images_a[j].cpu(),
            edited_b=out.images_b[j].cpu(),
            mask=out.mask[j].cpu(),
        ),
        opts.num_examples,
    )


def _resample_batch(
    pipe, rec: _EditRecords, opts: _EditSettings, edit: str, concept: str, pairs: _PairBatch, mask_a, blended
) -> None:
    """Redraws x_T inside A's `concept` mask (new noise seeded per pair and concept) and records the scores."""
    k = rec.nonempty(edit, concept, mask_a)
    if not k:
        return
    # new noise per (pair, concept): stream index interleaves the concepts of the pipeline
    concept_index = {c: i for i, c in enumerate(pipe.concepts)}
    new_idx = [pairs.idx[j] * len(concept_index) + concept_index[concept] for j in k]
    new = seeded_latents(pipe.latent_shape, opts.seed, "resample", new_idx).to(pipe._execution_device, pipe.unet.dtype)
    out = pipe.resample_region(
        pairs.lat_a[k],
        mask_a[k],
        new_latents=new,
        num_inference_steps=opts.num_inference_steps,
        output_type="pt",
        blend=blended,
        harmonize_noise=opts.harmonize_noise,
    )
    img_a = pairs.img_a[k]
    values = _score_edit(img_a, out.images, out.mask)
    values["seam"] = seam_score(img_a, out.images, out.mask)
    rec.add(
        edit,
        concept,
        [pairs.idx[j] for j in k],
        values,
        [to_uint8(out.images)],
        lambda j: dict(a=img_a[j].cpu(), edited_a=out.images[j].cpu(), mask=out.mask[j].cpu()),
        opts.num_examples,
    )


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
    rec = _EditRecords(edits, concepts)
    if harmonize_noise is None:
        harmonize_noise = pipe._harmonizes(None)
    opts = _EditSettings(num_inference_steps, num_examples, seed, bool(harmonize_noise))
    start_time = time.perf_counter()
    for start in tqdm(range(0, num_pairs, batch_size), desc=desc, unit="batch"):
        idx = list(range(start, min(num_pairs, start + batch_size)))
        b = len(idx)
        lat_a = seeded_latents(pipe.latent_shape, seed, "pair_a", idx).to(device, pipe.unet.dtype)
        lat_b = seeded_latents(pipe.latent_shape, seed, "pair_b", idx).to(device, pipe.unet.dtype)
        out0 = pipe(
            latents=torch.cat([lat_a, lat_b]),
            num_inference_steps=num_inference_steps,
            output_type="pt",
            harmonize_noise=opts.harmonize_noise,
        )
        originals = out0.images
        lat_a, lat_b = out0.latents[:b], out0.latents[b:]  # harmonised when asked
        pairs = _PairBatch(idx, lat_a, lat_b, originals[:b], originals[b:])
        for concept in concepts:
            # masks of the ORIGINAL images; passing the images (model space) avoids regenerating them from x_T
            masks = pipe.concept_mask(originals * 2 - 1, concept, dilation=mask_dilation, is_latents=False)
            mask_a, mask_b = masks[:b], masks[b:]
            swap_mask = torch.maximum(mask_a, mask_b) if swap_mask_from == "union" else mask_a
            for blended in blend:
                swap, resample = (e + (BLEND_SUFFIX if blended else "") for e in EDITS)
                _swap_batch(pipe, rec, opts, swap, concept, pairs, swap_mask, blended)
                _resample_batch(pipe, rec, opts, resample, concept, pairs, mask_a, blended)
    seconds = time.perf_counter() - start_time
    result: Dict[str, object] = {}
    for e in edits:
        result[e] = {}
        for c in concepts:
            stats = {key: mean_ci(vals, seed, rec.pair_ids[e][c]) for key, vals in rec.per_pair[e][c].items()}
            stats["num_skipped_empty_mask"] = rec.skipped[e][c]
            result[e][c] = stats
    result["seconds"] = seconds
    result["seconds_per_pair"] = seconds / max(num_pairs, 1)
    result["per_pair_values"] = rec.per_pair
    result["examples"] = rec.examples
    result["edited_uint8"] = {
        e: torch.cat(v) if v else torch.zeros(0, 3, *pipe.resolution, dtype=torch.uint8)
        for e, v in rec.edited_uint8.items()
    }
    return result

# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""The evaluation stages on generated faces besides locality: realism (FID, KID, precision/recall, C2ST,
off-colour), per-step and end-to-end Shapley attribution, emergence of the concepts over the sampling steps."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.metrics import (
    PR_NEIGHBOURS,
    fid_from_features,
    kid_from_features,
    off_colour_rate,
    part_colour_distances,
    precision_recall,
)
from evaluation.pipelines import to_uint8
from evaluation.realism import c2st_or_reason
from evaluation.stats import mean_ci, seeded_latents


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
    off_colour = off_colour_rate(np.concatenate(colour), colour_reference["thresholds"]) if parse else None
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


def attribution_timesteps(pipe, num_inference_steps: int, attribution_steps: int) -> List[int]:
    """`attribution_steps` timesteps spread evenly over the sampling schedule, first (noisiest) and last included."""
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


@dataclasses.dataclass
class _PlayedGames:
    """The Shapley games of the attributed samples, concatenated over the batches along the sample dimension (None
    when every sample was skipped): leakage, region leakage and |phi| as float64 arrays."""

    leakage: Optional[np.ndarray]
    region_leakage: Optional[np.ndarray]
    abs_phi: Optional[np.ndarray]
    sample_ids: List[int]
    num_skipped: int
    seconds: float

    def attribution_share(self) -> np.ndarray:
        """|phi| normalised per row: row k says where output region k's attribution comes from."""
        return self.abs_phi / np.clip(self.abs_phi.sum(-1, keepdims=True), 1e-20, None)


def _play_games(
    pipe,
    num_samples: int,
    samples_per_call: int,
    seed: int,
    num_inference_steps: int,
    harmonize_noise,
    play: Callable,
    sample_dim: int,
    desc: str,
    unit: str,
) -> _PlayedGames:
    """Plays `play(latents, regions, baseline)` (an attribution method of the pipeline) on the seeded attribution
    samples (`attribution_inputs`), `samples_per_call` at a time; samples with an empty region are skipped and
    counted. `sample_dim`: the dimension of the samples in `play`'s outputs."""
    leak, region_leak, abs_phi, sample_ids = [], [], [], []
    skipped = 0
    start_time = time.perf_counter()
    for start in tqdm(range(0, num_samples, samples_per_call), desc=desc, unit=unit):
        idx = list(range(start, min(num_samples, start + samples_per_call)))
        latents, base, regions, k = attribution_inputs(pipe, seed, idx, num_inference_steps, harmonize_noise)
        skipped += len(idx) - len(k)
        if not k:
            continue
        out = play(latents[k], regions[k], base[k])
        leak.append(out.leakage)
        region_leak.append(out.region_leakage)
        abs_phi.append(out.abs_phi)
        sample_ids.extend(idx[j] for j in k)
    seconds = time.perf_counter() - start_time

    def cat(parts):
        return torch.cat(parts, sample_dim).double().numpy() if parts else None

    return _PlayedGames(cat(leak), cat(region_leak), cat(abs_phi), sample_ids, skipped, seconds)


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

    def play(latents, regions, base):
        return pipe.attribute(
            latents, masks=regions, timesteps=timesteps, num_inference_steps=num_inference_steps, baseline=base
        )

    # outputs (T, b, ...): the samples along dimension 1
    games = _play_games(
        pipe, num_samples, batch_size, seed, num_inference_steps, harmonize_noise, play, 1, desc, unit="batch"
    )
    names, ids = pipe.region_names, games.sample_ids
    if games.leakage is None:
        return {
            "num_samples": 0,
            "num_skipped_empty_region": games.num_skipped,
            "timesteps": timesteps,
            "region_names": names,
        }
    leak, region_leak, share = games.leakage, games.region_leakage, games.attribution_share()
    return {
        "leakage": mean_ci(leak.mean(0), seed, ids),
        "leakage_curve": [dict(t=int(t), **mean_ci(leak[i], seed, ids)) for i, t in enumerate(timesteps)],
        "region_leakage": {n: mean_ci(region_leak[:, :, j].mean(0), seed, ids) for j, n in enumerate(names)},
        "region_leakage_curve": {
            n: [float(region_leak[i, :, j].mean()) for i in range(len(timesteps))] for j, n in enumerate(names)
        },
        "attribution_share": [share[i].mean(0).tolist() for i in range(len(timesteps))],
        "timesteps": [int(t) for t in timesteps],
        "region_names": names,
        "num_samples": int(leak.shape[1]),
        "num_skipped_empty_region": games.num_skipped,
        "baseline": "same-t x_t of another seeded x_T (other_sample)",
        "seconds": games.seconds,
        "seconds_per_sample": games.seconds / max(num_samples, 1),
    }


def evaluate_end_to_end(
    pipe, num_samples, seed, num_inference_steps=50, batch_size=16, desc="end-to-end attribution", harmonize_noise=None
) -> Dict[str, object]:
    """Exact end-to-end Shapley attribution (`pipe.attribute_end_to_end`: players the regions of x_T, values the regions
    of the final image, all 2^K full sampling runs) of the same seeded samples and baselines as `evaluate_attribution`.

    Returns:
        mean leakage with CI (per-sample values kept for the paired ratio to a baseline), per-region leakage, the mean
        row-normalised |phi| matrix, seconds per image.
    """
    # `batch_size` counts full sampling runs; one sample's game is 16 of them with the default four regions (2^K)
    per_call = max(1, batch_size // 16) if batch_size >= 16 else 1

    def play(latents, regions, base):
        return pipe.attribute_end_to_end(
            latents, masks=regions, num_inference_steps=num_inference_steps, baseline=base, max_batch_size=batch_size
        )

    # outputs (b, ...): the samples along dimension 0
    games = _play_games(
        pipe, num_samples, per_call, seed, num_inference_steps, harmonize_noise, play, 0, desc, unit="sample"
    )
    names, ids = pipe.region_names, games.sample_ids
    if games.leakage is None:
        return {"num_samples": 0, "num_skipped_empty_region": games.num_skipped, "region_names": names}
    leak, region_leak, share = games.leakage, games.region_leakage, games.attribution_share()
    return {
        "leakage": mean_ci(leak, seed, ids),
        "region_leakage": {n: mean_ci(region_leak[:, j], seed, ids) for j, n in enumerate(names)},
        "attribution_share": share.mean(0).tolist(),
        "region_names": names,
        "num_samples": int(leak.shape[0]),
        "num_skipped_empty_region": games.num_skipped,
        "num_full_runs_per_sample": 2 ** len(names),
        "baseline": "another seeded x_T (other_sample), the same as the per-step attribution's",
        "seconds": games.seconds,
        "seconds_per_sample": games.seconds / max(num_samples, 1),
    }


def emergence_step_indices(num_inference_steps: int, num_points: int) -> List[int]:
    """`num_points` sampling step indices spread evenly over [0, num_inference_steps - 1], 0 included."""
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

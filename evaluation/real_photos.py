# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Real photos, edited the way a user edits them: DDIM inversion, then swaps and resamples of their parts."""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

import pipeline_interpretable_ddpm as pid
from evaluation.locality import _score_edit
from evaluation.stats import mean_ci, seeded_latents


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


@dataclasses.dataclass
class _RealEdits:
    """The edits of one batch of photo pairs: per-photo reconstruction PSNR (A's, then B's), per-pair scores
    `{edit: {concept: {key: list}}}` (edits "swap", "resample", "swap_vs_input"), donor ratios `{concept: list}`,
    figure examples `{concept: [dict]}`, the pipeline's warning (None: none) and the pair index of each score
    `{edit: {concept: list}}` (edits "swap", "resample")."""

    psnr: List[float]
    scores: Dict[str, Dict[str, Dict[str, list]]]
    donor: Dict[str, list]
    examples: Dict[str, List[dict]]
    warning: Optional[str]
    pair_ids: Dict[str, Dict[str, List[int]]]


def _real_edits(pipe, inputs, labels, idx, concepts, strength, num_inference_steps, seed) -> _RealEdits:
    """Inverts pairs `idx` at `strength`, swaps and resamples every concept (masks: the faces' own part maps) and
    scores the edits."""
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
    return _RealEdits(psnr, scores, donor, examples, warning, ids)


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
        batch = _real_edits(pipe, inputs, labels, idx, concepts, strength, num_inference_steps, seed)
        psnr.extend(batch.psnr)
        psnr_ids.extend([2 * i for i in idx] + [2 * i + 1 for i in idx])
        for e in batch.pair_ids:
            for c in batch.pair_ids[e]:
                pair_ids[e][c].extend(batch.pair_ids[e][c])
        warning = warning or batch.warning
        for e in batch.scores:
            for c in batch.scores[e]:
                for key, v in batch.scores[e][c].items():
                    per_pair[e][c].setdefault(key, []).extend(v)
        for c in concepts:
            donor[c].extend(batch.donor[c])
            examples[c].extend(batch.examples[c][: max(0, num_examples - len(examples[c]))])
    seconds = time.perf_counter() - start_time
    sweep = []
    for s in sweep_strengths:
        n = min(num_sweep_pairs, num_pairs)
        if n < 1:
            break
        point = _real_edits(pipe, inputs, labels, list(range(n)), concepts, float(s), num_inference_steps, seed)
        swap, resample = point.scores["swap"], point.scores["resample"]
        sweep.append(
            {
                "strength": float(s),
                "num_pairs": n,
                "reconstruction_psnr": float(np.mean(point.psnr)),
                "warning": point.warning,
                "swap": {c: float(np.mean(swap[c]["rgb/paper"])) for c in concepts if swap[c]},
                "resample": {c: float(np.mean(resample[c]["rgb/paper"])) for c in concepts if resample[c]},
                "donor": {c: float(np.mean(point.donor[c])) for c in concepts if point.donor[c]},
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

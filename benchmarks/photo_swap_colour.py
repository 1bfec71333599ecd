# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Harmonised photo swaps against plain ones, on real photos: off-colour rate, MSE_ref and locality.

    python -m benchmarks.photo_swap_colour                      # both shipped models, 25 pairs, strength 0.5
    python -m benchmarks.photo_swap_colour --num_pairs 5 --models models/interpretable-ddpm-faces64

The pairs are evaluate.py's real-photo pairs (held-out test faces 2i and 2i+1 of `utkface64` with a part map,
`evaluation.real_photos._real_pairs`), inverted at `--strength` with `--steps` DDIM steps; each concept is swapped with the union of
both faces' own part maps, once plain (`swap_regions(inv_a, inv_b, mask)`) and once harmonised
(`harmonize_photo=True`, or a share of its shift, `--amounts`). Both results of every swap (A with B's part, B with A's) are scored:

- off-colour rate: share of swapped photos with a part whose mean CIELAB colour lies further from the skin's than on
  99 % of the real test faces (`evaluate.part_colour_distances` / `off_colour_thresholds` / `off_colour_rate`, the
  evaluation's measure; parts and skin found by the pipeline's parser on each edited photo);
- MSE_ref (`evaluate.donor_distance_ratio`): inside the region, MSE(edited, donor photo) / MSE(original, donor);
- locality (RGB, paper normalisation, `evaluation.locality._score_edit`) against the unedited reconstruction.

Prints one table per model and the ratios harmonised / plain; `--json PATH` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import evaluate as ev
import pipeline_interpretable_ddpm as pid
from evaluation.locality import _score_edit
from evaluation.real_photos import _inversion_rows, _real_pairs
from face_data import default_data_dir, load_faces
from model_files import ROOT, load_pipeline

DEFAULT_MODELS = [
    os.path.join(ROOT, "models", "interpretable-ddpm-faces64"),
    os.path.join(ROOT, "models", "ddpm-faces64-baseline"),
]


def measure(
    pipe, faces, num_pairs: int, strength: float, steps: int, batch_size: int, amounts=(1.0,), thresholds=None
) -> dict:
    inputs, labels, num_pairs = _real_pairs(pipe, faces, num_pairs)
    concepts = {c: list(ids) for c, ids in pipe.concepts.items()}
    if thresholds is None:
        thresholds = ev.real_colour_reference(pipe, faces, concepts)["thresholds"]
    variants = {"plain": 0.0, **{f"harmonised {a:g}": float(a) for a in amounts}}
    dists = {"reconstruction": [], **{v: [] for v in variants}}
    scores = {v: {c: {"locality": [], "mse_ref": []} for c in concepts} for v in variants}
    for start in range(0, num_pairs, batch_size):
        idx = list(range(start, min(num_pairs, start + batch_size)))
        b = len(idx)
        rows = [2 * i for i in idx] + [2 * i + 1 for i in idx]
        x = inputs[rows]
        inv = pipe.invert(x, num_inference_steps=steps, strength=strength)
        recon = pipe(latents=inv, num_inference_steps=steps, output_type="pt").images.cpu()
        dists["reconstruction"].append(
            ev.part_colour_distances(ev.to_uint8(recon), pipe.parse(recon * 2 - 1), concepts)
        )
        inv_a, inv_b = _inversion_rows(inv, list(range(b))), _inversion_rows(inv, list(range(b, 2 * b)))
        for concept, ids in concepts.items():
            masks = pid.to_mask_tensor(
                torch.isin(labels[rows], torch.tensor(ids)).float()[:, None], 2 * b, pipe.resolution
            )
            mask = torch.maximum(masks[:b], masks[b:])
            for variant, flag in variants.items():
                out = pipe.swap_regions(
                    inv_a, inv_b, mask, num_inference_steps=steps, output_type="pt", harmonize_photo=flag
                )
                edited = torch.cat([out.images_a, out.images_b]).cpu()
                m = torch.cat([out.mask, out.mask]).cpu()
                donors = torch.cat([x[b:], x[:b]])
                dists[variant].append(
                    ev.part_colour_distances(ev.to_uint8(edited), pipe.parse(edited * 2 - 1), concepts)
                )
                loc = _score_edit(recon, edited, m)["rgb/paper"]
                scores[variant][concept]["locality"].extend(loc.tolist())
                scores[variant][concept]["mse_ref"].extend(ev.donor_distance_ratio(x, edited, donors, m).tolist())
    result = {"num_pairs": num_pairs, "strength": strength, "steps": steps, "thresholds": thresholds}
    result["variants"] = list(variants)
    for variant in dists:
        rate = ev.off_colour_rate(np.concatenate(dists[variant]), thresholds)
        result[variant] = {
            "off_colour": rate["rate"]["mean"],
            "off_colour_per_part": rate["per_part"],
            "images": rate["num_images"],
        }
        if variant in scores:
            for c in concepts:
                result[variant][c] = {k: float(np.mean(v)) for k, v in scores[variant][c].items()}
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--data_dir", default=default_data_dir())
    p.add_argument("--num_pairs", type=int, default=25)
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch_size", type=int, default=25)
    p.add_argument("--amounts", type=float, nargs="+", default=[1.0], help="Shares of the harmonising shift.")
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--json", default=None, help="Write the numbers here.")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.num_threads)
    faces = load_faces(args.data_dir, "test")
    results = {}
    for model in args.models:
        start = time.perf_counter()
        pipe = load_pipeline(model)
        with torch.no_grad():
            res = measure(pipe, faces, args.num_pairs, args.strength, args.steps, args.batch_size, args.amounts)
        res["seconds"] = round(time.perf_counter() - start, 1)
        results[os.path.basename(model.rstrip("/"))] = res
        print(
            f"\n{model}: {res['num_pairs']} pairs, strength {args.strength:g}, {args.steps} steps ({res['seconds']} s)"
        )
        print(f"off-colour rate of the unedited reconstructions: {res['reconstruction']['off_colour']:.3f}")
        print("| swap | concept | off-colour rate (all concepts) | locality | ratio to plain | MSE_ref |")
        print("|---|---|---|---|---|---|")
        for v in res["variants"]:
            for c in pipe.concepts:
                loc, plain = res[v][c]["locality"], res["plain"][c]["locality"]
                print(
                    f"| {v} | {c} | {res[v]['off_colour']:.3f} ({res[v]['images']} photos) | {loc:.3f} | "
                    f"{loc / plain:.2f} | {res[v][c]['mse_ref']:.3f} |"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(parse_args())

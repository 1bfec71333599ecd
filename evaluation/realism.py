# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Realism of generated faces against held-out real faces: C2ST accuracy, precision/recall, KID, FID, off-colour.

A quick standalone command (the full evaluation is `evaluate.py`, whose FID stage reports the same measures):

    python -m evaluation.realism models/interpretable-ddpm-faces64 models/ddpm-faces64-baseline \
        --num_samples 200 --num_inference_steps 25 --seed 123 --num_threads 1 --out outputs/realism.json

Every pipeline draws its samples from the same seeded x_T (element i of the seed's "fid" stream, as in
`evaluate.py`), so the models are compared on the same starting noise. A path may also be a `.npy` file of uint8
samples `(N, 3, H, W)` (as written by `--save_samples`): its C2ST and metrics are computed without generating.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Dict, Optional

import numpy as np
import torch

from evaluation.c2st import C2ST_METHOD, C2ST_MIN_PER_CLASS, classifier_two_sample_test
from evaluation.metrics import PR_METHOD, precision_recall
from face_data import default_data_dir, load_faces


def real_faces_uint8(data_dir: str, split: str, resolution=None, limit: Optional[int] = None) -> torch.Tensor:
    """The real faces of one split (the first `limit`, default all) as uint8 `(N, 3, H, W)`, resized (bilinear, antialiased) to `resolution` `(H, W)`
    when given and different (the C2ST must not tell the sets apart by their size)."""
    faces = load_faces(data_dir, split, limit=limit)
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous()
    if resolution is not None and tuple(images.shape[-2:]) != tuple(resolution):
        resized = torch.nn.functional.interpolate(
            images.float(), size=tuple(resolution), mode="bilinear", antialias=True, align_corners=False
        )
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images


def c2st_or_reason(real_uint8: torch.Tensor, fake_uint8: torch.Tensor, seed: int) -> Dict[str, object]:
    """`classifier_two_sample_test` without the per-image scores, or `{"skipped": reason}` for too few images."""
    n = min(len(real_uint8), len(fake_uint8))
    if n < C2ST_MIN_PER_CLASS:
        return {"skipped": f"{n} images per class, the C2ST needs at least {C2ST_MIN_PER_CLASS}"}
    return classifier_two_sample_test(real_uint8, fake_uint8, seed=seed)


def training_layouts(data_dir: str, num: int, seed: int) -> torch.Tensor:
    """The part label maps `(num, H, W)` of `num` training faces of `data_dir`, drawn by a permutation seeded by `seed`
    among the faces with a part map: the layouts a layout-conditioned model draws its samples with."""
    from face_data import load_faces

    faces = load_faces(data_dir, "train")
    labels = torch.from_numpy(faces.labels[faces.has_mask].astype(np.int64))
    if not len(labels):
        raise ValueError(f"No training face in '{data_dir}' has a part map to draw layouts from.")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return labels[order[torch.arange(num) % len(labels)]]


def generate_samples(
    pipe, num_samples: int, seed: int, num_inference_steps: int, batch_size: int, harmonize_noise, layouts=None
):
    """`num_samples` uint8 samples `(N, 3, H, W)` from the seeded x_T of stream "fid" (as `evaluate.py`'s FID); a
    layout-conditioned pipeline draws sample i with `layouts[i]` (label maps), or with its templates when `None`."""
    from evaluation.pipelines import to_uint8
    from evaluation.stats import seeded_latents

    out = []
    for start in range(0, num_samples, batch_size):
        idx = list(range(start, min(num_samples, start + batch_size)))
        latents = seeded_latents(pipe.latent_shape, seed, "fid", idx).to(pipe._execution_device, pipe.unet.dtype)
        layout = layouts[idx] if layouts is not None and pipe.num_layout_channels else None
        images = pipe(
            latents=latents,
            num_inference_steps=num_inference_steps,
            output_type="pt",
            harmonize_noise=harmonize_noise,
            layout=layout,
        ).images
        out.append(to_uint8(images))
        print(f"  {min(num_samples, start + batch_size)}/{num_samples} samples", file=sys.stderr, flush=True)
    return torch.cat(out)


def load_samples(path: str) -> torch.Tensor:
    """uint8 samples `(N, 3, H, W)` from a `.npy` file (clear error otherwise)."""
    samples = np.load(path)
    if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(f"{path} must hold uint8 samples (N, 3, H, W), holds {samples.dtype} {samples.shape}.")
    return torch.from_numpy(samples)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.realism",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("models", nargs="+", help="pipeline folders (save_pretrained), or .npy files of uint8 samples")
    p.add_argument("--num_samples", type=int, default=200, help="samples generated per pipeline")
    p.add_argument(
        "--num_inference_steps", type=int, default=None, help="sampling steps; default: each pipeline's own setting"
    )
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="the sampler, 0 (DDIM) to 1 (DDPM-like, step noise drawn from x_T); default: each pipeline's own setting",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the x_T (same for every pipeline) and the C2ST")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--harmonize_noise",
        choices=("pipeline", "on", "off"),
        default="pipeline",
        help="harmonised noise for the seeded x_T ('pipeline': each pipeline's own setting)",
    )
    p.add_argument("--data_dir", default=default_data_dir(), help="face data whose --split holds the real faces")
    p.add_argument("--split", default="test", help="split of --data_dir with the held-out real faces")
    p.add_argument(
        "--layouts_from",
        default=None,
        help="face data whose training part maps give layout-conditioned pipelines their layouts (one seeded draw per "
        "sample); without it they draw every sample with the concept templates. Plain pipelines take none.",
    )
    p.add_argument("--no_inception", action="store_true", help="C2ST only: skip KID, FID and precision/recall")
    p.add_argument("--fid_cache_dir", default=None, help="cache of the real faces' Inception features ('' disables)")
    p.add_argument("--save_samples", default=None, help="folder for each model's samples (.npy) and grids (.png)")
    p.add_argument("--out", default=None, help="JSON file for the results (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    steps_ok = args.num_inference_steps is None or args.num_inference_steps >= 1
    if args.num_samples < 2 or not steps_ok or args.batch_size < 1 or args.seed < 0:
        p.error("--num_samples must be >= 2, --num_inference_steps and --batch_size >= 1, --seed >= 0.")
    if args.eta is not None and not 0 <= args.eta <= 1:
        p.error(f"--eta must be in [0, 1] (0: DDIM, 1: DDPM-like), got {args.eta}.")
    if args.num_threads is not None and args.num_threads < 1:
        p.error(f"--num_threads must be >= 1, got {args.num_threads}.")
    if args.out and os.path.exists(args.out) and not args.overwrite:
        p.error(f"--out {args.out} exists; pass --overwrite or choose another file.")
    return args


def _inception_measures(fake: torch.Tensor, inception, reference: np.ndarray, seed: int) -> Dict[str, object]:
    from evaluation.metrics import fid_from_features, kid_from_features

    feats = np.concatenate([inception(chunk) for chunk in fake.split(64)])
    return {
        "precision_recall": precision_recall(reference, feats, seed=seed),
        **kid_from_features(feats, reference, seed=seed),
        "fid": fid_from_features(feats, reference),
        "num_reference": int(len(reference)),
    }


def _real_vs_real(reference: np.ndarray, n: int, seed: int) -> Optional[Dict[str, object]]:
    """Precision/recall of two disjoint halves of the real features at the samples' count: the ceiling a generator
    matching the real distribution reaches at this count (k-NN manifolds of a few hundred vectors in 2048-d cover
    well under all of a distribution)."""
    if 2 * n > len(reference):
        return None
    order = np.random.default_rng(seed).permutation(len(reference))
    return precision_recall(reference[order[:n]], reference[order[n : 2 * n]], seed=seed)


def _fmt_ci(stats) -> str:
    lo, hi = stats["ci95"] or (float("nan"), float("nan"))
    return f"{stats['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_line(name: str, res: Dict[str, object]) -> str:
    c2st = res["c2st"]
    if "skipped" in c2st:
        text = f"{name}: C2ST skipped ({c2st['skipped']})"
    else:
        text = f"{name}: C2ST accuracy {_fmt_ci({'mean': c2st['accuracy'], 'ci95': c2st['ci95']})}"
    if "precision_recall" in res:
        pr = res["precision_recall"]
        text += (
            f"  precision {_fmt_ci(pr['precision'])}  recall {_fmt_ci(pr['recall'])}  KID x 1000 "
            f"{1000 * res['kid']:.2f}  FID({res['num_samples']}) {res['fid']:.2f}"
        )
    return text


def run(args: argparse.Namespace) -> Dict[str, object]:
    from evaluation.cli import _unique_names
    from evaluation.figures import save_image_grid
    from evaluation.metrics import DEFAULT_FID_CACHE, InceptionFeatures, reference_features
    from model_files import check_pipeline_path, load_pipeline

    for path in args.models:  # fail before any heavy work
        if not path.endswith(".npy"):
            check_pipeline_path(path)
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"Samples file '{path}' does not exist.")
    names = _unique_names([p.removesuffix(".npy") for p in args.models])
    harmonize = {"pipeline": None, "on": True, "off": False}[args.harmonize_noise]
    inception = reference = None
    if not args.no_inception:
        inception = InceptionFeatures(args.device)
        cache = DEFAULT_FID_CACHE if args.fid_cache_dir is None else (args.fid_cache_dir or None)
        reference, _ = reference_features(args.data_dir, args.split, None, inception, 64, cache)
    real = None
    layouts = training_layouts(args.layouts_from, args.num_samples, args.seed) if args.layouts_from else None
    results: Dict[str, object] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m evaluation.realism"] + sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k != "models"},
        "methods": {"c2st": C2ST_METHOD, "precision_recall": PR_METHOD},
        "models": {},
    }
    for name, path in zip(names, args.models):
        t0 = time.perf_counter()
        if path.endswith(".npy"):
            fake = load_samples(path)
        else:
            print(f"{name}: generating {args.num_samples} samples", file=sys.stderr, flush=True)
            pipe = load_pipeline(path, args.device)
            if args.eta is not None:
                pipe.register_to_config(eta=pipe._valid_eta(args.eta))
            steps = pipe.check_inputs(args.num_inference_steps)  # None: the pipeline's own
            sampler = {"eta": pipe.sampler["eta"], "num_inference_steps": steps}
            fake = generate_samples(pipe, args.num_samples, args.seed, steps, args.batch_size, harmonize, layouts)
        res: Dict[str, object] = {"path": path, "num_samples": int(len(fake)), "seconds_generation": 0.0}
        if not path.endswith(".npy"):
            res["sampler"] = sampler
        res["seconds_generation"] = time.perf_counter() - t0
        if real is None or tuple(real.shape[-2:]) != tuple(fake.shape[-2:]):
            real = real_faces_uint8(args.data_dir, args.split, tuple(fake.shape[-2:]))
        res["c2st"] = c2st_or_reason(real, fake, args.seed)
        if inception is not None:
            res.update(_inception_measures(fake, inception, reference, args.seed))
            res["precision_recall_real_vs_real"] = _real_vs_real(reference, len(fake), args.seed)
        if args.save_samples:
            os.makedirs(args.save_samples, exist_ok=True)
            np.save(os.path.join(args.save_samples, f"{name}_samples.npy"), fake.numpy())
            save_image_grid(fake[:64], os.path.join(args.save_samples, f"{name}_samples.png"))
            if "fake_scores" in res["c2st"]:  # the 16 samples the classifiers found most clearly generated
                order = np.argsort(res["c2st"]["fake_scores"])[::-1][:16]
                worst = torch.as_tensor([res["c2st"]["fake_indices"][i] for i in order])
                save_image_grid(fake[worst], os.path.join(args.save_samples, f"{name}_c2st_most_generated.png"))
        results["models"][name] = res
        print(summary_line(name, res), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return results


def main(args: argparse.Namespace) -> int:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        run(args)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"python -m evaluation.realism: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))

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
import json
import os
import platform
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from evaluation.c2st import C2ST_METHOD
from evaluation.figures import (
    plot_attribution_matrices,
    plot_edit_grid,
    plot_emergence_curves,
    plot_end_to_end_matrices,
    plot_leakage_curves,
    plot_strength_sweep,
    save_image_grid,
)
from evaluation.locality import ALL_EDITS, BLEND_MODES, BLEND_SUFFIX, evaluate_locality
from evaluation.metrics import (
    DEFAULT_FID_CACHE,
    FID_METHOD,
    PR_METHOD,
    InceptionFeatures,
    real_colour_reference,
    reference_features,
)
from evaluation.pipelines import lend_concept_masks
from evaluation.real_photos import evaluate_real
from evaluation.realism import real_faces_uint8
from evaluation.report import _strip_for_json, markdown_report
from evaluation.stages import (
    evaluate_attribution,
    evaluate_edit_realism,
    evaluate_emergence,
    evaluate_end_to_end,
    evaluate_fid,
)
from evaluation.stats import CI_METHOD, SEED_STREAMS, attach_ratios
from face_data import DATA_ENV, default_data_dir, load_faces
from model_files import ROOT, check_pipeline_path, load_pipeline

STAGES = ("locality", "fid", "attribution", "end_to_end", "emergence", "real")
METHODS = {
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
}


def _add_count_arguments(p: argparse.ArgumentParser) -> None:
    """The pipelines, the output folder and how many samples / pairs each stage measures."""
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
        help="timesteps of the sampling schedule (evenly spread) at which to play the full game",
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


def _add_edit_and_data_arguments(p: argparse.ArgumentParser) -> None:
    """How the edits are made and scored, and where the real faces come from."""
    p.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="sampling steps (of generation, edits, inversion and attribution); default: the pipelines' own setting",
    )
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="the sampler of the generated faces, 0 (DDIM) to 1 (DDPM-like, step noise drawn from x_T); default: the "
        "pipelines' own setting; attribution and emergence follow it too. Inverted photos run DDIM whatever it is.",
    )
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


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Stages to skip, batching, device, seed, threads and the edit variants (harmonised noise, the blended peer)."""
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
        help="samples for the end-to-end attribution (2^K full sampling runs each; 0 skips it)",
    )
    p.add_argument(
        "--num_emergence_pairs", type=int, default=8, help="seeded pairs per concept for the emergence curves"
    )
    p.add_argument(
        "--emergence_points",
        type=int,
        default=6,
        help="sampling steps (spread evenly, x_T included) at which the emergence swap is made",
    )


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses out-of-range values with argparse's error (exit status 2, one line naming the flag)."""
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
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1.")
    if args.num_fid_samples == 1:
        p.error("--num_fid_samples must be 0 (skip) or >= 2.")
    if args.eta is not None and not 0 <= args.eta <= 1:
        p.error(f"--eta must be in [0, 1] (0: DDIM, 1: DDPM-like), got {args.eta}.")
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_count_arguments(p)
    _add_edit_and_data_arguments(p)
    _add_run_arguments(p)
    args = p.parse_args(argv)
    _check_args(p, args)
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


@dataclasses.dataclass
class Variants:
    """The evaluated variants: each loaded pipeline with and/or without harmonised noise (`--harmonize_noise`).

    `pipes`: `{variant: pipeline}`; `modes`: `{variant: (loaded name, harmonize_noise)}`; `paths`: `{variant: path}`;
    `base_of`: `{variant: the baseline's same variant}`; `borrowed`: `{variant: lender}` of concept masks."""

    pipes: Dict[str, object]
    modes: Dict[str, tuple]
    paths: Dict[str, str]
    base_of: Dict[str, str]
    borrowed: Dict[str, str]
    baseline_name: Optional[str]


HARMONIZE_VARIANTS = {
    "both": [("_harmonized", True), ("_plain", False)],
    "on": [("", True)],
    "off": [("", False)],
    "pipeline": [("", None)],
}


def resolve_sampler(args: argparse.Namespace, pipes: Dict[str, object]) -> None:
    """Sets `args.eta` and `args.num_inference_steps` left at `None` to the pipelines' own sampler, and gives every
    pipeline the run's eta: compared pipelines sample alike, or the run stops and asks for the flag."""
    for key in ("eta", "num_inference_steps"):  # the flags are named as the pipeline's settings
        if getattr(args, key, None) is None:
            own = {name: pipe.sampler[key] for name, pipe in pipes.items()}
            if len(set(own.values())) > 1:
                raise ValueError(
                    f"the pipelines sample with different {key} ("
                    + ", ".join(f"{name}: {value}" for name, value in own.items())
                    + f"); pass --{key} to compare them under one sampler."
                )
            setattr(args, key, next(iter(own.values())))
    for pipe in pipes.values():
        pipe.register_to_config(eta=pipe._valid_eta(args.eta))


def load_variants(args: argparse.Namespace) -> Variants:
    """Loads the pipelines (and the baseline, last), lends concept masks, and names the evaluated variants."""
    paths = list(args.pipelines) + ([args.baseline] if args.baseline else [])
    names = _unique_names(paths)
    loaded = {name: load_pipeline(path, args.device) for name, path in zip(names, paths)}
    resolve_sampler(args, loaded)
    borrowed = lend_concept_masks(loaded)
    modes = {f"{n}{suffix}": (n, mode) for n in names for suffix, mode in HARMONIZE_VARIANTS[args.harmonize_noise]}
    base_of = {}
    if args.baseline:
        base_keys = {mode: key for key, (n, mode) in modes.items() if n == names[-1]}
        base_of = {key: base_keys[mode] for key, (n, mode) in modes.items() if n != names[-1]}
    return Variants(
        pipes={key: loaded[n] for key, (n, _) in modes.items()},
        modes=modes,
        paths={key: paths[names.index(n)] for key, (n, _) in modes.items()},
        base_of=base_of,
        borrowed={key: borrowed[n] for key, (n, _) in modes.items() if n in borrowed},
        baseline_name=list(modes)[-1] if args.baseline else None,
    )


def _results_header(args: argparse.Namespace, output_dir: str, variants: Variants, concepts: List[str]) -> dict:
    """The results tree before any measurement: configuration, method notes, versions, one entry per variant."""
    mask_sources = {
        n: ("parser" if getattr(p, "parser", None) is not None else "concept templates")
        + (f" borrowed from {variants.borrowed[n]}" if n in variants.borrowed else "")
        for n, p in variants.pipes.items()
    }
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]) or "evaluate.py"] + sys.argv[1:]),
        "output_dir": output_dir,
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("pipelines",)},
            "concepts": concepts,
            "baseline_name": variants.baseline_name,
            "baseline_of": variants.base_of,
            "harmonize_noise_of": {key: mode for key, (_, mode) in variants.modes.items()},
            "mask_source": "; ".join(f"{n}: {s}" for n, s in mask_sources.items()),
            "seed_derivation": "element i of stream s uses torch.Generator().manual_seed(SeedSequence(entropy=seed, "
            "spawn_key=(s, i))); streams " + json.dumps(SEED_STREAMS),
            "confidence_interval": CI_METHOD,
        },
        "methods": METHODS,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
            "numpy": np.__version__,
        },
        "pipelines": {
            n: {"path": display_path(variants.paths[n]), "mask_source": mask_sources[n], "timings": {}}
            for n in variants.pipes
        },
        "figures": [],
    }


@dataclasses.dataclass
class RunContext:
    """What every stage of one evaluation shares: the arguments, the concepts, where figures go, the real-face
    references of the realism stage (None when it is skipped) and the real photos (None when skipped)."""

    args: argparse.Namespace
    concepts: List[str]
    fig_dir: str
    results: dict
    inception: Optional[object] = None
    reference: Optional[np.ndarray] = None
    colour_reference: Optional[dict] = None
    c2st_real: Optional[torch.Tensor] = None
    faces: Optional[object] = None

    def figure(self, path: Optional[str]) -> None:
        if path:
            self.results["figures"].append(path)


def _load_references(ctx: RunContext, pipes: Dict[str, object]) -> None:
    """The real faces' Inception features, off-colour thresholds and C2ST images, and the real photos to edit."""
    args = ctx.args
    if "fid" not in args.skip and args.num_fid_samples >= 2:
        ctx.inception = InceptionFeatures(args.device)
        ctx.reference, cache = reference_features(
            args.data_dir,
            args.fid_reference_split,
            args.num_fid_reference,
            ctx.inception,
            args.batch_size,
            args.fid_cache_dir or None,
        )
        ctx.results["config"]["fid_reference_cache"] = cache
        parsing = next((p for p in pipes.values() if getattr(p, "parser", None) is not None), None)
        if parsing is not None:
            ctx.colour_reference = real_colour_reference(
                parsing,
                load_faces(args.data_dir, args.fid_reference_split, limit=args.num_fid_reference),
                parsing.concepts,
            )
            ctx.results["real_faces_colour"] = {k: v for k, v in ctx.colour_reference.items() if k != "distances"}
        if getattr(args, "num_c2st_samples", 0) > 0:
            resolution = next(iter(pipes.values())).resolution
            ctx.c2st_real = real_faces_uint8(
                args.data_dir, args.fid_reference_split, resolution, args.num_fid_reference
            )
    if "real" not in args.skip and args.num_real_pairs > 0:
        ctx.faces = load_faces(args.data_dir, args.real_split)


def _run_locality(ctx: RunContext, name: str, pipe, harmonize: Optional[bool], output_dir: str) -> dict:
    args = ctx.args
    loc = evaluate_locality(
        pipe,
        ctx.concepts,
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
    res = ctx.results["pipelines"][name]
    res["timings"]["locality"] = loc["seconds_per_pair"]
    if ctx.inception is not None:
        res["edit_realism"] = evaluate_edit_realism(loc["edited_uint8"], ctx.inception, ctx.reference, args.seed)
    for kind in [e for e in ALL_EDITS if e in loc]:
        ctx.figure(
            plot_edit_grid(
                loc["examples"][kind],
                os.path.join(ctx.fig_dir, f"{name}_{kind}_grid.png"),
                f"{name}: {kind} (ΔE in CIELAB; cyan = edited region)",
                kind.removesuffix(BLEND_SUFFIX),
            )
        )
    with open(os.path.join(output_dir, f"{name}_locality_per_pair.json"), "w") as f:
        json.dump(loc["per_pair_values"], f)
    return loc


def _run_fid(ctx: RunContext, name: str, pipe, harmonize: Optional[bool]) -> dict:
    args = ctx.args
    fid = evaluate_fid(
        pipe,
        args.num_fid_samples,
        args.seed,
        args.num_inference_steps,
        args.batch_size,
        ctx.inception,
        ctx.reference,
        desc=f"{name}: FID",
        harmonize_noise=harmonize,
        colour_reference=ctx.colour_reference,
        real_uint8=ctx.c2st_real,
        num_c2st_samples=getattr(args, "num_c2st_samples", 0),
    )
    timings = ctx.results["pipelines"][name]["timings"]
    timings["fid"] = fid["seconds_per_sample_generation"]
    timings["fid_inception"] = fid["seconds_per_sample_inception"]
    ctx.figure(save_image_grid(fid["preview"], os.path.join(ctx.fig_dir, f"{name}_samples.png")))
    if fid["c2st"] and "fake_scores" in fid["c2st"]:  # the 16 samples the classifiers found most clearly generated
        order = np.argsort(fid["c2st"]["fake_scores"])[::-1][:16]
        worst = torch.stack([fid["preview_c2st"][fid["c2st"]["fake_indices"][i]] for i in order])
        ctx.figure(save_image_grid(worst, os.path.join(ctx.fig_dir, f"{name}_c2st_most_generated.png")))
    return fid


def _run_attribution_stages(ctx: RunContext, name: str, pipe, harmonize: Optional[bool]) -> None:
    """Per-step and end-to-end Shapley attribution and the emergence curves, each unless skipped."""
    args, res = ctx.args, ctx.results["pipelines"][name]
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
        res["timings"]["attribution"] = att.get("seconds_per_sample")
        ctx.figure(
            plot_attribution_matrices(
                att,
                os.path.join(ctx.fig_dir, f"{name}_attribution_matrices.png"),
                f"{name}: mean share of |φ| (row = output region)",
            )
        )
        res["attribution"] = att
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
        res["timings"]["end_to_end"] = e2e.get("seconds_per_sample")
        res["end_to_end"] = e2e
    if "emergence" not in args.skip and getattr(args, "num_emergence_pairs", 0) > 0:
        em = evaluate_emergence(
            pipe,
            ctx.concepts,
            args.num_emergence_pairs,
            args.seed,
            args.num_inference_steps,
            getattr(args, "emergence_points", 6),
            args.batch_size,
            desc=f"{name}: emergence",
            harmonize_noise=harmonize,
            mask_dilation=args.mask_dilation,
        )
        res["timings"]["emergence"] = em["seconds_per_pair"]
        res["emergence"] = em


def _run_real(ctx: RunContext, name: str, pipe) -> dict:
    args = ctx.args
    real = evaluate_real(
        pipe,
        ctx.faces,
        ctx.concepts,
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
    ctx.results["pipelines"][name]["timings"]["real"] = real["seconds"] / max(real["num_pairs"], 1)
    ctx.figure(
        plot_edit_grid(
            real["examples"],
            os.path.join(ctx.fig_dir, f"{name}_real_swap_grid.png"),
            f"{name}: real photos, inverted at strength {real['strength']:g}, then edited",
            "real",
        )
    )
    return real


def _summary_figures(ctx: RunContext) -> None:
    """The figures that put all pipelines side by side."""
    stages = {key: {n: r[key] for n, r in ctx.results["pipelines"].items() if key in r} for key in STAGES}
    sweeps = {n: real["strength_sweep"] for n, real in stages["real"].items()}
    ctx.figure(plot_strength_sweep(sweeps, os.path.join(ctx.fig_dir, "real_strength_sweep.png")))
    if stages["attribution"]:
        ctx.figure(plot_leakage_curves(stages["attribution"], os.path.join(ctx.fig_dir, "leakage_over_t.png")))
    e2e_path = os.path.join(ctx.fig_dir, "end_to_end_attribution.png")
    ctx.figure(plot_end_to_end_matrices(stages["end_to_end"], e2e_path))
    ctx.figure(plot_emergence_curves(stages["emergence"], os.path.join(ctx.fig_dir, "emergence_curves.png")))


def run(args: argparse.Namespace) -> dict:
    """Runs every stage on every variant, writes results.json, results.md and the figures; returns the results."""
    for path in list(args.pipelines) + ([args.baseline] if args.baseline else []):  # fail before any heavy work
        check_pipeline_path(path)
    output_dir = prepare_output_dir(args.output_dir, args.overwrite)
    variants = load_variants(args)
    first = next(iter(variants.pipes.values()))
    concepts = list(args.concepts) if args.concepts else list(first.concepts)
    for name, pipe in variants.pipes.items():
        for c in concepts:
            if c not in pipe.concepts:
                raise ValueError(f"Pipeline '{name}' has no concept '{c}'; it knows {', '.join(pipe.concepts)}.")
    ctx = RunContext(
        args, concepts, os.path.join(output_dir, "figures"), _results_header(args, output_dir, variants, concepts)
    )
    _load_references(ctx, variants.pipes)
    real_variant = {}  # inverted photos are never harmonised: their edits are measured once, on the plain variant
    for key, (n, mode) in variants.modes.items():
        if n not in real_variant or mode is False:
            real_variant[n] = key
    for name, pipe in variants.pipes.items():
        res = ctx.results["pipelines"][name]
        harmonize = variants.modes[name][1]
        res["harmonize_noise"] = pipe._harmonizes(harmonize)
        if "locality" not in args.skip and args.num_pairs > 0:
            res["locality"] = _run_locality(ctx, name, pipe, harmonize, output_dir)
        if ctx.inception is not None:
            res["fid"] = _run_fid(ctx, name, pipe, harmonize)
        _run_attribution_stages(ctx, name, pipe, harmonize)
        if ctx.faces is not None and real_variant[variants.modes[name][0]] == name:
            res["real"] = _run_real(ctx, name, pipe)
    _summary_figures(ctx)
    # paired ratios (same seeds / faces in every pipeline, each variant against the baseline's same variant) with an
    # interval, for the tables
    for name, base_name in variants.base_of.items():
        attach_ratios(ctx.results["pipelines"][name], ctx.results["pipelines"][base_name], args.seed)
    clean = _strip_for_json(ctx.results)
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

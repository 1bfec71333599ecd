#!/usr/bin/env python
"""Train (or fine-tune) a DDPM with the Shapley dummy-player loss of the interpretable DDPM.

    accelerate launch train_interpretable.py --pretrained_model_name_or_path PLAIN --output_dir runs/x
                                   # the shipped recipe (RECIPE below) on a plain DDPM; faces from $INTERPRETABLE_DDPM_DATA
    accelerate launch train_interpretable.py --pretrained_model_name_or_path PLAIN --output_dir runs/y --lambda_start 0
                                   # its plain twin: everything the same but the dummy-player loss
    python train_interpretable.py --train_data_dir DIR --output_dir runs/x   # single process, faces in DIR
    accelerate launch --num_processes 2 --cpu train_interpretable.py ...      # multi-process (DDP over gloo)

Modelled on diffusers' examples/unconditional_image_generation/train_unconditional.py: `parse_args()` then
`main(args)`, an `Accelerator` with a `ProjectConfiguration`, `EMAModel`, and save/load state hooks. Multi-GPU and
multi-node runs come from accelerate's own config (`accelerate config`), nothing home-made.

Loss: L = L_DDPM (epsilon MSE, optional min-SNR-gamma weighting) + lambda(step) * L_IE, where L_IE is the
dummy-player loss from `pipeline_interpretable_ddpm.py` (the one place for the method's math) and lambda decays
exponentially from --lambda_start to --lambda_end. `--lambda_start 0` trains a plain DDPM with everything else
identical: the baseline for every comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import pipeline_interpretable_ddpm as pid
from face_data import DATA_ENV, default_data_dir, find_split, load_faces
from model_files import (
    PIPELINE_PARTIAL,
    atomic_write_json,
    atomic_write_text,
    checkpoint_problem,
    fsync_path,
    is_disk_full,
    list_checkpoints,
    read_checkpoint_marker,
    replace_path,
    save_pipeline,
    write_checkpoint_marker,
)

logger = logging.getLogger("train_interpretable")


class SetupError(ValueError):
    """A bad argument or input found before training starts; the command line prints it without a traceback."""


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; nothing after the last good checkpoint is saved."""


class SaveFailed(RuntimeError):
    """A checkpoint or the final pipeline could not be written (e.g. the disk is full); what was saved before is
    intact and the run can be resumed from it."""


DEFAULT_BLOCKS = "32,64,64,128"
DEFAULT_ATTENTION = "0,0,1,0"

# The shipped recipe, defined here once: the defaults of the flags that decide what a fine-tune of a plain DDPM
# becomes, so that `accelerate launch train_interpretable.py --pretrained_model_name_or_path PLAIN --output_dir OUT`
# trains the shipped interpretable branch and `... --lambda_start 0` its plain twin (models/*/training/
# training_config.json record the shipped runs; tests/test_shipped_models.py checks they match this). Settings of
# the machine (mixed precision, checkpointing, logging, fp16 saving) are not part of it. docs/training.md says why
# each value was chosen; to change the recipe, change it here.
RECIPE = {
    # the players: three concepts (the rest region is implied), their part masks grown by 2 px
    "concepts": "eyes=4,5 nose=6 mouth=7",
    "mask_dilation": 2,
    # the game: a per-example random (coalition, region) pair, absent players get another training image's x_t,
    # a region's value is its pixels of the prediction
    "estimator": "pair",
    "baseline": "other_image",
    "value": "pixel",
    # the players' regions: each face's own part map
    "ie_regions": "own",
    # the one-way game: every concept may depend on the rest region (context), not on the other concepts; output
    # pixels within 1 px of another region are left out; L_IE only on x_t with t >= 300 (below, the game draws
    # ghosted parts: docs/recipe.md)
    "ie_context": ["rest"],
    "ie_border": 1,
    "ie_min_timestep": 300,
    # the rest region never reads the parts: letting it below t = 500 or 700 loosened locality, left the ghosts
    "ie_context_open_below": 0,
    "ie_timestep_weighting": "none",
    # the dummy-player loss's weight, decaying exponentially over the whole fine-tune, on 16 examples per batch
    "lambda_start": 20.0,
    "lambda_end": 12.0,
    "ie_batch_size": 16,
    # the denoising loss, unweighted: under zero terminal SNR Min-SNR weights the high timesteps, where a face's
    # layout is decided, by ~0, which leaves them to the game alone (docs/recipe.md); and the optimisation
    "snr_gamma": 0.0,
    "snr_floor": 0.0,
    "ddpm_target": "data",
    "learning_rate": 2e-4,
    "lr_warmup_steps": 0,
    "train_batch_size": 32,
    # the UNet sees the noisy image alone: each face's part layout as input channels left the ghosts as they were
    "layout_condition": False,
    # 2300 steps (73,600 faces, ~3.3 epochs): longer branches keep the locality and draw better faces than 300
    "max_train_steps": 2300,
    # the sampler the saved pipeline uses by default: step noise drawn from x_T (eta = 1) over 100 steps draws far
    # fewer ghosted parts than deterministic DDIM, and the edits stay local (docs/recipe.md)
    "sampler_eta": 1.0,
    "sampler_steps": 100,
}


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------
def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--train_data_dir",
        default=default_data_dir(),
        help=f"Folder with train.parquet (utkface64 layout) or an image folder (images/ + masks/); "
        f"default ${DATA_ENV} or ../shared/data/utkface64.",
    )
    g.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training faces.")
    g.add_argument(
        "--random_flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Horizontal flips (left/right labels swapped).",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Pipeline folder or Hub id to fine-tune (the paper's protocol).",
    )
    g.add_argument("--resolution", type=int, default=None, help="Image size (default 64, or the pretrained model's).")
    g.add_argument("--block_out_channels", default=DEFAULT_BLOCKS, help="UNet channels per level (new model only).")
    g.add_argument("--layers_per_block", type=int, default=2)
    g.add_argument(
        "--attention_levels", default=DEFAULT_ATTENTION, help="1 where a level has self-attention, e.g. 0,0,1,0."
    )
    g.add_argument(
        "--layout_condition",
        action=argparse.BooleanOptionalAction,
        default=RECIPE["layout_condition"],
        help="Give the UNet each concept's part mask as an extra input channel (the face's layout, read by every "
        "region; not a player of the game). A plain pretrained model gets the channels with zero input weights.",
    )
    g.add_argument("--num_train_timesteps", type=int, default=1000)
    g.add_argument("--beta_schedule", default="linear", help="New model only; a pretrained model keeps its schedule.")
    g.add_argument(
        "--prediction_type",
        choices=["epsilon", "v_prediction", "sample"],
        default=None,
        help="What the UNet regresses (default: the pretrained model's, epsilon for a new model). "
        "Changing it on a pretrained model retrains the output head.",
    )
    g.add_argument(
        "--rescale_betas_zero_snr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Zero terminal SNR (Lin et al. 2024): x_T carries nothing of the image, so the model cannot "
        "read colour from the noise's low frequencies. Needs v_prediction or sample "
        "(default: the pretrained model's setting, off for a new model).",
    )
    g.add_argument(
        "--timestep_spacing",
        choices=["leading", "trailing", "linspace"],
        default=None,
        help="DDIM step spacing of the saved pipeline (default: the pretrained model's, leading for a "
        "new model); trailing starts sampling at t = T - 1, as zero terminal SNR needs.",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=RECIPE["train_batch_size"], help="Per device.")
    g.add_argument(
        "--max_train_steps",
        type=int,
        default=RECIPE["max_train_steps"],
        help="Optimisation steps (the recipe's fine-tune length); --num_epochs without this flag trains by epochs.",
    )
    g.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Also stop (checkpoint and save) after this much wall time.",
    )
    g.add_argument("--num_epochs", type=int, default=10, help="Epochs to train when given without --max_train_steps.")
    g.add_argument("--learning_rate", type=float, default=RECIPE["learning_rate"])
    g.add_argument("--lr_scheduler", default="constant_with_warmup", help="Any diffusers get_scheduler name.")
    g.add_argument("--lr_warmup_steps", type=int, default=RECIPE["lr_warmup_steps"])
    g.add_argument("--adam_beta1", type=float, default=0.95)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-6)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default="no",
        help="bf16 autocast also works on CPUs with AVX-512 bf16.",
    )
    g.add_argument(
        "--snr_gamma", type=float, default=RECIPE["snr_gamma"], help="Min-SNR-gamma loss weighting; 0 disables it."
    )
    g.add_argument(
        "--snr_floor",
        type=float,
        default=RECIPE["snr_floor"],
        help="Lower bound on the denoising loss's per-timestep weight (with --snr_gamma > 0): under zero terminal "
        "SNR Min-SNR weights the highest timesteps, where a face's layout is decided, by ~0.",
    )
    g.add_argument(
        "--ddpm_target",
        choices=["data", "teacher"],
        default=RECIPE["ddpm_target"],
        help="What the denoising loss regresses to: the data's noise/v/x_0, or the frozen start model's own "
        "prediction for the same x_t (a low-variance target that anchors a fine-tune to what the start model draws).",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dataloader_num_workers", type=int, default=0)

    g = p.add_argument_group("EMA")
    g.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--ema_max_decay", type=float, default=0.9999)
    g.add_argument("--ema_inv_gamma", type=float, default=1.0)
    g.add_argument("--ema_power", type=float, default=3 / 4)

    g = p.add_argument_group("method")
    g.add_argument(
        "--concepts", default=RECIPE["concepts"], help="Concepts as name=label,ids; the rest region is implied."
    )
    g.add_argument(
        "--mask_dilation", type=int, default=RECIPE["mask_dilation"], help="Pixels each concept mask is dilated by."
    )
    g.add_argument(
        "--ie_border",
        type=int,
        default=RECIPE["ie_border"],
        help="Leave output pixels within this many pixels of another region out of L_IE (0: the exact loss).",
    )
    g.add_argument(
        "--ie_context",
        nargs="*",
        default=list(RECIPE["ie_context"]),
        metavar="REGION",
        help="Context regions (e.g. rest): every region may depend on them, the others only on themselves. "
        "The flag with no region plays the paper's symmetric game. Needs --estimator pair.",
    )
    g.add_argument(
        "--ie_presence",
        nargs="*",
        default=[],
        metavar="REGION=P",
        help="Probability that a player is in a drawn coalition (default 0.5 each), e.g. eyes=0.9: the "
        "eyes are asked more often to leave the other regions alone. Needs --estimator pair or sampled.",
    )
    g.add_argument(
        "--ie_min_timestep",
        type=int,
        default=RECIPE["ie_min_timestep"],
        help="L_IE examples draw their timestep from [this, num_train_timesteps) on their own noisy inputs "
        "(the DDPM loss keeps all timesteps). 0: L_IE on the DDPM examples' timesteps.",
    )
    g.add_argument(
        "--ie_context_open_below",
        type=int,
        default=RECIPE["ie_context_open_below"],
        help="Below this timestep the --ie_context regions may depend on every region (their outputs leave the "
        "game; the other regions still may not read each other). 0: the one-way game at every timestep.",
    )
    g.add_argument(
        "--ie_timestep_weighting",
        choices=["none", "ddpm"],
        default=RECIPE["ie_timestep_weighting"],
        help="Per-example weight of L_IE: none (1 at every timestep) or ddpm (the denoising loss's weight at the "
        "example's timestep, --snr_gamma and --snr_floor), so that neither loss alone trains any timestep.",
    )
    g.add_argument(
        "--lambda_start",
        type=float,
        default=RECIPE["lambda_start"],
        help="Weight of L_IE at step 0; 0 trains a plain DDPM (the twin of the recipe's branch).",
    )
    g.add_argument("--lambda_end", type=float, default=RECIPE["lambda_end"])
    g.add_argument(
        "--lambda_decay_steps", type=int, default=None, help="Steps of exponential decay (default: all steps)."
    )
    g.add_argument("--estimator", choices=["exact", "sampled", "pair"], default=RECIPE["estimator"])
    g.add_argument("--coalition_samples", type=int, default=4, help="C of the sampled estimator.")
    g.add_argument("--value", choices=["pixel", "mean"], default=RECIPE["value"])
    g.add_argument("--baseline", choices=["other_image", "noise", "zero"], default=RECIPE["baseline"])
    g.add_argument(
        "--ie_regions",
        choices=["own", "pair_union", "template"],
        default=RECIPE["ie_regions"],
        help="The players' regions: own (each face's part map), pair_union (each concept is the union of the face's "
        "and its baseline face's parts, so a coalition input never shows the baseline face's part beside the face's "
        "own; needs --baseline other_image) or template (the concept templates, the same regions for every face, "
        "as a swap of generated faces uses them).",
    )
    g.add_argument(
        "--ie_batch_size",
        type=int,
        default=RECIPE["ie_batch_size"],
        help="Examples per batch that also get L_IE (at most the batch).",
    )
    g.add_argument(
        "--harmonize_noise",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Train on harmonised noise: each concept region's noise mean (its --mask_dilation mask) is "
        "tied to the mean over the rest band around it, as the pipeline's harmonize_noise draws x_T "
        "(pid.harmonize_regions), so the model samples from the noise it was trained on.",
    )

    g = p.add_argument_group("output")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--logging_dir", default="logs")
    g.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, ... or 'none'.")
    g.add_argument("--log_every", type=int, default=10)
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder or 'latest'.")
    g.add_argument("--save_images_steps", type=int, default=1000, help="Sample grid every N steps (0: never).")
    g.add_argument("--num_sample_images", type=int, default=16)
    g.add_argument(
        "--sampler_eta",
        type=float,
        default=RECIPE["sampler_eta"],
        help="The saved pipeline's default eta: 0 is DDIM, 1 adds DDPM's step noise, drawn from x_T.",
    )
    g.add_argument(
        "--sampler_steps",
        type=int,
        default=RECIPE["sampler_steps"],
        help="The saved pipeline's default number of sampling steps.",
    )
    g.add_argument(
        "--sample_inference_steps", type=int, default=None, help="Steps of the sample grids; default --sampler_steps."
    )
    g.add_argument("--save_fp16", action="store_true", help="Save the final pipeline's UNet in fp16.")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    g.add_argument("--hub_private_repo", action="store_true")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if _flag_given(given, "--num_epochs") and not _flag_given(given, "--max_train_steps"):
        args.max_train_steps = None  # train by epochs rather than the recipe's step count
    try:
        validate_args(args)
    except ValueError as err:
        parser.error(str(err))  # "usage: ... error: <problem>", exit status 2
    return args


def _flag_given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _int_list(text: str, name: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got '{text}'.") from None


# Every numeric flag: (name, lower bound, lower bound included?, upper bound, upper bound included?). argparse's
# float() takes "nan" and "inf", and nan passes every comparison test silently; None means "not given" where the
# default is None.
NUMERIC_FLAGS = [
    ("max_train_samples", 1, True, None, None),
    ("resolution", 1, True, None, None),
    ("layers_per_block", 1, True, None, None),
    ("num_train_timesteps", 1, True, None, None),
    ("train_batch_size", 1, True, None, None),
    ("max_train_steps", 1, True, None, None),
    ("max_train_minutes", 0, False, None, None),
    ("num_epochs", 1, True, None, None),
    ("learning_rate", 0, False, None, None),
    ("lr_warmup_steps", 0, True, None, None),
    ("adam_beta1", 0, True, 1, False),
    ("adam_beta2", 0, True, 1, False),
    ("adam_weight_decay", 0, True, None, None),
    ("adam_epsilon", 0, False, None, None),
    ("max_grad_norm", 0, True, None, None),
    ("gradient_accumulation_steps", 1, True, None, None),
    ("snr_gamma", 0, True, None, None),
    ("snr_floor", 0, True, 1, True),
    ("seed", 0, True, 2**32 - 1, True),  # numpy's seed range (accelerate's set_seed seeds numpy too)
    ("dataloader_num_workers", 0, True, None, None),
    ("ema_max_decay", 0, True, 1, True),
    ("ema_inv_gamma", 0, False, None, None),
    ("ema_power", 0, False, None, None),
    ("mask_dilation", 0, True, None, None),
    ("ie_border", 0, True, None, None),
    ("lambda_start", 0, True, None, None),
    ("lambda_end", 0, True, None, None),
    ("lambda_decay_steps", 1, True, None, None),
    ("coalition_samples", 1, True, None, None),
    ("ie_batch_size", 1, True, None, None),
    ("log_every", 1, True, None, None),
    ("checkpointing_steps", 1, True, None, None),
    ("checkpoints_total_limit", 1, True, None, None),
    ("save_images_steps", 0, True, None, None),
    ("num_sample_images", 1, True, None, None),
    ("sample_inference_steps", 1, True, None, None),
    ("sampler_eta", 0, True, 1, True),
    ("sampler_steps", 1, True, None, None),
]
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def check_numeric_flags(args: argparse.Namespace) -> None:
    """Each numeric flag is finite and in its range, or a clear `ValueError` names it."""
    for name, low, low_in, high, high_in in NUMERIC_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}.")
        too_low = value < low if low_in else value <= low
        too_high = high is not None and (value > high if high_in else value >= high)
        if too_low or too_high:
            if high is None:
                want = f"{'>=' if low_in else '>'} {low}"
            else:
                want = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            raise ValueError(f"--{name} must be {want}, got {value}.")


def validate_args(args: argparse.Namespace) -> None:
    """Fails before any training with a message that names the problem."""
    check_numeric_flags(args)
    pid.parse_concepts(args.concepts)  # raises on unknown label ids / bad syntax
    if not os.path.isdir(args.train_data_dir):
        raise ValueError(f"--train_data_dir '{args.train_data_dir}' does not exist.")
    blocks = _int_list(args.block_out_channels, "block_out_channels")
    attention = _int_list(args.attention_levels, "attention_levels")
    if len(blocks) != len(attention):
        raise ValueError(f"--attention_levels has {len(attention)} entries, --block_out_channels {len(blocks)}.")
    if not blocks or min(blocks) < 1:
        raise ValueError(f"--block_out_channels must be positive integers, got '{args.block_out_channels}'.")
    if any(a not in (0, 1) for a in attention):
        raise ValueError(f"--attention_levels must be 0 or 1 per level, got '{args.attention_levels}'.")
    if args.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"--beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got '{args.beta_schedule}'.")
    for flag in ("sample_inference_steps", "sampler_steps"):
        steps = getattr(args, flag)
        if steps is not None and steps > args.num_train_timesteps:
            raise ValueError(f"--{flag} {steps} exceeds --num_train_timesteps {args.num_train_timesteps}.")
    from diffusers.optimization import SchedulerType

    try:
        SchedulerType(args.lr_scheduler)
    except ValueError:
        raise ValueError(
            f"--lr_scheduler '{args.lr_scheduler}' is not a diffusers scheduler; use one of "
            f"{', '.join(t.value for t in SchedulerType)}."
        ) from None
    if args.ddpm_target == "teacher" and not args.pretrained_model_name_or_path:
        raise ValueError(
            "--ddpm_target teacher needs --pretrained_model_name_or_path (the teacher is the start model)."
        )
    if args.lambda_start < 0 or args.lambda_end < 0:
        raise ValueError("--lambda_start and --lambda_end must be >= 0.")
    if args.lambda_start > 0 and args.lambda_end == 0:
        raise ValueError("--lambda_end must be > 0 for an exponential decay (use --lambda_start 0 for a plain DDPM).")
    if args.train_batch_size < 2 and args.baseline == "other_image":
        raise ValueError(
            "--baseline other_image needs --train_batch_size >= 2 (the baseline is another image of the batch)."
        )
    if args.ie_regions == "pair_union" and args.baseline != "other_image":
        raise ValueError(
            f"--ie_regions pair_union needs --baseline other_image (it joins each face's parts with its baseline "
            f"face's), got --baseline {args.baseline}."
        )
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id.")
    if args.resolution is not None and args.resolution % 2 ** (len(blocks) - 1) != 0:
        raise ValueError(f"--resolution {args.resolution} must be divisible by {2 ** (len(blocks) - 1)}.")
    if args.ie_presence:
        presence_by_region(args.ie_presence, pid.parse_concepts(args.concepts))  # raises on a bad spec
        if args.estimator == "exact":
            raise ValueError("--ie_presence needs --estimator pair or sampled (exact uses every coalition).")
    if args.ie_context:
        regions = pid.region_names_of(pid.parse_concepts(args.concepts))
        unknown = [r for r in args.ie_context if r not in regions]
        if unknown:
            raise ValueError(f"--ie_context {' '.join(unknown)}: not a region; the regions are {', '.join(regions)}.")
        if args.estimator != "pair":
            raise ValueError(
                f"--ie_context needs --estimator pair, got --estimator {args.estimator}; pass --ie_context with no "
                "region (the paper's symmetric game) to use another estimator."
            )
    if args.rescale_betas_zero_snr and args.prediction_type == "epsilon":
        raise ValueError(
            "--rescale_betas_zero_snr needs --prediction_type v_prediction or sample: at zero terminal SNR the noise "
            "equals x_T, so epsilon prediction has nothing to learn at t = T - 1."
        )
    if not 0 <= args.ie_context_open_below <= args.num_train_timesteps:
        raise ValueError(
            f"--ie_context_open_below must be in [0, {args.num_train_timesteps}] (--num_train_timesteps), got "
            f"{args.ie_context_open_below}."
        )
    if args.ie_context_open_below > 0 and not args.ie_context:
        raise ValueError("--ie_context_open_below needs --ie_context regions to open (e.g. --ie_context rest).")
    if not 0 <= args.ie_min_timestep < args.num_train_timesteps:
        raise ValueError(
            f"--ie_min_timestep must be in [0, {args.num_train_timesteps}) (--num_train_timesteps), got {args.ie_min_timestep}."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Pieces of the training loop
# ----------------------------------------------------------------------------------------------------------------------
def lambda_at(step: int, args) -> float:
    """Exponential decay from lambda_start to lambda_end over lambda_decay_steps, then constant."""
    if args.lambda_start == 0:
        return 0.0
    frac = min(step / max(args.lambda_decay_steps, 1), 1.0)
    return float(args.lambda_start * (args.lambda_end / args.lambda_start) ** frac)


def build_unet(args, resolution: int):
    from diffusers import UNet2DModel

    blocks = _int_list(args.block_out_channels, "block_out_channels")
    attention = _int_list(args.attention_levels, "attention_levels")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    num_layout = len(pid.parse_concepts(args.concepts)) if args.layout_condition else 0
    return UNet2DModel(
        sample_size=resolution,
        in_channels=3 + num_layout,
        out_channels=3,
        layers_per_block=args.layers_per_block,
        block_out_channels=tuple(blocks),
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=min(32, min(blocks)),
        attention_head_dim=min(32, min(blocks)),
    )


def layout_conditioned(unet, args):
    """The pretrained UNet with the layout channels --layout_condition asks for (added with zero weights to a plain
    model); a layout-conditioned model cannot be trained without its layout."""
    num_layout = unet.config.in_channels - unet.config.out_channels
    num_concepts = len(pid.parse_concepts(args.concepts))
    if num_layout and not args.layout_condition:
        raise ValueError(
            f"'{args.pretrained_model_name_or_path}' is layout-conditioned ({num_layout} layout channels); pass "
            "--layout_condition."
        )
    if args.layout_condition and num_layout == 0:
        return pid.add_layout_channels(unet, num_concepts)
    if args.layout_condition and num_layout != num_concepts:
        raise ValueError(
            f"'{args.pretrained_model_name_or_path}' takes {num_layout} layout channels, but --concepts names "
            f"{num_concepts} concepts."
        )
    return unet


def load_pretrained(args):
    """UNet and noise schedule of a pipeline folder or Hub id (only its `unet` and `scheduler` are used)."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = args.pretrained_model_name_or_path
    try:
        unet = UNet2DModel.from_pretrained(path, subfolder="unet")
        sched_cfg = DDPMScheduler.load_config(path, subfolder="scheduler")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"Cannot load a UNet2DModel pipeline from --pretrained_model_name_or_path '{path}': {err}"
        ) from None
    return unet.float(), sched_cfg


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of tensors' dtypes, shapes and bytes: equal digests mean bit-identical values."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def file_digest(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def train_data_digests(data_dir: str) -> dict:
    """`{file name: digest}` of the training split's parquet file (empty for an image folder)."""
    try:
        path = find_split(data_dir, "train")
    except (FileNotFoundError, ValueError):
        return {}
    return {os.path.basename(path): file_digest(path)} if os.path.isfile(path) else {}


def environment_record() -> dict:
    """What a run's numbers may depend on besides its flags: package versions, the machine and torch's threading
    and kernels, so that a result that does not reproduce elsewhere can be traced."""
    import platform

    import accelerate
    import diffusers

    record = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    return record


def schedule_config(config: dict, args) -> dict:
    """The noise schedule of the run: `config` (a pretrained model's, or a new one's) with the flags that set
    prediction type, zero terminal SNR and step spacing applied; fails when the result cannot be trained."""
    config = dict(config)
    for name in ("prediction_type", "rescale_betas_zero_snr", "timestep_spacing"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if config.get("rescale_betas_zero_snr") and config.get("prediction_type", "epsilon") == "epsilon":
        raise ValueError(
            "The schedule has zero terminal SNR but the prediction type is epsilon; pass --prediction_type v_prediction."
        )
    return config


def flip_batch(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, perm: Optional[torch.Tensor] = None
):
    """Flips a random half of the batch horizontally; a flip exchanges the left and right part labels.

    Draws on `generator`'s device; `perm` is `pid.FLIP_LABEL_PERMUTATION` as a tensor on the labels' device (pass it
    to avoid a host-to-device copy per step)."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device).lt(0.5).to(images.device)
    if perm is None:
        perm = torch.tensor(pid.FLIP_LABEL_PERMUTATION, device=labels.device)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    labels = torch.where(flip[:, None, None], perm[labels.long()].flip(-1), labels.long())
    return images, labels


def denoising_weights(noise_scheduler, timesteps: torch.Tensor, args) -> Optional[torch.Tensor]:
    """Per-example weight of the denoising loss: Min-SNR-gamma raised to --snr_floor, or None (1) without it."""
    if args.snr_gamma <= 0:
        return None
    w = snr_weights(noise_scheduler, timesteps, args.snr_gamma)
    floor = getattr(args, "snr_floor", 0.0)
    return w.clamp_min(floor) if floor > 0 else w


def snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for the scheduler's prediction type.

    epsilon: min(SNR, gamma) / SNR; v_prediction: min(SNR, gamma) / (SNR + 1); sample: min(SNR, gamma). All three
    weight the same x_0 error alike, and stay finite at zero terminal SNR (where SNR = 0) except for epsilon, which
    `validate_args` refuses there.
    """
    if noise_scheduler.alphas_cumprod.device != timesteps.device:  # moved once, not copied every step
        noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)
    alphas = noise_scheduler.alphas_cumprod[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    kind = noise_scheduler.config.prediction_type
    if kind == "v_prediction":
        return clipped / (snr + 1)
    if kind == "sample":
        return clipped
    return clipped / snr


def regression_target(noise_scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output for x_t = add_noise(x0, noise, t): noise, v or x_0 (`prediction_type`)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(x0, noise, timesteps)
    if kind == "sample":
        return x0
    raise ValueError(f"Unknown prediction_type '{kind}' in the noise scheduler's config.")


def make_baseline(kind: str, x0: torch.Tensor, noisy: torch.Tensor, timesteps, noise_scheduler, generator):
    """x_t that absent players get: the same-t x_t of another image of the batch, fresh noise, or zeros."""
    if kind == "zero":
        return torch.zeros_like(noisy)
    other_noise = torch.randn(noisy.shape, generator=generator, device=generator.device).to(noisy.device, noisy.dtype)
    if kind == "noise":
        return other_noise
    return noise_scheduler.add_noise(x0.roll(1, 0), other_noise, timesteps)


class FaceTensorDataset(torch.utils.data.Dataset):
    """Faces as three in-memory tensors: images `(N, 3, H, W)` uint8, labels `(N, H, W)` uint8, has_mask `(N,)` bool.

    `__getitems__` fetches a whole batch with one indexing op per tensor; the DataLoader uses it (with
    `collate_batch`) instead of indexing and collating sample by sample, which costs milliseconds per large batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, has_mask: torch.Tensor):
        self.images, self.labels, self.has_mask = images, labels, has_mask

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], self.has_mask[i]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return [self.images[idx], self.labels[idx], self.has_mask[idx]]


def collate_batch(batch):
    """The batch `FaceTensorDataset.__getitems__` already built (a module-level function so workers can pickle it)."""
    return batch


def step_seed(seed: int, process_index: int, micro_step: int) -> int:
    """Seed of one (micro-)step's random draws: a function of the step, so a resumed run draws what an uninterrupted
    run would have drawn."""
    return int(np.random.SeedSequence([seed, process_index, micro_step]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class StepLosses:
    loss: torch.Tensor  # what is back-propagated
    loss_ddpm: torch.Tensor
    loss_ie: torch.Tensor  # detached when lambda = 0 (logging only); 0 when not computed
    ie_computed: bool
    draws: Optional[dict] = None  # the batch's random draws (noise, timesteps), for the run record's first-batch hash


def training_losses(
    unet,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    has_mask: torch.Tensor,
    *,
    noise_scheduler,
    concepts,
    args,
    lam: float,
    generator: torch.Generator,
    probe_ie: bool = False,
    flip_perm: Optional[torch.Tensor] = None,
    game: Optional[GameSettings] = None,
    teacher=None,
) -> StepLosses:
    """Losses of one batch: L = L_DDPM + lam * L_IE.

    With `lam > 0` the DDPM input and all coalition inputs go through ONE forward (DDP allows one forward per
    backward). With `lam == 0` L_IE is skipped unless `probe_ie`, which measures it without gradient (for logs).
    All random draws use `generator`, on its device.

    Args:
        images_u8 (`(B, 3, H, W)` uint8), labels (`(B, H, W)` part label ids), has_mask (`(B,)` bool): the batch,
            already on the model's device.
        game: the game's settings resolved from `args` once per run (`game_settings`); resolved here when omitted.
        teacher: the frozen start UNet, whose output is the denoising target with `--ddpm_target teacher`.
    """
    device = images_u8.device
    x0 = images_u8.float() / 127.5 - 1
    if args.random_flip:
        x0, labels = flip_batch(x0, labels, generator, flip_perm)
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(device)
    if getattr(args, "harmonize_noise", False):
        # faces without a part map have empty concept regions, which harmonize_regions leaves as drawn
        concept_regions = pid.region_partition(labels, concepts, args.mask_dilation)[:, :-1]
        noise = pid.harmonize_regions(noise, concept_regions, pid.harmonization_reference(concept_regions))
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator, device=generator.device
    ).to(device)
    noisy = noise_scheduler.add_noise(x0, noise, timesteps)
    ie_needed = lam > 0 or probe_ie
    inputs, t_all = noisy, timesteps
    # the face's layout, the same for the denoising input and every coalition input of the game (a condition)
    layout = pid.layout_from_labels(labels, concepts) if getattr(args, "layout_condition", False) else None
    layout_all = layout
    if ie_needed:
        nb = min(args.ie_batch_size or b, b)
        game = game or game_settings(args, concepts)
        regions = game_regions(labels, nb, concepts, args, game)
        ie_noisy, ie_t = noisy, timesteps
        if args.ie_min_timestep > 0:
            # The eps-space L_IE is dominated by small t (fine-detail denoising, ~100x its value near t = T); drawing
            # its timesteps from [min, T) puts the pressure where the image's layout, and most of a swap's leakage,
            # is decided, and leaves detail denoising free.
            ie_t = torch.randint(
                args.ie_min_timestep,
                noise_scheduler.config.num_train_timesteps,
                (b,),
                generator=generator,
                device=generator.device,
            ).to(device)
            ie_noisy = noise_scheduler.add_noise(x0, noise, ie_t)
        baseline = make_baseline(args.baseline, x0, ie_noisy, ie_t, noise_scheduler, generator)[:nb]
        open_outputs = None
        if getattr(args, "ie_context_open_below", 0) > 0:
            # below the threshold the context regions may read the parts (the skin around a part follows the part)
            open_outputs = torch.zeros(regions.shape[:2], dtype=torch.bool, device=regions.device)
            open_outputs[:, game.context_ids] = (ie_t[:nb] < args.ie_context_open_below)[:, None]
        plan = pid.plan_coalitions(
            regions, args.estimator, args.coalition_samples, generator, game.context_ids, game.presence, open_outputs
        )
        coal = pid.coalition_inputs(ie_noisy[:nb], baseline, regions, plan.coalitions)  # (nb, M, C, H, W)
        m = coal.shape[1]
        if lam > 0:
            inputs = torch.cat([noisy, coal.flatten(0, 1)])
            t_all = torch.cat([timesteps, ie_t[:nb].repeat_interleave(m)])
            if layout is not None:
                layout_all = torch.cat([layout, layout[:nb].repeat_interleave(m, 0)])
    eps_all = unet(pid.with_layout(inputs, layout_all), t_all).sample
    if getattr(args, "ddpm_target", "data") == "teacher":
        if teacher is None:
            raise ValueError("--ddpm_target teacher needs the frozen start UNet (teacher=...).")
        with torch.no_grad():
            target = teacher(pid.with_layout(noisy, layout), timesteps).sample
    else:
        target = regression_target(noise_scheduler, x0, noise, timesteps)
    mse = F.mse_loss(eps_all[:b].float(), target.float(), reduction="none").mean((1, 2, 3))
    ddpm_w = denoising_weights(noise_scheduler, timesteps, args)
    if ddpm_w is not None:
        mse = mse * ddpm_w
    loss_ddpm = mse.mean()
    loss_ie = torch.zeros((), device=device)
    if ie_needed:
        if lam > 0:
            coal_eps = eps_all[b:].reshape(coal.shape)
        else:  # logging only: L_IE of the plain model, no gradient
            with torch.no_grad():
                coal_in = pid.with_layout(
                    coal.flatten(0, 1), None if layout is None else layout[:nb].repeat_interleave(m, 0)
                )
                coal_eps = unet(coal_in, ie_t[:nb].repeat_interleave(m)).sample.reshape(coal.shape)
        example_w = has_mask[:nb].float()
        ie_w = None
        if getattr(args, "ie_timestep_weighting", "none") == "ddpm":
            ie_w = denoising_weights(noise_scheduler, ie_t[:nb], args)
        if ie_w is not None:
            # the weighted mean over the examples with a part map: sum(w_t * L_k) / #examples
            example_w = example_w * ie_w
        loss_ie = pid.loss_from_coalition_outputs(
            coal_eps.float(), plan, regions, args.value, example_w, border=args.ie_border
        )
        if ie_w is not None:
            loss_ie = loss_ie * example_w.sum().clamp_min(1.0) / has_mask[:nb].float().sum().clamp_min(1.0)
    loss = loss_ddpm + lam * loss_ie if lam > 0 else loss_ddpm
    return StepLosses(loss, loss_ddpm, loss_ie, ie_needed, {"noise": noise, "timesteps": timesteps})


@dataclass(frozen=True)
class GameSettings:
    """The parts of the game that `args` names by region, as region indices (parsed once per run, not per step)."""

    context_ids: List[int]  # regions that only ever act as context (--ie_context)
    presence: Optional[List[float]]  # each region's probability of being in a drawn coalition (--ie_presence)
    template_regions: Optional[torch.Tensor] = None  # (1, K, H, W) partition of --ie_regions template


def game_settings(args, concepts, template_labels: Optional[torch.Tensor] = None) -> GameSettings:
    """`template_labels` (`(N, H, W)`, the label maps of the faces with a part map) make the template regions of
    `--ie_regions template`; they are needed then and ignored otherwise."""
    names = pid.region_names_of(concepts)
    template_regions = None
    if getattr(args, "ie_regions", "own") == "template":
        if template_labels is None or not len(template_labels):
            raise ValueError("--ie_regions template needs training faces with part maps to make the templates from.")
        templates = pid.compute_concept_templates(template_labels.long(), concepts)
        masks = torch.stack([torch.from_numpy(pid.decode_binary_mask(templates[c])) for c in concepts])[None]
        template_regions = pid.exclusive_partition(pid.dilate_masks(masks.bool(), args.mask_dilation))
    return GameSettings(
        [names.index(r) for r in args.ie_context], presence_by_region(args.ie_presence, concepts), template_regions
    )


def game_regions(labels: torch.Tensor, nb: int, concepts, args, game: GameSettings) -> torch.Tensor:
    """The players' regions of the first `nb` faces of the batch, `(nb, K, H, W)` (see `--ie_regions`).

    With `pair_union` a concept's region is the union of the face's part and its baseline face's part (the baseline
    is the batch rolled by one, `make_baseline`), so that a coalition input never puts one face's eyes into another
    face whose own eyes sit a few pixels away. In the recipe study the three choices gave the same faces and the same
    locality (docs/recipe.md, "Where the ghosting comes from")."""
    mode = getattr(args, "ie_regions", "own")
    if mode == "template":
        if game.template_regions is None:
            raise ValueError("--ie_regions template: the game settings hold no template regions.")
        return game.template_regions.to(labels.device).expand(nb, -1, -1, -1)
    own = labels[:nb]
    if mode == "own":
        return pid.region_partition(own, concepts, args.mask_dilation)
    masks = pid.concept_masks(own, concepts) | pid.concept_masks(labels.roll(1, 0)[:nb], concepts)
    return pid.exclusive_partition(pid.dilate_masks(masks, args.mask_dilation))


def presence_by_region(spec: Sequence[str], concepts) -> Optional[List[float]]:
    """`["eyes=0.9"]` -> each region's probability of being in a drawn coalition (0.5 where unnamed), in region order."""
    if not spec:
        return None
    regions = pid.region_names_of(concepts)
    probs = {r: 0.5 for r in regions}
    for item in spec:
        name, sep, value = item.partition("=")
        if not sep or name not in probs:
            raise ValueError(f"--ie_presence {item}: expected REGION=P with REGION one of {', '.join(regions)}.")
        try:
            p = float(value)
        except ValueError:
            p = float("nan")
        if not 0 < p < 1:
            raise ValueError(f"--ie_presence {item}: the probability must be in (0, 1).")
        probs[name] = p
    return [probs[r] for r in regions]


def free_output_dir_check(args) -> None:
    """Work in --output_dir is never overwritten silently: a finished pipeline or checkpoints there need --resume."""
    if not os.path.isdir(args.output_dir) or args.resume_from_checkpoint:
        return
    existing = [n for n in os.listdir(args.output_dir) if n.startswith("checkpoint-") or n == "model_index.json"]
    if existing:
        raise SetupError(
            f"--output_dir '{args.output_dir}' already holds {', '.join(sorted(existing)[:3])}; resume with "
            "--resume_from_checkpoint latest or choose a new --output_dir (nothing is overwritten silently)."
        )


def warn(message: str) -> None:
    """One line on stderr, from the main process only (before the Accelerator exists, RANK tells which it is)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def checkpoint_step(path: str) -> int:
    return int(os.path.basename(os.path.normpath(path)).split("-")[-1])


def resume_candidates(args) -> List[str]:
    """The checkpoint folders to resume from, the one to try first first; [] for a fresh start.

    An explicit folder must be complete. `latest` skips (with a warning that names them) the newest checkpoints that
    are incomplete or damaged, so a run killed at any moment resumes from its last complete one; with none at all
    it starts at step 0 (nothing was saved yet), unless a finished pipeline there would be overwritten."""
    if not args.resume_from_checkpoint:
        return []
    if args.resume_from_checkpoint != "latest":
        path = args.resume_from_checkpoint
        if not os.path.isdir(path) or not os.path.basename(os.path.normpath(path)).split("-")[-1].isdigit():
            raise SetupError(f"--resume_from_checkpoint '{path}' is not a checkpoint-STEP folder.")
        problem = checkpoint_problem(path)
        if problem:
            raise SetupError(
                f"--resume_from_checkpoint '{path}' is incomplete or damaged ({problem}); resume from an earlier "
                "checkpoint, e.g. --resume_from_checkpoint latest."
            )
        return [path]
    good = []
    for name in reversed(list_checkpoints(args.output_dir)):
        path = os.path.join(args.output_dir, name)
        problem = checkpoint_problem(path)
        if problem:
            warn(f"skipping {path}: it is incomplete or damaged ({problem}); falling back to an earlier checkpoint.")
        else:
            good.append(path)
    if good:
        return good
    if os.path.isfile(os.path.join(args.output_dir, "model_index.json")):
        raise SetupError(
            f"--resume_from_checkpoint latest: '{args.output_dir}' holds a finished pipeline but no complete "
            "checkpoint to continue it from; choose a new --output_dir (nothing is overwritten silently)."
        )
    warn(
        f"--resume_from_checkpoint latest: no complete checkpoint in '{args.output_dir}' yet; training starts at step 0."
    )
    return []


# What defines the model and its objective: a resumed run must continue with the same (`check_resume_settings`).
# Each entry names the flag that sets it, for the message.
ARCHITECTURE_SETTINGS = {
    "sample_size": "--resolution",
    "block_out_channels": "--block_out_channels",
    "layers_per_block": "--layers_per_block",
    "down_block_types": "--attention_levels",
    "up_block_types": "--attention_levels",
    "in_channels": "the model's input channels",
    "out_channels": "the model's output channels",
}
SCHEDULE_SETTINGS = {
    "num_train_timesteps": "--num_train_timesteps",
    "beta_schedule": "--beta_schedule",
    "beta_start": "the schedule's beta_start",
    "beta_end": "the schedule's beta_end",
    "prediction_type": "--prediction_type",
    "rescale_betas_zero_snr": "--rescale_betas_zero_snr",
    "timestep_spacing": "--timestep_spacing",
}
OBJECTIVE_FLAGS = (
    "concepts",
    "value",
    "snr_gamma",
    "snr_floor",
    "ddpm_target",
    "ie_timestep_weighting",
    "ie_regions",
    "harmonize_noise",
    "use_ema",
)
# the value an objective flag had before it existed (a checkpoint of an older version has no entry for it)
OBJECTIVE_FLAG_BEFORE = {
    "snr_floor": 0.0,
    "ddpm_target": "data",
    "ie_timestep_weighting": "none",
    "ie_regions": "own",
    "harmonize_noise": False,
}


def _plain(value):
    """JSON-comparable form (tuples become lists; a concepts string its canonical form)."""
    return json.loads(json.dumps(value, default=str))


def run_settings(args, unet, noise_scheduler) -> dict:
    """The settings that define this run's model and objective, as stored in every checkpoint's marker."""
    flags = {name: getattr(args, name) for name in OBJECTIVE_FLAGS}
    flags["concepts"] = pid.concepts_to_string(pid.parse_concepts(args.concepts))
    return _plain(
        {
            "architecture": {k: unet.config.get(k) for k in ARCHITECTURE_SETTINGS},
            "schedule": {k: noise_scheduler.config.get(k) for k in SCHEDULE_SETTINGS},
            "objective": flags,
        }
    )


def checkpoint_settings(path: str, output_dir: str) -> dict:
    """The settings a checkpoint was trained with: from its marker, or for a checkpoint written before markers
    existed, its UNet config and the run's training_config.json / run_record.json (as the run left them)."""
    marker = read_checkpoint_marker(path) or {}
    if "settings" in marker:
        return marker["settings"]
    settings = {}
    with open(os.path.join(path, "unet", "config.json")) as f:
        unet_config = json.load(f)
    settings["architecture"] = _plain({k: unet_config.get(k) for k in ARCHITECTURE_SETTINGS})
    record_path = os.path.join(output_dir, "run_record.json")
    if os.path.isfile(record_path):
        with open(record_path) as f:
            schedule = json.load(f).get("noise_schedule")
        if schedule:
            settings["schedule"] = _plain({k: schedule.get(k) for k in SCHEDULE_SETTINGS})
    config_path = os.path.join(output_dir, "training_config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
        flags = {name: config.get(name, OBJECTIVE_FLAG_BEFORE.get(name)) for name in OBJECTIVE_FLAGS}
        if flags.get("concepts") is not None:
            flags["concepts"] = pid.concepts_to_string(pid.parse_concepts(flags["concepts"]))
        settings["objective"] = _plain(flags)
    return settings


def check_resume_settings(path: str, args, unet, noise_scheduler) -> None:
    """Raises `SetupError` naming every setting that defines the model or its objective (architecture, noise schedule,
    prediction type, concepts, value, denoising weights and target, ...) in which this run differs from the
    checkpoint it would resume. Reads files only: nothing is written before this passes."""
    try:
        saved = checkpoint_settings(path, args.output_dir)
    except (OSError, ValueError) as err:
        raise SetupError(f"cannot read the settings of '{path}' ({type(err).__name__}: {err}).") from None
    now = run_settings(args, unet, noise_scheduler)
    differences = []
    for group, names in (
        ("architecture", ARCHITECTURE_SETTINGS),
        ("schedule", SCHEDULE_SETTINGS),
        ("objective", {n: f"--{n}" for n in OBJECTIVE_FLAGS}),
    ):
        if group not in saved:
            continue
        for key, flag in names.items():
            old, new = saved[group].get(key), now[group].get(key)
            if key in saved[group] and old != new:
                label = flag if flag.endswith(key) or not flag.startswith("--") else f"{flag} ({key})"
                differences.append(f"{label}: {old!r} in the checkpoint, {new!r} now")
    if differences:
        raise SetupError(
            f"cannot resume from '{path}': this run differs in what defines the model or its objective; "
            + "; ".join(differences)
            + ". Resume with the checkpoint's settings, or start a new run in another --output_dir (nothing was "
            "written)."
        )


def save_sample_grid(pipeline, path: str, num_images: int, steps: int, seed: int) -> None:
    from PIL import Image

    out = pipeline(
        batch_size=num_images,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="np",
    )
    images = (out.images * 255).round().astype(np.uint8)
    cols = int(math.ceil(math.sqrt(num_images)))
    rows = int(math.ceil(num_images / cols))
    h, w = images.shape[1:3]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = im
    Image.fromarray(grid).save(path)


def push_folder_to_hub(folder: str, repo_id: str, token: Optional[str] = None, private: bool = False) -> str:
    """create_repo + upload_folder; returns the repo id. Weights other than safetensors are not uploaded."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        token=token,
        commit_message="Upload interpretable DDPM pipeline",
        ignore_patterns=["checkpoint-*", "logs/*", "samples/*", "*.bin", "*.pt", "*.pth"],
    )
    return repo_id


def base_model_id(pretrained: Optional[str]) -> Optional[str]:
    """Hub id of the model fine-tuned from: the argument itself, or for a local run folder its --hub_model_id."""
    if not pretrained:
        return None
    if not os.path.isdir(pretrained):
        return pretrained
    config = os.path.join(pretrained, "training_config.json")
    if os.path.isfile(config):
        with open(config) as f:
            return json.load(f).get("hub_model_id")
    return None


def model_card_text(args, output_dir: str, metrics: dict) -> str:
    """The text of README.md: Hugging Face model-card metadata filled from the run."""
    is_plain = args.lambda_start == 0
    base = args.pretrained_model_name_or_path
    lines = [
        "---",
        "license: other",
        "license_name: utkface-non-commercial",
        "license_link: https://susanqq.github.io/UTKFace/",
        "library_name: diffusers",
        "pipeline_tag: unconditional-image-generation",
        "tags:",
        "- diffusers",
        "- ddpm",
        "- ddim",
        "- interpretability",
        "- shapley",
        "- faces",
        "datasets:",
        "- UTKFace",
    ]
    if base_model_id(
        base
    ):  # the Hub validates base_model as a model id: a local folder without one is only named below
        lines += [f"base_model: {base_model_id(base)}", "base_model_relation: finetune"]
    lines += ["---", ""]
    title = "Plain DDPM (baseline)" if is_plain else "Interpretable DDPM"
    lines += [
        f"# {title} — {os.path.basename(os.path.abspath(output_dir))}",
        "",
        (
            "Trained with lambda = 0: the same recipe as the interpretable model without the dummy-player loss."
            if is_plain
            else "A DDPM fine-tuned with the Shapley dummy-player loss (Liu et al. 2025) so that each region of x_T is the "
            f"only cause of the same region of the image. Concepts: `{args.concepts}` (+ rest)."
        ),
        "",
    ]
    if base:
        lines += [f"Fine-tuned from `{base}`.", ""]
    lines += [
        "```python",
        "from diffusers import DiffusionPipeline",
        f'pipe = DiffusionPipeline.from_pretrained("{args.hub_model_id or output_dir}", trust_remote_code=True)',
        "out = pipe(batch_size=2)",
        'edit = pipe.swap_regions(out.latents[:1], out.latents[1:], "eyes")',
        "```",
        "",
        "## Training",
        "",
        "Data: UTKFace aligned crops at 64x64 (Zhang et al., CVPR 2017), non-commercial research use only.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in (
        "pretrained_model_name_or_path",
        "resolution",
        "block_out_channels",
        "train_batch_size",
        "learning_rate",
        "mixed_precision",
        "snr_gamma",
        "ema_max_decay",
        "concepts",
        "mask_dilation",
        "ie_border",
        "ie_context",
        "ie_presence",
        "ie_min_timestep",
        "lambda_start",
        "lambda_end",
        "lambda_decay_steps",
        "estimator",
        "value",
        "baseline",
        "ie_regions",
    ):
        lines.append(f"| {key} | `{getattr(args, key)}` |")
    for key, val in metrics.items():
        lines.append(f"| {key} | `{val}` |")
    lines += ["", "The full configuration is in `training_config.json`."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def setup_model_and_data(args):
    """UNet, noise scheduler and faces; every bad input raises `SetupError` naming the problem, before training."""
    from diffusers import DDPMScheduler

    try:
        # model first: a resolution mismatch with a pretrained model must fail before data loading
        if args.pretrained_model_name_or_path:
            unet, sched_cfg = load_pretrained(args)
            resolution = unet.config.sample_size
            if args.resolution is not None and args.resolution != resolution:
                raise ValueError(
                    f"--resolution {args.resolution} does not match the pretrained model's resolution {resolution} "
                    f"('{args.pretrained_model_name_or_path}')."
                )
            unet = layout_conditioned(unet, args)
        else:
            resolution = args.resolution or 64
            unet = build_unet(args, resolution)
            sched_cfg = dict(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule)
        noise_scheduler = DDPMScheduler.from_config(schedule_config(sched_cfg, args))
        faces = load_faces(args.train_data_dir, "train", limit=args.max_train_samples, resolution=resolution)
    except (ValueError, FileNotFoundError) as err:
        raise SetupError(str(err)) from err
    if args.lambda_start > 0 and not faces.has_mask.any():
        raise SetupError(
            f"No face in '{args.train_data_dir}' has a part label map; the dummy-player loss needs masks."
        )
    args.resolution = resolution
    return unet, noise_scheduler, faces


def main(args: argparse.Namespace) -> str:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers import UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    free_output_dir_check(args)
    if torch.cuda.is_available():  # TF32 matmuls and tuned convolutions: free speed for fp32 parts on Ampere+
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    concepts = pid.parse_concepts(args.concepts)
    set_seed(args.seed)  # before the UNet is built, so that --seed sets its initial weights
    unet, noise_scheduler, faces = setup_model_and_data(args)
    # which checkpoint to resume, and whether this run may continue it, is settled before any file is written
    resume_paths = resume_candidates(args)
    if resume_paths:
        check_resume_settings(resume_paths[0], args, unet, noise_scheduler)
    settings = run_settings(args, unet, noise_scheduler)
    # the start model, frozen: the denoising target of --ddpm_target teacher
    teacher = copy.deepcopy(unet).requires_grad_(False).eval() if args.ddpm_target == "teacher" else None

    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    on_cuda = torch.cuda.is_available()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        # `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs: N CPU processes over gloo
        # (accelerate's `--cpu` launcher runs a single process unless mpirun is configured)
        cpu=launched > 1 and not on_cuda,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
        # the epoch's shuffle is a function of (seed, epoch), so a resumed run sees the batches an uninterrupted one
        # would; batches are copied to the GPU without a host sync
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=args.seed, non_blocking=on_cuda
        ),
    )
    if launched > 1 and accelerator.num_processes != launched:
        raise SetupError(
            f"{launched} processes were launched but accelerate joined {accelerator.num_processes}: each would train "
            "alone into the same --output_dir. Check the accelerate config (distributed_type) and devices."
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.is_main_process:
        run_record = {
            "environment": environment_record(),
            "start_weights": tensor_digest(*unet.state_dict().values()),
            "train_data": train_data_digests(args.train_data_dir),
            "noise_schedule": dict(noise_scheduler.config),
        }
        try:
            os.makedirs(args.output_dir, exist_ok=True)
            remove_leftovers(args.output_dir)
            atomic_write_json(os.path.join(args.output_dir, "training_config.json"), vars(args), sort_keys=True)
            write_run_record(args.output_dir, run_record)
        except OSError as err:
            raise SetupError(f"cannot write into --output_dir '{args.output_dir}': {err}") from None

    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,  # one fused update for all parameters instead of a few kernels per parameter
            model_cls=UNet2DModel,
            model_config=unet.config,
        )

    # save/load hooks so that accelerator.save_state writes the UNet and its EMA as safetensors diffusers folders
    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema_model is not None:
                ema_model.save_pretrained(os.path.join(output_dir, "unet_ema"))
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "unet"))
                weights.pop()

    def load_model_hook(models, input_dir):
        if ema_model is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, "unet_ema"), UNet2DModel)
            ema_model.load_state_dict(loaded.state_dict())
            ema_model.to(accelerator.device)
            del loaded
        for _ in range(len(models)):
            model = models.pop()
            loaded = UNet2DModel.from_pretrained(input_dir, subfolder="unet")
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    dataset = FaceTensorDataset(
        torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(faces.labels),
        torch.from_numpy(faces.has_mask),
    )
    if len(dataset) < args.train_batch_size * accelerator.num_processes:
        raise SetupError(
            f"{len(dataset)} training faces are fewer than one global batch "
            f"({args.train_batch_size} x {accelerator.num_processes} processes)."
        )
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
        collate_fn=collate_batch,
        pin_memory=on_cuda,
    )
    steps_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_epochs * steps_per_epoch
    if args.lambda_decay_steps is None:
        args.lambda_decay_steps = args.max_train_steps
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    global_step = 0
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    if teacher is not None:  # on the device, under the run's autocast, never wrapped for DDP
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
    if ema_model is not None:
        ema_model.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(
            "train_interpretable",
            config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
        )

    for i, resume_path in enumerate(resume_paths):
        accelerator.print(f"Resuming from {resume_path}")
        try:
            accelerator.load_state(resume_path)
        except Exception as err:  # a damaged file the completeness check could not see: one line, then the next one
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            if i + 1 == len(resume_paths):
                raise SetupError(
                    f"cannot resume from '{resume_path}' ({reason}); "
                    + (
                        "no earlier complete checkpoint is left."
                        if args.resume_from_checkpoint == "latest"
                        else "resume from an earlier checkpoint, e.g. --resume_from_checkpoint latest."
                    )
                ) from None
            warn(f"{resume_path} cannot be read ({reason}); falling back to {resume_paths[i + 1]}.")
            continue
        global_step = checkpoint_step(resume_path)
        break
    if accelerator.is_main_process:
        truncate_log(os.path.join(args.output_dir, "train_log.jsonl"), global_step)
        if resume_paths:
            prune_checkpoints(args.output_dir, args.checkpoints_total_limit, global_step)
    first_epoch = global_step // max(steps_per_epoch, 1)

    device = accelerator.device
    # per-process generator on the training device (no host-to-device copies of random numbers), reseeded every
    # micro-step from (seed, process, micro-step): a resumed run continues with the draws of an uninterrupted one
    generator = torch.Generator(device=device)
    micro_step = global_step * args.gradient_accumulation_steps
    flip_perm = torch.tensor(pid.FLIP_LABEL_PERMUTATION, device=device)
    # the label maps of the faces with a part map (a copy of most of the data) only where templates are made of them
    template_labels = torch.from_numpy(faces.labels[faces.has_mask]) if args.ie_regions == "template" else None
    game = game_settings(args, concepts, template_labels)
    progress = tqdm(
        range(args.max_train_steps), initial=global_step, disable=not accelerator.is_local_main_process, desc="train"
    )
    done = global_step >= args.max_train_steps
    step_start = train_start = time.time()
    # running sums (loss, loss_ddpm, loss_ie, #micro-steps, #micro-steps with L_IE) kept on the device: the host
    # waits for the device only at log steps
    log_sums = torch.zeros(5, device=device)
    epoch = first_epoch
    while not done:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        batches = dataloader
        if epoch == first_epoch and global_step > 0:
            # resume mid-epoch where the checkpoint left off
            batches = accelerator.skip_first_batches(
                dataloader, (global_step * args.gradient_accumulation_steps) % len(dataloader)
            )
        for images_u8, labels, has_mask in batches:
            generator.manual_seed(step_seed(args.seed, accelerator.process_index, micro_step))
            micro_step += 1
            lam = lambda_at(global_step, args)
            with accelerator.accumulate(unet):
                step = training_losses(
                    unet,
                    images_u8.to(device),
                    labels.to(device),
                    has_mask.to(device),
                    noise_scheduler=noise_scheduler,
                    concepts=concepts,
                    args=args,
                    lam=lam,
                    generator=generator,
                    probe_ie=(global_step + 1) % args.log_every == 0,
                    flip_perm=flip_perm,
                    game=game,
                    teacher=teacher,
                )
                if global_step == 0 and micro_step == 1 and accelerator.is_main_process:
                    write_run_record(
                        args.output_dir,
                        {
                            "first_batch": {
                                "images": tensor_digest(images_u8),
                                "labels": tensor_digest(labels),
                                "noise": tensor_digest(step.draws["noise"]),
                                "timesteps": tensor_digest(step.draws["timesteps"]),
                                "loss": float(step.loss.detach()),
                            }
                        },
                    )
                accelerator.backward(step.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            with torch.no_grad():
                log_sums += torch.stack(
                    [
                        step.loss.detach().float(),
                        step.loss_ddpm.detach().float(),
                        step.loss_ie.detach().float(),
                        torch.ones((), device=device),
                        torch.full((), float(step.ie_computed), device=device),
                    ]
                )
            if not accelerator.sync_gradients:
                continue
            if ema_model is not None:
                ema_model.step(unet.parameters())
            global_step += 1
            progress.update(1)
            # before anything is logged or saved: a NaN / inf loss or weight stops the run here, so every checkpoint,
            # sample grid and the final pipeline come from finite weights
            if (
                global_step % args.log_every == 0
                or global_step % args.checkpointing_steps == 0
                or global_step >= args.max_train_steps
                or (args.save_images_steps and global_step % args.save_images_steps == 0)
            ):
                raise_if_diverged(accelerator, unet, log_sums, global_step, args)

            out_of_time = False
            if global_step % args.log_every == 0:
                sums = log_sums.tolist()  # the only host sync of a log window
                n = max(sums[3], 1)
                logs = {
                    "loss": sums[0] / n,
                    "loss_ddpm": sums[1] / n,
                    "loss_ie": sums[2] / max(sums[4], 1),  # mean over the window's micro-steps that computed it
                    "lambda": lam,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "step_time": (time.time() - step_start) / args.log_every,
                    "ema_decay": ema_model.cur_decay_value if ema_model is not None else 0.0,
                    "epoch": epoch,
                }
                progress.set_postfix(loss=f"{logs['loss']:.4f}", ie=f"{logs['loss_ie']:.4g}", lam=f"{lam:.3g}")
                accelerator.log(logs, step=global_step)
                if accelerator.is_main_process:
                    with open(os.path.join(args.output_dir, "train_log.jsonl"), "a") as f:
                        f.write(json.dumps({"step": global_step, **logs}) + "\n")
                log_sums.zero_()
                if args.max_train_minutes is not None:
                    out_of_time = time.time() - train_start > 60 * args.max_train_minutes
                    if accelerator.num_processes > 1:  # every process must stop at the same step
                        flag = torch.tensor(float(out_of_time), device=device)
                        out_of_time = bool(accelerator.reduce(flag, reduction="max") > 0)
                step_start = time.time()

            if global_step % args.checkpointing_steps == 0 or global_step >= args.max_train_steps or out_of_time:
                save_checkpoint(accelerator, args, global_step, settings)
            if args.save_images_steps and global_step % args.save_images_steps == 0 and accelerator.is_main_process:
                pipeline = build_pipeline(accelerator, unet, ema_model, noise_scheduler, args, faces, fp16=False)
                os.makedirs(os.path.join(args.output_dir, "samples"), exist_ok=True)
                save_sample_grid(
                    pipeline,
                    os.path.join(args.output_dir, "samples", f"step-{global_step:07d}.png"),
                    args.num_sample_images,
                    args.sample_inference_steps,
                    args.seed,
                )
            if global_step >= args.max_train_steps or out_of_time:
                done = True
                break
        epoch += 1

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipeline = build_pipeline(accelerator, unet, ema_model, noise_scheduler, args, faces, fp16=args.save_fp16)
        summary = {
            "train_steps": global_step,
            "train_images": len(faces),
            "images_seen": global_step
            * args.train_batch_size
            * accelerator.num_processes
            * args.gradient_accumulation_steps,
            "train_minutes": round((time.time() - train_start) / 60, 2),
        }
        # the pipeline, its summary and model card are written beside and moved into place with model_index.json
        # last: a run killed (or out of disk) meanwhile leaves no folder that loads as a finished pipeline
        try:
            save_pipeline(
                pipeline,
                args.output_dir,
                extra_files={
                    "train_summary.json": json.dumps(summary, indent=2) + "\n",
                    "README.md": model_card_text(args, args.output_dir, summary),
                },
            )
        except Exception as err:
            raise save_failed(err, args.output_dir, "the final pipeline") from err
        if args.push_to_hub:
            push_folder_to_hub(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo)
    accelerator.end_training()
    return args.output_dir


def write_run_record(output_dir: str, update: dict) -> None:
    """Merges `update` into `run_record.json` (environment, start-weight and data hashes, first batch)."""
    path = os.path.join(output_dir, "run_record.json")
    record = {}
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
    record.update(update)
    atomic_write_json(path, record, sort_keys=True, default=str)


def raise_if_diverged(accelerator, unet, log_sums: torch.Tensor, global_step: int, args) -> None:
    """Raises `TrainingDiverged` when a loss summed into `log_sums` since the last log step, or a weight, is NaN or
    infinite (on any process). One host sync; called at log, checkpoint and sample steps only."""
    ok = torch.isfinite(log_sums[:2]).all()  # loss and loss_ddpm (a lambda = 0 run's L_IE is a probe, not trained)
    ok = ok & torch.stack([torch.isfinite(p).all() for p in accelerator.unwrap_model(unet).parameters()]).all()
    bad = (~ok).float()
    if accelerator.num_processes > 1:  # every process stops at the same step
        bad = accelerator.reduce(bad, reduction="sum")
    if float(bad) == 0:
        return
    last = last_complete_checkpoint(args.output_dir)
    raise TrainingDiverged(
        f"the training loss or weights became NaN or infinite by step {global_step} (checked every --log_every "
        f"{args.log_every} steps and before every save). Nothing of it was saved: "
        + (
            f"the last good checkpoint is '{last}'; resume from it with --resume_from_checkpoint {last}"
            if last
            else "no checkpoint had been saved yet; start again"
        )
        + " and a lower --learning_rate or --lambda_start/--lambda_end. No final pipeline was written."
    )


def truncate_log(path: str, step: int) -> None:
    """Drops log lines after `step` (a run killed after its last checkpoint logged steps that will be redone), and a
    line cut off by a kill while it was written. Rewritten through a temporary file: a kill here loses nothing."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))


def last_complete_checkpoint(output_dir: str, exclude: Sequence[str] = ()) -> Optional[str]:
    """Path of the newest complete checkpoint in `output_dir` (not one named in `exclude`), or None."""
    for name in reversed(list_checkpoints(output_dir)):
        path = os.path.join(output_dir, name)
        if name not in exclude and checkpoint_problem(path) is None:
            return path
    return None


def save_failed(err: BaseException, output_dir: str, what: str, exclude: Sequence[str] = ()) -> SaveFailed:
    """The `SaveFailed` for a failed write of `what`: says whether the disk is full and what is still intact."""
    last = last_complete_checkpoint(output_dir, exclude)
    if what == "the final pipeline":
        intact = f"{os.path.basename(last)} is intact" if last else "no checkpoint was saved"
    else:
        intact = f"the previous {os.path.basename(last)} is intact" if last else "no earlier checkpoint exists"
    resume = "resume with --resume_from_checkpoint latest" if last else "start again"
    if is_disk_full(err, output_dir):
        return SaveFailed(
            f"no space left on device while writing {what} in '{output_dir}'; {intact}. Free some space, then {resume}."
        )
    reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return SaveFailed(
        f"could not write {what} in '{output_dir}' ({type(err).__name__}: {reason}); {intact}; {resume}."
    )


def save_checkpoint(accelerator, args, global_step: int, settings: Optional[dict] = None) -> None:
    """accelerator.save_state into checkpoint-STEP, then prunes the oldest beyond --checkpoints_total_limit.

    The state is written into checkpoint-STEP.partial, its files flushed to disk, a completion marker written last
    (`checkpoint_complete.json`: the files' sizes and the run's `settings`), and only then renamed into place; older
    checkpoints are removed only after that. A run killed at any moment, or out of disk, keeps its last complete
    checkpoint. Raises `SaveFailed` (with the previous checkpoint intact) when the state cannot be written."""
    name = f"checkpoint-{global_step}"
    path = os.path.join(args.output_dir, name)
    partial = path + ".partial"
    if accelerator.is_main_process:
        remove_leftovers(args.output_dir)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(partial)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_checkpoint_marker(partial, {"step": global_step, "settings": settings})
            replace_path(partial, path)
            fsync_path(args.output_dir)
    except Exception as err:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise save_failed(err, args.output_dir, name, exclude=[name]) from err
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prune_checkpoints(args.output_dir, args.checkpoints_total_limit, global_step)
    accelerator.wait_for_everyone()


def prune_checkpoints(output_dir: str, total_limit: Optional[int], newest_step: int) -> None:
    """Removes the oldest checkpoints older than checkpoint-`newest_step` until at most `total_limit` are left (that
    one counted). Called after every save and after a resume: a run killed between a save and its pruning, resumed
    from that save, may have no save left to do. Checkpoints newer than `newest_step` are never touched."""
    if total_limit is None:
        return
    checkpoints = list_checkpoints(output_dir)  # oldest first; checkpoint-`newest_step` is among them
    older = [c for c in checkpoints if checkpoint_step(c) < newest_step]
    for old in older[: max(len(checkpoints) - total_limit, 0)]:
        # renamed out of the checkpoints first: a kill during the deletion leaves no half checkpoint behind
        doomed = os.path.join(output_dir, old + ".deleting")
        os.rename(os.path.join(output_dir, old), doomed)
        shutil.rmtree(doomed)


def remove_leftovers(output_dir: str) -> None:
    """Deletes what a killed run can leave in `output_dir`: a checkpoint being written (`checkpoint-N.partial`),
    replaced (`.old`) or deleted (`.deleting`), a pipeline being written, and temporary files of atomic writes."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        is_leftover = name == PIPELINE_PARTIAL or (
            name.startswith("checkpoint-")
            and not name.split("-", 1)[1].isdigit()
            and (name.endswith((".partial", ".deleting")) or ".old" in name)
        )
        if is_leftover:
            shutil.rmtree(path, ignore_errors=True)
        elif re.search(r"\.tmp\d+$", name) and os.path.isfile(path):
            os.remove(path)


def build_pipeline(accelerator, unet, ema_model, noise_scheduler, args, faces, fp16: bool):
    """An InterpretableDDPMPipeline with the EMA weights (if any), a DDIM scheduler and concept templates."""
    import copy

    from diffusers import DDIMScheduler

    model = copy.deepcopy(accelerator.unwrap_model(unet)).float().cpu()
    if ema_model is not None:
        ema_model.copy_to(model.parameters())
    model.eval()
    if fp16:
        model = model.half()
    masked = faces.labels[faces.has_mask]
    templates = (
        pid.compute_concept_templates(torch.from_numpy(masked.astype(np.int64)), pid.parse_concepts(args.concepts))
        if len(masked)
        else None
    )
    # same noise schedule as training; the predicted x_0 is clipped (per pixel, so edits stay local) because
    # unclipped DDIM makes pixel models that are not fully trained saturate their colours
    ddim = DDIMScheduler.from_config(
        noise_scheduler.config, clip_sample=True, set_alpha_to_one=True, thresholding=False
    )
    pipeline = pid.InterpretableDDPMPipeline(
        unet=model,
        scheduler=ddim,
        concepts=args.concepts,
        concept_templates=templates,
        harmonize_noise=args.harmonize_noise,  # sample from the noise the model was trained on
        eta=args.sampler_eta,
        num_inference_steps=args.sampler_steps,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def cli(argv: Optional[List[str]] = None) -> int:
    """Command line: bad arguments or inputs print `error: ...` and exit with status 2 (like argparse), no traceback;
    a run whose loss becomes non-finite prints `error: ...` and exits with status 1, keeping its good checkpoints."""
    try:
        main(parse_args(argv))
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrainingDiverged, SaveFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())

# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Train the face-part parser of the pipeline, attach it (and concept templates) to a saved pipeline.

The parser is a small `transformers` `SegformerForSemanticSegmentation` with the 8 face-part labels of
`pipeline_interpretable_ddpm.FACE_PART_LABELS` (0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 nose, 7 mouth; left and
right are the subject's), trained on the MediaPipe part label maps of the utkface64 faces at 64x64. Its input
is the image in [-1, 1] (the pipeline's `parser_normalization="minus_one_one"`). It parses what the pipeline
generates, so it becomes the pipeline's optional component `parser`, and `pipe.concept_mask(image_or_latents, "eyes")`
uses it.

Faces come from `--data_dir` (default: `$INTERPRETABLE_DDPM_DATA`, else `../shared/data/utkface64` beside the
repository). Three modes (`--mode`):

- `train` (default): trains the parser and saves it with `save_pretrained` (fp16 safetensors + `config.json` with
  `id2label`) to `--output_dir`, checkpointing every `--checkpointing_steps` steps (resume with
  `--resume_from_checkpoint latest`). Reproducible with `--seed` (same seed, same threads -> same weights).

      python train_parser.py --output_dir models/face-parser-64 \
          --max_train_steps 3000 --seed 0 --mixed_precision bf16

- `attach`: puts a saved parser into a saved pipeline folder as its `parser` component and writes the concept
  template masks (`compute_concept_templates` over the training label maps) into its config; everything else in the
  folder (UNet weights, scheduler, model card, ...) is left untouched. Works for Hub parsers too, through
  `--label_mapping celebamask-hq --parser_normalization imagenet --parser_resolution 512`.

      python train_parser.py --mode attach --pipeline_dir models/interpretable-ddpm-faces64 \
          --parser_dir models/face-parser-64

- `templates`: computes the template masks alone and writes them as JSON (`--templates_out`, or stdout).

The same functions are importable: `train(args)`, `evaluate_parser`, `attach_parser`, `compute_templates_from_data`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from face_data import DATA_ENV, default_data_dir, load_faces
from model_files import latest_checkpoint, list_checkpoints, load_pipeline
from pipeline_interpretable_ddpm import (
    FACE_PART_LABELS,
    FLIP_LABEL_PERMUTATION,
    compute_concept_templates,
    parse_concepts,
)

logger = logging.getLogger("train_parser")

NUM_FACE_PART_LABELS = len(FACE_PART_LABELS)

# The 19 CelebAMask-HQ labels of Hub face parsers such as `jonathandinu/face-parsing` (order checked against that
# model's config.json `id2label`), and how they map onto our part labels. Ears, neck, hair, hat, glasses, jewellery
# and clothes are not part of the MediaPipe face oval, so they map to background. "mouth" there is the area between
# the lips; our mouth is the convex hull of the lip landmarks, so lips and mouth all map to 7.
# Left/right: we assume CelebAMask-HQ's l_/r_ name the subject's side, as our MediaPipe maps do (l_eye -> 4 left_eye).
# This could not be checked here (no network, no weights); if a parser turns out to use the image side, swap 4/5 and
# 2/3 in the mapping. Concepts that pool both sides (the default `eyes=4,5`) are unaffected either way, and
# `benchmarks/bench_parser.py` prints left and right eye IoU separately, which shows a swap at once.
CELEBAMASK_HQ_LABELS = {
    0: "background",
    1: "skin",
    2: "nose",
    3: "eye_g",
    4: "l_eye",
    5: "r_eye",
    6: "l_brow",
    7: "r_brow",
    8: "l_ear",
    9: "r_ear",
    10: "mouth",
    11: "u_lip",
    12: "l_lip",
    13: "hair",
    14: "hat",
    15: "ear_r",
    16: "neck_l",
    17: "neck",
    18: "cloth",
}
CELEBAMASK_HQ_TO_FACE_PARTS = {
    0: 0,
    1: 1,
    2: 6,
    3: 0,
    4: 4,
    5: 5,
    6: 2,
    7: 3,
    8: 0,
    9: 0,
    10: 7,
    11: 7,
    12: 7,
    13: 0,
    14: 0,
    15: 0,
    16: 0,
    17: 0,
    18: 0,
}
LABEL_MAPPINGS = {"identity": None, "celebamask-hq": CELEBAMASK_HQ_TO_FACE_PARTS}

# Architecture presets. "small" is the shipped parser (0.8 M parameters; its speed is in benchmarks/bench_parser.py).
# Its first stage has stride 2 (not SegFormer's usual 4) so that the logits are at 1/2 resolution (32x32 for a 64x64
# face): eyes are only ~10x4 pixels at 64x64, and 1/4-resolution logits blur them away. "tiny" is for tests.
PARSER_PRESETS = {
    "small": dict(
        hidden_sizes=[16, 32, 64, 128],
        depths=[2, 2, 2, 2],
        decoder_hidden_size=64,
        num_attention_heads=[1, 1, 2, 4],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[2, 2, 2, 2],
        mlp_ratios=[4, 4, 4, 4],
    ),
    "tiny": dict(
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_attention_heads=[1, 1, 1, 1],
        sr_ratios=[4, 2, 1, 1],
        patch_sizes=[3, 3, 3, 3],
        strides=[2, 2, 2, 2],
        mlp_ratios=[2, 2, 2, 2],
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------
def make_face_parser(
    preset: str = "small", seed: Optional[int] = None, id2label: Optional[Mapping[int, str]] = None, **overrides
):
    """A randomly initialised `SegformerForSemanticSegmentation` with our (or the given) labels.

    Args:
        preset (`str`): a key of `PARSER_PRESETS` ("small" is the shipped parser, "tiny" a test-sized one).
        seed (`int`, *optional*): seeds the initialisation.
        id2label (`dict`, *optional*): `{label id: name}`; `FACE_PART_LABELS` by default.
        overrides: any other `SegformerConfig` field.
    """
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if preset not in PARSER_PRESETS:
        raise ValueError(f"Unknown parser preset '{preset}'; choose one of {', '.join(PARSER_PRESETS)}.")
    id2label = dict(FACE_PART_LABELS if id2label is None else id2label)
    kw = dict(PARSER_PRESETS[preset])
    kw.update(overrides)
    config = SegformerConfig(
        num_labels=len(id2label),
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
        semantic_loss_ignore_index=255,
        **kw,
    )
    if seed is not None:
        torch.manual_seed(seed)
    return SegformerForSemanticSegmentation(config)


def parser_logits(parser, pixels: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
    """Parser logits `(B, L, size, size)`, bilinearly upsampled from the SegFormer's reduced resolution exactly as the
    pipeline does it. `pixels` are `(B, 3, H, W)`, already normalised the way the parser wants."""
    logits = parser(pixel_values=pixels).logits
    size = size or pixels.shape[-1]
    return F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)


def save_parser(parser, output_dir: str, dtype: torch.dtype = torch.float16, metrics: Optional[dict] = None) -> None:
    """Saves the parser with `save_pretrained` (safetensors in `dtype`, `config.json` with `id2label`), plus a
    `preprocessor_config.json` that documents its input (64x64, mean 0.5 / std 0.5, i.e. pixels in [-1, 1])."""
    import copy

    from transformers import SegformerImageProcessor

    os.makedirs(output_dir, exist_ok=True)
    copy.deepcopy(parser).to(dtype).save_pretrained(output_dir, safe_serialization=True)
    size = int(getattr(parser.config, "image_size", 64) or 64)
    SegformerImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_reduce_labels=False,
    ).save_pretrained(output_dir)
    if metrics is not None:
        with open(os.path.join(output_dir, "parser_metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
            f.write("\n")


# ----------------------------------------------------------------------------------------------------------------------
# Data and augmentation
# ----------------------------------------------------------------------------------------------------------------------
def load_labelled_faces(data_dir: str, split: str, limit: Optional[int] = None):
    """Faces of one split that have a label map: `(images (N, 3, H, W) uint8, labels (N, H, W) uint8)` tensors."""
    faces = load_faces(data_dir, split, limit=limit)
    keep = faces.has_mask
    if not keep.any():
        raise ValueError(f"No face of split '{split}' in '{data_dir}' has a label map (has_mask is false everywhere).")
    images = torch.from_numpy(faces.images[keep]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(faces.labels[keep]).contiguous()
    return images, labels


def to_parser_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, 3, H, W)` -> float in [-1, 1] (the pipeline's model space, `parser_normalization="minus_one_one"`)."""
    return images_uint8.float() / 127.5 - 1.0


def augment(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    max_shift: int = 3,
    flip: bool = True,
    color: bool = True,
):
    """Random augmentation of a batch: horizontal flip (left/right part labels swapped with
    `FLIP_LABEL_PERMUTATION`), a shift of up to `max_shift` pixels, brightness/contrast/saturation jitter and light
    noise. `images` are `(B, 3, H, W)` in [-1, 1], `labels` `(B, H, W)` long; returns new tensors."""
    b, _, h, w = images.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if flip:
        flipped = rand(b) < 0.5
        if flipped.any():
            perm = torch.tensor(FLIP_LABEL_PERMUTATION, dtype=torch.long)
            images = images.clone()
            labels = labels.clone()
            images[flipped] = images[flipped].flip(-1)
            labels[flipped] = perm[labels[flipped].flip(-1)]
    if max_shift > 0:
        s = max_shift
        padded_img = F.pad(images, (s, s, s, s), mode="replicate")
        padded_lab = F.pad(labels, (s, s, s, s), value=0)
        offsets = torch.randint(0, 2 * s + 1, (b, 2), generator=generator)
        images = torch.stack(
            [padded_img[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
        )
        labels = torch.stack([padded_lab[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])
    if color:
        x = (images + 1) / 2
        brightness = 1 + (rand(b, 1, 1, 1) - 0.5) * 0.4
        contrast = 1 + (rand(b, 1, 1, 1) - 0.5) * 0.4
        saturation = 1 + (rand(b, 1, 1, 1) - 0.5) * 0.6
        gray = x.mean(1, keepdim=True)
        x = gray + (x - gray) * saturation
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        x = x * brightness
        noisy = (rand(b, 1, 1, 1) < 0.3).float()
        x = x + noisy * 0.03 * torch.randn(x.shape, generator=generator)
        images = x.clamp(0, 1) * 2 - 1
    return images, labels


def class_weights(labels: torch.Tensor, num_labels: int, power: float) -> torch.Tensor:
    """Cross-entropy class weights `freq^-power`, scaled so that the average pixel weight is 1 (power 0: none)."""
    freq = torch.bincount(labels.reshape(-1).long(), minlength=num_labels).double()
    freq = freq / freq.sum()
    weights = torch.where(freq > 0, freq.clamp_min(1e-8) ** -power, torch.zeros_like(freq))
    weights = weights / (weights * freq).sum()
    return weights.float()


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """1 - mean soft Dice over `classes` (batch-pooled), a direct surrogate of the IoU of small parts."""
    probs = logits.softmax(1)
    losses = []
    for c in classes:
        p = probs[:, c]
        g = (labels == c).float()
        inter = (p * g).sum()
        losses.append(1 - (2 * inter + 1) / (p.sum() + g.sum() + 1))
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_labels: int = NUM_FACE_PART_LABELS) -> torch.Tensor:
    """`(L, L)` pixel counts, rows = target label, columns = predicted label."""
    idx = target.reshape(-1).long() * num_labels + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def iou_from_confusion(conf: torch.Tensor) -> Dict[str, float]:
    """Dataset-level IoU (intersections and unions summed over all pixels of all images) per part label, the pooled
    eyes (labels 4 and 5 as one class) and brows (2 and 3), and the means the issue asks for.

    Returns `{label name: IoU, "eyes": ..., "brows": ..., "mean_eyes_nose_mouth": mean of eyes (pooled), nose, mouth,
    "mean_eyes_lr_nose_mouth": mean of left eye, right eye, nose, mouth}`."""
    conf = conf.double()

    def iou(ids):
        ids = list(ids)
        inter = conf[ids][:, ids].sum()
        union = conf[ids].sum() + conf[:, ids].sum() - inter
        return float(inter / union) if union > 0 else float("nan")

    out = {FACE_PART_LABELS[c]: iou([c]) for c in range(conf.shape[0])}
    out["eyes"] = iou([4, 5])
    out["brows"] = iou([2, 3])
    out["mean_eyes_nose_mouth"] = float(np.mean([out["eyes"], out["nose"], out["mouth"]]))
    out["mean_eyes_lr_nose_mouth"] = float(np.mean([out["left_eye"], out["right_eye"], out["nose"], out["mouth"]]))
    return out


@torch.no_grad()
def evaluate_parser(
    parser,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 128,
    label_mapping: Optional[Mapping[int, int]] = None,
    normalization: str = "minus_one_one",
    resolution: Optional[int] = None,
) -> Dict[str, float]:
    """Per-class IoU of a parser against label maps. `images` uint8 `(N, 3, H, W)`, `labels` `(N, H, W)`.

    The image goes through the same steps as in the pipeline (resize to `resolution`, normalisation, logits upsampled
    back to H x W, argmax, `label_mapping`)."""
    was_training = parser.training
    parser.eval()
    dtype = next(parser.parameters()).dtype
    h = images.shape[-1]
    lut = None
    if label_mapping:
        num = max(int(parser.config.num_labels), max(int(k) for k in label_mapping) + 1)
        lut = torch.zeros(num, dtype=torch.long)
        for k, v in label_mapping.items():
            lut[int(k)] = int(v)
    conf = torch.zeros(NUM_FACE_PART_LABELS, NUM_FACE_PART_LABELS, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float() / 255.0
        if resolution and resolution != h:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        if normalization == "imagenet":
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            x = (x - mean) / std
        else:
            x = x * 2 - 1
        pred = parser_logits(parser, x.to(dtype), size=h).argmax(1)
        if lut is not None:
            pred = lut[pred]
        conf += confusion_matrix(pred, labels[start : start + batch_size])
    parser.train(was_training)
    return iou_from_confusion(conf)


# ----------------------------------------------------------------------------------------------------------------------
# Templates and attaching to a pipeline
# ----------------------------------------------------------------------------------------------------------------------
def compute_templates_from_data(
    data_dir: str,
    concepts=None,
    split: str = "train",
    threshold: float = 0.5,
    dilation: int = 0,
    limit: Optional[int] = None,
) -> Dict[str, str]:
    """Template mask per concept (`compute_concept_templates` over the label maps of `split`, faces without a map
    skipped), encoded for the pipeline's `concept_templates` config."""
    _, labels = load_labelled_faces(data_dir, split, limit=limit)
    return compute_concept_templates(labels.long(), parse_concepts(concepts), threshold=threshold, dilation=dilation)


def attach_parser(
    pipeline_dir: str,
    parser_dir: Optional[str] = None,
    data_dir: Optional[str] = None,
    templates: Optional[Dict[str, str]] = None,
    label_mapping: Optional[Mapping[int, int]] = None,
    normalization: str = "minus_one_one",
    resolution: Optional[int] = None,
    verify: bool = True,
) -> dict:
    """Adds a parser and concept templates to a pipeline folder saved by `InterpretableDDPMPipeline.save_pretrained`.

    The parser is copied into `pipeline_dir/parser/` (its safetensors and configs as they are, so an fp16 parser stays
    fp16) and `model_index.json` gets the `parser` entry and the `concept_templates` / `parser_*` config values. No
    other file is rewritten (the UNet keeps its dtype, the model card stays).

    Args:
        pipeline_dir (`str`): the saved pipeline folder (holds `model_index.json`).
        parser_dir (`str`, *optional*): a folder saved with `SegformerForSemanticSegmentation.save_pretrained`; when
            `None`, only the templates are written.
        data_dir (`str`, *optional*): face data whose training label maps give the templates (with the pipeline's
            concepts, threshold 0.5, dilation 0); or pass `templates` directly; or neither to keep the current ones.
        label_mapping (`dict`, *optional*): `{parser label id: face part label id}` (e.g.
            `CELEBAMASK_HQ_TO_FACE_PARTS`); `None` for parsers with our 8 labels.
        normalization / resolution: the pipeline's `parser_normalization` / `parser_resolution`.
        verify (`bool`): load the result with `DiffusionPipeline.from_pretrained` and check that the parser arrived.

    Returns:
        the new `model_index.json` as a dict.
    """
    index_path = os.path.join(pipeline_dir, "model_index.json")
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"'{pipeline_dir}' has no model_index.json; is it a saved pipeline folder?")
    with open(index_path) as f:
        index = json.load(f)
    concepts = parse_concepts(index.get("concepts"))
    if normalization not in ("minus_one_one", "imagenet"):
        raise ValueError(f"normalization must be 'minus_one_one' or 'imagenet', got '{normalization}'.")
    if templates is None and data_dir is not None:
        templates = compute_templates_from_data(data_dir, concepts)
    if templates is not None:
        missing = [c for c in concepts if c not in templates]
        if missing:
            raise ValueError(f"templates lack the pipeline's concept(s) {missing}.")
        index["concept_templates"] = dict(templates)
    if parser_dir is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(parser_dir)
        num_labels = int(config.num_labels)
        if label_mapping:
            label_mapping = {str(int(k)): int(v) for k, v in label_mapping.items()}
            bad = [k for k in label_mapping if not 0 <= int(k) < num_labels]
            if bad:
                raise ValueError(
                    f"label_mapping names parser label ids {bad}, but the parser has {num_labels} labels."
                )
        elif num_labels != NUM_FACE_PART_LABELS:
            raise ValueError(
                f"The parser in '{parser_dir}' has {num_labels} labels, not the {NUM_FACE_PART_LABELS} face-part "
                "labels; give a label_mapping (e.g. --label_mapping celebamask-hq)."
            )
        target = os.path.join(pipeline_dir, "parser")
        if os.path.abspath(target) != os.path.abspath(parser_dir):
            if os.path.isdir(target):
                shutil.rmtree(target)
            shutil.copytree(parser_dir, target, ignore=shutil.ignore_patterns("checkpoint-*", "*.log", "optimizer*"))
        index["parser"] = ["transformers", type_name_of_config(config)]
        index["parser_label_mapping"] = label_mapping or None
        index["parser_normalization"] = normalization
        index["parser_resolution"] = resolution
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    if verify:
        pipe = load_pipeline(pipeline_dir)
        if parser_dir is not None and pipe.parser is None:
            raise RuntimeError(f"The pipeline in '{pipeline_dir}' loaded without its parser.")
        if templates is not None:
            for c in concepts:
                pipe.template_mask(c)
    return index


def type_name_of_config(config) -> str:
    archs = getattr(config, "architectures", None) or ["SegformerForSemanticSegmentation"]
    return archs[0]


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------
def _lr_at(step: int, args) -> float:
    if step < args.lr_warmup_steps:
        return args.learning_rate * (step + 1) / args.lr_warmup_steps
    progress = (step - args.lr_warmup_steps) / max(1, args.max_train_steps - args.lr_warmup_steps)
    return args.learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_checkpoint(output_dir, step, parser, optimizer, state: dict, keep: int = 2):
    path = os.path.join(output_dir, f"checkpoint-{step}")
    os.makedirs(path, exist_ok=True)
    parser.save_pretrained(path, safe_serialization=True)  # fp32, to resume exactly
    state = dict(state, optimizer=optimizer.state_dict(), step=step, torch_rng=torch.get_rng_state())
    torch.save(state, os.path.join(path, "training_state.pt"))
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(os.path.join(output_dir, old), ignore_errors=True)
    return path


def train(args) -> dict:
    """Trains the parser as configured by `args` (see `parse_args`); returns the final metrics dict."""
    from transformers import SegformerForSemanticSegmentation

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    images, labels = load_labelled_faces(args.data_dir, "train", limit=args.max_train_samples)
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"Faces must be square, got {images.shape[-2]}x{images.shape[-1]}.")
    # A fixed held-out slice of the training split for the progress log (test.parquet stays for the final report).
    num_val = min(args.validation_size, len(images) // 5)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    val_idx, train_idx = order[:num_val], order[num_val:]
    val_images, val_labels = images[val_idx], labels[val_idx]
    images, labels = images[train_idx], labels[train_idx]
    logger.info(
        "%d training faces, %d validation faces, %dx%d", len(images), num_val, images.shape[-2], images.shape[-1]
    )

    weights = class_weights(labels, NUM_FACE_PART_LABELS, args.class_weight_power)
    logger.info("class weights: %s", [round(float(w), 3) for w in weights])

    start_step = 0
    resume = args.resume_from_checkpoint
    if resume == "latest":
        resume = latest_checkpoint(args.output_dir)
    if resume:
        parser = SegformerForSemanticSegmentation.from_pretrained(resume, dtype=torch.float32)
    elif args.init_from:  # fine-tune a saved parser (a new optimizer and learning-rate schedule)
        parser = SegformerForSemanticSegmentation.from_pretrained(args.init_from, dtype=torch.float32)
    else:
        parser = make_face_parser(args.preset, seed=args.seed, image_size=images.shape[-1])
    parser.train()
    optimizer = torch.optim.AdamW(parser.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    n = len(images)
    perm, pos = torch.randperm(n, generator=generator), 0
    if resume:
        # everything random is restored (batch order, augmentation, dropout), so a resumed run equals an unbroken one
        state = torch.load(os.path.join(resume, "training_state.pt"), weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        perm, pos = state["perm"], int(state["pos"])
        start_step = int(state["step"])
        logger.info("resumed from %s at step %d", resume, start_step)
    logger.info("parser: %.2f M parameters, preset %s", sum(p.numel() for p in parser.parameters()) / 1e6, args.preset)

    use_bf16 = args.mixed_precision == "bf16"
    small_parts = [c for c in range(2, NUM_FACE_PART_LABELS)]
    t0 = time.time()
    running = 0.0
    step = start_step
    while step < args.max_train_steps:
        if pos + args.train_batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        idx = perm[pos : pos + args.train_batch_size]
        pos += args.train_batch_size
        x, y = augment(to_parser_pixels(images[idx]), labels[idx].long(), generator, max_shift=args.max_shift)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = parser(pixel_values=x).logits
        logits = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, weight=weights)
        if args.dice_weight > 0:
            loss = loss + args.dice_weight * soft_dice_loss(logits, y, small_parts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parser.parameters(), 1.0)
        optimizer.step()
        step += 1
        running += loss.item()
        if step % args.logging_steps == 0:
            elapsed = time.time() - t0
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.3f s/step",
                step,
                args.max_train_steps,
                running / args.logging_steps,
                _lr_at(step, args),
                elapsed / (step - start_step),
            )
            running = 0.0
        if args.checkpointing_steps and step % args.checkpointing_steps == 0 and step < args.max_train_steps:
            _save_checkpoint(
                args.output_dir,
                step,
                parser,
                optimizer,
                {"generator": generator.get_state(), "perm": perm, "pos": pos},
                args.checkpoints_total_limit,
            )
            metrics = evaluate_parser(parser, val_images, val_labels)
            logger.info("step %d validation IoU: %s", step, _fmt(metrics))
        if args.max_train_minutes and (time.time() - t0) / 60 > args.max_train_minutes:
            logger.warning("stopping at step %d: --max_train_minutes %.1f reached", step, args.max_train_minutes)
            break

    parser.eval()
    metrics = {
        "steps": step,
        "train_seconds": round(time.time() - t0, 1),
        "validation_iou": evaluate_parser(parser, val_images, val_labels),
    }
    try:
        test_images, test_labels = load_labelled_faces(args.data_dir, "test")
        metrics["test_iou"] = evaluate_parser(parser, test_images, test_labels)
    except FileNotFoundError:
        logger.info("no test split in %s", args.data_dir)
    metrics["args"] = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    save_parser(
        parser, args.output_dir, dtype=torch.float16 if args.save_dtype == "fp16" else torch.float32, metrics=metrics
    )
    logger.info("validation IoU: %s", _fmt(metrics["validation_iou"]))
    if "test_iou" in metrics:
        logger.info("test IoU: %s", _fmt(metrics["test_iou"]))
    logger.info("saved the parser to %s", args.output_dir)
    return metrics


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items())


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--mode", choices=["train", "attach", "templates"], default="train")
    p.add_argument(
        "--data_dir",
        default=default_data_dir(),
        help=f"utkface64-layout data (train.parquet/test.parquet or image folders); ${DATA_ENV} sets the default.",
    )
    # train
    p.add_argument("--output_dir", default="models/face-parser-64", help="where the trained parser is saved.")
    p.add_argument("--preset", choices=sorted(PARSER_PRESETS), default="small", help="parser architecture.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_train_steps", type=int, default=3000)
    p.add_argument("--max_train_minutes", type=float, default=None, help="stop early after this much wall time.")
    p.add_argument("--train_batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--lr_warmup_steps", type=int, default=100)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument(
        "--class_weight_power",
        type=float,
        default=0.3,
        help="cross-entropy class weights freq^-power (0: unweighted); helps the small eyes.",
    )
    p.add_argument("--dice_weight", type=float, default=0.5, help="weight of a soft Dice loss over the parts 2..7.")
    p.add_argument("--max_shift", type=int, default=3, help="random shift augmentation, pixels.")
    p.add_argument("--mixed_precision", choices=["no", "bf16"], default="no", help="bf16 autocast on CPU.")
    p.add_argument("--save_dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--max_train_samples", type=int, default=None)
    p.add_argument("--validation_size", type=int, default=256)
    p.add_argument("--logging_steps", type=int, default=50)
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'.")
    p.add_argument(
        "--init_from", default=None, help="start from a saved parser's weights (a second, fine-tuning stage)."
    )
    p.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    # attach / templates
    p.add_argument("--pipeline_dir", default=None, help="attach: the saved pipeline folder to update.")
    p.add_argument(
        "--parser_dir",
        default=None,
        help="attach: the saved parser (default: --output_dir); 'none' writes only the templates.",
    )
    p.add_argument(
        "--label_mapping",
        default="identity",
        help="attach: 'identity', 'celebamask-hq', or a JSON object {parser id: face part id}.",
    )
    p.add_argument("--parser_normalization", choices=["minus_one_one", "imagenet"], default="minus_one_one")
    p.add_argument("--parser_resolution", type=int, default=None)
    p.add_argument(
        "--concepts", default=None, help="templates: concepts (default: the pipeline's or eyes/nose/mouth)."
    )
    p.add_argument("--template_threshold", type=float, default=0.5)
    p.add_argument("--template_dilation", type=int, default=0)
    p.add_argument("--templates_out", default=None, help="templates: JSON output file (default: stdout).")
    args = p.parse_args(argv)
    if args.train_batch_size < 1 or args.max_train_steps < 1:
        p.error("--train_batch_size and --max_train_steps must be positive.")
    return args


def _label_mapping_arg(value: str):
    if value in LABEL_MAPPINGS:
        return LABEL_MAPPINGS[value]
    try:
        return {int(k): int(v) for k, v in json.loads(value).items()}
    except (ValueError, AttributeError):
        raise ValueError(
            f"--label_mapping must be one of {', '.join(LABEL_MAPPINGS)} or a JSON object like '{{\"4\": 4}}', got {value!r}."
        ) from None


def main(args: argparse.Namespace):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO, force=True)
    if args.mode == "train":
        return train(args)
    if args.mode == "templates":
        concepts = args.concepts
        if concepts is None and args.pipeline_dir:
            with open(os.path.join(args.pipeline_dir, "model_index.json")) as f:
                concepts = json.load(f).get("concepts")
        templates = compute_templates_from_data(
            args.data_dir, concepts, threshold=args.template_threshold, dilation=args.template_dilation
        )
        text = json.dumps(templates, indent=2)
        if args.templates_out:
            with open(args.templates_out, "w") as f:
                f.write(text + "\n")
            logger.info("wrote %d template masks to %s", len(templates), args.templates_out)
        else:
            print(text)
        return templates
    if not args.pipeline_dir:
        raise ValueError("--mode attach needs --pipeline_dir.")
    parser_dir = args.parser_dir or args.output_dir
    if parser_dir == "none":
        parser_dir = None
    templates = None
    if args.data_dir:
        with open(os.path.join(args.pipeline_dir, "model_index.json")) as f:
            concepts = json.load(f).get("concepts")
        templates = compute_templates_from_data(
            args.data_dir, concepts, threshold=args.template_threshold, dilation=args.template_dilation
        )
    index = attach_parser(
        args.pipeline_dir,
        parser_dir,
        templates=templates,
        label_mapping=_label_mapping_arg(args.label_mapping),
        normalization=args.parser_normalization,
        resolution=args.parser_resolution,
    )
    logger.info(
        "updated %s: parser=%s, templates for %s",
        args.pipeline_dir,
        index.get("parser"),
        sorted(index.get("concept_templates") or {}),
    )
    return index


if __name__ == "__main__":
    main(parse_args())

# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017): can a small CNN tell generated faces from real ones?

FID and KID compare Inception statistics; they barely move when every face has ghosted eyes or a doubled mouth.
A classifier trained on real vs generated faces sees such defects: its held-out accuracy is 0.5 when the two sets
are indistinguishable and approaches 1 as the generated faces become recognisable as generated.

The test here: balanced classes (both sets subsampled to the smaller count), stratified k-fold cross-validation (every
image is held out exactly once, predicted by a CNN trained on the other folds), accuracy over all held-out
predictions with a 95% Wilson interval and the one-sided binomial p-value against chance. Deterministic given the
seed (the global torch RNG is left untouched).
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

C2ST_FOLDS = 5
C2ST_EPOCHS = 10
C2ST_BATCH_SIZE = 32
C2ST_LEARNING_RATE = 1e-3
# Small sets train for more epochs: every fold's CNN takes at least this many Adam steps (10 epochs of 200 + 200 faces).
C2ST_MIN_STEPS = 100
# Below this many images per class the folds hold too few images to train or to score on: no test.
C2ST_MIN_PER_CLASS = 10
C2ST_METHOD = (
    "classifier two-sample test: real and generated faces subsampled to equal counts, stratified "
    f"{C2ST_FOLDS}-fold cross-validation; per fold a 4-layer CNN (stride-2 convolutions 16-32-64-64, batch norm, "
    f"global average pool, linear) trained {C2ST_EPOCHS} epochs (at least {C2ST_MIN_STEPS} steps) with Adam (lr {C2ST_LEARNING_RATE:g}, cosine decay, "
    f"batch {C2ST_BATCH_SIZE}, horizontal flips) on the other folds, predicting each held-out face and its mirror "
    "image; accuracy over all held-out predictions (0.5: "
    "indistinguishable, 1: every face recognised), 95% Wilson interval, one-sided binomial p-value against 0.5"
)


class C2STClassifier(nn.Module):
    """Real (0) vs generated (1) logit of images `(B, 3, H, W)` in [-1, 1]; any H, W >= 16.

    Four stride-2 convolutions (16, 32, 64, 64 channels) see pixel-level texture in the first layer and a face's
    layout (64 px -> 4 px) in the last; global average pooling and one linear layer. ~100k parameters."""

    def __init__(self, widths=(16, 32, 64, 64)):
        super().__init__()
        layers: List[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean((-2, -1)))[:, 0]


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> Optional[List[float]]:
    """95% Wilson score interval of a binomial proportion (None for 0 trials)."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def binomial_p_value(successes: int, trials: int) -> float:
    """One-sided P(X >= successes) for X ~ Binomial(trials, 0.5): the chance of this accuracy or more by luck."""
    from scipy.stats import binom

    return float(binom.sf(successes - 1, trials, 0.5))


def _as_float_images(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"The C2ST needs {name} as uint8 images (N, 3, H, W), got {shape}.")
    if min(images.shape[-2:]) < 16:
        raise ValueError(f"The C2ST needs images of at least 16x16 pixels, {name} are {tuple(images.shape[-2:])}.")
    return images.float() / 127.5 - 1


def _train_fold(
    x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float, generator: torch.Generator
) -> C2STClassifier:
    model = C2STClassifier()
    batches_per_epoch = math.ceil(len(x) / batch_size)
    epochs = max(epochs, math.ceil(C2ST_MIN_STEPS / batches_per_epoch))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    steps = epochs * batches_per_epoch
    # cosine decay to 0: the last epochs settle, so a fold's accuracy depends less on where training stopped
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # batch norm needs two images
                continue
            batch = x[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(batch), y[idx]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def _predict(model: C2STClassifier, images: torch.Tensor) -> torch.Tensor:
    """Probability of 'generated', averaged over the image and its mirror image (the CNN was trained on both)."""
    return torch.sigmoid((model(images) + model(images.flip(-1))) / 2)


def classifier_two_sample_test(
    real_uint8: torch.Tensor,
    fake_uint8: torch.Tensor,
    seed: int = 0,
    num_folds: int = C2ST_FOLDS,
    epochs: int = C2ST_EPOCHS,
    batch_size: int = C2ST_BATCH_SIZE,
    lr: float = C2ST_LEARNING_RATE,
) -> Dict[str, object]:
    """Held-out accuracy of small CNNs telling `fake_uint8` from `real_uint8` (see the module docstring).

    Args:
        real_uint8 (`torch.Tensor` of shape `(N_real, 3, H, W)`, uint8): real images.
        fake_uint8 (`torch.Tensor` of shape `(N_fake, 3, H, W)`, uint8): generated images, same H, W.
        seed (`int`): seeds the subsampling, the folds, the initialisation and the batches.
        num_folds (`int`): cross-validation folds (>= 2).
        epochs, batch_size, lr: training of each fold's CNN (Adam).

    Returns:
        `dict` with `accuracy` (over all `2 * num_per_class` held-out predictions), `ci95` (Wilson), `p_value`
        (one-sided binomial against 0.5), `fold_accuracies`, `num_per_class`, `num_folds`, `epochs`, `seed`,
        `seconds`, and `fake_scores` (`(num_per_class,)` held-out probability that each used generated image is
        generated, in the order of `fake_indices`, the indices into `fake_uint8`).
    """
    t0 = time.perf_counter()
    real = _as_float_images(real_uint8, "the real images")
    fake = _as_float_images(fake_uint8, "the generated images")
    if real.shape[-2:] != fake.shape[-2:]:
        raise ValueError(
            f"The C2ST compares images of one size; real are {tuple(real.shape[-2:])}, generated "
            f"{tuple(fake.shape[-2:])}. Resize one set first."
        )
    if num_folds < 2:
        raise ValueError(f"The C2ST needs at least 2 folds, got num_folds={num_folds}.")
    n = min(len(real), len(fake))
    if n < max(C2ST_MIN_PER_CLASS, num_folds):
        raise ValueError(
            f"The C2ST needs at least {max(C2ST_MIN_PER_CLASS, num_folds)} images per class, got {len(real)} real "
            f"and {len(fake)} generated."
        )
    rng = np.random.default_rng(seed)
    real_idx = np.sort(rng.choice(len(real), n, replace=False))
    fake_idx = np.sort(rng.choice(len(fake), n, replace=False))
    x = torch.cat([real[torch.from_numpy(real_idx)], fake[torch.from_numpy(fake_idx)]])
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    # stratified folds: each class permuted and cut into num_folds near-equal chunks
    fold_of = np.empty(2 * n, dtype=np.int64)
    for offset in (0, n):
        fold_of[offset + rng.permutation(n)] = np.arange(n) % num_folds
    fold_of = torch.from_numpy(fold_of)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    scores = torch.empty(2 * n)
    fold_accuracies = []
    with torch.random.fork_rng(devices=[]):  # nn.Module init draws from the global RNG: seed it, then restore it
        torch.manual_seed(int(rng.integers(2**31)))
        for k in range(num_folds):
            train, held = fold_of != k, fold_of == k
            model = _train_fold(x[train], y[train], epochs, batch_size, lr, generator)
            with torch.no_grad():
                scores[held] = torch.cat([_predict(model, chunk) for chunk in x[held].split(256)])
            fold_accuracies.append(float(((scores[held] > 0.5).float() == y[held]).float().mean()))
    correct = int(((scores > 0.5).float() == y).sum())
    return {
        "accuracy": correct / (2 * n),
        "ci95": wilson_interval(correct, 2 * n),
        "p_value": binomial_p_value(correct, 2 * n),
        "fold_accuracies": fold_accuracies,
        "num_per_class": int(n),
        "num_folds": int(num_folds),
        "epochs": int(epochs),
        "seed": int(seed),
        "seconds": time.perf_counter() - t0,
        "fake_scores": scores[n:].tolist(),
        "fake_indices": fake_idx.tolist(),
    }

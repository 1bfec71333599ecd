# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Seeded draws and confidence intervals: every random draw of the evaluation and every interval it reports."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

# Independent random streams for the seeded draws; element i of a stream depends only on (--seed, stream, i), so
# results do not depend on the batch size or the device, and every pipeline sees the same x_T.
SEED_STREAMS = {
    "pair_a": 0,
    "pair_b": 1,
    "resample": 2,
    "fid": 3,
    "attribution": 4,
    "attribution_baseline": 5,
    "emergence_a": 6,
    "emergence_b": 7,
}


BOOTSTRAP_RESAMPLES = 2000


ZERO_MEAN_FLOOR = 1e-6  # a baseline mean below this is 0 up to float error (a blended edit's locality): no ratio


# Below this many values no interval is reported: with skewed per-pair values (locality ratios are positive and
# right-skewed) no 95% interval of a mean from so few values covers anywhere near 95%.
CI_MIN_SAMPLES = 10


CI_METHOD = (
    f"95% studentized bootstrap (bootstrap-t) interval of the mean, {BOOTSTRAP_RESAMPLES} resamples; none below "
    f"{CI_MIN_SAMPLES} values. Ratios to the baseline: ratio of means over the pairs / samples both pipelines share "
    "(same seeds, paired), bootstrap-t on its logarithm with the delta-method standard error"
)


def derived_seed(seed: int, stream: str, index: int) -> int:
    """A 32-bit seed that depends only on (seed, stream, index)."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(SEED_STREAMS[stream], int(index)))
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def seeded_latents(latent_shape: Sequence[int], seed: int, stream: str, indices: Sequence[int]) -> torch.Tensor:
    """x_T `(len(indices), C, H, W)` on the CPU; element i is drawn from its own generator (see `derived_seed`)."""
    return torch.stack(
        [
            torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(derived_seed(seed, stream, i)))
            for i in indices
        ]
    )


def _bootstrap_t(estimate: float, se: float, estimates_b: np.ndarray, ses_b: np.ndarray) -> Optional[List[float]]:
    """95% studentized bootstrap interval from the resamples' estimates and standard errors (resamples whose standard
    error is 0, e.g. all draws of one value, carry no t and are dropped)."""
    if se == 0:
        return [estimate, estimate]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (estimates_b - estimate) / ses_b
    t = t[np.isfinite(t)]
    if t.size < BOOTSTRAP_RESAMPLES // 2:
        return None
    q_lo, q_hi = np.percentile(t, [2.5, 97.5])
    return [float(estimate - q_hi * se), float(estimate - q_lo * se)]


def mean_ci(values, seed: int = 0, ids: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """Mean, standard deviation and 95% confidence interval of per-unit values (see `CI_METHOD`): a studentized
    bootstrap (bootstrap-t), which corrects for the skew of the values; on skewed data its coverage is close to 95%
    at n = 30 where the percentile bootstrap covers ~91% (tests/test_bad_input.py measures it). No interval for fewer
    than `CI_MIN_SAMPLES` values.

    `ids` (one per value, e.g. the pair index) are kept under `"units"` so that `ratio_ci` can pair two pipelines'
    values; non-finite values are dropped and counted in `"n_dropped_nonfinite"`."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(v)
    if ids is not None and len(ids) != v.size:
        raise ValueError(f"mean_ci: {len(ids)} ids for {v.size} values.")
    units = None if ids is None else {"ids": [int(i) for i, f in zip(ids, finite) if f], "values": v[finite].tolist()}
    dropped = int((~finite).sum())
    v = v[finite]
    out: Dict[str, object] = {"mean": None, "ci95": None, "std": None, "n": int(v.size)}
    if dropped:
        out["n_dropped_nonfinite"] = dropped
    if units is not None:
        out["units"] = units
    if v.size == 0:
        return out
    out["mean"] = float(v.mean())
    if v.size == 1:
        return out
    out["std"] = float(v.std(ddof=1))
    if v.size < CI_MIN_SAMPLES:
        return out
    rng = np.random.default_rng(seed)
    draws = v[rng.integers(0, v.size, (BOOTSTRAP_RESAMPLES, v.size))]
    se_b = draws.std(1, ddof=1) / math.sqrt(v.size)
    out["ci95"] = _bootstrap_t(out["mean"], out["std"] / math.sqrt(v.size), draws.mean(1), se_b)
    return out


def ratio_ci(a: dict, b: dict, seed: int = 0) -> Optional[Dict[str, object]]:
    """Paired ratio of means mean(a) / mean(b) over the units (pairs, samples) both `mean_ci` results hold, with a 95%
    bootstrap-t interval on log(ratio) (delta-method standard error, pairs resampled together). `None` when the two
    share no unit; no interval below `CI_MIN_SAMPLES` shared units or for non-positive means."""
    ua, ub = (a or {}).get("units"), (b or {}).get("units")
    if not ua or not ub:
        return None
    vb_of = dict(zip(ub["ids"], ub["values"]))
    common = [(va, vb_of[i]) for i, va in zip(ua["ids"], ua["values"]) if i in vb_of]
    if not common:
        return None
    x, y = np.asarray(common, dtype=np.float64).T
    n = x.size
    out: Dict[str, object] = {"ratio": None, "ci95": None, "n": int(n)}
    if abs(y.mean()) < ZERO_MEAN_FLOOR:
        return out
    out["ratio"] = float(x.mean() / y.mean())
    if n < CI_MIN_SAMPLES or x.mean() <= 0 or y.mean() <= 0:
        return out

    def log_ratio_and_se(xs, ys):  # along the last axis
        mx, my = xs.mean(-1), ys.mean(-1)
        cov = ((xs - mx[..., None]) * (ys - my[..., None])).sum(-1) / (n - 1)
        var = xs.var(-1, ddof=1) / mx**2 + ys.var(-1, ddof=1) / my**2 - 2 * cov / (mx * my)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(mx / my), np.sqrt(np.maximum(var, 0) / n)

    est, se = log_ratio_and_se(x, y)
    idx = np.random.default_rng(seed).integers(0, n, (BOOTSTRAP_RESAMPLES, n))
    est_b, se_b = log_ratio_and_se(x[idx], y[idx])
    ci = _bootstrap_t(float(est), float(se), est_b, se_b)
    out["ci95"] = None if ci is None else [float(np.exp(ci[0])), float(np.exp(ci[1]))]
    return out


def attach_ratios(main: object, base: object, seed: int = 0) -> None:
    """Puts `ratio_ci(main stats, base stats)` as `"ratio_to_baseline"` into every `mean_ci` result of the `main`
    result tree that has per-unit values and a counterpart at the same place in `base`."""
    if isinstance(main, dict) and isinstance(base, dict):
        if "units" in main and "units" in base:
            main["ratio_to_baseline"] = ratio_ci(main, base, seed)
            return
        for key, value in main.items():
            if key in base:
                attach_ratios(value, base[key], seed)
    elif isinstance(main, list) and isinstance(base, list):
        for m, b in zip(main, base):
            attach_ratios(m, b, seed)

# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""The evaluation's figures: edit grids with CIELAB heatmaps, attribution matrices, leakage and emergence curves,
the real-photo strength sweep and sample grids."""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch

import pipeline_interpretable_ddpm as pid
from app_figures import draw_attribution_matrix, draw_leakage_curves
from evaluation.report import _plural


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, dpi: int = 150) -> str:
    """Writes the figure to `path` and closes it (pyplot keeps every figure it made open, and in memory, until
    then); returns `path` for `RunContext.figure`."""
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _delta_e(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """CIELAB colour difference Delta E (H, W) of two images (3, H, W) in [0, 1]."""
    return pid.difference_map(a[None], b[None], color_space="lab")[0].sqrt().numpy()


def _show(ax, image: torch.Tensor, title: str = ""):
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _heat(ax, de: np.ndarray, mask: torch.Tensor, vmax: float, title: str = ""):
    im = ax.imshow(de, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
    ax.contour(mask[0].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)
    return im


def plot_edit_grid(examples: Dict[str, List[dict]], path: str, title: str, kind: str) -> Optional[str]:
    """Rows = (concept, example); swap: A, B, A edited, dE_A, B edited, dE_B; resample/real: original, edited, dE."""
    rows = [(c, ex) for c, exs in examples.items() for ex in exs]
    if not rows:
        return None
    plt = _plt()
    if kind == "swap":
        cols = ["A", "B", "A with B's {c}", "ΔE Lab (A)", "B with A's {c}", "ΔE Lab (B)"]
        pairs = [("a", "edited_a"), ("b", "edited_b")]
    elif kind == "resample":
        cols = ["original", "{c} resampled", "ΔE Lab"]
        pairs = [("a", "edited_a")]
    else:
        cols = [
            "photo A",
            "reconstruction",
            "photo B (donor)",
            "A with B's {c}",
            "ΔE Lab (vs recon.)",
            "A, {c} resampled",
            "ΔE Lab (vs recon.)",
        ]
        pairs = [("reconstruction", "edited")] + [("reconstruction", "resampled")] * all(
            ex.get("resampled") is not None for _, ex in rows
        )
    des = [_delta_e(ex[o], ex[e]) for _, ex in rows for o, e in pairs]
    vmax = max(float(np.percentile(np.concatenate([d.ravel() for d in des]), 99.5)), 1e-6)
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(1.3 * len(cols) + 1.0, 1.35 * len(rows) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for r, (c, ex) in enumerate(rows):
        t = [s.format(c=c) for s in cols]
        if kind == "swap":
            _show(axes[r, 0], ex["a"], t[0])
            _show(axes[r, 1], ex["b"], t[1])
            _show(axes[r, 2], ex["edited_a"], t[2])
            im = _heat(axes[r, 3], _delta_e(ex["a"], ex["edited_a"]), ex["mask"], vmax, t[3])
            _show(axes[r, 4], ex["edited_b"], t[4])
            _heat(axes[r, 5], _delta_e(ex["b"], ex["edited_b"]), ex["mask"], vmax, t[5])
        elif kind == "resample":
            _show(axes[r, 0], ex["a"], t[0])
            _show(axes[r, 1], ex["edited_a"], t[1])
            im = _heat(axes[r, 2], _delta_e(ex["a"], ex["edited_a"]), ex["mask"], vmax, t[2])
        else:
            _show(axes[r, 0], ex["input"], t[0])
            _show(axes[r, 1], ex["reconstruction"], t[1])
            _show(axes[r, 2], ex["donor"], t[2])
            _show(axes[r, 3], ex["edited"], t[3])
            im = _heat(axes[r, 4], _delta_e(ex["reconstruction"], ex["edited"]), ex["mask"], vmax, t[4])
            if ex.get("resampled") is not None:
                _show(axes[r, 5], ex["resampled"], t[5])
                _heat(axes[r, 6], _delta_e(ex["reconstruction"], ex["resampled"]), ex["mask"], vmax, t[6])
            else:
                axes[r, 5].axis("off")
                axes[r, 6].axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="ΔE (CIELAB)")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_strength_sweep(sweeps: Dict[str, List[dict]], path: str) -> Optional[str]:
    """Real photos: swap / resample locality (RGB, paper normalisation, log scale) and reconstruction PSNR over the
    inversion strength, one colour per concept, one line style per pipeline."""
    sweeps = {n: sw for n, sw in sweeps.items() if sw}
    if not sweeps:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    styles = ["-", "--", ":", "-."]
    for (name, sw), ls in zip(sweeps.items(), styles):
        xs = [p["strength"] for p in sw]
        for ax, edit in zip(axes[:2], ("swap", "resample")):
            for i, c in enumerate(sw[0][edit]):
                ax.plot(xs, [p[edit].get(c, np.nan) for p in sw], ls, marker="o", color=f"C{i}", label=f"{name}: {c}")
        axes[2].plot(xs, [p["reconstruction_psnr"] for p in sw], ls, marker="o", color="k", label=name)
    for ax, edit in zip(axes[:2], ("swap", "resample")):
        ax.set_yscale("log")
        ax.set_xlabel("inversion strength (t0 / T)")
        ax.set_ylabel("locality MSE_out / MSE_in (RGB, paper)")
        ax.set_title(f"real photos: {edit} locality (lower = more local)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6)
    axes[2].set_xlabel("inversion strength (t0 / T)")
    axes[2].set_ylabel("reconstruction PSNR (dB)")
    axes[2].set_title("unedited reconstruction", fontsize=9)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    n = next(iter(sweeps.values()))[0]["num_pairs"]
    fig.suptitle(f"Real test faces, {_plural(n, 'pair')} per point", fontsize=9)
    return _save(fig, path, dpi=130)


def plot_attribution_matrices(
    att: Dict[str, object],
    path: str,
    title: str,
    num_panels: int = 4,
    xlabel: str = "input region of x_t",
    ylabel: str = "output region of ε",
    panel_title: str = "t = {}",
) -> Optional[str]:
    """Row-normalised mean |phi| (share of output region k's attribution from input region j) at a few timesteps."""
    if not att.get("num_samples"):
        return None
    plt = _plt()
    ts = att["timesteps"]
    picks = sorted(set(np.linspace(0, len(ts) - 1, min(num_panels, len(ts))).round().astype(int).tolist()))
    names = att["region_names"]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks) + 0.8, 3.0), squeeze=False, layout="constrained")
    for panel, (ax, i) in enumerate(zip(axes[0], picks)):
        m = np.asarray(att["attribution_share"][i])
        im = draw_attribution_matrix(
            ax, m, names, 1.0, panel_title.format(ts[i]), xlabel, ylabel if panel == 0 else None, 7, "{:.2f}"
        )
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of |φ|")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_leakage_curves(attributions: Dict[str, Dict[str, object]], path: str) -> Optional[str]:
    """Left: overall leakage over t (mean and 95% CI) per pipeline; right: per-region leakage over t."""
    attributions = {n: a for n, a in attributions.items() if a.get("num_samples")}
    if not attributions:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = ["-", "--", ":", "-."]
    curves, bands = {}, {}
    for i, (name, att) in enumerate(attributions.items()):
        ts = [p["t"] for p in att["leakage_curve"]]
        curves[name] = (ts, [p["mean"] for p in att["leakage_curve"]])
        cis = [p["ci95"] for p in att["leakage_curve"]]
        if all(c is not None for c in cis):
            bands[name] = ([c[0] for c in cis], [c[1] for c in cis])
        for j, (region, curve) in enumerate(att["region_leakage_curve"].items()):
            ax2.plot(
                ts,
                curve,
                linestyle=styles[i % len(styles)],
                color=f"C{j}",
                marker="o",
                ms=2,
                label=f"{name}: {region}",
            )
    draw_leakage_curves(ax1, curves, bands)
    ax1.set_title("leakage (off-diagonal share of |φ|)", fontsize=9)
    ax2.set_xlabel("timestep t (generation runs left to right)", fontsize=8)
    ax2.tick_params(labelsize=8)
    ax2.invert_xaxis()
    ax2.set_ylim(bottom=0)
    ax2.set_title("per output region", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_end_to_end_matrices(e2e: Dict[str, Dict[str, object]], path: str) -> Optional[str]:
    """Row-normalised mean |phi| of the end-to-end game (x_T regions -> final image regions), one panel per pipeline."""
    e2e = {n: a for n, a in e2e.items() if a.get("num_samples")}
    if not e2e:
        return None
    att = {
        "num_samples": 1,
        "timesteps": list(e2e),
        "region_names": next(iter(e2e.values()))["region_names"],
        "attribution_share": [a["attribution_share"] for a in e2e.values()],
    }
    return plot_attribution_matrices(
        att,
        path,
        "end-to-end attribution: mean share of |φ| (row = output region)",
        num_panels=len(e2e),
        xlabel="input region of x_T",
        ylabel="output region of the final image",
        panel_title="{}",
    )


def plot_emergence_curves(emergences: Dict[str, Dict[str, object]], path: str) -> Optional[str]:
    """Fraction of the full swap's change that still happens when the swap is made at step s, per mode (panels),
    concept (colour) and pipeline (line style); the dotted line is one half (the emergence step)."""
    emergences = {n: e for n, e in emergences.items() if e.get("timesteps")}
    if not emergences:
        return None
    plt = _plt()
    modes = next(iter(emergences.values()))["modes"]
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.6), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, mode in zip(axes[0], modes):
        for i, (name, em) in enumerate(emergences.items()):
            for j, (concept, res) in enumerate(em.get(mode, {}).items()):
                curve = res["curve"]
                if not curve:
                    continue
                ax.plot(
                    [p["step"] for p in curve],
                    [p["mean"] for p in curve],
                    linestyle=styles[i % len(styles)],
                    color=f"C{j}",
                    marker="o",
                    ms=3,
                    label=f"{name}: {concept}",
                )
        ax.axhline(0.5, color="k", linestyle=":", lw=0.8)
        ax.set_xlabel(f"sampling step s at which the region is swapped (0 = x_T, of {em['num_inference_steps']})")
        ax.set_ylabel("share of the full swap's change")
        ax.set_title(f"mode = {mode}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def save_image_grid(images_uint8: torch.Tensor, path: str, ncol: int = 8) -> str:
    import PIL.Image

    n, c, h, w = images_uint8.shape
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    grid = torch.zeros(c, nrow * h, ncol * w, dtype=torch.uint8)
    for i, im in enumerate(images_uint8):
        r, q = divmod(i, ncol)
        grid[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = im
    PIL.Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path

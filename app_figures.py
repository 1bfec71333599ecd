# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Pictures of the Space: tensors and numbers from the pipeline turned into display images (no model calls).

Faces are shown upscaled by an integer factor (nearest neighbour) so 64x64 pixels stay visible; masks are tinted and
outlined; CIELAB distances become inferno heatmaps; Shapley matrices and leakage curves are matplotlib figures
rendered off-screen (Agg) into arrays. The matrix and curve drawing (`draw_attribution_matrix`,
`draw_leakage_curves`) is shared with the evaluation's figures (`evaluation/figures.py`), so both show the same figure.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DISPLAY_SIZE = 256  # faces are shown (and returned by the API) upscaled to about this size, nearest neighbour
MASK_COLOR = np.array([1.0, 0.15, 0.15])
OUTLINE_COLOR = np.array([0.0, 0.9, 1.0])


def display_scale(height: int) -> int:
    """The integer upscaling factor of an image `height` pixels high."""
    return max(1, DISPLAY_SIZE // height)


def to_display(image: np.ndarray) -> np.ndarray:
    """`(H, W, 3)` float in [0, 1] -> uint8 upscaled by an integer factor (nearest) so 64x64 faces are visible."""
    s = display_scale(image.shape[0])
    big = np.repeat(np.repeat(np.asarray(image, dtype=np.float32), s, 0), s, 1)
    return (big.clip(0, 1) * 255).round().astype(np.uint8)


def upscale_mask(mask: np.ndarray) -> np.ndarray:
    """A boolean `(H, W)` mask at display size (the factor of `to_display`)."""
    s = display_scale(mask.shape[0])
    return np.repeat(np.repeat(mask.astype(bool), s, 0), s, 1)


def outline(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary of a boolean mask."""
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The face with the mask tinted red and outlined, uint8 at display size."""
    face = to_display(image).astype(np.float32) / 255
    big = upscale_mask(mask)
    face[big] = 0.55 * face[big] + 0.45 * MASK_COLOR
    face[outline(big)] = OUTLINE_COLOR
    return (face * 255).round().astype(np.uint8)


def heatmap(delta_e: np.ndarray, mask: np.ndarray, vmax: float) -> np.ndarray:
    """CIELAB distance map `(H, W)` -> inferno colour image at display size, the edited region outlined in cyan."""
    from matplotlib import colormaps

    rgb = colormaps["inferno"](np.clip(delta_e / max(vmax, 1e-6), 0, 1))[..., :3]
    big = to_display(rgb).astype(np.float32) / 255
    big[outline(upscale_mask(mask))] = OUTLINE_COLOR
    return (big * 255).round().astype(np.uint8)


def figure_to_array(fig: Figure) -> np.ndarray:
    """A matplotlib figure rendered off-screen, `(H, W, 3)` uint8."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def draw_attribution_matrix(
    ax,
    matrix: np.ndarray,
    names: List[str],
    vmax: float,
    title: str,
    input_label: str,
    output_label: Optional[str],
    fontsize: int = 8,
    value_format: str = "{:.2g}",
):
    """A K x K |Shapley| matrix (rows: output region k, columns: input region j) on a matplotlib axis, each cell
    annotated; the Space's and the evaluation's attribution figures. Returns the image (for a colour bar)."""
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(vmax, 1e-12))
    k = len(names)
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel(input_label, fontsize=fontsize)
    if output_label:
        ax.set_ylabel(output_label, fontsize=fontsize)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                value_format.format(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize - 1,
                color="white" if matrix[i, j] < 0.6 * vmax else "black",
            )
    ax.set_title(title, fontsize=fontsize + 1)
    return im


def draw_leakage_curves(
    ax,
    curves: Dict[str, Tuple[List[int], List[float]]],
    bands: Optional[Dict[str, Tuple[List[float], List[float]]]] = None,
    marker_t: Optional[int] = None,
    fontsize: int = 8,
) -> None:
    """Leakage over the sampling timesteps on a matplotlib axis, one line per label (generation runs left to right, t
    from T down to 0), optionally with a shaded band per label (e.g. a 95% interval) and a dashed line at `marker_t`;
    the Space's and the evaluation's leakage figures."""
    for label, (ts, leak) in curves.items():
        line = ax.plot(ts, leak, marker="o", markersize=3, label=label)[0]
        if bands and label in bands:
            ax.fill_between(ts, *bands[label], color=line.get_color(), alpha=0.2)
    top = max([max(leak) for _, leak in curves.values() if leak] + [0.0])
    if bands:
        top = max([top] + [max(hi) for _, hi in bands.values() if hi])
    if marker_t is not None:
        ax.axvline(marker_t, color="gray", linestyle="--", linewidth=1)
    ax.invert_xaxis()
    ax.set_xlabel("timestep t (generation runs left to right)", fontsize=fontsize)
    ax.set_ylabel("leakage (off-diagonal share of |phi|)", fontsize=fontsize)
    ax.set_ylim(0, min(1.0, 1.15 * top + 0.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize)
    ax.tick_params(labelsize=fontsize)


def attribution_figure(
    matrix: np.ndarray,
    names: List[str],
    title: str,
    vmax: float,
    input_label: str = "input region j of x_t",
    output_label: str = "output region k of noise",
) -> np.ndarray:
    """K x K |Shapley| matrix (rows: output region k, columns: input region j) as an annotated image."""
    fig = Figure(figsize=(4.0, 3.6), dpi=100)
    ax = fig.add_subplot(111)
    im = draw_attribution_matrix(ax, matrix, names, vmax, title, input_label, output_label)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format="%.2g")  # no offset text over the title
    fig.tight_layout()
    return figure_to_array(fig)


def leakage_figure(curves: Dict[str, Tuple[List[int], List[float]]], marker_t: Optional[int]) -> np.ndarray:
    """Leakage over the sampling timesteps (generation runs left to right, t from T down to 0)."""
    fig = Figure(figsize=(5.2, 3.0), dpi=100)
    draw_leakage_curves(fig.add_subplot(111), curves, marker_t=marker_t)
    fig.tight_layout()
    return figure_to_array(fig)

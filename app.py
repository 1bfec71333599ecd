# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Gradio Space: interactive region edits on an interpretable face DDPM.

Run locally (offline, on the committed weights):

    python app.py                                   # models/interpretable-ddpm-faces64 (+ the baseline if present)
    python app.py --model <dir or Hub id> --baseline <dir or Hub id> --steps 25 --port 7860

or set `INTERPRETABLE_DDPM_MODEL` / `INTERPRETABLE_DDPM_BASELINE`. The model is loaded once at start; this file only
composes the UI. Every edit, mask, locality number, colour difference and attribution comes from the pipeline
(`pipeline_interpretable_ddpm.py`); the helpers here only turn tensors into pictures.

Every event has an `api_name`, so the Space is scriptable with `gradio_client`:

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    client.predict(3, 7, 25, False, api_name="/generate")
    client.predict("eyes", 0, None, 25, False, api_name="/swap")

The faces of a session (their x_T, the images they render to) live in a `gr.State`, so edits reuse them; a
`gradio_client.Client` keeps its own session, so consecutive calls from one client see the same faces.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
PIPELINE_FILE = os.path.join(ROOT, "pipeline_interpretable_ddpm.py")
DEFAULT_MODEL = "models/interpretable-ddpm-faces64"
DEFAULT_BASELINE = "models/ddpm-faces64-baseline"
MODEL_ENV = "INTERPRETABLE_DDPM_MODEL"
BASELINE_ENV = "INTERPRETABLE_DDPM_BASELINE"

DEFAULT_STEPS = 25
MAX_STEPS = 200
MAX_ATTRIBUTION_TIMESTEPS = 25
MAX_FILE_SIZE = "10mb"  # uploads over this are refused by the server before they reach a handler
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size limit (a small PNG can decode to gigabytes)
DISPLAY_SIZE = 256  # faces are shown (and returned by the API) upscaled to about this size, nearest neighbour
MAX_SEED = 2**63 - 1
PAINTED = "painted"
MASK_COLOR = np.array([1.0, 0.15, 0.15])
OUTLINE_COLOR = np.array([0.0, 0.9, 1.0])

# Keyword arguments for `demo.launch` that belong to the app (tests launch with these too).
LAUNCH_KWARGS = dict(max_file_size=MAX_FILE_SIZE, show_error=True)


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------
def resolve_model_path(name_or_path: str) -> str:
    """A local folder (absolute, relative to the working directory or to this file) or, failing that, a Hub id."""
    for candidate in (name_or_path, os.path.join(ROOT, name_or_path)):
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return name_or_path


def _is_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.startswith("models/") or name.count("/") != 1


def load_pipeline(name_or_path: str):
    """Loads an `InterpretableDDPMPipeline` from a folder or Hub id, in float32 on the CPU."""
    from diffusers import DiffusionPipeline

    path = resolve_model_path(name_or_path)
    if not os.path.isdir(path) and _is_local_path(path):
        raise FileNotFoundError(f"Model folder '{name_or_path}' does not exist.")
    try:
        pipe = DiffusionPipeline.from_pretrained(path, custom_pipeline=PIPELINE_FILE, trust_remote_code=True)
    except OSError as err:
        raise OSError(
            f"Could not load the pipeline '{name_or_path}': {err}. Without internet only local folders work."
        ) from err
    for method in ("swap_regions", "resample_region", "invert", "attribute", "concept_mask"):
        if not hasattr(pipe, method):
            raise ValueError(
                f"'{name_or_path}' loaded as {type(pipe).__name__}, which has no `{method}`; the app needs an "
                "InterpretableDDPMPipeline (see pipeline_interpretable_ddpm.py)."
            )
    pipe.to("cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def find_default_model() -> Optional[str]:
    """The default model folder, or else any interpretable pipeline committed under models/ (not the baseline)."""
    if os.path.isdir(os.path.join(ROOT, DEFAULT_MODEL)):
        return os.path.join(ROOT, DEFAULT_MODEL)
    models_dir = os.path.join(ROOT, "models")
    if os.path.isdir(models_dir):
        for name in sorted(os.listdir(models_dir)):
            index = os.path.join(models_dir, name, "model_index.json")
            if name != os.path.basename(DEFAULT_BASELINE) and os.path.isfile(index):
                with open(index) as f:
                    if "InterpretableDDPMPipeline" in json.dumps(json.load(f).get("_class_name")):
                        return os.path.join(models_dir, name)
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Tensors -> pictures (display only)
# ----------------------------------------------------------------------------------------------------------------------
def _display_scale(height: int) -> int:
    return max(1, DISPLAY_SIZE // height)


def to_display(image: np.ndarray) -> np.ndarray:
    """`(H, W, 3)` float in [0, 1] -> uint8 upscaled by an integer factor (nearest) so 64x64 faces are visible."""
    s = _display_scale(image.shape[0])
    big = np.repeat(np.repeat(np.asarray(image, dtype=np.float32), s, 0), s, 1)
    return (big.clip(0, 1) * 255).round().astype(np.uint8)


def _upscale_mask(mask: np.ndarray) -> np.ndarray:
    s = _display_scale(mask.shape[0])
    return np.repeat(np.repeat(mask.astype(bool), s, 0), s, 1)


def _outline(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary of a boolean mask."""
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The face with the mask tinted red and outlined, uint8 at display size."""
    face = to_display(image).astype(np.float32) / 255
    big = _upscale_mask(mask)
    face[big] = 0.55 * face[big] + 0.45 * MASK_COLOR
    face[_outline(big)] = OUTLINE_COLOR
    return (face * 255).round().astype(np.uint8)


def heatmap(delta_e: np.ndarray, mask: np.ndarray, vmax: float) -> np.ndarray:
    """CIELAB distance map `(H, W)` -> inferno colour image at display size, the edited region outlined in cyan."""
    from matplotlib import colormaps

    rgb = colormaps["inferno"](np.clip(delta_e / max(vmax, 1e-6), 0, 1))[..., :3]
    big = to_display(rgb).astype(np.float32) / 255
    big[_outline(_upscale_mask(mask))] = OUTLINE_COLOR
    return (big * 255).round().astype(np.uint8)


def _figure_to_array(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def attribution_figure(matrix: np.ndarray, names: List[str], title: str, vmax: float) -> np.ndarray:
    """K x K |Shapley| matrix (rows: output region k, columns: input region j) as an annotated image."""
    fig = Figure(figsize=(4.0, 3.6), dpi=100)
    ax = fig.add_subplot(111)
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(vmax, 1e-12))
    k = len(names)
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("input region j of x_t", fontsize=8)
    ax.set_ylabel("output region k of noise", fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]:.2g}", ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < 0.6 * vmax else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format="%.2g")  # no offset text over the title
    fig.tight_layout()
    return _figure_to_array(fig)


def leakage_figure(curves: Dict[str, Tuple[List[int], List[float]]], marker_t: Optional[int]) -> np.ndarray:
    """Leakage over the DDIM timesteps (generation runs left to right, t from T down to 0)."""
    fig = Figure(figsize=(5.2, 3.0), dpi=100)
    ax = fig.add_subplot(111)
    for label, (ts, leak) in curves.items():
        ax.plot(ts, leak, marker="o", markersize=3, label=label)
    top = max([max(leak) for _, leak in curves.values() if leak] + [0.0])
    if marker_t is not None:
        ax.axvline(marker_t, color="gray", linestyle="--", linewidth=1)
    ax.invert_xaxis()
    ax.set_xlabel("timestep t (generation runs left to right)", fontsize=8)
    ax.set_ylabel("leakage (off-diagonal share of |phi|)", fontsize=8)
    ax.set_ylim(0, min(1.0, 1.15 * top + 0.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _figure_to_array(fig)


# ----------------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------------
def user_errors(fn):
    """Turns the pipeline's ValueErrors (and bad files) into a `gr.Error` the user sees; the app keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError) as err:
            raise gr.Error(str(err)) from err

    return wrapper


def check_seed(seed: Any, name: str = "seed") -> int:
    if seed is None or isinstance(seed, bool):
        raise gr.Error(f"The {name} must be an integer between 0 and {MAX_SEED}.")
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise gr.Error(f"The {name} must be an integer, got {seed!r}.") from None
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_SEED:
        raise gr.Error(f"The {name} must be an integer between 0 and {MAX_SEED}, got {seed!r}.")
    return int(value)


def check_steps(steps: Any) -> int:
    try:
        value = float(steps)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value != int(value) or not 1 <= value <= MAX_STEPS:
        raise gr.Error(f"Steps must be an integer between 1 and {MAX_STEPS}, got {steps!r}.")
    return int(value)


def load_upload(path: Optional[str], resolution: Tuple[int, int]) -> Tuple[np.ndarray, str]:
    """Opens an uploaded file as an RGB face at the model resolution (centre square crop, bicubic resize).

    Returns the image `(H, W, 3)` float in [0, 1] and a note saying what was done to it."""
    if not path:
        raise gr.Error("Upload a face image first (PNG or JPEG).")
    if not os.path.isfile(path):
        raise gr.Error("The uploaded file could not be found on the server; upload it again.")
    try:
        with PIL.Image.open(path) as im:
            w, h = im.size  # read from the header, before decoding the pixels
            if w * h > MAX_UPLOAD_PIXELS:
                raise gr.Error(
                    f"The image is {w}x{h} pixels; the limit is {MAX_UPLOAD_PIXELS // 1_000_000} megapixels. "
                    "Crop it around the face first."
                )
            im = im.convert("RGB")
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as err:
        raise gr.Error(f"The uploaded file is not an image the server can read ({type(err).__name__}).") from err
    except PIL.Image.DecompressionBombError as err:
        raise gr.Error("The image is too large to decode safely; crop it around the face first.") from err
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    crop = im.crop((left, top, left + side, top + side))
    rh, rw = resolution
    small = crop.resize((rw, rh), PIL.Image.BICUBIC)
    note = (
        f"Your {w}x{h} image was centre-cropped to {side}x{side} and resized to the model's {rw}x{rh} (bicubic). "
        "The model only knows aligned, centred face crops like its training faces, so crop tightly around the "
        "face for a faithful inversion."
        if (w, h) != (rw, rh)
        else f"Your image is already {rw}x{rh}, the model's resolution."
    )
    return np.asarray(small, dtype=np.float32) / 255.0, note


# ----------------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class SpaceModels:
    """The pipelines the Space serves: the interpretable one and, optionally, a plain-DDPM baseline."""

    main: Any
    baseline: Any = None
    main_name: str = "interpretable"
    baseline_name: str = "baseline"
    default_steps: int = DEFAULT_STEPS
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        # The locality metric and colour difference come from the loaded pipeline's own module.
        self.lib = inspect.getmodule(type(self.main))
        if self.baseline is not None and self.baseline.resolution != self.main.resolution:
            raise ValueError(
                f"The baseline's resolution {self.baseline.resolution} differs from the model's {self.main.resolution}."
            )

    def pipes(self, compare: bool) -> Dict[str, Any]:
        out = {"main": self.main}
        if compare and self.baseline is not None:
            out["baseline"] = self.baseline
        return out

    @property
    def concepts(self) -> List[str]:
        return list(self.main.concepts)

    @property
    def resolution(self) -> Tuple[int, int]:
        return tuple(self.main.resolution)

    def label(self, key: str) -> str:
        return self.main_name if key == "main" else self.baseline_name


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy()


def _pt(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def _hwc(image_bchw: torch.Tensor) -> np.ndarray:
    return _np(image_bchw[0].permute(1, 2, 0))


def _chw(image_hwc: np.ndarray) -> torch.Tensor:
    return _pt(image_hwc).permute(2, 0, 1)[None]


class SpaceApp:
    """Typed handlers of the Space. Session state (`faces`) is a plain dict of numpy arrays:

    `{"A": slot, "B": slot, "edit": {"A": slot, "B": slot | None} | None}`, where a slot is
    `{"source": str, "latents": {model: (C, H, W) | None}, "input": (H, W, 3) | None, "inv_steps": {model: int},
    "cache": {"model@steps": (H, W, 3) image}}` (`input` is an uploaded face, inverted lazily per model and steps).
    """

    def __init__(self, models: SpaceModels):
        self.models = models

    # -- faces -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _new_slot(
        source: str, latents: Dict[str, np.ndarray], input_image: Optional[np.ndarray] = None, clip_sample=None
    ) -> dict:
        # x_T of an uploaded face (and of edits made from one) is rendered unclipped: DDIM inversion is exact only
        # for unclipped DDIM (pipe.invert); generated faces use the scheduler's own setting (None).
        clip_sample = False if input_image is not None else clip_sample
        return {"source": source, "latents": dict(latents), "input": input_image, "inv_steps": {}, "cache": {},
                "clip_sample": clip_sample}

    @staticmethod
    def _clip_sample(*slots: dict):
        """Rendering setting for an edit of these faces: unclipped as soon as one of them came from an upload."""
        return False if any(slot.get("clip_sample") is False for slot in slots) else None

    def _face(self, slot: dict, key: str, steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """x_T `(1, C, H, W)` and image `(1, 3, H, W)` in [0, 1] of a face slot under model `key` at `steps`."""
        pipe = self.models.pipes(True)[key]
        if slot["input"] is not None and slot["inv_steps"].get(key) != steps:
            # An uploaded face: its x_T depends on the model and the number of steps, so invert for this pair.
            inv = pipe.invert(_chw(slot["input"]), num_inference_steps=steps)
            slot["latents"][key] = _np(inv.latents[0])
            slot["inv_steps"][key] = steps
            slot["cache"].pop(f"{key}@{steps}", None)
        latents = slot["latents"].get(key)
        if latents is None:  # e.g. a kept edit made without the baseline: x_T live in the same space
            latents = slot["latents"]["main"]
        cache_key = f"{key}@{steps}"
        if cache_key not in slot["cache"]:
            out = pipe(latents=_pt(latents)[None], num_inference_steps=steps, output_type="pt",
                       clip_sample=slot.get("clip_sample"))
            slot["cache"][cache_key] = _hwc(out.images)
        return _pt(latents)[None], _chw(slot["cache"][cache_key])

    @staticmethod
    def _require_faces(faces: Optional[dict], need_b: bool = False) -> dict:
        if not faces or faces.get("A") is None:
            raise gr.Error("Generate faces A and B (or invert an uploaded face) first.")
        if need_b and faces.get("B") is None:
            raise gr.Error("A swap needs face B too: generate faces A and B first.")
        return faces

    def _editor_value(self, image: np.ndarray) -> dict:
        bg = PIL.Image.fromarray(to_display(image))
        return {"background": bg, "layers": [], "composite": bg}

    # -- masks -----------------------------------------------------------------------------------------------------
    def _painted_mask(self, editor: Optional[dict]) -> torch.Tensor:
        layers = [] if not editor else [layer for layer in (editor.get("layers") or []) if layer is not None]
        alpha = None
        for layer in layers:
            layer = np.asarray(layer)
            a = layer[..., 3] if layer.ndim == 3 and layer.shape[-1] == 4 else (layer.reshape(*layer.shape[:2], -1).max(-1))
            alpha = a if alpha is None else np.maximum(alpha, a)
        if alpha is None or alpha.max() == 0:
            raise gr.Error("The painted mask is empty: choose the brush and paint over the region to edit first.")
        mask = self.models.lib.to_mask_tensor(alpha.astype(np.float32) / 255.0, 1, self.models.resolution)
        if mask.sum() == 0:
            raise gr.Error(
                "The painted strokes are too thin to cover a whole pixel of the model's "
                f"{self.models.resolution[0]}x{self.models.resolution[1]} image; paint with a bigger brush."
            )
        return mask

    def _mask(self, key: str, region: str, dilation: int, editor: Optional[dict], image: torch.Tensor) -> torch.Tensor:
        """`(1, 1, H, W)` mask of `region` on `image` (model `key`'s own concept mask), or the painted mask."""
        dilation = int(dilation or 0)
        if not 0 <= dilation <= 8:
            raise gr.Error(f"Dilation must be between 0 and 8 pixels, got {dilation}.")
        if region == PAINTED:
            mask = self._painted_mask(editor)
            return self.models.lib.dilate_masks(mask, dilation) if dilation else mask
        if region not in self.models.concepts:
            raise gr.Error(f"Unknown region '{region}'; choose one of {', '.join(self.models.concepts + [PAINTED])}.")
        pipe = self.models.pipes(True)[key]
        try:
            mask = pipe.concept_mask(image * 2 - 1, region, dilation=dilation, is_latents=False)
        except ValueError:
            if key == "main":
                raise
            # A baseline without parser or templates: use the interpretable model's mask of the same x_T.
            mask = self.models.main.concept_mask(image * 2 - 1, region, dilation=dilation, is_latents=False)
        if mask.sum() == 0:
            raise gr.Error(f"No '{region}' pixels were found on this face; paint the region instead.")
        return mask.float().cpu()

    # -- handlers --------------------------------------------------------------------------------------------------
    @user_errors
    def random_seeds(self) -> Tuple[int, int]:
        return secrets.randbelow(2**31), secrets.randbelow(2**31)

    @user_errors
    def generate(
        self, seed_a: float, seed_b: float, steps: float, compare: bool, progress=gr.Progress()
    ) -> Tuple[np.ndarray, np.ndarray, dict, dict, str]:
        """Faces A and B from two seeds (one DDIM batch per model); returns images, the editor, the state, info."""
        seed_a, seed_b, steps = check_seed(seed_a, "seed A"), check_seed(seed_b, "seed B"), check_steps(steps)
        pipes = self.models.pipes(compare)
        faces = {"A": None, "B": None, "edit": None}
        with self.models.lock:
            progress(0.05, desc="drawing x_T")
            generators = [torch.Generator("cpu").manual_seed(s) for s in (seed_a, seed_b)]
            out = self.models.main(batch_size=2, generator=generators, num_inference_steps=steps, output_type="pt")
            latents = _np(out.latents)
            for i, (name, seed) in enumerate((("A", seed_a), ("B", seed_b))):
                faces[name] = self._new_slot(f"seed {seed}", {"main": latents[i]})
                faces[name]["cache"][f"main@{steps}"] = _hwc(out.images[i : i + 1])
            if "baseline" in pipes:
                progress(0.5, desc="baseline model")
                out_b = self.models.baseline(latents=out.latents, num_inference_steps=steps, output_type="pt")
                for i, name in enumerate("AB"):
                    faces[name]["latents"]["baseline"] = latents[i]
                    faces[name]["cache"][f"baseline@{steps}"] = _hwc(out_b.images[i : i + 1])
        img_a, img_b = faces["A"]["cache"][f"main@{steps}"], faces["B"]["cache"][f"main@{steps}"]
        info = f"Face A: seed **{seed_a}**, face B: seed **{seed_b}**, {steps} DDIM steps (eta = 0, reproducible)."
        return to_display(img_a), to_display(img_b), self._editor_value(img_a), faces, info

    @user_errors
    def show_mask(
        self, region: str, dilation: float, editor: Optional[dict], steps: float, faces: Optional[dict]
    ) -> Tuple[np.ndarray, str]:
        """Face A with the chosen region (concept mask or painted) as a red overlay."""
        faces, steps = self._require_faces(faces), check_steps(steps)
        with self.models.lock:
            _, image = self._face(faces["A"], "main", steps)
            mask = self._mask("main", region, dilation, editor, image)
        pixels = int(mask.sum())
        h, w = self.models.resolution
        return mask_overlay(_hwc(image), _np(mask[0, 0]) > 0.5), (
            f"Region **{region}** on face A: {pixels} of {h * w} pixels ({100 * pixels / (h * w):.1f}%)."
        )

    def _edit_outputs(self, results: Dict[str, dict], steps: int) -> list:
        """Flattens edit results into the edit panel: per model (A', dA, locA, B', dB, locB), then details."""
        delta = {key: {f: np.sqrt(r[f"diff_{f}"]) for f in "AB" if r.get(f"diff_{f}") is not None} for key, r in results.items()}
        vmax = max([float(d.max()) for dd in delta.values() for d in dd.values()] + [1e-6])
        outputs = []
        rows = ["| model | face | locality (Lab, paper) | locality (Lab, per area) | locality (RGB, paper) | region px | max dE |",
                "|---|---|---|---|---|---|---|"]
        for key in ("main", "baseline"):
            r = results.get(key)
            for f in "AB":
                if r is None or r.get(f"image_{f}") is None:
                    outputs += [None, None, None]
                    continue
                mask = r["mask"]
                outputs += [to_display(r[f"image_{f}"]), heatmap(delta[key][f], mask, vmax), round(r[f"loc_{f}"]["lab_paper"], 4)]
                loc = r[f"loc_{f}"]
                rows.append(
                    f"| {self.models.label(key)} | {f} | {loc['lab_paper']:.4f} | {loc['lab_area']:.4f} | "
                    f"{loc['rgb_paper']:.4f} | {int(mask.sum())} | {delta[key][f].max():.1f} |"
                )
        details = (
            f"{results['main']['what']} ({steps} steps). Locality = MSE_out / MSE_in (lower = more local). "
            f"Heatmaps: CIELAB distance dE from black (0) to white ({vmax:.1f}), shared scale; cyan outline = edited "
            "region.\n\n" + "\n".join(rows)
        )
        return outputs + [details]

    def _locality(self, before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor) -> Dict[str, float]:
        lib = self.models.lib
        values = {
            "lab_paper": lib.edit_locality(before, after, mask, color_space="lab", normalization="paper"),
            "lab_area": lib.edit_locality(before, after, mask, color_space="lab", normalization="area"),
            "rgb_paper": lib.edit_locality(before, after, mask, color_space="rgb", normalization="paper"),
        }
        return {k: float(v[0]) for k, v in values.items()}

    @user_errors
    def resample(
        self,
        region: str,
        dilation: float,
        editor: Optional[dict],
        new_seed: float,
        steps: float,
        compare: bool,
        faces: Optional[dict],
        progress=gr.Progress(),
    ) -> list:
        """Redraws x_T of face A inside the region with noise from `new_seed` (the same noise on both models)."""
        faces, steps, new_seed = self._require_faces(faces), check_steps(steps), check_seed(new_seed, "new seed")
        clip_sample = self._clip_sample(faces["A"])
        results, edit = {}, self._new_slot(f"A with {region} resampled (seed {new_seed})", {}, clip_sample=clip_sample)
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"resampling on the {self.models.label(key)} model")
                latents, image = self._face(faces["A"], key, steps)
                mask = self._mask(key, region, dilation, editor, image)
                out = pipe.resample_region(
                    latents, mask, generator=torch.Generator("cpu").manual_seed(new_seed),
                    num_inference_steps=steps, output_type="pt", clip_sample=clip_sample,
                )
                edited = out.images.cpu()
                results[key] = {
                    "what": f"Resampled **{region}** of face A with seed {new_seed}",
                    "image_A": _hwc(edited),
                    "diff_A": _np(self.models.lib.difference_map(image, edited, "lab")[0]),
                    "loc_A": self._locality(image, edited, out.mask.cpu()),
                    "mask": _np(out.mask[0, 0]) > 0.5,
                }
                edit["latents"][key] = _np(out.latents[0])
                edit["cache"][f"{key}@{steps}"] = _hwc(edited)
        faces["edit"] = {"A": edit, "B": None}
        return self._edit_outputs(results, steps) + [faces]

    @user_errors
    def swap(
        self,
        region: str,
        dilation: float,
        editor: Optional[dict],
        steps: float,
        compare: bool,
        faces: Optional[dict],
        progress=gr.Progress(),
    ) -> list:
        """Exchanges x_T inside the region (defined on face A) between faces A and B, on each model."""
        faces, steps = self._require_faces(faces, need_b=True), check_steps(steps)
        results = {}
        clip_sample = self._clip_sample(faces["A"], faces["B"])
        edit = {f: self._new_slot(f"{f} after swapping {region}", {}, clip_sample=clip_sample) for f in "AB"}
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"swapping on the {self.models.label(key)} model")
                lat_a, img_a = self._face(faces["A"], key, steps)
                lat_b, img_b = self._face(faces["B"], key, steps)
                mask = self._mask(key, region, dilation, editor, img_a)
                out = pipe.swap_regions(lat_a, lat_b, mask, num_inference_steps=steps, output_type="pt",
                                        clip_sample=clip_sample)
                new_a, new_b, used = out.images_a.cpu(), out.images_b.cpu(), out.mask.cpu()
                results[key] = {"what": f"Swapped **{region}** between faces A and B", "mask": _np(used[0, 0]) > 0.5}
                for f, before, after, lat in (("A", img_a, new_a, out.latents_a), ("B", img_b, new_b, out.latents_b)):
                    results[key][f"image_{f}"] = _hwc(after)
                    results[key][f"diff_{f}"] = _np(self.models.lib.difference_map(before, after, "lab")[0])
                    results[key][f"loc_{f}"] = self._locality(before, after, used)
                    edit[f]["latents"][key] = _np(lat[0])
                    edit[f]["cache"][f"{key}@{steps}"] = _hwc(after)
        faces["edit"] = edit
        return self._edit_outputs(results, steps) + [faces]

    @user_errors
    def keep_edit(self, steps: float, faces: Optional[dict]) -> Tuple[np.ndarray, np.ndarray, dict, dict, str]:
        """Makes the last edit's result(s) the new face A (and B after a swap), to chain edits."""
        faces, steps = self._require_faces(faces), check_steps(steps)
        if not faces.get("edit"):
            raise gr.Error("There is no edit to keep yet: resample or swap a region first.")
        for f in "AB":
            if faces["edit"].get(f) is not None:
                faces[f] = faces["edit"][f]
        faces["edit"] = None
        with self.models.lock:
            _, img_a = self._face(faces["A"], "main", steps)
            img_b = self._face(faces["B"], "main", steps)[1] if faces.get("B") else None
        info = f"Face A is now: {faces['A']['source']}" + (f"; face B: {faces['B']['source']}" if faces.get("B") else "")
        return (
            to_display(_hwc(img_a)), None if img_b is None else to_display(_hwc(img_b)),
            self._editor_value(_hwc(img_a)), faces, info,
        )

    @user_errors
    def invert_upload(
        self, path: Optional[str], steps: float, compare: bool, faces: Optional[dict], progress=gr.Progress()
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, dict, dict, str]:
        """Uploaded face -> model resolution -> DDIM inversion -> becomes face A (B is kept)."""
        steps = check_steps(steps)
        image, note = load_upload(path, self.models.resolution)
        faces = dict(faces) if faces else {"A": None, "B": None, "edit": None}
        slot = self._new_slot("uploaded face", {"main": None}, input_image=image)
        psnrs = []
        with self.models.lock:
            for i, key in enumerate(self.models.pipes(compare)):
                progress(0.1 + 0.45 * i, desc=f"inverting on the {self.models.label(key)} model")
                _, recon = self._face(slot, key, steps)
                mse = float(((recon - _chw(image)) ** 2).mean())
                psnrs.append(f"{self.models.label(key)}: {-10 * math.log10(max(mse, 1e-12)):.1f} dB")
        faces["A"], faces["edit"] = slot, None
        recon_a = slot["cache"][f"main@{steps}"]
        info = f"{note}\n\nInverted with {steps} DDIM steps; reconstruction PSNR " + ", ".join(psnrs) + ". It is now face A."
        return to_display(image), to_display(recon_a), to_display(recon_a), self._editor_value(recon_a), faces, info

    @user_errors
    def attribute(
        self,
        face: str,
        steps: float,
        num_timesteps: float,
        seed: float,
        compare: bool,
        faces: Optional[dict],
        progress=gr.Progress(),
    ) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, dict, dict, str, dict]:
        """Exact K x K Shapley attribution of a face at `num_timesteps` timesteps spread over the schedule."""
        faces, steps, seed = self._require_faces(faces), check_steps(steps), check_seed(seed, "attribution seed")
        if face not in ("A", "B") or faces.get(face) is None:
            raise gr.Error(f"Face must be 'A' or 'B' (and exist), got {face!r}.")
        n = int(num_timesteps or 0)
        if not 1 <= n <= MAX_ATTRIBUTION_TIMESTEPS:
            raise gr.Error(f"Number of timesteps must be between 1 and {MAX_ATTRIBUTION_TIMESTEPS}, got {num_timesteps}.")
        result = {"steps": steps, "models": {}}
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"Shapley attribution on the {self.models.label(key)} model")
                latents, image = self._face(faces[face], key, steps)
                pipe.scheduler.set_timesteps(steps)
                schedule = pipe.scheduler.timesteps.tolist()
                picks = sorted({schedule[j] for j in np.linspace(0, len(schedule) - 1, min(n, len(schedule))).round().astype(int)}, reverse=True)
                regions = pipe.region_masks(image * 2 - 1, is_latents=False)
                # Absent players get the same-t point of another x_T's trajectory; drawn here (as the pipeline's
                # "other_sample" would) to refuse a seed that redraws the face's own x_T (every phi would be 0).
                other = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed))
                if torch.equal(other, latents):
                    raise gr.Error(f"Seed {seed} draws this face's own x_T, so no region could matter; pick another seed.")
                out = pipe.attribute(latents, masks=regions, timesteps=picks, num_inference_steps=steps, baseline=other)
                result["models"][key] = {
                    "label": self.models.label(key),
                    "region_names": list(pipe.region_names),
                    "timesteps": [int(t) for t in out.timesteps],
                    "abs_phi": _np(out.abs_phi[:, 0]).tolist(),
                    "phi": _np(out.phi[:, 0]).tolist(),
                    "leakage": _np(out.leakage[:, 0]).tolist(),
                    "mean_leakage": float(out.leakage.mean()),
                }
        t_count = len(result["models"]["main"]["timesteps"])
        matrix_main, matrix_base, curve, md = self._attribution_views(result, 0)
        summary = {
            key: {k: v for k, v in m.items() if k in ("label", "region_names", "timesteps", "leakage", "mean_leakage")}
            for key, m in result["models"].items()
        }
        slider = gr.Slider(minimum=0, maximum=max(t_count - 1, 1), value=0, step=1, interactive=t_count > 1)
        return matrix_main, matrix_base, curve, slider, result, md, summary

    def _attribution_views(self, result: dict, index: int):
        models = result["models"]
        index = int(np.clip(index, 0, len(models["main"]["timesteps"]) - 1))
        t = models["main"]["timesteps"][index]
        vmax = max(float(np.max(m["abs_phi"][index])) for m in models.values())
        mats = {
            key: attribution_figure(
                np.asarray(m["abs_phi"][index]), m["region_names"],
                f"{m['label']}\n|phi| at t = {t}, leakage {m['leakage'][index]:.3f}", vmax,
            )
            for key, m in models.items()
        }
        curve = leakage_figure({m["label"]: (m["timesteps"], m["leakage"]) for m in models.values()}, t)
        md = f"t = **{t}** (timestep {index + 1} of {len(models['main']['timesteps'])} analysed, {result['steps']}-step schedule). " + ", ".join(
            f"{m['label']}: leakage {m['leakage'][index]:.3f} here, {m['mean_leakage']:.3f} on average" for m in models.values()
        )
        return mats["main"], mats.get("baseline"), curve, md

    @user_errors
    def attribution_at(self, index: float, result: Optional[dict]) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, str]:
        """Re-renders the stored attribution at timestep `index` (no model call)."""
        if not result or not result.get("models"):
            raise gr.Error("Compute the attribution first.")
        return self._attribution_views(result, int(index or 0))


# ----------------------------------------------------------------------------------------------------------------------
# The UI
# ----------------------------------------------------------------------------------------------------------------------
CSS = """
.face img, .face canvas { image-rendering: pixelated; }
"""


def build_demo(models: SpaceModels, concurrency_limit: int = 1, max_queue_size: int = 32) -> gr.Blocks:
    """Composes the Space around `models`; every event has an `api_name` and shares one model queue."""
    app = SpaceApp(models)
    h, w = models.resolution
    has_baseline = models.baseline is not None
    regions = models.concepts + [PAINTED]
    masks_from = "a face parser" if getattr(models.main, "parser", None) is not None else "template masks"
    queue = dict(concurrency_id="model", concurrency_limit=concurrency_limit)

    with gr.Blocks(title="Interpretable DDPM: region edits") as demo:
        faces = gr.State(None)
        attribution = gr.State(None)
        gr.Markdown(
            "# Interpretable DDPM: edit one face part without touching the rest\n"
            f"A DDIM model of {h}x{w} faces trained with a Shapley dummy-player loss (Liu et al. 2025) so that the "
            "starting noise x_T inside a face part (eyes, nose, mouth) causes only that part of the image. Redrawing "
            f"or swapping x_T inside a part therefore edits that part only. Model: `{models.main_name}`"
            + (f"; baseline (plain DDPM): `{models.baseline_name}`" if has_baseline else "; no baseline loaded")
            + f". Concept masks come from {masks_from}."
        )
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=models.default_steps, step=1, label="DDIM steps (fewer = faster)")
            compare = gr.Checkbox(
                value=has_baseline, visible=has_baseline, label="Compare with the baseline model (same edit, side by side)"
            )
        with gr.Tabs():
            with gr.Tab("Generate & edit"):
                with gr.Row():
                    seed_a = gr.Number(value=0, precision=0, minimum=0, label="Seed A")
                    seed_b = gr.Number(value=1, precision=0, minimum=0, label="Seed B")
                    dice = gr.Button("Random seeds", scale=0)
                    generate_btn = gr.Button("Generate A and B", variant="primary", elem_id="generate")
                gen_info = gr.Markdown(elem_id="gen-info")
                with gr.Row():
                    face_a = gr.Image(label="Face A", elem_id="face-a", type="numpy", format="png", interactive=False, elem_classes="face", height=260)
                    face_b = gr.Image(label="Face B", elem_id="face-b", type="numpy", format="png", interactive=False, elem_classes="face", height=260)
                    editor = gr.ImageEditor(
                        label="Paint a region on face A (used when region = painted)",
                        type="numpy", image_mode="RGBA", sources=(), layers=False, transforms=(), format="png",
                        brush=gr.Brush(default_size=14, colors=["#ff3030"], color_mode="fixed"),
                        eraser=gr.Eraser(default_size=14), canvas_size=(DISPLAY_SIZE, DISPLAY_SIZE),
                        elem_classes="face", height=360,
                    )
                    overlay = gr.Image(label="Region on face A", elem_id="overlay", type="numpy", format="png", interactive=False, elem_classes="face", height=260)
                with gr.Row():
                    region = gr.Radio(regions, value=regions[0], label="Region")
                    dilation = gr.Slider(0, 8, value=1, step=1, label="Grow region by (pixels)")
                    mask_btn = gr.Button("Show region", scale=0)
                mask_info = gr.Markdown()
                with gr.Row():
                    new_seed = gr.Number(value=123, precision=0, minimum=0, label="New noise seed (resample)")
                    resample_btn = gr.Button("Resample region of A", variant="primary", elem_id="resample")
                    swap_btn = gr.Button("Swap region between A and B", variant="primary", elem_id="swap")
                    keep_btn = gr.Button("Keep the edit as the new face(s)")
                panel = []
                for key, title, visible in (("main", models.main_name, True), ("baseline", models.baseline_name, has_baseline)):
                    with gr.Row(visible=visible):
                        for f in "AB":
                            with gr.Column():
                                with gr.Row():
                                    panel.append(gr.Image(label=f"{title}: edited {f}", type="numpy", format="png", interactive=False, elem_classes="face", height=220, elem_id=f"{key}-edited-{f.lower()}"))
                                    panel.append(gr.Image(label=f"{title}: CIELAB change {f}", type="numpy", format="png", interactive=False, elem_classes="face", height=220, elem_id=f"{key}-heatmap-{f.lower()}"))
                                panel.append(gr.Number(label=f"{title}: locality {f} (MSE_out / MSE_in, Lab; lower = more local)", interactive=False, elem_id=f"{key}-locality-{f.lower()}"))
                edit_info = gr.Markdown(elem_id="edit-info")

            with gr.Tab("Real face"):
                gr.Markdown(
                    f"Upload a photo of a face (PNG/JPEG, at most {MAX_FILE_SIZE}, {MAX_UPLOAD_PIXELS // 1_000_000} "
                    f"megapixels). It is centre-cropped and resized to {w}x{h}, inverted to x_T with DDIM, and becomes "
                    "face A: edit it on the first tab."
                )
                with gr.Row():
                    upload = gr.File(label="Face photo", elem_id="upload", file_types=["image"], type="filepath")
                    invert_btn = gr.Button("Invert and use as face A", variant="primary", elem_id="invert")
                with gr.Row():
                    upload_small = gr.Image(label=f"Your face at {w}x{h}", type="numpy", format="png", interactive=False, elem_classes="face", height=260)
                    recon = gr.Image(label="Its inversion, regenerated", type="numpy", format="png", interactive=False, elem_classes="face", height=260)
                upload_info = gr.Markdown(elem_id="upload-info")

            with gr.Tab("Attribution explorer"):
                gr.Markdown(
                    "Exact Shapley values of the K x K game: how much input region j of x_t moves the predicted noise "
                    "of output region k, at each timestep t. An interpretable model has a diagonal matrix; leakage "
                    "is the off-diagonal share. Each analysed timestep costs 2^K UNet calls."
                )
                with gr.Row():
                    attr_face = gr.Radio(["A", "B"], value="A", label="Face")
                    attr_count = gr.Slider(1, MAX_ATTRIBUTION_TIMESTEPS, value=8, step=1, label="Timesteps to analyse")
                    attr_seed = gr.Number(value=999, precision=0, minimum=0, label="Seed of the other x_T (absent players' values)")
                    attr_btn = gr.Button("Compute attribution", variant="primary", elem_id="attribute")
                t_index = gr.Slider(0, 1, value=0, step=1, label="Timestep (index over the analysed t, left = noisy)", interactive=False)
                attr_info = gr.Markdown(elem_id="attr-info")
                with gr.Row():
                    matrix_main = gr.Image(label=f"{models.main_name}: |phi|", elem_id="matrix-main", type="numpy", format="png", interactive=False, height=380)
                    matrix_base = gr.Image(label=f"{models.baseline_name}: |phi|", type="numpy", format="png", interactive=False, height=380, visible=has_baseline)
                curve = gr.Image(label="Leakage over t", elem_id="leakage-curve", type="numpy", format="png", interactive=False, height=340)
                attr_json = gr.JSON(label="Leakage per timestep")

        dice.click(app.random_seeds, None, [seed_a, seed_b], api_name="random_seeds", queue=False)
        generate_btn.click(
            app.generate, [seed_a, seed_b, steps, compare], [face_a, face_b, editor, faces, gen_info],
            api_name="generate", **queue,
        ).success(app.show_mask, [region, dilation, editor, steps, faces], [overlay, mask_info],
                  api_name="show_mask_after_generate", **queue)
        mask_inputs = [region, dilation, editor, steps, faces]
        mask_btn.click(app.show_mask, mask_inputs, [overlay, mask_info], api_name="show_mask", **queue)
        region.change(app.show_mask, mask_inputs, [overlay, mask_info], api_name="show_mask_on_region_change",
                      show_progress="hidden", **queue)
        resample_btn.click(
            app.resample, [region, dilation, editor, new_seed, steps, compare, faces], panel + [edit_info, faces],
            api_name="resample", **queue,
        )
        swap_btn.click(
            app.swap, [region, dilation, editor, steps, compare, faces], panel + [edit_info, faces],
            api_name="swap", **queue,
        )
        keep_btn.click(app.keep_edit, [steps, faces], [face_a, face_b, editor, faces, gen_info], api_name="keep_edit", **queue)
        invert_btn.click(
            app.invert_upload, [upload, steps, compare, faces], [upload_small, recon, face_a, editor, faces, upload_info],
            api_name="invert", **queue,
        ).success(app.show_mask, mask_inputs, [overlay, mask_info], api_name="show_mask_after_invert", **queue)
        attr_btn.click(
            app.attribute, [attr_face, steps, attr_count, attr_seed, compare, faces],
            [matrix_main, matrix_base, curve, t_index, attribution, attr_info, attr_json],
            api_name="attribute", **queue,
        )
        t_index.release(
            app.attribution_at, [t_index, attribution], [matrix_main, matrix_base, curve, attr_info],
            api_name="attribution_at_t", **queue,
        )
    demo.queue(max_size=max_queue_size, default_concurrency_limit=concurrency_limit)
    return demo


def load_models(model: Optional[str], baseline: Optional[str], default_steps: int = DEFAULT_STEPS) -> SpaceModels:
    """Loads the model (argument, env var, default folder, or any interpretable pipeline in models/) and baseline."""
    model = model or os.environ.get(MODEL_ENV) or find_default_model()
    if model is None:
        raise SystemExit(
            f"No model to serve: '{DEFAULT_MODEL}' does not exist yet and models/ holds no interpretable pipeline. "
            f"Train one (see README) or pass --model <folder or Hub id> (or set {MODEL_ENV})."
        )
    start = time.perf_counter()
    main = load_pipeline(model)
    base_pipe, base_name = None, None
    baseline = baseline if baseline is not None else os.environ.get(BASELINE_ENV)
    if baseline is None and os.path.isdir(os.path.join(ROOT, DEFAULT_BASELINE)):
        baseline = DEFAULT_BASELINE
    if baseline:  # an empty string (--baseline "") switches the comparison off
        base_pipe, base_name = load_pipeline(baseline), baseline
    print(f"Loaded {model}" + (f" and baseline {baseline}" if baseline else " (no baseline)") +
          f" in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return SpaceModels(
        main=main, baseline=base_pipe, main_name=os.path.basename(str(model).rstrip("/")),
        baseline_name=os.path.basename(str(base_name).rstrip("/")) if base_name else "baseline",
        default_steps=default_steps,
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gradio Space: interactive region edits of an interpretable DDPM.")
    parser.add_argument("--model", default=None, help=f"Pipeline folder or Hub id (env {MODEL_ENV}; default {DEFAULT_MODEL}).")
    parser.add_argument("--baseline", default=None, help=f"Baseline pipeline (env {BASELINE_ENV}; default {DEFAULT_BASELINE} if present; '' for none).")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Default DDIM steps in the UI.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--concurrency", type=int, default=1, help="Model calls running at once (2 CPU cores: 1).")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--share", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not 1 <= args.steps <= MAX_STEPS:
        raise SystemExit(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}.")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    models = load_models(args.model, args.baseline, args.steps)
    demo = build_demo(models, concurrency_limit=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, **LAUNCH_KWARGS)


if __name__ == "__main__":
    main()

# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""What the Space does when a button is pressed: the loaded models, a session's faces, the input checks and the
handlers. `app.py` lays out the page and wires these handlers to its events.

Every edit, mask, locality number, colour difference and attribution comes from the pipeline
(`pipeline_interpretable_ddpm.py`); `app_figures.py` turns the results into pictures.
"""

from __future__ import annotations

import copy
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
import numpy as np
import PIL.Image
import torch

from app_figures import attribution_figure, heatmap, leakage_figure, mask_overlay, to_display
from model_files import ROOT, load_pipeline

DEFAULT_MODEL = "models/interpretable-ddpm-faces64"
DEFAULT_BASELINE = "models/ddpm-faces64-baseline"
MODEL_ENV = "INTERPRETABLE_DDPM_MODEL"
BASELINE_ENV = "INTERPRETABLE_DDPM_BASELINE"

DEFAULT_STEPS = 25
MAX_STEPS = 200
MAX_ATTRIBUTION_TIMESTEPS = 25
MAX_FILE_SIZE = "10mb"  # uploads over this are refused by the server before they reach a handler
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size limit (a small PNG can decode to gigabytes)
MAX_SEED = 2**63 - 1
BLENDED_NOTE = (" — blended edit (the training-free peer: RePaint-style masked DDIM, outside the region the unedited "
                "image is kept at every step)")
MAX_DILATION = 8
PAINTED = "painted"


# ----------------------------------------------------------------------------------------------------------------------
# Loading
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


def load_models(model: Optional[str], baseline: Optional[str], default_steps: int = DEFAULT_STEPS) -> SpaceModels:
    """Loads the model (argument, env var, default folder, or any interpretable pipeline in models/) and baseline,
    once, in float32 on the CPU."""
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


# ----------------------------------------------------------------------------------------------------------------------
# Session state
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Face:
    """One face of a session: its x_T per model and the images they render to.

    `latents` maps a model key ("main", "baseline") to x_T `(C, H, W)`; None until an uploaded face is inverted
    on that model. `upload` is an uploaded face `(H, W, 3)` in [0, 1], inverted lazily per model and step count
    (`inverted_at`: model key -> steps). `images` caches rendered faces `(H, W, 3)` under "model@steps".
    `clip_sample` is False for uploaded faces and edits of them (DDIM inversion is exact only unclipped), else None
    (the scheduler's own setting)."""

    source: str
    latents: Dict[str, Optional[np.ndarray]] = field(default_factory=dict)
    upload: Optional[np.ndarray] = None
    inverted_at: Dict[str, int] = field(default_factory=dict)
    images: Dict[str, np.ndarray] = field(default_factory=dict)
    clip_sample: Optional[bool] = None

    def __post_init__(self):
        if self.upload is not None:
            self.clip_sample = False


@dataclass
class Session:
    """The faces of one browser session (or one `gradio_client.Client`), kept in a `gr.State`.

    `faces` holds face "A" and, after a generation, face "B"; `edited` holds the last resample or swap's results by
    face name until "Keep the edit" makes them the new faces."""

    faces: Dict[str, Face] = field(default_factory=dict)
    edited: Dict[str, Face] = field(default_factory=dict)


def clip_setting(*faces: Face) -> Optional[bool]:
    """Rendering setting for an edit of these faces: unclipped as soon as one of them came from an upload."""
    return False if any(face.clip_sample is False for face in faces) else None


def harmonize_setting(harmonize: Any, *faces: Face) -> bool:
    """Harmonised noise for an edit of these faces: as the toggle says, but never for an uploaded (inverted) face,
    whose x_T carries the photo's own colours."""
    if harmonize is not None and not isinstance(harmonize, (bool, np.bool_)):
        raise gr.Error(f"Harmonised noise must be true or false, got {harmonize!r}.")
    return bool(harmonize) and clip_setting(*faces) is None


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
    """A seed must be a whole number in [0, MAX_SEED]; 1.5 is refused, not rounded."""
    if seed is None or isinstance(seed, bool):
        raise gr.Error(f"The {name} must be an integer between 0 and {MAX_SEED}.")
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise gr.Error(f"The {name} must be an integer, got {seed!r}.") from None
    if not math.isfinite(value) or value != int(value):
        raise gr.Error(f"The {name} must be a whole number (an integer), got {seed!r}.")
    if not 0 <= value <= MAX_SEED:
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


def check_whole(value: Any, name: str, low: int, high: int) -> int:
    """A whole number in [low, high] (sliders and counts), refused with a message naming `name` otherwise."""
    try:
        number = float(0 if value is None else value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be an integer between {low} and {high}, got {value!r}.")
    return int(number)


def min_upload_side(resolution: Tuple[int, int]) -> int:
    """The shortest side an upload may have: half the model's resolution (a smaller face is mostly interpolation)."""
    return max(1, min(resolution) // 2)


def load_upload(path: Optional[str], resolution: Tuple[int, int]) -> Tuple[np.ndarray, str]:
    """Opens an uploaded file as an RGB face at the model resolution (centre square crop, bicubic resize).

    Returns the image `(H, W, 3)` float in [0, 1] and a note saying what was done to it. Refuses (gr.Error) a
    missing or empty file, a file that is not an image, an image over MAX_UPLOAD_PIXELS or under half the model's
    resolution on its shorter side; of an animated image (GIF, APNG, WebP) the first frame is used, and the note says
    so."""
    if not path:
        raise gr.Error("Upload a face image first (PNG or JPEG).")
    if not os.path.isfile(path):
        raise gr.Error("The uploaded file could not be found on the server; upload it again.")
    if os.path.getsize(path) == 0:
        raise gr.Error("The uploaded file is empty (0 bytes); upload a PNG or JPEG image of a face.")
    rh, rw = resolution
    min_side = min_upload_side(resolution)
    try:
        with PIL.Image.open(path) as im:
            w, h = im.size  # read from the header, before decoding the pixels
            if w * h > MAX_UPLOAD_PIXELS:
                raise gr.Error(
                    f"The image is {w}x{h} pixels; the limit is {MAX_UPLOAD_PIXELS // 1_000_000} megapixels. "
                    "Crop it around the face first."
                )
            if min(w, h) < min_side:
                raise gr.Error(
                    f"The image is only {w}x{h} pixels; the model works at {rw}x{rh} and needs at least "
                    f"{min_side} pixels on the shorter side. Upload a larger crop of the face."
                )
            frames = int(getattr(im, "n_frames", 1) or 1)
            animated = bool(getattr(im, "is_animated", False)) and frames > 1
            im.seek(0)
            im = im.convert("RGB")
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, EOFError) as err:
        raise gr.Error(f"The uploaded file is not an image the server can read ({type(err).__name__}).") from err
    except PIL.Image.DecompressionBombError as err:
        raise gr.Error("The image is too large to decode safely; crop it around the face first.") from err
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    crop = im.crop((left, top, left + side, top + side))
    small = crop.resize((rw, rh), PIL.Image.BICUBIC)
    note = (
        f"Your {w}x{h} image was centre-cropped to {side}x{side} and resized to the model's {rw}x{rh} (bicubic). "
        "The model only knows aligned, centred face crops like its training faces, so crop tightly around the "
        "face for a faithful inversion."
        if (w, h) != (rw, rh)
        else f"Your image is already {rw}x{rh}, the model's resolution."
    )
    if animated:
        note = f"**Your image is animated ({frames} frames); only its first frame was used.** " + note
    return np.asarray(small, dtype=np.float32) / 255.0, note


# ----------------------------------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------------------------------
def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy()


def _pt(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def _hwc(image_bchw: torch.Tensor) -> np.ndarray:
    return _np(image_bchw[0].permute(1, 2, 0))


def _chw(image_hwc: np.ndarray) -> torch.Tensor:
    return _pt(image_hwc).permute(2, 0, 1)[None]


def editor_value(image: np.ndarray) -> dict:
    """The value of the paint editor: the face as its background, no strokes yet."""
    bg = PIL.Image.fromarray(to_display(image))
    return {"background": bg, "layers": [], "composite": bg}


class SpaceApp:
    """The Space's handlers, one per event; each takes and returns plain values and the `Session` state."""

    def __init__(self, models: SpaceModels):
        self.models = models

    # -- faces -----------------------------------------------------------------------------------------------------
    def _render(self, face: Face, key: str, steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """x_T `(1, C, H, W)` and image `(1, 3, H, W)` in [0, 1] of a face under model `key` at `steps`."""
        pipe = self.models.pipes(True)[key]
        cache_key = f"{key}@{steps}"
        if face.upload is not None and face.inverted_at.get(key) != steps:
            # An uploaded face: its x_T depends on the model and the number of steps, so invert for this pair.
            inv = pipe.invert(_chw(face.upload), num_inference_steps=steps)
            face.latents[key] = _np(inv.latents[0])
            face.inverted_at[key] = steps
            face.images.pop(cache_key, None)
        latents = face.latents.get(key)
        if latents is None:  # e.g. a kept edit made without the baseline: x_T live in the same space
            latents = face.latents["main"]
        if cache_key not in face.images:
            out = pipe(latents=_pt(latents)[None], num_inference_steps=steps, output_type="pt",
                       clip_sample=face.clip_sample)
            face.images[cache_key] = _hwc(out.images)
        return _pt(latents)[None], _chw(face.images[cache_key])

    @staticmethod
    def _require_faces(session: Optional[Session], need_b: bool = False) -> Session:
        if session is None or "A" not in session.faces:
            raise gr.Error("Generate faces A and B (or invert an uploaded face) first.")
        if need_b and "B" not in session.faces:
            raise gr.Error("A swap needs face B too: generate faces A and B first.")
        return session

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

    def _mask(self, key: str, region: str, dilation: Any, editor: Optional[dict], image: torch.Tensor) -> torch.Tensor:
        """`(1, 1, H, W)` mask of `region` on `image` (model `key`'s own concept mask), or the painted mask."""
        dilation = check_whole(dilation, "Dilation (pixels)", 0, MAX_DILATION)
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
        self, seed_a: float, seed_b: float, steps: float, compare: bool, harmonize: bool = True, progress=gr.Progress()
    ) -> Tuple[np.ndarray, np.ndarray, dict, Session, str]:
        """Faces A and B from two seeds (one DDIM batch per model, the same x_T for both models); `harmonize` ties
        each part's noise mean to the face's (`pipe.harmonize`). Returns images, the editor, the state, info."""
        harmonize = harmonize_setting(harmonize)
        seed_a, seed_b, steps = check_seed(seed_a, "seed A"), check_seed(seed_b, "seed B"), check_steps(steps)
        pipes = self.models.pipes(compare)
        session = Session()
        with self.models.lock:
            progress(0.05, desc="drawing x_T")
            generators = [torch.Generator("cpu").manual_seed(s) for s in (seed_a, seed_b)]
            out = self.models.main(batch_size=2, generator=generators, num_inference_steps=steps, output_type="pt",
                                   harmonize_noise=harmonize)
            latents = _np(out.latents)
            for i, (name, seed) in enumerate((("A", seed_a), ("B", seed_b))):
                face = Face(f"seed {seed}", {"main": latents[i]})
                face.images[f"main@{steps}"] = _hwc(out.images[i : i + 1])
                session.faces[name] = face
            if "baseline" in pipes:
                progress(0.5, desc="baseline model")
                out_b = self.models.baseline(latents=out.latents, num_inference_steps=steps, output_type="pt")
                for i, name in enumerate("AB"):
                    session.faces[name].latents["baseline"] = latents[i]
                    session.faces[name].images[f"baseline@{steps}"] = _hwc(out_b.images[i : i + 1])
        img_a, img_b = (session.faces[f].images[f"main@{steps}"] for f in "AB")
        info = (f"Face A: seed **{seed_a}**, face B: seed **{seed_b}**, {steps} DDIM steps (eta = 0, reproducible), "
                + ("harmonised noise." if harmonize else "plain noise (parts take their colour from their own noise)."))
        return to_display(img_a), to_display(img_b), editor_value(img_a), session, info

    @user_errors
    def show_mask(
        self, region: str, dilation: float, editor: Optional[dict], steps: float, session: Optional[Session]
    ) -> Tuple[np.ndarray, str]:
        """Face A with the chosen region (concept mask or painted) as a red overlay."""
        session, steps = self._require_faces(session), check_steps(steps)
        with self.models.lock:
            _, image = self._render(session.faces["A"], "main", steps)
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
            f"{results['main']['what']} ({steps} steps)"
            + "".join(f". {self.models.label(k)}: {r['what'].split(' — ', 1)[1]}" for k, r in results.items()
                      if k != "main" and " — " in r.get("what", ""))
            + ". Locality = MSE_out / MSE_in (lower = more local). "
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
        harmonize: bool,
        session: Optional[Session],
        peer: bool = False,
        progress=gr.Progress(),
    ) -> list:
        """Redraws x_T of face A inside the region with noise from `new_seed` (the same noise on both models). With
        `peer`, the comparison model's edit is the blended one (`blend=True`, the training-free masked edit)."""
        session, steps = self._require_faces(session), check_steps(steps)
        new_seed = check_seed(new_seed, "new seed")
        face_a = session.faces["A"]
        clip_sample = clip_setting(face_a)
        harmonize = harmonize_setting(harmonize, face_a)
        results, edit = {}, Face(f"A with {region} resampled (seed {new_seed})", clip_sample=clip_sample)
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"resampling on the {self.models.label(key)} model")
                latents, image = self._render(face_a, key, steps)
                mask = self._mask(key, region, dilation, editor, image)
                blend = bool(peer) and key != "main"
                out = pipe.resample_region(
                    latents, mask, generator=torch.Generator("cpu").manual_seed(new_seed),
                    num_inference_steps=steps, output_type="pt", clip_sample=clip_sample, harmonize_noise=harmonize,
                    blend=blend,
                )
                edited = out.images.cpu()
                results[key] = {
                    "what": f"Resampled **{region}** of face A with seed {new_seed}" + (BLENDED_NOTE if blend else ""),
                    "image_A": _hwc(edited),
                    "diff_A": _np(self.models.lib.difference_map(image, edited, "lab")[0]),
                    "loc_A": self._locality(image, edited, out.mask.cpu()),
                    "mask": _np(out.mask[0, 0]) > 0.5,
                }
                edit.latents[key] = _np(out.latents[0])
                edit.images[f"{key}@{steps}"] = _hwc(edited)
        session.edited = {"A": edit}
        return self._edit_outputs(results, steps) + [session]

    @user_errors
    def swap(
        self,
        region: str,
        dilation: float,
        editor: Optional[dict],
        steps: float,
        compare: bool,
        harmonize: bool,
        session: Optional[Session],
        peer: bool = False,
        progress=gr.Progress(),
    ) -> list:
        """Exchanges x_T inside the region (defined on face A) between faces A and B, on each model. With `peer`, the
        comparison model's edit is the blended one (`blend=True`, the training-free masked edit)."""
        session, steps = self._require_faces(session, need_b=True), check_steps(steps)
        face_a, face_b = session.faces["A"], session.faces["B"]
        results = {}
        clip_sample = clip_setting(face_a, face_b)
        harmonize = harmonize_setting(harmonize, face_a, face_b)
        edit = {f: Face(f"{f} after swapping {region}", clip_sample=clip_sample) for f in "AB"}
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"swapping on the {self.models.label(key)} model")
                lat_a, img_a = self._render(face_a, key, steps)
                lat_b, img_b = self._render(face_b, key, steps)
                mask = self._mask(key, region, dilation, editor, img_a)
                blend = bool(peer) and key != "main"
                out = pipe.swap_regions(lat_a, lat_b, mask, num_inference_steps=steps, output_type="pt",
                                        clip_sample=clip_sample, harmonize_noise=harmonize, blend=blend)
                new_a, new_b, used = out.images_a.cpu(), out.images_b.cpu(), out.mask.cpu()
                results[key] = {"what": f"Swapped **{region}** between faces A and B" + (BLENDED_NOTE if blend else ""),
                                "mask": _np(used[0, 0]) > 0.5}
                for f, before, after, lat in (("A", img_a, new_a, out.latents_a), ("B", img_b, new_b, out.latents_b)):
                    results[key][f"image_{f}"] = _hwc(after)
                    results[key][f"diff_{f}"] = _np(self.models.lib.difference_map(before, after, "lab")[0])
                    results[key][f"loc_{f}"] = self._locality(before, after, used)
                    edit[f].latents[key] = _np(lat[0])
                    edit[f].images[f"{key}@{steps}"] = _hwc(after)
        session.edited = edit
        return self._edit_outputs(results, steps) + [session]

    @user_errors
    def keep_edit(self, steps: float, session: Optional[Session]) -> Tuple[np.ndarray, np.ndarray, dict, Session, str]:
        """Makes the last edit's result(s) the new face A (and B after a swap), to chain edits."""
        session, steps = self._require_faces(session), check_steps(steps)
        if not session.edited:
            raise gr.Error("There is no edit to keep yet: resample or swap a region first.")
        session.faces.update(session.edited)
        session.edited = {}
        with self.models.lock:
            _, img_a = self._render(session.faces["A"], "main", steps)
            img_b = self._render(session.faces["B"], "main", steps)[1] if "B" in session.faces else None
        info = f"Face A is now: {session.faces['A'].source}" + (
            f"; face B: {session.faces['B'].source}" if "B" in session.faces else ""
        )
        return (
            to_display(_hwc(img_a)), None if img_b is None else to_display(_hwc(img_b)),
            editor_value(_hwc(img_a)), session, info,
        )

    @user_errors
    def invert_upload(
        self, path: Optional[str], steps: float, compare: bool, session: Optional[Session], progress=gr.Progress()
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, dict, Session, str]:
        """Uploaded face -> model resolution -> DDIM inversion -> becomes face A (B is kept)."""
        steps = check_steps(steps)
        image, note = load_upload(path, self.models.resolution)
        session = copy.copy(session) if session is not None else Session()
        session.faces = dict(session.faces)
        face = Face("uploaded face", {"main": None}, upload=image)
        psnrs = []
        with self.models.lock:
            for i, key in enumerate(self.models.pipes(compare)):
                progress(0.1 + 0.45 * i, desc=f"inverting on the {self.models.label(key)} model")
                _, recon = self._render(face, key, steps)
                mse = float(((recon - _chw(image)) ** 2).mean())
                psnrs.append(f"{self.models.label(key)}: {-10 * math.log10(max(mse, 1e-12)):.1f} dB")
        session.faces["A"], session.edited = face, {}
        recon_a = face.images[f"main@{steps}"]
        info = f"{note}\n\nInverted with {steps} DDIM steps; reconstruction PSNR " + ", ".join(psnrs) + ". It is now face A."
        return to_display(image), to_display(recon_a), to_display(recon_a), editor_value(recon_a), session, info

    @user_errors
    def attribute(
        self,
        face_name: str,
        steps: float,
        num_timesteps: float,
        seed: float,
        compare: bool,
        harmonize: bool,
        session: Optional[Session],
        progress=gr.Progress(),
    ) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, dict, dict, str, dict]:
        """Exact K x K Shapley attribution of a face at `num_timesteps` timesteps spread over the schedule."""
        session, steps = self._require_faces(session), check_steps(steps)
        seed = check_seed(seed, "attribution seed")
        if face_name not in ("A", "B") or face_name not in session.faces:
            raise gr.Error(f"Face must be 'A' or 'B' (and exist), got {face_name!r}.")
        n = check_whole(num_timesteps, "Number of timesteps", 1, MAX_ATTRIBUTION_TIMESTEPS)
        result = {"steps": steps, "models": {}}
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"Shapley attribution on the {self.models.label(key)} model")
                latents, image = self._render(session.faces[face_name], key, steps)
                pipe.scheduler.set_timesteps(steps)
                schedule = pipe.scheduler.timesteps.tolist()
                picks = sorted({schedule[j] for j in np.linspace(0, len(schedule) - 1, min(n, len(schedule))).round().astype(int)}, reverse=True)
                regions = pipe.region_masks(image * 2 - 1, is_latents=False)
                # Absent players get the same-t point of another x_T's trajectory; drawn here (as the pipeline's
                # "other_sample" would) to refuse a seed that redraws the face's own x_T (every phi would be 0).
                other = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed))
                if harmonize_setting(harmonize, session.faces[face_name]):
                    other = pipe.harmonize(other)  # absent players get noise of the kind the face was drawn from
                if torch.allclose(other, latents.to(other.dtype), rtol=0, atol=1e-5):
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

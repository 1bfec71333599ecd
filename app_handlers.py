# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""What the Space does when a button is pressed: the loaded models, a session's faces, the input checks and the
handlers. `app.py` lays out the page and wires these handlers to its events.

Every edit, mask, locality number, colour difference and attribution comes from the pipeline
(`pipeline_interpretable_ddpm.py`); `app_figures.py` turns the results into pictures.
"""

from __future__ import annotations

import copy
import dataclasses
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
from prepare_data import TEMPLATE_RESOLUTION, PhotoError, align_faces, open_photo

DEFAULT_MODEL = "models/interpretable-ddpm-faces64"
DEFAULT_BASELINE = "models/ddpm-faces64-baseline"
MODEL_ENV = "INTERPRETABLE_DDPM_MODEL"
BASELINE_ENV = "INTERPRETABLE_DDPM_BASELINE"

MAX_STEPS = 200
MAX_ATTRIBUTION_TIMESTEPS = 25
MAX_FILE_SIZE = "10mb"  # uploads over this are refused by the server before they reach a handler
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size limit (a small PNG can decode to gigabytes)
MAX_SEED = 2**63 - 1
BLENDED_NOTE = (
    " — blended edit (the training-free peer: RePaint-style masked DDIM, outside the region the unedited "
    "image is kept at every step)"
)
MAX_DILATION = 8
PAINTED = "painted"
MAX_FACES = 8  # faces offered per photo, largest first
MIN_EYE_DISTANCE = 12.0  # px between the eyes in a photo, at 64x64 (prepare_data.py's --min_eye_distance)
# The harmonised photo swap (`swap_regions(..., harmonize_photo=...)`), on by default for photos, with 3/4 of the
# shift: on 25 held-out real pairs (strength 0.5, 25 steps, the shipped interpretable model) it takes the off-colour
# rate of swapped photos from 10.7 % to 4.0 %, with MSE_ref 0.41 / 0.57 / 0.59 (eyes / nose / mouth) and locality
# 1.13 / 1.13 / 1.19 x the plain swap's; the whole shift gives the same 4.0 % with MSE_ref up to 0.74 and locality up
# to 1.23 x (benchmarks/photo_swap_colour.py, docs/real_photos.md).
PHOTO_SWAP_HARMONIZE = 0.75


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
    default_steps: Optional[int] = None  # None: the model folder's own (its `num_inference_steps`)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        # The locality metric and colour difference come from the loaded pipeline's own module.
        self.lib = inspect.getmodule(type(self.main))
        if self.default_steps is None:
            self.default_steps = min(MAX_STEPS, self.main.sampler["num_inference_steps"])
        if self.baseline is not None:  # faces are compared under one sampler: the model's
            self.baseline.register_to_config(eta=self.eta)
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

    @property
    def eta(self) -> float:
        """The sampler's eta (the model folder's): 0 is DDIM, above 0 adds step noise drawn from x_T."""
        return self.main.sampler["eta"]

    @property
    def sampler_text(self) -> str:
        if self.eta == 0:
            return "DDIM (eta = 0)"
        return f"eta = {self.eta:g}, step noise drawn from x_T"

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


def load_models(model: Optional[str], baseline: Optional[str], default_steps: Optional[int] = None) -> SpaceModels:
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
    print(
        f"Loaded {model}"
        + (f" and baseline {baseline}" if baseline else " (no baseline)")
        + f" in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return SpaceModels(
        main=main,
        baseline=base_pipe,
        main_name=os.path.basename(str(model).rstrip("/")),
        baseline_name=os.path.basename(str(base_name).rstrip("/")) if base_name else "baseline",
        default_steps=default_steps,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Session state
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Face:
    """One face of a session: a generated face (its x_T per model) or a photo (an upload, or a kept edit of one).

    `latents` maps a model key ("main", "baseline") to x_T `(C, H, W)` of a generated face. `upload` is a photo
    `(H, W, 3)` in [0, 1] (an uploaded face, or the result of an edit of one that was kept); it is DDIM-inverted
    lazily, per model, step count and strength, and `inversions` keeps each whole `InversionOutput` (x_t at its
    timestep t0, the photo, the warning) under "model@steps@strength". A generated face that is swapped with a
    photo is inverted from its rendering the same way (both inputs of a swap must be at the same t0).
    `images` caches rendered faces `(H, W, 3)`: "model@steps" for x_T, "model@steps@strength" for the unedited
    reconstruction `pipe(latents=inversion)`. `clip_sample` is False for photos (DDIM inversion is exact only
    unclipped), else None (the scheduler's own setting)."""

    source: str
    latents: Dict[str, Optional[np.ndarray]] = field(default_factory=dict)
    upload: Optional[np.ndarray] = None
    inversions: Dict[str, Any] = field(default_factory=dict)
    images: Dict[str, np.ndarray] = field(default_factory=dict)
    clip_sample: Optional[bool] = None
    aligned: Any = None  # a photo's `prepare_data.AlignedFace` (its photo, the alignment), for pasting edits back

    def __post_init__(self):
        if self.upload is not None:
            self.clip_sample = False

    @property
    def is_photo(self) -> bool:
        return self.upload is not None


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


def check_strength(strength: Any) -> float:
    """The inversion strength of a photo: a number in (0, 1] (1.0 inverts all the way to x_T)."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(strength, (bool, np.bool_)) or not math.isfinite(value) or not 0 < value <= 1:
        raise gr.Error(f"The strength must be a number in (0, 1] (1.0 inverts the photo to x_T), got {strength!r}.")
    return value


def default_strength(pipe: Any) -> float:
    """The pipeline's default inversion strength (its `DEFAULT_INVERSION_STRENGTH`, else `invert`'s default)."""
    module = inspect.getmodule(type(pipe))
    value = getattr(module, "DEFAULT_INVERSION_STRENGTH", None)
    if value is None:
        value = inspect.signature(pipe.invert).parameters["strength"].default
    return float(value)


def _has_arg(fn: Any, name: str) -> bool:
    """Whether a pipeline method takes `name` (a pipeline file older than the app may lack an option)."""
    return name in inspect.signature(fn).parameters


def _is_inversion(obj: Any) -> bool:
    return not isinstance(obj, torch.Tensor) and hasattr(obj, "timestep") and hasattr(obj, "latents")


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


def min_eye_distance(resolution: Tuple[int, int]) -> float:
    """The closest a face's eyes may be in a photo to be aligned: `MIN_EYE_DISTANCE` at 64x64, scaled with the
    model's resolution (a smaller face would be enlarged more than twice)."""
    return MIN_EYE_DISTANCE * min(resolution) / TEMPLATE_RESOLUTION


@dataclass
class FoundFaces:
    """An uploaded photo as read (`prepare_data.open_photo`: upright, RGB) with the faces found in it, largest first
    (`prepare_data.align_faces` at the model's resolution), kept in a `gr.State` between finding and inverting."""

    path: str
    photo: PIL.Image.Image
    notes: List[str]
    faces: List[Any]


def find_upload_faces(path: Optional[str], resolution: Tuple[int, int]) -> FoundFaces:
    """Opens an uploaded photo and finds its faces. Refuses (gr.Error) a missing or empty file, a file that is not an
    image, an image over MAX_UPLOAD_PIXELS (before decoding it) or under half the model's resolution on its shorter
    side, a fully transparent image. The photo is turned upright (EXIF), converted to RGB (grayscale, palette,
    CMYK, 16-bit; transparency on grey), the first frame of an animation; its notes say what was done."""
    if not path:
        raise gr.Error("Upload a photo with a face first (PNG or JPEG).")
    if not os.path.isfile(path):
        raise gr.Error("The uploaded file could not be found on the server; upload it again.")
    if os.path.getsize(path) == 0:
        raise gr.Error("The uploaded file is empty (0 bytes); upload a PNG or JPEG photo of a face.")
    try:
        photo = open_photo(path, max_pixels=MAX_UPLOAD_PIXELS)
    except PhotoError as err:
        if str(err).startswith("unreadable image"):
            raise gr.Error(f"The uploaded file is not an image the server can read ({err}).") from err
        raise gr.Error(f"The uploaded image was refused: {err}.") from err
    w, h = photo.image.size
    if min(w, h) < min_upload_side(resolution):
        raise gr.Error(
            f"The image is only {w}x{h} pixels; the model works at {resolution[1]}x{resolution[0]} and needs at least "
            f"{min_upload_side(resolution)} pixels on the shorter side. Upload a larger photo of the face."
        )
    faces = align_faces(photo.image, resolution=min(resolution), max_faces=MAX_FACES)
    return FoundFaces(path, photo.image, photo.notes, faces)


def face_choices(found: FoundFaces) -> List[Tuple[str, str]]:
    """(label, value) of each found face for the face picker; values "1", "2", ... (largest first)."""
    return [
        (f"Face {i + 1}" + (" (largest)" if i == 0 else "") + f": eyes {f.eye_distance:.0f} px apart", str(i + 1))
        for i, f in enumerate(found.faces)
    ]


def chosen_face(found: FoundFaces, choice: Any, resolution: Tuple[int, int]) -> Tuple[np.ndarray, Any, str]:
    """The face to invert: the aligned face number `choice` (1 = largest; None = the largest) as `(H, W, 3)` float in
    [0, 1], its `AlignedFace` (None for the fallback) and a note. Without a face, the photo's centre square resized
    to the model's resolution, with a notice. Refuses (gr.Error) a face too small to align or a bad choice."""
    rh, rw = resolution
    w, h = found.photo.size
    notes = "".join(f" {n}" for n in found.notes)
    if not found.faces:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        crop = found.photo.crop((left, top, left + side, top + side)).resize((rw, rh), PIL.Image.BICUBIC)
        note = (
            f"**No face found** in your {w}x{h} photo, so it was centre-cropped to {side}x{side} and resized to the "
            f"model's {rw}x{rh} (bicubic) instead. The model only knows aligned faces like its training faces: "
            "upload a photo where the face is visible and upright." + notes
        )
        return np.asarray(crop, np.float32) / 255.0, None, note
    try:
        index = 0 if choice in (None, "") else int(str(choice).split(":")[0].replace("Face", "").strip()) - 1
    except ValueError:
        index = -1
    if not 0 <= index < len(found.faces):
        raise gr.Error(f"Choose a face between 1 and {len(found.faces)} (found in your photo), got {choice!r}.")
    face = found.faces[index]
    if face.eye_distance < min_eye_distance(resolution):
        raise gr.Error(
            f"Face {index + 1} is too small to align: its eyes are {face.eye_distance:.1f} px apart in the photo and "
            f"at least {min_eye_distance(resolution):.0f} px are needed (it would be enlarged more than twice). Upload "
            "a larger photo, or one taken closer to the face."
        )
    note = (
        f"Found {len(found.faces)} face{'s' if len(found.faces) > 1 else ''} in your {w}x{h} photo; face "
        f"{index + 1} (eyes {face.eye_distance:.0f} px apart, tilted {face.rotation_deg:+.0f} degrees) was aligned "
        f"to the model's {rw}x{rh} geometry, exactly as the training faces were. Edits are pasted back into the "
        "whole photo." + notes
    )
    return np.asarray(face.image, np.float32) / 255.0, face, note


def to_pil(image: np.ndarray) -> PIL.Image.Image:
    """`(H, W, 3)` float in [0, 1] -> 8-bit RGB image."""
    return PIL.Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))


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
    @property
    def default_strength(self) -> float:
        return default_strength(self.models.main)

    def _strength(self, strength: Any) -> float:
        """`strength` checked; None (a Python caller that leaves it out) is the pipeline's default."""
        return self.default_strength if strength is None else check_strength(strength)

    def _render(self, face: Face, key: str, steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """x_T `(1, C, H, W)` and image `(1, 3, H, W)` in [0, 1] of a generated face under model `key` at `steps`."""
        pipe = self.models.pipes(True)[key]
        cache_key = f"{key}@{steps}"
        latents = face.latents.get(key)
        if latents is None:  # e.g. a kept edit made without the baseline: x_T live in the same space
            latents = face.latents["main"]
        if cache_key not in face.images:
            out = pipe(
                latents=_pt(latents)[None], num_inference_steps=steps, output_type="pt", clip_sample=face.clip_sample
            )
            face.images[cache_key] = _hwc(out.images)
        return _pt(latents)[None], _chw(face.images[cache_key])

    def _photo(self, face: Face, key: str, steps: int, strength: float) -> Tuple[Any, torch.Tensor]:
        """The face as a photo on model `key`: its `InversionOutput` (at `steps` and `strength`, inverted once and
        kept) and the unedited reconstruction `pipe(latents=inversion)` `(1, 3, H, W)` in [0, 1]. A generated face
        is inverted from its rendering."""
        pipe = self.models.pipes(True)[key]
        cache_key = f"{key}@{steps}@{strength:g}"
        if cache_key not in face.inversions:
            photo = face.upload if face.is_photo else _hwc(self._render(face, key, steps)[1])
            face.inversions[cache_key] = pipe.invert(_chw(photo), num_inference_steps=steps, strength=strength)
            face.images.pop(cache_key, None)
        inv = face.inversions[cache_key]
        if cache_key not in face.images:
            face.images[cache_key] = _hwc(pipe(latents=inv, num_inference_steps=steps, output_type="pt").images)
        return inv, _chw(face.images[cache_key])

    def _start(self, face: Face, key: str, steps: int, strength: float, as_photo: bool) -> Tuple[Any, torch.Tensor]:
        """Where an edit of `face` starts: x_T of a generated face, or the `InversionOutput` of a photo (and of a
        generated face edited together with a photo, `as_photo`); with the unedited image it renders to."""
        if face.is_photo or as_photo:
            return self._photo(face, key, steps, strength)
        return self._render(face, key, steps)

    @staticmethod
    def _from_photo_note(inv: Any, steps: int) -> str:
        return f"inverted at strength {inv.strength:g} down to t0 = {inv.timestep} ({steps}-step schedule)"

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
            a = (
                layer[..., 3]
                if layer.ndim == 3 and layer.shape[-1] == 4
                else (layer.reshape(*layer.shape[:2], -1).max(-1))
            )
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

    def _mask(
        self, key: str, region: str, dilation: Any, editor: Optional[dict], image: torch.Tensor, start: Any = None
    ) -> torch.Tensor:
        """`(1, 1, H, W)` mask of `region` on `image` (model `key`'s own concept mask), or the painted mask. For a
        photo (`start` an `InversionOutput`) the concept mask is found on the photo itself (`concept_mask(inv)`)."""
        dilation = check_whole(dilation, "Dilation (pixels)", 0, MAX_DILATION)
        if region == PAINTED:
            mask = self._painted_mask(editor)
            return self.models.lib.dilate_masks(mask, dilation) if dilation else mask
        if region not in self.models.concepts:
            raise gr.Error(f"Unknown region '{region}'; choose one of {', '.join(self.models.concepts + [PAINTED])}.")
        pipe = self.models.pipes(True)[key]
        source = (start, {}) if _is_inversion(start) else (image * 2 - 1, {"is_latents": False})
        try:
            mask = pipe.concept_mask(source[0], region, dilation=dilation, **source[1])
        except ValueError:
            if key == "main":
                raise
            # A baseline without parser or templates: use the interpretable model's mask of the same face.
            mask = self.models.main.concept_mask(source[0], region, dilation=dilation, **source[1])
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
        """Faces A and B from two seeds (one batch per model, the same x_T for both models); `harmonize` ties
        each part's noise mean to the face's (`pipe.harmonize`). Returns images, the editor, the state, info."""
        harmonize = harmonize_setting(harmonize)
        seed_a, seed_b, steps = check_seed(seed_a, "seed A"), check_seed(seed_b, "seed B"), check_steps(steps)
        pipes = self.models.pipes(compare)
        session = Session()
        with self.models.lock:
            progress(0.05, desc="drawing x_T")
            generators = [torch.Generator("cpu").manual_seed(s) for s in (seed_a, seed_b)]
            out = self.models.main(
                batch_size=2,
                generator=generators,
                num_inference_steps=steps,
                output_type="pt",
                harmonize_noise=harmonize,
            )
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
        info = (
            f"Face A: seed **{seed_a}**, face B: seed **{seed_b}**, {steps} steps ({self.models.sampler_text}; "
            "the same seeds draw the same faces), "
            + ("harmonised noise." if harmonize else "plain noise (Gaussian x_T, as in the paper).")
        )
        return to_display(img_a), to_display(img_b), editor_value(img_a), session, info

    @user_errors
    def show_mask(
        self,
        region: str,
        dilation: float,
        editor: Optional[dict],
        steps: float,
        strength: Optional[float] = None,
        session: Optional[Session] = None,
    ) -> Tuple[np.ndarray, str]:
        """Face A with the chosen region (concept mask or painted) as a red overlay; for a photo the concept mask is
        found on the photo itself and drawn over its reconstruction at `strength`."""
        session, steps = self._require_faces(session), check_steps(steps)
        strength = self._strength(strength)
        face_a = session.faces["A"]
        with self.models.lock:
            start, image = self._start(face_a, "main", steps, strength, face_a.is_photo)
            mask = self._mask("main", region, dilation, editor, image, start)
        pixels = int(mask.sum())
        h, w = self.models.resolution
        where = " (found on your photo)" if face_a.is_photo and region != PAINTED else ""
        return mask_overlay(_hwc(image), _np(mask[0, 0]) > 0.5), (
            f"Region **{region}** on face A{where}: {pixels} of {h * w} pixels ({100 * pixels / (h * w):.1f}%)."
        )

    def _edit_outputs(self, results: Dict[str, dict], steps: int, pasted: Optional[PIL.Image.Image] = None) -> list:
        """Flattens edit results into the edit panel: per model (A', dA, locA, B', dB, locB), then details, then the
        Real face tab's copy of the main model's A (image, locality, note with any warning) and the whole photo with
        the edit pasted back (`pasted`, None when no photo was edited)."""
        delta = {
            key: {f: np.sqrt(r[f"diff_{f}"]) for f in "AB" if r.get(f"diff_{f}") is not None}
            for key, r in results.items()
        }
        vmax = max([float(d.max()) for dd in delta.values() for d in dd.values()] + [1e-6])
        outputs = []
        rows = [
            "| model | face | locality (Lab, paper) | locality (Lab, per area) | locality (RGB, paper) | region px | max dE |",
            "|---|---|---|---|---|---|---|",
        ]
        for key in ("main", "baseline"):
            r = results.get(key)
            for f in "AB":
                if r is None or r.get(f"image_{f}") is None:
                    outputs += [None, None, None]
                    continue
                mask = r["mask"]
                outputs += [
                    to_display(r[f"image_{f}"]),
                    heatmap(delta[key][f], mask, vmax),
                    round(r[f"loc_{f}"]["lab_paper"], 4),
                ]
                loc = r[f"loc_{f}"]
                rows.append(
                    f"| {self.models.label(key)} | {f} | {loc['lab_paper']:.4f} | {loc['lab_area']:.4f} | "
                    f"{loc['rgb_paper']:.4f} | {int(mask.sum())} | {delta[key][f].max():.1f} |"
                )
        warnings = list(dict.fromkeys(r["warning"] for r in results.values() if r.get("warning")))
        warning = "".join(f"**Warning: {w}**\n\n" for w in warnings)
        main = results["main"]
        details = (
            warning
            + f"{main['what']} ({steps} steps)"
            + "".join(
                f". {self.models.label(k)}: {r['what'].split(' — ', 1)[1]}"
                for k, r in results.items()
                if k != "main" and " — " in r.get("what", "")
            )
            + ". Locality = MSE_out / MSE_in (lower = more local)"
            + (", against the unedited reconstruction of the photo" if main.get("photo") else "")
            + f". Heatmaps: CIELAB distance dE from black (0) to white ({vmax:.1f}), shared scale; cyan outline = "
            "edited region.\n\n" + "\n".join(rows)
        )
        real = [
            to_display(main["image_A"]),
            round(main["loc_A"]["lab_paper"], 4),
            warning + f"{main['what']}: locality {main['loc_A']['lab_paper']:.4f} (MSE_out / MSE_in, Lab; lower = "
            "more local). All results are on the *Generate & edit* tab."
            + (
                f" The whole photo ({pasted.width}x{pasted.height}) with the edit pasted back is below; download it "
                "with the button on its corner."
                if pasted is not None
                else ""
            ),
            pasted,
        ]
        return outputs + [details] + real

    @staticmethod
    def _paste_back(faces: Dict[str, Face], results: Dict[str, dict]) -> Dict[str, PIL.Image.Image]:
        """The main model's edited face pasted back into its photo, for each edited face that came from a photo
        with a found face (`AlignedFace.paste_back`, only where the edit changed the unedited reconstruction, so
        the rest of the face keeps the photo's full resolution)."""
        main, pasted = results["main"], {}
        for name, face in faces.items():
            if face.aligned is not None and main.get(f"image_{name}") is not None:
                edited, before = to_pil(main[f"image_{name}"]), to_pil(main[f"before_{name}"])
                pasted[name] = face.aligned.paste_back(edited, reference=before)
        return pasted

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
        strength: Optional[float] = None,
        peer: bool = False,
        session: Optional[Session] = None,
        progress=gr.Progress(),
    ) -> list:
        """Redraws face A inside the region with noise from `new_seed` (the same noise on both models): x_T of a
        generated face; x_t0 of a photo's `InversionOutput` at `strength` (`pipe.resample_region(inv, ...)`). With
        `peer`, the comparison model's edit is the blended one (`blend=True`, the training-free masked edit)."""
        session, steps = self._require_faces(session), check_steps(steps)
        new_seed = check_seed(new_seed, "new seed")
        strength = self._strength(strength)
        face_a = session.faces["A"]
        photo = face_a.is_photo
        clip_sample = clip_setting(face_a)
        harmonize = harmonize_setting(harmonize, face_a)
        results, kept = {}, {}
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"resampling on the {self.models.label(key)} model")
                start, image = self._start(face_a, key, steps, strength, photo)
                mask = self._mask(key, region, dilation, editor, image, start)
                gen = torch.Generator("cpu").manual_seed(new_seed)
                blend = bool(peer) and key != "main"
                if photo:  # continues the photo's DDIM trajectory from t0, unclipped (never harmonised)
                    out = pipe.resample_region(
                        start, mask, generator=gen, num_inference_steps=steps, output_type="pt", blend=blend
                    )
                else:
                    out = pipe.resample_region(
                        start,
                        mask,
                        generator=gen,
                        num_inference_steps=steps,
                        output_type="pt",
                        clip_sample=clip_sample,
                        harmonize_noise=harmonize,
                        blend=blend,
                    )
                edited = out.images.cpu()
                what = f"Resampled **{region}** of face A with seed {new_seed}"
                results[key] = {
                    "what": what
                    + (f" (your photo, {self._from_photo_note(start, steps)})" if photo else "")
                    + (BLENDED_NOTE if blend else ""),
                    "image_A": _hwc(edited),
                    "before_A": _hwc(image),
                    "diff_A": _np(self.models.lib.difference_map(image, edited, "lab")[0]),
                    "loc_A": self._locality(image, edited, out.mask.cpu()),
                    "mask": _np(out.mask[0, 0]) > 0.5,
                    "warning": getattr(out, "warning", None),
                    "photo": photo,
                }
                kept[key] = (_np(out.latents[0]), _hwc(edited))
        source = f"A with {region} resampled (seed {new_seed})"
        pasted = self._paste_back({"A": face_a}, results)
        session.edited = {"A": self._kept_face(source, kept, steps, photo, face_a.aligned, pasted.get("A"))}
        return self._edit_outputs(results, steps, pasted.get("A")) + [session]

    def _kept_face(
        self,
        source: str,
        kept: Dict[str, Tuple[np.ndarray, np.ndarray]],
        steps: int,
        photo: bool,
        aligned: Any = None,
        pasted: Optional[PIL.Image.Image] = None,
    ) -> Face:
        """The face an edit leaves for "Keep the edit": for a photo, the edited image (the main model's) as a new
        photo, inverted again before the next edit (so that its masks come from the edited image and any strength
        or step count can follow); for a generated face, the edited x_T per model."""
        if photo:  # a later edit is pasted into the photo with this one
            aligned = dataclasses.replace(aligned, photo=pasted) if aligned is not None and pasted else None
            return Face(f"{source}, kept as a photo", upload=kept["main"][1], aligned=aligned)
        face = Face(source)
        for key, (latents, image) in kept.items():
            face.latents[key] = latents
            face.images[f"{key}@{steps}"] = image
        return face

    @user_errors
    def swap(
        self,
        region: str,
        dilation: float,
        editor: Optional[dict],
        steps: float,
        compare: bool,
        harmonize: bool,
        strength: Optional[float] = None,
        peer: bool = False,
        session: Optional[Session] = None,
        harmonize_photo: Optional[bool] = None,
        progress=gr.Progress(),
    ) -> list:
        """Exchanges the region (defined on face A) between faces A and B, on each model. Generated faces exchange
        x_T; when either face is a photo, both are taken at the same inversion (`strength`, t0) and the
        `InversionOutput`s are swapped (`pipe.swap_regions(inv_a, inv_b, mask)`): a generated face is inverted from
        its rendering for that, and `harmonize_photo` (default on, `PHOTO_SWAP_HARMONIZE`) makes it the harmonised
        photo swap (the part keeps its shape, not the donor's colour cast). With `peer`, the comparison model's edit
        is the blended one (`blend=True`). A photo with a found face gets the edit pasted back into it."""
        session, steps = self._require_faces(session, need_b=True), check_steps(steps)
        strength = self._strength(strength)
        if harmonize_photo is not None and not isinstance(harmonize_photo, (bool, np.bool_)):
            raise gr.Error(f"Harmonised photo swap must be true or false, got {harmonize_photo!r}.")
        photo_shift = PHOTO_SWAP_HARMONIZE if harmonize_photo is None or harmonize_photo else 0.0
        face_a, face_b = session.faces["A"], session.faces["B"]
        photo = face_a.is_photo or face_b.is_photo
        results = {}
        clip_sample = clip_setting(face_a, face_b)
        harmonize = harmonize_setting(harmonize, face_a, face_b)
        kept = {"A": {}, "B": {}}
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"swapping on the {self.models.label(key)} model")
                start_a, img_a = self._start(face_a, key, steps, strength, photo)
                start_b, img_b = self._start(face_b, key, steps, strength, photo)
                mask = self._mask(key, region, dilation, editor, img_a, start_a)
                blend = bool(peer) and key != "main"
                if photo:  # both at the same t0; continued unclipped (never noise-harmonised)
                    extra = (
                        {"harmonize_photo": photo_shift}
                        if photo_shift and _has_arg(pipe.swap_regions, "harmonize_photo")
                        else {}
                    )
                    out = pipe.swap_regions(
                        start_a, start_b, mask, num_inference_steps=steps, output_type="pt", blend=blend, **extra
                    )
                else:
                    out = pipe.swap_regions(
                        start_a,
                        start_b,
                        mask,
                        num_inference_steps=steps,
                        output_type="pt",
                        clip_sample=clip_sample,
                        harmonize_noise=harmonize,
                        blend=blend,
                    )
                new_a, new_b, used = out.images_a.cpu(), out.images_b.cpu(), out.mask.cpu()
                what = f"Swapped **{region}** between faces A and B"
                if photo:
                    generated = [f for f, face in (("A", face_a), ("B", face_b)) if not face.is_photo]
                    what += f" (photos {self._from_photo_note(start_a, steps)}" + (
                        f"; generated face {generated[0]} was inverted from its image the same way, so that both "
                        "are at the same timestep)"
                        if generated
                        else ")"
                    )
                    what += (
                        "; harmonised photo swap: the part keeps its shape, the receiving face's colouring"
                        if extra
                        else ""
                    )
                results[key] = {
                    "what": what + (BLENDED_NOTE if blend else ""),
                    "mask": _np(used[0, 0]) > 0.5,
                    "warning": getattr(out, "warning", None),
                    "photo": photo,
                }
                for f, before, after, lat in (("A", img_a, new_a, out.latents_a), ("B", img_b, new_b, out.latents_b)):
                    results[key][f"image_{f}"] = _hwc(after)
                    results[key][f"before_{f}"] = _hwc(before)
                    results[key][f"diff_{f}"] = _np(self.models.lib.difference_map(before, after, "lab")[0])
                    results[key][f"loc_{f}"] = self._locality(before, after, used)
                    kept[f][key] = (_np(lat[0]), _hwc(after))
        faces = {"A": face_a, "B": face_b}
        pasted = self._paste_back(faces, results)
        session.edited = {
            f: self._kept_face(f"{f} after swapping {region}", kept[f], steps, photo, faces[f].aligned, pasted.get(f))
            for f in "AB"
        }
        return self._edit_outputs(results, steps, pasted.get("A", pasted.get("B"))) + [session]

    def _shown(self, face: Face, steps: int, strength: float) -> np.ndarray:
        """The image of a face shown as face A or B: its rendering, or a photo's reconstruction at `strength`."""
        return _hwc(self._start(face, "main", steps, strength, face.is_photo)[1])

    @user_errors
    def keep_edit(
        self, steps: float, strength: Optional[float] = None, session: Optional[Session] = None
    ) -> Tuple[np.ndarray, np.ndarray, dict, Session, str]:
        """Makes the last edit's result(s) the new face A (and B after a swap), to chain edits. An edited photo
        becomes a new photo: it is inverted again (at `strength`) and shown as its reconstruction."""
        session, steps = self._require_faces(session), check_steps(steps)
        strength = self._strength(strength)
        if not session.edited:
            raise gr.Error("There is no edit to keep yet: resample or swap a region first.")
        session.faces.update(session.edited)
        session.edited = {}
        with self.models.lock:
            img_a = self._shown(session.faces["A"], steps, strength)
            img_b = self._shown(session.faces["B"], steps, strength) if "B" in session.faces else None
        info = f"Face A is now: {session.faces['A'].source}" + (
            f"; face B: {session.faces['B'].source}" if "B" in session.faces else ""
        )
        if session.faces["A"].is_photo:
            info += f". Edited photos are inverted again (strength {strength:g}) before the next edit."
        return to_display(img_a), None if img_b is None else to_display(img_b), editor_value(img_a), session, info

    def _found(self, path: Optional[str], found: Optional[FoundFaces] = None) -> FoundFaces:
        """The faces of the uploaded photo at `path`: those the face finder already kept for it, else found now."""
        if found is not None and getattr(found, "path", None) == path and path:
            return found
        with self.models.lock:  # one detector for everyone
            return find_upload_faces(path, self.models.resolution)

    @user_errors
    def find_faces(self, path: Optional[str], found: Optional[FoundFaces] = None) -> Tuple[list, dict, str, Any]:
        """Finds and aligns the faces of an uploaded photo (`prepare_data.align_faces`): a gallery of the aligned
        faces, the face picker (largest first), a note, and the `FoundFaces` kept for `invert_upload`."""
        if not path:
            return [], gr.update(choices=[], value=None), "", None
        found = self._found(path, found)
        h, w = self.models.resolution
        gallery = [
            (to_display(np.asarray(f.image, np.float32) / 255.0), label)
            for f, (label, _) in zip(found.faces, face_choices(found))
        ]
        if found.faces:
            info = (
                f"Found {len(found.faces)} face{'s' if len(found.faces) > 1 else ''} in your "
                f"{found.photo.width}x{found.photo.height} photo, aligned to {w}x{h}"
                + (": pick one, then invert it." if len(found.faces) > 1 else ": invert it.")
            )
        else:
            info = "**No face found** in your photo: inverting it would use its centre square instead."
        info += "".join(f" {n}" for n in found.notes)
        picker = gr.update(choices=face_choices(found), value="1" if found.faces else None)
        return gallery, picker, info, found

    @user_errors
    def invert_upload(
        self,
        path: Optional[str],
        steps: float,
        compare: bool,
        strength: Optional[float] = None,
        session: Optional[Session] = None,
        face_choice: Optional[str] = None,
        found: Optional[FoundFaces] = None,
        progress=gr.Progress(),
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, dict, Session, str, None]:
        """Uploaded photo -> the chosen face (`face_choice`, "1" = the largest; default the largest) aligned to the
        model's geometry (`prepare_data.align_faces`; the centre square when no face is found) -> DDIM inversion at
        `strength` (`pipe.invert`) -> becomes face A (B is kept, and a generated B is inverted at the same strength
        now, so a swap with it answers quickly). Edits of it are pasted back into the photo."""
        steps = check_steps(steps)
        strength = self._strength(strength)
        found = self._found(path, found)
        image, aligned, note = chosen_face(found, face_choice, self.models.resolution)
        session = copy.copy(session) if session is not None else Session()
        session.faces = dict(session.faces)
        face = Face("uploaded face", upload=image, aligned=aligned)
        psnrs, inv = [], None
        with self.models.lock:
            pipes = self.models.pipes(compare)
            for i, key in enumerate(pipes):
                progress(0.1 + 0.8 * i / len(pipes), desc=f"inverting on the {self.models.label(key)} model")
                inv_k, recon = self._photo(face, key, steps, strength)
                inv = inv if inv is not None else inv_k
                mse = float(((recon - _chw(image)) ** 2).mean())
                psnrs.append(f"{self.models.label(key)}: {-10 * math.log10(max(mse, 1e-12)):.1f} dB")
                if "B" in session.faces:  # ready for a swap: B at the same timestep (cached on the face)
                    self._photo(session.faces["B"], key, steps, strength)
        session.faces["A"], session.edited = face, {}
        recon_a = face.images[f"main@{steps}@{strength:g}"]
        self.models.main.scheduler.set_timesteps(steps)
        n = sum(int(t) <= inv.timestep for t in self.models.main.scheduler.timesteps)  # the steps inverted
        info = (
            f"{note}\n\nInverted with DDIM at strength **{strength:g}**: {n} of {steps} steps, down "
            f"to t0 = {inv.timestep}; the reconstruction redraws it from there (PSNR " + ", ".join(psnrs) + "). It "
            "is now face A: edit it on the *Generate & edit* tab (edits run from t0, so they keep more of the photo "
            "at a lower strength)."
        )
        if inv.warning:
            info = f"**Warning: {inv.warning}**\n\n" + info
        shown = (to_display(image), to_display(recon_a), to_display(recon_a), editor_value(recon_a))
        return shown + (session, info, None)

    @staticmethod
    def _attribution_face(session: Session, face_name: str) -> Face:
        if face_name not in ("A", "B") or face_name not in session.faces:
            raise gr.Error(f"Face must be 'A' or 'B' (and exist), got {face_name!r}.")
        return session.faces[face_name]

    @staticmethod
    def _absent_players(pipe: Any, face: Face, latents: torch.Tensor, seed: int, harmonize: bool) -> torch.Tensor:
        """The other x_T whose regions absent players take. Drawn here (as the pipeline's "other_sample" would) to
        refuse a seed that redraws the face's own x_T (every phi would be 0)."""
        other = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed))
        if harmonize_setting(harmonize, face):
            other = pipe.harmonize(other)  # absent players get noise of the kind the face was drawn from
        if not face.is_photo and torch.allclose(other, latents.to(other.dtype), rtol=0, atol=1e-5):
            raise gr.Error(f"Seed {seed} draws this face's own x_T, so no region could matter; pick another seed.")
        return other

    @user_errors
    def attribute(
        self,
        face_name: str,
        steps: float,
        num_timesteps: float,
        seed: float,
        compare: bool,
        harmonize: bool,
        strength: Optional[float] = None,
        session: Optional[Session] = None,
        progress=gr.Progress(),
    ) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, dict, dict, str, dict]:
        """Exact K x K Shapley attribution of a face at `num_timesteps` timesteps spread over the schedule; for a
        photo over the part of the schedule its inversion covers (t <= t0), on its trajectory (`attribute(inv)`)."""
        session, steps = self._require_faces(session), check_steps(steps)
        seed = check_seed(seed, "attribution seed")
        strength = self._strength(strength)
        face = self._attribution_face(session, face_name)
        n = check_whole(num_timesteps, "Number of timesteps", 1, MAX_ATTRIBUTION_TIMESTEPS)
        result = {"steps": steps, "models": {}, "note": ""}
        with self.models.lock:
            for i, (key, pipe) in enumerate(self.models.pipes(compare).items()):
                progress(0.1 + 0.45 * i, desc=f"Shapley attribution on the {self.models.label(key)} model")
                start, image = self._start(face, key, steps, strength, face.is_photo)
                pipe.scheduler.set_timesteps(steps)
                schedule = pipe.scheduler.timesteps.tolist()
                if face.is_photo:  # the photo's trajectory starts at t0: only t <= t0 can be attributed
                    schedule = [t for t in schedule if t <= start.timestep]
                    result["note"] = (
                        f" Face {face_name} is a photo {self._from_photo_note(start, steps)}: t <= t0 only."
                    )
                picks = sorted(
                    {
                        schedule[j]
                        for j in np.linspace(0, len(schedule) - 1, min(n, len(schedule))).round().astype(int)
                    },
                    reverse=True,
                )
                regions = pipe.region_masks(
                    start if face.is_photo else image * 2 - 1, **({} if face.is_photo else {"is_latents": False})
                )
                latents = start.latents if face.is_photo else start
                other = self._absent_players(pipe, face, latents, seed, harmonize)
                out = pipe.attribute(start, masks=regions, timesteps=picks, num_inference_steps=steps, baseline=other)
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

    @user_errors
    def attribute_end_to_end(
        self,
        face_name: str,
        steps: float,
        seed: float,
        compare: bool,
        harmonize: bool,
        session: Optional[Session] = None,
        progress=gr.Progress(),
    ) -> Tuple[np.ndarray, Optional[np.ndarray], str, dict]:
        """Exact K x K Shapley attribution from the regions of x_T to the regions of the final image
        (`pipe.attribute_end_to_end`: 2^K full sampling runs per model), for a generated face."""
        session, steps = self._require_faces(session), check_steps(steps)
        seed = check_seed(seed, "attribution seed")
        face = self._attribution_face(session, face_name)
        if face.is_photo:
            raise gr.Error(
                f"Face {face_name} is an uploaded photo: it has no x_T of its own (it is inverted only down to t0), "
                "so the end-to-end game (regions of x_T -> regions of the image) cannot be played on it. Use "
                "'Compute attribution' (per timestep, t <= t0) or a generated face."
            )
        models, mats = {}, {}
        with self.models.lock:
            pipes = self.models.pipes(compare)
            for i, (key, pipe) in enumerate(pipes.items()):
                progress(
                    0.05 + 0.9 * i / len(pipes), desc=f"End-to-end attribution on the {self.models.label(key)} model"
                )
                latents, image = self._render(face, key, steps)
                other = self._absent_players(pipe, face, latents, seed, harmonize)
                regions = pipe.region_masks(image * 2 - 1, is_latents=False)
                out = pipe.attribute_end_to_end(
                    latents, masks=regions, num_inference_steps=steps, baseline=other, clip_sample=face.clip_sample
                )
                models[key] = {
                    "label": self.models.label(key),
                    "region_names": list(pipe.region_names),  # the partition follows the concepts' order
                    "abs_phi": _np(out.abs_phi[0]).tolist(),
                    "leakage": float(out.leakage[0]),
                }
        vmax = max(float(np.max(m["abs_phi"])) for m in models.values())
        for key, m in models.items():
            mats[key] = attribution_figure(
                np.asarray(m["abs_phi"]),
                m["region_names"],
                f"{m['label']}\n|phi| end to end (x_T -> image), leakage {m['leakage']:.3f}",
                vmax,
                input_label="input region j of x_T",
                output_label="output region k of the final image",
            )
        md = (
            f"End to end, face {face_name}, {steps} steps, 2^K full runs per model: "
            + ", ".join(f"{m['label']}: leakage {m['leakage']:.3f}" for m in models.values())
            + ". Columns: regions of x_T (the players); rows: regions of the final image."
        )
        summary = {
            key: {"label": m["label"], "region_names": m["region_names"], "leakage": m["leakage"]}
            for key, m in models.items()
        }
        return mats["main"], mats.get("baseline"), md, summary

    def _attribution_views(self, result: dict, index: int):
        models = result["models"]
        index = int(np.clip(index, 0, len(models["main"]["timesteps"]) - 1))
        t = models["main"]["timesteps"][index]
        vmax = max(float(np.max(m["abs_phi"][index])) for m in models.values())
        mats = {
            key: attribution_figure(
                np.asarray(m["abs_phi"][index]),
                m["region_names"],
                f"{m['label']}\n|phi| at t = {t}, leakage {m['leakage'][index]:.3f}",
                vmax,
            )
            for key, m in models.items()
        }
        curve = leakage_figure({m["label"]: (m["timesteps"], m["leakage"]) for m in models.values()}, t)
        md = (
            f"t = **{t}** (timestep {index + 1} of {len(models['main']['timesteps'])} analysed, {result['steps']}-step schedule). "
            + ", ".join(
                f"{m['label']}: leakage {m['leakage'][index]:.3f} here, {m['mean_leakage']:.3f} on average"
                for m in models.values()
            )
            + result.get("note", "")
        )
        return mats["main"], mats.get("baseline"), curve, md

    @user_errors
    def attribution_at(
        self, index: float, result: Optional[dict]
    ) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, str]:
        """Re-renders the stored attribution at timestep `index` (no model call)."""
        if not result or not result.get("models"):
            raise gr.Error("Compute the attribution first.")
        return self._attribution_views(result, int(index or 0))

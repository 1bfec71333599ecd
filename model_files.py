# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Saved models on disk: the one pipeline loader (app, evaluation, parser training, scripts) and the one lister of
training checkpoints (`checkpoint-STEP/` folders of train_interpretable.py and train_parser.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from typing import Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
PIPELINE_FILE = os.path.join(ROOT, "pipeline_interpretable_ddpm.py")
# what the app and the evaluation call on a pipeline; a folder without them is not an InterpretableDDPMPipeline
INTERPRETABLE_METHODS = ("swap_regions", "resample_region", "invert", "attribute", "concept_mask")


def resolve_model_path(name_or_path: str) -> str:
    """A local folder (absolute, relative to the working directory or to the repository root), else the name as
    given (a Hub id)."""
    for candidate in (name_or_path, os.path.join(ROOT, name_or_path)):
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return name_or_path


def looks_like_local_path(name: str) -> bool:
    """True unless `name` has the `owner/name` shape of a Hub id."""
    return name.startswith((".", "/", "~")) or name.startswith("models/") or name.count("/") != 1


def check_pipeline_path(path: str) -> None:
    """Raises FileNotFoundError unless `path` is a complete folder written by `save_pretrained`: `model_index.json`
    (written last by `save_pipeline`), and for each component it names a folder with its config and whole weights."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Pipeline path '{path}' does not exist (give a folder written by save_pretrained).")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Pipeline path '{path}' is a file; give the folder written by save_pretrained.")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        if os.path.isdir(os.path.join(path, PIPELINE_PARTIAL)) or os.path.isdir(os.path.join(path, "unet")):
            raise FileNotFoundError(
                f"'{path}' holds an incomplete pipeline (no model_index.json: its save was interrupted). Write it "
                "again, e.g. rerun the training with --resume_from_checkpoint latest."
            )
        raise FileNotFoundError(
            f"'{path}' has no model_index.json; it is not a saved diffusers pipeline (see save_pretrained)."
        )
    problem = pipeline_problem(path)
    if problem:
        raise FileNotFoundError(f"'{path}' holds an incomplete pipeline: {problem}. Save or download it again.")


def pipeline_problem(path: str) -> Optional[str]:
    """Why the pipeline folder `path` (with a model_index.json) is not complete, or None: a component folder that
    model_index.json names is missing, has no config, a model without weights, or a cut-off safetensors file."""
    try:
        with open(os.path.join(path, "model_index.json")) as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        return f"model_index.json cannot be read ({err})"
    if not isinstance(index, dict):
        return "model_index.json is not a JSON object"
    for name, value in index.items():
        if name.startswith("_") or not (isinstance(value, list) and len(value) == 2 and value[0] and value[1]):
            continue
        if value[0] not in ("diffusers", "transformers"):
            continue
        folder = os.path.join(path, name)
        if not os.path.isdir(folder):
            return f"the component folder '{name}/' named in model_index.json is missing"
        files = os.listdir(folder)
        if not any(f.endswith(".json") for f in files):
            return f"'{name}/' has no config file"
        if "config.json" in files and not any(f.endswith((".safetensors", ".bin")) for f in files):
            return f"'{name}/' has no weights"
        for f in files:
            if f.endswith(".safetensors"):
                problem = safetensors_problem(os.path.join(folder, f))
                if problem:
                    return f"{name}/{f} {problem}"
    return None


def safetensors_problem(path: str) -> Optional[str]:
    """Why `path` is not a whole safetensors file (cut off by a kill or a full disk), or None. Reads only the header:
    the file must be exactly 8 + header + the end of its last tensor long."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"is cut off ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"is cut off ({size} bytes, its header alone is {n})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        return f"cannot be read ({type(err).__name__}: {err})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return f"is cut off or damaged ({size} bytes where its header describes {8 + n + end})"
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Writing without ever leaving a half-written file or folder
# ----------------------------------------------------------------------------------------------------------------------
PIPELINE_PARTIAL = ".pipeline.partial"  # where `save_pipeline` writes before moving the pipeline into place
CHECKPOINT_MARKER = "checkpoint_complete.json"  # written last into a checkpoint: it is complete


def fsync_path(path: str) -> None:
    """Flushes a file (or a folder's entries) to the disk, so that a rename after it never points at lost data."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file beside it and `os.replace`: a reader (or a run killed
    meanwhile) sees the old file or the new one, never a part of the new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj, **dump_kwargs) -> None:
    dump_kwargs.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def replace_path(new: str, target: str) -> None:
    """Moves the file or folder `new` to `target`, replacing what is there. A folder is replaced by renaming the old
    one aside first (a folder cannot be renamed over a non-empty one), then deleting it."""
    if os.path.isdir(target) and not os.path.islink(target):
        aside = f"{target}.old{os.getpid()}"
        os.rename(target, aside)
        os.rename(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(new, target)


def save_pipeline(pipeline, directory: str, extra_files: Optional[Dict[str, str]] = None, **save_kwargs) -> None:
    """`pipeline.save_pretrained(directory)` that never leaves a half-written pipeline: it is written into
    `directory/.pipeline.partial`, checked, and moved into place entry by entry with `model_index.json` (what makes a
    folder a pipeline to `load_pipeline`) removed first and written last. Other files in `directory` stay.

    Args:
        extra_files (`Dict[str, str]`, *optional*): `{file name: text}` written with the pipeline (a model card, a
            summary), so that they appear together with it."""
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, PIPELINE_PARTIAL)
    if os.path.exists(partial):
        shutil.rmtree(partial)
    try:
        pipeline.save_pretrained(partial, **save_kwargs)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(partial, name), "w") as f:
                f.write(text)
        problem = pipeline_problem(partial)
        if problem:
            raise OSError(f"the saved pipeline is incomplete: {problem}")
        for root, _, files in os.walk(partial):
            for name in files:
                fsync_path(os.path.join(root, name))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    index = os.path.join(directory, "model_index.json")
    if os.path.exists(index):
        os.remove(index)  # from here until the new index is in place, the folder is not a pipeline
    for name in sorted(os.listdir(partial)):
        if name != "model_index.json":
            replace_path(os.path.join(partial, name), os.path.join(directory, name))
    fsync_path(directory)
    os.replace(os.path.join(partial, "model_index.json"), index)
    fsync_path(directory)
    shutil.rmtree(partial, ignore_errors=True)


def is_disk_full(err: BaseException, directory: str) -> bool:
    """Whether `err` (or an error it was raised from) means the disk is full: ENOSPC, or a writer's own words for it
    (torch's "basic_ios::clear: iostream error" / "file write failed", safetensors' "StorageFull"), or under 1 MiB
    left where it wrote."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if any(s in text for s in ("No space left", "StorageFull", "iostream error", "file write failed")):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        return False


def load_pipeline(name_or_path: str, device: str = "cpu", dtype: Optional[torch.dtype] = torch.float32):
    """Loads an `InterpretableDDPMPipeline` from a folder or Hub id with the repository's pipeline file, on `device`
    in `dtype` (None: as loaded), progress bars off.

    A plain diffusers DDPM/DDIM pipeline folder (e.g. a baseline saved as `DDPMPipeline`) is wrapped into the
    interpretable pipeline with a DDIM scheduler made from its scheduler config, so it can be edited the same way.
    Raises FileNotFoundError for a missing local folder, OSError for a Hub id that cannot be fetched and ValueError
    for a pipeline of another class."""
    from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel

    path = resolve_model_path(name_or_path)
    if os.path.exists(path) or looks_like_local_path(path):
        check_pipeline_path(path)
        with open(os.path.join(path, "model_index.json")) as f:
            class_name = json.load(f).get("_class_name")
    else:
        class_name = None
    if class_name in ("DDPMPipeline", "DDIMPipeline"):
        import pipeline_interpretable_ddpm

        unet = UNet2DModel.from_pretrained(path, subfolder="unet")
        # DDIM with eta = 0 (generation deterministic in x_T) and the saved schedule's own x_0 clipping (on by default
        # for DDPM schedulers), as the interpretable pipelines clip: the baseline is sampled the same way. Inversion
        # (real images) regenerates unclipped in every pipeline (see pipe.invert).
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler", thresholding=False)
        pipe = pipeline_interpretable_ddpm.InterpretableDDPMPipeline(unet=unet, scheduler=scheduler)
    else:
        try:
            pipe = DiffusionPipeline.from_pretrained(path, custom_pipeline=PIPELINE_FILE, trust_remote_code=True)
        except OSError as err:
            raise OSError(
                f"Could not load the pipeline '{name_or_path}': {err}. Without internet only local folders work."
            ) from err
    missing = [m for m in INTERPRETABLE_METHODS if not hasattr(pipe, m)]
    if missing:
        raise ValueError(
            f"'{name_or_path}' loaded as {type(pipe).__name__}, which has no `{missing[0]}`; an "
            "InterpretableDDPMPipeline is needed (see pipeline_interpretable_ddpm.py)."
        )
    if dtype is None:
        pipe.to(device)
    else:
        pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def list_checkpoints(output_dir: str) -> List[str]:
    """Names of the `checkpoint-STEP` folders in `output_dir`, oldest step first ([] when there is none); a save in
    progress (`checkpoint-STEP.partial`) is not one. `checkpoint_problem` tells whether one is complete."""
    if not os.path.isdir(output_dir):
        return []
    ckpts = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[1].isdigit()]
    return sorted(ckpts, key=lambda d: int(d.split("-")[1]))


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """Path of the `checkpoint-STEP` folder with the highest step in `output_dir`, or None."""
    ckpts = list_checkpoints(output_dir)
    return os.path.join(output_dir, ckpts[-1]) if ckpts else None


def checkpoint_file_sizes(path: str) -> Dict[str, int]:
    """`{relative path: bytes}` of every file under the checkpoint folder `path` (the completion marker excepted)."""
    sizes = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if rel != CHECKPOINT_MARKER:
                sizes[rel] = os.path.getsize(full)
    return sizes


def write_checkpoint_marker(path: str, info: dict) -> None:
    """Flushes every file of the checkpoint folder `path` to disk, then writes `checkpoint_complete.json` (their sizes
    and `info`) last: a checkpoint is complete exactly when its marker is there and every file has its size."""
    sizes = checkpoint_file_sizes(path)
    for rel in sizes:
        fsync_path(os.path.join(path, rel))
    atomic_write_json(os.path.join(path, CHECKPOINT_MARKER), {**info, "files": sizes}, sort_keys=True)


def read_checkpoint_marker(path: str) -> Optional[dict]:
    """The completion marker of a checkpoint folder, or None (a checkpoint written before markers existed)."""
    marker = os.path.join(path, CHECKPOINT_MARKER)
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        return json.load(f)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the checkpoint folder `path` cannot be resumed from, or None when it is complete: with a completion marker,
    every file it lists must have its recorded size; without one (older checkpoints, made complete by a rename),
    every safetensors file must be whole and no file empty."""
    if not os.path.isdir(path):
        return "it is not a folder"
    try:
        marker = read_checkpoint_marker(path)
    except (OSError, ValueError) as err:
        return f"its {CHECKPOINT_MARKER} cannot be read ({type(err).__name__})"
    if marker is not None:
        for rel, size in sorted(marker.get("files", {}).items()):
            full = os.path.join(path, rel)
            if not os.path.isfile(full):
                return f"{rel} is missing"
            if os.path.getsize(full) != size:
                return f"{rel} has {os.path.getsize(full)} bytes, {size} were written"
        return None
    sizes = checkpoint_file_sizes(path)
    if not sizes:
        return "it holds no file"
    for rel, size in sorted(sizes.items()):
        if size == 0:
            return f"{rel} is empty"
        if rel.endswith(".safetensors"):
            problem = safetensors_problem(os.path.join(path, rel))
            if problem:
                return f"{rel} {problem}"
    return None

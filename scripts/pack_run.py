"""Packs a finished training run for transfer: the pipeline (UNet in fp16), logs and sample grids, no checkpoints.

    python scripts/pack_run.py runs/gpu/interpretable out/interpretable.tgz
"""

import os
import sys
import tarfile
import tempfile

import torch
from safetensors.torch import load_file, save_file


def main(run_dir: str, out_path: str) -> None:
    with tarfile.open(out_path, "w:gz") as tar:
        for root, dirs, files in os.walk(run_dir):
            dirs[:] = [d for d in dirs if not d.startswith("checkpoint-")]
            for name in files:
                path = os.path.join(root, name)
                arc = os.path.relpath(path, os.path.dirname(os.path.abspath(run_dir)))
                if name.endswith(".safetensors"):
                    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(path).items()}
                    with tempfile.TemporaryDirectory() as tmp:
                        half = os.path.join(tmp, name)
                        save_file(tensors, half, metadata={"format": "pt"})
                        tar.add(half, arcname=arc)
                else:
                    tar.add(path, arcname=arc)
    print(out_path, os.path.getsize(out_path) // 1024, "KiB")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

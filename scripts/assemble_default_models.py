"""Turns finished training runs into the shipped pipelines under models/ (fp16 UNet, clipped DDIM, run records).

    python -m scripts.assemble_default_models runs/default/interpretable models/interpretable-ddpm-faces64
    python -m scripts.assemble_default_models runs/default/baseline models/ddpm-faces64-baseline

The parser and concept templates are attached afterwards with `python train_parser.py --mode attach`.
"""

import argparse
import os
import shutil

import torch
from diffusers import DDIMScheduler

from model_files import PIPELINE_FILE, ROOT, load_pipeline

RUN_RECORDS = ("README.md", "training_config.json", "train_summary.json", "train_log.jsonl", "run_record.json")


def ship_pipeline_file(out_dir: str) -> str:
    """Puts the pipeline file into a saved folder: inside the repository a relative link to the one source (the
    top-level pipeline_interpretable_ddpm.py, so models/*/ never drift from it), elsewhere a copy. Hub uploads
    (scripts/push_models.py) send the file the link points at. Returns the file's path."""
    target = os.path.join(out_dir, "pipeline_interpretable_ddpm.py")
    if os.path.lexists(target):
        os.unlink(target)
    folder, root = os.path.realpath(out_dir), os.path.realpath(ROOT)
    if os.path.commonpath([folder, root]) == root:
        os.symlink(os.path.relpath(os.path.realpath(PIPELINE_FILE), folder), target)
    else:
        shutil.copyfile(PIPELINE_FILE, target)
    return target


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished training run (its top level holds model_index.json).")
    p.add_argument("out_dir", help="where to save the fp16 pipeline.")
    p.add_argument("--overwrite", action="store_true", help="replace a pipeline already saved in out_dir.")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    run_dir, out_dir = args.run_dir, args.out_dir
    if not os.path.isfile(os.path.join(run_dir, "model_index.json")):
        raise SystemExit(f"error: {run_dir} holds no saved pipeline (model_index.json is missing).")
    if os.path.exists(os.path.join(out_dir, "model_index.json")) and not args.overwrite:
        raise SystemExit(f"error: {out_dir} already holds a pipeline; pass --overwrite to replace it.")
    pipe = load_pipeline(run_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True, thresholding=False)
    pipe.unet.to(torch.float16)
    pipe.save_pretrained(out_dir)
    # the shipped folder carries the repository's pipeline file (diffusers may have loaded a cached older copy)
    ship_pipeline_file(out_dir)
    os.makedirs(os.path.join(out_dir, "training"), exist_ok=True)
    for name in RUN_RECORDS:
        if os.path.exists(os.path.join(run_dir, name)):
            shutil.copy(os.path.join(run_dir, name), os.path.join(out_dir, "training", name))
    print("saved", out_dir)


if __name__ == "__main__":
    main(parse_args())

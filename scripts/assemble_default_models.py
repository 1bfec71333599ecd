"""Turns finished training runs into the shipped pipelines under models/ (fp16 UNet, clipped DDIM, run records).

    python scripts/assemble_default_models.py runs/gpu800/interpretable models/interpretable-ddpm-faces64
    python scripts/assemble_default_models.py runs/gpu800/baseline models/ddpm-faces64-baseline

The parser and concept templates are attached afterwards with `python train_parser.py --mode attach`.
"""

import argparse
import os
import shutil
import sys

import torch
from diffusers import DDIMScheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import pipeline_interpretable_ddpm as pid  # noqa: E402

RUN_RECORDS = ("README.md", "training_config.json", "train_summary.json", "train_log.jsonl")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished training run (its top level holds model_index.json).")
    parser.add_argument("out_dir", help="where to save the fp16 pipeline.")
    parser.add_argument("--overwrite", action="store_true", help="replace a pipeline already saved in out_dir.")
    return parser.parse_args(argv)


def main(run_dir: str, out_dir: str, overwrite: bool = False) -> None:
    if not os.path.isfile(os.path.join(run_dir, "model_index.json")):
        raise SystemExit(f"error: {run_dir} holds no saved pipeline (model_index.json is missing).")
    if os.path.exists(os.path.join(out_dir, "model_index.json")) and not overwrite:
        raise SystemExit(f"error: {out_dir} already holds a pipeline; pass --overwrite to replace it.")
    pipe = pid.InterpretableDDPMPipeline.from_pretrained(run_dir, custom_pipeline=pid.__file__, trust_remote_code=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True, thresholding=False)
    pipe.unet.to(torch.float16)
    pipe.save_pretrained(out_dir)
    # the shipped folder carries the repo's current pipeline file (diffusers may have loaded a cached older copy)
    shutil.copy(pid.__file__, os.path.join(out_dir, "pipeline_interpretable_ddpm.py"))
    os.makedirs(os.path.join(out_dir, "training"), exist_ok=True)
    for name in RUN_RECORDS:
        if os.path.exists(os.path.join(run_dir, name)):
            shutil.copy(os.path.join(run_dir, name), os.path.join(out_dir, "training", name))
    print("saved", out_dir)


if __name__ == "__main__":
    args = parse_args()
    main(args.run_dir, args.out_dir, overwrite=args.overwrite)

"""The x_0 each model predicts along DDIM sampling, side by side from the same x_T: where in t a face takes shape
(and where a ghosted part appears) in one model and not in its twin.

    python -m scripts.denoising_trajectory models/interpretable-ddpm-faces64 models/ddpm-faces64-baseline \
        --indices 13 19 2 --out outputs/trajectory.png

One row per (pipeline, sample): the predicted x_0 at every `--every`-th of the `--num_inference_steps` steps, then
the final image; the x_T are evaluate.py's FID stream (`--seed`, sample `--indices`), as in the sample grids of
docs/evaluation.md. The timesteps of the columns are printed.
"""

import argparse
import os

import numpy as np
import torch
from PIL import Image

from evaluate import seeded_latents, to_uint8
from model_files import load_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipelines", nargs="+", help="pipeline folders or Hub ids")
    p.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2], help="samples of the FID stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--every", type=int, default=3, help="a column every this many steps")
    p.add_argument("--zoom", type=int, default=2)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--out", required=True, help="PNG to write (an existing file is not overwritten)")
    args = p.parse_args(argv)
    for name in ("num_inference_steps", "every", "zoom", "num_threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if min(args.indices) < 0:
        p.error(f"--indices must be >= 0, got {args.indices}.")
    if os.path.exists(args.out):
        p.error(f"--out {args.out} exists; choose another file (nothing is overwritten).")
    return args


@torch.no_grad()
def predicted_x0_rows(pipe, latents: torch.Tensor, num_inference_steps: int, every: int):
    """`(B, columns, H, W, 3)` uint8 predicted x_0 of the DDIM steps kept, the final image last; and their timesteps."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps)
    x, frames, kept = latents.to(pipe.unet.dtype), [], []
    for i, t in enumerate(scheduler.timesteps):
        step = scheduler.step(pipe.unet(x, t).sample, t, x)
        if i % every == 0:
            frames.append(step.pred_original_sample)
            kept.append(int(t))
        x = step.prev_sample
    frames.append(x)
    images = to_uint8(torch.stack(frames, 1) / 2 + 0.5)  # (B, columns, 3, H, W), as a saved PNG quantises it
    return images.permute(0, 1, 3, 4, 2).numpy(), kept


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.num_threads)
    rows = []
    for name in args.pipelines:
        pipe = load_pipeline(name)
        latents = seeded_latents(pipe.latent_shape, args.seed, "fid", args.indices)
        images, kept = predicted_x0_rows(pipe, latents, args.num_inference_steps, args.every)
        rows += [np.concatenate(list(sample), 1) for sample in images]
    grid = Image.fromarray(np.concatenate(rows))
    grid = grid.resize((grid.width * args.zoom, grid.height * args.zoom), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    grid.save(args.out)
    print(
        f"columns: predicted x_0 at t = {', '.join(map(str, kept))}, then the image; rows: {len(args.indices)} "
        f"samples of each of {', '.join(args.pipelines)} -> {args.out}"
    )


if __name__ == "__main__":
    main(parse_args())

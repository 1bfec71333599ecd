# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Overhead of InterpretableDDPMPipeline over plain diffusers, as ratios (not a test).

    python -m benchmarks.bench_pipeline                          # random UNet of the shipped size (64x64)
    python -m benchmarks.bench_pipeline --model models/interpretable-ddpm-faces64
    python -m benchmarks.bench_pipeline --threads 1 --clock cpu  # steady numbers on a machine shared with other jobs
    python -m benchmarks.bench_pipeline --steps 10 --repeats 5 --threads 2

Measured (random shipped-size UNet, 20 steps, batch 2, `--threads 1 --clock cpu`, 2-core shared CPU box):
__call__ 1.01x DDIMPipeline, swap_regions 0.98x generating both images, attribute 0.97x per timestep of 16 calls.
On the shipped model (`--model models/interpretable-ddpm-faces64 --steps 20 --batch-size 2 --threads 1 --clock cpu
--repeats 5`, 2026-12-03): __call__ 1.009x, swap_regions 0.969x, attribute 0.748x.

Prints three ratios (each the best of `--repeats` interleaved runs, to resist a busy machine):

1. `__call__` vs diffusers' `DDIMPipeline` on the same UNet, scheduler, noise and steps     goal <= 1.05x
2. `swap_regions` on a pair vs generating the two images (one batched `__call__` of 2)      goal <= 1.10x
3. `attribute`, per timestep, vs 2^K separate UNet calls of the same batch                   (reported)
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

import pipeline_interpretable_ddpm as pid
from model_files import load_pipeline


def shipped_size_unet(seed: int = 0) -> UNet2DModel:
    """A random-weight UNet2DModel with the architecture of the shipped 64x64 models."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=64,
        block_out_channels=(32, 64, 64, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def pipeline_to_time(model: str | None) -> pid.InterpretableDDPMPipeline:
    """The saved pipeline `model`, or a random-weight one of the shipped size."""
    if model:
        pipe = load_pipeline(model)
    else:
        pipe = pid.InterpretableDDPMPipeline(
            unet=shipped_size_unet(), scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
        )
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = "wall"


def interleaved(fns: dict, repeats: int) -> dict:
    """Best-of-`repeats` seconds of each function on `CLOCK`, run round-robin so that load spikes hit all alike."""
    clock = CLOCKS[CLOCK]
    best = {name: float("inf") for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best


def region_boxes(batch: int, size: int) -> torch.Tensor:
    """Eyes / nose / mouth boxes at the places of an aligned face crop; "rest" is added by `attribute` (K = 4)."""
    boxes = []
    for top, left, height, width in ((0.30, 0.20, 0.12, 0.60), (0.42, 0.42, 0.20, 0.16), (0.68, 0.32, 0.12, 0.36)):
        m = torch.zeros(size, size)
        m[int(top * size) : int((top + height) * size), int(left * size) : int((left + width) * size)] = 1
        boxes.append(m)
    return torch.stack(boxes)[None].expand(batch, -1, -1, -1).clone()


@torch.no_grad()
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved pipeline folder; random shipped-size UNet when omitted")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--batch-size", type=int, default=2, help="images per __call__ (and pairs per swap)")
    parser.add_argument("--attribute-steps", type=int, default=4, help="timesteps attributed in the attribute run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="'cpu' (process CPU time) is steadier than 'wall' on a machine shared with other jobs; use it with --threads 1",
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = args.clock

    pipe = pipeline_to_time(args.model)
    reference = DDIMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    reference.set_progress_bar_config(disable=True)
    channels, height, width = pipe.latent_shape
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(
        f"UNet {params:.1f}M parameters, {height}x{width}, {args.steps} DDIM steps, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads, best of {args.repeats} on the {CLOCK} clock"
    )

    # 1. __call__ vs DDIMPipeline (same noise: both draw it with randn_tensor from the same seed).
    def ours():
        pipe(
            batch_size=args.batch_size,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=args.steps,
            output_type="np",
        )

    def theirs():
        reference(
            batch_size=args.batch_size,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=args.steps,
            eta=0.0,
            output_type="np",
        )

    t = interleaved({"ours": ours, "ddim": theirs}, args.repeats)
    ratio = t["ours"] / t["ddim"]
    print(f"__call__ / DDIMPipeline:          {t['ours']:.3f}s / {t['ddim']:.3f}s = {ratio:.3f}x  (goal <= 1.05x)")

    # 2. swap_regions on pairs vs generating the two images of each pair.
    g = torch.Generator().manual_seed(1)
    latents_a = torch.randn(args.batch_size, channels, height, width, generator=g)
    latents_b = torch.randn(args.batch_size, channels, height, width, generator=g)
    mask = region_boxes(1, height)[0, 0] > 0.5  # the eyes box

    def swap():
        pipe.swap_regions(latents_a, latents_b, mask, num_inference_steps=args.steps, output_type="np")

    def generate_both():
        pipe(latents=torch.cat([latents_a, latents_b]), num_inference_steps=args.steps, output_type="np")

    t = interleaved({"swap": swap, "generate": generate_both}, args.repeats)
    ratio = t["swap"] / t["generate"]
    print(f"swap_regions / generate 2 images: {t['swap']:.3f}s / {t['generate']:.3f}s = {ratio:.3f}x  (goal <= 1.10x)")

    # 3. attribute per timestep vs 2^K separate UNet calls.
    regions = region_boxes(args.batch_size, height)
    k = regions.shape[1] + 1  # + rest
    pipe.scheduler.set_timesteps(args.steps)
    wanted = pipe.scheduler.timesteps[: args.attribute_steps].tolist()
    x_t = latents_a

    def attribute():
        pipe.attribute(x_t, regions, timesteps=wanted, num_inference_steps=args.steps, baseline=latents_b)

    def separate_calls():
        for _ in range(2**k):
            pipe.unet(x_t, wanted[0])

    t = interleaved({"attribute": attribute, "calls": separate_calls}, args.repeats)
    per_step = t["attribute"] / len(wanted)
    ratio = per_step / t["calls"]
    print(
        f"attribute per timestep / {2**k} separate UNet calls (K = {k}): {per_step:.3f}s / {t['calls']:.3f}s = "
        f"{ratio:.3f}x  (includes following the x and baseline trajectories)"
    )


if __name__ == "__main__":
    main(parse_args())

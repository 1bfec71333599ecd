"""Quick look at a training checkpoint (the 8-pair "screen"): 16 samples and the swap locality of eyes, nose, mouth.

    python -m scripts.quick_check_checkpoint runs/interpretable/checkpoint-600 outputs/screen-interpretable 8

The checkpoint's EMA weights go into the shipped baseline's pipeline shell (its scheduler and parser); a pipeline
folder works too. Writes OUT/samples.png and OUT/locality.json (CIELAB, paper normalisation, 20 DDIM steps, seed 0);
divide by the lambda = 0 twin's locality.json for the screen ratios. One torch thread unless THREADS is set.
"""

import argparse
import json
import os

import torch

import evaluate as ev
from model_files import ROOT

SHELL = os.path.join(ROOT, "models", "ddpm-faces64-baseline")
CONCEPTS = ["eyes", "nose", "mouth"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a training checkpoint (checkpoint-N/) or a pipeline folder")
    p.add_argument("out_dir")
    p.add_argument("num_pairs", nargs="?", type=int, default=8)
    args = p.parse_args(argv)
    if args.num_pairs < 1:
        p.error(f"num_pairs must be >= 1, got {args.num_pairs}")
    return args


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    pipe = ev.load_checkpoint_or_pipeline(args.checkpoint, SHELL)
    os.makedirs(args.out_dir, exist_ok=True)
    with torch.no_grad():
        latents = ev.seeded_latents(pipe.latent_shape, 0, "fid", list(range(16)))
        images = pipe(latents=latents, num_inference_steps=20, output_type="pt").images
        ev.save_image_grid(ev.to_uint8(images), os.path.join(args.out_dir, "samples.png"), ncol=8)
        res = ev.evaluate_locality(
            pipe, CONCEPTS, args.num_pairs, 0, num_inference_steps=20, batch_size=args.num_pairs
        )
    summary = {c: round(res["swap"][c]["lab/paper"]["mean"], 4) for c in CONCEPTS}
    print(json.dumps({"checkpoint": args.checkpoint, "swap_lab_paper": summary}))
    with open(os.path.join(args.out_dir, "locality.json"), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(parse_args())

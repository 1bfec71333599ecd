"""Where a swap's change lands: inside the part, in the ring around it, or beyond; for the screen's pairs.

The screen's locality is MSE_out / MSE_in (CIELAB, the paper's normalisation: every sum over the part's area). This
splits MSE_out into the ring of `--ring` pixels around the (undilated, parsed) part, which the dummy-player game
trained with `--mask_dilation 2` lets the part's player control, and everything beyond it, so that a model's
locality ratio to the twin can be read as (in, ring, beyond) against the twin's.

    python scripts/locality_split.py models/ddpm-faces64-baseline models/interpretable-ddpm-faces64 \
        runs/s19/pres-e90/checkpoint-600 --out outputs/locality_split.json

Each argument is a pipeline folder or a training checkpoint (its EMA weights go into the shipped baseline's shell,
`evaluate.load_checkpoint_or_pipeline`). The first one is the reference (the λ = 0 twin) for the ratios.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate as ev  # noqa: E402
from pipeline_interpretable_ddpm import difference_map, dilate_masks  # noqa: E402

SHELL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "ddpm-faces64-baseline")


@torch.no_grad()
def split(pipe, concepts, num_pairs: int, steps: int, ring: int) -> dict:
    idx = list(range(num_pairs))
    lat_a = ev.seeded_latents(pipe.latent_shape, 0, "pair_a", idx)
    lat_b = ev.seeded_latents(pipe.latent_shape, 0, "pair_b", idx)
    originals = pipe(latents=torch.cat([lat_a, lat_b]), num_inference_steps=steps, output_type="pt").images
    result = {}
    for concept in concepts:
        masks = pipe.concept_mask(originals * 2 - 1, concept, dilation=0, is_latents=False)
        swap_mask = torch.maximum(masks[:num_pairs], masks[num_pairs:])  # the screen's union mask
        out = pipe.swap_regions(lat_a, lat_b, swap_mask, num_inference_steps=steps, output_type="pt")
        inside = out.mask.float()
        ring_mask = (dilate_masks(inside, ring) - inside).clamp(0, 1)
        per_image = []
        for original, edited in ((originals[:num_pairs], out.images_a), (originals[num_pairs:], out.images_b)):
            d = difference_map(original, edited, "lab")
            m, r = inside.reshape(d.shape), ring_mask.reshape(d.shape)
            area = m.sum((1, 2)).clamp_min(1)
            per_image.append(torch.stack([(m * d).sum((1, 2)), (r * d).sum((1, 2)), ((1 - m - r) * d).sum((1, 2))], 1) / area[:, None])
        mse_in, ring_out, beyond_out = torch.stack(per_image).mean((0, 1)).tolist()
        result[concept] = {"mse_in": mse_in, "ring": ring_out, "beyond": beyond_out,
                           "locality": (ring_out + beyond_out) / mse_in}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="pipeline folders or checkpoints; the first is the reference (twin)")
    p.add_argument("--num_pairs", type=int, default=8)
    p.add_argument("--num_inference_steps", type=int, default=20)
    p.add_argument("--ring", type=int, default=2, help="ring width in pixels (the training --mask_dilation)")
    p.add_argument("--concepts", nargs="+", default=["eyes", "nose", "mouth"])
    p.add_argument("--out", default=None, help="JSON file to write (never overwritten)")
    args = p.parse_args()
    if args.out and os.path.exists(args.out):
        p.error(f"--out {args.out} already exists; choose a new name.")
    missing = [m for m in args.models if not os.path.isdir(m)]
    if missing:
        p.error(f"not a folder: {', '.join(missing)}")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    results = {m: split(ev.load_checkpoint_or_pipeline(m, SHELL), args.concepts, args.num_pairs, args.num_inference_steps, args.ring) for m in args.models}
    ref = results[args.models[0]]
    print(f"{'model':58s} {'part':6s} {'MSE_in':>8s} {'ring':>7s} {'beyond':>7s} {'locality':>8s} "
          f"{'ratio':>6s} = ring + beyond (ratio parts)")
    for model, parts in results.items():
        for concept, r in parts.items():
            t = ref[concept]["locality"]
            r["ratio"], r["ratio_ring"], r["ratio_beyond"] = r["locality"] / t, r["ring"] / r["mse_in"] / t, r["beyond"] / r["mse_in"] / t
            print(f"{model[-58:]:58s} {concept:6s} {r['mse_in']:8.1f} {r['ring']:7.1f} {r['beyond']:7.1f} "
                  f"{r['locality']:8.3f} {r['ratio']:6.2f} = {r['ratio_ring']:.2f} + {r['ratio_beyond']:.2f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

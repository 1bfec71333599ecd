"""FID of several pipelines on the same seeds and sample count (evaluate.py's FID, one reference computation).

    python -m scripts.fid_screen --num_samples 500 --out outputs/fid.json models/a models/b ...

Prints one JSON line per pipeline and writes them all to --out. Only ratios between pipelines measured with the same
--num_samples are meaningful (small-sample FID is biased upwards).
"""

import argparse
import json
import os

import torch

import evaluate as ev
from face_data import DATA_ENV, default_data_dir
from model_files import load_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipelines", nargs="+")
    p.add_argument("--num_samples", type=int, default=500)
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--batch_size", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default=default_data_dir(), help=f"face data (${DATA_ENV} sets the default)")
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--preview_dir",
        default=None,
        help="also save each pipeline's first 64 samples as <preview_dir>/<name>_samples.png (as evaluate.py)",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.num_threads)
    inception = ev.InceptionFeatures("cpu")
    reference, _ = ev.reference_features(args.data_dir, "test", None, inception, args.batch_size, ev.DEFAULT_FID_CACHE)
    results = []
    for path in args.pipelines:
        pipe = load_pipeline(path, "cpu")
        with torch.no_grad():
            r = ev.evaluate_fid(
                pipe,
                args.num_samples,
                args.seed,
                args.num_inference_steps,
                args.batch_size,
                inception,
                reference,
                desc=os.path.basename(path),
            )
        results.append(
            {
                "pipeline": path,
                "fid": round(r["fid"], 2),
                "num_samples": args.num_samples,
                "num_reference": r["num_reference"],
                "num_inference_steps": args.num_inference_steps,
                "seed": args.seed,
            }
        )
        print(json.dumps(results[-1]), flush=True)
        if args.preview_dir:
            name = os.path.basename(os.path.normpath(path))
            os.makedirs(args.preview_dir, exist_ok=True)
            ev.save_image_grid(r["preview"], os.path.join(args.preview_dir, f"{name}_samples.png"))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(parse_args())

"""Pushes the shipped pipelines in models/ to the Hugging Face Hub (create_repo + upload_folder).

    python -m scripts.push_models --namespace YOUR_NAME [--token hf_...] [--private]

Each pipeline folder gets its own model card as its README.md before it is uploaded (`MODEL_CARDS`: model_card.md
for the interpretable model, model_card_baseline.md for its lambda = 0 twin; the parser keeps its README.md); then
`DiffusionPipeline.from_pretrained("YOUR_NAME/interpretable-ddpm-faces64", trust_remote_code=True)` loads it, and
the Space reads the ids from INTERPRETABLE_DDPM_MODEL / INTERPRETABLE_DDPM_BASELINE.
"""

import argparse
import os
import shutil

from model_files import ROOT
from train_interpretable import push_folder_to_hub

MODELS = ("interpretable-ddpm-faces64", "ddpm-faces64-baseline", "face-parser-64")
# The Hub model card of each pipeline (a file at the repository root), copied to the folder's README.md on push.
MODEL_CARDS = {"interpretable-ddpm-faces64": "model_card.md", "ddpm-faces64-baseline": "model_card_baseline.md"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", required=True, help="Hub user or organisation")
    p.add_argument("--token", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--models_dir", default=os.path.join(ROOT, "models"), help="Folder holding the model folders.")
    args = p.parse_args(argv)
    for name in args.models:
        folder = os.path.join(args.models_dir, name)
        if not os.path.isfile(os.path.join(folder, "config.json")) and not os.path.isfile(
            os.path.join(folder, "model_index.json")
        ):
            p.error(f"{folder} holds no saved model")
    return args


def main(args: argparse.Namespace) -> None:
    for name in args.models:
        folder = os.path.join(args.models_dir, name)
        if name in MODEL_CARDS:
            shutil.copy(os.path.join(ROOT, MODEL_CARDS[name]), os.path.join(folder, "README.md"))
        print("pushed", push_folder_to_hub(folder, f"{args.namespace}/{name}", args.token, args.private))


if __name__ == "__main__":
    main(parse_args())

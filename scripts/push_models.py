"""Pushes the shipped pipelines in models/ to the Hugging Face Hub (create_repo + one commit per model).

    python -m scripts.push_models --namespace YOUR_NAME [--token hf_...] [--private]

Each pipeline gets its own model card as its README.md on the Hub (`MODEL_CARDS`: model_card.md for the
interpretable model, model_card_baseline.md for its lambda = 0 twin; the parser keeps its README.md); the folder
itself is not changed. The folders' pipeline_interpretable_ddpm.py is a link to the repository's one pipeline file:
the Hub gets the file's content, so that `DiffusionPipeline.from_pretrained("YOUR_NAME/interpretable-ddpm-faces64",
trust_remote_code=True)` loads it, and the Space reads the ids from INTERPRETABLE_DDPM_MODEL /
INTERPRETABLE_DDPM_BASELINE.
"""

import argparse
import fnmatch
import os
from typing import List, Optional

from model_files import ROOT

MODELS = ("interpretable-ddpm-faces64", "ddpm-faces64-baseline", "face-parser-64")
# the model card each pipeline is pushed with (the parser folder has its own README.md)
MODEL_CARDS = {"interpretable-ddpm-faces64": "model_card.md", "ddpm-faces64-baseline": "model_card_baseline.md"}
NOT_UPLOADED = ("checkpoint-*", "logs/*", "samples/*", "*.bin", "*.pt", "*.pth", "*.ckpt")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", required=True, help="Hub user or organisation")
    p.add_argument("--token", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--models_dir", default=os.path.join(ROOT, "models"), help="where the model folders are")
    args = p.parse_args(argv)
    for name in args.models:
        folder = os.path.join(args.models_dir, name)
        if not os.path.isfile(os.path.join(folder, "config.json")) and not os.path.isfile(
            os.path.join(folder, "model_index.json")
        ):
            p.error(f"{folder} holds no saved model")
    return args


def upload_files(folder: str) -> List[str]:
    """Paths (relative to `folder`, `/`-separated) of the files to upload, links followed."""
    files = []
    for root, _, names in os.walk(folder, followlinks=True):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if not any(fnmatch.fnmatch(rel, pattern) for pattern in NOT_UPLOADED):
                files.append(rel)
    return sorted(files)


def push_model(folder: str, repo_id: str, card: Optional[str], token=None, private: bool = False) -> str:
    """create_repo + one commit of every file of `folder` (a link's target content, never the link) and, when
    `card` is given, that file as README.md. Returns the repo id."""
    from huggingface_hub import CommitOperationAdd, create_commit, create_repo

    repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
    files = [rel for rel in upload_files(folder) if not (card and rel == "README.md")]
    operations = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=os.path.realpath(os.path.join(folder, rel)))
        for rel in files
    ]
    if card:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    create_commit(repo_id, operations, commit_message="Upload interpretable DDPM pipeline", token=token)
    return repo_id


def main(args: argparse.Namespace) -> None:
    for name in args.models:
        folder = os.path.join(args.models_dir, name)
        card = os.path.join(ROOT, MODEL_CARDS[name]) if name in MODEL_CARDS else None
        print("pushed", push_model(folder, f"{args.namespace}/{name}", card, args.token, args.private))


if __name__ == "__main__":
    main(parse_args())

"""The Hub model cards: each pipeline is pushed with its own card (scripts/push_models.py, against a local Hub
stand-in), and the cards are in the Hub's form with links that work there."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from model_files import ROOT
from scripts.push_models import MODEL_CARDS
from test_train import HubStandIn, child_env

PIPELINES = sorted(MODEL_CARDS)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n"), "a Hub model card starts with its YAML front matter"
    return yaml.safe_load(text.split("---\n")[1])


def card_text(name: str) -> str:
    with open(os.path.join(ROOT, MODEL_CARDS[name]), encoding="utf-8") as f:
        return f.read()


@pytest.mark.slow  # a push_models subprocess against a Hub stand-in server
@pytest.mark.parametrize("name", PIPELINES)
def test_push_models_uploads_each_pipeline_with_its_own_card(name, tmp_path):
    models_dir = tmp_path / "models"
    folder = models_dir / name
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "InterpretableDDPMPipeline"}\n')
    (folder / "unet" / "config.json").write_text("{}\n")
    hub = HubStandIn()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.push_models", "--namespace", "tester", "--token", "hf_standin_token"]
            + ["--models", name, "--models_dir", str(models_dir)],
            cwd=ROOT,
            env=child_env(HF_ENDPOINT=f"http://127.0.0.1:{hub.port}", HF_HUB_OFFLINE="0"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr
    assert [(c["organization"], c["name"]) for c in hub.created] == [("tester", name)]
    assert not hub.unexpected
    assert hub.committed["README.md"].decode("utf-8") == card_text(name)
    assert sorted(hub.committed) == ["README.md", "model_index.json", "unet/config.json"]
    # the pushed card describes this model: its model-index is named after it
    assert front_matter(card_text(name))["model-index"][0]["name"] == name


def test_the_two_cards_differ():
    assert card_text("interpretable-ddpm-faces64") != card_text("ddpm-faces64-baseline")


@pytest.mark.parametrize("name", PIPELINES)
def test_card_is_a_hub_model_card_with_links_that_work_there(name):
    text = card_text(name)
    meta = front_matter(text)
    assert meta["library_name"] == "diffusers"
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert meta["license"] and meta["datasets"]
    results = meta["model-index"][0]["results"][0]
    assert {m["type"] for m in results["metrics"]} >= {"fid", "kid"}
    assert len(text.splitlines()) <= 200
    # On the Hub only absolute links and files pushed with the model folder resolve.
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert os.path.exists(os.path.join(ROOT, "models", name, target)), f"{target} is not in the model folder"
    # a card describes the shipped model, not the project's history
    assert not re.search(r"\brelease[ -]?\d", text, re.IGNORECASE)
    assert "git worktree" not in text

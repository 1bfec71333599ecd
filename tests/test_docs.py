"""The README and docs/: every relative link resolves (file and heading), and the README tells a newcomer the two
commands and how to get the training data."""

import glob
import os
import re

import pytest

from face_data import DATA_ENV
from model_files import ROOT

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def heading_anchors(text: str) -> set:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", without_code(text), flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    text = read(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code(text)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        rel = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(os.path.join(ROOT, rel)), f"{page}: link to {target}: no such file"
        if anchor and rel.endswith(".md"):
            assert anchor in heading_anchors(read(rel)), f"{page}: link to {target}: no such heading"


def test_readme_gives_the_two_commands_and_the_data_recipe():
    readme = read("README.md")
    assert "./run.sh " in readme and "./run.sh test" in readme
    assert "prepare_data.py --input_dir" in readme
    assert DATA_ENV in readme and "../shared/data/utkface64" in readme
    for column in ("`image`", "`mask`", "`has_mask`"):
        assert column in readme
    assert not re.search(r"\brelease[ -]?\d", readme, re.IGNORECASE), "the README describes the project as it is"

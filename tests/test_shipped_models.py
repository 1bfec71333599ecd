"""The pipelines shipped in models/ load offline, link the repository's one pipeline file, carry their parser and
generate; pushed to the Hub (a local stand-in), they carry the pipeline file itself."""

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import pipeline_interpretable_ddpm as pid
import train_interpretable
from conftest import PIPELINE_FILE, ROOT, assert_lambda_zero_twins, is_game_setting, tiny_pipeline
from scripts.push_models import MODEL_CARDS
from test_train import HubStandIn, child_env, tree

SHIPPED = ["interpretable-ddpm-faces64", "ddpm-faces64-baseline"]
# training settings of the run and the machine, not of the recipe: free to differ from the script's defaults
RUN_SETTINGS = {
    "output_dir",
    "pretrained_model_name_or_path",
    "train_data_dir",
    "resolution",  # None: the pretrained model's (64)
    "mixed_precision",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "report_to",
    "sample_inference_steps",
    "save_fp16",
    "save_images_steps",
    "log_every",
    "max_train_minutes",  # a wall-clock guard
    "lambda_decay_steps",  # None: all steps (checked below)
}
# flags newer than the shipped runs: their defaults must be the behaviour the runs had without them
NEWER_FLAGS: dict = {"ie_context_open_below": 0, "layout_condition": False}
# the sampler the training script writes into a saved pipeline: newer than the shipped runs, set in their folders
SAMPLER_FLAGS = {"sampler_eta": "eta", "sampler_steps": "num_inference_steps"}


def shipped_json(name: str, *path: str) -> dict:
    with open(os.path.join(ROOT, "models", name, *path)) as f:
        return json.load(f)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folder_is_complete_and_current(name):
    folder = os.path.join(ROOT, "models", name)
    # the file that folder loading (trust_remote_code) executes is the repository's one source, through a link
    link = os.path.join(folder, "pipeline_interpretable_ddpm.py")
    assert os.path.islink(link) and os.readlink(link) == "../../pipeline_interpretable_ddpm.py"
    assert os.path.samefile(link, PIPELINE_FILE)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["_class_name"] == ["pipeline_interpretable_ddpm", "InterpretableDDPMPipeline"]
    assert index["parser"] == ["transformers", "SegformerForSemanticSegmentation"]
    with safe_open(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert not [n for _, _, files in os.walk(folder) for n in files if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]


@pytest.mark.parametrize("pipeline_file", ["repository", "folder"])
def test_default_model_generates_and_parses_offline(monkeypatch, pipeline_file):
    """Loads with the repository's file (custom_pipeline=) and on its own (the class its model_index.json names,
    from the folder's linked file), as a user of the folder alone would."""
    from diffusers import DiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = {"custom_pipeline": PIPELINE_FILE} if pipeline_file == "repository" else {}
    pipe = DiffusionPipeline.from_pretrained(
        os.path.join(ROOT, "models", SHIPPED[0]), trust_remote_code=True, **kwargs
    )
    assert type(pipe).__name__ == "InterpretableDDPMPipeline"
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.parser is not None
    out = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and out.latents.shape == (1, 3, 64, 64)
    mask = pipe.concept_mask(out.images * 2 - 1, "eyes")
    assert mask.shape == (1, 1, 64, 64) and 10 < mask.sum() < 64 * 64 / 4


def test_shipped_baseline_is_the_lambda_zero_twin_of_the_interpretable_model():
    """The release comparison is only fair between twins: the same start, data, steps, seed and settings, with the
    dummy-player loss as the only difference (its lambda schedule and game flags)."""
    records = {}
    for name in SHIPPED:
        training = os.path.join(ROOT, "models", name, "training")
        records[name] = (
            json.load(open(os.path.join(training, "training_config.json"))),
            json.load(open(os.path.join(training, "train_summary.json"))),
        )
    (interp_cfg, interp_summary), (base_cfg, base_summary) = records[SHIPPED[0]], records[SHIPPED[1]]
    assert_lambda_zero_twins(interp_cfg, base_cfg)
    assert interp_summary["train_steps"] == base_summary["train_steps"] > 0


@pytest.mark.slow
def test_push_models_uploads_the_pipeline_file_and_the_card_not_links(tmp_path):
    """scripts/push_models.py against a local stand-in of the Hub: every file of the shipped folder, the linked
    pipeline file as its content, the model's own card as README.md; the folder itself is left as it was."""
    name = SHIPPED[1]
    folder = os.path.join(ROOT, "models", name)
    before = tree(folder)
    hub = HubStandIn()
    try:
        env = child_env(HF_ENDPOINT=f"http://127.0.0.1:{hub.port}", HF_HUB_OFFLINE="0", HF_TOKEN="hf_standin_token")
        done = subprocess.run(
            [sys.executable, "-m", "scripts.push_models", "--namespace", "tester", "--models", name],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        hub.close()
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert [(c["organization"], c["name"]) for c in hub.created] == [("tester", name)]
    assert not hub.unexpected
    with open(PIPELINE_FILE, "rb") as f:
        assert hub.committed["pipeline_interpretable_ddpm.py"] == f.read()
    with open(os.path.join(ROOT, MODEL_CARDS[name]), "rb") as f:
        assert hub.committed["README.md"] == f.read()
    assert {p: b for p, b in hub.committed.items() if p != "README.md"} == before
    assert tree(folder) == before and not os.path.exists(os.path.join(folder, "README.md"))


def test_assembled_folder_links_the_pipeline_file_inside_the_repository_and_copies_it_outside(tmp_path, monkeypatch):
    from scripts import assemble_default_models

    repo = tmp_path / "repo"
    (repo / "models" / "m").mkdir(parents=True)
    source = repo / "pipeline_interpretable_ddpm.py"
    source.write_text("# the one source\n")
    monkeypatch.setattr(assemble_default_models, "ROOT", str(repo))
    monkeypatch.setattr(assemble_default_models, "PIPELINE_FILE", str(source))
    inside = assemble_default_models.ship_pipeline_file(str(repo / "models" / "m"))
    assert os.readlink(inside) == os.path.join("..", "..", "pipeline_interpretable_ddpm.py")
    (tmp_path / "out").mkdir()
    outside = assemble_default_models.ship_pipeline_file(str(tmp_path / "out"))
    assert not os.path.islink(outside) and open(outside).read() == "# the one source\n"


def test_the_training_script_defaults_are_the_shipped_recipe():
    """A plain `train_interpretable.py --pretrained_model_name_or_path PLAIN --output_dir OUT` trains the shipped
    interpretable branch, and `--lambda_start 0` its twin: the shipped runs' settings differ from the defaults only
    in settings of the run and the machine. RECIPE is what the defaults are made of."""
    parser = train_interpretable.build_arg_parser()
    defaults = vars(parser.parse_args(["--output_dir", "out"]))
    for key, value in train_interpretable.RECIPE.items():
        assert defaults[key] == value, key
    for name, lambda_start in ((SHIPPED[0], defaults["lambda_start"]), (SHIPPED[1], 0.0)):
        config = shipped_json(name, "training", "training_config.json")
        expected = {**defaults, "lambda_start": lambda_start}
        if lambda_start == 0:  # no game: the decay's end point and the game's settings are never used
            expected.update({k: config[k] for k in config if is_game_setting(k) and k != "lambda_start"})
        differing = {k for k in config if config[k] != expected[k]}
        assert differing <= RUN_SETTINGS, {k: (config[k], expected[k]) for k in differing - RUN_SETTINGS}
        assert config["lambda_decay_steps"] in (None, config["max_train_steps"])
        assert {k: defaults[k] for k in defaults.keys() - config.keys() - SAMPLER_FLAGS.keys()} == NEWER_FLAGS
        index = shipped_json(name, "model_index.json")
        sampler = {key: defaults[flag] for flag, key in SAMPLER_FLAGS.items()}
        assert {key: index.get(key) for key in sampler} == sampler, name


def test_pipeline_defaults_are_the_shipped_settings():
    """The pipeline's constructor defaults (harmonised noise off, the concepts, the parser's input) are the shipped
    model_index.json's, and the harmonisation regions grow the templates as far as the shipped game's masks."""
    init = inspect.signature(pid.InterpretableDDPMPipeline.__init__).parameters
    built = tiny_pipeline().config
    for name in SHIPPED:
        index = shipped_json(name, "model_index.json")
        for key in ("harmonize_noise", "parser_normalization", "parser_resolution", "parser_label_mapping"):
            assert init[key].default == index[key] == built[key], (name, key)
        assert pid.concepts_to_string(pid.DEFAULT_CONCEPTS) == index["concepts"] == built["concepts"]
        assert pid.HARMONIZE_DILATION == shipped_json(name, "training", "training_config.json")["mask_dilation"]
    assert index["concepts"] == train_interpretable.RECIPE["concepts"]


def docstring_examples():
    """{method name: code} of every `Examples:` block in the pipeline class's docstrings (the `>>>` and `...` lines)."""
    examples = {}
    for name, member in vars(pid.InterpretableDDPMPipeline).items():
        doc = inspect.getdoc(member) or ""
        if "Examples:" in doc:
            block = doc.split("Examples:", 1)[1].split("```py", 1)[1].split("```", 1)[0]
            lines = [ln.strip() for ln in block.splitlines()]
            examples[name] = "\n".join(ln[4:] for ln in lines if ln.startswith((">>> ", "... ")))
    return examples


def test_every_public_pipeline_method_has_args_returns_and_an_example():
    public = [
        "__call__",
        "resample_region",
        "swap_regions",
        "invert",
        "attribute",
        "attribute_end_to_end",
        "emergence_curve",
        "concept_mask",
        "parse",
        "harmonize",
    ]
    for name in public:
        doc = inspect.getdoc(getattr(pid.InterpretableDDPMPipeline, name))
        assert "Args:" in doc and "Returns:" in doc, name
    assert set(public) <= set(docstring_examples())


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(docstring_examples()))
def test_docstring_example_runs_on_the_shipped_model(method, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)  # the examples load models/... as a user in the repository would
    exec(compile(docstring_examples()[method], f"<{method} example>", "exec"), {})

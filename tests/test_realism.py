"""Realism measures on cases whose answer is known: the C2ST, precision/recall and `python -m evaluation.realism`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import pipeline_interpretable_ddpm as pid
from conftest import ROOT, tiny_pipeline
from evaluation.c2st import C2ST_MIN_PER_CLASS, classifier_two_sample_test, wilson_interval
from evaluation.metrics import precision_recall, precision_recall_from_features
from face_data import load_faces, make_synthetic_faces, synthetic_face


def cartoon_faces(n: int, seed: int, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([np.asarray(synthetic_face(rng, size)[0]) for _ in range(n)])).permute(0, 3, 1, 2)


def blurred(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    weight = (kernel[:, None] * kernel[None, :]).expand(3, 1, 5, 5)
    x = torch.nn.functional.pad(images.float(), (2, 2, 2, 2), mode="replicate")
    return torch.nn.functional.conv2d(x, weight, groups=3).round().to(torch.uint8)


def noised(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = std * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def faces():
    """Two disjoint iid sets of 80 cartoon faces (32x32) and a third set to corrupt."""
    return cartoon_faces(80, 0), cartoon_faces(80, 1), cartoon_faces(80, 2)


@pytest.mark.slow  # the C2ST at its default settings: 5 folds of CNN training
def test_c2st_cannot_tell_iid_sets_apart(faces):
    real, same_distribution, _ = faces
    res = classifier_two_sample_test(real, same_distribution, seed=0)
    lo, hi = res["ci95"]
    assert lo <= 0.5 <= hi and 0.35 < res["accuracy"] < 0.65, res
    assert res["num_per_class"] == 80 and len(res["fold_accuracies"]) == 5 and res["p_value"] > 0.01


@pytest.mark.slow  # the C2ST at its default settings: 5 folds of CNN training
@pytest.mark.parametrize("corrupt", [blurred, lambda x: noised(x, 24.0)], ids=["blurred", "noised"])
def test_c2st_tells_corrupted_faces_from_real_ones(faces, corrupt):
    real, _, other = faces
    res = classifier_two_sample_test(real, corrupt(other), seed=0)
    assert res["accuracy"] > 0.85 and res["ci95"][0] > 0.7 and res["p_value"] < 1e-6, res
    # the held-out scores rank the generated images: most of them read as generated
    assert np.mean(np.asarray(res["fake_scores"]) > 0.5) > 0.8


def test_c2st_is_deterministic_and_leaves_the_global_rng_alone():
    real, other = cartoon_faces(12, 0, size=16), blurred(cartoon_faces(12, 1, size=16))
    state = torch.get_rng_state()
    a = classifier_two_sample_test(real, other, seed=3, num_folds=2)  # 2 folds: the same code, 2/5 of the training
    assert torch.equal(state, torch.get_rng_state())
    b = classifier_two_sample_test(real, other, seed=3, num_folds=2)
    assert a["fake_scores"] == b["fake_scores"] and a["accuracy"] == b["accuracy"]
    assert a["num_folds"] == len(a["fold_accuracies"]) == 2
    c = classifier_two_sample_test(real, other, seed=4, num_folds=2)
    assert c["fake_scores"] != a["fake_scores"]


def test_c2st_balances_the_classes(faces):
    real, same_distribution, _ = faces
    res = classifier_two_sample_test(real, same_distribution[:20], seed=0, num_folds=2)
    assert res["num_per_class"] == 20 and len(res["fake_indices"]) == len(res["fake_scores"]) == 20
    assert len(set(res["fake_indices"])) == 20  # every generated image once


def test_c2st_refuses_bad_input(faces):
    real, other, _ = faces
    with pytest.raises(ValueError, match="uint8"):
        classifier_two_sample_test(real.float(), other)
    with pytest.raises(ValueError, match="one size"):
        classifier_two_sample_test(real, cartoon_faces(20, 5, size=16))
    with pytest.raises(ValueError, match=f"at least {C2ST_MIN_PER_CLASS} images per class"):
        classifier_two_sample_test(real, other[:3])
    with pytest.raises(ValueError, match="16x16"):
        classifier_two_sample_test(real[:, :, :8, :8].contiguous(), other[:, :, :8, :8].contiguous())


def test_wilson_interval():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(100, 100)[1] == 1.0 and wilson_interval(100, 100)[0] > 0.96


def gaussian_modes(n: int, modes, rng, dim: int = 4) -> np.ndarray:
    centres = np.eye(dim)[: max(modes) + 1] * 12
    return centres[rng.choice(modes, n)] + rng.normal(size=(n, dim))


def test_precision_recall_on_known_distributions():
    rng = np.random.default_rng(0)
    real = gaussian_modes(400, [0, 1, 2, 3], rng)
    assert precision_recall_from_features(real, real) == {"precision": 1.0, "recall": 1.0}
    iid = precision_recall_from_features(real, gaussian_modes(400, [0, 1, 2, 3], rng))
    assert iid["precision"] > 0.9 and iid["recall"] > 0.9, iid
    dropped = precision_recall_from_features(real, gaussian_modes(400, [0], rng))  # one mode of four
    assert dropped["precision"] > 0.85 and dropped["recall"] < 0.4, dropped
    off = precision_recall_from_features(real, gaussian_modes(400, [0, 1, 2, 3], rng) + 6.0)
    assert off["precision"] < 0.2, off


def test_precision_recall_subsamples_to_equal_counts():
    rng = np.random.default_rng(1)
    real = gaussian_modes(900, [0, 1, 2, 3], rng)
    res = precision_recall(real, gaussian_modes(300, [0, 1, 2, 3], rng), seed=0)
    assert res["num_per_set"] == 300 and res["num_subsets"] == 10 and res["k"] == 3
    assert res["precision"]["mean"] > 0.9 and res["recall"]["mean"] > 0.9
    lo, hi = res["recall"]["ci95"]
    assert lo <= res["recall"]["mean"] <= hi
    with pytest.raises(ValueError, match="more than 3 vectors"):
        precision_recall_from_features(real, real[:3])
    with pytest.raises(ValueError, match="one D"):
        precision_recall_from_features(real, real[:, :2])


@pytest.mark.slow  # subprocesses: evaluation.realism three times
def test_realism_command_end_to_end(tmp_path):
    data = make_synthetic_faces(str(tmp_path / "faces"), num_train=2, num_test=24, size=16)
    tiny_pipeline().save_pretrained(str(tmp_path / "a"))
    tiny_pipeline(seed=1).save_pretrained(str(tmp_path / "b"))
    out, samples = tmp_path / "realism.json", tmp_path / "samples"
    cmd = [sys.executable, "-m", "evaluation.realism", str(tmp_path / "a"), str(tmp_path / "b")]
    cmd += ["--num_samples", "12", "--num_inference_steps", "2", "--seed", "5", "--num_threads", "1"]
    cmd += ["--data_dir", data, "--no_inception", "--device", "cpu", "--save_samples", str(samples)]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"a", "b"}
    for name, res in results["models"].items():
        c2st = res["c2st"]
        # random tiny UNets draw noise, not cartoons: told apart every time
        assert c2st["num_per_class"] == 12 and c2st["accuracy"] > 0.9 and f"{name}: C2ST accuracy" in proc.stdout
        assert (samples / f"{name}_samples.png").is_file()
    saved = np.load(samples / "a_samples.npy")
    assert saved.shape == (12, 3, 16, 16) and saved.dtype == np.uint8
    # the same x_T for both models (same seed), different weights: different samples
    assert not np.array_equal(saved, np.load(samples / "b_samples.npy"))
    # saved samples are measured without generating, with the same C2ST
    again = subprocess.run(
        [*cmd[:3], str(samples / "a_samples.npy"), "--data_dir", data, "--no_inception", "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert again.returncode == 0 and f"C2ST accuracy {results['models']['a']['c2st']['accuracy']:.3f}" in again.stdout
    # an existing results file is never overwritten
    refused = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert refused.returncode == 2 and "exists" in refused.stderr
    # --eta sets the sampler: stochastic samples of the same x_T differ from the DDIM ones; outside [0, 1] refused
    eta_cmd = [*cmd[:4], *cmd[5:], "--eta", "1"]
    eta_cmd[eta_cmd.index("--save_samples") + 1] = str(tmp_path / "eta1")
    stochastic = subprocess.run(eta_cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert stochastic.returncode == 0, stochastic.stderr[-3000:]
    assert not np.array_equal(np.load(tmp_path / "eta1" / "a_samples.npy"), saved)
    bad = subprocess.run([*eta_cmd[:-1], "2"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 2 and "--eta must be in [0, 1]" in bad.stderr


@pytest.mark.slow  # an evaluate.py subprocess
def test_evaluate_cli_reports_c2st_and_precision_recall(tmp_path):
    """`evaluate.py MODEL --baseline TWIN`: the FID stage reports the C2ST and precision/recall of both models."""
    data = make_synthetic_faces(str(tmp_path / "faces"), num_train=4, num_test=24, size=16)
    train = load_faces(data, "train")
    labels = torch.from_numpy(train.labels[train.has_mask]).long()
    templates = pid.compute_concept_templates(labels, pid.parse_concepts(None))
    tiny_pipeline(concept_templates=templates).save_pretrained(str(tmp_path / "interp"))
    tiny_pipeline(seed=1).save_pretrained(str(tmp_path / "twin"))
    out = tmp_path / "eval"
    args = [str(tmp_path / "interp"), "--baseline", str(tmp_path / "twin"), "--output_dir", str(out)]
    args += ["--data_dir", data, "--fid_cache_dir", "", "--num_fid_samples", "12", "--num_c2st_samples", "11"]
    args += ["--num_inference_steps", "2", "--batch_size", "6", "--num_threads", "1", "--device", "cpu"]
    args += ["--harmonize_noise", "off", "--skip", "locality", "attribution", "end_to_end", "emergence", "real"]
    proc = subprocess.run(
        [sys.executable, "evaluate.py", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for name in ("interp", "twin"):
        fid = results["pipelines"][name]["fid"]
        assert fid["c2st"]["num_per_class"] == 11 and fid["c2st"]["accuracy"] > 0.9  # noise vs cartoons
        assert fid["precision_recall"]["num_per_set"] == 12 and 0 <= fid["precision_recall"]["recall"]["mean"] <= 1
        assert (out / "figures" / f"{name}_c2st_most_generated.png").is_file()
    assert "classifier two-sample test" in results["methods"]["c2st"]
    md = (out / "results.md").read_text()
    assert "| C2ST accuracy (0.5 = indistinguishable) |" in md and "(difference)" in md
    assert "| precision (realistic share) |" in md and "| recall (covered share of real faces) |" in md

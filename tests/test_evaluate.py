"""evaluate.py: end to end as a real subprocess, and its measurements on models whose answer is known."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler

import evaluate
import model_files
import pipeline_interpretable_ddpm as pid
from conftest import ROOT, tiny_pipeline
from denoisers import PerPixelDenoiser
from evaluation.report import _full_runs, _ratio
from face_data import load_faces

EVALUATE = os.path.join(ROOT, "evaluate.py")


def _templates(faces_dir):
    train = load_faces(faces_dir, "train")
    labels = torch.from_numpy(train.labels[train.has_mask]).long()
    return pid.compute_concept_templates(labels, pid.parse_concepts(None))


@pytest.fixture(scope="module")
def templates(tiny_faces):
    return _templates(tiny_faces)


def per_pixel_pipeline(templates):
    pipe = pid.InterpretableDDPMPipeline(
        unet=PerPixelDenoiser(16),
        scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False),
        concept_templates=templates,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow  # evaluate.py end to end in a subprocess
def test_end_to_end_subprocess_writes_results_and_refuses_to_overwrite(tmp_path, tiny_faces, templates):
    main_dir, base_dir, out = tmp_path / "interp", tmp_path / "baseline", tmp_path / "eval"
    tiny_pipeline(concept_templates=templates).save_pretrained(str(main_dir))
    tiny_pipeline(seed=1).save_pretrained(str(base_dir))  # no templates: borrows the main pipeline's
    args = [
        str(main_dir),
        "--baseline",
        str(base_dir),
        "--output_dir",
        str(out),
        "--data_dir",
        tiny_faces,
        "--fid_cache_dir",
        str(tmp_path / "fid_cache"),
        "--num_pairs",
        "10",
        "--num_fid_samples",
        "3",
        "--num_inference_steps",
        "2",
        "--num_attribution_samples",
        "2",
        "--attribution_steps",
        "2",
        "--num_real_pairs",
        "1",
        "--batch_size",
        "4",
        "--num_threads",
        "1",
        "--device",
        "cpu",
        "--num_end_to_end_samples",
        "2",
        "--num_emergence_pairs",
        "2",
        "--emergence_points",
        "2",
        # one variant per pipeline: every edited image goes through Inception (edit realism), and the variants of
        # --harmonize_noise both are checked in process below
        "--harmonize_noise",
        "off",
    ]
    proc = subprocess.run([sys.executable, EVALUATE, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    variants = {"interp", "baseline"}
    assert set(results["pipelines"]) == variants
    assert results["config"]["baseline_of"] == {"interp": "baseline"}
    for name, res in results["pipelines"].items():
        assert res["harmonize_noise"] is False and res["fid"]["harmonize_noise"] is False
        for concept in ("eyes", "nose", "mouth"):
            for edit in ("swap", "resample"):
                for key in ("rgb/paper", "rgb/area", "lab/paper", "lab/area"):
                    stats = res["locality"][edit][concept][key]
                    assert (
                        stats["n"] == 10
                        and stats["mean"] > 0
                        and stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1]
                    )
                    if name in results["config"]["baseline_of"]:  # paired ratio over the same 10 seeded pairs
                        ratio = stats["ratio_to_baseline"]
                        assert ratio["n"] == 10 and ratio["ci95"][0] <= ratio["ratio"] <= ratio["ci95"][1]
                        base_name = results["config"]["baseline_of"][name]
                        base = results["pipelines"][base_name]["locality"][edit][concept][key]
                        assert ratio["ratio"] == pytest.approx(stats["mean"] / base["mean"])
            assert res["locality"]["swap"][concept]["mse_ref"]["n"] == 10
            # the peer (--blend both, the default): the same edits blended, on the same pairs
            for edit in ("swap_blend", "resample_blend"):
                stats = res["locality"][edit][concept]
                assert stats["rgb/paper"]["n"] == 10 and stats["rgb/paper"]["mean"] < 1e-6  # local by construction
                assert stats["seam"]["n"] == 10 and stats["seam"]["mean"] > 0
            assert res["locality"]["swap_blend"][concept]["mse_ref"]["n"] == 10
            assert res["locality"]["swap"][concept]["seam"]["n"] == 10
        for edit in ("swap", "resample", "swap_blend", "resample_blend"):
            assert res["edit_realism"][edit]["kid"] is not None and res["edit_realism"][edit]["fid"] > 0
        e2e = res["end_to_end"]
        assert e2e["num_samples"] == 2 and 0 < e2e["leakage"]["mean"] < 1 and e2e["num_full_runs_per_sample"] == 16
        assert res["timings"]["end_to_end"] > 0
        em = res["emergence"]
        assert em["step_indices"] == [0, 1] and em["modes"] == ["trajectory", "noise"]
        for mode in em["modes"]:
            curve = em[mode]["eyes"]["curve"]
            assert len(curve) == 2 and curve[0]["mean"] == pytest.approx(1.0)
        assert res["fid"]["num_samples"] == 3 and res["fid"]["num_reference"] == 8 and res["fid"]["fid"] > 0
        assert np.isfinite(res["fid"]["kid"]) and res["fid"]["subset_size"] == 3
        assert res["fid"]["off_colour"] is None  # no parser in these pipelines
        # 3 samples: too few for the C2ST (skipped, with the reason) and for 3-NN precision/recall
        assert "at least 10" in res["fid"]["c2st"]["skipped"] and res["fid"]["precision_recall"] is None
        assert res["attribution"]["num_samples"] == 2 and 0 < res["attribution"]["leakage"]["mean"] < 1
        assert res["attribution"]["leakage"]["ci95"] is None  # no interval from 2 samples
        assert len(res["attribution"]["leakage_curve"]) == 2
        assert res["real"]["num_pairs"] == 1 and np.isfinite(res["real"]["reconstruction_psnr"]["mean"])
    assert "299x299" in results["methods"]["fid_resize"]
    assert "borrowed" in results["pipelines"]["baseline"]["mask_source"]

    md = (out / "results.md").read_text()
    assert "| swap | eyes | rgb | paper |" in md and "interp / baseline" in md and "0.0295" in md
    assert "| KID x 1000 |" in md and "| swap | eyes | MSE_ref |" in md
    assert "(n = 2, too few for a CI)" in md and "1 pair of test faces" in md and "10 seeded pairs" in md
    assert "1 pairs" not in md and "bootstrap-t" in md
    figures = sorted(os.listdir(out / "figures"))
    for name in variants:
        kinds = ("swap_grid", "resample_grid", "samples", "attribution_matrices")
        for kind in kinds + ("real_swap_grid",):
            assert f"{name}_{kind}.png" in figures
    assert "leakage_over_t.png" in figures
    assert "end_to_end_attribution.png" in figures and "emergence_curves.png" in figures
    assert "interp_swap_blend_grid.png" in figures
    assert "| swap_blend | eyes | rgb | paper |" in md and "| swap_blend | eyes | MSE_ref |" in md
    assert "| swap_blend | eyes | seam |" in md and "| resample_blend | KID x 1000 |" in md
    assert "| end-to-end leakage (all regions) |" in md and "| noise | eyes | emergence step |" in md
    assert "all 16 full sampling runs per sample" in md
    for f in figures:
        with PIL.Image.open(out / "figures" / f) as im:
            assert min(im.size) >= 16

    # A second run into the same folder is refused (in-process: it fails before loading anything) ...
    before = (out / "results.json").stat().st_mtime_ns
    assert evaluate.main(evaluate.parse_args(args)) == 2
    assert (out / "results.json").stat().st_mtime_ns == before
    # ... and so is a pipeline path that does not exist.
    missing = [str(tmp_path / "nope"), "--output_dir", str(tmp_path / "eval2")]
    assert evaluate.main(evaluate.parse_args(missing)) == 2
    assert not (tmp_path / "eval2").exists()


@pytest.mark.slow  # Inception features of samples and reference faces
def test_harmonize_both_evaluates_each_pipeline_twice_against_the_baselines_same_variant(
    tmp_path, tiny_faces, templates
):
    main_dir, base_dir, out = tmp_path / "interp", tmp_path / "baseline", tmp_path / "eval"
    tiny_pipeline(concept_templates=templates).save_pretrained(str(main_dir))
    tiny_pipeline(seed=1).save_pretrained(str(base_dir))
    args = [str(main_dir), "--baseline", str(base_dir), "--output_dir", str(out), "--data_dir", tiny_faces]
    args += ["--fid_cache_dir", str(tmp_path / "fid_cache"), "--num_fid_samples", "3", "--num_inference_steps", "2"]
    args += ["--num_real_pairs", "1", "--batch_size", "4", "--device", "cpu", "--harmonize_noise", "both"]
    args += ["--skip", "locality", "attribution", "end_to_end", "emergence"]
    assert evaluate.main(evaluate.parse_args(args)) == 0

    results = json.loads((out / "results.json").read_text())
    assert set(results["pipelines"]) == {f"{n}_{v}" for n in ("interp", "baseline") for v in ("harmonized", "plain")}
    assert results["config"]["baseline_of"] == {
        "interp_harmonized": "baseline_harmonized",
        "interp_plain": "baseline_plain",
    }
    for name, res in results["pipelines"].items():
        assert res["harmonize_noise"] == name.endswith("harmonized") == res["fid"]["harmonize_noise"]
        # real photos are measured once per pipeline, never harmonised
        assert ("real" in res) == name.endswith("plain")
    # the harmonised variant's seeded x_T differ, so do its samples
    pipes = results["pipelines"]
    assert pipes["interp_harmonized"]["fid"]["fid"] != pipes["interp_plain"]["fid"]["fid"]
    assert "interp_plain / baseline_plain" in (out / "results.md").read_text()


def test_missing_pipeline_path_error_message(tmp_path, capsys):
    assert (
        evaluate.main(evaluate.parse_args([str(tmp_path / "missing_pipe"), "--output_dir", str(tmp_path / "o")])) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate.main(evaluate.parse_args([str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o")])) == 2
    assert "model_index.json" in capsys.readouterr().err


def test_the_run_takes_the_pipelines_own_sampler_and_refuses_to_compare_two_samplers(tmp_path, capsys):
    """Without --eta / --num_inference_steps a run samples as the pipelines' folders say; pipelines that sample
    differently are compared only under a sampler the command names."""
    from evaluation.cli import resolve_sampler

    stochastic = tiny_pipeline(seed=1)
    stochastic.register_to_config(eta=1.0, num_inference_steps=7)
    args = evaluate.parse_args(["x", "--output_dir", "o"])
    assert (args.eta, args.num_inference_steps) == (None, None)
    resolve_sampler(args, {"a": stochastic})
    assert (args.eta, args.num_inference_steps) == (1.0, 7)
    ddim = tiny_pipeline()
    with pytest.raises(ValueError, match=r"different eta \(a: 1.0, b: 0.0\); pass --eta"):
        resolve_sampler(evaluate.parse_args(["x", "--output_dir", "o"]), {"a": stochastic, "b": ddim})
    args = evaluate.parse_args(["x", "--output_dir", "o", "--eta", "0"])
    with pytest.raises(ValueError, match=r"different num_inference_steps \(a: 7, b: 50\)"):
        resolve_sampler(args, {"a": stochastic, "b": ddim})
    args = evaluate.parse_args(["x", "--output_dir", "o", "--eta", "0.5", "--num_inference_steps", "3"])
    resolve_sampler(args, {"a": stochastic, "b": ddim})
    assert stochastic.config.eta == ddim.config.eta == 0.5 and args.num_inference_steps == 3
    # through the command: a one-line error, no results
    stochastic.register_to_config(eta=1.0)
    ddim.register_to_config(eta=0.0)
    for name, pipe in (("a", stochastic), ("b", ddim)):
        pipe.save_pretrained(str(tmp_path / name))
    out = tmp_path / "eval"
    argv = [str(tmp_path / "a"), "--baseline", str(tmp_path / "b"), "--output_dir", str(out), "--num_pairs", "1"]
    assert evaluate.main(evaluate.parse_args(argv + ["--num_fid_samples", "0", "--skip", "real"])) == 2
    assert "different eta (a: 1.0, b: 0.0); pass --eta to compare them under one sampler" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_per_pixel_model_is_exactly_local_and_a_mixing_unet_is_not(templates):
    concepts = ["eyes", "nose", "mouth"]
    local = evaluate.evaluate_locality(
        per_pixel_pipeline(templates), concepts, num_pairs=3, seed=0, num_inference_steps=3, batch_size=4
    )
    mixing = evaluate.evaluate_locality(
        tiny_pipeline(concept_templates=templates), concepts, num_pairs=3, seed=0, num_inference_steps=3, batch_size=4
    )
    for edit in ("swap", "resample"):
        for c in concepts:
            for key in ("rgb/paper", "rgb/area", "lab/paper", "lab/area"):
                assert local[edit][c][key]["n"] == 3
                assert local[edit][c][key]["mean"] < 1e-6, (edit, c, key, local[edit][c][key])
            assert mixing[edit][c]["rgb/paper"]["mean"] > 0.05, (edit, c, mixing[edit][c]["rgb/paper"])
            assert mixing[edit][c]["lab/paper"]["mean"] > 0.05

    leak_local = evaluate.evaluate_attribution(per_pixel_pipeline(templates), 2, 2, seed=0, num_inference_steps=3)
    leak_mixing = evaluate.evaluate_attribution(
        tiny_pipeline(concept_templates=templates), 2, 2, seed=0, num_inference_steps=3
    )
    assert leak_local["region_names"] == ["eyes", "nose", "mouth", "rest"]
    assert leak_local["leakage"]["mean"] < 1e-9
    assert max(max(curve) for curve in leak_local["region_leakage_curve"].values()) < 1e-9
    assert leak_mixing["leakage"]["mean"] > 0.05
    # the exact Shapley matrix of a per-pixel model is diagonal at every timestep
    for share in leak_local["attribution_share"]:
        assert np.allclose(np.asarray(share), np.eye(4), atol=1e-9)


def test_mask_dilation_grows_the_edited_and_scored_region(templates, capsys):
    concepts = ["eyes"]
    kw = dict(num_pairs=2, seed=0, num_inference_steps=2, batch_size=2)
    plain = evaluate.evaluate_locality(tiny_pipeline(concept_templates=templates), concepts, **kw)
    grown = evaluate.evaluate_locality(tiny_pipeline(concept_templates=templates), concepts, mask_dilation=2, **kw)
    for edit in ("swap", "resample"):
        mask0 = plain["examples"][edit]["eyes"][0]["mask"]
        mask2 = grown["examples"][edit]["eyes"][0]["mask"]
        # the grown mask is the 2-px dilation of the parsed one: a strict superset, as the training regions are
        assert torch.equal(mask2, pid.dilate_masks(mask0[None], 2)[0])
        assert mask2.sum() > mask0.sum() and (mask2 >= mask0).all()
        assert grown[edit]["eyes"]["lab/paper"]["mean"] != plain[edit]["eyes"]["lab/paper"]["mean"]
    # a per-pixel model stays exactly local whatever the region
    local = evaluate.evaluate_locality(per_pixel_pipeline(templates), concepts, mask_dilation=2, **kw)
    assert local["swap"]["eyes"]["lab/paper"]["mean"] < 1e-6
    with pytest.raises(ValueError, match="mask_dilation must be a non-negative integer"):
        evaluate.evaluate_locality(per_pixel_pipeline(templates), concepts, mask_dilation=-1, **kw)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["some_pipe", "--mask_dilation", "-1"])
    assert "--mask_dilation must be >= 0" in capsys.readouterr().err


def test_a_plain_ddpm_pipeline_folder_loads_as_an_interpretable_ddim_pipeline(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    from conftest import tiny_unet

    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        str(tmp_path / "p")
    )
    pipe = model_files.load_pipeline(str(tmp_path / "p"), "cpu")
    # sampled like the interpretable pipelines: the saved DDPM schedule clips x_0 (its default), so DDIM does too
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.clip_sample
    assert hasattr(pipe, "swap_regions") and pipe.resolution == (16, 16)


def test_seeded_draws_do_not_depend_on_batching():
    shape = (3, 16, 16)
    whole = evaluate.seeded_latents(shape, 7, "pair_a", range(5))
    parts = torch.cat(
        [evaluate.seeded_latents(shape, 7, "pair_a", [0, 1]), evaluate.seeded_latents(shape, 7, "pair_a", [2, 3, 4])]
    )
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, evaluate.seeded_latents(shape, 7, "pair_b", range(5)))
    assert not torch.equal(whole, evaluate.seeded_latents(shape, 8, "pair_a", range(5)))


@pytest.mark.slow  # loads the Inception network
def test_fid_of_a_set_against_itself_is_zero_and_of_different_sets_is_not():
    inception = evaluate.InceptionFeatures("cpu")  # bundled weights: works offline
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (6, 3, 16, 16), generator=gen).to(torch.uint8)
    ramps = torch.linspace(0, 255, 16).view(1, 1, 1, 16).expand(6, 3, 16, 16).clone()
    smooth = (ramps * torch.rand(6, 3, 1, 1, generator=gen)).round().to(torch.uint8)
    f_noise, f_smooth = inception(noise), inception(smooth)
    assert f_noise.shape == (6, 2048) and (f_noise >= 0).all()  # pool3 of ReLU features
    assert np.array_equal(f_noise[:3], inception(noise[:3]))  # per image, whatever the batch
    self_fid = evaluate.fid_from_features(f_noise, f_noise)
    cross_fid = evaluate.fid_from_features(f_noise, f_smooth)
    assert abs(self_fid) < 1e-3, self_fid
    assert cross_fid > 50, cross_fid
    assert abs(evaluate.fid_from_features(f_smooth, f_noise) - cross_fid) < 1e-6 * cross_fid


def test_fid_formula():
    # known Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)); S = diag(1, 4), diag(4, 1) -> 9 + 10 - 8
    fid = evaluate.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([3.0, 0.0]), np.diag([4.0, 1.0]))
    assert abs(fid - 11) < 1e-9
    # with fewer samples than dimensions the exact reduction to the features' span equals the full formula
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 40)) ** 2, rng.normal(1.0, 2.0, size=(9, 40))
    full = evaluate.frechet_distance(*evaluate.feature_statistics(a), *evaluate.feature_statistics(b))
    assert abs(evaluate.fid_from_features(a, b) - full) < 1e-6 * full
    c = rng.normal(size=(50, 40))  # N1 + N2 - 2 >= D: the plain formula
    full = evaluate.frechet_distance(*evaluate.feature_statistics(a), *evaluate.feature_statistics(c))
    assert abs(evaluate.fid_from_features(a, c) - full) < 1e-9 * full
    assert abs(evaluate.fid_from_features(c, c)) < 1e-6


def test_mean_ci():
    stats = evaluate.mean_ci(np.arange(1.0, 13.0))
    assert stats["mean"] == 6.5 and stats["n"] == 12 and 1.0 <= stats["ci95"][0] < 6.5 < stats["ci95"][1] <= 12.0
    # no interval from fewer than CI_MIN_SAMPLES values (a "95% CI" from 2 values covers nothing like 95%)
    few = evaluate.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert few["mean"] == 2.5 and few["std"] > 0 and few["ci95"] is None
    assert evaluate.mean_ci([])["n"] == 0 and evaluate.mean_ci([0.5])["ci95"] is None
    assert evaluate.mean_ci([2.0] * 12)["ci95"] == [2.0, 2.0]
    dropped = evaluate.mean_ci([1.0, float("nan"), 3.0])
    assert dropped["n"] == 2 and dropped["n_dropped_nonfinite"] == 1


def test_no_ratio_to_a_baseline_that_is_zero_up_to_float_error():
    # a blended edit's locality is 0 by construction, up to float error: a ratio of two such numbers means nothing
    ids = list(range(12))
    tiny_a = evaluate.mean_ci(np.full(12, 3e-9) + np.arange(12) * 1e-10, ids=ids)
    tiny_b = evaluate.mean_ci(np.full(12, 5e-9) + np.arange(12) * 1e-10, ids=ids)
    ratio = evaluate.ratio_ci(tiny_a, tiny_b)
    assert ratio["n"] == 12 and ratio["ratio"] is None and ratio["ci95"] is None
    tiny_a["ratio_to_baseline"] = ratio
    assert _ratio(tiny_a, tiny_b) == "—"
    real_a = evaluate.mean_ci(np.linspace(0.2, 0.4, 12), ids=ids)
    real_b = evaluate.mean_ci(np.linspace(0.8, 1.2, 12), ids=ids)
    real_a["ratio_to_baseline"] = evaluate.ratio_ci(real_a, real_b)
    assert real_a["ratio_to_baseline"]["ratio"] == pytest.approx(0.3)
    assert _ratio(real_a, real_b).startswith("0.300 [")


def test_load_checkpoint_or_pipeline_puts_checkpoint_ema_weights_into_the_shell(tmp_path):
    """The screen scripts score a training checkpoint with the shell pipeline's scheduler and masks but the
    checkpoint's EMA weights; a pipeline folder loads as itself; anything else is refused by name."""
    from conftest import tiny_pipeline, tiny_unet

    shell = tiny_pipeline(seed=0)
    shell.save_pretrained(str(tmp_path / "shell"))
    tiny_unet(seed=1).save_pretrained(str(tmp_path / "checkpoint-600" / "unet_ema"))
    tiny_unet(seed=2).save_pretrained(str(tmp_path / "checkpoint-600" / "unet"))  # the raw weights: not used
    tiny_pipeline(seed=3).save_pretrained(str(tmp_path / "run"))

    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        expected = {seed: tiny_unet(seed=seed)(x, t).sample for seed in (0, 1, 3)}
        from_checkpoint = evaluate.load_checkpoint_or_pipeline(
            str(tmp_path / "checkpoint-600"), str(tmp_path / "shell")
        )
        from_pipeline = evaluate.load_checkpoint_or_pipeline(str(tmp_path / "run"), str(tmp_path / "shell"))
        assert torch.allclose(from_checkpoint.unet(x, t).sample, expected[1], atol=1e-6)
        assert not torch.allclose(expected[1], expected[0], atol=1e-3)
        assert torch.allclose(from_pipeline.unet(x, t).sample, expected[3], atol=1e-6)
    assert from_checkpoint.unet.dtype == torch.float32
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither model_index.json nor unet_ema/ or unet/"):
        evaluate.load_checkpoint_or_pipeline(str(tmp_path / "empty"), str(tmp_path / "shell"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        evaluate.load_checkpoint_or_pipeline(str(tmp_path / "missing"), str(tmp_path / "shell"))


def test_kid_is_zero_in_expectation_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same = evaluate.kid_from_features(a, b, num_subsets=20, subset_size=200)
    shifted = evaluate.kid_from_features(a, b + 0.5, num_subsets=20, subset_size=200)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 10 * max(abs(same["kid"]), same["kid_std"])
    # brute force on one full "subset": the unbiased MMD^2 with the cubic kernel
    x, y = a[:50], b[:50] + 0.2
    k = lambda u, v: (u @ v.T / 16 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = (kxx.sum() - np.trace(kxx)) / (50 * 49) + (kyy.sum() - np.trace(kyy)) / (50 * 49) - 2 * kxy.mean()
    assert evaluate.kid_from_features(x, y, num_subsets=1, subset_size=50)["kid"] == pytest.approx(expected)


def test_off_colour_rate_flags_a_part_far_from_the_skin_colour():
    concepts = {"eyes": [4, 5], "nose": [6], "mouth": [7]}
    labels = torch.ones(4, 16, 16, dtype=torch.long)
    labels[:, 4:6, 3:7], labels[:, 4:6, 9:13] = 4, 5
    labels[:, 7:10, 7:9], labels[:, 12:14, 5:11] = 6, 7
    skin = torch.tensor([200, 150, 120], dtype=torch.uint8).view(1, 3, 1, 1)
    images = skin.expand(4, 3, 16, 16).clone()
    images[:, :, 7:10, 7:9] = torch.tensor([190, 140, 115], dtype=torch.uint8).view(3, 1, 1)  # a skin-coloured nose
    images[2, :, 7:10, 7:9] = torch.tensor([40, 60, 220], dtype=torch.uint8).view(3, 1)[:, :, None]  # a blue one
    labels[3, 7:10, 7:9] = 1  # no nose found: not measured, not counted as off-colour
    d = evaluate.part_colour_distances(images, labels, concepts)
    assert d.shape == (4, 3) and np.isnan(d[3, 1]) and not np.isnan(d[:3]).any()
    assert d[0, 1] == pytest.approx(d[1, 1]) and d[2, 1] > 5 * d[0, 1]
    thresholds = {"eyes": 1.0, "nose": 2 * d[0, 1], "mouth": 1.0}
    rate = evaluate.off_colour_rate(d, thresholds)
    assert rate["rate"]["mean"] == pytest.approx(0.25) and rate["per_part"]["nose"] == pytest.approx(0.25)
    assert rate["unmeasured"] == pytest.approx(0.25)
    lo, hi = rate["rate"]["ci95"]
    assert 0.0 < lo < 0.25 < hi < 1.0  # Wilson: not the point a bootstrap of 0/1 values collapses to
    none_beyond = evaluate.off_colour_rate(np.zeros((1000, 3)), thresholds)["rate"]
    assert (
        none_beyond["mean"] == 0
        and none_beyond["ci95"][0] == pytest.approx(0, abs=1e-12)
        and 0.002 < none_beyond["ci95"][1] < 0.005
    )
    assert evaluate.off_colour_thresholds(d, list(concepts))["nose"] == pytest.approx(np.nanpercentile(d[:, 1], 99))


# ----------------------------------------------------------------------------------------------------------------------
# The peer's measures: seam score, blended locality, end-to-end attribution and emergence on known models
# ----------------------------------------------------------------------------------------------------------------------
def test_seam_score_against_brute_force_and_known_cases():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 12, 12)
    mask = torch.zeros(2, 1, 12, 12)
    mask[:, :, 3:8, 4:9] = 1
    # the band by hand: 1 px outside (dilation by 1) and 1 px inside (the mask minus its erosion by 1)
    m = mask[0, 0].bool()
    band = torch.zeros(12, 12, dtype=torch.bool)
    for y in range(12):
        for x in range(12):
            near = mask[0, 0, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
            band[y, x] = bool(near.max() > 0) and bool(near.min() == 0)
    assert torch.equal(evaluate.border_band(mask)[0, 0].bool(), band)
    assert band[m].sum() == 16 and band[~m].sum() == 24  # inner ring of the 5x5 box; outer ring
    # gradient magnitude by hand at one pixel
    g = evaluate.gradient_magnitude(image)
    dx, dy = image[0, :, 2, 3] - image[0, :, 2, 2], image[0, :, 3, 2] - image[0, :, 2, 2]
    assert float(g[0, 2, 2]) == pytest.approx(float((dx**2 + dy**2).sum().sqrt()), abs=1e-6)
    # unedited: 1; a flat paste into a flat face: a seam (> 1); the same paste smoothed away: below the pasted one
    np.testing.assert_allclose(evaluate.seam_score(image, image, mask), 1.0)
    flat = torch.full((2, 3, 12, 12), 0.5) + 0.01 * torch.rand(2, 3, 12, 12)
    pasted = mask * 0.9 + (1 - mask) * flat
    blurred = torch.nn.functional.avg_pool2d(pasted, 3, stride=1, padding=1, count_include_pad=False)
    assert (evaluate.seam_score(flat, pasted, mask) > 10).all()
    assert (evaluate.seam_score(flat, blurred, mask) < evaluate.seam_score(flat, pasted, mask)).all()


def test_blended_edits_are_local_by_construction_and_scored_on_the_same_pairs(templates):
    pipe = tiny_pipeline(concept_templates=templates)
    loc = evaluate.evaluate_locality(
        pipe,
        ["nose"],
        num_pairs=3,
        seed=0,
        num_inference_steps=3,
        batch_size=3,
        num_examples=1,
        blend=(False, True),
        harmonize_noise=False,
    )
    for edit in ("swap", "resample"):
        assert loc[edit]["nose"]["rgb/paper"]["mean"] > 1e-4  # the random UNet mixes everything
        assert loc[edit + "_blend"]["nose"]["rgb/paper"]["mean"] < 1e-8
        assert loc[edit + "_blend"]["nose"]["rgb/paper"]["units"]["ids"] == [0, 1, 2]
    assert loc["edited_uint8"]["swap_blend"].shape == (6, 3, 16, 16)
    assert loc["edited_uint8"]["resample"].shape == (3, 3, 16, 16)
    only = evaluate.evaluate_locality(
        pipe,
        ["nose"],
        num_pairs=3,
        seed=0,
        num_inference_steps=3,
        batch_size=3,
        num_examples=0,
        blend=(False,),
        harmonize_noise=False,
    )
    assert "swap_blend" not in only
    assert only["swap"]["nose"]["seam"]["mean"] == pytest.approx(loc["swap"]["nose"]["seam"]["mean"])


def test_end_to_end_leakage_of_a_per_pixel_model_is_zero_and_of_a_mixing_unet_is_not(templates):
    local = evaluate.evaluate_end_to_end(
        per_pixel_pipeline(templates), 2, seed=0, num_inference_steps=2, batch_size=16
    )
    mixing = evaluate.evaluate_end_to_end(tiny_pipeline(concept_templates=templates), 2, seed=0, num_inference_steps=2)
    assert local["num_samples"] == 2 and local["leakage"]["mean"] < 1e-6
    assert mixing["leakage"]["mean"] > 1e-3
    share = np.asarray(local["attribution_share"])
    np.testing.assert_allclose(share, np.eye(len(local["region_names"])), atol=1e-6)


def test_reports_count_the_full_runs_of_new_and_older_results():
    # results.json written before the key was renamed still renders
    assert _full_runs({"num_full_runs_per_sample": 16}) == 16
    assert _full_runs({"num_full_ddim_runs_per_sample": 8}) == 8


def test_emergence_of_a_per_pixel_model(templates):
    em = evaluate.evaluate_emergence(
        per_pixel_pipeline(templates), ["mouth"], num_pairs=2, seed=0, num_inference_steps=4, num_points=4
    )
    assert em["step_indices"] == [0, 1, 2, 3] and len(em["timesteps"]) == 4
    # a per-pixel model: the region of B's trajectory carries B's part whatever the step
    for p in em["trajectory"]["mouth"]["curve"]:
        assert p["mean"] == pytest.approx(1.0, abs=1e-5)
    assert em["trajectory"]["mouth"]["emergence_step"]["mean"] == 4
    assert em["noise"]["mouth"]["curve"][0]["mean"] == pytest.approx(1.0, abs=1e-5)


def test_denoising_trajectory_rows_end_in_the_pipelines_own_images_and_refuse_to_overwrite(tmp_path, capsys):
    """scripts.denoising_trajectory: one row per (pipeline, sample), a column per kept step and the final image, which
    is what the pipeline itself draws from the same x_T; an existing --out is refused before any work."""
    from scripts import denoising_trajectory as dt

    folders = []
    for seed in (0, 1):
        folders.append(str(tmp_path / f"pipe{seed}"))
        tiny_pipeline(seed=seed).save_pretrained(folders[-1])
    out = tmp_path / "trajectory.png"
    args = dt.parse_args(
        [*folders, "--indices", "3", "5", "--num_inference_steps", "6", "--every", "2", "--out", str(out)]
    )
    dt.main(args)
    grid = np.asarray(PIL.Image.open(out))
    assert grid.shape == (2 * 2 * 16 * 2, 4 * 16 * 2, 3)  # 2 pipelines x 2 samples; steps 0, 2, 4 + the image; zoom 2
    assert "t = " in capsys.readouterr().out
    for row, seed in ((0, 0), (2, 1)):
        pipe = model_files.load_pipeline(folders[seed])
        latents = evaluate.seeded_latents(pipe.latent_shape, 0, "fid", [3])
        image = pipe(latents=latents, num_inference_steps=6, output_type="np").images[0]
        drawn = grid[row * 32 : row * 32 + 32 : 2, 3 * 32 :: 2].astype(int)
        assert np.abs(drawn - np.round(image * 255)).max() <= 1
    with pytest.raises(SystemExit):
        dt.parse_args([*folders, "--out", str(out)])
    assert "exists; choose another file" in capsys.readouterr().err

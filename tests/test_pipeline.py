"""InterpretableDDPMPipeline: DDIM generation, region edits, inversion, Shapley attribution, save/load, bad input.

Tiny random models on 16x16 images, a few DDIM steps: the whole file runs in well under a minute on 2 CPU cores.
"""

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, DiffusionPipeline

import pipeline_interpretable_ddpm as pid
from conftest import PIPELINE_FILE, tiny_pipeline, tiny_unet
from denoisers import GaussianDenoiser, GaussianPosteriorDenoiser, PerPixelDenoiser

STEPS = 8
SIZE = 16


def make_pipe(unet, **kw) -> pid.InterpretableDDPMPipeline:
    pipe = pid.InterpretableDDPMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False), **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def box(top: int, left: int, height: int, width: int, size: int = SIZE) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top : top + height, left : left + width] = True
    return m


# Template masks for the tiny pipelines: eyes, nose, mouth boxes on a 16x16 face.
TEMPLATES = {"eyes": box(4, 3, 2, 10), "nose": box(6, 7, 4, 2), "mouth": box(11, 5, 2, 6)}


def templated_pipeline(**kw) -> pid.InterpretableDDPMPipeline:
    codes = {name: pid.encode_binary_mask(m.numpy()) for name, m in TEMPLATES.items()}
    return tiny_pipeline(concept_templates=codes, **kw)


def images(out, attr="images") -> torch.Tensor:
    return getattr(out, attr).double()


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip_sample", [False, True])
def test_call_equals_diffusers_ddim_pipeline(clip_sample):
    unet = tiny_unet()
    scheduler = DDIMScheduler(clip_sample=clip_sample)
    pipe = pid.InterpretableDDPMPipeline(unet=unet, scheduler=scheduler)
    reference = DDIMPipeline(unet=unet, scheduler=scheduler)
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)

    ours = pipe(batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=STEPS, output_type="np")
    theirs = reference(
        batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=STEPS, eta=0.0, output_type="np"
    ).images
    np.testing.assert_allclose(ours.images, theirs, atol=1e-6)
    # The output carries the x_T that made the images (DDIMPipeline draws it the same way) ...
    expected_latents = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours.latents, expected_latents)
    # ... and passing it back reproduces the images.
    again = pipe(latents=ours.latents, num_inference_steps=STEPS, output_type="np").images
    np.testing.assert_array_equal(again, ours.images)
    assert np.abs(ours.images[0] - ours.images[1]).max() > 1e-3  # different noise, different images


def test_output_types_agree(pipe):
    x_t = noise(2, 0)
    pt = pipe(latents=x_t, num_inference_steps=STEPS, output_type="pt").images
    arr = pipe(latents=x_t, num_inference_steps=STEPS, output_type="np").images
    pil = pipe(latents=x_t, num_inference_steps=STEPS, output_type="pil").images
    assert pt.shape == (2, 3, SIZE, SIZE) and arr.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    assert len(pil) == 2 and pil[0].size == (SIZE, SIZE)
    np.testing.assert_allclose(np.asarray(pil[0]) / 255.0, arr[0], atol=1 / 255 + 1e-6)
    as_tuple = pipe(latents=x_t, num_inference_steps=STEPS, output_type="pt", return_dict=False)
    torch.testing.assert_close(as_tuple[0], pt)
    torch.testing.assert_close(as_tuple[1], x_t)


# ----------------------------------------------------------------------------------------------------------------------
# Region edits
# ----------------------------------------------------------------------------------------------------------------------
def test_resample_with_empty_mask_returns_identical_image(pipe):
    x_t = noise(2, 0)
    original = pipe(latents=x_t, num_inference_steps=STEPS, output_type="pt").images
    empty = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    out = pipe.resample_region(
        x_t,
        empty,
        generator=torch.Generator().manual_seed(1),
        num_inference_steps=STEPS,
        output_type="pt",
        allow_empty_mask=True,
    )
    torch.testing.assert_close(out.images, original, rtol=0, atol=0)
    torch.testing.assert_close(out.latents, x_t, rtol=0, atol=0)
    assert out.mask.shape == (2, 1, SIZE, SIZE) and out.mask.sum() == 0


def test_resample_with_full_mask_equals_fresh_generation(pipe):
    x_t, fresh = noise(2, 0), noise(2, 1)
    full = torch.ones(SIZE, SIZE)
    by_tensor = pipe.resample_region(x_t, full, new_latents=fresh, num_inference_steps=STEPS, output_type="pt")
    direct = pipe(latents=fresh, num_inference_steps=STEPS, output_type="pt").images
    torch.testing.assert_close(by_tensor.images, direct, rtol=0, atol=0)
    torch.testing.assert_close(by_tensor.latents, fresh, rtol=0, atol=0)
    # With a generator, the new noise is what that generator draws.
    by_generator = pipe.resample_region(
        x_t, full, generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, output_type="pt"
    )
    torch.testing.assert_close(by_generator.latents, noise(2, 5))
    torch.testing.assert_close(
        by_generator.images, pipe(latents=noise(2, 5), num_inference_steps=STEPS, output_type="pt").images
    )


def test_resample_changes_noise_only_inside_the_mask(pipe):
    x_t, fresh = noise(1, 0), noise(1, 1)
    mask = box(4, 4, 6, 6)
    out = pipe.resample_region(
        x_t, mask, new_latents=fresh, num_inference_steps=STEPS, output_type="pt", harmonize_noise=False
    )
    torch.testing.assert_close(out.latents[..., mask], fresh[..., mask])
    torch.testing.assert_close(out.latents[..., ~mask], x_t[..., ~mask])
    original = pipe(latents=x_t, num_inference_steps=STEPS, output_type="pt").images
    assert (out.images - original).abs().max() > 1e-3


def test_swap_twice_restores_both_images(pipe):
    a, b = noise(2, 0), noise(2, 1)
    mask = box(3, 2, 8, 9)
    originals = pipe(latents=torch.cat([a, b]), num_inference_steps=STEPS, output_type="pt").images
    once = pipe.swap_regions(a, b, mask, num_inference_steps=STEPS, output_type="pt", harmonize_noise=False)
    # The x_T exchange itself, checked elementwise.
    torch.testing.assert_close(once.latents_a[..., mask], b[..., mask])
    torch.testing.assert_close(once.latents_a[..., ~mask], a[..., ~mask])
    torch.testing.assert_close(once.latents_b[..., mask], a[..., mask])
    torch.testing.assert_close(once.latents_b[..., ~mask], b[..., ~mask])
    assert (once.images_a - originals[:2]).abs().max() > 1e-3
    twice = pipe.swap_regions(
        once.latents_a, once.latents_b, mask, num_inference_steps=STEPS, output_type="pt", harmonize_noise=False
    )
    torch.testing.assert_close(twice.latents_a, a, rtol=0, atol=0)
    torch.testing.assert_close(twice.latents_b, b, rtol=0, atol=0)
    torch.testing.assert_close(twice.images_a, originals[:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(twice.images_b, originals[2:], rtol=0, atol=1e-6)


def test_swap_results_equal_generating_the_swapped_noise(pipe):
    a, b = noise(1, 0), noise(1, 1)
    out = pipe.swap_regions(a, b, box(0, 0, 8, 16), num_inference_steps=STEPS, output_type="pt")
    for edited, latents in ((out.images_a, out.latents_a), (out.images_b, out.latents_b)):
        torch.testing.assert_close(
            edited, pipe(latents=latents, num_inference_steps=STEPS, output_type="pt").images, rtol=0, atol=1e-5
        )


def test_swap_mask_from_b_and_union_with_concepts():
    pipe = templated_pipeline()
    a, b = noise(1, 0), noise(1, 1)
    for mask_from in ("a", "b", "union"):
        out = pipe.swap_regions(a, b, "mouth", num_inference_steps=2, output_type="pt", mask_from=mask_from)
        assert torch.equal(out.mask[0, 0] > 0.5, TEMPLATES["mouth"])  # templates: the same mask for every face
    with pytest.raises(ValueError, match="mask_from must be 'a', 'b' or 'union'"):
        pipe.swap_regions(a, b, "mouth", num_inference_steps=2, mask_from="c")


# ----------------------------------------------------------------------------------------------------------------------
# Masks in every accepted form
# ----------------------------------------------------------------------------------------------------------------------
def test_masks_accepted_in_every_form_and_resized():
    pipe = templated_pipeline()
    x_t, fresh = noise(2, 0), noise(2, 1)
    target = TEMPLATES["mouth"]
    big = target.repeat_interleave(4, 0).repeat_interleave(4, 1)  # 64x64, the same region
    pil_l = PIL.Image.fromarray(big.numpy().astype(np.uint8) * 255, mode="L")
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = big.numpy() * 255  # painted strokes of a Gradio sketch: alpha channel
    forms = {
        "concept name": "mouth",
        "bool tensor HxW": target,
        "float tensor HxW": target.float(),
        "numpy bool": target.numpy(),
        "numpy uint8 0..255": target.numpy().astype(np.uint8) * 255,
        "(1, H, W)": target[None].float(),
        "(B, 1, H, W)": target[None, None].expand(2, 1, -1, -1).float(),
        "PIL L, 64x64 (resized)": pil_l,
        "PIL RGBA alpha, 64x64 (resized)": PIL.Image.fromarray(rgba, mode="RGBA"),
        "numpy 64x64 (resized)": big.numpy(),
    }
    expected = pipe.resample_region(x_t, target, new_latents=fresh, num_inference_steps=2, output_type="pt")
    for name, mask in forms.items():
        out = pipe.resample_region(x_t, mask, new_latents=fresh, num_inference_steps=2, output_type="pt")
        assert out.mask.shape == (2, 1, SIZE, SIZE), name
        assert torch.equal(out.mask[:, 0] > 0.5, target[None].expand(2, -1, -1)), name
        torch.testing.assert_close(out.images, expected.images, rtol=0, atol=0, msg=name)


def test_per_image_masks_in_a_batch(pipe):
    x_t, fresh = noise(2, 0), noise(2, 1)
    masks = torch.stack([box(0, 0, 4, 4), box(8, 8, 8, 8)])[:, None]
    out = pipe.resample_region(x_t, masks, new_latents=fresh, num_inference_steps=2, output_type="pt")
    for i in range(2):
        single = pipe.resample_region(
            x_t[i : i + 1], masks[i, 0], new_latents=fresh[i : i + 1], num_inference_steps=2, output_type="pt"
        )
        torch.testing.assert_close(out.latents[i : i + 1], single.latents)
        torch.testing.assert_close(out.images[i : i + 1], single.images, rtol=0, atol=1e-5)


def test_concept_masks_from_templates():
    pipe = templated_pipeline()
    for name, m in TEMPLATES.items():
        assert torch.equal(pipe.template_mask(name), m)
        got = pipe.concept_mask(noise(3, 0), name, is_latents=True)
        assert got.shape == (3, 1, SIZE, SIZE) and torch.equal(got[:, 0] > 0.5, m[None].expand(3, -1, -1))
    dilated = pipe.concept_mask(noise(1, 0), "nose", dilation=1, is_latents=True)[0, 0] > 0.5
    assert torch.equal(dilated, box(5, 6, 6, 4))
    regions = pipe.region_masks(noise(1, 0), is_latents=True)
    assert regions.shape == (1, 4, SIZE, SIZE) and torch.equal(regions.sum(1), torch.ones(1, SIZE, SIZE))


# ----------------------------------------------------------------------------------------------------------------------
# Inversion
# ----------------------------------------------------------------------------------------------------------------------
def test_invert_then_generate_reproduces_the_image():
    """DDIM inversion with 20 steps and 3 fixed-point iterations: max pixel error below 0.005 (of the [0, 1] range),
    PSNR above 45 dB; the plain inversion (no fixed-point iterations) is clearly worse."""
    pipe = make_pipe(GaussianDenoiser(mixing=0.1))
    image = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    steps = 20

    inverted = pipe.invert(
        image, num_inference_steps=steps, fixed_point_iterations=3, check_reconstruction=True, strength=1.0
    )
    redrawn = pipe(latents=inverted.latents, num_inference_steps=steps, output_type="pt").images
    error = (redrawn - image).abs().max().item()
    assert error < 5e-3
    psnr = -10 * torch.log10((redrawn - image).pow(2).flatten(1).mean(1))
    assert (psnr > 45).all()
    torch.testing.assert_close(inverted.reconstruction_psnr, psnr, atol=0.05, rtol=0)
    # x_T is noise-like, not the image: the inversion went all the way.
    assert 0.5 < inverted.latents.std().item() < 3

    plain = pipe.invert(image, num_inference_steps=steps, fixed_point_iterations=0, return_dict=False, strength=1.0)
    plain_error = (pipe(latents=plain, num_inference_steps=steps, output_type="pt").images - image).abs().max().item()
    assert plain_error > 5 * error


def test_invert_accepts_pil_numpy_and_resizes():
    pipe = make_pipe(GaussianDenoiser(mixing=0.1))
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    from_numpy = pipe.invert(image, num_inference_steps=4, return_dict=False)
    from_pil = pipe.invert(PIL.Image.fromarray(image), num_inference_steps=4, return_dict=False)
    torch.testing.assert_close(from_numpy, from_pil)
    big = PIL.Image.fromarray(image).resize((32, 32), PIL.Image.NEAREST)
    with pytest.raises(ValueError, match=r"32x32 does not match the model resolution 16x16.*resize=True"):
        pipe.invert(big, num_inference_steps=4)
    resized = pipe.invert(big, num_inference_steps=4, resize=True, return_dict=False)
    assert resized.shape == (1, 3, SIZE, SIZE) and torch.isfinite(resized).all()


def test_invert_with_clipping_scheduler_regenerates_unclipped_and_refuses_thresholding():
    """With clip_sample=True (the shipped models' setting) the inversion is still exact for unclipped DDIM, which
    `clip_sample=False` selects per call; the clipped regeneration is worse. Bound: PSNR > 45 dB unclipped."""
    pipe = make_pipe(GaussianDenoiser(mixing=0.1))
    pipe.scheduler = DDIMScheduler(clip_sample=True)
    image = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    inverted = pipe.invert(image, num_inference_steps=20, check_reconstruction=True, strength=1.0)
    assert (inverted.reconstruction_psnr > 45).all()
    unclipped = pipe(latents=inverted.latents, num_inference_steps=20, output_type="pt", clip_sample=False).images
    psnr = -10 * torch.log10((unclipped - image).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(inverted.reconstruction_psnr, psnr, atol=0.05, rtol=0)
    clipped = pipe(latents=inverted.latents, num_inference_steps=20, output_type="pt").images
    assert (clipped - image).abs().max() > 10 * (unclipped - image).abs().max()
    assert pipe.scheduler.config.clip_sample  # the per-call override leaves the pipeline's scheduler alone
    pipe.scheduler = DDIMScheduler(thresholding=True)
    with pytest.raises(ValueError, match="thresholding=False"):
        pipe.invert(image, num_inference_steps=2)


def posterior_pipeline(**kw) -> pid.InterpretableDDPMPipeline:
    """The analytic denoiser (`GaussianPosteriorDenoiser`) with the scheduler it is written for."""
    unet = GaussianPosteriorDenoiser(**kw)
    pipe = pid.InterpretableDDPMPipeline(unet=unet, scheduler=unet.make_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_invert_at_strength_one_is_exact_under_zero_terminal_snr():
    """Under zero terminal SNR alpha_bar = 0 at t = T - 1, where the predicted noise is x_T itself whatever x_T is:
    solved for the noise, the last inverse step collapses to x_T = x_t_prev. Solved with the predicted x_0 it is
    exact: on the analytic v-prediction denoiser, invert (strength 1.0, converged fixed points) then generate
    reproduces the image to float precision, where the collapsed step is ~1000x worse."""
    pipe = posterior_pipeline(prediction_type="v_prediction", rescale_betas_zero_snr=True, mixing=0.1)
    assert float(pipe.scheduler.alphas_cumprod[-1]) == 0
    image = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    steps, iterations = 10, 30
    inverted = pipe.invert(image, steps, fixed_point_iterations=iterations, strength=1.0, check_reconstruction=True)
    assert inverted.timestep == 999
    redrawn = pipe(latents=inverted, num_inference_steps=steps, output_type="pt").images
    error = (redrawn - image).abs().max().item()
    assert error < 1e-5 and (inverted.reconstruction_psnr > 100).all()
    torch.testing.assert_close(
        pipe(latents=inverted.latents, num_inference_steps=steps, output_type="pt").images, redrawn
    )
    # the collapsed step: x_T = the inversion's x at the step before, t = 899
    x_899 = pipe.invert(image, steps, fixed_point_iterations=iterations, strength=0.9, return_dict=False)
    collapsed = pipe(latents=x_899, num_inference_steps=steps, output_type="pt").images
    assert (collapsed - image).abs().max().item() > 1000 * max(error, 1e-8)
    with pytest.raises(ValueError, match="num_inference_steps >= 2"):
        pipe.invert(image, 1, strength=1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Attribution against an independent brute force
# ----------------------------------------------------------------------------------------------------------------------
def brute_force_attribution(unet, latents, baseline_latents, regions, timestep, steps, eta=0.0):
    """Exact Shapley values by the textbook formula, one UNet call per coalition, no code shared with the pipeline
    but the definition of the step noise (`step_noise`, used when eta > 0).

    Returns (phi (B, K, K), abs_phi (B, K, K), v_full (B, K), v_empty (B, K)) at `timestep` of the trajectories
    started at `latents` (players) and `baseline_latents` (absent players; None = zeros), sampled with `eta`.
    """
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(steps)
    x, base = latents.clone(), None if baseline_latents is None else baseline_latents.clone()

    def step(out, t, x, i, x_T):
        noise = pid.step_noise(x_T, i) if eta > 0 else None
        return scheduler.step(out, t, x, eta=eta, variance_noise=noise).prev_sample

    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            if int(t) == timestep:
                break
            x = step(unet(x, t).sample, t, x, i, latents)
            if base is not None:
                base = step(unet(base, t).sample, t, base, i, baseline_latents)
        else:
            raise AssertionError("timestep not in schedule")
        if base is None:
            base = torch.zeros_like(x)
        b, k = regions.shape[:2]
        players = range(k)
        eps_of = {}
        for size in range(k + 1):
            for coalition in itertools.combinations(players, size):
                keep = torch.zeros(b, 1, *x.shape[-2:])
                for j in coalition:
                    keep += regions[:, j : j + 1]
                eps_of[frozenset(coalition)] = unet(keep * x + (1 - keep) * base, timestep).sample.double()
    phi_elem = torch.zeros(b, k, *x.shape[1:], dtype=torch.float64)  # (B, K_in, C, H, W)
    for j in players:
        others = [p for p in players if p != j]
        for size in range(k):
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for coalition in itertools.combinations(others, size):
                s = frozenset(coalition)
                phi_elem[:, j] += weight * (eps_of[s | {j}] - eps_of[s])
    phi = torch.zeros(b, k, k, dtype=torch.float64)
    abs_phi = torch.zeros(b, k, k, dtype=torch.float64)
    v_full = torch.zeros(b, k, dtype=torch.float64)
    v_empty = torch.zeros(b, k, dtype=torch.float64)
    for i in range(b):
        for out_k in players:
            inside = regions[i, out_k] > 0.5
            v_full[i, out_k] = eps_of[frozenset(players)][i][:, inside].mean()
            v_empty[i, out_k] = eps_of[frozenset()][i][:, inside].mean()
            for j in players:
                phi[i, out_k, j] = phi_elem[i, j][:, inside].mean()
                abs_phi[i, out_k, j] = phi_elem[i, j][:, inside].abs().mean()
    return phi, abs_phi, v_full, v_empty


def random_partition(batch: int, k: int, seed: int) -> torch.Tensor:
    labels = torch.randint(0, k, (batch, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    labels[:, 0, :k] = torch.arange(k)  # every region non-empty
    return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("baseline,eta", [("tensor", 0.0), ("zero", 0.0), ("tensor", 1.0)])
def test_attribute_equals_brute_force_shapley_and_is_efficient(baseline, eta):
    pipe = tiny_pipeline()
    steps, k = 5, 3
    latents, other = noise(2, 0), noise(2, 1)
    regions = random_partition(2, k, seed=4)
    schedule = DDIMScheduler(clip_sample=False)
    schedule.set_timesteps(steps)
    timesteps = [int(schedule.timesteps[0]), int(schedule.timesteps[3])]

    out = pipe.attribute(
        latents,
        regions,
        timesteps=timesteps,
        num_inference_steps=steps,
        baseline=other if baseline == "tensor" else "zero",
        eta=eta,
    )
    assert out.phi.shape == (2, 2, k, k) and out.abs_phi.shape == (2, 2, k, k) and out.leakage.shape == (2, 2)
    assert out.timesteps.tolist() == timesteps and out.region_names == ["region_0", "region_1", "region_2"]
    for ti, t in enumerate(timesteps):
        phi, abs_phi, v_full, v_empty = brute_force_attribution(
            pipe.unet, latents, other if baseline == "tensor" else None, regions, t, steps, eta
        )
        torch.testing.assert_close(out.phi[ti].double(), phi, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out.abs_phi[ti].double(), abs_phi, atol=2e-5, rtol=1e-4)
        # Efficiency: each row sums to v_k(N) - v_k(empty).
        torch.testing.assert_close(out.phi[ti].double().sum(-1), v_full - v_empty, atol=2e-5, rtol=1e-4)
        # Leakage: the area-weighted off-diagonal share of |phi|.
        area = regions.sum((-2, -1)).double()
        weighted = abs_phi * area[:, :, None]
        off = weighted.sum((-2, -1)) - torch.diagonal(weighted, dim1=-2, dim2=-1).sum(-1)
        torch.testing.assert_close(out.leakage[ti].double(), off / weighted.sum((-2, -1)), atol=1e-5, rtol=1e-4)
    assert (out.phi.abs() > 1e-4).any()  # the game is not trivial


def test_attribute_other_sample_baseline_is_a_drawn_trajectory():
    pipe = tiny_pipeline()
    latents = noise(1, 0)
    regions = random_partition(1, 2, seed=1)
    by_generator = pipe.attribute(
        latents, regions, num_inference_steps=3, baseline="other_sample", generator=torch.Generator().manual_seed(9)
    )
    by_tensor = pipe.attribute(latents, regions, num_inference_steps=3, baseline=noise(1, 9))
    torch.testing.assert_close(by_generator.phi, by_tensor.phi)
    assert by_generator.phi.shape == (3, 1, 2, 2)  # all steps when timesteps is None


def test_attribute_with_concept_names_adds_rest_region():
    pipe = templated_pipeline()
    out = pipe.attribute(noise(1, 0), ["eyes", "mouth"], num_inference_steps=2, baseline="zero")
    assert out.region_names == ["eyes", "mouth", "rest"] and out.phi.shape == (2, 1, 3, 3)
    default = pipe.attribute(noise(1, 0), None, num_inference_steps=2, baseline="zero")
    assert default.region_names == ["eyes", "nose", "mouth", "rest"]


def test_per_pixel_model_has_zero_off_diagonal_attribution_and_mixing_model_does_not():
    latents, other = noise(2, 0), noise(2, 1)
    regions = random_partition(2, 3, seed=2)
    local = make_pipe(PerPixelDenoiser()).attribute(latents, regions, num_inference_steps=3, baseline=other)
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert local.abs_phi[..., off_diagonal].abs().max() < 1e-6
    assert local.phi[..., off_diagonal].abs().max() < 1e-6
    assert local.leakage.abs().max() < 1e-6
    assert local.abs_phi[..., ~off_diagonal].min() > 1e-4  # the diagonal carries everything

    mixing = tiny_pipeline().attribute(latents, regions, num_inference_steps=3, baseline=other)
    assert mixing.abs_phi[..., off_diagonal].min() > 1e-5
    assert (mixing.leakage > 0.01).all() and (mixing.leakage <= 1).all()
    assert 0 < mixing.mean_leakage <= 1


@pytest.mark.parametrize("quantity", ["noise", "x0"])
def test_attribution_is_of_the_named_quantity_whatever_the_prediction_type(quantity):
    """One denoiser written as an epsilon, a v and a sample model: the three raw outputs differ, the attribution of
    the predicted noise (or x_0) computed from them does not."""
    latents, other = noise(2, 0), noise(2, 1)
    regions = random_partition(2, 3, seed=2)
    kw = dict(num_inference_steps=4, timesteps=[750, 500, 250], baseline=other, quantity=quantity)
    outs = {}
    for kind in ("epsilon", "v_prediction", "sample"):
        pipe = posterior_pipeline(prediction_type=kind, rescale_betas_zero_snr=False, mixing=0.3)
        outs[kind] = pipe.attribute(latents, regions, **kw)
        assert outs[kind].quantity == quantity
    assert outs["epsilon"].abs_phi[..., ~torch.eye(3, dtype=torch.bool)].min() > 1e-4  # a game with leakage
    for kind in ("v_prediction", "sample"):
        torch.testing.assert_close(outs[kind].phi, outs["epsilon"].phi, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(outs[kind].leakage, outs["epsilon"].leakage, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_attribution_of_a_per_pixel_affine_denoiser_is_its_slope_times_the_input_difference(kind):
    """Analytic: the Gaussian posterior without mixing is per pixel and affine in x_t, x0 = ... + d x_t with
    d = sqrt(a) s^2 / (a s^2 + 1 - a) and eps = ... + c x_t with c = (1 - sqrt(a) d) / sqrt(1 - a); the Shapley value
    of region k for itself is then slope * mean over region k of (x_t - baseline x_t), of another region 0."""
    pipe = posterior_pipeline(prediction_type=kind, rescale_betas_zero_snr=False, mixing=0.0)
    latents, other = noise(2, 0), noise(2, 1)
    regions = random_partition(2, 3, seed=5)
    pipe.scheduler.set_timesteps(4)
    t = int(pipe.scheduler.timesteps[0])  # x_t and the baseline are the given tensors there
    a, var = float(pipe.scheduler.alphas_cumprod[t]), 0.5**2
    d = math.sqrt(a) * var / (a * var + 1 - a)
    slopes = {"x0": d, "noise": (1 - math.sqrt(a) * d) / math.sqrt(1 - a)}
    diff = (latents - other).double()
    expected = torch.stack(
        [
            torch.stack([(diff[i] * regions[i, k]).sum() / (3 * regions[i, k].sum()) for k in range(3)])
            for i in range(2)
        ]
    )
    for quantity, slope in slopes.items():
        out = pipe.attribute(latents, regions, timesteps=[t], num_inference_steps=4, baseline=other, quantity=quantity)
        torch.testing.assert_close(
            torch.diagonal(out.phi[0], dim1=-2, dim2=-1).double(), slope * expected, rtol=1e-4, atol=1e-6
        )
        assert out.phi[0][..., ~torch.eye(3, dtype=torch.bool)].abs().max() < 1e-6
    with pytest.raises(ValueError, match="quantity must be 'noise' or 'x0'"):
        pipe.attribute(latents, regions, num_inference_steps=4, baseline=other, quantity="v")


# ----------------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------------
CONCEPTS = "mouth=7 eyes=4,5 nose=6"  # not alphabetical: the order must survive the JSON config


def saved_pipeline(tmp_path):
    pipe = templated_pipeline(concepts=CONCEPTS)
    pipe.unet.eval()  # from_pretrained returns eval-mode models; train-mode attention differs by ~1e-6
    target = tmp_path / "saved"
    pipe.save_pretrained(str(target))
    return pipe, target


def test_save_pretrained_layout(tmp_path):
    pipe, target = saved_pipeline(tmp_path)
    index = json.loads((target / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_interpretable_ddpm", "InterpretableDDPMPipeline"]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["concepts"] == CONCEPTS
    assert (target / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (target / "pipeline_interpretable_ddpm.py").read_bytes() == open(PIPELINE_FILE, "rb").read()


def test_save_pretrained_replaces_a_linked_pipeline_file_and_leaves_its_target_alone(tmp_path):
    """models/*/ link the pipeline file to the repository's one source; saving into such a folder writes a file of
    its own and never through the link into the source."""
    target = tmp_path / "saved"
    target.mkdir()
    source = tmp_path / "source.py"
    source.write_text("# not to be overwritten\n")
    (target / "pipeline_interpretable_ddpm.py").symlink_to(source)
    tiny_pipeline().save_pretrained(str(target))
    assert source.read_text() == "# not to be overwritten\n"
    assert not (target / "pipeline_interpretable_ddpm.py").is_symlink()
    assert (target / "pipeline_interpretable_ddpm.py").read_bytes() == open(PIPELINE_FILE, "rb").read()


def test_from_pretrained_in_process_reproduces_images_and_concepts(tmp_path):
    pipe, target = saved_pipeline(tmp_path)
    for kwargs in ({"custom_pipeline": PIPELINE_FILE}, {}):  # {}: the class named in model_index.json, from the folder
        loaded = DiffusionPipeline.from_pretrained(str(target), trust_remote_code=True, **kwargs)
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded).__name__ == "InterpretableDDPMPipeline"
        assert list(loaded.concepts) == ["mouth", "eyes", "nose"]
        assert loaded.region_names == ["mouth", "eyes", "nose", "rest"]
        assert loaded.concepts == {"mouth": [7], "eyes": [4, 5], "nose": [6]}
        for name, m in TEMPLATES.items():
            assert torch.equal(loaded.template_mask(name), m)
        x_t = noise(2, 0)
        torch.testing.assert_close(
            loaded(latents=x_t, num_inference_steps=STEPS, output_type="pt").images,
            pipe(latents=x_t, num_inference_steps=STEPS, output_type="pt").images,
            rtol=0,
            atol=0,
        )


@pytest.mark.slow
def test_from_pretrained_offline_in_a_fresh_process_reproduces_images(tmp_path):
    pipe, target = saved_pipeline(tmp_path)
    expected = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(11), num_inference_steps=STEPS, output_type="np"
    ).images
    result_file = tmp_path / "images.npy"
    script = f"""
import sys, numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(target)!r}, custom_pipeline={PIPELINE_FILE!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
assert type(pipe).__name__ == "InterpretableDDPMPipeline", type(pipe)
assert list(pipe.concepts) == ["mouth", "eyes", "nose"], pipe.concepts
out = pipe(batch_size=2, generator=torch.Generator().manual_seed(11), num_inference_steps={STEPS}, output_type="np")
np.save({str(result_file)!r}, out.images)
"""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(result_file), expected, rtol=0, atol=5e-5)  # other thread count: float noise


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError naming the problem
# ----------------------------------------------------------------------------------------------------------------------
def test_non_ddim_scheduler_is_refused():
    with pytest.raises(ValueError, match="needs a DDIMScheduler.*got DDPMScheduler"):
        pid.InterpretableDDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler())


@pytest.mark.parametrize("eta", [1.5, -0.1, True, "1"])
def test_eta_outside_zero_one_is_refused(pipe, eta):
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        pipe(batch_size=1, eta=eta, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        pid.InterpretableDDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler, eta=eta)


@pytest.mark.parametrize("steps", [0, 2.5, True, "100", 1001])
def test_a_bad_default_step_count_is_refused_when_the_pipeline_is_built(pipe, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        pid.InterpretableDDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler, num_inference_steps=steps)


def test_the_folder_sets_the_sampler_every_call_uses_unless_the_call_says_otherwise(tmp_path):
    """The pipeline's `eta` and `num_inference_steps` are saved with it and are what a call without them runs: the
    same images as passing them, other images than the constructor's defaults (DDIM, 50 steps)."""
    plain = make_pipe(tiny_unet())
    assert (plain.config.eta, plain.config.num_inference_steps) == (0.0, 50)
    plain.register_to_config(eta=1.0, num_inference_steps=7)
    plain.save_pretrained(str(tmp_path / "p"))
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert (index["eta"], index["num_inference_steps"]) == (1.0, 7)
    pipe = pid.InterpretableDDPMPipeline(
        unet=PerPixelDenoiser(), scheduler=DDIMScheduler(clip_sample=False), eta=1.0, num_inference_steps=7
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.sampler == {"eta": 1.0, "num_inference_steps": 7} and plain.sampler == pipe.sampler
    x_t = noise(2, 3)
    default = pipe(latents=x_t, output_type="pt").images
    assert torch.equal(default, pipe(latents=x_t, num_inference_steps=7, eta=1.0, output_type="pt").images)
    for other in ({"num_inference_steps": 50}, {"eta": 0.0}):
        assert (pipe(latents=x_t, output_type="pt", **other).images - default).abs().amax() > 1e-3, other
    mask = torch.zeros(16, 16)
    mask[4:9, 3:12] = 1
    swap = pipe.swap_regions(x_t[:1], x_t[1:], mask, output_type="pt")
    assert torch.equal(swap.images_a, pipe.swap_regions(x_t[:1], x_t[1:], mask, 7, output_type="pt", eta=1).images_a)
    inverted = pipe.invert(default)
    assert inverted.num_inference_steps == 7


def test_step_noise_is_standard_gaussian_fresh_per_step_and_drawn_from_each_pixels_own_x_t():
    x_t = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.stack([pid.step_noise(x_t, s) for s in range(20)])  # (S, B, C, H, W)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    flat = noise.flatten(1)
    assert torch.corrcoef(flat).fill_diagonal_(0).abs().max() < 0.02  # steps uncorrelated
    assert abs(torch.corrcoef(torch.stack([flat[0], x_t.flatten()]))[0, 1]) < 0.02  # and uncorrelated with x_T
    assert torch.equal(pid.step_noise(x_t.clone(), 3), pid.step_noise(x_t, 3))  # a function of x_T
    changed = x_t.clone()
    changed[:, :, :10, :12] = torch.randn(8, 3, 10, 12, generator=torch.Generator().manual_seed(1))
    differs = (pid.step_noise(changed, 3) != pid.step_noise(x_t, 3)).any(1)
    assert differs[:, :10, :12].all() and not differs[:, 10:].any() and not differs[:, :, 12:].any()


def test_stochastic_sampling_is_a_function_of_x_t_and_keeps_edits_where_the_noise_moved():
    """eta = 1 with a per-pixel model: the same x_T draws the same image, and a swap or a resample changes exactly
    the masked pixels (the step noise moves and is redrawn with x_T)."""
    pipe = pid.InterpretableDDPMPipeline(
        unet=PerPixelDenoiser(), scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False), eta=1.0
    )
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    faces = pipe(batch_size=2, generator=gen, num_inference_steps=4, output_type="pt")
    again = pipe(latents=faces.latents, num_inference_steps=4, output_type="pt").images
    assert torch.equal(again, faces.images)
    ddim = pipe(latents=faces.latents, num_inference_steps=4, output_type="pt", eta=0.0).images
    assert (ddim - faces.images).abs().amax() > 1e-2
    mask = torch.zeros(16, 16)
    mask[4:9, 3:12] = 1
    inside = mask.bool().expand(3, -1, -1)
    swap = pipe.swap_regions(faces.latents[:1], faces.latents[1:], mask, num_inference_steps=4, output_type="pt")
    for edited, original, donor in (
        (swap.images_a, faces.images[:1], faces.images[1:]),
        (swap.images_b, faces.images[1:], faces.images[:1]),
    ):
        assert torch.allclose(edited[0][~inside], original[0][~inside], atol=1e-6)
        assert torch.allclose(
            edited[0][inside], donor[0][inside], atol=1e-6
        )  # the donor's pixels, step noise included
    redrawn = pipe.resample_region(faces.latents, mask, generator=gen, num_inference_steps=4, output_type="pt")
    assert torch.allclose(redrawn.images[:, ~inside], faces.images[:, ~inside], atol=1e-6)
    assert (redrawn.images[:, inside] - faces.images[:, inside]).abs().amax() > 1e-2


@pytest.mark.parametrize(
    "bad_latents, message",
    [
        (torch.randn(1, 3, 8, 8), r"latents must have shape \(B, 3, 16, 16\) for this model; got \(1, 3, 8, 8\)"),
        (torch.randn(1, 4, 16, 16), r"latents must have shape \(B, 3, 16, 16\).*got \(1, 4, 16, 16\)"),
        (torch.full((1, 3, 16, 16), float("nan")), "latents contains NaN"),
        (np.zeros((1, 3, 16, 16), dtype=np.float32), "latents must be a torch.Tensor"),
    ],
)
def test_latents_of_the_wrong_size_are_refused(pipe, bad_latents, message):
    with pytest.raises(ValueError, match=message):
        pipe(latents=bad_latents, num_inference_steps=2)
    with pytest.raises(ValueError, match=message):
        pipe.resample_region(bad_latents, torch.ones(SIZE, SIZE), num_inference_steps=2)
    with pytest.raises(ValueError, match=message):
        pipe.attribute(bad_latents, random_partition(1, 2, 0), num_inference_steps=2)


def test_swap_latents_must_match(pipe):
    with pytest.raises(ValueError, match="latents_b must have shape"):
        pipe.swap_regions(noise(1, 0), torch.randn(1, 3, 8, 8), torch.ones(SIZE, SIZE), num_inference_steps=2)
    with pytest.raises(
        ValueError, match=r"latents_a \(1, 3, 16, 16\) and latents_b \(2, 3, 16, 16\) must have the same"
    ):
        pipe.swap_regions(noise(1, 0), noise(2, 1), torch.ones(SIZE, SIZE), num_inference_steps=2)


@pytest.mark.parametrize(
    "bad_mask, message",
    [
        (
            torch.ones(2, 2, SIZE, SIZE),
            r"mask must have shape \(H, W\), \(1, H, W\) or \(B, 1, H, W\); got \(2, 2, 16, 16\)",
        ),
        (torch.ones(5), r"mask must have shape.*got \(5,\)"),
        (torch.ones(3, 1, SIZE, SIZE), "mask batch size 3 does not match the latents' batch size 2"),
        (torch.ones(SIZE, 8), "different aspect ratio from the model resolution 16x16"),
        ([[1, 0], [0, 1]], "mask must be a concept name, a tensor, a numpy array or a PIL image, got list"),
    ],
)
def test_wrong_mask_shapes_are_refused(pipe, bad_mask, message):
    with pytest.raises(ValueError, match=message):
        pipe.resample_region(noise(2, 0), bad_mask, num_inference_steps=2)


def test_empty_mask_is_refused(pipe):
    with pytest.raises(ValueError, match="mask is empty.*allow_empty_mask=True"):
        pipe.resample_region(noise(1, 0), torch.zeros(SIZE, SIZE), num_inference_steps=2)
    with pytest.raises(ValueError, match="mask is empty"):
        pipe.swap_regions(noise(1, 0), noise(1, 1), np.zeros((SIZE, SIZE)), num_inference_steps=2)
    # A mask that vanishes when resized is empty too.
    tiny_dot = np.zeros((64, 64), dtype=bool)
    tiny_dot[10, 10] = True
    with pytest.raises(ValueError, match="mask is empty"):
        pipe.resample_region(noise(1, 0), tiny_dot, num_inference_steps=2)


def test_unknown_concept_is_refused():
    pipe = templated_pipeline()
    with pytest.raises(ValueError, match="Unknown concept 'hair'; this pipeline knows eyes, nose, mouth"):
        pipe.resample_region(noise(1, 0), "hair", num_inference_steps=2)
    with pytest.raises(ValueError, match="Unknown concept 'hair'"):
        pipe.attribute(noise(1, 0), ["eyes", "hair"], num_inference_steps=2)
    with pytest.raises(ValueError, match="Unknown concept 'hair'"):
        pipe.swap_regions(noise(1, 0), noise(1, 1), "hair", num_inference_steps=2, mask_from="union")


def test_concept_without_template_or_parser_is_refused(pipe):
    with pytest.raises(ValueError, match="no parser and no template mask for 'eyes'"):
        pipe.resample_region(noise(1, 0), "eyes", num_inference_steps=2)


@pytest.mark.parametrize(
    "concepts, message",
    [
        ("eyes=4,5 rest=1", "'rest' is implied"),
        ("eyes=4,5 nose=4", "Label id 4 is used by both 'eyes' and 'nose'"),
        ("eyes=9", "unknown label id 9"),
        ("eyes", "must look like name=id"),
    ],
)
def test_bad_concept_definitions_are_refused(concepts, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(concepts=concepts)


def test_bad_attribution_arguments_are_refused(pipe):
    regions = random_partition(1, 2, 0)
    with pytest.raises(ValueError, match=r"timesteps \[5\] are not in the 2-step DDIM schedule"):
        pipe.attribute(noise(1, 0), regions, timesteps=[5], num_inference_steps=2)
    with pytest.raises(ValueError, match="baseline must be 'other_sample', 'zero' or a latents tensor"):
        pipe.attribute(noise(1, 0), regions, num_inference_steps=2, baseline="mean")
    with pytest.raises(ValueError, match=r"masks must have shape \(B, K, H, W\) or \(K, H, W\)"):
        pipe.attribute(noise(1, 0), torch.ones(2, 8, 8), num_inference_steps=2)
    empty_region = torch.stack([torch.ones(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    with pytest.raises(ValueError, match="Region 'region_1' is empty for image 0: its mask has no pixel"):
        pipe.attribute(noise(1, 0), empty_region, num_inference_steps=2)


def test_bad_generation_arguments_are_refused(pipe):
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        pipe(num_inference_steps=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pipe(batch_size=0, num_inference_steps=2)
    with pytest.raises(ValueError, match="2 generators for a batch of 3 images"):
        pipe(batch_size=3, generator=[torch.Generator(), torch.Generator()], num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type must be 'pil', 'np' or 'pt'"):
        pipe(num_inference_steps=2, output_type="latent")
    with pytest.raises(ValueError, match=r"Image tensors must be in \[0, 1\]"):
        pipe.invert(torch.full((1, 3, SIZE, SIZE), 2.0), num_inference_steps=2)


def test_the_ddim_loops_keep_no_autograd_graph(pipe):
    """`denoise` and `denoise_blended` are public: called outside `torch.no_grad()` they must not keep every step's
    activations for a backward pass (25 faces x 25 steps filled 23 GB that way)."""
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert any(p.requires_grad for p in pipe.unet.parameters())
    assert not pipe.denoise(x_t, 2, show_progress=False).requires_grad
    assert not pipe.denoise_blended(x_t, x_t.flip(0), torch.ones(2, 1, 16, 16), 2).requires_grad

"""The peer edit (`blend=True`: RePaint / blended-diffusion style masked DDIM) and the end-to-end attribution
(`attribute_end_to_end`, `emergence_curve`), against brute force on tiny models.

Brute force here means DDIM loops written with the diffusers scheduler, independent of the pipeline's own loops.
"""

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

import pipeline_interpretable_ddpm as pid
from conftest import tiny_pipeline
from denoisers import GaussianDenoiser

STEPS = 6
SIZE = 16
ATOL = 1e-5


def make_pipe(unet=None, **kw) -> pid.InterpretableDDPMPipeline:
    pipe = pid.InterpretableDDPMPipeline(unet=unet or GaussianDenoiser(mixing=0.1), scheduler=DDIMScheduler(clip_sample=False), **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def box(top: int, left: int, height: int, width: int) -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE)
    m[top : top + height, left : left + width] = 1
    return m


TEMPLATES = {"eyes": box(4, 3, 2, 10), "nose": box(6, 7, 4, 2), "mouth": box(11, 5, 2, 6)}


def templated_pipeline(**kw) -> pid.InterpretableDDPMPipeline:
    codes = {name: pid.encode_binary_mask(m.bool().numpy()) for name, m in TEMPLATES.items()}
    return tiny_pipeline(concept_templates=codes, **kw)


def blended_loop(unet, edited, original, m, steps, t0=None, clip_sample=False):
    """Brute force: the blended DDIM loop written out, one trajectory at a time."""
    scheduler = DDIMScheduler(clip_sample=clip_sample)
    scheduler.set_timesteps(steps)
    x_e, x_o = m * edited + (1 - m) * original, original
    with torch.no_grad():
        for t in scheduler.timesteps:
            if t0 is not None and int(t) > t0:
                continue
            x_e = scheduler.step(unet(x_e, t).sample, t, x_e, eta=0.0).prev_sample
            x_o = scheduler.step(unet(x_o, t).sample, t, x_o, eta=0.0).prev_sample
            x_e = m * x_e + (1 - m) * x_o
    return (x_e / 2 + 0.5).clamp(0, 1), (x_o / 2 + 0.5).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------------
# blend=True
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: tiny_pipeline(), lambda: make_pipe()], ids=["unet", "gaussian"])
def test_blended_swap_equals_hand_written_loop_and_keeps_the_outside(make):
    pipe = make()
    a, b = noise(2, 0), noise(2, 1)
    m = box(3, 2, 5, 8)
    out = pipe.swap_regions(a, b, m, num_inference_steps=STEPS, output_type="pt", blend=True, harmonize_noise=False)
    ref_a, orig_a = blended_loop(pipe.unet, m * b + (1 - m) * a, a, m, STEPS)
    ref_b, orig_b = blended_loop(pipe.unet, m * a + (1 - m) * b, b, m, STEPS)
    torch.testing.assert_close(out.images_a, ref_a, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.images_b, ref_b, atol=ATOL, rtol=0)
    # outside the mask: the unedited images (as __call__ makes them)
    plain_a = pipe(latents=a, num_inference_steps=STEPS, output_type="pt").images
    plain_b = pipe(latents=b, num_inference_steps=STEPS, output_type="pt").images
    torch.testing.assert_close(out.images_a * (1 - m), plain_a * (1 - m), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.images_b * (1 - m), plain_b * (1 - m), atol=ATOL, rtol=0)
    # ... and inside it something moved
    assert ((out.images_a - plain_a).abs() * m).amax() > 1e-3
    # the latents reported are the swapped x_T, as for the plain edit
    plain = pipe.swap_regions(a, b, m, num_inference_steps=STEPS, output_type="pt", harmonize_noise=False)
    torch.testing.assert_close(out.latents_a, plain.latents_a)


def test_blend_with_a_full_mask_is_the_plain_edit():
    pipe = tiny_pipeline()
    a, b = noise(2, 3), noise(2, 4)
    full = torch.ones(SIZE, SIZE)
    blended = pipe.swap_regions(a, b, full, num_inference_steps=STEPS, output_type="pt", blend=True)
    plain = pipe.swap_regions(a, b, full, num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(blended.images_a, plain.images_a, atol=ATOL, rtol=0)
    torch.testing.assert_close(blended.images_b, plain.images_b, atol=ATOL, rtol=0)
    new = noise(2, 5)
    blended = pipe.resample_region(a, full, new_latents=new, num_inference_steps=STEPS, output_type="pt", blend=True)
    plain = pipe.resample_region(a, full, new_latents=new, num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(blended.images, plain.images, atol=ATOL, rtol=0)


@pytest.mark.parametrize("harmonize", [False, True])
def test_blended_resample_with_harmonised_noise(harmonize):
    pipe = templated_pipeline()
    a, new = noise(2, 6), noise(2, 7)
    out = pipe.resample_region(a, "nose", new_latents=new, num_inference_steps=STEPS, output_type="pt", blend=True,
                               harmonize_noise=harmonize)
    m = out.mask
    plain = pipe.resample_region(a, "nose", new_latents=new, num_inference_steps=STEPS, output_type="pt",
                                 harmonize_noise=harmonize)
    torch.testing.assert_close(out.latents, plain.latents)  # the same edited x_T (harmonised or not) ...
    ref, orig = blended_loop(pipe.unet, out.latents, a, m, STEPS)  # ... blended with the unedited trajectory
    torch.testing.assert_close(out.images, ref, atol=ATOL, rtol=0)
    unedited = pipe(latents=a, num_inference_steps=STEPS, output_type="pt").images
    torch.testing.assert_close(out.images * (1 - m), unedited * (1 - m), atol=ATOL, rtol=0)
    if harmonize:
        assert not torch.equal(out.latents * m, new * m)


def test_blended_edits_of_an_inversion_continue_from_t0():
    pipe = make_pipe()
    photos = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8)) * 0.8 + 0.1
    inv = pipe.invert(photos, num_inference_steps=STEPS, strength=0.5)
    inv_a = dataclasses.replace(inv, latents=inv.latents[:1], images=inv.images[:1])
    inv_b = dataclasses.replace(inv, latents=inv.latents[1:], images=inv.images[1:])
    m = box(3, 2, 5, 8)
    out = pipe.swap_regions(inv_a, inv_b, m, num_inference_steps=STEPS, output_type="pt", blend=True)
    xa, xb = inv.latents[:1], inv.latents[1:]
    ref_a, orig_a = blended_loop(pipe.unet, m * xb + (1 - m) * xa, xa, m, STEPS, t0=inv.timestep)
    torch.testing.assert_close(out.images_a, ref_a, atol=ATOL, rtol=0)
    unedited = pipe(latents=inv_a, num_inference_steps=STEPS, output_type="pt").images
    torch.testing.assert_close(out.images_a * (1 - m), unedited * (1 - m), atol=ATOL, rtol=0)
    res = pipe.resample_region(inv_a, m, new_latents=noise(1, 9), num_inference_steps=STEPS, output_type="pt", blend=True)
    ref, _ = blended_loop(pipe.unet, res.latents, xa, m, STEPS, t0=inv.timestep)
    torch.testing.assert_close(res.images, ref, atol=ATOL, rtol=0)


def test_bad_blend_is_refused():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="blend"):
        pipe.swap_regions(noise(1, 0), noise(1, 1), box(2, 2, 4, 4), num_inference_steps=2, blend="yes")

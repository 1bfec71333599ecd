"""The peer edit (`blend=True`: RePaint / blended-diffusion style masked DDIM) and the end-to-end attribution
(`attribute_end_to_end`, `emergence_curve`), against brute force on tiny models.

Brute force here means DDIM loops written with the diffusers scheduler, independent of the pipeline's own loops.
"""

import dataclasses
import itertools
import math

import pytest
import torch
from diffusers import DDIMScheduler

import pipeline_interpretable_ddpm as pid
from conftest import tiny_pipeline
from denoisers import GaussianDenoiser, PerPixelDenoiser

STEPS = 6
SIZE = 16
ATOL = 1e-5


def make_pipe(unet=None, **kw) -> pid.InterpretableDDPMPipeline:
    pipe = pid.InterpretableDDPMPipeline(
        unet=unet or GaussianDenoiser(mixing=0.1), scheduler=DDIMScheduler(clip_sample=False), **kw
    )
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
    out = pipe.resample_region(
        a, "nose", new_latents=new, num_inference_steps=STEPS, output_type="pt", blend=True, harmonize_noise=harmonize
    )
    m = out.mask
    plain = pipe.resample_region(
        a, "nose", new_latents=new, num_inference_steps=STEPS, output_type="pt", harmonize_noise=harmonize
    )
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
    res = pipe.resample_region(
        inv_a, m, new_latents=noise(1, 9), num_inference_steps=STEPS, output_type="pt", blend=True
    )
    ref, _ = blended_loop(pipe.unet, res.latents, xa, m, STEPS, t0=inv.timestep)
    torch.testing.assert_close(res.images, ref, atol=ATOL, rtol=0)


def test_bad_blend_is_refused():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="blend"):
        pipe.swap_regions(noise(1, 0), noise(1, 1), box(2, 2, 4, 4), num_inference_steps=2, blend="yes")


# ----------------------------------------------------------------------------------------------------------------------
# End-to-end attribution
# ----------------------------------------------------------------------------------------------------------------------
def final_image(unet, x, steps, eta=0.0):
    """The image sampled from x_T = `x` (with eta > 0 each step's noise is the pipeline's `step_noise` of x_T)."""
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(steps)
    x_T = x
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            noise = pid.step_noise(x_T, i) if eta > 0 else None
            x = scheduler.step(unet(x, t).sample, t, x, eta=eta, variance_noise=noise).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def three_regions(batch: int) -> torch.Tensor:
    r = torch.zeros(batch, 3, SIZE, SIZE)
    r[:, 0] = box(2, 2, 5, 6)
    r[:, 1] = box(9, 4, 4, 8)
    r[:, 2] = 1 - r[:, 0] - r[:, 1]
    return r


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_end_to_end_attribution_equals_brute_force_shapley(eta):
    pipe = tiny_pipeline()
    x, base = noise(2, 10), noise(2, 11)
    regions = three_regions(2)
    out = pipe.attribute_end_to_end(
        x, masks=regions, baseline=base, num_inference_steps=STEPS, max_batch_size=5, eta=eta
    )
    k = 3
    # v_k(S): region-mean of output region k of the image from x on S, base elsewhere
    value = {}
    for s in itertools.product([0, 1], repeat=k):
        keep = sum(s[j] * regions[:, j] for j in range(k))[:, None]
        img = final_image(pipe.unet, keep * x + (1 - keep) * base, STEPS, eta).double()
        value[s] = torch.stack(
            [(img * regions[:, j, None]).sum((1, 2, 3)) / (3 * regions[:, j].sum((1, 2))) for j in range(k)], 1
        )
    phi = torch.zeros(2, k, k, dtype=torch.float64)
    for j in range(k):
        for s in itertools.product([0, 1], repeat=k):
            if s[j]:
                continue
            size = sum(s)
            w = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            with_j = tuple(1 if i == j else s[i] for i in range(k))
            phi[:, :, j] += w * (value[with_j] - value[s])
    torch.testing.assert_close(out.phi.double(), phi, atol=1e-5, rtol=0)
    # efficiency: each row sums to v(N) - v(empty)
    torch.testing.assert_close(out.phi.sum(-1).double(), value[(1, 1, 1)] - value[(0, 0, 0)], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.images.double(), final_image(pipe.unet, x, STEPS, eta).double(), atol=1e-5, rtol=0)
    # the full coalition is the image the pipeline draws from x_T with that sampler
    drawn = pipe(latents=x, num_inference_steps=STEPS, eta=eta, output_type="pt").images
    torch.testing.assert_close(out.images, drawn, atol=1e-5, rtol=0)
    assert out.leakage.shape == (2,) and (out.leakage > 0).all() and (out.leakage < 1).all()
    assert out.region_names == ["region_0", "region_1", "region_2"]


def test_end_to_end_attribution_two_regions_by_hand():
    pipe = make_pipe()
    x, base = noise(1, 12), noise(1, 13)
    r = torch.zeros(1, 2, SIZE, SIZE)
    r[:, 0] = box(0, 0, 8, SIZE)
    r[:, 1] = 1 - r[:, 0]
    out = pipe.attribute_end_to_end(x, masks=r, baseline=base, num_inference_steps=STEPS)
    img = {}
    for s0, s1 in itertools.product([0, 1], repeat=2):
        keep = (s0 * r[:, 0] + s1 * r[:, 1])[:, None]
        img[s0, s1] = final_image(pipe.unet, keep * x + (1 - keep) * base, STEPS).double()
    top = lambda im: im[..., :8, :].mean()  # noqa: E731
    # phi_top(player 0) = 1/2 [v(0) - v(empty)] + 1/2 [v(N) - v(1)]
    expected = 0.5 * (top(img[1, 0]) - top(img[0, 0])) + 0.5 * (top(img[1, 1]) - top(img[0, 1]))
    assert abs(float(out.phi[0, 0, 0]) - float(expected)) < 1e-5


def test_per_pixel_model_has_zero_end_to_end_leakage():
    pipe = make_pipe(PerPixelDenoiser())
    out = pipe.attribute_end_to_end(
        noise(2, 14),
        masks=three_regions(2),
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=STEPS,
        harmonize_noise=False,
    )
    assert float(out.leakage.abs().max()) < 1e-6
    assert (torch.diagonal(out.abs_phi, dim1=-2, dim2=-1) > 0).all()


def test_end_to_end_attribution_refuses_an_inversion_and_too_many_coalitions():
    pipe = make_pipe()
    inv = pipe.invert(torch.rand(1, 3, SIZE, SIZE), num_inference_steps=STEPS, strength=0.5)
    with pytest.raises(ValueError, match="x_T"):
        pipe.attribute_end_to_end(inv, masks=three_regions(1), num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="max_coalitions"):
        pipe.attribute_end_to_end(noise(1, 0), masks=three_regions(1), num_inference_steps=STEPS, max_coalitions=4)


# ----------------------------------------------------------------------------------------------------------------------
# Emergence curve
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,eta", [("trajectory", 0.0), ("noise", 0.0), ("trajectory", 1.0), ("noise", 1.0)])
def test_emergence_curve_equals_brute_force(mode, eta):
    pipe = make_pipe()
    a, b = noise(2, 15), noise(2, 16)
    m = box(3, 2, 6, 8)
    out = pipe.emergence_curve(
        a, b, m, num_inference_steps=STEPS, step_indices=[2, 4], mode=mode, max_batch_size=1, eta=eta
    )
    assert out.step_indices.tolist() == [0, 2, 4]
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(STEPS)
    ts = scheduler.timesteps.tolist()
    # with eta > 0 a trajectory's step noise comes from its x_T; after the swap, M's from B's
    swapped = m * b + (1 - m) * a

    def step(out, t, x, i, x_T):
        noise = pid.step_noise(x_T, i) if eta > 0 else None
        return scheduler.step(out, t, x, eta=eta, variance_noise=noise).prev_sample

    xa, xb, traj = a, b, []
    with torch.no_grad():
        for i, t in enumerate(ts):
            traj.append((xa, xb, pipe.unet(xa, t).sample, pipe.unet(xb, t).sample))
            xa = step(traj[-1][2], t, xa, i, a)
            xb = step(traj[-1][3], t, xb, i, b)
    image_a = (xa / 2 + 0.5).clamp(0, 1).double()

    def continue_from(x, i):
        with torch.no_grad():
            for j, t in enumerate(ts[i:], start=i):
                x = step(pipe.unet(x, t).sample, t, x, j, swapped)
        return (x / 2 + 0.5).clamp(0, 1).double()

    d = []
    for i in out.step_indices.tolist():
        ya, yb, ea, eb = traj[i]
        if mode == "noise" and i > 0:
            al = float(scheduler.alphas_cumprod[ts[i]])
            inside = math.sqrt(al) * (ya - math.sqrt(1 - al) * ea) / math.sqrt(al) + math.sqrt(1 - al) * eb
        else:
            inside = yb
        d.append(continue_from(m * inside + (1 - m) * ya, i) - image_a)
    full = pipe.swap_regions(
        a, b, m, num_inference_steps=STEPS, output_type="pt", harmonize_noise=False, eta=eta
    ).images_a
    torch.testing.assert_close(d[0] + image_a, full.double(), atol=1e-5, rtol=0)
    expected = torch.stack([(di * d[0] * m).sum((1, 2, 3)) / (d[0] * d[0] * m).sum((1, 2, 3)) for di in d])
    torch.testing.assert_close(out.fraction.double(), expected, atol=1e-4, rtol=0)
    assert torch.allclose(out.fraction[0], torch.ones(2))
    below = [[float(f) < 0.5 for f in col] for col in expected.T]
    for j in range(2):
        first = next((s for s, bl in zip(out.step_indices.tolist(), below[j]) if bl), STEPS)
        assert float(out.emergence_step[j]) == first


def test_emergence_with_a_per_pixel_model_in_noise_mode_moves_less_late():
    pipe = make_pipe()
    out = pipe.emergence_curve(noise(1, 17), noise(1, 18), box(3, 2, 6, 8), num_inference_steps=STEPS, mode="noise")
    assert out.fraction.shape == (STEPS, 1)
    assert float(out.fraction[-1, 0]) < float(out.fraction[0, 0])

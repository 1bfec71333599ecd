"""Real photos: partial DDIM inversion (`invert(strength=...)`) and edits that continue an `InversionOutput`.

Tiny models against brute force (independent DDIM loops written here with the diffusers scheduler), plus the example
of `docs/real_photos.md` run as written on the shipped model and checked to be local.
"""

import dataclasses
import itertools
import math
import os
import re

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler

import pipeline_interpretable_ddpm as pid
from conftest import ROOT
from denoisers import GaussianDenoiser

STEPS = 10
SIZE = 16


def make_pipe(unet=None, **kw) -> pid.InterpretableDDPMPipeline:
    pipe = pid.InterpretableDDPMPipeline(
        unet=unet or GaussianDenoiser(mixing=0.1), scheduler=DDIMScheduler(clip_sample=False), **kw
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photos(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def box(top: int, left: int, height: int, width: int) -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE)
    m[top : top + height, left : left + width] = 1
    return m


def ddim_from(unet, x: torch.Tensor, t0, steps: int, clip_sample: bool = False) -> torch.Tensor:
    """Brute force: the diffusers DDIM loop (eta = 0) run from x at timestep t0 (None = the whole schedule)."""
    scheduler = DDIMScheduler(clip_sample=clip_sample)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            if t0 is None or int(t) <= t0:
                x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def test_strength_sets_the_timestep_and_strength_one_is_the_full_inversion():
    pipe = make_pipe()
    image = photos(2, 0)
    sched = DDIMScheduler()
    sched.set_timesteps(STEPS)
    timesteps = sched.timesteps.tolist()  # 900, 800, ..., 0
    for strength, n in ((1.0, 10), (0.5, 5), (0.34, 3), (0.01, 1)):
        inv = pipe.invert(image, num_inference_steps=STEPS, strength=strength)
        assert inv.timestep == timesteps[-n] and inv.strength == strength and inv.num_inference_steps == STEPS
        torch.testing.assert_close(inv.images, image * 2 - 1)
    # strength 1.0 is today's path exactly: x_T, and continuing the InversionOutput is the unclipped x_T regeneration
    full = pipe.invert(image, num_inference_steps=STEPS, strength=1.0)
    pipe.scheduler = DDIMScheduler(clip_sample=True)
    a = pipe(latents=full, num_inference_steps=STEPS, output_type="pt").images
    b = pipe(latents=full.latents, num_inference_steps=STEPS, output_type="pt", clip_sample=False).images
    assert torch.equal(a, b)
    m = box(4, 3, 3, 10)
    one = dataclasses.replace(full, latents=full.latents[:1], images=full.images[:1])
    two = dataclasses.replace(full, latents=full.latents[1:], images=full.images[1:])
    swapped = pipe.swap_regions(one, two, m, num_inference_steps=STEPS, output_type="pt")
    plain = pipe.swap_regions(
        full.latents[:1],
        full.latents[1:],
        m,
        num_inference_steps=STEPS,
        output_type="pt",
        clip_sample=False,
        harmonize_noise=False,
    )  # an InversionOutput is never harmonised
    assert torch.equal(swapped.images_a, plain.images_a) and torch.equal(swapped.images_b, plain.images_b)


@pytest.mark.parametrize("strength", [0.3, 0.5, 1.0])
def test_continuing_an_inversion_reproduces_the_photo_and_equals_brute_force(strength):
    pipe = make_pipe()
    image = photos(2, 1)
    inv = pipe.invert(image, num_inference_steps=STEPS, strength=strength, check_reconstruction=True)
    out = pipe(latents=inv, num_inference_steps=STEPS, output_type="pt")
    psnr = -10 * torch.log10((out.images - image).pow(2).flatten(1).mean(1))
    assert (psnr > 40).all()  # 10 steps; fewer inverted steps are more exact
    torch.testing.assert_close(inv.reconstruction_psnr, psnr, atol=0.05, rtol=0)
    brute = ddim_from(pipe.unet, inv.latents, inv.timestep, STEPS)
    torch.testing.assert_close(out.images, brute, atol=1e-6, rtol=0)
    assert torch.equal(out.latents, inv.latents)


def test_swap_at_t0_equals_brute_force_and_takes_masks_from_the_photos():
    templates = {"eyes": pid.encode_binary_mask(box(4, 3, 2, 10).bool().numpy())}
    pipe = make_pipe(concepts="eyes=4,5", concept_templates=templates)
    inv = pipe.invert(photos(2, 2), num_inference_steps=STEPS, strength=0.5)
    inv_a = dataclasses.replace(inv, latents=inv.latents[:1], images=inv.images[:1])
    inv_b = dataclasses.replace(inv, latents=inv.latents[1:], images=inv.images[1:])
    m = box(3, 2, 5, 8)
    out = pipe.swap_regions(inv_a, inv_b, m, num_inference_steps=STEPS, output_type="pt")
    xa = m * inv.latents[1:] + (1 - m) * inv.latents[:1]
    xb = m * inv.latents[:1] + (1 - m) * inv.latents[1:]
    torch.testing.assert_close(out.images_a, ddim_from(pipe.unet, xa, inv.timestep, STEPS), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.images_b, ddim_from(pipe.unet, xb, inv.timestep, STEPS), atol=1e-6, rtol=0)
    assert out.warning is None
    # a mask by concept name is found on the inverted photos, not on a regeneration from the latents
    seen = []
    original = pipe._concept_masks

    def spy(image_or_latents, concepts, *args, **kw):
        seen.append((image_or_latents.clone(), kw.get("is_latents", args[2] if len(args) > 2 else None)))
        return original(image_or_latents, concepts, *args, **kw)

    pipe._concept_masks = spy
    by_name = pipe.swap_regions(inv_a, inv_b, "eyes", num_inference_steps=STEPS, output_type="pt")
    assert len(seen) == 1 and torch.equal(seen[0][0], inv.images[:1]) and seen[0][1] is False
    assert torch.equal(by_name.mask[0, 0], box(4, 3, 2, 10))
    seen.clear()
    pipe.resample_region(inv_b, "eyes", generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS)
    assert torch.equal(seen[0][0], inv.images[1:])


def test_harmonised_photo_swap_moves_the_part_in_the_receiving_faces_colouring():
    pipe = make_pipe()
    dark, pale = photos(1, 5) * 0.4, photos(1, 6) * 0.4 + 0.6  # a dark receiver, a pale donor
    inv = pipe.invert(torch.cat([dark, pale]), num_inference_steps=STEPS, strength=0.5)
    inv_a = dataclasses.replace(inv, latents=inv.latents[:1], images=inv.images[:1])
    inv_b = dataclasses.replace(inv, latents=inv.latents[1:], images=inv.images[1:])
    m = box(5, 4, 5, 8)
    plain = pipe.swap_regions(inv_a, inv_b, m, num_inference_steps=STEPS, output_type="pt")
    out = pipe.swap_regions(inv_a, inv_b, m, num_inference_steps=STEPS, output_type="pt", harmonize_photo=True)
    # x_t0 changes only inside the mask, by the difference of the two faces' ring means (per channel)
    ring = pid.harmonization_reference(m[None, None])
    shift = ((inv.latents[:1] - inv.latents[1:]) * ring).sum((-2, -1), keepdim=True) / ring.sum()
    torch.testing.assert_close(out.latents_a, plain.latents_a + shift * m, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.latents_b, plain.latents_b - shift * m, atol=1e-6, rtol=0)
    assert torch.equal(out.latents_a * (1 - m), plain.latents_a * (1 - m))
    # the pale donor's part lands darker on the dark face than the plain swap puts it: closer to the receiver
    inside = m.bool()
    assert out.images_a[0][:, inside].mean() < plain.images_a[0][:, inside].mean() - 0.1
    # a share of the shift, 0 = the plain swap; generated faces (x_T) are left alone; bad values refused
    half = pipe.swap_regions(inv_a, inv_b, m, num_inference_steps=STEPS, output_type="pt", harmonize_photo=0.5)
    torch.testing.assert_close(half.latents_a, plain.latents_a + 0.5 * shift * m, atol=1e-6, rtol=0)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    gen = pipe.swap_regions(
        x[:1], x[1:], m, num_inference_steps=2, output_type="pt", harmonize_photo=True, harmonize_noise=False
    )
    assert torch.equal(gen.latents_a, m * x[1:] + (1 - m) * x[:1])
    with pytest.raises(ValueError, match="harmonize_photo"):
        pipe.swap_regions(inv_a, inv_b, m, num_inference_steps=STEPS, harmonize_photo=1.5)


def test_resample_at_t0_draws_the_predicted_image_forward_noised_inside_the_mask():
    pipe = make_pipe()
    inv = pipe.invert(photos(1, 3), num_inference_steps=STEPS, strength=0.5)
    t0 = inv.timestep
    m = box(5, 5, 6, 6)
    z = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    out = pipe.resample_region(inv, m, new_latents=z, num_inference_steps=STEPS, output_type="pt")
    a = float(pipe.scheduler.alphas_cumprod[t0])
    with torch.no_grad():
        eps = pipe.unet(inv.latents, t0).sample
    x0_pred = ((inv.latents - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    expected = m * (math.sqrt(a) * x0_pred + math.sqrt(1 - a) * z) + (1 - m) * inv.latents
    torch.testing.assert_close(out.latents, expected, atol=1e-6, rtol=0)
    assert torch.equal(out.latents * (1 - m), inv.latents * (1 - m))
    torch.testing.assert_close(out.images, ddim_from(pipe.unet, expected, t0, STEPS), atol=1e-6, rtol=0)
    # with the noise the inversion found there, x_t0 is unchanged (the predicted x_0 of this photo is in range)
    same = pipe.resample_region(inv, m, new_latents=eps, num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(same.latents, inv.latents, atol=1e-5, rtol=0)
    # a generator draws z reproducibly
    g1 = pipe.resample_region(inv, m, generator=torch.Generator().manual_seed(9), num_inference_steps=STEPS).latents
    g2 = pipe.resample_region(inv, m, generator=torch.Generator().manual_seed(9), num_inference_steps=STEPS).latents
    assert torch.equal(g1, g2) and not torch.equal(g1, inv.latents)


def test_attribute_from_an_inversion_equals_brute_force_shapley_at_t0():
    pipe = make_pipe()
    inv = pipe.invert(photos(1, 5), num_inference_steps=STEPS, strength=0.5)
    regions = torch.stack([box(0, 0, 8, 16), box(8, 0, 8, 16)])[None]
    att = pipe.attribute(inv, regions, timesteps=[inv.timestep], num_inference_steps=STEPS, baseline="zero")
    x, k = inv.latents, 2
    with torch.no_grad():
        eps = {
            s: pipe.unet(sum((regions[:, j : j + 1] for j in s), torch.zeros_like(x[:, :1])) * x, inv.timestep).sample
            for n in range(k + 1)
            for s in itertools.combinations(range(k), n)
        }
    for out_k in range(k):
        inside = regions[0, out_k] > 0.5
        for j in range(k):
            other = 1 - j  # K = 2: phi_j = (v({j}) - v({})) / 2 + (v(N) - v({other})) / 2
            phi = 0.5 * (eps[(j,)] - eps[()]) + 0.5 * (eps[(0, 1)] - eps[(other,)])
            assert abs(att.phi[0, 0, out_k, j].item() - phi[0][:, inside].mean().item()) < 1e-5
    assert att.timesteps.tolist() == [inv.timestep]
    full = pipe.attribute(inv, regions, num_inference_steps=STEPS, baseline="zero")
    assert full.timesteps.max().item() == inv.timestep and len(full.timesteps) == 5
    with pytest.raises(ValueError, match=f"start at timestep {inv.timestep}; timesteps above it cannot be attributed"):
        pipe.attribute(inv, regions, timesteps=[900], num_inference_steps=STEPS)
    other = pipe.attribute(inv, regions, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(other.phi).all()


def test_warning_where_edits_are_not_local():
    pipe = make_pipe()
    image = photos(2, 6)
    assert pipe.invert(image, num_inference_steps=STEPS).warning is None
    assert pipe.invert(image, num_inference_steps=STEPS).strength == pid.DEFAULT_INVERSION_STRENGTH
    high = pipe.invert(image, num_inference_steps=STEPS, strength=1.0)
    assert "not local" in high.warning
    a = dataclasses.replace(high, latents=high.latents[:1], images=high.images[:1])
    b = dataclasses.replace(high, latents=high.latents[1:], images=high.images[1:])
    assert pipe.swap_regions(a, b, box(0, 0, 4, 4), num_inference_steps=STEPS).warning == high.warning
    assert pipe.resample_region(a, box(0, 0, 4, 4), num_inference_steps=STEPS).warning == high.warning
    assert (
        pipe.swap_regions(high.latents[:1], high.latents[1:], box(0, 0, 4, 4), num_inference_steps=STEPS).warning
        is None
    )


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, True, "0.5", float("nan")])
def test_bad_strength_is_refused(strength):
    with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
        make_pipe().invert(photos(1, 0), num_inference_steps=2, strength=strength)


def test_inversions_that_do_not_fit_are_refused():
    pipe = make_pipe()
    image = photos(1, 0)
    half = pipe.invert(image, num_inference_steps=STEPS, strength=0.5)
    low = pipe.invert(image, num_inference_steps=STEPS, strength=0.3)
    m = box(0, 0, 4, 4)
    with pytest.raises(ValueError, match=r"different DDIM timesteps \(400 and 200\).*same strength"):
        pipe.swap_regions(half, low, m, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"different DDIM timesteps \(400 and x_T\)"):
        pipe.swap_regions(half, torch.randn(1, 3, SIZE, SIZE), m, num_inference_steps=STEPS)
    # an inversion from a pipeline of another resolution
    big = make_pipe(GaussianDenoiser(sample_size=32, mixing=0.1)).invert(
        torch.rand(1, 3, 32, 32), num_inference_steps=2
    )
    for call in (
        lambda: pipe(latents=big, num_inference_steps=2),
        lambda: pipe.resample_region(big, m, num_inference_steps=2),
        lambda: pipe.swap_regions(big, big, m, num_inference_steps=2),
        lambda: pipe.attribute(big, torch.stack([m, 1 - m])[None], num_inference_steps=2),
    ):
        with pytest.raises(ValueError, match=r"InversionOutput at \(32, 32\), but this pipeline works at \(16, 16\)"):
            call()
    # continuing with another step count is refused, whether or not its schedule holds the inversion's timestep
    # (an inversion is exact only for the schedule it was made with)
    for steps in (3, 20):
        with pytest.raises(
            ValueError, match=rf"inverted with num_inference_steps=10, but this call runs {steps} steps"
        ):
            pipe(latents=half, num_inference_steps=steps)
    assert pipe(latents=half, num_inference_steps=STEPS, output_type="pt").images.shape == (1, 3, SIZE, SIZE)


# ----------------------------------------------------------------------------------------------------------------------
# The documented example, as written, on the shipped model
# ----------------------------------------------------------------------------------------------------------------------
DOC = os.path.join(ROOT, "docs", "real_photos.md")
SHIPPED = os.path.join(ROOT, "models", "interpretable-ddpm-faces64")


@pytest.mark.slow  # runs the documented example: loads the shipped 64x64 model and its parser
@pytest.mark.needs_face_data
def test_documented_real_photo_example_runs_and_the_edit_is_local(monkeypatch):
    code = re.search(r"```python\n(.*?)```", open(DOC).read(), re.S).group(1)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(PIL.Image.Image, "save", lambda self, *a, **k: None)  # the example saves its results
    scope = {}
    exec(compile(code, DOC, "exec"), scope)
    pipe, out, inv_a = scope["pipe"], scope["out"], scope["inv_a"]
    assert out.warning is None and inv_a.warning is None and inv_a.timestep < 1000 * 0.6
    # locality against the unedited continuation, with the photo's own part map (the dataset's label map)
    faces = scope["faces"]
    recon = pipe(latents=inv_a, output_type="pt").images
    edited = torch.from_numpy(np.array(out.images_a[0])).permute(2, 0, 1)[None].float() / 255
    eyes = torch.from_numpy(np.isin(faces.labels[scope["a"]], [4, 5])).float()[None, None]
    locality = pid.edit_locality(recon.cpu(), edited, eyes).item()
    inside = ((recon.cpu() - edited) ** 2).sum(1)[0][eyes[0, 0] > 0].mean().item()
    assert inside > 1e-3  # the eyes did change
    assert locality < 1.0, locality  # x_T swaps (strength 1.0) of these models score 5-20


def test_concept_mask_of_an_inversion_is_found_on_its_photo():
    templates = {"eyes": pid.encode_binary_mask(box(4, 3, 2, 10).bool().numpy())}
    pipe = make_pipe(concepts="eyes=4,5", concept_templates=templates)
    inv = pipe.invert(photos(2, 0), num_inference_steps=STEPS)
    seen = []
    pipe.parser = object()  # a parser is present: the photo is parsed
    pipe._check_parser_covers = lambda concept: None
    pipe._parse_model_space = lambda x: seen.append(x.clone()) or torch.full((x.shape[0], SIZE, SIZE), 4)
    mask = pipe.concept_mask(inv, "eyes")
    assert torch.equal(seen[0], inv.images) and mask.shape == (2, 1, SIZE, SIZE) and bool(mask.all())


# ---------------------------------------------------------------------------------------------------------------------
# Photos as people have them: one loader (prepare_data.open_photo), face finding and alignment (align_faces) and
# pasting an edited face back (AlignedFace.paste_back), on a real portrait shipped inside scikit-image's wheel.
# ---------------------------------------------------------------------------------------------------------------------
skimage_data = pytest.importorskip("skimage.data")
prepare_data = pytest.importorskip("prepare_data")


@pytest.fixture(scope="module")
def astronaut() -> PIL.Image.Image:
    """Eileen Collins' NASA portrait (512x512, public domain), as scikit-image ships it."""
    return PIL.Image.fromarray(skimage_data.astronaut())


@pytest.fixture(scope="module")
def astronaut_face(astronaut):
    faces = prepare_data.align_faces(astronaut)
    assert len(faces) == 1
    return faces[0]


def _forged_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height pixels with almost no data: a decompression bomb's signature."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_align_faces_finds_the_portrait_aligned_like_the_training_faces(astronaut, astronaut_face):
    face = astronaut_face
    assert face.image.size == (64, 64) and face.image.mode == "RGB"
    assert 35 < face.eye_distance < 55 and abs(face.rotation_deg) < 10 and face.fit_residual_px < 3
    # the alignment maps the landmarks' eye and mouth centroids onto the template, as for the training faces
    centroids = {
        label: prepare_data.polygon_centroid(face.landmarks[idx]) for label, idx in prepare_data._part_landmarks()
    }
    aligned = prepare_data.apply_affine(face.matrix, np.array([centroids[p] for p in prepare_data.ALIGN_PARTS]))
    assert np.abs(aligned - prepare_data.template_points(64)).max() < 3
    # the crop is the photo resampled by that transform (warp_face, the data preparation's own function)
    np.testing.assert_array_equal(
        np.asarray(face.image), prepare_data.warp_face(np.asarray(astronaut), face.matrix, 64)
    )
    # largest first; at most max_faces; a photo without a face gives an empty list
    assert prepare_data.align_faces(astronaut, max_faces=1)[0].eye_distance == face.eye_distance
    assert prepare_data.align_faces(PIL.Image.fromarray(skimage_data.coffee())) == []
    sky = np.linspace([90, 140, 220], [200, 220, 250], 300)[:, None, :].repeat(400, 1).astype(np.uint8)
    assert prepare_data.align_faces(PIL.Image.fromarray(sky)) == []


@pytest.mark.parametrize("angle, scale", [(20, 1.0), (10, 0.6), (17, 0.8), (12, 2.0)])
def test_the_alignment_follows_the_face_when_the_photo_turns_and_scales(astronaut, astronaut_face, angle, scale):
    """The second FaceMesh pass (`FaceFinder.refine`, on the upright aligned square) puts the same face points at the
    same aligned positions however the photo is turned or scaled: within 0.45 px here (up to 0.6 px without it)."""
    import cv2

    t = np.radians(angle)
    turn = np.eye(3)  # the astronaut photo -> the turned and scaled one (continuous coordinates)
    turn[:2, :2] = scale * np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    turn[:2, 2] = np.array([350.0, 350.0]) - turn[:2, :2] @ np.array([256.0, 256.0])
    index = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ turn @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    photo = cv2.warpAffine(
        np.asarray(astronaut), index[:2], (700, 700), flags=cv2.INTER_CUBIC, borderValue=(128, 128, 128)
    )
    face = prepare_data.align_faces(PIL.Image.fromarray(photo))[0]
    # the template's part positions, taken back into the astronaut photo by each alignment
    template = prepare_data.template_points(64, (4, 5, 6, 7))
    back = [
        prepare_data.apply_affine(np.linalg.inv(matrix)[:2], template)
        for matrix in (np.vstack([astronaut_face.matrix, [0, 0, 1]]), np.vstack([face.matrix, [0, 0, 1]]) @ turn)
    ]
    assert np.linalg.norm(back[1] - back[0], axis=1).max() * astronaut_face.scale < 0.45


def test_paste_back_changes_only_the_face(astronaut, astronaut_face):
    face = astronaut_face
    photo = np.asarray(astronaut)
    edited = PIL.Image.fromarray(255 - np.asarray(face.image))  # an edit that changes every pixel of the crop
    pasted = np.asarray(face.paste_back(edited))
    assert pasted.shape == photo.shape and pasted.dtype == np.uint8
    changed = np.abs(pasted.astype(int) - photo).max(-1) > 0
    ys, xs = np.nonzero(changed)
    left, top, right, bottom = face.box()
    assert left <= xs.min() and xs.max() < right and top <= ys.min() and ys.max() < bottom
    # the face's centre takes the edited face; far from the face the photo is untouched
    centre = prepare_data.apply_affine(np.linalg.inv(np.vstack([face.matrix, [0, 0, 1]]))[:2], np.array([[32, 32]]))[0]
    cx, cy = centre.round().astype(int)
    assert np.abs(pasted[cy, cx].astype(int) - photo[cy, cx]).max() > 50
    margin = int(0.1 * face.size_px)
    outside = np.ones(changed.shape, bool)
    outside[max(0, top - margin) : bottom + margin, max(0, left - margin) : right + margin] = False
    np.testing.assert_array_equal(pasted[outside], photo[outside])
    # pasting the unedited crop back keeps the photo close inside the face too (a resampling, not a change)
    same = np.asarray(face.paste_back(face.image)).astype(int)
    assert np.abs(same - photo)[changed].mean() < 12
    # with a reference equal to the edit nothing changed, so nothing is pasted: the photo comes back bit for bit
    np.testing.assert_array_equal(np.asarray(face.paste_back(edited, reference=edited)), photo)
    with pytest.raises(ValueError, match="64x64"):
        face.paste_back(PIL.Image.new("RGB", (32, 32)))


def _save(image: PIL.Image.Image, path, **kw) -> str:
    image.save(path, **kw)
    return str(path)


@pytest.mark.parametrize("kind", ["grayscale", "cmyk", "16-bit", "exif-rotated", "palette"])
def test_open_photo_turns_photos_into_upright_rgb_and_the_face_is_found(astronaut, astronaut_face, tmp_path, kind):
    rgb = np.asarray(astronaut)
    gray = np.asarray(astronaut.convert("L"))
    expected, note = rgb, None
    if kind == "grayscale":
        path, expected = _save(astronaut.convert("L"), tmp_path / "g.png"), np.repeat(gray[..., None], 3, -1)
    elif kind == "cmyk":
        path, note = _save(astronaut.convert("CMYK"), tmp_path / "c.jpg", quality=95), "CMYK"
    elif kind == "16-bit":  # 16-bit values (x 257): scaled to 8 bits, not clipped to white
        path = _save(PIL.Image.fromarray(gray.astype(np.uint16) * 257), tmp_path / "g16.png")
        expected, note = np.repeat(gray[..., None], 3, -1), "16-bit"
    elif kind == "exif-rotated":  # stored turned on its side; the EXIF orientation says how to show it
        exif = PIL.Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        path = _save(astronaut.transpose(PIL.Image.Transpose.ROTATE_90), tmp_path / "r.jpg", quality=95, exif=exif)
        note = "EXIF orientation"
    else:
        path = _save(astronaut.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=256), tmp_path / "p.png")
    photo = prepare_data.open_photo(path)
    assert photo.image.mode == "RGB" and photo.image.size == (512, 512)
    tolerance = 1 if kind in ("grayscale", "16-bit") else 30
    assert np.abs(np.asarray(photo.image).astype(int) - expected).mean() < (tolerance if kind != "palette" else 8)
    if note:
        assert any(note in n for n in photo.notes), photo.notes
    faces = prepare_data.align_faces(photo.image)
    assert len(faces) == 1 and abs(faces[0].rotation_deg - astronaut_face.rotation_deg) < 3
    assert np.linalg.norm(faces[0].matrix[:, 2] - astronaut_face.matrix[:, 2]) < 3


def test_transparency_is_filled_with_grey_never_the_hidden_colour(astronaut, tmp_path):
    rgba = np.concatenate([np.asarray(astronaut), np.full((512, 512, 1), 255, np.uint8)], -1)
    rgba[:, :100, :3] = (255, 0, 0)  # a colour the user hid under transparent pixels
    rgba[:, :100, 3] = 0
    rgba[:, 100:150, 3] = 128
    photo = prepare_data.open_photo(_save(PIL.Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    pixels = np.asarray(photo.image)
    assert (pixels[:, :100] == prepare_data.NEUTRAL_BACKGROUND).all()
    half = np.asarray(astronaut)[:, 100:150].astype(float) / 2 + 64
    assert np.abs(pixels[:, 100:150] - half).max() <= 1
    np.testing.assert_array_equal(pixels[:, 150:], np.asarray(astronaut)[:, 150:])
    assert any("transparent" in n for n in photo.notes)
    assert len(prepare_data.align_faces(photo.image)) == 1


@pytest.mark.parametrize(
    "kind, message",
    [
        ("transparent", "fully transparent"),
        ("bomb", "megapixels"),
        ("text", "unreadable image"),
        ("truncated", "unreadable image"),
    ],
)
def test_bad_photos_are_refused_with_a_clear_message(tmp_path, kind, message):
    path = tmp_path / f"{kind}.png"
    if kind == "transparent":
        PIL.Image.new("RGBA", (200, 200), (200, 120, 90, 0)).save(path)
    elif kind == "bomb":
        path.write_bytes(_forged_png(40_000, 40_000))  # 1600 megapixels announced in a few bytes
    elif kind == "text":
        path.write_text("not an image")
    else:
        PIL.Image.new("RGB", (100, 100), (10, 200, 30)).save(path)
        path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(prepare_data.PhotoError, match=message):
        prepare_data.open_photo(str(path))
    if kind == "bomb":  # a lower limit (the app's) refuses from the header as well
        with pytest.raises(prepare_data.PhotoError, match="over the limit of 2 megapixels"):
            prepare_data.open_photo(_save(PIL.Image.new("RGB", (2000, 1500)), tmp_path / "big.png"), 2_000_000)

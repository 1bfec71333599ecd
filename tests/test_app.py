"""The Space (app.py) served in-process on tiny pipelines and driven through gradio_client, endpoint by endpoint.

Each check compares what the API returns with what the pipeline computes directly, so a handler that composes
the wrong thing (wrong seed, wrong mask, wrong locality) fails here.
"""

import json
import math
import os
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import app
import app_handlers
import pipeline_interpretable_ddpm as pid
from app_figures import to_display, upscale_mask
from conftest import ROOT, tiny_pipeline
from face_data import load_faces
from model_files import load_pipeline

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

STEPS = 4
EXPECTED_ENDPOINTS = {
    "/random_seeds",
    "/generate",
    "/show_mask",
    "/resample",
    "/swap",
    "/keep_edit",
    "/invert",
    "/find_faces",
    "/attribute",
    "/attribution_at_t",
    "/attribute_end_to_end",
    "/show_mask_after_generate",
    "/show_mask_on_region_change",
    "/show_mask_after_invert",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny_pipeline(path, faces, seed):
    labels = torch.from_numpy(faces.labels[faces.has_mask]).long()
    templates = pid.compute_concept_templates(labels, pid.parse_concepts(None))
    pipe = tiny_pipeline(16, seed=seed, concept_templates=templates)
    pipe.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_faces):
    """The app's models (`app.load_models`) on a tiny interpretable pipeline and a tiny 'baseline', saved and loaded."""
    faces = load_faces(tiny_faces, "train")
    root = tmp_path_factory.mktemp("space_models")
    main = save_tiny_pipeline(root / "tiny-interpretable", faces, seed=0)
    baseline = save_tiny_pipeline(root / "tiny-baseline", faces, seed=1)
    return app.load_models(main, baseline, default_steps=STEPS)


@pytest.fixture(scope="module")
def served(tiny_models):
    """(client, models, url): the app on `tiny_models`, launched in-process. A server: its tests are marked slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids OpenMP oversubscription stalls
    models = tiny_models
    demo = app.build_demo(models)
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **app.LAUNCH_KWARGS)
    try:
        client = Client(demo.local_url, verbose=False)
        yield client, models, demo.local_url
    finally:
        demo.close()
        torch.set_num_threads(threads)


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def pipe_image_display(images_bchw: torch.Tensor, i: int = 0) -> np.ndarray:
    return to_display(images_bchw[i].permute(1, 2, 0).cpu().numpy())


def generate(client, seed_a=3, seed_b=7, compare=True):
    a, b, editor, info = client.predict(seed_a, seed_b, STEPS, compare, api_name="/generate")
    return read(a), read(b), editor, info


@pytest.mark.slow
def test_every_event_has_an_api_name(served):
    client, _, _ = served
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == EXPECTED_ENDPOINTS


@pytest.mark.slow
def test_random_seeds(served):
    client, _, _ = served
    a, b = client.predict(api_name="/random_seeds")
    assert all(isinstance(s, (int, float)) and 0 <= s < 2**31 and s == int(s) for s in (a, b))


@pytest.mark.slow
def test_generate_is_the_pipeline_output_and_reproducible(served):
    client, models, _ = served
    a, b, editor, info = generate(client, 3, 7)
    assert a.shape == b.shape == (256, 256, 3)  # 16x16 faces shown at 16x
    assert "seed **3**" in info and "seed **7**" in info
    ref = models.main(
        batch_size=2,
        generator=[torch.Generator().manual_seed(s) for s in (3, 7)],
        num_inference_steps=STEPS,
        output_type="pt",
    ).images
    np.testing.assert_array_equal(a, pipe_image_display(ref, 0))
    np.testing.assert_array_equal(b, pipe_image_display(ref, 1))
    a2, b2, _, _ = generate(client, 3, 7)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    a3, _, _, _ = generate(client, 4, 7)
    assert np.abs(a3.astype(int) - a.astype(int)).max() > 0
    # The painting canvas is face A.
    np.testing.assert_array_equal(read(editor["background"]), a)


@pytest.mark.slow
def test_show_mask_overlays_the_concept_mask(served):
    client, models, _ = served
    a, _, _, _ = generate(client)
    overlay, info = client.predict("eyes", 0, None, STEPS, api_name="/show_mask")
    overlay = read(overlay)
    template = models.main.template_mask("eyes").numpy()
    assert f"{int(template.sum())} of 256 pixels" in info
    changed = np.abs(overlay.astype(int) - a.astype(int)).sum(-1) > 0
    np.testing.assert_array_equal(changed, upscale_mask(template))  # tinted exactly inside the mask


@pytest.mark.slow
def test_resample_matches_the_pipeline_and_reports_locality(served):
    client, models, _ = served
    a, _, _, _ = generate(client, 3, 7)
    out = client.predict("nose", 0, None, 11, STEPS, True, api_name="/resample")
    panel, details = out[:12], out[12]
    edited_a, heat_a, loc_a = read(panel[0]), read(panel[1]), panel[2]
    assert panel[3] is None and panel[5] is None  # no face B in a resample
    # the same edit, directly on the pipeline
    gens = [torch.Generator().manual_seed(s) for s in (3, 7)]
    orig = models.main(batch_size=2, generator=gens, num_inference_steps=STEPS, output_type="pt")
    mask = models.main.concept_mask(orig.images[:1] * 2 - 1, "nose", is_latents=False)
    ref = models.main.resample_region(
        orig.latents[:1],
        mask,
        generator=torch.Generator().manual_seed(11),
        num_inference_steps=STEPS,
        output_type="pt",
    )
    np.testing.assert_array_equal(edited_a, pipe_image_display(ref.images))
    expected = float(pid.edit_locality(orig.images[:1], ref.images, ref.mask, color_space="lab")[0])
    assert math.isfinite(loc_a) and loc_a == pytest.approx(expected, abs=1e-4)
    assert heat_a.shape == (256, 256, 3) and heat_a.std() > 0
    # the baseline ran the same edit side by side
    base_a, base_loc = read(panel[6]), panel[8]
    assert base_a.shape == (256, 256, 3) and math.isfinite(base_loc)
    assert np.abs(base_a.astype(int) - edited_a.astype(int)).max() > 0
    assert "locality (Lab, paper)" in details and "seed 11" in details


@pytest.mark.slow
def test_swap_twice_restores_both_faces(served):
    client, _, _ = served
    a, b, _, _ = generate(client, 5, 9, compare=False)
    # plain noise: the x_T exchange itself (a harmonised swap re-centres the moved noise, see the next test)
    out = client.predict("mouth", 1, None, STEPS, False, False, api_name="/swap")
    new_a, new_b, loc_a, loc_b = read(out[0]), read(out[3]), out[2], out[5]
    assert math.isfinite(loc_a) and math.isfinite(loc_b) and loc_a >= 0 and loc_b >= 0
    assert np.abs(new_a.astype(int) - a.astype(int)).max() > 0
    assert out[6] is None  # compare off: no baseline result
    kept_a, kept_b, _, info = client.predict(STEPS, api_name="/keep_edit")
    np.testing.assert_array_equal(read(kept_a), new_a)
    np.testing.assert_array_equal(read(kept_b), new_b)
    assert "after swapping mouth" in info
    # Template masks do not depend on the face, so swapping again exchanges the same x_T back.
    out = client.predict("mouth", 1, None, STEPS, False, False, api_name="/swap")
    np.testing.assert_array_equal(read(out[0]), a)
    np.testing.assert_array_equal(read(out[3]), b)


@pytest.mark.slow
def test_harmonised_noise_toggle_follows_the_pipeline_and_leaves_uploads_alone(served, tmp_path):
    client, models, _ = served
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 7)]  # noqa: E731
    for harmonize in (True, False):
        a, _, _, info = client.predict(3, 7, STEPS, False, harmonize, api_name="/generate")
        ref = models.main(
            batch_size=2, generator=gens(), num_inference_steps=STEPS, output_type="pt", harmonize_noise=harmonize
        )
        np.testing.assert_array_equal(read(a), pipe_image_display(ref.images))
        assert ("harmonised noise" if harmonize else "plain noise") in info
        swap = client.predict("nose", 0, None, STEPS, False, harmonize, api_name="/swap")
        mask = models.main.concept_mask(ref.images[:1] * 2 - 1, "nose", is_latents=False)
        ref_swap = models.main.swap_regions(
            ref.latents[:1],
            ref.latents[1:],
            mask,
            num_inference_steps=STEPS,
            output_type="pt",
            harmonize_noise=harmonize,
        )
        np.testing.assert_array_equal(read(swap[0]), pipe_image_display(ref_swap.images_a))
    plain = models.main(
        batch_size=2, generator=gens(), num_inference_steps=STEPS, output_type="pt", harmonize_noise=False
    )
    assert not torch.equal(ref_swap.images_a, plain.images[:1])
    # an uploaded face is inverted, never harmonised: the toggle does not change its edits
    Image.fromarray((plain.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "f.png")
    client.predict(handle_file(str(tmp_path / "f.png")), STEPS, False, api_name="/invert")
    on = client.predict("eyes", 0, None, 3, STEPS, False, True, api_name="/resample")
    off = client.predict("eyes", 0, None, 3, STEPS, False, False, api_name="/resample")
    np.testing.assert_array_equal(read(on[0]), read(off[0]))


@pytest.mark.slow
def test_painted_region(served, tmp_path):
    client, models, _ = served
    _, _, editor, _ = generate(client, compare=False)
    layer = np.zeros((256, 256, 4), np.uint8)
    layer[64:128, 96:192] = (255, 48, 48, 255)  # rows 4..7, columns 6..11 of the 16x16 face
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    value = {
        "background": handle_file(editor["background"]),
        "layers": [handle_file(str(tmp_path / "layer.png"))],
        "composite": handle_file(editor["background"]),
    }
    overlay, info = client.predict("painted", 0, value, STEPS, api_name="/show_mask")
    assert "24 of 256 pixels" in info
    out = client.predict("painted", 0, value, 2, STEPS, False, api_name="/resample")
    assert math.isfinite(out[2])
    empty = dict(value, layers=[])
    with pytest.raises(AppError, match="painted mask is empty"):
        client.predict("painted", 0, empty, 2, STEPS, False, api_name="/resample")


@pytest.mark.slow
def test_invert_an_upload_then_edit_it(served, tmp_path):
    client, models, _ = served
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "face.png")
    small, recon, face_a, editor, info, pasted = client.predict(
        handle_file(str(tmp_path / "face.png")), STEPS, True, api_name="/invert"
    )
    assert pasted is None and "No face found" in info  # noise: the centre-crop fallback, said so
    assert read(small).shape == read(recon).shape == (256, 256, 3)
    np.testing.assert_array_equal(read(face_a), read(recon))
    assert "40x30" in info and "resized" in info and "PSNR" in info
    # the reconstruction is what the pipeline's inversion regenerates
    expected_input = (
        np.asarray(
            Image.open(tmp_path / "face.png").convert("RGB").crop((5, 0, 35, 30)).resize((16, 16), Image.BICUBIC),
            np.float32,
        )
        / 255
    )
    np.testing.assert_array_equal(read(small), to_display(expected_input))
    # the default strength (the pipeline's): the whole InversionOutput continues from its timestep
    inv = models.main.invert(torch.from_numpy(expected_input).permute(2, 0, 1)[None], num_inference_steps=STEPS)
    assert inv.strength == pid.DEFAULT_INVERSION_STRENGTH and f"t0 = {inv.timestep}" in info and "2 of 4 steps" in info
    ref = models.main(latents=inv, num_inference_steps=STEPS, output_type="pt").images
    np.testing.assert_array_equal(read(recon), pipe_image_display(ref))
    out = client.predict("eyes", 0, None, 3, STEPS, True, api_name="/resample")
    assert math.isfinite(out[2]) and math.isfinite(out[8])
    mask = models.main.concept_mask(inv, "eyes")
    ref_edit = models.main.resample_region(
        inv, mask, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS, output_type="pt"
    )
    np.testing.assert_array_equal(read(out[0]), pipe_image_display(ref_edit.images))
    # locality against the unedited reconstruction from the same inversion
    expected = float(pid.edit_locality(ref, ref_edit.images, ref_edit.mask, color_space="lab")[0])
    assert out[2] == pytest.approx(expected, abs=1e-4)
    assert "Warning" not in out[12] and "strength 0.5" in out[12]
    # the Real face tab shows the same result and locality
    np.testing.assert_array_equal(read(out[13]), read(out[0]))
    assert out[14] == out[2] and "locality" in out[15]


def _save_face(path, image_chw: torch.Tensor) -> str:
    Image.fromarray((image_chw.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return str(path)


def _as_photo(path) -> torch.Tensor:
    return torch.from_numpy(read(path).astype(np.float32) / 255).permute(2, 0, 1)[None]


@pytest.mark.slow
def test_photo_swaps_at_a_strength_match_the_pipeline_and_chain(served, tmp_path):
    """Photo A (inverted at strength 0.3) swapped with generated B (inverted from its image at the same strength),
    kept, then swapped again as two photos: each result equals the pipeline's own calls on InversionOutputs."""
    client, models, _ = served
    pipe, strength = models.main, 0.3
    generate(client, 3, 7, compare=False)
    gens = [torch.Generator().manual_seed(s) for s in (3, 7)]
    orig = pipe(batch_size=2, generator=gens, num_inference_steps=STEPS, output_type="pt")
    photo = _save_face(
        tmp_path / "a.png",
        pipe(
            batch_size=1, generator=torch.Generator().manual_seed(40), num_inference_steps=STEPS, output_type="pt"
        ).images[0],
    )
    _, recon, _, _, info, _ = client.predict(handle_file(photo), STEPS, False, strength, api_name="/invert")
    inv_a = pipe.invert(_as_photo(photo), num_inference_steps=STEPS, strength=strength)
    inv_b = pipe.invert(orig.images[1:], num_inference_steps=STEPS, strength=strength)
    assert (
        inv_a.timestep == inv_b.timestep
        and f"t0 = {inv_a.timestep}" in info
        and "strength **0.3**: 1 of 4 steps" in info
    )
    np.testing.assert_array_equal(
        read(recon), pipe_image_display(pipe(latents=inv_a, num_inference_steps=STEPS, output_type="pt").images)
    )
    overlay, mask_info = client.predict("mouth", 0, None, STEPS, strength, api_name="/show_mask")
    assert "found on your photo" in mask_info
    out = client.predict("mouth", 0, None, STEPS, False, False, strength, api_name="/swap")
    mask = pipe.concept_mask(inv_a, "mouth")
    # photo swaps are harmonised by default (the part keeps the receiving face's colouring)
    shift = app_handlers.PHOTO_SWAP_HARMONIZE
    ref = pipe.swap_regions(inv_a, inv_b, mask, num_inference_steps=STEPS, output_type="pt", harmonize_photo=shift)
    assert "harmonised photo swap" in out[12]
    plain = client.predict("mouth", 0, None, STEPS, False, False, strength, False, False, api_name="/swap")
    ref_plain = pipe.swap_regions(inv_a, inv_b, mask, num_inference_steps=STEPS, output_type="pt")
    np.testing.assert_array_equal(read(plain[0]), pipe_image_display(ref_plain.images_a))
    assert "harmonised photo swap" not in plain[12] and not np.array_equal(read(plain[0]), read(out[0]))
    out = client.predict("mouth", 0, None, STEPS, False, False, strength, api_name="/swap")  # the kept edit
    np.testing.assert_array_equal(read(out[0]), pipe_image_display(ref.images_a))
    np.testing.assert_array_equal(read(out[3]), pipe_image_display(ref.images_b))
    rec_b = pipe(latents=inv_b, num_inference_steps=STEPS, output_type="pt").images
    expected_b = float(pid.edit_locality(rec_b, ref.images_b, ref.mask, color_space="lab")[0])
    assert out[5] == pytest.approx(expected_b, abs=1e-4)
    assert "generated face B was inverted" in out[12] and "Warning" not in out[12]
    # keep: both edited images become photos, inverted again; a second swap is photo with photo
    kept_a, kept_b, _, keep_info = client.predict(STEPS, strength, api_name="/keep_edit")
    assert "inverted again" in keep_info
    inv_a2 = pipe.invert(ref.images_a, num_inference_steps=STEPS, strength=strength)
    inv_b2 = pipe.invert(ref.images_b, num_inference_steps=STEPS, strength=strength)
    np.testing.assert_array_equal(
        read(kept_a), pipe_image_display(pipe(latents=inv_a2, num_inference_steps=STEPS, output_type="pt").images)
    )
    out2 = client.predict("eyes", 0, None, STEPS, False, False, strength, api_name="/swap")
    ref2 = pipe.swap_regions(
        inv_a2,
        inv_b2,
        pipe.concept_mask(inv_a2, "eyes"),
        num_inference_steps=STEPS,
        output_type="pt",
        harmonize_photo=shift,
    )
    np.testing.assert_array_equal(read(out2[0]), pipe_image_display(ref2.images_a))
    np.testing.assert_array_equal(read(out2[3]), pipe_image_display(ref2.images_b))
    assert "generated face" not in out2[12]


@pytest.mark.slow
def test_strength_one_edits_carry_the_pipelines_warning(served, tmp_path):
    client, models, _ = served
    generate(client, 3, 7, compare=False)
    photo = _save_face(tmp_path / "a.png", torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)))
    info = client.predict(handle_file(photo), STEPS, False, 1.0, api_name="/invert")[4]
    inv = models.main.invert(_as_photo(photo), num_inference_steps=STEPS, strength=1.0)
    assert inv.warning and f"**Warning: {inv.warning}**" in info
    out = client.predict("nose", 0, None, STEPS, False, False, 1.0, api_name="/swap")
    assert f"**Warning: {inv.warning}**" in out[12] and "Warning" in out[15]
    out = client.predict("nose", 0, None, 5, STEPS, False, False, 1.0, api_name="/resample")
    assert "not local" in out[12]
    # back at the default strength (left out by this client call) the warning is gone
    out = client.predict("nose", 0, None, 5, STEPS, False, False, api_name="/resample")
    assert "Warning" not in out[12]


@pytest.mark.slow
def test_photo_attribution_covers_only_its_inversion(served, tmp_path):
    client, models, _ = served
    photo = _save_face(tmp_path / "a.png", torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)))
    client.predict(handle_file(photo), STEPS, False, 0.5, api_name="/invert")
    _, _, _, _, info, summary = client.predict("A", STEPS, 4, 0, False, False, 0.5, api_name="/attribute")
    inv = models.main.invert(_as_photo(photo), num_inference_steps=STEPS, strength=0.5)
    ts = summary["main"]["timesteps"]
    assert ts and all(t <= inv.timestep for t in ts) and inv.timestep in ts and "t <= t0 only" in info
    other = torch.randn(inv.latents.shape, generator=torch.Generator().manual_seed(0))
    ref = models.main.attribute(
        inv, masks=models.main.region_masks(inv), timesteps=ts, num_inference_steps=STEPS, baseline=other
    )
    np.testing.assert_allclose(summary["main"]["leakage"], ref.leakage[:, 0].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("strength", [0, 1.5, -0.2])
def test_bad_strength_is_refused_and_the_app_keeps_serving(served, tmp_path, strength):
    client, _, _ = served
    photo = _save_face(tmp_path / "a.png", torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(AppError, match="(?i)strength|minimum value|maximum value"):
        client.predict(handle_file(photo), STEPS, False, strength, api_name="/invert")
    still_serving(client)
    with pytest.raises(AppError, match="(?i)strength|minimum value|maximum value"):
        client.predict("eyes", 0, None, 3, STEPS, False, False, strength, api_name="/resample")
    still_serving(client)


def test_handler_refuses_a_strength_outside_0_1(tiny_models):
    handlers = app.SpaceApp(tiny_models)
    for bad in (0, 1.01, float("nan"), True, "x"):
        with pytest.raises(Exception, match="strength must be a number in \\(0, 1\\]"):
            app_handlers.check_strength(bad)
    assert handlers.default_strength == pid.DEFAULT_INVERSION_STRENGTH


@pytest.mark.slow
def test_bad_uploads_are_refused_and_the_app_keeps_serving(served, tmp_path):
    client, _, _ = served
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(text)), STEPS, False, api_name="/invert")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (5000, 4000), (128, 100, 90)).save(huge)  # small file, 20 megapixels
    with pytest.raises(AppError, match="megapixels"):
        client.predict(handle_file(str(huge)), STEPS, False, api_name="/invert")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)).save(big)
    assert os.path.getsize(big) > 10 * 1024 * 1024
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(handle_file(str(big)), STEPS, False, api_name="/invert")
    with pytest.raises(AppError, match="seed A|minimum value 0"):  # the component or the handler refuses it
        client.predict(-5, 1, STEPS, False, api_name="/generate")
    with pytest.raises(AppError, match="Steps|minimum value 1"):
        client.predict(1, 2, 0, False, api_name="/generate")
    a, _, _, _ = generate(client, 3, 7)  # still serving
    assert a.shape == (256, 256, 3)


def still_serving(client):
    """The app answers a model call after a refused one (the queue and the session survived)."""
    a, _, _, _ = generate(client, 3, 7)
    assert a.shape == (256, 256, 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.predict(1.5, 7, STEPS, False, api_name="/generate"), "seed A must be a whole number"),
        (lambda c: c.predict(3, 2.25, STEPS, False, api_name="/generate"), "seed B must be a whole number"),
        (lambda c: c.predict(3, 7, 2.5, False, api_name="/generate"), "Steps must be an integer"),
        (
            lambda c: c.predict("eyes", 0, None, 1.5, STEPS, False, api_name="/resample"),
            "new seed must be a whole number",
        ),
        (lambda c: c.predict("eyes", 1.5, None, 3, STEPS, False, api_name="/resample"), "Dilation"),
        (
            lambda c: c.predict("ears", 0, None, 3, STEPS, False, api_name="/resample"),
            "'ears'.*not in the list of choices",
        ),
        (
            lambda c: c.predict("A", STEPS, 3, 0.5, False, api_name="/attribute"),
            "attribution seed must be a whole number",
        ),
        (lambda c: c.predict("A", STEPS, 2.5, 0, False, api_name="/attribute"), "Number of timesteps"),
    ],
    ids=["seed-a", "seed-b", "steps", "resample-seed", "dilation", "region", "attribution-seed", "timesteps"],
)
def test_bad_numbers_are_refused_not_rounded_and_the_app_keeps_serving(served, call, message):
    client, _, _ = served
    generate(client, 3, 7)  # the edits need faces
    with pytest.raises(AppError, match=message):
        call(client)
    still_serving(client)


def _write_bad_upload(kind: str, folder) -> str:
    path = folder / {"empty": "empty.png", "text": "notes.jpg", "truncated": "cut.png", "tiny": "tiny.png"}[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:120])
    else:  # 4x4 pixels for a 16x16 model
        Image.new("RGB", (4, 4), (200, 150, 120)).save(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "empty \\(0 bytes\\)"),
        ("text", "not an image"),
        ("truncated", "not an image"),
        ("tiny", "only 4x4 pixels"),
    ],
)
def test_bad_upload_gets_a_clear_message_and_the_app_keeps_serving(served, tmp_path, kind, message):
    client, _, _ = served
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(_write_bad_upload(kind, tmp_path)), STEPS, False, api_name="/invert")
    still_serving(client)


@pytest.mark.slow
def test_animated_gif_upload_uses_its_first_frame_and_says_so(served, tmp_path):
    client, _, _ = served
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(3)]
    gif = tmp_path / "face.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    small, recon, face_a, _, info, _ = client.predict(handle_file(str(gif)), STEPS, False, api_name="/invert")
    assert "animated (3 frames)" in info and "first frame" in info
    with Image.open(gif) as im:  # frame 0, as PIL decodes it
        first = np.asarray(im.convert("RGB").resize((16, 16), Image.BICUBIC), np.float32) / 255
    np.testing.assert_array_equal(read(small), to_display(first))
    still_serving(client)


@pytest.mark.slow
def test_edits_before_any_face_give_a_clear_error(served):
    _, _, url = served
    fresh = Client(url, verbose=False)  # a new session has no faces
    with pytest.raises(AppError, match="Generate faces A and B"):
        fresh.predict("eyes", 0, None, STEPS, False, api_name="/swap")
    with pytest.raises(AppError, match="no edit to keep"):
        generate(fresh) and fresh.predict(STEPS, api_name="/keep_edit")


@pytest.mark.slow
def test_attribution_explorer(served):
    client, models, _ = served
    generate(client, 3, 7)
    matrix, base_matrix, curve, t_index, info, summary = client.predict("A", STEPS, 3, 0, True, api_name="/attribute")
    assert t_index["value"] == 0 and t_index["maximum"] == 2  # the slider spans the analysed timesteps
    assert read(matrix).ndim == 3 and read(base_matrix).ndim == 3 and read(curve).ndim == 3
    main = summary["main"]
    assert main["region_names"] == ["eyes", "nose", "mouth", "rest"]
    assert len(main["timesteps"]) == len(main["leakage"]) == 3
    assert all(0 <= v <= 1 and math.isfinite(v) for v in main["leakage"])
    assert main["timesteps"] == sorted(main["timesteps"], reverse=True)
    # the same numbers straight from the pipeline
    gens = [torch.Generator().manual_seed(s) for s in (3, 7)]
    orig = models.main(batch_size=2, generator=gens, num_inference_steps=STEPS, output_type="pt")
    regions = models.main.region_masks(orig.images[:1] * 2 - 1, is_latents=False)
    ref = models.main.attribute(
        orig.latents[:1],
        masks=regions,
        timesteps=main["timesteps"],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(main["leakage"], ref.leakage[:, 0].numpy(), rtol=1e-4, atol=1e-6)
    assert "baseline" in summary and len(summary["baseline"]["leakage"]) == 3
    assert float(ref.abs_phi.max()) > 1e-4  # a real game: the regions of x_t matter (the other x_T is not x_T)
    # a seed that redraws the face's own x_T would make every region irrelevant: refused
    with pytest.raises(AppError, match="own x_T"):
        client.predict("A", STEPS, 3, 3, False, api_name="/attribute")
    m2, _, curve2, info2 = client.predict(2, api_name="/attribution_at_t")
    assert f"t = **{main['timesteps'][2]}**" in info2
    assert not np.array_equal(read(m2), read(matrix))


@pytest.mark.slow
def test_end_to_end_attribution_explorer_matches_the_pipeline(served, tmp_path):
    client, models, _ = served
    generate(client, 3, 7)
    matrix, base_matrix, info, summary = client.predict("B", STEPS, 5, True, True, api_name="/attribute_end_to_end")
    assert read(matrix).ndim == 3 and read(base_matrix).ndim == 3
    main = summary["main"]
    assert main["region_names"] == ["eyes", "nose", "mouth", "rest"] and "baseline" in summary
    # the same game straight from the pipeline: face B's x_T against a harmonised x_T drawn from seed 5
    gens = [torch.Generator().manual_seed(s) for s in (3, 7)]
    orig = models.main(batch_size=2, generator=gens, num_inference_steps=STEPS, output_type="pt")
    other = models.main.harmonize(torch.randn(orig.latents[1:].shape, generator=torch.Generator().manual_seed(5)))
    ref = models.main.attribute_end_to_end(
        orig.latents[1:],
        masks=models.main.region_masks(orig.images[1:] * 2 - 1, is_latents=False),
        num_inference_steps=STEPS,
        baseline=other,
    )
    assert 0 < main["leakage"] < 1
    np.testing.assert_allclose(main["leakage"], float(ref.leakage[0]), rtol=1e-4, atol=1e-6)
    assert f"{main['leakage']:.3f}" in info
    # an uploaded photo has no x_T of its own: refused with a reason, and the app keeps serving
    photo = _save_face(tmp_path / "a.png", torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)))
    client.predict(handle_file(photo), STEPS, False, 0.5, api_name="/invert")
    with pytest.raises(AppError, match="no x_T of its own"):
        client.predict("A", STEPS, 5, False, False, api_name="/attribute_end_to_end")
    still_serving(client)


def test_model_resolution_from_arguments_env_and_defaults(tmp_path, monkeypatch, tiny_faces):
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    monkeypatch.delenv(app.BASELINE_ENV, raising=False)
    monkeypatch.setattr(app_handlers, "ROOT", str(tmp_path))  # a checkout without models/
    with pytest.raises(SystemExit, match="No model to serve"):
        app.load_models(None, None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(str(tmp_path / "missing-model"))
    # any interpretable pipeline committed under models/ is found when the default is absent
    faces = load_faces(tiny_faces, "train")
    path = save_tiny_pipeline(tmp_path / "models" / "other-interpretable", faces, seed=0)
    assert app_handlers.find_default_model() == path
    monkeypatch.setenv(app.MODEL_ENV, path)
    models = app.load_models(None, "")
    assert models.main_name == "other-interpretable" and models.baseline is None
    assert next(models.main.unet.parameters()).dtype == torch.float32


def test_the_space_samples_as_the_model_folder_says_and_the_baseline_alike(tmp_path, tiny_faces):
    """Default steps and eta come from the model's folder (`--steps` overrides the steps); the baseline is sampled
    with the model's eta whatever its own folder says, and the faces say which sampler drew them."""
    faces = load_faces(tiny_faces, "train")
    main = save_tiny_pipeline(tmp_path / "stochastic", faces, seed=0)
    baseline = save_tiny_pipeline(tmp_path / "ddim", faces, seed=1)  # eta 0, 50 steps
    index_path = os.path.join(main, "model_index.json")
    index = json.load(open(index_path))
    json.dump({**index, "eta": 1.0, "num_inference_steps": 3}, open(index_path, "w"))
    models = app.load_models(main, baseline)
    assert models.default_steps == 3 and models.eta == 1.0 and models.baseline.config.eta == 1.0
    assert app.load_models(main, baseline, default_steps=2).default_steps == 2
    assert app.parse_args([]).steps is None
    a, b, _, _, info = app.SpaceApp(models).generate(3, 7, 2, True, False)
    assert "2 steps (eta = 1, step noise drawn from x_T" in info
    x_t = torch.stack([torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (3, 7)])
    expected = models.main(latents=x_t, num_inference_steps=2, eta=1.0, output_type="pt").images
    assert np.array_equal(a, pipe_image_display(expected, 0)) and np.array_equal(b, pipe_image_display(expected, 1))
    ddim = models.main(latents=x_t, num_inference_steps=2, eta=0.0, output_type="pt").images
    assert not np.array_equal(a, pipe_image_display(ddim, 0))


@pytest.mark.slow  # a python app.py subprocess serving HTTP
def test_python_app_py_serves_the_page(tmp_path, tiny_faces):
    """The command-line entry point: env var model, --baseline '' and --port; the page answers HTTP 200."""
    import subprocess
    import time
    import urllib.request

    path = save_tiny_pipeline(tmp_path / "tiny", load_faces(tiny_faces, "train"), seed=0)
    port = free_port()
    env = dict(os.environ, **{app.MODEL_ENV: path, "GRADIO_ANALYTICS_ENABLED": "False"})
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "app.py"), "--baseline", "", "--port", str(port), "--num-threads", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while True:  # until it serves or exits; pytest-timeout bounds the wait, no wall-clock limit of its own
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    assert resp.status == 200 and b"gradio" in resp.read().lower()
                    break
            except OSError:
                time.sleep(0.25)
        a, *_ = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(1, 2, 2, False, api_name="/generate")
        assert read(a).shape == (256, 256, 3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_peer_comparison_blends_the_baseline_edit_only(served):
    client, _, _ = served
    generate(client, 3, 7)
    # region, dilation, editor, steps, compare, harmonised noise, strength (photos only), peer
    plain = client.predict("nose", 0, None, STEPS, True, False, 0.5, False, api_name="/swap")
    peer = client.predict("nose", 0, None, STEPS, True, False, 0.5, True, api_name="/swap")
    np.testing.assert_array_equal(read(peer[0]), read(plain[0]))  # this model: the same plain edit
    assert np.abs(read(peer[6]).astype(int) - read(plain[6]).astype(int)).max() > 0  # the baseline: blended
    assert "blended edit" in peer[12] and "blended edit" not in plain[12]
    res = client.predict("nose", 0, None, 11, STEPS, True, False, 0.5, True, api_name="/resample")
    assert "blended edit" in res[12]


# ---------------------------------------------------------------------------------------------------------------------
# Photos as people have them: a real portrait (scikit-image's astronaut, inside its wheel), faces found and aligned,
# edits pasted back into the whole photo; photos without a usable face.
# ---------------------------------------------------------------------------------------------------------------------
def _astronaut(folder, size=None) -> str:
    skimage_data = pytest.importorskip("skimage.data")
    image = Image.fromarray(skimage_data.astronaut())
    if size:
        image = image.resize((size, size), Image.BICUBIC)
    path = folder / f"astronaut{size or ''}.jpg"
    image.save(path, quality=95)
    return str(path)


@pytest.mark.slow
def test_a_photo_face_is_found_aligned_edited_and_pasted_back(served, tmp_path):
    client, models, _ = served
    import prepare_data

    photo_path = _astronaut(tmp_path)
    gallery, picker, info = client.predict(handle_file(photo_path), api_name="/find_faces")
    assert len(gallery) == 1 and "Found 1 face" in info and picker["value"] == "1"
    assert picker["choices"][0][0].startswith("Face 1 (largest): eyes")
    generate(client, 3, 7, compare=False)
    small, recon, _, _, info, pasted = client.predict(
        handle_file(photo_path), STEPS, False, 0.5, "1", api_name="/invert"
    )
    assert "Found 1 face" in info and "aligned" in info and pasted is None
    # face A is the photo's face aligned at the model's resolution by prepare_data.align_faces (one function for both)
    with Image.open(photo_path) as im:
        photo = np.asarray(im.convert("RGB"))
    aligned = prepare_data.align_faces(Image.fromarray(photo), resolution=16)[0]
    np.testing.assert_array_equal(read(small), to_display(np.asarray(aligned.image, np.float32) / 255))
    out = client.predict("nose", 0, None, STEPS, False, False, 0.5, api_name="/swap")
    assert "pasted back" in out[15]
    whole = read(out[16])
    assert whole.shape == photo.shape  # the photo's own resolution
    changed = np.abs(whole.astype(int) - photo).max(-1) > 0
    left, top, right, bottom = aligned.box()
    assert changed.any() and not changed[:top].any() and not changed[bottom:].any()
    assert not changed[:, :left].any() and not changed[:, right:].any()
    # keep the edit, resample: the next paste-back starts from the photo with the first edit
    client.predict(STEPS, 0.5, api_name="/keep_edit")
    out2 = client.predict("mouth", 0, None, 5, STEPS, False, False, 0.5, api_name="/resample")
    whole2 = read(out2[16])
    assert whole2.shape == photo.shape
    kept_region = changed & (np.abs(whole2.astype(int) - photo).max(-1) > 0)
    assert kept_region.any()  # the first edit is still in the photo


@pytest.mark.slow
def test_a_photo_without_a_face_is_centre_cropped_with_a_notice(served, tmp_path):
    client, _, _ = served
    sky = np.linspace([90, 140, 220], [200, 220, 250], 300)[:, None, :].repeat(400, 1).astype(np.uint8)
    Image.fromarray(sky).save(tmp_path / "sky.png")
    gallery, _, info = client.predict(handle_file(str(tmp_path / "sky.png")), api_name="/find_faces")
    assert gallery == [] and "No face found" in info
    small, _, _, _, info, _ = client.predict(handle_file(str(tmp_path / "sky.png")), STEPS, False, api_name="/invert")
    assert "No face found" in info and "centre-cropped to 300x300" in info
    still_serving(client)


@pytest.mark.slow
@pytest.mark.parametrize("kind, message", [("transparent", "fully transparent"), ("bomb", "megapixels")])
def test_photos_that_cannot_hold_a_face_are_refused_and_the_app_keeps_serving(served, tmp_path, kind, message):
    client, _, _ = served
    path = tmp_path / f"{kind}.png"
    if kind == "transparent":
        Image.new("RGBA", (200, 200), (200, 120, 90, 0)).save(path)
    else:
        Image.new("L", (5000, 4000)).save(path)  # 20 megapixels in a few kilobytes
    for api in ("/find_faces", "/invert"):
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(path)), api_name=api)
    still_serving(client)


def test_a_face_too_small_to_align_is_refused_with_its_size(tmp_path):
    found = app_handlers.find_upload_faces(_astronaut(tmp_path, 128), (64, 64))
    assert found.faces and found.faces[0].eye_distance < app_handlers.min_eye_distance((64, 64))
    with pytest.raises(Exception, match="too small to align: its eyes are .* px apart"):
        app_handlers.chosen_face(found, "1", (64, 64))
    with pytest.raises(Exception, match="Choose a face between 1 and 1"):
        app_handlers.chosen_face(found, "3", (16, 16))

"""The Space in a real headless Chromium (Playwright): load, generate, edit, screenshot; a bad upload shows its error
and the next request still works. Screenshots go to runs/app_browser/ (or $APP_SCREENSHOT_DIR)."""

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import app
from conftest import ROOT, require
from face_data import load_faces
from test_app import STEPS, free_port, save_tiny_pipeline

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 60_000

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory, tiny_faces):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faces = load_faces(tiny_faces, "train")
    root = tmp_path_factory.mktemp("browser_models")
    models = app.load_models(
        save_tiny_pipeline(root / "tiny-interpretable", faces, 0),
        save_tiny_pipeline(root / "tiny-baseline", faces, 1),
        default_steps=STEPS,
    )
    demo = app.build_demo(models)
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, css=app.CSS, **app.LAUNCH_KWARGS)
    try:
        yield demo.local_url
    finally:
        demo.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(url):
    require(os.path.exists(CHROMIUM), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(TIMEOUT_MS)
            sync_api.expect.set_options(timeout=TIMEOUT_MS)  # expect() has its own 5 s default; CPU shared
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


def screenshot_dir() -> str:
    path = os.environ.get("APP_SCREENSHOT_DIR", os.path.join(ROOT, "runs", "app_browser"))
    os.makedirs(path, exist_ok=True)
    return path


def image_src(page, elem_id: str) -> str:
    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible")
    return img.get_attribute("src")


def test_generate_edit_and_screenshot(page):
    compare = page.locator("#compare input")
    assert not compare.is_checked()  # off at start (an edit then runs one model); switched on for this test
    compare.check()
    page.locator("#generate").click()
    sync_api.expect(page.locator("#gen-info")).to_contain_text("seed **0**".replace("**", ""))
    first_a = image_src(page, "face-a")
    image_src(page, "face-b")
    image_src(page, "overlay")  # the region overlay follows generation
    page.locator("#swap").click()
    sync_api.expect(page.locator("#edit-info")).to_contain_text("Swapped")
    for elem_id in ("main-edited-a", "main-edited-b", "baseline-edited-a"):
        assert image_src(page, elem_id)
    locality = page.locator("#main-locality-a input").input_value()
    assert np.isfinite(float(locality))
    page.locator("#resample").click()
    sync_api.expect(page.locator("#edit-info")).to_contain_text("Resampled")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#main-edited-a img, #main-heatmap-a img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    path = os.path.join(screenshot_dir(), "app_edit.png")
    page.screenshot(path=path, full_page=True)
    with Image.open(path) as shot:
        assert shot.size[0] >= 1000 and np.asarray(shot.convert("L")).std() > 10  # not a blank page
    assert first_a == image_src(page, "face-a")  # editing does not replace face A until "keep"
    page.get_by_role("tab", name="Attribution explorer").click()
    page.locator("#attribute").click()
    sync_api.expect(page.locator("#attr-info")).to_contain_text("leakage")
    image_src(page, "matrix-main")
    image_src(page, "leakage-curve")
    page.wait_for_function(  # the figures have arrived, not just their <img> tags
        "() => [...document.querySelectorAll('#matrix-main img, #leakage-curve img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=os.path.join(screenshot_dir(), "app_attribution.png"), full_page=True)
    page.get_by_role("tab", name="Generate & edit").click()
    compare.uncheck()


def test_bad_upload_shows_the_error_and_the_app_keeps_serving(page, tmp_path):
    page.get_by_role("tab", name="Real face").click()
    bad = tmp_path / "not_a_face.png"
    bad.write_text("plain text pretending to be a PNG")
    upload_photo(page, bad)
    page.locator("#invert").click()
    # both the upload (face finding) and the click (inversion) answer with the same message
    sync_api.expect(page.get_by_text(re.compile("not an image")).first).to_be_visible()
    page.screenshot(path=os.path.join(screenshot_dir(), "app_bad_upload.png"), full_page=True)
    # the next request works: a real (non-square) face photo is resized, inverted and becomes face A
    page.locator("#upload").get_by_role("button", name=re.compile("clear", re.I)).first.click()
    good = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(good)
    upload_photo(page, good)
    page.locator("#invert").click()
    sync_api.expect(page.locator("#upload-info")).to_contain_text("resized to the model's 16x16")
    page.screenshot(path=os.path.join(screenshot_dir(), "app_upload.png"), full_page=True)
    # an animated GIF: its first frame is used, and the page says so
    page.locator("#upload").get_by_role("button", name=re.compile("clear", re.I)).first.click()
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    gif = tmp_path / "face.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    upload_photo(page, gif)
    page.locator("#invert").click()
    sync_api.expect(page.locator("#upload-info")).to_contain_text("the first frame was used")
    page.get_by_role("tab", name="Generate & edit").click()


def test_a_fractional_seed_is_refused_with_a_message_and_the_app_keeps_serving(page):
    seed_a = page.locator("#seed-a input")
    seed_a.fill("1.5")
    page.locator("#generate").click()
    sync_api.expect(page.get_by_text(re.compile("seed A must be a whole number"))).to_be_visible()
    page.screenshot(path=os.path.join(screenshot_dir(), "app_bad_seed.png"), full_page=True)
    seed_a.fill("2")
    page.locator("#generate").click()
    sync_api.expect(page.locator("#gen-info")).to_contain_text("Face A: seed 2")


def generate_face_b(page):
    """Generates a face on the first tab (seed 0), so that the Real face tab has a face B to swap with."""
    page.get_by_role("tab", name="Generate & edit").click()
    page.locator("#seed-a input").fill("0")
    page.locator("#generate").click()  # face B, for the swap
    sync_api.expect(page.locator("#gen-info")).to_contain_text("Face A: seed 0")


def upload_photo(page, path):
    """Puts a photo into the Real face tab's upload box and waits until the box links to the server's copy: the file
    has reached the server and the component's value is set, so a click on Invert that follows sends this photo (a
    click before that sends no photo, and the upload's own message would then arrive last)."""
    page.locator("#upload input[type=file]").set_input_files(str(path))
    link = page.locator(f'#upload a[href*="/gradio_api/file="][href$="/{os.path.basename(str(path))}"]')
    sync_api.expect(link).to_have_count(1)


def clear_upload(page):
    """Empties the Real face tab's upload box if it holds a photo from an earlier test."""
    clear = page.locator("#upload").get_by_role("button", name=re.compile("clear", re.I))
    if clear.count():
        clear.first.click()


def test_photo_strength_slider_warning_and_locality_on_the_real_face_tab(page, tmp_path):
    generate_face_b(page)
    page.get_by_role("tab", name="Real face").click()
    slider = page.locator("#strength")
    sync_api.expect(slider).to_contain_text("more faithful")
    number = page.locator("#strength input[type=number]")
    assert float(number.input_value()) == 0.5  # the pipeline's default
    number.fill("1")
    number.blur()
    clear_upload(page)
    good = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good)
    upload_photo(page, good)
    page.locator("#invert").click()
    sync_api.expect(page.locator("#upload-info")).to_contain_text("strength 1")
    sync_api.expect(page.locator("#upload-info")).to_contain_text("not local")
    page.get_by_role("tab", name="Generate & edit").click()
    page.locator("#swap").click()
    sync_api.expect(page.locator("#edit-info")).to_contain_text("Warning")
    sync_api.expect(page.locator("#edit-info")).to_contain_text("generated face B was inverted")
    page.get_by_role("tab", name="Real face").click()
    sync_api.expect(page.locator("#real-edit-info")).to_contain_text("Warning")
    assert np.isfinite(float(page.locator("#real-locality input").input_value()))
    page.wait_for_function(
        "() => [...document.querySelectorAll('#real-edited img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=os.path.join(screenshot_dir(), "app_real_face.png"), full_page=True)
    # back to the default: the warning goes away
    number.fill("0.5")
    number.blur()
    page.locator("#invert").click()
    sync_api.expect(page.locator("#upload-info")).not_to_contain_text("not local")
    page.get_by_role("tab", name="Generate & edit").click()


def test_a_real_portrait_is_found_edited_and_pasted_back_into_the_whole_photo(page, tmp_path):
    """A portrait as a person has it (scikit-image's astronaut, 512x512, the face off-centre): the face is found and
    shown, inverted, swapped, and the whole photo comes back with the edit, at 512x512, downloadable."""
    skimage_data = pytest.importorskip("skimage.data")
    generate_face_b(page)
    page.get_by_role("tab", name="Real face").click()
    number = page.locator("#strength input[type=number]")
    number.fill("0.5")
    number.blur()
    clear_upload(page)
    # a transparent PNG: refused with its reason, and the app keeps serving
    transparent = tmp_path / "transparent.png"
    Image.new("RGBA", (120, 120), (250, 0, 0, 0)).save(transparent)
    upload_photo(page, transparent)
    sync_api.expect(page.get_by_text(re.compile("fully transparent")).first).to_be_visible()
    page.locator("#upload").get_by_role("button", name=re.compile("clear", re.I)).first.click()
    # a photo of the sky: no face found, said so; inverting it falls back to the centre crop with a notice
    sky = tmp_path / "sky.png"
    Image.fromarray(np.linspace([90, 140, 220], [200, 220, 250], 120)[:, None].repeat(160, 1).astype(np.uint8)).save(
        sky
    )
    upload_photo(page, sky)
    sync_api.expect(page.locator("#upload-info")).to_contain_text("No face found")
    page.locator("#upload").get_by_role("button", name=re.compile("clear", re.I)).first.click()
    portrait = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage_data.astronaut()).save(portrait, quality=95)
    upload_photo(page, portrait)
    sync_api.expect(page.locator("#upload-info")).to_contain_text("Found 1 face")
    image_src(page, "found-faces")
    page.locator("#invert").click()
    sync_api.expect(page.locator("#upload-info")).to_contain_text("aligned to the model's 16x16 geometry")
    page.get_by_role("tab", name="Generate & edit").click()
    page.locator("#swap").click()
    sync_api.expect(page.locator("#edit-info")).to_contain_text("harmonised photo swap")
    page.get_by_role("tab", name="Real face").click()
    sync_api.expect(page.locator("#real-edit-info")).to_contain_text("pasted back")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#real-photo img')].some(i => i.complete && i.naturalWidth > 0)"
    )
    size = page.evaluate(
        "() => { const i = document.querySelector('#real-photo img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [512, 512]  # the photo's own resolution
    served = page.request.get(image_src(page, "real-photo"))  # what the download button saves
    assert served.ok
    import io

    with Image.open(io.BytesIO(served.body())) as im:
        assert im.format == "PNG" and im.size == (512, 512)
        pasted = np.asarray(im.convert("RGB")).astype(int)
    original = np.asarray(Image.open(portrait).convert("RGB")).astype(int)
    changed = np.abs(pasted - original).max(-1) > 0
    assert changed.any() and not changed[:40].any() and not changed[:, :100].any()  # the face only, not the rest
    page.screenshot(path=os.path.join(screenshot_dir(), "app_real_portrait.png"), full_page=True)
    page.get_by_role("tab", name="Generate & edit").click()

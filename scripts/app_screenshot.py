"""Screenshot of the Space on the shipped models for the README: generate (seed 0), swap the eyes, full page.

    python -m scripts.app_screenshot docs/figures/app_screenshot.png
    python -m scripts.app_screenshot out.png --photo face.png   # the Real face tab: invert the photo, swap its eyes

Starts app.py's demo in-process on a free localhost port and drives it with headless Chromium (Playwright), as
tests/test_app_browser.py does with tiny models.
"""

import argparse
import os
import socket

from playwright.sync_api import expect, sync_playwright

import app
from model_files import ROOT

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_path", help="the PNG to write, e.g. docs/figures/app_screenshot.png")
    p.add_argument(
        "--photo",
        default=None,
        help="a face photo: upload it on the Real face tab, invert it at the "
        "default strength, swap its eyes with face B and screenshot the Real face tab",
    )
    p.add_argument("--region", default="eyes", help="the region to swap")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    out_path = os.path.abspath(args.out_path)
    photo = os.path.abspath(args.photo) if args.photo else None
    os.chdir(ROOT)  # the default model folders are relative to the repository
    models = app.load_models(app.DEFAULT_MODEL, app.DEFAULT_BASELINE)
    demo = app.build_demo(models)
    demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, css=app.CSS, **app.LAUNCH_KWARGS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000 if photo else 1800})
            page.set_default_timeout(180_000)
            expect.set_options(timeout=180_000)
            page.goto(demo.local_url, wait_until="domcontentloaded")
            page.locator("#generate").click()
            expect(page.locator("#gen-info")).to_contain_text("seed 0")
            if photo:
                page.get_by_role("tab", name="Real face").click()
                page.locator("#upload input[type=file]").set_input_files(photo)
                page.locator("#invert").click()
                expect(page.locator("#upload-info")).to_contain_text("PSNR")
                page.get_by_role("tab", name="Generate & edit").click()
            if args.region != "eyes":
                page.get_by_label(args.region).check()
            page.locator("#swap").click()
            expect(page.locator("#edit-info")).to_contain_text("Swapped")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#main-edited-a img, #baseline-edited-a img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            if photo:
                page.get_by_role("tab", name="Real face").click()
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#real-edited img')].every(i => i.complete && i.naturalWidth > 0)"
                )
            page.screenshot(path=out_path, full_page=True)
            browser.close()
    finally:
        demo.close()
    print("saved", out_path)


if __name__ == "__main__":
    main(parse_args())

# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Latency of the Space: one swap and one resample (the app's handlers, locality and heatmaps included) at several
step counts, of generated faces and of an uploaded photo (inverted at the default strength), and the time from launching `python app.py` to the first HTTP 200 of the page.

    python -m benchmarks.bench_app                       # the default model (models/interpretable-ddpm-faces64)
    python -m benchmarks.bench_app --model <dir>         # another pipeline folder
    python -m benchmarks.bench_app --random-weights      # a random-weight pipeline of the shipped size

Prints seconds (wall and this process's CPU seconds) and the ratio to the goal (<= 3 s per edit at the app's
default steps on 2 CPU cores). Each edit is the app's whole handler: mask, pipeline edit, locality, heatmaps.

Measured on the shipped model (`--steps 25 --num-threads 2 --skip-page`, 2-core box, 2026-12-03): swap of
generated faces 1.38 s, of an uploaded 64x64 photo 0.72 s, of a 1024x1024 portrait 0.71 s including finding and
aligning its face and pasting the edit back (0.24 of the goal); the portrait's upload itself (finding, aligning and
inverting the face, and inverting face B) took 1.84 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import torch

import app
import app_handlers
from model_files import ROOT

GOAL_SECONDS = 3.0


def make_random_pipeline(out_dir: str, data_dir: str | None = None) -> str:
    """Saves a random-weight 64x64 pipeline of the shipped UNet size, with concept templates from real label maps
    (or synthetic ones when the data is absent), and returns its folder."""
    from diffusers import DDIMScheduler, UNet2DModel

    import pipeline_interpretable_ddpm as pid
    from face_data import default_data_dir, load_faces, make_synthetic_faces

    data_dir = data_dir or default_data_dir()
    if not os.path.isdir(data_dir):
        data_dir = make_synthetic_faces(os.path.join(out_dir, "_faces"), num_train=16, num_test=16, size=64)
    faces = load_faces(data_dir, "test", limit=256)
    labels = torch.from_numpy(faces.labels[faces.has_mask]).long()
    concepts = pid.parse_concepts(None)
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=64,
        block_out_channels=(32, 64, 64, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    pipe = pid.InterpretableDDPMPipeline(
        unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False),
        concept_templates=pid.compute_concept_templates(labels, concepts),
    )
    path = os.path.join(out_dir, "random-interpretable-ddpm-faces64")
    pipe.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo_path(folder: str, models) -> str:
    """A face photo for the photo rows: a test face of the data set when present, else a generated face."""
    from PIL import Image

    from face_data import default_data_dir, load_faces

    path = os.path.join(folder, "photo.png")
    try:
        image = load_faces(default_data_dir(), "test", limit=8).images[4]
        Image.fromarray(image).save(path)
    except Exception:  # no data here: a generated face stands in for the photo
        out = models.main(generator=torch.Generator().manual_seed(4), num_inference_steps=10, output_type="pil")
        out.images[0].save(path)
    return path


def _portrait_path(folder: str) -> str:
    """A whole portrait for the portrait rows: scikit-image's astronaut (512x512, inside its wheel) at 1024x1024,
    the face about a fifth of the frame, as a JPEG."""
    import skimage.data
    from PIL import Image

    path = os.path.join(folder, "portrait.jpg")
    Image.fromarray(skimage.data.astronaut()).resize((1024, 1024), Image.BICUBIC).save(path, quality=92)
    return path


def time_edits(model_path: str, step_counts, repeats: int, baseline: str = "", compare: bool = False):
    """Median seconds of a swap and a resample at each step count: of generated faces (x_T), of an uploaded
    64x64 face photo (face A inverted at the default strength, swapped with generated face B, whose inversion at the
    same strength is made when the photo is inverted) and of a whole portrait (1024x1024: its face found and aligned
    by `find_faces`, and every edit pasted back into the photo; the swap column adds the detection and alignment of
    one `find_faces` call to the swap). Every call is the app's whole handler. Returns the app's default steps for
    this model (the folder's) and the rows."""
    models = app.load_models(model_path, baseline=baseline)
    handlers = app.SpaceApp(models)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = {"photo": _photo_path(tmp, models), "portrait": _portrait_path(tmp)}
        for steps in step_counts:
            for kind in ("generated", "photo", "portrait"):
                faces = handlers.generate(0, 1, steps, compare)[3]
                if kind != "generated":
                    faces = handlers.invert_upload(photos[kind], steps, compare, strength=None, session=faces)[4]
                timings = {"swap": [], "resample": [], "swap_cpu": [], "resample_cpu": []}
                for r in range(repeats + 1):  # the first call warms up
                    t0, c0 = time.perf_counter(), time.process_time()
                    if kind == "portrait":  # detection and alignment, as on each upload
                        handlers.find_faces(photos[kind])
                    # keywords: the handlers' trailing parameters (strength, peer, session) grow with the app
                    handlers.swap("eyes", 1, None, steps, compare, True, strength=None, session=faces)
                    t1, c1 = time.perf_counter(), time.process_time()
                    handlers.resample("mouth", 1, None, 100 + r, steps, compare, True, strength=None, session=faces)
                    t2, c2 = time.perf_counter(), time.process_time()
                    if r:
                        timings["swap"].append(t1 - t0)
                        timings["resample"].append(t2 - t1)
                        timings["swap_cpu"].append(c1 - c0)
                        timings["resample_cpu"].append(c2 - c1)
                rows.append(
                    (
                        steps,
                        kind,
                        *(statistics.median(timings[k]) for k in ("swap", "resample", "swap_cpu", "resample_cpu")),
                    )
                )
    return models.default_steps, rows


def time_to_first_page(model_path: str, num_threads=None, timeout: float = 300.0) -> float:
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "app.py"), "--model", model_path, "--baseline", "", "--port", str(port)]
        + (["--num-threads", str(num_threads)] if num_threads else []),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"No page after {timeout} s.")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Pipeline folder (default: the app's default model).")
    parser.add_argument(
        "--random-weights", action="store_true", help="Benchmark a random-weight shipped-size pipeline."
    )
    parser.add_argument("--steps", default="25,50,100", help="Comma-separated step counts.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--baseline", default="", help="Baseline pipeline folder for --compare (default: none).")
    parser.add_argument("--compare", action="store_true", help="Time the edits with the baseline comparison on.")
    parser.add_argument("--skip-page", action="store_true", help="Do not time python app.py to its first page.")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.random_weights:
            model = make_random_pipeline(tmp)
        model = model or app_handlers.find_default_model()
        if model is None:
            raise SystemExit("No default model yet; pass --model <dir> or --random-weights.")
        print(
            f"model: {model}   torch threads: {torch.get_num_threads()}   cpus: {os.cpu_count()}   "
            f"load average: {os.getloadavg()[0]:.1f}"
        )
        if not args.skip_page:
            ttfp = time_to_first_page(model, args.num_threads)
            print(f"time to first page (python app.py -> HTTP 200): {ttfp:.1f} s")
        print(
            "wall = elapsed seconds (depends on the machine's load); cpu = CPU seconds of this process, which with "
            "--num-threads 1 is what one idle core would take"
        )
        print(
            "faces: generated = x_T edits; photo = an uploaded 64x64 face A at the default strength with generated B; "
            "portrait = a 1024x1024 portrait (swap: + finding and aligning its face; edits pasted back into it)"
            + ("; baseline comparison ON" if args.compare else "; baseline comparison off")
        )
        print(
            f"{'steps':>5} | {'faces':>9} | {'swap wall':>9} | {'swap cpu':>8} | {'resample wall':>13} | {'resample cpu':>12} | "
            "swap / goal | resample / goal (wall)"
        )
        default_steps, rows = time_edits(
            model, [int(s) for s in args.steps.split(",")], args.repeats, args.baseline, args.compare
        )
        for steps, kind, swap_s, resample_s, swap_c, resample_c in rows:
            default = "  <- app default" if steps == default_steps else ""
            print(
                f"{steps:>5} | {kind:>9} | {swap_s:9.2f} | {swap_c:8.2f} | {resample_s:13.2f} | {resample_c:12.2f} | "
                f"{swap_s / GOAL_SECONDS:11.2f} | {resample_s / GOAL_SECONDS:15.2f}{default}"
            )


if __name__ == "__main__":
    main(parse_args())

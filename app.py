# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Gradio Space: interactive region edits on an interpretable face DDPM.

Run locally (offline, on the committed weights):

    python app.py                                   # models/interpretable-ddpm-faces64 (+ the baseline if present)
    python app.py --model <dir or Hub id> --baseline <dir or Hub id> --steps 25 --port 7860

or set `INTERPRETABLE_DDPM_MODEL` / `INTERPRETABLE_DDPM_BASELINE`. The models are loaded once at start. This file
only composes the page (layout and events); the handlers, the session state and the input checks are in
`app_handlers.py`, the pictures in `app_figures.py`, and every edit, mask and number comes from the pipeline
(`pipeline_interpretable_ddpm.py`).

Every event has an `api_name`, so the Space is scriptable with `gradio_client`:

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    client.predict(3, 7, 25, False, True, api_name="/generate")   # seeds, steps, compare, harmonised noise
    client.predict("eyes", 0, None, 25, False, True, api_name="/swap")
    client.predict(handle_file("me.png"), api_name="/find_faces")               # the faces found, largest first
    client.predict(handle_file("me.png"), 25, False, 0.5, "1", api_name="/invert")  # + strength, face number
    client.predict("mouth", 0, None, 3, 25, False, True, 0.5, api_name="/resample")

Arguments added later sit at the end of an event's inputs and may be left out; they then take the control's default:
the harmonised-noise flag (generate / resample / swap / attribute; the pipeline's `harmonize_noise` setting), the
strength of a photo's inversion (invert / resample / swap / keep_edit / show_mask / attribute; the pipeline's
default, 0.5), the face of the photo (invert; the largest) and the harmonised photo swap (swap; on). The baseline comparison starts off (an edit then costs one model run, not two).

The faces of a session (an `app_handlers.Session`) live in a `gr.State`, so edits reuse them; a
`gradio_client.Client` keeps its own session, so consecutive calls from one client see the same faces.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import gradio as gr
import torch

from app_figures import DISPLAY_SIZE
from app_handlers import (
    BASELINE_ENV,
    DEFAULT_BASELINE,
    DEFAULT_MODEL,
    MAX_ATTRIBUTION_TIMESTEPS,
    MAX_DILATION,
    MAX_FILE_SIZE,
    MAX_STEPS,
    MAX_UPLOAD_PIXELS,
    MODEL_ENV,
    PAINTED,
    SpaceApp,
    SpaceModels,
    default_strength,
    load_models,
)

__all__ = ["CSS", "LAUNCH_KWARGS", "build_demo", "load_models", "main", "parse_args"]

# Keyword arguments for `demo.launch` that belong to the app (tests launch with these too).
LAUNCH_KWARGS = dict(max_file_size=MAX_FILE_SIZE, show_error=True)


CSS = """
.face img, .face canvas { image-rendering: pixelated; }
"""


def face_image(label: str, elem_id: Optional[str] = None, height: int = 260, **kwargs) -> gr.Image:
    """An output image of a face (PNG, not editable, shown pixelated)."""
    kwargs.setdefault("elem_classes", "face")
    return gr.Image(
        label=label, elem_id=elem_id, type="numpy", format="png", interactive=False, height=height, **kwargs
    )


def build_demo(models: SpaceModels, concurrency_limit: int = 1, max_queue_size: int = 32) -> gr.Blocks:
    """Composes the Space around `models`; every event has an `api_name` and shares one model queue."""
    handlers = SpaceApp(models)
    h, w = models.resolution
    has_baseline = models.baseline is not None
    regions = models.concepts + [PAINTED]
    masks_from = "a face parser" if getattr(models.main, "parser", None) is not None else "template masks"
    strength0 = default_strength(models.main)
    local_max = getattr(models.lib, "LOCAL_EDIT_MAX_STRENGTH", None)
    queue = dict(concurrency_id="model", concurrency_limit=concurrency_limit)

    with gr.Blocks(title="Interpretable DDPM: region edits") as demo:
        session = gr.State(None)  # an app_handlers.Session
        attribution = gr.State(None)
        found = gr.State(None)  # an app_handlers.FoundFaces: the uploaded photo and its aligned faces
        gr.Markdown(
            "# Interpretable DDPM: edit one face part without touching the rest\n"
            f"A diffusion model of {h}x{w} faces trained with a Shapley dummy-player loss (Liu et al. 2025) so that "
            "the starting noise x_T inside a face part (eyes, nose, mouth) causes only that part of the image. "
            f"Redrawing or swapping x_T inside a part therefore edits that part only. Sampler: {models.sampler_text} "
            f"(a face is a function of its x_T). Model: `{models.main_name}`"
            + (f"; baseline (plain DDPM): `{models.baseline_name}`" if has_baseline else "; no baseline loaded")
            + f". Concept masks come from {masks_from}."
        )
        with gr.Row():
            steps = gr.Slider(
                1, MAX_STEPS, value=models.default_steps, step=1, label="Sampling steps (fewer = faster)"
            )
            compare = gr.Checkbox(  # off at start: with it an edit runs both models (twice the time)
                value=False,
                visible=has_baseline,
                elem_id="compare",
                label="Compare with the baseline model (same edit, side by side; about twice the time)",
            )
            peer = gr.Checkbox(
                value=False,
                visible=has_baseline,
                elem_id="peer",
                label="Comparison as the peer: the baseline's edit blended (RePaint-style masked DDIM)",
            )
            harmonize = gr.Checkbox(
                value=bool(models.main.config.harmonize_noise),
                elem_id="harmonize",
                label="Harmonised noise: tie each part's noise mean to the face's (for models whose parts read their colour "
                "from their own noise patch; off: plain Gaussian x_T; never applied to uploaded photos)",
            )
            harmonize_photo = gr.Checkbox(
                value=True,
                elem_id="harmonize-photo",
                label="Harmonised photo swap: a part swapped into a photo keeps its shape, not the donor's colour cast",
            )
        with gr.Tabs():
            with gr.Tab("Generate & edit"):
                with gr.Row():
                    seed_a = gr.Number(value=0, minimum=0, step=1, label="Seed A", elem_id="seed-a")
                    seed_b = gr.Number(value=1, minimum=0, step=1, label="Seed B", elem_id="seed-b")
                    dice = gr.Button("Random seeds", scale=0)
                    generate_btn = gr.Button("Generate A and B", variant="primary", elem_id="generate")
                gen_info = gr.Markdown(elem_id="gen-info")
                with gr.Row():
                    face_a = face_image("Face A", "face-a")
                    face_b = face_image("Face B", "face-b")
                    editor = gr.ImageEditor(
                        label="Paint a region on face A (used when region = painted)",
                        type="numpy",
                        image_mode="RGBA",
                        sources=(),
                        layers=False,
                        transforms=(),
                        format="png",
                        brush=gr.Brush(default_size=14, colors=["#ff3030"], color_mode="fixed"),
                        eraser=gr.Eraser(default_size=14),
                        canvas_size=(DISPLAY_SIZE, DISPLAY_SIZE),
                        elem_classes="face",
                        height=360,
                    )
                    overlay = face_image("Region on face A", "overlay")
                with gr.Row():
                    region = gr.Radio(regions, value=regions[0], label="Region")
                    dilation = gr.Slider(0, MAX_DILATION, value=1, step=1, label="Grow region by (pixels)")
                    mask_btn = gr.Button("Show region", scale=0)
                mask_info = gr.Markdown()
                with gr.Row():
                    new_seed = gr.Number(value=123, minimum=0, step=1, label="New noise seed (resample)")
                    resample_btn = gr.Button("Resample region of A", variant="primary", elem_id="resample")
                    swap_btn = gr.Button("Swap region between A and B", variant="primary", elem_id="swap")
                    keep_btn = gr.Button("Keep the edit as the new face(s)")
                panel = []
                for key, title, visible in (
                    ("main", models.main_name, True),
                    ("baseline", models.baseline_name, has_baseline),
                ):
                    with gr.Row(visible=visible):
                        for f in "AB":
                            with gr.Column():
                                with gr.Row():
                                    panel.append(
                                        face_image(f"{title}: edited {f}", f"{key}-edited-{f.lower()}", height=220)
                                    )
                                    panel.append(
                                        face_image(
                                            f"{title}: CIELAB change {f}", f"{key}-heatmap-{f.lower()}", height=220
                                        )
                                    )
                                panel.append(
                                    gr.Number(
                                        label=f"{title}: locality {f} (MSE_out / MSE_in, Lab; lower = more local)",
                                        interactive=False,
                                        elem_id=f"{key}-locality-{f.lower()}",
                                    )
                                )
                edit_info = gr.Markdown(elem_id="edit-info")

            with gr.Tab("Real face"):
                gr.Markdown(
                    f"Upload a photo with a face (PNG/JPEG, at most {MAX_FILE_SIZE} and "
                    f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels). The faces in it are found and aligned to {w}x{h} "
                    "exactly as the training faces were; pick one, and it is DDIM-inverted part of the way (to the "
                    "step at about strength x T) and becomes face A: edit it on the *Generate & edit* tab. Each edit "
                    "is shown here at the model's size and pasted back into the whole photo, at the photo's own "
                    "resolution (download it from its corner). Without a face, the photo's centre is used instead. A "
                    'swap with a generated face B inverts B\'s image at the same strength; "Keep the edit" makes '
                    "the edited photo a new photo, inverted again."
                )
                with gr.Row():
                    upload = gr.File(label="Photo", elem_id="upload", file_types=["image"], type="filepath")
                    found_gallery = gr.Gallery(label="Faces found, largest first", elem_id="found-faces", height=200)
                    with gr.Column():
                        face_pick = gr.Dropdown([], label="Face to edit", elem_id="face-pick", allow_custom_value=True)
                        strength = gr.Slider(
                            0.1,
                            1.0,
                            value=strength0,
                            step=0.05,
                            elem_id="strength",
                            label="Edit strength: more change (higher) vs more faithful to the photo (lower)",
                            info=f"How far the photo is inverted (about strength x T; 1.0 = all the way to x_T). Default "
                            f"{strength0:g}."
                            + (
                                f" Above {local_max:g} edits are not local on these models (the whole "
                                "face may change); a warning is shown."
                                if local_max
                                else ""
                            ),
                        )
                        invert_btn = gr.Button("Invert and use as face A", variant="primary", elem_id="invert")
                with gr.Row():
                    upload_small = face_image(f"Your face at {w}x{h}", "upload-small")
                    recon = face_image("Its inversion, regenerated")
                    real_edit = face_image("Last edit of face A (model above)", "real-edited")
                    real_locality = gr.Number(
                        label="Its locality (MSE_out / MSE_in, Lab; lower = more local)",
                        interactive=False,
                        elem_id="real-locality",
                    )
                upload_info = gr.Markdown(elem_id="upload-info")
                real_info = gr.Markdown(elem_id="real-edit-info")
                real_photo = gr.Image(
                    label="Your photo with the edit pasted back (full resolution)",
                    elem_id="real-photo",
                    type="pil",
                    format="png",
                    interactive=False,
                )

            with gr.Tab("Attribution explorer"):
                gr.Markdown(
                    "Exact Shapley values of the K x K game: how much input region j of x_t moves the predicted noise "
                    "of output region k, at each timestep t. An interpretable model has a diagonal matrix; leakage "
                    "is the off-diagonal share. Each analysed timestep costs 2^K UNet calls. *End to end* plays the game "
                    "the edits play: regions of x_T against regions of the final image (2^K full runs, about a minute "
                    "per model on 2 CPU cores at the shipped model's 100 steps, 16 s at 25)."
                )
                with gr.Row():
                    attr_face = gr.Radio(["A", "B"], value="A", label="Face")
                    attr_count = gr.Slider(1, MAX_ATTRIBUTION_TIMESTEPS, value=8, step=1, label="Timesteps to analyse")
                    attr_seed = gr.Number(
                        value=999, minimum=0, step=1, label="Seed of the other x_T (absent players' values)"
                    )
                    attr_btn = gr.Button("Compute attribution", variant="primary", elem_id="attribute")
                    e2e_btn = gr.Button(
                        "End to end (x_T -> image)", variant="secondary", elem_id="attribute-end-to-end"
                    )
                t_index = gr.Slider(
                    0,
                    1,
                    value=0,
                    step=1,
                    label="Timestep (index over the analysed t, left = noisy)",
                    interactive=False,
                )
                attr_info = gr.Markdown(elem_id="attr-info")
                with gr.Row():
                    matrix_main = face_image(
                        f"{models.main_name}: |phi|", "matrix-main", height=380, elem_classes=None
                    )
                    matrix_base = face_image(
                        f"{models.baseline_name}: |phi|", height=380, elem_classes=None, visible=has_baseline
                    )
                curve = face_image("Leakage over t", "leakage-curve", height=340, elem_classes=None)
                attr_json = gr.JSON(label="Leakage per timestep")

        # edits: the panel, its details, and the Real face tab's copy of face A's result (image, locality, note, photo)
        edit_outputs = panel + [edit_info, real_edit, real_locality, real_info, real_photo, session]
        dice.click(handlers.random_seeds, None, [seed_a, seed_b], api_name="random_seeds", queue=False)
        generate_btn.click(
            handlers.generate,
            [seed_a, seed_b, steps, compare, harmonize],
            [face_a, face_b, editor, session, gen_info],
            api_name="generate",
            **queue,
        ).success(
            handlers.show_mask,
            [region, dilation, editor, steps, strength, session],
            [overlay, mask_info],
            api_name="show_mask_after_generate",
            **queue,
        )
        mask_inputs = [region, dilation, editor, steps, strength, session]
        mask_btn.click(handlers.show_mask, mask_inputs, [overlay, mask_info], api_name="show_mask", **queue)
        region.change(
            handlers.show_mask,
            mask_inputs,
            [overlay, mask_info],
            api_name="show_mask_on_region_change",
            show_progress="hidden",
            **queue,
        )
        resample_btn.click(
            handlers.resample,
            [region, dilation, editor, new_seed, steps, compare, harmonize, strength, peer, session],
            edit_outputs,
            api_name="resample",
            **queue,
        )
        swap_btn.click(
            handlers.swap,
            [region, dilation, editor, steps, compare, harmonize, strength, peer, session, harmonize_photo],
            edit_outputs,
            api_name="swap",
            **queue,
        )
        keep_btn.click(
            handlers.keep_edit,
            [steps, strength, session],
            [face_a, face_b, editor, session, gen_info],
            api_name="keep_edit",
            **queue,
        )
        upload.change(
            handlers.find_faces,
            [upload, found],
            [found_gallery, face_pick, upload_info, found],
            api_name="find_faces",
            **queue,
        )
        invert_btn.click(
            handlers.invert_upload,
            [upload, steps, compare, strength, session, face_pick, found],
            [upload_small, recon, face_a, editor, session, upload_info, real_photo],
            api_name="invert",
            **queue,
        ).success(handlers.show_mask, mask_inputs, [overlay, mask_info], api_name="show_mask_after_invert", **queue)
        attr_btn.click(
            handlers.attribute,
            [attr_face, steps, attr_count, attr_seed, compare, harmonize, strength, session],
            [matrix_main, matrix_base, curve, t_index, attribution, attr_info, attr_json],
            api_name="attribute",
            **queue,
        )
        e2e_btn.click(
            handlers.attribute_end_to_end,
            [attr_face, steps, attr_seed, compare, harmonize, session],
            [matrix_main, matrix_base, attr_info, attr_json],
            api_name="attribute_end_to_end",
            **queue,
        )
        t_index.release(
            handlers.attribution_at,
            [t_index, attribution],
            [matrix_main, matrix_base, curve, attr_info],
            api_name="attribution_at_t",
            **queue,
        )
    demo.queue(max_size=max_queue_size, default_concurrency_limit=concurrency_limit)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    arg_parser = argparse.ArgumentParser(
        description="Gradio Space: interactive region edits of an interpretable DDPM."
    )
    arg_parser.add_argument(
        "--model", default=None, help=f"Pipeline folder or Hub id (env {MODEL_ENV}; default {DEFAULT_MODEL})."
    )
    arg_parser.add_argument(
        "--baseline",
        default=None,
        help=f"Baseline pipeline (env {BASELINE_ENV}; default {DEFAULT_BASELINE} if present; '' for none).",
    )
    arg_parser.add_argument(
        "--steps", type=int, default=None, help="Default sampling steps in the UI (default: the model folder's)."
    )
    arg_parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    arg_parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    arg_parser.add_argument("--concurrency", type=int, default=1, help="Model calls running at once (2 CPU cores: 1).")
    arg_parser.add_argument(
        "--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)."
    )
    arg_parser.add_argument("--share", action="store_true")
    args = arg_parser.parse_args(argv)
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        arg_parser.error(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}.")
    return args


def main(args: argparse.Namespace) -> None:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    models = load_models(args.model, args.baseline, args.steps)
    demo = build_demo(models, concurrency_limit=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, **LAUNCH_KWARGS)


if __name__ == "__main__":
    main(parse_args())

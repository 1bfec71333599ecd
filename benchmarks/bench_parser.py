"""Face-part parser: per-class IoU on test.parquet against the MediaPipe label maps, and parse time on CPU.

Runs the parser through the pipeline's own path (`pipe.parse`: normalisation, resize, logits upsampled to 64x64,
argmax, label mapping), so the numbers are those of `pipe.concept_mask`.

    python -m benchmarks.bench_parser                                   # models/face-parser-64
    python -m benchmarks.bench_parser --pipeline_dir models/interpretable-ddpm-faces64
    python -m benchmarks.bench_parser --parser_dir path/to/jonathandinu-face-parsing \
        --label_mapping celebamask-hq --parser_normalization imagenet --parser_resolution 512

IoU is dataset-level (intersections and unions summed over all test pixels of the faces that have a label map).
"eyes" pools labels 4 and 5 into one class (as the `eyes` concept does); the goal is a mean over eyes (pooled), nose
and mouth >= 0.8. Timing: median wall time of `pipe.parse` for one PIL face (batch 1, preprocessing included) and per
face in a batch, for each of `--num_threads` (default 1 and 2 torch threads); the load average is printed because a
shared machine slows everything down (2 threads on 2 busy cores oversubscribe them badly).
"""

import argparse
import os
import statistics
import time

import torch

import train_parser as tp
from face_data import default_data_dir
from model_files import ROOT, load_pipeline
from pipeline_interpretable_ddpm import FACE_PART_LABELS, InterpretableDDPMPipeline

TARGET_MS = 50.0
GOAL_IOU = 0.8


def build_pipeline(args):
    if args.pipeline_dir:
        pipe = load_pipeline(args.pipeline_dir)
        if pipe.parser is None:
            raise SystemExit(
                f"The pipeline in {args.pipeline_dir} has no parser; attach one with train_parser.py --mode attach."
            )
        return pipe
    from diffusers import DDIMScheduler, UNet2DModel
    from transformers import SegformerForSemanticSegmentation

    parser = SegformerForSemanticSegmentation.from_pretrained(args.parser_dir)
    # parse() never runs the UNet; a minimal one only sets the model resolution
    unet = UNet2DModel(
        sample_size=args.resolution,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return InterpretableDDPMPipeline(
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False),
        parser=parser,
        parser_label_mapping=tp._label_mapping_arg(args.label_mapping),
        parser_normalization=args.parser_normalization,
        parser_resolution=args.parser_resolution,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parser_dir", default=os.path.join(ROOT, "models", "face-parser-64"))
    p.add_argument("--pipeline_dir", default=None, help="use the parser of a saved pipeline instead")
    p.add_argument(
        "--data_dir", default=default_data_dir(), help="face data ($INTERPRETABLE_DDPM_DATA sets the default)"
    )
    p.add_argument("--label_mapping", default="identity")
    p.add_argument("--parser_normalization", default="minus_one_one")
    p.add_argument("--parser_resolution", type=int, default=None)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--num_threads", default="1,2", help="comma-separated torch thread counts to time with")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    thread_counts = [int(n) for n in args.num_threads.split(",")]

    pipe = build_pipeline(args)
    pipe.set_progress_bar_config(disable=True)
    images, labels = tp.load_labelled_faces(args.data_dir, "test")
    conf = torch.zeros(8, 8, dtype=torch.long)
    for start in range(0, len(images), args.batch_size):
        x = images[start : start + args.batch_size].float() / 127.5 - 1
        conf += tp.confusion_matrix(pipe.parse(x), labels[start : start + args.batch_size])
    iou = tp.iou_from_confusion(conf)
    params = sum(q.numel() for q in pipe.parser.parameters())
    print(
        f"parser: {type(pipe.parser).__name__}, {params / 1e6:.2f} M parameters, {pipe.parser.config.num_labels} labels, "
        f"normalization={pipe.config.parser_normalization}, parser_resolution={pipe.config.parser_resolution}"
    )
    print(f"IoU on {len(images)} test faces with label maps (dataset-level):")
    for c, name in FACE_PART_LABELS.items():
        print(f"  {c} {name:<11} {iou[name]:.3f}")
    print(f"  eyes (4+5 pooled) {iou['eyes']:.3f}   brows (2+3 pooled) {iou['brows']:.3f}")
    mean = iou["mean_eyes_nose_mouth"]
    print(
        f"mean IoU eyes(pooled)/nose/mouth: {mean:.3f} (goal {GOAL_IOU}: {'met' if mean >= GOAL_IOU else 'NOT met'}; "
        f"ratio {mean / GOAL_IOU:.2f})"
    )
    print(f"mean IoU left eye/right eye/nose/mouth: {iou['mean_eyes_lr_nose_mouth']:.3f}")

    one = pipe.postprocess(images[:1].float() / 127.5 - 1, "pil")
    batch = images[: args.batch_size].float() / 127.5 - 1
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for _ in range(3):
            pipe.parse(one)
        single = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            pipe.parse(one)
            single.append(time.perf_counter() - t)
        pipe.parse(batch)
        batched = []
        for _ in range(max(3, args.repeats // 10)):
            t = time.perf_counter()
            pipe.parse(batch)
            batched.append((time.perf_counter() - t) / len(batch))
        ms1, msb = statistics.median(single) * 1e3, statistics.median(batched) * 1e3
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"parse time on CPU ({threads} torch threads, load average {load:.1f} on {os.cpu_count()} cores):")
        print(
            f"  batch 1 (PIL in):     {ms1:.1f} ms/face (min {min(single) * 1e3:.1f})  "
            f"ratio to the {TARGET_MS:.0f} ms target: {ms1 / TARGET_MS:.2f}"
        )
        print(f"  batch {len(batch)} (tensor in): {msb:.2f} ms/face")


if __name__ == "__main__":
    main(parse_args())

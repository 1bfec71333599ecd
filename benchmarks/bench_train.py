"""Cost of one interpretable training step vs one plain DDPM step on the same batch, per L_IE estimator and K.

    python -m benchmarks.bench_train                      # CPU, bf16 autocast, batch 16, the shipped 64x64 UNet
    python -m benchmarks.bench_train --precision fp32 --device cuda --batch_size 128
    python -m benchmarks.bench_train --loop --script /path/to/older/train_interpretable.py   # whole-loop step time

Each configuration runs in a fresh subprocess (so its peak RSS is its own): build the UNet with
`train_interpretable.build_unet` (block_out_channels 32,64,64,128, layers_per_block 2, attention at the third level),
one warm-up step, then `--steps` timed steps of `train_interpretable.training_losses` + backward + gradient clipping +
AdamW. Memory is the peak resident set (`ru_maxrss`) minus the resident set before the first step on CPU, or
`torch.cuda.max_memory_allocated` on CUDA. The goal: the pair estimator costs <= 3x a plain step whatever K is, while
the sampled (K + 1 + C model calls per example) and exact (2^K) estimators grow with K.

`--loop` instead times the whole training loop (data loading, RNG, EMA, logging) of a `train_interpretable.py`
(`--script`, default this repository's) for `--loop_steps` steps of a plain DDPM and of the pair estimator, from its
`train_log.jsonl` step_time; run it with an older copy of the script to compare loop overheads.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from model_files import ROOT

CONCEPTS = {
    2: "eyes=4,5",
    4: "eyes=4,5 nose=6 mouth=7",
    6: "lbrow=2 rbrow=3 eyes=4,5 nose=6 mouth=7",
}


def configurations(ks, with_exact_k):
    """(name, estimator or None for the plain step, K, ie_batch_size)."""
    configs = [("plain DDPM", None, 4, None)]
    for k in ks:
        configs.append((f"pair K={k}", "pair", k, None))
    configs.append(("pair K=4, --ie_batch_size B/2", "pair", 4, "half"))
    for k in ks:
        configs.append((f"sampled C=4 K={k}", "sampled", k, None))
    for k in with_exact_k:
        configs.append((f"exact K={k}", "exact", k, None))
    return configs


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(cfg: dict) -> dict:
    """One configuration in this (fresh) process; returns seconds per step and peak memory."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    import pipeline_interpretable_ddpm as pid
    import train_interpretable as ti
    from face_data import synthetic_face

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    args = ti.build_arg_parser().parse_args(["--train_data_dir", ".", "--output_dir", "."])
    args.concepts = CONCEPTS[cfg["k"]]
    args.estimator = cfg["estimator"] or "pair"
    if args.estimator != "pair":
        args.ie_context = []  # the recipe's one-way game is the pair estimator's; the others play the symmetric one
    args.coalition_samples = 4
    args.ie_batch_size = cfg["batch_size"] // 2 if cfg["ie_batch_size"] == "half" else None
    torch.manual_seed(0)
    unet = ti.build_unet(args, 64).to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    rng = np.random.default_rng(0)
    faces = [synthetic_face(rng, 64) for _ in range(cfg["batch_size"])]
    images = torch.from_numpy(np.stack([np.asarray(f[0]) for f in faces])).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(np.stack([np.asarray(f[1]) for f in faces])).to(device)
    has_mask = torch.ones(len(faces), dtype=torch.bool, device=device)
    concepts = pid.parse_concepts(args.concepts)
    generator = torch.Generator(device=device)
    lam = 0.0 if cfg["estimator"] is None else 10.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16")

    def step(i):
        generator.manual_seed(i)
        with autocast:
            losses = ti.training_losses(
                unet,
                images,
                labels,
                has_mask,
                noise_scheduler=scheduler,
                concepts=concepts,
                args=args,
                lam=lam,
                generator=generator,
            )
        losses.loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(0)  # warm-up: allocator, optimizer state, kernels
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_now_mb()
    times = []
    for i in range(cfg["steps"]):
        t0 = time.perf_counter()
        step(i + 1)
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**20
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before  # KiB on Linux
    return {"seconds": float(np.median(times)), "memory_mb": mem}


def run_worker(cfg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train", "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_inputs(estimator, k, batch, ie_batch):
    """Images per UNet call of one step: B for the DDPM term plus nb x (coalitions per example)."""
    if estimator is None:
        return batch
    nb = ie_batch or batch
    per_example = {"pair": 2, "sampled": k + 1 + 4, "exact": 2**k}[estimator]
    return batch + nb * per_example


def bench_steps(opts) -> None:
    ks = [int(k) for k in opts.ks.split(",")]
    exact_ks = [int(k) for k in opts.exact_ks.split(",") if k]
    rows = []
    base = None
    print(
        f"device={opts.device} precision={opts.precision} batch={opts.batch_size} threads={opts.threads} "
        f"steps={opts.steps} (median), UNet 32,64,64,128 x2 layers, attention at level 3, 64x64",
        flush=True,
    )
    print(f"{'configuration':34s} {'images/step':>11s} {'s/step':>8s} {'x plain':>8s} {'peak MB':>9s} {'x plain':>8s}")
    for name, estimator, k, ie in configurations(ks, exact_ks):
        cfg = {
            "estimator": estimator,
            "k": k,
            "ie_batch_size": ie,
            "batch_size": opts.batch_size,
            "steps": opts.steps,
            "device": opts.device,
            "precision": opts.precision,
            "threads": opts.threads,
        }
        res = run_worker(cfg)
        n_in = step_inputs(estimator, k, opts.batch_size, opts.batch_size // 2 if ie == "half" else None)
        if "error" in res:
            print(f"{name:34s} {n_in:11d}   failed: {res['error']}", flush=True)
            continue
        if base is None:
            base = res
        rows.append({"name": name, **res})
        print(
            f"{name:34s} {n_in:11d} {res['seconds']:8.3f} {res['seconds'] / base['seconds']:8.2f} "
            f"{res['memory_mb']:9.0f} {res['memory_mb'] / max(base['memory_mb'], 1):8.2f}",
            flush=True,
        )
    by = {r["name"]: r for r in rows}
    if all(f"pair K={k}" in by for k in ks) and base:
        ratios = [by[f"pair K={k}"]["seconds"] / base["seconds"] for k in ks]
        print(
            f"pair estimator time ratio over K={ks}: {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(goal <= 3.0: {'met' if max(ratios) <= 3.0 else 'NOT met'})"
        )


def bench_loop(opts) -> None:
    """Whole-loop s/step of a train_interpretable.py (plain and pair) on synthetic 64x64 faces."""
    from face_data import make_synthetic_faces

    script = os.path.abspath(opts.script or os.path.join(ROOT, "train_interpretable.py"))
    tmp = tempfile.mkdtemp(prefix="bench_loop_")
    try:
        # the script imports the pipeline and face_data from its own folder
        if os.path.dirname(script) != ROOT:
            for name in ("pipeline_interpretable_ddpm.py", "face_data.py", "model_files.py"):
                if not os.path.exists(os.path.join(os.path.dirname(script), name)):
                    shutil.copy(os.path.join(ROOT, name), os.path.dirname(script))
        data = make_synthetic_faces(os.path.join(tmp, "data"), num_train=4 * opts.batch_size, num_test=2, size=64)
        env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads))
        print(f"loop: {script}, batch {opts.batch_size}, {opts.loop_steps} steps, precision {opts.precision}")
        for name, extra in (
            ("plain DDPM", ["--lambda_start", "0"]),
            ("pair K=4", ["--lambda_start", "10", "--estimator", "pair"]),
        ):
            out = os.path.join(tmp, name.split()[0])
            cmd = [
                sys.executable,
                script,
                "--train_data_dir",
                data,
                "--output_dir",
                out,
                "--report_to",
                "none",
                "--save_images_steps",
                "0",
                "--train_batch_size",
                str(opts.batch_size),
                "--max_train_steps",
                str(opts.loop_steps),
                "--log_every",
                str(max(opts.loop_steps // 3, 1)),
                "--checkpointing_steps",
                "100000",
                "--mixed_precision",
                "bf16" if opts.precision == "bf16" else "no",
                *extra,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{name}: failed: {proc.stderr[-800:]}")
                continue
            with open(os.path.join(out, "train_log.jsonl")) as f:
                logs = [json.loads(line) for line in f]
            times = [r["step_time"] for r in logs[1:]] or [logs[-1]["step_time"]]  # first window has warm-up
            print(
                f"{name:12s} {sum(times) / len(times):.3f} s/step (log windows after the first: {[round(t, 3) for t in times]})"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="Timed steps per configuration (after one warm-up).")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--ks", default="2,4,6", help="K values for the pair and sampled estimators.")
    p.add_argument("--exact_ks", default="4", help="K values for the exact estimator (2^K model calls per example).")
    p.add_argument("--loop", action="store_true", help="Time the whole training loop instead (see the module doc).")
    p.add_argument("--script", default=None)
    p.add_argument("--loop_steps", type=int, default=12)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(opts: argparse.Namespace) -> None:
    if opts.worker:
        print(json.dumps(worker(json.loads(opts.worker))))
    elif opts.loop:
        bench_loop(opts)
    else:
        bench_steps(opts)


if __name__ == "__main__":
    main(parse_args())

"""train_interpretable.py end to end, as real subprocesses on tiny synthetic faces: 2-process accelerate run, push to a
local stand-in of the Hub, kill + resume, the dummy-player loss falling only with lambda > 0, bad arguments, outputs."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import train_interpretable
from conftest import PIPELINE_FILE, ROOT, assert_lambda_zero_twins
from face_data import make_synthetic_faces

TRAIN = os.path.join(ROOT, "train_interpretable.py")
TINY = [
    "--resolution",
    "16",
    "--block_out_channels",
    "8,16",
    "--attention_levels",
    "0,1",
    "--layers_per_block",
    "1",
    "--report_to",
    "none",
    "--save_images_steps",
    "0",
    "--train_batch_size",
    "4",
    "--lr_warmup_steps",
    "0",
    "--log_every",
    "1",
    "--seed",
    "0",
    "--concepts",
    "eyes=4,5 nose=6 mouth=7",
]
HUB_REPO = "tester/tiny-interpretable-ddpm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def start(args, env=None, launcher=None):
    """A training subprocess (stdout and stderr merged); `launcher` is e.g. the accelerate launch prefix."""
    cmd = (launcher or [sys.executable]) + [TRAIN, *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc, timeout=240) -> str:
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-4000:]
    return out


def read_log(run_dir):
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


class HubStandIn:
    """The few Hub API endpoints create_repo + upload_folder use, on localhost; records what was committed."""

    def __init__(self):
        self.created, self.committed, self.unexpected = [], {}, []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                base = f"http://127.0.0.1:{stand_in.port}"
                if self.path == "/api/repos/create":
                    req = json.loads(body)
                    stand_in.created.append(req)
                    self._reply(200, {"url": f"{base}/{req['organization']}/{req['name']}"})
                elif self.path.startswith("/api/validate-yaml"):
                    self._reply(200, {})
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                            ]
                        },
                    )
                elif "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            stand_in.committed[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] != "header":
                            stand_in.unexpected.append(item["key"])
                    repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                    self._reply(
                        200,
                        {"commitUrl": f"{base}/{repo}/commit/abc123", "commitOid": "abc123", "pullRequestUrl": None},
                    )
                else:
                    stand_in.unexpected.append(("POST", self.path))
                    self._reply(404, {"error": "not in the stand-in"})

            def do_GET(self):
                stand_in.unexpected.append(("GET", self.path))
                self._reply(404, {"error": "not in the stand-in"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def two_process_run(tiny_faces, tmp_path_factory):
    """`accelerate launch --multi_gpu --num_processes 2` on this GPU-less machine (2 CPU processes over gloo; accelerate's
    `--cpu` launcher would run one process without mpirun) with lambda > 0 and --push_to_hub to a local Hub stand-in."""
    out = str(tmp_path_factory.mktemp("two_proc") / "run")
    hub = HubStandIn()
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    args = [
        "--train_data_dir",
        tiny_faces,
        "--output_dir",
        out,
        *TINY,
        "--max_train_steps",
        "3",
        "--checkpointing_steps",
        "2",
        "--lambda_start",
        "10",
        "--lambda_end",
        "1",
        "--sampler_steps",
        "5",
        "--push_to_hub",
        "--hub_model_id",
        HUB_REPO,
        "--hub_token",
        "hf_standin_token",
    ]
    env = child_env(HF_ENDPOINT=f"http://127.0.0.1:{hub.port}", HF_HUB_OFFLINE="0")
    try:
        log = finish(start(args, env=env, launcher=launcher), timeout=300)
    finally:
        hub.close()
    return out, hub, log


@pytest.mark.slow
def test_two_process_run_saves_a_loadable_pipeline(two_process_run):
    from diffusers import DiffusionPipeline

    out, _, log = two_process_run
    summary = json.load(open(os.path.join(out, "train_summary.json")))
    assert summary["train_steps"] == 3
    assert summary["images_seen"] == 3 * 4 * 2  # 2 processes of batch 4
    steps = [r["step"] for r in read_log(out)]
    assert steps == [1, 2, 3]
    assert all(r["lambda"] > 0 and r["loss_ie"] > 0 for r in read_log(out))
    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=PIPELINE_FILE, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "InterpretableDDPMPipeline"
    images = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np"
    ).images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    assert pipe.region_names == ["eyes", "nose", "mouth", "rest"]


@pytest.mark.slow
def test_saved_output_is_safetensors_with_config_and_model_card(two_process_run):
    out, _, _ = two_process_run
    files = [p for p in tree(out) if not p.startswith(("checkpoint-", "logs"))]
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not [p for p in files if p.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    index = json.load(open(os.path.join(out, "model_index.json")))
    assert index["_class_name"] == ["pipeline_interpretable_ddpm", "InterpretableDDPMPipeline"]
    # the saved pipeline samples with the recipe's eta and the run's steps unless a call says otherwise
    assert (index["eta"], index["num_inference_steps"]) == (train_interpretable.RECIPE["sampler_eta"], 5)
    with open(os.path.join(out, "pipeline_interpretable_ddpm.py")) as f, open(PIPELINE_FILE) as g:
        assert f.read() == g.read()
    config = json.load(open(os.path.join(out, "training_config.json")))
    assert config["lambda_start"] == 10 and config["estimator"] == "pair" and config["resolution"] == 16
    card = open(os.path.join(out, "README.md")).read()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["license"] == "other"
    assert {"diffusers", "interpretability"} <= set(meta["tags"]) and meta["datasets"]
    assert "base_model" not in meta  # trained from scratch
    assert "Interpretable DDPM" in card and "eyes=4,5 nose=6 mouth=7" in card
    # the last step checkpointed too: the run can be continued
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]


@pytest.mark.slow
def test_push_to_hub_uploads_the_pipeline_folder_without_checkpoints(two_process_run):
    out, hub, _ = two_process_run
    assert [(c["organization"], c["name"]) for c in hub.created] == [tuple(HUB_REPO.split("/"))]
    assert not hub.unexpected
    local = {p: b for p, b in tree(out).items() if not p.startswith(("checkpoint-", "logs"))}
    assert hub.committed == local  # every file of the pipeline folder, byte for byte, and nothing else
    for needed in (
        "model_index.json",
        "pipeline_interpretable_ddpm.py",
        "README.md",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "training_config.json",
    ):
        assert needed in hub.committed


def _resume_args(data, out):
    return [
        "--train_data_dir",
        data,
        "--output_dir",
        out,
        *TINY,
        "--max_train_steps",
        "8",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "2",
        "--lambda_start",
        "10",
        "--lambda_end",
        "1",
    ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_faces, tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    reference = start(_resume_args(tiny_faces, straight))
    victim = start(_resume_args(tiny_faces, killed))
    while not os.path.isdir(os.path.join(killed, "checkpoint-2")):  # pytest-timeout bounds the wait
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    done_at_kill = sorted(
        int(d.split("-")[1]) for d in os.listdir(killed) if d.startswith("checkpoint-") and "." not in d
    )
    assert done_at_kill and not os.path.exists(os.path.join(killed, "model_index.json")), "killed too late"
    finish(reference)

    resumed = finish(start(_resume_args(tiny_faces, killed) + ["--resume_from_checkpoint", "latest"]))
    assert f"checkpoint-{done_at_kill[-1]}" in resumed
    # the same global step: the log continues after the checkpoint, each step once
    assert [r["step"] for r in read_log(killed)] == list(range(1, 9))
    assert json.load(open(os.path.join(killed, "train_summary.json")))["train_steps"] == 8
    # --checkpoints_total_limit 2 kept the newest two
    for run in (straight, killed):
        assert sorted(d for d in os.listdir(run) if d.startswith("checkpoint-")) == ["checkpoint-6", "checkpoint-8"]
    # optimizer, EMA and weights continue exactly: the resumed run ends where the uninterrupted one did
    for sub in ("unet/diffusion_pytorch_model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"):
        a, b = (
            load_file(os.path.join(straight, "checkpoint-8", sub)),
            load_file(os.path.join(killed, "checkpoint-8", sub)),
        )
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{sub}:{k}")
    ema_a = json.load(open(os.path.join(straight, "checkpoint-8", "unet_ema", "config.json")))
    ema_b = json.load(open(os.path.join(killed, "checkpoint-8", "unet_ema", "config.json")))
    assert ema_a["optimization_step"] == ema_b["optimization_step"] == 8
    opt_a = torch.load(os.path.join(straight, "checkpoint-8", "optimizer.bin"), weights_only=False)
    opt_b = torch.load(os.path.join(killed, "checkpoint-8", "optimizer.bin"), weights_only=False)
    assert opt_a["state"].keys() == opt_b["state"].keys() and len(opt_a["state"]) > 0
    for k in opt_a["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_a["state"][k][name], opt_b["state"][k][name], rtol=0, atol=1e-6)
    assert [r["loss"] for r in read_log(straight)] == pytest.approx([r["loss"] for r in read_log(killed)], rel=1e-5)


@pytest.mark.slow
def test_dummy_player_loss_falls_with_lambda_and_not_without(tiny_faces, tmp_path):
    def args(lam, out):
        return [
            "--train_data_dir",
            tiny_faces,
            "--output_dir",
            out,
            *TINY,
            "--max_train_samples",
            "8",
            "--train_batch_size",
            "8",
            "--max_train_steps",
            "30",
            "--log_every",
            "3",
            "--checkpointing_steps",
            "1000",
            "--learning_rate",
            "2e-3",
            "--lambda_start",
            str(lam),
            "--lambda_end",
            str(lam or 1),
            "--no-use_ema",
            "--concepts",
            "eyes=4,5 mouth=7",
        ]

    runs = {lam: str(tmp_path / f"lam{lam}") for lam in (0, 100)}
    procs = {lam: start(args(lam, out)) for lam, out in runs.items()}
    for proc in procs.values():
        finish(proc)
    ie = {lam: np.array([r["loss_ie"] for r in read_log(out)]) for lam, out in runs.items()}
    assert len(ie[0]) == len(ie[100]) == 10 and (ie[0] > 0).all()  # logged every 3 steps in both cases
    first, last = {k: v[:4].mean() for k, v in ie.items()}, {k: v[-4:].mean() for k, v in ie.items()}
    assert last[100] < 0.3 * first[100], ie[100]
    assert last[0] > 0.4 * first[0], ie[0]
    assert last[100] < 0.2 * last[0], (ie[0], ie[100])


class RecordingUNet(torch.nn.Module):
    """A stand-in UNet for `training_losses`: records each forward's inputs `(x, t)` (image and any layout channels)
    in `calls`, predicts zeros."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return types.SimpleNamespace(sample=torch.zeros_like(x[:, :3], requires_grad=True))  # image channels only


def toy_part_faces(b: int, background: int = 0):
    """`b` random 16x16 faces, every one with the same part map (eyes 4 and 5, mouth 7 on `background`)."""
    labels = torch.full((b, 16, 16), background, dtype=torch.long)
    labels[:, 4:7, 3:6], labels[:, 4:7, 10:13], labels[:, 11:14, 6:10] = 4, 5, 7
    return torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8), labels


def toy_training_step(unet, images, labels, argv, lam=1.0, noise_scheduler=None):
    """One `training_losses` call on the toy faces (concepts eyes and mouth, no flips) with the flags `argv`;
    returns the parsed args."""
    from diffusers import DDPMScheduler

    import train_interpretable as ti

    args = ti.parse_args(
        [
            "--train_data_dir",
            ROOT,
            "--output_dir",
            "unused",
            "--concepts",
            "eyes=4,5 mouth=7",
            "--no-random_flip",
            *argv,
        ]
    )
    ti.training_losses(
        unet,
        images,
        labels,
        torch.ones(len(images), dtype=torch.bool),
        noise_scheduler=noise_scheduler or DDPMScheduler(num_train_timesteps=1000),
        concepts={"eyes": [4, 5], "mouth": [7]},
        args=args,
        lam=lam,
        generator=torch.Generator().manual_seed(0),
    )
    return args


def test_ie_min_timestep_moves_only_the_dummy_player_inputs_to_late_timesteps():
    """The coalition forwards run at t >= --ie_min_timestep on inputs noised to that t; the DDPM examples keep
    uniform timesteps; without the flag the coalitions share the DDPM examples' timesteps."""
    b, nb = 32, 8
    images, labels = toy_part_faces(b)
    for min_t in (0, 700):
        unet = RecordingUNet()
        toy_training_step(
            unet, images, labels, ["--ie_min_timestep", str(min_t), "--ie_batch_size", str(nb), "--ie_context", "rest"]
        )
        ((x, t),) = unet.calls  # one forward: the DDPM batch, then nb x 2 coalition inputs
        ddpm_t, coal_t = t[:b], t[b:].reshape(nb, 2)
        assert (coal_t[:, 0] == coal_t[:, 1]).all()
        if min_t == 0:
            assert torch.equal(coal_t[:, 0], ddpm_t[:nb])
        else:
            assert (coal_t >= min_t).all() and (ddpm_t < min_t).sum() >= b // 2  # uniform DDPM t: ~70% below 700
        # present players' pixels are the example's own x_t: the DDPM input itself without the flag, a fresh one with it
        same_as_ddpm_input = (x[b:].reshape(nb, 2, 3, 16, 16)[:, 0] == x[:nb]).float().mean()
        assert same_as_ddpm_input > 0.5 if min_t == 0 else same_as_ddpm_input == 0, (min_t, same_as_ddpm_input)


def test_ie_context_open_below_frees_the_rest_at_low_timesteps_only(monkeypatch):
    """--ie_context_open_below T takes the context region's outputs out of the game for the L_IE examples with t < T
    (the parts stay in it at every t); without the flag every region is in the game."""
    import pipeline_interpretable_ddpm as pid

    plans = []
    plan_coalitions = pid.plan_coalitions

    def recording_plan(regions, *args, **kwargs):
        plan = plan_coalitions(regions, *args, **kwargs)
        plans.append((args[-1] if len(args) == 6 else kwargs.get("open_outputs"), plan))
        return plan

    monkeypatch.setattr(pid, "plan_coalitions", recording_plan)
    b = nb = 64
    images, labels = toy_part_faces(b)
    for open_below in (0, 500):
        plans.clear()
        unet = RecordingUNet()
        toy_training_step(
            unet,
            images,
            labels,
            ["--ie_min_timestep", "100", "--ie_context_open_below", str(open_below), "--ie_batch_size", str(nb)]
            + ["--ie_context", "rest"],
        )
        ((open_outputs, plan),) = plans
        coal_t = unet.calls[0][1][b:].reshape(nb, 2)[:, 0]
        if open_below == 0:
            assert open_outputs is None and plan.num_outputs is None
            continue
        low = coal_t < open_below
        assert 0 < low.sum() < nb  # t in [100, 1000): both sides of 500 drawn
        assert torch.equal(open_outputs[:, 2], low) and not open_outputs[:, :2].any()  # rest only, below 500 only
        assert not (plan.out_k[low] == 2).any() and (plan.out_k[~low] == 2).any()
        assert torch.equal(plan.num_outputs, 3 - low.long())


def test_ie_regions_own_pair_union_and_template_partition_the_image():
    """own: each face's parts; pair_union: the face's parts joined with its baseline face's (the batch rolled by one,
    as make_baseline pairs them); template: the same concept templates for every face. Always a partition."""
    import types

    import train_interpretable as ti

    concepts = ti.pid.parse_concepts("eyes=4,5 nose=6 mouth=7")
    labels = torch.zeros(4, 16, 16, dtype=torch.long)
    labels[:, 4:6, 3:6], labels[:, 4:6, 10:13], labels[:, 8:10, 7:9], labels[:, 12:14, 6:10] = 4, 5, 6, 7
    labels[1] = labels[1].roll(2, 1)  # face 1's parts sit 2 px to the right
    labels[3] = 0  # a face without a part map
    for mode in ("own", "pair_union", "template"):
        args = types.SimpleNamespace(ie_regions=mode, mask_dilation=0, ie_context=["rest"], ie_presence=[])
        game = ti.game_settings(args, concepts, labels[:3])
        regions = ti.game_regions(labels, 3, concepts, args, game)
        assert regions.shape == (3, 4, 16, 16) and torch.equal(regions.sum(1), torch.ones(3, 16, 16))
        eyes = regions[:, 0].bool()
        own_eyes = torch.isin(labels[:3], torch.tensor([4, 5]))
        if mode == "own":
            assert torch.equal(eyes, own_eyes)
        elif mode == "pair_union":
            partner_eyes = torch.isin(labels.roll(1, 0)[:3], torch.tensor([4, 5]))
            assert torch.equal(eyes, own_eyes | partner_eyes)
            assert torch.equal(eyes[0], own_eyes[0])  # its baseline face (face 3) has no part map
            assert eyes[1].sum() > own_eyes[1].sum() and eyes[2].sum() > own_eyes[2].sum()
        else:  # the parts where at least half of the faces with a map have them (faces 0 and 2: face 1's own)
            assert (
                torch.equal(eyes[0], eyes[1]) and torch.equal(eyes[1], eyes[2]) and torch.equal(eyes[0], own_eyes[0])
            )
    with pytest.raises(ValueError, match="needs training faces with part maps"):
        ti.game_settings(types.SimpleNamespace(ie_regions="template", ie_context=[], ie_presence=[]), concepts, None)


def test_ie_presence_draws_the_named_player_into_the_coalitions_that_often():
    """--ie_presence eyes=0.95 puts the eyes' own noisy pixels (not the baseline's) into ~95% of the drawn coalitions
    S; without it, ~half."""
    b = 64
    images, labels = toy_part_faces(b)
    eyes_present = {}
    for presence in ([], ["eyes=0.95"]):
        unet = RecordingUNet()
        toy_training_step(
            unet,
            images,
            labels,
            [
                "--ie_batch_size",
                str(b),
                "--ie_min_timestep",  # the coalitions on the DDPM examples' own x_t, compared below
                "0",
                "--ie_context",  # the symmetric game: every player drawn with its presence
                "--ie_presence",
                *presence,
            ],
        )
        ((x, _),) = unet.calls
        in_s = x[b:].reshape(b, 2, 3, 16, 16)[:, 0]  # the drawn coalition S of each example
        eyes_present[len(presence)] = (in_s[:, :, 5, 4] == x[:b, :, 5, 4]).all(1).float().mean().item()
    assert eyes_present[1] > 0.85 and 0.3 < eyes_present[0] < 0.7, eyes_present


def _imagefolder_with_a_bad_mask(tmp_path):
    data = make_synthetic_faces(str(tmp_path / "bad_masks"), num_train=6, num_test=2, size=16, layout="imagefolder")
    masks = os.path.join(data, "train", "masks")
    name = sorted(os.listdir(masks))[0]
    Image.open(os.path.join(masks, name)).resize((32, 32), Image.NEAREST).save(os.path.join(masks, name))
    return data, name


@pytest.mark.slow
def test_bad_arguments_fail_before_training_with_a_clear_message(tiny_faces, tmp_path, two_process_run, capsys):
    import train_interpretable as ti

    finished, _, _ = two_process_run
    bad_mask_data, bad_mask = _imagefolder_with_a_bad_mask(tmp_path)
    before = {p: os.path.getmtime(os.path.join(finished, p)) for p in tree(finished)}
    cases = {  # name: (arguments, words the message must contain, as a real subprocess?)
        "unknown label id": (
            ["--train_data_dir", tiny_faces, "--concepts", "eyes=4,5 nose=9"],
            "unknown label id 9",
            True,
        ),
        "resolution mismatch": (
            ["--train_data_dir", tiny_faces, "--pretrained_model_name_or_path", finished, "--resolution", "32"],
            "--resolution 32 does not match the pretrained model's resolution 16",
            True,
        ),
        "missing data dir": (["--train_data_dir", str(tmp_path / "nowhere")], "nowhere' does not exist", False),
        "mask of another size": (["--train_data_dir", bad_mask_data], f"{bad_mask} is 32x32, its image 16x16", False),
        "finished output dir": (["--train_data_dir", tiny_faces, "--output_dir", finished], "already holds", False),
        "unknown context region": (
            ["--train_data_dir", tiny_faces, "--ie_context", "hair"],
            "--ie_context hair: not a region; the regions are eyes, nose, mouth, rest",
            False,
        ),
        "context with exact": (
            ["--train_data_dir", tiny_faces, "--ie_context", "rest", "--estimator", "exact"],
            "--ie_context needs --estimator pair",
            False,
        ),
        "unknown presence region": (
            ["--train_data_dir", tiny_faces, "--ie_presence", "hair=0.9"],
            "--ie_presence hair=0.9: expected REGION=P with REGION one of eyes, nose, mouth, rest",
            False,
        ),
        "presence of 1": (
            ["--train_data_dir", tiny_faces, "--ie_presence", "eyes=1"],
            "--ie_presence eyes=1: the probability must be in (0, 1)",
            False,
        ),
        "presence with exact": (
            ["--train_data_dir", tiny_faces, "--ie_presence", "eyes=0.9", "--estimator", "exact"],
            "--ie_presence needs --estimator pair or sampled",
            False,
        ),
        "pair union without another image": (
            ["--train_data_dir", tiny_faces, "--ie_regions", "pair_union", "--baseline", "noise"],
            "--ie_regions pair_union needs --baseline other_image",
            False,
        ),
        "context open past T": (
            ["--train_data_dir", tiny_faces, "--ie_context_open_below", "1001"],
            "--ie_context_open_below must be in [0, 1000]",
            False,
        ),
        "context open without context": (
            ["--train_data_dir", tiny_faces, "--ie_context_open_below", "500", "--ie_context"],
            "--ie_context_open_below needs --ie_context regions",
            False,
        ),
        "min timestep past T": (
            ["--train_data_dir", tiny_faces, "--ie_min_timestep", "1000"],
            "--ie_min_timestep must be in [0, 1000)",
            False,
        ),
    }

    def argv(name, extra):
        out = ["--output_dir", str(tmp_path / name.replace(" ", "_"))] if "--output_dir" not in extra else []
        return [*TINY, *out, *extra]  # argparse keeps the last --resolution

    procs = {
        name: subprocess.Popen(
            [sys.executable, TRAIN, *argv(name, extra)],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (extra, _, real) in cases.items()
        if real
    }
    results = {}
    for name, (extra, _, real) in cases.items():
        if not real:  # the same command-line entry point, in-process (saves an interpreter start on 2 loaded cores)
            try:
                code = ti.cli(argv(name, extra))
            except SystemExit as exit_:  # argparse's parser.error
                code = exit_.code
            captured = capsys.readouterr()
            results[name] = (code, captured.out, captured.err)
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        results[name] = (proc.returncode, stdout, stderr)
    for name, (code, stdout, stderr) in results.items():
        assert code == 2, (name, stderr[-3000:])
        assert cases[name][1] in stderr and "error:" in stderr, (name, stderr[-3000:])
        assert "Traceback" not in stderr, (name, stderr[-3000:])
        assert "train:" not in stderr + stdout, name  # no training step started
        if name != "finished output dir":
            assert not os.path.exists(tmp_path / name.replace(" ", "_")), name
    # the finished run's files are untouched
    assert {p: os.path.getmtime(os.path.join(finished, p)) for p in tree(finished)} == before


@pytest.mark.slow
def test_single_process_imagefolder_finetune_records_the_base_model(two_process_run, tmp_path):
    base, _, _ = two_process_run
    data = make_synthetic_faces(str(tmp_path / "imagefolder"), num_train=10, num_test=2, size=16, layout="imagefolder")
    out = str(tmp_path / "finetuned")
    args = [
        "--train_data_dir",
        data,
        "--output_dir",
        out,
        "--pretrained_model_name_or_path",
        base,
        "--report_to",
        "none",
        "--save_images_steps",
        "0",
        "--train_batch_size",
        "4",
        "--max_train_steps",
        "2",
        "--log_every",
        "1",
        "--checkpointing_steps",
        "5",
        "--lambda_start",
        "5",
        "--lambda_end",
        "1",
        "--estimator",
        "sampled",
        "--ie_context",  # no context region: the symmetric game, which the sampled estimator plays
        "--coalition_samples",
        "2",
        "--value",
        "mean",
        "--baseline",
        "noise",
        "--mask_dilation",
        "0",
    ]
    finish(start(args))
    assert [r["step"] for r in read_log(out)] == [1, 2]
    assert all(np.isfinite(r["loss_ie"]) and r["loss_ie"] > 0 for r in read_log(out))
    meta = yaml.safe_load(open(os.path.join(out, "README.md")).read().split("---")[1])
    assert meta["base_model"] == HUB_REPO  # the base run's --hub_model_id
    base_unet = json.load(open(os.path.join(base, "unet", "config.json")))
    new_unet = json.load(open(os.path.join(out, "unet", "config.json")))
    assert new_unet["block_out_channels"] == base_unet["block_out_channels"] and new_unet["sample_size"] == 16


@pytest.mark.slow
def test_v_prediction_zero_snr_finetune_trains_v_and_records_what_it_started_from(
    two_process_run, tiny_faces, tmp_path
):
    """Changing the prediction type and schedule of a pretrained model: the saved scheduler says so, the loss regresses
    v, and the run record holds the start weights' and first batch's digests (equal for an identical rerun)."""
    from diffusers import DiffusionPipeline, UNet2DModel

    base, _, _ = two_process_run
    args = [
        "--train_data_dir",
        tiny_faces,
        "--pretrained_model_name_or_path",
        base,
        "--report_to",
        "none",
        "--save_images_steps",
        "0",
        "--train_batch_size",
        "4",
        "--max_train_steps",
        "2",
        "--log_every",
        "1",
        "--checkpointing_steps",
        "5",
        "--lambda_start",
        "0",
        "--prediction_type",
        "v_prediction",
        "--rescale_betas_zero_snr",
        "--timestep_spacing",
        "trailing",
    ]
    runs = [str(tmp_path / "v1"), str(tmp_path / "v2")]
    for out in runs:
        finish(start([*args, "--output_dir", out]))
    sched = json.load(open(os.path.join(runs[0], "scheduler", "scheduler_config.json")))
    assert sched["prediction_type"] == "v_prediction" and sched["rescale_betas_zero_snr"] is True
    assert sched["timestep_spacing"] == "trailing"
    records = [json.load(open(os.path.join(out, "run_record.json"))) for out in runs]
    start_weights = UNet2DModel.from_pretrained(base, subfolder="unet").float().state_dict().values()
    assert records[0]["start_weights"] == train_interpretable.tensor_digest(*start_weights)
    assert records[0]["environment"]["torch"] == torch.__version__
    assert records[0]["first_batch"] == records[1]["first_batch"]
    assert set(records[0]["first_batch"]) == {"images", "labels", "noise", "timesteps", "loss"}
    pipe = DiffusionPipeline.from_pretrained(runs[0], custom_pipeline=PIPELINE_FILE, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    images = pipe(
        batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np"
    ).images
    assert np.isfinite(images).all()


def test_regression_target_and_min_snr_weights_follow_the_prediction_type():
    from diffusers import DDPMScheduler

    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    for kind in ("epsilon", "v_prediction", "sample"):
        sched = DDPMScheduler(prediction_type=kind, rescale_betas_zero_snr=kind != "epsilon")
        target = train_interpretable.regression_target(sched, x0, noise, t)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        expected = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0, "sample": x0}[kind]
        torch.testing.assert_close(target, expected)
        w = train_interpretable.snr_weights(sched, t, 5.0)
        assert torch.isfinite(w).all()
        snr = a.flatten() / (1 - a.flatten())
        # every weighting puts min(SNR, gamma) on the x_0 error: eps error = SNR * x_0 error, v error = (SNR + 1) * x_0 error
        scale = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[kind]
        torch.testing.assert_close(w * scale, snr.clamp(max=5.0))


def test_harmonize_noise_trains_on_noise_whose_part_means_follow_the_band_around_them(monkeypatch):
    """--harmonize_noise: the DDPM target noise has each concept region's mean tied to the rest band around the
    regions (as the pipeline draws x_T), per example from its own part map; without the flag the noise is as drawn."""
    from diffusers import DDPMScheduler

    import pipeline_interpretable_ddpm as pid
    import train_interpretable as ti

    targets = []
    original = ti.regression_target
    monkeypatch.setattr(
        ti, "regression_target", lambda sched, x0, noise, t: targets.append(noise) or original(sched, x0, noise, t)
    )

    b = 4
    images, labels = toy_part_faces(b, background=1)
    labels[1] = 0  # a face without a part map: its noise stays as drawn
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="epsilon")
    concepts = {"eyes": [4, 5], "mouth": [7]}
    for flag in ("--no-harmonize_noise", "--harmonize_noise"):
        args = toy_training_step(
            RecordingUNet(), images, labels, ["--lambda_start", "0", "--snr_gamma", "0", flag], 0.0, scheduler
        )
    drawn, harmonized = targets
    regions = pid.region_partition(labels, concepts, args.mask_dilation)[:, :-1]
    band = pid.harmonization_reference(regions)

    def mean(x, m):
        return (x * m).sum((-2, -1)) / m.sum((-2, -1)).clamp_min(1)

    for i in (0, 2, 3):
        for k in range(regions.shape[1]):
            torch.testing.assert_close(mean(harmonized[i], regions[i, k]), mean(harmonized[i], band[i, 0]))
        assert not torch.allclose(mean(drawn[i], regions[i, 0]), mean(drawn[i], band[i, 0]))
    torch.testing.assert_close(harmonized[1], drawn[1])
    outside = (regions.sum(1, keepdim=True) == 0).expand_as(drawn)
    torch.testing.assert_close(harmonized[outside], drawn[outside])


@pytest.mark.slow
def test_default_models_script_continues_a_plain_model_with_the_release_schedule_and_trains_twins(
    two_process_run, tiny_faces, tmp_path
):
    """scripts/train_default_models.sh, the release recipe end to end on tiny data: the plain continuation switches
    to v-prediction with zero terminal SNR and trailing steps, and the two branches are twins (same steps, seed and
    settings; only lambda and the game's flags differ)."""
    base, _, _ = two_process_run
    runs = str(tmp_path / "runs")
    env = child_env(
        PY=sys.executable,
        RUNS=runs,
        PRETRAIN_FROM=base,
        PRETRAIN_STEPS="2",
        FINETUNE_STEPS="2",
        BATCH="4",
        IE_BATCH="2",
        SEED="3",
        SAMPLE_STEPS="0",
        EXTRA="--resolution 16",
        INTERPRETABLE_DDPM_DATA=tiny_faces,
    )
    script = os.path.join(ROOT, "scripts", "train_default_models.sh")
    done = subprocess.run(["bash", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    sched = json.load(open(os.path.join(runs, "pretrain", "scheduler", "scheduler_config.json")))
    assert (sched["prediction_type"], sched["rescale_betas_zero_snr"], sched["timestep_spacing"]) == (
        "v_prediction",
        True,
        "trailing",
    )
    configs = {
        n: json.load(open(os.path.join(runs, n, "training_config.json"))) for n in ("interpretable", "baseline")
    }
    assert configs["interpretable"]["seed"] == configs["baseline"]["seed"] == 3
    assert configs["interpretable"]["ie_batch_size"] == 2
    assert_lambda_zero_twins(configs["interpretable"], configs["baseline"])
    for name in ("interpretable", "baseline"):
        assert json.load(open(os.path.join(runs, name, "train_summary.json")))["train_steps"] == 2
        branch_sched = json.load(open(os.path.join(runs, name, "scheduler", "scheduler_config.json")))
        assert branch_sched["prediction_type"] == "v_prediction"

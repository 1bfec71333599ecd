"""Training never loses work: `kill -9` at random moments (during saves included) always resumes with
`--resume_from_checkpoint latest` to the bit-identical result of an uninterrupted run; a full disk at a checkpoint or
at the final save gives a clear message and keeps the previous checkpoint; a resume that would change what defines
the model or its objective is refused before any file is touched; damaged checkpoints are skipped by `latest`; a
half-written pipeline folder is refused by the loader.

The training runs are real processes killed with SIGKILL. They are forked from the test process (which has torch,
diffusers and accelerate imported already), so that the dozens of starts cost milliseconds, not interpreter starts.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

import pytest
import torch
from safetensors.torch import load_file

import model_files
import test_train
import train_interpretable as ti

# test_train's tiny model and run settings (its concepts are the default ones), with the dummy-player loss on
TINY = [*test_train.TINY, "--lambda_start", "10", "--lambda_end", "1"]
STEPS = 10


def run_args(data, out, *extra):
    return [
        "--train_data_dir",
        data,
        "--output_dir",
        out,
        *TINY,
        "--max_train_steps",
        str(STEPS),
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "1",
        *extra,
    ]


def fork_training(argv, log_path):
    """A training process (`train_interpretable.cli(argv)`) forked from this one; its output goes to `log_path`.
    Refused while other threads run here, since the child would inherit the locks they hold (conftest keeps the
    telemetry and tqdm threads away); idle thread-pool workers left by the app's tests wait on their queue holding no
    lock, and are allowed."""
    others = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith("ThreadPoolExecutor-")
    ]
    assert not others, f"forking a training child with other threads running: {others}"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            code = ti.cli(argv)
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
        finally:  # whatever happened above, the child ends here (an int, else os._exit itself would raise)
            os._exit(code if isinstance(code, int) else 3)
    return pid


def exit_code(status):
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def wait_exit(pid, timeout=300):
    """Exit status of a forked child (negative: killed by that signal)."""
    return kill_when(pid, lambda: False, timeout, kill_at_timeout=True)[1]


def kill_when(pid, condition, timeout, kill_at_timeout=False):
    """Polls `condition()` every ~1 ms and SIGKILLs the child as soon as it holds. Returns `(killed, exit code)`:
    killed is True when the kill met the child still running; the exit code is None while it still runs (the condition
    never held within `timeout`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return False, exit_code(status)
        if condition():
            os.kill(pid, signal.SIGKILL)
            return True, exit_code(os.waitpid(pid, 0)[1])
        time.sleep(0.001)
    if kill_at_timeout:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("training child did not finish")
    return False, None


def unet_weights(path):
    return load_file(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))


def assert_bit_identical(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def final_weights(run_dir):
    """The final pipeline's (EMA) UNet and the last checkpoint's raw UNet and EMA weights."""
    ckpt = os.path.join(run_dir, f"checkpoint-{STEPS}")
    return {
        "pipeline unet": unet_weights(run_dir),
        "checkpoint unet": unet_weights(ckpt),
        "checkpoint unet_ema": load_file(os.path.join(ckpt, "unet_ema", "diffusion_pytorch_model.safetensors")),
    }


@pytest.fixture(scope="module")
def reference_run(tiny_faces, tmp_path_factory):
    """The uninterrupted run every killed run must end identical to; also its wall time, to place random kills."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    t0 = time.time()
    code = wait_exit(fork_training(run_args(tiny_faces, out), out + ".log"))
    assert code == 0, open(out + ".log").read()[-3000:]
    return out, time.time() - t0


def save_in_progress(run_dir, since=0.0):
    """A condition: a checkpoint or the final pipeline is being written into `run_dir` (a `*.partial` folder made
    after `since`; one left by an earlier killed run does not count)."""

    def check():
        try:
            names = os.listdir(run_dir)
        except FileNotFoundError:
            return False
        for name in names:
            if name.endswith(".partial") or name == model_files.PIPELINE_PARTIAL:
                try:
                    if os.stat(os.path.join(run_dir, name)).st_ctime >= since:
                        return True
                except FileNotFoundError:
                    pass
        return False

    return check


@pytest.mark.slow
def test_random_kills_always_resume_to_the_bit_identical_result(tiny_faces, reference_run, tmp_path):
    """20+ SIGKILLs: at random moments of the run, and aimed at saves (while a checkpoint or the final pipeline is
    being written, or a few ms after a save began: during the write, the marker, the rename or the pruning). After
    every kill `--resume_from_checkpoint latest` must work; every run ends bit-identical to the uninterrupted one."""
    reference, duration = reference_run
    expected = final_weights(reference)
    rng = random.Random(0)
    kills = resumes = runs = during_save = 0
    target_kills = 20
    while kills < target_kills:
        runs += 1
        out = str(tmp_path / f"run{runs}")
        log = out + ".log"
        first = True
        while True:
            argv = run_args(tiny_faces, out, *([] if first else ["--resume_from_checkpoint", "latest"]))
            resumes += not first
            first = False
            started = time.time()
            pid = fork_training(argv, log)
            mode = (kills + runs) % 3 if kills < target_kills else None
            if mode == 0:  # a random moment of the whole run (set-up, steps, saves)
                killed, code = kill_when(
                    pid, lambda t=time.time() + rng.uniform(0.05, duration): time.time() > t, duration
                )
            elif mode == 1:  # as soon as a save has begun
                killed, code = kill_when(pid, save_in_progress(out, started), duration * 2)
            elif mode == 2:  # a random few ms into a save

                def later(check=save_in_progress(out, started), delay=rng.uniform(0.0, 0.03), seen=[]):  # noqa: B006 (one call)
                    if not seen and check():
                        seen.append(time.time())
                    return bool(seen) and time.time() > seen[0] + delay

                killed, code = kill_when(pid, later, duration * 2)
            else:
                killed, code = False, None
            if killed:
                kills += 1
                during_save += save_in_progress(out, started)()  # what the kill interrupted: a save, else the rest
                # what a killed run leaves: never a checkpoint-STEP folder that is not complete
                for name in model_files.list_checkpoints(out):
                    assert model_files.checkpoint_problem(os.path.join(out, name)) is None, (name, kills)
                continue
            if code is None:
                code = wait_exit(pid)
            assert code == 0, open(log).read()[-4000:]
            break
        got = final_weights(out)
        for what in expected:
            assert_bit_identical(expected[what], got[what], f"run {runs}, {what}")
        steps = [json.loads(line)["step"] for line in open(os.path.join(out, "train_log.jsonl"))]
        assert steps == list(range(1, STEPS + 1)), steps  # each step logged once, whatever was redone
        assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == [f"checkpoint-{STEPS}"]
        assert not [n for n in os.listdir(out) if ".partial" in n or ".old" in n or ".tmp" in n]
    print(
        f"kill test: {kills} kills ({during_save} during a save) over {runs} runs, {resumes} resumes, "
        f"all {runs} runs bit-identical"
    )
    assert kills >= target_kills and resumes >= kills and during_save >= target_kills // 3


# ----------------------------------------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs (room for one checkpoint of the tiny model, not two); skipped where mounting is not allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the simulated ENOSPC test covers it")
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow  # forked training runs
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resumes(tiny_faces, reference_run, small_disk):
    """A real filled disk: checkpoint-2 fits, checkpoint-4 does not. The run stops with one clear line, checkpoint-2
    is intact, nothing half-written is left; with space freed, `latest` resumes to the uninterrupted result."""
    reference, _ = reference_run
    out = os.path.join(small_disk, "run")
    log = small_disk + ".log"
    code = wait_exit(fork_training(run_args(tiny_faces, out), log))
    text = open(log).read()
    assert code == 1, text[-3000:]
    assert "error: no space left on device while writing checkpoint-4" in text, text[-3000:]
    assert "the previous checkpoint-2 is intact" in text and "Traceback" not in text
    assert "basic_ios" not in text.split("error:")[-1]
    names = sorted(os.listdir(out))
    assert [n for n in names if n.startswith("checkpoint-")] == ["checkpoint-2"], names
    assert model_files.checkpoint_problem(os.path.join(out, "checkpoint-2")) is None
    # more space (what a user does next), then the same command with latest
    subprocess.run(["mount", "-o", "remount,size=8m", small_disk], check=True)
    code = wait_exit(fork_training(run_args(tiny_faces, out, "--resume_from_checkpoint", "latest"), log))
    assert code == 0, open(log).read()[-3000:]
    expected, got = final_weights(reference), final_weights(out)
    for what in expected:
        assert_bit_identical(expected[what], got[what], what)


@pytest.mark.slow  # forked training runs
def test_a_full_disk_reported_as_enospc_always_gives_the_clear_message(tiny_faces, tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted: the save of checkpoint-4 raises OSError(ENOSPC) as a full disk would, the
    final save too; both end in one `error:` line that names what is intact, and the partial folder is gone."""
    from accelerate import Accelerator

    real_save = Accelerator.save_state

    def full_at_4(self, output_dir=None, **kw):
        if os.path.basename(output_dir).startswith("checkpoint-4"):
            os.makedirs(output_dir, exist_ok=True)
            open(os.path.join(output_dir, "optimizer.bin"), "wb").write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", full_at_4)
    out = str(tmp_path / "run")
    assert ti.cli(run_args(tiny_faces, out)) == 1
    err = capsys.readouterr().err
    assert (
        f"error: no space left on device while writing checkpoint-4 in '{out}'; the previous checkpoint-2 is intact"
        in err
    )
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-2"]

    # the final pipeline: the disk fills while it is written
    monkeypatch.setattr(Accelerator, "save_state", real_save)

    def full_pipeline(self, save_directory, *a, **kw):
        os.makedirs(os.path.join(save_directory, "unet"), exist_ok=True)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . basic_ios::clear: iostream error")

    import pipeline_interpretable_ddpm as pid

    monkeypatch.setattr(pid.InterpretableDDPMPipeline, "save_pretrained", full_pipeline)
    monkeypatch.setattr(model_files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    assert ti.cli(run_args(tiny_faces, out, "--resume_from_checkpoint", "latest")) == 1
    err = capsys.readouterr().err
    assert "error: no space left on device while writing the final pipeline" in err, err[-2000:]
    assert f"checkpoint-{STEPS} is intact" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(out, "model_index.json"))
    assert not os.path.exists(os.path.join(out, model_files.PIPELINE_PARTIAL))


# ----------------------------------------------------------------------------------------------------------------------
# Resume checks and damaged checkpoints
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped_run(tiny_faces, tmp_path_factory):
    """A run stopped after step 6 of 10 (checkpoints 4 and 6 kept), as a template the tests copy."""
    out = str(tmp_path_factory.mktemp("stopped") / "run")
    argv = run_args(tiny_faces, out)
    argv[argv.index("--checkpoints_total_limit") + 1] = "2"
    argv[argv.index("--max_train_steps") + 1] = "6"
    code = wait_exit(fork_training(argv, out + ".log"))
    assert code == 0, open(out + ".log").read()[-3000:]
    os.remove(os.path.join(out, "model_index.json"))  # as if killed before the final save
    return out


RESUME_MISMATCHES = {  # extra flags: what the message must name
    "prediction type": (["--prediction_type", "v_prediction"], "--prediction_type: 'epsilon' in the checkpoint"),
    "channels": (["--block_out_channels", "8,32"], "--block_out_channels: [8, 16] in the checkpoint, [8, 32] now"),
    "attention": (["--attention_levels", "1,1"], "--attention_levels (down_block_types)"),
    "layers": (["--layers_per_block", "2"], "--layers_per_block: 1 in the checkpoint, 2 now"),
    "zero snr": (
        ["--prediction_type", "v_prediction", "--rescale_betas_zero_snr"],
        "--rescale_betas_zero_snr: False in the checkpoint, True now",
    ),
    "spacing": (["--timestep_spacing", "trailing"], "--timestep_spacing: 'leading' in the checkpoint"),
    "beta schedule": (["--beta_schedule", "squaredcos_cap_v2"], "--beta_schedule: 'linear' in the checkpoint"),
    "concepts": (["--concepts", "eyes=4,5 mouth=7"], "--concepts: 'eyes=4,5 nose=6 mouth=7' in the checkpoint"),
    "value": (["--value", "mean"], "--value: 'pixel' in the checkpoint, 'mean' now"),
    "snr gamma": (["--snr_gamma", "5"], "--snr_gamma: 0.0 in the checkpoint, 5.0 now"),
    "snr floor": (["--snr_floor", "0.2"], "--snr_floor: 0.0 in the checkpoint, 0.2 now"),
    "ie weighting": (["--ie_timestep_weighting", "ddpm"], "--ie_timestep_weighting: 'none' in the checkpoint"),
    "no ema": (["--no-use_ema"], "--use_ema: True in the checkpoint, False now"),
}


@pytest.mark.slow  # forked training runs
def test_a_resume_that_changes_the_model_or_objective_is_refused_before_any_write(
    stopped_run, tiny_faces, tmp_path, capsys
):
    run = str(tmp_path / "run")
    shutil.copytree(stopped_run, run)
    before = test_train.tree(run)
    for name, (extra, message) in RESUME_MISMATCHES.items():
        argv = run_args(tiny_faces, run, "--resume_from_checkpoint", "latest", *extra)
        try:
            code = ti.cli(argv)
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and "nothing was written" in err, (name, err[-2000:])
        assert "Traceback" not in err
        assert test_train.tree(run) == before, name  # training_config.json, run_record.json, logs: untouched


@pytest.fixture
def resumable(stopped_run, tiny_faces, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(stopped_run, run)
    return run


def resume_latest_to_step_6(resumable: str, tiny_faces: str) -> str:
    """Resumes the run with `--resume_from_checkpoint latest` up to step 6; returns its log after a clean exit."""
    log = resumable + ".resume.log"
    argv = run_args(tiny_faces, resumable, "--resume_from_checkpoint", "latest")
    argv[argv.index("--max_train_steps") + 1] = "6"
    code = wait_exit(fork_training(argv, log))
    text = open(log).read()
    assert code == 0, text[-3000:]
    return text


@pytest.mark.slow  # forked training runs
def test_latest_skips_a_truncated_checkpoint_with_one_warning(resumable, tiny_faces):
    weights = os.path.join(resumable, "checkpoint-6", "unet", "diffusion_pytorch_model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(1000)
    text = resume_latest_to_step_6(resumable, tiny_faces)
    assert f"warning: skipping {os.path.join(resumable, 'checkpoint-6')}: it is incomplete or damaged" in text
    assert "unet/diffusion_pytorch_model.safetensors has 1000 bytes" in text
    assert f"Resuming from {os.path.join(resumable, 'checkpoint-4')}" in text and "Traceback" not in text
    # steps 5 and 6 were redone and checkpoint-6 written anew, complete
    assert model_files.checkpoint_problem(os.path.join(resumable, "checkpoint-6")) is None


@pytest.mark.slow  # forked training runs
def test_latest_falls_back_when_a_checkpoint_cannot_be_read(resumable, tiny_faces):
    """Damage the completeness check cannot see (same size, garbage bytes): the load fails, one warning line names
    it, and the run continues from the checkpoint before."""
    optimizer = os.path.join(resumable, "checkpoint-6", "optimizer.bin")
    size = os.path.getsize(optimizer)
    with open(optimizer, "wb") as f:
        f.write(b"\0" * size)
    text = resume_latest_to_step_6(resumable, tiny_faces)
    assert f"warning: {os.path.join(resumable, 'checkpoint-6')} cannot be read (" in text
    assert f"falling back to {os.path.join(resumable, 'checkpoint-4')}" in text
    assert "Traceback" not in text


@pytest.mark.slow  # forked training runs
def test_a_resume_with_no_save_left_still_prunes_to_the_limit(resumable, tiny_faces):
    """A run killed after its last save but before that save pruned the one before (here: checkpoints 4 and 6 with
    --checkpoints_total_limit 1), resumed with nothing left to train: the resume prunes, leaving only checkpoint-6."""
    assert model_files.list_checkpoints(resumable) == ["checkpoint-4", "checkpoint-6"]
    text = resume_latest_to_step_6(resumable, tiny_faces)
    assert f"Resuming from {os.path.join(resumable, 'checkpoint-6')}" in text
    assert model_files.list_checkpoints(resumable) == ["checkpoint-6"]
    assert os.path.exists(os.path.join(resumable, "model_index.json"))
    assert not [n for n in os.listdir(resumable) if ".deleting" in n or ".partial" in n]


@pytest.mark.slow  # forked training runs
def test_an_explicit_damaged_checkpoint_is_refused_clearly(resumable, tiny_faces, capsys):
    os.remove(os.path.join(resumable, "checkpoint-6", "optimizer.bin"))
    argv = run_args(tiny_faces, resumable, "--resume_from_checkpoint", os.path.join(resumable, "checkpoint-6"))
    assert ti.cli(argv) == 2
    err = capsys.readouterr().err
    assert "is incomplete or damaged (optimizer.bin is missing); resume from an earlier checkpoint" in err


def test_a_half_written_pipeline_folder_is_refused_by_the_loader(tmp_path):
    from conftest import tiny_pipeline

    folder = str(tmp_path / "pipe")
    model_files.save_pipeline(tiny_pipeline(), folder)
    model_files.load_pipeline(folder)  # complete: loads
    weights = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    data = open(weights, "rb").read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(FileNotFoundError, match="holds an incomplete pipeline: unet/diffusion_pytorch_model"):
        model_files.load_pipeline(folder)
    shutil.rmtree(os.path.join(folder, "unet"))
    with pytest.raises(FileNotFoundError, match="the component folder 'unet/' named in model_index.json is missing"):
        model_files.load_pipeline(folder)
    os.remove(os.path.join(folder, "model_index.json"))
    os.makedirs(os.path.join(folder, model_files.PIPELINE_PARTIAL))
    with pytest.raises(
        FileNotFoundError, match="incomplete pipeline \\(no model_index.json: its save was interrupted"
    ):
        model_files.load_pipeline(folder)

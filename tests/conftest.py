"""Shared fixtures: tiny random models and tiny data, so every test runs in seconds on 2 CPU cores; what a test needs
from the machine (the face data, a browser, the data environment): skipped where it is missing, failed in CI."""

import os

# No background threads in the test process: tests/test_durability.py forks training children from it, and a child
# inherits every lock another thread holds at that moment (a fork during a telemetry request or a tqdm monitor pass can
# leave the child blocked for good). Hub and Gradio telemetry are off (they are network calls anyway), the tqdm
# monitor is never started; set before the libraries read them at import.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402

tqdm.tqdm.monitor_interval = 0

# Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP's spin-waiting makes a
# 2-thread forward of the tiny UNet up to 50x slower than a 1-thread one. TEST_TORCH_THREADS overrides.
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))

from diffusers import DDIMScheduler, UNet2DModel  # noqa: E402

import pipeline_interpretable_ddpm as pid  # noqa: E402
from face_data import default_data_dir, make_synthetic_faces  # noqa: E402
from model_files import PIPELINE_FILE, ROOT  # noqa: E402,F401  (re-exported to the tests)


def tiny_unet(sample_size: int = 16, seed: int = 0) -> UNet2DModel:
    """A ~30k-parameter UNet2DModel whose receptive field mixes all regions of a 16x16 image."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    )


class PerPixelUNet(torch.nn.Module):
    """A purely per-pixel noise predictor (1x1 convolutions): exactly local, so attribution leakage is 0."""

    def __init__(self, sample_size: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.SiLU(), torch.nn.Conv2d(8, 3, 1))
        self.config = type("Cfg", (), {"sample_size": sample_size, "in_channels": 3})()

    def forward(self, x, t):
        return self.net(x)


def tiny_pipeline(sample_size: int = 16, seed: int = 0, **kw) -> pid.InterpretableDDPMPipeline:
    pipe = pid.InterpretableDDPMPipeline(
        unet=tiny_unet(sample_size, seed), scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False), **kw
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_game_setting(key: str) -> bool:
    """A training-config key of the dummy-player loss: its lambda schedule's ends or a game flag (`ie_*`)."""
    return key in ("lambda_start", "lambda_end") or key.startswith("ie_")


def assert_lambda_zero_twins(interp_config: dict, baseline_config: dict) -> None:
    """A comparison is only fair between twins: two training configs (`training_config.json`) with the same start,
    data, steps, seed and settings, the dummy-player loss (its lambda schedule and game flags) the only difference."""
    differing = {
        k for k in interp_config.keys() | baseline_config.keys() if interp_config.get(k) != baseline_config.get(k)
    }
    assert {k for k in differing if not is_game_setting(k)} <= {"output_dir"}, differing
    assert interp_config["lambda_start"] > 0 and baseline_config["lambda_start"] == 0


@pytest.fixture
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_faces(tmp_path_factory):
    """A synthetic 16x16 face dataset in the utkface64 parquet layout."""
    return make_synthetic_faces(str(tmp_path_factory.mktemp("faces")), num_train=24, num_test=8, size=16)


def in_ci() -> bool:
    """True in continuous integration (`CI=true`, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(available: bool, missing: str) -> None:
    """Skips the test when something it needs is `missing` on this machine; in CI, where everything is installed
    and every test must run, fails it instead, so that nothing is left out silently."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{missing}, and CI=true: CI runs every test (see .ci/run)", pytrace=False)
    pytest.skip(missing)


def face_data_available() -> bool:
    return os.path.isfile(os.path.join(default_data_dir(), "test.parquet"))


def pytest_runtest_setup(item):
    """`@pytest.mark.needs_face_data`: the test reads the UTKFace data (`face_data.default_data_dir()`)."""
    if item.get_closest_marker("needs_face_data"):
        require(
            face_data_available(),
            f"no face data at {default_data_dir()} (set INTERPRETABLE_DDPM_DATA; README: how to build it)",
        )

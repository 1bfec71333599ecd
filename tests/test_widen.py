"""scripts.widen_unet: a 2x wider UNet that computes what the narrow one does, and whose copies train apart."""

import pytest
import torch
from diffusers import UNet2DModel

from conftest import tiny_pipeline, tiny_unet
from model_files import load_pipeline
from scripts import widen_unet


def outputs(unet, timesteps, seed):
    """The UNet's output on seeded random 16x16 inputs, one per timestep."""
    generator = torch.Generator().manual_seed(seed)
    return unet(torch.randn(len(timesteps), 3, 16, 16, generator=generator), torch.tensor(timesteps)).sample


@pytest.mark.parametrize("head_dim", [8, None])  # 2 heads in the tiny UNet's attention; one head per block
def test_the_wider_unet_computes_what_the_narrow_one_does(head_dim):
    config = {k: v for k, v in tiny_unet().config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    narrow = UNet2DModel(**{**config, "attention_head_dim": head_dim})
    wide = widen_unet.widen_unet(narrow, seed=0)
    assert list(wide.config.block_out_channels) == [16, 32]
    assert wide.config.attention_head_dim == (None if head_dim is None else 2 * head_dim)  # as many heads as before
    assert sum(p.numel() for p in wide.parameters()) > 3 * sum(p.numel() for p in narrow.parameters())
    with torch.no_grad():
        a, b = outputs(narrow, [0, 517, 999], seed=0), outputs(wide, [0, 517, 999], seed=0)
    assert (a - b).abs().max() < 1e-5 * a.abs().max()
    assert widen_unet.max_output_difference(narrow, wide) < 1e-5


def test_the_copies_of_a_channel_train_apart():
    """An even split of the input weights would give both copies of a channel the same gradient for good."""
    wide = widen_unet.widen_unet(tiny_unet(), seed=0)
    first = wide.conv_in.weight
    assert torch.equal(first[0], first[1])  # channel 0's two copies start equal
    loss = outputs(wide, [100, 800], seed=1).pow(2).mean()
    loss.backward()
    assert not torch.allclose(first.grad[0], first.grad[1])


def test_the_command_writes_a_pipeline_that_draws_the_same_images(tmp_path, capsys):
    narrow_dir, wide_dir = tmp_path / "narrow", tmp_path / "wide"
    tiny_pipeline().save_pretrained(narrow_dir)
    assert widen_unet.main([str(narrow_dir), str(wide_dir)]) == 0
    assert "largest relative output difference" in capsys.readouterr().out
    images = []
    for folder in (narrow_dir, wide_dir):
        pipe = load_pipeline(str(folder))
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(3)
        images.append(pipe(batch_size=2, generator=generator, num_inference_steps=4, output_type="np").images)
    assert abs(images[0] - images[1]).max() < 1e-4
    # never over a folder that exists, never from one without a UNet
    with pytest.raises(SystemExit) as exit_info:
        widen_unet.main([str(narrow_dir), str(wide_dir)])
    assert exit_info.value.code == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        widen_unet.main([str(tmp_path), str(tmp_path / "other")])
    assert "no unet/config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [({"freq_shift": 1}, "freq_shift"), ({"time_embedding_type": "fourier"}, "positional")],
)
def test_unsupported_unets_are_refused_by_name(change, message):
    config = dict(tiny_unet().config)
    config.update(change)
    unet = UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    with pytest.raises(ValueError, match=message):
        widen_unet.widen_unet(unet)

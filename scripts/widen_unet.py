"""Widen a pipeline's UNet by 2x without changing what it computes (a Net2WiderNet-style expansion).

A capacity study needs a wider plain model that draws the faces the narrow one draws, so that a wider twin and a
wider branch start where the narrow pair starts. Training one from scratch takes a GPU; widening the trained model
and fine-tuning from it does not.

Every channel of the UNet (`block_out_channels`, the time embedding) is doubled: new channel ``2c`` and ``2c + 1``
are copies of old channel ``c``. A layer's weights for an output copy are the old weights; its weights for the two
input copies split the old weight into ``a * w`` and ``(1 - a) * w`` with a random ``a`` per weight, so every
output is unchanged while the two copies get different gradients and grow apart in training (an even split
would keep them identical for good). Interleaved copies keep each GroupNorm group made of one old group's
channels twice, so its mean and variance are unchanged; the attention head width doubles with the channels, so a
new head is an old head twice, and its query is scaled to keep the old attention logits. The sinusoidal timestep
features, which are not copies at the new width, are mapped onto the old frequencies they contain.

    python -m scripts.widen_unet models/ddpm-faces64-baseline OUT_DIR [--seed 0]

OUT_DIR gets the whole pipeline folder with the widened UNet (float32); the script checks that the widened UNet's
output matches the original's on random inputs and stops with an error if it does not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
from diffusers import UNet2DModel

from model_files import PIPELINE_FILE
from scripts.assemble_default_models import ship_pipeline_file

PIPELINE_NAME = os.path.basename(PIPELINE_FILE)  # a link to the repository's file in shipped folders: re-made
SPLIT_RANGE = (0.25, 0.75)  # the input-copy split a: far enough from 1/2 to break the symmetry in a few steps


def widened_config(config) -> dict:
    """The config of the 2x wider UNet (channels and attention head width doubled, everything else as it was);
    a ValueError names a setting the widening cannot keep the UNet's function under."""
    config = dict(config)
    if config.get("time_embedding_type", "positional") != "positional":
        raise ValueError(f"only positional time embeddings can be widened, got {config['time_embedding_type']!r}")
    if not config.get("flip_sin_to_cos", True) or config.get("freq_shift", 0) != 0:
        raise ValueError("the widening maps the timestep features of flip_sin_to_cos=True, freq_shift=0 only")
    for key in ("class_embed_type", "num_class_embeds", "time_embedding_dim"):
        if config.get(key) is not None:
            raise ValueError(f"UNet config {key}={config[key]!r} is not supported by the widening")
    if config.get("attn_norm_num_groups") is not None:
        raise ValueError("attn_norm_num_groups must be unset (the attention norm uses norm_num_groups)")
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    head_dim = config.get("attention_head_dim")
    config["attention_head_dim"] = None if head_dim is None else 2 * head_dim
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _split(weight: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Double `dim` of `weight` into interleaved input copies that sum to the old weight."""
    a = torch.empty(weight.shape, dtype=torch.float64).uniform_(*SPLIT_RANGE, generator=generator).to(weight.dtype)
    pair = torch.stack([a * weight, (1 - a) * weight], dim=dim + 1)
    return pair.flatten(dim, dim + 1)


def _copy(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Double `dim` of `tensor` into interleaved output copies."""
    return tensor.repeat_interleave(2, dim=dim)


def _timestep_features(weight: torch.Tensor, new_in: int) -> torch.Tensor:
    """Map the time MLP's first layer onto the wider sinusoidal features.

    With flip_sin_to_cos and freq_shift 0 the features are [cos(f_0..f_{h-1}), sin(f_0..f_{h-1})] with
    f_k = 10000^(-k/h); at twice the width, feature 2k of each half has the old feature k's frequency. The other
    new features get zero weight, so the layer computes what it did.
    """
    out, old_in = weight.shape
    half_old, half_new = old_in // 2, new_in // 2
    wide = torch.zeros(out, new_in, dtype=weight.dtype)
    wide[:, 0 : 2 * half_old : 2] = weight[:, :half_old]
    wide[:, half_new : half_new + 2 * half_old : 2] = weight[:, half_old:]
    return wide


def widen_state_dict(narrow: dict, wide_shapes: dict, generator: torch.Generator) -> dict:
    """The widened weights: every doubled dimension copied (outputs) or split (inputs), the rest unchanged."""
    if set(narrow) != set(wide_shapes):
        raise ValueError(f"the two UNets differ in their parameters: {sorted(set(narrow) ^ set(wide_shapes))[:5]}")
    wide = {}
    for name, tensor in narrow.items():
        tensor = tensor.float()
        shape = tuple(wide_shapes[name])
        if name == "time_embedding.linear_1.weight":
            wide[name] = _copy(_timestep_features(tensor, shape[1]), 0)
            continue
        if tensor.dim() >= 1 and shape[0] == 2 * tensor.shape[0]:
            tensor = _copy(tensor, 0)
        if tensor.dim() >= 2 and shape[1] == 2 * tensor.shape[1]:
            tensor = _split(tensor, 1, generator)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: cannot widen {tuple(narrow[name].shape)} to {shape}")
        if name.endswith("to_q.weight") or name.endswith("to_q.bias"):
            # Each new head holds an old head twice: q.k doubles while the 1/sqrt(head_dim) scale shrinks by sqrt(2).
            tensor = tensor / 2**0.5
        wide[name] = tensor
    return wide


def widen_unet(unet: UNet2DModel, seed: int = 0) -> UNet2DModel:
    """A 2x wider UNet2DModel that computes what `unet` computes (float32)."""
    wide = UNet2DModel(**widened_config(unet.config))
    generator = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in wide.state_dict().items()}
    wide.load_state_dict(widen_state_dict(unet.state_dict(), shapes, generator))
    return wide


@torch.no_grad()
def max_output_difference(narrow: UNet2DModel, wide: UNet2DModel, seed: int = 0, batch: int = 4) -> float:
    """Largest |difference| of the two UNets' outputs on random inputs at random timesteps, in float32."""
    generator = torch.Generator().manual_seed(seed)
    size = narrow.config.sample_size
    x = torch.randn(batch, narrow.config.in_channels, size, size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    a = narrow.float()(x, t).sample
    b = wide.float()(x, t).sample
    return float((a - b).abs().max() / a.abs().max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline_dir", type=Path, help="a pipeline folder with a unet/ subfolder")
    parser.add_argument("output_dir", type=Path, help="new folder: the pipeline with the widened UNet")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input-copy splits")
    args = parser.parse_args(argv)
    if not (args.pipeline_dir / "unet" / "config.json").is_file():
        parser.error(f"{args.pipeline_dir} has no unet/config.json")
    if args.output_dir.exists():
        parser.error(f"{args.output_dir} exists; widening never overwrites a folder")
    narrow = UNet2DModel.from_pretrained(args.pipeline_dir / "unet", torch_dtype=torch.float32)
    try:
        wide = widen_unet(narrow, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    difference = max_output_difference(narrow, wide)
    if difference > 1e-4:
        parser.error(f"the widened UNet's output differs from the original's by {difference:.2e} (relative)")
    shutil.copytree(args.pipeline_dir, args.output_dir, ignore=shutil.ignore_patterns("unet", PIPELINE_NAME))
    ship_pipeline_file(str(args.output_dir))
    wide.save_pretrained(args.output_dir / "unet")
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    print(
        f"{args.output_dir}: UNet {count(narrow) / 1e6:.2f} M -> {count(wide) / 1e6:.2f} M parameters, "
        f"channels {list(narrow.config.block_out_channels)} -> {list(wide.config.block_out_channels)}; "
        f"largest relative output difference {difference:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

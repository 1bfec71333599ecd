# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Interpretable DDPM: a DDIM pipeline whose image regions are caused only by the same regions of x_T.

This file is self-contained on purpose: ``DiffusionPipeline.from_pretrained(path, custom_pipeline=...)`` loads it
alone, so it holds *all* of the method's math (masks, the coalition game, the dummy-player loss, exact Shapley
attribution, the locality metric) next to the pipeline class. The training script, the app, the evaluation and the
tests import from here.

Method (Liu et al., "Disentangling the Visual Concept Generation of DDPM from a Game-Theoretic View", 2025):
the K regions of x_t (concepts such as eyes, nose, mouth plus one "rest" region) are players; a coalition S keeps
x_t on its regions and puts a baseline elsewhere; the value of output region k is the predicted noise restricted to
region k. Training adds a loss that makes every input region j != k a *dummy player* for output region k. With DDIM
(eta = 0) an image is a deterministic function of x_T, so redrawing or swapping x_T inside a region edits that
region of the image only; with eta > 0 the step noise is drawn from x_T pixel by pixel, and the same holds.

Shapes used throughout: images / latents ``(B, C, H, W)``; region partitions ``(B, K, H, W)`` (one-hot over K,
the last region is "rest"); coalitions ``(M, K)`` bool, or ``(B, M, K)`` per example.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

PIPELINE_MODULE_NAME = "pipeline_interpretable_ddpm"
PIPELINE_CLASS_NAME = "InterpretableDDPMPipeline"

# Part label ids of the utkface64 label maps (see METHOD.md): 0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 nose, 7 mouth.
FACE_PART_LABELS = {
    0: "background",
    1: "skin",
    2: "left_brow",
    3: "right_brow",
    4: "left_eye",
    5: "right_eye",
    6: "nose",
    7: "mouth",
}
# A horizontal flip exchanges the subject's left and right parts.
FLIP_LABEL_PERMUTATION = (0, 1, 3, 2, 5, 4, 6, 7)
DEFAULT_CONCEPTS = {"eyes": [4, 5], "nose": [6], "mouth": [7]}
REST_REGION_NAME = "rest"
# Real photos: `invert` goes down to the DDIM step at about strength * T by default (chosen by measurement on the
# shipped faces models, see docs/real_photos.md); edits of inversions above LOCAL_EDIT_MAX_STRENGTH are not local there.
DEFAULT_INVERSION_STRENGTH = 0.5
LOCAL_EDIT_MAX_STRENGTH = 0.6

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, List[PIL.Image.Image], List[np.ndarray]]
MaskInput = Union[str, PIL.Image.Image, np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------------
# Output dataclasses
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class InterpretableDDPMPipelineOutput(BaseOutput):
    """Output of [`InterpretableDDPMPipeline.__call__`].

    Args:
        images (`List[PIL.Image.Image]` or `np.ndarray` or `torch.Tensor`): the generated images.
        latents (`torch.Tensor` of shape `(B, C, H, W)`): the x_T that generated each image (with any eta: the step
            noise is drawn from x_T), so any image can be edited later with `resample_region` / `swap_regions`.
        layout (`torch.Tensor` of shape `(B, K, H, W)`, *optional*): the layout a layout-conditioned model drew
            each image with (pass it to the edits of these images); `None` for a plain model.
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    latents: torch.Tensor
    layout: Optional[torch.Tensor] = None


@dataclass
class RegionResampleOutput(BaseOutput):
    """Output of [`InterpretableDDPMPipeline.resample_region`].

    Args:
        images: the edited images.
        latents (`torch.Tensor` of shape `(B, C, H, W)`): the new x_T (old outside the mask, new inside); for an
            `InversionOutput` input, the new x_t at its timestep.
        mask (`torch.Tensor` of shape `(B, 1, H, W)`): the binary mask that was used, at model resolution.
        warning (`str` or `None`): set where the edit is known not to stay local (see `InversionOutput.warning`).
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    latents: torch.Tensor
    mask: torch.Tensor
    warning: Optional[str] = None


@dataclass
class RegionSwapOutput(BaseOutput):
    """Output of [`InterpretableDDPMPipeline.swap_regions`].

    Args:
        images_a: image A with B's region.
        images_b: image B with A's region.
        latents_a, latents_b (`torch.Tensor` of shape `(B, C, H, W)`): the swapped x_T (x_t at the inversions'
            timestep for `InversionOutput` inputs) of each result.
        mask (`torch.Tensor` of shape `(B, 1, H, W)`): the binary mask that was used.
        warning (`str` or `None`): set where the edit is known not to stay local (see `InversionOutput.warning`).
    """

    images_a: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    images_b: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    latents_a: torch.Tensor
    latents_b: torch.Tensor
    mask: torch.Tensor
    warning: Optional[str] = None


@dataclass
class InversionOutput(BaseOutput):
    """Output of [`InterpretableDDPMPipeline.invert`]: a point on the DDIM trajectory of real images.

    Pass the whole object (not only `.latents`) to `__call__(latents=...)`, `resample_region`, `swap_regions` or
    `attribute`: they continue the DDIM trajectory from `timestep` (unclipped, the setting the inversion is exact
    for) and take masks by concept name from the input `images`, not from a regeneration.

    Args:
        latents (`torch.Tensor` of shape `(B, C, H, W)`): x_t at `timestep` (x_T when `strength=1.0`).
        reconstruction_psnr (`torch.Tensor` of shape `(B,)` or `None`): PSNR (dB, images in [0, 1]) of the
            regenerated image against the input, when `check_reconstruction=True`.
        timestep (`int`): the DDIM timestep t0 of `latents` (the first step a continuation runs).
        strength (`float`): the strength the inversion was made with (t0 is about `strength * T`).
        num_inference_steps (`int`): the DDIM steps of the inversion.
        images (`torch.Tensor` of shape `(B, 3, H, W)`): the input images in model space ([-1, 1]).
        warning (`str` or `None`): set where edits from this strength are known not to stay local.
    """

    latents: torch.Tensor
    reconstruction_psnr: Optional[torch.Tensor] = None
    timestep: Optional[int] = None
    strength: float = 1.0
    num_inference_steps: Optional[int] = None
    images: Optional[torch.Tensor] = None
    warning: Optional[str] = None


def _is_inversion(obj) -> bool:
    """Whether `obj` is an [`InversionOutput`], also one of another copy of this module (a pipeline loaded with
    `from_pretrained` runs the copy saved beside its weights, so its class is not this module's)."""
    return isinstance(obj, InversionOutput) or (type(obj).__name__ == "InversionOutput" and hasattr(obj, "timestep"))


class _LeakageProperties:
    """`mean_leakage` and `region_leakage` of an output with `leakage` and `abs_phi` (`(..., K, K)`)."""

    @property
    def mean_leakage(self) -> float:
        return float(self.leakage.mean())

    @property
    def region_leakage(self) -> torch.Tensor:
        """Off-diagonal share of each output region's row of `abs_phi`, `abs_phi.shape[:-1]` (`(T, B, K)` per step,
        `(B, K)` end to end) in [0, 1]: how much of output region k's attribution comes from other input regions
        (0 = region k is caused only by itself)."""
        own = torch.diagonal(self.abs_phi, dim1=-2, dim2=-1)
        total = self.abs_phi.sum(-1)
        return (total - own) / total.clamp_min(1e-20)


@dataclass
class AttributionOutput(_LeakageProperties, BaseOutput):
    """Output of [`InterpretableDDPMPipeline.attribute`].

    Args:
        phi (`torch.Tensor` of shape `(T, B, K, K)`): exact Shapley value of input region j (last axis) for the
            region mean of output region k (third axis) of the attributed `quantity` (the predicted noise or the
            predicted x_0), at each of the T timesteps. Rows satisfy efficiency:
            `phi[t, b, k].sum() == v_k(N) - v_k(empty)`.
        abs_phi (`torch.Tensor` of shape `(T, B, K, K)`): mean over the pixels and channels of output region k of
            the absolute per-element Shapley value; signs cannot cancel here, so it is what leakage is built on.
        leakage (`torch.Tensor` of shape `(T, B)`): off-diagonal share of `abs_phi` weighted by region area, in
            [0, 1]; 0 means every output region is caused only by the same input region.
        timesteps (`torch.Tensor` of shape `(T,)`): the DDIM timesteps at which the game was played.
        region_names (`List[str]`): the K region names (the last is usually "rest").
        quantity (`str`): what was attributed: `"noise"` (the predicted noise) or `"x0"` (the predicted x_0).
    """

    phi: torch.Tensor
    abs_phi: torch.Tensor
    leakage: torch.Tensor
    timesteps: torch.Tensor
    region_names: List[str]
    quantity: str = "noise"


@dataclass
class EndToEndAttributionOutput(_LeakageProperties, BaseOutput):
    """Output of [`InterpretableDDPMPipeline.attribute_end_to_end`].

    Args:
        phi (`torch.Tensor` of shape `(B, K, K)`): exact Shapley value of input region j of x_T (last axis) for the
            region-mean of output region k of the final image (in [0, 1], all channels), `(B, K_out, K_in)`. Rows
            satisfy efficiency: `phi[b, k].sum() == v_k(N) - v_k(empty)`.
        abs_phi (`torch.Tensor` of shape `(B, K, K)`): mean over the pixels and channels of output region k of the
            absolute per-element Shapley value (what leakage is built on, as in `attribute`).
        leakage (`torch.Tensor` of shape `(B,)`): off-diagonal share of `abs_phi` weighted by region area, in [0, 1].
        region_names (`List[str]`): the K region names.
        images (`torch.Tensor` of shape `(B, 3, H, W)`): the image of the full coalition (x_T itself), in [0, 1].
        baseline_images (`torch.Tensor` of shape `(B, 3, H, W)`): the image of the empty coalition (the baseline x_T).
    """

    phi: torch.Tensor
    abs_phi: torch.Tensor
    leakage: torch.Tensor
    region_names: List[str]
    images: torch.Tensor
    baseline_images: torch.Tensor


@dataclass
class EmergenceOutput(BaseOutput):
    """Output of [`InterpretableDDPMPipeline.emergence_curve`].

    Args:
        fraction (`torch.Tensor` of shape `(S, B)`): for each swap step, the share of the full swap's change inside
            the region that still happens: `<d_s, d_0>_M / <d_0, d_0>_M`, with d_s the result of the swap at step s
            minus the unedited image and M the mask (1 at step index 0, the swap at x_T).
        step_indices (`torch.Tensor` of shape `(S,)`): the DDIM step index of each swap (0 = x_T, before any step).
        timesteps (`torch.Tensor` of shape `(S,)`): the timestep t of the x_t that was swapped.
        emergence_step (`torch.Tensor` of shape `(B,)`): the first step index (of those computed) whose fraction is
            below one half (as a float; `num_inference_steps` where it never falls below one half). NaN (and NaN
            fractions) for an image whose swap at x_T changes nothing inside the mask: there is nothing to emerge.
        num_inference_steps (`int`): the DDIM steps of the trajectory.
        mode (`str`): what region k of x_t receives at step s, see `emergence_curve`.
    """

    fraction: torch.Tensor
    step_indices: torch.Tensor
    timesteps: torch.Tensor
    emergence_step: torch.Tensor
    num_inference_steps: int
    mode: str


# ----------------------------------------------------------------------------------------------------------------------
# Concepts and masks
# ----------------------------------------------------------------------------------------------------------------------
def parse_concepts(spec: Union[str, Mapping[str, Sequence[int]], None]) -> Dict[str, List[int]]:
    """Parses a concept definition into `{name: [label ids]}` and validates it.

    Accepts a mapping or the command-line form `"eyes=4,5 nose=6 mouth=7"`. The "rest" region is implied and may
    not be named. Label ids must be part label ids 1..7 of the face label maps and may not repeat across concepts.
    """
    if spec is None:
        spec = DEFAULT_CONCEPTS
    if isinstance(spec, str):
        concepts: Dict[str, List[int]] = {}
        for item in spec.replace(";", " ").split():
            if "=" not in item:
                raise ValueError(f"Concept '{item}' must look like name=id[,id...], e.g. 'eyes=4,5'.")
            name, ids = item.split("=", 1)
            try:
                concepts[name.strip()] = [int(i) for i in ids.split(",") if i.strip()]
            except ValueError:
                raise ValueError(f"Concept '{item}': label ids must be integers, e.g. 'eyes=4,5'.") from None
    else:
        concepts = {str(k): [int(i) for i in v] for k, v in dict(spec).items()}
    if not concepts:
        raise ValueError("At least one concept is needed, e.g. 'eyes=4,5 nose=6 mouth=7'.")
    seen: Dict[int, str] = {}
    for name, ids in concepts.items():
        if not name or name == REST_REGION_NAME:
            raise ValueError(f"Concept name '{name}' is not allowed ('{REST_REGION_NAME}' is implied).")
        if not ids:
            raise ValueError(f"Concept '{name}' has no label ids.")
        for i in ids:
            if i not in FACE_PART_LABELS or i == 0:
                raise ValueError(
                    f"Concept '{name}': unknown label id {i}; part label ids are "
                    + ", ".join(f"{k}={v}" for k, v in FACE_PART_LABELS.items() if k)
                )
            if i in seen:
                raise ValueError(f"Label id {i} is used by both '{seen[i]}' and '{name}'.")
            seen[i] = name
    return concepts


def region_names_of(concepts: Mapping[str, Sequence[int]]) -> List[str]:
    """Names of the K regions of the game, in partition order: the concepts, then the implied rest region."""
    return list(concepts) + [REST_REGION_NAME]


def concepts_to_string(concepts: Mapping[str, Sequence[int]]) -> str:
    """Inverse of `parse_concepts` for the command-line form."""
    return " ".join(f"{n}={','.join(str(i) for i in ids)}" for n, ids in concepts.items())


def dilate_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilates binary masks `(..., H, W)` by a square of half-width `radius` pixels (max pooling)."""
    if radius <= 0:
        return masks
    shape = masks.shape
    flat = masks.reshape(-1, 1, shape[-2], shape[-1]).float()
    flat = F.max_pool2d(flat, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return flat.reshape(shape).to(masks.dtype)


def region_interiors(regions: torch.Tensor, border: int) -> torch.Tensor:
    """Erodes a partition `(..., K, H, W)` by `border` pixels where it meets another region (not at the image edge).

    L_IE can leave this band out of the output values: a pixel next to another region is computed, through the
    UNet's receptive field, from both, so asking its value to ignore the other region fights the DDPM loss there."""
    if border <= 0:
        return regions
    return 1 - dilate_masks(1 - regions.float(), border).to(regions.dtype)


def exclusive_partition(masks: torch.Tensor) -> torch.Tensor:
    """Overlapping region masks `(B, K, H, W)` -> a partition `(B, K + 1, H, W)` float 0/1: where masks overlap the
    earlier one keeps the pixel, and the last channel ("rest") holds the pixels no mask covers."""
    masks = masks > 0.5 if masks.is_floating_point() else masks.bool()
    taken = torch.zeros_like(masks[:, 0])
    regions = []
    for i in range(masks.shape[1]):
        m = masks[:, i] & ~taken
        taken |= m
        regions.append(m)
    regions.append(~taken)
    return torch.stack(regions, 1).float()


def region_partition(
    label_maps: torch.Tensor, concepts: Mapping[str, Sequence[int]], dilation: int = 0
) -> torch.Tensor:
    """Turns part label maps into a one-hot partition over the concepts plus "rest".

    Args:
        label_maps (`torch.Tensor` of shape `(B, H, W)`, integer): part label ids.
        concepts: `{name: [label ids]}` as returned by `parse_concepts`.
        dilation (`int`): each concept mask is dilated by this many pixels first (the paper dilates its masks).
            Where dilated concepts overlap, the earlier concept in `concepts` keeps the pixel.

    Returns:
        `torch.Tensor` of shape `(B, K, H, W)`, float 0/1, K = len(concepts) + 1, summing to 1 over K at every pixel.
    """
    if label_maps.ndim != 3:
        raise ValueError(f"label_maps must have shape (B, H, W), got {tuple(label_maps.shape)}.")
    return exclusive_partition(dilate_masks(concept_masks(label_maps, concepts), dilation))


def concept_masks(label_maps: torch.Tensor, concepts: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """`(B, H, W)` part label ids -> `(B, len(concepts), H, W)` bool: where each concept's labels are."""
    return torch.stack(
        [torch.isin(label_maps, torch.tensor(ids, device=label_maps.device)) for ids in concepts.values()], 1
    )


# Stochastic sampling (eta > 0) keeps an image a function of x_T alone: the noise DDIM adds at each step is drawn from
# x_T pixel by pixel, a hash of the pixel's own x_T values, its position and the step. A region's step noise then moves
# with its x_T in a swap and is redrawn with it in a resample, and nothing else changes, so the game's locality holds
# for stochastic sampling as for eta = 0. The 32-bit hash works in int64 on 16-bit halves, so it never overflows.
_MASK32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2^32 for int64 `a` in [0, 2^32) and a 32-bit constant, without int64 overflow."""
    return ((a & 0xFFFF) * c + ((((a >> 16) * c) & 0xFFFF) << 16)) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (an avalanche mix) on int64 values in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def step_noise(x_T: torch.Tensor, step: int) -> torch.Tensor:
    """The standard Gaussian noise that sampling with eta > 0 adds at step `step`, drawn from x_T pixel by pixel.

    Each pixel's noise is a hash of its own x_T values (their float32 bits), its position and the step, turned into
    Gaussians (Box-Muller): independent across pixels, channels and steps for any practical purpose, and a function
    of that pixel of x_T alone.

    Args:
        x_T (`torch.Tensor` of shape `(B, C, H, W)`): the latents the trajectory starts from.
        step (`int`): the index of the sampling step (0 = the first).

    Returns:
        `torch.Tensor` of shape `(B, C, H, W)`, in x_T's dtype and on its device.
    """
    b, c, h, w = x_T.shape
    bits = x_T.detach().float().contiguous().view(torch.int32).to(torch.int64) & _MASK32
    key = _fmix32(
        torch.full((b, h, w), (int(step) * 0x9E3779B9 + 0x7F4A7C15) & _MASK32, dtype=torch.int64, device=x_T.device)
    )
    for ch in range(c):
        key = _fmix32(key ^ _fmix32((bits[:, ch] + ch * 0x632BE5AB) & _MASK32))
    position = torch.arange(h * w, dtype=torch.int64, device=x_T.device).view(1, h, w)
    key = _fmix32(key ^ _fmix32((position * 0x27D4EB2F + 0x165667B1) & _MASK32))
    out = []
    for ch in range(c):
        u1 = (_fmix32(key ^ (2 * ch + 1)).double() + 0.5) / 2**32
        u2 = (_fmix32(key ^ ((2 * ch + 2) * 0x85EBCA77 & _MASK32)).double() + 0.5) / 2**32
        out.append(torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2))
    return torch.stack(out, 1).to(x_T.dtype)


def sampling_step(scheduler, model_output, t, x, eta: float, noise_source: torch.Tensor, step: int) -> torch.Tensor:
    """One step t -> t_prev of the sampler: DDIM at eta = 0; with eta > 0 it adds `step_noise(noise_source, step)`,
    the noise of the x_T each trajectory of `x` belongs to."""
    noise = step_noise(noise_source, step) if eta > 0 else None
    return scheduler.step(model_output, t, x, eta=eta, variance_noise=noise).prev_sample


# Layout conditioning. A layout-conditioned UNet takes each concept's part mask as an extra input channel, the same
# for every coalition of the game: a condition that every region reads, not a player, so that every region knows
# where this face's parts lie at every timestep. It was tried against the ghosted faces (parts drawn at their average
# places over the face the rest draws): the parts then sit where the layout puts them, but the ghosts stay
# (docs/recipe.md, "The part layout as an input"). The shipped models are plain (no layout channels).
def layout_from_labels(label_maps: torch.Tensor, concepts: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """Part label maps `(B, H, W)` -> the layout input `(B, len(concepts), H, W)`, float 0/1: each concept's mask."""
    if label_maps.ndim != 3:
        raise ValueError(f"label_maps must have shape (B, H, W), got {tuple(label_maps.shape)}.")
    return concept_masks(label_maps.long(), concepts).float()


def add_layout_channels(unet: UNet2DModel, num_channels: int) -> UNet2DModel:
    """A copy of `unet` that also takes `num_channels` layout channels after its image channels. Their input weights
    start at zero, so the copy computes what `unet` computes, whatever the layout, until it is trained."""
    num_channels = check_int(num_channels, "num_channels", minimum=1)
    config = dict(unet.config)
    config["in_channels"] = unet.config.in_channels + num_channels
    conditioned = UNet2DModel.from_config(config)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat(
        [weight, weight.new_zeros(weight.shape[0], num_channels, *weight.shape[2:])], 1
    )
    conditioned.load_state_dict(state)
    return conditioned.to(device=unet.device, dtype=unet.dtype)


def with_layout(x: torch.Tensor, layout: Optional[torch.Tensor]) -> torch.Tensor:
    """The UNet input: x `(B, C, H, W)` followed by the layout channels `(B or 1, K, H, W)` (none when `None`)."""
    if layout is None:
        return x
    return torch.cat([x, layout.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)], 1)


# Harmonised noise. On a model trained with the one-way game, a part's colour follows the mean of its own x_T patch
# (a ~100-pixel patch mean has std ~0.1, enough for a blue or orange nose), because the part may not read the other
# parts' noise and has not learnt to read the rest's. Tying each part's patch mean to the mean of the surrounding rest
# region's noise takes the colour from the face instead. It reads only the rest region, so under the one-way game
# (rest = context) an edit of one part stays local by the same argument as without it.
HARMONIZE_DILATION = 2  # px the concept templates grow by: the regions the shipped models' game was trained on
HARMONIZE_CONTEXT_WIDTH = 6  # px of rest region around the concept regions whose noise mean the parts take


def harmonize_regions(latents: torch.Tensor, regions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Ties the per-channel mean of the noise in each region to its per-channel mean over a reference region.

    Inside region k of image b: `x -> x - mean_k(x) + mean_ref(x)`, per channel; the noise's shape inside the region
    (everything but its mean) and every pixel outside the regions are kept. An image whose reference is empty, or a
    region that is empty, is left unchanged.

    Args:
        latents (`torch.Tensor` of shape `(B, C, H, W)`): x_T.
        regions (`torch.Tensor` of shape `(B, K, H, W)` or `(1, K, H, W)`): 0/1 masks, disjoint from each other.
        reference (`torch.Tensor` of shape `(B, 1, H, W)` or `(1, 1, H, W)`): 0/1 mask, disjoint from every region.

    Returns:
        `torch.Tensor` of shape `(B, C, H, W)`, the latents' dtype.
    """
    b = latents.shape[0]
    x = latents.float()
    regions = (regions > 0.5).float().to(x.device).expand(b, -1, -1, -1)
    reference = (reference > 0.5).float().to(x.device).expand(b, -1, -1, -1)
    if (regions.sum(1) > 1).any():
        raise ValueError("harmonize_regions needs disjoint regions; some pixels are in more than one region.")
    if (regions * reference).any():
        raise ValueError("harmonize_regions needs a reference region disjoint from the regions it harmonises.")
    ref_area = reference.sum((-2, -1))  # (B, 1)
    ref_mean = torch.einsum("bchw,bhw->bc", x, reference[:, 0]) / ref_area.clamp_min(1)  # (B, C)
    area = regions.sum((-2, -1))  # (B, K)
    region_mean = torch.einsum("bchw,bkhw->bkc", x, regions) / area.clamp_min(1)[..., None]  # (B, K, C)
    keep = ((area > 0) & (ref_area > 0)).float()[..., None]  # (B, K, 1)
    shift = (ref_mean[:, None, :] - region_mean) * keep
    return (x + torch.einsum("bkc,bkhw->bchw", shift, regions)).to(latents.dtype)


def recentre_moved_region(
    moved: torch.Tensor,
    receiver: torch.Tensor,
    donor: torch.Tensor,
    mask: torch.Tensor,
    width: int = HARMONIZE_CONTEXT_WIDTH,
    amount: float = 1.0,
) -> torch.Tensor:
    """The harmonised photo swap's step: moves the region a swap brought into an image from the donor's colouring to
    the receiving image's, so that the part keeps its shape and its colour relative to the face around it, but not
    the donor's colour cast (a pale donor's nose on a darker face).

    Inside the mask, per image and channel: `x -> x + mean_ring(receiver) - mean_ring(donor)`, where the ring is the
    `width`-px band around the mask (`harmonization_reference`, the skin around the part) in each image's own
    (unswapped) latents. An inverted photo's x_t at t0 still carries sqrt(alpha_bar(t0)) times the photo, so the ring
    means are mostly the two faces' skin colours around the part. Only pixels inside the mask change (the edit stays
    where it was); an empty mask or ring changes nothing.

    Args:
        moved (`torch.Tensor` of shape `(B, C, H, W)`): the latents after the swap.
        receiver (`torch.Tensor` of shape `(B, C, H, W)`): the receiving images' latents before the swap.
        donor (`torch.Tensor` of shape `(B, C, H, W)`): the latents the region came from.
        mask (`torch.Tensor` of shape `(B, 1, H, W)`): the swapped region (weights in [0, 1]).
        width (`int`): width of the ring in pixels.
        amount (`float`): share of the shift applied (1: all of it; 0: the plain swap).

    Returns:
        `torch.Tensor` of shape `(B, C, H, W)`, the dtype of `moved`.
    """
    x = moved.float()
    m = mask.float().to(x.device)
    ring = harmonization_reference((m > 0.5).float(), width)
    area = ring.sum((-2, -1), keepdim=True)
    shift = ((receiver.float().to(x.device) - donor.float().to(x.device)) * ring).sum((-2, -1), keepdim=True)
    shift = torch.where(area > 0, shift / area.clamp_min(1), torch.zeros_like(shift))  # (B, C, 1, 1)
    return (x + float(amount) * shift * m).to(moved.dtype)


def harmonization_reference(regions: torch.Tensor, width: int = HARMONIZE_CONTEXT_WIDTH) -> torch.Tensor:
    """The context band `(B, 1, H, W)`: pixels within `width` px of any of the regions `(B, K, H, W)`, outside them."""
    union = (regions > 0.5).any(1, keepdim=True).float()
    return dilate_masks(union, width) * (1 - union)


def encode_binary_mask(mask: np.ndarray) -> str:
    """Packs an HxW binary mask into `"HxW:hex"` so it can live in a JSON config."""
    mask = np.asarray(mask).astype(bool)
    return f"{mask.shape[0]}x{mask.shape[1]}:" + np.packbits(mask.reshape(-1)).tobytes().hex()


def decode_binary_mask(code: str) -> np.ndarray:
    """Inverse of `encode_binary_mask`."""
    try:
        size, hexdata = code.split(":", 1)
        h, w = (int(s) for s in size.split("x"))
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(hexdata), dtype=np.uint8))[: h * w]
        return bits.reshape(h, w).astype(bool)
    except Exception as err:  # any malformed string is a config error
        raise ValueError(f"Malformed template mask code '{code[:40]}...': {err}") from None


def compute_concept_templates(
    label_maps: torch.Tensor, concepts: Mapping[str, Sequence[int]], threshold: float = 0.5, dilation: int = 0
) -> Dict[str, str]:
    """Template mask per concept: the mean training mask, thresholded (relative to its maximum), encoded.

    Args:
        label_maps (`torch.Tensor` of shape `(N, H, W)`): label maps of faces that have masks.
        threshold (`float`): a pixel is in the template where the concept's frequency is at least
            `threshold` times the concept's peak frequency.
    """
    templates = {}
    for name, ids in concepts.items():
        m = torch.zeros_like(label_maps, dtype=torch.float32)
        for i in ids:
            m += (label_maps == i).float()
        freq = m.mean(0)
        if freq.max() <= 0:
            raise ValueError(f"Concept '{name}' never occurs in the label maps; cannot make its template.")
        template = dilate_masks(freq >= threshold * freq.max(), dilation)
        templates[name] = encode_binary_mask(template.cpu().numpy())
    return templates


# ----------------------------------------------------------------------------------------------------------------------
# Input checks shared by the pipeline's public methods: bad input fails loudly, naming the argument
# ----------------------------------------------------------------------------------------------------------------------
# x_T is standard Gaussian noise (|x| < 7 in practice, and DDIM inversion stays in that range); values beyond this are
# a unit mix-up (e.g. pixels in 0..255), and float16 would overflow on them within a few DDIM steps.
LATENTS_MAX_ABS = 1e3
# `attribute` plays all 2^K coalitions at every attributed timestep; bigger games need an explicit `max_coalitions`.
DEFAULT_MAX_COALITIONS = 64
# `emergence_curve` needs the swap at x_T to change the region by at least this mean squared amount (images in [0, 1])
EMERGENCE_MIN_CHANGE = 1e-10


def check_int(value, name: str, minimum: Optional[int] = None) -> int:
    """`value` as a Python int. Accepts Python and numpy integers (and 0-d integer tensors); refuses bools (`True`
    is not a step count), floats (3.0 or 2.5 steps is a mistake, not a request) and strings."""
    if (
        isinstance(value, torch.Tensor)
        and value.ndim == 0
        and not value.is_floating_point()
        and not value.is_complex()
    ):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, "an integer")
        raise ValueError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}).")
    if minimum is not None and value < minimum:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return int(value)


def check_tensor_values(x: torch.Tensor, name: str, floating: bool = True) -> None:
    """Refuses tensors without usable values: on the 'meta' device, complex, non-float (when `floating`), empty, or
    holding NaN / infinity."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a 'meta' tensor (a shape without values); pass a tensor that holds data.")
    if x.is_complex():
        raise ValueError(f"{name} has complex dtype {x.dtype}; pass a real tensor.")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}.")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}).")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values.")


def check_generator(generator, batch_size: int, name: str = "generator") -> None:
    """`None`, one `torch.Generator`, or a list of exactly one per image; anything else raises a `ValueError` that
    says what to pass (an empty or short list would otherwise fail deep inside the noise draw, a long one be cut)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(
                f"You passed {len(generator)} generators for a batch of {batch_size} images; give one per image "
                f"(a list of {batch_size}), a single torch.Generator, or None."
            )
        bad = [i for i, g in enumerate(generator) if not isinstance(g, torch.Generator)]
        if bad:
            raise ValueError(f"{name}[{bad[0]}] is a {type(generator[bad[0]]).__name__}, not a torch.Generator.")
        return
    raise ValueError(
        f"{name} must be a torch.Generator, a list of one per image, or None; got {type(generator).__name__}."
    )


def check_optional_bool(value, name: str, none_means: str = "") -> None:
    """Refuses anything but True, False (numpy bools included) or None, naming the argument and what None means."""
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True, False or None{none_means}, got {value!r}.")


# How far a mask's values may overshoot its scale ([0, 1] or [0, 255]), as a share of it: bicubic or Lanczos
# resizing of a 0/1 mask makes values such as -0.04 or 1.05, which still mean outside / inside.
MASK_OVERSHOOT = 0.1


def check_mask_values(mask: torch.Tensor, name: str = "mask") -> float:
    """A mask tensor must hold real, finite values that read unambiguously as a mask: bool, 0/1 integers, uint8 0..255
    (an image), or floats on the 0/1 scale (soft; within 0.1 of [0, 1], as resizing overshoots) or the 0..255 scale.
    An integer label map (0..7), values off both scales, or a mix of the two scales (a 0/1 mask with a few pixels at
    255: divided by 255 its ones would fall outside) are refused: thresholding them would select the wrong pixels.

    Returns the mask's scale: 1.0 or 255.0."""
    check_tensor_values(mask, name, floating=False)
    if mask.dtype == torch.bool:
        return 1.0
    lo, hi = float(mask.min()), float(mask.max())
    if not mask.is_floating_point() and mask.dtype != torch.uint8 and not (lo >= 0 and hi <= 1):
        raise ValueError(
            f"{name} of dtype {mask.dtype} holds values in [{lo:g}, {hi:g}]; an integer mask must be 0/1 (pass a bool "
            "mask, or select the labels first, e.g. torch.isin(labels, ids))."
        )
    if lo >= -MASK_OVERSHOOT and hi <= 1 + MASK_OVERSHOOT:
        return 1.0
    if lo >= -255 * MASK_OVERSHOOT and hi <= 255 * (1 + MASK_OVERSHOOT):
        x = mask.float()
        near_one = int(((x - 1).abs() <= MASK_OVERSHOOT).sum())
        above = int((x > 1 + MASK_OVERSHOOT).sum())
        # a 0..255 mask has next to no values near 1 (a resized edge may pass through it); a 0/1 mask has many
        if near_one and 10 * near_one >= above:
            raise ValueError(
                f"{name} mixes two scales: {near_one} pixels are near 1 (inside, on a 0/1 mask's scale) and {above} "
                f"above {1 + MASK_OVERSHOOT:g} (up to {hi:g}, a 0..255 mask's scale, on which the first would be "
                "outside). Pass a mask on one scale: bool or 0/1, or 0..255."
            )
        if hi <= 127.5:
            raise ValueError(
                f"{name} holds values in [{lo:g}, {hi:g}]: beyond a 0/1 mask's range (give or take "
                f"{MASK_OVERSHOOT:g}), and on the 0..255 scale no pixel reaches the middle (127.5), so it would "
                "select nothing. Pass a bool or 0/1 mask, or 0..255 image values."
            )
        return 255.0
    raise ValueError(
        f"{name} holds values in [{lo:g}, {hi:g}]; a mask must be in [0, 1] (or 0..255 image values), give or take "
        f"{MASK_OVERSHOOT:g} of that range for resizing overshoot."
    )


def to_mask_tensor(mask: MaskInput, batch_size: int, resolution: Tuple[int, int], device=None) -> torch.Tensor:
    """Normalises any supported mask to a binary float tensor `(B, 1, H, W)` at the model resolution.

    Accepts an HxW bool/float tensor or numpy array, a PIL image (nonzero = inside; "L" or RGB(A), where the alpha
    channel wins if present), a `(1, H, W)` tensor or a `(B, 1, H, W)` batch. Soft masks are thresholded at 0.5
    (mixing two unit-variance noises with soft weights would shrink the variance of x_T).
    """
    if isinstance(mask, PIL.Image.Image):
        if mask.mode in ("RGBA", "LA"):
            arr = np.asarray(mask.getchannel("A"), dtype=np.float32) / 255.0
        else:
            arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        mask = torch.from_numpy(arr)
    elif isinstance(mask, np.ndarray):
        if mask.dtype.kind not in "biufc":
            raise ValueError(f"mask must hold numbers, got a numpy array of dtype {mask.dtype}.")
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"mask must be a concept name, a tensor, a numpy array or a PIL image, got {type(mask).__name__}."
        )
    scale = check_mask_values(mask)
    mask = (mask.detach().float() / scale).clamp(0, 1)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[None]
    elif mask.ndim == 3 and mask.shape[-1] in (1, 3, 4) and mask.shape[0] > 4:  # HxWxC numpy-style mask
        mask = mask.amax(-1)[None, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (H, W), (1, H, W) or (B, 1, H, W); got {tuple(mask.shape)}.")
    if mask.shape[0] not in (1, batch_size):
        raise ValueError(f"mask batch size {mask.shape[0]} does not match the latents' batch size {batch_size}.")
    h, w = resolution
    if tuple(mask.shape[-2:]) != (h, w):
        mask_h, mask_w = mask.shape[-2:]
        if mask_h * w != mask_w * h:
            raise ValueError(
                f"mask of size {mask_h}x{mask_w} has a different aspect ratio from the model resolution {h}x{w}."
            )
        mask = F.interpolate(mask, size=(h, w), mode="area")
    mask = (mask > 0.5).float().expand(batch_size, 1, h, w)
    return mask.to(device) if device is not None else mask


# ----------------------------------------------------------------------------------------------------------------------
# The coalition game and the dummy-player loss
# ----------------------------------------------------------------------------------------------------------------------
def all_coalitions(num_players: int, device=None) -> torch.Tensor:
    """All 2^K coalitions as a bool tensor `(2^K, K)`; row s has player j iff bit j of s is set."""
    s = torch.arange(2**num_players, device=device)
    return (s[:, None] >> torch.arange(num_players, device=device)[None, :]) & 1 == 1


def coalition_inputs(
    x: torch.Tensor, baseline: torch.Tensor, regions: torch.Tensor, coalitions: torch.Tensor
) -> torch.Tensor:
    """Builds x^S: x on the regions of S, the baseline on the other regions.

    Args:
        x (`torch.Tensor` of shape `(B, C, H, W)`): the players' values (x_t).
        baseline (`torch.Tensor` of shape `(B, C, H, W)`): what absent players are replaced with.
        regions (`torch.Tensor` of shape `(B, K, H, W)`): one-hot partition of the pixels.
        coalitions (`torch.Tensor` of shape `(M, K)` or `(B, M, K)`, bool): the coalitions to build.

    Returns:
        `torch.Tensor` of shape `(B, M, C, H, W)`.
    """
    if coalitions.ndim == 2:
        coalitions = coalitions[None].expand(x.shape[0], -1, -1)
    keep = torch.einsum("bmk,bkhw->bmhw", coalitions.to(regions.dtype), regions)[:, :, None]  # (B, M, 1, H, W)
    keep = keep.to(x.dtype)
    return keep * x[:, None] + (1 - keep) * baseline[:, None]


def region_values(eps: torch.Tensor, regions: torch.Tensor, value: str = "pixel") -> torch.Tensor:
    """Value of each output region: the predicted noise restricted to it.

    Args:
        eps (`torch.Tensor` of shape `(..., C, H, W)`): predicted noise.
        regions (`torch.Tensor` of shape `(..., K, H, W)`): partition (broadcastable against `eps`' leading dims).
        value (`str`): `"pixel"` keeps every element of the region (returns `(..., K, C, H, W)`, zero outside
            region k); `"mean"` averages over the region's pixels (returns `(..., K, C)`), as the paper does.
    """
    masked = eps.unsqueeze(-4) * regions.unsqueeze(-3).to(eps.dtype)  # (..., K, C, H, W)
    if value == "pixel":
        return masked
    if value == "mean":
        area = regions.sum((-2, -1)).clamp_min(1.0).unsqueeze(-1).to(eps.dtype)  # (..., K, 1)
        return masked.sum((-2, -1)) / area
    raise ValueError(f"value must be 'pixel' or 'mean', got '{value}'.")


def _squared_region_distance(a: torch.Tensor, b: torch.Tensor, value: str) -> torch.Tensor:
    """Per-region squared distance between two region values; `(..., K)`.

    For "pixel" values the sum over region k is divided by C*H*W, so that summing over k gives an image-level
    mean squared error, on the same scale as the DDPM loss.
    """
    d = (a - b).float() ** 2
    if value == "pixel":
        return d.sum((-3, -2, -1)) / (d.shape[-3] * d.shape[-2] * d.shape[-1])
    return d.mean(-1)


def dummy_player_terms(
    values: torch.Tensor,
    coalitions: torch.Tensor,
    singleton_values: torch.Tensor,
    empty_values: torch.Tensor,
    value: str,
) -> torch.Tensor:
    """Theorem 1 terms for every output region k given the values of coalitions S.

    For k in S the term is |v_k(S) - v_k({k})|^2, for k not in S it is |v_k(S) - v_k(empty)|^2: other players are
    dummies for game v_k iff all these terms vanish.

    Args:
        values (`(B, M, K, ...)`): region values v_k(S) of M coalitions per example.
        coalitions (`(B, M, K)` or `(M, K)`, bool): the coalitions.
        singleton_values (`(B, K, ...)`): v_k({k}) for every k.
        empty_values (`(B, K, ...)`): v_k(empty).

    Returns:
        `(B, M, K)` per-term squared distances.
    """
    if coalitions.ndim == 2:
        coalitions = coalitions[None].expand(values.shape[0], -1, -1)
    d_single = _squared_region_distance(values, singleton_values[:, None], value)
    d_empty = _squared_region_distance(values, empty_values[:, None], value)
    return torch.where(coalitions, d_single, d_empty)


def _singleton_value_per_k(eps_singletons: torch.Tensor, regions: torch.Tensor, value: str) -> torch.Tensor:
    """v_k({k}) for every k from the K singleton forwards `(B, K, C, H, W)`; returns `(B, K, ...)`."""
    all_vals = region_values(eps_singletons, regions[:, None], value)  # (B, K_in, K_out, ...)
    idx = torch.arange(regions.shape[1], device=regions.device)
    return all_vals[:, idx, idx]


@dataclass
class CoalitionPlan:
    """The coalitions one estimator of the dummy-player loss evaluates for a batch.

    Args:
        coalitions (`torch.Tensor` of shape `(B, M, K)`, bool): the M coalitions to feed the model per example.
        estimator (`str`): `"exact"`, `"sampled"` or `"pair"`.
        out_k (`torch.Tensor` of shape `(B,)`, *optional*): the output region of each example (`"pair"` only).
        num_outputs (`torch.Tensor` of shape `(B,)`, *optional*): how many output regions each example's `out_k` was
            drawn from (`"pair"` with `open_outputs` only; K otherwise), the factor that makes the pair an estimate of
            the sum over those regions.
    """

    coalitions: torch.Tensor
    estimator: str
    out_k: Optional[torch.Tensor] = None
    num_outputs: Optional[torch.Tensor] = None


def plan_coalitions(
    regions: torch.Tensor,
    estimator: str = "pair",
    num_coalitions: int = 4,
    generator: Optional[torch.Generator] = None,
    context: Optional[Sequence[int]] = None,
    presence: Optional[Sequence[float]] = None,
    open_outputs: Optional[torch.Tensor] = None,
) -> CoalitionPlan:
    """Draws the coalitions of one estimator of L_IE (see `interpretability_loss`) for a batch of partitions
    `regions` `(B, K, H, W)`. Random draws happen on `generator`'s device (the CPU without one) and are then moved to
    `regions`' device: a CPU generator is reproducible on any device, a CUDA one avoids host-device copies.

    `context` (player indices, `"pair"` only) makes the game one-way: a context player may influence every output
    region, the other players only their own. For output region k the context players other than k are present in
    both coalitions of the pair, so only the non-context players are asked to be dummies for v_k. With the rest
    region as context, eyes may follow the skin and lighting around them while nothing outside the eyes may follow
    the eyes' noise, which is all a local eyes edit needs.

    `presence` (`(K,)` probabilities in (0, 1), `"pair"` and `"sampled"` only; default 1/2 each) is the chance that
    each player is in a drawn coalition S. Every coalition keeps a positive probability, so the loss is still zero
    exactly when the dummy-player conditions hold; a player drawn more often is simply asked more often to leave the
    other regions alone (e.g. the eyes, whose small region makes their leakage a small share of the plain loss).

    `open_outputs` (`(B, K)` bool, `"pair"` only) leaves output regions out of the game per example: such a region
    may depend on every player, and the example's output region is drawn among the others. With the context regions
    open at low timesteps the rest may draw the skin around a part from the part that is there, while the parts still
    never read each other (tried against the ghosted parts: it loosened locality and left them; docs/recipe.md)."""
    b, k = regions.shape[:2]
    device = regions.device
    draw_device = generator.device if generator is not None else "cpu"
    context = sorted(set(int(j) for j in context)) if context else []
    if any(j < 0 or j >= k for j in context):
        raise ValueError(f"context players must be in [0, {k}), got {context}.")
    if context and estimator != "pair":
        raise ValueError(f"context players need estimator='pair', got '{estimator}'.")
    if open_outputs is not None:
        if estimator != "pair":
            raise ValueError(f"open_outputs needs estimator='pair', got '{estimator}'.")
        if open_outputs.shape != (b, k) or open_outputs.dtype != torch.bool:
            raise ValueError(
                f"open_outputs must be a bool tensor of shape {(b, k)}, got {tuple(open_outputs.shape)} "
                f"{open_outputs.dtype}."
            )
        if open_outputs.all(1).any():
            raise ValueError("open_outputs leaves every output region of an example out of the game; keep one closed.")
    if presence is None:
        presence_probs = torch.full((k,), 0.5)
    else:
        presence_probs = torch.as_tensor(presence, dtype=torch.float32).flatten()
        if presence_probs.numel() != k or not ((presence_probs > 0) & (presence_probs < 1)).all():
            raise ValueError(f"presence must be {k} probabilities in (0, 1), one per player, got {list(presence)}.")
        if estimator == "exact":
            raise ValueError(
                "presence probabilities need estimator='pair' or 'sampled' ('exact' uses every coalition)."
            )
    presence_probs = presence_probs.to(draw_device)
    if estimator == "pair":
        coalition = torch.rand(b, k, generator=generator, device=draw_device).lt(presence_probs).to(device)
        num_outputs = None
        if open_outputs is None:
            out_k = torch.randint(0, k, (b,), generator=generator, device=draw_device).to(device)
        else:
            closed = ~open_outputs.to(device=draw_device, dtype=torch.bool)
            num_outputs = closed.sum(1)
            # one uniform draw per example, mapped onto its closed regions (the k-th closed one for u in [k/n, (k+1)/n))
            u = torch.rand(b, generator=generator, device=draw_device)
            rank = (u * num_outputs).floor().long().clamp_max(num_outputs - 1)
            out_k = (closed.long().cumsum(1) <= rank[:, None]).sum(1)
            out_k, num_outputs = out_k.to(device), num_outputs.to(device)
        rows = torch.arange(b, device=device)
        always = torch.zeros_like(coalition)
        if context:
            always[:, context] = True
            always[rows, out_k] = False  # the output region's own player stays random
        coalition = coalition | always
        reference = always.clone()
        reference[rows, out_k] = coalition[rows, out_k]  # {k} if k is in S, else the empty coalition (plus context)
        return CoalitionPlan(torch.stack([coalition, reference], 1), estimator, out_k, num_outputs)
    if estimator == "exact":
        # all 2^K coalitions; the empty one (row 0) and the singletons (rows 2^j) are among them
        return CoalitionPlan(all_coalitions(k, device)[None].expand(b, -1, -1), estimator)
    if estimator == "sampled":
        if num_coalitions < 1:
            raise ValueError(f"num_coalitions must be >= 1, got {num_coalitions}.")
        refs = torch.cat(
            [torch.zeros(1, k, dtype=torch.bool, device=device), torch.eye(k, dtype=torch.bool, device=device)]
        )
        sampled = (
            torch.rand(b, num_coalitions, k, generator=generator, device=draw_device).lt(presence_probs).to(device)
        )
        return CoalitionPlan(torch.cat([refs[None].expand(b, -1, -1), sampled], 1), estimator)
    raise ValueError(f"estimator must be 'exact', 'sampled' or 'pair', got '{estimator}'.")


def loss_from_coalition_outputs(
    eps: torch.Tensor,
    plan: CoalitionPlan,
    regions: torch.Tensor,
    value: str = "pixel",
    example_weights: Optional[torch.Tensor] = None,
    border: int = 0,
) -> torch.Tensor:
    """L_IE of a batch from the model outputs on the coalition inputs of `plan`.

    Args:
        eps (`torch.Tensor` of shape `(B, M, C, H, W)`): predicted noise for `coalition_inputs(..., plan.coalitions)`.
        regions (`(B, K, H, W)`): the partition. example_weights (`(B,)`, optional): e.g. 0 without a label map.
        border (`int`): output pixels within `border` of another region are left out of the values
            (`region_interiors`); the players (inputs) are always the whole regions. 0 = the exact loss.

    Returns:
        scalar loss: weighted mean over the batch of the per-example estimate of sum_k E_S[terms].
    """
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}.")
    regions = region_interiors(regions, border)
    b, k = regions.shape[:2]
    if plan.estimator == "pair":
        rows = torch.arange(b, device=regions.device)
        region_k = regions[rows, plan.out_k][:, None, None]  # (B, 1, 1, H, W)
        vals = region_values(eps, region_k, value)[:, :, 0]  # (B, 2, ...)
        scale = k if plan.num_outputs is None else plan.num_outputs.to(vals.dtype)
        per_example = scale * _squared_region_distance(vals[:, 0], vals[:, 1], value)
    elif plan.estimator == "exact":
        singles = 2 ** torch.arange(k, device=regions.device)
        empty_vals = region_values(eps[:, 0], regions, value)
        single_vals = _singleton_value_per_k(eps[:, singles], regions, value)
        vals = region_values(eps, regions[:, None], value)
        terms = dummy_player_terms(vals, plan.coalitions, single_vals, empty_vals, value)
        per_example = terms.sum(-1).mean(1)
    else:
        empty_vals = region_values(eps[:, 0], regions, value)
        single_vals = _singleton_value_per_k(eps[:, 1 : k + 1], regions, value)
        vals = region_values(eps[:, k + 1 :], regions[:, None], value)
        terms = dummy_player_terms(vals, plan.coalitions[:, k + 1 :], single_vals, empty_vals, value)
        per_example = terms.sum(-1).mean(1)
    if example_weights is not None:
        w = example_weights.to(per_example.dtype)
        return (per_example * w).sum() / w.sum().clamp_min(1.0)
    return per_example.mean()


def interpretability_loss(
    model_fn,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    regions: torch.Tensor,
    baseline: torch.Tensor,
    estimator: str = "pair",
    value: str = "pixel",
    num_coalitions: int = 4,
    generator: Optional[torch.Generator] = None,
    example_weights: Optional[torch.Tensor] = None,
    border: int = 0,
    context: Optional[Sequence[int]] = None,
    presence: Optional[Sequence[float]] = None,
    open_outputs: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The dummy-player loss L_IE = E_S sum_k [terms of Theorem 1], for one batch.

    The expectation is over coalitions S drawn uniformly from all 2^K subsets (each player present w.p. 1/2), so
    every estimator below is unbiased for `estimator="exact"`:

    - `"exact"`: all 2^K coalitions (2^K model evaluations per example).
    - `"sampled"`: `num_coalitions` coalitions shared across k (the paper's Castro-style sampling) plus the empty
      and the K singleton coalitions: `K + 1 + C` evaluations per example.
    - `"pair"`: one random (S, k) per example; needs v_k(S) and one reference (v_k({k}) or v_k(empty)), i.e. two
      evaluations per example whatever K is. Scaled by K so it estimates the sum over k.

    All evaluations go through `model_fn` in ONE batched call (`plan_coalitions` + `coalition_inputs` +
    `loss_from_coalition_outputs` let a training loop merge that call with the DDPM forward, which DDP needs).

    Args:
        model_fn: callable `(x (N, C, H, W), t (N,)) -> eps (N, C, H, W)`.
        x_t (`(B, C, H, W)`), timesteps (`(B,)`), regions (`(B, K, H, W)`), baseline (`(B, C, H, W)`).
        value (`str`): `"pixel"` (per-pixel restriction) or `"mean"` (region mean, as in the paper).
        example_weights (`(B,)`, optional): e.g. 0 for images without a part label map.
        border (`int`): leave output pixels within `border` of another region out (see `loss_from_coalition_outputs`).
        context (player indices, optional): players every region may depend on (one-way game, see `plan_coalitions`).
        presence (`(K,)`, optional): each player's probability of being in a drawn coalition (see `plan_coalitions`).
        open_outputs (`(B, K)` bool, optional): output regions left out of the game per example (`plan_coalitions`).

    Returns:
        scalar loss (mean over the batch).
    """
    plan = plan_coalitions(regions, estimator, num_coalitions, generator, context, presence, open_outputs)
    inputs = coalition_inputs(x_t, baseline, regions, plan.coalitions)  # (B, M, C, H, W)
    m = inputs.shape[1]
    eps = model_fn(inputs.flatten(0, 1), timesteps.repeat_interleave(m)).reshape(inputs.shape)
    return loss_from_coalition_outputs(eps, plan, regions, value, example_weights, border)


def shapley_weight_matrix(num_players: int, device=None) -> torch.Tensor:
    """Matrix W `(K, 2^K)` with phi_j = sum_s W[j, s] v(s) the exact Shapley value (coalitions as in `all_coalitions`)."""
    coalitions = all_coalitions(num_players)
    sizes = coalitions.sum(1)
    w = torch.zeros(num_players, 2**num_players, dtype=torch.float64)
    fact = [math.factorial(i) for i in range(num_players + 1)]
    for s in range(2**num_players):
        for j in range(num_players):
            if coalitions[s, j]:
                continue
            m = int(sizes[s])
            weight = fact[m] * fact[num_players - m - 1] / fact[num_players]
            w[j, s | (1 << j)] += weight
            w[j, s] -= weight
    return w.to(device)


def shapley_along(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact Shapley values from all 2^K coalition values stored along `dim`; that axis becomes the K players."""
    num_coalitions = values.shape[dim]
    k = int(round(math.log2(num_coalitions)))
    if 2**k != num_coalitions:
        raise ValueError(f"Axis {dim} has {num_coalitions} entries; all 2^K coalitions are needed.")
    w = shapley_weight_matrix(k, values.device)
    moved = values.movedim(dim, -1).double()
    return (moved @ w.T).movedim(-1, dim).to(values.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Locality metric and colour
# ----------------------------------------------------------------------------------------------------------------------
def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] `(B, 3, H, W)` -> CIELAB (D65) `(B, 3, H, W)`, L in [0, 100]."""
    rgb = rgb.clamp(0, 1).double()
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
        dtype=torch.float64,
        device=rgb.device,
    )
    xyz = torch.einsum("ij,bjhw->bihw", m, linear)
    white = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64, device=rgb.device).view(1, 3, 1, 1)
    xyz = xyz / white
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp_min(1e-12) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    lab = torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)
    return lab.float()


def difference_map(image: torch.Tensor, edited: torch.Tensor, color_space: str = "lab") -> torch.Tensor:
    """Per-pixel squared difference `(B, H, W)` summed over channels, images in [0, 1] `(B, 3, H, W)`."""
    if color_space == "lab":
        image, edited = rgb_to_lab(image), rgb_to_lab(edited)
    elif color_space != "rgb":
        raise ValueError(f"color_space must be 'rgb' or 'lab', got '{color_space}'.")
    return ((image.float() - edited.float()) ** 2).sum(1)


def edit_locality(
    image: torch.Tensor,
    edited: torch.Tensor,
    mask: torch.Tensor,
    color_space: str = "rgb",
    normalization: str = "paper",
) -> torch.Tensor:
    """Locality of an edit, MSE_out / MSE_in (lower = more local), per image `(B,)`.

    With M the region mask and D the per-pixel squared difference, MSE_in = sum(M*D)/sum(M) and
    `normalization="paper"`: MSE_out = sum((1-M)*D)/sum(M) (both over the *inside* area, as the paper writes it);
    `normalization="area"`: MSE_out = sum((1-M)*D)/sum(1-M) (per-area).

    Args:
        image, edited (`(B, 3, H, W)` in [0, 1]); mask (`(B, 1, H, W)` or `(B, H, W)`, 0/1).
    """
    d = difference_map(image, edited, color_space)
    m = mask.reshape(d.shape).float()
    inside = m.sum((1, 2))
    if (inside == 0).any():
        raise ValueError("edit_locality needs a non-empty mask for every image.")
    mse_in = (m * d).sum((1, 2)) / inside
    if normalization == "paper":
        mse_out = ((1 - m) * d).sum((1, 2)) / inside
    elif normalization == "area":
        mse_out = ((1 - m) * d).sum((1, 2)) / (1 - m).sum((1, 2)).clamp_min(1.0)
    else:
        raise ValueError(f"normalization must be 'paper' or 'area', got '{normalization}'.")
    return mse_out / mse_in.clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------
class InterpretableDDPMPipeline(DiffusionPipeline):
    r"""DDIM generation with region edits, DDIM inversion and exact Shapley region attribution.

    Sampling is deterministic DDIM (eta = 0) unless `eta` is set: with eta > 0 the noise each step adds is drawn from
    x_T (`step_noise`), so an image is a function of x_T either way and the region edits stay local.

    This model inherits from [`DiffusionPipeline`]; see the superclass for the generic loading/saving methods.

    Args:
        unet ([`UNet2DModel`]): a pixel-space noise predictor.
        scheduler ([`DDIMScheduler`]): must be a DDIM scheduler. The shipped models use `clip_sample=True` (clipping
            the predicted x_0 keeps pixel-space models from saturating colours); clipping is per pixel, so it keeps
            edits local, and inversion stays exact wherever the predicted x_0 is in range.
        parser (`SegformerForSemanticSegmentation`, *optional*): a face-part parser used to find concept masks of
            individual faces; without one, the concept templates are used.
        concepts (`str` or `dict`, *optional*): `{concept name: [part label ids]}` or `"eyes=4,5 nose=6 mouth=7"`;
            the "rest" region is implied. Defaults to eyes, nose and mouth.
        concept_templates (`dict`, *optional*): `{concept name: encoded binary mask}` (see `encode_binary_mask`),
            the fallback mask of each concept.
        parser_label_mapping (`dict`, *optional*): `{parser label id: face part label id}` for parsers trained on
            another label set (e.g. the 19 CelebAMask-HQ labels); identity when `None`.
        parser_normalization (`str`): how the parser wants its pixels: `"minus_one_one"` or `"imagenet"`.
        parser_resolution (`int`, *optional*): the parser's input size; the model resolution when `None`.
        harmonize_noise (`bool`, defaults to `False`): the default of every call's `harmonize_noise`: tie the noise
            mean of each part's region to the surrounding rest region's, so that parts take their colour from the
            face (see [`~InterpretableDDPMPipeline.harmonize`]). Off in the shipped models (trained on plain
            Gaussian noise), and so by default.
        eta (`float`, defaults to 0): the default of every call's `eta`: 0 is deterministic DDIM; 1 adds at every
            step the noise of DDPM's ancestral sampler, drawn from x_T pixel by pixel (`step_noise`), so an image
            stays a function of x_T and region edits stay local.
        num_inference_steps (`int`, defaults to 50): the default of every call's `num_inference_steps`. Stochastic
            sampling needs more steps than DDIM (the shipped models: eta = 1, 100 steps); the sampler is part of the
            model folder, so that `pipe()` draws the faces its card describes.
    """

    _optional_components = ["parser"]
    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDIMScheduler,
        parser=None,
        concepts: Optional[Union[str, Dict[str, List[int]]]] = None,
        concept_templates: Optional[Dict[str, str]] = None,
        parser_label_mapping: Optional[Dict[Union[str, int], int]] = None,
        parser_normalization: str = "minus_one_one",
        parser_resolution: Optional[int] = None,
        harmonize_noise: bool = False,
        eta: float = 0.0,
        num_inference_steps: int = 50,
    ):
        super().__init__()
        if not isinstance(scheduler, DDIMScheduler):
            raise ValueError(
                f"InterpretableDDPMPipeline needs a DDIMScheduler (deterministic eta = 0 sampling), got "
                f"{type(scheduler).__name__}. Use DDIMScheduler.from_config(scheduler.config)."
            )
        # Stored in the command-line form: a JSON object would lose the concepts' order (configs sort their keys)
        # and the order decides which concept keeps a pixel where dilated masks overlap.
        concepts = concepts_to_string(parse_concepts(concepts))
        if parser_normalization not in ("minus_one_one", "imagenet"):
            raise ValueError(
                f"parser_normalization must be 'minus_one_one' or 'imagenet', got '{parser_normalization}'."
            )
        if parser_label_mapping:
            try:  # JSON configs store the keys as strings; keep that form
                parser_label_mapping = {str(int(k)): int(v) for k, v in dict(parser_label_mapping).items()}
            except (TypeError, ValueError):
                raise ValueError(
                    f"parser_label_mapping must map integer ids to integer ids, got {parser_label_mapping}."
                ) from None
            bad = sorted({v for v in parser_label_mapping.values() if v not in FACE_PART_LABELS})
            if bad:
                raise ValueError(
                    f"parser_label_mapping maps to {bad}, which are not face part ids {list(FACE_PART_LABELS)}."
                )
        num_parser_labels = getattr(getattr(parser, "config", None), "num_labels", None)
        if parser is not None and not parser_label_mapping and num_parser_labels not in (None, len(FACE_PART_LABELS)):
            raise ValueError(
                f"The parser has {num_parser_labels} labels, not the {len(FACE_PART_LABELS)} face part labels; pass "
                "parser_label_mapping={parser id: face part id} (e.g. for the 19 CelebAMask-HQ labels)."
            )
        self.register_modules(unet=unet, scheduler=scheduler, parser=parser)
        self.register_to_config(
            concepts=concepts,
            concept_templates=concept_templates,
            parser_label_mapping=parser_label_mapping,
            parser_normalization=parser_normalization,
            parser_resolution=parser_resolution,
            harmonize_noise=bool(harmonize_noise),
            eta=self._valid_eta(eta),
            num_inference_steps=self._valid_steps(num_inference_steps, scheduler),
        )

    # -- basic properties -------------------------------------------------------------------------------------------
    @property
    def concepts(self) -> Dict[str, List[int]]:
        """`{concept name: [part label ids]}`, in order; the "rest" region is implied."""
        return parse_concepts(self.config.concepts)

    @property
    def region_names(self) -> List[str]:
        """Names of the K regions of the game: the concepts, then "rest"."""
        return region_names_of(self.concepts)

    @property
    def resolution(self) -> Tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def image_channels(self) -> int:
        """Channels of the images and of x_T: the UNet's output channels (its input adds the layout channels)."""
        config = self.unet.config
        return getattr(config, "out_channels", config.in_channels)

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        return (self.image_channels, *self.resolution)

    @property
    def num_layout_channels(self) -> int:
        """Layout channels the UNet takes after the image (one per concept), 0 for a plain model."""
        return self.unet.config.in_channels - self.image_channels

    # -- saving ---------------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves like [`DiffusionPipeline.save_pretrained`] (safetensors), plus this file, and names the custom class
        in `model_index.json` (`["pipeline_interpretable_ddpm", "InterpretableDDPMPipeline"]`) so that a folder or
        Hub repo holding it loads with `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`."""
        import os
        import shutil

        kwargs.setdefault("safe_serialization", True)
        push_to_hub = kwargs.pop("push_to_hub", False)
        super().save_pretrained(save_directory, *args, **kwargs)
        target = os.path.join(save_directory, f"{PIPELINE_MODULE_NAME}.py")
        if os.path.islink(target):  # a folder whose file links to the source: never write through the link into it
            os.unlink(target)
        shutil.copyfile(inspect.getfile(type(self)), target)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [PIPELINE_MODULE_NAME, PIPELINE_CLASS_NAME]
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = kwargs.get("repo_id") or os.path.basename(os.path.abspath(save_directory))
            repo_id = create_repo(
                repo_id, exist_ok=True, private=kwargs.get("private"), token=kwargs.get("token")
            ).repo_id
            upload_folder(repo_id=repo_id, folder_path=save_directory, token=kwargs.get("token"))

    # -- input checks ---------------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        num_inference_steps,
        output_type: Optional[str] = None,
        clip_sample: Optional[bool] = None,
        eta: Optional[float] = None,
    ) -> int:
        """Checks the arguments the public methods share (as diffusers pipelines' `check_inputs`); raises a
        `ValueError` naming the bad argument. Returns `num_inference_steps` as a Python int."""
        num_inference_steps = self._check_sampling_args(eta, num_inference_steps)
        if output_type is not None and output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        check_optional_bool(clip_sample, "clip_sample", " (the scheduler's setting)")
        return num_inference_steps

    @property
    def sampler(self) -> Dict[str, Union[float, int]]:
        """`{"eta": ..., "num_inference_steps": ...}`: the sampler of every call that does not pass its own."""
        return {"eta": self._eta(None), "num_inference_steps": self._check_sampling_args(None, None)}

    @staticmethod
    def _valid_eta(eta) -> float:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= float(eta) <= 1:
            raise ValueError(f"eta must be a number in [0, 1] (0: DDIM, 1: DDPM-like sampling), got {eta!r}.")
        return float(eta)

    def _eta(self, eta: Optional[float]) -> float:
        """A call's eta: its own, or the pipeline's setting when `None`."""
        return self._valid_eta(getattr(self.config, "eta", 0.0) if eta is None else eta)

    @staticmethod
    def _valid_steps(num_inference_steps, scheduler) -> int:
        num_inference_steps = check_int(num_inference_steps, "num_inference_steps", minimum=1)
        if num_inference_steps > scheduler.config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps ({num_inference_steps}) exceeds the scheduler's "
                f"{scheduler.config.num_train_timesteps} training timesteps."
            )
        return num_inference_steps

    def _check_sampling_args(self, eta: Optional[float], num_inference_steps: Optional[int]) -> int:
        """Checks a call's sampler; `None` takes the pipeline's setting. Returns the steps as a Python int."""
        self._eta(eta)
        if num_inference_steps is None:
            num_inference_steps = getattr(self.config, "num_inference_steps", 50)
        return self._valid_steps(num_inference_steps, self.scheduler)

    def _check_latents(self, latents, name: str = "latents") -> torch.Tensor:
        if isinstance(latents, InversionOutput):
            latents = latents.latents
        if not isinstance(latents, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(latents).__name__}.")
        if latents.ndim == 3:
            latents = latents[None]
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, self.latent_shape))}) for this model; "
                f"got {tuple(latents.shape)}."
            )
        check_tensor_values(latents, name)
        if latents.abs().amax() > LATENTS_MAX_ABS:
            raise ValueError(
                f"{name} holds values up to {float(latents.abs().amax()):.3g}; x_T is standard Gaussian noise (|x| < 7 "
                f"in practice), values beyond {LATENTS_MAX_ABS:g} are refused."
            )
        return latents.to(self._execution_device, self.unet.dtype)

    def _trajectory_start(self, latents, num_inference_steps: int, name: str = "latents"):
        """A tensor x_T or an [`InversionOutput`] -> `(latents, start timestep or None, source images or None,
        warning or None)`. `None` as timestep means the whole schedule, as for a plain tensor."""
        if not _is_inversion(latents):
            return self._check_latents(latents, name), None, None, None
        if tuple(latents.latents.shape[-2:]) != self.resolution:
            raise ValueError(
                f"{name} is an InversionOutput at {tuple(latents.latents.shape[-2:])}, but this pipeline works at "
                f"{self.resolution}: invert the image with this pipeline."
            )
        inverted_steps = latents.num_inference_steps
        if inverted_steps is not None and int(inverted_steps) != num_inference_steps:
            raise ValueError(
                f"{name} was inverted with num_inference_steps={inverted_steps}, but this call runs "
                f"{num_inference_steps} steps: the inversion is exact only for the schedule it was made with. Pass "
                f"num_inference_steps={inverted_steps}, or invert with num_inference_steps={num_inference_steps}."
            )
        x = self._check_latents(latents.latents, name)
        images = None if latents.images is None else latents.images.to(x.device, x.dtype)
        t0 = latents.timestep
        if t0 is not None:
            self.scheduler.set_timesteps(num_inference_steps)
            schedule = self.scheduler.timesteps.tolist()
            if int(t0) not in schedule:
                raise ValueError(
                    f"{name} was inverted to timestep {t0} with {latents.num_inference_steps} steps; the "
                    f"{num_inference_steps}-step schedule has no such step. Pass num_inference_steps="
                    f"{latents.num_inference_steps}."
                )
            t0 = None if int(t0) == schedule[0] else int(t0)
        return x, t0, images, latents.warning

    def _mask_source(self, latents, images, t0, num_inference_steps: int, layout=None, eta=None):
        """What a mask by concept name is found on: the inverted photos themselves, else the image the latents make
        (from x_T as before, or from x_t at `t0`). Returns `(tensor, concept_mask kwargs)`."""
        if images is None and t0 is not None:
            images = self.denoise(
                latents, num_inference_steps, show_progress=False, clip_sample=False, start_timestep=t0, layout=layout
            )
        return (latents, {"layout": layout, "eta": eta}) if images is None else (images, {"is_latents": False})

    def prepare_mask(
        self, mask: MaskInput, latents: torch.Tensor, allow_empty_mask: bool = False, **concept_kwargs
    ) -> torch.Tensor:
        """Any supported mask -> the binary mask of each image at model resolution.

        A concept name is resolved per image by [`~InterpretableDDPMPipeline.concept_mask`] on the image the latents
        generate (parser) or the concept's template (no parser).

        Args:
            mask: a concept name, an HxW array / tensor / PIL image, or a `(B, 1, H, W)` batch.
            latents (`torch.Tensor` of shape `(B, C, H, W)`): the images' x_T (or model-space images, with
                `is_latents=False` in `concept_kwargs`).
            allow_empty_mask (`bool`): an empty mask raises unless this is `True`.
            **concept_kwargs: passed to `concept_mask` for a concept name.

        Returns:
            `torch.Tensor` of shape `(B, 1, H, W)`: 0/1, in the latents' dtype and on their device.
        """
        b = latents.shape[0]
        if isinstance(mask, str):
            mask = self.concept_mask(latents, mask, **concept_kwargs)
        mask = to_mask_tensor(mask, b, self.resolution, device=latents.device)
        if not allow_empty_mask and (mask.flatten(1).sum(1) == 0).any():
            raise ValueError(
                "The mask is empty (no pixel selected) for at least one image; nothing would change. "
                "Pass allow_empty_mask=True to allow it."
            )
        return mask.to(latents.dtype)

    # -- harmonised noise ------------------------------------------------------------------------------------------------
    def _harmonizes(self, harmonize_noise: Optional[bool]) -> bool:
        if harmonize_noise is None:
            return bool(getattr(self.config, "harmonize_noise", False))
        check_optional_bool(harmonize_noise, "harmonize_noise")
        return bool(harmonize_noise)

    def harmonization_regions(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The regions whose noise mean is tied when x_T is drawn, before any image exists: each concept's template
        grown by `HARMONIZE_DILATION` px (where they overlap the earlier concept keeps the pixel), `(1, K, H, W)`,
        and the band of rest region around them, `(1, 1, H, W)`; `None` when the pipeline has no concept templates."""
        templates = self.config.concept_templates or {}
        if not all(c in templates for c in self.concepts):
            return None
        masks = torch.stack([self.template_mask(c) for c in self.concepts]).float()[None]
        regions = exclusive_partition(dilate_masks(masks, HARMONIZE_DILATION))[:, :-1]
        return regions.to(self._execution_device), harmonization_reference(regions).to(self._execution_device)

    def harmonize(self, latents: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""Harmonised noise: ties the per-channel mean of x_T inside part regions to the rest region around them.

        With `mask=None` (fresh x_T): every concept's template region, against the rest band around all of them
        (no-op without concept templates). With a `(B, 1, H, W)` mask (an edit): the pixels inside the mask, against
        the template rest band outside the mask (or, where that holds fewer than 16 pixels or there are no templates,
        the `HARMONIZE_CONTEXT_WIDTH`-px band around the mask). Only pixels inside the regions change, and they take
        only the mean of pixels outside them, so an edit that harmonises its own region changes x_T inside that
        region only.

        Args:
            latents (`torch.Tensor` of shape `(B, C, H, W)`): x_T.
            mask (`torch.Tensor` of shape `(B, 1, H, W)`, *optional*): the region of an edit.

        Returns:
            `torch.Tensor` of shape `(B, C, H, W)`: the harmonised x_T.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> x_T = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> face = pipe(latents=pipe.harmonize(x_T), num_inference_steps=25)  # parts coloured like the face
        ```
        """
        template = self.harmonization_regions()
        if mask is None:
            if template is None:
                return latents
            regions, reference = template
            return harmonize_regions(latents, regions, reference)
        region = (mask > 0.5).float()
        reference = harmonization_reference(region)
        if template is not None:
            outside = template[1] * (1 - region)
            enough = outside.sum((-2, -1), keepdim=True) >= 16
            reference = torch.where(enough, outside, reference)
        return harmonize_regions(latents, region, reference)

    # -- images in and out ---------------------------------------------------------------------------------------------
    def preprocess(self, image: ImageInput, resize: bool = False) -> torch.Tensor:
        """Images in any of the accepted forms -> the model-space tensor.

        Args:
            image: PIL image(s), numpy `(H, W, 3)` / `(B, H, W, 3)` (uint8, or float in [0, 1]) or a torch tensor
                `(B, 3, H, W)` in [0, 1], at the model resolution unless `resize=True`.
            resize (`bool`): resize other sizes (bicubic; for aligned face crops only).

        Returns:
            `torch.Tensor` of shape `(B, 3, H, W)` in [-1, 1], on the pipeline's device and dtype.
        """
        h, w = self.resolution
        if isinstance(image, (PIL.Image.Image, np.ndarray)) and not (
            isinstance(image, np.ndarray) and image.ndim == 4
        ):
            image = [image]
        if isinstance(image, list):
            if not image:
                raise ValueError("No image given.")
            arrays = []
            for im in image:
                if isinstance(im, PIL.Image.Image):
                    if getattr(im, "n_frames", 1) > 1:
                        raise ValueError(
                            f"image is an animation of {im.n_frames} frames; pass one frame (e.g. im.seek(i); "
                            "im.convert('RGB')) rather than have the first one taken silently."
                        )
                    if im.size != (w, h):
                        if not resize:
                            raise ValueError(
                                f"Image of size {im.size[1]}x{im.size[0]} does not match the model resolution {h}x{w}; "
                                "pass resize=True (for aligned face crops) or resize it first."
                            )
                        im = im.convert("RGB").resize((w, h), PIL.Image.BICUBIC)
                    im = np.asarray(im.convert("RGB"))
                if not isinstance(im, np.ndarray):
                    raise ValueError(f"Unsupported image type {type(im).__name__}.")
                if im.dtype.kind not in "biuf":
                    raise ValueError(f"image arrays must hold real numbers (uint8 or float), got dtype {im.dtype}.")
                arrays.append(im)
            image = np.stack(
                [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32) for a in arrays]
            )
        if isinstance(image, np.ndarray):
            if image.ndim != 4 or image.shape[-1] != 3:
                raise ValueError(f"numpy images must have shape (B, H, W, 3), got {image.shape}.")
            if image.dtype == np.uint8:
                image = image.astype(np.float32) / 255.0
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2)
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"Unsupported image type {type(image).__name__}.")
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[1] != self.image_channels:
            raise ValueError(
                f"image tensor must have shape (B, {self.image_channels}, H, W), got {tuple(image.shape)}."
            )
        check_tensor_values(image, "image", floating=False)
        image = image.float()
        if tuple(image.shape[-2:]) != (h, w):
            if not resize:
                raise ValueError(
                    f"Image of size {image.shape[-2]}x{image.shape[-1]} does not match the model resolution {h}x{w}; "
                    "pass resize=True or resize it first."
                )
            image = F.interpolate(image, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        if image.min() < -1e-3 or image.max() > 1 + 1e-3:
            raise ValueError(
                f"Image tensors must be in [0, 1]; image holds values in [{float(image.min()):.4g}, "
                f"{float(image.max()):.4g}] (uint8 arrays and PIL images are read as 0..255)."
            )
        return (image * 2 - 1).to(self._execution_device, self.unet.dtype)

    def postprocess(self, x0: torch.Tensor, output_type: str = "pil"):
        """Model space -> output images.

        Args:
            x0 (`torch.Tensor` of shape `(B, C, H, W)`): images in [-1, 1] (values beyond are clipped).
            output_type (`str`): `"pil"`, `"np"` or `"pt"`.

        Returns:
            A list of B PIL images, a numpy array `(B, H, W, C)` or a tensor `(B, C, H, W)`, in [0, 1].
        """
        image = (x0 / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got '{output_type}'.")
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return self.numpy_to_pil(image) if output_type == "pil" else image

    # -- DDIM ------------------------------------------------------------------------------------------------------------
    def _alpha_pairs(self, num_inference_steps: int) -> List[Tuple[int, float, float]]:
        """(t, alpha_bar_t, alpha_bar_prev) for every DDIM step, exactly as `DDIMScheduler.step` computes them."""
        self.scheduler.set_timesteps(num_inference_steps)
        sched = self.scheduler
        pairs = []
        for t in sched.timesteps.tolist():
            prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
            a_t = float(sched.alphas_cumprod[t])
            a_prev = float(sched.alphas_cumprod[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
            pairs.append((t, a_t, a_prev))
        return pairs

    def predicted(self, model_output: torch.Tensor, sample: torch.Tensor, t: int, quantity: str = "noise"):
        r"""The predicted noise or x_0 from a UNet output, whatever the scheduler's `prediction_type`.

        With a = alpha_bar_t and x_t = sqrt(a) x_0 + sqrt(1 - a) eps: an epsilon model outputs eps, a v model
        v = sqrt(a) eps - sqrt(1 - a) x_0 and a sample model x_0, so the same denoiser gives the same noise and x_0
        under any parametrisation. From a v output both are finite at every t, zero terminal SNR (a = 0) included;
        from an epsilon output x_0 needs a > 0.

        Args:
            model_output (`torch.Tensor` of shape `(B, C, H, W)`): `unet(sample, t).sample`.
            sample (`torch.Tensor` of shape `(B, C, H, W)`): x_t, the UNet's input.
            t (`int`): the timestep.
            quantity (`str`): `"noise"` or `"x0"`.

        Returns:
            `torch.Tensor` of shape `(B, C, H, W)`: the predicted noise or x_0, in the output's dtype.
        """
        kind = self.scheduler.config.prediction_type
        if kind not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"Unknown prediction_type '{kind}'.")
        if quantity not in ("noise", "x0"):
            raise ValueError(f"quantity must be 'noise' or 'x0', got {quantity!r}.")
        a = self.scheduler.alphas_cumprod[int(t)].to(model_output.device, torch.float64)
        out, x = model_output.double(), sample.double()
        if kind == "v_prediction":
            result = (
                a.sqrt() * out + (1 - a).sqrt() * x if quantity == "noise" else a.sqrt() * x - (1 - a).sqrt() * out
            )
        elif kind == "epsilon":
            result = out if quantity == "noise" else (x - (1 - a).sqrt() * out) / a.sqrt()
        else:
            result = (x - a.sqrt() * out) / (1 - a).sqrt() if quantity == "noise" else out
        return result.to(model_output.dtype)

    def layout_input(self, layout=None, batch_size: int = 1) -> Optional[torch.Tensor]:
        """The layout channels of a layout-conditioned model (`None` for a plain model, which takes no layout).

        Args:
            layout (*optional*): part label maps `(B, H, W)` (integer, e.g. from `parse`), or the concepts' masks
                `(B, K, H, W)` with values in [0, 1], K = len(self.concepts); `None` for the concept templates (the
                average layout of the training faces).
            batch_size (`int`): the batch the layout is for; a layout of batch 1 is shared by all.

        Returns:
            `torch.Tensor` of shape `(batch_size, K, H, W)` on the execution device, or `None`.
        """
        if not self.num_layout_channels:
            if layout is not None:
                raise ValueError("layout: this model is not layout-conditioned (its UNet takes the image alone).")
            return None
        if self.num_layout_channels != len(self.concepts):
            raise ValueError(
                f"The UNet takes {self.num_layout_channels} layout channels but the pipeline has "
                f"{len(self.concepts)} concepts ({', '.join(self.concepts)}); they must match."
            )
        if layout is None:
            layout = torch.stack([self.template_mask(c) for c in self.concepts])[None].float()
        if not isinstance(layout, torch.Tensor):
            raise ValueError(
                f"layout must be a torch.Tensor (label maps or concept masks), got {type(layout).__name__}."
            )
        if layout.ndim == 3 and not layout.is_floating_point():
            layout = layout_from_labels(layout, self.concepts)
        if layout.ndim != 4 or layout.shape[1] != len(self.concepts) or tuple(layout.shape[-2:]) != self.resolution:
            raise ValueError(
                f"layout must be label maps (B, {', '.join(map(str, self.resolution))}) or concept masks "
                f"(B, {len(self.concepts)}, {', '.join(map(str, self.resolution))}); got {tuple(layout.shape)}."
            )
        if layout.shape[0] not in (1, batch_size):
            raise ValueError(f"layout holds {layout.shape[0]} layouts for a batch of {batch_size}.")
        check_mask_values(layout, "layout")
        return layout.to(self._execution_device, self.unet.dtype).expand(batch_size, -1, -1, -1)

    def _refuse_layout_model(self, method: str) -> None:
        if self.num_layout_channels:
            raise ValueError(
                f"`{method}` does not take a layout yet, and this model is layout-conditioned: generation, "
                "`resample_region` and `swap_regions` do (their `layout` arguments)."
            )

    def _unet(self, x: torch.Tensor, t, layout: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The UNet's output for x_t, with the layout channels of a layout-conditioned model."""
        if self.num_layout_channels and layout is None:
            raise ValueError("This model is layout-conditioned: its UNet needs a layout (see `layout_input`).")
        return self.unet(with_layout(x, layout), t).sample

    def _eps(self, x: torch.Tensor, t: int, layout: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predicted noise of the UNet (epsilon, or converted from v / sample prediction)."""
        return self.predicted(self._unet(x, t, layout), x, t, "noise")

    @torch.no_grad()  # a DDIM loop kept for backward would hold every step's activations
    def denoise(
        self,
        latents: torch.Tensor,
        num_inference_steps: Optional[int] = None,
        generator=None,
        show_progress: bool = True,
        clip_sample: Optional[bool] = None,
        start_timestep: Optional[int] = None,
        layout: Optional[torch.Tensor] = None,
        eta: Optional[float] = None,
    ) -> torch.Tensor:
        """Runs the DDIM loop from x_T (or x_t) to x_0, in model space.

        Args:
            latents (`torch.Tensor` of shape `(B, C, H, W)`): x_T, or x_t at `start_timestep`.
            num_inference_steps (`int`, *optional*): steps of the whole schedule; the pipeline's setting when `None`.
            generator (`torch.Generator`, *optional*): unused (eta = 0 draws no noise, eta > 0 draws it from x_T); kept
                so that callers may pass theirs.
            show_progress (`bool`): show the progress bar.
            clip_sample (`bool`, *optional*): overrides the scheduler's clipping of the predicted x_0 for this call
                (`None` keeps it); x_T from `invert` is regenerated with `False`, the setting the inversion is exact for.
            start_timestep (`int`, *optional*): a timestep of the schedule: `latents` are x_t there, and only the
                steps from it on run.
            layout (`torch.Tensor`, *optional*): the layout of a layout-conditioned model (see `layout_input`);
                the concept templates when `None`.
            eta (`float`, *optional*): 0 (DDIM) to 1 (DDPM-like), the noise added at each step drawn from x_T
                (`step_noise`); the pipeline's `eta` when `None`. A trajectory continued from x_t at `start_timestep`
                (an inverted photo) always runs with eta = 0, the sampler its inversion is exact for.

        Returns:
            `torch.Tensor` of shape `(B, C, H, W)`: x_0 in [-1, 1] (model space; see `postprocess`).
        """
        num_inference_steps = self.check_inputs(num_inference_steps, clip_sample=clip_sample, eta=eta)
        eta = 0.0 if start_timestep is not None else self._eta(eta)
        latents = self._check_latents(latents)
        layout = self.layout_input(layout, latents.shape[0])
        scheduler = self.scheduler
        if clip_sample is not None and bool(clip_sample) != bool(scheduler.config.clip_sample):
            scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=clip_sample)
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps
        if start_timestep is not None:
            timesteps = timesteps[timesteps <= int(start_timestep)]
        return self._run_steps(latents, timesteps, scheduler, eta, latents, layout=layout, show_progress=show_progress)

    def _run_steps(
        self,
        x: torch.Tensor,
        timesteps,
        scheduler,
        eta: float,
        noise_source: Optional[torch.Tensor],
        first_step: int = 0,
        layout: Optional[torch.Tensor] = None,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """The sampling loop: steps `x` through `timesteps`, the first of which is step `first_step` of the schedule.
        With eta > 0 step i adds `step_noise(noise_source, i)`: the noise of the x_T the trajectory belongs to."""
        for i, t in enumerate(self.progress_bar(timesteps) if show_progress else timesteps, start=first_step):
            model_output = self._unet(x, t, layout)
            # the step noise comes from x_T, never from a generator
            x = sampling_step(scheduler, model_output, t, x, eta, noise_source, i)
        return x

    @torch.no_grad()  # a DDIM loop kept for backward would hold every step's activations
    def denoise_blended(
        self,
        edited: torch.Tensor,
        original: torch.Tensor,
        mask: torch.Tensor,
        num_inference_steps: Optional[int] = None,
        clip_sample: Optional[bool] = None,
        start_timestep: Optional[int] = None,
        max_batch_size: Optional[int] = None,
        layout: Optional[torch.Tensor] = None,
        eta: Optional[float] = None,
    ) -> torch.Tensor:
        r"""Blended DDIM, the masking of RePaint / blended diffusion / DiffEdit, for any model.

        Runs the unedited trajectory from `original` and the edited one from `edited` in one batch; after every DDIM
        step t -> t_prev the edited trajectory is reset outside the mask to the unedited one:

            x_edit(t_prev) = m * step(x_edit(t)) + (1 - m) * step(x_orig(t)),

        and before the first step `x_edit = m * edited + (1 - m) * original`. So outside the mask the result equals the
        unedited x_0 exactly (it is the same tensor), and inside it follows the edit while its context at every step is
        the unedited image's. With `m` all ones it is the plain edit `denoise(edited)`.

        Args:
            edited, original (`torch.Tensor` of shape `(B, C, H, W)`): x_T (or x_t at `start_timestep`) of the edited
                and of the unedited images.
            mask (`torch.Tensor` of shape `(B, 1, H, W)`): 0/1 region of the edit (fractional values blend linearly).
            start_timestep (`int`, *optional*): as in `denoise`: the inputs are x_t there.
            max_batch_size (`int`, *optional*): images per UNet call (default: all 2B at once).
            layout (`torch.Tensor`, *optional*): the images' layout, for a layout-conditioned model (see
                `layout_input`; the templates when `None`); both trajectories of an image share it.
            eta (`float`, *optional*): as in `denoise`; each trajectory's step noise comes from its own x_T.

        Returns:
            `torch.Tensor` of shape `(B, C, H, W)`: the blended x_0 in model space.
        """
        num_inference_steps = self.check_inputs(num_inference_steps, clip_sample=clip_sample, eta=eta)
        eta = 0.0 if start_timestep is not None else self._eta(eta)
        edited = self._check_latents(edited, "edited")
        original = self._check_latents(original, "original")
        if edited.shape != original.shape:
            raise ValueError(
                f"edited {tuple(edited.shape)} and original {tuple(original.shape)} must have the same shape."
            )
        m = mask.to(edited.device, edited.dtype)
        if (
            m.ndim != 4
            or m.shape[1] != 1
            or m.shape[0] not in (1, edited.shape[0])
            or m.shape[-2:] != edited.shape[-2:]
        ):
            raise ValueError(f"mask must have shape (B, 1, H, W) matching the latents, got {tuple(mask.shape)}.")
        scheduler = self.scheduler
        if clip_sample is not None and bool(clip_sample) != bool(scheduler.config.clip_sample):
            scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=clip_sample)
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps
        if start_timestep is not None:
            timesteps = timesteps[timesteps <= int(start_timestep)]
        b = edited.shape[0]
        layout = self.layout_input(layout, b)
        if layout is not None:  # both trajectories of an image share its layout
            layout = layout.repeat(2, 1, 1, 1)
        x = torch.cat([m * edited + (1 - m) * original, original])
        chunk = x.shape[0] if max_batch_size is None else check_int(max_batch_size, "max_batch_size", minimum=1)
        layout_chunks = [None] * len(x.split(chunk)) if layout is None else layout.split(chunk)
        x_start = x
        for i, t in enumerate(timesteps):
            model_output = torch.cat([self._unet(part, t, lay) for part, lay in zip(x.split(chunk), layout_chunks)])
            x = sampling_step(scheduler, model_output, t, x, eta, x_start, i)
            x = torch.cat([m * x[:b] + (1 - m) * x[b:], x[b:]])
        return x[:b]

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        num_inference_steps: Optional[int] = None,
        eta: Optional[float] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_sample: Optional[bool] = None,
        harmonize_noise: Optional[bool] = None,
        layout: Optional[torch.Tensor] = None,
    ) -> Union[InterpretableDDPMPipelineOutput, Tuple]:
        r"""Generates images with the pipeline's sampler (DDIM, or stochastic with `eta` > 0); a function of x_T either way.

        Args:
            batch_size (`int`): number of images when `latents` is not given.
            generator (`torch.Generator` or list of them, *optional*): draws x_T.
            latents (`torch.Tensor` of shape `(B, C, H, W)` or [`InversionOutput`], *optional*): x_T to start from,
                or the output of `invert`, whose DDIM trajectory is continued from its timestep (unclipped unless
                `clip_sample=True`).
            num_inference_steps (`int`, *optional*): sampling steps; the pipeline's `num_inference_steps` when `None`.
            eta (`float`, *optional*): 0 for DDIM, up to 1 for DDPM-like sampling whose step noise is drawn from x_T
                (`step_noise`), so the image is still a function of x_T; the pipeline's `eta` when `None`. Edit the
                images with the same `eta`.
            output_type (`str`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`): return an [`InterpretableDDPMPipelineOutput`] rather than a tuple.
            clip_sample (`bool`, *optional*): override the scheduler's x_0 clipping for this call; pass `False` to
                regenerate x_T that came from `invert` (the inversion is exact for unclipped DDIM).
            harmonize_noise (`bool`, *optional*): harmonise the x_T this call draws (see `harmonize`; default: the
                pipeline's `harmonize_noise` setting). Given `latents` are used as they are unless this is `True`,
                so that `pipe(latents=out.latents)` and inverted latents regenerate exactly.
            layout (`torch.Tensor`, *optional*): where a layout-conditioned model draws each concept: part label maps
                `(B, H, W)` (e.g. `pipe.parse(photo)`) or concept masks `(B, K, H, W)`; the concept templates when
                `None`. Plain models take none.

        Returns:
            [`InterpretableDDPMPipelineOutput`] with `images`, the `latents` (x_T) that made them and, for a
            layout-conditioned model, their `layout`; or the tuple `(images, latents)`.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=25)
        >>> out.images[0]  # a PIL image, 64 x 64
        >>> again = pipe(latents=out.latents, num_inference_steps=25, output_type="pt")  # x_T redraws the same faces
        >>> again.images.shape
        torch.Size([2, 3, 64, 64])
        ```
        """
        num_inference_steps = self.check_inputs(num_inference_steps, output_type, clip_sample, eta)
        t0 = None
        if latents is None:
            batch_size = check_int(batch_size, "batch_size", minimum=1)
            check_generator(generator, batch_size)
            latents = randn_tensor(
                (batch_size, *self.latent_shape),
                generator=generator,
                device=self._execution_device,
                dtype=self.unet.dtype,
            )
            if self._harmonizes(harmonize_noise):
                latents = self.harmonize(latents)
        else:
            inverted = _is_inversion(latents)
            latents, t0, _, _ = self._trajectory_start(latents, num_inference_steps)
            clip_sample = False if inverted and clip_sample is None else clip_sample
            # given x_T are used as they are unless asked; an inverted photo's never (it carries the photo's colours)
            if self._harmonizes(harmonize_noise) and harmonize_noise is not None and not inverted:
                latents = self.harmonize(latents)
        layout = self.layout_input(layout, latents.shape[0])
        x0 = self.denoise(
            latents, num_inference_steps, generator, clip_sample=clip_sample, start_timestep=t0, layout=layout, eta=eta
        )
        images = self.postprocess(x0, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, latents
        return InterpretableDDPMPipelineOutput(images=images, latents=latents, layout=layout)

    # -- region edits ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def resample_region(
        self,
        latents: torch.Tensor,
        mask: MaskInput,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        new_latents: Optional[torch.Tensor] = None,
        num_inference_steps: Optional[int] = None,
        output_type: str = "pil",
        allow_empty_mask: bool = False,
        return_dict: bool = True,
        clip_sample: Optional[bool] = None,
        harmonize_noise: Optional[bool] = None,
        blend: bool = False,
        layout: Optional[torch.Tensor] = None,
        eta: Optional[float] = None,
    ) -> Union[RegionResampleOutput, Tuple]:
        r"""Redraws x_T inside the mask (new noise), keeps it outside, and regenerates.

        For an [`InversionOutput`] (a real photo inverted to x_t at timestep t0), what is redrawn inside the mask is
        x_t0 itself, as the forward process would make it from the image predicted there, with new noise:
        `sqrt(a) * x0_pred + sqrt(1 - a) * z`, a = alpha_bar(t0), x0_pred the model's prediction of x_0 from x_t0
        (clamped to [-1, 1]), z the new noise. So the part keeps the photo's coarse layout and colour at that noise
        level and its details are drawn anew; the higher the inversion strength, the more of the part changes.
        Outside the mask x_t0 is kept and the DDIM trajectory continues from t0 (unclipped unless `clip_sample=True`).
        The mask by concept name comes from the photo (the parser on the inverted input image).

        Args:
            latents (`torch.Tensor` of shape `(B, C, H, W)` or [`InversionOutput`]): x_T of the images to edit (from
                `__call__`), or the output of `invert`.
            mask: a concept name (`"eyes"`), an HxW tensor / array / PIL image, or a `(B, 1, H, W)` batch; resized
                to the model resolution and binarised.
            generator (`torch.Generator`, *optional*): draws the new noise.
            new_latents (`torch.Tensor` of shape `(B, C, H, W)`, *optional*): the new noise, instead of drawing it
                (x_T inside the mask; for an `InversionOutput`, the z above).
            allow_empty_mask (`bool`): an empty mask raises unless this is `True` (then the image is unchanged).
            clip_sample (`bool`, *optional*): override the scheduler's x_0 clipping (`False` for inverted real images).
            harmonize_noise (`bool`, *optional*): tie the new noise's mean inside the mask to the surrounding rest
                region's (`harmonize`), so the redrawn part takes its colour from the face; x_T changes inside the
                mask only either way. Default: the pipeline's `harmonize_noise` setting.
            blend (`bool`): the training-free masked edit any model allows (RePaint / blended-diffusion style, see
                `denoise_blended`): the unedited and the edited trajectories run in one batch and after every DDIM
                step the edited x_t takes the unedited one outside the mask. Outside the mask the result is then
                exactly the unedited image; `False` (default) lets the model alone keep the edit local.
            layout (`torch.Tensor`, *optional*): for a layout-conditioned model, the layout the images were drawn
                with (the generation output's `layout`; the concept templates when `None`); kept by the edit.
            eta (`float`, *optional*): the sampler the images were drawn with (see `__call__`); the pipeline's when
                `None`. With eta > 0 the step noise inside the mask is redrawn with x_T (it is drawn from x_T).

        Returns:
            [`RegionResampleOutput`] (`images`, new `latents` `(B, C, H, W)`, `mask` `(B, 1, H, W)`, `warning`) or the
            tuple `(images, latents, mask)`.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> face = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=25)
        >>> edit = pipe.resample_region(
        ...     face.latents, "mouth", generator=torch.Generator().manual_seed(1), num_inference_steps=25
        ... )
        >>> edit.images[0]  # the same face with another mouth
        ```
        """
        num_inference_steps = self.check_inputs(num_inference_steps, output_type, clip_sample, eta)
        inverted = _is_inversion(latents)
        clip_sample = False if inverted and clip_sample is None else clip_sample
        latents, t0, sources, warning = self._trajectory_start(latents, num_inference_steps)
        layout = self.layout_input(layout, latents.shape[0])
        # a concept's mask comes from the image the edit starts from: the inverted photo itself, else the image these
        # latents make with this call's settings (clip_sample included)
        ref, kw = (
            self._mask_source(latents, sources, t0, num_inference_steps, layout, eta)
            if isinstance(mask, str)
            else (latents, {})
        )
        m = self.prepare_mask(
            mask, ref, allow_empty_mask, num_inference_steps=num_inference_steps, clip_sample=clip_sample, **kw
        )
        if new_latents is None:
            check_generator(generator, latents.shape[0])
            new_latents = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        else:
            new_latents = self._check_latents(new_latents, "new_latents")
            if new_latents.shape != latents.shape:
                raise ValueError(f"new_latents has shape {tuple(new_latents.shape)}, latents {tuple(latents.shape)}.")
        if t0 is not None:  # x_t0 inside the mask: the predicted x_0 forward-noised to t0 with the new noise
            a = float(self.scheduler.alphas_cumprod[t0])
            x0_pred = ((latents - math.sqrt(1 - a) * self._eps(latents, t0, layout)) / math.sqrt(a)).clamp(-1, 1)
            new_latents = math.sqrt(a) * x0_pred + math.sqrt(1 - a) * new_latents
        edited = m * new_latents + (1 - m) * latents
        if self._harmonizes(harmonize_noise) and not inverted:  # an inverted photo's noise is never harmonised
            edited = self.harmonize(edited, m)
        if not isinstance(blend, (bool, np.bool_)):
            raise ValueError(f"blend must be True or False, got {blend!r}.")
        if blend:
            x0 = self.denoise_blended(
                edited,
                latents,
                m,
                num_inference_steps,
                clip_sample=clip_sample,
                start_timestep=t0,
                layout=layout,
                eta=eta,
            )
        else:
            x0 = self.denoise(
                edited, num_inference_steps, clip_sample=clip_sample, start_timestep=t0, layout=layout, eta=eta
            )
        images = self.postprocess(x0, output_type)
        if not return_dict:
            return images, edited, m
        return RegionResampleOutput(images=images, latents=edited, mask=m, warning=warning)

    @torch.no_grad()
    def swap_regions(
        self,
        latents_a: torch.Tensor,
        latents_b: torch.Tensor,
        mask: MaskInput,
        num_inference_steps: Optional[int] = None,
        output_type: str = "pil",
        mask_from: str = "a",
        allow_empty_mask: bool = False,
        return_dict: bool = True,
        clip_sample: Optional[bool] = None,
        harmonize_noise: Optional[bool] = None,
        blend: bool = False,
        harmonize_photo: Union[bool, float] = False,
        layout_a: Optional[torch.Tensor] = None,
        layout_b: Optional[torch.Tensor] = None,
        eta: Optional[float] = None,
    ) -> Union[RegionSwapOutput, Tuple]:
        r"""Exchanges x_T inside the mask between images A and B and regenerates both (one batched DDIM loop).

        Real photos: `pipe.swap_regions(pipe.invert(photo_a), pipe.invert(photo_b), "eyes")` exchanges x_t at the
        inversions' timestep t0 (about strength * T) and continues both DDIM trajectories from there, unclipped; the
        mask by concept name comes from the photos themselves (the parser on the inverted input images). At the
        default strength the edit stays local; at high strengths (above `LOCAL_EDIT_MAX_STRENGTH`, e.g. 1.0, i.e.
        x_T) the inverted noise of these models is not well-behaved enough and the whole face changes: the output's
        `warning` says so.

        Args:
            latents_a, latents_b (`torch.Tensor` of shape `(B, C, H, W)` or [`InversionOutput`]): x_T of the two
                (batches of) images, or two outputs of `invert` made with the same strength and steps.
            mask: concept name, HxW tensor / array / PIL image or `(B, 1, H, W)` batch.
            mask_from (`str`): for a concept name, whose face defines the region: `"a"`, `"b"` or `"union"`.
            clip_sample (`bool`, *optional*): override the scheduler's x_0 clipping (`False` for inverted real images).
            harmonize_noise (`bool`, *optional*): re-centre the moved noise on its new face: its mean inside the mask
                becomes the receiving image's rest-region mean (`harmonize`), so the donor's part takes the
                receiver's colouring; `False` moves the noise as it is. Default: the pipeline's setting.
            blend (`bool`): the training-free masked edit any model allows (RePaint / blended-diffusion style, see
                `denoise_blended`): each result's trajectory takes, after every DDIM step, the unedited trajectory
                of its own image (A for `images_a`, B for `images_b`) outside the mask, so outside the mask each
                result is exactly its unedited image. `False` (default): plain DDIM from the swapped latents.
            harmonize_photo (`bool` or `float`): the harmonised photo swap, for inverted photos (`InversionOutput`
                inputs, whose noise `harmonize_noise` never touches): the moved x_t0 inside the mask is shifted by the
                difference of the two faces' mean x_t0 in the ring around it (`recentre_moved_region`), so the part
                keeps its shape and its colour relative to the skin, but not the donor's colour cast (a pale donor's
                nose on a darker face). Changes x_t0 inside the mask only. A number in [0, 1] applies that share of
                the shift (`True` = 1). Ignored for x_T (generated faces). Default `False`.
            layout_a, layout_b (`torch.Tensor`, *optional*): for a layout-conditioned model, the layouts images A
                and B were drawn with (the concept templates when `None`); each result keeps its own image's layout,
                so the moved part is drawn where the receiving face has it.
            eta (`float`, *optional*): the sampler the images were drawn with (see `__call__`); the pipeline's when
                `None`. With eta > 0 the step noise moves with x_T (it is drawn from x_T).

        Returns:
            [`RegionSwapOutput`] (`images_a`, `images_b`, `latents_a`, `latents_b` `(B, C, H, W)`, `mask`
            `(B, 1, H, W)`, `warning`) or the tuple `(images_a, images_b, latents_a, latents_b, mask)`.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> faces = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=25)
        >>> swap = pipe.swap_regions(faces.latents[:1], faces.latents[1:], "eyes", num_inference_steps=25)
        >>> swap.images_a[0], swap.images_b[0]  # each face with the other's eyes
        >>> photos = pipe.swap_regions(  # real photos: invert them first
        ...     pipe.invert(faces.images[0], 25), pipe.invert(faces.images[1], 25), "nose", num_inference_steps=25
        ... )
        ```
        """
        num_inference_steps = self.check_inputs(num_inference_steps, output_type, clip_sample, eta)
        inverted = _is_inversion(latents_a) or _is_inversion(latents_b)
        steps_a, steps_b = (getattr(x, "num_inference_steps", None) for x in (latents_a, latents_b))
        if _is_inversion(latents_a) and _is_inversion(latents_b) and steps_a != steps_b:
            raise ValueError(
                f"latents_a was inverted with num_inference_steps={steps_a} and latents_b with {steps_b}: their "
                "trajectories cannot be swapped. Invert both images with the same num_inference_steps (and strength)."
            )
        clip_sample = False if inverted and clip_sample is None else clip_sample
        latents_a, t0, sources_a, warning = self._trajectory_start(latents_a, num_inference_steps, "latents_a")
        latents_b, t0_b, sources_b, warning_b = self._trajectory_start(latents_b, num_inference_steps, "latents_b")
        if t0 != t0_b:
            raise ValueError(
                f"latents_a and latents_b are at different DDIM timesteps ({t0 or 'x_T'} and {t0_b or 'x_T'}): invert "
                "both images with the same strength and num_inference_steps."
            )
        warning = warning or warning_b
        if latents_a.shape != latents_b.shape:
            raise ValueError(
                f"latents_a {tuple(latents_a.shape)} and latents_b {tuple(latents_b.shape)} must have the same shape."
            )
        n = latents_a.shape[0]
        layout_a, layout_b = self.layout_input(layout_a, n), self.layout_input(layout_b, n)
        kw = dict(num_inference_steps=num_inference_steps, clip_sample=clip_sample)
        ref_a, kw_a, ref_b, kw_b = latents_a, kw, latents_b, kw
        if isinstance(mask, str):
            ref_a, extra_a = self._mask_source(latents_a, sources_a, t0, num_inference_steps, layout_a, eta)
            ref_b, extra_b = self._mask_source(latents_b, sources_b, t0, num_inference_steps, layout_b, eta)
            kw_a, kw_b = {**kw, **extra_a}, {**kw, **extra_b}
        if isinstance(mask, str) and mask_from in ("b", "union"):
            mb = self.prepare_mask(mask, ref_b, True, **kw_b)
            m = mb if mask_from == "b" else torch.maximum(mb, self.prepare_mask(mask, ref_a, True, **kw_a))
            if not allow_empty_mask and (m.flatten(1).sum(1) == 0).any():
                raise ValueError("The mask is empty (no pixel selected) for at least one image.")
        elif mask_from not in ("a", "b", "union"):
            raise ValueError(f"mask_from must be 'a', 'b' or 'union', got '{mask_from}'.")
        else:
            m = self.prepare_mask(mask, ref_a, allow_empty_mask, **kw_a)
        new_a = m * latents_b + (1 - m) * latents_a
        new_b = m * latents_a + (1 - m) * latents_b
        if self._harmonizes(harmonize_noise) and not inverted:  # an inverted photo's noise is never harmonised
            new_a, new_b = self.harmonize(new_a, m), self.harmonize(new_b, m)
        if isinstance(harmonize_photo, str) or not 0 <= float(harmonize_photo) <= 1:
            raise ValueError(f"harmonize_photo must be True, False or a number in [0, 1], got {harmonize_photo!r}.")
        if harmonize_photo and inverted:
            amount = float(harmonize_photo)
            new_a = recentre_moved_region(new_a, latents_a, latents_b, m, amount=amount)
            new_b = recentre_moved_region(new_b, latents_b, latents_a, m, amount=amount)
        if not isinstance(blend, (bool, np.bool_)):
            raise ValueError(f"blend must be True or False, got {blend!r}.")
        edited = torch.cat([new_a, new_b])
        layout = None if layout_a is None else torch.cat([layout_a, layout_b])
        if blend:
            x0 = self.denoise_blended(
                edited,
                torch.cat([latents_a, latents_b]),
                torch.cat([m, m]),
                num_inference_steps,
                clip_sample=clip_sample,
                start_timestep=t0,
                layout=layout,
                eta=eta,
            )
        else:
            x0 = self.denoise(
                edited, num_inference_steps, clip_sample=clip_sample, start_timestep=t0, layout=layout, eta=eta
            )
        images_a, images_b = self.postprocess(x0[:n], output_type), self.postprocess(x0[n:], output_type)
        if not return_dict:
            return images_a, images_b, new_a, new_b, m
        return RegionSwapOutput(
            images_a=images_a, images_b=images_b, latents_a=new_a, latents_b=new_b, mask=m, warning=warning
        )

    # -- inversion -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def invert(
        self,
        image: ImageInput,
        num_inference_steps: Optional[int] = None,
        fixed_point_iterations: int = 3,
        resize: bool = False,
        check_reconstruction: bool = False,
        return_dict: bool = True,
        strength: float = DEFAULT_INVERSION_STRENGTH,
    ) -> Union[InversionOutput, torch.Tensor]:
        r"""DDIM inversion: finds x_t at the DDIM step at about `strength * T` (x_T for `strength=1.0`) such that
        continuing DDIM from there redraws `image`.

        Edits of a real photo should start from the returned [`InversionOutput`] as a whole:
        `pipe.swap_regions(pipe.invert(photo_a), pipe.invert(photo_b), "eyes")`, `pipe.resample_region(inv, "mouth")`,
        `pipe(latents=inv)`; they continue the trajectory from its timestep, unclipped, with masks from the photo.
        `strength` is the user's knob: lower keeps more of the photo (the edit changes less, and only fine detail at
        very low strength), higher lets the edited part change more. The dummy-player loss trains the shipped models on
        x_t at every t >= 300, so a region exchanged at t0 is local by the same argument as one exchanged at x_T; an
        inverted x_t0 is much better behaved than an inverted x_T. On the shipped faces models edits stay local up to
        about `LOCAL_EDIT_MAX_STRENGTH`; above it (x_T at 1.0 in particular) an edit changes the whole face, and the
        output's `warning` says so (docs/real_photos.md has the measurements).

        An explicit loop that runs each DDIM step of `__call__` backwards. The plain inversion evaluates the noise at
        the less noisy point; `fixed_point_iterations` > 0 re-evaluates it at the solution of the step (a fixed point
        iteration), which makes the reconstruction error several times smaller for the same number of steps.

        Under zero terminal SNR (alpha_bar = 0 at t = T - 1, the shipped models' schedule) the predicted noise at x_T
        is x_T itself whatever x_T is, so the noise form of the last inverse step would return its input; that step
        is solved with the predicted x_0 instead, x_T = (x_prev - sqrt(a_prev) x0_pred(x_T)) / sqrt(1 - a_prev), and
        is as exact as the others.

        Args:
            image (PIL image(s), numpy `(B, H, W, 3)` or `torch.Tensor` `(B, 3, H, W)` in [0, 1]): the photos, at
                model resolution unless `resize=True`.
            num_inference_steps (`int`): must equal the steps used to regenerate.
            fixed_point_iterations (`int`): extra UNet calls per step that refine the inverse step.
            check_reconstruction (`bool`): also regenerate (unclipped) and report the reconstruction PSNR.
            strength (`float` in (0, 1]): how far to invert; the last `floor(strength * num_inference_steps + 0.5)`
                (halves round up; at least 1) DDIM steps are inverted, so t0 is the timestep of the step at about
                `strength * T`.
                Defaults to `DEFAULT_INVERSION_STRENGTH` (0.5), chosen by measurement (docs/real_photos.md).

        The result is exact for unclipped DDIM, which every method that takes the `InversionOutput` uses by default.
        Passing only `.latents` (a tensor) treats it as x_T: right only for `strength=1.0`, and then pass
        `clip_sample=False` too (on the shipped faces model: ~49 dB PSNR at 25 steps unclipped, ~13 dB if the
        clipping scheduler regenerates them).

        Returns:
            [`InversionOutput`] (`latents` x_t0 `(B, C, H, W)`, `reconstruction_psnr` `(B,)` in dB or `None`,
            `timestep` t0, `strength`, `num_inference_steps`, `images` `(B, 3, H, W)` in [-1, 1], `warning`) or the
            latents tensor.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> photo = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=25).images[0]
        >>> inv = pipe.invert(photo, num_inference_steps=25, check_reconstruction=True)  # any aligned 64x64 face crop
        >>> inv.reconstruction_psnr  # dB
        >>> edit = pipe.resample_region(inv, "nose", generator=torch.Generator().manual_seed(2), num_inference_steps=25)
        ```
        """
        self._refuse_layout_model("invert")
        num_inference_steps = self.check_inputs(num_inference_steps)
        fixed_point_iterations = check_int(fixed_point_iterations, "fixed_point_iterations", minimum=0)
        if (
            isinstance(strength, (bool, np.bool_))
            or not isinstance(strength, (int, float, np.floating, np.integer))
            or not 0 < strength <= 1
        ):
            raise ValueError(f"strength must be a number in (0, 1] (1.0 inverts to x_T), got {strength!r}.")
        num_steps = min(num_inference_steps, max(1, math.floor(strength * num_inference_steps + 0.5)))
        if self.scheduler.config.thresholding:
            raise ValueError(
                "Inversion needs a scheduler with thresholding=False (dynamic thresholding is not invertible)."
            )
        # The inverse steps are those of *unclipped* DDIM (a clipped step has no exact inverse where the predicted
        # x_0 leaves [-1, 1], which happens often at high t). Regenerate with clip_sample=False, as the
        # reconstruction check below does: e.g. `pipe(latents=x_T, clip_sample=False)`.
        x0 = self.preprocess(image, resize=resize)
        x = x0
        pairs = self._alpha_pairs(num_inference_steps)[-num_steps:]
        if pairs[0][1] == 0 and pairs[0][2] == 1:
            raise ValueError(
                "A 1-step schedule under zero terminal SNR draws x_0 from the model's prediction at x_T alone, which "
                "has no inverse step; invert with num_inference_steps >= 2."
            )
        for t, a_t, a_prev in self.progress_bar(list(reversed(pairs))):
            # x is at the less noisy level (alpha_prev); solve x_prev = step(x_t) for x_t, where the step is
            # x_prev = sqrt(a_prev) x0_pred(x_t) + sqrt(1 - a_prev) eps_pred(x_t).
            if a_t == 0:
                # Zero terminal SNR: x_t is pure noise, eps_pred(x_t) = x_t for every x_t, and the noise form below
                # collapses to x_t = x_prev. Solved with the x_0 prediction instead, the step is exact:
                # x_T = (x_prev - sqrt(a_prev) x0_pred(x_T)) / sqrt(1 - a_prev), a contraction as a_prev is ~0.
                x0_pred = self.predicted(self._unet(x, t), x, t, "x0")
                for i in range(fixed_point_iterations + 1):
                    x_t = (x - math.sqrt(a_prev) * x0_pred) / math.sqrt(1 - a_prev)
                    if i < fixed_point_iterations:
                        x0_pred = self.predicted(self._unet(x_t, t), x_t, t, "x0")
                x = x_t
                continue
            eps = self._eps(x, t)
            for i in range(fixed_point_iterations + 1):
                x0_pred = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
                x_t = math.sqrt(a_t) * x0_pred + math.sqrt(1 - a_t) * eps
                if i < fixed_point_iterations:
                    eps = self._eps(x_t, t)
            x = x_t
        if not torch.isfinite(x).all():  # the input was checked, so this is the model: say so rather than return NaN
            raise ValueError("DDIM inversion diverged (non-finite x_T); the UNet's noise predictions are not finite.")
        t0 = pairs[0][0]
        psnr = None
        if check_reconstruction:
            recon = self.denoise(x, num_inference_steps, show_progress=False, clip_sample=False, start_timestep=t0)
            mse = ((recon - x0) / 2).float().pow(2).flatten(1).mean(1)
            psnr = -10 * torch.log10(mse.clamp_min(1e-12))
        if not return_dict:
            return x
        warning = None
        if strength > LOCAL_EDIT_MAX_STRENGTH:
            warning = (
                f"Inversion strength {strength:g} > {LOCAL_EDIT_MAX_STRENGTH:g}: region edits of this photo are not "
                f"local on the shipped faces models (the whole face may change); use a strength of "
                f"{DEFAULT_INVERSION_STRENGTH:g} (default) to {LOCAL_EDIT_MAX_STRENGTH:g}."
            )
        return InversionOutput(
            latents=x,
            reconstruction_psnr=psnr,
            timestep=t0,
            strength=float(strength),
            num_inference_steps=num_inference_steps,
            images=x0,
            warning=warning,
        )

    # -- concept masks -----------------------------------------------------------------------------------------------
    def template_mask(self, concept: str) -> torch.Tensor:
        """The concept's template mask (the mean training mask, thresholded), the fallback without a parser.

        Args:
            concept (`str`): one of `self.concepts`.

        Returns:
            `torch.Tensor` of shape `(H, W)` (bool) at model resolution.
        """
        self._check_concept(concept)
        templates = self.config.concept_templates or {}
        if concept not in templates:
            raise ValueError(
                f"This pipeline has no parser and no template mask for '{concept}'; pass a mask instead or "
                "save the pipeline with concept_templates."
            )
        mask = torch.from_numpy(decode_binary_mask(templates[concept])).float()[None, None]
        if tuple(mask.shape[-2:]) != self.resolution:
            mask = F.interpolate(mask, size=self.resolution, mode="nearest")
        return mask[0, 0] > 0.5

    def _check_concept(self, concept: str) -> None:
        if not isinstance(concept, str) or concept not in self.concepts:
            raise ValueError(f"Unknown concept {concept!r}; this pipeline knows {', '.join(self.concepts)}.")

    @property
    def parser_face_label_ids(self) -> List[int]:
        """Face-part label ids the parser can output (after `parser_label_mapping`); empty without a parser."""
        if self.parser is None:
            return []
        mapping = self.config.parser_label_mapping
        if mapping:
            return sorted({int(v) for v in mapping.values()})
        num_labels = int(getattr(getattr(self.parser, "config", None), "num_labels", len(FACE_PART_LABELS)))
        return [i for i in FACE_PART_LABELS if i < num_labels]

    def _check_parser_covers(self, concept: str) -> None:
        ids = self.concepts[concept]
        producible = self.parser_face_label_ids
        if not any(i in producible for i in ids):
            raise ValueError(
                f"The parser cannot produce concept '{concept}' (part label ids {ids}): with parser_label_mapping "
                f"{self.config.parser_label_mapping} its labels give part ids {producible} only. Map the parser's "
                f"labels of this part to {ids}, or use a pipeline without a parser (template masks)."
            )

    def _model_space_images(self, images: ImageInput) -> torch.Tensor:
        """What `preprocess` takes -> model space; a tensor is taken as model-space `(B, 3, H, W)` in [-1, 1]."""
        if not isinstance(images, torch.Tensor):
            return self.preprocess(images)
        check_tensor_values(images, "image")
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.resolution:
            raise ValueError(
                f"Image tensors must be model-space RGB batches (B, 3, {self.resolution[0]}, {self.resolution[1]}) "
                f"in [-1, 1]; got {tuple(images.shape)}. Pass PIL images or numpy arrays for other sizes (resize first)."
            )
        return x.to(self._execution_device)

    @torch.no_grad()
    def parse(self, images: ImageInput) -> torch.Tensor:
        """Face-part label maps `(B, H, W)` (long, ids of `FACE_PART_LABELS`) of images at model resolution.

        Args:
            images: PIL image(s) / numpy arrays as [`~InterpretableDDPMPipeline.preprocess`] takes them, or a
                model-space tensor `(B, 3, H, W)` in [-1, 1] at the model resolution (e.g. `denoise` output).

        Returns:
            `torch.Tensor` of shape `(B, H, W)` (long): a face-part label id per pixel.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> faces = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=25)
        >>> labels = pipe.parse(faces.images)
        >>> labels.shape  # 0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 nose, 7 mouth
        torch.Size([2, 64, 64])
        ```
        """
        if self.parser is None:
            raise ValueError(
                "This pipeline has no parser component; pass parser=... (a SegformerForSemanticSegmentation) or use "
                "concept_mask / template_mask, which fall back to the concept template masks."
            )
        return self._parse_model_space(self._model_space_images(images))

    def _parse_model_space(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        param = next(self.parser.parameters())
        if param.device.type == "cpu" and param.dtype == torch.float16:
            # fp16 kernels are emulated on most CPUs (~10x slower than fp32); the parser is small, so it runs in fp32
            # there. Its weights ship in fp16 only to keep the download small.
            self.parser.to(torch.float32)
            param = next(self.parser.parameters())
        pixels = (x.to(param.device).float() + 1) / 2
        size = self.config.parser_resolution or h
        if size != h:
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        if self.config.parser_normalization == "imagenet":
            mean = torch.tensor([0.485, 0.456, 0.406], device=pixels.device).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], device=pixels.device).view(1, 3, 1, 1)
            pixels = (pixels - mean) / std
        else:
            pixels = pixels * 2 - 1
        logits = self.parser(pixel_values=pixels.to(param.dtype)).logits.float()
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        labels = logits.argmax(1)
        mapping = self.config.parser_label_mapping
        if mapping:
            # parser label id -> face part id; parser labels the mapping leaves out become background (0)
            lut = torch.zeros(
                max(logits.shape[1], max(int(k) for k in mapping) + 1), dtype=torch.long, device=labels.device
            )
            for k, v in mapping.items():
                lut[int(k)] = int(v)
            labels = lut[labels]
        return labels

    @torch.no_grad()
    def concept_mask(
        self,
        image_or_latents: Union[ImageInput, torch.Tensor],
        concept: str,
        dilation: int = 0,
        num_inference_steps: Optional[int] = None,
        is_latents: Optional[bool] = None,
        clip_sample: Optional[bool] = None,
        layout: Optional[torch.Tensor] = None,
        eta: Optional[float] = None,
    ) -> torch.Tensor:
        """Mask of a concept for each image, `(B, 1, H, W)` float 0/1 at model resolution.

        With a parser, the image is parsed (latents x_T are first turned into the image they generate, with
        `num_inference_steps` DDIM steps); without one, the concept's template mask is used for every image.

        Args:
            image_or_latents: PIL image(s) / numpy arrays (as `preprocess` takes them), a model-space image tensor
                `(B, 3, H, W)` in [-1, 1], latents x_T `(B, C, H, W)`, or an [`InversionOutput`] (its photo is parsed).
            concept (`str`): one of `self.concepts`.
            dilation (`int`): grows the mask by this many pixels (square structuring element).
            is_latents (`bool`, *optional*): whether a tensor holds latents x_T; when `None`, a tensor with values
                beyond +-1.5 (Gaussian noise always has some; images never) is taken as latents.
            clip_sample (`bool`, *optional*): the x_0 clipping of the regeneration of latents (`None`: the
                scheduler's); an edit passes its own, so its mask comes from the image it starts from.
            layout (`torch.Tensor`, *optional*): the layout latents are regenerated with, for a layout-conditioned
                model (see `layout_input`).
            eta (`float`, *optional*): the sampler latents are regenerated with (see `denoise`).

        Returns:
            `torch.Tensor` of shape `(B, 1, H, W)`: 1 inside the concept, 0 elsewhere.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> faces = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=25)
        >>> eyes = pipe.concept_mask(faces.latents, "eyes", num_inference_steps=25)  # found on the generated faces
        >>> eyes.shape
        torch.Size([2, 1, 64, 64])
        ```
        """
        return self._concept_masks(
            image_or_latents, [concept], dilation, num_inference_steps, is_latents, clip_sample, layout, eta
        )

    @torch.no_grad()
    def _concept_masks(
        self,
        image_or_latents,
        concepts: Sequence[str],
        dilation: int = 0,
        num_inference_steps: Optional[int] = None,
        is_latents: Optional[bool] = None,
        clip_sample: Optional[bool] = None,
        layout: Optional[torch.Tensor] = None,
        eta: Optional[float] = None,
    ) -> torch.Tensor:
        """`(B, N, H, W)` float masks of N concepts (each dilated on its own, so they may overlap); the latents are
        denoised and the images parsed once for all of them."""
        num_inference_steps = self.check_inputs(num_inference_steps, clip_sample=clip_sample)
        check_optional_bool(is_latents, "is_latents", " (guess from the values)")
        for concept in concepts:
            self._check_concept(concept)
            if self.parser is not None:
                self._check_parser_covers(concept)
        dilation = check_int(dilation, "dilation", minimum=0)
        if _is_inversion(image_or_latents):  # an inverted photo: the masks are found on the photo itself
            steps = image_or_latents.num_inference_steps or num_inference_steps
            x_t, t0, images, _ = self._trajectory_start(image_or_latents, steps)
            image_or_latents, kw = self._mask_source(x_t, images, t0, steps)
            is_latents = kw.get("is_latents", True)
        if isinstance(image_or_latents, torch.Tensor):
            check_tensor_values(image_or_latents, "image_or_latents")
        if is_latents is None:
            is_latents = isinstance(image_or_latents, torch.Tensor) and bool(image_or_latents.abs().amax() > 1.5)
        if is_latents:
            latents = self._check_latents(image_or_latents)
            b = latents.shape[0]
        else:
            x = self._model_space_images(image_or_latents)
            b = x.shape[0]
        if self.parser is None:
            masks = torch.stack([self.template_mask(c) for c in concepts]).float()[None]
            masks = masks.expand(b, -1, -1, -1).clone()
        else:
            if is_latents:
                x = self.denoise(
                    latents, num_inference_steps, show_progress=False, clip_sample=clip_sample, layout=layout, eta=eta
                )
            labels = self._parse_model_space(x)
            masks = concept_masks(labels, {c: self.concepts[c] for c in concepts}).float()
        masks = dilate_masks(masks, dilation)
        return masks.to(self._execution_device)

    def region_masks(self, image_or_latents, dilation: int = 0, **kw) -> torch.Tensor:
        """The K-region partition of each image (the concepts, then the rest region), from its concept masks; where
        dilated concepts overlap, the earlier concept keeps the pixel.

        Args:
            image_or_latents: as [`~InterpretableDDPMPipeline.concept_mask`] takes it.
            dilation (`int`): pixels each concept mask grows by before the partition is made.
            **kw: `num_inference_steps`, `is_latents`, `clip_sample` as in `concept_mask`.

        Returns:
            `torch.Tensor` of shape `(B, K, H, W)`: one-hot over the K regions at every pixel.
        """
        return exclusive_partition(self._concept_masks(image_or_latents, list(self.concepts), dilation=dilation, **kw))

    # -- attribution -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def attribute(
        self,
        latents: torch.Tensor,
        masks: Optional[Union[torch.Tensor, Sequence[str]]] = None,
        timesteps: Optional[Sequence[int]] = None,
        num_inference_steps: Optional[int] = None,
        baseline: Union[str, torch.Tensor] = "other_sample",
        generator: Optional[torch.Generator] = None,
        max_batch_size: Optional[int] = None,
        return_dict: bool = True,
        harmonize_noise: Optional[bool] = None,
        max_coalitions: int = DEFAULT_MAX_COALITIONS,
        quantity: str = "noise",
        eta: Optional[float] = None,
    ) -> Union[AttributionOutput, Tuple]:
        r"""Exact Shapley attribution of input regions of x_t to output regions of the predicted noise (or the
        predicted x_0), per timestep.

        Follows the sampling trajectory from `latents`; at each requested timestep it plays the game of the method with
        all 2^K coalitions (batched UNet calls of at most `max_batch_size`) and returns the K x K matrices. The value
        of output region k is a named quantity computed from the UNet's output (see
        [`~InterpretableDDPMPipeline.predicted`]), not the raw output, so an epsilon and a v-prediction model of the
        same denoiser get the same attribution. Under zero terminal SNR the predicted noise at t = T - 1 is x_T
        itself (every region causes only itself there); the predicted x_0 is informative at every t.

        Args:
            latents (`torch.Tensor` of shape `(B, C, H, W)` or [`InversionOutput`]): x_T of the images to explain,
                or an inverted photo: its trajectory is followed from its timestep t0 (unclipped), only timesteps
                <= t0 can be attributed, concept masks come from the photo, and the "other_sample" baseline (or a
                baseline x_T tensor) is run down to t0 first.
            masks: a `(B, K, H, W)` or `(K, H, W)` partition, a list of concept names, or `None` for all the
                pipeline's concepts; uncovered pixels become a "rest" region.
            timesteps: DDIM timesteps (members of the schedule) at which to attribute; all steps when `None`.
            baseline: what absent regions get: `"other_sample"` (the same-t x_t of another random x_T's trajectory,
                what a swap feeds the model), `"zero"`, or a tensor of baseline x_T `(B, C, H, W)`.
            max_batch_size (`int`, *optional*): images per UNet call; 64 on an accelerator and 8 on CPU by default
                (on CPU, cache-sized batches run ~20% faster than one big batch).
            harmonize_noise (`bool`, *optional*): harmonise the baseline x_T that `"other_sample"` draws, so that
                absent players get noise of the kind `__call__` draws (default: the pipeline's setting); `latents`
                are used as given.
            max_coalitions (`int`): the cost guard. K regions need 2^K UNet evaluations per image and attributed
                timestep; a game with more coalitions than this (default 64, i.e. K <= 6) raises with its cost
                unless you raise the limit explicitly (at most 2^10).
            quantity (`str`, defaults to `"noise"`): what output region k's value is made of: `"noise"`, the
                predicted noise eps (the paper's v_k(S) = eps_theta(x_t^S, t) on region k), or `"x0"`, the
                predicted clean image x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t).
            eta (`float`, *optional*): the sampler of the trajectories (see `__call__`; the pipeline's when `None`):
                with eta > 0 the sample's and the baseline's x_t are those of their own stochastic trajectories, each
                step's noise drawn from their own x_T. An inverted photo's trajectory is followed with eta = 0.

        Returns:
            [`AttributionOutput`] (`phi`, `abs_phi`, `leakage`, `timesteps`, `region_names`, `quantity`) or that
            tuple.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> x_T = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> attr = pipe.attribute(x_T, num_inference_steps=10, timesteps=[999, 499], quantity="x0")
        >>> attr.phi.shape  # (timesteps, images, output regions, input regions): eyes, nose, mouth, rest
        torch.Size([2, 1, 4, 4])
        >>> attr.leakage  # off-diagonal share at each timestep, in [0, 1]
        ```
        """
        self._refuse_layout_model("attribute")
        if quantity not in ("noise", "x0"):
            raise ValueError(f"quantity must be 'noise' or 'x0', got {quantity!r}.")
        num_inference_steps = self.check_inputs(num_inference_steps, eta=eta)
        max_coalitions = check_int(max_coalitions, "max_coalitions", minimum=1)
        inverted = _is_inversion(latents)
        eta = 0.0 if inverted else self._eta(eta)
        scheduler = self.scheduler
        if inverted and scheduler.config.clip_sample:
            scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=False)
        latents, t0, sources, _ = self._trajectory_start(latents, num_inference_steps)
        if max_batch_size is None:
            max_batch_size = 8 if latents.device.type == "cpu" else 64
        max_batch_size = check_int(max_batch_size, "max_batch_size", minimum=1)
        if timesteps is not None:
            if isinstance(timesteps, (int, np.integer)) or (
                isinstance(timesteps, torch.Tensor) and timesteps.ndim == 0
            ):
                raise ValueError(
                    f"timesteps must be a sequence of timesteps (e.g. [{int(timesteps)}]), got {timesteps!r}."
                )
            timesteps = [check_int(t, f"timesteps[{i}]", minimum=0) for i, t in enumerate(timesteps)]
            if not timesteps:
                raise ValueError("timesteps is empty; pass None to attribute at every step of the schedule.")
        b = latents.shape[0]
        regions, names = self._attribution_regions(latents, masks, num_inference_steps, sources, t0)
        k = regions.shape[1]
        if k > 10:
            raise ValueError(f"{k} regions need 2^{k} UNet calls per step; use at most 10 regions.")
        if 2**k > max_coalitions:
            steps = num_inference_steps if timesteps is None else len(set(timesteps))
            raise ValueError(
                f"{k} regions ({', '.join(names)}) make 2^{k} = {2**k} coalitions: {2**k * steps:,} UNet evaluations "
                f"per image over {steps} attributed timesteps, more than max_coalitions={max_coalitions} allows. Pass "
                f"max_coalitions={2**k} to run it anyway, or use fewer regions or timesteps."
            )
        if isinstance(baseline, (torch.Tensor, np.ndarray)):
            base = self._check_latents(baseline, "baseline")
            if base.shape != latents.shape:
                raise ValueError(f"baseline latents have shape {tuple(base.shape)}, latents {tuple(latents.shape)}.")
        elif baseline == "other_sample":
            check_generator(generator, latents.shape[0])
            base = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            if self._harmonizes(harmonize_noise) and not inverted:
                base = self.harmonize(base)
        elif baseline == "zero":
            base = None
        else:
            raise ValueError(f"baseline must be 'other_sample', 'zero' or a latents tensor, got {baseline!r}.")

        scheduler.set_timesteps(num_inference_steps)
        schedule = scheduler.timesteps.tolist()
        reachable = schedule if t0 is None else [t for t in schedule if t <= t0]
        wanted = reachable if timesteps is None else [int(t) for t in timesteps]
        unknown = [t for t in wanted if t not in schedule]
        if unknown:
            raise ValueError(
                f"timesteps {unknown} are not in the {num_inference_steps}-step DDIM schedule {schedule}."
            )
        if any(t not in reachable for t in wanted):
            raise ValueError(f"The inverted latents start at timestep {t0}; timesteps above it cannot be attributed.")

        coalitions = all_coalitions(k, latents.device)
        weights = shapley_weight_matrix(k, latents.device)  # (K, 2^K)
        area = regions.sum((-2, -1))  # (B, K)
        phis, abs_phis, out_t = [], [], []
        x, xb = latents, base
        # the x_T whose step noise each trajectory adds (with eta > 0)
        noise_source = torch.cat([latents, base]) if base is not None else latents
        for i, t in enumerate(self.progress_bar(schedule)):
            if t0 is not None and t > t0:  # an inversion's trajectory starts at t0; bring the baseline there first
                if xb is not None:
                    xb = scheduler.step(self._unet(xb, t), t, xb, eta=0.0).prev_sample
                continue
            if t in wanted:
                baseline_t = torch.zeros_like(x) if xb is None else xb
                inputs = coalition_inputs(x, baseline_t, regions, coalitions).flatten(0, 1)  # (B*2^K, C, H, W)
                raw = torch.cat([self._unet(chunk, t) for chunk in inputs.split(max_batch_size)])
                # The full coalition's input is x_t and the empty one's the baseline x_t (bit-exact: one-hot regions),
                # so their outputs also step both trajectories: no extra UNet call at an attributed timestep.
                raw_per_image = raw.reshape(b, 2**k, *raw.shape[1:])
                reused_out = (
                    torch.cat([raw_per_image[:, -1], raw_per_image[:, 0]]) if xb is not None else raw_per_image[:, -1]
                )
                # the game's values: the named quantity (predicted noise or x_0) computed from the raw outputs
                values = self.predicted(raw.double(), inputs.double(), t, quantity)
                values = values.reshape(b, 2**k, *values.shape[1:])
                # per-element Shapley values of every input player: (B, K_in, C, H, W)
                phi_elem = torch.einsum("js,bschw->bjchw", weights, values)
                reg = regions.double()
                c = values.shape[2]
                signed = torch.einsum("bjchw,bkhw->bkj", phi_elem, reg) / (area.double()[:, :, None] * c).clamp_min(1)
                absval = torch.einsum("bjchw,bkhw->bkj", phi_elem.abs(), reg) / (
                    area.double()[:, :, None] * c
                ).clamp_min(1)
                phis.append(signed.float())
                abs_phis.append(absval.float())
                out_t.append(t)
                if len(out_t) == len(set(wanted)):
                    break  # no later timestep is wanted: skip the rest of the trajectory
            if t in wanted:
                model_out = reused_out
            else:
                model_out = self._unet(torch.cat([x, xb]) if xb is not None else x, t)
            stepped = sampling_step(
                scheduler, model_out, t, torch.cat([x, xb]) if xb is not None else x, eta, noise_source, i
            )
            x, xb = (stepped[:b], stepped[b:]) if xb is not None else (stepped, None)
        phi = torch.stack(phis)
        abs_phi = torch.stack(abs_phis)
        weighted = abs_phi * area[None, :, :, None]
        eye = torch.eye(k, dtype=torch.bool, device=phi.device)
        leakage = weighted.masked_fill(eye, 0).sum((-2, -1)) / weighted.sum((-2, -1)).clamp_min(1e-20)
        out = AttributionOutput(
            phi=phi.cpu(),
            abs_phi=abs_phi.cpu(),
            leakage=leakage.cpu(),
            timesteps=torch.tensor(out_t),
            region_names=names,
            quantity=quantity,
        )
        return out if return_dict else out.to_tuple()

    def _baseline_latents(self, baseline, latents, generator, harmonize_noise) -> torch.Tensor:
        if isinstance(baseline, (torch.Tensor, np.ndarray)):
            base = self._check_latents(torch.as_tensor(baseline), "baseline")
            if base.shape != latents.shape:
                raise ValueError(f"baseline latents have shape {tuple(base.shape)}, latents {tuple(latents.shape)}.")
            return base
        if isinstance(baseline, str) and baseline == "other_sample":
            check_generator(generator, latents.shape[0])
            base = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            return self.harmonize(base) if self._harmonizes(harmonize_noise) else base
        raise ValueError(f"baseline must be 'other_sample' or a latents tensor, got {baseline!r}.")

    @torch.no_grad()
    def attribute_end_to_end(
        self,
        latents: torch.Tensor,
        masks: Optional[Union[torch.Tensor, Sequence[str]]] = None,
        num_inference_steps: Optional[int] = None,
        baseline: Union[str, torch.Tensor] = "other_sample",
        generator: Optional[torch.Generator] = None,
        max_batch_size: Optional[int] = None,
        return_dict: bool = True,
        harmonize_noise: Optional[bool] = None,
        clip_sample: Optional[bool] = None,
        max_coalitions: int = DEFAULT_MAX_COALITIONS,
        eta: Optional[float] = None,
    ) -> Union[EndToEndAttributionOutput, Tuple]:
        r"""Exact Shapley attribution of the regions of x_T to the regions of the *final* image (what the edits do).

        Players: the K regions of x_T. A coalition S generates, with the pipeline's full sampling loop, the image of
        `x_T^S` = x_T on the regions of S and the baseline x_T on the others (a swap of the regions outside S; with
        eta > 0 each region's step noise comes with its x_T, as in `swap_regions`). The
        value of output region k is that image restricted to region k (in [0, 1]); the K x K Shapley matrix, its
        absolute per-element version and the leakage (off-diagonal share, area weighted) follow the conventions of
        `attribute`. Cost: 2^K full sampling runs per image (K = 4: 16 runs), batched.

        Args:
            latents (`torch.Tensor` of shape `(B, C, H, W)`): x_T of the images to explain (an `InversionOutput` is
                refused: the game is played on x_T).
            masks: a `(B, K, H, W)` or `(K, H, W)` partition, a list of concept names, or `None` for all the
                pipeline's concepts (found on the images the latents generate); uncovered pixels become "rest".
            baseline: `"other_sample"` (another random x_T, harmonised as `__call__` draws it unless
                `harmonize_noise=False`) or a tensor of baseline x_T `(B, C, H, W)`.
            max_batch_size (`int`, *optional*): images per sampling loop; 64 on an accelerator, 16 on CPU by default.
            clip_sample (`bool`, *optional*): override the scheduler's x_0 clipping.
            max_coalitions (`int`): cost guard, as in `attribute`.
            eta (`float`, *optional*): the sampler (see `__call__`); the pipeline's when `None`.

        Returns:
            [`EndToEndAttributionOutput`] (`phi` and `abs_phi` `(B, K, K)`, `leakage` `(B,)`, `region_names`,
            `images` and `baseline_images` `(B, 3, H, W)`) or that tuple.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> x_T = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> attr = pipe.attribute_end_to_end(x_T, num_inference_steps=10, generator=torch.Generator().manual_seed(1))
        >>> attr.region_names, attr.phi.shape  # 2^4 = 16 full sampling runs
        (['eyes', 'nose', 'mouth', 'rest'], torch.Size([1, 4, 4]))
        ```
        """
        self._refuse_layout_model("attribute_end_to_end")
        if _is_inversion(latents):
            raise ValueError(
                "attribute_end_to_end plays the game on x_T; pass x_T (a tensor), not an InversionOutput."
            )
        num_inference_steps = self.check_inputs(num_inference_steps, clip_sample=clip_sample, eta=eta)
        max_coalitions = check_int(max_coalitions, "max_coalitions", minimum=1)
        latents = self._check_latents(latents)
        if max_batch_size is None:
            max_batch_size = 16 if latents.device.type == "cpu" else 64
        max_batch_size = check_int(max_batch_size, "max_batch_size", minimum=1)
        b = latents.shape[0]
        regions, names = self._attribution_regions(latents, masks, num_inference_steps)
        k = regions.shape[1]
        if k > 10:
            raise ValueError(
                f"{k} regions ({', '.join(names)}) make 2^{k} = {2**k} coalitions, i.e. {2**k} full sampling runs per "
                "image; at most 10 regions (2^10 runs) are allowed whatever max_coalitions is. Use fewer regions."
            )
        if 2**k > max_coalitions:
            raise ValueError(
                f"{k} regions ({', '.join(names)}) make 2^{k} = {2**k} coalitions, i.e. {2**k} full sampling runs per "
                f"image, more than max_coalitions={max_coalitions} allows (at most 2^10). Pass max_coalitions={2**k} "
                "to run it anyway, or use fewer regions."
            )
        base = self._baseline_latents(baseline, latents, generator, harmonize_noise)
        coalitions = all_coalitions(k, latents.device)
        inputs = coalition_inputs(latents, base, regions, coalitions).flatten(0, 1)  # (B*2^K, C, H, W)
        x0 = torch.cat(
            [
                self.denoise(chunk, num_inference_steps, show_progress=False, clip_sample=clip_sample, eta=eta)
                for chunk in self.progress_bar(list(inputs.split(max_batch_size)))
            ]
        )
        values = self.postprocess(x0, "pt").reshape(b, 2**k, *x0.shape[1:]).double()
        weights = shapley_weight_matrix(k, latents.device)
        phi_elem = torch.einsum("js,bschw->bjchw", weights, values)  # (B, K_in, C, H, W)
        reg = regions.double()
        norm = (regions.sum((-2, -1)).double()[:, :, None] * values.shape[2]).clamp_min(1)
        phi = torch.einsum("bjchw,bkhw->bkj", phi_elem, reg) / norm
        abs_phi = torch.einsum("bjchw,bkhw->bkj", phi_elem.abs(), reg) / norm
        weighted = abs_phi * regions.sum((-2, -1)).double()[:, :, None]
        eye = torch.eye(k, dtype=torch.bool, device=phi.device)
        leakage = weighted.masked_fill(eye, 0).sum((-2, -1)) / weighted.sum((-2, -1)).clamp_min(1e-20)
        out = EndToEndAttributionOutput(
            phi=phi.float().cpu(),
            abs_phi=abs_phi.float().cpu(),
            leakage=leakage.float().cpu(),
            region_names=names,
            images=values[:, -1].float().cpu(),
            baseline_images=values[:, 0].float().cpu(),
        )
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def emergence_curve(
        self,
        latents_a: torch.Tensor,
        latents_b: torch.Tensor,
        mask: MaskInput,
        num_inference_steps: Optional[int] = None,
        step_indices: Optional[Sequence[int]] = None,
        mode: str = "trajectory",
        clip_sample: Optional[bool] = None,
        max_batch_size: Optional[int] = None,
        return_dict: bool = True,
        eta: Optional[float] = None,
    ) -> Union[EmergenceOutput, Tuple]:
        r"""When a part is decided: the swap of a region moved from x_T to step s of the trajectory.

        Image A receives B's region (the mask; a concept name is found on A's image). Both unedited trajectories
        x_t^A, x_t^B are run; for each step index s (0 = x_T, s = the x_t entering the s-th sampling step) region M of
        x_t^A is replaced, and sampling continues from there to x_0 (with eta > 0 the later steps' noise inside M is
        B's, drawn from B's x_T, so that s = 0 is exactly `swap_regions`):

        - `mode="trajectory"`: M gets x_t^B (B's own trajectory at that step; s = 0 is `swap_regions`);
        - `mode="noise"`: M gets sqrt(a_t) x0_A + sqrt(1 - a_t) eps_B, A's predicted clean image with B's predicted
          noise at that step (x_t = sqrt(a_t) x0_pred + sqrt(1 - a_t) eps_pred for either trajectory): only the part
          still carried by the noise moves, so the curve falls as the content of M gets decided.

        With d_s = x_0(swap at s) - x_0(A) and d_0 that of the swap at x_T, the fraction of the full swap's change
        that still happens is the projection `sum_M d_s . d_0 / sum_M d_0 . d_0` (images in [0, 1]); the emergence
        step is the first step index at which it is below one half.

        Args:
            latents_a, latents_b (`torch.Tensor` of shape `(B, C, H, W)`): x_T of receivers and donors.
            mask: a concept name or any mask `resample_region` takes.
            step_indices (`Sequence[int]`, *optional*): the step indices s to swap at (default all; 0 is always
                computed as the reference).
            mode (`str`): `"trajectory"` or `"noise"`, see above.
            eta (`float`, *optional*): the sampler (see `__call__`); the pipeline's when `None`.

        Returns:
            [`EmergenceOutput`] (`fraction` `(S, B)`, `step_indices` and `timesteps` `(S,)`, `emergence_step` `(B,)`,
            `num_inference_steps`, `mode`) or the tuple `(fraction, step_indices, timesteps, emergence_step,
            num_inference_steps, mode)`.

        Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> pipe = DiffusionPipeline.from_pretrained("models/interpretable-ddpm-faces64", trust_remote_code=True)
        >>> x_T = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> curve = pipe.emergence_curve(x_T[:1], x_T[1:], "eyes", num_inference_steps=10)
        >>> curve.emergence_step  # the first step at which less than half of the swap still happens
        ```
        """
        self._refuse_layout_model("emergence_curve")
        if _is_inversion(latents_a) or _is_inversion(latents_b):
            raise ValueError("emergence_curve follows trajectories from x_T; pass x_T tensors, not InversionOutputs.")
        if mode not in ("trajectory", "noise"):
            raise ValueError(f"mode must be 'trajectory' or 'noise', got {mode!r}.")
        num_inference_steps = self.check_inputs(num_inference_steps, clip_sample=clip_sample, eta=eta)
        eta = self._eta(eta)
        latents_a = self._check_latents(latents_a, "latents_a")
        latents_b = self._check_latents(latents_b, "latents_b")
        if latents_a.shape != latents_b.shape:
            raise ValueError(
                f"latents_a {tuple(latents_a.shape)} and latents_b {tuple(latents_b.shape)} differ in shape."
            )
        n = latents_a.shape[0]
        if max_batch_size is None:
            max_batch_size = 16 if latents_a.device.type == "cpu" else 64
        max_batch_size = check_int(max_batch_size, "max_batch_size", minimum=1)
        if step_indices is None:
            step_indices = list(range(num_inference_steps))
        step_indices = sorted({0, *[check_int(s, "step_indices", minimum=0) for s in step_indices]})
        if step_indices[-1] >= num_inference_steps:
            raise ValueError(
                f"step_indices must be below num_inference_steps={num_inference_steps}, got {step_indices[-1]}."
            )
        m = self.prepare_mask(
            mask, latents_a, True, num_inference_steps=num_inference_steps, clip_sample=clip_sample, eta=eta
        )
        empty = (m.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"The mask is empty (no pixel selected) for image {empty[0]} of latents_a: there is no region to "
                "swap. Pass a mask (or concept) that selects pixels of every image."
            )
        scheduler = self.scheduler
        if clip_sample is not None and bool(clip_sample) != bool(scheduler.config.clip_sample):
            scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=clip_sample)
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps.tolist()
        # the unedited trajectories, and each swapped x_t
        x = x_T = torch.cat([latents_a, latents_b])
        starts = []
        for i, t in enumerate(timesteps):
            eps = self._unet(x, t)
            if i in step_indices:
                xa, xb = x[:n], x[n:]
                if mode == "trajectory" or i == 0:
                    inside = xb
                else:
                    a = float(scheduler.alphas_cumprod[t])
                    eps_pred = self._eps(x, t)  # the predicted noise, whatever the model's prediction type
                    x0_a = (xa - math.sqrt(1 - a) * eps_pred[:n]) / math.sqrt(a)
                    inside = math.sqrt(a) * x0_a + math.sqrt(1 - a) * eps_pred[n:]
                starts.append((i, t, m * inside + (1 - m) * xa))
            x = sampling_step(scheduler, eps, t, x, eta, x_T, i)
        image_a = self.postprocess(x[:n], "pt").double()
        swapped_x_T = m * latents_b + (1 - m) * latents_a  # the step noise source after the swap
        results = []
        for i, _t, start in starts:
            outs = [
                self._run_steps(chunk, timesteps[i:], scheduler, eta, source, first_step=i)
                for chunk, source in zip(start.split(max_batch_size), swapped_x_T.split(max_batch_size))
            ]
            results.append(self.postprocess(torch.cat(outs), "pt").double() - image_a)
        d0 = results[0]
        ref = (d0 * d0 * m).sum((1, 2, 3))
        # a swap at x_T that changes (almost) nothing inside the mask has no emergence to measure: its fraction
        # would be 0 / 0 (the two x_T agree there, or the model ignores the region)
        unchanged = ref / (m.sum((1, 2, 3)) * d0.shape[1]).clamp_min(1) < EMERGENCE_MIN_CHANGE
        if unchanged.all():
            raise ValueError(
                f"Swapping the region at x_T changes nothing inside it (mean squared change below "
                f"{EMERGENCE_MIN_CHANGE:g} for every image): latents_a and latents_b agree there, so no emergence step "
                "can be measured. Pass two different x_T (e.g. two draws of pipe(...).latents)."
            )
        fraction = torch.stack([(d * d0 * m).sum((1, 2, 3)) / ref.clamp_min(1e-20) for d in results])  # (S, B)
        below = fraction < 0.5
        idx = torch.tensor(step_indices, dtype=torch.float64, device=fraction.device)
        first = torch.where(below, idx[:, None], torch.full_like(fraction, float(num_inference_steps))).amin(0)
        # an image whose swap changes nothing has no curve and no emergence step (0 / 0), not a step of 0
        fraction[:, unchanged] = float("nan")
        first[unchanged] = float("nan")
        out = EmergenceOutput(
            fraction=fraction.float().cpu(),
            step_indices=torch.tensor(step_indices),
            timesteps=torch.tensor([t for _, t, _ in starts]),
            emergence_step=first.float().cpu(),
            num_inference_steps=num_inference_steps,
            mode=mode,
        )
        return out if return_dict else out.to_tuple()

    def _attribution_regions(
        self, latents, masks, num_inference_steps, images=None, t0=None
    ) -> Tuple[torch.Tensor, List[str]]:
        b = latents.shape[0]
        if masks is None or (isinstance(masks, (list, tuple)) and all(isinstance(m, str) for m in masks)):
            names = list(self.concepts) if masks is None else list(masks)
            if not names:
                raise ValueError("masks is an empty list of concept names; pass None for all the pipeline's concepts.")
            for n in names:
                self._check_concept(n)
            # one DDIM run (none for an inverted photo) and one parse for all concepts
            src, kw = self._mask_source(latents, images, t0, num_inference_steps)
            regions = self._concept_masks(
                src, names, num_inference_steps=num_inference_steps, **{"is_latents": True, **kw}
            )
            regions = (regions > 0.5).float()
        elif isinstance(masks, (torch.Tensor, np.ndarray)):
            if isinstance(masks, np.ndarray) and masks.dtype.kind not in "biuf":
                raise ValueError(f"masks must hold numbers, got a numpy array of dtype {masks.dtype}.")
            scale = check_mask_values(torch.as_tensor(masks), "masks")
            regions = (torch.as_tensor(masks).float() / scale).to(latents.device)
            if regions.ndim == 3:
                regions = regions[None].expand(b, -1, -1, -1)
            if regions.ndim != 4 or regions.shape[0] != b or tuple(regions.shape[-2:]) != self.resolution:
                raise ValueError(
                    f"masks must have shape (B, K, H, W) or (K, H, W) at resolution {self.resolution}; "
                    f"got {tuple(regions.shape)}."
                )
            regions = (regions > 0.5).float()
            names = [f"region_{i}" for i in range(regions.shape[1])]
            overlap = regions.sum(1) > 1
            if overlap.any():
                i = int(overlap.flatten(1).any(1).nonzero()[0])
                both = [names[j] for j in (regions[i] * overlap[i]).flatten(1).any(1).nonzero()[:, 0].tolist()]
                raise ValueError(
                    f"masks overlap: {int(overlap[i].sum())} pixels of image {i} lie in more than one region "
                    f"({', '.join(both)}); pass a partition (each pixel in at most one region)."
                )
        else:
            raise ValueError("masks must be None, a list of concept names, or a (B, K, H, W) tensor.")
        empty = regions.sum((-2, -1)) == 0
        cover = regions.sum(1)
        if (cover > 1).any():
            # Concept masks of different concepts may touch; the earlier concept keeps a shared pixel.
            regions = exclusive_partition(regions)[:, :-1]
            cover = regions.sum(1)
        emptied = regions.sum((-2, -1)) == 0
        if emptied.any():
            i, j = emptied.nonzero()[0].tolist()
            if empty[i, j]:
                why = (
                    "its concept's mask has no pixel"
                    if masks is None or isinstance(masks, (list, tuple))
                    else "its mask has no pixel"
                )
            else:
                why = "every pixel of it also lies in an earlier concept's mask, and the earlier concept keeps shared pixels"
            raise ValueError(
                f"Region '{names[j]}' is empty for image {i}: {why}; every player of the game needs at least one pixel."
            )
        if (cover < 1).any():
            regions = torch.cat([regions, (cover < 1).float()[:, None]], 1)
            names = names + [REST_REGION_NAME]
        return regions.to(latents.device), names

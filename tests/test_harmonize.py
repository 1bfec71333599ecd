"""Harmonised noise: each part's x_T mean tied to the surrounding rest region's, and edits that stay local with it."""

import pytest
import torch
from diffusers import DDIMScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

import pipeline_interpretable_ddpm as pid
from conftest import tiny_pipeline

SIZE = 16
STEPS = 6


def box(top: int, left: int, height: int, width: int) -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[top : top + height, left : left + width] = True
    return m


TEMPLATES = {"eyes": box(4, 3, 2, 10), "nose": box(7, 7, 2, 2), "mouth": box(12, 5, 1, 6)}
CODES = {name: pid.encode_binary_mask(m.numpy()) for name, m in TEMPLATES.items()}


def noise(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class OneWayDenoiser(ModelMixin, ConfigMixin):
    """A model that obeys the one-way game exactly: a pixel's output depends on its own input pixel and on the mean
    input over a fixed "rest" area (the context every region may read), nothing else."""

    @register_to_config
    def __init__(self, sample_size: int = SIZE, in_channels: int = 3):
        super().__init__()
        rest = torch.ones(SIZE, SIZE)
        for m in TEMPLATES.values():
            rest[pid.dilate_masks(m.float()[None, None], 3)[0, 0] > 0] = 0
        self.register_buffer("rest", rest)
        self.pixel = torch.nn.Conv2d(3, 3, 1)
        torch.nn.init.normal_(self.pixel.weight, std=0.3, generator=torch.Generator().manual_seed(0))

    def forward(self, sample, timestep) -> UNet2DOutput:
        context = (sample * self.rest).sum((-2, -1), keepdim=True) / self.rest.sum()
        return UNet2DOutput(sample=torch.tanh(self.pixel(sample)) * 0.5 + 0.5 * context)


def one_way_pipeline(harmonize_noise: bool = True, **kw) -> pid.InterpretableDDPMPipeline:
    """With harmonised noise on (off by default in the pipeline, as in the shipped models)."""
    pipe = pid.InterpretableDDPMPipeline(
        unet=OneWayDenoiser(),
        scheduler=DDIMScheduler(clip_sample=False),
        concept_templates=CODES,
        harmonize_noise=harmonize_noise,
        **kw,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def region_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float().expand(x.shape[0], 1, -1, -1)
    return (x * m).sum((-2, -1)) / m.sum((-2, -1))


# ----------------------------------------------------------------------------------------------------------------------
# The operation itself
# ----------------------------------------------------------------------------------------------------------------------
def test_harmonize_regions_ties_each_region_mean_to_the_reference_and_keeps_the_rest():
    x = noise(2, 0) + torch.tensor([0.5, -0.3, 0.1]).view(1, 3, 1, 1)
    regions = torch.stack([box(2, 2, 3, 3), box(9, 9, 4, 4)]).float()[None]
    reference = torch.zeros(1, 1, SIZE, SIZE)
    reference[..., 0:2, :] = 1
    out = pid.harmonize_regions(x, regions, reference)
    ref = region_mean(x, reference[0, 0].bool())
    for k in range(2):
        torch.testing.assert_close(region_mean(out, regions[0, k].bool()), ref)
        # everything but the mean of the region's noise is kept
        inside = regions[0, k].bool()
        torch.testing.assert_close(
            out[..., inside] - out[..., inside].mean(-1, keepdim=True),
            x[..., inside] - x[..., inside].mean(-1, keepdim=True),
        )
    outside = ~(regions[0].sum(0).bool())
    torch.testing.assert_close(out[..., outside], x[..., outside], rtol=0, atol=0)
    torch.testing.assert_close(pid.harmonize_regions(out, regions, reference), out)  # idempotent


def test_harmonize_regions_refuses_overlaps_and_leaves_images_without_reference_alone():
    x = noise(1, 1)
    overlapping = torch.stack([box(2, 2, 3, 3), box(3, 3, 3, 3)]).float()[None]
    with pytest.raises(ValueError, match="disjoint regions"):
        pid.harmonize_regions(x, overlapping, torch.zeros(1, 1, SIZE, SIZE))
    region = box(2, 2, 3, 3).float()[None, None]
    with pytest.raises(ValueError, match="reference region disjoint"):
        pid.harmonize_regions(x, region, region)
    torch.testing.assert_close(pid.harmonize_regions(x, region, torch.zeros(1, 1, SIZE, SIZE)), x)


# ----------------------------------------------------------------------------------------------------------------------
# In the pipeline
# ----------------------------------------------------------------------------------------------------------------------
def test_generation_harmonizes_the_noise_it_draws_and_regenerates_its_latents_exactly():
    pipe = one_way_pipeline()
    regions, reference = pipe.harmonization_regions()
    assert regions.shape == (1, 3, SIZE, SIZE) and reference.shape == (1, 1, SIZE, SIZE)
    assert not (regions.sum(1, keepdim=True) * reference).any()
    out = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="pt")
    ref = region_mean(out.latents, reference[0, 0].bool())
    for k in range(3):
        torch.testing.assert_close(region_mean(out.latents, regions[0, k].bool()), ref)
    plain = pipe(
        batch_size=3,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=STEPS,
        output_type="pt",
        harmonize_noise=False,
    )
    assert (plain.latents - out.latents).abs().max() > 1e-3
    # latents passed in are used as given (so x_T of an earlier call, or of an inversion, regenerates exactly) ...
    again = pipe(latents=out.latents, num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(again.images, out.images, rtol=0, atol=0)
    given = pipe(latents=plain.latents, num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(given.latents, plain.latents, rtol=0, atol=0)
    # ... unless asked: then they get exactly what a drawn x_T gets
    asked = pipe(latents=plain.latents, num_inference_steps=STEPS, output_type="pt", harmonize_noise=True)
    torch.testing.assert_close(asked.latents, out.latents)


def test_the_pipeline_setting_is_the_default_and_survives_save_and_load(tmp_path):
    pipe = tiny_pipeline(SIZE, concept_templates=CODES, harmonize_noise=False)
    out = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(out.latents, torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    pipe.save_pretrained(str(tmp_path))
    loaded = pid.InterpretableDDPMPipeline.from_pretrained(str(tmp_path), trust_remote_code=True)
    assert loaded.config.harmonize_noise is False
    with pytest.raises(ValueError, match="harmonize_noise must be True, False or None"):
        pipe(batch_size=1, num_inference_steps=STEPS, harmonize_noise="yes")


def test_without_templates_generation_is_unchanged_and_edits_use_the_band_around_the_mask():
    pipe = tiny_pipeline(SIZE, harmonize_noise=True)
    assert pipe.harmonization_regions() is None
    out = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(out.latents, torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    mask = box(5, 5, 4, 4)
    edit = pipe.resample_region(
        out.latents, mask, new_latents=noise(1, 3) + 2.0, num_inference_steps=STEPS, output_type="pt"
    )
    band = pid.harmonization_reference(mask.float()[None, None])[0, 0].bool()
    torch.testing.assert_close(region_mean(edit.latents, mask), region_mean(out.latents, band))


@pytest.mark.parametrize("concept", ["eyes", "nose", "mouth"])
def test_harmonized_edits_change_x_T_inside_the_region_only_and_stay_local_under_the_one_way_game(concept):
    pipe = one_way_pipeline()
    a = pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=STEPS, output_type="pt")
    b = pipe(batch_size=2, generator=torch.Generator().manual_seed(2), num_inference_steps=STEPS, output_type="pt")
    mask = TEMPLATES[concept]
    # a donor whose part is far off-colour: the harmonised swap re-centres it on the receiving face
    donor = b.latents.clone()
    donor[..., mask] += 3.0
    swap = pipe.swap_regions(a.latents, donor, mask, num_inference_steps=STEPS, output_type="pt")
    resample = pipe.resample_region(
        a.latents, mask, new_latents=noise(2, 5) - 3.0, num_inference_steps=STEPS, output_type="pt"
    )
    regions, reference = pipe.harmonization_regions()
    for latents, images in ((swap.latents_a, swap.images_a), (resample.latents, resample.images)):
        torch.testing.assert_close(latents[..., ~mask], a.latents[..., ~mask], rtol=0, atol=0)
        torch.testing.assert_close(images[..., ~mask], a.images[..., ~mask], rtol=0, atol=1e-6)
        assert (images[..., mask] - a.images[..., mask]).abs().max() > 1e-3
        # the part's noise mean is the receiving face's context mean, not the donor's / new noise's
        torch.testing.assert_close(region_mean(latents, mask), region_mean(a.latents, reference[0, 0].bool() & ~mask))
    plain = pipe.swap_regions(
        a.latents, donor, mask, num_inference_steps=STEPS, output_type="pt", harmonize_noise=False
    )
    torch.testing.assert_close(plain.latents_a[..., mask], donor[..., mask], rtol=0, atol=0)


def test_an_edit_of_the_rest_region_is_not_local_under_the_one_way_game():
    """The converse that makes the test above meaningful: the model does read the rest region's noise."""
    pipe = one_way_pipeline()
    a = pipe(batch_size=1, generator=torch.Generator().manual_seed(1), num_inference_steps=STEPS, output_type="pt")
    rest = box(0, 0, 2, SIZE)
    edit = pipe.resample_region(
        a.latents, rest, new_latents=noise(1, 9) + 1.0, num_inference_steps=STEPS, output_type="pt"
    )
    assert (edit.images[..., ~rest] - a.images[..., ~rest]).abs().max() > 1e-3


def test_attribution_harmonizes_the_baseline_it_draws():
    pipe = one_way_pipeline()
    x = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS).latents
    kw = dict(masks=["eyes", "nose"], num_inference_steps=STEPS, timesteps=None)
    on = pipe.attribute(x, generator=torch.Generator().manual_seed(3), **kw)
    off = pipe.attribute(x, generator=torch.Generator().manual_seed(3), harmonize_noise=False, **kw)
    assert not torch.allclose(on.phi, off.phi)
    assert float(on.leakage.max()) < 1.0

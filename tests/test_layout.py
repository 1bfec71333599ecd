"""Layout conditioning: each concept's part mask as extra UNet input channels, a condition every region reads (not a
player of the game), in the pipeline (generation), in training (the denoising and every coalition input) and when
a plain pretrained model is extended."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

import pipeline_interpretable_ddpm as pid
from conftest import tiny_pipeline, tiny_unet
from test_train import RecordingUNet, toy_part_faces, toy_training_step

CONCEPTS = {"eyes": [4, 5], "mouth": [7]}


def part_labels(b: int = 2, size: int = 16, shift: int = 0) -> torch.Tensor:
    """Label maps with eyes (4, 5) and a mouth (7), moved down by `shift` pixels."""
    labels = torch.ones(b, size, size, dtype=torch.long)
    labels[:, 4 + shift : 6 + shift, 3:6], labels[:, 4 + shift : 6 + shift, 10:13] = 4, 5
    labels[:, 11 + shift : 13 + shift, 6:10] = 7
    return labels


def layout_pipeline(seed: int = 0) -> pid.InterpretableDDPMPipeline:
    """A tiny pipeline whose UNet takes the two concepts' layout channels, their input weights trained-looking
    (random) rather than zero, so that the layout changes the output."""
    unet = pid.add_layout_channels(tiny_unet(seed=seed), len(CONCEPTS))
    with torch.no_grad():
        unet.conv_in.weight[:, 3:] = torch.randn_like(unet.conv_in.weight[:, 3:])
    templates = {
        name: pid.encode_binary_mask(pid.concept_masks(part_labels(1), CONCEPTS)[0, i].numpy())
        for i, name in enumerate(CONCEPTS)
    }
    pipe = pid.InterpretableDDPMPipeline(
        unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False),
        concepts=CONCEPTS,
        concept_templates=templates,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_added_layout_channels_start_at_zero_so_the_extended_unet_computes_the_plain_one():
    plain = tiny_unet()
    extended = pid.add_layout_channels(plain, 3)
    assert extended.config.in_channels == 6 and extended.config.out_channels == 3
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        expected = plain(x, t).sample
        for layout in (torch.zeros(2, 3, 16, 16), torch.rand(2, 3, 16, 16)):
            assert torch.allclose(extended(pid.with_layout(x, layout), t).sample, expected, atol=1e-6)
    assert torch.equal(extended.conv_in.weight[:, :3], plain.conv_in.weight)


def test_layout_from_labels_is_each_concepts_mask():
    labels = part_labels(2)
    layout = pid.layout_from_labels(labels, CONCEPTS)
    assert layout.shape == (2, 2, 16, 16) and layout.dtype == torch.float32
    assert torch.equal(layout[:, 0].bool(), (labels == 4) | (labels == 5))
    assert torch.equal(layout[:, 1].bool(), labels == 7)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        pid.layout_from_labels(labels[0], CONCEPTS)


def test_generation_follows_the_layout_it_is_given_and_defaults_to_the_templates():
    pipe = layout_pipeline()
    assert pipe.num_layout_channels == 2 and pipe.latent_shape == (3, 16, 16)
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def draw(**kw):
        return pipe(latents=x_t, num_inference_steps=3, output_type="pt", **kw).images

    template_faces = draw()
    labels = part_labels(2)
    # the templates are these label maps' masks: the same layout given three ways draws the same faces
    assert torch.allclose(draw(layout=labels), template_faces, atol=1e-6)
    assert torch.allclose(draw(layout=pid.layout_from_labels(labels, CONCEPTS)), template_faces, atol=1e-6)
    assert torch.allclose(draw(layout=labels[:1]), template_faces, atol=1e-6)  # one layout shared by the batch
    moved = draw(layout=part_labels(2, shift=2))
    assert (moved - template_faces).abs().amax() > 1e-3


@pytest.mark.parametrize(
    "layout, match",
    [
        (torch.zeros(2, 3, 16, 16), r"concept masks \(B, 2, 16, 16\)"),
        (torch.zeros(2, 2, 8, 8), r"label maps \(B, 16, 16\)"),
        (torch.full((2, 2, 16, 16), 2.0), "layout"),
        (torch.full((2, 2, 16, 16), float("nan")), "layout"),
        (part_labels(3), "3 layouts for a batch of 2"),
        (np.zeros((2, 16, 16), np.int64), "torch.Tensor"),
    ],
)
def test_a_bad_layout_is_refused_by_name(layout, match):
    pipe = layout_pipeline()
    with pytest.raises(ValueError, match=match):
        pipe(batch_size=2, num_inference_steps=2, layout=layout, generator=torch.Generator().manual_seed(0))


def test_a_plain_model_refuses_a_layout_and_a_layout_model_refuses_what_cannot_take_one_yet():
    with pytest.raises(ValueError, match="not layout-conditioned"):
        tiny_pipeline()(batch_size=1, num_inference_steps=2, layout=part_labels(1))
    pipe = layout_pipeline()
    x_t = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="`attribute` does not take a layout yet"):
        pipe.attribute(x_t, num_inference_steps=2)
    with pytest.raises(ValueError, match="`invert` does not take a layout yet"):
        pipe.invert(torch.rand(1, 3, 16, 16), num_inference_steps=2)


def test_training_gives_the_faces_layout_to_the_denoising_and_every_coalition_input():
    b, nb = 8, 4
    images, labels = toy_part_faces(b)
    labels[1::2] = labels[1::2].roll(2, 1)  # two layouts in the batch
    unet = RecordingUNet()
    toy_training_step(unet, images, labels, ["--layout_condition", "--ie_batch_size", str(nb)])
    ((x, _),) = unet.calls
    layout = pid.layout_from_labels(labels, CONCEPTS)
    m = (x.shape[0] - b) // nb
    assert x.shape[1] == 5 and m >= 2
    assert torch.equal(x[:b, 3:], layout)
    assert torch.equal(x[b:, 3:], layout[:nb].repeat_interleave(m, 0))
    # without the flag the UNet sees the image alone
    plain = RecordingUNet()
    toy_training_step(plain, images, labels, ["--ie_batch_size", str(nb)])
    assert plain.calls[0][0].shape[1] == 3


@pytest.mark.parametrize("blend", [False, True])
def test_edits_keep_each_images_layout(blend):
    """An edit redraws the face with the layout it was drawn with: an empty-mask edit is the face itself, and each
    side of a swap is the receiving face's layout applied to its swapped noise."""
    pipe = layout_pipeline()
    gen = torch.Generator().manual_seed(0)
    layout_a, layout_b = part_labels(2), part_labels(2, shift=2)
    face_a = pipe(batch_size=2, generator=gen, num_inference_steps=3, output_type="pt", layout=layout_a)
    face_b = pipe(batch_size=2, generator=gen, num_inference_steps=3, output_type="pt", layout=layout_b)
    assert torch.equal(face_a.layout, pid.layout_from_labels(layout_a, CONCEPTS))
    empty = torch.zeros(16, 16)
    same = pipe.resample_region(
        face_a.latents,
        empty,
        generator=gen,
        num_inference_steps=3,
        output_type="pt",
        allow_empty_mask=True,
        layout=face_a.layout,
        blend=blend,
    )
    assert torch.allclose(same.images, face_a.images, atol=1e-5)
    mask = torch.zeros(16, 16)
    mask[3:8, 2:14] = 1
    swap = pipe.swap_regions(
        face_a.latents,
        face_b.latents,
        mask,
        num_inference_steps=3,
        output_type="pt",
        layout_a=face_a.layout,
        layout_b=face_b.layout,
        blend=blend,
    )
    if not blend:
        for images, latents, layout in (
            (swap.images_a, swap.latents_a, layout_a),
            (swap.images_b, swap.latents_b, layout_b),
        ):
            again = pipe(latents=latents, num_inference_steps=3, output_type="pt", layout=layout).images
            assert torch.allclose(images, again, atol=1e-5)
    # the other face's layout draws another face from the same swapped noise
    other = pipe(latents=swap.latents_a, num_inference_steps=3, output_type="pt", layout=layout_b).images
    assert (other - swap.images_a).abs().amax() > 1e-3


def test_realism_samples_of_a_layout_model_take_seeded_training_layouts(tiny_faces):
    from evaluation.realism import generate_samples, training_layouts
    from evaluation.stats import seeded_latents

    layouts = training_layouts(tiny_faces, 5, seed=3)
    assert layouts.shape == (5, 16, 16) and torch.equal(layouts, training_layouts(tiny_faces, 5, seed=3))
    assert not torch.equal(layouts, training_layouts(tiny_faces, 5, seed=4))
    assert all(torch.isin(torch.tensor([4, 5, 7]), lab).all() for lab in layouts)  # every face has its parts
    pipe = layout_pipeline()
    samples = generate_samples(pipe, 5, 0, 2, 2, None, layouts)
    latents = seeded_latents(pipe.latent_shape, 0, "fid", list(range(5)))
    expected = pipe(latents=latents, num_inference_steps=2, output_type="pt", layout=layouts).images
    assert torch.equal(samples, (expected * 255).round().clamp(0, 255).to(torch.uint8))
    assert not torch.equal(samples, generate_samples(pipe, 5, 0, 2, 2, None))  # the templates draw other faces


def test_a_pretrained_model_gets_layout_channels_only_when_asked_and_only_as_many_as_concepts():
    import argparse

    import train_interpretable as ti

    def settings(layout_condition, concepts="eyes=4,5 mouth=7"):
        return argparse.Namespace(
            layout_condition=layout_condition, concepts=concepts, pretrained_model_name_or_path="start"
        )

    plain = tiny_unet()
    assert ti.layout_conditioned(plain, settings(False)) is plain
    extended = ti.layout_conditioned(plain, settings(True))
    assert extended.config.in_channels == 5 and torch.equal(extended.conv_in.weight[:, 3:], torch.zeros(8, 2, 3, 3))
    assert ti.layout_conditioned(extended, settings(True)) is extended  # resumed or continued: kept as it is
    with pytest.raises(ValueError, match="'start' is layout-conditioned .*pass --layout_condition"):
        ti.layout_conditioned(extended, settings(False))
    with pytest.raises(ValueError, match="takes 2 layout channels, but --concepts names 3"):
        ti.layout_conditioned(extended, settings(True, "eyes=4,5 nose=6 mouth=7"))

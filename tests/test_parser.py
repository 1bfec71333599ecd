"""The face-part parser: training (real subprocess), save/load, concept masks, templates, Hub-style 19-label parsers."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open
from transformers import SegformerForSemanticSegmentation

import pipeline_interpretable_ddpm as pid
import train_parser as tp
from conftest import PIPELINE_FILE, ROOT, tiny_pipeline
from model_files import load_pipeline


def _train_args(data_dir, output_dir, steps=6, **extra):
    args = [
        "--data_dir",
        data_dir,
        "--output_dir",
        output_dir,
        "--preset",
        "tiny",
        "--max_train_steps",
        str(steps),
        "--train_batch_size",
        "4",
        "--checkpointing_steps",
        "3",
        "--validation_size",
        "4",
        "--logging_steps",
        "2",
        "--lr_warmup_steps",
        "2",
        "--seed",
        "0",
        "--num_threads",
        "1",
    ]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


def _weights(folder):
    model = SegformerForSemanticSegmentation.from_pretrained(folder, dtype=torch.float32)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained_parser_dir(tiny_faces, tmp_path_factory):
    """A tiny parser trained 6 steps in-process by `train_parser.main`, the command line's entry point (a real
    `python train_parser.py` subprocess ends at the same weights: test_training_subprocess_gives_the_same_parser)."""
    out = str(tmp_path_factory.mktemp("parser"))
    tp.main(tp.parse_args(_train_args(tiny_faces, out)))
    return out


def test_training_saves_a_loadable_fp16_parser(trained_parser_dir):
    with safe_open(os.path.join(trained_parser_dir, "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    config = json.load(open(os.path.join(trained_parser_dir, "config.json")))
    assert {int(k): v for k, v in config["id2label"].items()} == pid.FACE_PART_LABELS
    metrics = json.load(open(os.path.join(trained_parser_dir, "parser_metrics.json")))
    assert metrics["steps"] == 6 and 0.0 <= metrics["test_iou"]["skin"] <= 1.0
    assert os.path.isdir(os.path.join(trained_parser_dir, "checkpoint-3"))
    parser = SegformerForSemanticSegmentation.from_pretrained(trained_parser_dir)
    logits = parser.float()(pixel_values=torch.zeros(2, 3, 16, 16)).logits
    assert logits.shape == (2, 8, 8, 8)  # tiny preset: first stage stride 2 -> logits at 1/2 resolution


@pytest.mark.slow  # a train_parser.py subprocess
def test_training_subprocess_gives_the_same_parser(tiny_faces, trained_parser_dir, tmp_path):
    """`python train_parser.py` as a real subprocess: it reports the test IoU and saves the in-process run's files
    and weights."""
    out = str(tmp_path / "subprocess")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_parser.py"), *_train_args(tiny_faces, out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test IoU" in proc.stderr
    assert sorted(os.listdir(out)) == sorted(os.listdir(trained_parser_dir))
    reference = _weights(trained_parser_dir)
    for k, v in _weights(out).items():
        assert torch.equal(v, reference[k]), k


def test_training_is_reproducible_and_resumes_exactly(tiny_faces, trained_parser_dir, tmp_path):
    # the same seed gives the same weights again; resuming from step 3 gives them too
    again = str(tmp_path / "again")
    tp.main(tp.parse_args(_train_args(tiny_faces, again)))
    reference = _weights(trained_parser_dir)
    for k, v in _weights(again).items():
        assert torch.equal(v, reference[k]), k
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    import shutil

    shutil.copytree(os.path.join(again, "checkpoint-3"), os.path.join(resumed, "checkpoint-3"))
    tp.main(tp.parse_args(_train_args(tiny_faces, resumed, resume_from_checkpoint="latest")))
    for k, v in _weights(resumed).items():
        assert torch.equal(v, reference[k]), k
    different = str(tmp_path / "seed1")
    tp.main(tp.parse_args(_train_args(tiny_faces, different, steps=3) + ["--seed", "1"]))
    assert any(not torch.equal(v, reference[k]) for k, v in _weights(different).items())


def test_flip_augmentation_swaps_left_and_right_labels():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1, 0], labels[0, 1, 3], labels[0, 2, 0] = 4, 5, 2  # left eye at image-left, right eye at image-right
    images = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)
    for seed in range(20):  # some seed flips
        img, lab = tp.augment(images, labels, torch.Generator().manual_seed(seed), max_shift=0, color=False)
        if not torch.equal(img, images):
            assert torch.equal(img, images.flip(-1))
            assert lab[0, 1, 3] == 5 and lab[0, 1, 0] == 4 and lab[0, 2, 3] == 3  # mirrored *and* relabelled
            return
    pytest.fail("no flip in 20 draws")


def test_iou_metrics_count_pixels_over_the_whole_set():
    target = torch.tensor([[[0, 4, 4, 5]]])
    pred = torch.tensor([[[0, 4, 5, 4]]])
    iou = tp.iou_from_confusion(tp.confusion_matrix(pred, target))
    assert iou["left_eye"] == pytest.approx(1 / 3) and iou["right_eye"] == 0.0
    assert iou["eyes"] == 1.0 and iou["background"] == 1.0  # pooled eyes ignore the left/right confusion
    assert np.isnan(iou["nose"])


# -- the parser inside the pipeline -----------------------------------------------------------------------------------
def _parser_pipeline(trained_parser_dir, **kw):
    parser = SegformerForSemanticSegmentation.from_pretrained(trained_parser_dir)
    return tiny_pipeline(parser=parser, **kw)


def _images(n, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_concept_masks_from_the_parser_shape_dtype_dilation(trained_parser_dir):
    # concepts that cover every label, so some concept mask is neither empty nor full whatever the tiny parser says
    pipe = _parser_pipeline(trained_parser_dir, concepts="eyes=4,5 nose=6 mouth=7 face=1,2,3")
    assert pipe.parser.dtype == torch.float16  # shipped in fp16 ...
    x = _images(3)
    labels = pipe.parse(x)
    assert pipe.parser.dtype == torch.float32  # ... but run in fp32 on CPU, where fp16 kernels are emulated
    assert labels.shape == (3, 16, 16) and labels.dtype == torch.long and int(labels.max()) <= 7
    grew = False
    for name, ids in pipe.concepts.items():
        mask = pipe.concept_mask(x, name)
        assert mask.shape == (3, 1, 16, 16) and mask.dtype == torch.float32
        assert torch.equal(mask[:, 0] > 0.5, torch.isin(labels, torch.tensor(ids)))
        dilated = pipe.concept_mask(x, name, dilation=1)
        assert bool((dilated >= mask).all())
        grew |= bool(dilated.sum() > mask.sum())
    assert grew
    regions = pipe.region_masks(x)
    assert regions.shape == (3, 5, 16, 16) and torch.equal(regions.sum(1), torch.ones(3, 16, 16))
    # PIL input parses like its model-space tensor
    pil = pipe.postprocess(x[:1], "pil")
    assert torch.equal(pipe.parse(pil), pipe.parse(pipe.preprocess(pil)))


def test_concept_mask_of_latents_parses_the_generated_image(trained_parser_dir):
    pipe = _parser_pipeline(trained_parser_dir)
    latents = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = pipe.concept_mask(latents, "nose", num_inference_steps=2)  # recognised as latents (values beyond 1.5)
    expected = torch.isin(pipe.parse(pipe.denoise(latents, 2, show_progress=False)), torch.tensor([6]))
    assert torch.equal(mask[:, 0] > 0.5, expected)


def test_unknown_concept_and_uncovered_concept_are_clear_errors(trained_parser_dir, tmp_path):
    pipe = _parser_pipeline(trained_parser_dir)
    with pytest.raises(ValueError, match="Unknown concept 'ears'.*eyes, nose, mouth"):
        pipe.concept_mask(_images(1), "ears")
    with pytest.raises(ValueError, match="dilation must be a non-negative integer"):
        pipe.concept_mask(_images(1), "eyes", dilation=-1)
    with pytest.raises(ValueError, match=r"model-space RGB batches \(B, 3, 16, 16\)"):
        pipe.parse(torch.zeros(1, 3, 8, 8))
    hub_dir = _tiny_celebamask_parser(tmp_path)
    hub = SegformerForSemanticSegmentation.from_pretrained(hub_dir)
    no_mouth = {k: v for k, v in tp.CELEBAMASK_HQ_TO_FACE_PARTS.items() if v != 7}
    pipe = tiny_pipeline(parser=hub, parser_label_mapping=no_mouth, parser_normalization="imagenet")
    pipe.concept_mask(_images(1), "eyes")  # covered
    with pytest.raises(ValueError, match=r"cannot produce concept 'mouth' \(part label ids \[7\]\)"):
        pipe.concept_mask(_images(1), "mouth")
    with pytest.raises(ValueError, match="cannot produce concept 'mouth'"):
        pipe.region_masks(_images(1))
    with pytest.raises(ValueError, match="19 labels, not the 8 face part labels; pass parser_label_mapping"):
        tiny_pipeline(parser=hub)
    with pytest.raises(ValueError, match=r"maps to \[9\], which are not face part ids"):
        tiny_pipeline(parser=hub, parser_label_mapping={4: 9})
    with pytest.raises(ValueError, match="parser_normalization must be"):
        tiny_pipeline(parser=hub, parser_label_mapping=tp.CELEBAMASK_HQ_TO_FACE_PARTS, parser_normalization="0-1")
    with pytest.raises(ValueError, match="no parser component"):
        tiny_pipeline().parse(_images(1))


def test_template_fallback_without_parser(tiny_faces, tmp_path):
    templates = tp.compute_templates_from_data(tiny_faces)
    faces = tp.load_labelled_faces(tiny_faces, "train")[1]
    assert templates == pid.compute_concept_templates(faces.long(), pid.parse_concepts(None))
    out = tmp_path / "templates.json"
    tp.main(tp.parse_args(["--mode", "templates", "--data_dir", tiny_faces, "--templates_out", str(out)]))
    assert json.loads(out.read_text()) == templates
    pipe = tiny_pipeline(concept_templates=templates)
    for name in pipe.concepts:
        template = pipe.template_mask(name)
        assert template.any() and not template.all()
        mask = pipe.concept_mask(_images(2), name)
        assert mask.shape == (2, 1, 16, 16) and torch.equal(mask[:, 0] > 0.5, template.expand(2, 16, 16))
        assert pipe.concept_mask(_images(2), name, dilation=2).sum() > mask.sum()


# -- Hub parsers with another label set -------------------------------------------------------------------------------
def _tiny_celebamask_parser(tmp_path):
    """A randomly initialised SegFormer with the 19 CelebAMask-HQ labels of `jonathandinu/face-parsing`, saved."""
    folder = str(tmp_path / "celebamask-parser")
    if not os.path.isdir(folder):
        tp.make_face_parser("tiny", seed=3, id2label=tp.CELEBAMASK_HQ_LABELS).save_pretrained(folder)
    return folder


def test_celebamask_parser_through_the_label_mapping_round_trips(tmp_path):
    hub = SegformerForSemanticSegmentation.from_pretrained(_tiny_celebamask_parser(tmp_path))
    assert hub.config.num_labels == 19 and hub.config.id2label[10] == "mouth"
    pipe = tiny_pipeline(
        parser=hub,
        parser_label_mapping=tp.CELEBAMASK_HQ_TO_FACE_PARTS,
        parser_normalization="imagenet",
        parser_resolution=32,
    )
    pipe.save_pretrained(str(tmp_path / "pipe"))
    loaded = DiffusionPipeline.from_pretrained(
        str(tmp_path / "pipe"), custom_pipeline=PIPELINE_FILE, trust_remote_code=True
    )
    assert isinstance(loaded.parser, SegformerForSemanticSegmentation) and loaded.parser.config.num_labels == 19
    assert loaded.config.parser_resolution == 32 and loaded.config.parser_normalization == "imagenet"
    assert {int(k): v for k, v in loaded.config.parser_label_mapping.items()} == tp.CELEBAMASK_HQ_TO_FACE_PARTS
    x = _images(2)
    # by hand: [-1, 1] -> [0, 1] -> 32x32 -> ImageNet normalisation -> logits back at 16x16 -> argmax -> mapping
    pixels = torch.nn.functional.interpolate((x + 1) / 2, size=(32, 32), mode="bilinear", align_corners=False)
    pixels = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        parser_ids = tp.parser_logits(hub.float(), pixels, size=16).argmax(1)
    lut = torch.tensor([tp.CELEBAMASK_HQ_TO_FACE_PARTS[i] for i in range(19)])
    assert torch.equal(loaded.parse(x), lut[parser_ids])
    assert torch.equal(pipe.parse(x), lut[parser_ids])
    mouth = loaded.concept_mask(x, "mouth")[:, 0] > 0.5
    assert torch.equal(mouth, torch.isin(parser_ids, torch.tensor([10, 11, 12])))


def test_attach_parser_and_templates_to_a_saved_pipeline(tiny_faces, trained_parser_dir, tmp_path):
    folder = str(tmp_path / "pipe")
    tiny_pipeline().save_pretrained(folder)
    unet_file = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    before = hashlib.sha256(open(unet_file, "rb").read()).hexdigest()
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("model card\n")
    tp.main(
        tp.parse_args(
            [
                "--mode",
                "attach",
                "--pipeline_dir",
                folder,
                "--parser_dir",
                trained_parser_dir,
                "--data_dir",
                tiny_faces,
            ]
        )
    )
    assert hashlib.sha256(open(unet_file, "rb").read()).hexdigest() == before  # nothing else rewritten
    assert open(os.path.join(folder, "README.md")).read() == "model card\n"
    assert not any(n.startswith("checkpoint-") for n in os.listdir(os.path.join(folder, "parser")))
    loaded = load_pipeline(folder)
    assert isinstance(loaded.parser, SegformerForSemanticSegmentation)
    assert loaded.config.concept_templates == tp.compute_templates_from_data(tiny_faces)
    x = _images(1)
    assert torch.equal(loaded.parse(x), _parser_pipeline(trained_parser_dir).parse(x))
    # templates only, then a Hub parser with its mapping through the same function
    tp.attach_parser(
        folder,
        _tiny_celebamask_parser(tmp_path),
        label_mapping=tp.CELEBAMASK_HQ_TO_FACE_PARTS,
        normalization="imagenet",
        resolution=32,
    )
    hub_loaded = load_pipeline(folder)
    assert hub_loaded.parser.config.num_labels == 19 and hub_loaded.config.parser_resolution == 32
    with pytest.raises(ValueError, match="19 labels, not the 8 face-part labels"):
        tp.attach_parser(folder, _tiny_celebamask_parser(tmp_path), verify=False)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        tp.attach_parser(str(tmp_path), trained_parser_dir)

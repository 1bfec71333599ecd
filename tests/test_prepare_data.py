"""prepare_data.py: photos -> aligned faces with part maps in the utkface64 parquet layout.

The photos are made here from real faces: 64x64 faces of `../shared/data/utkface64/test.parquet`, upscaled to 224 px,
rotated a little and pasted at an offset onto a larger noisy background, next to a photo without a face, a text file
and a truncated JPEG. The command itself runs in a subprocess of the project's Python (MediaPipe is in requirements.txt).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

import prepare_data
from conftest import face_data_available, in_ci, require
from face_data import default_data_dir, load_faces
from model_files import ROOT

SHARED_DATA = default_data_dir()
SCRIPT = os.path.join(ROOT, "prepare_data.py")
TRAIN = os.path.join(ROOT, "train_interpretable.py")
ANGLES = (8.0, -10.0, 5.0, -6.0)  # degrees each test face is rotated by in its photo


def child_env() -> dict:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )


def run(python, *args, timeout=300):
    return subprocess.run(
        [python, SCRIPT, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout
    )


def make_photos(folder, faces):
    """Photo-like inputs: each of the first four 64x64 faces upscaled to 224 px, rotated by ANGLES[k] and pasted
    onto a 480x360 noisy gradient at an offset; the next two in one group photo (260 px, and 180 px turned by -12
    degrees); plus a photo without a face, a text file and a truncated JPEG."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    if len(faces) >= 6:
        group = Image.new("RGB", (700, 400), (120, 130, 140))
        group.paste(Image.fromarray(faces[4]).resize((260, 260), Image.BICUBIC), (30, 60))
        small = Image.fromarray(faces[5]).resize((180, 180), Image.BICUBIC).rotate(-12, resample=Image.BICUBIC)
        group.paste(small, (420, 120))
        group.save(os.path.join(folder, "group.jpg"), quality=92)
    for k, face in enumerate(faces[:4]):
        big = Image.fromarray(face).resize((224, 224), Image.BICUBIC)
        rotated = big.rotate(ANGLES[k], resample=Image.BICUBIC, expand=True)
        alpha = Image.new("L", big.size, 255).rotate(ANGLES[k], resample=Image.BICUBIC, expand=True)
        bg = rng.normal(0, 20, (360, 480, 3)) + np.linspace(60, 200, 480)[None, :, None]
        photo = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        photo.paste(rotated, (40 + 40 * k, 30 + 10 * k), alpha)
        if k % 2:
            photo.save(os.path.join(folder, f"photo_{k}.png"))
        else:
            os.makedirs(os.path.join(folder, "holiday"), exist_ok=True)
            photo.save(os.path.join(folder, "holiday", f"photo_{k}.jpg"), quality=92)
    scene = Image.new("RGB", (320, 240), (90, 140, 200))
    draw = ImageDraw.Draw(scene)
    draw.rectangle([40, 60, 140, 200], fill=(200, 60, 40))
    draw.ellipse([180, 40, 300, 160], fill=(240, 230, 80))
    scene.save(os.path.join(folder, "no_face.png"))
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")


def real_faces(n=6):
    require(face_data_available(), f"no shipped faces at {os.path.normpath(SHARED_DATA)}")
    faces = load_faces(SHARED_DATA, "test", limit=40)
    return faces.images[faces.has_mask][:n]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The command run once on the photos; (python, input folder, output folder, completed process)."""
    python = sys.executable
    root = tmp_path_factory.mktemp("prepare")
    photos, out = str(root / "photos"), str(root / "faces")
    make_photos(photos, real_faces())
    proc = run(python, "--input_dir", photos, "--output_dir", out, "--test_fraction", "0.25", "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return python, photos, out, proc


def summary_of(out):
    with open(os.path.join(out, "prepare_summary.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------------------
# Geometry and layout (no MediaPipe)
# ---------------------------------------------------------------------------------------------------------------------
def test_fit_similarity_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, (5, 2))
    angle, scale, shift = np.radians(-17.0), 0.31, np.array([12.0, -7.5])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = prepare_data.fit_similarity(src, src @ rot.T + shift)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-7)
    # a mirrored target is fitted without a reflection
    mirrored = prepare_data.fit_similarity(src, src * np.array([-1.0, 1.0]))
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_polygon_centroid_of_a_square_and_a_triangle():
    square = np.array([[0, 0], [4, 0], [4, 2], [0, 2], [2, 1]], float)  # an inner point does not count
    np.testing.assert_allclose(prepare_data.polygon_centroid(square), [2, 1])
    np.testing.assert_allclose(prepare_data.polygon_centroid(np.array([[0, 0], [3, 0], [0, 3]], float)), [1, 1])


@pytest.mark.needs_face_data
def test_template_is_the_shipped_faces_mean_part_centroids():
    measured = prepare_data.measure_part_centroids(SHARED_DATA, "test")  # the template was measured on train
    for part, (x, y) in prepare_data.PART_TEMPLATE.items():
        assert abs(measured[part][0] - x) < 0.15 and abs(measured[part][1] - y) < 0.15, (part, measured[part])


def test_split_is_deterministic_and_keeps_a_test_face():
    names = [f"img_{i}.jpg" for i in range(40)]
    splits = prepare_data.split_faces(names, 0.1)
    assert splits.count("test") == 4
    shuffled = names[::-1]
    assert dict(zip(shuffled, prepare_data.split_faces(shuffled, 0.1))) == dict(zip(names, splits))
    assert prepare_data.split_faces(names[:3], 0.05).count("test") == 1  # at least one test face
    assert prepare_data.split_faces(names[:1], 0.5) == ["train"]
    assert prepare_data.split_faces(names, 0.0).count("test") == 0


def test_parquet_layout_loads(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        lab = rng.integers(0, 8, (64, 64), dtype=np.uint8)
        rows.append(
            {
                "file_name": f"a/{i}.jpg" if i < 2 else "a/1.jpg#1",
                "image": prepare_data._encode(img, "PNG"),
                "mask": prepare_data._encode(lab, "PNG"),
                "has_mask": i != 2,
            }
        )
    prepare_data.write_parquet(rows, str(tmp_path / "train.parquet"))
    faces = load_faces(str(tmp_path), "train", resolution=64)
    assert faces.images.shape == (3, 64, 64, 3) and faces.has_mask.tolist() == [True, True, False]
    import pyarrow.parquet as pq

    table = pq.read_table(str(tmp_path / "train.parquet"))
    shipped = os.path.join(SHARED_DATA, "train.parquet")
    if os.path.isfile(shipped) or in_ci():  # CI has the shipped data: the comparison must run there
        assert table.schema.remove_metadata() == pq.read_schema(shipped).remove_metadata()
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["mask"] == {"_type": "Image"}
    mask_paths = [m["path"] for m in table.column("mask").to_pylist()]
    assert mask_paths == ["a/0_mask.png", "a/1_mask.png", "a/1_face1_mask.png"]


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda d: None, [], "is not a folder"),
        (lambda d: os.makedirs(d), [], "holds no files"),
        (lambda d: make_photos(d, []), ["--resolution", "0"], "--resolution"),
        (lambda d: make_photos(d, []), ["--test_fraction", "1"], "--test_fraction"),
        (lambda d: make_photos(d, []), ["--parser_dir", "nowhere"], "no saved parser"),
        (lambda d: make_photos(d, []), ["--output_dir", "{photos}"], "is --input_dir '{photos}' or a folder above"),
        (
            lambda d: make_photos(os.path.join(d, "faces"), []),
            ["--output_dir", "{photos}/faces"],
            "holds no files outside --output_dir '{photos}/faces' (which is inside it",
        ),
    ],
    ids=["missing", "empty", "resolution", "test_fraction", "parser_dir", "output is input", "output inside input"],
)
def test_bad_arguments_exit_2(tmp_path, make, extra, message):
    photos = str(tmp_path / "photos")
    make(photos)
    before = sorted(os.listdir(photos)) if os.path.isdir(photos) else None
    extra = [a.format(photos=photos) for a in extra]
    proc = run(sys.executable, "--input_dir", photos, "--output_dir", str(tmp_path / "out"), *extra)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and message.format(photos=photos) in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "out")
    assert (sorted(os.listdir(photos)) if os.path.isdir(photos) else None) == before


def _tiny_dataset_writers(tag, with_test=True):
    """Writers of a data set whose files all carry `tag` (one face per split, named after the tag)."""
    rng = np.random.default_rng(len(tag))
    face = {
        "image": prepare_data._encode(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "PNG"),
        "mask": prepare_data._encode(np.zeros((8, 8), np.uint8), "PNG"),
        "has_mask": False,
    }
    writers = {
        "train.parquet": lambda p: prepare_data.write_parquet([{**face, "file_name": f"{tag}-train"}], p),
        "prepare_summary.json": lambda p: open(p, "w").write(json.dumps({"tag": tag})),
        "preview.png": lambda p: Image.new("RGB", (4, 4)).save(p, format="PNG"),
    }
    if with_test:
        writers["test.parquet"] = lambda p: prepare_data.write_parquet([{**face, "file_name": f"{tag}-test"}], p)
    return writers


def _tags(folder):
    import pyarrow.parquet as pq

    tags = {}
    for split in ("train", "test"):
        path = os.path.join(folder, f"{split}.parquet")
        if os.path.exists(path):
            tags[split] = pq.read_table(path).column("file_name").to_pylist()[0].split("-")[0]
    return tags


@pytest.mark.parametrize("with_test", [True, False], ids=["both splits", "no test split"])
def test_an_interrupted_overwrite_never_mixes_two_data_sets(tmp_path, monkeypatch, with_test):
    """The data set is replaced all together: interrupted at every file move (as a kill would), a reader sees either
    the old set or the new one, whole, never a new train.parquet beside an old test.parquet. The folder's other files
    are never touched."""
    import face_data

    moves = 0
    real_replace = os.replace

    def counting_replace(src, dst):
        nonlocal moves
        moves += 1
        return real_replace(src, dst)

    monkeypatch.setattr(face_data.os, "replace", counting_replace)
    probe = str(tmp_path / "probe")
    face_data.write_dataset(probe, _tiny_dataset_writers("old"), prepare_data.OUTPUT_FILES)
    moves = 0
    face_data.write_dataset(probe, _tiny_dataset_writers("new", with_test), prepare_data.OUTPUT_FILES)
    total = moves
    assert total >= 3

    class Killed(BaseException):
        pass

    for stop_at in range(total + 1):
        folder = str(tmp_path / f"data{stop_at}")
        monkeypatch.setattr(face_data.os, "replace", real_replace)
        face_data.write_dataset(folder, _tiny_dataset_writers("old"), prepare_data.OUTPUT_FILES)
        with open(os.path.join(folder, "my_notes.md"), "w") as f:
            f.write("mine")
        calls = 0

        def dying_replace(src, dst, stop_at=stop_at):
            nonlocal calls
            if calls == stop_at:
                raise Killed()
            calls += 1
            return real_replace(src, dst)

        monkeypatch.setattr(face_data.os, "replace", dying_replace)
        try:
            face_data.write_dataset(folder, _tiny_dataset_writers("new", with_test), prepare_data.OUTPUT_FILES)
        except Killed:
            pass
        monkeypatch.setattr(face_data.os, "replace", real_replace)
        load_faces(folder, "train")  # what a training run does first: finishes a replacement that was committed
        tags = _tags(folder)
        new = {"train": "new", "test": "new"} if with_test else {"train": "new"}
        assert tags in ({"train": "old", "test": "old"}, new), (stop_at, tags)
        assert json.load(open(os.path.join(folder, "prepare_summary.json")))["tag"] == tags["train"]
        assert open(os.path.join(folder, "my_notes.md")).read() == "mine"
        assert not [n for n in os.listdir(folder) if n.startswith(".dataset") and tags["train"] == "new"]


def test_existing_output_is_not_overwritten(tmp_path):
    photos, out = str(tmp_path / "photos"), tmp_path / "out"
    make_photos(photos, [])
    out.mkdir()
    (out / "train.parquet").write_bytes(b"the user's data")
    proc = run(sys.executable, "--input_dir", photos, "--output_dir", str(out))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr, proc.stderr
    assert (out / "train.parquet").read_bytes() == b"the user's data"


# ---------------------------------------------------------------------------------------------------------------------
# The command on photos
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # the prepare_data.py subprocess (`prepared`)
def test_faces_are_found_aligned_and_labelled(prepared):
    _, _, out, proc = prepared
    summary = summary_of(out)
    assert summary["photos"] == 8 and summary["photos_with_a_face"] == 5 and summary["faces"] == 5
    assert summary["faces_with_mask"] == 5
    assert (summary["train"], summary["test"]) == (4, 1)
    train, test = load_faces(out, "train", resolution=64), load_faces(out, "test", resolution=64)
    assert len(train) == 4 and len(test) == 1 and train.has_mask.all() and test.has_mask.all()
    labels = np.concatenate([train.labels, test.labels])
    assert set(np.unique(labels)) == set(range(8))  # every part, skin and background, from the parser
    # the photos' rotations are undone (each face's own tilt in its 64x64 source adds a few degrees)
    details = {d["file_name"]: d for d in summary["face_details"]}
    for k, angle in enumerate(ANGLES):
        name = f"photo_{k}.png" if k % 2 else os.path.join("holiday", f"photo_{k}.jpg")
        assert abs(details[name]["rotation_deg"] - angle) < 4, details[name]
        assert abs(details[name]["scale"] - 64 / 224) < 0.03, details[name]
    # the parser's eye and mouth centroids on the aligned faces land near the template
    template = np.array([prepare_data.PART_TEMPLATE[p] for p in (4, 5, 7)])
    errors = []
    for lab in labels:
        cents = prepare_data.label_centroids(lab)
        errors.append(np.linalg.norm(np.array([cents[p] for p in (4, 5, 7)]) - template, axis=1))
    errors = np.array(errors)
    assert errors.max() < 2.0 and errors.mean() < 1.2, errors
    assert "5 with a face, 3 skipped" in proc.stdout
    with Image.open(os.path.join(out, "preview.png")) as preview:
        assert preview.size == (12 * 128, 2 * 128)  # 5 faces above their maps, at 2x, in a row of 12
    assert details["group.jpg"]["eye_distance_px"] > 90  # the larger face of the group photo


@pytest.mark.slow  # the prepare_data.py subprocess (`prepared`)
def test_failures_are_reported_not_raised(prepared):
    _, _, out, proc = prepared
    reasons = {f["file"]: f["reason"] for f in summary_of(out)["failures"]}
    assert set(reasons) == {"no_face.png", "notes.txt", "broken.jpg"}
    assert reasons["no_face.png"] == "no face found"
    assert reasons["notes.txt"].startswith("unreadable image") and reasons["broken.jpg"].startswith("unreadable image")
    for name in reasons:
        assert f"skipped {name}:" in proc.stdout


@pytest.mark.slow  # the prepare_data.py subprocess (`prepared`)
def test_rerun_refuses_without_overwrite_and_replaces_with_it(prepared, tmp_path):
    python, photos, prepared_out, _ = prepared
    out = str(tmp_path / "faces")  # a copy, so that the other tests keep the first run's output
    shutil.copytree(prepared_out, out)
    before = {n: open(os.path.join(out, n), "rb").read() for n in prepare_data.OUTPUT_FILES}
    with open(os.path.join(out, "my_notes.md"), "w") as f:
        f.write("mine")
    proc = run(python, "--input_dir", photos, "--output_dir", out, "--quiet")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr, proc.stderr
    assert {n: open(os.path.join(out, n), "rb").read() for n in before} == before
    proc = run(
        python,
        "--input_dir",
        photos,
        "--output_dir",
        out,
        "--test_fraction",
        "0",
        "--overwrite",
        "--label_source",
        "landmarks",
        "--max_faces_per_photo",
        "2",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(out)
    assert summary["label_source"] == "landmarks" and summary["faces"] == summary["faces_with_mask"] == 6
    second = {d["file_name"]: d for d in summary["face_details"]}["group.jpg#1"]  # the group photo's smaller face
    assert abs(second["rotation_deg"] + 12) < 4 and second["eye_distance_px"] < 80
    assert len(load_faces(out, "train")) == 6
    assert not os.path.exists(os.path.join(out, "test.parquet"))  # an empty split leaves no (stale) file
    with open(os.path.join(out, "my_notes.md")) as f:
        assert f.read() == "mine"  # files the command did not write are left alone
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


@pytest.mark.slow  # prepare_data.py and a training subprocess
def test_training_runs_on_the_prepared_faces(prepared, tmp_path):
    _, _, out, _ = prepared
    run_dir = str(tmp_path / "run")
    args = [
        "--train_data_dir",
        out,
        "--output_dir",
        run_dir,
        "--resolution",
        "64",
        "--block_out_channels",
        "8,16",
        "--attention_levels",
        "0,0",
        "--layers_per_block",
        "1",
        "--report_to",
        "none",
        "--save_images_steps",
        "0",
        "--train_batch_size",
        "2",
        "--lr_warmup_steps",
        "0",
        "--log_every",
        "1",
        "--seed",
        "0",
        "--max_train_steps",
        "1",
        "--lambda_start",
        "20",
        "--lambda_end",
        "12",
    ]
    proc = subprocess.run(
        [sys.executable, TRAIN, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        log = [json.loads(line) for line in f if line.strip()]
    assert log and np.isfinite(log[-1]["loss"]) and log[-1]["loss_ie"] >= 0
    assert os.path.isfile(os.path.join(run_dir, "model_index.json"))

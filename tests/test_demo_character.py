"""Tests for the built-in synthetic Aldar Köse demo dataset."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from aldar_lit.offline.demo_character import BACKGROUNDS, POSES, SHOTS, VIEWS, generate_demo_dataset

HAT, SKIN = (166, 102, 50), (226, 174, 128)  # constant identity colours of the drawing


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def _mask(img: np.ndarray, colour, tol: int = 24) -> np.ndarray:
    return (np.abs(img - np.asarray(colour)) <= tol).all(axis=-1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", num_images=8, size=64, seed=3)


def test_writes_images_captions_and_manifest(dataset):
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["args"] == {"num_images": 8, "size": 64, "seed": 3, "trigger": "aldar_kose_man"}
    assert sorted(p.name for p in dataset.glob("*.png")) == [f"{i:03d}.png" for i in range(8)]
    assert sorted(p.name for p in dataset.glob("*.txt")) == [f"{i:03d}.txt" for i in range(8)]
    assert len(manifest["images"]) == 8
    for entry in manifest["images"]:
        img = Image.open(dataset / entry["image"])
        assert (img.mode, img.size) == ("RGB", (64, 64))
        caption = (dataset / entry["caption_file"]).read_text()
        assert caption.startswith("aldar_kose_man, ")
        assert "tall pointed felt hat" in caption and "wide smile" in caption
        assert entry["view"] in VIEWS and entry["pose"] in POSES
        assert entry["shot"] in SHOTS and entry["background"] in BACKGROUNDS
        for key in ("view", "pose", "shot", "background", "robe"):
            assert entry[key] in caption
    # 8 images cover all 6 poses and all 5 views (balanced draws)
    assert {e["pose"] for e in manifest["images"]} == set(POSES)
    assert {e["view"] for e in manifest["images"]} == set(VIEWS)


def test_same_arguments_give_identical_bytes(tmp_path, dataset):
    again = generate_demo_dataset(tmp_path / "again", num_images=8, size=64, seed=3)
    names = sorted(p.name for p in dataset.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (dataset / name).read_bytes() == (again / name).read_bytes(), name


def test_seed_changes_images_and_images_vary(tmp_path, dataset):
    other = generate_demo_dataset(tmp_path / "other", num_images=8, size=64, seed=4)
    assert any(_pixels(dataset / n).tolist() != _pixels(other / n).tolist() for n in ("000.png", "001.png"))
    first = _pixels(dataset / "000.png")
    assert all((_pixels(dataset / f"{i:03d}.png") - first).std() > 0 for i in range(1, 8))


def test_images_show_hat_above_face(dataset):
    for i in range(8):
        img = _pixels(dataset / f"{i:03d}.png")
        hat_rows = np.nonzero(_mask(img, HAT).any(axis=1))[0]
        skin_rows = np.nonzero(_mask(img, SKIN).any(axis=1))[0]
        assert hat_rows.size and skin_rows.size, f"{i:03d}.png has no hat or no skin"
        assert hat_rows.min() < skin_rows.min(), f"{i:03d}.png: hat tip is not the topmost part"
        centre = img[16:48, 16:48].reshape(-1, 3)
        assert len({tuple(c) for c in centre}) > 50, f"{i:03d}.png looks like a plain background"


def test_second_call_is_a_no_op(tmp_path):
    out = generate_demo_dataset(tmp_path / "ds", num_images=6, size=64)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert generate_demo_dataset(tmp_path / "ds", num_images=6, size=64) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary directory left behind


def test_existing_directory_with_other_arguments_is_refused(tmp_path):
    out = generate_demo_dataset(tmp_path / "ds", num_images=6, size=64)
    with pytest.raises(ValueError, match=re.escape(str(out))):
        generate_demo_dataset(out, num_images=7, size=64)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=re.escape(str(user))):
        generate_demo_dataset(user, num_images=6, size=64)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    assert len(list(out.glob("*.png"))) == 6


def test_existing_empty_directory_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    out = generate_demo_dataset(tmp_path / "empty", num_images=6, size=32)
    assert len(list(out.glob("*.png"))) == 6


@pytest.mark.parametrize(("kwargs", "name"), [({"num_images": 0}, "num_images"), ({"size": 31}, "size")])
def test_bad_arguments_are_rejected(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_demo_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()

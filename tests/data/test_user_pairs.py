"""Loading a user's own image-caption pairs from a folder, a CSV or a JSONL file."""

import json
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from data.user_pairs import UserPairsSource

_COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def _write_image(path, rgb, size=(6, 4), mode="RGB"):
    """Writes a solid image of `size` (W, H)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, rgb).save(path)


def _write_garbage(path):
    with open(path, "wb") as f:
        f.write(b"\x89PNG this is not really an image \x00\x01\x02" * 4)


def _check_solid(example, rgb, size=(6, 4)):
    image = example["image"]
    assert image.dtype == np.uint8 and image.shape == (size[1], size[0], 3)
    assert (image == np.array(rgb, np.uint8)).all()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pairs"
    for i, (name, rgb) in enumerate(_COLORS.items()):
        sub = root / ("a" if i < 2 else "b")  # nested folders are searched too
        _write_image(str(sub / f"{i}_{name}.png"), rgb)
        (sub / f"{i}_{name}.txt").write_text(f"a {name} square\n")
    return root


def test_folder_of_images_with_caption_files(folder):
    src = UserPairsSource(str(folder))
    assert len(src) == 3 and src.skipped == []
    for i, (name, rgb) in enumerate(_COLORS.items()):  # sorted path order
        assert src[i]["caption"] == f"a {name} square"
        _check_solid(src[i], rgb)
    clone = pickle.loads(pickle.dumps(src))  # grain workers receive a pickled source
    assert clone[1]["caption"] == "a green square"


def test_csv_with_relative_and_absolute_paths(tmp_path):
    _write_image(str(tmp_path / "img" / "r.jpg"), _COLORS["red"], size=(16, 16))
    _write_image(str(tmp_path / "elsewhere" / "g.png"), _COLORS["green"])
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(
        "id,image,caption\n"
        '1,img/r.jpg,"a red square, plain"\n'
        f"2,{tmp_path / 'elsewhere' / 'g.png'},a green square\n"
    )
    src = UserPairsSource(str(csv_path))
    assert len(src) == 2
    assert src[0]["caption"] == "a red square, plain"
    assert src[0]["image"].shape == (16, 16, 3)
    assert np.abs(src[0]["image"].astype(int) - [255, 0, 0]).max() < 10  # JPEG is lossy
    _check_solid(src[1], _COLORS["green"])


def test_jsonl_with_image_root(tmp_path):
    _write_image(str(tmp_path / "images" / "b.png"), _COLORS["blue"])
    _write_image(str(tmp_path / "images" / "g.png"), _COLORS["green"])
    jsonl = tmp_path / "meta" / "pairs.jsonl"
    jsonl.parent.mkdir()
    lines = [{"image": "b.png", "caption": "blue"}, {"image": "g.png", "caption": "green"}]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    src = UserPairsSource(str(jsonl), image_root=str(tmp_path / "images"))
    assert [src[i]["caption"] for i in range(len(src))] == ["blue", "green"]
    _check_solid(src[0], _COLORS["blue"])
    # Without image_root, paths resolve against the JSONL's own folder, where they are absent.
    with pytest.raises(ValueError, match="No usable image-caption pairs"):
        UserPairsSource(str(jsonl))


def test_corrupt_image_is_skipped_and_counted_by_default(folder, caplog):
    _write_garbage(str(folder / "a" / "broken.jpg"))
    (folder / "a" / "broken.txt").write_text("a broken picture")
    _write_image(str(folder / "b" / "uncaptioned.png"), (9, 9, 9))
    with caplog.at_level(logging.WARNING, logger="data.user_pairs"):
        src = UserPairsSource(str(folder))
    assert len(src) == 3
    assert all(ex["caption"] != "a broken picture" for ex in (src[i] for i in range(3)))
    reasons = dict((os.path.basename(p), r) for p, r in src.skipped)
    assert set(reasons) == {"broken.jpg", "uncaptioned.png"}
    assert reasons["broken.jpg"].startswith("unreadable image")
    assert "no caption file" in reasons["uncaptioned.png"]
    assert "Skipped 2 of 5" in caplog.text


def test_corrupt_image_raises_naming_the_file_in_strict_mode(folder):
    _write_garbage(str(folder / "b" / "broken.png"))
    (folder / "b" / "broken.txt").write_text("a broken picture")
    with pytest.raises(ValueError, match=r"broken\.png: unreadable image"):
        UserPairsSource(str(folder), strict=True)


def test_missing_file_in_csv(tmp_path):
    _write_image(str(tmp_path / "ok.png"), _COLORS["red"])
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("image,caption\nok.png,red\nmissing.png,ghost\n")
    src = UserPairsSource(str(csv_path))
    assert len(src) == 1
    assert src.skipped == [(str(tmp_path / "missing.png"), "missing image file")]
    with pytest.raises(ValueError, match=r"missing\.png: missing image file"):
        UserPairsSource(str(csv_path), strict=True)


def test_alpha_and_grayscale_become_rgb(tmp_path):
    _write_image(str(tmp_path / "t.png"), (255, 0, 0, 0), mode="RGBA")  # fully transparent
    _write_image(str(tmp_path / "g.png"), 77, mode="L")
    (tmp_path / "t.txt").write_text("transparent")
    (tmp_path / "g.txt").write_text("gray")
    src = UserPairsSource(str(tmp_path))
    _check_solid(src[0], (77, 77, 77))  # g.png sorts first
    _check_solid(src[1], (255, 255, 255))  # transparency is composited on white


def test_bad_listings_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        UserPairsSource(str(tmp_path / "nope.csv"))
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("path,text\nx.png,hello\n")
    with pytest.raises(ValueError, match="image,caption"):
        UserPairsSource(str(bad_header))
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"image": "x.png", "caption": "ok"}\n{"image": "y.png"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        UserPairsSource(str(bad_jsonl))
    other = tmp_path / "pairs.parquet"
    other.write_text("")
    with pytest.raises(ValueError, match="Unsupported"):
        UserPairsSource(str(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No usable"):
        UserPairsSource(str(empty))

"""Loading a user's own image-caption pairs from a folder, a CSV or a JSONL file."""

import errno
import json
import logging
import os
import pickle
import threading
import time

import numpy as np
import pytest
from etils import epath
from PIL import Image

from data import user_pairs
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


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Records every image decode of data.user_pairs (the calls still go through)."""
    calls = []
    original = user_pairs.decode_rgb

    def counting(data):
        calls.append(len(data))
        return original(data)

    monkeypatch.setattr(user_pairs, "decode_rgb", counting)
    return calls


def test_folder_of_images_with_caption_files(folder):
    src = UserPairsSource(str(folder))
    assert len(src) == 3 and src.skipped == []
    for i, (name, rgb) in enumerate(_COLORS.items()):  # sorted path order
        assert src[i]["caption"] == f"a {name} square"
        _check_solid(src[i], rgb)
    clone = pickle.loads(pickle.dumps(src))  # grain workers may receive a pickled source
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
    with pytest.raises(ValueError, match=r"b\.png: missing image file"):
        UserPairsSource(str(jsonl), strict=True)[0]


def test_construction_reads_only_the_listing(folder, decodes, monkeypatch):
    for i in range(20):
        _write_image(str(folder / "c" / f"{i:02d}.png"), (i, i, i))
        (folder / "c" / f"{i:02d}.txt").write_text(f"grey {i}")
    # No per-image stat calls either: caption files are found from the folder listing.
    path_cls = type(epath.Path(folder))
    checked = []
    for name in ("exists", "is_file", "stat"):
        original = getattr(path_cls, name)

        def spy(self, *args, _original=original, **kwargs):
            checked.append(str(self))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(path_cls, name, spy)
    src = UserPairsSource(str(folder))
    assert len(src) == 23 and decodes == []
    assert not [p for p in checked if p.endswith((".png", ".txt"))]
    _check_solid(src[5], (2, 2, 2))  # a/0, a/1, b/2, then c/00 ...
    assert len(decodes) == 1


def test_corrupt_image_is_replaced_and_counted_at_read_time(folder, caplog):
    _write_garbage(str(folder / "a" / "1_broken.png"))  # index 1, between red and green
    (folder / "a" / "1_broken.txt").write_text("a broken picture")
    _write_image(str(folder / "b" / "uncaptioned.png"), (9, 9, 9))
    with caplog.at_level(logging.WARNING, logger="data.user_pairs"):
        src = UserPairsSource(str(folder))
    # The listing shows the missing caption; the broken image only shows when read.
    assert len(src) == 4
    assert [os.path.basename(p) for p, _ in src.skipped] == ["uncaptioned.png"]
    assert "no caption file uncaptioned.txt" in src.skipped[0][1]
    assert "Skipped 1 of 5" in caplog.text
    bad = src[1]
    assert bad["caption"] == "a green square"  # the next readable pair in index order
    _check_solid(bad, _COLORS["green"])
    assert src[1]["caption"] == bad["caption"]  # the same index always gives the same example
    reasons = dict((os.path.basename(p), r) for p, r in src.skipped)
    assert set(reasons) == {"uncaptioned.png", "1_broken.png"}
    assert reasons["1_broken.png"].startswith("unreadable image")
    assert "1 unreadable image(s) so far" in caplog.text and "1_broken.png" in caplog.text


def test_replacement_wraps_around_and_strict_mode_raises(folder):
    _write_garbage(str(folder / "b" / "3_broken.png"))  # the last index
    (folder / "b" / "3_broken.txt").write_text("a broken picture")
    src = UserPairsSource(str(folder))
    assert src[3]["caption"] == "a red square"  # wraps to index 0
    assert src[-1]["caption"] == "a red square"
    with pytest.raises(IndexError):
        src[4]
    strict = UserPairsSource(str(folder), strict=True)
    assert strict[0]["caption"] == "a red square"
    with pytest.raises(ValueError, match=r"3_broken\.png: unreadable image"):
        strict[3]


def test_bad_images_warn_rate_limited_and_count_once_across_threads(tmp_path, caplog):
    rows = ["image,caption"]
    for i in range(12):
        if i % 2:
            _write_garbage(str(tmp_path / f"{i}.png"))  # 6 bad ones (odd indices)
        else:
            _write_image(str(tmp_path / f"{i}.png"), (i, 0, 0))
        rows.append(f"{i}.png,picture {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    src = UserPairsSource(str(tmp_path / "pairs.csv"))
    out = {}

    def read(thread):
        for i in range(len(src)):
            out[thread, i] = src[(i + 5 * thread) % len(src)]["caption"]

    with caplog.at_level(logging.WARNING, logger="data.user_pairs"):
        threads = [threading.Thread(target=read, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(out) == 48
    assert sorted(os.path.basename(p) for p, _ in src.skipped) == sorted(
        f"{i}.png" for i in range(1, 12, 2)
    )
    for (thread, i), caption in out.items():  # odd index k -> pair k + 1 (11 -> 0)
        k = (i + 5 * thread) % 12
        assert caption == f"picture {(k + k % 2) % 12}"
    warnings = [r for r in caplog.records if "unreadable image(s) so far" in r.getMessage()]
    assert [r.getMessage().split()[0] for r in warnings] == ["1", "2", "4"]  # not one per file
    assert pickle.loads(pickle.dumps(src))[1]["caption"] == "picture 2"


def _failing_reads(monkeypatch, failures: dict[str, int | type]) -> list[float]:
    """Image reads of the files named in `failures` fail: the first n reads with an I/O
    error (n an int), or every read with the given OSError class. Returns the sleeps."""
    path_cls = type(epath.Path("/"))
    original = path_cls.read_bytes

    def read_bytes(self):
        name = os.path.basename(str(self))
        failure = failures.get(name, 0)
        if isinstance(failure, type):
            raise failure(errno.EACCES, "Permission denied", str(self))
        if failure:
            failures[name] -= 1
            raise OSError(errno.EIO, "Input/output error", str(self))
        return original(self)

    monkeypatch.setattr(path_cls, "read_bytes", read_bytes)
    sleeps = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    return sleeps


def test_a_read_that_fails_once_is_retried_and_changes_nothing(folder, monkeypatch):
    clean = UserPairsSource(str(folder))
    expected = [clean[i] for i in range(len(clean))]
    sleeps = _failing_reads(monkeypatch, {"1_green.png": 1})
    src = UserPairsSource(str(folder))
    got = [src[i] for i in range(len(src))]
    assert [ex["caption"] for ex in got] == [ex["caption"] for ex in expected]
    for ex, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(ex["image"], want["image"])
    assert src.skipped == [] and sleeps == [0.1]  # one retry, after the first delay
    assert src.read_with_index(1)[0] == 1


def test_a_file_that_stays_unreadable_is_swapped_after_the_retries(folder, monkeypatch):
    sleeps = _failing_reads(monkeypatch, {"1_green.png": 99})
    src = UserPairsSource(str(folder))
    index, ex = src.read_with_index(1)
    assert (index, ex["caption"]) == (2, "a blue square")  # the next readable pair
    _check_solid(ex, _COLORS["blue"])
    assert sleeps == [0.1, 0.4, 1.6]  # 4 tries
    [(path, reason)] = src.skipped
    assert path.endswith("1_green.png")
    assert reason.startswith("unreadable file after 4 tries (OSError: [Errno 5]")
    assert src.read_with_index(0)[0] == 0 and src.read_with_index(-3)[0] == 0


def test_a_permanent_read_error_is_not_retried(folder, monkeypatch):
    sleeps = _failing_reads(monkeypatch, {"0_red.png": PermissionError})
    src = UserPairsSource(str(folder))
    assert src.read_with_index(0)[0] == 1 and sleeps == []
    assert src.skipped[0][1].startswith("unreadable file (PermissionError")
    with pytest.raises(PermissionError):
        user_pairs.load_rgb(src.pairs[0][0])


def test_missing_file_in_csv(tmp_path):
    _write_image(str(tmp_path / "ok.png"), _COLORS["red"])
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("image,caption\nmissing.png,ghost\nok.png,red\n")
    src = UserPairsSource(str(csv_path))
    assert len(src) == 2 and src[0]["caption"] == "red"
    assert src.skipped == [(str(tmp_path / "missing.png"), "missing image file")]
    with pytest.raises(ValueError, match=r"missing\.png: missing image file"):
        UserPairsSource(str(csv_path), strict=True)[0]


def test_listing_problems_are_found_at_construction(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('image,caption\nok.png,fine\n,no image\nquiet.png," "\n')
    src = UserPairsSource(str(csv_path))
    assert len(src) == 1
    assert [r for _, r in src.skipped] == ["empty image path", "empty caption"]
    with pytest.raises(ValueError, match="empty image path"):
        UserPairsSource(str(csv_path), strict=True)


def test_captions_read_text_only(folder, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("captions() must not open images")

    monkeypatch.setattr(user_pairs, "decode_rgb", no_decode)
    monkeypatch.setattr(Image, "open", no_decode)
    src = UserPairsSource(str(folder))
    assert src.captions() == ["a red square", "a green square", "a blue square"]
    assert src.captions(2) == ["a red square", "a green square"]
    assert src.select(1, None).captions(5) == ["a green square", "a blue square"]
    assert src.texts("caption", 2) == src.captions(2) and src.fields == ("image", "caption")
    with pytest.raises(ValueError, match="'caption' only"):
        src.texts("answer")


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


def test_csv_and_images_on_gcs(gcs, tmp_path):
    local = tmp_path / "img"
    for name, rgb in _COLORS.items():
        _write_image(str(local / f"{name}.png"), rgb)
        (gcs / "img" / f"{name}.png").parent.mkdir(parents=True, exist_ok=True)
        (gcs / "img" / f"{name}.png").write_bytes((local / f"{name}.png").read_bytes())
        (gcs / "img" / f"{name}.txt").write_text(f"a {name} square")
    (gcs / "pairs.csv").write_text(
        "image,caption\nimg/red.png,red\nimg/missing.png,ghost\nimg/blue.png,blue\n"
    )
    src = UserPairsSource(str(gcs / "pairs.csv"))
    assert len(src) == 3 and str(src.path) == str(gcs / "pairs.csv")
    _check_solid(src[0], _COLORS["red"])
    assert src[1]["caption"] == "blue"  # the missing image, replaced
    assert src.skipped == [(str(gcs / "img" / "missing.png"), "missing image file")]
    folder = UserPairsSource(str(gcs / "img"))
    assert folder.captions() == ["a blue square", "a green square", "a red square"]
    _check_solid(folder[1], _COLORS["green"])

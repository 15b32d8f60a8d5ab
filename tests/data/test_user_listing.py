"""The train/test split of user data: a `split` column/key, else a stable hash of the path.

Listings are all these tests need: images are only opened when read, so none are written.
"""

import hashlib
import json

import pytest

from data import paths, user_listing
from data.user_pairs import UserPairsSource

_CATEGORIES = [f"category{k}" for k in range(10)]


def _sorted_csv(path, per_category: int = 40, extra: int = 0) -> None:
    """A CSV sorted by category (as exports often are), `extra` rows appended per category."""
    rows = ["image,caption"]
    for cat in _CATEGORIES:
        for j in range(per_category + extra):
            rows.append(f"{cat}/img{j:03d}.jpg,a photo of {cat} number {j}")
    path.write_text("\n".join(rows) + "\n")


def _splits(path, **kwargs) -> dict[str, str]:
    """image path -> split, from the listing."""
    return {row.image: row.split for row in user_listing.list_pairs(paths.as_path(path), **kwargs)}


def test_held_out_rows_span_categories(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    _sorted_csv(csv_path)
    test = UserPairsSource(str(csv_path), split="test", holdout=0.1)
    train = UserPairsSource(str(csv_path), split="train", holdout=0.1)
    assert len(train) + len(test) == 400 and 20 <= len(test) <= 65
    assert not {p for p, _ in train.pairs} & {p for p, _ in test.pairs}
    categories = {p.split("/")[-2] for p, _ in test.pairs}
    assert len(categories) >= 8  # a contiguous tail slice would hold out one category
    assert len(UserPairsSource(str(csv_path), split="test")) < len(test)  # default 5%


def test_adding_rows_keeps_existing_assignments(tmp_path):
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    _sorted_csv(small)
    _sorted_csv(big, extra=25)  # new rows interleaved within every category
    before, after = _splits(small, holdout=0.2), _splits(big, holdout=0.2)
    assert {p: after[p] for p in before} == before
    assert "test" in set(after[p] for p in set(after) - set(before))


def test_assignment_uses_paths_relative_to_the_listing_root(tmp_path, gcs):
    csv_path = tmp_path / "local" / "pairs.csv"
    csv_path.parent.mkdir()
    _sorted_csv(csv_path)
    # The same data moved to gs://, with absolute image paths this time.
    moved = csv_path.read_text().replace("\ncategory", f"\n{gcs}/category")
    (gcs / "pairs.csv").write_text(moved)
    local = _splits(csv_path, holdout=0.3)
    remote = _splits(gcs / "pairs.csv", holdout=0.3)
    strip = len(str(csv_path.parent)), len(str(gcs))
    assert {p[strip[0] :]: s for p, s in local.items()} == {
        p[strip[1] :]: s for p, s in remote.items()
    }
    # A folder's rows hash their path relative to the folder, so they agree with a CSV of it.
    for cat in _CATEGORIES[:3]:
        for j in range(10):
            (gcs / "tree" / cat).mkdir(parents=True, exist_ok=True)
            (gcs / "tree" / cat / f"img{j:03d}.jpg").write_bytes(b"")
            (gcs / "tree" / cat / f"img{j:03d}.txt").write_text("text")
    tree = _splits(gcs / "tree", holdout=0.3)
    assert len(tree) == 30
    for image, split in tree.items():
        assert local[str(csv_path.parent) + image[len(str(gcs / "tree")) :]] == split


def test_split_column_and_key_are_honoured(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(
        "image,caption,split\n"
        "a.jpg,a,test\n"
        "b.jpg,b,Validation\n"
        "c.jpg,c,val\n"
        "d.jpg,d,train\n"
        "e.jpg,e,\n"  # empty: assigned by hash (holdout=0: train)
        "f.jpg,f, TEST \n"
    )
    test = UserPairsSource(str(csv_path), split="test", holdout=0.0)
    assert test.captions() == ["a", "b", "c", "f"]
    assert UserPairsSource(str(csv_path), split="train", holdout=1.0).captions() == ["d"]
    assert UserPairsSource(str(csv_path), split="train", holdout=0.0).captions() == ["d", "e"]
    jsonl = tmp_path / "pairs.jsonl"
    records = [
        {"image": "a.jpg", "caption": "a", "split": "train"},
        {"image": "b.jpg", "caption": "b"},
        {"image": "c.jpg", "caption": "c", "split": "val"},
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in records))
    assert UserPairsSource(str(jsonl), split="test", holdout=1.0).captions() == ["b", "c"]
    assert UserPairsSource(str(jsonl), split="train", holdout=1.0).captions() == ["a"]
    assert len(UserPairsSource(str(jsonl))) == 3  # split=None: every row


def test_bad_split_value_names_the_row(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("image,caption,split\na.jpg,a,train\nb.jpg,b,holdout\n")
    with pytest.raises(ValueError, match=r"pairs\.csv:3: unknown split 'holdout'"):
        UserPairsSource(str(csv_path))
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"image": "a.jpg", "caption": "a", "split": "dev"}\n')
    with pytest.raises(ValueError, match=r"pairs\.jsonl:1: unknown split 'dev'"):
        UserPairsSource(str(jsonl))
    with pytest.raises(ValueError, match="split must be one of"):
        UserPairsSource(str(csv_path), split="validation")
    with pytest.raises(ValueError, match="holdout"):
        UserPairsSource(str(csv_path), holdout=1.5)


def test_empty_split_is_an_error(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    _sorted_csv(csv_path, per_category=2)
    with pytest.raises(ValueError, match=r"No usable image-caption pairs .* split 'test'"):
        UserPairsSource(str(csv_path), split="test", holdout=0.0)


def test_assign_split_is_a_stable_hash():
    keys = [f"dir/{i}.jpg" for i in range(2000)]
    held = [k for k in keys if user_listing.assign_split(k, 0.05) == "test"]
    assert 60 <= len(held) <= 140  # ~5% of 2000
    # The documented hash, computed here with hashlib: the first 8 bytes of the key's SHA-1
    # as a fraction of 2**64, held out below `holdout` (no per-process salt, as str hash has).
    digest = {k: int.from_bytes(hashlib.sha1(k.encode()).digest()[:8], "big") for k in keys}
    assert held == [k for k in keys if digest[k] / 2**64 < 0.05]
    # Raising holdout only moves rows into test, never out of it.
    assert set(held) <= {k for k in keys if user_listing.assign_split(k, 0.2) == "test"}
    assert {user_listing.assign_split(k, 0.0) for k in keys} == {"train"}
    assert {user_listing.assign_split(k, 1.0) for k in keys} == {"test"}

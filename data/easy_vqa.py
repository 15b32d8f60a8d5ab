"""The real easy-VQA dataset (PyPI `easy-vqa==1.0`) as a random-access VQA source.

The wheel ships its data as plain files inside the package (nothing is downloaded):

    easy_vqa/data/answers.txt                 the 13 answers, one per line
    easy_vqa/data/{train,test}/questions.json [[question, answer, image_id], ...]
    easy_vqa/data/{train,test}/images/<image_id>.png   64x64 RGB

train: 38,575 questions about 4,000 images; test: 9,673 questions about 1,000 images. The
questions ask a shape's colour or a colour's shape, or whether a shape / colour is (not)
present. Examples, in questions.json order (grouped by image):

    {"image": uint8 [64, 64, 3], "question": str, "answer": str, "image_id": int}

Baselines on test (computed from the package's files by tests/data/test_easy_vqa.py): the
majority answer "yes" (also train's) is right on 3,611 of 9,673 = 37.3%; answering each
question text by its most frequent train answer (a blind language prior; yes/no questions
such as "is there not a ...?" lean one way) scores 6,481 = 67.0%.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os

from etils import epath

from data import paths, preprocess

NAME = "easy_vqa"
SPLITS = ("train", "test")
INSTALL_HINT = "pip install easy-vqa==1.0"
MAJORITY_ANSWER = "yes"  # of train (14,229 of 38,575) and of test (3,611 of 9,673)


def package_data_dir() -> epath.Path:
    """The installed package's data folder (found without importing the package).

    Raises FileNotFoundError when `easy_vqa` is not installed.
    """
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the easy_vqa package is not installed ({INSTALL_HINT})")
    return epath.Path(os.path.dirname(spec.origin)) / "data"


def read_answers(root: paths.PathLike) -> list[str]:
    """The answer vocabulary, in answers.txt order."""
    lines = (paths.as_path(root) / "answers.txt").read_text().splitlines()
    return [a.strip() for a in lines if a.strip()]


class EasyVqaSource:
    """Random-access easy-VQA questions of one split (module doc); safe from several threads.

    Attributes:
      root: the data folder (answers.txt, train/, test/).
      questions: [(question, answer, image_id)] of the selected examples.
    """

    fields = ("image", "question", "answer", "image_id")

    def __init__(self, root: paths.PathLike | None = None, split: str = "train"):
        """Reads `split`'s questions.json under `root` (default: the installed package's).

        Raises:
          FileNotFoundError: no package / no questions.json.
          ValueError: an unknown split or a malformed questions.json.
        """
        if split not in SPLITS:
            raise ValueError(f"{NAME} has the splits {list(SPLITS)}, got {split!r}")
        self.root = paths.as_path(root) if root is not None else package_data_dir()
        self.split = split
        path = self.root / split / "questions.json"
        if not path.exists():
            raise FileNotFoundError(f"no {path}")
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != 3 for r in rows):
            raise ValueError(f"{path}: expected a list of [question, answer, image_id]")
        self.questions = [(str(q), str(a), int(i)) for q, a, i in rows]

    def select(self, start: int | None, stop: int | None) -> EasyVqaSource:
        """A source over questions [start:stop] of this one (Python slice semantics)."""
        out = copy.copy(self)
        out.questions = self.questions[start:stop]
        return out

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict:
        question, answer, image_id = self.questions[index]
        data = (self.root / self.split / "images" / f"{image_id}.png").read_bytes()
        return {
            "image": preprocess.decode(data),
            "question": question,
            "answer": answer,
            "image_id": image_id,
        }

    def texts(self, field: str, limit: int | None = None) -> list[str]:
        """The first `limit` questions or answers (all if None) in index order; no image
        is read."""
        column = {"question": 0, "answer": 1}.get(field)
        if column is None:
            raise ValueError(f"{NAME} has the text fields ['question', 'answer'], not {field!r}")
        return [row[column] for row in self.questions[:limit]]

    def captions(self, limit: int | None = None) -> list[str]:
        raise ValueError(
            f"{NAME} has no captions; read texts('question') / texts('answer') instead"
        )

    def __repr__(self) -> str:
        return f"EasyVqaSource({str(self.root)!r}, {self.split!r}, n={len(self)})"

"""Pure host-side metrics for embedding evaluators (numpy, float64).

Every function here L2-normalises its embedding inputs itself (a zero vector stays zero), so
callers may pass raw or already-normalised embeddings; similarity is cosine similarity.

Ranking rule, shared by all metrics (deterministic, pessimistic on ties): the rank of a correct
item is the number of *wrong* candidates whose score is >= the correct score minus `tie_tol`, and
a query is a hit at k iff that rank is < k. A wrong candidate that ties the correct one is thus
ranked ahead of it, so degenerate (e.g. constant) embeddings score 0 at every k below the number
of candidates instead of 100%. `tie_tol` (default 1e-6, ~8 float32 ulps at 1.0) exists because
embeddings arrive as float32 and BLAS may round mathematically identical dot products differently.

Chance levels are the expected metric under a uniformly random ranking of the candidates.
"""

from collections.abc import Sequence

import numpy as np

DEFAULT_TIE_TOL = 1e-6
# Query rows scored per matmul: bounds host memory at chunk x candidates float64 scores.
_CHUNK = 1024


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Returns `x / ||x||` along `axis` in float64; rows with norm < eps become zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    return ks


def _check_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, D], got shape {x.shape}")
    return x


def class_embeddings(text_emb: np.ndarray, num_templates: int | None = None) -> np.ndarray:
    """Zero-shot class embeddings from prompt-template text embeddings.

    Args:
      text_emb: [C, T, D], or [C*T, D] in class-major order (row c*T + t is template t of class c;
        then `num_templates` = T is required).
      num_templates: T, only for the 2-D layout.

    Returns:
      [C, D] float64: each template embedding L2-normalised, averaged over T, re-normalised.
    """
    text_emb = np.asarray(text_emb)
    if text_emb.ndim == 2:
        if num_templates is None or num_templates < 1:
            raise ValueError("2-D text_emb [C*T, D] needs num_templates=T >= 1")
        if text_emb.shape[0] % num_templates:
            raise ValueError(
                f"{text_emb.shape[0]} text embeddings are not a multiple of {num_templates=}"
            )
        text_emb = text_emb.reshape(-1, num_templates, text_emb.shape[-1])
    elif text_emb.ndim != 3:
        raise ValueError(f"text_emb must be [C, T, D] or [C*T, D], got shape {text_emb.shape}")
    elif num_templates is not None and num_templates != text_emb.shape[1]:
        raise ValueError(f"{num_templates=} disagrees with text_emb shape {text_emb.shape}")
    return l2_normalize(l2_normalize(text_emb).mean(axis=1))


def zero_shot_accuracy(
    image_emb: np.ndarray,
    class_emb: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 5),
    *,
    tie_tol: float = DEFAULT_TIE_TOL,
) -> dict[str, float]:
    """Top-k zero-shot accuracy of images against class embeddings.

    Args:
      image_emb: [N, D] image embeddings.
      class_emb: [C, D] class embeddings (e.g. from `class_embeddings`).
      labels: [N] int class index of each image, in [0, C).
      ks: the k of each top-k; k > C is skipped (it would be trivially 1).
      tie_tol: see the module docstring.

    Returns:
      {"top{k}": fraction of images whose label ranks < k, "chance_top{k}": k / C} for k <= C.
    """
    ks = _check_ks(ks)
    img = l2_normalize(_check_2d("image_emb", image_emb))
    cls = l2_normalize(_check_2d("class_emb", class_emb))
    labels = np.asarray(labels)
    n, c = img.shape[0], cls.shape[0]
    if img.shape[1] != cls.shape[1]:
        raise ValueError(f"embedding widths differ: image {img.shape}, class {cls.shape}")
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be int [{n}], got {labels.dtype} {labels.shape}")
    if n == 0:
        raise ValueError("zero_shot_accuracy needs at least one image")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")

    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        rows = np.arange(stop - start)
        scores = img[start:stop] @ cls.T  # [n_chunk, C]
        correct = scores[rows, labels[start:stop]]
        ahead = scores >= correct[:, None] - tie_tol
        ahead[rows, labels[start:stop]] = False  # the label is not its own competitor
        ranks[start:stop] = ahead.sum(axis=1)

    kept = [k for k in ks if k <= c]
    out = {f"top{k}": float(np.mean(ranks < k)) for k in kept}
    out.update({f"chance_top{k}": k / c for k in kept})
    return out


def retrieval_recall(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    tie_tol: float = DEFAULT_TIE_TOL,
) -> dict[str, float]:
    """Image->text and text->image Recall@k, each caption describing one image.

    Args:
      image_emb: [N, D] image embeddings.
      text_emb: [M, D] caption embeddings.
      text_to_image: [M] int, the image (in [0, N)) each caption describes; an image may have
        several captions or none.
      ks: the k of each Recall@k; i2t skips k > M and t2i skips k > N (trivially 1).
      tie_tol: see the module docstring.

    Returns:
      "i2t_r@{k}": over images with at least one caption, the fraction for which ANY of its
        captions is in the top k of the M captions (rank = other images' captions scoring
        >= its best one).
      "t2i_r@{k}": over captions, the fraction whose image is in the top k of the N images.
      "chance_i2t_r@{k}": mean over those images of 1 - C(M-c, k) / C(M, k), c = its number
        of captions (c/M at k=1); "chance_t2i_r@{k}": k/N.
    """
    t2i = np.asarray(text_to_image)
    n = len(image_emb)
    if t2i.ndim != 1 or not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(f"text_to_image must be int [M], got {t2i.dtype} {t2i.shape}")
    if len(t2i) and (t2i.min() < 0 or t2i.max() >= n):
        raise ValueError(f"text_to_image must lie in [0, {n}), got [{t2i.min()}, {t2i.max()}]")
    # Every caption is its own image->text candidate.
    return _recall(image_emb, text_emb, np.arange(n), t2i, np.arange(len(t2i)), ks, tie_tol)


def grouped_retrieval_recall(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    image_groups: np.ndarray,
    text_groups: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    tie_tol: float = DEFAULT_TIE_TOL,
) -> dict[str, float]:
    """Recall@k where an (image, text) pair matches iff their group ids are equal, and
    image->text ranks the G distinct text groups, not the M text rows.

    One group per distinct caption string makes identical captions of different images
    one caption (synthetic data repeats captions, and a model cannot rank equal texts
    apart): ranking rows would let the copies of one wrong caption fill the top k. A group
    scores the best of its rows. Rows of one caption embed equally up to float rounding
    (they may sit in different batches), and the best is the same whichever row comes
    first; for groups of different texts it is "any of them in the top k".

    Args:
      image_emb: [N, D]; text_emb: [M, D].
      image_groups: [N] and text_groups: [M] group ids (any comparable ids).
      ks, tie_tol: as in `retrieval_recall`; i2t skips k > G, t2i k > N.

    Returns:
      "i2t_r@{k}": over images whose group has a text, the fraction whose group ranks in
        the top k of the G groups (rank = other groups scoring >= it).
      "t2i_r@{k}": over texts whose group has an image, the fraction for which ANY image of
        the group is in the top k of the N images (rank = other groups' images scoring >=
        the best match).
      "chance_i2t_r@{k}": k/G (one group of G in the top k at random); "chance_t2i_r@{k}":
        mean over those texts of 1 - C(N-c, k) / C(N, k), c = its number of matching images.
    """
    tg = np.asarray(text_groups)
    return _recall(image_emb, text_emb, image_groups, tg, tg, ks, tie_tol)


def _recall(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    image_groups: np.ndarray,
    text_groups: np.ndarray,
    text_candidates: np.ndarray,
    ks: Sequence[int],
    tie_tol: float,
) -> dict[str, float]:
    """Recall@k both ways; `text_candidates` [M] says which text rows image->text ranks as
    one candidate (scored by their best row; all rows of a candidate share a group)."""
    ks = _check_ks(ks)
    img = l2_normalize(_check_2d("image_emb", image_emb))
    txt = l2_normalize(_check_2d("text_emb", text_emb))
    ig, tg = np.asarray(image_groups), np.asarray(text_groups)
    n, m = img.shape[0], txt.shape[0]
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"embedding widths differ: image {img.shape}, text {txt.shape}")
    if ig.shape != (n,) or tg.shape != (m,):
        raise ValueError(f"groups must be [N]={n} and [M]={m}, got {ig.shape} and {tg.shape}")
    if n == 0 or m == 0:
        raise ValueError(f"retrieval_recall needs images and texts, got N={n}, M={m}")
    _, first, candidate = np.unique(text_candidates, return_index=True, return_inverse=True)
    num_candidates = len(first)
    # Text columns sorted by candidate: each candidate's rows are one run for reduceat.
    order = np.argsort(candidate, kind="stable")
    starts = np.searchsorted(candidate[order], np.arange(num_candidates))
    candidate_groups = tg[first]

    # Pass 1: each text's best matching-image score (its t2i target).
    t2i_best = np.full(m, -np.inf)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        scores = img[start:stop] @ txt.T  # [n_chunk, M]
        match = ig[start:stop, None] == tg[None, :]
        t2i_best = np.maximum(t2i_best, np.where(match, scores, -np.inf).max(axis=0))
    # Pass 2: ranks = non-matching candidates scoring at least the best match (ties lose).
    i2t_rank = np.zeros(n, dtype=np.int64)
    t2i_rank = np.zeros(m, dtype=np.int64)
    candidates_per_image = np.zeros(n, dtype=np.int64)
    images_per_text = np.zeros(m, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        scores = img[start:stop] @ txt.T
        match = ig[start:stop, None] == tg[None, :]
        t2i_rank += ((scores >= t2i_best[None, :] - tie_tol) & ~match).sum(axis=0)
        images_per_text += match.sum(axis=0)
        by_candidate = np.maximum.reduceat(scores[:, order], starts, axis=1)  # [n_chunk, G]
        hit = ig[start:stop, None] == candidate_groups[None, :]
        best = np.where(hit, by_candidate, -np.inf).max(axis=1)
        i2t_rank[start:stop] = ((by_candidate >= best[:, None] - tie_tol) & ~hit).sum(axis=1)
        candidates_per_image[start:stop] = hit.sum(axis=1)

    out: dict[str, float] = {}
    has_text, has_image = candidates_per_image > 0, images_per_text > 0
    i2t_ks = [k for k in ks if k <= num_candidates]
    t2i_ks = [k for k in ks if k <= n]
    for k in i2t_ks:
        out[f"i2t_r@{k}"] = float(np.mean(i2t_rank[has_text] < k))
    for k in t2i_ks:
        out[f"t2i_r@{k}"] = float(np.mean(t2i_rank[has_image] < k))
    for k in i2t_ks:
        out[f"chance_i2t_r@{k}"] = _chance_any_in_top_k(
            candidates_per_image[has_text], num_candidates, k
        )
    for k in t2i_ks:
        out[f"chance_t2i_r@{k}"] = _chance_any_in_top_k(images_per_text[has_image], n, k)
    return out


def _chance_any_in_top_k(c: np.ndarray, total: int, k: int) -> float:
    """Mean over queries of P(at least one of c matches among k random of `total`)."""
    miss = np.ones(len(c), dtype=np.float64)
    for j in range(k):
        miss *= np.maximum(total - c - j, 0.0) / (total - j)
    return float(np.mean(1.0 - miss))


def hard_negative_accuracy(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    negative_emb: np.ndarray,
    *,
    tie_tol: float = DEFAULT_TIE_TOL,
) -> dict[str, float]:
    """How often each image prefers its true caption to its hard-negative caption.

    Args:
      image_emb, caption_emb, negative_emb: [N, D]; row i of each belongs to example i.

    Returns:
      {"accuracy": fraction with cos(image, caption) > cos(image, negative) + tie_tol (a tie
      counts as wrong, as in the ranking rule), "chance_accuracy": 0.5}.
    """
    img = l2_normalize(_check_2d("image_emb", image_emb))
    pos = l2_normalize(_check_2d("caption_emb", caption_emb))
    neg = l2_normalize(_check_2d("negative_emb", negative_emb))
    if not img.shape == pos.shape == neg.shape or img.shape[0] == 0:
        raise ValueError(
            f"need equal non-empty [N, D] shapes, got {img.shape}, {pos.shape}, {neg.shape}"
        )
    margin = np.sum(img * pos, axis=1) - np.sum(img * neg, axis=1)
    return {"accuracy": float(np.mean(margin > tie_tol)), "chance_accuracy": 0.5}

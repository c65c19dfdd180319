"""Video-text retrieval recall at K, both ways, from a similarity matrix.

The caption selector is a video-text retrieval model, and a retrieval model is judged by
retrieval on held-out pairs: for each text, is its video among the K most similar videos
(text-to-video, t2v), and for each video, is one of its texts among the K most similar texts
(video-to-text, v2t). The training loop computes the similarity matrix of its eval set with the
model; this turns any such matrix into the numbers papers report: R@1, R@5, R@10 in percent,
and the median rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at_k(similarity: np.ndarray, text_video: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K in percent ("t2v_R@1", "v2t_R@5", ...) and the median 1-based ranks ("t2v_median_rank", "v2t_median_rank").

    `similarity` is [videos, texts]; text j describes video `text_video[j]`, and a video may have
    several texts (v2t counts its best-ranked one; its other texts are no competitors). A video
    without texts is only a competitor in t2v. Ties are broken pessimistically: a competitor as
    similar as the truth ranks before it, so a model that scores everything alike earns nothing.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or 0 in similarity.shape:
        raise ValueError(f"the similarity matrix must be [videos, texts], neither empty; got shape {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise ValueError("the similarity matrix has NaN or infinite entries")
    num_videos, num_texts = similarity.shape
    videos = np.asarray(text_video)
    if videos.shape != (num_texts,):
        raise ValueError(f"text_video has shape {videos.shape}, but there are {num_texts} texts (columns)")
    if videos.dtype.kind not in "iu" or videos.min() < 0 or videos.max() >= num_videos:
        raise ValueError(f"text_video must hold video indices (whole numbers in [0, {num_videos}))")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be ranks >= 1, got {list(ks)}")
    own = videos[None, :] == np.arange(num_videos)[:, None]  # [videos, texts]: text j describes video i
    t2v = (similarity >= similarity[videos, np.arange(num_texts)]).sum(axis=0)  # the truth counts itself: 1-based
    described = own.any(axis=1)
    best = np.where(own, similarity, -np.inf).max(axis=1, keepdims=True)[described]
    v2t = 1 + ((similarity[described] >= best) & ~own[described]).sum(axis=1)
    numbers: dict[str, float] = {}
    for direction, ranks in (("t2v", t2v), ("v2t", v2t)):
        numbers |= {f"{direction}_R@{k}": 100.0 * float(np.mean(ranks <= k)) for k in ks}
        numbers[f"{direction}_median_rank"] = float(np.median(ranks))
    return numbers

"""Semantic stitching: merge shots that show the same scene into events, then filter events.

Shot detection over-splits: a change of camera angle is a cut, though the scene goes on. As in
Panda-70M, every shot is represented by two frame embeddings (near its start and its end) and:
  1. a shot whose own two frames are far apart is dropped (it holds a transition or a fade);
  2. a shot that directly follows the running event joins it when its first frame is close to
     the event's last frame, otherwise it starts a new event;
  3. events that are too short or static (first and last frame nearly equal) are dropped,
     optionally also events that repeat a kept one; long events are cut to the maximum
     length and may be trimmed at both ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from panda_jax.video.shots import Shot


@dataclass(frozen=True)
class StitchParams:
    """Thresholds are Euclidean distances between unit-norm embeddings; lengths in seconds."""

    transition: float
    merge: float
    static: float
    redundant: float | None  # None: no redundancy filter
    min_seconds: float
    max_seconds: float
    trim_fraction: float


@dataclass(frozen=True)
class Event:
    """A clip made of `shot_count` consecutive shots, [start_frame, end_frame)."""

    start_frame: int
    end_frame: int
    shot_count: int


def sample_frames(shot: Shot, positions: Sequence[float] = (0.05, 0.95)) -> tuple[int, ...]:
    """Frame indices at the given fractions between a shot's first and last frame.

    The frames are taken during shot detection's decoding pass (panda_jax.video.scan).
    """
    first, last = shot[0], shot[1] - 1
    return tuple(int(first + fraction * (last - first)) for fraction in positions)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def stitch(shots: Sequence[Shot], embeddings: np.ndarray, fps: float, params: StitchParams) -> list[Event]:
    """Merges shots into events and filters them; `embeddings` is [n_shots, 2, d]."""
    if len(shots) != len(embeddings):
        raise ValueError(f"{len(shots)} shots but {len(embeddings)} embedding pairs")

    # 1 and 2: drop transitions, merge contiguous similar shots. An event is a list of shot indices.
    events: list[list[int]] = []
    for i, (start, end) in enumerate(shots):
        if _distance(embeddings[i, 0], embeddings[i, 1]) > params.transition:
            continue
        if events:
            previous = events[-1][-1]
            contiguous = shots[previous][1] == start
            if contiguous and _distance(embeddings[previous, 1], embeddings[i, 0]) <= params.merge:
                events[-1].append(i)
                continue
        events.append([i])

    # 3: filter, cut to the maximum length, trim.
    kept: list[Event] = []
    kept_means: list[np.ndarray] = []
    for members in events:
        start, end = shots[members[0]][0], shots[members[-1]][1]
        if end - start < params.min_seconds * fps:
            continue
        if _distance(embeddings[members[0], 0], embeddings[members[-1], 1]) < params.static:
            continue
        mean = embeddings[members].reshape(-1, embeddings.shape[-1]).mean(axis=0)
        if params.redundant is not None and any(_distance(mean, m) < params.redundant for m in kept_means):
            continue
        end = start + min(int(params.max_seconds * fps), end - start)
        trim = int(params.trim_fraction * (end - start))
        kept.append(Event(start + trim, end - trim, len(members)))
        kept_means.append(mean)
    return kept

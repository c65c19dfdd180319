"""How good a split is: boundary F1 for shots and events, clip length, Max Running LPIPS.

Panda-70M judges its splitting by two numbers that pull against each other: clips should be
long (mean clip length) yet never span a cut or a change of scene (Max Running LPIPS: the
largest perceptual jump between frames one second apart inside a clip, averaged over clips).
On the synthetic corpus, whose shots and events are known, boundary precision/recall/F1
measure the shot detector (against `gt_shots`) and stitching (against `gt_events`) directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax.numpy as jnp
import numpy as np

from panda_jax.models import lpips
from panda_jax.video import io

# Boundaries come as cut frames, [start, end) segments (shots), or records with "start_frame"
# (gt_events, clips).
Segments = Sequence[int] | Sequence[Sequence[int]] | Sequence[Mapping[str, Any]]


def boundaries(segments: Segments) -> list[int]:
    """Sorted, distinct boundary frames of cut frames, a shot list or event/clip records.

    A segment list's boundaries are the starts of all its segments but the earliest; for
    clips with gaps between them, where each later clip starts. Cut frames count as they are.
    """
    if len(segments) == 0:
        return []
    first = segments[0]
    if isinstance(first, Mapping):
        starts = sorted(int(s["start_frame"]) for s in segments)[1:]
    elif np.ndim(first) == 1:
        starts = sorted(int(s[0]) for s in segments)[1:]
    elif np.ndim(first) == 0:
        starts = [int(c) for c in segments]
    else:
        raise ValueError(f"expected cut frames, [start, end) segments or records, got items like {first!r}")
    return sorted(set(starts))


class BoundaryScores(NamedTuple):
    """How well predicted boundaries match the true ones, each in [0, 1]."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class BoundaryCounts:
    """Matched, predicted and true boundary counts; add them up to score a whole corpus.

    Conventions for empty sides: with nothing predicted precision is 1 (no false alarm),
    with nothing true recall is 1 (nothing missed); with neither, everything is 1.
    """

    matched: int = 0
    predicted: int = 0
    true: int = 0

    def __add__(self, other: BoundaryCounts) -> BoundaryCounts:
        return BoundaryCounts(self.matched + other.matched, self.predicted + other.predicted, self.true + other.true)

    def scores(self) -> BoundaryScores:
        precision = self.matched / self.predicted if self.predicted else 1.0
        recall = self.matched / self.true if self.true else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return BoundaryScores(precision, recall, f1)


def match_boundaries(predicted: Segments, truth: Segments, tolerance: int = 2) -> BoundaryCounts:
    """Matches predicted to true boundaries one-to-one, within `tolerance` frames (inclusive).

    The matching has the most pairs possible: one sweep in time order pairs every true
    boundary with the earliest unmatched prediction still within reach. Because every
    boundary's reachable partners form a window that moves forward with it, this greedy sweep
    is a maximum bipartite matching, which pairing by smallest distance first is not (true
    10, 12 and predicted 11, 13 with tolerance 1: nearest-first may pair 12-11 and leave two).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 frames, got {tolerance}")
    pred, true = boundaries(predicted), boundaries(truth)
    matched = 0
    next_pred = 0
    for t in true:
        while next_pred < len(pred) and pred[next_pred] < t - tolerance:
            next_pred += 1  # too early for this and every later true boundary
        if next_pred < len(pred) and pred[next_pred] <= t + tolerance:
            matched += 1
            next_pred += 1
    return BoundaryCounts(matched, len(pred), len(true))


def boundary_scores(predicted: Segments, truth: Segments, tolerance: int = 2) -> BoundaryScores:
    """Precision, recall and F1 of predicted boundaries (see `match_boundaries`, `boundaries`)."""
    return match_boundaries(predicted, truth, tolerance).scores()


Clip = tuple[float, float] | Mapping[str, Any]


def _clip_seconds(clip: Clip, fps: float | None) -> tuple[float, float]:
    """(start, end) in seconds of a `clips` record (its start/end) or a pair in the given unit."""
    if isinstance(clip, Mapping):
        return float(clip["start"]), float(clip["end"])
    start, end = clip
    return (start / fps, end / fps) if fps else (float(start), float(end))


def mean_clip_length(clips: Sequence[Clip], fps: float | None = None) -> float:
    """Mean clip duration in seconds; 0.0 for no clips.

    Clips are `clips` records or (start, end) pairs: seconds, or frames when `fps` is given.
    """
    if not clips:
        return 0.0
    return float(np.mean([end - start for start, end in (_clip_seconds(c, fps) for c in clips)]))


@dataclass(frozen=True)
class RunningLpips:
    """Max Running LPIPS of every clip and their mean.

    A clip that yields fewer than two sampled frames (shorter than 1 / fps) has no score:
    None in `scores`, left out of `mean` rather than counted as 0, and counted in `unscored`.
    `mean` is None when no clip has a score.
    """

    scores: list[float | None]
    mean: float | None

    @property
    def unscored(self) -> int:
        return sum(score is None for score in self.scores)


def max_running_lpips(
    path: str | os.PathLike,
    clips: Sequence[Clip],
    lpips_model: lpips.LPIPS,
    fps: float = 1.0,
    size: io.Size = (224, 224),
    unit: Literal["seconds", "frames"] = "seconds",
    batch: int = 16,
) -> RunningLpips:
    """Panda-70M's split-quality measure for the clips of one video.

    Each clip is sampled at `fps` (one frame per second) from its start, the frames are
    resized to `size` (224×224 without crop by default, as stitching does; the paper does not
    say), and the clip scores the largest LPIPS between consecutive samples. Frames stream
    from the decoder `batch` at a time, so memory does not grow with clip length.

    Args:
      clips: `clips` records (start/end seconds) or (start, end) pairs in `unit`.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    video_fps = io.probe(path).fps if unit == "frames" else None
    scores = []
    for clip in clips:
        start, end = _clip_seconds(clip, video_fps)
        scores.append(_clip_score(path, start, end, lpips_model, fps, size, batch))
    scored = [s for s in scores if s is not None]
    return RunningLpips(scores, float(np.mean(scored)) if scored else None)


def _clip_score(
    path: str | os.PathLike, start: float, end: float, model: lpips.LPIPS, fps: float, size: io.Size, batch: int
) -> float | None:
    """The largest LPIPS between consecutive frames sampled at `fps` in [start, end)."""
    best = None
    chunk: list[np.ndarray] = []

    def flush() -> None:
        nonlocal best
        pairs = len(chunk) - 1
        # Padding to a power of two of pairs (at most `batch`) bounds the compiled shapes per
        # frame size to a handful, without running a full batch for every short clip.
        padded = min(batch, 1 << (pairs - 1).bit_length()) + 1
        frames = np.stack(chunk + [chunk[-1]] * (padded - len(chunk)))
        value = float(jnp.max(lpips.consecutive_distances(model, lpips.from_uint8(frames))[:pairs]))
        best = value if best is None else max(best, value)

    for frame in io.iter_frames(path, size=size, fps=fps, start=start, end=end):
        chunk.append(frame.image)
        if len(chunk) == batch + 1:
            flush()
            chunk = chunk[-1:]  # the last frame pairs with the first of the next chunk
    if len(chunk) > 1:
        flush()
    return best


@dataclass(frozen=True)
class SplitReport:
    """Split quality over a corpus: boundary scores summed over videos (micro-averaged)."""

    shots: BoundaryScores
    events: BoundaryScores
    mean_clip_seconds: float
    max_running_lpips: float | None  # None when not computed (no LPIPS model) or no clip scored
    num_videos: int
    num_clips: int

    def summary(self) -> str:
        lpips_text = "n/a" if self.max_running_lpips is None else f"{self.max_running_lpips:.3f}"
        return (
            f"{self.num_videos} videos, {self.num_clips} clips: shot F1 {self.shots.f1:.3f} "
            f"(P {self.shots.precision:.3f}, R {self.shots.recall:.3f}), event F1 {self.events.f1:.3f} "
            f"(P {self.events.precision:.3f}, R {self.events.recall:.3f}), mean clip {self.mean_clip_seconds:.1f} s, "
            f"Max Running LPIPS {lpips_text}"
        )


def split_report(
    videos: Sequence[Mapping[str, Any]],
    shots: Sequence[Mapping[str, Any]],
    clips: Sequence[Mapping[str, Any]],
    *,
    shot_tolerance: int = 2,
    event_tolerance: int = 12,
    lpips_model: lpips.LPIPS | None = None,
    root: str | os.PathLike | None = None,
) -> SplitReport:
    """Scores a split's `shots` and `clips` records against the synthetic corpus' ground truth.

    Predicted shots are matched with `gt_shots`, clip starts with `gt_events` (tolerances in
    frames; 12 frames is half a second at the corpus' 24 fps, about half the longest fade or
    dissolve, whose frames stitching may drop); use a preset that does not trim clips, or
    every trimmed clip start is off by its trim. A video without a shots record counts as all
    its boundaries missed. Max Running LPIPS is computed over all clips when `lpips_model` is
    given; relative video paths are resolved against `root`.
    """
    shots_by_video = {record["video_id"]: record["shots"] for record in shots}
    clips_by_video: dict[str, list[Mapping[str, Any]]] = {}
    for clip in clips:
        clips_by_video.setdefault(clip["video_id"], []).append(clip)
    shot_counts = event_counts = BoundaryCounts()
    lpips_scores: list[float | None] = []
    for video in videos:
        video_id = video["video_id"]
        video_clips = clips_by_video.get(video_id, [])
        shot_counts += match_boundaries(shots_by_video.get(video_id, []), video["gt_shots"], shot_tolerance)
        event_counts += match_boundaries(video_clips, video["gt_events"], event_tolerance)
        if lpips_model is not None and video_clips:
            path = Path(root or ".") / video["path"]
            lpips_scores += max_running_lpips(path, video_clips, lpips_model).scores
    scored = [s for s in lpips_scores if s is not None]
    all_clips = [c for video in videos for c in clips_by_video.get(video["video_id"], [])]
    return SplitReport(
        shots=shot_counts.scores(),
        events=event_counts.scores(),
        mean_clip_seconds=mean_clip_length(all_clips),
        max_running_lpips=float(np.mean(scored)) if scored else None,
        num_videos=len(videos),
        num_clips=len(all_clips),
    )

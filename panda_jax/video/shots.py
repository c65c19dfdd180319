"""Shots: what every shot detector gives, and the long-shot rule applied to shots after detection.

A shot list is a list of [start_frame, end_frame_exclusive) pairs that partition the video's
frames, as in the `shots` stage record. Detectors differ in how they find cuts; they all
consume the decoded frames of one pass in order (`ShotStream`) and say, as they go, which cuts
are final and where the undecided part begins (`CutUpdate`). That is what lets splitting take
the frames stitching needs during the same pass (panda_jax.video.scan).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import av

Shot = tuple[int, int]


class CutUpdate(NamedTuple):
    """What a detector knows after some frames: cuts that became final, and what is still open.

    Every cut found later is either in `pending` or at or after `horizon`.
    """

    cuts: list[int]  # first frames of new shots, ascending, newly final
    horizon: int
    pending: tuple[int, ...] = ()


class ShotStream(Protocol):
    """One video's frames, in decoding order, through a detector."""

    def push(self, frame: av.VideoFrame) -> CutUpdate: ...

    def finish(self) -> CutUpdate:
        """After the last frame: the remaining cuts; the horizon is the number of frames pushed."""
        ...


class ShotDetector(Protocol):
    """Finds the shots of a video."""

    name: str  # recorded as `detector` in the shots record

    def stream(self, size: tuple[int, int]) -> ShotStream:
        """Starts on a video whose decoded frames are `size` (width, height)."""
        ...

    def detect(self, path: str | os.PathLike) -> list[Shot]:
        """Returns shots partitioning [0, number of decoded frames); a video with no cut is one shot."""
        ...


def cuts_to_shots(cut_frames: Sequence[int], num_frames: int) -> list[Shot]:
    """Turns the first frames of new shots into a partition of [0, num_frames)."""
    if num_frames <= 0:
        return []
    starts = sorted({int(c) for c in cut_frames if 0 < c < num_frames})
    bounds = [0, *starts, num_frames]
    return [(a, b) for a, b in zip(bounds, bounds[1:])]


def split_long_shots(
    shots: Sequence[Shot], fps: float, max_seconds: float = 7.0, piece_seconds: float = 5.0
) -> list[Shot]:
    """Cuts every shot longer than `max_seconds` into `piece_seconds` pieces.

    Catches what shot detection misses (slow fades, unedited footage). Pieces are taken from
    the start while more than `max_seconds` remain, so the last piece lasts at most
    `max_seconds`: a 12 s shot becomes 5 s + 7 s, a 13 s one 5 + 5 + 3 (Panda-70M's rule,
    with its frame arithmetic: compare against max_seconds * fps, step int(piece_seconds * fps)).
    """
    pieces = LongShotPieces(fps, max_seconds, piece_seconds)
    out: list[Shot] = []
    for start, end in shots:
        pieces.start = start
        out += pieces.close(end)
    return out


class LongShotPieces:
    """The long-shot rule applied while cuts arrive: each piece comes out once it is certain.

    A piece [start, start + piece) of an open shot is certain as soon as the shot is known to
    run on for more than `max_seconds` from `start`, that is, once no cut can come before.
    """

    def __init__(self, fps: float, max_seconds: float = 7.0, piece_seconds: float = 5.0):
        self.piece_frames = int(piece_seconds * fps)
        if self.piece_frames <= 0 or piece_seconds > max_seconds:
            raise ValueError(f"need 0 < piece_seconds <= max_seconds, got {piece_seconds} and {max_seconds}")
        self.max_frames = max_seconds * fps
        self.start = 0  # the first frame of the first piece not yet given out

    def _certain(self, earliest_end: int) -> list[Shot]:
        pieces = []
        while earliest_end - self.start > self.max_frames:
            pieces.append((self.start, self.start + self.piece_frames))
            self.start += self.piece_frames
        return pieces

    def close(self, end: int) -> list[Shot]:
        """The remaining pieces of the shot that ends at `end`; the next shot starts there."""
        pieces = self._certain(end)
        if end > self.start:
            pieces.append((self.start, end))
            self.start = end
        return pieces

    def update(self, update: CutUpdate) -> list[Shot]:
        """Pieces made certain by a detector's update, in order."""
        pieces = []
        for cut in update.cuts:
            pieces += self.close(cut)
        return pieces + self._certain(min((update.horizon, *update.pending)))

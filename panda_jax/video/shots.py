"""Shots: what every shot detector returns, and the rules applied to shots after detection.

A shot list is a list of [start_frame, end_frame_exclusive) pairs that partition the video's
frames, as in the `shots` stage record. Detectors differ in how they find cuts; they all
return this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

Shot = tuple[int, int]


class ShotDetector(Protocol):
    """Finds the shots of a video file."""

    name: str  # recorded as `detector` in the shots record

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
    piece_frames = int(piece_seconds * fps)
    if piece_frames <= 0 or piece_seconds > max_seconds:
        raise ValueError(f"need 0 < piece_seconds <= max_seconds, got {piece_seconds} and {max_seconds}")
    pieces: list[Shot] = []
    for start, end in shots:
        while end - start > max_seconds * fps:
            pieces.append((start, start + piece_frames))
            start += piece_frames
        pieces.append((start, end))
    return pieces

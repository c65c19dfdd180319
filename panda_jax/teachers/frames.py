"""Which frames of a clip each teacher sees.

Image teachers see one frame drawn uniformly between 30 % and 70 % of the clip (Panda-70M),
from a generator seeded by the clip id: a rerun, another host or another teacher draws the
same frame, so every image teacher of a clip looks at one picture and it is decoded once.
Video teachers see N frames, the middle of N equal segments (`uniform_indices`, the rule the
dataset builder and the input pipelines use).
"""

from __future__ import annotations

import hashlib

import numpy as np

from panda_jax.video.sampling import uniform_indices

IMAGE_RANGE = (0.3, 0.7)


def image_frame(clip_id: str, start_frame: int, end_frame: int, low: float = IMAGE_RANGE[0], high: float = IMAGE_RANGE[1]) -> int:
    """The frame of [start_frame, end_frame) an image teacher sees, the same on every call for a clip id."""
    if end_frame <= start_frame:
        raise ValueError(f"clip {clip_id}: empty frame range [{start_frame}, {end_frame})")
    seed = int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "little")
    fraction = np.random.default_rng(seed).uniform(low, high)
    length = end_frame - start_frame
    return start_frame + min(int(fraction * length), length - 1)


def video_frames(start_frame: int, end_frame: int, count: int) -> list[int]:
    """The `count` frames of [start_frame, end_frame) a video teacher sees."""
    return (start_frame + uniform_indices(end_frame - start_frame, count)).tolist()

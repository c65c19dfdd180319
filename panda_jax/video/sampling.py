"""Which frames of a clip to read: one rule shared by dataset building and input pipelines."""

from __future__ import annotations

import numpy as np


def uniform_indices(num_frames_in_clip: int, num_samples: int) -> np.ndarray:
    """The middle frame of each of `num_samples` equal segments of a clip (indices from 0).

    Panda-70M samples captioning and evaluation frames this way; a clip shorter than
    `num_samples` frames repeats frames.
    """
    if num_frames_in_clip < 1 or num_samples < 1:
        raise ValueError(f"need at least one frame in the clip and one sample, got {num_frames_in_clip} and {num_samples}")
    return np.floor((np.arange(num_samples) + 0.5) * num_frames_in_clip / num_samples).astype(np.int64)

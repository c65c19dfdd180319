"""Frame embedders for semantic stitching.

Stitching compares two frames of every shot by the Euclidean distance of their L2-normalised
embeddings. Panda-70M used ImageBind; its weights are not available offline, so the default
here is a weight-free colour-histogram embedder, and image encoders from `panda_jax.models`
plug in behind the same interface, each with thresholds of its own (configs/split.py).
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np


class FrameEmbedder(Protocol):
    """Maps frames to unit vectors whose distances say how different two views are."""

    name: str  # the key of this embedder's thresholds in configs/split.py

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """[n, h, w, 3] uint8 RGB frames -> [n, d] float32, each row of L2 norm 1."""
        ...


class ColorHistogramEmbedder:
    """Joint HSV colour histogram, square-rooted so that it is a unit vector.

    The distance between two such vectors is sqrt(2 - 2 * Bhattacharyya coefficient): 0 for
    equal colour distributions, sqrt(2) for disjoint ones. A histogram ignores where colours
    are, so the same scene under another zoom or pan stays close while a new scene moves away.
    """

    name = "color_histogram"

    def __init__(self, bins: tuple[int, int, int] = (16, 4, 4), analysis_size: int = 64):
        self.bins = bins
        self.analysis_size = analysis_size

    def embed(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected [n, h, w, 3] uint8 frames, got {frames.dtype} {frames.shape}")
        out = np.empty((len(frames), int(np.prod(self.bins))), np.float32)
        side = self.analysis_size
        for i, frame in enumerate(frames):
            small = cv2.resize(frame, (side, side), interpolation=cv2.INTER_AREA)
            hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)  # H in [0, 180)
            hist = cv2.calcHist([hsv], [0, 1, 2], None, list(self.bins), [0, 180, 0, 256, 0, 256])
            out[i] = np.sqrt(hist.ravel() / hist.sum())
        return out

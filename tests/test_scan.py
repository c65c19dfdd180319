"""One decoding pass: the long-shot rule as cuts arrive, and stitching frames from a bounded buffer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from panda_jax.data import synthetic
from panda_jax.video.content_detector import ContentDetector
from panda_jax.video.embedders import ColorHistogramEmbedder
from panda_jax.video.scan import FrameSampler, StitchSampling, follow, scan
from panda_jax.video.shots import CutUpdate, LongShotPieces, cuts_to_shots, split_long_shots
from panda_jax.video.stitch import sample_frames
from test_stitch import embed_shot_frames

FPS, MAX_SECONDS, PIECE_SECONDS = 24.0, 7.0, 5.0


class ScriptedStream:
    """A detector that reveals known cuts late, some first as pending candidates, some never.

    Each cut becomes final `lag` frames after it happens (up to `max_lag`), may be pending for a
    while before, and candidates that never become cuts are pending for a while too.
    """

    def __init__(self, cuts: list[int], num_frames: int, rng: random.Random, max_lag: int):
        self.final_at: dict[int, int] = {}
        for c in cuts:  # in order, as detectors decide them
            self.final_at[c] = max(c + rng.randint(0, max_lag), *self.final_at.values(), 0)
        self.pending_from = {c: rng.randint(c, self.final_at[c]) for c in cuts if rng.random() < 0.5}
        fake = rng.sample(range(1, num_frames), k=min(5, num_frames - 1))
        self.fake = {c: (c, c + rng.randint(1, max_lag + 1)) for c in fake if c not in self.final_at}
        self.frame = 0
        self.horizon = 0
        self.lag = max_lag

    def _update(self, t: int) -> CutUpdate:
        cuts = sorted(c for c, at in self.final_at.items() if at == t)
        pending = {c for c, start in self.pending_from.items() if start <= t < self.final_at[c]}
        pending |= {c for c, (start, end) in self.fake.items() if start <= t < end}
        unknown = [c for c, at in self.final_at.items() if at > t and c not in pending]
        self.horizon = max(self.horizon, min([t + 1 - self.lag, *unknown]))
        return CutUpdate(cuts, self.horizon, tuple(sorted(pending)))

    def push(self, frame: int) -> CutUpdate:
        self.frame += 1
        return self._update(frame)

    def finish(self) -> CutUpdate:
        late = sorted(c for c, at in self.final_at.items() if at >= self.frame)
        return CutUpdate(late, self.frame)


@pytest.mark.parametrize("seed", range(12))
def test_sampler_takes_every_pieces_frames_and_holds_few(seed):
    rng = random.Random(seed)
    num_frames = rng.randint(1, 1500)
    cuts = sorted(rng.sample(range(1, num_frames), k=min(rng.randint(0, 25), num_frames - 1)))
    max_lag = rng.choice([0, 3, 40, 130])
    pieces = LongShotPieces(FPS, MAX_SECONDS, PIECE_SECONDS)
    held = []
    sampler = FrameSampler(
        convert=lambda index: np.array([index]), embed=lambda frames: frames.astype(np.float32),
        max_piece_frames=pieces.max_frames, piece_frames=pieces.piece_frames, batch_shots=4,
        raw_limit=rng.choice([1, 8, 64]),
    )
    original_add = sampler.add

    def add(index, frame):
        original_add(index, frame)
        assert all(sampler.may_need(i) for i in sampler.held)  # nothing held that no piece can need
        held.append((len(sampler.held), index - sampler.state.horizon, len(sampler.state.pending)))

    sampler.add = add

    stream = ScriptedStream(cuts, num_frames, rng, max_lag)
    found, shots, count = follow(range(num_frames), stream, pieces, sampler)
    expected = split_long_shots(cuts_to_shots(cuts, num_frames), FPS, MAX_SECONDS, PIECE_SECONDS)
    assert (found, shots, count) == (cuts, expected, num_frames)
    sampled = sampler.finish()[..., 0].astype(int).tolist()
    assert sampled == [list(sample_frames(shot)) for shot in expected]
    # Held: the detector's undecided stretch, and frames near the few boundaries that may come.
    near = 2 * sampler.reach + 3
    assert all(kept <= max(undecided, 0) + near * (3 + 2 * pending) for kept, undecided, pending in held)


def test_long_shot_pieces_as_cuts_arrive_equal_the_rule_applied_after():
    for seed in range(20):
        rng = random.Random(seed)
        num_frames = rng.randint(1, 3000)
        cuts = sorted(rng.sample(range(1, num_frames), k=min(rng.randint(0, 10), num_frames - 1)))
        pieces = LongShotPieces(FPS)
        out = []
        for t in range(num_frames):
            out += pieces.update(CutUpdate([c for c in cuts if c == t], t + 1))
        out += pieces.close(num_frames)
        assert out == split_long_shots(cuts_to_shots(cuts, num_frames), FPS)


@pytest.fixture(scope="module")
def long_shot_video(tmp_path_factory):
    """A synthetic video with a 20 s shot, so that pieces come from both cuts and the long-shot rule."""
    out = tmp_path_factory.mktemp("scan")
    (record,) = synthetic.generate_corpus(out, num_videos=1, seed=3, size=64, duration=30.0)
    return out / record["path"], record


def test_one_pass_gives_the_shots_and_embeddings_of_two_passes(long_shot_video):
    path, record = long_shot_video
    detector = ContentDetector()
    sampling = StitchSampling(ColorHistogramEmbedder(), batch_shots=3)
    found = scan(path, detector, record["fps"], (MAX_SECONDS, PIECE_SECONDS), sampling)
    expected = split_long_shots(detector.detect(path), record["fps"], MAX_SECONDS, PIECE_SECONDS)
    assert found.shots == expected and found.num_frames == record["num_frames"]
    assert any(end - start == int(PIECE_SECONDS * record["fps"]) for start, end in expected)  # the rule cut
    np.testing.assert_array_equal(found.embeddings, embed_shot_frames(path, expected))

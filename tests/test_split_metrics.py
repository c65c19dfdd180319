"""Split metrics: boundary precision/recall/F1, clip length, Max Running LPIPS, the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from panda_jax.data import synthetic, testmedia
from panda_jax.models import lpips
from panda_jax.video import io, metrics
from panda_jax.video.writer import VideoWriter

VIDEO_FPS = 4
SIZE = (64, 64)


# --- boundaries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "predicted, truth, tolerance, expected",
    [
        ([10, 50, 90], [12, 50, 100], 2, (2 / 3, 2 / 3, 2 / 3)),
        ([13], [10], 3, (1.0, 1.0, 1.0)),  # exactly at the tolerance: a match
        ([14], [10], 3, (0.0, 0.0, 0.0)),  # one past it: a false alarm and a miss
        ([7], [10], 3, (1.0, 1.0, 1.0)),  # the tolerance holds both ways
        ([9, 11], [10], 1, (0.5, 1.0, 2 / 3)),  # one-to-one: the second prediction is extra
        ([10], [9, 11], 1, (1.0, 0.5, 2 / 3)),  # ... and one prediction explains one truth
        ([11, 13], [10, 12], 1, (1.0, 1.0, 1.0)),  # nearest-first pairing could match only one
        ([10, 10, 20], [10, 20, 20], 0, (1.0, 1.0, 1.0)),  # duplicates are one boundary
        ([], [], 2, (1.0, 1.0, 1.0)),
        ([], [5], 2, (1.0, 0.0, 0.0)),
        ([5], [], 2, (0.0, 1.0, 0.0)),
    ],
)
def test_boundary_scores_on_cut_frames(predicted, truth, tolerance, expected):
    assert metrics.boundary_scores(predicted, truth, tolerance) == pytest.approx(expected)


def test_boundary_scores_on_shot_lists_and_records():
    predicted = [(0, 10), (10, 30), (30, 40)]  # boundaries 10, 30
    truth = [[0, 11], [11, 40]]  # boundary 11
    assert metrics.boundary_scores(predicted, truth, tolerance=1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert metrics.boundary_scores(np.array(predicted), truth, tolerance=0) == (0.0, 0.0, 0.0)
    records = [{"start_frame": 30, "end_frame": 40}, {"start_frame": 0, "end_frame": 30}]  # any order
    assert metrics.boundaries(records) == [30]
    assert metrics.boundaries([(0, 50)]) == []  # one shot: no boundary


def test_event_scores_against_the_synthetic_ground_truth():
    record = synthetic.sample_video_spec(seed=0, index=0).record()
    shots, events = record["gt_shots"], record["gt_events"]
    assert metrics.boundary_scores(shots, shots, tolerance=0) == (1.0, 1.0, 1.0)
    # Every event boundary is a shot boundary, not the other way round.
    precision, recall, f1 = metrics.boundary_scores(shots, events, tolerance=0)
    assert recall == 1.0
    assert precision == pytest.approx((len(events) - 1) / (len(shots) - 1))


def test_counts_add_up_over_videos():
    total = metrics.match_boundaries([10], [10]) + metrics.match_boundaries([5, 30], [60])
    assert total == metrics.BoundaryCounts(matched=1, predicted=3, true=2)
    assert total.scores() == pytest.approx((1 / 3, 1 / 2, 0.4))


def test_bad_boundary_inputs():
    with pytest.raises(ValueError, match="tolerance"):
        metrics.boundary_scores([1], [1], tolerance=-1)
    with pytest.raises(ValueError, match="expected cut frames"):
        metrics.boundaries([[[0, 1]]])


def test_mean_clip_length():
    assert metrics.mean_clip_length([(0.0, 2.0), (2.0, 6.0)]) == 3.0
    assert metrics.mean_clip_length([(0, 48), (48, 144)], fps=24) == 3.0
    assert metrics.mean_clip_length([{"start": 1.5, "end": 2.0}]) == 0.5
    assert metrics.mean_clip_length([]) == 0.0


# --- Max Running LPIPS -------------------------------------------------------------------------


def _scene(seed: int) -> np.ndarray:
    """A blocky random picture, different for every seed."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory) -> Path:
    """12 s at 4 fps: scene A for 0-5 s (static), B for 5-8 s, C for 8-12 s (hard cuts)."""
    path = tmp_path_factory.mktemp("metrics") / "cuts.mp4"
    with VideoWriter(path, VIDEO_FPS) as writer:
        for seed in [0] * 5 + [1] * 3 + [2] * 4:
            for _ in range(VIDEO_FPS):
                writer.write(_scene(seed))
    return path


@pytest.fixture(scope="module")
def lpips_model() -> lpips.LPIPS:
    """A fixed random AlexNet, with the real lpips heads when the registry is reachable."""
    try:
        return lpips.load(lpips.pretrained_checkpoint())
    except testmedia.MediaUnavailableError:
        return lpips.LPIPS(rngs=nnx.Rngs(0))  # random non-negative heads still rank a cut above a static shot


def test_max_running_lpips_finds_the_cut(cut_video, lpips_model):
    clips = [(0.0, 4.0), (6.0, 10.0), (10.0, 10.5)]  # static, across the 8 s cut, too short
    result = metrics.max_running_lpips(cut_video, clips, lpips_model, size=SIZE)
    static, cut, short = result.scores
    assert static < 0.01
    assert cut > 0.1 and cut > 20 * static
    assert short is None and result.unscored == 1
    assert result.mean == pytest.approx((static + cut) / 2)

    # The cut clip's score is the largest LPIPS between its frames at 6, 7, 8 and 9 s.
    frames = io.read_frames_at(cut_video, [6, 7, 8, 9], size=SIZE)
    direct = lpips.consecutive_distances(lpips_model, lpips.from_uint8(frames))
    assert cut == pytest.approx(float(np.max(direct)), abs=1e-5)
    assert int(np.argmax(direct)) == 1


def test_max_running_lpips_units_records_and_chunks(cut_video, lpips_model):
    seconds = metrics.max_running_lpips(cut_video, [(3.0, 11.0)], lpips_model, size=SIZE)
    frames = metrics.max_running_lpips(cut_video, [(12, 44)], lpips_model, size=SIZE, unit="frames")
    records = metrics.max_running_lpips(cut_video, [{"start": 3.0, "end": 11.0}], lpips_model, size=SIZE)
    # One pair per chunk: the frame carried over between chunks must pair with the next one.
    chunked = metrics.max_running_lpips(cut_video, [(3.0, 11.0)], lpips_model, size=SIZE, batch=1)
    assert seconds.scores[0] > 0.1
    for other in (frames, records, chunked):
        assert other.scores[0] == pytest.approx(seconds.scores[0], abs=1e-5)


def test_max_running_lpips_without_scored_clips(cut_video, lpips_model):
    result = metrics.max_running_lpips(cut_video, [(0.0, 0.5)], lpips_model, size=SIZE)
    assert result.scores == [None] and result.mean is None
    assert metrics.max_running_lpips(cut_video, [], lpips_model).mean is None


# --- the report ----------------------------------------------------------------------------------


def test_split_report(cut_video, lpips_model):
    videos = [
        {"video_id": "cuts", "path": cut_video.name, "fps": VIDEO_FPS,
         "gt_shots": [[0, 20], [20, 32], [32, 48]],
         "gt_events": [{"start_frame": 0, "end_frame": 20}, {"start_frame": 20, "end_frame": 48}]},
        # Not split at all: its boundary at frame 10 counts as missed, for shots and events.
        {"video_id": "lost", "path": "lost.mp4", "fps": VIDEO_FPS,
         "gt_shots": [[0, 10], [10, 20]],
         "gt_events": [{"start_frame": 0, "end_frame": 10}, {"start_frame": 10, "end_frame": 20}]},
    ]  # fmt: skip
    shots = [{"video_id": "cuts", "shots": [[0, 21], [21, 36], [36, 48]]}]  # 21 matches 20; 36 is 4 off 32
    clips = [
        {"video_id": "cuts", "start": 0.0, "end": 4.0, "start_frame": 0, "end_frame": 16},
        {"video_id": "cuts", "start": 6.0, "end": 10.0, "start_frame": 24, "end_frame": 40},
    ]
    report = metrics.split_report(
        videos, shots, clips, shot_tolerance=2, event_tolerance=4, lpips_model=lpips_model, root=cut_video.parent
    )
    assert report.shots == pytest.approx((1 / 2, 1 / 3, 0.4))  # 1 of 2 predicted, 1 of 3 true
    assert report.events == pytest.approx((1.0, 1 / 2, 2 / 3))  # clip start 24 matches 20; "lost" missed
    assert report.mean_clip_seconds == 4.0
    assert report.num_videos == 2 and report.num_clips == 2
    expected = metrics.max_running_lpips(cut_video, [(0.0, 4.0), (6.0, 10.0)], lpips_model).mean
    assert report.max_running_lpips == pytest.approx(expected, abs=1e-6)
    assert "shot F1 0.400" in report.summary()

    without = metrics.split_report(videos, shots, clips)
    assert without.max_running_lpips is None and "Max Running LPIPS n/a" in without.summary()


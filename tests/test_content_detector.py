"""The content detector makes PySceneDetect's decisions, on real clips and made-up ones.

PySceneDetect (scenedetect-headless, the reference Panda-70M used) runs in these tests as the
oracle: same cuts, and per-frame scores within a small tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scenedetect
from scenedetect.common import FrameTimecode
from scenedetect.detector import FlashFilter
from scenedetect.scene_manager import compute_downscale_factor

from panda_jax.data import synthetic, testmedia
from panda_jax.video import io
from panda_jax.video.writer import VideoWriter
from panda_jax.video.content_detector import (
    LUMA_ONLY,
    ContentDetector,
    Weights,
    analysis_size,
    cuts_from_scores,
)

# Largest |our score - PySceneDetect's| allowed on a frame. Scores are mean absolute HSV
# differences on a 0-255 scale; cuts in the test clips score 35-75 and the threshold is 25.
# PySceneDetect scales full-size BGR with cv2.INTER_LINEAR, we scale in swscale while
# converting: the largest difference seen is 0.74 (bigbuckbunny_full; bikes 0.70, city 0.24,
# bigbuckbunny 0.10, a 1080p and a portrait re-encode 0.73 and 0.96).
SCORE_TOLERANCE = 1.0


def reference(path: Path, **detector_args) -> tuple[list[int], np.ndarray]:
    """PySceneDetect's cut frames and per-frame scores, with Panda-70M's settings by default."""
    args = dict(threshold=25.0, min_scene_len=15) | detector_args
    manager = scenedetect.SceneManager(scenedetect.StatsManager())
    manager.add_detector(scenedetect.ContentDetector(**args))
    num_frames = manager.detect_scenes(scenedetect.open_video(str(path)))
    cuts = [start.frame_num for start, _ in manager.get_scene_list()[1:]]
    # The first frame has no score recorded; PySceneDetect scores it 0.
    stats = manager.stats_manager
    scores = [stats.get_metrics(i, ["content_val"])[0] or 0.0 for i in range(num_frames)]
    return cuts, np.array(scores)


def shot(
    rng: np.random.Generator, length: int, width: int = 160, height: int = 96
) -> list[np.ndarray]:
    """Frames of one shot: random coloured blocks sliding one pixel per frame."""
    blocks = rng.integers(0, 256, (height // 16 + 1, (width + length) // 16 + 1, 3), np.uint8)
    texture = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)
    return [texture[:height, i : i + width] for i in range(length)]


def write_shots(path: Path, lengths: list[int], seed: int = 0) -> Path:
    """A video of hard cuts between shots of the given lengths; returns its path."""
    rng = np.random.default_rng(seed)
    with VideoWriter(path, 25) as writer:
        for length in lengths:
            for frame in shot(rng, length):
                writer.write(frame)
    return path


@pytest.fixture(scope="module")
def five_shots(tmp_path_factory) -> Path:
    """Shots starting at frames 0, 20, 45, 75 and 93 of 110."""
    return write_shots(tmp_path_factory.mktemp("content") / "five_shots.mp4", [20, 25, 30, 18, 17])


# ------------------------------------------------------------------ decision rules


SIZES = [(1280, 720), (1920, 1080), (640, 272), (720, 405), (854, 480), (480, 854), (300, 200),
         (256, 144), (255, 300), (96, 96), (257, 3)]  # fmt: skip


@pytest.mark.parametrize("width,height", SIZES)
def test_analysis_size_is_pyscenedetects_downscale(width, height):
    factor = compute_downscale_factor(max(width, height))
    expected = (width, height)
    if factor > 1:  # what its SceneManager then asks cv2.resize for
        expected = (max(1, round(width / factor)), max(1, round(height / factor)))
    assert analysis_size(width, height) == expected


@pytest.mark.parametrize("min_scene_len", [0, 1, 3, 15])
@pytest.mark.parametrize("seed", range(8))
def test_cut_rule_is_pyscenedetects_flash_filter(min_scene_len, seed):
    """Random bursts of high scores: cuts, merges and flashes as in FlashFilter's MERGE mode."""
    rng = np.random.default_rng(seed)
    above = rng.random(600) < rng.choice([0.02, 0.08, 0.3])
    above[rng.integers(0, 600, 5)] = True  # some isolated flashes
    scores = np.where(above, 40.0, 5.0)

    flash_filter = FlashFilter(mode=FlashFilter.Mode.MERGE, length=min_scene_len)
    expected = set()
    for i, is_above in enumerate(above):
        emitted = flash_filter.filter(FrameTimecode(i, fps=25.0), bool(is_above))
        expected.update(timecode.frame_num for timecode in emitted)
    assert cuts_from_scores(scores, 25.0, min_scene_len) == sorted(expected)


def test_cut_rule_examples():
    def cuts(above_frames: list[int], n: int = 100) -> list[int]:
        scores = np.zeros(n)
        scores[above_frames] = 30.0
        return cuts_from_scores(scores, threshold=25.0, min_scene_len=15)

    assert cuts([20, 60]) == [20, 60]
    assert cuts([10, 40]) == [40]  # closer than 15 frames to the start of the video
    assert cuts([20, 28]) == [20]  # a flash 8 frames after a cut adds nothing
    # A burst of cuts spanning 15+ frames becomes one cut at its last frame, once 15 quiet
    # frames pass; a first cut (20) is never merged away.
    assert cuts([20, 28, 40, 50]) == [20, 50]
    assert cuts([20, 28, 40, 50], n=60) == [20]  # ...and is lost if the video ends first
    assert cuts_from_scores([0.0, 30.0, 30.0], threshold=25.0, min_scene_len=0) == [1, 2]


# ------------------------------------------------------------------ made-up videos


def test_hard_cuts_are_found_exactly(five_shots):
    expected = [(0, 20), (20, 45), (45, 75), (75, 93), (93, 110)]
    assert ContentDetector().detect(five_shots) == expected


def test_same_scores_as_pyscenedetect_when_no_downscale(five_shots):
    """Below 256 px neither side resizes and both convert in swscale: scores agree to rounding."""
    for luma_only in (False, True):
        ref_cuts, ref_scores = reference(five_shots, luma_only=luma_only)
        scores = ContentDetector(luma_only=luma_only).scores(five_shots)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-9)
        assert cuts_from_scores(scores) == ref_cuts == [20, 45, 75, 93]


def test_weights_pick_channels(five_shots):
    hue = ContentDetector(weights=Weights(1.0, 0.0, 0.0)).scores(five_shots)
    sat = ContentDetector(weights=Weights(0.0, 1.0, 0.0)).scores(five_shots)
    lum = ContentDetector(weights=Weights(0.0, 0.0, 1.0)).scores(five_shots)
    np.testing.assert_allclose(ContentDetector().scores(five_shots), (hue + sat + lum) / 3)
    np.testing.assert_array_equal(ContentDetector(luma_only=True).scores(five_shots), lum)
    assert LUMA_ONLY == Weights(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="non-zero"):
        ContentDetector(weights=Weights(0.0, 0.0, 0.0))


@pytest.mark.parametrize("batch_size", [1, 7, 10, 109, 110, 500])
def test_scores_do_not_depend_on_batching(five_shots, batch_size):
    scores = ContentDetector(batch_size=batch_size).scores(five_shots)  # 110 frames
    np.testing.assert_array_equal(scores, ContentDetector().scores(five_shots))


def test_static_video_is_one_shot(tmp_path):
    frame = shot(np.random.default_rng(1), 1)[0]
    path = tmp_path / "static.mp4"
    with VideoWriter(path, 25) as writer:
        for _ in range(60):
            writer.write(frame)
    scores = ContentDetector().scores(path)
    assert scores[0] == 0 and scores.max() < 1
    assert ContentDetector().detect(path) == [(0, 60)]


def test_min_scene_length_merges_close_cuts(tmp_path):
    """Cuts at 20 and 28: the second is 8 frames after the first and adds no shot."""
    path = write_shots(tmp_path / "close.mp4", [20, 8, 32], seed=2)
    assert ContentDetector().detect(path) == [(0, 20), (20, 60)]
    assert reference(path)[0] == [20]
    assert ContentDetector(min_scene_len=5).detect(path) == [(0, 20), (20, 28), (28, 60)]


def test_single_frame_video(tmp_path):
    path = write_shots(tmp_path / "one.mp4", [1])
    np.testing.assert_array_equal(ContentDetector().scores(path), [0.0])
    assert ContentDetector().detect(path) == [(0, 1)]


def test_missing_file_raises_the_io_error(tmp_path):
    with pytest.raises(io.VideoNotFoundError):
        ContentDetector().detect(tmp_path / "nope.mp4")


def test_synthetic_corpus_recall(tmp_path, capsys):
    """Recall of ground-truth shot boundaries on the synthetic corpus: printed, asserted loosely.

    A content detector finds hard cuts, not dissolves or fades; a cut between two framings of the
    same scene can score under the threshold.
    """
    corpus = synthetic.generate_corpus(tmp_path, 3, seed=0, size=96, duration=9)
    found: dict[str, list[bool]] = {}
    for record in corpus:
        shots = ContentDetector().detect(tmp_path / record["path"])
        cuts = [start for start, _ in shots[1:]]
        assert shots[-1][1] == record["num_frames"]
        for transition in record["gt_transitions"]:
            start, end = transition["start_frame"], transition["end_frame"]
            # A cut within 1 frame of a hard cut, or anywhere inside a dissolve or fade.
            hit = any(start - 1 <= cut <= end + 1 for cut in cuts)
            found.setdefault(transition["type"], []).append(hit)
    recall = {kind: f"{sum(hits)}/{len(hits)}" for kind, hits in found.items()}
    with capsys.disabled():
        print(f"\ncontent detector recall on the synthetic corpus: {recall}")
    assert sum(found["cut"]) >= 0.75 * len(found["cut"])


# ------------------------------------------------------------------ real clips


@pytest.mark.media
@pytest.mark.parametrize("name", ["bikes", "city", "bigbuckbunny"])
def test_real_clips_match_pyscenedetect(test_clip, name):
    path = test_clip(name)
    ref_cuts, ref_scores = reference(path)
    detector = ContentDetector()
    scores = detector.scores(path)
    shots = detector.detect(path)
    cuts = [start for start, _ in shots[1:]]

    assert len(scores) == len(ref_scores) == testmedia.CLIPS[name].num_frames
    assert np.abs(scores - ref_scores).max() <= SCORE_TOLERANCE
    assert len(cuts) == len(ref_cuts)
    assert all(abs(ours - theirs) <= 1 for ours, theirs in zip(cuts, ref_cuts))
    assert shots[0][0] == 0 and shots[-1][1] == len(scores)
    assert cuts == testmedia.CLIPS[name].cut_frames  # bikes 30, 76, 137, 187, 242; city 116; none


@pytest.mark.media
def test_luma_only_matches_pyscenedetect(test_clip):
    path = test_clip("bikes")
    ref_cuts, ref_scores = reference(path, luma_only=True)
    scores = ContentDetector(luma_only=True).scores(path)
    assert np.abs(scores - ref_scores).max() <= SCORE_TOLERANCE
    assert cuts_from_scores(scores) == ref_cuts


# PySceneDetect 0.7.2's cuts on the whole film (its ContentDetector, threshold 25, min scene 15):
# 135 cuts, all of which ours matched exactly when this was written; the ends are checked here.
FILM_FIRST_CUTS = [285, 378, 553, 1145, 1346, 1456, 1531, 1666, 1711, 1763]
FILM_LAST_CUTS = [11560, 11612, 11671, 11727, 11765, 12900, 13296, 13918, 13942, 14314]


def detect_in_child(path: Path) -> tuple[list[list[int]], float]:
    """Shots of `path` found in a fresh Python process, and that process's peak RSS in MiB."""
    script = textwrap.dedent(
        f"""
        import json, resource
        from panda_jax.video.content_detector import ContentDetector
        shots = ContentDetector().detect({str(path)!r})
        print(json.dumps([shots, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    shots, max_rss_mib = json.loads(run.stdout)
    return shots, max_rss_mib


@pytest.mark.media
@pytest.mark.slow
def test_full_film_in_flat_memory(test_clip):
    """The 10-minute 720p film gives PySceneDetect's cuts in the memory a 10-second clip takes."""
    shots, film_rss = detect_in_child(test_clip("bigbuckbunny_full"))
    _, clip_rss = detect_in_child(test_clip("bikes"))
    cuts = [start for start, _ in shots[1:]]
    assert shots[-1][1] == testmedia.CLIPS["bigbuckbunny_full"].num_frames
    assert len(cuts) == 135
    assert cuts[:10] == FILM_FIRST_CUTS and cuts[-10:] == FILM_LAST_CUTS
    # 14315 decoded 720p frames would take 19 GB; scores take 115 kB.
    assert film_rss < clip_rss + 50, (film_rss, clip_rss)

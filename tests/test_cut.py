"""Clip files: stream copy starts on a keyframe at or before the clip and keeps audio; re-encode is frame-exact."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import counter_frame, decoded_index
from panda_jax.data import testmedia
from panda_jax.video import io
from panda_jax.video.writer import VideoWriter
from panda_jax.video.cut import cut_copy, cut_reencode


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory):
    """96 counter frames at 24 fps with a keyframe every 24 frames."""
    path = tmp_path_factory.mktemp("cut") / "gop.mp4"
    with VideoWriter(path, 24, options={"crf": "18", "g": "24", "keyint_min": "24", "sc_threshold": "0"}) as w:
        for i in range(96):
            w.write(counter_frame(i))
    return path


def test_reencode_is_frame_exact(gop_video, tmp_path):
    clips = [(tmp_path / "a.mp4", 0, 10), (tmp_path / "b.mp4", 30, 55), (tmp_path / "c.mp4", 90, 96)]
    cut_reencode(gop_video, clips)  # one pass over the video for all three
    for out, start, end in clips:
        assert [decoded_index(f.image) for f in io.iter_frames(out)] == list(range(start, end))


def _source_frames(path, indices) -> dict[int, np.ndarray]:
    """Frames at `indices`, counted in decoding order as shot detection counts them."""
    wanted, found = set(indices), {}
    with io.decoded_frames(path) as (size, frames):
        to_rgb = io.rgb_converter(size, None)
        for index, frame in enumerate(frames):
            if index in wanted:
                found[index] = to_rgb(frame)
    return found


def _matches(image: np.ndarray, source: dict[int, np.ndarray], index: int) -> bool:
    """Whether a re-encoded frame is source frame `index` rather than a neighbour."""
    error = {i: np.abs(image.astype(int) - f[: image.shape[0], : image.shape[1]]).mean() for i, f in source.items()}
    others = [e for i, e in error.items() if i != index and not np.array_equal(source[i], source[index])]
    return error[index] < 8.0 and all(error[index] < 0.6 * e for e in others)  # lossy, yet clearly closest


@pytest.mark.media
@pytest.mark.parametrize("name", ["megamind", "city"])
def test_reencode_is_frame_exact_on_real_clips(test_clip, tmp_path, name):
    """Megamind.avi's first timestamp is 1 while its stream starts at 0; city is MPEG-PS."""
    path = test_clip(name)
    total = testmedia.CLIPS[name].num_frames
    clips = [(tmp_path / "first.mp4", 0, 12), (tmp_path / "last.mp4", total - 12, total)]
    cut_reencode(path, clips)
    source = _source_frames(path, [0, 1, 11, 12, total - 13, total - 12, total - 1])
    for out, start, end in clips:
        frames = [f.image for f in io.iter_frames(out)]
        assert len(frames) == end - start
        nearby = {i: source[i] for i in (start - 1, start, end - 1, end) if i in source}
        assert _matches(frames[0], nearby, start) and _matches(frames[-1], nearby, end - 1)


def test_copy_starts_at_the_keyframe_before_and_stops_at_the_end(gop_video, tmp_path):
    out = tmp_path / "clip.mp4"
    cut_copy(gop_video, [(out, 30 / 24, 55 / 24)])
    indices = [decoded_index(f.image) for f in io.iter_frames(out)]
    assert indices[:31] == list(range(24, 55))  # from the keyframe at 24 through frame 54
    assert all(i > 54 for i in indices[31:]) and len(indices) <= 31 + 3  # maybe a B-frame's reference
    assert io.probe(out).fps == 24.0


@pytest.mark.media
def test_copy_keeps_audio_and_codec(test_clip, tmp_path):
    out = tmp_path / "bbb.mp4"
    cut_copy(test_clip("bigbuckbunny"), [(out, 1.0, 3.0)])
    info = io.probe(out)
    assert (info.codec, info.audio_codec, info.width) == ("h264", "aac", 1280)
    assert 2.0 <= info.duration <= 3.2
    with av.open(str(out)) as container:
        first = next(container.decode(video=0))
        assert first.key_frame


@pytest.mark.media
@pytest.mark.parametrize("name, start", [("city", 0.0), ("city", 5.0), ("megamind", 0.0), ("megamind", 6.0)])
def test_copy_never_loses_the_start_and_says_where_it_starts(test_clip, tmp_path, name, start):
    """MPEG-PS seeks overshoot (city's copy from 0 used to start at frame 12); Megamind starts at pts 1."""
    path = test_clip(name)
    fps = testmedia.CLIPS[name].fps
    out = tmp_path / f"clip{path.suffix}"
    (file_start,) = cut_copy(path, [(out, start, start + 2.0)])
    assert file_start <= start
    first_index = round(file_start * fps)
    first = next(io.iter_frames(out)).image
    np.testing.assert_array_equal(first, _source_frames(path, [first_index])[first_index])
    assert len(list(io.iter_frames(out))) >= round((start + 2.0 - file_start) * fps) - 1


def test_failed_cut_leaves_no_file(tmp_path):
    with pytest.raises(io.VideoNotFoundError):
        cut_reencode(tmp_path / "missing.mp4", [(tmp_path / "out.mp4", 0, 10)])
    with pytest.raises(FileNotFoundError):
        cut_copy(tmp_path / "missing.mp4", [(tmp_path / "out.mp4", 0, 1)])
    assert list(tmp_path.iterdir()) == []


def test_reencode_past_the_end_keeps_nothing(gop_video, tmp_path):
    with pytest.raises(io.CorruptVideoError, match="ends after 96 frames"):
        cut_reencode(gop_video, [(tmp_path / "ok.mp4", 0, 10), (tmp_path / "long.mp4", 90, 120)])
    assert not (tmp_path / "long.mp4").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ok.mp4"]  # finished clips stay, no temporary file

"""Clip files: stream copy starts on a keyframe and keeps audio; re-encode is frame-exact."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import counter_frame, decoded_index
from panda_jax.video import io
from panda_jax.video.cut import cut_copy, cut_reencode


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory):
    """96 counter frames at 24 fps with a keyframe every 24 frames."""
    path = tmp_path_factory.mktemp("cut") / "gop.mp4"
    with io.VideoWriter(path, 24, options={"crf": "18", "g": "24", "keyint_min": "24", "sc_threshold": "0"}) as w:
        for i in range(96):
            w.write(counter_frame(i))
    return path


def test_reencode_is_frame_exact(gop_video, tmp_path):
    out = tmp_path / "clip.mp4"
    cut_reencode(gop_video, out, 30, 55)
    frames = [f.image for f in io.iter_frames(out)]
    assert len(frames) == 25
    assert [decoded_index(f) for f in frames] == list(range(30, 55))


def test_copy_starts_at_the_keyframe_before_and_stops_at_the_end(gop_video, tmp_path):
    out = tmp_path / "clip.mp4"
    cut_copy(gop_video, out, start=30 / 24, end=55 / 24)
    indices = [decoded_index(f.image) for f in io.iter_frames(out)]
    assert indices[:31] == list(range(24, 55))  # from the keyframe at 24 through frame 54
    assert all(i > 54 for i in indices[31:]) and len(indices) <= 31 + 3  # maybe a B-frame's reference
    assert io.probe(out).fps == 24.0


@pytest.mark.media
def test_copy_keeps_audio_and_codec(test_clip, tmp_path):
    out = tmp_path / "bbb.mp4"
    cut_copy(test_clip("bigbuckbunny"), out, start=1.0, end=3.0)
    info = io.probe(out)
    assert (info.codec, info.audio_codec, info.width) == ("h264", "aac", 1280)
    assert 2.0 <= info.duration <= 3.2
    with av.open(str(out)) as container:
        first = next(container.decode(video=0))
        assert first.key_frame


def test_failed_cut_leaves_no_file(tmp_path):
    with pytest.raises(io.VideoNotFoundError):
        cut_reencode(tmp_path / "missing.mp4", tmp_path / "out.mp4", 0, 10)
    with pytest.raises(FileNotFoundError):
        cut_copy(tmp_path / "missing.mp4", tmp_path / "out.mp4", 0, 1)
    assert not (tmp_path / "out.mp4").exists()

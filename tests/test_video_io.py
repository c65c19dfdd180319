"""panda_jax.video.io against videos of known content and the real test clips."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from conftest import counter_frame, decoded_index
from panda_jax.video import io
from panda_jax.video.writer import VideoWriter

FORMATS = [(".mp4", "libx264", "h264"), (".mpg", "mpeg2video", "mpeg2video"), (".avi", "mpeg4", "mpeg4")]


@pytest.mark.parametrize("suffix,codec,decoder_name", FORMATS)
def test_probe_and_decode_every_format(counter_video, suffix, codec, decoder_name):
    path = counter_video(suffix, codec)
    info = io.probe(path)
    assert (info.codec, info.num_frames, info.fps, info.width, info.height) == (decoder_name, 48, 24.0, 96, 64)
    assert info.duration == pytest.approx(2.0, abs=1e-6)
    assert not info.has_audio and info.audio_codec is None

    frames = list(io.iter_frames(path))
    assert [f.index for f in frames] == list(range(48))
    np.testing.assert_allclose([f.time for f in frames], np.arange(48) / 24.0, atol=1e-6)
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (64, 96, 3)
        assert decoded_index(frame.image) == frame.index
        error = np.abs(frame.image.astype(int) - counter_frame(frame.index)).mean()
        assert error < 4.0, f"frame {frame.index} differs from what was encoded by {error:.1f}"


def test_resize_keeps_aspect_and_colour(counter_video):
    path = counter_video()
    frame = next(io.iter_frames(path, size=(48, None)))
    assert frame.image.shape == (32, 48, 3)
    red = frame.image[4:12, 0:8]  # the bar of frame 0 covers x 0..16, y 8..24 at full size
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60
    assert next(io.iter_frames(path, size=(None, 16))).image.shape == (16, 24, 3)
    assert next(io.iter_frames(path, size=(50, 30))).image.shape == (30, 50, 3)


@pytest.mark.parametrize("suffix,codec,_", FORMATS)
def test_start_end_seek_to_the_right_frames(counter_video, suffix, codec, _):
    path = counter_video(suffix, codec)
    frames = list(io.iter_frames(path, start=0.5, end=1.25))
    assert [f.index for f in frames] == list(range(12, 30))
    assert [decoded_index(f.image) for f in frames] == list(range(12, 30))


def test_fps_resampling_takes_the_frame_on_screen(counter_video):
    path = counter_video()
    assert [f.index for f in io.iter_frames(path, fps=4)] == [0, 6, 12, 18, 24, 30, 36, 42]
    assert [f.index for f in io.iter_frames(path, fps=48, end=0.125)] == [0, 0, 1, 1, 2, 2]
    assert [f.index for f in io.iter_frames(path, fps=2, start=1.0)] == [24, 36]
    with pytest.raises(ValueError, match="fps must be positive"):
        next(io.iter_frames(path, fps=0))


@pytest.mark.parametrize("suffix,codec,_", FORMATS)
def test_read_frames_at_indices_and_times(counter_video, suffix, codec, _):
    path = counter_video(suffix, codec, num_frames=200)  # long enough that reading seeks
    wanted = [150, 3, 3, 0, 199, 40, 120]
    images = io.read_frames(path, wanted)
    assert images.shape == (7, 64, 96, 3)
    full = {f.index: f.image for f in io.iter_frames(path)}
    for image, index in zip(images, wanted):
        np.testing.assert_array_equal(image, full[index])
    at = io.read_frames_at(path, [0.0, 1.0, 1.02, 8.29], size=(48, 32))
    assert at.shape == (4, 32, 48, 3)
    np.testing.assert_array_equal(at, io.read_frames(path, [0, 24, 24, 198], size=(48, 32)))
    with pytest.raises(IndexError, match="past the end"):
        io.read_frames(path, [10, 200])


def test_frames_are_streamed_not_collected(counter_video):
    frames = io.iter_frames(counter_video())
    first = next(frames)
    second = next(frames)
    assert (first.index, second.index) == (0, 1)
    frames.close()


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(io.VideoNotFoundError, match="nope.mp4: no such file"):
        io.probe(missing)
    with pytest.raises(FileNotFoundError):
        next(io.iter_frames(missing))


def test_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are not frames\n" * 50)
    with pytest.raises(io.NotAVideoError, match="notes.mp4: is not a video file"):
        io.probe(text)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(io.NotAVideoError, match="empty.avi: is an empty file"):
        next(io.iter_frames(empty))
    with pytest.raises(io.NotAVideoError, match="is a directory"):
        io.probe(tmp_path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(8000) * 0.1) * 3000).astype("<i2").tobytes())
    with pytest.raises(io.NotAVideoError, match="tone.wav: has no video stream .*audio"):
        io.probe(path)


def test_truncated_mp4_is_corrupt(counter_video, tmp_path):
    data = counter_video().read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # moov atom lost with the tail
    with pytest.raises(io.CorruptVideoError, match="truncated.mp4: looks like a video"):
        io.probe(truncated)


def test_garbled_stream_is_corrupt(test_clip, tmp_path):
    data = bytearray(test_clip("bikes").read_bytes())
    rng = np.random.default_rng(0)
    positions = np.arange(len(data) // 3, 2 * len(data) // 3, 97)
    data_array = np.frombuffer(bytes(data), np.uint8).copy()
    data_array[positions] = rng.integers(0, 256, len(positions), dtype=np.uint8)
    garbled = tmp_path / "garbled.mp4"
    garbled.write_bytes(data_array.tobytes())
    assert io.probe(garbled).num_frames == 250  # the header is intact
    with pytest.raises(io.CorruptVideoError, match="garbled.mp4: the video stream is corrupt"):
        for _ in io.iter_frames(garbled):
            pass


def test_writer_rejects_bad_frames_and_leaves_no_file(tmp_path):
    writer = VideoWriter(tmp_path / "x.mp4", 24)
    with pytest.raises(ValueError, match="even width and height"):
        writer.write(np.zeros((31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        writer.write(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="no frames were written"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "clip.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, 24) as writer:
            writer.write(counter_frame(0))
            raise KeyboardInterrupt  # killed half way
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(path, 24) as writer:
        for i in range(5):
            writer.write(counter_frame(i))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert io.probe(path).num_frames == 5


def test_writer_is_reproducible_in_content(tmp_path):
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for path in paths:
        with VideoWriter(path, 24) as writer:
            for i in range(30):
                writer.write(counter_frame(i))
    a, b = ([f.image.astype(int) for f in io.iter_frames(p)] for p in paths)
    assert len(a) == len(b) == 30
    assert max(np.abs(x - y).mean() for x, y in zip(a, b)) < 0.5


@pytest.mark.media
@pytest.mark.parametrize(
    "name,codec,size,audio",
    [("bikes", "h264", (640, 272), None), ("bigbuckbunny", "h264", (1280, 720), "aac"), ("city", "mpeg2video", (720, 405), None)],
)
def test_real_clips(test_clip, name, codec, size, audio):
    from panda_jax.data.testmedia import CLIPS

    clip = CLIPS[name]
    path = test_clip(name)
    info = io.probe(path)
    assert (info.codec, (info.width, info.height), info.audio_codec) == (codec, size, audio)
    assert info.fps == clip.fps and info.num_frames == clip.num_frames
    assert info.duration == pytest.approx(clip.num_frames / clip.fps, abs=0.05)
    frames = list(io.iter_frames(path, size=(128, None)))
    assert [f.index for f in frames] == list(range(clip.num_frames))
    assert frames[0].time == 0.0  # cityCC0.mpg's stream starts at 0.54 s in the container
    # Cuts are visible in the decoded pixels: the largest frame-to-frame changes are the cuts.
    images = np.stack([f.image for f in frames]).astype(np.float32)
    change = np.abs(np.diff(images, axis=0)).mean(axis=(1, 2, 3))
    top = sorted(int(i) + 1 for i in np.argsort(change)[::-1][: len(clip.cut_frames)])
    assert top == clip.cut_frames
    # Random access agrees with the sequential decode, across the cuts.
    picks = [clip.num_frames - 1, 0] + clip.cut_frames
    np.testing.assert_array_equal(io.read_frames(path, picks, size=(128, None)), images[picks].astype(np.uint8))

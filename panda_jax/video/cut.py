"""Writing clips out of a long video: fast stream copy, or frame-exact re-encode.

Stream copy moves the compressed packets unchanged, so it is as fast as reading the file but
only approximately cut: a clip starts at the last keyframe at or before its start (never
later: containers whose seeks overshoot, like MPEG-PS, are sought again further back), and
ends with every packet decoded before its end. `cut_copy` returns where the file really
starts. Re-encoding decodes the video once, counting frames in decoding order exactly as shot
detection does, and encodes each clip's frames again (H.264, no audio): frame-exact whatever
the timestamps say.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Iterator, Sequence

import av

from panda_jax.files import atomic_output
from panda_jax.video import io
from panda_jax.video.writer import VideoWriter


def _first_pts(path: str | os.PathLike) -> int:
    """The pts of the first video packet: the time origin of clip records (frame 0 is at 0 s).

    Usually the stream's start time, but not always: in OpenCV's Megamind.avi the stream starts
    at 0 and its first frame at 1.
    """
    with io.open_container(path) as source:
        video = source.streams.video[0]
        for packet in source.demux(video):
            if packet.pts is not None:
                return packet.pts
    raise io.CorruptVideoError(path, "has no video packet with a timestamp")


def cut_copy(path: str | os.PathLike, clips: Sequence[tuple[str | os.PathLike, float, float]]) -> list[float]:
    """Copies each (out, start, end) clip: video and first audio packets from the keyframe at or
    before `start` up to `end`, into a container chosen by `out`'s suffix.

    Times are seconds from the video's first frame. Returns, per clip, the time of the keyframe
    its file starts with (<= start).
    """
    origin = _first_pts(path)
    return [_copy_clip(path, out, start, end, origin) for out, start, end in clips]


def _copy_clip(path: str | os.PathLike, out: str | os.PathLike, start: float, end: float, origin: int) -> float:
    back = 0.0
    while True:
        target = max(start - back, 0.0)
        with io.open_container(path) as source:
            video = source.streams.video[0]
            streams = [video, *source.streams.audio[:1]]
            if target > 0:  # from 0, reading from the start is exact where a seek may overshoot
                source.seek(origin + int(target / video.time_base), stream=video, backward=True)
            packets = source.demux(streams)
            key = next((p for p in packets if p.stream.index == video.index and p.is_keyframe and p.pts is not None), None)
            if key is None and target == 0.0:
                raise io.CorruptVideoError(path, "has no video keyframe")
            if key is not None:
                key_time = float((key.pts - origin) * video.time_base)
                if target == 0.0 or key_time <= start + 0.5 / float(video.average_rate or 25):
                    _copy_packets(key, packets, streams, out, origin, end)
                    return max(key_time, 0.0)
        back = max(1.0, 2 * back)  # the seek overshot (MPEG-PS does): go further back


def _copy_packets(
    key: av.Packet, packets: Iterator[av.Packet], streams: list, out: str | os.PathLike, origin: int, end: float
) -> None:
    """Muxes `key` and the packets after it up to `end` into `out`, every stream's time starting at 0."""
    video = streams[0]
    origin_seconds = float(min(key.dts, key.pts) * video.time_base)
    with atomic_output(out) as temporary:
        with av.open(str(temporary), mode="w", container_options={"fflags": "+bitexact"}) as target:
            outputs = {s.index: target.add_stream_from_template(s) for s in streams}
            for packet in itertools.chain([key], packets):
                if packet.pts is None or packet.dts is None or not packet.size:
                    continue
                stream = packet.stream
                if stream.index == video.index:
                    # Decode order: stop at the first packet decoded at or after the end.
                    if float((packet.dts - origin) * stream.time_base) >= end:
                        break
                elif float(packet.pts * stream.time_base) - float(origin * video.time_base) >= end:
                    continue
                shift = round(origin_seconds / stream.time_base)
                if packet.pts < shift:
                    continue  # audio from before the keyframe
                packet.pts -= shift
                packet.dts -= shift
                packet.stream = outputs[stream.index]
                target.mux(packet)


def cut_reencode(
    path: str | os.PathLike, clips: Sequence[tuple[str | os.PathLike, int, int]], fps: float | None = None
) -> None:
    """Re-encodes each (out, start_frame, end_frame) clip, frames [start, end), as H.264 without audio.

    Frames are counted in decoding order from 0, as shot detection counts them, in one pass over
    the video. Width and height are cut to even numbers (yuv420p needs them). `fps` is the
    video's, read from the file when not given.
    """
    if not clips:
        return
    for out, start, end in clips:
        if not 0 <= start < end:
            raise ValueError(f"{out}: need 0 <= start_frame < end_frame, got {start} and {end}")
    fps = fps or io.probe(path).fps
    todo = collections.deque(sorted(clips, key=lambda clip: clip[1]))
    writers: list[tuple[VideoWriter, int]] = []  # open writers and their end frames
    last = max(end for _, _, end in clips)
    index = 0
    try:
        with io.decoded_frames(path) as (size, frames):
            width, height = size[0] - size[0] % 2, size[1] - size[1] % 2
            to_rgb = io.rgb_converter(size, None)
            for index, frame in enumerate(frames):
                while todo and todo[0][1] == index:
                    out, _, end = todo.popleft()
                    writers.append((VideoWriter(out, fps), end))
                if writers:
                    image = to_rgb(frame)[:height, :width]
                    for writer, _ in writers:
                        writer.write(image)
                for writer, end in [w for w in writers if w[1] == index + 1]:
                    writer.close()
                    writers.remove((writer, end))
                if index + 1 >= last:
                    break
        if todo or writers:
            raise io.CorruptVideoError(path, f"ends after {index + 1} frames, before the clips to cut do")
    finally:
        for writer, _ in writers:
            writer.abort()

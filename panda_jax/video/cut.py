"""Writing clips out of a long video: fast stream copy, or exact re-encode.

Stream copy moves the compressed packets unchanged, so it is as fast as reading the file but
only approximately cut: a clip starts at the last keyframe at or before its start, and ends
with every packet decoded before its end (with B-frames, a reference frame or two shown after
it). Re-encoding decodes exactly the clip's frames and encodes them again (H.264, no audio).
"""

from __future__ import annotations

import os
from pathlib import Path

import av

from panda_jax.video import io


def cut_copy(path: str | os.PathLike, out: str | os.PathLike, start: float, end: float) -> None:
    """Copies video and audio packets from the keyframe at or before `start` up to `end` (seconds)."""
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    with av.open(str(path)) as source:
        video = source.streams.video[0]
        streams = [video, *source.streams.audio[:1]]
        video_start = video.start_time or 0
        source.seek(video_start + int(start / video.time_base), stream=video, backward=True)
        try:
            with av.open(str(tmp), mode="w", container_options={"fflags": "+bitexact"}) as target:
                outputs = {s.index: target.add_stream_from_template(s) for s in streams}
                origin: dict[int, int] = {}  # first pts/dts written per stream, rebased to 0
                started = False
                for packet in source.demux(streams):
                    if packet.pts is None or packet.dts is None or not packet.size:
                        continue
                    stream = packet.stream
                    offset = stream.start_time or 0
                    if stream.index == video.index:
                        if not started and not packet.is_keyframe:
                            continue
                        started = True
                        # Decode order: stop at the first packet decoded at or after the end.
                        if float((packet.dts - offset) * stream.time_base) >= end:
                            break
                    elif not started or float((packet.pts - offset) * stream.time_base) >= end:
                        continue
                    first = origin.setdefault(stream.index, min(packet.dts, packet.pts))
                    packet.pts -= first
                    packet.dts -= first
                    packet.stream = outputs[stream.index]
                    target.mux(packet)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def cut_reencode(path: str | os.PathLike, out: str | os.PathLike, start_frame: int, end_frame: int) -> None:
    """Re-encodes exactly frames [start_frame, end_frame) as H.264 (no audio)."""
    info = io.probe(path)
    width, height = info.width - info.width % 2, info.height - info.height % 2
    frames = io.iter_frames(path, start=start_frame / info.fps, end=end_frame / info.fps)
    with io.VideoWriter(out, info.fps) as writer:
        for frame in frames:
            writer.write(frame.image[:height, :width])

"""Writing video: uint8 RGB frames encoded into a file, atomically."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from panda_jax.files import AtomicFile


class VideoWriter:
    """Encodes uint8 RGB frames into a video file (H.264 in mp4 by default), atomically.

    The frame size is taken from the first frame and frame i gets timestamp i / fps. Frames go
    to a temporary file renamed into place on a clean close, so a killed writer leaves no
    half-written video. x264 output is reproducible in content, not always to the byte: within
    one process it sometimes differs in a few bits.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        codec: str = "libx264",
        options: dict[str, str] | None = None,
        bit_rate: int | None = None,
        threads: int = 1,
    ):
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = codec
        self.options = {"crf": "18", "preset": "medium"} if options is None and codec == "libx264" else (options or {})
        self.bit_rate = bit_rate
        self.threads = threads
        # bitexact: no creation time or muxer version in the header.
        container_options = {"fflags": "+bitexact"}
        if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") and self.fps.denominator == 1:
            container_options["video_track_timescale"] = str(self.fps.numerator)  # stored pts == index
        self._file = AtomicFile(self.path)
        self.container = av.open(str(self._file.temporary), mode="w", container_options=container_options)
        self.stream = None
        self.count = 0

    def write(self, image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 [h, w, 3] RGB frame, got {image.dtype} {image.shape}")
        if self.stream is None:
            height, width = image.shape[:2]
            if width % 2 or height % 2:
                raise ValueError(f"{self.codec} with yuv420p needs even width and height, got {width}x{height}")
            self.stream = self.container.add_stream(self.codec, rate=self.fps, options=self.options)
            self.stream.width, self.stream.height = width, height
            self.stream.pix_fmt = "yuv420p"
            self.stream.time_base = 1 / self.fps
            self.stream.codec_context.time_base = 1 / self.fps
            if self.codec == "libx264":  # (threaded x264 output varies; mpeg2video's pts break)
                self.stream.codec_context.thread_count = self.threads
            if self.bit_rate:
                self.stream.bit_rate = self.bit_rate
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        frame.pts = self.count
        frame.time_base = 1 / self.fps  # else x264's rate control sees garbage timestamps
        self.container.mux(self.stream.encode(frame))
        self.count += 1

    def close(self) -> None:
        if self.stream is None:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written, so no video was made")
        self.container.mux(self.stream.encode(None))
        self.container.close()
        self._file.commit()

    def abort(self) -> None:
        self.container.close()
        self._file.discard()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

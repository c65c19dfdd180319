"""Decoding speed: panda_jax.video.io against OpenCV (PySceneDetect's backend) and plain PyAV.

Every stage starts by decoding, so this is the floor under splitting and dataset building.
Two workloads, on the real test clips and on a longer H.264 video made here:
  * stream every frame as RGB at 256 px wide (what shot detection analyses);
  * sample 8 frames uniformly (what captioning and training read per clip).

    python benchmarks/decode_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np

from panda_jax.data import testmedia
from panda_jax.video import io
from panda_jax.video.writer import VideoWriter

WIDTH = 256


def ours_stream(path: Path) -> int:
    return sum(1 for _ in io.iter_frames(path, size=(WIDTH, None)))


def opencv_stream(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        height = round(bgr.shape[0] * WIDTH / bgr.shape[1])
        cv2.cvtColor(cv2.resize(bgr, (WIDTH, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        count += 1
    capture.release()
    return count


def pyav_default_stream(path: Path) -> int:
    """PyAV as most scripts use it: default threading, full-size RGB, then cv2.resize."""
    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            height = round(rgb.shape[0] * WIDTH / rgb.shape[1])
            cv2.resize(rgb, (WIDTH, height), interpolation=cv2.INTER_AREA)
            count += 1
    return count


def ours_sample(path: Path) -> int:
    n = io.probe(path).num_frames
    return len(io.read_frames(path, np.linspace(0, n - 1, 8).round().astype(int)))


def opencv_sample(path: Path) -> int:
    """Seek with CAP_PROP_POS_FRAMES per frame, as many captioning scripts do."""
    capture = cv2.VideoCapture(str(path))
    n = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for index in np.linspace(0, n - 1, 8).round().astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, bgr = capture.read()
        if ok:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return len(frames)


def best_time(function: Callable[[Path], int], path: Path, repeats: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = function(path)
        times.append(time.perf_counter() - start)
    return min(times), count


def make_long_video(directory: Path, seconds: int = 60, fps: int = 30) -> Path:
    """A 640x360 H.264 video with moving content and a cut every 5 s."""
    path = directory / "long_640x360.mp4"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:360, 0:640]
    with VideoWriter(path, fps, options={"crf": "23", "preset": "veryfast", "g": "250"}) as writer:
        for i in range(seconds * fps):
            if i % (5 * fps) == 0:
                colors = rng.integers(0, 256, (2, 3))
            phase = i / fps
            blend = (0.5 + 0.5 * np.sin(x / 40.0 + phase * 3))[..., None]
            image = (colors[0] * blend + colors[1] * (1 - blend)).astype(np.uint8)
            cx = int(320 + 250 * np.sin(phase))
            image[150:210, cx - 30 : cx + 30] = 255
            writer.write(image)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        videos = {name: testmedia.fetch(name) for name in ("bikes", "bigbuckbunny", "city")}
        videos["synthetic 60s 640x360"] = make_long_video(Path(tmp))
        workloads = [
            ("stream @256w", ours_stream, [("opencv", opencv_stream), ("pyav default", pyav_default_stream)]),
            ("sample 8", ours_sample, [("opencv seek", opencv_sample)]),
        ]
        print(f"{'video':24s} {'workload':14s} {'ours (s)':>9s} {'fps':>7s}  peers: seconds (peer / ours)")
        for name, path in videos.items():
            info = io.probe(path)
            for workload, ours, peers in workloads:
                ours_s, count = best_time(ours, path, args.repeats)
                rate = f"{count / ours_s:7.0f}" if workload.startswith("stream") else f"{'':7s}"
                cells = []
                for peer_name, peer in peers:
                    peer_s, peer_count = best_time(peer, path, args.repeats)
                    cells.append(f"{peer_name} {peer_s:.3f} ({peer_s / ours_s:.2f}x, {peer_count} frames)")
                print(f"{name[:24]:24s} {workload:14s} {ours_s:9.3f} {rate}  " + "; ".join(cells))
            print(f"{'':24s} ({info.codec} {info.width}x{info.height}, {info.num_frames} frames)")


if __name__ == "__main__":
    main()

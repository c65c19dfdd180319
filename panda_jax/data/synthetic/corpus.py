"""Writing a whole corpus: sample, render and encode videos F..F+N-1 of a seed, in one or more
worker processes, then `videos.jsonl`; and `main`, the command line behind
`python -m panda_jax.data.synthetic`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tqdm
from absl import flags

from panda_jax import cli
from panda_jax.data.synthetic.render import write_video
from panda_jax.data.synthetic.sampling import check_args, sample_video_spec
from panda_jax.records import write_jsonl

log = logging.getLogger(__name__)


def _generate_video(out_dir: Path, seed: int, index: int, *, size: int, fps: int,
                    duration: float) -> dict[str, Any]:
    spec = sample_video_spec(seed, index, size=size, fps=fps, duration=duration)
    write_video(spec, out_dir / spec.path)
    return spec.record()


def generate_corpus(out_dir: str | os.PathLike, num_videos: int, seed: int, size: int = 128,
                    fps: int = 24, duration: float = 20.0, workers: int = 1, first_video: int = 0
                    ) -> list[dict[str, Any]]:
    """Writes `out_dir/videos/*.mp4` and `out_dir/videos.jsonl`; returns the records.

    Videos `first_video` … `first_video + num_videos - 1` of `seed`: corpora of one seed with
    ranges apart share no video (the demo's train, validation and test videos). They are made
    in `workers` processes; the output is the same for any worker count.
    """
    check_args(size, fps, duration)  # fail before starting any worker
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    make = functools.partial(_generate_video, out_dir, seed, size=size, fps=fps,
                             duration=duration)
    with contextlib.ExitStack() as stack:
        indices = range(first_video, first_video + num_videos)
        results: Iterator[dict[str, Any]] = map(make, indices)
        if workers > 1:
            # spawn, not fork: the caller may hold threads (JAX, x264) that fork would copy.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(make, indices)
        corpus = list(tqdm.tqdm(results, total=num_videos, desc="synthetic videos",
                                unit="video"))
    write_jsonl(out_dir / "videos.jsonl", corpus)
    return corpus


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "output folder; gets videos/ and videos.jsonl", flag_values=flag_values)
    flags.DEFINE_integer("num_videos", None, "how many videos", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("seed", None, "corpus seed; video i depends only on (seed, i)", flag_values=flag_values)
    flags.DEFINE_integer("first_video", None, "index of the first video (a corpus apart from videos 0..N-1 of the seed)",
                         lower_bound=0, flag_values=flag_values)  # fmt: skip
    flags.DEFINE_integer("workers", None, "worker processes; the output is the same for any number", lower_bound=1,
                         flag_values=flag_values)


USAGE = """Generate a grounded synthetic video corpus: H.264 videos of coloured, patterned discs with titles,
descriptions, noisy subtitles and ground-truth shots, events, captions and transitions.

    python -m panda_jax.data.synthetic --out DIR [--num_videos N] [--seed S] [--workers W]
    python -m panda_jax.data.synthetic --out DIR --config=corpus:small --config.size=96

Writes DIR/videos/*.mp4 and DIR/videos.jsonl (`videos` records with the ground truth)."""


def main(argv: Sequence[str] | None = None) -> None:
    command = cli.parse(
        argv, program="python -m panda_jax.data.synthetic", doc=USAGE, default_config="corpus",
        define=_define_flags, shorthands={name: name for name in ("out", "num_videos", "seed", "workers", "first_video")},
    )  # fmt: skip
    config = command.config
    if not config.out:
        command.fail("give the output folder: --out DIR")
    out = Path(config.out)
    began = time.perf_counter()
    corpus = generate_corpus(out, config.num_videos, config.seed, size=config.size,
                             fps=config.fps, duration=config.duration, workers=config.workers,
                             first_video=config.first_video)
    log.info("wrote %d videos (%d events, %d shots, %.1f min) to %s in %.1f s",
             len(corpus), sum(len(r["gt_events"]) for r in corpus),
             sum(len(r["gt_shots"]) for r in corpus),
             sum(r["duration"] for r in corpus) / 60, out / "videos.jsonl",
             time.perf_counter() - began)

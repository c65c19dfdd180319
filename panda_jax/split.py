"""Split long videos into semantically coherent clips: `python -m panda_jax.split`.

    python -m panda_jax.split talk.mp4 film.mkv --out runs/split
    python -m panda_jax.split --videos corpus/videos.jsonl --out runs/split --detector content \
        --preset panda70m --workers 2 --cut copy

For every video: detect shots (TransNetV2 by default), cut shots longer than 7 s into 5 s
pieces, embed two frames per shot and stitch shots into events (configs/split.py). Writes
`shots.jsonl` and `clips.jsonl` (the stage records of DESIGN.md) and `failures.jsonl`.

Each finished video is saved at once as a shard in `OUT/work/`, so a killed run resumes where
it stopped: re-running skips videos already split with the same settings and retries failures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import logging
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_collections
import tqdm

from panda_jax.data.records import read_jsonl, write_jsonl
from panda_jax.video import io
from panda_jax.video.cut import cut_copy, cut_reencode
from panda_jax.video.embedders import ColorHistogramEmbedder, FrameEmbedder
from panda_jax.video.shots import ShotDetector, split_long_shots
from panda_jax.video.stitch import StitchParams, embed_shots, stitch

log = logging.getLogger("panda_jax.split")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "split.py"
DETECTORS = ("transnetv2", "content")
CUT_MODES = ("copy", "reencode")


@dataclass(frozen=True)
class VideoInput:
    video_id: str
    path: Path


@dataclass(frozen=True)
class Settings:
    """What a shard was made with; a shard made otherwise is recomputed, not reused."""

    detector: str
    preset: str
    stitch: bool

    def as_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "preset": self.preset, "stitch": self.stitch}


def load_config(path: str | os.PathLike = DEFAULT_CONFIG) -> ml_collections.ConfigDict:
    """Runs a config file's `get_config()` (big_vision style)."""
    spec = importlib.util.spec_from_file_location("split_config", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_detector(name: str, config: ml_collections.ConfigDict) -> ShotDetector:
    if name == "content":
        from panda_jax.video.content_detector import ContentDetector

        return ContentDetector(**config.content)
    if name == "transnetv2":
        from panda_jax.video.transnetv2_detector import TransNetV2Detector

        return TransNetV2Detector(**config.transnetv2)
    raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")


def make_embedder(name: str) -> FrameEmbedder:
    if name == "color_histogram":
        return ColorHistogramEmbedder()
    raise ValueError(f"unknown frame embedder {name!r}")


def stitch_params(config: ml_collections.ConfigDict, preset: str) -> StitchParams:
    if preset not in config.presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(config.presets)}")
    limits = config.presets[preset]
    thresholds = config.thresholds[config.stitch.embedder]
    return StitchParams(
        transition=thresholds.transition,
        merge=thresholds.merge,
        static=thresholds.static,
        redundant=thresholds.redundant if limits.filter_redundant else None,
        min_seconds=limits.min_seconds,
        max_seconds=limits.max_seconds,
        trim_fraction=limits.trim_fraction,
    )


class Splitter:
    """Splits one video at a time; holds the detector and embedder, built once per process."""

    def __init__(self, settings: Settings, config: ml_collections.ConfigDict):
        self.settings = settings
        self.config = config
        self.detector = make_detector(settings.detector, config)
        self.embedder = make_embedder(config.stitch.embedder)
        self.params = stitch_params(config, settings.preset)

    def split(self, video: VideoInput) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Returns the video's `shots` record and its `clips` records."""
        info = io.probe(video.path)
        detected = self.detector.detect(video.path)
        num_frames = detected[-1][1] if detected else 0
        long_shots = self.config.long_shots
        shots = split_long_shots(detected, info.fps, long_shots.max_seconds, long_shots.piece_seconds)
        if self.settings.stitch and shots:
            embeddings = embed_shots(
                video.path,
                shots,
                self.embedder,
                image_size=self.config.stitch.image_size,
                positions=tuple(self.config.stitch.sample_positions),
                batch_shots=self.config.stitch.batch_shots,
            )
            spans = [(e.start_frame, e.end_frame, e.shot_count) for e in stitch(shots, embeddings, info.fps, self.params)]
        else:
            spans = [(start, end, 1) for start, end in shots]
        shots_record = {
            "video_id": video.video_id,
            "fps": info.fps,
            "num_frames": num_frames,
            "detector": self.settings.detector,
            "shots": [[start, end] for start, end in shots],
        }
        clips = [
            {
                "clip_id": f"{video.video_id}.{index:04d}",
                "video_id": video.video_id,
                "start": round(start / info.fps, 6),
                "end": round(end / info.fps, 6),
                "start_frame": start,
                "end_frame": end,
                "shot_count": shot_count,
            }
            for index, (start, end, shot_count) in enumerate(spans)
        ]
        return shots_record, clips


# One Splitter per worker process, made by the pool's initializer.
_splitter: Splitter | None = None


def _init_worker(settings: Settings, config: ml_collections.ConfigDict) -> None:
    global _splitter
    _splitter = Splitter(settings, config)


def _split_one(video: VideoInput) -> dict[str, Any]:
    """Splits a video into a shard record; a failure becomes a record too, so the run goes on."""
    assert _splitter is not None
    try:
        shots, clips = _splitter.split(video)
        return {"video_id": video.video_id, "path": str(video.path), "shots": shots, "clips": clips}
    except Exception as e:  # noqa: BLE001 - any failure of one video must not stop the others
        log.debug("%s failed:\n%s", video.path, traceback.format_exc())
        return {"video_id": video.video_id, "path": str(video.path), "error": f"{type(e).__name__}: {e}"}


def _shard_path(out_dir: Path, video_id: str) -> Path:
    return out_dir / "work" / f"{video_id}.jsonl"


def _finished_shard(out_dir: Path, video: VideoInput, settings: Settings) -> dict[str, Any] | None:
    path = _shard_path(out_dir, video.video_id)
    if not path.exists():
        return None
    (shard,) = read_jsonl(path)
    if shard.get("settings") != settings.as_dict() or "error" in shard:
        return None
    return shard


def _cut_clips(out_dir: Path, video: VideoInput, clips: list[dict[str, Any]], mode: str) -> None:
    folder = out_dir / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        if mode == "copy":
            target = folder / f"{clip['clip_id']}{video.path.suffix}"
            if not target.exists():
                cut_copy(video.path, target, clip["start"], clip["end"])
        else:
            target = folder / f"{clip['clip_id']}.mp4"
            if not target.exists():
                cut_reencode(video.path, target, clip["start_frame"], clip["end_frame"])


def run(
    videos: Sequence[VideoInput],
    out_dir: str | os.PathLike,
    settings: Settings,
    config: ml_collections.ConfigDict,
    workers: int = 1,
    cut: str | None = None,
) -> dict[str, int]:
    """Splits `videos`, resuming from shards in `out_dir/work`; returns counts for a summary."""
    out_dir = Path(out_dir)
    ids = [v.video_id for v in videos]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"video ids must be unique, these repeat: {', '.join(duplicates[:10])}")

    shards = {v.video_id: _finished_shard(out_dir, v, settings) for v in videos}
    todo = [v for v in videos if shards[v.video_id] is None]
    log.info("%d videos: %d already split, %d to do", len(videos), len(videos) - len(todo), len(todo))

    def save(shard: dict[str, Any]) -> None:
        shard["settings"] = settings.as_dict()
        write_jsonl(_shard_path(out_dir, shard["video_id"]), [shard])
        shards[shard["video_id"]] = shard
        if "error" in shard:
            log.warning("%s failed: %s", shard["path"], shard["error"])

    progress = tqdm.tqdm(total=len(todo), desc="splitting", unit="video", disable=not todo)
    if workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")  # JAX and decoder threads do not survive fork
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(settings, config)
        ) as pool:
            for shard in pool.map(_split_one, todo):
                save(shard)
                progress.update()
    elif todo:
        _init_worker(settings, config)
        for video in todo:
            save(_split_one(video))
            progress.update()
    progress.close()

    done = [shards[v.video_id] for v in videos]
    ok = [s for s in done if s is not None and "error" not in s]
    failed = [s for s in done if s is not None and "error" in s]
    if cut:
        by_id = {v.video_id: v for v in videos}
        for shard in tqdm.tqdm(ok, desc=f"cutting ({cut})", unit="video"):
            _cut_clips(out_dir, by_id[shard["video_id"]], shard["clips"], cut)
    write_jsonl(out_dir / "shots.jsonl", (s["shots"] for s in ok))
    clips = write_jsonl(out_dir / "clips.jsonl", (c for s in ok for c in s["clips"]))
    write_jsonl(out_dir / "failures.jsonl", ({"video_id": s["video_id"], "path": s["path"], "error": s["error"]} for s in failed))
    return {"videos": len(videos), "split": len(ok), "failed": len(failed), "clips": clips}


def read_video_list(videos_jsonl: Path) -> list[VideoInput]:
    """Reads a `videos` record file; relative paths are relative to the file's folder."""
    inputs = []
    for record in read_jsonl(videos_jsonl):
        if "video_id" not in record or "path" not in record:
            raise ValueError(f"{videos_jsonl}: every record needs video_id and path, got keys {sorted(record)}")
        inputs.append(VideoInput(str(record["video_id"]), videos_jsonl.parent / record["path"]))
    return inputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m panda_jax.split",
        description=__doc__.split("\n\n")[0] + " Writes OUT/shots.jsonl, OUT/clips.jsonl and OUT/failures.jsonl.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("videos", nargs="*", type=Path, help="video files; the video id is the file stem")
    parser.add_argument("--videos", dest="videos_jsonl", type=Path, metavar="videos.jsonl",
                        help="a `videos` record file instead of (or as well as) file arguments")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--detector", choices=DETECTORS, default=None,
                        help="shot detector (default from the config: transnetv2)")
    parser.add_argument("--preset", default=None, help="stitching preset: default or panda70m (default: default)")
    parser.add_argument("--no-stitch", action="store_true", help="clips are the detected shots, not stitched events")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    parser.add_argument("--cut", choices=CUT_MODES, default=None,
                        help="also write clip files to OUT/clips: 'copy' (fast, starts at the keyframe "
                             "before each clip) or 'reencode' (frame-exact H.264, no audio)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="split config file (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step, with tracebacks of failures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")

    videos = [VideoInput(p.stem, p) for p in args.videos]
    if args.videos_jsonl:
        try:
            videos += read_video_list(args.videos_jsonl)
        except (OSError, ValueError) as e:
            parser.error(str(e))
    if not videos:
        parser.error("give video files or --videos videos.jsonl")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    config = load_config(args.config)
    settings = Settings(
        detector=args.detector or config.detector,
        preset=args.preset or config.preset,
        stitch=not args.no_stitch,
    )
    if settings.preset not in config.presets:
        parser.error(f"unknown preset {settings.preset!r}; choose from {', '.join(config.presets)}")

    began = time.perf_counter()
    try:
        summary = run(videos, args.out, settings, config, workers=args.workers, cut=args.cut)
    except ValueError as e:
        parser.error(str(e))
    print(
        f"split {summary['split']}/{summary['videos']} videos into {summary['clips']} clips "
        f"({summary['failed']} failed, see {args.out / 'failures.jsonl'}) in {time.perf_counter() - began:.1f} s"
    )
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

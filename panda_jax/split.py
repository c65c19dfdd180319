"""Split long videos into semantically coherent clips: `python -m panda_jax.split`.

    python -m panda_jax.split talk.mp4 film.mkv --out runs/split
    python -m panda_jax.split --videos corpus/videos.jsonl --out runs/split --workers 2 --cut copy
    python -m panda_jax.split film.mkv --out runs/paper --config=split:panda70m --detector content
    python -m panda_jax.split film.mkv --out runs/long --config.long_shots.max_seconds=10

For every video, in one decoding pass: detect shots (TransNetV2 by default), cut shots longer
than 7 s into 5 s pieces, and take two frames per piece; then embed them and stitch pieces into
events (`--config=split[:VARIANT]`, configs/split.py; any field can be set with
`--config.FIELD=VALUE`, see --help). Writes `shots.jsonl`, `clips.jsonl` and `failures.jsonl` (the stage
records of panda_jax.records), and with `--cut` one file per clip in `OUT/clips/`.

Videos are shards of the shared stage runner (panda_jax.stages): each finished video is saved
at once in `OUT/work/split/`, so a killed run resumes where it stopped, and a video is split
again whenever the config, the file or this code's version changed. A video that fails is
recorded in `failures.jsonl` and the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags

from panda_jax import cli, stages
from panda_jax.records import Clip, Problem, Shots, Video, clip_id, ids_from_files, read_records, unique_videos
from panda_jax.video import io
from panda_jax.video.cut import cut_copy, cut_reencode
from panda_jax.video.embedders import ColorHistogramEmbedder, FrameEmbedder
from panda_jax.video.scan import StitchSampling, scan
from panda_jax.video.shots import ShotDetector
from panda_jax.video.stitch import StitchParams, stitch

log = logging.getLogger("panda_jax.split")

DETECTORS = ("transnetv2", "content")
CUT_MODES = ("copy", "reencode")
# Containers a stream copy keeps; a source with another suffix (or none) is copied into Matroska.
COPY_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".m4v", ".ts", ".flv")


def make_detector(config: ml_collections.ConfigDict) -> ShotDetector:
    if config.detector == "content":
        from panda_jax.video.content_detector import ContentDetector

        return ContentDetector(**config.content)
    if config.detector == "transnetv2":
        from panda_jax.video.transnetv2_detector import TransNetV2Detector

        return TransNetV2Detector(**config.transnetv2)
    raise ValueError(f"unknown detector {config.detector!r}; choose from {', '.join(DETECTORS)}")


def make_embedder(name: str) -> FrameEmbedder:
    if name == "color_histogram":
        return ColorHistogramEmbedder()
    raise ValueError(f"unknown frame embedder {name!r}")


def stitch_params(config: ml_collections.ConfigDict) -> StitchParams:
    if config.preset not in config.presets:
        raise ValueError(f"unknown preset {config.preset!r}; choose from {', '.join(config.presets)}")
    limits = config.presets[config.preset]
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


class SplitStage:
    """The split stage for panda_jax.stages: one shard per video, giving its shots and clips."""

    name = "split"
    version = 2  # 2: one decoding pass, frame-exact re-encoded clips, real start of copied clips
    outputs = (Shots.KIND, Clip.KIND)

    def __init__(self, config: ml_collections.ConfigDict):
        if config.cut not in ("", *CUT_MODES):
            raise ValueError(f"unknown cut mode {config.cut!r}; choose from {', '.join(CUT_MODES)}")
        stitch_params(config)  # a bad preset fails here, before any video
        self.config = config
        self._detector: ShotDetector | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_detector": None}  # workers build their own detector

    def settings(self) -> dict[str, Any]:
        return stages.output_settings(self.config)

    def setup(self) -> None:
        if self._detector is None:
            self._detector = make_detector(self.config)
            self._sampling = StitchSampling(
                make_embedder(self.config.stitch.embedder),
                tuple(self.config.stitch.sample_positions),
                self.config.stitch.image_size,
                self.config.stitch.batch_shots,
            )
            self._params = stitch_params(self.config)

    def process(self, shard: stages.Shard, out_dir: Path) -> stages.ShardResult:
        video_id, path = shard.key, Path(shard.payload["path"])
        info = io.probe(path)
        long_shots = (self.config.long_shots.max_seconds, self.config.long_shots.piece_seconds)
        stitching = self._sampling if self.config.stitch.enabled else None
        found = scan(path, self._detector, info.fps, long_shots, stitching)
        if info.num_frames != found.num_frames:
            log.warning("%s: the container says %d frames but %d decode (a truncated or damaged file?); "
                        "split as %d frames", path, info.num_frames, found.num_frames, found.num_frames)
        shots = Shots(
            video_id=video_id, fps=info.fps, num_frames=found.num_frames, detector=self._detector.name,
            shots=tuple(found.shots), container_frames=info.num_frames,
        )
        if stitching is not None and found.shots:
            events = stitch(found.shots, found.embeddings, info.fps, self._params)
            clips = span_clips(video_id, info.fps, [(e.start_frame, e.end_frame, e.shot_count) for e in events])
        else:
            clips = shot_clips(shots)
        if self.config.cut:
            clips = self._cut(path, clips, out_dir, info.fps)
        files = tuple(c.file for c in clips if c.file)
        return stages.ShardResult(records={Shots.KIND: [shots], Clip.KIND: clips}, files=files)

    def _cut(self, path: Path, clips: list[Clip], out_dir: Path, fps: float) -> list[Clip]:
        """Writes the clip files; records where each file is and the source time it starts at."""
        if self.config.cut == "reencode":
            files = [f"clips/{clip.clip_id}.mp4" for clip in clips]
            cut_reencode(path, [(out_dir / f, c.start_frame, c.end_frame) for f, c in zip(files, clips)], fps)
            starts = [clip.start for clip in clips]
        else:
            suffix = path.suffix.lower() if path.suffix.lower() in COPY_SUFFIXES else ".mkv"
            files = [f"clips/{clip.clip_id}{suffix}" for clip in clips]
            starts = [round(s, 6) for s in cut_copy(path, [(out_dir / f, c.start, c.end) for f, c in zip(files, clips)])]
        return [dataclasses.replace(c, file=f, file_start=s) for c, f, s in zip(clips, files, starts)]


def span_clips(video_id: str, fps: float, spans: Sequence[tuple[int, int, int]]) -> list[Clip]:
    """The clip records of a video's (start frame, end frame, shot count) spans, in order."""
    return [
        Clip(clip_id=clip_id(video_id, index), video_id=video_id, start=round(start / fps, 6), end=round(end / fps, 6),
             start_frame=start, end_frame=end, shot_count=count)
        for index, (start, end, count) in enumerate(spans)
    ]  # fmt: skip


def shot_clips(shots: Shots) -> list[Clip]:
    """The clips of a split without stitching (`--nostitch`, uncut): one per detected shot. A stitched run's
    `shots.jsonl` holds the same shots, so its unstitched clips need no second pass over the video."""
    return span_clips(shots.video_id, shots.fps, [(start, end, 1) for start, end in shots.shots])


def video_shard(video: Video) -> stages.Shard:
    path = str(Path(video.path).absolute())
    return stages.Shard(key=video.video_id, payload={"path": path}, sources=(path,))


def run(
    videos: Sequence[Video],
    out_dir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    workers: int = 1,
    input_problems: Sequence[Problem] = (),
) -> stages.Summary:
    """Splits `videos` into OUT (resuming, see the module doc); returns the runner's summary."""
    return stages.run(SplitStage(config), [video_shard(v) for v in videos], out_dir, workers, input_problems)


def read_video_list(videos_jsonl: Path, problems: list[Problem]) -> list[Video]:
    """The `videos` records of a file, paths made relative to its folder; bad lines go to `problems`."""
    return [
        dataclasses.replace(video, path=str(videos_jsonl.parent / video.path))
        for video in read_records(videos_jsonl, Video, problems)
    ]


def videos_from_files(paths: Sequence[Path]) -> list[Video]:
    """Videos named after their file stems; files sharing a stem keep their suffix (`x.mp4`, `x.avi`)."""
    return [Video(video_id=video_id, path=str(p)) for p, video_id in zip(paths, ids_from_files(paths))]


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "output folder (config field `out`)", flag_values=flag_values)
    flags.DEFINE_string("videos", None, "a `videos` record file (videos.jsonl) instead of, or as well as, video files",
                        flag_values=flag_values)
    flags.DEFINE_enum("detector", None, DETECTORS, "shot detector (config field `detector`)", flag_values=flag_values)
    flags.DEFINE_string("preset", None, "stitching preset, default or panda70m (config field `preset`)",
                        flag_values=flag_values)
    flags.DEFINE_bool("stitch", None, "with --nostitch the clips are the detected shots (config field `stitch.enabled`)",
                      flag_values=flag_values)
    flags.DEFINE_enum("cut", None, CUT_MODES, "also write clip files to OUT/clips: 'copy' (fast; starts at the keyframe "
                      "at or before each clip, recorded as file_start) or 'reencode' (frame-exact H.264, no audio)",
                      flag_values=flag_values)
    flags.DEFINE_integer("workers", None, "worker processes (config field `workers`)", lower_bound=1,
                         flag_values=flag_values)
    cli.define_distributed(flag_values)


SHORTHANDS = {"out": "out", "detector": "detector", "preset": "preset", "stitch": "stitch.enabled", "cut": "cut",
              "workers": "workers"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    command = cli.parse(argv, program="python -m panda_jax.split", doc=__doc__, default_config="split",
                        define=_define_flags, shorthands=SHORTHANDS)
    config, flag_values, fail = command.config, command.flags, command.fail
    if not config.out:
        fail("give the output folder: --out DIR")
    problems: list[Problem] = []
    videos = videos_from_files([Path(a) for a in command.args])
    if flag_values["videos"].value:
        try:
            videos += read_video_list(Path(flag_values["videos"].value), problems)
        except (OSError, ValueError) as e:
            fail(str(e))
    videos = unique_videos(videos, problems)
    if not videos and not problems:
        fail("give video files or --videos videos.jsonl")
    if config.workers < 1:
        fail("workers must be at least 1")
    try:
        stage = SplitStage(config)
    except ValueError as e:
        fail(str(e))
    cli.start_distributed(flag_values)

    out = Path(config.out)
    began = time.perf_counter()
    summary = stages.run(stage, [video_shard(v) for v in videos], out, config.workers, problems)
    failed = summary.failed + len(problems)
    if not summary.merged:  # another process of a multi-host run writes the merged records
        print(f"split this process's {summary.shards} videos ({summary.failed} failed) in {time.perf_counter() - began:.1f} s")
        return 1 if failed else 0
    mismatched = [s for s in read_records(out / "shots.jsonl", Shots) if s.container_frames != s.num_frames]
    print(
        f"split {summary.shards - summary.failed}/{summary.shards + len(problems)} videos "
        f"({summary.reused} already done) in {time.perf_counter() - began:.1f} s; "
        f"{out / 'clips.jsonl'} holds {summary.merged.get(Clip.KIND, 0)} clips of "
        f"{summary.merged.get(Shots.KIND, 0)} videos"
    )
    if mismatched:
        print(f"{len(mismatched)} videos decoded another number of frames than their container states "
              f"(container_frames in {out / 'shots.jsonl'}): {', '.join(s.video_id for s in mismatched[:5])}")
    if failed:
        print(f"{failed} failed: see {out / 'failures.jsonl'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

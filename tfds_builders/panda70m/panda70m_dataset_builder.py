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

Until the caption teachers exist, captions come from the synthetic ground truth (`sample`),
from `captions.jsonl` / `selection.jsonl` records in the manual dir (`local`) or from the
official CSV (`official`, whose clips are cut already and are not split again); the feature
`caption_source` says which. Split quality (`max_running_lpips`) is computed when the config
names LPIPS weights (`lpips_alexnet`, `lpips_heads`), else taken from the split records or left
at -1. Under Beam, one video is one unit of parallel work.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from panda_jax import split
from panda_jax.data import official, synthetic, testmedia
from panda_jax.data.records import read_jsonl
from panda_jax.data.subtitles import SUFFIXES, SubtitleError, overlapping_text, read_subtitles
from panda_jax.models import lpips
from panda_jax.video import io, metrics
from panda_jax.video.sampling import uniform_indices

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".m4v")
UNKNOWN = -1.0  # matching_score / max_running_lpips / teacher score when not computed

_MANUAL_INSTRUCTIONS = """\
config `local`: put in the manual dir either a `videos.jsonl` (DESIGN.md `videos` records,
paths relative to it) or video files with optional sidecars `<stem>.json` ({"title": ...,
"description": ...}) and `<stem>.srt` / `.vtt` / `.ass` / `.ssa`. Optional: `captions.jsonl`,
`selection.jsonl` (caption stage records) and `split/clips.jsonl` (split records to reuse).
config `official`: exactly one official Panda-70M CSV in the manual dir, beside the shard
folders that video2dataset (`--output_format files`) downloaded into it.
"""


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
    # Split quality: with both files (a torchvision AlexNet state dict and the lpips v0.1 heads,
    # .safetensors or .pth), every clip gets its Max Running LPIPS; otherwise it stays -1.
    lpips_alexnet: str = ""
    lpips_heads: str = ""


@dataclasses.dataclass(frozen=True)
class VideoJob:
    """One video and everything its examples need; the unit of (Beam) parallel work."""

    video_id: str
    path: str
    title: str = ""
    description: str = ""
    subtitles: tuple[dict[str, Any], ...] = ()
    # Synthetic ground-truth events in seconds: ({start, end, caption}, ...).
    events: tuple[dict[str, Any], ...] = ()
    # Split records to reuse instead of splitting again; None splits the video.
    clips: tuple[dict[str, Any], ...] | None = None


@dataclasses.dataclass(frozen=True)
class ClipCaptions:
    """Caption stage records of a manual dir, by clip id."""

    captions: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    selection: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """What the workers need besides the video: plain data, so Beam can pickle it."""

    work_dir: str
    num_frames: int
    image_size: int
    detector: str
    preset: str
    captions: ClipCaptions = dataclasses.field(default_factory=ClipCaptions)
    lpips_weights: tuple[str, str] | None = None  # (AlexNet, heads) paths


def sample_indices(start_frame: int, end_frame: int, num_frames: int) -> list[int]:
    """`num_frames` frame indices spread uniformly over [start_frame, end_frame)."""
    return (start_frame + uniform_indices(max(end_frame - start_frame, 1), num_frames)).tolist()


def _split_clips(job: VideoJob, settings: BuildSettings) -> list[dict[str, Any]] | None:
    """Splits the video with the split CLI's `run`; None when the video failed."""
    out = Path(settings.work_dir) / "split" / job.video_id
    split_settings = split.Settings(detector=settings.detector, preset=settings.preset, stitch=True)
    summary = split.run([split.VideoInput(job.video_id, Path(job.path))], out, split_settings, split.load_config())
    if summary["failed"]:
        (failure,) = read_jsonl(out / "failures.jsonl")
        log.warning("skipping %s: %s (recorded in %s)", job.path, failure["error"], out / "failures.jsonl")
        return None
    return list(read_jsonl(out / "clips.jsonl"))


def _ground_truth_caption(job: VideoJob, start: float, end: float) -> str:
    """The caption of the synthetic event overlapping the clip most."""
    overlaps = [(min(end, e["end"]) - max(start, e["start"]), e["caption"]) for e in job.events]
    best = max(overlaps, default=(0.0, ""))
    return best[1] if best[0] > 0 else ""


def _captions(job: VideoJob, clip: dict[str, Any], records: ClipCaptions) -> dict[str, Any]:
    """caption, caption_source, matching_score and teacher_captions of one clip.

    The first that exists wins: the clip's own official caption, a selection record, a caption
    record (the first teacher's), the synthetic ground truth; else an empty caption, source "none".
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
def _lpips_model(alexnet: str, heads: str) -> lpips.LPIPS:
    """Loaded once per process (each Beam worker loads its own)."""
    return lpips.load(alexnet, heads)


def _split_quality(job: VideoJob, clips: list[dict[str, Any]], settings: BuildSettings) -> list[float]:
    """Max Running LPIPS of each clip; UNKNOWN where not computed."""
    if settings.lpips_weights is None:
        return [UNKNOWN] * len(clips)
    model = _lpips_model(*settings.lpips_weights)
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


def _read_sidecar_metadata(video: Path) -> dict[str, str]:
    sidecar = video.with_suffix(".json")
    if not sidecar.exists():
        return {}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring unreadable metadata %s: %s", sidecar, e)
        return {}
    return {k: str(meta.get(k, "")) for k in ("title", "description")}


def _read_sidecar_subtitles(video: Path) -> list[dict[str, Any]]:
    for suffix in SUFFIXES:
        path = video.with_suffix(suffix)
        if path.exists():
            try:
                return read_subtitles(path)
            except (OSError, UnicodeDecodeError, SubtitleError) as e:
                log.warning("ignoring unreadable subtitles %s: %s", path, e)
    return []


def local_jobs(manual_dir: Path) -> list[VideoJob]:
    """The videos of a `local` manual dir, with their metadata and any split records to reuse."""
    clips_file = manual_dir / "split" / "clips.jsonl"
    reuse: dict[str, list[dict[str, Any]]] = {}
    if clips_file.exists():
        for clip in read_jsonl(clips_file):
            reuse.setdefault(clip["video_id"], []).append(clip)
    jobs = []
    if (manual_dir / "videos.jsonl").exists():
        for record in read_jsonl(manual_dir / "videos.jsonl"):
            video_id = str(record["video_id"])
            jobs.append(VideoJob(
                video_id=video_id,
                path=str(manual_dir / record["path"]),
                title=record.get("title", ""),
                description=record.get("description", ""),
                subtitles=tuple(record.get("subtitles", ())),
                clips=tuple(reuse[video_id]) if video_id in reuse else None,
            ))
        return jobs
    videos = sorted(p for p in manual_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(
            f"{manual_dir} has no videos.jsonl and no video files ({', '.join(VIDEO_SUFFIXES)}).\n{_MANUAL_INSTRUCTIONS}"
        )
    for video in videos:
        meta = _read_sidecar_metadata(video)
        jobs.append(VideoJob(
            video_id=video.stem,
            path=str(video),
            title=meta.get("title", ""),
            description=meta.get("description", ""),
            subtitles=tuple(_read_sidecar_subtitles(video)),
            clips=tuple(reuse[video.stem]) if video.stem in reuse else None,
        ))
    return jobs


def local_captions(manual_dir: Path) -> ClipCaptions:
    """`captions.jsonl` and `selection.jsonl` of a manual dir, by clip id (both optional)."""
    captions: dict[str, list[dict[str, Any]]] = {}
    if (manual_dir / "captions.jsonl").exists():
        for record in read_jsonl(manual_dir / "captions.jsonl"):
            captions.setdefault(record["clip_id"], []).append(record)
    selection = {}
    if (manual_dir / "selection.jsonl").exists():
        selection = {r["clip_id"]: r for r in read_jsonl(manual_dir / "selection.jsonl")}
    return ClipCaptions(captions, selection)


def official_jobs(manual_dir: Path) -> list[VideoJob]:
    """The clips of the official CSV in `manual_dir` that video2dataset downloaded there, one job per file.

    Missing, failed and malformed clips are counted by `official.join`, logged and skipped.
    """
    csvs = sorted(manual_dir.glob("*.csv"))
    if len(csvs) != 1:
        raise FileNotFoundError(
            f"config `official` needs exactly one Panda-70M CSV in {manual_dir}, found {len(csvs)}: "
            f"{', '.join(p.name for p in csvs) or 'none'}"
        )
    joined, report = official.join(csvs[0], manual_dir)
    log.info("official join: %s", report.summary())
    for problem in report.problems:
        log.warning("skipped CSV line %d (%s): %s", problem.line, problem.video_id, problem.reason)
    by_file: dict[Path, list[Any]] = {}
    for item in joined:
        by_file.setdefault(item.path, []).append(item)
    return [
        VideoJob(
            video_id=items[0].clip.video_id,
            path=str(path),
            clips=tuple(
                {
                    "clip_id": j.clip.clip_id, "video_id": j.clip.video_id,
                    "start": j.clip.start, "end": j.clip.end, "file_start": j.start, "file_end": j.end,
                    "caption": j.clip.caption, "matching_score": j.clip.matching_score,
                }
                for j in items
            ),
        )
        for path, items in by_file.items()
    ]


def sample_jobs(config: Panda70mConfig, work_dir: Path) -> list[VideoJob]:
    """Generates (or reuses) the synthetic corpus and adds cityCC0.mpg."""
    corpus = work_dir / "synthetic"
    records_file = corpus / "videos.jsonl"
    records = list(read_jsonl(records_file)) if records_file.exists() else []
    if len(records) != config.sample_videos:
        records = synthetic.generate_corpus(
            corpus, config.sample_videos, config.sample_seed,
            size=config.sample_video_size, duration=config.sample_duration,
        )
    jobs = [
        VideoJob(
            video_id=r["video_id"],
            path=str(corpus / r["path"]),
            title=r["title"],
            description=r["description"],
            subtitles=tuple(r["subtitles"]),
            events=tuple(
                {"start": e["start_frame"] / r["fps"], "end": e["end_frame"] / r["fps"], "caption": e["caption"]}
                for e in r["gt_events"]
            ),
        )
        for r in records
    ]
    if config.sample_include_city:
        jobs.append(VideoJob(video_id="cityCC0", path=str(testmedia.fetch("city")), title="cityCC0"))
    return jobs


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


def _lpips_weights(config: Panda70mConfig) -> tuple[str, str] | None:
    if bool(config.lpips_alexnet) != bool(config.lpips_heads):
        raise ValueError(
            f"config {config.name!r}: split quality needs both lpips_alexnet and lpips_heads "
            f"(got {config.lpips_alexnet!r} and {config.lpips_heads!r}); set both or neither"
        )
    if not config.lpips_alexnet:
        return None
    for path in (config.lpips_alexnet, config.lpips_heads):
        if not Path(path).is_file():
            raise FileNotFoundError(f"config {config.name!r}: LPIPS weights {path} not found")
    return (config.lpips_alexnet, config.lpips_heads)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Panda-70M-style captioned clips made by the panda-jax stages."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Split by panda_jax.split; captions from ground truth or manual records."}
    # `tfds build panda70m` without `--config` builds every config listed here, and only `sample`
    # builds without a manual dir; `local` and `official` are found by name (get_builder_config).
    BUILDER_CONFIGS = [SAMPLE_CONFIG]
    DEFAULT_CONFIG_NAME = "sample"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS

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
        captions = ClipCaptions()
        if config.source == "sample":
            jobs = sample_jobs(config, work_dir)
        elif config.source == "local":
            jobs = local_jobs(Path(dl_manager.manual_dir))
            captions = local_captions(Path(dl_manager.manual_dir))
        elif config.source == "official":
            jobs = official_jobs(Path(dl_manager.manual_dir))
        else:
            raise ValueError(f"config {config.name!r} has unknown source {config.source!r}; use sample, local or official")
        settings = BuildSettings(
            work_dir=str(work_dir), num_frames=config.num_frames, image_size=config.image_size,
            detector=config.detector, preset=config.preset, captions=captions, lpips_weights=_lpips_weights(config),
        )
        log.info("panda70m/%s: %d videos, stage records in %s", config.name, len(jobs), work_dir)
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

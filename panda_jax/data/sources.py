"""Where the dataset's videos come from: a folder or `videos.jsonl` of your own, the official CSV, the sample.

Each adapter turns its source into `VideoJob`s, one per video, the unit of (Beam) parallel
work of the TFDS builder. Bad input never ends a build: an unreadable sidecar, subtitle file,
record line or CSV row is a warning naming the file (and line), that item is skipped, and it
is appended to the caller's `problems` so that the build can count them at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from panda_jax.data import official, synthetic, testmedia
from panda_jax.data.subtitles import SUFFIXES, SubtitleError, read_subtitles
from panda_jax.records import (
    Caption, Clip, Problem, RecordError, Selection, Video, ids_from_files, read_records, unique_videos,
)

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".m4v")
CAPTIONS_FILE = "captions.jsonl"  # in the caption stage's output folder
SELECTION_FILE = "selection.jsonl"  # in the select stage's output folder

MANUAL_INSTRUCTIONS = """\
config `local`: put in the manual dir either a `videos.jsonl` (`videos` records, paths
relative to it) or video files with optional sidecars `<stem>.json` ({"title": ...,
"description": ...}) and `<stem>.srt` / `.vtt` / `.ass` / `.ssa`. Optional: `split/clips.jsonl`
(split records to reuse), and `captions.jsonl` / `selection.jsonl` (caption and select stage
records) unless the config names the stages' output folders (`captions_dir`, `selection_dir`).
config `official`: exactly one official Panda-70M CSV in the manual dir, beside the shard
folders that video2dataset (`--output_format files`) downloaded into it.
"""


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
    """Caption and select stage records by clip id; each clip's captions in the order of their file."""

    captions: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    selection: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _skip(problems: list[Problem], source: Path | str, item_id: str, reason: str) -> None:
    log.warning("skipping %s: %s (%s)", item_id, reason, source)
    problems.append(Problem(str(source), item_id, reason))


def _sidecar_metadata(video: Path) -> dict[str, str]:
    """Title and description from `<stem>.json`; raises ValueError saying what is wrong with it."""
    sidecar = video.with_suffix(".json")
    if not sidecar.exists():
        return {}
    try:
        meta = json.loads(sidecar.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{sidecar} is not a readable UTF-8 JSON file ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{sidecar} holds a JSON {type(meta).__name__}, not an object with title and description")
    fields = {k: meta.get(k, "") for k in ("title", "description")}
    wrong = [k for k, v in fields.items() if not isinstance(v, str)]
    if wrong:
        raise ValueError(f"{sidecar}: {', '.join(wrong)} must be a string")
    return fields


def _sidecar_subtitles(video: Path) -> list[dict[str, Any]]:
    """Lines of the first `<stem>.srt/.vtt/.ass/.ssa`; raises ValueError when it cannot be read."""
    for suffix in SUFFIXES:
        path = video.with_suffix(suffix)
        if path.exists():
            try:
                return read_subtitles(path)
            except (OSError, UnicodeDecodeError, SubtitleError) as e:
                raise ValueError(f"{path} cannot be read as subtitles ({e})") from None
    return []


def _reusable_clips(manual_dir: Path, problems: list[Problem]) -> dict[str, list[dict[str, Any]]]:
    clips_file = manual_dir / "split" / "clips.jsonl"
    reuse: dict[str, list[dict[str, Any]]] = {}
    if clips_file.exists():
        for clip in read_records(clips_file, Clip, problems):
            reuse.setdefault(clip.video_id, []).append(clip.to_dict())
    return reuse


def local_jobs(manual_dir: Path, problems: list[Problem]) -> list[VideoJob]:
    """The videos of a `local` manual dir, with their metadata and any split records to reuse."""
    reuse = _reusable_clips(manual_dir, problems)
    videos_file = manual_dir / "videos.jsonl"
    if videos_file.exists():
        jobs = []
        for video in unique_videos(read_records(videos_file, Video, problems), problems):
            jobs.append(VideoJob(
                video_id=video.video_id,
                path=str(manual_dir / video.path),
                title=video.title,
                description=video.description,
                subtitles=video.subtitles,
                clips=tuple(reuse[video.video_id]) if video.video_id in reuse else None,
            ))
        return jobs
    videos = sorted(p for p in manual_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(
            f"{manual_dir} has no videos.jsonl and no video files ({', '.join(VIDEO_SUFFIXES)}).\n{MANUAL_INSTRUCTIONS}"
        )
    jobs = []
    for video, video_id in zip(videos, ids_from_files(videos)):
        try:
            meta, subtitles = _sidecar_metadata(video), _sidecar_subtitles(video)
        except ValueError as e:
            _skip(problems, video, video_id, str(e))
            continue
        jobs.append(VideoJob(
            video_id=video_id,
            path=str(video),
            title=meta.get("title", ""),
            description=meta.get("description", ""),
            subtitles=tuple(subtitles),
            clips=tuple(reuse[video_id]) if video_id in reuse else None,
        ))
    return jobs


def _record_file(directory: str, name: str, command: str, fallback: Path | None) -> Path | None:
    """`directory/name`, which must exist; without a directory, `fallback/name` if there."""
    if directory:
        path = Path(directory) / name
        if not path.is_file():
            raise FileNotFoundError(f"{name} is missing from {directory} ({path}); `{command}` makes it")
        return path
    if fallback is not None and (fallback / name).is_file():
        return fallback / name
    return None


def caption_records(captions_dir: str, selection_dir: str, fallback: Path | None, problems: list[Problem]) -> ClipCaptions:
    """The `captions` records of the caption stage's folder and the `selection` records of the select
    stage's, by clip id; a folder left empty is looked for in `fallback` (the manual dir), else has none.
    Raises FileNotFoundError, before any work, for a named folder without its file."""
    captions_file = _record_file(captions_dir, CAPTIONS_FILE, "python -m panda_jax.caption --out DIR", fallback)
    selection_file = _record_file(selection_dir, SELECTION_FILE, "python -m panda_jax.select --out DIR", fallback)
    captions: dict[str, list[dict[str, Any]]] = {}
    if captions_file is not None:
        for record in read_records(captions_file, Caption, problems):
            captions.setdefault(record.clip_id, []).append(record.to_dict())
    selection = {}
    if selection_file is not None:
        selection = {r.clip_id: r.to_dict() for r in read_records(selection_file, Selection, problems)}
    return ClipCaptions(captions, selection)


def warn_unmatched(name: str, captions: ClipCaptions, clip_ids: set[str]) -> None:
    """Counts the records naming no clip of the build, so records of another split are noticed."""
    selections = sum(clip_id not in clip_ids for clip_id in captions.selection)
    teachers = sum(len(records) for clip_id, records in captions.captions.items() if clip_id not in clip_ids)
    if selections or teachers:
        log.warning("panda70m/%s: %d of %d selection records and %d of %d caption records name no clip of this "
                    "build (made for another split or corpus? check captions_dir / selection_dir)",
                    name, selections, len(captions.selection), teachers, sum(map(len, captions.captions.values())))


def official_jobs(manual_dir: Path, problems: list[Problem]) -> list[VideoJob]:
    """The clips of the official CSV in `manual_dir` that video2dataset downloaded there, one job per file.

    Malformed rows are `problems`; missing and failed clips are counted by `official.join` and logged.
    """
    csvs = sorted(manual_dir.glob("*.csv"))
    if len(csvs) != 1:
        raise FileNotFoundError(
            f"config `official` needs exactly one Panda-70M CSV in {manual_dir}, found {len(csvs)}: "
            f"{', '.join(p.name for p in csvs) or 'none'}"
        )
    joined, report = official.join(csvs[0], manual_dir)
    log.info("official join: %s", report.summary())
    problems += [Problem(f"{csvs[0]}:{p.line}", p.video_id, p.reason) for p in report.problems]
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


def sample_jobs(work_dir: Path, num_videos: int, seed: int, size: int, duration: float, include_city: bool) -> list[VideoJob]:
    """Generates (or reuses) the synthetic corpus; adds the real CC0 clip cityCC0.mpg when asked."""
    corpus = work_dir / "synthetic"
    records_file = corpus / "videos.jsonl"
    try:
        records = [v.to_dict() for v in read_records(records_file, Video)] if records_file.exists() else []
    except RecordError:
        records = []  # made again below
    if len(records) != num_videos:
        records = synthetic.generate_corpus(corpus, num_videos, seed, size=size, duration=duration)
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
    if include_city:
        jobs.append(VideoJob(video_id="cityCC0", path=str(testmedia.fetch("city")), title="cityCC0"))
    return jobs

"""The official Panda-70M release: its CSV, joined with clips downloaded by video2dataset.

The release is a CSV with one row per source video: `videoID, url, timestamp, caption,
matching_score, desirable_filtering, shot_boundary_detection`, where every column after `url`
is a Python-literal list with one entry per clip and timestamps are "H:MM:SS.mmm" pairs. The
lists are parsed with `ast.literal_eval` only (a row is untrusted text and is never executed),
and the file is streamed, since the full release has 70M clips. A list cell longer than
`MAX_CELL_CHARS` is refused unparsed, and any row that cannot be read is skipped and reported.

The clips themselves are fetched with video2dataset (`--url_col url --clip_col timestamp
--output_format files`), which writes numbered samples into shard folders:

    manual_dir/00000/000000000_00000.mp4   one clip ("clips": [[start, end]] in its .json)
    manual_dir/00000/000000000_00000.json  {"url", "key", "status", "error_message", "clips", ...}
    manual_dir/00000/000000001.json        a failed download: status "failed_to_download"
    manual_dir/00000_stats.json            per-shard counts (not needed here)

Without `--clip_col` a sample is the whole source video (no "clips" key) and the CSV
timestamps say where to cut it; both layouts are read. Timestamps, not list positions, tie a
CSV clip to a downloaded file: same url (or videoID) and span equal within `SPAN_TOLERANCE`.
"""

from __future__ import annotations

import ast
import collections
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tqdm

from panda_jax.records import IdError, check_id
from panda_jax.video import io

log = logging.getLogger("panda_jax.data.official")

REQUIRED_COLUMNS = ("videoID", "url", "timestamp", "caption")
OPTIONAL_COLUMNS = ("matching_score", "desirable_filtering", "shot_boundary_detection")
# Seconds by which a downloaded clip's span may differ from the CSV's (rounding to ms, keyframes).
SPAN_TOLERANCE = 0.1
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi", ".mpg", ".mpeg", ".ts")
SUCCESS = "success"
# The longest list cell parsed. `ast.literal_eval` needs up to ~500 bytes and ~3 µs per character
# (a 20 MB cell took 5 GB), so a hostile cell must be refused before parsing; a long video's row
# holds at most a few thousand clips, i.e. a few hundred thousand characters per column.
MAX_CELL_CHARS = 1_000_000
# The csv module's field limit (its default is 128 KiB), far above MAX_CELL_CHARS: a longer cell
# must reach `_literal_list` and be a row problem, since a csv error would end the reader.
_FIELD_SIZE_LIMIT = 256 * 1024 * 1024
# The longest reason or videoID a RowProblem keeps, so that hostile rows cannot flood the log or memory.
_MAX_PROBLEM_CHARS = 1000
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_TIMESTAMP = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*$")


class MalformedRowError(ValueError):
    """A CSV row whose values cannot be read; the message says which column and why."""


@dataclasses.dataclass(frozen=True)
class OfficialClip:
    """One clip of the official release (one entry of the list columns of one CSV row)."""

    video_id: str
    url: str
    clip_index: int
    start: float  # seconds in the source video
    end: float
    caption: str
    matching_score: float  # -1.0 when the CSV has no matching_score column
    desirable_filtering: str  # "" when the CSV has no desirable_filtering column
    shot_boundary_detection: tuple[tuple[float, float], ...]  # shots, seconds from the clip start

    @property
    def clip_id(self) -> str:
        return f"{self.video_id}.{self.clip_index:04d}"


@dataclasses.dataclass(frozen=True)
class RowProblem:
    """A CSV row that was skipped: the file line it ends on (the header is line 1) and why."""

    line: int
    video_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class DownloadedSample:
    """One sample written by video2dataset: a clip of a source video, or the whole video."""

    key: str
    url: str
    video_id: str | None  # present when videoID was saved with --save_additional_columns
    status: str
    error_message: str
    path: Path | None  # the video file next to the .json; None when there is none
    span: tuple[float, float] | None  # the source span of a clip file; None for a whole video


@dataclasses.dataclass(frozen=True)
class JoinedClip:
    """A CSV clip tied to the file that holds it, with its span inside that file."""

    clip: OfficialClip
    path: Path
    start: float  # seconds in `path`
    end: float


@dataclasses.dataclass
class JoinReport:
    """What a join found: every CSV clip is matched, missing (never downloaded) or failed."""

    clips: int = 0
    matched: int = 0
    missing: int = 0
    failed: int = 0
    malformed_rows: int = 0
    problems: list[RowProblem] = dataclasses.field(default_factory=list)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # skip reason -> clips

    def summary(self) -> str:
        return (
            f"{self.clips} clips in the CSV: {self.matched} matched, {self.missing} missing, "
            f"{self.failed} failed; {self.malformed_rows} malformed rows skipped"
        )


def parse_timestamp(value: Any) -> float:
    """Seconds from an "H:MM:SS.mmm" string (or a number of seconds, as video2dataset accepts)."""
    if isinstance(value, bool):
        raise ValueError(f"timestamp {value!r} is not a time")
    if isinstance(value, (int, float)):
        seconds = _as_float(value)
    elif isinstance(value, str):
        match = _TIMESTAMP.match(value)
        if not match:
            raise ValueError(f"timestamp {value!r} is not H:MM:SS.mmm")
        # Hours as a float: a 400-digit hour is infinite (refused below), not an OverflowError.
        hours, minutes, secs = float(match[1]), int(match[2]), float(match[3])
        if minutes >= 60 or secs >= 60:
            raise ValueError(f"timestamp {value!r} has minutes or seconds of 60 or more")
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(f"timestamp {value!r} is neither a string nor a number")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"timestamp {value!r} is not a finite, non-negative time")
    return seconds


def _as_float(value: int | float) -> float:
    """float(value), with an int too large for a float as infinity rather than an OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def parse_span(value: Any) -> tuple[float, float]:
    """(start, end) seconds from a [start, end] pair; end must not precede start."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"span {value!r} is not a [start, end] pair")
    start, end = parse_timestamp(value[0]), parse_timestamp(value[1])
    if end < start:
        raise ValueError(f"span {value!r} ends before it starts")
    return start, end


def _literal_list(row: dict[str, str], column: str) -> list:
    """Parses a list column with the literal parser: code in a cell is refused, never run."""
    text = row.get(column) or ""
    if len(text) > MAX_CELL_CHARS:
        raise MalformedRowError(
            f"column {column!r} has {len(text)} characters, over the limit of {MAX_CELL_CHARS} (MAX_CELL_CHARS)"
        )
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise MalformedRowError(f"column {column!r} is not a Python literal ({type(e).__name__}: {e})") from None
    if not isinstance(value, (list, tuple)):
        raise MalformedRowError(f"column {column!r} is a {type(value).__name__}, not a list")
    return list(value)


def _row_clips(row: dict[str, str], columns: set[str]) -> list[OfficialClip]:
    """All clips of one CSV row, or MalformedRowError naming what is wrong."""
    if any(_SURROGATE.search(cell) for cell in row.values() if isinstance(cell, str)):
        raise MalformedRowError("the row is not UTF-8 text")
    video_id, url = (row.get("videoID") or "").strip(), (row.get("url") or "").strip()
    if not video_id or not url:
        raise MalformedRowError("videoID or url is empty")
    try:
        check_id(video_id, "videoID")
    except IdError as e:
        raise MalformedRowError(str(e)) from None
    timestamps = _literal_list(row, "timestamp")
    if not timestamps:
        raise MalformedRowError("timestamp lists no clips")
    count = len(timestamps)
    lists = {"caption": _literal_list(row, "caption")}
    for column in OPTIONAL_COLUMNS:
        lists[column] = _literal_list(row, column) if column in columns else None
    for column, values in lists.items():
        if values is not None and len(values) != count:
            raise MalformedRowError(f"column {column!r} has {len(values)} entries but timestamp has {count}")

    clips = []
    for index in range(count):
        try:
            start, end = parse_span(timestamps[index])
            caption = lists["caption"][index]
            if not isinstance(caption, str):
                raise ValueError(f"caption {caption!r} is not a string")
            score = -1.0 if lists["matching_score"] is None else lists["matching_score"][index]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(_as_float(score)):
                raise ValueError(f"matching_score {score!r} is not a finite number")
            desirable = "" if lists["desirable_filtering"] is None else lists["desirable_filtering"][index]
            if not isinstance(desirable, str):
                raise ValueError(f"desirable_filtering {desirable!r} is not a string")
            shots_value = [] if lists["shot_boundary_detection"] is None else lists["shot_boundary_detection"][index]
            if not isinstance(shots_value, (list, tuple)):
                raise ValueError(f"shot_boundary_detection {shots_value!r} is not a list of spans")
            shots = tuple(parse_span(shot) for shot in shots_value)
        except ValueError as e:
            raise MalformedRowError(f"clip {index}: {e}") from None
        clips.append(
            OfficialClip(
                video_id=video_id,
                url=url,
                clip_index=index,
                start=start,
                end=end,
                caption=caption,
                matching_score=float(score),
                desirable_filtering=desirable,
                shot_boundary_detection=shots,
            )
        )
    return clips


def _shorten(text: str) -> str:
    """`text` cut to `_MAX_PROBLEM_CHARS` in the middle, keeping the column (at its start) and the why (at its end)."""
    if len(text) <= _MAX_PROBLEM_CHARS:
        return text
    half = (_MAX_PROBLEM_CHARS - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def read_official_csv(path: str | os.PathLike, problems: list[RowProblem] | None = None) -> Iterator[OfficialClip]:
    """Streams the clips of an official Panda-70M CSV, row by row.

    A malformed row (a cell that is not a literal or longer than `MAX_CELL_CHARS`, lists of
    different lengths, a bad timestamp, or anything else its parsing raises) is logged, appended
    to `problems` when given, and skipped; the other rows go on. A file without the required
    columns raises ValueError at once.
    """
    path = Path(path)
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_SIZE_LIMIT))
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:  # bad bytes: one bad row
        reader = csv.DictReader(f)
        columns = {name.strip() for name in reader.fieldnames or []}
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise ValueError(
                f"{path}: not a Panda-70M CSV, it lacks the columns {missing} "
                f"(has {sorted(columns)}; expected {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})"
            )
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        for row in reader:
            try:
                clips = _row_clips(row, columns)
            except Exception as e:  # whatever one hostile row raises, only that row is lost
                reason = str(e) if isinstance(e, MalformedRowError) else f"{type(e).__name__}: {e}"
                problem = RowProblem(
                    line=reader.line_num, video_id=_shorten((row.get("videoID") or "").strip()), reason=_shorten(reason)
                )
                log.warning("%s:%d: skipping malformed row of video %r: %s", path, problem.line, problem.video_id,
                            problem.reason)
                if problems is not None:
                    problems.append(problem)
                continue
            yield from clips


def _read_sample(json_path: Path) -> DownloadedSample:
    """One video2dataset sample from its .json and the video file beside it."""
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    spans = meta.get("clips")
    span = parse_span(spans[0]) if isinstance(spans, list) and len(spans) == 1 else None
    videos = sorted(p for p in json_path.parent.glob(f"{json_path.stem}.*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    video_id = meta.get("videoID")
    return DownloadedSample(
        key=str(meta.get("key", json_path.stem)),
        url=str(meta.get("url") or "").strip(),
        video_id=str(video_id).strip() if video_id else None,
        status=str(meta.get("status", SUCCESS if videos else "unknown")),
        error_message=str(meta.get("error_message") or ""),
        path=videos[0] if videos else None,
        span=span,
    )


@dataclasses.dataclass
class Video2DatasetIndex:
    """The samples of a video2dataset output folder, found by source url or videoID."""

    samples: list[DownloadedSample]
    unreadable: int = 0  # sample .json files that could not be parsed

    def __post_init__(self) -> None:
        self._by_source: dict[str, list[DownloadedSample]] = collections.defaultdict(list)
        for sample in self.samples:
            for name in {sample.url, sample.video_id} - {None, ""}:
                self._by_source[name].append(sample)

    def lookup(self, clip: OfficialClip) -> list[DownloadedSample]:
        """The samples downloaded from this clip's source video."""
        found = self._by_source.get(clip.url) or self._by_source.get(clip.video_id) or []
        return list(found)


def index_video2dataset(folder: str | os.PathLike) -> Video2DatasetIndex:
    """Reads every sample .json under the shard folders of a video2dataset `files` output."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; pass the output_folder given to video2dataset")
    json_paths = sorted(folder.glob("*/*.json"))
    if not json_paths and any(folder.glob("*.tar")):
        raise ValueError(
            f"{folder}: holds webdataset .tar shards; download with video2dataset --output_format files "
            "(or untar the shards into folders) so each clip is a file"
        )
    samples, unreadable = [], 0
    for json_path in tqdm.tqdm(json_paths, desc="indexing downloads", unit="sample", disable=len(json_paths) < 1000):
        try:
            samples.append(_read_sample(json_path))
        except (OSError, ValueError, TypeError) as e:
            unreadable += 1
            log.warning("%s: skipping unreadable video2dataset metadata: %s", json_path, e)
    log.info("%s: %d video2dataset samples (%d unreadable)", folder, len(samples), unreadable)
    return Video2DatasetIndex(samples=samples, unreadable=unreadable)


def _probe_duration(path: Path) -> float | str:
    """A downloaded file's duration, or why it cannot be read."""
    try:
        return io.probe(path).duration
    except io.VideoError as e:
        return f"unreadable video: {e}"


def _tie(
    clip: OfficialClip, samples: list[DownloadedSample], prober: Callable[[Path], float | str]
) -> JoinedClip | tuple[str, str]:
    """The file holding `clip`, or ("missing" | "failed", reason)."""
    for sample in samples:
        if sample.span is None:
            continue
        if abs(sample.span[0] - clip.start) > SPAN_TOLERANCE or abs(sample.span[1] - clip.end) > SPAN_TOLERANCE:
            continue
        if sample.status != SUCCESS:
            return "failed", f"download {sample.status}"
        if sample.path is None:
            return "failed", "video file absent"
        duration = prober(sample.path)
        if isinstance(duration, str):
            return "failed", "unreadable video"
        # The file starts at the sample's span start, which may differ from the CSV's by the tolerance.
        offset = sample.span[0]
        return JoinedClip(clip, sample.path, max(0.0, clip.start - offset), min(clip.end - offset, duration))
    whole = [sample for sample in samples if sample.span is None]
    for sample in whole:
        if sample.status == SUCCESS and sample.path is not None:
            duration = prober(sample.path)
            if isinstance(duration, str):
                return "failed", "unreadable video"
            if clip.end > duration + SPAN_TOLERANCE:
                return "failed", "clip ends after the downloaded video"
            return JoinedClip(clip, sample.path, clip.start, clip.end)
    if whole:
        sample = whole[0]
        return "failed", "video file absent" if sample.status == SUCCESS else f"download {sample.status}"
    if samples:
        return "missing", "no downloaded clip at this timestamp"
    return "missing", "source video not downloaded"


def join(csv_path: str | os.PathLike, folder: str | os.PathLike) -> tuple[list[JoinedClip], JoinReport]:
    """Ties every clip of the official CSV to its file in a video2dataset download folder.

    Returns the matched clips in CSV order and a report counting clips, matched, missing
    (no sample of that source or span), failed (status not success, file absent or not a
    readable video, clip past the end of the video) and malformed rows, which are all skipped.
    """
    index = index_video2dataset(folder)
    report = JoinReport()
    prober = functools.cache(_probe_duration)  # each file probed once per join
    joined = []
    for clip in tqdm.tqdm(read_official_csv(csv_path, report.problems), desc="joining", unit="clip"):
        report.clips += 1
        result = _tie(clip, index.lookup(clip), prober)
        if isinstance(result, JoinedClip):
            report.matched += 1
            joined.append(result)
            continue
        outcome, reason = result
        if outcome == "missing":
            report.missing += 1
        else:
            report.failed += 1
        report.reasons[reason] += 1
        log.debug("%s: %s: %s", clip.clip_id, outcome, reason)
    report.malformed_rows = len(report.problems)
    log.info("%s joined with %s: %s", csv_path, folder, report.summary())
    return joined, report

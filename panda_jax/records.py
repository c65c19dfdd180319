"""Stage records: typed, validated when read, written as JSON Lines atomically.

Stages talk only through these records (fields as in the README's stage map):

    videos     Video      video_id, path, title, description, subtitles, duration, fps, ...
    shots      Shots      video_id, fps, num_frames, detector, shots [[start, end), ...]
    clips      Clip       clip_id, video_id, start, end, start_frame, end_frame, shot_count
    captions   Caption    clip_id, teacher, prompt_version, caption
    selection  Selection  clip_id, caption, teacher, matching_score, scores, missing_teachers
    labels     Label      clip_id, teacher (a person's choice, for the select stage's report)
    failures   Failure    stage, item_id, source, error

A record read from a file is checked field by field; an error names the file, the line and
the field. Fields a record type does not know are kept in `extra` and written back, so a
record survives a round trip unchanged. Ids name files, so they are checked once, here: a
safe character set and a bounded length, never a path.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

from panda_jax.files import atomic_output

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 128  # a clip id adds ".NNNN"; both stay far below file-name limits
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class RecordError(ValueError):
    """A record file or record that cannot be read; the message says where and why."""


class IdError(RecordError):
    """An id that could name a path, or is too long to name a file."""


class Problem(NamedTuple):
    """A record that was skipped: where it was (`file:line`), its id if it had one, and why."""

    source: str
    item_id: str
    error: str


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for error messages about hostile input."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}...({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def check_id(value: Any, what: str = "id", max_length: int = MAX_ID_LENGTH) -> str:
    """Returns `value` if it is a safe id: 1 to `max_length` of A-Z a-z 0-9 . _ -, no leading '.'."""
    if not isinstance(value, str):
        raise IdError(f"{what} must be a string, got {type(value).__name__} {shown(value)}")
    if not 0 < len(value) <= max_length or not _ID.fullmatch(value):
        raise IdError(
            f"{what} {shown(value)} is not a valid id: use 1 to {max_length} characters from "
            "A-Z a-z 0-9 . _ - not starting with '.' (ids name files, so an id can never be a path)"
        )
    return value


def id_from_name(name: str) -> str:
    """A valid id made from a file name: other characters become '_' (`My Talk.mp4` -> `My_Talk.mp4`)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")
    return cleaned[:MAX_ID_LENGTH] or "video"


def ids_from_files(paths: Sequence[Path]) -> list[str]:
    """Video ids of files: their stems, or their whole names where stems collide (`x.mp4`, `x.avi`)."""
    stems = collections.Counter(id_from_name(p.stem) for p in paths)
    return [id_from_name(p.stem if stems[id_from_name(p.stem)] == 1 else p.name) for p in paths]


def clip_id(video_id: str, index: int) -> str:
    return f"{video_id}.{index:04d}"


# Field checks: each returns the value to store or raises ValueError saying what is wrong.


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    return value


def _nonempty_string(value: Any) -> str:
    if not _string(value) or "\x00" in value:
        raise ValueError("must be a non-empty string without NUL characters")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {type(value).__name__} {shown(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{shown(value)} is too large") from None
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {value}")
    return value


def _seconds(value: Any) -> float:
    if _number(value) < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return float(value)


def _positive(value: Any) -> float:
    if _number(value) <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return float(value)


def _probability(value: Any) -> float:
    if not 0.0 <= _number(value) <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0, got {shown(value)}")
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _video_id(value: Any) -> str:
    return check_id(value, "video_id")


def _clip_id(value: Any) -> str:
    return check_id(value, "clip_id", MAX_ID_LENGTH + 8)


def _teacher(value: Any) -> str:
    return check_id(value, "teacher")


def _spans(value: Any) -> tuple[tuple[int, int], ...]:
    """[[start, end), ...] frame spans, in order, not overlapping."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of [start, end] pairs, got {type(value).__name__}")
    spans = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"{shown(item)} is not a [start, end] pair")
        start, end = _count(item[0]), _count(item[1])
        if end <= start or (spans and start < spans[-1][1]):
            raise ValueError(f"span {item} is empty, or overlaps or precedes the one before")
        spans.append((start, end))
    return tuple(spans)


def _subtitles(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of {{start, end, text}}, got {type(value).__name__}")
    lines = []
    for item in value:
        if not isinstance(item, dict) or not {"start", "end", "text"} <= set(item):
            raise ValueError(f"{shown(item)} is not a {{start, end, text}} line")
        start, end = _seconds(item["start"]), _seconds(item["end"])
        if end < start:
            raise ValueError(f"line {shown(item)} ends before it starts")
        lines.append({"start": start, "end": end, "text": _string(item["text"])})
    return tuple(lines)


def _scores(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object of teacher: score, got {type(value).__name__}")
    return {_teacher(teacher): _probability(score) for teacher, score in value.items()}


def _teachers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of teacher names, got {type(value).__name__}")
    return tuple(_teacher(teacher) for teacher in value)


def _field(check: Callable[[Any], Any], default: Any = dataclasses.MISSING) -> Any:
    return dataclasses.field(default=default, metadata={"check": check})


T = TypeVar("T", bound="Record")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """Base of the stage records: checked construction from JSON objects and back."""

    KIND: ClassVar[str]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # fields the type does not know

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        """Checks every field; raises RecordError naming the first bad one."""
        if not isinstance(data, Mapping):
            raise RecordError(f"a {cls.KIND} record must be a JSON object, got {type(data).__name__}")
        known = [f for f in dataclasses.fields(cls) if "check" in f.metadata]
        values = {}
        for field in known:
            if field.name in data:
                try:
                    values[field.name] = field.metadata["check"](data[field.name])
                except (ValueError, TypeError) as e:
                    message = str(e)
                    raise RecordError(message if message.startswith(field.name) else f"{field.name}: {message}") from None
            elif field.default is dataclasses.MISSING:
                raise RecordError(f"a {cls.KIND} record needs {field.name!r} (it has {', '.join(map(repr, data)) or 'no fields'})")
        names = {f.name for f in known}
        record = cls(**values, extra={k: v for k, v in data.items() if k not in names})
        record.check()
        return record

    def check(self) -> None:
        """Checks between fields; raises RecordError."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record; unset optional fields are left out."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if "check" in field.metadata and not (value is None and field.default is None):
                out[field.name] = value
        return out | self.extra


@dataclasses.dataclass(frozen=True, kw_only=True)
class Video(Record):
    KIND: ClassVar[str] = "videos"
    video_id: str = _field(_video_id)
    path: str = _field(_nonempty_string)
    title: str = _field(_string, "")
    description: str = _field(_string, "")
    subtitles: tuple[dict[str, Any], ...] = _field(_subtitles, ())
    duration: float | None = _field(_optional(_seconds), None)
    fps: float | None = _field(_optional(_positive), None)
    num_frames: int | None = _field(_optional(_count), None)
    width: int | None = _field(_optional(_count), None)
    height: int | None = _field(_optional(_count), None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shots(Record):
    KIND: ClassVar[str] = "shots"
    video_id: str = _field(_video_id)
    fps: float = _field(_positive)
    num_frames: int = _field(_count)  # frames decoded
    detector: str = _field(_nonempty_string)
    shots: tuple[tuple[int, int], ...] = _field(_spans)
    container_frames: int | None = _field(_optional(_count), None)  # what the container states

    def check(self) -> None:
        if self.shots and self.shots[-1][1] > self.num_frames:
            raise RecordError(f"shots: the last shot ends at frame {self.shots[-1][1]}, after num_frames {self.num_frames}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Clip(Record):
    KIND: ClassVar[str] = "clips"
    clip_id: str = _field(_clip_id)
    video_id: str = _field(_video_id)
    start: float = _field(_seconds)
    end: float = _field(_seconds)
    start_frame: int = _field(_count, None)
    end_frame: int = _field(_count, None)
    shot_count: int = _field(_count, 1)
    # With `split --cut`: the clip file (relative to the split folder) and the source time at
    # which it really starts (a stream copy starts at the keyframe at or before `start`).
    file: str | None = _field(_optional(_nonempty_string), None)
    file_start: float | None = _field(_optional(_seconds), None)

    def check(self) -> None:
        if not self.clip_id.startswith(f"{self.video_id}."):
            raise RecordError(f"clip_id {self.clip_id!r} does not start with its video_id {self.video_id!r} and a '.'")
        if self.end <= self.start:
            raise RecordError(f"clip {self.clip_id} ends ({self.end}) at or before it starts ({self.start})")
        if (self.start_frame is None) != (self.end_frame is None) or (
            self.start_frame is not None and self.end_frame <= self.start_frame
        ):
            raise RecordError(f"clip {self.clip_id}: start_frame and end_frame must both be given, end after start")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Caption(Record):
    KIND: ClassVar[str] = "captions"
    clip_id: str = _field(_clip_id)
    teacher: str = _field(_teacher)
    caption: str = _field(_string)
    prompt_version: str = _field(_string, "")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection(Record):
    KIND: ClassVar[str] = "selection"
    clip_id: str = _field(_clip_id)
    caption: str = _field(_string)
    teacher: str = _field(_teacher)
    matching_score: float = _field(_probability)
    scores: dict[str, float] = _field(_scores, None)  # every candidate's matching probability, by teacher
    missing_teachers: tuple[str, ...] = _field(_teachers, ())  # teachers that gave this clip no caption

    def check(self) -> None:
        if self.scores is not None and self.teacher not in self.scores:
            raise RecordError(f"teacher {self.teacher!r} is not among the scored teachers {sorted(self.scores)}")
        if self.teacher in self.missing_teachers:
            raise RecordError(f"teacher {self.teacher!r} is both chosen and missing")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Label(Record):
    """The teacher whose caption a person judged best for a clip: what selection is scored against."""

    KIND: ClassVar[str] = "labels"
    clip_id: str = _field(_clip_id)
    teacher: str = _field(_teacher)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Failure(Record):
    """An item a stage could not process. `item_id` is shown, never used as a path."""

    KIND: ClassVar[str] = "failures"
    stage: str = _field(_nonempty_string)
    item_id: str = _field(_string)
    source: str = _field(_string)
    error: str = _field(_nonempty_string)

    @classmethod
    def of(cls, stage: str, problem: Problem) -> Failure:
        return cls(stage=stage, item_id=problem.item_id, source=problem.source, error=problem.error)


def unique_videos(videos: Iterable[Video], problems: list[Problem]) -> list[Video]:
    """The first video of each id; each repeat becomes a problem."""
    first: dict[str, Video] = {}
    for video in videos:
        if video.video_id in first:
            error = f"video_id {video.video_id!r} is used already by {first[video.video_id].path}"
            log.warning("skipping %s: %s", video.path, error)
            problems.append(Problem(video.path, video.video_id, error))
        else:
            first[video.video_id] = video
    return list(first.values())


def dumps(record: Mapping[str, Any]) -> str:
    """One JSON line, the same bytes for the same record on every run."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any] | Record]) -> int:
    """Writes records to `path` as JSON Lines, atomically, streaming; returns how many."""
    count = 0
    with atomic_output(path) as temporary, temporary.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(dumps(record.to_dict() if isinstance(record, Record) else record))
            f.write("\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    return count


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yields the JSON objects of a JSON Lines file; blank lines are skipped."""
    for _, record in _numbered_objects(Path(path)):
        if isinstance(record, RecordError):
            raise record
        yield record


def _numbered_objects(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    """(line number, object or the RecordError saying why the line is not one)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, RecordError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:  # ValueError: also ints of over 4300 digits
                yield number, RecordError(f"{path}:{number}: not valid JSON ({getattr(e, 'msg', e)})")
                continue
            if not isinstance(record, dict):
                yield number, RecordError(f"{path}:{number}: expected a JSON object per line")
                continue
            yield number, record


def read_records(path: str | os.PathLike, kind: type[T], problems: list[Problem] | None = None) -> Iterator[T]:
    """Yields the checked records of a JSON Lines file.

    A bad line raises RecordError naming file and line; with a `problems` list it is logged as a
    warning, appended there, and skipped. A file that cannot be read at all always raises.
    """
    path = Path(path)
    id_field = next(f.name for f in dataclasses.fields(kind) if "check" in f.metadata)
    try:
        for number, data in _numbered_objects(path):
            raw_id = ""
            if isinstance(data, dict):
                raw_id = data.get(id_field, "")
                try:
                    yield kind.from_dict(data)
                    continue
                except RecordError as e:
                    data = RecordError(f"{path}:{number}: {e}")
            if problems is None:
                raise data
            problem = Problem(f"{path}:{number}", str(raw_id)[: 2 * MAX_ID_LENGTH], str(data))
            log.warning("skipping %s", problem.error)
            problems.append(problem)
    except OSError as e:
        raise RecordError(f"{path}: cannot be read ({e.strerror or e})") from None

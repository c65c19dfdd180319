"""SubRip (.srt) and WebVTT (.vtt) subtitle files as `videos` record subtitle lines.

Uploads come with timed subtitles in one of these two formats; the pipeline wants them as
`[{start, end, text}]` in seconds (DESIGN.md `videos` records), and the dataset builder keeps
the lines that overlap each clip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# "00:01:02,500 --> 00:01:04.250" (SRT uses a comma, VTT a dot; VTT may omit the hours and
# may put cue settings after the end time).
_TIMING = re.compile(
    r"^\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})"
)
_TAG = re.compile(r"<[^>]+>")


class SubtitleError(ValueError):
    """A subtitle file that cannot be parsed; names the file and line."""


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    seconds = float(parts[-1])
    for unit, value in zip((60, 3600), reversed(parts[:-1])):
        seconds += unit * int(value)
    return seconds


def parse_subtitles(text: str, source: str = "<string>") -> list[dict[str, Any]]:
    """Parses SRT or WebVTT text into `[{start, end, text}]`, sorted by start time.

    Cue numbers, VTT headers, NOTE/STYLE blocks and markup tags are dropped; the lines of a
    cue are joined by a space.
    """
    lines: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = raw.strip()
        match = _TIMING.match(line)
        if match:
            start, end = _seconds(match.group(1)), _seconds(match.group(2))
            if end < start:
                raise SubtitleError(f"{source}:{number}: cue ends ({end:.3f} s) before it starts ({start:.3f} s)")
            current = {"start": round(start, 3), "end": round(end, 3), "text": []}
            lines.append(current)
        elif not line:
            current = None
        elif current is not None:
            current["text"].append(_TAG.sub("", line).strip())
        elif "-->" in line:
            raise SubtitleError(f"{source}:{number}: cannot read the cue timing {line!r}")
    for cue in lines:
        cue["text"] = " ".join(t for t in cue["text"] if t)
    return sorted((cue for cue in lines if cue["text"]), key=lambda cue: cue["start"])


def read_subtitles(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a .srt or .vtt file (UTF-8) into `[{start, end, text}]`."""
    path = Path(path)
    return parse_subtitles(path.read_text(encoding="utf-8"), str(path))


def overlapping_text(subtitles: Iterable[dict[str, Any]], start: float, end: float) -> str:
    """The text of the lines shown at some moment of [start, end), joined by a space."""
    return " ".join(s["text"] for s in subtitles if s["start"] < end and s["end"] > start)

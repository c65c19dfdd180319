"""Subtitle files (SubRip, WebVTT, ASS/SSA) as `videos` record subtitle lines.

Uploads come with timed subtitles in one of these formats; the pipeline wants them as
`[{start, end, text}]` in seconds (the `videos` records of panda_jax.records), and the dataset builder keeps
the lines that overlap each clip.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pysubs2

SUFFIXES = (".srt", ".vtt", ".ass", ".ssa")  # the formats looked for beside a video


class SubtitleError(ValueError):
    """A subtitle file that cannot be parsed; names the file."""


def parse_subtitles(text: str, source: str = "<string>") -> list[dict[str, Any]]:
    """Parses SRT, WebVTT or ASS/SSA text (pysubs2) into `[{start, end, text}]`, sorted by start.

    Comments, styles and markup are dropped; the lines of a cue are joined by a space.
    """
    try:
        events = pysubs2.SSAFile.from_string(text.lstrip("\ufeff"))
    except pysubs2.Pysubs2Error as e:
        raise SubtitleError(f"{source}: not a subtitle file that can be read ({e})") from e
    lines = []
    for event in events:
        if event.is_comment:
            continue
        if event.end < event.start:
            raise SubtitleError(
                f"{source}: cue {event.plaintext!r} ends ({event.end / 1000:.3f} s) before it starts "
                f"({event.start / 1000:.3f} s)"
            )
        words = " ".join(part.strip() for part in event.plaintext.splitlines() if part.strip())
        if words:
            lines.append({"start": round(event.start / 1000, 3), "end": round(event.end / 1000, 3), "text": words})
    return sorted(lines, key=lambda line: line["start"])


def read_subtitles(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a subtitle file (UTF-8) into `[{start, end, text}]`."""
    path = Path(path)
    return parse_subtitles(path.read_text(encoding="utf-8"), str(path))


def shown(line: dict[str, Any], start: float, end: float) -> bool:
    """Whether a subtitle line is shown at some moment of [start, end) seconds."""
    return line["start"] < end and line["end"] > start


def overlapping_text(subtitles: Iterable[dict[str, Any]], start: float, end: float) -> str:
    """The text of the lines shown at some moment of [start, end), joined by a space."""
    return " ".join(s["text"] for s in subtitles if shown(s, start, end))

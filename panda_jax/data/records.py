"""Stage records: JSON Lines shards, written atomically.

Every stage reads and writes its records through these two functions, so a shard on disk is
always complete: it is written to a temporary file in the same folder and renamed into place.
A killed run therefore leaves either the whole shard or nothing, and can resume by skipping
shards that exist.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """A record file that cannot be parsed; names the file and line."""


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Writes `records` to `path` as JSON Lines, atomically; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False, allow_nan=False))
                f.write("\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yields the records of a JSON Lines file; blank lines are skipped."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{line_number}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise RecordError(f"{path}:{line_number}: expected a JSON object per line")
            yield record

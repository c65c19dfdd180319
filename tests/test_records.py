"""Stage records: round trip, atomic replacement, and errors that name the line."""

from __future__ import annotations

import pytest

from panda_jax.records import RecordError, read_jsonl, write_jsonl


def test_round_trip_keeps_unicode_and_nesting(tmp_path):
    records = [
        {"video_id": "a", "title": "Café ☕", "subtitles": [{"start": 0.5, "end": 2.0, "text": "hi"}]},
        {"video_id": "b", "shots": [[0, 30], [30, 76]]},
    ]
    path = tmp_path / "deep" / "videos.jsonl"
    assert write_jsonl(path, records) == 2
    assert list(read_jsonl(path)) == records
    assert "Café ☕" in path.read_text(encoding="utf-8")


def test_a_failed_write_leaves_the_old_shard_and_no_temp_file(tmp_path):
    path = tmp_path / "clips.jsonl"
    write_jsonl(path, [{"clip_id": "old"}])

    def records_then_crash():
        yield {"clip_id": "new"}
        raise KeyboardInterrupt  # a killed run

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(path, records_then_crash())
    assert list(read_jsonl(path)) == [{"clip_id": "old"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips.jsonl"]


def test_nan_is_refused(tmp_path):
    with pytest.raises(ValueError):
        write_jsonl(tmp_path / "x.jsonl", [{"matching_score": float("nan")}])
    assert not (tmp_path / "x.jsonl").exists()


def test_bad_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:3: not valid JSON"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: expected a JSON object"):
        list(read_jsonl(path))

"""Stage records: round trip, atomic replacement, typed checks, and errors that name file, line and field."""

from __future__ import annotations

import pytest

import re
from pathlib import Path

from panda_jax.records import (
    Caption, Clip, IdError, RecordError, Selection, Shots, Video, check_id, id_from_name, ids_from_files, read_jsonl,
    read_records, write_jsonl,
)


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


def test_typed_records_check_every_field_and_keep_unknown_ones():
    video = Video.from_dict({"video_id": "talk_01", "path": "a.mp4", "gt_events": [1, 2], "fps": 25})
    assert video.fps == 25.0 and video.extra == {"gt_events": [1, 2]}
    assert Video.from_dict(video.to_dict()) == video
    clip = {"clip_id": "v.0000", "video_id": "v", "start": 0.0, "end": 2.0, "start_frame": 0, "end_frame": 50}
    assert Clip.from_dict(clip).to_dict() == clip | {"shot_count": 1}
    bad = [
        (Video, {"video_id": "../../x/victim", "path": "a.mp4"}, "video_id '../../x/victim' is not a valid id"),
        (Video, {"video_id": "x" * 300, "path": "a.mp4"}, "300 characters"),
        (Video, {"video_id": "v"}, "needs 'path'"),
        (Video, {"video_id": "v", "path": "a.mp4", "subtitles": [{"start": 2, "end": 1, "text": "x"}]}, "ends before"),
        (Shots, {"video_id": "v", "fps": 25, "num_frames": 10, "detector": "d", "shots": [[0, 6], [5, 10]]}, "overlaps"),
        (Shots, {"video_id": "v", "fps": 25, "num_frames": 10, "detector": "d", "shots": [[0, 12]]}, "after num_frames"),
        (Clip, clip | {"clip_id": "w.0000"}, "does not start with its video_id"),
        (Clip, clip | {"end": 0.0}, "ends"),
        (Selection, {"clip_id": "v.0000", "caption": "c", "teacher": "t", "matching_score": 1.5}, "in [0, 1]"),
        (Selection, {"clip_id": "v.0000", "caption": "c", "teacher": "t", "matching_score": True}, "must be a number"),
        (Caption, {"clip_id": "v.0000", "teacher": "t/../x", "caption": "c"}, "teacher"),
    ]
    for kind, data, message in bad:
        with pytest.raises(RecordError, match=re.escape(message)):
            kind.from_dict(data)


def test_bad_lines_become_problems_naming_file_line_and_id(tmp_path):
    path = tmp_path / "videos.jsonl"
    lines = [
        b'{"video_id": "ok", "path": "a.mp4"}',
        b'{"video_id": "../up", "path": "a.mp4"}',
        b'{"video_id": "num", "path": "a.mp4", "fps": ' + b"9" * 5000 + b"}",  # over Python's int-parsing limit
        b'{"video_id": "caf\xe9", "path": "a.mp4"}',  # not UTF-8
        b'{"video_id": "ok2", "path": "b.mp4", "fps": 1e999}',  # infinite
        b'{"video_id": "ok3", "path": "c.mp4"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    problems = []
    assert [v.video_id for v in read_records(path, Video, problems)] == ["ok", "ok3"]
    assert [p.source for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert [p.item_id for p in problems] == ["../up", "", "", "ok2"]
    assert "not a valid id" in problems[0].error and "not UTF-8" in problems[2].error and "finite" in problems[3].error
    with pytest.raises(RecordError, match=r"videos.jsonl:2: video_id"):
        list(read_records(path, Video))


def test_ids_from_file_names():
    assert id_from_name("My Talk (2019)") == "My_Talk_2019_" and id_from_name("..hidden") == "hidden"
    paths = [Path("a/x.mp4"), Path("a/x.avi"), Path("a/y.mp4")]
    assert ids_from_files(paths) == ["x.mp4", "x.avi", "y"]
    with pytest.raises(IdError):
        check_id(".hidden")

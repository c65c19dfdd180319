"""The official Panda-70M CSV reader and its join with video2dataset downloads."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from panda_jax.data import official
from panda_jax.video import io
from panda_jax.video.writer import VideoWriter

COLUMNS = ["videoID", "url", "timestamp", "caption", "matching_score", "desirable_filtering", "shot_boundary_detection"]


def _row(video_id: str, spans, captions, scores=None, desirable=None, shots=None) -> dict[str, str]:
    n = len(spans)
    return {
        "videoID": video_id,
        "url": f"https://www.youtube.com/watch?v={video_id}",
        "timestamp": repr(spans),
        "caption": repr(captions),
        "matching_score": repr(scores if scores is not None else [0.5] * n),
        "desirable_filtering": repr(desirable if desirable is not None else ["desirable"] * n),
        "shot_boundary_detection": repr(shots if shots is not None else [[["0:00:00.000", "0:00:01.000"]]] * n),
    }


def _write_csv(path: Path, rows: list[dict[str, str]], columns=COLUMNS) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _video(path: Path, seconds: float, fps: int = 10) -> Path:
    with VideoWriter(path, fps) as writer:
        for i in range(round(seconds * fps)):
            writer.write(np.full((64, 64, 3), (i * 6) % 250, np.uint8))
    return path


def _sample(folder: Path, shard: str, key: str, meta: dict, video_seconds: float | None = None) -> None:
    (folder / shard).mkdir(parents=True, exist_ok=True)
    (folder / shard / f"{key}.json").write_text(json.dumps({"key": key, **meta}))
    if video_seconds is not None:
        _video(folder / shard / f"{key}.mp4", video_seconds)


def test_parses_every_column_exactly(tmp_path):
    path = _write_csv(
        tmp_path / "panda.csv",
        [
            _row(
                "abc",
                [["0:01:20.880", "0:01:23.983"], ["1:02:03.500", "1:02:10.000"]],
                ["A neuron in a black background.", 'He says "hi", then leaves.'],
                scores=[0.451416015625, 0.5],
                desirable=["1_still_foreground_image", "desirable"],
                shots=[
                    [["0:00:00.000", "0:00:03.069"]],
                    [["0:00:00.000", "0:00:02.702"], ["0:00:02.736", "0:00:04.838"]],
                ],
            )
        ],
    )
    clips = list(official.read_official_csv(path))
    assert [c.clip_id for c in clips] == ["abc.0000", "abc.0001"]
    first, second = clips
    assert first.url == "https://www.youtube.com/watch?v=abc"
    assert first.start == pytest.approx(80.88, abs=1e-9) and first.end == pytest.approx(83.983, abs=1e-9)
    assert second.start == pytest.approx(3723.5, abs=1e-9) and second.end == pytest.approx(3730.0, abs=1e-9)
    assert first.caption == "A neuron in a black background."
    assert second.caption == 'He says "hi", then leaves.'
    assert (first.matching_score, second.matching_score) == (0.451416015625, 0.5)
    assert first.desirable_filtering == "1_still_foreground_image"
    assert first.shot_boundary_detection == ((0.0, pytest.approx(3.069)),)
    assert second.shot_boundary_detection == ((0.0, pytest.approx(2.702)), (pytest.approx(2.736), pytest.approx(4.838)))


def test_a_csv_without_score_columns_gets_defaults(tmp_path):
    row = {"videoID": "v", "url": "u", "timestamp": "[['0:00:01.000', '0:00:02.500']]", "caption": "['a cat']"}
    path = _write_csv(tmp_path / "test.csv", [row], columns=["videoID", "url", "timestamp", "caption"])
    (clip,) = official.read_official_csv(path)
    assert (clip.start, clip.end, clip.caption) == (1.0, 2.5, "a cat")
    assert (clip.matching_score, clip.desirable_filtering, clip.shot_boundary_detection) == (-1.0, "", ())


def test_a_file_without_the_required_columns_is_refused(tmp_path):
    path = _write_csv(tmp_path / "other.csv", [{"id": "x", "text": "y"}], columns=["id", "text"])
    with pytest.raises(ValueError, match=r"lacks the columns \['videoID', 'url', 'timestamp', 'caption'\]"):
        list(official.read_official_csv(path))


@pytest.mark.parametrize(
    ("timestamp", "seconds"),
    [("0:00:00.000", 0.0), ("0:01:20.880", 80.88), ("10:00:01.5", 36001.5), ("00:02:03.040", 123.04), (7.25, 7.25)],
)
def test_timestamps_become_seconds(timestamp, seconds):
    assert official.parse_timestamp(timestamp) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("timestamp", ["1:75:00.000", "0:00:61.000", "12.5", "abc", "", -1.0, True, None])
def test_bad_timestamps_are_refused(timestamp):
    with pytest.raises(ValueError, match="timestamp"):
        official.parse_timestamp(timestamp)


def test_malformed_rows_are_reported_and_skipped_and_code_never_runs(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = _row("good", [["0:00:00.000", "0:00:02.000"]], ["fine"])
    code = _row("code", [["0:00:00.000", "0:00:02.000"]], ["x"])
    code["caption"] = "[__import__('os').system('touch PWNED')]"
    uneven = _row("uneven", [["0:00:00.000", "0:00:02.000"], ["0:00:02.000", "0:00:04.000"]], ["only one"])
    bad_time = _row("badtime", [["0:00:00.000", "0:99:02.000"]], ["x"])
    backwards = _row("backwards", [["0:00:05.000", "0:00:02.000"]], ["x"])
    not_a_list = _row("scalar", [["0:00:00.000", "0:00:02.000"]], ["x"])
    not_a_list["matching_score"] = "0.5"
    last = _row("last", [["0:00:03.000", "0:00:04.000"]], ["also fine"])
    path = _write_csv(tmp_path / "panda.csv", [good, code, uneven, bad_time, backwards, not_a_list, last])

    problems: list[official.RowProblem] = []
    with caplog.at_level(logging.WARNING, logger="panda_jax.data.official"):
        clips = list(official.read_official_csv(path, problems))

    assert [c.clip_id for c in clips] == ["good.0000", "last.0000"]
    assert not (tmp_path / "PWNED").exists()
    assert [(p.line, p.video_id) for p in problems] == [
        (3, "code"), (4, "uneven"), (5, "badtime"), (6, "backwards"), (7, "scalar")
    ]
    assert "not a Python literal" in problems[0].reason
    assert "'caption' has 1 entries but timestamp has 2" in problems[1].reason
    assert "0:99:02.000" in problems[2].reason
    assert "ends before it starts" in problems[3].reason
    assert "'matching_score' is a float, not a list" in problems[4].reason
    assert sum("skipping malformed row" in r.message for r in caplog.records) == 5


def _with_cell(video_id: str, column: str, cell: str) -> dict[str, str]:
    """A good one-clip row with one cell replaced by `cell`."""
    return {**_row(video_id, [["0:00:00.000", "0:00:02.000"]], ["x"]), column: cell}


def test_hostile_rows_are_skipped_and_the_reader_goes_on(tmp_path, caplog, monkeypatch):
    """A huge number, a 20 MB cell or an unforeseen exception costs its own row only, never the file."""
    literal_eval, parse_span = official.ast.literal_eval, official.parse_span
    parsed: list[int] = []

    def measured_literal_eval(text: str) -> object:
        parsed.append(len(text))
        if len(text) > official.MAX_CELL_CHARS:  # parsing it would take gigabytes
            raise MemoryError("a cell over the limit reached the parser")
        return literal_eval(text)

    def buggy_parse_span(value: object) -> tuple[float, float]:
        if value == ["0:00:06.666", "0:00:07.000"]:
            raise TypeError("an unforeseen bug")
        return parse_span(value)

    monkeypatch.setattr(official.ast, "literal_eval", measured_literal_eval)
    monkeypatch.setattr(official, "parse_span", buggy_parse_span)
    huge = "1" + "0" * 400
    rows = [
        _row("first", [["0:00:00.000", "0:00:02.000"]], ["fine"]),
        _with_cell("bigscore", "matching_score", f"[{huge}]"),
        _with_cell("bigcell", "timestamp", "BIG"),
        _with_cell("bighour", "timestamp", f"[['{huge}:00:00.000', '{huge}:00:01.000']]"),
        _row("bug", [["0:00:06.666", "0:00:07.000"]], ["x"]),
        # A caption cell of exactly MAX_CELL_CHARS is still read.
        _row("last", [["0:00:03.000", "0:00:04.000"]], ["y" * (official.MAX_CELL_CHARS - 4)]),
    ]
    path = _write_csv(tmp_path / "panda.csv", rows)
    # A 20 MB timestamp cell, written past the csv writer, which would take half a second over it.
    path.write_text(path.read_text().replace(",BIG,", f',"[{"0," * 10_000_000}]",'))

    problems: list[official.RowProblem] = []
    with caplog.at_level(logging.WARNING, logger="panda_jax.data.official"):
        clips = list(official.read_official_csv(path, problems))

    assert [c.clip_id for c in clips] == ["first.0000", "last.0000"]
    assert len(clips[1].caption) == official.MAX_CELL_CHARS - 4
    assert [(p.line, p.video_id) for p in problems] == [(3, "bigscore"), (4, "bigcell"), (5, "bighour"), (6, "bug")]
    assert f"matching_score {huge} is not a finite number" in problems[0].reason
    assert problems[1].reason == (
        f"column 'timestamp' has 20000002 characters, over the limit of {official.MAX_CELL_CHARS} (MAX_CELL_CHARS)"
    )
    assert f"timestamp '{huge}:00:00.000' is not a finite, non-negative time" in problems[2].reason
    assert problems[3].reason == "TypeError: an unforeseen bug"
    assert max(parsed) <= official.MAX_CELL_CHARS  # the 20 MB cell never reached the parser
    warnings = [r.getMessage() for r in caplog.records if "skipping malformed row" in r.getMessage()]
    assert [m.split(": skipping")[0] for m in warnings] == [f"{path}:{line}" for line in (3, 4, 5, 6)]


def test_non_finite_huge_and_garbage_values_are_row_problems(tmp_path):
    """Every kind of nonsense a cell can hold is reported as its row's problem, briefly."""
    huge = "1" + "0" * 400
    cases = [  # videoID, column, cell, what the reason says
        ("inf", "matching_score", "[1e400]", "matching_score inf is not a finite number"),
        ("hex", "matching_score", f"[0x{'f' * 400}]", f"matching_score {int('f' * 400, 16)} is not a finite number"),
        ("bool", "matching_score", "[True]", "matching_score True is not a finite number"),
        ("shot", "shot_boundary_detection", f"[[[0, {huge}]]]", f"timestamp {huge} is not a finite"),
        ("nested", "caption", "[[[['deep']]]]", "caption [[['deep']]] is not a string"),
        ("parens", "caption", "[" * 300 + "]" * 300, "column 'caption' is not a Python literal"),
        ("minus", "matching_score", "[" + "-" * 100_000 + "1]", "column 'matching_score' is not a Python literal"),
        ("../../etc", "caption", "['x']", "videoID '../../etc' is not a valid id"),  # ids name files
        ("v" * 500_000, "caption", "['x']", "is not a valid id"),
        ("long", "timestamp", f"[['{'9' * 500_000}', '0:00:01.000']]", "' is not H:MM:SS.mmm"),
    ]
    rows = [_with_cell(video_id, column, cell) for video_id, column, cell, _ in cases]
    rows.append(_row("last", [["0:00:03.000", "0:00:04.000"]], ["fine"]))
    path = _write_csv(tmp_path / "panda.csv", rows)

    problems: list[official.RowProblem] = []
    assert [c.clip_id for c in official.read_official_csv(path, problems)] == ["last.0000"]
    assert [p.line for p in problems] == list(range(2, 2 + len(cases)))
    for problem, (video_id, _, _, reason) in zip(problems, cases):
        assert reason in problem.reason, (video_id, problem.reason)
    # A hostile value or videoID is cut short, so it cannot flood the log or memory.
    limit = official._MAX_PROBLEM_CHARS
    assert problems[-1].reason.startswith("clip 0: timestamp '999") and len(problems[-1].reason) <= limit
    assert problems[-2].video_id.startswith("vvv") and len(problems[-2].video_id) <= limit


def test_a_row_that_is_not_utf8_is_a_row_problem(tmp_path):
    path = _write_csv(tmp_path / "panda.csv", [_row(n, [["0:00:00.000", "0:00:01.000"]], ["CAPTION"]) for n in "abc"])
    path.write_bytes(path.read_bytes().replace(b"CAPTION", b"caf\xe9", 2).replace(b"caf\xe9", b"CAPTION", 1))
    problems: list[official.RowProblem] = []
    assert [c.clip_id for c in official.read_official_csv(path, problems)] == ["a.0000", "c.0000"]
    assert [(p.line, p.video_id, p.reason) for p in problems] == [(3, "b", "the row is not UTF-8 text")]


def test_read_is_a_generator_that_streams(tmp_path):
    path = _write_csv(tmp_path / "panda.csv", [_row("a", [["0:00:00.000", "0:00:01.000"]], ["x"])])
    clips = official.read_official_csv(path)
    assert iter(clips) is clips
    assert next(clips).clip_id == "a.0000"


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> tuple[Path, Path]:
    """An official CSV and a video2dataset `files` folder with every kind of outcome."""
    root = tmp_path_factory.mktemp("official")
    folder = root / "v2d"
    rows = [
        # per-clip layout: clips 0 and 1 downloaded (1 within tolerance, seconds as numbers), clip 2 absent.
        _row(
            "clipped",
            [["0:00:00.500", "0:00:02.000"], ["0:00:02.450", "0:00:04.000"], ["0:00:05.000", "0:00:06.000"]],
            ["c0", "c1", "c2"],
        ),
        # download failed: both clips are failed.
        _row("gone", [["0:00:00.000", "0:00:01.000"], ["0:00:01.000", "0:00:02.000"]], ["g0", "g1"]),
        # malformed: lengths disagree.
        _row("broken", [["0:00:00.000", "0:00:01.000"]], ["b0", "b1"]),
        # per-video layout: the whole 4 s video; clip 2 runs past its end.
        _row("whole", [["0:00:00.000", "0:00:01.500"], ["0:00:01.500", "0:00:03.000"], ["0:00:03.500", "0:00:09.000"]],
             ["w0", "w1", "w2"]),
        # a success whose file is not a video.
        _row("corrupt", [["0:00:00.000", "0:00:01.000"]], ["x0"]),
        # never attempted.
        _row("absent", [["0:00:00.000", "0:00:01.000"]], ["a0"]),
        # a success whose video file is gone.
        _row("nofile", [["0:00:00.000", "0:00:01.000"]], ["n0"]),
    ]
    csv_path = _write_csv(root / "panda70m.csv", rows)
    url = "https://www.youtube.com/watch?v={}".format
    _sample(folder, "00000", "000000000_00000",
            {"url": url("clipped"), "status": "success", "clips": [["00:00:00.500", "00:00:02.000"]]}, 1.5)
    _sample(folder, "00000", "000000000_00001",
            {"url": url("clipped"), "status": "success", "clips": [[2.5, 4.0]]}, 1.5)
    # 0.2 s off clipped.0002: outside the tolerance, so not its file.
    _sample(folder, "00000", "000000000_00002",
            {"url": url("clipped"), "status": "success", "clips": [[5.2, 6.0]]}, 0.8)
    _sample(folder, "00000", "000000001",
            {"url": url("gone"), "status": "failed_to_download", "error_message": "Video unavailable", "clips": []})
    _sample(folder, "00001", "000010000", {"url": url("whole"), "status": "success"}, 4.0)
    _sample(folder, "00001", "000010001_00000",
            {"url": url("corrupt"), "status": "success", "clips": [["00:00:00.000", "00:00:01.000"]]})
    (folder / "00001" / "000010001_00000.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    _sample(folder, "00001", "000010002_00000", {"url": url("nofile"), "status": "success", "clips": [[0.0, 1.0]]})
    (folder / "00000_stats.json").write_text(json.dumps({"count": 2, "successes": 1, "failed_to_download": 1}))
    return csv_path, folder


def test_index_reads_both_layouts(downloads):
    _, folder = downloads
    index = official.index_video2dataset(folder)
    by_key = {s.key: s for s in index.samples}
    assert sorted(by_key) == [
        "000000000_00000", "000000000_00001", "000000000_00002", "000000001", "000010000", "000010001_00000",
        "000010002_00000",
    ]
    assert by_key["000000000_00000"].span == (0.5, 2.0)
    assert by_key["000000000_00001"].span == (2.5, 4.0)
    assert by_key["000010000"].span is None and by_key["000010000"].path.name == "000010000.mp4"
    assert by_key["000000001"].status == "failed_to_download" and by_key["000000001"].path is None
    assert index.unreadable == 0


def test_join_ties_clips_by_timestamp_and_counts_the_rest(downloads, caplog):
    csv_path, folder = downloads
    with caplog.at_level(logging.INFO, logger="panda_jax.data.official"):
        joined, report = official.join(csv_path, folder)

    got = {j.clip.clip_id: (j.path.name, round(j.start, 3), round(j.end, 3)) for j in joined}
    assert got == {
        "clipped.0000": ("000000000_00000.mp4", 0.0, 1.5),
        "clipped.0001": ("000000000_00001.mp4", 0.0, 1.5),
        "whole.0000": ("000010000.mp4", 0.0, 1.5),
        "whole.0001": ("000010000.mp4", 1.5, 3.0),
    }
    assert [j.clip.caption for j in joined] == ["c0", "c1", "w0", "w1"]
    assert (report.clips, report.matched, report.missing, report.failed, report.malformed_rows) == (11, 4, 2, 5, 1)
    assert report.reasons == {
        "no downloaded clip at this timestamp": 1,  # clipped.0002
        "source video not downloaded": 1,  # absent.0000
        "download failed_to_download": 2,  # gone.*
        "clip ends after the downloaded video": 1,  # whole.0002
        "unreadable video": 1,  # corrupt.0000
        "video file absent": 1,  # nofile.0000
    }
    assert report.problems[0].video_id == "broken" and report.problems[0].line == 4
    assert report.summary() == "11 clips in the CSV: 4 matched, 2 missing, 5 failed; 1 malformed rows skipped"
    assert report.summary() in caplog.text
    # Every matched span lies inside its file, so its frames can be read.
    for j in joined:
        assert j.end <= io.probe(j.path).duration + 1e-6


def test_join_matches_by_video_id_when_urls_differ(tmp_path):
    csv_path = _write_csv(tmp_path / "p.csv", [_row("vid", [["0:00:00.000", "0:00:01.000"]], ["cap"])])
    folder = tmp_path / "v2d"
    _sample(folder, "00000", "000000000_00000",
            {"url": "https://youtu.be/vid", "videoID": "vid", "status": "success", "clips": [[0.0, 1.0]]}, 1.0)
    joined, report = official.join(csv_path, folder)
    assert [(j.clip.clip_id, j.path.name) for j in joined] == [("vid.0000", "000000000_00000.mp4")]
    assert report.matched == 1 and report.failed == report.missing == 0


def test_unreadable_sample_metadata_is_skipped(tmp_path):
    folder = tmp_path / "v2d"
    (folder / "00000").mkdir(parents=True)
    (folder / "00000" / "000000000.json").write_text("{not json")
    _sample(folder, "00000", "000000001", {"url": "u", "status": "failed_to_download"})
    index = official.index_video2dataset(folder)
    assert [s.key for s in index.samples] == ["000000001"] and index.unreadable == 1


def test_a_webdataset_folder_is_refused_with_advice(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="--output_format files"):
        official.index_video2dataset(tmp_path)

"""The selection report: hand-counted numbers, what the markdown and the figure say, and hand-typed labels."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from panda_jax.records import Selection
from panda_jax.selection_report import STRONG_MATCH, read_labels, report_numbers, write_report

TEACHERS = ("alpha", "beta", "gamma")  # gamma is never selected


def selection(clip: str, teacher: str, score: float, missing: tuple[str, ...] = ()) -> Selection:
    return Selection(
        clip_id=clip, caption=f"{teacher} says", teacher=teacher, matching_score=score, scores={teacher: score},
        missing_teachers=missing,
    )


# Scores on both sides of 0.43, exactly 0.43 (not a strong match) and exactly 1.0 (the last bin).
SELECTIONS = [
    selection("v.0001", "alpha", 0.9),
    selection("v.0002", "alpha", 1.0),
    selection("v.0003", "beta", 0.43),
    selection("v.0004", "alpha", 0.2, missing=("gamma",)),
    selection("v.0005", "beta", 0.5),
    selection("v.0006", "alpha", 0.05),
]
LABELS = {
    "v.0001": "alpha",  # agrees
    "v.0003": "alpha",  # beta was selected
    "v.0005": "beta",  # agrees
    "v.0002": "delta",  # a teacher not in the run; alpha was selected
    "v.9999": "gamma",  # no such clip selected: ignored
}


def test_numbers_equal_the_hand_counted_ones():
    numbers = report_numbers(SELECTIONS, TEACHERS)
    assert numbers.clips == 6
    assert numbers.teachers == TEACHERS
    assert numbers.selected == {"alpha": 4, "beta": 2, "gamma": 0}
    assert numbers.selective_rate == pytest.approx({"alpha": 4 / 6, "beta": 2 / 6, "gamma": 0.0})
    assert numbers.mean_matching_score == pytest.approx(3.08 / 6)
    assert numbers.strong_matches == 3  # 0.9, 1.0, 0.5; not 0.43
    assert numbers.threshold == STRONG_MATCH == 0.43
    assert numbers.histogram == (1, 0, 1, 0, 1, 1, 0, 0, 0, 2)
    assert numbers.missing_captions == 1
    assert (numbers.labelled, numbers.agreement, numbers.confusion) == (0, None, {})
    assert json.loads(json.dumps(numbers.to_dict()))["histogram"] == [1, 0, 1, 0, 1, 1, 0, 0, 0, 2]
    # Selected teachers missing from the list follow it, in order of first appearance.
    assert report_numbers(SELECTIONS, ["gamma"]).teachers == ("gamma", "alpha", "beta")
    assert report_numbers(SELECTIONS, TEACHERS, threshold=0.95).strong_matches == 1


def test_agreement_and_confusion_with_labels():
    numbers = report_numbers(SELECTIONS, TEACHERS, LABELS)
    assert numbers.labelled == 4
    assert numbers.agreement == 0.5
    assert numbers.confusion == {
        "alpha": {"alpha": 1, "beta": 1, "gamma": 0},
        "beta": {"alpha": 0, "beta": 1, "gamma": 0},
        "gamma": {"alpha": 0, "beta": 0, "gamma": 0},
        "delta": {"alpha": 1, "beta": 0, "gamma": 0},
    }
    assert list(numbers.confusion) == ["alpha", "beta", "gamma", "delta"]


def test_report_and_figure_say_what_the_numbers_say(tmp_path):
    numbers = report_numbers(SELECTIONS, TEACHERS, LABELS)
    details = {"checkpoint": "blip2-itm-tiny", "config": "select:paper"}
    report, figure = write_report(numbers, tmp_path / "out", title="Selection of run 7", details=details)
    assert (report, figure) == (tmp_path / "out" / "report.md", tmp_path / "out" / "selective_rate.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.md", "selective_rate.png"]

    with Image.open(figure) as image:
        assert (image.format, image.size) == ("PNG", (1100, 400))
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 10  # something was drawn

    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Selection of run 7\n\n- checkpoint: blip2-itm-tiny\n- config: select:paper\n")
    assert "6 clips, 1 with a caption missing from at least one teacher." in text
    for row in ("| alpha | 4 | 66.7 % |", "| beta | 2 | 33.3 % |", "| gamma | 0 | 0.0 % |"):
        assert row in text
    assert "Mean matching score: 0.513." in text
    assert "3 of 6 (50.0 %) above 0.43" in text
    assert "Top-1 agreement with the labels: 50.0 % (4 labelled clips)" in text
    assert "| label \\ selected | alpha | beta | gamma |" in text
    assert "| delta | 1 | 0 | 0 |" in text
    assert "![selective rates](selective_rate.png)" in text

    rate_rows = re.findall(r"^\| (\w+) \| (\d+) \| (\d+\.\d) % \|$", text, re.MULTILINE)
    assert {name: int(count) for name, count, _ in rate_rows} == numbers.selected
    assert {name: float(rate) for name, _, rate in rate_rows} == {
        name: round(100 * rate, 1) for name, rate in numbers.selective_rate.items()
    }
    bin_rows = re.findall(r"^\| \[(\d\.\d), (\d\.\d)[)\]] \| (\d+) \|$", text, re.MULTILINE)
    assert [(float(low), float(high)) for low, high, _ in bin_rows] == [(i / 10, (i + 1) / 10) for i in range(10)]
    assert tuple(int(count) for *_, count in bin_rows) == numbers.histogram


def test_read_labels_skips_bad_lines_as_problems(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(
        "\n".join([
            '{"clip_id": "v.0001", "teacher": "alpha"}',
            "not json",
            '{"clip_id": "v.0002"}',
            '{"clip_id": "../../x", "teacher": "alpha"}',
            "",
            '{"clip_id": "v.0001", "teacher": "beta"}',
            '{"clip_id": "v.0003", "teacher": "gamma", "note": "a close call"}',
        ]),
        encoding="utf-8",
    )
    problems = []
    assert read_labels(path, problems) == {"v.0001": "alpha", "v.0003": "gamma"}
    assert [(p.source, p.item_id) for p in problems] == [
        (f"{path}:2", ""), (f"{path}:3", "v.0002"), (f"{path}:4", "../../x"), (str(path), "v.0001"),
    ]
    assert "not valid JSON" in problems[0].error
    assert "'teacher'" in problems[1].error
    assert "not a valid id" in problems[2].error
    assert "labelled twice; the first counts" in problems[3].error

    with pytest.raises(FileNotFoundError, match="labels file .*missing.jsonl does not exist"):
        read_labels(tmp_path / "missing.jsonl", [])


def test_no_clips_still_writes_the_report(tmp_path):
    numbers = report_numbers([], ["alpha", "beta"])
    assert (numbers.clips, numbers.teachers, numbers.selected) == (0, ("alpha", "beta"), {"alpha": 0, "beta": 0})
    assert numbers.selective_rate == {"alpha": 0.0, "beta": 0.0}
    assert (numbers.mean_matching_score, numbers.strong_matches, numbers.missing_captions) == (None, 0, 0)
    assert numbers.histogram == (0,) * 10
    assert (numbers.labelled, numbers.agreement, numbers.confusion) == (0, None, {})

    report, figure = write_report(numbers, tmp_path)
    assert "no clips were selected" in report.read_text(encoding="utf-8")
    with Image.open(figure) as image:
        assert image.size == (1100, 400)

    # Labels for clips that were not selected, and no teachers at all.
    labelled = report_numbers([], ["alpha"], {"v.0001": "alpha"})
    assert (labelled.labelled, labelled.agreement, labelled.confusion) == (0, None, {"alpha": {"alpha": 0}})
    report, _ = write_report(labelled, tmp_path / "labelled")
    assert "Top-1 agreement with the labels: none" in report.read_text(encoding="utf-8")
    report, _ = write_report(report_numbers([], []), tmp_path / "bare")
    assert "0 clips: no clips were selected." in report.read_text(encoding="utf-8")

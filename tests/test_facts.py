"""The fact scorer of the synthetic corpus: every ground-truth caption scores F1 1, each kind of mistake
lowers its check and the F1 by the hand-computed amount, and the judge, event lookup, summary and CLI."""

from __future__ import annotations

import json

import pytest

from panda_jax.data.synthetic.sampling import sample_video_spec
from panda_jax.evaluate import (
    CHECKS, StatedFacts, StatedObject, event_of, fact_accuracy, judge, read_caption, score_caption,
)
from panda_jax.evaluate import facts as facts_module
from panda_jax.evaluate.__main__ import main
from panda_jax.records import Clip, read_jsonl, write_jsonl

TWO = {  # a scene with a main and another object
    "background": {"kind": "stripes", "colors": ["blue", "white"]},
    "objects": [{"pattern": "banded", "color": "red", "size": "large"},
                {"pattern": "dotted", "color": "yellow", "size": "small"}],
    "action": "moves left",
}  # fmt: skip
ONE = {**TWO, "objects": TWO["objects"][:1]}
RIGHT = ("A large red banded disc moves to the left on a blue and white striped background, next to a small yellow "
         "dotted disc.")


def test_every_ground_truth_caption_states_its_facts_exactly():
    events = [e for seed in range(4) for index in range(50) for e in sample_video_spec(seed, index, size=64).events]
    assert len(events) > 500
    for event in events:
        facts = event.scene.facts()
        score = score_caption(event.caption, facts)
        assert (score.precision, score.recall, score.f1) == (1.0, 1.0, 1.0), event.caption
        stated = read_caption(event.caption)
        assert stated.background_colors == tuple(facts["background"]["colors"]), event.caption  # in order
        assert [o.pattern for o in stated.objects] == [o["pattern"] for o in facts["objects"]], event.caption


def test_a_caption_is_read_with_or_without_articles_punctuation_and_sizes():
    assert read_caption("Cyan-to-red gradient backdrop: medium  purple TILED disc swells in size!!") == StatedFacts(
        "gradient", ("cyan", "red"), (StatedObject("tiled", "purple", "medium"),), "grows")
    assert read_caption("On a backdrop fading from navy to beige, an orange smooth disc does not move while a pink "
                        "dotted disc stays put.") == StatedFacts(
        "gradient", ("navy", "beige"), (StatedObject("smooth", "orange"), StatedObject("dotted", "pink")), "stays still")
    # The first action phrase is the main object's: the other object's "stays still" comes after it.
    assert read_caption("a red tiled disc shrinks while a blue dotted disc stays still").action == "shrinks"
    assert read_caption("A large banded disc moves left.").objects == (StatedObject("banded", None, "large"),)
    # Each part of an object phrase but its noun may be left out.
    assert read_caption("a red disc rises").objects == (StatedObject(None, "red"),)
    assert read_caption("It gets bigger in front of a blotchy teal and olive background").background_kind == "noise"


def test_each_mistake_lowers_its_check_and_the_f1_by_hand():
    right = score_caption(RIGHT, TWO)
    assert right.checks == dict.fromkeys(CHECKS, True) and right.f1 == 1.0
    # One wrong fact of 9 stated and of 7 required: P = 8/9, R = 6/7, F1 = 2PR / (P + R) = 48/55.
    swaps = {("red", "green"): "main_color", ("red banded", "red tiled"): "main_pattern", ("left", "right"): "action",
             ("blue", "navy"): "background_colors", ("yellow", "pink"): "other_color"}  # fmt: skip
    for (old, new), check in swaps.items():
        wrong = RIGHT.replace(old, new)
        score = score_caption(wrong, TWO)
        assert {name for name, value in score.checks.items() if value is not True} == {check}, wrong
        assert score.checks[check] is False
        assert (score.precision, score.recall, score.f1) == pytest.approx((8 / 9, 6 / 7, 48 / 55))
    # A wrong size costs precision only (sizes are not required): P = 8/9, R = 1, F1 = 16/17.
    assert score_caption(RIGHT.replace("small", "medium"), TWO).f1 == pytest.approx(16 / 17)
    # No background: 7 stated, all right, 5 of the 7 required: F1 = 2 * 5/7 / (12/7) = 5/6.
    dropped = score_caption("A large red banded disc moves to the left, next to a small yellow dotted disc.", TWO)
    assert dropped.checks["background_kind"] is None and dropped.checks["background_colors"] is None
    assert (dropped.precision, dropped.recall, dropped.f1) == pytest.approx((1.0, 5 / 7, 5 / 6))
    # An invented object: its 3 facts are wrong, P = 6/9, R = 5/5, F1 = 4/5; not stating it is no loss.
    invented = score_caption(RIGHT, ONE)
    assert [invented.checks[f"other_{a}"] for a in ("pattern", "color", "size")] == [False, False, False]
    assert (invented.precision, invented.recall, invented.f1) == pytest.approx((2 / 3, 1.0, 4 / 5))
    alone = score_caption(RIGHT.split(",")[0], ONE)
    assert alone.f1 == 1.0 and alone.in_scene == set(CHECKS) - {"other_pattern", "other_color", "other_size"}
    # A caption stating nothing scores 0, not NaN.
    nothing = score_caption("Lorem ipsum, dolor sit amet.", TWO)
    assert nothing.checks == dict.fromkeys(CHECKS) and (nothing.precision, nothing.recall, nothing.f1) == (0, 0, 0)


def test_background_colours_are_checked_in_any_order_but_kind_and_count_matter():
    assert score_caption(RIGHT.replace("blue and white", "white and blue"), TWO).f1 == 1.0
    checks = score_caption(RIGHT.replace("blue and white striped", "plain blue"), TWO).checks
    assert (checks["background_kind"], checks["background_colors"]) == (False, False)


def test_the_judge_takes_the_best_f1_then_cider_then_the_name(monkeypatch):
    reference = RIGHT
    assert judge({"b": RIGHT.replace("red", "green"), "a": "nothing at all", "c": RIGHT}, TWO, reference) == "c"
    # Equal F1 (one wrong colour each): the caption closer to the reference's words wins.
    closer = RIGHT.replace("red", "green")
    farther = "Against a blue and white striped backdrop a large green banded disc slides left beside a small yellow dotted disc"
    assert score_caption(farther, TWO).f1 == score_caption(closer, TWO).f1 == pytest.approx(48 / 55)
    assert judge({"a": farther, "b": closer}, TWO, reference) == "b"
    assert judge({"b": RIGHT, "a": RIGHT}, TWO, reference) == "a"  # equal everything: the first name
    assert judge({"b": "", "a": "?"}, TWO, reference) == "a"  # no words at all: no CIDEr to compute

    def no_cider(*args):
        raise AssertionError("CIDEr computed without a tie")

    monkeypatch.setattr(facts_module, "Cider", no_cider)
    assert judge({"only": "a red banded disc"}, TWO, reference) == "only"
    assert judge({"a": "a red banded disc", "b": RIGHT}, TWO, reference) == "b"
    with pytest.raises(ValueError, match="no candidate"):
        judge({}, TWO, reference)


def test_a_clip_gets_the_event_it_overlaps_most():
    record = {"gt_events": [{"start_frame": 0, "end_frame": 50}, {"start_frame": 50, "end_frame": 120}]}
    assert event_of(40, 100, record) is record["gt_events"][1]
    assert event_of(40, 60, record) is record["gt_events"][0]  # a tie: the earlier event
    assert event_of(0, 10, record) is record["gt_events"][0]
    assert event_of(120, 130, record) is None


def test_clips_are_told_by_object_count_and_by_whether_their_subtitles_are_clean():
    events = [{"start_frame": 0, "end_frame": 100, "facts": ONE}, {"start_frame": 100, "end_frame": 200, "facts": TWO},
              {"start_frame": 200, "end_frame": 300, "facts": ONE}, {"start_frame": 300, "end_frame": 400, "facts": ONE}]
    lines = [(1.0, 3.0, 0, "none"), (5.0, 7.0, 1, "none"), (8.5, 9.5, 2, "none"), (9.0, 11.0, 3, "misaligned")]
    video = {"video_id": "v", "fps": 25, "gt_events": events,
             "subtitles": [{"start": start, "end": end, "text": "..."} for start, end, _, _ in lines],
             "gt_subtitles": [{"event": event, "noise": noise} for _, _, event, noise in lines]}  # fmt: skip
    clips = [Clip(clip_id=f"v.{i}", video_id="v", start=e["start_frame"] / 25, end=e["end_frame"] / 25)
             for i, e in enumerate(events)]  # fmt: skip
    conditions = [event["conditions"] for event in facts_module.clip_events(clips, {"v": video}).values()]
    # Clean; two objects; another event's line shows during it; its only line belongs to another event, misplaced.
    assert conditions == [("one_object", "clean_subtitles"), ("clean_subtitles",), ("one_object",), ("one_object",)]


def test_fact_accuracy_counts_unstated_facts_as_not_right():
    scores = [score_caption(RIGHT, TWO), score_caption(RIGHT.replace("red", "green"), ONE),
              score_caption("A red banded disc moves left.", ONE)]  # fmt: skip
    accuracy = fact_accuracy(scores)
    assert list(accuracy) == [*CHECKS, "main_color_and_pattern", "precision", "recall", "f1"]
    assert accuracy["main_color"] == accuracy["main_color_and_pattern"] == pytest.approx(2 / 3)
    assert accuracy["main_size"] == pytest.approx(2 / 3)  # the third caption gives no size
    assert accuracy["background_kind"] == pytest.approx(2 / 3)
    assert accuracy["other_pattern"] == 1.0  # only the first scene has another object
    # F1: 1; P = 5/9, R = 4/5 (a wrong colour, an invented object): 40/61; P = 1, R = 3/5 (no background): 3/4.
    assert accuracy["f1"] == pytest.approx((1 + 40 / 61 + 3 / 4) / 3)
    assert "other_pattern" not in fact_accuracy(scores[1:])  # no scene with two objects
    with pytest.raises(ValueError, match="no caption scores"):
        fact_accuracy([])


def test_cli_scores_every_teacher_against_the_clips_events(tmp_path, capsys):
    spec = sample_video_spec(0, 1, size=64)
    record = spec.record()
    clips = [{"clip_id": f"{spec.video_id}.{i:04d}", "video_id": spec.video_id, "start": e.start_frame / spec.fps,
              "end": e.end_frame / spec.fps, "start_frame": e.start_frame + 3, "end_frame": e.end_frame - 3}
             for i, e in enumerate(spec.events)]  # fmt: skip
    captions = [{"clip_id": clip["clip_id"], "teacher": teacher, "caption": text}
                for clip, event in zip(clips, spec.events)
                for teacher, text in (("truth", event.caption), ("mute", "Nothing to see here."))]  # fmt: skip
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("videos", "clips", "captions")}
    write_jsonl(paths["videos"], [record])
    write_jsonl(paths["clips"], clips)
    write_jsonl(paths["captions"], captions)
    out = tmp_path / "facts.json"
    argv = ["--task", "facts", *(f"--{name}={path}" for name, path in paths.items())]
    assert main([*argv, "--out", str(out)]) == 0
    numbers = json.loads(out.read_text())
    assert numbers["task"] == "facts" and numbers["truth/captions"] == numbers["mute/captions"] == len(spec.events)
    assert (numbers["truth/f1"], numbers["truth/main_color"]) == (1, 1)
    one_object = sum(len(event.scene.objects) == 1 for event in spec.events)
    assert one_object and numbers["truth/one_object/main_color_and_pattern"] == 1  # the same on a condition's clips
    assert (numbers["mute/f1"], numbers["mute/action"]) == (0, 0)
    assert "truth/f1" in capsys.readouterr().out
    # The judge's labels (the oracle scored as `judge`), the references, one name for all the captions.
    judged, truth = tmp_path / "labels.jsonl", tmp_path / "truth.jsonl"
    assert main([*argv, "--out", str(out), "--judged", str(judged), "--truth_out", str(truth)]) == 0
    numbers = json.loads(out.read_text())
    assert [label["teacher"] for label in read_jsonl(judged)] == ["truth"] * len(spec.events)
    assert (numbers["judge/f1"], numbers["judge/every_teacher_wrong"]) == (1, 0)
    assert [row["caption"] for row in read_jsonl(truth)] == [event.caption for event in spec.events]
    assert main([*argv, "--out", str(out), "--name", "all"]) == 0
    assert json.loads(out.read_text())["all/captions"] == 2 * len(spec.events)
    write_jsonl(paths["clips"], clips[1:])
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and f"clip {clips[0]['clip_id']} has a caption but is not in" in error

"""The demo's contract, fast: the verdicts results.json and the README state, and stages keyed on what made them."""

from __future__ import annotations

import dataclasses
import json

import pytest

import panda_jax
from panda_jax import cli
from panda_jax.demo import claims, report
from panda_jax.demo.stages import Stages, Step

TEACHERS = {"image": 0.50, "video": 0.55, "text": 0.40, "image_side_text": 0.52}  # fact F1: video is the best


def fake_results() -> dict:
    """Results shaped like `Demo.run`'s, where every claim holds and every teacher meets its target."""

    def row(f1: float, speed: float) -> dict:
        return {"fact_f1": f1, "clips_per_second": speed, "clips": 12, "BLEU-4": 0.1, "ROUGE-L": 0.3, "CIDEr": 0.5}

    def split_row(event_f1: float) -> dict:
        return {"clips": 12, "mean_clip_seconds": 2.0, "shot_f1": 0.9, "event_f1": event_f1,
                "event_precision": event_f1, "event_recall": event_f1, "max_running_lpips": None}  # fmt: skip

    selection_report = {"agreement": 0.40, "labelled": 10, "confusion": {"video": {"video": 4, "image": 6}},
                        "selective_rate": {"video": 0.4, "image": 0.6}}  # fmt: skip
    return {
        "corpus": {"val": 20, "test": 12},
        "split": {"content_shots": split_row(0.30), "content_stitch": split_row(0.50),
                  "transnetv2_shots": split_row(0.40), "transnetv2_stitch": split_row(0.45)},
        "teacher_facts": {"image/one_object/main_color_and_pattern": 0.92, "video/action": 0.86,
                          "text/clean_subtitles/main_color": 0.95, "text/clean_subtitles/main_pattern": 0.90,
                          "text/clean_subtitles/action": 0.88, "image_side_text/clean_subtitles/f1": 0.70,
                          "image/clean_subtitles/f1": 0.60, "judge/f1": 0.70, "judge/every_teacher_wrong": 0.2},
        "selection": {"pretrained": {"report": {"agreement": 0.30}}, "hard_negatives": {"report": selection_report},
                      "contrastive": {"report": {"agreement": 0.35}}},
        "labelled": {"examples": 20},
        "student_labels": {"selection/f1": 0.6},
        "table4": {**{name: row(f1, 10.0) for name, f1 in TEACHERS.items()}, "teachers + selection": row(0.62, 1.0),
                   "student (video)": row(0.58, 6.0), "student (video+text)": row(0.60, 5.0)},
        "stage_seconds": {"corpus": 1.0},
        "seconds": 2.0,
    }  # fmt: skip


def test_every_claim_holds_on_results_that_bear_it_out_with_its_value_and_baseline():
    verdicts = claims.verdicts(fake_results())
    assert set(verdicts) == {"selection_beats_best_teacher", "fine_tuned_selector_beats_pretrained",
                             "hard_negatives_match_contrastive", "student_beats_best_teacher",
                             "student_reaches_selection", "text_helps_student", "stitching_raises_event_f1"}
    assert all(verdict["holds"] for verdict in verdicts.values())
    assert verdicts["selection_beats_best_teacher"] == {"holds": True, "value": 0.62, "baseline": 0.55,
                                                        "teacher": "video"}
    assert verdicts["fine_tuned_selector_beats_pretrained"] == {"holds": True, "value": 0.40, "baseline": 0.30}
    assert verdicts["hard_negatives_match_contrastive"] == {"holds": True, "value": 0.40, "baseline": 0.35}
    assert verdicts["student_beats_best_teacher"] == {"holds": True, "value": 0.60, "baseline": 0.55,
                                                      "teacher": "video"}
    assert verdicts["student_reaches_selection"] == {"holds": True, "value": 0.60, "baseline": 0.62,
                                                     "clips_per_second": 5.0, "baseline_clips_per_second": 1.0}
    assert verdicts["text_helps_student"] == {"holds": True, "value": 0.60, "baseline": 0.58}
    stitching = verdicts["stitching_raises_event_f1"]
    assert stitching["holds"] and stitching["baseline"] == 0.0
    assert stitching["value"] == pytest.approx(0.05) and stitching["detectors"] == pytest.approx(
        {"content": 0.20, "transnetv2": 0.05})


def changed(*changes: tuple) -> dict:
    """fake_results() with numbers changed, each change `(key, key, ..., value)`."""
    results = fake_results()
    for *path, value in changes:
        node = results
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return results


@pytest.mark.parametrize("results, claim, value, baseline", [
    # less than 0.05 of fact F1 over the best teacher
    (changed(("table4", "teachers + selection", "fact_f1", 0.59)), "selection_beats_best_teacher", 0.59, 0.55),
    (changed(("selection", "pretrained", "report", "agreement", 0.45)), "fine_tuned_selector_beats_pretrained",
     0.40, 0.45),
    (changed(("selection", "pretrained", "report", "agreement", 0.40)), "fine_tuned_selector_beats_pretrained",
     0.40, 0.40),  # a tie is not beating
    (changed(("selection", "contrastive", "report", "agreement", 0.41)), "hard_negatives_match_contrastive",
     0.40, 0.41),
    (changed(("table4", "student (video+text)", "fact_f1", 0.55)), "student_beats_best_teacher", 0.55, 0.55),
    (changed(("table4", "student (video+text)", "fact_f1", 0.55)), "student_reaches_selection", 0.55, 0.62),
    (changed(("table4", "student (video+text)", "clips_per_second", 2.9)), "student_reaches_selection",
     0.60, 0.62),  # F1 enough, not 3× faster
    (changed(("table4", "student (video)", "fact_f1", 0.61)), "text_helps_student", 0.60, 0.61),
])  # fmt: skip
def test_a_claim_fails_when_its_numbers_fall_short(results, claim, value, baseline):
    verdicts = claims.verdicts(results)
    assert verdicts[claim]["holds"] is False
    assert (verdicts[claim]["value"], verdicts[claim]["baseline"]) == (value, baseline)
    assert sum(not verdict["holds"] for verdict in verdicts.values()) == (3 if value == 0.55 else 1)


def test_hard_negatives_tying_contrastive_match_it():
    verdict = claims.verdicts(changed(("selection", "contrastive", "report", "agreement", 0.40)))
    assert verdict["hard_negatives_match_contrastive"] == {"holds": True, "value": 0.40, "baseline": 0.40}


def test_stitching_must_raise_the_event_f1_with_every_detector():
    verdict = claims.verdicts(changed(("split", "transnetv2_stitch", "event_f1", 0.35)))["stitching_raises_event_f1"]
    assert verdict["holds"] is False and verdict["value"] == pytest.approx(-0.05) and verdict["baseline"] == 0.0
    assert verdict["detectors"] == pytest.approx({"content": 0.20, "transnetv2": -0.05})
    results = fake_results()
    results["split"] = {label: row for label, row in results["split"].items() if label.startswith("content")}
    verdict = claims.verdicts(results)["stitching_raises_event_f1"]
    assert verdict["holds"] and verdict["value"] == pytest.approx(0.20) and list(verdict["detectors"]) == ["content"]


def test_each_teacher_is_measured_against_its_target():
    targets = claims.targets(fake_results())
    assert {name: (row["measured"], row["target"], row["holds"]) for name, row in targets.items()} == {
        "image": (0.92, 0.90, True), "video": (0.86, 0.85, True),
        "text": (pytest.approx((0.95 + 0.90 + 0.88) / 3), 0.90, True), "image_side_text": (0.70, 0.60, True),
    }  # fmt: skip
    missed = claims.targets(changed(("teacher_facts", "image/one_object/main_color_and_pattern", 0.89),
                                    ("teacher_facts", "video/action", 0.80),
                                    ("teacher_facts", "text/clean_subtitles/action", 0.70),
                                    ("teacher_facts", "image/clean_subtitles/f1", 0.70)))  # fmt: skip
    assert {name: (row["measured"], row["target"], row["holds"]) for name, row in missed.items()} == {
        "image": (0.89, 0.90, False), "video": (0.80, 0.85, False),
        "text": (pytest.approx((0.95 + 0.90 + 0.70) / 3), 0.90, False),
        "image_side_text": (0.70, 0.70, False),  # not better than the image teacher
    }  # fmt: skip


def test_a_target_on_clips_of_a_condition_the_test_videos_lack_is_not_met():
    results = fake_results()
    results["teacher_facts"] = {key: value for key, value in results["teacher_facts"].items() if "clean" not in key}
    targets = claims.targets(results)
    assert targets["text"]["measured"] is None and targets["text"]["holds"] is False
    assert (targets["image_side_text"]["measured"], targets["image_side_text"]["target"]) == (None, None)
    assert targets["image_side_text"]["holds"] is False


def test_the_report_states_the_verdicts_results_json_holds(tmp_path):
    results = changed(("table4", "student (video+text)", "fact_f1", 0.55))  # three claims fail
    results |= {"claims": claims.verdicts(results), "targets": claims.targets(results)}
    for name in ("video", "video_text"):
        metrics = tmp_path / "runs" / f"student_{name}" / "metrics.jsonl"
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({"split": "train", "step": 1, "loss": 2.0}) + "\n")
    selection = tmp_path / "select" / "hard_negatives_test" / "selection.jsonl"
    selection.parent.mkdir(parents=True)
    selection.write_text(json.dumps({"matching_score": 0.5}) + "\n")
    paragraphs = report.claims(results)
    assert len(paragraphs) == len(results["claims"])
    for paragraph, verdict in zip(paragraphs, results["claims"].values()):  # in the order of the verdicts
        assert f"?** {'Yes' if verdict['holds'] else 'No'}:" in paragraph
    readme = report.write_report(tmp_path, results, "quick").read_text()
    assert readme.count("?** No:") == 3 and readme.count("?** Yes:") == 4
    target_row = "| image | the main object's colour and pattern, both right, on one-object clips | 0.920 | 0.900 | Yes |"
    assert target_row in readme


# --- stages keyed on what made them --------------------------------------------------------------------------------


def test_a_stage_is_reused_while_its_inputs_stay_and_redone_from_scratch_when_they_change(tmp_path):
    calls, output = [], tmp_path / "made"

    def make() -> dict:
        calls.append(1)
        output.mkdir()
        (output / "file").write_text(str(len(calls)))
        return {"made": len(calls)}

    assert Stages(tmp_path).run("make", Step(make, [output], settings={"size": 1})) == {"made": 1}
    assert Stages(tmp_path).run("make", Step(make, [output], settings={"size": 1})) == {"made": 1} and len(calls) == 1
    assert Stages(tmp_path).run("make", Step(make, [output], settings={"size": 2})) == {"made": 2}  # old output gone
    assert (output / "file").read_text() == "2"
    record = json.loads((tmp_path / "stages" / "make.json").read_text())
    assert record["inputs"] == {"version": panda_jax.__version__, "after": {}, "configs": {}, "size": 2}
    assert record["seconds"] >= 0


def test_a_stage_runs_again_when_a_stage_it_runs_after_ran_again(tmp_path):
    calls = []

    def stages(size: int) -> Stages:
        """`first` (of `size`) then `second` after it, as a demo run does."""
        runner = Stages(tmp_path)
        runner.run("first", Step(lambda: calls.append("first"), settings={"size": size}))
        runner.run("second", Step(lambda: calls.append("second")), after=["first"])
        return runner

    stages(1)
    stages(1)
    assert calls == ["first", "second"]  # both reused the second time
    stages(2)
    assert calls == ["first", "second", "first", "second"]  # the second's own inputs did not change


@pytest.fixture
def demo(tmp_path):
    from panda_jax.demo.__main__ import Demo

    config = cli.load_config("demo:quick")
    config.out = str(tmp_path / "demo")
    return Demo(config)


def edit_captioner_config(monkeypatch, tmp_path) -> None:
    """As if configs/captioner.py had been edited: `--config=captioner:...` gets one more field."""
    edited = tmp_path / "captioner_edited.py"
    edited.write_text("from panda_jax.configs.captioner import get_config as installed\n\n\n"
                      "def get_config(variant):\n    config = installed(variant)\n    config.edited = True\n"
                      "    return config\n")  # fmt: skip
    config_file = cli.config_file
    monkeypatch.setattr(cli, "config_file", lambda spec: config_file(
        f"{edited}:{spec.partition(':')[2]}" if spec.startswith("captioner:") else spec))


def test_a_teachers_key_is_its_resolved_training_config_and_the_package_version(demo, monkeypatch, tmp_path):
    key = demo.stages.key(demo.train_teacher("image"))
    assert demo.stages.key(demo.train_teacher("image")) == key  # nothing changed
    resolved = key["configs"]["captioner:image"]
    assert resolved["train"]["steps"] == demo.config.teachers.steps.image and key["version"] == panda_jax.__version__
    installed = json.loads(json.dumps(cli.load_config("captioner:image").to_dict(), default=str))
    assert resolved == installed | {section: resolved[section] for section in ("train", "data", "captioner")}
    demo.config.teachers.learning_rate = 1e-4  # an override the demo applies
    overridden = demo.stages.key(demo.train_teacher("image"))
    assert overridden != key and overridden["configs"]["captioner:image"]["train"]["learning_rate"] == 1e-4
    edit_captioner_config(monkeypatch, tmp_path)  # the config file itself
    edited = demo.stages.key(demo.train_teacher("image"))
    assert edited != overridden and edited["configs"]["captioner:image"]["edited"] is True
    monkeypatch.setattr(panda_jax, "__version__", "9.9.9")
    assert demo.stages.key(demo.train_teacher("image")) != edited


def test_an_edited_captioner_config_retrains_the_teacher_and_recaptions_with_it(demo, monkeypatch, tmp_path):
    calls = []

    def run_teacher_then_caption() -> None:
        """The demo's teacher and caption stages, each with a function that only says it ran."""
        demo.stages = Stages(demo.out)
        teacher, captions = demo.train_teacher("image"), demo.teachers_caption("test", "image")
        demo.stages.run("teacher_image", dataclasses.replace(teacher, function=lambda: calls.append("teacher")))
        demo.stages.run("caption_test_image", dataclasses.replace(captions, function=lambda: calls.append("caption")),
                        ["teacher_image"])  # fmt: skip

    run_teacher_then_caption()
    run_teacher_then_caption()
    assert calls == ["teacher", "caption"]  # reused
    edit_captioner_config(monkeypatch, tmp_path)
    run_teacher_then_caption()
    assert calls == ["teacher", "caption", "teacher", "caption"]  # the teachers config did not change

"""The demo's verdicts, from its results: whether each claim of the paper holds, and whether each teacher meets the
target it is held to. results.json and the README report both read them from here."""

from __future__ import annotations

from typing import Any

from panda_jax.configs.teachers import DEMO_TEACHERS

SELECTORS = {"pretrained": "pretrained (pairs, in-batch negatives)",
             "hard_negatives": "fine-tuned, Panda-70M's hard negatives", "contrastive": "fine-tuned, plain contrastive"}
SELECTION_MARGIN = 0.05  # of fact F1: what teachers + selection must gain over the best teacher
STUDENT_SHARE, STUDENT_SPEEDUP = 0.9, 3.0  # the student reaches this share of selection's fact F1 at this speed-up
# What each teacher can see decides what it is held to: the mean of these fact accuracies (panda_jax.evaluate.facts)
# on the clips of a condition ("": all clips; facts.CONDITIONS), at least a number, or above another teacher's same
# mean. teacher → (what, condition, checks, target)
TARGETS: dict[str, tuple[str, str, tuple[str, ...], float | str]] = {
    "image": ("the main object's colour and pattern, both right, on one-object clips", "one_object",
              ("main_color_and_pattern",), 0.90),
    "video": ("the action", "", ("action",), 0.85),
    "text": ("main colour, pattern and action on clean-subtitle clips", "clean_subtitles",
             ("main_color", "main_pattern", "action"), 0.90),
    "image_side_text": ("fact F1 on clean-subtitle clips, above the image teacher's", "clean_subtitles", ("f1",),
                        "image"),
}  # fmt: skip


def claim(value: float | None, baseline: float | None, holds: bool, **extra: Any) -> dict[str, Any]:
    return {"holds": bool(holds), "value": value, "baseline": baseline, **extra}


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """claim → {holds, value, baseline, ...}, from `Demo.run`'s results (its `table4`, `selection` and `split`)."""
    rows = results["table4"]
    best = max(DEMO_TEACHERS, key=lambda name: rows[name]["fact_f1"])
    teacher, selection = rows[best]["fact_f1"], rows["teachers + selection"]
    student, video_only = rows["student (video+text)"], rows["student (video)"]
    agreement = {name: results["selection"][name]["report"]["agreement"] for name in SELECTORS}
    split = results["split"]  # per detector: its shots and its stitched events
    detectors = [label.removesuffix("_stitch") for label in split if label.endswith("_stitch")]
    stitching = {name: split[f"{name}_stitch"]["event_f1"] - split[f"{name}_shots"]["event_f1"] for name in detectors}
    lowest = min(stitching.values(), default=None)
    speedup = student["clips_per_second"] / selection["clips_per_second"]
    return {
        "selection_beats_best_teacher": claim(selection["fact_f1"], teacher,
                                              selection["fact_f1"] >= teacher + SELECTION_MARGIN, teacher=best),
        "fine_tuned_selector_beats_pretrained": claim(agreement["hard_negatives"], agreement["pretrained"],
                                                      agreement["hard_negatives"] > agreement["pretrained"]),
        "hard_negatives_match_contrastive": claim(agreement["hard_negatives"], agreement["contrastive"],
                                                  agreement["hard_negatives"] >= agreement["contrastive"]),
        "student_beats_best_teacher": claim(student["fact_f1"], teacher, student["fact_f1"] > teacher, teacher=best),
        "student_reaches_selection": claim(student["fact_f1"], selection["fact_f1"],
                                           student["fact_f1"] >= STUDENT_SHARE * selection["fact_f1"]
                                           and speedup >= STUDENT_SPEEDUP,
                                           clips_per_second=student["clips_per_second"],
                                           baseline_clips_per_second=selection["clips_per_second"]),
        "text_helps_student": claim(student["fact_f1"], video_only["fact_f1"],
                                    student["fact_f1"] > video_only["fact_f1"]),
        "stitching_raises_event_f1": claim(lowest, 0.0, lowest is not None and lowest > 0, detectors=stitching),
    }  # fmt: skip


def measured(facts: dict[str, float], teacher: str, condition: str, checks: tuple[str, ...]) -> float | None:
    """The mean of a teacher's fact accuracies `checks` on the clips of `condition` ("": all); None when one is not
    measured (no such clip)."""
    prefix = f"{teacher}/{condition}/" if condition else f"{teacher}/"
    values = [facts.get(prefix + check) for check in checks]
    return None if None in values else sum(values) / len(values)


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """teacher → {measured, target, holds, held_to}, from the judge's fact accuracies on the test clips."""
    facts, verdict = results["teacher_facts"], {}
    for teacher, (what, condition, checks, target) in TARGETS.items():
        value = measured(facts, teacher, condition, checks)
        if isinstance(target, str):  # above another teacher's same measure
            target = measured(facts, target, condition, checks)
            holds = value is not None and target is not None and value > target
        else:
            holds = value is not None and value >= target
        verdict[teacher] = {"measured": value, "target": target, "holds": holds, "held_to": what}
    return verdict

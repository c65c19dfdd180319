"""`make demo`: the quick demo end to end (heavy); its fast contract is tests/test_demo_contract.py."""

from __future__ import annotations

import json
import time

import pytest


@pytest.mark.heavy
def test_the_quick_demo_runs_every_stage_writes_its_report_and_reuses_all_of_it(tmp_path):
    from panda_jax.demo.__main__ import main

    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["table4"]) == {"image", "video", "text", "image_side_text", "teachers + selection",
                                      "student (video)", "student (video+text)"}  # fmt: skip
    assert all(row["clips_per_second"] > 0 for row in results["table4"].values())
    assert set(results["claims"]) == {"selection_beats_best_teacher", "fine_tuned_selector_beats_pretrained",
                                      "hard_negatives_match_contrastive", "student_beats_best_teacher",
                                      "student_reaches_selection", "text_helps_student", "stitching_raises_event_f1"}
    assert all({"holds", "value", "baseline"} <= set(claim) for claim in results["claims"].values())
    assert set(results["targets"]) == {"image", "video", "text", "image_side_text"}
    assert all({"measured", "target"} <= set(target) for target in results["targets"].values())
    assert results["seconds"] > 0
    readme = (out / "README.md").read_text()
    for heading in ("Table 2", "Teachers", "Caption selection", "Table 4", "The claims", "Stage wall times"):
        assert heading in readme
    assert (out / "student_loss.png").is_file() and (out / "matching_scores.png").is_file()
    began = time.perf_counter()
    assert main(["--quick", "--out", str(out)]) == 0
    assert time.perf_counter() - began < 60  # every stage reused
    again = json.loads((out / "results.json").read_text())
    assert (again["table4"], again["claims"]) == (results["table4"], results["claims"])

"""`make demo`: stages run once and reused, rerun when their inputs change; the quick demo end to end (heavy)."""

from __future__ import annotations

import json
import time

import pytest

from panda_jax.demo.__main__ import Stages


def test_a_stage_is_reused_while_its_inputs_stay_and_redone_from_scratch_when_they_change(tmp_path):
    stages, calls = Stages(tmp_path), []
    output = tmp_path / "made"

    def make() -> dict:
        calls.append(1)
        output.mkdir()
        (output / "file").write_text(str(len(calls)))
        return {"made": len(calls)}

    assert stages.run("make", {"size": 1}, make, [output]) == {"made": 1}
    assert Stages(tmp_path).run("make", {"size": 1}, make, [output]) == {"made": 1} and len(calls) == 1
    assert Stages(tmp_path).run("make", {"size": 2}, make, [output]) == {"made": 2}  # the old output removed first
    assert (output / "file").read_text() == "2"
    record = json.loads((tmp_path / "stages" / "make.json").read_text())
    assert record["inputs"] == {"size": 2} and record["seconds"] >= 0


@pytest.mark.heavy
def test_the_quick_demo_runs_every_stage_writes_its_report_and_reuses_all_of_it(tmp_path):
    from panda_jax.demo.__main__ import main

    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["table4"]) == {"image", "video", "text", "image_side_text", "teachers + selection",
                                      "student (video)", "student (video+text)"}  # fmt: skip
    assert all(row["clips_per_second"] > 0 for row in results["table4"].values())
    readme = (out / "README.md").read_text()
    for heading in ("Table 2", "Teachers", "Caption selection", "Table 4", "The claims", "Stage wall times"):
        assert heading in readme
    assert (out / "student_loss.png").is_file() and (out / "matching_scores.png").is_file()
    began = time.perf_counter()
    assert main(["--quick", "--out", str(out)]) == 0
    assert time.perf_counter() - began < 60  # every stage reused
    assert json.loads((out / "results.json").read_text())["table4"] == results["table4"]

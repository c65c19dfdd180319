"""`python -m panda_jax.demo --out DIR [--quick] [--seed S]`: see panda_jax/demo/__init__.py."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

from panda_jax import cli
from panda_jax.configs.teachers import DEMO_TEACHERS
from panda_jax.demo import __doc__ as DEMO_DOC
from panda_jax.demo import claims, report
from panda_jax.demo.steps import PIPELINE_SPLIT, Steps, split_label

STUDENTS = {"video": 0.0, "video_text": 0.5}  # name → probability of keeping the side text in training


class Demo(Steps):
    """The demo's stage graph (`run`) over its steps."""

    def run(self) -> dict[str, Any]:
        """Every stage in order, each after the stages whose outputs it reads: one that ran again runs it again."""
        config, stage, results = self.config, self.stages.run, {}
        results["corpus"] = stage("corpus", self.corpus())
        results["split"] = {}
        for detector in config.split_detectors:  # Table 2; the stitched split first: the shots row reads its shots
            stitched = self.split_stage("test", detector, True)
            results["split"][split_label(detector, False)] = self.split_stage("test", detector, False)
            results["split"][split_label(detector, True)] = stitched
        for split_name in ("val", "test"):  # the test videos' is reused when Table 2 made it
            self.split_stage(split_name, *PIPELINE_SPLIT)
        split_val, split_test = (split_stage_name(name, *PIPELINE_SPLIT) for name in ("val", "test"))
        results["foundations"] = stage("foundations", self.foundations())
        results["teachers"] = {name: stage(f"teacher_{name}", self.train_teacher(name), ["foundations"])
                               for name in DEMO_TEACHERS}  # fmt: skip
        results["caption_val"] = stage("caption_val", self.teachers_caption("val"),
                                       [*(f"teacher_{name}" for name in DEMO_TEACHERS), split_val])  # fmt: skip
        results["caption_test"] = {name: stage(f"caption_test_{name}", self.teachers_caption("test", name),
                                               [f"teacher_{name}", split_test]) for name in DEMO_TEACHERS}  # fmt: skip
        stage("caption_test", self.merge_test_captions(), [f"caption_test_{name}" for name in DEMO_TEACHERS])
        stage("judge_val", self.judge("val"), ["caption_val"])  # labels to fine-tune the selector on
        results["teacher_facts"] = stage("judge_test", self.judge("test"), ["caption_test"])  # and to score it with
        results["labelled"] = stage("dataset_labelled", self.build_dataset("labelled"), ["caption_val"])
        results["selectors"], results["selection"] = {}, {}
        for name in claims.SELECTORS:  # pretrained on the train videos, then fine-tuned on labelled validation clips
            after = ["selector_pretrained", "dataset_labelled", "judge_val"] if name != "pretrained" else ["foundations"]
            results["selectors"][name] = stage(f"selector_{name}", self.train_selector(name), after)
            results["selection"][name] = stage(f"select_{name}_test", self.select(name, "test"),
                                               [f"selector_{name}", "caption_test", "judge_test"])  # fmt: skip
        # The pipeline's product: the validation videos' clips with the fine-tuned selector's captions, as TFDS.
        stage("select_hard_negatives_val", self.select("hard_negatives", "val"),
              ["selector_hard_negatives", "caption_val", "judge_val"])  # fmt: skip
        results["student_labels"] = stage("judge_selected_val", self.judge_selected(), ["select_hard_negatives_val"])
        results["dataset"] = stage("dataset_selected", self.build_dataset("selected", "hard_negatives_val"),
                                   ["select_hard_negatives_val"])  # fmt: skip
        results["students"], results["caption_students"] = {}, {}
        for name, keep in STUDENTS.items():
            results["students"][name] = stage(f"student_{name}", self.train_student(name, keep),
                                              ["teacher_image", "dataset_selected"])  # fmt: skip
            results["caption_students"][name] = stage(f"caption_test_student_{name}",
                                                      self.student_caption(name, bool(keep)),
                                                      [f"student_{name}", split_test])  # fmt: skip
        results["table4"] = stage("table4", self.table4(), ["judge_test", "select_hard_negatives_test",
                                                            *(f"caption_test_student_{name}" for name in STUDENTS)])
        results["stage_seconds"] = dict(self.stages.seconds)
        return results

    def split_stage(self, split_name: str, detector: str, stitch: bool) -> dict[str, Any]:
        """A split's stage: stitched after the corpus; unstitched after the stitched run, whose shots it reads."""
        after = ["corpus"] if stitch else [split_stage_name(split_name, detector, True)]
        return self.stages.run(split_stage_name(split_name, detector, stitch), self.split(split_name, detector, stitch),
                               after)  # fmt: skip


def split_stage_name(split_name: str, detector: str, stitch: bool) -> str:
    return f"split_{split_name}_{split_label(detector, stitch)}"


def main(argv: Sequence[str] | None = None) -> int:
    def define(flag_values: flags.FlagValues) -> None:
        flags.DEFINE_string("out", None, "output folder (config field `out`)", flag_values=flag_values)
        flags.DEFINE_integer("seed", None, "seed of the corpus and of every model (config field `seed`)",
                             flag_values=flag_values)  # fmt: skip
        flags.DEFINE_bool("quick", False, "the `quick` variant (--config=demo:quick): a few videos, short trainings",
                          flag_values=flag_values)  # fmt: skip

    argv = list(sys.argv[1:] if argv is None else argv)
    variant = "quick" if "--quick" in argv else "full"
    if variant == "quick":  # a variant, so that --config.FIELD overrides still apply on top of it
        argv = ["--config=demo:quick", *(arg for arg in argv if arg != "--quick")]
    config = cli.parse(argv, program="python -m panda_jax.demo", doc=DEMO_DOC, default_config="demo", define=define,
                       shorthands={"out": "out", "seed": "seed"}).config  # fmt: skip
    logging.getLogger().setLevel(logging.WARNING)  # the stages' own progress lines; the demo prints what it does
    began = time.perf_counter()
    demo = Demo(config)
    results = demo.run()
    results |= {"claims": claims.verdicts(results), "targets": claims.targets(results)}
    results["seconds"] = time.perf_counter() - began
    (demo.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    readme = report.write_report(demo.out, results, variant)
    print(f"the demo ran in {results['seconds'] / 60:.1f} min; the report: {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

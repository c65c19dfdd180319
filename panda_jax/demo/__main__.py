"""`python -m panda_jax.demo --out DIR [--quick] [--seed S]`: see panda_jax/demo/__init__.py."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import flags

from panda_jax import caption, cli, export, select, split, train
from panda_jax.configs.teachers import DEMO_TEACHERS
from panda_jax.data import synthetic
from panda_jax.demo import __doc__ as DEMO_DOC
from panda_jax.demo import report
from panda_jax.evaluate import __main__ as evaluate
from panda_jax.files import atomic_output
from panda_jax.records import Shots, read_jsonl, read_records, write_jsonl
from panda_jax.video.metrics import split_report

log = logging.getLogger("panda_jax.demo")
PIPELINE_SPLIT = ("content", True)  # (detector, stitch) of the clips the pipeline goes on with: Panda-70M's choice


def split_label(detector: str, stitch: bool) -> str:
    return f"{detector}_{'stitch' if stitch else 'shots'}"


class Stages:
    """Runs each stage once: a stage whose record (OUT/stages/NAME.json) holds the same inputs is reused, one
    whose inputs changed is run again from scratch (its outputs removed first)."""

    def __init__(self, out: Path):
        self.out, self.seconds = out, {}

    def run(self, name: str, inputs: dict[str, Any], function: Callable[[], Any], outputs: Sequence[Path] = ()) -> Any:
        record = self.out / "stages" / f"{name}.json"
        inputs = json.loads(json.dumps(inputs, default=str))
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved["inputs"] == inputs:
                self.seconds[name] = saved["seconds"]
                print(f"== {name}: reused ({saved['seconds']:.0f} s when it ran)", flush=True)
                return saved["result"]
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        result = function()
        self.seconds[name] = time.perf_counter() - began
        record.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(record) as temporary:  # a kill leaves the old record or none, never half of one
            temporary.write_text(json.dumps({"inputs": inputs, "seconds": self.seconds[name], "result": result},
                                            indent=1))  # fmt: skip
        print(f"   {name}: {self.seconds[name]:.1f} s", flush=True)
        return result


def command(main: Callable[[list[str]], int], argv: list[str], allowed: tuple[int, ...] = (0,)) -> int:
    """Runs a stage's command line in this process; a status outside `allowed` stops the demo."""
    status = main(argv)
    if status not in allowed:
        raise RuntimeError(f"a demo stage failed (status {status}): {' '.join(argv)}")
    return status


class Demo:
    """The demo's stages over OUT, in order (`run`)."""

    def __init__(self, config: Any):
        self.config, self.out = config, Path(config.out).absolute()
        self.stages = Stages(self.out)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def videos(self, split_name: str) -> Path:
        return self.path("corpus", split_name, "videos.jsonl")

    # --- corpus and splitting ---------------------------------------------------------------------------------

    def corpus(self) -> dict[str, int]:
        """The validation and test videos as files; the train videos are the teachers' and the selector's in-memory
        training clips (`SyntheticClips`, the same events rendered), never encoded."""
        corpus, counts = self.config.corpus, {}
        first = corpus.train_videos
        for split_name in ("val", "test"):
            number = corpus[f"{split_name}_videos"]
            records = synthetic.generate_corpus(self.path("corpus", split_name), number, self.config.seed,
                                                size=corpus.size, fps=corpus.fps, duration=corpus.duration,
                                                workers=corpus.workers, first_video=first)  # fmt: skip
            counts[split_name] = sum(len(record["gt_events"]) for record in records)
            first += number
        return counts

    def split_folder(self, split_name: str, detector: str, stitch: bool) -> Path:
        """Where a split's records go: the pipeline's own (`PIPELINE_SPLIT`) where the TFDS builder's `local`
        source finds them (MANUAL_DIR/split/), the others under OUT/split/."""
        if (detector, stitch) == PIPELINE_SPLIT:
            return self.path("corpus", split_name, "split")
        return self.path("split", f"{split_name}_{split_label(detector, stitch)}")

    def clips(self, split_name: str) -> Path:
        """The clips the pipeline goes on with."""
        return self.split_folder(split_name, *PIPELINE_SPLIT) / "clips.jsonl"

    def split(self, split_name: str, detector: str, stitch: bool) -> dict[str, Any]:
        """Splits one corpus split with `python -m panda_jax.split`'s function; the test videos' split scored
        against the truth (Table 2)."""
        out = self.split_folder(split_name, detector, stitch)
        if stitch:
            config = cli.load_config("split")
            config.detector = detector
            split.run(split.read_video_list(self.videos(split_name), []), out, config,
                      workers=self.config.corpus.workers)  # fmt: skip
        else:  # the stitched run's shots, one clip each, as `--nostitch` makes them: no second detection pass
            shots = list(read_records(self.split_folder(split_name, detector, True) / "shots.jsonl", Shots))
            out.mkdir(parents=True, exist_ok=True)
            write_jsonl(out / "shots.jsonl", shots)
            write_jsonl(out / "clips.jsonl", (clip for record in shots for clip in split.shot_clips(record)))
        if split_name != "test":
            return {}
        report = split_report(list(read_jsonl(self.videos(split_name))), list(read_jsonl(out / "shots.jsonl")),
                              list(read_jsonl(out / "clips.jsonl")), lpips_model=self.lpips,
                              root=self.videos(split_name).parent)  # fmt: skip
        return {"clips": report.num_clips, "mean_clip_seconds": report.mean_clip_seconds, "shot_f1": report.shots.f1,
                "event_f1": report.events.f1, "event_precision": report.events.precision,
                "event_recall": report.events.recall, "max_running_lpips": report.max_running_lpips}  # fmt: skip

    @functools.cached_property
    def lpips(self) -> Any:
        """LPIPS with its real heads and a random AlexNet (no pretrained one offline): None when unavailable."""
        from panda_jax.models import lpips

        try:
            return lpips.load(lpips.pretrained_checkpoint())
        except Exception as error:  # the heads come from the lpips wheel: offline without a cache, no LPIPS
            log.warning("no LPIPS (%s): Max Running LPIPS is left out", error)
            return None

    # --- models -----------------------------------------------------------------------------------------------

    def train_and_export(self, config: str, name: str, overrides: Sequence[str], folder: Path) -> dict[str, Any]:
        """`python -m panda_jax.train --config=CONFIG` in OUT/runs/NAME, then `python -m panda_jax.export` to
        `folder`; the run's summary."""
        workdir = self.path("runs", name)
        command(train.main, [f"--config={config}", "--workdir", str(workdir),
                             *(f"--config.{override}" for override in overrides)])  # fmt: skip
        command(export.main, ["--checkpoint", str(workdir), "--out", str(folder)])
        return json.loads((workdir / "summary.json").read_text())

    def synthetic_train(self) -> list[str]:
        """Overrides making a training config read the train videos (and the first validation ones to evaluate)."""
        corpus = self.config.corpus
        return ["data.source=synthetic", f"data.synthetic_videos={corpus.train_videos}",
                f"data.synthetic_eval_videos={self.config.eval_videos}", f"data.synthetic_seed={self.config.seed}",
                f"data.synthetic_size={corpus.size}", f"train.seed={self.config.seed}"]  # fmt: skip

    def train_teacher(self, name: str) -> dict[str, Any]:
        """A captioner (configs/captioner.py variant NAME) trained on the train videos and exported as a teacher."""
        teachers, steps = self.config.teachers, self.config.teachers.steps[name]
        overrides = [*self.synthetic_train(), f"train.steps={steps}", f"train.batch_size={teachers.batch_size[name]}",
                     f"train.learning_rate={teachers.learning_rate}", f"train.eval_every={steps}",
                     f"train.checkpoint_every={steps}", *teachers.sizes]  # fmt: skip
        if DEMO_TEACHERS[name][2]:  # reads side text
            overrides += [*self.side_text(), f"captioner.max_prompt_tokens={teachers.max_prompt_tokens}"]
        return self.train_and_export(f"captioner:{name}", f"teacher_{name}", overrides, self.path("teachers", name))

    def side_text(self) -> list[str]:
        """The demo's side-text budgets, as overrides of a training or a teachers config."""
        return [f"side_text.{field}={budget}" for field, budget in self.config.teachers.side_text.items()]

    def caption(self, split_name: str, out: Path, *extra: str) -> dict[str, Any]:
        """`python -m panda_jax.caption` over a split's clips; its summary."""
        command(caption.main, ["--clips", str(self.clips(split_name)), "--videos", str(self.videos(split_name)),
                               "--out", str(out), *extra], allowed=(0, 1))  # fmt: skip
        return json.loads((out / "summary.json").read_text())

    def teachers_caption(self, split_name: str, teacher: str | None = None) -> dict[str, Any]:
        out = self.path("captions", split_name if teacher is None else f"{split_name}_{teacher}")
        chosen = () if teacher is None else ("--teachers", teacher)
        return self.caption(split_name, out, "--config=teachers:demo", f"--config.weights_dir={self.path('teachers')}",
                            *(f"--config.{override}" for override in self.side_text()), *chosen)  # fmt: skip

    def merge_test_captions(self, path: Path) -> int:
        """Every teacher's test captions in one file, as the selector reads them (each teacher captioned the test
        clips on its own, to time it alone)."""
        path.parent.mkdir(parents=True)
        lines = [line for name in DEMO_TEACHERS
                 for line in self.path("captions", f"test_{name}", "captions.jsonl").read_text().splitlines()]
        path.write_text("".join(f"{line}\n" for line in lines))
        return len(lines)

    def facts(self, split_name: str, captions: Path, out: Path, *extra: str) -> dict[str, float]:
        """`python -m panda_jax.evaluate --task facts`: fact accuracies of the captions of a split's clips."""
        command(evaluate.main, ["--task", "facts", "--captions", str(captions), "--clips", str(self.clips(split_name)),
                                "--videos", str(self.videos(split_name)), "--out", str(out), *extra])  # fmt: skip
        return json.loads(out.read_text())

    def caption_metrics(self, predictions: Path, teacher: str | None = None) -> dict[str, float]:
        """`python -m panda_jax.evaluate --task captions` against the test clips' ground-truth captions."""
        out = predictions.with_name(f"{predictions.stem}_{teacher or 'all'}_metrics.json")
        chosen = () if teacher is None else ("--teacher", teacher)
        command(evaluate.main, ["--task", "captions", "--predictions", str(predictions), "--references",
                                str(self.path("captions", "test_truth.jsonl")), "--out", str(out),
                                "--metrics", ",".join(self.config.metrics), *chosen])  # fmt: skip
        return json.loads(out.read_text())

    def train_selector(self, name: str) -> dict[str, Any]:
        """The selector: `pretrained` on clip / ground-truth pairs of the train videos (in-batch negatives), then
        fine-tuned from it on the labelled validation clips, with Panda-70M's hard negatives (`hard_negatives`: the
        clip's other captions weigh 1, other clips' 0.01) or plainly (`contrastive`: other clips' captions only)."""
        selector = self.config.selector
        overrides = [f"weights_dir={self.path('selectors')}", f"train.batch_size={selector.batch_size}",
                     f"train.learning_rate={selector.learning_rate}", f"train.warmup_init={selector.learning_rate}",
                     f"train.end_learning_rate={selector.learning_rate}", f"train.seed={self.config.seed}"]  # fmt: skip
        steps = selector.pretrain_steps if name == "pretrained" else selector.finetune_steps
        overrides += [f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}"]
        if name == "pretrained":
            overrides += [*self.synthetic_train(), "checkpoint=random"]
        else:
            weights = (1.0, 0.01) if name == "hard_negatives" else (0.0, 1.0)
            overrides += [f"checkpoint={self.path('selectors', 'pretrained')}", "tiny=", "data.source=tfds",
                          "data.name=panda70m/demo_labelled", f"data.data_dir={self.path('tfds')}",
                          f"data.candidates={len(DEMO_TEACHERS)}", f"data.labels={self.path('captions', 'val_labels.jsonl')}",
                          f"loss.same_clip_weight={weights[0]}", f"loss.other_clip_weight={weights[1]}"]  # fmt: skip
        return self.train_and_export("retrieval:tiny", f"selector_{name}", overrides, self.path("selectors", name))

    def select(self, name: str, split_name: str) -> dict[str, Any]:
        """`python -m panda_jax.select` with a trained selector, scored against the judge's labels."""
        out = self.path("select", f"{name}_{split_name}")
        command(select.main, ["--clips", str(self.clips(split_name)), "--videos", str(self.videos(split_name)),
                              "--captions", str(self.path("captions", split_name)), "--out", str(out),
                              "--checkpoint", str(self.path("selectors", name)), "--config=retrieval:tiny",
                              "--labels", str(self.path("captions", f"{split_name}_labels.jsonl"))],
                allowed=(0, 1))  # fmt: skip
        return json.loads((out / "summary.json").read_text())

    def build_dataset(self, name: str, selection: str = "") -> dict[str, Any]:
        """The `panda70m` TFDS dataset (builder config `demo_NAME`, source `local`) of the validation videos, their
        clips and every teacher's caption, and the selected one with `selection`."""
        import tensorflow_datasets as tfds

        from tfds_builders.panda70m import Builder, Panda70mConfig

        config = Panda70mConfig(name=f"demo_{name}", source="local", num_frames=8, image_size=self.config.corpus.size,
                                captions_dir=str(self.path("captions", "val")),
                                selection_dir=str(self.path("select", selection)) if selection else "")  # fmt: skip
        builder = Builder(config=config, data_dir=str(self.path("tfds")))
        manual = str(self.path("corpus", "val"))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
        return {"examples": builder.info.splits["train"].num_examples}

    def train_student(self, name: str, keep_side_text: float) -> dict[str, Any]:
        """`python -m panda_jax.train --config=student` on the dataset the pipeline made, around the image teacher's
        BLIP-2 (frozen), with side text kept with probability `keep_side_text` (0: video only)."""
        student = self.config.student
        overrides = ["tiny=", f"checkpoint={self.path('teachers', 'image')}", "data.source=tfds",
                     "data.name=panda70m/demo_selected", f"data.data_dir={self.path('tfds')}", "data.eval_split=",
                     f"side_text_keep_probability={keep_side_text}", f"train.steps={student.steps}",
                     f"train.batch_size={student.batch_size}", f"train.learning_rate={student.learning_rate}",
                     "train.num_frames=8", f"train.image_size={self.config.corpus.size}", "student.num_frames=8",
                     f"student.num_queries={student.num_queries}", "max_caption_tokens=32", "student.max_prompt_tokens=200",
                     f"train.seed={self.config.seed}", f"train.log_every={max(student.steps // 20, 1)}",
                     f"train.checkpoint_every={student.steps}"]  # fmt: skip
        return self.train_and_export("student:tiny", f"student_{name}", overrides, self.path("students", name))

    def student_caption(self, name: str, side_text: bool) -> dict[str, Any]:
        return self.caption("test", self.path("captions", f"test_student_{name}"), "--config=teachers:student",
                            f"--config.checkpoint={self.path('students', name)}",
                            f"--config.teachers.student.side_text={side_text}", "--config.teachers.student.frames=8",
                            "--config.teachers.student.generation.num_beams=1",
                            "--config.teachers.student.generation.max_new_tokens=32")  # fmt: skip

    # --- the run ----------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config, stages, results = self.config, self.stages, {}
        corpus_key = {"seed": config.seed, **config.corpus}
        results["corpus"] = stages.run("corpus", corpus_key, self.corpus, [self.path("corpus")])

        def split_stage(split_name: str, detector: str, stitch: bool) -> dict[str, Any]:
            return stages.run(f"split_{split_name}_{split_label(detector, stitch)}", corpus_key,
                              lambda: self.split(split_name, detector, stitch),
                              [self.split_folder(split_name, detector, stitch)])  # fmt: skip

        results["split"] = {}
        for detector in config.split_detectors:
            stitched = split_stage("test", detector, True)  # first: the shots row reads its shots
            results["split"][split_label(detector, False)] = split_stage("test", detector, False)
            results["split"][split_label(detector, True)] = stitched
        for split_name in ("val", "test"):  # the test videos' is reused when Table 2 made it
            split_stage(split_name, *PIPELINE_SPLIT)
        teacher_key = {"corpus": corpus_key, "eval_videos": config.eval_videos, **config.teachers.to_dict()}
        results["teachers"] = {
            name: stages.run(f"teacher_{name}", teacher_key, lambda n=name: self.train_teacher(n),
                             [self.path("runs", f"teacher_{name}"), self.path("teachers", name)])
            for name in DEMO_TEACHERS
        }  # fmt: skip
        results["caption_val"] = stages.run("caption_val", teacher_key, lambda: self.teachers_caption("val"),
                                            [self.path("captions", "val")])  # fmt: skip
        results["caption_test"] = {
            name: stages.run(f"caption_test_{name}", teacher_key, lambda n=name: self.teachers_caption("test", n),
                             [self.path("captions", f"test_{name}")])
            for name in DEMO_TEACHERS
        }  # fmt: skip
        test_captions = self.path("captions", "test", "captions.jsonl")
        stages.run("caption_test", teacher_key, lambda: self.merge_test_captions(test_captions),
                   [test_captions.parent])  # fmt: skip
        # The judge (best fact F1) labels every clip: the validation clips to fine-tune the selector on, the test
        # clips to score selection against; on the test clips, each teacher's fact accuracies and the oracle's.
        stages.run("judge_val", teacher_key, lambda: self.facts("val", self.path("captions", "val", "captions.jsonl"),
                                                                self.path("captions", "val_facts.json"), "--judged",
                                                                str(self.path("captions", "val_labels.jsonl"))))  # fmt: skip
        results["teacher_facts"] = stages.run(
            "judge_test", teacher_key, lambda: self.facts("test", test_captions, self.path("captions", "test_facts.json"),
                                                          "--judged", str(self.path("captions", "test_labels.jsonl")),
                                                          "--truth_out", str(self.path("captions", "test_truth.jsonl"))))
        selector_key = {"teachers": teacher_key, **config.selector}
        results["labelled"] = stages.run("dataset_labelled", selector_key, lambda: self.build_dataset("labelled"),
                   [self.path("tfds", "panda70m", "demo_labelled")])  # fmt: skip
        results["selectors"], results["selection"] = {}, {}
        for name in ("pretrained", "hard_negatives", "contrastive"):
            results["selectors"][name] = stages.run(f"selector_{name}", selector_key,
                                                    lambda n=name: self.train_selector(n),
                                                    [self.path("runs", f"selector_{name}"), self.path("selectors", name)])
            results["selection"][name] = stages.run(f"select_{name}_test", selector_key,
                                                    lambda n=name: self.select(n, "test"),
                                                    [self.path("select", f"{name}_test")])  # fmt: skip
        # The pipeline's product: the validation videos' clips with the fine-tuned selector's captions, as TFDS.
        stages.run("select_hard_negatives_val", selector_key, lambda: self.select("hard_negatives", "val"),
                   [self.path("select", "hard_negatives_val")])  # fmt: skip
        # What the student learns from: the selected captions of the validation clips, as the judge scores them.
        selected_val = self.path("select", "hard_negatives_val")
        results["student_labels"] = stages.run(
            "judge_selected_val", selector_key, lambda: self.facts("val", selected_val / "selection.jsonl",
                                                                   selected_val / "facts.json", "--name", "selection"))
        results["dataset"] = stages.run("dataset_selected", selector_key,
                                        lambda: self.build_dataset("selected", "hard_negatives_val"),
                                        [self.path("tfds", "panda70m", "demo_selected")])  # fmt: skip
        student_key = {"selectors": selector_key, **config.student}
        results["students"], results["caption_students"] = {}, {}
        for name, keep in (("video", 0.0), ("video_text", 0.5)):
            results["students"][name] = stages.run(f"student_{name}", student_key,
                                                   lambda n=name, k=keep: self.train_student(n, k),
                                                   [self.path("runs", f"student_{name}"), self.path("students", name)])
            results["caption_students"][name] = stages.run(f"caption_test_student_{name}", student_key,
                                                           lambda n=name, k=keep: self.student_caption(n, bool(k)),
                                                           [self.path("captions", f"test_student_{name}")])
        results["table4"] = stages.run("table4", {"students": student_key, "metrics": config.metrics}, self.table4)
        results["stage_seconds"] = dict(stages.seconds)
        return results

    def table4(self) -> dict[str, dict[str, float]]:
        """The paper's Table 4 on the test clips: fact F1 and caption metrics of each teacher, of all teachers +
        selection, and of each student, with the clips/s of each as a user runs it."""
        rows: dict[str, dict[str, float]] = {}
        teacher_facts = json.loads(self.path("captions", "test_facts.json").read_text())
        for name in DEMO_TEACHERS:
            speed = json.loads(self.path("captions", f"test_{name}", "summary.json").read_text())["clips_per_second"]
            rows[name] = {"fact_f1": teacher_facts[f"{name}/f1"], "clips_per_second": speed,
                          **self.caption_metrics(self.path("captions", "test", "captions.jsonl"), name)}  # fmt: skip
        selection = self.path("select", "hard_negatives_test", "selection.jsonl")
        selected = self.facts("test", selection, self.path("select", "hard_negatives_test", "facts.json"), "--name",
                              "selection")  # fmt: skip
        select_seconds = json.loads((selection.parent / "summary.json").read_text())["seconds"]
        clips = selected["selection/captions"]
        per_clip = sum(1 / rows[name]["clips_per_second"] for name in DEMO_TEACHERS) + select_seconds / clips
        rows["teachers + selection"] = {"fact_f1": selected["selection/f1"], "clips_per_second": 1 / per_clip,
                                        **self.caption_metrics(selection)}  # fmt: skip
        for name in ("video", "video_text"):
            captions = self.path("captions", f"test_student_{name}")
            facts = self.facts("test", captions / "captions.jsonl", captions / "facts.json")
            speed = json.loads((captions / "summary.json").read_text())["clips_per_second"]
            rows[f"student ({name.replace('_', '+')})"] = {"fact_f1": facts["student/f1"], "clips_per_second": speed,
                                                           **self.caption_metrics(captions / "captions.jsonl")}
        return {row: {key: value for key, value in numbers.items() if key != "task"} for row, numbers in rows.items()}


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
    results["seconds"] = time.perf_counter() - began
    (demo.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    readme = report.write_report(demo.out, results, variant)
    print(f"the demo ran in {results['seconds'] / 60:.1f} min; the report: {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo's steps: each a public command (or function) over OUT, with the configs it runs (`stages.Step`)."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from panda_jax import caption, export, foundations, select, split, train
from panda_jax.configs.teachers import DEMO_TEACHERS
from panda_jax.data import synthetic
from panda_jax.demo.stages import Config, Stages, Step, command
from panda_jax.evaluate import __main__ as evaluate
from panda_jax.records import Shots, read_jsonl, read_records, write_jsonl
from panda_jax.video.metrics import split_report

log = logging.getLogger("panda_jax.demo")
PIPELINE_SPLIT = ("content", True)  # (detector, stitch) of the clips the pipeline goes on with: Panda-70M's choice


def split_label(detector: str, stitch: bool) -> str:
    return f"{detector}_{'stitch' if stitch else 'shots'}"


class Steps:
    """The demo's steps over OUT (`config.out`), each as a `Step` for `Stages.run`."""

    def __init__(self, config: Any):
        self.config, self.out = config, Path(config.out).absolute()
        self.stages = Stages(self.out)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def videos(self, split_name: str) -> Path:
        return self.path("corpus", split_name, "videos.jsonl")

    # --- corpus and splitting ---------------------------------------------------------------------------------

    def corpus(self) -> Step:
        """The validation and test videos as files; the trainings read the stream of fresh videos (`SyntheticStream`),
        rendered when read, never encoded."""
        corpus = self.config.corpus

        def generate() -> dict[str, int]:
            counts, first = {}, corpus.train_videos
            for split_name in ("val", "test"):
                number = corpus[f"{split_name}_videos"]
                records = synthetic.generate_corpus(self.path("corpus", split_name), number, self.config.seed,
                                                    size=corpus.size, fps=corpus.fps, duration=corpus.duration,
                                                    workers=corpus.workers, first_video=first)  # fmt: skip
                counts[split_name] = sum(len(record["gt_events"]) for record in records)
                first += number
            return counts

        return Step(generate, [self.path("corpus")], settings={"seed": self.config.seed, **corpus})

    def split_folder(self, split_name: str, detector: str, stitch: bool) -> Path:
        """Where a split's records go: the pipeline's own (`PIPELINE_SPLIT`) where the TFDS builder's `local`
        source finds them (MANUAL_DIR/split/), the others under OUT/split/."""
        if (detector, stitch) == PIPELINE_SPLIT:
            return self.path("corpus", split_name, "split")
        return self.path("split", f"{split_name}_{split_label(detector, stitch)}")

    def clips(self, split_name: str) -> Path:
        """The clips the pipeline goes on with."""
        return self.split_folder(split_name, *PIPELINE_SPLIT) / "clips.jsonl"

    def split(self, split_name: str, detector: str, stitch: bool) -> Step:
        """Splits one corpus split with `python -m panda_jax.split`'s function; the test videos' split scored
        against the truth (Table 2). Unstitched, the clips are the stitched run's shots, as `--nostitch` makes them:
        no second detection pass."""
        out, config = self.split_folder(split_name, detector, stitch), Config("split", (f"detector={detector}",))

        def run() -> dict[str, Any]:
            if stitch:
                split.run(split.read_video_list(self.videos(split_name), []), out, config.resolve(),
                          workers=self.config.corpus.workers)  # fmt: skip
            else:
                shots = list(read_records(self.split_folder(split_name, detector, True) / "shots.jsonl", Shots))
                out.mkdir(parents=True, exist_ok=True)
                write_jsonl(out / "shots.jsonl", shots)
                write_jsonl(out / "clips.jsonl", (clip for record in shots for clip in split.shot_clips(record)))
            if split_name != "test":
                return {}
            report = split_report(list(read_jsonl(self.videos(split_name))), list(read_jsonl(out / "shots.jsonl")),
                                  list(read_jsonl(out / "clips.jsonl")), lpips_model=self.lpips,
                                  root=self.videos(split_name).parent)  # fmt: skip
            return {"clips": report.num_clips, "mean_clip_seconds": report.mean_clip_seconds,
                    "shot_f1": report.shots.f1, "event_f1": report.events.f1,
                    "event_precision": report.events.precision, "event_recall": report.events.recall,
                    "max_running_lpips": report.max_running_lpips}  # fmt: skip

        return Step(run, [out], [config] if stitch else [])

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

    def train_and_export(self, config: Config, name: str, folder: Path) -> Step:
        """`python -m panda_jax.train` with `config` in OUT/runs/NAME, then `python -m panda_jax.export` to
        `folder`; the run's summary."""
        workdir = self.path("runs", name)

        def run() -> dict[str, Any]:
            command(train.main, [*config.flags(), "--workdir", str(workdir)])
            command(export.main, ["--checkpoint", str(workdir), "--out", str(folder)])
            return json.loads((workdir / "summary.json").read_text())

        return Step(run, [workdir, folder], [config])

    @functools.cached_property
    def foundations_config(self) -> Config:
        return Config(f"foundations:{self.config.foundations}")

    @functools.cached_property
    def foundations_folder(self) -> Path:
        """Where the foundations are (or will be): the cache folder named by their fingerprint."""
        return foundations.folder(self.foundations_config.resolve())

    def foundations(self) -> Step:
        """The vision and language foundations (`python -m panda_jax.foundations`), from the cache when it holds them:
        pretrained on their own streams, whatever the demo's seed."""

        def ensure() -> dict[str, Any]:
            path = foundations.ensure(self.foundations_config.resolve())
            return json.loads((path / foundations.REPORT).read_text()) | {"folder": str(path)}

        return Step(ensure, configs=[self.foundations_config])

    def synthetic_train(self) -> list[str]:
        """Overrides making a training config read the endless stream of the demo seed's videos (and the eval videos
        apart from it)."""
        corpus = self.config.corpus
        return ["data.source=synthetic", "data.synthetic_videos=0",
                f"data.synthetic_eval_videos={self.config.eval_videos}", f"data.synthetic_seed={self.config.seed}",
                f"data.synthetic_size={corpus.size}", f"train.seed={self.config.seed}"]  # fmt: skip

    def train_teacher(self, name: str) -> Step:
        """A captioner (configs/captioner.py variant NAME) around the foundations (`teachers.frozen` of them frozen),
        trained on the stream and exported as a teacher."""
        teachers, steps = self.config.teachers, self.config.teachers.steps[name]
        overrides = [*self.synthetic_train(), f"captioner.foundations={self.foundations_folder}",
                     f"captioner.frozen={teachers.frozen}", f"train.steps={steps}",
                     f"train.batch_size={teachers.batch_size[name]}", f"train.learning_rate={teachers.learning_rate}",
                     f"train.warmup_steps={max(1, round(teachers.warmup_share * steps))}", f"train.eval_every={steps}",
                     f"train.checkpoint_every={steps}", *teachers.sizes]  # fmt: skip
        if DEMO_TEACHERS[name][2]:  # reads side text
            overrides += [*self.side_text(), f"captioner.max_prompt_tokens={teachers.max_prompt_tokens}"]
        return self.train_and_export(Config(f"captioner:{name}", tuple(overrides)), f"teacher_{name}",
                                     self.path("teachers", name))  # fmt: skip

    def side_text(self) -> list[str]:
        """The demo's side-text budgets, as overrides of a training or a teachers config."""
        return [f"side_text.{field}={budget}" for field, budget in self.config.teachers.side_text.items()]

    def caption(self, split_name: str, out: Path, config: Config, warmup: Path | None = None) -> Step:
        """`python -m panda_jax.caption` over a split's clips; its summary. With `warmup`, a first run into that folder
        compiles (into JAX's persistent cache) what the timed run then reuses."""

        folders = [warmup, out] if warmup else [out]

        def run() -> dict[str, Any]:
            for folder in folders:
                command(caption.main, ["--clips", str(self.clips(split_name)), "--videos", str(self.videos(split_name)),
                                       "--out", str(folder), *config.flags()], allowed=(0, 1))  # fmt: skip
            return json.loads((out / "summary.json").read_text())

        return Step(run, folders, [config], {"warm_up": bool(warmup)})

    def teachers_caption(self, split_name: str, teacher: str = "") -> Step:
        """Every teacher (or `teacher` alone) captions a split's clips."""
        out = self.path("captions", f"{split_name}_{teacher}" if teacher else split_name)
        overrides = (f"weights_dir={self.path('teachers')}", *self.side_text(), f"teacher_names={teacher}")
        return self.caption(split_name, out, Config("teachers:demo", overrides))

    def merge_test_captions(self) -> Step:
        """Every teacher's test captions in one file, as the selector reads them (each teacher captioned the test
        clips on its own, to time it alone)."""
        path = self.path("captions", "test", "captions.jsonl")

        def merge() -> int:
            path.parent.mkdir(parents=True)
            lines = [line for name in DEMO_TEACHERS
                     for line in self.path("captions", f"test_{name}", "captions.jsonl").read_text().splitlines()]
            path.write_text("".join(f"{line}\n" for line in lines))
            return len(lines)

        return Step(merge, [path.parent])

    def facts(self, split_name: str, captions: Path, out: Path, *extra: str) -> dict[str, float]:
        """`python -m panda_jax.evaluate --task facts`: fact accuracies of the captions of a split's clips."""
        command(evaluate.main, ["--task", "facts", "--captions", str(captions), "--clips", str(self.clips(split_name)),
                                "--videos", str(self.videos(split_name)), "--out", str(out), *extra])  # fmt: skip
        return json.loads(out.read_text())

    def judge(self, split_name: str) -> Step:
        """The judge (best fact F1) labels every clip of a split with its best caption and scores each teacher and
        itself (the oracle); on the test clips it also writes the ground-truth captions."""
        captions = self.path("captions", split_name)
        extra = ("--truth_out", str(self.path("captions", "test_truth.jsonl"))) if split_name == "test" else ()
        facts, labels = (captions.with_name(f"{split_name}_{file}") for file in ("facts.json", "labels.jsonl"))
        return Step(lambda: self.facts(split_name, captions / "captions.jsonl", facts, "--judged", str(labels), *extra))

    def caption_metrics(self, predictions: Path, teacher: str | None = None) -> dict[str, float]:
        """`python -m panda_jax.evaluate --task captions` against the test clips' ground-truth captions."""
        out = predictions.with_name(f"{predictions.stem}_{teacher or 'all'}_metrics.json")
        chosen = () if teacher is None else ("--teacher", teacher)
        command(evaluate.main, ["--task", "captions", "--predictions", str(predictions), "--references",
                                str(self.path("captions", "test_truth.jsonl")), "--out", str(out),
                                "--metrics", ",".join(self.config.metrics), *chosen])  # fmt: skip
        return json.loads(out.read_text())

    def train_selector(self, name: str) -> Step:
        """The selector: `pretrained` on clip / ground-truth pairs of the train videos (in-batch negatives) around the
        vision foundation (frozen), then fine-tuned from it on the labelled validation clips, with Panda-70M's hard
        negatives (`hard_negatives`: the clip's other captions weigh 1, other clips' 0.01) or plainly (`contrastive`:
        other clips' captions only)."""
        selector = self.config.selector
        image_size = self.foundations_config.resolve().vision.image_size  # the vision foundation's
        overrides = [f"weights_dir={self.path('selectors')}", f"train.batch_size={selector.batch_size}",
                     f"train.learning_rate={selector.learning_rate}", f"train.warmup_init={selector.learning_rate}",
                     f"train.end_learning_rate={selector.learning_rate}", f"train.seed={self.config.seed}",
                     "frozen=vision_model", f"train.image_size={image_size}"]  # fmt: skip
        steps = selector.pretrain_steps if name == "pretrained" else selector.finetune_steps
        overrides += [f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}"]
        if name == "pretrained":  # its first weights: written around the foundations once, named after them
            overrides += [*self.synthetic_train(), f"checkpoint=initial_{self.foundations_folder.name}",
                          f"foundations={self.foundations_folder}"]  # fmt: skip
        else:
            weights = (1.0, 0.01) if name == "hard_negatives" else (0.0, 1.0)
            overrides += [f"checkpoint={self.path('selectors', 'pretrained')}", "tiny=", "data.source=tfds",
                          "data.name=panda70m/demo_labelled", f"data.data_dir={self.path('tfds')}",
                          f"data.candidates={len(DEMO_TEACHERS)}", f"data.labels={self.path('captions', 'val_labels.jsonl')}",
                          f"loss.same_clip_weight={weights[0]}", f"loss.other_clip_weight={weights[1]}"]  # fmt: skip
        return self.train_and_export(Config("retrieval:tiny", tuple(overrides)), f"selector_{name}",
                                     self.path("selectors", name))  # fmt: skip

    def select(self, name: str, split_name: str) -> Step:
        """`python -m panda_jax.select` with a trained selector, scored against the judge's labels."""
        out, config = self.path("select", f"{name}_{split_name}"), Config("retrieval:tiny")

        def run() -> dict[str, Any]:
            command(select.main, ["--clips", str(self.clips(split_name)), "--videos", str(self.videos(split_name)),
                                  "--captions", str(self.path("captions", split_name)), "--out", str(out),
                                  "--checkpoint", str(self.path("selectors", name)), *config.flags(),
                                  "--labels", str(self.path("captions", f"{split_name}_labels.jsonl"))],
                    allowed=(0, 1))  # fmt: skip
            return json.loads((out / "summary.json").read_text())

        return Step(run, [out], [config])

    def judge_selected(self) -> Step:
        """What the student learns from: the selected captions of the validation clips, as the judge scores them."""
        selected = self.path("select", "hard_negatives_val")
        return Step(lambda: self.facts("val", selected / "selection.jsonl", selected / "facts.json", "--name",
                                       "selection"))  # fmt: skip

    def build_dataset(self, name: str, selection: str = "") -> Step:
        """The `panda70m` TFDS dataset (builder config `demo_NAME`, source `local`) of the validation videos, their
        clips and every teacher's caption, and the selected one with `selection`."""
        fields = {"name": f"demo_{name}", "source": "local", "num_frames": 8, "image_size": self.config.corpus.size,
                  "captions_dir": str(self.path("captions", "val")),
                  "selection_dir": str(self.path("select", selection)) if selection else ""}  # fmt: skip

        def build() -> dict[str, Any]:
            import tensorflow_datasets as tfds

            from tfds_builders.panda70m import Builder, Panda70mConfig

            builder = Builder(config=Panda70mConfig(**fields), data_dir=str(self.path("tfds")))
            manual = str(self.path("corpus", "val"))
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
            return {"examples": builder.info.splits["train"].num_examples}

        return Step(build, [self.path("tfds", "panda70m", fields["name"])], settings={"builder": fields})

    def train_student(self, name: str, keep_side_text: float) -> Step:
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
        return self.train_and_export(Config("student:tiny", tuple(overrides)), f"student_{name}",
                                     self.path("students", name))  # fmt: skip

    def student_caption(self, name: str, side_text: bool) -> Step:
        """A trained student captions the test clips as a teacher would, timed warm as the teachers are (their test runs
        reuse what captioning the validation clips compiled)."""
        overrides = (f"checkpoint={self.path('students', name)}", f"teachers.student.side_text={side_text}",
                     "teachers.student.frames=8", "teachers.student.generation.num_beams=1",
                     "teachers.student.generation.max_new_tokens=32")  # fmt: skip
        return self.caption("test", self.path("captions", f"test_student_{name}"), Config("teachers:student", overrides),
                            warmup=self.path("captions", f"warmup_student_{name}"))

    def table4(self) -> Step:
        """The paper's Table 4 on the test clips: fact F1 and caption metrics of each teacher, of all teachers +
        selection, and of each student, with the clips/s of each as a user runs it."""

        def run() -> dict[str, dict[str, float]]:
            rows: dict[str, dict[str, float]] = {}
            teacher_facts = json.loads(self.path("captions", "test_facts.json").read_text())
            for name in DEMO_TEACHERS:
                summary = self.path("captions", f"test_{name}", "summary.json")
                rows[name] = {"fact_f1": teacher_facts[f"{name}/f1"],
                              "clips_per_second": json.loads(summary.read_text())["clips_per_second"],
                              **self.caption_metrics(self.path("captions", "test", "captions.jsonl"), name)}  # fmt: skip
            selection = self.path("select", "hard_negatives_test", "selection.jsonl")
            selected = self.facts("test", selection, selection.with_name("facts.json"), "--name", "selection")
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

        return Step(run, settings={"metrics": list(self.config.metrics)})

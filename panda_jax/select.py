"""Pick each clip's caption among the teachers' with a video-text retrieval model: `python -m panda_jax.select`.

    python -m panda_jax.select --clips split/clips.jsonl --videos corpus/videos.jsonl \\
        --captions runs/caption --out runs/select
    python -m panda_jax.select ... --config=retrieval:tiny --labels labels.jsonl   # + agreement with people
    python -m panda_jax.select ... --checkpoint runs/train_retrieval/hf   # a fine-tuned selector

Panda-70M's step 3: every teacher caption of a clip is scored against the clip's frames
(`num_frames` spread over it) by the selector (panda_jax/models/video_retrieval.py); the caption
with the highest matching (VTM) probability becomes the clip's caption and that probability its
`matching_score` (> 0.43: a strong match). Each `selection` record keeps every teacher's score
and names the teachers that gave the clip no caption; a clip no teacher captioned, or whose
video is missing or cannot be decoded, is recorded in `failures.jsonl`.

Clips are shards of the shared stage runner (whole videos, each clip with its captions): a
killed run resumes, a rerun reuses what it made, a changed caption, setting or checkpoint
recomputes. Writes OUT/selection.jsonl, OUT/failures.jsonl, OUT/summary.json and the report:
OUT/report.md and OUT/selective_rate.png (each teacher's selective rate, the paper's Figure 3,
and the matching-score histogram; with `--labels`, top-1 agreement and a confusion table).
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from panda_jax import cli, clip_stage, selection_report, stages
from panda_jax.models import checkpoint, sharding
from panda_jax.records import Caption, Clip, Failure, Problem, Selection, Video, read_records
from panda_jax.teachers import frames, tiny

log = logging.getLogger("panda_jax.select")

TRAINING_FIELDS = ("model", "data", "train", "loss", "frozen", "workdir")  # the training recipe: no part of a selection


def read_captions(captions: Path, problems: list[Problem]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Each clip's caption by teacher, and the teachers in the order they first appear (the caption
    stage's config order). `captions` is the caption stage's output folder or its captions.jsonl."""
    path = captions / f"{Caption.KIND}.jsonl" if captions.is_dir() else captions
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no captions; make them with `python -m panda_jax.caption --out DIR`")
    by_clip: dict[str, dict[str, str]] = collections.defaultdict(dict)
    teachers: dict[str, None] = {}
    for record in read_records(path, Caption, problems):
        if record.teacher in by_clip[record.clip_id]:
            problems.append(Problem(str(path), record.clip_id, f"a second caption by {record.teacher}; the first is kept"))
            continue
        by_clip[record.clip_id][record.teacher] = record.caption
        teachers.setdefault(record.teacher)
    return dict(by_clip), list(teachers)


class SelectStage:
    """The select stage for panda_jax.stages: one shard per group of whole videos, giving `selection`."""

    name = "select"
    version = 1
    outputs = (Selection.KIND,)

    def __init__(self, config: Any, teachers: Sequence[str], checkpoint_dir: Path):
        self.config, self.teachers, self.checkpoint_dir = config, list(teachers), checkpoint_dir
        self.counters = clip_stage.Counters()
        self._selector: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_selector": None}  # a worker loads its own model

    def settings(self) -> dict[str, Any]:
        scoring = {k: v for k, v in stages.output_settings(self.config).items() if k not in TRAINING_FIELDS}
        return scoring | {"teachers": self.teachers}

    def setup(self) -> None:
        if self._selector is not None:
            return
        import jax.numpy as jnp

        from panda_jax.models import CheckpointError, selector, video_retrieval

        self.counters.count_compiles()
        mesh = clip_stage.local_mesh(self.config.mesh)
        video = video_retrieval.VideoConfig(max_frames=self.config.num_frames, temporal_layers=self.config.temporal_layers)
        log.info("loading the selector from %s", self.checkpoint_dir)
        try:
            self._selector = selector.load_selector(
                self.checkpoint_dir, getattr(jnp, self.config.dtype), mesh=mesh, video=video,
                max_clips=self.config.batch_size, max_text_tokens=self.config.max_text_tokens,
            )  # fmt: skip
        except (CheckpointError, OSError) as error:
            raise stages.StageSetupError(f"selector {self.checkpoint_dir}: {error}") from None

    def process(self, shard: stages.Shard, out_dir: Path) -> stages.ShardResult:
        began = time.perf_counter()
        selections: list[Selection] = []
        failures: list[Failure] = []
        size = self._selector.image_processor.size[0]  # decoded at the selector's input size: no second resize
        for batch in clip_stage.decoded_batches(shard, self._frame_needs, size, self.config.batch_size, failures, self.name):
            selections += self._select(batch)
        self.counters.seconds += time.perf_counter() - began
        return stages.ShardResult(records={Selection.KIND: selections}, failures=failures)

    def _frame_needs(self, clip: dict[str, Any], start: int, end: int) -> dict[int, list[int]]:
        return {self.config.num_frames: frames.video_frames(start, end, self.config.num_frames)}

    def _select(self, batch: list[clip_stage.ClipFrames]) -> list[Selection]:
        """Every clip's best caption by matching probability; a tie goes to the teacher listed first."""
        candidates = [[t for t in self.teachers if t in clip["captions"]] for clip, _ in batch]
        pixels = np.stack([clip_frames[self.config.num_frames] for _, clip_frames in batch])
        texts = [[clip["captions"][t] for t in names] for (clip, _), names in zip(batch, candidates)]
        scores = self._selector.score(pixels, texts)
        records = []
        for (clip, _), names, clip_scores in zip(batch, candidates, scores):
            probabilities = {t: round(probability, 6) for t, (_, probability) in zip(names, clip_scores)}
            best = max(names, key=lambda t: probabilities[t])  # the first of equals
            records.append(Selection(
                clip_id=clip["clip_id"], caption=clip["captions"][best], teacher=best,
                matching_score=probabilities[best], scores=probabilities,
                missing_teachers=tuple(t for t in self.teachers if t not in clip["captions"]),
            ))  # fmt: skip
        self.counters.clips += len(batch)
        self.counters.captions += sum(len(names) for names in candidates)
        return records


def _define_flags(flag_values: flags.FlagValues) -> None:
    clip_stage.define_flags(flag_values, "the `clips` records whose captions to choose (split's clips.jsonl)",
                            "clips per scoring call")  # fmt: skip
    flags.DEFINE_string("captions", None, "the caption stage's output folder (or its captions.jsonl)",
                        flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("labels", None, "optional JSONL of {clip_id, teacher}: the caption people chose, for the "
                        "report's top-1 agreement and confusion table", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("checkpoint", None, "the selector's checkpoint folder (config field `checkpoint`; "
                        "default: under `weights_dir`)", flag_values=flag_values)  # fmt: skip


SHORTHANDS = {"out": "out", "checkpoint": "checkpoint", "batch_size": "batch_size", "mesh": "mesh"}


def main(argv: Sequence[str] | None = None) -> int:
    command = cli.parse(argv, program="python -m panda_jax.select", doc=__doc__, default_config="retrieval",
                        define=_define_flags, shorthands=SHORTHANDS)  # fmt: skip
    config, flag_values, fail = command.config, command.flags, command.fail
    if not config.out:
        fail("give the output folder: --out DIR")
    if not all(flag_values[name].value for name in ("clips", "videos", "captions")):
        fail("give the clips, their videos and their captions: --clips clips.jsonl --videos videos.jsonl --captions DIR")
    if flag_values["checkpoint"].present:  # the user's folder, from here: read, never written with tiny weights
        config.checkpoint, config.tiny = str(Path(config.checkpoint).expanduser().absolute()), ""
    problems: list[Problem] = []
    labels, label_problems = None, []
    try:
        clips, videos = clip_stage.read_inputs(flag_values["clips"].value, flag_values["videos"].value, problems)
        captions, teachers = read_captions(Path(flag_values["captions"].value), problems)
        if flag_values["labels"].value:  # its bad lines are warned about, not clip failures
            labels = selection_report.read_labels(flag_values["labels"].value, label_problems)
        sharding.parse_mesh(config.mesh)
    except (OSError, ValueError) as error:
        fail(str(error))
    folder = tiny.checkpoint_folder(config)
    if not (folder / checkpoint.CONFIG_NAME).is_file():
        fail(f"no selector checkpoint in {folder}: put a Blip2ForImageTextRetrieval or CLIPModel folder there, set "
             "--config.weights_dir, or give --checkpoint DIR (README: caption selection)")  # fmt: skip
    cli.start_distributed(flag_values)

    captioned = [clip for clip in clips if clip.clip_id in captions]
    problems += [Problem("captions", clip.clip_id, "no teacher captioned this clip") for clip in clips
                 if clip.clip_id not in captions]  # fmt: skip
    unknown = len(set(captions) - {clip.clip_id for clip in clips})
    if unknown:
        log.warning("%d clips with captions are not in the clip list; they are left out", unknown)
    weights = [str(path) for path in sorted(folder.glob("*.safetensors")) + [folder / checkpoint.CONFIG_NAME]]

    def clip_captions(video: Video, clip: Clip) -> dict[str, Any]:
        return {"captions": captions[clip.clip_id]}

    shards, missing = clip_stage.clip_shards(captioned, videos, config.clips_per_shard, clip_captions, weights)
    problems += missing
    stage = SelectStage(config, teachers, folder)
    out = Path(config.out)
    ran = clip_stage.run(stage, shards, out, problems, "python -m panda_jax.select")
    if ran is None:
        return 2
    summary, seconds = ran
    counters = stage.counters
    if summary.merged:  # process 0 of a multi-host run, or the only process
        selections = list(read_records(out / f"{Selection.KIND}.jsonl", Selection))
        numbers = selection_report.report_numbers(selections, teachers, labels, config.threshold)
        details = {"selector": str(folder), "frames per clip": config.num_frames, "captions": flag_values["captions"].value}
        selection_report.write_report(numbers, out, details=details)
        report = {"teachers": teachers, **counters.report(summary, seconds, "scored"),
                  "captions_scored": counters.captions, "report": numbers.to_dict()}  # fmt: skip
        clip_stage.write_summary(out, report)
        agreement = "" if numbers.agreement is None else f"; top-1 agreement with the labels {numbers.agreement:.1%}"
        print(f"selected captions of {numbers.clips} clips among {len(teachers)} teachers; "
              f"{numbers.strong_matches} above {config.threshold}{agreement}; report in {out / 'report.md'}")  # fmt: skip
    print(f"scored {counters.clips} clips in {seconds:.1f} s ({counters.compiles} compiles); "
          f"{summary.reused} of {summary.shards} shards already done")  # fmt: skip
    return clip_stage.exit_status(summary, problems, out)


if __name__ == "__main__":
    sys.exit(main())

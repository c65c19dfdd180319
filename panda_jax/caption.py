"""Caption every clip with every teacher: `python -m panda_jax.caption`.

    python -m panda_jax.caption --clips split/clips.jsonl --videos corpus/videos.jsonl --out runs/caption
    python -m panda_jax.caption --clips ... --videos ... --out ... --config=teachers:tiny --teachers image,text
    python -m panda_jax.caption ... --mesh data=-1,model=2 --distributed      # one process per host

Teachers see different inputs (configs/teachers.py): one frame between 30 % and 70 % of the
clip, N frames, or only the clip's side text (subtitles shown during it, title, description),
each with Panda-70M's prompt. Each clip's frames are decoded once, in background threads while
the models run, and shared by every teacher. Batches are padded to a few fixed shapes, so each
teacher compiles a bounded number of programs, and split over the 'data' axis of the device mesh
(the models' parameters over 'model', as `sharding.RULES` place them).

Clips are shards of the shared stage runner (whole videos, about `clips_per_shard` clips each):
a killed run resumes, a rerun reuses what it made, a changed setting recomputes; a clip whose
video is missing or cannot be decoded is recorded in `failures.jsonl` and the others go on. On
many hosts (`--distributed`) each process captions its share of the shards on its own devices.
Writes OUT/captions.jsonl, OUT/failures.jsonl and OUT/summary.json (clips/s, tokens/s, compiles).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from panda_jax import cli, clip_stage, stages
from panda_jax.models import sharding
from panda_jax.records import Caption, Clip, Failure, Problem, RecordError, Video, read_jsonl
from panda_jax.teachers import Teacher, frames, from_config, prompts

log = logging.getLogger("panda_jax.caption")


def read_external(teacher: Teacher, clip_ids: set[str]) -> dict[str, str]:
    """An external teacher's captions by clip id (lines with `clip_id` and `caption`), refusing a file
    with a bad line or a clip the clip list lacks."""
    captions: dict[str, str] = {}
    try:
        for record in read_jsonl(teacher.checkpoint):
            caption = Caption.from_dict({"teacher": teacher.name, **record})
            captions[caption.clip_id] = caption.caption
    except (OSError, RecordError) as error:
        raise ValueError(f"teacher {teacher.name}: cannot use the captions in {teacher.checkpoint}: {error}") from None
    unknown = sorted(set(captions) - clip_ids)
    if unknown:
        raise ValueError(
            f"teacher {teacher.name}: {teacher.checkpoint} has captions of {len(unknown)} clips not in the clip "
            f"list: {', '.join(unknown[:5])}"
        )
    return captions


class CaptionStage:
    """The caption stage for panda_jax.stages: one shard per group of whole videos, giving `captions`."""

    name = "caption"
    version = 1
    outputs = (Caption.KIND,)

    def __init__(self, config: Any, teachers: Sequence[Teacher], external: dict[str, dict[str, str]]):
        self.config, self.teachers, self.external = config, list(teachers), external
        self.budgets = prompts.Budgets(**config.side_text)
        models = [t for t in self.teachers if t.family != "external"]
        # What a clip's frames must hold: one frame (image teachers), and N frames per video teacher's N.
        self.one_frame = any(t.frames == 1 for t in models)
        self.frame_counts = sorted({t.frames for t in models if t.frames > 1})
        self.counters = clip_stage.Counters()
        self._captioners: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_captioners": None}  # a worker loads its own models

    def settings(self) -> dict[str, Any]:
        return stages.output_settings(self.config)

    def setup(self) -> None:
        if self._captioners is not None:
            return
        import jax.numpy as jnp

        from panda_jax.models import CheckpointError, captioner
        from panda_jax.teachers import tiny

        self.counters.count_compiles()
        mesh = clip_stage.local_mesh(self.config.mesh)
        self._captioners = {}
        for teacher in self.teachers:
            if teacher.family == "external":
                continue
            if teacher.tiny:
                tiny.ensure_tiny_checkpoint(teacher.tiny, teacher.checkpoint)
            log.info("loading teacher %s from %s", teacher.name, teacher.checkpoint)
            try:
                self._captioners[teacher.name] = captioner.load_captioner(
                    teacher.checkpoint, getattr(jnp, self.config.dtype), mesh=mesh, max_batch_size=self.config.batch_size
                )
            except (CheckpointError, OSError) as error:
                raise stages.StageSetupError(f"teacher {teacher.name}: {error}") from None

    def process(self, shard: stages.Shard, out_dir: Path) -> stages.ShardResult:
        began = time.perf_counter()
        captions: list[Caption] = []
        failures: list[Failure] = []
        size, batch_size = self.config.decode_size, self.config.batch_size
        for batch in clip_stage.decoded_batches(shard, self._frame_needs, size, batch_size, failures, self.name):
            captions += self._caption(batch)
        self.counters.seconds += time.perf_counter() - began
        return stages.ShardResult(records={Caption.KIND: captions}, failures=failures)

    def _frame_needs(self, clip: dict[str, Any], start: int, end: int) -> dict[int, list[int]]:
        """The frames a clip's teachers see: one (image teachers), and N for each video teacher's N."""
        needs = {1: [frames.image_frame(clip["clip_id"], start, end)]} if self.one_frame else {}
        return needs | {count: frames.video_frames(start, end, count) for count in self.frame_counts}

    def _caption(self, batch: list[clip_stage.ClipFrames]) -> list[Caption]:
        """Every teacher's caption of every clip of `batch`."""
        clips = [clip for clip, _ in batch]
        records = []
        for teacher in self.teachers:
            if teacher.family == "external":
                known = self.external[teacher.name]
                texts = [known.get(c["clip_id"]) for c in clips]
                versions = ["external"] * len(clips)
            else:
                model = self._captioners[teacher.name]
                built = [self._prompt(teacher, model, clip) for clip in clips]
                pixels = None if teacher.frames == 0 else np.stack([clip_frames[teacher.frames] for _, clip_frames in batch])
                texts = model.caption(pixels, [prompt for prompt, _ in built], teacher.generation)
                versions = [version for _, version in built]
                self.counters.tokens += sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            records += [
                Caption(clip_id=clip["clip_id"], teacher=teacher.name, caption=text, prompt_version=version)
                for clip, text, version in zip(clips, texts, versions)
                if text is not None
            ]
        self.counters.clips += len(clips)
        self.counters.captions += len(records)
        return records

    def _prompt(self, teacher: Teacher, model: Any, clip: dict[str, Any]) -> tuple[str, str]:
        side_text = prompts.SideText(**clip["side_text"]) if teacher.side_text else None
        if teacher.family == "student":  # its own prompt; its captioner cuts it to the student's prompt positions
            return prompts.student_prompt(side_text), prompts.VERSION_STUDENT
        count = lambda text: len(model.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        return prompts.build_prompt(side_text, self.budgets, count)


def side_text(video: Video, clip: Clip) -> dict[str, Any]:
    """What a clip carries into its shard: its side text, so a changed subtitle re-captions it."""
    text = prompts.clip_side_text(video.title, video.description, video.subtitles, clip.start, clip.end)
    return {"side_text": dataclasses.asdict(text)}


def _define_flags(flag_values: flags.FlagValues) -> None:
    clip_stage.define_flags(flag_values, "the `clips` records to caption (split's clips.jsonl)", "clips per generate call")
    flags.DEFINE_string("teachers", None, "comma-separated teachers to run (config field `teacher_names`; "
                        "default: all of the config)", flag_values=flag_values)  # fmt: skip


SHORTHANDS = {"out": "out", "teachers": "teacher_names", "batch_size": "batch_size", "mesh": "mesh"}


def main(argv: Sequence[str] | None = None) -> int:
    command = cli.parse(argv, program="python -m panda_jax.caption", doc=__doc__, default_config="teachers",
                        define=_define_flags, shorthands=SHORTHANDS)  # fmt: skip
    config, flag_values, fail = command.config, command.flags, command.fail
    if not config.out:
        fail("give the output folder: --out DIR")
    if not flag_values["clips"].value or not flag_values["videos"].value:
        fail("give the clips and their videos: --clips clips.jsonl --videos videos.jsonl")
    problems: list[Problem] = []
    try:
        clips, videos = clip_stage.read_inputs(flag_values["clips"].value, flag_values["videos"].value, problems)
        sharding.parse_mesh(config.mesh)
        teachers = from_config(config, config.teacher_names)
    except (OSError, ValueError) as error:
        fail(str(error))
    clip_ids = {clip.clip_id for clip in clips}
    external, sources = {}, []
    for teacher in teachers:
        if teacher.family == "external":
            try:
                external[teacher.name] = read_external(teacher, clip_ids)
            except ValueError as error:
                fail(str(error))
            sources.append(str(teacher.checkpoint))
        elif not teacher.tiny and not teacher.checkpoint.is_dir():
            stands_for = f" ({teacher.stands_for})" if teacher.stands_for else ""
            fail(f"teacher {teacher.name}{stands_for}: no checkpoint folder {teacher.checkpoint}; put its files there "
                 "or set --config.weights_dir (README: the teachers)")  # fmt: skip
    cli.start_distributed(flag_values)

    shards, missing = clip_stage.clip_shards(clips, videos, config.clips_per_shard, side_text, sources)
    problems += missing
    stage = CaptionStage(config, teachers, external)
    out = Path(config.out)
    ran = clip_stage.run(stage, shards, out, problems, "python -m panda_jax.caption")
    if ran is None:
        return 2
    summary, seconds = ran
    counters = stage.counters
    report = {"teachers": [t.name for t in teachers], **counters.report(summary, seconds, "captioned"),
              "captions": counters.captions, "generated_tokens": counters.tokens,
              "tokens_per_second": counters.per_second(counters.tokens)}  # fmt: skip
    if summary.merged:  # process 0 of a multi-host run, or the only process
        clip_stage.write_summary(out, report)
    print(
        f"captioned {counters.clips} clips with {len(teachers)} teachers in {seconds:.1f} s "
        f"({report['clips_per_second']} clips/s, {report['tokens_per_second']} tokens/s, {counters.compiles} compiles); "
        f"{summary.reused} of {summary.shards} shards already done"
        + (f"; {out / 'captions.jsonl'} holds {summary.merged.get(Caption.KIND, 0)} captions" if summary.merged else "")
    )
    return clip_stage.exit_status(summary, problems, out)


if __name__ == "__main__":
    sys.exit(main())

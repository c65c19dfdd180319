"""Evaluate captions, caption selection, retrieval or caption facts: `python -m panda_jax.evaluate --task ...`.

    python -m panda_jax.evaluate --task captions --predictions runs/select/selection.jsonl --references refs.jsonl
    python -m panda_jax.evaluate --task captions --predictions runs/caption/captions.jsonl --teacher NAME \\
        --references refs.jsonl --metrics BLEU-4,CIDEr --out metrics.json
    python -m panda_jax.evaluate --task selection --selection runs/select/selection.jsonl --labels labels.jsonl
    python -m panda_jax.evaluate --task retrieval --similarity sim.npy --text_video text_video.json
    python -m panda_jax.evaluate --task facts --captions runs/caption/captions.jsonl --clips runs/split/clips.jsonl \\
        --videos synth/videos.jsonl

captions: BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap, after its PTB tokenizer; needs Java)
of one caption per clip (`selection` records, the `captions` records of `--teacher`, or
`{clip_id, caption}` lines) against references (`{clip_id, caption}` lines, one per reference).
METEOR's Java process takes several seconds to start: `--metrics` without it is quicker.
selection: top-1 agreement of the selected teachers with people's labels (`{clip_id, teacher}` lines).
retrieval: R@1/5/10 text-to-video and video-to-text and the median ranks of a stored [videos, texts]
similarity matrix (.npy), text j describing video T[j] (`--text_video`: a JSON list T of video
indices). The training loop computes these on its eval set itself.
facts: on the synthetic corpus, per teacher, the share of clips whose caption states each fact of
the clip's event rightly (background kind and colours, main object pattern, colour and size, action,
other object pattern, colour and size) and the mean fact precision, recall and F1 (`evaluate.facts`);
a clip is scored against the ground-truth event (`gt_events` of `--videos`) it overlaps most.
The same again on the clips of each condition (`one_object/...`, `clean_subtitles/...`:
`facts.CONDITIONS`), where what a teacher sees settles the facts.
With `--judged FILE` the judge's choice among each clip's captions (best fact F1, ties by CIDEr)
is written as labels, and scored as the teacher `judge`: the oracle a perfect selection reaches.

The numbers are printed, and written as JSON with `--out FILE.json`. Bad input exits with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from absl import flags

from panda_jax import cli, selection_report
from panda_jax.evaluate.captions import METRICS, ClipCaption, caption_metrics, read_predictions, read_references
from panda_jax.evaluate.facts import CONDITIONS, FactScore, clip_events, fact_accuracy, judge, score_caption
from panda_jax.evaluate.retrieval import recall_at_k
from panda_jax.evaluate.selection import selection_agreement
from panda_jax.files import atomic_output
from panda_jax.records import Clip, Label, Selection, Video, read_records, write_jsonl

PROGRAM = "python -m panda_jax.evaluate"


def _define_flags(flag_values: flags.FlagValues) -> None:
    def string(name: str, text: str) -> None:
        flags.DEFINE_string(name, None, text, flag_values=flag_values)

    flags.DEFINE_enum("task", None, list(TASKS), "what to evaluate", flag_values=flag_values)
    string("predictions", "captions: JSONL of one caption per clip (selection, captions or {clip_id, caption} lines)")
    string("references", "captions: JSONL of {clip_id, caption}, a line per reference (several per clip allowed)")
    string("teacher", "captions: score the captions of this teacher (for a captions file of several teachers)")
    flags.DEFINE_list("metrics", list(METRICS), "captions: the metrics to compute", flag_values=flag_values)
    string("selection", "selection: the select stage's selection.jsonl")
    string("labels", "selection: JSONL of {clip_id, teacher}, the caption people chose")
    string("similarity", "retrieval: .npy of a [videos, texts] similarity matrix")
    string("text_video", "retrieval: JSON list of each text's video index (a row of the matrix)")
    string("captions", "facts: the caption stage's captions.jsonl (every teacher's), or any clip captions (selection.jsonl)")
    string("name", "facts: score every caption of --captions under this name (default: each record's teacher)")
    string("judged", "facts: also write here, as labels JSONL, the teacher the judge prefers for each clip (best fact F1)")
    string("truth_out", "facts: also write here each clip's ground-truth caption (the references of --task captions)")
    string("clips", "facts: the split stage's clips.jsonl")
    string("videos", "facts: the synthetic corpus's videos.jsonl, with its ground truth")
    string("out", "also write the numbers to this JSON file")


def _captions(flag_values: flags.FlagValues) -> dict[str, float]:
    predictions = read_predictions(flag_values["predictions"].value, flag_values["teacher"].value)
    references = read_references(flag_values["references"].value)
    metrics = caption_metrics(predictions, references, flag_values["metrics"].value)
    scored = sum(len(references[clip]) for clip in predictions)
    return {"clips": len(predictions), "references": scored, **metrics}


def _selection(flag_values: flags.FlagValues) -> dict[str, float]:
    selections = list(read_records(flag_values["selection"].value, Selection))
    labels = selection_report.read_labels(flag_values["labels"].value, [])  # bad lines are warned about and skipped
    return selection_agreement(selections, labels)


def _retrieval(flag_values: flags.FlagValues) -> dict[str, float]:
    matrix, texts = Path(flag_values["similarity"].value), Path(flag_values["text_video"].value)
    try:
        similarity = np.load(matrix, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{matrix}: cannot be read as a .npy array ({error})") from None
    try:
        text_video = json.loads(texts.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{texts}: cannot be read as JSON ({error})") from None
    if not isinstance(similarity, np.ndarray):
        raise ValueError(f"{matrix}: not one .npy array")
    if not isinstance(text_video, list) or any(type(video) is not int for video in text_video):
        raise ValueError(f"{texts}: expected a JSON list of video indices (whole numbers)")
    recalls = recall_at_k(similarity, text_video)
    return {"videos": similarity.shape[0], "texts": similarity.shape[1], **recalls}


def _facts(flag_values: flags.FlagValues) -> dict[str, float]:
    videos_path, clips_path, captions_path = (flag_values[name].value for name in ("videos", "clips", "captions"))
    videos = {video.video_id: video.to_dict() for video in read_records(videos_path, Video)}
    events = clip_events(read_records(clips_path, Clip), videos)
    name = flag_values["name"].value
    scores: dict[str, list[tuple[str, FactScore]]] = {}  # teacher → (clip_id, score)
    candidates: dict[str, dict[str, tuple[str, FactScore]]] = {}  # clip_id → teacher → (caption, score)
    for record in read_records(captions_path, ClipCaption):
        if record.clip_id not in events:
            raise ValueError(f"clip {record.clip_id} has a caption but is not in {clips_path}")
        teacher = name or str(record.extra.get("teacher", "captions"))
        score = score_caption(record.caption, events[record.clip_id]["facts"])
        scores.setdefault(teacher, []).append((record.clip_id, score))
        candidates.setdefault(record.clip_id, {})[teacher] = (record.caption, score)
    if not scores:
        raise ValueError(f"{captions_path}: no captions")
    if flag_values["judged"].value:  # the caption the judge (people) would choose, for selection and its training
        labels = [Label(clip_id=clip, teacher=judge({name: text for name, (text, _) in named.items()},
                                                    events[clip]["facts"], events[clip]["caption"],
                                                    {name: score for name, (_, score) in named.items()}))
                  for clip, named in sorted(candidates.items())]  # fmt: skip
        with atomic_output(flag_values["judged"].value) as temporary:
            write_jsonl(temporary, labels)
        # The oracle: the judge's choice of every clip, what a perfect selection would give.
        scores["judge"] = [(label.clip_id, candidates[label.clip_id][label.teacher][1]) for label in labels]
    if flag_values["truth_out"].value:  # references for --task captions
        with atomic_output(flag_values["truth_out"].value) as temporary:
            write_jsonl(temporary, [{"clip_id": clip, "caption": events[clip]["caption"]} for clip in sorted(events)])
    numbers = {}
    for teacher, scored in sorted(scores.items()):
        numbers[teacher] = {"captions": len(scored), **fact_accuracy([score for _, score in scored])}
        for condition in CONDITIONS:  # the same on the clips whose inputs settle the facts
            met = [score for clip, score in scored if condition in events[clip]["conditions"]]
            if met:
                numbers[teacher] |= {f"{condition}/{key}": value for key, value in fact_accuracy(met).items()}
    if "judge" in numbers:  # clips where no teacher states every fact rightly
        numbers["judge"]["every_teacher_wrong"] = sum(s.f1 < 1.0 for _, s in scores["judge"]) / len(scores["judge"])
    return {f"{teacher}/{key}": value for teacher, named in numbers.items() for key, value in named.items()}


TASKS: dict[str, tuple[Callable[[flags.FlagValues], dict[str, float]], tuple[str, ...]]] = {  # with their input flags
    "captions": (_captions, ("predictions", "references")),
    "selection": (_selection, ("selection", "labels")),
    "retrieval": (_retrieval, ("similarity", "text_video")),
    "facts": (_facts, ("captions", "clips", "videos")),
}


def _table(numbers: dict[str, float]) -> str:
    width = max(map(len, numbers))
    return "\n".join(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}"
                     for key, value in numbers.items())  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    command = cli.parse(argv, program=PROGRAM, doc=__doc__, default_config=None, define=_define_flags)
    flag_values, fail = command.flags, command.fail
    task = flag_values["task"].value
    if task is None:
        fail(f"give the task: --task {'|'.join(TASKS)}")
    if command.args:
        fail(f"unexpected arguments: {' '.join(command.args)}")
    evaluate, inputs = TASKS[task]
    if not all(flag_values[name].value for name in inputs):
        fail(f"--task {task} needs {' and '.join(f'--{name}' for name in inputs)}")
    out = flag_values["out"].value
    try:
        numbers = evaluate(flag_values)
        if out:
            with atomic_output(out) as temporary:
                temporary.write_text(json.dumps({"task": task, **numbers}, indent=2) + "\n", encoding="utf-8")
    except (OSError, ValueError, RuntimeError) as error:
        fail(str(error))
    print(_table(numbers))
    if out:
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
the clip's event rightly (background kind and colours, main object shape, colour and size, action,
other object shape, colour and size) and the mean fact precision, recall and F1 (`evaluate.facts`);
a clip is scored against the ground-truth event (`gt_events` of `--videos`) it overlaps most.

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
from panda_jax.evaluate.captions import METRICS, caption_metrics, read_predictions, read_references
from panda_jax.evaluate.facts import FactScore, event_of, fact_accuracy, score_caption
from panda_jax.evaluate.retrieval import recall_at_k
from panda_jax.evaluate.selection import selection_agreement
from panda_jax.files import atomic_output
from panda_jax.records import Caption, Clip, Selection, Video, read_records

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
    string("captions", "facts: the caption stage's captions.jsonl (every teacher's captions)")
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
    clips = {clip.clip_id: clip for clip in read_records(clips_path, Clip)}
    scores: dict[str, list[FactScore]] = {}
    for caption in read_records(captions_path, Caption):
        clip = clips.get(caption.clip_id)
        if clip is None:
            raise ValueError(f"clip {caption.clip_id} has a caption but is not in {clips_path}")
        video = videos.get(clip.video_id, {})
        if "gt_events" not in video:
            raise ValueError(f"video {clip.video_id} has no ground-truth events (gt_events) in {videos_path}: "
                             "facts need the synthetic corpus's videos.jsonl")  # fmt: skip
        start, end = clip.start_frame, clip.end_frame
        if start is None:
            start, end = round(clip.start * video["fps"]), round(clip.end * video["fps"])
        event = event_of(start, end, video)
        if event is None:
            raise ValueError(f"clip {clip.clip_id} (frames {start}-{end}) overlaps no event of {clip.video_id}")
        scores.setdefault(caption.teacher, []).append(score_caption(caption.caption, event["facts"]))
    if not scores:
        raise ValueError(f"{captions_path}: no captions")
    numbers = {name: {"captions": len(scored), **fact_accuracy(scored)} for name, scored in sorted(scores.items())}
    return {f"{teacher}/{name}": value for teacher, named in numbers.items() for name, value in named.items()}


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

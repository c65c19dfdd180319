"""Evaluate captions, caption selection or retrieval from files: `python -m panda_jax.evaluate --task ...`.

    python -m panda_jax.evaluate --task captions --predictions runs/select/selection.jsonl --references refs.jsonl
    python -m panda_jax.evaluate --task captions --predictions runs/caption/captions.jsonl --teacher NAME \\
        --references refs.jsonl --metrics BLEU-4,CIDEr --out metrics.json
    python -m panda_jax.evaluate --task selection --selection runs/select/selection.jsonl --labels labels.jsonl
    python -m panda_jax.evaluate --task retrieval --similarity sim.npy --text_video text_video.json

captions: BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap, after its PTB tokenizer; needs Java)
of one caption per clip (`selection` records, the `captions` records of `--teacher`, or
`{clip_id, caption}` lines) against references (`{clip_id, caption}` lines, one per reference).
METEOR's Java process takes several seconds to start: `--metrics` without it is quicker.
selection: top-1 agreement of the selected teachers with people's labels (`{clip_id, teacher}` lines).
retrieval: R@1/5/10 text-to-video and video-to-text and the median ranks of a stored [videos, texts]
similarity matrix (.npy), text j describing video T[j] (`--text_video`: a JSON list T of video
indices). The training loop computes these on its eval set itself.

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
from panda_jax.evaluate.retrieval import recall_at_k
from panda_jax.evaluate.selection import selection_agreement
from panda_jax.files import atomic_output
from panda_jax.records import Selection, read_records

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


TASKS: dict[str, tuple[Callable[[flags.FlagValues], dict[str, float]], tuple[str, ...]]] = {  # with their input flags
    "captions": (_captions, ("predictions", "references")),
    "selection": (_selection, ("selection", "labels")),
    "retrieval": (_retrieval, ("similarity", "text_video")),
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

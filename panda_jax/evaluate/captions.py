"""Caption metrics as the captioning papers report them: pycocoevalcap's BLEU-4, METEOR, ROUGE-L and CIDEr.

Panda-70M compares its student captioner with others on these numbers, and they only compare
across papers when computed by the same code: the COCO caption evaluation (pycocoevalcap), with
its PTB tokenizer (lower case, punctuation dropped) in front. The tokenizer and METEOR are Java
programs, so a Java runtime must be installed (`make setup` installs Debian's
default-jre-headless). SPICE is left out: it downloads Stanford CoreNLP models at first use,
and nothing here fetches at run time.

Predictions and references are read from JSON Lines of `{clip_id, caption}` (`read_predictions`,
`read_references`), which `captions` and `selection` records are too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import ClassVar

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from panda_jax.records import Record, RecordError, _clip_id, _field, _string, read_records

log = logging.getLogger(__name__)

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipCaption(Record):
    """One caption of a clip: a prediction, or one of its references. Other fields (`teacher`, ...) go to `extra`."""

    KIND: ClassVar[str] = "clip caption"
    clip_id: str = _field(_clip_id)
    caption: str = _field(_string)


def read_predictions(path: str | os.PathLike, teacher: str | None = None) -> dict[str, str]:
    """clip_id -> the predicted caption, from `selection` or `captions` records or `{clip_id, caption}` lines.

    With `teacher`, only the lines of that teacher count (a `captions` file holds every teacher's).
    A clip with two captions, or no caption at all, raises RecordError.
    """
    predictions: dict[str, str] = {}
    teachers: set[str] = set()  # to name them when `teacher` has no caption
    for record in read_records(path, ClipCaption):
        by = record.extra.get("teacher")
        if isinstance(by, str):
            teachers.add(by)
        if teacher is not None and by != teacher:
            continue
        if record.clip_id in predictions:
            several = " (captions of several teachers? pick one teacher)" if teacher is None else ""
            raise RecordError(f"{path}: clip {record.clip_id} has more than one caption{several}")
        predictions[record.clip_id] = record.caption
    if not predictions and teacher is not None:
        named = ", ".join(sorted(teachers)) or "none"
        raise RecordError(f"{path}: no captions by teacher {teacher!r} (its teachers: {named})")
    if not predictions:
        raise RecordError(f"{path}: no captions")
    return predictions


def read_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """clip_id -> its reference captions, from `{clip_id, caption}` lines (one line per reference)."""
    references: dict[str, list[str]] = {}
    for record in read_records(path, ClipCaption):
        references.setdefault(record.clip_id, []).append(record.caption)
    if not references:
        raise RecordError(f"{path}: no references")
    return references


def caption_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """The corpus-level `metrics` (any of METRICS, in that order by default) of the predicted captions.

    Every predicted clip must have at least one reference; clips with references and no
    prediction are left out, with a warning. Numbers are pycocoevalcap's: BLEU-4 over the corpus
    (clipped n-gram counts summed over clips, the reference length closest to each prediction),
    METEOR 1.5, ROUGE-L averaged over clips (LCS-based F with beta 1.2, best precision and best
    recall over the references), and CIDEr-D (scaled by 10) with document frequencies taken from
    the scored clips' references, so it needs a corpus: on one clip it is 0. All whitespace in a
    caption becomes single spaces first (a carriage return would shift the tokenizer's lines).
    Raises ValueError for bad input, RuntimeError when Java is missing or fails.
    """
    unknown = [metric for metric in metrics if metric not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown caption metrics {unknown or 'none given'}: choose among {', '.join(METRICS)}")
    if not predictions:
        raise ValueError("no predictions to score")
    unreferenced = sorted(set(predictions) - set(references))
    if len(unreferenced) == len(predictions):
        raise ValueError(
            f"no predicted clip has a reference: the ids do not overlap (predictions: {', '.join(unreferenced[:3])}; "
            f"references: {', '.join(sorted(references)[:3]) or 'none'})"
        )
    if unreferenced:
        raise ValueError(f"{len(unreferenced)} of {len(predictions)} predicted clips have no reference: "
                         f"{', '.join(unreferenced[:5])}")  # fmt: skip
    empty = sorted(clip for clip in predictions if not references[clip])
    if empty:
        raise ValueError(f"{len(empty)} clips have an empty list of references: {', '.join(empty[:5])}")
    left_out = len(set(references) - set(predictions))
    if left_out:
        log.warning("%d clips with references have no prediction; they are left out", left_out)
    if shutil.which("java") is None:
        raise RuntimeError("caption metrics need a Java runtime (`java` on PATH) for the PTB tokenizer and METEOR: "
                           "install one, e.g. Debian's default-jre-headless (`make setup` does)")  # fmt: skip
    tokens = _tokenized({clip: [predictions[clip], *references[clip]] for clip in predictions})
    results = {clip: texts[:1] for clip, texts in tokens.items()}
    truths = {clip: texts[1:] for clip, texts in tokens.items()}
    return {metric: _score(metric, truths, results) for metric in dict.fromkeys(metrics)}


def _tokenized(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """PTB-tokenized captions, each clip's in order, in one run of the Java tokenizer."""
    given = {clip: [{"caption": " ".join(text.split())} for text in texts] for clip, texts in captions.items()}
    tokens = PTBTokenizer().tokenize(given)
    if any(len(tokens.get(clip, ())) != len(texts) for clip, texts in given.items()):
        raise RuntimeError("the PTB tokenizer (Java) did not give back every caption; its error is printed above")
    return tokens


@functools.cache
def _meteor() -> Meteor:
    """One METEOR Java process per Python process: it takes about 10 s to load its tables, then scores a few
    hundred captions in a fraction of a second (Table 4 of the demo scores seven captioners)."""
    return Meteor()


def _score(metric: str, truths: dict[str, list[str]], results: dict[str, list[str]]) -> float:
    """One corpus-level metric of tokenized captions."""
    if metric == "BLEU-4":
        return float(Bleu(4).compute_score(truths, results, verbose=0)[0][3])  # BLEU-1 to BLEU-4
    if metric == "METEOR":
        scorer = _meteor()
        try:
            return float(scorer.compute_score(truths, results)[0])
        except (OSError, ValueError) as error:  # the Java process died: no score line, or a closed pipe
            _meteor.cache_clear()
            if scorer.lock.locked():  # left held by the failed call: its __del__ would wait for it forever
                scorer.lock.release()
            with contextlib.suppress(OSError):  # closed here, so that its __del__ finds nothing left to flush
                scorer.meteor_p.stdin.close()
            raise RuntimeError(f"METEOR's Java process failed ({error})") from None
    scorer = Rouge() if metric == "ROUGE-L" else Cider()
    return float(scorer.compute_score(truths, results)[0])

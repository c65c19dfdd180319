"""The select stage's report: which teacher wins how often, how well the winners match, and how they compare to people.

The select stage keeps, for each clip, the teacher caption a retrieval model matches best to the
video. Whether that worked shows only in aggregate, so after a run this module writes
`report.md` and `selective_rate.png`:

- each teacher's selective rate, the share of clips whose caption it gave (Figure 3 of the
  Panda-70M paper), which shows whether one teacher dominates or one is never chosen;
- the histogram of the chosen captions' matching scores, with the paper's threshold of 0.43
  ("a strong match", 89.6 % of Panda-70M), which shows how sure the model was;
- with a file of human labels (`{"clip_id": ..., "teacher": ...}` per line, the caption a person
  judged best), the top-1 agreement of the selection with them and the confusion table, the
  paper's check that the model chooses like people do.

The numbers come first (`report_numbers`), so they can be checked and stored as JSON apart from
the rendering (`write_report`). The figure is drawn with matplotlib's object-oriented API and the
Agg canvas: no display, no pyplot state shared between threads.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from panda_jax.files import atomic_output
from panda_jax.records import Label, Problem, Selection, read_records

log = logging.getLogger(__name__)

STRONG_MATCH = 0.43  # the paper: a matching score above this is a strong match
BINS = 10  # histogram bins over [0, 1]
FIGURE_SIZE = (11, 4)  # inches
DPI = 100
_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class ReportNumbers:
    """Everything the report shows, computed once so it can be tested and stored apart from the rendering."""

    clips: int  # selection records
    teachers: tuple[str, ...]  # in the order given, teachers never selected included
    selected: dict[str, int]  # teacher -> clips whose caption it gave (every teacher, 0 included)
    selective_rate: dict[str, float]  # teacher -> selected / clips (0.0 when no clips)
    mean_matching_score: float | None
    strong_matches: int  # clips with matching_score > threshold
    threshold: float
    histogram: tuple[int, ...]  # counts in BINS equal bins over [0, 1]; 1.0 falls in the last
    missing_captions: int  # clips with at least one missing teacher
    labelled: int  # selected clips that have a label (0 without labels)
    agreement: float | None  # share of labelled clips whose selected teacher is the label; None without any
    confusion: dict[str, dict[str, int]]  # label teacher -> selected teacher -> count ({} without labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, to store the numbers beside the report."""
        return dataclasses.asdict(self) | {"teachers": list(self.teachers), "histogram": list(self.histogram)}


def read_labels(path: str | os.PathLike, problems: list[Problem]) -> dict[str, str]:
    """clip_id -> teacher from a JSON Lines file of `Label`s.

    Labels are typed by hand, so a bad line is logged, appended to `problems` and skipped rather
    than stopping the report; of a clip labelled twice the first label counts. A file that
    cannot be read at all raises.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist (expected JSON Lines of clip_id, teacher)")
    labels: dict[str, str] = {}
    for label in read_records(path, Label, problems):
        if label.clip_id in labels:
            problem = Problem(str(path), label.clip_id, f"clip_id {label.clip_id!r} is labelled twice; the first counts")
            log.warning("skipping %s", problem.error)
            problems.append(problem)
            continue
        labels[label.clip_id] = label.teacher
    return labels


def report_numbers(
    selections: Sequence[Selection],
    teachers: Sequence[str],
    labels: Mapping[str, str] | None = None,
    threshold: float = STRONG_MATCH,
) -> ReportNumbers:
    """The report's numbers for one run's selections.

    `teachers` are all teachers of the run, in display order, so a teacher never chosen still
    shows with 0; a selected teacher not among them is added after them. Labels of clips that
    were not selected are ignored. The confusion table has a row for every teacher and for every
    other teacher a label names, and a column for every teacher.
    """
    names = tuple(dict.fromkeys([*teachers, *(s.teacher for s in selections)]))
    clips = len(selections)
    counts = collections.Counter(s.teacher for s in selections)
    histogram = [0] * BINS
    for s in selections:
        if not 0.0 <= s.matching_score <= 1.0:
            raise ValueError(f"clip {s.clip_id}: matching_score {s.matching_score} is not in [0, 1]")
        histogram[min(int(s.matching_score * BINS), BINS - 1)] += 1
    labelled = [s for s in selections if s.clip_id in labels] if labels is not None else []
    confusion: dict[str, dict[str, int]] = {}
    if labels is not None:
        confusion = {row: dict.fromkeys(names, 0) for row in [*names, *(labels[s.clip_id] for s in labelled)]}
        for s in labelled:
            confusion[labels[s.clip_id]][s.teacher] += 1
    return ReportNumbers(
        clips=clips,
        teachers=names,
        selected={name: counts[name] for name in names},
        selective_rate={name: counts[name] / clips if clips else 0.0 for name in names},
        mean_matching_score=statistics.fmean(s.matching_score for s in selections) if selections else None,
        strong_matches=sum(s.matching_score > threshold for s in selections),
        threshold=threshold,
        histogram=tuple(histogram),
        missing_captions=sum(bool(s.missing_teachers) for s in selections),
        labelled=len(labelled),
        agreement=sum(labels[s.clip_id] == s.teacher for s in labelled) / len(labelled) if labelled else None,
        confusion=confusion,
    )


def write_report(
    numbers: ReportNumbers,
    out_dir: Path,
    *,
    title: str = "Caption selection",
    details: Mapping[str, Any] = _NO_DETAILS,
) -> tuple[Path, Path]:
    """Writes `out_dir/report.md` and `out_dir/selective_rate.png`, each atomically; returns their paths.

    `details` (checkpoint, config, run time, ...) are shown at the top of the report, in order.
    """
    report, figure = Path(out_dir) / "report.md", Path(out_dir) / "selective_rate.png"
    with atomic_output(figure) as temporary:
        _figure(numbers).savefig(temporary, format="png")
    with atomic_output(report) as temporary:
        temporary.write_text(_markdown(numbers, title, details, figure.name), encoding="utf-8")
    return report, figure


def _percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def _bin_range(index: int) -> str:
    """`[0.4, 0.5)`; the last bin also holds 1.0, so it is closed."""
    return f"[{index / BINS:.1f}, {(index + 1) / BINS:.1f}{']' if index == BINS - 1 else ')'}"


def _markdown(numbers: ReportNumbers, title: str, details: Mapping[str, Any], figure: str) -> str:
    n = numbers.clips
    lines = [f"# {title}", ""]
    if details:
        lines += [*(f"- {key}: {value}" for key, value in details.items()), ""]
    if n:
        lines.append(f"{n} clips, {numbers.missing_captions} with a caption missing from at least one teacher.")
    else:
        lines.append("0 clips: no clips were selected.")
    lines += ["", "## Selective rate", "", "| teacher | clips selected | selective rate |", "|---|---:|---:|"]
    lines += [
        f"| {name} | {numbers.selected[name]} | {_percent(numbers.selective_rate[name])} |" for name in numbers.teachers
    ]
    lines += ["", "## Matching score", ""]
    if numbers.mean_matching_score is None:
        lines.append("Mean matching score: none (no clips were selected).")
    else:
        lines.append(f"Mean matching score: {numbers.mean_matching_score:.3f}.")
    strong = numbers.strong_matches / n if n else 0.0
    lines += [
        f"{numbers.strong_matches} of {n} ({_percent(strong)}) above {numbers.threshold:g} (a strong match).",
        "",
        "| matching score | clips |",
        "|---|---:|",
        *(f"| {_bin_range(i)} | {count} |" for i, count in enumerate(numbers.histogram)),
    ]
    if numbers.confusion:
        lines += ["", "## Agreement with the labels", ""]
        if numbers.agreement is None:
            lines.append("Top-1 agreement with the labels: none (no selected clip has a label).")
        else:
            agreement = _percent(numbers.agreement)
            lines.append(f"Top-1 agreement with the labels: {agreement} ({numbers.labelled} labelled clips)")
        lines += [
            "",
            "Rows: the labelled teacher; columns: the selected teacher.",
            "",
            f"| label \\ selected | {' | '.join(numbers.teachers)} |",
            f"|---|{'---:|' * len(numbers.teachers)}",
            *(f"| {row} | {' | '.join(map(str, counts.values()))} |" for row, counts in numbers.confusion.items()),
        ]
    lines += ["", f"![selective rates]({figure})", ""]
    return "\n".join(lines)


def _figure(numbers: ReportNumbers) -> Figure:
    """Left: selective rate per teacher (the paper's Figure 3); right: matching-score histogram."""
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    rates, scores = figure.subplots(1, 2)
    percents = [100 * numbers.selective_rate[name] for name in numbers.teachers]
    bars = rates.bar(numbers.teachers, percents, color="tab:blue")
    rates.bar_label(bars, labels=[f"{p:.1f}%" for p in percents], padding=2)
    rates.set_ylim(0, max([*percents, 1.0]) * 1.15)
    rates.set_ylabel("selective rate (%)")
    rates.set_title("Selective rate per teacher")
    lefts = [i / BINS for i in range(BINS)]
    scores.bar(lefts, numbers.histogram, width=1 / BINS, align="edge", color="tab:green", edgecolor="white")
    scores.axvline(numbers.threshold, color="tab:red", linestyle="--", label=f"{numbers.threshold:g} (strong match)")
    scores.set_xlim(0, 1)
    scores.set_ylim(0, max([*numbers.histogram, 1]) * 1.15)
    scores.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of clips
    scores.set_xlabel("matching score of the selected caption")
    scores.set_ylabel("clips")
    scores.set_title("Matching score")
    scores.legend(loc="best")
    if not numbers.clips:
        for axes in (rates, scores):
            axes.text(0.5, 0.5, "no clips were selected", transform=axes.transAxes, ha="center", va="center")
    return figure

"""The demo's report, OUT/README.md: the tables, the plots and a paragraph per claim of the paper, written
from the numbers the stages produced (`results.json`), whatever they are."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from panda_jax.configs.teachers import DEMO_TEACHERS  # noqa: E402
from panda_jax.demo.claims import SELECTION_MARGIN, SELECTORS, STUDENT_SHARE, STUDENT_SPEEDUP  # noqa: E402
from panda_jax.evaluate.facts import CHECKS  # noqa: E402


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "n/a" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(map(cell, row)) + " |" for row in rows)])


def save_plot(figure: Any, axes: Any, path: Path, **labels: str) -> str:
    """Labels the axes, adds the legend, writes the PNG and returns its name, for the README to link."""
    axes.set(**labels)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def plot_losses(out: Path) -> str:
    """The students' training loss, from their runs' metrics.jsonl."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name in ("video", "video_text"):
        metrics = out / "runs" / f"student_{name}" / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rows = [row for row in rows if row.get("split") == "train"]
        axes.plot([row["step"] for row in rows], [row["loss"] for row in rows], label=f"student ({name})")
    return save_plot(figure, axes, out / "student_loss.png", xlabel="step", ylabel="caption loss",
                     title="Student training")  # fmt: skip


def plot_matching_scores(out: Path) -> str:
    """The fine-tuned selector's matching score of the caption it chose, on the test clips."""
    path = out / "select" / "hard_negatives_test" / "selection.jsonl"
    scores = [json.loads(line)["matching_score"] for line in path.read_text().splitlines()]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(scores, bins=20, range=(0, 1))
    axes.axvline(0.43, color="black", linestyle="--", label="Panda-70M's 0.43")
    return save_plot(figure, axes, out / "matching_scores.png", xlabel="matching score of the selected caption",
                     ylabel="clips", title="Selection on the test clips")  # fmt: skip


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def claims(results: dict[str, Any]) -> list[str]:
    """One paragraph per claim: its verdict (`results["claims"]`, `claims.verdicts`) and the numbers around it."""
    verdict, rows = results["claims"], results["table4"]
    selection, student = verdict["selection_beats_best_teacher"], verdict["student_reaches_selection"]
    best, oracle = selection["teacher"], results["teacher_facts"]["judge/f1"]
    gain = selection["value"] - selection["baseline"]
    recovered = gain / (oracle - selection["baseline"]) if oracle > selection["baseline"] else 0.0
    hard, pretrained = (verdict["fine_tuned_selector_beats_pretrained"][key] for key in ("value", "baseline"))
    plain = verdict["hard_negatives_match_contrastive"]["baseline"]
    report = results["selection"]["hard_negatives"]["report"]
    labelled = report["labelled"]  # the confusion table's rows are the judge's choices, its columns the selector's
    judged = {name: sum(report["confusion"].get(name, {}).values()) / labelled for name in DEMO_TEACHERS}
    rates = ", ".join(f"{name} {percent(report['selective_rate'].get(name, 0.0))} / {percent(judged[name])}"
                      for name in DEMO_TEACHERS)  # fmt: skip
    students = {name: rows[f"student ({name})"]["fact_f1"] for name in ("video", "video+text")}
    return [
        f"**Selection beats the best single teacher (by {SELECTION_MARGIN} of fact F1)?** {yes(selection)}: teachers + "
        f"selection reach a fact F1 of {selection['value']:.3f}, the best teacher ({best}) {selection['baseline']:.3f} "
        f"({gain:+.3f}); the oracle (the judge's own choice) {oracle:.3f}"
        + (f", so selection recovers {percent(recovered)} of what choosing among the teachers could add. " if recovered > 0
           else ": the selector's choices lose more where it leaves the best teacher than they win. ")
        + f"The selector agrees with the judge on {percent(hard)} of the clips; each "
        f"teacher's share of the selector's choices / of the judge's: {rates}.",
        f"**Fine-tuning beats the pretrained selector?** {yes(verdict['fine_tuned_selector_beats_pretrained'])}: top-1 "
        f"agreement with the judge {percent(hard)} fine-tuned with hard negatives, {percent(pretrained)} pretrained "
        f"({100 * (hard - pretrained):+.1f} points), on {labelled} test clips, after fine-tuning on "
        f"{results['labelled']['examples']} labelled clips; Panda-70M: 35.9 % fine-tuned, 21.8 % pretrained.",
        f"**Hard negatives do as well as plain contrastive fine-tuning?** "
        f"{yes(verdict['hard_negatives_match_contrastive'])}: {percent(hard)} with hard negatives, {percent(plain)} "
        f"plain contrastive ({100 * (hard - plain):+.1f} points).",
        f"**The student beats every single teacher?** {yes(verdict['student_beats_best_teacher'])}: fact F1 student "
        f"(video+text) {students['video+text']:.3f}, student (video) {students['video']:.3f}; best teacher "
        f"{selection['baseline']:.3f} ({students['video+text'] - selection['baseline']:+.3f}). It learns from the "
        f"validation clips' selected captions, whose own fact F1 is {results['student_labels']['selection/f1']:.3f}.",
        f"**The student reaches teachers + selection ({percent(STUDENT_SHARE)} of its fact F1, at "
        f"{STUDENT_SPEEDUP:.0f}× its speed or more)?** {yes(student)}: fact F1 {student['value']:.3f} against "
        f"{student['baseline']:.3f} ({student['value'] - student['baseline']:+.3f}); it is one model: "
        f"{student['clips_per_second']:.2f} clips/s against {student['baseline_clips_per_second']:.2f} for four "
        f"teachers and the selector ({student['clips_per_second'] / student['baseline_clips_per_second']:.1f}×).",
        f"**Text input helps the student?** {yes(verdict['text_helps_student'])}: fact F1 {students['video+text']:.3f} "
        f"with the subtitles and metadata, {students['video']:.3f} without "
        f"({students['video+text'] - students['video']:+.3f}).",
        stitching_claim(verdict["stitching_raises_event_f1"], results["split"]),
    ]


def yes(verdict: dict[str, Any]) -> str:
    return "Yes" if verdict["holds"] else "No"


def stitching_claim(verdict: dict[str, Any], split: dict[str, Any]) -> str:
    """Stitching a detector's shots should raise the event F1 (clips matching whole events), with every detector."""
    paragraph = (f"**Stitching merges the shots of one event without merging different events (event F1 up with every "
                 f"detector)?** {yes(verdict)}:")  # fmt: skip
    for detector in verdict["detectors"]:
        shots, stitched = split[f"{detector}_shots"], split[f"{detector}_stitch"]
        paragraph += (
            f" {detector}: event F1 {shots['event_f1']:.3f} → {stitched['event_f1']:.3f} "
            f"({stitched['event_f1'] - shots['event_f1']:+.3f}; precision {shots['event_precision']:.3f} → "
            f"{stitched['event_precision']:.3f}, recall {shots['event_recall']:.3f} → "
            f"{stitched['event_recall']:.3f}), mean clip {shots['mean_clip_seconds']:.1f} s → "
            f"{stitched['mean_clip_seconds']:.1f} s."
            + (" Event recall falls: no kept clip starts at some event boundaries (shots merged across them, or"
               " dropped as transitions, too short or static: a shot the detector ran across two events is dropped"
               " as a transition, and with it parts of both)."
               if stitched["event_recall"] < shots["event_recall"] else ""))  # fmt: skip
    return paragraph


def write_report(out: Path, results: dict[str, Any], variant: str) -> Path:
    facts, corpus = results["teacher_facts"], results["corpus"]
    lines = [
        f"# panda-jax demo ({variant}): the whole loop on the grounded synthetic corpus", "",
        f"Wall time {sum(results['stage_seconds'].values()) / 60:.1f} min, every stage run once (this run: "
        f"{results['seconds'] / 60:.1f} min, finished stages reused). Clips (events) in the validation videos: {corpus['val']}, "
        f"in the test videos: {corpus['test']}. Every number below is measured on the test videos; captions on the "
        f"{results['table4']['image']['clips']} clips the pipeline's split (content detector, stitched) made of them.", "",
        "## Splitting (the paper's Table 2)", "",
        "Max Running LPIPS is computed with LPIPS's real heads on a *random* AlexNet (no pretrained one offline): "
        "it ranks, it is not comparable with the paper's values.", "",
        table(["detector", "clips", "mean clip (s)", "shot F1", "event F1", "Max Running LPIPS (random backbone)"],
              [[name, row["clips"], row["mean_clip_seconds"], row["shot_f1"], row["event_f1"], row["max_running_lpips"]]
               for name, row in results["split"].items()]), "",
        "## Teachers: the facts each states rightly", "",
        "Share of test clips whose caption states the fact rightly (not stated counts as not right), and the mean "
        "fact F1; then each teacher against the target it is held to, on the clips where what it sees settles the "
        "facts (one frame cannot show which of two objects is the one acting).", "",
        table(["teacher", *CHECKS, "f1"],
              [[name, *(facts.get(f"{name}/{check}") for check in (*CHECKS, "f1"))] for name in DEMO_TEACHERS]), "",
        table(["teacher", "held to", "measured", "target", "met"],
              [[name, row["held_to"], row["measured"], row["target"], yes(row)]
               for name, row in results["targets"].items()]), "",
        "## Caption selection", "",
        table(["selector", "top-1 agreement with the judge"],
              [[text, percent(results["selection"][name]["report"]["agreement"])] for name, text in SELECTORS.items()]),
        "",
        f"Oracle (the judge's choice) fact F1 {facts['judge/f1']:.3f}; clips where every teacher is wrong "
        f"(no caption states every fact rightly): {percent(facts['judge/every_teacher_wrong'])}.", "",
        "Selective rates: " + ", ".join(f"[{name}](select/{name}_test/selective_rate.png)" for name in SELECTORS),
        "", f"![matching scores]({plot_matching_scores(out)})", "",
        "## Captioning on the test clips (the paper's Table 4, automatic metrics)", "",
        table(["captioner", "fact F1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "clips/s"],
              [[name, row["fact_f1"], row.get("BLEU-4"), row.get("METEOR"), row.get("ROUGE-L"), row.get("CIDEr"),
                row["clips_per_second"]] for name, row in results["table4"].items()]), "",
        f"![student loss]({plot_losses(out)})", "",
        "## The claims", "", *(f"{paragraph}\n" for paragraph in claims(results)),
        "## Stage wall times", "",
        table(["stage", "seconds"], [[name, seconds] for name, seconds in results["stage_seconds"].items()]), "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path

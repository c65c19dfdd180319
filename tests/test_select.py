"""`python -m panda_jax.select` with the tiny selector: the best-scored caption per clip, missing teachers,
failures, the report, reuse and rescoring, a killed run on 8 devices resumed to the one-device records."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from panda_jax import select, selection_report
from panda_jax.records import Caption, Clip, Failure, Selection, read_jsonl, read_records, write_jsonl

TEACHERS = ("image", "video", "text")


@pytest.fixture(scope="module")
def inputs(clip_corpus, tmp_path_factory):
    """The shared clip corpus with three teachers' captions: the image teacher's are the truth, one clip lacks
    the text teacher's, and one more clip has none."""
    corpus, records, clips = clip_corpus
    folder = tmp_path_factory.mktemp("select_inputs")
    uncaptioned = Clip(clip_id=f"{records[0]['video_id']}.0099", video_id=records[0]["video_id"], start=0.0, end=1.0,
                       start_frame=0, end_frame=24)  # fmt: skip
    write_jsonl(folder / "clips.jsonl", [*clips, uncaptioned])
    truth = {f"{r['video_id']}.{i:04d}": e["caption"] for r in records for i, e in enumerate(r["gt_events"])}
    captions = []
    for number, clip in enumerate(clips):
        said = truth.get(clip.clip_id, "a gray screen")
        captions += [Caption(clip_id=clip.clip_id, teacher="image", caption=said),
                     Caption(clip_id=clip.clip_id, teacher="video", caption="a red circle moves left on a blue background")]
        if number != 1:
            captions.append(Caption(clip_id=clip.clip_id, teacher="text", caption="a man walks in a park"))
    write_jsonl(folder / "caption" / "captions.jsonl", captions)  # as the caption stage leaves them
    return folder, clips, captions, uncaptioned, corpus / "videos.jsonl"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_selectors")


def arguments(inputs, weights, out, *extra) -> list[str]:
    folder, videos = inputs[0], inputs[4]
    return ["--clips", str(folder / "clips.jsonl"), "--videos", str(videos), "--captions",
            str(folder / "caption"), "--out", str(out), "--config=retrieval:tiny",
            f"--config.weights_dir={weights}", "--config.clips_per_shard=1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def clean(inputs, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("select_clean")
    assert select.main(arguments(inputs, weights, out)) == 1  # four clips fail
    return out


def test_every_clip_gets_its_best_scored_caption_and_failures_say_why(inputs, clean):
    folder, clips, captions, uncaptioned, _ = inputs
    said = {(c.clip_id, c.teacher): c.caption for c in captions}
    found = {s.clip_id: s for s in read_records(clean / "selection.jsonl", Selection)}
    good = [c.clip_id for c in clips if c.video_id not in ("broken", "gone")]
    assert sorted(found) == sorted(good)
    for selection in found.values():
        assert selection.teacher == max(selection.scores, key=selection.scores.get)  # the first of equals
        assert selection.caption == said[selection.clip_id, selection.teacher]
        assert selection.matching_score == selection.scores[selection.teacher]
        assert all(0.0 <= score <= 1.0 for score in selection.scores.values())
    # A clip without the text teacher's caption is chosen among the others, and says so.
    short = found[clips[1].clip_id]
    assert (short.missing_teachers, sorted(short.scores)) == (("text",), ["image", "video"])
    assert all(s.missing_teachers == () and list(s.scores) == list(TEACHERS) for s in found.values() if s is not short)
    failures = {f.item_id: f.error for f in read_records(clean / "failures.jsonl", Failure)}
    assert set(failures) == {"broken.0000", "gone.0000", uncaptioned.clip_id}
    assert "VideoNotFoundError" in failures["gone.0000"] and "no teacher captioned" in failures[uncaptioned.clip_id]


def test_the_report_says_what_the_records_say(clean):
    selections = list(read_records(clean / "selection.jsonl", Selection))
    summary = json.loads((clean / "summary.json").read_text())
    wanted = selection_report.report_numbers(selections, TEACHERS).to_dict()
    assert summary["report"] == wanted and summary["clips_scored"] == len(selections) and summary["compiles"] > 0
    report = (clean / "report.md").read_text()
    for teacher in TEACHERS:
        count = sum(s.teacher == teacher for s in selections)
        assert f"| {teacher} | {count} | {100 * count / len(selections):.1f} % |" in report
    above = sum(s.matching_score > 0.43 for s in selections)
    assert f"{above} of {len(selections)}" in report
    with Image.open(clean / "selective_rate.png") as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_a_rerun_reuses_every_score_and_a_changed_caption_rescores_only_its_video(inputs, weights, clean, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    folder, clips, captions, _, _ = inputs
    out = tmp_path / "rerun"
    shutil.copytree(clean, out)
    scored = []
    original = select.SelectStage._select
    monkeypatch.setattr(select.SelectStage, "_select", lambda self, batch: scored.append(batch) or original(self, batch))
    # With people's labels: the same records, and the agreement in the report.
    labels = tmp_path / "labels.jsonl"
    write_jsonl(labels, [{"clip_id": c.clip_id, "teacher": "image"} for c in clips])
    select.main(arguments(inputs, weights, out, "--labels", str(labels)))
    assert scored == [] and (out / "selection.jsonl").read_bytes() == (clean / "selection.jsonl").read_bytes()
    selections = list(read_records(out / "selection.jsonl", Selection))
    agreement = sum(s.teacher == "image" for s in selections) / len(selections)
    assert json.loads((out / "summary.json").read_text())["report"]["agreement"] == pytest.approx(agreement)
    assert f"{100 * agreement:.1f} %" in (out / "report.md").read_text()

    # Another caption for the last clip: only its video is scored again.
    changed = clips[-3]  # the last clip of the second synthetic video
    edited = [Caption(clip_id=c.clip_id, teacher=c.teacher, caption="a tiny dog sits") if
              (c.clip_id, c.teacher) == (changed.clip_id, "video") else c for c in captions]  # fmt: skip
    write_jsonl(folder / "captions_edited.jsonl", edited)
    rerun = arguments(inputs, weights, out)
    rerun[rerun.index("--captions") + 1] = str(folder / "captions_edited.jsonl")
    select.main(rerun)
    assert {clip["clip_id"] for batch in scored for clip, _ in batch} == {c.clip_id for c in clips if c.video_id == changed.video_id}
    before = {s["clip_id"]: s for s in read_jsonl(clean / "selection.jsonl")}
    after = {s["clip_id"]: s for s in read_jsonl(out / "selection.jsonl")}
    assert {k for k in before if before[k] != after[k]} <= {c.clip_id for c in clips if c.video_id == changed.video_id}
    assert after[changed.clip_id]["scores"]["video"] != before[changed.clip_id]["scores"]["video"]


@pytest.mark.slow
def test_a_killed_eight_device_run_resumes_to_the_one_device_records(inputs, weights, clean, tmp_path):
    """Batches split over 8 CPU devices; the run killed after its first video and run again."""
    out = tmp_path / "sharded"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "panda_jax.select", *arguments(inputs, weights, out, "--mesh", "data=8,model=1")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((out / "work" / "select").glob("synth_*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(r"[1-9]\d* of 4 shards already done", result.stdout), result.stdout  # it did resume
    wanted, found = list(read_jsonl(clean / "selection.jsonl")), list(read_jsonl(out / "selection.jsonl"))
    assert [(s["clip_id"], s["teacher"], s["caption"]) for s in found] == [
        (s["clip_id"], s["teacher"], s["caption"]) for s in wanted
    ]
    for one, eight in zip(wanted, found):
        assert eight["scores"] == pytest.approx(one["scores"], abs=2e-6)


def test_a_missing_checkpoint_or_captions_folder_stops_before_any_work(inputs, tmp_path, capsys):
    out = tmp_path / "never"
    for wrong, message in ((["--checkpoint", str(tmp_path / "nowhere")], "no selector checkpoint in"),
                           (["--captions", str(tmp_path)], "no captions; make them with")):  # fmt: skip
        command = arguments(inputs, tmp_path, out)
        if wrong[0] == "--captions":
            command[command.index("--captions") + 1] = wrong[1]
        else:
            command += wrong
        with pytest.raises(SystemExit) as stopped:
            select.main(command)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()

"""`python -m panda_jax.split`: records, failures that do not stop the run, resume, clip files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from panda_jax import split
from panda_jax.data import synthetic
from panda_jax.data.records import read_jsonl, write_jsonl
from panda_jax.video import io


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    records = synthetic.generate_corpus(out, num_videos=3, seed=5, size=96, duration=10.0)
    broken = out / "videos" / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)  # an mp4 header, no movie
    extra = [{"video_id": "broken", "path": "videos/broken.mp4"}, {"video_id": "gone", "path": "videos/gone.mp4"}]
    write_jsonl(out / "with_failures.jsonl", records + extra)
    return out, records


def _run(*args: str) -> int:
    return split.main([*args])


def test_splits_records_failures_and_resumes(corpus, tmp_path, monkeypatch):
    folder, records = corpus
    out = tmp_path / "split"
    assert _run("--videos", str(folder / "with_failures.jsonl"), "--out", str(out), "--detector", "content") == 1

    shots = {r["video_id"]: r for r in read_jsonl(out / "shots.jsonl")}
    assert sorted(shots) == [r["video_id"] for r in records]
    for record in records:
        shot_record = shots[record["video_id"]]
        assert shot_record["detector"] == "content" and shot_record["fps"] == record["fps"]
        assert shot_record["num_frames"] == record["num_frames"]
        spans = shot_record["shots"]
        assert spans[0][0] == 0 and spans[-1][1] == record["num_frames"]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))

    clips = list(read_jsonl(out / "clips.jsonl"))
    assert clips, "no clips"
    for clip in clips:
        assert set(clip) == {"clip_id", "video_id", "start", "end", "start_frame", "end_frame", "shot_count"}
        assert clip["clip_id"].startswith(clip["video_id"] + ".") and len(clip["clip_id"].split(".")[-1]) == 4
        assert clip["end"] - clip["start"] >= 2.0  # the default preset's minimum
        assert clip["start"] == pytest.approx(clip["start_frame"] / 24.0, abs=1e-6)

    failures = {f["video_id"]: f for f in read_jsonl(out / "failures.jsonl")}
    assert sorted(failures) == ["broken", "gone"]
    assert "broken.mp4" in failures["broken"]["error"] and "CorruptVideoError" in failures["broken"]["error"]
    assert "VideoNotFoundError" in failures["gone"]["error"]

    # A second run skips finished videos and retries only the failures.
    calls = []
    original = split.Splitter.split
    monkeypatch.setattr(split.Splitter, "split", lambda self, video: calls.append(video.video_id) or original(self, video))
    assert _run("--videos", str(folder / "with_failures.jsonl"), "--out", str(out), "--detector", "content") == 1
    assert sorted(calls) == ["broken", "gone"]
    assert list(read_jsonl(out / "clips.jsonl")) == clips

    # Other settings are not reused: without stitching every (long-shot-split) shot is a clip.
    calls.clear()
    assert _run("--videos", str(folder / "with_failures.jsonl"), "--out", str(out), "--detector", "content", "--no-stitch") == 1
    assert len(calls) == 5
    unstitched = list(read_jsonl(out / "clips.jsonl"))
    assert len(unstitched) == sum(len(r["shots"]) for r in read_jsonl(out / "shots.jsonl"))


def test_cut_writes_clip_files(corpus, tmp_path):
    folder, records = corpus
    video = folder / records[0]["path"]
    out = tmp_path / "split"
    assert _run(str(video), "--out", str(out), "--detector", "content", "--cut", "reencode") == 0
    clips = list(read_jsonl(out / "clips.jsonl"))
    assert clips and all(c["video_id"] == video.stem for c in clips)
    for clip in clips:
        info = io.probe(out / "clips" / f"{clip['clip_id']}.mp4")
        assert info.num_frames == clip["end_frame"] - clip["start_frame"]


def test_help_and_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "panda_jax.split", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--videos", "--detector", "--preset", "--workers", "--cut", "--no-stitch"):
        assert flag in result.stdout
    with pytest.raises(SystemExit):
        split.main(["--out", "x"])  # no videos
    with pytest.raises(SystemExit):
        split.main(["a.mp4", "--out", "x", "--preset", "nope"])

"""`python -m panda_jax.split`: records, hostile input, stale results, clip files, kills, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from panda_jax import cli, split
from panda_jax.data import synthetic
from panda_jax.records import Clip, Failure, Shots, read_jsonl, read_records, write_jsonl
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


def _run(*args: str | Path) -> int:
    return split.main([str(a) for a in args])


def _failures(out: Path) -> dict[str, Failure]:
    return {f.item_id: f for f in read_records(out / "failures.jsonl", Failure)}


def _counting(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = split.SplitStage.process
    monkeypatch.setattr(split.SplitStage, "process", lambda self, shard, out: calls.append(shard.key) or original(self, shard, out))
    return calls


def test_splits_records_failures_and_resumes(corpus, tmp_path, monkeypatch):
    folder, records = corpus
    out = tmp_path / "split"
    assert _run("--videos", folder / "with_failures.jsonl", "--out", out, "--detector", "content") == 1

    shots = {s.video_id: s for s in read_records(out / "shots.jsonl", Shots)}
    assert sorted(shots) == [r["video_id"] for r in records]
    for record in records:
        shot_record = shots[record["video_id"]]
        assert shot_record.detector == "content" and shot_record.fps == record["fps"]
        assert shot_record.num_frames == shot_record.container_frames == record["num_frames"]
        spans = shot_record.shots
        assert spans[0][0] == 0 and spans[-1][1] == record["num_frames"]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))

    clips = list(read_jsonl(out / "clips.jsonl"))
    assert clips, "no clips"
    for clip in clips:
        assert set(clip) == {"clip_id", "video_id", "start", "end", "start_frame", "end_frame", "shot_count"}
        assert clip["clip_id"].startswith(clip["video_id"] + ".") and len(clip["clip_id"].split(".")[-1]) == 4
        assert clip["end"] - clip["start"] >= 2.0  # the default preset's minimum
        assert clip["start"] == pytest.approx(clip["start_frame"] / 24.0, abs=1e-6)

    failures = _failures(out)
    assert sorted(failures) == ["broken", "gone"]
    assert "broken.mp4" in failures["broken"].error and "CorruptVideoError" in failures["broken"].error
    assert "VideoNotFoundError" in failures["gone"].error and failures["gone"].stage == "split"

    # A second run skips finished videos and retries only the failures, giving the same bytes.
    calls = _counting(monkeypatch)
    before = (out / "clips.jsonl").read_bytes()
    assert _run("--videos", folder / "with_failures.jsonl", "--out", out, "--detector", "content") == 1
    assert sorted(calls) == ["broken", "gone"] and (out / "clips.jsonl").read_bytes() == before

    # Other settings are not reused: without stitching every (long-shot-split) shot is a clip, the clips
    # `shot_clips` makes of the stitched run's shots.
    calls.clear()
    stitched_shots = list(read_records(out / "shots.jsonl", Shots))
    assert _run("--videos", folder / "with_failures.jsonl", "--out", out, "--detector", "content", "--nostitch") == 1
    assert len(calls) == 5
    assert list(read_records(out / "shots.jsonl", Shots)) == stitched_shots
    unstitched = list(read_records(out / "clips.jsonl", Clip))
    assert len(unstitched) > len(clips)
    assert unstitched == [clip for record in stitched_shots for clip in split.shot_clips(record)]


def test_a_changed_threshold_or_file_is_split_again_an_unchanged_one_reused(corpus, tmp_path, monkeypatch):
    folder, records = corpus
    video = tmp_path / "v.mp4"
    shutil.copy(folder / records[0]["path"], video)
    config = tmp_path / "split_config.py"
    config.write_text(Path(cli.config_file("split")).read_text())
    out = tmp_path / "split"
    calls = _counting(monkeypatch)
    args = (video, "--out", out, "--detector", "content", "--config", config)
    assert _run(*args) == 0 and _run(*args) == 0 and calls == ["v"]
    (at_25,) = read_records(out / "shots.jsonl", Shots)
    config.write_text(config.read_text().replace("threshold=25.0", "threshold=90.0"))
    assert _run(*args) == 0 and calls == ["v", "v"]
    (at_90,) = read_records(out / "shots.jsonl", Shots)
    assert len(at_90.shots) < len(at_25.shots)  # few cuts score 90
    shutil.copy(folder / records[1]["path"], video)  # another video under the same name
    assert _run(*args) == 0 and calls == ["v", "v", "v"]


def test_hostile_and_broken_inputs_fail_alone_and_nothing_escapes_the_output(corpus, tmp_path):
    folder, records = corpus
    good = records[0]
    no_suffix = tmp_path / "inputs" / "nosuffix"
    no_suffix.parent.mkdir()
    shutil.copy(folder / good["path"], no_suffix)
    lines = [
        {"video_id": good["video_id"], "path": str(folder / good["path"])},
        {"video_id": "../../victim", "path": str(folder / good["path"])},
        {"video_id": "x" * 300, "path": str(folder / good["path"])},
        {"video_id": "nopath"},
        {"video_id": "nosuffix", "path": str(no_suffix)},
        {"video_id": good["video_id"], "path": str(no_suffix)},  # a repeated id
    ]
    videos = tmp_path / "inputs" / "videos.jsonl"
    videos.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    out = tmp_path / "a" / "b" / "split"
    assert _run("--videos", videos, "--out", out, "--detector", "content", "--cut", "copy") == 1

    clips = [Clip.from_dict(c) for c in read_jsonl(out / "clips.jsonl")]
    assert {c.video_id for c in clips} == {good["video_id"], "nosuffix"}
    assert all(c.file.endswith(".mkv") for c in clips if c.video_id == "nosuffix")  # copied into Matroska
    for clip in clips:
        assert io.probe(out / clip.file).num_frames >= clip.end_frame - clip.start_frame - 1
        assert clip.file_start <= clip.start
    errors = sorted(f.error for f in read_records(out / "failures.jsonl", Failure))
    assert len(errors) == 5
    assert sum("is not a valid id" in e for e in errors) == 2 and sum("needs 'path'" in e for e in errors) == 1
    assert sum("not valid JSON" in e for e in errors) == 1 and sum("is used already" in e for e in errors) == 1
    assert not (tmp_path / "victim.jsonl").exists() and not list(tmp_path.glob("a/*victim*"))

    # The source goes away between runs: its shard is made again, fails, and the run goes on.
    no_suffix.unlink()
    assert _run("--videos", videos, "--out", out, "--detector", "content", "--cut", "copy") == 1
    assert "VideoNotFoundError" in _failures(out)["nosuffix"].error
    assert {c["video_id"] for c in read_jsonl(out / "clips.jsonl")} == {good["video_id"]}


def test_clip_files_follow_the_settings(corpus, tmp_path):
    folder, records = corpus
    video = folder / records[1]["path"]
    out = tmp_path / "split"

    def files_match_records() -> list[Clip]:
        clips = list(read_records(out / "clips.jsonl", Clip))
        assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(Path(c.file).name for c in clips)
        for clip in clips:
            assert io.probe(out / clip.file).num_frames == clip.end_frame - clip.start_frame
            assert clip.file_start == clip.start
        return clips

    assert _run(video, "--out", out, "--detector", "content", "--cut", "reencode") == 0
    default = files_match_records()
    assert _run(video, "--out", out, "--detector", "content", "--cut", "reencode", "--preset", "panda70m") == 0
    trimmed = files_match_records()  # 10 % trimmed at each end: every file was cut again
    assert [c.start_frame for c in trimmed] != [c.start_frame for c in default]


def _truncated_mp4(path: Path, frames: int = 60) -> None:
    """An mp4 whose index (moov, in front) promises `frames` frames, with most of the data cut off."""
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "30"})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            image = rng.integers(0, 255, (64, 64, 3), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 5])


def test_a_truncated_file_is_warned_about_and_recorded(tmp_path, caplog, capsys):
    video = tmp_path / "truncated.mp4"
    _truncated_mp4(video)
    assert io.probe(video).num_frames == 60
    assert _run(video, "--out", tmp_path / "split", "--detector", "content", "--nostitch") == 0
    (shots,) = read_records(tmp_path / "split" / "shots.jsonl", Shots)
    assert shots.container_frames == 60 and 0 < shots.num_frames < 40 and shots.shots[-1][1] == shots.num_frames
    assert "the container says 60 frames" in caplog.text
    assert "1 videos decoded another number of frames" in capsys.readouterr().out


def _split_command(videos: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "panda_jax.split", "--videos", str(videos), "--out", str(out),
            "--detector", "content", "--workers", str(workers)]


def test_a_run_killed_anywhere_then_rerun_gives_the_bytes_of_an_uninterrupted_run(corpus, tmp_path):
    folder, _ = corpus
    videos = folder / "with_failures.jsonl"
    clean = tmp_path / "clean"
    subprocess.run(_split_command(videos, clean, 2), capture_output=True, check=False, timeout=300)
    expected = {name: (clean / name).read_bytes() for name in ("shots.jsonl", "clips.jsonl", "failures.jsonl")}
    assert expected["clips.jsonl"] and expected["failures.jsonl"]

    for finished in (0, 1, 3):  # kill once this many videos are saved (0: while workers start)
        out = tmp_path / f"killed_{finished}"
        process = subprocess.Popen(_split_command(videos, out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(list((out / "work" / "split").glob("*.jsonl"))) < finished and time.monotonic() < deadline:
            time.sleep(0.01)
        if not finished:
            time.sleep(1.0)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        subprocess.run(_split_command(videos, out, 1), capture_output=True, check=False, timeout=300)
        for name, content in expected.items():
            assert (out / name).read_bytes() == content, (finished, name)


def test_help_and_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "panda_jax.split", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--videos", "--detector", "--preset", "--workers", "--cut", "--[no]stitch", "--[no]distributed"):
        assert flag in result.stdout
    with pytest.raises(SystemExit):
        split.main(["--out", "x"])  # no videos
    with pytest.raises(SystemExit):
        split.main(["a.mp4", "--out", "x", "--preset", "nope"])

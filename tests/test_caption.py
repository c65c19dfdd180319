"""`python -m panda_jax.caption` with the tiny teachers: records, prompts, resume, kills, failures,
sharding over 8 devices, two processes of one distributed run, external captions."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from panda_jax import caption
from panda_jax.records import Caption, Clip, Failure, read_jsonl, read_records, write_jsonl
from panda_jax.teachers import prompts

# One of each input: a frame, 4 frames with side text, side text alone. (`image_side_text` is
# InstructBLIP, the video teacher's architecture on one frame.)
TEACHERS = ("image", "text", "video")


@pytest.fixture(scope="module")
def inputs(clip_corpus):
    return clip_corpus


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_teachers")


def arguments(inputs, weights, out, *extra, config: str = "teachers:tiny") -> list[str]:
    folder = inputs[0]
    return ["--clips", str(folder / "clips.jsonl"), "--videos", str(folder / "videos.jsonl"), "--out", str(out),
            f"--config={config}", f"--config.weights_dir={weights}", "--batch_size", "4",
            "--config.clips_per_shard=3", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def clean(inputs, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("caption_clean")
    assert caption.main(arguments(inputs, weights, out, "--teachers", ",".join(TEACHERS))) == 1  # two clips fail
    return out


def good_clips(inputs) -> list[Clip]:
    return [c for c in inputs[2] if c.video_id not in ("broken", "gone")]


def test_every_clip_gets_one_caption_per_teacher_and_failures_say_why(inputs, clean):
    found = list(read_records(clean / "captions.jsonl", Caption))
    assert sorted((c.clip_id, c.teacher) for c in found) == sorted((c.clip_id, t) for c in good_clips(inputs) for t in TEACHERS)
    assert all(c.caption for c in found)
    versions = {(c.teacher, c.prompt_version) for c in found}
    assert versions == {("image", prompts.VERSION_WITHOUT_SIDE_TEXT), ("text", prompts.VERSION_WITH_SIDE_TEXT),
                        ("video", prompts.VERSION_WITH_SIDE_TEXT)}  # fmt: skip
    failures = {f.item_id: f for f in read_records(clean / "failures.jsonl", Failure)}
    assert set(failures) == {"broken.0000", "gone.0000"}
    assert "VideoNotFoundError" in failures["gone.0000"].error and failures["broken.0000"].error
    summary = json.loads((clean / "summary.json").read_text())
    assert summary["clips_captioned"] == len(good_clips(inputs)) and summary["compiles"] > 0
    assert summary["clips_per_second"] > 0 and summary["tokens_per_second"] > 0


def test_a_second_run_makes_nothing_new(inputs, weights, clean, monkeypatch):
    before = {name: (clean / name).read_bytes() for name in ("captions.jsonl", "failures.jsonl")}
    calls = []
    original = caption.CaptionStage._caption
    monkeypatch.setattr(caption.CaptionStage, "_caption", lambda self, batch: calls.append(batch) or original(self, batch))
    caption.main(arguments(inputs, weights, clean, "--teachers", ",".join(TEACHERS)))
    assert {name: (clean / name).read_bytes() for name in before} == before
    # Only the shard with the failed videos is tried again; it gives the same records.
    assert len(calls) <= 1


def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_one(inputs, weights, clean, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "panda_jax.caption", *arguments(inputs, weights, out, "--teachers", "text")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list((out / "work" / "caption").glob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run(command, capture_output=True, check=False, timeout=300)
    wanted = [c for c in read_jsonl(clean / "captions.jsonl") if c["teacher"] == "text"]
    assert list(read_jsonl(out / "captions.jsonl")) == wanted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_eight_devices_and_two_processes_give_the_single_device_captions(inputs, weights, clean, tmp_path):
    """The batch split over a 4×2 mesh of 8 CPU devices; then two processes joined by
    jax.distributed, each with its share of the shards; both give the one-device records."""
    wanted = [c for c in read_jsonl(clean / "captions.jsonl") if c["teacher"] == "image"]
    eight = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    sharded = tmp_path / "sharded"
    command = [sys.executable, "-m", "panda_jax.caption",
               *arguments(inputs, weights, sharded, "--teachers", "image", "--mesh", "data=4,model=2")]  # fmt: skip
    result = subprocess.run(command, env=eight, capture_output=True, text=True, timeout=400)
    assert "Traceback" not in result.stderr, result.stderr
    assert list(read_jsonl(sharded / "captions.jsonl")) == wanted

    joined = tmp_path / "joined"
    port = _free_port()
    wanted = [c for c in read_jsonl(clean / "captions.jsonl") if c["teacher"] == "text"]
    command = [sys.executable, "-m", "panda_jax.caption", *arguments(inputs, weights, joined, "--teachers", "text"),
               "--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2"]  # fmt: skip
    one = dict(os.environ, JAX_PLATFORMS="cpu")
    processes = [subprocess.Popen([*command, f"--process_id={i}"], env=one, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for i in range(2)]  # fmt: skip
    logs = [p.communicate(timeout=400)[0] for p in processes]
    assert all("Traceback" not in log for log in logs), logs
    assert list(read_jsonl(joined / "captions.jsonl")) == wanted
    shares = [int(re.search(r"captioned (\d+) clips", log).group(1)) for log in logs]
    assert all(shares) and sum(shares) == len(good_clips(inputs)), logs


def test_an_external_teacher_is_checked_against_the_clip_list(inputs, weights, tmp_path, capsys):
    clips = good_clips(inputs)
    external = tmp_path / "vllm.jsonl"

    def run_with(lines: list[dict]) -> int:
        write_jsonl(external, lines)
        config = tmp_path / "teachers.py"
        config.write_text(
            "from panda_jax.configs import teachers\n\n"
            "def get_config():\n"
            "    config = teachers.get_config('tiny')\n"
            f"    config.teachers = dict(vllm=teachers.teacher('external', {str(external)!r}, 0, False))\n"
            "    return config\n"
        )
        try:
            return caption.main(arguments(inputs, weights, tmp_path / "out", config=str(config)))
        except SystemExit as stop:
            return stop.code

    assert run_with([{"clip_id": "nowhere.0000", "caption": "a cat"}]) == 2
    assert "not in the clip list: nowhere.0000" in capsys.readouterr().err
    assert run_with([{"clip_id": clips[0].clip_id}]) == 2
    assert "needs 'caption'" in capsys.readouterr().err
    assert run_with([{"clip_id": c.clip_id, "caption": f"caption {i}"} for i, c in enumerate(clips)]) == 1  # broken videos
    found = {c.clip_id: c.caption for c in read_records(tmp_path / "out" / "captions.jsonl", Caption)}
    assert found == {c.clip_id: f"caption {i}" for i, c in enumerate(clips)}


def test_a_missing_or_wrong_checkpoint_stops_naming_the_folder(inputs, weights, tmp_path, capsys):
    def run() -> int:
        try:
            return caption.main(arguments(inputs, tmp_path, tmp_path / "out", "--teachers", "minigpt4", config="teachers:panda70m"))
        except SystemExit as stop:
            return stop.code

    assert run() == 2
    assert f"teacher minigpt4 (MiniGPT-4): no checkpoint folder {tmp_path / 'instructblip-vicuna-7b'}" in capsys.readouterr().err
    (tmp_path / "instructblip-vicuna-7b").mkdir()
    (tmp_path / "instructblip-vicuna-7b" / "config.json").write_text('{"model_type": "clip", "architectures": ["CLIPModel"]}')
    assert run() == 2
    assert "teacher minigpt4: " in capsys.readouterr().err

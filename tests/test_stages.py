"""The shared shard runner: fingerprints, isolation (dead workers too), merging, shares, files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from panda_jax import stages
from panda_jax.files import atomic_directory, atomic_output, remove_orphans
from panda_jax.records import Caption, Failure, Problem, read_jsonl


class EchoStage:
    """Captions each text file with its content; "raise" raises, "die" kills its worker."""

    name = "echo"
    version = 1
    outputs = (Caption.KIND,)

    def __init__(self, suffix: str = "", write_files: bool = False):
        self.suffix, self.write_files = suffix, write_files
        self.processed: list[str] = []

    def settings(self) -> dict:
        return {"suffix": self.suffix, "write_files": self.write_files}

    def setup(self) -> None:
        pass

    def process(self, shard: stages.Shard, out_dir: Path) -> stages.ShardResult:
        self.processed.append(shard.key)
        text = Path(shard.sources[0]).read_text()
        if text == "raise":
            raise ValueError("cannot echo this")
        if text == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        files = ()
        if self.write_files:
            with atomic_output(out_dir / "files" / f"{shard.key}.txt") as temporary:
                temporary.write_text(text)
            files = (f"files/{shard.key}.txt",)
        caption = Caption(clip_id=f"{shard.key}.0000", teacher="echo", caption=text + self.suffix)
        return stages.ShardResult(records={Caption.KIND: [caption]}, files=files)


def _shards(folder: Path, texts: dict[str, str]) -> list[stages.Shard]:
    shards = []
    for key, text in texts.items():
        path = folder / f"{key}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        shards.append(stages.Shard(key=key, payload={}, sources=(str(path),)))
    return shards


def _captions(out: Path) -> dict[str, str]:
    return {r["clip_id"]: r["caption"] for r in read_jsonl(out / "captions.jsonl")}


def test_fingerprints_reuse_what_is_unchanged_and_redo_the_rest(tmp_path):
    out = tmp_path / "out"
    stage = EchoStage()
    summary = stages.run(stage, _shards(tmp_path, {"a": "one", "b": "two"}), out, share=(0, 1))
    assert (summary.done, summary.reused, summary.failed) == (2, 0, 0)
    assert _captions(out) == {"a.0000": "one", "b.0000": "two"}

    stage = EchoStage()
    stages.run(stage, _shards(tmp_path, {"a": "one", "b": "TWO!"}), out, share=(0, 1))  # b's file changed
    assert stage.processed == ["b"] and _captions(out) == {"a.0000": "one", "b.0000": "TWO!"}

    stage = EchoStage(suffix="?")  # a changed setting redoes everything
    stages.run(stage, _shards(tmp_path, {"a": "one", "b": "TWO!"}), out, share=(0, 1))
    assert stage.processed == ["a", "b"] and _captions(out) == {"a.0000": "one?", "b.0000": "TWO!?"}


def test_one_failure_does_not_stop_the_run_and_is_retried(tmp_path):
    out = tmp_path / "out"
    shards = _shards(tmp_path, {"a": "one", "bad": "raise", "c": "three"})
    problem = Problem("videos.jsonl:3", "../../etc/passwd", "video_id '../../etc/passwd' is not a valid id")
    summary = stages.run(EchoStage(), shards, out, input_problems=[problem], share=(0, 1))
    assert (summary.done, summary.failed) == (3, 1)
    assert _captions(out) == {"a.0000": "one", "c.0000": "three"}
    failures = [Failure.from_dict(r) for r in read_jsonl(out / "failures.jsonl")]
    assert [(f.item_id, f.source) for f in failures] == [("../../etc/passwd", "videos.jsonl:3"), ("bad", shards[1].sources[0])]
    assert "ValueError: cannot echo this" in failures[1].error

    stage = EchoStage()
    stages.run(stage, _shards(tmp_path, {"a": "one", "bad": "fixed", "c": "three"}), out, share=(0, 1))
    assert stage.processed == ["bad"] and not list(read_jsonl(out / "failures.jsonl"))


def test_a_worker_that_dies_fails_its_shard_only(tmp_path):
    out = tmp_path / "out"
    texts = {"a": "one", "dead": "die", "c": "three", "d": "four"}
    summary = stages.run(EchoStage(), _shards(tmp_path, texts), out, workers=2, share=(0, 1))
    assert (summary.done, summary.failed) == (4, 1)
    assert _captions(out) == {"a.0000": "one", "c.0000": "three", "d.0000": "four"}
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["item_id"] == "dead" and "SIGKILL" in failure["error"]
    # A rerun tries the dead one again, and dies again without harm.
    summary = stages.run(EchoStage(), _shards(tmp_path, texts), out, workers=2, share=(0, 1))
    assert (summary.reused, summary.done, summary.failed) == (3, 1, 1)


def test_runs_over_different_inputs_add_up_and_other_settings_are_left_out(tmp_path):
    out = tmp_path / "out"
    stages.run(EchoStage(), _shards(tmp_path, {"a": "one"}), out, share=(0, 1))
    stages.run(EchoStage(), _shards(tmp_path, {"b": "two"}), out, share=(0, 1))
    assert _captions(out) == {"a.0000": "one", "b.0000": "two"}
    summary = stages.run(EchoStage(suffix="!"), _shards(tmp_path, {"b": "two"}), out, share=(0, 1))
    assert summary.stale == 1 and _captions(out) == {"b.0000": "two!"}


def test_each_process_takes_its_share_and_the_first_merges(tmp_path):
    out = tmp_path / "out"
    shards = _shards(tmp_path, {k: k * 2 for k in "abcde"})
    second = EchoStage()
    stages.run(second, shards, out, share=(1, 2))
    assert second.processed == ["b", "d"] and not (out / "captions.jsonl").exists()
    first = EchoStage()
    stages.run(first, shards, out, share=(0, 2))
    assert first.processed == ["a", "c", "e"] and len(_captions(out)) == 5


def test_files_a_shard_made_are_checked_and_stale_ones_removed(tmp_path):
    out = tmp_path / "out"
    stages.run(EchoStage(write_files=True), _shards(tmp_path, {"a": "one", "b": "two"}), out, share=(0, 1))
    (out / "files" / "a.txt").write_text("tampered")  # another size: a is made again
    stage = EchoStage(write_files=True)
    stages.run(stage, _shards(tmp_path, {"a": "one", "b": "two"}), out, share=(0, 1))
    assert stage.processed == ["a"] and (out / "files" / "a.txt").read_text() == "one"
    stages.run(EchoStage(), _shards(tmp_path, {"a": "one"}), out, share=(0, 1))  # no files any more
    assert sorted(p.name for p in (out / "files").iterdir()) == ["b.txt"]


def test_shard_keys_are_ids(tmp_path):
    shard = stages.Shard(key="../escape", payload={}, sources=())
    with pytest.raises(ValueError, match="not a valid id"):
        stages.run(EchoStage(), [shard], tmp_path / "out", share=(0, 1))
    assert not (tmp_path / "escape.jsonl").exists()


def test_outputs_get_the_umask_unique_temporaries_and_orphans_go(tmp_path):
    for umask, mode in ((0o077, 0o600), (0o022, 0o644)):
        code = f"import os; os.umask({umask}); from panda_jax.records import write_jsonl; write_jsonl('{umask}.jsonl', [{{}}])"
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
        assert stat.S_IMODE((tmp_path / f"{umask}.jsonl").stat().st_mode) == mode

    with atomic_output(tmp_path / "x.mp4") as first, atomic_output(tmp_path / "x.mp4") as second:
        assert first != second and first.suffix == second.suffix == ".mp4"  # muxers go by the suffix
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "x.mp4").read_text() == "1"  # the last to finish wins, whole

    dead = tmp_path / first.name.replace(f"-{os.getpid()}.", "-999999999.")
    dead.write_text("left by a killed run")
    live = tmp_path / first.name
    live.write_text("being written by this process")
    assert remove_orphans(tmp_path) == 1
    assert live.exists() and not dead.exists()


def test_atomic_directory_keeps_the_first_folder_whole_and_orphans_go(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as first, atomic_directory(target) as second:
        (first / "weights").write_text("1")
        (second / "weights").write_text("2")
        assert not target.exists()
    assert (target / "weights").read_text() == "2"  # the first to finish is kept
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "failed") as folder:
        (folder / "weights").write_text("half")
        raise RuntimeError
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"]

    dead = tmp_path / first.name.replace(f"-{os.getpid()}.", "-999999999.")
    (dead / "sub").mkdir(parents=True)
    assert remove_orphans(tmp_path) == 1
    assert not dead.exists() and target.exists()

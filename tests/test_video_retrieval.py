"""The caption selector's models: a one-frame video scores as the image model does, the video layers
start as the identity and then see frame order, the CLIP4Clip variant, and batched scoring."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from panda_jax.models import CheckpointError, blip2_retrieval, checkpoint, clip, video_retrieval
from panda_jax.models.selector import load_selector
from panda_jax.teachers import tiny

CAPTIONS = ["a red circle moves left", "a blue square on a green background", "a man walks"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.write_tiny_retrieval(tmp_path_factory.mktemp("selector") / "blip2_retrieval")


@pytest.fixture(scope="module")
def text(folder):
    tokens = checkpoint.load_tokenizer(folder)(CAPTIONS, padding="max_length", max_length=16, return_tensors="np")
    return tokens["input_ids"].astype(np.int32), tokens["attention_mask"].astype(np.int32)


def pixels(clips: int, frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(clips, frames, 3, 28, 28)).astype(np.float32)


@nnx.jit
def blip2_image_scores(model, pixel_values, input_ids, attention_mask):
    similarity = model.itc(pixel_values, input_ids, attention_mask)[0]
    return similarity, jax.nn.softmax(model.itm_scores(pixel_values, input_ids, attention_mask))[:, 1]


@nnx.jit
def image_model_on_frames(image, frames, input_ids, attention_mask):
    """What an untrained video model should score, from the image model alone: ITC of the projected mean of
    the frames' query outputs, and ITM over all frames' patch features side by side."""
    features = image.image_features(frames)
    queries = image.qformer(image.query_tokens(len(frames)), features)
    embeds = blip2_retrieval.l2_normalize(image.vision_projection(queries.mean(axis=0, keepdims=True)))
    similarity = blip2_retrieval.itc_similarity(embeds, image.encode_text(input_ids, attention_mask))[0]
    side_by_side = features.reshape(1, -1, features.shape[-1])
    tokens = jnp.broadcast_to(side_by_side, (len(input_ids), *side_by_side.shape[1:]))
    matching = image.itm_scores_from_features(tokens, input_ids, attention_mask)
    return similarity, jax.nn.softmax(matching)[:, 1]


@nnx.jit
def video_scores(model, pixel_values, input_ids, attention_mask, video_index):
    return model.score(pixel_values, input_ids, attention_mask, video_index)


def test_a_one_frame_video_scores_as_the_blip2_image_model(folder, text):
    video = video_retrieval.load(folder, video=video_retrieval.VideoConfig(max_frames=4))
    image = blip2_retrieval.load(folder)
    frames = pixels(3, 1)
    similarity, probability = video_scores(video, frames, *text, np.arange(3))
    image_similarity, image_probability = blip2_image_scores(image, frames[:, 0], *text)
    np.testing.assert_allclose(similarity, np.diag(image_similarity), atol=1e-6)
    np.testing.assert_allclose(probability, image_probability, atol=1e-6)


def test_the_video_layers_start_as_the_identity_then_see_frame_order(folder, text):
    model = video_retrieval.load(folder, video=video_retrieval.VideoConfig(max_frames=4))
    frames = pixels(1, 4, seed=1)
    index = np.zeros(3, np.int32)
    # Untrained: VTC reads the image model's projection of the mean of the frames' query outputs, and VTM
    # reads every frame's patch features as BLIP-2's ITM reads one image's; frame order does not matter.
    similarity, probability = video_scores(model, frames, *text, index)
    expected_similarity, expected_probability = image_model_on_frames(model.image_model, frames[0], *text)
    np.testing.assert_allclose(similarity, expected_similarity, atol=1e-5)
    np.testing.assert_allclose(probability, expected_probability, atol=1e-6)
    reversed_scores = video_scores(model, frames[:, ::-1], *text, index)
    np.testing.assert_allclose(similarity, reversed_scores[0], atol=1e-6)
    # Trained frame positions and temporal layers make the order matter; each frame's patch tokens
    # carry its position.
    rng = np.random.default_rng(2)
    layer = model.temporal_layers[0]
    for variable in (model.frame_position, model.token_frame_position, layer.self_attn.projection.kernel,
                     layer.mlp.fc2.kernel):  # fmt: skip
        variable[...] = rng.normal(0, 0.5, variable.shape).astype(np.float32)
    embeds = nnx.jit(lambda m, x: m.encode_video(x).embeds)
    assert np.abs(embeds(model, frames) - embeds(model, frames[:, ::-1])).max() > 1e-4  # float32 noise: 1e-7
    tokens = nnx.jit(lambda m, x: m.encode_video(x).tokens)(model, frames)[0].reshape(4, -1, 32)
    features = nnx.jit(lambda m, x: m.image_features(x))(model.image_model, frames[0])
    np.testing.assert_allclose(tokens - features, np.broadcast_to(model.token_frame_position[...][:, None], tokens.shape),
                               atol=1e-5)  # fmt: skip


@nnx.jit
def clip_reference(image, frames, input_ids, attention_mask):
    """CLIP's own cosines of each clip's first frame with its text, and of the mean of each clip's unit frame
    embeddings with it."""
    clips, count = frames.shape[:2]
    logits_per_image, _ = image(frames[:, 0], input_ids, attention_mask)
    first = jnp.diag(logits_per_image) / jnp.exp(image.logit_scale[...])
    embeds = image.encode_image(frames.reshape(clips * count, *frames.shape[2:])).reshape(clips, count, -1)
    mean = (embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True)).mean(axis=1)
    text = image.encode_text(input_ids, attention_mask)
    return first, jnp.sum(mean * text, -1) / jnp.linalg.norm(mean, axis=-1) / jnp.linalg.norm(text, axis=-1)


def test_the_clip4clip_variant_scores_one_frame_as_clip_and_averages_frames():
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = clip.CLIPConfig.from_hf({
        "text_config": tower | {"vocab_size": 64, "max_position_embeddings": 16, "eos_token_id": 3},
        "vision_config": tower | {"image_size": 28, "patch_size": 14}, "projection_dim": 8,
    })  # fmt: skip
    image = clip.CLIPModel(config, rngs=nnx.Rngs(0))
    model = video_retrieval.ClipVideoRetrieval(image, rngs=nnx.Rngs(0))
    ids = np.asarray([[1, 5, 9, 3], [1, 7, 3, 0]], np.int32)
    mask = (np.arange(4) < np.asarray([[4], [3]])).astype(np.int32)
    frames = pixels(2, 3)
    one_frame, frame_mean = clip_reference(image, frames, ids, mask)
    similarity, probability = video_scores(model, frames[:, :1], ids, mask, np.arange(2))
    np.testing.assert_allclose(similarity, one_frame, atol=1e-6)
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-(10.0 * similarity - 2.0))), atol=1e-6)
    np.testing.assert_allclose(video_scores(model, frames, ids, mask, np.arange(2))[0], frame_mean, atol=1e-6)


def test_another_architecture_is_refused_before_any_weight(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Blip2ForConditionalGeneration"],
                                                      "model_type": "blip-2"}))  # fmt: skip
    with pytest.raises(CheckpointError, match="Blip2ForConditionalGeneration"):
        video_retrieval.load(tmp_path)


def test_the_selector_scores_each_clip_alone_whatever_the_batch(folder):
    selector = load_selector(folder, video=video_retrieval.VideoConfig(max_frames=4), max_clips=4)
    frames = np.random.default_rng(4).integers(0, 255, (3, 4, 28, 28, 3), dtype=np.uint8)
    candidates = [CAPTIONS, CAPTIONS[:1], CAPTIONS[1:]]
    # 3 clips and 6 captions, padded to 4 and 8: each clip's scores are its own, wherever it sits.
    scores = selector.score(frames, candidates)
    assert [len(clip) for clip in scores] == [3, 1, 2]
    assert all(0.0 <= probability <= 1.0 for clip in scores for _, probability in clip)
    backwards = selector.score(frames[::-1], candidates[::-1])[::-1]
    np.testing.assert_allclose(np.concatenate(scores), np.concatenate(backwards), atol=1e-6)
    assert scores[0][1] != scores[0][0]  # different captions, different scores


def test_a_saved_selector_loads_with_its_video_layers(folder, text, tmp_path):
    model = video_retrieval.load(folder, video=video_retrieval.VideoConfig(max_frames=4, temporal_layers=1))
    rng = np.random.default_rng(5)
    for _, variable in nnx.to_flat_state(nnx.state(model, video_retrieval.VIDEO_LAYERS)):  # as training moves them
        variable[...] = variable[...] + rng.normal(0, 0.1, variable.shape).astype(np.float32)
    saved = video_retrieval.save(model, tmp_path / "selector", folder)
    # Its VideoConfig travels with it, whatever the caller asks for.
    again = video_retrieval.load(saved, video=video_retrieval.VideoConfig(max_frames=12))
    assert again.video == model.video
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(again, nnx.Param)),
                 nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # fmt: skip
    assert checkpoint.load_tokenizer(saved)(CAPTIONS[:1])["input_ids"] == checkpoint.load_tokenizer(folder)(CAPTIONS[:1])["input_ids"]

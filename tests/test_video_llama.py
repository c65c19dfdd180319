"""Video-LLaMA (BLIP-2 on every frame, then a video Q-Former): what its language model is shown, checked against BLIP-2
(which tests/test_blip2.py holds to transformers), and the motion foundation it is built on."""

from __future__ import annotations

import json

import jax.numpy as jnp
from flax import nnx
import numpy as np
import pytest

from panda_jax import cli, motion
from panda_jax.models import blip2, captioner, checkpoint, video_llama
from panda_jax.models.generation import GenerationConfig
from panda_jax.teachers import tiny

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny Video-LLaMA teacher, with appearance and motion tokens, its layers drawn at LeCun's scale as a
    captioner's training starts (at 0.02, attention is so near uniform that the frames' order hardly shows)."""
    path = tiny.write_tiny_checkpoint("video_llama", tmp_path_factory.mktemp("video_llama") / "teacher")
    config = json.loads((path / checkpoint.CONFIG_NAME).read_text())
    config["video_config"] |= {"appearance_tokens": True, "motion_tokens": True}
    (path / checkpoint.CONFIG_NAME).write_text(json.dumps(config))
    parsed = video_llama.VideoLlamaConfig.from_hf(config, set())
    model = checkpoint.abstract(lambda: video_llama.VideoLlama(parsed, rngs=nnx.Rngs(0)))
    head = "language_model.lm_head.weight"  # only the vocabulary's words: captions stay words of tiny.WORDS
    tensors = tiny.random_weights(model, video_llama.video_llama_slots(model), 0, fan_in=True)
    tensors[head] = checkpoint.read_state_dict(path / checkpoint.WEIGHTS_NAME)[head]
    scaled = checkpoint.save(path.with_name("scaled"), config, tensors)
    checkpoint.copy_beside(path, scaled)
    return scaled


def clip(frames: int) -> np.ndarray:
    return RNG.normal(size=(2, frames, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)).astype(np.float32)


def test_a_still_clip_shows_blip2s_visual_tokens_of_its_frame_then_the_video_tokens(folder):
    model = video_llama.load(folder)
    config = model.config
    assert model.num_placeholders == config.num_query_tokens + config.num_video_query_tokens
    image = clip(1)[:, 0]
    still = jnp.repeat(jnp.asarray(image)[:, None], 3, axis=1)
    tokens = np.asarray(model.visual_tokens(still))
    assert tokens.shape == (2, model.num_placeholders, config.text.hidden_size)
    np.testing.assert_allclose(tokens[:, : config.num_query_tokens], blip2.Blip2.visual_tokens(model, image),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_the_video_tokens_follow_the_frames_order_and_the_appearance_tokens_do_not(folder):
    model = video_llama.load(folder)
    frames = clip(4)
    forward, backward = (np.asarray(model.visual_tokens(jnp.asarray(x))) for x in (frames, frames[:, ::-1]))
    queries = model.config.num_query_tokens
    np.testing.assert_allclose(forward[:, :queries], backward[:, :queries], rtol=1e-5, atol=1e-5)
    assert np.abs(forward[:, queries:] - backward[:, queries:]).max() > 1e-3


def test_it_captions_clips_of_any_length_up_to_its_frame_positions(folder):
    reader = captioner.load_captioner(folder)
    assert isinstance(reader, captioner.Blip2Captioner) and reader.frames is None
    settings = GenerationConfig(max_new_tokens=5, num_beams=1)
    for frames in (1, 3):
        clips = RNG.integers(0, 256, (2, frames, 40, 40, 3), np.uint8)
        captions = reader.caption(clips, ["", "a prompt"], settings)
        assert all(len(caption.split()) == 5 and set(caption.split()) <= set(tiny.WORDS) for caption in captions)
    with pytest.raises(ValueError, match="frame positions for 8"):
        reader.caption(RNG.integers(0, 256, (1, 9, 40, 40, 3), np.uint8), [""], settings)
    model = reader.model
    with pytest.raises(ValueError, match=f"must hold {model.num_placeholders} placeholder"):
        model.generate(clip(2), np.full((2, 3), model.config.image_token_index), generation_config=settings)


def test_a_config_without_the_placeholder_id_is_refused(folder):
    config = json.loads((folder / checkpoint.CONFIG_NAME).read_text())
    del config["video_token_index"]
    with pytest.raises(ValueError, match="video_token_index"):
        video_llama.VideoLlamaConfig.from_hf(config, set())


@pytest.mark.heavy
@pytest.mark.parametrize("motion_tokens, at_least, at_most", [(False, 0.0, 0.3), (True, 0.6, 1.0)])
def test_the_video_q_former_learns_the_action_with_motion_tokens_only(tmp_path, motion_tokens, at_least, at_most):
    """On the vision foundation (frozen), told the action directly for 300 steps: with motion tokens the video
    Q-Former reads it (0.77 on seed 0's foundations); without, it stays near chance (1/7; 0.16)."""
    from panda_jax import foundations

    path = foundations.ensure(cli.load_config("foundations"))
    config = cli.load_config("foundations").motion
    config.update(steps=300, eval_every=300)
    config.video.motion_tokens = motion_tokens
    report = motion.pretrain_motion(config, path / foundations.VISION, tmp_path / "motion")
    assert at_least <= report["held_out"]["action"] <= at_most, report

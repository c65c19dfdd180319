"""Captioners trained from scratch (`captioner` task): the word tokenizer, a tiny captioner that learns its clips and,
exported, captions them through the caption stage's interface, and the folder as transformers reads it."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from panda_jax import cli, tasks
from panda_jax.data.pipeline import make_dataset
from panda_jax.models import captioner, checkpoint, sharding
from panda_jax.models.generation import GenerationConfig
from panda_jax.models.word_tokenizer import save_word_tokenizer, train_word_tokenizer

CAPTIONS = [
    "A large blue diamond stays still in front of a cyan-to-red gradient background.",
    "On a black and navy checkered background, a pink cross stays still beside a white diamond.",
    'Please faithfully summarize the video (or image) in one sentence. "Quoted", [listed] and #1!',
]


def test_the_word_tokenizer_is_deterministic_and_gives_back_the_words(tmp_path):
    tokenizer = train_word_tokenizer(CAPTIONS, ["<image>"])
    assert tokenizer.get_vocab() == train_word_tokenizer(CAPTIONS[::-1], ["<image>"]).get_vocab()
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<unk>", "<s>", "</s>", "<image>"]) == [0, 1, 2, 3, 4]
    save_word_tokenizer(tokenizer, tmp_path / "saved")
    loaded = checkpoint.load_tokenizer(tmp_path / "saved")
    for caption in CAPTIONS:
        ids = loaded(caption)["input_ids"]
        assert ids == tokenizer(caption)["input_ids"] and ids[0] == loaded.bos_token_id
        assert loaded.unk_token_id not in ids
        assert loaded.decode(ids, skip_special_tokens=True) == " ".join(caption.lower().split())
    words = loaded("a zebra diamond", add_special_tokens=False)["input_ids"]
    assert words[1] == loaded.unk_token_id and len(words) == 3
    assert loaded.decode(loaded("<image><image> a diamond")["input_ids"]) == "<s><image><image> a diamond"


def test_unknown_variants_and_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="tiny_video"):
        cli.load_config("captioner:huge")
    config = cli.load_config("captioner:tiny_video")
    config.captioner.language = "opt"
    with pytest.raises(ValueError, match="captioner.language is llama"):
        tasks.captioner_task(config, None)
    config = cli.load_config("captioner:tiny_text")
    config.captioner.side_text = False
    with pytest.raises(ValueError, match="side text"):
        tasks.captioner_task(config, None)


def distinct_clips(config, text, count: int = 4) -> list[dict]:
    """The first `count` training clips whose prompts and captions differ: what tells them apart is what a
    captioner reads."""
    source, _ = tasks.data_sources(config)
    clips, seen = [], set()
    for index in range(len(source)):
        example = source[index]
        key = (text.prompt(example), example["caption"])
        if not any(part in seen for part in key):
            clips.append(example)
            seen.update(key)
    return clips[:count]


# tiny_video: InstructBLIP-Video around a LLaMA (the Q-Former reads the prompt, 4 frames); tiny_text with OPT:
# a language model alone on the side-text prompt (rows that start with padding, no placeholders).
VARIANTS = {"tiny_video": {}, "tiny_text": {"language": "opt"}}


# The InstructBLIP-Video step compiles for a minute on 2 cores: `pytest -m heavy` runs it.
@pytest.fixture(scope="module", params=[pytest.param("tiny_video", marks=pytest.mark.heavy), "tiny_text"])
def trained(request, tmp_path_factory) -> dict:
    """A tiny captioner overfitted on 4 clips with adam through the task's loss, and exported."""
    config = cli.load_config(f"captioner:{request.param}")
    config.captioner.update(VARIANTS[request.param])
    mesh = sharding.make_mesh(data=1, model=1, devices=jax.devices()[:1])
    task = tasks.captioner_task(config, mesh)
    text = task.data["text"]
    clips = distinct_clips(config, text)
    rows = [text(clip, False, np.random.default_rng(0)) for clip in clips]
    batch = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
    frames = None
    if config.captioner.frames:
        frames = np.stack([clip["frames"][: config.captioner.frames] for clip in clips])
        batch["pixel_values"] = captioner.ImageProcessor((config.train.image_size,) * 2)(frames)  # as inference
    optimizer = nnx.Optimizer(task.model, optax.adam(1e-2), wrt=task.trainable)
    sharding.shard_model(optimizer, mesh)  # placed like the parameters: one compilation
    gradients = nnx.value_and_grad(task.loss, has_aux=True)

    @nnx.jit
    def step(model, optimizer, batch, rng):
        (_, metrics), grads = gradients(model, batch, rng)
        optimizer.update(model, grads)
        return metrics

    history = [jax.device_get(step(task.model, optimizer, batch, jax.random.key(i))) for i in range(60)]
    folder = tmp_path_factory.mktemp(request.param) / "captioner"
    task.export(task.model, folder)
    return dict(config=config, task=task, clips=clips, frames=frames, history=history, folder=folder)


def test_a_tiny_captioner_learns_its_clips_and_captions_them_once_exported(trained):
    config, clips = trained["config"], trained["clips"]
    assert trained["history"][0]["loss"] > 2.0 and trained["history"][-1]["loss"] < 0.05
    model = captioner.load_captioner(trained["folder"])
    assert model.frames == (0 if config.captioner.shape == "language_model" else None)
    prompts = [trained["task"].data["text"].prompt(clip) for clip in clips]
    if config.captioner.side_text:
        assert all(prompt.startswith("You are given some information") for prompt in prompts)
    captions = model.caption(trained["frames"], prompts, GenerationConfig(num_beams=1, max_new_tokens=32))
    assert captions == [" ".join(clip["caption"].lower().split()) for clip in clips]


def test_the_pipeline_makes_what_the_loss_reads(trained):
    config, task = trained["config"], trained["task"]
    source, _ = tasks.data_sources(config)
    batch = next(iter(make_dataset(source, train=True, batch_size=2, num_frames=config.train.num_frames,
                                   image_size=config.train.image_size, **task.data)))  # fmt: skip
    spec = config.captioner
    assert batch["prompt_ids"].shape == batch["prompt_mask"].shape == (2, spec.max_prompt_tokens)
    assert batch["caption_ids"].shape == (2, spec.max_caption_tokens)
    assert (batch["prompt_mask"][:, -1] == 1).all()  # padded on the left: the prompt ends where the caption starts
    assert (batch["caption_mask"][:, 0] == 1).all() and ("qformer_ids" in batch) == spec.shape.startswith("instruct")


@pytest.mark.parity
def test_transformers_reads_every_exported_tensor(trained):
    transformers = pytest.importorskip("transformers")
    folder: Path = trained["folder"]
    architecture = checkpoint.read_config(folder)["architectures"][0]
    _, info = getattr(transformers, architecture).from_pretrained(folder, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info

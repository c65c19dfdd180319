"""Captioners trained from scratch (`captioner` task): the word tokenizer, a tiny captioner that learns its clips and,
exported, captions them through the caption stage's interface, and the folder as transformers reads it."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import fit
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
    config = cli.load_config("captioner:tiny_image_side_text")  # InstructBLIP: around LLaMA (Vicuna) only
    config.captioner.language = "opt"
    with pytest.raises(ValueError, match="captioner.language is llama"):
        tasks.captioner_task(config, None)
    config = cli.load_config("captioner:tiny_text")
    config.captioner.side_text = False
    with pytest.raises(ValueError, match="side text"):
        tasks.captioner_task(config, None)


def distinct_clips(config, text, count: int = 4) -> list[dict]:
    """The first `count` training clips whose captions differ and, for a captioner that reads no frames, whose
    prompts differ too: what tells them apart is what the captioner reads."""
    source, _ = tasks.data_sources(config)
    clips, seen = [], set()
    for index in range(len(source)):
        example = source[index]
        key = {example["caption"], *([] if config.captioner.frames else [text.prompt(example)])}
        if not key & seen:
            clips.append(example)
            seen |= key
    return clips[:count]


# tiny_image: BLIP-2 around a LLaMA on one frame; tiny_text with OPT: a language model alone on the side-text prompt
# (rows that start with padding, no placeholders); tiny_video: Video-LLaMA around a LLaMA (4 frames through BLIP-2 and
# a video Q-Former); tiny_image_side_text: InstructBLIP around a LLaMA on one frame and the side-text prompt (its
# Q-Former reads the prompt).
VARIANTS = {"tiny_image": {}, "tiny_text": {"language": "opt"}, "tiny_video": {}, "tiny_image_side_text": {}}


# The video and InstructBLIP steps compile for a minute on 2 cores: `pytest -m heavy` runs them.
@pytest.fixture(scope="module", params=["tiny_image", "tiny_text", pytest.param("tiny_video", marks=pytest.mark.heavy),
                                        pytest.param("tiny_image_side_text", marks=pytest.mark.heavy)])  # fmt: skip
def trained(request, tmp_path_factory) -> dict:
    """A tiny captioner overfitted on 4 clips through the task's loss and the training loop's step, and exported."""
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
    history = fit(task, batch, mesh, steps=100, learning_rate=5e-3)
    folder = tmp_path_factory.mktemp(request.param) / "captioner"
    task.export(task.model, folder)
    return dict(config=config, task=task, clips=clips, frames=frames, history=history, folder=folder, mesh=mesh)


def test_a_tiny_captioner_learns_its_clips_and_captions_them_once_exported(trained):
    config, clips = trained["config"], trained["clips"]
    assert trained["history"][0]["loss"] > 2.0 and trained["history"][-1]["loss"] < 0.05
    model = captioner.load_captioner(trained["folder"])
    assert model.frames == tasks.CAPTIONER_SHAPES[config.captioner.shape][1]
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
    if not hasattr(transformers, architecture):
        pytest.skip(f"transformers has no {architecture}")
    _, info = getattr(transformers, architecture).from_pretrained(folder, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


@pytest.mark.parametrize("trained", ["tiny_image"], indirect=True)
def test_a_student_around_a_trained_blip2_learns_a_batch_to_near_zero_loss_and_leaves_the_blip2_alone(trained):
    """The student's own layers steer a frozen language model: around the BLIP-2 captioner trained above, whose
    language model knows these captions, they learn to make it write each clip's caption; the BLIP-2 stays as read."""
    config = cli.load_config("student:tiny")
    caption_tokens = trained["config"].captioner.max_caption_tokens  # as the captioner learned them: none cut short
    config.update(tiny="", checkpoint=str(trained["folder"]), max_caption_tokens=caption_tokens)
    task = tasks.student_task(config, trained["mesh"])
    frames = np.stack([clip["frames"] for clip in trained["clips"]])
    rows = [task.data["text"](clip, False, np.random.default_rng(0)) for clip in trained["clips"]]
    batch = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
    batch["pixel_values"] = captioner.ImageProcessor((config.train.image_size,) * 2)(frames)

    def blip2_parameters() -> dict:
        return jax.device_get(nnx.to_pure_dict(nnx.state(task.model.image_model, nnx.Param)))

    def own_parameters() -> dict:
        return jax.device_get(nnx.to_pure_dict(nnx.state(task.model, task.trainable)))

    frozen, own = blip2_parameters(), own_parameters()
    history = fit(task, batch, trained["mesh"], steps=100, learning_rate=3e-3)
    assert history[0]["loss"] > 1.0 and history[-1]["loss"] < 0.05, [float(m["loss"]) for m in history[::10]]
    assert history[-1]["token_accuracy"] == 1.0
    jax.tree.map(np.testing.assert_array_equal, blip2_parameters(), frozen)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), own_parameters(), own)))

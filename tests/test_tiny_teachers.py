"""Tiny random teachers and selector: checkpoint folders our loaders and transformers read, written without torch,
the same for a seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from panda_jax.models import CheckpointError, captioner, checkpoint
from panda_jax.models.generation import GenerationConfig
from panda_jax.teachers import tiny

FRAMES = {"blip2_opt": 1, "instructblip": 1, "instructblip_video": None, "video_llama": None, "opt": 0, "t5": 0}
PROMPTS = ["a red circle moves left", "Please faithfully summarize the video (or image) in one sentence.", "", "Zebra!"]
SETTINGS = GenerationConfig(max_new_tokens=6, num_beams=1)  # greedy: quick to compile


@pytest.fixture(scope="module", params=list(tiny.ARCHITECTURE_OF))
def written(request, tmp_path_factory) -> tuple[str, Path]:
    """(kind, its folder written with seed 0)."""
    return request.param, tiny.write_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param) / "teacher")


# The other kinds caption through the caption stage with the `tiny` teachers (tests/test_caption.py).
@pytest.mark.parametrize("written", ["t5"], indirect=True)
def test_a_kind_captions_clips_in_vocabulary_words(written):
    """Every caption is `max_new_tokens` words of the tokenizers' word list, whatever the prompt (empty, or
    out of vocabulary)."""
    kind, directory = written
    model = captioner.load_captioner(directory)
    assert model.frames == FRAMES[kind]
    clips = None
    if model.frames != 0:
        assert model.image_processor.size == (tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
        count = 4 if model.frames is None else 1
        clips = np.random.default_rng(0).integers(0, 256, (len(PROMPTS), count, 40, 40, 3), np.uint8)
    captions = model.caption(clips, PROMPTS, SETTINGS)
    for caption in captions:
        words = caption.split()
        assert len(words) == SETTINGS.max_new_tokens and set(words) <= set(tiny.WORDS), caption


def test_the_same_seed_writes_the_same_weights(written, tmp_path):
    kind, directory = written
    again = tiny.write_tiny_checkpoint(kind, tmp_path / "again")
    weights = checkpoint.WEIGHTS_NAME
    assert (again / weights).read_bytes() == (directory / weights).read_bytes()
    assert (again / checkpoint.CONFIG_NAME).read_text() == (directory / checkpoint.CONFIG_NAME).read_text()
    if kind == "opt":
        other = tiny.write_tiny_checkpoint(kind, tmp_path / "other", seed=1)
        assert (other / weights).read_bytes() != (directory / weights).read_bytes()


def test_ensure_writes_a_checkpoint_once_and_keeps_it(tmp_path):
    directory = tiny.ensure_tiny_checkpoint("t5", tmp_path / "cache" / "t5")
    written = (directory / checkpoint.WEIGHTS_NAME).stat().st_mtime_ns
    assert tiny.ensure_tiny_checkpoint("t5", directory) == directory
    tiny.write_tiny_checkpoint("t5", directory, seed=1)  # a folder already there is kept
    assert (directory / checkpoint.WEIGHTS_NAME).stat().st_mtime_ns == written
    assert [path.name for path in directory.parent.iterdir()] == ["t5"]  # no temporary folder left
    with pytest.raises(CheckpointError, match="T5ForConditionalGeneration"):
        tiny.ensure_tiny_checkpoint("opt", directory)


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose from blip2_opt"):
        tiny.write_tiny_checkpoint("blip3", tmp_path / "x")


def test_writing_and_loading_never_imports_torch(tmp_path):
    """In a fresh interpreter: tokenizers are loaded by their own classes, never through AutoTokenizer (which
    imports torch whenever it is installed)."""
    script = f"""
import sys
from panda_jax.models import captioner
from panda_jax.teachers import tiny
for kind in ("instructblip",):  # LLaMA's tokenizer, the Q-Former's BERT one, an image processor
    captioner.load_captioner(tiny.write_tiny_checkpoint(kind, {str(tmp_path)!r} + "/" + kind))
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parity
# instructblip shares instructblip_video's tensors, and opt is blip2_opt's language model.
@pytest.mark.parametrize("written", ["blip2_opt", "instructblip_video", "t5", "blip2_retrieval"], indirect=True)
def test_transformers_reads_every_tensor(written):
    """transformers' model class loads the folder with nothing missing, unexpected or misshaped; for the text
    kinds its `generate` makes the captions ours make."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kind, directory = written
    architecture = json.loads((directory / checkpoint.CONFIG_NAME).read_text())["architectures"][0]
    reference, info = getattr(transformers, architecture).from_pretrained(directory, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    if FRAMES.get(kind) != 0:  # only the text kinds generate from prompts alone
        return
    ours = captioner.load_captioner(directory)
    tokenizer = ours.tokenizer
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = reference.eval().generate(
            **batch, do_sample=False, num_beams=SETTINGS.num_beams, max_new_tokens=SETTINGS.max_new_tokens
        )
    new = tokens if reference.config.is_encoder_decoder else tokens[:, batch["input_ids"].shape[1] :]
    expected = [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    assert ours.caption(None, PROMPTS, SETTINGS) == expected

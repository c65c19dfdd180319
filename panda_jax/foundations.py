"""The foundations: `python -m panda_jax.foundations [--out DIR] [--config=foundations[:VARIANT]]`.

Panda-70M builds every model from pretrained parts (EVA-CLIP's ViT, OPT / Vicuna) with both ends
frozen. No such checkpoint exists offline, so the grounded world gets its own, pretrained once on
streams of the world that no demo seed touches (configs/foundations.py) and kept as Hugging Face
folders: FOLDER/vision (a `Blip2VisionModel`, with its image processor's settings and the probe
curves of its pretraining), FOLDER/language (a `LlamaForCausalLM` with its word tokenizer),
FOLDER/motion (a Video-LLaMA's frame and video Q-Formers, trained on the vision encoder to read
the action: panda_jax.motion) and FOLDER/report.json (held-out accuracies, seconds). `ensure(config)` returns the folder, building it
first when the cache has none for the config's fingerprint (the whole config, the package version
and the source of the code that makes them: a changed world or model makes new foundations): a
second run, or a second demo seed, reuses it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import panda_jax
from panda_jax import cli, motion, probe
from panda_jax.data.synthetic.sampling import sample_video_spec
from panda_jax.data.synthetic.text import video_texts
from panda_jax.files import atomic_directory
from panda_jax.models import blip2_vision, checkpoint, llama, load, word_tokenizer
from panda_jax.models.student import caption_loss
from panda_jax.teachers import tiny

log = logging.getLogger("panda_jax.foundations")
VISION, LANGUAGE, MOTION, REPORT = "vision", "language", "motion", "report.json"
PLACEHOLDERS = ("<image>", "<video>")  # every visual captioner's placeholder: one tokenizer serves them all
# The code the foundations are made by (relative to the package): the world they learn, the models, their training.
SOURCES = ("data/synthetic", "models", "probe.py", "motion.py", "foundations.py")


def source_digest() -> str:
    """sha256 of the SOURCES' Python files, in path order: changes when the world or the models do."""
    root = Path(panda_jax.__file__).parent
    digest = hashlib.sha256()
    for name in SOURCES:
        for path in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def fingerprint(config: Any) -> str:
    """What the foundations depend on: the config (without `out`), the package version and `source_digest`."""
    settings = {key: value for key, value in config.to_dict().items() if key != "out"}
    text = json.dumps({"config": settings, "version": panda_jax.__version__, "source": source_digest()},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def folder(config: Any) -> Path:
    return Path(config.out).expanduser() if config.out else cli.cache_dir() / "foundations" / fingerprint(config)


def ensure(config: Any) -> Path:
    """The foundations' folder, pretrained first (vision, language, then motion on the vision encoder) if the cache
    does not hold it yet."""
    path = folder(config)
    if (path / REPORT).is_file():
        return path
    log.info("pretraining the foundations into %s (once per config and version)", path)
    with atomic_directory(path) as scratch:
        report = {"fingerprint": fingerprint(config), "vision": pretrain_vision(config.vision, scratch / VISION),
                  "language": pretrain_language(config.language, scratch / LANGUAGE),
                  "motion": motion.pretrain_motion(config.motion, scratch / VISION, scratch / MOTION)}  # fmt: skip
        (scratch / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return path


# --- Vision -------------------------------------------------------------------------------------------------------


def vision_config(encoder: blip2_vision.VisionEncoder) -> dict[str, Any]:
    """config.json of the encoder as a `Blip2VisionModel`."""
    spec = encoder.config
    return {
        "architectures": ["Blip2VisionModel"], "model_type": "blip_2_vision_model", "dtype": "float32",
        "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads, "image_size": spec.image_size,
        "patch_size": spec.patch_size, "hidden_act": spec.hidden_act, "layer_norm_eps": spec.layer_norm_eps,
        "qkv_bias": spec.qkv_bias,
    }  # fmt: skip


def pretrain_vision(config: Any, out: Path) -> dict[str, Any]:
    """The probe's reader trained on the vision stream; its encoder saved to `out` with its curves."""
    began = time.perf_counter()
    model, curve = probe.train_reader(config)
    checkpoint.save_pretrained(out, vision_config(model.encoder), model.encoder,
                               blip2_vision.vision_slots(model.encoder, ""))  # fmt: skip
    name, settings = tiny.processor_settings(video=False)
    size = {"height": config.image_size, "width": config.image_size}
    (out / name).write_text(json.dumps(settings | {"size": size}, indent=2, sort_keys=True) + "\n")
    (out / "curves.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    probe.plot_curves(curve, out / "curves.png", "vision foundation: pretraining")
    return {"held_out": curve[-1], "seconds": round(time.perf_counter() - began, 1)}


# --- Language -----------------------------------------------------------------------------------------------------


def world_texts(seed: int, videos: int | None = None) -> Iterator[str]:
    """The texts of videos 0, 1, 2, … (`videos` of them; None: endless) of `seed`, video after video."""
    for index in itertools.count() if videos is None else range(videos):
        yield from video_texts(sample_video_spec(seed, index, size=32, duration=8.0))


def prompt_texts() -> list[str]:
    """The teachers' and the student's prompts (Panda-70M's), so that their words are words of the vocabulary, as a
    released language model's tokenizer knows them."""
    from panda_jax.teachers import prompts

    side_text = prompts.SideText("subtitles", "title", "description")
    return [prompts.student_prompt(side_text), prompts.student_prompt(None),
            *(prompts.build_prompt(text, prompts.Budgets(0, 0, 0), len)[0] for text in (side_text, None))]


def language_config(config: Any, tokenizer: Any) -> dict[str, Any]:
    """config.json of the language model (`LlamaForCausalLM`) at the config's sizes, over the tokenizer's vocabulary."""
    return {"architectures": ["LlamaForCausalLM"], "dtype": "float32"} | tiny.LLAMA | {
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.hidden_size // config.num_attention_heads,
        "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip


def token_rows(tokenizer: Any, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """BOS, the text's tokens, EOS, cut and padded to `length`: (ids, mask)."""
    ids = np.full((len(texts), length), tokenizer.pad_token_id, np.int32)
    for row, text in enumerate(texts):
        tokens = [*tokenizer(text)["input_ids"], tokenizer.eos_token_id][:length]
        ids[row, : len(tokens)] = tokens
    return ids, (ids != tokenizer.pad_token_id).astype(np.int32)


def language_loss(model: nnx.Module, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next-token cross-entropy and accuracy over the real tokens."""
    logits, _ = model(ids, attention_mask=mask)
    logits, targets, weights = logits[:, :-1], ids[:, 1:], mask[:, 1:]
    right = (logits.argmax(-1) == targets) * weights
    return caption_loss(logits, targets, weights), right.sum() / jnp.maximum(weights.sum(), 1)


def pretrain_language(config: Any, out: Path) -> dict[str, Any]:
    """A LLaMA trained on the language stream (its tokenizer learnt from the first videos' texts), saved to `out`."""
    began = time.perf_counter()
    first = world_texts(config.seed, config.tokenizer_videos)
    tokenizer = word_tokenizer.train_word_tokenizer(itertools.chain(first, prompt_texts()), PLACEHOLDERS)
    hf_config = language_config(config, tokenizer)
    shapes = checkpoint.abstract(lambda: llama.LlamaForCausalLM(llama.LlamaConfig.from_hf(hf_config), rngs=nnx.Rngs(0)))
    with tempfile.TemporaryDirectory() as scratch:
        initial = checkpoint.save(Path(scratch) / "initial", hf_config,
                                  tiny.random_weights(shapes, llama.llama_slots(shapes), config.seed, fan_in=True))
        model = load(initial)
    schedule = optax.warmup_cosine_decay_schedule(config.learning_rate / 20, config.learning_rate, config.warmup_steps,
                                                  max(config.steps, config.warmup_steps + 1), config.learning_rate / 20)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=config.weight_decay), wrt=nnx.Param)

    @nnx.jit
    def step(model: nnx.Module, optimizer: nnx.Optimizer, ids: jax.Array, mask: jax.Array) -> jax.Array:
        (loss, _), grads = nnx.value_and_grad(language_loss, has_aux=True)(model, ids, mask)
        optimizer.update(model, grads)
        return loss

    texts = world_texts(config.seed)
    for number in range(1, config.steps + 1):
        loss = step(model, optimizer, *token_rows(tokenizer, list(itertools.islice(texts, config.batch_size)),
                                                  config.max_tokens))  # fmt: skip
        if number % 100 == 0:
            log.info("language step %d: loss %.3f", number, float(loss))
    held_out = token_rows(tokenizer, list(itertools.islice(world_texts(config.eval_seed), config.eval_texts)),
                          config.max_tokens)  # fmt: skip
    loss, accuracy = nnx.jit(language_loss)(model, *held_out)
    checkpoint.save_pretrained(out, hf_config, model, llama.llama_slots(model))
    word_tokenizer.save_word_tokenizer(tokenizer, out)
    return {"held_out": {"loss": float(loss), "token_accuracy": float(accuracy)},
            "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from absl import flags

    def define(flag_values: flags.FlagValues) -> None:
        flags.DEFINE_string("out", None, "output folder (config field `out`; default: the cache)", flag_values=flag_values)

    command = cli.parse(argv, program="python -m panda_jax.foundations", doc=__doc__, default_config="foundations",
                        define=define, shorthands={"out": "out"})  # fmt: skip
    path = ensure(command.config)
    report = json.loads((path / REPORT).read_text())
    vision, language, reader = report["vision"], report["language"], report["motion"]
    print(f"foundations in {path}")
    print(f"  vision ({vision['seconds']:.0f} s), held-out accuracy: "
          + ", ".join(f"{fact} {value:.3f}" for fact, value in vision["held_out"].items() if fact not in ("step", "seconds", "loss")))
    print(f"  language ({language['seconds']:.0f} s), held-out next-token accuracy "
          f"{language['held_out']['token_accuracy']:.3f}, loss {language['held_out']['loss']:.3f}")  # fmt: skip
    print(f"  motion ({reader['seconds']:.0f} s), held-out action accuracy {reader['held_out']['action']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What `python -m panda_jax.train` trains: for each `config.model`, the model, what of it learns, its loss,
and its data.

A `Task` is all the training loop needs to know of a model: the module (from panda_jax/models),
an nnx filter of the parameters the optimizer changes, the loss of a batch (with the metrics to
report) and the extra inputs the pipeline makes for it (panda_jax.data.pipeline). Adding a
model to train is adding one function to `TASKS`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from panda_jax import losses
from panda_jax.models import blip2_vision, checkpoint
from panda_jax.teachers import tiny

MOTION = "motion"  # the foundations' folder of a Video-LLaMA's pretrained Q-Formers (panda_jax.motion)


@dataclasses.dataclass
class Task:
    """What the loop needs to know of a model: how it learns and what it reads."""

    model: nnx.Module
    trainable: Any  # an nnx filter: the parameters in the optimizer
    loss: Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    data: dict[str, Any]  # make_dataset's text options
    # Writes the trained model as a checkpoint folder its loader (and, where it can, transformers) reads.
    export: Callable[[nnx.Module, Path], None] | None = None


def student_task(config: Any, mesh: Any) -> Task:
    from panda_jax.data.pipeline import StudentText
    from panda_jax.models import student

    folder = tiny.checkpoint_folder(config)
    model = student.from_blip2(folder, student.StudentConfig(**config.student), getattr(jnp, config.train.dtype),
                               mesh=mesh, seed=config.train.seed)  # fmt: skip

    def loss(model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model(batch["pixel_values"], batch["prompt_ids"], batch["prompt_mask"], batch["caption_ids"],
                       batch["caption_mask"])  # fmt: skip
        value = student.caption_loss(logits, batch["caption_ids"], batch["caption_mask"])
        right = (logits.argmax(-1) == batch["caption_ids"]) * batch["caption_mask"]
        return value, {"loss": value, "token_accuracy": right.sum() / jnp.maximum(batch["caption_mask"].sum(), 1)}

    text = StudentText(checkpoint.load_tokenizer(folder), config.student.max_prompt_tokens, config.max_caption_tokens,
                       config.side_text_keep_probability)  # fmt: skip
    return Task(model, student.TRAINABLE, loss, {"text": text},
                lambda model, directory: student.save(model, directory, folder))  # fmt: skip


def retrieval_task(config: Any, mesh: Any) -> Task:
    """The selector. With `data.candidates` 0: clip-caption pairs, every other caption of the batch a negative
    (weight `loss.pair_weight`). Otherwise Panda-70M's fine-tuning: each clip's teacher captions, the one people
    chose positive, the clip's others weighing `loss.same_clip_weight` and other clips' `loss.other_clip_weight`.
    Both: VTC and VTM on hard negatives drawn by similarity."""
    from panda_jax.data.pipeline import CandidateText
    from panda_jax.models import video_retrieval

    folder = tiny.checkpoint_folder(config)
    video = video_retrieval.VideoConfig(max_frames=config.train.num_frames, temporal_layers=config.temporal_layers)
    model = video_retrieval.load(folder, getattr(jnp, config.train.dtype), mesh=mesh, video=video,
                                 seed=config.train.seed)  # fmt: skip
    weights, candidates = config.loss, config.data.candidates

    def texts(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """(ids, mask, valid, positive text, text's clip) of the batch's texts, flattened."""
        if not candidates:
            pairs = jnp.arange(len(batch["input_ids"]))
            return batch["input_ids"], batch["attention_mask"], jnp.ones_like(pairs, bool), pairs, pairs
        clips, count = batch["candidate_ids"].shape[:2]
        ids, mask = (batch[name].reshape(clips * count, -1) for name in ("candidate_ids", "candidate_mask"))
        positive = jnp.arange(clips) * count + batch["positive"]
        return ids, mask, batch["candidate_valid"].reshape(-1).astype(bool), positive, jnp.repeat(jnp.arange(clips), count)

    def loss(model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        ids, mask, valid, positive, text_video = texts(batch)
        video = model.encode_video(batch["pixel_values"])
        similarity = model.similarity(video.embeds, model.encode_text(ids, mask))
        similarity = jnp.where(valid[None, :], similarity, -100.0)  # a missing candidate: never likely, never drawn
        same, other = (weights.same_clip_weight, weights.other_clip_weight) if candidates else (1.0, weights.pair_weight)
        scale = model.logit_scale[...]
        vtc = losses.vtc_loss(similarity, scale, positive, text_video, same_clip_weight=same, other_clip_weight=other)
        negative_text, negative_video = losses.vtm_hard_negatives(similarity, scale, positive, text_video, rng)
        video_index, text_index, labels = losses.vtm_pairs(positive, negative_text, negative_video)
        matched = jax.tree.map(lambda features: features[video_index], video)
        logits = model.match_logits(matched, ids[text_index], mask[text_index])
        vtm = losses.vtm_loss(logits, labels)
        value = vtc + weights.vtm_weight * vtm
        # top1: how often the positive scores best among the clip's own candidates (pairs: among all the texts).
        own = text_video[None, :] == jnp.arange(len(positive))[:, None] if candidates else True
        top1 = jnp.mean(jnp.where(own, similarity, -jnp.inf).argmax(-1) == positive)
        return value, {"loss": value, "vtc": vtc, "vtm": vtm, "vtm_accuracy": jnp.mean(logits.argmax(-1) == labels),
                       "top1": top1}  # fmt: skip

    tokenizer = checkpoint.load_tokenizer(folder)
    data = ({"text": CandidateText(tokenizer, candidates, config.max_text_tokens)} if candidates
            else {"tokenizer": tokenizer, "max_text_tokens": config.max_text_tokens})  # fmt: skip
    trainable = learnt_around(config.frozen, ("vision_model",))
    return Task(model, trainable, loss, data, lambda model, directory: video_retrieval.save(model, directory, folder))


# config.captioner.shape → the panda_jax.teachers.tiny kind whose checkpoint layout it has (around the language model
# config.captioner.language names), and the frames it reads (None: any number, the config's).
CAPTIONER_SHAPES = {"blip2": ("blip2_opt", 1), "instructblip": ("instructblip", 1),
                    "instructblip_video": ("instructblip_video", None), "video_llama": ("video_llama", None),
                    "language_model": ("opt", 0)}  # fmt: skip


def captioner_kind(shape: str, language: str) -> Any:
    """The `tiny.Kind` (architecture, config reader, module, slots, placeholder) of a captioner of `shape` around
    an OPT or LLaMA `language` model; refuses what our loaders do not read (InstructBLIP around OPT)."""
    from panda_jax.models import llama

    if shape not in CAPTIONER_SHAPES:
        raise ValueError(f"captioner.shape must be one of {', '.join(CAPTIONER_SHAPES)}, not {shape!r}")
    allowed = ("llama",) if shape.startswith("instructblip") else ("opt", "llama")
    if language not in allowed:
        raise ValueError(f"a {shape} captioner's captioner.language is {' or '.join(allowed)}, not {language!r}")
    if shape == "language_model" and language == "llama":
        return tiny.Kind("LlamaForCausalLM", "llama", "llama", llama.LlamaConfig.from_hf, llama.LlamaForCausalLM,
                         llama.llama_slots)  # fmt: skip
    return dataclasses.replace(tiny.KINDS[CAPTIONER_SHAPES[shape][0]], language=language)


def captioner_config(
    config: Any, kind: Any, tokenizer: Any, foundations: Path | None = None, motion: dict[str, Any] | None = None
) -> dict[str, Any]:
    """config.json of the captioner `config.captioner` describes, in transformers' layout for its `kind`: the sizes
    of the config over panda_jax.teachers.tiny's settings (or, with `foundations`, those of its vision encoder and
    language model, and with a `motion` foundation's config those of a Video-LLaMA's Q-Formers), the vocabulary and
    special tokens of `tokenizer`."""

    spec, sizes = config.captioner, config.captioner.text
    if foundations is not None:
        text = _foundation_config(foundations, "language")
    else:
        text = dict(hidden_size=sizes.hidden_size, num_hidden_layers=sizes.num_hidden_layers,
                    num_attention_heads=sizes.num_attention_heads, max_position_embeddings=sizes.max_position_embeddings,
                    vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        if kind.language == "opt":
            text = tiny.OPT | text | {"ffn_dim": sizes.intermediate_size, "word_embed_proj_dim": sizes.hidden_size}
        else:
            head_dim = sizes.hidden_size // sizes.num_attention_heads
            text = tiny.LLAMA | text | {"intermediate_size": sizes.intermediate_size, "head_dim": head_dim,
                                        "num_key_value_heads": sizes.num_key_value_heads}  # fmt: skip
    header = {"architectures": [kind.architecture], "dtype": "float32"}
    if kind.placeholder is None:
        return header | text
    qformer = spec.qformer.to_dict()
    if kind.model_type.startswith("instructblip"):  # its Q-Former reads the prompt through the same tokenizer
        qformer["vocab_size"] = len(tokenizer)
    visual = tiny.visual_config(kind, text, tokenizer.convert_tokens_to_ids(kind.placeholder), qformer)
    vision = spec.vision.to_dict() if foundations is None else _foundation_config(foundations, "vision")
    visual["vision_config"] |= vision | {"image_size": config.train.image_size}
    visual["qformer_config"]["encoder_hidden_size"] = visual["vision_config"]["hidden_size"]
    num_queries = spec.num_query_tokens
    if spec.shape == "video_llama":
        visual["video_config"] = spec.video.to_dict() | {"max_frames": spec.frames}
        if motion is not None:
            visual["qformer_config"] |= motion["qformer_config"]
            visual["video_config"] |= motion["video_config"]
            num_queries = motion["num_query_tokens"]
    return header | visual | {"num_query_tokens": num_queries}


def _motion_foundation(foundations: Path, spec: Any) -> dict[str, Any] | None:
    """config.json of the foundations' pretrained Video-LLaMA Q-Formers (panda_jax.motion), None if it has none;
    refuses one with fewer frame positions than the captioner reads."""
    path = foundations / MOTION / checkpoint.CONFIG_NAME
    if not path.is_file():
        return None
    motion = json.loads(path.read_text())
    if motion["video_config"]["max_frames"] < spec.frames:
        raise ValueError(f"the motion foundation in {path.parent} has frame positions for "
                         f"{motion['video_config']['max_frames']} frames; captioner.frames is {spec.frames}")
    return motion


def _visual_placeholders(spec: Any, kind: Any, motion: dict[str, Any] | None) -> int:
    """How many placeholders of visual tokens the captioner's prompt holds."""
    if kind.placeholder is None:
        return 0
    if spec.shape != "video_llama":
        return spec.num_query_tokens * spec.frames
    frame, video = (motion["num_query_tokens"], motion["video_config"]["num_query_tokens"]) if motion else (
        spec.num_query_tokens, spec.video.num_query_tokens)  # fmt: skip
    return frame * spec.video.appearance_tokens + video


def _foundation_config(foundations: Path, part: str) -> dict[str, Any]:
    """The config.json of a foundation (panda_jax.foundations: "vision" or "language") as a sub-config."""
    hf_config = json.loads((foundations / part / checkpoint.CONFIG_NAME).read_text())
    dropped = ("architectures", "dtype", "model_type") if part == "vision" else ("architectures", "dtype")
    return {key: value for key, value in hf_config.items() if key not in dropped}


def learnt_around(frozen: str, known: tuple[str, ...] = ("vision_model", "language_model")) -> Any:
    """The parameters a model built from the foundations learns: all but the parts `frozen` names (a captioner's
    "vision_model,language_model": neither end, Panda-70M's teachers and BLIP-2's recipe; a selector's
    "vision_model")."""
    parts = [part.strip() for part in frozen.split(",") if part.strip()]
    unknown = set(parts) - set(known)
    if unknown:
        raise ValueError(f"frozen names {sorted(unknown)}; it may name {' and '.join(known)}")
    return nnx.All(nnx.Param, nnx.Not(nnx.Any(*map(nnx.PathContains, parts)))) if parts else nnx.Param


def with_foundations(tensors: dict[str, np.ndarray], foundations: Path, kind: Any) -> dict[str, np.ndarray]:
    """`tensors` with the vision encoder's and the language model's replaced by the foundations' (a language model
    alone is the language foundation), and a Video-LLaMA's Q-Formers by the motion foundation's; a vision encoder read
    at another resolution gets its position embeddings resized (`blip2_vision.resized_positions`)."""
    language = checkpoint.read_state_dict(foundations / "language" / checkpoint.WEIGHTS_NAME)
    if kind.placeholder is None:
        return tensors | language
    out = tensors | {f"language_model.{name}": value for name, value in language.items()}
    for name, value in checkpoint.read_state_dict(foundations / "vision" / checkpoint.WEIGHTS_NAME).items():
        wanted = out[f"vision_model.{name}"].shape
        out[f"vision_model.{name}"] = value if value.shape == wanted else blip2_vision.resized_positions(value, wanted[1])
    motion = foundations / MOTION / checkpoint.WEIGHTS_NAME
    if kind.model_type == "video_llama" and motion.is_file():  # its Q-Formers, pretrained to read the action
        out |= checkpoint.read_state_dict(motion)
    return out


def captioner_task(config: Any, mesh: Any) -> Task:
    """A captioner of `config.captioner.shape` (BLIP-2, InstructBLIP, InstructBLIP-Video, Video-LLaMA, or a language
    model alone) trained end to end from random initialisation, every parameter; `export` writes it as a Hugging Face
    folder that `captioner.load_captioner` and the caption stage read as a released checkpoint's.

    The initial weights are transformers' initialisation (normal(0, 0.02), norm scales 1, biases 0), but with
    LeCun's normal(0, 1/sqrt(in_features)) for linear layers, which these narrow models learn from several times
    faster (`tiny.random_weights`): drawn from `train.seed`, the same on every platform.

    Its word-level tokenizer (panda_jax.models.word_tokenizer) is trained first on the captions and prompts of the
    first `data.tokenizer_examples` training clips. The loss is the cross-entropy of the caption tokens (EOS included)
    after the prompt as the captioner reads it at inference: the placeholders of the visual tokens, the prompt padded
    on the left, the caption on the right, and positions the running count of real tokens, as generation numbers
    them (`CaptionerText`). An image captioner sees one of the frames the pipeline samples, at random; a video
    captioner all `captioner.frames`.
    """
    from panda_jax.data.pipeline import CaptionerText, captioner_corpus
    from panda_jax.models import load, student, word_tokenizer
    from panda_jax.teachers import prompts

    spec, train = config.captioner, config.train
    kind = captioner_kind(spec.shape, spec.language)
    frames = CAPTIONER_SHAPES[spec.shape][1]
    if spec.frames != (train.num_frames if frames is None else frames):
        wanted = f"train.num_frames ({train.num_frames})" if frames is None else frames
        raise ValueError(f"a {spec.shape} captioner reads {wanted} frames; captioner.frames is {spec.frames}")
    if spec.shape == "language_model" and not spec.side_text:
        raise ValueError("a language_model captioner reads only the side text: set captioner.side_text")
    qformer = kind.model_type.startswith("instructblip")  # its Q-Former reads the prompt too
    if qformer and spec.max_prompt_tokens > spec.qformer.max_position_embeddings:
        positions = spec.qformer.max_position_embeddings
        raise ValueError(f"max_prompt_tokens ({spec.max_prompt_tokens}) is more than the Q-Former's positions "
                         f"(captioner.qformer.max_position_embeddings: {positions})")  # fmt: skip
    foundations = Path(spec.foundations).expanduser() if spec.foundations else None
    motion = _motion_foundation(foundations, spec) if foundations is not None and spec.shape == "video_llama" else None
    placeholders = _visual_placeholders(spec, kind, motion)
    if placeholders + spec.max_prompt_tokens + spec.max_caption_tokens > spec.text.max_position_embeddings:
        raise ValueError(f"{placeholders} placeholders, {spec.max_prompt_tokens} prompt and {spec.max_caption_tokens} "
                         f"caption tokens do not fit captioner.text.max_position_embeddings "
                         f"({spec.text.max_position_embeddings})")  # fmt: skip

    if foundations is not None:  # the language foundation's tokenizer, as a released LM's
        tokenizer = checkpoint.load_tokenizer(foundations / "language")
    else:
        source, _ = data_sources(config)
        examples = range(min(len(source), config.data.tokenizer_examples))  # a stream's first ones: it never ends
        corpus = (text for index in examples for text in captioner_corpus(source[index], spec.side_text))
        tokenizer = word_tokenizer.train_word_tokenizer(
            corpus, [kind.placeholder] if kind.placeholder else [], max_words=spec.max_words,
            min_count=spec.min_word_count,
        )  # fmt: skip
    hf_config = captioner_config(config, kind, tokenizer, foundations, motion)
    # Drawn with numpy, as transformers initialises these models, and read by the model's own loader onto the mesh:
    # drawn with nnx.Rngs, every initializer would be compiled, some 10 s on a CPU for even a tiny captioner.
    shapes = checkpoint.abstract(lambda: kind.module(kind.read_config(hf_config), rngs=nnx.Rngs(0)))
    tensors = tiny.random_weights(shapes, kind.slots(shapes), train.seed, fan_in=True)
    if foundations is not None:
        tensors = with_foundations(tensors, foundations, kind)
    with tempfile.TemporaryDirectory() as scratch:
        model = load(checkpoint.save(Path(scratch) / "initial", hf_config, tensors), getattr(jnp, train.dtype), mesh=mesh)
    placeholder_id = tokenizer.convert_tokens_to_ids(kind.placeholder) if kind.placeholder else None

    def loss(model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        caption_ids, caption_mask = batch["caption_ids"], batch["caption_mask"]
        input_ids = jnp.concatenate([batch["prompt_ids"], caption_ids], axis=1)
        mask = jnp.concatenate([batch["prompt_mask"], caption_mask], axis=1)
        if placeholder_id is None:
            language_model, embeds = model, model.embed(input_ids)
        else:
            pixels = batch["pixel_values"]  # [B, T, 3, H, W]
            if spec.frames == 1:  # one of the clip's frames, as the caption stage shows one
                pick = jax.random.randint(rng, (len(pixels),), 0, pixels.shape[1])
                pixels = pixels[jnp.arange(len(pixels)), pick]
            start = jnp.full((len(input_ids), placeholders), placeholder_id, input_ids.dtype)
            input_ids = jnp.concatenate([start, input_ids], axis=1)
            mask = jnp.concatenate([jnp.ones_like(start, mask.dtype), mask], axis=1)
            language_model = model.language_model
            if qformer:
                embeds = model.prompt_embeds(pixels, batch["qformer_ids"], batch["qformer_mask"], input_ids)
            else:
                embeds, mask = model.prompt_embeds(pixels, input_ids, mask)
        positions = jnp.where(mask, jnp.cumsum(mask, axis=1) - 1, 0)
        logits, _ = language_model(inputs_embeds=embeds, attention_mask=mask, positions=positions)
        logits = logits[:, -caption_ids.shape[1] - 1 : -1]  # each caption token predicted from the token before
        value = student.caption_loss(logits, caption_ids, caption_mask)
        right = (logits.argmax(-1) == caption_ids) * caption_mask
        return value, {"loss": value, "token_accuracy": right.sum() / jnp.maximum(caption_mask.sum(), 1)}

    def export(model: nnx.Module, directory: Path) -> None:
        """config.json, model.safetensors, the tokenizer (and the Q-Former's) and the image or video processor's
        settings at the training image size."""
        directory = Path(directory)
        checkpoint.save_pretrained(directory, hf_config, model, kind.slots(model))
        word_tokenizer.save_word_tokenizer(tokenizer, directory)
        if qformer:
            word_tokenizer.save_word_tokenizer(tokenizer, directory / "qformer_tokenizer")
        if kind.placeholder is not None:
            name, settings = tiny.processor_settings(video=kind.model_type in tiny.VIDEO_MODEL_TYPES)
            size = {"height": train.image_size, "width": train.image_size}
            (directory / name).write_text(json.dumps(settings | {"size": size}, indent=2, sort_keys=True) + "\n")

    text = CaptionerText(tokenizer, spec.side_text, prompts.Budgets(**config.side_text), spec.max_prompt_tokens,
                         spec.max_caption_tokens, qformer)  # fmt: skip
    # From the foundations, a visual captioner learns its Q-Former and projection; a language model alone, all of it.
    trainable = learnt_around(spec.frozen) if foundations is not None and kind.placeholder is not None else nnx.Param
    return Task(model, trainable, loss, {"text": text, "flip_probability": train.flip_probability}, export)


TASKS = {"student": student_task, "retrieval": retrieval_task, "captioner": captioner_task}


def data_sources(config: Any) -> tuple[Any, Any | None]:
    """(train source, eval source or None): the `panda70m` TFDS splits, or synthetic clips of separate videos.

    Synthetic: `data.synthetic_videos` > 0 trains on the events of videos 0 … N-1 of `data.synthetic_seed` in memory
    (`SyntheticClips`), 0 on the endless stream of fresh videos (`SyntheticStream`, from video `STREAM_FIRST_VIDEO`
    on); either way the `data.synthetic_eval_videos` videos after the training ones (from video 0 for the stream)
    are the eval set, which no training example shares a video with.
    """
    data = config.data
    if data.source == "synthetic":
        from panda_jax.data.synthetic import SyntheticClips, SyntheticStream

        options = dict(size=data.synthetic_size, stored_frames=config.train.num_frames,
                       candidates=data.get("candidates", 0))  # fmt: skip
        if data.synthetic_videos:
            train = SyntheticClips(data.synthetic_videos, data.synthetic_seed, **options)
        else:
            train = SyntheticStream(data.synthetic_seed, **options)
        evaluation = SyntheticClips(data.synthetic_eval_videos, data.synthetic_seed, first_video=data.synthetic_videos,
                                    **options) if data.synthetic_eval_videos else None  # fmt: skip
        return train, evaluation
    if data.source != "tfds":
        raise ValueError(f"data.source must be tfds or synthetic, not {data.source!r}")
    import tensorflow_datasets as tfds

    import tfds_builders.panda70m  # noqa: F401  (registers the builder)

    labels = None
    if data.get("labels"):  # the selector's fine-tuning set: the clips people labelled
        from panda_jax.data.pipeline import LabelledSource
        from panda_jax.selection_report import read_labels

        labels = read_labels(data.labels, [])

    def split(name: str) -> Any:
        source = tfds.data_source(data.name, split=name, data_dir=data.data_dir or None)
        return source if labels is None else LabelledSource(source, labels)

    return split(data.split), split(data.eval_split) if data.eval_split else None

"""Tiny random teachers and selectors for tests and quick checks: real Hugging Face checkpoint folders,
written by our own code.

`write_tiny_checkpoint(kind, directory, seed)` writes a folder that `captioner.load_captioner`
(or, for the selector, `video_retrieval.load`) and transformers read like a released model's,
small enough to load and run in seconds on a CPU; `ensure_tiny_checkpoint` writes it at first
use. Kinds:

  blip2_opt           Blip2ForConditionalGeneration, OPT language model: one image
  instructblip        InstructBlipForConditionalGeneration, LLaMA: one image
  instructblip_video  InstructBlipVideoForConditionalGeneration, LLaMA: any number of frames
  video_llama         VideoLlamaForConditionalGeneration (panda_jax.models.video_llama), LLaMA: up to 8 frames
  opt                 OPTForCausalLM: text only
  t5                  T5ForConditionalGeneration (Flan-T5's layout): text only
  blip2_retrieval     Blip2ForImageTextRetrieval (BERT tokenizer): the caption selector's image model

A folder holds config.json in transformers 5.24's layout, model.safetensors, the tokenizer(s)
and the image (or video) processor settings. No torch and no transformers model class is
involved: the tensors are those our loaders' slots name, at the shapes the slots give, and the
tokenizers are trained offline on `WORDS` with the `tokenizers` library, then wrapped in the
fast tokenizer class transformers uses for the model. Weights are drawn from the seed alone,
normal(0, 0.02) as transformers initialises them (norm scales 1, biases 0), so equal
(kind, seed) give byte-identical weights. The output projection keeps only the rows of whole
words of `WORDS`; the other rows are 0, so their logits are 0, below the best word's. Every
caption is then `max_new_tokens` vocabulary words, never empty (EOS is never chosen): text that
downstream stages can read, though not about the frames.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from panda_jax.files import atomic_directory
from panda_jax.models import blip2, blip2_retrieval, checkpoint, instructblip, opt, t5, video_llama
from panda_jax.models.clip import IMAGE_MEAN, IMAGE_STD

# The vocabulary: everyday caption words, the synthetic corpus's (colours, shapes, sizes, motions,
# backgrounds) and those of Panda-70M's prompts, so that prompts take few tokens.
WORDS = tuple(dict.fromkeys(
    """
    a an the one two three some many of in on at to from with and or but is are it its this that there
    here while next beside behind over under into across around near front back top bottom side middle
    man woman person people child children boy girl baby dog cat bird horse fish car bike bus train boat
    plane ball tree flower grass water sky sun cloud snow rain road street city house room kitchen table
    chair door window wall floor field beach sea river mountain park stage screen light shadow hand face
    walks runs sits stands plays holds talks looks cooks drives rides jumps dances sings eats drinks
    smiles waves opens falls flies swims turns rises sinks slides floats drifts travels appears fades
    moves left right up down grows shrinks spins rotates bounces stays still place
    red orange yellow green cyan blue purple pink white black gray brown navy teal beige olive
    circle square triangle star diamond hexagon cross shape shapes object objects disc discs
    smooth banded dotted tiled
    small medium large big little bigger smaller tiny huge bright dark plain mottled
    background stripes striped gradient checkerboard checkered noise solid color colors pattern
    video clip scene frame image picture camera view shot close slowly quickly again then now
    you given information about will be asked summarize or subtitles descriptions please faithfully
    sentence shows showing seen day night
    backdrop against blotchy fading size put nearby remains gets motionless swells upward contracts expands
    does not move leftward rightward drops downward
    """.split()
))
IMAGE_SIZE = 28  # pixels, two 14-pixel patches a side
QUERIES = 4  # Q-Former queries: visual tokens per frame
POSITIONS = 1024  # language model positions: a prompt with side text, the placeholders and the caption
STD = 0.02  # transformers' initializer_range

VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE,
    patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
)  # fmt: skip
QFORMER = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, cross_attention_frequency=1,
    max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
)  # fmt: skip
VIDEO = dict(max_frames=8, num_query_tokens=QUERIES, num_hidden_layers=1)  # Video-LLaMA's video Q-Former
OPT = dict(
    model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=POSITIONS, word_embed_proj_dim=32, do_layer_norm_before=True,
    activation_function="relu", enable_bias=True, tie_word_embeddings=True,
)  # fmt: skip
LLAMA = dict(
    model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=POSITIONS, hidden_act="silu", rms_norm_eps=1e-6,
    rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=False,
)  # fmt: skip
# Flan-T5's: gated GELU, its own output projection and no output scaling (`tie_word_embeddings` false).
T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, tie_word_embeddings=False, is_encoder_decoder=True, decoder_start_token_id=0,
)  # fmt: skip
LANGUAGE_MODELS = {"opt": OPT, "llama": LLAMA, "t5": T5}


@dataclass(frozen=True)
class Kind:
    """One kind of tiny teacher: its checkpoint's architecture and model type, and our model of it."""

    architecture: str
    model_type: str
    language: str  # a key of LANGUAGE_MODELS
    read_config: Callable[[dict[str, Any]], Any]  # config.json → our config
    module: type[nnx.Module]
    slots: Callable[[Any], dict[str, checkpoint.Slot]]
    placeholder: str | None = None  # the token the processor puts in the prompt for each visual token
    placeholder_key: str | None = None  # config.json's key of its id


_INSTRUCTBLIP = (instructblip.InstructBlipConfig.from_hf, instructblip.InstructBlip, instructblip.instructblip_slots)
KINDS = {
    # No `lm_head.weight` among the tensors: BLIP-2's OPT reads its token embeddings back, as OPT does.
    "blip2_opt": Kind(
        "Blip2ForConditionalGeneration", "blip-2", "opt", lambda config: blip2.Blip2Config.from_hf(config, set()),
        blip2.Blip2, blip2.blip2_slots, "<image>", "image_token_index",
    ),
    "instructblip": Kind(
        "InstructBlipForConditionalGeneration", "instructblip", "llama", *_INSTRUCTBLIP, "<image>", "image_token_index"
    ),
    "instructblip_video": Kind(
        "InstructBlipVideoForConditionalGeneration", "instructblipvideo", "llama", *_INSTRUCTBLIP, "<video>",
        "video_token_index",
    ),
    "video_llama": Kind(
        "VideoLlamaForConditionalGeneration", "video_llama", "llama",
        lambda config: video_llama.VideoLlamaConfig.from_hf(config, set()), video_llama.VideoLlama,
        video_llama.video_llama_slots, "<video>", "video_token_index",
    ),
    "opt": Kind("OPTForCausalLM", "opt", "opt", opt.OPTConfig.from_hf, opt.OPTForCausalLM, opt.opt_slots),
    "t5": Kind(
        "T5ForConditionalGeneration", "t5", "t5", t5.T5Config.from_hf, t5.T5ForConditionalGeneration, t5.t5_slots
    ),
}  # fmt: skip
VIDEO_MODEL_TYPES = ("instructblipvideo", "video_llama")  # the kinds that read clips: a video processor
# What precedes a word that starts a token, in each language model's tokenizer: byte-level BPE's space, or ▁.
WORD_START = {"opt": "Ġ", "llama": "▁", "t5": "▁"}
# Where each language model's output projection is: OPT's is its token embeddings.
OUTPUT_PROJECTION = {"opt": "model.decoder.embed_tokens.weight", "llama": "lm_head.weight", "t5": "lm_head.weight"}


RETRIEVAL = "blip2_retrieval"
ARCHITECTURE_OF = {kind: spec.architecture for kind, spec in KINDS.items()} | {RETRIEVAL: "Blip2ForImageTextRetrieval"}


def write_tiny_checkpoint(kind: str, directory: str | os.PathLike, seed: int = 0) -> Path:
    """Writes the tiny `kind` model (see the module docstring) with weights drawn from `seed` into `directory`.

    Written beside `directory` and renamed into place (`files.atomic_directory`): a reader never
    sees half a folder, and if a folder is already there, it is kept.
    """
    if kind == RETRIEVAL:
        return write_tiny_retrieval(directory, seed)
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose from {', '.join(ARCHITECTURE_OF)}")
    spec = KINDS[kind]
    tokenizer = TOKENIZERS[spec.language]()
    if spec.placeholder is not None:  # as BLIP-2's and InstructBLIP's processors add it
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(spec.placeholder, normalized=False, special=True)], special_tokens=True)
    config = LANGUAGE_MODELS[spec.language] | {
        "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    if spec.language != "t5":
        config["bos_token_id"] = tokenizer.bos_token_id
    qformer_tokenizer = train_qformer_tokenizer() if spec.module is instructblip.InstructBlip else None
    if spec.placeholder is not None:
        qformer = {} if qformer_tokenizer is None else {"vocab_size": len(qformer_tokenizer)}
        config = visual_config(spec, config, tokenizer.convert_tokens_to_ids(spec.placeholder), qformer)
    config = {"architectures": [spec.architecture], "dtype": "float32"} | config
    tensors = random_tensors(spec, config, seed, word_ids(tokenizer, spec.language))
    directory = Path(directory).expanduser()
    with atomic_directory(directory) as folder:
        (folder / checkpoint.CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(folder / checkpoint.WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer.save_pretrained(folder)
        if qformer_tokenizer is not None:
            qformer_tokenizer.save_pretrained(folder / "qformer_tokenizer")
        if spec.placeholder is not None:
            name, settings = processor_settings(spec.model_type in VIDEO_MODEL_TYPES)
            (folder / name).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return directory


def ensure_tiny_checkpoint(kind: str, directory: str | os.PathLike, seed: int = 0, vision: Path | None = None) -> Path:
    """`directory`, written by `write_tiny_checkpoint` (or, with `vision`, `write_tiny_retrieval` around it) first if
    it holds no checkpoint yet.

    Safe when processes race: each writes its own folder and the first renamed into place is
    kept. Refuses a folder that holds another architecture.
    """
    directory = Path(directory).expanduser()
    if kind in ARCHITECTURE_OF and (directory / checkpoint.CONFIG_NAME).is_file():
        checkpoint.read_config(directory, architectures=[ARCHITECTURE_OF[kind]])
        if vision is not None and not _holds_vision(directory, vision):
            raise ValueError(f"{directory} holds a {kind} whose vision encoder is not the one of {vision}: name another "
                             "checkpoint folder, or remove it to have it written again")
        return directory
    if vision is not None:
        if kind != RETRIEVAL:
            raise ValueError(f"only the {RETRIEVAL} kind is built around a pretrained vision encoder, not {kind!r}")
        return write_tiny_retrieval(directory, seed, vision)
    return write_tiny_checkpoint(kind, directory, seed)


def _holds_vision(directory: Path, vision: Path) -> bool:
    """Whether the checkpoint in `directory` has `vision`'s encoder (a Blip2VisionModel folder) as its vision_model."""
    held = checkpoint.read_state_dict(directory / checkpoint.WEIGHTS_NAME)
    wanted = checkpoint.read_state_dict(vision / checkpoint.WEIGHTS_NAME)
    return all(np.array_equal(held.get(f"vision_model.{name}"), value) for name, value in wanted.items())


def checkpoint_folder(config: Any) -> Path:
    """The folder a model config's `checkpoint` names under its `weights_dir` (an absolute `checkpoint` stands
    alone), written with random weights first when its `tiny` names a kind (around the vision foundation of its
    `foundations` folder, where it has one)."""
    folder = (Path(config.weights_dir).expanduser() / Path(config.checkpoint).expanduser()).absolute()
    if config.tiny:
        foundations = config.get("foundations", "")
        ensure_tiny_checkpoint(config.tiny, folder, vision=Path(foundations).expanduser() / "vision" if foundations else None)
    return folder


def write_tiny_retrieval(directory: str | os.PathLike, seed: int = 0, vision: Path | None = None) -> Path:
    """The tiny `Blip2ForImageTextRetrieval`: the tiny teachers' vision encoder (or, with `vision`, that
    `Blip2VisionModel` folder's weights, sizes and image processor) and Q-Former (with its text input), a 16-wide
    contrastive space, BERT's tokenizer over `WORDS`; written like `write_tiny_checkpoint`."""
    tokenizer = train_qformer_tokenizer()
    name, settings = processor_settings(video=False)
    vision_config = VISION
    if vision is not None:
        pretrained = checkpoint.read_config(vision, architectures=["Blip2VisionModel"])
        vision_config = {key: value for key, value in pretrained.items() if key not in ("architectures", "dtype")}
        settings = json.loads((vision / name).read_text())
    qformer = QFORMER | {
        "model_type": "blip_2_qformer", "encoder_hidden_size": vision_config["hidden_size"],
        "use_qformer_text_input": True, "vocab_size": len(tokenizer),
    }  # fmt: skip
    config = {
        "architectures": ["Blip2ForImageTextRetrieval"], "model_type": "blip-2", "dtype": "float32",
        "num_query_tokens": QUERIES, "image_text_hidden_size": 16,
        "vision_config": vision_config | {"model_type": "blip_2_vision_model"}, "qformer_config": qformer,
    }  # fmt: skip
    parsed = blip2_retrieval.RetrievalConfig.from_hf(config)
    model = checkpoint.abstract(lambda: blip2_retrieval.Blip2Retrieval(parsed, rngs=nnx.Rngs(0)))
    tensors = random_weights(model, blip2_retrieval.retrieval_slots(model), seed)
    if vision is not None:
        pretrained_tensors = checkpoint.read_state_dict(vision / checkpoint.WEIGHTS_NAME)
        tensors |= {f"vision_model.{key}": value for key, value in pretrained_tensors.items()}
    directory = Path(directory).expanduser()
    with atomic_directory(directory) as folder:
        (folder / checkpoint.CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(folder / checkpoint.WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer.save_pretrained(folder)
        (folder / name).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return directory


def visual_config(spec: Kind, text: dict[str, Any], placeholder_id: int, qformer: dict[str, Any]) -> dict[str, Any]:
    """config.json's fields of a BLIP-2, Video-LLaMA or InstructBLIP(-Video) around the language model's `text`
    config; `qformer` adds to the Q-Former's."""
    # of the vision encoder's and Q-Former's model types: Video-LLaMA's are BLIP-2's
    prefix = "blip_2" if spec.model_type in ("blip-2", "video_llama") else spec.model_type
    video = {"video_config": VIDEO} if spec.module is video_llama.VideoLlama else {}
    return video | {
        "model_type": spec.model_type,
        "num_query_tokens": QUERIES,
        spec.placeholder_key: placeholder_id,
        "use_decoder_only_language_model": text["model_type"] != "t5",
        "vision_config": VISION | {"model_type": f"{prefix}_vision_model"},
        # The Q-Former cross-attends to the vision encoder's features.
        "qformer_config": QFORMER
        | {"model_type": f"{prefix}_qformer", "encoder_hidden_size": VISION["hidden_size"]}
        | qformer,
        "text_config": text,
    }


def processor_settings(video: bool) -> tuple[str, dict[str, Any]]:
    """(file name, settings) of BLIP's image processor, or InstructBLIP-Video's video processor, at `IMAGE_SIZE`."""
    settings = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3,  # bicubic
        "rescale_factor": 1 / 255, "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }  # fmt: skip
    if video:
        return "video_preprocessor_config.json", settings | {
            "video_processor_type": "InstructBlipVideoVideoProcessor", "do_sample_frames": False,
        }  # fmt: skip
    return "preprocessor_config.json", settings | {"image_processor_type": "BlipImageProcessor"}


def random_tensors(spec: Kind, config: dict[str, Any], seed: int, words: list[int]) -> dict[str, np.ndarray]:
    """Every tensor our loader reads for `config` (`random_weights`), the output projection's rows other than
    `words` 0."""
    parsed = spec.read_config(config)
    model = checkpoint.abstract(lambda: spec.module(parsed, rngs=nnx.Rngs(0)))
    tensors = random_weights(model, spec.slots(model), seed)
    head = ("language_model." if "text_config" in config else "") + OUTPUT_PROJECTION[spec.language]
    tensors[head][np.setdiff1d(np.arange(len(tensors[head])), words)] = 0.0
    return tensors


def random_weights(
    model: nnx.Module, slots: dict[str, checkpoint.Slot], seed: int, *, fan_in: bool = False
) -> dict[str, np.ndarray]:
    """Every tensor the `slots` of `model` name, at its checkpoint shape: normal(0, STD) drawn from `seed` in
    name order, norm scales 1, biases 0.

    `fan_in`: linear layers' kernels are drawn normal(0, 1/sqrt(in_features)) instead (LeCun's, as our modules
    initialise themselves). 0.02 suits transformers a thousand wide (1/sqrt(1024) = 0.03); at widths near 100 it
    leaves attention near uniform and each residual branch near zero, and a captioner trained from it on the
    synthetic corpus had not learnt to read its image after 600 steps (panda_jax.tasks.captioner_task).
    """
    norms = (nnx.LayerNorm, nnx.RMSNorm)
    norm_scales = {id(node.scale) for _, node in nnx.iter_graph(model) if isinstance(node, norms)}
    linears = (node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Linear)) if fan_in else ()
    kernel_inputs = {id(node.kernel): node.in_features for node in linears}
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in sorted(slots):
        slot = slots[name]
        if id(slot.variable) in norm_scales:
            tensors[name] = np.ones(slot.shape, np.float32)
        elif name.endswith("bias"):
            tensors[name] = np.zeros(slot.shape, np.float32)
        else:
            inputs = kernel_inputs.get(id(slot.variable))
            std = STD if inputs is None else 1.0 / np.sqrt(inputs)
            tensors[name] = rng.normal(0.0, std, slot.shape).astype(np.float32)
    return tensors


def word_ids(tokenizer: Any, language: str) -> list[int]:
    """The ids of the tokens that are whole words of `WORDS`, as a word after a space is written."""
    vocabulary = tokenizer.get_vocab()
    return sorted(vocabulary[WORD_START[language] + word] for word in WORDS)


def train_opt_tokenizer() -> Any:
    """OPT's tokenizer: byte-level BPE (GPT-2's), `</s>` BOS and EOS, `<pad>` 1, every word of `WORDS` one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,  # more than the merges there are: each word becomes one token
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],  # OPT's ids
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([f" {word}" for word in WORDS], trainer)  # words after a space: Ġword
    return GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        add_bos_token=True, padding_side="left",
    )  # fmt: skip


def train_llama_tokenizer() -> Any:
    """LLaMA's tokenizer: BPE with byte fallback (`<0x00>` … `<0xFF>` after `<unk>` `<s>` `</s>`, as LLaMA's),
    ▁ for spaces, `<unk>` as padding (Vicuna's), every word of `WORDS` one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    bpe.train_from_iterator(WORDS, trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    pieces = [*specials, *(f"<0x{byte:02X}>" for byte in range(256))]
    in_order = sorted(trained["vocab"], key=trained["vocab"].get)
    pieces += [piece for piece in in_order if piece not in specials]
    return LlamaTokenizerFast(
        vocab={piece: i for i, piece in enumerate(pieces)}, merges=[tuple(merge) for merge in trained["merges"]],
        add_bos_token=True, pad_token="<unk>",
    )  # fmt: skip


def train_t5_tokenizer() -> Any:
    """T5's tokenizer: a SentencePiece-style Unigram (`<pad>` 0, `</s>` 1, `<unk>` 2, ▁ for spaces, `</s>` appended)
    whose pieces are the words of `WORDS` and single characters, a word always scoring above its letters.

    Built rather than trained: the `tokenizers` Unigram trainer's pieces vary between runs.
    """
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{word}", -1.0) for word in WORDS] + [("▁", -5.0)]
    pieces += [(character, -10.0) for character in string.ascii_letters + string.digits + string.punctuation]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=2))
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )


def train_qformer_tokenizer() -> Any:
    """InstructBLIP's Q-Former tokenizer: BERT's WordPiece (uncased), the words of `WORDS` and BERT's specials."""
    from transformers import BertTokenizerFast

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={word: i for i, word in enumerate(vocabulary)})


TOKENIZERS = {"opt": train_opt_tokenizer, "llama": train_llama_tokenizer, "t5": train_t5_tokenizer}

"""Student training speed: our jitted training step against the same step in PyTorch, in one run.

The student captioner (panda_jax/models/student.py) is what Panda-70M trains for 300K steps, so
its step time is what a training budget is made of. This benchmark times that step as a user
runs it and as a user would otherwise write it:

  * ours: `panda_jax.tasks.student_task` (the model, its loss and trainable filter, as
    `python -m panda_jax.train --config=student` builds them) and `panda_jax.train.make_train_step(task, 1)`
    with optax AdamW on the trainable parameters only, each step fed a pipeline-shaped batch through
    `train.model_inputs` (frames to NCHW) and `sharding.shard_batch`, exactly as the loop does;
  * theirs: the same student in PyTorch from transformers' parts: the checkpoint's `Blip2VisionModel`,
    `Blip2QFormerModel` and `query_tokens`, and `OPTForCausalLM`, frozen with `requires_grad_(False)`;
    two new 2-layer `Blip2QFormerModel`s (video: cross-attends to the frames' query outputs, at the
    Q-Former's width; text: to the prompt, at the language model's width), frame positions, 32 video
    queries, prompt positions and the two projections trainable; the same forward and loss; the step is
    forward, backward and `torch.optim.AdamW` over the trainable parameters, eager, as users write it.

Both sides start from the same weights: a BLIP-2-OPT checkpoint with random weights (built and saved
by transformers) that both load, and our student's own new layers copied into the PyTorch one by
their transformers names. That copy is also the check that the two compute the same thing: the
trainable tensors must match one to one in name and shape, and the first step's loss is printed
for both sides (equal to float32 rounding on a CPU).

Timing: one first step each (ours includes tracing and XLA compilation), one more warm-up step,
then `--repeats` interleaved rounds of `--steps` steps per side (rounds interleave so the load of a
shared machine hits both alike), best round shown as examples/s. Dropout is off on both sides (ours
has none). float32 on a CPU; on a GPU bfloat16 by default (ours: the config's `train.dtype`, matrix
products in bf16 with float32 parameters; theirs: `torch.autocast` bf16).

MFU, printed when JAX's first device is a GPU: model FLOPs per step / step time / the device's peak
dense bf16 FLOP/s (H100 SXM and H200: 989e12; H100 PCIe: 756e12; A100: 312e12). Model FLOPs count
matrix products only (2 per multiply-add; attention's scores and weighted sums included; norms,
softmax, activations and the optimizer left out), per part by what the step computes with it:

  frozen, off the gradient path  (vision encoder and frame Q-Former, per frame)    1 x forward
  trainable  (video and text Q-Formers, projections)                               3 x forward
  the frozen language model, on the gradient path (its input gradients, no weight gradients):
      products with its weights (layers and logits)                                2 x forward
      attention's products of two activations (both need gradients)                3 x forward

so 6 x parameters x tokens, right for a model trained whole, would count this one's frozen parts (75 %
of the parameters at `small`, about 99 % around BLIP-2 OPT-2.7B) three times over. The text
Q-Former's detached queries need no input gradient; they are counted as if they did (a few per mille
over). The same count gives the model TFLOP/s row on a CPU.

    python benchmarks/train_bench.py [--size small|base] [--batch_size B] [--frames T] [--steps 5] [--repeats 3]
    python benchmarks/train_bench.py --size small --batch_size 2 --frames 4     # a few minutes on 2 CPU cores
    python benchmarks/train_bench.py --size small --torch_threads 1             # PyTorch on a shared, loaded CPU

On a CPU that other jobs share, PyTorch's OpenMP threads stall at every operation's barrier while
a core is taken (on the 2-core project VM under load: 8.8 s a step with 2 threads, 0.6 s with 1),
so `--torch_threads 1` gives the fairer peer there; the rounds row shows how much the load moved.

Sizes: `small` (ViT, Q-Former and OPT of 4 layers x 256, vocabulary 8192) runs on a CPU; `base`
(ViT-B/14, the released Q-Former shape: 12 layers x 768, OPT-125m with its 50,272 vocabulary) is for
a GPU; the default is `base` when JAX sees a GPU, else `small`. Always 224-pixel frames, 32 queries,
2-layer video and text Q-Formers; prompts and captions padded to `--prompt_tokens` (200) and
`--caption_tokens` (48), as configs/student.py's recipe pads them.
"""

from __future__ import annotations

import os

# JAX takes 75 % of a GPU's memory when first used; PyTorch needs room beside it in this process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

IMAGE_SIZE, PATCH_SIZE = 224, 14  # BLIP-2's
QUERIES = 32  # BLIP-2's query tokens, and the student's video and text tokens
SIZES = {
    "small": dict(
        vit=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
        qformer=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
        opt=dict(hidden_size=256, ffn_dim=1024, num_hidden_layers=4, num_attention_heads=4, vocab_size=8192),
        batch_size=2, frames=4, steps=5,
    ),
    "base": dict(
        vit=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        opt=dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=50272),
        batch_size=32, frames=8, steps=10,
    ),
}  # fmt: skip
# Peak dense bf16 FLOP/s by a substring of JAX's device_kind, most specific first.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


# --- The checkpoint and the batch -----------------------------------------------------------


def make_checkpoint(size: dict, directory: Path, seed: int) -> dict:
    """A BLIP-2-OPT folder as transformers saves one (random weights from `seed`) with an OPT tokenizer, since
    `student_task` reads the tokenizer beside the weights; its config.json."""
    from panda_jax.teachers.tiny import train_opt_tokenizer

    tokenizer = train_opt_tokenizer()
    if len(tokenizer) > size["opt"]["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the vocabulary")
    config = transformers.Blip2Config(
        vision_config=dict(size["vit"], image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        qformer_config=dict(size["qformer"], vocab_size=30522),
        text_config=dict(size["opt"], model_type="opt", word_embed_proj_dim=size["opt"]["hidden_size"],
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        num_query_tokens=QUERIES,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.Blip2ForConditionalGeneration(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    return json.loads((directory / "config.json").read_text())


def make_batch(batch_size: int, frames: int, prompt_tokens: int, caption_tokens: int, vocab: int, seed: int) -> dict:
    """A batch as the input pipeline yields it: normalised frames [B, T, H, W, 3] and right-padded token ids with
    their masks (lengths drawn per row, so padding and masking are exercised as in training)."""
    rng = np.random.default_rng(seed)

    def tokens(length: int, shortest: int) -> tuple[np.ndarray, np.ndarray]:
        ids = rng.integers(4, vocab, (batch_size, length)).astype(np.int32)
        lengths = rng.integers(min(shortest, length), length + 1, batch_size)
        mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
        return np.where(mask == 1, ids, 1).astype(np.int32), mask  # 1: OPT's pad id

    prompt_ids, prompt_mask = tokens(prompt_tokens, 16)
    caption_ids, caption_mask = tokens(caption_tokens, 8)
    pixels = rng.standard_normal((batch_size, frames, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    return dict(frames=pixels, prompt_ids=prompt_ids, prompt_mask=prompt_mask, caption_ids=caption_ids,
                caption_mask=caption_mask)  # fmt: skip


# --- Ours -----------------------------------------------------------------------------------


def ours(folder: Path, args: argparse.Namespace):
    """(task, optimizer, step function, mesh, config) built as `train.train_and_evaluate` builds them."""
    import optax
    from flax import nnx

    from panda_jax import train
    from panda_jax.cli import load_config
    from panda_jax.models import sharding
    from panda_jax.tasks import student_task

    config = load_config("student:panda70m")
    config.weights_dir, config.checkpoint, config.tiny = str(folder.parent), folder.name, ""
    config.student.update(num_frames=args.frames, num_queries=QUERIES, max_prompt_tokens=args.prompt_tokens)
    config.max_caption_tokens = args.caption_tokens
    config.train.update(batch_size=args.batch_size, num_frames=args.frames, image_size=IMAGE_SIZE, dtype=args.dtype)
    mesh = sharding.make_mesh(**sharding.parse_mesh(config.train.mesh))
    task = student_task(config, mesh)
    recipe = config.train
    adamw = optax.adamw(train.learning_rate_schedule(recipe, recipe.steps), b1=recipe.b1, b2=recipe.b2,
                        weight_decay=recipe.weight_decay)  # fmt: skip
    optimizer = nnx.Optimizer(task.model, adamw, wrt=task.trainable)
    sharding.shard_model(optimizer, mesh)
    return task, optimizer, train.make_train_step(task, 1), mesh, config


# --- Theirs: the same student from transformers' parts --------------------------------------


class TorchStudent(torch.nn.Module):
    """The student of panda_jax/models/student.py in PyTorch: BLIP-2's frozen parts (from a loaded
    `Blip2ForConditionalGeneration`) and the same trainable layers, with the same forward and loss."""

    def __init__(self, blip2: transformers.Blip2ForConditionalGeneration, frames: int, prompt_tokens: int):
        super().__init__()
        self.vision_model, self.qformer, self.language_model = blip2.vision_model, blip2.qformer, blip2.language_model
        self.query_tokens = blip2.query_tokens
        for frozen in (self.vision_model, self.qformer, self.language_model):
            frozen.requires_grad_(False)
        self.query_tokens.requires_grad_(False)
        self.bos = blip2.config.text_config.bos_token_id
        width, language_width = blip2.config.qformer_config.hidden_size, blip2.config.text_config.hidden_size

        def qformer(context_width: int) -> transformers.Blip2QFormerModel:
            config = copy.deepcopy(blip2.config.qformer_config)
            config.num_hidden_layers, config.cross_attention_frequency = 2, 1
            config.encoder_hidden_size, config.use_qformer_text_input = context_width, False
            return transformers.Blip2QFormerModel(config)

        def table(rows: int, columns: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.randn(rows, columns) * 0.02)

        self.frame_position = table(frames, width)
        self.video_queries = table(QUERIES, width)
        self.video_qformer = qformer(width)
        self.video_projection = torch.nn.Linear(width, language_width)
        self.prompt_positions = table(prompt_tokens, language_width)
        self.text_qformer = qformer(language_width)
        self.text_projection = torch.nn.Linear(width, language_width)

    def forward(self, pixel_values, prompt_ids, prompt_mask, caption_ids, caption_mask):
        """(loss, token accuracy), as `student_task`'s loss computes them."""
        clips, frames = pixel_values.shape[:2]
        features = self.vision_model(pixel_values=pixel_values.flatten(0, 1)).last_hidden_state
        queries = self.query_tokens.expand(clips * frames, -1, -1)
        per_frame = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        per_frame = per_frame.view(clips, frames, *per_frame.shape[1:]) + self.frame_position[:frames, None]
        video = self.video_qformer(query_embeds=self.video_queries.expand(clips, -1, -1),
                                   encoder_hidden_states=per_frame.flatten(1, 2)).last_hidden_state  # fmt: skip
        embed = self.language_model.get_input_embeddings()
        prompt = embed(prompt_ids) + self.prompt_positions[: prompt_ids.shape[1]]
        text = self.text_qformer(query_embeds=video.detach(), encoder_hidden_states=prompt,
                                 encoder_attention_mask=prompt_mask).last_hidden_state  # fmt: skip
        bos = embed(torch.full((clips, 1), self.bos, dtype=prompt_ids.dtype, device=prompt_ids.device))
        prefix = torch.cat([bos, self.text_projection(text), self.video_projection(video)], dim=1)
        embeds = torch.cat([prefix, embed(caption_ids)], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=caption_mask.dtype, device=caption_mask.device),
                          caption_mask], dim=1)  # fmt: skip
        logits = self.language_model(inputs_embeds=embeds, attention_mask=mask).logits[:, prefix.shape[1] - 1 : -1]
        weights = caption_mask.float()
        losses = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), caption_ids.flatten().long(),
                                                   reduction="none")  # fmt: skip
        count = weights.sum().clamp(min=1.0)
        loss = (losses * weights.flatten()).sum() / count
        with torch.no_grad():
            accuracy = ((logits.argmax(-1) == caption_ids) * weights).sum() / count
        return loss, accuracy


def copy_trainable(student, theirs: TorchStudent) -> int:
    """Our student's own layers into the PyTorch one, by their transformers names; refuses any tensor that
    is missing, extra or of another shape, so the two trainable sets are the same. Returns their size."""
    from panda_jax.models import checkpoint
    from panda_jax.models.qformer import qformer_slots

    slots = {f"video_qformer.{name}": slot for name, slot in qformer_slots(student.video.qformer, "").items()}
    slots |= {f"text_qformer.{name}": slot for name, slot in qformer_slots(student.text_qformer, "").items()}
    slots |= checkpoint.linear_slots("video_projection", student.video_projection)
    slots |= checkpoint.linear_slots("text_projection", student.text_projection)
    arrays = {name: slot.revert(np.asarray(slot.variable[...])) for name, slot in slots.items()}
    arrays |= {"frame_position": np.asarray(student.video.frame_position[...]),
               "video_queries": np.asarray(student.video.queries.embedding[...]),
               "prompt_positions": np.asarray(student.prompt_positions.embedding[...])}  # fmt: skip
    trainable = {name: p for name, p in theirs.named_parameters() if p.requires_grad}
    if set(arrays) != set(trainable):
        raise SystemExit(f"trainable tensors differ: ours only {sorted(set(arrays) - set(trainable))}, "
                         f"PyTorch only {sorted(set(trainable) - set(arrays))}")  # fmt: skip
    with torch.no_grad():
        for name, parameter in trainable.items():
            if tuple(arrays[name].shape) != tuple(parameter.shape):
                raise SystemExit(f"{name}: ours {arrays[name].shape}, PyTorch {tuple(parameter.shape)}")
            parameter.copy_(torch.from_numpy(np.array(arrays[name], np.float32)))
    return sum(p.numel() for p in trainable.values())


# --- Model FLOPs ----------------------------------------------------------------------------


def dense(tokens: int, n_in: int, n_out: int) -> int:
    return 2 * tokens * n_in * n_out


def attend(queries: int, keys: int, width: int) -> int:
    """Scores and the weighted sum of one attention, all heads."""
    return 4 * queries * keys * width


def qformer_flops(layers: int, q: dict, queries: int, context: int, context_width: int, every: int) -> tuple[int, int]:
    """(products with weights, attention products) of one Q-Former forward over `queries` query tokens."""
    h, ff = q["hidden_size"], q["intermediate_size"]
    weights = layers * (4 * dense(queries, h, h) + 2 * dense(queries, h, ff))
    attention = layers * attend(queries, queries, h)
    for layer in range(0, layers, every):  # cross-attention layers
        weights += 2 * dense(queries, h, h) + 2 * dense(context, context_width, h)
        attention += attend(queries, context, h)
    return weights, attention


def step_flops(config: dict, args: argparse.Namespace) -> dict[str, float]:
    """Model FLOPs of one training step by part, as the module docstring counts them."""
    v, q, t = config["vision_config"], config["qformer_config"], config["text_config"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    tokens, d, ff = patches + 1, v["hidden_size"], v["intermediate_size"]
    vision = dense(patches, 3 * v["patch_size"] ** 2, d) + v["num_hidden_layers"] * (
        4 * dense(tokens, d, d) + 2 * dense(tokens, d, ff) + attend(tokens, tokens, d))  # fmt: skip
    frame_qformer = sum(qformer_flops(q["num_hidden_layers"], q, QUERIES, tokens, d, q["cross_attention_frequency"]))
    frozen = args.batch_size * args.frames * (vision + frame_qformer)
    width, lm_width = q["hidden_size"], t["hidden_size"]
    video = qformer_flops(2, q, QUERIES, args.frames * QUERIES, width, 1)
    text = qformer_flops(2, q, QUERIES, args.prompt_tokens, lm_width, 1)
    trainable = args.batch_size * (sum(video) + sum(text) + 2 * dense(QUERIES, width, lm_width))
    length, layers = 1 + 2 * QUERIES + args.caption_tokens, t["num_hidden_layers"]
    lm_weights = layers * (4 * dense(length, lm_width, lm_width) + 2 * dense(length, lm_width, t["ffn_dim"]))
    lm_weights += dense(length, lm_width, t["vocab_size"])
    lm_attention = layers * attend(length, length, lm_width)
    parts = {"frozen encoders (1x)": frozen, "trainable (3x)": 3 * trainable,
             "language model (2x, 3x)": args.batch_size * (2 * lm_weights + 3 * lm_attention)}  # fmt: skip
    return parts | {"total": sum(parts.values())}


def peak_flops(kind: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16 if name.lower() in kind.lower()), None)


# --- The run --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), help="model size (default: base on a GPU, else small)")
    parser.add_argument("--batch_size", type=int, help="clips per step (default: small 2, base 32)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: small 4, base 8)")
    parser.add_argument("--prompt_tokens", type=int, default=200, help="prompt length, padded (default 200)")
    parser.add_argument("--caption_tokens", type=int, default=48, help="caption length, padded (default 48)")
    parser.add_argument("--steps", type=int, help="steps per timed round (default: small 5, base 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per side; the best is shown (default 3)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (default: bf16 on a GPU)")
    parser.add_argument("--torch_threads", type=int, help="PyTorch's CPU threads (default: all cores, its default)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch seed")
    args = parser.parse_args()

    from panda_jax import train
    from panda_jax.models import sharding

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    jax_device = jax.devices()[0]
    on_gpu = jax_device.platform == "gpu"
    args.size = args.size or ("base" if on_gpu else "small")
    size = SIZES[args.size]
    for name in ("batch_size", "frames", "steps"):
        setattr(args, name, getattr(args, name) or size[name])
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    device = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    peer = device.type == "cuda" or not on_gpu  # PyTorch on a CPU is no peer for JAX on a GPU: ours alone then
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    load = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "blip2"
        config = make_checkpoint(size, folder, args.seed)
        task, optimizer, train_step, mesh, our_config = ours(folder, args)
        blip2 = transformers.Blip2ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
        theirs = TorchStudent(blip2, args.frames, args.prompt_tokens).to(device).eval()  # eval: no dropout
    trainable = copy_trainable(task.model, theirs)
    frozen = sum(p.numel() for p in theirs.parameters() if not p.requires_grad)
    parameters = [p for p in theirs.parameters() if p.requires_grad]
    recipe = our_config.train
    torch_optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, betas=(recipe.b1, recipe.b2),
                                        weight_decay=recipe.weight_decay)  # fmt: skip
    batch = make_batch(args.batch_size, args.frames, args.prompt_tokens, args.caption_tokens,
                       config["text_config"]["vocab_size"], args.seed)  # fmt: skip
    key = jax.random.key(args.seed)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    counter = {"ours": 0}

    def our_steps(count: int) -> float:
        """Seconds for `count` steps as the loop runs them (inputs converted and placed each step)."""
        start = time.perf_counter()
        for _ in range(count):
            counter["ours"] += 1
            inputs = sharding.shard_batch(train.model_inputs(batch), mesh)
            metrics = train_step(task.model, optimizer, inputs, jax.random.fold_in(key, counter["ours"]))
        jax.block_until_ready(metrics)
        counter["loss"] = float(metrics["loss"])
        return time.perf_counter() - start

    def their_steps(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            inputs = {name: torch.from_numpy(value).to(device) for name, value in train.model_inputs(batch).items()}
            with torch.autocast(**autocast):
                loss, _ = theirs(inputs["pixel_values"], inputs["prompt_ids"], inputs["prompt_mask"],
                                 inputs["caption_ids"], inputs["caption_mask"])  # fmt: skip
            loss.backward()
            torch_optimizer.step()
            torch_optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        counter["their loss"] = loss.item()
        return time.perf_counter() - start

    sides = {"theirs": their_steps, "ours": our_steps} if peer else {"ours": our_steps}
    first = {side: steps(1) for side, steps in sides.items()}
    first_loss = f"ours {counter['loss']:.5f}, PyTorch " + (f"{counter['their loss']:.5f}" if peer else "not run")
    for steps in sides.values():
        steps(1)  # warm-up: allocators, caches, the optimizer's first moments
    rounds: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.repeats):
        for side, steps in sides.items():
            rounds[side].append(steps(args.steps))
    step_s = {side: min(seconds) / args.steps for side, seconds in rounds.items()}
    load_after = os.getloadavg()
    flops = step_flops(config, args)
    xla_flops, xla_error = None, "no flops in it"
    try:  # XLA's own count of the traced step, for a check of ours (before its optimisations)
        lowered = train_step.lower(task.model, optimizer, sharding.shard_batch(train.model_inputs(batch), mesh), key)
        analysis = lowered.cost_analysis()
        xla_flops = (analysis[0] if isinstance(analysis, list) else analysis).get("flops")
    except Exception as error:  # noqa: BLE001  (an optional cross-check; its absence is reported)
        xla_flops, xla_error = None, error

    v, q, t = config["vision_config"], config["qformer_config"], config["text_config"]
    print(f"machine: {os.cpu_count()} CPU cores, load average {load[0]:.2f} before, {load_after[0]:.2f} after; "
          f"jax {jax.__version__} on {jax_device.platform} ({jax_device.device_kind}); torch {torch.__version__} "
          f"on {device} ({torch.get_num_threads()} threads); transformers {transformers.__version__}; {args.dtype}")
    print(f"model: student around BLIP-2-OPT, size {args.size}: ViT {v['num_hidden_layers']}x{v['hidden_size']} "
          f"at {IMAGE_SIZE}px/{PATCH_SIZE}, Q-Former {q['num_hidden_layers']}x{q['hidden_size']} with {QUERIES} "
          f"queries, OPT {t['num_hidden_layers']}x{t['hidden_size']} (vocabulary {t['vocab_size']}); video and text "
          f"Q-Formers 2x{q['hidden_size']}; {frozen / 1e6:.1f}M frozen, {trainable / 1e6:.2f}M trainable parameters "
          f"(same tensors on both sides)")  # fmt: skip
    print(f"batch: {args.batch_size} clips x {args.frames} frames, prompt {args.prompt_tokens} and caption "
          f"{args.caption_tokens} tokens (padded), LM sequence {1 + 2 * QUERIES + args.caption_tokens}; "
          f"AdamW on the trainable parameters; best of {args.repeats} rounds of {args.steps} steps")
    print(f"first-step loss (same weights, same batch): {first_loss}\n")
    if not peer:
        print("PyTorch here has no CUDA, so no PyTorch column: a CPU is no peer for a GPU\n")
    rate = {side: args.batch_size / seconds for side, seconds in step_s.items()}
    achieved = {side: flops["total"] / seconds for side, seconds in step_s.items()}

    def row(name: str, values: dict[str, object], form: str, ratio: str = "") -> None:
        cells = [format(values[side], form) if side in values else "-" for side in ("theirs", "ours")]
        print(f"{name:30s} {cells[0]:>12s} {cells[1]:>12s} {ratio:>12s}")

    row("", {"theirs": "PyTorch", "ours": "panda-jax"}, "s", "JAX/PyTorch")
    row("examples/s", rate, ".2f", f"{rate['ours'] / rate['theirs']:.2f}x" if peer else "")
    row("step (s)", step_s, ".3f")
    row("rounds (s)", {side: " ".join(f"{x:.2f}" for x in seconds) for side, seconds in rounds.items()}, "s")
    row("first step (s)", first, ".2f", "ours: trace + compile + run")
    row("model TFLOP/s", {side: value / 1e12 for side, value in achieved.items()}, ".4f")
    peak = peak_flops(jax_device.device_kind) if on_gpu else None
    if peak:
        mfu = {side: value / peak for side, value in achieved.items()}
        row(f"MFU (peak bf16 {peak / 1e12:.0f} TFLOP/s)", mfu, ".1%")
    elif on_gpu:
        print(f"MFU: no peak FLOP/s known for {jax_device.device_kind!r}")
    else:
        print("MFU: not on a GPU (JAX's first device is a CPU)")
    print(f"\nmodel FLOPs per step: {flops['total'] / 1e9:.1f} G = " +
          " + ".join(f"{name} {value / 1e9:.1f} G" for name, value in flops.items() if name != "total"))  # fmt: skip
    if xla_flops:
        print(f"XLA's cost analysis of our traced step (all ops, before optimisation): {xla_flops / 1e9:.1f} G")
    else:
        print(f"XLA's cost analysis: not available ({xla_error})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Model speed: panda-jax's Flax CLIP and BLIP-2-OPT against transformers' PyTorch models.

Both run the same randomly initialised checkpoint (built with transformers, saved, and loaded
into ours) on the same inputs, on this machine, in one run. Measured after warm-up, best of
`--repeats`; our compile time (the first call) is reported on its own line.
  * CLIP image encoding (`get_image_features` / `encode_image`), images/s;
  * BLIP-2-OPT image encoding (vision encoder + Q-Former + projection), images/s;
  * BLIP-2-OPT captioning, greedy and 3-beam, generated tokens/s (the same tokens on both
    sides: the ids are compared).

Sizes: `base` is CLIP ViT-B/16 and BLIP-2 with a ViT-B/14 vision encoder, the released
Q-Former (12 layers, 32 queries) and OPT-125m; `small` is a quick smoke run.

    python benchmarks/models_bench.py [--size base|small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import torch
import transformers

from panda_jax.models import blip2, clip
from panda_jax.models.generation import GenerationConfig
from panda_jax.models.inference import compiled

SIZES = {
    "base": dict(
        vit=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        opt=dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=50272),
        clip_text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        queries=32, images=8, prompts=4, new_tokens=32,
    ),
    "small": dict(
        vit=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3),
        qformer=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3),
        opt=dict(hidden_size=192, ffn_dim=768, num_hidden_layers=4, num_attention_heads=3, vocab_size=5000),
        clip_text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2),
        queries=8, images=4, prompts=2, new_tokens=8,
    ),
}  # fmt: skip
IMAGE_TOKEN = 3  # the image placeholder id in the BLIP-2 prompts below


def best_of(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def timed_first_call(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def ready(x):
    return jax.block_until_ready(x)


def row(name: str, unit: str, amount: int, torch_s: float, ours_s: float) -> None:
    print(
        f"{name:34s} {amount / torch_s:10.1f} {amount / ours_s:10.1f} {unit:9s} {torch_s / ours_s:6.2f}x"
    )


def bench_clip(size: dict, directory: Path, repeats: int) -> None:
    config = transformers.CLIPConfig(
        vision_config=dict(size["vit"], image_size=224, patch_size=16),
        text_config=dict(size["clip_text"], vocab_size=49408, max_position_embeddings=77),
        projection_dim=512,
    )
    reference = transformers.CLIPModel(config).eval()
    reference.save_pretrained(directory)
    ours = clip.load(directory)
    pixels = np.random.default_rng(0).normal(size=(size["images"], 3, 224, 224)).astype(np.float32)

    encode = compiled(ours, "encode_image")
    compile_s = timed_first_call(lambda: ready(encode(pixels)))
    with torch.no_grad():
        expected = reference.get_image_features(torch.from_numpy(pixels)).pooler_output.numpy()
        torch_s = best_of(lambda: reference.get_image_features(torch.from_numpy(pixels)), repeats)
    np.testing.assert_allclose(np.asarray(encode(pixels)), expected, atol=2e-3, rtol=2e-3)
    ours_s = best_of(lambda: ready(encode(pixels)), repeats)
    row(f"CLIP image encoding (batch {size['images']})", "images/s", size["images"], torch_s, ours_s)
    print(f"{'':34s} our compile + first call: {compile_s:.1f} s")


def bench_blip2_opt(size: dict, directory: Path, repeats: int) -> None:
    config = transformers.Blip2Config(
        vision_config=dict(size["vit"], image_size=224, patch_size=14),
        qformer_config=dict(size["qformer"], vocab_size=30522),
        text_config=dict(size["opt"], model_type="opt", word_embed_proj_dim=size["opt"]["hidden_size"],
                         max_position_embeddings=2048, bos_token_id=2, eos_token_id=2, pad_token_id=1),
        num_query_tokens=size["queries"], image_token_index=IMAGE_TOKEN,
    )  # fmt: skip
    reference = transformers.Blip2ForConditionalGeneration(config).eval()
    reference.save_pretrained(directory)
    ours = blip2.load(directory)
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(size["images"], 3, 224, 224)).astype(np.float32)

    encode = compiled(ours, "visual_tokens")
    compile_s = timed_first_call(lambda: ready(encode(pixels)))
    with torch.no_grad():
        torch_s = best_of(lambda: reference.get_image_features(torch.from_numpy(pixels)), repeats)
    ours_s = best_of(lambda: ready(encode(pixels)), repeats)
    row(f"BLIP-2-OPT image encoding (batch {size['images']})", "images/s", size["images"], torch_s, ours_s)
    print(f"{'':34s} our compile + first call: {compile_s:.1f} s")

    prompts = size["prompts"]
    text = rng.integers(10, size["opt"]["vocab_size"], size=(prompts, 8))
    input_ids = np.concatenate([np.full((prompts, size["queries"]), IMAGE_TOKEN), text], axis=1).astype(np.int32)
    images = pixels[:prompts]
    for num_beams in (1, 3):

        def theirs():
            with torch.no_grad():
                return reference.generate(
                    pixel_values=torch.from_numpy(images), input_ids=torch.from_numpy(input_ids).long(),
                    max_new_tokens=size["new_tokens"], num_beams=num_beams, do_sample=False,
                ).numpy()  # fmt: skip

        def mine():
            settings = GenerationConfig(max_new_tokens=size["new_tokens"], num_beams=num_beams)
            return ours.generate(images, input_ids, generation_config=settings)

        compile_s = timed_first_call(mine)
        new = mine()
        expected = theirs()
        same = np.array_equal(new, expected[:, expected.shape[1] - new.shape[1] :])
        torch_s, ours_s = best_of(theirs, repeats), best_of(mine, repeats)
        name = f"BLIP-2-OPT {'greedy' if num_beams == 1 else f'{num_beams}-beam'} ({prompts}×{new.shape[1]} tokens)"
        row(name, "tokens/s", new.size, torch_s, ours_s)
        print(f"{'':34s} our compile + first call: {compile_s:.1f} s; same token ids as transformers: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="base")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    size = SIZES[args.size]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), float32, size {args.size}")  # fmt: skip
    print(f"{'':34s} {'torch':>10s} {'ours':>10s} {'':9s} {'ratio':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_clip(size, Path(tmp) / "clip", args.repeats)
        bench_blip2_opt(size, Path(tmp) / "blip2", args.repeats)


if __name__ == "__main__":
    main()

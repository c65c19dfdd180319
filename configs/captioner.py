"""A captioner trained from scratch: `python -m panda_jax.train --config=captioner[:VARIANT] --workdir DIR`.

The grounded demo's teachers: captioners of the shapes of Panda-70M's teachers, every part
trained from random initialisation on the synthetic corpus (or any `panda70m` TFDS dataset),
each seeing other inputs, and exported as Hugging Face folders the caption stage loads as it
loads released checkpoints (configs/teachers.py: `family` = `captioner.shape`, `frames`,
`side_text` as here, `checkpoint` the exported folder). A word-level tokenizer is trained on the
training clips' captions and prompts first (panda_jax.models.word_tokenizer) and saved beside
the weights.

`captioner` fields:
  shape       blip2 | instructblip | instructblip_video | video_llama | language_model (a teacher family);
  language    the language model: opt or llama (InstructBLIP shapes: llama);
  frames      frames a clip shows it: 1 (image shapes; training picks one of the `train.num_frames`
              the pipeline samples), N (instructblip_video and video_llama, = train.num_frames), 0
              (language_model);
  side_text   its prompt carries the clip's subtitles, title and description (Panda-70M's teacher
              prompt, cut to `side_text` budgets: keep them equal to the caption stage's);
  vision, qformer   config.json fields of the vision encoder and the Q-Former (the image size is
              `train.image_size`), over panda_jax.teachers.tiny's; `num_query_tokens` per frame;
  video       video_llama's video Q-Former: its queries (the language model's visual tokens) and layers;
  text        the language model's sizes (`intermediate_size` is OPT's `ffn_dim`; `num_key_value_heads`
              is LLaMA's); `max_position_embeddings` must hold the placeholders, prompt and caption;
  foundations a panda_jax.foundations folder: the vision encoder and language model (sizes, weights,
              tokenizer) come from it, both frozen (a language model alone is fine-tuned); empty:
              every part from random initialisation at the sizes below, with a word tokenizer;
  frozen      with `foundations`, the parts that stay as pretrained (vision_model, language_model);
  max_prompt_tokens, max_caption_tokens   the training layout (longer prompts are refused, longer
              captions cut); max_words, min_word_count   the tokenizer's vocabulary.

`data` fields (synthetic): `synthetic_videos` 0 trains on the endless stream of fresh videos
(`SyntheticStream`), N > 0 on the events of videos 0 … N-1 held in memory; the
`synthetic_eval_videos` after them are the eval set; `tokenizer_examples` the training clips the
word tokenizer learns its words from (a stream's first ones).

Variants (`tiny_` + a shape variant: the same shape, very small, on the events of 4 synthetic
videos in memory, in well under a minute on a CPU; `tiny` alone is `tiny_image`):
  image            BLIP-2 (LLaMA) on one frame at 64 px: also what the demo's student is built around;
  video            Video-LLaMA (LLaMA) on 8 frames at 64 px: BLIP-2 on every frame, then a video Q-Former
                   that compares them. As InstructBLIP-Video, whose language model reads the frames' query
                   outputs one after another, it never told one action from another (0.16-0.17 after 400 to
                   1,200 steps, seed 0; at 32 px it read no more than at 64: fact F1 0.47 against 0.58);
  text             a LLaMA alone on the side-text prompt (title, description, subtitles);
  image_side_text  InstructBLIP (LLaMA) on one frame at 64 px and the side-text prompt.
"""

import ml_collections

VARIANTS = {  # variant → (shape, language, frames, side_text, image size)
    # around a LLaMA, whose rotary positions let the student (built around this BLIP-2) move the caption after its
    # own prefix: a small OPT trained on one prompt layout ties each learned position to what stood there.
    "image": ("blip2", "llama", 1, False, 64),
    "video": ("video_llama", "llama", 8, False, 64),
    "text": ("language_model", "llama", 0, True, 32),
    "image_side_text": ("instructblip", "llama", 1, True, 64),
}


def get_config(variant: str = "image") -> ml_collections.ConfigDict:
    variant = "tiny_image" if variant == "tiny" else variant
    tiny, name = variant.startswith("tiny_"), variant.removeprefix("tiny_")
    if name not in VARIANTS:
        choices = ", ".join([*VARIANTS, "tiny", *(f"tiny_{known}" for known in VARIANTS)])
        raise ValueError(f"unknown captioner variant {variant!r}; choose from {choices}")
    shape, language, frames, side_text, image_size = VARIANTS[name]
    config = ml_collections.ConfigDict()
    config.model = "captioner"
    config.captioner = ml_collections.ConfigDict(dict(
        shape=shape, language=language, frames=frames, side_text=side_text, num_query_tokens=8, foundations="",
        frozen="vision_model,language_model", video=ml_collections.ConfigDict(dict(
            num_query_tokens=8, num_hidden_layers=2, motion_tokens=True, appearance_tokens=True,
        )),
        vision=ml_collections.ConfigDict(dict(
            patch_size=8, hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        )),
        qformer=ml_collections.ConfigDict(dict(
            hidden_size=192, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
            cross_attention_frequency=1, max_position_embeddings=512,
        )),
        text=ml_collections.ConfigDict(dict(
            hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=512,
        )),
        max_prompt_tokens=256 if side_text else 16, max_caption_tokens=48, max_words=30_000, min_word_count=1,
    ))  # fmt: skip
    config.side_text = ml_collections.ConfigDict(dict(subtitles=256, title=32, description=128))  # as teachers.py
    config.data = ml_collections.ConfigDict(dict(
        source="synthetic", name="panda70m", data_dir="", split="train", eval_split="",
        synthetic_videos=0, synthetic_eval_videos=20, synthetic_seed=0, synthetic_size=64, tokenizer_examples=1_000,
    ))  # fmt: skip
    config.train = ml_collections.ConfigDict(dict(
        num_frames=max(frames, 2), image_size=image_size, crop_scale=(0.8, 1.0), flip_probability=0.0,
        batch_size=32, steps=4_000, epochs=0, learning_rate=5e-4, warmup_init=1e-5, warmup_steps=200,
        end_learning_rate=1e-5, b1=0.9, b2=0.98, weight_decay=0.05, grad_accumulation=1, dtype="float32",
        mesh="data=-1,model=1", fsdp=False, seed=0, log_every=50, eval_every=500, checkpoint_every=500,
        keep_checkpoints=3, workers=0,
    ))  # fmt: skip
    if tiny:
        config.captioner.update(num_query_tokens=2 if shape == "instructblip_video" else 4, max_caption_tokens=32)
        config.captioner.video.update(num_query_tokens=4, num_hidden_layers=1)
        config.captioner.vision.update(patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2)  # fmt: skip
        config.captioner.qformer.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2)  # fmt: skip
        config.captioner.text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2)  # fmt: skip
        config.data.update(synthetic_videos=4, synthetic_eval_videos=1, synthetic_size=32)
        config.train.update(num_frames=4 if frames > 1 else 2, image_size=28, crop_scale=(1.0, 1.0),
                            batch_size=4, steps=40, learning_rate=3e-3, warmup_init=3e-4, warmup_steps=5,
                            end_learning_rate=1e-3, log_every=10, eval_every=20, checkpoint_every=10)  # fmt: skip
        config.captioner.frames = config.train.num_frames if frames > 1 else frames
    config.workdir = ""  # how a run goes, not what it makes
    return config

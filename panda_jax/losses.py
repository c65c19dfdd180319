"""Training losses of the caption-selection retrieval model (Panda-70M's fine-tuned video-text retriever).

The selector must tell the best of a clip's teacher captions from its near-duplicates, which plain
contrastive training barely asks of it: the other captions of a clip are the hard negatives. Panda-70M
therefore weights the contrastive (VTC) softmax: the other captions of the clip count fully, captions of
other clips (easy negatives) only a little. Matching (VTM) trains a binary head on the positive pairs and
on one negative per side drawn by similarity, so its negatives are hard too.

Plain contrastive training from (clip, caption) pairs is the special case with one text per clip and
both weights 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Ceiling of the logit scale, as in CLIP: a larger one makes the softmax too sharp to train.
MAX_LOGIT_SCALE = 100.0
# Added to the logit of a candidate of weight 0. Finite, unlike log(0), so that the softmax gives it
# probability exactly 0 without NaN in values or gradients.
_EXCLUDED = -1e9


def _scaled_logits(similarity: jax.Array, logit_scale: jax.Array | float) -> jax.Array:
    """Similarities times the clamped inverse temperature, in float32."""
    scale = jnp.minimum(jnp.exp(jnp.asarray(logit_scale, jnp.float32)), MAX_LOGIT_SCALE)
    return jnp.asarray(similarity, jnp.float32) * scale


def _log_weight(weight: jax.Array) -> jax.Array:
    """log(weight), with `_EXCLUDED` for 0; the log never sees 0, so its gradient stays finite too."""
    positive = weight > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, weight, 1.0)), _EXCLUDED)


def _weighted_cross_entropy(logits: jax.Array, log_weight: jax.Array, positive: jax.Array) -> jax.Array:
    """Mean over rows of -log(exp(l_pos) / sum_j w_j exp(l_j)); `positive` has weight 1 in `log_weight`."""
    log_normalizer = jax.nn.logsumexp(logits + log_weight, axis=-1)
    positive_logit = jnp.take_along_axis(logits, positive[:, None], axis=-1)[:, 0]
    return jnp.mean(log_normalizer - positive_logit)


def vtc_loss(
    similarity: jax.Array,
    logit_scale: jax.Array | float,
    positive_text: jax.Array,
    text_video: jax.Array,
    *,
    same_clip_weight: jax.Array | float = 1.0,
    other_clip_weight: jax.Array | float = 0.01,
) -> jax.Array:
    """Symmetric video-text contrastive loss with Panda-70M's weighted negatives, a float32 scalar.

    `similarity` [V, N] is the cosine similarity of each video with every text of the batch,
    `positive_text` [V] the chosen text of each video and `text_video` [N] the video each text belongs
    to. The other texts of a video's clip weigh `same_clip_weight` in its softmax, texts and videos of
    other clips `other_clip_weight`; weight 0 leaves a candidate out. Only the chosen texts are
    text→video anchors: a clip's other captions have no video they should win.
    """
    logits = _scaled_logits(similarity, logit_scale)
    positive_text = jnp.asarray(positive_text)
    num_videos, num_texts = logits.shape
    videos = jnp.arange(num_videos)
    same_clip = jnp.asarray(text_video)[None, :] == videos[:, None]
    is_positive = jnp.arange(num_texts)[None, :] == positive_text[:, None]
    same_w = jnp.asarray(same_clip_weight, jnp.float32)
    other_w = jnp.asarray(other_clip_weight, jnp.float32)

    text_weight = jnp.where(is_positive, 1.0, jnp.where(same_clip, same_w, other_w))
    video_to_text = _weighted_cross_entropy(logits, _log_weight(text_weight), positive_text)

    # Row a: the chosen text of video a against every video; its own video is the positive.
    text_logits = logits[:, positive_text].T
    video_weight = jnp.where(videos[:, None] == videos[None, :], 1.0, other_w)
    text_to_video = _weighted_cross_entropy(text_logits, _log_weight(video_weight), videos)
    return (video_to_text + text_to_video) / 2


def vtm_hard_negatives(
    similarity: jax.Array,
    logit_scale: jax.Array | float,
    positive_text: jax.Array,
    text_video: jax.Array,
    rng: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One negative text per video and one negative video per chosen text, drawn ∝ softmax of the logits.

    Sampling by similarity rather than uniformly gives the matching head the confusable pairs, the
    other captions of the clip included. Returns (negative_text [V], negative_video [V]), no gradient.
    Needs V ≥ 2 videos, or a chosen text has no video to be wrong about. `text_video` is unused by the
    draw (every text but the chosen one is a negative) and kept so callers pass one batch layout.
    """
    del text_video
    logits = jax.lax.stop_gradient(_scaled_logits(similarity, logit_scale))
    num_videos, num_texts = logits.shape
    if num_videos < 2:
        raise ValueError(f"hard negative videos need at least 2 videos in the batch, got {num_videos}")
    positive_text = jnp.asarray(positive_text)
    text_rng, video_rng = jax.random.split(rng)
    videos = jnp.arange(num_videos)

    is_positive = jnp.arange(num_texts)[None, :] == positive_text[:, None]
    negative_text = jax.random.categorical(text_rng, jnp.where(is_positive, -jnp.inf, logits), axis=-1)

    text_logits = logits[:, positive_text].T
    own_video = videos[:, None] == videos[None, :]
    negative_video = jax.random.categorical(video_rng, jnp.where(own_video, -jnp.inf, text_logits), axis=-1)
    return negative_text, negative_video


def vtm_pairs(
    positive_text: jax.Array, negative_text: jax.Array, negative_video: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(video_index, text_index, labels), each [3V]: positives, negative texts, negative videos, in that order."""
    positive_text = jnp.asarray(positive_text)
    num_videos = positive_text.shape[0]
    videos = jnp.arange(num_videos, dtype=positive_text.dtype)
    video_index = jnp.concatenate([videos, videos, jnp.asarray(negative_video, positive_text.dtype)])
    text_index = jnp.concatenate([positive_text, jnp.asarray(negative_text, positive_text.dtype), positive_text])
    labels = jnp.concatenate([jnp.ones(num_videos, jnp.int32), jnp.zeros(2 * num_videos, jnp.int32)])
    return video_index, text_index, labels


def vtm_loss(match_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of the (no match, match) head [P, 2] against `labels` [P] (1 = match)."""
    logits = jnp.asarray(match_logits, jnp.float32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)))

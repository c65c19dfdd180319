"""The retrieval losses against values worked out by hand, and the hard-negative sampler against its distribution.

The expected losses are written term by term with `math`, so a slip in the weighting (which candidate
gets which weight, which texts are anchors) shows up as a wrong number rather than agreeing with itself.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from panda_jax import losses

# Two clips of two captions each: texts 0, 1 belong to video 0 and texts 2, 3 to video 1. Video 0's chosen
# caption is its second (text 1), video 1's its first (text 2), so the positives are not on a diagonal.
SIMILARITY = np.array([[0.3, 0.8, -0.2, 0.5], [0.1, 0.4, 0.9, 0.6]], np.float32)
POSITIVE_TEXT = np.array([1, 2], np.int32)
TEXT_VIDEO = np.array([0, 0, 1, 1], np.int32)
e = math.exp

# Jitted once: run op by op, the losses spend seconds compiling every primitive; weights stay traced.
vtc_loss = jax.jit(losses.vtc_loss)
vtm_hard_negatives = jax.jit(losses.vtm_hard_negatives)


def hand_vtc(same: float, other: float) -> float:
    """The tiny case's loss at scale 1, every softmax written out."""
    video0 = -math.log(e(0.8) / (e(0.8) + same * e(0.3) + other * e(-0.2) + other * e(0.5)))
    video1 = -math.log(e(0.9) / (e(0.9) + same * e(0.6) + other * e(0.1) + other * e(0.4)))
    text1 = -math.log(e(0.8) / (e(0.8) + other * e(0.4)))  # column 1: video 0 owns it, video 1 is other
    text2 = -math.log(e(0.9) / (e(0.9) + other * e(-0.2)))  # column 2: video 1 owns it, video 0 is other
    return ((video0 + video1) / 2 + (text1 + text2) / 2) / 2


def vtc(similarity=SIMILARITY, logit_scale=0.0, same_clip_weight=1.0, other_clip_weight=0.01) -> float:
    weights = dict(same_clip_weight=same_clip_weight, other_clip_weight=other_clip_weight)
    return float(vtc_loss(similarity, logit_scale, POSITIVE_TEXT, TEXT_VIDEO, **weights))


@pytest.mark.parametrize("same, other", [(1.0, 0.01), (1.0, 1.0), (0.0, 1.0)])
def test_vtc_loss_matches_hand_computation(same, other):
    assert vtc(same_clip_weight=same, other_clip_weight=other) == pytest.approx(hand_vtc(same, other), abs=1e-6)


def test_hard_negative_weights_change_the_loss():
    panda, plain, ignore_same = hand_vtc(1.0, 0.01), hand_vtc(1.0, 1.0), hand_vtc(0.0, 1.0)
    assert min(abs(panda - plain), abs(panda - ignore_same), abs(plain - ignore_same)) > 1e-2
    default = vtc_loss(SIMILARITY, 0.0, POSITIVE_TEXT, TEXT_VIDEO)
    assert float(default) == pytest.approx(panda, abs=1e-6)  # the defaults are Panda-70M's weights


def test_one_text_per_clip_is_clip_infonce():
    similarity = np.random.default_rng(0).uniform(-1.0, 1.0, (5, 5)).astype(np.float32)
    labels = np.arange(5)

    @jax.jit
    def clip_infonce(logits):
        return (
            optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
        ) / 2

    expected = clip_infonce(similarity * np.float32(7.0))
    actual = vtc_loss(similarity, math.log(7.0), labels, labels, same_clip_weight=1.0, other_clip_weight=1.0)
    assert actual.dtype == jnp.float32 and actual.shape == ()
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_weight_zero_excludes_a_candidate():
    changed = SIMILARITY.copy()
    changed[0, 0] = 0.95  # video 0's other caption, now its most similar text
    assert vtc(changed, same_clip_weight=0.0, other_clip_weight=1.0) == pytest.approx(
        vtc(same_clip_weight=0.0, other_clip_weight=1.0), abs=1e-7
    )

    loss = functools.partial(
        losses.vtc_loss, logit_scale=0.0, positive_text=POSITIVE_TEXT, text_video=TEXT_VIDEO, same_clip_weight=0.0
    )
    grad = np.asarray(jax.jit(jax.grad(loss))(SIMILARITY))
    assert np.isfinite(grad).all()
    assert grad[0, 0] == 0.0 and grad[1, 3] == 0.0  # both same-clip negatives are out
    assert np.abs(grad[0, 1]) > 0  # the positive still pulls

    all_out = vtc_loss(SIMILARITY, 0.0, POSITIVE_TEXT, TEXT_VIDEO, same_clip_weight=0.0, other_clip_weight=0.0)
    assert float(all_out) == pytest.approx(0.0, abs=1e-7)  # nothing left to compete with the positives


def test_logit_scale_is_clamped_at_100():
    similarity = SIMILARITY / 50  # small enough that the loss at scale 100 is far from 0
    at_100 = vtc(similarity, logit_scale=math.log(100.0))
    assert at_100 > 0.05
    assert vtc(similarity, logit_scale=10.0) == pytest.approx(at_100, rel=1e-6)
    assert vtc(similarity, logit_scale=math.log(50.0)) != pytest.approx(at_100, rel=1e-3)


# Three clips of two captions; the chosen caption of video v is text 2v.
SAMPLER_SIMILARITY = np.array(
    [[0.9, 0.5, 0.1, -0.3, 0.4, 0.0], [0.2, -0.1, 0.8, 0.6, 0.3, -0.5], [0.5, 0.0, -0.2, 0.1, 0.7, 0.4]], np.float32
)
SAMPLER_POSITIVE = np.array([0, 2, 4], np.int32)
SAMPLER_TEXT_VIDEO = np.array([0, 0, 1, 1, 2, 2], np.int32)
KEYS = 4000  # draws per test: a frequency's standard error is at most 0.008, far inside the 0.03 allowed


@jax.jit
def sample_many(similarity: jax.Array) -> tuple[jax.Array, jax.Array]:
    # lax.map rather than vmap: the same draws, but XLA compiles the batched sampler several times slower.
    return jax.lax.map(
        lambda rng: losses.vtm_hard_negatives(similarity, 0.0, SAMPLER_POSITIVE, SAMPLER_TEXT_VIDEO, rng),
        jax.random.split(jax.random.key(1), KEYS),
    )


def draw(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Negatives for `KEYS` independent keys: ([KEYS, V] texts, [KEYS, V] videos)."""
    texts, videos = sample_many(similarity)
    return np.asarray(texts), np.asarray(videos)


def softmax_without(row: np.ndarray, excluded: int) -> np.ndarray:
    p = np.exp(row.astype(np.float64))
    p[excluded] = 0.0
    return p / p.sum()


def test_hard_negatives_follow_the_softmax():
    texts, videos = draw(SAMPLER_SIMILARITY)
    assert (texts != SAMPLER_POSITIVE).all()
    assert (videos != np.arange(3)).all()
    for v in range(3):
        text_freq = np.bincount(texts[:, v], minlength=6) / KEYS
        np.testing.assert_allclose(text_freq, softmax_without(SAMPLER_SIMILARITY[v], SAMPLER_POSITIVE[v]), atol=0.03)
        video_freq = np.bincount(videos[:, v], minlength=3) / KEYS
        column = SAMPLER_SIMILARITY[:, SAMPLER_POSITIVE[v]]
        np.testing.assert_allclose(video_freq, softmax_without(column, v), atol=0.03)


def test_overwhelming_hard_negative_is_drawn():
    similarity = SAMPLER_SIMILARITY.copy()
    similarity[0, 1] += 50.0  # video 0's other caption
    similarity[2, 2] += 50.0  # video 2 against video 1's chosen caption
    texts, videos = draw(similarity)
    assert (texts[:, 0] == 1).all()
    assert (videos[:, 1] == 2).all()


def test_hard_negatives_need_two_videos():
    with pytest.raises(ValueError, match="at least 2 videos"):
        vtm_hard_negatives(np.zeros((1, 3), np.float32), 0.0, np.array([0]), np.array([0, 0, 0]), jax.random.key(0))


def test_vtm_pairs_layout():
    video_index, text_index, labels = jax.jit(losses.vtm_pairs)(
        np.array([1, 2, 5], np.int32), np.array([0, 3, 4], np.int32), np.array([2, 0, 1], np.int32)
    )
    np.testing.assert_array_equal(video_index, [0, 1, 2, 0, 1, 2, 2, 0, 1])
    np.testing.assert_array_equal(text_index, [1, 2, 5, 0, 3, 4, 1, 2, 5])
    np.testing.assert_array_equal(labels, [1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert labels.dtype == jnp.int32


def test_vtm_loss_matches_hand_computation():
    match_logits = np.array([[0.0, 2.0], [1.0, -1.0], [0.5, 0.5]], np.float32)
    labels = np.array([1, 0, 0])
    expected = (
        -math.log(e(2.0) / (e(0.0) + e(2.0)))
        - math.log(e(1.0) / (e(1.0) + e(-1.0)))
        - math.log(e(0.5) / (e(0.5) + e(0.5)))
    ) / 3
    assert float(jax.jit(losses.vtm_loss)(match_logits, labels)) == pytest.approx(expected, abs=1e-6)


def test_everything_runs_under_jit():
    loss = vtc_loss(SIMILARITY, 0.0, POSITIVE_TEXT, TEXT_VIDEO)
    assert float(loss) == pytest.approx(hand_vtc(1.0, 0.01), abs=1e-6)
    texts, videos = vtm_hard_negatives(SIMILARITY, 0.0, POSITIVE_TEXT, TEXT_VIDEO, jax.random.key(2))
    assert (np.asarray(texts) != POSITIVE_TEXT).all() and (np.asarray(videos) == [1, 0]).all()
    video_index, text_index, labels = jax.jit(losses.vtm_pairs)(POSITIVE_TEXT, texts, videos)
    assert video_index.shape == text_index.shape == labels.shape == (6,)
    match_logits = np.zeros((6, 2), np.float32)
    assert float(jax.jit(losses.vtm_loss)(match_logits, labels)) == pytest.approx(math.log(2.0), abs=1e-6)

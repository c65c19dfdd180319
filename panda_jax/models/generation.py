"""Greedy and beam-search decoding, jit-compiled end to end, giving transformers' token ids.

`generate` decodes from any language model that follows the protocol below (OPT, LLaMA) and
from T5-style encoder-decoders. The whole loop (prompt pass, then one token per step with a
key/value cache) is one `jax.jit` program: a `lax.while_loop` over fixed-size buffers that
stops as soon as transformers' `generate` would. It is compiled once per model structure,
input shapes and settings, and reused.

Language-model protocol (decoder-only):
- `model.embed(input_ids) -> [batch, t, hidden]`: the token embeddings the first layer reads
  (transformers' `get_input_embeddings()(input_ids)`); `inputs_embeds` are in this space.
- `model.init_cache(batch_size, max_length) -> cache`: a pytree of fixed-size buffers (such as
  `KVCache`) whose array leaves all have the batch as their first axis, plus a scalar `index`,
  the number of positions written.
- `model(input_ids=None, *, inputs_embeds=None, attention_mask=None, positions=None, cache=None)
  -> (logits [batch, t, vocab] float32, cache)`. With a cache, `attention_mask` is
  [batch, max_length], true for the slots holding real tokens (those cached and the t being
  written at `cache.index`), and `positions` [batch, t] are the position ids.
- `model.config` has `vocab_size`, `eos_token_id` and `pad_token_id` (None when absent).
`KVCache`, `init_kv_cache`, `write_kv` and `causal_mask` below are the pieces such a model's
cache and attention mask are made of.
Encoder-decoder protocol (T5): `model.encode(input_ids | inputs_embeds, attention_mask)`,
`model.init_cache(batch_size, max_length, encoder_hidden_states=...)` and
`model.decode(decoder_input_ids, encoder_attention_mask=..., cache=...) -> (logits, cache)`;
`model.config` also has `decoder_start_token_id`.

What transformers does, and so what this does:
- Prompts of a decoder-only model are left-padded (the tokenizer's `padding_side="left"`).
  A right-padded prompt is decoded as transformers decodes it (it only warns): the first new
  token is predicted from the last column, a padding token, and new tokens are numbered on
  from that column's position id. Position ids are `cumsum(attention_mask) - 1`, 0 on padding.
- Greedy: the arg-max token; a row that has produced an EOS token gets `pad_token_id` (EOS
  when no pad token is set) until every row has finished or `max_new_tokens` are made.
- Beam search: log-softmax scores added to each beam's running score, the best
  `max(2, 1 + number of EOS ids) * num_beams` continuations over all beams; those ending in
  EOS among the first `num_beams` become finished hypotheses scored
  `sum of log-probs / generated_length ** length_penalty` (generated length counts the EOS),
  the best `num_beams` others run on; `early_stopping` True stops a prompt once it has
  `num_beams` finished hypotheses, False once no running beam could still beat the worst of
  them at the current length, "never" at the longest possible length (the current one for a
  length_penalty <= 0). The best finished hypothesis of each prompt is returned, shorter ones
  padded with the pad token (with EOS when the pad token id is 0 or unset, as transformers
  fills them).

Returned: the new token ids only, [batch, n] int32 numpy, where n <= max_new_tokens is the
number of tokens transformers would generate. transformers' `generate` returns prompt + new
tokens for decoder-only `input_ids` (only new ones for `inputs_embeds`) and the decoder start
token + new tokens for encoder-decoders, so compare with its output's last n columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

# Added to the score of a candidate that must not be chosen, exactly as transformers does.
_EXCLUDED = -1.0e9


@struct.dataclass
class KVCache:
    """Fixed-size key/value buffers per layer, [batch, max_length, kv_heads, head_dim], and the number of
    positions written."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    index: jax.Array  # int32 scalar


def init_kv_cache(
    num_layers: int, batch_size: int, max_length: int, kv_heads: int, head_dim: int, dtype: Any
) -> KVCache:
    """An empty `KVCache` (zeros, index 0)."""
    zeros = tuple(jnp.zeros((batch_size, max_length, kv_heads, head_dim), dtype) for _ in range(num_layers))
    return KVCache(keys=zeros, values=zeros, index=jnp.zeros((), jnp.int32))


def write_kv(
    keys: jax.Array, values: jax.Array, new_keys: jax.Array, new_values: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The buffers with [batch, t, heads, head_dim] new keys/values written at slots [index, index + t)."""
    start = (0, index, 0, 0)
    return (
        jax.lax.dynamic_update_slice(keys, new_keys.astype(keys.dtype), start),
        jax.lax.dynamic_update_slice(values, new_values.astype(values.dtype), start),
    )


def causal_mask(valid: jax.Array, query_slots: jax.Array) -> jax.Array:
    """[batch, 1, t, slots] boolean attention mask: slot s is seen from query slot q when s <= q and s is valid.

    `valid` [batch, slots] marks real tokens; `query_slots` [t] are the slots of the queries.
    """
    key_slots = jnp.arange(valid.shape[1])
    return (key_slots[None, :] <= query_slots[:, None])[None, None] & valid.astype(bool)[:, None, None, :]


@dataclass(frozen=True)
class GenerationConfig:
    """How captions are decoded: `generate`'s settings, passed as one value (`generate(model, ..., **asdict(config))`).

    Defaults are for captioning: 3 beams, as Panda-70M's student captioner decodes, and up to 30
    new tokens (LAVIS's BLIP-2 default); otherwise transformers' defaults. None: the model config's.
    """

    max_new_tokens: int = 30
    num_beams: int = 3
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None


@dataclass(frozen=True)
class _Settings:
    """Everything static about one decoding: the compiled loop depends on these and on shapes."""

    max_new_tokens: int
    num_beams: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    fill_token_id: int  # what pads finished beam hypotheses
    length_penalty: float
    early_stopping: bool | str


def generate(
    model: nnx.Module,
    *,
    input_ids: jax.Array | np.ndarray | None = None,
    inputs_embeds: jax.Array | np.ndarray | None = None,
    attention_mask: jax.Array | np.ndarray | None = None,
    max_new_tokens: int,
    num_beams: int = 1,
    eos_token_id: int | tuple[int, ...] | list[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> np.ndarray:
    """New token ids [batch, <= max_new_tokens], as transformers' `generate(do_sample=False)` picks them.

    Prompts are `input_ids` or `inputs_embeds` [batch, t, hidden] with `attention_mask`
    [batch, t] (1: real token; None: no padding, where transformers would infer a mask from pad
    tokens in `input_ids`: pass the mask). `num_beams=1` is greedy decoding. EOS and pad ids
    default to the model config's (transformers takes them from the generation config, which
    a checkpoint's `generation_config.json` may change); encoder-decoders start from
    `decoder_start_token_id` (default: the config's).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and num_beams ({num_beams}) must be at least 1")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', not {early_stopping!r}")
    config = model.config
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = () if eos is None else tuple(int(i) for i in np.atleast_1d(eos))
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    if pad is None:  # transformers pads finished rows with the first EOS id
        pad = eos_ids[0] if eos_ids else 0
    # transformers fills beam hypotheses with `pad_token_id or eos_token_id[0]`: EOS when pad is 0.
    fill = (pad or eos_ids[0]) if eos_ids else -1
    settings = _Settings(max_new_tokens, num_beams, eos_ids, int(pad), int(fill), float(length_penalty), early_stopping)

    input_ids = None if input_ids is None else jnp.asarray(input_ids, jnp.int32)
    inputs_embeds = None if inputs_embeds is None else jnp.asarray(inputs_embeds)
    shape = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
    mask = jnp.ones(shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    if mask.shape != shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, the prompt {shape}")
    graphdef, state = nnx.split(model)
    if hasattr(model, "encode"):
        start = config.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
        if start is None:
            raise ValueError("an encoder-decoder needs decoder_start_token_id (the config has none)")
        tokens, lengths = _generate_encoder_decoder(
            graphdef, state, input_ids, inputs_embeds, mask, int(start), settings
        )
    else:
        tokens, lengths = _generate_decoder_only(graphdef, state, input_ids, inputs_embeds, mask, settings)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return tokens[:, : int(lengths.max())]


def _repeat_rows(x: jax.Array | None, times: int) -> jax.Array | None:
    """Every row `times` times in a row (each prompt once per beam), as torch's repeat_interleave."""
    return None if x is None else jnp.repeat(x, times, axis=0)


@partial(jax.jit, static_argnames=("graphdef", "settings"))
def _generate_decoder_only(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: jax.Array | None,
    inputs_embeds: jax.Array | None,
    mask: jax.Array,
    settings: _Settings,
) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    beams, new = settings.num_beams, settings.max_new_tokens
    batch, prompt_length = mask.shape
    # transformers numbers prompt tokens by the running count of real tokens (padding 0), and
    # every new token one past the previous one.
    positions = jnp.where(mask, jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    if beams > 1:
        input_ids, inputs_embeds, mask, positions = (
            _repeat_rows(x, beams) for x in (input_ids, inputs_embeds, mask, positions)
        )
    next_position = positions[:, -1] + 1
    valid = jnp.concatenate([mask, jnp.zeros((batch * beams, new), bool)], axis=1)
    cache = model.init_cache(batch * beams, prompt_length + new)
    logits, cache = model(
        input_ids, inputs_embeds=inputs_embeds, attention_mask=valid, positions=positions, cache=cache
    )

    def step(tokens: jax.Array, context: tuple[jax.Array, Any], count: jax.Array) -> tuple[jax.Array, Any]:
        """Feeds the tokens chosen at step `count - 1`, at slot prompt_length + count - 1."""
        valid, cache = context
        valid = valid.at[:, prompt_length + count - 1].set(True)
        positions = (next_position + count - 1)[:, None]
        logits, cache = model(tokens[:, None], attention_mask=valid, positions=positions, cache=cache)
        return logits[:, -1], (valid, cache)

    decode = _greedy if beams == 1 else _beam_search
    return decode(logits[:, -1], (valid, cache), step, batch, settings)


@partial(jax.jit, static_argnames=("graphdef", "start_token_id", "settings"))
def _generate_encoder_decoder(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: jax.Array | None,
    inputs_embeds: jax.Array | None,
    mask: jax.Array,
    start_token_id: int,
    settings: _Settings,
) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    beams, new = settings.num_beams, settings.max_new_tokens
    batch = mask.shape[0]
    encoded = model.encode(input_ids, inputs_embeds=inputs_embeds, attention_mask=mask)
    if beams > 1:
        encoded, mask = _repeat_rows(encoded, beams), _repeat_rows(mask, beams)
    # The decoder is fed the start token, then every new token but the last: `new` slots.
    cache = model.init_cache(batch * beams, new, encoder_hidden_states=encoded)
    start = jnp.full((batch * beams, 1), start_token_id, jnp.int32)
    logits, cache = model.decode(start, encoder_attention_mask=mask, cache=cache)

    def step(tokens: jax.Array, cache: Any, count: jax.Array) -> tuple[jax.Array, Any]:
        logits, cache = model.decode(tokens[:, None], encoder_attention_mask=mask, cache=cache)
        return logits[:, -1], cache

    decode = _greedy if beams == 1 else _beam_search
    return decode(logits[:, -1], cache, step, batch, settings)


def _is_eos(tokens: jax.Array, eos_token_ids: tuple[int, ...]) -> jax.Array:
    if not eos_token_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(eos_token_ids, tokens.dtype))


Step = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


def _greedy(
    logits: jax.Array, context: Any, step: Step, batch: int, settings: _Settings
) -> tuple[jax.Array, jax.Array]:
    """Arg-max decoding from the prompt's next-token `logits`.

    `step(tokens, context, count)` feeds the tokens chosen at step `count - 1` and returns the
    next-token logits and the updated context (cache and mask). Returns the tokens
    [batch, max_new_tokens] and the number of steps taken (per row, all equal).
    """
    new = settings.max_new_tokens
    first = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    tokens = jnp.full((batch, new), settings.pad_token_id, jnp.int32).at[:, 0].set(first)
    unfinished = ~_is_eos(first, settings.eos_token_ids)

    def keep_going(carry) -> jax.Array:
        count, _, unfinished, _ = carry
        return (count < new) & jnp.any(unfinished)

    def body(carry):
        count, tokens, unfinished, context = carry
        logits, context = step(tokens[:, count - 1], context, count)
        chosen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if settings.eos_token_ids:  # finished rows get the pad token
            chosen = jnp.where(unfinished, chosen, settings.pad_token_id)
        unfinished = unfinished & ~_is_eos(chosen, settings.eos_token_ids)
        return count + 1, tokens.at[:, count].set(chosen), unfinished, context

    count, tokens, _, _ = jax.lax.while_loop(keep_going, body, (jnp.int32(1), tokens, unfinished, context))
    return tokens, jnp.broadcast_to(count, (batch,))


@struct.dataclass
class _Beams:
    """Beam-search state of every prompt: running beams and the best finished hypotheses so far."""

    running_tokens: jax.Array  # [batch, beams, max_new_tokens]
    running_scores: jax.Array  # [batch, beams] summed log-probs
    finished_tokens: jax.Array  # [batch, beams, max_new_tokens]
    finished_scores: jax.Array  # [batch, beams] length-penalised; _EXCLUDED while empty
    finished_lengths: jax.Array  # [batch, beams]
    is_finished: jax.Array  # [batch, beams] bool
    can_improve: jax.Array  # [batch, 1] bool: a running beam may still beat a finished one
    done: jax.Array  # bool scalar: transformers' loop would stop here


def _beam_search(
    logits: jax.Array, context: Any, step: Step, batch: int, settings: _Settings
) -> tuple[jax.Array, jax.Array]:
    """transformers' `_beam_search` (5.24) with static shapes, from the prompt's next-token `logits`.

    `context` (cache and mask) has rows [batch * num_beams, ...]; `step` as in `_greedy`. Returns
    the best finished hypothesis of each prompt [batch, max_new_tokens] and its length [batch].
    """
    beams, new, penalty = settings.num_beams, settings.max_new_tokens, settings.length_penalty
    candidates = max(2, 1 + len(settings.eos_token_ids)) * beams
    # length ** length_penalty for generated lengths 1..new, as transformers computes it (float64, then float32).
    length_divisors = jnp.asarray(np.arange(1, new + 1, dtype=np.float64) ** penalty, jnp.float32)
    early_stop_always = settings.early_stopping is True

    def gather(x: jax.Array, index: jax.Array) -> jax.Array:
        """x[b, index[b, i]] for x [batch, n, ...] and index [batch, k]."""
        return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

    def choose(beam: _Beams, logits: jax.Array, count: jax.Array) -> tuple[_Beams, jax.Array]:
        """Beams and finished hypotheses after choosing token `count`, and the row each running beam came from."""
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, beams, vocab)
        log_probs = (log_probs + beam.running_scores[:, :, None]).reshape(batch, beams * vocab)
        top_scores, top_index = jax.lax.top_k(log_probs, candidates)
        source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        top_tokens = gather(beam.running_tokens, source).at[:, :, count].set(token)
        stops = _is_eos(token, settings.eos_token_ids) | (count + 1 >= new)

        # The best candidates that did not stop run on.
        running = top_scores + stops.astype(jnp.float32) * _EXCLUDED
        keep = jax.lax.top_k(running, beams)[1]
        running_scores, running_source = gather(running, keep), gather(source, keep)

        # Stopped candidates among the first `beams` compete with the finished hypotheses.
        stopped = stops & (jnp.arange(candidates) < beams)[None, :]
        scores = top_scores / length_divisors[count]  # the generated length is count + 1
        all_finished = jnp.all(beam.is_finished, axis=-1, keepdims=True) & early_stop_always
        scores = scores + all_finished.astype(jnp.float32) * _EXCLUDED
        scores = scores + (~beam.can_improve).astype(jnp.float32) * _EXCLUDED
        scores = scores + (~stopped).astype(jnp.float32) * _EXCLUDED
        merged_scores = jnp.concatenate([beam.finished_scores, scores], axis=1)
        best = jax.lax.top_k(merged_scores, beams)[1]
        merged_lengths = jnp.concatenate([beam.finished_lengths, jnp.broadcast_to(count + 1, stops.shape)], axis=1)
        finished_scores = gather(merged_scores, best)
        is_finished = gather(jnp.concatenate([beam.is_finished, stopped], axis=1), best)

        # Could a running beam still beat the worst finished hypothesis?
        best_length = new if settings.early_stopping == "never" and penalty > 0.0 else count + 1
        best_running = running_scores[:, :1] / length_divisors[best_length - 1]
        worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _EXCLUDED)
        can_improve = beam.can_improve & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        open_beams = ~(jnp.all(is_finished) & early_stop_always)
        done = ~(jnp.any(can_improve) & open_beams & ~jnp.all(stops))
        beam = _Beams(
            running_tokens=gather(top_tokens, keep),
            running_scores=running_scores,
            finished_tokens=gather(jnp.concatenate([beam.finished_tokens, top_tokens], axis=1), best),
            finished_scores=finished_scores,
            finished_lengths=gather(merged_lengths, best),
            is_finished=is_finished,
            can_improve=can_improve,
            done=done,
        )
        rows = (running_source + jnp.arange(batch)[:, None] * beams).reshape(-1)
        return beam, rows

    empty = jnp.full((batch, beams, new), settings.fill_token_id, jnp.int32)
    beam = _Beams(
        running_tokens=empty,
        # Only the first beam of each prompt starts live, so that the beams do not all pick the same tokens.
        running_scores=jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(_EXCLUDED),
        finished_tokens=empty,
        finished_scores=jnp.full((batch, beams), _EXCLUDED, jnp.float32),
        finished_lengths=jnp.zeros((batch, beams), jnp.int32),
        is_finished=jnp.zeros((batch, beams), bool),
        can_improve=jnp.ones((batch, 1), bool),
        done=jnp.zeros((), bool),
    )
    beam, rows = choose(beam, logits, jnp.int32(0))

    def reorder(context: Any, rows: jax.Array) -> Any:
        """The cache (and mask) rows of the beams that run on; scalars such as the cache index stay."""
        return jax.tree.map(lambda x: x[rows] if x.ndim else x, context)

    def body(carry):
        count, beam, context = carry
        logits, context = step(beam.running_tokens[:, :, count - 1].reshape(-1), context, count)
        beam, rows = choose(beam, logits, count)
        return count + 1, beam, reorder(context, rows)

    carry = (jnp.int32(1), beam, reorder(context, rows))
    _, beam, _ = jax.lax.while_loop(lambda carry: ~carry[1].done, body, carry)
    return beam.finished_tokens[:, 0], beam.finished_lengths[:, 0]

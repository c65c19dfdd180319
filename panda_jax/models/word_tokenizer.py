"""A word-level tokenizer trained on a caption corpus, for captioners trained from random initialisation.

A captioner learnt from scratch on a small corpus (the synthetic one, say) needs no subword
vocabulary: one token per word and per punctuation mark keeps captions short and every token
meaningful. `train_word_tokenizer` trains it with the `tokenizers` library (a WordLevel model)
and wraps it in transformers' plain fast tokenizer, so that `checkpoint.load_tokenizer` and
`captioner.load_captioner` read the saved folder as they read a released checkpoint's:

- normalised: NFKC, lower case, runs of whitespace made one space, stripped;
- split at spaces (each word after a space written `▁word`, as SentencePiece does) and around
  every punctuation mark, so "cyan-to-red background." is `▁cyan - to - red ▁background .`
  and decoding joins the words with the spaces they had: the normalised text comes back;
- `<pad>` 0, `<unk>` 1, `<s>` 2 (BOS, put before every text, as OPT's and LLaMA's tokenizers
  do), `</s>` 3 (EOS), then the `special_tokens` given (the visual placeholder, for BLIP-2
  shapes), then the words by decreasing count, ties in character order: the same texts give
  the same ids, whatever the order they come in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
WORD_START = "▁"
# What tokenizer_config.json names: transformers' plain fast tokenizer, which `checkpoint.load_tokenizer` imports
# by name (transformers 5 saves its alias, "TokenizersBackend", which only AutoTokenizer resolves, importing torch).
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def train_word_tokenizer(
    texts: Iterable[str], special_tokens: Sequence[str] = (), *, max_words: int = 100_000, min_count: int = 1
) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of `texts` (see the module docstring): at most `max_words` words (the most
    frequent), each seen at least `min_count` times; `special_tokens` follow the four of every tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = [PAD, UNK, BOS, EOS, *special_tokens]
    words = Tokenizer(models.WordLevel(unk_token=UNK))
    words.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    words.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation("isolated"),
    ])  # fmt: skip
    words.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    trainer = trainers.WordLevelTrainer(
        vocab_size=len(specials) + max_words, min_frequency=min_count, special_tokens=specials, show_progress=False
    )
    words.train_from_iterator(texts, trainer)
    bos = (BOS, specials.index(BOS))
    words.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[bos])
    return PreTrainedTokenizerFast(
        tokenizer_object=words, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left",
        clean_up_tokenization_spaces=False,
    )  # fmt: skip


def save_word_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> None:
    """Writes `tokenizer` into `directory` as transformers saves it, under the class name it is loaded by."""
    tokenizer.save_pretrained(directory)
    settings = Path(directory) / "tokenizer_config.json"
    settings.write_text(json.dumps(json.loads(settings.read_text()) | {"tokenizer_class": TOKENIZER_CLASS}, indent=2))

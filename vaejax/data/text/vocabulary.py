"""A word vocabulary with fixed special ids, built from a training split.

Ids: ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3
(:data:`vaejax.types.SPECIAL_TOKENS`), then the words of the training split by
descending count, ties in alphabetical (code point) order, so the same corpus and
settings always give the same ids. Words seen fewer than ``min_count`` times, and those
beyond ``max_vocab`` ids in all, map to ``<unk>``. A corpus that already writes unknown
words as ``<unk>`` (Mikolov's PTB) keeps them as ``<unk>``; the other special names are
reserved and refused in text.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

import numpy as np

from vaejax.types import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID
from vaejax.utils.checks import check_int

MIN_WORDS = 4  # fewer words than this beside the specials: nothing worth modelling
RESERVED = frozenset(SPECIAL_TOKENS) - {SPECIAL_TOKENS[UNK_ID]}


class Vocabulary:
  """Words ↔ ids (module docstring).

  Attributes:
    words: every token string, indexed by id (the 4 specials first).
    counts: each word's count in the training split (0 for the specials).
  """

  def __init__(self, words: Sequence[str], counts: Sequence[int]):
    if tuple(words[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"A vocabulary starts with {SPECIAL_TOKENS}; got {tuple(words[:4])}.")
    if len(set(words)) != len(words):
      raise ValueError("A vocabulary's words must be distinct.")
    self.words = tuple(words)
    self.counts = tuple(int(c) for c in counts)
    self._ids = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def build(cls, sentences: Iterable[Sequence[str]], max_vocab: int | None = None,
            min_count: int = 1, where: str = "the training split") -> Vocabulary:
    """The vocabulary of ``sentences`` (lists of tokens).

    Args:
      sentences: the training split's tokenised sentences.
      max_vocab: at most this many ids in all, the 4 specials included (None = no cap).
      min_count: keep words seen at least this often.
      where: names the text in error messages.

    Raises:
      ValueError: bad settings, or fewer than 4 words would remain.

    >>> vocab = Vocabulary.build([["a", "b", "a"], ["c", "d", "b", "a"], ["e"]])
    >>> vocab.words
    ('<pad>', '<unk>', '<bos>', '<eos>', 'a', 'b', 'c', 'd', 'e')
    >>> vocab.encode(["b", "zebra"]), vocab.to_text([5, 4, 3, 0])
    ([5, 1], 'b a')
    """
    min_count = check_int(min_count, "min_count", minimum=1)
    if max_vocab is not None:
      max_vocab = check_int(max_vocab, "max_vocab", minimum=len(SPECIAL_TOKENS) + MIN_WORDS)
    counts = collections.Counter(w for sentence in sentences for w in sentence)
    counts.pop(SPECIAL_TOKENS[UNK_ID], None)
    ranked = sorted((w for w, c in counts.items() if c >= min_count),
                    key=lambda w: (-counts[w], w))
    if max_vocab is not None:
      ranked = ranked[:max_vocab - len(SPECIAL_TOKENS)]
    if len(ranked) < MIN_WORDS:
      raise ValueError(
          f"The vocabulary of {where} has {len(ranked)} word(s) besides the special tokens "
          f"(min_count={min_count}, max_vocab={max_vocab}; {len(counts)} distinct words "
          f"in all); at least {MIN_WORDS} are needed. Lower min_count, raise max_vocab, or "
          "give more text.")
    return cls(SPECIAL_TOKENS + tuple(ranked),
               (0,) * len(SPECIAL_TOKENS) + tuple(counts[w] for w in ranked))

  def __len__(self) -> int:
    return len(self.words)

  def id(self, word: str) -> int:
    """The id of ``word`` (``<unk>``'s when it is not in the vocabulary)."""
    return self._ids.get(word, UNK_ID)

  def encode(self, tokens: Sequence[str]) -> list[int]:
    """Ids of ``tokens`` (no ``<eos>`` added)."""
    return [self._ids.get(w, UNK_ID) for w in tokens]

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Words of ``ids`` up to the first ``<eos>`` or ``<pad>`` (exclusive); ``<bos>`` skipped."""
    words = []
    for i in np.asarray(list(ids)).reshape(-1).tolist():
      if i in (EOS_ID, PAD_ID):
        break
      if i != BOS_ID:
        words.append(self.words[i] if 0 <= i < len(self.words) else SPECIAL_TOKENS[UNK_ID])
    return words

  def to_text(self, ids: Iterable[int]) -> str:
    """:meth:`decode` joined by spaces."""
    return " ".join(self.decode(ids))

  def __repr__(self) -> str:
    return f"Vocabulary({len(self)} ids: {', '.join(self.words[:8])}, ...)"

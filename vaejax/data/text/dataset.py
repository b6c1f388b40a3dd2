"""Token-sequence datasets: ``text_lines``, ``ptb`` and ``tiny_shakespeare``.

Each split is a list of sentences (one per line); the vocabulary comes from the training
split (:class:`~vaejax.data.text.vocabulary.Vocabulary`); every sentence becomes its word
ids followed by ``<eos>`` (scored), padded with ``<pad>`` = 0 to ``max_length`` tokens.
Batches are ``{"tokens": int32 (B, T), "length": int32 (B,)}`` (:mod:`vaejax.types`),
served by random access exactly as the image datasets' (:mod:`vaejax.data.arrays`): step
``s`` of a run with ``seed`` reads rows ``perm_e[o B : (o + 1) B]``, ``e, o = divmod(s,
N // B)``, with ``perm_e`` drawn from (seed, split, e).

``max_length`` (T) caps the tokens of a sentence, ``<eos>`` included. Longer *training*
sentences are dropped (their number is logged and kept in ``dropped_train``); a longer
held-out (valid or test) sentence is an error naming its line, since evaluating on a
subset or on cut sentences would change the numbers reported. None = the longest
sentence of any split.

``binarize`` is the image datasets' key, accepted so one training config can switch
``data.name``: text takes only its neutral value ``"none"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import logging

from vaejax.data import base, registry
from vaejax.data.mnist import shared_data_dir
from vaejax.data.text import corpus
from vaejax.data.text.vocabulary import RESERVED, Vocabulary
from vaejax.types import EOS_ID, PAD_ID, DataSpec
from vaejax.utils.checks import check_int

SPLITS = ("train", "valid", "test")
SHAKESPEARE_FILENAME = "tinyshakespeare.txt"
PTB_HOW = ("Mikolov's Penn Treebank files ptb.train.txt, ptb.valid.txt and ptb.test.txt are "
           "in data/ of https://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz; pass "
           "the folder holding them as data.path.")
LINES_HOW = ("text_lines reads data.path=DIR holding train.txt, valid.txt and test.txt, one "
             "sentence per line, tokens separated by whitespace, UTF-8.")
SHAKESPEARE_HOW = (
    "Tiny Shakespeare is input.txt of https://github.com/karpathy/char-rnn "
    "(data/tinyshakespeare); pass its path (or its folder, holding "
    f"{SHAKESPEARE_FILENAME}) as data.path, or put it at "
    f"../shared/data/{SHAKESPEARE_FILENAME} (or $VAEJAX_DATA_DIR).")


@dataclasses.dataclass(frozen=True)
class Sentences:
  """One split's tokenised sentences, before the vocabulary.

  Attributes:
    source: the file they come from (for messages).
    lines: ``(line_number, tokens)`` per sentence, line numbers 1-based in ``source``.
    blank_lines: blank lines skipped while reading ``source``.
  """

  source: str
  lines: Sequence[tuple[int, Sequence[str]]]
  blank_lines: int = 0


@dataclasses.dataclass(frozen=True)
class TokenArrays:
  """One split, encoded: ``tokens`` int32 (N, T), ``lengths`` int32 (N,) (scored tokens,
  ``<eos>`` included), ``line_numbers`` int64 (N,) of each sentence in ``source``."""

  tokens: np.ndarray
  lengths: np.ndarray
  line_numbers: np.ndarray
  source: str

  def __len__(self) -> int:
    return int(self.tokens.shape[0])


class TextDataset(base.EpochOrder, base.Dataset):
  """A finite dataset of token sequences (module docstring).

  Attributes:
    vocabulary: the :class:`Vocabulary` of the training split.
    max_length: T, the padded length of every batch.
    dropped_train: training sentences dropped for being longer than T.
    blank_lines: blank lines skipped, per source file.
  """

  image_shape = None  # no images: ``spec`` says what the batches hold

  def __init__(self, name: str, splits: Mapping[str, Sentences], *,
               max_vocab: int | None = None, min_count: int = 1,
               max_length: int | None = None):
    self.name = name
    self.splits = tuple(splits)
    if "train" not in splits:
      raise ValueError(f"{name} needs a 'train' split (the vocabulary comes from it); got "
                       f"{list(splits)}.")
    for split, sentences in splits.items():
      if not sentences.lines:
        raise ValueError(f"{name}/{split} has no sentences: {sentences.source} holds only "
                         f"blank lines ({sentences.blank_lines}) or nothing.")
      _check_reserved(sentences)
    self.vocabulary = Vocabulary.build(
        [tokens for _, tokens in splits["train"].lines], max_vocab, min_count,
        where=f"{name}/train ({splits['train'].source})")
    longest = max(len(t) + 1 for s in splits.values() for _, t in s.lines)
    self.max_length = longest if max_length is None else check_int(
        max_length, "max_length", minimum=2)
    self.blank_lines = {s.source: s.blank_lines for s in splits.values()}
    self._arrays = {split: self._encode(split, s) for split, s in splits.items()}
    logging.info("%s: vocabulary of %d ids, max_length %d; sentences per split %s; blank "
                 "lines skipped %s; %d training sentence(s) longer than max_length dropped.",
                 name, len(self.vocabulary), self.max_length,
                 {k: len(v) for k, v in self._arrays.items()}, self.blank_lines,
                 self.dropped_train)

  def _encode(self, split: str, sentences: Sentences) -> TokenArrays:
    limit = self.max_length
    kept = [(n, t) for n, t in sentences.lines if len(t) + 1 <= limit]
    if split == "train":
      self.dropped_train = len(sentences.lines) - len(kept)
      if not kept:
        raise ValueError(f"{self.name}/train: all {len(sentences.lines)} sentences of "
                         f"{sentences.source} are longer than max_length={limit} tokens "
                         "(<eos> included); raise max_length.")
    elif len(kept) < len(sentences.lines):
      number, tokens = next((n, t) for n, t in sentences.lines if len(t) + 1 > limit)
      raise ValueError(
          f"{sentences.source}, line {number}: a {split} sentence of {len(tokens) + 1} tokens "
          f"(<eos> included) exceeds max_length={limit}; held-out sentences are never dropped "
          f"or cut, so raise max_length to at least the longest one.")
    tokens = np.full((len(kept), limit), PAD_ID, np.int32)
    lengths = np.empty(len(kept), np.int32)
    for row, (_, words) in enumerate(kept):
      tokens[row, :len(words)] = self.vocabulary.encode(words)
      tokens[row, len(words)] = EOS_ID
      lengths[row] = len(words) + 1
    numbers = np.asarray([n for n, _ in kept], np.int64)
    return TokenArrays(tokens, lengths, numbers, sentences.source)

  @property
  def spec(self) -> DataSpec:
    return DataSpec.tokens(len(self.vocabulary), self.max_length)

  def arrays(self, split: str) -> TokenArrays:
    """The encoded sentences of ``split``, in file order (for evaluation over all of it)."""
    return self._arrays[self.check_split(split)]

  def _get_batch(self, split: str, step: int, batch_size: int, seed: int) -> base.Batch:
    arrays = self._arrays[split]
    idx = self.batch_indices(split, step, batch_size, seed)
    return {"tokens": arrays.tokens[idx], "length": arrays.lengths[idx]}

  def __repr__(self) -> str:
    sizes = {s: self.num_examples(s) for s in self.splits}
    return (f"<TextDataset {self.name!r} vocab_size={len(self.vocabulary)} "
            f"max_length={self.max_length} splits={sizes}>")


def _check_reserved(sentences: Sentences) -> None:
  for number, tokens in sentences.lines:
    bad = RESERVED.intersection(tokens)
    if bad:
      raise ValueError(f"{sentences.source}, line {number}: the token(s) {sorted(bad)} are "
                       "reserved for the model's special ids; remove them from the text.")


def _read_split(path: Path, tokenize: Callable[[str], list[str]], how: str) -> Sentences:
  lines, blank = corpus.read_lines(path, how)
  return Sentences(str(path.resolve()), [(n, tokenize(t)) for n, t in lines], blank)


def _check_binarize(name: str, binarize: str) -> None:
  if binarize != "none":
    raise ValueError(f"Dataset {name!r} holds token sequences, which have no pixels to "
                     f"binarise: data.binarize={binarize!r} must be 'none'.")


def _directory(path: str | None, name: str, how: str) -> Path:
  if path is None:
    raise ValueError(f"Dataset {name!r} needs data.path. {how}")
  directory = Path(path)
  if not directory.is_dir():
    raise FileNotFoundError(f"{name}: no folder at {directory.resolve()}. {how}")
  return directory


def _line_files(name: str, pattern: str, how: str, path: str | None, max_vocab: int | None,
                min_count: int, max_length: int | None, binarize: str) -> TextDataset:
  """A dataset of one-sentence-per-line files ``DIR/pattern.format(split)``."""
  _check_binarize(name, binarize)
  directory = _directory(path, name, how)
  splits = {s: _read_split(directory / pattern.format(s), corpus.whitespace_tokens, how)
            for s in SPLITS}
  return TextDataset(name, splits, max_vocab=max_vocab, min_count=min_count,
                     max_length=max_length)


@registry.register("text_lines")
def text_lines(*, path: str | None = None, max_vocab: int | None = None, min_count: int = 1,
               max_length: int | None = None, binarize: str = "none") -> TextDataset:
  """``DIR/{train,valid,test}.txt``, one sentence per line, whitespace tokens."""
  return _line_files("text_lines", "{}.txt", LINES_HOW, path, max_vocab, min_count,
                     max_length, binarize)


@registry.register("ptb")
def ptb(*, path: str | None = None, max_vocab: int | None = None, min_count: int = 1,
        max_length: int | None = None, binarize: str = "none") -> TextDataset:
  """Mikolov's Penn Treebank: ``DIR/ptb.{train,valid,test}.txt`` (not shipped)."""
  return _line_files("ptb", "ptb.{}.txt", PTB_HOW, path, max_vocab, min_count, max_length,
                     binarize)


@registry.register("tiny_shakespeare")
def tiny_shakespeare(*, path: str | None = None, max_vocab: int | None = None,
                     min_count: int = 1, max_length: int | None = None,
                     binarize: str = "none") -> TextDataset:
  """The spoken lines of Tiny Shakespeare, split by line number (:mod:`.corpus`)."""
  _check_binarize("tiny_shakespeare", binarize)
  file = Path(path) if path is not None else shared_data_dir() / SHAKESPEARE_FILENAME
  if file.is_dir():
    file = file / SHAKESPEARE_FILENAME
  lines, blank = corpus.read_lines(file, SHAKESPEARE_HOW)
  spoken = corpus.shakespeare_sentences(lines)
  source = str(file.resolve())
  by_split: dict[str, list] = {s: [] for s in SPLITS}
  for number, text in spoken:
    by_split[corpus.shakespeare_split(number)].append((number, corpus.shakespeare_tokens(text)))
  splits = {s: Sentences(source, by_split[s], blank) for s in SPLITS}
  return TextDataset("tiny_shakespeare", splits, max_vocab=max_vocab, min_count=min_count,
                     max_length=max_length)

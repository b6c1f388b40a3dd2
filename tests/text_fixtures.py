"""Text corpora the tests write, and a Markov chain whose sentences have an exact NLL.

A helper module, not a test file. :class:`MarkovChain` generates sentences word by word:
the first word from ``start``, each next word (or the end of the sentence) from the row
of ``transitions`` of the current word. Sentences longer than ``max_words`` are redrawn,
so the corpus follows the chain *conditioned* on at most ``max_words`` words, and
:meth:`MarkovChain.nll` is exact for that distribution:

    −log p(x | len ≤ L) = −log p(x) + log P(len ≤ L),

with P(len ≤ L) by dynamic programming over the chain. A language model that reaches
below it (beyond noise) sees the token it predicts or scores padding or ``<bos>``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class MarkovChain:
  """Word-level Markov chain over ``words``; column ``len(words)`` of ``transitions`` is
  the end of the sentence."""

  words: tuple[str, ...]
  start: np.ndarray  # (W,) first-word probabilities
  transitions: np.ndarray  # (W, W + 1) next word or end
  max_words: int

  @classmethod
  def random(cls, num_words: int = 6, end_probability: float = 0.25, max_words: int = 10,
             seed: int = 0, concentration: float = 0.3) -> MarkovChain:
    """A random sparse-ish chain (Dirichlet rows), ending each step w.p. ``end_probability``."""
    rng = np.random.default_rng(seed)
    words = tuple(f"w{i}" for i in range(num_words))
    start = rng.dirichlet(np.full(num_words, concentration))
    rows = rng.dirichlet(np.full(num_words, concentration), size=num_words)
    transitions = np.concatenate(
        [(1 - end_probability) * rows, np.full((num_words, 1), end_probability)], axis=1)
    return cls(words, start, transitions, max_words)

  def sample(self, num: int, seed: int) -> list[list[str]]:
    """``num`` sentences (lists of words) of 1..max_words words."""
    rng = np.random.default_rng(seed)
    end = len(self.words)
    sentences = []
    while len(sentences) < num:
      state = rng.choice(end, p=self.start)
      sentence = [state]
      while True:
        state = rng.choice(end + 1, p=self.transitions[state])
        if state == end or len(sentence) > self.max_words:
          break
        sentence.append(state)
      if state == end and len(sentence) <= self.max_words:
        sentences.append([self.words[i] for i in sentence])
    return sentences

  def log_prob_unconditioned(self, sentence: list[str]) -> float:
    """log p(x) under the chain, ending included."""
    index = {w: i for i, w in enumerate(self.words)}
    ids = [index[w] for w in sentence]
    total = np.log(self.start[ids[0]])
    for a, b in zip(ids[:-1], ids[1:]):
      total += np.log(self.transitions[a, b])
    return float(total + np.log(self.transitions[ids[-1], len(self.words)]))

  def log_prob_length_at_most_max(self) -> float:
    """log P(len ≤ max_words): forward recursion over the word distribution per position."""
    end = len(self.words)
    mass = self.start.copy()  # P(word at position n, not ended yet), n = 1
    total = 0.0
    for _ in range(self.max_words):
      total += float(mass @ self.transitions[:, end])
      mass = mass @ self.transitions[:, :end]
    return float(np.log(total))

  def nll(self, sentence: list[str]) -> float:
    """Exact −log p(x | len ≤ max_words) in nats."""
    return -self.log_prob_unconditioned(sentence) + self.log_prob_length_at_most_max()


def write_text_lines(directory: Path, splits: dict[str, list[list[str]] | str]) -> Path:
  """Writes ``DIR/{split}.txt`` (sentences joined by spaces, or raw text) for ``text_lines``."""
  directory.mkdir(parents=True, exist_ok=True)
  for split, content in splits.items():
    text = content if isinstance(content, str) else "".join(
        " ".join(s) + "\n" for s in content)
    (directory / f"{split}.txt").write_text(text, encoding="utf-8")
  return directory

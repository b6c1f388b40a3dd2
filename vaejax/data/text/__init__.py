"""Token-sequence datasets (``text_lines``, ``ptb``, ``tiny_shakespeare``), registered in
:mod:`vaejax.data.registry`; batches ``{"tokens", "length"}`` (:mod:`vaejax.types`).

>>> from vaejax import data
>>> ds = data.load({"name": "tiny_shakespeare", "max_vocab": 5000})   # doctest: +SKIP
>>> batch = ds.get_batch("train", step=0, batch_size=32, seed=0)      # doctest: +SKIP
>>> ds.vocabulary.to_text(batch["tokens"][0])                         # doctest: +SKIP
"""

from vaejax.data.text import corpus
from vaejax.data.text.dataset import (
    SPLITS, Sentences, TextDataset, TokenArrays, ptb, text_lines, tiny_shakespeare)
from vaejax.data.text.vocabulary import Vocabulary

__all__ = ["SPLITS", "Sentences", "TextDataset", "TokenArrays", "Vocabulary", "corpus", "ptb",
           "text_lines", "tiny_shakespeare"]

"""Token-sequence datasets (``text_lines``, ``ptb``, ``tiny_shakespeare``), registered in
:mod:`vaejax.data.registry`; batches ``{"tokens", "length"}`` (:mod:`vaejax.types`).

``data.load({"name": "tiny_shakespeare", "max_vocab": 5000})`` reads the shared file; a
dataset can also be built from sentences in memory:

>>> from vaejax.data.text import Sentences, TextDataset
>>> lines = [(1, "a b c".split()), (2, "b c d".split()), (3, "a d".split())]
>>> ds = TextDataset("toy", {s: Sentences("memory", lines) for s in ("train", "test")})
>>> ds.spec
DataSpec(kind='tokens', image_shape=None, num_classes=None, vocab_size=8, max_length=4)
>>> batch = ds.get_batch("train", step=0, batch_size=2, seed=0)
>>> batch["tokens"].shape, ds.vocabulary.to_text(ds.arrays("train").tokens[0])
((2, 4), 'a b c')
"""

from vaejax.data.text import corpus
from vaejax.data.text.dataset import (
    SPLITS,
    Sentences,
    TextDataset,
    TokenArrays,
    ptb,
    text_lines,
    tiny_shakespeare,
)
from vaejax.data.text.vocabulary import Vocabulary

__all__ = ["SPLITS", "Sentences", "TextDataset", "TokenArrays", "Vocabulary", "corpus", "ptb",
           "text_lines", "tiny_shakespeare"]

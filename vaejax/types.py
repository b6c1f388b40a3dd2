"""The data contracts every part of vaejax shares: batches, data specs and model outputs.

A batch is a dict of arrays, of one of two families:

* images: ``"image"``: float32, NHWC, values in [0, 1] (dSprites and binarised data in
  {0, 1}); ``"label"`` (optional): int32 ``(B,)`` class labels; ``"factors"``
  (optional): int32 ``(B, K)`` ground-truth factor classes.
* token sequences: ``"tokens"``: int32 ``(B, T)`` with T = the dataset's ``max_length``
  (one shape, so one compiled program), each row a sentence's word ids, then
  :data:`EOS_ID` (scored like a word), then :data:`PAD_ID` up to T; ``"length"``: int32
  ``(B,)``, the number of scored tokens of each row (words + 1 for ``<eos>``). ``tokens``
  is the *target* sequence; a decoder's input, ``<bos>`` followed by ``tokens[:, :-1]``,
  is built inside the model, so the batch stays two arrays.

Special token ids, fixed for every vocabulary: ``<pad>`` = 0, ``<unk>`` = 1,
``<bos>`` = 2, ``<eos>`` = 3; words follow from 4 on.

A dataset describes its batches with a :class:`DataSpec` (``dataset.spec``), from which a
model is built (``vaejax.models.create_model(config, spec)``) and initialised
(:func:`example_batch`).

A model's forward pass returns a :class:`VAEOutput` holding distribution parameters,
never a loss; :mod:`vaejax.objectives` turns it into one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Batch = dict[str, Any]

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")  # indexed by their ids
IMAGES, TOKENS = "images", "tokens"


class DataSpec(NamedTuple):
  """What a dataset's batches hold: enough to build and initialise a model for them.

  Build one with :meth:`images` or :meth:`tokens`.

  Attributes:
    kind: :data:`IMAGES` or :data:`TOKENS`.
    image_shape: (H, W, C) of image batches, else None.
    num_classes: number of label classes of image batches with labels, else None.
    vocab_size: V, the number of token ids (specials included) of token batches, else None.
    max_length: T, the padded length of token batches, else None.
  """

  kind: str
  image_shape: tuple[int, int, int] | None = None
  num_classes: int | None = None
  vocab_size: int | None = None
  max_length: int | None = None

  @classmethod
  def images(cls, image_shape: Any, num_classes: int | None = None) -> DataSpec:
    return cls(IMAGES, image_shape=tuple(int(d) for d in image_shape),
               num_classes=None if num_classes is None else int(num_classes))

  @classmethod
  def tokens(cls, vocab_size: int, max_length: int) -> DataSpec:
    return cls(TOKENS, vocab_size=int(vocab_size), max_length=int(max_length))

  def describe(self) -> str:
    """A short phrase for error messages."""
    if self.kind == TOKENS:
      return f"token sequences (vocab_size={self.vocab_size}, max_length={self.max_length})"
    labels = "" if self.num_classes is None else f", num_classes={self.num_classes}"
    return f"images (image_shape={self.image_shape}{labels})"


def example_batch(spec: DataSpec, batch_size: int = 1) -> dict[str, Array]:
  """A valid batch of zeros of ``spec``'s family, for initialising a model's parameters.

  Images: ``"image"`` zeros (and ``"label"`` zeros when the data has labels). Tokens:
  every row the empty sentence, ``<eos>`` then padding, ``"length"`` 1.
  """
  if spec.kind == TOKENS:
    tokens = jnp.zeros((batch_size, spec.max_length), jnp.int32).at[:, 0].set(EOS_ID)
    return {"tokens": tokens, "length": jnp.ones((batch_size,), jnp.int32)}
  if spec.kind != IMAGES:
    raise ValueError(f"Unknown DataSpec kind {spec.kind!r}; expected {IMAGES!r} or {TOKENS!r}.")
  batch = {"image": jnp.zeros((batch_size, *spec.image_shape), jnp.float32)}
  if spec.num_classes is not None:
    batch["label"] = jnp.zeros((batch_size,), jnp.int32)
  return batch


class VAEOutput(NamedTuple):
  """Parameters of q(z|x), the sample z, p(x|z) and, optionally, a learned prior.

  Attributes:
    mean: posterior means, ``(B, d)``. Hierarchical models concatenate all levels; a
      model without a latent (a language model) has d = 0, so its KL is 0.
    log_var: posterior log-variances, same shape as ``mean``.
    z: the reparameterised sample ``mean + exp(log_var / 2) * eps``, same shape.
    likelihood: parameters of p(x|z), e.g. ``{"logits": (B, H, W, C)}`` for a
      Bernoulli decoder, ``{"mean": ..., "log_var": ...}`` for a Gaussian one, or
      ``{"categorical_logits": (B, T, V)}`` for a decoder over token sequences.
    prior_mean: means of p(z) when the prior is not N(0, I) (hierarchical models:
      the top-down prior of each level), else None.
    prior_log_var: log-variances of that prior, else None.
  """

  mean: Array
  log_var: Array
  z: Array
  likelihood: dict[str, Array]
  prior_mean: Array | None = None
  prior_log_var: Array | None = None

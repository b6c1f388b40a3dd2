"""The random streams of a run: every key is ``fold_in(PRNGKey(seed), STREAM)``.

A model's initialisation, training samples, evaluation samples and figures each draw
from their own stream of its seed, so none is ever reused and a model's numbers depend
on its seed alone (not on which other models share its program). Held-out data of
procedural datasets come from :data:`EVAL_DATA` of :data:`EVAL_DATA_SEED`: a property of
the data, the same for every model.
"""

from __future__ import annotations

import jax

INIT, SAMPLE, EVAL_DATA, EVAL_SAMPLE, FIGURES = range(5)
EVAL_DATA_SEED = 0


def stream_key(seed, stream: int) -> jax.Array:
  """``fold_in(PRNGKey(seed), stream)``: the raw key of one stream of a model (jit-safe)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), stream)

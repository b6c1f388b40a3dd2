"""The ``elbo`` evaluator: held-out ELBO terms of every model of a stack.

Logs ``eval/elbo``, ``eval/recon``, ``eval/kl``, ``eval/kl_per_dim``,
``eval/bits_per_dim`` (−ELBO in bits per data dimension), ``eval/active_units``
(Burda et al.) and ``eval/num_examples``, over the fixed held-out batches, with one
posterior sample per example from the model's own eval key stream. Sequence models read
their batches' ``"tokens"`` and log no bits/dim (the ``text`` evaluator scores them
per token).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vaejax import objectives, rng
from vaejax.evaluation import likelihood
from vaejax.evaluation.evaluators.base import Evaluator, Setup, Stack
from vaejax.evaluation.evaluators.registry import register
from vaejax.models import codec


@functools.lru_cache(maxsize=64)
def make_elbo_fn(model: Any, conditional: bool) -> Callable:
  """``(params, seed, batch, index) -> per-example terms`` with the model's eval key.

  Returns ``recon``, ``kl``, ``elbo`` (B,), ``kl_per_dim`` (B, d) of one sample
  z ~ q(z|x) drawn with ``fold_in(stream_key(seed, EVAL_SAMPLE), index)``, and the
  posterior ``mean`` (B, d) for active units.
  """

  data_key = codec.data_key(model)

  def fn(params, seed, batch, index):
    key = jax.random.fold_in(rng.stream_key(seed, rng.EVAL_SAMPLE), index)
    x = batch[data_key]
    labels = batch["label"] if conditional else None
    outputs = model.apply({"params": params}, x, labels, rngs={"sample": key})
    return {**objectives.elbo_terms(x, outputs), "mean": outputs.mean}

  return fn


def summarize_elbo(chunks: Sequence[Mapping[str, Any]], num_dims: int | None
                   ) -> dict[str, Any]:
  """Mean ``elbo``, ``recon``, ``kl``, ``kl_per_dim``, ``bits_per_dim`` (−ELBO in bits per
  data dimension; not for ``num_dims`` None: token data), ``active_units`` (Burda et al.)
  and ``num_examples`` over all examples of ``chunks`` (outputs of :func:`make_elbo_fn`)."""
  cat = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
  elbo = float(np.mean(cat["elbo"]))
  summary = {
      "elbo": elbo,
      "recon": float(np.mean(cat["recon"])),
      "kl": float(np.mean(cat["kl"])),
      "kl_per_dim": np.mean(cat["kl_per_dim"], axis=0).tolist(),
      "bits_per_dim": None if num_dims is None else float(objectives.bits_per_dim(-elbo,
                                                                                 num_dims)),
      "active_units": int(likelihood.active_units(cat["mean"])),
      "num_examples": int(cat["elbo"].shape[0]),
  }
  return {k: v for k, v in summary.items() if v is not None}


def evaluate_elbo(stack: Stack, setup: Setup, fn: Callable) -> list[dict[str, Any]]:
  """Per model, :func:`summarize_elbo` over the held-out batches (``fn`` from
  :func:`make_elbo_fn`, built once so rounds reuse the compiled program)."""
  per_model: list[list[dict]] = [[] for _ in setup.seeds]
  for index, batch in enumerate(setup.held_out()):
    for m, out in enumerate(stack.map_models(fn, batch, np.uint32(index))):
      per_model[m].append(out)
  return [summarize_elbo(chunks, setup.num_dims) for chunks in per_model]


@register("elbo")
class ElboEvaluator(Evaluator):
  """Held-out ELBO terms of every model (one vmapped program per chunk of models)."""

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    self._fn = make_elbo_fn(setup.model, setup.conditional)

  def evaluate(self, stack, step):
    return evaluate_elbo(stack, self.setup, self._fn)

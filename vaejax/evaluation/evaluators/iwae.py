r"""The ``iwae`` evaluator: importance-weighted NLL of every model (``likelihood.json``).

:math:`\log \hat p_K(x) = \operatorname{logsumexp}_k \log w_k - \log K` with K =
``num_samples`` (:func:`vaejax.evaluation.likelihood.iwae_log_likelihood`, chunked over
samples so K = 5000 fits), the ELBO, their gap, bits/dim, active units, KL per dimension
and the collapse report (per level for hierarchical models). Sequence models read their
batches' ``"tokens"`` and have no bits/dim (the ``text`` evaluator is theirs: the whole
split, perplexity, MI).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vaejax import objectives
from vaejax.evaluation import likelihood
from vaejax.evaluation.evaluators.base import (
  Array,
  Evaluator,
  config_int,
  held_out_split,
  track,
  write_json,
)
from vaejax.evaluation.evaluators.registry import register
from vaejax.models import codec


@functools.lru_cache(maxsize=32)
def make_iwae_fn(model: Any, num_samples: int, chunk: int) -> Callable:
  """``(params, seed, x, labels, key) -> per-example IWAE bound, ELBO, KL per dim, mean``."""

  def fn(params, seed, x, labels, key):
    del seed  # the importance samples' keys are the evaluator's, not the model's
    iwae_key, elbo_key = jax.random.split(key)

    def sample_outputs(k):
      return model.apply({"params": params}, x, labels, rngs={"sample": k})

    iwae = likelihood.iwae_log_likelihood(sample_outputs, x, iwae_key, num_samples, chunk)
    # KL to the prior of one sample path (per level: the top-down prior given the
    # sampled levels above), as the training objective sees it.
    terms = objectives.elbo_terms(x, sample_outputs(elbo_key))
    mean, _ = codec.encode(model, params, x, labels)
    return {"iwae": iwae, "elbo": terms["elbo"], "kl_per_dim": terms["kl_per_dim"],
            "mean": mean}

  return fn


@register("iwae")
class IwaeEvaluator(Evaluator):
  """Importance-weighted NLL of every model on the held-out batches (``likelihood.json``).

  Models run one at a time (K samples × batch dominate memory); the samples' keys come
  from the evaluator's ``seed``, the same for every model. The per-example bounds (for
  paired comparisons of models on the same examples) go to the file only.
  """

  RESULTS_FILE = "likelihood.json"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    where = f"evals.{name}"
    self.num_samples = config_int(group, "num_samples", where)
    self.chunk_size = config_int(group, "chunk_size", where)
    self.max_examples = config_int(group, "max_examples", where, minimum=0)
    self.seed = config_int(group, "seed", where, minimum=0)
    self._fn = make_iwae_fn(setup.model, self.num_samples, self.chunk_size)

  def _batches(self) -> list[tuple[Array, Array | None]]:
    out, seen = [], 0
    data_key = codec.data_key(self.setup.model)
    for batch in self.setup.held_out():
      if self.max_examples and seen >= self.max_examples:
        break
      x = np.asarray(batch[data_key])
      labels = np.asarray(batch["label"]) if self.setup.conditional else None
      if self.max_examples and seen + x.shape[0] > self.max_examples:
        keep = self.max_examples - seen
        x, labels = x[:keep], None if labels is None else labels[:keep]
      out.append((x, labels))
      seen += x.shape[0]
    return out

  def evaluate(self, stack, step):
    key = jax.random.key(self.seed)
    batches = self._batches()
    per_model: list[list[dict]] = [[] for _ in self.setup.seeds]
    start = time.perf_counter()
    for i, (x, labels) in enumerate(track(batches, f"IWAE K={self.num_samples}")):
      outs = stack.map_models(self._fn, x, labels, jax.random.fold_in(key, i), batched=False)
      for m, out in enumerate(outs):
        per_model[m].append(out)
    seconds = (time.perf_counter() - start) / max(len(per_model), 1)
    rows = []
    for m, chunks in enumerate(per_model):
      row = {"step": step, **self._summary(chunks), "seconds": seconds}
      per_example = np.concatenate([np.asarray(c["iwae"]) for c in chunks]).tolist()
      write_json(self.setup.model_dirs[m] / self.RESULTS_FILE,
                 {**row, "iwae_per_example": per_example})
      rows.append({k: v for k, v in row.items() if k != "step"})
    return rows

  def _summary(self, chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cat = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
    setup = self.setup
    iwae_nll = -float(np.mean(cat["iwae"]))
    elbo_nll = -float(np.mean(cat["elbo"]))
    kl_per_dim = np.mean(cat["kl_per_dim"], axis=0)
    n = cat["iwae"].shape[0]
    bits = {} if setup.num_dims is None else {
        "iwae_bits_per_dim": float(objectives.bits_per_dim(iwae_nll, setup.num_dims)),
        "elbo_bits_per_dim": float(objectives.bits_per_dim(elbo_nll, setup.num_dims))}
    return {
        "model": setup.config.model.name,
        "dataset": setup.config.data.name,
        "split": held_out_split(setup.dataset, setup.config.eval.split),
        "num_examples": int(n),
        "num_importance_samples": self.num_samples,
        "iwae_nll": iwae_nll,
        "iwae_nll_stderr": float(np.std(cat["iwae"], ddof=1) / math.sqrt(n)) if n > 1
                           else math.nan,
        "elbo_nll": elbo_nll,
        "gap": elbo_nll - iwae_nll,
        **bits,
        "active_units": int(likelihood.active_units(cat["mean"])),
        "latent_dim": int(cat["mean"].shape[1]),
        "kl": float(kl_per_dim.sum()),
        "kl_per_dim": kl_per_dim.tolist(),
        "collapse": likelihood.collapse_report(
            kl_per_dim, getattr(setup.model, "latent_groups", None)),
    }


def format_likelihood_table(results: Mapping[str, Any]) -> str:
  """A short markdown table of one model's :class:`IwaeEvaluator` results."""
  k = results["num_importance_samples"]
  data = (f"{results['model']} on {results['dataset']} ({results['split']}, "
          f"{results['num_examples']} examples)")
  rows = [
      ("model / data", data),
      (f"NLL, IWAE K={k} (nats)", f"{results['iwae_nll']:.2f} ± {results['iwae_nll_stderr']:.2f}"),
      ("NLL, −ELBO (nats)", f"{results['elbo_nll']:.2f}"),
      ("ELBO − IWAE gap (nats)", f"{results['gap']:.2f}"),
      ("bits/dim (IWAE)", f"{results['iwae_bits_per_dim']:.4f}"
                          if "iwae_bits_per_dim" in results else "—"),
      ("KL (nats)", f"{results['kl']:.2f}"),
      ("active units", f"{results['active_units']} / {results['latent_dim']}"),
      ("collapsed dims (< 0.01 nats)", str(results["collapse"]["num_collapsed"])),
  ]
  if "kl_per_group" in results["collapse"]:
    levels = ", ".join(f"{v:.2f}" for v in results["collapse"]["kl_per_group"])
    rows.append(("KL per level, level 1 first (nats)", levels))
  lines = ["| quantity | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
  return "\n".join(lines)

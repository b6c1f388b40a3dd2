"""Likelihood evaluation of a trained run: IWAE NLL, ELBO, active units, KL per dim/level.

``evaluate_workdir(workdir)`` restores the newest checkpoint of a training run and
evaluates its held-out split; ``python -m experiments.evaluate --workdir=DIR`` calls it and
writes ``DIR/likelihood.json`` plus a short markdown table.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vaejax import objectives, train
from vaejax.evaluation import likelihood

RESULTS_FILE = "likelihood.json"


def _labels(run: train.Run, batch: dict) -> Any:
  return batch["label"] if run.conditional else None


def evaluate_run(
    run: train.Run,
    params: Any,
    *,
    num_samples: int = 1000,
    chunk_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
  """IWAE and ELBO statistics of ``params`` on the run's held-out batches.

  Args:
    run: a :class:`vaejax.train.Run` (model, dataset, eval split).
    params: the model parameters.
    num_samples: K importance samples per example (K = 1 is the ELBO).
    chunk_size: importance samples evaluated at once (memory ∝ chunk × batch).
    max_examples: evaluate at most this many held-out examples (None = all of
      ``run.eval_batches()``).
    seed: PRNG seed of the importance samples.

  Returns:
    A JSON-able dict: ``iwae_nll`` and ``elbo_nll`` (nats per example, mean), their
    bits/dim, the ``gap`` (ELBO NLL − IWAE NLL ≥ 0 on average), ``active_units``,
    ``kl_per_dim``, the collapse report (per level for hierarchical models), counts.
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples (K) must be an int >= 1, got {num_samples!r}.")
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be >= 1 or None, got {max_examples!r}.")
  model = run.model

  @jax.jit
  def evaluate_batch(params, x, labels, key):
    iwae_key, elbo_key = jax.random.split(key)

    def sample_outputs(k):
      return model.apply({"params": params}, x, labels, rngs={"sample": k})

    iwae = likelihood.iwae_log_likelihood(sample_outputs, x, iwae_key, num_samples, chunk_size)
    outputs = sample_outputs(elbo_key)
    # KL to the prior of one sample path (per level: the top-down prior given the
    # sampled levels above), as the training objective sees it.
    terms = objectives.elbo_terms(x, outputs)
    mean, _ = model.apply({"params": params}, x, labels, method="encode")
    return {"iwae": iwae, "elbo": terms["elbo"], "kl_per_dim": terms["kl_per_dim"], "mean": mean}

  key = jax.random.key(seed)
  chunks, seen, start = [], 0, time.perf_counter()
  for i, batch in enumerate(run.eval_batches()):
    if max_examples is not None and seen >= max_examples:
      break
    x, labels = batch["image"], _labels(run, batch)
    if max_examples is not None and seen + x.shape[0] > max_examples:
      keep = max_examples - seen
      x = x[:keep]
      labels = None if labels is None else labels[:keep]
    chunks.append(jax.device_get(evaluate_batch(params, x, labels, jax.random.fold_in(key, i))))
    seen += x.shape[0]
  cat = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
  num_dims = run.num_dims
  iwae_nll = -float(np.mean(cat["iwae"]))
  elbo_nll = -float(np.mean(cat["elbo"]))
  kl_per_dim = np.mean(cat["kl_per_dim"], axis=0)
  groups = getattr(model, "latent_groups", None)
  return {
      "model": run.config.model.name,
      "dataset": run.config.data.name,
      "split": run.eval_split,
      "num_examples": int(cat["iwae"].shape[0]),
      "num_importance_samples": num_samples,
      "iwae_nll": iwae_nll,
      "iwae_nll_stderr": float(np.std(cat["iwae"], ddof=1) / math.sqrt(cat["iwae"].shape[0])),
      "elbo_nll": elbo_nll,
      "gap": elbo_nll - iwae_nll,
      "iwae_bits_per_dim": float(objectives.bits_per_dim(iwae_nll, num_dims)),
      "elbo_bits_per_dim": float(objectives.bits_per_dim(elbo_nll, num_dims)),
      "active_units": int(likelihood.active_units(cat["mean"])),
      "latent_dim": int(cat["mean"].shape[1]),
      "kl": float(kl_per_dim.sum()),
      "kl_per_dim": kl_per_dim.tolist(),
      "collapse": likelihood.collapse_report(kl_per_dim, groups),
      "seconds": time.perf_counter() - start,
  }


def evaluate_workdir(
    workdir: str | os.PathLike, *, dataset: Any = None, **kwargs: Any
) -> dict[str, Any]:
  """Restores the newest checkpoint in ``workdir``, evaluates it (``kwargs`` go to
  :func:`evaluate_run`) and writes ``workdir/likelihood.json``."""
  run, state, step = train.restore_run(workdir, dataset=dataset)
  results = {"step": step, **evaluate_run(run, state.params, **kwargs)}
  path = Path(workdir) / RESULTS_FILE
  path.write_text(json.dumps(results, indent=2) + "\n")
  return results


def format_table(results: dict[str, Any]) -> str:
  """A short markdown table of :func:`evaluate_run`'s numbers."""
  k = results["num_importance_samples"]
  data = (f"{results['model']} on {results['dataset']} ({results['split']}, "
          f"{results['num_examples']} examples)")
  iwae = f"{results['iwae_nll']:.2f} ± {results['iwae_nll_stderr']:.2f}"
  rows = [
      ("model / data", data),
      (f"NLL, IWAE K={k} (nats)", iwae),
      ("NLL, −ELBO (nats)", f"{results['elbo_nll']:.2f}"),
      ("ELBO − IWAE gap (nats)", f"{results['gap']:.2f}"),
      ("bits/dim (IWAE)", f"{results['iwae_bits_per_dim']:.4f}"),
      ("KL (nats)", f"{results['kl']:.2f}"),
      ("active units", f"{results['active_units']} / {results['latent_dim']}"),
      ("collapsed dims (< 0.01 nats)", str(results["collapse"]["num_collapsed"])),
  ]
  if "kl_per_group" in results["collapse"]:
    levels = ", ".join(f"{v:.2f}" for v in results["collapse"]["kl_per_group"])
    rows.append(("KL per level, level 1 first (nats)", levels))
  lines = ["| quantity | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
  return "\n".join(lines)

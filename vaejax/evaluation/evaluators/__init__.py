r"""Evaluators chosen by config, run on a stack of M ≥ 1 models; one module per type.

A training config's ``evals`` group names evaluators (big_vision's pattern)::

    config.evals.elbo = {"type": "elbo", "every": 1000, "at_end": True}
    config.evals.dis = {"type": "disentanglement", "every": 0, "at_end": True, ...}

:func:`build` makes one :class:`Evaluator` per entry from its group and the run's
:class:`Setup` (model, dataset, held-out data, the stack's seeds and points, where each
model's files go). An evaluator is called with a :class:`Stack` (the models' parameters,
and ``map_models`` to run a function on all of them, vmapped where the executor vmaps)
and returns one dict of results per model, which the loop logs (keys prefixed with the
evaluator's name; the evaluators named ``elbo`` and ``text`` log ``eval/*``). Built-in
types, one module each:

* ``elbo``: held-out ELBO, reconstruction, KL (and per dimension), bits/dim, active units;
* ``iwae``: importance-weighted NLL (K samples), the ELBO gap, collapse report
  (``likelihood.json``);
* ``disentanglement``: the six disentanglement_lib metrics on the encoder mean
  (``disentanglement.json``);
* ``figures``: reconstructions, samples, traversals, interpolation, KL per dimension,
  animated traversals and latent-arithmetic figures (``figures/``);
* ``unsupervised``: disentanglement_lib's scores that need no labels (Gaussian total
  correlation, Wasserstein correlation, mean pairwise mutual information);
* ``udr``: Unsupervised Disentanglement Ranking, a sweep-level score comparing each model
  with the other seeds of its setting;
* ``arithmetic``: latent arithmetic on dSprites, measured on the decoded sprites
  (``arithmetic.json``);
* ``text``: sequence models on a whole held-out split: IWAE NLL, perplexity, KL, mutual
  information, active units (``text.json``) and reconstructions, prior samples and
  homotopies as ``figures/*.txt``.

:mod:`~vaejax.evaluation.evaluators.base` holds what they share (the :class:`Evaluator`
base class, :class:`Setup`, :class:`Stack` / :class:`StackView`, the held-out data,
config checks, result files, progress).

Adding an evaluator type ``T`` is one module and one schema entry:

1. ``vaejax/evaluation/evaluators/T.py``: a subclass of :class:`Evaluator` decorated
   ``@register("T")``; its ``__init__`` checks the type's keys (raising
   :class:`EvaluationError` naming the key, before anything compiles) and ``evaluate(stack,
   step)`` returns one dict per model (``logs_results = False`` if it only writes files;
   result files through :func:`~vaejax.evaluation.evaluators.base.write_json`);
2. ``vaejax/config.py``, ``base_config().evals``: a default group
   ``"T": {"type": "T", "every": 0, "at_end": False, ...its keys}`` (the schema is the one
   list of keys: validation, resume checks and ``experiments.evaluate`` read it).

:func:`build` imports the module named after a type the first time a config asks for it,
so nothing else needs to change. Code outside the package calls :func:`register` itself.

Every model's keys derive from its own seed (:mod:`vaejax.rng`) and the held-out data are
the dataset's (not the model's), so model *i* of a sweep is evaluated exactly as the
single run with its settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vaejax.evaluation.evaluators.arithmetic import ArithmeticEvaluator
from vaejax.evaluation.evaluators.base import (
    Array,
    Batch,
    EvaluationError,
    Evaluator,
    Setup,
    Stack,
    StackView,
    check_held_out,
    encode_all,
    held_out_batches,
    held_out_split,
    make_posterior_fn,
)
from vaejax.evaluation.evaluators.disentanglement import DisentanglementEvaluator
from vaejax.evaluation.evaluators.elbo import (
    ElboEvaluator,
    evaluate_elbo,
    make_elbo_fn,
    summarize_elbo,
)
from vaejax.evaluation.evaluators.figures import FiguresEvaluator
from vaejax.evaluation.evaluators.iwae import (
    IwaeEvaluator,
    format_likelihood_table,
    make_iwae_fn,
)
from vaejax.evaluation.evaluators.registry import EVALUATORS, lookup, register
from vaejax.evaluation.evaluators.text import TextEvaluator
from vaejax.evaluation.evaluators.udr import UdrEvaluator
from vaejax.evaluation.evaluators.unsupervised import UnsupervisedEvaluator

__all__ = [
    "EVALUATORS", "ArithmeticEvaluator", "Array", "Batch", "DisentanglementEvaluator",
    "ElboEvaluator", "EvaluationError", "Evaluator", "FiguresEvaluator", "IwaeEvaluator",
    "Setup", "Stack", "StackView", "TextEvaluator", "UdrEvaluator", "UnsupervisedEvaluator",
    "build",
    "check_held_out", "encode_all", "evaluate_elbo", "format_likelihood_table",
    "held_out_batches", "held_out_split", "make_elbo_fn", "make_iwae_fn",
    "make_posterior_fn", "register", "summarize_elbo",
]


def build(evals: Mapping[str, Mapping[str, Any]], setup: Setup,
          names: Sequence[str] | None = None) -> list[Evaluator]:
  """One evaluator per entry of ``evals`` (or of ``names``, in that order).

  Every evaluator checks its keys now, so a bad value fails before anything compiles.

  Args:
    evals: ``config.evals``: name → group with ``type``, ``every``, ``at_end`` and the
      type's keys.
    setup: the stack they evaluate.
    names: build only these (asked for by name: they run even if not scheduled).
  """
  explicit = names is not None
  names = list(evals) if names is None else list(names)
  out = []
  for name in names:
    if name not in evals:
      raise EvaluationError(f"No evaluator {name!r} in config.evals; it has: "
                            f"{', '.join(evals)}.")
    group = evals[name]
    kind = group["type"]
    cls = lookup(kind)
    if cls is None:
      raise EvaluationError(f"Config evals.{name}.type={kind!r} is not an evaluator type; "
                            f"known: {', '.join(sorted(EVALUATORS))}.")
    out.append(cls(name, group, setup, requested=explicit))
  return out

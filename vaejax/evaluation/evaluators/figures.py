"""The ``figures`` evaluator: each model's figures in ``figures/`` of its directory.

Reconstructions, prior samples, traversals, interpolation and KL per dimension
(:func:`vaejax.figures.model_figures.write_figures`); animated traversals
(:mod:`vaejax.figures.animation`, ``gif_frames`` per cycle, 0 = none); with labels, class
or style arithmetic; for a hierarchical model, samples by temperature and the KL of every
level over training. Inputs are the first held-out images; traversals are ranked by the
held-out KL per dimension; prior samples use the model's :data:`vaejax.rng.FIGURES`
stream. It only writes files (nothing goes into the logged rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from vaejax import rng
from vaejax.evaluation.evaluators.base import (
  EvaluationError,
  Evaluator,
  config_int,
  is_writer,
  track,
)
from vaejax.evaluation.evaluators.elbo import evaluate_elbo, make_elbo_fn
from vaejax.evaluation.evaluators.registry import register
from vaejax.models import codec


@register("figures")
class FiguresEvaluator(Evaluator):
  """Each model's figures in ``figures/`` of its directory."""

  logs_results = False
  FIGURES_DIR = "figures"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    where = f"evals.{name}"
    self.num_images = config_int(group, "num_images", where)
    self.traversal_steps = config_int(group, "traversal_steps", where, minimum=2)
    self.max_traversal_dims = config_int(group, "max_traversal_dims", where)
    value = group["traversal_range"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      raise EvaluationError(f"Config {where}.traversal_range={value!r} must be a number > 0.")
    self.traversal_range = float(value)
    self.gif_frames = config_int(group, "gif_frames", where, minimum=0)
    if self.gif_frames == 1:
      raise EvaluationError(f"Config {where}.gif_frames=1 must be 0 (no GIFs) or >= 2.")
    if self.enabled and codec.data_key(setup.model) != "image":
      raise EvaluationError(
          f"Evaluator {where} (figures) draws images; model {setup.config.model.name!r} "
          f"models token sequences. Its text outputs (reconstructions, prior samples, "
          f"homotopies) come from the text evaluator: set --config.{where}.at_end=False "
          f"and --config.evals.text.at_end=True.")
    self._elbo_fn = make_elbo_fn(setup.model, setup.conditional)

  def evaluate(self, stack, step):
    from vaejax.figures import animation, model_figures  # pylint: disable=g-import-not-at-top

    setup = self.setup
    batches = setup.held_out()
    kls = [row["kl_per_dim"] for row in evaluate_elbo(stack, setup, self._elbo_fn)]
    all_images = np.concatenate([np.asarray(b["image"]) for b in batches])
    all_labels = (np.concatenate([np.asarray(b["label"]) for b in batches])
                  if setup.dataset.num_classes or setup.conditional else None)
    images = all_images[: max(self.num_images, 2)]
    labels = all_labels[: images.shape[0]] if setup.conditional else None
    arithmetic = bool(setup.dataset.num_classes) and len(np.unique(all_labels)) >= 2
    for m in track(range(len(setup.seeds)), "figures"):
      out = setup.model_dirs[m] / self.FIGURES_DIR
      params = stack.params(m)
      if not is_writer():
        continue
      model_figures.write_figures(
          setup.model, params, images, out, rng.stream_key(setup.seeds[m], rng.FIGURES),
          labels=labels, num_classes=setup.dataset.num_classes if setup.conditional else None,
          kl_per_dim=kls[m], traversal_steps=self.traversal_steps,
          traversal_range=self.traversal_range, max_traversal_dims=self.max_traversal_dims)
      if self.gif_frames:
        animation.write_traversal_gifs(
            setup.model, params, images[:1], out, kls[m], self.gif_frames,
            label=None if labels is None else int(labels[0]),
            max_dims=self.max_traversal_dims)
      if arithmetic:
        self._arithmetic_figures(params, all_images, all_labels, out)
      if hasattr(setup.model, "sample_prior"):
        self._hierarchical_figures(m, params, out)
      logging.info("Figures of %s", out)
    return [{} for _ in setup.seeds]

  def _hierarchical_figures(self, m: int, params: Any, out: Path) -> None:
    """Ancestral samples at several temperatures; the KL of every level over training."""
    from vaejax.figures import grids, model_figures  # pylint: disable=g-import-not-at-top

    key = jax.random.fold_in(rng.stream_key(self.setup.seeds[m], rng.FIGURES), 1)
    samples = model_figures.temperature_samples(self.setup.model, params, key)
    grids.save_figure(grids.plot_temperature_samples(samples, model_figures.TEMPERATURES),
                      out / "samples_temperature.png")
    rows = [r for r in (self.setup.history(m) if self.setup.history else ())
            if "kl_per_level" in r]
    if rows:
      grids.save_figure(grids.plot_kl_per_level(
          [r["step"] for r in rows], [r["kl_per_level"] for r in rows]),
          out / "kl_per_level.png")

  def _arithmetic_figures(self, params: Any, images: np.ndarray, labels: np.ndarray,
                          out: Path) -> None:
    """Class arithmetic (unconditional: the mean code of one class minus another's added to
    other examples) or style arithmetic (conditional), from the held-out examples."""
    from vaejax.figures import model_figures  # pylint: disable=g-import-not-at-top

    if self.setup.conditional:
      model_figures.write_style_arithmetic_figure(self.setup.model, params, images, labels,
                                                  out / "style_arithmetic.png")
    else:
      classes = np.unique(labels)
      model_figures.write_class_arithmetic_figure(self.setup.model, params, images, labels,
                                                  out / "class_arithmetic.png",
                                                  int(classes[0]), int(classes[1]))

r"""The bridge from a trained VAE to the disentanglement metrics.

Every metric of :mod:`vaejax.evaluation.disentanglement` scores a *representation
function* ``r: observations (N, H, W, C) -> codes (N, d)``; as in disentanglement_lib it is
the encoder mean, :math:`r(x) = \mu_\phi(x) = \mathbb{E}_{q_\phi(z|x)}[z]`.

* :func:`make_representation_fn` compiles ``r`` once (``jax.jit``) and applies it in
  fixed-size, padded chunks, so any number of observations reuses one program.
* :func:`evaluate_disentanglement` runs all metrics for a model at the sample counts of a
  named preset (:data:`METRIC_PRESETS`): ``"dlib"`` = disentanglement_lib's defaults (an
  accelerator job: ~3M encoder calls), ``"cpu"`` = reduced counts that take about a
  minute on 2 CPU cores, ``"test"`` = tiny counts for tests.
* The ``disentanglement`` evaluator (:mod:`vaejax.evaluation.evaluators`) runs them on
  every model of a run or sweep and writes ``disentanglement.json`` per model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vaejax.evaluation import disentanglement
from vaejax.models import codec
from vaejax.utils import stopping

DEFAULT_BATCH_SIZE = 256  # = disentanglement.represent's chunk: one call per chunk

# Per-metric keyword overrides of evaluate_all. "dlib" keeps every sample count at
# disentanglement_lib's (unsupervised_study_v1). "cpu" keeps each protocol (batch 64 for
# the fixed-factor scores, 20 bins, the same classifiers) but draws fewer points: the
# fixed-factor scores cost 64-128 encodings per point, so they are cut the most.
METRIC_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The literature setting: dlib's counts and its exact DCI model (sklearn
    # GradientBoostingClassifier, minutes of CPU); the other presets use the fast one.
    "dlib": {"dci": {"model": "gbt", "n_jobs": -1}},
    "cpu": {
        "beta_vae": {"num_train": 500, "num_eval": 250},
        "factor_vae": {"num_train": 500, "num_eval": 250, "num_variance_estimate": 5000},
        "mig": {"num_train": 5000},
        "dci": {"num_train": 3000, "num_test": 1500},
        "sap": {"num_train": 3000, "num_test": 1500},
        "modularity_explicitness": {"num_train": 3000, "num_test": 1500},
    },
    "test": {
        "beta_vae": {"batch_size": 8, "num_train": 20, "num_eval": 10},
        "factor_vae": {"batch_size": 8, "num_train": 20, "num_eval": 10,
                       "num_variance_estimate": 200},
        "mig": {"num_train": 200},
        "dci": {"num_train": 200, "num_test": 100},
        "sap": {"num_train": 200, "num_test": 100},
        "modularity_explicitness": {"num_train": 200, "num_test": 100},
    },
}

# Headline score of each metric (the number papers tabulate).
HEADLINE_SCORES = {
    "beta_vae": "beta_vae/eval_accuracy",
    "factor_vae": "factor_vae/eval_accuracy",
    "mig": "mig/discrete_mig",
    "dci": "dci/disentanglement",
    "sap": "sap/sap_score",
    "modularity_explicitness": "modularity_explicitness/modularity_score",
}


def check_preset(preset: str) -> dict[str, dict[str, Any]]:
  """The overrides of ``preset``, or one ValueError naming the known presets."""
  if preset not in METRIC_PRESETS:
    raise ValueError(
        f"Unknown disentanglement preset {preset!r}; known presets: {sorted(METRIC_PRESETS)}.")
  return METRIC_PRESETS[preset]


def describe_preset(preset: str) -> str:
  """A one-line description of a preset's sample counts, for tables and plot titles."""
  overrides = {name: kwargs for name, kwargs in check_preset(preset).items()
               if "num_train" in kwargs}  # other overrides (e.g. DCI's model) keep the counts
  if not overrides:
    return "disentanglement_lib metric sample counts"
  short = {"beta_vae": "BetaVAE", "factor_vae": "FactorVAE", "mig": "MIG", "dci": "DCI",
           "sap": "SAP", "modularity_explicitness": "Mod"}
  parts = []
  for name, kwargs in overrides.items():
    train = kwargs.get("num_train")
    test = kwargs.get("num_eval", kwargs.get("num_test"))
    parts.append(f"{short[name]} {train}" + (f"/{test}" if test else ""))
  return f"reduced metric sample counts ({preset!r}: " + ", ".join(parts) + ")"


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
  names = tuple(disentanglement.METRICS) if not metrics else tuple(metrics)
  unknown = [m for m in names if m not in disentanglement.METRICS]
  if unknown:
    raise ValueError(f"Unknown disentanglement metric(s) {unknown}; available: "
                     f"{list(disentanglement.METRICS)}.")
  return names


def _check_unconditional(model: Any) -> None:
  if codec.is_conditional(model):
    raise ValueError(
        f"{type(model).__name__} is conditional (num_classes={model.num_classes}); the "
        "disentanglement metrics encode observations without labels. Use an "
        "unconditional model.")


# ----------------------------------------------------------------------------- the function


def make_representation_fn(
    model: Any, params: Any, *, batch_size: int = DEFAULT_BATCH_SIZE,
) -> Callable[[np.ndarray], np.ndarray]:
  """The encoder mean as a batched, jit-compiled host function.

  Args:
    model: a VAE module with ``encode(x) -> (mean, log_var)`` and ``image_shape``
      (e.g. from :func:`vaejax.models.create_model`); unconditional only, because the
      metrics encode observations without labels.
    params: its parameters (the ``"params"`` collection).
    batch_size: observations per compiled call; larger inputs go through in chunks and
      the last chunk is padded, so the program compiles once.

  Returns:
    ``fn(observations) -> codes``: float32 ``(N, H, W, C)`` (or ``(N, H, W)`` for one
    channel) in [0, 1] to float32 numpy ``(N, d)``, the posterior means μ(x).

  Raises:
    ValueError: a conditional model, or a bad ``batch_size``; the returned function
      raises ValueError for observations of the wrong shape, non-finite values or
      values outside [0, 1], before anything runs on the device.
  """
  _check_unconditional(model)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
  image_shape = tuple(getattr(model, "image_shape", ()))
  if len(image_shape) != 3:
    raise ValueError(f"The model needs an image_shape (H, W, C); got {image_shape!r}.")
  params = jax.device_put(params)  # once, not per call

  def representation_fn(observations: Any) -> np.ndarray:
    x = np.asarray(observations, dtype=np.float32)
    if x.ndim == 3 and image_shape[-1] == 1:
      x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != image_shape or x.shape[0] == 0:
      raise ValueError(
          f"observations must have shape (N >= 1, {', '.join(map(str, image_shape))}); "
          f"got {np.shape(observations)}.")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
      bad = ~np.isfinite(x) | (x < 0) | (x > 1)
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"observations must be finite and in [0, 1]; observations{index} = "
                       f"{x[index]}.")
    codes = []
    for start in range(0, x.shape[0], batch_size):
      chunk = x[start:start + batch_size]
      m = chunk.shape[0]
      if m < batch_size:  # pad with the last row: one compiled shape
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - m, axis=0)])
      codes.append(np.asarray(codec.encode(model, params, jnp.asarray(chunk))[0])[:m])
    return np.concatenate(codes)

  return representation_fn


def evaluate_disentanglement(
    model: Any,
    params: Any,
    ground_truth: Any,
    seed: int = 0,
    preset: str = "dlib",
    *,
    metrics: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timings: dict[str, dict[str, float]] | None = None,
    **overrides: Mapping[str, Any],
) -> dict[str, float]:
  """All (or the named) disentanglement metrics of ``model`` on its encoder mean.

  Args:
    model, params: an unconditional VAE and its parameters.
    ground_truth: a :class:`vaejax.evaluation.disentanglement.GroundTruth` whose
      observations have the model's image shape (``dataset.ground_truth``).
    seed: the metrics' seed (each metric draws from ``default_rng(seed)``).
    preset: sample counts, a key of :data:`METRIC_PRESETS`.
    metrics: names from ``disentanglement.METRICS``; None or empty = all six.
    batch_size: encoder chunk size (also the metrics' ``chunk_size``).
    timings: if given, filled with ``{metric: {"seconds", "cpu_seconds"}}`` (wall and
      process CPU time; on a shared machine the CPU time is the robust one).
    **overrides: per-metric keyword arguments applied on top of the preset's, e.g.
      ``dci={"model": "gbt"}``.

  Returns:
    ``evaluate_all``'s flat dict, e.g. ``{"mig/discrete_mig": 0.21, ...}``.
  """
  names = check_metrics(metrics)
  base = check_preset(preset)
  for name in overrides:
    if name not in disentanglement.METRICS:
      raise ValueError(f"Unknown metric {name!r} in overrides; available: "
                       f"{list(disentanglement.METRICS)}.")
  obs_shape = getattr(ground_truth, "observation_shape", None)
  image_shape = tuple(getattr(model, "image_shape", ()))
  if obs_shape is not None and tuple(obs_shape) != image_shape:
    raise ValueError(f"The ground truth renders observations of shape {tuple(obs_shape)}; "
                     f"the model takes {image_shape}.")
  representation_fn = make_representation_fn(model, params, batch_size=batch_size)
  kwargs = {}
  for name in names:
    merged = {**base.get(name, {}), **overrides.get(name, {})}
    merged.setdefault("chunk_size", batch_size)
    kwargs[name] = merged
  scores = {}
  for i, name in enumerate(names):  # one at a time, to time each; each seeded afresh
    stopping.check(f"disentanglement metric {name}")
    logging.info("Disentanglement metric %d/%d: %s (%s)...", i + 1, len(names), name, preset)
    wall, cpu = time.perf_counter(), time.process_time()
    scores.update(disentanglement.evaluate_all(ground_truth, representation_fn, seed=seed,
                                               metrics=(name,), **{name: kwargs[name]}))
    if timings is not None:
      timings[name] = {"seconds": round(time.perf_counter() - wall, 2),
                       "cpu_seconds": round(time.process_time() - cpu, 2)}
  return scores

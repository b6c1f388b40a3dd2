r"""Training a VAE: the loop, evaluation, checkpoints, logs and figures.

:func:`train_and_evaluate` (the entry point of ``python -m experiments.train``) trains
or resumes a run in a work directory: batches by random access (``get_batch(split,
step, ...)``, or sampled inside the jitted step for procedural data), the pure step of
:mod:`vaejax.train_step`, measurements to ``metrics.jsonl`` and TensorBoard, evaluation
on held-out data every ``eval_every`` steps, orbax checkpoints every
``checkpoint_every`` steps and figures at the end. Re-running resumes exactly.

Updates with a non-finite loss or gradient are skipped by the step; the loop stops with
:class:`NonFiniteError` once more than ``optimizer.max_consecutive_skips`` in a row were
skipped, before writing another checkpoint.

The step's building blocks are re-exported here (``train.make_train_step`` etc.).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

import vaejax
from vaejax import checkpointing, config_utils, logging_utils, objectives
from vaejax import data as data_lib
from vaejax import models as models_lib
from vaejax.train_step import (
    EVAL_DATA_STREAM,
    EVAL_SAMPLE_STREAM,
    FIGURES_STREAM,
    Batch,
    StepFn,
    TrainState,
    create_train_state,
    current_learning_rate,
    make_batch_fn,
    make_eval_step,
    make_optimizer,
    make_train_step,
    summarize_eval,
)

__all__ = [
    "NonFiniteError", "StepFn", "TrainState", "create_train_state", "current_learning_rate",
    "loss_settings_from_config", "make_batch_fn", "make_eval_step", "make_optimizer",
    "make_train_step", "optimizer_from_config", "summarize_eval", "train_and_evaluate",
    "write_figures_from_checkpoint",
]

CONFIG_FILE = "config.json"
FIGURES_DIR = "figures"


class NonFiniteError(FloatingPointError):
  """Too many consecutive updates were skipped for a non-finite loss or gradient."""


# ----------------------------------------------------------------------------- config


def optimizer_from_config(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """:func:`make_optimizer` from ``learning_rate`` and the ``optimizer`` group."""
  opt = config.optimizer
  return make_optimizer(
      config.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
      warmup_steps=opt.warmup_steps, grad_clip_norm=opt.grad_clip_norm,
  )


def loss_settings_from_config(
    config: ml_collections.ConfigDict,
) -> tuple[objectives.LossSettings, tuple[int, ...] | None]:
  """``(LossSettings, free_bits_groups)`` from the ``loss`` group (missing fields: defaults)."""
  loss = config.loss
  settings = objectives.LossSettings(
      **{f: loss[f] for f in objectives.LossSettings._fields if f in loss}
  )
  objectives.validate_settings(settings)
  groups = loss.get("free_bits_groups")
  return settings, (tuple(int(g) for g in groups) if groups else None)


# ----------------------------------------------------------------------------- the run


def _is_conditional(model: Any) -> bool:
  return bool(getattr(model, "conditional", False))


class Run:
  """The pieces of one run that the loop, evaluation and figures share."""

  def __init__(self, config: ml_collections.ConfigDict, dataset: Any = None):
    config_utils.validate_config(
        config,
        model_names=models_lib.MODELS,
        dataset_names=None if dataset is not None else data_lib.DATASETS,
    )
    self.config = config
    self.settings, self.free_bits_groups = loss_settings_from_config(config)
    self.dataset = dataset if dataset is not None else data_lib.load(config.data)
    self.model = models_lib.create_model(
        config.model, tuple(self.dataset.image_shape), self.dataset.num_classes
    )
    self.conditional = _is_conditional(self.model)
    if self.free_bits_groups is None:
      # Hierarchical models: free bits per stochastic level (IAF paper's grouping).
      self.free_bits_groups = getattr(self.model, "latent_groups", None)
    latent_dim = getattr(self.model, "latent_dim", None)
    if self.free_bits_groups is not None and latent_dim is not None and (
        len(self.free_bits_groups) != latent_dim
    ):
      raise config_utils.ConfigError(
          f"Config loss.free_bits_groups has {len(self.free_bits_groups)} entries; it needs "
          f"one group id per latent dimension ({latent_dim})."
      )
    self.root = jax.random.PRNGKey(config.seed)
    self.num_dims = int(np.prod(self.dataset.image_shape))
    self.sampler = self.dataset.jax_sampler("train")
    self.eval_split = self._eval_split()
    if config_utils.disentanglement_enabled(config):
      from vaejax.evaluation import representation  # pylint: disable=g-import-not-at-top

      representation.resolve_settings(config)  # a bad preset/seed/metric fails now
      if getattr(self.dataset, "ground_truth", None) is None:
        raise config_utils.ConfigError(
            f"Config disentanglement.enabled=True needs a dataset with ground-truth factors "
            f"(dsprites, dsprites_procedural); {config.data.name!r} has none. Set "
            "--config.disentanglement.enabled=False."
        )
    if self.conditional and self.dataset.num_classes is None:
      raise config_utils.ConfigError(
          f"Model {config.model.name!r} is conditional but dataset {config.data.name!r} "
          "has no labels."
      )

  def _eval_split(self) -> str:
    split, splits = self.config.eval.split, tuple(self.dataset.splits)
    if split:
      if split not in splits:
        raise config_utils.ConfigError(
            f"Config eval.split={split!r} is not a split of {self.dataset.name!r}; "
            f"its splits are {splits}."
        )
      return split
    for candidate in ("test", "validation"):
      if candidate in splits:
        return candidate
    if self.sampler is not None:
      return "train"  # procedural: held out by a separate key stream
    raise config_utils.ConfigError(
        f"Dataset {self.dataset.name!r} has no held-out split (splits {splits}); set "
        "eval.split."
    )

  def eval_batches(self) -> list[Batch]:
    """The fixed held-out batches every evaluation uses."""
    size = self.config.eval.batch_size
    num = self.config.eval.num_batches
    if num == 0:
      total = self.dataset.num_examples(self.eval_split)
      if total is None:
        raise config_utils.ConfigError(
            f"Config eval.num_batches=0 (the whole split) needs a finite split; "
            f"{self.dataset.name!r} is unbounded. Set eval.num_batches > 0."
        )
      num = max(total // size, 1)
    sampler = self.dataset.jax_sampler(self.eval_split) or self.sampler
    if sampler is not None:
      key = jax.random.fold_in(self.root, EVAL_DATA_STREAM)
      sample = jax.jit(lambda i: sampler(jax.random.fold_in(key, i), size))
      return [sample(i) for i in range(num)]
    return [self.dataset.get_batch(self.eval_split, i, size, self.config.seed) for i in range(num)]


def _check_batch(batch: Batch, image_shape: Sequence[int], conditional: bool) -> None:
  image = np.asarray(batch["image"])
  if image.shape[1:] != tuple(image_shape):
    raise ValueError(
        f"Batch images have shape {image.shape}; expected (B, {', '.join(map(str, image_shape))})."
    )
  if conditional and "label" not in batch:
    raise ValueError("The model is conditional but the batch has no 'label'.")


def _evaluate(run: Run, params: Any, eval_fn: Callable, batches: Sequence[Batch]) -> dict:
  key = jax.random.fold_in(run.root, EVAL_SAMPLE_STREAM)
  chunks = [jax.device_get(eval_fn(params, b, jax.random.fold_in(key, i)))
            for i, b in enumerate(batches)]
  return summarize_eval(chunks, run.num_dims)


def _write_figures(run: Run, params: Any, workdir: Path, batches: Sequence[Batch],
                   kl_per_dim: Sequence[float] | None) -> list[Path]:
  from vaejax import plotting  # pylint: disable=g-import-not-at-top

  fig = run.config.figures
  images = np.concatenate([np.asarray(b["image"]) for b in batches])[: max(fig.num_images, 2)]
  labels = None
  if run.conditional:
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])[: images.shape[0]]
  return plotting.write_figures(
      run.model, params, images, workdir / FIGURES_DIR, jax.random.fold_in(run.root, FIGURES_STREAM),
      labels=labels, num_classes=run.dataset.num_classes if run.conditional else None,
      kl_per_dim=kl_per_dim, traversal_steps=fig.traversal_steps,
      traversal_range=fig.traversal_range, max_traversal_dims=fig.max_traversal_dims,
  )


def step_events(config: Any, step: int) -> tuple[bool, bool, bool]:
  """Whether ``step`` logs, evaluates and checkpoints (the last step does all it can)."""
  last = step == config.num_steps
  is_log = step % config.log_every == 0 or last
  is_eval = bool(config.eval_every) and (step % config.eval_every == 0 or last)
  is_ckpt = step % config.checkpoint_every == 0 or last
  return is_log, is_eval, is_ckpt


def _check_skips(metrics: Mapping[str, Any], bound: int, step: int, ckpt_step: int | None):
  streak = int(metrics["longest_skip_streak"])
  if streak > bound:
    raise NonFiniteError(
        f"{streak} consecutive updates were skipped for a non-finite loss or gradient "
        f"(by step {step}; optimizer.max_consecutive_skips={bound}). The run stopped; the "
        f"last checkpoint (step {ckpt_step}) is intact. Lower the learning rate, set "
        "optimizer.grad_clip_norm, or check the data for NaNs."
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    dataset: Any = None,
    progress: bool | None = None,
) -> TrainState:
  """Trains (or resumes) a run in ``workdir``; returns the final state.

  Writes ``workdir/metrics.jsonl``, TensorBoard events, ``config.json``, orbax
  checkpoints (``checkpoints/``) and, at the end, ``figures/``. When ``workdir`` holds a
  checkpoint, training continues from the newest one, exactly; its config must agree with
  ``config`` except for :data:`vaejax.config_utils.RESUMABLE_KEYS`.

  Args:
    config: a training config (see ``experiments/configs/``).
    workdir: the run directory.
    dataset: a dataset object to use instead of ``vaejax.data.load(config.data)``.
    progress: show a progress bar (None: when stderr is a terminal).
  """
  workdir = Path(workdir).resolve()
  config_dict = config_utils.to_dict(config)
  # Cheap checks first: config values, then a clashing checkpoint, before loading data.
  config_utils.validate_config(config)
  ckpt_dir = workdir / checkpointing.CHECKPOINT_DIR
  latest = checkpointing.latest_resumable_step(ckpt_dir, config_dict)
  run = Run(config, dataset)
  optimizer = optimizer_from_config(config)
  state = create_train_state(
      run.model, optimizer, config.seed, run.dataset.image_shape, conditional=run.conditional
  )
  batch_fn = make_batch_fn(run.dataset, config.batch_size, config.seed)
  if batch_fn is None:
    _check_batch(run.dataset.get_batch("train", 0, 2, config.seed), run.dataset.image_shape,
                 run.conditional)
  eval_batches = run.eval_batches() if (config.eval_every or config.figures.enabled) else []

  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / CONFIG_FILE).write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
  ckpt = checkpointing.Checkpointer(ckpt_dir)
  data_position = 0
  if latest is not None:
    state, meta = ckpt.restore(latest, state)
    data_position = int(meta["data_position"])
    logging.info("Resumed from step %d (%s).", latest, ckpt_dir)
  start = int(state.step)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  logging.info("Model %s: %d parameters; training steps %d → %d.", config.model.name,
               num_params, start, config.num_steps)

  train_step = jax.jit(make_train_step(
      run.model, optimizer, free_bits_groups=run.free_bits_groups,
      total_correlation=float(run.settings.tc_beta) != 1.0,
      conditional=run.conditional, batch_fn=batch_fn,
  ))
  eval_fn = jax.jit(make_eval_step(run.model, conditional=run.conditional))
  settings = jax.tree.map(jnp.asarray, run.settings)
  bound = config.optimizer.max_consecutive_skips
  last_eval_kl = None
  last_ckpt = latest

  try:
    with logging_utils.MetricLogger(workdir, start, config.num_steps, progress) as logger:
      for step in range(start + 1, config.num_steps + 1):
        batch = None
        if batch_fn is None:
          batch = run.dataset.get_batch("train", data_position, config.batch_size, config.seed)
        state, metrics = train_step(state, batch, settings)
        data_position += 1
        logger.advance()
        is_log, is_eval, is_ckpt = step_events(config, step)
        if not (is_log or is_eval or is_ckpt):
          continue
        host_metrics = jax.device_get(metrics)
        _check_skips(host_metrics, bound, step, last_ckpt)
        if is_log or is_eval:
          row = dict(host_metrics)
          if is_eval:
            row.update(_evaluate(run, state.params, eval_fn, eval_batches))
            last_eval_kl = row["eval/kl_per_dim"]
          logger.write(step, row)
        if is_ckpt:
          logger.flush()  # TensorBoard events up to here survive a crash with the checkpoint
          meta = {"step": step, "data_position": data_position, "config": config_dict,
                  "vaejax_version": vaejax.__version__}
          ckpt.save(step, state, meta)
          last_ckpt = step
      logger.flush()
  finally:
    ckpt.close()  # waits for pending writes, which hold good states only

  if config.figures.enabled and eval_batches:
    if last_eval_kl is None:  # rank traversals by the held-out KL, not by 8 images'
      last_eval_kl = _evaluate(run, state.params, eval_fn, eval_batches)["eval/kl_per_dim"]
    paths = _write_figures(run, state.params, workdir, eval_batches, last_eval_kl)
    logging.info("Figures: %s", ", ".join(str(p) for p in paths))
  if config_utils.disentanglement_enabled(config):
    from vaejax.evaluation import representation  # pylint: disable=g-import-not-at-top

    scores = representation.evaluate_run(config, workdir, dataset=run.dataset,
                                          params=state.params, step=int(state.step))["scores"]
    logging.info("Disentanglement (%s): %s", workdir / representation.RESULTS_FILE,
                 ", ".join(f"{k}={v:.3f}" for k, v in sorted(scores.items())))
  return state


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The resolved config a run saved in ``workdir/config.json``."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"No {CONFIG_FILE} in {Path(workdir).resolve()}: not a vaejax training workdir "
        "(python -m experiments.train writes it)."
    )
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_run(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict | None = None,
    *,
    dataset: Any = None,
) -> tuple[Run, TrainState, int]:
  """``(run, state, step)`` of the newest checkpoint in ``workdir``.

  ``config`` defaults to the run's own ``config.json``; a different one must agree with
  the checkpoint's except for :data:`vaejax.config_utils.RESUMABLE_KEYS` (else one clear
  error naming the keys that differ, e.g. a checkpoint of another model).
  """
  workdir = Path(workdir).resolve()
  config = load_config(workdir) if config is None else config
  with checkpointing.Checkpointer(workdir / checkpointing.CHECKPOINT_DIR) as ckpt:
    latest = ckpt.latest_step()
    if latest is None:
      raise FileNotFoundError(f"No checkpoint in {workdir / checkpointing.CHECKPOINT_DIR}.")
    config_utils.check_resumable(ckpt.read_meta(latest)["config"], config_utils.to_dict(config),
                                 str(workdir / checkpointing.CHECKPOINT_DIR / str(latest)))
    run = Run(config, dataset)
    state = create_train_state(run.model, optimizer_from_config(config), config.seed,
                               run.dataset.image_shape, conditional=run.conditional)
    state, _ = ckpt.restore(latest, state)
  return run, state, latest


def write_figures_from_checkpoint(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, dataset: Any = None
) -> list[Path]:
  """Writes ``workdir/figures`` from the newest checkpoint of a run (figures on demand)."""
  workdir = Path(workdir).resolve()
  run, state, _ = restore_run(workdir, config, dataset=dataset)
  batches = run.eval_batches()
  eval_fn = jax.jit(make_eval_step(run.model, conditional=run.conditional))
  kl = _evaluate(run, state.params, eval_fn, batches)["eval/kl_per_dim"]
  return _write_figures(run, state.params, workdir, batches, kl)


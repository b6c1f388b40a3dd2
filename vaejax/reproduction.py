r"""The dSprites disentanglement reproduction: train a grid, score it, report it.

A reproduction config (``experiments/configs/reproduce_dsprites.py``) names a training
config ``train``, a key of it to vary (``parameter``, e.g. ``loss.beta``) over
``parameter_values``, and ``seeds``. :func:`reproduce` runs three stages, each resumable:

1. ``train``: one :func:`vaejax.train.train_and_evaluate` run per (value, seed) in
   ``WORKDIR/runs/<method>_<name>=<value>_seed=<seed>`` (it resumes from its newest
   checkpoint; finished runs are skipped). Each run writes its ELBO terms
   (``metrics.jsonl``: rate = ``eval/kl``, distortion = −``eval/recon``) and figures,
   traversals included.
2. ``evaluate``: every disentanglement metric on each run's encoder mean
   (:func:`vaejax.evaluation.representation.evaluate_run` →
   ``<run>/disentanglement.json``, reused when up to date).
3. ``report``: ``WORKDIR/report/``: ``results.md`` and ``results.csv`` (mean ± std over
   seeds per value and metric), ``runs.csv``, ``metrics_vs_<name>.png``,
   ``traversals.png`` (one panel per value), ``timings.json``.

The data are ``train.data`` (procedural dSprites by default; the DeepMind file with
``data.name=dsprites, data.path=...``, TFDS with ``data.data_dir``), loaded once and
shared by training and evaluation. Every output carries :func:`budget_label`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from vaejax import checkpointing, config_utils, logging_utils, plotting
from vaejax import reproduction_report as report_lib
from vaejax.evaluation import representation

STAGES = ("train", "evaluate", "report")
SCALES = ("dlib", "smoke")
RUNS_DIR = "runs"
REPORT_DIR = "report"
TIMING_FILE = "train_timing.json"
CONFIG_KEYS = ("method", "parameter", "parameter_label", "parameter_values", "seeds", "scale",
               "train", "evaluation")
EVALUATION_KEYS = ("preset", "seed", "metrics")
# disentanglement_lib's training budget (Locatello et al. 2019).
DLIB_BUDGET = {"num_steps": 300_000, "batch_size": 64, "learning_rate": 1e-4}


class RunSpec(NamedTuple):
  """One model of the grid: its value of the varied parameter, its seed and directory name."""
  value: float
  seed: int
  name: str


# ----------------------------------------------------------------------------- config


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      raise KeyError(dotted)
    node = node[part]
  return node


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks a reproduction config (and its training config); one clear error per mistake."""
  from vaejax import data as data_lib  # pylint: disable=g-import-not-at-top
  from vaejax import models as models_lib  # pylint: disable=g-import-not-at-top
  from vaejax import train  # pylint: disable=g-import-not-at-top

  for key in config:
    if key not in CONFIG_KEYS:
      raise config_utils.UnknownKeyError(
          f"Unknown reproduction config key {key!r}; the keys are: {', '.join(CONFIG_KEYS)}.")
  for key in CONFIG_KEYS:
    if key not in config:
      raise config_utils.UnknownKeyError(f"The reproduction config lacks the key {key!r}.")
  if not isinstance(config.method, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", config.method):
    raise ValueError(f"Config method={config.method!r} must be a non-empty name of letters, "
                     "digits, '_', '-' or '.' (it names directories).")
  try:
    current = _get(config.train, config.parameter)
  except (KeyError, TypeError) as error:
    raise ValueError(f"Config parameter={config.parameter!r} is not a key of the training "
                     "config (e.g. 'loss.beta').") from error
  if isinstance(current, bool) or not isinstance(current, (int, float)):
    raise ValueError(  # noqa: TRY004  (a bad config value, like the others)
        f"Config parameter={config.parameter!r} must name a number of the "
        f"training config; it holds {current!r}.")
  values = tuple(config.parameter_values)
  if not values or any(isinstance(v, bool) or not isinstance(v, (int, float))
                       or not math.isfinite(v) for v in values):
    raise ValueError(f"Config parameter_values={values!r} must be a non-empty tuple of finite numbers.")
  if len(set(values)) != len(values):
    raise ValueError(f"Config parameter_values={values!r} has repeated values.")
  seeds = tuple(config.seeds)
  if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32
                      for s in seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f"Config seeds={seeds!r} must be a non-empty tuple of distinct ints in "
                     "[0, 2**32).")
  if config.scale not in SCALES:
    raise ValueError(f"Config scale={config.scale!r} must be one of {SCALES}.")
  for key in config.evaluation:
    if key not in EVALUATION_KEYS:
      raise config_utils.UnknownKeyError(
          f"Unknown config key 'evaluation.{key}'; its keys are: {', '.join(EVALUATION_KEYS)}.")
  representation.resolve_settings(config.train, config.evaluation.preset,
                                  config.evaluation.seed, tuple(config.evaluation.metrics))
  config_utils.validate_config(config.train, model_names=models_lib.MODELS,
                               dataset_names=data_lib.DATASETS)
  for value in values:  # e.g. a negative β: the loss settings reject it now, not mid-grid
    train.loss_settings_from_config(run_config(config, value, seeds[0]))


def budget_label(config: ml_collections.ConfigDict) -> str:
  """The label every output carries: the budget, and whether it is disentanglement_lib's."""
  num = len(config.seeds)
  budget = f"{config.train.num_steps} steps, {num} seed{'s' if num != 1 else ''}"
  if config.scale == "smoke":
    return f"SMOKE SCALE (CPU): {budget} — not the dlib budget"
  at_dlib = all(config.train[k] == v for k, v in DLIB_BUDGET.items()) and (
      config.evaluation.preset == "dlib")
  if at_dlib:
    return f"DLIB BUDGET: {budget}, dlib metric sample counts"
  return f"REDUCED BUDGET: {budget} — not the dlib budget"


def budget_details(config: ml_collections.ConfigDict, data_name: str | None = None) -> str:
  """One line with everything that sets the budget: data, model, optimizer, metrics."""
  t = config.train
  data = data_name or t.data.name
  if t.data.get("path"):
    data += f" ({t.data.path})"
  return (f"Data: {data}. Model: {t.model.name}, {t.model.latent_dim} latents. "
          f"Training: {t.num_steps} steps, batch {t.batch_size}, Adam {t.learning_rate:g}. "
          f"Seeds: {list(config.seeds)}. Metrics on the encoder mean, "
          f"{representation.describe_preset(config.evaluation.preset)}, metric seed "
          f"{config.evaluation.seed}.")


def _name(config: ml_collections.ConfigDict) -> str:
  return config.parameter.split(".")[-1]


def grid(config: ml_collections.ConfigDict) -> list[RunSpec]:
  """Every (value, seed) of the grid, values outer, with its run directory name."""
  name = _name(config)
  return [RunSpec(float(v), int(s), f"{config.method}_{name}={float(v):g}_seed={int(s)}")
          for v in config.parameter_values for s in config.seeds]


def run_config(config: ml_collections.ConfigDict, value: float,
               seed: int) -> ml_collections.ConfigDict:
  """The training config of one run: ``train`` with the parameter set to ``value``, ``seed``."""
  train = copy.deepcopy(config.train)
  _set(train, config.parameter, value)
  train.seed = int(seed)
  return train


# ----------------------------------------------------------------------------- stages


def _latest_step(run_dir: Path) -> int | None:
  ckpt_dir = run_dir / checkpointing.CHECKPOINT_DIR
  if not ckpt_dir.is_dir():
    return None
  with checkpointing.Checkpointer(ckpt_dir) as ckpt:
    return ckpt.latest_step()


def _is_finished(train: ml_collections.ConfigDict, run_dir: Path) -> bool:
  if _latest_step(run_dir) != train.num_steps:
    return False
  return not train.figures.enabled or (run_dir / "figures" / "traversals.png").exists()


def _clock() -> tuple[float, float]:
  return time.perf_counter(), time.process_time()


def train_runs(config: ml_collections.ConfigDict, workdir: Path, dataset: Any,
               progress: bool | None = None,
               log: Callable[[str], None] = print) -> None:
  """Stage 1: trains (or resumes, or skips) every run; records its wall and CPU time."""
  from vaejax import train as train_lib  # pylint: disable=g-import-not-at-top

  specs = grid(config)
  for i, spec in enumerate(specs):
    run_dir = workdir / RUNS_DIR / spec.name
    train = run_config(config, spec.value, spec.seed)
    if _is_finished(train, run_dir):
      log(f"[{i + 1}/{len(specs)}] {spec.name}: finished earlier, skipped.")
      continue
    start_step = _latest_step(run_dir) or 0
    log(f"[{i + 1}/{len(specs)}] {spec.name}: training steps {start_step} → {train.num_steps}.")
    wall, cpu = _clock()
    train_lib.train_and_evaluate(train, run_dir, dataset=dataset, progress=progress)
    timing_path = run_dir / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    # Accumulated over resumed invocations; includes compilation, evaluation and figures.
    timing = {"steps": timing.get("steps", 0) + train.num_steps - start_step,
              "seconds": timing.get("seconds", 0.0) + time.perf_counter() - wall,
              "cpu_seconds": timing.get("cpu_seconds", 0.0) + time.process_time() - cpu}
    timing_path.write_text(json.dumps(timing, indent=1) + "\n")


def evaluate_runs(config: ml_collections.ConfigDict, workdir: Path, dataset: Any,
                  log: Callable[[str], None] = print) -> None:
  """Stage 2: scores every run's newest checkpoint (reusing up-to-date results)."""
  ev = config.evaluation
  specs = grid(config)
  for i, spec in enumerate(specs):
    run_dir = workdir / RUNS_DIR / spec.name
    result = representation.evaluate_run(
        run_config(config, spec.value, spec.seed), run_dir, dataset=dataset,
        preset=ev.preset, seed=ev.seed, metrics=tuple(ev.metrics))
    log(f"[{i + 1}/{len(specs)}] {spec.name}: metrics of step {result['step']} "
        f"({result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU when computed).")


def _elbo_terms(run_dir: Path) -> dict[str, float]:
  """Rate, distortion, ELBO and active units of the run's last evaluation (else last batch)."""
  rows = logging_utils.read_jsonl(run_dir / logging_utils.METRICS_FILE)
  for row in reversed(rows):
    if "eval/kl" in row:
      return {"rate": row["eval/kl"], "distortion": -row["eval/recon"],
              "elbo": row["eval/elbo"], "active_units": row["eval/active_units"]}
  if rows:
    return {"rate": rows[-1]["kl"], "distortion": -rows[-1]["recon"], "elbo": rows[-1]["elbo"]}
  return {}


def collect_rows(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
  """One row per run with scores: value, seed, step, every score, the ELBO terms, timings.

  Runs without ``disentanglement.json`` are left out (not trained or scored yet).
  """
  workdir = Path(workdir)
  rows = []
  for spec in grid(config):
    run_dir = workdir / RUNS_DIR / spec.name
    result = representation.read_results(run_dir)
    if result is None:
      continue
    # Timings go in a nested dict: not scores, so not in the tables.
    timing = {"metric_seconds": result["seconds"], "metric_cpu_seconds": result["cpu_seconds"]}
    timing_path = run_dir / TIMING_FILE
    if timing_path.exists():
      trained = json.loads(timing_path.read_text())
      timing.update(train_seconds=trained["seconds"], train_cpu_seconds=trained["cpu_seconds"],
                    train_steps=trained["steps"])
    rates = [r["steps_per_sec"] for r in logging_utils.read_jsonl(
        run_dir / logging_utils.METRICS_FILE)[1:] if "steps_per_sec" in r and "eval/kl" not in r]
    if rates:  # the first row includes compilation; evaluation rows include evaluation
      timing["steady_steps_per_sec"] = float(np.median(rates))
    rows.append({"value": spec.value, "seed": spec.seed, "step": result["step"],
                 **result["scores"], **_elbo_terms(run_dir), "timing": timing})
  return rows


def write_report(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                 rows: Sequence[dict] | None = None,
                 data_name: str | None = None) -> list[Path]:
  """Stage 3: tables, plots and timings in ``WORKDIR/report``; returns the paths written."""
  workdir = Path(workdir)
  rows = collect_rows(config, workdir) if rows is None else list(rows)
  if not rows:
    raise FileNotFoundError(f"No scored runs under {workdir / RUNS_DIR}: run the train and "
                            "evaluate stages first.")
  out = workdir / REPORT_DIR
  out.mkdir(parents=True, exist_ok=True)
  label, name = budget_label(config), _name(config)
  title = f"{config.method} on dSprites: disentanglement vs {config.parameter_label}"
  details = budget_details(config, data_name)
  groups = report_lib.aggregate(rows)
  expected = len(config.parameter_values) * len(config.seeds)
  missing = "" if len(rows) == expected else (
      f"\n\nOnly {len(rows)} of {expected} runs are scored so far.")
  markdown = (f"# {title}\n\n" + report_lib.table_markdown(
      groups, label, config.parameter_label, details + missing)
      + "\n" + report_lib.published_markdown(config.method))
  paths = {"results.md": markdown,
           "results.csv": report_lib.table_csv(groups, label, config.parameter),
           "runs.csv": report_lib.runs_csv(rows, label, config.parameter)}
  written = []
  for file, text in paths.items():
    (out / file).write_text(text)
    written.append(out / file)
  fig = report_lib.plot_metrics(rows, f"{title}\n{label}", config.parameter_label)
  written.append(plotting.save_figure(fig, out / f"metrics_vs_{name}.png"))
  first_seed = config.seeds[0]
  images = {spec.value: workdir / RUNS_DIR / spec.name / "figures" / "traversals.png"
            for spec in grid(config) if spec.seed == first_seed}
  images = {v: p for v, p in images.items() if p.exists()}
  if images:
    fig = report_lib.plot_traversals(images, label, config.parameter_label, first_seed)
    written.append(plotting.save_figure(fig, out / "traversals.png", dpi=90))
  totals = {k: round(sum(r.get("timing", {}).get(k, 0.0) for r in rows), 2) for k in (
      "train_seconds", "train_cpu_seconds", "train_steps", "metric_seconds",
      "metric_cpu_seconds")}
  per_run = {f"{r['value']:g}/seed={r['seed']}": r.get("timing", {}) for r in rows}
  timings = {"label": label, "runs": len(rows), "totals": totals, "per_run": per_run}
  (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
  written.append(out / "timings.json")
  return written


def reproduce(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
              dataset: Any = None, stages: Sequence[str] = STAGES,
              progress: bool | None = None,
              log: Callable[[str], None] = print) -> list[Path]:
  """Runs the named stages (default: all) in ``workdir``; returns the report's paths.

  Everything is checked before anything trains: the config, the data (it must have
  ground-truth factors) and the model (it must be unconditional).
  """
  from vaejax import data as data_lib  # pylint: disable=g-import-not-at-top
  from vaejax import models as models_lib  # pylint: disable=g-import-not-at-top

  unknown = [s for s in stages if s not in STAGES]
  if unknown or not stages:
    raise ValueError(f"Unknown or no stages {list(stages)}; choose from {STAGES}.")
  validate_config(config)
  workdir = Path(workdir).resolve()
  data_name = None
  if "train" in stages or "evaluate" in stages:
    dataset = data_lib.load(config.train.data) if dataset is None else dataset
    data_name = getattr(dataset, "name", None)
    if getattr(dataset, "ground_truth", None) is None:
      raise ValueError(f"Dataset {data_name!r} has no ground-truth factors; the "
                       "reproduction needs dSprites ('dsprites_procedural' or 'dsprites').")
    model = models_lib.create_model(config.train.model, tuple(dataset.image_shape),
                                    dataset.num_classes)
    if getattr(model, "conditional", False):
      raise ValueError(f"Model {config.train.model.name!r} is conditional; the metrics "
                       "encode observations without labels.")
    if dataset.jax_sampler("train") is None and not config.train.eval.split:
      # A file-backed dSprites has one split; dlib trains and evaluates on it.
      config = copy.deepcopy(config)
      config.train.eval.split = "train"
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "reproduction_config.json").write_text(
      json.dumps(config_utils.to_dict(config), indent=2, sort_keys=True) + "\n")
  log(budget_label(config))
  if "train" in stages:
    train_runs(config, workdir, dataset, progress, log)
  if "evaluate" in stages:
    evaluate_runs(config, workdir, dataset, log)
  if "report" in stages:
    return write_report(config, workdir, data_name=data_name)
  return []

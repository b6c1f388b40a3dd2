r"""The dSprites β study at disentanglement_lib's settings, time-boxed, through the one engine.

``PYTHONPATH=. python -m experiments.benchmarks.beta_study_speed [--budget_s=270] [--smoke]``
(part 4 of :mod:`experiments.benchmarks.device_suite`, which calls :func:`run`).

The study is ``experiments/configs/betavae_dsprites.py`` at its full setting (the dlib
conv VAE, Bernoulli likelihood, 10 latents, batch 64, Adam(1e-4, 0.9, 0.999, 1e-8),
procedural dSprites rendered inside the step) over the grid β ∈ {1, 2, 4, 6, 8, 16} ×
seeds {0, 1, 2}: 18 models, one program per group (vmapped on an accelerator), trained by
:func:`vaejax.training.loop.train` in a temporary workdir with the evaluators off. Within
the deadline:

1. **probe**: 2·L steps (L = ``log_every``); steps/s from the second logged interval (the
   first includes compiling);
2. **extend**: the same workdir resumed with ``num_steps`` raised to as many steps as the
   training share (1 − ``eval_fraction`` of the time) leaves at the probe's rate, less the
   probe's start-up time and a 10 % margin: real training steps of the engine, against
   disentanglement_lib's 300,000; steps/s from the extension's intervals;
3. **evaluate**: the six disentanglement metrics at the ``cpu`` preset's sample counts on
   each final encoder mean, on the device, with the function the ``disentanglement``
   evaluator runs (:func:`vaejax.evaluation.representation.evaluate_disentanglement`, the
   evaluator's seed), one model at a time (every β's seed 0 first, then seed 1, ...),
   stopping before a model that would not finish by the deadline.
   ``loop.evaluate_workdir`` would score all 18 models in one call that cannot stop between
   them, and at the ``cpu`` preset a model costs seconds to a minute of host CPU
   (scikit-learn), so 18 may not fit a share.

``smoke=True``: β ∈ {1, 4} × seed 0, a small MLP VAE at batch 8, L = 2, four metrics at the
``test`` preset (a CPU check of the code, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments.configs import betavae_dsprites
from vaejax import data, models
from vaejax.evaluation import representation
from vaejax.training import loop
from vaejax.training.writers import METRICS_FILE, read_jsonl

DLIB_STEPS = 300_000  # disentanglement_lib's training steps per model
GRID = ("loss.beta=1,2,4,6,8,16", "seed=0,1,2")
FULL = {"grid": GRID, "batch_size": 64, "log_every": 200, "preset": "cpu", "model": {},
        "metrics": (), "max_steps": DLIB_STEPS}
# A CPU check of the same code: a small MLP VAE (the dlib net compiles for minutes on a
# loaded CPU), the test preset and the metrics that cost no more than their encodings.
SMOKE = {"grid": ("loss.beta=1,4", "seed=0"), "batch_size": 8, "log_every": 2,
         "preset": "test", "model": {"name": "mlp_vae", "hidden_sizes": (32,)},
         "metrics": ("beta_vae", "factor_vae", "mig", "sap"), "max_steps": 8}
SAFETY = 0.9  # of the time the probe's rate says the extension may take
METRIC_NAMES = {"beta_vae": "β-VAE", "factor_vae": "FactorVAE", "mig": "MIG", "dci": "DCI",
                "sap": "SAP", "modularity_explicitness": "Modularity"}


def study_config(batch_size: int, log_every: int, model: dict[str, Any]) -> Any:
  """The full β-VAE dSprites config with every evaluator off and one checkpoint per call
  (``model``: overrides of ``config.model``, for the smoke run)."""
  config = betavae_dsprites.get_config("")
  config.model.update(model)
  config.batch_size = batch_size
  config.log_every = log_every
  config.checkpoint_every = DLIB_STEPS  # the loop also checkpoints the last step
  for evaluator in config.evals.values():
    evaluator.every, evaluator.at_end = 0, False
  return config


def _rates(workdir: Path, after: int) -> list[float]:
  """steps/s of each logged interval that starts after step ``after`` (one per interval:
  every model's row carries the program's rate)."""
  rates = {}
  for row in read_jsonl(workdir / METRICS_FILE):
    if row["step"] > after:
      rates[row["step"]] = row["steps_per_sec"]
  return [rates[s] for s in sorted(rates)]


def train_within(config: Any, grid, workdir: Path, train_end: float, max_steps: int
                 ) -> tuple[Any, dict]:
  """Probe, then extend to ``train_end`` (a ``perf_counter`` time) or ``max_steps``;
  returns (the TrainResult, the record)."""
  num_models = int(np.prod([len(axis.split("=", 1)[1].split(",")) for axis in grid]))
  period = config.log_every
  start = time.perf_counter()
  config.num_steps = 2 * period
  result = loop.train(config, workdir, grid=list(grid), progress=False, write_report=False)
  probe_seconds = time.perf_counter() - start
  probe_rate = _rates(workdir, period)[-1]
  startup = max(probe_seconds - 2 * period / probe_rate, 0.0)
  extra = int(SAFETY * (train_end - time.perf_counter() - startup) * probe_rate) // period
  extra = min(extra, max_steps // period - 2)
  extended = extra >= 1
  if extended:
    config.num_steps = (2 + extra) * period
    result = loop.train(config, workdir, grid=list(grid), progress=False, write_report=False)
  rates = _rates(workdir, 3 * period)  # the extension, past its own first interval
  rate = statistics.median(rates) if rates else probe_rate
  steps = config.num_steps
  record = {
      "measurement": "train", "num_models": num_models, "batch_size": config.batch_size,
      "learning_rate": config.learning_rate, "steps_per_s": round(rate, 2),
      "probe_steps_per_s": round(probe_rate, 2),
      "images_per_s": round(rate * num_models * config.batch_size),
      "steps_reached": steps, "dlib_steps": DLIB_STEPS,
      "hours_for_dlib_steps": round(DLIB_STEPS / rate / 3600, 2),
      "startup_s": round(startup, 1), "train_seconds": round(time.perf_counter() - start, 1),
      "status": "ok" if extended else "stopped",
      "summary": f"{rate:,.1f} steps/s of the {num_models}-model program "
                 f"({rate * num_models * config.batch_size:,.0f} img/s); {steps:,} steps "
                 f"reached of dlib's {DLIB_STEPS:,} ({steps / DLIB_STEPS:.2%}); "
                 f"{DLIB_STEPS:,} steps would take {DLIB_STEPS / rate / 3600:.2f} h",
  }
  if not extended:
    record["reason"] = "no time left in the training share after the probe"
  return result, record


def evaluate_within(config: Any, result: Any, preset: str, metrics: tuple[str, ...],
                    deadline: float) -> Iterator[dict]:
  """One record per evaluated model, then a summary with the per-β table."""
  if len(result.states) != 1:
    raise RuntimeError(f"Expected the study in one program group, got {len(result.states)}.")
  dataset = data.load(config.data)
  model = models.create_model(config.model, tuple(dataset.image_shape))
  params = result.states[0].models.params
  points = result.points
  order = sorted(range(len(points)), key=lambda i: (points[i]["seed"], points[i]["loss.beta"]))
  seed = config.evals.disentanglement.seed
  scored, seconds = {}, []
  for i in order:
    if time.perf_counter() + (seconds[-1] if seconds else 0.0) > deadline:
      break
    start = time.perf_counter()
    scores = representation.evaluate_disentanglement(
        model, jax.tree.map(lambda x, i=i: x[i], params), dataset.ground_truth, seed, preset,
        metrics=metrics)
    seconds.append(time.perf_counter() - start)
    scored[i] = {m: round(float(scores[k]), 4)
                 for m, k in representation.HEADLINE_SCORES.items() if k in scores}
    yield {"measurement": "disentanglement", "model": i, "point": points[i], "preset": preset,
           "scores": scored[i], "status": "ok", "table_row": False,
           "eval_seconds": round(seconds[-1], 2)}
  status = "ok" if len(scored) == len(points) else "stopped"
  record = {"measurement": "disentanglement_summary", "preset": preset,
            "models_evaluated": len(scored), "num_models": len(points), "status": status,
            "seconds_per_model": round(statistics.median(seconds), 2) if seconds else None,
            "summary": (f"{len(scored)} of {len(points)} models scored at the `{preset}` "
                        f"preset, {statistics.median(seconds):.1f} s per model (median)"
                        if seconds else "no model scored"),
            "details_md": _score_table(points, scored, preset)}
  if status == "stopped":
    record["reason"] = f"at the share after {len(scored)} model(s)"
  yield record


def _score_table(points, scored: dict[int, dict[str, float]], preset: str) -> str:
  """Markdown: per β, the mean headline score of each metric over its scored seeds."""
  head = " | ".join(METRIC_NAMES.values())
  lines = [f"β study, disentanglement metrics (`{preset}` preset; mean over the seeds scored)",
           "", f"| β | seeds | {head} |", "|---|---|" + "---|" * len(METRIC_NAMES)]
  for beta in sorted({p["loss.beta"] for p in points}):
    done = [scored[i] for i in scored if points[i]["loss.beta"] == beta]
    cells = [f"{np.mean([s[m] for s in done]):.3f}" if done and m in done[0] else "—"
             for m in METRIC_NAMES]
    lines.append(f"| {beta:g} | {len(done)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run(deadline: float, *, smoke: bool = False, eval_fraction: float = 0.35
        ) -> Iterator[dict]:
  """The study's records (see the module docstring), all finished by ``deadline``."""
  sizes = SMOKE if smoke else FULL
  start = time.perf_counter()
  train_end = start + (1 - eval_fraction) * max(deadline - start, 0.0)
  config = study_config(sizes["batch_size"], sizes["log_every"], sizes["model"])
  betas, seeds = (axis.split("=", 1)[1] for axis in sizes["grid"])
  setting = (f"β ∈ {{{betas}}} × seeds {{{seeds}}}, {config.model.name}, batch "
             f"{config.batch_size}, Adam {config.learning_rate:g}")
  with tempfile.TemporaryDirectory(prefix="vaejax-beta-study-") as workdir:
    result, record = train_within(config, sizes["grid"], Path(workdir), train_end,
                                  sizes["max_steps"])
    yield {"setting": setting, **record}
    yield from ({"setting": f"disentanglement of the {len(result.points)} models", **r}
                for r in evaluate_within(config, result, sizes["preset"], sizes["metrics"],
                                         deadline))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget_s", type=float, default=270.0, help="Seconds for the study.")
  parser.add_argument("--smoke", action="store_true", help="Tiny sizes (a CPU check).")
  args = parser.parse_args(argv)
  if not args.budget_s > 0:
    parser.error(f"--budget_s must be > 0 seconds, got {args.budget_s}.")
  for record in run(time.perf_counter() + args.budget_s, smoke=args.smoke):
    print(json.dumps(record, default=str), flush=True)


if __name__ == "__main__":
  main()

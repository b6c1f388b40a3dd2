r"""Wall time of the six disentanglement metrics at disentanglement_lib's default sample counts.

The ground truth has dSprites' factor sizes (3, 6, 40, 32, 32) with observations
equal to the factors (no rendering), and the representation is a fixed random
linear map of the scaled factors to 10 dimensions plus Gaussian noise (sd 0.05),
so the timings measure the metrics, not an encoder. With a real encoder, add
its cost for the observations each metric encodes (BetaVAE: 1.92M,
FactorVAE: 0.97M, the others: 10000-15000 each).

  python -m experiments.benchmarks.metrics_speed [--dci_model=gbt] [--scale=0.1]

Prints one JSON line: wall and CPU seconds per metric and in total, the scores,
the settings and the machine's load average (wall times on a shared machine are
upper bounds; CPU seconds are not inflated by other processes).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from vaejax.evaluation import disentanglement as dis

DSPRITES_FACTOR_SIZES = (3, 6, 40, 32, 32)

_DCI_MODEL = flags.DEFINE_enum("dci_model", "hist_gbt", list(dis.DCI_MODELS), "DCI classifier.")
_N_JOBS = flags.DEFINE_integer("n_jobs", 1, "DCI: factors fitted in parallel threads.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every sample count (1 = dlib defaults).")
_SEED = flags.DEFINE_integer("seed", 0, "Metric seed.")
_METRICS = flags.DEFINE_list("metrics", list(dis.METRICS), "Metrics to time.")

# dlib's unsupervised_study_v1 sample counts.
_COUNTS = {
    "beta_vae": {"num_train": 10000, "num_eval": 5000},
    "factor_vae": {"num_train": 10000, "num_eval": 5000, "num_variance_estimate": 10000},
    "mig": {"num_train": 10000},
    "dci": {"num_train": 10000, "num_test": 5000},
    "sap": {"num_train": 10000, "num_test": 5000},
    "modularity_explicitness": {"num_train": 10000, "num_test": 5000},
}


def linear_noisy_representation(factor_sizes, dim: int = 10, noise: float = 0.05, seed: int = 0):
  """Codes = (factors / (size - 1)) @ W + noise, W fixed (K, dim) Gaussian."""
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=(len(factor_sizes), dim))
  scale = 1.0 / np.maximum(np.asarray(factor_sizes) - 1, 1)

  def representation_fn(observations: np.ndarray) -> np.ndarray:
    return (observations * scale) @ weights + noise * rng.normal(size=(len(observations), dim))

  return representation_fn


def main(argv):
  del argv
  ground_truth = dis.FactorGridGroundTruth(DSPRITES_FACTOR_SIZES)
  encode = linear_noisy_representation(DSPRITES_FACTOR_SIZES)
  overrides = {name: {k: max(2, round(v * _SCALE.value)) for k, v in counts.items()}
               for name, counts in _COUNTS.items() if name in _METRICS.value}
  if "dci" in overrides:
    overrides["dci"].update(model=_DCI_MODEL.value, n_jobs=_N_JOBS.value)
  # Warm-up: imports and first-call overheads of every estimator, on tiny samples.
  tiny = {name: {k: (v if isinstance(v, str) or k == "n_jobs" else 200) for k, v in kw.items()}
          for name, kw in overrides.items()}
  dis.evaluate_all(ground_truth, encode, seed=_SEED.value, metrics=list(overrides), **tiny)
  seconds, cpu_seconds, scores = {}, {}, {}
  load_before = os.getloadavg()[0]
  for name, kwargs in overrides.items():
    start, cpu_start = time.perf_counter(), time.process_time()
    result = dis.METRICS[name](ground_truth, encode, seed=_SEED.value, **kwargs)
    seconds[name] = round(time.perf_counter() - start, 2)
    cpu_seconds[name] = round(time.process_time() - cpu_start, 2)
    scores.update({f"{name}/{k}": round(float(v), 4) for k, v in result.items()})
  print(json.dumps({
      "seconds": seconds,
      "total_seconds": round(sum(seconds.values()), 2),
      # CPU time of this process (all threads): robust to other load on a shared machine.
      "cpu_seconds": cpu_seconds,
      "total_cpu_seconds": round(sum(cpu_seconds.values()), 2),
      "scores": scores,
      "settings": {"factor_sizes": DSPRITES_FACTOR_SIZES, "code_dim": 10, "scale": _SCALE.value,
                   "dci_model": _DCI_MODEL.value, "n_jobs": _N_JOBS.value, "seed": _SEED.value},
      "cpu_count": os.cpu_count(),
      "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
  }))


if __name__ == "__main__":
  app.run(main)

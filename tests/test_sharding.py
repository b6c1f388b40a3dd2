"""Stacks of models on a device mesh: 8 CPU devices give the numbers of one device.

JAX fixes its device count when it starts, so the checks run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this file is that subprocess's
script); the test process itself keeps its single device.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from vaejax.training import mesh as mesh_lib

import tiny

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8
IMAGE_SHAPE = (6, 6, 1)
GRID = ["loss.beta=0.5,4", "seed=0,5"]  # 4 models in one program


def _config(model_devices=1, data_devices=1, **top_level):
  from vaejax.config import base_config  # pylint: disable=g-import-not-at-top

  config = base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.data.name = "mnist_npz"  # nominal: the dataset is passed in
  config.learning_rate = 1e-2
  config.num_steps, config.batch_size = 6, 8
  config.log_every, config.checkpoint_every = 2, 3
  config.evals.elbo.every = 0  # at the end
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.evals.figures.at_end = False
  config.execution.strategy = "vmap"
  config.execution.model_devices, config.execution.data_devices = model_devices, data_devices
  for key, value in top_level.items():
    config[key] = value
  return config


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _errors() -> dict:
  from vaejax.training import loop  # pylint: disable=g-import-not-at-top

  def sweep_on_mesh(model_devices, data_devices, grid=GRID, **top_level):
    loop.train(_config(model_devices, data_devices, **top_level), tempfile.mkdtemp(), grid=grid,
               dataset=tiny.sampled_dataset(0), progress=False, write_report=False)

  calls = {
      "too_many_devices": lambda: mesh_lib.make_mesh(16, 1),
      "models": lambda: sweep_on_mesh(2, 1, grid=["loss.beta=1,2,4"]),
      "batch": lambda: sweep_on_mesh(1, 4, batch_size=6),
  }
  out = {}
  for name, call in calls.items():
    try:
      call()
      out[name] = "no error"
    except ValueError as e:
      out[name] = f"{type(e).__name__}: {e}"
  return out


def main() -> None:
  """Runs in the 8-device subprocess; prints one JSON object of measurements."""
  sys.path.insert(0, str(ROOT))
  from vaejax import models, objectives  # pylint: disable=g-import-not-at-top
  from vaejax.training import loop  # pylint: disable=g-import-not-at-top
  from vaejax.training.executor import Executor  # pylint: disable=g-import-not-at-top
  from vaejax.training.optimizer import make_optimizer  # pylint: disable=g-import-not-at-top
  from vaejax.training.state import init_stack  # pylint: disable=g-import-not-at-top
  from vaejax.training.step import (  # pylint: disable=g-import-not-at-top
      Hyperparams, make_train_step, stack_hyperparams)

  out = {"devices": jax.device_count(), "errors": _errors()}

  # Placement (no compile): models over the model axis; one-model programs replicated
  # over the data axis with their batch split.
  model = models.create_model({"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (16,)},
                              IMAGE_SHAPE)
  optimizer = make_optimizer()
  seeds = [0, 5, 1, 7]
  init = init_stack(model, optimizer, seeds, IMAGE_SHAPE)
  hyper = stack_hyperparams([Hyperparams(objectives.LossSettings(), 1e-2, 0)] * 4)
  step_fn = make_train_step(model, optimizer)
  for name, (m, d, chunk) in {"model_axis": (4, 1, 4), "data_axis_sequential": (1, 2, 1)}.items():
    executor = Executor(step_fn, seeds, hyper, chunk_size=chunk, max_consecutive_skips=3,
                        mesh=mesh_lib.make_mesh(m, d))
    executor.load(init)
    leaves = jax.tree.leaves(executor.chunk_states[0].models)
    out[name] = {"state": sorted({str(x.sharding.spec) for x in leaves}),
                 "devices": len(leaves[0].sharding.device_set),
                 "batch": str(executor.batch_sharding(executor.chunks[0]).spec),
                 "per_device_models": leaves[0].addressable_shards[0].data.shape[0]
                 if chunk > 1 else 1}

  # The loop on a (2 model × 2 data) mesh, checkpointing and evaluating sharded states,
  # against the same sweep on one device.
  runs = {}
  for name, (m, d) in {"one_device": (1, 1), "mesh": (2, 2)}.items():
    with tempfile.TemporaryDirectory() as workdir:
      result = loop.train(_config(m, d), workdir, grid=GRID, dataset=tiny.sampled_dataset(0),
                          progress=False, write_report=False)
      checkpoints = sorted(p.name for p in (Path(workdir) / "checkpoints").iterdir())
    runs[name] = (result, checkpoints)
  (one, _), (sharded, checkpoints) = runs["one_device"], runs["mesh"]
  out["loop"] = {
      "params": _max_diff(sharded.states[0].models.params, one.states[0].models.params),
      "loss": _max_diff([r["loss"] for r in sharded.rows], [r["loss"] for r in one.rows]),
      "eval_elbo": _max_diff([r["eval/elbo"] for r in sharded.rows],
                             [r["eval/elbo"] for r in one.rows]),
      "points": sharded.points == one.points,
      "steps": [int(s) for s in sharded.states[0].models.step],
      "checkpoints": checkpoints,
  }
  print("RESULT " + json.dumps(out))


# The subprocess (its own JAX start and compiles, ~30 s) runs with the slow tests.
needs_eight_devices = pytest.mark.slow


@pytest.fixture(scope="module")
def eight_devices():
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                        timeout=300, cwd=ROOT, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("RESULT "):])


@needs_eight_devices
def test_subprocess_has_eight_devices(eight_devices):
  assert eight_devices["devices"] == DEVICES


@needs_eight_devices
def test_models_are_split_over_the_model_axis(eight_devices):
  case = eight_devices["model_axis"]
  assert case == {"state": ["P('model',)"], "devices": 4, "batch": "P('model', 'data')",
                  "per_device_models": 1}


@needs_eight_devices
def test_single_model_programs_replicate_state_and_split_the_batch(eight_devices):
  case = eight_devices["data_axis_sequential"]
  assert case == {"state": ["P()"], "devices": 2, "batch": "P('data',)",
                  "per_device_models": 1}


@needs_eight_devices
def test_sharded_loop_checkpoints_and_matches_one_device(eight_devices):
  # Model and data axes (2 × 2): splitting a batch over devices reorders the sums of its
  # gradient (an all-reduce), so the numbers match one device up to rounding.
  run = eight_devices["loop"]
  assert run["steps"] == [6, 6, 6, 6] and run["checkpoints"] == ["3", "6"] and run["points"]
  assert run["params"] < 1e-5 and run["loss"] < 1e-3 and run["eval_elbo"] < 1e-3


@needs_eight_devices
@pytest.mark.parametrize("name, fragment", [
    ("too_many_devices", "needs 16 devices; only 8 are available"),
    ("models", "does not divide the 3 models"),
    ("batch", "does not divide batch_size=6"),
])
def test_mesh_errors_are_clear(eight_devices, name, fragment):
  assert fragment in eight_devices["errors"][name]


def test_one_device_mesh_errors_name_the_fix():
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
    mesh_lib.make_mesh(jax.device_count() + 1, 1)
  with pytest.raises(ValueError, match="cannot both be 0"):
    mesh_lib.make_mesh(0, 0)
  with pytest.raises(ValueError, match="must be an int >= 0"):
    mesh_lib.make_mesh(-1, 1)
  mesh = mesh_lib.make_mesh(0, 1)
  assert mesh.shape == {"model": jax.device_count(), "data": 1}
  assert mesh_lib.axis_size(None, mesh_lib.MODEL_AXIS) == 1
  mesh_lib.check_divisible(None, models_per_program=3, batch_size=5)  # no mesh: no check


if __name__ == "__main__":
  main()

"""Sweeps on a device mesh: 8 CPU devices give the numbers of one device.

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

from vaejax import sharding

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8


def _executor_run(parts, specs, mesh, chunk_size, batch_fn, steps):
  """Final params and losses after ``steps`` steps of an executor."""
  from vaejax import sweep  # pylint: disable=g-import-not-at-top

  step_fn, init = parts
  executor = sweep.SweepExecutor(step_fn, [s.seed for s in specs], sweep.settings_arrays(specs),
                                 chunk_size=chunk_size, max_consecutive_skips=3,
                                 batch_fn=batch_fn, mesh=mesh)
  executor.load(init)
  for _ in range(steps):
    metrics = executor.step()
  return executor.gather().models.params, executor.fetch(metrics)["loss"]


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _errors() -> dict:
  import test_sweep as ts  # pylint: disable=g-import-not-at-top

  from vaejax import sweep  # pylint: disable=g-import-not-at-top

  def sweep_on_mesh(model_devices, data_devices, **config_kwargs):
    config = ts.tiny_config(**config_kwargs)
    config.sweep.strategy = "vmap"
    config.sweep.model_devices, config.sweep.data_devices = model_devices, data_devices
    sweep.train_sweep(config, tempfile.mkdtemp(), dataset=ts.tiny_dataset())

  calls = {
      "too_many_devices": lambda: sharding.make_mesh(16, 1),
      "models": lambda: sweep_on_mesh(2, 1, grid={"beta": (1.0, 2.0, 4.0)}, seeds=(0,)),
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
  sys.path.insert(0, str(ROOT / "tests"))
  sys.path.insert(0, str(ROOT))
  import test_sweep as ts  # pylint: disable=g-import-not-at-top

  from vaejax import data, models, sweep, train  # pylint: disable=g-import-not-at-top

  out = {"devices": jax.device_count(), "errors": _errors()}
  specs = sweep.make_grid({"beta": (0.5, 4.0)}, seeds=(0, 5))  # the 4 models of tiny_config
  model = models.create_model({"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (16,)},
                              ts.IMAGE_SHAPE)
  optimizer = train.make_optimizer(ts.LR)
  parts = (train.make_train_step(model, optimizer),
           sweep.init_state(model, optimizer, [s.seed for s in specs], ts.IMAGE_SHAPE))
  sampled = ts.SampledTiny("sampled", {"train": data.SplitArrays(
      np.zeros((8, *ts.IMAGE_SHAPE)))}, image_shape=ts.IMAGE_SHAPE)

  def batch_fn(seed, step):
    return train.make_batch_fn(sampled, ts.BATCH, seed)(step)

  # The one-device reference of the sharded runner below: 6 steps, in-program batches.
  reference = _executor_run(parts, specs, None, 4, batch_fn, 6)

  # Placement (no compile): models over the model axis; one-model programs replicated
  # over the data axis with their batch split.
  for name, (m, d, chunk) in {"model_axis": (4, 1, 4), "data_axis_sequential": (1, 2, 1)}.items():
    executor = sweep.SweepExecutor(parts[0], [s.seed for s in specs],
                                   sweep.settings_arrays(specs), chunk_size=chunk,
                                   max_consecutive_skips=3, mesh=sharding.make_mesh(m, d))
    executor.load(parts[1])
    leaves = jax.tree.leaves(executor.chunk_states[0].models)
    out[name] = {"state": sorted({str(x.sharding.spec) for x in leaves}),
                 "devices": len(leaves[0].sharding.device_set),
                 "batch": str(executor.batch_sharding(executor.chunks[0]).spec),
                 "per_device_models": leaves[0].addressable_shards[0].data.shape[0]
                 if chunk > 1 else 1}

  # The runner on a (2 model × 2 data) mesh, checkpointing and evaluating sharded states,
  # against the one-device executor run of the same 4 models.
  config = ts.tiny_config(num_steps=6, checkpoint_every=3, eval_every=6)
  config.sweep.strategy = "vmap"
  config.sweep.model_devices, config.sweep.data_devices = 2, 2
  with tempfile.TemporaryDirectory() as workdir:
    result = sweep.train_sweep(config, workdir, dataset=sampled, write_report=False)
    checkpoints = sorted(p.name for p in (Path(workdir) / "checkpoints").iterdir())
  out["runner"] = {
      "params": _max_diff(result.state.models.params, reference[0]),
      "loss": _max_diff(np.asarray([r["loss"] for r in result.rows]), reference[1]),
      "eval_elbo_finite": all(np.isfinite(r["eval/elbo"]) for r in result.rows),
      "steps": [int(s) for s in result.state.models.step],
      "checkpoints": checkpoints,
  }
  print("RESULT " + json.dumps(out))


@pytest.fixture(scope="module")
def eight_devices():
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                        timeout=300, cwd=ROOT, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("RESULT "):])


def test_subprocess_has_eight_devices(eight_devices):
  assert eight_devices["devices"] == DEVICES


def test_models_are_split_over_the_model_axis(eight_devices):
  case = eight_devices["model_axis"]
  assert case == {"state": ["P('model',)"], "devices": 4, "batch": "P('model', 'data')",
                  "per_device_models": 1}


def test_single_model_programs_replicate_state_and_split_the_batch(eight_devices):
  case = eight_devices["data_axis_sequential"]
  assert case == {"state": ["P()"], "devices": 2, "batch": "P('data',)",
                  "per_device_models": 1}


def test_sharded_runner_checkpoints_and_matches_one_device(eight_devices):
  # Model and data axes (2 × 2): splitting a batch over devices reorders the sums of its
  # gradient (an all-reduce), so the numbers match one device up to rounding.
  runner = eight_devices["runner"]
  assert runner["steps"] == [6, 6, 6, 6] and runner["checkpoints"] == ["3", "6"]
  assert runner["params"] < 1e-5 and runner["loss"] < 1e-3 and runner["eval_elbo_finite"]


@pytest.mark.parametrize("name, fragment", [
    ("too_many_devices", "needs 16 devices; only 8 are available"),
    ("models", "does not divide the 3 models"),
    ("batch", "does not divide batch_size=6"),
])
def test_mesh_errors_are_clear(eight_devices, name, fragment):
  assert fragment in eight_devices["errors"][name]


def test_one_device_mesh_errors_name_the_fix():
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
    sharding.make_mesh(jax.device_count() + 1, 1)
  with pytest.raises(ValueError, match="cannot both be 0"):
    sharding.make_mesh(0, 0)
  mesh = sharding.make_mesh(0, 1)
  assert mesh.shape == {"model": jax.device_count(), "data": 1}
  sharding.check_divisible(None, models_per_program=3, batch_size=5)  # no mesh: no check


if __name__ == "__main__":
  main()

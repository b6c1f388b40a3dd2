"""Multi-process runs, for real: two processes on 127.0.0.1 joined by ``jax.distributed``
(gloo collectives on CPU), started through the entry points' ``--coordinator_address``,
``--num_processes`` and ``--process_id`` flags.

(a) A sweep of 4 models sharded over the model axis across both processes logs, per model,
    exactly the losses of the same sweep in one process with as many devices
    (``--xla_force_host_platform_device_count``).
(b) One model data-parallel across both processes equals a single-device run within float
    rounding.
(c) Killing both processes mid-run and starting both again resumes exactly.
Only process 0 writes the logs; the processes are killed if a test fails.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaejax.training import checkpoint, writers
from vaejax.utils import faults

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config=experiments/configs/betavae_dsprites.py:test",
        "--config.model.name=mlp_vae", "--config.model.hidden_sizes=(16,)",
        "--config.model.latent_dim=3", "--config.num_steps=6", "--config.checkpoint_every=2",
        "--config.log_every=1", "--config.evals.figures.at_end=False"]
SWEEP = ["experiments.sweep", *TINY, "--config.execution.strategy=vmap",
         "--config.execution.model_devices=0", "--grid=loss.beta=0.5,4", "--grid=seed=0,5"]
DATA_PARALLEL = ["experiments.train", *TINY, "--config.batch_size=8",
                 "--config.execution.data_devices=0"]


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, fault: str | None = None) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  return env


def run(command, workdir, *, processes=1, devices=1, fault=None, timeout=150):
  """Runs ``python -m command`` as ``processes`` processes of ``devices`` CPU devices each;
  returns their exit codes (all processes are killed on a timeout)."""
  args = [sys.executable, "-m", command[0], *command[1:], f"--workdir={workdir}"]
  if processes > 1:
    port = _free_port()
    procs = [subprocess.Popen(
        args + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                f"--process_id={i}"], cwd=REPO, env=_env(devices, fault),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
  else:
    procs = [subprocess.Popen(args, cwd=REPO, env=_env(devices, fault),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
  try:
    errors = [p.communicate(timeout=timeout)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  codes = [p.returncode for p in procs]
  if fault is None:
    assert codes == [0] * len(procs), "\n".join(e[-2000:] for e in errors)
  return codes


def losses(workdir):
  """Per model, its logged losses in step order."""
  per_model = {}
  for row in writers.read_jsonl(Path(workdir) / writers.METRICS_FILE):
    per_model.setdefault(row.get("model", 0), []).append(row["loss"])
  return [per_model[m] for m in sorted(per_model)]


def rows_without_timing(workdir):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"}
          for r in writers.read_jsonl(Path(workdir) / writers.METRICS_FILE)]


@pytest.fixture(scope="module")
def two_process_sweep(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two_processes")
  run(SWEEP, workdir, processes=2, devices=1)
  return workdir


def test_a_sweep_across_two_processes_equals_one_process_with_as_many_devices(
    two_process_sweep, tmp_path):
  run(SWEEP, tmp_path, processes=1, devices=2)
  got, want = losses(two_process_sweep), losses(tmp_path)
  assert len(got) == 4 and all(len(g) == 6 for g in got)
  assert got == want  # bit-identical, per model and step
  assert (two_process_sweep / "results.jsonl").is_file()  # process 0 finished the sweep


def test_one_model_data_parallel_across_two_processes_equals_one_device(tmp_path):
  run(DATA_PARALLEL, tmp_path / "two", processes=2, devices=1)
  run(DATA_PARALLEL, tmp_path / "one", processes=1, devices=1)
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)


def test_killing_both_processes_and_starting_both_again_resumes_exactly(two_process_sweep,
                                                                        tmp_path):
  codes = run(SWEEP, tmp_path, processes=2, devices=1, fault="kill:step@3")
  assert codes == [-signal.SIGKILL] * 2
  run(SWEEP, tmp_path, processes=2, devices=1)
  assert rows_without_timing(tmp_path) == rows_without_timing(two_process_sweep)
  a, _, step_a = checkpoint.restore_state(tmp_path / checkpoint.CHECKPOINT_DIR)
  b, _, step_b = checkpoint.restore_state(two_process_sweep / checkpoint.CHECKPOINT_DIR)
  assert step_a == step_b == 6
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, a, b)

"""Exact resume: a run killed with SIGKILL and restarted logs what an uninterrupted run logs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import pytest

from vaejax.training import checkpoint, writers

REPO = Path(__file__).resolve().parents[1]

# A tiny MLP on procedural dSprites (sampled and rendered inside the jitted step).
NUM_STEPS = 300
CHECKPOINT_EVERY = 50
OVERRIDES = (
    "--config.model.name=mlp_vae",
    "--config.model.hidden_sizes=(16,)",
    "--config.model.latent_dim=3",
    "--config.batch_size=8",
    f"--config.num_steps={NUM_STEPS}",
    "--config.log_every=1",
    f"--config.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.evals.elbo.every=100",
    "--config.eval.num_batches=1",
    "--config.eval.batch_size=16",
    "--config.evals.figures.at_end=false",
    "--config.evals.disentanglement.at_end=false",
)


def _start(workdir: Path, cache_dir: Path) -> subprocess.Popen:
  env = dict(os.environ)
  # A shared persistent compilation cache: the three processes compile once. Cached
  # executables are the ones XLA would build, so results are unaffected.
  env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train",
       "--config=experiments/configs/betavae_dsprites.py:test", f"--workdir={workdir}",
       *OVERRIDES],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finished_checkpoints(workdir: Path) -> list[int]:
  directory = workdir / checkpoint.CHECKPOINT_DIR
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _without_timing(rows):
  return [{k: v for k, v in row.items() if k != "steps_per_sec"} for row in rows]


@pytest.mark.slow  # a kill at a random moment; tests/test_recovery.py kills at fixed points in CI
def test_sigkill_then_resume_is_bit_identical(tmp_path):
  cache = tmp_path / "jax_cache"
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  ref_proc = _start(reference, cache)
  proc = _start(killed, cache)
  deadline = time.monotonic() + 240
  while not _finished_checkpoints(killed):
    if proc.poll() is not None or time.monotonic() > deadline:
      ref_proc.kill()
      pytest.fail(f"run ended before its first checkpoint: {proc.communicate()[1][-2000:]}")
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  at_kill = _finished_checkpoints(killed)
  rows_at_kill = writers.read_jsonl(killed / writers.METRICS_FILE)
  assert at_kill[-1] < NUM_STEPS, "the run finished before it was killed; the test is void"

  _, err = ref_proc.communicate(timeout=300)
  assert ref_proc.returncode == 0, err[-2000:]
  resumed = _start(killed, cache)
  _, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err[-2000:]
  assert f"Resumed from step {at_kill[-1]}" in err

  expected = writers.read_jsonl(reference / writers.METRICS_FILE)
  got = writers.read_jsonl(killed / writers.METRICS_FILE)
  assert [r["step"] for r in expected] == list(range(1, NUM_STEPS + 1))
  # Bit-identical: JSON floats round-trip float32 values exactly.
  assert _without_timing(got) == _without_timing(expected)
  assert [r["loss"] for r in got] == [r["loss"] for r in expected]
  assert "eval/elbo" in got[99] and "eval/active_units" in got[99]

  # Same final parameters, optimizer state, keys and counters, bit for bit.
  state_a, meta_a, step_a = checkpoint.restore_state(reference / checkpoint.CHECKPOINT_DIR)
  state_b, meta_b, step_b = checkpoint.restore_state(killed / checkpoint.CHECKPOINT_DIR)
  assert step_a == step_b == NUM_STEPS
  chex.assert_trees_all_equal(state_a, state_b)
  assert meta_a["data_position"] == meta_b["data_position"] == NUM_STEPS
  assert meta_a["points"] == meta_b["points"] == [{}]
  # The killed run had logged past its last checkpoint; those rows were replaced.
  print(f"killed at checkpoint {at_kill[-1]} with {len(rows_at_kill)} rows logged")


def test_truncate_jsonl_keeps_complete_rows_up_to_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "loss": float(s) / 3} for s in range(1, 6)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
  assert writers.read_jsonl(path) == rows  # the torn last line is skipped
  assert writers.truncate_jsonl(path, 3) == 3
  assert writers.read_jsonl(path) == rows[:3]
  assert path.read_text().endswith("\n")
  # The rows taken out are kept, in order, and a second rewind appends to them.
  rewound = tmp_path / "metrics.rewound.jsonl"
  assert writers.rewound_path(path) == rewound
  assert writers.read_jsonl(rewound) == rows[3:]
  assert writers.truncate_jsonl(path, 1) == 1
  assert writers.read_jsonl(rewound) == rows[3:] + rows[1:3]
  assert writers.truncate_jsonl(path, 1) == 1  # nothing past step 1: nothing moves
  assert writers.read_jsonl(rewound) == rows[3:] + rows[1:3]
  assert writers.truncate_jsonl(tmp_path / "absent.jsonl", 3) == 0


def test_truncate_jsonl_drops_only_the_rows_it_owns(tmp_path):
  """A resumed group of a sweep drops its own rows past its checkpoint, not the others'."""
  path = tmp_path / "metrics.jsonl"
  rows = [{"group": g, "step": s} for g in (0, 1) for s in (2, 4, 6)]
  writers.write_jsonl(path, rows)
  assert writers.truncate_jsonl(path, 3, owns=lambda row: row["group"] == 1) == 4
  assert writers.read_jsonl(path) == rows[:3] + [{"group": 1, "step": 2}]
  assert writers.read_jsonl(writers.rewound_path(path)) == rows[4:]

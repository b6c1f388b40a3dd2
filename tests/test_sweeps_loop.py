"""Sweeps through the one loop: rows, results, resume, grid checks, divergence, groups.

:func:`vaejax.training.loop.train` with a ``grid`` on tiny data (48 binary 6×6 images, MLP
VAEs with 16 hidden units and 3 latents, 6 steps). That each model equals its single run
is checked in ``test_engine.py``; the executor's strategies in ``test_executor.py``.
"""

import json
import shutil

import chex
import numpy as np
import pytest

from vaejax import config as config_lib
from vaejax.training import checkpoint, loop, writers

from tiny import tiny_dataset

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

# Two hidden sizes (a key that does not stack: two programs, run one after another in one
# workdir) × two β values (stacked within each program).
GRID = ["model.hidden_sizes=(16,),(8,)", "loss.beta=0.5,4"]
POINTS = [{"model.hidden_sizes": h, "loss.beta": b} for h in ((16,), (8,)) for b in (0.5, 4.0)]


def tiny_config(**top_level):
  """Tiny MLP VAEs, 6 steps, rows every 2, checkpoints every 3, the ELBO at the end."""
  config = config_lib.base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.learning_rate = 1e-2
  config.num_steps, config.batch_size = 6, 8
  config.log_every, config.checkpoint_every = 2, 3
  config.evals.elbo.every = 0  # at the end only
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.evals.figures.at_end = False
  config.execution.strategy = "sequential"
  for key, value in top_level.items():
    config[key] = value
  return config


def read_rows(workdir, name=writers.METRICS_FILE):
  rows = writers.read_jsonl(workdir / name)
  for row in rows:
    row.pop("steps_per_sec", None)  # timing: differs between runs
  return rows


def checkpoint_steps(directory):
  return sorted(int(p.name) for p in (directory / checkpoint.CHECKPOINT_DIR).iterdir()
                if p.name.isdigit())


def train(config, workdir, grid, dataset=None, **kwargs):
  kwargs.setdefault("write_report", False)
  return loop.train(config, workdir, grid=grid, dataset=dataset or tiny_dataset(),
                    progress=False, **kwargs)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  return workdir, train(tiny_config(), workdir, GRID, write_report=True)


def test_rows_carry_each_models_point_group_and_results(full_run):
  workdir, result = full_run
  assert result.points == POINTS  # the order of the flags, the last fastest
  rows = read_rows(workdir)
  # Group by group; within one, a row per model per logged step.
  assert [(r["group"], r["step"], r["model"]) for r in rows] == [
      (g, s, m) for g in (0, 1) for s in (2, 4, 6) for m in (2 * g, 2 * g + 1)]
  assert [r["point"] for r in rows if r["step"] == 6] == [
      {**p, "model.hidden_sizes": list(p["model.hidden_sizes"])} for p in POINTS]
  assert all(r["active"] and r["masked_at"] == -1 for r in rows)
  assert {"loss", "kl_per_dim", "learning_rate", "eval/elbo"} <= set(rows[-1])
  assert "eval/elbo" not in rows[0]  # the ELBO at step 6 only
  # β = 4 buys a lower rate than β = 0.5 for the same architecture, even in 6 steps.
  final = {(tuple(r["point"]["model.hidden_sizes"]), r["point"]["loss.beta"]): r
           for r in result.rows}
  for hidden in ((16,), (8,)):
    assert final[(hidden, 4.0)]["eval/kl"] < final[(hidden, 0.5)]["eval/kl"]
  saved = read_rows(workdir, loop.RESULTS_FILE)
  assert [(r["model"], r["group"]) for r in saved] == [(0, 0), (1, 0), (2, 1), (3, 1)]
  assert [r["eval/elbo"] for r in saved] == [r["eval/elbo"] for r in rows if "eval/elbo" in r]
  assert result.report and all(p.is_file() and p.parent == workdir / loop.REPORT_DIR
                               for p in result.report)
  assert (workdir / loop.REPORT_DIR / "results.md").is_file()
  assert sorted(p.name for p in (workdir / writers.TENSORBOARD_DIR).iterdir()) == [
      "m000", "m001", "m002", "m003"]
  # Each program checkpoints in its own directory.
  assert not (workdir / checkpoint.CHECKPOINT_DIR).exists()
  for g in (0, 1):
    assert checkpoint_steps(workdir / f"group_{g}") == [3, 6]
  assert [s.models.params["encoder"]["hidden_0"]["kernel"].shape
          for s in result.states] == [(2, 36, 16), (2, 36, 8)]
  for state in result.states:
    np.testing.assert_array_equal(state.models.step, [6, 6])
  saved_config = json.loads((workdir / loop.CONFIG_FILE).read_text())
  assert saved_config["grid"] == GRID  # what experiments.sweep --grid ran


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
  """The sweep of ``full_run`` killed in group 1, then re-run: (workdir, what the kill left
  behind (checkpoint steps per group, group 1's last row), the resumed run's result)."""
  workdir = tmp_path_factory.mktemp("killed")
  # Killed while fetching the batch of group 1's step 5 (the 3rd request of batch 4,
  # after group 0's two models finished).
  with pytest.raises(KeyboardInterrupt):
    train(tiny_config(), workdir, GRID, tiny_dataset(crash_at=4, crash_after=3))
  at_kill = {"group_0": checkpoint_steps(workdir / "group_0"),
             "group_1": checkpoint_steps(workdir / "group_1"),
             "last_row": max(r["step"] for r in read_rows(workdir) if r["group"] == 1)}
  return workdir, at_kill, train(tiny_config(), workdir, GRID)


def test_killed_sweep_resumes_bit_identically(full_run, killed_and_resumed):
  workdir, result = full_run
  killed, at_kill, resumed = killed_and_resumed
  assert at_kill == {"group_0": [3, 6], "group_1": [3], "last_row": 4}
  # Group 0 is found finished; group 1 continues from its checkpoint 3 and drops only its
  # own rows past it.
  assert read_rows(killed) == read_rows(workdir)
  chex.assert_trees_all_equal(resumed.states, result.states)


def test_a_resumed_sweep_keeps_the_results_of_finished_groups(full_run, killed_and_resumed):
  assert read_rows(killed_and_resumed[0], loop.RESULTS_FILE) == read_rows(
      full_run[0], loop.RESULTS_FILE)


def test_a_changed_grid_cannot_resume(full_run, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(full_run[0], copy)  # the module's run stays untouched
  with pytest.raises(config_lib.ConfigError, match="checkpoint .* of another grid"):
    train(tiny_config(), copy, ["model.hidden_sizes=(16,),(8,)", "loss.beta=0.5,8"])
  with pytest.raises(config_lib.ConfigError, match="learning_rate: 0.01 in the checkpoint"):
    train(tiny_config(learning_rate=0.1), copy, GRID)


def test_a_refused_resume_keeps_the_saved_config(full_run, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(full_run[0], copy)
  saved = (copy / loop.CONFIG_FILE).read_text()
  with pytest.raises(config_lib.ConfigError, match="another grid"):
    train(tiny_config(), copy, ["model.hidden_sizes=(16,),(8,)", "loss.beta=0.5,8"])
  assert (copy / loop.CONFIG_FILE).read_text() == saved


def test_grid_errors_come_before_anything_runs(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="also set by --config.loss.beta"):
    train(tiny_config(), tmp_path, ["loss.beta=1,2"], overridden=["loss.beta"])
  with pytest.raises(config_lib.ConfigError, match="The sweep has no grid"):
    train(tiny_config(), tmp_path, [])
  with pytest.raises(config_lib.ConfigError, match="Sweep point loss.beta=-2: .*beta"):
    train(tiny_config(), tmp_path, ["loss.beta=1,-2"])
  config = tiny_config()
  config.execution.strategy = "magic"
  with pytest.raises(config_lib.ConfigError, match="execution.strategy='magic'"):
    train(config, tmp_path, GRID)
  assert not list(tmp_path.iterdir())


def test_a_diverged_model_is_masked_and_the_sweep_goes_on(tmp_path):
  config = tiny_config(num_steps=4)
  config.optimizer.max_consecutive_skips = 1
  result = train(config, tmp_path, ["seed=3,4"], tiny_dataset(bad_seeds=(3,), bad_from=1))
  rows = read_rows(tmp_path)
  # Steps 2 and 3 skipped: the streak 2 exceeds 1 at step 3; model 1 trains to the end.
  assert [(r["step"], r["model"], r["active"], r["masked_at"]) for r in rows] == [
      (2, 0, True, -1), (2, 1, True, -1), (4, 0, False, 3), (4, 1, True, -1)]
  assert np.isnan(rows[2]["loss"]) and np.isfinite(rows[3]["loss"])
  assert "group" not in rows[0]  # one program: no groups, checkpoints in the workdir
  assert checkpoint_steps(tmp_path) == [3, 4]
  assert [r["active"] for r in read_rows(tmp_path, loop.RESULTS_FILE)] == [False, True]
  np.testing.assert_array_equal(result.states[0].models.step, [3, 4])


def test_sweep_stops_when_every_model_diverged(tmp_path):
  config = tiny_config(checkpoint_every=2)
  config.optimizer.max_consecutive_skips = 1
  with pytest.raises(loop.NonFiniteError,
                     match=r"All 2 models .* diverged .* by step 4; the last checkpoint "
                           r"\(step 2\) is intact"):
    train(config, tmp_path, ["seed=3,4"], tiny_dataset(bad_seeds=(3, 4), bad_from=2))
  rows = read_rows(tmp_path)
  assert [(r["step"], r["model"], r["active"]) for r in rows] == [(2, 0, True), (2, 1, True)]
  assert checkpoint_steps(tmp_path) == [2]


def test_a_grid_that_splits_into_other_groups_cannot_resume_either(full_run, tmp_path):
  """The checkpoints of a one-group grid live in checkpoints/, those of a several-group grid
  in group_<g>/: a changed grid is refused whichever layout it has, and nothing is touched."""
  one_group = tmp_path / "one"
  train(tiny_config(), one_group, ["loss.beta=0.5,4"])
  rows = read_rows(one_group)
  with pytest.raises(config_lib.ConfigError, match="of another grid"):
    train(tiny_config(), one_group, GRID)  # two groups now
  assert read_rows(one_group) == rows and not list(one_group.glob("group_*"))
  several = tmp_path / "several"
  shutil.copytree(full_run[0], several)
  with pytest.raises(config_lib.ConfigError, match="of another grid"):
    train(tiny_config(), several, ["loss.beta=0.5,4"])  # one group now
  assert read_rows(several) == read_rows(full_run[0])


def test_a_finished_sweep_over_a_tuple_valued_key_can_be_evaluated(full_run):
  """experiments.evaluate rebuilds the sweep from the points in its checkpoints (the grid
  re-parsed against config.json would see lists where the config had tuples)."""
  results = loop.evaluate_workdir(full_run[0], ["elbo"], dataset=tiny_dataset())
  assert [r["point"] for r in results] == [
      {"model.hidden_sizes": list(p["model.hidden_sizes"]), "loss.beta": p["loss.beta"]}
      for p in POINTS]
  final = {r["model"]: r for r in read_rows(full_run[0], loop.RESULTS_FILE)}
  for r in results:  # the same held-out data and keys as at the end of training
    assert r["elbo"]["elbo"] == final[r["model"]]["eval/elbo"]


def test_a_chunk_larger_than_a_group_is_that_group(tmp_path):
  config = tiny_config()
  config.execution.strategy, config.execution.chunk_size = "chunked", 4
  result = train(config, tmp_path, GRID)  # 2 groups of 2 models
  assert len(result.rows) == 4

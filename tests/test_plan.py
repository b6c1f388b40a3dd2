"""The loop's decisions: made once (the plan), on a schedule (periodic actions), in one place.

Counts, on tiny sweeps (48 binary 6×6 images, MLP VAEs with 8 hidden units, 2 steps), how
often :func:`vaejax.training.loop.train` validates a config, builds a point's
hyper-parameters, probes a checkpoint directory and restores one; checks the periodic
schedules against sets of steps written out here; and that the names the loop's parts
moved out of ``loop.py`` are still importable from it.
"""

import collections

import chex
import pytest
from hypothesis import given, settings, strategies as st

from vaejax import config as config_lib
from vaejax.evaluation import evaluators as evaluators_lib
from vaejax.training import checkpoint, finished, loop, periodic, plan, step, steps

from tiny import tiny_dataset

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code


def tiny_config():
  config = config_lib.base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (8,), "latent_dim": 2})
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size, config.log_every, config.checkpoint_every = 2, 8, 1, 2
  config.evals.elbo.every, config.evals.elbo.at_end = 0, False
  config.evals.figures.at_end = False
  config.execution.strategy = "sequential"
  return config


@pytest.fixture
def calls(monkeypatch):
  """Counts the calls of the functions that the plan should reach once each."""
  counts = collections.Counter()
  for module, name in ((config_lib, "validate"), (step, "hyperparams_from_config"),
                       (checkpoint, "latest_resumable_step"), (checkpoint, "restore_latest")):
    real = getattr(module, name)

    def counted(*args, real=real, name=name, **kwargs):
      counts[name] += 1
      return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
  return counts


def test_a_sweep_decides_each_thing_once_per_point_and_per_directory(tmp_path, calls):
  """Two points in one group: the base config and each point validated once, each point's
  hyper-parameters built once, the one checkpoint directory probed once; a re-run of the
  finished sweep restores each group once and trains nothing."""
  grid = ["loss.beta=1,4"]
  first = loop.train(tiny_config(), tmp_path, grid=grid, dataset=tiny_dataset(),
                     progress=False, write_report=False)
  assert calls == {"validate": 3, "hyperparams_from_config": 2, "latest_resumable_step": 1}
  calls.clear()
  again = loop.train(tiny_config(), tmp_path, grid=grid, dataset=tiny_dataset(),
                     progress=False, write_report=False)
  assert calls == {"validate": 3, "hyperparams_from_config": 2, "latest_resumable_step": 1,
                   "restore_latest": 1}
  chex.assert_trees_all_equal(again.states, first.states)
  assert again.rows == first.rows


def test_a_sweep_of_two_groups_probes_each_group_directory_once(tmp_path, calls):
  grid = ["model.hidden_sizes=(8,),(4,)"]  # does not stack: two programs, two directories
  plan.with_resume_steps(loop.make_plan(tiny_config(), tmp_path, grid=grid,
                                        dataset=tiny_dataset()))
  assert calls == {"validate": 3, "hyperparams_from_config": 2, "latest_resumable_step": 2}


def test_a_single_run_validates_its_config_once(tmp_path, calls):
  run = plan.with_resume_steps(loop.make_plan(tiny_config(), tmp_path, dataset=tiny_dataset()))
  assert calls == {"validate": 1, "hyperparams_from_config": 1, "latest_resumable_step": 1}
  (group,) = run.groups
  assert group.resume_step is None and group.checkpoint_dir == tmp_path / "checkpoints"
  assert run.saved_config == config_lib.to_dict(tiny_config()) and run.saved_points == [{}]
  assert group.traits == plan.ModelTraits(conditional=False, latent_groups=None, latent_dim=2)


def test_the_names_that_moved_out_of_loop_py_are_still_importable_from_it():
  assert loop.evaluate_workdir is finished.evaluate_workdir
  assert loop.load_config is finished.load_config
  assert loop.CONFIG_FILE == finished.CONFIG_FILE == "config.json"
  assert loop.plan is loop.make_plan is plan.make_plan  # ``plan``: the function's old name
  assert loop.NonFiniteError is steps.NonFiniteError
  assert loop.MODELS_DIR == plan.MODELS_DIR


# ----------------------------------------------------------------------------- schedules


def _reference_steps(every, at, at_end, last):
  """The steps 1..last an action runs at, written as ranges and sets."""
  due = set(range(every, last + 1, every)) if every else set()
  return due | {s for s in at if s <= last} | ({last} if at_end else set())


@settings(max_examples=200, deadline=None)
@given(every=st.integers(0, 9), at=st.sets(st.integers(1, 40), max_size=4),
       at_end=st.booleans(), last=st.integers(1, 40))
def test_a_schedule_is_due_on_its_period_at_its_steps_and_at_the_end(every, at, at_end, last):
  schedule = periodic.Schedule.create(every=every, at=at, at_end=at_end)
  assert {s for s in range(1, last + 1) if schedule.due(s, last)} == _reference_steps(
      every, at, at_end, last)


@settings(max_examples=50, deadline=None)
@given(log_every=st.integers(1, 9), checkpoint_every=st.integers(1, 9),
       evals=st.lists(st.tuples(st.integers(0, 9), st.booleans()), max_size=3),
       last=st.integers(1, 30))
def test_the_training_schedule_logs_checkpoints_and_evaluates_as_configured(
    log_every, checkpoint_every, evals, last):
  evaluators = [evaluators_lib.Evaluator(f"e{i}", {"every": every, "at_end": at_end}, None)
                for i, (every, at_end) in enumerate(evals)]
  schedule = periodic.TrainingSchedule(last, log_every, checkpoint_every, evaluators)
  for s in range(1, last + 1):
    due = schedule.at(s)
    assert due.log == (s in _reference_steps(log_every, (), True, last))
    assert due.checkpoint == (s in _reference_steps(checkpoint_every, (), True, last))
    assert due.evaluators == tuple(e for e, (every, at_end) in zip(evaluators, evals)
                                   if s in _reference_steps(every, (), at_end, last))
    # The evaluators' own ``due`` agrees (experiments.evaluate and others still use it).
    assert due.evaluators == tuple(e for e in evaluators if e.due(s, last))
    assert due.stop is None and due.any_action == (due.log or due.checkpoint
                                                   or bool(due.evaluators))


def test_bad_schedules_are_one_clear_error():
  with pytest.raises(ValueError, match="every=-1 must be an int >= 0"):
    periodic.Schedule.create(every=-1)
  with pytest.raises(ValueError, match="at=0 must be an int >= 1"):
    periodic.Schedule.create(at=(0,))
  with pytest.raises(ValueError, match="num_steps=0 must be an int >= 1"):
    periodic.TrainingSchedule(0, 1, 1)

"""The step stays on the device.

* With procedural dSprites the compiled train step renders its own batch (the jaxpr holds
  the renderer's named program) and calls back to the host nowhere.
* The loop moves data to the host only at log, evaluation and checkpoint steps: every
  device-to-host transfer of the loop goes through ``vaejax.training.mesh.to_host``, which
  the test counts step by step (on CPU ``jax.transfer_guard`` does not see ``device_get``).
* Each program is traced once per run: across steps, evaluation rounds and a resume in the
  same process.
"""

import logging
import re

import jax

from vaejax import data, models, objectives
from vaejax.config import base_config
from vaejax.training import executor as executor_lib
from vaejax.training import loop, mesh
from vaejax.training.optimizer import make_optimizer
from vaejax.training.state import init_stack
from vaejax.training.step import Hyperparams, make_batch_fn, make_train_step, stack_hyperparams

from tiny import tiny_dataset


def tiny_config():
  config = base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.batch_size, config.learning_rate = 8, 1e-2
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.evals.figures.at_end = False
  return config


def _subjaxprs(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _subjaxprs(inner)


def test_the_procedural_step_renders_its_batch_and_never_calls_the_host():
  dataset = data.load({"name": "dsprites_procedural"})
  model = models.create_model({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3},
                              dataset.image_shape)
  optimizer = make_optimizer()
  step = make_train_step(model, optimizer)
  program = executor_lib._chunk_program(  # pylint: disable=protected-access
      step, 10, False, make_batch_fn(dataset, 8), None)
  state = jax.tree.map(lambda x: x[0], init_stack(model, optimizer, [0], dataset.image_shape))
  hyper = jax.tree.map(lambda x: x[0], stack_hyperparams(
      [Hyperparams(objectives.LossSettings(), 1e-3, 0)]))
  args = (state, jax.numpy.uint32(0), hyper, None)
  closed = jax.make_jaxpr(program)(*args)
  names = {eqn.params.get("name") for eqn in _subjaxprs(closed.jaxpr)}
  primitives = {eqn.primitive.name for eqn in _subjaxprs(closed.jaxpr)}
  assert "dsprites_render" in names  # the batch is rendered inside the step
  assert not {p for p in primitives if "callback" in p}  # no pure/io/debug callbacks
  hlo = program.lower(*args).as_text()
  assert "callback" not in hlo.lower()  # and none in the compiled program


def test_the_loop_fetches_only_at_log_evaluation_and_checkpoint_steps(monkeypatch):
  calls, steps = [], {"done": 0}
  real_to_host, real_step = mesh.to_host, executor_lib.Executor.step

  def counting_to_host(tree):
    calls.append(steps["done"])
    return real_to_host(tree)

  def counting_step(self, *args, **kwargs):
    out = real_step(self, *args, **kwargs)
    steps["done"] += 1
    return out

  monkeypatch.setattr(mesh, "to_host", counting_to_host)
  monkeypatch.setattr(executor_lib.Executor, "step", counting_step)
  config = tiny_config()
  config.num_steps, config.log_every, config.checkpoint_every = 24, 8, 12
  config.evals.elbo.every = 6
  import tempfile  # pylint: disable=g-import-not-at-top
  loop.train_and_evaluate(config, tempfile.mkdtemp(), dataset=tiny_dataset(), progress=False)
  # Step 0: loading the initial state and the memory check; then only event steps.
  events = {0, 6, 8, 12, 16, 18, 24}
  assert set(calls) <= events, sorted(set(calls) - events)
  assert {6, 8, 12, 16, 18, 24} <= set(calls)  # every event fetched what it logs
  assert steps["done"] == 24


def test_each_program_is_traced_once_per_run(tmp_path, caplog):
  """Three evaluation rounds and a resumed continuation in the same process: the train
  step and the evaluation program are traced once (programs with the same model and
  settings are shared; re-running resumes without tracing again)."""
  config = tiny_config()
  config.num_steps, config.log_every, config.checkpoint_every = 6, 1, 3
  config.evals.elbo.every = 2
  # A model no other test builds, so its programs are new to this process.
  config.model.update({"hidden_sizes": (11,), "latent_dim": 5})
  dataset = tiny_dataset()
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      loop.train_and_evaluate(config, tmp_path, dataset=dataset, progress=False)
      first = caplog.text
      caplog.clear()
      config.num_steps = 10  # resume and continue in the same process
      loop.train_and_evaluate(config, tmp_path, dataset=dataset, progress=False)
      second = caplog.text
  finally:
    jax.config.update("jax_log_compiles", False)

  def traces(text, name):
    return len(re.findall(rf"Finished tracing {name} for jit", text))

  assert traces(first, "chunk_step") == 1
  assert traces(first, "fn") <= 2  # the ELBO evaluation (and nothing per round)
  assert traces(second, "chunk_step") == 0 and traces(second, "fn") == 0

"""``vaejax.load_run``: one trained model of a run or sweep, read-only, and its methods.

The loaded model's ELBO, with the run's held-out batches and evaluation keys, is the
``eval/elbo`` the run logged (single run; model 3 of a 4-model sweep picked by its point);
loading never writes into the workdir (every file's bytes and mtime are unchanged), takes
no lock and opens no ``CheckpointManager``, and works while a training process writes
checkpoints into the same workdir. The methods are checked against an independent float64
numpy forward pass of the MLP VAE and, for the other families, against the model's own
``apply``.
"""

import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny import IMAGE_SHAPE, tiny_dataset

import vaejax
from vaejax import config as config_lib
from vaejax import data, objectives
from vaejax.training import checkpoint, loop, plan, resume, trained
from vaejax.training import workdir as workdir_lib
from vaejax.training.state import abstract_stack
from vaejax.utils.files import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
EVAL_BATCH, EVAL_BATCHES = 16, 2
# The evaluator and the Run compute the same float32 ELBO in two XLA programs (one vmapped
# or per model, one per call), which may sum in other orders: ~1e-7 relative per sum over
# 36 pixels and 3 latents, a few sums deep; 1e-5 relative leaves a wide margin.
ELBO_RTOL = 1e-5


def tiny_config():
  config = config_lib.base_config()
  config.model.update(name="mlp_vae", hidden_sizes=(16,), latent_dim=3)
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size, config.learning_rate = 4, 8, 1e-2
  config.log_every, config.checkpoint_every = 2, 2
  config.eval.num_batches, config.eval.batch_size = EVAL_BATCHES, EVAL_BATCH
  config.evals.elbo.every = 2
  config.evals.figures.at_end = False
  return config


@pytest.fixture(scope="module")
def dataset():
  return tiny_dataset()


def trained_once(tmp_path_factory, name, train):
  """``train(workdir)`` once per test session, shared by the pytest-xdist workers (each
  would otherwise train its own copy; the tests only read these workdirs)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's directory, above each worker's
  workdir = root / f"runs_{name}"
  with open(root / f"runs_{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / f"runs_{name}.done").exists():
      shutil.rmtree(workdir, ignore_errors=True)
      train(workdir)
      (root / f"runs_{name}.done").touch()
  return workdir


@pytest.fixture(scope="module")
def single(tmp_path_factory, dataset):
  return trained_once(tmp_path_factory, "single", lambda workdir: loop.train_and_evaluate(
      tiny_config(), workdir, dataset=dataset, progress=False))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, dataset):
  """Four models: β ∈ {1, 4} × seed ∈ {0, 1}, model 3 = (β 4, seed 1)."""
  return trained_once(tmp_path_factory, "sweep", lambda workdir: loop.train(
      tiny_config(), workdir, grid=["loss.beta=1,4", "seed=0,1"], dataset=dataset,
      progress=False, write_report=False))


@pytest.fixture
def read_only(monkeypatch):
  """Fails a test that takes the workdir lock or opens an orbax CheckpointManager."""
  def refuse(what):
    def fail(*args, **kwargs):
      raise AssertionError(f"load_run used {what}")
    return fail
  monkeypatch.setattr(workdir_lib.WorkdirLock, "__init__", refuse("the workdir lock"))
  monkeypatch.setattr(ocp.CheckpointManager, "__init__", refuse("a CheckpointManager"))


def snapshot(workdir):
  """Every path under ``workdir``: kind, size, mtime and content hash."""
  out = {}
  for path in sorted(Path(workdir).rglob("*")):
    stat = path.stat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    out[str(path.relative_to(workdir))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns, digest)
  return out


def logged_eval_elbo(workdir, model=None):
  """The last ``eval/elbo`` in ``metrics.jsonl`` (of ``model`` in a sweep)."""
  rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in rows if "eval/elbo" in r and r.get("model") == model]
  return rows[-1]["step"], rows[-1]["eval/elbo"]


def eval_key(seed, index):
  """The elbo evaluator's key of held-out batch ``index``, written out: stream 3
  (EVAL_SAMPLE) of the model's seed, folded with the batch index."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 3), index)


def held_out_elbo(run, dataset, seed):
  """The mean ELBO over the held-out batches (the test split's first ones, seed 0)."""
  batches = [dataset.get_batch("test", i, EVAL_BATCH, 0)["image"] for i in range(EVAL_BATCHES)]
  return float(np.mean(np.concatenate([run.elbo(x, eval_key(seed, i))
                                       for i, x in enumerate(batches)])))


# ----------------------------------------------------------------------------- must hold


def test_a_single_run_loads_read_only_and_its_elbo_is_the_logged_one(single, dataset,
                                                                       read_only):
  before = snapshot(single)
  run = vaejax.load_run(single, dataset=dataset)
  assert (run.index, run.point, run.step, run.num_models) == (0, {}, 4, 1)
  assert run.config.model.latent_dim == 3 and repr(run).endswith("step 4, mlp_vae)")
  step, logged = logged_eval_elbo(single)
  assert step == 4
  assert held_out_elbo(run, dataset, seed=0) == pytest.approx(logged, rel=ELBO_RTOL)
  assert np.array_equal(run.eval_key(1), eval_key(0, 1))
  stored, _, _ = checkpoint.restore_state(single / checkpoint.CHECKPOINT_DIR)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)[0]),
               run.params, stored["models"]["params"])
  assert snapshot(single) == before  # nothing written, touched or tidied
  assert not (single / workdir_lib.LOCK_FILE).exists()


def test_model_3_of_a_sweep_picked_by_its_point_scores_its_logged_elbo(sweep, dataset,
                                                                         read_only):
  before = snapshot(sweep)
  run = vaejax.load_run(sweep, point={"loss.beta": 4.0, "seed": 1}, dataset=dataset)
  assert (run.index, run.point, run.step, run.num_models) == (
      3, {"loss.beta": 4.0, "seed": 1}, 4, 4)
  assert (run.config.loss.beta, run.config.seed) == (4.0, 1)
  step, logged = logged_eval_elbo(sweep, model=3)
  assert step == 4
  assert held_out_elbo(run, dataset, seed=1) == pytest.approx(logged, rel=ELBO_RTOL)
  same = vaejax.load_run(sweep, model=3, dataset=dataset)
  other = vaejax.load_run(sweep, point={"loss.beta": 4, "seed": 0}, dataset=dataset)
  leaf = lambda r: r.params["encoder"]["hidden_0"]["kernel"]  # noqa: E731
  assert np.array_equal(leaf(same), leaf(run)) and not np.allclose(leaf(other), leaf(run))
  assert snapshot(sweep) == before


def test_it_loads_while_another_process_trains_in_the_workdir(tmp_path, monkeypatch,
                                                              read_only):
  """A training subprocess writes a checkpoint every 20 steps (and deletes all but the
  newest 3); load_run reads complete ones only (never a ``*.orbax-checkpoint-tmp-*``
  directory), takes no lock, raises nothing."""
  workdir = tmp_path / "live"
  command = [sys.executable, "-m", "experiments.train",
             "--config=experiments/configs/betavae_dsprites.py:test", f"--workdir={workdir}",
             "--config.model.name=mlp_vae", "--config.model.hidden_sizes=(8,)",
             "--config.model.latent_dim=2", "--config.num_steps=1000000",
             "--config.checkpoint_every=20", "--config.log_every=100000",
             "--config.evals.elbo.every=0", "--config.evals.elbo.at_end=False",
             "--config.evals.figures.at_end=False"]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  reads = []
  real_read = checkpoint.read_checkpoint
  monkeypatch.setattr(checkpoint, "read_checkpoint",
                      lambda d, s, t=None: reads.append(Path(d) / str(s)) or real_read(d, s, t))
  try:
    deadline = time.monotonic() + 240
    while not checkpoint.complete_steps(workdir / "checkpoints"):
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.monotonic() < deadline, "no checkpoint within 240 s"
      time.sleep(0.2)
    loaded = []
    for _ in range(4):
      run = vaejax.load_run(workdir)
      assert proc.poll() is None, "training ended while loading: the test proves nothing"
      assert run.step % 20 == 0 and np.isfinite(run.params["decoder"]["output"]["bias"]).all()
      assert workdir_lib.read_lock(workdir)["pid"] == proc.pid  # the trainer's lock, kept
      loaded.append(run.step)
  finally:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr[-3000:]
  assert all(path.name.isdigit() for path in reads) and loaded == sorted(loaded)


# ----------------------------------------------------------------------------- the methods


def _numpy_vae(params):
  """The MLP VAE (one ReLU layer each way, Bernoulli logits) in float64 numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  def dense(h, layer):
    return h @ layer["kernel"] + layer["bias"]

  def encode(x):
    h = np.maximum(dense(x.reshape(len(x), -1), p["encoder"]["hidden_0"]), 0)
    return dense(h, p["encoder"]["heads"]["mean"]), dense(h, p["encoder"]["heads"]["log_var"])

  def logits(z):
    h = np.maximum(dense(z, p["decoder"]["hidden_0"]), 0)
    return dense(h, p["decoder"]["output"]).reshape(len(z), *IMAGE_SHAPE)

  return encode, logits


def test_methods_equal_a_float64_reference_of_the_mlp_vae(single, dataset):
  run = vaejax.load_run(single, dataset=dataset)
  encode, logits = _numpy_vae(run.params)
  x = dataset.get_batch("test", 0, 5, 0)["image"]
  sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
  tol = {"rtol": 1e-4, "atol": 1e-5}  # float32 matmuls of width ≤ 36 against float64
  mean, log_var = run.encode(x)
  np.testing.assert_allclose(mean, encode(x)[0], **tol)
  np.testing.assert_allclose(log_var, encode(x)[1], **tol)
  decoded = run.decode(mean)
  np.testing.assert_allclose(decoded.likelihood["logits"], logits(encode(x)[0]), **tol)
  np.testing.assert_allclose(decoded.mean, sigmoid(logits(encode(x)[0])), **tol)
  np.testing.assert_allclose(run.reconstruct(x), decoded.mean, **tol)
  values = np.array([-2.0, 0.5, 3.0], np.float32)
  paths = run.traverse(x, 1, values)
  assert paths.shape == (5, 3, *IMAGE_SHAPE)
  codes = np.repeat(encode(x)[0][:, None], 3, axis=1)
  codes[:, :, 1] = values
  np.testing.assert_allclose(paths, sigmoid(logits(codes.reshape(15, 3))).reshape(paths.shape),
                             **tol)
  # Temperature 0 decodes z = 0, whatever the key.
  np.testing.assert_allclose(run.sample(2, jax.random.key(7), temperature=0.0),
                             np.repeat(sigmoid(logits(np.zeros((1, 3)))), 2, axis=0), **tol)


def test_elbo_and_iwae_estimate_the_reference_bound(single, dataset):
  """One image repeated 4096 times: each row draws its own z, so the mean of the per-example
  ELBO (and of the K = 1 IWAE bound) estimates E_q[log p(x|z)] − KL, which the reference
  estimates in float64 with its own samples. They agree within 6 standard errors."""
  run = vaejax.load_run(single, dataset=dataset)
  encode, logits = _numpy_vae(run.params)
  x = np.repeat(dataset.get_batch("test", 0, 1, 0)["image"], 4096, axis=0)
  mean, log_var = encode(x[:1])
  eps = np.random.default_rng(0).standard_normal((4096, 3))
  z = mean + np.exp(0.5 * log_var) * eps
  l = logits(z)
  log_px = np.sum(x * l - np.logaddexp(0, l), axis=(1, 2, 3))
  kl = 0.5 * np.sum(mean**2 + np.exp(log_var) - 1 - log_var)
  # log w = log p(x|z) + log N(z; 0, I) − log N(z; μ, σ²): the K = 1 IWAE estimate.
  log_w = log_px + np.sum(-0.5 * z**2 + 0.5 * eps**2 + 0.5 * log_var, axis=1)
  reference = np.mean(log_px) - kl  # the ELBO; E[log w] is the same number
  elbo_spread, w_spread = (np.std(v) / math.sqrt(4096) for v in (log_px, log_w))
  compiled = trained._elbo._cache_size()
  elbo = run.elbo(x, jax.random.key(1))
  assert elbo.shape == (4096,) and np.ptp(elbo) > 0  # each row draws its own z
  # Compiled once per model and shape, shared by every Run of the architecture.
  vaejax.load_run(single, dataset=dataset).elbo(x, jax.random.key(9))
  assert trained._elbo._cache_size() <= compiled + 1
  assert np.mean(elbo) == pytest.approx(reference, abs=6 * elbo_spread)
  assert np.mean(run.iwae(x, 1, jax.random.key(2))) == pytest.approx(reference,
                                                                     abs=6 * w_spread)


def test_the_evaluators_and_load_run_read_through_one_function(single, dataset, tmp_path,
                                                                monkeypatch):
  """``experiments.evaluate``'s library side restores through read_checkpoint, as
  load_run does (one restore path), and gets the logged numbers back."""
  workdir = tmp_path / "copy"
  shutil.copytree(single, workdir)
  reads = []
  real_read = checkpoint.read_checkpoint
  monkeypatch.setattr(checkpoint, "read_checkpoint",
                      lambda d, s, t=None: reads.append(s) or real_read(d, s, t))
  (result,) = loop.evaluate_workdir(workdir, ["elbo"], dataset=dataset)
  assert reads == [4]
  assert result["elbo"]["elbo"] == logged_eval_elbo(single)[1]  # the same program, bit for bit
  assert vaejax.load_run(workdir, dataset=dataset).step == 4 and reads == [4, 4]


# ----------------------------------------------------------------------------- families


FAMILIES = {
    "mlp_cvae": ({"name": "mlp_cvae", "hidden_sizes": (8,), "latent_dim": 2}, (6, 6, 1), 3),
    "hvae": ({"name": "hvae", "latent_sizes": (3, 2), "hidden_size": 8}, (6, 6, 1), None),
    "deep_hvae": ({"name": "deep_hvae", "resolutions": (4, 2, 1), "levels_per_stage": (1, 2, 1),
                   "latent_channels": (2, 2, 3), "state_channels": 8,
                   "bottleneck_channels": 4, "encoder_blocks": 1}, (8, 8, 1), None),
}


def _untrained_run(workdir, model_config, shape, classes):
  """A run saved at step 1 as the loop saves one, without training or compiling anything:
  its state has the layout of a fresh stack (traced) filled with small random numbers."""
  rng = np.random.default_rng(0)
  labels = None if classes is None else rng.integers(0, classes, 32)
  split = data.SplitArrays((rng.random((32, *shape)) < 0.3).astype(np.float32), labels=labels,
                           binary=True)
  dataset = data.ArrayDataset("tiny", {"train": split, "test": split}, image_shape=shape,
                              num_classes=classes)
  config = tiny_config()
  config.model = config_lib.base_config().model
  config.model.update(model_config)
  run = plan.make_plan(config, workdir, dataset=dataset)
  group = run.groups[0]
  layout = abstract_stack(group.model, group.optimizer, 1, shape,
                          conditional=group.traits.conditional)
  state = jax.tree.map(lambda a: (0.3 * rng.standard_normal(a.shape)).astype(a.dtype), layout)
  with checkpoint.Checkpointer(group.checkpoint_dir) as ckpt:
    resume.save_checkpoint(ckpt, run, group, 1, 0, state)
    ckpt.wait_until_finished()
  atomic_write_json(workdir / loop.CONFIG_FILE, run.saved_config)
  return dataset


@pytest.mark.parametrize("family", ["mlp_cvae", "hvae"])
def test_conditional_and_hierarchical_runs_load_and_score(family, tmp_path):
  """The conditional VAE needs labels (one clear error without); the hierarchical VAE
  samples ancestrally (temperature 0: the prior means, whatever the key); both score an
  ELBO. (Every method of every family against the model's own apply: the slow test below.)"""
  model_config, shape, classes = FAMILIES[family]
  dataset = _untrained_run(tmp_path, model_config, shape, classes)
  run = vaejax.load_run(tmp_path, dataset=dataset)
  batch = dataset.get_batch("test", 0, 4, 0)
  x, labels, key = batch["image"], batch.get("label"), jax.random.key(5)
  if classes:
    with pytest.raises(ValueError, match=r"is conditional: pass labels=, \(4,\) int class ids"):
      run.elbo(x, key)
    with pytest.raises(ValueError, match=r"labels must be \(4,\) int class ids in \[0, 3\)"):
      run.elbo(x, key, labels=np.array([0, 1, 2, 3]))
  else:
    with pytest.raises(ValueError, match="is unconditional: it takes no labels"):
      run.elbo(x, key, labels=np.zeros(4, np.int32))
    cold = [run.sample(3, jax.random.key(k), 0.0) for k in (1, 2)]
    np.testing.assert_array_equal(cold[0], cold[1])
    assert cold[0].shape == (3, *shape) and ((cold[0] >= 0) & (cold[0] <= 1)).all()
  elbo = run.elbo(x, key, labels)
  assert elbo.shape == (4,) and np.isfinite(elbo).all() and (elbo < 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_loads_and_its_methods_equal_the_models_apply(family, tmp_path):
  model_config, shape, classes = FAMILIES[family]
  dataset = _untrained_run(tmp_path, model_config, shape, classes)
  run = vaejax.load_run(tmp_path, dataset=dataset)
  batch = dataset.get_batch("test", 0, 4, 0)
  x, labels = batch["image"], batch.get("label")
  if classes:
    with pytest.raises(ValueError, match=r"is conditional: pass labels=, \(4,\) int class ids"):
      run.encode(x)
    with pytest.raises(ValueError, match=r"labels must be \(4,\) int class ids in \[0, 3\)"):
      run.encode(x, labels=np.array([0, 1, 2, 3]))
  elif family == "hvae":
    with pytest.raises(ValueError, match="is unconditional: it takes no labels"):
      run.encode(x, labels=np.zeros(4, np.int32))
  model, variables, key = run.model, {"params": run.params}, jax.random.key(5)
  tol = {"rtol": 1e-5, "atol": 1e-5}  # the same float32 maths, jitted vs op by op
  np.testing.assert_allclose(run.encode(x, labels),
                             model.apply(variables, x, labels, method="encode"), **tol)
  z = np.random.default_rng(1).standard_normal((4, run.latent_dim)).astype(np.float32)
  reference = model.apply(variables, z, labels, method="decode")
  decoded = run.decode(z, labels).likelihood
  assert set(decoded) == set(reference)
  for name in reference:
    np.testing.assert_allclose(decoded[name], reference[name], **tol)
  outputs = model.apply(variables, x, labels, rngs={"sample": key})
  np.testing.assert_allclose(run.elbo(x, key, labels), objectives.elbo_terms(x, outputs)["elbo"],
                             **tol)
  assert run.iwae(x, 3, key, labels).shape == (4,)
  assert run.traverse(x, run.latent_dim - 1, [0.0, 1.0], labels).shape == (4, 2, *shape)
  sample_labels = None if classes is None else np.arange(3) % classes
  cold = [run.sample(3, jax.random.key(k), 0.0, sample_labels) for k in (1, 2)]
  np.testing.assert_allclose(cold[0], cold[1], **tol)  # temperature 0: the prior means
  assert not np.allclose(run.sample(3, jax.random.key(1), 1.0, sample_labels), cold[0])


# ----------------------------------------------------------------------------- errors


def _one_line(info):
  assert "\n" not in str(info.value)
  return str(info.value)


def test_bad_picks_are_one_line_naming_what_exists(sweep, single, dataset, no_compiling):
  cases = [
      ({"model": 4}, ValueError, r"model=4 is out of range: the run in .* has 4 model\(s\), "
       r"0 to 3\."),
      ({"model": 1, "point": {"seed": 1}}, ValueError, "Give model= or point=, not both"),
      ({"point": {"seed": 1}}, ValueError,
       r"point seed=1 is ambiguous: models 1: loss.beta=1 seed=1, 3: loss.beta=4 seed=1 "
       r"match it; add the other grid keys \(\['loss.beta'\]\)"),
      ({"point": {"loss.beta": 2.0, "seed": 0}}, ValueError,
       r"No model of .* has point loss.beta=2 seed=0; its points are 0: loss.beta=1 seed=0, "
       r"1: loss.beta=1 seed=1, 2: loss.beta=4 seed=0, 3: loss.beta=4 seed=1\."),
      ({"point": {"beta": 4.0}}, ValueError,
       r"point key\(s\) \['beta'\] are not grid keys of .*: its grid keys are "
       r"\['loss.beta', 'seed'\]"),
      ({}, ValueError, r"is a sweep of 4 models: pick one with model=0..3 or point="),
      ({"model": 0, "step": 3}, ValueError,
       r"No complete checkpoint at step 3 in .*checkpoints; its steps are 2, 4\."),
  ]
  for kwargs, error, match in cases:
    with pytest.raises(error, match=match) as info:
      vaejax.load_run(sweep, dataset=dataset, **kwargs)
    _one_line(info)
  with pytest.raises(ValueError, match="it is a single run, with no grid") as info:
    vaejax.load_run(single, point={"seed": 0}, dataset=dataset)
  _one_line(info)


def test_missing_things_are_one_line_each(tmp_path, single, no_compiling):
  with pytest.raises(FileNotFoundError, match=r"No run at .*nowhere: the directory does not"):
    vaejax.load_run(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"No config.json in .*: not a vaejax workdir"):
    vaejax.load_run(tmp_path)
  (tmp_path / "config.json").write_text((single / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="No complete checkpoint under .*: train the run"):
    vaejax.load_run(tmp_path)
  # Only saves in progress (orbax's temporary directories): still none complete.
  shutil.copytree(single / "checkpoints" / "4",
                  tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234")
  with pytest.raises(FileNotFoundError, match="No complete checkpoint") as info:
    vaejax.load_run(tmp_path)
  _one_line(info)


def test_a_save_in_progress_is_skipped_for_the_newest_complete_one(single, dataset, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(single, workdir)
  ckpts = workdir / "checkpoints"
  os.rename(ckpts / "4", ckpts / "6.orbax-checkpoint-tmp-99")  # a save of step 6 under way
  run = vaejax.load_run(workdir, dataset=dataset)
  assert run.step == 2
  assert sorted(p.name for p in ckpts.iterdir()) == ["2", "6.orbax-checkpoint-tmp-99"]


def test_a_checkpoint_deleted_while_read_is_retried_and_a_broken_one_skipped(
    single, dataset, tmp_path, monkeypatch, caplog):
  """As a training process does: checkpoint 6 is saved and 4 deleted while 4 is read (the
  read fails; load_run reads 6). Then 6 is broken while it is the newest: one warning,
  step 4 read instead, nothing moved or written."""
  workdir = tmp_path / "run"
  shutil.copytree(single, workdir)
  ckpts = workdir / "checkpoints"
  real_read = checkpoint.read_checkpoint

  def read_while_training(directory, step, target=None):
    if step == 4 and not (ckpts / "6").exists():
      shutil.copytree(ckpts / "4", ckpts / "6")
      shutil.rmtree(ckpts / "4")
    return real_read(directory, step, target)

  monkeypatch.setattr(checkpoint, "read_checkpoint", read_while_training)
  assert vaejax.load_run(workdir, dataset=dataset).step == 6
  monkeypatch.setattr(checkpoint, "read_checkpoint", real_read)
  shutil.copytree(ckpts / "6", ckpts / "4")
  shutil.rmtree(ckpts / "6" / "state")
  before = snapshot(workdir)
  assert vaejax.load_run(workdir, dataset=dataset).step == 4
  assert [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()]
  assert snapshot(workdir) == before


def test_another_layout_or_architecture_is_refused(single, dataset, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(single, workdir)
  ckpts = workdir / "checkpoints"
  state, meta, _ = checkpoint.restore_state(ckpts, 4)
  state["extra"] = np.zeros(3)
  shutil.rmtree(ckpts / "4")
  with checkpoint.Checkpointer(ckpts) as ckpt:
    ckpt.save(4, state, meta)
    ckpt.wait_until_finished()
  with pytest.raises(checkpoint.LayoutMismatch, match=r"another train-state layout \(missing: "
                     r"none; not expected: \['extra'\]\)") as info:
    vaejax.load_run(workdir, dataset=dataset)
  _one_line(info)
  assert vaejax.load_run(workdir, step=2, dataset=dataset).step == 2
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"]["latent_dim"] = 5
  (workdir / "config.json").write_text(json.dumps(saved))
  run = vaejax.load_run(workdir, step=2, dataset=dataset)
  with pytest.raises(ValueError, match=r"do not fit the model built from the run's config") as e:
    run.encode(dataset.get_batch("test", 0, 2, 0)["image"])
  _one_line(e)


def test_import_vaejax_stays_light_and_load_run_is_imported_on_use():
  code = ("import sys, vaejax; heavy = {'jax', 'vaejax.training'} & set(sys.modules); "
          "assert not heavy, heavy; assert 'load_run' in dir(vaejax)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  from vaejax import load_run  # pylint: disable=g-import-not-at-top
  from vaejax.training import runs  # pylint: disable=g-import-not-at-top
  assert load_run is runs.load_run is vaejax.load_run


@pytest.mark.slow
def test_a_model_of_a_sweep_split_into_groups_is_read_from_its_groups_checkpoints(tmp_path,
                                                                                  dataset):
  """``model.latent_dim`` does not stack: two groups, ``group_0/`` and ``group_1/``."""
  loop.train(tiny_config(), tmp_path, grid=["model.latent_dim=2,3"], dataset=dataset,
             progress=False, write_report=False)
  run = vaejax.load_run(tmp_path, point={"model.latent_dim": 3}, dataset=dataset)
  assert (run.index, run.latent_dim, run.source.parent) == (
      1, 3, tmp_path / "group_1" / "checkpoints")
  assert held_out_elbo(run, dataset, seed=0) == pytest.approx(
      logged_eval_elbo(tmp_path, model=1)[1], rel=ELBO_RTOL)

"""Evaluating a finished run or sweep: ``experiments.evaluate``'s library side,
:func:`vaejax.training.loop.evaluate_workdir`, on tiny trained runs.

The importance-weighted bound of every model is checked against a reference written
here: the model's parameters read back from its checkpoint, its encoder and decoder,
``log w = log p(x|z) + log N(z; 0, I) − log N(z; μ, σ²)`` in float64 numpy with its own
samples, and ``logsumexp(log w) − log K``. The two estimates use different random
samples, so they agree within six standard errors, estimated from the reference's own
samples.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from vaejax import config as config_lib
from vaejax import data, models
from vaejax.evaluation import evaluators
from vaejax.training import checkpoint, loop

REPO = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (6, 6, 1)
EVAL_BATCH = 16
MODEL = {"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3}
REFERENCE_SAMPLES = 2048


def tiny_dataset():
  rng = np.random.default_rng(0)
  splits = {s: data.SplitArrays((rng.random((48, *IMAGE_SHAPE)) < 0.3).astype(np.float32),
                                binary=True) for s in ("train", "test")}
  return data.ArrayDataset("tiny", splits, image_shape=IMAGE_SHAPE)


def tiny_config():
  config = config_lib.base_config()
  config.model.update(MODEL)
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size, config.learning_rate = 4, 8, 1e-2
  config.log_every, config.checkpoint_every = 2, 2
  config.eval.num_batches, config.eval.batch_size = 1, EVAL_BATCH
  config.evals.elbo.every, config.evals.elbo.at_end = 0, False  # evaluate_workdir does it
  config.evals.figures.at_end = False
  return config


@pytest.fixture(scope="module")
def dataset():
  return tiny_dataset()


@pytest.fixture(scope="module")
def single(tmp_path_factory, dataset):
  workdir = tmp_path_factory.mktemp("single")
  loop.train_and_evaluate(tiny_config(), workdir, dataset=dataset, progress=False)
  return workdir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, dataset):
  """Two models (β = 1 and 8) in one vmapped program."""
  workdir = tmp_path_factory.mktemp("sweep")
  config = tiny_config()
  config.execution.strategy = "vmap"
  loop.train(config, workdir, grid=["loss.beta=1,8"], dataset=dataset, progress=False,
             write_report=False)
  return workdir


# ----------------------------------------------------------------------------- the reference


def saved_params(workdir, model_index):
  """Model ``model_index``'s parameters as stored in the newest checkpoint."""
  state, _, _ = checkpoint.restore_state(Path(workdir) / checkpoint.CHECKPOINT_DIR)
  return jax.tree.map(lambda x: np.asarray(x)[model_index], state["models"]["params"])


def reference_log_weights(params, x, num_samples, seed=0):
  """``(log p(x|z), log w)``, each ``(N, K)`` float64, of a Bernoulli MLP VAE, z ~ q(z|x)."""
  model = models.create_model(MODEL, IMAGE_SHAPE)
  mean, log_var = (np.asarray(a, np.float64)
                   for a in model.apply({"params": params}, x, method="encode"))
  n, d = mean.shape
  eps = np.random.default_rng(seed).standard_normal((n, num_samples, d))
  z = mean[:, None] + np.exp(0.5 * log_var)[:, None] * eps
  logits = np.asarray(model.apply({"params": params}, z.reshape(-1, d).astype(np.float32),
                                  method="decode")["logits"], np.float64)
  logits = logits.reshape(n, num_samples, -1)
  flat_x = x.reshape(n, 1, -1).astype(np.float64)
  log_px = np.sum(flat_x * logits - np.logaddexp(0.0, logits), axis=-1)  # x·l − softplus(l)
  log_pz = np.sum(-0.5 * z**2 - 0.5 * math.log(2 * math.pi), axis=-1)
  log_qz = np.sum(-0.5 * eps**2 - 0.5 * math.log(2 * math.pi) - 0.5 * log_var[:, None],
                  axis=-1)
  return log_px, log_px + log_pz - log_qz


def held_out(dataset, num_examples=EVAL_BATCH):
  """The evaluators' held-out data: the test split's first batch, drawn with seed 0."""
  return dataset.get_batch("test", 0, EVAL_BATCH, 0)["image"][:num_examples]


def check_against_reference(result, params, dataset, num_samples):
  """Checks ``result``'s IWAE and ELBO against the reference's estimates from
  REFERENCE_SAMPLES per example; returns the standard error of a one-sample ELBO estimate.

  The reference splits its samples into groups of K, each giving one K-sample estimate
  per example; the spread of those over groups is the spread of the evaluator's one
  draw per example, and its mean over n examples has that spread / sqrt(n).
  """
  x = held_out(dataset, result["num_examples"])
  n = x.shape[0]
  log_px, log_w = reference_log_weights(params, x, REFERENCE_SAMPLES)
  groups = log_w[:, :REFERENCE_SAMPLES // num_samples * num_samples].reshape(n, -1, num_samples)
  per_group = logsumexp(groups, axis=-1) - math.log(num_samples)
  iwae_noise = math.sqrt(np.mean(np.var(per_group, axis=1, ddof=1)) / n)
  # A one-sample ELBO is log w, or log p(x|z) − KL with the KL in closed form: either spread.
  elbo_noise = math.sqrt(max(np.mean(np.var(log_w, axis=1, ddof=1)),
                             np.mean(np.var(log_px, axis=1, ddof=1))) / n)
  assert result["iwae_nll"] == pytest.approx(-np.mean(per_group), abs=6 * iwae_noise + 1e-3)
  assert result["elbo_nll"] == pytest.approx(-np.mean(log_w), abs=6 * elbo_noise + 1e-3)
  return elbo_noise


# ----------------------------------------------------------------------------- single run


def test_single_run_writes_likelihood_json_with_iwae_and_elbo_numbers(single, dataset):
  (result,) = loop.evaluate_workdir(single, ["iwae"], dataset=dataset,
                                    overrides={"iwae": {"num_samples": 64, "chunk_size": 16}})
  assert (result["model"], result["point"], result["step"]) == (0, {}, 4)
  numbers = result["iwae"]
  saved = json.loads((single / "likelihood.json").read_text())
  per_example = saved.pop("iwae_per_example")  # the file only: for paired comparisons
  assert saved == {**numbers, "step": 4}
  assert len(per_example) == numbers["num_examples"]
  assert -np.mean(per_example) == pytest.approx(numbers["iwae_nll"], rel=1e-5)
  assert numbers["num_importance_samples"] == 64 and numbers["num_examples"] == EVAL_BATCH
  assert (numbers["model"], numbers["dataset"], numbers["split"]) == ("mlp_vae", "mnist_npz",
                                                                      "test")
  check_against_reference(numbers, saved_params(single, 0), dataset, 64)
  assert numbers["gap"] == pytest.approx(numbers["elbo_nll"] - numbers["iwae_nll"])
  assert numbers["iwae_bits_per_dim"] == pytest.approx(
      numbers["iwae_nll"] / (36 * math.log(2)), rel=1e-5)
  assert len(numbers["kl_per_dim"]) == numbers["latent_dim"] == 3
  assert numbers["kl"] == pytest.approx(sum(numbers["kl_per_dim"]), rel=1e-5)
  assert 0 <= numbers["active_units"] <= 3
  table = evaluators.format_likelihood_table(numbers)
  assert "IWAE K=64" in table and "active units" in table
  # Overrides apply to this evaluation only: the run's config is unchanged.
  assert loop.load_config(single).evals.iwae.num_samples == 1000


def test_k1_iwae_is_an_elbo_estimate(single, dataset):
  (result,) = loop.evaluate_workdir(single, ["iwae"], dataset=dataset,
                                    overrides={"iwae": {"num_samples": 1, "max_examples": 8}})
  numbers = result["iwae"]
  assert numbers["num_examples"] == 8 and numbers["num_importance_samples"] == 1
  noise = check_against_reference(numbers, saved_params(single, 0), dataset, 1)
  # K = 1 and the ELBO are two independent single-sample estimates of the same bound.
  assert abs(numbers["gap"]) <= 6 * math.sqrt(2) * noise + 1e-3


# ----------------------------------------------------------------------------- a sweep


def test_sweep_writes_likelihood_json_per_model_from_its_own_parameters(sweep, dataset):
  results = loop.evaluate_workdir(sweep, ["iwae"], dataset=dataset,
                                  overrides={"iwae": {"num_samples": 64}})
  assert [(r["model"], r["point"], r["step"]) for r in results] == [
      (0, {"loss.beta": 1.0}, 4), (1, {"loss.beta": 8.0}, 4)]
  assert not (sweep / "likelihood.json").exists()
  params = [saved_params(sweep, m) for m in range(2)]
  assert not np.allclose(params[0]["encoder"]["hidden_0"]["kernel"],
                         params[1]["encoder"]["hidden_0"]["kernel"])
  for m, result in enumerate(results):
    saved = json.loads((sweep / "models" / f"m{m:03d}" / "likelihood.json").read_text())
    assert saved["iwae_nll"] == result["iwae"]["iwae_nll"] and saved["step"] == 4
    assert saved["num_importance_samples"] == 64
    check_against_reference(result["iwae"], params[m], dataset, 64)
  # β = 8 pays for its lower rate: the two models differ.
  assert results[1]["iwae"]["kl"] < results[0]["iwae"]["kl"]


def test_compare_nll_prints_the_paired_difference_of_two_models(sweep, dataset, tmp_path):
  loop.evaluate_workdir(sweep, ["iwae"], dataset=dataset,
                        overrides={"iwae": {"num_samples": 8, "max_examples": 16}})
  a, b = (sweep / "models" / f"m{m:03d}" for m in range(2))

  def compare(*args):
    return subprocess.run([sys.executable, "-m", "experiments.compare_nll", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)

  proc = compare(f"--a={a}", f"--b={b}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  # Independent reference: the mean and standard error of the per-example differences.
  d = np.subtract(*(json.loads((m / "likelihood.json").read_text())["iwae_per_example"]
                    for m in (a, b)))
  assert len(d) == 16
  assert f"{d.mean():+.2f} ± {d.std(ddof=1) / math.sqrt(len(d)):.2f} nats" in proc.stdout
  proc = compare(f"--a={a}", f"--b={tmp_path}")
  assert proc.returncode != 0
  (line,) = [l for l in proc.stderr.splitlines() if "likelihood.json" in l]
  assert f"No likelihood.json in {tmp_path.resolve()}" in line


# ----------------------------------------------------------------------------- errors


def _one_line(info):
  assert "\n" not in str(info.value)
  return str(info.value)


def test_a_directory_without_a_run_is_one_line(tmp_path, dataset, no_compiling):
  with pytest.raises((ValueError, FileNotFoundError), match="nowhere") as e:
    loop.evaluate_workdir(tmp_path / "nowhere", ["iwae"], dataset=dataset)
  _one_line(e)
  with pytest.raises(FileNotFoundError, match="No config.json in .*not a vaejax workdir") as e:
    loop.evaluate_workdir(tmp_path, ["iwae"], dataset=dataset)
  _one_line(e)
  (tmp_path / "config.json").write_text(json.dumps(config_lib.to_dict(tiny_config())))
  with pytest.raises(FileNotFoundError, match="No checkpoints under .*: train the run first") as e:
    loop.evaluate_workdir(tmp_path, ["iwae"], dataset=dataset)
  _one_line(e)


@pytest.mark.parametrize("names,overrides,error,match", [
    (["nope"], None, ValueError, r"No evaluator 'nope' in config.evals; it has: "),
    (["iwae"], {"nope": {"seed": 1}}, ValueError, r"No evaluator 'nope' in the run's config"),
    (["iwae"], {"iwae": {"samples": 5}}, KeyError, r"Unknown key 'samples' of evaluator 'iwae'"),
    (["iwae"], {"iwae": {"num_samples": 0}}, ValueError,
     r"evals.iwae.num_samples=0 must be an int >= 1"),
])
def test_bad_evaluator_names_and_overrides_fail_before_compiling(
    single, dataset, no_compiling, names, overrides, error, match):
  with pytest.raises(error, match=match) as e:
    loop.evaluate_workdir(single, names, overrides=overrides, dataset=dataset)
  _one_line(e)


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_key(
    single, dataset, tmp_path, no_compiling):
  workdir = tmp_path / "copy"
  shutil.copytree(single, workdir)
  (workdir / "likelihood.json").unlink(missing_ok=True)  # from the tests above
  saved = json.loads((workdir / loop.CONFIG_FILE).read_text())
  saved["model"]["latent_dim"] = 5
  (workdir / loop.CONFIG_FILE).write_text(json.dumps(saved))
  with pytest.raises(ValueError, match="from a different config") as e:
    loop.evaluate_workdir(workdir, ["iwae"], dataset=dataset)
  assert "model.latent_dim: 3 in the checkpoint, 5 now" in _one_line(e)
  assert not (workdir / "likelihood.json").exists()


def test_cli_reports_a_directory_without_a_run_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: No config.json in "), result.stderr

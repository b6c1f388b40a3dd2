"""Likelihood evaluation of a trained run (experiments.evaluate's library side)."""

import json

import numpy as np
import pytest
from test_train import tiny_config, tiny_dataset

from vaejax import config_utils, train
from vaejax.evaluation import report


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  dataset = tiny_dataset()
  train.train_and_evaluate(tiny_config(), workdir, dataset=dataset, progress=False)
  return workdir, dataset


def test_evaluate_workdir_writes_iwae_and_elbo_numbers(trained):
  workdir, dataset = trained
  results = report.evaluate_workdir(workdir, dataset=dataset, num_samples=64, chunk_size=16)
  saved = json.loads((workdir / report.RESULTS_FILE).read_text())
  assert saved["iwae_nll"] == pytest.approx(results["iwae_nll"])
  assert results["step"] == 6 and results["num_examples"] == 16
  assert results["num_importance_samples"] == 64
  # The IWAE bound is tighter than the ELBO (well beyond its noise at K = 64).
  assert results["gap"] > 0
  assert results["iwae_bits_per_dim"] == pytest.approx(
      results["iwae_nll"] / (36 * np.log(2)), rel=1e-5)
  assert len(results["kl_per_dim"]) == results["latent_dim"] == 3
  assert 0 <= results["active_units"] <= 3
  table = report.format_table(results)
  assert "IWAE K=64" in table and "active units" in table


def test_k1_iwae_is_an_elbo_estimate(trained):
  workdir, dataset = trained
  results = report.evaluate_workdir(workdir, dataset=dataset, num_samples=1, max_examples=8)
  assert results["num_examples"] == 8
  # K = 1 and the ELBO are two single-sample estimates of the same bound.
  assert abs(results["gap"]) < 3.0


def test_errors(trained, tmp_path):
  workdir, dataset = trained
  with pytest.raises(FileNotFoundError, match="config.json"):
    report.evaluate_workdir(tmp_path, dataset=dataset)
  other = tiny_config()
  other.model.latent_dim = 5
  with pytest.raises(config_utils.ConfigError, match="latent_dim"):
    train.restore_run(workdir, other, dataset=dataset)
  with pytest.raises(ValueError, match="num_samples"):
    report.evaluate_workdir(workdir, dataset=dataset, num_samples=0)

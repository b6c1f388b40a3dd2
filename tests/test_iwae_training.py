"""Importance-weighted training through the engine (the objective: test_iwae_objective.py).

K changes array shapes, so a grid over K runs as separate programs; rows log the bound and
the effective sample size; settings that do not combine with K > 1 are refused in one line
before anything compiles.
"""

import numpy as np
import pytest

from vaejax.config import base_config
from vaejax.training import loop

from tiny import tiny_dataset


def tiny_config():
  config = base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size, config.learning_rate = 3, 8, 1e-2
  config.log_every, config.checkpoint_every = 1, 3
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.evals.figures.at_end = False
  return config


def test_a_grid_over_k_and_the_estimator_runs_as_programs_of_their_own(tmp_path):
  result = loop.train(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False,
                      grid=["loss.num_importance_samples=1,4", "loss.estimator=plain,dreg"],
                      write_report=False)
  assert sorted((tmp_path).glob("group_*")) and len(list(tmp_path.glob("group_*"))) == 4
  by_point = {(r["point"]["loss.num_importance_samples"], r["point"]["loss.estimator"]): r
              for r in result.rows}
  for estimator in ("plain", "dreg"):
    k1, k4 = by_point[(1, estimator)], by_point[(4, estimator)]
    assert "iwae" not in k1  # K = 1 is the ELBO loss
    assert 1.0 <= k4["ess"] <= 4.0
    np.testing.assert_allclose(k4["loss"], -k4["iwae"], rtol=1e-5)  # the loss is the bound
  # At K = 1 the estimator changes nothing: the same program, the same numbers.
  assert by_point[(1, "plain")]["loss"] == by_point[(1, "dreg")]["loss"]


@pytest.mark.parametrize("key,value,model,fragment", [
    ("loss.free_bits", 0.5, "mlp_vae", "free_bits=0.5 cannot be used with K=4"),
    ("loss.capacity_gamma", 10.0, "mlp_vae", "capacity"),
    ("loss.estimator", "dreg", "hvae", "dreg"),
    ("loss.estimator", "nope", "mlp_vae", "nope"),
])
def test_settings_that_do_not_combine_with_k_are_refused(key, value, model, fragment, tmp_path,
                                                         no_compiling):
  config = tiny_config()
  config.loss.num_importance_samples = 4
  if model == "hvae":
    config.model.update({"name": "hvae", "latent_sizes": (3, 2), "hidden_size": 16})
  group, _, leaf = key.rpartition(".")
  config[group][leaf] = value
  with pytest.raises(ValueError, match=fragment) as info:
    loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  assert "\n" not in str(info.value)

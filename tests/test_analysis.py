"""Disentanglement analysis through the engine: unsupervised scores, UDR, arithmetic,
GIFs, KL monitoring and the collapse warning.

The evaluators' maths is tested on known answers in ``test_unsupervised_udr.py``,
``test_arithmetic.py`` and ``test_animation.py``; here they run on a stack of models the
loop trained, and the KL monitor on the rows the loop logs.
"""

import json

import numpy as np
import pytest

from vaejax.config import base_config
from vaejax.training import loop, writers

from test_study import bands_dataset  # a 16×16 two-factor ground truth held in memory
from tiny import tiny_dataset


def tiny_config(**evals):
  config = base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size, config.learning_rate = 4, 8, 1e-2
  config.log_every, config.checkpoint_every = 1, 4
  config.eval.split, config.eval.num_batches, config.eval.batch_size = "train", 1, 16
  config.evals.figures.at_end = False
  for name, group in evals.items():
    config.evals[name].update(group)
  return config


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
  """Two β values × two seeds on the bands data, with the unsupervised scores and UDR."""
  workdir = tmp_path_factory.mktemp("scored")
  config = tiny_config(unsupervised={"at_end": True, "num_points": 200},
                       udr={"at_end": True, "num_points": 100},
                       figures={"at_end": True, "gif_frames": 4, "num_images": 2})
  result = loop.train(config, workdir, grid=["loss.beta=1,8", "seed=0,1"],
                      dataset=bands_dataset(), progress=False)
  return workdir, result


def test_every_model_gets_the_unsupervised_scores_and_a_udr_among_its_seeds(scored):
  workdir, result = scored
  for row in result.rows:
    assert {"unsupervised/gaussian_total_correlation", "unsupervised/mutual_info_score",
            "unsupervised/gaussian_wasserstein_correlation_norm", "udr/udr"} <= set(row)
    assert row["unsupervised/gaussian_total_correlation"] >= 0
    assert 0 <= row["udr/udr"] <= 1  # each model has one other seed at its β
  table = (workdir / loop.REPORT_DIR / "results.md").read_text()
  assert "| UDR |" in table and "| TC (Gauss.) |" in table


def test_figures_include_the_animated_traversals(scored):
  workdir, _ = scored
  for m in range(4):
    figures = workdir / loop.MODELS_DIR / f"m{m:03d}" / "figures"
    assert (figures / "traversal_prior.gif").is_file()
    assert (figures / "traversal_posterior.gif").is_file()


def test_a_model_alone_in_its_setting_has_no_udr(tmp_path):
  config = tiny_config(udr={"at_end": True, "num_points": 100})
  result = loop.train(config, tmp_path, grid=["loss.beta=1,8"], dataset=bands_dataset(),
                      progress=False, write_report=False)
  assert all(np.isnan(row["udr/udr"]) for row in result.rows)


def test_arithmetic_is_measured_on_dsprites(tmp_path):
  config = tiny_config(arithmetic={"at_end": True, "num_examples": 8, "num_queries": 4})
  config.data.name = "dsprites_procedural"
  config.eval.split = ""
  loop.train_and_evaluate(config, tmp_path, progress=False)
  table = json.loads((tmp_path / "arithmetic.json").read_text())["table"]
  assert set(table) == {"shape", "scale", "pos_x", "pos_y"}
  assert all(0 <= row["accuracy"] <= 1 for row in table.values())
  last = writers.read_jsonl(tmp_path / writers.METRICS_FILE)[-1]
  assert "arithmetic/pos_x/accuracy" in last


def test_data_without_factors_cannot_be_scored_without_labels(tmp_path):
  config = tiny_config(udr={"at_end": True})
  with pytest.raises(ValueError, match="ground-truth factors") as info:
    loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- KL monitoring


def _kl_rows(workdir):
  return list(writers.read_jsonl(workdir / writers.METRICS_FILE))


def test_rows_carry_the_per_example_kl_quantiles(tmp_path):
  loop.train_and_evaluate(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False)
  for row in _kl_rows(tmp_path):
    assert row["kl_min"] <= row["kl_median"] <= row["kl_max"]
    assert 0 <= row["kl_collapsed_fraction"] <= 1
    assert row["kl_min"] <= row["kl"] <= row["kl_max"]  # the batch mean lies between
    assert "hist/kl_per_sample" not in row  # histograms go to TensorBoard only
  assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())


def test_collapse_is_flagged_after_patience_logged_steps_and_again_after_resume(tmp_path,
                                                                               caplog):
  """With a threshold above any KL every row is 'collapsed': the flag turns on at the
  patience-th logged step, and a resumed run flags the same rows."""
  config = tiny_config()
  config.monitor.collapse_kl, config.monitor.collapse_patience = 1e6, 3
  config.num_steps, config.checkpoint_every = 6, 2
  loop.train_and_evaluate(config, tmp_path / "a", dataset=tiny_dataset(), progress=False)
  flags = [r["posterior_collapse"] for r in _kl_rows(tmp_path / "a")]
  assert flags == [False, False, True, True, True, True]
  # A run stopped at step 4 and resumed flags the same rows.
  config.num_steps = 4
  loop.train_and_evaluate(config, tmp_path / "b", dataset=tiny_dataset(), progress=False)
  config.num_steps = 6
  loop.train_and_evaluate(config, tmp_path / "b", dataset=tiny_dataset(), progress=False)
  assert [r["posterior_collapse"] for r in _kl_rows(tmp_path / "b")] == flags


def test_the_collapse_warning_names_the_remedies(tmp_path, caplog):
  config = tiny_config()
  config.monitor.collapse_kl, config.monitor.collapse_patience = 1e6, 2
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  warnings = [r.getMessage() for r in caplog.records if "Posterior collapse" in r.getMessage()]
  assert len(warnings) == 1
  for remedy in ("loss.free_bits", "loss.warmup_steps", "loss.capacity_gamma",
                 "model.posterior_min_variance"):
    assert remedy in warnings[0]


def test_a_variance_floor_logs_the_fraction_at_it(tmp_path):
  config = tiny_config()
  config.model.posterior_min_variance = 1e3  # far above any posterior variance: all at it
  loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  assert all(r["posterior_at_floor"] == 1.0 for r in _kl_rows(tmp_path))

"""The dSprites reproduction: configs, aggregation, the report, and one tiny end-to-end run."""

import csv
import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from vaejax import data, reproduction, train
from vaejax import reproduction_report as report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for experiments.configs
from experiments.configs import (
  annealedvae_dsprites,
  betatcvae_dsprites,
  reproduce_dsprites,
)

CONFIGS = {"beta_vae": reproduce_dsprites, "beta_tcvae": betatcvae_dsprites,
           "annealed_vae": annealedvae_dsprites}
SMOKE = "SMOKE SCALE (CPU): 2000 steps, 2 seeds — not the dlib budget"


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("module", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("preset", reproduce_dsprites.PRESETS)
def test_every_preset_validates(module, preset):
  reproduction.validate_config(module.get_config(preset))


@pytest.mark.parametrize("method,values", [
    ("beta_vae", (1, 2, 4, 6, 8, 16)),
    ("beta_tcvae", (1, 2, 4, 6, 8, 10)),
    ("annealed_vae", (5, 10, 25, 50, 75, 100)),
])
def test_default_presets_are_the_disentanglement_lib_setting(method, values):
  config = CONFIGS[method].get_config()
  assert config.method == method and config.parameter_values == values
  t = config.train
  assert (t.num_steps, t.batch_size, t.learning_rate) == (300_000, 64, 1e-4)
  assert (t.model.name, t.model.latent_dim, t.data.name) == ("conv_vae", 10,
                                                             "dsprites_procedural")
  assert config.evaluation.preset == "dlib" and len(config.seeds) >= 3
  assert reproduction.budget_label(config) == (
      f"DLIB BUDGET: 300000 steps, {len(config.seeds)} seeds, dlib metric sample counts")


@pytest.mark.parametrize("module", CONFIGS.values(), ids=CONFIGS.keys())
def test_smoke_preset_is_labelled_and_keeps_the_grid(module):
  full, smoke = module.get_config(), module.get_config("cpu_smoke")
  assert reproduction.budget_label(smoke) == SMOKE
  assert smoke.parameter_values == full.parameter_values  # fewer steps and seeds, same grid
  assert smoke.evaluation.preset == "cpu" and len(smoke.seeds) < len(full.seeds)


def test_a_shortened_default_run_is_not_called_the_dlib_budget():
  config = reproduce_dsprites.get_config()
  config.train.num_steps = 1000
  assert reproduction.budget_label(config).startswith("REDUCED BUDGET: 1000 steps, 5 seeds")


@pytest.mark.parametrize("method,value,expected", [
    ("beta_vae", 6.0, {"beta": 6.0, "tc_beta": 1.0, "capacity_gamma": 0.0}),
    ("beta_tcvae", 6.0, {"beta": 1.0, "tc_beta": 6.0, "dataset_size": 737_280}),
    ("annealed_vae", 25.0, {"beta": 0.0, "capacity_gamma": 1000.0, "capacity_max": 25.0,
                            "capacity_steps": 100_000}),
])
def test_run_config_sets_the_method_loss_and_leaves_the_template(method, value, expected):
  config = CONFIGS[method].get_config()
  run = reproduction.run_config(config, value, seed=3)
  settings, _ = train.loss_settings_from_config(run)
  assert {k: getattr(settings, k) for k in expected} == expected
  assert run.seed == 3 and config.train.seed == 0  # a copy: the template is unchanged


def test_annealing_length_follows_overridden_steps():
  config = annealedvae_dsprites.get_config("cpu_smoke")
  assert config.train.loss.capacity_steps == 666
  config.train.num_steps = 900  # what --config.train.num_steps=900 does
  assert reproduction.run_config(config, 5.0, 0).loss.capacity_steps == 300


def test_grid_names_every_run():
  config = reproduce_dsprites.get_config("cpu_smoke")
  specs = reproduction.grid(config)
  assert len(specs) == 12 and specs[0] == (1.0, 0, "beta_vae_beta=1_seed=0")
  assert specs[-1].name == "beta_vae_beta=16_seed=1"


def _with(key, value):
  config = reproduce_dsprites.get_config("test")
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return config


@pytest.mark.parametrize("key,value,match", [
    ("parameter", "loss.bta", r"parameter='loss.bta' is not a key of the training config"),
    ("parameter", "model.name", r"must name a number of the training config"),
    ("parameter_values", (1.0, -2.0), r"Loss setting beta=-2.0 is negative"),
    ("parameter_values", (1.0, 1.0), r"has repeated values"),
    ("parameter_values", (), r"must be a non-empty tuple of finite numbers"),
    ("seeds", (0, 0), r"seeds=\(0, 0\) must be a non-empty tuple of distinct ints"),
    ("scale", "huge", r"scale='huge' must be one of \('dlib', 'smoke'\)"),
    ("method", "a b", r"method='a b' must be a non-empty name"),
    ("evaluation.preset", "fast", r"Unknown disentanglement preset 'fast'"),
    ("evaluation.metrics", ("irs",), r"Unknown disentanglement metric\(s\) \['irs'\]"),
    ("train.model.name", "resnet", r"Unknown model name 'resnet'"),
])
def test_bad_configs_fail_with_one_clear_error(key, value, match):
  with pytest.raises(ValueError, match=match):
    reproduction.validate_config(_with(key, value))


def test_unknown_keys_and_stages_fail():
  config = reproduce_dsprites.get_config("test")
  config.betas = (1.0,)
  with pytest.raises(KeyError, match="Unknown reproduction config key 'betas'"):
    reproduction.validate_config(config)
  with pytest.raises(ValueError, match=r"Unknown or no stages \['fit'\]"):
    reproduction.reproduce(reproduce_dsprites.get_config("test"), "/nonexistent", stages=["fit"])


def test_data_without_ground_truth_fails_before_training(tmp_path):
  class Digits:
    name, image_shape, num_classes, ground_truth = "digits", (64, 64, 1), None, None

  with pytest.raises(ValueError, match="Dataset 'digits' has no ground-truth factors"):
    reproduction.reproduce(reproduce_dsprites.get_config("test"), tmp_path, dataset=Digits())
  assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- aggregation


def _rows():
  """Fabricated per-run results: β=1 with three seeds (one NaN MIG), β=4 with one."""
  return [
      {"value": 1.0, "seed": 0, "step": 10, "mig/discrete_mig": 0.1, "rate": 30.0,
       "factor_vae/eval_accuracy": 0.5},
      {"value": 1.0, "seed": 1, "step": 10, "mig/discrete_mig": 0.2, "rate": 32.0,
       "factor_vae/eval_accuracy": 0.7},
      {"value": 1.0, "seed": 2, "step": 10, "mig/discrete_mig": math.nan, "rate": 37.0,
       "factor_vae/eval_accuracy": 0.9},
      {"value": 4.0, "seed": 0, "step": 10, "mig/discrete_mig": 0.3, "rate": 12.0,
       "factor_vae/eval_accuracy": 0.8},
  ]


def test_aggregate_is_mean_and_sample_std_over_finite_seeds():
  groups = report.aggregate(list(reversed(_rows())))
  assert [g["value"] for g in groups] == [1.0, 4.0]
  one, four = groups
  assert one["seeds"] == [0, 1, 2] and four["seeds"] == [0]
  assert one["mean"]["rate"] == pytest.approx(statistics.mean([30, 32, 37]))
  assert one["std"]["rate"] == pytest.approx(statistics.stdev([30, 32, 37]))
  assert one["n"]["mig/discrete_mig"] == 2  # the NaN is left out
  assert one["mean"]["mig/discrete_mig"] == pytest.approx(0.15)
  assert one["std"]["mig/discrete_mig"] == pytest.approx(statistics.stdev([0.1, 0.2]))
  assert four["mean"]["rate"] == 12.0 and math.isnan(four["std"]["rate"])


@pytest.mark.parametrize("rows,match", [
    ([], "at least one result row"),
    ([{"value": 1.0}], "needs 'value' and 'seed'"),
    ([{"value": 1.0, "seed": 0}, {"value": 1.0, "seed": 0}], "Two rows for value 1, seed 0"),
])
def test_aggregate_rejects_bad_rows(rows, match):
  with pytest.raises(ValueError, match=match):
    report.aggregate(rows)


def test_markdown_table_shows_mean_pm_std_under_the_label():
  text = report.table_markdown(report.aggregate(_rows()), SMOKE, "β", "details here")
  lines = text.splitlines()
  assert lines[0] == f"**{SMOKE}**" and "details here" in text
  assert lines[4] == "| β | seeds | FactorVAE | MIG | rate (KL) |"
  assert lines[6] == "| 1 | 3 | 0.70 ± 0.20 | 0.15 ± 0.07 | 33.0 ± 3.6 |"
  assert lines[7] == "| 4 | 1 | 0.80 | 0.30 | 12.0 |"  # one seed: no std


def test_csv_carries_the_label_and_every_score():
  rows = list(csv.DictReader(io.StringIO(report.table_csv(report.aggregate(_rows()), SMOKE,
                                                          "loss.beta"))))
  assert [r["budget"] for r in rows] == [SMOKE, SMOKE]
  assert [float(r["loss.beta"]) for r in rows] == [1.0, 4.0]
  assert float(rows[0]["rate_mean"]) == pytest.approx(33.0)
  assert float(rows[0]["rate_std"]) == pytest.approx(statistics.stdev([30, 32, 37]))
  assert rows[1]["rate_std"] == "nan"
  per_run = list(csv.DictReader(io.StringIO(report.runs_csv(_rows(), SMOKE, "loss.beta"))))
  assert len(per_run) == 4 and per_run[2]["mig/discrete_mig"] == "nan"


def test_write_report_files_and_labels(tmp_path):
  config = reproduce_dsprites.get_config("cpu_smoke")
  for value in config.parameter_values:  # fake traversal figures for the first seed
    run_dir = tmp_path / "runs" / f"beta_vae_beta={value:g}_seed=0" / "figures"
    run_dir.mkdir(parents=True)
    matplotlib.image.imsave(run_dir / "traversals.png", np.full((8, 8), value / 16))
  rows = [{**r, "timing": {"train_seconds": 2.0, "metric_seconds": 1.0}} for r in _rows()]
  paths = reproduction.write_report(config, tmp_path, rows=rows)
  names = sorted(p.name for p in paths)
  assert names == ["metrics_vs_beta.png", "results.csv", "results.md", "runs.csv",
                   "timings.json", "traversals.png"]
  markdown = (tmp_path / "report" / "results.md").read_text()
  assert SMOKE in markdown and "Only 4 of 12 runs are scored so far." in markdown
  assert "β-VAE: FactorVAE 0.63 ± 0.10, MIG 0.21" in markdown  # the published figures
  timings = json.loads((tmp_path / "report" / "timings.json").read_text())
  assert timings["totals"]["train_seconds"] == 8.0 and timings["label"] == SMOKE
  assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")


def test_plot_titles_carry_the_label(tmp_path):
  fig = report.plot_metrics(_rows(), SMOKE, "β")
  assert SMOKE in fig._suptitle.get_text()
  assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["FactorVAE", "MIG",
                                                                      "rate (KL)"]
  path = tmp_path / "t.png"
  matplotlib.image.imsave(path, np.zeros((4, 4)))
  fig = report.plot_traversals({1.0: path, 4.0: path}, SMOKE, "β", seed=0)
  assert SMOKE in fig._suptitle.get_text()
  assert fig.axes[1].get_title() == "β = 4, seed 0"
  with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
    report.plot_traversals({1.0: tmp_path / "missing.png"}, SMOKE, "β")


# ----------------------------------------------------------------------------- end to end


class Bands:
  """A 16×16 ground truth: factor k ∈ {0..3} sets a 4-row band in half k of the image."""

  factor_sizes = (4, 4)
  observation_shape = (16, 16, 1)

  def sample_factors(self, num, rng):
    return rng.integers(0, 4, size=(num, 2))

  def sample_observations_from_factors(self, factors, rng=None):
    rows = np.arange(16)[None, :, None]
    f = np.asarray(factors)
    x = np.zeros((len(f), 16, 16, 1), np.float32)
    x[:, :, :8, 0] = np.broadcast_to(rows // 4 == f[:, :1, None], (len(f), 16, 8))
    x[:, :, 8:, 0] = np.broadcast_to(rows // 4 == f[:, 1:, None], (len(f), 16, 8))
    return x

  def sample(self, num, rng):
    f = self.sample_factors(num, rng)
    return f, self.sample_observations_from_factors(f)


def test_tiny_reproduction_runs_and_resumes(tmp_path):
  """2 β × 1 seed × 4 steps of a tiny MLP VAE on a file-like 16×16 ground truth, MIG only;
  the re-run reuses every run and score."""
  gt = Bands()
  factors = np.stack(np.meshgrid(range(4), range(4), indexing="ij"), -1).reshape(16, 2)
  dataset = data.ArrayDataset(
      "bands", {"train": data.SplitArrays(gt.sample_observations_from_factors(factors), 1.0,
                                          factors=factors, binary=True)},
      image_shape=(16, 16, 1), ground_truth=gt)
  config = reproduce_dsprites.get_config("test")
  config.evaluation.metrics = ("mig",)
  config.train.figures.enabled = False  # traversal panels: test_write_report_files_and_labels
  config.train.checkpoint_every = 4
  logs = []
  paths = reproduction.reproduce(config, tmp_path, dataset=dataset, log=logs.append)
  assert logs[0] == "SMOKE SCALE (CPU): 4 steps, 1 seed — not the dlib budget"
  rows = list(csv.DictReader(io.StringIO((tmp_path / "report" / "runs.csv").read_text())))
  assert [(r["loss.beta"], r["step"]) for r in rows] == [("1.0", "4"), ("4.0", "4")]
  for r in rows:  # rate and distortion come from the run's final evaluation
    run_dir = tmp_path / "runs" / f"beta_vae_beta={float(r['loss.beta']):g}_seed=0"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert float(r["rate"]) == pytest.approx(metrics[-1]["eval/kl"])
    assert float(r["distortion"]) == pytest.approx(-metrics[-1]["eval/recon"])
    assert 0 <= float(r["mig/discrete_mig"]) <= 1
  # One split only (like the DeepMind file): the runs evaluate on "train", as dlib does.
  assert json.loads((run_dir / "config.json").read_text())["eval"]["split"] == "train"
  assert "Data: bands." in (tmp_path / "report" / "results.md").read_text()
  scores = tmp_path / "runs" / "beta_vae_beta=1_seed=0" / "disentanglement.json"
  before = scores.stat().st_mtime_ns
  logs.clear()
  assert reproduction.reproduce(config, tmp_path, dataset=dataset, log=logs.append) == paths
  assert "[1/2] beta_vae_beta=1_seed=0: finished earlier, skipped." in logs
  assert scores.stat().st_mtime_ns == before


def test_cli_reports_a_bad_preset_in_one_line():
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.reproduce_dsprites",
       "--config=experiments/configs/reproduce_dsprites.py:nope", "--workdir=/tmp/unused"],
      check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "Unknown config preset 'nope'; known presets: '', 'cpu_smoke', 'test'" in proc.stderr

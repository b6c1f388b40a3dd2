"""The dSprites β-VAE study as a sweep, end to end at toy scale.

``experiments.sweep --config=experiments/configs/betavae_dsprites.py:test`` without
``--grid`` runs the config's default grid (2 β values × 1 seed at the test preset). Here
the conv model is replaced by a tiny MLP and dSprites by a 16×16 two-factor ground truth
held in memory (one split, like the DeepMind file), and the metrics use the "test" sample
counts: the study must train, score and draw every model, write ``results.jsonl`` and the
report under its REDUCED BUDGET label, and resume without training or scoring again.
"""

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from vaejax import data
from vaejax.evaluation import evaluators
from vaejax.training import checkpoint, loop, writers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for experiments.configs
from experiments.configs import betavae_dsprites

SHAPE = (16, 16, 1)
LABEL = ("REDUCED BUDGET: 4 steps, batch 8, learning rate 0.0001, 1 seed, metric preset "
         "'test' — not the dlib budget (300k steps, batch 64, Adam 1e-4, dlib metric sample "
         "counts)")
REPORT_FILES = ["kl_per_dim.png", "metrics_vs_beta.png", "rate_distortion.png", "results.csv",
                "results.md", "runs.csv", "summary.json", "traversals.png"]


class Bands:
  """A 16×16 ground truth: factor k ∈ {0..3} sets a 4-row band in half k of the image."""

  factor_sizes = (4, 4)
  observation_shape = SHAPE

  def sample_factors(self, num, rng):
    return rng.integers(0, 4, size=(num, 2))

  def sample_observations_from_factors(self, factors, rng=None):
    del rng
    rows = np.arange(16)[None, :, None]
    f = np.asarray(factors)
    x = np.zeros((len(f), 16, 16, 1), np.float32)
    x[:, :, :8, 0] = np.broadcast_to(rows // 4 == f[:, :1, None], (len(f), 16, 8))
    x[:, :, 8:, 0] = np.broadcast_to(rows // 4 == f[:, 1:, None], (len(f), 16, 8))
    return x

  def sample(self, num, rng):
    f = self.sample_factors(num, rng)
    return f, self.sample_observations_from_factors(f)


def bands_dataset(ground_truth=True):
  """Every factor combination three times, one "train" split (like dsprites' one file)."""
  gt = Bands()
  factors = np.concatenate([np.stack(np.meshgrid(range(4), range(4), indexing="ij"),
                                     -1).reshape(16, 2)] * 3)
  split = data.SplitArrays(gt.sample_observations_from_factors(factors), 1.0, factors=factors,
                           binary=True)
  return data.ArrayDataset("bands", {"train": split}, image_shape=SHAPE,
                           ground_truth=gt if ground_truth else None)


def study_config():
  """betavae_dsprites.py:test with a tiny MLP, the "test" metric counts, MIG only."""
  config = betavae_dsprites.get_config("test")
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.evals.disentanglement.update({"at_end": True, "preset": "test", "metrics": ("mig",)})
  config.evals.figures.gif_frames = 0  # GIFs: test_animation
  config.eval.split = "train"  # one split: evaluated on the training data, as dlib does
  return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("study")
  config = study_config()
  result = loop.train(config, workdir, grid=list(config.grid), dataset=bands_dataset(),
                      progress=False)
  return workdir, result


def last_rows(workdir):
  """Each model's last row of metrics.jsonl."""
  rows = {}
  for row in writers.read_jsonl(workdir / writers.METRICS_FILE):
    rows[row["model"]] = row
  return [rows[m] for m in sorted(rows)]


def test_the_default_grid_is_the_beta_study():
  assert study_config().grid == ("loss.beta=1,2", "seed=0")


def test_every_model_is_trained_scored_and_drawn(study):
  workdir, result = study
  assert result.points == [{"loss.beta": 1.0, "seed": 0}, {"loss.beta": 2.0, "seed": 0}]
  assert [row["step"] for row in last_rows(workdir)] == [4, 4]
  for m in range(2):
    model_dir = workdir / "models" / f"m{m:03d}"
    scores = json.loads((model_dir / "disentanglement.json").read_text())
    assert (scores["step"], scores["preset"], scores["metrics"]) == (4, "test", ["mig"])
    assert 0.0 <= scores["scores"]["mig/discrete_mig"] <= 1.0
    for figure in ("traversals.png", "reconstructions.png", "samples.png"):
      assert (model_dir / "figures" / figure).stat().st_size > 1000
  saved = json.loads((workdir / loop.CONFIG_FILE).read_text())
  assert saved["grid"] == ["loss.beta=1,2", "seed=0"] and saved["eval"]["split"] == "train"


def test_results_jsonl_holds_each_models_point_evaluation_and_scores(study):
  workdir, _ = study
  results = writers.read_jsonl(workdir / loop.RESULTS_FILE)
  assert [(r["model"], r["point"]) for r in results] == [
      (0, {"loss.beta": 1.0, "seed": 0}), (1, {"loss.beta": 2.0, "seed": 0})]
  for r, logged in zip(results, last_rows(workdir)):
    assert r["active"] and r["masked_at"] == -1
    assert r["eval/kl"] == logged["eval/kl"] and r["eval/recon"] == logged["eval/recon"]
    scores = json.loads((workdir / "models" / f"m{r['model']:03d}" /
                         "disentanglement.json").read_text())["scores"]
    assert r["disentanglement/mig/discrete_mig"] == scores["mig/discrete_mig"]


def test_the_report_carries_the_reduced_budget_label(study):
  workdir, result = study
  report_dir = workdir / loop.REPORT_DIR
  assert sorted(p.name for p in result.report) == REPORT_FILES
  assert all((report_dir / name).exists() for name in REPORT_FILES)
  markdown = (report_dir / "results.md").read_text()
  assert markdown.startswith("# Sweep over loss.beta\n")
  assert f"**{LABEL}**" in markdown
  assert "- β-VAE: FactorVAE 0.63 ± 0.10, MIG 0.21" in markdown  # the published figures
  # One seed: every spread is undefined.
  table = [line for line in markdown.splitlines() if line.startswith("| 1 |")]
  assert len(table) == 1 and "± —" in table[0] and "MIG" in markdown
  results = writers.read_jsonl(workdir / loop.RESULTS_FILE)
  runs = list(csv.DictReader(io.StringIO((report_dir / "runs.csv").read_text())))
  assert [r["budget"] for r in runs] == [LABEL, LABEL]
  for run, r in zip(runs, results):  # rate and distortion from the held-out evaluation
    assert float(run["rate (KL)"]) == pytest.approx(r["eval/kl"])
    assert float(run["distortion"]) == pytest.approx(-r["eval/recon"])
    assert float(run["MIG"]) == pytest.approx(r["disentanglement/mig/discrete_mig"])
  assert json.loads((report_dir / "summary.json").read_text())["label"] == LABEL
  assert all((report_dir / n).stat().st_size > 1000 for n in REPORT_FILES if n.endswith(".png"))


@pytest.fixture(scope="module")
def rerun(study, tmp_path_factory):
  """The same command again, on a copy of the finished study."""
  workdir = tmp_path_factory.mktemp("rerun") / "study"
  shutil.copytree(study[0], workdir)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if "models" in p.parts}
  metrics = (workdir / writers.METRICS_FILE).read_text()
  config = study_config()
  result = loop.train(config, workdir, grid=list(config.grid), dataset=bands_dataset(),
                      progress=False)
  return workdir, result, before, metrics


def test_a_rerun_trains_and_scores_nothing_more(rerun):
  workdir, result, before, metrics = rerun
  assert (workdir / writers.METRICS_FILE).read_text() == metrics  # no step ran
  with checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR) as ckpt:
    assert ckpt.latest_step() == 4
  after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if "models" in p.parts}
  assert after == before  # scores and figures untouched
  assert [r["step"] for r in result.rows] == [4, 4]


def test_a_rerun_keeps_the_results_and_the_report(study, rerun):
  workdir, *_ = rerun
  assert (writers.read_jsonl(workdir / loop.RESULTS_FILE)
          == writers.read_jsonl(study[0] / loop.RESULTS_FILE))
  assert ((workdir / loop.REPORT_DIR / "results.md").read_text()
          == (study[0] / loop.REPORT_DIR / "results.md").read_text())


@pytest.mark.parametrize("ground_truth,split,match", [
    (False, "train", r"needs a dataset with ground-truth factors .*'bands' has none"),
    (True, "", r"Dataset 'bands' has no held-out split \(splits \('train',\)\); set eval.split"),
], ids=["no ground truth", "no held-out split"])
def test_unusable_data_fails_before_training_in_one_line(ground_truth, split, match, tmp_path,
                                                         no_compiling):
  config = study_config()
  config.eval.split = split
  with pytest.raises(evaluators.EvaluationError, match=match) as info:
    loop.train(config, tmp_path / "w", grid=list(config.grid),
               dataset=bands_dataset(ground_truth), progress=False)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "w").exists()

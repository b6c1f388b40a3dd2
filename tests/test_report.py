"""The sweep report (vaejax.sweeps.report): aggregation over seeds, tables, labels, figures.

Rows are fabricated ``results.jsonl`` rows; every expected number is computed here with
``statistics`` (mean, sample standard deviation) from the values written in the test.
"""

import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import matplotlib.image
import numpy as np
import pytest

from vaejax.sweeps import report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for experiments.configs
from experiments.configs import betavae_dsprites, vae_mnist

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

LABEL = "REDUCED BUDGET: a test label"
NAN = math.nan

# β -> per seed: (rate, recon, elbo, MIG, FactorVAE, active). Seed 1 of β = 4 diverged.
TABLE = {
    1.0: [(10.0, -100.0, -110.0, 0.1, 0.5, True), (12.0, -101.0, -113.0, 0.2, 0.7, True),
          (14.0, -102.0, -116.0, NAN, 0.9, True)],
    4.0: [(3.0, -120.0, -123.0, 0.3, 0.8, True), (99.0, -1.0, -1.0, 0.9, 0.9, False),
          (5.0, -118.0, -123.0, 0.5, 0.6, True)],
    8.0: [(1.0, -130.0, -131.0, 0.4, 0.75, True)],
}


def fabricated_rows(evaluator="dis"):
  """One row per model, as the loop writes them (a disentanglement evaluator ``evaluator``)."""
  rows = []
  for beta, seeds in TABLE.items():
    for seed, (rate, recon, elbo, mig, fvae, active) in enumerate(seeds):
      rows.append({
          "model": len(rows), "point": {"loss.beta": beta, "seed": seed}, "step": 10,
          "active": active, "masked_at": -1 if active else 7, "loss": 1.0,
          "eval/kl": rate, "eval/recon": recon, "eval/elbo": elbo,
          "eval/kl_per_dim": [rate, 0.0], f"{evaluator}/mig/discrete_mig": mig,
          f"{evaluator}/factor_vae/eval_accuracy": fvae})
  return rows


def values(beta, index, active_only=True):
  """The finite values of column ``index`` of β's seeds (the reference's selection)."""
  out = [s[index] for s in TABLE[beta] if s[5] or not active_only]
  return [v for v in out if not math.isnan(v)]


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_is_mean_and_sample_std_over_the_active_finite_seeds():
  groups = report.aggregate(fabricated_rows())
  assert [g["setting"] for g in groups] == [{"loss.beta": b} for b in TABLE]
  assert [g["seeds"] for g in groups] == [[0, 1, 2], [0, 1, 2], [0]]
  assert [g["num_masked"] for g in groups] == [0, 1, 0]
  for g, beta in zip(groups, TABLE):
    for title, index, sign in (("rate (KL)", 0, 1), ("distortion", 1, -1), ("ELBO", 2, 1),
                               ("MIG", 3, 1), ("FactorVAE", 4, 1)):
      x = [sign * v for v in values(beta, index)]
      assert g["n"][title] == len(x)
      assert g["mean"][title] == pytest.approx(statistics.mean(x))
      if len(x) > 1:
        assert g["std"][title] == pytest.approx(statistics.stdev(x))
      else:
        assert math.isnan(g["std"][title])
  # The masked model's 99 nats and the NaN MIG are left out.
  assert groups[1]["mean"]["rate (KL)"] == pytest.approx(4.0)
  assert groups[0]["n"]["MIG"] == 2
  assert math.isnan(groups[0]["mean"]["active units"])  # absent from every row


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(st.lists(st.lists(
    st.floats(-1e6, 1e6) | st.just(NAN), min_size=1, max_size=5), min_size=1, max_size=4))
def test_aggregate_equals_statistics_for_any_values(settings):
  rows = [{"point": {"loss.beta": float(b), "seed": s}, "eval/kl": v, "score": v}
          for b, xs in enumerate(settings) for s, v in enumerate(xs)]
  groups = report.aggregate(rows, ("loss.beta",))
  assert len(groups) == len(settings)
  for g, xs in zip(groups, settings):
    finite = [v for v in xs if not math.isnan(v)]
    for name in ("rate (KL)", "score"):
      assert g["n"][name] == len(finite)
      if finite:
        assert g["mean"][name] == pytest.approx(statistics.mean(finite), rel=1e-9, abs=1e-6)
      else:
        assert math.isnan(g["mean"][name])
      if len(finite) > 1:
        assert g["std"][name] == pytest.approx(statistics.stdev(finite), rel=1e-6, abs=1e-6)
      else:
        assert math.isnan(g["std"][name])


@pytest.mark.parametrize("evaluator", ["dis", "disentanglement", "metrics_at_end"])
def test_headline_numbers_come_from_any_evaluator_name(evaluator):
  groups = report.aggregate(fabricated_rows(evaluator))
  assert groups[2]["mean"]["MIG"] == 0.4 and groups[2]["mean"]["FactorVAE"] == 0.75
  row = {"iwae_k5000/iwae_nll": 87.5, "iwae_k5000/iwae_nll_stderr": 0.3}
  spec = next(s for s in report.HEADLINE if s[0] == "IWAE NLL")
  assert report.headline_value(row, spec) == 87.5


def test_headline_falls_back_to_the_training_numbers_without_an_evaluation():
  row = {"kl": 7.0, "recon": -90.0, "elbo": -97.0}
  by_title = {s[0]: report.headline_value(row, s) for s in report.HEADLINE}
  assert (by_title["rate (KL)"], by_title["distortion"], by_title["ELBO"]) == (7.0, 90.0, -97.0)
  assert math.isnan(by_title["MIG"])


def test_the_setting_is_the_point_without_seed_and_only_swept_keys():
  rows = [{"point": {"loss.beta": b, "model.latent_dim": 3, "seed": s}, "eval/kl": b + s}
          for b in (1.0, 2.0) for s in (0, 1)]
  assert report.swept_keys(rows) == ("loss.beta",)  # latent_dim never changes
  groups = report.aggregate(rows)
  assert [g["setting"] for g in groups] == [{"loss.beta": 1.0}, {"loss.beta": 2.0}]
  (one,) = report.aggregate([{"point": {"seed": s}, "eval/kl": float(s)} for s in range(3)])
  assert one["setting"] == {} and one["mean"]["rate (KL)"] == 1.0


def test_kl_spectrum_sorts_each_model_before_averaging():
  rows = [{"point": {"loss.beta": 1.0, "seed": 0}, "eval/kl_per_dim": [0.0, 3.0, 1.0]},
          {"point": {"loss.beta": 1.0, "seed": 1}, "eval/kl_per_dim": [5.0, 0.001, 0.0]},
          {"point": {"loss.beta": 1.0, "seed": 2}, "eval/kl_per_dim": [9.0, 9.0, 9.0],
           "active": False}]
  (group,) = report.aggregate(rows, ("loss.beta",))
  # Rank by rank, each model sorted first (dimension j of one seed is not j of another):
  # sorted (3, 1, 0) and (5, 0.001, 0) -> (4, 0.5005, 0); the masked model is left out.
  assert group["kl_sorted"] == pytest.approx([4.0, 0.5005, 0.0])
  assert group["alive_dims"] == 1.5  # 2 and 1 dimensions above 0.01 nats


@pytest.mark.parametrize("rows,match", [
    ([], "at least one result row"),
    ([{"model": 0, "eval/kl": 1.0}], "Every row needs its 'point'"),
])
def test_aggregate_rejects_bad_rows(rows, match):
  with pytest.raises(ValueError, match=match):
    report.aggregate(rows)


# ----------------------------------------------------------------------------- tables


def test_markdown_shows_mean_pm_std_and_one_seed_as_a_dash():
  text = report.table_markdown(report.aggregate(fabricated_rows()), LABEL, "details here")
  lines = text.splitlines()
  assert lines[:4] == [f"**{LABEL}**", "", "details here", ""]
  assert lines[4] == ("| loss.beta | seeds | masked | ELBO | rate (KL) | distortion | "
                      "FactorVAE | MIG |")

  def cell(beta, index, digits, sign=1):
    x = [sign * v for v in values(beta, index)]
    spread = f"{statistics.stdev(x):.{digits}f}" if len(x) > 1 else "—"
    return f"{statistics.mean(x):.{digits}f} ± {spread}"

  for line, beta, seeds, masked in zip(lines[6:], TABLE, (3, 3, 1), (0, 1, 0)):
    cells = [f"{beta:g}", str(seeds), str(masked), cell(beta, 2, 1), cell(beta, 0, 1),
             cell(beta, 1, 1, -1), cell(beta, 4, 2), cell(beta, 3, 2)]
    assert line == "| " + " | ".join(cells) + " |"
  assert lines[8] == "| 8 | 1 | 0 | -131.0 ± — | 1.0 ± — | 130.0 ± — | 0.75 ± — | 0.40 ± — |"


def test_format_mean_std():
  assert report.format_mean_std(0.634, 0.1, 2) == "0.63 ± 0.10"
  assert report.format_mean_std(0.634, NAN, 2) == "0.63 ± —"
  assert report.format_mean_std(NAN, NAN) == "—"


def test_csv_has_the_label_every_mean_and_std_and_nan_for_one_seed():
  groups = report.aggregate(fabricated_rows())
  rows = list(csv.DictReader(io.StringIO(report.table_csv(groups, LABEL))))
  assert [r["budget"] for r in rows] == [LABEL] * 3
  assert [float(r["loss.beta"]) for r in rows] == list(TABLE)
  assert [(r["n_seeds"], r["n_masked"]) for r in rows] == [("3", "0"), ("3", "1"), ("1", "0")]
  assert float(rows[0]["rate (KL)_mean"]) == pytest.approx(12.0)
  assert float(rows[0]["rate (KL)_std"]) == pytest.approx(statistics.stdev([10, 12, 14]))
  assert float(rows[1]["distortion_std"]) == pytest.approx(statistics.stdev([120, 118]))
  assert rows[2]["rate (KL)_std"] == "nan" and rows[2]["MIG_std"] == "nan"
  assert float(rows[0]["dis/mig/discrete_mig_mean"]) == pytest.approx(0.15)


def test_runs_csv_has_one_row_per_model_masked_ones_included():
  rows = list(csv.DictReader(io.StringIO(report.runs_csv(fabricated_rows(), LABEL))))
  assert len(rows) == 7 and [r["model"] for r in rows] == [str(i) for i in range(7)]
  assert rows[4]["active"] == "False" and float(rows[4]["rate (KL)"]) == 99.0
  assert rows[2]["MIG"] == "nan" and float(rows[3]["distortion"]) == 120.0


# ----------------------------------------------------------------------------- budget label


def _dlib_config():
  return betavae_dsprites.get_config()


def test_the_dlib_study_is_labelled_dlib_budget():
  assert report.budget_label(_dlib_config(), 5) == (
      "DLIB BUDGET: 300000 steps, batch 64, learning rate 0.0001, 5 seeds, dlib metric "
      "sample counts")


@pytest.mark.parametrize("key,value", [
    ("num_steps", 1000), ("batch_size", 32), ("learning_rate", 1e-3),
    ("evals.disentanglement.preset", "cpu"),
])
def test_any_departure_from_the_dlib_setting_is_a_reduced_budget(key, value):
  config = _dlib_config()
  group, _, leaf = key.rpartition(".")
  (config[group] if group else config)[leaf] = value
  label = report.budget_label(config, 1)
  assert label.startswith("REDUCED BUDGET: ") and "not the dlib budget" in label
  assert "1 seed," in label  # singular
  preset = config.evals.disentanglement.preset
  assert f"metric preset {preset!r}" in label


def test_smoke_preset_label():
  assert report.budget_label(betavae_dsprites.get_config("cpu_smoke"), 2) == (
      "REDUCED BUDGET: 2000 steps, batch 64, learning rate 0.001, 2 seeds, metric preset "
      "'cpu' — not the dlib budget (300k steps, batch 64, Adam 1e-4, dlib metric sample "
      "counts)")


def test_every_disentanglement_evaluator_counts_whatever_its_name():
  config = _dlib_config()
  config.evals.disentanglement.at_end = False
  assert report.budget_label(config, 5).startswith("300000 steps")  # no study: no verdict
  config.evals.dis = dict(config.evals.disentanglement, every=100_000)  # another name
  assert report.budget_label(config, 5).startswith("DLIB BUDGET")
  config.evals.cheap = dict(config.evals.disentanglement, at_end=True, preset="cpu")
  assert report.budget_label(config, 5).startswith("REDUCED BUDGET")


def test_other_sweeps_carry_just_the_budget():
  assert report.budget_label(vae_mnist.get_config(), 3) == (
      "20000 steps, batch 128, learning rate 0.001, 3 seeds")
  mnist = vae_mnist.get_config()
  mnist.evals.disentanglement.at_end = True  # no dSprites: never a dlib verdict
  assert report.budget_label(mnist, 1) == "20000 steps, batch 128, learning rate 0.001, 1 seed"


# ----------------------------------------------------------------------------- figures


def _fake_traversals(root, models):
  for m in models:
    path = root / "models" / f"m{m:03d}" / "figures" / "traversals.png"
    path.parent.mkdir(parents=True)
    matplotlib.image.imsave(path, np.full((8, 8), m / 8))


def test_write_report_writes_its_files_under_the_label(tmp_path):
  config = betavae_dsprites.get_config("cpu_smoke")
  label = report.budget_label(config, 3)
  _fake_traversals(tmp_path, (0, 3, 6))  # the first seed of each setting
  paths = report.write_report(fabricated_rows(), tmp_path / "report", config)
  assert sorted(p.name for p in paths) == [
      "kl_per_dim.png", "metrics_vs_beta.png", "rate_distortion.png", "results.csv",
      "results.md", "runs.csv", "summary.json", "traversals.png"]
  assert all(p.parent == tmp_path / "report" and p.exists() for p in paths)
  markdown = (tmp_path / "report" / "results.md").read_text()
  assert markdown.startswith("# Sweep over loss.beta\n")
  assert f"**{label}**" in markdown
  assert "Models: 7; settings: 3; data: dsprites_procedural; model: conv_vae." in markdown
  assert "- β-VAE: FactorVAE 0.63 ± 0.10, MIG 0.21" in markdown  # the published figures
  summary = json.loads((tmp_path / "report" / "summary.json").read_text())
  assert summary["label"] == label and len(summary["settings"]) == 3
  assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")


def test_write_report_of_another_sweep_skips_what_does_not_apply(tmp_path):
  rows = [{"model": i, "point": {"seed": i}, "eval/kl": 1.0 + i, "eval/recon": -9.0}
          for i in range(2)]
  paths = report.write_report(rows, tmp_path, vae_mnist.get_config("test"))
  assert sorted(p.name for p in paths) == [
      "rate_distortion.png", "results.csv", "results.md", "runs.csv", "summary.json"]
  markdown = (tmp_path / "results.md").read_text()
  assert markdown.startswith("# Sweep over seeds\n") and "Published" not in markdown
  assert "**4 steps, batch 8, learning rate 0.001, 2 seeds**" in markdown


def test_plot_titles_carry_the_label(tmp_path):
  rows = fabricated_rows()
  groups = report.aggregate(rows)
  assert LABEL in report.plot_rate_distortion(groups, LABEL).axes[0].get_title()
  assert LABEL in report.plot_kl_heatmap(groups, LABEL).axes[0].get_title()
  fig = report.plot_metrics(rows, "loss.beta", LABEL)
  assert LABEL in fig._suptitle.get_text()  # pylint: disable=protected-access
  assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [
      "ELBO", "rate (KL)", "distortion", "FactorVAE", "MIG"]
  path = tmp_path / "t.png"
  matplotlib.image.imsave(path, np.zeros((4, 4)))
  fig = report.plot_traversals([("loss.beta=1, seed 0", path), ("loss.beta=4, seed 0", path)],
                               LABEL)
  assert LABEL in fig._suptitle.get_text()  # pylint: disable=protected-access
  assert fig.axes[1].get_title() == "loss.beta=4, seed 0"


def test_settings_with_other_latent_sizes_share_one_heatmap():
  """A sweep over model.latent_dim: the shorter spectrum is padded, not refused."""
  groups = report.aggregate(fabricated_rows())
  groups[1]["kl_sorted"] = [1.0]
  fig = report.plot_kl_heatmap(groups, LABEL)
  image = fig.axes[0].images[0].get_array()
  assert np.ma.getmaskarray(image)[1, 1:].all() or np.isnan(np.asarray(image)[1, 1:]).all()
  with pytest.raises(ValueError, match="at least one setting"):
    report.plot_kl_heatmap([dict(g, kl_sorted=None) for g in groups], LABEL)


def test_plot_errors():
  with pytest.raises(ValueError, match="at least one traversal image"):
    report.plot_traversals([], LABEL)
  with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
    report.plot_traversals([("x", "/nonexistent/missing.png")], LABEL)


# ----------------------------------------------------------------------------- text sweeps


def _text_rows():
  """A collapse study's rows: two VAE settings and the language model, 2 seeds each."""
  rows = []
  for name, warmup, kl, nll in (("lstm_vae", 0, 0.01, 50.0), ("lstm_vae", 100, 3.0, 49.0),
                                ("lstm_lm", 0, 0.0, 49.5)):
    for seed in (0, 1):
      dims = [] if name == "lstm_lm" else [kl / 2, kl / 2]
      rows.append({
          "model": len(rows), "point": {"model.name": name, "loss.warmup_steps": warmup,
                                        "seed": seed},
          "eval/kl": kl, "eval/recon": -nll - kl + 1, "eval/elbo": -nll - 1, "eval/mi": kl / 2,
          "eval/active_units": 2 if kl > 1 else 0, "eval/nll": nll + seed,
          "eval/ppl": 20.0 + seed, "eval/kl_per_dim": dims, "eval/num_samples": 50,
          "eval/num_sentences": 1311})
  return rows


def test_a_text_sweeps_report_has_its_metrics_kl_over_training_and_sentences(tmp_path):
  rows = _text_rows()
  history = [{"model": r["model"], "step": s, "kl": r["eval/kl"] * s / 100}
             for r in rows for s in (50, 100)] + [{"step": 100, "loss": 1.0}]
  for m in (0, 2, 4):  # the first seed of each setting wrote its sentences
    figures = tmp_path / "models" / f"m{m:03d}" / "figures"
    figures.mkdir(parents=True)
    (figures / "reconstructions.txt").write_text(f"x: a b c\n→ a b {m}\n\n")
    (figures / "prior_samples.txt").write_text(
        "# greedy decodes of z ~ N(0, I)\nthe the\n\n# sampled decodes (temperature 1) of "
        f"the same z\nsampled {m}\nother {m}\n")
  config = vae_mnist.get_config("test")
  paths = report.write_report(rows, tmp_path / "report", config, history)
  assert "kl_over_training.png" in {p.name for p in paths}
  markdown = (tmp_path / "report" / "results.md").read_text()
  head = next(line for line in markdown.splitlines() if line.startswith("| model.name"))
  assert head.endswith("| ELBO | rate (KL) | distortion | active units | MI | NLL | PPL |")
  # NLL of lstm_vae with warm-up 100: seeds 49 and 50 → 49.50 ± 0.71 (statistics.stdev).
  assert f"| 49.50 ± {statistics.stdev([49.0, 50.0]):.2f} |" in markdown
  assert "K = 50 samples of q(z|x)" in markdown and "all 1311 held-out sentences" in markdown
  for m in (0, 2, 4):
    assert f"    → a b {m}" in markdown and f"    sampled {m}" in markdown
  assert "the the" not in markdown  # the sampled decodes, not the greedy ones
  figure = report.text_report.plot_kl_over_training(
      report.aggregate(rows), lambda g: [r["model"] for r in rows
                                          if r["point"]["loss.warmup_steps"] ==
                                          g["setting"]["loss.warmup_steps"]
                                          and r["point"]["model.name"] ==
                                          g["setting"]["model.name"]],
      report.text_report.kl_histories(rows, history), LABEL, report.setting_label)
  lines = figure.axes[0].get_lines()
  assert len(lines) == 3 and LABEL in figure.axes[0].get_title()
  np.testing.assert_allclose(lines[1].get_ydata(), [1.5, 3.0])  # mean over seeds per step


def test_image_sweeps_get_no_text_section(tmp_path):
  paths = report.write_report(fabricated_rows(), tmp_path / "report",
                              betavae_dsprites.get_config("cpu_smoke"), [{"model": 0, "kl": 1}])
  assert "kl_over_training.png" not in {p.name for p in paths}
  assert "Sample sentences" not in (tmp_path / "report" / "results.md").read_text()

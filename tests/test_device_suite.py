"""Tests of the accelerator device suite (``experiments/benchmarks/device_suite.py``).

The suite only runs for real when a GPU is lent, so these tests keep it from rotting in
between. The default ones check its pieces in this process (budget shares, the one-line
requirements message, the Markdown, argument errors, the β study's table and rates) and run
the cheap ``render`` part in a subprocess with torch and ml_collections hidden (the JSON
lines, the one-line message, the clean skip, the table file). The whole ``--smoke`` run
compiles a dozen programs (about a minute of CPU), so it is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks import device_suite as suite

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

REPO = Path(__file__).resolve().parents[1]


def run_suite(args: list[str], blocked: tuple[str, ...] = (), timeout: int = 300):
  """Runs the suite in a fresh Python with ``blocked`` top-level packages unimportable;
  returns (exit status, the stdout lines parsed as JSON, stderr)."""
  code = (
      "import sys, runpy\n"
      "class Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      f"    if name.split('.')[0] in {list(blocked)!r}: raise ImportError('hidden ' + name)\n"
      "sys.meta_path.insert(0, Block())\n"
      f"sys.argv = ['device_suite', *{args!r}]\n"
      "runpy.run_module('experiments.benchmarks.device_suite', run_name='__main__')\n"
  )
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)
  records = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
  return proc.returncode, records, proc.stderr


def by_part(records: list[dict]) -> dict[str, list[dict]]:
  parts: dict[str, list[dict]] = {}
  for record in records:
    assert record["suite"] == "device_suite"
    parts.setdefault(record["part"], []).append(record)
  return parts


# ----------------------------------------------------------------------------- in process


class FakeClock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_budget_gives_each_part_its_share_of_the_time_left(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(suite.time, "perf_counter", clock)
  budget = suite.Budget(100.0, ("train_step", "render", "beta_study"))
  shares = suite.SHARES
  total = shares["train_step"] + shares["render"] + shares["beta_study"]
  assert budget.deadline("train_step") == pytest.approx(1000 + 100 * shares["train_step"] / total)
  clock.now = 1010.0  # train_step used 10 s: the rest (90 s) goes to the parts left
  left = shares["render"] + shares["beta_study"]
  assert budget.deadline("render") == pytest.approx(1010 + 90 * shares["render"] / left)
  clock.now = 1200.0  # past the end: a part gets no time, never a negative share
  assert budget.deadline("beta_study") == pytest.approx(1200.0)


def test_requirements_line_is_one_line_naming_each_missing_piece():
  assert suite.requirements_line({}).startswith("All pieces present")
  line = suite.requirements_line({"torch": "ModuleNotFoundError: No module named 'torch'",
                                  "ml_collections": "ModuleNotFoundError: ..."})
  assert "\n" not in line
  assert "torch (train_step: the PyTorch twin is skipped)" in line
  assert "ml_collections (beta_study: the part is skipped)" in line
  assert "wheels" in line
  assert "the suite cannot run" in suite.requirements_line({"jax": "ImportError"})


def test_markdown_lists_table_rows_and_details_only():
  header = {"device": "H100", "backend": "gpu", "num_devices": 1, "cpu_count": 16,
            "jax_version": "0.x", "torch": "torch 2.x", "command": "python -m ...",
            "budget_s": 540.0, "date": "today", "requirements": "All pieces present."}
  records = [
      {"part": "render", "status": "ok", "setting": "batch 8", "summary": "9 img/s"},
      {"part": "beta_study", "status": "ok", "setting": "m0", "table_row": False},
      {"part": "beta_study", "status": "stopped", "setting": "eval", "summary": "1 of 2",
       "reason": "at the share | after 1", "details_md": "| β | MIG |\n|---|---|\n| 1 | 0.2 |"},
  ]
  text = suite.markdown(header, records)
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| part | setting | result | status |")
  assert rows[1] == "| render | batch 8 | 9 img/s | ok |"
  assert rows[2] == "| beta_study | eval | 1 of 2 | stopped: at the share / after 1 |"
  assert "| m0 |" not in text  # per-model records stay out of the table
  assert "| 1 | 0.2 |" in text and "H100" in text and "python -m ..." in text


@pytest.mark.parametrize("argv, match", [
    (["--parts=render,gpu_burn"], "gpu_burn"),
    (["--parts=,"], "none given"),
    (["--budget_s=0"], "--budget_s must be > 0"),
    (["--out=/nonexistent_dir_for_the_suite/x.md"], "existing directory"),
])
def test_bad_arguments_exit_with_one_message(argv, match, capsys):
  with pytest.raises(SystemExit):
    suite.parse_args(argv)
  assert match in capsys.readouterr().err


def test_parts_run_in_the_suite_order():
  assert suite.parse_args(["--parts=render,train_step"]).parts == ("train_step", "render")


def test_a_missing_core_package_stops_before_anything_runs(monkeypatch, tmp_path, capsys):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")  # main sets it; restored after
  monkeypatch.setattr(suite, "missing_modules",
                      lambda names: {"flax": "ModuleNotFoundError: No module named 'flax'"})
  assert suite.main(["--out", str(tmp_path / "t.md")]) == 2
  captured = capsys.readouterr()
  (line,) = captured.out.splitlines()
  assert json.loads(line)["missing"] == {"flax": "ModuleNotFoundError: No module named 'flax'"}
  assert captured.err.strip().splitlines() == [suite.requirements_line(
      {"flax": "ModuleNotFoundError: No module named 'flax'"})]
  assert not (tmp_path / "t.md").exists()


def test_beta_study_table_averages_the_scored_seeds():
  from experiments.benchmarks import beta_study_speed  # pylint: disable=g-import-not-at-top
  points = [{"loss.beta": b, "seed": s} for b in (1.0, 4.0) for s in (0, 1)]
  scored = {0: {"mig": 0.1, "sap": 0.3}, 1: {"mig": 0.2, "sap": 0.5}, 2: {"mig": 0.4, "sap": 0.0}}
  lines = beta_study_speed._score_table(points, scored, "cpu").splitlines()
  assert lines[-2] == "| 1 | 2 | — | — | 0.150 | — | 0.400 | — |"
  assert lines[-1] == "| 4 | 1 | — | — | 0.400 | — | 0.000 | — |"


def test_beta_study_rates_skip_intervals_before_a_step(tmp_path):
  from experiments.benchmarks import beta_study_speed  # pylint: disable=g-import-not-at-top
  rows = [{"step": s, "model": m, "steps_per_sec": float(s)} for s in (2, 4, 6) for m in (0, 1)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert beta_study_speed._rates(tmp_path, 2) == [4.0, 6.0]


def test_beta_study_scores_models_seed_major_until_the_deadline(monkeypatch):
  """Each model costs 10 s of a fake clock: with 25 s, two are scored (the third would end
  at 30 s), every β's seed 0 before any seed 1."""
  import types  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from experiments.benchmarks import beta_study_speed  # pylint: disable=g-import-not-at-top
  clock = FakeClock()
  monkeypatch.setattr(beta_study_speed.time, "perf_counter", clock)
  scored = []

  def fake_evaluate(model, params, ground_truth, seed, preset, metrics=()):
    scored.append(float(params["marker"]))
    clock.now += 10.0
    return {"mig/discrete_mig": 0.5, "sap/sap_score": 0.25}

  monkeypatch.setattr(beta_study_speed.representation, "evaluate_disentanglement",
                      fake_evaluate)
  points = [{"loss.beta": b, "seed": s} for b in (1.0, 4.0) for s in (0, 1)]  # β-major
  params = {"marker": np.arange(4.0)}
  result = types.SimpleNamespace(
      points=points, states=[types.SimpleNamespace(models=types.SimpleNamespace(params=params))])
  config = beta_study_speed.study_config(8, 2, {"name": "mlp_vae", "hidden_sizes": (4,)})
  *models, summary = beta_study_speed.evaluate_within(config, result, "test", ("mig", "sap"),
                                                      deadline=clock.now + 25.0)
  assert scored == [0.0, 2.0]  # β=1 seed 0, then β=4 seed 0
  assert [m["point"] for m in models] == [points[0], points[2]]
  assert models[0]["scores"] == {"mig": 0.5, "sap": 0.25}
  assert summary["status"] == "stopped" and summary["models_evaluated"] == 2
  assert summary["seconds_per_model"] == pytest.approx(10.0)


# ----------------------------------------------------------------------------- subprocess


def test_render_part_runs_and_missing_pieces_are_skipped_in_one_line(tmp_path):
  out = tmp_path / "suite.md"
  code, records, stderr = run_suite(
      ["--smoke", "--parts=render,beta_study", f"--out={out}"], blocked=("torch",
                                                                         "ml_collections"))
  assert code == 0, stderr[-3000:]
  parts = by_part(records)
  assert list(parts) == ["environment", "render", "beta_study", "done"]
  (render,) = parts["render"]
  assert render["status"] == "ok" and render["render_images_per_s"] > 0
  (study,) = parts["beta_study"]
  assert study["status"] == "skipped" and "ml_collections" in study["reason"]
  assert set(parts["environment"][0]["missing"]) == {"torch", "ml_collections"}
  missing_lines = [line for line in stderr.splitlines() if line.startswith("Missing:")]
  assert missing_lines == [parts["environment"][0]["requirements"]]
  assert "Traceback" not in stderr
  text = out.read_text()
  assert "| render | procedural dSprites, batch 8 |" in text
  assert "| beta_study |" in text and "skipped: missing ml_collections" in text


@pytest.mark.slow
def test_smoke_runs_every_part(tmp_path):
  out = tmp_path / "suite.md"
  # A generous budget: on a loaded CI machine the parts must run whole, not stop at a share.
  code, records, stderr = run_suite(["--smoke", "--budget_s=3600", f"--out={out}"], timeout=900)
  assert code == 0, stderr[-3000:]
  parts = by_part(records)
  assert list(parts) == ["environment", *suite.PARTS, "done"]
  for name in suite.PARTS:
    assert all(r["status"] == "ok" for r in parts[name]), parts[name]
  for record in parts["train_step"]:
    assert record["images_per_sec"] > 0
    assert ("ratio" in record) == (parts["environment"][0]["torch_device"] is not None)
  assert parts["sweep"][0]["vmap_images_per_s"] > 0
  train, *models, summary = parts["beta_study"]
  assert train["steps_reached"] == 8 and train["steps_per_s"] > 0
  assert len(models) == summary["models_evaluated"] == 2
  text = out.read_text()
  for name in suite.PARTS:
    assert f"| {name} |" in text

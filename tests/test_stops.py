"""Stops that stop: SIGTERM/SIGINT during training, evaluation, figures and the report.

Unit checks of :mod:`vaejax.utils.stopping` (a pending stop raises between units of
work), then tiny runs (48 binary 6×6 images, an MLP VAE, 6 steps, rows every step,
checkpoints every 2, the held-out ELBO every 3 steps) stopped by ``VAEJAX_FAULT`` at a
chosen place: each ends with :class:`Interrupted` / :class:`StopRequested` at once, and
the same call then does only what is missing, ending with the rows of an uninterrupted
run. The issue's command (a SIGTERM while the disentanglement metrics run) is in the slow
stage, with the kills of a sweep's result files.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaejax.evaluation.disentanglement import prediction, sampling
from vaejax.training import checkpoint, loop, unfinished, writers
from vaejax.training.interrupt import Interrupted
from vaejax.utils import faults, stopping
from vaejax.utils.progress import track

from tiny import tiny_dataset
from tiny_runs import rows, run, tiny_config

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- stopping


def test_a_signal_is_recorded_and_raised_between_units_of_work():
  with stopping.StopSignals() as signals:
    stopping.check()  # nothing pending
    os.kill(os.getpid(), signal.SIGTERM)  # recorded by the handler, not fatal
    assert signals.signum == signal.SIGTERM
    with pytest.raises(stopping.StopRequested, match="^Stopped by SIGTERM during the report;") \
        as info:
      stopping.check("the report")
    assert info.value.exit_code == 143
  assert stopping.pending() is None  # the outermost context ends with nothing pending
  stopping.check()  # outside any context nothing is pending


def test_nested_contexts_share_one_pending_stop():
  with stopping.StopSignals():
    stopping.request(signal.SIGINT)
    with stopping.StopSignals() as inner:
      assert inner.signum == signal.SIGINT  # a stop before the inner context still counts
    assert stopping.pending() == signal.SIGINT


def test_progress_and_encoding_loops_stop_between_items():
  seen = []
  with stopping.StopSignals(), pytest.raises(stopping.StopRequested):
    for item in track(range(5), "items", enabled=False):
      seen.append(item)
      if item == 1:
        stopping.request(signal.SIGTERM)
  assert seen == [0, 1]

  calls = []

  def encode(x):
    calls.append(len(x))
    stopping.request(signal.SIGTERM)  # arrives while the first chunk is encoded
    return np.zeros((len(x), 2), np.float32)

  with stopping.StopSignals(), pytest.raises(stopping.StopRequested):
    sampling.represent(encode, np.zeros((10, 3), np.float32), chunk_size=4)
  assert calls == [4]  # the second chunk never started


@pytest.mark.parametrize("fit", [
    lambda x, y: prediction.sap(x, y, x, y),
    lambda x, y: prediction.explicitness(x, y, x, y),
    lambda x, y: prediction.dci(x, y, x, y, model="gbt"),
], ids=["sap", "explicitness", "dci gbt"])
def test_classifier_fits_do_not_start_once_a_stop_is_pending(fit):
  factors = np.array([(a, b) for a in range(3) for b in range(3)] * 4)
  with stopping.StopSignals(), pytest.raises(stopping.StopRequested):
    stopping.request(signal.SIGTERM)
    fit(factors.astype(float), factors)


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  path = tmp_path_factory.mktemp("reference")
  run(path)
  return path


@pytest.mark.parametrize("step", [3, 6], ids=["periodic evaluation", "end-of-run evaluation"])
def test_a_stop_at_an_evaluation_step_checkpoints_and_the_rerun_only_evaluates(
    reference, tmp_path, monkeypatch, caplog, step):
  """SIGTERM during step 3 or 6 (the ELBO is due after it): the step is checkpointed, the
  ELBO is left for the rerun, which runs it on the checkpoint (no retraining of that
  step) and merges it into the step's rows: the log ends as if nothing had stopped."""
  monkeypatch.setenv(faults.ENV, f"sigterm:step@{step}")
  with pytest.raises(Interrupted) as info:
    run(tmp_path)
  assert (info.value.exit_code, info.value.step, info.value.unfinished) == (143, step, ("elbo",))
  assert str(info.value).startswith(
      f"Stopped by SIGTERM during the evaluation (elbo) of step {step}; the step is "
      "checkpointed in ")
  assert checkpoint.restore_state(tmp_path / checkpoint.CHECKPOINT_DIR)[2] == step
  assert not any(k.startswith("eval/") for k in rows(tmp_path)[-1])
  monkeypatch.delenv(faults.ENV)
  caplog.set_level("INFO")
  run(tmp_path)
  assert rows(tmp_path) == rows(reference)
  said = [r.getMessage() for r in caplog.records if "a stop cut short" in r.getMessage()]
  assert len(said) == 1 and re.search(rf"step {step} .*evaluation.*\(?elbo", said[0]), said
  assert not (tmp_path / checkpoint.CHECKPOINT_DIR / unfinished.FILE).exists()
  caplog.clear()
  run(tmp_path)  # nothing left to do
  assert rows(tmp_path) == rows(reference)
  assert any("nothing to train" in r.getMessage() for r in caplog.records)


def test_an_end_of_run_evaluator_enabled_after_the_run_finished_runs_alone(reference, tmp_path,
                                                                           caplog):
  shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
  config = tiny_config()
  config.evals.iwae.update(at_end=True, num_samples=2, chunk_size=2)
  caplog.set_level("INFO")
  run(tmp_path, config)
  before, after = rows(reference), rows(tmp_path)
  assert after[:-1] == before[:-1]  # nothing trained, no row added
  assert {k: v for k, v in after[-1].items() if not k.startswith("iwae/")} == before[-1]
  assert after[-1]["iwae/num_importance_samples"] == 2
  assert (tmp_path / "likelihood.json").exists()
  assert any("running only its evaluation(s) iwae, which had not run" in r.getMessage()
             for r in caplog.records)


def test_a_stop_while_figures_are_written_leaves_them_to_the_rerun(tmp_path, monkeypatch):
  """SIGTERM arrives while the first figure file is written: the figures stop before the
  next file; the rerun writes them all and trains nothing."""
  config = tiny_config()
  config.evals.figures.update(at_end=True, gif_frames=0, num_images=2, traversal_steps=2)
  monkeypatch.setenv(faults.ENV, "sigterm:write@reconstructions.png")
  with pytest.raises(Interrupted) as info:
    run(tmp_path, config)
  assert info.value.step == 6 and info.value.unfinished == ("figures",)
  figures = tmp_path / "figures"
  assert sorted(p.name for p in figures.glob("*.png")) == ["reconstructions.png"]
  logged = rows(tmp_path)
  monkeypatch.delenv(faults.ENV)
  run(tmp_path, config)
  assert {"samples.png", "traversals.png", "kl_per_dim.png"} <= {p.name for p in
                                                                 figures.glob("*.png")}
  assert rows(tmp_path) == logged  # no step trained again, no row added


def test_a_stop_while_the_sweep_report_is_written_is_finished_by_the_rerun(tmp_path,
                                                                           monkeypatch):
  config = tiny_config()
  config.evals.elbo.every = 6
  grid = ["loss.beta=1,4"]

  def sweep():
    return loop.train(config, tmp_path, grid=grid, dataset=tiny_dataset(), progress=False)

  monkeypatch.setenv(faults.ENV, "sigterm:write@results.md")
  with pytest.raises(stopping.StopRequested,
                     match="during the sweep's results.jsonl and report;") as info:
    sweep()
  assert not isinstance(info.value, Interrupted)  # training was complete and checkpointed
  assert len(writers.read_jsonl(tmp_path / loop.RESULTS_FILE)) == 2
  assert not (tmp_path / loop.REPORT_DIR / "rate_distortion.png").exists()
  logged = rows(tmp_path)
  monkeypatch.delenv(faults.ENV)
  report = sweep().report
  assert (tmp_path / loop.REPORT_DIR / "rate_distortion.png") in report
  assert rows(tmp_path) == logged


# ----------------------------------------------------------------------------- slow: the issue


ISSUE_COMMAND = [
    sys.executable, "-m", "experiments.train",
    "--config=experiments/configs/betavae_dsprites.py:test",
    "--config.model.name=mlp_vae", "--config.model.hidden_sizes=(16,)",
    "--config.model.latent_dim=3", "--config.num_steps=30",
    "--config.evals.disentanglement.at_end=True",
    "--config.evals.disentanglement.preset=cpu",
]


def _issue_run(workdir, stop_after=None):
  """Runs the issue's command (an MLP instead of the conv VAE: the same path, less compile);
  with ``stop_after`` a SIGTERM that many seconds after "Disentanglement metric 1/6".
  Returns (exit status, stderr, seconds from the SIGTERM to the exit)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(faults.ENV, None)
  proc = subprocess.Popen([*ISSUE_COMMAND, f"--workdir={workdir}"], cwd=REPO, env=env,
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  lines, sent = [], None
  for line in proc.stderr:
    lines.append(line)
    if stop_after is not None and sent is None and "Disentanglement metric 1/6" in line:
      time.sleep(stop_after)
      proc.send_signal(signal.SIGTERM)
      sent = time.monotonic()
  proc.wait(timeout=600)
  return proc.returncode, lines, None if sent is None else time.monotonic() - sent


@pytest.mark.slow
def test_sigterm_during_the_metrics_stops_within_seconds_and_the_rerun_only_evaluates(
    tmp_path):
  status, lines, seconds = _issue_run(tmp_path, stop_after=2.0)
  assert status == 143, "".join(lines[-20:])
  assert seconds < 10, f"took {seconds:.1f} s to stop"
  assert re.match(r"Stopped by SIGTERM during the evaluation \(disentanglement, [a-z, ]+\) "
                  r"of step 30; the step is checkpointed in ", lines[-1]), lines[-1]
  assert not any("Traceback" in line for line in lines)
  trained = rows(tmp_path)
  assert [r["step"] for r in trained] == list(range(1, 31))
  status, lines, _ = _issue_run(tmp_path)
  assert status == 0, "".join(lines[-20:])
  assert any("finished training at step 30" in line and "a stop cut short" in line
             for line in lines)
  assert not any(re.search(r"\bstep \d+: loss=", line) for line in lines)  # no training
  after = rows(tmp_path)
  assert [r["step"] for r in after] == list(range(1, 31))  # no row twice
  assert after[:-1] == trained[:-1]
  assert {k: v for k, v in after[-1].items() if k in trained[-1]} == trained[-1]
  assert {k.split("/")[0] for k in set(after[-1]) - set(trained[-1])} <= {"disentanglement",
                                                                         "eval"}
  scores = json.loads((tmp_path / "disentanglement.json").read_text())["scores"]
  assert {k: after[-1][f"disentanglement/{k}"] for k in scores} == scores
  assert (tmp_path / "figures" / "traversals.png").exists()

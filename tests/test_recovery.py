"""Runs never lose work: the workdir lock, checks, corrupt checkpoints, signals and kills.

A tiny MLP VAE on procedural dSprites (no data files needed) trains 6 steps with
checkpoints every 2. Every faulty history (a corrupted newest checkpoint; SIGTERM after a
step; SIGKILL after a step, while a checkpoint is written and during evaluation, at fixed
points set by ``VAEJAX_FAULT``) must end, after re-running the same command, with the rows
of an uninterrupted run (timings aside) and a bit-identical final state. The slow stage
adds kills at random points of a background checkpoint write, kills while a sweep writes
``results.jsonl`` and its report, and the console of a rerun past each kind of corrupt
checkpoint (one warning line).
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from vaejax.training import checkpoint, loop, workdir, writers
from vaejax.utils import faults
from vaejax.training.interrupt import Interrupted

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from experiments.configs import betavae_dsprites  # noqa: E402

OVERRIDES = {"model.name": "mlp_vae", "model.hidden_sizes": (16,), "model.latent_dim": 3,
             "num_steps": 6, "checkpoint_every": 2, "log_every": 1, "evals.elbo.every": 3,
             "evals.figures.at_end": False}


def tiny_config():
  config = betavae_dsprites.get_config("test")
  for key, value in OVERRIDES.items():
    group, _, leaf = key.rpartition(".")
    node = config
    for part in group.split(".") if group else ():
      node = node[part]
    node[leaf] = value
  return config


def cli(workdir, fault=None, check=False):
  """``python -m experiments.train`` with the tiny config; returns the finished process."""
  args = [sys.executable, "-m", "experiments.train",
          "--config=experiments/configs/betavae_dsprites.py:test", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def rows_without_timing(workdir):
  return [{k: v for k, v in row.items() if k != "steps_per_sec"}
          for row in writers.read_jsonl(Path(workdir) / writers.METRICS_FILE)]


def final_state(workdir):
  state, _, step = checkpoint.restore_state(Path(workdir) / checkpoint.CHECKPOINT_DIR)
  return step, state


def assert_same_run(got, want):
  assert rows_without_timing(got) == rows_without_timing(want)
  (step_a, a), (step_b, b) = final_state(got), final_state(want)
  assert step_a == step_b == OVERRIDES["num_steps"]
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run."""
  path = tmp_path_factory.mktemp("reference")
  loop.train_and_evaluate(tiny_config(), path, progress=False)
  return path


# ----------------------------------------------------------------------------- workdirs


@pytest.mark.parametrize("make,fragment", [
    (lambda tmp: "", "--workdir is empty"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is a file"),
    (lambda tmp: ((tmp / "f").write_text("x"), tmp / "f" / "run")[1], "Cannot create"),
])
def test_bad_workdirs_are_refused_in_one_line_before_anything_runs(make, fragment, tmp_path):
  path = make(tmp_path)
  with pytest.raises(workdir.WorkdirError, match=fragment) as info:
    loop.train_and_evaluate(tiny_config(), path, progress=False)
  assert "\n" not in str(info.value)


def test_a_workdir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
  real = Path.write_text

  def refuse_probe(self, *args, **kwargs):
    if self.name.startswith(".write-probe"):
      raise PermissionError(13, "Permission denied")
    return real(self, *args, **kwargs)

  monkeypatch.setattr(Path, "write_text", refuse_probe)
  with pytest.raises(workdir.WorkdirError, match="Cannot write to --workdir .*Permission"):
    workdir.check_workdir(tmp_path / "run")


def test_a_live_holder_makes_a_second_run_or_evaluation_refuse_at_once(reference, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  # The holder is writing checkpoint 8: its temporary directory must survive the refusals.
  writing = run / checkpoint.CHECKPOINT_DIR / "8.orbax-checkpoint-tmp-1700000000000000"
  (writing / "state").mkdir(parents=True)
  (writing / "state" / "partial").write_text("x")
  before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
  holder = subprocess.Popen(["sleep", "60"])
  try:
    (run / workdir.LOCK_FILE).write_text(
        f'{{"host": "{socket.gethostname()}", "pid": {holder.pid}, "started": 0, '
        '"purpose": "training"}')
    with pytest.raises(workdir.WorkdirLockedError, match=f"process {holder.pid} on host") as e:
      loop.train_and_evaluate(tiny_config(), run, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(workdir.WorkdirLockedError):
      loop.evaluate_workdir(run, ["elbo"])
  finally:
    holder.kill()
  after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()
           and p.name != workdir.LOCK_FILE}
  assert after == before  # the holder's files untouched


@pytest.mark.parametrize("stale", ["dead pid", "no heartbeat"])
def test_a_stale_lock_is_taken_over(stale, tmp_path):
  if stale == "dead pid":
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}, "started": 0}}'
  else:
    record = '{"host": "another-host", "pid": 1, "started": 0}'
  lock = tmp_path / workdir.LOCK_FILE
  lock.write_text(record)
  if stale == "no heartbeat":
    old = time.time() - workdir.STALE_SECONDS - 60
    os.utime(lock, (old, old))
  with workdir.WorkdirLock(tmp_path) as held:
    assert held.path.exists() and f'"pid": {os.getpid()}' in lock.read_text()
  assert not lock.exists()  # released


# ----------------------------------------------------------------------------- checkpoints


def test_corrupt_newest_checkpoints_fall_back_and_the_run_ends_as_if_uninterrupted(
    reference, tmp_path):
  """Checkpoint 6 truncated, checkpoint 4's metadata garbage: the run restarts from 2."""
  import shutil  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  ckpts = run / checkpoint.CHECKPOINT_DIR
  largest = max((ckpts / "6" / "state").rglob("*"), key=lambda p: p.stat().st_size
                if p.is_file() else -1)
  with open(largest, "r+b") as f:
    f.truncate(100)
  (ckpts / "4" / "meta" / "metadata").write_text("garbage{")
  loop.train_and_evaluate(tiny_config(), run, progress=False)
  assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4", "6", "corrupt-4", "corrupt-6"]
  assert_same_run(run, reference)


def test_a_checkpoint_without_its_state_is_set_aside(reference, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(reference / checkpoint.CHECKPOINT_DIR, ckpts)
  shutil.rmtree(ckpts / "6" / "state")
  target = checkpoint.restore_state(reference / checkpoint.CHECKPOINT_DIR)[0]
  state, meta, step = checkpoint.restore_latest(ckpts, target)
  assert step == 4 and meta["step"] == 4 and (ckpts / "corrupt-6").is_dir()


def _rewrite_checkpoint(ckpts, step, edit):
  """Re-saves checkpoint ``step`` with ``edit`` applied to its state (nested dicts)."""
  import shutil  # pylint: disable=g-import-not-at-top
  state, meta, _ = checkpoint.restore_state(ckpts, step)
  edit(state)
  shutil.rmtree(ckpts / str(step))
  with checkpoint.Checkpointer(ckpts) as ckpt:
    ckpt.save(step, state, meta)
    ckpt.wait_until_finished()


def test_a_checkpoint_older_than_a_state_field_resumes_with_it_at_zero(reference, tmp_path):
  """Checkpoint 4 rewritten as a vaejax without ``grad_norm_skips`` would have written it,
  checkpoint 6 gone: the run resumes from 4, ends as the uninterrupted one, moves nothing,
  and keeps the rows it logs again in metrics.rewound.jsonl."""
  import shutil  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  ckpts = run / checkpoint.CHECKPOINT_DIR
  shutil.rmtree(ckpts / "6")
  _rewrite_checkpoint(ckpts, 4, lambda state: state["models"].pop("grad_norm_skips"))
  loop.train_and_evaluate(tiny_config(), run, progress=False)
  assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4", "6"]
  assert_same_run(run, reference)
  logged_again = [{k: v for k, v in row.items() if k != "steps_per_sec"}
                  for row in writers.read_jsonl(writers.rewound_path(run / writers.METRICS_FILE))]
  assert logged_again == [row for row in rows_without_timing(reference) if row["step"] > 4]


@pytest.mark.parametrize("edit,fragment", [
    (lambda state: state["models"].pop("skips"), "missing: ['models.skips']"),
    (lambda state: state.update(extra=np.zeros(3)), "not expected: ['extra']"),
], ids=["a field missing", "a field unknown"])
def test_a_checkpoint_of_another_layout_is_refused_and_left_in_place(reference, tmp_path, edit,
                                                                      fragment):
  import shutil  # pylint: disable=g-import-not-at-top
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(reference / checkpoint.CHECKPOINT_DIR, ckpts)
  _rewrite_checkpoint(ckpts, 6, edit)
  target = checkpoint.restore_state(reference / checkpoint.CHECKPOINT_DIR)[0]
  with pytest.raises(checkpoint.LayoutMismatch, match=re.escape(fragment)):
    checkpoint.restore_latest(ckpts, target)
  assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4", "6"]


# ----------------------------------------------------------------------------- signals, kills


def test_sigterm_checkpoints_the_step_and_the_same_run_resumes_exactly(reference, tmp_path,
                                                                        monkeypatch):
  monkeypatch.setenv(faults.ENV, "sigterm:step@3")
  with pytest.raises(Interrupted) as info:
    loop.train_and_evaluate(tiny_config(), tmp_path, progress=False)
  assert info.value.exit_code == 143 and info.value.step == 3
  assert checkpoint.restore_state(tmp_path / checkpoint.CHECKPOINT_DIR)[2] == 3
  monkeypatch.delenv(faults.ENV)
  loop.train_and_evaluate(tiny_config(), tmp_path, progress=False)
  assert_same_run(tmp_path, reference)


def test_kills_at_fixed_points_lose_nothing(reference, tmp_path):
  """SIGKILL after step 3, while checkpoint 4 is written, during the evaluation of step 6;
  then the same command finishes the run."""
  for fault in ("kill:step@3", "kill:checkpoint@4", "kill:evaluation@6"):
    proc = cli(tmp_path, fault)
    assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-2000:])
  cli(tmp_path, check=True)
  assert_same_run(tmp_path, reference)


def test_sigterm_from_the_command_line_exits_143_with_one_line(tmp_path):
  proc = cli(tmp_path, "sigterm:step@2")
  assert proc.returncode == 143, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Stopped by SIGTERM after step 2: checkpoint written to ")


@pytest.mark.slow
def test_sigint_exits_130_and_the_run_resumes_exactly(reference, tmp_path):
  proc = cli(tmp_path, "sigint:step@5")
  assert proc.returncode == 130, proc.stderr[-2000:]
  cli(tmp_path, check=True)
  assert_same_run(tmp_path, reference)


# ------------------------------------------------------------------------- slow: kills mid-write


@pytest.mark.slow
def test_kills_at_random_points_of_a_checkpoint_write_never_restore_half_a_step(reference,
                                                                                 tmp_path):
  """SIGKILL while orbax writes checkpoint 4 in the background (a timer fires at a random
  point of the write, at seeded delays): no half-written step is ever listed or restored,
  and the rerun ends as the uninterrupted run."""
  delays = sorted(random.Random(22).uniform(0.0, 0.3) for _ in range(3))
  for i, delay in enumerate(delays):
    workdir = tmp_path / f"kill{i}"
    proc = cli(workdir, f"kill:checkpoint@4+{delay:.3f}")
    assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr[-2000:]  # 0: ended first
    ckpts = workdir / checkpoint.CHECKPOINT_DIR
    with checkpoint.Checkpointer(ckpts) as ckpt:
      listed = ckpt.all_steps()
    assert listed and set(listed) <= {2, 4, 6}
    for step in listed:  # every step orbax lists reads whole
      assert checkpoint.restore_state(ckpts, step)[2] == step
    loop.train_and_evaluate(tiny_config(), workdir, progress=False)
    assert_same_run(workdir, reference)


SWEEP = ["loss.beta=1,4"]


def sweep_cli(workdir, fault=None):
  """``python -m experiments.sweep`` of the tiny config over β ∈ {1, 4}."""
  args = [sys.executable, "-m", "experiments.sweep",
          "--config=experiments/configs/betavae_dsprites.py:test", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *(f"--grid={g}" for g in SWEEP)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def assert_whole(report_dir):
  """Every report file reads whole (an interrupted write leaves the file absent)."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  for path in report_dir.iterdir() if report_dir.exists() else ():
    if path.name.startswith("."):
      continue  # a killed write's temporary file: never read as the result
    if path.suffix == ".png":
      assert matplotlib.image.imread(path).size > 0
    elif path.suffix == ".json":
      json.loads(path.read_text())
    else:
      assert path.read_text().endswith("\n"), path


@pytest.mark.slow
@pytest.mark.parametrize("file", [loop.RESULTS_FILE, "rate_distortion.png"])
def test_a_kill_while_a_sweep_writes_its_results_leaves_whole_files_and_the_rerun_ends_it(
    file, tmp_path):
  proc = sweep_cli(tmp_path, f"kill:write@{file}")  # bytes on disk, not yet renamed
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  results = writers.read_jsonl(tmp_path / loop.RESULTS_FILE)
  assert len(results) == (0 if file == loop.RESULTS_FILE else 2)
  assert not (tmp_path / loop.REPORT_DIR / file).exists()
  assert_whole(tmp_path / loop.REPORT_DIR)
  trained = writers.read_jsonl(tmp_path / writers.METRICS_FILE)
  proc = sweep_cli(tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "nothing to train" in proc.stderr
  assert writers.read_jsonl(tmp_path / writers.METRICS_FILE) == trained
  assert [r["point"] for r in writers.read_jsonl(tmp_path / loop.RESULTS_FILE)] == [
      {"loss.beta": 1.0}, {"loss.beta": 4.0}]
  assert {"results.md", "results.csv", "runs.csv", "summary.json", "rate_distortion.png"} <= {
      p.name for p in (tmp_path / loop.REPORT_DIR).iterdir()}
  assert_whole(tmp_path / loop.REPORT_DIR)


# ------------------------------------------------------------------------- slow: quiet faults


def _truncate_largest(step_dir):
  largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(100)


CORRUPTIONS = {
    "truncated largest file": _truncate_largest,
    "garbage metadata": lambda d: (d / "meta" / "metadata").write_text("garbage{"),
    "state/ removed": lambda d: shutil.rmtree(d / "state"),
    "zero-byte file": lambda d: (d / "state" / "_METADATA").write_bytes(b""),
}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_rerun_past_a_corrupt_checkpoint_prints_one_warning_and_nothing_else(
    corruption, reference, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  CORRUPTIONS[corruption](run / checkpoint.CHECKPOINT_DIR / "6")
  proc = cli(run, check=True)
  lines = proc.stderr.splitlines()
  loud = [line for line in lines if not line.startswith("I")]  # all but INFO log lines
  assert len(loud) == 1 and loud[0].startswith("W"), proc.stderr[-3000:]
  assert re.search(r"Checkpoint \S+/checkpoints/6 does not restore \([^)]{5,60}\); moved it to "
                   r"\S+/checkpoints/corrupt-6 and fell back", loud[0]), loud[0]
  assert len(lines) < 15, proc.stderr  # the INFO lines: resumed, built, 2 steps, rows moved
  assert_same_run(run, reference)

"""A full disk stops a run at the first failed write, with one line; the rerun resumes.

Every kind of write a run makes (a metrics row, TensorBoard events, a checkpoint, a
figure, a sweep's ``results.jsonl`` and report) gets an ``OSError(ENOSPC)`` injected at
the layer that writes it. Each run must stop there with a
:class:`~vaejax.utils.files.DiskFullError` naming the path and the free space, keep the
newest complete checkpoint and every complete row, leave no half-written checkpoint
behind, and the same call (space freed) must resume from that checkpoint and end as an
uninterrupted run. On a real size-limited tmpfs (mounting needs root; skipped otherwise)
the slow test repeats the issue's command.
"""

import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vaejax.training import checkpoint, loop, writers
from vaejax.utils import faults, files

from tiny import tiny_dataset
from tiny_runs import rows, run, tiny_config

REPO = Path(__file__).resolve().parents[1]
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / checkpoint.CHECKPOINT_DIR).iterdir()
                if p.name.isdigit())


def assert_names_path_and_space(error, fragment):
  message = str(error)
  assert fragment in message and "free on its file system" in message, message
  assert "\n" not in message


def test_atomic_writes_name_the_path_and_the_free_space(tmp_path, monkeypatch):
  target = tmp_path / "result.json"
  target.write_text("old")
  monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(NO_SPACE))
  with pytest.raises(files.DiskFullError) as info:
    files.atomic_write_json(target, {"a": 1})
  assert_names_path_and_space(info.value, str(target))
  assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
  assert target.read_text() == "old" and os.listdir(tmp_path) == ["result.json"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted tiny run."""
  path = tmp_path_factory.mktemp("reference")
  run(path)
  return path


def _resume_and_compare(workdir, reference, resumed_from, config=None):
  assert checkpoint_steps(workdir)[-1] == resumed_from
  assert not list((workdir / checkpoint.CHECKPOINT_DIR).glob(f"*{checkpoint.TMP_SUFFIX}*"))
  run(workdir, config)  # space freed: the same call
  assert rows(workdir) == rows(reference)


def test_a_metrics_row_that_does_not_fit_stops_the_run(reference, tmp_path,
                                                       monkeypatch):
  real_open = open

  class FullAfterThreeRows:
    def __init__(self, path, mode):
      self._file, self._rows = real_open(path, mode), 0

    def write(self, text):
      self._rows += text.count("\n")
      if self._rows > 3:
        raise NO_SPACE
      return self._file.write(text)

    def __getattr__(self, name):
      return getattr(self._file, name)

  monkeypatch.setattr(writers, "open", FullAfterThreeRows, raising=False)
  with pytest.raises(files.DiskFullError) as info:
    run(tmp_path)
  assert_names_path_and_space(info.value, str(tmp_path / writers.METRICS_FILE))
  assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3]  # every complete row stays
  monkeypatch.undo()
  _resume_and_compare(tmp_path, reference, resumed_from=2)


def test_tensorboard_events_that_do_not_fit_stop_the_run(reference, tmp_path,
                                                         monkeypatch):
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

  real_write = record_writer.RecordWriter.write
  written = []

  def write(self, data):
    written.append(data)
    if len(written) > 30:  # a few steps' scalars, then the disk is full
      raise NO_SPACE
    return real_write(self, data)

  monkeypatch.setattr(record_writer.RecordWriter, "write", write)
  with pytest.raises(files.DiskFullError) as info:
    run(tmp_path)
  assert_names_path_and_space(info.value, "TensorBoard events in ")
  monkeypatch.undo()
  run(tmp_path)
  assert rows(tmp_path) == rows(reference)


def test_a_checkpoint_whose_background_write_fails_stops_the_run_at_the_next_step(
    reference, tmp_path, monkeypatch):
  """Checkpoint 4's write fails in orbax's background thread the way TensorStore reports a
  full disk: the run stops after step 5 (not at the next save), removes the save's
  temporary directory, and keeps checkpoint 2."""
  manager_class = checkpoint.ocp.CheckpointManager
  real_save, real_wait = manager_class.save, manager_class.wait_until_finished
  failing = {}

  def save(self, step, *args, **kwargs):
    if step == 4:  # the write starts, then fails in the background
      failing[id(self)] = self.directory / f"4{checkpoint.TMP_SUFFIX}"
      (failing[id(self)] / "state").mkdir(parents=True)
      return True
    return real_save(self, step, *args, **kwargs)

  def wait_until_finished(self):
    if failing.pop(id(self), None) is not None:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "models.params" in OCDBT database: '
                       "Failed to write 365752 bytes to file 12: No space left on device "
                       "[os_error_code='28']")
    return real_wait(self)

  monkeypatch.setattr(manager_class, "save", save)
  monkeypatch.setattr(manager_class, "wait_until_finished", wait_until_finished)
  monkeypatch.setattr(manager_class, "is_saving_in_progress",
                      lambda self: False)  # the failed write has ended
  with pytest.raises(files.DiskFullError) as info:
    run(tmp_path)
  assert_names_path_and_space(info.value, "checkpoint 4 (")
  assert "the newest complete checkpoint is step 2" in str(info.value)
  assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3, 4]  # stopped right after step 5
  monkeypatch.undo()
  _resume_and_compare(tmp_path, reference, resumed_from=2)


def _full_when_writing(name, monkeypatch):
  """Injects ENOSPC at the write layer for the file ``name`` (its bytes do not fit)."""
  real_point = faults.point

  def point(where, key):
    if where == "write" and key == name:
      raise NO_SPACE
    return real_point(where, key)

  monkeypatch.setattr(faults, "point", point)


def test_a_figure_that_does_not_fit_stops_the_run(reference, tmp_path, monkeypatch):
  """The end-of-run figures: the run stops with step 6 unsaved (its evaluation comes
  before its checkpoint), so the rerun trains steps 5 and 6 again from checkpoint 4."""
  config = tiny_config()
  config.evals.figures.update(at_end=True, gif_frames=0, num_images=2, traversal_steps=2)
  _full_when_writing("reconstructions.png", monkeypatch)
  with pytest.raises(files.DiskFullError) as info:
    run(tmp_path, config)
  assert_names_path_and_space(info.value, f"{os.sep}reconstructions.png (")
  assert not list(tmp_path.rglob(".reconstructions.png*"))  # no temporary file left
  monkeypatch.undo()
  _resume_and_compare(tmp_path, reference, resumed_from=4, config=config)
  assert (tmp_path / "figures" / "reconstructions.png").exists()


@pytest.mark.parametrize("name", [loop.RESULTS_FILE, "results.md"])
def test_a_sweeps_results_or_report_that_does_not_fit_stops_it(name, tmp_path, monkeypatch):
  def sweep():
    return loop.train(tiny_config(), tmp_path, grid=["loss.beta=1,4"], dataset=tiny_dataset(),
                      progress=False)

  _full_when_writing(name, monkeypatch)
  with pytest.raises(files.DiskFullError) as info:
    sweep()
  assert_names_path_and_space(info.value, f"{os.sep}{name} (")
  assert not list(tmp_path.rglob(f".{name}*"))
  trained = rows(tmp_path)
  monkeypatch.undo()
  result = sweep()  # every model is finished: only the results and report are written
  assert rows(tmp_path) == trained
  assert len(result.rows) == 2 and (tmp_path / loop.REPORT_DIR / "results.md").exists()


# ----------------------------------------------------------------------------- a real tmpfs


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 2 MiB tmpfs at ``tmp_path/disk`` (root only; skipped where mounting is refused)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
  name = f"vaejax-{uuid.uuid4().hex[:8]}"
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", name, str(disk)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield disk
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_the_issues_disk_full_run_stops_at_the_first_failed_save_and_resumes(small_tmpfs):
  """The issue's repro on a 2 MiB tmpfs (an MLP instead of the conv VAE, whose first
  checkpoint alone is 8 MB): checkpoint 20 (1.2 MB) fits, 40 does not."""
  workdir = small_tmpfs / "run"
  args = [sys.executable, "-m", "experiments.train",
          "--config=experiments/configs/betavae_dsprites.py:test", f"--workdir={workdir}",
          "--config.model.name=mlp_vae", "--config.model.hidden_sizes=(16,)",
          "--config.model.latent_dim=3", "--config.num_steps=200",
          "--config.checkpoint_every=20", "--config.log_every=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(faults.ENV, None)
  full = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert full.returncode == 1, full.stderr[-3000:]
  lines = full.stderr.splitlines()
  errors = [line for line in lines if not line.startswith("I")]  # all but INFO log lines
  assert errors == [lines[-1]], full.stderr[-3000:]
  assert lines[-1].startswith(f"error: No space left to write checkpoint 40 ({workdir}")
  assert "free on its file system); the newest complete checkpoint is step 20" in lines[-1]
  assert max(r["step"] for r in writers.read_jsonl(workdir / writers.METRICS_FILE)) <= 45
  assert sorted(p.name for p in (workdir / checkpoint.CHECKPOINT_DIR).iterdir()) == ["20"]
  subprocess.run(["mount", "-o", "remount,size=32m", str(small_tmpfs)], check=True)
  resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from step 20" in resumed.stderr
  assert "Traceback" not in resumed.stderr
  assert [r["step"] for r in writers.read_jsonl(workdir / writers.METRICS_FILE)] == list(
      range(1, 201))

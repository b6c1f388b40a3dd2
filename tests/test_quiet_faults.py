"""One line per fault: corrupt checkpoints, config-file errors, bad grid points, advice.

Each fault must reach the user as one line that says what happened (and, where it
matters, what rerunning does): a corrupt newest checkpoint is one warning (which, why in
a few words, where it went) with nothing else on the console; a config file that does not
parse names the file and line; a bad grid point is named by its values;
``experiments.evaluate`` asked for an evaluator the run cannot have gives advice that
makes sense for ``evaluate``; JAX's "Unable to initialize backend 'tpu'" INFO line is
gone while its other records stay. The same checks through the command line, for every
corruption, are in ``test_recovery.py``'s slow stage.
"""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import cli
from vaejax.evaluation.evaluators import EvaluationError
from vaejax.training import checkpoint, loop
from vaejax.training.plan import PointError

from tiny import tiny_dataset
from tiny_runs import run, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run (checkpoints 2, 4, 6)."""
  path = tmp_path_factory.mktemp("finished")
  run(path)
  return path


def _largest_data_file(step_dir):
  """The largest file of arrays (TensorStore's ``d/`` chunks) of a checkpoint."""
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  with open(_largest_data_file(step_dir), "r+b") as f:
    f.truncate(100)


CORRUPTIONS = {  # how a checkpoint breaks → the few words that say why
    "truncated data file": (_truncate, "its array data are truncated or damaged"),
    "zero-byte data file": (lambda d: _largest_data_file(d).write_bytes(b""),
                            "its array data are truncated or damaged"),
    "zero-byte metadata": (lambda d: (d / "state" / "_METADATA").write_bytes(b""),
                           "its metadata is not valid JSON"),
    "garbage metadata": (lambda d: (d / "meta" / "metadata").write_text("garbage{"),
                         "its metadata is not valid JSON"),
    "state/ removed": (lambda d: shutil.rmtree(d / "state"), "its state/ item is missing"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_is_one_warning_and_nothing_else(corruption, finished,
                                                                     tmp_path, caplog, capfd):
  ckpts = tmp_path / checkpoint.CHECKPOINT_DIR
  shutil.copytree(finished / checkpoint.CHECKPOINT_DIR, ckpts)
  corrupt, why = CORRUPTIONS[corruption]
  corrupt(ckpts / "6")
  target = checkpoint.restore_state(finished / checkpoint.CHECKPOINT_DIR)[0]
  saved_config = checkpoint.restore_state(finished / checkpoint.CHECKPOINT_DIR)[1]["config"]
  capfd.readouterr()
  caplog.set_level(logging.INFO)
  caplog.clear()
  # The loop's two reads: the metadata probe (plan), then the restore.
  probed = checkpoint.latest_resumable_step(ckpts, saved_config)
  restored = checkpoint.restore_latest(ckpts, target)
  assert restored[2] == 4 and probed in (4, 6)
  loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert loud == [f"Checkpoint {ckpts / '6'} does not restore ({why}); moved it to "
                  f"{ckpts / 'corrupt-6'} and fell back to the next older checkpoint."]
  assert capfd.readouterr().err == ""  # no tracebacks of orbax's threads or event loop


def test_evaluate_explains_an_evaluator_the_run_cannot_have(finished):
  with pytest.raises(EvaluationError) as info:
    loop.evaluate_workdir(finished, ["disentanglement"], dataset=tiny_dataset())
  message = str(info.value)
  assert "needs a dataset with ground-truth factors" in message
  assert "this run was trained on 'tiny', which has none, so it cannot be evaluated" in message
  assert "at_end" not in message  # training advice means nothing to evaluate


def test_only_the_tpu_probe_line_of_jax_is_dropped():
  def record(level, message):
    return logging.LogRecord("jax._src.xla_bridge", level, "xla_bridge.py", 1, message, (),
                             None)

  probe = cli._NoTpuProbe()  # pylint: disable=protected-access
  tpu = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
  assert not probe.filter(record(logging.INFO, tpu))
  assert probe.filter(record(logging.WARNING, tpu))  # a warning is never hidden
  assert probe.filter(record(logging.INFO, "Unable to initialize backend 'cuda': no GPU"))
  assert any(isinstance(f, cli._NoTpuProbe)  # pylint: disable=protected-access
             for f in logging.getLogger("jax._src.xla_bridge").filters)


def test_a_config_file_with_a_syntax_error_is_one_line_with_its_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("import ml_collections\n\ndef get_config(preset=''):\n"
                 "  config = ml_collections.ConfigDict(\n  return config\n")
  result = subprocess.run([sys.executable, "-m", "experiments.train", f"--config={bad}",
                           f"--workdir={tmp_path}/w"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 1
  assert result.stderr.strip() == (f"error: the config file {bad} has a syntax error at line "
                                   "4: '(' was never closed.")
  assert not (tmp_path / "w").exists()


def test_a_config_file_that_fails_while_it_runs_is_one_line_with_its_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(preset=''):\n  return undefined_name\n")
  namespace = {}
  exec(compile(bad.read_text(), str(bad), "exec"), namespace)  # noqa: S102  (a config file)
  try:
    namespace["get_config"]()
  except NameError as error:
    line = cli._config_file_error(error, str(bad))  # pylint: disable=protected-access
  assert line == (f"the config file {bad} failed at line 2: NameError: name 'undefined_name' "
                  "is not defined")


def test_a_bad_grid_point_is_named_by_its_values(tmp_path, no_compiling):
  """Each value of ``model.latent_dim`` builds a model of its own; the bad one is named."""
  config = tiny_config()
  with pytest.raises(PointError) as info:
    loop.train(config, tmp_path / "w", grid=["model.latent_dim=0,2", "seed=0,1"],
               dataset=tiny_dataset(), progress=False)
  assert str(info.value) == ("Sweep points with model.latent_dim=0 (2 models): latent_dim "
                             "must be an int >= 1, got 0.")
  with pytest.raises(PointError, match=r"^Sweep point model.latent_dim=0: latent_dim must"):
    loop.train(config, tmp_path / "w", grid=["model.latent_dim=2,0"], dataset=tiny_dataset(),
               progress=False)
  assert not (tmp_path / "w").exists()

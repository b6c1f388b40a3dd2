"""vaejax.utils.progress (one progress mechanism) and the training ProgressWriter over it:
a bar on a terminal, log lines elsewhere."""

import logging

import pytest

from vaejax.training import writers
from vaejax.utils import progress

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code


@pytest.fixture
def log_lines(caplog):
  """The absl log lines emitted during a test (absl logs through the "absl" logger)."""
  caplog.set_level(logging.INFO, logger="absl")

  def lines():
    return [r.getMessage() for r in caplog.records if r.name == "absl"]

  return lines


def test_off_a_terminal_progress_reports_as_log_lines(log_lines):
  with progress.Progress(total=10, initial=3, label="group 1/2", enabled=False) as bar:
    bar.advance(2)
    bar.report("loss=1.5")
    assert bar.position == 5 and not bar.enabled
  assert log_lines() == ["group 1/2: loss=1.5"]


def test_on_a_terminal_progress_draws_a_bar_and_shows_reports_on_it(log_lines, capsys):
  with progress.Progress(total=4, label="demo", enabled=True) as bar:
    bar.advance(4)
    bar.report("loss=2")
  drawn = capsys.readouterr().err
  assert "demo" in drawn and "4/4" in drawn and "loss=2" in drawn
  assert log_lines() == []


def test_track_yields_every_item_and_logs_once_off_a_terminal(log_lines):
  assert list(progress.track(range(3), "metrics", enabled=False)) == [0, 1, 2]
  assert list(progress.track(iter("ab"), "letters", enabled=False)) == ["a", "b"]
  assert log_lines() == ["metrics: 3 item(s)...", "letters: 2 item(s)..."]


def test_track_on_a_terminal_draws_a_bar(log_lines, capsys):
  assert list(progress.track([1, 2, 3], "figures", enabled=True)) == [1, 2, 3]
  assert "figures" in capsys.readouterr().err
  assert log_lines() == []


def test_the_progress_writer_logs_one_line_per_logged_step(log_lines):
  writer = writers.ProgressWriter(0, 10, enabled=False, label="run")
  writer.advance(5)
  writer.write_rows(5, [{"step": 5, "loss": 103.25, "kl": 12.0, "steps_per_sec": 2.5}])
  writer.write_rows(10, [{"step": 10, "model": 0, "loss": 1.0, "active": True},
                         {"step": 10, "model": 1, "loss": 3.0, "active": False}])
  writer.close()
  assert log_lines() == ["run: step 5: loss=103.2 kl=12 (2.50 steps/s)",
                         "run: step 10: 1/2 active, loss 1...1 (nan steps/s)"]


def test_the_progress_writer_shows_the_summary_on_its_bar(log_lines, capsys):
  writer = writers.ProgressWriter(0, 10, enabled=True)
  writer.advance(10)
  writer.write_rows(10, [{"step": 10, "loss": 7.0}])
  writer.close()
  drawn = capsys.readouterr().err
  assert "10/10" in drawn and "loss=7" in drawn
  assert log_lines() == []

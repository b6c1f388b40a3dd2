"""``experiments/tour.ipynb`` runs end to end (slow: CI's slow stage, with the notebook extra).

The notebook trains a tiny model, loads it with ``vaejax.load_run`` and checks in a cell that
the loaded model's held-out ELBO is the one the run logged; executing it here with nbclient
(a fresh kernel, the repository root as its working directory) keeps it working. It is
committed without outputs, which this test checks too.
"""

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "tour.ipynb"
MISSING = "the notebook extra is not installed: pip install -e '.[notebook]'"


@pytest.mark.slow
def test_the_tour_notebook_runs_end_to_end():
  nbformat = pytest.importorskip("nbformat", reason=MISSING)
  nbclient = pytest.importorskip("nbclient", reason=MISSING)
  pytest.importorskip("ipykernel", reason=MISSING)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and not any(cell.outputs or cell.execution_count for cell in code), (
      "commit the notebook without outputs")
  start = time.monotonic()
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO)}}).execute()
  print(f"tour.ipynb ran in {time.monotonic() - start:.0f} s")
  assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]

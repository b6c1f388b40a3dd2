"""The layout of vaejax.data: no import circle, and every name users import still there."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from vaejax.data import base, dsprites  # the README's import of the dSprites module

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

DATA = Path(__file__).resolve().parents[1] / "vaejax" / "data"

# The public names of each module as they were before the package split (commit a13f8c8),
# by the path users import them from today.
PUBLIC = {
    "vaejax.data": (
        "BINARIZE_MODES", "DATASETS", "ArrayDataset", "Batch", "BatchIterator", "Dataset",
        "GroundTruthData", "LookupDSprites", "ProceduralDSprites", "RenderedDSprites",
        "SplitArrays", "UnknownDatasetError", "dsprites", "load", "register", "sample_batch",
        "shared_data_dir"),
    "vaejax.data.dsprites": (  # the old module, and the names of dsprites_data/ground_truth
        "FACTOR_NAMES", "FACTOR_SIZES", "NUM_IMAGES", "IMAGE_SIZE", "SHAPE_NAMES",
        "GT_FACTOR_NAMES", "GT_FACTOR_SIZES", "POSITION_OFFSET", "POSITION_SPAN",
        "SQUARE_HALF_SIDE", "ELLIPSE_SEMI_AXES", "HEART_LOBE_RADIUS", "HEART_LOBE_CENTRE",
        "HEART_TIP", "to_full_classes", "index_of", "classes_of", "factor_values",
        "render_values", "render", "dsprites_render", "sample_classes", "render_numpy",
        "DEEPMIND_FILENAME", "DEEPMIND_URL", "DSpritesArrays", "validate_arrays",
        "load_deepmind_file", "sample_batch", "ProceduralDSprites", "dsprites_procedural",
        "load_tfds", "dsprites_real", "DSpritesGroundTruth", "RenderedDSprites",
        "LookupDSprites"),
    "vaejax.data.mnist": (  # the old module, and the names of mnist_files
        "NUM_CLASSES", "NPZ_FILENAME", "shared_data_dir", "mnist_npz", "mnist",
        "binarized_mnist", "IDX_FILES", "AMAT_FILES", "AMAT_SIDE", "read_idx", "read_amat",
        "mnist_idx", "binarized_mnist_amat"),
    "vaejax.data.base": (
        "Batch", "JaxSampler", "MAX_SEED", "stream_id", "host_rng", "Dataset", "BatchIterator",
        "GroundTruthData"),
    "vaejax.data.arrays": ("BINARIZE_MODES", "check_binarize", "take", "SplitArrays",
                           "ArrayDataset"),
    "vaejax.data.registry": ("DATASETS", "LOAD_KEYS", "UnknownDatasetError", "register",
                             "load"),
    "vaejax.data.files": ("head", "describe", "check_npz", "find", "read_bytes"),
    "vaejax.data.tfds_io": ("import_tfds", "prepared_builder", "split_names", "read_split"),
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_still_importable(module):
  loaded = importlib.import_module(module)
  missing = [name for name in PUBLIC[module] if not hasattr(loaded, name)]
  assert not missing, f"{module} lost {missing}"


def test_readme_imports():
  assert dsprites.FACTOR_SIZES == (1, 3, 6, 40, 32, 32)
  assert int(dsprites.index_of([0, 2, 5, 39, 31, 31])) == 737_279
  assert callable(dsprites.render) and callable(dsprites.load_deepmind_file)


def _module_name(path: Path) -> str:
  parts = path.relative_to(DATA.parents[1]).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
  """The vaejax.data modules ``path`` imports anywhere (TYPE_CHECKING blocks included)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:  # `from pkg import sub` names the submodule, else pkg
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in modules else node.module)
  return found & modules


def test_import_graph_of_vaejax_data_has_no_cycle():
  paths = {_module_name(p): p for p in DATA.rglob("*.py")}
  graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
  assert "vaejax.data.dsprites.grid" in graph and "vaejax.data.mnist.idx" in graph
  state: dict[str, str] = {}

  def visit(node: str, trail: list[str]) -> None:
    if state.get(node) == "done":
      return
    assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
    state[node] = "open"
    for target in sorted(graph[node]):
      visit(target, trail + [node])
    state[node] = "done"

  for name in sorted(graph):
    visit(name, [])


def test_protocol_and_ground_truth_interface_live_together():
  source = (DATA / "base.py").read_text()
  assert "class Dataset(" in source and "class GroundTruthData(" in source
  assert base.Dataset.ground_truth is None  # annotated with GroundTruthData, no import back

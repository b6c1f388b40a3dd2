"""vaejax datasets: one registry, one batch format.

>>> from vaejax import data
>>> ds = data.load({"name": "mnist_npz", "binarize": "dynamic"})
>>> it = ds.iterator("train", batch_size=64, seed=0)
>>> batch = next(it)      # {"image": (64, 28, 28, 1) float32, "label": (64,) int32}
>>> it.position           # save in the checkpoint; resume with start_step=position

Names: ``dsprites_procedural``, ``dsprites`` (DeepMind npz/HDF5 via ``path``, else
TFDS via ``data_dir``), ``mnist`` and ``binarized_mnist`` (TFDS), ``mnist_npz`` (one
npz), ``mnist_idx`` (LeCun's IDX files) and ``binarized_mnist_amat`` (Larochelle &
Murray's .amat files; the binarisation of the published likelihoods).
"""

from vaejax.data import dsprites
from vaejax.data import dsprites_data as _dsprites_data  # registers the dSprites datasets
from vaejax.data import mnist as _mnist  # registers the MNIST datasets
from vaejax.data import mnist_files as _mnist_files  # registers the IDX and .amat readers
from vaejax.data import text  # registers text_lines, ptb, tiny_shakespeare
from vaejax.data.arrays import BINARIZE_MODES, ArrayDataset, SplitArrays
from vaejax.data.base import Batch, BatchIterator, Dataset
from vaejax.data.dsprites_data import ProceduralDSprites, sample_batch
from vaejax.data.ground_truth import GroundTruthData, LookupDSprites, RenderedDSprites
from vaejax.data.mnist import shared_data_dir
from vaejax.data.registry import DATASETS, UnknownDatasetError, load, register

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "ArrayDataset",
    "Batch",
    "BatchIterator",
    "Dataset",
    "GroundTruthData",
    "LookupDSprites",
    "ProceduralDSprites",
    "RenderedDSprites",
    "SplitArrays",
    "UnknownDatasetError",
    "dsprites",
    "load",
    "register",
    "sample_batch",
    "shared_data_dir",
]

del _dsprites_data, _mnist, _mnist_files

"""vaejax datasets: one registry, one batch format.

>>> from vaejax import data
>>> ds = data.load({"name": "dsprites_procedural"})
>>> it = ds.iterator("train", batch_size=2, seed=0)
>>> batch = next(it)      # {"image": (2, 64, 64, 1) float32, "factors": (2, 5) int32}
>>> it.position           # save in the checkpoint; resume with start_step=position
1

Names: ``dsprites_procedural``, ``dsprites`` (DeepMind npz/HDF5 via ``path``, else
TFDS via ``data_dir``; a fixed 1% held out as "test"), ``mnist`` and
``binarized_mnist`` (TFDS), ``mnist_npz`` (one npz), ``mnist_idx`` (LeCun's IDX
files) and ``binarized_mnist_amat`` (Larochelle & Murray's .amat files; the
binarisation of the published likelihoods).

Layout: :mod:`.base` (the dataset protocol, its iterator and the ground-truth
interface), :mod:`.arrays` (finite datasets held as arrays), :mod:`.registry`,
:mod:`.files` (safe raw-file reading), :mod:`.tfds_io`; one package per family
(:mod:`.dsprites`, :mod:`.mnist`), each registering its datasets when imported.
A new family is a package that decorates its constructors with
:func:`register` and is imported below.
"""

from vaejax.data import dsprites
from vaejax.data import mnist as _mnist  # registers the MNIST datasets
from vaejax.data import text  # registers text_lines, ptb, tiny_shakespeare
from vaejax.data.arrays import BINARIZE_MODES, ArrayDataset, SplitArrays
from vaejax.data.base import Batch, BatchIterator, Dataset, GroundTruthData
from vaejax.data.dsprites import LookupDSprites, ProceduralDSprites, RenderedDSprites, sample_batch
from vaejax.data.files import shared_data_dir
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
    "text",
]

del _mnist

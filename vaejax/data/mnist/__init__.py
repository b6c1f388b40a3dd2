"""MNIST in every form the published numbers use, one module per source.

* :mod:`.npz`: ``mnist_npz``, one npz of images and labels (offline: the project's
  ``../shared/data/mnist10k.npz``);
* :mod:`.tfds`: ``mnist`` and ``binarized_mnist``, prepared TFDS datasets;
* :mod:`.idx`: ``mnist_idx``, LeCun's four IDX files;
* :mod:`.amat`: ``binarized_mnist_amat``, Larochelle & Murray's fixed binarisation
  (the one the published log-likelihoods use).

Every reader checks its file completely and reads nothing it cannot trust: no
pickle, sizes checked before allocating.
"""

from vaejax.data.files import shared_data_dir
from vaejax.data.mnist.amat import AMAT_FILES, AMAT_SIDE, binarized_mnist_amat, read_amat
from vaejax.data.mnist.idx import IDX_FILES, mnist_idx, read_idx
from vaejax.data.mnist.npz import NPZ_FILENAME, NUM_CLASSES, mnist_npz
from vaejax.data.mnist.tfds import binarized_mnist, mnist

__all__ = [
    "AMAT_FILES", "AMAT_SIDE", "IDX_FILES", "NPZ_FILENAME", "NUM_CLASSES",
    "binarized_mnist", "binarized_mnist_amat", "mnist", "mnist_idx", "mnist_npz",
    "read_amat", "read_idx", "shared_data_dir",
]

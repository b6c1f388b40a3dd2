"""dSprites (Matthey et al. 2017): the factor grid, a JAX renderer, the file readers, the
ground truth and the registered datasets.

One module per idea:

* :mod:`.grid`: the factor grid and DeepMind's index arithmetic (``FACTOR_SIZES``,
  ``index_of``, ``classes_of``, ``factor_values``);
* :mod:`.renderer`: the pure JAX renderer (``render``, ``render_values``,
  ``render_numpy``, ``sample_classes``);
* :mod:`.files`: DeepMind's npz and HDF5 files (``load_deepmind_file``), read
  without unpickling anything;
* :mod:`.ground_truth`: the disentanglement metrics' view (``RenderedDSprites``,
  ``LookupDSprites``);
* :mod:`.datasets`: ``dsprites_procedural`` and ``dsprites`` in the registry, and
  the real images' fixed held-out split.

Every name is re-exported here, so ``from vaejax.data import dsprites`` then
``dsprites.render(...)``, ``dsprites.FACTOR_SIZES``, ``dsprites.index_of(...)`` or
``dsprites.load_deepmind_file(path)`` work as they always did.

>>> from vaejax.data import dsprites
>>> dsprites.FACTOR_SIZES, dsprites.NUM_IMAGES
((1, 3, 6, 40, 32, 32), 737280)
"""

from vaejax.data.dsprites.datasets import (
    HELD_OUT_SEED,
    TEST_FRACTION,
    ProceduralDSprites,
    dsprites_procedural,
    dsprites_real,
    held_out_rows,
    load_tfds,
    sample_batch,
)
from vaejax.data.dsprites.files import (
    DEEPMIND_FILENAME,
    DEEPMIND_URL,
    HOW_TO_GET,
    DSpritesArrays,
    load_deepmind_file,
    validate_arrays,
)
from vaejax.data.dsprites.grid import (
    BASES,
    FACTOR_NAMES,
    FACTOR_SIZES,
    GT_FACTOR_NAMES,
    GT_FACTOR_SIZES,
    IMAGE_SIZE,
    NUM_IMAGES,
    SHAPE_NAMES,
    as_classes,
    classes_of,
    factor_values,
    index_of,
    to_full_classes,
)
from vaejax.data.dsprites.ground_truth import DSpritesGroundTruth, LookupDSprites, RenderedDSprites
from vaejax.data.dsprites.renderer import (
    ELLIPSE_SEMI_AXES,
    HEART_LOBE_CENTRE,
    HEART_LOBE_RADIUS,
    HEART_TIP,
    POSITION_OFFSET,
    POSITION_SPAN,
    SQUARE_HALF_SIDE,
    dsprites_render,
    render,
    render_numpy,
    render_values,
    sample_classes,
)

__all__ = [
    "BASES",
    "DEEPMIND_FILENAME",
    "DEEPMIND_URL",
    "ELLIPSE_SEMI_AXES",
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "GT_FACTOR_NAMES",
    "GT_FACTOR_SIZES",
    "HEART_LOBE_CENTRE",
    "HEART_LOBE_RADIUS",
    "HEART_TIP",
    "HELD_OUT_SEED",
    "HOW_TO_GET",
    "IMAGE_SIZE",
    "NUM_IMAGES",
    "POSITION_OFFSET",
    "POSITION_SPAN",
    "SHAPE_NAMES",
    "SQUARE_HALF_SIDE",
    "TEST_FRACTION",
    "DSpritesArrays",
    "DSpritesGroundTruth",
    "LookupDSprites",
    "ProceduralDSprites",
    "RenderedDSprites",
    "as_classes",
    "classes_of",
    "dsprites_procedural",
    "dsprites_real",
    "dsprites_render",
    "factor_values",
    "held_out_rows",
    "index_of",
    "load_deepmind_file",
    "load_tfds",
    "render",
    "render_numpy",
    "render_values",
    "sample_batch",
    "sample_classes",
    "to_full_classes",
    "validate_arrays",
]

"""Deprecated: the figures moved to the :mod:`vaejax.figures` package.

* image grids, plots and ``save_figure``: :mod:`vaejax.figures.grids`;
* the model layer (``figure_arrays``, ``write_figures``, latent arithmetic, temperature
  samples): :mod:`vaejax.figures.model_figures`;
* encoding and decoding with a model's parameters: :mod:`vaejax.models.codec`.

This module only re-exports the old names so existing imports keep working.
"""

from __future__ import annotations

import warnings

from vaejax.figures.grids import (
    PAD_VALUE,
    Figure,
    check_images,
    plot_class_conditional_samples,
    plot_interpolation,
    plot_kl_per_dim,
    plot_kl_per_level,
    plot_latent_arithmetic,
    plot_reconstructions,
    plot_samples,
    plot_style_transfer,
    plot_temperature_samples,
    plot_traversals,
    save_figure,
    tile_images,
)
from vaejax.figures.model_figures import (
    DEFAULT_ALPHAS,
    TEMPERATURES,
    class_arithmetic_arrays,
    figure_arrays,
    style_arithmetic_arrays,
    temperature_samples,
    write_class_arithmetic_figure,
    write_figures,
    write_style_arithmetic_figure,
)

_PAD_VALUE = PAD_VALUE  # the old private names, read by older code
_check_images = check_images

__all__ = [
    "DEFAULT_ALPHAS", "TEMPERATURES", "Figure", "class_arithmetic_arrays", "figure_arrays",
    "plot_class_conditional_samples", "plot_interpolation", "plot_kl_per_dim",
    "plot_kl_per_level", "plot_latent_arithmetic", "plot_reconstructions", "plot_samples",
    "plot_style_transfer", "plot_temperature_samples", "plot_traversals", "save_figure",
    "style_arithmetic_arrays", "temperature_samples", "tile_images",
    "write_class_arithmetic_figure", "write_figures", "write_style_arithmetic_figure",
]

warnings.warn("vaejax.plotting is deprecated: import vaejax.figures.grids or "
              "vaejax.figures.model_figures.", DeprecationWarning, stacklevel=2)

"""Figures of trained VAEs and sweeps, used by the evaluators and the sweep report.

* :mod:`vaejax.figures.grids`: pure ``plot_*`` functions from arrays to matplotlib figures
  (image grids, KL bars, curves) and :func:`~vaejax.figures.grids.save_figure` (atomic PNG);
* :mod:`vaejax.figures.model_figures`: the arrays from a model's parameters (through
  :mod:`vaejax.models.codec`) and ``write_figures`` / the latent-arithmetic figures;
* :mod:`vaejax.figures.animation`: animated latent traversals (GIFs).

Every file written here goes through :func:`vaejax.utils.files.atomic_open`. The old
modules ``vaejax.plotting`` and ``vaejax.animation`` re-export these names (deprecated).
"""

from vaejax.figures import animation, grids, model_figures
from vaejax.figures.grids import PAD_VALUE, save_figure

__all__ = ["PAD_VALUE", "animation", "grids", "model_figures", "save_figure"]

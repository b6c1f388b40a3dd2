"""Deprecated: animated traversals moved to :mod:`vaejax.figures.animation`.

This module only re-exports the old names so existing imports keep working.
"""

from __future__ import annotations

import warnings

from vaejax.figures.animation import (
    POSTERIOR_GIF,
    PRIOR_GIF,
    QUANTILE_CLIP,
    grid_frames,
    kl_order,
    posterior_sweep,
    prior_sweep,
    read_gif,
    save_gif,
    traversal_frames,
    triangle_cycle,
    write_traversal_gifs,
)
from vaejax.figures.grids import PAD_VALUE

_PAD_VALUE = PAD_VALUE  # the old private name, read by older code

__all__ = [
    "POSTERIOR_GIF", "PRIOR_GIF", "QUANTILE_CLIP", "grid_frames", "kl_order",
    "posterior_sweep", "prior_sweep", "read_gif", "save_gif", "traversal_frames",
    "triangle_cycle", "write_traversal_gifs",
]

warnings.warn("vaejax.animation is deprecated: import vaejax.figures.animation.",
              DeprecationWarning, stacklevel=2)

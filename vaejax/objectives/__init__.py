"""The ELBO and its variants (temporary package shim; split follows)."""

from vaejax.objectives.elbo import *  # noqa: F403
from vaejax.objectives.elbo import _check_shapes, _kl_per_dim, _log_likelihood  # noqa: F401

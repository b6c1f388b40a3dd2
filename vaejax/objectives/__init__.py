"""The ELBO and its variants as pure functions of a model's distribution parameters.

One package, one idea per module:

* :mod:`~vaejax.objectives.settings`: :class:`LossSettings` (β, free bits, warm-up,
  capacity, β-TC: numbers or arrays, so a sweep vmaps over them), their validation and
  stacking;
* :mod:`~vaejax.objectives.schedules`: the KL weight w(t) and the capacity C(t) over steps;
* :mod:`~vaejax.objectives.elbo`: the ELBO's per-example terms, the free-bits KL, the
  total correlation and the training loss :func:`elbo_loss`;
* :mod:`~vaejax.objectives.importance`: importance-weighted bounds (IWAE, DReG
  gradients) and the one log importance weight of the library;
* :mod:`~vaejax.objectives.importance_loss`: training with K importance samples (IWAE,
  MIWAE; K = 1 is the ELBO loss) and the check of its settings.

Every public name is importable from here. A sweep over β is one ``vmap``:

>>> import jax
>>> import jax.numpy as jnp
>>> from vaejax.types import VAEOutput
>>> x = jnp.array([[0.0, 1.0, 1.0]])
>>> outputs = VAEOutput(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)), jnp.zeros((1, 2)),
...                     {"logits": jnp.zeros((1, 3))})
>>> grid = stack_settings([LossSettings(beta=1.0), LossSettings(beta=4.0)])
>>> loss_of = lambda settings: elbo_loss(x, outputs, settings)[0]
>>> sweep = jax.vmap(loss_of, in_axes=(settings_in_axes(grid),))
>>> losses = jax.jit(lambda: sweep(grid))()  # one compiled program for both models
>>> [round(float(v), 4) for v in losses]  # 3·log 2 + β · ½
[2.5794, 4.0794]
"""

from vaejax.objectives.elbo import (
    bits_per_dim,
    elbo_loss,
    elbo_terms,
    free_bits_kl,
    summarize,
    total_correlation,
)
from vaejax.objectives.importance import (
    ESTIMATORS,
    importance_weighted_terms,
    log_importance_weight,
    log_mean_exp,
    log_weight_parts,
)
from vaejax.objectives.importance_loss import iwae_loss, validate_importance_settings
from vaejax.objectives.schedules import capacity, kl_weight
from vaejax.objectives.settings import (
    DEFAULT_SETTINGS,
    LossSettings,
    settings_in_axes,
    stack_settings,
    validate_settings,
)

__all__ = [
    "DEFAULT_SETTINGS", "ESTIMATORS", "LossSettings", "bits_per_dim", "capacity",
    "elbo_loss", "elbo_terms", "free_bits_kl", "importance_weighted_terms", "iwae_loss",
    "kl_weight", "log_importance_weight", "log_mean_exp", "log_weight_parts",
    "settings_in_axes", "stack_settings", "summarize", "total_correlation",
    "validate_importance_settings", "validate_settings",
]

r"""The VAE and the conditional VAE as one Flax Linen module.

.. math::
   (μ, \log σ^2) = \mathrm{enc}(x[, y]),\qquad z = μ + σ ⊙ ε,\ ε \sim N(0, I),\qquad
   θ = \mathrm{dec}(z[, y]) \ \text{the parameters of } p(x|z[, y]).

The module returns distribution parameters (:class:`vaejax.types.VAEOutput`), never a
loss: β-VAE, free bits, warm-up etc. are settings of :func:`vaejax.objectives.elbo_loss`.
With ``num_classes > 0`` it is a conditional VAE (Sohn et al. 2015): the one-hot label y
is concatenated to the encoder's flattened input and to z.

Likelihoods (the decoder's raw output ``o``):

* ``"bernoulli"``: ``{"logits": o}``;
* ``"gaussian"``: ``{"mean": o, "log_var": log likelihood_variance}`` (fixed variance);
* ``"gaussian_learned"``: the decoder emits 2C channels, ``o = [mean ‖ log_var]``,
  with the variance floored at ``min_variance`` when given.

``posterior_min_variance`` > 0 floors the *encoder's* variances smoothly,
:math:`σ^2 = σ^2_{\text{enc}} + v_{\min}` (:func:`vaejax.distributions.soft_floor_log_var`),
in ``encode`` and hence in the forward pass; 0 (the default) leaves the model untouched.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions
from vaejax.models import networks
from vaejax.types import VAEOutput

Array = jax.Array

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned")


def decoder_channels(likelihood: str, image_channels: int) -> int:
  """Channels the decoder must emit for ``likelihood`` (2C when it learns variances)."""
  check_likelihood(likelihood)
  return 2 * image_channels if likelihood == "gaussian_learned" else image_channels


def likelihood_from_raw(
    out: Array, likelihood: str, likelihood_variance: float = 1.0,
    min_variance: float | None = None,
) -> dict[str, Array]:
  """Turns a decoder's raw float32 output into the parameters of p(x|z) (module docstring)."""
  if likelihood == "bernoulli":
    return {"logits": out}
  if likelihood == "gaussian":
    return distributions.gaussian_likelihood_params(out, math.log(likelihood_variance))
  mean, log_var = jnp.split(out, 2, axis=-1)
  return distributions.gaussian_likelihood_params(mean, log_var, min_variance)


def check_likelihood(likelihood: str) -> None:
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"Unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}.")


def check_posterior_floor(value: Any) -> None:
  """``posterior_min_variance`` must be a finite number ≥ 0 (0 = off)."""
  distributions.check_min_variance_floor(value, "posterior_min_variance")


def floor_posterior(log_var: Array, posterior_min_variance: float) -> Array:
  """The posterior variance floor of every model: identity at 0, else the smooth floor."""
  if posterior_min_variance == 0:  # off: not even a no-op in the graph
    return log_var
  return distributions.soft_floor_log_var(log_var, float(posterior_min_variance))


def check_variance(value: Any, name: str, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value > 0
  ):
    raise ValueError(
        f"{name} must be a finite number > 0{' or None' if allow_none else ''}, got {value!r}."
    )


def check_distribution_settings(settings: Any) -> None:
  """The settings every model shares (its likelihood, variances and posterior floor), of a
  model or of a model config (a mapping)."""
  get = settings.__getitem__ if isinstance(settings, Mapping) else functools.partial(
      getattr, settings)
  check_likelihood(get("likelihood"))
  check_variance(get("likelihood_variance"), "likelihood_variance")
  check_variance(get("min_variance"), "min_variance", allow_none=True)
  check_posterior_floor(get("posterior_min_variance"))


class VAE(nn.Module):
  """Encoder → reparameterised z → decoder, optionally conditioned on a class label.

  Attributes:
    encoder: a network ``(x, context) -> (mean, log_var)`` with a ``latent_dim``
      attribute (see :mod:`vaejax.models.networks`).
    decoder: a network ``(z, context) -> (B, H, W, C')`` raw outputs, with
      C' = :func:`decoder_channels` ``(likelihood, C)``.
    image_shape: (H, W, C) of the data.
    likelihood: one of :data:`LIKELIHOODS`.
    likelihood_variance: σ² of the fixed-variance "gaussian" likelihood.
    min_variance: optional floor on the learned variance of "gaussian_learned" (the
      fixed variance of "gaussian" is used as given).
    num_classes: > 0 makes it a conditional VAE on labels in [0, num_classes); 0 = an
      unconditional VAE, which ignores any labels it is given.
    posterior_min_variance: smooth floor v_min ≥ 0 on the posterior variances (module
      docstring); 0 = off.

  The forward pass draws ε from the ``"sample"`` RNG stream:
  ``model.apply({"params": p}, x, labels, rngs={"sample": key})``.
  """

  encoder: nn.Module
  decoder: nn.Module
  image_shape: tuple[int, int, int]
  likelihood: str = "bernoulli"
  likelihood_variance: float = 1.0
  min_variance: float | None = None
  num_classes: int = 0
  posterior_min_variance: float = 0.0

  def __post_init__(self):
    networks.check_output_shape(self.image_shape, "image_shape")
    check_distribution_settings(self)
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or (
        self.num_classes < 0
    ):
      raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}.")
    if not hasattr(self.encoder, "latent_dim"):
      raise ValueError(f"The encoder {type(self.encoder).__name__} has no latent_dim attribute.")
    super().__post_init__()

  @property
  def latent_dim(self) -> int:
    """Dimension d of z."""
    return self.encoder.latent_dim

  @property
  def conditional(self) -> bool:
    """Whether the model needs labels (``num_classes > 0``)."""
    return self.num_classes > 0

  def _context(self, labels: Any, batch: int) -> Array | None:
    """One-hot labels for a conditional VAE; None (labels ignored) otherwise."""
    if not self.conditional:
      return None
    if labels is None:
      raise ValueError(
          f"This conditional VAE needs labels: int class ids in [0, {self.num_classes}) "
          "of shape (batch,); got None."
      )
    labels = jnp.asarray(labels)
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(
          f"labels must be integers of shape ({batch},), got {labels.dtype} {labels.shape}."
      )
    if not isinstance(labels, jax.core.Tracer):  # values are only checkable outside jit
      values = np.asarray(labels)
      bad = (values < 0) | (values >= self.num_classes)
      if bad.any():
        raise ValueError(
            f"labels must lie in [0, {self.num_classes}); got {values[bad][:5].tolist()}."
        )
    return jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)

  def encode(self, x: Array, labels: Array | None = None) -> tuple[Array, Array]:
    """Parameters ``(mean, log_var)``, each (B, latent_dim) float32, of q(z | x[, y]).

    ``log_var`` is floored at ``log posterior_min_variance`` when that is > 0.
    """
    x = jnp.asarray(x)
    if x.ndim != 4 or x.shape[1:] != tuple(self.image_shape):
      raise ValueError(
          f"Images must have shape (batch, {', '.join(map(str, self.image_shape))}); "
          f"got {x.shape}."
      )
    mean, log_var = self.encoder(x, self._context(labels, x.shape[0]))
    return mean, floor_posterior(log_var, self.posterior_min_variance)

  def decode(self, z: Array, labels: Array | None = None) -> dict[str, Array]:
    """Likelihood parameters of p(x | z[, y]), float32, each (B, H, W, C)."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f"z must have shape (batch, {self.latent_dim}); got {z.shape}.")
    out = self.decoder(z, self._context(labels, z.shape[0])).astype(jnp.float32)
    channels = decoder_channels(self.likelihood, self.image_shape[-1])
    expected = (z.shape[0],) + tuple(self.image_shape[:2]) + (channels,)
    if out.shape != expected:
      raise ValueError(
          f"The decoder returned shape {out.shape}; a {self.likelihood!r} likelihood on "
          f"images {tuple(self.image_shape)} needs {expected}."
      )
    return likelihood_from_raw(out, self.likelihood, self.likelihood_variance, self.min_variance)

  def __call__(self, x: Array, labels: Array | None = None) -> VAEOutput:
    """Encodes, draws z = μ + σ·ε with the "sample" RNG, decodes."""
    mean, log_var = self.encode(x, labels)
    z = distributions.sample_diag_gaussian(self.make_rng("sample"), mean, log_var)
    return VAEOutput(mean=mean, log_var=log_var, z=z, likelihood=self.decode(z, labels))

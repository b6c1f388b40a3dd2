r"""Encode and decode with a model's parameters: the one place that calls ``encode``/``decode``.

Pure functions of ``(model, params, ...)`` for every model of :mod:`vaejax.models` (the VAE,
the conditional VAE, the hierarchical ones). Each is compiled once per model and input
shape (the model is a static, hashable Linen module), batched over the leading axis, and
usable inside ``jax.jit`` / ``jax.vmap`` (an evaluator maps them over a stack of models):

* :func:`encode`: the parameters ``(mean, log_var)`` of :math:`q(z \mid x[, y])`;
* :func:`decode`: the likelihood parameters of :math:`p(x \mid z[, y])` (``{"logits"}``
  for Bernoulli, ``{"mean", "log_var"}`` for Gaussians);
* :func:`decode_mean`: the likelihood's mean in data space, :math:`\mathbb{E}[x \mid z]`
  (the sigmoid of the logits; the Gaussian mean): what figures show;
* :func:`prior_samples`: decoder means of :math:`z \sim p(z)` (ancestral, level by level,
  for the hierarchical models);
* :func:`traverse`: decoder means along one latent axis, from each input's posterior mean;
* :func:`forward`: one reparameterised pass :math:`z \sim q(z \mid x)`, then
  :math:`p(x \mid z)`: the :class:`vaejax.types.VAEOutput` the objectives score;
* :func:`is_conditional`: whether the model needs labels;
* :func:`data_key`: the batch entry a model reads (``"image"``, or ``"tokens"`` for the
  token-sequence models of :mod:`vaejax.models.sequence`).

Hierarchical models (``hvae``, ``deep_hvae``) encode to the posterior of every level with
the upper levels at their posterior means, and decode ``z`` of all levels concatenated
(level 1, next to the data, first), as their ``encode``/``decode`` methods define.

>>> import jax
>>> from vaejax import models
>>> from vaejax.models import codec
>>> model = models.create_model({"name": "mlp_vae", "latent_dim": 2, "hidden_sizes": (8,)},
...                             (4, 4, 1))
>>> x = jax.numpy.full((3, 4, 4, 1), 0.5)
>>> params = model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, x)["params"]
>>> mean, log_var = codec.encode(model, params, x)
>>> mean.shape, log_var.shape
((3, 2), (3, 2))
>>> {k: v.shape for k, v in codec.decode(model, params, mean).items()}  # Bernoulli logits
{'logits': (3, 4, 4, 1)}
>>> images = codec.decode_mean(model, params, mean)  # their sigmoid
>>> images.shape, bool(((images >= 0) & (images <= 1)).all())
((3, 4, 4, 1), True)
>>> codec.prior_samples(model, params, jax.random.key(2), 6).shape
(6, 4, 4, 1)
>>> codec.traverse(model, params, x, 1, jax.numpy.linspace(-2, 2, 5)).shape  # (B, V, ...)
(3, 5, 4, 4, 1)
>>> codec.forward(model, params, x, jax.random.key(3)).z.shape
(3, 2)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from vaejax import distributions
from vaejax.types import IMAGES, TOKENS, VAEOutput

Array = jax.Array

__all__ = ["data_key", "decode", "decode_mean", "encode", "forward", "is_conditional",
           "prior_samples", "traverse"]


def data_key(model: Any) -> str:
  """The batch entry ``model`` reads: ``"tokens"`` for a model that declares
  ``data_kind = TOKENS`` (the sequence models), else ``"image"``.

  >>> from vaejax import models
  >>> data_key(models.create_model({"name": "mlp_vae"}, (4, 4, 1)))
  'image'
  """
  return "tokens" if getattr(model, "data_kind", IMAGES) == TOKENS else "image"


def is_conditional(model: Any) -> bool:
  """Whether ``model`` needs labels (a conditional VAE with ``num_classes > 0``).

  >>> from vaejax import models
  >>> config = {"name": "mlp_cvae", "latent_dim": 2, "hidden_sizes": (8,)}
  >>> is_conditional(models.create_model(config, (4, 4, 1), num_classes=3))
  True
  >>> is_conditional(models.create_model({**config, "name": "mlp_vae"}, (4, 4, 1)))
  False
  """
  return bool(getattr(model, "conditional", False))


@functools.partial(jax.jit, static_argnums=0)
def encode(model: Any, params: Any, x: Array, labels: Array | None = None
           ) -> tuple[Array, Array]:
  """``(mean, log_var)``, each ``(B, d)``, of q(z | x[, y]) for images ``x`` ``(B, H, W, C)``.

  ``labels`` ``(B,)`` int class ids for a conditional model (ignored otherwise).
  """
  return model.apply({"params": params}, x, labels, method="encode")


@functools.partial(jax.jit, static_argnums=0)
def decode(model: Any, params: Any, z: Array, labels: Array | None = None
           ) -> dict[str, Array]:
  """The likelihood parameters of p(x | z[, y]) for codes ``z`` ``(B, d)``, each
  ``(B, H, W, C)``: ``{"logits"}`` (Bernoulli) or ``{"mean", "log_var"}`` (Gaussian)."""
  return model.apply({"params": params}, z, labels, method="decode")


@functools.partial(jax.jit, static_argnums=0)
def decode_mean(model: Any, params: Any, z: Array, labels: Array | None = None) -> Array:
  r"""The likelihood's mean :math:`\mathbb{E}[x \mid z]`, ``(B, H, W, C)``, for codes ``z``.

  Bernoulli: :math:`\sigma(\text{logits})`; Gaussian: its mean
  (:func:`vaejax.distributions.likelihood_mean`).
  """
  return distributions.likelihood_mean(decode(model, params, z, labels))


@functools.partial(jax.jit, static_argnames=("model", "num", "temperature"))
def prior_samples(model: Any, params: Any, key: Array, num: int, labels: Array | None = None,
                  temperature: float = 1.0) -> Array:
  r"""Decoder means of ``num`` draws :math:`z \sim p(z)`, ``(num, H, W, C)``.

  A model with ``sample_prior`` (the hierarchical ones) samples ancestrally, every level's
  prior standard deviation scaled by ``temperature`` (0: the prior means); a flat model
  decodes :math:`z = T \varepsilon`, :math:`\varepsilon \sim N(0, I)`, with ``labels``
  ``(num,)`` for a conditional one. ``num`` and ``temperature`` are static (Python
  numbers): each value compiles once.
  """
  if hasattr(model, "sample_prior"):
    _, likelihood = model.apply({"params": params}, num, temperature, method="sample_prior",
                                rngs={"sample": key})
    return distributions.likelihood_mean(likelihood)
  z = jax.random.normal(key, (num, model.latent_dim))
  if temperature != 1.0:
    z = temperature * z
  return distributions.likelihood_mean(decode(model, params, z, labels))


@functools.partial(jax.jit, static_argnums=0)
def traverse(model: Any, params: Any, x: Array, dim: Array | int, values: Array,
             labels: Array | None = None) -> Array:
  r"""Decoder means along latent axis ``dim``, ``(B, V, H, W, C)``: row b holds input b's
  posterior mean :math:`\mu(x_b)` with coordinate ``dim`` set to each of ``values`` (V,),
  decoded (:func:`decode_mean`). ``dim`` may be traced (one program serves every axis);
  it must lie in ``[0, d)``, which the caller checks (an index outside is clamped).
  """
  mean, _ = encode(model, params, x, labels)
  b, d = mean.shape
  v = values.shape[0]
  codes = jnp.repeat(mean[:, None], v, axis=1).at[:, :, dim].set(values.astype(mean.dtype))
  flat_labels = None if labels is None else jnp.repeat(labels, v)
  images = decode_mean(model, params, codes.reshape(b * v, d), flat_labels)
  return images.reshape(b, v, *images.shape[1:])


@functools.partial(jax.jit, static_argnums=0)
def forward(model: Any, params: Any, x: Array, key: Array, labels: Array | None = None
            ) -> VAEOutput:
  r"""One reparameterised pass: :math:`z \sim q(z \mid x[, y])` drawn with ``key``, then
  the likelihood of ``x`` given z (and, for a hierarchical model, every level's prior):
  the :class:`vaejax.types.VAEOutput` that :mod:`vaejax.objectives` score, e.g.
  ``objectives.elbo_terms(x, forward(model, params, x, key))["elbo"]``, one ELBO estimate
  per example, as the ``elbo`` evaluator computes it.
  """
  return model.apply({"params": params}, x, labels, rngs={"sample": key})

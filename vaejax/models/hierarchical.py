r"""A top-down hierarchical VAE (ladder / VDVAE-style inference) with L stochastic levels.

Levels are numbered 1 (next to the data) to L (the top). A bottom-up pass computes
deterministic features :math:`h_1, …, h_L` of x. The generative model runs top-down:

.. math::
   p(z_L) = N(0, I),\quad p(z_l \mid z_{>l}) = N(μ^p_l(t_{l+1}), σ^{p\,2}_l(t_{l+1})),\quad
   p(x \mid z) = p(x \mid t_1),

where :math:`t_l = f_l(t_{l+1}, z_l)` is the top-down state. Inference shares it:
:math:`q(z_l \mid x, z_{>l}) = N(μ^q_l, σ^{q\,2}_l)` computed from :math:`[t_{l+1}, h_l]`
(the top-down state combined with the encoder's features at that level), so the
posterior and the prior of each level live on the same top-down path.

The module returns one :class:`~vaejax.types.VAEOutput` whose posterior and prior
parameters are the levels concatenated (level 1 first); the per-level prior of level L is
N(0, I). :func:`vaejax.objectives.elbo_terms` then gives the KL between the two diagonal
Gaussians of every dimension, and :attr:`HierarchicalVAE.latent_groups` (the level of each
dimension) lets :func:`~vaejax.objectives.free_bits_kl` apply free bits per level and
reports sum KL per level.

Stabilisers: the prior heads are zero-initialised (every prior starts as N(0, I), so the
KL starts at the plain VAE's), and the posterior of a level is parameterised relative to
its prior (μ^q = μ^p + Δμ, log σ^{q2} = log σ^{p2} + Δ), which keeps early KLs small.
All log-variances are soft-clamped to (−10, 10) by 10·tanh(·/10) (identity near 0), so
one bad step cannot overflow the variances that feed the levels below. Gradient clipping
and counted skipping of non-finite updates live in the train step.

``posterior_min_variance`` > 0 floors every level's posterior variance smoothly after the
soft clamp (:func:`vaejax.models.vae.floor_posterior`); the priors are not floored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions
from vaejax.models import latent_levels, networks, registry, vae
from vaejax.types import VAEOutput

Array = jax.Array


LOG_VAR_BOUND = 10.0


def soft_clamp(x: Array, bound: float = LOG_VAR_BOUND) -> Array:
  """bound·tanh(x / bound): smooth, identity-like near 0, within (−bound, bound)."""
  return bound * jnp.tanh(x / bound)


def check_temperature(temperature: Any) -> None:
  """A sampling temperature must be a finite number ≥ 0 (checked when it is concrete)."""
  if isinstance(temperature, jax.core.Tracer):
    return
  value = np.asarray(temperature)
  if value.dtype == bool or value.dtype.kind not in "iuf" or value.ndim != 0 or not (
      np.isfinite(value) and value >= 0
  ):
    raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")


def sample_tempered(key: Array, mean: Array, log_var: Array, temperature: Any) -> Array:
  r"""z = μ + T·σ·ε, ε ~ N(0, I): a draw from N(μ, T²σ²); T = 0 gives μ exactly."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.asarray(temperature, mean.dtype) * jnp.exp(0.5 * log_var) * eps


class _Heads(nn.Module):
  """(mean, log_var) heads; zero-initialised when ``zero_init`` (prior heads)."""

  size: int
  zero_init: bool = False

  @nn.compact
  def __call__(self, h: Array) -> tuple[Array, Array]:
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    h = h.astype(jnp.float32)
    mean = nn.Dense(self.size, kernel_init=init, name="mean")(h)
    log_var = nn.Dense(self.size, kernel_init=init, name="log_var")(h)
    return mean, log_var


class HierarchicalVAE(nn.Module):
  """Top-down hierarchical VAE with MLP blocks.

  Attributes:
    image_shape: (H, W, C) of the data.
    latent_sizes: dimension of z_1, …, z_L (level 1 next to the data); L ≥ 1.
    hidden_size: width of every deterministic layer.
    likelihood, likelihood_variance, min_variance, posterior_min_variance: as in
      :class:`vaejax.models.VAE`.
  """

  image_shape: tuple[int, int, int]
  latent_sizes: Sequence[int] = (32, 16)
  hidden_size: int = 512
  likelihood: str = "bernoulli"
  likelihood_variance: float = 1.0
  min_variance: float | None = None
  posterior_min_variance: float = 0.0

  def __post_init__(self):
    networks.check_output_shape(self.image_shape, "image_shape")
    networks.check_positive_ints(self.latent_sizes, "latent_sizes (L >= 1 levels)",
                                 allow_empty=False)
    networks.check_positive_int(self.hidden_size, "hidden_size")
    vae.check_distribution_settings(self)
    super().__post_init__()

  @property
  def num_levels(self) -> int:
    return len(self.latent_sizes)

  @property
  def latent_dim(self) -> int:
    """Total dimension of z, all levels concatenated."""
    return latent_levels.total_latent_dim(self.latent_sizes)

  @property
  def latent_groups(self) -> tuple[int, ...]:
    """The level (0-based, 0 = next to the data) of every latent dimension."""
    return latent_levels.latent_groups(self.latent_sizes)

  def setup(self):
    levels = range(self.num_levels)
    dense = lambda name: nn.Dense(self.hidden_size, name=name)
    self.bottom_up = [(dense(f"up_{l}_a"), dense(f"up_{l}_b")) for l in levels]
    self.posterior_heads = [_Heads(self.latent_sizes[l], name=f"posterior_{l}") for l in levels]
    # Level L's prior is N(0, I); the others are predicted from the top-down state.
    self.prior_heads = [
        _Heads(self.latent_sizes[l], zero_init=True, name=f"prior_{l}")
        for l in range(self.num_levels - 1)
    ]
    self.top_down = [dense(f"down_{l}") for l in levels]
    channels = vae.decoder_channels(self.likelihood, self.image_shape[-1])
    self.decoder = networks.MLPDecoder(
        tuple(self.image_shape[:2]) + (channels,), (self.hidden_size,), name="decoder"
    )

  def _features(self, x: Array) -> list[Array]:
    x = jnp.asarray(x)
    if x.ndim != 4 or x.shape[1:] != tuple(self.image_shape):
      raise ValueError(
          f"Images must have shape (batch, {', '.join(map(str, self.image_shape))}); "
          f"got {x.shape}."
      )
    h, features = x.reshape(x.shape[0], -1), []
    for first, second in self.bottom_up:
      h = nn.elu(second(nn.elu(first(h))))
      features.append(h)
    return features

  def _step_down(self, level: int, state: Array | None, z: Array) -> Array:
    inputs = z if state is None else jnp.concatenate([state, z], axis=-1)
    return nn.elu(self.top_down[level](inputs))

  def _prior(self, level: int, state: Array | None, batch: int) -> tuple[Array, Array]:
    if state is None:  # the top level
      zeros = jnp.zeros((batch, self.latent_sizes[level]), jnp.float32)
      return zeros, zeros
    mean, log_var = self.prior_heads[level](state)
    return mean, soft_clamp(log_var)

  def _infer(self, x: Array, sample: bool) -> tuple[Array, ...]:
    """Top-down inference; z_l is sampled (``sample``) or set to its posterior mean."""
    features = self._features(x)
    batch, state = x.shape[0], None
    means, log_vars, zs, prior_means, prior_log_vars = [], [], [], [], []
    for level in reversed(range(self.num_levels)):
      prior_mean, prior_log_var = self._prior(level, state, batch)
      context = features[level] if state is None else jnp.concatenate(
          [state, features[level]], axis=-1)
      delta_mean, delta_log_var = self.posterior_heads[level](context)
      mean = prior_mean + delta_mean
      log_var = vae.floor_posterior(soft_clamp(prior_log_var + delta_log_var),
                                    self.posterior_min_variance)
      z = (distributions.sample_diag_gaussian(self.make_rng("sample"), mean, log_var)
           if sample else mean)
      state = self._step_down(level, state, z)
      for store, value in zip((means, log_vars, zs, prior_means, prior_log_vars),
                              (mean, log_var, z, prior_mean, prior_log_var)):
        store.insert(0, value)
    cat = lambda parts: jnp.concatenate(parts, axis=-1)
    return cat(means), cat(log_vars), cat(zs), cat(prior_means), cat(prior_log_vars), state

  def _likelihood(self, state: Array) -> dict[str, Array]:
    raw = self.decoder(state).astype(jnp.float32)
    return vae.likelihood_from_raw(raw, self.likelihood, self.likelihood_variance,
                                   self.min_variance)

  def __call__(self, x: Array, labels: Any = None) -> VAEOutput:
    """Samples every level from its posterior (RNG stream "sample") and decodes."""
    del labels  # unconditional
    mean, log_var, z, prior_mean, prior_log_var, state = self._infer(x, sample=True)
    return VAEOutput(mean=mean, log_var=log_var, z=z, likelihood=self._likelihood(state),
                     prior_mean=prior_mean, prior_log_var=prior_log_var)

  def encode(self, x: Array, labels: Any = None) -> tuple[Array, Array]:
    """Posterior (mean, log_var) of all levels, with each upper z at its posterior mean.

    A deterministic representation (for metrics and active units); the exact posterior
    of a lower level depends on the sampled upper levels, which ``__call__`` uses.
    """
    del labels
    mean, log_var, *_ = self._infer(x, sample=False)
    return mean, log_var

  def decode(self, z: Array, labels: Any = None) -> dict[str, Array]:
    """Likelihood parameters of p(x | z) for z of all levels concatenated (level 1 first)."""
    del labels
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f"z must have shape (batch, {self.latent_dim}); got {z.shape}.")
    parts = jnp.split(z, np.cumsum(self.latent_sizes)[:-1].tolist(), axis=-1)
    state = None
    for level in reversed(range(self.num_levels)):
      state = self._step_down(level, state, parts[level])
    return self._likelihood(state)

  def sample_prior(self, num: int, temperature: float = 1.0) -> tuple[Array, dict[str, Array]]:
    """Ancestral sample z ~ p(z_L) ∏ p(z_l | z_>l) (RNG "sample"); returns (z, p(x|z) params).

    ``temperature`` T ≥ 0 scales every level's prior standard deviation (z_l ~
    N(μ_l, T²σ_l²)): 1 samples the model, 0 follows the prior means (deterministic).
    """
    check_temperature(temperature)
    state, parts = None, []
    for level in reversed(range(self.num_levels)):
      mean, log_var = self._prior(level, state, num)
      z = sample_tempered(self.make_rng("sample"), mean, log_var, temperature)
      state = self._step_down(level, state, z)
      parts.insert(0, z)
    return jnp.concatenate(parts, axis=-1), self._likelihood(state)


@registry.register("hvae", latent_sizes=(32, 16), hidden_size=512)
def _build_hvae(config, image_shape, num_classes):
  """The hierarchical VAE; ``latent_sizes`` (level 1 first) replaces ``latent_dim``."""
  del num_classes  # unconditional
  sizes = registry.int_tuple(config["latent_sizes"], "latent_sizes")
  return HierarchicalVAE(
      image_shape=image_shape, latent_sizes=sizes, hidden_size=int(config["hidden_size"]),
      likelihood=config["likelihood"], likelihood_variance=float(config["likelihood_variance"]),
      min_variance=None if config["min_variance"] is None else float(config["min_variance"]),
      posterior_min_variance=float(config["posterior_min_variance"]),
  )

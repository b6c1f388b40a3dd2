r"""A deep convolutional top-down hierarchical VAE (the VDVAE / NVAE pattern).

**Stages and levels.** The model works at a few square resolutions
:math:`r_0 > r_1 > … > r_{S-1}` (``resolutions``, data side first; each divides the one
before, :math:`r_0` divides the image side): for 28×28 MNIST the default is 14×14,
7×7 and 1×1. Stage *s* holds ``levels_per_stage[s]`` stochastic levels, each a latent
map :math:`z_l` of shape :math:`r_s × r_s × c_s` (``latent_channels[s]``). Levels are
numbered 0 (next to the data) to L−1 (the top, at the coarsest resolution).

**Bottom-up encoder.** Space-to-depth by :math:`f = H / r_0` and a conv to ``state_channels``
channels; then per stage (average-pooling between stages) ``encoder_blocks`` residual
blocks, whose output :math:`a_s` is the encoder's feature map at resolution :math:`r_s`.

**Top-down decoder** with one shared state :math:`h` (``state_channels`` channels). It starts from
a learned constant at :math:`r_{S-1}` (zero at initialisation) and visits the levels
from the top down, upsampling :math:`h` (nearest neighbour) when it enters a finer stage.
At level *l* of stage *s*:

.. math::
   (μ^p_l, \ell^p_l, u_l) &= \mathrm{prior}_l(h), &
   p(z_l \mid z_{>l}) &= N(μ^p_l, e^{\mathrm{sc}(\ell^p_l)}),\\
   (Δμ_l, Δ\ell_l) &= \mathrm{post}_l([h ‖ a_s]), &
   q(z_l \mid x, z_{>l}) &= N(μ^p_l + Δμ_l,\ e^{\mathrm{sc}(\mathrm{sc}(\ell^p_l) + Δ\ell_l)}),\\
   h &← \mathrm{res}_l(h + u_l + W_l z_l),

with sc the soft clamp 10·tanh(·/10) and :math:`W_l` a 1×1 conv. prior, post and res are
bottleneck blocks (GELU → 1×1 conv to ``bottleneck_channels`` → GELU → 3×3 → GELU → 3×3 →
GELU → 1×1 conv out; 1×1 convs throughout at resolutions ≤ 2, where a 3×3 kernel sees
only padding around its centre). After level 0 the state becomes the likelihood's
parameters: GELU → conv to :math:`f^2 C'` channels → depth-to-space to H×W×C'.

The forward pass returns a :class:`~vaejax.types.VAEOutput` whose posterior and prior
parameters and z are every level's maps flattened and concatenated, level 0 first, so
:func:`vaejax.objectives.elbo_terms` gives the KL of each dimension against its top-down
prior, and :attr:`DeepHierarchicalVAE.latent_groups` (the level of every dimension)
gives free bits and KL per level, exactly as for :mod:`vaejax.models.hierarchical`.
Unlike that model the top level's prior is learned too (a function of the learned
constant state); it starts at N(0, I).

**Stabilisers, and why.**

* *Zero-initialised output layers of the prior and posterior branches*: every prior starts
  at N(0, I), every posterior equals its prior (the posterior is parameterised relative
  to the prior, NVAE's residual Normal), so the KL is exactly 0 at initialisation and
  the first updates cannot be dominated by huge KL gradients from random heads; the
  prior branch's extra state update :math:`u_l` starts at 0 too.
* *Residual scaling*: the last conv of every residual branch, and the projection
  :math:`W_l` of z into the state, start at the usual fan-in initialisation times
  :math:`1/\sqrt{N}` (N residual blocks on that path: L in the decoder, S ·
  ``encoder_blocks`` in the encoder), so the variance of the state stays O(1) at any depth
  instead of growing with the number of blocks (VDVAE's choice). :math:`W_l` is not
  zero-initialised: z could not reach the decoder, nor the posterior get a gradient, at
  the first step.
* *Soft-clamped log-variances* (:func:`vaejax.models.hierarchical.soft_clamp`, bounded
  by ±10): one bad step cannot overflow a variance that then feeds every level below,
  while the clamp is the identity near 0 and never kills a gradient outright.
* ``posterior_min_variance`` > 0 floors the posterior variances smoothly
  (:func:`vaejax.models.vae.floor_posterior`).
* *In the train step, not here*: gradient-norm clipping and **skipping updates whose
  gradient norm exceeds a threshold** (VDVAE's ``skip_threshold``, counted and logged).
  Deep hierarchies occasionally produce gradient spikes of several orders of magnitude
  (a level's KL blowing up); a skipped step costs nothing, an applied one can wreck the
  run. The loss here is summed over pixels, so gradient norms are in nats per image,
  not VDVAE's nats per dimension: set the threshold from a measured run, a few times the
  largest norm seen in steady training (for the default MNIST configuration, batch 64,
  norms had median ≈ 170 and maximum ≈ 800 after warm-up: clip at ≈ 400, skip at ≈ 2000).

Sampling: :meth:`DeepHierarchicalVAE.sample_prior` draws ancestral samples at a
temperature T (each level's prior standard deviation times T; T = 0 follows the prior
means and is deterministic), for figures of samples at several temperatures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaejax.models import fast_conv, hierarchical, latent_levels, networks, registry, vae
from vaejax.types import VAEOutput

Array = jax.Array
Dtype = Any


def scaled_fan_in_init(scale: float) -> Callable[..., Array]:
  """LeCun-normal initialisation with every weight multiplied by ``scale``."""
  return nn.initializers.variance_scaling(scale * scale, "fan_in", "truncated_normal")


def average_pool(h: Array, factor: int) -> Array:
  """(B, r·k, r·k, C) → (B, r, r, C): the mean of each k×k block."""
  if factor == 1:
    return h
  b, height, width, c = h.shape
  blocks = h.reshape(b, height // factor, factor, width // factor, factor, c)
  return blocks.mean(axis=(2, 4))


def nearest_upsample(h: Array, factor: int) -> Array:
  """(B, r, r, C) → (B, r·k, r·k, C): each position repeated over a k×k block."""
  if factor == 1:
    return h
  b, height, width, c = h.shape
  h = jnp.broadcast_to(h[:, :, None, :, None, :], (b, height, factor, width, factor, c))
  return h.reshape(b, height * factor, width * factor, c)


class Bottleneck(nn.Module):
  """GELU → 1×1 → GELU → k×k → GELU → k×k → GELU → 1×1 conv to ``features``.

  With ``residual`` the input is added back (then ``features`` must equal its channels).
  The last conv uses ``last_init`` (zeros for the prior / posterior heads, a scaled
  fan-in init for residual branches) and computes in ``last_dtype``.
  """

  middle: int
  features: int
  kernel_size: int = 3
  residual: bool = False
  last_init: Callable[..., Array] = nn.initializers.lecun_normal()
  conv_impl: str = "fast"
  dtype: Dtype = jnp.float32
  last_dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = x
    for i, k in enumerate((1, self.kernel_size, self.kernel_size)):
      h = fast_conv.Conv2D(self.middle, k, conv_impl=self.conv_impl, dtype=self.dtype,
                           name=f"conv_{i}")(nn.gelu(h))
    last_dtype = self.dtype if self.last_dtype is None else self.last_dtype
    out = fast_conv.Conv2D(self.features, 1, conv_impl=self.conv_impl, dtype=last_dtype,
                           kernel_init=self.last_init, name="conv_out")(
                               nn.gelu(h).astype(last_dtype))
    return x + out.astype(x.dtype) if self.residual else out


def _kernel_for(resolution: int) -> int:
  return 3 if resolution > 2 else 1


class DeepHierarchicalVAE(nn.Module):
  """Deep top-down hierarchical conv VAE (module docstring).

  Attributes:
    image_shape: (H, W, C) of the data, square (H = W).
    resolutions: side of each stage's maps, data side first, strictly decreasing; each
      divides the one before, the first divides H.
    levels_per_stage: number of stochastic levels at each stage (≥ 1 each).
    latent_channels: channels of every z_l at each stage.
    state_channels: channels of the encoder's features and of the top-down state.
    bottleneck_channels: channels inside every bottleneck block.
    encoder_blocks: residual blocks per stage in the encoder.
    likelihood, likelihood_variance, min_variance, posterior_min_variance: as in
      :class:`vaejax.models.VAE`.
    conv_impl: see :mod:`vaejax.models.fast_conv` (all convs here have stride 1).
    dtype: computation dtype of the convs; heads, likelihood and outputs stay float32.
  """

  image_shape: tuple[int, int, int]
  resolutions: Sequence[int] = (14, 7, 1)
  levels_per_stage: Sequence[int] = (1, 3, 2)
  latent_channels: Sequence[int] = (4, 8, 16)
  state_channels: int = 64
  bottleneck_channels: int = 16
  encoder_blocks: int = 2
  likelihood: str = "bernoulli"
  likelihood_variance: float = 1.0
  min_variance: float | None = None
  posterior_min_variance: float = 0.0
  conv_impl: str = "fast"
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    networks.check_output_shape(self.image_shape, "image_shape")
    for values, name in ((self.resolutions, "resolutions"),
                         (self.levels_per_stage, "levels_per_stage"),
                         (self.latent_channels, "latent_channels")):
      networks.check_positive_ints(values, name, allow_empty=False)
    stages = len(self.resolutions)
    if len(self.levels_per_stage) != stages or len(self.latent_channels) != stages:
      raise ValueError(
          f"resolutions {tuple(self.resolutions)}, levels_per_stage "
          f"{tuple(self.levels_per_stage)} and latent_channels {tuple(self.latent_channels)} "
          "must have the same length (one entry per stage)."
      )
    height, width, _ = self.image_shape
    if height != width:
      raise ValueError(
          f"DeepHierarchicalVAE needs square images; got image_shape {tuple(self.image_shape)}."
      )
    sides = (height,) + tuple(self.resolutions)
    if any(big <= small or big % small for big, small in zip(sides[:-1], sides[1:])):
      raise ValueError(
          f"resolutions {tuple(self.resolutions)} do not fit {height}×{width} images: they "
          "must decrease, each dividing the one before and the first dividing the image "
          f"side {height} (e.g. (14, 7, 1) for 28×28, (32, 16, 8, 1) for 64×64)."
      )
    for value, name in ((self.state_channels, "state_channels"),
                        (self.bottleneck_channels, "bottleneck_channels"),
                        (self.encoder_blocks, "encoder_blocks")):
      networks.check_positive_int(value, name)
    vae.check_distribution_settings(self)
    fast_conv.check_conv_impl(self.conv_impl)
    super().__post_init__()

  # --------------------------------------------------------------------------- structure

  @property
  def num_levels(self) -> int:
    return sum(self.levels_per_stage)

  @property
  def level_stages(self) -> tuple[int, ...]:
    """The stage of every level, level 0 (next to the data) first."""
    return tuple(s for s, n in enumerate(self.levels_per_stage) for _ in range(n))

  @property
  def level_shapes(self) -> tuple[tuple[int, int, int], ...]:
    """(r, r, c) of every level's latent map, level 0 first."""
    return tuple((self.resolutions[s], self.resolutions[s], self.latent_channels[s])
                 for s in self.level_stages)

  @property
  def level_sizes(self) -> tuple[int, ...]:
    """Number of latent dimensions of every level, level 0 first."""
    return tuple(math.prod(shape) for shape in self.level_shapes)

  @property
  def latent_dim(self) -> int:
    """Total dimension of z, all levels flattened and concatenated."""
    return latent_levels.total_latent_dim(self.level_sizes)

  @property
  def latent_groups(self) -> tuple[int, ...]:
    """The level (0-based, 0 = next to the data) of every latent dimension."""
    return latent_levels.latent_groups(self.level_sizes)

  def setup(self):
    dtype, impl, width = self.dtype, self.conv_impl, self.state_channels
    encoder_depth = len(self.resolutions) * self.encoder_blocks
    decoder_scale = 1.0 / math.sqrt(self.num_levels)
    first = self.resolutions[0]
    self.stem = fast_conv.Conv2D(width, _kernel_for(first), conv_impl=impl, dtype=dtype,
                                 name="stem")
    self.encoder = [
        Bottleneck(self.bottleneck_channels, width, _kernel_for(r), residual=True,
                   last_init=scaled_fan_in_init(1.0 / math.sqrt(encoder_depth)),
                   conv_impl=impl, dtype=dtype, name=f"encoder_{s}_{b}")
        for s, r in enumerate(self.resolutions) for b in range(self.encoder_blocks)
    ]
    self.top_state = self.param(
        "top_state", nn.initializers.zeros,
        (self.resolutions[-1], self.resolutions[-1], width), jnp.float32)
    priors, posteriors, projections, blocks = [], [], [], []
    for level, stage in enumerate(self.level_stages):
      r, c = self.resolutions[stage], self.latent_channels[stage]
      k = _kernel_for(r)
      priors.append(Bottleneck(
          self.bottleneck_channels, 2 * c + width, k, last_init=nn.initializers.zeros,
          conv_impl=impl, dtype=dtype, last_dtype=jnp.float32, name=f"prior_{level}"))
      posteriors.append(Bottleneck(
          self.bottleneck_channels, 2 * c, k, last_init=nn.initializers.zeros,
          conv_impl=impl, dtype=dtype, last_dtype=jnp.float32, name=f"posterior_{level}"))
      projections.append(fast_conv.Conv2D(
          width, 1, conv_impl=impl, dtype=dtype,
          kernel_init=scaled_fan_in_init(decoder_scale), name=f"z_proj_{level}"))
      blocks.append(Bottleneck(
          self.bottleneck_channels, width, k, residual=True,
          last_init=scaled_fan_in_init(decoder_scale), conv_impl=impl, dtype=dtype,
          name=f"decoder_{level}"))
    self.priors, self.posteriors = priors, posteriors
    self.projections, self.blocks = projections, blocks
    factor = self.image_shape[0] // first
    channels = vae.decoder_channels(self.likelihood, self.image_shape[-1])
    self.output = fast_conv.Conv2D(factor * factor * channels, _kernel_for(first),
                                   conv_impl=impl, dtype=jnp.float32, name="output")

  # --------------------------------------------------------------------------- passes

  def _features(self, x: Array) -> list[Array]:
    """The encoder's feature map a_s at every stage, data side first."""
    x = jnp.asarray(x)
    if x.ndim != 4 or x.shape[1:] != tuple(self.image_shape):
      raise ValueError(
          f"Images must have shape (batch, {', '.join(map(str, self.image_shape))}); "
          f"got {x.shape}."
      )
    factor = self.image_shape[0] // self.resolutions[0]
    h = self.stem(fast_conv.space_to_depth(x, (factor, factor)))
    features, previous = [], self.resolutions[0]
    for s, r in enumerate(self.resolutions):
      h = average_pool(h, previous // r)
      for b in range(self.encoder_blocks):
        h = self.encoder[s * self.encoder_blocks + b](h)
      features.append(h)
      previous = r
    return features

  def _top_down(
      self, batch: int, features: list[Array] | None = None, mode: str = "sample",
      given: list[Array] | None = None, temperature: Any = 1.0,
  ) -> tuple[dict[str, list[Array]], Array]:
    """Runs the decoder from the top level down.

    ``mode``: "sample" (z_l ~ q, needs ``features``), "mean" (z_l = posterior mean),
    "given" (z_l from ``given``, level 0 first) or "prior" (z_l ~ prior at
    ``temperature``). Returns the per-level maps (level 0 first) of "mean", "log_var",
    "z", "prior_mean", "prior_log_var" (posterior entries only with ``features``) and the
    final state.
    """
    state = jnp.broadcast_to(self.top_state.astype(self.dtype),
                             (batch,) + self.top_state.shape)
    noise = None
    if mode in ("sample", "prior"):
      # One draw for all levels: XLA compiles each random draw separately, and slowly on CPU.
      eps = jax.random.normal(self.make_rng("sample"), (batch, self.latent_dim), jnp.float32)
      parts = jnp.split(eps, np.cumsum(self.level_sizes)[:-1].tolist(), axis=-1)
      noise = [p.reshape((batch,) + shape) for p, shape in zip(parts, self.level_shapes)]
    out: dict[str, list[Array]] = {k: [] for k in (
        "mean", "log_var", "z", "prior_mean", "prior_log_var")}
    stages = self.level_stages
    for level in reversed(range(self.num_levels)):
      stage = stages[level]
      if level < self.num_levels - 1 and stages[level + 1] != stage:  # entering a finer stage
        state = nearest_upsample(state, self.resolutions[stage] // self.resolutions[stage + 1])
      c = self.latent_channels[stage]
      prior = self.priors[level](state)
      prior_mean = prior[..., :c]
      prior_log_var = hierarchical.soft_clamp(prior[..., c: 2 * c])
      update = prior[..., 2 * c:].astype(state.dtype)
      if features is not None:
        delta = self.posteriors[level](jnp.concatenate([state, features[stage]], axis=-1))
        mean = prior_mean + delta[..., :c]
        log_var = vae.floor_posterior(
            hierarchical.soft_clamp(prior_log_var + delta[..., c:]),
            self.posterior_min_variance)
        out["mean"].insert(0, mean)
        out["log_var"].insert(0, log_var)
      if mode == "sample":
        z = mean + jnp.exp(0.5 * log_var) * noise[level]
      elif mode == "mean":
        z = mean
      elif mode == "given":
        z = given[level]
      else:
        scale = jnp.asarray(temperature, jnp.float32) * jnp.exp(0.5 * prior_log_var)
        z = prior_mean + scale * noise[level]
      out["z"].insert(0, z)
      out["prior_mean"].insert(0, prior_mean)
      out["prior_log_var"].insert(0, prior_log_var)
      state = self.blocks[level](state + update + self.projections[level](z.astype(self.dtype)))
    return out, state

  def _likelihood(self, state: Array) -> dict[str, Array]:
    factor = self.image_shape[0] // self.resolutions[0]
    raw = fast_conv.depth_to_space(self.output(nn.gelu(state).astype(jnp.float32)),
                                   (factor, factor))
    return vae.likelihood_from_raw(raw, self.likelihood, self.likelihood_variance,
                                   self.min_variance)

  @staticmethod
  def _flat(maps: list[Array]) -> Array:
    return jnp.concatenate([m.reshape(m.shape[0], -1) for m in maps], axis=-1)

  def __call__(self, x: Array, labels: Any = None) -> VAEOutput:
    """Samples every level from its posterior (RNG stream "sample") and decodes."""
    del labels  # unconditional
    x = jnp.asarray(x)
    out, state = self._top_down(x.shape[0], self._features(x), "sample")
    flat = {k: self._flat(v) for k, v in out.items()}
    return VAEOutput(mean=flat["mean"], log_var=flat["log_var"], z=flat["z"],
                     likelihood=self._likelihood(state), prior_mean=flat["prior_mean"],
                     prior_log_var=flat["prior_log_var"])

  def encode(self, x: Array, labels: Any = None) -> tuple[Array, Array]:
    """Posterior (mean, log_var) of all levels, with each upper z at its posterior mean.

    Deterministic (no RNG), for representations and metrics, as
    :meth:`vaejax.models.HierarchicalVAE.encode`; the posterior of a lower level in
    ``__call__`` depends on the levels sampled above it.
    """
    del labels
    x = jnp.asarray(x)
    out, _ = self._top_down(x.shape[0], self._features(x), "mean")
    return self._flat(out["mean"]), self._flat(out["log_var"])

  def decode(self, z: Array, labels: Any = None) -> dict[str, Array]:
    """Likelihood parameters of p(x | z) for z of all levels flattened (level 0 first)."""
    del labels
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f"z must have shape (batch, {self.latent_dim}); got {z.shape}.")
    parts = jnp.split(z, np.cumsum(self.level_sizes)[:-1].tolist(), axis=-1)
    given = [p.reshape((z.shape[0],) + shape) for p, shape in zip(parts, self.level_shapes)]
    _, state = self._top_down(z.shape[0], mode="given", given=given)
    return self._likelihood(state)

  def sample_prior(self, num: int, temperature: float = 1.0) -> tuple[Array, dict[str, Array]]:
    """Ancestral samples z_l ~ N(μ^p_l, T²σ^{p2}_l) from the top down (RNG "sample").

    Args:
      num: number of samples.
      temperature: T ≥ 0; 1 samples the model, T < 1 gives smoother, more typical
        samples, 0 follows the prior means (deterministic).

    Returns:
      ``(z, likelihood)``: z flattened (num, latent_dim), level 0 first, and the
      parameters of p(x | z).
    """
    networks.check_positive_int(num, "num")
    hierarchical.check_temperature(temperature)
    out, state = self._top_down(num, mode="prior", temperature=temperature)
    return self._flat(out["z"]), self._likelihood(state)


@registry.register(
    "deep_hvae", resolutions=(14, 7, 1), levels_per_stage=(1, 3, 2),
    latent_channels=(4, 8, 16), state_channels=64, bottleneck_channels=16, encoder_blocks=2)
def _build_deep_hvae(config, image_shape, num_classes):
  """The deep conv hierarchical VAE; its keys replace ``latent_dim`` and ``hidden_sizes``."""
  del num_classes  # unconditional
  return DeepHierarchicalVAE(
      image_shape=image_shape,
      resolutions=registry.int_tuple(config["resolutions"], "resolutions"),
      levels_per_stage=registry.int_tuple(config["levels_per_stage"], "levels_per_stage"),
      latent_channels=registry.int_tuple(config["latent_channels"], "latent_channels"),
      state_channels=config["state_channels"],
      bottleneck_channels=config["bottleneck_channels"],
      encoder_blocks=config["encoder_blocks"],
      likelihood=config["likelihood"], likelihood_variance=float(config["likelihood_variance"]),
      min_variance=None if config["min_variance"] is None else float(config["min_variance"]),
      posterior_min_variance=float(config["posterior_min_variance"]),
      conv_impl=config["conv_impl"], dtype=registry.DTYPES[config["dtype"]],
  )

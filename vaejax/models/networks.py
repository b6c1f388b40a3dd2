"""Encoder and decoder networks: MLPs and the disentanglement_lib dSprites conv nets.

Contracts shared by every network here (the VAE in :mod:`vaejax.models.vae` relies on
them, and new networks should keep them):

* an encoder maps ``(x (B, H, W, C), context (B, k) | None)`` to the parameters
  ``(mean, log_var)``, each ``(B, latent_dim)``, of a diagonal Gaussian q(z|x);
* a decoder maps ``(z (B, d), context | None)`` to raw outputs ``(B, *output_shape)``
  that the VAE turns into likelihood parameters;
* ``context`` (e.g. a one-hot label) is concatenated to the flattened input of the
  first dense layer;
* mixed precision: hidden layers compute in ``dtype`` (e.g. ``jnp.bfloat16``) with
  float32 parameters; the Gaussian heads and the decoder's last layer compute in and
  return float32, so the loss never sees low-precision numbers. The last layers are
  small (the latent heads; a 1-channel output), so this costs little.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaejax.models import fast_conv

Array = jax.Array
Dtype = Any


def check_positive_int(value: Any, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}.")


def check_positive_ints(values: Any, name: str, allow_empty: bool = True) -> None:
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or (
      not allow_empty and not values
  ) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
    raise ValueError(
        f"{name} must be a {'' if allow_empty else 'non-empty '}sequence of positive ints, "
        f"got {values!r}."
    )


def check_output_shape(shape: Any, name: str = "output_shape") -> None:
  if not isinstance(shape, Sequence) or len(shape) != 3 or any(
      isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape
  ):
    raise ValueError(f"{name} must be (height, width, channels) positive ints, got {shape!r}.")


def _with_context(h: Array, context: Array | None) -> Array:
  h = h.reshape(h.shape[0], -1)
  if context is None:
    return h
  if context.ndim != 2 or context.shape[0] != h.shape[0]:
    raise ValueError(
        f"context must be (batch, k) with batch {h.shape[0]}, got shape {context.shape}."
    )
  return jnp.concatenate([h, context.astype(h.dtype)], axis=-1)


class GaussianHeads(nn.Module):
  """Two linear float32 heads: μ = W_μ h + b_μ and log σ² = W_σ h + b_σ."""

  latent_dim: int

  @nn.compact
  def __call__(self, h: Array) -> tuple[Array, Array]:
    h = h.astype(jnp.float32)
    mean = nn.Dense(self.latent_dim, dtype=jnp.float32, name="mean")(h)
    log_var = nn.Dense(self.latent_dim, dtype=jnp.float32, name="log_var")(h)
    return mean, log_var


# ----------------------------------------------------------------------------- MLPs


class MLPEncoder(nn.Module):
  """Flatten (‖ context) → [Dense → ReLU] per hidden size → Gaussian heads."""

  latent_dim: int = 10
  hidden_sizes: Sequence[int] = (512, 256)
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    check_positive_int(self.latent_dim, "latent_dim")
    check_positive_ints(self.hidden_sizes, "hidden_sizes")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
    h = _with_context(x, context)
    for i, size in enumerate(self.hidden_sizes):
      h = nn.relu(nn.Dense(size, dtype=self.dtype, name=f"hidden_{i}")(h))
    return GaussianHeads(self.latent_dim, name="heads")(h)


class MLPDecoder(nn.Module):
  """z (‖ context) → [Dense → ReLU] per hidden size → float32 Dense → reshape to output_shape.

  Pass the encoder's hidden sizes reversed for the usual mirrored architecture.
  """

  output_shape: tuple[int, int, int]
  hidden_sizes: Sequence[int] = (256, 512)
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    check_output_shape(self.output_shape)
    check_positive_ints(self.hidden_sizes, "hidden_sizes")
    super().__post_init__()

  @nn.compact
  def __call__(self, z: Array, context: Array | None = None) -> Array:
    h = _with_context(z, context)
    for i, size in enumerate(self.hidden_sizes):
      h = nn.relu(nn.Dense(size, dtype=self.dtype, name=f"hidden_{i}")(h))
    size = self.output_shape[0] * self.output_shape[1] * self.output_shape[2]
    out = nn.Dense(size, dtype=jnp.float32, name="output")(h.astype(jnp.float32))
    return out.reshape((z.shape[0],) + tuple(self.output_shape))


# ----------------------------------------------------------------------------- conv nets


class ConvEncoder(nn.Module):
  """The disentanglement_lib conv encoder (defaults: its dSprites architecture).

  Stride-2 "SAME" convs with ``channels`` (32, 32, 64, 64) and ``kernel_sizes``
  (4, 4, 2, 2), each followed by ReLU → flatten (‖ context) → Dense ``dense_size`` (256)
  → ReLU → Gaussian heads. Any input size works (each conv gives ⌈L/2⌉ positions).
  ``conv_impl`` ("fast" | "fast_lax" | "textbook") picks an equal formulation of the
  convs (:mod:`vaejax.models.fast_conv`); the parameters are the same for all three.
  """

  latent_dim: int = 10
  channels: Sequence[int] = (32, 32, 64, 64)
  kernel_sizes: Sequence[int] = (4, 4, 2, 2)
  dense_size: int = 256
  conv_impl: str = "fast"
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    check_positive_int(self.latent_dim, "latent_dim")
    check_positive_int(self.dense_size, "dense_size")
    check_positive_ints(self.channels, "channels", allow_empty=False)
    check_positive_ints(self.kernel_sizes, "kernel_sizes", allow_empty=False)
    if len(self.channels) != len(self.kernel_sizes):
      raise ValueError(
          f"channels {tuple(self.channels)} and kernel_sizes {tuple(self.kernel_sizes)} "
          "must have the same length (one per conv layer)."
      )
    fast_conv.check_conv_impl(self.conv_impl)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
    h = x
    for i, (features, kernel) in enumerate(zip(self.channels, self.kernel_sizes)):
      h = fast_conv.Conv2D(
          features, kernel, strides=2, conv_impl=self.conv_impl, dtype=self.dtype,
          name=f"conv_{i}",
      )(h)
      h = nn.relu(h)
    h = _with_context(h, context)
    h = nn.relu(nn.Dense(self.dense_size, dtype=self.dtype, name="dense")(h))
    return GaussianHeads(self.latent_dim, name="heads")(h)


class ConvDecoder(nn.Module):
  """The disentanglement_lib deconv decoder (defaults: its dSprites architecture).

  z (‖ context) → Dense ``dense_size`` (256) → ReLU → Dense to an (H/2ⁿ, W/2ⁿ,
  ``base_channels``) grid (4×4×64 = 1024 for 64×64 images) → ReLU → stride-2 "SAME"
  transposed convs with ``channels`` (64, 32, 32), kernel ``kernel_size`` (4), ReLU → a
  last float32 stride-2 transposed conv to ``output_shape[-1]`` channels. With
  n = len(channels) + 1 upsamplings, height and width must be multiples of 2ⁿ (16 by
  default: 16, 32, 48, 64, ... pixels). ``conv_impl`` as in :class:`ConvEncoder`.
  """

  output_shape: tuple[int, int, int]
  channels: Sequence[int] = (64, 32, 32)
  base_channels: int = 64
  kernel_size: int = 4
  dense_size: int = 256
  conv_impl: str = "fast"
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    check_output_shape(self.output_shape)
    check_positive_ints(self.channels, "channels")
    for value, name in ((self.base_channels, "base_channels"), (self.kernel_size, "kernel_size"),
                        (self.dense_size, "dense_size")):
      check_positive_int(value, name)
    factor = 2 ** (len(self.channels) + 1)
    height, width, _ = self.output_shape
    if height % factor or width % factor:
      raise ValueError(
          f"ConvDecoder upsamples {len(self.channels) + 1} times by 2, so the image height "
          f"and width must be multiples of {factor}; got {height}×{width}."
      )
    fast_conv.check_conv_impl(self.conv_impl)
    super().__post_init__()

  @nn.compact
  def __call__(self, z: Array, context: Array | None = None) -> Array:
    factor = 2 ** (len(self.channels) + 1)
    grid = (self.output_shape[0] // factor, self.output_shape[1] // factor, self.base_channels)
    h = _with_context(z, context)
    h = nn.relu(nn.Dense(self.dense_size, dtype=self.dtype, name="dense_0")(h))
    h = nn.relu(nn.Dense(grid[0] * grid[1] * grid[2], dtype=self.dtype, name="dense_1")(h))
    h = h.reshape((h.shape[0],) + grid)
    for i, features in enumerate(self.channels):
      h = fast_conv.ConvTranspose2D(
          features, self.kernel_size, strides=2, conv_impl=self.conv_impl, dtype=self.dtype,
          name=f"deconv_{i}",
      )(h)
      h = nn.relu(h)
    return fast_conv.ConvTranspose2D(
        self.output_shape[-1], self.kernel_size, strides=2, conv_impl=self.conv_impl,
        dtype=jnp.float32, name="output",
    )(h.astype(jnp.float32))

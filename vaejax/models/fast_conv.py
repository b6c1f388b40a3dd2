r"""Strided convolutions and "SAME" transposed convolutions, in equal formulations.

XLA on CPU runs the gradients of strided convolutions and transposed convolutions
slowly, while stride-1 convolutions and matrix products are fast. Every layer here
therefore has implementations (``conv_impl``) that compute *the same function of the
same parameters*:

* ``"textbook"``: ``lax.conv_general_dilated`` with stride *s* and ``lax.conv_transpose``,
  exactly what ``flax.linen.Conv`` / ``flax.linen.ConvTranspose`` (``padding="SAME"``,
  ``transpose_kernel=False``) compute;
* ``"fast"``: only stride-1 VALID convolutions plus pads, reshapes and transposes, the
  stride-1 convolutions evaluated as matrix products (:func:`conv2d_valid_matmul`);
* ``"fast_lax"``: the same rearrangement with XLA's own stride-1 convolution, for
  backends whose convolutions are fast (measure before choosing).

All store the kernel in the textbook layout ``(kh, kw, C_in, C_out)`` (and a bias
``(C_out,)``) under the names flax uses, so weights move freely between them and
flax's own layers. The fast paths rearrange the kernel at apply time.

**Strided conv = space-to-depth + stride-1 conv.** Per spatial axis, with "SAME" padding
``(lo, hi)`` (XLA's rule: output ``n = ⌈L/s⌉``, total padding ``max((n−1)s + k − L, 0)``,
``lo = ⌊total/2⌋``), the conv is :math:`y_o = \sum_{t<k} x^{pad}_{os+t}\, w_t`. Zero-pad the
kernel to :math:`Q s` taps, :math:`Q = ⌈k/s⌉`, and write :math:`t = qs + r`:

.. math:: y_o = \sum_{q<Q} \sum_{r<s} X_{o+q,\,r}\, W_{q,\,r},\qquad
          X_{m,r} = x^{pad}_{ms+r},\ W_{q,r} = w_{qs+r},

a stride-1 VALID conv with Q taps over ``s·C_in`` channels (``X`` is the space-to-depth
of the padded input, ``W`` the matching rearrangement of the kernel).

**Transposed conv = stride-1 conv + depth-to-space.** "SAME" means what
``lax.conv_transpose(..., padding="SAME")`` and hence ``flax.linen.ConvTranspose`` mean:
the output has exactly ``s·L`` positions and

.. math:: y_o = \sum_{t<k} \tilde x_{o + t - a}\, w_t,\qquad
          \tilde x_{is} = x_i,\ \tilde x_j = 0 \text{ otherwise},

with ``a = k − 1`` if ``s > k − 1`` else ``⌈(k + s − 2)/2⌉`` (no kernel flip). Split the
outputs into *s* phases, :math:`o = ms + p - c` for an offset ``0 ≤ c < s``; then
:math:`y_{ms+p-c} = \sum_d x_{m+d}\, w_{sd + c + a - p}` (taps outside ``[0, k)`` are
zero): one stride-1 conv whose ``s·C_out`` output channels are the phases, followed by
depth-to-space and a crop of ``c`` leading positions. The offset ``c`` is chosen to make
the stride-1 kernel as small as possible (⌈k/s⌉ taps when ``s`` divides ``k``; 2 taps,
not 3, for the usual 4×4 stride-2 layer). In 2-D the phases of both axes give
``sh·sw·C_out`` channels.

For k = 4, s = 2 this "SAME" transposed conv equals TensorFlow's
``conv2d_transpose(padding="SAME")`` (disentanglement_lib's decoder) with the kernel
flipped spatially and its channel axes swapped, so the two parameterise the same
function class.

**Stride-1 convs as matrix products.** A VALID conv with a D×D kernel is evaluated in one
of two orders: *gather* (im2col: concatenate the D² shifted inputs, one matmul with the
(D²·C_in, C_out) kernel) or *scatter* (one matmul with the (C_in, D²·C_out) kernel, then
add the D² shifted output slices). Gather materialises D²·C_in numbers per position,
scatter D²·C_out, so the smaller one is used. On this project's 2-core CPU the chosen
order beat XLA's stride-1 convolution on all 8 dSprites layers (forward + backward), and the whole "fast" train
step ran about 4× as fast as "textbook" and 1.7× as fast as "fast_lax" (measured with
``experiments/benchmarks/conv_impls.py``; re-measure on other hardware).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Dtype = Any

CONV_IMPLS = ("fast", "fast_lax", "textbook")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def check_conv_impl(conv_impl: str) -> None:
  """Raises a ValueError naming ``conv_impl`` unless it is one of :data:`CONV_IMPLS`."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {conv_impl!r}; expected one of {CONV_IMPLS}.")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}.")
  return int(pair[0]), int(pair[1])


# ----------------------------------------------------------------------------- reshapes


def space_to_depth(x: Array, block: tuple[int, int]) -> Array:
  """(B, H·bh, W·bw, C) → (B, H, W, bh·bw·C), channels ordered (row phase, column phase, C)."""
  b, h, w, c = x.shape
  bh, bw = block
  x = x.reshape(b, h // bh, bh, w // bw, bw, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // bh, w // bw, bh * bw * c)


def depth_to_space(x: Array, block: tuple[int, int]) -> Array:
  """Inverse of :func:`space_to_depth`: (B, H, W, bh·bw·C) → (B, H·bh, W·bw, C)."""
  b, h, w, c = x.shape
  bh, bw = block
  x = x.reshape(b, h, w, bh, bw, c // (bh * bw))
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * bh, w * bw, c // (bh * bw))


# ----------------------------------------------------------------------------- stride-1 conv


def conv2d_valid_lax(x: Array, kernel: Array) -> Array:
  """Stride-1 VALID convolution by XLA: (B, H, W, Cin) * (D, E, Cin, Cout) → (B, H−D+1, W−E+1, Cout)."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="VALID", dimension_numbers=_DIMENSION_NUMBERS
  )


def conv2d_valid_matmul(x: Array, kernel: Array) -> Array:
  r""":func:`conv2d_valid_lax` as matrix products, in the cheaper of two orders.

  .. math:: y_{ij} = \sum_{u<D,\,v<E} x_{i+u,\,j+v}\, W_{uv}

  *Gather* (Cin ≤ Cout): concatenate the D·E shifted windows of x along channels, one
  matmul with W reshaped to (D·E·Cin, Cout). *Scatter* (Cin > Cout): one matmul of x with
  W rearranged to (Cin, D·E·Cout), then sum the D·E shifted windows of the product.
  """
  d, e, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  oh, ow = h - d + 1, w - e + 1
  if cin <= cout:
    windows = [x[:, u: u + oh, v: v + ow, :] for u in range(d) for v in range(e)]
    patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
    y = jnp.dot(patches.reshape(-1, d * e * cin), kernel.reshape(d * e * cin, cout))
    return y.reshape(b, oh, ow, cout)
  products = jnp.dot(x.reshape(-1, cin), kernel.transpose(2, 0, 1, 3).reshape(cin, -1))
  products = products.reshape(b, h, w, d, e, cout)
  y = None
  for u in range(d):
    for v in range(e):
      part = products[:, u: u + oh, v: v + ow, u, v, :]
      y = part if y is None else y + part
  return y


_STRIDE1 = {"fast": conv2d_valid_matmul, "fast_lax": conv2d_valid_lax}


# ----------------------------------------------------------------------------- strided conv


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA's "SAME" padding ``(lo, hi)`` of one axis: output ⌈size/stride⌉, extra pad at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv2d_textbook(x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
  """Strided "SAME" convolution, NHWC input and HWIO kernel (as ``flax.linen.Conv``)."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding="SAME", dimension_numbers=_DIMENSION_NUMBERS
  )


def space_to_depth_kernel(kernel: Array, strides: tuple[int, int]) -> Array:
  """Rearranges a (kh, kw, Cin, Cout) kernel for :func:`conv2d_fast`.

  Zero-pads each spatial axis to ``Q·s`` taps and folds the phase ``r`` of ``t = qs + r``
  into the input channels: result (Qh, Qw, sh·sw·Cin, Cout), channels ordered like
  :func:`space_to_depth`.
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  qh, qw = -(-kh // sh), -(-kw // sw)
  kernel = jnp.pad(kernel, ((0, qh * sh - kh), (0, qw * sw - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(qh, sh, qw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  return kernel.reshape(qh, qw, sh * sw * cin, cout)


def conv2d_fast(
    x: Array, kernel: Array, strides: tuple[int, int], stride1: str = "fast"
) -> Array:
  """:func:`conv2d_textbook` as pad + space-to-depth + stride-1 VALID conv (see module doc).

  ``stride1`` selects the stride-1 conv: "fast" (:func:`conv2d_valid_matmul`) or
  "fast_lax" (:func:`conv2d_valid_lax`).
  """
  if strides == (1, 1):
    return conv2d_textbook(x, kernel, strides)
  pads = []
  for size, k, s in zip(x.shape[1:3], kernel.shape[:2], strides):
    lo, _ = same_padding(size, k, s)
    out = -(-size // s)
    # The stride-1 conv reads (out − 1 + Q)·s padded positions; extra ones meet zero taps.
    needed = (out - 1 + -(-k // s)) * s
    pads.append((lo, needed - size - lo))
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return _STRIDE1[stride1](space_to_depth(x, strides), space_to_depth_kernel(kernel, strides))


# ----------------------------------------------------------------------------- transposed conv


def transpose_same_offset(kernel: int, stride: int) -> int:
  """The leading offset ``a`` of ``lax.conv_transpose(padding="SAME")`` on one axis."""
  if stride > kernel - 1:
    return kernel - 1
  return math.ceil((kernel + stride - 2) / 2)


@functools.cache
def _subpixel_plan(kernel: int, stride: int) -> tuple[int, int, np.ndarray, np.ndarray]:
  """Static plan of one axis of the fast transposed conv.

  Returns ``(crop, d_min, taps, valid)``: the offset ``c``; the first input offset ``d``
  the stride-1 kernel reads; and (D, s) tables giving, for kernel position ``j``
  (``d = d_min + j``) and output phase ``p``, the textbook tap ``t`` and whether it exists.
  """
  a = transpose_same_offset(kernel, stride)
  best = None
  for c in range(stride):
    d_of_taps = [
        (t - (c + a - p)) // stride
        for p in range(stride) for t in range(kernel) if (t - (c + a - p)) % stride == 0
    ]
    lo, hi = min(d_of_taps), max(d_of_taps)
    if best is None or hi - lo < best[2] - best[1]:
      best = (c, lo, hi)
  c, d_min, d_max = best
  d = np.arange(d_min, d_max + 1)[:, None]
  taps = stride * d + c + a - np.arange(stride)[None, :]
  valid = (taps >= 0) & (taps < kernel)
  return c, d_min, np.where(valid, taps, 0), valid


def subpixel_kernel(kernel: Array, strides: tuple[int, int]) -> Array:
  """Rearranges a (kh, kw, Cin, Cout) kernel for :func:`conv_transpose2d_fast`.

  Result (Dh, Dw, Cin, sh·sw·Cout): entry ``[jh, jw, :, (ph, pw, :)]`` is the textbook tap
  that output phase ``(ph, pw)`` applies to input offset ``(jh, jw)``, or zero.
  """
  _, _, taps_h, valid_h = _subpixel_plan(kernel.shape[0], strides[0])
  _, _, taps_w, valid_w = _subpixel_plan(kernel.shape[1], strides[1])
  gathered = kernel[taps_h][:, :, taps_w]  # (Dh, sh, Dw, sw, Cin, Cout)
  mask = (valid_h[:, :, None, None] & valid_w[None, None, :, :]).astype(kernel.dtype)
  gathered = gathered * mask[..., None, None]
  dh, sh, dw, sw, cin, cout = gathered.shape
  return gathered.transpose(0, 2, 4, 1, 3, 5).reshape(dh, dw, cin, sh * sw * cout)


def conv_transpose2d_textbook(x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
  """"SAME" transposed conv (output ``s·L``), as ``flax.linen.ConvTranspose`` computes it."""
  return lax.conv_transpose(
      x, kernel, strides, "SAME", dimension_numbers=_DIMENSION_NUMBERS
  )


def conv_transpose2d_fast(
    x: Array, kernel: Array, strides: tuple[int, int], stride1: str = "fast"
) -> Array:
  """:func:`conv_transpose2d_textbook` as stride-1 conv + depth-to-space (see module doc).

  ``stride1`` as in :func:`conv2d_fast`.
  """
  if strides == (1, 1):
    return conv_transpose2d_textbook(x, kernel, strides)
  x_shape = x.shape
  pads, crops = [], []
  for size, k, s in zip(x.shape[1:3], kernel.shape[:2], strides):
    c, d_min, taps, _ = _subpixel_plan(k, s)
    # Some phase always has a tap at d = 0, so d_min <= 0 <= d_max: both pads are >= 0.
    d_max = d_min + taps.shape[0] - 1
    blocks = size + (c > 0)  # groups of s outputs covering positions c .. c + s·size − 1
    pads.append((-d_min, blocks - size + d_max))
    crops.append(c)
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  y = depth_to_space(_STRIDE1[stride1](x, subpixel_kernel(kernel, strides)), strides)
  out_h, out_w = strides[0] * x_shape[1], strides[1] * x_shape[2]
  return y[:, crops[0]: crops[0] + out_h, crops[1]: crops[1] + out_w]


_CONV_FNS: dict[str, Callable[[Array, Array, tuple[int, int]], Array]] = {
    "fast": functools.partial(conv2d_fast, stride1="fast"),
    "fast_lax": functools.partial(conv2d_fast, stride1="fast_lax"),
    "textbook": conv2d_textbook,
}
_CONV_TRANSPOSE_FNS: dict[str, Callable[[Array, Array, tuple[int, int]], Array]] = {
    "fast": functools.partial(conv_transpose2d_fast, stride1="fast"),
    "fast_lax": functools.partial(conv_transpose2d_fast, stride1="fast_lax"),
    "textbook": conv_transpose2d_textbook,
}


# ----------------------------------------------------------------------------- modules


class _ConvBase(nn.Module):
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  conv_impl: str = "fast"
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  def __post_init__(self):
    check_conv_impl(self.conv_impl)
    _pair(self.kernel_size, "kernel_size")
    _pair(self.strides, "strides")
    if not isinstance(self.features, int) or self.features < 1:
      raise ValueError(f"features must be a positive int, got {self.features!r}.")
    super().__post_init__()

  def _apply(self, x: Array, fn: Callable[[Array, Array, tuple[int, int]], Array]) -> Array:
    if x.ndim != 4:
      raise ValueError(f"{type(self).__name__} expects NHWC input, got shape {x.shape}.")
    kernel_size = _pair(self.kernel_size, "kernel_size")
    kernel = self.param(
        "kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features), self.param_dtype
    )
    bias = (
        self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        if self.use_bias else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = fn(x, kernel, _pair(self.strides, "strides"))
    return y if bias is None else y + bias


class Conv2D(_ConvBase):
  """"SAME" 2-D convolution; ``conv_impl`` "fast" or "textbook" (see the module doc).

  Parameters ``kernel`` (kh, kw, Cin, Cout) and ``bias`` (Cout,) are interchangeable with
  ``flax.linen.Conv(features, kernel_size, strides, padding="SAME")``'s.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return self._apply(x, _CONV_FNS[self.conv_impl])


class ConvTranspose2D(_ConvBase):
  """"SAME" 2-D transposed convolution (output = stride × input); "fast" or "textbook".

  Parameters are interchangeable with ``flax.linen.ConvTranspose(features, kernel_size,
  strides, padding="SAME")``'s (``transpose_kernel=False``: kernel (kh, kw, Cin, Cout)).
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return self._apply(x, _CONV_TRANSPOSE_FNS[self.conv_impl])

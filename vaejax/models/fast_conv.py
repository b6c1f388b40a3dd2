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
order beat XLA's stride-1 convolution on all 8 dSprites layers (forward + backward), and
the whole "fast" train step ran about 4× as fast as "textbook" and 1.7× as fast as
"fast_lax" (measured with ``experiments/benchmarks/conv_impls.py``; re-measure on other
hardware). The gather windows are stacked on an axis *before* the channels, so that
XLA:CPU fuses them into one pass (it declines to fuse a concatenation along the minor axis).

**Boundary blocks.** Both rearrangements run a stride-1 conv over a grid of *blocks* (s
input positions of the conv, s output positions of the transposed conv), and the first
and last block of an axis are only partly real: for the 4×4 stride-2 layers, conv input
block 0 is (padding, x₀), and transposed-conv output block 0 is (y₋₁, y₀) with y₋₁
cropped. Treating them like interior blocks costs (L+1)²/L² of the products of L²
(13 % at L = 16, 27 % at L = 8, 56 % at L = 4). So, per axis, the blocks are split into
*segments*: maximal runs of blocks that need the same kernel taps and the same phases
(an interior run needs all; an end block only the taps that reach a real output and the
phases that are real). A 2-D layer is evaluated region by region (row segment × column
segment), each region one smaller matrix product with the matching slice of the
rearranged kernel, and nothing else changes: the products that are left out are
products with padding zeros or for cropped outputs. For the 4×4 stride-2 layers, 3
segments per axis give 9 regions, the interior one carrying (L−1)² blocks' work.

* Transposed conv, gather order: regions of *output* blocks; each region is a stride-1
  conv of the input rows and columns it reads (padded only where it reads past an edge)
  with the kernel's columns for the phases it keeps, then depth-to-space; the layer is
  the concatenation of the regions.
* Strided conv, scatter order: regions of *input* blocks; each region's products with
  the taps and phases it uses; output block o sums, over taps q, the products of block
  o + q, assembled tap by tap from the regions.
* Transposed conv, scatter order: the products are taken of the unpadded input (every
  input block is real and feeds every tap); the padding moves to the shifted sums.
* Strided conv, gather order: the im2col rows are exactly the L² outputs already; a
  boundary row only multiplies a few padding zeros inside its row.
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
  """Stride-1 VALID convolution by XLA.

  Shapes: (B, H, W, Cin) * (D, E, Cin, Cout) → (B, H−D+1, W−E+1, Cout).
  """
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="VALID", dimension_numbers=_DIMENSION_NUMBERS
  )


def conv2d_valid_matmul(x: Array, kernel: Array) -> Array:
  r""":func:`conv2d_valid_lax` as matrix products, in the cheaper of two orders.

  .. math:: y_{ij} = \sum_{u<D,\,v<E} x_{i+u,\,j+v}\, W_{uv}

  *Gather* (Cin ≤ Cout): stack the D·E shifted windows of x, ``(B, H', W', D·E, Cin)``,
  one matmul with W reshaped to (D·E·Cin, Cout). *Scatter* (Cin > Cout): one matmul of x
  with W rearranged to (Cin, D·E·Cout), then sum the D·E shifted windows of the product.
  (Stacking before the channel axis is a concatenation along a major axis, which XLA:CPU
  fuses with the slicing into one pass; along the channel axis it copies each window
  first.)
  """
  d, e, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  oh, ow = h - d + 1, w - e + 1
  if cin <= cout:
    windows = [x[:, u: u + oh, v: v + ow, :] for u in range(d) for v in range(e)]
    patches = windows[0] if len(windows) == 1 else jnp.stack(windows, axis=-2)
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


def _runs(keys: Sequence[Any]) -> tuple[tuple[int, int, Any], ...]:
  """Maximal runs of equal consecutive ``keys``: ``((start, stop, key), ...)``."""
  runs, start = [], 0
  for i in range(1, len(keys) + 1):
    if i == len(keys) or keys[i] != keys[start]:
      runs.append((start, i, keys[start]))
      start = i
  return tuple(runs)


def _concat_grid(rows: Sequence[Sequence[Array]]) -> Array:
  """Concatenates a 2-D list of (B, h, w, C) pieces along h (rows) and w (within a row)."""
  bands = [row[0] if len(row) == 1 else jnp.concatenate(row, axis=2) for row in rows]
  return bands[0] if len(bands) == 1 else jnp.concatenate(bands, axis=1)


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


@functools.cache
def _conv_axis_plan(size: int, kernel: int, stride: int) -> tuple[int, int, int, int, tuple]:
  """Static plan of one axis of the fast strided conv (see "Boundary blocks", module doc).

  Returns ``(lo, out, taps, blocks, segments)``: the "SAME" padding before the input; the
  ⌈size/stride⌉ outputs; Q = ⌈kernel/stride⌉ taps; the ``out − 1 + Q`` input blocks; and
  the runs ``(start, stop, key)`` of input blocks, ``key = ((q0, q1), (r0, r1))`` the taps
  and phases those blocks use, or None for blocks that meet only zeros. Block m, phase r
  holds input position ``m·s + r − lo`` (real if inside the input); it feeds output
  ``m − q`` through tap q, whose kernel entry ``q·s + r`` exists if it is < ``kernel``.
  """
  lo, _ = same_padding(size, kernel, stride)
  out, taps = -(-size // stride), -(-kernel // stride)
  blocks = out - 1 + taps

  def key(m: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    real = [r for r in range(stride) if 0 <= m * stride + r - lo < size]
    used_taps = [q for q in range(taps)
                 if 0 <= m - q < out and any(q * stride + r < kernel for r in real)]
    phases = [r for r in real if any(q * stride + r < kernel for q in used_taps)]
    if not used_taps:
      return None
    return (used_taps[0], used_taps[-1] + 1), (phases[0], phases[-1] + 1)

  return lo, out, taps, blocks, _runs([key(m) for m in range(blocks)])


def _conv2d_scatter(x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
  r""":func:`conv2d_fast` in scatter order, region by region (see the module doc).

  With X the padded input as blocks and :math:`W_q` the kernel's taps,
  :math:`y_o = \sum_q X_{o+q} W_q`. Each region of input blocks (a row segment × a column
  segment) forms its products :math:`P_m[q] = X_m W_q` for the taps and phases it uses
  only; output block o then adds, over the taps, the products of block o + q. For tap q
  these are the blocks [q, q + out) of every axis, gathered from the regions (zeros where
  a region has no such tap) and summed over the taps.
  """
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  lo_h, out_h, taps_h, blocks_h, segments_h = _conv_axis_plan(h, kh, sh)
  lo_w, out_w, taps_w, blocks_w, segments_w = _conv_axis_plan(w, kw, sw)
  x = jnp.pad(x, ((0, 0), (lo_h, blocks_h * sh - h - lo_h), (lo_w, blocks_w * sw - w - lo_w),
                  (0, 0)))
  # [b, m, r, n, u, c] = x_pad[m·sh + r, n·sw + u]
  x = x.reshape(b, blocks_h, sh, blocks_w, sw, cin)
  kernel = jnp.pad(kernel, ((0, taps_h * sh - kh), (0, taps_w * sw - kw), (0, 0), (0, 0)))
  # [q, r, t, u] = tap (q·sh + r, t·sw + u)
  kernel = kernel.reshape(taps_h, sh, taps_w, sw, cin, cout)

  products = {}
  for m0, m1, key_h in segments_h:
    for n0, n1, key_w in segments_w:
      if key_h is None or key_w is None:
        continue
      ((q0, q1), (r0, r1)), ((t0, t1), (u0, u1)) = key_h, key_w
      rows = x[:, m0:m1, r0:r1, n0:n1, u0:u1].transpose(0, 1, 3, 2, 4, 5)
      rows = rows.reshape(-1, (r1 - r0) * (u1 - u0) * cin)
      weights = kernel[q0:q1, r0:r1, t0:t1, u0:u1].transpose(1, 3, 4, 0, 2, 5)
      product = jnp.dot(rows, weights.reshape(rows.shape[1], -1))
      products[m0, n0] = product.reshape(b, m1 - m0, n1 - n0, q1 - q0, t1 - t0, cout)

  def piece(qh, qw, segment_h, segment_w):
    """Products of tap (qh, qw) for the output blocks these segments feed, or None."""
    (m0, m1, key_h), (n0, n1, key_w) = segment_h, segment_w
    a0, a1, c0, c1 = max(m0, qh), min(m1, qh + out_h), max(n0, qw), min(n1, qw + out_w)
    if a0 >= a1 or c0 >= c1:
      return None
    if (key_h is None or key_w is None or not key_h[0][0] <= qh < key_h[0][1]
        or not key_w[0][0] <= qw < key_w[0][1]):
      return jnp.zeros((b, a1 - a0, c1 - c0, cout), x.dtype)
    part = products[m0, n0][:, a0 - m0: a1 - m0, c0 - n0: c1 - n0]
    return part[:, :, :, qh - key_h[0][0], qw - key_w[0][0]]

  y = None
  for qh in range(taps_h):
    for qw in range(taps_w):
      grid = [[p for sw_ in segments_w if (p := piece(qh, qw, sh_, sw_)) is not None]
              for sh_ in segments_h]
      grid = _concat_grid([row for row in grid if row])
      y = grid if y is None else y + grid
  return y


def conv2d_fast(
    x: Array, kernel: Array, strides: tuple[int, int], stride1: str = "fast"
) -> Array:
  """:func:`conv2d_textbook` as pad + space-to-depth + stride-1 VALID conv (see module doc).

  ``stride1`` selects the stride-1 conv: "fast" (matrix products; in scatter order region
  by region, :func:`_conv2d_scatter`) or "fast_lax" (:func:`conv2d_valid_lax`).
  """
  if strides == (1, 1):
    return conv2d_textbook(x, kernel, strides)
  if stride1 == "fast" and strides[0] * strides[1] * x.shape[-1] > kernel.shape[-1]:
    return _conv2d_scatter(x, kernel, strides)
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


@functools.cache
def _transpose_axis_plan(size: int, kernel: int, stride: int) -> tuple[int, int, tuple]:
  """Static plan of one axis of the fast transposed conv (see "Boundary blocks").

  Returns ``(crop, d_min, segments)``: the offset ``c`` and first input offset of
  :func:`_subpixel_plan`, and the runs ``(start, stop, (p0, p1), (j0, j1))`` of output
  blocks that keep the same phases [p0, p1) (block m, phase p is output ``m·s + p − c``,
  kept if inside [0, s·size)), with the stride-1 kernel positions [j0, j1) they need: those
  with a tap for a kept phase that reads a real input ``m + d_min + j`` of some block of
  the run. An empty range (j0 = j1) means the run's outputs are all zero.
  """
  c, d_min, _, valid = _subpixel_plan(kernel, stride)
  blocks = size + (c > 0)
  phases = [(max(0, c - m * stride), min(stride, stride * size + c - m * stride))
            for m in range(blocks)]
  segments = []
  for m0, m1, (p0, p1) in _runs(phases):
    needed = [j for j in range(valid.shape[0])
              if valid[j, p0:p1].any() and -(m1 - 1) <= d_min + j <= size - 1 - m0]
    segments.append((m0, m1, (p0, p1), (needed[0], needed[-1] + 1) if needed else (0, 0)))
  return c, d_min, tuple(segments)


def _conv_transpose2d_regions(
    x: Array, kernel: Array, strides: tuple[int, int], stride1: str
) -> Array:
  """:func:`conv_transpose2d_fast` region by region of output blocks (see module doc).

  Region (row segment × column segment) = stride-1 conv of the input rows and columns
  its blocks read, with the subpixel kernel's positions and phases it needs; then
  depth-to-space by the phases kept. The layer is the concatenation of the regions.
  """
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  sh, sw = strides
  crop_h, d_h, segments_h = _transpose_axis_plan(h, kernel.shape[0], sh)
  crop_w, d_w, segments_w = _transpose_axis_plan(w, kernel.shape[1], sw)
  sub = subpixel_kernel(kernel, strides)
  sub = sub.reshape(sub.shape[:3] + (sh, sw, cout))  # [jh, jw, :, ph, pw, :]
  rows = []
  for m0, m1, (p0, p1), (j0, j1) in segments_h:
    row = []
    for n0, n1, (q0, q1), (i0, i1) in segments_w:
      if j0 == j1 or i0 == i1:
        row.append(jnp.zeros((b, (m1 - m0) * (p1 - p0), (n1 - n0) * (q1 - q0), cout), x.dtype))
        continue
      # Input rows [r0, r1) and columns [c0, c1) feed these blocks; pad where they leave x.
      r0, r1 = m0 + d_h + j0, m1 - 1 + d_h + j1
      c0, c1 = n0 + d_w + i0, n1 - 1 + d_w + i1
      slab = x[:, max(r0, 0): min(r1, h), max(c0, 0): min(c1, w)]
      slab = jnp.pad(slab, ((0, 0), (max(-r0, 0), max(r1 - h, 0)), (max(-c0, 0), max(c1 - w, 0)),
                            (0, 0)))
      weights = sub[j0:j1, i0:i1, :, p0:p1, q0:q1].reshape(j1 - j0, i1 - i0, cin, -1)
      row.append(depth_to_space(_STRIDE1[stride1](slab, weights), (p1 - p0, q1 - q0)))
    rows.append(row)
  return _concat_grid(rows)


def _conv_transpose2d_scatter(x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
  r""":func:`conv_transpose2d_fast` in scatter order, products of the unpadded input.

  :math:`Z_m = \sum_j x_{m + d_{min} + j} K_j` over output blocks m; every input position
  feeds every kernel position j, so the products :math:`P_i = x_i [K_0 \dots K_{D-1}]`
  are taken once per input position, and :math:`Z_m = \sum_j P_{m + d_{min} + j}[j]`,
  with zero where ``m + d_min + j`` leaves the input (a padded shift of the products, not
  products of padding). Then depth-to-space and the crop of the "SAME" offset.
  """
  b, h, w, cin = x.shape
  sh, sw = strides
  crop_h, d_h, _ = _transpose_axis_plan(h, kernel.shape[0], sh)
  crop_w, d_w, _ = _transpose_axis_plan(w, kernel.shape[1], sw)
  sub = subpixel_kernel(kernel, strides)  # (Dh, Dw, Cin, sh·sw·Cout)
  dh, dw, _, phases = sub.shape
  products = jnp.dot(x.reshape(-1, cin), sub.transpose(2, 0, 1, 3).reshape(cin, -1))
  products = products.reshape(b, h, w, dh, dw, phases)
  blocks_h, blocks_w = h + (crop_h > 0), w + (crop_w > 0)
  z = None
  for j in range(dh):
    for i in range(dw):
      r0, r1 = d_h + j, blocks_h + d_h + j  # input rows of blocks 0 .. blocks_h − 1
      c0, c1 = d_w + i, blocks_w + d_w + i
      part = products[:, max(r0, 0): min(r1, h), max(c0, 0): min(c1, w), j, i]
      part = jnp.pad(part, ((0, 0), (max(-r0, 0), max(r1 - h, 0)), (max(-c0, 0), max(c1 - w, 0)),
                            (0, 0)))
      z = part if z is None else z + part
  y = depth_to_space(z, strides)
  return y[:, crop_h: crop_h + sh * h, crop_w: crop_w + sw * w]


def conv_transpose2d_fast(
    x: Array, kernel: Array, strides: tuple[int, int], stride1: str = "fast"
) -> Array:
  """:func:`conv_transpose2d_textbook` as stride-1 conv + depth-to-space (see module doc).

  ``stride1`` as in :func:`conv2d_fast`: "fast" evaluates in gather order region by region
  of output blocks (:func:`_conv_transpose2d_regions`), or in scatter order
  (:func:`_conv_transpose2d_scatter`) when Cin > sh·sw·Cout; "fast_lax" runs the regions
  with :func:`conv2d_valid_lax`.
  """
  if strides == (1, 1):
    return conv_transpose2d_textbook(x, kernel, strides)
  if stride1 == "fast" and x.shape[-1] > strides[0] * strides[1] * kernel.shape[-1]:
    return _conv_transpose2d_scatter(x, kernel, strides)
  return _conv_transpose2d_regions(x, kernel, strides, stride1)


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

"""The dSprites renderer: a pure JAX function from factor classes to 64 x 64 images.

The renderer evaluates each sprite's inside-test at the pixel centres in the
sprite's rotated and scaled frame, so it is a pure, jit- and vmap-able function
of the classes. Its geometry was fitted to the 320 real frames of DeepMind's
``dsprites.gif`` (the README's data section says how close it is).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax.data.dsprites.grid import GT_FACTOR_SIZES, IMAGE_SIZE, as_classes

# Geometry at scale 1, in pixels of the 64 x 64 image, fitted to the real frames.
# The sprite centre moves from 16 to 48 px (pixel edges at integers) as the
# position goes 0 -> 1, i.e. 32/31 px per class step.
POSITION_OFFSET = 16.0
POSITION_SPAN = 32.0
SQUARE_HALF_SIDE = 9.6  # 19.2 px side: 20 x 20 px when axis-aligned.
ELLIPSE_SEMI_AXES = (12.75, 7.225)  # ~1.76 : 1, major axis horizontal at orientation 0.
# Heart: two mirrored "cones", each the convex hull of a lobe disc (radius r,
# centre (+-dx, dy)) and the tip (0, -tip); y points up, the tip down.
HEART_LOBE_RADIUS = 5.125
HEART_LOBE_CENTRE = (4.675, 3.96)
HEART_TIP = 8.69


def _heart_inside(u: jax.Array, v: jax.Array) -> jax.Array:
  """Inside-test of the heart in its own frame (scale 1 pixels, y up).

  Each half is the cone hull(disc(c, r) U {p}) = U_t disc(p + t (c - p), t r),
  t in [0, 1]; q is inside iff min_t |q - p - t (c - p)| - t r <= 0. With the
  axis a and distance b of w = q - p along/off c - p (length L) and
  sin(phi) = r / L, the minimiser is t* = (a + b tan(phi)) / L, clipped to [0, 1]
  (the objective is convex in t).
  """
  (dx, dy), r, tip = HEART_LOBE_CENTRE, HEART_LOBE_RADIUS, HEART_TIP
  vx, vy = dx, dy + tip
  length = float(np.hypot(vx, vy))
  ax, ay = vx / length, vy / length
  tan_phi = r / float(np.sqrt(length**2 - r**2))
  wx, wy = jnp.abs(u), v + tip  # |u|: the heart is mirror-symmetric.
  a = wx * ax + wy * ay
  b = jnp.abs(wy * ax - wx * ay)
  t = jnp.clip((a + b * tan_phi) / length, 0.0, 1.0)
  return jnp.hypot(wx - t * vx, wy - t * vy) <= t * r


def render_values(shape: Any, scale: Any, orientation: Any, pos_x: Any,
                  pos_y: Any) -> jax.Array:
  """Renders sprites from continuous factor values; all inputs broadcast together.

  Args:
    shape: int, 0 square, 1 ellipse, 2 heart.
    scale: size multiplier (0.5 to 1 in the dataset).
    orientation: angle in radians; positive turns the sprite counter-clockwise
      as displayed.
    pos_x: 0 (left) to 1 (right).
    pos_y: 0 (top) to 1 (bottom).

  Returns:
    bool array (..., 64, 64): pixel (i, j) is set iff its centre (j + 1/2, i + 1/2)
    lies inside the sprite. For a pixel offset (X, Y) from the sprite centre
    (Y pointing up) the sprite frame is (u, v) = R(-theta) (X, Y) / scale.
  """
  shape, scale, orientation, pos_x, pos_y = (
      jnp.asarray(x)[..., None, None] for x in (shape, scale, orientation, pos_x, pos_y))
  centres = jnp.arange(IMAGE_SIZE, dtype=jnp.float32) + 0.5
  x = centres[None, :] - (POSITION_OFFSET + POSITION_SPAN * pos_x)
  y = (POSITION_OFFSET + POSITION_SPAN * pos_y) - centres[:, None]
  cos, sin = jnp.cos(orientation), jnp.sin(orientation)
  u = (cos * x + sin * y) / scale
  v = (cos * y - sin * x) / scale
  square = jnp.maximum(jnp.abs(u), jnp.abs(v)) <= SQUARE_HALF_SIDE
  semi_a, semi_b = ELLIPSE_SEMI_AXES
  ellipse = (u / semi_a) ** 2 + (v / semi_b) ** 2 <= 1.0
  heart = _heart_inside(u, v)
  return jnp.where(shape == 0, square, jnp.where(shape == 1, ellipse, heart))


def render(classes: Any, *, channel_axis: bool = True, dtype: Any = jnp.float32) -> jax.Array:
  """Renders dSprites images from integer factor classes.

  Args:
    classes: int array (..., 6) in the DeepMind layout or (..., 5) without color.
      Concrete (host) inputs are range-checked; traced inputs are not.
    channel_axis: append a channel axis, giving NHWC (..., 64, 64, 1).
    dtype: output dtype; values are exactly 0 or 1.

  Returns:
    (..., 64, 64, 1) (or (..., 64, 64)) images. Pure and jit/vmap-able.
  """
  if isinstance(classes, jax.core.Tracer):
    if classes.ndim == 0 or classes.shape[-1] not in (5, 6):
      raise ValueError(
          f"dSprites factor classes must have shape (..., 6) or (..., 5); got {classes.shape}.")
  else:
    classes = as_classes(classes)
  classes = jnp.asarray(classes)
  shape, scale, orient, pos_x, pos_y = (classes[..., i] for i in range(-5, 0))
  images = dsprites_render(
      shape,
      0.5 + scale.astype(jnp.float32) / 10.0,  # linspace(0.5, 1, 6)
      orient.astype(jnp.float32) * (2 * np.pi / 39.0),  # linspace(0, 2 pi, 40)
      pos_x.astype(jnp.float32) / 31.0,
      pos_y.astype(jnp.float32) / 31.0)
  images = images.astype(dtype)
  return images[..., None] if channel_axis else images


@jax.jit
def dsprites_render(shape, scale, orientation, pos_x, pos_y):
  """:func:`render_values` as a named program, so the renderer is visible in the programs
  that call it (a train step's jaxpr shows ``pjit[name=dsprites_render]``); XLA inlines it."""
  return render_values(shape, scale, orientation, pos_x, pos_y)


def sample_classes(key: jax.Array, batch_size: int) -> jax.Array:
  """Ground-truth classes (batch_size, 5), each factor uniform and independent."""
  return jax.random.randint(key, (batch_size, len(GT_FACTOR_SIZES)), 0,
                            jnp.asarray(GT_FACTOR_SIZES), dtype=jnp.int32)


_render_jit = jax.jit(render)


def render_numpy(classes: Any, *, chunk: int = 1024) -> np.ndarray:
  """Host helper: renders (N, 5|6) classes to float32 (N, 64, 64, 1) numpy.

  Works in chunks padded to powers of two (at most ``chunk``), so memory stays
  bounded and only a handful of shapes is ever compiled.
  """
  arr = as_classes(classes)
  if arr.ndim != 2:
    raise ValueError(f"render_numpy expects classes of shape (N, 5|6); got {arr.shape}.")
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1; got {chunk}.")
  out = np.empty((arr.shape[0], IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
  for start in range(0, arr.shape[0], chunk):
    part = arr[start:start + chunk]
    m = len(part)
    padded = min(chunk, max(8, 1 << (m - 1).bit_length()))
    part = np.pad(part, ((0, padded - m), (0, 0))).astype(np.int32)
    out[start:start + m] = np.asarray(_render_jit(part))[:m]
  return out

"""dSprites (Matthey et al. 2017): the factor grid, a JAX renderer and the file readers.

The dataset is every combination of six factors, stored with the last factor varying
fastest::

  color (1) x shape (3: square, ellipse, heart) x scale (6) x orientation (40)
  x pos_x (32) x pos_y (32) = 737,280 images of 64 x 64 binary pixels.

Index arithmetic (DeepMind's): ``index = sum_i class_i * base_i`` with
``base = (737280, 245760, 40960, 1024, 32, 1)``.

Functions taking factor classes accept the DeepMind layout ``(..., 6)`` or the
layout without the constant colour, ``(..., 5)`` (the ground-truth factors that
disentanglement_lib uses); the last dimension tells them apart.

The renderer evaluates each sprite's inside-test at the pixel centres in the
sprite's rotated and scaled frame, so it is a pure, jit- and vmap-able function
of the classes. Its geometry was fitted to the 320 real frames of DeepMind's
``dsprites.gif`` (the README's data section says how close it is).
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax.data import files

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
NUM_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
IMAGE_SIZE = 64
SHAPE_NAMES = ("square", "ellipse", "heart")
# Ground-truth factors for the metrics: the constant colour dropped.
GT_FACTOR_NAMES = FACTOR_NAMES[1:]
GT_FACTOR_SIZES = FACTOR_SIZES[1:]
# DeepMind's bases: (737280, 245760, 40960, 1024, 32, 1).
_BASES = tuple(int(np.prod(FACTOR_SIZES[i + 1:])) for i in range(len(FACTOR_SIZES)))

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


def _as_classes(classes: Any) -> np.ndarray:
  """Validates host classes of shape (..., 6) or (..., 5) and returns int64."""
  arr = np.asarray(classes)
  if arr.ndim == 0 or arr.shape[-1] not in (5, 6):
    raise ValueError(
        f"dSprites factor classes must have shape (..., 6) (DeepMind layout "
        f"{FACTOR_NAMES}) or (..., 5) (without color); got shape {arr.shape}.")
  if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not (
      np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
    raise ValueError(f"dSprites factor classes must be integers; got dtype {arr.dtype}.")
  arr = arr.astype(np.int64)
  sizes = np.asarray(FACTOR_SIZES[-arr.shape[-1]:])
  bad = (arr < 0) | (arr >= sizes)
  if bad.any():
    col = int(np.nonzero(bad.reshape(-1, arr.shape[-1]).any(0))[0][0])
    names = FACTOR_NAMES[-arr.shape[-1]:]
    vals = np.unique(arr[..., col][bad[..., col]])[:5]
    raise ValueError(
        f"dSprites factor '{names[col]}' must be in [0, {sizes[col]}); got {vals.tolist()}.")
  return arr


def to_full_classes(classes: Any) -> np.ndarray:
  """Returns classes in the DeepMind layout (..., 6), adding color 0 if absent."""
  arr = _as_classes(classes)
  if arr.shape[-1] == 5:
    arr = np.concatenate([np.zeros(arr.shape[:-1] + (1,), np.int64), arr], axis=-1)
  return arr


def index_of(classes: Any) -> np.ndarray:
  """Row of each factor-class tuple in the original file: sum_i class_i * base_i."""
  full = to_full_classes(classes)
  return full @ np.asarray(_BASES, np.int64)


def classes_of(index: Any) -> np.ndarray:
  """Inverse of :func:`index_of`: (...,) indices -> (..., 6) classes (pos_y fastest)."""
  idx = np.asarray(index)
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"dSprites indices must be integers; got dtype {idx.dtype}.")
  if idx.size and (idx.min() < 0 or idx.max() >= NUM_IMAGES):
    raise ValueError(
        f"dSprites indices must be in [0, {NUM_IMAGES}); got range "
        f"[{idx.min()}, {idx.max()}].")
  idx = idx.astype(np.int64)
  return np.stack([(idx // b) % s for b, s in zip(_BASES, FACTOR_SIZES)], axis=-1)


def factor_values(classes: Any) -> np.ndarray:
  """Float factor values as in the original ``latents_values`` (same width as input).

  color = 1; shape in {1, 2, 3}; scale = linspace(0.5, 1, 6);
  orientation = linspace(0, 2 pi, 40) (both ends, so classes 0 and 39 coincide);
  pos_x, pos_y = linspace(0, 1, 32).
  """
  arr = _as_classes(classes)
  grids = (np.ones(1), np.arange(1.0, 4.0), np.linspace(0.5, 1.0, 6),
           np.linspace(0.0, 2 * np.pi, 40), np.linspace(0.0, 1.0, 32),
           np.linspace(0.0, 1.0, 32))[-arr.shape[-1]:]
  return np.stack([g[arr[..., i]] for i, g in enumerate(grids)], axis=-1)


# ----------------------------------------------------------------------------- renderer


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
    classes = _as_classes(classes)
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
  arr = _as_classes(classes)
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


# ----------------------------------------------------------------------------- file readers

DEEPMIND_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DEEPMIND_URL = "https://github.com/google-deepmind/dsprites-dataset"
_HOW_TO_GET = (
    f"Download {DEEPMIND_FILENAME} (or the .hdf5 variant) from {DEEPMIND_URL} and pass "
    "its path, or use the dataset name 'dsprites_procedural' (rendered on the fly, no file).")


@dataclasses.dataclass(frozen=True)
class DSpritesArrays:
  """dSprites arrays in the original layout, whatever the source.

  Attributes:
    images: (N, 64, 64) uint8 in {0, 1}; a numpy array or, for HDF5, a lazy
      h5py dataset (index it with sorted indices).
    classes: (N, 6) int64 factor classes (DeepMind layout).
    values: (N, 6) float64 factor values (``latents_values``).
    metadata: the original metadata dict (empty if the source has none).
    source: where the arrays came from, for messages.
  """

  images: Any
  classes: np.ndarray
  values: np.ndarray
  metadata: dict
  source: str


def validate_arrays(images: Any, classes: Any, values: Any, metadata: dict,
                     source: str) -> DSpritesArrays:
  """Checks shapes, ranges and the classes/values agreement; one clear error."""
  def fail(what: str) -> None:
    raise ValueError(f"{source} is not a valid dSprites file: {what}. {_HOW_TO_GET}")

  if len(images.shape) != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
    fail(f"images have shape {tuple(images.shape)}, expected (N, 64, 64)")
  n = images.shape[0]
  classes, values = np.asarray(classes), np.asarray(values)
  if classes.shape != (n, 6) or values.shape != (n, 6):
    fail(f"latents classes {classes.shape} / values {values.shape}, expected ({n}, 6) each")
  if not np.issubdtype(classes.dtype, np.integer):
    fail(f"latents classes have dtype {classes.dtype}, expected integers")
  sizes = np.asarray(FACTOR_SIZES)
  if n and ((classes < 0) | (classes >= sizes)).any():
    fail(f"latents classes outside the factor sizes {FACTOR_SIZES}")
  if n and not np.allclose(values, factor_values(classes), atol=1e-4):
    col = int(np.nonzero(~np.isclose(values, factor_values(classes), atol=1e-4).all(0))[0][0])
    fail(f"latents values disagree with the classes in column '{FACTOR_NAMES[col]}'")
  sample = np.asarray(images[:min(n, 4096)])  # a lazy HDF5 dataset is checked on a prefix
  if sample.size and (sample.min() < 0 or sample.max() > 1):
    fail(f"image values span [{sample.min()}, {sample.max()}], expected {{0, 1}}")
  sizes_meta = metadata.get("latents_sizes")
  if sizes_meta is not None and tuple(np.asarray(sizes_meta).tolist()) != FACTOR_SIZES:
    fail(f"metadata latents_sizes {np.asarray(sizes_meta).tolist()} != {list(FACTOR_SIZES)}")
  return DSpritesArrays(images, classes.astype(np.int64), values.astype(np.float64),
                        metadata, source)


def load_deepmind_file(path: str | Path) -> DSpritesArrays:
  """Reads DeepMind's dSprites npz or HDF5 file (format detected from its bytes).

  npz: ``imgs``, ``latents_classes``, ``latents_values`` and a latin1-pickled
  ``metadata`` dict. HDF5: ``imgs``, ``latents/classes``, ``latents/values``
  (images stay on disk and are read on demand).

  Raises:
    FileNotFoundError: no file at ``path`` (says how to get it).
    ValueError: unreadable file, missing keys, wrong shapes or values.
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"No dSprites file at {path.resolve()}. {_HOW_TO_GET}")
  with open(path, "rb") as f:
    magic = f.read(8)
  if magic.startswith(b"PK"):
    try:
      data = np.load(path, allow_pickle=True, encoding="latin1")
      keys = set(data.files)
      missing = {"imgs", "latents_classes", "latents_values"} - keys
      if missing:
        raise ValueError(
            f"{path} is not a DeepMind dSprites npz: missing keys {sorted(missing)} "
            f"(found {sorted(keys)}). {_HOW_TO_GET}")
      metadata = {}
      if "metadata" in keys:
        meta = data["metadata"]
        metadata = meta.item() if meta.dtype == object and meta.shape == () else {}
      images = data["imgs"]
      return validate_arrays(images, data["latents_classes"], data["latents_values"],
                              dict(metadata), str(path))
    except (zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError) as e:
      raise ValueError(f"Could not read {path} as a dSprites npz ({e}). {_HOW_TO_GET}") from e
  if magic.startswith(b"\x89HDF"):
    import h5py  # pylint: disable=g-import-not-at-top  # optional dependency

    try:
      h5 = h5py.File(path, "r")
    except OSError as e:
      raise ValueError(f"Could not read {path} as HDF5 ({e}). {_HOW_TO_GET}") from e
    for key in ("imgs", "latents/classes", "latents/values"):
      if key not in h5:
        found = []
        h5.visit(found.append)
        raise ValueError(
            f"{path} is not a DeepMind dSprites HDF5 file: missing '{key}' "
            f"(found {sorted(found)}). {_HOW_TO_GET}")
    return validate_arrays(h5["imgs"], h5["latents/classes"][()], h5["latents/values"][()],
                            {}, str(path))
  raise ValueError(
      f"{path} is not an npz file (nor HDF5): it holds {files.describe(magic)} (first bytes "
      f"{magic!r}); expected DeepMind's dSprites npz (a zip of .npy arrays) or its HDF5 file. "
      f"{_HOW_TO_GET}")

r"""Animated latent traversals (disentanglement_lib-style GIFs).

Each latent dimension gets one panel of a grid; frame f of the GIF decodes a base
code with that one dimension replaced by the f-th value of a *cycle*: starting at
the base value, rising to the top of a range, falling to its bottom and rising back,
in ``num_frames`` equal steps of a triangle wave ``tri(u) = 1 - |1 - (u mod 2)|``
over ``u_f = u_0 + 2 f / F``, so the animation loops smoothly. Two ranges:

* prior: the standard Gaussian's quantiles, :math:`z = \Phi^{-1}(p)` with p
  cycling over [0.001, 0.999] from :math:`p_0 = \Phi(\mu_d)` (dlib's
  ``std_gaussian_cycle``);
* posterior: :math:`[\mu_d - 2\sigma_d, \mu_d + 2\sigma_d]` around the image's own
  encoding :math:`q(z|x) = N(\mu, \sigma^2)`, starting at :math:`\mu_d`.

Panels are laid out row-major in decreasing order of the mean KL of their
dimension, so the informative dimensions come first; a thin bar under the grid
fills up as the cycle proceeds (it also keeps consecutive frames distinct, which
stops Pillow from merging frames of a still decoder). The GIF's comment names
the panels in order. The arrays are made by pure functions (:func:`prior_sweep`,
:func:`posterior_sweep`, :func:`traversal_frames`, :func:`grid_frames`);
:func:`write_traversal_gifs` runs a model and writes ``traversal_prior.gif`` and
``traversal_posterior.gif``.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from PIL import Image

from vaejax import distributions
from vaejax.figures.grids import PAD_VALUE
from vaejax.models import codec
from vaejax.utils import files, stopping
from vaejax.utils.checks import check_int

PRIOR_GIF = "traversal_prior.gif"
POSTERIOR_GIF = "traversal_posterior.gif"
QUANTILE_CLIP = 0.001  # dlib keeps the cycled probabilities in [0.001, 0.999]
_BAR_HEIGHT = 3

_STANDARD_NORMAL = statistics.NormalDist()


def _check_frames(num_frames: int) -> int:
  return check_int(num_frames, "num_frames", minimum=2)


def triangle_cycle(start: Any, num_frames: int) -> np.ndarray:
  """``(F, *start.shape)`` one loop of a triangle wave in [0, 1] that begins at ``start``.

  Frame f is ``tri(start + 2 f / F)`` with ``tri(u) = 1 - |1 - (u mod 2)|``: from
  ``start`` up to 1, down to 0 and back up towards ``start`` (reached again at
  frame F, i.e. when the GIF loops).
  """
  num_frames = _check_frames(num_frames)
  start = np.clip(np.asarray(start, np.float64), 0.0, 1.0)
  u = start[None] + 2.0 * np.arange(num_frames).reshape((-1,) + (1,) * start.ndim) / num_frames
  return 1.0 - np.abs(1.0 - np.mod(u, 2.0))


def prior_sweep(base_code: Any, num_frames: int = 20) -> np.ndarray:
  """``(F, d)`` values cycling through N(0, 1)'s quantiles, each dimension from its base value.

  ``Phi^{-1}(clip(tri(Phi(mu_d) + 2 f / F), 0.001, 0.999))``.
  """
  base = _check_code(base_code, "base_code")
  start = np.array([_STANDARD_NORMAL.cdf(float(v)) for v in base])
  p = np.clip(triangle_cycle(start, num_frames), QUANTILE_CLIP, 1.0 - QUANTILE_CLIP)
  return np.vectorize(_STANDARD_NORMAL.inv_cdf)(p)


def posterior_sweep(mean: Any, std: Any, num_frames: int = 20, width: float = 2.0) -> np.ndarray:
  """``(F, d)`` values cycling through ``[mean - width std, mean + width std]``, from ``mean``."""
  mean = _check_code(mean, "mean")
  std = np.asarray(std, np.float64)
  if std.shape != mean.shape or not np.all(np.isfinite(std)) or np.any(std < 0):
    raise ValueError(f"std must be finite, >= 0 and shaped like mean {mean.shape}, got "
                     f"shape {std.shape}.")
  if not np.isfinite(width) or width <= 0:
    raise ValueError(f"width must be a finite number > 0, got {width!r}.")
  low = mean - width * std
  return low[None] + 2.0 * width * std[None] * triangle_cycle(np.full(mean.shape, 0.5),
                                                               num_frames)


def _check_code(code: Any, name: str) -> np.ndarray:
  arr = np.asarray(code, np.float64)
  if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must be a finite (d,) vector with d >= 1, got shape {arr.shape}.")
  return arr


def kl_order(kl_per_dim: Any, max_dims: int | None = None) -> np.ndarray:
  """Dimensions by decreasing KL (ties: lower index first), at most ``max_dims`` of them."""
  kl = np.asarray(kl_per_dim, np.float64)
  if kl.ndim != 1 or not np.all(np.isfinite(kl)):
    raise ValueError(f"kl_per_dim must be a finite (d,) vector, got shape {kl.shape}.")
  if max_dims is not None:
    check_int(max_dims, "max_dims (None = all)", minimum=1)
  return np.argsort(-kl, kind="stable")[:max_dims]


def traversal_frames(decode_fn: Callable[[np.ndarray], Any], base_code: Any, sweep: Any,
                     dims: Sequence[int]) -> np.ndarray:
  """Decodes every (frame, panel) code in one call; returns ``(F, P, H, W, C)`` in [0, 1].

  Panel p, frame f decodes ``base_code`` with dimension ``dims[p]`` set to
  ``sweep[f, dims[p]]``.

  Args:
    decode_fn: ``codes (B, d) -> images (B, H, W, C)``.
    base_code: ``(d,)``.
    sweep: ``(F, d)`` values, e.g. from :func:`prior_sweep` or :func:`posterior_sweep`.
    dims: the dimension of each panel.
  """
  base = _check_code(base_code, "base_code")
  sweep = np.asarray(sweep, np.float64)
  if sweep.ndim != 2 or sweep.shape[1] != base.size or not np.all(np.isfinite(sweep)):
    raise ValueError(f"sweep must be a finite (num_frames, {base.size}) array, got shape "
                     f"{sweep.shape}.")
  dims = np.asarray(dims, np.int64).reshape(-1)
  if dims.size == 0 or dims.min() < 0 or dims.max() >= base.size:
    raise ValueError(f"dims must be a non-empty list of indices in [0, {base.size}), got "
                     f"{dims.tolist()}.")
  num_frames = sweep.shape[0]
  codes = np.repeat(base[None, None], num_frames * dims.size, axis=0).reshape(
      num_frames, dims.size, base.size)
  codes[:, np.arange(dims.size), dims] = sweep[:, dims]
  images = np.asarray(decode_fn(codes.reshape(-1, base.size).astype(np.float32)), np.float32)
  if images.ndim != 4 or images.shape[0] != codes.shape[0] * codes.shape[1] or (
      images.shape[-1] not in (1, 3)):
    raise ValueError(f"decode_fn must return (B, H, W, C) images with C in {{1, 3}}, got shape "
                     f"{images.shape}.")
  return np.clip(images, 0.0, 1.0).reshape(num_frames, dims.size, *images.shape[1:])


def grid_frames(frames: Any, ncols: int | None = None, upscale: int = 1, pad: int = 2,
                progress_bar: bool = True) -> np.ndarray:
  """Tiles ``(F, P, H, W, C)`` panels into ``(F, H', W', C)`` uint8 frames.

  Panels go row-major into ``ceil(P / ncols)`` rows (``ncols`` default
  ``ceil(sqrt(P))``), each upscaled ``upscale`` times (nearest neighbour), with
  ``pad`` grey pixels between and around them; unused cells stay grey. With
  ``progress_bar`` a bar of 3 rows below the grid is white over its first
  ``round((f + 1) W' / F)`` columns in frame f.
  """
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 5 or frames.shape[-1] not in (1, 3):
    raise ValueError(f"frames must be (num_frames, panels, H, W, C) with C in {{1, 3}}, got "
                     f"shape {frames.shape}.")
  num_frames, panels, h, w, c = frames.shape
  ncols = math.ceil(math.sqrt(panels)) if ncols is None else ncols
  for name, value, low in (("ncols", ncols, 1), ("upscale", upscale, 1), ("pad", pad, 0)):
    check_int(value, name, minimum=low)
  ncols = min(ncols, panels)
  nrows = math.ceil(panels / ncols)
  big = np.repeat(np.repeat(np.clip(frames, 0.0, 1.0), upscale, axis=2), upscale, axis=3)
  ph, pw = h * upscale, w * upscale
  height = nrows * (ph + pad) + pad
  width = ncols * (pw + pad) + pad
  bar = _BAR_HEIGHT + pad if progress_bar else 0
  out = np.full((num_frames, height + bar, width, c), PAD_VALUE, np.float32)
  for p in range(panels):
    r, k = divmod(p, ncols)
    top, left = pad + r * (ph + pad), pad + k * (pw + pad)
    out[:, top:top + ph, left:left + pw] = big[:, p]
  if progress_bar:
    out[:, height:height + _BAR_HEIGHT] = 0.0
    for f in range(num_frames):
      out[f, height:height + _BAR_HEIGHT, :round((f + 1) * width / num_frames)] = 1.0
  return np.round(out * 255.0).astype(np.uint8)


def save_gif(frames: Any, path: str | os.PathLike, fps: float = 10.0,
             comment: str | None = None) -> Path:
  """Writes ``(F, H, W[, C])`` uint8 frames as a looping GIF (creating folders; atomically,
  :func:`vaejax.utils.files.atomic_open`); returns its path.

  Pillow merges a frame identical to the one before it into that frame (adding up
  their durations); :func:`grid_frames`' progress bar keeps every frame distinct.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[0] < 1:
    raise ValueError(f"frames must be uint8 (num_frames, H, W[, C]), got {frames.dtype} "
                     f"{frames.shape}.")
  if not np.isfinite(fps) or fps <= 0:
    raise ValueError(f"fps must be a number > 0, got {fps!r}.")
  if frames.ndim == 4:
    frames = frames[..., 0] if frames.shape[-1] == 1 else frames
  images = [Image.fromarray(f) for f in frames]
  path = Path(path)
  stopping.check(f"writing {path.name}")
  extra = {"comment": comment} if comment else {}
  with files.atomic_open(path, "wb") as f:
    images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0, **extra)
  return path


def write_traversal_gifs(
    model: Any,
    params: Any,
    image: Any,
    out_dir: str | os.PathLike,
    kl_per_dim: Sequence[float] | None = None,
    num_frames: int = 20,
    *,
    label: int | None = None,
    max_dims: int | None = None,
    ncols: int | None = None,
    upscale: int | None = None,
    fps: float = 10.0,
) -> dict[str, Path]:
  """Writes ``traversal_prior.gif`` and ``traversal_posterior.gif`` for one image.

  Args:
    model, params: a VAE (``encode`` / ``decode`` methods, e.g. from
      :func:`vaejax.models.create_model`) and its parameters; for a stack of
      models call this once per model's parameters.
    image: ``(H, W, C)``, or ``(N, H, W, C)`` whose first image is the base (all N
      set the KL order when ``kl_per_dim`` is None), in [0, 1].
    out_dir: the folder for the GIFs (created).
    kl_per_dim: ``(d,)`` mean KL per dimension (e.g. the training log's, over the
      data) to order the panels; None = the mean KL over ``image``.
    num_frames: frames per cycle (dlib: 20).
    label: the class of the image, for a conditional VAE (decoded with it).
    max_dims: keep only this many dimensions of largest KL.
    ncols: panels per row (default ``ceil(sqrt(P))``).
    upscale: integer zoom of each panel (default: up to ~64 px).
    fps: frames per second.

  Returns:
    ``{"prior": path, "posterior": path}``.
  """
  images = _check_image_stack(image)
  labels = None if label is None else jnp.full((images.shape[0],), label, jnp.int32)
  mean, log_var = codec.encode(model, params, jnp.asarray(images), labels)
  mean, log_var = np.asarray(mean, np.float64), np.asarray(log_var, np.float64)
  kl_per_dim = _kl_per_dim(kl_per_dim, mean, log_var)
  dims = kl_order(kl_per_dim, max_dims)

  def decode(z):
    stopping.check()  # a stop signal ends the GIFs between two decodings
    y = None if label is None else jnp.full((z.shape[0],), label, jnp.int32)
    return codec.decode_mean(model, params, jnp.asarray(z), y)

  if upscale is None:
    upscale = max(1, 64 // max(images.shape[1:3]))
  comment = "panels (row-major): " + ", ".join(
      f"z{d} (KL {kl_per_dim[d]:.2f})" for d in dims)
  sweeps = {
      "prior": prior_sweep(mean[0], num_frames),
      "posterior": posterior_sweep(mean[0], np.exp(0.5 * log_var[0]), num_frames),
  }
  names = {"prior": PRIOR_GIF, "posterior": POSTERIOR_GIF}
  return {kind: save_gif(grid_frames(traversal_frames(decode, mean[0], sweep, dims), ncols,
                                     upscale),
                         Path(out_dir) / names[kind], fps, comment=f"{kind} traversal; {comment}")
          for kind, sweep in sweeps.items()}


def _kl_per_dim(kl_per_dim: Any, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
  """``kl_per_dim`` checked against the codes' width; None = the mean KL over the codes."""
  if kl_per_dim is None:
    kl_per_dim = np.asarray(distributions.kl_standard_normal(mean, log_var)).mean(axis=0)
  kl_per_dim = np.asarray(kl_per_dim, np.float64)
  if kl_per_dim.shape != (mean.shape[1],):
    raise ValueError(f"kl_per_dim must have shape ({mean.shape[1]},), got {kl_per_dim.shape}.")
  return kl_per_dim


def _check_image_stack(image: Any) -> np.ndarray:
  """``image`` as float32 ``(N, H, W, C)`` in [0, 1] (one image gets a batch axis)."""
  images = np.asarray(image, np.float32)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[0] < 1:
    raise ValueError(f"image must be (H, W, C) or (N, H, W, C), got shape {np.shape(image)}.")
  if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
    raise ValueError("image must be finite and in [0, 1].")
  return images


def read_gif(path: str | os.PathLike) -> np.ndarray:
  """The frames of a GIF as ``(F, H, W)`` (grey) or ``(F, H, W, 3)`` uint8 (for checks)."""
  with Image.open(path) as gif:
    frames = []
    for index in range(gif.n_frames):
      gif.seek(index)
      frame = gif.convert("RGB")
      frames.append(np.asarray(frame))
  out = np.stack(frames)
  if np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2]):
    return out[..., 0]
  return out

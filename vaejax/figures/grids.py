"""Image grids and plots: pure functions from arrays to matplotlib figures, and saving them.

The ``plot_*`` functions take arrays (images NHWC in [0, 1]) and return a matplotlib
``Figure``: reconstructions, prior samples, latent traversals, interpolations, the KL per
latent dimension, class-conditional samples, style transfer, latent arithmetic,
temperature samples and the KL per level over training. :func:`save_figure` writes one
as a PNG atomically (:func:`vaejax.utils.files.atomic_open`). Nothing here runs a model:
:mod:`vaejax.figures.model_figures` makes the arrays from a model's parameters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from vaejax.utils import files, stopping

Figure = matplotlib.figure.Figure

PAD_VALUE = 0.5  # grey separators stay visible on black and on white images
_CELL_INCHES = 0.9


def check_images(images: Any, ndim: int, name: str) -> np.ndarray:
  """``images`` as float32 clipped to [0, 1], or a ValueError if not ``ndim``-d ending in
  (H, W, C) with C in {1, 3}."""
  images = np.asarray(images, np.float32)
  if images.ndim != ndim or images.shape[-1] not in (1, 3):
    raise ValueError(
        f"{name} must be a {ndim}-d array ending in (H, W, C) with C in {{1, 3}}; "
        f"got shape {images.shape}."
    )
  return np.clip(images, 0.0, 1.0)


def tile_images(grid: Any, pad: int = 1, pad_value: float = PAD_VALUE) -> np.ndarray:
  """Tiles a (rows, cols, H, W, C) array into one (rows·(H+pad)−pad, cols·(W+pad)−pad, C) image."""
  grid = np.asarray(grid, np.float32)
  rows, cols, h, w, c = grid.shape
  out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, np.float32)
  for r in range(rows):
    for k in range(cols):
      out[r * (h + pad): r * (h + pad) + h, k * (w + pad): k * (w + pad) + w] = grid[r, k]
  return out


def _show_grid(grid: np.ndarray, title: str, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None) -> Figure:
  rows, cols, h, w, _ = grid.shape
  tiled = tile_images(grid)
  label_space = 1.4 if row_labels else 0.2
  fig = plt.figure(figsize=(cols * _CELL_INCHES + label_space, rows * _CELL_INCHES + 0.8))
  ax = fig.add_subplot(1, 1, 1)
  if tiled.shape[-1] == 1:
    ax.imshow(tiled[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  else:
    ax.imshow(tiled, interpolation="nearest")
  ax.set_title(title, fontsize=11)
  ax.set_yticks([r * (h + 1) + h / 2 for r in range(rows)] if row_labels else [])
  if row_labels:
    ax.set_yticklabels(row_labels, fontsize=9)
  ax.set_xticks([k * (w + 1) + w / 2 for k in range(cols)] if col_labels else [])
  if col_labels:
    ax.set_xticklabels(col_labels, fontsize=8)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  fig.tight_layout()
  return fig


def plot_reconstructions(inputs: Any, reconstructions: Any, ncols: int = 8) -> Figure:
  """Inputs and their reconstructions in alternating rows (input row above its reconstruction).

  Args:
    inputs, reconstructions: (N, H, W, C) in [0, 1], same shape.
    ncols: images per row.
  """
  inputs = check_images(inputs, 4, "inputs")
  reconstructions = check_images(reconstructions, 4, "reconstructions")
  if inputs.shape != reconstructions.shape:
    raise ValueError(
        f"inputs {inputs.shape} and reconstructions {reconstructions.shape} must match."
    )
  n = inputs.shape[0]
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  blank = np.full(inputs.shape[1:], PAD_VALUE, np.float32)
  rows, labels = [], []
  for r in range(nrows):
    chunk = slice(r * ncols, (r + 1) * ncols)
    for source, label in ((inputs, "input"), (reconstructions, "reconstruction")):
      row = list(source[chunk]) + [blank] * (ncols - len(source[chunk]))
      rows.append(np.stack(row))
      labels.append(label)
  return _show_grid(np.stack(rows), "Reconstructions (decoded posterior means)", labels)


def plot_samples(samples: Any, ncols: int = 8, title: str = "Samples from the prior") -> Figure:
  """A grid of images, e.g. decoder means of z ~ N(0, I)."""
  samples = check_images(samples, 4, "samples")
  n = samples.shape[0]
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  padded = np.full((nrows * ncols, *samples.shape[1:]), PAD_VALUE, np.float32)
  padded[:n] = samples
  return _show_grid(padded.reshape(nrows, ncols, *samples.shape[1:]), title)


def plot_traversals(
    images: Any, values: Any, dims: Sequence[int], kl: Sequence[float] | None = None
) -> Figure:
  """Latent traversals: row *k* varies latent ``dims[k]`` over ``values``, others fixed.

  Args:
    images: (K, S, H, W, C) decoded images, one row per traversed dimension.
    values: (S,) the values the dimension takes.
    dims: (K,) the latent index of each row.
    kl: (K,) optional mean KL (nats) of each row's dimension, shown in its label.
  """
  images = check_images(images, 5, "images")
  values = np.asarray(values)
  if len(dims) != images.shape[0] or values.shape != (images.shape[1],):
    raise ValueError(
        f"Need one dim per row and one value per column: images {images.shape}, "
        f"dims {len(dims)}, values {values.shape}."
    )
  if kl is not None:
    labels = [f"z{d}  KL {k:.2f}" for d, k in zip(dims, kl)]
  else:
    labels = [f"z{d}" for d in dims]
  return _show_grid(
      images, "Latent traversals (rows sorted by KL, nats)", labels, [f"{v:+.1f}" for v in values]
  )


def plot_interpolation(images: Any, inputs: Any | None = None) -> Figure:
  """Rows of decoded images along a straight line between two inputs' latent means.

  Args:
    images: (P, S, H, W, C), one row of S steps per pair.
    inputs: optional (P, 2, H, W, C) the two inputs of each pair, drawn at the row ends.
  """
  images = check_images(images, 5, "images")
  steps = images.shape[1]
  cols = [f"{t:.2f}" for t in np.linspace(0.0, 1.0, steps)]
  if inputs is not None:
    inputs = check_images(inputs, 5, "inputs")
    images = np.concatenate([inputs[:, :1], images, inputs[:, 1:]], axis=1)
    cols = ["input A", *cols, "input B"]
  return _show_grid(images, "Interpolation between two inputs (latent means, t = 0 → 1)",
                    col_labels=cols)


def plot_kl_per_dim(kl: Any, threshold: float = 0.1) -> Figure:
  """Bar chart of the mean KL of each latent dimension (nats); dims below ``threshold`` grey.

  A dimension carrying less than ~0.1 nat is collapsed to the prior for practical purposes.
  """
  kl = np.asarray(kl, np.float64)
  if kl.ndim != 1:
    raise ValueError(f"kl must be a (d,) vector, got shape {kl.shape}.")
  d = kl.shape[0]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * d + 1.5), 3.2))
  colors = ["tab:blue" if v > threshold else "lightgrey" for v in kl]
  ax.bar(np.arange(d), kl, color=colors)
  for i, v in enumerate(kl):
    ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
  ax.set_xticks(np.arange(d))
  ax.set_xticklabels([f"z{i}" for i in range(d)], fontsize=8)
  ax.set_ylabel("mean KL (nats)")
  ax.set_title(f"KL per latent dimension (total {kl.sum():.2f} nats; "
               f"{int((kl > threshold).sum())}/{d} above {threshold:g} nats)", fontsize=10)
  ax.spines[["top", "right"]].set_visible(False)
  fig.tight_layout()
  return fig


def plot_class_conditional_samples(images: Any) -> Figure:
  """Class-conditional samples: row = class, column = one z shared by the whole column.

  Args:
    images: (num_classes, S, H, W, C): ``images[c, s]`` decodes ``(z_s, class c)``, so a
      column shows one style written as every class.
  """
  images = check_images(images, 5, "images")
  return _show_grid(images, "Class-conditional samples (rows: class; columns: one z each)",
                    [f"class {c}" for c in range(images.shape[0])])


def plot_style_transfer(inputs: Any, transferred: Any) -> Figure:
  """Style transfer: each row encodes one input with its label, decodes it with every label.

  Args:
    inputs: (N, H, W, C) the inputs.
    transferred: (N, num_classes, H, W, C) decodings of each input's z with each class.
  """
  inputs = check_images(inputs, 4, "inputs")
  transferred = check_images(transferred, 5, "transferred")
  if transferred.shape[0] != inputs.shape[0] or transferred.shape[2:] != inputs.shape[1:]:
    raise ValueError(
        f"transferred {transferred.shape} must be (N, classes, H, W, C) for inputs "
        f"{inputs.shape}."
    )
  grid = np.concatenate([inputs[:, None], transferred], axis=1)
  cols = ["input"] + [str(c) for c in range(transferred.shape[1])]
  return _show_grid(grid, "Style transfer: z of the input (with its label), decoded per class",
                    col_labels=cols)


def plot_latent_arithmetic(inputs: Any, decoded: Any, alphas: Sequence[float], title: str,
                           row_labels: Sequence[str] | None = None,
                           reference: Any | None = None) -> Figure:
  """Latent arithmetic: each row is an input, then its code plus α·v decoded for each α.

  Args:
    inputs: (N, H, W, C) the query images.
    decoded: (N, A, H, W, C): ``decoded[n, a]`` decodes ``μ(inputs[n]) + alphas[a]·v``
      (α = 0 is the plain reconstruction).
    alphas: (A,) the multiples of the attribute vector.
    title: what v is, e.g. "z + α (mean z of 7s − mean z of 1s)".
    row_labels: (N,) optional labels, e.g. each input's class.
    reference: optional (H, W, C) image drawn first, in a row of its own (e.g. the
      image whose style is added).
  """
  inputs = check_images(inputs, 4, "inputs")
  decoded = check_images(decoded, 5, "decoded")
  alphas = [float(a) for a in alphas]
  if decoded.shape[0] != inputs.shape[0] or decoded.shape[1] != len(alphas) or (
      decoded.shape[2:] != inputs.shape[1:]):
    raise ValueError(f"decoded {decoded.shape} must be (N, len(alphas)={len(alphas)}, H, W, C) "
                     f"for inputs {inputs.shape}.")
  if row_labels is not None and len(row_labels) != inputs.shape[0]:
    raise ValueError(f"row_labels needs one label per input ({inputs.shape[0]}), got "
                     f"{len(row_labels)}.")
  grid = np.concatenate([inputs[:, None], decoded], axis=1)
  labels = list(row_labels) if row_labels is not None else None
  if reference is not None:
    reference = check_images(np.asarray(reference)[None], 4, "reference")
    if reference.shape[1:] != inputs.shape[1:]:
      raise ValueError(f"reference {reference.shape[1:]} must be shaped like the inputs "
                       f"{inputs.shape[1:]}.")
    first = np.full((1, *grid.shape[1:]), PAD_VALUE, np.float32)
    first[0, 0] = reference[0]
    grid = np.concatenate([first, grid])
    labels = ["reference", *(labels or [""] * inputs.shape[0])]
  cols = ["input"] + [f"α={a:g}" for a in alphas]
  return _show_grid(grid, title, labels, cols)


def plot_temperature_samples(samples: Any, temperatures: Sequence[float]) -> Figure:
  """One row of ancestral samples per temperature."""
  samples = check_images(samples, 5, "samples")
  return _show_grid(samples, "Ancestral samples by temperature (prior std × T)",
                    row_labels=[f"T = {t:g}" for t in temperatures])


def plot_kl_per_level(steps: Sequence[int], kl_per_level: Any) -> Figure:
  """KL per stochastic level (nats) over training, level 1 (next to the data) first."""
  kl = np.asarray(kl_per_level, np.float64)
  if kl.ndim != 2 or kl.shape[0] != len(steps) or kl.shape[0] == 0:
    raise ValueError(f"kl_per_level must be (steps, levels) with {len(steps)} steps; got "
                     f"{kl.shape}.")
  fig, ax = plt.subplots(figsize=(6.0, 3.8))
  for level in range(kl.shape[1]):
    ax.plot(steps, kl[:, level], label=f"level {level + 1}")
  ax.set_xlabel("step")
  ax.set_ylabel("KL (nats, training batch)")
  ax.set_title("KL per level over training", fontsize=10)
  ax.legend(fontsize=8)
  ax.spines[["top", "right"]].set_visible(False)
  fig.tight_layout()
  return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
  """Saves ``fig`` as a PNG (creating folders; atomically: a killed process leaves the old
  file or the new one, never half) and closes it. A pending stop signal ends the figures
  here, between two files (:func:`vaejax.utils.stopping.check`)."""
  path = Path(path)
  try:
    stopping.check(f"writing {path.name}")
    with files.atomic_open(path, "wb") as f:
      fig.savefig(f, dpi=dpi, format="png")
  finally:
    plt.close(fig)
  return path

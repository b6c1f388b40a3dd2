"""Figures of a trained VAE: reconstructions, prior samples, latent traversals,
interpolations, the KL per latent dimension and latent arithmetic.

The ``plot_*`` functions are pure: they take arrays (images NHWC in [0, 1]) and return a
matplotlib ``Figure``. :func:`figure_arrays` runs a model to produce those arrays and
:func:`write_figures` saves the PNGs; :func:`class_arithmetic_arrays` (class offsets in an
unconditional VAE, e.g. MNIST) and :func:`style_arithmetic_arrays` (style offsets in a
conditional VAE) do the same for the arithmetic figures. Nothing here trains or reads a
checkpoint. Animated traversals (GIFs) live in :mod:`vaejax.animation`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from vaejax import distributions

Figure = matplotlib.figure.Figure

_PAD_VALUE = 0.5  # grey separators stay visible on black and on white images
_CELL_INCHES = 0.9


def _check_images(images: Any, ndim: int, name: str) -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.ndim != ndim or images.shape[-1] not in (1, 3):
    raise ValueError(
        f"{name} must be a {ndim}-d array ending in (H, W, C) with C in {{1, 3}}; "
        f"got shape {images.shape}."
    )
  return np.clip(images, 0.0, 1.0)


def tile_images(grid: Any, pad: int = 1, pad_value: float = _PAD_VALUE) -> np.ndarray:
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
  inputs = _check_images(inputs, 4, "inputs")
  reconstructions = _check_images(reconstructions, 4, "reconstructions")
  if inputs.shape != reconstructions.shape:
    raise ValueError(
        f"inputs {inputs.shape} and reconstructions {reconstructions.shape} must match."
    )
  n = inputs.shape[0]
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  blank = np.full(inputs.shape[1:], _PAD_VALUE, np.float32)
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
  samples = _check_images(samples, 4, "samples")
  n = samples.shape[0]
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  padded = np.full((nrows * ncols, *samples.shape[1:]), _PAD_VALUE, np.float32)
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
  images = _check_images(images, 5, "images")
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
  images = _check_images(images, 5, "images")
  steps = images.shape[1]
  cols = [f"{t:.2f}" for t in np.linspace(0.0, 1.0, steps)]
  if inputs is not None:
    inputs = _check_images(inputs, 5, "inputs")
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
  images = _check_images(images, 5, "images")
  return _show_grid(images, "Class-conditional samples (rows: class; columns: one z each)",
                    [f"class {c}" for c in range(images.shape[0])])


def plot_style_transfer(inputs: Any, transferred: Any) -> Figure:
  """Style transfer: each row encodes one input with its label, decodes it with every label.

  Args:
    inputs: (N, H, W, C) the inputs.
    transferred: (N, num_classes, H, W, C) decodings of each input's z with each class.
  """
  inputs = _check_images(inputs, 4, "inputs")
  transferred = _check_images(transferred, 5, "transferred")
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
  inputs = _check_images(inputs, 4, "inputs")
  decoded = _check_images(decoded, 5, "decoded")
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
    reference = _check_images(np.asarray(reference)[None], 4, "reference")
    if reference.shape[1:] != inputs.shape[1:]:
      raise ValueError(f"reference {reference.shape[1:]} must be shaped like the inputs "
                       f"{inputs.shape[1:]}.")
    first = np.full((1, *grid.shape[1:]), _PAD_VALUE, np.float32)
    first[0, 0] = reference[0]
    grid = np.concatenate([first, grid])
    labels = ["reference", *(labels or [""] * inputs.shape[0])]
  cols = ["input"] + [f"α={a:g}" for a in alphas]
  return _show_grid(grid, title, labels, cols)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
  """Saves ``fig`` as a PNG (creating folders; atomically: a killed process leaves the old
  file or the new one, never half) and closes it."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  fig.savefig(tmp, dpi=dpi, format="png")
  plt.close(fig)
  tmp.replace(path)
  return path


# ----------------------------------------------------------------------------- model layer


def figure_arrays(
    model: Any,
    params: Any,
    images: Any,
    key: jax.Array,
    *,
    labels: Any | None = None,
    num_classes: int | None = None,
    kl_per_dim: Sequence[float] | None = None,
    num_samples: int = 32,
    traversal_steps: int = 9,
    traversal_range: float = 2.5,
    max_traversal_dims: int = 10,
    max_pairs: int = 4,
) -> dict[str, np.ndarray]:
  """Runs ``model`` to get the arrays every figure needs.

  Reconstructions and interpolations decode posterior means; traversals start from the
  first input's mean and set one dimension at a time to each of ``traversal_steps`` values
  in [−range, range], for the ``max_traversal_dims`` dimensions of largest KL; samples
  decode z ~ N(0, I) (ancestral samples through the levels for a model with
  ``sample_prior``, e.g. the hierarchical VAE). For a conditional model (``labels`` and
  ``num_classes``) it adds ``class_samples`` (classes × shared z draws) and
  ``style_transfer`` (inputs encoded with their labels, decoded with every label). Images
  are decoder means (``likelihood_mean``).

  Args:
    model, params: the VAE and its parameters.
    images: (N ≥ 2, H, W, C) inputs in [0, 1].
    key: PRNG key for the prior samples.
    labels: (N,) labels for a conditional model (prior samples cycle through
      ``num_classes``), else None.
    kl_per_dim: (d,) mean KL per dimension to rank traversals; None = from ``images``.
  """
  images = jnp.asarray(_check_images(images, 4, "images"))
  if images.shape[0] < 2:
    raise ValueError(f"Need at least 2 images (for interpolation), got {images.shape[0]}.")
  variables = {"params": params}
  labels = None if labels is None else jnp.asarray(labels, jnp.int32)

  # One compiled call each: op-by-op dispatch of an un-jitted model is far slower.
  decode_fn = jax.jit(lambda v, z, y: distributions.likelihood_mean(
      model.apply(v, z, y, method="decode")))
  encode_fn = jax.jit(lambda v, x, y: model.apply(v, x, y, method="encode"))

  def decode(z, y):
    return np.asarray(decode_fn(variables, z, y))

  mean, log_var = encode_fn(variables, images, labels)
  d = mean.shape[-1]
  if kl_per_dim is None:
    kl_per_dim = np.asarray(jnp.mean(distributions.kl_standard_normal(mean, log_var), axis=0))
  kl_per_dim = np.asarray(kl_per_dim, np.float64)

  sample_labels = None
  if labels is not None:
    sample_labels = jnp.arange(num_samples, dtype=jnp.int32) % int(num_classes or 1)
  if hasattr(model, "sample_prior"):  # hierarchical: ancestral sampling through the levels
    samples = np.asarray(jax.jit(lambda v, k: distributions.likelihood_mean(model.apply(
        v, num_samples, method="sample_prior", rngs={"sample": k})[1]))(variables, key))
  else:
    samples = decode(jax.random.normal(key, (num_samples, d)), sample_labels)

  dims = np.argsort(-kl_per_dim, kind="stable")[:max_traversal_dims]
  values = np.linspace(-traversal_range, traversal_range, traversal_steps, dtype=np.float32)
  base = np.asarray(mean[0])
  codes = np.repeat(base[None, None], len(dims) * traversal_steps, axis=0).reshape(
      len(dims), traversal_steps, d)
  for row, dim in enumerate(dims):
    codes[row, :, dim] = values
  flat_labels = None if labels is None else jnp.full((codes[..., 0].size,), labels[0])
  traversals = decode(jnp.asarray(codes.reshape(-1, d)), flat_labels).reshape(
      len(dims), traversal_steps, *images.shape[1:])

  pairs = min(max_pairs, images.shape[0] // 2)
  t = jnp.linspace(0.0, 1.0, traversal_steps)[None, :, None]
  za, zb = mean[0: 2 * pairs: 2], mean[1: 2 * pairs: 2]
  path = (1 - t) * za[:, None] + t * zb[:, None]
  path_labels = None if labels is None else jnp.repeat(labels[0: 2 * pairs: 2], traversal_steps)
  interpolation = decode(path.reshape(-1, d), path_labels).reshape(
      pairs, traversal_steps, *images.shape[1:])
  endpoints = np.asarray(images[: 2 * pairs]).reshape(pairs, 2, *images.shape[1:])

  conditional = {}
  if labels is not None and num_classes:
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    z = jax.random.normal(jax.random.fold_in(key, 1), (traversal_steps, d))
    grid_z = jnp.tile(z, (num_classes, 1))  # the same z_s in every row
    conditional["class_samples"] = decode(grid_z, jnp.repeat(classes, traversal_steps)).reshape(
        num_classes, traversal_steps, *images.shape[1:])
    n = min(6, images.shape[0])
    style_z = jnp.repeat(mean[:n], num_classes, axis=0)
    conditional["style_inputs"] = np.asarray(images[:n])
    conditional["style_transfer"] = decode(style_z, jnp.tile(classes, n)).reshape(
        n, num_classes, *images.shape[1:])

  return {
      **conditional,
      "inputs": np.asarray(images),
      "reconstructions": decode(mean, labels),
      "samples": samples,
      "traversals": traversals,
      "traversal_values": values,
      "traversal_dims": dims,
      "traversal_kl": kl_per_dim[dims],
      "interpolation": interpolation,
      "interpolation_inputs": endpoints,
      "kl_per_dim": kl_per_dim,
  }


def write_figures(
    model: Any, params: Any, images: Any, out_dir: str | os.PathLike, key: jax.Array, **kwargs
) -> list[Path]:
  """Writes reconstructions, samples, traversals, interpolation and KL-per-dimension PNGs.

  ``kwargs`` go to :func:`figure_arrays`. Returns the paths written.
  """
  arrays = figure_arrays(model, params, images, key, **kwargs)
  out_dir = Path(out_dir)
  figures = {
      "reconstructions.png": plot_reconstructions(arrays["inputs"], arrays["reconstructions"]),
      "samples.png": plot_samples(arrays["samples"]),
      "traversals.png": plot_traversals(
          arrays["traversals"], arrays["traversal_values"], arrays["traversal_dims"],
          arrays["traversal_kl"]),
      "interpolation.png": plot_interpolation(
          arrays["interpolation"], arrays["interpolation_inputs"]),
      "kl_per_dim.png": plot_kl_per_dim(arrays["kl_per_dim"]),
  }
  if "class_samples" in arrays:
    figures["class_samples.png"] = plot_class_conditional_samples(arrays["class_samples"])
    figures["style_transfer.png"] = plot_style_transfer(
        arrays["style_inputs"], arrays["style_transfer"])
  return [save_figure(fig, out_dir / name) for name, fig in figures.items()]


# ----------------------------------------------------------------------------- latent arithmetic

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5)


def _encoder_decoder(model: Any, params: Any):
  variables = {"params": params}
  encode = jax.jit(lambda x, y: model.apply(variables, x, y, method="encode")[0])
  decode = jax.jit(lambda z, y: distributions.likelihood_mean(
      model.apply(variables, z, y, method="decode")))
  return encode, decode


def _images_and_labels(images: Any, labels: Any) -> tuple[jax.Array, np.ndarray]:
  images = _check_images(images, 4, "images")
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be ({images.shape[0]},) integers, one per image; got "
                     f"{labels.dtype} {labels.shape}.")
  return jnp.asarray(images), labels.astype(np.int64)


def class_arithmetic_arrays(
    model: Any,
    params: Any,
    images: Any,
    labels: Any,
    source_class: int,
    target_class: int,
    *,
    query_classes: Sequence[int] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> dict[str, Any]:
  """Class arithmetic with an unconditional VAE (e.g. MNIST digits).

  ``v = mean μ(x | class target) − mean μ(x | class source)`` over ``images``;
  each query (the first image of every class in ``query_classes``; default every
  class present except the target) is decoded at ``μ(x) + α v`` for each α. A
  query of the source class should turn into the target class; others show
  what the same offset does to them.

  Returns:
    ``inputs`` (Q, H, W, C), ``decoded`` (Q, A, H, W, C), ``alphas`` (A,),
    ``query_classes`` (Q,) and ``vector`` (d,).
  """
  if getattr(model, "conditional", False):
    raise ValueError("class arithmetic needs an unconditional VAE (its codes hold the class); "
                     "for a conditional VAE use style_arithmetic_arrays.")
  images, labels = _images_and_labels(images, labels)
  present = sorted(set(labels.tolist()))
  for name, c in (("source_class", source_class), ("target_class", target_class)):
    if c not in present:
      raise ValueError(f"{name}={c!r} has no images; classes present: {present}.")
  if query_classes is None:
    query_classes = [c for c in present if c != target_class]
  missing = [c for c in query_classes if c not in present]
  if not query_classes or missing:
    raise ValueError(f"query_classes must be classes present in labels {present}; "
                     f"got {list(query_classes)}.")
  encode, decode = _encoder_decoder(model, params)
  means = np.asarray(encode(images, None))
  vector = means[labels == target_class].mean(0) - means[labels == source_class].mean(0)
  rows = np.array([int(np.argmax(labels == c)) for c in query_classes])
  alphas = np.asarray(alphas, np.float32)
  codes = means[rows][:, None] + alphas[None, :, None] * vector[None, None]
  decoded = np.asarray(decode(jnp.asarray(codes.reshape(-1, codes.shape[-1])), None))
  return {"inputs": np.asarray(images)[rows],
          "decoded": decoded.reshape(len(rows), len(alphas), *images.shape[1:]),
          "alphas": alphas, "query_classes": np.asarray(query_classes), "vector": vector}


def style_arithmetic_arrays(
    model: Any,
    params: Any,
    images: Any,
    labels: Any,
    reference_index: int = 0,
    *,
    num_queries: int = 6,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> dict[str, Any]:
  """Style transfer by arithmetic with a conditional VAE.

  A CVAE's code holds the style (the label carries the class). The reference's
  style offset is ``s = μ(x_ref, y_ref) − mean_i μ(x_i, y_i)`` (its deviation from
  the mean style of ``images``); each query keeps its own label and is decoded at
  ``μ(x, y) + α s`` with label ``y``, so its digit stays and the reference's
  slant, width or thickness is added. Queries are the first ``num_queries``
  images other than the reference.

  Returns:
    ``inputs`` (Q, H, W, C), ``decoded`` (Q, A, H, W, C), ``alphas`` (A,),
    ``query_labels`` (Q,), ``reference`` (H, W, C) and ``vector`` (d,).
  """
  if not getattr(model, "conditional", False):
    raise ValueError("style arithmetic needs a conditional VAE (num_classes > 0); for an "
                     "unconditional one use class_arithmetic_arrays.")
  images, labels = _images_and_labels(images, labels)
  n = images.shape[0]
  if isinstance(reference_index, bool) or not isinstance(reference_index, int) or not (
      0 <= reference_index < n):
    raise ValueError(f"reference_index must be an int in [0, {n}), got {reference_index!r}.")
  if isinstance(num_queries, bool) or not isinstance(num_queries, int) or not (
      1 <= num_queries <= n - 1):
    raise ValueError(f"num_queries must be an int in [1, {n - 1}], got {num_queries!r}.")
  encode, decode = _encoder_decoder(model, params)
  means = np.asarray(encode(images, jnp.asarray(labels, jnp.int32)))
  vector = means[reference_index] - means.mean(0)
  rows = np.array([i for i in range(n) if i != reference_index][:num_queries])
  alphas = np.asarray(alphas, np.float32)
  codes = means[rows][:, None] + alphas[None, :, None] * vector[None, None]
  code_labels = np.repeat(labels[rows], len(alphas)).astype(np.int32)
  decoded = np.asarray(decode(jnp.asarray(codes.reshape(-1, codes.shape[-1])),
                              jnp.asarray(code_labels)))
  return {"inputs": np.asarray(images)[rows],
          "decoded": decoded.reshape(len(rows), len(alphas), *images.shape[1:]),
          "alphas": alphas, "query_labels": labels[rows],
          "reference": np.asarray(images)[reference_index], "vector": vector}


def write_class_arithmetic_figure(model: Any, params: Any, images: Any, labels: Any,
                                  path: str | os.PathLike, source_class: int,
                                  target_class: int, **kwargs) -> Path:
  """Saves the :func:`class_arithmetic_arrays` figure as a PNG; ``kwargs`` go there."""
  arrays = class_arithmetic_arrays(model, params, images, labels, source_class, target_class,
                                   **kwargs)
  fig = plot_latent_arithmetic(
      arrays["inputs"], arrays["decoded"], arrays["alphas"],
      f"z + α (mean z of class {target_class} − mean z of class {source_class})",
      [f"class {c}" for c in arrays["query_classes"]])
  return save_figure(fig, path)


def write_style_arithmetic_figure(model: Any, params: Any, images: Any, labels: Any,
                                  path: str | os.PathLike, reference_index: int = 0,
                                  **kwargs) -> Path:
  """Saves the :func:`style_arithmetic_arrays` figure as a PNG; ``kwargs`` go there."""
  arrays = style_arithmetic_arrays(model, params, images, labels, reference_index, **kwargs)
  fig = plot_latent_arithmetic(
      arrays["inputs"], arrays["decoded"], arrays["alphas"],
      "Style by arithmetic: z + α (z of the reference − mean z), decoded with each label",
      [f"label {c}" for c in arrays["query_labels"]], reference=arrays["reference"])
  return save_figure(fig, path)


# ----------------------------------------------------------------------------- hierarchical


TEMPERATURES = (0.0, 0.5, 0.7, 0.85, 1.0)


def temperature_samples(model: Any, params: Any, key: jax.Array,
                        temperatures: Sequence[float] = TEMPERATURES,
                        num: int = 8) -> np.ndarray:
  """Ancestral samples of a hierarchical model at each temperature, (T, num, H, W, C).

  Row t scales every level's prior standard deviation by ``temperatures[t]`` (0: the prior
  means, deterministic); the same key for every row, so rows differ by temperature only.
  """
  if not hasattr(model, "sample_prior"):
    raise ValueError(f"{type(model).__name__} has no sample_prior; temperature samples need "
                     "a hierarchical model (hvae, deep_hvae).")
  sample = jax.jit(lambda v, k, t: distributions.likelihood_mean(model.apply(
      v, num, t, method="sample_prior", rngs={"sample": k})[1]), static_argnums=2)
  return np.stack([np.asarray(sample({"params": params}, key, float(t)))
                   for t in temperatures])


def plot_temperature_samples(samples: Any, temperatures: Sequence[float]) -> Figure:
  """One row of ancestral samples per temperature."""
  samples = _check_images(samples, 5, "samples")
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

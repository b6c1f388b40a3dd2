"""Figures of a trained VAE: the arrays from its parameters, and the PNGs.

:func:`figure_arrays` runs a model (through :mod:`vaejax.models.codec`) to get what every
figure shows: reconstructions, prior samples, latent traversals, interpolations, the KL
per dimension and, for a conditional model, class-conditional samples and style transfer;
:func:`write_figures` saves them with :mod:`vaejax.figures.grids`.
:func:`class_arithmetic_arrays` (class offsets in an unconditional VAE, e.g. MNIST) and
:func:`style_arithmetic_arrays` (style offsets in a conditional VAE) do the same for the
latent-arithmetic figures, :func:`temperature_samples` for a hierarchical model's
ancestral samples. Nothing here trains or reads a checkpoint. Animated traversals (GIFs)
live in :mod:`vaejax.figures.animation`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions
from vaejax.figures import grids
from vaejax.models import codec
from vaejax.utils import stopping
from vaejax.utils.checks import check_int

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5)
TEMPERATURES = (0.0, 0.5, 0.7, 0.85, 1.0)

Decode = Callable[[jax.Array, jax.Array | None], np.ndarray]


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
  are decoder means (:func:`vaejax.models.codec.decode_mean`).

  Args:
    model, params: the VAE and its parameters.
    images: (N ≥ 2, H, W, C) inputs in [0, 1].
    key: PRNG key for the prior samples.
    labels: (N,) labels for a conditional model (prior samples cycle through
      ``num_classes``), else None.
    kl_per_dim: (d,) mean KL per dimension to rank traversals; None = from ``images``.
  """
  images = jnp.asarray(grids.check_images(images, 4, "images"))
  if images.shape[0] < 2:
    raise ValueError(f"Need at least 2 images (for interpolation), got {images.shape[0]}.")
  labels = None if labels is None else jnp.asarray(labels, jnp.int32)

  def decode(z, y):
    stopping.check()  # a stop signal ends the figures between two decodings
    return np.asarray(codec.decode_mean(model, params, z, y))

  mean, log_var = codec.encode(model, params, images, labels)
  kl_per_dim = np.asarray(jnp.mean(distributions.kl_standard_normal(mean, log_var), axis=0)
                          if kl_per_dim is None else kl_per_dim, np.float64)
  # A conditional model's prior samples cycle through the classes.
  sample_labels = (None if labels is None
                   else jnp.arange(num_samples, dtype=jnp.int32) % int(num_classes or 1))
  return {
      **(_conditional_arrays(decode, images, mean, key, num_classes, traversal_steps)
         if labels is not None and num_classes else {}),
      "inputs": np.asarray(images),
      "reconstructions": decode(mean, labels),
      "samples": _prior_samples(model, params, key, num_samples, sample_labels),
      **_traversal_arrays(decode, mean, labels, kl_per_dim, traversal_steps, traversal_range,
                          max_traversal_dims, images.shape[1:]),
      **_interpolation_arrays(decode, images, mean, labels, traversal_steps, max_pairs),
      "kl_per_dim": kl_per_dim,
  }


def _prior_samples(model: Any, params: Any, key: jax.Array, num_samples: int,
                   labels: jax.Array | None) -> np.ndarray:
  stopping.check()  # a stop signal ends the figures before this (compiled) sampling
  return np.asarray(codec.prior_samples(model, params, key, num_samples, labels))


def _traversal_arrays(decode: Decode, mean: jax.Array, labels: jax.Array | None,
                      kl_per_dim: np.ndarray, steps: int, value_range: float, max_dims: int,
                      image_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
  """The first input's mean with one dimension (of largest KL first) swept at a time."""
  d = mean.shape[-1]
  dims = np.argsort(-kl_per_dim, kind="stable")[:max_dims]
  values = np.linspace(-value_range, value_range, steps, dtype=np.float32)
  base = np.asarray(mean[0])
  codes = np.repeat(base[None, None], len(dims) * steps, axis=0).reshape(len(dims), steps, d)
  for row, dim in enumerate(dims):
    codes[row, :, dim] = values
  flat_labels = None if labels is None else jnp.full((codes[..., 0].size,), labels[0])
  traversals = decode(jnp.asarray(codes.reshape(-1, d)), flat_labels).reshape(
      len(dims), steps, *image_shape)
  return {"traversals": traversals, "traversal_values": values, "traversal_dims": dims,
          "traversal_kl": kl_per_dim[dims]}


def _interpolation_arrays(decode: Decode, images: jax.Array, mean: jax.Array,
                          labels: jax.Array | None, steps: int,
                          max_pairs: int) -> dict[str, np.ndarray]:
  """Straight lines between the means of inputs (0, 1), (2, 3), ..., decoded."""
  d = mean.shape[-1]
  pairs = min(max_pairs, images.shape[0] // 2)
  t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
  za, zb = mean[0: 2 * pairs: 2], mean[1: 2 * pairs: 2]
  path = (1 - t) * za[:, None] + t * zb[:, None]
  path_labels = None if labels is None else jnp.repeat(labels[0: 2 * pairs: 2], steps)
  interpolation = decode(path.reshape(-1, d), path_labels).reshape(
      pairs, steps, *images.shape[1:])
  endpoints = np.asarray(images[: 2 * pairs]).reshape(pairs, 2, *images.shape[1:])
  return {"interpolation": interpolation, "interpolation_inputs": endpoints}


def _conditional_arrays(decode: Decode, images: jax.Array, mean: jax.Array, key: jax.Array,
                        num_classes: int, steps: int) -> dict[str, np.ndarray]:
  """Class-conditional samples (one z per column, every class) and style transfer."""
  d = mean.shape[-1]
  classes = jnp.arange(num_classes, dtype=jnp.int32)
  z = jax.random.normal(jax.random.fold_in(key, 1), (steps, d))
  grid_z = jnp.tile(z, (num_classes, 1))  # the same z_s in every row
  class_samples = decode(grid_z, jnp.repeat(classes, steps)).reshape(
      num_classes, steps, *images.shape[1:])
  n = min(6, images.shape[0])
  style_z = jnp.repeat(mean[:n], num_classes, axis=0)
  style_transfer = decode(style_z, jnp.tile(classes, n)).reshape(
      n, num_classes, *images.shape[1:])
  return {"class_samples": class_samples, "style_inputs": np.asarray(images[:n]),
          "style_transfer": style_transfer}


def write_figures(
    model: Any, params: Any, images: Any, out_dir: str | os.PathLike, key: jax.Array, **kwargs
) -> list[Path]:
  """Writes reconstructions, samples, traversals, interpolation and KL-per-dimension PNGs.

  ``kwargs`` go to :func:`figure_arrays`. Returns the paths written.
  """
  arrays = figure_arrays(model, params, images, key, **kwargs)
  out_dir = Path(out_dir)
  figures = {
      "reconstructions.png": grids.plot_reconstructions(
          arrays["inputs"], arrays["reconstructions"]),
      "samples.png": grids.plot_samples(arrays["samples"]),
      "traversals.png": grids.plot_traversals(
          arrays["traversals"], arrays["traversal_values"], arrays["traversal_dims"],
          arrays["traversal_kl"]),
      "interpolation.png": grids.plot_interpolation(
          arrays["interpolation"], arrays["interpolation_inputs"]),
      "kl_per_dim.png": grids.plot_kl_per_dim(arrays["kl_per_dim"]),
  }
  if "class_samples" in arrays:
    figures["class_samples.png"] = grids.plot_class_conditional_samples(
        arrays["class_samples"])
    figures["style_transfer.png"] = grids.plot_style_transfer(
        arrays["style_inputs"], arrays["style_transfer"])
  written = []
  try:
    for name, fig in figures.items():
      written.append(grids.save_figure(fig, out_dir / name))
  finally:  # a stop or a full disk ends the loop: close the figures it did not save
    for fig in list(figures.values())[len(written) + 1:]:
      grids.plt.close(fig)
  return written


# ----------------------------------------------------------------------------- latent arithmetic


def _images_and_labels(images: Any, labels: Any) -> tuple[jax.Array, np.ndarray]:
  images = grids.check_images(images, 4, "images")
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be ({images.shape[0]},) integers, one per image; got "
                     f"{labels.dtype} {labels.shape}.")
  return jnp.asarray(images), labels.astype(np.int64)


def _decode_offsets(model: Any, params: Any, means: np.ndarray, rows: np.ndarray,
                    vector: np.ndarray, alphas: np.ndarray,
                    labels: np.ndarray | None) -> np.ndarray:
  """``(Q, A, H, W, C)``: ``means[rows[q]] + alphas[a] · vector`` decoded (with
  ``labels[rows[q]]`` for a conditional model)."""
  codes = means[rows][:, None] + alphas[None, :, None] * vector[None, None]
  code_labels = None
  if labels is not None:
    code_labels = jnp.asarray(np.repeat(labels[rows], len(alphas)).astype(np.int32))
  decoded = np.asarray(codec.decode_mean(
      model, params, jnp.asarray(codes.reshape(-1, codes.shape[-1])), code_labels))
  return decoded.reshape(len(rows), len(alphas), *decoded.shape[1:])


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
  if codec.is_conditional(model):
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
  means = np.asarray(codec.encode(model, params, images, None)[0])
  vector = means[labels == target_class].mean(0) - means[labels == source_class].mean(0)
  rows = np.array([int(np.argmax(labels == c)) for c in query_classes])
  alphas = np.asarray(alphas, np.float32)
  return {"inputs": np.asarray(images)[rows],
          "decoded": _decode_offsets(model, params, means, rows, vector, alphas, None),
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
  if not codec.is_conditional(model):
    raise ValueError("style arithmetic needs a conditional VAE (num_classes > 0); for an "
                     "unconditional one use class_arithmetic_arrays.")
  images, labels = _images_and_labels(images, labels)
  n = images.shape[0]
  check_int(reference_index, "reference_index", minimum=0, maximum=n - 1)
  check_int(num_queries, "num_queries", minimum=1, maximum=n - 1)
  means = np.asarray(codec.encode(model, params, images, jnp.asarray(labels, jnp.int32))[0])
  vector = means[reference_index] - means.mean(0)
  rows = np.array([i for i in range(n) if i != reference_index][:num_queries])
  alphas = np.asarray(alphas, np.float32)
  return {"inputs": np.asarray(images)[rows],
          "decoded": _decode_offsets(model, params, means, rows, vector, alphas, labels),
          "alphas": alphas, "query_labels": labels[rows],
          "reference": np.asarray(images)[reference_index], "vector": vector}


def write_class_arithmetic_figure(model: Any, params: Any, images: Any, labels: Any,
                                  path: str | os.PathLike, source_class: int,
                                  target_class: int, **kwargs) -> Path:
  """Saves the :func:`class_arithmetic_arrays` figure as a PNG; ``kwargs`` go there."""
  arrays = class_arithmetic_arrays(model, params, images, labels, source_class, target_class,
                                   **kwargs)
  fig = grids.plot_latent_arithmetic(
      arrays["inputs"], arrays["decoded"], arrays["alphas"],
      f"z + α (mean z of class {target_class} − mean z of class {source_class})",
      [f"class {c}" for c in arrays["query_classes"]])
  return grids.save_figure(fig, path)


def write_style_arithmetic_figure(model: Any, params: Any, images: Any, labels: Any,
                                  path: str | os.PathLike, reference_index: int = 0,
                                  **kwargs) -> Path:
  """Saves the :func:`style_arithmetic_arrays` figure as a PNG; ``kwargs`` go there."""
  arrays = style_arithmetic_arrays(model, params, images, labels, reference_index, **kwargs)
  fig = grids.plot_latent_arithmetic(
      arrays["inputs"], arrays["decoded"], arrays["alphas"],
      "Style by arithmetic: z + α (z of the reference − mean z), decoded with each label",
      [f"label {c}" for c in arrays["query_labels"]], reference=arrays["reference"])
  return grids.save_figure(fig, path)


# ----------------------------------------------------------------------------- hierarchical


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
  return np.stack([np.asarray(codec.prior_samples(model, params, key, num,
                                                  temperature=float(t)))
                   for t in temperatures])

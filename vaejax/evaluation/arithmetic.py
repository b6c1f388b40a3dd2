r"""Latent arithmetic on dSprites: does adding an attribute vector change just that factor?

For a factor k and two of its classes, source s and target t, the attribute vector
is the mean encoding difference over pairs of images that differ only in factor k:

.. math:: v = \frac1n \sum_{i=1}^n \big(\mu(x(f_i[k{=}t])) - \mu(x(f_i[k{=}s]))\big),

the other factors of each pair drawn uniformly (paired draws: the same other
factors on both sides, so v isolates factor k). For fresh queries x with factor
k = s the edited code is :math:`z' = \mu(x) + \alpha v`, decoded to
:math:`\hat x' = g(z')`; the reference is the plain reconstruction
:math:`\hat x = g(\mu(x))`, so reconstruction error cancels and only the change
is measured. The change it should make is read off the renderer
(:func:`vaejax.data.dsprites.render_values`): the query's sprite before (factor
value :math:`v_s`) and after (:math:`v_s + \alpha (v_t - v_s)`; shape: the target
shape whatever α).

Measurements (decoded means binarised at 0.5, as dSprites frames are binary, so a
faint background cannot pull centroids towards the middle; pixel centres at
integer + 1/2):

* ``pos_x`` / ``pos_y``: the centroid shift along x / y,
  :math:`m = c(\hat x') - c(\hat x)`, against the rendered shift e; a query
  succeeds iff :math:`|m - e| \le \tau |e|` (τ = ``tolerance``, 0.25);
* ``scale``: the area ratio :math:`m = A(\hat x') / A(\hat x)` (A = pixel
  count) against the rendered area ratio e; success iff
  :math:`|\log m - \log e| \le \tau |\log e|`;
* ``shape``: :math:`\hat x'` is matched to rendered templates
  of each shape at the query's scale and position in each of the 40 dSprites
  orientations; the predicted shape is the one of the template with the largest
  intersection-over-union (none if that IoU is below 0.5), and a query succeeds
  iff it is the target shape.

The accuracy of a factor is the fraction of successful queries ("arithmetic
accuracy"). An empty decode (no pixel above 0.5) fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax.data import dsprites
from vaejax.data.dsprites import RenderedDSprites
from vaejax.evaluation.disentanglement import sampling
from vaejax.utils import stopping
from vaejax.utils.checks import check_int

ARITHMETIC_FACTORS = ("shape", "scale", "pos_x", "pos_y")
# (source class, target class) per factor: square -> heart, smallest -> largest, and
# positions 4 -> 27 of 32 (a 23.7 px move that keeps every sprite inside the image).
DEFAULT_CHANGES: dict[str, tuple[int, int]] = {
    "shape": (0, 2), "scale": (0, 5), "pos_x": (4, 27), "pos_y": (4, 27)}
DEFAULT_TOLERANCE = 0.25
DEFAULT_MIN_IOU = 0.5
_ORIENTATIONS = np.linspace(0.0, 2 * np.pi, dsprites.FACTOR_SIZES[3])
_TEMPLATE_CHUNK = 16

EncodeFn = Callable[[np.ndarray], Any]
DecodeFn = Callable[[np.ndarray], Any]


# ----------------------------------------------------------------------------- measurements


def _as_images(images, name: str = "images") -> np.ndarray:
  arr = np.asarray(images, dtype=np.float64)
  if arr.ndim == 4 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim != 3:
    raise ValueError(f"{name} must be (N, H, W) or (N, H, W, 1), got shape {np.shape(images)}.")
  if not np.all(np.isfinite(arr)) or arr.min(initial=0.0) < 0 or arr.max(initial=0.0) > 1:
    raise ValueError(f"{name} must be finite and in [0, 1].")
  return arr


def centroids(images) -> np.ndarray:
  """Intensity-weighted centre ``(x, y)`` in pixels of each image ``(N, H, W[, 1])``; NaN if empty.

  ``x = sum_ij I_ij (j + 1/2) / sum_ij I_ij`` and likewise y with the row index
  i (y grows downwards, as dSprites' pos_y does).
  """
  arr = _as_images(images)
  mass = arr.sum(axis=(1, 2))
  safe = np.where(mass > 0, mass, 1.0)
  x = (arr.sum(axis=1) @ (np.arange(arr.shape[2]) + 0.5)) / safe
  y = (arr.sum(axis=2) @ (np.arange(arr.shape[1]) + 0.5)) / safe
  out = np.stack([x, y], axis=1)
  out[mass <= 0] = np.nan
  return out


def areas(images) -> np.ndarray:
  """Summed intensity of each image (the pixel area of a binary sprite)."""
  return _as_images(images).sum(axis=(1, 2))


def position_success(measured, expected, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
  """``|m - e| <= tolerance |e|`` elementwise (NaN measurements fail)."""
  m, e = np.asarray(measured, np.float64), np.asarray(expected, np.float64)
  with np.errstate(invalid="ignore"):
    return np.isfinite(m) & (np.abs(m - e) <= tolerance * np.abs(e))


def scale_success(measured_ratio, expected_ratio,
                  tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
  """``|log m - log e| <= tolerance |log e|`` elementwise (non-positive or NaN ratios fail)."""
  m, e = np.asarray(measured_ratio, np.float64), np.asarray(expected_ratio, np.float64)
  ok = np.isfinite(m) & (m > 0)
  log_m = np.log(np.where(ok, m, 1.0))
  return ok & (np.abs(log_m - np.log(e)) <= tolerance * np.abs(np.log(e)))


@jax.jit
def _best_iou_per_shape(masks, scale, pos_x, pos_y):
  """``(Q, 3)`` the best IoU of each mask with each shape's templates over the 40 orientations."""
  templates = dsprites.render_values(
      jnp.arange(3)[None, :, None], scale[:, None, None], jnp.asarray(_ORIENTATIONS)[None, None],
      pos_x[:, None, None], pos_y[:, None, None])  # (Q, 3, 40, H, W)
  m = masks[:, None, None]
  inter = jnp.sum(templates & m, axis=(-2, -1))
  union = jnp.sum(templates | m, axis=(-2, -1))
  return jnp.max(jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0), axis=-1)


def nearest_shapes(images, scale, pos_x, pos_y, threshold: float = 0.5,
                   min_iou: float = DEFAULT_MIN_IOU) -> np.ndarray:
  """Shape (0 square, 1 ellipse, 2 heart) of the rendered template most like each image.

  Each image, binarised at ``threshold``, is compared by intersection-over-union
  with the three shapes rendered at its scale value and position values
  (``(N,)`` each, as :func:`~vaejax.data.dsprites.render_values` takes them) in
  every one of the 40 dSprites orientations; ties go to the lower shape index.
  An image whose best IoU is below ``min_iou`` (0.5, the usual detection
  criterion) resembles no sprite at that place and is unrecognised.

  Returns:
    ``(N,)`` int64 shapes; ``-1`` for an unrecognised image.
  """
  arr = _as_images(images)
  if arr.shape[1:] != (dsprites.IMAGE_SIZE, dsprites.IMAGE_SIZE):
    raise ValueError(f"images must be 64 x 64 dSprites frames, got {arr.shape[1:]}.")
  params = [np.broadcast_to(np.asarray(p, np.float32), (arr.shape[0],))
            for p in (scale, pos_x, pos_y)]
  masks = arr > threshold
  best = np.empty((arr.shape[0], 3))
  for start in range(0, arr.shape[0], _TEMPLATE_CHUNK):
    part = slice(start, start + _TEMPLATE_CHUNK)
    m = masks[part].shape[0]
    pad = ((0, _TEMPLATE_CHUNK - m),)
    best[part] = np.asarray(_best_iou_per_shape(
        jnp.asarray(np.pad(masks[part], pad + ((0, 0), (0, 0))).astype(bool)),
        *(jnp.asarray(np.pad(p[part], pad, mode="edge")) for p in params)))[:m]
  shapes = np.argmax(best, axis=1)
  return np.where(best.max(axis=1) >= min_iou, shapes, -1)


# ----------------------------------------------------------------------------- the protocol


def _decode(decode_fn: DecodeFn, codes: np.ndarray, chunk_size: int) -> np.ndarray:
  out = []
  for start in range(0, codes.shape[0], chunk_size):
    stopping.check()  # a stop signal ends it between chunks
    chunk = codes[start:start + chunk_size]
    m = chunk.shape[0]
    if m < chunk_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - m, axis=0)])
    images = _as_images(decode_fn(chunk), "decode_fn's output")
    if images.shape[0] != chunk_size:
      raise ValueError(f"decode_fn must map {chunk_size} codes to {chunk_size} images, got "
                       f"{images.shape[0]}.")
    out.append(images[:m])
  return np.concatenate(out)


def _check_ground_truth(ground_truth) -> Any:
  if ground_truth is None:
    return RenderedDSprites()
  names = tuple(getattr(ground_truth, "factor_names", ()))
  if names != dsprites.GT_FACTOR_NAMES:
    raise ValueError(f"latent arithmetic needs a dSprites ground truth with factors "
                     f"{dsprites.GT_FACTOR_NAMES}, got {names}.")
  return ground_truth


def _check_change(factor: str, change) -> tuple[int, int]:
  if factor not in ARITHMETIC_FACTORS:
    raise ValueError(f"factor must be one of {ARITHMETIC_FACTORS}, got {factor!r}.")
  size = dsprites.GT_FACTOR_SIZES[dsprites.GT_FACTOR_NAMES.index(factor)]
  try:
    source, target = (int(c) for c in change)
  except (TypeError, ValueError) as e:
    raise ValueError(f"the change of {factor!r} must be (source, target) classes, "
                     f"got {change!r}.") from e
  if not (0 <= source < size and 0 <= target < size) or source == target:
    raise ValueError(f"the change of {factor!r} must be two different classes in [0, {size}), "
                     f"got {change!r}.")
  return source, target


def _with_factor(factors: np.ndarray, column: int, value: int) -> np.ndarray:
  out = factors.copy()
  out[:, column] = value
  return out


def attribute_vector(encode_fn: EncodeFn, factor: str, source: int, target: int,
                     num_examples: int, rng: np.random.Generator, ground_truth=None,
                     chunk_size: int = sampling.DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """The attribute vector ``(d,)``: ``mean_i mu(x_i[factor=target]) - mu(x_i[factor=source])``.

  ``num_examples`` draws of the other factors, each rendered with both classes.
  """
  ground_truth = _check_ground_truth(ground_truth)
  source, target = _check_change(factor, (source, target))
  check_int(num_examples, "num_examples", minimum=1)
  column = dsprites.GT_FACTOR_NAMES.index(factor)
  others = np.asarray(ground_truth.sample_factors(num_examples, rng))
  codes = {}
  for name, value in (("target", target), ("source", source)):
    obs = ground_truth.sample_observations_from_factors(_with_factor(others, column, value), rng)
    codes[name] = sampling.represent(encode_fn, obs, chunk_size)
  return np.mean(codes["target"] - codes["source"], axis=0)


def _render(values: np.ndarray) -> np.ndarray:
  """Renders (N, 5) dSprites factor *values* (shape as 1..3, like latents_values)."""
  images = dsprites.render_values(
      jnp.asarray(values[:, 0] - 1, jnp.int32), *(jnp.asarray(values[:, k], jnp.float32)
                                                  for k in range(1, 5)))
  return np.asarray(images, np.float64)


def _summary(success: np.ndarray, measured: np.ndarray, expected: np.ndarray) -> dict[str, float]:
  finite = np.isfinite(measured)
  mean_measured = float(np.mean(measured[finite])) if finite.any() else float("nan")
  mean_expected = float(np.mean(expected))
  return {"accuracy": float(np.mean(success)), "measured_change": mean_measured,
          "expected_change": mean_expected,
          "ratio": mean_measured / mean_expected if mean_expected else float("nan")}


def arithmetic_accuracy(
    encode_fn: EncodeFn,
    decode_fn: DecodeFn,
    ground_truth=None,
    factors: Sequence[str] = ARITHMETIC_FACTORS,
    *,
    changes: Mapping[str, tuple[int, int]] | None = None,
    alpha: float = 1.0,
    num_examples: int = 500,
    num_queries: int = 100,
    tolerance: float = DEFAULT_TOLERANCE,
    threshold: float = 0.5,
    seed: int | np.random.Generator = 0,
    chunk_size: int = sampling.DEFAULT_CHUNK_SIZE,
) -> dict[str, dict[str, float]]:
  """The latent-arithmetic table of a dSprites model (see the module docstring).

  Args:
    encode_fn: ``images (B, 64, 64, 1) in [0, 1] -> means (B, d)``; called in
      chunks of exactly ``chunk_size`` (padded), so a jitted function compiles once.
    decode_fn: ``codes (B, d) -> images (B, 64, 64[, 1]) in [0, 1]`` (decoder means).
    ground_truth: a dSprites ground truth (default: rendered dSprites).
    factors: which of ``shape``, ``scale``, ``pos_x``, ``pos_y`` to test.
    changes: ``{factor: (source class, target class)}`` overriding
      :data:`DEFAULT_CHANGES`.
    alpha: the multiple of v added; the expected change follows it linearly in
      factor value (shape: the target shape for any α).
    num_examples: image pairs per attribute vector.
    num_queries: query images (factor = source) per factor.
    tolerance: τ of the success criteria.
    threshold: decoded pixels above it count as sprite (dSprites is binary).
    seed: an int or a numpy Generator; all draws come from it.

  Returns:
    ``{factor: row}``; every row has ``accuracy`` (fraction of successful
    queries), ``measured_change`` and ``expected_change`` (means over queries:
    centroid shift in px for positions, area ratio for scale, for shape the
    fraction of edited decodes classified as the target and 1), ``ratio``
    (measured / expected), ``source_class``, ``target_class``, ``alpha`` and
    ``vector_norm`` (||v||). The shape row adds ``source_accuracy``: the fraction
    of plain reconstructions classified as the source shape (how well the
    classifier reads this decoder at all).
  """
  ground_truth = _check_ground_truth(ground_truth)
  rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
  factors, all_changes = _check_settings(factors, changes, alpha, tolerance, num_queries,
                                         threshold)
  table = {}
  for factor in factors:
    stopping.check()
    source, target = _check_change(factor, all_changes[factor])
    table[factor] = _factor_row(
        encode_fn, decode_fn, ground_truth, factor, source, target, alpha=alpha,
        num_examples=num_examples, num_queries=num_queries, tolerance=tolerance,
        threshold=threshold, rng=rng, chunk_size=chunk_size)
  return table


def _check_settings(factors: Sequence[str] | str, changes: Mapping[str, tuple[int, int]] | None,
                    alpha: float, tolerance: float, num_queries: int,
                    threshold: float) -> tuple[tuple[str, ...], dict[str, tuple[int, int]]]:
  """The factors to test and every factor's (source, target) classes, or one ValueError."""
  factors = (factors,) if isinstance(factors, str) else tuple(factors)
  if not factors:
    raise ValueError(f"factors must name at least one of {ARITHMETIC_FACTORS}.")
  all_changes = {**DEFAULT_CHANGES, **dict(changes or {})}
  for factor in (*factors, *(changes or {})):
    _check_change(factor, all_changes.get(factor, (0, 0)))
  if not np.isfinite(alpha):
    raise ValueError(f"alpha must be finite, got {alpha!r}.")
  if not np.isfinite(tolerance) or tolerance < 0:
    raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}.")
  check_int(num_queries, "num_queries", minimum=1)
  if not 0.0 <= threshold < 1.0:
    raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
  return factors, all_changes


def _factor_row(encode_fn: EncodeFn, decode_fn: DecodeFn, ground_truth, factor: str,
                source: int, target: int, *, alpha: float, num_examples: int,
                num_queries: int, tolerance: float, threshold: float,
                rng: np.random.Generator, chunk_size: int) -> dict[str, float]:
  """One row of :func:`arithmetic_accuracy`: the factor's attribute vector, queries of the
  source class decoded before and after adding it, and the change measured on them."""
  column = dsprites.GT_FACTOR_NAMES.index(factor)
  vector = attribute_vector(encode_fn, factor, source, target, num_examples, rng,
                            ground_truth, chunk_size)
  query_factors = _with_factor(np.asarray(ground_truth.sample_factors(num_queries, rng)),
                               column, source)
  observations = ground_truth.sample_observations_from_factors(query_factors, rng)
  means = sampling.represent(encode_fn, observations, chunk_size)
  before = (_decode(decode_fn, means, chunk_size) > threshold).astype(np.float64)
  after = (_decode(decode_fn, means + alpha * vector[None], chunk_size) > threshold).astype(
      np.float64)

  values = dsprites.factor_values(query_factors)
  target_values = values.copy()
  goal = dsprites.factor_values(_with_factor(query_factors, column, target))[:, column]
  if factor == "shape":
    target_values[:, column] = goal
  else:
    target_values[:, column] = values[:, column] + alpha * (goal - values[:, column])
  row: dict[str, float] = {"source_class": float(source), "target_class": float(target),
                           "alpha": float(alpha), "vector_norm": float(np.linalg.norm(vector))}
  row.update(_measured_change(factor, values, target_values, before, after, source, target,
                              tolerance))
  return row


def _measured_change(factor: str, values: np.ndarray, target_values: np.ndarray,
                     before: np.ndarray, after: np.ndarray, source: int, target: int,
                     tolerance: float) -> dict[str, float]:
  """Success, measured and expected change of decoded sprites ``before`` → ``after`` whose
  factor values went from ``values`` to ``target_values`` (see the module docstring)."""
  if factor in ("pos_x", "pos_y"):
    axis = 0 if factor == "pos_x" else 1
    expected = centroids(_render(target_values))[:, axis] - centroids(_render(values))[:, axis]
    measured = centroids(after)[:, axis] - centroids(before)[:, axis]
    return _summary(position_success(measured, expected, tolerance), measured, expected)
  if factor == "scale":
    expected = areas(_render(target_values)) / areas(_render(values))
    with np.errstate(divide="ignore", invalid="ignore"):
      measured = areas(after) / areas(before)
    measured = np.where(np.isfinite(measured), measured, np.nan)
    return _summary(scale_success(measured, expected, tolerance), measured, expected)
  scale, pos_x, pos_y = values[:, 1], values[:, 3], values[:, 4]
  predicted = nearest_shapes(after, scale, pos_x, pos_y)  # already binary
  success = predicted == target
  return {**_summary(success, success.astype(np.float64), np.ones(success.shape[0])),
          "source_accuracy": float(np.mean(nearest_shapes(before, scale, pos_x, pos_y)
                                           == source))}

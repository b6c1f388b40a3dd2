"""Input validation shared by the disentanglement metrics.

Every metric takes codes ``(N, d)`` (real, finite) and factors ``(N, K)``
(integer class indices). Bad input fails here with one ValueError that names
the offending value and what is allowed.
"""

from __future__ import annotations

import numpy as np


def check_codes(codes, name: str = "codes", *, min_dims: int = 1) -> np.ndarray:
  """Returns ``codes`` as a finite float64 ``(N, d)`` array, N >= 2, d >= min_dims."""
  arr = np.asarray(codes)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be a 2-D (num_points, num_codes) array, got shape {arr.shape}.")
  if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
    raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}.")
  arr = arr.astype(np.float64)
  if arr.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 points, got {arr.shape[0]}.")
  if arr.shape[1] < min_dims:
    raise ValueError(
        f"{name} needs at least {min_dims} code dimensions for this metric, got {arr.shape[1]}.")
  if not np.all(np.isfinite(arr)):
    bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    raise ValueError(f"{name} must be finite; {name}[{bad}] = {arr[bad]}.")
  return arr


def check_factors(factors, name: str = "factors", *, min_factors: int = 1) -> np.ndarray:
  """Returns ``factors`` as an int64 ``(N, K)`` array of class indices.

  Integer (or boolean) dtypes pass; floats pass only if every value is a whole
  number (e.g. classes stored as float), so continuous factor *values* such as
  dSprites' ``latents_values`` are rejected rather than silently binned.
  """
  arr = np.asarray(factors)
  if arr.ndim != 2:
    raise ValueError(
        f"{name} must be a 2-D (num_points, num_factors) array, got shape {arr.shape}.")
  if arr.shape[1] < min_factors:
    raise ValueError(
        f"{name} needs at least {min_factors} factors for this metric, got {arr.shape[1]}.")
  if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
    return arr.astype(np.int64)
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"{name} must be integer class indices, got dtype {arr.dtype}.")
  bad = ~np.isfinite(arr) | (arr != np.round(arr))
  if np.any(bad):
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name} must be integer class indices (e.g. dSprites' latents_classes, not "
        f"latents_values); {name}[{idx}] = {arr[idx]!r}.")
  return arr.astype(np.int64)


def check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
  if a.shape[0] != b.shape[0]:
    raise ValueError(
        f"{name_a} and {name_b} must have the same number of points, got {a.shape[0]} and "
        f"{b.shape[0]}.")


def check_same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
  if a.shape[1] != b.shape[1]:
    raise ValueError(
        f"{name_a} and {name_b} must have the same number of columns, got {a.shape[1]} and "
        f"{b.shape[1]}.")


def check_pair(codes, factors, *, min_dims: int = 1, min_factors: int = 1,
               codes_name: str = "codes", factors_name: str = "factors"):
  """Validates one (codes, factors) sample; returns them as float64 / int64 arrays."""
  codes = check_codes(codes, codes_name, min_dims=min_dims)
  factors = check_factors(factors, factors_name, min_factors=min_factors)
  check_same_length(codes, factors, codes_name, factors_name)
  return codes, factors


def check_train_test(codes_train, factors_train, codes_test, factors_test, *,
                     min_dims: int = 1, min_factors: int = 1):
  """Validates a train and a test sample with matching widths."""
  codes_train, factors_train = check_pair(
      codes_train, factors_train, min_dims=min_dims, min_factors=min_factors,
      codes_name="codes_train", factors_name="factors_train")
  codes_test, factors_test = check_pair(
      codes_test, factors_test, min_dims=min_dims, min_factors=min_factors,
      codes_name="codes_test", factors_name="factors_test")
  check_same_width(codes_train, codes_test, "codes_train", "codes_test")
  check_same_width(factors_train, factors_test, "factors_train", "factors_test")
  return codes_train, factors_train, codes_test, factors_test


def check_classes(labels: np.ndarray, name: str) -> None:
  """A classifier needs at least two classes in its training labels."""
  if np.unique(labels).size < 2:
    raise ValueError(
        f"{name} takes a single value ({labels.flat[0]}) in the training sample, so no "
        "classifier can be fitted; use more samples, or drop a constant factor.")

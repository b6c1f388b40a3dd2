"""Latent arithmetic on dSprites: an oracle built from the renderer scores ~1, broken decoders fail.

The oracle encoder looks every rendered image up in a table the test's ground truth
fills as it renders (image bytes -> true factor values), so its code *is* the factors:
``(shape, scale, cos θ, sin θ, pos_x, pos_y)``. The oracle decoder renders a code back
with the renderer. Measurements are checked against hand-made images.
"""

from __future__ import annotations

import chex
import numpy as np
import pytest

from vaejax.data import dsprites
from vaejax.data.dsprites import RenderedDSprites
from vaejax.evaluation import arithmetic
from vaejax.evaluation.disentanglement import FactorGridGroundTruth

SMALL = {"num_examples": 24, "num_queries": 16, "chunk_size": 32}


class _RecordingDSprites(RenderedDSprites):
  """Rendered dSprites that remembers the factor values of every image it renders."""

  def __init__(self):
    self.table = {}

  def sample_observations_from_factors(self, factors, rng):
    images = super().sample_observations_from_factors(factors, rng)
    values = dsprites.factor_values(np.asarray(factors))
    for image, v in zip(images, values):
      code = (v[0] - 1.0, v[1], np.cos(v[2]), np.sin(v[2]), v[3], v[4])
      self.table.setdefault(image.tobytes(), code)
    return images


def _oracle(ground_truth):
  def encode(images):
    return np.asarray([ground_truth.table[np.asarray(im, np.float32).tobytes()]
                       for im in images])

  def decode(codes):
    shape = np.clip(np.round(codes[:, 0]), 0, 2).astype(np.int32)
    angle = np.arctan2(codes[:, 3], codes[:, 2])
    return np.asarray(dsprites.render_values(shape, codes[:, 1], angle, codes[:, 4],
                                             codes[:, 5]), np.float32)[..., None]

  return encode, decode


def test_oracle_encoder_and_renderer_decoder_are_perfect():
  data = _RecordingDSprites()
  encode, decode = _oracle(data)
  table = arithmetic.arithmetic_accuracy(encode, decode, data, **SMALL)
  assert set(table) == {"shape", "scale", "pos_x", "pos_y"}
  for factor, row in table.items():
    assert row["accuracy"] == 1.0, (factor, row)
    assert row["ratio"] == pytest.approx(1.0, abs=1e-6), factor
  # Positions 4 -> 27 of 32 move the sprite by 23 * 32/31 px; scale 0.5 -> 1 quadruples it.
  assert table["pos_x"]["expected_change"] == pytest.approx(23 * 32 / 31, abs=0.5)
  assert table["pos_y"]["measured_change"] == pytest.approx(23 * 32 / 31, abs=0.5)
  assert table["scale"]["expected_change"] == pytest.approx(4.0, rel=0.1)
  assert table["shape"]["source_accuracy"] == 1.0
  # The attribute vector of a position moves exactly that coordinate of the oracle code.
  v = arithmetic.attribute_vector(encode, "pos_x", 4, 27, 10, np.random.default_rng(0), data)
  chex.assert_trees_all_close(v, np.array([0, 0, 0, 0, 23 / 31, 0]), atol=1e-9)


def test_half_a_vector_moves_half_as_far():
  data = _RecordingDSprites()
  encode, decode = _oracle(data)
  table = arithmetic.arithmetic_accuracy(encode, decode, data, ("pos_y", "scale"), alpha=0.5,
                                         **SMALL)
  assert table["pos_y"]["accuracy"] == 1.0 and table["scale"]["accuracy"] == 1.0
  assert table["pos_y"]["expected_change"] == pytest.approx(11.5 * 32 / 31, abs=0.5)


def test_a_faint_background_does_not_bias_the_measurements():
  data = _RecordingDSprites()
  encode, decode = _oracle(data)
  soft = lambda codes: 0.03 + 0.9 * decode(codes)  # blurry-VAE-like: never exactly 0 or 1
  table = arithmetic.arithmetic_accuracy(encode, soft, data, **SMALL)
  assert all(row["accuracy"] == 1.0 for row in table.values()), table
  # Unthresholded, the background's mass would pull each centroid towards the middle.
  x = np.zeros((2, 64, 64, 1))
  x[0, 30:34, 10:14] = x[1, 30:34, 50:54] = 0.9
  shift = np.diff(arithmetic.centroids(0.03 + x)[:, 0])[0]
  assert shift < 0.5 * 40.0


def test_broken_decoders_score_low():
  data = _RecordingDSprites()
  encode, decode = _oracle(data)
  fixed = decode(np.array([[2.0, 0.75, 1.0, 0.0, 0.5, 0.5]] * 32))
  constant = lambda codes: fixed[: len(codes)]
  table = arithmetic.arithmetic_accuracy(encode, constant, data, **SMALL)
  for factor in ("scale", "pos_x", "pos_y"):
    assert table[factor]["accuracy"] == 0.0, factor
    assert table[factor]["measured_change"] == pytest.approx(
        0.0 if factor != "scale" else 1.0), factor
  # A heart that stays in the middle of the image is recognised only for the rare query
  # whose sprite sits there too.
  assert table["shape"]["accuracy"] <= 2 / 16 and table["shape"]["source_accuracy"] <= 2 / 16
  # A decoder with x and y swapped moves the sprite along the wrong axis.
  swapped = lambda codes: decode(codes[:, [0, 1, 2, 3, 5, 4]])
  table = arithmetic.arithmetic_accuracy(encode, swapped, data, ("pos_x", "pos_y"), **SMALL)
  assert table["pos_x"]["accuracy"] == 0.0 and table["pos_y"]["accuracy"] == 0.0
  # A decoder that draws squares only cannot turn a square into a heart.
  squares = lambda codes: decode(np.c_[np.zeros(len(codes)), codes[:, 1:]])
  table = arithmetic.arithmetic_accuracy(encode, squares, data, "shape", **SMALL)
  assert table["shape"]["accuracy"] == 0.0 and table["shape"]["source_accuracy"] == 1.0


def test_centroids_and_areas_of_hand_made_images():
  images = np.zeros((3, 8, 10, 1))
  images[0, 2:4, 6:9] = 1.0  # rows 2-3, columns 6-8
  images[1, 5, 1] = 0.5
  centres = arithmetic.centroids(images)
  chex.assert_trees_all_close(centres[0], np.array([7.5, 3.0]))
  chex.assert_trees_all_close(centres[1], np.array([1.5, 5.5]))
  assert np.all(np.isnan(centres[2]))
  chex.assert_trees_all_close(arithmetic.areas(images), np.array([6.0, 0.5, 0.0]))


def test_success_criteria():
  np.testing.assert_array_equal(
      arithmetic.position_success([10.0, 7.4, 13.0, np.nan, -10.0], [10.0, 10.0, 10.0, 10.0,
                                                                      10.0]),
      [True, False, False, False, False])
  np.testing.assert_array_equal(
      arithmetic.scale_success([4.0, 2.0, 3.0, 0.0], [4.0, 4.0, 4.0, 4.0]),
      [True, False, True, False])  # |log 3 - log 4| = 0.29 <= 0.25 log 4 = 0.35


def test_nearest_shapes_reads_rendered_sprites():
  rng = np.random.default_rng(3)
  classes = np.c_[np.arange(6) % 3, rng.integers(0, 6, 6), rng.integers(0, 40, 6),
                  rng.integers(0, 32, (6, 2))]
  images = dsprites.render_numpy(classes)
  values = dsprites.factor_values(classes)
  shapes = arithmetic.nearest_shapes(images, values[:, 1], values[:, 3], values[:, 4])
  np.testing.assert_array_equal(shapes, classes[:, 0])
  blank = arithmetic.nearest_shapes(np.zeros((1, 64, 64)), 1.0, 0.5, 0.5)
  np.testing.assert_array_equal(blank, [-1])


@pytest.mark.parametrize("kwargs, match", [
    ({"factors": ("orientation",)}, "factor must be one of"),
    ({"changes": {"scale": (2, 2)}}, "two different classes"),
    ({"changes": {"pos_x": (0, 32)}}, r"in \[0, 32\)"),
    ({"tolerance": -1.0}, "tolerance"),
    ({"num_queries": 0}, "num_queries"),
    ({"ground_truth": FactorGridGroundTruth((3, 6, 40, 32, 32))}, "dSprites ground truth"),
])
def test_bad_arguments_get_one_clear_error(kwargs, match):
  data = _RecordingDSprites()
  encode, decode = _oracle(data)
  kwargs = {"ground_truth": data, **kwargs}
  with pytest.raises(ValueError, match=match):
    arithmetic.arithmetic_accuracy(encode, decode, **kwargs)


def test_decoder_output_is_checked():
  data = _RecordingDSprites()
  encode, decode = _oracle(data)
  with pytest.raises(ValueError, match=r"decode_fn's output must be finite and in \[0, 1\]"):
    arithmetic.arithmetic_accuracy(encode, lambda z: 2.0 * decode(z), data, "scale", **SMALL)

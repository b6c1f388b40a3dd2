"""Animated traversals: sweep values, panel order and layout, GIF frames read back with Pillow."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from PIL import Image

from vaejax import distributions, models
from vaejax.figures import animation


def test_prior_sweep_known_values():
  # mu = 0 starts at p = 0.5: 0.5 -> 1 -> 0.5 -> 0 over four frames, clipped to [0.001, 0.999].
  sweep = animation.prior_sweep(np.array([0.0, 1.0]), num_frames=4)
  chex.assert_shape(sweep, (4, 2))
  want0 = scipy.stats.norm.ppf([0.5, 0.999, 0.5, 0.001])
  chex.assert_trees_all_close(sweep[:, 0], want0, atol=1e-9)
  p0 = scipy.stats.norm.cdf(1.0)  # 0.841: up by 0.5 per frame, reflected at 1 and at 0
  want1 = scipy.stats.norm.ppf(np.clip([p0, 2 - (p0 + 0.5), 2 - (p0 + 1.0), p0 + 1.5 - 2],
                                       0.001, 0.999))
  chex.assert_trees_all_close(sweep[:, 1], want1, atol=1e-9)


def test_posterior_sweep_known_values():
  sweep = animation.posterior_sweep(np.array([1.0, -2.0]), np.array([0.5, 0.0]), num_frames=4)
  chex.assert_trees_all_close(sweep[:, 0], np.array([1.0, 2.0, 1.0, 0.0]))
  chex.assert_trees_all_close(sweep[:, 1], np.full(4, -2.0))  # zero std: a still panel


class _ColumnModel:
  """A stand-in VAE whose decoded image has one column per latent: column j = sigmoid(z_j).

  Latents in ``ignored`` are multiplied by 0 before decoding (the decoder ignores them).
  """

  def __init__(self, d, ignored=()):
    self.d = d
    self.keep = jnp.asarray([0.0 if j in ignored else 1.0 for j in range(d)])

  def apply(self, variables, x, labels=None, method=None):
    del labels
    if method == "encode":
      mean = x[:, 0, : self.d, 0] - 0.5
      return mean, jnp.broadcast_to(variables["params"]["log_var"], mean.shape)
    assert method == "decode"
    return {"logits": jnp.broadcast_to((x * self.keep)[:, None, :, None], (x.shape[0], 3,
                                                                           self.d, 1))}


def _panels(frames, nrows, ncols, h, w, pad=2):
  """Cuts (F, H', W') GIF frames back into (F, P, h, w) panels."""
  out = []
  for r in range(nrows):
    for k in range(ncols):
      top, left = pad + r * (h + pad), pad + k * (w + pad)
      out.append(frames[:, top:top + h, left:left + w])
  return np.stack(out, axis=1)


def test_gif_panels_follow_kl_order_and_ignored_dims_stay_still(tmp_path):
  d = 5
  model = _ColumnModel(d, ignored=(3,))
  params = {"log_var": jnp.zeros(d) - 1.0}
  image = np.zeros((3, d, 1), np.float32)
  image[0, :, 0] = [0.1, 0.9, 0.5, 0.3, 0.7]
  kl = np.array([0.1, 3.0, 0.0, 1.0, 2.0])  # order 1, 4, 3, 0, 2
  paths = animation.write_traversal_gifs(model, params, image, tmp_path / "gifs", kl, 6,
                                         ncols=3, upscale=1)
  assert {p.name for p in paths.values()} == {"traversal_prior.gif", "traversal_posterior.gif"}
  with Image.open(paths["prior"]) as gif:
    assert gif.n_frames == 6
    assert "z1 (KL 3.00), z4 (KL 2.00), z3" in gif.info["comment"].decode()
  frames = animation.read_gif(paths["prior"])
  # Layout: 2 rows of 3 panels (3 x 5 px) with 2 px padding, and a 3 px bar below.
  chex.assert_shape(frames, (6, 2 * 5 + 2 + 3 + 2, 3 * 7 + 2))
  panels = _panels(frames, 2, 3, 3, d)
  order = [1, 4, 3, 0, 2]
  mean = image[0, :, 0] - 0.5
  for p, dim in enumerate(order):
    varying = np.flatnonzero(np.ptp(panels[:, p].astype(int), axis=(0, 1)) > 0)
    if dim == 3:
      assert varying.size == 0  # the decoder ignores z3: a still panel
    else:
      np.testing.assert_array_equal(varying, [dim])
      # The moving column shows sigmoid of the prior sweep of that dimension.
      want = 255 / (1 + np.exp(-animation.prior_sweep(mean, 6)[:, dim]))
      np.testing.assert_allclose(panels[:, p, 1, dim], want, atol=1.0)
  assert np.all(panels[:, 5] == 128)  # the unused sixth cell stays grey
  # The progress bar fills left to right: frame f has round((f + 1) W / F) white columns.
  bar = frames[:, -4, :]
  np.testing.assert_array_equal((bar == 255).sum(1), [round((f + 1) * 23 / 6) for f in range(6)])


def test_write_traversal_gifs_on_a_tiny_vae(tmp_path):
  model = models.create_model({"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (8,)},
                              (6, 6, 1))
  params = jax.jit(model.init)({"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)},
                               jnp.zeros((1, 6, 6, 1)))["params"]
  # Make the decoder ignore z2: zero its row of the first layer.
  params = jax.tree_util.tree_map(lambda a: a, params)
  params["decoder"]["hidden_0"]["kernel"] = params["decoder"]["hidden_0"]["kernel"].at[2].set(0.0)
  images = np.random.default_rng(0).random((4, 6, 6, 1)).astype(np.float32)
  kl = np.array([0.5, 0.2, 0.9])
  paths = animation.write_traversal_gifs(model, params, images, tmp_path, kl, num_frames=8)
  for kind in ("prior", "posterior"):
    frames = animation.read_gif(paths[kind])
    # 3 panels -> 2 x 2 grid of 60 px panels (6 px upscaled 10x), 2 px padding, 5 px bar.
    chex.assert_shape(frames, (8, 2 * 62 + 2 + 5, 2 * 62 + 2))
    panels = _panels(frames, 2, 2, 60, 60)
    assert np.ptp(panels[:, 0].astype(int), axis=0).max() == 0  # z2 first (largest KL), still
    assert np.ptp(panels[:, 1].astype(int), axis=0).max() > 0
  # The posterior cycle starts at the mean: frame 0 of every panel is the reconstruction.
  mean, _ = model.apply({"params": params}, jnp.asarray(images[:1]), method="encode")
  recon = distributions.likelihood_mean(model.apply({"params": params}, mean, method="decode"))
  want = np.round(255 * np.kron(np.asarray(recon)[0, ..., 0], np.ones((10, 10))))
  frames = animation.read_gif(paths["posterior"])
  for p in range(3):
    np.testing.assert_allclose(_panels(frames, 2, 2, 60, 60)[0, p], want, atol=1.0)


class _LabelledColumnModel(_ColumnModel):
  """Conditional stand-in: the label is added to every logit, so it shows in the frames."""

  def apply(self, variables, x, labels=None, method=None):
    assert labels is not None and labels.shape == (x.shape[0],)
    out = super().apply(variables, x, None, method)
    if method == "encode":
      return out
    return {"logits": out["logits"] + labels[:, None, None, None]}


def test_conditional_gifs_decode_with_the_label(tmp_path):
  model = _LabelledColumnModel(2)
  params = {"log_var": jnp.zeros(2)}
  image = np.full((3, 2, 1), 0.5, np.float32)  # mean 0: posterior frame 0 decodes z = 0
  frames = {}
  for label in (0, 2):
    paths = animation.write_traversal_gifs(model, params, image, tmp_path / str(label),
                                           num_frames=4, label=label, max_dims=1, upscale=1)
    frames[label] = animation.read_gif(paths["posterior"])
    assert frames[label].shape == (4, 3 + 4 + 5, 2 + 4)
  # One panel (max_dims=1); its still column shows sigmoid(0 + label).
  np.testing.assert_allclose(frames[0][0, 2:5, 2:4], 255 * 0.5, atol=1.0)
  np.testing.assert_allclose(frames[2][0, 2:5, 2:4], 255 / (1 + np.exp(-2.0)), atol=1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: animation.triangle_cycle(0.5, 1), "num_frames"),
    (lambda: animation.posterior_sweep([0.0], [-1.0]), "std must be finite"),
    (lambda: animation.kl_order([1.0, np.nan]), "finite"),
    (lambda: animation.grid_frames(np.zeros((2, 3, 4, 4, 2))), "C in"),
    (lambda: animation.traversal_frames(lambda z: z, [0.0], np.zeros((3, 1)), [1]), "dims"),
    (lambda: animation.save_gif(np.zeros((2, 4, 4)), "x.gif"), "uint8"),
])
def test_bad_arguments_get_one_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()

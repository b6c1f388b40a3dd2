"""VAE modules, networks and the model registry."""

import functools
import math

import chex
import flax
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaejax import distributions, objectives
from vaejax.models import MODELS, VAE, create_model, networks, register, registry

MLP = {"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (16,)}
MNIST_SHAPE = (6, 5, 1)  # tiny stand-in for 28×28×1; not square on purpose


def keys(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"params": k1, "sample": k2}


def random_params(model, x, labels=None):
  """Random parameters without running (and compiling) ``model.init``."""
  shapes = jax.eval_shape(model.init, keys(), x, labels)
  rng = np.random.default_rng(0)

  def draw(leaf):
    scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
    return jnp.asarray(rng.normal(size=leaf.shape) * scale, leaf.dtype)

  return jax.tree.map(draw, shapes)


def images(shape, batch=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((batch,) + shape) < 0.3, jnp.float32)


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("config,shape,num_classes", [
    (MLP, MNIST_SHAPE, None),
    ({**MLP, "likelihood": "gaussian", "likelihood_variance": 0.5}, (4, 4, 3), None),
    ({**MLP, "likelihood": "gaussian_learned", "min_variance": 0.1}, MNIST_SHAPE, None),
    ({**MLP, "name": "mlp_cvae"}, MNIST_SHAPE, 3),
    ({"name": "conv_vae", "latent_dim": 2}, (16, 32, 1), None),
    ({"name": "conv_cvae", "latent_dim": 2, "likelihood": "gaussian_learned"}, (16, 16, 2), 4),
])
def test_output_shapes_and_dtypes(config, shape, num_classes):
  model = create_model(config, shape, num_classes)
  x = images(shape)
  labels = jnp.arange(4) % num_classes if num_classes else None
  variables = random_params(model, x[:1], None if labels is None else labels[:1])
  out, (mean, log_var) = jax.jit(lambda v: (
      model.apply(v, x, labels, rngs={"sample": jax.random.key(1)}),
      model.apply(v, x, labels, method=model.encode)))(variables)
  d = config["latent_dim"]
  assert model.latent_dim == d
  for value in (out.mean, out.log_var, out.z):
    chex.assert_shape(value, (4, d))
    assert value.dtype == jnp.float32
  chex.assert_trees_all_close((mean, log_var), (out.mean, out.log_var))
  expected_keys = {"logits"} if config.get("likelihood", "bernoulli") == "bernoulli" else {
      "mean", "log_var"}
  assert set(out.likelihood) == expected_keys
  for value in out.likelihood.values():
    chex.assert_shape(value, (4,) + shape)
    assert value.dtype == jnp.float32
  assert out.prior_mean is None and out.prior_log_var is None
  loss, _ = objectives.elbo_loss(x, out)
  assert np.isfinite(loss)


def test_dsprites_conv_vae_matches_disentanglement_lib_architecture():
  model = create_model({"name": "conv_vae"}, (64, 64, 1))
  variables = jax.eval_shape(model.init, keys(), jnp.zeros((1, 64, 64, 1)))
  shapes = {"/".join(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])}
  expected_kernels = {
      "encoder/conv_0/kernel": (4, 4, 1, 32), "encoder/conv_1/kernel": (4, 4, 32, 32),
      "encoder/conv_2/kernel": (2, 2, 32, 64), "encoder/conv_3/kernel": (2, 2, 64, 64),
      "encoder/dense/kernel": (4 * 4 * 64, 256),
      "encoder/heads/mean/kernel": (256, 10), "encoder/heads/log_var/kernel": (256, 10),
      "decoder/dense_0/kernel": (10, 256), "decoder/dense_1/kernel": (256, 1024),
      "decoder/deconv_0/kernel": (4, 4, 64, 64), "decoder/deconv_1/kernel": (4, 4, 64, 32),
      "decoder/deconv_2/kernel": (4, 4, 32, 32), "decoder/output/kernel": (4, 4, 32, 1),
  }
  assert {k: v for k, v in shapes.items() if k.endswith("kernel")} == expected_kernels
  # Every layer has a bias of its output width.
  num_params = sum(math.prod(s) + s[-1] for s in expected_kernels.values())
  assert sum(math.prod(s) for s in shapes.values()) == num_params == 690_517


def test_gaussian_likelihoods_use_the_decoder_output():
  z = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)), jnp.float32)
  x = images(MNIST_SHAPE, batch=1)
  for likelihood in ("gaussian", "gaussian_learned"):
    model = create_model({**MLP, "likelihood": likelihood, "likelihood_variance": 0.25,
                          "min_variance": 0.5}, MNIST_SHAPE)
    variables = random_params(model, x)
    raw = model.apply(variables, z, None, method=lambda m, z, c: m.decoder(z, c))
    params = model.apply(variables, z, method="decode")
    if likelihood == "gaussian":
      chex.assert_trees_all_close(params["mean"], raw)
      # The floor is for learned variances only; a fixed one is used as given.
      np.testing.assert_allclose(params["log_var"], np.log(0.25), rtol=1e-6)
    else:
      chex.assert_shape(raw, (3,) + MNIST_SHAPE[:2] + (2,))
      chex.assert_trees_all_close(params["mean"], raw[..., :1])
      chex.assert_trees_all_close(params["log_var"], jnp.maximum(raw[..., 1:], np.log(0.5)))
      assert np.any(np.asarray(raw[..., 1:]) < np.log(0.5))  # the floor was exercised


# ----------------------------------------------------------------------------- sampling


def test_reparameterisation_moments_and_gradients():
  model = create_model(MLP, MNIST_SHAPE)
  x = images(MNIST_SHAPE, batch=2)
  variables = random_params(model, x)
  mean, log_var = model.apply(variables, x, method="encode")

  n = 4000
  draws = jax.jit(jax.vmap(
      lambda k: model.apply(variables, x, rngs={"sample": k}).z))(
          jax.random.split(jax.random.key(3), n))
  std = np.exp(0.5 * np.asarray(log_var, np.float64))
  sample_mean = np.asarray(draws, np.float64).mean(0)
  sample_var = np.asarray(draws, np.float64).var(0, ddof=1)
  np.testing.assert_array_less(np.abs(sample_mean - mean), 5 * std / np.sqrt(n))
  np.testing.assert_array_less(np.abs(sample_var - std**2), 5 * std**2 * np.sqrt(2 / (n - 1)))

  # z = μ + exp(½ log σ²) ε, so d Σz / d b_μ = B and d Σz / d b_logvar = Σ_b ½ (z − μ)
  # for the biases b of the two (linear) heads.
  def total_z(params):
    return jnp.sum(model.apply({"params": params}, x, rngs={"sample": jax.random.key(4)}).z)

  grads = jax.grad(total_z)(variables["params"])["encoder"]["heads"]
  z = model.apply(variables, x, rngs={"sample": jax.random.key(4)}).z
  np.testing.assert_allclose(grads["mean"]["bias"], np.full(3, 2.0), rtol=1e-6)
  np.testing.assert_allclose(grads["log_var"]["bias"], 0.5 * np.sum(z - mean, 0), rtol=1e-4,
                             atol=1e-6)


def test_sampling_uses_the_sample_rng():
  model = create_model(MLP, MNIST_SHAPE)
  x = images(MNIST_SHAPE, batch=2)
  variables = random_params(model, x)
  z = [model.apply(variables, x, rngs={"sample": jax.random.key(s)}).z for s in (0, 0, 1)]
  chex.assert_trees_all_equal(z[0], z[1])
  assert not np.allclose(z[0], z[2])
  with pytest.raises(flax.errors.InvalidRngError, match="sample"):
    model.apply(variables, x)


# ----------------------------------------------------------------------------- conditional


def test_cvae_depends_on_labels_and_requires_them():
  model = create_model({**MLP, "name": "mlp_cvae"}, MNIST_SHAPE, num_classes=3)
  x = images(MNIST_SHAPE, batch=2)
  variables = random_params(model, x, jnp.array([0, 1]))
  z = jnp.zeros((2, 3))
  decoded = [model.apply(variables, z, jnp.array([y, y]), method="decode")["logits"]
             for y in range(3)]
  encoded = [model.apply(variables, x, jnp.array([y, y]), method="encode")[0] for y in range(3)]
  for a, b in ((0, 1), (1, 2), (0, 2)):
    assert not np.allclose(decoded[a], decoded[b])
    assert not np.allclose(encoded[a], encoded[b])
  # The one-hot label is concatenated to the flattened image and to z.
  params = variables["params"]
  assert params["encoder"]["hidden_0"]["kernel"].shape[0] == 6 * 5 * 1 + 3
  assert params["decoder"]["hidden_0"]["kernel"].shape[0] == 3 + 3
  with_label = model.apply(variables, z, jnp.array([2, 2]), method="decode")

  with pytest.raises(ValueError, match="needs labels"):
    model.apply(variables, x, rngs={"sample": jax.random.key(0)})
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    model.apply(variables, z, jnp.array([0, 3]), method="decode")
  with pytest.raises(ValueError, match="shape"):
    model.apply(variables, z, jnp.array([[0], [1]]), method="decode")
  with pytest.raises(ValueError, match="integers"):
    model.apply(variables, z, jnp.array([0.0, 1.0]), method="decode")
  # Under jit values cannot be checked; the traced labels are accepted.
  jitted = jax.jit(lambda y: model.apply(variables, z, y, method="decode"))
  chex.assert_trees_all_close(jitted(jnp.array([2, 2])), with_label)


def test_unconditional_vae_ignores_labels():
  model = create_model(MLP, MNIST_SHAPE, num_classes=10)
  x = images(MNIST_SHAPE, batch=2)
  variables = random_params(model, x)
  rngs = {"sample": jax.random.key(0)}
  chex.assert_trees_all_equal(model.apply(variables, x, jnp.array([1, 7]), rngs=rngs),
                              model.apply(variables, x, rngs=rngs))


# ----------------------------------------------------------------------------- input checks


def test_bad_inputs_raise_clear_errors():
  model = create_model(MLP, MNIST_SHAPE)
  x = images(MNIST_SHAPE, batch=2)
  variables = random_params(model, x)
  with pytest.raises(ValueError, match=r"\(batch, 6, 5, 1\)"):
    model.apply(variables, jnp.zeros((2, 5, 6, 1)), method="encode")
  with pytest.raises(ValueError, match=r"\(batch, 3\)"):
    model.apply(variables, jnp.zeros((2, 4)), method="decode")


def test_vae_checks_the_decoder_output_shape():
  model = VAE(networks.MLPEncoder(2, (4,)), networks.MLPDecoder((6, 5, 1), (4,)),
              image_shape=(6, 5, 1), likelihood="gaussian_learned")  # needs 2 channels
  with pytest.raises(ValueError, match="gaussian_learned"):
    jax.eval_shape(model.init, keys(), jnp.zeros((1, 6, 5, 1)))


@pytest.mark.parametrize("kwargs,match", [
    ({"likelihood": "poisson"}, "likelihood"),
    ({"likelihood_variance": 0.0}, "likelihood_variance"),
    ({"min_variance": -1.0}, "min_variance"),
    ({"posterior_min_variance": -1.0}, "posterior_min_variance"),
    ({"num_classes": -1}, "num_classes"),
    ({"image_shape": (6, 5)}, "image_shape"),
])
def test_vae_bad_attributes_raise_at_construction(kwargs, match):
  args = {"encoder": networks.MLPEncoder(2), "decoder": networks.MLPDecoder((6, 5, 1)),
          "image_shape": (6, 5, 1)} | kwargs
  with pytest.raises(ValueError, match=match):
    VAE(**args)


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("override,shape,num_classes,match", [
    ({"name": "transformer_vae"}, MNIST_SHAPE, None, "conv_vae.*mlp_cvae.*mlp_vae"),
    ({"latent_dims": 4}, MNIST_SHAPE, None, "latent_dims"),
    ({"latent_dim": 0}, MNIST_SHAPE, None, "latent_dim"),
    ({"latent_dim": 2.5}, MNIST_SHAPE, None, "latent_dim"),
    ({"latent_dim": True}, MNIST_SHAPE, None, "latent_dim"),
    ({"hidden_sizes": (16, 0)}, MNIST_SHAPE, None, "hidden_sizes"),
    ({"likelihood": "poisson"}, MNIST_SHAPE, None, "poisson"),
    ({"likelihood_variance": -1.0}, MNIST_SHAPE, None, "likelihood_variance"),
    ({"min_variance": 0.0}, MNIST_SHAPE, None, "min_variance"),
    ({"posterior_min_variance": -1e-3}, MNIST_SHAPE, None, "posterior_min_variance.*>= 0"),
    ({"posterior_min_variance": float("nan")}, MNIST_SHAPE, None, "posterior_min_variance"),
    ({"posterior_min_variance": float("inf")}, MNIST_SHAPE, None, "posterior_min_variance"),
    ({"posterior_min_variance": True}, MNIST_SHAPE, None, "posterior_min_variance"),
    ({"posterior_min_variance": "1e-3"}, MNIST_SHAPE, None, "posterior_min_variance"),
    ({"conv_impl": "winograd"}, MNIST_SHAPE, None, "winograd"),
    ({"dtype": "float16"}, MNIST_SHAPE, None, "float16"),
    ({"name": "mlp_cvae"}, MNIST_SHAPE, None, "num_classes"),
    ({"name": "mlp_cvae"}, MNIST_SHAPE, 0, "num_classes"),
    ({"name": "conv_vae"}, (28, 28, 1), None, "multiples of 16.*28×28.*mlp_vae"),
    ({}, (28, 28), None, "image_shape"),
    ({}, (28, 28, 0), None, "image_shape"),
])
def test_registry_errors(override, shape, num_classes, match):
  with pytest.raises(ValueError, match=match):
    create_model({**MLP, **override}, shape, num_classes)


def test_registry_accepts_config_dicts_and_shared_keys():
  config = ml_collections.ConfigDict({
      "name": "mlp_vae", "latent_dim": 4, "hidden_sizes": [16, 8], "likelihood": "bernoulli",
      "likelihood_variance": 1.0, "min_variance": 1e-3, "conv_impl": "textbook",
      "dtype": "float32", "posterior_min_variance": 1e-4})
  model = create_model(config, np.array([6, 5, 1]))  # conv_impl: known, unused by an MLP
  assert model.latent_dim == 4 and model.image_shape == (6, 5, 1)
  assert model.posterior_min_variance == 1e-4
  assert model.encoder.hidden_sizes == (16, 8) and model.decoder.hidden_sizes == (8, 16)
  defaults = create_model({"name": "conv_vae"}, (64, 64, 1))
  assert defaults.latent_dim == 10 and defaults.encoder.conv_impl == "fast"
  assert defaults.likelihood == "bernoulli" and defaults.posterior_min_variance == 0.0


def test_register_adds_a_model_with_extra_keys():
  @register("test_only_vae", width=7)
  def build(config, image_shape, num_classes):
    del num_classes
    return VAE(networks.MLPEncoder(config["latent_dim"], (config["width"],)),
               networks.MLPDecoder(image_shape, (config["width"],)), image_shape=image_shape)

  try:
    model = create_model({"name": "test_only_vae", "width": 5}, MNIST_SHAPE)
    assert model.encoder.hidden_sizes == (5,)
    assert create_model({"name": "test_only_vae"}, MNIST_SHAPE).encoder.hidden_sizes == (7,)
    with pytest.raises(ValueError, match="already registered"):
      register("test_only_vae")(build)
  finally:
    del MODELS["test_only_vae"]
  assert "width" not in registry._known_keys()


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("config,shape", [
    (MLP, MNIST_SHAPE),
    ({"name": "conv_vae", "latent_dim": 2, "conv_impl": "fast"}, (16, 16, 1)),
])
def test_bfloat16_model_has_float32_params_heads_and_loss(config, shape):
  x = images(shape)
  f32 = create_model(config, shape)
  bf16 = create_model({**config, "dtype": "bfloat16"}, shape)
  variables = random_params(f32, x[:1])
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(bf16.init, keys(), x[:1]), variables)  # params stay float32

  @jax.jit
  def run(v):
    def loss(p, model):
      out = model.apply({"params": p}, x, rngs={"sample": jax.random.key(0)})
      return objectives.elbo_loss(x, out)[0], out
    (loss16, out16), grads16 = jax.value_and_grad(loss, has_aux=True)(v["params"], bf16)
    return loss16, out16, grads16, loss(v["params"], f32)[1]

  loss16, out16, grads16, out32 = run(variables)
  for value in jax.tree.leaves(out16):
    assert value.dtype == jnp.float32
  assert np.isfinite(loss16)
  assert all(np.all(np.isfinite(g)) and g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  # Computed in bfloat16 (≈3 significant digits), yet close to the float32 model.
  logits16, logits32 = out16.likelihood["logits"], out32.likelihood["logits"]
  assert not np.array_equal(logits16, logits32)
  np.testing.assert_allclose(logits16, logits32, atol=0.05 * float(np.abs(logits32).max()))


# ----------------------------------------------------------------------------- posterior floor


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(
    raw=hnp.arrays(np.float32, (16,), elements=st.floats(-30, 30, width=32)),
    floor=st.floats(1e-6, 10.0))
def test_soft_floor_never_goes_below_the_floor_and_keeps_gradients(raw, floor):
  raw[:2] = (-30.0, 30.0)  # the extremes, every time
  out = np.asarray(distributions.soft_floor_log_var(raw, floor))
  log_floor = np.float32(math.log(floor))
  assert np.all(out >= log_floor) and np.all(out >= raw)
  assert np.all(np.exp(out.astype(np.float64)) >= floor * (1 - 1e-6))
  # σ² = σ²_raw + floor, in float64.
  np.testing.assert_allclose(out, np.log(np.exp(raw.astype(np.float64)) + floor), rtol=2e-6,
                             atol=2e-6)
  grads = np.asarray(jax.vmap(jax.grad(lambda r: distributions.soft_floor_log_var(r, floor)))(
      jnp.asarray(raw)))
  assert np.all(np.isfinite(grads)) and np.all((grads >= 0) & (grads <= 1))
  np.testing.assert_allclose(grads, 1 / (1 + np.exp(-(raw.astype(np.float64) - math.log(floor)))),
                             rtol=1e-5, atol=1e-7)
  well_above = raw > math.log(floor) + 3
  assert np.all(grads[well_above] > 0.95)  # sigmoid(3): gradients flow above the floor


def test_soft_floor_off_bad_floors_and_fraction_at_floor():
  raw = jnp.asarray([-30.0, -1.0, 0.0, 30.0])
  chex.assert_trees_all_equal(distributions.soft_floor_log_var(raw, 0.0), raw)
  for bad in (-1e-3, float("nan"), float("inf"), True, "0.1", None):
    with pytest.raises(ValueError, match="min_variance must be a finite number >= 0"):
      distributions.soft_floor_log_var(raw, bad)
  # Raw variances 0.1 and 0.99 sit at a floor of 1 (it is at least half the variance);
  # 1.01 and 5 do not.
  floored = distributions.soft_floor_log_var(jnp.log(jnp.asarray([[0.1, 0.99, 1.01, 5.0]])), 1.0)
  assert float(distributions.fraction_at_floor(floored, 1.0)) == 0.5
  np.testing.assert_array_equal(distributions.fraction_at_floor(floored, 1.0, axis=0),
                                [1.0, 1.0, 0.0, 0.0])
  # A hard floor (clip_log_var) needs a small tolerance.
  clipped = distributions.clip_log_var(jnp.log(jnp.asarray([0.1, 0.99, 1.01, 5.0])), 1.0)
  assert float(distributions.fraction_at_floor(clipped, 1.0, tol=1e-6)) == 0.5
  assert float(distributions.fraction_at_floor(floored, 0.0)) == 0.0  # no floor
  with pytest.raises(ValueError, match="tol"):
    distributions.fraction_at_floor(floored, 1.0, tol=-1.0)


FLOOR = 0.3
# XLA's backend optimisations off: the same results, about half the compile time on a CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
HVAE = {"name": "hvae", "latent_sizes": (3, 2), "hidden_size": 16}


def _floor_gradient_reference(raw_log_var, name):
  """d Σ_b floored log σ² / d (bias of the raw log-variance head), from the raw values."""
  sig = 1 / (1 + np.exp(-(np.asarray(raw_log_var, np.float64) - math.log(FLOOR))))
  if name == "hvae":  # the top level: log σ² = floor(10 tanh(u / 10)), u = head output
    return np.sum(sig * (1 - (np.asarray(raw_log_var, np.float64) / 10) ** 2), axis=0)
  return np.sum(sig, axis=0)


@pytest.mark.parametrize("config,num_classes", [
    (MLP, None), ({**MLP, "name": "mlp_cvae"}, 3), (HVAE, None)])
def test_posterior_min_variance_floors_the_encoder_and_zero_is_off(config, num_classes):
  x = images(MNIST_SHAPE, batch=8)
  labels = jnp.arange(8) % num_classes if num_classes else None
  absent = create_model(config, MNIST_SHAPE, num_classes)
  off = create_model({**config, "posterior_min_variance": 0.0}, MNIST_SHAPE, num_classes)
  on = create_model({**config, "posterior_min_variance": FLOOR}, MNIST_SHAPE, num_classes)
  variables = jax.tree.map(lambda p: 4 * p, random_params(absent, x[:1], None if labels is None
                                                          else labels[:1]))
  rngs = {"sample": jax.random.key(5)}

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(v):
    outputs = [m.apply(v, x, labels, rngs=rngs) for m in (absent, off, on)]
    encoded = [m.apply(v, x, labels, method="encode") for m in (absent, on)]
    return outputs, encoded

  (out_absent, out_off, out_on), ((mean, raw), (mean_on, floored)) = run(variables)
  # 0 = off: every output bit-identical to the model without the key.
  chex.assert_trees_all_equal(out_off, out_absent)
  # On: no posterior variance below the floor, means untouched, σ² = σ²_raw + floor.
  assert np.min(raw) < math.log(FLOOR) < np.max(raw)  # the floor is exercised
  assert np.min(floored) >= np.float32(math.log(FLOOR))
  assert np.min(out_on.log_var) >= np.float32(math.log(FLOOR))
  chex.assert_trees_all_equal(mean_on, mean)
  np.testing.assert_allclose(floored, np.logaddexp(raw, math.log(FLOOR)), rtol=1e-6, atol=1e-6)
  # Gradients flow through the floor: d Σ log σ² / d (log-variance head bias) is the sum of
  # sigmoid(raw − log floor) (times the soft clamp's slope for the hierarchical model).
  if config["name"] == "hvae":
    path, top = ("posterior_1", "log_var", "bias"), slice(3, 5)
  else:
    path, top = ("encoder", "heads", "log_var", "bias"), slice(None)

  def total_log_var(params):
    return jnp.sum(on.apply({"params": params}, x, labels, method="encode")[1])

  grads = jax.jit(jax.grad(total_log_var), compiler_options=FAST_COMPILE)(variables["params"])
  for name in path:
    grads = grads[name]
  reference = _floor_gradient_reference(raw[:, top], config["name"])
  np.testing.assert_allclose(grads, reference, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(grads)[np.asarray(raw[:, top]).min(0) > math.log(FLOOR) + 1] > 0.5)

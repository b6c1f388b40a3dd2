"""VAE modules, networks and the model registry."""

import math

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaejax import objectives
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
      "dtype": "float32"})
  model = create_model(config, np.array([6, 5, 1]))  # conv_impl: known, unused by an MLP
  assert model.latent_dim == 4 and model.image_shape == (6, 5, 1)
  assert model.encoder.hidden_sizes == (16, 8) and model.decoder.hidden_sizes == (8, 16)
  defaults = create_model({"name": "conv_vae"}, (64, 64, 1))
  assert defaults.latent_dim == 10 and defaults.encoder.conv_impl == "fast"
  assert defaults.likelihood == "bernoulli"


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

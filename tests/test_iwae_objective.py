"""Importance-weighted training objectives (vaejax.objectives.iwae_loss and friends).

Most tests use the linear-Gaussian VAE of test_iwae.py, where log p(x) is known:
p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), and an encoder q(z|x) = N(xA + a, diag e^ℓ),
here with learnable (A, a, ℓ) and (W, b) so that gradients can be checked. References
are written out in the tests: float64 numpy, and the textbook DReG estimator with the
encoder/decoder parameter split done by hand. (The file is compile-bound: jitted functions
are shared between tests where the shapes allow, and compiled at a low optimisation level.)
"""

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from test_iwae import NOISE_VAR, make_problem, sampler

from vaejax import objectives as O
from vaejax.models import VAE, HierarchicalVAE, networks
from vaejax.types import VAEOutput

sg = jax.lax.stop_gradient
LATENT = 3
# The programs here are tiny and the file is compile-bound: XLA's backend optimisation
# level 0 compiles them 2-3× faster and runs them about as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# ----------------------------------------------------------------------------- the model


def linear_model(seed=0, kernel_offset=0.1, bias_offset=0.1, variance_factor=1.5):
  """(x, params): the exact posterior's encoder, perturbed by the offsets."""
  w, b, x, _, _, post_var = make_problem(seed)
  exact = w * post_var / NOISE_VAR  # μ = (x − b) A for the exact posterior
  params = {
      "encoder": {"kernel": exact + kernel_offset, "bias": -b @ exact + bias_offset,
                  "log_var": np.log(post_var * variance_factor)},
      "decoder": {"kernel": w.T, "bias": b},
  }
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  return jnp.asarray(x, jnp.float32), params


X, PARAMS = linear_model()


def decoder(params):
  def decode(z):
    mean = z @ params["decoder"]["kernel"] + params["decoder"]["bias"]
    return {"mean": mean, "log_var": jnp.full(mean.shape, np.log(NOISE_VAR), jnp.float32)}
  return decode


def forward(params, x=X):
  """key -> VAEOutput: one forward pass of the linear-Gaussian VAE."""
  decode = decoder(params)

  def sample_outputs(key):
    mean = x @ params["encoder"]["kernel"] + params["encoder"]["bias"]
    log_var = jnp.broadcast_to(params["encoder"]["log_var"], mean.shape)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
    return VAEOutput(mean, log_var, z, decode(z))

  return sample_outputs


def reference_log_weight_parts(x, out):
  """float64 (log p(x|z), log p(z) − log q(z|x)) from the definitions; any leading axes."""
  x, z, m, lv = (np.float64(a) for a in (x, out.z, out.mean, out.log_var))
  mu, lvx = np.float64(out.likelihood["mean"]), np.float64(out.likelihood["log_var"])
  log_px = -0.5 * np.sum(np.log(2 * np.pi) + lvx + (x - mu) ** 2 / np.exp(lvx), axis=-1)
  log_pz = -0.5 * np.sum(np.log(2 * np.pi) + z**2, axis=-1)
  log_qz = -0.5 * np.sum(np.log(2 * np.pi) + lv + (z - m) ** 2 / np.exp(lv), axis=-1)
  return log_px, log_pz - log_qz


def closed_form_kl(out):
  m, lv = np.float64(out.mean), np.float64(out.log_var)
  return 0.5 * np.sum(m**2 + np.exp(lv) - 1 - lv, axis=-1)


def samples_of(sample_outputs, key, num_groups, num_samples):
  """The passes iwae_loss draws, (M, K, ...): sample k of group m uses split(key, MK)[mK + k]."""
  outs = jax.vmap(sample_outputs)(jax.random.split(key, num_groups * num_samples))
  return jax.tree.map(lambda a: a.reshape((num_groups, num_samples) + a.shape[1:]), outs)


# ----------------------------------------------------------------------------- values


def test_k1_is_the_elbo_loss_and_iwae_the_monte_carlo_elbo():
  sample, key = forward(PARAMS), jax.random.key(0)
  # K = 1 accepts every ELBO setting, free bits and β-TC included.
  settings = O.LossSettings(beta=2.0, free_bits=0.2, warmup_steps=10, tc_beta=3.0,
                            dataset_size=100)

  @jit
  def run(key):
    ours = {e: O.iwae_loss(X, sample, key, 1, estimator=e, settings=settings, step=5,
                           decode=decoder(PARAMS)) for e in O.ESTIMATORS}
    groups = O.iwae_loss(X, sample, key, 1, num_groups=3, settings=settings, step=5)
    per_group = [O.elbo_loss(X, sample(k), settings, 5) for k in jax.random.split(key, 3)]
    return ours, O.elbo_loss(X, sample(key), settings, 5), groups, per_group, sample(key)

  ours, (ref_loss, ref_terms), (loss3, terms3), per_group, out = run(key)
  log_px, log_ratio = reference_log_weight_parts(X, out)
  for loss, terms in ours.values():
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-6)
    for name, value in ref_terms.items():
      chex.assert_trees_all_close(terms[name], value, rtol=1e-6, atol=1e-6)
    # The logged bound at K = 1 is the single-sample Monte Carlo ELBO of the same z.
    np.testing.assert_allclose(terms["iwae"], log_px + log_ratio, rtol=1e-5)
    np.testing.assert_array_equal(terms["ess"], 1.0)
  # K = 1 with M groups: the mean of M single-sample ELBO losses (and of their terms).
  np.testing.assert_allclose(loss3, np.mean([l for l, _ in per_group]), rtol=1e-6)
  np.testing.assert_allclose(terms3["kl"], np.mean([t["kl"] for _, t in per_group], 0),
                             rtol=1e-6)


@jit
def _single_sample_terms(key, kl_scale):
  out = forward(PARAMS)(key)
  return O.importance_weighted_terms(X, jax.tree.map(lambda a: a[None], out), kl_scale), out


@pytest.mark.parametrize("kl_scale", [0.3, 1.0, 2.5])
def test_single_sample_objective_is_the_monte_carlo_beta_elbo_of_that_z(kl_scale):
  terms, out = _single_sample_terms(jax.random.key(1), kl_scale)
  if kl_scale == 0.3:  # eager = jit
    eager = _single_sample_terms.__wrapped__(jax.random.key(1), kl_scale)
    chex.assert_trees_all_close(eager, (terms, out), rtol=1e-5, atol=1e-6)
  log_px, log_ratio = reference_log_weight_parts(X, out)
  np.testing.assert_allclose(terms["iwae"], log_px + log_ratio, rtol=1e-5)
  if kl_scale <= 1:  # log p(x|z) + c (log p(z) − log q(z|x))
    expected = log_px + kl_scale * log_ratio
  else:  # log w − (c − 1) KL
    expected = log_px + log_ratio - (kl_scale - 1) * closed_form_kl(out)
  np.testing.assert_allclose(terms["objective"], expected, rtol=1e-5)


def test_loss_and_terms_of_the_same_samples_against_a_float64_reference():
  """IWAE/MIWAE bound, ESS, the β/warm-up objective and the first sample's ELBO terms."""
  sample, key = forward(PARAMS), jax.random.key(2)
  num_groups, num_samples = 3, 5

  @jit
  def run(beta, warmup, step):
    settings = O.LossSettings(beta=beta, warmup_steps=warmup)
    return {e: O.iwae_loss(X, sample, key, num_samples, estimator=e, num_groups=num_groups,
                           settings=settings, step=step, decode=decoder(PARAMS))
            for e in O.ESTIMATORS}, samples_of(sample, key, num_groups, num_samples)

  results, outs = run(1.0, 0, 0)
  log_px, log_ratio = reference_log_weight_parts(X, outs)  # (M, K, B)
  log_w = log_px + log_ratio
  bound = special.logsumexp(log_w, axis=1) - np.log(num_samples)  # (M, B)
  ess = 1.0 / np.sum(special.softmax(log_w, axis=1) ** 2, axis=1)
  first_out = jax.tree.map(lambda a: a[0, 0], outs)
  m, lv = np.float64(first_out.mean), np.float64(first_out.log_var)
  kl_per_dim = 0.5 * (m**2 + np.exp(lv) - 1 - lv)
  kl = kl_per_dim.sum(-1)
  first = {"recon": log_px[0, 0], "kl": kl, "kl_per_dim": kl_per_dim, "elbo": log_px[0, 0] - kl}
  tempered = special.logsumexp(log_px + 0.5 * log_ratio, axis=1) - np.log(num_samples)
  for loss, terms in results.values():
    np.testing.assert_allclose(terms["iwae"], bound.mean(0), rtol=1e-5)
    np.testing.assert_allclose(loss, -bound.mean(), rtol=1e-5)  # DReG's value is honest
    np.testing.assert_allclose(terms["ess"], ess.mean(0), rtol=1e-4)
    for name, value in first.items():  # the ELBO terms of the first sample, closed-form KL
      np.testing.assert_allclose(terms[name], value, rtol=1e-5, atol=1e-6)
    # The keys a training step logs for the ELBO loss are there too.
    assert {"kl_weight", "capacity", "kl_regularizer"} <= set(terms)
  # β = 4 halfway through a warm-up: c = 2 ≥ 1, the bound minus (c − 1) KL.
  for loss, terms in run(4.0, 100, 50)[0].values():
    np.testing.assert_allclose(terms["kl_weight"], 0.5)
    np.testing.assert_allclose(loss, -(bound.mean() - kl.mean()), rtol=1e-5)
    np.testing.assert_allclose(terms["kl_regularizer"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["iwae"], bound.mean(0), rtol=1e-5)  # still the c = 1 L_K
  # β = 0.5: c < 1 tempers the prior ratio inside the weights.
  for loss, _ in run(0.5, 0, 0)[0].values():
    np.testing.assert_allclose(loss, -tempered.mean(), rtol=1e-5)


def test_k1_objective_expectation_is_the_closed_form_beta_elbo():
  """E[J¹_c] = E_q[log p(x|z)] − c·KL in closed form, for c on both sides of 1."""
  w, b, x, _, post_mean, post_var = make_problem(2)
  mean_q, var_q = post_mean - 0.3, post_var * 0.5
  residual = x - (mean_q @ w.T + b)
  expected_sq = np.sum(residual**2, axis=1) + np.sum(var_q * np.sum(w**2, axis=0))
  recon = -0.5 * (x.shape[1] * np.log(2 * np.pi * NOISE_VAR) + expected_sq / NOISE_VAR)
  kl = 0.5 * np.sum(mean_q**2 + var_q - 1 - np.log(var_q), axis=1)
  sample = sampler(w, b, x, mean_q, var_q)
  scales = jnp.array([0.25, 1.0, 3.0])

  @jit
  def draws(keys):
    def one(key):
      stacked = jax.tree.map(lambda a: a[None], sample(key))
      return jax.vmap(lambda c: O.importance_weighted_terms(x, stacked, c)["objective"])(scales)
    return jax.vmap(one)(keys)  # (draws, scales, B)

  values = np.asarray(draws(jax.random.split(jax.random.key(3), 4000)))
  stderr = values.std(0) / np.sqrt(len(values))
  expected = recon[None] - np.asarray(scales)[:, None] * kl[None]
  assert np.all(np.abs(values.mean(0) - expected) < 5 * stderr + 1e-4)


def test_bound_tightens_with_k_towards_log_px():
  w, b, x, log_px, post_mean, post_var = make_problem(1)
  sample = sampler(w, b, x, post_mean + 0.5, post_var * 2.5)  # poor but overlapping q
  ks, largest = (1, 4, 32), 512

  @jit
  def bounds(key):
    _, terms = O.iwae_loss(x, sample, key, largest)
    outs = samples_of(sample, key, 1, largest)  # the same 512 samples; L_K of the first K
    smaller = [O.importance_weighted_terms(x, jax.tree.map(lambda a, k=k: a[0, :k], outs))["iwae"]
               for k in ks]
    return smaller + [terms["iwae"]], O.importance_weighted_terms(
        x, jax.tree.map(lambda a: a[0], outs))["iwae"]

  per_k, check = jax.vmap(bounds)(jax.random.split(jax.random.key(4), 100))
  np.testing.assert_allclose(per_k[-1], check, rtol=1e-6)  # iwae_loss's L_512 of those samples
  gaps, stderrs = [], []
  for bound in per_k:
    gap = np.mean(log_px[None] - np.asarray(bound), axis=1)  # per draw, batch-averaged
    gaps.append(gap.mean())
    stderrs.append(gap.std() / np.sqrt(len(gap)))
  assert all(g > -3 * s for g, s in zip(gaps, stderrs)), gaps  # a lower bound on average
  assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps  # tightens as K grows
  assert gaps[0] > 0.5 and gaps[-1] < 0.1 * gaps[0], gaps


@jit
def _terms_and_log_weights(x, out, kl_scale):
  log_w = jax.vmap(O.log_importance_weight, in_axes=(None, 0))(x, out)
  return O.importance_weighted_terms(x, out, kl_scale), log_w


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(
    num=st.sampled_from([1, 5]),
    seed=st.integers(0, 2**31 - 1),
    spread=st.floats(0.1, 5.0),
    kl_scale=st.floats(1.0, 8.0),
)
def test_laws_for_any_samples(num, seed, spread, kl_scale):
  """L_K ≥ mean_k log w_k (Jensen) and ≤ max_k, ESS ∈ [1, K], and J_c ≤ L_K for c ≥ 1."""
  rng = np.random.default_rng(seed)
  shape = (num, 3, 2)
  mean = rng.normal(size=shape) * spread
  out = VAEOutput(
      jnp.asarray(mean, jnp.float32),
      jnp.asarray(rng.uniform(-3, 3, size=shape), jnp.float32),
      jnp.asarray(mean + rng.normal(size=shape) * spread, jnp.float32),
      {"logits": jnp.asarray(rng.normal(size=(num, 3, 4)) * spread, jnp.float32)},
  )
  x = jnp.asarray(rng.uniform(size=(3, 4)) < 0.5, jnp.float32)
  terms, log_w = _terms_and_log_weights(x, out, kl_scale)
  log_w, iwae = np.asarray(log_w), np.asarray(terms["iwae"])
  tol = 1e-4 * (1 + np.abs(log_w).max())
  assert np.all(iwae >= log_w.mean(0) - tol) and np.all(iwae <= log_w.max(0) + tol)
  assert np.all(terms["ess"] >= 1 - 1e-4) and np.all(terms["ess"] <= num + 1e-4)
  assert np.all(terms["objective"] <= iwae + tol)


# ----------------------------------------------------------------------------- gradients


def textbook_dreg(params, key, num_samples, num_groups, kl_scale, x=X):
  """DReG with the encoder/decoder split by hand (Tucker et al. 2019; tempered for c < 1).

  Encoder: Σ_k a_k ∂log w_k/∂z_k ∂z_k/∂φ with q's parameters frozen, a_k = (1−c)w̃_k + c w̃_k²,
  c = min(kl_scale, 1); decoder: Σ_k w̃_k ∂log w_k/∂θ; plus the exact gradient of
  −(max(kl_scale, 1) − 1)·KL. Returns the gradients of the loss (the negative objective)
  for DReG and for the biased sticking-the-landing weights (w̃_k in place of a_k).
  """
  c, excess = jnp.minimum(kl_scale, 1.0), jnp.maximum(kl_scale, 1.0) - 1.0
  keys = jax.random.split(key, num_groups * num_samples)
  eps = jax.vmap(lambda k: jax.random.normal(k, (x.shape[0], LATENT)))(keys)
  eps = eps.reshape(num_groups, num_samples, x.shape[0], LATENT)

  def encode(enc):
    return x @ enc["kernel"] + enc["bias"], enc["log_var"]

  def z_of(enc):
    mean, log_var = encode(enc)
    return mean + jnp.exp(0.5 * log_var) * eps  # (M, K, B, d)

  def log_w(enc_q, dec, z):
    mean, log_var = encode(enc_q)
    mu = z @ dec["kernel"] + dec["bias"]
    log_px = -0.5 * jnp.sum(np.log(2 * np.pi * NOISE_VAR) + (x - mu) ** 2 / NOISE_VAR, -1)
    log_pz = -0.5 * jnp.sum(np.log(2 * np.pi) + z**2, -1)
    log_qz = -0.5 * jnp.sum(np.log(2 * np.pi) + log_var + (z - mean) ** 2 * jnp.exp(-log_var),
                            -1)
    return log_px + c * (log_pz - log_qz)  # (M, K, B)

  enc, dec = params["encoder"], params["decoder"]
  weights = jax.nn.softmax(log_w(enc, dec, z_of(enc)), axis=1)
  path_weights = (1 - c) * weights + c * weights**2

  def encoder_objective(e):
    mean, log_var = encode(e)
    kl = 0.5 * jnp.sum(mean**2 + jnp.exp(log_var) - 1 - log_var, -1)
    return jnp.mean(jnp.sum(sg(path_weights) * log_w(sg(enc), dec, z_of(e)), 1), 0) - excess * kl

  def decoder_objective(d):
    return jnp.mean(jnp.sum(sg(weights) * log_w(enc, d, sg(z_of(enc))), 1), 0)

  def sticking_the_landing(e):  # a biased variant, w̃ in place of a_k: for the power check
    return jnp.mean(jnp.sum(sg(weights) * log_w(sg(enc), dec, z_of(e)), 1), 0)

  decoder_grad = jax.grad(lambda d: -jnp.mean(decoder_objective(d)))(dec)
  return ({"encoder": jax.grad(lambda e: -jnp.mean(encoder_objective(e)))(enc),
           "decoder": decoder_grad},
          {"encoder": jax.grad(lambda e: -jnp.mean(sticking_the_landing(e)))(enc),
           "decoder": decoder_grad})


@functools.cache
def per_draw(num_samples):
  """jit(vmap over keys) of (loss, gradient) for both estimators and of the textbook DReG.

  ``beta`` is traced, so the tests share these few compiled programs.
  """
  def loss(params, key, beta, estimator):
    return O.iwae_loss(X, forward(params), key, num_samples, estimator=estimator,
                       settings=O.LossSettings(beta=beta), decode=decoder(params))[0]

  def one(params, key, beta):
    grads = {e: jax.value_and_grad(loss)(params, key, beta, e) for e in O.ESTIMATORS}
    return grads, textbook_dreg(params, key, num_samples, 1, beta)

  return jit(jax.vmap(one, in_axes=(None, 0, None)))


def flat(tree, part):
  leaves = jax.tree.leaves(tree[part])
  return np.concatenate([np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in leaves], 1)


def max_z(a, b):
  """Largest |paired mean difference| / its standard error over the parameters."""
  d = a - b
  return float(np.max(np.abs(d.mean(0)) / (d.std(0) / np.sqrt(len(d)) + 1e-30)))


def test_dreg_gradient_equals_the_textbook_estimator_with_groups():
  def both(key):
    grad = jax.grad(lambda p: O.iwae_loss(
        X, forward(p), key, 4, estimator="dreg", num_groups=2,
        settings=O.LossSettings(beta=2.5), decode=decoder(p))[0])(PARAMS)
    return grad, textbook_dreg(PARAMS, key, 4, 2, 2.5)[0]

  got, expected = jit(jax.vmap(both))(jax.random.split(jax.random.key(4), 4))
  chex.assert_trees_all_close(got, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kl_scale", [1.0, 0.5, 2.5])
def test_dreg_is_the_textbook_estimator_unbiased_with_lower_encoder_variance(kl_scale):
  """K = 64: draw by draw DReG's formula; in the mean the plain gradient (paired, same keys)."""
  keys = jax.random.split(jax.random.key(5), 500)
  grads, (textbook, biased) = per_draw(64)(PARAMS, keys, kl_scale)
  (plain_values, plain), (dreg_values, dreg) = grads["plain"], grads["dreg"]
  np.testing.assert_allclose(dreg_values, plain_values, rtol=1e-6)  # the same objective value
  chex.assert_trees_all_close(dreg, textbook, rtol=2e-4, atol=2e-5)
  # The decoder gets exactly the plain IWAE gradient, draw by draw.
  chex.assert_trees_all_close(dreg["decoder"], plain["decoder"], rtol=1e-4, atol=1e-4)
  enc_plain, enc_dreg = flat(plain, "encoder"), flat(dreg, "encoder")
  assert max_z(enc_dreg, enc_plain) < 4.5  # 21 parameters: a 4.5σ miss is ~1e-4 likely
  # The check has the power to see a bias: sticking-the-landing weights (w̃ instead of
  # w̃², log q's parameters frozen) are biased for K > 1 (Tucker et al. 2019).
  assert max_z(flat(biased, "encoder"), enc_plain) > 20
  ratio = enc_dreg.var(0).sum() / enc_plain.var(0).sum()
  print(f"K=64 c={kl_scale}: DReG/plain encoder gradient variance {ratio:.4f}")
  assert ratio < 0.3, ratio


def test_extreme_posteriors_give_finite_losses_and_gradients():
  keys = jax.random.split(jax.random.key(6), 500)  # the shapes of the test above: no compile
  for mean_shift, log_var in ((1e3, 30.0), (-1e3, -30.0), (0.0, 30.0)):
    extreme = dict(PARAMS, encoder=dict(PARAMS["encoder"],
                                        bias=PARAMS["encoder"]["bias"] + mean_shift,
                                        log_var=jnp.full((LATENT,), log_var, jnp.float32)))
    grads, _ = per_draw(64)(extreme, keys, 1.0)
    chex.assert_tree_all_finite(grads)


# ----------------------------------------------------------------------------- Flax models


IMAGE = (4, 4, 1)


def random_params(model, *args):
  """Parameters of the model's shapes, drawn on the host (an eager or jitted init compiles)."""
  shapes = jax.eval_shape(model.init, {"params": jax.random.key(0), "sample": jax.random.key(0)},
                          *args)["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(  # fan-in scaled; biases (and zero-initialised heads) nonzero too
      lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), jnp.float32), shapes)


def binary_images(batch):
  rng = np.random.default_rng(batch)
  return jnp.asarray(rng.uniform(size=(batch, *IMAGE)) < 0.5, jnp.float32)


def test_cvae_under_jit_and_vmap_over_stacked_settings():
  """A Flax CVAE (labels in the forward pass and in decode): vmap over β equals each β."""
  model = VAE(encoder=networks.MLPEncoder(latent_dim=2, hidden_sizes=(8,)),
              decoder=networks.MLPDecoder(IMAGE, hidden_sizes=(8,)), image_shape=IMAGE,
              num_classes=3)
  x, labels = binary_images(4), jnp.array([0, 1, 2, 1])
  params = random_params(model, x, labels)
  grid = [O.LossSettings(beta=b) for b in (0.5, 1.0, 3.0)]
  stacked = O.stack_settings(grid)

  def both(params, key, settings):
    sample = lambda k: model.apply({"params": params}, x, labels, rngs={"sample": k})
    decode = lambda z: model.apply({"params": params}, z, labels, method=model.decode)
    return {e: jax.value_and_grad(
        lambda p, e=e: O.iwae_loss(x, sample, key, 4, estimator=e, settings=settings,
                                   decode=decode)[0])(params) for e in O.ESTIMATORS}

  key = jax.random.key(8)
  batched = jit(jax.vmap(both, in_axes=(None, None, O.settings_in_axes(stacked))))(
      params, key, stacked)
  single = jit(both)
  for i, settings in enumerate(grid):
    expected = single(params, key, settings)
    chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], batched), expected,
                                rtol=1e-5, atol=1e-6)
    chex.assert_tree_all_finite(expected)


def test_hierarchical_bound_uses_the_top_down_priors_of_each_sample_path():
  model = HierarchicalVAE(image_shape=IMAGE, latent_sizes=(2, 2), hidden_size=8)
  x = binary_images(3)

  params = random_params(model, x)  # prior heads too: the priors are not N(0, I)
  sample = lambda k: model.apply({"params": params}, x, rngs={"sample": k})
  key, num_samples = jax.random.key(4), 6
  (loss, terms), outs = jit(lambda: (O.iwae_loss(x, sample, key, num_samples),
                                         samples_of(sample, key, 1, num_samples)))()
  assert not np.allclose(outs.prior_mean, 0.0)
  # log p(x|z) + Σ_levels [log p(z_l | z_>l) − log q(z_l | x, z_>l)], per sample path.
  logits, xx = np.float64(outs.likelihood["logits"]), np.float64(x)
  log_px = np.sum(xx * logits - np.logaddexp(0, logits), axis=(3, 4, 5))
  z, mp, lp = np.float64(outs.z), np.float64(outs.prior_mean), np.float64(outs.prior_log_var)
  mq, lq = np.float64(outs.mean), np.float64(outs.log_var)
  log_p = -0.5 * (np.log(2 * np.pi) + lp + (z - mp) ** 2 / np.exp(lp))
  log_q = -0.5 * (np.log(2 * np.pi) + lq + (z - mq) ** 2 / np.exp(lq))
  log_w = (log_px + np.sum(log_p - log_q, axis=-1))[0]  # (K, B)
  expected = special.logsumexp(log_w, axis=0) - np.log(num_samples)
  np.testing.assert_allclose(terms["iwae"], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, -expected.mean(), rtol=1e-5)
  # DReG is refused for a top-down prior at K > 1 (at trace time); K = 1 is the ELBO loss
  # for either estimator.
  decode = lambda z: model.apply({"params": params}, z, method=model.decode)
  with pytest.raises(ValueError, match="needs the standard-normal prior"):
    jax.eval_shape(lambda: O.iwae_loss(x, sample, key, num_samples, estimator="dreg",
                                       decode=decode))
  jax.eval_shape(lambda: O.iwae_loss(x, sample, key, 1, estimator="dreg"))


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("settings,match", [
    (O.LossSettings(free_bits=0.5), r"free_bits=0\.5 cannot be used with K=4"),
    (O.LossSettings(capacity_gamma=100.0, capacity_max=5.0),
     r"capacity annealing \(capacity_gamma=100\.0\) cannot be used with K=4"),
    (O.LossSettings(tc_beta=6.0), r"β-TC \(tc_beta=6\.0\) cannot be used with K=4"),
    (O.LossSettings(free_bits=np.array([0.0, 0.1], np.float32)), "free_bits"),  # a sweep grid
])
def test_elbo_only_settings_are_refused_with_k_above_1(settings, match):
  with pytest.raises(ValueError, match=match):
    O.validate_importance_settings(settings, 4)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: O.iwae_loss(X, forward(PARAMS), jax.random.key(0), 4,
                                       settings=settings))
  O.validate_importance_settings(settings, 1)  # the ELBO loss takes them all


def test_configuration_mistakes_raise_one_line_each():
  settings = O.LossSettings(free_bits=0.1, tc_beta=2.0)
  with pytest.raises(ValueError) as info:
    O.validate_importance_settings(settings, 8, "dreg", 2, has_learned_prior=True)
  lines = str(info.value).splitlines()
  assert len(lines) == 3 and "free_bits" in lines[0] and "tc_beta" in lines[1]
  assert "standard-normal prior" in lines[2]
  with pytest.raises(ValueError) as info:
    O.validate_importance_settings(O.LossSettings(), 0, "reinforce", 1.5)
  lines = str(info.value).splitlines()
  assert len(lines) == 3
  assert "num_importance_samples (K)" in lines[0] and "num_groups (M)" in lines[1]
  assert "Unknown estimator 'reinforce'" in lines[2]
  for bad_k in (2.0, True, np.float32(3)):
    with pytest.raises(ValueError, match="Python int"):
      O.validate_importance_settings(O.LossSettings(), bad_k)
  with pytest.raises(ValueError, match="is negative"):  # the ELBO settings' own checks run too
    O.validate_importance_settings(O.LossSettings(beta=-1.0), 4)
  O.validate_importance_settings(O.LossSettings(beta=3.0, warmup_steps=10), np.int64(16), "dreg",
                                 4)


def test_dreg_needs_the_decoder_and_terms_need_stacked_samples():
  with pytest.raises(ValueError, match="estimator='dreg' needs decode"):
    jax.eval_shape(lambda: O.iwae_loss(X, forward(PARAMS), jax.random.key(0), 4,
                                       estimator="dreg"))
  with pytest.raises(ValueError, match="stacked on a leading axis"):
    O.importance_weighted_terms(X, forward(PARAMS)(jax.random.key(0)))

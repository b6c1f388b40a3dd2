"""loss.warmup_start: the KL weight's start value for the linear (and cyclical) warm-up.

w(t) = s + (1 − s)·min(τ / T, 1), τ = t or t mod T_cycle; s = 0 is the plain warm-up.
References are optax's schedules and numpy/float64 ELBO terms written here.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from vaejax import config as config_lib
from vaejax import objectives as O
from vaejax.sweeps import grid as grid_lib
from vaejax.training.step import hyperparams_from_config, stack_hyperparams
from vaejax.types import VAEOutput

# float32 schedule values are numbers in [0, 1] after ~4 rounded operations (optax uses
# another formula): a few ulps of 1, 1.2e-7 each.
SCHEDULE_ATOL = 1e-6


def make_outputs(seed=0, batch=5, latent=3, pixels=6):
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(batch, latent)).astype(np.float32)
  log_var = rng.uniform(-2, 1, size=(batch, latent)).astype(np.float32)
  z = (mean + np.exp(0.5 * log_var) * rng.normal(size=mean.shape)).astype(np.float32)
  logits = (2 * rng.normal(size=(batch, pixels))).astype(np.float32)
  x = (rng.uniform(size=(batch, pixels)) < 0.5).astype(np.float32)
  out = VAEOutput(jnp.asarray(mean), jnp.asarray(log_var), jnp.asarray(z),
                  {"logits": jnp.asarray(logits)})
  return jnp.asarray(x), out


def reference_recon_and_kl(x, out):
  """Per-example float64 log p(x|z) (Bernoulli) and KL(q ‖ N(0, I)) from the definitions."""
  x, logits = np.float64(x), np.float64(out.likelihood["logits"])
  p = special.expit(logits)
  recon = np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=-1)
  m, lv = np.float64(out.mean), np.float64(out.log_var)
  return recon, np.sum(0.5 * (m**2 + np.exp(lv) - 1 - lv), axis=-1)


@pytest.mark.parametrize("start,warmup", [(0.1, 10), (0.5, 1), (0.0, 250), (1.0, 7), (0.3, 3)])
def test_warmup_from_start_equals_optax_linear_schedule(start, warmup):
  reference = optax.linear_schedule(init_value=start, end_value=1.0, transition_steps=warmup)
  steps = np.arange(0, 3 * warmup + 2)
  np.testing.assert_allclose(O.kl_weight(steps, warmup, 0, start), reference(steps),
                             atol=SCHEDULE_ATOL)
  # No warm-up: weight 1 whatever the start.
  np.testing.assert_array_equal(O.kl_weight(steps, 0, 0, start), np.ones(steps.shape))


@pytest.mark.parametrize("start", [0.1, 0.6])
def test_cyclical_warmup_restarts_at_start(start):
  warmup, cycle = 5, 12
  reference = optax.join_schedules(
      [optax.linear_schedule(start, 1.0, warmup)] * 4, boundaries=[cycle, 2 * cycle, 3 * cycle])
  steps = np.arange(0, 4 * cycle)
  np.testing.assert_allclose(O.kl_weight(steps, warmup, cycle, start), reference(steps),
                             atol=SCHEDULE_ATOL)
  assert float(O.kl_weight(2 * cycle, warmup, cycle, start)) == pytest.approx(start, abs=1e-7)


def plain_kl_weight(step, warmup_steps, cycle_steps=0):
  """The KL weight before warmup_start existed (vaejax.objectives at commit a13f8c8)."""
  step = jnp.asarray(step, jnp.float32)
  warm = jnp.asarray(warmup_steps, jnp.float32)
  cycle = jnp.asarray(cycle_steps, jnp.float32)
  tau = jnp.where(cycle > 0, jnp.mod(step, jnp.maximum(cycle, 1.0)), step)
  ramp = jnp.clip(tau / jnp.maximum(warm, 1.0), 0.0, 1.0)
  return jnp.where(warm > 0, ramp, 1.0)


@pytest.mark.parametrize("warmup,cycle", [(10, 0), (7, 20), (1, 0)])
def test_default_start_is_the_plain_schedule_bit_for_bit(warmup, cycle):
  """s = 0 (the default, a Python or a stacked float32 zero) changes no bit of w(t)."""
  steps = np.arange(0, 3 * max(warmup, cycle) + 2)
  tau = np.mod(steps, cycle) if cycle else steps
  plain = plain_kl_weight(steps, warmup, cycle)
  # The plain warm-up min(τ / T, 1) in float64: XLA divides to within an ulp of it.
  np.testing.assert_allclose(plain, np.minimum(tau / warmup, 1.0), rtol=2.4e-7)
  for start in (0.0, 0, np.float32(0.0), jnp.zeros((), jnp.float32)):
    np.testing.assert_array_equal(O.kl_weight(steps, warmup, cycle, start), plain)
    np.testing.assert_array_equal(
        jax.jit(O.kl_weight)(steps, warmup, cycle, start), jax.jit(plain_kl_weight)(
            steps, warmup, cycle))
  np.testing.assert_array_equal(O.kl_weight(steps, warmup, cycle), plain)
  x, out = make_outputs()
  settings = O.LossSettings(beta=2.0, warmup_steps=warmup, cycle_steps=cycle)
  explicit = settings._replace(warmup_start=jnp.float32(0.0))
  for step in (0, 3, warmup + 1):
    chex.assert_trees_all_equal(O.elbo_loss(x, out, settings, step),
                                O.elbo_loss(x, out, explicit, step))


def test_warmup_start_weights_the_kl_in_the_loss():
  x, out = make_outputs()
  recon, kl = reference_recon_and_kl(x, out)
  settings = O.LossSettings(beta=2.0, warmup_steps=100, warmup_start=0.2)
  for step, weight in ((0, 0.2), (25, 0.2 + 0.8 * 0.25), (100, 1.0), (500, 1.0)):
    loss, terms = O.elbo_loss(x, out, settings, step)
    np.testing.assert_allclose(terms["kl_weight"], weight, rtol=1e-6)
    # float32 sums of ~10 terms of size ~5: relative 1e-5.
    np.testing.assert_allclose(loss, np.mean(-recon + weight * 2.0 * kl), rtol=1e-5)


def test_stacked_warmup_start_vmaps_and_equals_each_single_setting():
  x, out = make_outputs()
  grid = [O.LossSettings(warmup_steps=20, warmup_start=s) for s in (0.0, 0.1, 0.5)]
  stacked = O.stack_settings(grid)
  chex.assert_shape(stacked.warmup_start, (3,))
  assert O.settings_in_axes(stacked).warmup_start == 0
  assert O.settings_in_axes(stacked).warmup_steps is None  # equal across the grid
  losses, weights = jax.jit(jax.vmap(
      lambda s: (lambda loss, terms: (loss, terms["kl_weight"]))(*O.elbo_loss(x, out, s, 5)),
      in_axes=(O.settings_in_axes(stacked),)))(stacked)
  np.testing.assert_allclose(weights, [0.25, 0.1 + 0.9 * 0.25, 0.5 + 0.5 * 0.25], rtol=1e-6)
  for i, single in enumerate(grid):
    # One program for three models against three eager runs: float32 reassociation only.
    np.testing.assert_allclose(losses[i], O.elbo_loss(x, out, single, 5)[0], rtol=1e-6)
  traced = jax.jit(O.kl_weight)(jnp.arange(3.0), 4.0, 0.0, jnp.float32(0.5))
  np.testing.assert_allclose(traced, [0.5, 0.625, 0.75], rtol=1e-6)


def test_importance_weighted_loss_uses_the_start_weight():
  """At K > 1 the KL scale is w(t)·β: a start s at step 0 acts as β = s without warm-up."""
  x, out = make_outputs(batch=2)

  def sample(key):
    eps = jax.random.normal(key, out.mean.shape)
    return out._replace(z=out.mean + jnp.exp(0.5 * out.log_var) * eps)

  key = jax.random.key(3)
  warm = O.LossSettings(warmup_steps=50, warmup_start=0.3)
  loss, terms = O.iwae_loss(x, sample, key, 4, settings=warm, step=0)
  same, _ = O.iwae_loss(x, sample, key, 4, settings=O.LossSettings(beta=0.3), step=0)
  np.testing.assert_allclose(terms["kl_weight"], 0.3, rtol=1e-6)
  np.testing.assert_allclose(loss, same, rtol=1e-6)
  O.validate_importance_settings(warm, 4)  # allowed with K > 1, as the warm-up is


@pytest.mark.parametrize("value,match", [
    (-0.1, r"warmup_start=-0\.1 is negative"),
    (1.5, r"warmup_start=1\.5 must be in \[0, 1\]"),
    (float("nan"), "warmup_start=nan must be finite"),
    (True, "warmup_start=True must be a number, not a boolean"),
    (np.array([0.1, 2.0]), r"warmup_start=array\(\[0\.1, 2\. *\]\) must be in \[0, 1\]"),
])
def test_bad_warmup_start_is_refused_before_compiling(value, match):
  settings = O.LossSettings(warmup_steps=10, warmup_start=value)
  with pytest.raises(ValueError, match=match):
    O.validate_settings(settings)
  x, out = make_outputs()
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: O.elbo_loss(x, out, settings))
  if np.ndim(value) == 0:
    with pytest.raises(ValueError, match=match):
      O.stack_settings([O.LossSettings(), settings])


@pytest.mark.parametrize("value", [-0.5, 1.01, float("nan"), float("inf")])
def test_config_refuses_warmup_start_outside_the_unit_interval(value):
  config = config_lib.base_config()
  config.loss.warmup_start = value
  with pytest.raises(config_lib.ConfigError,
                     match=rf"Config loss\.warmup_start={value!r} must be a finite number "
                           r">= 0 and <= 1\."):
    config_lib.validate(config)


def test_config_to_hyperparams_and_a_sweep_axis():
  config = config_lib.base_config()
  assert config.loss.warmup_start == 0.0
  assert hyperparams_from_config(config).loss == O.LossSettings()
  config.loss.warmup_steps = 10
  config.loss.warmup_start = 0.1
  config_lib.validate(config)
  assert hyperparams_from_config(config).loss.warmup_start == 0.1
  # A sweep over it stacks into one program (one group), one value per model.
  assert "loss.warmup_start" in grid_lib.STACKABLE
  points = grid_lib.points(grid_lib.parse_grid(config, ["loss.warmup_start=0,0.1,0.5"]))
  assert len(grid_lib.groups(config, points)) == 1
  hypers = stack_hyperparams(
      [hyperparams_from_config(grid_lib.apply_point(config, p)) for p in points])
  np.testing.assert_allclose(hypers.loss.warmup_start, [0.0, 0.1, 0.5], rtol=1e-7)
  weights = jax.vmap(lambda s: O.kl_weight(5, 10, 0, s))(hypers.loss.warmup_start)
  np.testing.assert_allclose(weights, [0.5, 0.55, 0.75], rtol=1e-6)

"""Tests of the train-step benchmark harness, its timing helpers and the PyTorch baseline.

The PyTorch tests check that ``experiments/benchmarks/torch_models.py`` is the *same*
model as vaejax's (parameter counts; with copied weights, the same encoder and decoder
outputs, loss and gradients; the same Adam), so a speed ratio compares like with like.
They skip when torch (the optional ``bench`` extra) is not installed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import mixed_precision, timing
from experiments.benchmarks import train_step as harness
from vaejax import models, objectives
from vaejax.types import VAEOutput

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch (the optional 'bench' extra) is not installed")

# (model, image shape): the benchmarked shapes, plus non-square multi-channel ones that
# catch (h, w, c) vs (c, h, w) flattening mistakes.
MODEL_CASES = [
    ("conv_vae", (64, 64, 1)), ("conv_vae", (32, 48, 3)),
    ("mlp_vae", (28, 28, 1)), ("mlp_vae", (8, 12, 3)),
]


# ----------------------------------------------------------------------------- timing


def test_interleaved_rates_alternates_order_and_counts_items():
  calls = []
  variants = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  rates = timing.interleaved_rates(variants, {"a": 10, "b": 20}, repeats=3)
  assert calls == ["a", "b", "b", "a", "a", "b"]
  for rate in rates.values():
    assert len(rate.wall) == len(rate.cpu) == 3
    assert all(r > 0 for r in rate.wall)


def test_paired_ratio_is_median_of_per_round_ratios():
  a = timing.Rates(wall=[10.0, 20.0, 30.0], cpu=[1.0, 1.0, 1.0])
  b = timing.Rates(wall=[5.0, 40.0, 10.0], cpu=[2.0, 4.0, 1.0])
  assert timing.paired_ratio(a, b) == pytest.approx(2.0)  # ratios 2, 0.5, 3
  assert timing.paired_ratio(a, b, "cpu") == pytest.approx(0.5)  # ratios 0.5, 0.25, 1
  assert a.median() == 20.0


def test_time_call_separates_wall_and_cpu_time():
  wall, cpu = timing.time_call(lambda: __import__("time").sleep(0.05))
  assert wall >= 0.045 and cpu < wall


def test_interleaved_rates_rejects_zero_repeats():
  with pytest.raises(ValueError, match="repeats"):
    timing.interleaved_rates({"a": lambda: None}, 1, repeats=0)


# ----------------------------------------------------------------------------- harness


TINY = ["--batch_size=4", "--repeats=2", "--steps=1", "--warmup=0"]


def _last_json(text: str) -> dict:
  return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def harness_run():
  """One tiny harness run (both frameworks when torch is installed): (argv, stdout, result)."""
  argv = ["--model=mlp_vae", f"--framework={'compare' if HAS_TORCH else 'jax'}", *TINY]
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    result = harness.main(argv)
  return argv, buffer.getvalue(), result


def test_harness_prints_one_json_line(harness_run):
  _, stdout, returned = harness_run
  assert len(stdout.strip().splitlines()) == 1
  printed = _last_json(stdout)
  assert printed == returned
  assert printed["model"] == "mlp_vae" and printed["batch_size"] == 4
  assert printed["backend"] == jax.default_backend()
  assert printed["images_per_sec"] > 0 and printed["images_per_cpu_sec"] > 0
  assert printed["num_params"] == 784 * 512 + 512 + 512 * 256 + 256 + 2 * (256 * 10 + 10) + (
      10 * 256 + 256 + 256 * 512 + 512 + 512 * 784 + 784)
  assert np.isfinite(printed["final_loss"]["jax"])


@pytest.mark.parametrize("argv, match", [
    (["--batch_size=0"], "--batch_size"),
    (["--model=mlp_vae", "--conv_impl=textbook"], "--conv_impl"),
    (["--model=resnet"], "--model"),
])
def test_harness_rejects_bad_arguments(argv, match, capsys):
  with pytest.raises(SystemExit):
    harness.parse_args(argv)
  assert match in capsys.readouterr().err


@needs_torch
def test_harness_compare_mode_reports_side_by_side_ratio(harness_run):
  _, _, result = harness_run
  assert result["framework"] == "compare"
  assert result["torch_images_per_sec"] > 0 and result["torch_threads"] == 2
  assert result["ratio"] == pytest.approx(np.median(result["ratios_per_repeat"]), rel=1e-2)
  # Same weights and batch, a few steps at lr 1e-4: the losses differ only through ε.
  losses = result["final_loss"]
  assert losses["jax"] == pytest.approx(losses["torch"], rel=0.05)


@pytest.mark.slow  # a subprocess with its own JAX start
def test_harness_runs_without_ml_collections_and_torch():
  """An accelerator host may have only jax, flax, optax, chex, orbax and absl.

  Of the training package the harness loads the step, state and optimizer only (not the
  config, loop or executor, which need ml_collections).
  """
  blocked = ["ml_collections", "torch", "tensorflow_datasets", "tensorflow", "sklearn",
             "matplotlib", "h5py", "tensorboardX", "scipy"]
  code = (
      "import sys, runpy\n"
      "class Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      f"    if name.split('.')[0] in {blocked!r}: raise ImportError('blocked ' + name)\n"
      "sys.meta_path.insert(0, Block())\n"
      "sys.argv = ['train_step', '--model=mlp_vae', '--batch_size=2', '--repeats=1',"
      " '--steps=1', '--warmup=0']\n"
      "runpy.run_module('experiments.benchmarks.train_step', run_name='__main__')\n"
      "import json\n"
      "print(json.dumps(sorted(m for m in sys.modules if m.startswith('vaejax.training.')"
      " or m == 'vaejax.config')))\n"
  )
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=240, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  *_, line, modules = proc.stdout.strip().splitlines()
  result = json.loads(line)
  assert result["model"] == "mlp_vae" and result["images_per_sec"] > 0
  assert json.loads(modules) == ["vaejax.training.optimizer", "vaejax.training.state",
                                 "vaejax.training.step"]


class _FakeRunner:
  """A runner whose steps take ``seconds`` each (no computation)."""

  def __init__(self, seconds: float):
    self.seconds = seconds

  def run(self, steps: int) -> None:
    __import__("time").sleep(self.seconds * steps)

  def loss(self) -> float:
    return 1.0


def test_measure_reports_the_twin_ratio_and_extra_vaejax_runners():
  runners = {"jax": _FakeRunner(0.05), "jax_textbook": _FakeRunner(0.1),
             "torch": _FakeRunner(0.15)}
  result = harness.measure(runners, batch_size=10, steps=1, repeats=3)
  # A sleep overshoots by up to ~10 ms on a loaded machine (20 % of 50 ms): 40 % bounds.
  assert result["images_per_sec"] == pytest.approx(200, rel=0.4)
  assert result["ratio"] == pytest.approx(3.0, rel=0.4)
  assert result["jax_textbook_vs_jax"] == pytest.approx(0.5, rel=0.4)
  assert result["jax_textbook_images_per_sec"] == pytest.approx(100, rel=0.4)
  assert result["final_loss"] == {"jax": 1.0, "jax_textbook": 1.0, "torch": 1.0}


def test_harness_images_are_binary_dsprites_and_mnist():
  images, source = harness.make_images("conv_vae", 5, seed=0)
  chex.assert_shape(images, (5, 64, 64, 1))
  assert source == "dsprites_procedural" and set(np.unique(images)) == {0.0, 1.0}
  assert np.all(images.reshape(5, -1).sum(1) > 20)  # every frame shows a sprite
  images, source = harness.make_images("mlp_vae", 5, seed=0)
  chex.assert_shape(images, (5, 28, 28, 1))
  assert set(np.unique(images)) == {0.0, 1.0}
  assert source == ("mnist10k_binarized" if (DATA / "mnist10k.npz").is_file()
                    else "random_binary")


# ----------------------------------------------------------------------------- torch twin


def _param_shapes(model, shape):
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  keys = {"params": jax.random.key(0), "sample": jax.random.key(1)}
  return jax.eval_shape(model.init, keys, x)["params"]


def _scaled_params(model, shape, seed):
  """Random parameters with O(1) activations (the default init makes the conv decoder's
  logits ~0.04, which would hide layout mistakes) and non-zero biases."""
  leaves, tree = jax.tree.flatten(_param_shapes(model, shape))
  rng = np.random.default_rng(seed)
  new = [rng.normal(size=a.shape).astype(np.float32)
         * (0.3 if a.ndim == 1 else (2.0 / np.prod(a.shape[:-1])) ** 0.5) for a in leaves]
  return jax.tree.unflatten(tree, new)


def _case(name, shape, batch=3, seed=0):
  from experiments.benchmarks import torch_models  # pylint: disable=g-import-not-at-top

  model = models.create_model({"name": name}, shape)
  params = _scaled_params(model, shape, seed)
  x = (np.random.default_rng(seed).random((batch, *shape)) < 0.3).astype(np.float32)
  twin = torch_models.load_flax_params(torch_models.create_model(name, shape), params)
  return torch_models, model, params, x, twin


@needs_torch
@pytest.mark.parametrize("name, shape", MODEL_CASES)
def test_torch_twin_has_the_same_parameter_count(name, shape):
  from experiments.benchmarks import torch_models  # pylint: disable=g-import-not-at-top

  params = _param_shapes(models.create_model({"name": name}, shape), shape)
  twin = torch_models.create_model(name, shape)
  assert torch_models.num_params(twin) == sum(a.size for a in jax.tree.leaves(params))


@needs_torch
@pytest.mark.parametrize("name, shape", MODEL_CASES)
def test_torch_twin_computes_the_same_forward_pass(name, shape):
  import torch  # pylint: disable=g-import-not-at-top

  torch_models, model, params, x, twin = _case(name, shape)
  mean, log_var = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))(
      params, x)
  z = np.random.default_rng(1).normal(size=mean.shape).astype(np.float32)
  logits = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))(
      params, z)["logits"]
  assert float(jnp.std(logits)) > 0.05  # a non-degenerate comparison
  with torch.no_grad():
    t_mean, t_log_var = twin.encoder(torch_models.to_nchw(x))
    t_logits = twin.decoder(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
  chex.assert_trees_all_close((t_mean.numpy(), t_log_var.numpy(), t_logits),
                              (mean, log_var, logits), rtol=1e-4, atol=1e-4)


@needs_torch
@pytest.mark.parametrize("name, shape", [("conv_vae", (16, 32, 2)), ("mlp_vae", (8, 12, 3))])
def test_torch_twin_has_the_same_loss_and_gradients(name, shape):
  import torch  # pylint: disable=g-import-not-at-top

  torch_models, model, params, x, twin = _case(name, shape, batch=4)
  eps = np.random.default_rng(2).normal(size=(4, model.latent_dim)).astype(np.float32)

  def loss_fn(params):  # vaejax's ELBO of the same function, with ε given
    mean, log_var = model.apply({"params": params}, x, method=model.encode)
    z = mean + jnp.exp(0.5 * log_var) * eps
    likelihood = model.apply({"params": params}, z, method=model.decode)
    return objectives.elbo_loss(x, VAEOutput(mean, log_var, z, likelihood))[0]

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  t_loss = torch_models.elbo_loss(torch_models.to_nchw(x),
                                  *twin(torch_models.to_nchw(x), torch.from_numpy(eps)))
  t_loss.backward()
  # Gradients map between layouts like the parameters do (the maps are linear).
  expected = torch_models.load_flax_params(torch_models.create_model(name, shape), grads)
  assert t_loss.item() == pytest.approx(float(loss), rel=1e-5)
  for (pname, p), q in zip(twin.named_parameters(), expected.parameters()):
    np.testing.assert_allclose(p.grad.numpy(), q.detach().numpy(), rtol=2e-3, atol=2e-4,
                               err_msg=pname)


@needs_torch
def test_torch_adam_matches_the_vaejax_optimizer():
  """torch Adam(η) = the vaejax step's update: −η × ``make_optimizer()``'s direction."""
  import torch  # pylint: disable=g-import-not-at-top

  from experiments.benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  from vaejax.training.optimizer import make_optimizer  # pylint: disable=g-import-not-at-top

  lr = 1e-2
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=6).astype(np.float32)
  grads = [rng.normal(size=6).astype(np.float32) * s for s in (1.0, 1e-3, 1e-9)]
  optimizer = make_optimizer()
  params, state = jnp.asarray(p0), optimizer.init(jnp.asarray(p0))
  tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  t_opt = torch_models.make_optimizer([tp], lr)
  for g in grads:
    direction, state = optimizer.update(jnp.asarray(g), state, params)
    params = params - lr * direction
    tp.grad = torch.from_numpy(g)
    t_opt.step()
  np.testing.assert_allclose(tp.detach().numpy(), params, rtol=1e-5, atol=1e-7)
  assert not np.allclose(params, p0)


@needs_torch
def test_torch_twin_bfloat16_step_keeps_float32_weights_and_loss():
  """``autocast=torch.bfloat16`` (the device suite's bf16 twin): bf16 compute, float32 loss
  and weights, the float32 step's loss up to bf16 rounding."""
  import torch  # pylint: disable=g-import-not-at-top

  torch_models, model, _, x, twin = _case("conv_vae", (16, 32, 2), batch=4)
  eps = torch.from_numpy(
      np.random.default_rng(2).normal(size=(4, model.latent_dim)).astype(np.float32))
  losses = {}
  for name, autocast in (("f32", None), ("bf16", torch.bfloat16)):
    net = copy.deepcopy(twin)
    net.forward = functools.partial(type(net).forward, net, eps=eps)  # a fixed ε
    losses[name] = torch_models.make_train_step(net, 1e-4, autocast=autocast)(
        torch_models.to_nchw(x))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not torch.equal(next(net.parameters()), next(twin.parameters()))  # it stepped
  assert losses["bf16"].dtype == torch.float32
  # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 2e-3 per value); the loss sums
  # 1024 pixels' terms whose errors average out (1.1e-4 measured): 2e-3 is the per-value bound.
  assert losses["bf16"].item() == pytest.approx(losses["f32"].item(), rel=2e-3)
  assert losses["bf16"].item() != losses["f32"].item()  # bf16 did run


@needs_torch
def test_torch_twin_rejects_mismatched_parameters_and_names():
  from experiments.benchmarks import torch_models  # pylint: disable=g-import-not-at-top

  shapes = _param_shapes(models.create_model({"name": "conv_vae"}, (32, 32, 1)), (32, 32, 1))
  params = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), shapes)
  with pytest.raises(ValueError, match="shape mismatch"):
    torch_models.load_flax_params(torch_models.create_model("conv_vae", (64, 64, 1)), params)
  with pytest.raises(ValueError, match="resnet"):
    torch_models.create_model("resnet", (64, 64, 1))


# ----------------------------------------------------------------------------- mixed precision


def test_smooth_is_a_trailing_moving_average():
  np.testing.assert_allclose(mixed_precision.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2),
                             [2.0, 4.0, 6.0])


def test_compare_curves_known_answer():
  t = np.linspace(500.0, 100.0, 40)
  curves = {}
  for seed in range(3):
    curves[seed, "float32"] = t + seed  # seeds differ by constant offsets 1, 2, 1
    curves[seed, "bfloat16"] = t + seed + 0.1
  stats = mixed_precision.compare_curves(curves, window=5, burn_in=0.2)
  assert stats["precision_gap"] == pytest.approx(0.1)
  assert stats["seed_noise"] == pytest.approx(4 / 3)
  assert stats["gap_over_noise"] == pytest.approx(0.075)
  with pytest.raises(ValueError, match="2 seeds"):
    mixed_precision.compare_curves({k: v for k, v in curves.items() if k[0] == 0}, 5, 0.0)


def test_mixed_precision_script_runs(capsys):
  if not (DATA / "mnist10k.npz").is_file():
    pytest.skip(f"needs the shared MNIST file {DATA / 'mnist10k.npz'}")
  result = mixed_precision.main(["--steps=6", "--window=2", "--seeds=2", "--batch_size=8"])
  assert _last_json(capsys.readouterr().out) == result
  assert result["seed_noise"] > 0 and np.isfinite(result["gap_over_noise"])
  assert set(result["final_loss"]) == {"float32_seed0", "bfloat16_seed0", "float32_seed1",
                                       "bfloat16_seed1"}

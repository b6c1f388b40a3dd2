"""The text train-step benchmark: its harness runs, and its PyTorch twin is the same model.

The twin's tests (same logits, loss and gradients from copied weights) skip when torch
(the optional ``bench`` extra) is not installed.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import text_step
from vaejax import models, objectives
from vaejax.types import DataSpec, VAEOutput, example_batch

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch (the optional 'bench' extra) is not installed")
TINY = ["--batch_size=4", "--max_vocab=40", "--embedding_size=8", "--hidden_size=8",
        "--latent_dim=2", "--repeats=1", "--steps=1", "--warmup=0"]


def test_harness_runs_the_vaejax_step():
  result = text_step.main(TINY)
  assert result["model"] == "lstm_vae" and result["vocab_size"] == 40
  assert result["tokens_per_sec"] > 0 and np.isfinite(result["final_loss"]["jax"])
  assert result["positions_per_sec"] >= result["tokens_per_sec"]
  # The PyTorch twin gets text_step.LEARNING_RATE: the timed JAX step must train alike (the
  # conv benchmark's runner it extends uses dlib's 1e-4).
  assert text_step.LEARNING_RATE == 1e-3
  np.testing.assert_allclose(result["learning_rate"], 1e-3, rtol=1e-7)


def test_harness_rejects_bad_arguments():
  with pytest.raises(SystemExit):
    text_step.parse_args(["--hidden_size=0"])


@needs_torch
def test_torch_twin_computes_the_same_logits_loss_and_gradients():
  import torch  # pylint: disable=g-import-not-at-top

  from experiments.benchmarks import torch_text  # pylint: disable=g-import-not-at-top

  spec = DataSpec.tokens(11, 6)
  model = models.create_model(
      {"name": "lstm_vae", "embedding_size": 5, "hidden_size": 7, "latent_dim": 3}, spec)
  params = jax.jit(model.init)({"params": jax.random.key(0), "sample": jax.random.key(1)},
                               example_batch(spec)["tokens"])["params"]
  # Random non-zero biases, so the bias mapping is checked too.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape),
                        params)
  tokens = np.array([[4, 5, 6, 3, 0, 0], [7, 3, 0, 0, 0, 0], [8, 9, 10, 4, 5, 3]], np.int32)
  eps = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)

  def jax_loss(p):
    mean, log_var = model.apply({"params": p}, tokens, method="encode")
    z = mean + jnp.exp(0.5 * log_var) * eps
    logits = model.apply({"params": p}, z, tokens, method="decode")
    return objectives.elbo_loss(tokens, VAEOutput(mean, log_var, z, logits))[0], logits

  (loss, logits), grads = jax.jit(jax.value_and_grad(jax_loss, has_aux=True))(params)
  twin = torch_text.LSTMVAE(11, 5, 7, 3)
  torch_text.load_flax_params(twin, params)
  assert torch_text.num_params(twin) == sum(p.size for p in jax.tree.leaves(params))
  t_tokens = torch.from_numpy(tokens.astype(np.int64))
  t_logits, mean, log_var = twin(t_tokens, torch.from_numpy(eps))
  t_loss = torch_text.elbo_loss(t_tokens, t_logits, mean, log_var)
  t_loss.backward()
  # float32 on both sides, different summation orders: agreement to ~1e-5 relative.
  np.testing.assert_allclose(t_logits.detach().numpy(), logits["categorical_logits"],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(t_loss.item(), loss, rtol=1e-5)
  pairs = [(twin.output.weight.grad.T, grads["output_kernel"]),
           (twin.decoder.weight_hh_l0.grad.T, grads["decoder"]["recurrent_kernel"]),
           (twin.encoder.weight_ih_l0.grad.T, grads["encoder"]["input_kernel"]),
           (twin.encoder_embedding.weight.grad, grads["encoder_embedding"]),
           (twin.posterior.weight.grad.T, grads["posterior"]["kernel"]),
           (twin.initial_state.bias.grad, grads["initial_state"]["bias"]),
           (twin.decoder.bias_ih_l0.grad, grads["decoder"]["bias"])]
  for got, want in pairs:
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
